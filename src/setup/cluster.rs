//! `walhook check` in cluster mode: the NATS servers, JetStream and the
//! jobs' stream, as [`crate::cluster::probe`] finds them.

use super::line::{CheckLevel, CheckLine};
use crate::cluster::probe::{probe, Finding};
use crate::config::Config;

/// Nothing without `[cluster]`; else one line per finding.
pub async fn check_cluster(config: &Config) -> Vec<CheckLine> {
    let Some(cluster) = &config.cluster else {
        return Vec::new();
    };
    probe(cluster, config.delivery.max_body_bytes)
        .await
        .into_iter()
        .map(|finding| match finding {
            Finding::Ok(text) => CheckLine {
                level: CheckLevel::Ok,
                text,
            },
            Finding::Warn(text) => CheckLine {
                level: CheckLevel::Warn,
                text,
            },
            Finding::Fail(text) => CheckLine {
                level: CheckLevel::Fail,
                text,
            },
        })
        .collect()
}
