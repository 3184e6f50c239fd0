//! The HTTP client every delivery uses: timeouts, no redirects, TLS as
//! `tls` configures it, HTTP/2 or HTTP/1.1 as `delivery.http_version`
//! says, and a resolver that enforces the target policy on every resolved
//! address.
//!
//! # Connections
//!
//! Over HTTP/2 every request to one host shares a single connection: a
//! burst that starts before the first handshake has told the version may
//! open a few, and those that learn h2 second are closed unused. Requests
//! beyond the target's limit of concurrent streams (often 100 to 250) wait
//! for a free stream within `delivery.timeout`. Over HTTP/1.1 each request
//! in flight holds a connection of its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::target_policy::is_public;
use super::tls;
use crate::config::{Concurrency, DeliveryConfig, HttpVersion};

/// How long an idle connection is kept. Over HTTP/1.1 a hook keeps as
/// many connections as it has requests in flight: were fewer kept idle,
/// each wave of answers would close the rest and the next wave would open
/// them again (a handshake per request, which on a 50 ms target raised
/// the round trip to 75 ms and on loopback cost CPU per request). A burst
/// that left hundreds idle gives them back to the target after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often an HTTP/2 connection is pinged, busy or idle, and how long
/// the answer may take: a connection that died without a word (a target
/// that vanished, a NAT that forgot it) would otherwise hold every request
/// multiplexed on it until `delivery.timeout`, and an idle one would be
/// handed the next burst. A dead one is closed within about 15 s and the
/// next request opens a new one.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds the HTTP client used for every target. Errors name the TLS key
/// and file at fault (`delivery.ca_file`, `client_cert_file`,
/// `client_key_file`).
pub fn http_client(config: &DeliveryConfig) -> anyhow::Result<reqwest::Client> {
    let (tls, trust) = tls::client_config(config)?;
    tracing::debug!("HTTPS targets: trusting {trust}");
    if let Some(problem) = config
        .client_key_file
        .as_deref()
        .and_then(tls::key_file_exposure)
    {
        tracing::warn!("{problem}");
    }
    tracing::debug!(
        "HTTP version to targets: {} (delivery.http_version)",
        config.http_version.name()
    );
    let builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(config.connect_timeout)
        .timeout(config.timeout)
        // A redirect is reported as a failure, never followed: the hook's
        // URL is what the DBA configured.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(match config.concurrency_per_webhook {
            Concurrency::Fixed(n) => n,
            Concurrency::Adaptive => config.max_concurrency_per_webhook,
        })
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // The flow-control window follows the measured bandwidth-delay
        // product, so large bodies to a distant target are not held to the
        // 64 KiB default window per round trip.
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(H2_PING_INTERVAL)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .dns_resolver(Arc::new(PolicyResolver {
            allow_private: config.allow_private_targets,
        }));
    // `auto` needs nothing here: the TLS configuration offers h2 and
    // http/1.1 and the target's choice decides; plain http stays HTTP/1.1.
    let builder = match config.http_version {
        HttpVersion::Auto => builder,
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_prior_knowledge(),
    };
    Ok(builder.build()?)
}

/// Resolves host names and keeps only the addresses the policy allows, so
/// the check applies to the address actually connected to (a name that
/// resolves to a private address, or re-resolves to one later, is refused).
struct PolicyResolver {
    allow_private: bool,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allow_private || is_public(&a.ip()))
                .collect();
            if allowed.is_empty() && !addrs.is_empty() {
                let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "refused: {host} resolves only to non-public addresses ({}); set \
                     delivery.allow_private_targets = true to allow them",
                    list.join(", ")
                )
                .into());
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}
