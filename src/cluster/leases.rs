//! Shard leases: which instance delivers which shard, agreed through a
//! JetStream key-value bucket.
//!
//! Every instance writes `instance.<id>` on each heartbeat (its presence)
//! and holds `shard.<n>` for the shards it delivers. A lease is taken with
//! a create (refused while another instance's lease lives) and renewed
//! with an update checked against the revision the holder last wrote
//! (refused if anyone else wrote since), so two instances never hold one
//! shard. The bucket's max age is the lease's life: an instance that stops
//! renewing (killed, cut off from NATS) loses its presence and its leases
//! `lease_ttl` after its last renewal, without anyone deleting them. The
//! holder also counts `lease_ttl` from the moment it *sent* its last
//! successful renewal, so it gives a shard up no later than the server
//! lets another instance take it.
//!
//! Which shards an instance wants is rendezvous hashing over the live
//! instances: each shard goes to the instance with the highest
//! hash(instance, shard). Every instance computes the same answer from the
//! same live set, and an instance joining or leaving moves only the shards
//! it gains or had, never reshuffles the rest. A shard an instance holds
//! but no longer wants is handed over in two steps: the caller is told to
//! stop delivering it ([`LeaseEvent::Release`]), and only once it says it
//! has stopped is the lease deleted, so its last jobs are settled before
//! another instance starts on that shard's order.
//!
//! Takeover bound: a killed holder's lease expires at most `lease_ttl`
//! after its last renewal, and every instance looks again every heartbeat
//! (`lease_ttl / 3`): its shards are held again within `lease_ttl +
//! heartbeat` (8 s with the default 6 s).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::{self, context::KeyValueErrorKind};
use bytes::Bytes;
use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::config::ClusterConfig;

const INSTANCE_PREFIX: &str = "instance.";
const SHARD_PREFIX: &str = "shard.";
/// The most instance keys read per look: more is not a walhook cluster.
const MAX_INSTANCES: usize = 1024;

/// The shard a hook's jobs go to: every job of one hook is in one shard,
/// so one instance delivers them, in order.
pub fn shard_of(webhook_id: i32, shards: u32) -> u32 {
    // rem_euclid: webhook ids are identity values but may be negative if a
    // DBA inserts one; any id gets a shard in 0..shards.
    (i64::from(webhook_id).rem_euclid(i64::from(shards.max(1)))) as u32
}

/// The instances that want each shard: rendezvous hashing, the highest
/// hash(instance, shard) wins.
pub fn assignment(instances: &BTreeSet<String>, shards: u32) -> BTreeMap<u32, String> {
    (0..shards)
        .filter_map(|shard| {
            instances
                .iter()
                .max_by_key(|id| {
                    let digest = Sha256::new()
                        .chain_update(id.as_bytes())
                        .chain_update(shard.to_be_bytes())
                        .finalize();
                    let mut first = [0u8; 8];
                    first.copy_from_slice(&digest[..8]);
                    u64::from_be_bytes(first)
                })
                .map(|id| (shard, id.clone()))
        })
        .collect()
}

/// What the keeper tells the instance it runs for.
#[derive(Debug)]
pub enum LeaseEvent {
    /// The shard is this instance's: start delivering it.
    Acquired(u32),
    /// The lease ran out or someone else holds it now: stop delivering the
    /// shard at once.
    Lost(u32),
    /// Another instance should have the shard: stop delivering it, settle
    /// what is in flight, then send on `stopped`; the lease is kept (and
    /// renewed) until then.
    Release {
        shard: u32,
        stopped: oneshot::Sender<()>,
    },
}

/// A lease this instance holds.
struct Held {
    revision: u64,
    /// When the last successful renewal was sent: the lease is presumed
    /// gone `lease_ttl` after it.
    renewed: Instant,
    /// Set while the shard is being handed over.
    releasing: Option<oneshot::Receiver<()>>,
}

