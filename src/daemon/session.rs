//! One session: connect, lead, stream and deliver until shutdown or an
//! error; then let delivery finish what it holds and confirm what is
//! settled.
//!
//! The settled position is confirmed to the server and recorded in
//! `slot_progress` as soon as it passes a transaction with events (the
//! checkpoint wakes the session), so a restart resends only what was in
//! flight; the slot's own position lags behind it and a server crash can
//! rewind it. A session resumes from the later of the two.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::leader::wait_for_leadership;
use super::log_limit::LogLimit;
use super::pipeline::{Pipeline, PipelineParts};
use super::Process;
use crate::backfill::{Board, Reconciler, Worker};
use crate::config::{Config, Live};
use crate::delivery::{http_client, AttemptLog, DeliveryContext, Dispatcher, UsageBook};
use crate::errors::LostConnection;
use crate::events::catalog::TypeCatalog;
use crate::events::EventBuilder;
use crate::pgoutput::Lsn;
use crate::registry::Registry;
use crate::source::{Source, SourceSettings};
use crate::store::progress::{ProgressUnavailable, ProgressWriter, StoredProgress};
use crate::store::usage::UsageWriter;
use crate::store::Store;

/// How often health and metrics are reported (the position is confirmed
/// whenever it advances, and on this tick too).
const TICK: Duration = Duration::from_millis(200);
/// How often expired parked events are dropped.
const RETENTION_SWEEP: Duration = Duration::from_secs(600);
/// How often delivery looks at every hook on its own clock: how late a
/// backlog bound may act at most.
const DELIVERY_TICK: Duration = Duration::from_secs(1);
/// How often the parked gauge is counted from the `delivery` table: one
/// grouped count over an index, bounded by the parking limits.
const PARKED_GAUGE_EVERY: Duration = Duration::from_secs(15);
/// How often the systemd status line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How often the slot's metrics are read from `pg_replication_slots`.
const SLOT_GAUGES_EVERY: Duration = Duration::from_secs(5);
/// How often the per-hook gauges are taken from delivery.
const HOOK_GAUGES_EVERY: Duration = Duration::from_secs(2);

/// A lost SQL session: it carries the leadership lock, parking and
/// statistics, so a new session must start.
fn sql_session_closed() -> anyhow::Error {
    anyhow::Error::new(LostConnection(anyhow!(
        "the SQL session to PostgreSQL closed"
    )))
}

/// How long the backfill worker waits before it starts again after it
/// failed, at first; the wait doubles while it keeps failing at once (a
/// missing GRANT: the backfill's row shows the error meanwhile).
const BACKFILL_RESTART: Duration = Duration::from_secs(5);
/// The longest wait between two starts of the backfill worker.
const BACKFILL_RESTART_MAX: Duration = Duration::from_secs(60);

