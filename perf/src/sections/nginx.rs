//! nginx: the backlog of ROWS inserts (one transaction) and UPDATES updates
//! (another) delivered to nginx over http, and over https by a second
//! installation with its own slot, against pg_recvlogical on the same WAL.

use std::time::Instant;

use anyhow::{bail, Context};

use crate::bench::{Bench, NginxFigures};
use crate::catch_up::{await_caught_up, calls_of, Backlog, CatchUp};
use crate::procfs::{self, MachineBusy, MachineTicks};
use crate::report::{mib, rate, ratio, Better};

/// One timed run of walhook against the backlog.
pub(crate) struct Measured {
    pub(crate) catch_up: CatchUp,
    pub(crate) rate: f64,
    pub(crate) calls: Option<(i64, i64)>,
    /// Requests nginx counted, when it counts.
    pub(crate) nginx_counted: Option<u64>,
    pub(crate) hwm_kib: u64,
    pub(crate) walhook_cpu: f64,
    pub(crate) walsender_cpu: f64,
    pub(crate) sql_cpu: f64,
    pub(crate) nginx_cpu: f64,
    pub(crate) machine: MachineBusy,
    pub(crate) warn_lines: Vec<String>,
    pub(crate) exit_ok: bool,
    pub(crate) exit: String,
}

pub async fn run(b: &mut Bench) -> anyhow::Result<()> {
    let expected = b.knobs.expected();
    let https = b.knobs.https;
    let url = b.nginx()?.url();
    let hook = register(b, "walhook", "", &url).await?;
    let tls_hook = if https {
        let ca = b
            .cert
            .as_ref()
            .context("no certificate for https")?
            .cert
            .clone();
        say!("walhook setup (https: schema, slot and publication walhook_tls)");
        let tls_url = b.nginx()?.tls_url();
        let extra = format!("ca_file = \"{}\"", ca.display());
        Some(register(b, "walhook_tls", &extra, &tls_url).await?)
    } else {
        None
    };
    b.db.exec("SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')")
        .await?;

    let end = write_backlog(b, "no reader running").await?;
    let wal_bytes =
        b.db.float(&format!(
            "SELECT pg_wal_lsn_diff('{end}', restart_lsn) FROM pg_replication_slots
              WHERE slot_name = 'bench_recvlogical'"
        ))
        .await?;
    say!("end LSN {end}, {:.1} MiB of WAL", wal_bytes / 1_048_576.0);

    say!("pg_recvlogical catching up to {end}");
    let publications =
        b.db.text(
            "SELECT string_agg(pubname, ',' ORDER BY pubname) FROM pg_publication
              WHERE pubname IN ('walhook', 'walhook_keyless')",
        )
        .await?;
    let recv_seconds = b
        .recvlogical("bench_recvlogical", &publications, &end)
        .await?;
    let recv_rate = rate(expected as f64, recv_seconds);
    say!("pg_recvlogical: {recv_seconds:.3}s, {recv_rate:.0} changes/s");
    b.drop_slot("bench_recvlogical").await?;

    let http = measure(b, "http", "walhook", hook, &end).await?;
    let tls = match tls_hook {
        Some(id) => Some(measure(b, "https", "walhook_tls", id, &end).await?),
        None => None,
    };

    let mut problems = verdicts("http", &http, expected);
    if let Some(tls) = &tls {
        problems.extend(verdicts("https", tls, expected));
    }
    print_details(
        b,
        &http,
        tls.as_ref(),
        recv_rate,
        recv_seconds,
        &end,
        wal_bytes,
    );
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("PROBLEM: {p}");
        }
        bail!("the nginx run is not valid (see the PROBLEM lines)");
    }
    b.drop_slot("walhook").await?;
    b.drop_slot("walhook_tls").await?;

    let n = expected as f64;
    let delivered_rate = rate(n, http.catch_up.delivered_seconds);
    let phase_rate = http
        .catch_up
        .first_seconds
        .map(|f| rate(n, http.catch_up.delivered_seconds - f));
    b.carry.nginx = Some(NginxFigures {
        rate: http.rate,
        delivered_rate,
        phase_rate,
        walhook_us: http.walhook_cpu * 1e6 / n,
        walsender_us: http.walsender_cpu * 1e6 / n,
    });

    let r = &mut b.report;
    r.row(
        "nginx",
        "walhook -> nginx, http",
        &format!("{:.0} changes/s", http.rate),
        &format!(
            "pg_recvlogical {recv_rate:.0}/s (ratio {})",
            ratio(http.rate, recv_rate)
        ),
        &mib(http.hwm_kib),
    );
    r.row(
        "nginx",
        "  receiver-side (no confirm delay)",
        &format!("{delivered_rate:.0} changes/s"),
        &format!("ratio {}", ratio(delivered_rate, recv_rate)),
        "",
    );
    if let (Some(phase), Some(first)) = (phase_rate, http.catch_up.first_seconds) {
        r.row(
            "nginx",
            "  first to last request",
            &format!("{phase:.0} changes/s"),
            &format!("first request after {first:.3} s"),
            "",
        );
        r.figure(
            "nginx.http_first_to_last_changes_per_s",
            phase,
            "changes/s",
            Better::Higher,
        );
    }
    r.row(
        "nginx",
        "  machine during the http run",
        &http.machine.busy(),
        &http.machine.detail(),
        "",
    );
    r.figure(
        "nginx.http_changes_per_s",
        http.rate,
        "changes/s",
        Better::Higher,
    );
    r.figure(
        "nginx.http_receiver_side_changes_per_s",
        delivered_rate,
        "changes/s",
        Better::Higher,
    );
    r.figure(
        "nginx.pg_recvlogical_changes_per_s",
        recv_rate,
        "changes/s",
        Better::Higher,
    );
    r.figure(
        "nginx.http_peak_rss_kib",
        http.hwm_kib as f64,
        "KiB",
        Better::Lower,
    );
    r.figure(
        "nginx.http_walhook_cpu_us_per_change",
        http.walhook_cpu * 1e6 / n,
        "µs",
        Better::Lower,
    );
    if let Some(tls) = &tls {
        r.row(
            "nginx",
            "walhook -> nginx, https",
            &format!("{:.0} changes/s", tls.rate),
            &format!(
                "pg_recvlogical {recv_rate:.0}/s (ratio {})",
                ratio(tls.rate, recv_rate)
            ),
            &mib(tls.hwm_kib),
        );
        r.figure(
            "nginx.https_changes_per_s",
            tls.rate,
            "changes/s",
            Better::Higher,
        );
        r.figure(
            "nginx.https_peak_rss_kib",
            tls.hwm_kib as f64,
            "KiB",
            Better::Lower,
        );
    }
    Ok(())
}

