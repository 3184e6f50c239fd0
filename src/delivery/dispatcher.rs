//! The dispatcher: takes each job from the intake and routes it to its
//! hook's queue or to parking, holds the in-flight byte budget, follows
//! the registry's changes to the hooks, and starts the replayers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::context::DeliveryContext;
use super::hook::concurrency::ConcurrencyLimit;
use super::hook::order::order_keys;
use super::hook::settings::HookSettings;
use super::hook::{epoch_millis, Admission, HookRuntime, ParkReason};
use super::job::Job;
use super::live::{run_queue, Queued, SharedInFlight};
use super::parking::{past_bound, run_replayer, ParkQueue};
use super::storage::ParkedSize;
use crate::config::{Concurrency, DeliveryConfig};
use crate::errors::DeliveryTaskFailed;
use crate::metrics::HookGauges;
use crate::registry::{Webhook, WebhookState};

/// Memory a queued job takes besides its body: the job and its strings,
/// its queue entry and its ticket.
const JOB_OVERHEAD: usize = 512;

struct HookQueue {
    runtime: Arc<HookRuntime>,
    queue: mpsc::UnboundedSender<Queued>,
}

/// Routes jobs to the hooks' queues, parks, and runs replayers.
pub struct Dispatcher {
    ctx: DeliveryContext,
    /// Bytes of request bodies that may be queued or in flight.
    budget: Arc<Semaphore>,
    budget_max: u32,
    /// Requests in flight beyond each hook's first, shared by all hooks.
    shared_in_flight: SharedInFlight,
    hooks: HashMap<i32, HookQueue>,
    /// Queues, replayers and the parking writer.
    tasks: JoinSet<()>,
    /// Parked events go to `delivery` through it, off the reader's path.
    park_queue: ParkQueue,
    /// Hooks with parked events and no queue (their row was missing or
    /// invalid at start, or was removed since): when one comes back it
    /// starts out parking, so its live events queue behind the parked ones.
    parked_at_start: HashSet<i32>,
    /// `webhook_control` rows by webhook_id, also of hooks without a
    /// queue yet, so a queue starts with its hook's settings.
    settings: HashMap<i32, Arc<HookSettings>>,
}

impl Dispatcher {
    pub fn new(ctx: DeliveryContext) -> Dispatcher {
        let budget_max = u32::try_from(ctx.config.get().max_in_flight_bytes).unwrap_or(u32::MAX);
        let mut tasks = JoinSet::new();
        let park_queue = ParkQueue::start(ctx.clone(), &mut tasks);
        Dispatcher {
            budget: Arc::new(Semaphore::new(budget_max as usize)),
            budget_max,
            shared_in_flight: SharedInFlight::new(ctx.config.get().max_shared_in_flight),
            ctx,
            hooks: HashMap::new(),
            tasks,
            park_queue,
            parked_at_start: HashSet::new(),
            settings: HashMap::new(),
        }
    }

    /// The runtime state of a hook, updated to the hook as it stands now;
    /// its queue is started the first time a hook is seen.
    pub fn ensure_queue(&mut self, hook: &Arc<Webhook>) -> Arc<HookRuntime> {
        let entry = self.hooks.entry(hook.id).or_insert_with(|| {
            let config = self.ctx.config.get();
            let parked = self
                .parked_at_start
                .remove(&hook.id)
                .then_some(ParkReason::Backlog);
            let runtime = Arc::new(HookRuntime::new(
                Arc::clone(hook),
                concurrency_limit(&config),
                parked,
            ));
            if let Some(settings) = self.settings.get(&hook.id) {
                runtime.set_settings(Arc::clone(settings));
            }
            let (queue, rx) = mpsc::unbounded_channel();
            self.tasks.spawn(run_queue(
                rx,
                self.ctx.clone(),
                Arc::clone(&runtime),
                self.shared_in_flight.clone(),
            ));
            HookQueue { runtime, queue }
        });
        entry.runtime.set_current(Arc::clone(hook));
        Arc::clone(&entry.runtime)
    }

