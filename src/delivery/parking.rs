//! Parking: when a hook's events go to the `delivery` table instead of its
//! target, and the interface through which delivery stores them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinSet;
use uuid::Uuid;

use super::hook::{HookControl, Mode, ParkReason};
use super::request::{HookPart, SharedBody};
use super::{DeliveryContext, Job, OrderScope};
use crate::config::DeliveryConfig;
use crate::pgoutput::Lsn;
use crate::registry::WebhookState;

/// What delivery stores: parked events, read back in commit order, and the
/// hook states it decides. The store implements it for PostgreSQL; tests
/// implement it in memory.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Store an event durably; storing the same event again is a no-op.
    async fn park(&self, event: &ParkedEvent<'_>) -> anyhow::Result<()>;
    /// Store events durably in one commit; events already stored are
    /// skipped.
    async fn park_batch(&self, events: &[ParkedEvent<'_>]) -> anyhow::Result<()>;
    /// A hook's parked events after position `after` (from the first when
    /// None), at most `limit`, in commit order.
    async fn next_parked(
        &self,
        webhook_id: i32,
        after: Option<Position>,
        limit: i64,
    ) -> anyhow::Result<Vec<ParkedRow>>;
    async fn parked_count(&self, webhook_id: i32) -> anyhow::Result<i64>;
    /// Remove a hook's delivered events.
    async fn remove_parked(&self, webhook_id: i32, delivered: &[Position]) -> anyhow::Result<()>;
    /// Remove the changes' payloads at `positions` that no parked event
    /// holds any more. Only the daemon, whose one session also parks,
    /// calls it.
    async fn release_payloads(&self, positions: &[Position]) -> anyhow::Result<()>;
    async fn record_parked_failure(
        &self,
        webhook_id: i32,
        position: Position,
        attempts: u32,
        error: Option<&str>,
    ) -> anyhow::Result<()>;
    /// Bring the planner's statistics of the parked tables up to date
    /// before a replay reads them in batches (best effort).
    async fn refresh_statistics(&self) {}
    /// Store a hook's state now (not batched with the statistics).
    async fn store_state(&self, webhook_id: i32, state: WebhookState) -> anyhow::Result<()>;
    /// The store's session has ended: what is not stored yet stays
    /// unconfirmed and is read again by the next session.
    fn is_closed(&self) -> bool;
}

/// A change's place in commit order: its transaction's commit position
/// and its index in the transaction. With the hook, it names a parked
/// event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub commit_lsn: Lsn,
    pub change_index: u32,
}

/// An event to park.
pub struct ParkedEvent<'a> {
    pub webhook_id: i32,
    pub event_id: Uuid,
    pub event: &'a str,
    pub ordering_key: &'a str,
    pub scope: &'a OrderScope,
    /// The change's body parts shared by its hooks, stored once per change.
    pub shared: &'a SharedBody,
    pub body: ParkedBody<'a>,
    pub reason: ParkReason,
    pub attempts: i32,
    pub last_error: Option<&'a str>,
    pub position: Position,
}

/// What a parked event stores of its own body.
pub enum ParkedBody<'a> {
    /// The hook's part; the body is assembled from it and the shared parts.
    Assembled(HookPart),
    /// The whole body, rendered for this hook alone.
    Whole(&'a [u8]),
}

impl<'a> ParkedEvent<'a> {
    /// The parked form of `job`.
    pub(super) fn of(
        job: &'a Job,
        reason: ParkReason,
        attempts: i32,
        last_error: Option<&'a str>,
    ) -> ParkedEvent<'a> {
        ParkedEvent {
            webhook_id: job.hook.id,
            event_id: job.event_id,
            event: &job.event,
            ordering_key: &job.ordering_key,
            scope: &job.scope,
            shared: &job.shared,
            body: if job.body_shared {
                ParkedBody::Assembled(HookPart::of(&job.hook))
            } else {
                ParkedBody::Whole(&job.body)
            },
            reason,
            attempts,
            last_error,
            position: Position {
                commit_lsn: job.commit_lsn,
                change_index: job.change_index,
            },
        }
    }
}

