//! Clear errors, without a panic or a retry storm, for what a DBA can get
//! wrong: wal_level, privileges, missing objects, a busy slot, an
//! unreachable server, a wrong password, a bad config.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walhook_lab::cluster::{Cluster, ClusterOptions};

use crate::common::*;

fn run_to_exit(config: &std::path::Path, timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(!err.contains("panicked"), "walhook panicked:\n{err}");
            return (status.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let mut err = String::new();
            use std::io::Read;
            let _ = child.wait();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (None, err);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run` as a role with walhook's grants but without REPLICATION, to its
/// exit (code and stderr).
async fn run_as_role_without_replication(h: &Harness, dir: &Path) -> (Option<i32>, String) {
    h.db.batch_execute(
        "CREATE ROLE norep LOGIN; GRANT USAGE ON SCHEMA walhook TO norep; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO norep; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA walhook TO norep;",
    )
    .await
    .unwrap();
    let url = format!("postgres://norep@127.0.0.1:{}/postgres", h.cluster.port());
    run_to_exit(&write_config(dir, &url), Duration::from_secs(20))
}

fn write_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("walhook.toml");
    std::fs::write(&path, format!("[postgres]\nurl = \"{url}\"\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical_is_named_with_the_fix() {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start_with(ClusterOptions {
            extra_settings: vec![("wal_level".into(), "replica".into())],
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &cluster.url("postgres"));
    let check = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .arg("check")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(3), "{out}");
    assert!(
        out.contains("FAIL  wal_level is replica: set wal_level = logical"),
        "{out}"
    );
    let setup = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .arg("setup")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&setup.stderr);
    assert_eq!(setup.status.code(), Some(1));
    assert!(
        err.contains("nothing was changed")
            && err.contains("wal_level is replica, and a logical replication slot needs logical: set wal_level = logical in postgresql.conf"),
        "{err}"
    );
    // Checked first: no schema or publication left behind without a slot.
    let db = cluster.client("postgres").await.unwrap();
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook') \
                  + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'walhook%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "setup changed things before failing: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_objects_privileges_busy_slot_and_passwords() {
    let h = Harness::start("CREATE TABLE t (id int PRIMARY KEY);", "").await;
    let dir = tempfile::tempdir().unwrap();

    // A role without REPLICATION.
    let (code, err) = run_as_role_without_replication(&h, dir.path()).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("REPLICATION"), "{err}");

    // A wrong password.
    h.db.batch_execute("CREATE ROLE pwuser LOGIN REPLICATION PASSWORD 'right'")
        .await
        .unwrap();
    let hba = h.cluster.data_dir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all pwuser 127.0.0.1/32 scram-sha-256\nhost replication pwuser 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    let loaded: String =
        h.db.query_one("SELECT pg_conf_load_time()::text", &[])
            .await
            .unwrap()
            .get(0);
    h.db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // The postmaster reloads in its own time; a new session then reports
    // the new load time.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let session = h.cluster.client("postgres").await.unwrap();
        let reloaded: bool = session
            .query_one(
                "SELECT pg_conf_load_time() > $1::text::timestamptz",
                &[&loaded],
            )
            .await
            .unwrap()
            .get(0);
        if reloaded {
            break;
        }
        assert!(Instant::now() < deadline, "pg_hba.conf was never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!(
        "postgres://pwuser:wrong@127.0.0.1:{}/postgres",
        h.cluster.port()
    );
    let (code, err) = run_to_exit(&write_config(dir.path(), &url), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("password authentication failed"), "{err}");

    // The slot in use by another client: walhook waits and says why.
    let url = h.cluster.url("postgres");
    match pg_recvlogical(h.cluster.bin_dir()) {
        Some(program) => slot_in_use_is_waited_for(&h, dir.path(), &url, &program).await,
        None => eprintln!(
            "errors: a slot in use by another client NOT CHECKED: no pg_recvlogical beside {} \
             or under /usr/lib/postgresql",
            h.cluster.bin_dir().display()
        ),
    }

    // Missing publication, then missing slot.
    h.db.batch_execute("DROP PUBLICATION walhook")
        .await
        .unwrap();
    let (code, err) = run_to_exit(&write_config(dir.path(), &url), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("walhook setup"), "{err}");
    h.db.batch_execute("SELECT pg_drop_replication_slot('walhook')")
        .await
        .unwrap();
    let (code, err) = run_to_exit(&write_config(dir.path(), &url), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("replication slot \"walhook\" does not exist: run `walhook setup`"),
        "{err}"
    );
}

/// A slot held by `pg_recvlogical`: walhook keeps waiting, backing off.
async fn slot_in_use_is_waited_for(h: &Harness, dir: &Path, url: &str, program: &Path) {
    let mut recvlogical = Command::new(program)
        .args(["-d", url, "-S", "walhook", "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=walhook"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    h.wait_slot_active(Duration::from_secs(10)).await;
    let (code, err) = run_to_exit(&write_config(dir, url), Duration::from_secs(4));
    let _ = recvlogical.kill();
    let _ = recvlogical.wait();
    assert_eq!(code, None, "walhook keeps waiting for the slot:\n{err}");
    assert!(err.contains("is active for PID"), "{err}");
    let attempts = err.matches("reconnecting in").count();
    assert!(
        (1..=3).contains(&attempts),
        "backs off, no retry storm ({attempts} tries in 4 s):\n{err}"
    );
}

/// `pg_recvlogical` of the server under test, else of any installed
/// version (a client streams from newer servers too); the npm server
/// builds have none.
fn pg_recvlogical(bin_dir: &Path) -> Option<PathBuf> {
    let beside = bin_dir.join("pg_recvlogical");
    if beside.exists() {
        return Some(beside);
    }
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin/pg_recvlogical")))
        .filter(|p| p.exists())
        .collect();
    installed.sort();
    installed.pop()
}

#[test]
fn unreachable_server_is_retried_with_backoff() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("postgres://walhook@127.0.0.1:{port}/db"),
    );
    let (code, err) = run_to_exit(&config, Duration::from_secs(4));
    assert_eq!(code, None, "keeps trying:\n{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    let attempts = err.matches("reconnecting in").count();
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} attempts in 4 s:\n{err}"
    );
}

#[test]
fn a_bad_config_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\nmax_consecutive_erors = 3\n").unwrap();
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("run")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("max_consecutive_erors"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_reported_loudly_and_never_recreated() {
    let h = Harness::start_with(
        vec![("max_slot_wal_keep_size".into(), "1MB".into())],
        "CREATE TABLE t (id int PRIMARY KEY, pad text);",
        "",
    )
    .await;
    // Move the WAL on past what the server keeps for the slot.
    for _ in 0..10 {
        h.db.batch_execute(
            "INSERT INTO t SELECT i, repeat('x', 500) FROM generate_series((SELECT coalesce(max(id), 0) + 1 FROM t), (SELECT coalesce(max(id), 0) + 3000 FROM t)) i;
             SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await
        .unwrap();
        let status: Option<String> =
            h.db.query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
    }
    assert_lost_slot_named(&h, "(wal_removed)", "raise max_slot_wal_keep_size");
    let setup = h.walhook(&["setup"]);
    assert_eq!(
        setup.status.code(),
        Some(1),
        "setup refuses to paper over a lost slot"
    );
    let slots: i64 =
        h.db.query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(slots, 1, "the lost slot is not re-created or replaced");
}

/// `run`, `status` and `check` each name the cause of the lost slot and
/// its fix.
fn assert_lost_slot_named(h: &Harness, cause: &str, fix: &str) {
    let run = h.walhook(&["run"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(
        err.contains("invalidated") && err.contains("never re-creates"),
        "{err}"
    );
    assert!(err.contains(cause) && err.contains(fix), "run: {err}");
    let status = h.walhook(&["status"]);
    assert_eq!(status.status.code(), Some(4), "{}", text(&status));
    assert!(
        text(&status).contains(cause) && text(&status).contains(fix),
        "status: {}",
        text(&status)
    );
    let check = h.walhook(&["check"]);
    assert_eq!(check.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains(&format!(
            "FAIL  replication slot \"walhook\" was invalidated by the server {cause}"
        )) && stdout.contains(fix),
        "check: {stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_left_idle_past_the_timeout_is_named_with_the_fix() {
    let h = Harness::start("CREATE TABLE t (id int PRIMARY KEY);", "").await;
    let version: i32 =
        h.db.query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
    if version < 180000 {
        eprintln!(
            "errors: idle_timeout SKIPPED: PostgreSQL {} has no idle_replication_slot_timeout \
             (it came with 18)",
            version / 10000
        );
        return;
    }
    h.db.batch_execute("ALTER SYSTEM SET idle_replication_slot_timeout = '1s'")
        .await
        .unwrap();
    h.db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let check = h.walhook(&["check"]);
    assert!(
        text(&check).contains("WARN  idle_replication_slot_timeout is 1s"),
        "{}",
        text(&check)
    );
    // The server invalidates an idle slot at a checkpoint once the timeout
    // has passed.
    h.wait_for(
        "the idle slot to be invalidated",
        Duration::from_secs(30),
        |db| {
            Box::pin(async move {
                db.batch_execute("CHECKPOINT").await.unwrap();
                db.query_one(
                    "SELECT invalidation_reason IS NOT DISTINCT FROM 'idle_timeout' \
                   FROM pg_replication_slots WHERE slot_name = 'walhook'",
                    &[],
                )
                .await
                .unwrap()
                .get(0)
            })
        },
    )
    .await;
    assert_lost_slot_named(&h, "(idle_timeout)", "idle_replication_slot_timeout");
}

/// A server whose `lc_messages` is not English says the same things in
/// other words: walhook's hints are chosen by SQLSTATE, so they come the
/// same. The server here speaks German (`LANGUAGE=de`); a build without
/// German messages says so and the check is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_are_the_same_from_a_server_speaking_german() {
    let options = ClusterOptions {
        extra_settings: vec![("lc_messages".into(), "C.UTF-8".into())],
        server_env: vec![("LANGUAGE".into(), "de".into())],
    };
    let h = Harness::start_with_options(options, "CREATE TABLE t (id int PRIMARY KEY);", "").await;
    let e =
        h.db.batch_execute("SELECT * FROM nonexistent")
            .await
            .unwrap_err();
    let said = e
        .as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_default();
    if !said.contains("existiert nicht") {
        eprintln!(
            "errors: hints from a German-speaking server NOT CHECKED: this server build has no \
             German messages (it said {said:?})"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // A role without REPLICATION (42501).
    let (code, err) = run_as_role_without_replication(&h, dir.path()).await;
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the role needs the REPLICATION attribute: ALTER ROLE ... REPLICATION"),
        "{err}"
    );

    // The publication dropped while streaming (42704 from the stream,
    // when the next change is decoded).
    let url = h.cluster.url("postgres");
    let config = write_config(dir.path(), &url);
    let daemon = tokio::task::spawn_blocking(move || run_to_exit(&config, Duration::from_secs(30)));
    h.wait_slot_active(Duration::from_secs(20)).await;
    h.db.batch_execute("DROP PUBLICATION walhook; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let (code, err) = daemon.await.unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "(publication [\"walhook\", \"walhook_keyless\"] is missing: run `walhook setup`)"
        ),
        "{err}"
    );
    assert!(
        err.contains("existiert nicht"),
        "the server's own words stay: {err}"
    );
}

/// With no `postgres.url` (an empty config file), the standard PG*
/// variables say where to connect, as the README says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pg_variables_apply_without_a_url() {
    let h = Harness::start("CREATE TABLE t (id int PRIMARY KEY);", "").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walhook.toml");
    std::fs::write(&config, "").unwrap();
    let port = h.cluster.port().to_string();
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&config)
        .arg("check")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &port)
        .env("PGUSER", "postgres")
        .env("PGDATABASE", "postgres")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "OK    connected to postgres@127.0.0.1:{port}/postgres"
        )),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A role that may stream but lacks walhook's grants is told which GRANTs
/// it needs before it waits as a standby or fails on a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_role_without_walhooks_grants_is_told_which() {
    let h = Harness::start("CREATE TABLE t (id int PRIMARY KEY);", "").await;
    h.db.batch_execute("CREATE ROLE nogrants LOGIN REPLICATION")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://nogrants@127.0.0.1:{}/postgres",
        h.cluster.port()
    );
    let (code, err) = run_to_exit(&write_config(dir.path(), &url), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("role \"nogrants\" (postgres.url) lacks privileges on walhook's schema")
            && err.contains("GRANT USAGE ON SCHEMA \"walhook\" TO \"nogrants\"")
            && err.contains(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"walhook\" TO \"nogrants\""
            ),
        "{err}"
    );
    // status, as that role, says the same instead of the first table that
    // failed.
    let out = std::process::Command::new(crate::common::BIN)
        .arg("-c")
        .arg(dir.path().join("walhook.toml"))
        .arg("status")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let problems: Vec<&str> = said.lines().filter(|l| l.starts_with("PROBLEM")).collect();
    assert_eq!(problems.len(), 1, "{said}");
    assert!(
        problems[0].contains("role \"nogrants\" (postgres.url) lacks privileges")
            && problems[0].contains("GRANT USAGE ON SCHEMA \"walhook\" TO \"nogrants\""),
        "{said}"
    );
    assert!(
        said.contains("could not be read (see PROBLEM below)") && !said.contains("no hooks in"),
        "{said}"
    );
}
