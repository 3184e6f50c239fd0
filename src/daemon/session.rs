//! One session: connect, lead, stream and deliver until shutdown or an
//! error; then let delivery finish what it holds and confirm what is
//! settled.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::leader::wait_for_leadership;
use super::pipeline::Pipeline;
use super::Process;
use crate::config::{Config, Live};
use crate::delivery::{http_client, DeliveryContext, Dispatcher, UsageBook};
use crate::errors::LostConnection;
use crate::events::catalog::TypeCatalog;
use crate::events::EventBuilder;
use crate::registry::Registry;
use crate::source::{Source, SourceSettings};
use crate::store::usage::UsageWriter;
use crate::store::Store;

/// How often the position is confirmed and health is reported.
const TICK: Duration = Duration::from_millis(200);
/// How often expired parked events are dropped.
const RETENTION_SWEEP: Duration = Duration::from_secs(600);
/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// A lost SQL session: it carries the leadership lock, parking and
/// statistics, so a new session must start.
fn sql_session_closed() -> anyhow::Error {
    anyhow::Error::new(LostConnection(anyhow!(
        "the SQL session to PostgreSQL closed"
    )))
}

/// A streaming session and what it started.
pub(super) struct Session {
    config: Arc<Config>,
    store: Store,
    source: Source,
    pipeline: Pipeline,
    /// Writes `webhook_usage` once a second; stopped by `usage_stop`.
    usage_writer: JoinHandle<()>,
    usage_stop: watch::Sender<bool>,
}

impl Session {
    /// Connect, wait for leadership, restore the hooks as they stood at
    /// the slot's position and start streaming. `Ok(None)` when shutdown
    /// came first.
    pub async fn start(
        config: Arc<Config>,
        process: &mut Process,
    ) -> anyhow::Result<Option<Session>> {
        let conn = config.connection()?;
        // Before anything else: an unreadable CA file or client key needs
        // the operator, and says so before walhook touches the slot.
        let http = http_client(&config.delivery)?;
        let store = Store::connect(&conn, &config.postgres.schema).await?;
        let slot = config.postgres.slot.clone();
        wait_for_leadership(&store, &slot, &mut process.shutdown).await?;
        if *process.shutdown.borrow() {
            return Ok(None);
        }
        if let Some(problem) = crate::setup::encoding_problem(&store.server_encoding().await?) {
            bail!("{problem}");
        }
        let start = store.slot_position(&slot).await?;
        let mut publications = Vec::new();
        for (name, exists) in crate::setup::publications(&store, &config).await? {
            if !exists {
                bail!("publication {name:?} does not exist: run `walhook setup` to create it");
            }
            publications.push(name);
        }
        let registry = match store.snapshot_at(start).await? {
            Some((lsn, rows)) => {
                tracing::info!(snapshot = %lsn, "hooks restored as they stood at the slot's position");
                Registry::from_rows(rows)
            }
            None => Registry::from_rows(store.webhook_rows().await?),
        };
        let types = TypeCatalog::from_rows(store.type_catalog().await?);

        let usage = UsageBook::default();
        let (usage_stop, usage_stop_rx) = watch::channel(false);
        let usage_writer = tokio::spawn(
            UsageWriter {
                book: usage.clone(),
                store: store.clone(),
                interval: Duration::from_secs(1),
            }
            .run(usage_stop_rx),
        );

        let source = Source::start(SourceSettings {
            connection: &conn,
            slot: &slot,
            publications,
            status_interval: config.postgres.status_interval,
        })
        .await?;
        tracing::info!(
            slot = %slot,
            position = %start,
            hooks = registry.hooks().count(),
            "streaming"
        );
        let dispatcher = Dispatcher::new(DeliveryContext {
            http,
            config: Live::new(config.delivery.clone()),
            metrics: Arc::clone(&process.metrics),
            usage,
            store: Arc::new(store.clone()),
        });
        let mut pipeline = Pipeline::new(
            Arc::clone(&config),
            store.clone(),
            source.system_id.clone(),
            EventBuilder::new(&config, types),
            registry,
            start,
            dispatcher,
            Arc::clone(&process.metrics),
        );
        pipeline.restore_hooks().await?;
        Ok(Some(Session {
            config,
            store,
            source,
            pipeline,
            usage_writer,
            usage_stop,
        }))
    }

    /// Stream until shutdown (`Ok`) or an error, then finish.
    pub async fn run(
        mut self,
        process: &mut Process,
        current: &mut Arc<Config>,
    ) -> anyhow::Result<()> {
        let result = self.stream(process, current).await;
        self.finish(result.is_ok()).await;
        result
    }

