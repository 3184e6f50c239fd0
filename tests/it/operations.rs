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

/// The metric names an alert rule file queries: the identifiers of its
/// `expr:` lines outside label matchers, ranges and strings that are not
/// functions or PromQL keywords, with a histogram's suffixes taken off.
fn rule_metric_names(rules: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            expr_metric_names(expr, &mut names);
        }
    }
    names
}

/// The metrics the queries (`"expr"`) of a Grafana dashboard's panels
/// name.
fn dashboard_metric_names(dashboard: &str) -> Vec<String> {
    fn walk(value: &serde_json::Value, names: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => expr_metric_names(expr, names),
                        _ => walk(value, names),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let mut names = Vec::new();
    walk(&dashboard, &mut names);
    names
}

/// Add the metric names PromQL `expr` queries to `names`: the words that
/// are neither functions, keywords, label lists nor inside `{...}`,
/// `[...]` or quotes.
fn expr_metric_names(expr: &str, names: &mut Vec<String>) {
    const KEYWORDS: [&str; 11] = [
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
    ];
    // Blank out what is inside {...}, [...] and quotes.
    let mut plain = String::new();
    let mut closing = None;
    for c in expr.chars() {
        match (closing, c) {
            (None, '{') => closing = Some('}'),
            (None, '[') => closing = Some(']'),
            (None, '"') => closing = Some('"'),
            (Some(end), c) if c == end => closing = None,
            (None, c) => plain.push(c),
            _ => {}
        }
        if closing.is_some() {
            plain.push(' ');
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_alphabetic() || chars[i] == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let call = chars[i..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
            // `sum by (...) (...)`: an aggregation with its clause first.
            let next_word: String = chars[i..]
                .iter()
                .skip_while(|c| c.is_whitespace())
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            let aggregation = ["by", "without"].contains(&next_word.as_str());
            if aggregation {
                continue;
            }
            if call && KEYWORDS.contains(&word.as_str()) {
                // `by (webhook_id)` and the like: labels, not metrics.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(&word)
                    .to_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        } else if chars[i].is_ascii_digit() {
            // A number, 1e9 and 0x10 included.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
}

/// The value of the sample `series` (name and labels as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Every metric the shipped alert rules and dashboard query is in
/// `/metrics`, and the slot and hook gauges say what a healthy daemon has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_query_exported_metrics() {
    let rules = include_str!("../../monitoring/walhook-alerts.yml");
    let names = rule_metric_names(rules);
    assert!(
        names.contains(&"walhook_slot_retained_wal_bytes".to_owned())
            && names.contains(&"walhook_hooks_near_parked_limit_total".to_owned())
            && names.contains(&"up".to_owned()),
        "{names:?}"
    );
    let dashboard = dashboard_metric_names(include_str!("../../monitoring/walhook-dashboard.json"));
    assert!(
        dashboard.contains(&"walhook_hook_deliveries_total".to_owned())
            && dashboard.contains(&"walhook_delivery_seconds".to_owned())
            && !dashboard.contains(&"webhook_id".to_owned()),
        "{dashboard:?}"
    );
    let port = free_port();
    let mut h = Harness::start(
        "CREATE TABLE contact (id serial PRIMARY KEY, name text);",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let receiver = Receiver::start().await.unwrap();
    let live = h.add_hook("*", &receiver.url("/live"), None).await;
    // A paused hook parks its events: the parked series exist.
    let paused = h.add_hook("*", &receiver.url("/paused"), None).await;
    h.start_daemon().await;
    let out = h.walhook(&["webhook", "pause", &paused.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('a')")
        .await
        .unwrap();
    receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    h.wait_caught_up("the daemon to park the change").await;

    // The slot is read every 5 s, the parked events counted every 15 s.
    let base = format!("http://127.0.0.1:{port}");
    let parked = format!("walhook_parked_waiting{{webhook_id=\"{paused}\"}}");
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let metrics = loop {
        let (status, metrics) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        if sample(&metrics, &parked) == Some(1.0)
            && sample(&metrics, "walhook_slot_active") == Some(1.0)
        {
            break metrics;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot or parked gauges never came:\n{metrics}\n{}",
            h.daemon_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exported: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in names.iter().chain(&dashboard).filter(|n| *n != "up") {
        assert!(
            exported.iter().any(|e| {
                e == name
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| e.strip_suffix(suffix) == Some(name.as_str()))
            }),
            "the alert rules or the dashboard query {name}, which /metrics lacks:\n{metrics}"
        );
    }

    let retained = sample(&metrics, "walhook_slot_retained_wal_bytes");
    assert!(retained.is_some_and(|b| b >= 0.0), "{metrics}");
    let lag_seconds = sample(&metrics, "walhook_replication_lag_seconds");
    assert!(
        lag_seconds.is_some_and(|s| s.is_finite() && s >= 0.0),
        "{metrics}"
    );
    for (series, value) in [
        ("walhook_slot_wal_status{status=\"reserved\"}", 1.0),
        ("walhook_slot_wal_status{status=\"lost\"}", 0.0),
        ("walhook_slot_active", 1.0),
        ("walhook_ready", 1.0),
        (&format!("walhook_hook_state{{webhook_id=\"{live}\"}}"), 1.0),
        (
            &format!("walhook_hook_in_flight_requests{{webhook_id=\"{live}\"}}"),
            0.0,
        ),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in:\n{metrics}"
        );
    }
    let limit = sample(
        &metrics,
        &format!("walhook_hook_concurrency_limit{{webhook_id=\"{live}\"}}"),
    );
    assert!(limit.is_some_and(|l| l >= 1.0), "{metrics}");
    let age = sample(
        &metrics,
        &format!("walhook_hook_oldest_parked_age_seconds{{webhook_id=\"{paused}\"}}"),
    );
    assert!(age.is_some_and(|a| a >= 0.0), "{metrics}");
    assert!(h.stop_daemon().success());
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

/// `walhook_replication_lag_seconds` counts from the commit of the oldest
/// transaction not yet settled, and is 0 once everything is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_in_seconds_counts_from_the_oldest_unsettled_commit() {
    let port = free_port();
    let mut h = Harness::start(
        "CREATE TABLE contact (id serial PRIMARY KEY, name text);",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let slow = Receiver::start_slow(Duration::from_secs(3)).await.unwrap();
    h.add_hook("*", &slow.url("/slow"), None).await;
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact (name) VALUES ('a')")
        .await
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let lag = |metrics: &str| sample(metrics, "walhook_replication_lag_seconds");
    // While the answer is held, the transaction is unsettled and ages.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(&url).await;
        if lag(&metrics).is_some_and(|s| s >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lag never reached 1 s while the answer was held:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slow.wait_until(WAIT, |r| !r.is_empty()).await;
    h.wait_caught_up("the change to settle").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = get(&url).await;
        if lag(&metrics) == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lag stayed above 0 with everything settled:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
