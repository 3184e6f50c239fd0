//! Running walhook as a DBA does: metrics and health, SIGHUP reloads, and
//! secrets that never reach the log.

use std::time::Duration;

use walhook_lab::receiver::Receiver;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

async fn get(url: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn sighup(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_sighup_reload() {
    let port = free_port();
    let mut h = Harness::start(
        "CREATE TABLE contact (id serial PRIMARY KEY, name text);",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let secret = "s3cr3t-never-logged";
    h.add_hook("*", &receiver.url("/ops"), Some(secret)).await;
    h.start_daemon().await;
    let base = format!("http://127.0.0.1:{port}");

    h.db.batch_execute("INSERT INTO contact (name) VALUES ('a')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    let (status, text) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{text}");
    // The receiver has the request before walhook has read the answer
    // and counted the delivery: wait for the count.
    let deadline = std::time::Instant::now() + WAIT;
    let metrics = loop {
        let (status, metrics) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        if metrics.contains("walhook_deliveries_total{outcome=\"delivered\"} 1") {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery was never counted:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for name in [
        "walhook_changes_decoded_total 1",
        "walhook_events_matched_total 1",
        "walhook_deliveries_total{outcome=\"delivered\"} 1",
        "walhook_delivery_seconds_bucket",
        "walhook_replication_lag_bytes",
        "walhook_in_flight_bytes",
        "walhook_parked_events",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }

    // SIGHUP with a new table mapping: events take the new entity name.
    let pid = h.daemon_pid();
    let original = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        format!("{original}\n[tables.\"public.contact\"]\nentity = \"customer\"\n"),
    )
    .unwrap();
    sighup(pid);
    h.wait_log("config reloaded").await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('b')")
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(
        got[1].json()["Event"],
        "customer.created",
        "log:\n{}",
        h.daemon_log()
    );

    // An invalid file keeps the old config, and says why.
    std::fs::write(&h.config_path, format!("{original}\nnot toml at all [\n")).unwrap();
    sighup(pid);
    h.wait_log("config reload failed, keeping the old config")
        .await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('c')")
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| r.len() >= 3).await;
    assert_eq!(got[2].json()["Event"], "customer.created");
    assert!(h.daemon_running());

    assert!(h.stop_daemon().success());
    let log = h.daemon_log();
    assert!(!log.contains(secret), "the secret reached the log:\n{log}");
    for r in &got {
        let signature = r.header("x-superoffice-signature").unwrap();
        assert!(!log.contains(signature), "a signature reached the log");
    }
}

#[test]
fn metrics_listen_must_be_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, "[metrics]\nlisten = \"0.0.0.0:9187\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .arg("-c")
        .arg(&path)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("metrics.listen"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_run_role_is_enough_and_replicated_changes_can_be_skipped() {
    let mut h = Harness::start(
        "CREATE TABLE t (id int PRIMARY KEY);",
        "[events]\nskip_replicated = true\n",
    )
    .await;
    // The least-privilege run role, exactly as the README shows it.
    h.db.batch_execute(
        "CREATE ROLE walhook_run LOGIN REPLICATION;
         GRANT USAGE ON SCHEMA walhook TO walhook_run;
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO walhook_run;
         GRANT USAGE ON SCHEMA public TO walhook_run;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO walhook_run;",
    )
    .await
    .unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    std::fs::write(
        &h.config_path,
        config.replace("postgres://postgres@", "postgres://walhook_run@"),
    )
    .unwrap();
    let receiver = Receiver::start().await.unwrap();
    let hook = h.add_hook("*", &receiver.url("/o"), None).await;
    h.start_daemon().await;
    // Each statement its own transaction: the origin is the session's at
    // commit time.
    for sql in [
        "SELECT pg_replication_origin_create('upstream')",
        "SELECT pg_replication_origin_session_setup('upstream')",
        "INSERT INTO t VALUES (1)",
        "SELECT pg_replication_origin_session_reset()",
        "INSERT INTO t VALUES (2)",
    ] {
        h.db.batch_execute(sql).await.unwrap();
    }
    h.wait_caught_up("the daemon to pass both inserts").await;
    let keys: Vec<i64> = receiver
        .requests()
        .iter()
        .map(|r| r.json()["PrimaryKey"].as_i64().unwrap())
        .collect();
    assert_eq!(keys, [2], "log:\n{}", h.daemon_log());
    // Statistics were written by the run role.
    let usage = h.wait_usage(hook, |u| u.total_calls >= 1).await;
    assert_eq!(usage.total_calls, 1, "{usage:?}");
    assert!(h.stop_daemon().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_later_are_published_when_the_config_allows_it() {
    let mut h = Harness::start(
        "CREATE TABLE first (id int PRIMARY KEY);",
        "[capture]\nauto_add_tables = true\nauto_add_interval = \"1s\"\n",
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    h.add_hook("*", &receiver.url("/auto"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("CREATE TABLE later (id int PRIMARY KEY)")
        .await
        .unwrap();
    h.wait_log("publication updated with new tables").await;
    h.db.batch_execute("INSERT INTO later VALUES (1)")
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(
        got[0].json()["Event"],
        "later.created",
        "log:\n{}",
        h.daemon_log()
    );
    assert!(h.stop_daemon().success());
}
