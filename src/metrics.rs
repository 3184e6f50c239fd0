//! What the running daemon reports about itself: Prometheus metrics,
//! health and readiness, and the systemd watchdog.
//!
//! Readiness fails when streaming stalls (changes waiting, no progress) or
//! the slot is lost, so a stuck daemon never looks healthy; the watchdog is
//! pinged only while the pipeline loop itself is alive.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// How long the pipeline may go without confirming anything while it has
/// work before readiness fails.
pub const STALL_LIMIT: Duration = Duration::from_secs(120);

/// The metrics walhook exports, cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    pub changes_decoded: Counter,
    pub events_matched: Counter,
    /// Events not sent because their hook is Stopped (2) or Unknown (0).
    pub events_skipped: Counter,
    /// Events sent with their largest values left out, over
    /// `delivery.max_body_bytes`.
    pub events_cut: Counter,
    /// Attempts by outcome: delivered, failed, throttled (429, 503 with
    /// Retry-After), gone, dropped.
    pub deliveries: Family<Vec<(String, String)>, Counter>,
    /// The series of `deliveries` for each outcome, looked up once: a
    /// lookup per attempt (a label vector built and hashed under a lock)
    /// was a measurable part of an attempt's CPU.
    outcomes: [(&'static str, Counter); 5],
    pub delivery_seconds: Histogram,
    pub lag_bytes: Gauge,
    /// Seconds since the oldest transaction not yet settled committed.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub in_flight_bytes: Gauge,
    pub parked_events: Gauge,
    /// Events waiting in the `delivery` table, per webhook_id, as last
    /// counted there: they change from other processes too (`walhook
    /// parked discard`, `replay`), so the table is the truth.
    pub parked_waiting: Family<Vec<(String, String)>, Gauge>,
    /// The hooks `parked_waiting` has a series for.
    parked_waiting_hooks: std::sync::Mutex<Vec<i32>>,
    /// Hooks set to Stopped for reaching
    /// `delivery.max_parked_events_per_webhook`.
    pub hooks_stopped_parked_limit: Counter,
    /// Times a hook's parked events passed the warning share of
    /// `delivery.max_parked_events_per_webhook`.
    pub hooks_near_parked_limit: Counter,
    /// Logical messages read and ignored, by why: under another prefix,
    /// too large for walhook's prefix, or not a watermark.
    pub logical_messages_ignored: Family<Vec<(String, String)>, Counter>,
    /// Trace contexts read from `walhook.trace` messages, by outcome.
    trace_contexts: Family<Vec<(String, String)>, Counter>,
    /// 1 while `/readyz` would answer ready, set at each scrape.
    ready: Gauge,
    /// The slot as the session last read it (see [`Metrics::set_slot`]).
    slot_retained_wal_bytes: Gauge<f64, AtomicU64>,
    slot_wal_status: Family<Vec<(String, String)>, Gauge>,
    slot_safe_wal_size_bytes: Gauge<f64, AtomicU64>,
    slot_active: Gauge<f64, AtomicU64>,
    /// Per-hook gauges, set together by [`Metrics::set_hooks`].
    hook_state: Family<Vec<(String, String)>, Gauge>,
    hook_queue_depth: Family<Vec<(String, String)>, Gauge>,
    hook_in_flight_requests: Family<Vec<(String, String)>, Gauge>,
    hook_concurrency_limit: Family<Vec<(String, String)>, Gauge>,
    /// Set with `parked_waiting`, from the same count of the table.
    hook_oldest_parked_age: Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>,
    /// The hooks the per-hook gauges have a series for.
    hooks_known: std::sync::Mutex<Vec<i32>>,
    /// Attempts per webhook_id and outcome, for per-hook rates.
    hook_deliveries: Family<HookOutcome, Counter>,
    /// Attempts the failure log dropped: its writer's queue was full or
    /// the database refused them.
    pub attempt_log_dropped: Counter,
}

/// The labels of a per-hook attempt counter: hashed without building
/// strings, so counting one costs an attempt no allocation.
type HookOutcome = ([(&'static str, i32); 1], [(&'static str, &'static str); 1]);

/// The values of `wal_status` in `pg_replication_slots`: a fixed set, so
/// the gauge's series are bounded.
pub const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

/// One hook's gauges as delivery sees them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookGauges {
    pub webhook_id: i32,
    /// The numeric `webhook.state`: 0 Unknown, 1 Active, 2 Stopped,
    /// 3 TooManyErrors.
    pub state: i64,
    /// Events held in memory for it: queued, waiting for a retry or being
    /// sent.
    pub queue_depth: i64,
    /// Requests under way to its target.
    pub in_flight_requests: i64,
    /// Requests it may have in flight now.
    pub concurrency_limit: i64,
}

/// A hook's parked events, as counted in the `delivery` table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParkedCount {
    pub webhook_id: i32,
    pub events: i64,
    /// Seconds since the oldest of them was parked.
    pub oldest_age_seconds: f64,
}

/// The `webhook_id` label of a per-hook series.
fn hook_label(id: i32) -> Vec<(String, String)> {
    vec![("webhook_id".to_owned(), id.to_string())]
}

impl Metrics {
    /// Count a logical message ignored for `reason`.
    /// A `walhook.trace` message: `used`, or why it was ignored.
    pub fn trace_context(&self, outcome: &str) {
        self.trace_contexts
            .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
            .inc();
    }

    pub fn logical_message_ignored(&self, reason: &str) {
        self.logical_messages_ignored
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc();
    }
}

/// The outcomes of `deliveries`.
const OUTCOMES: [&str; 5] = ["delivered", "failed", "throttled", "gone", "dropped"];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("walhook");
        let changes_decoded = Counter::default();
        let events_matched = Counter::default();
        let events_skipped = Counter::default();
        let events_cut = Counter::default();
        let deliveries = Family::<Vec<(String, String)>, Counter>::default();
        let delivery_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let lag_bytes = Gauge::default();
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        let in_flight_bytes = Gauge::default();
        let parked_events = Gauge::default();
        let parked_waiting = Family::<Vec<(String, String)>, Gauge>::default();
        let hooks_stopped_parked_limit = Counter::default();
        let hooks_near_parked_limit = Counter::default();
        let logical_messages_ignored = Family::<Vec<(String, String)>, Counter>::default();
        let trace_contexts = Family::<Vec<(String, String)>, Counter>::default();
        let ready = Gauge::default();
        let slot_retained_wal_bytes = Gauge::<f64, AtomicU64>::default();
        let slot_wal_status = Family::<Vec<(String, String)>, Gauge>::default();
        let slot_safe_wal_size_bytes = Gauge::<f64, AtomicU64>::default();
        let slot_active = Gauge::<f64, AtomicU64>::default();
        let hook_state = Family::<Vec<(String, String)>, Gauge>::default();
        let hook_queue_depth = Family::<Vec<(String, String)>, Gauge>::default();
        let hook_in_flight_requests = Family::<Vec<(String, String)>, Gauge>::default();
        let hook_concurrency_limit = Family::<Vec<(String, String)>, Gauge>::default();
        let hook_oldest_parked_age =
            Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        let hook_deliveries = Family::<HookOutcome, Counter>::default();
        let attempt_log_dropped = Counter::default();
        for status in WAL_STATUSES {
            let _ = slot_wal_status.get_or_create(&vec![("status".to_owned(), status.to_owned())]);
        }
        registry.register(
            "ready",
            "1 while walhook is ready (/readyz answers 200), 0 otherwise",
            ready.clone(),
        );
        registry.register(
            "slot_retained_wal_bytes",
            "WAL the replication slot keeps on the server: from its restart_lsn to the server's \
             current position (the received position on a standby); NaN while this process \
             does not stream (a standby instance, reconnecting) or the slot has no restart_lsn",
            slot_retained_wal_bytes.clone(),
        );
        registry.register(
            "slot_wal_status",
            "The slot's wal_status in pg_replication_slots: 1 for the current one of reserved, \
             extended, unreserved and lost, 0 for the others (all 0 while this process does not \
             stream)",
            slot_wal_status.clone(),
        );
        registry.register(
            "slot_safe_wal_size_bytes",
            "WAL that can still be written before the slot is in danger of being lost \
             (safe_wal_size); NaN when the server sets no limit (max_slot_wal_keep_size = -1) \
             and while this process does not stream",
            slot_safe_wal_size_bytes.clone(),
        );
        registry.register(
            "slot_active",
            "1 when the replication slot is in use by a walsender, 0 when not; NaN while this \
             process does not stream",
            slot_active.clone(),
        );
        registry.register(
            "hook_state",
            "The hook's webhook.state, per webhook_id: 0 Unknown, 1 Active, 2 Stopped, \
             3 TooManyErrors",
            hook_state.clone(),
        );
        registry.register(
            "hook_queue_depth",
            "Events held in memory per webhook_id: queued, waiting for a retry or being sent",
            hook_queue_depth.clone(),
        );
        registry.register(
            "hook_in_flight_requests",
            "Requests under way to the hook's target, per webhook_id",
            hook_in_flight_requests.clone(),
        );
        registry.register(
            "hook_concurrency_limit",
            "Requests the hook may have in flight now, per webhook_id (adapted to its target \
             when delivery.concurrency_per_webhook is adaptive)",
            hook_concurrency_limit.clone(),
        );
        registry.register(
            "hook_oldest_parked_age_seconds",
            "Age of the hook's oldest parked event, per webhook_id (counted in the delivery \
             table with parked_waiting)",
            hook_oldest_parked_age.clone(),
        );
        registry.register(
            "logical_messages_ignored",
            "pg_logical_emit_message messages read and ignored, by reason (other_prefix, \
             too_large, not_a_watermark)",
            logical_messages_ignored.clone(),
        );
        registry.register(
            "trace_contexts",
            "Trace contexts read from 'walhook.trace' messages, by outcome (used; ignored as \
             malformed, too_large or not_transactional)",
            trace_contexts.clone(),
        );
        registry.register(
            "changes_decoded",
            "Row changes decoded from the replication stream",
            changes_decoded.clone(),
        );
        registry.register(
            "events_matched",
            "Events addressed to a webhook",
            events_matched.clone(),
        );
        registry.register(
            "events_skipped",
            "Events not sent because their hook is Stopped or Unknown",
            events_skipped.clone(),
        );
        registry.register(
            "events_cut",
            "Events sent with their largest values left out (delivery.max_body_bytes)",
            events_cut.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts and their outcome",
            deliveries.clone(),
        );
        registry.register(
            "delivery_seconds",
            "Time of one delivery attempt",
            delivery_seconds.clone(),
        );
        registry.register(
            "replication_lag_bytes",
            "WAL between the server's end and the confirmed position",
            lag_bytes.clone(),
        );
        registry.register(
            "replication_lag_seconds",
            "Seconds since the commit of the oldest transaction read but not yet settled \
             (delivered, parked or dropped): what a restart would send again; 0 when every \
             transaction read is settled",
            lag_seconds.clone(),
        );
        registry.register(
            "in_flight_bytes",
            "Request bodies queued or being sent",
            in_flight_bytes.clone(),
        );
        registry.register(
            "parked_events",
            "Events parked by this process since it started",
            parked_events.clone(),
        );
        registry.register(
            "parked_waiting",
            "Events waiting in the delivery table, per webhook_id (counted there periodically)",
            parked_waiting.clone(),
        );
        registry.register(
            "hooks_stopped_parked_limit",
            "Hooks set to Stopped for reaching delivery.max_parked_events_per_webhook",
            hooks_stopped_parked_limit.clone(),
        );
        registry.register(
            "hooks_near_parked_limit",
            "Times a hook's parked events passed 80% of delivery.max_parked_events_per_webhook",
            hooks_near_parked_limit.clone(),
        );
        registry.register(
            "hook_deliveries",
            "Delivery attempts per webhook_id and outcome (delivered, failed, throttled, gone)",
            hook_deliveries.clone(),
        );
        registry.register(
            "attempt_log_dropped",
            "Delivery attempts the failure log (delivery.attempt_log) did not write: its queue \
             was full or the database refused them",
            attempt_log_dropped.clone(),
        );
        let outcomes = OUTCOMES.map(|outcome| {
            let series = deliveries
                .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
                .clone();
            (outcome, series)
        });
        let metrics = Metrics {
            registry,
            changes_decoded,
            events_matched,
            events_skipped,
            events_cut,
            deliveries,
            outcomes,
            delivery_seconds,
            lag_bytes,
            lag_seconds,
            in_flight_bytes,
            parked_events,
            parked_waiting,
            parked_waiting_hooks: Default::default(),
            hooks_stopped_parked_limit,
            hooks_near_parked_limit,
            logical_messages_ignored,
            trace_contexts,
            ready,
            slot_retained_wal_bytes,
            slot_wal_status,
            slot_safe_wal_size_bytes,
            slot_active,
            hook_state,
            hook_queue_depth,
            hook_in_flight_requests,
            hook_concurrency_limit,
            hook_oldest_parked_age,
            hooks_known: Default::default(),
            hook_deliveries,
            attempt_log_dropped,
        };
        metrics.clear_slot();
        metrics
    }
}

