//! The parking writer: the reader hands it the events it parks and goes
//! on; it writes them to `delivery` in batches, one commit per batch.
//!
//! One INSERT and one commit per parked event would run the pipeline at
//! the database's commit rate, and a single parked hook would slow every
//! healthy one. Here an event waits in a bounded queue, still holding its
//! share of the in-flight byte budget (memory stays bounded), and its
//! ticket is settled only once its batch is committed (the store's session
//! runs with synchronous_commit on): nothing is confirmed before it is
//! durable. Batches keep the reader's order, and parked events are read
//! back by (commit_lsn, change_index) anyway, so batching never reorders a
//! hook's events.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::policy::parked_limit_warning;
use crate::delivery::context::DeliveryContext;
use crate::delivery::hook::{HookRuntime, ParkReason};
use crate::delivery::job::Job;
use crate::delivery::storage::ParkedEvent;
use crate::registry::WebhookState;

/// A batch is written once it holds this many events...
const BATCH_EVENTS: usize = 500;
/// ...or once its first event has waited this long.
const BATCH_AGE: Duration = Duration::from_millis(20);
/// Batches written at once: one is encoded and sent while the database
/// executes the other, instead of each side waiting for the other.
const BATCHES_IN_FLIGHT: usize = 2;
/// Events waiting to be written; past it the reader waits (they also
/// hold the byte budget, which usually binds first).
const QUEUE_EVENTS: usize = 8192;

/// An event on its way to `delivery`.
struct Unwritten {
    job: Job,
    reason: ParkReason,
    runtime: Arc<HookRuntime>,
    /// Returned to the byte budget once the event is written.
    _budget: OwnedSemaphorePermit,
}

/// The reader's side of the parking writer.
pub(in crate::delivery) struct ParkQueue {
    /// None once delivery is draining.
    sender: Option<mpsc::Sender<Unwritten>>,
}

impl ParkQueue {
    /// Start the writer task in `tasks`.
    pub(in crate::delivery) fn start(ctx: DeliveryContext, tasks: &mut JoinSet<()>) -> ParkQueue {
        let (sender, receiver) = mpsc::channel(QUEUE_EVENTS);
        tasks.spawn(run_writer(ctx, receiver));
        ParkQueue {
            sender: Some(sender),
        }
    }

    /// Hand a job to the writer. The hook admitted it for parking
    /// ([`HookRuntime::admit`]), which counted it as on its way to the
    /// table under the mode lock, so the replayer cannot switch the hook to
    /// Live while the job is still on its way.
    pub(in crate::delivery) async fn send(
        &self,
        job: Job,
        reason: ParkReason,
        runtime: Arc<HookRuntime>,
        budget: OwnedSemaphorePermit,
    ) -> anyhow::Result<()> {
        let item = Unwritten {
            job,
            reason,
            runtime,
            _budget: budget,
        };
        let Some(sender) = &self.sender else {
            item.runtime.park_settled();
            anyhow::bail!("delivery is stopping: the event is not parked");
        };
        if let Err(mpsc::error::SendError(item)) = sender.send(item).await {
            item.runtime.park_settled();
            anyhow::bail!("the parking writer ended unexpectedly");
        }
        Ok(())
    }

    /// No more events: the writer writes what it holds, then ends.
    pub(in crate::delivery) fn close(&mut self) {
        self.sender = None;
    }
}

async fn run_writer(ctx: DeliveryContext, mut receiver: mpsc::Receiver<Unwritten>) {
    // Batches being written, each with whether it was: the next batch is
    // gathered and encoded while the database executes the last one (on
    // the same session, so the statements still run one after another).
    let mut writing = FuturesUnordered::new();
    let mut batch: Vec<Unwritten> = Vec::with_capacity(BATCH_EVENTS);
    // When the batch being gathered must be written at the latest.
    let mut closes: Option<Instant> = None;
    let mut open = true;
    loop {
        let due = !batch.is_empty()
            && (batch.len() >= BATCH_EVENTS
                || !open
                || closes.is_some_and(|at| Instant::now() >= at));
        if due && writing.len() < BATCHES_IN_FLIGHT {
            let ctx = ctx.clone();
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_EVENTS));
            let batch = within_parked_limits(&ctx, full).await;
            writing.push(async move {
                let written = write_until_done(&ctx, &batch).await;
                (batch, written)
            });
            closes = None;
            continue;
        }
        if !open && batch.is_empty() && writing.is_empty() {
            return;
        }
        tokio::select! {
            Some((done, written)) = writing.next(), if !writing.is_empty() => {
                finish(&ctx, done, written).await;
            }
            // Cancel-safe: an event is either received or left queued.
            item = receiver.recv(), if open && batch.len() < BATCH_EVENTS => match item {
                Some(item) => {
                    if batch.is_empty() {
                        closes = Some(Instant::now() + BATCH_AGE);
                    }
                    batch.push(item);
                }
                None => open = false,
            },
            () = sleep_until(closes.unwrap_or_else(Instant::now)), if closes.is_some() && !due => {}
        }
    }
}

/// A batch's write ended: settle its events when it was written (else
/// they stay unconfirmed and are read again by the next session, which
/// counts the parked events afresh).
async fn finish(ctx: &DeliveryContext, mut batch: Vec<Unwritten>, written: bool) {
    let count = batch.len();
    for item in batch.drain(..) {
        if written {
            item.job.ticket.settle();
        }
        item.runtime.park_settled();
    }
    if written {
        ctx.metrics.parked_events.inc_by(count as i64);
    }
}

