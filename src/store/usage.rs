//! Statistics (`webhook_usage`) and the states delivery decides, written
//! from the in-memory [`UsageBook`] in batches: once a second, and with
//! each settled position recorded (`progress`), so that a crash never
//! loses the calls of an event it does not send again.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;

use super::{SqlResult, Store};
use crate::delivery::{UsageBook, UsageDelta};

/// One batch of counts as the columns of [`USAGE_CTES`]'s parameters.
pub(super) struct UsageColumns {
    ids: Vec<i32>,
    calls: Vec<i64>,
    errors: Vec<i64>,
    consecutive: Vec<i32>,
    last_error: Vec<Option<String>>,
    last_call: Vec<Option<SystemTime>>,
    last_success: Vec<Option<SystemTime>>,
    last_failure: Vec<Option<SystemTime>>,
    throttled: Vec<i64>,
    last_throttled: Vec<Option<SystemTime>>,
    state_ids: Vec<i32>,
    states: Vec<i16>,
}

impl UsageColumns {
    pub(super) fn of(batch: &HashMap<i32, UsageDelta>) -> UsageColumns {
        let mut c = UsageColumns {
            ids: Vec::new(),
            calls: Vec::new(),
            errors: Vec::new(),
            consecutive: Vec::new(),
            last_error: Vec::new(),
            last_call: Vec::new(),
            last_success: Vec::new(),
            last_failure: Vec::new(),
            throttled: Vec::new(),
            last_throttled: Vec::new(),
            state_ids: Vec::new(),
            states: Vec::new(),
        };
        for (&id, d) in batch {
            if d.calls > 0 {
                c.ids.push(id);
                c.calls.push(d.calls);
                c.errors.push(d.errors);
                c.consecutive.push(d.consecutive);
                c.last_error.push(d.last_error.clone());
                c.last_call.push(d.last_call);
                // A success in the batch restarts the stored consecutive
                // count: the statement reads that from last_success, which
                // is set exactly when one happened.
                c.last_success.push(d.last_success.filter(|_| d.reset));
                c.last_failure.push(d.last_failure);
                c.throttled.push(d.throttled);
                c.last_throttled.push(d.last_throttled);
            }
            if let Some(state) = d.new_state {
                c.state_ids.push(id);
                c.states.push(state as i16);
            }
        }
        c
    }

    /// The parameters `$1` to `$12` of [`Store::usage_ctes`].
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 12] {
        [
            &self.ids,
            &self.calls,
            &self.errors,
            &self.consecutive,
            &self.last_error,
            &self.last_call,
            &self.last_success,
            &self.last_failure,
            &self.throttled,
            &self.last_throttled,
            &self.state_ids,
            &self.states,
        ]
    }
}

impl Store {
    /// The CTEs that add a batch ([`UsageColumns`], parameters `$1` to
    /// `$12`) to `webhook_usage` and store the states delivery decided, for
    /// a statement to begin with: one statement, so the batch is written
    /// whole or not at all, and with whatever else the statement writes.
    pub(super) fn usage_ctes(&self) -> String {
        format!(
            "d AS (SELECT * FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::int4[], \
                       $5::text[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], \
                       $9::int8[], $10::timestamptz[]) \
                     AS d(webhook_id, calls, errors, consecutive, last_error, last_call, \
                          last_success, last_failure, throttled, last_throttled)), \
             counted AS (INSERT INTO {usage} AS u (webhook_id, total_calls, total_errors, \
                     consecutive_errors, last_error, last_call, last_success, last_failure, \
                     total_throttled, last_throttled, updated) \
                 SELECT webhook_id, calls, errors, consecutive, last_error, last_call, \
                        last_success, last_failure, throttled, last_throttled, now() FROM d \
                 ON CONFLICT (webhook_id) DO UPDATE SET \
                     total_calls = u.total_calls + EXCLUDED.total_calls, \
                     total_errors = u.total_errors + EXCLUDED.total_errors, \
                     consecutive_errors = CASE WHEN EXCLUDED.last_success IS NOT NULL \
                                               THEN EXCLUDED.consecutive_errors \
                                               ELSE u.consecutive_errors + EXCLUDED.consecutive_errors END, \
                     last_error = coalesce(EXCLUDED.last_error, u.last_error), \
                     last_call = coalesce(EXCLUDED.last_call, u.last_call), \
                     last_success = coalesce(EXCLUDED.last_success, u.last_success), \
                     last_failure = coalesce(EXCLUDED.last_failure, u.last_failure), \
                     total_throttled = u.total_throttled + EXCLUDED.total_throttled, \
                     last_throttled = coalesce(EXCLUDED.last_throttled, u.last_throttled), \
                     updated = now()), \
             decided AS (UPDATE {webhook} w SET state = s.state \
                 FROM unnest($11::int4[], $12::int2[]) AS s(webhook_id, state) \
                 WHERE w.webhook_id = s.webhook_id AND w.state <> s.state)",
            usage = self.table("webhook_usage"),
            webhook = self.table("webhook"),
        )
    }

    /// Write one batch of recorded outcomes, in one statement.
    pub async fn write_usage(&self, batch: &HashMap<i32, UsageDelta>) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let columns = UsageColumns::of(batch);
        let ids: Vec<String> = batch.keys().map(i32::to_string).collect();
        self.client
            .execute(
                &format!("WITH {} SELECT 1", self.usage_ctes()),
                &columns.params(),
            )
            .await
            .sql(format!(
                "writing {} for webhook_id {}",
                self.table_name("webhook_usage"),
                ids.join(", ")
            ))?;
        Ok(())
    }

    /// Write what the book holds; on failure it goes back into the book
    /// for the next try.
    pub async fn flush_usage(&self, book: &UsageBook) -> anyhow::Result<()> {
        let batch = book.take();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.write_usage(&batch).await {
            book.restore(batch);
            return Err(e);
        }
        Ok(())
    }

    /// Stored consecutive error counts of hooks that have one.
    pub async fn consecutive_errors(&self) -> anyhow::Result<HashMap<i32, i32>> {
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT webhook_id, consecutive_errors FROM {} WHERE consecutive_errors > 0",
                    self.table("webhook_usage")
                ),
                &[],
            )
            .await
            .sql(format!("reading {}", self.table_name("webhook_usage")))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

/// Writes the book every `interval` until `stop` fires, then once more.
pub struct UsageWriter {
    pub book: UsageBook,
    pub store: Store,
    pub interval: Duration,
}

impl UsageWriter {
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    if let Err(e) = self.store.flush_usage(&self.book).await {
                        tracing::error!("final statistics write failed: {e:#}");
                    }
                    return;
                }
            }
            if let Err(e) = self.store.flush_usage(&self.book).await {
                tracing::warn!("statistics write failed, will retry: {e:#}");
            }
        }
    }
}
