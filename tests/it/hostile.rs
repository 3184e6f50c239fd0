//! Hostile inputs: targets that answer with huge bodies, never answer,
//! trickle, lie or redirect, each beside a healthy hook whose pace must
//! hold; a row larger than any body walhook sends; and secrets that must
//! never reach the log, even at trace level.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walhook_lab::receiver::Receiver;

use crate::common::*;

const ITEMS: &str = "CREATE TABLE item (id int PRIMARY KEY, payload text);";

/// Short timeouts and few retries, so hostile targets trip in seconds.
const FAST: &str = "max_consecutive_errors = 3\nmax_backoff = \"300ms\"\ntimeout = \"2s\"\nconnect_timeout = \"1s\"\n";

/// What a hostile target does with each connection.
#[derive(Clone, Copy, Debug)]
enum Hostility {
    /// 200 with a 3 GB body, streamed as fast as it is read.
    Huge2xx,
    /// 500 with a 3 GB body.
    Huge5xx,
    /// 200, chunked, chunks for ever.
    EndlessChunks,
    /// Accepts and never answers.
    Blackhole,
    /// Sends its status line one byte a second.
    Slowloris,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// 302 to another target (must not be followed).
    Redirect,
    /// Announces a 1 GB body, sends 10 bytes, then holds the connection.
    LyingLength,
}

async fn read_request_head(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if seen.len() > 1 << 20 {
            return;
        }
    }
}

