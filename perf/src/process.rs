//! The processes a run starts: waiting on them, signalling them, the
//! walhook under measurement, and plain HTTP GETs that start no process.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procfs;

/// Polls every 50 ms: often enough for the figures, rare enough to cost
/// the timed processes nothing worth counting.
pub const POLL: Duration = Duration::from_millis(50);

pub async fn nap() {
    tokio::time::sleep(POLL).await;
}

pub fn signal(child: &Child, signal: Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Waits at most `timeout` for the child to exit.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The same, blocking: for `Drop`.
pub fn wait_exit_blocking(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A log file opened for appending, for a child's stdout and stderr.
pub fn log_file(path: &Path) -> anyhow::Result<(Stdio, Stdio)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let err = file.try_clone().context("duplicating a log handle")?;
    Ok((file.into(), err.into()))
}

/// Runs a command to its end, its output going to `log`; fails with the
/// log's last lines when it does not succeed.
pub async fn run_logged(
    mut command: Command,
    log: &Path,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (out, err) = log_file(log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    // Killed when the wait is given up, also when an interrupted run drops it.
    let mut child = KillOnDrop(child);
    match wait_exit(&mut child.0, timeout).await? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("{what} failed ({status}):\n{}", tail(log, 20)),
        None => bail!("{what} did not finish within {}s", timeout.as_secs()),
    }
}

/// A child that is killed and reaped when dropped while still running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The last lines of a file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// GET http://127.0.0.1:PORT/PATH over HTTP/1.0 (the server closes when
/// done): the body.
pub async fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    http_request(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    )
    .await
}

/// An HTTP/1.0 exchange with a loopback server: the body of the answer,
/// which must be 200.
pub async fn http_request(port: u16, request: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("127.0.0.1:{port} did not answer within 10 s"))?
        .with_context(|| format!("HTTP to 127.0.0.1:{port}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("127.0.0.1:{port}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("127.0.0.1:{port} answered '{status}'");
    }
    Ok(body.to_owned())
}

/// `walhook run` under measurement.
pub struct Walhook {
    child: Child,
    name: String,
    pub log: PathBuf,
}

impl Walhook {
    /// `walhook -c CONFIG run`, its log appended to LOG.
    pub fn start(bin: &Path, name: &str, config: &Path, log: &Path) -> anyhow::Result<Walhook> {
        let (out, err) = log_file(log)?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(config)
            .arg("run")
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} run ({name})", bin.display()))?;
        Ok(Walhook {
            child,
            name: name.to_owned(),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (false once it has exited on its own).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails naming `what` when walhook has exited.
    pub fn ensure_running(&mut self, what: &str) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "walhook ({}) exited ({status}) during {what}; its log ends:\n{}",
                self.name,
                tail(&self.log, 25)
            );
        }
        Ok(())
    }

    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        procfs::peak_rss_kib(self.pid()).with_context(|| format!("walhook ({})", self.name))
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        procfs::cpu_seconds(self.pid()).with_context(|| format!("walhook ({})", self.name))
    }

    /// SIGTERM; its exit status, or an error when it does not exit within
    /// 30 s.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        signal(&self.child, Signal::SIGTERM);
        match wait_exit(&mut self.child, Duration::from_secs(30)).await? {
            Some(status) => Ok(status),
            None => bail!(
                "walhook ({}) did not exit within 30 s of SIGTERM",
                self.name
            ),
        }
    }

    /// SIGTERM, and it must exit 0.
    pub async fn stop_clean(self) -> anyhow::Result<()> {
        let name = self.name.clone();
        let log = self.log.clone();
        let status = self.stop().await?;
        if !status.success() {
            bail!(
                "walhook ({name}) exited with {status} after SIGTERM; its log ends:\n{}",
                tail(&log, 25)
            );
        }
        Ok(())
    }

    /// kill -9, reaped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Walhook {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(&self.child, Signal::SIGTERM);
            if !wait_exit_blocking(&mut self.child, Duration::from_secs(20)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Fails when `limit` has passed, naming what did not happen.
pub struct Deadline {
    at: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    pub fn secs(s: u64) -> Deadline {
        Deadline::after(Duration::from_secs(s))
    }

    pub fn check(&self, what: &str) -> anyhow::Result<()> {
        if Instant::now() >= self.at {
            bail!("{what} did not happen within {}s", self.limit.as_secs());
        }
        Ok(())
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }
}
