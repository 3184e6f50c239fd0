//! The DBA's commands (`status`, `webhook ...`, `teardown`) through
//! walhook's real binary, against a throwaway PostgreSQL.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};
use walhook_lab::receiver::Receiver;

use crate::common::*;

const HOST: &str = "CREATE TABLE contact (contact_id serial PRIMARY KEY, name text);";

/// The harness's config with http:// and private targets refused.
fn strict_config(h: &Harness) -> PathBuf {
    let text = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("allow_http = true", "allow_http = false")
        .replace(
            "allow_private_targets = true",
            "allow_private_targets = false",
        );
    let path = h.dir.path().join("strict.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn count(h: &Harness, sql: &str) -> i64 {
    h.db.query_one(sql, &[]).await.unwrap().get(0)
}

/// Park an event for `webhook_id` by SQL, filling whatever NOT NULL
/// columns `delivery` has without a default (the table grows columns),
/// with a payload of its own.
async fn park(h: &Harness, webhook_id: i32) {
    let index = count(h, "SELECT count(*) FROM walhook.delivery").await;
    h.db.batch_execute(&format!(
        "INSERT INTO walhook.delivery_payload \
                (commit_lsn, change_index, event, ordering_key, head, fields, tail) \
         VALUES ('0/16B3748', {index}, 'contact.created', 'x', '', '', '')"
    ))
    .await
    .unwrap();
    let columns =
        h.db.query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
              WHERE table_schema = 'walhook' AND table_name = 'delivery' \
                AND is_nullable = 'NO' AND column_default IS NULL \
                AND is_identity = 'NO' AND is_generated = 'NEVER' \
              ORDER BY ordinal_position",
            &[],
        )
        .await
        .unwrap();
    // A whole body, since the hook's parts (webhook_name) are nullable.
    let mut names = vec!["\"body\"".to_string()];
    let mut values = vec!["'{\"Event\":\"contact.created\"}'".to_string()];
    for row in columns {
        let name: String = row.get(0);
        let data_type: String = row.get(1);
        let value = match (name.as_str(), data_type.as_str()) {
            ("webhook_id", _) => webhook_id.to_string(),
            ("event", _) => "'contact.created'".into(),
            ("body", _) => continue,
            ("change_index", _) => index.to_string(),
            (_, "uuid") => "gen_random_uuid()".into(),
            (_, "pg_lsn") => "'0/16B3748'".into(),
            (_, "integer" | "bigint" | "smallint" | "numeric") => "0".into(),
            (_, "jsonb" | "json") => "'{}'".into(),
            (_, "boolean") => "false".into(),
            (_, t) if t.starts_with("timestamp") => "now()".into(),
            _ => "'x'".into(),
        };
        names.push(format!("\"{name}\""));
        values.push(value);
    }
    h.db.batch_execute(&format!(
        "INSERT INTO walhook.delivery ({}) VALUES ({})",
        names.join(", "),
        values.join(", ")
    ))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_add_validates_and_list_never_shows_secrets() {
    let h = Harness::start(HOST, "").await;
    let secret_file = h.dir.path().join("secret");
    std::fs::write(&secret_file, "s3cret-from-file\n").unwrap();
    let out = h.walhook(&[
        "webhook",
        "add",
        "--name",
        "CRM sync",
        "--events",
        "contact.*, *.deleted",
        "--url",
        "https://hooks.example.com/crm",
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--header",
        "X-Tenant=tenant-token-value",
        "--properties",
        "{\"region\": \"north\"}",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id: i32 = stdout(&out)
        .trim()
        .parse()
        .expect("stdout is the webhook_id");
    let row =
        h.db.query_one(
            "SELECT name::text, events::text, target_url::text, secret::text, headers, \
                    properties, state FROM walhook.webhook WHERE webhook_id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "CRM sync");
    assert_eq!(row.get::<_, String>(1), "contact.*, *.deleted");
    assert_eq!(row.get::<_, String>(2), "https://hooks.example.com/crm");
    assert_eq!(row.get::<_, String>(3), "s3cret-from-file");
    assert_eq!(
        row.get::<_, Value>(4),
        json!({"X-Tenant": "tenant-token-value"})
    );
    assert_eq!(row.get::<_, Value>(5), json!({"region": "north"}));
    assert_eq!(row.get::<_, i16>(6), 1);

    let out = h.walhook(&[
        "webhook",
        "add",
        "--name",
        "unsigned",
        "--events",
        "*",
        "--url",
        "https://other.example.com/",
        "--state",
        "Stopped",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let unsigned: i32 = stdout(&out).trim().parse().unwrap();

    let out = h.walhook(&["webhook", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = stdout(&out);
    for wanted in [
        "CRM sync",
        "https://hooks.example.com/crm",
        "contact.*, *.deleted",
        "Active (1)",
        "Stopped (2)",
        "X-Tenant",
        "SECRET",
    ] {
        assert!(list.contains(wanted), "{wanted:?} missing:\n{list}");
    }
    assert!(!list.contains("s3cret"), "the secret is printed:\n{list}");
    assert!(
        !list.contains("tenant-token-value"),
        "a header value is printed:\n{list}"
    );
    let line = |id: i32| {
        list.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no line for {id}:\n{list}"))
            .to_owned()
    };
    assert!(line(id).contains(" yes "), "{list}");
    assert!(line(unsigned).contains(" no "), "{list}");

    let out = h.walhook(&["webhook", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stdout(&out).contains("s3cret"));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hooks = doc.as_array().unwrap();
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[0]["webhook_id"], id);
    assert_eq!(hooks[0]["secret"], true);
    assert_eq!(hooks[0]["state"], 1);
    assert_eq!(hooks[0]["headers"], json!(["X-Tenant"]));
    assert_eq!(hooks[1]["secret"], false);
    assert_eq!(hooks[1]["state"], 2);

    // Refusals: a clear message naming the problem, exit 2, no row.
    let refused = |out: &Output, wanted: &[&str]| {
        assert_eq!(out.status.code(), Some(2), "{}", text(out));
        let err = stderr(out);
        for w in wanted {
            assert!(err.contains(w), "{w:?} missing: {}", text(out));
        }
    };
    let add = |config: &Path, url: &str, extra: &[&str]| {
        let mut args = vec![
            "webhook", "add", "--name", "bad", "--events", "*", "--url", url,
        ];
        args.extend_from_slice(extra);
        walhook_with(config, &args)
    };
    let cfg = h.config_path.clone();
    refused(&add(&cfg, "not a url", &[]), &["target_url", "not a url"]);
    refused(
        &add(&cfg, "https://x.example/", &["--properties", "[1, 2]"]),
        &["properties is not a JSON object"],
    );
    refused(
        &add(&cfg, "https://x.example/", &["--properties", "{oops"]),
        &["properties is not valid JSON"],
    );
    refused(
        &add(&cfg, "https://x.example/", &["--header", "no-equals-sign"]),
        &["--header", "NAME=VALUE"],
    );
    refused(
        &add(
            &cfg,
            "https://x.example/",
            &["--secret-file", "/nonexistent/s"],
        ),
        &["/nonexistent/s"],
    );
    let out = walhook_with(
        &cfg,
        &[
            "webhook",
            "add",
            "--name",
            "bad",
            "--events",
            " , ",
            "--url",
            "https://x.example/",
        ],
    );
    refused(&out, &["events is empty"]);
    let strict = strict_config(&h);
    refused(
        &add(&strict, "http://hooks.example.com/x", &[]),
        &["http://hooks.example.com/x", "allow_http"],
    );
    refused(
        &add(&strict, "https://127.0.0.1/x", &[]),
        &["127.0.0.1", "allow_private_targets"],
    );
    assert_eq!(count(&h, "SELECT count(*) FROM walhook.webhook").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_state_and_remove() {
    let h = Harness::start(HOST, "").await;
    let id = h
        .add_hook("contact.*", "https://hooks.example.com/x", None)
        .await;
    let id_text = id.to_string();
    let state_sql = format!("SELECT state::bigint FROM walhook.webhook WHERE webhook_id = {id}");

    let out = h.walhook(&["webhook", "set-state", &id_text, "stopped"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("Active (1) -> Stopped (2)"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&h, &state_sql).await, 2);
    let out = h.walhook(&["webhook", "set-state", &id_text, "TooManyErrors"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&h, &state_sql).await, 3);
    let out = h.walhook(&["webhook", "set-state", &id_text, "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&h, &state_sql).await, 1);
    let out = h.walhook(&["webhook", "set-state", &id_text, "ACTIVE"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("already"), "{}", text(&out));

    let out = h.walhook(&["webhook", "set-state", "9999", "stopped"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("webhook_id 9999 does not exist"),
        "{}",
        text(&out)
    );
    let out = h.walhook(&["webhook", "set-state", &id_text, "paused"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("paused"), "{}", text(&out));
    assert_eq!(count(&h, &state_sql).await, 1);

    // remove keeps statistics and parked events unless --purge.
    h.db.execute(
        "INSERT INTO walhook.webhook_usage (webhook_id, total_calls) VALUES ($1, 5)",
        &[&id],
    )
    .await
    .unwrap();
    park(&h, id).await;
    let out = h.walhook(&["webhook", "remove", &id_text]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("--purge"), "{}", text(&out));
    let leftovers = format!(
        "SELECT (SELECT count(*) FROM walhook.webhook WHERE webhook_id = {id}) * 100 \
              + (SELECT count(*) FROM walhook.webhook_usage WHERE webhook_id = {id}) * 10 \
              + (SELECT count(*) FROM walhook.delivery WHERE webhook_id = {id})"
    );
    assert_eq!(count(&h, &leftovers).await, 11);
    let out = h.walhook(&["webhook", "remove", &id_text]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("webhook_id {id} does not exist")),
        "{}",
        text(&out)
    );
    let out = h.walhook(&["webhook", "remove", &id_text, "--purge"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&h, &leftovers).await, 0);
    let out = h.walhook(&["webhook", "remove", &id_text, "--purge"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_slot_and_hook_counts() {
    let mut h = Harness::start(HOST, "").await;
    let busy = h
        .add_hook(
            "contact.*",
            "https://hooks.example.com/busy",
            Some("k-0123456789abcdef"),
        )
        .await;
    let quiet = h
        .add_hook("*", "https://hooks.example.com/quiet", None)
        .await;

    // Attached: the walsender is named.
    h.start_daemon().await;
    let out = h.walhook(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["slot"]["active"], true, "{doc}");
    assert!(doc["slot"]["active_pid"].is_number(), "{doc}");
    assert!(
        doc["slot"]["time_lag_source"]
            .as_str()
            .unwrap()
            .contains("walsender pid")
            || doc["slot"]["time_lag_source"]
                .as_str()
                .unwrap()
                .starts_with("caught up"),
        "{doc}"
    );
    assert!(h.stop_daemon().success());
    h.wait_slot_released().await;

    h.db.execute(
        "INSERT INTO walhook.webhook_usage (webhook_id, total_calls, total_errors, \
                consecutive_errors, last_error, last_call, last_success, last_failure) \
         VALUES ($1, 10, 3, 2, \
                 E'HTTP 500 Internal Server Error\\ncontent-type: text/plain\\n\\nboom', \
                 now(), now() - interval '1 hour', now())",
        &[&busy],
    )
    .await
    .unwrap();
    park(&h, busy).await;
    park(&h, busy).await;

    let out = h.walhook(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let slot = &doc["slot"];
    assert_eq!(slot["name"], "walhook");
    assert_eq!(slot["exists"], true);
    assert_eq!(slot["active"], false);
    assert_eq!(slot["plugin"], "pgoutput");
    assert!(
        matches!(slot["wal_status"].as_str(), Some("reserved" | "extended")),
        "{doc}"
    );
    assert!(slot["lag_bytes"].as_i64().unwrap() >= 0, "{doc}");
    assert!(slot["time_lag_seconds"].is_null(), "{doc}");
    assert!(
        slot["time_lag_source"]
            .as_str()
            .unwrap()
            .contains("no walhook is attached"),
        "{doc}"
    );
    assert_eq!(doc["parked_total"], 2);
    assert_eq!(doc["problems"], json!([]));
    assert_eq!(
        doc["publications"],
        json!([{"name": "walhook", "exists": true}, {"name": "walhook_keyless", "exists": true}])
    );
    let hooks = doc["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{doc}");
    let by_id = |id: i32| {
        hooks
            .iter()
            .find(|h| h["webhook_id"] == id)
            .unwrap_or_else(|| panic!("no hook {id}: {doc}"))
    };
    let b = by_id(busy);
    assert_eq!(b["state"], 1);
    assert_eq!(b["state_name"], "Active (1)");
    assert_eq!(b["total_calls"], 10);
    assert_eq!(b["total_errors"], 3);
    assert_eq!(b["consecutive_errors"], 2);
    assert_eq!(b["parked"], 2);
    assert_eq!(b["last_error"], "HTTP 500 Internal Server Error");
    assert!(b["last_success"].as_str().unwrap().ends_with('Z'));
    let q = by_id(quiet);
    assert_eq!(q["total_calls"], 0);
    assert_eq!(q["parked"], 0);
    assert!(q["last_success"].is_null());

    let out = h.walhook(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let human = stdout(&out);
    for wanted in [
        "slot",
        "walhook (plugin pgoutput",
        "attached",
        "lag",
        "LAST ERROR",
        "HTTP 500 Internal Server Error",
        "Active (1)",
    ] {
        assert!(human.contains(wanted), "{wanted:?} missing:\n{human}");
    }
    let busy_line = human
        .lines()
        .find(|l| l.starts_with(&format!("{busy} ")))
        .unwrap_or_else(|| panic!("no line for {busy}:\n{human}"));
    let cells: Vec<&str> = busy_line.split_whitespace().collect();
    // ID NAME(test hook) STATE(Active (1)) CALLS ERRORS CONSECUTIVE ...
    assert_eq!(
        &cells[..8],
        [
            &*busy.to_string(),
            "test",
            "hook",
            "Active",
            "(1)",
            "10",
            "3",
            "2"
        ]
    );
    assert!(
        !human.contains("boom"),
        "only the first line of last_error:\n{human}"
    );
    assert!(
        human.contains("the slot's position"),
        "confirmed says what it is:\n{human}"
    );
    assert!(
        human.contains("recorded by walhook: every event before it delivered, parked or dropped"),
        "settled says what it is:\n{human}"
    );

    // A long error keeps its cause, at the end of its chain.
    h.db.execute(
        "UPDATE walhook.webhook_usage SET last_error = \
           'sending to https://hooks.example.com/busy: client error (Connect): tcp connect error: \
            Connection refused (os error 111)' WHERE webhook_id = $1",
        &[&busy],
    )
    .await
    .unwrap();
    let human = stdout(&h.walhook(&["status"]));
    assert!(
        human.contains("Connection refused (os error 111)"),
        "the cause was cut:\n{human}"
    );

    // A role that cannot read the hooks is told so, not that there are none.
    h.db.batch_execute("CREATE ROLE outsider LOGIN")
        .await
        .unwrap();
    let config = std::fs::read_to_string(&h.config_path)
        .unwrap()
        .replace("postgres@", "outsider@");
    let outsider = h.dir.path().join("outsider.toml");
    std::fs::write(&outsider, config).unwrap();
    let out = walhook_with(&outsider, &["status"]);
    let human = stdout(&out);
    assert!(!human.contains("no hooks in"), "{human}");
    assert!(
        human.contains("could not be read (see PROBLEM below)") && human.contains("PROBLEM: "),
        "{human}\n{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_test_sends_a_signed_test_event() {
    let h = Harness::start(HOST, "").await;
    let receiver = Receiver::start().await.unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let id = h
        .add_hook("contact.*", &receiver.url("/hook"), Some(secret))
        .await;
    h.db.execute(
        "UPDATE walhook.webhook SET properties = '{\"region\": \"north\"}' WHERE webhook_id = $1",
        &[&id],
    )
    .await
    .unwrap();

    let out = walhook_async(&h.config_path, &["webhook", "test", &id.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = stdout(&out);
    assert!(printed.contains("200 OK"), "{printed}");
    assert!(printed.contains("elapsed:"), "{printed}");
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.path, "/hook");
    assert_eq!(r.header("x-hook-test"), Some("true"));
    assert_eq!(r.header("x-superoffice-event"), Some("test"));
    assert_eq!(r.header("x-superoffice-retry"), Some("0"));
    let body = r.json();
    assert_eq!(body["Event"], "test");
    assert_eq!(body["Entity"], "test");
    assert_eq!(body["PrimaryKey"], 0);
    assert_eq!(body["WebhookName"], "test hook");
    assert_eq!(body["ContextIdentifier"], "Default");
    assert_eq!(body["Properties"], json!({"region": "north"}));
    let event_id = body["EventId"].as_str().unwrap();
    assert_eq!(
        uuid::Uuid::parse_str(event_id).unwrap().get_version_num(),
        4
    );
    assert_eq!(r.header("x-superoffice-eventid"), Some(event_id));
    assert_eq!(r.header("webhook-id"), Some(event_id));
    assert_eq!(
        r.header("x-superoffice-signature").unwrap(),
        expected_superoffice_signature(secret, &r.body)
    );
    assert!(verify_standard_webhooks(
        secret,
        event_id,
        r.header("webhook-timestamp").unwrap(),
        &r.body,
        r.header("webhook-signature").unwrap()
    ));
    // The test event never counts in the hook's statistics.
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.webhook_usage").await,
        0
    );

    // A failing target: exit 1, the status printed.
    let failing = Receiver::start_with(|_, _| 500).await.unwrap();
    let bad = h.add_hook("*", &failing.url("/down"), None).await;
    let out = walhook_async(&h.config_path, &["webhook", "test", &bad.to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stdout(&out).contains("500 Internal Server Error"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains(&format!("webhook_id {bad}")),
        "{}",
        text(&out)
    );
    assert_eq!(failing.requests().len(), 1);
    assert!(failing.requests()[0]
        .header("x-superoffice-signature")
        .is_none());

    // A missing hook, and a target the policy refuses: nothing is sent.
    let out = walhook_async(&h.config_path, &["webhook", "test", "9999"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("webhook_id 9999 does not exist"),
        "{}",
        text(&out)
    );
    let strict = strict_config(&h);
    let out = walhook_async(&strict, &["webhook", "test", &id.to_string()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("allow_http"), "{}", text(&out));
    assert_eq!(receiver.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_drops_slot_and_publications_idempotently() {
    let mut h = Harness::start(HOST, "").await;
    let slots = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walhook'";
    let publications =
        "SELECT count(*) FROM pg_publication WHERE pubname IN ('walhook', 'walhook_keyless')";
    let schema = "SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'";
    assert_eq!(count(&h, publications).await, 2);

    // A streaming walhook keeps its slot.
    h.start_daemon().await;
    let out = h.walhook(&["teardown", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("stop walhook first"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&h, slots).await, 1);
    assert!(h.stop_daemon().success());
    h.wait_slot_released().await;

    // No terminal and no --yes: refused, nothing dropped.
    let out = h.walhook(&["teardown"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(stderr(&out).contains("--yes"), "{}", text(&out));
    assert!(
        stdout(&out).contains("drop replication slot"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&h, slots).await, 1);

    let out = h.walhook(&["teardown", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("dropped replication slot"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&h, slots).await, 0);
    assert_eq!(count(&h, publications).await, 0);
    assert_eq!(count(&h, schema).await, 1);
    assert_eq!(
        count(&h, "SELECT count(*) FROM walhook.registry_snapshot").await,
        0
    );

    // status says so loudly.
    let out = h.walhook(&["status"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(stdout(&out).contains("does not exist"), "{}", text(&out));
    let out = h.walhook(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["slot"]["exists"], false);
    let problems: Vec<&str> = doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let problems = problems.join("\n");
    assert!(
        problems.contains("replication slot \"walhook\" does not exist"),
        "{doc}"
    );
    assert!(
        problems.contains("publication \"walhook\" does not exist"),
        "{doc}"
    );

    let out = h.walhook(&["teardown", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("already gone"), "{}", text(&out));
    assert!(stdout(&out).contains("nothing to drop"), "{}", text(&out));

    // setup starts over; --drop-schema removes everything.
    let out = h.walhook(&["setup"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&h, slots).await, 1);
    let out = h.walhook(&["teardown", "--drop-schema", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("dropped schema"), "{}", text(&out));
    assert_eq!(count(&h, slots).await, 0);
    assert_eq!(count(&h, publications).await, 0);
    assert_eq!(count(&h, schema).await, 0);
    let out = h.walhook(&["teardown", "--drop-schema", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(stdout(&out).contains("nothing to drop"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_records_usage_and_resumes_a_hook_it_emptied() {
    let h = Harness::start(HOST, "").await;
    let receiver = Receiver::start().await.unwrap();
    let failing = Receiver::start_with(|_, _| 500).await.unwrap();
    let good = h.add_hook("contact.*", &receiver.url("/up"), None).await;
    let bad = h.add_hook("contact.*", &failing.url("/down"), None).await;
    // Both stopped by errors, as the daemon leaves them.
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = ANY ($1)",
        &[&vec![good, bad]],
    )
    .await
    .unwrap();
    h.db.execute(
        "INSERT INTO walhook.webhook_usage (webhook_id, total_calls, total_errors, \
                consecutive_errors, last_error, last_failure) \
         SELECT id, 9, 9, 9, 'HTTP 503', now() FROM unnest($1::int[]) AS id",
        &[&vec![good, bad]],
    )
    .await
    .unwrap();
    for _ in 0..2 {
        park(&h, good).await;
    }
    park(&h, bad).await;

    let out = walhook_async(&h.config_path, &["replay"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!("webhook_id {good}: state TooManyErrors -> Active")),
        "{}",
        text(&out)
    );
    assert_eq!(receiver.requests().len(), 2);
    assert_eq!(failing.requests().len(), 1);

    let usage = h.usage(good).await;
    assert_eq!((usage.total_calls, usage.total_errors), (11, 9));
    assert_eq!(usage.consecutive_errors, 0);
    let recent_success = format!(
        "SELECT count(*) FROM walhook.webhook_usage WHERE webhook_id = {good} \
           AND last_success > now() - interval '1 minute'"
    );
    assert_eq!(count(&h, &recent_success).await, 1);
    let state =
        |id: i32| format!("SELECT state::bigint FROM walhook.webhook WHERE webhook_id = {id}");
    assert_eq!(count(&h, &state(good)).await, 1);

    // The failing hook: one more error, still stopped, its event kept.
    let usage = h.usage(bad).await;
    assert_eq!((usage.total_calls, usage.total_errors), (10, 10));
    assert_eq!(usage.consecutive_errors, 10);
    assert!(
        usage
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "{usage:?}"
    );
    assert_eq!(count(&h, &state(bad)).await, 3);
    assert_eq!(
        count(
            &h,
            &format!("SELECT count(*) FROM walhook.delivery WHERE webhook_id = {bad}")
        )
        .await,
        1
    );
}

/// A target answering every request with `status` and `body`, as raw
/// HTTP/1.1 bytes (the lab's receiver answers with plain statuses).
async fn raw_target(status: &'static str, body: &'static [u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then the body its Content-Length announces.
                let (head_end, length) = loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&request[..at]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (at + 4, length);
                    }
                };
                while request.len() < head_end + length {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let mut answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                answer.extend_from_slice(body);
                let _ = socket.write_all(&answer).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_terminal_escapes_print_escaped() {
    let h = Harness::start(HOST, "").await;
    let port = raw_target(
        "500 Internal Server Error",
        b"oops\x1b[2J\x1b]0;owned\x07\r\xc2\x9b31m",
    )
    .await;
    let id = h
        .add_hook("contact.*", &format!("http://127.0.0.1:{port}/hook"), None)
        .await;
    let out = walhook_async(&h.config_path, &["webhook", "test", &id.to_string()]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("oops\\x1b[2J\\x1b]0;owned\\x07\\x0d\\u{9b}31m"),
        "{shown}"
    );
    assert!(
        !out.stdout
            .iter()
            .any(|&b| b == 0x1b || b == b'\r' || b == 0x07),
        "raw control bytes printed: {shown:?}"
    );
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}/hook answered 500")),
        "{}",
        stderr(&out)
    );

    // A parked event's last error, as the daemon records a target's answer.
    park(&h, id).await;
    h.db.batch_execute(
        "UPDATE walhook.delivery SET last_error = \
         E'HTTP 500\\nx-note: \\x1b[31mred\\n\\x1b[2Jbody\\u202e'",
    )
    .await
    .unwrap();
    let event_id: String =
        h.db.query_one("SELECT event_id::text FROM walhook.delivery", &[])
            .await
            .unwrap()
            .get(0);
    let out = walhook_async(&h.config_path, &["parked", "show", &event_id]).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("HTTP 500\nx-note: \\x1b[31mred\n\\x1b[2Jbody\\u{202e}"),
        "{shown}"
    );
    assert!(!out.stdout.contains(&0x1b), "raw escape printed: {shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_list_hides_tokens_in_the_urls_query() {
    let h = Harness::start(HOST, "").await;
    h.add_hook(
        "contact.*",
        "https://hooks.example.com/in?token=s3cret-token&sig=s3cret-sig",
        None,
    )
    .await;
    for args in [&["webhook", "list"][..], &["webhook", "list", "--json"][..]] {
        let out = h.walhook(args);
        assert!(out.status.success(), "{}", text(&out));
        let shown = stdout(&out);
        assert!(!shown.contains("s3cret"), "{args:?} shows a token: {shown}");
        assert!(
            shown.contains("https://hooks.example.com/in?token=***&sig=***"),
            "{args:?}: {shown}"
        );
    }
}

/// Hooks that can never fire are named: `add` and `check` warn on an
/// entity no published table has and on a filter column no table
/// publishes, and `status` marks a row the daemon skips.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_that_can_never_fire_are_named() {
    let h = Harness::start(HOST, "").await;
    let add = |events: &'static str| {
        let config = h.config_path.clone();
        async move {
            walhook_async(
                &config,
                &[
                    "webhook",
                    "add",
                    "--name",
                    "n",
                    "--events",
                    events,
                    "--url",
                    "http://127.0.0.1:9/h",
                ],
            )
            .await
        }
    };
    let out = add("contcat.*, contact.created").await;
    assert!(out.status.success(), "{}", text(&out));
    let typo = stdout(&out).trim().parse::<i32>().unwrap();
    let said = text(&out);
    assert!(
        said.contains(&format!("warning: webhook_id {typo}: its events name the entity \"contcat\", which no published table has"))
            && said.contains("published entities: contact"),
        "{said}"
    );
    assert!(!said.contains("\"contact\", which"), "{said}");
    let out = add("contact.changed(nmae)").await;
    let said = text(&out);
    assert!(
        said.contains(
            "its column filter on contact names nmae that table public.contact does not publish"
        ),
        "{said}"
    );
    let out = add("*, *.deleted, contact.changed(name)").await;
    assert!(!text(&out).contains("warning"), "{}", text(&out));

    let check = h.walhook(&["check"]);
    let said = stdout(&check);
    assert!(
        said.contains(&format!(
            "WARN  webhook_id {typo}: its events name the entity \"contcat\""
        )),
        "{said}"
    );

    // A row the daemon skips (headers not an object) is marked by status.
    let skipped: i32 = h
        .db
        .query_one(
            "INSERT INTO walhook.webhook (name, events, target_url, type, headers, state) \
             VALUES ('broken', '*', 'http://127.0.0.1:9/b', 'webhook', '[1]', 1) RETURNING webhook_id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let said = stdout(&h.walhook(&["status"]));
    let line = said
        .lines()
        .find(|l| l.starts_with(&format!("{skipped} ")))
        .unwrap_or_else(|| panic!("no line for {skipped}:\n{said}"));
    assert!(line.contains("SKIPPED"), "{said}");
    assert!(
        said.contains(&format!(
            "WARNING: webhook_id {skipped} is skipped by the daemon: headers"
        )),
        "{said}"
    );
}
