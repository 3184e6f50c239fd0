//! Crash safety: kill -9, PostgreSQL restarts, a terminated walsender, a
//! receiver that goes away, a standby taking over, and restart fidelity.
//! After each, every committed change reaches the hook at least once,
//! repeats carry the same EventId, and per-row order holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walhook_lab::cluster::StopMode;
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const ITEMS: &str = "CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL);";
const WAIT: Duration = Duration::from_secs(60);

/// Transactions the writer saw commit: each inserts item i and sets the
/// version of item ((i - 1) % 10) + 1 to i.
#[derive(Default)]
struct Committed(Mutex<BTreeSet<i32>>);

/// Write `n` transactions, reconnecting through server restarts. A
/// transaction whose commit is unknown is simply not counted.
async fn write(cluster_url: String, n: i32, pause: Duration, committed: Arc<Committed>) {
    let connect = || async {
        loop {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&cluster_url, tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                return client;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let mut db = connect().await;
    for i in 1..=n {
        let sql = format!(
            "BEGIN; INSERT INTO item VALUES ({i}, 0); \
             UPDATE item SET version = {i} WHERE id = {}; COMMIT;",
            (i - 1) % 10 + 1
        );
        match db.batch_execute(&sql).await {
            Ok(()) => {
                committed.0.lock().unwrap().insert(i);
            }
            Err(_) => db = connect().await,
        }
        tokio::time::sleep(pause).await;
    }
}

/// Check what arrived against what was committed; returns the number of
/// duplicate deliveries.
fn verify(requests: &[ReceivedRequest], committed: &BTreeSet<i32>) -> usize {
    let mut ids_by_change: HashMap<(String, i64, i64), BTreeSet<String>> = HashMap::new();
    let mut first_seen: Vec<(String, i64, i64)> = Vec::new();
    let mut seen_ids = BTreeSet::new();
    let mut duplicates = 0;
    for r in requests {
        let b = r.json();
        let event = b["Event"].as_str().unwrap().to_owned();
        let pk = b["PrimaryKey"].as_i64().unwrap();
        let version = b["FieldValues"]["version"].as_i64().unwrap();
        let id = b["EventId"].as_str().unwrap().to_owned();
        ids_by_change
            .entry((event.clone(), pk, version))
            .or_default()
            .insert(id.clone());
        if seen_ids.insert(id) {
            first_seen.push((event, pk, version));
        } else {
            duplicates += 1;
        }
    }
    for (change, ids) in &ids_by_change {
        assert_eq!(
            ids.len(),
            1,
            "change {change:?} arrived with different EventIds {ids:?}"
        );
    }
    let created: BTreeSet<i64> = first_seen
        .iter()
        .filter(|c| c.0 == "item.created")
        .map(|c| c.1)
        .collect();
    let mut per_row: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (event, pk, version) in &first_seen {
        if event == "item.changed" {
            per_row.entry(*pk).or_default().push(*version);
        }
    }
    for &i in committed {
        assert!(
            created.contains(&(i as i64)),
            "item {i} created but never delivered"
        );
        let row = ((i - 1) % 10 + 1) as i64;
        assert!(
            per_row.get(&row).is_some_and(|v| v.contains(&(i as i64))),
            "update of item {row} to version {i} never delivered"
        );
    }
    for (row, versions) in &per_row {
        assert!(
            versions.windows(2).all(|w| w[0] <= w[1]),
            "item {row} changes out of commit order: {versions:?}"
        );
    }
    duplicates
}

/// Each change sent again must have been in flight at the kill after its
/// first delivery: at or after the position walhook had recorded then.
/// `kills` holds, per kill, how many requests had arrived once the next
/// daemon streamed (all those of the killed one, maybe a few of the next)
/// and the position recorded at the kill.
fn assert_resends_were_in_flight(requests: &[ReceivedRequest], kills: &[(usize, u64)]) {
    for (kill, resent) in resends(requests, kills) {
        let b = resent.json();
        let id = b["EventId"].as_str().unwrap();
        let lsn = b["Lsn"].as_str().unwrap();
        let (_, recorded) = kills
            [kill.unwrap_or_else(|| panic!("{id} at {lsn} was sent twice with no kill between"))];
        assert!(
            parse_lsn(lsn) >= recorded,
            "{id} at {lsn} was sent again although walhook had recorded {recorded:X} as settled \
             at the kill after its first delivery"
        );
    }
}

/// Each request that sent a change again, with the index in `kills` of the
/// first kill after the change's first delivery (none: no kill came
/// between).
fn resends<'a>(
    requests: &'a [ReceivedRequest],
    kills: &[(usize, u64)],
) -> Vec<(Option<usize>, &'a ReceivedRequest)> {
    let mut first: HashMap<String, usize> = HashMap::new();
    let mut resent = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let id = r.json()["EventId"].as_str().unwrap().to_owned();
        match first.get(&id) {
            Some(&f) => resent.push((kills.iter().position(|(boundary, _)| *boundary > f), r)),
            None => {
                first.insert(id, i);
            }
        }
    }
    resent
}

