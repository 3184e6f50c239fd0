//! The target guard end to end: with `delivery.allow_private_targets =
//! false` (the default of a real install) the daemon never connects to a
//! loopback target, however the URL spells it: an IP literal (IPv4, IPv6,
//! IPv4-mapped IPv6, the unspecified address, a decimal IPv4), `localhost`,
//! or a name that only the resolver finds to be loopback. Every other test
//! allows private targets, since their receivers listen on loopback; here
//! receivers listen on 127.0.0.1 and ::1 and must never get a request,
//! while each hook records the refusal. With
//! `delivery.allowed_private_networks`, only the networks listed are
//! reached, and never a cloud metadata address a listed network contains.

use std::net::{IpAddr, Ipv6Addr, ToSocketAddrs};

use walhook_lab::receiver::Receiver;

use crate::common::*;

const HOST: &str = "CREATE TABLE item (id int PRIMARY KEY, note text);";

/// Each hook gives up after two refused attempts, so its event is parked
/// and the slot can pass it.
const CONFIG: &str = "max_consecutive_errors = 2\nmax_backoff = \"300ms\"\n";

/// A host name, other than `localhost` and `*.localhost` (which the URL
/// check itself knows), that the system resolver resolves to loopback
/// addresses only: the machine's own name or another loopback name in
/// /etc/hosts. Only the resolver's guard can refuse it. Fails when there
/// is none, rather than test less.
fn name_resolving_to_loopback() -> String {
    let mut candidates = Vec::new();
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        candidates.push(name.trim().to_owned());
    }
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        if ip.is_loopback() {
            candidates.extend(fields.map(str::to_owned));
        }
    }
    candidates
        .into_iter()
        .filter(|n| {
            let lower = n.to_ascii_lowercase();
            !n.is_empty() && lower != "localhost" && !lower.ends_with(".localhost")
        })
        .find(|n| {
            (n.as_str(), 80).to_socket_addrs().is_ok_and(|addrs| {
                let addrs: Vec<_> = addrs.collect();
                !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no host name besides localhost resolves to loopback only here (tried the \
                 machine's name and /etc/hosts): the resolver's guard cannot be tested"
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_targets_are_refused_however_spelled_and_never_reached() {
    let name = name_resolving_to_loopback();
    let mut h = Harness::start_guarded(HOST, CONFIG).await;
    let v4 = Receiver::start().await.unwrap();
    let v6 = Receiver::start_on(Ipv6Addr::LOCALHOST.into())
        .await
        .unwrap();
    let port = v4.port();
    let targets = [
        (v4.url("/v4"), "127.0.0.1 is a non-public address (loopback"),
        (v6.url("/v6"), "::1 is a non-public address (loopback"),
        (
            format!("http://localhost:{port}/localhost"),
            "127.0.0.1 is a non-public address (loopback",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
            "is a non-public address (loopback",
        ),
        (
            format!("http://0.0.0.0:{port}/unspecified"),
            "0.0.0.0 is a non-public address",
        ),
        (
            format!("http://2130706433:{port}/decimal"),
            "127.0.0.1 is a non-public address (loopback",
        ),
        (
            format!("http://{name}:{port}/name"),
            "resolves only to non-public addresses: 127.",
        ),
    ];
    let mut hooks = Vec::new();
    for (url, refusal) in &targets {
        hooks.push((h.add_hook("item.*", url, None).await, url, refusal));
    }
    h.start_daemon().await;
    h.db.execute("INSERT INTO item VALUES (1, 'a')", &[])
        .await
        .unwrap();

    for (id, url, refusal) in &hooks {
        let usage = h
            .wait_usage(*id, |u| u.total_errors >= 2 && u.last_error.is_some())
            .await;
        let last_error = usage.last_error.as_deref().unwrap();
        assert!(
            last_error.contains("refused") && last_error.contains(*refusal),
            "webhook {id} ({url}): last_error {last_error:?}, expected a refusal naming {refusal:?}"
        );
        assert_eq!(usage.total_calls, usage.total_errors, "{url}: {usage:?}");
    }
    // Each hook parked the event after its refused attempts, so the slot
    // passes the change: every attempt there will be was made.
    h.wait_caught_up("the refused change settled").await;
    let reached: Vec<String> = v4
        .requests()
        .iter()
        .chain(v6.requests().iter())
        .map(|r| r.path.clone())
        .collect();
    assert!(
        reached.is_empty(),
        "the guard let requests reach loopback: {reached:?}; daemon log:\n{}",
        h.daemon_log()
    );
    assert!(h.stop_daemon().success());
}

/// With `delivery.allowed_private_networks` and the switch off, a
/// non-public target is delivered to only when a listed network holds it,
/// and a metadata address is refused even inside a listed network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_allowed_private_networks_are_reached() {
    let config =
        format!("{CONFIG}allowed_private_networks = [\"127.0.0.1/32\", \"169.254.0.0/16\"]\n");
    let mut h = Harness::start_guarded(HOST, &config).await;
    let receiver = Receiver::start().await.unwrap();
    let port = receiver.port();
    let allowed = h.add_hook("item.*", &receiver.url("/allowed"), None).await;
    let refused = [
        (
            format!("http://127.0.0.2:{port}/outside"),
            "127.0.0.2 is a non-public address (loopback 127.0.0.0/8; to allow it, add \
             \"127.0.0.2/32\" or a network containing it to delivery.allowed_private_networks, \
             or set delivery.allow_private_targets = true)",
        ),
        (
            format!("http://169.254.169.254:{port}/metadata"),
            "169.254.169.254 is a cloud metadata address",
        ),
    ];
    let mut hooks = Vec::new();
    for (url, refusal) in &refused {
        hooks.push((h.add_hook("item.*", url, None).await, url, refusal));
    }
    h.start_daemon().await;
    h.db.execute("INSERT INTO item VALUES (1, 'a')", &[])
        .await
        .unwrap();

    let delivered = receiver
        .wait_until(std::time::Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(
        delivered
            .iter()
            .map(|r| r.path.as_str())
            .collect::<Vec<_>>(),
        ["/allowed"],
        "daemon log:\n{}",
        h.daemon_log()
    );
    let usage = h.wait_usage(allowed, |u| u.total_calls >= 1).await;
    assert_eq!(usage.total_errors, 0, "{usage:?}");
    for (id, url, refusal) in &hooks {
        let usage = h
            .wait_usage(*id, |u| u.total_errors >= 2 && u.last_error.is_some())
            .await;
        let last_error = usage.last_error.as_deref().unwrap();
        assert!(
            last_error.contains("refused") && last_error.contains(*refusal),
            "webhook {id} ({url}): last_error {last_error:?}, expected a refusal naming {refusal:?}"
        );
        assert_eq!(usage.total_calls, usage.total_errors, "{url}: {usage:?}");
    }
    h.wait_caught_up("the refused changes settled").await;
    assert_eq!(
        receiver.requests().len(),
        1,
        "only the allowed hook is reached"
    );
    assert!(h.stop_daemon().success());
}
