//! The failure log: attempts handed to a writer task that stores them in
//! `delivery_attempt` in batches, about once a second, and prunes the
//! table to its bounds.
//!
//! It is a diagnostic, not part of the delivery guarantee, so it never
//! slows delivery: an attempt is handed over without waiting, and when
//! the writer's queue is full (the database is slower than the failures)
//! the attempt is dropped and counted in
//! `walhook_attempt_log_dropped_total` instead of holding memory or an
//! attempt's task.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::{AttemptLogMode, DeliveryConfig, Live};
use crate::metrics::Metrics;
use crate::text::truncate_chars;

/// Characters of an answer (or transport error) a logged attempt keeps.
pub const ANSWER_CHARS: usize = 1000;
/// Attempts waiting for the writer; past it they are dropped and counted.
const QUEUE_ATTEMPTS: usize = 10_000;
/// Attempts written in one statement.
const BATCH_ATTEMPTS: usize = 500;
/// How often what has gathered is written.
const WRITE_EVERY: Duration = Duration::from_secs(1);
/// How often the table is pruned to its bounds.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often a failing write is logged at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Where logged attempts are stored: the store implements it for
/// PostgreSQL.
#[async_trait]
pub trait AttemptStore: Send + Sync {
    /// Store the attempts in one statement.
    async fn log_attempts(&self, attempts: &[LoggedAttempt]) -> anyhow::Result<()>;
    /// Remove the attempts older than `older_than`, and of each hook in
    /// `hooks` all but its newest `keep_per_hook`, in small batches;
    /// returns how many went.
    async fn prune_attempts(
        &self,
        older_than: SystemTime,
        keep_per_hook: i64,
        hooks: &[i32],
    ) -> anyhow::Result<u64>;
}

/// The attempt table does not exist: an installation set up by an older
/// walhook, until `walhook setup` runs again.
#[derive(Debug, thiserror::Error)]
#[error("table {table} does not exist: run `walhook setup` to create it (the failure log is off until then)")]
pub struct AttemptTableMissing {
    pub table: String,
}

/// One attempt as the log keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedAttempt {
    pub at: SystemTime,
    pub webhook_id: i32,
    pub event_id: Uuid,
    pub event: String,
    /// 0 for the first (as X-SuperOffice-Retry).
    pub attempt: i32,
    /// delivered, failed, throttled or gone.
    pub outcome: &'static str,
    pub status: Option<i16>,
    pub error_kind: Option<&'static str>,
    pub duration: Duration,
    /// At most [`ANSWER_CHARS`] characters.
    pub answer: Option<String>,
}

impl LoggedAttempt {
    /// `answer` cut to what the log keeps.
    pub fn bounded_answer(answer: &str) -> String {
        truncate_chars(answer, ANSWER_CHARS)
    }
}

/// The delivery side of the log: hands attempts to the writer.
#[derive(Clone)]
pub struct AttemptLog {
    /// None: nothing is logged (no writer).
    sender: Option<mpsc::Sender<LoggedAttempt>>,
    metrics: Arc<Metrics>,
}

impl AttemptLog {
    /// A log that keeps nothing, whatever `delivery.attempt_log` says.
    pub fn off(metrics: Arc<Metrics>) -> AttemptLog {
        AttemptLog {
            sender: None,
            metrics,
        }
    }

    /// Start the writer; it ends, after writing what it holds, once every
    /// handle is dropped.
    pub fn start(
        store: Arc<dyn AttemptStore>,
        config: Live<DeliveryConfig>,
        metrics: Arc<Metrics>,
    ) -> (AttemptLog, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(QUEUE_ATTEMPTS);
        let writer = AttemptWriter {
            store,
            config,
            metrics: Arc::clone(&metrics),
            receiver,
            batch: Vec::with_capacity(BATCH_ATTEMPTS),
            written_hooks: HashSet::new(),
            warned: None,
            table_missing: false,
        };
        (
            AttemptLog {
                sender: Some(sender),
                metrics,
            },
            tokio::spawn(writer.run()),
        )
    }

    /// Whether an attempt with this outcome is to be logged under `mode`.
    pub fn wants(&self, mode: AttemptLogMode, delivered: bool) -> bool {
        self.sender.is_some()
            && match mode {
                AttemptLogMode::Off => false,
                AttemptLogMode::Failures => !delivered,
                AttemptLogMode::All => true,
            }
    }

    /// Hand an attempt to the writer without waiting.
    pub fn record(&self, attempt: LoggedAttempt) {
        let Some(sender) = &self.sender else {
            return;
        };
        if sender.try_send(attempt).is_err() {
            self.metrics.attempt_log_dropped.inc();
        }
    }
}

/// The task that writes and prunes the log.
struct AttemptWriter {
    store: Arc<dyn AttemptStore>,
    /// For the bounds, which SIGHUP may change.
    config: Live<DeliveryConfig>,
    metrics: Arc<Metrics>,
    receiver: mpsc::Receiver<LoggedAttempt>,
    /// Attempts gathered since the last write.
    batch: Vec<LoggedAttempt>,
    /// Hooks written since the last pruning: only they can pass their
    /// row bound.
    written_hooks: HashSet<i32>,
    /// When a failure was last logged.
    warned: Option<Instant>,
    /// The table is missing: said once, not again each second.
    table_missing: bool,
}

impl AttemptWriter {
    async fn run(mut self) {
        let mut write_tick = tokio::time::interval(WRITE_EVERY);
        let mut prune_tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                got = self.receiver.recv() => match got {
                    Some(attempt) => {
                        self.batch.push(attempt);
                        if self.batch.len() >= BATCH_ATTEMPTS {
                            self.write().await;
                        }
                    }
                    None => {
                        self.write().await;
                        return;
                    }
                },
                _ = write_tick.tick() => self.write().await,
                _ = prune_tick.tick() => self.prune().await,
            }
        }
    }

    async fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        match self.store.log_attempts(&batch).await {
            Ok(()) => {
                self.table_missing = false;
                self.written_hooks
                    .extend(batch.iter().map(|a| a.webhook_id));
            }
            Err(e) => {
                // Dropped, not kept for another try: the log must not grow
                // memory while the database is away.
                self.metrics.attempt_log_dropped.inc_by(batch.len() as u64);
                if e.downcast_ref::<AttemptTableMissing>().is_some() {
                    if !self.table_missing {
                        tracing::warn!("failure log: {e:#}");
                    }
                    self.table_missing = true;
                } else {
                    self.warn(&format!(
                        "failure log: {} attempts not written: {e:#}",
                        batch.len()
                    ));
                }
            }
        }
        self.batch = batch;
        self.batch.clear();
    }

    async fn prune(&mut self) {
        if self.table_missing {
            return;
        }
        let config = self.config.get();
        let older_than = SystemTime::now()
            .checked_sub(config.attempt_log_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let keep = i64::try_from(config.attempt_log_max_rows_per_webhook).unwrap_or(i64::MAX);
        let hooks: Vec<i32> = self.written_hooks.drain().collect();
        if let Err(e) = self.store.prune_attempts(older_than, keep, &hooks).await {
            self.written_hooks.extend(hooks);
            self.warn(&format!("failure log: pruning failed: {e:#}"));
        }
    }

    fn warn(&mut self, message: &str) {
        if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!("{message}");
            self.warned = Some(Instant::now());
        }
    }
}
