//! One hook's delivery state, shared by its queue, its replayer and the
//! reader (see the state table in the module above).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::concurrency::{ConcurrencyLimit, Signal};
use super::settings::HookSettings;
use super::signing::SigningKey;
use crate::registry::{Webhook, WebhookState};

/// Why a hook's events are parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    TooManyErrors,
    Backlog,
    /// `walhook webhook pause`: kept until `resume`.
    Paused,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::TooManyErrors => "TooManyErrors",
            ParkReason::Backlog => "backlog",
            ParkReason::Paused => "paused",
        }
    }
}

/// Whether new events of a hook go to its queue or to `delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Live,
    Parking(ParkReason),
}

/// A hook and its secret's prepared keys, replaced together.
pub(super) type HookWithKey = (Arc<Webhook>, Option<Arc<SigningKey>>);

/// Shared state of one hook: queue, replayer and reader all see it.
pub struct HookControl {
    pub id: i32,
    /// The hook as it stands now: attempts use its URL, headers and secret
    /// (a DBA's fix applies at once); bodies keep the event's time. With it,
    /// its secret's keys, prepared once, replaced together with the hook.
    current: RwLock<HookWithKey>,
    pub(super) consecutive_errors: AtomicU32,
    /// Jobs queued in or running from its queue.
    pub(super) in_flight: AtomicUsize,
    /// Events the reader parked that the parking writer has not written
    /// yet: the replayer must not switch to Live while any are on their way.
    pub(super) unwritten: AtomicUsize,
    /// Parked events of the hook in `delivery` as far as this process
    /// knows (-1: not counted yet): written by the parking writer and the
    /// queue, removed by the replayer.
    pub(super) parked: AtomicI64,
    /// The hook reached `delivery.max_parked_events_per_webhook` and was
    /// set to Stopped: its new events are dropped until it is set Active.
    pub(super) parked_limit_reached: AtomicBool,
    /// When the oldest event still queued or running was queued
    /// (milliseconds since [`epoch_millis`]'s start), 0 when none: the age
    /// of the hook's backlog.
    pub(super) oldest_queued: AtomicU64,
    /// Requests the hook may have in flight, adapted by its attempts.
    concurrency: Mutex<ConcurrencyLimit>,
    /// Tripped by too many errors: queued events park instead of attempting.
    pub(super) tripped: AtomicBool,
    /// Answered 410: queued events are dropped instead of attempting.
    pub(super) gone: AtomicBool,
    /// Wakes retry waits when the hook trips or is gone.
    pub(super) trip_notify: Notify,
    /// Held while parking an event or switching back to Live, so the two
    /// never interleave.
    pub(super) mode: tokio::sync::Mutex<Mode>,
    /// A replayer is running for this hook.
    pub(super) replaying: AtomicBool,
    /// The hook's row was deleted.
    pub(super) removed: AtomicBool,
    /// Its `webhook_control` row: previous secret, rate, pause.
    settings: RwLock<Arc<HookSettings>>,
    /// No request starts before this ([`epoch_millis`]; 0: none): the
    /// target answered 429 or 503 with Retry-After.
    held_until: AtomicU64,
    /// The earliest start of the next request under the hook's rate.
    next_start: Mutex<Option<Instant>>,
}

impl HookControl {
    pub(super) fn new(hook: Arc<Webhook>, limit: ConcurrencyLimit, mode: Mode) -> HookControl {
        HookControl {
            id: hook.id,
            current: RwLock::new((Arc::clone(&hook), signing_key(&hook, None))),
            consecutive_errors: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            parked: AtomicI64::new(-1),
            parked_limit_reached: AtomicBool::new(false),
            oldest_queued: AtomicU64::new(0),
            concurrency: Mutex::new(limit),
            tripped: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            trip_notify: Notify::new(),
            mode: tokio::sync::Mutex::new(mode),
            replaying: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            settings: RwLock::new(Arc::default()),
            held_until: AtomicU64::new(0),
            next_start: Mutex::new(None),
        }
    }

