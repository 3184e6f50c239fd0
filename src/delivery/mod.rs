//! Delivery: signed POSTs to the hooks, with retries, parking and order.
//!
//! Each hook has its own lanes (tasks); an event goes to the lane its row
//! hashes to, so events of one row keep commit order while other rows go
//! concurrently, and a slow hook only ever waits on itself. Request bodies
//! in flight are bounded by a byte budget: when it is spent the reader
//! waits, which stops reading WAL (back-pressure) instead of growing.
//!
//! A hook whose target keeps failing (`max_consecutive_errors`) or whose
//! backlog passes its bound is switched to parking: its events go to the
//! `delivery` table so the slot can move on, and a replayer delivers them
//! in commit order once the hook is Active and its lanes are empty. While a
//! hook has parked events, its new events are parked behind them.

pub mod http;
pub mod replay;
pub mod request;
pub mod signing;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering as AtomicOrdering,
};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt;
use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

pub use self::http::{attempt, check_target, http_client, is_public, Attempt, DeliveryOutcome};
use crate::checkpoint::Ticket;
use crate::config::{DeliveryConfig, Live, Ordering};
use crate::pgoutput::Lsn;
use crate::registry::{Webhook, WebhookState};
use crate::store::{self, ParkedEvent, UsageBook, LAST_ERROR_MAX_CHARS};

/// How an event must be ordered against others of the same hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderScope {
    /// After earlier events with the same key.
    Key,
    /// Also after earlier events of a second key (an UPDATE that changed
    /// the row's key orders after both the old and the new key).
    AlsoAfter(String),
    /// After every earlier event of the hook, and before every later one
    /// (TRUNCATE is a barrier for its table).
    Barrier,
}

/// One event addressed to one hook.
pub struct Job {
    pub hook: Arc<Webhook>,
    pub event: String,
    pub event_id: Uuid,
    pub ordering_key: String,
    pub scope: OrderScope,
    pub body: Bytes,
    /// Where the event stands in commit order, kept when it is parked.
    pub commit_lsn: Lsn,
    pub change_index: u32,
    pub ticket: Ticket,
}

/// Why a hook's events are parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    TooManyErrors,
    Backlog,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::TooManyErrors => "TooManyErrors",
            ParkReason::Backlog => "backlog",
        }
    }
}

/// Whether new events of a hook go to its lanes or to `delivery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live,
    Parking(ParkReason),
}

/// Shared state of one hook: lanes, replayer and reader all see it.
pub struct HookControl {
    pub id: i32,
    /// The hook as it stands now: attempts use its URL, headers and secret
    /// (a DBA's fix applies at once); bodies keep the event's time.
    current: RwLock<Arc<Webhook>>,
    consecutive_errors: AtomicU32,
    /// Jobs queued in or running on the lanes.
    in_flight: AtomicUsize,
    /// Per lane: when the job it is working on was queued (milliseconds
    /// since [`epoch`]), 0 when idle. Lanes are FIFO, so the oldest of these
    /// is the age of the hook's backlog.
    lane_heads: Vec<AtomicU64>,
    /// Tripped by too many errors: lanes park instead of attempting.
    tripped: AtomicBool,
    /// Answered 410: lanes drop instead of attempting.
    gone: AtomicBool,
    trip_notify: Notify,
    /// Held while parking an event or switching back to Live, so the two
    /// never interleave.
    mode: tokio::sync::Mutex<Mode>,
    replaying: AtomicBool,
}

impl HookControl {
    fn new(hook: Arc<Webhook>, lanes: usize, mode: Mode) -> HookControl {
        HookControl {
            id: hook.id,
            current: RwLock::new(hook),
            consecutive_errors: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            lane_heads: (0..lanes).map(|_| AtomicU64::new(0)).collect(),
            tripped: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            trip_notify: Notify::new(),
            mode: tokio::sync::Mutex::new(mode),
            replaying: AtomicBool::new(false),
        }
    }

    pub fn current(&self) -> Arc<Webhook> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set_current(&self, hook: Arc<Webhook>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(AtomicOrdering::Acquire)
    }

    fn is_tripped(&self) -> bool {
        self.tripped.load(AtomicOrdering::Acquire)
    }

