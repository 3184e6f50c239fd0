//! Name resolution for deliveries: the target policy applied to every
//! resolved address, and one lookup per host name at a time.
//!
//! The system resolver (`getaddrinfo`) blocks, so each lookup takes a
//! thread of the runtime's blocking pool. Over HTTP/1.1 a hook opens a
//! connection per request in flight, and when its concurrency limit
//! doubles it opens a hundred or more at once. Looked up each on its own
//! thread, such a burst in the benchmark's https run started 46 threads
//! at once and raised walhook's memory by 9 MiB (each thread has its own
//! allocator caches and stack), for the same answer every time. So
//! lookups of one name that overlap share one: a burst costs one thread
//! and one answer per name. An answer is never kept past the
//! lookup that produced it (no cache: the next connection asks again, so a
//! changed DNS record is seen as before).
//!
//! A lookup has a time limit of its own (`delivery.connect_timeout`): a
//! name server that never answers (the system resolver may retry for many
//! seconds per server) fails that lookup instead of holding every
//! connection to the name, and the next connection asks again.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use hyper_util::client::legacy::connect::dns::Name;

use super::target_policy::AddressPolicy;

/// One lookup's answer, shareable between the connections waiting for it.
/// `io::Error` is not `Clone`: its kind and text are shared instead.
type Answer = Result<Arc<[SocketAddr]>, (io::ErrorKind, Arc<str>)>;
type Lookup = Shared<BoxFuture<'static, Answer>>;

/// How a name becomes addresses: the system resolver, or a stand-in in
/// tests.
type Resolve = fn(String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;

fn system_resolve(name: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
    async move { Ok(tokio::net::lookup_host((name.as_str(), 0)).await?.collect()) }.boxed()
}

/// Resolves host names and keeps only the addresses the policy allows, so
/// the check applies to the address actually connected to (a name that
/// resolves to a private address, or re-resolves to one later, is refused).
#[derive(Clone)]
pub(in crate::delivery) struct PolicyResolver {
    policy: AddressPolicy,
    /// The longest one lookup may take.
    limit: Duration,
    resolve: Resolve,
    /// Lookups under way, by host name.
    lookups: Arc<Mutex<HashMap<String, Lookup>>>,
}

impl PolicyResolver {
    pub(in crate::delivery) fn new(policy: AddressPolicy, limit: Duration) -> PolicyResolver {
        PolicyResolver {
            policy,
            limit,
            resolve: system_resolve,
            lookups: Arc::default(),
        }
    }

    /// The lookup of `host` under way, or a new one. A lookup runs as its
    /// own task and removes itself when it has the answer, so the answer
    /// is never handed to a connection that asks later, even when every
    /// connection that waited for it gave up (a delivery timeout).
    fn lookup(&self, host: &str) -> Lookup {
        let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lookup) = lookups.get(host) {
            return lookup.clone();
        }
        let (name, under_way) = (host.to_owned(), Arc::clone(&self.lookups));
        let (resolve, limit) = (self.resolve, self.limit);
        // Only this task removes this name's entry, so while it runs the
        // entry is its own.
        let task = tokio::spawn(async move {
            let answer = match tokio::time::timeout(limit, resolve(name.clone())).await {
                Ok(Ok(addrs)) => Ok(Arc::from(addrs)),
                Ok(Err(e)) => Err((e.kind(), Arc::from(e.to_string()))),
                Err(_) => Err((
                    io::ErrorKind::TimedOut,
                    Arc::from(format!(
                        "the name lookup of {name} took longer than {}s \
                         (delivery.connect_timeout)",
                        limit.as_secs_f64()
                    )),
                )),
            };
            under_way
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            answer
        });
        let lookup = async move {
            task.await.unwrap_or_else(|e| {
                Err((
                    io::ErrorKind::Other,
                    Arc::from(format!("name lookup failed: {e}")),
                ))
            })
        }
        .boxed()
        .shared();
        lookups.insert(host.to_owned(), lookup.clone());
        lookup
    }
}

