//! latency: single-row transactions at LATENCY_RATE per second for
//! LATENCY_SECONDS, each row carrying clock_timestamp(); the sink logs when
//! each arrived, and PostgreSQL computes arrival − commit over them all.

use anyhow::bail;

use crate::bench::{await_sink, Bench};
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
    Ok(())
}
