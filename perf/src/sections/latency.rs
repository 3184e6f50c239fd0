//! latency: single-row transactions at LATENCY_RATE per second for
//! LATENCY_SECONDS, each row carrying clock_timestamp(); the sink logs when
//! each arrived, and PostgreSQL computes arrival − commit over them all.
//!
//! The same run measures what walhook's bookkeeping costs the host: the
//! WAL written per application transaction with walhook delivering, less
//! that of the same transactions into an unpublished twin table with
//! walhook stopped, and the CPU of walhook's SQL sessions (and, for
//! scale, of its walsender) per second of load.

use anyhow::bail;

use crate::bench::{await_sink, Bench};
use crate::procfs::cpu_seconds;
use crate::report::{mib, rate, Better};
use crate::sink::Sink;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let (tx_rate, seconds) = (b.knobs.latency_rate, b.knobs.latency_seconds);
    b.db.exec(
        "CREATE TABLE bench_lat (id bigserial PRIMARY KEY, ts timestamptz NOT NULL,
                                 label text NOT NULL DEFAULT 'latency probe')",
    )
    .await?;
    let arrivals = b.dir.join("latency.arrivals");
    let args = [
        "--log".into(),
        arrivals.display().to_string(),
        "--field".into(),
        "ts".into(),
    ];
    // The application's own WAL per transaction, walhook stopped: the same
    // row into a table no publication names.
    b.db.exec(
        "CREATE TABLE bench_lat_alone (id bigserial PRIMARY KEY, ts timestamptz NOT NULL,
                                       label text NOT NULL DEFAULT 'latency probe')",
    )
    .await?;
    let alone_seconds = seconds.clamp(3, 10);
    let before = b.wal_lsn().await?;
    b.pgbench(
        "latency_alone",
        "INSERT INTO bench_lat_alone (ts) VALUES (clock_timestamp());",
        tx_rate,
        alone_seconds,
    )
    .await?;
    let alone_rows = b.db.int("SELECT count(*) FROM bench_lat_alone").await?;
    if alone_rows <= 0 {
        bail!("latency: pgbench committed no row into bench_lat_alone");
    }
    let app_wal = b.wal_since(&before).await? / alone_rows as f64;
    let sink = Sink::start(&b.tools.sink, &b.dir, "latency", &args, b.sink_cert()).await?;
    b.logs.push(sink.err_log.clone());
    b.install("wh_latency", "bench_lat", &sink.delivery_extra())
        .await?;
    b.add_hook(
        "wh_latency",
        "latency",
        &format!("{}/latency", sink.base()),
        1,
    )
    .await?;
    let mut walhook = b.start_walhook("wh_latency")?;
    b.await_streaming(&mut walhook, "wh_latency").await?;
    say!("latency: {tx_rate} single-row transactions/s for {seconds}s");
    let sessions = walhook_backends(b).await?;
    let cpu_before = sessions.cpu()?;
    let before = b.wal_lsn().await?;
    b.pgbench(
        "latency",
        "INSERT INTO bench_lat (ts) VALUES (clock_timestamp());",
        tx_rate,
        seconds,
    )
    .await?;
    let rows = b.db.int("SELECT count(*) FROM bench_lat").await?;
    if rows <= 0 {
        bail!("latency: pgbench committed no row");
    }
    await_sink(
        &sink,
        rows as u64,
        Some(&mut walhook),
        120,
        &format!("the sink receiving all {rows} latency probes"),
    )
    .await?;
    // walhook's writes for these rows are done once the slot is confirmed
    // past them (it confirms only what it recorded).
    let end = b.wal_lsn().await?;
    b.await_slot(
        &mut walhook,
        "wh_latency",
        &end,
        60,
        "the slot confirmed past the latency run",
    )
    .await?;
    let own_wal = b.wal_since(&before).await? / rows as f64 - app_wal;
    let cpu = sessions.cpu()?.since(&cpu_before, seconds as f64);
    let hwm = walhook.peak_rss_kib()?;
    walhook.stop_clean().await?;
    sink.stop().await?;
    b.drop_slot("wh_latency").await?;
    let l = b.latency_of(&arrivals).await?;
    say!(
        "latency: {} samples, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.samples,
        l.p50,
        l.p99,
        l.max
    );
    let achieved = rate(rows as f64, seconds as f64);
    b.report.row(
        "latency",
        &format!("commit->receipt at {achieved:.0} tx/s"),
        &format!("p50 {:.1} ms, p99 {:.1} ms", l.p50, l.p99),
        &format!("max {:.1} ms, {} samples", l.max, l.samples),
        &mib(hwm),
    );
    b.report
        .figure("latency.p50_ms", l.p50, "ms", Better::Lower);
    b.report
        .figure("latency.p99_ms", l.p99, "ms", Better::Lower);
    b.report
        .figure("latency.peak_rss_kib", hwm as f64, "KiB", Better::Lower);
    say!(
        "host cost: {own_wal:.0} B of walhook's WAL per transaction against the \
         application's {app_wal:.0} B; SQL sessions {:.1} ms CPU/s, walsender {:.1} ms/s",
        cpu.sql_ms_per_s,
        cpu.walsender_ms_per_s
    );
    b.report.row(
        "host cost",
        &format!("walhook's own WAL per transaction at {achieved:.0} tx/s"),
        &format!("{own_wal:.0} B ({:.1}%)", 100.0 * own_wal / app_wal),
        &format!("application {app_wal:.0} B per transaction alone; goal <= 5%"),
        "",
    );
    b.report.row(
        "host cost",
        &format!("walhook's SQL sessions' CPU at {achieved:.0} tx/s"),
        &format!("{:.1} ms/s", cpu.sql_ms_per_s),
        &format!(
            "walsender {:.1} ms/s; goal <= 20 ms/s",
            cpu.walsender_ms_per_s
        ),
        "",
    );
    b.report.figure(
        "host_cost.own_wal_bytes_per_tx",
        own_wal,
        "B",
        Better::Lower,
    );
    b.report.figure(
        "host_cost.own_wal_share",
        own_wal / app_wal,
        "ratio",
        Better::Lower,
    );
    b.report.figure(
        "host_cost.sql_cpu_ms_per_s",
        cpu.sql_ms_per_s,
        "ms/s",
        Better::Lower,
    );
    Ok(())
}

