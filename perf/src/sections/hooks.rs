//! The HOOKS modes, each run alone.
//!
//! `compare`, the cost of matching: the same workload four times, each on
//! a fresh slot created after the webhook table was filled for the case (so
//! the hooks stand from the slot's first change on): no hook; HOOK_COUNT
//! hooks none of which matches bench_item (each `nomatchN.created,
//! otherN.*`); the same plus one hook `bench_item.*` at nginx; that hook
//! alone. pg_recvlogical reads the first case's WAL as the yardstick.
//!
//! `fanout`: FANOUT_HOOKS hooks, all `bench_item.*`, each its own URL on
//! nginx, so that each change is sent FANOUT_HOOKS times.

use std::time::Instant;

use anyhow::{bail, Context};

use crate::bench::Bench;
use crate::catch_up::{await_caught_up, calls_of, Backlog};
use crate::report::{rate, ratio, Better};

/// Requests walhook has counted over all hooks: "calls errors".
const CALLS_COUNTED: &str =
    "SELECT coalesce(sum(total_calls), 0), coalesce(sum(total_errors), 0) FROM walhook.webhook_usage";

#[derive(Clone, Copy, PartialEq)]
enum Case {
    None,
    NoMatch,
    NoMatchPlusOne,
    One,
    FanOut,
}

impl Case {
    fn key(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::NoMatch => "nomatch",
            Case::NoMatchPlusOne => "nomatch+one",
            Case::One => "one",
            Case::FanOut => "fanout",
        }
    }
}

struct Measured {
    rate: f64,
    seconds: f64,
    hwm_kib: u64,
    cpu: f64,
    requests: u64,
}

pub async fn run(b: &mut Bench, mode: &str) -> anyhow::Result<()> {
    let config = b.walhook_config("walhook", "", "bench_item");
    std::fs::write(b.config_path("walhook"), config).context("writing walhook.toml")?;
    say!("walhook setup");
    b.setup("walhook").await?;
    let cases: &[Case] = if mode == "fanout" {
        &[Case::FanOut]
    } else {
        &[Case::None, Case::NoMatch, Case::NoMatchPlusOne, Case::One]
    };
    let mut recv_rate = None;
    let mut results = Vec::new();
    for &case in cases {
        results.push(run_case(b, case, &mut recv_rate).await?);
    }
    let k = b.knobs.clone();
    let n = k.expected();
    let mut text = String::new();
    if mode == "fanout" {
        let m = &results[0];
        let per_s = rate(m.requests as f64, m.seconds);
        text += "================ walhook benchmark: fan-out ================\n";
        text += &format!(
            "workload        : {} inserts + {} updates = {n} changes of bench_item\n",
            k.rows, k.updates
        );
        text += &format!(
            "hooks           : {}, all 'bench_item.*', each its own URL on nginx\n",
            k.fanout_hooks
        );
        text += &format!(
            "requests        : {} delivered in {:.3} s: {per_s:.0} requests/s\n",
            m.requests, m.seconds
        );
        text += &format!("changes         : {:.0} changes/s\n", m.rate);
        // CPU per request: requests/s alone reads better on an idle
        // machine; this stays comparable between busy runs.
        let cpu_us = m.cpu * 1e6 / m.requests.max(1) as f64;
        text += &format!(
            "walhook         : peak RSS {} MiB, CPU {:.2} s, {cpu_us:.1} us CPU per request\n",
            m.hwm_kib / 1024,
            m.cpu
        );
        text += "============================================================\n";
        b.report
            .figure("fanout.requests_per_s", per_s, "requests/s", Better::Higher);
        b.report
            .figure("fanout.changes_per_s", m.rate, "changes/s", Better::Higher);
        b.report
            .figure("fanout.cpu_us_per_request", cpu_us, "us", Better::Lower);
        b.report.figure(
            "fanout.peak_rss_kib",
            m.hwm_kib as f64,
            "KiB",
            Better::Lower,
        );
    } else {
        let recv = recv_rate.context("pg_recvlogical was not measured")?;
        let r1 = results[1].rate / results[0].rate;
        let r2 = results[2].rate / results[3].rate;
        let verdict = |r: f64| {
            if r >= 0.9 {
                "meets the goal (>= 0.9)"
            } else {
                "BELOW the goal (>= 0.9)"
            }
        };
        let hooks = k.hook_count;
        text += "================ walhook benchmark: the cost of matching ================\n";
        text += &format!(
            "workload        : {} inserts + {} updates = {n} changes of bench_item, per case\n",
            k.rows, k.updates
        );
        text += &format!("pg_recvlogical  : {recv:.0} changes/s (first case's WAL)\n");
        text += &format!(
            "{:<40} {:>10} {:>9} {:>9} {:>9}\n",
            "case", "changes/s", "seconds", "peak RSS", "CPU"
        );
        let labels = [
            "no hook".to_owned(),
            format!("{hooks} hooks, none matching"),
            format!("{hooks} hooks + 1 matching (delivered)"),
            "1 hook matching (delivered)".to_owned(),
        ];
        for (label, m) in labels.iter().zip(&results) {
            text += &format!(
                "{label:<40} {:>10.0} {:>9.3} {:>5} MiB {:>7.2} s\n",
                m.rate,
                m.seconds,
                m.hwm_kib / 1024,
                m.cpu
            );
        }
        text += &format!(
            "{hooks} none matching / no hook      : {}   {}\n",
            ratio(results[1].rate, results[0].rate),
            verdict(r1)
        );
        text += &format!(
            "{hooks} + 1 matching / 1 hook alone  : {}   {}\n",
            ratio(results[2].rate, results[3].rate),
            verdict(r2)
        );
        text += "Each time includes walhook's start-up and up to ~1.2 s of confirmation\n";
        text += "delay: use ROWS=300000 UPDATES=150000 or more so that they weigh little.\n";
        text += "==========================================================================\n";
        for (case, m) in cases.iter().zip(&results) {
            b.report.figure(
                &format!("compare.{}_changes_per_s", case.key()),
                m.rate,
                "changes/s",
                Better::Higher,
            );
        }
        b.report.figure(
            "compare.pg_recvlogical_changes_per_s",
            recv,
            "changes/s",
            Better::Higher,
        );
        b.report
            .figure("compare.nomatch_over_none", r1, "ratio", Better::Higher);
        b.report.figure(
            "compare.nomatch_plus_one_over_one",
            r2,
            "ratio",
            Better::Higher,
        );
    }
    b.report.blocks.push(text);
    Ok(())
}

