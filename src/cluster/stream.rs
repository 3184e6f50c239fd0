//! The jobs' stream: one subject per shard, its limits from `[cluster]`.
//!
//! Discard "new": a full stream refuses the publish instead of dropping its
//! oldest jobs, so a limit reached holds the slot (the capture waits) and
//! never loses a committed change. Retention "interest": a job is removed
//! once the durable consumer of its shard has acknowledged it, so the
//! stream holds the backlog and no more. ("limits" would keep acked jobs
//! until the limits, and with discard "new" a stream at its limit would
//! refuse every job for ever; "work queue" forbids overlapping consumers.)
//! A job published to a subject nobody consumes would be dropped at once,
//! so every instance creates every shard's consumer ([`ensure`]) before
//! the capture publishes.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer, context::GetStreamErrorKind, stream, ErrorCode};

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
        retention: stream::RetentionPolicy::Interest,
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

/// How long JetStream waits for a delivered job's acknowledgement before
/// it delivers the job again. The instance holding the job says it is
/// still at work on it every third of this ([`PROGRESS_EVERY`]), so only a
/// job whose instance died (or lost its shard) is delivered again.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often an instance says it is still at work on its jobs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Jobs of one shard delivered to its instance and not yet settled: the
/// most one shard holds in memory besides the byte budget's bound.
pub const MAX_ACK_PENDING: i64 = 1000;

/// The durable consumer of one shard: its name is the shard's, not an
/// instance's, so whichever instance holds the shard's lease continues
/// where the last one acknowledged.
pub fn consumer_name(cluster: &ClusterConfig, shard: u32) -> String {
    format!("{}-shard-{shard}", cluster.stream)
}

/// The configuration of one shard's consumer.
pub fn consumer_config(cluster: &ClusterConfig, shard: u32) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(consumer_name(cluster, shard)),
        description: Some(format!("walhook: the jobs of shard {shard}")),
        filter_subject: cluster.shard_subject(shard),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        replay_policy: consumer::ReplayPolicy::Instant,
        num_replicas: cluster.replicas,
        ..Default::default()
    }
}

/// Create the stream (or bring its limits to the config's) and every
/// shard's consumer: each instance does it when it starts, so the
/// capture never publishes to a shard without one.
pub async fn ensure(
    js: &jetstream::Context,
    cluster: &ClusterConfig,
    max_body_bytes: usize,
) -> anyhow::Result<stream::Stream> {
    // Instances started together race to create the stream and consumers:
    // the loser finds them made, the next time round.
    let mut tries = 0;
    loop {
        tries += 1;
        match ensure_once(js, cluster, max_body_bytes).await {
            Ok(stream) => return Ok(stream),
            Err(e) if tries < ENSURE_TRIES => {
                tracing::debug!("setting up the stream, trying again: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Tries of [`ensure`] before it gives up.
const ENSURE_TRIES: u32 = 3;

async fn ensure_once(
    js: &jetstream::Context,
    cluster: &ClusterConfig,
    max_body_bytes: usize,
) -> anyhow::Result<stream::Stream> {
    let wanted = config(cluster, max_body_bytes);
    let stream = match js.get_stream(&cluster.stream).await {
        Ok(mut stream) => {
            let on_server = stream
                .info()
                .await
                .with_context(|| format!("reading stream {:?}", cluster.stream))?
                .config
                .clone();
            let differences = differences(&on_server, &wanted);
            if !differences.is_empty() || on_server.retention != wanted.retention {
                tracing::info!(
                    stream = %cluster.stream,
                    "updating the stream to the config: {}",
                    differences.join("; ")
                );
                js.update_stream(wanted.clone()).await.with_context(|| {
                    format!(
                        "updating stream {:?} to the config (cluster.max_bytes, max_age,                          replicas; a stream made by another tool may have to be deleted)",
                        cluster.stream
                    )
                })?;
            }
            stream
        }
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref js_error)
                if js_error.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            js.create_stream(wanted)
                .await
                .with_context(|| format!("creating stream {:?}", cluster.stream))?
        }
        Err(e) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("looking up stream {:?}", cluster.stream))
        }
    };
    for shard in 0..cluster.shards {
        stream
            .get_or_create_consumer::<consumer::pull::Config>(
                &consumer_name(cluster, shard),
                consumer_config(cluster, shard),
            )
            .await
            .with_context(|| {
                format!(
                    "creating consumer {:?} of stream {:?}",
                    consumer_name(cluster, shard),
                    cluster.stream
                )
            })?;
    }
    Ok(stream)
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
