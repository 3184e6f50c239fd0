//! What every section shares: the throwaway cluster (the lab's), the SQL
//! session, the tools found on the machine, nginx, the certificate, the
//! temp dir, walhook installations, and the report being filled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use walhook_lab::cluster::{Cluster, ClusterOptions};

use crate::db::Db;
use crate::knobs::Knobs;
use crate::nginx::{Cert, Nginx};
use crate::process::{nap, run_logged, Deadline, Walhook};
use crate::report::Report;

/// The programs a run uses.
pub struct Tools {
    pub walhook: PathBuf,
    pub sink: PathBuf,
    pub post: PathBuf,
    pub recvlogical: PathBuf,
    pub pgbench: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
}

/// Figures a section leaves for a later one (wrk's ratios use decode's and
/// nginx's).
#[derive(Default)]
pub struct Carry {
    /// walhook's CPU per change with no hook, µs.
    pub decode_us: Option<f64>,
    pub nginx: Option<NginxFigures>,
}

pub struct NginxFigures {
    pub rate: f64,
    pub delivered_rate: f64,
    pub phase_rate: Option<f64>,
    /// walhook's CPU per change, µs.
    pub walhook_us: f64,
    pub walsender_us: f64,
}

pub struct Bench {
    pub knobs: Knobs,
    pub dir: PathBuf,
    pub cluster: Cluster,
    pub db: Db,
    pub tools: Tools,
    pub nginx: Option<Nginx>,
    pub cert: Option<Cert>,
    pub report: Report,
    pub carry: Carry,
    /// Logs whose last lines are printed when the run fails.
    pub logs: Vec<PathBuf>,
}

impl Bench {
    pub fn pg_url(&self) -> String {
        self.cluster.url("bench")
    }

