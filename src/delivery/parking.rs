//! Parking: when a hook's events go to the `delivery` table instead of its
//! target, and the bound on how many a hook may park.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::hook::{HookControl, Mode, ParkReason};
use super::parked::ParkedEvent;
use super::{DeliveryContext, Job};
use crate::config::DeliveryConfig;

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