/// The backfill worker, started again on its own SQL session whenever that
/// fails: a backfill must not end the stream, and its progress is stored.
async fn run_backfills(config: Arc<Config>, conn: crate::config::Connection, board: Arc<Board>) {
    let mut wait = BACKFILL_RESTART;
    loop {
        let started = tokio::time::Instant::now();
        let result = async {
            let store = Store::connect(&conn, &config.postgres.schema).await?;
            Worker {
                store,
                board: Arc::clone(&board),
                config: config.backfill.clone(),
                publication: config.postgres.publication.clone(),
                rows_read: 0,
                started: tokio::time::Instant::now(),
            }
            .run()
            .await
        }
        .await;
        // A worker that ran a while before failing starts again soon.
        if started.elapsed() > BACKFILL_RESTART_MAX {
            wait = BACKFILL_RESTART;
        }
        if let Err(e) = result {
            tracing::warn!(
                "backfill worker: {e:#}; starting again in {}",
                crate::text::human_duration(wait)
            );
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(BACKFILL_RESTART_MAX);
    }
}

/// Read the slot's metrics every [`SLOT_GAUGES_EVERY`] on the session's
/// SQL connection, in a task of its own so the reader never waits on it. A
/// failed read keeps the last values and is logged at most once a minute.
async fn watch_slot(store: Store, slot: String, metrics: Arc<crate::metrics::Metrics>) {
    let mut warnings = LogLimit::new(Duration::from_secs(60));
    let mut tick = tokio::time::interval(SLOT_GAUGES_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let problem = match store.slot_gauges(&slot).await {
            Ok(Some(g)) => {
                metrics.set_slot(
                    g.retained_bytes,
                    g.wal_status.as_deref(),
                    g.safe_wal_size,
                    g.active,
                );
                continue;
            }
            Ok(None) => format!("replication slot {slot:?} does not exist"),
            Err(e) => format!("{e:#}"),
        };
        if let Some(held_back) = warnings.admit(std::time::Instant::now()) {
            tracing::warn!(
                held_back,
                "slot metrics not updated (they keep their last values): {problem}"
            );
        }
    }
}

/// A streaming session and what it started.
pub(super) struct Session {
    config: Arc<Config>,
    store: Store,
    source: Source,
    pipeline: Pipeline,
    /// The statistics not yet written (the process's, so a new session
    /// writes what the last one could not).
    usage: UsageBook,
    /// Writes `webhook_usage` once a second; stopped by `usage_stop`.
    usage_writer: JoinHandle<()>,
    usage_stop: watch::Sender<bool>,
    /// Records the settled position, `None` when this database cannot
    /// (see [`ProgressUnavailable`]).
    progress: Option<Progress>,
    /// Runs the backfills (on its own SQL session); ends with the session.
    backfill_worker: JoinHandle<()>,
    /// Reads the slot's metrics; ends with the session.
    slot_watch: JoinHandle<()>,
}

/// The session's end of the [`ProgressWriter`].
struct Progress {
    /// The newest settled position to record (the newest wins).
    settled: watch::Sender<Lsn>,
    writer: JoinHandle<Lsn>,
    /// The position last recorded.
    recorded: watch::Receiver<Lsn>,
    /// [`Checkpoint::events_settled`](crate::checkpoint::Checkpoint::events_settled)
    /// when a position was last handed to the writer.
    events_handed: Lsn,
}

/// Where a session resumes, and what the operator should know about it.
#[derive(Debug, PartialEq, Eq)]
struct Resume {
    start: Lsn,
    /// Recorded positions ignored, or taken beyond the slot's.
    warnings: Vec<String>,
    /// The recorded position was ignored: it must go, or it would be
    /// ignored (and never overwritten) on every start.
    clear_stored: bool,
}

/// The later of the slot's confirmed position, the position recorded in
/// `slot_progress` and the one this process settled in an earlier session:
/// each is settled, and the slot's may be behind the others (not yet sent to
/// the server, or rewound by a server crash). A position beyond the
/// server's WAL belongs to another history (a restored backup) and is
/// ignored.
///
/// A recorded position beyond the slot's is taken with a warning: walhook
/// leaves one there only when it or PostgreSQL stopped before the slot's
/// position caught up (a kill, a crash), and anything else is a role that
/// can write `slot_progress` making walhook skip changes. Only this
/// process's own earlier session is taken without a word.
fn resume_position(
    slot: &str,
    slot_position: Lsn,
    stored: StoredProgress,
    earlier_session: Option<Lsn>,
) -> Resume {
    let mut resume = Resume {
        start: slot_position,
        warnings: Vec::new(),
        clear_stored: false,
    };
    for (recorded, position) in [(true, stored.settled), (false, earlier_session)] {
        let Some(position) = position else { continue };
        match stored.server_wal {
            Some(wal) if position > wal => {
                let what = if recorded {
                    "the position recorded in slot_progress"
                } else {
                    "the position settled before reconnecting"
                };
                resume.warnings.push(format!(
                    "{what} for slot {slot:?}, {position}, is beyond the server's WAL position \
                     {wal} (pg_current_wal_lsn()): ignored, as it cannot be of this server's \
                     history; resuming from the slot's position {slot_position}"
                ));
                resume.clear_stored |= recorded;
            }
            _ => resume.start = resume.start.max(position),
        }
    }
    if let Some(recorded) = stored.settled {
        let within_wal = stored.server_wal.is_none_or(|wal| recorded <= wal);
        let vouched = earlier_session.is_some_and(|own| own >= recorded);
        if within_wal && recorded > slot_position && !vouched {
            resume.warnings.push(format!(
                "slot_progress records position {recorded} for slot {slot:?}, {} bytes beyond \
                 the slot's confirmed position {slot_position}: resuming from it, so what was \
                 committed in between is not sent. walhook leaves a position ahead of the \
                 slot's when it or PostgreSQL stops before the slot's position caught up (a \
                 kill, a crash); otherwise a role that can write slot_progress raised it, and \
                 `walhook check` names every role but walhook's own that can",
                recorded.0 - slot_position.0
            ));
        }
    }
    resume
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
        // A role without walhook's grants would wait as a standby, or fail
        // on its first statement naming a table: say what it lacks first.
        if store.schema_exists().await? && !store.run_role_can_work(&conn.user).await? {
            return Err(crate::store::privileges::RunRoleLacksGrants {
                role: conn.user.clone(),
                schema: config.postgres.schema.clone(),
            }
            .into());
        }
        wait_for_leadership(&store, &slot, &mut process.shutdown).await?;
        if *process.shutdown.borrow() {
            return Ok(None);
        }
        if let Some(problem) = crate::setup::encoding_problem(&store.server_encoding().await?) {
            bail!("{problem}");
        }
        let slot_position = store.slot_position(&slot).await?;
        let stored = match store.stored_progress(&slot).await {
            Ok(stored) => Some(stored),
            Err(e) if e.downcast_ref::<ProgressUnavailable>().is_some() => {
                tracing::warn!(
                    "the settled position cannot be recorded, so after a restart more is sent \
                     again: {e:#}"
                );
                None
            }
            Err(e) => return Err(e),
        };
        let earlier_session = process
            .settled
            .as_ref()
            .filter(|(s, _)| *s == slot)
            .map(|(_, lsn)| *lsn);
        let resume = resume_position(
            &slot,
            slot_position,
            stored.unwrap_or(StoredProgress {
                settled: None,
                server_wal: None,
            }),
            earlier_session,
        );
        for warning in &resume.warnings {
            tracing::warn!("{warning}");
        }
        let recorded = if resume.clear_stored {
            store.clear_progress(&slot).await?;
            Lsn(0)
        } else {
            stored.and_then(|s| s.settled).unwrap_or(Lsn(0))
        };
        let start = resume.start;
        let usage = process.usage.clone();
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
            start,
            message_prefixes: vec![
                crate::store::backfill::MESSAGE_PREFIX.to_owned(),
                crate::telemetry::TRACE_PREFIX.to_owned(),
            ],
            max_message_bytes: crate::backfill::MAX_WATERMARK_BYTES
                .max(crate::telemetry::MAX_TRACE_MESSAGE_BYTES),
        })
        .await?;
        tracing::info!(
            slot = %slot,
            position = %start,
            slot_position = %slot_position,
            hooks = registry.hooks().count(),
            "streaming"
        );
        let progress = stored.map(|_| {
            let (settled, position) = watch::channel(start);
            let (recorded_to, recorded_rx) = watch::channel(recorded);
            // The start itself is recorded when it is newer (it came from
            // an earlier session of this process).
            let writer = tokio::spawn(
                ProgressWriter {
                    store: store.clone(),
                    slot: slot.clone(),
                    recorded,
                    usage: usage.clone(),
                    recorded_to,
                    min_interval: config.postgres.progress_interval,
                }
                .run(position),
            );
            settled.send_modify(|_| {});
            Progress {
                settled,
                writer,
                recorded: recorded_rx,
                events_handed: Lsn(0),
            }
        });
        let delivery_config = Live::new(config.delivery.clone());
        // The log's writer ends, writing what it holds, with the session's
        // delivery (the last handle dropped).
        let (attempts, _attempt_writer) = AttemptLog::start(
            Arc::new(store.clone()),
            delivery_config.clone(),
            Arc::clone(&process.metrics),
        );
        let dispatcher = Dispatcher::new(DeliveryContext {
            http,
            config: delivery_config,
            metrics: Arc::clone(&process.metrics),
            usage: usage.clone(),
            store: Arc::new(store.clone()),
            attempts,
            telemetry: process.telemetry.clone(),
        });
        let board = Board::new();
        let mut pipeline = Pipeline::new(PipelineParts {
            config: Arc::clone(&config),
            store: store.clone(),
            system_id: source.system_id.clone(),
            builder: EventBuilder::new(&config, types),
            registry,
            start,
            dispatcher,
            publisher: process.bus.as_ref().map(|(js, cluster)| {
                crate::cluster::publish::Publisher::new(
                    js.clone(),
                    cluster.clone(),
                    Arc::clone(&process.metrics),
                )
            }),
            metrics: Arc::clone(&process.metrics),
            backfill: Reconciler::new(Arc::clone(&board)),
        });
        pipeline.restore_hooks().await?;
        let backfill_worker = tokio::spawn(run_backfills(Arc::clone(&config), conn, board));
        let slot_watch = tokio::spawn(watch_slot(
            store.clone(),
            slot.clone(),
            Arc::clone(&process.metrics),
        ));
        Ok(Some(Session {
            config,
            store,
            source,
            pipeline,
            usage,
            usage_writer,
            usage_stop,
            progress,
            backfill_worker,
            slot_watch,
        }))
    }

    /// Have what is settled recorded when it passed a transaction with
    /// events (passing anything else changes nothing a restart would
    /// resend, and recording it would only write more WAL, which in turn
    /// moves the position), and confirm it to the server once it is: the
    /// slot never gets ahead of the recorded position over events, whose
    /// statistics go with that record (a restart from the slot's position
    /// would neither resend those events nor find their counts).
    async fn advance(&mut self) -> anyhow::Result<Lsn> {
        let lsn = self.pipeline.write_snapshots_and_confirmable().await?;
        let events = self.pipeline.checkpoint().events_settled();
        let mut confirm = lsn;
        if let Some(progress) = self.progress.as_mut() {
            if events > progress.events_handed {
                progress.events_handed = events;
                progress.settled.send_replace(lsn);
            }
            let recorded = *progress.recorded.borrow();
            if events > recorded {
                confirm = recorded;
            }
        }
        self.source.confirm(confirm);
        Ok(lsn)
    }

    /// Stream until shutdown (`Ok`) or an error, then finish.
    pub async fn run(
        mut self,
        process: &mut Process,
        current: &mut Arc<Config>,
    ) -> anyhow::Result<()> {
        let result = self.stream(process, current).await;
        let slot = self.config.postgres.slot.clone();
        let settled = self.finish(result.is_ok()).await;
        process.settled = Some((slot, settled));
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
        let mut delivery_tick = tokio::time::interval(DELIVERY_TICK);
        delivery_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut parked_gauge_tick = tokio::time::interval(PARKED_GAUGE_EVERY);
        parked_gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hook_gauge_tick = tokio::time::interval(HOOK_GAUGES_EVERY);
        hook_gauge_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reload_open = true;
        let mut auto_add_tick = tokio::time::interval(config.capture.auto_add_interval);
        let mut status_at = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let settled = self.pipeline.checkpoint().settled();
        loop {
            tokio::select! {
                biased;
                _ = process.shutdown.changed() => return Ok(()),
                _ = tick.tick() => {
                    if self.store.is_closed() {
                        return Err(sql_session_closed());
                    }
                    let lsn = self.advance().await?;
                    let pending = self.pipeline.checkpoint().pending_transactions() > 0;
                    process.health.tick(lsn.0, pending);
                    let lag = self.pipeline.server_end().0.saturating_sub(lsn.0);
                    process.metrics.lag_bytes.set(lag as i64);
                    let lag_seconds = self
                        .pipeline
                        .checkpoint()
                        .oldest_unsettled_commit()
                        .map_or(0.0, |at| at.elapsed().map_or(0.0, |d| d.as_secs_f64()));
                    process.metrics.lag_seconds.set(lag_seconds);
                    process
                        .metrics
                        .in_flight_bytes
                        .set(self.pipeline.in_flight_bytes() as i64);
                    if status_at.elapsed() >= STATUS_EVERY {
                        status_at = tokio::time::Instant::now();
                        let status = format!("streaming, confirmed {lsn}, lag {lag} bytes");
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
                    }
                }
                // Before reading more: a busy stream must not hold the
                // position back until the next tick.
                _ = settled.notified() => {
                    self.advance().await?;
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
                _ = delivery_tick.tick() => self.pipeline.tick_delivery().await?,
                _ = hook_gauge_tick.tick() => {
                    process.metrics.set_hooks(&self.pipeline.hook_gauges());
                }
                _ = parked_gauge_tick.tick() => {
                    match self.store.parked_counts().await {
                        Ok(counts) => process.metrics.set_parked_waiting(&counts),
                        Err(e) => tracing::warn!("counting parked events for metrics: {e:#}"),
                    }
                }
                _ = retention_tick.tick(), if !retention.is_zero() => {
                    match self.store.drop_expired(retention).await {
                        Ok(dropped) => {
                            for (webhook_id, expired) in dropped {
                                self.pipeline.parked_expired(webhook_id, expired);
                                tracing::warn!(
                                    webhook_id,
                                    dropped = expired.events,
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
                        Some(m) => {
                            process.health.heard_from_server();
                            m
                        }
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
    /// timeout, write the statistics, confirm and record what is settled;
    /// returns that position.
    async fn finish(mut self, shutting_down: bool) -> Lsn {
        let metrics = self.pipeline.metrics();
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
        // A chunk read but not yet at its high watermark is read again by
        // the next session, from the key recorded last.
        self.backfill_worker.abort();
        self.slot_watch.abort();
        self.pipeline.metrics().clear_slot();
        let timeout = self.config.delivery.shutdown_timeout;
        if !self.pipeline.drain(timeout).await {
            tracing::warn!(
                "deliveries still in flight after {}: they stay unconfirmed and are sent again \
                 after the next start",
                crate::text::human_duration(timeout)
            );
        }
        // Without the snapshot written, nothing new may be confirmed: the
        // position stays where the last successful tick put it.
        let last = match self.pipeline.write_snapshots_and_confirmable().await {
            Ok(lsn) => lsn,
            Err(e) => {
                tracing::error!("{e:#}");
                self.source.reported()
            }
        };
        let mut confirm = last;
        if let Some(progress) = self.progress.take() {
            // The writer ends after the write it is doing (its counts are
            // written, or back in the book); this write supersedes it.
            drop(progress.settled);
            let _ = progress.writer.await;
            let recorded = *progress.recorded.borrow();
            if let Err(e) = self
                .store
                .record_progress(&self.config.postgres.slot, last, &self.usage)
                .await
            {
                tracing::warn!(position = %last, "recording the settled position failed: {e:#}");
                if self.pipeline.checkpoint().events_settled() > recorded {
                    confirm = recorded;
                }
            }
        }
        self.source.confirm(confirm);
        // What was booked after the position write, or everything when it
        // failed or there is no slot_progress.
        let _ = self.usage_stop.send(true);
        let _ = (&mut self.usage_writer).await;
        // The status update goes out on the source's timer; give it that long.
        let deadline = tokio::time::Instant::now() + self.config.postgres.status_interval * 3;
        while self.source.reported() < confirm && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let confirmed = self.source.reported();
        if shutting_down {
            tracing::info!(%confirmed, "stopped");
        } else {
            tracing::info!(%confirmed, "session closed");
        }
        self.source.stop().await;
        self.pipeline.settled()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(settled: Option<u64>, wal: Option<u64>) -> StoredProgress {
        StoredProgress {
            settled: settled.map(Lsn),
            server_wal: wal.map(Lsn),
        }
    }

    #[test]
    fn resumes_from_the_latest_settled_position() {
        let r = resume_position("w", Lsn(100), stored(Some(300), Some(1000)), Some(Lsn(400)));
        assert_eq!(
            r,
            Resume {
                start: Lsn(400),
                warnings: vec![],
                clear_stored: false
            }
        );
        let r = resume_position("w", Lsn(100), stored(Some(300), Some(1000)), Some(Lsn(200)));
        assert_eq!(r.start, Lsn(300));
        let r = resume_position("w", Lsn(500), stored(Some(300), Some(1000)), None);
        assert_eq!(r.start, Lsn(500), "a slot ahead of the record wins");
        let r = resume_position("w", Lsn(100), stored(None, None), None);
        assert_eq!(r.start, Lsn(100));
    }

    #[test]
    fn a_recorded_position_beyond_the_slots_is_taken_with_a_warning() {
        let r = resume_position("w", Lsn(0x100), stored(Some(0x300), Some(0x1000)), None);
        assert_eq!(r.start, Lsn(0x300));
        assert!(!r.clear_stored);
        assert_eq!(r.warnings.len(), 1);
        let w = &r.warnings[0];
        assert!(w.contains("position 0/300 "), "{w}");
        assert!(
            w.contains("512 bytes beyond the slot's confirmed position 0/100"),
            "{w}"
        );
        assert!(w.contains("walhook check"), "{w}");
        // Behind or at the slot's, or vouched for by this process: no word.
        for r in [
            resume_position("w", Lsn(0x300), stored(Some(0x300), Some(0x1000)), None),
            resume_position("w", Lsn(0x400), stored(Some(0x300), Some(0x1000)), None),
            resume_position(
                "w",
                Lsn(0x100),
                stored(Some(0x300), Some(0x1000)),
                Some(Lsn(0x300)),
            ),
        ] {
            assert!(r.warnings.is_empty(), "{r:?}");
        }
        // A position this process settled does not vouch for a higher one.
        let r = resume_position(
            "w",
            Lsn(0x100),
            stored(Some(0x300), Some(0x1000)),
            Some(Lsn(0x200)),
        );
        assert_eq!(r.warnings.len(), 1);
    }

    #[test]
    fn a_position_beyond_the_servers_wal_is_ignored_and_named() {
        let r = resume_position(
            "w",
            Lsn(100),
            stored(Some(0x2_0000_0000), Some(0x1000)),
            None,
        );
        assert_eq!(r.start, Lsn(100));
        assert!(r.clear_stored);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("2/0"), "{}", r.warnings[0]);
        assert!(r.warnings[0].contains("0/1000"), "{}", r.warnings[0]);
        assert!(r.warnings[0].contains("\"w\""), "{}", r.warnings[0]);
    }
}