/// Writes the backlog (ROWS inserts in one transaction, UPDATES updates
/// in another) while `readers` says who reads it; the WAL position after it.
pub(crate) async fn write_backlog(b: &mut Bench, readers: &str) -> anyhow::Result<String> {
    let (rows, updates) = (b.knobs.rows, b.knobs.updates);
    say!("workload: {rows} inserts in one transaction, {updates} updates in another ({readers})");
    b.db.exec(&format!(
        "INSERT INTO bench_item (id, n, label) SELECT g, g, 'item ' || g FROM generate_series(1, {rows}) AS g"
    ))
    .await?;
    b.db.exec(&format!(
        "UPDATE bench_item SET n = n + 1, label = label || ' upd' WHERE id <= {updates}"
    ))
    .await?;
    b.wal_lsn().await
}

/// `walhook setup` of installation `name` (capturing bench_item), and its
/// one hook for every event at `url`.
async fn register(b: &mut Bench, name: &str, extra: &str, url: &str) -> anyhow::Result<i64> {
    register_with(b, name, extra, "", url).await
}

/// [`register`], with `sections` (whole config sections) appended.
pub(crate) async fn register_with(
    b: &mut Bench,
    name: &str,
    extra: &str,
    sections: &str,
    url: &str,
) -> anyhow::Result<i64> {
    let config = b.walhook_config(name, extra, "bench_item") + sections;
    std::fs::write(b.config_path(name), config).context("writing the config")?;
    b.setup(name).await?;
    b.logs.push(b.log_path(name));
    b.db.int(&format!(
        "INSERT INTO {name}.webhook (name, events, target_url, secret)
         VALUES ('bench', '*', '{url}', 'bench-secret-0123456789') RETURNING webhook_id"
    ))
    .await
    .context("registering the webhook")
}

