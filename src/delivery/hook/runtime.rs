//! One hook's runtime state, shared by its queue, its replayer, the
//! parking writer and the dispatcher, and changed only through the named
//! transitions below: the other files ask it, never set its fields.
//!
//! # A hook's delivery states
//!
//! Apart from its `webhook.state` (the DBA's word), each hook the
//! dispatcher has seen is in one of these states:
//!
//! | state     | new events go to        | left by                                        |
//! |-----------|-------------------------|------------------------------------------------|
//! | live      | its queue               | too many errors ([`trip`]), a backlog past its bound ([`park_for_backlog`]), 410 ([`mark_gone`]), a pause |
//! | parking   | `delivery` (parked)     | the replayer catching up ([`go_live_if_caught_up`]) |
//! | replaying | `delivery`, behind the parked ones | all parked delivered and queue empty (live); a failure (parking) |
//! | tripped   | `delivery`              | the hook set Active again ([`activate`]: replaying) |
//! | gone      | dropped (410: Stopped)  | the hook set Active again ([`activate`]: replaying or live) |
//! | paused    | `delivery` (parked, reason `paused`) | `walhook webhook resume` (replaying) |
//!
//! Paused is the parking state held by the hook's `webhook_control` row
//! (`paused_at` set) rather than by its target: nothing is sent, not even
//! retries or parked events, until the row is cleared; then the replayer
//! delivers what was parked, in commit order, and the hook goes live.
//! Unlike Stopped (2), which drops, a pause keeps every event.
//!
//! While a hook has parked events, its new events are parked behind them,
//! so a row's events never overtake each other. The switch to parking and
//! the switch back to live both happen under one lock ([`Mode`]), with the
//! events on their way to the table counted under it: the replayer never
//! goes live while an event is still being parked.
//!
//! [`trip`]: HookRuntime::trip
//! [`park_for_backlog`]: HookRuntime::park_for_backlog
//! [`mark_gone`]: HookRuntime::mark_gone
//! [`go_live_if_caught_up`]: HookRuntime::go_live_if_caught_up
//! [`activate`]: HookRuntime::activate

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::concurrency::{ConcurrencyLimit, Signal};
use super::settings::HookSettings;
use crate::delivery::request::SigningKey;
use crate::delivery::storage::ParkedSize;
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

/// What one event adds to its hook's parked bytes: its body without its
/// Properties, and the Properties' digest and size when it has them
/// (counted once per version: see [`HookRuntime::reserve_parked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkSize {
    pub body: i64,
    pub properties: Option<([u8; 32], i64)>,
}

impl ParkSize {
    /// The event's bytes with its own Properties counted.
    pub fn whole(&self) -> i64 {
        self.body + self.properties.map_or(0, |(_, len)| len)
    }
}

/// The bounds on one hook's parked events:
/// `delivery.max_parked_events_per_webhook` and
/// `delivery.max_parked_bytes_per_webhook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkedLimits {
    pub events: i64,
    pub bytes: i64,
}

/// The bound a hook reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedBound {
    Events,
    Bytes,
}

/// What [`HookRuntime::reserve_parked`] granted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    /// The bytes each granted event counts: the first `counted.len()` of
    /// those asked for may be parked, the rest may not.
    pub counted: Vec<i64>,
    /// The bound the hook is at, when it may park no more.
    pub full: Option<ParkedBound>,
}

/// A hook's parked events as this process counts them.
#[derive(Debug)]
struct ParkedTally {
    /// -1: not counted yet.
    events: i64,
    bytes: i64,
    /// The Properties version the last parked event had: the events after
    /// it with the same version share its stored copy, so they count their
    /// bodies only.
    properties: Option<[u8; 32]>,
}

/// Whether new events of a hook go to its queue or to `delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Parking(ParkReason),
}

/// Where a new event of the hook goes, decided by [`HookRuntime::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// To the hook's queue.
    Queue,
    /// To `delivery`, for this reason. The event is already counted as
    /// on its way to the table: hand it to the parking writer, which
    /// counts it off ([`HookRuntime::park_settled`]).
    Park(ParkReason),
}

