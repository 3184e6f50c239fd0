//! Column filters in `events` (`contact.changed(name,email)`) against a
//! real stream: a filtered hook receives only the updates touching its
//! columns, and `walhook check` says where a filter is not exact.

use serde_json::Value;
use walhook_lab::receiver::Receiver;

use crate::common::*;

const HOST: &str = "\
    CREATE TABLE contact (contact_id serial PRIMARY KEY, name text, email text, phone text);\
    ALTER TABLE contact REPLICA IDENTITY FULL;\
    CREATE TABLE person (person_id serial PRIMARY KEY, name text, phone text);";

fn changes(body: &Value) -> Vec<String> {
    body["Changes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_hook_receives_only_updates_of_its_columns() {
    let mut h = Harness::start(HOST, "").await;
    let receiver = Receiver::start().await.unwrap();
    let filtered = h
        .add_hook(
            "contact.changed(name, email)",
            &receiver.url("/filtered"),
            None,
        )
        .await;
    let every = h
        .add_hook("contact.changed", &receiver.url("/every"), None)
        .await;
    h.start_daemon().await;

    h.db.batch_execute(
        "INSERT INTO contact (name, email, phone) VALUES ('Ann', 'ann@example.com', '1');\
         UPDATE contact SET phone = '2';\
         UPDATE contact SET email = 'ann@example.org';\
         UPDATE contact SET phone = '3', name = 'Anne';\
         UPDATE contact SET phone = '4';\
         UPDATE contact SET name = name;",
    )
    .await
    .unwrap();
    h.wait_caught_up("the updates to be delivered").await;

    let every_bodies: Vec<Value> = receiver
        .requests_to("/every")
        .iter()
        .map(|r| r.json())
        .collect();
    assert_eq!(every_bodies.len(), 5, "{every_bodies:?}");
    let filtered_bodies: Vec<Value> = receiver
        .requests_to("/filtered")
        .iter()
        .map(|r| r.json())
        .collect();
    let seen: Vec<Vec<String>> = filtered_bodies.iter().map(changes).collect();
    // The table is REPLICA IDENTITY FULL: Changes is exact, so the
    // phone-only updates and the update that rewrote name with itself are
    // not sent to the filtered hook.
    assert_eq!(
        seen,
        [
            vec!["email".to_owned()],
            vec!["name".into(), "phone".into()]
        ],
        "webhook_id {filtered} received {filtered_bodies:?}; webhook_id {every} received \
         {every_bodies:?}"
    );
    assert!(filtered_bodies
        .iter()
        .all(|b| b["Event"] == "contact.changed" && b["ChangesExact"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_per_hook_and_table_where_a_filter_is_not_exact() {
    let h = Harness::start(HOST, "").await;
    let on_full = h
        .add_hook("contact.changed(email)", "http://127.0.0.1:9/x", None)
        .await;
    let on_default = h
        .add_hook(
            "person.changed(name), contact.*",
            "http://127.0.0.1:9/y",
            None,
        )
        .await;
    let bad = h
        .add_hook("contact.changed(name", "http://127.0.0.1:9/z", None)
        .await;
    let typo = h
        .add_hook(
            "contact.changed(emial), contcat.changed(name)",
            "http://127.0.0.1:9/t",
            None,
        )
        .await;

    let out = h.walhook(&["check"]);
    let report = text(&out);
    assert!(
        report.contains(&format!(
            "webhook_id {on_default}: its column filter on person is not exact for table public.person"
        )),
        "{report}"
    );
    assert!(
        !report.contains(&format!("webhook_id {on_full}: its column filter")),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "webhook_id {bad} is skipped: events: the column filter"
        )) && report.contains("is not closed"),
        "{report}"
    );

    assert!(
        report.contains(&format!(
            "webhook_id {typo}: its column filter on contact names emial that table public.contact \
             does not publish"
        )),
        "{report}"
    );
    assert!(
        report.contains(&format!(
            "webhook_id {typo}: its events name the entity \"contcat\", which no published table has"
        )),
        "{report}"
    );
    assert_eq!(
        report.matches("its column filter on").count(),
        2,
        "one line per problem: {report}"
    );
    assert_eq!(
        report.matches("which no published table has").count(),
        1,
        "{report}"
    );

    // `webhook add` refuses the same text before writing anything.
    let out = h.walhook(&[
        "webhook",
        "add",
        "--name",
        "n",
        "--events",
        "contact.created(name)",
        "--url",
        "http://127.0.0.1:9/w",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("follows an entity's changed event"),
        "{}",
        text(&out)
    );
}
