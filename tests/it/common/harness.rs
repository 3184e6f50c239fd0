//! The harness: a throwaway PostgreSQL with the host's tables, a config
//! for walhook, and `walhook setup` run.

use std::path::PathBuf;
use std::process::{Child, Output};
use std::time::Duration;

use walhook_lab::cluster::{Cluster, ClusterOptions};

use super::daemon::walhook_with;
use super::text;

pub struct Harness {
    pub cluster: Cluster,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub db: tokio_postgres::Client,
    pub(super) daemon: Option<Child>,
    pub(super) runs: usize,
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
        let options = ClusterOptions {
            extra_settings: settings,
            ..Default::default()
        };
        Harness::start_full(options, host_sql, extra_config, true).await
    }

    /// As [`start`](Self::start), with the server's options (settings and
    /// environment).
    pub async fn start_with_options(
        options: ClusterOptions,
        host_sql: &str,
        extra_config: &str,
    ) -> Harness {
        Harness::start_full(options, host_sql, extra_config, true).await
    }

    /// As [`start`](Self::start), with the target guard on
    /// (`delivery.allow_private_targets = false`, the default of a real
    /// install): hooks to loopback and other non-public addresses are
    /// refused. Every other harness allows them, since its receivers listen
    /// on loopback.
    pub async fn start_guarded(host_sql: &str, extra_config: &str) -> Harness {
        Harness::start_full(ClusterOptions::default(), host_sql, extra_config, false).await
    }

    async fn start_full(
        options: ClusterOptions,
        host_sql: &str,
        extra_config: &str,
        allow_private_targets: bool,
    ) -> Harness {
        let cluster = tokio::task::spawn_blocking(move || Cluster::start_with(options))
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
                 [delivery]\nallow_http = true\n\
                 allow_private_targets = {allow_private_targets}\n{extra_config}\n",
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
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
