//! `walhook run`: the pipeline wired together.
//!
//! One task reads the stream in order (source -> pgoutput -> events ->
//! registry) and hands jobs to delivery; a timer confirms what the
//! checkpoint allows; a store task writes statistics. Shutdown stops
//! reading, lets delivery finish within a timeout, confirms the position
//! and exits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::sync::watch;

use crate::checkpoint::{Checkpoint, OpenTxn};
use crate::config::Config;
use crate::delivery::{request, DeliveryContext, Dispatcher, Job, OrderScope};
use crate::events::catalog::{self, TypeCatalog};
use crate::events::{Change, ChangeEvent, EventBuilder, Operation, TxnInfo, WebhookRow};
use crate::pgoutput::{self, Lsn, Message};
use crate::registry::{Registry, RegistryUpdate, WebhookState};
use crate::setup::{ident, keyless_publication};
use crate::source::{Source, SourceMessage, SourceSettings};
use crate::store::{self, UsageBook};

pub use crate::postgres::connect_sql;

/// The slot's confirmed position; a clear error when it is missing or lost.
pub async fn slot_position(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<Lsn> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .context("reading pg_replication_slots")?
        .ok_or_else(|| {
            anyhow!("replication slot {slot:?} does not exist: run `walhook setup` to create it")
        })?;
    let wal_status: Option<String> = row.get(1);
    if wal_status.as_deref() == Some("lost") {
        bail!(
            "replication slot {slot:?} was invalidated by the server (wal_status lost): changes \
             since its position are gone. walhook will not re-create it silently; after checking \
             what was missed, run `walhook teardown` and `walhook setup`"
        );
    }
    let text: Option<String> = row.get(0);
    let text =
        text.ok_or_else(|| anyhow!("replication slot {slot:?} has no confirmed position"))?;
    Lsn::parse(&text).map_err(|e| anyhow!("slot {slot:?}: {e}"))
}

/// The hooks as they stood at `position`: the newest snapshot at or before
/// it (older ones are pruned), else the table as it is now.
pub async fn registry_at(
    client: &tokio_postgres::Client,
    schema: &str,
    position: Lsn,
) -> anyhow::Result<Registry> {
    let s = ident(schema);
    let row = client
        .query_opt(
            &format!(
                "SELECT lsn::text, hooks FROM {s}.registry_snapshot \
                  WHERE lsn <= $1::text::pg_lsn ORDER BY lsn DESC LIMIT 1"
            ),
            &[&position.to_string()],
        )
        .await
        .context("reading the registry snapshot")?;
    let Some(row) = row else {
        return Registry::load(client, schema).await;
    };
    let lsn: String = row.get(0);
    let hooks: serde_json::Value = row.get(1);
    client
        .execute(
            &format!("DELETE FROM {s}.registry_snapshot WHERE lsn < $1::text::pg_lsn"),
            &[&lsn],
        )
        .await
        .context("pruning old registry snapshots")?;
    let rows = hooks
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h.as_object())
        .map(|h| {
            WebhookRow(
                h.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned)))
                    .collect(),
            )
        });
    tracing::info!(snapshot = %lsn, "hooks restored as they stood at the slot's position");
    Ok(Registry::from_rows(rows))
}

async fn write_snapshot(
    client: &tokio_postgres::Client,
    schema: &str,
    lsn: Lsn,
    rows: &[WebhookRow],
) -> anyhow::Result<()> {
    let hooks = serde_json::Value::Array(
        rows.iter()
            .map(|r| serde_json::to_value(&r.0).unwrap_or_default())
            .collect(),
    );
    client
        .execute(
            &format!(
                "INSERT INTO {}.registry_snapshot (lsn, hooks) VALUES ($1::text::pg_lsn, $2) \
                 ON CONFLICT (lsn) DO UPDATE SET hooks = EXCLUDED.hooks",
                ident(schema)
            ),
            &[&lsn.to_string(), &hooks],
        )
        .await
        .context("writing the registry snapshot")?;
    Ok(())
}

/// Counters for the log and, later, metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub changes: u64,
    pub matched: u64,
    pub skipped_stopped: u64,
    pub parked: u64,
}

struct OpenTransaction {
    info: TxnInfo,
    checkpoint: OpenTxn,
    next_index: u32,
    registry_changed: bool,
    /// The replication origin the transaction came from, if any.
    origin: Option<String>,
}

/// The reading side of the pipeline.
struct Pipeline {
    config: Arc<Config>,
    sql: Arc<tokio_postgres::Client>,
    system_id: String,
    builder: EventBuilder,
    registry: Registry,
    checkpoint: Checkpoint,
    dispatcher: Dispatcher,
    txn: Option<OpenTransaction>,
    /// Registry states to record before confirming past their commit.
    snapshots: VecDeque<(Lsn, Vec<WebhookRow>)>,
    counters: Counters,
}

