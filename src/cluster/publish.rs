//! The capture's side of the bus: each job the leader's pipeline matched
//! is published to its hook's shard subject, and its ticket settles when
//! JetStream has stored it, not when its target answers. So the slot is
//! confirmed as fast as JetStream stores, whatever the targets do, and
//! never past a job JetStream has not acknowledged.
//!
//! Publishes are pipelined (up to [`MAX_IN_FLIGHT`] unacknowledged) and
//! their acknowledgements taken in publish order. A publish refused (the
//! stream full, no quorum, a timeout) is sent again, with the same message
//! id, until it is stored, and no new job is published meanwhile: the
//! reader waits, holding the slot, as it does when its in-flight budget is
//! spent. Jobs already in flight behind a refused one may be stored before
//! it (the one window where a row's order on the bus can break); the
//! message id keeps a job stored before its answer was lost from being
//! stored twice.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, context::PublishError};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::leases::shard_of;
use super::message::{encode, message_id};
use crate::checkpoint::Ticket;
use crate::config::ClusterConfig;
use crate::delivery::Job;
use crate::metrics::Metrics;

/// Publishes sent and not yet acknowledged: enough to keep a remote
/// JetStream busy, few enough that a refusal leaves a small window.
pub const MAX_IN_FLIGHT: usize = 1024;
/// The first pause before a refused publish is sent again; it doubles up
/// to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(200);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// One publish on its way, with what settles when it is stored.
struct InFlight {
    subject: String,
    id: String,
    payload: Bytes,
    ack: Option<PublishAckFuture>,
    ticket: Ticket,
    _permit: OwnedSemaphorePermit,
}

/// Publishes the capture's jobs; one per session.
pub struct Publisher {
    js: jetstream::Context,
    cluster: ClusterConfig,
    metrics: Arc<Metrics>,
    /// Permits for publishes not yet acknowledged.
    window: Arc<Semaphore>,
    /// Publishes waiting for their acknowledgement, in order.
    acks: mpsc::UnboundedSender<InFlight>,
    /// True while a refused publish is being sent again: nothing new goes.
    stalled: watch::Receiver<bool>,
    acker: JoinHandle<()>,
}

impl Publisher {
    pub fn new(js: jetstream::Context, cluster: ClusterConfig, metrics: Arc<Metrics>) -> Self {
        let (acks, pending) = mpsc::unbounded_channel();
        let (stall, stalled) = watch::channel(false);
        let acker = tokio::spawn(take_acks(js.clone(), cluster.clone(), pending, stall));
        Publisher {
            js,
            cluster,
            metrics,
            window: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            acks,
            stalled,
            acker,
        }
    }

    /// Publish `job` (which committed at `commit_time`, PostgreSQL
    /// microseconds) to its shard. Returns once it is sent; its ticket
    /// settles once JetStream has stored it. Waits while the window is
    /// full or a refused publish is being sent again.
    pub async fn publish(&mut self, job: Job, commit_time: i64) -> anyhow::Result<()> {
        self.metrics.events_matched.inc();
        // The semaphore is never closed.
        let permit = Arc::clone(&self.window)
            .acquire_owned()
            .await
            .map_err(|_| anyhow::anyhow!("the publish window closed"))?;
        // A closed channel means the acker ended, which only a shutdown does.
        let _ = self.stalled.wait_for(|stalled| !*stalled).await;
        let subject = self
            .cluster
            .shard_subject(shard_of(job.hook.id, self.cluster.shards));
        let id = message_id(&job);
        let payload = encode(&job, commit_time);
        let mut pause = FIRST_RETRY_PAUSE;
        let ack = loop {
            match send(&self.js, &subject, &id, &payload).await {
                Ok(ack) => break ack,
                Err(e) => {
                    warn_refused(&self.cluster, &subject, &e, pause);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        };
        let in_flight = InFlight {
            subject,
            id,
            payload,
            ack: Some(ack),
            ticket: job.ticket,
            _permit: permit,
        };
        if self.acks.send(in_flight).is_err() {
            anyhow::bail!("the publish acknowledgements task ended");
        }
        Ok(())
    }

    /// Publishes not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.window.available_permits()
    }

    /// Wait up to `timeout` for every publish to be acknowledged; false
    /// when some were not (they stay unconfirmed and are published again
    /// after the next start, the message id dropping those JetStream had
    /// stored).
    pub async fn drain(self, timeout: Duration) -> bool {
        let Publisher {
            window,
            acks,
            mut acker,
            ..
        } = self;
        drop(acks);
        let done = tokio::time::timeout(timeout, &mut acker).await.is_ok();
        if !done {
            acker.abort();
        }
        done && window.available_permits() == MAX_IN_FLIGHT
    }
}

async fn send(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    payload: &Bytes,
) -> Result<PublishAckFuture, PublishError> {
    let message = PublishMessage::build()
        .payload(payload.clone())
        .message_id(id);
    js.send_publish(subject.to_owned(), message).await
}

/// Take the acknowledgements in publish order; send a refused publish
/// again until it is stored, stalling new publishes meanwhile.
async fn take_acks(
    js: jetstream::Context,
    cluster: ClusterConfig,
    mut pending: mpsc::UnboundedReceiver<InFlight>,
    stall: watch::Sender<bool>,
) {
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    loop {
        let next = match queue.pop_front() {
            Some(next) => next,
            None => match pending.recv().await {
                Some(next) => next,
                None => return,
            },
        };
        // Keep the channel drained so the ack futures behind wait here,
        // in order.
        while let Ok(more) = pending.try_recv() {
            queue.push_back(more);
        }
        let mut item = next;
        let mut pause = FIRST_RETRY_PAUSE;
        loop {
            let result = match item.ack.take() {
                Some(ack) => ack.await,
                None => match send(&js, &item.subject, &item.id, &item.payload).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(_) => break,
                Err(e) => {
                    stall.send_replace(true);
                    warn_refused(&cluster, &item.subject, &e, pause);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
            }
        }
        if *stall.borrow() {
            stall.send_replace(false);
            tracing::info!(stream = %cluster.stream, "the stream takes jobs again");
        }
        item.ticket.settle();
    }
}

/// A publish JetStream did not store: said with the stream and its limits,
/// since a full stream is the operator's to widen or drain.
fn warn_refused(cluster: &ClusterConfig, subject: &str, e: &PublishError, pause: Duration) {
    let why = match e.kind() {
        PublishErrorKind::StreamNotFound => format!(
            "stream {:?} does not exist (it is created when walhook run starts)",
            cluster.stream
        ),
        PublishErrorKind::TimedOut => "no acknowledgement in time (NATS busy, or electing a \
                                       stream leader)"
            .to_owned(),
        _ => format!(
            "{e} (when the stream is full: its limits are cluster.max_bytes = {} and \
             cluster.max_age = {:?}; it takes jobs again as the instances deliver them)",
            cluster.max_bytes, cluster.max_age
        ),
    };
    tracing::warn!(
        stream = %cluster.stream,
        subject,
        "JetStream did not store a job: {why}; the capture waits, holding the slot, and sends \
         it again in {}",
        crate::text::human_duration(pause)
    );
}