/// Runs walhook of installation `name` until it has caught up with the
/// backlog; its figures, read while it still runs.
pub(crate) async fn measure(
    b: &mut Bench,
    label: &str,
    name: &str,
    hook: i64,
    end: &str,
) -> anyhow::Result<Measured> {
    let expected = b.knobs.expected();
    let usage_sql = format!(
        "SELECT total_calls, total_errors FROM {name}.webhook_usage WHERE webhook_id = {hook}"
    );
    let nginx_base = b.nginx()?.requests().await?;
    let nginx_cpu_before = b.nginx()?.workers_cpu();
    say!(
        "walhook run ({label}): catching up with {expected} changes (timeout {}s)",
        b.knobs.walhook_timeout
    );
    let machine_before = MachineTicks::now()?;
    let t0 = Instant::now();
    let mut walhook = b.start_walhook(name)?;
    let backlog = Backlog {
        slot: name,
        end,
        requests: expected,
        usage_sql: &usage_sql,
        what: &format!("the catch-up ({label})"),
    };
    let catch_up = await_caught_up(b, &mut walhook, t0, nginx_base, &backlog).await?;
    let machine = machine_before.busy_since()?;
    let walhook_rate = rate(expected as f64, catch_up.seconds());
    say!(
        "walhook ({label}) done after {:.3}s (slot confirmed {end} at {:.3}s, all requests received at {:.3}s)",
        catch_up.seconds(),
        catch_up.slot_seconds,
        catch_up.delivered_seconds
    );
    // Statistics are written about once a second: wait for the last flush.
    let mut calls = None;
    for _ in 0..50 {
        calls = calls_of(b, &usage_sql).await;
        if calls.is_some_and(|(c, _)| c >= expected as i64) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let nginx_counted = match nginx_base {
        Some(base) => b
            .nginx()?
            .requests()
            .await?
            .map(|c| c.saturating_sub(base + catch_up.nginx_polls + 1)),
        None => None,
    };
    // Resources, read while walhook still runs.
    let hwm_kib = walhook.peak_rss_kib()?;
    let walhook_cpu = walhook.cpu_seconds()?;
    let walsender =
        b.db.int(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{name}'"
        ))
        .await
        .context("the walsender's pid")?;
    let walsender = u32::try_from(walsender).context("the walsender's pid is not a pid")?;
    let walsender_cpu = procfs::cpu_seconds(walsender)
        .context("nginx: the walsender's CPU could not be measured")?;
    let mut sql_cpu = 0.0;
    for row in
        b.db.rows(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'walhook'
               AND backend_type = 'client backend'",
        )
        .await?
    {
        if let Some(pid) = row.first().and_then(|p| p.parse::<u32>().ok()) {
            sql_cpu += procfs::cpu_seconds(pid).unwrap_or(0.0);
        }
    }
    let nginx_cpu = b.nginx()?.workers_cpu() - nginx_cpu_before;
    say!("stopping walhook (SIGTERM)");
    let log = walhook.log.clone();
    let status = walhook.stop().await?;
    let warn_lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains(" WARN ")
                || l.contains(" ERROR ")
                || l.starts_with("WARN ")
                || l.starts_with("ERROR ")
        })
        .map(str::to_owned)
        .collect();
    Ok(Measured {
        catch_up,
        rate: walhook_rate,
        calls,
        nginx_counted,
        hwm_kib,
        walhook_cpu,
        walsender_cpu,
        sql_cpu,
        nginx_cpu,
        machine,
        warn_lines,
        exit_ok: status.success(),
        exit: status.to_string(),
    })
}

pub(crate) fn verdicts(label: &str, m: &Measured, expected: u64) -> Vec<String> {
    let mut problems = Vec::new();
    match m.calls {
        None => problems.push(format!("{label}: webhook_usage has no row for the hook")),
        Some((calls, errors)) => {
            if calls != expected as i64 {
                problems.push(format!(
                    "{label}: webhook_usage.total_calls is {calls}, expected {expected}"
                ));
            }
            if errors != 0 {
                problems.push(format!(
                    "{label}: webhook_usage.total_errors is {errors}, expected 0"
                ));
            }
        }
    }
    if let Some(counted) = m.nginx_counted {
        if counted != expected {
            problems.push(format!(
                "{label}: nginx counted {counted} requests, expected {expected}"
            ));
        }
    }
    if !m.exit_ok {
        problems.push(format!(
            "{label}: walhook exited with {} after SIGTERM",
            m.exit
        ));
    }
    problems
}

