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
use crate::config::{Config, Live};
use crate::delivery::{request, DeliveryContext, Dispatcher, Job, OrderScope};
use crate::events::catalog::{self, TypeCatalog};
use crate::events::{Change, ChangeEvent, EventBuilder, Operation, TxnInfo, WebhookRow};
use crate::metrics::{Health, Metrics};
use crate::pgoutput::{self, Lsn, Message};
use crate::registry::{Registry, RegistryUpdate, WebhookState};
use crate::setup::ident;
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
    metrics: Arc<Metrics>,
    /// The server's WAL end as last heard of, for the lag metric.
    server_end: Lsn,
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
                self.server_end = self.server_end.max(end_lsn);
            }
            SourceMessage::KeepAlive { wal_end } => {
                self.server_end = self.server_end.max(wal_end);
                self.checkpoint.keepalive(wal_end);
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
                if self.builder.types_outdated_by(info.commit_lsn) {
                    // A composite type was altered while walhook runs.
                    self.builder.set_types(TypeCatalog::load(&self.sql).await?);
                }
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

    /// Apply a re-read config: what can change live does, the rest is
    /// logged as needing a restart.
    fn apply_reload(&mut self, new: &Arc<Config>) {
        let sections = changed_sections(&self.config, new);
        if sections.is_empty() {
            tracing::info!("config reloaded: nothing changed");
            return;
        }
        let old = &self.config.delivery;
        let d = &new.delivery;
        let mut restart = Vec::new();
        for (section, needs) in [("postgres", true), ("capture", true), ("metrics", true)] {
            if needs && sections.contains(&section) {
                restart.push(format!("[{section}]"));
            }
        }
        for (key, same) in [
            (
                "delivery.connect_timeout",
                old.connect_timeout == d.connect_timeout,
            ),
            ("delivery.timeout", old.timeout == d.timeout),
            (
                "delivery.allow_private_targets",
                old.allow_private_targets == d.allow_private_targets,
            ),
            (
                "delivery.concurrency_per_webhook",
                old.concurrency_per_webhook == d.concurrency_per_webhook,
            ),
            ("delivery.ordering", old.ordering == d.ordering),
            (
                "delivery.max_in_flight_bytes",
                old.max_in_flight_bytes == d.max_in_flight_bytes,
            ),
        ] {
            if !same {
                restart.push(key.to_owned());
            }
        }
        self.dispatcher.set_config(d.clone());
        self.builder.set_mappings(new);
        self.config = Arc::clone(new);
        tracing::info!(changed = ?sections, "config reloaded");
        if !restart.is_empty() {
            tracing::warn!(
                "config reloaded, but these take effect only after a restart: {}",
                restart.join(", ")
            );
        }
    }

    /// Address an event to every matching hook, by the hook's state.
    async fn route(&mut self, event: ChangeEvent) -> anyhow::Result<()> {
        self.counters.changes += 1;
        self.metrics.changes_decoded.inc();
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
            self.metrics.events_matched.inc();
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
        // Only the newest snapshot at or before the target matters; it is
        // written before the position passes it, so a restart from there
        // finds the hooks of its time. It leaves the queue only once
        // written: a failed write is tried again, never skipped.
        let due = self.snapshots.iter().rposition(|(lsn, _)| *lsn <= target);
        if let Some(i) = due {
            let (lsn, rows) = &self.snapshots[i];
            write_snapshot(&self.sql, &self.config.postgres.schema, *lsn, rows).await?;
            self.snapshots.drain(..=i);
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

/// Resolves once the SQL session is closed.
async fn sql_closed(sql: &tokio_postgres::Client) {
    while !sql.is_closed() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Publish tables created since `setup` ran, as `setup` would, by adding
/// them only: the running daemon never removes a table or changes a column
/// list (that is `setup`'s job, with the config it is given).
async fn add_new_tables(sql: &tokio_postgres::Client, config: &Config) -> anyhow::Result<()> {
    for statement in crate::setup::additions(sql, config).await? {
        sql.batch_execute(&statement)
            .await
            .with_context(|| format!("running: {statement}"))?;
        tracing::info!("publication updated with new tables: {statement}");
    }
    Ok(())
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
    pipeline.dispatcher.parked_without_hook(
        parked
            .iter()
            .copied()
            .filter(|id| pipeline.registry.get(*id).is_none()),
    );
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
    shutdown: watch::Receiver<bool>,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let (_keep, reload) = watch::channel(Arc::new(config.clone()));
    run_with_reload(config, shutdown, reload, on_ready).await
}

/// What outlives one session: signals, metrics and health.
struct Runtime {
    shutdown: watch::Receiver<bool>,
    /// The newest valid config; a change is a SIGHUP reload.
    reload: watch::Receiver<Arc<Config>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// [`run`], with `reload` delivering re-read configs (SIGHUP): delivery
/// tuning, table mappings and events settings apply at once; other changes
/// are logged as needing a restart.
pub async fn run_with_reload(
    config: Config,
    shutdown: watch::Receiver<bool>,
    reload: watch::Receiver<Arc<Config>>,
    on_ready: impl FnOnce(),
) -> anyhow::Result<()> {
    let mut config = Arc::new(config);
    let mut rt = Runtime {
        shutdown,
        reload,
        metrics: Arc::new(Metrics::default()),
        health: Arc::new(Health::default()),
    };
    rt.reload.mark_unchanged();
    if let Some(listen) = config.metrics.listen {
        let (metrics, health) = (Arc::clone(&rt.metrics), Arc::clone(&rt.health));
        // Fails fast (a taken port, a bad address) rather than running blind.
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("key metrics.listen: cannot listen on {listen}"))?;
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, metrics, health).await {
                tracing::error!("metrics listener: {e:#}");
            }
        });
    }
    tokio::spawn(crate::metrics::watchdog(Arc::clone(&rt.health)));
    let mut on_ready = Some(on_ready);
    let mut wait = Duration::from_secs(1);
    loop {
        match session(&mut config, &mut rt, &mut on_ready).await {
            Ok(()) => return Ok(()),
            Err(e) if e.downcast_ref::<Disconnected>().is_some() => {
                rt.health.set_streaming(false);
                tracing::warn!("{e:#}; reconnecting in {wait:?}");
                let _ = sd_notify::notify(
                    false,
                    &[sd_notify::NotifyState::Status("reconnecting to PostgreSQL")],
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = rt.shutdown.changed() => return Ok(()),
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                if format!("{e:#}").contains("invalidated") {
                    rt.health.set_slot_lost();
                }
                return Err(e);
            }
        }
    }
}

/// The config sections that differ, for the reload log line.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    if differs(&old.postgres, &new.postgres) {
        out.push("postgres");
    }
    if differs(&old.capture, &new.capture) {
        out.push("capture");
    }
    if differs(&old.events, &new.events) {
        out.push("events");
    }
    if differs(&old.tables, &new.tables) {
        out.push("tables");
    }
    if differs(&old.delivery, &new.delivery) {
        out.push("delivery");
    }
    if differs(&old.log, &new.log) {
        out.push("log");
    }
    if differs(&old.metrics, &new.metrics) {
        out.push("metrics");
    }
    out
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
        || text.contains("invalidated")
        || text.contains("certificate")
        || text.contains("sslrootcert");
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
    current: &mut Arc<Config>,
    rt: &mut Runtime,
    on_ready: &mut Option<impl FnOnce()>,
) -> anyhow::Result<()> {
    let config = Arc::clone(current);
    let shutdown = &mut rt.shutdown;
    let reload = &mut rt.reload;
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
    let start = slot_position(&sql, &slot).await.map_err(disconnected)?;
    let mut publications = Vec::new();
    for (name, exists) in crate::setup::publications(&sql, &config)
        .await
        .map_err(disconnected)?
    {
        if !exists {
            bail!("publication {name:?} does not exist: run `walhook setup` to create it");
        }
        publications.push(name);
    }
    let registry = registry_at(&sql, &schema, start)
        .await
        .map_err(disconnected)?;
    let types = TypeCatalog::load(&sql).await.map_err(disconnected)?;

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
        publications,
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
    rt.health.set_streaming(true);
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
            config: Live::new(config.delivery.clone()),
            metrics: Arc::clone(&rt.metrics),
            usage: usage.clone(),
            sql: Arc::clone(&sql),
            schema: Arc::from(schema.as_str()),
        }),
        txn: None,
        snapshots: VecDeque::new(),
        counters: Counters::default(),
        metrics: Arc::clone(&rt.metrics),
        server_end: start,
        config: Arc::clone(&config),
        sql: Arc::clone(&sql),
    };

    restore_hooks(&sql, &schema, &mut pipeline)
        .await
        .map_err(disconnected)?;
    let retention = config.delivery.parked_retention;
    let mut retention_tick = tokio::time::interval(Duration::from_secs(600));

    let mut reload_open = true;
    let mut auto_add_tick = tokio::time::interval(config.capture.auto_add_interval);
    let mut status_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            _ = tick.tick() => {
                if sql.is_closed() {
                    // The SQL session carries the leadership lock, parking
                    // and statistics: without it, start a new session.
                    break Err(anyhow::Error::new(Disconnected(anyhow!(
                        "the SQL session to PostgreSQL closed"
                    ))));
                }
                match pipeline.confirmable().await {
                    Ok(lsn) => {
                        source.confirm(lsn);
                        let pending = pipeline.checkpoint.pending_transactions() > 0;
                        rt.health.tick(lsn.0, pending);
                        let lag = pipeline.server_end.0.saturating_sub(lsn.0);
                        rt.metrics.lag_bytes.set(lag as i64);
                        rt.metrics.in_flight_bytes.set(pipeline.dispatcher.in_flight_bytes() as i64);
                        if status_at.elapsed() >= Duration::from_secs(5) {
                            status_at = tokio::time::Instant::now();
                            let status = format!("streaming, confirmed {lsn}, lag {lag} bytes");
                            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
            changed = reload.changed(), if reload_open => {
                if changed.is_err() {
                    // No more reloads can come; keep running without them.
                    reload_open = false;
                    continue;
                }
                let new = Arc::clone(&reload.borrow_and_update());
                pipeline.apply_reload(&new);
                *current = new;
            }
            _ = auto_add_tick.tick(), if config.capture.auto_add_tables => {
                if let Err(e) = add_new_tables(&sql, current).await {
                    tracing::warn!("capture.auto_add_tables: {e:#}");
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
                    // Waiting on the byte budget must not hide a closed SQL
                    // session (lanes cannot park without it).
                    _ = sql_closed(&sql) => break Err(anyhow::Error::new(Disconnected(anyhow!(
                        "the SQL session to PostgreSQL closed"
                    )))),
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
    // Without the snapshot written, nothing new may be confirmed: the
    // position stays where the last successful tick put it.
    let last = match pipeline.confirmable().await {
        Ok(lsn) => lsn,
        Err(e) => {
            tracing::error!("{e:#}");
            source.reported()
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
