//! `walhook config show` and `walhook config check`: the config file on its
//! own, without a database, through the binary (exit codes, output).

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use walhook::config::Config;

use crate::common::{stdout, text, BIN};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/walhook.toml");

fn walhook(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for name in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().expect("walhook runs")
}

#[test]
fn show_prints_the_example_config_as_the_daemon_reads_it() {
    let out = walhook(
        &["-c", EXAMPLE, "config", "show"],
        &[("PGHOST", "db.example")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    // The same configuration, read back.
    let example = Config::load(std::path::Path::new(EXAMPLE)).unwrap();
    assert_eq!(Config::parse(&shown).unwrap(), example, "{shown}");
    // Each key the example sets says so; a key it leaves out is a default.
    let line = |key: &str| {
        shown
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("{key} in\n{shown}"))
            .to_owned()
    };
    assert!(line("status_interval").ends_with("# file"), "{shown}");
    assert!(line("progress_interval").ends_with("# file"), "{shown}");
    assert!(
        shown.contains("# PG* variables set in this environment: PGHOST"),
        "{shown}"
    );
    assert!(
        shown.contains("# run and setup connection resolved:"),
        "{shown}"
    );
}

#[test]
fn show_hides_passwords_and_names_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crm.toml");
    std::fs::write(
        &path,
        "[postgres]\nurl = \"postgres://walhook:s3cret@db.example/crm\"\nslot = \"walhook_crm\"\n",
    )
    .unwrap();
    let out = walhook(&["-c", path.to_str().unwrap(), "config", "show"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = stdout(&out);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains("url = \"postgres://walhook:***@db.example/crm\""),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("slot = \"walhook_crm\"") && l.ends_with("# file")),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("schema = \"walhook\"") && l.ends_with("# default")),
        "{shown}"
    );
    assert!(
        shown.contains("walhook@db.example:5432/crm (sslmode Prefer, a password is set)"),
        "{shown}"
    );
}

#[test]
fn check_validates_a_file_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    // Valid, and no server is asked: the URL names a host that does not
    // resolve.
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[postgres]\nurl = \"postgres://walhook@no-such-host.invalid/crm\"\n",
    )
    .unwrap();
    let out = walhook(&["config", "check", good.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        stdout(&out).contains("is valid: 1 key(s) set, every other key has its default"),
        "{}",
        text(&out)
    );
    assert!(
        stdout(&out).contains("postgres.url resolves to walhook@no-such-host.invalid:5432/crm"),
        "{}",
        text(&out)
    );

    // A key out of range: exit 2, naming the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[postgres]\nprogress_interval = \"1h\"\n").unwrap();
    let out = walhook(&["config", "check", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("postgres.progress_interval"),
        "{}",
        text(&out)
    );

    // A password file others may read: a failed check, exit 3.
    let password = dir.path().join("password");
    std::fs::write(&password, "pw\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let exposed = dir.path().join("exposed.toml");
    std::fs::write(
        &exposed,
        format!(
            "[postgres]\nurl = \"postgres://walhook@db.example/crm\"\npassword_file = \"{}\"\n",
            password.display()
        ),
    )
    .unwrap();
    let out = walhook(&["config", "check", exposed.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with("FAIL") && l.contains("postgres.password_file")),
        "{}",
        text(&out)
    );
}
