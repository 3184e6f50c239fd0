//! The run's knobs: command-line flags, each also read from the
//! environment variable the shell script used, with the full run's defaults
//! or, under `--smoke` (`SMOKE=1`), tiny ones that only prove every section
//! can measure.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;

/// The sections in the order they run.
pub const ALL_SECTIONS: [&str; 8] = [
    "decode",
    "nginx",
    "wrk",
    "slow",
    "latency",
    "parked",
    "crash",
    "observability",
];

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Comma-separated sections to run, in the fixed order (default: all):
    /// decode, nginx, wrk, slow, latency, parked, crash.
    #[arg(long, env = "SECTIONS", value_delimiter = ',')]
    sections: Vec<String>,
    /// Every section at a tiny size: proves each can measure.
    #[arg(long, env = "SMOKE", value_parser = flag, num_args = 0..=1, default_missing_value = "1")]
    smoke: Option<bool>,
    /// Instead of the sections: `compare` (the cost of matching at
    /// HOOK_COUNT hooks) or `fanout` (FANOUT_HOOKS hooks all matching).
    #[arg(long, env = "HOOKS", value_parser = ["compare", "fanout"])]
    hooks: Option<String>,
    /// Write the results as JSON to this file (for `walhook-perf compare`).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Use this walhook binary instead of target/release/walhook (an older
    /// build, say); nothing is built then.
    #[arg(long, env = "WALHOOK_BIN")]
    walhook_bin: Option<PathBuf>,
    /// Do not run `cargo build --release` first.
    #[arg(long, env = "SKIP_BUILD", value_parser = flag, num_args = 0..=1, default_missing_value = "1")]
    skip_build: Option<bool>,
    /// Keep the temp dir with every log.
    #[arg(long, env = "KEEP_TMP", value_parser = flag, num_args = 0..=1, default_missing_value = "1")]
    keep_tmp: Option<bool>,
    /// Inserts of the nginx section (one transaction).
    #[arg(long, env = "ROWS")]
    rows: Option<u64>,
    /// Updates of the nginx section (another transaction), at most ROWS.
    #[arg(long, env = "UPDATES")]
    updates: Option<u64>,
    /// delivery.concurrency_per_webhook: "adaptive" or a number.
    #[arg(long, env = "CONCURRENCY", default_value = "adaptive")]
    concurrency: String,
    /// Seconds walhook may take to catch up with a backlog.
    #[arg(long, env = "WALHOOK_TIMEOUT", default_value_t = 900)]
    walhook_timeout: u64,
    /// Seconds pg_recvlogical may take.
    #[arg(long, env = "RECVLOGICAL_TIMEOUT", default_value_t = 600)]
    recvlogical_timeout: u64,
    /// Raw TOML lines added to walhook's [delivery] table, everywhere.
    #[arg(long, env = "DELIVERY_EXTRA", default_value = "")]
    delivery_extra: String,
    /// Also deliver the nginx section's changes over https (1) or not (0).
    #[arg(long, env = "HTTPS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    https: u8,
    /// Hooks of the large tables of --hooks compare.
    #[arg(long, env = "HOOK_COUNT", default_value_t = 10_000)]
    hook_count: u64,
    /// Hooks of --hooks fanout.
    #[arg(long, env = "FANOUT_HOOKS", default_value_t = 1_000)]
    fanout_hooks: u64,
    #[arg(long, env = "DECODE_ROWS")]
    decode_rows: Option<u64>,
    #[arg(long, env = "DECODE_UPDATES")]
    decode_updates: Option<u64>,
    /// Seconds of wrk, and of walhook-post.
    #[arg(long, env = "WRK_SECONDS")]
    wrk_seconds: Option<u64>,
    #[arg(long, env = "WRK_CONNECTIONS", default_value_t = 8)]
    wrk_connections: u64,
    /// Requests walhook-post keeps in flight (1 to 4096).
    #[arg(long, env = "POST_CONCURRENCY", default_value_t = 128)]
    post_concurrency: u64,
    #[arg(long, env = "SLOW_ROWS")]
    slow_rows: Option<u64>,
    #[arg(long, env = "SLOW_DELAY_MS", default_value_t = 50)]
    slow_delay_ms: u64,
    #[arg(long, env = "LATENCY_RATE")]
    latency_rate: Option<u64>,
    #[arg(long, env = "LATENCY_SECONDS")]
    latency_seconds: Option<u64>,
    /// Numbers of hooks in state 3, space-separated ("0 1 10").
    #[arg(long, env = "PARKED_HOOKS", default_value = "0 1 10")]
    parked_hooks: String,
    #[arg(long, env = "PARKED_ROWS")]
    parked_rows: Option<u64>,
    #[arg(long, env = "PARKED_LAT_SECONDS")]
    parked_lat_seconds: Option<u64>,
    #[arg(long, env = "REPLAY_EVENTS")]
    replay_events: Option<u64>,
    #[arg(long, env = "CRASH_RATE")]
    crash_rate: Option<u64>,
    #[arg(long, env = "CRASH_KILLS")]
    crash_kills: Option<u64>,
    /// The longest gap between two disturbances, in seconds; each gap is
    /// drawn between 1 s and this.
    #[arg(long, env = "CRASH_INTERVAL")]
    crash_interval: Option<u64>,
    /// How long the crash section's receiver takes per request.
    #[arg(long, env = "CRASH_SINK_DELAY_MS", default_value_t = 3)]
    crash_sink_delay_ms: u64,
    #[arg(long, env = "CRASH_DRAIN_TIMEOUT", default_value_t = 300)]
    crash_drain_timeout: u64,
    /// The sink over https (1) or plain http (0).
    #[arg(long, env = "SINK_TLS", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    sink_tls: u8,
}

