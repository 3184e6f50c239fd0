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

/// A `properties` object of about `bytes` bytes of JSON that does not
/// compress (PostgreSQL would otherwise store copies in a fraction of their
/// size), from a fixed seed.
fn incompressible_properties(bytes: usize, seed: u64) -> serde_json::Value {
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64: enough to defeat pglz, and the same on every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut map = serde_json::Map::new();
    let mut len = 2;
    while len + 80 < bytes {
        let value: String = (0..64)
            .map(|_| CHARS[(next() % CHARS.len() as u64) as usize] as char)
            .collect();
        let key = format!("k{}", map.len());
        len += key.len() + value.len() + 8;
        map.insert(key, serde_json::Value::String(value));
    }
    serde_json::Value::Object(map)
}

/// Bytes walhook's parked tables take on disk, with their TOAST and
/// indexes (the tables that exist: older layouts lack some).
async fn parked_tables_bytes(h: &Harness) -> i64 {
    h.db.query_one(
        "SELECT coalesce(sum(pg_total_relation_size(c)), 0)::bigint \
           FROM unnest(ARRAY['walhook.delivery', 'walhook.delivery_payload', \
                             'walhook.delivery_properties']) AS t, \
                to_regclass(t) AS c \
          WHERE c IS NOT NULL",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_are_stored_once_per_version_and_each_replayed_event_carries_its_own() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    // The largest properties a row may have (64 KiB of JSON text), in two
    // versions.
    let first = incompressible_properties(60 * 1024, 1);
    let second = incompressible_properties(60 * 1024, 2);
    let properties_len = first.to_string().len() as i64;
    let hook: i32 =
        h.db.query_one(
            "INSERT INTO walhook.webhook (name, events, target_url, secret, properties, state) \
             VALUES ('big', '*', $1, 'k-0123456789abcdef', $2::text::jsonb, 3) \
             RETURNING webhook_id",
            &[&receiver.url("/big"), &first.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    h.start_daemon().await;
    let empty = parked_tables_bytes(&h).await;
    // The issue's figure: 59 changes parked for a hook in TooManyErrors.
    h.db.batch_execute("INSERT INTO contact SELECT i, 'c' || i, 0 FROM generate_series(1, 59) i")
        .await
        .unwrap();
    let parked_sql = format!("SELECT count(*) FROM walhook.delivery WHERE webhook_id = {hook}");
    wait_count(&h, &parked_sql, |n| n == 59).await;
    h.wait_caught_up("the slot to pass the parked changes")
        .await;
    let grown = parked_tables_bytes(&h).await - empty;
    eprintln!(
        "59 parked events with {properties_len} bytes of Properties: the parked tables grew by \
         {grown} bytes ({:.1} copies of the Properties)",
        grown as f64 / properties_len as f64
    );
    // One copy, the rows, and the pages, indexes and TOAST of three
    // tables; one copy per event would be 59.
    assert!(
        grown < 10 * properties_len,
        "59 parked events took {grown} bytes, as if each stored its {properties_len} bytes \
         of Properties"
    );

    // A new version of the properties: the events after it carry it.
    h.db.execute(
        "UPDATE walhook.webhook SET properties = $2::text::jsonb WHERE webhook_id = $1",
        &[&hook, &second.to_string()],
    )
    .await
    .unwrap();
    h.db.batch_execute("UPDATE contact SET version = 1 WHERE contact_id <= 10")
        .await
        .unwrap();
    wait_count(&h, &parked_sql, |n| n == 69).await;
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.delivery_properties").await,
        2,
        "one copy per version of the hook's properties"
    );

    h.db.execute(
        "UPDATE walhook.webhook SET state = 1 WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 69).await;
    assert_eq!(got.len(), 69, "log:\n{}", h.daemon_log());
    for r in &got {
        let doc = r.json();
        let want = if doc["Event"] == "contact.created" {
            &first
        } else {
            &second
        };
        assert!(
            doc["Properties"] == *want,
            "{} carries the properties of its time",
            doc["Event"]
        );
        assert_eq!(
            r.header("x-superoffice-eventid"),
            doc["EventId"].as_str(),
            "the EventId is the one parked"
        );
    }
    // Nothing parked refers to them any more: both copies are removed.
    wait_count(&h, &parked_sql, |n| n == 0).await;
    wait_count(
        &h,
        "SELECT count(*) FROM walhook.delivery_properties",
        |n| n == 0,
    )
    .await;
    assert!(h.stop_daemon().success());
}

/// The body of each parked event, as the view gives it, by EventId.
async fn parked_bodies(h: &Harness) -> BTreeMap<String, String> {
    h.db.query("SELECT event_id::text, body FROM walhook.parked_event", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_moves_the_properties_of_parked_events_out_of_their_rows_and_loses_none() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let with_properties = add_hook(&h, &receiver.url("/with"), 3).await;
    let without = h.add_hook("*", &receiver.url("/without"), None).await;
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = $1",
        &[&without],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO contact SELECT i, 'c' || i, 0 FROM generate_series(1, 3) i;
         UPDATE contact SET version = 1 WHERE contact_id = 2;",
    )
    .await
    .unwrap();
    wait_count(&h, "SELECT count(*) FROM walhook.delivery", |n| n == 8).await;
    h.wait_caught_up("the slot to pass the parked changes")
        .await;
    assert!(h.stop_daemon().success());
    let parked = parked_bodies(&h).await;

    // Back to the layout of an install from before delivery_properties:
    // each row holds its hook's properties.
    h.db.batch_execute(
        "DROP VIEW walhook.parked_event;
         UPDATE walhook.delivery d SET properties = pp.properties
           FROM walhook.delivery_properties pp
          WHERE pp.webhook_id = d.webhook_id AND pp.digest = d.properties_digest;
         ALTER TABLE walhook.delivery
             DROP COLUMN properties_digest, DROP COLUMN fields, DROP COLUMN bytes;
         DROP TABLE walhook.delivery_properties;",
    )
    .await
    .unwrap();
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM walhook.delivery WHERE properties IS NOT NULL"
        )
        .await,
        4
    );
    for run in 0..2 {
        let out = h.walhook(&["setup"]);
        assert!(out.status.success(), "setup run {run}: {}", text(&out));
    }
    assert_eq!(parked_bodies(&h).await, parked, "every body as it was");
    assert_eq!(
        count(
            &h,
            "SELECT count(*) FROM walhook.delivery WHERE properties IS NOT NULL"
        )
        .await,
        0,
        "moved out of the rows"
    );
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.delivery_properties").await,
        1
    );
    // Each event counts its body without the properties, the first of the
    // version the properties too.
    let properties_len = count(
        &h,
        "SELECT octet_length(properties)::bigint FROM walhook.delivery_properties",
    )
    .await;
    let body_len = |hook: i32| {
        format!(
            "SELECT (sum(octet_length(body)) - count(*) * ({} + {properties_len}) \
                     + {properties_len})::bigint \
               FROM walhook.parked_event WHERE webhook_id = {hook}",
            r#"octet_length(',"Properties":')"#
        )
    };
    assert_eq!(
        count(
            &h,
            &format!("SELECT sum(bytes)::bigint FROM walhook.delivery WHERE webhook_id = {with_properties}")
        )
        .await,
        count(&h, &body_len(with_properties)).await
    );
    assert_eq!(
        count(
            &h,
            &format!("SELECT sum(bytes)::bigint FROM walhook.delivery WHERE webhook_id = {without}")
        )
        .await,
        count(
            &h,
            &format!("SELECT sum(octet_length(body))::bigint FROM walhook.parked_event WHERE webhook_id = {without}")
        )
        .await
    );

    // Both hooks Active again: each parked event is sent as it was parked.
    h.db.execute("UPDATE walhook.webhook SET state = 1", &[])
        .await
        .unwrap();
    h.start_daemon().await;
    let got = receiver.wait_until(WAIT, |r| r.len() >= 8).await;
    assert_eq!(got.len(), 8, "log:\n{}", h.daemon_log());
    let mut sent = bodies(&got);
    let mut want: Vec<String> = parked.into_values().collect();
    sent.sort();
    want.sort();
    assert_eq!(sent, want);
    wait_count(&h, "SELECT count(*) FROM walhook.delivery", |n| n == 0).await;
    wait_count(
        &h,
        "SELECT count(*) FROM walhook.delivery_properties",
        |n| n == 0,
    )
    .await;
    assert!(h.stop_daemon().success());
}
