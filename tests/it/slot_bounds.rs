//! No target holds the slot: an event that waits past the hook's backlog
//! bound (throttled without end, refused while other rows go through, or
//! queued behind a slow target with no later event to notice it) is
//! parked with the hook's later events, on delivery's own clock, so the
//! confirmed position moves on; and a row made invalid stops its events
//! going to its old target.

use std::time::{Duration, Instant};

use walhook_lab::receiver::Receiver;

use crate::common::*;

const CRM: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL
);
";

/// Retries that never trip the hook, and a short backlog bound.
const BOUNDED: &str = "max_consecutive_errors = 100000\nmax_backoff = \"1s\"\ntimeout = \"2s\"\n\
                       connect_timeout = \"1s\"\nbacklog_max_age = \"3s\"\n";

async fn parked_reasons(h: &Harness, id: i32) -> Vec<(String, i64)> {
    h.db.query(
        "SELECT reason, count(*) FROM walhook.delivery WHERE webhook_id = $1 GROUP BY reason",
        &[&id],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_throttling_everything_never_holds_the_slot() {
    let mut h = Harness::start(CRM, BOUNDED).await;
    let receiver = Receiver::start_with(|_, _| 429).await.unwrap();
    let id = h.add_hook("contact.*", &receiver.url("/busy"), None).await;
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact (name) SELECT 'n' || i FROM generate_series(1, 29) AS i",
    )
    .await
    .unwrap();
    let end = h.current_lsn().await;
    let committed = Instant::now();
    h.wait_confirmed(
        "the slot to pass rows a target only throttles",
        end,
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "429 to everything: the slot passed 29 rows after {:.1?}",
        committed.elapsed()
    );
    assert!(receiver.count() > 0, "the target was tried");
    assert_eq!(
        parked_reasons(&h, id).await,
        [("backlog".to_owned(), 29)],
        "every row parked for the hook's backlog; log:\n{}",
        h.daemon_log()
    );
    assert_eq!(
        h.webhook_state(id).await,
        1,
        "throttled, not failed: still Active"
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_a_target_refuses_never_holds_the_slot_and_other_rows_go_on() {
    let mut h = Harness::start(CRM, BOUNDED).await;
    let receiver = Receiver::start_with(|request, _| {
        if request.json()["FieldValues"]["name"] == "poison" {
            500
        } else {
            200
        }
    })
    .await
    .unwrap();
    let id = h.add_hook("contact.*", &receiver.url("/picky"), None).await;
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('poison')", &[])
        .await
        .unwrap();
    for i in 0..10 {
        h.db.execute(
            "INSERT INTO contact (name) VALUES ($1)",
            &[&format!("ok{i}")],
        )
        .await
        .unwrap();
    }
    let end = h.current_lsn().await;
    h.wait_confirmed(
        "the slot to pass a row its target refuses",
        end,
        Duration::from_secs(30),
    )
    .await;
    let accepted = receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().filter(|r| r.status == 200).count() >= 10
        })
        .await;
    assert_eq!(accepted.iter().filter(|r| r.status == 200).count(), 10);
    let reasons = parked_reasons(&h, id).await;
    let poison_parked: i64 =
        h.db.query_one(
            "SELECT count(*) FROM walhook.parked_event WHERE webhook_id = $1 \
               AND body::jsonb -> 'FieldValues' ->> 'name' = 'poison'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        poison_parked,
        1,
        "the refused row stays parked ({reasons:?}); log:\n{}",
        h.daemon_log()
    );
    assert_eq!(h.webhook_state(id).await, 1, "a 200 between: never tripped");
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_past_its_bound_parks_without_waiting_for_a_later_event() {
    let mut h = Harness::start(
        CRM,
        "concurrency_per_webhook = 1\nbacklog_max_age = \"2s\"\n",
    )
    .await;
    let slow = Receiver::start_slow(Duration::from_millis(1500))
        .await
        .unwrap();
    h.add_hook("contact.*", &slow.url("/slow"), None).await;
    h.start_daemon().await;
    // Eight rows at 1.5 s each: 12 s to deliver, and no event after them.
    h.db.batch_execute(
        "INSERT INTO contact (name) SELECT 'n' || i FROM generate_series(1, 8) AS i",
    )
    .await
    .unwrap();
    let end = h.current_lsn().await;
    let committed = Instant::now();
    h.wait_confirmed(
        "the slot to pass a slow hook's backlog",
        end,
        Duration::from_secs(30),
    )
    .await;
    let passed = committed.elapsed();
    assert!(
        passed < Duration::from_secs(9),
        "the slot waited {passed:?} for the slow target; log:\n{}",
        h.daemon_log()
    );
    // The replayer then delivers them all, in commit order.
    let got = slow
        .wait_until(Duration::from_secs(60), |r| r.len() >= 8)
        .await;
    let names: Vec<String> = got
        .iter()
        .map(|r| r.json()["FieldValues"]["name"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    assert_eq!(names, expected, "log:\n{}", h.daemon_log());
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_made_invalid_gets_no_further_attempt_at_its_old_target() {
    let mut h = Harness::start(CRM, BOUNDED).await;
    let receiver = Receiver::start_with(|_, _| 500).await.unwrap();
    let id = h.add_hook("contact.*", &receiver.url("/down"), None).await;
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('a')", &[])
        .await
        .unwrap();
    receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    // The retrying event's hook is made invalid (no events): skipped
    // like a deleted row, its event is dropped, not sent on.
    h.db.execute(
        "UPDATE walhook.webhook SET events = '' WHERE webhook_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed(
        "the slot to pass the invalid row",
        end,
        Duration::from_secs(30),
    )
    .await;
    let after = receiver.count();
    // Two more retry intervals (max_backoff 1 s): nothing new arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.count(),
        after,
        "attempts went on after the row was made invalid; log:\n{}",
        h.daemon_log()
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_row_past_its_size_bounds_is_skipped_by_name_and_refused_by_add() {
    let mut h = Harness::start(CRM, BOUNDED).await;
    let receiver = Receiver::start().await.unwrap();
    let id = h.add_hook("contact.*", &receiver.url("/h"), None).await;
    // 25,000 headers: more than a request can carry.
    h.db.execute(
        "UPDATE walhook.webhook SET headers = (SELECT jsonb_object_agg('x-h' || i, 'v') \
           FROM generate_series(1, 25000) AS i) WHERE webhook_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('a')", &[])
        .await
        .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed(
        "the slot to pass a change beside an oversized row",
        end,
        Duration::from_secs(30),
    )
    .await;
    h.wait_log(&format!("webhook_id={id}")).await;
    let log = h.daemon_log();
    assert!(
        log.contains("headers has 25000 entries"),
        "the skip names the bound; log:\n{log}"
    );
    assert_eq!(receiver.count(), 0, "a skipped row gets nothing");
    let check = h.walhook(&["check"]);
    assert!(
        text(&check).contains(&format!(
            "webhook_id {id} is skipped: headers has 25000 entries"
        )),
        "{}",
        text(&check)
    );
    // `webhook add` refuses the 65th header.
    let url = receiver.url("/h");
    let mut args = vec![
        "webhook", "add", "--name", "many", "--events", "*", "--url", &url,
    ];
    let headers: Vec<String> = (0..65).map(|i| format!("x-h{i}=v")).collect();
    for header in &headers {
        args.push("--header");
        args.push(header);
    }
    let add = h.walhook(&args);
    assert!(!add.status.success());
    assert!(
        text(&add).contains("more than the 64 a hook may add"),
        "{}",
        text(&add)
    );
    assert!(h.stop_daemon().success());
}
