//! Call and error statistics (`webhook_usage`), state changes decided by
//! delivery, and parked events (`delivery`).
//!
//! Delivery records outcomes into an in-memory [`UsageBook`]; a task writes
//! the book to `webhook_usage` about once a second in one statement, never
//! once per event, so statistics cost nothing on the hot path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::registry::WebhookState;
use crate::setup::ident;

/// The most `last_error` holds, as SuperOffice's String(4000).
pub const LAST_ERROR_MAX_CHARS: usize = 4000;

#[derive(Debug, Default, Clone)]
struct UsageDelta {
    calls: i64,
    errors: i64,
    /// Failures since the last success in this batch.
    consecutive: i32,
    /// A success happened in this batch: the stored count restarts.
    reset: bool,
    last_error: Option<String>,
    last_call: Option<SystemTime>,
    last_success: Option<SystemTime>,
    last_failure: Option<SystemTime>,
    new_state: Option<WebhookState>,
}

/// Outcomes not yet written, per webhook_id.
#[derive(Debug, Clone, Default)]
pub struct UsageBook(Arc<Mutex<HashMap<i32, UsageDelta>>>);

impl UsageBook {
    fn with<R>(&self, id: i32, f: impl FnOnce(&mut UsageDelta) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of
        // counters; the counters are still usable.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(id).or_default())
    }

    pub fn success(&self, id: i32) {
        let now = SystemTime::now();
        self.with(id, |d| {
            d.calls += 1;
            d.consecutive = 0;
            d.reset = true;
            d.last_call = Some(now);
            d.last_success = Some(now);
        });
    }

    pub fn failure(&self, id: i32, error: &str) {
        let now = SystemTime::now();
        self.with(id, |d| {
            d.calls += 1;
            d.errors += 1;
            d.consecutive += 1;
            d.last_call = Some(now);
            d.last_failure = Some(now);
            d.last_error = Some(truncate_chars(error, LAST_ERROR_MAX_CHARS));
        });
    }

    /// Delivery decided the hook's state (410 Gone, too many errors).
    pub fn set_state(&self, id: i32, state: WebhookState) {
        self.with(id, |d| d.new_state = Some(state));
    }

    fn take(&self) -> HashMap<i32, UsageDelta> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Write what was recorded; on failure it is kept for the next try.
    pub async fn flush(&self, client: &tokio_postgres::Client, schema: &str) -> anyhow::Result<()> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = write_usage(client, schema, &batch).await {
            // Put the batch back, merged under anything recorded since.
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            for (id, old) in batch {
                let newer = map.remove(&id).unwrap_or_default();
                map.insert(id, merge(old, newer));
            }
            return Err(e);
        }
        Ok(())
    }
}

fn merge(old: UsageDelta, newer: UsageDelta) -> UsageDelta {
    UsageDelta {
        calls: old.calls + newer.calls,
        errors: old.errors + newer.errors,
        consecutive: if newer.reset {
            newer.consecutive
        } else {
            old.consecutive + newer.consecutive
        },
        reset: old.reset || newer.reset,
        last_error: newer.last_error.or(old.last_error),
        last_call: newer.last_call.or(old.last_call),
        last_success: newer.last_success.or(old.last_success),
        last_failure: newer.last_failure.or(old.last_failure),
        new_state: newer.new_state.or(old.new_state),
    }
}

pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

async fn write_usage(
    client: &tokio_postgres::Client,
    schema: &str,
    batch: &HashMap<i32, UsageDelta>,
) -> anyhow::Result<()> {
    let s = ident(schema);
    let upsert = format!(
        "INSERT INTO {s}.webhook_usage AS u (webhook_id, total_calls, total_errors, \
             consecutive_errors, last_error, last_call, last_success, last_failure, updated) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()) \
         ON CONFLICT (webhook_id) DO UPDATE SET \
             total_calls = u.total_calls + EXCLUDED.total_calls, \
             total_errors = u.total_errors + EXCLUDED.total_errors, \
             consecutive_errors = CASE WHEN $9 THEN EXCLUDED.consecutive_errors \
                                       ELSE u.consecutive_errors + EXCLUDED.consecutive_errors END, \
             last_error = coalesce(EXCLUDED.last_error, u.last_error), \
             last_call = coalesce(EXCLUDED.last_call, u.last_call), \
             last_success = coalesce(EXCLUDED.last_success, u.last_success), \
             last_failure = coalesce(EXCLUDED.last_failure, u.last_failure), \
             updated = now()"
    );
    let set_state =
        format!("UPDATE {s}.webhook SET state = $2 WHERE webhook_id = $1 AND state <> $2");
    let upsert = client
        .prepare(&upsert)
        .await
        .context("preparing the usage upsert")?;
    for (id, d) in batch {
        if d.calls > 0 {
            client
                .execute(
                    &upsert,
                    &[
                        id,
                        &d.calls,
                        &d.errors,
                        &d.consecutive,
                        &d.last_error,
                        &d.last_call,
                        &d.last_success,
                        &d.last_failure,
                        &d.reset,
                    ],
                )
                .await
                .with_context(|| format!("writing webhook_usage for webhook_id {id}"))?;
        }
        if let Some(state) = d.new_state {
            client
                .execute(&set_state, &[id, &(state as i16)])
                .await
                .with_context(|| format!("setting state {state} on webhook_id {id}"))?;
        }
    }
    Ok(())
}