impl Metrics {
    pub fn delivery(&self, outcome: &'static str, took: Duration) {
        self.count(outcome);
        self.delivery_seconds.observe(took.as_secs_f64());
    }

    /// One attempt of hook `webhook_id` ended with `outcome`.
    pub fn hook_delivery(&self, webhook_id: i32, outcome: &'static str) {
        self.hook_deliveries
            .get_or_create(&([("webhook_id", webhook_id)], [("outcome", outcome)]))
            .inc();
    }

    /// One more in the `deliveries` series of `outcome`.
    fn count(&self, outcome: &'static str) {
        match self.outcomes.iter().find(|(name, _)| *name == outcome) {
            Some((_, series)) => {
                series.inc();
            }
            None => {
                self.deliveries
                    .get_or_create(&vec![("outcome".to_owned(), outcome.to_owned())])
                    .inc();
            }
        }
    }

    /// An event dropped without an attempt: its hook was set Stopped or
    /// Unknown, or removed, while the event waited.
    pub fn dropped(&self) {
        self.count("dropped");
    }

    /// Set the parked gauges from a count of the table; a hook left out
    /// has none any more and loses its series.
    pub fn set_parked_waiting(&self, counts: &[ParkedCount]) {
        // A poisoned lock only means a panic elsewhere mid-update; the list
        // is rebuilt here whole.
        let mut known = self
            .parked_waiting_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for id in known.iter() {
            if !counts.iter().any(|c| c.webhook_id == *id) {
                self.parked_waiting.remove(&hook_label(*id));
                self.hook_oldest_parked_age.remove(&hook_label(*id));
            }
        }
        for c in counts {
            let label = hook_label(c.webhook_id);
            self.parked_waiting.get_or_create(&label).set(c.events);
            self.hook_oldest_parked_age
                .get_or_create(&label)
                .set(c.oldest_age_seconds);
        }
        *known = counts.iter().map(|c| c.webhook_id).collect();
    }