/// How many different changes (EventIds) `requests` carry.
fn distinct_events(requests: &[ReceivedRequest]) -> usize {
    requests
        .iter()
        .map(|r| r.json()["EventId"].as_str().unwrap_or("").to_owned())
        .collect::<BTreeSet<_>>()
        .len()
}

/// For each kill, how many changes first delivered before it (and after
/// the kill before) were sent again.
fn duplicates_per_kill(requests: &[ReceivedRequest], kills: &[(usize, u64)]) -> Vec<usize> {
    let mut per_kill = vec![0; kills.len()];
    for (kill, _) in resends(requests, kills) {
        if let Some(k) = kill {
            per_kill[k] += 1;
        }
    }
    per_kill
}

/// The commit position of the request's change.
fn lsn_of(r: &ReceivedRequest) -> u64 {
    parse_lsn(r.json()["Lsn"].as_str().unwrap())
}

fn delivered_all(requests: &[ReceivedRequest], committed: &BTreeSet<i32>) -> bool {
    distinct_events(requests) >= committed.len() * 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kills_during_a_sustained_workload_lose_nothing() {
    // A fixed limit, so what can be in flight at a kill is known. An
    // adaptive one grows while the daemon catches up after a restart (to
    // 32-46 on a busy machine), and every request in flight at the next
    // kill is rightly sent again; the benchmark's crash section measures
    // the default settings.
    let mut h = Harness::start(ITEMS, "concurrency_per_webhook = 8").await;
    // Every settled position written at once: what this test bounds is
    // what was in flight. Kills this close together (about one a second,
    // each during the catch-up of the last) resend, with the default
    // interval, also up to 50 ms of the catch-up's fast deliveries; the
    // steady test below checks that interval.
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        config.replacen(
            "[postgres]\n",
            "[postgres]\nprogress_interval = \"0s\"\n",
            1,
        ),
    )
    .unwrap();
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/k"), None).await;
    h.start_daemon().await;
    let committed = Arc::new(Committed::default());
    let writer = tokio::spawn(write(
        h.cluster.url("postgres"),
        600,
        Duration::from_millis(4),
        Arc::clone(&committed),
    ));
    // Kill at pseudo-random moments: each after a varying number of deliveries.
    let mut state: u64 = 0x9e37_79b9;
    let mut kills = Vec::new();
    for _ in 0..10 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let gap = 10 + (state >> 33) as usize % 60;
        let seen = receiver.requests().len();
        receiver
            .wait_until(Duration::from_secs(10), |r| r.len() >= seen + gap)
            .await;
        h.kill_daemon();
        let recorded = h
            .stored_progress()
            .await
            .expect("walhook recorded a position before the kill");
        h.start_daemon().await;
        kills.push((receiver.requests().len(), recorded));
    }
    writer.await.unwrap();
    let committed = committed.0.lock().unwrap().clone();
    let got = receiver
        .wait_until(WAIT, |r| delivered_all(r, &committed))
        .await;
    let duplicates = verify(&got, &committed);
    assert_resends_were_in_flight(&got, &kills);
    let changes = committed.len() * 2;
    assert!(h.stop_daemon().success());
    let writes: i64 =
        h.db.query_one(
            "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables \
              WHERE schemaname = 'walhook' AND relname = 'slot_progress'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "10 kills: {} transactions committed, {changes} changes, {} requests, {duplicates} \
         duplicates ({:.2}% of changes, per kill {:?}), about {writes} position writes",
        committed.len(),
        got.len(),
        duplicates as f64 * 100.0 / changes as f64,
        duplicates_per_kill(&got, &kills)
    );
    // Each kill lands while the daemon catches up on what was committed
    // while it was down, with up to 8 requests in flight, plus the other
    // change of a transaction half delivered.
    assert!(
        duplicates <= 10 * (8 + 2),
        "{duplicates} of {changes} changes sent twice over 10 kills; daemon log:\n{}",
        h.daemon_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_in_a_steady_single_row_workload_resend_only_what_was_in_flight() {
    // One request in flight at a time, so what was in flight at a kill is
    // known: with more allowed, an answer that comes late (a busy machine
    // delays the receiver) lets the next changes go out beside it, and
    // all of those are rightly sent again. What this test checks is that
    // the position is recorded once changes settle: before each kill the
    // test waits until the recorded position has passed the change of the
    // last answer it saw (an observed fact, not a time), so every change
    // answered before that is never sent again, and what comes twice is
    // at most what was answered after it.
    let mut h = Harness::start(ITEMS, "concurrency_per_webhook = 1").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/steady"), None).await;
    h.start_daemon().await;
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(0i32));
    let writer = {
        let (url, stop, committed) = (
            h.cluster.url("postgres"),
            Arc::clone(&stop),
            Arc::clone(&committed),
        );
        tokio::spawn(async move {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                db.execute("INSERT INTO item VALUES ($1, 0)", &[&i])
                    .await
                    .unwrap();
                *committed.lock().unwrap() = i;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut state: u64 = 0x51_7cc1_b727;
    let mut kills = Vec::new();
    let mut answered_after_record = Vec::new();
    for _ in 0..10 {
        // Steady state first: every change committed so far has arrived
        // (the backlog of the restart is gone), then a varying number more.
        // Changes, not requests: the requests include the restart's
        // resends, so counting them would call the backlog done while it is
        // still being delivered, many requests at once, and the kill would
        // find all of those in flight.
        // "So far" is read at every check, not once: a restart slower than
        // usual leaves a backlog that is still growing when the daemon is
        // back, and a count taken then is reached in the middle of its
        // burst.
        let caught_up = receiver
            .wait_until(WAIT, |r| {
                distinct_events(r) >= *committed.lock().unwrap() as usize
            })
            .await;
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let gap = 5 + (state >> 33) as usize % 40;
        receiver
            .wait_until(WAIT, |r| r.len() >= caught_up.len() + gap)
            .await;
        let seen = receiver.requests();
        let marker = seen.len() - 1;
        let marker_lsn = lsn_of(&seen[marker]);
        h.wait_for(
            "the position recorded past the last answered change",
            WAIT,
            |db| {
                Box::pin(async move {
                    db.query_opt(
                        "SELECT lsn >= $1::text::pg_lsn FROM walhook.slot_progress \
                          WHERE slot_name = 'walhook'",
                        &[&format!(
                            "{:X}/{:X}",
                            marker_lsn >> 32,
                            marker_lsn & 0xFFFF_FFFF
                        )],
                    )
                    .await
                    .unwrap()
                    .is_some_and(|r| r.get::<_, bool>(0))
                })
            },
        )
        .await;
        h.kill_daemon();
        let recorded = h
            .stored_progress()
            .await
            .expect("walhook recorded a position before the kill");
        // The requests that reached the receiver by the kill, the one in
        // flight included: those after the marker may rightly come again.
        let boundary = receiver.requests().len();
        answered_after_record.push(boundary - marker - 1);
        h.start_daemon().await;
        kills.push((boundary, recorded));
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let n = *committed.lock().unwrap();
    let got = receiver
        .wait_until(WAIT, |r| distinct_events(r) >= n as usize)
        .await;
    let created: BTreeSet<i64> = got
        .iter()
        .map(|r| r.json()["PrimaryKey"].as_i64().unwrap())
        .collect();
    assert_eq!(created, (1..=n as i64).collect(), "every insert arrived");
    let ids: BTreeSet<String> = got
        .iter()
        .map(|r| r.json()["EventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), n as usize, "one EventId per change");
    assert_resends_were_in_flight(&got, &kills);
    let duplicates = got.len() - ids.len();
    eprintln!(
        "10 kills, steady single-row workload: {n} changes, {duplicates} sent twice \
         ({:.2}% of changes, {:.1} per kill)",
        duplicates as f64 * 100.0 / n as f64,
        duplicates as f64 / 10.0
    );
    // Only changes answered after the recorded position passed the marker
    // (the one in flight among them) come twice.
    let per_kill = duplicates_per_kill(&got, &kills);
    assert!(
        per_kill
            .iter()
            .zip(&answered_after_record)
            .all(|(&d, &after)| d <= after),
        "{duplicates} of {n} changes sent twice over 10 kills, per kill {per_kill:?}, answered \
         after the recorded position passed the last seen answer {answered_after_record:?}; \
         daemon log:\n{}",
        h.daemon_log()
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_during_delivery_lose_no_call_of_a_change_not_sent_again() {
    // The receiver answers 200 to everything, so each call is a request it
    // saw. At a kill, a change behind the recorded position is never sent
    // again, so its call must already be in webhook_usage (written with
    // that position at the latest); a change after it is sent again, and
    // counted again if its first call was written before the kill. So every
    // change that arrived is counted at least once, and no call is counted
    // that the receiver did not see.
    let mut h = Harness::start(ITEMS, "").await;
    let receiver = Receiver::start().await.unwrap();
    let id = h.add_hook("item.*", &receiver.url("/usage"), None).await;
    h.start_daemon().await;
    let committed = Arc::new(Committed::default());
    let writer = tokio::spawn(write(
        h.cluster.url("postgres"),
        300,
        Duration::from_millis(4),
        Arc::clone(&committed),
    ));
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..3 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let gap = 20 + (state >> 33) as usize % 40;
        let seen = receiver.requests().len();
        receiver
            .wait_until(Duration::from_secs(10), |r| r.len() >= seen + gap)
            .await;
        h.kill_daemon();
        h.start_daemon().await;
    }
    writer.await.unwrap();
    let committed = committed.0.lock().unwrap().clone();
    let got = receiver
        .wait_until(WAIT, |r| delivered_all(r, &committed))
        .await;
    verify(&got, &committed);
    h.wait_caught_up("every change settled").await;
    // A clean stop writes what is left.
    assert!(h.stop_daemon().success());
    let got = receiver.requests();
    let changes = distinct_events(&got);
    let usage = h.usage(id).await;
    eprintln!(
        "3 kills: {changes} changes, {} requests, total_calls {}",
        got.len(),
        usage.total_calls
    );
    assert!(
        usage.total_calls >= changes as i64 && usage.total_calls <= got.len() as i64,
        "{changes} changes arrived in {} requests, but webhook_usage counts {} calls: calls \
         of changes not sent again were lost; daemon log:\n{}",
        got.len(),
        usage.total_calls,
        h.daemon_log()
    );
    assert_eq!(usage.total_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_position_beyond_the_slot_is_taken_only_with_a_warning() {
    let mut h = Harness::start(ITEMS, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/raised"), None).await;
    h.start_daemon().await;
    h.db.execute("INSERT INTO item VALUES (1, 0)", &[])
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    h.wait_caught_up("the first change settled").await;
    assert!(h.stop_daemon().success());
    // While walhook is stopped, a change it has not seen, and a role that
    // may write slot_progress raises the position past it.
    h.db.execute("INSERT INTO item VALUES (2, 0)", &[])
        .await
        .unwrap();
    let slot: String =
        h.db.query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
              WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let raised: String =
        h.db.query_one(
            "UPDATE walhook.slot_progress SET lsn = pg_current_wal_lsn() \
              WHERE slot_name = 'walhook' RETURNING lsn::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(parse_lsn(&raised) > parse_lsn(&slot));
    h.start_daemon().await;
    h.wait_log("beyond the slot's confirmed position").await;
    let log = h.daemon_log();
    let warning = log
        .lines()
        .find(|l| l.contains("beyond the slot's confirmed position"))
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("position {raised} ")) && warning.contains(&slot),
        "names both positions: {warning}"
    );
    assert!(warning.contains("walhook check"), "{warning}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarts_and_a_terminated_walsender_lose_nothing() {
    let mut h = Harness::start(ITEMS, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/r"), None).await;
    h.start_daemon().await;
    let committed = Arc::new(Committed::default());
    let writer = tokio::spawn(write(
        h.cluster.url("postgres"),
        400,
        Duration::from_millis(5),
        Arc::clone(&committed),
    ));
    for mode in [StopMode::Fast, StopMode::Immediate] {
        let seen = receiver.requests().len();
        receiver
            .wait_until(Duration::from_secs(10), |r| r.len() >= seen + 60)
            .await;
        h.cluster.restart(mode).unwrap();
        h.reconnect_db().await;
    }
    let seen = receiver.requests().len();
    receiver
        .wait_until(Duration::from_secs(20), |r| r.len() >= seen + 60)
        .await;
    h.wait_slot_active(WAIT).await;
    let terminated: i64 =
        h.db.query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(active_pid) \
               FROM pg_replication_slots WHERE slot_name = 'walhook' AND active) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(terminated, 1, "the walsender was streaming");
    writer.await.unwrap();
    let committed = committed.0.lock().unwrap().clone();
    let got = receiver
        .wait_until(WAIT, |r| delivered_all(r, &committed))
        .await;
    assert!(
        h.daemon_running(),
        "walhook reconnects by itself:\n{}",
        h.daemon_log()
    );
    let duplicates = verify(&got, &committed);
    let changes = committed.len() * 2;
    eprintln!(
        "2 restarts + terminated walsender: {} transactions, {changes} changes, {duplicates} \
         duplicates ({:.2}% of changes)",
        committed.len(),
        duplicates as f64 * 100.0 / changes as f64
    );
    // walhook resumes from what it settled, also where a crash rewound the
    // slot: only what was in flight is sent again.
    assert!(
        duplicates * 20 <= changes,
        "{duplicates} of {changes} changes sent twice over 3 interruptions"
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_postgres_rewinds_the_slot_but_walhook_resends_nothing_it_settled() {
    let mut h = Harness::start(ITEMS, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/rewind"), None).await;
    h.start_daemon().await;
    // The slot is written to disk at a checkpoint; after this one its
    // position advances in memory only, until the next.
    h.db.batch_execute("CHECKPOINT").await.unwrap();
    let committed = Arc::new(Committed::default());
    write(
        h.cluster.url("postgres"),
        150,
        Duration::from_millis(2),
        Arc::clone(&committed),
    )
    .await;
    let committed = committed.0.lock().unwrap().clone();
    let got = receiver
        .wait_until(WAIT, |r| delivered_all(r, &committed))
        .await;
    verify(&got, &committed);
    let newest = got.iter().map(lsn_of).max().unwrap();
    let deadline = Instant::now() + WAIT;
    while h.stored_progress().await.is_none_or(|p| p <= newest) {
        assert!(
            Instant::now() < deadline,
            "walhook never recorded the newest change as settled:\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.kill_daemon();
    let recorded = h.stored_progress().await.unwrap();
    h.wait_wal_flushed().await;
    h.cluster.restart(StopMode::Immediate).unwrap();
    h.reconnect_db().await;
    assert_eq!(
        h.stored_progress().await,
        Some(recorded),
        "the recorded position survives the crash"
    );
    let rewound = h.confirmed().await;
    let at_risk = got
        .iter()
        .filter(|r| (rewound..recorded).contains(&lsn_of(r)))
        .count();
    assert!(
        at_risk > 0,
        "the crash rewound the slot to {rewound:X}, behind the {recorded:X} walhook recorded, \
         over changes already delivered"
    );

    let before = receiver.requests().len();
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO item VALUES (1000, 0)")
        .await
        .unwrap();
    receiver
        .wait_until(WAIT, |r| r.iter().any(|x| x.json()["PrimaryKey"] == 1000))
        .await;
    // Whatever else was going to arrive has arrived by now.
    h.wait_caught_up("the daemon to pass every change").await;
    let after: Vec<(String, i64)> = receiver.requests()[before..]
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["Event"].as_str().unwrap().to_owned(),
                b["PrimaryKey"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        after,
        [("item.created".to_owned(), 1000)],
        "after the crash only the new change arrives: none of the {at_risk} changes \
         between the rewound slot and the recorded position is sent again"
    );
    eprintln!(
        "immediate restart: slot rewound {} bytes behind the recorded position, over {at_risk} \
         delivered changes; 0 sent again",
        recorded - rewound
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_slot_never_inherits_a_recorded_position() {
    let mut h = Harness::start(ITEMS, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/new"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO item VALUES (1, 0)")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    assert!(h.stop_daemon().success());
    assert!(
        h.stored_progress().await.is_some(),
        "walhook recorded where it stopped"
    );
    h.wait_slot_released().await;
    let out = h.walhook(&["teardown", "--yes"]);
    assert!(out.status.success(), "teardown: {}", text(&out));
    assert_eq!(
        h.stored_progress().await,
        None,
        "teardown removes the recorded position with the slot"
    );

    // A row left behind (written by hand, or by a walhook of an older
    // slot) goes when setup creates the slot.
    h.db.batch_execute(
        "INSERT INTO walhook.slot_progress (slot_name, lsn) VALUES ('walhook', pg_current_wal_lsn())",
    )
    .await
    .unwrap();
    let out = h.walhook(&["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out));
    assert_eq!(
        h.stored_progress().await,
        None,
        "setup creating the slot removes the recorded position"
    );

    // A position beyond the server's WAL cannot be of this history: it is
    // ignored with a warning naming both positions, and replaced.
    h.db.batch_execute(
        "INSERT INTO walhook.slot_progress (slot_name, lsn) VALUES ('walhook', 'FF/0')",
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.wait_log("FF/0").await;
    let log = h.daemon_log();
    let warning = log.lines().find(|l| l.contains("FF/0")).unwrap();
    assert!(
        warning.contains("WARN") && warning.contains("pg_current_wal_lsn()"),
        "{warning}"
    );
    h.db.batch_execute("INSERT INTO item VALUES (2, 0)")
        .await
        .unwrap();
    receiver
        .wait_until(WAIT, |r| r.iter().any(|x| x.json()["PrimaryKey"] == 2))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let recorded = h.stored_progress().await;
        let wal = h.current_lsn().await;
        if recorded.is_some_and(|p| p <= wal) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ignored position was never replaced: {recorded:?}\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_answering_and_comes_back_gets_everything() {
    let mut h = Harness::start(
        ITEMS,
        "max_consecutive_errors = 1000\nmax_backoff = \"500ms\"\ntimeout = \"1s\"\n",
    )
    .await;
    let up = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&up);
    let receiver = Receiver::start_with(move |_, _| {
        if flag.load(Ordering::SeqCst) {
            200
        } else {
            503
        }
    })
    .await
    .unwrap();
    h.add_hook("item.*", &receiver.url("/flap"), None).await;
    h.start_daemon().await;
    let committed = Arc::new(Committed::default());
    let writer = tokio::spawn(write(
        h.cluster.url("postgres"),
        200,
        Duration::from_millis(5),
        Arc::clone(&committed),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    up.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    up.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let committed = committed.0.lock().unwrap().clone();
    // Requests answered 503 were not deliveries.
    let answered_ok = |r: &[ReceivedRequest]| -> Vec<ReceivedRequest> {
        r.iter().filter(|x| x.status == 200).cloned().collect()
    };
    let got = receiver
        .wait_until(WAIT, |r| delivered_all(&answered_ok(r), &committed))
        .await;
    let ok = answered_ok(&got);
    assert!(got.len() > ok.len(), "the outage refused some requests");
    let duplicates = verify(&ok, &committed);
    eprintln!(
        "receiver outage: {} transactions, {duplicates} repeated requests",
        committed.len()
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_ten_seconds() {
    let mut h = Harness::start(ITEMS, "").await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("item.*", &receiver.url("/s"), None).await;
    h.start_daemon().await;
    let mut standby = h.spawn_extra_daemon();
    let log_run = 2;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(h.log_path(log_run))
        .unwrap_or_default()
        .contains("standby")
    {
        assert!(
            Instant::now() < deadline,
            "no standby line:\n{}",
            h.daemon_log()
        );
        assert!(
            standby.try_wait().unwrap().is_none(),
            "the standby exited:\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.db.batch_execute("INSERT INTO item VALUES (1, 0)")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;

    h.kill_daemon();
    let killed = Instant::now();
    h.db.batch_execute("INSERT INTO item VALUES (2, 0)")
        .await
        .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(20), |r| {
            r.iter().any(|x| x.json()["PrimaryKey"] == 2)
        })
        .await;
    let took = killed.elapsed();
    assert!(
        got.iter().any(|x| x.json()["PrimaryKey"] == 2),
        "standby never took over:\n{}",
        h.daemon_log()
    );
    assert!(took < Duration::from_secs(10), "takeover took {took:?}");
    eprintln!("standby took over and delivered within {took:?}");
    h.adopt_daemon(standby);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_changes_meet_the_hooks_of_their_time() {
    let mut h = Harness::start(
        ITEMS,
        "max_consecutive_errors = 1000\nmax_backoff = \"200ms\"\n",
    )
    .await;
    // A holds the slot back by failing; C takes everything.
    let a_status = Arc::new(AtomicU16::new(500));
    let s = Arc::clone(&a_status);
    let a = Receiver::start_with(move |_, _| s.load(Ordering::SeqCst))
        .await
        .unwrap();
    let c = Receiver::start().await.unwrap();
    let b = Receiver::start().await.unwrap();
    h.add_hook("item.*", &a.url("/a"), None).await;
    let c_id = h.add_hook("item.*", &c.url("/c"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO item VALUES (1, 0)")
        .await
        .unwrap();
    c.wait_until(WAIT, |r| !r.is_empty()).await;
    a.wait_until(WAIT, |r| !r.is_empty()).await;
    // After change X: C no longer wants item events, B added. X stays
    // unconfirmed (A fails). (C's row changes rather than goes: a deleted
    // hook's waiting events are dropped, and the replayed deletion would
    // race the replayed X.)
    h.db.execute(
        "UPDATE walhook.webhook SET events = 'other.*' WHERE webhook_id = $1",
        &[&c_id],
    )
    .await
    .unwrap();
    let b_id = h.add_hook("item.*", &b.url("/b"), None).await;
    // The daemon has read both changes of the webhook table.
    h.wait_log(&format!("webhook table: Added({b_id})")).await;
    h.kill_daemon();

    a_status.store(200, Ordering::SeqCst);
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO item VALUES (2, 0)")
        .await
        .unwrap();
    a.wait_until(WAIT, |r| {
        r.iter().filter(|x| x.json()["PrimaryKey"] == 2).count() >= 1
    })
    .await;
    b.wait_until(WAIT, |r| !r.is_empty()).await;
    // Whatever else was going to arrive has arrived by now.
    h.wait_caught_up("the daemon to pass every change").await;
    let keys = |r: &Receiver| -> Vec<i64> {
        r.requests()
            .iter()
            .map(|x| x.json()["PrimaryKey"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        keys(&b),
        [2],
        "B was added after X: it gets only later changes"
    );
    assert_eq!(
        keys(&c),
        [1, 1],
        "C wanted items at X: the replayed X reaches it again (same EventId), later ones do not"
    );
    let c_ids: BTreeSet<String> = c
        .requests()
        .iter()
        .map(|x| x.json()["EventId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(c_ids.len(), 1);
    assert!(keys(&a).contains(&1) && keys(&a).contains(&2));
    assert!(h.stop_daemon().success());
}