/// Write the book every `interval` until `stop` fires, then once more.
pub async fn run_usage_writer(
    book: UsageBook,
    client: Arc<tokio_postgres::Client>,
    schema: String,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {
                if let Err(e) = book.flush(&client, &schema).await {
                    tracing::error!("final statistics write failed: {e:#}");
                }
                return;
            }
        }
        if let Err(e) = book.flush(&client, &schema).await {
            tracing::warn!("statistics write failed, will retry: {e:#}");
        }
    }
}

/// Store a hook's state now (not batched): used where an event is dropped
/// because of it.
pub async fn set_state(
    client: &tokio_postgres::Client,
    schema: &str,
    webhook_id: i32,
    state: WebhookState,
) -> anyhow::Result<()> {
    client
        .execute(
            &format!(
                "UPDATE {}.webhook SET state = $2 WHERE webhook_id = $1 AND state <> $2",
                ident(schema)
            ),
            &[&webhook_id, &(state as i16)],
        )
        .await
        .with_context(|| format!("setting state {state} on webhook_id {webhook_id}"))?;
    Ok(())
}

/// An event written to `delivery` so the slot can move on.
pub struct ParkedEvent<'a> {
    pub webhook_id: i32,
    pub event_id: uuid::Uuid,
    pub event: &'a str,
    pub ordering_key: &'a str,
    pub body: &'a [u8],
    pub reason: &'a str,
    pub attempts: i32,
    pub last_error: Option<&'a str>,
    pub commit_lsn: crate::pgoutput::Lsn,
    pub change_index: u32,
}

/// Park an event durably (the SQL session runs with synchronous_commit on,
/// whatever the server's default); parking the same event again is a no-op.
pub async fn park(
    client: &tokio_postgres::Client,
    schema: &str,
    event: &ParkedEvent<'_>,
) -> anyhow::Result<()> {
    let body = std::str::from_utf8(event.body).context("parked body is not UTF-8")?;
    let sql = format!(
        "INSERT INTO {}.delivery (webhook_id, event_id, event, ordering_key, body, reason, \
                                  attempts, last_error, commit_lsn, change_index) \
         VALUES ($1, $2::text::uuid, $3, $4, $5, $6, $7, $8, $9::text::pg_lsn, $10) \
         ON CONFLICT (webhook_id, event_id) DO NOTHING",
        ident(schema)
    );
    client
        .execute(
            &sql,
            &[
                &event.webhook_id,
                &event.event_id.to_string(),
                &event.event,
                &event.ordering_key,
                &body,
                &event.reason,
                &event.attempts,
                &event.last_error,
                &event.commit_lsn.to_string(),
                &(event.change_index as i32),
            ],
        )
        .await
        .with_context(|| {
            format!(
                "parking event {} for webhook_id {}",
                event.event_id, event.webhook_id
            )
        })?;
    Ok(())
}

/// Drop parked events older than `retention`; counted and logged per hook.
pub async fn drop_expired(
    client: &tokio_postgres::Client,
    schema: &str,
    retention: Duration,
) -> anyhow::Result<()> {
    let rows = client
        .query(
            &format!(
                "WITH gone AS (DELETE FROM {}.delivery WHERE created < now() - make_interval(secs => $1) \
                 RETURNING webhook_id) SELECT webhook_id, count(*) FROM gone GROUP BY 1",
                ident(schema)
            ),
            &[&retention.as_secs_f64()],
        )
        .await
        .context("dropping parked events past delivery.parked_retention")?;
    for row in rows {
        let id: i32 = row.get(0);
        let count: i64 = row.get(1);
        tracing::warn!(
            webhook_id = id,
            dropped = count,
            "parked events older than delivery.parked_retention ({}) were dropped undelivered",
            humantime::format_duration(retention)
        );
    }
    Ok(())
}