    /// Set the per-hook gauges; a hook left out is gone and loses its
    /// series.
    pub fn set_hooks(&self, hooks: &[HookGauges]) {
        let families = [
            &self.hook_state,
            &self.hook_queue_depth,
            &self.hook_in_flight_requests,
            &self.hook_concurrency_limit,
        ];
        let mut known = self.hooks_known.lock().unwrap_or_else(|e| e.into_inner());
        for id in known.iter() {
            if !hooks.iter().any(|h| h.webhook_id == *id) {
                for family in families {
                    family.remove(&hook_label(*id));
                }
                for outcome in OUTCOMES {
                    self.hook_deliveries
                        .remove(&([("webhook_id", *id)], [("outcome", outcome)]));
                }
            }
        }
        for h in hooks {
            let label = hook_label(h.webhook_id);
            self.hook_state.get_or_create(&label).set(h.state);
            self.hook_queue_depth
                .get_or_create(&label)
                .set(h.queue_depth);
            self.hook_in_flight_requests
                .get_or_create(&label)
                .set(h.in_flight_requests);
            self.hook_concurrency_limit
                .get_or_create(&label)
                .set(h.concurrency_limit);
        }
        *known = hooks.iter().map(|h| h.webhook_id).collect();
    }

    /// Set the slot gauges from `pg_replication_slots`; `None` is NULL
    /// there (no restart_lsn, no wal_status, no max_slot_wal_keep_size).
    pub fn set_slot(
        &self,
        retained_bytes: Option<i64>,
        wal_status: Option<&str>,
        safe_wal_size: Option<i64>,
        active: bool,
    ) {
        let bytes = |v: Option<i64>| v.map_or(f64::NAN, |v| v as f64);
        self.slot_retained_wal_bytes.set(bytes(retained_bytes));
        self.slot_safe_wal_size_bytes.set(bytes(safe_wal_size));
        for status in WAL_STATUSES {
            self.slot_wal_status
                .get_or_create(&vec![("status".to_owned(), status.to_owned())])
                .set(i64::from(wal_status == Some(status)));
        }
        self.slot_active.set(if active { 1.0 } else { 0.0 });
    }