impl Pipeline {
    async fn handle(&mut self, message: SourceMessage) -> anyhow::Result<()> {
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
                    checkpoint: self.checkpoint.begin(),
                    next_index: 0,
                    registry_changed: false,
                    origin: None,
                });
            }
            SourceMessage::Commit { end_lsn, .. } => {
                let txn = self
                    .txn
                    .take()
                    .ok_or_else(|| anyhow!("Commit at {end_lsn} without a Begin"))?;
                if txn.registry_changed {
                    self.snapshots
                        .push_back((end_lsn, self.registry.rows().cloned().collect()));
                }
                self.checkpoint.commit(txn.checkpoint, end_lsn);
            }
            SourceMessage::KeepAlive { wal_end } => self.checkpoint.keepalive(wal_end),
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

    async fn message(&mut self, message: Message) -> anyhow::Result<()> {
        match message {
            Message::Origin(origin) => {
                if let Some(txn) = self.txn.as_mut() {
                    txn.origin = Some(origin.name);
                }
            }
            Message::Relation(rel) => {
                if self.builder.needs_types(&rel) {
                    self.builder.set_types(TypeCatalog::load(&self.sql).await?);
                }
                let pk = if EventBuilder::needs_primary_key(&rel) {
                    Some(catalog::primary_key(&self.sql, rel.oid).await?)
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
                for change in changes {
                    match change {
                        Change::Event(event) => {
                            let replicated = self.txn.as_ref().and_then(|t| t.origin.as_deref());
                            match replicated {
                                Some(origin) if self.config.events.skip_replicated => {
                                    tracing::trace!(
                                        origin,
                                        "change from a replication origin skipped"
                                    );
                                }
                                _ => self.route(*event).await?,
                            }
                        }
                        Change::Webhook(change) => {
                            let before = match &change {
                                crate::events::WebhookChange::Upsert(row) => row
                                    .0
                                    .get("webhook_id")
                                    .cloned()
                                    .flatten()
                                    .and_then(|id| id.parse::<i32>().ok())
                                    .and_then(|id| self.registry.get(id))
                                    .map(|h| h.state),
                                _ => None,
                            };
                            let update = self.registry.apply(change);
                            if update != RegistryUpdate::Nothing {
                                tracing::info!(lsn = %info.commit_lsn, "webhook table: {update:?}");
                            }
                            if let RegistryUpdate::Added(id) | RegistryUpdate::Changed(id) = update
                            {
                                if let Some(hook) = self.registry.get(id).cloned() {
                                    // Only a real transition into Active clears
                                    // a trip and resumes parked delivery.
                                    if hook.state == WebhookState::Active
                                        && before != Some(WebhookState::Active)
                                    {
                                        self.dispatcher.hook_changed(&hook).await;
                                    } else {
                                        self.dispatcher.control(&hook);
                                    }
                                }
                            }
                            if let Some(txn) = self.txn.as_mut() {
                                txn.registry_changed = true;
                            }
                        }
                    }
                }
            }
            // Type, Origin and logical messages carry no row change; the
            // catalog is read when a relation names an unknown type.
            _ => {}
        }
        Ok(())
    }

    /// Address an event to every matching hook, by the hook's state.
    async fn route(&mut self, event: ChangeEvent) -> anyhow::Result<()> {
        self.counters.changes += 1;
        let Some(txn) = self.txn.as_ref() else {
            bail!("an event outside a transaction");
        };
        let hooks: Vec<_> = self.registry.matching(&event).cloned().collect();
        let scope = match (&event.operation, &event.previous_key) {
            (Operation::Truncated, _) => OrderScope::Barrier,
            (_, Some(old)) => OrderScope::AlsoAfter(old.clone()),
            _ => OrderScope::Key,
        };
        for hook in hooks {
            if matches!(hook.state, WebhookState::Stopped | WebhookState::Unknown) {
                // A deliberate stop, as in SuperOffice: not delivered, not parked.
                self.counters.skipped_stopped += 1;
                continue;
            }
            let event_id = event.event_id(&self.system_id, hook.id);
            let body = request::event_body(
                &event,
                event_id,
                &hook,
                &self.config.events.context_identifier,
            );
            let job = Job {
                event: event.event.clone(),
                event_id,
                ordering_key: event.ordering_key.clone(),
                scope: scope.clone(),
                body,
                commit_lsn: event.txn.commit_lsn,
                change_index: event.index,
                ticket: txn.checkpoint.ticket(),
                hook,
            };
            self.counters.matched += 1;
            if job.hook.state == WebhookState::TooManyErrors {
                self.counters.parked += 1;
                self.dispatcher.park(job).await?;
            } else {
                self.dispatcher.dispatch(job).await?;
            }
        }
        Ok(())
    }

    /// Record due registry snapshots, then return the position to confirm.
    async fn confirmable(&mut self) -> anyhow::Result<Lsn> {
        let target = self.checkpoint.confirmable();
        // Only the newest snapshot at or before the target matters.
        let mut due = None;
        while self
            .snapshots
            .front()
            .is_some_and(|(lsn, _)| *lsn <= target)
        {
            due = self.snapshots.pop_front();
        }
        if let Some((lsn, rows)) = due {
            // Written before the position passes it, so a restart from
            // there finds the hooks of its time.
            write_snapshot(&self.sql, &self.config.postgres.schema, lsn, &rows).await?;
        }
        Ok(target)
    }
}

