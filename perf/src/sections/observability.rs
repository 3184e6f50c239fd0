//! observability: what traces and the failure log cost per delivered
//! change. The same backlog (ROWS inserts, UPDATES updates) goes to nginx
//! three times, each from its own slot: with both off, with
//! `delivery.attempt_log = "all"` (every attempt a row), and with
//! `[telemetry]` exporting a span per delivery and one per attempt to an
//! OTLP collector on loopback. The figures are walhook's CPU per change
//! and its SQL sessions' CPU per change, measured in the same run.

use anyhow::bail;

use super::nginx::{measure, register_with, verdicts, write_backlog, Measured};
use crate::bench::Bench;
use crate::report::{mib, Better};

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let expected = b.knobs.expected();
    let url = b.nginx()?.url();
    let collector = walhook_lab::otlp::Collector::start().await?;
    let runs = [
        (
            "obs_off",
            "off",
            "attempt_log = \"off\"".to_owned(),
            String::new(),
        ),
        (
            "obs_log",
            "failure log, every attempt",
            "attempt_log = \"all\"".to_owned(),
            String::new(),
        ),
        (
            "obs_trace",
            "traces, every delivery",
            "attempt_log = \"off\"".to_owned(),
            format!(
                "\n[telemetry]\nenabled = true\nendpoint = \"{}\"\n",
                collector.endpoint()
            ),
        ),
    ];
    let mut hooks = Vec::new();
    for (name, _, extra, sections) in &runs {
        hooks.push(register_with(b, name, extra, sections, &url).await?);
    }
    let end = write_backlog(b, "read by three installations").await?;

    let mut measured: Vec<Measured> = Vec::new();
    let mut problems = Vec::new();
    for ((name, label, _, _), hook) in runs.iter().zip(&hooks) {
        let m = measure(b, label, name, *hook, &end).await?;
        problems.extend(verdicts(label, &m, expected));
        measured.push(m);
        b.drop_slot(name).await?;
    }
    // Every delivery is one span, and so is each attempt: all succeed. The
    // export queue is bounded, so spans it had no room for are dropped by
    // design; the share is reported, and none at all is no measurement.
    let spans = collector.spans().len() as u64;
    if spans == 0 {
        problems.push("traces: the collector got no span".to_owned());
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("PROBLEM: {p}");
        }
        bail!("the observability run is not valid (see the PROBLEM lines)");
    }
    let logged =
        b.db.int("SELECT count(*) FROM obs_log.delivery_attempt")
            .await
            .unwrap_or(-1);

    let n = expected as f64;
    let per_change = |m: &Measured| (m.walhook_cpu * 1e6 / n, m.sql_cpu * 1e6 / n);
    let (base_cpu, base_sql) = per_change(&measured[0]);
    println!();
    println!("================ walhook benchmark: traces and the failure log ================");
    println!(
        "workload        : {} changes to nginx, three times from three slots; collector on loopback",
        expected
    );
    for (m, (_, label, _, _)) in measured.iter().zip(&runs) {
        let (cpu, sql) = per_change(m);
        println!(
            "{label:<28}: {:>7.0} changes/s, walhook {cpu:5.1} µs/change ({:+5.1}), SQL sessions {sql:5.1} µs/change ({:+5.1}), peak RSS {}",
            m.rate,
            cpu - base_cpu,
            sql - base_sql,
            mib(m.hwm_kib)
        );
    }
    println!(
        "failure log rows: {logged}; spans exported: {spans} of {} ({:.1}% dropped by the bounded export queue)",
        2 * expected,
        100.0 * (1.0 - spans as f64 / (2 * expected) as f64)
    );
    println!("================================================================================");

    let r = &mut b.report;
    for (m, (_, label, _, _)) in measured.iter().zip(&runs) {
        let (cpu, sql) = per_change(m);
        r.row(
            "observability",
            &format!("walhook -> nginx, {label}"),
            &format!("{:.0} changes/s", m.rate),
            &format!(
                "walhook {cpu:.1} µs/change ({:+.1}), SQL {sql:.1} µs ({:+.1})",
                cpu - base_cpu,
                sql - base_sql
            ),
            &mib(m.hwm_kib),
        );
    }
    let (log_cpu, log_sql) = per_change(&measured[1]);
    let (trace_cpu, _) = per_change(&measured[2]);
    r.figure(
        "observability.attempt_log_all_walhook_cpu_us_per_change",
        log_cpu - base_cpu,
        "µs",
        Better::Lower,
    );
    r.figure(
        "observability.attempt_log_all_sql_cpu_us_per_change",
        log_sql - base_sql,
        "µs",
        Better::Lower,
    );
    r.figure(
        "observability.traces_walhook_cpu_us_per_change",
        trace_cpu - base_cpu,
        "µs",
        Better::Lower,
    );
    r.figure(
        "observability.traces_spans_exported_share",
        spans as f64 / (2 * expected) as f64,
        "",
        Better::Higher,
    );
    Ok(())
}