    /// The slot is not read while this process does not stream: its gauges
    /// say unknown rather than keep a reading that gets stale, and a
    /// standby instance, which never reads it, alerts on nothing.
    pub fn clear_slot(&self) {
        self.slot_retained_wal_bytes.set(f64::NAN);
        self.slot_safe_wal_size_bytes.set(f64::NAN);
        for status in WAL_STATUSES {
            self.slot_wal_status
                .get_or_create(&vec![("status".to_owned(), status.to_owned())])
                .set(0);
        }
        self.slot_active.set(f64::NAN);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Liveness and progress of the pipeline.
pub struct Health {
    started: Instant,
    /// Milliseconds since start at the last pipeline loop turn.
    loop_at: AtomicU64,
    /// Milliseconds since start when the position last advanced or
    /// nothing was pending.
    progress_at: AtomicU64,
    streaming: AtomicBool,
    slot_lost: AtomicBool,
    confirmed: AtomicI64,
    /// Milliseconds since start when the replication stream last brought
    /// a message.
    heard_at: AtomicU64,
    /// Silence on the stream after which the daemon is not ready; 0: none.
    silence_limit_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: Instant::now(),
            loop_at: AtomicU64::new(0),
            progress_at: AtomicU64::new(0),
            streaming: AtomicBool::new(false),
            slot_lost: AtomicBool::new(false),
            confirmed: AtomicI64::new(-1),
            heard_at: AtomicU64::new(0),
            silence_limit_ms: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        Duration::from_millis(self.now().saturating_sub(at.load(Ordering::Acquire)))
    }

    /// The pipeline loop turned; `confirmed` is the position it may confirm
    /// and `pending` whether events wait to be settled.
    pub fn tick(&self, confirmed: u64, pending: bool) {
        let now = self.now();
        self.loop_at.store(now, Ordering::Release);
        let previous = self.confirmed.swap(confirmed as i64, Ordering::AcqRel);
        if !pending || previous != confirmed as i64 {
            self.progress_at.store(now, Ordering::Release);
        }
    }

    pub fn set_streaming(&self, streaming: bool) {
        self.streaming.store(streaming, Ordering::Release);
        let now = self.now();
        self.loop_at.store(now, Ordering::Release);
        self.progress_at.store(now, Ordering::Release);
        self.heard_at.store(now, Ordering::Release);
    }

    /// The replication stream brought a message (a keepalive included).
    pub fn heard_from_server(&self) {
        self.heard_at.store(self.now(), Ordering::Release);
    }

    /// Not ready after `limit` without a message on the stream.
    pub fn set_silence_limit(&self, limit: Duration) {
        self.silence_limit_ms
            .store(limit.as_millis() as u64, Ordering::Release);
    }

    pub fn set_slot_lost(&self) {
        self.slot_lost.store(true, Ordering::Release);
    }

    /// The pipeline loop turned recently: the process is not stuck.
    pub fn live(&self) -> bool {
        !self.streaming.load(Ordering::Acquire) || self.since(&self.loop_at) < STALL_LIMIT
    }

    fn silent(&self) -> bool {
        let limit = self.silence_limit_ms.load(Ordering::Acquire);
        limit > 0 && self.since(&self.heard_at) >= Duration::from_millis(limit)
    }

    /// Why the daemon is not ready, if it is not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.slot_lost.load(Ordering::Acquire) {
            Some("the replication slot is lost")
        } else if !self.streaming.load(Ordering::Acquire) {
            Some("not streaming")
        } else if self.silent() {
            Some("no message from PostgreSQL on the replication connection for over 3/4 of postgres.receive_timeout: the network or the server may be down")
        } else if self.since(&self.loop_at) >= STALL_LIMIT {
            Some("the pipeline loop is stuck")
        } else if self.since(&self.progress_at) >= STALL_LIMIT {
            Some("changes are waiting and the position has not advanced")
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serve `/metrics`, `/healthz` and `/readyz` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let listen = listener.local_addr()?;
    tracing::info!(%listen, "metrics and health on http://{listen}/metrics, /healthz, /readyz");
    let app = axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn render_metrics(State(s): State<Shared>) -> (StatusCode, String) {
    // At the scrape, so it holds between sessions too.
    s.metrics
        .ready
        .set(i64::from(s.health.not_ready().is_none()));
    (StatusCode::OK, s.metrics.render())
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.health.live() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline loop is stuck\n",
        )
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, String) {
    match s.health.not_ready() {
        None => (StatusCode::OK, "ready\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Ping the systemd watchdog while the pipeline is live; a stuck pipeline
/// stops the pings and systemd restarts the service.
pub async fn watchdog(health: Arc<Health>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    loop {
        tokio::time::sleep(period).await;
        if health.live() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            tracing::error!("pipeline stuck: watchdog pings stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.changes_decoded.inc();
        m.delivery("delivered", Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("walhook_changes_decoded_total 1"), "{text}");
        assert!(
            text.contains("walhook_deliveries_total{outcome=\"delivered\"} 1"),
            "{text}"
        );
        assert!(text.contains("walhook_delivery_seconds_bucket"), "{text}");
    }

    /// Every metric the README names is exported under that name (counters
    /// with their `_total`), so a query written from the README works.
    #[test]
    fn the_readme_names_metrics_as_exported() {
        let readme = include_str!("../README.md");
        let metrics = Metrics::default();
        // A family is rendered once it has a series.
        metrics.logical_message_ignored("other_prefix");
        metrics.trace_context("used");
        metrics.set_parked_waiting(&[ParkedCount {
            webhook_id: 1,
            events: 1,
            oldest_age_seconds: 1.0,
        }]);
        metrics.set_hooks(&[HookGauges {
            webhook_id: 1,
            state: 1,
            queue_depth: 0,
            in_flight_requests: 0,
            concurrency_limit: 8,
        }]);
        metrics.hook_delivery(1, "delivered");
        let text = metrics.render();
        let families: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .collect();
        let exported = |name: &str| {
            families.iter().any(|&(family, kind)| match kind {
                "counter" => name == format!("{family}_total"),
                _ => name == family,
            })
        };
        let mut named = 0;
        for (at, _) in readme.match_indices("walhook_") {
            let name: String = readme[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            // Roles, publications and the example slot, not metrics.
            if [
                "walhook_",
                "walhook_setup",
                "walhook_keyless",
                "walhook_crm",
            ]
            .contains(&name.as_str())
            {
                continue;
            }
            named += 1;
            assert!(
                exported(&name),
                "the README names {name}, which is not exported:\n{text}"
            );
        }
        assert!(named > 10, "only {named} metric names found in the README");
    }

    /// A hook gone from the list loses its series; the slot's wal_status
    /// has one series per status, 1 for the current one.
    #[test]
    fn hook_and_slot_gauges() {
        let m = Metrics::default();
        let hook = |id| HookGauges {
            webhook_id: id,
            state: 3,
            queue_depth: 5,
            in_flight_requests: 2,
            concurrency_limit: 8,
        };
        m.set_hooks(&[hook(1), hook(2)]);
        m.hook_delivery(2, "failed");
        m.hook_delivery(2, "failed");
        let text = m.render();
        assert!(
            text.contains("walhook_hook_deliveries_total{webhook_id=\"2\",outcome=\"failed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("walhook_hook_state{webhook_id=\"2\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("walhook_hook_queue_depth{webhook_id=\"1\"} 5"),
            "{text}"
        );
        m.set_hooks(&[hook(1)]);
        let text = m.render();
        assert!(!text.contains("webhook_id=\"2\""), "{text}");
        assert!(text.contains("walhook_hook_in_flight_requests{webhook_id=\"1\"} 2"));

        m.set_parked_waiting(&[ParkedCount {
            webhook_id: 4,
            events: 7,
            oldest_age_seconds: 12.5,
        }]);
        let text = m.render();
        assert!(text.contains("walhook_hook_oldest_parked_age_seconds{webhook_id=\"4\"} 12.5"));
        m.set_parked_waiting(&[]);
        assert!(!m.render().contains("webhook_id=\"4\""));

        m.set_slot(Some(4096), Some("reserved"), None, true);
        let text = m.render();
        assert!(
            text.contains("walhook_slot_retained_wal_bytes 4096"),
            "{text}"
        );
        assert!(
            text.contains("walhook_slot_wal_status{status=\"reserved\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("walhook_slot_wal_status{status=\"lost\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("walhook_slot_safe_wal_size_bytes NaN"),
            "{text}"
        );
        assert!(text.contains("walhook_slot_active 1"), "{text}");
        m.clear_slot();
        let text = m.render();
        assert!(text.contains("walhook_slot_active NaN"), "{text}");
        assert!(
            text.contains("walhook_slot_wal_status{status=\"reserved\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn readiness_follows_streaming_and_progress() {
        let h = Health::default();
        assert_eq!(h.not_ready(), Some("not streaming"));
        h.set_streaming(true);
        h.tick(10, true);
        assert_eq!(h.not_ready(), None);
        h.set_silence_limit(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(h
            .not_ready()
            .is_some_and(|why| why.contains("receive_timeout")));
        h.heard_from_server();
        h.set_silence_limit(Duration::from_secs(60));
        assert_eq!(h.not_ready(), None);
        h.set_slot_lost();
        assert_eq!(h.not_ready(), Some("the replication slot is lost"));
    }
}