/// Holds this instance's presence and leases, one heartbeat at a time.
pub struct LeaseKeeper {
    kv: kv::Store,
    /// This instance's id: its presence key and the value of its leases.
    id: String,
    shards: u32,
    ttl: Duration,
    heartbeat: Duration,
    held: BTreeMap<u32, Held>,
    events: mpsc::Sender<LeaseEvent>,
    /// The shards held, for status and metrics.
    held_view: watch::Sender<BTreeSet<u32>>,
}

impl LeaseKeeper {
    /// Opens (or creates) the lease bucket of `cluster`. `id` must be
    /// unique among the instances: letters, digits, '-' and '_'.
    pub async fn open(
        js: &jetstream::Context,
        cluster: &ClusterConfig,
        id: String,
        events: mpsc::Sender<LeaseEvent>,
    ) -> anyhow::Result<(LeaseKeeper, watch::Receiver<BTreeSet<u32>>)> {
        let bucket = cluster.lease_bucket();
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(e) if matches!(e.kind(), KeyValueErrorKind::GetBucket) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    description: "walhook: shard leases and instance presence".into(),
                    history: 1,
                    max_age: cluster.lease_ttl,
                    num_replicas: cluster.replicas,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("creating the lease bucket {bucket:?}"))?,
            Err(e) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("opening the lease bucket {bucket:?}"))
            }
        };
        let (held_view, view) = watch::channel(BTreeSet::new());
        Ok((
            LeaseKeeper {
                kv,
                id,
                shards: cluster.shards,
                ttl: cluster.lease_ttl,
                heartbeat: cluster.heartbeat(),
                held: BTreeMap::new(),
                events,
                held_view,
            },
            view,
        ))
    }

    /// One look every heartbeat until `shutdown`; then every lease and the
    /// presence are deleted, so the others take over at their next look
    /// instead of after the leases' life. The caller stops delivering
    /// before it signals shutdown.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(self.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.look().await {
                tracing::warn!("shard leases: {e:#} (trying again in {:?})", self.heartbeat);
            }
        }
        self.leave().await;
    }

    /// Renew, drop what ran out, hand over what another instance should
    /// have, and take what this one should have and nobody holds.
    async fn look(&mut self) -> anyhow::Result<()> {
        self.expire_local().await;
        self.kv
            .put(format!("{INSTANCE_PREFIX}{}", self.id), Bytes::new())
            .await
            .context("writing this instance's presence")?;
        self.renew().await;
        let instances = self.live_instances().await?;
        let wanted: BTreeSet<u32> = assignment(&instances, self.shards)
            .into_iter()
            .filter(|(_, id)| *id == self.id)
            .map(|(shard, _)| shard)
            .collect();
        self.hand_over(&wanted).await;
        for shard in wanted {
            if !self.held.contains_key(&shard) {
                self.try_take(shard).await;
            }
        }
        self.publish_view();
        Ok(())
    }

    /// Leases whose life ran out since their last renewal are lost, even
    /// if NATS could not be asked: another instance may hold them now.
    async fn expire_local(&mut self) {
        let now = Instant::now();
        let gone: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| now >= h.renewed + self.ttl)
            .map(|(shard, _)| *shard)
            .collect();
        for shard in gone {
            self.held.remove(&shard);
            tracing::warn!(shard, "shard lease ran out before it could be renewed");
            self.tell(LeaseEvent::Lost(shard)).await;
        }
    }

    async fn renew(&mut self) {
        let shards: Vec<u32> = self.held.keys().copied().collect();
        for shard in shards {
            let Some(revision) = self.held.get(&shard).map(|h| h.revision) else {
                continue;
            };
            let sent = Instant::now();
            match self
                .kv
                .update(shard_key(shard), self.id.clone().into(), revision)
                .await
            {
                Ok(revision) => {
                    if let Some(held) = self.held.get_mut(&shard) {
                        held.revision = revision;
                        held.renewed = sent;
                    }
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    self.held.remove(&shard);
                    tracing::warn!(shard, "shard lease taken by another instance");
                    self.tell(LeaseEvent::Lost(shard)).await;
                }
                // Kept until its life runs out (expire_local).
                Err(e) => tracing::warn!(shard, "renewing the shard lease: {e}"),
            }
        }
    }

    /// The ids of the instances whose presence is alive (this one's too,
    /// just written).
    async fn live_instances(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut keys = self.kv.keys().await.context("listing the lease bucket")?;
        let mut ids = Vec::new();
        while let Some(key) = keys.try_next().await.context("listing the lease bucket")? {
            if let Some(id) = key.strip_prefix(INSTANCE_PREFIX) {
                ids.push(id.to_owned());
                if ids.len() >= MAX_INSTANCES {
                    break;
                }
            }
        }
        let mut ids: BTreeSet<String> = ids.into_iter().collect();
        ids.insert(self.id.clone());
        Ok(ids)
    }

    /// Shards held but wanted by another instance: ask the caller to stop
    /// each, and delete the lease of each it has stopped.
    async fn hand_over(&mut self, wanted: &BTreeSet<u32>) {
        let shards: Vec<u32> = self.held.keys().copied().collect();
        for shard in shards {
            let keep = wanted.contains(&shard);
            let Some(held) = self.held.get_mut(&shard) else {
                continue;
            };
            match held.releasing.as_mut() {
                None if !keep => {
                    let (stopped, waiting) = oneshot::channel();
                    held.releasing = Some(waiting);
                    self.tell(LeaseEvent::Release { shard, stopped }).await;
                }
                Some(waiting) => match waiting.try_recv() {
                    // Stopped (or the caller dropped the shard altogether).
                    Ok(()) | Err(oneshot::error::TryRecvError::Closed) => {
                        let revision = held.revision;
                        match self
                            .kv
                            .delete_expect_revision(shard_key(shard), Some(revision))
                            .await
                        {
                            Ok(()) => {
                                self.held.remove(&shard);
                                tracing::info!(shard, "shard handed over");
                            }
                            Err(e) => tracing::warn!(shard, "releasing the shard lease: {e}"),
                        }
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {}
                },
                None => {}
            }
        }
    }

    async fn try_take(&mut self, shard: u32) {
        let sent = Instant::now();
        match self
            .kv
            .create(shard_key(shard), self.id.clone().into())
            .await
        {
            Ok(revision) => {
                self.held.insert(
                    shard,
                    Held {
                        revision,
                        renewed: sent,
                        releasing: None,
                    },
                );
                tracing::info!(shard, "shard lease taken");
                self.tell(LeaseEvent::Acquired(shard)).await;
            }
            // Its holder has not let go yet (a handover, or a lease still
            // alive): looked at again next heartbeat.
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => tracing::warn!(shard, "taking the shard lease: {e}"),
        }
    }

    async fn tell(&self, event: LeaseEvent) {
        // The receiver gone means the instance is stopping: nothing to tell.
        let _ = self.events.send(event).await;
    }

    fn publish_view(&self) {
        let held: BTreeSet<u32> = self.held.keys().copied().collect();
        self.held_view.send_if_modified(|view| {
            let changed = *view != held;
            *view = held;
            changed
        });
    }

    async fn leave(&mut self) {
        for (shard, held) in std::mem::take(&mut self.held) {
            if let Err(e) = self
                .kv
                .delete_expect_revision(shard_key(shard), Some(held.revision))
                .await
            {
                tracing::warn!(shard, "releasing the shard lease on stop: {e}");
            }
        }
        let _ = self
            .kv
            .delete(format!("{INSTANCE_PREFIX}{}", self.id))
            .await;
        self.publish_view();
    }
}

fn shard_key(shard: u32) -> String {
    format!("{SHARD_PREFIX}{shard}")
}

#[cfg(test)]
mod tests;