    /// Hooks with parked events at start whose rows were not usable then.
    pub fn parked_without_hook(&mut self, ids: impl IntoIterator<Item = i32>) {
        self.parked_at_start.extend(ids);
    }

    /// Set up a hook found with parked events at start, or whose stored
    /// consecutive error count is known.
    pub async fn restore(&mut self, hook: &Arc<Webhook>, parked: bool, consecutive_errors: u32) {
        let runtime = self.ensure_queue(hook);
        runtime.restore_errors(consecutive_errors);
        if parked {
            let reason = if hook.state == WebhookState::TooManyErrors {
                ParkReason::TooManyErrors
            } else {
                ParkReason::Backlog
            };
            runtime.park(reason).await;
        }
        self.activated(hook).await;
    }

    /// The registry changed this hook's row: attempts from now on use the
    /// new row (URL, secret, headers), and waiting retries look again.
    pub async fn hook_changed(&mut self, hook: &Arc<Webhook>, was_active: bool) {
        let runtime = self.ensure_queue(hook);
        if !hook.state.takes_events() && runtime.in_flight() > 0 {
            tracing::info!(
                webhook_id = hook.id,
                state = %hook.state,
                "hook stopped: its {} queued or retrying event(s) are dropped, not parked",
                runtime.in_flight()
            );
        }
        if hook.state == WebhookState::Active && !was_active {
            // Only a real transition into Active clears a trip and resumes
            // parked delivery.
            self.activated(hook).await;
        }
        runtime.row_changed(Arc::clone(hook));
    }

    /// A hook's `webhook_control` row changed (`None`: removed), at start
    /// or in commit order from the stream: a pause parks its events from
    /// here on and stops its attempts, a resume replays what was parked, a
    /// new rate or previous secret applies from the next attempt.
    pub async fn settings_changed(&mut self, id: i32, settings: Option<HookSettings>) {
        let settings = Arc::new(settings.unwrap_or_default());
        if *settings == HookSettings::default() {
            self.settings.remove(&id);
        } else {
            self.settings.insert(id, Arc::clone(&settings));
        }
        let Some(known) = self.hooks.get(&id) else {
            return;
        };
        let runtime = Arc::clone(&known.runtime);
        let was_paused = runtime.set_settings(Arc::clone(&settings)).paused;
        if settings.paused && !was_paused {
            runtime.park(ParkReason::Paused).await;
            tracing::info!(
                webhook_id = id,
                "hook paused: its events are parked until it is resumed"
            );
        } else if !settings.paused && was_paused {
            tracing::info!(webhook_id = id, "hook resumed");
            let hook = runtime.current();
            self.activated(&hook).await;
        }
    }

    /// `webhook_control` was truncated.
    pub async fn all_settings_removed(&mut self) {
        let ids: Vec<i32> = self.settings.keys().copied().collect();
        for id in ids {
            self.settings_changed(id, None).await;
        }
    }

    /// The `webhook` table was truncated.
    pub fn all_hooks_removed(&mut self) {
        let ids: Vec<i32> = self.hooks.keys().copied().collect();
        for id in ids {
            self.hook_removed(id);
        }
    }

    /// The hook's row was deleted, or made invalid: its waiting events are
    /// dropped, and its queue ends once they are (a hook added again gets
    /// a new one), so hooks that come and go cost nothing once gone.
    pub fn hook_removed(&mut self, id: i32) {
        if let Some(known) = self.hooks.remove(&id) {
            let runtime = &known.runtime;
            runtime.remove();
            // Its parked events stay in the table: should the row come
            // back (made valid again, or inserted with the same id), its
            // new queue starts parking behind them, as after a restart.
            if runtime.parked() != 0 || runtime.is_parking_now() {
                self.parked_at_start.insert(id);
            }
            if runtime.in_flight() > 0 {
                tracing::info!(
                    webhook_id = id,
                    "hook removed: its {} queued or retrying event(s) are dropped, not parked",
                    runtime.in_flight()
                );
            }
        }
    }

