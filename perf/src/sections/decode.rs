//! decode: no hook. walhook decodes DECODE_ROWS inserts (one transaction)
//! and DECODE_UPDATES updates (another) and confirms the end, against
//! pg_recvlogical on its own slot over the same WAL.

use std::time::Instant;

use crate::bench::Bench;
use crate::report::{mib, rate, ratio, Better};

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let (rows, updates) = (b.knobs.decode_rows, b.knobs.decode_updates);
    let n = (rows + updates) as f64;
    b.db.exec(
        "CREATE TABLE bench_decode (id int PRIMARY KEY, n int NOT NULL, label text NOT NULL)",
    )
    .await?;
    b.install("wh_decode", "bench_decode", "").await?;
    b.db.exec("SELECT pg_create_logical_replication_slot('bench_recv_decode', 'pgoutput')")
        .await?;
    say!("decode: {rows} inserts + {updates} updates, no reader running");
    b.db.exec(&format!(
        "INSERT INTO bench_decode SELECT g, g, 'item ' || g FROM generate_series(1, {rows}) AS g"
    ))
    .await?;
    b.db.exec(&format!(
        "UPDATE bench_decode SET n = n + 1, label = label || ' upd' WHERE id <= {updates}"
    ))
    .await?;
    let end = b.wal_lsn().await?;
    let publications = b.publications_of("wh_decode").await?;
    let recv_seconds = b
        .recvlogical("bench_recv_decode", &publications, &end)
        .await?;
    b.drop_slot("bench_recv_decode").await?;
    let recv_rate = rate(n, recv_seconds);
    say!("decode: pg_recvlogical {recv_seconds:.3}s, {recv_rate:.0} changes/s");

    let start = Instant::now();
    let mut walhook = b.start_walhook("wh_decode")?;
    let limit = b.knobs.walhook_timeout;
    b.await_slot(
        &mut walhook,
        "wh_decode",
        &end,
        limit,
        &format!("walhook (decode, no hook) confirming {end}"),
    )
    .await?;
    let seconds = start.elapsed().as_secs_f64();
    let hwm = walhook.peak_rss_kib()?;
    let cpu_us = walhook.cpu_seconds()? * 1e6 / n;
    walhook.stop_clean().await?;
    b.drop_slot("wh_decode").await?;
    let walhook_rate = rate(n, seconds);
    say!("decode: walhook {seconds:.3}s, {walhook_rate:.0} changes/s");
    b.carry.decode_us = Some(cpu_us);

    let r = &mut b.report;
    r.row(
        "decode",
        &format!("walhook, no hook ({n} changes)"),
        &format!("{walhook_rate:.0} changes/s"),
        &format!(
            "pg_recvlogical {recv_rate:.0}/s (ratio {})",
            ratio(walhook_rate, recv_rate)
        ),
        &mib(hwm),
    );
    r.figure(
        "decode.walhook_changes_per_s",
        walhook_rate,
        "changes/s",
        Better::Higher,
    );
    r.figure(
        "decode.pg_recvlogical_changes_per_s",
        recv_rate,
        "changes/s",
        Better::Higher,
    );
    r.figure(
        "decode.walhook_cpu_us_per_change",
        cpu_us,
        "µs",
        Better::Lower,
    );
    r.figure(
        "decode.walhook_peak_rss_kib",
        hwm as f64,
        "KiB",
        Better::Lower,
    );
    Ok(())
}
