//! parked: the healthy hook's backlog rate (PARKED_ROWS rows in one
//! transaction) and latency (LATENCY_RATE single-row transactions/s for
//! PARKED_LAT_SECONDS) beside k hooks in state 3 (every change is parked
//! for them), for each k in PARKED_HOOKS; the delivery table's and WAL's
//! bytes per parked event; then the replay of REPLAY_EVENTS parked events
//! of one hook.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::bench::{await_sink, Bench};
use crate::process::{nap, Deadline};
use crate::report::{mib, rate, Better};
use crate::sink::Sink;

const EMPTY: &str = "TRUNCATE wh_parked.delivery, wh_parked.delivery_payload;
                     DELETE FROM wh_parked.webhook WHERE name LIKE 'parked %'";

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    b.db.exec(
        "CREATE TABLE bench_parked (id bigserial PRIMARY KEY, ts timestamptz NOT NULL,
                                    label text NOT NULL DEFAULT 'an item of the parked workload')",
    )
    .await?;
    let arrivals = b.dir.join("parked.arrivals");
    let args = [
        "--log".into(),
        arrivals.display().to_string(),
        "--field".into(),
        "ts".into(),
    ];
    let sink = Sink::start(&b.tools.sink, &b.dir, "parked", &args, b.sink_cert()).await?;
    b.logs.push(sink.err_log.clone());
    b.install("wh_parked", "bench_parked", &sink.delivery_extra())
        .await?;
    b.add_hook(
        "wh_parked",
        "healthy",
        &format!("{}/healthy", sink.base()),
        1,
    )
    .await?;
    for k in b.knobs.parked_hooks.clone() {
        beside_parked(b, &sink, &arrivals, k).await?;
    }
    replay(b, &sink).await?;
    sink.stop().await?;
    b.drop_slot("wh_parked").await
}

/// The healthy hook beside `k` hooks in state 3.
async fn beside_parked(
    b: &mut Bench,
    sink: &Sink,
    arrivals: &std::path::Path,
    k: u64,
) -> anyhow::Result<()> {
    let (rows, limit) = (b.knobs.parked_rows, b.knobs.walhook_timeout);
    // walhook is stopped: the table starts empty for each case, so its
    // size is this case's parked events alone.
    b.db.exec(EMPTY).await?;
    if k > 0 {
        b.db.exec(&format!(
            "INSERT INTO wh_parked.webhook (name, events, target_url, secret, state)
             SELECT 'parked ' || g, '*', '{}/parked' || g, 'bench-secret-0123456789', 3
               FROM generate_series(1, {k}) AS g",
            sink.base()
        ))
        .await?;
    }
    b.db.exec(&format!(
        "INSERT INTO bench_parked (ts) SELECT clock_timestamp() FROM generate_series(1, {rows})"
    ))
    .await?;
    let end = b.wal_lsn().await?;
    let base = sink.requests().await?;
    say!("parked: {k} hooks in state 3; catching up with {rows} changes");
    let t0 = Instant::now();
    let mut walhook = b.start_walhook("wh_parked")?;
    let what = format!("the healthy hook receiving {rows} changes ({k} parked hooks)");
    await_sink(sink, base + rows, Some(&mut walhook), limit, &what).await?;
    b.await_slot(
        &mut walhook,
        "wh_parked",
        &end,
        limit,
        &format!("walhook confirming {end} ({k} parked hooks)"),
    )
    .await?;
    let seconds = t0.elapsed().as_secs_f64();
    let expect_parked = (k * rows) as i64;
    let parked = b.db.int("SELECT count(*) FROM wh_parked.delivery").await?;
    if parked != expect_parked {
        bail!("parked: {parked} events parked, expected {expect_parked} ({k} hooks in state 3)");
    }
    let wal_bytes =
        b.db.float(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{end}')"
        ))
        .await?;
    let table_bytes =
        b.db.float(
            "SELECT pg_total_relation_size('wh_parked.delivery')
                  + pg_total_relation_size('wh_parked.delivery_payload')",
        )
        .await?;
    let backlog_rate = rate(rows as f64, seconds);

    // The latency of the healthy hook while the others park.
    let lines_before = line_count(arrivals);
    let base = sink.requests().await?;
    let before = b.db.int("SELECT count(*) FROM bench_parked").await?;
    let (tx_rate, lat_seconds) = (b.knobs.latency_rate, b.knobs.parked_lat_seconds);
    b.pgbench(
        "parked",
        "INSERT INTO bench_parked (ts) VALUES (clock_timestamp());",
        tx_rate,
        lat_seconds,
    )
    .await?;
    let committed = b.db.int("SELECT count(*) FROM bench_parked").await? - before;
    if committed <= 0 {
        bail!("parked: pgbench committed no row ({k} parked hooks)");
    }
    let end = b.wal_lsn().await?;
    let what = format!("the healthy hook receiving the steady workload ({k} parked hooks)");
    await_sink(
        sink,
        base + committed as u64,
        Some(&mut walhook),
        120,
        &what,
    )
    .await?;
    b.await_slot(
        &mut walhook,
        "wh_parked",
        &end,
        120,
        &format!("walhook confirming {end} ({k} parked hooks)"),
    )
    .await?;
    let case_arrivals = b.dir.join(format!("parked-{k}.arrivals"));
    copy_lines_after(arrivals, lines_before, &case_arrivals)?;
    let l = b.latency_of(&case_arrivals).await?;
    let hwm = walhook.peak_rss_kib()?;
    walhook.stop_clean().await?;
    say!(
        "parked: {k} hooks: {backlog_rate:.0} changes/s, p99 {:.1} ms; {parked} parked",
        l.p99
    );

    let r = &mut b.report;
    r.row(
        "parked",
        &format!("healthy hook + {k} hook(s) in state 3"),
        &format!("{backlog_rate:.0} changes/s, p99 {:.1} ms", l.p99),
        &format!(
            "p50 {:.1} ms at {:.0} tx/s",
            l.p50,
            rate(committed as f64, lat_seconds as f64)
        ),
        &mib(hwm),
    );
    r.figure(
        &format!("parked.{k}_hooks_changes_per_s"),
        backlog_rate,
        "changes/s",
        Better::Higher,
    );
    r.figure(
        &format!("parked.{k}_hooks_p99_ms"),
        l.p99,
        "ms",
        Better::Lower,
    );
    if k > 0 {
        let per_table = table_bytes / parked as f64;
        let per_wal = wal_bytes / parked as f64;
        r.row(
            "parked",
            &format!("  bytes per parked event ({k} hook(s))"),
            &format!("table {per_table:.0} B"),
            &format!("WAL {per_wal:.0} B (walhook's writes)"),
            "",
        );
        r.figure(
            &format!("parked.{k}_hooks_table_bytes_per_event"),
            per_table,
            "B",
            Better::Lower,
        );
        r.figure(
            &format!("parked.{k}_hooks_wal_bytes_per_event"),
            per_wal,
            "B",
            Better::Lower,
        );
    }
    Ok(())
}