    /// Parked events of a hook passed `delivery.parked_retention` and were
    /// dropped from the table: they no longer count toward its parked
    /// bounds.
    pub fn parked_expired(&self, id: i32, expired: ParkedSize) {
        if let Some(known) = self.hooks.get(&id) {
            known
                .runtime
                .parked_removed(usize::try_from(expired.events).unwrap_or(0), expired.bytes);
        }
    }

    /// Look at every hook on the dispatcher's own clock, not only when one
    /// of its events arrives: a live hook whose oldest event has waited
    /// past its bound parks (its running and queued events too, so the
    /// slot moves on whatever its target does), and a hook that parks for
    /// its backlog gets its replayer. Returns how many hooks started
    /// parking.
    ///
    /// A task that ended in a panic (a queue, the parking writer, a
    /// replayer) is an error: the events it held would never settle, so
    /// the session ends and the next one reads them again.
    pub async fn tick(&mut self) -> anyhow::Result<usize> {
        // Finished tasks (queues of removed hooks, replayers) are reaped.
        while let Some(ended) = self.tasks.try_join_next() {
            if let Err(e) = ended {
                if e.is_panic() {
                    return Err(DeliveryTaskFailed(e.to_string()).into());
                }
            }
        }
        let config = self.ctx.config.get();
        let hooks: Vec<Arc<HookRuntime>> = self
            .hooks
            .values()
            .map(|h| Arc::clone(&h.runtime))
            .collect();
        let mut parked = 0;
        for runtime in hooks {
            if !runtime.is_parking_now()
                && past_bound(&config, &runtime, false)
                && runtime.park_for_backlog().await
            {
                parked += 1;
            }
            if runtime.wants_replayer().await {
                self.start_replayer(&runtime);
            }
        }
        Ok(parked)
    }

    /// The hook is Active: resume delivery when it has parked events, and
    /// clear a trip or a 410.
    async fn activated(&mut self, hook: &Arc<Webhook>) {
        let runtime = self.ensure_queue(hook);
        if hook.state != WebhookState::Active {
            return;
        }
        if runtime.activate().await {
            self.start_replayer(&runtime);
        }
    }

    /// Start the hook's replayer unless one runs: the one place a replayer
    /// starts.
    fn start_replayer(&mut self, runtime: &Arc<HookRuntime>) {
        if runtime.claim_replayer() {
            tracing::info!(webhook_id = runtime.id(), "delivering parked events");
            self.tasks
                .spawn(run_replayer(self.ctx.clone(), Arc::clone(runtime)));
        }
    }

    /// Take one job from the intake: parked while its hook's row says
    /// TooManyErrors (3), routed to its queue otherwise.
    pub async fn take(&mut self, job: Job) -> anyhow::Result<()> {
        self.ctx.metrics.events_matched.inc();
        if job.hook.state == WebhookState::TooManyErrors {
            self.park(job).await
        } else {
            self.dispatch(job).await
        }
    }

