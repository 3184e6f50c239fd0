//! Failover slots (PostgreSQL 17+): walhook streams from a primary whose
//! slot the server synchronises to a physical standby; the primary dies,
//! the standby is promoted, walhook is pointed at it and carries on from
//! the synchronised slot. Every committed change arrives, a change sent
//! twice carries the same EventId. Skipped, with a printed line, on older
//! servers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walhook_lab::cluster::{ClusterOptions, StopMode};
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const ITEMS: &str = "CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL);";
const WAIT: Duration = Duration::from_secs(90);

/// Writes transactions `from..from + n` to `url` (each inserts item i and
/// sets the version of item ((i - 1) % 10) + 1 to i), recording those whose
/// COMMIT the server acknowledged. Stops at the first failure: the server
/// went away.
async fn write(url: String, from: i32, n: i32, committed: Arc<Mutex<BTreeSet<i32>>>) {
    let Ok((db, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await else {
        return;
    };
    tokio::spawn(conn);
    for i in from..from + n {
        let sql = format!(
            "BEGIN; INSERT INTO item VALUES ({i}, 0); \
             UPDATE item SET version = {i} WHERE id = {}; COMMIT;",
            (i - 1) % 10 + 1
        );
        if db.batch_execute(&sql).await.is_err() {
            return;
        }
        committed.lock().unwrap().insert(i);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Each change is (event, primary key, version).
type Change = (String, i64, i64);

fn change_of(r: &ReceivedRequest) -> (Change, String) {
    let b = r.json();
    (
        (
            b["Event"].as_str().unwrap().to_owned(),
            b["PrimaryKey"].as_i64().unwrap(),
            b["FieldValues"]["version"].as_i64().unwrap(),
        ),
        b["EventId"].as_str().unwrap().to_owned(),
    )
}

/// Whether every committed transaction's two changes arrived.
fn delivered_all(requests: &[ReceivedRequest], committed: &BTreeSet<i32>) -> bool {
    let changes: BTreeSet<Change> = requests.iter().map(|r| change_of(r).0).collect();
    committed.iter().all(|&i| {
        let row = i64::from((i - 1) % 10 + 1);
        changes.contains(&("item.created".into(), i64::from(i), 0))
            && changes.contains(&("item.changed".into(), row, i64::from(i)))
    })
}

/// The number of changes that arrived more than once, after asserting
/// that each change arrived under one EventId only.
fn duplicates(requests: &[ReceivedRequest]) -> usize {
    let mut ids: BTreeMap<Change, BTreeSet<String>> = BTreeMap::new();
    for r in requests {
        let (change, id) = change_of(r);
        ids.entry(change).or_default().insert(id);
    }
    for (change, ids) in &ids {
        assert_eq!(
            ids.len(),
            1,
            "change {change:?} arrived under different EventIds {ids:?}"
        );
    }
    requests.len() - ids.len()
}

/// A row of `pg_replication_slots` on `db`: (synced, confirmed_flush_lsn).
async fn slot_on(db: &tokio_postgres::Client) -> Option<(bool, u64)> {
    let row = db
        .query_opt(
            "SELECT synced, confirmed_flush_lsn::text FROM pg_replication_slots \
              WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .ok()??;
    let lsn: Option<String> = row.get(1);
    Some((row.get(0), parse_lsn(&lsn?)))
}

fn set_config(h: &Harness, from: &str, to: &str) {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    std::fs::write(&h.config_path, text.replacen(from, to, 1)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_carries_on_from_the_synced_slot() {
    let mut h = Harness::start(ITEMS, "").await;
    let version: i32 =
        h.db.query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
    if version < 170000 {
        eprintln!(
            "failover: SKIPPED: PostgreSQL {} has no failover slots (they came with 17)",
            version / 10000
        );
        return;
    }

    // The standby: a physical slot on the primary, a copy of its data
    // directory, slot synchronisation on.
    h.db.batch_execute("SELECT pg_create_physical_replication_slot('standby1', true)")
        .await
        .unwrap();
    let standby = tokio::task::block_in_place(|| {
        h.cluster.start_standby(
            "standby1",
            ClusterOptions {
                extra_settings: vec![
                    ("sync_replication_slots".into(), "on".into()),
                    ("hot_standby_feedback".into(), "on".into()),
                ],
                ..Default::default()
            },
        )
    })
    .expect("the standby starts");
    h.reconnect_db().await;
    // Every acknowledged commit is on the standby (synchronous
    // replication), and walhook never receives a change the standby has
    // not flushed (synchronized_standby_slots).
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'standby'",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
        "SELECT pg_reload_conf()",
    ] {
        h.db.batch_execute(sql).await.unwrap();
    }

    // `setup` made an ordinary slot; with the key it makes a failover one.
    h.db.batch_execute("SELECT pg_drop_replication_slot('walhook')")
        .await
        .unwrap();
    set_config(&h, "[postgres]\n", "[postgres]\nfailover_slot = true\n");
    let out = h.walhook(&["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out));
    let failover: bool =
        h.db.query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failover, "setup made no failover slot");
    let out = h.walhook(&["check"]);
    let report = text(&out);
    assert!(report.contains("failover slots yes"), "{report}");
    assert!(
        report.contains("OK    replication slot \"walhook\" is a failover slot"),
        "{report}"
    );
    assert!(
        report.contains("physical slot \"standby1\" (synchronized_standby_slots) is streamed from"),
        "{report}"
    );

    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/f"), None).await;
    h.start_daemon().await;
    let committed = Arc::new(Mutex::new(BTreeSet::new()));
    let writer = tokio::spawn(write(
        h.cluster.url("postgres"),
        1,
        10_000,
        Arc::clone(&committed),
    ));

    // Streaming is under way and the standby holds a synchronised copy of
    // the slot that has moved with it.
    let streamed = receiver.wait_until(WAIT, |r| r.len() >= 100).await;
    assert!(
        streamed.len() >= 100,
        "walhook delivered only {} requests from the primary; daemon log:\n{}",
        streamed.len(),
        h.daemon_log()
    );
    let (standby_db, conn) =
        tokio_postgres::connect(&standby.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    let primary_confirmed = h.confirmed().await;
    let deadline = Instant::now() + WAIT;
    loop {
        match slot_on(&standby_db).await {
            Some((true, lsn)) if lsn >= primary_confirmed => break,
            other => assert!(
                Instant::now() < deadline,
                "the standby's copy of the slot never reached {primary_confirmed:X}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The primary dies mid-stream; walhook with it.
    tokio::task::block_in_place(|| h.cluster.stop(StopMode::Immediate)).unwrap();
    writer.await.unwrap();
    h.kill_daemon();
    let before = committed.lock().unwrap().len();
    let synced_at = slot_on(&standby_db).await.expect("the synced slot").1;

    // Promotion, and walhook pointed at the new primary.
    let promoted_at = Instant::now();
    let promoted: bool = standby_db
        .query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(promoted, "the standby was not promoted");
    let old_url = h.cluster.url("postgres");
    let _old_primary = std::mem::replace(&mut h.cluster, standby);
    set_config(&h, &old_url, &h.cluster.url("postgres"));
    h.reconnect_db().await;
    h.start_daemon().await;

    let next = committed.lock().unwrap().last().copied().unwrap_or(0) + 1000;
    let writer = tokio::spawn(write(
        h.cluster.url("postgres"),
        next,
        100,
        Arc::clone(&committed),
    ));
    let after_promotion = |r: &ReceivedRequest| {
        let (change, _) = change_of(r);
        change.0 == "item.created" && change.1 >= i64::from(next)
    };
    let resumed = receiver
        .wait_until(WAIT, |r| r.iter().any(after_promotion))
        .await;
    assert!(
        resumed.iter().any(after_promotion),
        "nothing committed on the promoted standby arrived; daemon log:\n{}",
        h.daemon_log()
    );
    let resumed_after = promoted_at.elapsed();
    writer.await.unwrap();

    let committed = committed.lock().unwrap().clone();
    let got = receiver
        .wait_until(WAIT, |r| delivered_all(r, &committed))
        .await;
    assert!(
        delivered_all(&got, &committed),
        "committed changes never arrived; daemon log:\n{}",
        h.daemon_log()
    );
    let duplicates = duplicates(&got);
    h.wait_caught_up("the promoted standby's slot").await;
    assert!(h.stop_daemon().success());
    eprintln!(
        "failover (PostgreSQL {}): {} transactions committed ({} changes; {before} before the \
         primary died, the standby's slot synced at {synced_at:X}), {} requests delivered, {} \
         duplicates (same EventId), delivery resumed {:.2}s after promotion began",
        version / 10000,
        committed.len(),
        committed.len() * 2,
        got.len(),
        duplicates,
        resumed_after.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_17_the_key_is_refused_with_the_reason() {
    let h = Harness::start(ITEMS, "").await;
    let version: i32 =
        h.db.query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
    if version >= 170000 {
        eprintln!(
            "failover: refusal SKIPPED: PostgreSQL {} has failover slots",
            version / 10000
        );
        return;
    }
    set_config(&h, "[postgres]\n", "[postgres]\nfailover_slot = true\n");
    let reason = format!(
        "needs PostgreSQL 17 or newer, and this server is PostgreSQL {}",
        version / 10000
    );
    let setup = h.walhook(&["setup"]);
    assert_eq!(setup.status.code(), Some(1), "{}", text(&setup));
    assert!(text(&setup).contains(&reason), "{}", text(&setup));
    let check = h.walhook(&["check"]);
    assert_eq!(check.status.code(), Some(3), "{}", text(&check));
    assert!(
        text(&check).contains(&format!("FAIL  postgres.failover_slot = true {reason}")),
        "{}",
        text(&check)
    );
}
