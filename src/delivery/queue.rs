//! A hook's queue: one task per hook that starts its events as soon as
//! their order allows, up to the hook's concurrency limit, in its delivery
//! lanes (tasks that run the events and drive their own connections).
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
use tokio::task::{AbortHandle, JoinError, JoinHandle};

use super::connections::{Sender, TaskConnections};
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
    let mut lanes = Lanes::new(&ctx, &control);
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
            Some(ended) = lanes.tasks.next(), if lanes.running() > 0 => lanes.ended(ended),
            Some(done) = lanes.done.recv(), if lanes.running() > 0 => {
                let mut done = Some(done);
                // Take what else has finished, then look once.
                while let Some(Finished { keys, arrival, lane }) = done {
                    gate.finished(keys);
                    running_since.remove(&arrival);
                    lanes.finished(lane);
                    control.in_flight.fetch_sub(1, Ordering::AcqRel);
                    done = lanes.done.try_recv().ok();
                }
            }
            // Closed and nothing running: whatever waits starts below.
            else => {}
        }
        if !open && gate.waiting() == 0 && lanes.running() == 0 {
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
        control.looked(gate.take_ready(limit, &mut ready));
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
    lanes.close().await;
}

/// The tasks a hook's started events run in, each with its own HTTP/1.1
/// connections ([`TaskConnections`]), which it drives itself: an answer
/// wakes the task whose request waits for it, and no other. One task would
/// hold a busy hook to one core; so a hook has up to one lane per runtime
/// worker, opened as its events in flight need them.
struct Lanes {
    ctx: DeliveryContext,
    control: Arc<HookControl>,
    lanes: Vec<Lane>,
    /// Every lane's task, to see one end.
    tasks: FuturesUnordered<JoinHandle<()>>,
    most: usize,
    finished_tx: mpsc::UnboundedSender<Finished>,
    done: mpsc::UnboundedReceiver<Finished>,
}

struct Lane {
    tx: mpsc::UnboundedSender<Started>,
    task: AbortHandle,
    running: usize,
}

/// An event handed to a lane.
struct Started {
    job: Job,
    budget: OwnedSemaphorePermit,
    keys: Keys,
    arrival: u64,
}

/// An event a lane is done with (delivered, parked, dropped or left
/// unsettled).
struct Finished {
    keys: Keys,
    arrival: u64,
    lane: usize,
}

impl Lanes {
    fn new(ctx: &DeliveryContext, control: &Arc<HookControl>) -> Lanes {
        let (finished_tx, done) = mpsc::unbounded_channel();
        Lanes {
            ctx: ctx.clone(),
            control: Arc::clone(control),
            lanes: Vec::new(),
            tasks: FuturesUnordered::new(),
            most: tokio::runtime::Handle::current()
                .metrics()
                .num_workers()
                .max(1),
            finished_tx,
            done,
        }
    }

    /// Start an event in the lane with the fewest running, or in a new
    /// lane when every lane has some and more may open.
    fn start(&mut self, started: Started) {
        let least = self
            .lanes
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| l.running)
            .map(|(i, l)| (i, l.running));
        let lane = match least {
            Some((i, running)) if running == 0 || self.lanes.len() == self.most => i,
            _ => self.open(),
        };
        self.lanes[lane].running += 1;
        // A lane ends only when its sender is dropped (in `close`).
        let _ = self.lanes[lane].tx.send(started);
    }

    fn open(&mut self) -> usize {
        let index = self.lanes.len();
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_lane(
            index,
            rx,
            self.finished_tx.clone(),
            self.ctx.clone(),
            Arc::clone(&self.control),
        ));
        self.lanes.push(Lane {
            tx,
            task: task.abort_handle(),
            running: 0,
        });
        self.tasks.push(task);
        index
    }

    fn finished(&mut self, lane: usize) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.running -= 1;
        }
    }

    /// Events started and not finished, in all lanes.
    fn running(&self) -> usize {
        self.lanes.iter().map(|l| l.running).sum()
    }

    /// A lane ended while events ran in it: only a panic in one (a bug)
    /// ends it so, and its events would never finish. The queue fails with
    /// it, as it did when its events ran in its own task: they stay
    /// unconfirmed and are delivered again after the next start.
    fn ended(&self, ended: Result<(), JoinError>) -> ! {
        match ended {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => panic!(
                "webhook {}: a delivery lane ended with events running",
                self.control.id
            ),
        }
    }

    /// Every lane is idle: end them.
    async fn close(mut self) {
        // Their senders dropped, the lanes' loops end.
        self.lanes.clear();
        while let Some(ended) = self.tasks.next().await {
            if let Err(e) = ended {
                tracing::error!(webhook_id = self.control.id, "a delivery lane failed: {e}");
            }
        }
    }
}

/// A queue stopped midway (its task aborted when a shutdown ran out of
/// time) stops its lanes' requests with it: what they had not settled is
/// delivered again after the next start.
impl Drop for Lanes {
    fn drop(&mut self) {
        for lane in &self.lanes {
            lane.task.abort();
        }
    }
}

/// One lane: runs the events handed to it, over connections it drives,
/// until its queue drops its sender and nothing runs.
async fn run_lane(
    index: usize,
    mut started: mpsc::UnboundedReceiver<Started>,
    finished: mpsc::UnboundedSender<Finished>,
    ctx: DeliveryContext,
    control: Arc<HookControl>,
) {
    // Declared first: they outlive the requests running on them.
    let connections = TaskConnections::new(ctx.http.clone());
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            item = started.recv(), if open => match item {
                Some(Started { job, budget, keys, arrival }) => {
                    let (ctx, control, connections) = (&ctx, &control, &connections);
                    running.push(async move {
                        run_job(ctx, control, Sender::Task(connections), job).await;
                        drop(budget);
                        Finished { keys, arrival, lane: index }
                    });
                }
                None => open = false,
            },
            Some(done) = running.next(), if !running.is_empty() => {
                // The queue outlives its lanes.
                let _ = finished.send(done);
            }
            // Never ends: moves the connections' bytes.
            _ = connections.drive(), if open || !running.is_empty() => {}
            else => break,
        }
    }
}

/// Deliver, park or drop one job, then settle its ticket. If parking fails
/// (database unreachable) the ticket is left unsettled: the event stays
/// unconfirmed and is read again after a restart, never lost.
async fn run_job(ctx: &DeliveryContext, control: &HookControl, http: Sender<'_>, job: Job) {
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
    let outcome = deliver(ctx, control, http, &job.event, job.event_id, &job.body, 0).await;
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