    /// How long the oldest event still queued for this hook has waited.
    fn backlog_age(&self) -> Duration {
        let now = epoch_millis();
        self.lane_heads
            .iter()
            .map(|h| h.load(AtomicOrdering::Acquire))
            .filter(|&at| at != 0)
            .min()
            .map_or(Duration::ZERO, |at| {
                Duration::from_millis(now.saturating_sub(at))
            })
    }
}

/// Milliseconds since the process's first use of delivery (never 0).
fn epoch_millis() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// A hook this far behind, with `backlog_limit` events queued, is not
/// keeping up: its new events are parked. A hook that is merely catching
/// up on a burst stays below it.
const BEHIND: Duration = Duration::from_secs(10);

/// Everything a lane or the replayer needs.
#[derive(Clone)]
pub struct DeliveryContext {
    pub http: reqwest::Client,
    /// Delivery settings; SIGHUP may replace them.
    pub config: Live<DeliveryConfig>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub usage: UsageBook,
    pub sql: Arc<tokio_postgres::Client>,
    pub schema: Arc<str>,
}

enum LaneItem {
    Job(Box<Queued>),
    /// Holds the lane until another lane's job is done.
    Barrier {
        reached: oneshot::Sender<()>,
        release: watch::Receiver<bool>,
    },
}

struct Queued {
    job: Job,
    /// [`epoch_millis`] when it was queued.
    enqueued: u64,
    /// Barriers in other lanes that must be reached first.
    wait_for: Vec<oneshot::Receiver<()>>,
    release: Option<watch::Sender<bool>>,
    _budget: OwnedSemaphorePermit,
}

struct HookLanes {
    control: Arc<HookControl>,
    lanes: Vec<mpsc::UnboundedSender<LaneItem>>,
}

/// Routes jobs to the hooks' lanes, parks, and runs replayers.
pub struct Dispatcher {
    ctx: DeliveryContext,
    budget: Arc<Semaphore>,
    budget_max: u32,
    hooks: HashMap<i32, HookLanes>,
    tasks: JoinSet<()>,
    /// Hooks found with parked events at start that have no control yet
    /// (their row was missing or invalid then): they start out parking, so
    /// their live events queue behind the parked ones.
    parked_at_start: std::collections::HashSet<i32>,
}

impl Dispatcher {
    pub fn new(ctx: DeliveryContext) -> Dispatcher {
        let budget_max = u32::try_from(ctx.config.get().max_in_flight_bytes).unwrap_or(u32::MAX);
        Dispatcher {
            budget: Arc::new(Semaphore::new(budget_max as usize)),
            budget_max,
            ctx,
            hooks: HashMap::new(),
            tasks: JoinSet::new(),
            parked_at_start: std::collections::HashSet::new(),
        }
    }

