//! The README's "Roles" recipe, run as written: its SQL verbatim as a
//! superuser and its config with only the host and file paths replaced,
//! against a cluster that authenticates TCP with scram-sha-256, where an
//! application role owns the tables. Then `check`, `setup`, `run`, one
//! delivery, a backfill (refused, then granted as step 5 says, then with a
//! GRANT revoked before it reads) and `teardown`, each as the role the
//! README says.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use walhook_lab::cluster::{Auth, Cluster, ClusterOptions};
use walhook_lab::receiver::Receiver;

use crate::common::{stdout, stop_child, text, Harness, BIN};

const README: &str = include_str!("../../README.md");

/// The application's database, as the README's recipe names it.
const HOST_SQL: &str = "\
    CREATE ROLE crm_owner NOLOGIN;
    CREATE TABLE contact (contact_id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                          name text, balance numeric(12, 2), data jsonb);
    CREATE TABLE audit_note (note text);
    ALTER TABLE contact OWNER TO crm_owner;
    ALTER TABLE audit_note OWNER TO crm_owner;
    CREATE SCHEMA crm AUTHORIZATION crm_owner;
    CREATE TABLE crm.person (person_id integer PRIMARY KEY, name text);
    INSERT INTO crm.person VALUES (1, 'Ann'), (2, 'Bo'), (3, 'Cy');
    ALTER TABLE crm.person OWNER TO crm_owner;";

/// The code block after the `<!-- roles-recipe: NAME -->` marker in the
/// README's Roles section.
fn recipe_block(name: &str) -> String {
    let start = README
        .find("### Roles\n")
        .expect("README has a Roles section");
    let section = &README[start..];
    let end = section[1..].find("\n## ").map_or(section.len(), |i| i + 1);
    let section = &section[..end];
    let marker = format!("<!-- roles-recipe: {name} -->");
    let after = &section[section
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} in the Roles section"))
        + marker.len()..];
    let open = after.find("```").expect("a code block after the marker");
    let body = &after[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

/// The password each `CREATE ROLE name ... PASSWORD '...'` of the SQL sets.
fn password_of(sql: &str, role: &str) -> String {
    let line = sql
        .lines()
        .find(|l| l.starts_with(&format!("CREATE ROLE {role} ")))
        .unwrap_or_else(|| panic!("the recipe creates role {role}"));
    let quoted = &line[line.find("PASSWORD '").expect("a password") + 10..];
    quoted[..quoted.find('\'').expect("closing quote")].to_owned()
}

fn walhook(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PGPASSWORD")
        .output()
        .expect("walhook runs")
}

async fn walhook_async(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        walhook(&config, &args)
    })
    .await
    .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// Poll `sql` (one boolean) until it holds.
