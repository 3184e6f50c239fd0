//! This instance's delivery of the jobs its shards' consumers take from
//! the bus: the same per-hook delivery as a single walhook (a hook's
//! queue, retries, throttling, TooManyErrors, 410, parking, statistics),
//! fed from the bus instead of the capture.
//!
//! The hooks' rows are read from the `webhook` table (and their settings
//! from `webhook_control`) every [`REFRESH`], and when a job names a hook
//! not read yet. A job is signed at delivery with the secret the table
//! holds then. A change to a row reaches delivery at the next read, not in
//! commit order as on a single walhook (the capture, which matches the
//! events, does follow the rows in commit order): applying registry changes
//! in commit order on every instance is still to be built.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::consume::Inbound;
use super::leases::shard_of;
use super::message::BusJob;
use crate::checkpoint::Ticket;
use crate::delivery::{Dispatcher, HookSettings, Job};
use crate::events::WebhookRow;
use crate::metrics::Metrics;
use crate::registry::{Registry, WebhookState};
use crate::store::Store;

/// How often the hooks' rows and settings are read again.
pub const REFRESH: Duration = Duration::from_secs(1);
/// A job naming a hook not read yet reads the table again, at most this
/// often (a job of a deleted hook must not read it once per job).
const MIN_REREAD: Duration = Duration::from_millis(200);
/// How often delivery looks at every hook on its own clock (backlog bounds,
/// replayers), as a single walhook does.
const DELIVERY_TICK: Duration = Duration::from_secs(1);

/// Delivers the jobs of the shards this instance holds.
pub struct BusDelivery {
    pub dispatcher: Dispatcher,
    /// Reads the hooks' rows; parking and statistics use their own handle.
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub shards: u32,
    /// How long a stop waits for the jobs in flight.
    pub shutdown_timeout: Duration,
    registry: Registry,
    /// The rows as last read, by webhook_id text, to see what changed.
    rows: HashMap<String, WebhookRow>,
    settings: HashMap<i32, HookSettings>,
    has_control_table: bool,
    read_at: Instant,
    /// The hooks handed to the dispatcher, by shard: dropped from it when
    /// the shard goes to another instance.
    given: HashMap<u32, HashSet<i32>>,
    /// The shards' consumers running now, by their generation: a stop of
    /// an older one must not drop the newer one's jobs.
    generations: HashMap<u32, u64>,
}

impl BusDelivery {
    /// Reads the hooks' rows and settings once, then is ready for jobs.
    pub async fn start(
        dispatcher: Dispatcher,
        store: Store,
        metrics: Arc<Metrics>,
        shards: u32,
        shutdown_timeout: Duration,
    ) -> anyhow::Result<BusDelivery> {
        let has_control_table = store.has_control_table().await?;
        let mut delivery = BusDelivery {
            dispatcher,
            store,
            metrics,
            shards,
            shutdown_timeout,
            registry: Registry::default(),
            rows: HashMap::new(),
            settings: HashMap::new(),
            has_control_table,
            read_at: Instant::now(),
            given: HashMap::new(),
            generations: HashMap::new(),
        };
        delivery.refresh().await?;
        Ok(delivery)
    }