/// A parked event read back for delivery.
#[derive(Debug, Clone)]
pub struct ParkedRow {
    pub position: Position,
    pub event_id: Uuid,
    pub event: String,
    pub ordering_key: String,
    pub scope: OrderScope,
    pub body: Bytes,
    pub attempts: i32,
}

/// The share of `delivery.max_parked_events_per_webhook`, in percent, at
/// which `check`, `status` and the daemon warn: well before the limit stops
/// the hook.
pub const PARKED_WARN_PERCENT: u64 = 80;

/// The warning for a hook with `parked` events against `limit`, once it
/// holds [`PARKED_WARN_PERCENT`] of it.
pub fn parked_limit_warning(webhook_id: i32, parked: i64, limit: u64) -> Option<String> {
    let parked = u64::try_from(parked).ok()?;
    if parked.saturating_mul(100) < limit.saturating_mul(PARKED_WARN_PERCENT) {
        return None;
    }
    Some(format!(
        "webhook_id {webhook_id} has {parked} parked events, {}% of \
         delivery.max_parked_events_per_webhook ({limit}): at the limit it is set to \
         Stopped (2); fix its target and set it Active to deliver them",
        parked.saturating_mul(100) / limit.max(1)
    ))
}

/// A hook this far behind, with `backlog_limit` events queued, is not
/// keeping up: its new events are parked. A hook that is merely catching
/// up on a burst stays below it.
const BEHIND: Duration = Duration::from_secs(10);

/// Whether a hook's backlog is past its bound: its oldest queued event has
/// waited `backlog_max_age`, or it is more than [`BEHIND`] behind while it
/// has `backlog_limit` events queued or holds most of a spent byte budget
/// that other hooks wait for (`hogging`).
pub(super) fn past_bound(config: &DeliveryConfig, control: &HookControl, hogging: bool) -> bool {
    let age = control.backlog_age();
    age >= config.backlog_max_age
        || (age >= BEHIND && (hogging || control.in_flight() >= config.backlog_limit))
}

/// Switch a live hook to parking for its backlog, and start its replayer.
pub(super) fn start_parking(
    tasks: &mut JoinSet<()>,
    ctx: &DeliveryContext,
    control: &Arc<HookControl>,
    mode: &mut Mode,
) {
    tracing::warn!(
        webhook_id = control.id,
        backlog = control.in_flight(),
        behind_secs = control.backlog_age().as_secs(),
        "backlog past its bound: parking this hook's events until it catches up"
    );
    *mode = Mode::Parking(ParkReason::Backlog);
    if !control.replaying.swap(true, Ordering::AcqRel) {
        tasks.spawn(super::replay::run_replayer(
            ctx.clone(),
            Arc::clone(control),
        ));
    }
}

pub(super) async fn park_job(
    ctx: &DeliveryContext,
    job: &Job,
    reason: ParkReason,
    attempts: i32,
    last_error: Option<&str>,
) -> anyhow::Result<()> {
    ctx.metrics.parked_events.inc();
    ctx.store
        .park(&ParkedEvent::of(job, reason, attempts, last_error))
        .await
}

/// Park, retrying until the store takes it: the job waits rather than
/// leave its transaction unconfirmed for the rest of the session. Returns
/// false when the store's session ended first: the event stays
/// unconfirmed and is read again by the next session, never lost.
pub(super) async fn park_until_done(
    ctx: &DeliveryContext,
    job: &Job,
    reason: ParkReason,
    attempts: i32,
    error: Option<&str>,
) -> bool {
    let mut wait = Duration::from_secs(1);
    while let Err(e) = park_job(ctx, job, reason, attempts, error).await {
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
