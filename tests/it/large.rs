//! One transaction of 1,000,000 rows: memory stays bounded by the in-flight
//! budget, and the position is confirmed only after the whole transaction.

use std::time::{Duration, Instant};

use walhook_lab::receiver::Receiver;

use crate::common::*;

/// One transaction of `rows` rows; returns the WAL position after it.
async fn insert_bulk(h: &Harness, rows: i64) -> u64 {
    h.db.execute(
        "INSERT INTO bulk SELECT i, i % 1000, 'label ' || i FROM generate_series(1::bigint, $1) i",
        &[&rows],
    )
    .await
    .unwrap();
    h.current_lsn().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_transaction_streams_with_bounded_memory() {
    let rows: i64 = std::env::var("WALHOOK_LARGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // A small budget, so the bound is what holds memory down.
    let budget = 16 * 1024 * 1024;
    let mut h = Harness::start(
        "CREATE TABLE bulk (id bigint PRIMARY KEY, n int, label text);",
        &format!("max_in_flight_bytes = {budget}\nconcurrency_per_webhook = 16\n"),
    )
    .await;
    let receiver = Receiver::start_counting().await.unwrap();
    h.add_hook("bulk.created", &receiver.url("/bulk"), None)
        .await;
    h.start_daemon().await;
    let end = insert_bulk(&h, rows).await;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(900);
    // Until the last row is delivered the slot stays before the commit.
    while receiver.count() < rows as u64 {
        let confirmed = h.confirmed().await;
        assert!(
            confirmed < end || receiver.count() >= rows as u64,
            "position confirmed ({confirmed:X}) with {} of {rows} rows delivered",
            receiver.count()
        );
        assert!(
            Instant::now() < deadline,
            "only {} rows in 900 s",
            receiver.count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    h.wait_confirmed(
        "the slot to pass the transaction",
        end,
        Duration::from_secs(30),
    )
    .await;
    let rss = peak_rss_kib(h.daemon_pid());
    eprintln!(
        "{rows} rows in one transaction: delivered in {took:.1?} ({:.0}/s), walhook peak RSS {} MiB (budget {} MiB)",
        rows as f64 / took.as_secs_f64(),
        rss / 1024,
        budget / 1024 / 1024
    );
    // The budget plus the process's own overhead (runtime, TLS, buffers).
    assert!(rss < (budget / 1024) + 96 * 1024, "peak RSS {rss} KiB");
    assert!(h.stop_daemon().success());
}

/// A target that fails for a long while, never tripping TooManyErrors and
/// never parked: walhook stops reading at its byte budget instead of
/// growing, keeps the replication connection alive, and delivers everything
/// once the target is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_holds_memory_at_the_budget() {
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::Arc;
    let rows: i64 = std::env::var("WALHOOK_OUTAGE_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let budget = 8 * 1024 * 1024;
    let mut h = Harness::start_with(
        vec![("wal_sender_timeout".into(), "5s".into())],
        "CREATE TABLE bulk (id bigint PRIMARY KEY, n int, label text);",
        &format!(
            "max_in_flight_bytes = {budget}\nmax_consecutive_errors = 100000000\n\
             max_backoff = \"1s\"\nbacklog_limit = 100000000\nbacklog_max_age = \"1h\"\n"
        ),
    )
    .await;
    let status = Arc::new(AtomicU16::new(503));
    let s = Arc::clone(&status);
    let receiver = Receiver::start_with(move |_, _| s.load(Ordering::SeqCst))
        .await
        .unwrap();
    h.add_hook("bulk.created", &receiver.url("/down"), None)
        .await;
    h.start_daemon().await;
    let end = insert_bulk(&h, rows).await;
    // Three times wal_sender_timeout without a single delivery.
    let outage: u64 = std::env::var("WALHOOK_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let rss_outage = peak_rss_kib(h.daemon_pid());
    assert!(h.daemon_running());
    assert!(
        h.confirmed().await < end,
        "nothing was delivered, nothing confirmed"
    );
    let log = h.daemon_log();
    assert!(
        !log.contains("reconnecting"),
        "the connection was cut during back-pressure:\n{log}"
    );
    status.store(200, Ordering::SeqCst);
    h.wait_confirmed(
        "the slot to pass the transaction",
        end,
        Duration::from_secs(120),
    )
    .await;
    let delivered: std::collections::BTreeSet<i64> = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["PrimaryKey"].as_i64().unwrap())
        .collect();
    assert_eq!(
        delivered.len() as i64,
        rows,
        "every row delivered after the outage"
    );
    let rss = peak_rss_kib(h.daemon_pid());
    eprintln!(
        "outage: peak RSS {} MiB during 15 s of 503s, {} MiB overall (budget {} MiB)",
        rss_outage / 1024,
        rss / 1024,
        budget / 1024 / 1024
    );
    assert!(rss < (budget / 1024) + 96 * 1024, "peak RSS {rss} KiB");
    assert!(h.stop_daemon().success());
}
