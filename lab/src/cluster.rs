//! A throwaway PostgreSQL cluster built from the system's own binaries.
//!
//! `walhook demo` and the integration tests need a *real* server: walhook is
//! a logical-replication client, and the behaviour that matters (slots,
//! `pgoutput`, `wal_level = logical`, what happens across restarts and
//! crashes) cannot be mocked faithfully. So [`Cluster`] runs `initdb` into a
//! fresh temporary directory, starts `postgres` on a free loopback port, and
//! tears everything down again when it is dropped.
//!
//! # Finding the binaries
//!
//! In order: the `PG_BIN` environment variable, the directory of `initdb`
//! on `PATH` (symlinks resolved, so `/usr/local/bin/initdb ->
//! /usr/lib/postgresql/15/bin/initdb` yields the directory that also holds
//! `psql`, `pg_recvlogical`, ...), and finally the highest version under
//! `/usr/lib/postgresql/*/bin`, which is where Debian and Ubuntu install the
//! server without putting it on `PATH`.
//!
//! # Why the `postgres` user
//!
//! PostgreSQL refuses to run as root, and CI jobs and containers usually
//! are root. When the effective uid is 0, `initdb` and `postgres` are
//! therefore started as the `postgres` system user (which the Debian package
//! creates), and the temporary directory is handed to that user. As any other
//! user, the server simply runs as the current user.
//!
//! # Process handling
//!
//! `postgres` is started directly as a child process (not daemonized by
//! `pg_ctl`), so its handle is kept and it can be signalled and reaped.
//! Stopping mirrors `pg_ctl stop -m`: smart = `SIGTERM`, fast = `SIGINT`,
//! immediate = `SIGQUIT`. Dropping a [`Cluster`] performs an immediate stop,
//! escalates to `SIGKILL` if the server has not exited after a few seconds,
//! and removes the temporary directory. The server stays in the caller's
//! process group, so a Ctrl-C in a terminal also reaches it.
//!
//! Everything apart from [`Cluster::execute`] and [`Cluster::client`] is
//! synchronous. Starting blocks for the second or two `initdb` and startup
//! take; readiness is probed with a minimal hand-written startup handshake
//! over the cluster's private Unix socket, so no async runtime is needed (or
//! created) and `start` may be called from inside a tokio runtime.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use tempfile::TempDir;

/// The address the server listens on.
const HOST: &str = "127.0.0.1";
/// How long to wait for the server to accept connections after starting it.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits for the server to exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Drop` waits after `SIGQUIT` before sending `SIGKILL`.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Start attempts when the chosen port turns out to be taken.
const PORT_ATTEMPTS: usize = 3;
/// Lines of server log included in error messages.
const LOG_TAIL_LINES: usize = 30;

const NOT_FOUND: &str = "PostgreSQL server binaries (initdb, postgres) not found: \
                         install postgresql (apt-get install postgresql) or set PG_BIN";

/// Extra configuration for [`Cluster::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `postgresql.conf` settings written after walhook's own, so they take
    /// precedence (except `port`, which is always the one [`Cluster`] chose).
    /// Values are quoted and escaped; names must be plain GUC names.
    pub extra_settings: Vec<(String, String)>,
    /// Environment variables of the server process, e.g. `LANGUAGE=de`
    /// (with `lc_messages = 'C.UTF-8'`) for its messages in German.
    pub server_env: Vec<(String, String)>,
}

/// How clients authenticate over TCP. The Unix socket in the cluster's
/// private directory always trusts, so readiness probes need no password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// Every TCP connection is trusted (`initdb -A trust`).
    #[default]
    Trust,
    /// TCP connections log in with `scram-sha-256`, as production servers
    /// are set up; the superuser `postgres` gets this password.
    Scram { superuser_password: String },
}

impl Auth {
    /// The pg_hba.conf method for TCP connections.
    fn host_method(&self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Scram { .. } => "scram-sha-256",
        }
    }
}