    async fn stream(
        &mut self,
        process: &mut Process,
        current: &mut Arc<Config>,
    ) -> anyhow::Result<()> {
        let config = Arc::clone(&self.config);
        let retention = config.delivery.parked_retention;
        let mut retention_tick = tokio::time::interval(RETENTION_SWEEP);
        let mut reload_open = true;
        let mut auto_add_tick = tokio::time::interval(config.capture.auto_add_interval);
        let mut status_at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = process.shutdown.changed() => return Ok(()),
                _ = tick.tick() => {
                    if self.store.is_closed() {
                        return Err(sql_session_closed());
                    }
                    let lsn = self.pipeline.write_snapshots_and_confirmable().await?;
                    self.source.confirm(lsn);
                    let pending = self.pipeline.checkpoint.pending_transactions() > 0;
                    process.health.tick(lsn.0, pending);
                    let lag = self.pipeline.server_end.0.saturating_sub(lsn.0);
                    process.metrics.lag_bytes.set(lag as i64);
                    process
                        .metrics
                        .in_flight_bytes
                        .set(self.pipeline.dispatcher.in_flight_bytes() as i64);
                    if status_at.elapsed() >= STATUS_EVERY {
                        status_at = tokio::time::Instant::now();
                        let status = format!("streaming, confirmed {lsn}, lag {lag} bytes");
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
                    }
                }
                changed = process.reload.changed(), if reload_open => {
                    if changed.is_err() {
                        // No more reloads can come; keep running without them.
                        reload_open = false;
                        continue;
                    }
                    let new = Arc::clone(&process.reload.borrow_and_update());
                    self.pipeline.apply_reload(&new);
                    *current = new;
                }
                _ = auto_add_tick.tick(), if config.capture.auto_add_tables => {
                    if let Err(e) = crate::setup::add_new_tables(&self.store, current).await {
                        tracing::warn!("capture.auto_add_tables: {e:#}");
                    }
                }
                _ = retention_tick.tick(), if !retention.is_zero() => {
                    match self.store.drop_expired(retention).await {
                        Ok(dropped) => {
                            for (webhook_id, count) in dropped {
                                tracing::warn!(
                                    webhook_id,
                                    dropped = count,
                                    "parked events older than delivery.parked_retention ({}) were dropped undelivered",
                                    humantime::format_duration(retention)
                                );
                            }
                        }
                        Err(e) => tracing::warn!("dropping expired parked events: {e:#}"),
                    }
                }
                message = self.source.recv() => {
                    let message = match message? {
                        Some(m) => m,
                        None => {
                            return Err(anyhow::Error::new(LostConnection(anyhow!(
                                "the server ended the replication stream"
                            ))))
                        }
                    };
                    // A change still being handled when shutdown comes is
                    // simply not confirmed, and is read again after a restart.
                    tokio::select! {
                        biased;
                        _ = process.shutdown.changed() => return Ok(()),
                        // Waiting on the byte budget must not hide a closed
                        // SQL session (queues cannot park without it).
                        _ = self.store.closed() => return Err(sql_session_closed()),
                        handled = self.pipeline.handle(message) => handled?,
                    }
                }
            }
        }
    }

    /// Stop reading, let delivery finish what it has within the shutdown
    /// timeout, write the statistics, confirm what is settled.
    async fn finish(mut self, shutting_down: bool) {
        let metrics = &self.pipeline.metrics;
        let counts = format!(
            "{} changes decoded, {} events matched, {} parked, {} skipped (Stopped/Unknown) since start",
            metrics.changes_decoded.get(),
            metrics.events_matched.get(),
            metrics.parked_events.get(),
            metrics.events_skipped.get(),
        );
        if shutting_down {
            tracing::info!("stopping: finishing in-flight deliveries ({counts})");
        } else {
            tracing::info!(
                "session ended: finishing in-flight deliveries before reconnecting ({counts})"
            );
        }
        let timeout = self.config.delivery.shutdown_timeout;
        if !self.pipeline.dispatcher.drain(timeout).await {
            tracing::warn!(
                "deliveries still in flight after {}: they stay unconfirmed and are sent again \
                 after the next start",
                crate::text::human_duration(timeout)
            );
        }
        let _ = self.usage_stop.send(true);
        let _ = (&mut self.usage_writer).await;
        // Without the snapshot written, nothing new may be confirmed: the
        // position stays where the last successful tick put it.
        let last = match self.pipeline.write_snapshots_and_confirmable().await {
            Ok(lsn) => lsn,
            Err(e) => {
                tracing::error!("{e:#}");
                self.source.reported()
            }
        };
        self.source.confirm(last);
        // The status update goes out on the source's timer; give it that long.
        let deadline = tokio::time::Instant::now() + self.config.postgres.status_interval * 3;
        while self.source.reported() < last && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let confirmed = self.source.reported();
        if shutting_down {
            tracing::info!(%confirmed, "stopped");
        } else {
            tracing::info!(%confirmed, "session closed");
        }
        self.source.stop().await;
    }
}
