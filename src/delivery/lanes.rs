//! A hook's lanes: FIFO tasks that deliver, park or drop one job at a time,
//! so the events of one row keep commit order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use super::hook::{HookControl, Mode, ParkReason};
use super::parking::park_until_done;
use super::retry::{deliver, Settled};
use super::{DeliveryContext, Job};

pub(super) enum LaneItem {
    Job(Box<Queued>),
    /// Holds the lane until another lane's job is done.
    Barrier {
        reached: oneshot::Sender<()>,
        release: watch::Receiver<bool>,
    },
}

pub(super) struct Queued {
    pub job: Job,
    /// [`epoch_millis`](super::hook::epoch_millis) when it was queued.
    pub enqueued: u64,
    /// Barriers in other lanes that must be reached first.
    pub wait_for: Vec<oneshot::Receiver<()>>,
    pub release: Option<watch::Sender<bool>>,
    /// The job's share of the in-flight byte budget, returned when done.
    pub budget: OwnedSemaphorePermit,
}

pub(super) async fn run_lane(
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
                    budget,
                } = *queued;
                control.lane_heads[lane].store(enqueued, Ordering::Release);
                for barrier in wait_for {
                    let _ = barrier.await;
                }
                run_job(&ctx, &control, job).await;
                drop(budget);
                if let Some(release) = release {
                    let _ = release.send(true);
                }
                control.lane_heads[lane].store(0, Ordering::Release);
                control.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
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
    // A hook that went to parking while this job waited in its lane parks
    // it too, so its queue frees the byte budget at once; the replayer
    // delivers it in commit order once the lanes are empty.
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
                &job,
                ParkReason::TooManyErrors,
                attempts as i32,
                error.as_deref(),
            )
            .await
            {
                control.parked_added(1);
                job.ticket.settle();
            }
        }
    }
}