/// "1"/"0" as the script took them, or true/false.
fn flag(s: &str) -> Result<bool, String> {
    match s {
        "1" | "true" | "yes" => Ok(true),
        "0" | "" | "false" | "no" => Ok(false),
        _ => Err(format!("'{s}' is not 0 or 1")),
    }
}

/// The knobs resolved and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Knobs {
    pub sections: Vec<String>,
    pub smoke: bool,
    pub hooks: Option<String>,
    #[serde(skip)]
    pub json: Option<PathBuf>,
    #[serde(skip)]
    pub walhook_bin: Option<PathBuf>,
    #[serde(skip)]
    pub skip_build: bool,
    #[serde(skip)]
    pub keep_tmp: bool,
    pub rows: u64,
    pub updates: u64,
    pub concurrency: String,
    pub walhook_timeout: u64,
    pub recvlogical_timeout: u64,
    pub delivery_extra: String,
    pub https: bool,
    pub hook_count: u64,
    pub fanout_hooks: u64,
    pub decode_rows: u64,
    pub decode_updates: u64,
    pub wrk_seconds: u64,
    pub wrk_connections: u64,
    pub post_concurrency: u64,
    pub slow_rows: u64,
    pub slow_delay_ms: u64,
    pub latency_rate: u64,
    pub latency_seconds: u64,
    pub parked_hooks: Vec<u64>,
    pub parked_rows: u64,
    pub parked_lat_seconds: u64,
    pub replay_events: u64,
    pub crash_rate: u64,
    pub crash_kills: u64,
    pub crash_interval: u64,
    pub crash_sink_delay_ms: u64,
    pub crash_drain_timeout: u64,
    pub sink_tls: bool,
}

impl Knobs {
    pub fn resolve(a: RunArgs) -> anyhow::Result<Knobs> {
        let smoke = a.smoke.unwrap_or(false);
        // The full run's size, or the smoke run's.
        let size =
            |v: Option<u64>, full: u64, tiny: u64| v.unwrap_or(if smoke { tiny } else { full });
        let sections = if a.sections.is_empty() {
            ALL_SECTIONS.iter().map(|s| s.to_string()).collect()
        } else {
            for s in &a.sections {
                if !ALL_SECTIONS.contains(&s.as_str()) {
                    bail!(
                        "--sections: unknown section '{s}' (known: {})",
                        ALL_SECTIONS.join(",")
                    );
                }
            }
            // Always in the fixed order: later sections use earlier figures.
            ALL_SECTIONS
                .iter()
                .filter(|s| a.sections.iter().any(|x| x == *s))
                .map(|s| s.to_string())
                .collect()
        };
        let parked_hooks = a
            .parked_hooks
            .split_whitespace()
            .map(|k| match k.parse::<u64>() {
                Ok(n) if n <= 1000 => Ok(n),
                _ => bail!("PARKED_HOOKS must list numbers of hooks from 0 to 1000 (got '{k}')"),
            })
            .collect::<anyhow::Result<Vec<u64>>>()?;
        let knobs = Knobs {
            sections,
            smoke,
            hooks: a.hooks,
            json: a.json,
            walhook_bin: a.walhook_bin,
            skip_build: a.skip_build.unwrap_or(false),
            keep_tmp: a.keep_tmp.unwrap_or(false),
            rows: size(a.rows, 100_000, 2_000),
            updates: size(a.updates, 50_000, 1_000),
            concurrency: a.concurrency,
            walhook_timeout: a.walhook_timeout,
            recvlogical_timeout: a.recvlogical_timeout,
            delivery_extra: a.delivery_extra,
            https: a.https == 1,
            hook_count: a.hook_count,
            fanout_hooks: a.fanout_hooks,
            decode_rows: size(a.decode_rows, 400_000, 4_000),
            decode_updates: size(a.decode_updates, 200_000, 2_000),
            wrk_seconds: size(a.wrk_seconds, 10, 2),
            wrk_connections: a.wrk_connections,
            post_concurrency: a.post_concurrency,
            slow_rows: size(a.slow_rows, 5_000, 200),
            slow_delay_ms: a.slow_delay_ms,
            latency_rate: size(a.latency_rate, 1_000, 200),
            latency_seconds: size(a.latency_seconds, 20, 3),
            parked_hooks,
            parked_rows: size(a.parked_rows, 20_000, 1_000),
            parked_lat_seconds: size(a.parked_lat_seconds, 10, 2),
            replay_events: size(a.replay_events, 100_000, 2_000),
            crash_rate: size(a.crash_rate, 500, 200),
            crash_kills: size(a.crash_kills, 10, 3),
            crash_interval: size(a.crash_interval, 4, 1),
            crash_sink_delay_ms: a.crash_sink_delay_ms,
            crash_drain_timeout: a.crash_drain_timeout,
            sink_tls: a.sink_tls == 1,
        };
        knobs.check().context("the knobs do not make a run")?;
        Ok(knobs)
    }

