//! A hook's delivery lanes: the tasks its started events run in, each
//! driving its own HTTP/1.1 connections, and what running one event
//! means (deliver, park or drop it, then settle its ticket).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::{AbortHandle, JoinError, JoinHandle};

use crate::delivery::context::DeliveryContext;
use crate::delivery::hook::order::Keys;
use crate::delivery::hook::{HookRuntime, ParkReason};
use crate::delivery::http::{Sender, TaskConnections};
use crate::delivery::job::Job;
use crate::delivery::parking::park_until_done;
use crate::delivery::send::{deliver, From, Outgoing, SendResult};

/// Requests a lane has in flight before the hook opens another. A lane
/// costs its task, channel and connections (some 30 KiB with one idle
/// connection); with 1,000 hooks of one or two requests each, a lane per
/// request held 3,000 connections, while their lanes spread over the
/// workers anyway. A single busy hook still gets a lane per worker.
const LANE_FILL: usize = 4;

/// The tasks a hook's started events run in, each with its own HTTP/1.1
/// connections ([`TaskConnections`]), which it drives itself: an answer
/// wakes the task whose request waits for it, and no other. One task would
/// hold a busy hook to one core; so a hook has up to one lane per runtime
/// worker, opened as its events in flight need them.
pub(super) struct Lanes {
    ctx: DeliveryContext,
    runtime: Arc<HookRuntime>,
    lanes: Vec<Lane>,
    /// Every lane's task, to see one end.
    pub tasks: FuturesUnordered<JoinHandle<()>>,
    most: usize,
    finished_tx: mpsc::UnboundedSender<Finished>,
    pub done: mpsc::UnboundedReceiver<Finished>,
    /// The requests the hook may have in flight now (its limit and its
    /// share of the shared pool): see `set_allowed`.
    allowed: usize,
}

struct Lane {
    tx: mpsc::UnboundedSender<Started>,
    task: AbortHandle,
    running: usize,
    /// The most idle connections the lane keeps.
    idle_cap: Arc<AtomicUsize>,
}

/// An event handed to a lane (the job boxed, as in [`Queued`](super::Queued)).
pub(super) struct Started {
    pub job: Box<Job>,
    pub budget: OwnedSemaphorePermit,
    pub keys: Keys,
    pub arrival: u64,
}

/// An event a lane is done with (delivered, parked, dropped or left
/// unsettled).
pub(super) struct Finished {
    pub keys: Keys,
    pub arrival: u64,
    pub lane: usize,
}

impl Lanes {
    pub(super) fn new(ctx: &DeliveryContext, runtime: &Arc<HookRuntime>) -> Lanes {
        let (finished_tx, done) = mpsc::unbounded_channel();
        Lanes {
            ctx: ctx.clone(),
            runtime: Arc::clone(runtime),
            lanes: Vec::new(),
            tasks: FuturesUnordered::new(),
            most: tokio::runtime::Handle::current()
                .metrics()
                .num_workers()
                .max(1),
            finished_tx,
            done,
            allowed: usize::MAX,
        }
    }

    /// What the hook may have in flight now. Each lane keeps at most that
    /// many idle connections, and a lane other than the first keeps none
    /// while nothing runs in it: events fill the lanes in order, so a lane
    /// opened in a burst would otherwise hold a connection for the idle
    /// timeout, and over a long fan-out ever more hooks held one such.
    pub(super) fn set_allowed(&mut self, allowed: usize) {
        self.allowed = allowed;
        for (index, lane) in self.lanes.iter().enumerate() {
            let cap = if index == 0 || lane.running > 0 {
                allowed
            } else {
                0
            };
            lane.idle_cap.store(cap, Ordering::Relaxed);
        }
    }

