//! Running walhook: the daemon (started, stopped, killed, its log) and
//! its commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{Harness, BIN};

impl Harness {
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

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// SIGTERM a `walhook run` started outside the harness, and its exit
/// status.
pub async fn stop_child(mut daemon: Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    tokio::task::spawn_blocking(move || daemon.wait().unwrap())
        .await
        .unwrap()
}
