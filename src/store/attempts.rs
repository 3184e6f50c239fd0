//! The failure log, `delivery_attempt`: attempts written in batches,
//! pruned in small batches, read by `walhook webhook attempts`.

use std::time::SystemTime;

use async_trait::async_trait;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::{SqlResult, Store};
use crate::delivery::{AttemptStore, AttemptTableMissing, LoggedAttempt};

/// Rows one pruning statement removes: each DELETE holds its row locks
/// only that long, and never locks the table against the writer.
const PRUNE_BATCH: i64 = 1000;

/// An attempt as read back from `delivery_attempt`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct StoredAttempt {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub webhook_id: i32,
    pub event_id: Uuid,
    pub event: String,
    pub attempt: i32,
    pub outcome: String,
    pub status: Option<i16>,
    pub error_kind: Option<String>,
    pub duration_ms: f64,
    pub answer: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_micros(*at).to_string())
}

#[async_trait]
impl AttemptStore for Store {
    async fn log_attempts(&self, attempts: &[LoggedAttempt]) -> anyhow::Result<()> {
        let mut at = Vec::with_capacity(attempts.len());
        let mut webhook_id = Vec::with_capacity(attempts.len());
        let mut event_id = Vec::with_capacity(attempts.len());
        let mut event = Vec::with_capacity(attempts.len());
        let mut attempt = Vec::with_capacity(attempts.len());
        let mut outcome = Vec::with_capacity(attempts.len());
        let mut status = Vec::with_capacity(attempts.len());
        let mut error_kind = Vec::with_capacity(attempts.len());
        let mut duration_ms = Vec::with_capacity(attempts.len());
        let mut answer = Vec::with_capacity(attempts.len());
        for a in attempts {
            at.push(a.at);
            webhook_id.push(a.webhook_id);
            event_id.push(a.event_id);
            event.push(a.event.as_str());
            attempt.push(a.attempt);
            outcome.push(a.outcome);
            status.push(a.status);
            error_kind.push(a.error_kind);
            duration_ms.push(a.duration.as_secs_f64() * 1000.0);
            answer.push(a.answer.as_deref());
        }
        let statement = format!(
            "INSERT INTO {} (at, webhook_id, event_id, event, attempt, outcome, status, \
                             error_kind, duration_ms, answer) \
             SELECT * FROM unnest($1::timestamptz[], $2::int4[], $3::uuid[], $4::text[], \
                                  $5::int4[], $6::text[], $7::int2[], $8::text[], \
                                  $9::float8[], $10::text[])",
            self.table("delivery_attempt")
        );
        let written = self
            .client
            .execute(
                &statement,
                &[
                    &at,
                    &webhook_id,
                    &event_id,
                    &event,
                    &attempt,
                    &outcome,
                    &status,
                    &error_kind,
                    &duration_ms,
                    &answer,
                ],
            )
            .await;
        if let Err(e) = &written {
            if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
                return Err(AttemptTableMissing {
                    table: self.table_name("delivery_attempt"),
                }
                .into());
            }
        }
        written.sql(format!(
            "writing {} attempts to {}",
            attempts.len(),
            self.table_name("delivery_attempt")
        ))?;
        Ok(())
    }

    async fn prune_attempts(
        &self,
        older_than: SystemTime,
        keep_per_hook: i64,
        hooks: &[i32],
    ) -> anyhow::Result<u64> {
        let table = self.table("delivery_attempt");
        let by_age = format!(
            "DELETE FROM {table} WHERE attempt_id IN \
               (SELECT attempt_id FROM {table} WHERE at < $1 LIMIT {PRUNE_BATCH})"
        );
        let by_rows = format!(
            "DELETE FROM {table} WHERE attempt_id IN \
               (SELECT attempt_id FROM {table} WHERE webhook_id = $1 \
                 ORDER BY attempt_id DESC OFFSET $2 LIMIT {PRUNE_BATCH})"
        );
        let what = || format!("pruning {}", self.table_name("delivery_attempt"));
        let mut removed = 0;
        loop {
            let n = self
                .client
                .execute(&by_age, &[&older_than])
                .await
                .sql(what())?;
            removed += n;
            if n < PRUNE_BATCH as u64 {
                break;
            }
        }
        for hook in hooks {
            loop {
                let n = self
                    .client
                    .execute(&by_rows, &[hook, &keep_per_hook])
                    .await
                    .sql(what())?;
                removed += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(removed)
    }
}

impl Store {
    /// A hook's newest `limit` attempts since `since` (all when None),
    /// oldest first.
    pub async fn attempts(
        &self,
        webhook_id: i32,
        since: Option<SystemTime>,
        limit: i64,
    ) -> anyhow::Result<Vec<StoredAttempt>> {
        let statement = format!(
            "SELECT at, webhook_id, event_id, event, attempt, outcome, status, error_kind, \
                    duration_ms, answer \
               FROM (SELECT * FROM {} \
                      WHERE webhook_id = $1 AND ($2::timestamptz IS NULL OR at >= $2) \
                      ORDER BY attempt_id DESC LIMIT $3) newest \
              ORDER BY attempt_id",
            self.table("delivery_attempt")
        );
        Ok(self
            .client
            .query(&statement, &[&webhook_id, &since, &limit])
            .await
            .sql(format!(
                "reading webhook {webhook_id}'s attempts from {}",
                self.table_name("delivery_attempt")
            ))?
            .iter()
            .map(|r| StoredAttempt {
                at: r.get(0),
                webhook_id: r.get(1),
                event_id: r.get(2),
                event: r.get(3),
                attempt: r.get(4),
                outcome: r.get(5),
                status: r.get(6),
                error_kind: r.get(7),
                duration_ms: r.get(8),
                answer: r.get(9),
            })
            .collect())
    }
}
