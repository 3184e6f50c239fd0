//! The replayer: a hook's parked events, delivered in commit order once
//! the hook is Active, not paused, and its queue is empty, then back to
//! live delivery.
//!
//! It reads the table in batches, a little ahead of delivery, and starts
//! events through the same order rules as the hook's queue
//! ([`OrderGate`]) up to the hook's concurrency limit: rows go
//! concurrently, a row's events one after another in commit order, a
//! TRUNCATE alone. So a hook drains its parked events at about its live
//! rate instead of one round trip at a time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::hook::{HookControl, Mode};
use super::order::{order_keys, OrderGate};
use super::parked::{ParkedRow, Position};
use super::retry::{deliver, Settled};
use super::{DeliveryContext, Sender};
use crate::registry::WebhookState;

/// Parked events read at a time.
const BATCH: i64 = 500;
/// A new batch is read once fewer than this many read events wait: reading
/// stays ahead of delivery while at most about two batches are held.
const READ_AHEAD: usize = 500;
/// Delivered events removed from the table in one statement.
const REMOVE_BATCH: usize = 500;

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
    let mut gate: OrderGate<ParkedRow> = OrderGate::new();
    let mut running = FuturesUnordered::new();
    let mut ready = Vec::new();
    // The last position read: later batches start after it.
    let mut cursor: Option<Position> = None;
    // The last read found nothing more after the cursor.
    let mut read_all = false;
    let mut delivered: Vec<Position> = Vec::with_capacity(REMOVE_BATCH);
    // The next batch being read and the last delivered being removed run
    // beside the deliveries (the statements queue on the store's session):
    // awaited in turn, each stopped every delivery from starting.
    let mut reading: Option<BoxFuture<'_, anyhow::Result<Vec<ParkedRow>>>> = None;
    let mut removing: Option<BoxFuture<'_, anyhow::Result<()>>> = None;
    let mut failed = false;
    store.refresh_statistics().await;
    loop {
        let stopping = failed
            || control.is_tripped()
            || control.is_gone()
            || control.is_paused()
            || control.current().state != WebhookState::Active;
        if stopping {
            // What was started finishes; what waits stays parked.
            while let Some((_, position, settled)) = running.next().await {
                settle(ctx, control, position, settled, &mut delivered).await?;
            }
            if let Some(removal) = removing.take() {
                removal.await?;
            }
            remove_batch(ctx, control, std::mem::take(&mut delivered)).await?;
            return Ok(false);
        }
        if reading.is_none() && !read_all && gate.waiting() < READ_AHEAD {
            reading = Some(store.next_parked(control.id, cursor, BATCH));
        }
        if removing.is_none() && delivered.len() >= REMOVE_BATCH {
            let batch = std::mem::replace(&mut delivered, Vec::with_capacity(REMOVE_BATCH));
            removing = Some(Box::pin(remove_batch(ctx, control, batch)));
        }
        control.looked(gate.take_ready(control.concurrency_limit(), &mut ready));
        for (keys, row) in ready.drain(..) {
            running.push(async move {
                let settled = deliver(
                    ctx,
                    control,
                    // Its loop awaits more than its deliveries (reads,
                    // removals), so it sends over the shared pool.
                    Sender::Pool(&ctx.http),
                    &row.event,
                    row.event_id,
                    &row.body,
                    u32::try_from(row.attempts).unwrap_or(0),
                )
                .await;
                (keys, row.position, settled)
            });
        }
        if running.is_empty() && reading.is_none() && removing.is_none() {
            if gate.waiting() > 0 || !read_all {
                continue;
            }
            // Nothing read is left: everything before the cursor is
            // delivered.
            remove_batch(ctx, control, std::mem::take(&mut delivered)).await?;
            {
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
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Read again from the first: what was read is delivered and
            // gone, so only events parked meanwhile are found.
            cursor = None;
            read_all = false;
            continue;
        }
        tokio::select! {
            Some((keys, position, settled)) = running.next(), if !running.is_empty() => {
                gate.finished(keys);
                failed = !settle(ctx, control, position, settled, &mut delivered).await?;
            }
            batch = async { reading.as_mut().expect("guarded").await }, if reading.is_some() => {
                reading = None;
                let order = ctx.config.get().ordering;
                let batch = batch?;
                read_all = batch.len() < BATCH as usize;
                for row in batch {
                    cursor = Some(row.position);
                    gate.push(order_keys(order, &row.ordering_key, &row.scope), row);
                }
            }
            removed = async { removing.as_mut().expect("guarded").await }, if removing.is_some() => {
                removing = None;
                removed?;
            }
        }
    }
}

/// Book one finished replay; returns false when replay must stop (the
/// event stays parked, with its failed attempts counted when it tripped).
async fn settle(
    ctx: &DeliveryContext,
    control: &HookControl,
    position: Position,
    settled: Settled,
    delivered: &mut Vec<Position>,
) -> anyhow::Result<bool> {
    match settled {
        Settled::Delivered => {
            delivered.push(position);
            Ok(true)
        }
        Settled::Dropped | Settled::Unsettled | Settled::Stopped | Settled::Paused { .. } => {
            Ok(false)
        }
        Settled::Tripped { attempts, error } => {
            ctx.store
                .record_parked_failure(control.id, position, attempts, error.as_deref())
                .await?;
            Ok(false)
        }
    }
}

/// Remove delivered events from the table and their payloads no other
/// hook holds.
async fn remove_batch(
    ctx: &DeliveryContext,
    control: &HookControl,
    delivered: Vec<Position>,
) -> anyhow::Result<()> {
    if delivered.is_empty() {
        return Ok(());
    }
    ctx.store.remove_parked(control.id, &delivered).await?;
    control.parked_removed(delivered.len());
    ctx.store.release_payloads(&delivered).await?;
    Ok(())
}
