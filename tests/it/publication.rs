//! What setup publishes, and what `check` says about it, where a column
//! list (`exclude_columns`) or a new table could make the application's
//! own statements fail.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

const HOST: &str = "CREATE TABLE contact (id int PRIMARY KEY, name text, email text); \
                    INSERT INTO contact VALUES (1, 'Ann', 'ann@example.com');";

/// The harness's config with `extra` appended, as another file.
fn config_with(h: &Harness, name: &str, extra: &str) -> PathBuf {
    let text = std::fs::read_to_string(&h.config_path).unwrap();
    let path = h.dir.path().join(name);
    std::fs::write(&path, format!("{text}\n{extra}\n")).unwrap();
    path
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The application's UPDATE and DELETE on `contact`, as it runs them.
async fn host_writes(h: &Harness) -> Result<(), tokio_postgres::Error> {
    h.db.batch_execute(
        "UPDATE contact SET name = 'Bea' WHERE id = 1; \
         DELETE FROM contact WHERE id = 2;",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_excluding_a_replica_identity_column() {
    let h = Harness::start(HOST, "").await;

    // The key column: PostgreSQL would refuse every UPDATE and DELETE.
    let config = config_with(
        &h,
        "exclude-id.toml",
        "[tables.\"public.contact\"]\nexclude_columns = [\"id\"]",
    );
    let out = walhook_with(&config, &["setup"]);
    assert!(!out.status.success(), "setup accepted it: {}", text(&out));
    let message = stderr(&out);
    for needle in [
        "public.contact",
        "exclude_columns leaves out id",
        "replica identity (id)",
        "cannot update table",
        "nothing was changed",
    ] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
    host_writes(&h)
        .await
        .expect("the application's UPDATE and DELETE still work");

    // Under REPLICA IDENTITY FULL every column is in the identity.
    h.db.batch_execute("ALTER TABLE contact REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let config = config_with(
        &h,
        "exclude-email.toml",
        "[tables.\"public.contact\"]\nexclude_columns = [\"email\"]",
    );
    let out = walhook_with(&config, &["setup"]);
    assert!(!out.status.success(), "setup accepted it: {}", text(&out));
    let message = stderr(&out);
    for needle in [
        "public.contact has REPLICA IDENTITY FULL",
        "leaves out email",
        "ALTER TABLE \"public\".\"contact\" REPLICA IDENTITY DEFAULT",
    ] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
    host_writes(&h)
        .await
        .expect("the application's UPDATE and DELETE still work");

    // With its key as identity the same exclusion is published.
    h.db.batch_execute("ALTER TABLE contact REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let out = walhook_with(&config, &["setup"]);
    assert!(out.status.success(), "setup failed: {}", text(&out));
    host_writes(&h)
        .await
        .expect("the application's UPDATE and DELETE still work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_flags_full_identity_on_a_table_with_excluded_columns() {
    let h = Harness::start(
        HOST,
        "[tables.\"public.contact\"]\nexclude_columns = [\"email\"]",
    )
    .await;
    let out = h.walhook(&["check"]);
    let report = stdout(&out);
    assert!(
        !report.contains("ALTER TABLE public.contact REPLICA IDENTITY FULL"),
        "check recommends FULL for a table with excluded columns: {report}"
    );
    assert!(
        report.contains("leave its replica identity as it is"),
        "{report}"
    );

    // The DBA sets FULL anyway: the application's UPDATEs now fail, and
    // check says so, with the fix.
    h.db.batch_execute("ALTER TABLE contact REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let refused = host_writes(&h).await.expect_err("PostgreSQL refuses it");
    assert!(
        refused.as_db_error().map(|e| e.code().code()) == Some("42P10"),
        "{refused:?}"
    );
    let out = h.walhook(&["check"]);
    assert!(!out.status.success(), "check passed: {}", text(&out));
    let report = stdout(&out);
    let line = report
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("public.contact"))
        .unwrap_or_else(|| panic!("no FAIL line for public.contact: {report}"));
    for needle in [
        "REPLICA IDENTITY FULL",
        "leaves out email",
        "ALTER TABLE public.contact REPLICA IDENTITY DEFAULT",
    ] {
        assert!(line.contains(needle), "{needle:?} missing: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_add_tables_adds_every_table_it_can_and_names_the_others() {
    let mut h = Harness::start(
        HOST,
        "[capture]\nauto_add_tables = true\nauto_add_interval = \"1s\"\n\
         [tables.\"public.b_secret\"]\nexclude_columns = [\"id\"]",
    )
    .await;
    h.start_daemon().await;
    // In name order: the two that cannot be added come first.
    h.db.batch_execute(
        "CREATE UNLOGGED TABLE a_scratch (id int PRIMARY KEY); \
         CREATE TABLE b_secret (id int PRIMARY KEY, note text); \
         CREATE TABLE c_new (id int PRIMARY KEY, note text);",
    )
    .await
    .unwrap();
    h.wait_for("c_new published", Duration::from_secs(30), |db| {
        Box::pin(async move {
            db.query_one(
                "SELECT count(*) FROM pg_publication_tables \
                  WHERE pubname = 'walhook' AND tablename = 'c_new'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
    })
    .await;
    h.wait_log("table public.a_scratch is UNLOGGED").await;
    h.wait_log("table public.b_secret: ").await;
    h.wait_log("exclude_columns leaves out id, part of its replica identity")
        .await;
    let published: i64 =
        h.db.query_one(
            "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'b_secret'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 0, "b_secret was published");
    h.db.batch_execute("UPDATE b_secret SET note = 'x'")
        .await
        .expect("the application's UPDATE on b_secret works");
}

/// An UNLOGGED host table cannot be published (its changes never reach
/// the WAL): setup leaves it out with a warning naming it and the fix,
/// instead of failing on it, and the logged tables are captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_leaves_out_an_unlogged_table_with_a_warning() {
    // The harness runs setup and requires it to succeed.
    let h = Harness::start(
        "CREATE TABLE contact (id int PRIMARY KEY); \
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);",
        "",
    )
    .await;
    let again = h.walhook(&["setup"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("table public.scratch is UNLOGGED")
            && text(&again).contains("SET LOGGED"),
        "{}",
        text(&again)
    );
    let published: Vec<String> =
        h.db.query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables \
              WHERE pubname LIKE 'walhook%' AND schemaname = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(published, ["public.contact"]);
}

/// A re-run of setup after a migration says which tables it now publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_says_which_new_tables_it_publishes() {
    let h = Harness::start("CREATE TABLE contact (id int PRIMARY KEY);", "").await;
    h.db.batch_execute(
        "CREATE TABLE invoice (id int PRIMARY KEY); CREATE TABLE audit_line (note text);",
    )
    .await
    .unwrap();
    // check names them first, as the next step rather than a failure.
    let check = h.walhook(&["check"]);
    let said = stdout(&check);
    assert_eq!(check.status.code(), Some(0), "{said}");
    assert!(
        said.contains("NEXT  table public.invoice is captured ([capture]) but not published yet")
            && said.contains("NEXT  table public.audit_line is captured"),
        "{said}"
    );
    assert!(!said.contains("table public.contact is captured"), "{said}");
    let out = h.walhook(&["setup"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = stdout(&out);
    assert!(
        said.contains("publication \"walhook\" adds table public.invoice")
            && said.contains("publication \"walhook_keyless\" adds table public.audit_line"),
        "{said}"
    );
    assert!(!said.contains("public.contact"), "{said}");
    let said = stdout(&h.walhook(&["check"]));
    assert!(!said.contains("not published yet"), "{said}");
}