    /// The control of a hook, created with its lanes on first use.
    pub fn control(&mut self, hook: &Arc<Webhook>) -> Arc<HookControl> {
        let entry = self.hooks.entry(hook.id).or_insert_with(|| {
            let config = self.ctx.config.get();
            let lane_count = match config.ordering {
                Ordering::Webhook => 1,
                Ordering::Row => config.concurrency_per_webhook,
            };
            let mode = if self.parked_at_start.remove(&hook.id) {
                Mode::Parking(ParkReason::Backlog)
            } else {
                Mode::Live
            };
            let control = Arc::new(HookControl::new(Arc::clone(hook), lane_count, mode));
            let lanes = (0..lane_count)
                .map(|lane| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    self.tasks
                        .spawn(run_lane(rx, lane, self.ctx.clone(), Arc::clone(&control)));
                    tx
                })
                .collect();
            HookLanes { control, lanes }
        });
        entry.control.set_current(Arc::clone(hook));
        Arc::clone(&entry.control)
    }

    /// Hooks with parked events at start whose rows were not usable then.
    pub fn parked_without_hook(&mut self, ids: impl IntoIterator<Item = i32>) {
        self.parked_at_start.extend(ids);
    }

    /// Set up a hook found with parked events at start, or whose stored
    /// consecutive error count is known.
    pub async fn restore(&mut self, hook: &Arc<Webhook>, parked: bool, consecutive_errors: u32) {
        let control = self.control(hook);
        control
            .consecutive_errors
            .store(consecutive_errors, AtomicOrdering::Release);
        if parked {
            let reason = if hook.state == WebhookState::TooManyErrors {
                ParkReason::TooManyErrors
            } else {
                ParkReason::Backlog
            };
            *control.mode.lock().await = Mode::Parking(reason);
        }
        self.hook_changed(hook).await;
    }

    /// The registry changed this hook: resume delivery when it is Active
    /// with parked events, and clear a trip or a 410 once re-activated.
    pub async fn hook_changed(&mut self, hook: &Arc<Webhook>) {
        let control = self.control(hook);
        if hook.state != WebhookState::Active {
            return;
        }
        let parked = matches!(*control.mode.lock().await, Mode::Parking(_));
        let was_stopped = control.is_tripped() || control.gone.load(AtomicOrdering::Acquire);
        if was_stopped {
            control.tripped.store(false, AtomicOrdering::Release);
            control.gone.store(false, AtomicOrdering::Release);
            control.consecutive_errors.store(0, AtomicOrdering::Release);
        }
        if parked && !control.replaying.swap(true, AtomicOrdering::AcqRel) {
            tracing::info!(webhook_id = hook.id, "delivering parked events");
            self.tasks
                .spawn(replay::run_replayer(self.ctx.clone(), control));
        }
    }

    /// Route one event of an Active hook: to its lanes, or to `delivery`
    /// when the hook is parking or its backlog passed the bound. Waits
    /// while the in-flight byte budget is spent.
    pub async fn dispatch(&mut self, job: Job) -> anyhow::Result<()> {
        let control = self.control(&job.hook);
        // A body larger than the whole budget still goes, alone.
        let cost = u32::try_from(job.body.len().max(1))
            .unwrap_or(u32::MAX)
            .min(self.budget_max);
        let mut budget_spent = false;
        let permit = loop {
            {
                let mut mode = control.mode.lock().await;
                let hogging = budget_spent && self.holds_most_of_the_budget(&control);
                if *mode == Mode::Live && past_bound(&self.ctx.config.get(), &control, hogging) {
                    start_parking(&mut self.tasks, &self.ctx, &control, &mut mode);
                }
                if let Mode::Parking(reason) = *mode {
                    park_job(&self.ctx, &job, reason, 0, None).await?;
                    job.ticket.settle();
                    return Ok(());
                }
            }
            match Arc::clone(&self.budget).try_acquire_many_owned(cost) {
                Ok(permit) => break permit,
                Err(tokio::sync::TryAcquireError::NoPermits) => {}
                Err(tokio::sync::TryAcquireError::Closed) => {
                    unreachable!("the budget semaphore is never closed")
                }
            }
            // The budget is spent. With other hooks waiting, the hooks that
            // are behind and holding it are parked, so a slow target never
            // stalls the others (their queued jobs park and free it); a
            // hook alone just applies back-pressure.
            if self.hooks.len() > 1 {
                budget_spent = true;
                self.park_laggards().await;
            }
            if let Ok(permit) = tokio::time::timeout(
                Duration::from_secs(1),
                Arc::clone(&self.budget).acquire_many_owned(cost),
            )
            .await
            {
                break permit.expect("the budget semaphore is never closed");
            }
        };
        let Some(hook_lanes) = self.hooks.get(&job.hook.id) else {
            unreachable!("control() created the lanes");
        };
        let lanes = &hook_lanes.lanes;
        let lane_of = |key: &str| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key.hash(&mut hasher);
            (hasher.finish() % lanes.len() as u64) as usize
        };
        let target = lane_of(&job.ordering_key);
        let others: Vec<usize> = match &job.scope {
            OrderScope::Key => Vec::new(),
            OrderScope::AlsoAfter(key) => {
                let other = lane_of(key);
                if other == target {
                    Vec::new()
                } else {
                    vec![other]
                }
            }
            OrderScope::Barrier => (0..lanes.len()).filter(|&l| l != target).collect(),
        };
        let (release_tx, release_rx) = watch::channel(false);
        let mut wait_for = Vec::with_capacity(others.len());
        for lane in others {
            let (reached_tx, reached_rx) = oneshot::channel();
            let _ = lanes[lane].send(LaneItem::Barrier {
                reached: reached_tx,
                release: release_rx.clone(),
            });
            wait_for.push(reached_rx);
        }
        control.in_flight.fetch_add(1, AtomicOrdering::AcqRel);
        let queued = Queued {
            enqueued: epoch_millis(),
            release: (!wait_for.is_empty()).then_some(release_tx),
            wait_for,
            job,
            _budget: permit,
        };
        if lanes[target].send(LaneItem::Job(Box::new(queued))).is_err() {
            // Lanes end only when their sender is dropped; the ticket stays
            // unsettled, so the event is read again after a restart.
            tracing::error!(webhook_id = control.id, "delivery lane ended unexpectedly");
        }
        Ok(())
    }

    /// Whether a hook has more queued events than all others together:
    /// hooks that merely share a burst evenly are never parked for it.
    fn holds_most_of_the_budget(&self, control: &HookControl) -> bool {
        let total: usize = self.hooks.values().map(|h| h.control.in_flight()).sum();
        control.in_flight() * 2 > total
    }

    /// With the byte budget spent and other hooks waiting: park the live
    /// hook that is behind and holds most of it.
    async fn park_laggards(&mut self) {
        let config = self.ctx.config.get();
        for hook_lanes in self.hooks.values() {
            let control = &hook_lanes.control;
            if !self.holds_most_of_the_budget(control) {
                continue;
            }
            let mut mode = control.mode.lock().await;
            if *mode == Mode::Live && past_bound(&config, control, true) {
                start_parking(&mut self.tasks, &self.ctx, control, &mut mode);
            }
        }
    }

    /// Park an event of a hook in state 3 (TooManyErrors).
    pub async fn park(&mut self, job: Job) -> anyhow::Result<()> {
        let control = self.control(&job.hook);
        let mut mode = control.mode.lock().await;
        if *mode == Mode::Live {
            *mode = Mode::Parking(ParkReason::TooManyErrors);
        }
        park_job(&self.ctx, &job, ParkReason::TooManyErrors, 0, None).await?;
        job.ticket.settle();
        Ok(())
    }

    /// New delivery settings from a reloaded config (SIGHUP).
    pub fn set_config(&self, config: DeliveryConfig) {
        self.ctx.config.set(config);
    }

    /// Bytes of request bodies currently queued or in flight.
    pub fn in_flight_bytes(&self) -> u64 {
        u64::from(self.budget_max) - self.budget.available_permits() as u64
    }

    /// Stop accepting jobs and wait up to `timeout` for the queued ones.
    /// Whatever is unfinished then stays unconfirmed and is delivered again
    /// after the next start.
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        self.hooks.clear();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        let finished = tokio::time::timeout(timeout, all_done).await.is_ok();
        if !finished {
            self.tasks.abort_all();
        }
        finished
    }
}