    /// Route one event of an Active hook: to its queue, or to `delivery`
    /// when the hook is parking or its backlog passed the bound. Waits
    /// while the in-flight byte budget is spent.
    async fn dispatch(&mut self, job: Job) -> anyhow::Result<()> {
        let runtime = self.ensure_queue(&job.hook);
        if drop_past_parked_limit(&self.ctx, &runtime, &job) {
            job.ticket.settle();
            return Ok(());
        }
        let cost = self.cost(&job);
        let mut budget_spent = false;
        let permit = loop {
            let hogging = budget_spent && self.holds_most_of_the_budget(&runtime);
            let behind = past_bound(&self.ctx.config.get(), &runtime, hogging);
            let (admission, start_replayer) = runtime.admit(behind).await;
            if start_replayer {
                self.start_replayer(&runtime);
            }
            if let Admission::Park(reason) = admission {
                return self.park_later(job, reason, &runtime, cost).await;
            }
            // The semaphore is never closed, so an error here is only
            // "no permits".
            if let Ok(permit) = Arc::clone(&self.budget).try_acquire_many_owned(cost) {
                break permit;
            }
            // The budget is spent. With other hooks waiting, the hooks that
            // are behind and holding it are parked, so a slow target never
            // stalls the others (their queued jobs park and free it); a
            // hook alone just applies back-pressure.
            budget_spent = self.hooks.len() > 1;
            if let Some(permit) = self.wait_for_budget(cost).await {
                break permit;
            }
        };
        let Some(hook_queue) = self.hooks.get(&job.hook.id) else {
            unreachable!("ensure_queue() started the queue");
        };
        let keys = order_keys(
            self.ctx.config.get().ordering,
            &job.ordering_key,
            &job.scope,
        );
        runtime.queued();
        let queued = Queued {
            job: Box::new(job),
            keys,
            enqueued: epoch_millis(),
            budget: permit,
        };
        if hook_queue.queue.send(queued).is_err() {
            // A queue ends only when its sender is dropped; the ticket
            // stays unsettled, so the event is read again after a restart.
            runtime.dequeued();
            tracing::error!(
                webhook_id = runtime.id(),
                "delivery queue ended unexpectedly"
            );
        }
        Ok(())
    }

    /// Whether a hook has more queued events than all others together:
    /// hooks that merely share a burst evenly are never parked for it.
    fn holds_most_of_the_budget(&self, runtime: &HookRuntime) -> bool {
        let total: usize = self.hooks.values().map(|h| h.runtime.in_flight()).sum();
        runtime.in_flight() * 2 > total
    }

    /// One round of waiting for `cost` bytes of the spent budget: with
    /// other hooks waiting, the hooks that are behind and hold it are
    /// parked first (their queued jobs park and free it); then up to a
    /// second for the bytes.
    async fn wait_for_budget(&mut self, cost: u32) -> Option<OwnedSemaphorePermit> {
        if self.hooks.len() > 1 {
            self.park_laggards().await;
        }
        tokio::time::timeout(
            Duration::from_secs(1),
            Arc::clone(&self.budget).acquire_many_owned(cost),
        )
        .await
        .ok()
        .and_then(Result::ok)
    }

    /// With the byte budget spent and other hooks waiting: park the live
    /// hook that is behind and holds most of it.
    async fn park_laggards(&mut self) {
        let config = self.ctx.config.get();
        let laggards: Vec<Arc<HookRuntime>> = self
            .hooks
            .values()
            .map(|h| &h.runtime)
            .filter(|r| self.holds_most_of_the_budget(r) && past_bound(&config, r, true))
            .cloned()
            .collect();
        for runtime in laggards {
            if runtime.park_for_backlog().await {
                self.start_replayer(&runtime);
            }
        }
    }

    /// Park an event of a hook in state 3 (TooManyErrors).
    async fn park(&mut self, job: Job) -> anyhow::Result<()> {
        let runtime = self.ensure_queue(&job.hook);
        if drop_past_parked_limit(&self.ctx, &runtime, &job) {
            job.ticket.settle();
            return Ok(());
        }
        runtime.admit_tripped().await;
        let cost = self.cost(&job);
        self.park_later(job, ParkReason::TooManyErrors, &runtime, cost)
            .await
    }

