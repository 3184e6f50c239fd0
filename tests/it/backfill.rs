//! `walhook backfill`: existing rows reach the named hooks, consistent with
//! the live stream, through a kill -9 of the daemon.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(120);

/// The backfill's state and rows_sent.
async fn backfill_state(h: &Harness, id: i64) -> (String, i64) {
    let row =
        h.db.query_one(
            "SELECT state, rows_sent FROM walhook.backfill WHERE backfill_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn wait_backfill(h: &Harness, id: i64, done: impl Fn(&str, i64) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (state, rows) = backfill_state(h, id).await;
        if done(&state, rows) {
            return;
        }
        assert!(
            state != "failed",
            "backfill {id} failed; daemon log:\n{}",
            h.daemon_log()
        );
        if tokio::time::Instant::now() > deadline {
            panic!(
                "backfill {id} stayed {state} at {rows} rows; daemon log:\n{}",
                h.daemon_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Register a backfill from the command line; returns its id.
fn start_backfill(h: &Harness, args: &[&str]) -> i64 {
    let mut all = vec!["backfill"];
    all.extend_from_slice(args);
    let out = h.walhook(&all);
    assert!(out.status.success(), "backfill refused: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    stdout
        .split_whitespace()
        .nth(1)
        .and_then(|id| id.trim_end_matches(':').parse().ok())
        .unwrap_or_else(|| panic!("no backfill id in {stdout:?}"))
}

/// What a receiver holds after applying every request in arrival order:
/// created and changed set the row, deleted removes it.
fn receiver_rows(requests: &[ReceivedRequest]) -> BTreeMap<i64, Value> {
    let mut rows = BTreeMap::new();
    for r in requests {
        let b = r.json();
        let pk = b["PrimaryKey"].as_i64().expect("a numeric PrimaryKey");
        match b["Event"].as_str().unwrap() {
            "item.created" | "item.changed" => {
                rows.insert(pk, b["FieldValues"].clone());
            }
            "item.deleted" => {
                rows.remove(&pk);
            }
            other => panic!("unexpected event {other}"),
        }
    }
    rows
}

/// The consistency rule, per row: in the order the hook received them,
/// the values of each row never go back. Every UPDATE raises `version`,
/// ids are never reused after a DELETE, so a value is older than one
/// already delivered when its version is lower, or when the row was
/// already deleted. A delivery repeated after a crash carries the EventId
/// it had and is counted once, as a receiver de-duplicating on EventId
/// sees it. Returns the number of rows whose backfilled copy was dropped
/// for a live change (rows of the table's first `rows` that got live
/// changes, no DELETE, and no backfilled copy).
fn assert_never_older(requests: &[ReceivedRequest], rows: i64) -> usize {
    let mut seen = std::collections::HashSet::new();
    // Per row: the latest version received, None once deleted.
    let mut held: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    let mut live: std::collections::BTreeSet<i64> = Default::default();
    let mut backfilled: std::collections::BTreeSet<i64> = Default::default();
    for r in requests {
        let b = r.json();
        let event_id = b["EventId"].as_str().expect("an EventId").to_owned();
        if !seen.insert(event_id) {
            continue;
        }
        let pk = b["PrimaryKey"].as_i64().expect("a numeric PrimaryKey");
        let what = match b.get("Backfill") {
            Some(_) => {
                backfilled.insert(pk);
                "backfilled"
            }
            None => {
                live.insert(pk);
                "live"
            }
        };
        let event = b["Event"].as_str().expect("an Event");
        let before = held.get(&pk).copied();
        let now = match event {
            "item.created" | "item.changed" => Some(
                b["FieldValues"]["version"]
                    .as_i64()
                    .expect("a version in FieldValues"),
            ),
            "item.deleted" => None,
            other => panic!("unexpected event {other}"),
        };
        match (before, now) {
            (Some(None), _) => {
                panic!("row {pk}: {what} {event} {now:?} received after the row's DELETE; {b}")
            }
            (Some(Some(had)), Some(v)) if v < had => {
                panic!("row {pk}: {what} version {v} received after version {had}; {b}")
            }
            _ => {}
        }
        held.insert(pk, now);
    }
    live.iter()
        .filter(|pk| **pk <= rows && !backfilled.contains(pk) && held[pk].is_some())
        .count()
}

async fn table_rows(h: &Harness) -> BTreeMap<i64, Value> {
    h.db.query("SELECT id, to_jsonb(i) FROM item i", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0) as i64, r.get::<_, Value>(1)))
        .collect()
}

/// UPDATEs, DELETEs and INSERTs on the rows being backfilled until `stop`.
async fn churn(url: String, rows: i32, stop: Arc<AtomicBool>) -> u64 {
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut n: u64 = 0;
    let mut next_id = rows + 1;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        // Spread over the whole key range, so chunks read before, during and
        // after the changes all see some.
        let a = ((n * 7919) % rows as u64) as i32 + 1;
        let b = ((n * 104_729) % rows as u64) as i32 + 1;
        let sql = match n % 4 {
            0 => format!("DELETE FROM item WHERE id = {b}"),
            1 => format!("INSERT INTO item VALUES ({next_id}, 0, 'new')"),
            _ => format!(
                "UPDATE item SET version = version + 1, note = 'v' || (version + 1) WHERE id IN ({a}, {b})"
            ),
        };
        if n % 4 == 1 {
            next_id += 1;
        }
        db.batch_execute(&sql).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backfill_through_concurrent_changes_and_a_kill_ends_with_the_tables_rows() {
    const ROWS: i32 = 4000;
    let mut h = Harness::start(
        &format!(
            "CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL, note text); \
             INSERT INTO item SELECT g, 0, 'v0' FROM generate_series(1, {ROWS}) g;"
        ),
        "[backfill]\nchunk_rows = 100\nmax_rows_per_second = 4000\n",
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let other = Receiver::start().await.unwrap();
    let hook = h.add_hook("item.*", &receiver.url("/a"), None).await;
    let bystander = h.add_hook("item.*", &other.url("/b"), None).await;
    h.start_daemon().await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(churn(h.cluster.url("postgres"), ROWS, Arc::clone(&stop)));
    let id = start_backfill(&h, &["--webhook", &hook.to_string(), "public.item"]);
    // Part of the table is settled and recorded, not all of it.
    wait_backfill(&h, id, |_, rows| rows >= 1000).await;
    let (state, before_kill) = backfill_state(&h, id).await;
    assert_eq!(state, "running");
    assert!(before_kill < ROWS as i64, "{before_kill} rows sent already");
    h.kill_daemon();
    h.start_daemon().await;
    wait_backfill(&h, id, |state, _| state == "done").await;
    stop.store(true, Ordering::Release);
    let changes = writer.await.unwrap();
    h.wait_caught_up("the last changes delivered").await;

    let requests = receiver.requests();
    let table = table_rows(&h).await;
    let received = receiver_rows(&requests);
    assert_never_older(&requests, ROWS as i64);
    for (id, row) in &table {
        let got = received
            .get(id)
            .unwrap_or_else(|| panic!("row {id} = {row} never reached the hook"));
        assert!(
            same_json(got, row),
            "row {id}: hook holds {got}, table {row}"
        );
    }
    for id in received.keys() {
        assert!(table.contains_key(id), "row {id} deleted but still held");
    }
    let backfilled: Vec<&ReceivedRequest> = requests
        .iter()
        .filter(|r| r.json().get("Backfill").is_some())
        .collect();
    assert!(backfilled.iter().all(|r| {
        let b = r.json();
        b["Backfill"] == id && b["Event"] == "item.created"
    }));
    // A chunk resent after the kill carries the EventIds it had.
    let mut ids_by_row: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in &backfilled {
        let b = r.json();
        ids_by_row
            .entry(b["PrimaryKey"].as_i64().unwrap())
            .or_default()
            .push(b["EventId"].as_str().unwrap().to_owned());
    }
    for (row, ids) in &ids_by_row {
        assert!(
            ids.windows(2).all(|w| w[0] == w[1]),
            "row {row} backfilled with different EventIds {ids:?}"
        );
    }
    assert!(
        other
            .requests()
            .iter()
            .all(|r| r.json().get("Backfill").is_none()),
        "hook {bystander} was not named, yet got backfilled rows"
    );
    let status = h.walhook(&["status", "--json"]);
    let doc: Value = serde_json::from_slice(&status.stdout).unwrap();
    let listed = doc["backfills"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["backfill_id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("status lists no backfill {id}: {doc}"));
    assert_eq!(listed["state"], "done");
    eprintln!(
        "{} backfilled requests ({} rows at the kill), {changes} concurrent changes, {} rows at the end",
        backfilled.len(),
        before_kill,
        table.len()
    );
}

/// No hook ever gets a value older than one it already had, checked per
/// row on everything the hook received, with live changes racing the
/// chunks: each chunk's read sleeps 2 ms per row (a `--where`), so changes
/// commit after the read's snapshot and before its high watermark, the
/// case where the chunk's copy is older than the live change and must be
/// dropped. That it happened is checked too: else the test proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_hook_gets_a_value_older_than_one_it_had() {
    const ROWS: i32 = 1000;
    let mut h = Harness::start(
        &format!(
            "CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL, note text); \
             INSERT INTO item SELECT g, 0, 'v0' FROM generate_series(1, {ROWS}) g;"
        ),
        "[backfill]\nchunk_rows = 50\nmax_rows_per_second = 0\n",
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let hook = h.add_hook("item.*", &receiver.url("/a"), None).await;
    h.start_daemon().await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(churn(h.cluster.url("postgres"), ROWS, Arc::clone(&stop)));
    let started = Instant::now();
    let id = start_backfill(
        &h,
        &[
            "--webhook",
            &hook.to_string(),
            "--where",
            "pg_sleep(0.002)::text IS NOT NULL",
            "public.item",
        ],
    );
    wait_backfill(&h, id, |state, _| state == "done").await;
    let took = started.elapsed();
    stop.store(true, Ordering::Release);
    let changes = writer.await.unwrap();
    h.wait_caught_up("the last changes delivered").await;

    let requests = receiver.requests();
    let dropped = assert_never_older(&requests, ROWS as i64);
    let table = table_rows(&h).await;
    let received = receiver_rows(&requests);
    for (id, row) in &table {
        let got = received
            .get(id)
            .unwrap_or_else(|| panic!("row {id} = {row} never reached the hook"));
        assert!(
            same_json(got, row),
            "row {id}: hook holds {got}, table {row}"
        );
    }
    eprintln!(
        "backfill of {ROWS} rows in {took:?} beside {changes} changes: {dropped} rows' copies \
         dropped for a live change"
    );
    assert!(
        dropped > 0,
        "no live change raced a chunk: the consistency rule was never put to the test"
    );
}

#[tokio::test]
async fn tables_that_cannot_be_backfilled_are_refused_with_the_fix() {
    let h = Harness::start(
        "CREATE TABLE keyless (a int, b text); \
         CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL); \
         CREATE TABLE event (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE event_2024 PARTITION OF event FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');",
        "",
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let hook = h.add_hook("*", &receiver.url("/a"), None).await.to_string();
    for (args, needle) in [
        (vec!["keyless"], "ADD PRIMARY KEY"),
        (vec!["event_2024"], "backfill its partitioned table event"),
        (vec!["nope"], "\"nope\" does not exist"),
        (vec!["walhook.webhook"], "walhook's own table"),
        (vec!["--where", "versoin > 1", "item"], "versoin"),
    ] {
        let mut all = vec!["backfill", "--webhook", &hook];
        all.extend(args.iter().copied());
        let out = h.walhook(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
    let out = h.walhook(&["backfill", "--webhook", "999", "item"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("webhook_id 999"), "{}", text(&out));
    let rows: i64 =
        h.db.query_one("SELECT count(*) FROM walhook.backfill", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(rows, 0, "a refused backfill registered nothing");
}

#[tokio::test]
async fn a_partitioned_table_is_backfilled_through_its_root_and_can_be_cancelled() {
    let mut h = Harness::start(
        "CREATE TABLE event (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE event_2024 PARTITION OF event FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE TABLE event_2025 PARTITION OF event FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         INSERT INTO event SELECT g, date '2024-06-01' + g FROM generate_series(1, 400) g; \
         CREATE TABLE big (id int PRIMARY KEY); \
         INSERT INTO big SELECT generate_series(1, 100000);",
        "[backfill]\nchunk_rows = 50\nmax_rows_per_second = 500\n",
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let hook = h.add_hook("nothing.*", &receiver.url("/a"), None).await;
    h.start_daemon().await;
    let id = start_backfill(
        &h,
        &[
            "--webhook",
            &hook.to_string(),
            "--where",
            "id % 2 = 0",
            "event",
        ],
    );
    wait_backfill(&h, id, |state, _| state == "done").await;
    h.wait_caught_up("the backfill delivered").await;
    let requests = receiver.requests();
    assert_eq!(requests.len(), 200, "the even ids of both partitions");
    let first = requests[0].json();
    assert_eq!(first["Event"], "event.created");
    assert_eq!(first["Table"], "public.event");
    assert_eq!(first["PrimaryKey"]["id"].as_i64().unwrap() % 2, 0);

    // A slow backfill stops at its next chunk once cancelled.
    let big = start_backfill(&h, &["--webhook", &hook.to_string(), "big"]);
    wait_backfill(&h, big, |_, rows| rows >= 100).await;
    let out = h.walhook(&["backfill", "cancel", &big.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cancelled"), "{}", text(&out));
    h.wait_log("backfill cancelled").await;
    let (state, rows) = backfill_state(&h, big).await;
    assert_eq!(state, "cancelled");
    assert!(rows < 100_000, "{rows}");
    let list = h.walhook(&["backfill", "list"]);
    assert!(text(&list).contains("cancelled"), "{}", text(&list));
}

/// `cargo test --release --test it backfill::a_million -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: about a minute"]
async fn a_million_rows_rate_and_the_live_streams_latency_meanwhile() {
    let mut h = Harness::start(
        "CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL, note text); \
         INSERT INTO item SELECT g, 0, 'row ' || g FROM generate_series(1, 1000000) g; \
         CREATE TABLE live (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());",
        "[backfill]\nchunk_rows = 5000\nmax_rows_per_second = 0\n",
    )
    .await;
    let bulk = Receiver::start_counting().await.unwrap();
    let live = Receiver::start().await.unwrap();
    let hook = h.add_hook("nothing.*", &bulk.url("/bulk"), None).await;
    h.add_hook("live.*", &live.url("/live"), None).await;
    h.start_daemon().await;

    let started = Instant::now();
    let id = start_backfill(&h, &["--webhook", &hook.to_string(), "item"]);
    let stop = Arc::new(AtomicBool::new(false));
    let url = h.cluster.url("postgres");
    let stop_writer = Arc::clone(&stop);
    let writer = tokio::spawn(async move {
        let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut committed = BTreeMap::new();
        let mut n = 0;
        while !stop_writer.load(Ordering::Acquire) {
            n += 1;
            db.batch_execute(&format!("INSERT INTO live (id) VALUES ({n})"))
                .await
                .unwrap();
            committed.insert(n as i64, Instant::now());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        committed
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    while bulk.count() < 1_000_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rows",
            bulk.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Release);
    let committed = writer.await.unwrap();
    wait_backfill(&h, id, |state, _| state == "done").await;
    h.wait_caught_up("the live rows delivered").await;
    let mut latencies: Vec<Duration> = live
        .requests()
        .iter()
        .filter_map(|r| {
            let pk = r.json()["PrimaryKey"].as_i64()?;
            Some(r.at.saturating_duration_since(*committed.get(&pk)?))
        })
        .collect();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    eprintln!(
        "backfilled 1000000 rows in {:.1} s: {:.0} rows/s; live stream during it: {} events, \
         p50 {:?}, p99 {:?}, max {:?}",
        elapsed.as_secs_f64(),
        1_000_000.0 / elapsed.as_secs_f64(),
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_reads_the_table_named_with_mixed_case_or_a_dot() {
    // Each odd name has a plainer twin that unquoted resolution would read.
    let mut h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY, who text); \
         INSERT INTO contact VALUES (1, 'contact'); \
         CREATE TABLE \"Contact\" (id int PRIMARY KEY, who text); \
         INSERT INTO \"Contact\" VALUES (1, 'Contact'), (2, 'Contact'); \
         CREATE SCHEMA a; \
         CREATE TABLE a.b (id int PRIMARY KEY, who text); \
         INSERT INTO a.b VALUES (1, 'a.b'); \
         CREATE TABLE \"a.b\" (id int PRIMARY KEY, who text); \
         INSERT INTO \"a.b\" VALUES (1, 'public.\"a.b\"'), (2, 'public.\"a.b\"'), \
                                    (3, 'public.\"a.b\"');",
        "",
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    h.start_daemon().await;
    for (path, name, table, who, rows) in [
        ("/mixed", "\"Contact\"", "public.Contact", "Contact", 2),
        (
            "/dotted",
            "public.\"a.b\"",
            "public.a.b",
            "public.\"a.b\"",
            3,
        ),
    ] {
        let hook = h.add_hook("nothing.*", &receiver.url(path), None).await;
        let id = start_backfill(&h, &["--webhook", &hook.to_string(), name]);
        wait_backfill(&h, id, |state, _| state == "done").await;
        h.wait_caught_up("the backfill delivered").await;
        let requests = receiver.requests_to(path);
        assert_eq!(requests.len(), rows, "backfill of {name}");
        for request in &requests {
            let body = request.json();
            assert_eq!(body["Table"], table, "backfill of {name}: {body}");
            assert_eq!(
                body["FieldValues"]["who"], who,
                "backfill of {name}: {body}"
            );
        }
    }
}