/// Only one walhook streams a slot: the one holding a session-level
/// advisory lock named after it. Others wait here as standbys and take
/// over when the leader's session ends (its process exits or dies).
async fn wait_for_leadership(
    sql: &tokio_postgres::Client,
    slot: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut announced = false;
    loop {
        let won: bool = sql
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext('walhook slot ' || $1))",
                &[&slot],
            )
            .await
            .context("taking the leadership lock (pg_try_advisory_lock)")?
            .get(0);
        if won {
            if announced {
                tracing::info!(slot, "leader gone: taking over");
            }
            return Ok(());
        }
        if !announced {
            tracing::info!(
                slot,
                "standby: another walhook streams this slot; waiting to take over"
            );
            let _ = sd_notify::notify(
                false,
                &[sd_notify::NotifyState::Status(
                    "standby: another walhook streams the slot",
                )],
            );
            announced = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return Ok(()),
        }
    }
}

/// Hooks with parked events or a running error count, as stored.
async fn restore_hooks(
    sql: &tokio_postgres::Client,
    schema: &str,
    pipeline: &mut Pipeline,
) -> anyhow::Result<()> {
    let s = ident(schema);
    let parked: std::collections::HashSet<i32> = sql
        .query(
            &format!("SELECT DISTINCT webhook_id FROM {s}.delivery"),
            &[],
        )
        .await
        .context("reading parked events")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let errors: std::collections::HashMap<i32, i32> = sql
        .query(
            &format!("SELECT webhook_id, consecutive_errors FROM {s}.webhook_usage WHERE consecutive_errors > 0"),
            &[],
        )
        .await
        .context("reading webhook_usage")?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let hooks: Vec<_> = pipeline.registry.hooks().cloned().collect();
    for hook in hooks {
        let is_parked = parked.contains(&hook.id);
        let count = errors.get(&hook.id).copied().unwrap_or(0);
        if is_parked || count > 0 {
            if is_parked {
                tracing::info!(webhook_id = hook.id, state = %hook.state, "hook has parked events");
            }
            pipeline
                .dispatcher
                .restore(&hook, is_parked, u32::try_from(count).unwrap_or(0))
                .await;
        }
    }
    Ok(())
}

