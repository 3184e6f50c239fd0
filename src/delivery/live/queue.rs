//! A hook's queue: one task per hook that starts its events as soon as
//! their order allows, up to the hook's concurrency limit, in its delivery
//! lanes (tasks that run the events and drive their own connections).
//!
//! Events of one row keep commit order: an event starts only when no
//! earlier event of its row is still running or waiting. Rows go
//! concurrently, so a retrying event holds up its own row only. A barrier
//! (TRUNCATE) starts alone, after everything before it, and nothing after
//! it starts until it is done. The limit comes from the hook's
//! [`ConcurrencyLimit`](crate::delivery::hook::concurrency::ConcurrencyLimit), read again
//! each time an event could start.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::lanes::{Finished, Lanes, Started};
use super::shared::{Share, SharedInFlight};
use crate::delivery::context::DeliveryContext;
use crate::delivery::hook::order::{Keys, OrderGate};
use crate::delivery::hook::HookRuntime;
use crate::delivery::job::Job;

/// Events taken from the channel at most before looking for ones to
/// start: a burst is looked at in batches, not once per event.
const INTAKE: usize = 256;

/// One event waiting in a hook's queue. The job is boxed: the queue's
/// channel allocates its slots 32 at a time and its order gate holds
/// entries by value, so an unboxed job (some 250 bytes) cost every hook
/// 8 KiB per channel block and 3 KiB per gate node even when idle.
pub(in crate::delivery) struct Queued {
    pub job: Box<Job>,
    pub keys: Keys,
    /// [`epoch_millis`](crate::delivery::hook::epoch_millis) when it was queued.
    pub enqueued: u64,
    /// The job's share of the in-flight byte budget, returned when done.
    pub budget: OwnedSemaphorePermit,
}

/// Run one hook's queue until the dispatcher drops its sender and every
/// queued event is done.
pub(in crate::delivery) async fn run_queue(
    mut rx: mpsc::UnboundedReceiver<Queued>,
    ctx: DeliveryContext,
    runtime: Arc<HookRuntime>,
    shared: SharedInFlight,
) {
    let mut share = shared.share();
    // Set when events wait that only a shared permit would start.
    let mut short = false;
    let mut gate: OrderGate<Queued> = OrderGate::new();
    let mut lanes = Lanes::new(&ctx, &runtime);
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
                    for _ in 1..INTAKE {
                        match rx.try_recv() {
                            Ok(more) => gate.push(more.keys, more),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some(ended) = lanes.tasks.next(), if lanes.running() > 0 => lanes.ended(ended),
            Some(done) = lanes.done.recv(), if lanes.running() > 0 => {
                let mut done = Some(done);
                // Take what else has finished, then look once.
                while let Some(Finished { keys, arrival, lane }) = done {
                    gate.finished(keys);
                    running_since.remove(&arrival);
                    lanes.finished(lane);
                    runtime.dequeued();
                    done = lanes.done.try_recv().ok();
                }
            }
            Some(more) = Share::one_more(share.pool()), if short => share.add(more),
            // Closed and nothing running: whatever waits starts below.
            else => {}
        }
        if !open && gate.waiting() == 0 && lanes.running() == 0 {
            break;
        }
        // A parking hook parks its waiting events at once, whatever the
        // limit: that frees the byte budget, and parking costs the target
        // nothing.
        let parking = runtime.is_parking_now();
        let own = if parking {
            usize::MAX
        } else {
            runtime.concurrency_limit()
        };
        let limit = if parking {
            own
        } else {
            share.allowed(lanes.running() + gate.waiting(), own)
        };
        lanes.set_allowed(limit);
        let held_back = gate.take_ready(limit, &mut ready);
        // Held back by the shared pool, not by the hook's own limit: its
        // controller must not read that as the target's limit, and the
        // queue waits for a permit.
        short = held_back > 0 && limit < own;
        runtime.held_back(if short { 0 } else { held_back });
        for (keys, queued) in ready.drain(..) {
            arrivals += 1;
            running_since.insert(arrivals, queued.enqueued);
            lanes.start(Started {
                job: queued.job,
                budget: queued.budget,
                keys,
                arrival: arrivals,
            });
        }
        share.keep_for(lanes.running());
        let oldest = running_since
            .values()
            .next()
            .copied()
            .into_iter()
            .chain(gate.front().map(|q| q.enqueued))
            .min()
            .unwrap_or(0);
        runtime.set_oldest_queued(oldest);
    }
    runtime.set_oldest_queued(0);
    lanes.close().await;
}
