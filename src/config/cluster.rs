//! `[cluster]`: several `walhook run` instances with one config share the
//! delivery work over NATS JetStream. Absent, walhook runs as one process,
//! exactly as without it.
//!
//! The bus is a second place where committed changes rest, so its limits
//! are the operator's to set and walhook's to check: a stream that fills
//! up refuses new jobs (discard "new"), and the capture then waits with
//! the slot held, as it does when its in-flight budget is spent; it never
//! lets JetStream drop the oldest jobs to make room.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{duration, show_duration};

/// The most shards: each is a subject, a consumer and a lease.
pub const MAX_SHARDS: u32 = 1024;
/// JetStream keeps at most five copies of a stream.
pub const MAX_REPLICAS: usize = 5;
/// The smallest `max_bytes`: room for at least a few of the largest jobs.
pub const MIN_STREAM_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS servers, `nats://host:port` or `tls://host:port`; the
    /// client connects to one and learns the rest of the cluster from it.
    pub nats_urls: Vec<String>,
    /// A NATS credentials file (a user JWT and its nkey seed), as `nsc`
    /// writes them.
    pub credentials_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`), for servers that list users
    /// by public nkey.
    pub nkey_seed_file: Option<PathBuf>,
    /// A PEM file of CA certificates trusted for the NATS servers; setting
    /// it (or a client certificate) requires TLS.
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate (chain) presented to the servers; set together
    /// with `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// The JetStream stream holding the jobs, and the prefix of its
    /// subjects and of the lease bucket. One per database and slot.
    pub stream: String,
    /// Copies JetStream keeps of the stream and the lease bucket (1..=5;
    /// 3 survives one NATS node lost).
    pub replicas: usize,
    /// Shards the hooks are spread over (hook id mod shards): the unit of
    /// work an instance holds. Changing it needs an empty stream.
    pub shards: u32,
    /// Bytes the stream may hold before it refuses new jobs and the
    /// capture waits.
    pub max_bytes: u64,
    /// How long a job may stay in the stream undelivered; "0s": no limit.
    /// A job past it is gone for good, so `check` warns when it is set.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub max_age: Duration,
    /// How long a shard lease lives without a renewal: an instance that
    /// stops renewing (killed, cut off) loses its shards after this.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub lease_ttl: Duration,
    /// How long connecting to NATS may take.
    #[serde(deserialize_with = "duration", serialize_with = "show_duration")]
    pub connect_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            credentials_file: None,
            nkey_seed_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            stream: "walhook".into(),
            replicas: 1,
            shards: 16,
            max_bytes: 1024 * 1024 * 1024,
            max_age: Duration::ZERO,
            lease_ttl: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl ClusterConfig {
    /// How often an instance renews its leases: three renewals fit in one
    /// lease's life, so one lost renewal never costs a shard.
    pub fn heartbeat(&self) -> Duration {
        self.lease_ttl / 3
    }

    /// The key-value bucket of shard leases.
    pub fn lease_bucket(&self) -> String {
        format!("{}_leases", self.stream)
    }

    /// The subject of one shard's jobs.
    pub fn shard_subject(&self, shard: u32) -> String {
        format!("{}.jobs.{shard}", self.stream)
    }

    /// Whether the connection must use TLS: a `tls://` URL or a TLS file.
    pub fn requires_tls(&self) -> bool {
        self.nats_urls.iter().any(|u| u.starts_with("tls://"))
            || self.ca_file.is_some()
            || self.client_cert_file.is_some()
    }

    /// Every value checked; `max_body_bytes` is the largest job a hook can
    /// get, which the stream must be able to hold.
    pub(super) fn validate(&self, max_body_bytes: usize) -> anyhow::Result<()> {
        if self.nats_urls.is_empty() {
            bail!("cluster.nats_urls is empty: name at least one NATS server, e.g. [\"nats://10.0.0.5:4222\"]");
        }
        for text in &self.nats_urls {
            validate_url(text)?;
        }
        if self.credentials_file.is_some() && self.nkey_seed_file.is_some() {
            bail!(
                "cluster.credentials_file and cluster.nkey_seed_file are both set: a NATS \
                 connection authenticates one way; keep the one the server expects"
            );
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            bail!(
                "cluster.client_cert_file and cluster.client_key_file must be set together \
                 (a client certificate needs its key)"
            );
        }
        let stream_ok = !self.stream.is_empty()
            && self.stream.len() <= 32
            && self
                .stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !stream_ok {
            bail!(
                "cluster.stream = {:?} must be 1 to 32 letters, digits, '_' or '-' (it names a \
                 JetStream stream and prefixes its subjects)",
                self.stream
            );
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            bail!(
                "cluster.replicas = {} is outside 1..={MAX_REPLICAS} (JetStream keeps at most \
                 {MAX_REPLICAS} copies)",
                self.replicas
            );
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            bail!(
                "cluster.shards = {} is outside 1..={MAX_SHARDS}",
                self.shards
            );
        }
        let least = MIN_STREAM_BYTES.max(4 * max_body_bytes as u64);
        if self.max_bytes < least {
            bail!(
                "cluster.max_bytes = {} is below {least}: the stream must hold at least 16 MiB \
                 and four of the largest jobs (4 x delivery.max_body_bytes)",
                self.max_bytes
            );
        }
        if !self.max_age.is_zero() && self.max_age < Duration::from_secs(3600) {
            bail!(
                "cluster.max_age = {:?} is under 1h: a job older than it is removed from the \
                 stream undelivered; set \"0s\" (no limit) or at least \"1h\"",
                self.max_age
            );
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(60)).contains(&self.lease_ttl) {
            bail!(
                "cluster.lease_ttl = {:?} is outside 2s..60s (a killed instance's shards move \
                 after it)",
                self.lease_ttl
            );
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(300)).contains(&self.connect_timeout)
        {
            bail!(
                "cluster.connect_timeout = {:?} is outside 100ms..5m",
                self.connect_timeout
            );
        }
        Ok(())
    }
}

/// One `cluster.nats_urls` entry: `nats://` or `tls://`, a host, an
/// optional port, no credentials (they belong in the credentials files,
/// which are checked for who may read them; a URL is printed and logged).
fn validate_url(text: &str) -> anyhow::Result<()> {
    let url = url::Url::parse(text).map_err(|e| {
        anyhow::anyhow!(
            "cluster.nats_urls entry {text:?} is not a URL ({e}): write e.g. \"nats://10.0.0.5:4222\""
        )
    })?;
    if !matches!(url.scheme(), "nats" | "tls") {
        bail!(
            "cluster.nats_urls entry {text:?} has scheme {:?}: use nats:// (or tls:// to \
             require TLS)",
            url.scheme()
        );
    }
    if url.host_str().is_none_or(str::is_empty) {
        bail!("cluster.nats_urls entry {text:?} names no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!(
            "cluster.nats_urls entry {text:?} carries credentials: put them in \
             cluster.credentials_file or cluster.nkey_seed_file (a URL is shown in logs)"
        );
    }
    if url.path().len() > 1 || url.query().is_some() {
        bail!(
            "cluster.nats_urls entry {text:?} has a path or query: write scheme://host:port only"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
