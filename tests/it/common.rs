//! The test harness: a throwaway PostgreSQL, walhook's real binary, and a
//! real loopback receiver. Nothing is mocked.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;
use sha2::Sha256;
use walhook_lab::cluster::Cluster;

pub const BIN: &str = env!("CARGO_BIN_EXE_walhook");

pub struct Harness {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub db: tokio_postgres::Client,
    daemon: Option<Child>,
    runs: usize,
    /// RUST_LOG for the daemons this harness starts.
    pub log_filter: String,
}

impl Harness {
    /// A cluster with `host_sql` applied, a config (plus `extra_config`
    /// TOML appended) and `walhook setup` run.
    pub async fn start(host_sql: &str, extra_config: &str) -> Harness {
        Harness::start_with(Vec::new(), host_sql, extra_config).await
    }

    /// As [`start`](Self::start), with server settings.
    pub async fn start_with(
        settings: Vec<(String, String)>,
        host_sql: &str,
        extra_config: &str,
    ) -> Harness {
        let cluster = tokio::task::spawn_blocking(move || {
            walhook_lab::cluster::Cluster::start_with(walhook_lab::cluster::ClusterOptions {
                extra_settings: settings,
            })
        })
        .await
        .unwrap()
        .expect("throwaway PostgreSQL starts");
        cluster
            .execute("postgres", host_sql)
            .await
            .expect("host schema");
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("walhook.toml");
        std::fs::write(
            &config_path,
            format!(
                "[postgres]\nurl = \"{}\"\nstatus_interval = \"200ms\"\n\
                 [delivery]\nallow_http = true\nallow_private_targets = true\n{extra_config}\n",
                cluster.url("postgres")
            ),
        )
        .unwrap();
        let db = cluster.client("postgres").await.unwrap();
        let h = Harness {
            cluster,
            dir,
            config_path,
            db,
            daemon: None,
            runs: 0,
            log_filter: "walhook=debug,info".into(),
        };
        let out = h.walhook(&["setup"]);
        assert!(out.status.success(), "setup failed: {}", text(&out));
        h
    }

    /// Run a walhook command to completion.
    pub fn walhook(&self, args: &[&str]) -> Output {
        walhook_with(&self.config_path, args)
    }

