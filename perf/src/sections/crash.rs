//! crash: single-row transactions at CRASH_RATE per second to a receiver
//! that takes CRASH_SINK_DELAY_MS per request, while walhook is killed
//! (kill -9, restarted at once) CRASH_KILLS times, each after 1 to
//! CRASH_INTERVAL seconds, so most kills land while walhook is still
//! catching up after the last; then again with a fast PostgreSQL restart,
//! an immediate one and a terminated walsender mixed in. The sink logs the EventId and row id of every delivery: every
//! committed row must have arrived, and duplicates are counted per change.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use walhook_lab::cluster::StopMode;

use crate::bench::Bench;
use crate::process::{log_file, nap, Deadline, Walhook};
use crate::report::{mib, Better};
use crate::sink::Sink;

#[derive(Debug, Clone, Copy)]
enum Disturbance {
    Kill,
    Restart(StopMode),
    TerminateWalsender,
}

/// walhook under disturbance: restarted when it exits on its own (as
/// systemd's Restart=on-failure would), such exits counted.
struct Kept {
    walhook: Walhook,
    exits: u64,
    peak_rss_kib: u64,
}

impl Kept {
    fn keep(&mut self, b: &Bench) -> anyhow::Result<()> {
        if !self.walhook.running() {
            self.exits += 1;
            say!("crash: walhook exited on its own; restarting it");
            self.walhook = b.start_walhook("wh_crash")?;
        }
        Ok(())
    }

