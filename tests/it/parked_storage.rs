//! Parked storage: a change's payload stored once for all the hooks that
//! park it, bodies replayed byte for byte, order kept by a concurrent
//! replay, and an install from before the shared payloads migrated by
//! `setup` without losing what was parked.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::*;

const CRM: &str = "
CREATE TABLE contact (
    contact_id integer PRIMARY KEY,
    name text NOT NULL,
    version integer NOT NULL DEFAULT 0
);
";

const WAIT: Duration = Duration::from_secs(60);

/// A hook with a name and properties that need escaping in JSON.
async fn add_hook(h: &Harness, url: &str, state: i16) -> i32 {
    h.db.query_one(
        "INSERT INTO walhook.webhook (name, events, target_url, secret, properties, state) \
         VALUES ($1, '*', $2, 'k-0123456789abcdef', $3::text::jsonb, $4) RETURNING webhook_id",
        &[
            &"he said \"hi\" \u{e4}\\",
            &url,
            &r#"{"tenant": "a\u0001b", "n": 1.50, "nested": {"x": [1, null]}}"#,
            &state,
        ],
    )
    .await
    .unwrap()
    .get(0)
}

async fn count(h: &Harness, sql: &str) -> i64 {
    h.db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn wait_count(h: &Harness, sql: &str, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = count(h, sql).await;
        if done(n) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n}, never as expected; log:\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event_id(body: &str) -> String {
    let doc: serde_json::Value = serde_json::from_str(body).unwrap();
    doc["EventId"].as_str().unwrap().to_owned()
}

/// A body with its EventId (the only per-hook difference between hooks of
/// the same name and properties) replaced by a placeholder.
fn without_id(body: &str) -> String {
    body.replacen(&event_id(body), "<id>", 1)
}

fn bodies(requests: &[ReceivedRequest]) -> Vec<String> {
    requests
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect()
}

/// `(contact_id, version, Event)` of each request, in arrival order.
fn changes(requests: &[ReceivedRequest]) -> Vec<(i64, i64, String)> {
    requests
        .iter()
        .map(|r| {
            let doc = r.json();
            (
                doc["FieldValues"]["contact_id"].as_i64().unwrap_or(-1),
                doc["FieldValues"]["version"].as_i64().unwrap_or(-1),
                doc["Event"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_share_one_payload_and_replay_the_live_body_in_row_order() {
    let mut h = Harness::start(CRM, "").await;
    let live = Receiver::start().await.unwrap();
    let replayed = Receiver::start().await.unwrap();
    let live_hook = add_hook(&h, &live.url("/live"), 1).await;
    // Two hooks in TooManyErrors (3): every change is parked twice.
    let parked_hook = add_hook(&h, &replayed.url("/parked"), 3).await;
    let other_hook = add_hook(&h, &replayed.url("/other"), 3).await;
    h.start_daemon().await;
    // Rows changed concurrently, a key change, a delete, a TRUNCATE (a
    // barrier) and changes after it.
    h.db.batch_execute(
        "INSERT INTO contact SELECT i, 'c' || i, 0 FROM generate_series(1, 40) i;
         UPDATE contact SET version = 1 WHERE contact_id <= 20;
         UPDATE contact SET version = 2 WHERE contact_id % 2 = 0;
         UPDATE contact SET contact_id = 100, version = 3 WHERE contact_id = 7;
         DELETE FROM contact WHERE contact_id = 5;
         TRUNCATE contact;
         INSERT INTO contact SELECT i, 'after' || i, 10 FROM generate_series(1, 5) i;",
    )
    .await
    .unwrap();
    let changes_made = 40 + 20 + 20 + 1 + 1 + 1 + 5;
    let got = live.wait_until(WAIT, |r| r.len() >= changes_made).await;
    assert_eq!(got.len(), changes_made, "log:\n{}", h.daemon_log());
    wait_count(
        &h,
        &format!("SELECT count(*) FROM walhook.delivery WHERE webhook_id IN ({parked_hook}, {other_hook})"),
        |n| n == 2 * changes_made as i64,
    )
    .await;
    h.wait_caught_up("the slot to pass the parked changes")
        .await;
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.delivery_payload").await,
        changes_made as i64,
        "one payload per change, not per hook"
    );

    // The stored body, as the view gives it, is the live hook's body but
    // for the EventId: byte for byte.
    let stored: Vec<(String, String)> =
        h.db.query(
            &format!(
                "SELECT event_id::text, body FROM walhook.parked_event \
                  WHERE webhook_id = {parked_hook} ORDER BY commit_lsn, change_index"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut live_bodies: Vec<String> = bodies(&got).iter().map(|b| without_id(b)).collect();
    let mut stored_bodies: Vec<String> = stored.iter().map(|(_, b)| without_id(b)).collect();
    for (id, body) in &stored {
        assert_eq!(&event_id(body), id, "the stored EventId is the body's");
    }
    live_bodies.sort();
    stored_bodies.sort();
    assert_eq!(stored_bodies, live_bodies);

    // Re-activated: the parked events arrive with exactly the stored
    // bodies and EventIds.
    h.db.execute(
        "UPDATE walhook.webhook SET state = 1 WHERE webhook_id = $1",
        &[&parked_hook],
    )
    .await
    .unwrap();
    let got = replayed.wait_until(WAIT, |r| r.len() >= changes_made).await;
    assert_eq!(got.len(), changes_made, "log:\n{}", h.daemon_log());
    for r in &got {
        let body = std::str::from_utf8(&r.body).unwrap();
        assert_eq!(
            r.header("x-superoffice-eventid"),
            Some(event_id(body).as_str())
        );
    }
    let mut sent = bodies(&got);
    let mut want: Vec<String> = stored.into_iter().map(|(_, b)| b).collect();
    sent.sort();
    want.sort();
    assert_eq!(sent, want, "replayed bodies are the stored ones");

    // Order: each row's versions in commit order, the key change after
    // both rows' earlier events, the TRUNCATE after everything before it
    // and before everything after it.
    let order = changes(&got);
    let truncate_at = order
        .iter()
        .position(|c| c.2.ends_with(".truncated"))
        .unwrap_or_else(|| panic!("no TRUNCATE among {order:?}"));
    assert_eq!(truncate_at, changes_made - 6, "{order:?}");
    assert!(
        order[truncate_at + 1..].iter().all(|c| c.1 == 10),
        "{order:?}"
    );
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (id, version, event) in &order[..truncate_at] {
        if event.ends_with("deleted") {
            continue;
        }
        let before = last.insert(*id, *version).unwrap_or(-1);
        assert!(
            before <= *version,
            "row {id}: {before} then {version}: {order:?}"
        );
    }
    let key_change = order.iter().position(|c| c.0 == 100).unwrap();
    assert!(
        order[..key_change].iter().filter(|c| c.0 == 7).count() == 2,
        "row 7's insert and update come before its key change: {order:?}"
    );

    // Delivered rows are removed; the payload stays while the other
    // parked hook still holds it.
    wait_count(
        &h,
        &format!("SELECT count(*) FROM walhook.delivery WHERE webhook_id = {parked_hook}"),
        |n| n == 0,
    )
    .await;
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.delivery_payload").await,
        changes_made as i64
    );
    h.db.execute(
        "UPDATE walhook.webhook SET state = 1 WHERE webhook_id = $1",
        &[&other_hook],
    )
    .await
    .unwrap();
    wait_count(&h, "SELECT count(*) FROM walhook.delivery", |n| n == 0).await;
    wait_count(&h, "SELECT count(*) FROM walhook.delivery_payload", |n| {
        n == 0
    })
    .await;
    assert_eq!(
        live.requests().len(),
        changes_made,
        "{live_hook} got each once"
    );
    assert!(h.stop_daemon().success());
}

/// `delivery` as it was before payloads were shared.
const OLD_DELIVERY: &str = "
DROP VIEW walhook.parked_event;
DROP TABLE walhook.delivery;
DROP TABLE walhook.delivery_payload;
CREATE TABLE walhook.delivery (
    delivery_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id   integer       NOT NULL,
    event_id     uuid          NOT NULL,
    event        varchar(400)  NOT NULL,
    ordering_key text          NOT NULL,
    commit_lsn   pg_lsn        NOT NULL,
    change_index integer       NOT NULL,
    body         text          NOT NULL,
    reason       text          NOT NULL,
    attempts     integer       NOT NULL DEFAULT 0,
    last_error   varchar(4000),
    created      timestamptz   NOT NULL DEFAULT now(),
    next_attempt timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX delivery_webhook_order ON walhook.delivery (webhook_id, commit_lsn, change_index);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_migrates_parked_events_of_the_old_layout_and_they_are_delivered() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let hook = add_hook(&h, &receiver.url("/old"), 3).await;
    h.db.batch_execute(OLD_DELIVERY).await.unwrap();
    // Three parked events of two changes, one of them parked by a hook
    // that no longer exists too; stored out of commit order.
    let old_bodies = [
        (
            2,
            "0/3000000",
            1,
            r#"{"EventId":"00000000-0000-0000-0000-000000000002","n":"second ä"}"#,
        ),
        (
            1,
            "0/3000000",
            0,
            r#"{"EventId":"00000000-0000-0000-0000-000000000001","n":"first"}"#,
        ),
        (
            3,
            "0/3000000",
            0,
            r#"{"EventId":"00000000-0000-0000-0000-000000000003","n":"gone hook"}"#,
        ),
    ];
    for (n, lsn, index, body) in old_bodies {
        let webhook_id = if n == 3 { hook + 1000 } else { hook };
        h.db.execute(
            "INSERT INTO walhook.delivery (webhook_id, event_id, event, ordering_key, commit_lsn, \
                                           change_index, body, reason, attempts) \
             VALUES ($1, $2::text::uuid, 'contact.changed', 'k', $3::text::pg_lsn, $4, $5, \
                     'TooManyErrors', 4)",
            &[
                &webhook_id,
                &format!("00000000-0000-0000-0000-00000000000{n}"),
                &lsn,
                &index,
                &body,
            ],
        )
        .await
        .unwrap();
    }
    for run in 0..2 {
        let out = h.walhook(&["setup"]);
        assert!(out.status.success(), "setup run {run}: {}", text(&out));
    }
    let rows: Vec<(i32, String, i32, String)> =
        h.db.query(
            "SELECT webhook_id, event, attempts, body FROM walhook.parked_event \
              ORDER BY webhook_id, commit_lsn, change_index",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (hook, "contact.changed".into(), 4, old_bodies[1].3.into()),
            (hook, "contact.changed".into(), 4, old_bodies[0].3.into()),
            (
                hook + 1000,
                "contact.changed".into(),
                4,
                old_bodies[2].3.into()
            ),
        ]
    );
    h.db.execute(
        "UPDATE walhook.webhook SET state = 1 WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    let got = receiver.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(
        bodies(&got),
        [old_bodies[1].3, old_bodies[0].3],
        "in commit order, byte for byte; log:\n{}",
        h.daemon_log()
    );
    wait_count(
        &h,
        &format!("SELECT count(*) FROM walhook.delivery WHERE webhook_id = {hook}"),
        |n| n == 0,
    )
    .await;
    // The other hook's event is kept, with its payload.
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.parked_event").await,
        1
    );
    assert!(h.stop_daemon().success());
}
