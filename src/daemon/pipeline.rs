//! The reading side of a session: one message at a time, in WAL order,
//! from the source through decoding, events and the registry to delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use super::log_limit::LogLimit;
use super::reload::ReloadPlan;
use crate::backfill::{self, ClosedChunk, Reconciler, Watermark};
use crate::checkpoint::{Checkpoint, OpenTxn, Ticket};
use crate::cluster::publish::Publisher;
use crate::config::Config;
use crate::delivery::{Dispatcher, EventIntake, HookSettings, ParkedSize};
use crate::events::catalog::TypeCatalog;
use crate::events::{Change, ChangeEvent, EventBuilder, Operation, TxnInfo};
use crate::metrics::{HookGauges, Metrics};
use crate::pgoutput::{self, Lsn, Message};
use crate::registry::{Admission, PendingSnapshots, Registry, RegistryUpdate};
use crate::source::SourceMessage;
use crate::store::Store;
use crate::telemetry::{TraceParent, TRACE_PREFIX};

/// Registry snapshots written (each the rows a commit changed) between
/// two compactions into one full snapshot at the slot's position: what
/// they cost stays in proportion to the changes.
const COMPACT_SNAPSHOTS_EVERY: u32 = 64;

/// The transaction being read.
struct OpenTransaction {
    info: TxnInfo,
    checkpoint: OpenTxn,
    next_index: u32,
    registry_changed: bool,
    /// The replication origin the transaction came from, if any.
    origin: Option<String>,
    /// The trace context the transaction emitted last (`walhook.trace`):
    /// its later events' deliveries continue that trace.
    trace: Option<Arc<TraceParent>>,
}

/// The reading side of the pipeline.
pub(super) struct Pipeline {
    config: Arc<Config>,
    /// Catalog look-ups (types, keys) and registry snapshots.
    store: Store,
    /// The server's system identifier, part of every EventId.
    system_id: String,
    builder: EventBuilder,
    registry: Registry,
    checkpoint: Checkpoint,
    dispatcher: Dispatcher,
    /// Cluster mode: jobs go to the bus, and the instances holding their
    /// shards deliver them; the dispatcher above then gets none.
    publisher: Option<Publisher>,
    txn: Option<OpenTransaction>,
    /// Registry states to record before confirming past their commit.
    snapshots: PendingSnapshots,
    /// Snapshots written since the records were last compacted.
    snapshots_since_compaction: u32,
    metrics: Arc<Metrics>,
    /// The server's WAL end as last heard of, for the lag metric.
    server_end: Lsn,
    /// The newest position found confirmable with its registry snapshot
    /// written: what this session has settled.
    settled: Lsn,
    /// Backfill watermarks and the live changes between them.
    backfill: Reconciler,
    /// Warnings about logical messages under walhook's prefix that are
    /// not watermarks: any role can emit them.
    odd_messages: LogLimit,
}

/// What a pipeline is made of, from the session that starts it.
pub(super) struct PipelineParts {
    pub config: Arc<Config>,
    pub store: Store,
    pub system_id: String,
    pub builder: EventBuilder,
    pub registry: Registry,
    /// Where the session starts reading.
    pub start: Lsn,
    pub dispatcher: Dispatcher,
    /// Cluster mode's way for jobs.
    pub publisher: Option<Publisher>,
    pub metrics: Arc<Metrics>,
    pub backfill: Reconciler,
}

impl Pipeline {
    pub fn new(parts: PipelineParts) -> Pipeline {
        let snapshots = PendingSnapshots::new(&parts.registry);
        Pipeline {
            config: parts.config,
            store: parts.store,
            system_id: parts.system_id,
            builder: parts.builder,
            registry: parts.registry,
            checkpoint: Checkpoint::new(parts.start),
            dispatcher: parts.dispatcher,
            publisher: parts.publisher,
            txn: None,
            snapshots,
            snapshots_since_compaction: 0,
            metrics: parts.metrics,
            server_end: parts.start,
            settled: parts.start,
            backfill: parts.backfill,
            odd_messages: LogLimit::new(Duration::from_secs(60)),
        }
    }

