//! Parked events: delivered in commit order once their hook can take them.
//!
//! The daemon runs one replayer per hook that has parked events and is
//! Active; `walhook replay` does the same on demand from the command line.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use uuid::Uuid;

use super::{deliver, DeliveryContext, HookControl, Mode, Settled};
use crate::config::Config;
use crate::registry::{Registry, WebhookState};
use crate::setup::ident;

/// Parked events fetched at a time: bounds the replayer's memory.
const BATCH: i64 = 100;

struct ParkedRow {
    delivery_id: i64,
    event_id: Uuid,
    event: String,
    body: Bytes,
    attempts: i32,
}

async fn fetch(
    sql: &tokio_postgres::Client,
    schema: &str,
    webhook_id: i32,
) -> anyhow::Result<Vec<ParkedRow>> {
    let rows = sql
        .query(
            &format!(
                "SELECT delivery_id, event_id::text, event::text, body, attempts \
                   FROM {}.delivery WHERE webhook_id = $1 \
                  ORDER BY commit_lsn, change_index, delivery_id LIMIT $2",
                ident(schema)
            ),
            &[&webhook_id, &BATCH],
        )
        .await
        .with_context(|| format!("reading parked events of webhook_id {webhook_id}"))?;
    rows.iter()
        .map(|r| {
            let id: String = r.get(1);
            Ok(ParkedRow {
                delivery_id: r.get(0),
                event_id: id
                    .parse()
                    .with_context(|| format!("parked event_id {id:?} is not a UUID"))?,
                event: r.get(2),
                body: Bytes::from(r.get::<_, String>(3)),
                attempts: r.get(4),
            })
        })
        .collect()
}

async fn remaining(
    sql: &tokio_postgres::Client,
    schema: &str,
    webhook_id: i32,
) -> anyhow::Result<i64> {
    Ok(sql
        .query_one(
            &format!(
                "SELECT count(*) FROM {}.delivery WHERE webhook_id = $1",
                ident(schema)
            ),
            &[&webhook_id],
        )
        .await?
        .get(0))
}

/// Remove delivered events, a batch at a time: after a crash between a
/// delivery and this, the event is sent again with its EventId, never lost.
async fn delete(
    sql: &tokio_postgres::Client,
    schema: &str,
    delivered: &[i64],
) -> anyhow::Result<()> {
    if delivered.is_empty() {
        return Ok(());
    }
    sql.execute(
        &format!(
            "DELETE FROM {}.delivery WHERE delivery_id = ANY ($1)",
            ident(schema)
        ),
        &[&delivered],
    )
    .await
    .with_context(|| format!("removing {} delivered parked events", delivered.len()))?;
    Ok(())
}

async fn record_failure(
    sql: &tokio_postgres::Client,
    schema: &str,
    delivery_id: i64,
    attempts: u32,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let error = error.map(|e| crate::store::truncate_chars(e, crate::store::LAST_ERROR_MAX_CHARS));
    sql.execute(
        &format!(
            "UPDATE {}.delivery SET attempts = $2, last_error = coalesce($3, last_error), \
                    next_attempt = now() WHERE delivery_id = $1",
            ident(schema)
        ),
        &[&delivery_id, &(attempts as i32), &error],
    )
    .await
    .with_context(|| format!("recording a failed attempt of parked event {delivery_id}"))?;
    Ok(())
}

/// Deliver a hook's parked events in commit order, then switch it back to
/// live delivery. Ends early when the hook trips, is stopped, or is no
/// longer Active; its events stay parked.
pub(super) async fn run_replayer(ctx: DeliveryContext, control: Arc<HookControl>) {
    loop {
        // Earlier events still on the lanes go first: per-row order.
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
        control.replaying.store(false, AtomicOrdering::Release);
        // Re-activated while finishing: go on instead of leaving it parked.
        let again = control.current().state == WebhookState::Active
            && !control.is_tripped()
            && !control.gone.load(AtomicOrdering::Acquire)
            && matches!(*control.mode.lock().await, Mode::Parking(_))
            && !control.replaying.swap(true, AtomicOrdering::AcqRel);
        if !again {
            return;
        }
    }
}

