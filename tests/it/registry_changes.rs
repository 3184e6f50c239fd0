//! Changes to a `webhook` row apply to the running daemon in commit order,
//! also the unusual ones: a changed webhook_id is a removed hook and an
//! added one, never a second hook left behind.

use std::time::Duration;

use walhook_lab::receiver::Receiver;

use crate::common::*;

const CRM: &str = "CREATE TABLE contact (contact_id serial PRIMARY KEY, name text NOT NULL);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_webhook_id_leaves_no_hook_behind_also_after_a_restart() {
    let mut h = Harness::start(CRM, "").await;
    let old_target = Receiver::start().await.unwrap();
    let new_target = Receiver::start().await.unwrap();
    let id = h.add_hook("contact.*", &old_target.url("/old"), None).await;
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('before')", &[])
        .await
        .unwrap();
    old_target
        .wait_until(Duration::from_secs(30), |r| r.len() == 1)
        .await;
    // The DBA renumbers the hook and points it elsewhere in one UPDATE.
    h.db.execute(
        "UPDATE walhook.webhook SET webhook_id = 1000, target_url = $2 WHERE webhook_id = $1",
        &[&id, &new_target.url("/new")],
    )
    .await
    .unwrap();
    h.db.execute("INSERT INTO contact (name) VALUES ('after')", &[])
        .await
        .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed("the slot to pass 'after'", end, Duration::from_secs(30))
        .await;
    let got = new_target
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(got[0].json()["FieldValues"]["name"], "after");
    assert_eq!(
        old_target.count(),
        1,
        "the old id's hook got a change after the renumbering; log:\n{}",
        h.daemon_log()
    );
    // After a kill -9 the hooks are restored from the registry snapshot:
    // still no hook under the old id.
    h.kill_daemon();
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('restarted')", &[])
        .await
        .unwrap();
    let end = h.current_lsn().await;
    h.wait_confirmed("the slot to pass 'restarted'", end, Duration::from_secs(30))
        .await;
    new_target
        .wait_until(Duration::from_secs(30), |r| {
            r.iter()
                .any(|r| r.json()["FieldValues"]["name"] == "restarted")
        })
        .await;
    assert_eq!(old_target.count(), 1, "log:\n{}", h.daemon_log());
    let list = text(&h.walhook(&["webhook", "list"]));
    assert!(
        list.contains("1000") && !list.contains(&format!("\n{id} ")),
        "{list}"
    );
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_cost_what_changed_not_the_table_and_restore_after_a_kill() {
    let mut h = Harness::start(CRM, "").await;
    let receiver = Receiver::start().await.unwrap();
    let id = h.add_hook("contact.*", &receiver.url("/h"), None).await;
    // 299 more hooks of about 10 KB each (3 MiB that do not compress),
    // matching nothing.
    h.db.batch_execute(
        "INSERT INTO walhook.webhook (name, events, target_url, properties) \
         SELECT 'other' || i, 'nothing.created', 'https://example.com/' || i, \
                jsonb_build_object('blob', (SELECT string_agg(md5(random()::text || i || j), '') \
                                              FROM generate_series(1, 300) AS j)) \
           FROM generate_series(1, 299) AS i",
    )
    .await
    .unwrap();
    h.start_daemon().await;
    // 120 renames of one hook, each followed by a change it receives, so
    // the position passes each rename.
    for i in 1..=120 {
        h.db.execute(
            "UPDATE walhook.webhook SET name = $2 WHERE webhook_id = $1",
            &[&id, &format!("name{i}")],
        )
        .await
        .unwrap();
        h.db.execute(
            "INSERT INTO contact (name) VALUES ($1)",
            &[&format!("c{i}")],
        )
        .await
        .unwrap();
    }
    let end = h.current_lsn().await;
    h.wait_confirmed("the slot to pass the renames", end, Duration::from_secs(60))
        .await;
    receiver
        .wait_until(Duration::from_secs(60), |r| r.len() >= 120)
        .await;
    let bytes: i64 =
        h.db.query_one(
            "SELECT coalesce(sum(pg_column_size(hooks)), 0)::bigint FROM walhook.registry_snapshot",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let table: i64 =
        h.db.query_one(
            "SELECT coalesce(sum(pg_column_size(w.*)), 0)::bigint FROM walhook.webhook w",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "120 renames of one row in a table of {} KiB: {} KiB of registry snapshots",
        table / 1024,
        bytes / 1024
    );
    // One compacted copy of the table at most, and the renames since.
    assert!(
        bytes < 2 * table + 1024 * 1024,
        "{bytes} bytes of snapshots for a {table}-byte table"
    );
    // Restored after a kill from what was recorded: the last name.
    h.kill_daemon();
    h.start_daemon().await;
    h.db.execute("INSERT INTO contact (name) VALUES ('after')", &[])
        .await
        .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| {
            r.iter().any(|r| r.json()["FieldValues"]["name"] == "after")
        })
        .await;
    let after = got
        .iter()
        .find(|r| r.json()["FieldValues"]["name"] == "after")
        .unwrap();
    assert_eq!(
        after.json()["WebhookName"],
        "name120",
        "log:\n{}",
        h.daemon_log()
    );
    assert!(h.stop_daemon().success());
}
