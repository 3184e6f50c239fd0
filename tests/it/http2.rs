//! HTTP/2 to targets: walhook's real binary against loopback receivers that
//! record each request's HTTP version and the connection it came on.
//! `delivery.http_version` = "auto" takes h2 where the TLS handshake offers
//! it and HTTP/1.1 where not, "http1" never uses h2, "http2" speaks it with
//! prior knowledge, also on cleartext; concurrent requests to an h2 target
//! share one connection.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use axum::http::Version;
use walhook_lab::h2_target::{H2Target, Refusal};
use walhook_lab::receiver::{ReceivedRequest, Receiver};
use walhook_lab::tls::ServerTls;

use crate::common::*;

const CONTACT: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL
);
";

const WAIT: Duration = Duration::from_secs(60);

/// The harness's config with `line` added to its `[delivery]` table (the
/// last one), as a new file beside it.
fn config_with(h: &Harness, line: &str, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let path = h.dir.path().join(name);
    std::fs::write(&path, format!("{text}\n{line}\n")).unwrap();
    path
}

/// `walhook webhook test HOOK` with another config file, off the runtime's
/// threads (the receiver answers on them meanwhile).
async fn webhook_test(config: &Path, hook: i32) -> Output {
    walhook_async(config, &["webhook", "test", &hook.to_string()]).await
}

/// `rows` new contacts in one transaction.
async fn insert_contacts(h: &Harness, rows: usize) {
    h.db.execute(
        "INSERT INTO contact (name) SELECT 'c' || n FROM generate_series(1, $1::int) n",
        &[&(rows as i32)],
    )
    .await
    .unwrap();
}

fn versions(requests: &[ReceivedRequest]) -> Vec<Version> {
    requests.iter().map(|r| r.version).collect()
}

/// The most requests that were in the receiver's handler at once, as its
/// records show: each answered `delay` after it arrived, so requests
/// answered less than `delay` apart were in flight together.
fn most_at_once(requests: &[ReceivedRequest], delay: Duration) -> usize {
    let mut answered: Vec<Instant> = requests.iter().map(|r| r.at).collect();
    answered.sort();
    let mut most = 0;
    let mut first = 0;
    for (last, at) in answered.iter().enumerate() {
        while at.duration_since(answered[first]) >= delay {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

/// Over TLS, "auto" (the default) delivers over h2 to a target that offers
/// it and over HTTP/1.1 to one that offers only that; "http1" keeps to
/// HTTP/1.1 with the h2 target; "http2" with a target that does not speak
/// it fails in words that name the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_auto_negotiates_h2_and_http1_keeps_to_http11() {
    let ca = Ca::new("walhook http2 test CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let h2 = Receiver::start_https(ServerTls::new(&cert, &key).unwrap())
        .await
        .unwrap();
    let http1 = Receiver::start_https(ServerTls::new(&cert, &key).unwrap().http1_only())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut h = Harness::start(
        CONTACT,
        &format!("ca_file = {:?}", ca_file.display().to_string()),
    )
    .await;
    let to_h2 = h.add_hook("contact.*", &h2.url("/h2"), None).await;
    let to_http1 = h.add_hook("contact.*", &http1.url("/http1"), None).await;

    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact (name) VALUES ('Acme');
         UPDATE contact SET name = 'Acme Ltd' WHERE contact_id = 1;",
    )
    .await
    .unwrap();
    let got = h2.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(
        versions(&got),
        [Version::HTTP_2; 2],
        "daemon log:\n{}",
        h.daemon_log()
    );
    let got = http1.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(
        versions(&got),
        [Version::HTTP_11; 2],
        "daemon log:\n{}",
        h.daemon_log()
    );

    // "http1": the target that offers h2 is spoken to in HTTP/1.1.
    let config = config_with(&h, "http_version = \"http1\"", "http1.toml");
    let out = webhook_test(&config, to_h2).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = h2.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(got[2].header("x-hook-test"), Some("true"));
    assert_eq!(got[2].version, Version::HTTP_11);

    // "http2" with a target that offers only HTTP/1.1: refused in the
    // handshake, and said so.
    let config = config_with(&h, "http_version = \"http2\"", "http2.toml");
    let out = webhook_test(&config, to_http1).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "TLS: localhost does not offer HTTP/2 (delivery.http_version = \"http2\"): set it \
             to \"auto\" to use HTTP/1.1 with targets that do not speak HTTP/2"
        ),
        "{}",
        text(&out)
    );
    assert!(!http1.wait_handshake_failure(WAIT).await.is_empty());
    assert_eq!(http1.requests().len(), 2);
}

