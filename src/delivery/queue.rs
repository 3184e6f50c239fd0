//! A hook's queue: one task per hook that starts its events as soon as
//! their order allows, up to the hook's concurrency limit.
//!
//! Events of one row keep commit order: an event starts only when no
//! earlier event of its row is still running or waiting. Rows go
//! concurrently, so a retrying event holds up its own row only. A barrier
//! (TRUNCATE) starts alone, after everything before it, and nothing after
//! it starts until it is done. The limit comes from the hook's
//! [`ConcurrencyLimit`](super::concurrency::ConcurrencyLimit), read again
//! each time an event could start.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::hook::{HookControl, Mode, ParkReason};
use super::order::{Keys, OrderGate};
use super::parking::park_until_done;
use super::retry::{deliver, Settled};
use super::{DeliveryContext, Job};

/// Events taken from the channel before looking for ones to start.
const INTAKE: usize = 256;

/// One event waiting in a hook's queue.
pub(super) struct Queued {
    pub job: Job,
    pub keys: Keys,
    /// [`epoch_millis`](super::hook::epoch_millis) when it was queued.
    pub enqueued: u64,
    /// The job's share of the in-flight byte budget, returned when done.
    pub budget: OwnedSemaphorePermit,
}

/// Run one hook's queue until the dispatcher drops its sender and every
/// queued event is done.
pub(super) async fn run_queue(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    ctx: DeliveryContext,
    control: Arc<HookControl>,
) {
    let mut gate: OrderGate<Queued> = OrderGate::new();
    let mut running = FuturesUnordered::new();
    // When each running event was queued, by arrival number: the oldest
    // unfinished event is the hook's backlog age.
    let mut running_since: BTreeMap<u64, u64> = BTreeMap::new();
    let mut arrivals: u64 = 0;
    let mut ready = Vec::new();
    let mut open = true;
    loop {
        tokio::select! {
            item = rx.recv(), if open => match item {
                Some(first) => {
                    gate.push(first.keys, first);
                    // Take what else has arrived, then look once.
                    while gate.waiting() < INTAKE {
                        match rx.try_recv() {
                            Ok(more) => gate.push(more.keys, more),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some((keys, arrival)) = running.next(), if !running.is_empty() => {
                gate.finished(keys);
                running_since.remove(&arrival);
                control.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            // Closed and nothing running: whatever waits starts below.
            else => {}
        }
        if !open && gate.waiting() == 0 && running.is_empty() {
            break;
        }
        // A parking hook parks its waiting events at once, whatever the
        // limit: that frees the byte budget, and parking costs the target
        // nothing.
        let parking = matches!(control.mode.try_lock().map(|m| *m), Ok(Mode::Parking(_)));
        let limit = if parking {
            usize::MAX
        } else {
            control.concurrency_limit()
        };
        if gate.take_ready(limit, &mut ready) {
            control.held_back();
        }
        for (keys, queued) in ready.drain(..) {
            let Queued {
                job,
                enqueued,
                budget,
                ..
            } = queued;
            arrivals += 1;
            let arrival = arrivals;
            running_since.insert(arrival, enqueued);
            let (ctx, control) = (&ctx, &control);
            running.push(async move {
                run_job(ctx, control, job).await;
                drop(budget);
                (keys, arrival)
            });
        }
        let oldest = running_since
            .values()
            .next()
            .copied()
            .into_iter()
            .chain(gate.front().map(|q| q.enqueued))
            .min()
            .unwrap_or(0);
        control.oldest_queued.store(oldest, Ordering::Release);
    }
    control.oldest_queued.store(0, Ordering::Release);
}

/// Deliver, park or drop one job, then settle its ticket. If parking fails
/// (database unreachable) the ticket is left unsettled: the event stays
/// unconfirmed and is read again after a restart, never lost.
async fn run_job(ctx: &DeliveryContext, control: &HookControl, job: Job) {
    if control.is_stopped() {
        ctx.metrics.dropped();
        job.ticket.settle();
        return;
    }
    // A hook that went to parking while this job waited in its queue parks
    // it too, so its queue frees the byte budget at once; the replayer
    // delivers it in commit order once the queue is empty.
    let parking = match *control.mode.lock().await {
        Mode::Parking(reason) => Some(reason),
        Mode::Live => None,
    };
    if let Some(reason) = parking {
        if park_until_done(ctx, &job, reason, 0, None).await {
            control.parked_added(1);
            job.ticket.settle();
        }
        return;
    }
    let outcome = deliver(ctx, control, &job.event, job.event_id, &job.body, 0).await;
    match outcome {
        Settled::Delivered | Settled::Dropped => job.ticket.settle(),
        Settled::Stopped => {
            ctx.metrics.dropped();
            job.ticket.settle();
        }
        Settled::Unsettled => {}
        Settled::Tripped { attempts, error } | Settled::Paused { attempts, error } => {
            let reason = if control.is_tripped() {
                ParkReason::TooManyErrors
            } else {
                ParkReason::Paused
            };
            {
                // From now on the reader parks this hook's events too, and
                // re-activation (or resume) starts the replayer.
                let mut mode = control.mode.lock().await;
                if *mode == Mode::Live {
                    *mode = Mode::Parking(reason);
                }
            }
            if park_until_done(ctx, &job, reason, attempts as i32, error.as_deref()).await {
                control.parked_added(1);
                job.ticket.settle();
            }
        }
    }
}