    pub fn settings(&self) -> Arc<HookSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// New settings; returns the ones they replace.
    pub(super) fn set_settings(&self, settings: Arc<HookSettings>) -> Arc<HookSettings> {
        let old = std::mem::replace(
            &mut *self.settings.write().unwrap_or_else(|e| e.into_inner()),
            settings,
        );
        if old.max_per_minute != self.settings().max_per_minute {
            // A new rate applies from the next request, not after a slot
            // reserved under the old one.
            *self.next_start.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        old
    }

    /// `walhook webhook pause`: nothing is sent, new events are parked.
    pub(super) fn is_paused(&self) -> bool {
        self.settings().paused
    }

    /// The target asked for a pause: no request of the hook starts for
    /// `wait`.
    pub(super) fn hold_for(&self, wait: Duration) {
        let until = epoch_millis().saturating_add(wait.as_millis() as u64);
        self.held_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Wait until the hook may send its next request: past a hold the
    /// target asked for, and at the hook's rate. Returns early (false)
    /// when the hook is stopped, tripped, paused or changed meanwhile, so
    /// the caller looks again.
    pub(super) async fn wait_turn(&self) -> bool {
        loop {
            let held = self
                .held_until
                .load(Ordering::Acquire)
                .saturating_sub(epoch_millis());
            let wait = if held > 0 {
                Duration::from_millis(held)
            } else if let Some(spacing) = self.settings().spacing() {
                let now = Instant::now();
                let at = {
                    let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
                    let at = next.map_or(now, |n| n.max(now));
                    *next = Some(at + spacing);
                    at
                };
                if at <= now {
                    return true;
                }
                // The slot is reserved: sleep to it, then send.
                let woken = tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => false,
                    _ = self.trip_notify.notified() => true,
                };
                return !woken || !self.must_stop_waiting();
            } else {
                return true;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.trip_notify.notified() => {
                    if self.must_stop_waiting() {
                        return false;
                    }
                }
            }
        }
    }

    fn must_stop_waiting(&self) -> bool {
        self.is_stopped() || self.is_tripped() || self.is_gone() || self.is_paused()
    }

    pub fn current(&self) -> Arc<Webhook> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()).0)
    }

    /// The hook as it stands now and its secret's prepared keys.
    pub(super) fn current_with_key(&self) -> HookWithKey {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn set_current(&self, hook: Arc<Webhook>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let key = signing_key(&hook, Some(&*current));
        *current = (hook, key);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Parked events still waiting for the parking writer.
    pub(super) fn unwritten(&self) -> usize {
        self.unwritten.load(Ordering::Acquire)
    }

    /// `added` more parked events were written to `delivery`.
    pub(super) fn parked_added(&self, added: usize) {
        let _ = self
            .parked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n >= 0).then(|| n + added as i64)
            });
    }

    /// `removed` more parked events left `delivery` (delivered).
    pub(super) fn parked_removed(&self, removed: usize) {
        let _ = self
            .parked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n >= 0).then(|| (n - removed as i64).max(0))
            });
    }

    pub(super) fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// The DBA stopped the hook (state Stopped or Unknown) or deleted its
    /// row: its waiting events get no further attempt and are dropped,
    /// never parked, as SuperOffice does with a stopped hook.
    pub(super) fn is_stopped(&self) -> bool {
        self.removed.load(Ordering::Acquire)
            || self.parked_limit_reached.load(Ordering::Acquire)
            || matches!(
                self.current().state,
                WebhookState::Stopped | WebhookState::Unknown
            )
    }

    pub(super) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// How long the oldest event still queued for this hook has waited.
    pub(super) fn backlog_age(&self) -> Duration {
        match self.oldest_queued.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            at => Duration::from_millis(epoch_millis().saturating_sub(at)),
        }
    }

    fn concurrency(&self) -> MutexGuard<'_, ConcurrencyLimit> {
        self.concurrency.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests the hook may have in flight now.
    pub(super) fn concurrency_limit(&self) -> usize {
        self.concurrency().limit()
    }

    /// The queue looked at its waiting events: `held_back` of them (at
    /// most) could have started but for the limit.
    pub(super) fn looked(&self, held_back: usize) {
        self.concurrency().looked(held_back);
    }

    /// What an attempt's outcome says about the target's capacity.
    pub(super) fn record_attempt(&self, signal: Signal) {
        let mut concurrency = self.concurrency();
        let before = concurrency.limit();
        concurrency.record(Instant::now(), signal);
        let after = concurrency.limit();
        // Slow start grows by one per answer: said at each doubling only.
        let slow_start_step =
            concurrency.in_slow_start() && after == before + 1 && !after.is_power_of_two();
        if after != before && !slow_start_step {
            tracing::debug!(
                webhook_id = self.id,
                before,
                after,
                ?signal,
                "concurrency limit"
            );
        }
    }

    /// New concurrency settings (a reload): the limit starts over.
    pub(super) fn set_concurrency(&self, limit: ConcurrencyLimit) {
        *self.concurrency() = limit;
    }
}

/// The prepared keys of `hook`'s secret: those of `before` when its
/// secret is the same.
fn signing_key(hook: &Webhook, before: Option<&HookWithKey>) -> Option<Arc<SigningKey>> {
    let secret = hook.secret.as_deref()?;
    match before {
        Some((old, Some(key))) if old.secret.as_deref() == Some(secret) => Some(Arc::clone(key)),
        _ => Some(Arc::new(SigningKey::new(secret))),
    }
}

/// Milliseconds since the process's first use of delivery (never 0).
pub(super) fn epoch_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}
