//! One shard's consumer: pulls the shard's jobs from its durable consumer,
//! in stream order, hands each to this instance's delivery with a watched
//! ticket, and acknowledges a message once its job reached a final outcome
//! (delivered, parked, or dropped by the state rules). A job still
//! retrying or throttled is not acknowledged; the consumer tells JetStream
//! it is still at work on it ([`PROGRESS_EVERY`]), so only the jobs of an
//! instance that died or let the shard go are delivered again.
//!
//! Order after a takeover: JetStream delivers a dead holder's unacknowledged
//! jobs again only once their ack wait runs out, and meanwhile would hand
//! out the jobs behind them. A consumer that finds jobs delivered and not
//! acknowledged when it starts therefore waits one [`ACK_WAIT`] before it
//! pulls, so the old jobs come first, as they would after a restart of a
//! single walhook.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::stream::Stream;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use super::message::{decode, BusJob};
use super::stream::{consumer_config, consumer_name, ACK_WAIT, MAX_ACK_PENDING, PROGRESS_EVERY};
use crate::checkpoint::{Settled, Settlement, Ticket};
use crate::config::ClusterConfig;

/// Jobs pulled from the server per request.
const BATCH: usize = 100;
/// How often an idle pull hears from the server, so a lost connection is
/// noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// The pause after a failed pull before the next.
const PULL_RETRY: Duration = Duration::from_secs(1);
/// The pause before a failed consumer starts again.
const RESTART_PAUSE: Duration = Duration::from_secs(2);

/// What a shard's consumer hands to the instance's delivery.
pub enum Inbound {
    /// A job of `shard`, with the ticket whose settling acknowledges it.
    Job {
        shard: u32,
        job: BusJob,
        ticket: Ticket,
    },
    /// The shard is this instance's now (the `generation`th time): its
    /// hooks' parked events and error counts are taken up. Sent by the
    /// shard's consumer before its first job.
    ShardStarted { shard: u32, generation: u64 },
    /// The shard's consumer stopped: its hooks' jobs still in delivery here
    /// are dropped (they are not acknowledged, so JetStream delivers them
    /// to the shard's next holder). Ignored when the shard was taken again
    /// since (a newer generation).
    ShardStopped { shard: u32, generation: u64 },
}

/// How a consumer is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// Stop pulling and acknowledge what settles within this time.
    Settle(Duration),
}

/// One shard's consumer, run as a task.
pub struct ShardConsumer {
    pub stream: Stream,
    pub cluster: ClusterConfig,
    pub shard: u32,
    /// How many times this instance has taken the shard, this one included.
    pub generation: u64,
    /// Delivery's inbox.
    pub deliver: mpsc::Sender<Inbound>,
}

/// A job handed to delivery and not yet acknowledged.
struct Outstanding {
    acker: Acker,
    settlement: Settlement,
}