/// A hook and its secret's prepared keys, replaced together.
pub type HookWithKey = (Arc<Webhook>, Option<Arc<SigningKey>>);

/// A request under way, counted in [`HookRuntime::requests`] while held.
pub struct RequestInFlight<'a>(&'a HookRuntime);

impl Drop for RequestInFlight<'_> {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One hook's runtime state (see the module's state table).
pub struct HookRuntime {
    id: i32,
    /// The hook as it stands now: attempts use its URL, headers and secret
    /// (a DBA's fix applies at once); bodies keep the event's time. With it,
    /// its secret's keys, prepared once, replaced together with the hook.
    current: RwLock<HookWithKey>,
    /// Failed attempts in a row, toward TooManyErrors.
    consecutive_errors: AtomicU32,
    /// Jobs queued in or running from its queue.
    in_flight: AtomicUsize,
    /// Requests under way to its target, from its queue or its replayer.
    requests: AtomicUsize,
    /// Events being parked that the parking writer has not written yet:
    /// the replayer must not switch to Live while any are on their way.
    unwritten: AtomicUsize,
    /// Parked events of the hook in `delivery`, and their bytes, as far
    /// as this process knows.
    parked: Mutex<ParkedTally>,
    /// The hook reached `delivery.max_parked_events_per_webhook` and was
    /// set to Stopped: its new events are dropped until it is set Active.
    parked_limit_reached: AtomicBool,
    /// When the oldest event still queued or running was queued
    /// (milliseconds since [`epoch_millis`]'s start), 0 when none: the age
    /// of the hook's backlog.
    oldest_queued: AtomicU64,
    /// Requests the hook may have in flight, adapted by its attempts.
    concurrency: Mutex<ConcurrencyLimit>,
    /// Tripped by too many errors: queued events park instead of attempting.
    tripped: AtomicBool,
    /// Answered 410: queued events are dropped instead of attempting.
    gone: AtomicBool,
    /// Wakes waits (retries, holds, the rate, the replayer's wait for the
    /// queue) when something they look at changed.
    changed: Notify,
    /// Held while parking an event or switching back to Live, so the two
    /// never interleave.
    mode: tokio::sync::Mutex<Mode>,
    /// A replayer is running for this hook.
    replaying: AtomicBool,
    /// The hook's row was deleted.
    removed: AtomicBool,
    /// Its `webhook_control` row: previous secret, rate, pause.
    settings: RwLock<Arc<HookSettings>>,
    /// No request starts before this ([`epoch_millis`]; 0: none): the
    /// target answered 429 or 503 with Retry-After.
    held_until: AtomicU64,
    /// The earliest start of the next request under the hook's rate.
    next_start: Mutex<Option<Instant>>,
}

impl HookRuntime {
    /// A hook seen for the first time: live, or parking when it is known
    /// to have parked events (`parked`).
    pub fn new(
        hook: Arc<Webhook>,
        limit: ConcurrencyLimit,
        parked: Option<ParkReason>,
    ) -> HookRuntime {
        HookRuntime {
            id: hook.id,
            current: RwLock::new((Arc::clone(&hook), signing_key(&hook, None))),
            consecutive_errors: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            unwritten: AtomicUsize::new(0),
            parked: Mutex::new(ParkedTally {
                events: -1,
                bytes: 0,
                properties: None,
            }),
            parked_limit_reached: AtomicBool::new(false),
            oldest_queued: AtomicU64::new(0),
            concurrency: Mutex::new(limit),
            tripped: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            changed: Notify::new(),
            mode: tokio::sync::Mutex::new(parked.map_or(Mode::Live, Mode::Parking)),
            replaying: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            settings: RwLock::new(Arc::default()),
            held_until: AtomicU64::new(0),
            next_start: Mutex::new(None),
        }
    }

    pub fn id(&self) -> i32 {
        self.id
    }

    // ---------------------------------------------------------- the row

    pub fn current(&self) -> Arc<Webhook> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()).0)
    }

    /// The hook as it stands now and its secret's prepared keys.
    pub fn current_with_key(&self) -> HookWithKey {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The hook's row as the registry has it now: attempts from now on use
    /// it (URL, secret, headers). A target at another origin gets the
    /// concurrency limit of a new hook.
    pub fn set_current(&self, hook: Arc<Webhook>) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !same_origin(&current.0, &hook) {
            // Before the new URL is seen, so that every request to it is
            // counted by the fresh limit. (The concurrency lock is never
            // held while taking this one.)
            self.concurrency().restart(Instant::now());
            tracing::debug!(
                webhook_id = self.id,
                "target moved to another origin: concurrency limit starts afresh"
            );
        }
        let key = signing_key(&hook, Some(&*current));
        *current = (hook, key);
    }

    /// The registry changed the hook's row (it exists again if it was
    /// removed): waiting retries look at the new row.
    pub fn row_changed(&self, hook: Arc<Webhook>) {
        self.removed.store(false, Ordering::Release);
        self.set_current(hook);
        self.changed.notify_waiters();
    }

    /// The hook's row was deleted: its waiting events are dropped.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn settings(&self) -> Arc<HookSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// New settings (`webhook_control`); returns the ones they replace.
    /// Waits (retries, a hold, the rate) look at them.
    pub fn set_settings(&self, settings: Arc<HookSettings>) -> Arc<HookSettings> {
        let old = std::mem::replace(
            &mut *self.settings.write().unwrap_or_else(|e| e.into_inner()),
            settings,
        );
        if old.max_per_minute != self.settings().max_per_minute {
            // A new rate applies from the next request, not after a slot
            // reserved under the old one.
            *self.next_start.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.changed.notify_waiters();
        old
    }

    // ---------------------------------------------------------- asking

    /// `walhook webhook pause`: nothing is sent, new events are parked.
    pub fn is_paused(&self) -> bool {
        self.settings().paused
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// The DBA stopped the hook (state Stopped or Unknown), deleted its
    /// row, or it reached its parked limit: its waiting events get no
    /// further attempt and are dropped, never parked, as SuperOffice does
    /// with a stopped hook.
    pub fn is_stopped(&self) -> bool {
        self.removed.load(Ordering::Acquire)
            || self.parked_limit_reached()
            || !self.current().state.takes_events()
    }

    /// Whether attempts must stop: stopped, tripped, gone or paused.
    pub fn must_stop_sending(&self) -> bool {
        self.is_stopped() || self.is_tripped() || self.is_gone() || self.is_paused()
    }

    /// Whether a replay may go on: the hook is Active and nothing stops
    /// its attempts.
    pub fn may_replay(&self) -> bool {
        self.current().state == WebhookState::Active
            && !self.is_tripped()
            && !self.is_gone()
            && !self.is_paused()
    }

    /// Whether new events are parked now, without waiting for the mode
    /// lock: while another task holds it (the dispatcher admits every new
    /// event under it) the hook counts as live, so its queue keeps to its
    /// concurrency limit; a switch to parking is seen at the next look.
    pub fn is_parking_now(&self) -> bool {
        matches!(self.mode.try_lock().map(|m| *m), Ok(Mode::Parking(_)))
    }

    /// Why the hook parks its events now, if it does.
    pub async fn parking(&self) -> Option<ParkReason> {
        match *self.mode.lock().await {
            Mode::Parking(reason) => Some(reason),
            Mode::Live => None,
        }
    }

    /// A future that completes at the next change waits must look at (a
    /// trip, a 410, a stop, a pause, a changed row).
    pub fn changed(&self) -> impl Future<Output = ()> + '_ {
        self.changed.notified()
    }

    // ----------------------------------------------------- transitions

    /// Where a new event goes (the dispatcher, for each event of an
    /// Active hook). A live hook that is paused, or whose backlog is past
    /// its bound (`behind`), starts parking here; the returned
    /// `Park` carries the reason, and the event is counted as on its way
    /// to the table under the mode lock. The second value says a replayer
    /// must be started (the hook has just begun parking for its backlog).
    pub async fn admit(&self, behind: bool) -> (Admission, bool) {
        let mut mode = self.mode.lock().await;
        let mut start_replayer = false;
        if *mode == Mode::Live && self.is_paused() {
            *mode = Mode::Parking(ParkReason::Paused);
            self.changed.notify_waiters();
        }
        if *mode == Mode::Live && behind {
            self.log_backlog_parking();
            *mode = Mode::Parking(ParkReason::Backlog);
            self.changed.notify_waiters();
            start_replayer = true;
        }
        match *mode {
            Mode::Live => (Admission::Queue, start_replayer),
            Mode::Parking(reason) => {
                self.unwritten.fetch_add(1, Ordering::AcqRel);
                // A pause outlasts a restart, which restores the hook as
                // parking for its backlog: say why it parks now.
                let reason = if self.is_paused() {
                    ParkReason::Paused
                } else {
                    reason
                };
                (Admission::Park(reason), start_replayer)
            }
        }
    }

    /// A new event of a hook whose row says TooManyErrors (3): parked,
    /// and the hook parks from now on. Counted as on its way to the table.
    pub async fn admit_tripped(&self) {
        let mut mode = self.mode.lock().await;
        if *mode == Mode::Live {
            *mode = Mode::Parking(ParkReason::TooManyErrors);
        }
        self.unwritten.fetch_add(1, Ordering::AcqRel);
    }

    /// A live hook whose backlog is past its bound (the caller checked,
    /// with [`past_bound`](crate::delivery::parking::past_bound)) parks
    /// from now on. Returns true when it switched: start its replayer.
    pub async fn park_for_backlog(&self) -> bool {
        let mut mode = self.mode.lock().await;
        if *mode != Mode::Live {
            return false;
        }
        self.log_backlog_parking();
        *mode = Mode::Parking(ParkReason::Backlog);
        // Retrying events look again: they park too.
        self.changed.notify_waiters();
        true
    }

    fn log_backlog_parking(&self) {
        tracing::warn!(
            webhook_id = self.id,
            backlog = self.in_flight(),
            behind_secs = self.backlog_age().as_secs(),
            "backlog past its bound: parking this hook's events until it catches up"
        );
    }

    /// The hook parks its events from now on, for `reason` (a trip or a
    /// pause seen by a running event, or parked events found at start). A
    /// hook already parking keeps its first reason.
    pub async fn park(&self, reason: ParkReason) {
        let mut mode = self.mode.lock().await;
        if *mode == Mode::Live {
            *mode = Mode::Parking(reason);
            self.changed.notify_waiters();
        }
    }

    /// The replayer delivered everything parked: the hook goes live when
    /// nothing is still queued (a running job may be about to park
    /// itself), nothing is on its way to the table, it is neither tripped
    /// nor paused, and `parked_count` finds no parked event (read under
    /// the mode lock, so no event can be parked meanwhile).
    pub async fn go_live_if_caught_up<F>(&self, parked_count: F) -> anyhow::Result<bool>
    where
        F: Future<Output = anyhow::Result<i64>>,
    {
        let mut mode = self.mode.lock().await;
        if self.in_flight() == 0
            && self.unwritten.load(Ordering::Acquire) == 0
            && !self.is_tripped()
            && !self.is_paused()
            && parked_count.await? == 0
        {
            *mode = Mode::Live;
            return Ok(true);
        }
        Ok(false)
    }

    /// The hook is Active (again): a trip, a 410 or its parked limit is
    /// cleared. Returns whether it has parked events to replay.
    pub async fn activate(&self) -> bool {
        let parked = matches!(*self.mode.lock().await, Mode::Parking(_));
        self.parked_limit_reached.store(false, Ordering::Release);
        if self.is_tripped() || self.is_gone() {
            self.tripped.store(false, Ordering::Release);
            self.gone.store(false, Ordering::Release);
            self.consecutive_errors.store(0, Ordering::Release);
        }
        parked
    }

    /// A delivered attempt: the error count starts over.
    pub fn record_success(&self) {
        self.consecutive_errors.store(0, Ordering::Release);
    }

    /// A failed attempt; returns the errors in a row now.
    pub fn record_failure(&self) -> u32 {
        self.consecutive_errors.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The stored count of errors in a row, at start.
    pub fn restore_errors(&self, consecutive_errors: u32) {
        self.consecutive_errors
            .store(consecutive_errors, Ordering::Release);
    }

    /// Too many errors in a row: queued events park instead of
    /// attempting. Returns true the first time (say it once).
    pub fn trip(&self) -> bool {
        let first = !self.tripped.swap(true, Ordering::AcqRel);
        self.changed.notify_waiters();
        first
    }

    /// The target answered 410 Gone: queued events are dropped. Returns
    /// true the first time (say it once).
    pub fn mark_gone(&self) -> bool {
        let first = !self.gone.swap(true, Ordering::AcqRel);
        self.changed.notify_waiters();
        first
    }

    /// The hook reached its parked limit and is Stopped: its events are
    /// dropped until it is set Active again.
    pub fn stop_at_parked_limit(&self) {
        self.parked_limit_reached.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    pub fn parked_limit_reached(&self) -> bool {
        self.parked_limit_reached.load(Ordering::Acquire)
    }

    /// Whether the hook parks for its backlog, may replay, and has no
    /// replayer: one must start. (Parked for too many errors or a pause, a
    /// hook waits for its activation or its resume instead.)
    pub async fn wants_replayer(&self) -> bool {
        !self.replaying.load(Ordering::Acquire)
            && self.may_replay()
            && self.parking().await == Some(ParkReason::Backlog)
    }

    /// Claim the hook's one replayer: true when none runs, and the caller
    /// must start it.
    pub fn claim_replayer(&self) -> bool {
        !self.replaying.swap(true, Ordering::AcqRel)
    }

    /// The replayer is ending. Returns true when it must go on instead
    /// (the hook was re-activated while it finished and still parks); it
    /// then holds the claim again.
    pub async fn replayer_ending(&self) -> bool {
        self.replaying.store(false, Ordering::Release);
        self.may_replay() && self.parking().await.is_some() && self.claim_replayer()
    }

    // -------------------------------------------------------- counting

    /// An event entered the hook's queue.
    pub fn queued(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// An event left the hook's queue (done, parked or dropped).
    pub fn dequeued(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Jobs queued in or running from the hook's queue.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A request to the target starts; it counts as in flight until the
    /// guard is dropped (answered, failed or cancelled).
    pub fn request_started(&self) -> RequestInFlight<'_> {
        self.requests.fetch_add(1, Ordering::AcqRel);
        RequestInFlight(self)
    }

    /// Requests under way to the hook's target.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// An event admitted for parking was written to the table, or will
    /// never be (the writer stopped): it is no longer on its way.
    pub fn park_settled(&self) {
        self.unwritten.fetch_sub(1, Ordering::AcqRel);
    }

    fn tally(&self) -> MutexGuard<'_, ParkedTally> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Parked events in `delivery` as this process counts them (-1: not
    /// counted yet).
    pub fn parked(&self) -> i64 {
        self.tally().events
    }

    /// The bytes of the hook's parked events as this process counts them
    /// (meaningful once [`parked`](Self::parked) is counted).
    pub fn parked_bytes(&self) -> i64 {
        self.tally().bytes
    }

    /// The table's own count of the hook's parked events and bytes.
    pub fn set_parked(&self, parked: ParkedSize) {
        *self.tally() = ParkedTally {
            events: parked.events,
            bytes: parked.bytes,
            // Unknown which version the table's last event has: the next
            // event counts its Properties (one copy too many at most).
            properties: None,
        };
    }

    /// Room for the events of `sizes`, in order, under `limits`: returns
    /// the bytes each granted event counts (all, the first some, or none)
    /// and the bound reached, counted as parked at once, so parking never
    /// passes a bound, however many write at a time. An event's
    /// Properties count only when its version differs from the last
    /// parked event's (they are stored once per version). The count must
    /// be known ([`set_parked`](Self::set_parked)).
    pub fn reserve_parked(&self, sizes: &[ParkSize], limits: ParkedLimits) -> Reservation {
        let mut tally = self.tally();
        let mut reserved = Reservation::default();
        if tally.events < 0 {
            return reserved;
        }
        for size in sizes {
            if tally.events >= limits.events {
                break;
            }
            let bytes = match size.properties {
                Some((digest, len)) if tally.properties != Some(digest) => size.body + len,
                _ => size.body,
            };
            if tally.bytes.saturating_add(bytes) > limits.bytes {
                reserved.full = Some(ParkedBound::Bytes);
                return reserved;
            }
            tally.events += 1;
            tally.bytes += bytes;
            tally.properties = size.properties.map(|(digest, _)| digest);
            reserved.counted.push(bytes);
        }
        if tally.events >= limits.events {
            reserved.full = Some(ParkedBound::Events);
        }
        reserved
    }

    /// `removed` more parked events, counting `bytes`, left `delivery`
    /// (delivered, or past their retention).
    pub fn parked_removed(&self, removed: usize, bytes: i64) {
        let mut tally = self.tally();
        if tally.events < 0 {
            return;
        }
        tally.events = (tally.events - removed as i64).max(0);
        tally.bytes = (tally.bytes - bytes).max(0);
        if tally.events == 0 {
            // No event holds a stored copy of Properties any more.
            tally.bytes = 0;
            tally.properties = None;
        }
    }

    /// When the oldest event still queued or running was queued
    /// ([`epoch_millis`]; 0: none).
    pub fn set_oldest_queued(&self, at: u64) {
        self.oldest_queued.store(at, Ordering::Release);
    }

    /// How long the oldest event still queued for this hook has waited.
    pub fn backlog_age(&self) -> Duration {
        match self.oldest_queued.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            at => Duration::from_millis(epoch_millis().saturating_sub(at)),
        }
    }

    // ----------------------------------------------- pace and capacity

    /// The target asked for a pause: no request of the hook starts for
    /// `wait`.
    pub fn hold_for(&self, wait: Duration) {
        let until = epoch_millis().saturating_add(wait.as_millis() as u64);
        self.held_until.fetch_max(until, Ordering::AcqRel);
    }

    /// Wait until the hook may send its next request: past a hold the
    /// target asked for, and at the hook's rate. Returns early (false)
    /// when something changed meanwhile, so the caller looks again.
    pub async fn wait_turn(&self) -> bool {
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
                    _ = self.changed.notified() => true,
                };
                return !woken || !self.must_stop_sending();
            } else {
                return true;
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // The caller looks again (a trip, a stop, a pause, the hook
                // parking), then waits again if nothing of that happened.
                _ = self.changed.notified() => return false,
            }
        }
    }

    fn concurrency(&self) -> MutexGuard<'_, ConcurrencyLimit> {
        self.concurrency.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests the hook may have in flight now.
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency().limit()
    }

    /// The queue looked at its waiting events: `held_back` of them (at
    /// most) could have started but for the limit.
    pub fn held_back(&self, held_back: usize) {
        self.concurrency().looked(held_back);
    }

    /// What an attempt's outcome says about the target's capacity.
    pub fn record_attempt(&self, signal: Signal) {
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
    pub fn set_concurrency(&self, limit: ConcurrencyLimit) {
        *self.concurrency() = limit;
    }
}

/// Whether two rows of a hook send to the same origin (scheme, host,
/// port): the same servers, reached over the same connections. A new path
/// there keeps the hook's concurrency limit: usually the same service
/// behind a renamed endpoint, and should its latency differ, the limit
/// finds out within a few round trips; another origin is another server,
/// whose load the old one's round trips say nothing of.
fn same_origin(old: &Webhook, new: &Webhook) -> bool {
    let (old, new) = (&old.target_url, &new.target_url);
    old.scheme() == new.scheme()
        && old.host() == new.host()
        && old.port_or_known_default() == new.port_or_known_default()
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
pub fn epoch_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_hook_whose_mode_lock_is_held_counts_as_live() {
        let hook = crate::delivery::hook::tests::hook(WebhookState::Active);
        let runtime = HookRuntime::new(hook, ConcurrencyLimit::fixed(4), None);
        // Held by the dispatcher admitting an event: the queue must keep
        // to the concurrency limit, not start everything it holds.
        let _admitting = runtime.mode.lock().await;
        assert!(!runtime.is_parking_now());
    }
}
