//! The delivery engine against targets that fail on purpose: retries,
//! TooManyErrors and parking, 410, a blackhole beside a healthy hook,
//! per-row order, and parked events surviving a restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const CRM: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL,
    version integer NOT NULL DEFAULT 0
);
";

/// Fast retries so failures play out in seconds (appended under [delivery]).
const FAST: &str = "max_consecutive_errors = 3\nmax_backoff = \"300ms\"\ntimeout = \"2s\"\nconnect_timeout = \"1s\"\n";

const WAIT: Duration = Duration::from_secs(30);

/// Wait until the number of `id`'s parked events satisfies `done`.
async fn wait_parked(h: &Harness, id: i32, done: impl Fn(i64) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(h.parked_count(id).await) {
        assert!(
            Instant::now() < deadline,
            "webhook {id}: parked count never as expected; log:\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state(h: &Harness, id: i32, want: i16) {
    let deadline = Instant::now() + WAIT;
    while h.webhook_state(id).await != want {
        assert!(
            Instant::now() < deadline,
            "webhook {id} never reached state {want}; log:\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn names(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.json()["FieldValues"]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_then_success_keep_event_id_and_body() {
    let mut h = Harness::start(CRM, FAST).await;
    // 500, 503, then 200.
    let receiver = Receiver::start_with(|_, before| match before {
        0 => 500,
        1 => 503,
        _ => 200,
    })
    .await
    .unwrap();
    let hook = h
        .add_hook("*", &receiver.url("/flaky"), Some("k-0123456789abcdef"))
        .await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('x')")
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(got.len(), 3, "log:\n{}", h.daemon_log());
    let retries: Vec<_> = got
        .iter()
        .map(|r| r.header("x-superoffice-retry").unwrap().to_owned())
        .collect();
    assert_eq!(retries, ["0", "1", "2"]);
    for r in &got[1..] {
        assert_eq!(
            r.body, got[0].body,
            "the body never changes between attempts"
        );
        assert_eq!(
            r.header("x-superoffice-eventid"),
            got[0].header("x-superoffice-eventid")
        );
    }
    let usage = h.wait_usage(hook, |u| u.total_calls >= 3).await;
    assert_eq!(usage.total_calls, 3, "{usage:?}");
    assert_eq!(usage.total_errors, 2, "{usage:?}");
    assert_eq!(
        usage.consecutive_errors, 0,
        "a success resets consecutive_errors"
    );
    let last_error = usage.last_error.unwrap_or_default();
    assert!(last_error.starts_with("HTTP 503"), "{last_error}");
    assert_eq!(h.webhook_state(hook).await, 1);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_errors_parks_and_reactivation_delivers_in_order_across_a_restart() {
    let mut h = Harness::start(CRM, FAST).await;
    let status = Arc::new(AtomicU16::new(500));
    let s = Arc::clone(&status);
    let receiver = Receiver::start_with(move |_, _| s.load(Ordering::SeqCst))
        .await
        .unwrap();
    let hook = h.add_hook("*", &receiver.url("/down"), None).await;
    h.start_daemon().await;

    h.db.batch_execute("INSERT INTO contact (name) VALUES ('e0')")
        .await
        .unwrap();
    wait_state(&h, hook, 3).await;
    // More changes while the hook is TooManyErrors: parked, in order.
    for i in 1..=10 {
        h.db.execute(
            "UPDATE contact SET name = $1, version = $2 WHERE contact_id = 1",
            &[&format!("e{i}"), &i],
        )
        .await
        .unwrap();
    }
    wait_parked(&h, hook, |n| n >= 11).await;
    // The slot moved on past the parked changes.
    h.wait_caught_up("the slot to pass parked changes").await;

    // Parked rows survive a restart.
    assert!(h.stop_daemon().success());
    assert_eq!(h.parked_count(hook).await, 11);
    h.start_daemon().await;
    let before = receiver.requests().len();
    status.store(200, Ordering::SeqCst);
    h.db.execute(
        "UPDATE walhook.webhook SET state = 1 WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    // A live change after re-activation arrives after the parked ones.
    h.db.batch_execute("UPDATE contact SET name = 'live', version = 11 WHERE contact_id = 1")
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= before + 12).await;
    let delivered = &got[before..];
    let mut expected: Vec<String> = (0..=10).map(|i| format!("e{i}")).collect();
    expected.push("live".into());
    assert_eq!(names(delivered), expected, "log:\n{}", h.daemon_log());
    // A parked row is removed right after its delivery.
    wait_parked(&h, hook, |n| n == 0).await;
    assert_eq!(h.webhook_state(hook).await, 1);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_the_hook() {
    let mut h = Harness::start(CRM, FAST).await;
    let receiver = Receiver::start_with(|_, _| 410).await.unwrap();
    let hook = h.add_hook("*", &receiver.url("/gone"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('a')")
        .await
        .unwrap();
    wait_state(&h, hook, 2).await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('b')")
        .await
        .unwrap();
    h.wait_caught_up("the daemon to pass the change after the hook stopped")
        .await;
    assert_eq!(
        receiver.requests().len(),
        1,
        "a Stopped hook gets nothing more"
    );
    assert_eq!(
        h.parked_count(hook).await,
        0,
        "nothing is parked for a Stopped hook"
    );
    assert!(h.stop_daemon().success());
}

/// Isolation shown by the healthy hook's latency while the bad hooks are
/// still retrying: every healthy event arrives within a fraction of the
/// failing hook's first retry interval (1 s) of its commit, and when the
/// last one has arrived neither bad hook has tripped yet, so no healthy
/// event waited for a bad hook to be parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_and_a_failing_target_never_slow_a_healthy_hook() {
    // Five failures to trip: the 500 hook needs its attempts at 0 s, 1 s
    // and 4 s and more, the blackhole five timeouts of 2 s.
    let mut h = Harness::start(
        CRM,
        "max_consecutive_errors = 5\nmax_backoff = \"300ms\"\ntimeout = \"2s\"\n\
         connect_timeout = \"1s\"\n",
    )
    .await;
    // Accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole_url = format!("http://{}/void", blackhole.local_addr().unwrap());
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = Arc::clone(&held);
        std::thread::spawn(move || {
            for stream in blackhole.incoming().flatten() {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let failing = Receiver::start_with(|_, _| 500).await.unwrap();
    let healthy = Receiver::start().await.unwrap();
    let dead = h.add_hook("*", &blackhole_url, None).await;
    let broken = h.add_hook("*", &failing.url("/500"), None).await;
    h.add_hook("*", &healthy.url("/ok"), None).await;
    h.start_daemon().await;

    const EVENTS: usize = 200;
    let mut committed: BTreeMap<i64, Instant> = BTreeMap::new();
    for i in 0..EVENTS {
        let id: i32 =
            h.db.query_one(
                "INSERT INTO contact (name) VALUES ($1) RETURNING contact_id",
                &[&format!("n{i}")],
            )
            .await
            .unwrap()
            .get(0);
        committed.insert(id as i64, Instant::now());
    }
    let got = healthy.wait_until(WAIT, |r| r.len() >= EVENTS).await;
    // At the moment the healthy hook has everything: the bad hooks have
    // been tried and are still retrying, not tripped.
    let (dead_state, broken_state) = (h.webhook_state(dead).await, h.webhook_state(broken).await);
    let (connections, failures) = (held.lock().unwrap().len(), failing.requests().len());
    assert_eq!(got.len(), EVENTS, "log:\n{}", h.daemon_log());
    // Commit (the INSERT's return) to receipt, per event.
    let mut latencies: Vec<Duration> = got
        .iter()
        .map(|r| {
            let id = r.json()["PrimaryKey"]
                .as_i64()
                .expect("a numeric PrimaryKey");
            let at = committed
                .get(&id)
                .unwrap_or_else(|| panic!("contact {id} was never committed"));
            r.arrived.saturating_duration_since(*at)
        })
        .collect();
    latencies.sort();
    let (median, max) = (latencies[EVENTS / 2], latencies[EVENTS - 1]);
    eprintln!("healthy hook beside two bad ones: latency median {median:?}, max {max:?}");
    assert!(
        max < Duration::from_millis(500),
        "a healthy event waited {max:?} (median {median:?}) while the bad hooks retried; \
         their first retry comes after 1 s"
    );
    assert_eq!(
        (dead_state, broken_state),
        (1, 1),
        "a bad hook had tripped by the time the healthy hook had its events"
    );
    assert!(
        connections > 0 && failures > 0,
        "the bad hooks were not being tried meanwhile ({connections} connections to the \
         blackhole, {failures} requests to the 500 target)"
    );
    // And the bad hooks were failing for real: both trip and park it all.
    wait_state(&h, dead, 3).await;
    wait_state(&h, broken, 3).await;
    wait_parked(&h, dead, |n| n >= EVENTS as i64).await;
    wait_parked(&h, broken, |n| n >= EVENTS as i64).await;
    let usage = h.wait_usage(dead, |u| u.last_error.is_some()).await;
    let last_error = usage.last_error.unwrap_or_default();
    assert!(last_error.contains("timed out"), "{last_error}");
    assert!(h.stop_daemon().success());
}

/// Per-row commit order with requests that really overtake: the receiver
/// delays each answer by 0 to 24 ms, concurrently, so of the requests in
/// flight at once a later one is often answered first. Each row's events
/// still arrive in commit order, while events of other rows, from later
/// transactions, overtook earlier ones (checked: else the test proves
/// nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_row_keep_commit_order_under_concurrency() {
    let mut h = Harness::start(CRM, "concurrency_per_webhook = 8\n").await;
    let receiver = Receiver::start_delaying(|r| {
        let body = r.json();
        let key = body["PrimaryKey"].as_u64().unwrap_or(0);
        let version = body["FieldValues"]["version"].as_u64().unwrap_or(0);
        Duration::from_millis((key * 31 + version * 17) % 7 * 4)
    })
    .await
    .unwrap();
    h.add_hook("*", &receiver.url("/o"), None).await;
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact (name) SELECT 'row' || i FROM generate_series(1, 10) i",
    )
    .await
    .unwrap();
    for v in 1..=20 {
        h.db.execute("UPDATE contact SET version = $1", &[&v])
            .await
            .unwrap();
    }
    // A key-changing UPDATE orders after both keys.
    h.db.batch_execute("UPDATE contact SET contact_id = 100, version = 21 WHERE contact_id = 1")
        .await
        .unwrap();
    let total = 10 + 200 + 1;
    let got = receiver.wait_until(WAIT, |r| r.len() >= total).await;
    assert_eq!(got.len(), total, "log:\n{}", h.daemon_log());
    // `got` is in the order of the answers. Each event's transaction is
    // its version (0 the INSERT, then one UPDATE of every row per version).
    let version = |r: &ReceivedRequest| {
        r.json()["FieldValues"]["version"]
            .as_i64()
            .expect("a version in FieldValues")
    };
    let per_row = |requests: &[&ReceivedRequest]| {
        let mut rows: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for r in requests {
            let key = r.json()["PrimaryKey"]
                .as_i64()
                .expect("a numeric PrimaryKey");
            let key = if key == 100 { 1 } else { key };
            rows.entry(key).or_default().push(version(r));
        }
        rows
    };
    let answered: Vec<&ReceivedRequest> = got.iter().collect();
    let mut arrived = answered.clone();
    arrived.sort_by_key(|r| r.arrived);
    for (order, requests) in [("answered", &answered), ("arrived", &arrived)] {
        let rows = per_row(requests);
        assert_eq!(rows.len(), 10, "{rows:?}");
        for (row, versions) in &rows {
            let mut expected: Vec<i64> = (0..=20).collect();
            if *row == 1 {
                expected.push(21);
            }
            assert_eq!(
                versions, &expected,
                "row {row}: versions in the order {order}"
            );
        }
    }
    // Overtaking: an event answered before an event of an earlier
    // transaction (of another row) that was answered later.
    let mut latest = i64::MIN;
    let mut overtaken = 0;
    for r in &got {
        let v = version(r);
        if v < latest {
            overtaken += 1;
        }
        latest = latest.max(v);
    }
    eprintln!("{overtaken} of {total} events answered after an event of a later transaction");
    assert!(
        overtaken > 0,
        "no event was overtaken: the receiver let nothing overtake, so order was never at risk"
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_is_parked_past_its_backlog_bound_and_catches_up_in_order() {
    let mut h = Harness::start(
        CRM,
        "concurrency_per_webhook = 1\nbacklog_limit = 20\nbacklog_max_age = \"2s\"\n",
    )
    .await;
    let slow = Receiver::start_slow(Duration::from_millis(60))
        .await
        .unwrap();
    let fast = Receiver::start().await.unwrap();
    let slow_id = h.add_hook("*", &slow.url("/slow"), None).await;
    h.add_hook("*", &fast.url("/fast"), None).await;
    h.start_daemon().await;
    // 150 changes over about 4 s; the slow hook takes 60 ms for each.
    let mut fast_lag = Duration::ZERO;
    for i in 0..150 {
        h.db.execute(
            "INSERT INTO contact (name) VALUES ($1)",
            &[&format!("n{i}")],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        if i % 30 == 29 {
            let sent = Instant::now();
            fast.wait_until(WAIT, |r| r.len() > i).await;
            fast_lag = fast_lag.max(sent.elapsed());
        }
    }
    fast.wait_until(WAIT, |r| r.len() >= 150).await;
    assert!(
        fast_lag < Duration::from_secs(2),
        "the fast hook waited on the slow one: {fast_lag:?}"
    );
    let reasons: Vec<String> =
        h.db.query(
            "SELECT DISTINCT reason FROM walhook.delivery WHERE webhook_id = $1",
            &[&slow_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["backlog"], "log:\n{}", h.daemon_log());
    let got = slow
        .wait_until(Duration::from_secs(60), |r| r.len() >= 150)
        .await;
    let expected: Vec<String> = (0..150).map(|i| format!("n{i}")).collect();
    assert_eq!(
        names(&got),
        expected,
        "one lane: commit order, parked ones included"
    );
    wait_parked(&h, slow_id, |n| n == 0).await;
    assert_eq!(h.webhook_state(slow_id).await, 1);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_error_body_is_stored_and_the_hook_still_parks() {
    use std::io::{Read, Write};
    let mut h = Harness::start(CRM, FAST).await;
    // Answers every request with 500 and a body full of NUL bytes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bin", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\n\0\x01\0\xff",
                );
            });
        }
    });
    let hook = h.add_hook("*", &url, None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('x')")
        .await
        .unwrap();
    wait_state(&h, hook, 3).await;
    wait_parked(&h, hook, |n| n >= 1).await;
    // A body the statistics write could not store would never show here.
    let usage = h.wait_usage(hook, |u| u.last_error.is_some()).await;
    let last_error = usage.last_error.unwrap_or_default();
    assert!(last_error.starts_with("HTTP 500"), "{last_error}");
    assert!(
        !h.daemon_log().contains("statistics write failed"),
        "{}",
        h.daemon_log()
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hook_holding_the_byte_budget_is_parked_so_others_go_on() {
    // A tiny budget that the slow hook's queue fills quickly; its backlog
    // count and age bounds are far away, so only the budget rule can act.
    let mut h = Harness::start(
        CRM,
        "concurrency_per_webhook = 1\nmax_in_flight_bytes = 65536\n\
         backlog_limit = 1000000\nbacklog_max_age = \"1h\"\n",
    )
    .await;
    let slow = Receiver::start_slow(Duration::from_millis(500))
        .await
        .unwrap();
    let fast = Receiver::start().await.unwrap();
    let slow_id = h.add_hook("*", &slow.url("/slow"), None).await;
    h.add_hook("*", &fast.url("/fast"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) SELECT 'n' || i FROM generate_series(1, 600) i")
        .await
        .unwrap();
    // Back-pressure alone would hold the fast hook to the slow one's pace
    // (600 × 0.5 s); parking the slow hook frees it within seconds.
    let started = Instant::now();
    let got = fast
        .wait_until(Duration::from_secs(60), |r| r.len() >= 600)
        .await;
    assert_eq!(got.len(), 600, "log:\n{}", h.daemon_log());
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    let reasons: Vec<String> =
        h.db.query(
            "SELECT DISTINCT reason FROM walhook.delivery WHERE webhook_id = $1",
            &[&slow_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["backlog"]);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_at_its_parked_limit_is_stopped_and_keeps_what_was_parked() {
    let mut h = Harness::start(CRM, &format!("{FAST}max_parked_events_per_webhook = 5\n")).await;
    let receiver = Receiver::start_with(|_, _| 500).await.unwrap();
    let hook = h.add_hook("*", &receiver.url("/down"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('e0')")
        .await
        .unwrap();
    wait_state(&h, hook, 3).await;
    // One change at a time, so the parking writer stores them one by one.
    for i in 1..=20 {
        h.db.execute(
            "UPDATE contact SET name = $1, version = $2 WHERE contact_id = 1",
            &[&format!("e{i}"), &i],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    wait_state(&h, hook, 2).await;
    h.wait_caught_up("the daemon to pass the changes").await;
    let kept = h.parked_count(hook).await;
    assert_eq!(
        kept,
        5,
        "exactly the limit parked; log:\n{}",
        h.daemon_log()
    );
    assert!(
        h.daemon_log().contains("max_parked_events_per_webhook"),
        "the stop is logged; log:\n{}",
        h.daemon_log()
    );
    // Stopped: later changes are dropped, what was parked stays.
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('after')")
        .await
        .unwrap();
    h.wait_caught_up("the daemon to pass the change after the stop")
        .await;
    assert_eq!(h.parked_count(hook).await, kept);
    assert_eq!(h.webhook_state(hook).await, 2);
    assert!(h.stop_daemon().success());
    // `walhook check` warns for a hook at 80% of the limit or more.
    let check = h.walhook(&["check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        out.contains(&format!("webhook_id {hook} has {kept} parked events"))
            && out.contains("max_parked_events_per_webhook (5)"),
        "{out}"
    );
}

/// A retrying event holds up only its own row (README), also when that row
/// has hundreds of events queued behind it: the
/// target fails every change of contact 1 and answers the others, one
/// transaction queues 320 changes of contact 1 behind the failing one, and
/// the changes of ten other rows committed after it are delivered within a
/// fraction of a second each, while contact 1 still retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_with_hundreds_of_queued_events_holds_up_only_itself() {
    const QUEUED: i32 = 320;
    let mut h = Harness::start(
        CRM,
        "concurrency_per_webhook = 8\nmax_consecutive_errors = 1000\nmax_backoff = \"1s\"\n",
    )
    .await;
    let receiver = Receiver::start_with(|r, _| {
        let b = r.json();
        if b["Event"] == "contact.changed" && b["PrimaryKey"] == 1 {
            500
        } else {
            200
        }
    })
    .await
    .unwrap();
    let hook = h.add_hook("contact.*", &receiver.url("/r"), None).await;
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact (contact_id, name) SELECT i, 'row' || i FROM generate_series(1, 11) i",
    )
    .await
    .unwrap();
    receiver.wait_until(WAIT, |r| r.len() >= 11).await;
    h.db.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..{QUEUED} LOOP \
           UPDATE contact SET version = version + 1 WHERE contact_id = 1; \
         END LOOP; END $$"
    ))
    .await
    .unwrap();
    // Contact 1's first change is being refused: the rest of its changes
    // queue behind it.
    receiver
        .wait_until(WAIT, |r| r.iter().any(|r| r.status == 500))
        .await;
    let mut committed: BTreeMap<i64, Instant> = BTreeMap::new();
    for id in 2..=11 {
        h.db.execute(
            "UPDATE contact SET version = version + 1 WHERE contact_id = $1",
            &[&id],
        )
        .await
        .unwrap();
        committed.insert(id as i64, Instant::now());
    }
    let others = |requests: &[ReceivedRequest]| -> Vec<ReceivedRequest> {
        requests
            .iter()
            .filter(|r| {
                let b = r.json();
                b["Event"] == "contact.changed" && b["PrimaryKey"] != 1
            })
            .cloned()
            .collect()
    };
    let got = others(
        &receiver
            .wait_until(Duration::from_secs(10), |r| others(r).len() >= 10)
            .await,
    );
    let still_retrying = h.webhook_state(hook).await == 1 && h.parked_count(hook).await == 0;
    assert_eq!(
        got.len(),
        10,
        "of ten other rows' changes committed after contact 1's {QUEUED} queued ones, {} \
         arrived within 10 s: they wait behind contact 1's backlog",
        got.len()
    );
    let latencies: Vec<Duration> = got
        .iter()
        .map(|r| {
            let id = r.json()["PrimaryKey"]
                .as_i64()
                .expect("a numeric PrimaryKey");
            r.arrived.saturating_duration_since(committed[&id])
        })
        .collect();
    let max = latencies.iter().max().copied().unwrap();
    eprintln!("other rows beside contact 1's backlog: max latency {max:?}");
    assert!(
        max < Duration::from_millis(500),
        "another row's change waited {max:?} behind contact 1's backlog"
    );
    assert!(
        still_retrying,
        "contact 1 was no longer retrying live (hook tripped or parked): the test shows nothing"
    );
    assert!(
        receiver
            .requests()
            .iter()
            .all(|r| !(r.json()["PrimaryKey"] == 1 && r.json()["FieldValues"]["version"] == 2)),
        "contact 1's second change went before its first was accepted"
    );
    assert!(h.stop_daemon().success());
}