/// How to stop the server; the same modes as `pg_ctl stop -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// `SIGTERM`: wait for all clients to disconnect, then shut down.
    Smart,
    /// `SIGINT`: disconnect clients, checkpoint, shut down.
    Fast,
    /// `SIGQUIT`: exit at once; the next start performs crash recovery.
    Immediate,
}

impl StopMode {
    fn signal(self) -> Signal {
        match self {
            StopMode::Smart => Signal::SIGTERM,
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        }
    }
}

/// The account the server processes run as.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

/// A running (or stopped) throwaway PostgreSQL cluster; see the module docs.
#[derive(Debug)]
pub struct Cluster {
    /// Holds the data directory, the log file and the Unix socket.
    dir: TempDir,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// The server process's extra environment.
    server_env: Vec<(String, String)>,
    /// `Some` when running as root and the server runs as `postgres`.
    run_as: Option<RunAs>,
    auth: Auth,
}

/// Why one start attempt failed.
enum StartError {
    /// The server could not bind its port; another one may work.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> Self {
        StartError::Other(error)
    }
}

impl StartError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            StartError::PortTaken(e) | StartError::Other(e) => e,
        }
    }
}

impl Cluster {
    /// `initdb` + start with `wal_level = logical`; returns once the server
    /// accepts connections.
    pub fn start() -> anyhow::Result<Cluster> {
        Self::start_with(ClusterOptions::default())
    }

    /// Like [`Cluster::start`], with extra `postgresql.conf` settings.
    pub fn start_with(options: ClusterOptions) -> anyhow::Result<Cluster> {
        Self::start_with_auth(options, Auth::Trust)
    }

    /// Like [`Cluster::start_with`], with the given TCP authentication.
    pub fn start_with_auth(options: ClusterOptions, auth: Auth) -> anyhow::Result<Cluster> {
        let settings = settings_text(&options)?;
        let bin_dir = find_bin_dir()?;
        let run_as = run_as_user()?;

        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-")
            .tempdir()
            .context("creating a temporary directory for the PostgreSQL cluster")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        File::create(&log_path)
            .with_context(|| format!("creating server log {}", log_path.display()))?;
        if let Some(ids) = run_as {
            check_traversable(dir.path(), ids)?;
            for path in [dir.path(), log_path.as_path()] {
                std::os::unix::fs::chown(path, Some(ids.uid.as_raw()), Some(ids.gid.as_raw()))
                    .with_context(|| format!("handing {} to the postgres user", path.display()))?;
            }
        }

        let cluster = Cluster {
            dir,
            data_dir,
            bin_dir,
            port: 0,
            child: None,
            server_env: options.server_env.clone(),
            run_as,
            auth,
        };
        cluster.initdb()?;
        cluster.configure(&settings)?;
        cluster.start_on_free_port()
    }