impl ShardConsumer {
    /// Consume until asked to stop; a failure (NATS gone, the consumer
    /// deleted) starts it again after a pause, since the lease says this
    /// instance must deliver the shard.
    pub async fn run(self, mut stop: watch::Receiver<Stop>) {
        let (shard, generation) = (self.shard, self.generation);
        let _ = self
            .deliver
            .send(Inbound::ShardStarted { shard, generation })
            .await;
        loop {
            match self.consume(&mut stop).await {
                Ok(()) => break,
                Err(e) => tracing::error!(
                    shard,
                    "shard consumer: {e:#}; starting it again in {RESTART_PAUSE:?}"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(RESTART_PAUSE) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() != Stop::Run {
                break;
            }
        }
        let _ = self
            .deliver
            .send(Inbound::ShardStopped { shard, generation })
            .await;
    }

    async fn consume(&self, stop: &mut watch::Receiver<Stop>) -> anyhow::Result<()> {
        let name = consumer_name(&self.cluster, self.shard);
        let mut consumer: PullConsumer = self
            .stream
            .get_or_create_consumer(&name, consumer_config(&self.cluster, self.shard))
            .await
            .with_context(|| format!("opening consumer {name:?}"))?;
        let unacked = consumer
            .info()
            .await
            .with_context(|| format!("reading consumer {name:?}"))?
            .num_ack_pending;
        if unacked > 0 {
            tracing::info!(
                shard = self.shard,
                unacked,
                "jobs of this shard's last holder were not acknowledged: waiting {ACK_WAIT:?} \
                 for JetStream to deliver them again, before the jobs behind them"
            );
            tokio::select! {
                _ = tokio::time::sleep(ACK_WAIT) => {}
                _ = stop.changed() => return Ok(()),
            }
        }
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .with_context(|| format!("pulling from consumer {name:?}"))?;
        let wake = Arc::new(Notify::new());
        let mut outstanding: Vec<Outstanding> = Vec::new();
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut deadline: Option<Instant> = None;
        // A job pulled and not yet taken by delivery's inbox.
        let mut waiting: Option<Inbound> = None;
        tracing::info!(shard = self.shard, "delivering the shard's jobs");
        loop {
            let settling = *stop.borrow();
            if let Stop::Settle(grace) = settling {
                // A job not handed to delivery yet is handed back.
                if waiting.take().is_some() {
                    sweep(&mut outstanding).await;
                }
                let until = *deadline.get_or_insert_with(|| Instant::now() + grace);
                if outstanding.is_empty() || Instant::now() >= until {
                    break;
                }
            }
            let pulling = deadline.is_none()
                && waiting.is_none()
                && outstanding.len() < usize::try_from(MAX_ACK_PENDING)?;
            let until = deadline.unwrap_or_else(|| Instant::now() + PROGRESS_EVERY);
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = wake.notified() => sweep(&mut outstanding).await,
                _ = progress.tick() => {
                    sweep(&mut outstanding).await;
                    for held in &outstanding {
                        // A lost progress ack costs a duplicate at most.
                        let _ = held.acker.ack_with(AckKind::Progress).await;
                    }
                }
                _ = tokio::time::sleep_until(until), if deadline.is_some() => {}
                // Delivery's inbox is awaited here, not inside the pull's
                // arm, so a back-pressured delivery never holds up the
                // progress acks of the jobs it already has.
                permit = self.deliver.reserve(), if waiting.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(inbound) = waiting.take() {
                            permit.send(inbound);
                        }
                    }
                    // Delivery ended: the instance is stopping.
                    Err(_) => break,
                },
                next = messages.next(), if pulling => match next {
                    Some(Ok(message)) => {
                        let (message, acker) = message.split();
                        match decode(message.payload) {
                            Ok(job) => {
                                let (ticket, settlement) = Ticket::watched(Arc::clone(&wake));
                                waiting = Some(Inbound::Job { shard: self.shard, job, ticket });
                                outstanding.push(Outstanding { acker, settlement });
                            }
                            Err(e) => {
                                tracing::warn!(
                                    shard = self.shard,
                                    subject = %message.subject,
                                    "{e}: removed from the stream undelivered"
                                );
                                let _ = acker.ack_with(AckKind::Term).await;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(shard = self.shard, "pulling jobs: {e}");
                        tokio::time::sleep(PULL_RETRY).await;
                    }
                    None => anyhow::bail!("the pull from consumer {name:?} ended"),
                },
            }
        }
        drop(waiting);
        sweep(&mut outstanding).await;
        if !outstanding.is_empty() {
            tracing::info!(
                shard = self.shard,
                unsettled = outstanding.len(),
                "shard stopped with jobs unsettled: JetStream delivers them again to the \
                 shard's next holder"
            );
        }
        Ok(())
    }
}

/// Acknowledge the settled jobs; a job dropped unsettled (a queue ended,
/// a shutdown) is handed back at once.
async fn sweep(outstanding: &mut Vec<Outstanding>) {
    let mut i = 0;
    while i < outstanding.len() {
        let kind = match outstanding[i].settlement.state() {
            Settled::Pending => {
                i += 1;
                continue;
            }
            Settled::Settled => AckKind::Ack,
            Settled::Abandoned => AckKind::Nak(None),
        };
        let held = outstanding.swap_remove(i);
        if let Err(e) = held.acker.ack_with(kind).await {
            // Not acknowledged: delivered again after the ack wait.
            tracing::debug!("acknowledging a job: {e}");
        }
    }
}
