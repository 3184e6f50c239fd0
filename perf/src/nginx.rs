//! nginx as the receiver: `return 200` to everything, no logging,
//! keep-alive without a request limit, counting requests in `stub_status`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use walhook_lab::cluster::free_port;

use crate::process::{self, http_get, http_request, log_file, tail};
use crate::procfs;

/// A self-signed P-256 certificate for `localhost` and 127.0.0.1 (as most
/// sites now serve), which walhook is given as `delivery.ca_file`.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Cert {
    pub fn make(dir: &Path) -> anyhow::Result<Cert> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .context("the certificate's names")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate().context("generating a P-256 key")?;
        let cert = params
            .self_signed(&key)
            .context("signing the certificate")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let paths = Cert {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&paths.cert, cert.pem()).context("writing cert.pem")?;
        std::fs::write(&paths.key, key.serialize_pem()).context("writing key.pem")?;
        Ok(paths)
    }
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    stub_status: bool,
    pub error_log: PathBuf,
}

impl Nginx {
    /// nginx with 2 workers of `connections` connections each, on a free
    /// port (and a TLS one with `cert`); tries three ports.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        connections: u64,
        cert: Option<&Cert>,
    ) -> anyhow::Result<Nginx> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let version = Command::new(bin)
            .arg("-V")
            .output()
            .with_context(|| format!("running {} -V", bin.display()))?;
        let stub_status = String::from_utf8_lossy(&version.stderr).contains("stub_status");
        let error_log = dir.join("error.log");
        for attempt in 1..=3 {
            let port = free_port()?;
            let tls_port = match cert {
                Some(_) => Some(free_port()?).filter(|p| *p != port),
                None => None,
            };
            if cert.is_some() && tls_port.is_none() {
                continue;
            }
            let conf = dir.join("nginx.conf");
            std::fs::write(
                &conf,
                config(dir, port, tls_port, cert, connections, stub_status),
            )
            .context("writing nginx.conf")?;
            let (out, err) = log_file(&dir.join("stdout.log"))?;
            let child = Command::new(bin)
                .arg("-e")
                .arg(&error_log)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            let mut nginx = Nginx {
                child,
                port,
                tls_port,
                stub_status,
                error_log: error_log.clone(),
            };
            if nginx.answers().await {
                if let Some(cert) = cert {
                    nginx.check_tls(cert)?;
                }
                return Ok(nginx);
            }
            if nginx.child.try_wait()?.is_none() {
                bail!("nginx does not answer POST {} with 200", nginx.url());
            }
            if attempt == 3 {
                bail!("nginx exited at start:\n{}", tail(&error_log, 20));
            }
        }
        bail!("no free ports for nginx")
    }

    async fn answers(&mut self) -> bool {
        let post = "POST /hook HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}";
        for _ in 0..100 {
            if http_request(self.port, post).await.is_ok() {
                return true;
            }
            if !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn check_tls(&self, cert: &Cert) -> anyhow::Result<()> {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert.cert)
            .args(["-X", "POST", "-d", "{}"])
            .arg(self.tls_url())
            .output()
            .context("running curl (it checks nginx's TLS port; apt-get install curl)")?;
        let code = String::from_utf8_lossy(&output.stdout);
        if code != "200" {
            bail!(
                "nginx does not answer POST {} with 200 (got '{code}')",
                self.tls_url()
            );
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("https://localhost:{}/hook", self.tls_port.unwrap_or(0))
    }

    /// Requests nginx has served (its status requests included), or None
    /// without stub_status.
    pub async fn requests(&self) -> anyhow::Result<Option<u64>> {
        if !self.stub_status {
            return Ok(None);
        }
        let body = http_get(self.port, "/__bench_status").await?;
        // "Active connections: N", "server accepts handled requests", " A H R"
        let count = body
            .lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("nginx's stub_status has no request count: {body:?}"))?;
        Ok(Some(count))
    }

    /// CPU seconds nginx's workers have used so far, together.
    pub fn workers_cpu(&self) -> f64 {
        procfs::children(self.child.id())
            .into_iter()
            .filter_map(|pid| procfs::cpu_seconds(pid).ok())
            .sum()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        process::signal(&self.child, Signal::SIGQUIT);
        if !process::wait_exit_blocking(&mut self.child, Duration::from_secs(10)) {
            for pid in procfs::children(self.child.id()) {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn config(
    dir: &Path,
    port: u16,
    tls_port: Option<u16>,
    cert: Option<&Cert>,
    connections: u64,
    stub_status: bool,
) -> String {
    let d = dir.display();
    let status = if stub_status {
        "location = /__bench_status { stub_status; }"
    } else {
        ""
    };
    let tls = match (tls_port, cert) {
        (Some(tls_port), Some(cert)) => format!(
            "    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        location / {{ return 200; }}
    }}\n",
            cert.cert.display(),
            cert.key.display()
        ),
        _ => String::new(),
    };
    format!(
        "worker_processes 2;
worker_rlimit_nofile {nofile};
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_buffer_size 1m;
    client_max_body_size 16m;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200; }}
        {status}
    }}
{tls}}}
",
        nofile = 2 * connections
    )
}