    /// A physical standby of this cluster, streaming from it through the
    /// physical replication slot `primary_slot` (which the caller creates
    /// first, e.g. `pg_create_physical_replication_slot`). `options` are
    /// the standby's extra settings (`sync_replication_slots`,
    /// `hot_standby_feedback`, ...).
    ///
    /// The copy is a cold one: this cluster is stopped (fast) while its
    /// data directory is copied, then started again, so it needs no
    /// `pg_basebackup` (which not every server build ships). Replication
    /// slots are not copied: a standby starts without any, as after
    /// `pg_basebackup`.
    pub fn start_standby(
        &mut self,
        primary_slot: &str,
        options: ClusterOptions,
    ) -> anyhow::Result<Cluster> {
        let mut settings = ClusterOptions {
            extra_settings: vec![
                ("primary_conninfo".into(), self.standby_conninfo()),
                ("primary_slot_name".into(), primary_slot.into()),
                ("hot_standby".into(), "on".into()),
            ],
            ..Default::default()
        };
        settings.extra_settings.extend(options.extra_settings);
        let settings = settings_text(&settings)?;

        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-standby-")
            .tempdir()
            .context("creating a temporary directory for the standby")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("postgres.log");
        File::create(&log_path)
            .with_context(|| format!("creating server log {}", log_path.display()))?;

        self.stop(StopMode::Fast)?;
        let copied = copy_data_dir(&self.data_dir, &data_dir);
        // The primary comes back whatever became of the copy.
        self.spawn_and_wait().map_err(StartError::into_inner)?;
        copied?;

        let standby = Cluster {
            dir,
            data_dir,
            bin_dir: self.bin_dir.clone(),
            port: 0,
            child: None,
            server_env: self.server_env.clone(),
            run_as: self.run_as,
            auth: self.auth.clone(),
        };
        File::create(standby.data_dir.join("standby.signal")).context("writing standby.signal")?;
        let socket_dir = quote_value(&standby.dir.path().to_string_lossy())?;
        append(
            &standby.data_dir.join("postgresql.conf"),
            &format!(
                "\n# Added by walhook's throwaway standby.\n\
                 unix_socket_directories = {socket_dir}\n{settings}"
            ),
        )?;
        if let Some(ids) = standby.run_as {
            check_traversable(standby.dir.path(), ids)?;
            chown_tree(standby.dir.path(), ids)?;
        }
        standby.start_on_free_port()
    }

    /// Starts a cluster whose data directory is ready, on a free port.
    fn start_on_free_port(mut self) -> anyhow::Result<Cluster> {
        let mut attempt = 1;
        loop {
            self.port = free_port()?;
            match self.spawn_and_wait() {
                Ok(()) => return Ok(self),
                Err(StartError::PortTaken(error)) if attempt < PORT_ATTEMPTS => {
                    tracing::debug!(port = self.port, %error, "port taken, retrying");
                    attempt += 1;
                }
                Err(error) => return Err(error.into_inner()),
            }
        }
    }

    /// The libpq key=value connection string a standby streams with.
    fn standby_conninfo(&self) -> String {
        let password = match &self.auth {
            Auth::Trust => String::new(),
            Auth::Scram { superuser_password } => format!(
                " password='{}'",
                superuser_password
                    .replace('\\', "\\\\")
                    .replace('\'', "\\'")
            ),
        };
        format!(
            "host={HOST} port={} user=postgres dbname=postgres application_name=standby{password}",
            self.port
        )
    }

    /// The TCP port the server listens on (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// A libpq-style URL for the superuser `postgres` (with its password
    /// under [`Auth::Scram`]), e.g. `postgres://postgres@127.0.0.1:5433/app`.
    pub fn url(&self, database: &str) -> String {
        let password = match &self.auth {
            Auth::Trust => String::new(),
            Auth::Scram { superuser_password } => {
                format!(":{}", percent_encode(superuser_password))
            }
        };
        format!(
            "postgres://postgres{password}@{HOST}:{}/{}",
            self.port,
            percent_encode(database)
        )
    }

