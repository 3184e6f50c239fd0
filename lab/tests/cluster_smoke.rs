//! Smoke test for the throwaway PostgreSQL cluster used by `walhook demo`
//! and the other integration tests: it must come up with logical
//! replication enabled, survive restarts with its data, and leave no
//! processes behind.

use std::fs;
use std::path::Path;
use std::process::Command;

use walhook_lab::cluster::{Cluster, ClusterOptions, StopMode};

/// The postmaster's pid, from the first line of `postmaster.pid`.
fn postmaster_pid(data_dir: &Path) -> i32 {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .expect("pid in postmaster.pid")
}

/// The postmaster and its children (checkpointer, walwriter, backends...).
fn server_pids(data_dir: &Path) -> Vec<i32> {
    let postmaster = postmaster_pid(data_dir);
    let mut pids = vec![postmaster];
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<i32>().ok());
        if ppid == Some(postmaster) {
            pids.push(pid);
        }
    }
    pids
}

/// Panics if any of `pids` is still a live postgres process, or if any
/// process still mentions `data_dir` on its command line.
fn assert_gone(pids: &[i32], data_dir: &Path) {
    for pid in pids {
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            let name = status.lines().next().unwrap_or_default();
            let zombie = status.lines().any(|l| l.starts_with("State:\tZ"));
            assert!(
                !name.contains("postgres") || zombie,
                "server process {pid} survived: {name}"
            );
        }
    }
    let needle = data_dir.to_string_lossy().into_owned();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                !cmdline.contains(&needle),
                "process {:?} still uses the data dir: {cmdline}",
                entry.file_name()
            );
        }
    }
}

async fn count(cluster: &Cluster, sql: &str) -> anyhow::Result<i64> {
    let client = cluster.client("postgres").await?;
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn cluster_smoke() -> anyhow::Result<()> {
    let mut cluster = Cluster::start()?;
    assert!(cluster.is_running());
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(
        cluster.url("postgres"),
        format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port())
    );
    assert!(cluster.data_dir().join("PG_VERSION").exists());
    assert!(cluster.bin_dir().join("postgres").exists());

    let client = cluster.client("postgres").await?;
    let wal_level: String = client.query_one("SHOW wal_level", &[]).await?.get(0);
    assert_eq!(wal_level, "logical");

    cluster
        .execute(
            "postgres",
            "CREATE TABLE smoke (id int PRIMARY KEY, note text);
             INSERT INTO smoke VALUES (1, 'kept');",
        )
        .await?;
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('smoke_slot', 'pgoutput')",
            &[],
        )
        .await?;
    drop(client);
    let slots = "SELECT count(*) FROM pg_replication_slots";
    assert_eq!(count(&cluster, slots).await?, 1);

    // Replication connections from 127.0.0.1 are allowed by pg_hba.conf...
    let hba_rules = "SELECT count(*) FROM pg_hba_file_rules \
                     WHERE 'replication' = ANY(database) AND address = '127.0.0.1' \
                     AND auth_method = 'trust'";
    assert!(count(&cluster, hba_rules).await? >= 1);
    // ...and actually work (tokio-postgres cannot speak the replication
    // protocol, psql can run a replication command).
    let psql = cluster.bin_dir().join("psql");
    if psql.exists() {
        let output = Command::new(&psql)
            .arg(format!(
                "host={} port={} user=postgres dbname=postgres replication=database",
                cluster.host(),
                cluster.port()
            ))
            .args(["-XAtc", "IDENTIFY_SYSTEM"])
            .output()?;
        assert!(
            output.status.success(),
            "replication connection failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    } else {
        eprintln!(
            "no psql in {}; skipping replication connection check",
            cluster.bin_dir().display()
        );
    }

    // A fast restart keeps the port, the data and the slot.
    let port = cluster.port();
    cluster.restart(StopMode::Fast)?;
    assert!(cluster.is_running());
    assert_eq!(cluster.port(), port);
    let client = cluster.client("postgres").await?;
    let note: String = client
        .query_one("SELECT note FROM smoke WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(note, "kept");
    drop(client);
    assert_eq!(count(&cluster, slots).await?, 1);

    // Immediate stop, then drop: nothing may survive.
    let data_dir = cluster.data_dir().to_path_buf();
    let pids = server_pids(&data_dir);
    assert!(pids.len() > 1, "expected auxiliary processes: {pids:?}");
    cluster.stop(StopMode::Immediate)?;
    assert!(!cluster.is_running());
    cluster.stop(StopMode::Immediate)?; // stopping twice is fine
    let log = fs::read_to_string(cluster.log_path())?;
    assert!(log.contains("immediate shutdown request"), "log:\n{log}");
    drop(cluster);
    assert_gone(&pids, &data_dir);
    assert!(!data_dir.exists(), "temporary directory was not removed");
    Ok(())
}

#[tokio::test]
async fn drop_kills_a_running_server() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        extra_settings: vec![("wal_sender_timeout".into(), "5s".into())],
        ..Default::default()
    })?;
    let client = cluster.client("postgres").await?;
    let timeout: String = client
        .query_one("SHOW wal_sender_timeout", &[])
        .await?
        .get(0);
    assert_eq!(timeout, "5s");

    // Drop with a client still connected.
    let data_dir = cluster.data_dir().to_path_buf();
    let pids = server_pids(&data_dir);
    drop(cluster);
    assert_gone(&pids, &data_dir);
    assert!(!data_dir.exists(), "temporary directory was not removed");
    assert!(client.query_one("SELECT 1", &[]).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replays_what_the_primary_commits() -> anyhow::Result<()> {
    let mut primary = Cluster::start()?;
    primary
        .execute(
            "postgres",
            "SELECT pg_create_physical_replication_slot('standby1', true); \
             CREATE TABLE before_copy (id int); INSERT INTO before_copy VALUES (1);",
        )
        .await?;
    primary
        .execute(
            "postgres",
            "SELECT pg_create_logical_replication_slot('logical1', 'pgoutput')",
        )
        .await?;
    let standby = tokio::task::block_in_place(|| {
        primary.start_standby("standby1", ClusterOptions::default())
    })?;
    assert_ne!(standby.port(), primary.port());
    assert_eq!(
        count(&standby, "SELECT count(*) FROM before_copy").await?,
        1
    );
    // Slots are the primary's own: the copy starts without them.
    assert_eq!(
        count(&standby, "SELECT count(*) FROM pg_replication_slots").await?,
        0
    );

    // The primary came back and streams to the standby through its slot.
    primary
        .execute("postgres", "INSERT INTO before_copy VALUES (2)")
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&standby, "SELECT count(*) FROM before_copy").await? < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby never replayed the insert"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(
            &primary,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'standby1' AND active"
        )
        .await?,
        1
    );
    Ok(())
}