    fn check(&self) -> anyhow::Result<()> {
        let at_least_one = [
            ("ROWS", self.rows),
            ("DECODE_ROWS", self.decode_rows),
            ("WRK_SECONDS", self.wrk_seconds),
            ("WRK_CONNECTIONS", self.wrk_connections),
            ("SLOW_ROWS", self.slow_rows),
            ("LATENCY_RATE", self.latency_rate),
            ("LATENCY_SECONDS", self.latency_seconds),
            ("PARKED_ROWS", self.parked_rows),
            ("PARKED_LAT_SECONDS", self.parked_lat_seconds),
            ("REPLAY_EVENTS", self.replay_events),
            ("CRASH_RATE", self.crash_rate),
            ("CRASH_KILLS", self.crash_kills),
            ("CRASH_INTERVAL", self.crash_interval),
        ];
        for (name, value) in at_least_one {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        if self.updates > self.rows {
            bail!(
                "UPDATES ({}) must not exceed ROWS ({})",
                self.updates,
                self.rows
            );
        }
        if self.decode_updates > self.decode_rows {
            bail!(
                "DECODE_UPDATES ({}) must not exceed DECODE_ROWS ({})",
                self.decode_updates,
                self.decode_rows
            );
        }
        if !(1..=4096).contains(&self.post_concurrency) {
            bail!("POST_CONCURRENCY must be from 1 to 4096");
        }
        if self.slow_delay_ms > 60_000 {
            bail!("SLOW_DELAY_MS must be at most 60000");
        }
        if self.concurrency != "adaptive"
            && !matches!(self.concurrency.parse::<u64>(), Ok(n) if n >= 1)
        {
            bail!(
                "CONCURRENCY must be 'adaptive' or a number of at least 1 (got '{}')",
                self.concurrency
            );
        }
        Ok(())
    }

    /// Whether a section runs (the --hooks modes run alone).
    pub fn wants(&self, section: &str) -> bool {
        self.hooks.is_none() && self.sections.iter().any(|s| s == section)
    }

    /// concurrency_per_webhook as TOML.
    pub fn concurrency_toml(&self) -> String {
        if self.concurrency == "adaptive" {
            "\"adaptive\"".into()
        } else {
            self.concurrency.clone()
        }
    }

    /// The most requests one hook may have in flight (walhook's ceiling
    /// when adaptive).
    pub fn concurrency_max(&self) -> u64 {
        self.concurrency.parse().unwrap_or(512)
    }

    pub fn expected(&self) -> u64 {
        self.rows + self.updates
    }

    pub fn needs_nginx(&self) -> bool {
        self.hooks.is_some()
            || self.wants("nginx")
            || self.wants("wrk")
            || self.wants("observability")
    }

    pub fn needs_sink(&self) -> bool {
        ["slow", "latency", "parked", "crash"]
            .iter()
            .any(|s| self.wants(s))
    }

    pub fn needs_pgbench(&self) -> bool {
        ["latency", "parked", "crash"].iter().any(|s| self.wants(s))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn knobs(args: &[&str]) -> anyhow::Result<Knobs> {
        let cli = Cli::try_parse_from(std::iter::once("walhook-perf").chain(args.iter().copied()))?;
        Knobs::resolve(cli.run)
    }

    #[test]
    fn smoke_makes_the_sizes_tiny_and_a_size_given_wins() {
        let k = knobs(&["--smoke", "--rows", "5000"]).unwrap();
        assert_eq!(
            (k.rows, k.updates, k.decode_rows, k.crash_kills),
            (5000, 1000, 4000, 3)
        );
        let full = knobs(&[]).unwrap();
        assert_eq!(
            (full.rows, full.updates, full.decode_rows),
            (100_000, 50_000, 400_000)
        );
    }

    #[test]
    fn sections_run_in_the_fixed_order_and_unknown_ones_are_refused() {
        let k = knobs(&["--sections", "crash,decode"]).unwrap();
        assert_eq!(k.sections, ["decode", "crash"]);
        let error = knobs(&["--sections", "decode,bogus"]).unwrap_err();
        assert!(
            error.to_string().contains("unknown section 'bogus'"),
            "{error}"
        );
    }

    #[test]
    fn sizes_that_make_no_run_are_refused() {
        assert!(knobs(&["--rows", "10", "--updates", "11"]).is_err());
        assert!(knobs(&["--concurrency", "0"]).is_err());
        assert!(knobs(&["--parked-hooks", "0 1001"]).is_err());
    }
}