    /// The directory `initdb` and `postgres` were found in; usually also
    /// holds `psql`, `pg_recvlogical`, `pg_isready`, ...
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The cluster's data directory (inside the temporary directory).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log; every start and stop appends to it.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Stops the server like `pg_ctl stop -m <mode>` and waits (up to a
    /// minute) for it to exit. Stopping a stopped cluster does nothing.
    pub fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        match signal_and_wait(child, mode.signal(), STOP_TIMEOUT)
            .with_context(|| format!("stopping PostgreSQL (pid {pid})"))?
        {
            Some(status) => {
                tracing::debug!(pid, ?mode, %status, "PostgreSQL stopped");
                self.child = None;
                Ok(())
            }
            None => bail!(
                "PostgreSQL (pid {pid}) did not stop within {}s after a {mode:?} shutdown \
                 request{}",
                STOP_TIMEOUT.as_secs(),
                if mode == StopMode::Smart {
                    " (a smart shutdown waits for all clients to disconnect)"
                } else {
                    ""
                }
            ),
        }
    }

    /// Stops the server with `mode` and starts it again on the same port
    /// with the same data directory.
    pub fn restart(&mut self, mode: StopMode) -> anyhow::Result<()> {
        self.stop(mode)?;
        self.spawn_and_wait().map_err(StartError::into_inner)
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                tracing::debug!(%status, "PostgreSQL exited on its own");
                self.child = None;
                false
            }
            Some(Err(_)) => true,
            None => false,
        }
    }

    /// Connects to `database` and runs `sql` (any number of statements)
    /// with `batch_execute`. A convenience for tests and the demo.
    pub async fn execute(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        let client = self.client(database).await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing SQL in database {database:?}"))
    }

    /// A `tokio_postgres` client for `database` as the superuser; the
    /// connection task is spawned on the current tokio runtime.
    pub async fn client(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        let url = self.url(database);
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "throwaway cluster connection ended");
            }
        });
        Ok(client)
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        // The caller's working directory may not be readable by `postgres`.
        command.current_dir(self.dir.path());
        if let Some(ids) = self.run_as {
            // std also drops root's supplementary groups when uid is set.
            command.uid(ids.uid.as_raw()).gid(ids.gid.as_raw());
        }
        command
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let mut auth_args = vec!["-A".to_owned(), "trust".to_owned()];
        if let Auth::Scram { superuser_password } = &self.auth {
            // In the cluster's own directory, which the server's user can read.
            let pwfile = self.dir.path().join("superuser-password");
            fs::write(&pwfile, format!("{superuser_password}\n"))
                .with_context(|| format!("writing {}", pwfile.display()))?;
            auth_args = vec![
                "--auth-local=trust".to_owned(),
                "--auth-host=scram-sha-256".to_owned(),
                format!("--pwfile={}", pwfile.display()),
            ];
        }
        let mut failures = Vec::new();
        for locale in ["C.UTF-8", "C"] {
            let output = self
                .command("initdb")
                .arg("-D")
                .arg(&self.data_dir)
                .args(&auth_args)
                .args(["-U", "postgres", "-E", "UTF8", "--no-sync"])
                .arg(format!("--locale={locale}"))
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("running {}", self.bin_dir.join("initdb").display()))?;
            if output.status.success() {
                return Ok(());
            }
            failures.push(format!(
                "initdb --locale={locale} {}:\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
            // initdb removes a data directory it created, but be sure.
            let _ = fs::remove_dir_all(&self.data_dir);
        }
        Err(anyhow!(failures.join("\n"))).context("initdb failed")
    }

    fn configure(&self, settings: &str) -> anyhow::Result<()> {
        let conf = self.data_dir.join("postgresql.conf");
        let socket_dir = quote_value(&self.dir.path().to_string_lossy())?;
        let text = format!(
            "\n# Added by walhook's throwaway cluster.\n\
             listen_addresses = '{HOST}'\n\
             unix_socket_directories = {socket_dir}\n\
             wal_level = logical\n\
             max_replication_slots = 20\n\
             max_wal_senders = 20\n\
             fsync = off\n\
             full_page_writes = off\n\
             shared_buffers = '128MB'\n\
             logging_collector = off\n\
             {settings}"
        );
        append(&conf, &text)?;

        // `initdb` already allows replication connections from 127.0.0.1
        // with the host method; make sure of it in case a packager's
        // template differs.
        let method = self.auth.host_method();
        let hba = self.data_dir.join("pg_hba.conf");
        let current =
            fs::read_to_string(&hba).with_context(|| format!("reading {}", hba.display()))?;
        let allowed = current.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 5
                && fields[0] == "host"
                && fields[1] == "replication"
                && fields[2] == "all"
                && fields[3] == "127.0.0.1/32"
                && fields[4] == method
        });
        if !allowed {
            append(
                &hba,
                &format!("\nhost replication all 127.0.0.1/32 {method}\n"),
            )?;
        }
        Ok(())
    }

    /// Starts `postgres` on `self.port` and waits until it accepts
    /// connections.
    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening server log {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log_err = log.try_clone().context("duplicating the log handle")?;

        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .envs(self.server_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", self.bin_dir.join("postgres").display()))?;
        let pid = child.id();
        tracing::debug!(pid, port = self.port, data_dir = %self.data_dir.display(), "starting PostgreSQL");
        let child = self.child.insert(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Err(self.early_exit(status, log_start));
                }
                Ok(None) => {}
                Err(error) => {
                    return Err(anyhow!(error)
                        .context(format!("checking on PostgreSQL (pid {pid})"))
                        .into())
                }
            }
            let last_probe = match probe_ready(self.dir.path(), self.port) {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if Instant::now() >= deadline {
                let tail = log_tail(&log_path, log_start);
                let _ = signal_and_wait(child, Signal::SIGQUIT, DROP_GRACE);
                kill_and_reap(child);
                self.child = None;
                return Err(anyhow!(
                    "PostgreSQL (pid {pid}, port {}) did not accept connections within {}s \
                     (last attempt: {last_probe}); server log:\n{tail}",
                    self.port,
                    READY_TIMEOUT.as_secs()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn early_exit(&self, status: ExitStatus, log_start: u64) -> StartError {
        let tail = log_tail(&self.log_path(), log_start);
        let error = anyhow!("PostgreSQL exited during startup ({status}); server log:\n{tail}");
        let port_taken = [
            "could not bind",
            "Address already in use",
            "could not create any TCP/IP sockets",
        ]
        .iter()
        .any(|needle| tail.contains(needle));
        if port_taken {
            StartError::PortTaken(error.context(format!("port {} is taken", self.port)))
        } else {
            StartError::Other(error)
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            match signal_and_wait(&mut child, Signal::SIGQUIT, DROP_GRACE) {
                Ok(Some(_)) => tracing::debug!(pid, "PostgreSQL stopped (immediate)"),
                _ => {
                    tracing::warn!(pid, "PostgreSQL ignored SIGQUIT; killing it");
                    kill_and_reap(&mut child);
                }
            }
        }
        // `self.dir` (a TempDir) is removed when the fields are dropped.
    }
}

/// Sends `signal` and waits up to `timeout` for the child to exit.
/// `Ok(None)` means it is still running.
fn signal_and_wait(
    child: &mut Child,
    signal: Signal,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
    match kill(pid, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(errno) => return Err(io::Error::from(errno)),
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Locates the directory holding `initdb` and `postgres`.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        bail!(
            "PG_BIN={} does not contain both initdb and postgres",
            dir.display()
        );
    }
    if let Some(dir) = std::env::var_os("PATH").and_then(|path| bin_dir_on_path(&path)) {
        return Ok(dir);
    }
    debian_bin_dir(Path::new("/usr/lib/postgresql")).ok_or_else(|| anyhow!(NOT_FOUND))
}

fn bin_dir_on_path(path: &OsString) -> Option<PathBuf> {
    for dir in std::env::split_paths(path) {
        let initdb = dir.join("initdb");
        if !is_executable(&initdb) {
            continue;
        }
        // Prefer the real directory behind a symlink: it also holds psql,
        // pg_recvlogical and friends.
        if let Some(real_dir) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if has_server_binaries(&real_dir) {
                return Some(real_dir);
            }
        }
        if has_server_binaries(&dir) {
            return Some(dir);
        }
    }
    None
}

/// The highest `<root>/<version>/bin` holding the server binaries.
fn debian_bin_dir(root: &Path) -> Option<PathBuf> {
    fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let version: Vec<u32> = name
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn has_server_binaries(dir: &Path) -> bool {
    is_executable(&dir.join("initdb")) && is_executable(&dir.join("postgres"))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `Some(postgres user)` when running as root, `None` otherwise.
fn run_as_user() -> anyhow::Result<Option<RunAs>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let user = User::from_name("postgres")
        .context("looking up the postgres user")?
        .ok_or_else(|| {
            anyhow!(
                "running as root, but PostgreSQL refuses to run as root and there is no \
                 `postgres` system user to run it as: create one (e.g. `adduser --system \
                 --group postgres`, or install the postgresql package) or run as a non-root user"
            )
        })?;
    if user.uid.is_root() {
        bail!("the `postgres` user has uid 0; PostgreSQL refuses to run as root");
    }
    Ok(Some(RunAs {
        uid: user.uid,
        gid: user.gid,
    }))
}

/// Fails early, with a hint, if the `postgres` user cannot reach `dir`
/// (e.g. `TMPDIR` points into root's home).
fn check_traversable(dir: &Path, ids: RunAs) -> anyhow::Result<()> {
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue;
        };
        let mode = meta.mode();
        let ok = mode & 0o001 != 0
            || (meta.uid() == ids.uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == ids.gid.as_raw() && mode & 0o010 != 0);
        if !ok {
            bail!(
                "the postgres user cannot enter {} (mode {:o}), so it cannot use the temporary \
                 directory {}; point TMPDIR at a world-accessible directory such as /tmp",
                ancestor.display(),
                mode & 0o7777,
                dir.display()
            );
        }
    }
    Ok(())
}

/// Copies a stopped cluster's data directory, without its replication
/// slots and its pid file, keeping file modes (the server insists on a
/// private data directory).
fn copy_data_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    fn copy(from: &Path, to: &Path, top: bool) -> anyhow::Result<()> {
        let meta = fs::metadata(from).with_context(|| format!("reading {}", from.display()))?;
        fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
        fs::set_permissions(to, meta.permissions())
            .with_context(|| format!("setting the mode of {}", to.display()))?;
        for entry in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
            let entry = entry.with_context(|| format!("listing {}", from.display()))?;
            let name = entry.file_name();
            if top && (name == "postmaster.pid" || name == "postmaster.opts") {
                continue;
            }
            let (source, target) = (entry.path(), to.join(&name));
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if top && name == "pg_replslot" {
                    fs::create_dir(&target)
                        .and_then(|()| {
                            fs::set_permissions(&target, fs::metadata(&source)?.permissions())
                        })
                        .with_context(|| format!("creating {}", target.display()))?;
                } else {
                    copy(&source, &target, false)?;
                }
            } else if kind.is_file() {
                fs::copy(&source, &target)
                    .with_context(|| format!("copying {}", source.display()))?;
            } else {
                bail!(
                    "{} is neither a file nor a directory; the lab copies only plain data \
                     directories",
                    source.display()
                );
            }
        }
        Ok(())
    }
    copy(from, to, true)
}

