//! One walhook per database, as walhook@.service runs them: two instances
//! against two databases of one cluster, each with the config a DBA
//! writes for /etc/walhook/<db>.toml (its own slot, its own metrics port or
//! none), each delivering its own database's changes only. Then a third
//! config that keeps the first one's slot name and metrics port: `check`
//! fails naming the database that owns the slot, and `setup` refuses it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use walhook_lab::cluster::Cluster;
use walhook_lab::receiver::{ReceivedRequest, Receiver};

use crate::common::{free_port, stdout, stop_child, text, BIN};

/// The same table in both databases, so only the database tells their
/// changes apart.
const HOST_SQL: &str = "CREATE TABLE item (item_id integer PRIMARY KEY, name text);";

/// `walhook ARGS` with `config`, as the instance `instance` (the
/// environment walhook@.service gives it).
fn walhook(instance: &str, config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .env("WALHOOK_INSTANCE", instance)
        .output()
        .expect("walhook runs")
}

async fn walhook_async(instance: &str, config: &Path, args: &[&str]) -> Output {
    let (instance, config) = (instance.to_owned(), config.to_owned());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        walhook(&instance, &config, &args)
    })
    .await
    .unwrap()
}

/// A config as a DBA writes it for walhook@<db>: its database, its own
/// slot, and a metrics port if given.
fn write_config(dir: &Path, name: &str, url: &str, slot: &str, metrics: Option<u16>) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let metrics = metrics
        .map(|port| format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "[postgres]\nurl = \"{url}\"\nslot = \"{slot}\"\nstatus_interval = \"200ms\"\n\
             [delivery]\nallow_http = true\nallow_private_targets = true\n{metrics}"
        ),
    )
    .unwrap();
    path
}

/// The daemon of one instance, its log in `log`.
fn start_daemon(instance: &str, config: &Path, log: &Path) -> Child {
    Command::new(BIN)
        .arg("-c")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "info")
        .env("WALHOOK_INSTANCE", instance)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("walhook run starts")
}

/// Wait until `slot` is being streamed from.
async fn wait_streaming(db: &tokio_postgres::Client, slot: &str, log: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active: bool = db
            .query_one(
                "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots \
                  WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        if active {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot {slot} never streamed; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The item names a receiver got, sorted.
fn names(got: &[ReceivedRequest]) -> Vec<String> {
    let mut names: Vec<String> = got
        .iter()
        .map(|r| {
            r.json()["FieldValues"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_two_databases_deliver_their_own_changes_and_check_names_a_shared_slot() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("throwaway PostgreSQL starts");
    for db in ["crm", "billing"] {
        cluster
            .execute("postgres", &format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        cluster.execute(db, HOST_SQL).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let crm = write_config(
        dir.path(),
        "crm",
        &cluster.url("crm"),
        "walhook_crm",
        Some(metrics_port),
    );
    let billing = write_config(
        dir.path(),
        "billing",
        &cluster.url("billing"),
        "walhook_billing",
        None,
    );

    // check names the instance first, then finds nothing against it.
    let out = walhook_async("crm", &crm, &["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = stdout(&out);
    assert_eq!(
        said.lines().next(),
        Some(format!("instance crm ({})", crm.display()).as_str()),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "OK    metrics.listen 127.0.0.1:{metrics_port} is free"
        )),
        "{said}"
    );

    let receivers = [
        Receiver::start().await.unwrap(),
        Receiver::start().await.unwrap(),
    ];
    let instances = [
        ("crm", &crm, "walhook_crm"),
        ("billing", &billing, "walhook_billing"),
    ];
    for ((name, config, _), receiver) in instances.iter().zip(&receivers) {
        let out = walhook_async(name, config, &["setup"]).await;
        assert!(out.status.success(), "{name}: {}", text(&out));
        let out = walhook_async(
            name,
            config,
            &[
                "webhook",
                "add",
                "--name",
                name,
                "--events",
                "item.*",
                "--url",
                &receiver.url("/hook"),
            ],
        )
        .await;
        assert!(out.status.success(), "{name}: {}", text(&out));
    }

    let admin = cluster.client("postgres").await.unwrap();
    let mut daemons = Vec::new();
    let mut logs = Vec::new();
    for (name, config, slot) in instances {
        let log = dir.path().join(format!("{name}.log"));
        daemons.push(start_daemon(name, config, &log));
        wait_streaming(&admin, slot, &log).await;
        logs.push(log);
    }
    let log_text = || {
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    for db in ["crm", "billing"] {
        cluster
            .execute(
                db,
                &format!("INSERT INTO item VALUES (1, '{db} one'), (2, '{db} two')"),
            )
            .await
            .unwrap();
    }
    for (db, receiver) in ["crm", "billing"].iter().zip(&receivers) {
        let got = receiver
            .wait_until(Duration::from_secs(30), |r| r.len() >= 2)
            .await;
        assert_eq!(
            names(&got),
            [format!("{db} one"), format!("{db} two")],
            "{db}'s receiver gets its own database's changes; logs:\n{}",
            log_text()
        );
    }

    // status names the instance too, but not in its JSON.
    let out = walhook_async("billing", &billing, &["status"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        stdout(&out).lines().next(),
        Some(format!("instance billing ({})", billing.display()).as_str()),
        "{}",
        text(&out)
    );
    let out = walhook_async("billing", &billing, &["status", "--json"]).await;
    assert!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok(),
        "{}",
        text(&out)
    );

    // A third config for billing that kept crm's slot name and metrics
    // port, as a copied file would: check fails naming crm's database and
    // the fix, and warns about the port crm's daemon holds.
    let clash = write_config(
        dir.path(),
        "billing-copy",
        &cluster.url("billing"),
        "walhook_crm",
        Some(metrics_port),
    );
    let out = walhook_async("billing-copy", &clash, &["check"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains(
            "FAIL  replication slot \"walhook_crm\" belongs to database \"crm\", not \"billing\""
        ) && said.contains("slot = \"walhook_billing\""),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "WARN  metrics.listen 127.0.0.1:{metrics_port} is already in use by another process"
        )),
        "{said}"
    );
    // Its running daemon holds crm's own port: no warning there.
    let out = walhook_async("crm", &crm, &["check"]).await;
    assert!(
        stdout(&out).contains("is in use, by this config's running daemon"),
        "{}",
        text(&out)
    );
    let out = walhook_async("billing-copy", &clash, &["setup"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to database \"crm\""),
        "{}",
        text(&out)
    );

    // Nothing more arrived at either receiver: each got its own two.
    for (receiver, db) in receivers.iter().zip(["crm", "billing"]) {
        assert_eq!(receiver.requests().len(), 2, "{db}: {}", log_text());
    }
    for daemon in daemons {
        assert!(stop_child(daemon).await.success(), "{}", log_text());
    }
}
