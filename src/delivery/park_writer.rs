//! The parking writer: the reader hands it the events it parks and goes
//! on; it writes them to `delivery` in batches, one commit per batch.
//!
//! One INSERT and one commit per parked event ran the whole pipeline at
//! the database's commit rate, so a single parked hook slowed every
//! healthy one. Here an event waits in a bounded queue, still holding its
//! share of the in-flight byte budget (memory stays bounded), and its
//! ticket is settled only once its batch is committed (the store's session
//! runs with synchronous_commit on): nothing is confirmed before it is
//! durable. Batches keep the reader's order, and parked events are read
//! back by (commit_lsn, change_index) anyway, so batching never reorders a
//! hook's events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;

use super::hook::{HookControl, ParkReason};
use super::parking::ParkedEvent;
use super::{DeliveryContext, Job};

/// A batch is written once it holds this many events...
pub(super) const BATCH_EVENTS: usize = 500;
/// ...or once its first event has waited this long.
pub(super) const BATCH_AGE: Duration = Duration::from_millis(20);
/// Events waiting to be written; past it the reader waits (they also
/// hold the byte budget, which usually binds first).
const QUEUE_EVENTS: usize = 8192;

/// An event on its way to `delivery`.
struct Unwritten {
    job: Job,
    reason: ParkReason,
    control: Arc<HookControl>,
    /// Returned to the byte budget once the event is written.
    _budget: Option<OwnedSemaphorePermit>,
}

/// The reader's side of the parking writer.
pub(super) struct ParkQueue {
    /// None once delivery is draining.
    sender: Option<mpsc::Sender<Unwritten>>,
}

impl ParkQueue {
    /// Start the writer task in `tasks`.
    pub(super) fn start(ctx: DeliveryContext, tasks: &mut JoinSet<()>) -> ParkQueue {
        let (sender, receiver) = mpsc::channel(QUEUE_EVENTS);
        tasks.spawn(run_writer(ctx, receiver));
        ParkQueue {
            sender: Some(sender),
        }
    }

    /// Hand a job to the writer. The caller holds the hook's mode lock (or
    /// has just released it) and has already counted the job in
    /// `control.unwritten` under it, so the replayer cannot switch the hook
    /// to Live while the job is still on its way to the table.
    pub(super) async fn send(
        &self,
        job: Job,
        reason: ParkReason,
        control: Arc<HookControl>,
        budget: Option<OwnedSemaphorePermit>,
    ) -> anyhow::Result<()> {
        let item = Unwritten {
            job,
            reason,
            control,
            _budget: budget,
        };
        let Some(sender) = &self.sender else {
            item.control.unwritten.fetch_sub(1, Ordering::AcqRel);
            anyhow::bail!("delivery is stopping: the event is not parked");
        };
        if let Err(mpsc::error::SendError(item)) = sender.send(item).await {
            item.control.unwritten.fetch_sub(1, Ordering::AcqRel);
            anyhow::bail!("the parking writer ended unexpectedly");
        }
        Ok(())
    }

    /// No more events: the writer writes what it holds, then ends.
    pub(super) fn close(&mut self) {
        self.sender = None;
    }
}

async fn run_writer(ctx: DeliveryContext, mut receiver: mpsc::Receiver<Unwritten>) {
    let mut batch: Vec<Unwritten> = Vec::with_capacity(BATCH_EVENTS);
    while let Some(first) = receiver.recv().await {
        batch.push(first);
        let closes = tokio::time::Instant::now() + BATCH_AGE;
        while batch.len() < BATCH_EVENTS {
            match tokio::time::timeout_at(closes, receiver.recv()).await {
                Ok(Some(item)) => batch.push(item),
                Ok(None) | Err(_) => break,
            }
        }
        let written = write_until_done(&ctx, &batch).await;
        let count = batch.len();
        for item in batch.drain(..) {
            if written {
                item.job.ticket.settle();
            }
            // Unsettled when the session ended: the event stays
            // unconfirmed and is read again by the next session.
            item.control.unwritten.fetch_sub(1, Ordering::AcqRel);
        }
        if written {
            ctx.metrics.parked_events.inc_by(count as i64);
        }
    }
}

/// Write a batch, retrying until the store takes it. Returns false when
/// the store's session ended first.
async fn write_until_done(ctx: &DeliveryContext, batch: &[Unwritten]) -> bool {
    let events: Vec<ParkedEvent<'_>> = batch
        .iter()
        .map(|item| ParkedEvent {
            webhook_id: item.job.hook.id,
            event_id: item.job.event_id,
            event: &item.job.event,
            ordering_key: &item.job.ordering_key,
            body: &item.job.body,
            reason: item.reason,
            attempts: 0,
            last_error: None,
            commit_lsn: item.job.commit_lsn,
            change_index: item.job.change_index,
        })
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
