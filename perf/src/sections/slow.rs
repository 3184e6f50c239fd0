//! slow: one hook whose target answers every request after SLOW_DELAY_MS;
//! SLOW_ROWS new rows in one transaction, timed from its commit until the
//! sink answered them all. Both ends are clock readings, not polls:
//! PostgreSQL's clock right after the COMMIT, and the sink's own record of
//! its last answer.
//!
//! Then the same burst to a hook that has just delivered SLOW_ROWS rows to
//! a target answering at once: once after its URL moved to the slow
//! target (another port: another origin), once after that fast target
//! itself slowed to SLOW_DELAY_MS. Each is compared with the fresh hook's
//! time: a limit held against the fast target's round trips shows as a
//! longer one.

use anyhow::bail;

use crate::bench::{await_sink, Bench};
use crate::process::Walhook;
use crate::report::{mib, rate, ratio, Better};
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
    let fast = Sink::start(&b.tools.sink, &b.dir, "slow-fast", &[], b.sink_cert()).await?;
    b.logs.push(fast.err_log.clone());
    b.install("wh_slow", "bench_slow", &sink.delivery_extra())
        .await?;
    let hook = b
        .add_hook("wh_slow", "slow", &format!("{}/slow", sink.base()), 1)
        .await?;
    let mut walhook = b.start_walhook("wh_slow")?;
    b.await_streaming(&mut walhook, "wh_slow").await?;
    say!("slow: {rows} rows in one transaction, target answering after {delay} ms");
    let mut burst = Burst {
        rows,
        next_id: 1,
        walhook: &mut walhook,
    };
    let committed = burst.commit(b).await?;
    burst
        .delivered(
            b,
            &sink,
            rows,
            &format!("the slow target answering all {rows} requests"),
        )
        .await?;
    let seconds = sink.seconds_since(committed, "last_answer_us").await?;
    let first = sink.seconds_since(committed, "first_arrival_us").await?;
    let hwm = burst.walhook.peak_rss_kib()?;

    // The hook delivers to the fast target first, then moves to the slow
    // one. The URL changes in a transaction of its own, which walhook
    // applies before the rows committed after it.
    say!("slow: the same hook, {rows} rows to a target answering at once, then moved to the slow one");
    let set_url = |url: String| {
        format!("UPDATE wh_slow.webhook SET target_url = '{url}' WHERE webhook_id = {hook}")
    };
    b.db.exec(&set_url(format!("{}/fast", fast.base()))).await?;
    burst.commit(b).await?;
    burst
        .delivered(b, &fast, rows, "the fast target answering the warm-up")
        .await?;
    b.db.exec(&set_url(format!("{}/slow", sink.base()))).await?;
    let committed = burst.commit(b).await?;
    burst
        .delivered(
            b,
            &sink,
            2 * rows,
            "the slow target answering the moved hook",
        )
        .await?;
    let moved = sink.seconds_since(committed, "last_answer_us").await?;

    // Back to the fast target (its own URL, a new warm-up there), which
    // then slows down for good.
    say!("slow: the same hook, {rows} rows to the fast target, which then slows to {delay} ms");
    b.db.exec(&set_url(format!("{}/fast", fast.base()))).await?;
    burst.commit(b).await?;
    burst
        .delivered(b, &fast, 2 * rows, "the fast target answering the warm-up")
        .await?;
    fast.set_delay(delay).await?;
    let committed = burst.commit(b).await?;
    burst
        .delivered(b, &fast, 3 * rows, "the slowed target answering")
        .await?;
    let slowed = fast.seconds_since(committed, "last_answer_us").await?;

    let hwm_after = walhook.peak_rss_kib()?;
    walhook.stop_clean().await?;
    let errors = b.usage_errors("wh_slow").await?;
    if errors != 0 {
        bail!("slow: webhook_usage counts {errors} errors");
    }
    sink.stop().await?;
    fast.stop().await?;
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
    for (key, what, took) in [
        ("moved", "moved from a fast target", moved),
        ("slowed", "fast target slowed to", slowed),
    ] {
        let r = rate(rows as f64, took);
        say!(
            "slow ({key}): {took:.3}s, {r:.0} changes/s, {}x the fresh hook's time",
            ratio(took, seconds)
        );
        let what = match key {
            "moved" => format!("{what} to {delay} ms, {rows} rows"),
            _ => format!("{what} {delay} ms, {rows} rows"),
        };
        b.report.row(
            "slow",
            &what,
            &format!("{r:.0} changes/s"),
            &format!("{}x a fresh hook's time", ratio(took, seconds)),
            &mib(hwm_after),
        );
        b.report.figure(
            &format!("slow.{key}_changes_per_s"),
            r,
            "changes/s",
            Better::Higher,
        );
        if seconds > 0.0 {
            b.report.figure(
                &format!("slow.{key}_time_ratio"),
                took / seconds,
                "x",
                Better::Lower,
            );
        }
    }
    Ok(())
}

/// The section's transactions of `rows` new rows, and the walhook that
/// delivers them.
struct Burst<'a> {
    rows: u64,
    next_id: u64,
    walhook: &'a mut Walhook,
}

impl Burst<'_> {
    /// Commit the next `rows` rows; PostgreSQL's clock right after the
    /// COMMIT, read in the same round trip.
    async fn commit(&mut self, b: &mut Bench) -> anyhow::Result<f64> {
        let (from, to) = (self.next_id, self.next_id + self.rows - 1);
        self.next_id = to + 1;
        b.db.float(&format!(
            "BEGIN;
             INSERT INTO bench_slow SELECT g, g, 'item ' || g FROM generate_series({from}, {to}) AS g;
             COMMIT;
             SELECT extract(epoch FROM clock_timestamp())"
        ))
        .await
    }

    /// Wait until `sink` has answered `count` requests in all.
    async fn delivered(
        &mut self,
        b: &Bench,
        sink: &Sink,
        count: u64,
        what: &str,
    ) -> anyhow::Result<()> {
        await_sink(
            sink,
            count,
            Some(self.walhook),
            b.knobs.walhook_timeout,
            what,
        )
        .await
    }
}