/// walhook's server processes: its SQL sessions and its walsender.
struct Backends {
    sql: Vec<u32>,
    walsender: Vec<u32>,
}

/// CPU seconds used so far by each kind of backend.
struct BackendCpu {
    sql: f64,
    walsender: f64,
}

/// CPU per second of load, in milliseconds.
struct CpuRate {
    sql_ms_per_s: f64,
    walsender_ms_per_s: f64,
}

async fn walhook_backends(b: &mut Bench) -> anyhow::Result<Backends> {
    let rows =
        b.db.rows(
            "SELECT pid, backend_type FROM pg_stat_activity \
              WHERE application_name LIKE 'walhook%' AND pid <> pg_backend_pid()",
        )
        .await?;
    let mut backends = Backends {
        sql: Vec::new(),
        walsender: Vec::new(),
    };
    for row in rows {
        let pid: u32 = row[0].parse()?;
        match row[1].as_str() {
            "walsender" => backends.walsender.push(pid),
            _ => backends.sql.push(pid),
        }
    }
    if backends.sql.is_empty() || backends.walsender.is_empty() {
        bail!(
            "host cost: walhook's backends not found in pg_stat_activity (sql {:?}, walsender \
             {:?})",
            backends.sql,
            backends.walsender
        );
    }
    Ok(backends)
}

impl Backends {
    /// Fails when a backend ended: its CPU would be missing from the sum.
    fn cpu(&self) -> anyhow::Result<BackendCpu> {
        let sum = |pids: &[u32]| -> anyhow::Result<f64> {
            pids.iter().map(|&pid| cpu_seconds(pid)).sum()
        };
        Ok(BackendCpu {
            sql: sum(&self.sql)?,
            walsender: sum(&self.walsender)?,
        })
    }
}

impl BackendCpu {
    fn since(&self, before: &BackendCpu, seconds: f64) -> CpuRate {
        CpuRate {
            sql_ms_per_s: 1000.0 * (self.sql - before.sql) / seconds,
            walsender_ms_per_s: 1000.0 * (self.walsender - before.walsender) / seconds,
        }
    }
}