/// Hands `dir` and everything in it to the server's user.
fn chown_tree(dir: &Path, ids: RunAs) -> anyhow::Result<()> {
    std::os::unix::fs::chown(dir, Some(ids.uid.as_raw()), Some(ids.gid.as_raw()))
        .with_context(|| format!("handing {} to the postgres user", dir.display()))?;
    if fs::symlink_metadata(dir)?.is_dir() {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            chown_tree(&entry?.path(), ids)?;
        }
    }
    Ok(())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick),
/// for servers started beside the cluster.
pub fn free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port")?;
    Ok(listener.local_addr()?.port())
}

/// The `postgresql.conf` lines for the caller's extra settings.
fn settings_text(options: &ClusterOptions) -> anyhow::Result<String> {
    let mut text = String::new();
    for (name, value) in &options.extra_settings {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !valid {
            bail!("invalid PostgreSQL setting name {name:?}");
        }
        text.push_str(&format!("{name} = {}\n", quote_value(value)?));
    }
    Ok(text)
}

/// A `postgresql.conf` string literal.
fn quote_value(value: &str) -> anyhow::Result<String> {
    if value.contains(['\n', '\r', '\0']) {
        bail!("PostgreSQL setting value {value:?} contains a line break or NUL");
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The last lines of the log written since byte `from`.
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(from))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(error) = read {
        return format!("(could not read {}: {error})", path.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(empty)".to_owned();
    }
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Performs a protocol-3 startup handshake as `postgres` over the cluster's
/// private Unix socket and succeeds once the server reports ReadyForQuery.
///
/// The socket lives in our own temporary directory, so a successful probe
/// proves that *our* server is up (and, since PostgreSQL binds its TCP
/// sockets before creating Unix ones, that it owns the TCP port), never
/// some other server that happens to listen on the same port.
fn probe_ready(socket_dir: &Path, port: u16) -> Result<(), String> {
    let path = socket_dir.join(format!(".s.PGSQL.{port}"));
    let mut stream = UnixStream::connect(&path).map_err(|e| format!("connect: {e}"))?;
    let timeout = Some(Duration::from_secs(2));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| e.to_string())?;

    let mut body = 196_608_i32.to_be_bytes().to_vec(); // protocol 3.0
    for part in ["user", "postgres", "database", "postgres", ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut message = i32::try_from(body.len() + 4)
        .map_err(|e| e.to_string())?
        .to_be_bytes()
        .to_vec();
    message.extend_from_slice(&body);
    stream
        .write_all(&message)
        .map_err(|e| format!("send startup: {e}"))?;

    loop {
        let mut header = [0_u8; 5];
        stream
            .read_exact(&mut header)
            .map_err(|e| format!("read: {e}"))?;
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|len| (4..=1 << 20).contains(len))
            .ok_or_else(|| format!("bad message length {len}"))?;
        let mut payload = vec![0_u8; len - 4];
        stream
            .read_exact(&mut payload)
            .map_err(|e| format!("read: {e}"))?;
        match header[0] {
            b'R' => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if code != Some(0) {
                    return Err(format!(
                        "server requested authentication ({code:?}); expected trust"
                    ));
                }
            }
            b'Z' => {
                let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
                return Ok(());
            }
            b'E' => return Err(error_fields(&payload)),
            _ => {}
        }
    }
}

