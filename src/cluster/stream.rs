//! The jobs' stream: one subject per shard, its limits from `[cluster]`.
//!
//! Discard "new": a full stream refuses the publish instead of dropping its
//! oldest jobs, so a limit reached holds the slot (the capture waits) and
//! never loses a committed change. Retention "work queue" would delete a
//! job at its first ack, but also forbids two consumers over one subject,
//! which a shard moving between instances briefly has; "limits" keeps the
//! acked jobs until the limits, and each shard's durable consumer knows
//! what it has acked.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::config::ClusterConfig;

/// How long JetStream remembers a message id to drop a re-publish: the
/// capture re-publishes what it had not confirmed after a restart or a
/// takeover, which the lease and leadership bounds keep well inside it.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Room in one message beyond its body: the job's fields besides it.
const JOB_OVERHEAD_BYTES: usize = 64 * 1024;

/// The stream's configuration as `[cluster]` (and the largest body) ask.
pub fn config(cluster: &ClusterConfig, max_body_bytes: usize) -> stream::Config {
    stream::Config {
        name: cluster.stream.clone(),
        description: Some("walhook: the jobs of the capture, one subject per shard".into()),
        subjects: vec![format!("{}.jobs.*", cluster.stream)],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        max_bytes: i64::try_from(cluster.max_bytes).unwrap_or(i64::MAX),
        max_age: cluster.max_age,
        max_message_size: i32::try_from(max_body_bytes.saturating_add(JOB_OVERHEAD_BYTES))
            .unwrap_or(i32::MAX),
        num_replicas: cluster.replicas,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// How the stream on the servers differs from the one configured, each
/// difference as `key: servers have X, config says Y`.
pub fn differences(on_server: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    if on_server.max_bytes != wanted.max_bytes {
        out.push(format!(
            "cluster.max_bytes: the stream has {}, the config says {}",
            on_server.max_bytes, wanted.max_bytes
        ));
    }
    if on_server.max_age != wanted.max_age {
        out.push(format!(
            "cluster.max_age: the stream has {:?}, the config says {:?}",
            on_server.max_age, wanted.max_age
        ));
    }
    if on_server.num_replicas != wanted.num_replicas {
        out.push(format!(
            "cluster.replicas: the stream has {}, the config says {}",
            on_server.num_replicas, wanted.num_replicas
        ));
    }
    if on_server.discard != wanted.discard {
        out.push(
            "the stream discards old messages when full: walhook needs discard \"new\" (a full \
             stream must refuse, never drop jobs)"
                .into(),
        );
    }
    if on_server.subjects != wanted.subjects {
        out.push(format!(
            "the stream's subjects are {:?}, walhook publishes to {:?}",
            on_server.subjects, wanted.subjects
        ));
    }
    out
}