    fn note_peak_rss(&mut self) {
        if let Ok(kib) = self.walhook.peak_rss_kib() {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let k = b.knobs.clone();
    b.db.exec("CREATE TABLE bench_crash (id bigserial PRIMARY KEY, phase int NOT NULL, ts timestamptz NOT NULL)")
        .await?;
    let arrivals = b.dir.join("crash.arrivals");
    let args = [
        "--log".into(),
        arrivals.display().to_string(),
        "--field".into(),
        "id".into(),
        "--delay-ms".into(),
        k.crash_sink_delay_ms.to_string(),
    ];
    let sink = Sink::start(&b.tools.sink, &b.dir, "crash", &args, b.sink_cert()).await?;
    b.logs.push(sink.err_log.clone());
    b.install("wh_crash", "bench_crash", &sink.delivery_extra())
        .await?;
    b.add_hook("wh_crash", "crash", &format!("{}/crash", sink.base()), 1)
        .await?;
    let mut kept = Kept {
        walhook: b.start_walhook("wh_crash")?,
        exits: 0,
        peak_rss_kib: 0,
    };
    b.await_streaming(&mut kept.walhook, "wh_crash").await?;

    let phase = Arc::new(AtomicU8::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = start_load(b, phase.clone(), stop.clone())?;
    say!(
        "crash: phase 1: {} tx/s to a receiver taking {} ms, walhook killed {} times, 1-{} s apart",
        k.crash_rate,
        k.crash_sink_delay_ms,
        k.crash_kills,
        k.crash_interval
    );
    let mut gaps = Gaps::new(k.crash_interval);
    for _ in 0..k.crash_kills {
        step(b, &sink, &mut kept, Disturbance::Kill, gaps.next()).await?;
    }
    phase.store(2, Ordering::Relaxed);
    // Phase 2: the kills with the three PostgreSQL disturbances spread among them.
    let mut steps = Vec::new();
    let n = k.crash_kills;
    for i in 1..=n {
        steps.push(Disturbance::Kill);
        if i == n.div_ceil(4) {
            steps.push(Disturbance::Restart(StopMode::Fast));
        }
        if i == n.div_ceil(2) {
            steps.push(Disturbance::Restart(StopMode::Immediate));
        }
        if i == (3 * n).div_ceil(4) {
            steps.push(Disturbance::TerminateWalsender);
        }
    }
    say!("crash: phase 2: {steps:?}");
    for s in steps {
        step(b, &sink, &mut kept, s, gaps.next()).await?;
    }
    stop.store(true, Ordering::Relaxed);
    if tokio::time::timeout(Duration::from_secs(15), &mut load)
        .await
        .is_err()
    {
        // Its pgbench is killed as the task is dropped.
        load.abort();
        say!("crash: the load did not stop within 15 s; its pgbench was killed");
    }

    let end = b.wal_lsn().await?;
    let rows = b.db.int("SELECT count(*) FROM bench_crash").await?;
    if rows <= 0 {
        bail!("crash: pgbench committed no row");
    }
    say!("crash: load stopped after {rows} rows; waiting for walhook to confirm {end}");
    let deadline = Deadline::secs(k.crash_drain_timeout);
    while !b.slot_at("wh_crash", &end).await {
        kept.keep(b)?;
        deadline.check(&format!("crash: walhook confirming {end}"))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kept.note_peak_rss();
    let (exits, peak) = (kept.exits, kept.peak_rss_kib);
    kept.walhook.stop_clean().await?;
    let parked = b.db.int("SELECT count(*) FROM wh_crash.delivery").await?;
    if parked != 0 {
        bail!("crash: {parked} events are parked in wh_crash.delivery (the target never failed)");
    }
    sink.stop().await?;
    b.drop_slot("wh_crash").await?;
    check_deliveries(b, &arrivals, rows, exits, peak).await
}

/// The load: pgbench in short runs until `stop`, so that a run cut by a
/// PostgreSQL restart is followed by the next one.
fn start_load(
    b: &Bench,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let script = b.dir.join("crash.pgbench.sql");
    std::fs::write(
        &script,
        "INSERT INTO bench_crash (phase, ts) VALUES (:phase, clock_timestamp());\n",
    )
    .context("writing the pgbench script")?;
    let log = b.dir.join("crash.pgbench.log");
    // Program and arguments per phase, taken up front: the task must not
    // borrow the bench.
    let mut commands = Vec::new();
    for p in 1..=2u8 {
        let mut command = b.pgbench_command(&script, 2, 1, b.knobs.crash_rate, 3)?;
        command.args(["-D", &format!("phase={p}"), "bench"]);
        let program = command.get_program().to_owned();
        let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        commands.push((program, args));
    }
    Ok(tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let (program, args) =
                &commands[usize::from(phase.load(Ordering::Relaxed).clamp(1, 2) - 1)];
            let Ok((out, err)) = log_file(&log) else {
                break;
            };
            let status = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .status()
                .await;
            if !matches!(status, Ok(s) if s.success()) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }))
}

/// The gaps between disturbances: pseudo-random between 1 s and the
/// longest, the same sequence in every run so runs compare.
struct Gaps {
    longest_ms: u64,
    state: u64,
}

impl Gaps {
    fn new(longest_s: u64) -> Gaps {
        Gaps {
            longest_ms: longest_s.max(1) * 1000,
            state: 0x9e37_79b9,
        }
    }

    fn next(&mut self) -> Duration {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let span = self.longest_ms.saturating_sub(1000) + 1;
        Duration::from_millis(1000 + (self.state >> 33) % span)
    }
}

/// Waits until walhook delivers again since the last step, lets it run
/// `gap`, then disturbs it.
async fn step(
    b: &mut Bench,
    sink: &Sink,
    kept: &mut Kept,
    what: Disturbance,
    gap: Duration,
) -> anyhow::Result<()> {
    let base = sink.requests().await?;
    let deadline = Deadline::secs(120);
    while !sink.at_least(base + 1).await {
        kept.keep(b)?;
        deadline.check("crash: a delivery since the previous disturbance")?;
        nap().await;
    }
    // The disturbance lands mid-stream, at an arbitrary point.
    tokio::time::sleep(gap).await;
    kept.keep(b)?;
    kept.note_peak_rss();
    match what {
        Disturbance::Kill => {
            kept.walhook.kill();
            kept.walhook = b.start_walhook("wh_crash")?;
        }
        Disturbance::Restart(mode) => {
            say!("crash: PostgreSQL stop ({mode:?}), then start");
            b.cluster
                .restart(mode)
                .with_context(|| format!("restarting PostgreSQL after a {mode:?} stop"))?;
        }
        Disturbance::TerminateWalsender => {
            let deadline = Deadline::secs(60);
            while !b.slot_active("wh_crash").await {
                kept.keep(b)?;
                deadline.check("crash: walhook's slot active")?;
                nap().await;
            }
            say!("crash: pg_terminate_backend(walsender of wh_crash)");
            b.db.exec(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                  WHERE slot_name = 'wh_crash' AND active_pid IS NOT NULL",
            )
            .await?;
        }
    }
    Ok(())
}

/// Every committed row delivered, none invented, no EventId for two rows;
/// duplicates per change, per phase.
async fn check_deliveries(
    b: &mut Bench,
    arrivals: &std::path::Path,
    rows: i64,
    exits: u64,
    peak_rss_kib: u64,
) -> anyhow::Result<()> {
    let k = b.knobs.clone();
    b.load_arrivals(arrivals).await?;
    let missing =
        b.db.int(
            "SELECT count(*) FROM bench_crash c
              WHERE NOT EXISTS (SELECT 1 FROM bench_result.arrival a WHERE a.value = c.id::text)",
        )
        .await?;
    if missing > 0 {
        let first =
            b.db.rows(
                "SELECT id, phase, ts FROM bench_crash c
                  WHERE NOT EXISTS (SELECT 1 FROM bench_result.arrival a WHERE a.value = c.id::text)
                  ORDER BY id LIMIT 20",
            )
            .await?;
        eprintln!("crash: rows committed and never delivered (first 20): {first:?}");
        bail!("crash: {missing} of {rows} committed changes never arrived");
    }
    let phantom =
        b.db.int(
            "SELECT count(*) FROM bench_result.arrival a
              WHERE NOT EXISTS (SELECT 1 FROM bench_crash c WHERE c.id::text = a.value)",
        )
        .await?;
    if phantom != 0 {
        bail!("crash: {phantom} deliveries name a row that was never committed");
    }
    let ambiguous =
        b.db.int(
            "SELECT count(*) FROM (SELECT event_id FROM bench_result.arrival
              GROUP BY event_id HAVING count(DISTINCT value) > 1) AS x",
        )
        .await?;
    if ambiguous != 0 {
        bail!("crash: {ambiguous} EventIds were used for more than one change");
    }
    let phases =
        b.db.rows(
            "SELECT c.phase, count(DISTINCT c.id), count(*), count(DISTINCT a.event_id)
               FROM bench_crash c JOIN bench_result.arrival a ON a.value = c.id::text
              GROUP BY c.phase ORDER BY c.phase",
        )
        .await?;
    if phases.is_empty() {
        bail!("crash: no delivery matched a committed row");
    }
    for row in phases {
        let num = |i: usize| {
            row.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (phase, changes, deliveries, distinct) = (num(0) as u64, num(1), num(2), num(3));
        if distinct == 0.0 {
            bail!("crash: phase {phase} has no distinct EventId");
        }
        let dup = 100.0 * (deliveries - distinct) / distinct;
        say!("crash: phase {phase}: {changes} changes, {deliveries} deliveries, {distinct} EventIds, {dup:.2}% duplicates");
        let (figure, rss) = if phase == 1 {
            (
                format!(
                    "kill -9 x{} at ~{} tx/s, {} ms receiver",
                    k.crash_kills, k.crash_rate, k.crash_sink_delay_ms
                ),
                String::new(),
            )
        } else {
            (
                format!("kill -9 x{} + PG fast/immediate/walsender", k.crash_kills),
                mib(peak_rss_kib),
            )
        };
        b.report.row(
            "crash",
            &figure,
            &format!("0 lost, {dup:.2}% duplicates"),
            &format!("{changes} changes, {deliveries} deliveries"),
            &rss,
        );
        b.report.figure(
            &format!("crash.phase{phase}_duplicates_pct"),
            dup,
            "%",
            Better::Lower,
        );
    }
    if exits > 0 {
        b.report.row(
            "crash",
            "  walhook exits on its own (restarted)",
            &exits.to_string(),
            "",
            "",
        );
    }
    Ok(())
}
