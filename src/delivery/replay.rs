//! The replayer: a hook's parked events, delivered in commit order once
//! the hook is Active, not paused, and its queue is empty, then back to
//! live delivery.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::hook::{HookControl, Mode};
use super::retry::{deliver, Settled};
use super::DeliveryContext;
use crate::registry::WebhookState;

/// Parked events fetched at a time: bounds the replayer's memory.
const BATCH: i64 = 100;

/// Deliver a hook's parked events in commit order, then switch it back to
/// live delivery. Ends early when the hook trips, is stopped, paused, or
/// is no longer Active; its events stay parked.
pub(super) async fn run_replayer(ctx: DeliveryContext, control: Arc<HookControl>) {
    loop {
        // Earlier events still in the queue go first: per-row order.
        while control.in_flight() > 0 && !control.is_tripped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match replay_parked(&ctx, &control).await {
            Ok(true) => {
                tracing::info!(
                    webhook_id = control.id,
                    "parked events delivered; back to live delivery"
                );
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(webhook_id = control.id, "replaying parked events: {e:#}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        }
        control.replaying.store(false, Ordering::Release);
        // Re-activated while finishing: go on instead of leaving it parked.
        let again = control.current().state == WebhookState::Active
            && !control.is_tripped()
            && !control.is_gone()
            && !control.is_paused()
            && matches!(*control.mode.lock().await, Mode::Parking(_))
            && !control.replaying.swap(true, Ordering::AcqRel);
        if !again {
            return;
        }
    }
}

/// Returns whether the hook caught up (and is Live again).
async fn replay_parked(ctx: &DeliveryContext, control: &HookControl) -> anyhow::Result<bool> {
    let store = &ctx.store;
    loop {
        if control.is_tripped()
            || control.is_gone()
            || control.is_paused()
            || control.current().state != WebhookState::Active
        {
            return Ok(false);
        }
        let batch = store.next_parked(control.id, BATCH).await?;
        if batch.is_empty() {
            // Under the mode lock no event can be parked meanwhile.
            let mut mode = control.mode.lock().await;
            // Live only when nothing is parked, nothing is still on the
            // queue (a running job may be about to park itself) and
            // nothing is on its way to the table.
            if control.in_flight() == 0
                && control.unwritten() == 0
                && !control.is_tripped()
                && !control.is_paused()
                && store.parked_count(control.id).await? == 0
            {
                *mode = Mode::Live;
                return Ok(true);
            }
            drop(mode);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut delivered = Vec::with_capacity(batch.len());
        for row in batch {
            let settled = deliver(
                ctx,
                control,
                &row.event,
                row.event_id,
                &row.body,
                u32::try_from(row.attempts).unwrap_or(0),
            )
            .await;
            match settled {
                Settled::Delivered => delivered.push(row.delivery_id),
                Settled::Dropped
                | Settled::Unsettled
                | Settled::Stopped
                | Settled::Paused { .. } => {
                    remove_delivered(store.as_ref(), control, &delivered).await?;
                    return Ok(false);
                }
                Settled::Tripped { attempts, error } => {
                    remove_delivered(store.as_ref(), control, &delivered).await?;
                    store
                        .record_parked_failure(row.delivery_id, attempts, error.as_deref())
                        .await?;
                    return Ok(false);
                }
            }
        }
        remove_delivered(store.as_ref(), control, &delivered).await?;
    }
}

async fn remove_delivered(
    store: &dyn super::DeliveryStore,
    control: &HookControl,
    delivered: &[i64],
) -> anyhow::Result<()> {
    store.remove_parked(delivered).await?;
    control.parked_removed(delivered.len());
    Ok(())
}