/// "http2" speaks HTTP/2 with prior knowledge to a plain http target (h2c),
/// where "auto" uses HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_works_on_cleartext() {
    let receiver = Receiver::start().await.unwrap();
    let mut h = Harness::start(CONTACT, "http_version = \"http2\"").await;
    let hook = h.add_hook("contact.*", &receiver.url("/h2c"), None).await;
    assert!(receiver.url("/h2c").starts_with("http://"));

    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact (name) VALUES ('Acme');
         INSERT INTO contact (name) VALUES ('Umbrella');",
    )
    .await
    .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(
        versions(&got),
        [Version::HTTP_2; 2],
        "daemon log:\n{}",
        h.daemon_log()
    );
    let usage = h.wait_usage(hook, |u| u.total_calls == 2).await;
    assert_eq!(usage.total_errors, 0, "{usage:?}");

    // The same hook with the key left out ("auto"): HTTP/1.1.
    let auto = h.dir.path().join("auto.toml");
    let without: String = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("http_version"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&auto, without).unwrap();
    let out = webhook_test(&auto, hook).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(got[2].header("x-hook-test"), Some("true"));
    assert_eq!(got[2].version, Version::HTTP_11);
}

/// Many requests in flight at once to an h2 target all travel on one
/// connection; the same load to a target that offers only HTTP/1.1 takes
/// a connection per request in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_to_an_h2_target_share_one_connection() {
    const ROWS: usize = 120;
    // Each answer takes this long, so the requests of a hook overlap, as
    // with a distant target.
    let delay = Duration::from_millis(300);
    let ca = Ca::new("walhook http2 test CA");
    let (cert, key) = ca.server_cert(&["localhost"]);
    let h2 = Receiver::start_https_slow(ServerTls::new(&cert, &key).unwrap(), delay)
        .await
        .unwrap();
    let http1 =
        Receiver::start_https_slow(ServerTls::new(&cert, &key).unwrap().http1_only(), delay)
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut h = Harness::start(
        CONTACT,
        &format!(
            "ca_file = {:?}\nconcurrency_per_webhook = 32",
            ca_file.display().to_string()
        ),
    )
    .await;
    h.add_hook("contact.*", &h2.url("/h2"), None).await;
    h.add_hook("contact.*", &http1.url("/http1"), None).await;

    h.start_daemon().await;
    insert_contacts(&h, ROWS).await;

    let got = h2.wait_until(WAIT, |r| r.len() >= ROWS).await;
    assert_eq!(got.len(), ROWS, "daemon log:\n{}", h.daemon_log());
    assert!(got.iter().all(|r| r.version == Version::HTTP_2));
    let at_once = most_at_once(&got, delay);
    assert!(
        at_once >= 8,
        "at most {at_once} h2 requests were in flight together"
    );
    assert_eq!(
        h2.connections_used(),
        1,
        "{at_once} h2 requests in flight together; daemon log:\n{}",
        h.daemon_log()
    );

    let got = http1.wait_until(WAIT, |r| r.len() >= ROWS).await;
    assert_eq!(got.len(), ROWS, "daemon log:\n{}", h.daemon_log());
    assert!(got.iter().all(|r| r.version == Version::HTTP_11));
    let at_once = most_at_once(&got, delay);
    assert!(
        at_once >= 8,
        "at most {at_once} HTTP/1.1 requests were in flight together"
    );
    assert!(
        http1.connections_used() >= at_once,
        "{} connections for {at_once} requests in flight together",
        http1.connections_used()
    );
}

