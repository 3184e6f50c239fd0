//! One module per section of the benchmark, run in the order of
//! `knobs::ALL_SECTIONS`; `hooks` holds the HOOKS modes, which run alone.

pub mod crash;
pub mod decode;
pub mod hooks;
pub mod latency;
pub mod nginx;
pub mod observability;
pub mod parked;
pub mod slow;
pub mod wrk;

use anyhow::bail;

use crate::bench::Bench;

pub async fn run(b: &mut Bench, section: &str) -> anyhow::Result<()> {
    match section {
        "decode" => decode::run(b).await,
        "nginx" => nginx::run(b).await,
        "wrk" => wrk::run(b).await,
        "slow" => slow::run(b).await,
        "latency" => latency::run(b).await,
        "parked" => parked::run(b).await,
        "crash" => crash::run(b).await,
        "observability" => observability::run(b).await,
        other => bail!("unknown section '{other}'"),
    }
}