    /// Deliver until `stop` turns true (then let what is in flight finish
    /// within the shutdown timeout) or a failure: a lost SQL session ends
    /// it, and with it the instance, as it ends a single walhook's session.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Inbound>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(DELIVERY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break Ok(()),
                inbound = inbox.recv() => {
                    let Some(inbound) = inbound else { break Ok(()) };
                    if let Err(e) = self.inbound(inbound).await {
                        break Err(e);
                    }
                }
                _ = refresh.tick() => {
                    if let Err(e) = self.refresh().await {
                        if self.store.is_closed() {
                            break Err(e.context("cluster delivery's SQL session closed"));
                        }
                        tracing::warn!("reading the webhook table: {e:#}");
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = self.dispatcher.tick().await {
                        break Err(e);
                    }
                }
            }
        };
        // Jobs not taken yet are dropped unsettled: handed back to JetStream.
        drop(inbox);
        if !self.dispatcher.drain(self.shutdown_timeout).await {
            tracing::warn!(
                "cluster delivery: jobs still in flight after {}: JetStream delivers them again",
                crate::text::human_duration(self.shutdown_timeout)
            );
        }
        result
    }

    async fn inbound(&mut self, inbound: Inbound) -> anyhow::Result<()> {
        match inbound {
            Inbound::Job { shard, job, ticket } => self.take(shard, job, ticket).await,
            Inbound::ShardStarted { shard, generation } => {
                self.generations.insert(shard, generation);
                self.shard_started(shard).await
            }
            Inbound::ShardStopped { shard, generation } => {
                if self.generations.get(&shard) == Some(&generation) {
                    self.generations.remove(&shard);
                    for id in self.given.remove(&shard).unwrap_or_default() {
                        self.dispatcher.hook_removed(id);
                    }
                }
                Ok(())
            }
        }
    }

    /// A job from the bus, to its hook as the table has it now: a hook
    /// deleted or made invalid since, or Stopped/Unknown, gets nothing (as
    /// when a single walhook's hook changes with jobs queued).
    async fn take(&mut self, shard: u32, job: BusJob, ticket: Ticket) -> anyhow::Result<()> {
        if self.registry.get(job.webhook_id).is_none() && self.read_at.elapsed() >= MIN_REREAD {
            self.refresh().await?;
        }
        let Some(hook) = self.registry.get(job.webhook_id).cloned() else {
            tracing::debug!(
                webhook_id = job.webhook_id,
                event_id = %job.event_id,
                "job of a hook no longer in the webhook table: dropped"
            );
            self.metrics.events_skipped.inc();
            ticket.settle();
            return Ok(());
        };
        if !hook.state.takes_events() {
            self.metrics.events_skipped.inc();
            ticket.settle();
            return Ok(());
        }
        self.given.entry(shard).or_default().insert(hook.id);
        let shared = job.shared();
        let job = Job {
            hook,
            event: job.event,
            event_id: job.event_id,
            ordering_key: job.ordering_key,
            scope: job.scope,
            body: job.body,
            shared,
            commit_lsn: job.commit_lsn,
            change_index: job.change_index,
            ticket,
            // The bus does not carry a transaction's trace context yet:
            // a job delivered from it starts a trace of its own.
            trace: None,
        };
        self.dispatcher.take(job).await
    }

    /// The shard's hooks with parked events or a running error count, as
    /// stored: they resume as they were, as at a single walhook's start.
    async fn shard_started(&mut self, shard: u32) -> anyhow::Result<()> {
        let parked = self.store.parked_hook_set().await?;
        let errors = self.store.consecutive_errors().await?;
        let in_shard = |id: &i32| shard_of(*id, self.shards) == shard;
        self.dispatcher.parked_without_hook(
            parked
                .iter()
                .copied()
                .filter(|id| in_shard(id) && self.registry.get(*id).is_none()),
        );
        let hooks: Vec<_> = self
            .registry
            .hooks()
            .filter(|h| in_shard(&h.id))
            .cloned()
            .collect();
        for hook in hooks {
            let is_parked = parked.contains(&hook.id);
            let count = errors.get(&hook.id).copied().unwrap_or(0);
            if is_parked || count > 0 {
                self.given.entry(shard).or_default().insert(hook.id);
                self.dispatcher
                    .restore(&hook, is_parked, u32::try_from(count).unwrap_or(0))
                    .await;
            }
        }
        Ok(())
    }

    /// Read the hooks' rows and settings; apply what changed to the hooks
    /// delivery holds.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        self.read_at = Instant::now();
        let rows = self.store.webhook_rows().await?;
        let rows: HashMap<String, WebhookRow> = rows
            .into_iter()
            .map(|row| {
                let id = row
                    .0
                    .get("webhook_id")
                    .cloned()
                    .flatten()
                    .unwrap_or_default();
                (id, row)
            })
            .collect();
        let changed: Vec<String> = rows
            .iter()
            .filter(|(id, row)| self.rows.get(*id) != Some(*row))
            .map(|(id, _)| id.clone())
            .chain(
                self.rows
                    .keys()
                    .filter(|id| !rows.contains_key(*id))
                    .cloned(),
            )
            .collect();
        if changed.is_empty() {
            // Nothing new: the registry stays (rebuilding it would warn
            // about an invalid row once a second).
            return self.refresh_settings().await;
        }
        let old = std::mem::replace(
            &mut self.registry,
            Registry::from_rows(rows.values().cloned()),
        );
        self.rows = rows;
        for id in changed.iter().filter_map(|id| id.parse::<i32>().ok()) {
            let shard = shard_of(id, self.shards);
            if !self.given.get(&shard).is_some_and(|ids| ids.contains(&id)) {
                continue;
            }
            match self.registry.get(id).cloned() {
                Some(hook) => {
                    let was_active = old.get(id).is_some_and(|h| h.state == WebhookState::Active);
                    self.dispatcher.hook_changed(&hook, was_active).await;
                }
                None => {
                    self.dispatcher.hook_removed(id);
                    if let Some(ids) = self.given.get_mut(&shard) {
                        ids.remove(&id);
                    }
                }
            }
        }
        self.refresh_settings().await
    }

    /// Read `webhook_control`; apply what changed.
    async fn refresh_settings(&mut self) -> anyhow::Result<()> {
        if self.has_control_table {
            let mut seen = HashSet::new();
            for row in self.store.control_rows().await? {
                let Some((id, settings, _)) = HookSettings::from_row(&row) else {
                    continue;
                };
                seen.insert(id);
                if self.settings.get(&id) != Some(&settings) {
                    self.settings.insert(id, settings.clone());
                    self.dispatcher.settings_changed(id, Some(settings)).await;
                }
            }
            let gone: Vec<i32> = self
                .settings
                .keys()
                .filter(|id| !seen.contains(id))
                .copied()
                .collect();
            for id in gone {
                self.settings.remove(&id);
                self.dispatcher.settings_changed(id, None).await;
            }
        }
        Ok(())
    }
}