/// One hook in state 3 collects REPLAY_EVENTS parked events, then goes back
/// to 1; timed until the delivery table holds none of its rows and the sink
/// counted them all.
async fn replay(b: &mut Bench, sink: &Sink) -> anyhow::Result<()> {
    let (events, limit) = (b.knobs.replay_events, b.knobs.walhook_timeout);
    b.db.exec(EMPTY).await?;
    let hook = b
        .add_hook(
            "wh_parked",
            "parked replay",
            &format!("{}/replay", sink.base()),
            3,
        )
        .await?;
    b.db.exec(&format!(
        "INSERT INTO bench_parked (ts) SELECT clock_timestamp() FROM generate_series(1, {events})"
    ))
    .await?;
    let end = b.wal_lsn().await?;
    let base = sink.requests().await?;
    say!("parked: parking {events} events for webhook {hook}");
    let mut walhook = b.start_walhook("wh_parked")?;
    let what = format!("the healthy hook receiving {events} changes (replay setup)");
    await_sink(sink, base + events, Some(&mut walhook), limit, &what).await?;
    b.await_slot(
        &mut walhook,
        "wh_parked",
        &end,
        limit,
        &format!("walhook confirming {end} (replay setup)"),
    )
    .await?;
    let parked =
        b.db.int(&format!(
            "SELECT count(*) FROM wh_parked.delivery WHERE webhook_id = {hook}"
        ))
        .await?;
    if parked != events as i64 {
        bail!("replay: {parked} events parked for webhook {hook}, expected {events}");
    }
    let base = sink.requests().await?;
    say!("parked: webhook {hook} back to state 1; replaying {events} events");
    let t0 = Instant::now();
    b.db.exec(&format!(
        "UPDATE wh_parked.webhook SET state = 1 WHERE webhook_id = {hook}"
    ))
    .await?;
    let what = format!("the replay of {events} parked events");
    let deadline = Deadline::secs(limit);
    loop {
        if sink.at_least(base + events).await {
            let left =
                b.db.text(&format!(
                    "SELECT count(*) FROM wh_parked.delivery WHERE webhook_id = {hook}"
                ))
                .await;
            if matches!(left.as_deref(), Ok("0")) {
                break;
            }
        }
        walhook.ensure_running(&what)?;
        deadline.check(&what)?;
        nap().await;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let delivered = sink.requests().await? - base;
    if delivered != events {
        bail!("replay: the sink counted {delivered} requests, expected {events}");
    }
    let hwm = walhook.peak_rss_kib()?;
    walhook.stop_clean().await?;
    let errors = b.usage_errors("wh_parked").await?;
    if errors != 0 {
        bail!("parked: webhook_usage counts {errors} errors");
    }
    let r = rate(events as f64, seconds);
    say!("parked: replay {seconds:.3}s, {r:.0} events/s");
    b.report.row(
        "parked",
        &format!("replay of {events} parked events"),
        &format!("{r:.0} events/s"),
        &format!("{seconds:.3} s until none left"),
        &mib(hwm),
    );
    b.report
        .figure("parked.replay_events_per_s", r, "events/s", Better::Higher);
    Ok(())
}

fn line_count(path: &std::path::Path) -> usize {
    std::fs::read(path).map_or(0, |d| d.iter().filter(|&&c| c == b'\n').count())
}

/// The lines of `from` after its first `skip`, into `to`.
fn copy_lines_after(
    from: &std::path::Path,
    skip: usize,
    to: &std::path::Path,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(from).with_context(|| format!("reading {}", from.display()))?;
    let mut out =
        std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    for line in text.lines().skip(skip) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