    /// Which transactions are settled, and what may be confirmed.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// The server's WAL end as last heard of.
    pub fn server_end(&self) -> Lsn {
        self.server_end
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What this session has settled.
    pub fn settled(&self) -> Lsn {
        self.settled
    }

    /// Bytes of request bodies queued or in flight.
    pub fn in_flight_bytes(&self) -> u64 {
        self.dispatcher.in_flight_bytes()
    }

    /// The gauges of every hook in the registry, as delivery sees them.
    pub fn hook_gauges(&self) -> Vec<HookGauges> {
        self.registry
            .hooks()
            .map(|hook| self.dispatcher.hook_gauges(hook))
            .collect()
    }

    /// Parked events dropped for their age (see
    /// [`Dispatcher::parked_expired`]).
    pub fn parked_expired(&self, webhook_id: i32, expired: ParkedSize) {
        self.dispatcher.parked_expired(webhook_id, expired);
    }

    /// Delivery's look at every hook on its own clock (see
    /// [`Dispatcher::tick`]).
    pub async fn tick_delivery(&mut self) -> anyhow::Result<()> {
        self.dispatcher.tick().await.map(drop)
    }

    /// Stop delivery, waiting up to `timeout` for what is in flight; false
    /// when some was left unfinished (see [`Dispatcher::drain`]).
    pub async fn drain(&mut self, timeout: std::time::Duration) -> bool {
        let published = match self.publisher.take() {
            Some(publisher) => publisher.drain(timeout).await,
            None => true,
        };
        self.dispatcher.drain(timeout).await && published
    }

    /// Hand a job on: to the bus in cluster mode, else to delivery.
    async fn take(&mut self, job: crate::delivery::Job) -> anyhow::Result<()> {
        match self.publisher.as_mut() {
            Some(publisher) => {
                let commit_time = self.txn.as_ref().map_or(0, |t| t.info.commit_time);
                publisher.publish(job, commit_time).await
            }
            None => self.dispatcher.take(job).await,
        }
    }

    /// Apply a re-read config: delivery tuning, table mappings and the
    /// events settings apply at once; the rest is logged as needing a
    /// restart.
    pub fn apply_reload(&mut self, new: &Arc<Config>) {
        let plan = ReloadPlan::of(&self.config, new);
        if plan.sections.is_empty() {
            tracing::info!("config reloaded: nothing changed");
            return;
        }
        self.dispatcher.set_config(new.delivery.clone());
        self.builder.set_mappings(new);
        self.config = Arc::clone(new);
        tracing::info!(changed = ?plan.sections, "config reloaded");
        if !plan.restart.is_empty() {
            tracing::warn!(
                "config reloaded, but these take effect only after a restart: {}",
                plan.restart.join(", ")
            );
        }
    }

    pub async fn handle(&mut self, message: SourceMessage) -> anyhow::Result<()> {
        match message {
            SourceMessage::Begin {
                final_lsn,
                xid,
                commit_time,
            } => {
                self.txn = Some(OpenTransaction {
                    info: TxnInfo {
                        xid,
                        commit_lsn: final_lsn,
                        commit_time,
                    },
                    checkpoint: self.checkpoint.begin(crate::pgoutput::pg_time(commit_time)),
                    next_index: 0,
                    registry_changed: false,
                    origin: None,
                    trace: None,
                });
            }
            SourceMessage::Commit { end_lsn, .. } => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| anyhow!("Commit at {end_lsn} without a Begin"))?;
                if txn.registry_changed {
                    self.snapshots
                        .record(end_lsn, self.registry.take_row_changes());
                    if self.snapshots.over_bound() {
                        self.spill_snapshots().await?;
                    }
                }
                self.backfill.committed(end_lsn);
                self.checkpoint.commit(txn.checkpoint, end_lsn);
                self.server_end = self.server_end.max(end_lsn);
            }
            SourceMessage::KeepAlive { wal_end } => {
                self.server_end = self.server_end.max(wal_end);
                self.checkpoint.keepalive(wal_end);
            }
            SourceMessage::Logical {
                prefix,
                content,
                transactional,
                ..
            } if prefix == TRACE_PREFIX => self.trace_context(&content, transactional),
            SourceMessage::SkippedLogical { prefix, .. } if prefix == TRACE_PREFIX => {
                // Over MAX_TRACE_MESSAGE_BYTES: skipped unread by the source.
                self.metrics.trace_context("too_large");
            }
            SourceMessage::Logical {
                prefix,
                content,
                lsn,
                transactional,
            } => match Watermark::from_message(&prefix, &content, lsn) {
                Ok(Some(mark)) if transactional => {
                    if let Some(closed) = self.backfill.watermark(&mark) {
                        self.send_chunk(closed).await?;
                    }
                }
                Ok(Some(_)) => {}
                // Only messages under walhook's prefix reach this far.
                Ok(None) => self.metrics.logical_message_ignored("other_prefix"),
                // Someone else's message under walhook's prefix: not ours
                // to act on, and no reason to stop the stream.
                Err(e) => self.odd_message("not_a_watermark", &e.to_string()),
            },
            SourceMessage::SkippedLogical {
                prefix,
                lsn,
                frame_bytes,
                too_large,
            } => {
                if too_large {
                    self.odd_message(
                        "too_large",
                        &format!(
                            "logical message with prefix {prefix:?} at {lsn} is not a backfill \
                         watermark: {frame_bytes} bytes (skipped unread)"
                        ),
                    );
                } else {
                    self.metrics.logical_message_ignored("other_prefix");
                }
            }
            SourceMessage::Data(bytes) => {
                let message = pgoutput::decode(&bytes).with_context(|| {
                    format!(
                        "decoding a pgoutput message of {} bytes in transaction {:?}",
                        bytes.len(),
                        self.txn.as_ref().map(|t| t.info.xid)
                    )
                })?;
                self.message(message).await?;
            }
        }
        Ok(())
    }

    /// A `walhook.trace` message: the transaction's deliveries from here on
    /// continue its context. One that does not parse, or comes outside a
    /// transaction, is counted and ignored: any role may emit one.
    fn trace_context(&mut self, content: &[u8], transactional: bool) {
        let Some(txn) = self.txn.as_mut().filter(|_| transactional) else {
            self.metrics.trace_context("not_transactional");
            return;
        };
        match TraceParent::parse(content) {
            Ok(parent) => {
                txn.trace = Some(Arc::new(parent));
                self.metrics.trace_context("used");
            }
            Err(e) => self.metrics.trace_context(e.reason()),
        }
    }

    /// A message under walhook's prefix that is not a watermark: counted,
    /// and logged at most once a minute.
    fn odd_message(&mut self, reason: &str, what: &str) {
        self.metrics.logical_message_ignored(reason);
        if let Some(held_back) = self.odd_messages.admit(std::time::Instant::now()) {
            let more = if held_back > 0 {
                format!(" ({held_back} more like it in the last minute not logged)")
            } else {
                String::new()
            };
            tracing::warn!("{}{more}", crate::text::printable(what));
        }
    }

    async fn reload_types(&mut self) -> anyhow::Result<()> {
        let rows = self.store.type_catalog().await?;
        self.builder.set_types(TypeCatalog::from_rows(rows));
        Ok(())
    }

    async fn message(&mut self, message: Message) -> anyhow::Result<()> {
        match message {
            Message::Origin(origin) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.origin = Some(origin.name);
                }
            }
            Message::Relation(rel) => {
                if self.builder.needs_types(&rel) {
                    self.reload_types().await?;
                }
                let pk = if EventBuilder::needs_primary_key(&rel) {
                    Some(self.store.primary_key(rel.oid).await?)
                } else {
                    None
                };
                self.builder.add_relation(rel, pk);
            }
            m @ (Message::Insert(_)
            | Message::Update(_)
            | Message::Delete(_)
            | Message::Truncate(_)) => {
                let txn = self
                    .txn
                    .as_mut()
                    .ok_or_else(|| anyhow!("a {} message outside a transaction", m.name()))?;
                let info = txn.info;
                let changes = self.builder.change(&info, &mut txn.next_index, m)?;
                if self.builder.types_outdated_by(info.commit_lsn) {
                    // A composite type was altered while walhook runs.
                    self.reload_types().await?;
                }
                for change in changes {
                    match change {
                        Change::Event(event) => {
                            let origin = self.txn.as_ref().and_then(|t| t.origin.as_deref());
                            match origin {
                                Some(origin) if self.config.events.skip_replicated => {
                                    tracing::trace!(
                                        origin,
                                        "change from a replication origin skipped"
                                    );
                                }
                                _ => self.route(*event).await?,
                            }
                        }
                        Change::Webhook(change) => self.webhook_changed(info, change).await,
                        Change::Control(change) => self.control_changed(info, change).await,
                    }
                }
            }
            // Type, Origin and logical messages carry no row change; the
            // catalog is read when a relation names an unknown type.
            _ => {}
        }
        Ok(())
    }

    /// A change to the `webhook` table: the registry and the hook's
    /// delivery follow it from this commit on.
    async fn webhook_changed(&mut self, info: TxnInfo, change: crate::events::WebhookChange) {
        let update = self.registry.apply(change);
        if update != RegistryUpdate::Nothing {
            tracing::info!(lsn = %info.commit_lsn, "webhook table: {update:?}");
        }
        let update = match update {
            // A key change: the old hook is removed, its queued events
            // dropped, and the row goes on under its new id.
            RegistryUpdate::Moved { from, to } => {
                self.dispatcher.hook_removed(from);
                *to
            }
            update => update,
        };
        match update {
            RegistryUpdate::Added(id) => self.hook_changed(id, false).await,
            RegistryUpdate::Changed { id, was_active } => self.hook_changed(id, was_active).await,
            // A row made invalid is skipped like a deleted one: its queued
            // and retrying events must not go on to its old target.
            RegistryUpdate::Removed(id) | RegistryUpdate::Invalid(id) => {
                self.dispatcher.hook_removed(id)
            }
            RegistryUpdate::Cleared => self.dispatcher.all_hooks_removed(),
            _ => {}
        }
        if let Some(txn) = self.txn.as_mut() {
            txn.registry_changed = true;
        }
    }

    async fn hook_changed(&mut self, id: i32, was_active: bool) {
        if let Some(hook) = self.registry.get(id).cloned() {
            self.dispatcher.hook_changed(&hook, was_active).await;
        }
    }

    /// A change to `webhook_control`: the hook's delivery follows it from
    /// this commit on.
    async fn control_changed(&mut self, info: TxnInfo, change: crate::events::WebhookChange) {
        use crate::events::WebhookChange;
        match change {
            WebhookChange::Upsert(row) => self.apply_control_row(&row, Some(info)).await,
            WebhookChange::Rekey { from, row } => {
                if let Ok(id) = from.parse::<i32>() {
                    self.dispatcher.settings_changed(id, None).await;
                    self.registry.set_rules(id, None);
                }
                self.apply_control_row(&row, Some(info)).await;
            }
            WebhookChange::Delete { webhook_id } => {
                if let Some(id) = webhook_id.and_then(|id| id.parse::<i32>().ok()) {
                    self.dispatcher.settings_changed(id, None).await;
                    self.registry.set_rules(id, None);
                }
            }
            WebhookChange::Truncate => {
                self.dispatcher.all_settings_removed().await;
                self.registry.clear_rules();
            }
        }
    }

    /// One `webhook_control` row, from the stream (`at`) or read at start.
    pub async fn apply_control_row(
        &mut self,
        row: &crate::events::WebhookRow,
        at: Option<TxnInfo>,
    ) {
        let Some((id, settings, warnings)) = HookSettings::from_row(row) else {
            tracing::warn!("webhook_control row without a valid webhook_id skipped");
            return;
        };
        for warning in warnings {
            tracing::warn!(webhook_id = id, "webhook_control: {warning}");
        }
        if let Some(info) = at {
            tracing::info!(lsn = %info.commit_lsn, webhook_id = id, ?settings, "webhook_control changed");
        }
        self.dispatcher.settings_changed(id, Some(settings)).await;
        // The condition and the columns the hook may see, for routing.
        if let Some((id, rules)) = crate::registry::RowRules::from_row(row) {
            self.registry.set_rules(id, Some(rules));
        }
    }

    /// Address an event to every matching hook, by the hook's state.
    async fn route(&mut self, mut event: ChangeEvent) -> anyhow::Result<()> {
        self.metrics.changes_decoded.inc();
        if self.txn.is_none() {
            bail!("an event outside a transaction");
        }
        let hooks: Vec<_> = self.registry.matching(&event).cloned().collect();
        if hooks.is_empty() {
            return Ok(());
        }
        // Conditions read the whole row, before it is fitted to the bound.
        let admissions: Vec<_> = hooks
            .iter()
            .map(|hook| match hook.state.takes_events() {
                true => self.registry.admit(hook.id, &event),
                false => Admission::Held,
            })
            .collect();
        let config = Arc::clone(&self.config);
        let intake = EventIntake::fitted(
            &mut event,
            &config.events.context_identifier,
            config.delivery.max_body_bytes,
            &self.metrics,
        );
        let event = intake.event();
        for (hook, admission) in hooks.into_iter().zip(admissions) {
            self.backfill.live_event(
                &event.table,
                &event.ordering_key,
                event.previous_key.as_deref(),
                event.operation == Operation::Truncated,
                hook.id,
            );
            if !hook.state.takes_events() {
                self.metrics.events_skipped.inc();
                continue;
            }
            let Admission::Send(columns) = admission else {
                continue;
            };
            let event_id = event.event_id(&self.system_id, hook.id);
            let ticket = self.ticket().context("an event outside a transaction")?;
            // A hook that may see only some columns gets its own copy.
            let mut job = intake.job_seeing(columns.as_ref(), hook, event_id, ticket);
            job.trace = self.txn.as_ref().and_then(|txn| txn.trace.clone());
            self.take(job).await?;
        }
        Ok(())
    }

    /// A chunk at its high watermark: its rows that no live change won
    /// over become `<entity>.created` events with the backfill's id, sent
    /// to the backfill's hooks from this point of the stream, so each
    /// row's later changes follow them (see [`crate::backfill`]).
    async fn send_chunk(&mut self, mut closed: ClosedChunk) -> anyhow::Result<()> {
        let Some(txn) = self.txn.as_mut() else {
            bail!("a backfill watermark outside a transaction");
        };
        let info = txn.info;
        let backfill_id = closed.chunk.backfill_id;
        let relation = closed.chunk.relation();
        let rows = closed.chunk.take_tuples();
        let first_index = txn.next_index;
        txn.next_index = txn.next_index.saturating_add(rows.len() as u32);
        if self.builder.needs_types(&relation) {
            self.reload_types().await?;
        }
        let shape = Arc::clone(&closed.chunk.table);
        let primary_key =
            EventBuilder::needs_primary_key(&relation).then(|| shape.primary_key.clone());
        let events = self
            .builder
            .backfill_events(relation, primary_key, &info, first_index, rows)
            .with_context(|| format!("backfill {backfill_id} of {}", shape.qualified()))?;
        let config = Arc::clone(&self.config);
        let mut sent = 0;
        for mut event in events {
            event.backfill = Some(backfill_id);
            // Conditions read the whole row, before it is fitted to the bound.
            let admissions: HashMap<i32, Admission> = closed
                .chunk
                .webhook_ids
                .iter()
                .map(|&id| (id, self.registry.admit(id, &event)))
                .collect();
            let intake = EventIntake::fitted(
                &mut event,
                &config.events.context_identifier,
                config.delivery.max_body_bytes,
                &self.metrics,
            );
            let event = intake.event();
            for &webhook_id in &closed.chunk.webhook_ids {
                if !closed.sends(webhook_id, &event.ordering_key) {
                    continue;
                }
                // A hook removed since the backfill was asked for gets nothing.
                let Some(hook) = self.registry.get(webhook_id).cloned() else {
                    continue;
                };
                if !hook.state.takes_events() {
                    self.metrics.events_skipped.inc();
                    continue;
                }
                let Some(Admission::Send(columns)) = admissions.get(&webhook_id) else {
                    continue;
                };
                let event_id =
                    backfill::event_id(&self.system_id, backfill_id, &event.ordering_key, hook.id);
                let ticket = self
                    .ticket()
                    .context("a backfill watermark outside a transaction")?;
                let job = intake.job_seeing(columns.as_ref(), hook, event_id, ticket);
                self.take(job).await?;
                sent += 1;
            }
        }
        self.backfill.dispatched(closed, sent);
        Ok(())
    }

    /// A ticket for one more event of the transaction being read.
    fn ticket(&self) -> Option<Ticket> {
        self.txn.as_ref().map(|txn| txn.checkpoint.ticket())
    }

    /// Write the registry snapshot the position is about to pass, then
    /// return the position that may be confirmed. Only the newest snapshot
    /// at or before it matters; it counts as written only once the write
    /// succeeded, so a failed write is tried again and nothing new is
    /// confirmed without it.
    pub async fn write_snapshots_and_confirmable(&mut self) -> anyhow::Result<Lsn> {
        let target = self.checkpoint.confirmable();
        if let Some(lsn) = self.snapshots.due(target) {
            self.store
                .write_snapshot(lsn, self.snapshots.changes())
                .await?;
            self.snapshots.written();
            self.snapshots_since_compaction += 1;
            if self.snapshots_since_compaction >= COMPACT_SNAPSHOTS_EVERY {
                self.snapshots_since_compaction = 0;
                self.store
                    .compact_snapshots(&self.config.postgres.slot)
                    .await;
            }
        }
        self.settled = target;
        self.backfill.settle(target);
        Ok(target)
    }

    /// Write every pending registry state now, oldest first (see
    /// [`crate::registry::SPILL_PENDING_BYTES`]).
    async fn spill_snapshots(&mut self) -> anyhow::Result<()> {
        while let Some(lsn) = self.snapshots.oldest_pending() {
            self.snapshots.due(lsn);
            self.store
                .write_snapshot(lsn, self.snapshots.changes())
                .await?;
            self.snapshots.written();
        }
        Ok(())
    }

    /// Hooks with parked events or a running error count, as stored: they
    /// resume as they were (parking, or counting toward TooManyErrors).
    pub async fn restore_hooks(&mut self) -> anyhow::Result<()> {
        // Settings first, so a paused hook restored with parked events
        // stays parked. They are read as they stand now: a change replayed
        // from before it is applied again, which delays a pause or a
        // resume by what is replayed, never loses an event.
        if self.store.has_control_table().await? {
            for row in self.store.control_rows().await? {
                self.apply_control_row(&row, None).await;
            }
        } else {
            // Delivery works without it; only the per-hook settings wait.
            tracing::warn!(
                "table {} is missing: run `walhook setup` to add it (secret rotation, \
                 rate limits and pauses need it)",
                self.store.table_name("webhook_control")
            );
        }
        if self.publisher.is_some() {
            // Parked events and error counts are taken up by the instance
            // holding each hook's shard (crate::cluster::deliver).
            return Ok(());
        }
        let parked = self.store.parked_hook_set().await?;
        let errors = self.store.consecutive_errors().await?;
        let hooks: Vec<_> = self.registry.hooks().cloned().collect();
        self.dispatcher.parked_without_hook(
            parked
                .iter()
                .copied()
                .filter(|id| self.registry.get(*id).is_none()),
        );
        for hook in hooks {
            let is_parked = parked.contains(&hook.id);
            let count = errors.get(&hook.id).copied().unwrap_or(0);
            if is_parked || count > 0 {
                if is_parked {
                    tracing::info!(webhook_id = hook.id, state = %hook.state, "hook has parked events");
                }
                self.dispatcher
                    .restore(&hook, is_parked, u32::try_from(count).unwrap_or(0))
                    .await;
            }
        }
        Ok(())
    }
}