    /// Hand a job, admitted for parking, to the parking writer. It keeps
    /// its share of the byte budget until it is written, so events waiting
    /// for the database bound memory like queued ones; its ticket is
    /// settled once its batch is committed.
    async fn park_later(
        &mut self,
        job: Job,
        reason: ParkReason,
        runtime: &Arc<HookRuntime>,
        cost: u32,
    ) -> anyhow::Result<()> {
        // The semaphore is never closed, so an error here is only "no
        // permits". A spent budget is handled as for live jobs: hooks
        // that are behind and hold it are parked, so their queued jobs
        // free it.
        let budget = loop {
            if let Ok(permit) = Arc::clone(&self.budget).try_acquire_many_owned(cost) {
                break permit;
            }
            if let Some(permit) = self.wait_for_budget(cost).await {
                break permit;
            }
        };
        self.park_queue
            .send(job, reason, Arc::clone(runtime), budget)
            .await
    }

    /// A job's share of the byte budget: its body and what a queued job
    /// costs besides (so a backlog of small events is bounded by memory,
    /// not by their bodies alone). A body larger than the whole budget
    /// still goes, alone.
    fn cost(&self, job: &Job) -> u32 {
        u32::try_from(job.body.len().saturating_add(JOB_OVERHEAD))
            .unwrap_or(u32::MAX)
            .min(self.budget_max)
    }

    /// New delivery settings from a reloaded config (SIGHUP). Changed
    /// concurrency settings apply to every hook at once, its limit starting
    /// over.
    pub fn set_config(&self, config: DeliveryConfig) {
        let old = self.ctx.config.get();
        if old.concurrency_per_webhook != config.concurrency_per_webhook
            || old.max_concurrency_per_webhook != config.max_concurrency_per_webhook
        {
            for hook_queue in self.hooks.values() {
                hook_queue
                    .runtime
                    .set_concurrency(concurrency_limit(&config));
            }
        }
        self.ctx.config.set(config);
    }

    /// A hook's gauges from its runtime; a hook no event has reached yet
    /// has none, and shows the limit it would start with.
    pub fn hook_gauges(&self, hook: &Webhook) -> HookGauges {
        let Some(known) = self.hooks.get(&hook.id) else {
            return HookGauges {
                webhook_id: hook.id,
                state: hook.state as i64,
                queue_depth: 0,
                in_flight_requests: 0,
                concurrency_limit: concurrency_limit(&self.ctx.config.get()).limit() as i64,
            };
        };
        let runtime = &known.runtime;
        // A trip shows at once, before the registry reads the new state
        // back from the WAL.
        let state = if runtime.is_tripped() {
            WebhookState::TooManyErrors
        } else {
            runtime.current().state
        };
        HookGauges {
            webhook_id: hook.id,
            state: state as i64,
            queue_depth: runtime.in_flight() as i64,
            in_flight_requests: runtime.requests() as i64,
            concurrency_limit: runtime.concurrency_limit() as i64,
        }
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
        self.park_queue.close();
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        let finished = tokio::time::timeout(timeout, all_done).await.is_ok();
        if !finished {
            self.tasks.abort_all();
        }
        finished
    }
}

/// A new hook's concurrency limit.
fn concurrency_limit(config: &DeliveryConfig) -> ConcurrencyLimit {
    match config.concurrency_per_webhook {
        Concurrency::Adaptive => ConcurrencyLimit::adaptive(config.max_concurrency_per_webhook),
        Concurrency::Fixed(n) => ConcurrencyLimit::fixed(n),
    }
}

/// A hook stopped for reaching `delivery.max_parked_events_per_webhook`
/// is Stopped until it is set Active again: its events are dropped and
/// counted, as for any Stopped hook, even before the registry has read
/// the new state back.
fn drop_past_parked_limit(ctx: &DeliveryContext, runtime: &HookRuntime, job: &Job) -> bool {
    if !runtime.parked_limit_reached() {
        return false;
    }
    tracing::debug!(
        webhook_id = runtime.id(),
        event_id = %job.event_id,
        "dropped: the hook was stopped at its parked events limit"
    );
    ctx.metrics.dropped();
    true
}