    /// Start an event in the first lane with fewer than [`LANE_FILL`]
    /// running, else in a new lane while more may open, else in the lane
    /// with the fewest running.
    pub(super) fn start(&mut self, started: Started) {
        let lane = match self.lanes.iter().position(|l| l.running < LANE_FILL) {
            Some(i) => i,
            None if self.lanes.len() < self.most => self.open(),
            None => self
                .lanes
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| l.running)
                .map_or(0, |(i, _)| i),
        };
        self.lanes[lane].running += 1;
        // It runs something now: see `set_allowed`.
        self.lanes[lane]
            .idle_cap
            .store(self.allowed, Ordering::Relaxed);
        // A lane ends only when its sender is dropped (in `close`).
        let _ = self.lanes[lane].tx.send(started);
    }

    fn open(&mut self) -> usize {
        let index = self.lanes.len();
        let (tx, rx) = mpsc::unbounded_channel();
        let idle_cap = Arc::new(AtomicUsize::new(self.allowed));
        let task = tokio::spawn(run_lane(
            index,
            rx,
            self.finished_tx.clone(),
            self.ctx.clone(),
            Arc::clone(&self.runtime),
            Arc::clone(&idle_cap),
        ));
        self.lanes.push(Lane {
            tx,
            task: task.abort_handle(),
            running: 0,
            idle_cap,
        });
        self.tasks.push(task);
        index
    }

    pub(super) fn finished(&mut self, lane: usize) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.running -= 1;
        }
    }

    /// Events started and not finished, in all lanes.
    pub(super) fn running(&self) -> usize {
        self.lanes.iter().map(|l| l.running).sum()
    }

    /// A lane ended while events ran in it: only a panic in one (a bug)
    /// ends it so, and its events would never finish. The queue fails with
    /// it, as it did when its events ran in its own task: they stay
    /// unconfirmed and are delivered again after the next start.
    pub(super) fn ended(&self, ended: Result<(), JoinError>) -> ! {
        match ended {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => panic!(
                "webhook {}: a delivery lane ended with events running",
                self.runtime.id()
            ),
        }
    }

    /// Every lane is idle: end them.
    pub(super) async fn close(mut self) {
        // Their senders dropped, the lanes' loops end.
        self.lanes.clear();
        while let Some(ended) = self.tasks.next().await {
            if let Err(e) = ended {
                tracing::error!(
                    webhook_id = self.runtime.id(),
                    "a delivery lane failed: {e}"
                );
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
    runtime: Arc<HookRuntime>,
    idle_cap: Arc<AtomicUsize>,
) {
    // Declared first: they outlive the requests running on them.
    let connections = TaskConnections::new(ctx.http.clone()).with_idle_cap(idle_cap);
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            item = started.recv(), if open => match item {
                Some(Started { job, budget, keys, arrival }) => {
                    let (ctx, runtime, connections) = (&ctx, &runtime, &connections);
                    // Boxed: the set keeps a stub of its item's size for
                    // good, and a delivery's future is some 4 KiB.
                    running.push(Box::pin(async move {
                        run_job(ctx, runtime, Sender::Task(connections), *job).await;
                        drop(budget);
                        Finished { keys, arrival, lane: index }
                    }));
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
async fn run_job(ctx: &DeliveryContext, runtime: &HookRuntime, http: Sender<'_>, job: Job) {
    if runtime.is_stopped() {
        ctx.metrics.dropped();
        job.ticket.settle();
        return;
    }
    // A hook that went to parking while this job waited in its queue parks
    // it too, so its queue frees the byte budget at once; the replayer
    // delivers it in commit order once the queue is empty.
    if let Some(reason) = runtime.parking().await {
        if park_until_done(ctx, runtime, &job, reason, 0, None).await {
            job.ticket.settle();
        }
        return;
    }
    let outgoing = Outgoing {
        event: &job.event,
        event_id: job.event_id,
        body: &job.body,
        retry: 0,
        from: From::Queue,
        trace: job.trace.as_deref(),
    };
    let outcome = deliver(ctx, runtime, http, outgoing).await;
    let (attempts, error) = match outcome {
        SendResult::Delivered | SendResult::Dropped => return job.ticket.settle(),
        SendResult::Stopped => {
            ctx.metrics.dropped();
            return job.ticket.settle();
        }
        SendResult::StoreClosed => return,
        SendResult::Tripped { attempts, error }
        | SendResult::Paused { attempts, error }
        | SendResult::Parking { attempts, error } => (attempts, error),
    };
    let reason = if runtime.is_tripped() {
        ParkReason::TooManyErrors
    } else if runtime.is_paused() {
        ParkReason::Paused
    } else {
        ParkReason::Backlog
    };
    // From now on the reader parks this hook's events too, and
    // re-activation, a resume or the dispatcher's clock starts the
    // replayer. A hook already parking keeps its reason.
    runtime.park(reason).await;
    let reason = runtime.parking().await.unwrap_or(reason);
    if park_until_done(
        ctx,
        runtime,
        &job,
        reason,
        attempts as i32,
        error.as_deref(),
    )
    .await
    {
        job.ticket.settle();
    }
}
