//! When a hook's events go to the `delivery` table instead of its target,
//! and the bound on how many a hook may park.

use std::time::Duration;

use crate::config::DeliveryConfig;
use crate::delivery::hook::HookRuntime;

/// The share of `delivery.max_parked_events_per_webhook` (and of
/// `max_parked_bytes_per_webhook`), in percent, at
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

/// The warning for a hook whose parked events count `bytes` against
/// `delivery.max_parked_bytes_per_webhook` (`limit`), once they hold
/// [`PARKED_WARN_PERCENT`] of it.
pub fn parked_bytes_warning(webhook_id: i32, bytes: i64, limit: u64) -> Option<String> {
    let bytes = u64::try_from(bytes).ok()?;
    if bytes.saturating_mul(100) < limit.saturating_mul(PARKED_WARN_PERCENT) {
        return None;
    }
    Some(format!(
        "webhook_id {webhook_id} has {bytes} bytes of parked events, {}% of \
         delivery.max_parked_bytes_per_webhook ({limit}): at the limit it is set to \
         Stopped (2); fix its target and set it Active to deliver them",
        bytes.saturating_mul(100) / limit.max(1)
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
pub(in crate::delivery) fn past_bound(
    config: &DeliveryConfig,
    runtime: &HookRuntime,
    hogging: bool,
) -> bool {
    let age = runtime.backlog_age();
    age >= config.backlog_max_age
        || (age >= BEHIND && (hogging || runtime.in_flight() >= config.backlog_limit))
}
