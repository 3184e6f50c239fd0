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
