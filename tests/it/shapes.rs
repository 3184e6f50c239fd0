//! Table shapes and schema changes: replica identities, composite and
//! missing keys, key-changing updates, partitions, several schemas, names
//! that need quoting, TRUNCATE, and ALTER TABLE while streaming.

use std::time::Duration;

use serde_json::{json, Value};
use walhook_lab::receiver::Receiver;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

const SHAPES: &str = r#"
CREATE TABLE ident_default (id int PRIMARY KEY, a text, b text);
CREATE TABLE ident_full (id int PRIMARY KEY, a text, b text);
ALTER TABLE ident_full REPLICA IDENTITY FULL;
CREATE TABLE ident_index (code text NOT NULL, a text);
CREATE UNIQUE INDEX ident_index_code ON ident_index (code);
ALTER TABLE ident_index REPLICA IDENTITY USING INDEX ident_index_code;
CREATE TABLE ident_nothing (id int PRIMARY KEY, a text);
ALTER TABLE ident_nothing REPLICA IDENTITY NOTHING;
CREATE TABLE keyless (a text, b int);
CREATE TABLE composite_key (tenant int, id int, v text, PRIMARY KEY (tenant, id));
CREATE TABLE toasted (id int PRIMARY KEY, big text, n int);
CREATE TABLE measurement (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE measurement_2024 PARTITION OF measurement FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Order Line" ("Line Id" int PRIMARY KEY, "Qty" int);
CREATE TABLE parent (id int PRIMARY KEY);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
CREATE TABLE counter (id serial PRIMARY KEY, v int);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identities_keys_partitions_and_quoted_names() {
    let mut h = Harness::start(SHAPES, "").await;
    let r = Receiver::start().await.unwrap();
    h.add_hook("*", &r.url("/all"), None).await;

    // A table without an identity is published for INSERT only, so the
    // host's UPDATE and DELETE keep working; check says how to fix it.
    let check = h.walhook(&["check"]);
    let out = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(
        out.contains("WARN  table public.keyless has no primary key"),
        "{out}"
    );
    assert!(out.contains("public.ident_nothing"), "{out}");

    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO ident_default VALUES (1, 'a', 'b');
         UPDATE ident_default SET a = 'a2' WHERE id = 1;
         INSERT INTO ident_full VALUES (1, 'a', 'b');
         UPDATE ident_full SET a = 'a2' WHERE id = 1;
         DELETE FROM ident_full WHERE id = 1;
         INSERT INTO ident_index VALUES ('X-1', 'a');
         UPDATE ident_index SET code = 'X-2' WHERE code = 'X-1';
         INSERT INTO ident_nothing VALUES (1, 'a');
         UPDATE ident_nothing SET a = 'b';
         DELETE FROM ident_nothing;
         INSERT INTO keyless VALUES ('k', 1);
         UPDATE keyless SET b = 2;
         DELETE FROM keyless;
         INSERT INTO composite_key VALUES (7, 1, 'v');
         DELETE FROM composite_key;
         INSERT INTO measurement VALUES (1, '2024-05-01', 10);
         INSERT INTO \"Sales Dept\".\"Order Line\" VALUES (3, 4);",
    )
    .await
    .unwrap();
    // 2 + 3 + 2 + 1 + 1 + 2 + 1 + 1 = 13 events
    r.wait_until(WAIT, |x| x.len() >= 13).await;
    // Whatever else was going to arrive has arrived by now.
    h.wait_caught_up("the daemon to pass every change").await;
    let got = r.requests();
    let events: Vec<String> = got
        .iter()
        .map(|x| x.json()["Event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        got.len(),
        13,
        "events: {events:?}\nlog:\n{}",
        h.daemon_log()
    );

    let find = |event: &str| -> Vec<Value> {
        got.iter()
            .map(|x| x.json())
            .filter(|b| b["Event"] == event)
            .collect()
    };
    // DEFAULT: inexact Changes.
    let changed = &find("ident_default.changed")[0];
    assert_eq!(changed["ChangesExact"], false);
    // FULL: exact Changes, the real primary key, the old row on delete.
    let changed = &find("ident_full.changed")[0];
    assert_eq!(changed["ChangesExact"], true);
    assert_eq!(changed["Changes"], json!(["a"]));
    assert_eq!(changed["PrimaryKey"], 1);
    let deleted = &find("ident_full.deleted")[0];
    assert_eq!(
        deleted["FieldValues"],
        json!({"id": 1, "a": "a2", "b": "b"})
    );
    assert_eq!(deleted["Values"], json!({"id": 1}));
    assert_eq!(deleted["MissingColumns"], json!([]));
    // USING INDEX: the index columns are the key; a key-changing update.
    let changed = &find("ident_index.changed")[0];
    assert_eq!(changed["PrimaryKey"], "X-2");
    // NOTHING and keyless: inserts only, no PrimaryKey.
    assert_eq!(find("ident_nothing.created").len(), 1);
    assert!(find("ident_nothing.changed").is_empty());
    let keyless = &find("keyless.created")[0];
    assert_eq!(keyless["PrimaryKey"], Value::Null);
    assert!(find("keyless.changed").is_empty());
    // Composite key: an object.
    assert_eq!(
        find("composite_key.created")[0]["PrimaryKey"],
        json!({"tenant": 7, "id": 1})
    );
    assert_eq!(
        find("composite_key.deleted")[0]["Values"],
        json!({"tenant": 7, "id": 1})
    );
    // Partitions are published via the root: the parent's name.
    let m = &find("measurement.created")[0];
    assert_eq!(m["Table"], "public.measurement");
    assert_eq!(m["PrimaryKey"], json!({"id": 1, "at": "2024-05-01"}));
    // Names that need quoting.
    let o = &find("Order Line.created")[0];
    assert_eq!(o["Table"], "Sales Dept.Order Line");
    assert_eq!(o["FieldValues"], json!({"Line Id": 3, "Qty": 4}));
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_missing_never_fetched_and_truncate_is_reported() {
    let mut h = Harness::start(SHAPES, "").await;
    let r = Receiver::start().await.unwrap();
    h.add_hook("toasted.*, *.truncated", &r.url("/t"), None)
        .await;
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO toasted SELECT 1, string_agg(md5(i::text), '') , 0 FROM generate_series(1, 4000) i;
         UPDATE toasted SET n = 1 WHERE id = 1;
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);
         INSERT INTO counter (v) VALUES (1);
         TRUNCATE parent, counter RESTART IDENTITY CASCADE;",
    )
    .await
    .unwrap();
    let got = r.wait_until(WAIT, |x| x.len() >= 5).await;
    let bodies: Vec<Value> = got.iter().map(|x| x.json()).collect();
    let created = bodies
        .iter()
        .find(|b| b["Event"] == "toasted.created")
        .unwrap();
    assert_eq!(
        created["FieldValues"]["big"].as_str().unwrap().len(),
        128_000
    );
    let changed = bodies
        .iter()
        .find(|b| b["Event"] == "toasted.changed")
        .unwrap();
    assert_eq!(changed["MissingColumns"], json!(["big"]));
    assert!(changed["FieldValues"].get("big").is_none());
    assert_eq!(changed["FieldValues"]["n"], 1);
    let mut truncated: Vec<String> = bodies
        .iter()
        .filter(|b| b["Event"].as_str().unwrap().ends_with(".truncated"))
        .map(|b| b["Table"].as_str().unwrap().to_owned())
        .collect();
    truncated.sort();
    assert_eq!(
        truncated,
        ["public.child", "public.counter", "public.parent"],
        "CASCADE truncates child too"
    );
    let t = bodies
        .iter()
        .find(|b| b["Event"] == "parent.truncated")
        .unwrap();
    assert_eq!(t["PrimaryKey"], Value::Null);
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_while_streaming_use_the_shape_of_their_time() {
    let mut h = Harness::start(SHAPES, "").await;
    let r = Receiver::start().await.unwrap();
    h.add_hook("*", &r.url("/s"), None).await;
    h.start_daemon().await;
    h.db.batch_execute(
        "INSERT INTO ident_default VALUES (1, 'a', 'b');
         ALTER TABLE ident_default ADD COLUMN c int DEFAULT 5;
         INSERT INTO ident_default VALUES (2, 'a', 'b', 6);
         ALTER TABLE ident_default DROP COLUMN b;
         INSERT INTO ident_default VALUES (3, 'a', 7);
         ALTER TABLE ident_default RENAME COLUMN a TO alpha;
         INSERT INTO ident_default VALUES (4, 'x', 8);
         ALTER TABLE ident_default ALTER COLUMN c TYPE text;
         INSERT INTO ident_default VALUES (5, 'y', '9');
         ALTER TABLE ident_default RENAME TO renamed;
         INSERT INTO renamed VALUES (6, 'z', '10');",
    )
    .await
    .unwrap();
    // A table created after walhook started is picked up by setup.
    h.db.batch_execute("CREATE TABLE newcomer (id int PRIMARY KEY)")
        .await
        .unwrap();
    let setup = h.walhook(&["setup"]);
    assert!(setup.status.success(), "{}", text(&setup));
    h.db.batch_execute("INSERT INTO newcomer VALUES (1)")
        .await
        .unwrap();
    let got = r.wait_until(WAIT, |x| x.len() >= 7).await;
    let bodies: Vec<Value> = got.iter().map(|x| x.json()).collect();
    assert_eq!(bodies.len(), 7, "log:\n{}", h.daemon_log());
    let fv = |pk: i64| -> Value {
        bodies
            .iter()
            .find(|b| b["PrimaryKey"] == pk && b["Event"] != "newcomer.created")
            .unwrap()["FieldValues"]
            .clone()
    };
    assert_eq!(fv(1), json!({"id": 1, "a": "a", "b": "b"}));
    assert_eq!(fv(2), json!({"id": 2, "a": "a", "b": "b", "c": 6}));
    assert_eq!(fv(3), json!({"id": 3, "a": "a", "c": 7}));
    assert_eq!(fv(4), json!({"id": 4, "alpha": "x", "c": 8}));
    assert_eq!(fv(5), json!({"id": 5, "alpha": "y", "c": "9"}));
    let six = bodies.iter().find(|b| b["PrimaryKey"] == 6).unwrap();
    assert_eq!(six["Event"], "renamed.created");
    assert!(bodies.iter().any(|b| b["Event"] == "newcomer.created"));
    assert!(h.stop_daemon().success());
}