async fn run_case(
    b: &mut Bench,
    case: Case,
    recv_rate: &mut Option<f64>,
) -> anyhow::Result<Measured> {
    let k = b.knobs.clone();
    let n = k.expected();
    // A fresh slot per case, created once the hooks stand.
    b.drop_slot("walhook").await?;
    b.db.exec("TRUNCATE bench_item").await?;
    let requests = fill_webhook_table(b, case).await?;
    b.setup("walhook")
        .await
        .with_context(|| format!("case {}", case.key()))?;
    if case == Case::None {
        b.db.exec("SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')")
            .await?;
    }
    let hooks = b.db.int("SELECT count(*) FROM walhook.webhook").await?;
    say!(
        "case {}: {hooks} hooks; workload: {} inserts, {} updates",
        case.key(),
        k.rows,
        k.updates
    );
    b.db.exec(&format!(
        "INSERT INTO bench_item (id, n, label) SELECT g, g, 'item ' || g FROM generate_series(1, {}) AS g",
        k.rows
    ))
    .await?;
    b.db.exec(&format!(
        "UPDATE bench_item SET n = n + 1, label = label || ' upd' WHERE id <= {}",
        k.updates
    ))
    .await?;
    let end = b.wal_lsn().await?;
    if case == Case::None {
        let seconds = b
            .recvlogical("bench_recvlogical", "walhook,walhook_keyless", &end)
            .await?;
        b.drop_slot("bench_recvlogical").await?;
        let r = rate(n as f64, seconds);
        say!("pg_recvlogical: {seconds:.3}s, {r:.0} changes/s");
        *recv_rate = Some(r);
    }
    let nginx_base = b.nginx()?.requests().await?;
    let t0 = Instant::now();
    let log = format!("walhook-{}", case.key());
    let mut walhook = crate::process::Walhook::start(
        &b.tools.walhook,
        &log,
        &b.config_path("walhook"),
        &b.dir.join(format!("{log}.log")),
    )?;
    b.logs.push(b.dir.join(format!("{log}.log")));
    let backlog = Backlog {
        slot: "walhook",
        end: &end,
        requests,
        usage_sql: CALLS_COUNTED,
        what: &format!("case {}", case.key()),
    };
    let caught = await_caught_up(b, &mut walhook, t0, nginx_base, &backlog).await?;
    let hwm_kib = walhook.peak_rss_kib()?;
    let cpu = walhook.cpu_seconds()?;
    walhook.stop().await?;
    // Statistics are flushed at the stop at the latest.
    let (calls, errors) = calls_of(b, CALLS_COUNTED).await.unwrap_or((-1, -1));
    if calls != requests as i64 || errors != 0 {
        bail!(
            "case {}: webhook_usage counts {calls} calls and {errors} errors, expected {requests} and 0",
            case.key()
        );
    }
    let seconds = caught.seconds();
    let r = rate(n as f64, seconds);
    say!("case {}: {seconds:.3}s, {r:.0} changes/s", case.key());
    Ok(Measured {
        rate: r,
        seconds,
        hwm_kib,
        cpu,
        requests,
    })
}

/// The rows of the webhook table for a case: the requests the receiver
/// must get.
async fn fill_webhook_table(b: &mut Bench, case: Case) -> anyhow::Result<u64> {
    let k = b.knobs.clone();
    let url = b.nginx()?.url();
    b.db.exec(
        "DELETE FROM walhook.webhook; DELETE FROM walhook.webhook_usage;
         DELETE FROM walhook.delivery; DELETE FROM walhook.registry_snapshot",
    )
    .await?;
    let mut requests = 0;
    if case == Case::FanOut {
        b.db.exec(&format!(
            "INSERT INTO walhook.webhook (name, events, target_url, secret)
             SELECT 'fan-out ' || g, 'bench_item.*', '{url}/fan' || g, 'secret of hook ' || g
               FROM generate_series(1, {}) AS g",
            k.fanout_hooks
        ))
        .await?;
        requests = k.expected() * k.fanout_hooks;
    }
    if matches!(case, Case::NoMatch | Case::NoMatchPlusOne) {
        b.db.exec(&format!(
            "INSERT INTO walhook.webhook (name, events, target_url, secret)
             SELECT 'tenant ' || g, 'nomatch' || g || '.created, other' || g || '.*',
                    '{url}/tenant' || g, 'secret of hook ' || g
               FROM generate_series(1, {}) AS g",
            k.hook_count
        ))
        .await?;
    }
    if matches!(case, Case::One | Case::NoMatchPlusOne) {
        b.db.exec(&format!(
            "INSERT INTO walhook.webhook (name, events, target_url, secret)
             VALUES ('bench', 'bench_item.*', '{url}', 'bench-secret-0123456789')"
        ))
        .await?;
        requests = k.expected();
    }
    Ok(requests)
}
