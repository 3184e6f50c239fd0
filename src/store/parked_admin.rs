//! The statements of `walhook parked`: parked events read, sent or
//! discarded one by one or per hook, by the DBA.
//!
//! Kept apart from the daemon's own statements on `delivery` (parked.rs)
//! so that a change of the table's layout touches each side in one place.

use std::time::SystemTime;

use uuid::Uuid;

use super::{SqlResult, Store};

/// Parked events of one hook, for `walhook parked list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedSummary {
    pub webhook_id: i32,
    pub count: i64,
    /// When the oldest was parked, RFC 3339 UTC.
    pub oldest: String,
    /// How many were parked for each reason, by reason.
    pub reasons: Vec<(String, i64)>,
}

/// One parked event, whole, for `walhook parked show` and `redeliver`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParkedDetail {
    pub delivery_id: i64,
    pub webhook_id: i32,
    pub event_id: Uuid,
    pub event: String,
    pub ordering_key: String,
    /// The commit position and the change's index in its transaction: the
    /// event's place in its row's order.
    pub commit_lsn: String,
    pub change_index: i32,
    pub reason: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// RFC 3339 UTC.
    pub created: String,
    pub next_attempt: String,
    pub body: String,
}

/// Timestamps as RFC 3339 UTC text, made by the server so that no date
/// library is needed here.
const RFC3339: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

impl Store {
    /// Parked events per hook (one hook when given), by webhook_id.
    pub async fn parked_summaries(
        &self,
        webhook_id: Option<i32>,
    ) -> anyhow::Result<Vec<ParkedSummary>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT webhook_id, reason, count(*), \
                            to_char(min(created) AT TIME ZONE 'UTC', {RFC3339}) \
                       FROM {} WHERE $1::int IS NULL OR webhook_id = $1 \
                      GROUP BY 1, 2 ORDER BY 1, 2",
                    self.table("delivery")
                ),
                &[&webhook_id],
            )
            .await
            .sql("summing up parked events")?;
        let mut out: Vec<ParkedSummary> = Vec::new();
        for row in rows {
            let (id, reason, count, oldest): (i32, String, i64, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            match out.last_mut() {
                Some(last) if last.webhook_id == id => {
                    last.count += count;
                    // Fixed-width UTC text orders as time does.
                    if oldest < last.oldest {
                        last.oldest = oldest;
                    }
                    last.reasons.push((reason, count));
                }
                _ => out.push(ParkedSummary {
                    webhook_id: id,
                    count,
                    oldest,
                    reasons: vec![(reason, count)],
                }),
            }
        }
        Ok(out)
    }

    /// The parked events with this EventId: one, except in the unlikely
    /// case of two hooks' EventIds colliding, none when it is not parked.
    pub async fn parked_by_event_id(&self, event_id: Uuid) -> anyhow::Result<Vec<ParkedDetail>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT delivery_id, webhook_id, event_id::text, event::text, ordering_key, \
                            commit_lsn::text, change_index, reason, attempts, last_error::text, \
                            to_char(created AT TIME ZONE 'UTC', {RFC3339}), \
                            to_char(next_attempt AT TIME ZONE 'UTC', {RFC3339}), body \
                       FROM {} WHERE event_id = $1::text::uuid ORDER BY webhook_id",
                    self.table("delivery")
                ),
                &[&event_id.to_string()],
            )
            .await
            .sql(format!("reading parked event {event_id}"))?;
        Ok(rows
            .iter()
            .map(|r| ParkedDetail {
                delivery_id: r.get(0),
                webhook_id: r.get(1),
                event_id,
                event: r.get(3),
                ordering_key: r.get(4),
                commit_lsn: r.get(5),
                change_index: r.get(6),
                reason: r.get(7),
                attempts: r.get(8),
                last_error: r.get(9),
                created: r.get(10),
                next_attempt: r.get(11),
                body: r.get(12),
            })
            .collect())
    }

    /// Events of the same hook and row parked before this one (earlier in
    /// commit order), as (count, EventId of the first): while one is
    /// parked, sending this one would overtake it.
    pub async fn parked_before(&self, event: &ParkedDetail) -> anyhow::Result<Option<(i64, Uuid)>> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*), \
                            (array_agg(event_id::text ORDER BY commit_lsn, change_index, delivery_id))[1] \
                       FROM {} WHERE webhook_id = $1 AND ordering_key = $2 \
                        AND (commit_lsn, change_index) < ($3::text::pg_lsn, $4) \
                        AND delivery_id <> $5",
                    self.table("delivery")
                ),
                &[
                    &event.webhook_id,
                    &event.ordering_key,
                    &event.commit_lsn,
                    &event.change_index,
                    &event.delivery_id,
                ],
            )
            .await
            .sql(format!(
                "looking for events parked before {} of webhook_id {}",
                event.event_id, event.webhook_id
            ))?;
        let count: i64 = row.get(0);
        let first: Option<String> = row.get(1);
        match first {
            Some(id) if count > 0 => Ok(Some((count, id.parse()?))),
            _ => Ok(None),
        }
    }

    /// Remove one parked event; false when it was no longer there (sent or
    /// discarded meanwhile).
    pub async fn discard_parked_event(&self, delivery_id: i64) -> anyhow::Result<bool> {
        let n = self
            .client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE delivery_id = $1",
                    self.table("delivery")
                ),
                &[&delivery_id],
            )
            .await
            .sql(format!("discarding parked event {delivery_id}"))?;
        Ok(n > 0)
    }

    /// Remove a hook's parked events, those parked before `before` when
    /// given; returns how many.
    pub async fn discard_parked(
        &self,
        webhook_id: i32,
        before: Option<SystemTime>,
    ) -> anyhow::Result<u64> {
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE webhook_id = $1 \
                        AND ($2::timestamptz IS NULL OR created < $2)",
                    self.table("delivery")
                ),
                &[&webhook_id, &before],
            )
            .await
            .sql(format!(
                "discarding parked events of webhook_id {webhook_id}"
            ))
    }
}