/// Whether a hook's backlog is past its bound: its oldest queued event has
/// waited `backlog_max_age`, or it is more than [`BEHIND`] behind while it
/// has `backlog_limit` events queued or holds most of a spent byte budget
/// that other hooks wait for (`hogging`).
fn past_bound(config: &DeliveryConfig, control: &HookControl, hogging: bool) -> bool {
    let age = control.backlog_age();
    age >= config.backlog_max_age
        || (age >= BEHIND && (hogging || control.in_flight() >= config.backlog_limit))
}

/// Switch a live hook to parking for its backlog, and start its replayer.
fn start_parking(
    tasks: &mut JoinSet<()>,
    ctx: &DeliveryContext,
    control: &Arc<HookControl>,
    mode: &mut Mode,
) {
    tracing::warn!(
        webhook_id = control.id,
        backlog = control.in_flight(),
        behind_secs = control.backlog_age().as_secs(),
        "backlog past its bound: parking this hook's events until it catches up"
    );
    *mode = Mode::Parking(ParkReason::Backlog);
    if !control.replaying.swap(true, AtomicOrdering::AcqRel) {
        tasks.spawn(replay::run_replayer(ctx.clone(), Arc::clone(control)));
    }
}

async fn park_job(
    ctx: &DeliveryContext,
    job: &Job,
    reason: ParkReason,
    attempts: i32,
    last_error: Option<&str>,
) -> anyhow::Result<()> {
    ctx.metrics.parked_events.inc();
    let last_error = last_error.map(|e| crate::store::truncate_chars(e, LAST_ERROR_MAX_CHARS));
    let last_error = last_error.as_deref();
    store::park(
        &ctx.sql,
        &ctx.schema,
        &ParkedEvent {
            webhook_id: job.hook.id,
            event_id: job.event_id,
            event: &job.event,
            ordering_key: &job.ordering_key,
            body: &job.body,
            reason: reason.as_str(),
            attempts,
            last_error,
            commit_lsn: job.commit_lsn,
            change_index: job.change_index,
        },
    )
    .await
}

