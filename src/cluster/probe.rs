//! What `walhook check` learns from the NATS servers: reachable, JetStream
//! enabled with room for the stream, and the stream's limits and fill as
//! they stand against the config. It reads only; `walhook run` creates or
//! updates the stream.

use anyhow::Context;
use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};

use super::stream;
use crate::config::ClusterConfig;

/// The oldest nats-server walhook works with.
pub const MIN_SERVER: (u32, u32) = (2, 10);

/// Whether a server's version ("2.15.1") is at least [`MIN_SERVER`]; an
/// unreadable one is let through (the requests that follow say more).
pub fn new_enough(version: &str) -> bool {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= MIN_SERVER,
        _ => true,
    }
}

/// The stream's fill at which `check` (and status) warn.
pub const FILL_WARN_PERCENT: u64 = 80;

/// One finding of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Warn(String),
    Fail(String),
}

/// Connects to `cluster.nats_urls` and reports what it finds, one finding
/// per fact; an unreachable server or a disabled JetStream ends it.
pub async fn probe(cluster: &ClusterConfig, max_body_bytes: usize) -> Vec<Finding> {
    match probe_inner(cluster, max_body_bytes).await {
        Ok(findings) => findings,
        Err((mut findings, e)) => {
            findings.push(Finding::Fail(format!("{e:#}")));
            findings
        }
    }
}

type Partial = (Vec<Finding>, anyhow::Error);

async fn probe_inner(
    cluster: &ClusterConfig,
    max_body_bytes: usize,
) -> Result<Vec<Finding>, Partial> {
    let mut out = Vec::new();
    let client = match super::connect(cluster, "walhook check").await {
        Ok(client) => client,
        Err(e) => return Err((out, e)),
    };
    let info = client.server_info();
    if !new_enough(&info.version) {
        let error = anyhow::anyhow!(
            "NATS server {:?} at {}:{} is version {}: walhook needs {}.{} or newer (older \
             servers answer JetStream requests in a form walhook's client does not read)",
            info.server_name,
            info.host,
            info.port,
            info.version,
            MIN_SERVER.0,
            MIN_SERVER.1
        );
        return Err((out, error));
    }
    out.push(Finding::Ok(format!(
        "NATS reachable: server {:?} version {} at {}:{}",
        info.server_name, info.version, info.host, info.port
    )));
    let js = jetstream::new(client);
    let account = match js.query_account().await {
        Ok(account) => account,
        Err(e) => {
            let error = anyhow::Error::new(e).context(
                "JetStream is not available on the NATS servers of cluster.nats_urls (start \
                 nats-server with -js, or `jetstream {}` in its config, and give the account \
                 JetStream)",
            );
            return Err((out, error));
        }
    };
    let wanted_storage = cluster.max_bytes.saturating_mul(cluster.replicas as u64);
    match account.limits.max_storage {
        Some(limit) if u64::try_from(limit).unwrap_or(0) < wanted_storage => {
            out.push(Finding::Warn(format!(
                "JetStream enabled, but the account may store {limit} bytes, less than \
                 cluster.max_bytes x cluster.replicas = {wanted_storage}: the stream would be \
                 refused or fill early; lower cluster.max_bytes or raise the account's limit"
            )))
        }
        _ => out.push(Finding::Ok(format!(
            "JetStream enabled ({} bytes stored in {} streams by this account)",
            account.storage, account.streams
        ))),
    }
    let wanted = stream::config(cluster, max_body_bytes);
    match js.get_stream(&cluster.stream).await {
        Ok(mut found) => {
            let info = found
                .info()
                .await
                .with_context(|| format!("reading stream {:?}", cluster.stream))
                .map_err(|e| (out.clone(), e))?;
            let state = &info.state;
            let percent = fill_percent(state.bytes, cluster.max_bytes);
            let line = format!(
                "stream {:?}: {} jobs, {} of {} bytes (cluster.max_bytes, {percent}%), {} \
                 replicas",
                cluster.stream,
                state.messages,
                state.bytes,
                cluster.max_bytes,
                info.config.num_replicas
            );
            out.push(if percent >= FILL_WARN_PERCENT {
                Finding::Warn(format!(
                    "{line}: at 100% new jobs are refused and the capture waits, holding the \
                     slot; raise cluster.max_bytes or find the hooks that do not drain"
                ))
            } else {
                Finding::Ok(line)
            });
            for difference in stream::differences(&info.config, &wanted) {
                out.push(Finding::Warn(format!(
                    "{difference}: `walhook run` applies the config to the stream"
                )));
            }
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js_error)
                if js_error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                out.push(Finding::Ok(format!(
                    "stream {:?} does not exist yet: the first `walhook run` creates it \
                     ({} bytes, {} replicas, discard new)",
                    cluster.stream, cluster.max_bytes, cluster.replicas
                )))
            }
            _ => {
                let error =
                    anyhow::Error::new(e).context(format!("reading stream {:?}", cluster.stream));
                return Err((out, error));
            }
        },
    }
    if !cluster.max_age.is_zero() {
        out.push(Finding::Warn(format!(
            "cluster.max_age = {:?}: a job older than this is removed from the stream \
             undelivered (\"0s\" keeps every job until delivered)",
            cluster.max_age
        )));
    }
    Ok(out)
}

/// `bytes` as a whole percentage of `max`, rounded down.
pub fn fill_percent(bytes: u64, max: u64) -> u64 {
    if max == 0 {
        return 100;
    }
    ((bytes as u128 * 100) / max as u128).min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::{fill_percent, new_enough};

    #[test]
    fn servers_before_2_10_are_refused() {
        assert!(!new_enough("2.9.10"));
        assert!(new_enough("2.10.0"));
        assert!(new_enough("2.15.1"));
        assert!(new_enough("3.0.0"));
        assert!(new_enough("unknown"));
    }

    #[test]
    fn fill_is_a_whole_percentage() {
        assert_eq!(fill_percent(0, 100), 0);
        assert_eq!(fill_percent(899, 1000), 89);
        assert_eq!(fill_percent(u64::MAX, 1), u64::MAX);
        assert_eq!(fill_percent(5, 0), 100);
    }
}
