//! Cluster mode's wiring (`[cluster]`): the NATS connection, the jobs'
//! stream and its consumers, and this instance's delivery node with its own
//! SQL session, statistics writer and failure log. The capture side (the
//! publisher) is started by each session that leads the slot.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::deliver::BusDelivery;
use crate::cluster::node::Node;
use crate::config::{ClusterConfig, Config, Live};
use crate::delivery::{http_client, AttemptLog, DeliveryContext, Dispatcher, UsageBook};
use crate::metrics::Metrics;
use crate::store::usage::UsageWriter;
use crate::store::Store;
use crate::telemetry::Telemetry;

/// This instance in the cluster: the bus, and its delivery node.
pub(super) struct Bus {
    pub js: jetstream::Context,
    pub cluster: ClusterConfig,
    node: Node,
    usage_stop: watch::Sender<bool>,
    usage_writer: JoinHandle<()>,
}

impl Bus {
    /// Connect, make sure the stream and every shard's consumer exist, and
    /// start delivering the shards this instance will hold.
    pub async fn start(
        config: &Config,
        cluster: &ClusterConfig,
        metrics: Arc<Metrics>,
        telemetry: Telemetry,
    ) -> anyhow::Result<Bus> {
        let id = instance_id();
        let client = crate::cluster::connect(cluster, &format!("walhook {id}")).await?;
        let js = jetstream::new(client);
        let stream =
            crate::cluster::stream::ensure(&js, cluster, config.delivery.max_body_bytes).await?;
        let conn = config.connection()?;
        let http = http_client(&config.delivery)?;
        let store = Store::connect(&conn, &config.postgres.schema)
            .await
            .context("cluster delivery's SQL session")?;
        let live = Live::new(config.delivery.clone());
        let usage = UsageBook::default();
        let (attempts, _attempt_writer) =
            AttemptLog::start(Arc::new(store.clone()), live.clone(), Arc::clone(&metrics));
        let (usage_stop, usage_stopped) = watch::channel(false);
        let usage_writer = tokio::spawn(
            UsageWriter {
                book: usage.clone(),
                store: store.clone(),
                interval: Duration::from_secs(1),
            }
            .run(usage_stopped),
        );
        let dispatcher = Dispatcher::new(DeliveryContext {
            http,
            config: live,
            metrics: Arc::clone(&metrics),
            usage,
            store: Arc::new(store.clone()),
            attempts,
            telemetry,
        });
        let delivery = BusDelivery::start(
            dispatcher,
            store,
            metrics,
            cluster.shards,
            config.delivery.shutdown_timeout,
        )
        .await?;
        tracing::info!(instance = %id, stream = %cluster.stream, "cluster mode: delivering the shards this instance holds");
        let node = Node::start(&js, stream, cluster.clone(), id, delivery).await?;
        Ok(Bus {
            js,
            cluster: cluster.clone(),
            node,
            usage_stop,
            usage_writer,
        })
    }

    /// Wait for the node to fail.
    pub async fn failed(&mut self) -> anyhow::Error {
        self.node.failed().await
    }

    /// Stop delivering (what is in flight settles within the shutdown
    /// timeout), give the leases up and write the statistics.
    pub async fn stop(self) -> anyhow::Result<()> {
        let result = self.node.stop().await;
        let _ = self.usage_stop.send(true);
        let _ = self.usage_writer.await;
        result
    }
}

/// This instance's id among the others: host, process and a random part,
/// so a restarted process never takes a dead one's presence for its own.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "walhook".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}
