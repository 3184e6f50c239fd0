//! `walhook demo`: the whole pipeline on a throwaway PostgreSQL.
//!
//! Starts a cluster from the system's binaries, runs setup, registers a hook
//! pointing at a built-in receiver that verifies both signatures, makes a
//! few changes and prints each delivery. Everything is removed on exit.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;
use walhook_lab::cluster::Cluster;
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::config::Config;
use crate::delivery::signing;
use crate::registry::WebhookState;
use crate::store::webhooks::NewWebhook;
use crate::store::Store;
use crate::{daemon, setup};

const SECRET: &str = "demo-secret-of-the-walhook-demo";

const HOST_SCHEMA: &str = "
CREATE TABLE contact (
    contact_id serial PRIMARY KEY,
    name text NOT NULL,
    department text,
    updated_associate_id integer NOT NULL DEFAULT 0
);
CREATE TABLE person (
    person_id serial PRIMARY KEY,
    contact_id integer REFERENCES contact,
    firstname text,
    lastname text,
    tags text[],
    born date,
    registered_associate_id integer NOT NULL DEFAULT 0
);
";

const CHANGES: &[(&str, &str)] = &[
    (
        "INSERT INTO contact (name, department, updated_associate_id) VALUES ('Acme Ltd', 'Sales', 7)",
        "a new contact",
    ),
    (
        "INSERT INTO person (contact_id, firstname, lastname, tags, born, registered_associate_id) \
         VALUES (1, 'Ada', 'Lovelace', '{vip,\"early adopter\"}', '1815-12-10', 7)",
        "a new person (not matched: the hook wants person.deleted only)",
    ),
    (
        "UPDATE contact SET department = 'Support', updated_associate_id = 9 WHERE contact_id = 1",
        "the contact changed",
    ),
    ("DELETE FROM person WHERE person_id = 1", "the person deleted"),
];

pub async fn run() -> anyhow::Result<()> {
    println!("walhook demo: starting a throwaway PostgreSQL from the system's binaries...");
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .context("starting the throwaway PostgreSQL")??;
    println!(
        "  PostgreSQL on 127.0.0.1:{} (data in {})",
        cluster.port(),
        cluster.data_dir().display()
    );
    cluster
        .execute("postgres", HOST_SCHEMA)
        .await
        .context("creating the demo tables")?;

    let receiver = Receiver::start().await?;
    let config = Config::parse(&format!(
        "[postgres]\nurl = \"{}\"\nstatus_interval = \"500ms\"\n\
         [delivery]\nallow_http = true\nallow_private_targets = true\n",
        cluster.url("postgres")
    ))?;

    let store = Store::connect(&config.connection()?, &config.postgres.schema).await?;
    let plan = setup::plan(&store, &config).await?;
    setup::apply(&store, &config, &plan).await?;
    println!("  walhook setup: schema walhook, publication walhook, slot walhook");

    let hook_url = receiver.url("/hook");
    store
        .insert_webhook(&NewWebhook {
            name: "demo receiver",
            events: "contact.*, person.deleted",
            target_url: &hook_url,
            headers: None,
            properties: None,
            secret: Some(SECRET),
            state: WebhookState::Active,
        })
        .await
        .context("registering the demo webhook")?;
    println!(
        "  webhook 1: events 'contact.*, person.deleted' -> {} (secret {SECRET:?})\n",
        receiver.url("/hook")
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(daemon::run(config, stop_rx, move || {
        let _ = ready_tx.send(());
    }));
    if ready_rx.await.is_err() {
        return match daemon.await {
            Ok(Err(e)) => Err(e.context("the daemon did not start")),
            _ => bail!("the daemon did not start"),
        };
    }

    for (sql, what) in CHANGES {
        println!("SQL> {sql}    -- {what}");
        cluster.execute("postgres", sql).await?;
    }
    let expected = 3;
    println!("\nwaiting for {expected} deliveries...\n");
    let requests = receiver
        .wait_until(Duration::from_secs(30), |r| r.len() >= expected)
        .await;
    for (i, request) in requests.iter().enumerate() {
        show(i + 1, request);
    }

    let _ = stop_tx.send(true);
    match daemon.await {
        Ok(result) => result?,
        Err(e) => bail!("the daemon task failed: {e}"),
    }
    let stats = store.hook_stats().await.context("reading webhook_usage")?;
    if let Some(usage) = stats.iter().find(|h| h.id == 1) {
        println!(
            "webhook_usage for webhook 1: total_calls {}, total_errors {}",
            usage.total_calls, usage.total_errors
        );
    }
    // The session says goodbye (Terminate) from its own task: give it the
    // moment it needs before the server goes, so the demo does not end on
    // a warning about a session cut short.
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(cluster);
    if requests.len() < expected {
        bail!(
            "only {} of {expected} deliveries arrived within 30 s",
            requests.len()
        );
    }
    println!("demo finished; the throwaway PostgreSQL is removed.");
    Ok(())
}

fn show(n: usize, request: &ReceivedRequest) {
    let header = |name| request.header(name).unwrap_or("-");
    let superoffice_ok =
        header("x-superoffice-signature") == signing::superoffice_signature(SECRET, &request.body);
    let standard_ok = header("webhook-signature")
        == signing::standard_webhooks_signature(
            SECRET,
            header("webhook-id"),
            header("webhook-timestamp"),
            &request.body,
        );
    let verdict = |ok| if ok { "valid" } else { "INVALID" };
    println!(
        "delivery {n}: POST {}  X-SuperOffice-Event: {}  X-SuperOffice-EventId: {}",
        request.path,
        header("x-superoffice-event"),
        header("x-superoffice-eventid"),
    );
    println!(
        "  X-SuperOffice-Signature {}, webhook-signature (Standard Webhooks) {}",
        verdict(superoffice_ok),
        verdict(standard_ok)
    );
    let body = serde_json::to_string_pretty(&request.json()).unwrap_or_default();
    for line in body.lines() {
        println!("  {line}");
    }
    println!();
}
