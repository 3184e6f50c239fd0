//! walhook-sink (src/bin/walhook-sink.rs) as a process, and its counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::nginx::Cert;
use crate::process::{self, http_get, http_request, log_file, nap, tail, Deadline};

pub struct Sink {
    child: Child,
    name: String,
    port: u16,
    /// Over https: the certificate, which stats are checked against too.
    ca: Option<PathBuf>,
    pub err_log: PathBuf,
}

impl Sink {
    /// The sink on a free port with `args`; `cert` serves it over https.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        name: &str,
        args: &[String],
        cert: Option<&Cert>,
    ) -> anyhow::Result<Sink> {
        let out_path = dir.join(format!("{name}.sink.out"));
        let err_log = dir.join(format!("{name}.sink.err"));
        let (out, _) = log_file(&out_path)?;
        let (err, _) = log_file(&err_log)?;
        let mut command = Command::new(bin);
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        if let Some(cert) = cert {
            command
                .arg("--tls-cert")
                .arg(&cert.cert)
                .arg("--tls-key")
                .arg(&cert.key);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut sink = Sink {
            child,
            name: name.to_owned(),
            port: 0,
            ca: cert.map(|c| c.cert.clone()),
            err_log,
        };
        let deadline = Deadline::secs(15);
        let addr = loop {
            let out = std::fs::read_to_string(&out_path).unwrap_or_default();
            if let Some(addr) = out
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .and_then(|l| l.split_whitespace().next())
            {
                break addr.to_owned();
            }
            if let Ok(Some(status)) = sink.child.try_wait() {
                bail!(
                    "walhook-sink ({name}) exited ({status}):\n{}",
                    tail(&sink.err_log, 20)
                );
            }
            deadline.check(&format!("walhook-sink ({name}) listening"))?;
            nap().await;
        };
        sink.port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("walhook-sink printed no port: '{addr}'"))?;
        Ok(sink)
    }

    /// The URL hooks point under.
    pub fn base(&self) -> String {
        match self.ca {
            Some(_) => format!("https://localhost:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// walhook's [delivery] lines for it: the CA of its certificate over https.
    pub fn delivery_extra(&self) -> String {
        match &self.ca {
            Some(ca) => format!("ca_file = \"{}\"", ca.display()),
            None => String::new(),
        }
    }

    /// The counters of `GET /stats`. Over http this starts no process (it
    /// is polled while walhook is timed); over https curl reads it.
    pub async fn stats(&self) -> anyhow::Result<HashMap<String, u64>> {
        let body = match &self.ca {
            None => http_get(self.port, "/stats").await?,
            Some(ca) => {
                let output = tokio::process::Command::new("curl")
                    .args(["-s", "--max-time", "5", "--cacert"])
                    .arg(ca)
                    .arg(format!("{}/stats", self.base()))
                    .output()
                    .await
                    .context("running curl to read the sink's stats over https")?;
                if !output.status.success() {
                    bail!("curl {}/stats failed ({})", self.base(), output.status);
                }
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
        };
        let stats: HashMap<String, u64> = body
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect();
        if !stats.contains_key("requests") {
            bail!(
                "walhook-sink ({}) /stats has no request count: {body:?}",
                self.name
            );
        }
        Ok(stats)
    }

    /// Its answers wait `ms` from now on (`PUT /delay`): a target that
    /// slows down while walhook sends.
    pub async fn set_delay(&self, ms: u64) -> anyhow::Result<()> {
        let body = ms.to_string();
        match &self.ca {
            None => {
                http_request(
                    self.port,
                    &format!(
                        "PUT /delay HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    ),
                )
                .await?;
            }
            Some(ca) => {
                let status = tokio::process::Command::new("curl")
                    .args([
                        "-sf",
                        "--max-time",
                        "5",
                        "-X",
                        "PUT",
                        "--data",
                        &body,
                        "--cacert",
                    ])
                    .arg(ca)
                    .arg(format!("{}/delay", self.base()))
                    .stdout(Stdio::null())
                    .status()
                    .await
                    .context("running curl to set the sink's delay over https")?;
                if !status.success() {
                    bail!("curl -X PUT {}/delay failed ({status})", self.base());
                }
            }
        }
        Ok(())
    }

    pub async fn stat(&self, key: &str) -> anyhow::Result<u64> {
        self.stats()
            .await?
            .get(key)
            .copied()
            .with_context(|| format!("walhook-sink's /stats has no {key}"))
    }

    pub async fn requests(&self) -> anyhow::Result<u64> {
        self.stat("requests")
            .await
            .with_context(|| format!("walhook-sink does not answer GET {}/stats", self.base()))
    }

    /// Whether it has answered at least `n` requests (false when it does
    /// not answer).
    pub async fn at_least(&self, n: u64) -> bool {
        matches!(self.stat("requests").await, Ok(r) if r >= n)
    }

    /// Seconds from `epoch` (Unix seconds) to the sink's time `key` (Unix
    /// microseconds).
    pub async fn seconds_since(&self, epoch: f64, key: &str) -> anyhow::Result<f64> {
        let us = self.stat(key).await?;
        if us == 0 {
            bail!("walhook-sink's /stats has no {key} yet");
        }
        Ok(us as f64 / 1e6 - epoch)
    }

    /// Fails when the sink rejected a request or could not log one.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let stats = self.stats().await?;
        let (rejected, log_errors) = (stats.get("rejected"), stats.get("log_errors"));
        if rejected != Some(&0) || log_errors != Some(&0) {
            bail!(
                "walhook-sink ({}) rejected {rejected:?} requests and failed to log {log_errors:?}:\n{}",
                self.name,
                tail(&self.err_log, 20)
            );
        }
        process::signal(&self.child, Signal::SIGTERM);
        if process::wait_exit(&mut self.child, Duration::from_secs(5))
            .await?
            .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        Ok(())
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            process::signal(&self.child, Signal::SIGTERM);
            if !process::wait_exit_blocking(&mut self.child, Duration::from_secs(5)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}