fn print_details(
    b: &Bench,
    http: &Measured,
    tls: Option<&Measured>,
    recv_rate: f64,
    recv_seconds: f64,
    end: &str,
    wal_bytes: f64,
) {
    let k = &b.knobs;
    let n = k.expected() as f64;
    let c = &http.catch_up;
    let delivered_rate = rate(n, c.delivered_seconds);
    println!();
    println!("================ walhook benchmark: delivery to nginx ================");
    println!(
        "workload        : {} inserts (1 transaction) + {} updates (1 transaction) = {} changes",
        k.rows,
        k.updates,
        k.expected()
    );
    println!(
        "                  table bench_item (id int PRIMARY KEY, n int, label text); {:.1} MiB of WAL",
        wal_bytes / 1_048_576.0
    );
    println!("pg_recvlogical  : {recv_rate:.0} changes/s   ({recv_seconds:.3} s to {end})");
    println!(
        "walhook         : {:.0} changes/s   ({:.3} s from start until the slot confirmed {end} and the receiver had every request)",
        http.rate,
        c.seconds()
    );
    println!(
        "ratio           : {}   (walhook / pg_recvlogical)",
        ratio(http.rate, recv_rate)
    );
    println!(
        "walhook peak RSS: {}   (VmHWM {} kB)",
        mib(http.hwm_kib),
        http.hwm_kib
    );
    println!(
        "milestones      : slot confirmed at {:.3} s; receiver had all {} requests at {:.3} s ({})",
        c.slot_seconds,
        k.expected(),
        c.delivered_seconds,
        c.delivered_by
    );
    println!(
        "receiver-side   : {delivered_rate:.0} changes/s, ratio {}   (from the last-request time alone, without the confirmation delay)",
        ratio(delivered_rate, recv_rate)
    );
    match c.first_seconds {
        Some(first) => println!(
            "delivery phase  : {:.0} changes/s   (from {first:.3} s, the last check that found no request yet, to the last request; before it the walsender decodes the first transaction)",
            rate(n, c.delivered_seconds - first)
        ),
        None => println!("delivery phase  : n/a"),
    }
    println!(
        "CPU during catch-up: walhook {:.2} s ({:.0}% of one core), its walsender {:.2} s, its SQL sessions {:.2} s, nginx workers {:.2} s",
        http.walhook_cpu,
        100.0 * http.walhook_cpu / c.seconds(),
        http.walsender_cpu,
        http.sql_cpu,
        http.nginx_cpu
    );
    println!("machine         : {} during the catch-up", http.machine);
    println!(
        "webhook_usage   : total_calls/total_errors {:?}; nginx counted {} requests",
        http.calls,
        http.nginx_counted.map_or("n/a".into(), |v| v.to_string())
    );
    println!(
        "walhook log     : {} WARN/ERROR lines; exit {} after SIGTERM",
        http.warn_lines.len(),
        http.exit
    );
    if let Some(tls) = tls {
        let t = &tls.catch_up;
        let tls_delivered = rate(n, t.delivered_seconds);
        println!();
        println!(
            "over https      : the same {} changes from their own slot, by a second installation",
            k.expected()
        );
        println!(
            "walhook https   : {:.0} changes/s   ({:.3} s; slot confirmed at {:.3} s, receiver had every request at {:.3} s)",
            tls.rate,
            t.seconds(),
            t.slot_seconds,
            t.delivered_seconds
        );
        println!(
            "ratio           : {}   (walhook https / pg_recvlogical)",
            ratio(tls.rate, recv_rate)
        );
        println!(
            "walhook peak RSS: {}   (VmHWM {} kB)",
            mib(tls.hwm_kib),
            tls.hwm_kib
        );
        println!(
            "CPU during catch-up: walhook {:.2} s ({:.0}% of one core), nginx workers {:.2} s",
            tls.walhook_cpu,
            100.0 * tls.walhook_cpu / t.seconds(),
            tls.nginx_cpu
        );
        println!("machine         : {} during the catch-up", tls.machine);
        println!(
            "webhook_usage   : total_calls/total_errors {:?}; {} WARN/ERROR lines; exit {} after SIGTERM",
            tls.calls,
            tls.warn_lines.len(),
            tls.exit
        );
        println!();
        println!(
            "side by side    : http {:.0} changes/s, https {:.0} changes/s (https / http {})",
            http.rate,
            tls.rate,
            ratio(tls.rate, http.rate)
        );
        println!(
            "  receiver-side : http {delivered_rate:.0} changes/s, https {tls_delivered:.0} changes/s (https / http {}; without the confirmation delay)",
            ratio(tls_delivered, delivered_rate)
        );
    }
    println!("=====================================================================");
    if c.slot_seconds + 0.5 < c.delivered_seconds {
        println!(
            "NOTE: the slot was confirmed {:.3} s before the last request arrived (parked events count as settled)",
            c.delivered_seconds - c.slot_seconds
        );
    }
    for (label, m) in [("", Some(http)), (" (https)", tls)] {
        if let Some(m) = m.filter(|m| !m.warn_lines.is_empty()) {
            println!("walhook{label} WARN/ERROR lines (first 10):");
            for line in m.warn_lines.iter().take(10) {
                println!("{line}");
            }
        }
    }
}
