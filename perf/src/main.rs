//! walhook-perf: walhook's benchmark. See README.md beside this crate.
//!
//!     cargo run -p walhook-perf --release                     # every section (~4 min)
//!     cargo run -p walhook-perf --release -- --smoke          # every section, tiny
//!     cargo run -p walhook-perf --release -- --sections nginx --json new.json
//!     cargo run -p walhook-perf --release -- compare baseline.json new.json

/// A progress line on stderr, timestamped (UTC).
macro_rules! say {
    ($($arg:tt)*) => {{
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        eprintln!(
            "[bench {:02}:{:02}:{:02}] {}",
            secs / 3600 % 24,
            secs / 60 % 60,
            secs % 60,
            format_args!($($arg)*)
        );
    }};
}

mod bench;
mod catch_up;
mod compare;
mod db;
mod knobs;
mod nginx;
mod process;
mod procfs;
mod report;
mod sections;
mod sink;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use walhook_lab::cluster::Cluster;

use crate::bench::{cluster_options, Bench, Carry, Tools};
use crate::knobs::{Knobs, RunArgs};
use crate::nginx::{Cert, Nginx};
use crate::report::Report;

#[derive(Parser, Debug)]
#[command(
    name = "walhook-perf",
    about = "walhook's benchmark: sections against a throwaway PostgreSQL, one summary table",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the benchmark (the default).
    Run(Box<RunArgs>),
    /// Compare a run's JSON report with a baseline's: ratios, and failure
    /// when a figure regressed past the tolerance.
    Compare {
        baseline: PathBuf,
        new: PathBuf,
        /// The fraction a figure may worsen by (0.1: 10%).
        #[arg(long, default_value_t = 0.1)]
        tolerance: f64,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Compare {
            baseline,
            new,
            tolerance,
        }) => compare::compare(&baseline, &new, tolerance),
        Some(Cmd::Run(args)) => run(*args),
        None => run(cli.run),
    };
    if let Err(error) = result {
        eprintln!("\n[bench] FAILED: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let knobs = Knobs::resolve(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let tools = find_tools(&knobs)?;
    let dir = tempfile::Builder::new()
        .prefix("walhook-bench.")
        .tempdir()
        .context("creating the temp dir")?;
    // nginx's workers (nobody) write their temp files under it.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .context("opening the temp dir to nginx's workers")?;
    let keep = knobs.keep_tmp;
    let path = dir.path().to_owned();
    let result = runtime.block_on(run_in(knobs, tools, path.clone()));
    if keep {
        eprintln!("[bench] temp dir kept: {}", dir.keep().display());
    }
    result
}

async fn run_in(knobs: Knobs, tools: Tools, dir: PathBuf) -> anyhow::Result<()> {
    say!("starting a throwaway PostgreSQL (the lab's cluster; fsync=off)");
    // Blocks for the second or two initdb and start-up take; nothing else
    // runs yet.
    let cluster = Cluster::start_with(cluster_options())
        .context("starting the throwaway PostgreSQL cluster")?;
    cluster.execute("postgres", "CREATE DATABASE bench").await?;
    let db = db::Db::connect(&cluster.url("bench")).await?;
    let mut b = Bench {
        knobs,
        dir,
        cluster,
        db,
        tools,
        nginx: None,
        cert: None,
        report: Report::default(),
        carry: Carry::default(),
        logs: Vec::new(),
    };
    let result = tokio::select! {
        result = sections(&mut b) => result,
        signal = interrupted() => Err(anyhow::anyhow!("interrupted by {signal}")),
    };
    if b.knobs.keep_tmp {
        // The cluster's own temp dir goes with it; its log stays with the others.
        let _ = std::fs::copy(b.cluster.log_path(), b.dir.join("postgres.log"));
    }
    if result.is_err() {
        let mut logs = b.logs.clone();
        logs.push(b.cluster.log_path());
        if let Some(nginx) = &b.nginx {
            logs.push(nginx.error_log.clone());
        }
        for log in logs
            .iter()
            .filter(|l| l.metadata().is_ok_and(|m| m.len() > 0))
        {
            eprintln!("---- last lines of {} ----", log.display());
            eprintln!("{}", process::tail(log, 25));
        }
    }
    result
}

/// Ctrl-C or SIGTERM: the run stops as on a failure, so that everything it
/// started is stopped and the temp dirs removed.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

async fn sections(b: &mut Bench) -> anyhow::Result<()> {
    b.db.exec(
        "CREATE TABLE bench_item (id int PRIMARY KEY, n int NOT NULL, label text NOT NULL);
         CREATE SCHEMA bench_result;
         CREATE TABLE bench_result.arrival (arrival_us bigint NOT NULL, event_id uuid NOT NULL, value text NOT NULL)",
    )
    .await?;
    let https = b.knobs.needs_nginx() && b.knobs.https;
    if https || (b.knobs.needs_sink() && b.knobs.sink_tls) {
        b.cert = Some(Cert::make(&b.dir.join("tls"))?);
    }
    if let Some(bin) = b.tools.nginx.clone() {
        // With fan-out every hook keeps up to 8 connections open, and a
        // worker that runs out closes idle ones, which walhook sees as
        // failed attempts.
        let connections = match b.knobs.hooks.as_deref() {
            Some("fanout") => b.knobs.fanout_hooks * b.knobs.concurrency_max().min(8) + 1024,
            _ => 1024,
        };
        let cert = if https { b.cert.as_ref() } else { None };
        let nginx = Nginx::start(&bin, &b.dir.join("nginx"), connections, cert).await?;
        say!(
            "nginx on 127.0.0.1:{}{} (worker_processes 2, location / {{ return 200; }})",
            nginx.port,
            nginx
                .tls_port
                .map(|p| format!(" and, TLS, {p}"))
                .unwrap_or_default()
        );
        b.nginx = Some(nginx);
    }
    let k = &b.knobs;
    b.report.context = vec![
        format!(
            "machine: {} CPUs; PostgreSQL {} (fsync=off); concurrency_per_webhook = {}{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            b.postgres_version(),
            k.concurrency,
            if k.delivery_extra.is_empty() {
                String::new()
            } else {
                format!("; extra [delivery]: {}", k.delivery_extra.replace('\n', " "))
            }
        ),
        format!(
            "sink: walhook-sink over {}; rates of backlogs include walhook's start-up and confirmation delay",
            if k.sink_tls { "https" } else { "http" }
        ),
    ];
    b.report.knobs = serde_json::to_value(k).context("the knobs as JSON")?;
    match b.knobs.hooks.clone() {
        Some(mode) => sections::hooks::run(b, &mode).await?,
        None => {
            for section in b.knobs.sections.clone() {
                say!("================ section {section} ================");
                sections::run(b, &section).await?;
            }
        }
    }
    if b.knobs.hooks.is_some() {
        for block in &b.report.blocks {
            println!();
            print!("{block}");
        }
    } else {
        b.report.print_table();
    }
    if let Some(path) = &b.knobs.json {
        b.report.write_json(path)?;
        say!("results written to {}", path.display());
    }
    Ok(())
}

/// The programs the run needs, built or found; fails naming what is
/// missing and how to get it.
fn find_tools(k: &Knobs) -> anyhow::Result<Tools> {
    let exe = std::env::current_exe().context("locating walhook-perf itself")?;
    let bin_dir = exe.parent().context("walhook-perf's directory")?.to_owned();
    let walhook = match &k.walhook_bin {
        Some(path) => path.clone(),
        None => {
            if !k.skip_build {
                build()?;
            }
            bin_dir.join("walhook")
        }
    };
    let need = |path: PathBuf, how: &str| -> anyhow::Result<PathBuf> {
        if path.is_file() {
            Ok(path)
        } else {
            bail!("{} not found ({how})", path.display())
        }
    };
    let walhook = need(
        walhook,
        "build it with cargo build --release, or give --walhook-bin",
    )?;
    let sink = need(
        bin_dir.join("walhook-sink"),
        "cargo build --release -p walhook-perf",
    )?;
    let post = need(
        bin_dir.join("walhook-post"),
        "cargo build --release -p walhook-perf",
    )?;
    let pg_bin = pg_client_dir();
    let client = |name: &str| -> Option<PathBuf> {
        pg_bin
            .as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
            .or_else(|| on_path(name))
    };
    let recvlogical = client("pg_recvlogical")
        .context("pg_recvlogical not found (apt-get install postgresql-client, or set PG_BIN)")?;
    let pgbench = client("pgbench");
    if k.needs_pgbench() && pgbench.is_none() {
        bail!(
            "pgbench not found (it makes the steady workloads: apt-get install postgresql-contrib)"
        );
    }
    let nginx = if k.needs_nginx() {
        Some(
            on_path("nginx")
                .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
                .context("nginx not found (apt-get install nginx-light)")?,
        )
    } else {
        None
    };
    if k.wants("wrk") && on_path("wrk").is_none() {
        bail!("wrk not found (needed by section wrk: apt-get install wrk)");
    }
    if ((k.needs_nginx() && k.https) || (k.needs_sink() && k.sink_tls)) && on_path("curl").is_none()
    {
        bail!("curl is needed for the https cases (apt-get install curl, or run with HTTPS=0 SINK_TLS=0)");
    }
    Ok(Tools {
        walhook,
        sink,
        post,
        recvlogical,
        pgbench,
        nginx,
    })
}

/// `cargo build --release --workspace` in the workspace this binary was
/// built from: walhook, walhook-sink and walhook-post as of the working
/// tree.
fn build() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?;
    say!("cargo build --release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--workspace", "--quiet"])
        .current_dir(root)
        .status()
        .context("running cargo build --release (or pass --skip-build)")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    Ok(())
}

/// The directory of the server's client programs, as the lab finds the
/// server: PG_BIN, else the highest /usr/lib/postgresql/*/bin.
fn pg_client_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
