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

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::hook::{HookControl, Mode, ParkReason};
use super::parking::park_until_done;
use super::retry::{deliver, Settled};
use super::{DeliveryContext, Job};

/// How far past blocked events the queue looks for one that may start:
/// bounds the work per started event when one row has many queued.
const LOOKAHEAD: usize = 256;
/// Events taken from the channel before looking for ones to start.
const INTAKE: usize = 256;

/// What an event must wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keys {
    /// Earlier events of its row (a hash of the ordering key; a collision
    /// only orders two rows that need not be).
    One(u64),
    /// Earlier events of either of two rows (an UPDATE that changed the
    /// row's key).
    Two(u64, u64),
    /// Every earlier event; every later one waits for it.
    Barrier,
}

impl Keys {
    pub(super) fn of(key: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        hasher.finish()
    }

    fn each(self) -> impl Iterator<Item = u64> {
        let (a, b) = match self {
            Keys::One(a) => (Some(a), None),
            Keys::Two(a, b) => (Some(a), Some(b)),
            Keys::Barrier => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// One event waiting in a hook's queue.
pub(super) struct Queued {
    pub job: Job,
    pub keys: Keys,
    /// [`epoch_millis`](super::hook::epoch_millis) when it was queued.
    pub enqueued: u64,
    /// The job's share of the in-flight byte budget, returned when done.
    pub budget: OwnedSemaphorePermit,
}

/// The order rules, apart from the jobs: which waiting items may start.
pub(super) struct OrderGate<T> {
    waiting: VecDeque<(Keys, T)>,
    /// Rows with a running event, and how many.
    busy: HashMap<u64, u32>,
    running: usize,
    barrier_running: bool,
}

impl<T> OrderGate<T> {
    pub(super) fn new() -> OrderGate<T> {
        OrderGate {
            waiting: VecDeque::new(),
            busy: HashMap::new(),
            running: 0,
            barrier_running: false,
        }
    }

    pub(super) fn push(&mut self, keys: Keys, item: T) {
        self.waiting.push_back((keys, item));
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    #[cfg(test)]
    pub(super) fn running(&self) -> usize {
        self.running
    }

    pub(super) fn front(&self) -> Option<&T> {
        self.waiting.front().map(|(_, item)| item)
    }

    /// Move the items that may start now to `out`, keeping at most `limit`
    /// running. Returns whether the limit held back an item that could
    /// otherwise have started.
    pub(super) fn take_ready(&mut self, limit: usize, out: &mut Vec<(Keys, T)>) -> bool {
        if self.barrier_running {
            return false;
        }
        // Rows of events passed over: later events of them must wait too.
        let mut passed: HashSet<u64> = HashSet::new();
        let mut index = 0;
        let mut looked = 0;
        while index < self.waiting.len() && looked < LOOKAHEAD {
            let keys = self.waiting[index].0;
            if keys == Keys::Barrier {
                if index == 0 && self.running == 0 {
                    if let Some(entry) = self.waiting.pop_front() {
                        self.barrier_running = true;
                        self.running += 1;
                        out.push(entry);
                    }
                }
                return false;
            }
            let blocked = keys
                .each()
                .any(|k| self.busy.contains_key(&k) || passed.contains(&k));
            if blocked {
                passed.extend(keys.each());
                index += 1;
                looked += 1;
                continue;
            }
            if self.running >= limit {
                return true;
            }
            let Some(entry) = self.waiting.remove(index) else {
                break;
            };
            for k in keys.each() {
                *self.busy.entry(k).or_insert(0) += 1;
            }
            self.running += 1;
            out.push(entry);
        }
        false
    }

    /// An item started by [`take_ready`](Self::take_ready) is done.
    pub(super) fn finished(&mut self, keys: Keys) {
        self.running = self.running.saturating_sub(1);
        if keys == Keys::Barrier {
            self.barrier_running = false;
        }
        for k in keys.each() {
            if let Some(n) = self.busy.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.busy.remove(&k);
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn started(gate: &mut OrderGate<u32>, limit: usize) -> Vec<u32> {
        let mut out = Vec::new();
        gate.take_ready(limit, &mut out);
        out.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn rows_go_concurrently_up_to_the_limit() {
        let mut gate = OrderGate::new();
        for n in 0..10 {
            gate.push(Keys::One(n as u64), n);
        }
        assert_eq!(started(&mut gate, 4), vec![0, 1, 2, 3]);
        assert_eq!(started(&mut gate, 4), Vec::<u32>::new());
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 4), vec![4]);
        // A raised limit lets more start at once.
        assert_eq!(started(&mut gate, 8), vec![5, 6, 7, 8]);
    }

    #[test]
    fn events_of_one_row_wait_for_the_earlier_one() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 10);
        gate.push(Keys::One(1), 11);
        gate.push(Keys::One(2), 20);
        gate.push(Keys::One(1), 12);
        assert_eq!(started(&mut gate, 100), vec![10, 20]);
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![11]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![12]);
    }

    #[test]
    fn a_changed_key_waits_for_both_rows_and_holds_both() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::Two(2, 1), 2);
        gate.push(Keys::One(2), 3);
        gate.push(Keys::One(3), 4);
        assert_eq!(started(&mut gate, 100), vec![1, 4]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), vec![2]);
        gate.finished(Keys::Two(2, 1));
        assert_eq!(started(&mut gate, 100), vec![3]);
    }

    #[test]
    fn a_barrier_runs_alone_between_what_came_before_and_after() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::One(2), 2);
        gate.push(Keys::Barrier, 3);
        gate.push(Keys::One(4), 4);
        assert_eq!(started(&mut gate, 100), vec![1, 2]);
        gate.finished(Keys::One(1));
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::One(2));
        assert_eq!(started(&mut gate, 100), vec![3]);
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        gate.finished(Keys::Barrier);
        assert_eq!(started(&mut gate, 100), vec![4]);
    }

    #[test]
    fn the_limit_holding_back_a_ready_event_is_reported() {
        let mut gate = OrderGate::new();
        gate.push(Keys::One(1), 1);
        gate.push(Keys::One(1), 2);
        let mut out = Vec::new();
        // The second waits for its row, not for the limit.
        assert!(!gate.take_ready(1, &mut out));
        gate.push(Keys::One(2), 3);
        assert!(gate.take_ready(1, &mut out));
        assert_eq!(gate.running(), 1);
    }

    #[test]
    fn the_look_past_blocked_events_is_bounded() {
        let mut gate = OrderGate::new();
        for n in 0..(LOOKAHEAD as u32 + 10) {
            gate.push(Keys::One(1), n);
        }
        gate.push(Keys::One(2), 9999);
        assert_eq!(started(&mut gate, 100), vec![0]);
        // Row 2 sits past the look-ahead behind row 1's backlog: it waits
        // rather than cost a scan of the whole queue per event.
        assert_eq!(started(&mut gate, 100), Vec::<u32>::new());
        assert_eq!(gate.waiting(), LOOKAHEAD + 10);
    }
}