async fn serve_hostile(stream: TcpStream, how: Hostility, redirect_to: String) {
    let mut stream = stream;
    read_request_head(&mut stream).await;
    let chunk = vec![b'x'; 64 * 1024];
    match how {
        Hostility::Huge2xx | Hostility::Huge5xx => {
            let status = if matches!(how, Hostility::Huge2xx) {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let head = format!("HTTP/1.1 {status}\r\nContent-Length: 3000000000\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut sent = 0u64;
            while sent < 3_000_000_000 && stream.write_all(&chunk).await.is_ok() {
                sent += chunk.len() as u64;
            }
        }
        Hostility::EndlessChunks => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let frame = [
                format!("{:x}\r\n", chunk.len()).into_bytes(),
                chunk.clone(),
                b"\r\n".to_vec(),
            ]
            .concat();
            while stream.write_all(&frame).await.is_ok() {}
        }
        Hostility::Blackhole => {
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Hostility::Slowloris => {
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" {
                if stream.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Hostility::Garbage => {
            let _ = stream
                .write_all(b"\x00\x01\x02 not http at all \xff\xfe\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Hostility::Redirect => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {redirect_to}\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Hostility::LyingLength => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n0123456789")
                .await;
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
    }
}

/// A loopback target that behaves as `how` on every connection.
/// A hostile target's URL, and when it was first connected to.
async fn hostile_target(
    how: Hostility,
    redirect_to: String,
) -> (String, Arc<std::sync::OnceLock<Instant>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hostile", listener.local_addr().unwrap());
    let first_contact = Arc::new(std::sync::OnceLock::new());
    let contacted = Arc::clone(&first_contact);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = contacted.set(Instant::now());
            tokio::spawn(serve_hostile(stream, how, redirect_to.clone()));
        }
    });
    (url, first_contact)
}

/// Insert `rows` rows, one transaction each, wait until the healthy
/// receiver has all of them, and return each one's latency from its
/// commit (the INSERT's return) to its arrival, slowest last.
async fn healthy_latencies(
    h: &Harness,
    healthy: &Receiver,
    first: i32,
    rows: i32,
) -> Vec<Duration> {
    let mut committed = std::collections::BTreeMap::new();
    for id in first..first + rows {
        h.db.execute("INSERT INTO item VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
        committed.insert(id as i64, Instant::now());
    }
    let ours = |r: &walhook_lab::receiver::ReceivedRequest| {
        r.path == "/healthy"
            && r.json()["PrimaryKey"]
                .as_i64()
                .is_some_and(|pk| committed.contains_key(&pk))
    };
    let got = healthy
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().filter(|r| ours(r)).count() >= rows as usize
        })
        .await;
    let mut latencies: Vec<Duration> = got
        .iter()
        .filter(|r| ours(r))
        .map(|r| {
            let pk = r.json()["PrimaryKey"].as_i64().unwrap();
            r.arrived.saturating_duration_since(committed[&pk])
        })
        .collect();
    assert_eq!(
        latencies.len(),
        rows as usize,
        "the healthy hook fell behind; log:\n{}",
        h.daemon_log()
    );
    latencies.sort();
    latencies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_targets_cost_a_healthy_hook_nothing_and_walhook_little_memory() {
    let mut h = Harness::start(ITEMS, FAST).await;
    let healthy = Receiver::start().await.unwrap();
    h.add_hook("item.created", &healthy.url("/healthy"), None)
        .await;
    h.start_daemon().await;
    // Warm up, then the pace with no hostile hook beside it.
    healthy_latencies(&h, &healthy, 1, 5).await;
    let alone = healthy_latencies(&h, &healthy, 100, 20).await;

    let mut hostile = Vec::new();
    for how in [
        Hostility::Huge2xx,
        Hostility::Huge5xx,
        Hostility::EndlessChunks,
        Hostility::Blackhole,
        Hostility::Slowloris,
        Hostility::Garbage,
        Hostility::Redirect,
        Hostility::LyingLength,
    ] {
        let (url, first_contact) = hostile_target(how, healthy.url("/redirected")).await;
        hostile.push((
            how,
            h.add_hook("item.created", &url, None).await,
            first_contact,
        ));
    }
    let beside = healthy_latencies(&h, &healthy, 1000, 20).await;
    let healthy_done = Instant::now();
    // The healthy hook had its rows while every hostile target was being
    // sent to: each had its first connection by then. (Whether a hostile
    // hook has tripped by then is a matter of timing: with several of its
    // requests in flight at once, three fail together.)
    let uncontacted: Vec<_> = hostile
        .iter()
        .filter(|(_, _, first)| first.get().is_none_or(|&at| at > healthy_done))
        .map(|(how, _, _)| how)
        .collect();
    let (slowest_alone, slowest_beside) = (alone[alone.len() - 1], beside[beside.len() - 1]);
    assert!(
        slowest_beside < Duration::from_millis(500),
        "a healthy event waited {slowest_beside:?} beside hostile targets (alone at most \
         {slowest_alone:?}); log:\n{}",
        h.daemon_log()
    );
    assert!(
        uncontacted.is_empty(),
        "hostile targets not yet sent to when the healthy hook had its rows: {uncontacted:?}; \
         daemon log:\n{}",
        h.daemon_log()
    );
    // Let every hostile target play out: each hook is delivered or trips
    // and parks (its events settle either way), so the slot catches up.
    h.wait_caught_up("every hostile hook delivered or parked")
        .await;
    let peak_mib = peak_rss_kib(h.daemon_pid()) / 1024;
    assert!(
        peak_mib < 200,
        "walhook peaked at {peak_mib} MiB against hostile targets"
    );
    for (how, id, _) in hostile {
        match how {
            // A 2xx is a success whatever follows it; the body is cut.
            Hostility::Huge2xx | Hostility::EndlessChunks | Hostility::LyingLength => {
                let usage = h.wait_usage(id, |u| u.total_calls > 0).await;
                assert_eq!(usage.total_errors, 0, "{how:?}: {usage:?}")
            }
            _ => {
                h.wait_usage(id, |u| u.total_errors > 0).await;
            }
        }
    }
    eprintln!(
        "healthy hook: latency at most {slowest_alone:?} alone, {slowest_beside:?} beside 8 \
         hostile targets; walhook peak RSS {peak_mib} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_larger_than_any_body_is_sent_without_its_largest_value_and_parks_cleanly() {
    let mut h = Harness::start(ITEMS, "max_body_bytes = 1048576\n").await;
    let healthy = Receiver::start().await.unwrap();
    let healthy_id = h
        .add_hook("item.created", &healthy.url("/healthy"), None)
        .await;
    let parked_id = h
        .add_hook("item.created", &healthy.url("/parked"), None)
        .await;
    // TooManyErrors: every event for it is parked in walhook.delivery.
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = $1",
        &[&parked_id],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    // 40 MB of control characters: each becomes six bytes of JSON.
    h.db.execute(
        "INSERT INTO item VALUES (1, repeat(chr(1), 40 * 1024 * 1024))",
        &[],
    )
    .await
    .unwrap();
    h.db.execute("INSERT INTO item VALUES (2, 'small')", &[])
        .await
        .unwrap();
    let started = Instant::now();
    let got = healthy
        .wait_until(Duration::from_secs(60), |r| {
            r.iter().filter(|r| r.path == "/healthy").count() >= 2
        })
        .await;
    let waited = started.elapsed();
    let healthy_got: Vec<_> = got.iter().filter(|r| r.path == "/healthy").collect();
    assert_eq!(healthy_got.len(), 2, "log:\n{}", h.daemon_log());
    // Two rows: they may arrive in either order.
    let row = |id: i64| {
        healthy_got
            .iter()
            .find(|r| r.json()["FieldValues"]["id"] == id)
            .unwrap_or_else(|| panic!("no delivery of row {id}"))
    };
    let big = row(1).json();
    assert!(big["FieldValues"].get("payload").is_none(), "{big}");
    assert_eq!(big["MissingColumns"], serde_json::json!(["payload"]));
    assert!(row(1).body.len() <= 1024 * 1024);
    assert_eq!(row(2).json()["FieldValues"]["payload"], "small");
    h.wait_caught_up("both rows settled").await;
    let parked: i64 =
        h.db.query_one(
            "SELECT count(*) FROM walhook.delivery WHERE webhook_id = $1",
            &[&parked_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(parked, 2);
    assert!(h.daemon_log().contains("max_body_bytes"));
    let _ = healthy_id;
    eprintln!("the healthy hook had both rows {waited:?} after the commits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let mut h = Harness::start(ITEMS, "").await;
    h.log_filter = "trace".into();
    let receiver = Receiver::start().await.unwrap();
    let url = receiver
        .url("/hook")
        .replace("http://", "http://hookuser:url-password-4711@");
    let id: i32 =
        h.db.query_one(
            "INSERT INTO walhook.webhook (name, events, target_url, secret, headers) \
             VALUES ('secretive', 'item.*', $1, 'hook-secret-4711', \
                     '{\"X-Api-Key\": \"header-value-4711\"}') RETURNING webhook_id",
            &[&url],
        )
        .await
        .unwrap()
        .get(0);
    h.start_daemon().await;
    h.db.execute("INSERT INTO item VALUES (1, 'x')", &[])
        .await
        .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(got.len(), 1, "log:\n{}", h.daemon_log());
    // The hook's row also travels through the registry snapshot insert.
    h.db.execute(
        "UPDATE walhook.webhook SET name = 'renamed' WHERE webhook_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    h.wait_caught_up("the rename").await;
    h.stop_daemon();
    let signature = got[0]
        .header("x-superoffice-signature")
        .expect("signed")
        .to_owned();
    let log = h.daemon_log();
    assert!(log.contains("streaming"), "the daemon ran: {log}");
    for secret in [
        "hook-secret-4711",
        "header-value-4711",
        "url-password-4711",
        signature.as_str(),
    ] {
        assert!(!log.contains(secret), "{secret:?} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonb_of_any_depth_postgresql_accepts_is_delivered_as_to_jsonb_gives_it() {
    let mut h = Harness::start("CREATE TABLE doc (id int PRIMARY KEY, body jsonb);", "").await;
    let receiver = Receiver::start().await.unwrap();
    let depth = 10_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let properties = format!("{{\"p\": {}{}}}", "[".repeat(2_000), "]".repeat(2_000));
    h.db.execute(
        "INSERT INTO walhook.webhook (name, events, target_url, properties) \
         VALUES ('deep', 'doc.created', $1, $2::text::jsonb)",
        &[&receiver.url("/deep"), &properties],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.db.execute("INSERT INTO doc VALUES (1, $1::text::jsonb)", &[&nested])
        .await
        .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(got.len(), 1, "log:\n{}", h.daemon_log());
    // Compared as text: the value is the same JSON, not a string of it.
    let body = String::from_utf8_lossy(&got[0].body);
    assert!(
        body.contains(&format!("\"body\":{nested}")),
        "FieldValues.body is not the nested array"
    );
    assert!(body.contains(&format!("\"Properties\":{properties}").replace(": ", ":")));
    assert!(!h.daemon_log().contains("not valid JSON"));
}

/// Any role may emit logical messages (`pg_logical_emit_message` is
/// executable by PUBLIC), under any prefix and of any size, and the stream
/// carries them all. One under another prefix is read off the wire in
/// pieces and dropped, never held whole; one under walhook's prefix that
/// is too large to be a watermark, or is not one, is counted and logged
/// (at most once a minute), and the changes around them go out.
///
/// `WALHOOK_TEST_MESSAGE_MB` sets the size of the large message (64 by
/// default; the figure was taken at 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_logical_message_from_any_role_is_skipped_without_being_held() {
    let mib: usize = std::env::var("WALHOOK_TEST_MESSAGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let port = free_port();
    let mut h = Harness::start(
        ITEMS,
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.created", &receiver.url("/items"), None)
        .await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO item VALUES (1, 'before')")
        .await
        .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| r.len() == 1)
        .await;
    assert_eq!(got.len(), 1);
    let baseline = peak_rss_kib(h.daemon_pid());

    // An unprivileged role, as any application user.
    h.db.batch_execute("CREATE ROLE nobody LOGIN")
        .await
        .unwrap();
    let nobody = {
        let url = h.cluster.url("postgres").replace("postgres@", "nobody@");
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    };
    let started = Instant::now();
    nobody
        .batch_execute(&format!(
            "SELECT pg_logical_emit_message(true, 'someone.else', repeat('x', {mib} * 1024 * 1024)); \
             SELECT pg_logical_emit_message(false, 'someone.else', repeat('y', 1024 * 1024)); \
             SELECT pg_logical_emit_message(true, 'walhook', repeat('z', 2 * 1024 * 1024)); \
             SELECT pg_logical_emit_message(true, 'walhook', '{{\"not\": \"a watermark\"}}');"
        ))
        .await
        .unwrap();
    h.db.batch_execute("INSERT INTO item VALUES (2, 'after')")
        .await
        .unwrap();
    let end = h.current_lsn().await;
    let got = receiver
        .wait_until(Duration::from_secs(120), |r| r.len() == 2)
        .await;
    assert_eq!(got.len(), 2, "the change after the messages never came");
    h.wait_confirmed(
        "the slot to pass the messages",
        end,
        Duration::from_secs(30),
    )
    .await;
    let took = started.elapsed();
    let peak = peak_rss_kib(h.daemon_pid());
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, count) in [
        ("other_prefix", 2),
        ("too_large", 1),
        ("not_a_watermark", 1),
    ] {
        let line = format!("walhook_logical_messages_ignored_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "no {line:?} in:\n{metrics}");
    }
    // Logged at most once a minute: the second odd message is held back.
    let log = h.daemon_log();
    assert!(log.contains("bytes (skipped unread)"), "{log}");
    assert_eq!(
        log.matches("is not a backfill watermark").count(),
        1,
        "{log}"
    );
    eprintln!(
        "a {mib} MiB logical message under another prefix: walhook peak RSS {} MiB before, {} MiB \
         after; passed in {took:.1?}",
        baseline / 1024,
        peak / 1024
    );
    // The message is never held: far less than its size on top.
    assert!(
        peak < baseline + 16 * 1024,
        "walhook's peak RSS went from {baseline} KiB to {peak} KiB around a {mib} MiB message"
    );
    assert!(h.stop_daemon().success());
}