async fn run_lane(
    mut rx: mpsc::UnboundedReceiver<LaneItem>,
    lane: usize,
    ctx: DeliveryContext,
    control: Arc<HookControl>,
) {
    while let Some(item) = rx.recv().await {
        match item {
            LaneItem::Barrier {
                reached,
                mut release,
            } => {
                let _ = reached.send(());
                // A dropped sender also releases: the job is over.
                let _ = release.wait_for(|done| *done).await;
            }
            LaneItem::Job(queued) => {
                let Queued {
                    job,
                    enqueued,
                    wait_for,
                    release,
                    _budget,
                } = *queued;
                control.lane_heads[lane].store(enqueued, AtomicOrdering::Release);
                for barrier in wait_for {
                    let _ = barrier.await;
                }
                run_job(&ctx, &control, job).await;
                if let Some(release) = release {
                    let _ = release.send(true);
                }
                control.lane_heads[lane].store(0, AtomicOrdering::Release);
                control.in_flight.fetch_sub(1, AtomicOrdering::AcqRel);
            }
        }
    }
}

/// Deliver, park or drop one job, then settle its ticket. If parking fails
/// (database unreachable) the ticket is left unsettled: the event stays
/// unconfirmed and is read again after a restart, never lost.
async fn run_job(ctx: &DeliveryContext, control: &HookControl, job: Job) {
    // A hook that went to parking while this job waited in its lane parks
    // it too, so its queue frees the byte budget at once; the replayer
    // delivers it in commit order once the lanes are empty.
    let parking = match *control.mode.lock().await {
        Mode::Parking(reason) => Some(reason),
        Mode::Live => None,
    };
    if let Some(reason) = parking {
        if park_until_done(ctx, control, &job, reason, 0, None).await {
            job.ticket.settle();
        }
        return;
    }
    let outcome = deliver(ctx, control, &job.event, job.event_id, &job.body, 0).await;
    match outcome {
        Settled::Delivered | Settled::Dropped => job.ticket.settle(),
        // Left unsettled: read again by the next session.
        Settled::Abandoned => {}
        Settled::Tripped { attempts, error } => {
            {
                // From now on the reader parks this hook's events too, and
                // re-activation starts the replayer.
                let mut mode = control.mode.lock().await;
                if *mode == Mode::Live {
                    *mode = Mode::Parking(ParkReason::TooManyErrors);
                }
            }
            if park_until_done(
                ctx,
                control,
                &job,
                ParkReason::TooManyErrors,
                attempts as i32,
                error.as_deref(),
            )
            .await
            {
                job.ticket.settle();
            }
        }
    }
}