    pub fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("walhook-{run}.log"))
    }

    /// Start `walhook run` and wait until it streams from the slot.
    pub async fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let child = self.spawn_extra_daemon();
        self.daemon = Some(child);
        self.wait_slot_active(Duration::from_secs(30)).await;
    }

    /// Start another `walhook run` (a would-be standby) beside the first.
    pub fn spawn_extra_daemon(&mut self) -> Child {
        self.runs += 1;
        let log = std::fs::File::create(self.log_path(self.runs)).unwrap();
        Command::new(BIN)
            .arg("-c")
            .arg(&self.config_path)
            .arg("run")
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("walhook run starts")
    }

    /// Adopt a daemon started with `spawn_extra_daemon` as the main one.
    pub fn adopt_daemon(&mut self, child: Child) {
        assert!(self.daemon.is_none());
        self.daemon = Some(child);
    }

    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// Whether the main daemon is still running.
    pub fn daemon_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// A new SQL session (after the server restarted).
    pub async fn reconnect_db(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.cluster.client("postgres").await {
                Ok(db) => {
                    self.db = db;
                    return;
                }
                Err(e) if std::time::Instant::now() > deadline => panic!("reconnect: {e:#}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop_daemon(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("daemon running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_child(&mut child, Duration::from_secs(30))
    }

    /// kill -9.
    pub fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn daemon_log(&self) -> String {
        (1..=self.runs)
            .map(|r| std::fs::read_to_string(self.log_path(r)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Register a hook; returns its webhook_id.
    pub async fn add_hook(&self, events: &str, url: &str, secret: Option<&str>) -> i32 {
        self.db
            .query_one(
                "INSERT INTO walhook.webhook (name, events, target_url, secret) \
                 VALUES ('test hook', $1, $2, $3) RETURNING webhook_id",
                &[&events, &url, &secret],
            )
            .await
            .unwrap()
            .get(0)
    }

    pub async fn wait_for<F>(&self, what: &str, timeout: Duration, check: F)
    where
        F: for<'a> Fn(
            &'a tokio_postgres::Client,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + 'a>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check(&self.db).await {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; daemon log:\n{}",
                    self.daemon_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the slot's confirmed position reaches `lsn`.
    pub async fn wait_confirmed(&self, what: &str, lsn: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.confirmed().await < lsn {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; daemon log:\n{}",
                    self.daemon_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until a walhook streams from the slot.
    pub async fn wait_slot_active(&self, timeout: Duration) {
        self.wait_for("the slot to be active", timeout, |db| {
            Box::pin(async move {
                db.query_one(
                    "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'walhook'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            })
        })
        .await;
    }

    /// Wait until no walhook streams from the slot: a walsender outlives
    /// its client by a moment.
    pub async fn wait_slot_released(&self) {
        self.wait_for("the slot to be released", Duration::from_secs(10), |db| {
            Box::pin(async move {
                db.query_one(
                    "SELECT NOT coalesce(bool_or(active), false) FROM pg_replication_slots \
                      WHERE slot_name = 'walhook'",
                    &[],
                )
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
            })
        })
        .await;
    }

    /// Wait until the daemon has dealt with every change committed so far:
    /// the slot's confirmed position reaches the WAL position taken now. A
    /// change is confirmed only once each of its deliveries succeeded or
    /// was parked, so what a hook has not received by then, it never will.
    pub async fn wait_caught_up(&self, what: &str) {
        let lsn = self.current_lsn().await;
        self.wait_confirmed(what, lsn, Duration::from_secs(30))
            .await;
    }

    /// Wait until the daemon's log contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.daemon_log().contains(needle) {
            if tokio::time::Instant::now() > deadline {
                panic!("no {needle:?} in the daemon log:\n{}", self.daemon_log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `webhook_id`'s row in webhook_usage (all zero before the first write).
    pub async fn usage(&self, webhook_id: i32) -> Usage {
        self.db
            .query_opt(
                "SELECT total_calls, total_errors, consecutive_errors, last_error \
                   FROM walhook.webhook_usage WHERE webhook_id = $1",
                &[&webhook_id],
            )
            .await
            .unwrap()
            .map(|row| Usage {
                total_calls: row.get(0),
                total_errors: row.get(1),
                consecutive_errors: row.get(2),
                last_error: row.get(3),
            })
            .unwrap_or_default()
    }

    /// Wait until `webhook_id`'s statistics satisfy `done`, and return
    /// them. The daemon writes webhook_usage in batches about a second
    /// apart, so tests poll for what they expect rather than sleep.
    pub async fn wait_usage(&self, webhook_id: i32, done: impl Fn(&Usage) -> bool) -> Usage {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let usage = self.usage(webhook_id).await;
            if done(&usage) {
                return usage;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "webhook {webhook_id}: statistics never as expected, last {usage:?}; \
                     daemon log:\n{}",
                    self.daemon_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The slot's confirmed position, as text and number.
    pub async fn confirmed(&self) -> u64 {
        let text: String = self
            .db
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        parse_lsn(&text)
    }

    /// The settled position walhook recorded for the slot, if any.
    pub async fn stored_progress(&self) -> Option<u64> {
        let text: Option<String> = self
            .db
            .query_opt(
                "SELECT lsn::text FROM walhook.slot_progress WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        text.as_deref().map(parse_lsn)
    }

    /// Wait until the server has written out all WAL inserted so far, so
    /// that a crash keeps every commit made until now (also asynchronous
    /// ones).
    pub async fn wait_wal_flushed(&self) {
        let inserted: String = self
            .db
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let inserted = parse_lsn(&inserted);
        self.wait_for(
            "the WAL to be flushed",
            Duration::from_secs(10),
            move |db| {
                Box::pin(async move {
                    db.query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
                        .await
                        .map(|r| parse_lsn(&r.get::<_, String>(0)) >= inserted)
                        .unwrap_or(false)
                })
            },
        )
        .await;
    }

    pub async fn current_lsn(&self) -> u64 {
        let text: String = self
            .db
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        parse_lsn(&text)
    }
}

/// A hook's statistics, as walhook writes them to webhook_usage.
#[derive(Debug, Default)]
pub struct Usage {
    pub total_calls: i64,
    pub total_errors: i64,
    pub consecutive_errors: i32,
    pub last_error: Option<String>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The process's peak resident set size (`VmHWM`) in KiB. Panics when it
/// cannot be measured: a memory bound checked against nothing proves
/// nothing.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot measure walhook's memory: reading {path}: {e}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap_or_else(|| panic!("cannot measure walhook's memory: no VmHWM in {path}"));
    let kib = line
        .trim()
        .strip_suffix("kB")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot measure walhook's memory: VmHWM {line:?} in {path}"));
    assert!(
        kib > 0,
        "cannot measure walhook's memory: VmHWM is 0 in {path}"
    );
    kib
}

pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("walhook did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run a walhook command with `config` to completion.
pub fn walhook_with(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("walhook runs")
}

/// [`walhook_with`] off the runtime's threads, so the test's receivers
/// keep answering meanwhile.
pub async fn walhook_async(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        walhook_with(&config, &args)
    })
    .await
    .unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SuperOffice's documented algorithm, written here independently of
/// walhook's signing code.
pub fn expected_superoffice_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    BASE64.encode(mac.finalize().into_bytes())
}

/// The Standard Webhooks verification, written from the spec.
pub fn verify_standard_webhooks(
    secret: &str,
    id: &str,
    ts: &str,
    body: &[u8],
    header: &str,
) -> bool {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => BASE64.decode(b64).unwrap(),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|sig| sig == expected)
}

/// JSON equality with numbers compared by exact decimal value (`1.50`,
/// `1.5` and `15e-1` are equal; no rounding through f64, so a lost digit of
/// a 200-digit numeric shows).
pub fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.to_string(), y.to_string());
            x == y || decimal(&x).is_some_and(|d| Some(d) == decimal(&y))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// A JSON number as (negative, significant digits, exponent): the value is
/// digits × 10^exponent, with no leading or trailing zeros in digits.
pub fn decimal(text: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(int.bytes().chain(frac.bytes())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    let trimmed = digits.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((false, String::new(), 0));
    }
    let exponent = exponent - frac.len() as i64 + (digits.len() - trimmed.len()) as i64;
    Some((negative, trimmed.to_owned(), exponent))
}

/// A certificate authority made for one test.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, as PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate as DER, to compare with what a server received.
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses):
    /// (certificate PEM, private key PEM).
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let issued = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, |_| {});
        (issued.cert_pem, issued.key_pem)
    }

    /// A server certificate for `names` that expired in 2021.
    pub fn expired_server_cert(&self, names: &[&str]) -> (String, String) {
        let issued = self.issue(names, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        (issued.cert_pem, issued.key_pem)
    }

    /// A client certificate for `name`.
    pub fn client_cert(&self, name: &str) -> Issued {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth, |_| {})
    }

    fn issue(
        &self,
        names: &[&str],
        purpose: ExtendedKeyUsagePurpose,
        tune: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        tune(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
