//! One instance's share of the delivery work: it keeps its shard leases
//! ([`LeaseKeeper`]), runs a consumer for each shard it holds
//! ([`ShardConsumer`]), and delivers their jobs ([`BusDelivery`]). Every
//! instance runs one, the capture's leader too.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::consume::{ShardConsumer, Stop};
use super::deliver::BusDelivery;
use super::leases::{LeaseEvent, LeaseKeeper};
use crate::config::ClusterConfig;

/// Jobs on their way from the consumers to delivery: a full inbox holds
/// the consumers back, and delivery's byte budget holds the inbox.
const INBOX: usize = 256;
/// How long a shard handed over to another instance waits for its jobs in
/// flight before it lets the shard go; what is left is delivered again by
/// the next holder.
const HANDOVER_GRACE: Duration = Duration::from_secs(5);

/// A running shard consumer.
struct RunningShard {
    stop: watch::Sender<Stop>,
    task: JoinHandle<()>,
}

/// This instance's delivery in cluster mode, running as tasks.
pub struct Node {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Node {
    /// Take leases as `id` and deliver the shards they give.
    pub async fn start(
        js: &jetstream::Context,
        stream: Stream,
        cluster: ClusterConfig,
        id: String,
        delivery: BusDelivery,
    ) -> anyhow::Result<Node> {
        let (lease_events, leases) = mpsc::channel(64);
        let (keeper, _held) = LeaseKeeper::open(js, &cluster, id, lease_events).await?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(keeper, leases, stream, cluster, delivery, stopped));
        Ok(Node { stop, task })
    }

    /// Wait for the node to fail; a node never ends on its own otherwise.
    pub async fn failed(&mut self) -> anyhow::Error {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => anyhow::anyhow!("cluster delivery ended"),
            Err(e) => anyhow::anyhow!("cluster delivery panicked: {e}"),
        }
    }

    /// Stop pulling, let what is in flight settle (within the shutdown
    /// timeout), then give the leases up so the others take the shards at
    /// once.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("cluster delivery panicked: {e}")),
        }
    }
}

async fn run(
    keeper: LeaseKeeper,
    mut leases: mpsc::Receiver<LeaseEvent>,
    stream: Stream,
    cluster: ClusterConfig,
    delivery: BusDelivery,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shutdown_timeout = delivery.shutdown_timeout;
    let (keeper_stop, keeper_stopped) = watch::channel(false);
    let keeper = tokio::spawn(keeper.run(keeper_stopped));
    let (inbox, inbox_rx) = mpsc::channel(INBOX);
    let (delivery_stop, delivery_stopped) = watch::channel(false);
    let mut delivery = tokio::spawn(delivery.run(inbox_rx, delivery_stopped));
    let mut shards: HashMap<u32, RunningShard> = HashMap::new();
    let mut generation = 0u64;
    let failure = loop {
        tokio::select! {
            _ = stop.changed() => break None,
            ended = &mut delivery => {
                break Some(match ended {
                    Ok(Ok(())) => anyhow::anyhow!("cluster delivery ended"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::anyhow!("cluster delivery panicked: {e}"),
                });
            }
            event = leases.recv() => match event {
                Some(LeaseEvent::Acquired(shard)) => {
                    generation += 1;
                    let (stop, stopped) = watch::channel(Stop::Run);
                    let consumer = ShardConsumer {
                        stream: stream.clone(),
                        cluster: cluster.clone(),
                        shard,
                        generation,
                        deliver: inbox.clone(),
                    };
                    let task = tokio::spawn(consumer.run(stopped));
                    if let Some(old) = shards.insert(shard, RunningShard { stop, task }) {
                        old.task.abort();
                    }
                }
                Some(LeaseEvent::Lost(shard)) => {
                    if let Some(running) = shards.remove(&shard) {
                        // Another instance may hold it already: stop now.
                        // (Not waited for here: the keeper must go on
                        // renewing the other leases.)
                        let _ = running.stop.send(Stop::Settle(Duration::ZERO));
                    }
                }
                Some(LeaseEvent::Release { shard, stopped }) => {
                    let running = shards.remove(&shard);
                    tokio::spawn(async move {
                        if let Some(running) = running {
                            let _ = running.stop.send(Stop::Settle(HANDOVER_GRACE));
                            let _ = running.task.await;
                        }
                        // The lease is deleted only now, so the next holder
                        // starts after this one stopped.
                        let _ = stopped.send(());
                    });
                }
                None => break Some(anyhow::anyhow!("the shard lease keeper ended")),
            },
        }
    };
    // Stop pulling everywhere; the consumers acknowledge what delivery
    // settles while it drains.
    for running in shards.values() {
        let _ = running.stop.send(Stop::Settle(shutdown_timeout));
    }
    let _ = delivery_stop.send(true);
    for (_, running) in shards {
        let _ = running.task.await;
    }
    drop(inbox);
    if failure.is_none() {
        match delivery.await {
            Ok(Err(e)) => tracing::warn!("cluster delivery: {e:#}"),
            Err(e) => tracing::warn!("cluster delivery: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = keeper_stop.send(true);
    let _ = keeper.await;
    failure.map_or(Ok(()), Err)
}
