//! TLS to PostgreSQL: every sslmode of walhook's SQL sessions against a real
//! server with a certificate from a throwaway CA, and the replication
//! session of the real binary over verify-full.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use walhook::config::{Config, Connection};
use walhook::postgres::connect_sql;
use walhook_lab::cluster::Cluster;
use walhook_lab::receiver::Receiver;

use crate::common::{Ca, BIN};

const WAIT: Duration = Duration::from_secs(30);

/// Files the client side reads: the right CA, an unrelated CA, an empty
/// file.
struct ClientFiles {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    empty: PathBuf,
}

/// A throwaway cluster serving TLS with a certificate for `names`, signed
/// by a fresh CA.
async fn tls_cluster(names: &[&str]) -> (Cluster, ClientFiles) {
    let ca = Ca::new("walhook test CA");
    let other = Ca::new("some other CA");
    let (cert, key) = ca.server_cert(names);

    let dir = tempfile::tempdir().unwrap();
    let files = ClientFiles {
        ca: dir.path().join("ca.pem"),
        other_ca: dir.path().join("other-ca.pem"),
        empty: dir.path().join("empty.pem"),
        _dir: dir,
    };
    fs::write(&files.ca, ca.pem()).unwrap();
    fs::write(&files.other_ca, other.pem()).unwrap();
    fs::write(&files.empty, "").unwrap();

    let cluster = start_cluster().await;
    enable_ssl(&cluster, &cert, &key).await;
    (cluster, files)
}

async fn start_cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("throwaway PostgreSQL starts")
}