/// "SQLSTATE: message" from an ErrorResponse body.
fn error_fields(payload: &[u8]) -> String {
    let (mut code, mut message) = (String::new(), String::new());
    let mut rest = payload;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or_default();
    }
    format!("{code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_values() {
        assert_eq!(quote_value("on").unwrap(), "'on'");
        assert_eq!(quote_value(r"a'b\c").unwrap(), r"'a''b\\c'");
        assert!(quote_value("a\nb").is_err());
    }

    #[test]
    fn rejects_odd_setting_names() {
        let options = ClusterOptions {
            extra_settings: vec![("x = 1\nport".into(), "1".into())],
            ..Default::default()
        };
        assert!(settings_text(&options).is_err());
        let options = ClusterOptions {
            extra_settings: vec![("wal_sender_timeout".into(), "5s".into())],
            ..Default::default()
        };
        assert_eq!(
            settings_text(&options).unwrap(),
            "wal_sender_timeout = '5s'\n"
        );
    }

    #[test]
    fn encodes_database_names() {
        assert_eq!(percent_encode("app_db-1"), "app_db-1");
        assert_eq!(percent_encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn picks_highest_debian_version() {
        let root = tempfile::tempdir().unwrap();
        for version in ["9.6", "15", "16", "notaversion"] {
            let bin = root.path().join(version).join("bin");
            fs::create_dir_all(&bin).unwrap();
            for name in ["initdb", "postgres"] {
                let path = bin.join(name);
                fs::write(&path, "").unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        // A newer version without server binaries does not count.
        fs::create_dir_all(root.path().join("17/bin")).unwrap();
        assert_eq!(
            debian_bin_dir(root.path()),
            Some(root.path().join("16").join("bin"))
        );
    }

    #[test]
    fn parses_error_response() {
        let payload = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        assert_eq!(
            error_fields(payload),
            "57P03: the database system is starting up"
        );
    }
}