async fn wait_true(db: &tokio_postgres::Client, what: &str, sql: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = db.query_one(sql, &[]).await.unwrap();
        if row.get::<_, bool>(0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `walhook run` as configured, its log appended to `log`.
fn start_daemon(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(BIN)
        .arg("-c")
        .arg(config)
        .arg("run")
        .env("RUST_LOG", "info")
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Poll `backfill list --json` until backfill `id` satisfies `done`.
async fn wait_backfill(
    config: &Path,
    id: i64,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = walhook_async(config, &["backfill", "list", "--json"]).await;
        assert!(out.status.success(), "{}", text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let found = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backfill_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("backfill {id} in {list}"));
        if done(&found) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for backfill {id} to {what}: {found}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The backfill id of `walhook backfill`'s first line ("backfill 7: ...").
fn backfill_id(out: &Output) -> i64 {
    let said = stdout(out);
    said.strip_prefix("backfill ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("a backfill id in {said:?}"))
}

const SLOTS: &str = "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walhook'";
const PUBLICATIONS: &str =
    "SELECT count(*) FROM pg_publication WHERE pubname IN ('walhook', 'walhook_keyless')";
const SCHEMA: &str = "SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_roles_recipe_works_as_written_with_scram() {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start_with_auth(
            ClusterOptions::default(),
            Auth::Scram {
                superuser_password: "super-secret".into(),
            },
        )
    })
    .await
    .unwrap()
    .expect("throwaway PostgreSQL with scram starts");
    cluster
        .execute("postgres", "CREATE DATABASE crm")
        .await
        .unwrap();
    let db = cluster.client("crm").await.unwrap();
    db.batch_execute(HOST_SQL).await.unwrap();

    // Step 1: the SQL, verbatim, as a superuser.
    let sql = recipe_block("superuser");
    db.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("the README's SQL fails: {e:?}\n{sql}"));

    // Step 2: the config, pointed at this cluster and these files.
    let dir = tempfile::tempdir().unwrap();
    let files = format!("{}/", dir.path().display());
    let recipe_config = recipe_block("config")
        .replace("db.example:5432", &format!("127.0.0.1:{}", cluster.port()))
        .replace("/etc/walhook/", &files);
    let parsed: toml::Value = toml::from_str(&recipe_config).unwrap();
    for (key, role) in [
        ("password_file", "walhook"),
        ("setup_password_file", "walhook_setup"),
    ] {
        let path = parsed["postgres"][key].as_str().expect(key);
        std::fs::write(path, format!("{}\n", password_of(&sql, role))).unwrap();
        // Readable by its owner only, as the README says (0600, or 0640
        // root:walhook): check refuses a password file others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let receiver = Receiver::start().await.unwrap();
    let config = dir.path().join("walhook.toml");
    std::fs::write(
        &config,
        format!(
            "{recipe_config}status_interval = \"200ms\"\n\
             [delivery]\nallow_http = true\nallow_private_targets = true\n"
        ),
    )
    .unwrap();

    // The setup role alone, without the recipe's run role configured: check
    // names what that role lacks, and setup refuses before changing anything.
    let run_only = dir.path().join("run-only.toml");
    let text_run_only = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("setup_"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&run_only, text_run_only).unwrap();
    let out = walhook_async(&run_only, &["check"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("NEXT  walhook is not set up"), "{said}");
    assert!(
        said.contains(r#"GRANT CREATE ON DATABASE "crm" TO "walhook""#),
        "{said}"
    );
    assert!(said.contains(r#"GRANT "crm_owner" TO "walhook""#), "{said}");
    assert!(said.contains("table public.contact"), "{said}");
    assert!(!said.contains("FAIL  replication slot"), "{said}");
    let out = walhook_async(&run_only, &["setup"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&db, SCHEMA).await, 0);
    assert_eq!(count(&db, PUBLICATIONS).await, 0);
    assert_eq!(count(&db, SLOTS).await, 0);

    // Step 3: check, then setup, as the README says.
    let out = walhook_async(&config, &["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let said = stdout(&out);
    assert!(said.contains("NEXT  walhook is not set up"), "{said}");
    assert!(
        said.contains("setup role \"walhook_setup\" (postgres.setup_url) has what"),
        "{said}"
    );
    assert!(!said.contains("FAIL"), "{said}");
    let out = walhook_async(&config, &["setup"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("role \"walhook\" (postgres.url) may use walhook's tables"),
        "{}",
        text(&out)
    );
    let out = walhook_async(&config, &["setup"]).await;
    assert!(
        stdout(&out).contains("nothing changed"),
        "a second setup changes nothing: {}",
        text(&out)
    );
    // Step 4: the application's grants, which check has nothing against.
    let sql = recipe_block("application");
    db.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("the README's application grants fail: {e:?}\n{sql}"));
    let out = walhook_async(&config, &["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!stdout(&out).contains("FAIL"), "{}", text(&out));
    assert!(
        stdout(&out).contains("OK    only walhook's roles can write its internal tables"),
        "{}",
        text(&out)
    );
    assert!(
        !stdout(&out).contains("pg_read_all_stats"),
        "{}",
        text(&out)
    );
    // Delivering needs no privilege on the application's tables; check
    // notes what a backfill would.
    let note = stdout(&out)
        .lines()
        .find(|l| l.starts_with("NOTE  role \"walhook\" may not read"))
        .unwrap_or_else(|| panic!("a note on backfill's grants: {}", text(&out)))
        .to_owned();
    assert!(
        note.contains(r#"GRANT USAGE ON SCHEMA "crm" TO "walhook""#)
            && note.contains(r#""crm"."person""#)
            && note.contains(r#""public"."contact""#),
        "{note}"
    );

    // The run role adds a hook and streams; the application commits.
    let out = walhook_async(
        &config,
        &[
            "webhook",
            "add",
            "--name",
            "crm",
            "--events",
            "contact.*",
            "--url",
            &receiver.url("/hook"),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let log = dir.path().join("run.log");
    let daemon = start_daemon(&config, &log);
    wait_true(
        &db,
        "the daemon to stream as role walhook",
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r \
                         ON r.pid = s.active_pid \
                        WHERE s.slot_name = 'walhook' AND r.usename = 'walhook')",
    )
    .await;
    db.batch_execute(
        "SET ROLE crm_owner; \
         INSERT INTO contact (name, balance, data) VALUES ('Ada', 12.50, '{\"vip\": true}'); \
         RESET ROLE;",
    )
    .await
    .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(got.len(), 1, "one delivery; daemon log:\n{}", log_text());
    assert_eq!(got[0].json()["Event"], "contact.created", "{}", log_text());

    // Step 5: a backfill as the run role is refused with the GRANTs until
    // they are given, then sends the table's rows.
    let out = walhook_async(&config, &["backfill", "--webhook", "1", "crm.person"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let refusal = stderr(&out);
    for said in [
        r#"role "walhook" may not read crm.person"#,
        r#"GRANT USAGE ON SCHEMA "crm" TO "walhook""#,
        r#"GRANT SELECT ON "crm"."person" TO "walhook""#,
    ] {
        assert!(refusal.contains(said), "{said} in {refusal}");
    }
    let grants = recipe_block("backfill");
    db.batch_execute(&grants)
        .await
        .unwrap_or_else(|e| panic!("the README's backfill grants fail: {e:?}\n{grants}"));
    // Never analysed: the estimate counts the rows.
    let out = walhook_async(&config, &["backfill", "--webhook", "1", "crm.person"]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("(about 3 rows)"), "{}", text(&out));
    let first = backfill_id(&out);
    wait_backfill(&config, first, "finish", |b| b["state"] == "done").await;
    let persons = |got: &[walhook_lab::receiver::ReceivedRequest]| {
        got.iter()
            .filter(|r| r.json()["Event"] == "person.created")
            .count()
    };
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| persons(r) >= 3)
        .await;
    assert_eq!(persons(&got), 3, "{}", log_text());

    // A GRANT revoked before the daemon reads: the backfill stays open
    // with the error and the fix, and goes on once the GRANT is back.
    let status = stop_child(daemon).await;
    assert!(status.success(), "daemon exit: {status}\n{}", log_text());
    let out = walhook_async(
        &config,
        &["backfill", "--webhook", "1", "--detach", "crm.person"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let second = backfill_id(&out);
    db.batch_execute("REVOKE SELECT ON crm.person FROM walhook")
        .await
        .unwrap();
    let daemon = start_daemon(&config, &log);
    let stuck = wait_backfill(&config, second, "show its error", |b| !b["error"].is_null()).await;
    assert_eq!(stuck["state"], "running", "{stuck}");
    let error = stuck["error"].as_str().unwrap();
    assert!(
        error.contains(r#"role "walhook" may not read crm.person"#)
            && error.contains(r#"GRANT SELECT ON "crm"."person" TO "walhook""#),
        "{error}"
    );
    let out = walhook_async(&config, &["status"]).await;
    assert!(
        stdout(&out).contains(r#"GRANT SELECT ON "crm"."person" TO "walhook""#),
        "status shows the backfill's error: {}",
        text(&out)
    );
    db.batch_execute(&grants).await.unwrap();
    let done = wait_backfill(&config, second, "finish", |b| b["state"] == "done").await;
    assert!(done["error"].is_null(), "{done}");
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| persons(r) >= 6)
        .await;
    assert_eq!(persons(&got), 6, "{}", log_text());

    let status = stop_child(daemon).await;
    assert!(status.success(), "daemon exit: {status}\n{}", log_text());
    assert!(!log_text().contains("ERROR"), "{}", log_text());
    wait_true(
        &db,
        "the slot to be released",
        "SELECT NOT coalesce(bool_or(active), false) FROM pg_replication_slots \
          WHERE slot_name = 'walhook'",
    )
    .await;

    // Teardown as the run role may not drop the publications: nothing is
    // dropped, and it says which role can.
    let out = walhook_async(&run_only, &["teardown", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("nothing was dropped"),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("owned by role \"walhook_setup\""),
        "{}",
        text(&out)
    );
    assert_eq!(count(&db, SLOTS).await, 1);
    assert_eq!(count(&db, PUBLICATIONS).await, 2);

    // Teardown as the setup role drops everything.
    let out = walhook_async(&config, &["teardown", "--drop-schema", "--yes"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(count(&db, SLOTS).await, 0);
    assert_eq!(count(&db, PUBLICATIONS).await, 0);
    assert_eq!(count(&db, SCHEMA).await, 0);
}

/// The part of a check line after "the fix: ", split into its statements.
fn fixes(line: &str) -> Vec<String> {
    let fix = &line[line
        .find("the fix: ")
        .unwrap_or_else(|| panic!("a fix in {line:?}"))
        + 9..];
    fix.split("; ").map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_each_role_but_walhooks_that_can_write_its_internal_tables() {
    let h = Harness::start("CREATE TABLE contact (id int PRIMARY KEY);", "").await;
    // The application, granted as the README says: `webhook` and nothing else.
    h.db.batch_execute(&format!(
        "CREATE ROLE crm_owner NOLOGIN; {}",
        recipe_block("application")
    ))
    .await
    .unwrap();
    // A role granted writes directly, one through a predefined role, and
    // PUBLIC.
    h.db.batch_execute(
        "CREATE ROLE reporting; \
         GRANT USAGE ON SCHEMA walhook TO reporting; \
         GRANT INSERT, UPDATE ON walhook.slot_progress TO reporting; \
         GRANT DELETE ON walhook.backfill TO reporting; \
         CREATE ROLE etl LOGIN; GRANT pg_write_all_data TO etl; \
         GRANT TRUNCATE ON walhook.delivery TO PUBLIC;",
    )
    .await
    .unwrap();
    let out = h.walhook(&["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let said = stdout(&out);
    let writers: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("can write walhook's internal tables"))
        .collect();
    assert_eq!(writers.len(), 3, "reporting, etl and PUBLIC: {said}");
    let line = |who: &str| -> &str {
        writers
            .iter()
            .find(|l| l.starts_with(&format!("FAIL  {who} ")))
            .unwrap_or_else(|| panic!("no line for {who}: {said}"))
    };
    let reporting = line("role \"reporting\"");
    assert!(
        reporting.contains("backfill (DELETE)")
            && reporting.contains("slot_progress (INSERT, UPDATE)"),
        "{reporting}"
    );
    assert_eq!(
        fixes(reporting),
        vec![
            r#"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON "walhook"."backfill", "walhook"."slot_progress" FROM "reporting""#
        ]
    );
    let etl = line("role \"etl\"");
    assert!(etl.contains("through pg_write_all_data"), "{etl}");
    assert_eq!(fixes(etl), vec![r#"REVOKE "pg_write_all_data" FROM "etl""#]);
    let public = line("PUBLIC");
    assert!(public.contains("delivery (TRUNCATE)"), "{public}");
    assert_eq!(
        fixes(public),
        vec![r#"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON "walhook"."delivery" FROM PUBLIC"#]
    );
    assert!(
        !said.contains("crm_owner"),
        "the application's grants are fine: {said}"
    );

    // The fixes, as printed, leave walhook's roles alone with its tables.
    for line in &writers {
        for fix in fixes(line) {
            h.db.batch_execute(&fix)
                .await
                .unwrap_or_else(|e| panic!("{fix}: {e:?}"));
        }
    }
    let out = h.walhook(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("OK    only walhook's roles can write its internal tables"),
        "{}",
        text(&out)
    );
    // And the application can do all it needs with its hooks.
    h.db.batch_execute(
        "SET ROLE crm_owner; \
         INSERT INTO walhook.webhook (name, events, target_url) \
              VALUES ('app', 'contact.*', 'https://example.com/hook'); \
         UPDATE walhook.webhook SET state = 2 WHERE name = 'app'; \
         DELETE FROM walhook.webhook WHERE name = 'app'; \
         RESET ROLE;",
    )
    .await
    .unwrap();
}

/// Under the role split the daemon's role does not own walhook's tables:
/// the ANALYZE a replay runs first is skipped by PostgreSQL with a
/// WARNING, which must not reach the log at every replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_by_a_role_that_does_not_own_the_tables_logs_no_analyze_warning() {
    let mut h = Harness::start(
        "CREATE TABLE contact (contact_id int PRIMARY KEY, name text);",
        "",
    )
    .await;
    let grants = walhook::store::privileges::run_role_grants("walhook", "runner").join("; ");
    h.db.batch_execute(&format!("CREATE ROLE runner LOGIN REPLICATION; {grants}"))
        .await
        .unwrap();
    let config = std::fs::read_to_string(&h.config_path).unwrap();
    let superuser_url = h.cluster.url("postgres");
    let runner_url = superuser_url.replacen("postgres@", "runner@", 1);
    assert_ne!(superuser_url, runner_url, "{superuser_url}");
    std::fs::write(&h.config_path, config.replace(&superuser_url, &runner_url)).unwrap();
    let receiver = Receiver::start().await.unwrap();
    let hook = h.add_hook("contact.*", &receiver.url("/hook"), None).await;
    // TooManyErrors parks the event; Active again replays it.
    h.db.execute(
        "UPDATE walhook.webhook SET state = 3 WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    h.start_daemon().await;
    h.db.batch_execute("INSERT INTO contact VALUES (1, 'a')")
        .await
        .unwrap();
    h.wait_caught_up("the event to be parked").await;
    assert_eq!(h.parked_count(hook).await, 1, "{}", h.daemon_log());
    h.db.execute(
        "UPDATE walhook.webhook SET state = 1 WHERE webhook_id = $1",
        &[&hook],
    )
    .await
    .unwrap();
    let got = receiver
        .wait_until(Duration::from_secs(30), |r| !r.is_empty())
        .await;
    assert_eq!(got.len(), 1, "the replay delivers: {}", h.daemon_log());
    let owner: String =
        h.db.query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class \
              WHERE oid = 'walhook.delivery'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(owner, "runner", "the run role must not own the table");
    let streams_as: String =
        h.db.query_one(
            "SELECT usename::text FROM pg_stat_replication r \
               JOIN pg_replication_slots s ON s.active_pid = r.pid \
              WHERE s.slot_name = 'walhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(streams_as, "runner");
    let log = h.daemon_log();
    assert!(
        !log.contains("can analyze") && !log.contains("WARNING"),
        "{log}"
    );
}
