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

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::delivery::context::DeliveryContext;
use crate::delivery::hook::order::{order_keys, OrderGate};
use crate::delivery::hook::HookRuntime;
use crate::delivery::http::Sender;
use crate::delivery::send::{deliver, From, Outgoing, SendResult};
use crate::delivery::storage::{ParkedRow, Position};

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
pub(in crate::delivery) async fn run_replayer(ctx: DeliveryContext, runtime: Arc<HookRuntime>) {
    loop {
        // Earlier events still in the queue go first: per-row order.
        while runtime.in_flight() > 0 && !runtime.is_tripped() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match replay_parked(&ctx, &runtime).await {
            Ok(true) => {
                tracing::info!(
                    webhook_id = runtime.id(),
                    "parked events delivered; back to live delivery"
                );
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(webhook_id = runtime.id(), "replaying parked events: {e:#}");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        }
        // Re-activated while finishing: go on instead of leaving it parked.
        if !runtime.replayer_ending().await {
            return;
        }
    }
}

/// Returns whether the hook caught up (and is Live again).
async fn replay_parked(ctx: &DeliveryContext, runtime: &HookRuntime) -> anyhow::Result<bool> {
    let store = &ctx.store;
    let mut gate: OrderGate<ParkedRow> = OrderGate::new();
    let mut running = FuturesUnordered::new();
    let mut ready = Vec::new();
    // The last position read: later batches start after it.
    let mut cursor: Option<Position> = None;
    // The last read found nothing more after the cursor.
    let mut read_all = false;
    let mut delivered: Vec<(Position, i64)> = Vec::with_capacity(REMOVE_BATCH);
    // The next batch being read and the last delivered being removed run
    // beside the deliveries (the statements queue on the store's session):
    // awaited in turn, each stopped every delivery from starting.
    let mut reading: Option<BoxFuture<'_, anyhow::Result<Vec<ParkedRow>>>> = None;
    let mut removing: Option<BoxFuture<'_, anyhow::Result<()>>> = None;
    let mut failed = false;
    store.refresh_statistics().await;
    loop {
        if failed || !runtime.may_replay() {
            // What was started finishes; what waits stays parked.
            while let Some((_, parked, settled)) = running.next().await {
                settle(ctx, runtime, parked, settled, &mut delivered).await?;
            }
            if let Some(removal) = removing.take() {
                removal.await?;
            }
            remove_batch(ctx, runtime, std::mem::take(&mut delivered)).await?;
            return Ok(false);
        }
        if reading.is_none() && !read_all && gate.waiting() < READ_AHEAD {
            reading = Some(store.next_parked(runtime.id(), cursor, BATCH));
        }
        if removing.is_none() && delivered.len() >= REMOVE_BATCH {
            let batch = std::mem::replace(&mut delivered, Vec::with_capacity(REMOVE_BATCH));
            removing = Some(Box::pin(remove_batch(ctx, runtime, batch)));
        }
        runtime.held_back(gate.take_ready(runtime.concurrency_limit(), &mut ready));
        for (keys, row) in ready.drain(..) {
            running.push(async move {
                let settled = deliver(
                    ctx,
                    runtime,
                    // Its loop awaits more than its deliveries (reads,
                    // removals), so it sends over the shared pool.
                    Sender::Pool(&ctx.http),
                    Outgoing {
                        event: &row.event,
                        event_id: row.event_id,
                        body: &row.body,
                        retry: u32::try_from(row.attempts).unwrap_or(0),
                        from: From::Parked,
                        // A parked event's context is not kept: its
                        // replay starts a trace of its own.
                        trace: None,
                    },
                )
                .await;
                (keys, (row.position, row.bytes), settled)
            });
        }
        if running.is_empty() && reading.is_none() && removing.is_none() {
            if gate.waiting() > 0 || !read_all {
                continue;
            }
            // Nothing read is left: everything before the cursor is
            // delivered.
            remove_batch(ctx, runtime, std::mem::take(&mut delivered)).await?;
            if runtime
                .go_live_if_caught_up(store.parked_count(runtime.id()))
                .await?
            {
                // Its stored Properties, held by no parked event now. The
                // hook is live: a failure here is left to the retention
                // sweep, not a reason to replay again.
                if let Err(e) = store.release_properties(runtime.id()).await {
                    tracing::warn!(
                        webhook_id = runtime.id(),
                        "removing the properties of delivered parked events: {e:#}"
                    );
                }
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Read again from the first: what was read is delivered and
            // gone, so only events parked meanwhile are found.
            cursor = None;
            read_all = false;
            continue;
        }
        tokio::select! {
            Some((keys, parked, settled)) = running.next(), if !running.is_empty() => {
                gate.finished(keys);
                failed = !settle(ctx, runtime, parked, settled, &mut delivered).await?;
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
/// `parked` is the event's position and the bytes it counts.
async fn settle(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    (position, bytes): (Position, i64),
    settled: SendResult,
    delivered: &mut Vec<(Position, i64)>,
) -> anyhow::Result<bool> {
    match settled {
        SendResult::Delivered => {
            delivered.push((position, bytes));
            Ok(true)
        }
        SendResult::Dropped
        | SendResult::StoreClosed
        | SendResult::Stopped
        | SendResult::Paused { .. }
        | SendResult::Parking { .. } => Ok(false),
        SendResult::Tripped { attempts, error } => {
            ctx.store
                .record_parked_failure(runtime.id(), position, attempts, error.as_deref())
                .await?;
            Ok(false)
        }
    }
}

/// Remove delivered events from the table and their payloads no other
/// hook holds.
async fn remove_batch(
    ctx: &DeliveryContext,
    runtime: &HookRuntime,
    delivered: Vec<(Position, i64)>,
) -> anyhow::Result<()> {
    if delivered.is_empty() {
        return Ok(());
    }
    let bytes = delivered.iter().map(|(_, bytes)| bytes).sum();
    let delivered: Vec<Position> = delivered.into_iter().map(|(p, _)| p).collect();
    ctx.store.remove_parked(runtime.id(), &delivered).await?;
    runtime.parked_removed(delivered.len(), bytes);
    ctx.store.release_payloads(&delivered).await?;
    Ok(())
}