/// Run the daemon until `shutdown` turns true or the stream fails.
/// `on_ready` is called once streaming.
pub async fn run(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let mut on_ready = Some(on_ready);
    let mut wait = Duration::from_secs(1);
    loop {
        match session(&config, &mut shutdown, &mut on_ready).await {
            Ok(()) => return Ok(()),
            Err(e) if e.downcast_ref::<Disconnected>().is_some() => {
                tracing::warn!("{e:#}; reconnecting in {wait:?}");
                let _ = sd_notify::notify(
                    false,
                    &[sd_notify::NotifyState::Status("reconnecting to PostgreSQL")],
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The connection to PostgreSQL was lost or refused: a new session may
/// succeed (the server restarted, the walsender was terminated, the
/// network dropped). Anything else ends the daemon with an error.
#[derive(Debug, thiserror::Error)]
#[error("connection lost: {0:#}")]
pub struct Disconnected(anyhow::Error);

/// Mark errors of a closed or refused connection as [`Disconnected`].
fn disconnected(e: anyhow::Error) -> anyhow::Error {
    let lost = e.chain().any(|cause| {
        if let Some(pg) = cause.downcast_ref::<tokio_postgres::Error>() {
            return pg.is_closed()
                || pg.code().is_some_and(|c| {
                    // admin_shutdown, crash_shutdown, cannot_connect_now
                    c.code().starts_with("57P") || c.code().starts_with("08")
                });
        }
        cause.downcast_ref::<std::io::Error>().is_some()
    });
    let text = format!("{e:#}");
    // Retrying cannot fix these; they need the DBA.
    let needs_fix = text.contains("does not exist")
        || text.contains("permission denied")
        || text.contains("authentication failed")
        || text.contains("must be superuser or replication role")
        || text.contains("wal_level")
        || text.contains("invalidated");
    if needs_fix {
        return e;
    }
    let stream_lost = text.contains("replication stream failed")
        || text.contains("is active for PID")
        || text.contains("connection refused")
        || text.contains("Connection refused")
        || text.contains("the database system is")
        || text.contains("terminating connection")
        || text.contains("io error");
    if lost || stream_lost {
        anyhow::Error::new(Disconnected(e))
    } else {
        e
    }
}

/// One session: connect, stream, deliver, until shutdown or an error.
async fn session(
    config: &Arc<Config>,
    shutdown: &mut watch::Receiver<bool>,
    on_ready: &mut Option<impl FnOnce()>,
) -> anyhow::Result<()> {
    let config = Arc::clone(config);
    let conn = config.connection()?;
    let sql = Arc::new(connect_sql(&conn).await.map_err(disconnected)?);
    let schema = config.postgres.schema.clone();
    let slot = config.postgres.slot.clone();
    wait_for_leadership(&sql, &slot, shutdown)
        .await
        .map_err(disconnected)?;
    if *shutdown.borrow() {
        return Ok(());
    }
    let start = slot_position(&sql, &slot).await?;
    let registry = registry_at(&sql, &schema, start).await?;
    let types = TypeCatalog::load(&sql).await?;

    let usage = UsageBook::default();
    let (usage_stop_tx, usage_stop_rx) = watch::channel(false);
    let usage_task = tokio::spawn(store::run_usage_writer(
        usage.clone(),
        Arc::clone(&sql),
        schema.clone(),
        Duration::from_secs(1),
        usage_stop_rx,
    ));

    let mut source = Source::start(SourceSettings {
        connection: &conn,
        slot: &slot,
        publications: vec![
            config.postgres.publication.clone(),
            keyless_publication(&config),
        ],
        status_interval: config.postgres.status_interval,
    })
    .await
    .map_err(disconnected)?;
    tracing::info!(
        slot = %slot,
        position = %start,
        hooks = registry.hooks().count(),
        "streaming"
    );
    if let Some(ready) = on_ready.take() {
        ready();
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status("streaming")]);

    let mut pipeline = Pipeline {
        builder: EventBuilder::new(&config, types),
        system_id: source.system_id.clone(),
        registry,
        checkpoint: Checkpoint::new(start),
        dispatcher: Dispatcher::new(DeliveryContext {
            http: crate::delivery::http_client(&config.delivery)?,
            config: Arc::new(config.delivery.clone()),
            usage: usage.clone(),
            sql: Arc::clone(&sql),
            schema: Arc::from(schema.as_str()),
        }),
        txn: None,
        snapshots: VecDeque::new(),
        counters: Counters::default(),
        config: Arc::clone(&config),
        sql: Arc::clone(&sql),
    };

    restore_hooks(&sql, &schema, &mut pipeline).await?;
    let retention = config.delivery.parked_retention;
    let mut retention_tick = tokio::time::interval(Duration::from_secs(600));

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            _ = tick.tick() => {
                match pipeline.confirmable().await {
                    Ok(lsn) => source.confirm(lsn),
                    Err(e) => break Err(e),
                }
            }
            _ = retention_tick.tick(), if !retention.is_zero() => {
                if let Err(e) = store::drop_expired(&sql, &schema, retention).await {
                    tracing::warn!("dropping expired parked events: {e:#}");
                }
            }
            message = source.recv() => {
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => break Err(anyhow!("the server ended the replication stream")),
                    Err(e) => break Err(e),
                };
                // A change still being handled when shutdown comes is
                // simply not confirmed, and is read again after a restart.
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break Ok(()),
                    handled = pipeline.handle(message) => {
                        if let Err(e) = handled { break Err(e); }
                    }
                }
            }
        }
    };

    // Stop reading, let delivery finish what it has, confirm, exit.
    tracing::info!(
        changes = pipeline.counters.changes,
        matched = pipeline.counters.matched,
        parked = pipeline.counters.parked,
        skipped_stopped = pipeline.counters.skipped_stopped,
        "stopping: finishing in-flight deliveries"
    );
    if !pipeline
        .dispatcher
        .drain(config.delivery.shutdown_timeout)
        .await
    {
        tracing::warn!(
            "deliveries still in flight after {:?}: they stay unconfirmed and are sent again after the next start",
            config.delivery.shutdown_timeout
        );
    }
    let _ = usage_stop_tx.send(true);
    let _ = usage_task.await;
    let last = match pipeline.confirmable().await {
        Ok(lsn) => lsn,
        Err(e) => {
            tracing::error!("{e:#}");
            pipeline.checkpoint.confirmable().min(start)
        }
    };
    source.confirm(last);
    // The status update goes out on the source's timer; give it that long.
    let deadline = tokio::time::Instant::now() + config.postgres.status_interval * 3;
    while source.reported() < last && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(confirmed = %source.reported(), "stopped");
    source.stop().await;
    result.map_err(disconnected)
}