/// Put the certificate and key into the data directory (owned by the
/// account the server runs as, the key 0600 as PostgreSQL demands), turn
/// ssl on and reload; returns once a TLS session works.
async fn enable_ssl(cluster: &Cluster, cert_pem: &str, key_pem: &str) {
    let data = cluster.data_dir();
    let owner = fs::metadata(data).unwrap();
    for (name, text, mode) in [
        ("server.crt", cert_pem, 0o644),
        ("server.key", key_pem, 0o600),
    ] {
        let path = data.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    // ALTER SYSTEM cannot run inside the implicit transaction of a
    // multi-statement query, so one statement each.
    for sql in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "SELECT pg_reload_conf()",
    ] {
        cluster.execute("postgres", sql).await.unwrap();
    }
    // The postmaster applies the reload asynchronously.
    let conn = connection(&url(cluster, "127.0.0.1", "sslmode=require"));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match connect_sql(&conn).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() > deadline => panic!(
                "the server did not start serving TLS: {e:#}\nserver log:\n{}",
                fs::read_to_string(cluster.log_path()).unwrap_or_default()
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn url(cluster: &Cluster, host: &str, params: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/postgres?{params}",
        cluster.port()
    )
}

fn connection(url: &str) -> Connection {
    Config::parse(&format!("[postgres]\nurl = {url:?}\n"))
        .unwrap()
        .connection()
        .unwrap()
}

fn rootcert(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

/// Connect through walhook's SQL session; whether the session is TLS.
async fn session_ssl(url: &str) -> anyhow::Result<bool> {
    let client = connect_sql(&connection(url)).await?.client;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

async fn expect_ssl(url: &str, expected: bool) {
    match session_ssl(url).await {
        Ok(ssl) => assert_eq!(ssl, expected, "pg_stat_ssl.ssl for {url}"),
        Err(e) => panic!("{url}: {e:#}"),
    }
}

async fn expect_error(url: &str) -> String {
    match session_ssl(url).await {
        Ok(ssl) => panic!("{url}: connected (ssl={ssl}), expected an error"),
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!("{url}:\n  {text}");
            text
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sessions_honour_every_sslmode() {
    let (cluster, files) = tls_cluster(&["localhost", "127.0.0.1"]).await;
    let ca = rootcert(&files.ca);
    let other = rootcert(&files.other_ca);

    for host in ["127.0.0.1", "localhost"] {
        let u = |params: &str| url(&cluster, host, params);
        expect_ssl(&u("sslmode=disable"), false).await;
        expect_ssl(&u("sslmode=prefer"), true).await;
        expect_ssl(&u(""), true).await; // prefer is the default
        expect_ssl(&u("sslmode=require"), true).await;
        expect_ssl(&u(&format!("sslmode=verify-ca&{ca}")), true).await;
        expect_ssl(&u(&format!("sslmode=verify-full&{ca}")), true).await;
        // prefer and require do not verify, as with libpq.
        expect_ssl(&u(&format!("sslmode=require&{other}")), true).await;
    }

    // The session settings survive TLS.
    let client = connect_sql(&connection(&url(
        &cluster,
        "localhost",
        &format!("sslmode=verify-full&{ca}"),
    )))
    .await
    .unwrap()
    .client;
    let name: String = client
        .query_one("SHOW application_name", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "walhook");
    let sync: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sync, "on");

    // A certificate from another CA is refused by both verifying modes.
    for mode in ["verify-ca", "verify-full"] {
        let e = expect_error(&url(
            &cluster,
            "localhost",
            &format!("sslmode={mode}&{other}"),
        ))
        .await;
        assert!(
            e.contains("not signed by a CA in") && e.contains(&*files.other_ca.to_string_lossy()),
            "{mode} with the wrong CA: {e}"
        );
        assert!(e.contains("localhost"), "the error names the host: {e}");
    }
    // Without sslrootcert the webpki roots are used, which do not hold the
    // test CA.
    let e = expect_error(&url(&cluster, "localhost", "sslmode=verify-full")).await;
    assert!(e.contains("webpki"), "{e}");

    // A missing or empty sslrootcert is named.
    let missing = files.ca.with_file_name("missing.pem");
    let e = expect_error(&url(
        &cluster,
        "localhost",
        &format!("sslmode=verify-ca&{}", rootcert(&missing)),
    ))
    .await;
    assert!(
        e.contains(&*missing.to_string_lossy())
            && e.contains("cannot be read")
            && e.contains("localhost"),
        "{e}"
    );
    let e = expect_error(&url(
        &cluster,
        "localhost",
        &format!("sslmode=verify-full&{}", rootcert(&files.empty)),
    ))
    .await;
    assert!(
        e.contains(&*files.empty.to_string_lossy())
            && e.contains("no PEM certificate")
            && e.contains("localhost"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let (cluster, files) = tls_cluster(&["localhost"]).await;
    let ca = rootcert(&files.ca);

    let e = expect_error(&url(
        &cluster,
        "127.0.0.1",
        &format!("sslmode=verify-full&{ca}"),
    ))
    .await;
    assert!(
        e.contains("does not name host \"127.0.0.1\"") && e.contains("localhost"),
        "verify-full names the mismatch: {e}"
    );
    assert!(e.contains("verify-ca"), "and suggests the way out: {e}");

    expect_ssl(
        &url(&cluster, "127.0.0.1", &format!("sslmode=verify-ca&{ca}")),
        true,
    )
    .await;
    expect_ssl(
        &url(&cluster, "localhost", &format!("sslmode=verify-full&{ca}")),
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_falls_back_when_the_server_has_no_tls_and_require_does_not() {
    let cluster = start_cluster().await;
    expect_ssl(&url(&cluster, "127.0.0.1", "sslmode=prefer"), false).await;
    expect_ssl(&url(&cluster, "127.0.0.1", ""), false).await;
    let e = expect_error(&url(&cluster, "127.0.0.1", "sslmode=require")).await;
    assert!(e.contains("does not support TLS"), "{e}");
    assert!(e.contains("127.0.0.1"), "the error names the host: {e}");
}

/// Kills the daemon however the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_replicates_and_queries_over_verified_tls() {
    let (cluster, files) = tls_cluster(&["localhost", "127.0.0.1"]).await;
    cluster
        .execute(
            "postgres",
            "CREATE TABLE contact (contact_id serial PRIMARY KEY, name text NOT NULL)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("walhook.toml");
    let log_path = dir.path().join("walhook.log");
    fs::write(
        &config_path,
        format!(
            "[postgres]\nurl = {:?}\nstatus_interval = \"200ms\"\n\
             [delivery]\nallow_http = true\nallow_private_targets = true\n",
            url(
                &cluster,
                "localhost",
                &format!("sslmode=verify-full&{}", rootcert(&files.ca))
            )
        ),
    )
    .unwrap();

    let out = Command::new(BIN)
        .arg("-c")
        .arg(&config_path)
        .arg("setup")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup over TLS failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let db = cluster.client("postgres").await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    db.execute(
        "INSERT INTO walhook.webhook (name, events, target_url) VALUES ('tls', 'contact.*', $1)",
        &[&receiver.url("/tls")],
    )
    .await
    .unwrap();

    let _daemon = Daemon(
        Command::new(BIN)
            .arg("-c")
            .arg(&config_path)
            .arg("run")
            .env("RUST_LOG", "walhook=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || fs::read_to_string(&log_path).unwrap_or_default();

    // The walsender's session is TLS.
    let deadline = tokio::time::Instant::now() + WAIT;
    let walsender_ssl: bool = loop {
        let row = db
            .query_opt(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r ON r.pid = s.pid",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no walsender appeared; daemon log:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(walsender_ssl, "the replication session is not TLS");

    db.execute("INSERT INTO contact (name) VALUES ('Acme')", &[])
        .await
        .unwrap();
    let got = receiver.wait_until(WAIT, |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "daemon log:\n{}", log());
    assert_eq!(got[0].json()["Event"], "contact.created");

    // Every session the daemon holds (SQL and replication) is TLS.
    let plain: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'walhook' AND NOT s.ssl",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0, "walhook sessions without TLS");
}
