//! Statistics (`webhook_usage`) and the states delivery decides, written
//! from the in-memory [`UsageBook`] in batches.

use std::collections::HashMap;
use std::time::Duration;

use super::{SqlResult, Store};
use crate::delivery::{UsageBook, UsageDelta};

impl Store {
    /// Write one batch of recorded outcomes.
    pub async fn write_usage(&self, batch: &HashMap<i32, UsageDelta>) -> anyhow::Result<()> {
        let upsert = format!(
            "INSERT INTO {} AS u (webhook_id, total_calls, total_errors, \
                 consecutive_errors, last_error, last_call, last_success, last_failure, \
                 total_throttled, last_throttled, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $10, $11, now()) \
             ON CONFLICT (webhook_id) DO UPDATE SET \
                 total_calls = u.total_calls + EXCLUDED.total_calls, \
                 total_errors = u.total_errors + EXCLUDED.total_errors, \
                 consecutive_errors = CASE WHEN $9 THEN EXCLUDED.consecutive_errors \
                                           ELSE u.consecutive_errors + EXCLUDED.consecutive_errors END, \
                 last_error = coalesce(EXCLUDED.last_error, u.last_error), \
                 last_call = coalesce(EXCLUDED.last_call, u.last_call), \
                 last_success = coalesce(EXCLUDED.last_success, u.last_success), \
                 last_failure = coalesce(EXCLUDED.last_failure, u.last_failure), \
                 total_throttled = u.total_throttled + EXCLUDED.total_throttled, \
                 last_throttled = coalesce(EXCLUDED.last_throttled, u.last_throttled), \
                 updated = now()",
            self.table("webhook_usage")
        );
        let upsert = self
            .client
            .prepare(&upsert)
            .await
            .sql("preparing the usage upsert")?;
        for (id, d) in batch {
            if d.calls > 0 {
                self.client
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
                            &d.throttled,
                            &d.last_throttled,
                        ],
                    )
                    .await
                    .sql(format!("writing webhook_usage for webhook_id {id}"))?;
            }
            if let Some(state) = d.new_state {
                self.set_webhook_state(*id, state).await?;
            }
        }
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