type Resolving = Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move {
            let host = name.as_str();
            let started = tokio::time::Instant::now();
            let answer = resolver.lookup(host).await;
            super::timings::record(super::timings::Phase::Dns, started.elapsed());
            let addrs = answer.map_err(|(kind, text)| io::Error::new(kind, text.to_string()))?;
            let mut allowed = Vec::new();
            let mut refusals = Vec::new();
            for addr in addrs.iter() {
                match resolver.policy.refusal(addr.ip()) {
                    None => allowed.push(*addr),
                    Some(refusal) => {
                        let text = refusal.to_string();
                        if !refusals.contains(&text) {
                            refusals.push(text);
                        }
                    }
                }
            }
            // Refused addresses are left out; only a name with nothing
            // left is an error, which says why each address was refused.
            if allowed.is_empty() && !refusals.is_empty() {
                return Err(io::Error::other(format!(
                    "refused: {host} resolves only to non-public addresses: {}",
                    refusals.join("; and ")
                )));
            }
            Ok(allowed.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeliveryConfig;
    use std::net::IpAddr;
    use std::str::FromStr;
    use tower_service::Service;

    /// The policy of `delivery.allow_private_targets = true`.
    fn open() -> AddressPolicy {
        AddressPolicy::new(&DeliveryConfig {
            allow_private_targets: true,
            ..DeliveryConfig::default()
        })
    }

    #[tokio::test]
    async fn overlapping_lookups_of_one_name_share_one() {
        let resolver = PolicyResolver::new(open(), Duration::from_secs(10));
        let first = resolver.lookup("localhost");
        let second = resolver.lookup("localhost");
        assert!(first.ptr_eq(&second));
        let other = resolver.lookup("127.0.0.1");
        assert!(!first.ptr_eq(&other));
        let answer = first.clone().await;
        assert!(answer.is_ok_and(|addrs| !addrs.is_empty()));
        // Done: the next connection looks the name up again.
        let third = resolver.lookup("localhost");
        assert!(!third.ptr_eq(&first));
    }

    #[tokio::test]
    async fn a_lookup_nobody_waits_for_any_more_is_not_kept() {
        let resolver = PolicyResolver::new(open(), Duration::from_secs(10));
        // Every connection that wanted it gave up at once.
        drop(resolver.lookup("localhost"));
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !resolver.lookups.lock().expect("not poisoned").is_empty() {
            assert!(
                tokio::time::Instant::now() < until,
                "the lookup never finished"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn many_connections_at_once_get_the_same_answer() {
        let resolver = PolicyResolver::new(open(), Duration::from_secs(10));
        let calls = (0..100).map(|_| {
            let mut r = resolver.clone();
            r.call(Name::from_str("localhost").expect("a valid name"))
        });
        for answer in futures_util::future::join_all(calls).await {
            let addrs: Vec<SocketAddr> = answer.expect("localhost resolves").collect();
            assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        }
        let left = resolver.lookups.lock().expect("not poisoned").len();
        assert_eq!(left, 0, "finished lookups are not kept");
    }

    #[tokio::test]
    async fn a_lookup_that_never_answers_fails_at_its_limit_and_is_not_kept() {
        let mut resolver = PolicyResolver::new(open(), Duration::from_millis(50));
        resolver.resolve = |_| std::future::pending().boxed();
        let started = tokio::time::Instant::now();
        let error = resolver
            .call(Name::from_str("stalls.example").expect("a valid name"))
            .await
            .expect_err("no answer");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(
            error
                .to_string()
                .contains("stalls.example took longer than"),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // The next connection asks again.
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while !resolver.lookups.lock().expect("not poisoned").is_empty() {
            assert!(tokio::time::Instant::now() < until, "the lookup was kept");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_policy_applies_to_the_shared_answer() {
        let mut resolver = PolicyResolver::new(AddressPolicy::default(), Duration::from_secs(10));
        let error = resolver
            .call(Name::from_str("localhost").expect("a valid name"))
            .await
            .expect_err("localhost is private");
        assert!(
            error.to_string().contains("resolves only to non-public"),
            "{error}"
        );
    }

    /// A stand-in resolver: every name is the metadata address, spelled
    /// in IPv4 and as IPv4-mapped IPv6.
    fn metadata_resolve(_: String) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let v4 = IpAddr::from([169, 254, 169, 254]);
        let mapped = IpAddr::V6(std::net::Ipv6Addr::from([
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254,
        ]));
        std::future::ready(Ok(vec![SocketAddr::new(v4, 0), SocketAddr::new(mapped, 0)])).boxed()
    }

    #[tokio::test]
    async fn a_name_resolving_to_a_metadata_address_is_refused_under_the_blanket_switch() {
        for policy in [
            open(),
            AddressPolicy::new(&DeliveryConfig {
                allow_private_targets: true,
                allowed_private_networks: vec!["169.254.0.0/16".parse().expect("a network")],
                ..DeliveryConfig::default()
            }),
        ] {
            let mut resolver = PolicyResolver::new(policy, Duration::from_secs(10));
            resolver.resolve = metadata_resolve;
            let error = resolver
                .call(Name::from_str("metadata.google.internal").expect("a valid name"))
                .await
                .expect_err("the metadata address is refused");
            let text = error.to_string();
            assert!(
                text.starts_with("refused: metadata.google.internal resolves only to"),
                "{text}"
            );
            assert!(
                text.contains("169.254.169.254 is a cloud metadata address"),
                "{text}"
            );
            assert!(
                text.contains(
                    "add exactly \"169.254.169.254/32\" to \
                     delivery.allowed_private_networks"
                ),
                "{text}"
            );
            assert!(text.contains("spelled ::ffff:169.254.169.254"), "{text}");
        }
        // Named exactly, it is allowed, in both spellings.
        let mut resolver = PolicyResolver::new(
            AddressPolicy::new(&DeliveryConfig {
                allowed_private_networks: vec!["169.254.169.254/32".parse().expect("a network")],
                ..DeliveryConfig::default()
            }),
            Duration::from_secs(10),
        );
        resolver.resolve = metadata_resolve;
        let addrs: Vec<SocketAddr> = resolver
            .call(Name::from_str("metadata.google.internal").expect("a valid name"))
            .await
            .expect("allowed by its exact entry")
            .collect();
        assert_eq!(addrs.len(), 2, "{addrs:?}");
    }

    #[tokio::test]
    async fn an_allowed_network_lets_only_its_own_addresses_through() {
        let mut resolver = PolicyResolver::new(
            AddressPolicy::new(&DeliveryConfig {
                allowed_private_networks: vec!["127.0.0.1/32".parse().expect("a network")],
                ..DeliveryConfig::default()
            }),
            Duration::from_secs(10),
        );
        resolver.resolve = |_| {
            std::future::ready(Ok(vec![
                SocketAddr::from(([127, 0, 0, 2], 0)),
                SocketAddr::from(([127, 0, 0, 1], 0)),
                SocketAddr::from(([10, 0, 0, 1], 0)),
            ]))
            .boxed()
        };
        let addrs: Vec<SocketAddr> = resolver
            .call(Name::from_str("db.internal").expect("a valid name"))
            .await
            .expect("127.0.0.1 is allowed")
            .collect();
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 1], 0))]);
    }
}