/// Park, retrying until the database takes it: the lane waits rather than
/// leave its transaction unconfirmed for the rest of the session. If the
/// session ends meanwhile the task is dropped with the ticket unsettled, and
/// the event is read again after the restart.
async fn park_until_done(
    ctx: &DeliveryContext,
    control: &HookControl,
    job: &Job,
    reason: ParkReason,
    attempts: i32,
    error: Option<&str>,
) -> bool {
    let mut wait = Duration::from_secs(1);
    while let Err(e) = park_job(ctx, job, reason, attempts, error).await {
        if ctx.sql.is_closed() {
            // The session is over; the event stays unconfirmed and is read
            // again by the next one.
            return false;
        }
        tracing::error!(
            webhook_id = control.id,
            event_id = %job.event_id,
            "could not park the event, trying again in {wait:?}: {e:#}"
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
    true
}

/// How delivering one event ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    /// 410 Gone (the hook is now Stopped): dropped by the state rules.
    Dropped,
    /// The SQL session closed before the outcome could be stored: the
    /// event stays unsettled.
    Abandoned,
    /// The hook tripped (too many consecutive errors): park it.
    Tripped {
        attempts: u32,
        error: Option<String>,
    },
}

/// Attempt until delivered, gone, or the hook trips. `retry` is how many
/// attempts the event had before (parked events keep counting).
pub async fn deliver(
    ctx: &DeliveryContext,
    control: &HookControl,
    event: &str,
    event_id: Uuid,
    body: &Bytes,
    mut retry: u32,
) -> Settled {
    let id = control.id;
    let mut last_error = None;
    let first = retry;
    loop {
        if control.gone.load(AtomicOrdering::Acquire) {
            return Settled::Dropped;
        }
        if control.is_tripped() {
            return Settled::Tripped {
                attempts: retry,
                error: last_error,
            };
        }
        let hook = control.current();
        let config = ctx.config.get();
        let started = Instant::now();
        let outcome = attempt(
            &ctx.http,
            &config,
            &Attempt {
                hook: &hook,
                event,
                event_id,
                body,
                retry,
            },
        )
        .await;
        retry = retry.saturating_add(1);
        let kind = match &outcome {
            DeliveryOutcome::Delivered(_) => "delivered",
            DeliveryOutcome::Gone => "gone",
            DeliveryOutcome::Failed { .. } => "failed",
        };
        ctx.metrics.delivery(kind, started.elapsed());
        match outcome {
            DeliveryOutcome::Delivered(_) => {
                control.consecutive_errors.store(0, AtomicOrdering::Release);
                ctx.usage.success(id);
                return Settled::Delivered;
            }
            DeliveryOutcome::Gone => {
                ctx.usage
                    .failure(id, "HTTP 410 Gone: the receiver asked to stop this hook");
                // The Stopped state is stored before any event is dropped
                // for it, so a drop is never without its reason.
                while let Err(e) =
                    store::set_state(&ctx.sql, &ctx.schema, id, WebhookState::Stopped).await
                {
                    if ctx.sql.is_closed() {
                        return Settled::Abandoned;
                    }
                    tracing::error!(
                        webhook_id = id,
                        "410 Gone, but storing state Stopped failed; trying again: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if !control.gone.swap(true, AtomicOrdering::AcqRel) {
                    tracing::warn!(webhook_id = id, url = %hook.target_url,
                        "target answered 410 Gone; webhook state set to Stopped (2)");
                }
                control.trip_notify.notify_waiters();
                return Settled::Dropped;
            }
            DeliveryOutcome::Failed { error, retry_after } => {
                ctx.usage.failure(id, &error);
                let errors = control
                    .consecutive_errors
                    .fetch_add(1, AtomicOrdering::AcqRel)
                    + 1;
                if errors >= config.max_consecutive_errors {
                    if !control.tripped.swap(true, AtomicOrdering::AcqRel) {
                        ctx.usage.set_state(id, WebhookState::TooManyErrors);
                        tracing::warn!(webhook_id = id, url = %hook.target_url, errors,
                            "too many consecutive errors: webhook state set to TooManyErrors (3), \
                             its events are parked until it is set Active again: {}",
                            first_line(&error));
                    }
                    control.trip_notify.notify_waiters();
                    return Settled::Tripped {
                        attempts: retry,
                        error: Some(error),
                    };
                }
                let wait = backoff(retry - first, config.max_backoff);
                let wait = retry_after
                    .map_or(wait, |ra| ra.max(wait))
                    .min(config.max_backoff);
                tracing::warn!(webhook_id = id, event_id = %event_id, retry = retry - 1,
                    "delivery failed, next attempt in {wait:?}: {}", first_line(&error));
                last_error = Some(error);
                // Another lane tripping or a 410 ends the wait early.
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = control.trip_notify.notified() => {}
                }
            }
        }
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Wait before retry `n` (1-based) of one event. Each cycle is three
/// attempts at 0 s, 1 s and 4 s from its start, as SuperOffice does; cycles
/// after the first start after a growing, jittered pause.
pub fn backoff(n: u32, max: Duration) -> Duration {
    match n % 3 {
        1 => Duration::from_secs(1),
        2 => Duration::from_secs(3),
        _ => {
            let cycle = n / 3; // 1 for the pause before the second cycle
            let base = Duration::from_secs(10).saturating_mul(1u32 << cycle.min(16));
            let jitter = rand::rng().random_range(0.8..1.2);
            base.mul_f64(jitter).min(max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_schedule() {
        let max = Duration::from_secs(300);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(2, max), Duration::from_secs(3));
        let pause = backoff(3, max);
        assert!(pause >= Duration::from_secs(16) && pause <= Duration::from_secs(24));
        assert_eq!(backoff(4, max), Duration::from_secs(1));
        assert!(backoff(300, max) <= max);
    }
}