/// Hold each hook of a batch to `delivery.max_parked_events_per_webhook`
/// exactly: its events past the limit are dropped and counted, never
/// written, and the hook is set to Stopped (2). Returns the events to
/// write, in the batch's order.
async fn within_parked_limits(ctx: &DeliveryContext, batch: Vec<Unwritten>) -> Vec<Unwritten> {
    let mut wanted: Vec<(Arc<HookRuntime>, usize)> = Vec::new();
    for item in &batch {
        match wanted.iter_mut().find(|(r, _)| r.id() == item.runtime.id()) {
            Some((_, n)) => *n += 1,
            None => wanted.push((Arc::clone(&item.runtime), 1)),
        }
    }
    let mut granted: Vec<(i32, usize)> = Vec::with_capacity(wanted.len());
    for (runtime, n) in wanted {
        granted.push((runtime.id(), reserve_parked(ctx, &runtime, n).await));
    }
    let mut kept = Vec::with_capacity(batch.len());
    for item in batch {
        let room = granted
            .iter_mut()
            .find(|(id, _)| *id == item.runtime.id())
            .map(|(_, room)| room);
        match room {
            Some(room) if *room > 0 => {
                *room -= 1;
                kept.push(item);
            }
            _ => {
                tracing::debug!(
                    webhook_id = item.runtime.id(),
                    event_id = %item.job.event_id,
                    "dropped: the hook is at its parked events limit"
                );
                ctx.metrics.dropped();
                item.job.ticket.settle();
                item.runtime.park_settled();
            }
        }
    }
    kept
}

/// Room for `wanted` more parked events of a hook under its limit (see
/// [`HookRuntime::reserve_parked`]); the hook is stopped once it has no
/// more. The count is read from the table the first time, and warned
/// about once it crosses [`PARKED_WARN_PERCENT`](super::PARKED_WARN_PERCENT)
/// of the limit.
async fn reserve_parked(ctx: &DeliveryContext, runtime: &HookRuntime, wanted: usize) -> usize {
    let configured = ctx.config.get().max_parked_events_per_webhook;
    let limit = i64::try_from(configured).unwrap_or(i64::MAX);
    if runtime.parked_limit_reached() {
        return 0;
    }
    let mut before = runtime.parked();
    if before < 0 {
        match ctx.store.parked_count(runtime.id()).await {
            Ok(n) => runtime.set_parked(n),
            Err(e) => {
                // Unknown: park them, and count again with the next batch.
                tracing::warn!(webhook_id = runtime.id(), "counting parked events: {e:#}");
                return wanted;
            }
        }
        before = -1;
    }
    let granted = runtime.reserve_parked(wanted, limit);
    let now = runtime.parked();
    // Once per crossing, well before the limit stops the hook.
    if let Some(warning) = parked_limit_warning(runtime.id(), now, configured) {
        if before < 0 || parked_limit_warning(runtime.id(), before, configured).is_none() {
            ctx.metrics.hooks_near_parked_limit.inc();
            tracing::warn!(webhook_id = runtime.id(), "{warning}");
        }
    }
    if now >= limit {
        stop_at_parked_limit(ctx, runtime, now, limit).await;
    }
    granted
}

/// A hook reached `delivery.max_parked_events_per_webhook`: a dead target
/// must never fill the database walhook sits beside. What is parked stays
/// for replay; later events follow the Stopped rule (dropped and counted).
async fn stop_at_parked_limit(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    parked: i64,
    limit: i64,
) {
    if runtime.parked_limit_reached() {
        return;
    }
    runtime.stop_at_parked_limit();
    ctx.metrics.hooks_stopped_parked_limit.inc();
    tracing::error!(
        webhook_id = runtime.id(),
        name = %runtime.current().name,
        parked,
        limit,
        "webhook {} has {parked} parked events, the limit of delivery.max_parked_events_per_webhook \
         ({limit}): it is set to Stopped (2); its parked events are kept and are delivered \
         once it is set Active again, events until then are dropped",
        runtime.id()
    );
    if let Err(e) = ctx
        .store
        .store_state(runtime.id(), WebhookState::Stopped)
        .await
    {
        tracing::error!(
            webhook_id = runtime.id(),
            "could not store state Stopped (2): {e:#}"
        );
    }
}

/// Write a batch, retrying until the store takes it. Returns false when
/// the store's session ended first.
async fn write_until_done(ctx: &DeliveryContext, batch: &[Unwritten]) -> bool {
    let events: Vec<ParkedEvent<'_>> = batch
        .iter()
        .map(|item| item.job.parked(item.reason, 0, None))
        .collect();
    let mut wait = Duration::from_secs(1);
    loop {
        match ctx.store.park_batch(&events).await {
            Ok(()) => return true,
            Err(_) if ctx.store.is_closed() => return false,
            Err(e) => {
                tracing::error!(
                    events = events.len(),
                    "could not park a batch of events, trying again in {}: {e:#}",
                    crate::text::human_duration(wait)
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
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
    ctx.store
        .park(&job.parked(reason, attempts, last_error))
        .await
}

/// Park, retrying until the store takes it: the job waits rather than
/// leave its transaction unconfirmed for the rest of the session. Returns
/// false when the store's session ended first: the event stays
/// unconfirmed and is read again by the next session, never lost.
pub(in crate::delivery) async fn park_until_done(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    job: &Job,
    reason: ParkReason,
    attempts: i32,
    error: Option<&str>,
) -> bool {
    if reserve_parked(ctx, runtime, 1).await == 0 {
        // At the limit: dropped and counted, as the Stopped rule says.
        ctx.metrics.dropped();
        return true;
    }
    let mut wait = Duration::from_secs(1);
    while let Err(e) = park_job(ctx, job, reason, attempts, error).await {
        if ctx.store.is_closed() {
            return false;
        }
        tracing::error!(
            webhook_id = job.hook.id,
            event_id = %job.event_id,
            "could not park the event, trying again in {}: {e:#}",
            crate::text::human_duration(wait)
        );
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
    true
}
