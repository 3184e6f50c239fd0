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

use super::policy::{parked_bytes_warning, parked_limit_warning};
use crate::delivery::context::DeliveryContext;
use crate::delivery::hook::{HookRuntime, ParkReason, ParkSize, ParkedBound, ParkedLimits};
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
    /// What it counts toward its hook's parked bytes, once reserved.
    bytes: i64,
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
            bytes: 0,
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
/// and `delivery.max_parked_bytes_per_webhook` exactly: its events past
/// either bound are dropped and counted, never written, and the hook is
/// set to Stopped (2). Returns the events to write, in the batch's order,
/// each with the bytes it counts.
async fn within_parked_limits(ctx: &DeliveryContext, batch: Vec<Unwritten>) -> Vec<Unwritten> {
    // Each hook's events, in the batch's order.
    let mut wanted: Vec<(Arc<HookRuntime>, Vec<ParkSize>)> = Vec::new();
    for item in &batch {
        let size = item.job.park_size();
        match wanted.iter_mut().find(|(r, _)| r.id() == item.runtime.id()) {
            Some((_, sizes)) => sizes.push(size),
            None => wanted.push((Arc::clone(&item.runtime), vec![size])),
        }
    }
    let mut granted: Vec<(i32, std::vec::IntoIter<i64>)> = Vec::with_capacity(wanted.len());
    for (runtime, sizes) in wanted {
        let counted = reserve_parked(ctx, &runtime, &sizes).await;
        granted.push((runtime.id(), counted.into_iter()));
    }
    let mut kept = Vec::with_capacity(batch.len());
    for mut item in batch {
        let room = granted
            .iter_mut()
            .find(|(id, _)| *id == item.runtime.id())
            .and_then(|(_, counted)| counted.next());
        match room {
            Some(bytes) => {
                item.bytes = bytes;
                kept.push(item);
            }
            None => {
                tracing::debug!(
                    webhook_id = item.runtime.id(),
                    event_id = %item.job.event_id,
                    "dropped: the hook is at a bound on its parked events"
                );
                ctx.metrics.dropped();
                item.job.ticket.settle();
                item.runtime.park_settled();
            }
        }
    }
    kept
}

/// Room for the events of `sizes`, in order, under the hook's bounds (see
/// [`HookRuntime::reserve_parked`]): the bytes each granted event counts.
/// The hook is stopped once it has no more room. The count is read from
/// the table the first time, and warned about once it crosses
/// [`PARKED_WARN_PERCENT`](super::PARKED_WARN_PERCENT) of a bound.
async fn reserve_parked(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    sizes: &[ParkSize],
) -> Vec<i64> {
    let config = ctx.config.get();
    let limits = ParkedLimits {
        events: i64::try_from(config.max_parked_events_per_webhook).unwrap_or(i64::MAX),
        bytes: i64::try_from(config.max_parked_bytes_per_webhook).unwrap_or(i64::MAX),
    };
    if runtime.parked_limit_reached() {
        return Vec::new();
    }
    let mut before = (runtime.parked(), runtime.parked_bytes());
    if before.0 < 0 {
        match ctx.store.parked_size(runtime.id()).await {
            Ok(size) => runtime.set_parked(size),
            Err(e) => {
                // Unknown: park them, each counting its own Properties,
                // and count again with the next batch.
                tracing::warn!(webhook_id = runtime.id(), "counting parked events: {e:#}");
                return sizes.iter().map(ParkSize::whole).collect();
            }
        }
        before = (-1, -1);
    }
    let reserved = runtime.reserve_parked(sizes, limits);
    let now = (runtime.parked(), runtime.parked_bytes());
    // Once per crossing, well before a bound stops the hook.
    let crossed = |warning: fn(i32, i64, u64) -> Option<String>, before: i64, now: i64, limit| {
        warning(runtime.id(), now, limit)
            .filter(|_| before < 0 || warning(runtime.id(), before, limit).is_none())
    };
    for warning in [
        crossed(
            parked_limit_warning,
            before.0,
            now.0,
            config.max_parked_events_per_webhook,
        ),
        crossed(
            parked_bytes_warning,
            before.1,
            now.1,
            config.max_parked_bytes_per_webhook,
        ),
    ]
    .into_iter()
    .flatten()
    {
        ctx.metrics.hooks_near_parked_limit.inc();
        tracing::warn!(webhook_id = runtime.id(), "{warning}");
    }
    if let Some(bound) = reserved.full {
        stop_at_parked_limit(ctx, runtime, bound, now, limits).await;
    }
    reserved.counted
}

/// A hook reached `delivery.max_parked_events_per_webhook` or
/// `delivery.max_parked_bytes_per_webhook`: a dead target must never fill
/// the database walhook sits beside. What is parked stays for replay;
/// later events follow the Stopped rule (dropped and counted).
async fn stop_at_parked_limit(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    bound: ParkedBound,
    (parked, bytes): (i64, i64),
    limits: ParkedLimits,
) {
    if runtime.parked_limit_reached() {
        return;
    }
    runtime.stop_at_parked_limit();
    ctx.metrics.hooks_stopped_parked_limit.inc();
    let reached = match bound {
        ParkedBound::Events => format!(
            "{parked} parked events, the limit of delivery.max_parked_events_per_webhook ({})",
            limits.events
        ),
        ParkedBound::Bytes => format!(
            "{parked} parked events of {bytes} bytes, and the next would pass \
             delivery.max_parked_bytes_per_webhook ({})",
            limits.bytes
        ),
    };
    tracing::error!(
        webhook_id = runtime.id(),
        name = %runtime.current().name,
        parked,
        bytes,
        "webhook {} has {reached}: it is set to Stopped (2); its parked events are kept and are \
         delivered once it is set Active again, events until then are dropped",
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
        .map(|item| item.job.parked(item.reason, 0, None, item.bytes))
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
    bytes: i64,
) -> anyhow::Result<()> {
    ctx.metrics.parked_events.inc();
    ctx.store
        .park(&job.parked(reason, attempts, last_error, bytes))
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
    let Some(&bytes) = reserve_parked(ctx, runtime, &[job.park_size()])
        .await
        .first()
    else {
        // At a bound: dropped and counted, as the Stopped rule says.
        ctx.metrics.dropped();
        return true;
    };
    let mut wait = Duration::from_secs(1);
    while let Err(e) = park_job(ctx, job, reason, attempts, error, bytes).await {
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