    pub fn postgres_version(&self) -> String {
        Command::new(self.cluster.bin_dir().join("postgres"))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .nth(2)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "?".into())
    }

    /// walhook's config for one installation (schema, slot and publication
    /// all named `schema`) capturing `public.TABLE` only, so that no
    /// installation publishes another's tables.
    pub fn walhook_config(&self, schema: &str, extra_delivery: &str, table: &str) -> String {
        format!(
            "[postgres]
url = \"{url}\"
status_interval = \"1s\"
schema = \"{schema}\"
slot = \"{schema}\"
publication = \"{schema}\"

[capture]
include = [\"public.{table}\"]

[delivery]
allow_http = true
allow_private_targets = true
concurrency_per_webhook = {concurrency}
{extra_delivery}
{delivery_extra}
",
            url = self.pg_url(),
            concurrency = self.knobs.concurrency_toml(),
            delivery_extra = self.knobs.delivery_extra,
        )
    }

    pub fn config_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }

    /// `walhook setup` for the config `name`.toml.
    pub async fn setup(&mut self, name: &str) -> anyhow::Result<()> {
        let mut command = Command::new(&self.tools.walhook);
        command.arg("-c").arg(self.config_path(name)).arg("setup");
        let log = self.dir.join(format!("{name}.setup.log"));
        run_logged(
            command,
            &log,
            &format!("walhook setup ({name})"),
            Duration::from_secs(120),
        )
        .await
    }

    /// An installation `name` capturing public.TABLE alone, set up.
    pub async fn install(&mut self, name: &str, table: &str, extra: &str) -> anyhow::Result<()> {
        let config = self.walhook_config(name, extra, table);
        std::fs::write(self.config_path(name), config)
            .with_context(|| format!("writing {name}.toml"))?;
        self.setup(name).await?;
        self.logs.push(self.log_path(name));
        Ok(())
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    pub fn start_walhook(&self, name: &str) -> anyhow::Result<Walhook> {
        Walhook::start(
            &self.tools.walhook,
            name,
            &self.config_path(name),
            &self.log_path(name),
        )
    }

    /// A hook for every event; its webhook_id.
    pub async fn add_hook(
        &mut self,
        schema: &str,
        name: &str,
        url: &str,
        state: u8,
    ) -> anyhow::Result<i64> {
        self.db
            .int(&format!(
                "INSERT INTO {schema}.webhook (name, events, target_url, secret, state)
                 VALUES ('{name}', '*', '{url}', 'bench-secret-0123456789', {state}) RETURNING webhook_id"
            ))
            .await
            .with_context(|| format!("registering webhook '{name}' in {schema}"))
    }

    pub async fn wal_lsn(&mut self) -> anyhow::Result<String> {
        self.db.text("SELECT pg_current_wal_lsn()").await
    }

    /// Bytes of WAL written since `lsn`.
    pub async fn wal_since(&mut self, lsn: &str) -> anyhow::Result<f64> {
        self.db
            .float(&format!(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')::float8"
            ))
            .await
    }

    pub async fn slot_at(&mut self, slot: &str, lsn: &str) -> bool {
        self.db
            .is_true(&format!(
                "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn FROM pg_replication_slots
                  WHERE slot_name = '{slot}'"
            ))
            .await
    }

    pub async fn slot_active(&mut self, slot: &str) -> bool {
        self.db
            .is_true(&format!(
                "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ))
            .await
    }

    pub async fn drop_slot(&mut self, slot: &str) -> anyhow::Result<()> {
        self.db
            .exec(&format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                  WHERE slot_name = '{slot}'"
            ))
            .await
    }

    /// Waits until walhook's slot is confirmed at `lsn`; fails naming
    /// `what` when walhook exits or `limit` passes.
    pub async fn await_slot(
        &mut self,
        walhook: &mut Walhook,
        slot: &str,
        lsn: &str,
        limit: u64,
        what: &str,
    ) -> anyhow::Result<()> {
        let deadline = Deadline::secs(limit);
        while !self.slot_at(slot, lsn).await {
            walhook.ensure_running(what)?;
            deadline.check(what)?;
            nap().await;
        }
        Ok(())
    }

    pub async fn await_streaming(
        &mut self,
        walhook: &mut Walhook,
        slot: &str,
    ) -> anyhow::Result<()> {
        let what = format!("walhook ({slot}) streaming from its slot");
        let deadline = Deadline::secs(60);
        while !self.slot_active(slot).await {
            walhook.ensure_running(&what)?;
            deadline.check(&what)?;
            nap().await;
        }
        Ok(())
    }

    /// The publications of installation `name`, comma-separated.
    pub async fn publications_of(&mut self, name: &str) -> anyhow::Result<String> {
        self.db
            .text(&format!(
                "SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication
                  WHERE pubname = '{name}' OR pubname LIKE '{name}\\_%'"
            ))
            .await
    }

    /// pg_recvlogical from `slot` to `end`, discarding what it reads: the
    /// seconds it took.
    pub async fn recvlogical(
        &mut self,
        slot: &str,
        publications: &str,
        end: &str,
    ) -> anyhow::Result<f64> {
        let mut command = Command::new(&self.tools.recvlogical);
        command
            .args(["-h", "127.0.0.1", "-p", &self.cluster.port().to_string()])
            .args(["-U", "postgres", "-d", "bench"])
            .arg(format!("--slot={slot}"))
            .arg("--start")
            .arg(format!("--endpos={end}"))
            .arg("--no-loop")
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={publications}"))
            .args(["-f", "/dev/null"]);
        let log = self.dir.join(format!("{slot}.recvlogical.log"));
        let start = Instant::now();
        run_logged(
            command,
            &log,
            &format!("pg_recvlogical ({slot}) to {end}"),
            Duration::from_secs(self.knobs.recvlogical_timeout),
        )
        .await?;
        let seconds = start.elapsed().as_secs_f64();
        if !self.slot_at(slot, end).await {
            bail!("pg_recvlogical ({slot}) exited but its slot did not reach {end}");
        }
        Ok(seconds)
    }

    /// Single-statement transactions of `sql` at `rate` per second for
    /// `seconds` (pgbench, 4 clients); fails when pgbench does.
    pub async fn pgbench(
        &mut self,
        name: &str,
        sql: &str,
        rate: u64,
        seconds: u64,
    ) -> anyhow::Result<()> {
        let script = self.dir.join(format!("{name}.pgbench.sql"));
        std::fs::write(&script, format!("{sql}\n")).context("writing the pgbench script")?;
        let mut command = self.pgbench_command(&script, 4, 2, rate, seconds)?;
        command.arg("bench");
        let log = self.dir.join(format!("{name}.pgbench.log"));
        run_logged(
            command,
            &log,
            &format!("pgbench ({name})"),
            Duration::from_secs(seconds + 120),
        )
        .await
    }

    pub fn pgbench_command(
        &self,
        script: &Path,
        clients: u32,
        threads: u32,
        rate: u64,
        seconds: u64,
    ) -> anyhow::Result<Command> {
        let bin = self
            .tools
            .pgbench
            .as_ref()
            .context("pgbench not found (it makes the steady workloads)")?;
        let mut command = Command::new(bin);
        command
            .args([
                "-n",
                "-h",
                "127.0.0.1",
                "-p",
                &self.cluster.port().to_string(),
            ])
            .args(["-U", "postgres"])
            .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
            .args(["-R", &rate.to_string(), "-T", &seconds.to_string()])
            .arg("-f")
            .arg(script);
        Ok(command)
    }

    /// Count, p50, p99 and max (ms) of arrival − the row's
    /// clock_timestamp() over the sink's lines `arrival_us event_id ts`,
    /// computed by PostgreSQL.
    pub async fn latency_of(&mut self, arrivals: &Path) -> anyhow::Result<Latency> {
        self.load_arrivals(arrivals).await?;
        let row = self
            .db
            .rows(
                "SELECT count(*), round(percentile_disc(0.5) WITHIN GROUP (ORDER BY d) / 1000.0, 1),
                        round(percentile_disc(0.99) WITHIN GROUP (ORDER BY d) / 1000.0, 1),
                        round(max(d) / 1000.0, 1)
                   FROM (SELECT arrival_us - (extract(epoch FROM value::timestamptz) * 1000000)::bigint AS d
                           FROM bench_result.arrival) AS s",
            )
            .await?
            .into_iter()
            .next()
            .context("no latency row")?;
        let num = |i: usize| row.get(i).and_then(|v| v.parse::<f64>().ok());
        match (num(0), num(1), num(2), num(3)) {
            (Some(n), Some(p50), Some(p99), Some(max)) if n >= 1.0 => Ok(Latency {
                samples: n as u64,
                p50,
                p99,
                max,
            }),
            _ => bail!("no latency samples in {}", arrivals.display()),
        }
    }

    /// The sink's log into bench_result.arrival (emptied first).
    pub async fn load_arrivals(&mut self, arrivals: &Path) -> anyhow::Result<()> {
        let data = std::fs::read(arrivals)
            .with_context(|| format!("cannot read the sink's log {}", arrivals.display()))?;
        self.db.exec("TRUNCATE bench_result.arrival").await?;
        self.db
            .copy_in(
                "COPY bench_result.arrival FROM STDIN WITH (FORMAT csv, DELIMITER ' ')",
                data,
            )
            .await
            .with_context(|| format!("cannot load the sink's log {}", arrivals.display()))?;
        Ok(())
    }

    /// Errors counted over all hooks of an installation.
    pub async fn usage_errors(&mut self, schema: &str) -> anyhow::Result<i64> {
        self.db
            .int(&format!(
                "SELECT coalesce(sum(total_errors), 0) FROM {schema}.webhook_usage"
            ))
            .await
    }

    pub fn nginx(&self) -> anyhow::Result<&Nginx> {
        self.nginx.as_ref().context("nginx is not running")
    }

    pub fn sink_cert(&self) -> Option<&Cert> {
        if self.knobs.sink_tls {
            self.cert.as_ref()
        } else {
            None
        }
    }
}

pub struct Latency {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Waits for a sink to count `n` requests; fails naming `what` when
/// walhook exits or `limit` passes.
pub async fn await_sink(
    sink: &crate::sink::Sink,
    n: u64,
    walhook: Option<&mut Walhook>,
    limit: u64,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = Deadline::secs(limit);
    let mut walhook = walhook;
    while !sink.at_least(n).await {
        if let Some(w) = walhook.as_deref_mut() {
            w.ensure_running(what)?;
        }
        deadline.check(what)?;
        nap().await;
    }
    Ok(())
}

/// The lab cluster's settings beyond its own: no autovacuum running into
/// the timings, and room for a large backlog of WAL.
pub fn cluster_options() -> ClusterOptions {
    ClusterOptions {
        extra_settings: vec![
            ("autovacuum".into(), "off".into()),
            ("max_wal_size".into(), "4GB".into()),
        ],
        ..Default::default()
    }
}