/// Returns whether the hook caught up (and is Live again).
async fn replay_parked(ctx: &DeliveryContext, control: &HookControl) -> anyhow::Result<bool> {
    loop {
        if control.is_tripped()
            || control.gone.load(AtomicOrdering::Acquire)
            || control.current().state != WebhookState::Active
        {
            return Ok(false);
        }
        let batch = fetch(&ctx.sql, &ctx.schema, control.id).await?;
        if batch.is_empty() {
            // Under the mode lock no event can be parked meanwhile.
            let mut mode = control.mode.lock().await;
            // Live only when nothing is parked and nothing is still on the
            // lanes (a lane may be about to park a job it holds).
            if control.in_flight() == 0
                && !control.is_tripped()
                && remaining(&ctx.sql, &ctx.schema, control.id).await? == 0
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
                Settled::Dropped | Settled::Abandoned => {
                    delete(&ctx.sql, &ctx.schema, &delivered).await?;
                    return Ok(false);
                }
                Settled::Tripped { attempts, error } => {
                    delete(&ctx.sql, &ctx.schema, &delivered).await?;
                    record_failure(
                        &ctx.sql,
                        &ctx.schema,
                        row.delivery_id,
                        attempts,
                        error.as_deref(),
                    )
                    .await?;
                    return Ok(false);
                }
            }
        }
        delete(&ctx.sql, &ctx.schema, &delivered).await?;
    }
}

/// `walhook replay [--webhook ID]`: one attempt per parked event, in commit
/// order, stopping a hook at its first failure so its order holds.
pub async fn run(config: Config, webhook: Option<i32>) -> anyhow::Result<()> {
    let conn = config.connection()?;
    let sql = crate::daemon::connect_sql(&conn).await?;
    let schema = &config.postgres.schema;
    let registry = Registry::load(&sql, schema).await?;
    let http = super::http_client(&config.delivery)?;
    let ids: Vec<i32> = sql
        .query(
            &format!(
                "SELECT DISTINCT webhook_id FROM {}.delivery ORDER BY 1",
                ident(schema)
            ),
            &[],
        )
        .await
        .context("listing parked events")?
        .iter()
        .map(|r| r.get(0))
        .filter(|id| webhook.is_none_or(|w| w == *id))
        .collect();
    if let Some(id) = webhook {
        if registry.get(id).is_none() {
            anyhow::bail!(
                "webhook_id {id} does not exist (or its row is invalid; see `walhook check`)"
            );
        }
    }
    if ids.is_empty() {
        println!("no parked events");
        return Ok(());
    }
    for id in ids {
        let Some(hook) = registry.get(id) else {
            println!(
                "webhook_id {id}: no valid webhook row; {} parked event(s) kept",
                remaining(&sql, schema, id).await?
            );
            continue;
        };
        let mut delivered = 0u64;
        let mut failure = None;
        'hook: loop {
            let batch = fetch(&sql, schema, id).await?;
            if batch.is_empty() {
                break;
            }
            for row in batch {
                let outcome = super::attempt(
                    &http,
                    &config.delivery,
                    &super::Attempt {
                        hook,
                        event: &row.event,
                        event_id: row.event_id,
                        body: &row.body,
                        retry: u32::try_from(row.attempts).unwrap_or(0),
                    },
                )
                .await;
                match outcome {
                    super::DeliveryOutcome::Delivered(_) => {
                        delete(&sql, schema, &[row.delivery_id]).await?;
                        delivered += 1;
                    }
                    super::DeliveryOutcome::Gone => {
                        failure = Some("HTTP 410 Gone".to_owned());
                        break 'hook;
                    }
                    super::DeliveryOutcome::Failed { error, .. } => {
                        record_failure(
                            &sql,
                            schema,
                            row.delivery_id,
                            u32::try_from(row.attempts).unwrap_or(0) + 1,
                            Some(&error),
                        )
                        .await?;
                        failure = Some(error);
                        break 'hook;
                    }
                }
            }
        }
        let left = remaining(&sql, schema, id).await?;
        match failure {
            None => println!("webhook_id {id}: delivered {delivered} parked event(s)"),
            Some(error) => println!(
                "webhook_id {id}: delivered {delivered}, stopped at a failure with {left} left: {}",
                error.lines().next().unwrap_or("")
            ),
        }
    }
    Ok(())
}
