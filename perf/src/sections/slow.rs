//! slow: one hook whose target answers every request after SLOW_DELAY_MS;
//! SLOW_ROWS new rows in one transaction, timed from its commit until the
//! sink answered them all. Both ends are clock readings, not polls:
//! PostgreSQL's clock right after the COMMIT, and the sink's own record of
//! its last answer.

use anyhow::bail;

use crate::bench::{await_sink, Bench};
use crate::report::{mib, rate, Better};
use crate::sink::Sink;

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let (rows, delay) = (b.knobs.slow_rows, b.knobs.slow_delay_ms);
    b.db.exec("CREATE TABLE bench_slow (id int PRIMARY KEY, n int NOT NULL, label text NOT NULL)")
        .await?;
    let sink = Sink::start(
        &b.tools.sink,
        &b.dir,
        "slow",
        &["--delay-ms".into(), delay.to_string()],
        b.sink_cert(),
    )
    .await?;
    b.logs.push(sink.err_log.clone());
    b.install("wh_slow", "bench_slow", &sink.delivery_extra())
        .await?;
    b.add_hook("wh_slow", "slow", &format!("{}/slow", sink.base()), 1)
        .await?;
    let mut walhook = b.start_walhook("wh_slow")?;
    b.await_streaming(&mut walhook, "wh_slow").await?;
    say!("slow: {rows} rows in one transaction, target answering after {delay} ms");
    // The clock is read in the same round trip, right after the COMMIT.
    let committed =
        b.db.float(&format!(
            "BEGIN;
             INSERT INTO bench_slow SELECT g, g, 'item ' || g FROM generate_series(1, {rows}) AS g;
             COMMIT;
             SELECT extract(epoch FROM clock_timestamp())"
        ))
        .await?;
    let limit = b.knobs.walhook_timeout;
    await_sink(
        &sink,
        rows,
        Some(&mut walhook),
        limit,
        &format!("the slow target answering all {rows} requests"),
    )
    .await?;
    let seconds = sink.seconds_since(committed, "last_answer_us").await?;
    let first = sink.seconds_since(committed, "first_arrival_us").await?;
    let hwm = walhook.peak_rss_kib()?;
    walhook.stop_clean().await?;
    let errors = b.usage_errors("wh_slow").await?;
    if errors != 0 {
        bail!("slow: webhook_usage counts {errors} errors");
    }
    sink.stop().await?;
    b.drop_slot("wh_slow").await?;
    let r = rate(rows as f64, seconds);
    let max = b.knobs.concurrency_max();
    let ceiling = match (max * 1000).checked_div(delay) {
        Some(per_s) => format!("{per_s}/s at concurrency {max}"),
        None => "no delay".into(),
    };
    say!(
        "slow: {seconds:.3}s, {r:.0} changes/s; the first request arrived {:.0} ms after the commit",
        first * 1000.0
    );
    b.report.row(
        "slow",
        &format!("{delay} ms target, {rows} rows in 1 tx"),
        &format!("{r:.0} changes/s"),
        &format!("ceiling {ceiling}"),
        &mib(hwm),
    );
    b.report
        .figure("slow.changes_per_s", r, "changes/s", Better::Higher);
    b.report
        .figure("slow.first_request_ms", first * 1000.0, "ms", Better::Lower);
    Ok(())
}