/// The distinct EventIds of the bodies a target answered.
fn event_ids(bodies: &[bytes::Bytes]) -> std::collections::BTreeSet<String> {
    bodies
        .iter()
        .map(|b| {
            let json: serde_json::Value = serde_json::from_slice(b).unwrap();
            json["EventId"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// A stream the target refused unprocessed is sent again at once and is
/// no error: nginx ends each h2 connection after 1,000 requests with a
/// GOAWAY that refuses what was in flight past it, which used to count
/// dozens of errors at once and park a healthy hook within a second.
/// Streams reset with REFUSED_STREAM (a server at its stream limit) are
/// sent again the same way.
///
/// Like nginx (1,000 requests per connection, at most 128 streams at
/// once), the target answers more requests per connection than walhook
/// has in flight to it, so a resend, which opens one of the new
/// connection's first streams, is answered there. A target that ends its
/// connections sooner than that can refuse one request on connection after
/// connection; a request refused on every try is the next test's case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_unprocessed_are_sent_again_and_are_no_error() {
    const ROWS: usize = 300;
    const IN_FLIGHT: usize = 32;
    const GO_AWAY_AFTER: u64 = 2 * IN_FLIGHT as u64;
    let going_away = H2Target::start(Refusal::GoAwayAfter(GO_AWAY_AFTER))
        .await
        .unwrap();
    let refusing = H2Target::start(Refusal::RefuseEvery(7)).await.unwrap();
    let mut h = Harness::start(
        CONTACT,
        &format!("http_version = \"http2\"\nconcurrency_per_webhook = {IN_FLIGHT}"),
    )
    .await;
    let to_going_away = h
        .add_hook("contact.*", &going_away.url("/goaway"), None)
        .await;
    let to_refusing = h
        .add_hook("contact.*", &refusing.url("/refused"), None)
        .await;

    h.start_daemon().await;
    insert_contacts(&h, ROWS).await;

    for (hook, target) in [(to_going_away, &going_away), (to_refusing, &refusing)] {
        let usage = h.wait_usage(hook, |u| u.total_calls >= ROWS as i64).await;
        assert_eq!(
            (usage.total_calls, usage.total_errors),
            (ROWS as i64, 0),
            "hook {hook}: {usage:?}; daemon log:\n{}",
            h.daemon_log()
        );
        // Each event answered once: nothing processed was sent again.
        assert_eq!(target.answered().len(), ROWS);
        assert_eq!(event_ids(&target.answered()).len(), ROWS);
    }
    // The target's GOAWAYs did refuse streams in flight (the harness logs
    // at debug). Connections are not counted against GOAWAYs: when one
    // lands while the pool still lists that connection, a request can open
    // another, which the pool keeps out and closes after its answer,
    // without a GOAWAY.
    let target = format!("{}: ", going_away.addr());
    let log = h.daemon_log();
    assert!(
        log.lines()
            .any(|l| l.contains(&target) && l.contains("refused the request unprocessed")),
        "no stream past a GOAWAY was refused; daemon log:\n{log}"
    );
    // Every 7th new request refused, and none of the resends.
    assert_eq!(refusing.refused(), (ROWS / 7) as u64);
}

/// A target that refuses every stream gets a bounded number of resends
/// per attempt, then a failure that says so: the attempt is not repeated
/// forever on the grounds that nothing was processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refusing_every_stream_fails_after_three_resends() {
    let refusing = H2Target::start(Refusal::RefuseAll).await.unwrap();
    let h = Harness::start(CONTACT, "http_version = \"http2\"").await;
    let hook = h
        .add_hook("contact.*", &refusing.url("/always"), None)
        .await;
    let out = webhook_test(&h.config_path, hook).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("the target refused the request unprocessed 4 times in a row"),
        "{}",
        text(&out)
    );
    assert_eq!(refusing.refused(), 4);
    assert!(refusing.answered().is_empty());
}
