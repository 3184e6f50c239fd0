//! The statements of `walhook parked`: parked events read, sent or
//! discarded one by one or per hook, by the DBA.
//!
//! Kept apart from the daemon's own statements on `delivery` (parked.rs)
//! so that a change of the table's layout touches each side in one place.
//! Payloads and properties left without a parked event by a discard here
//! are removed by the daemon's session (see `drop_expired`), the only one
//! that removes them.

use std::time::SystemTime;

use uuid::Uuid;

use super::parked::BODY;
use super::{SqlResult, Store};
use crate::delivery::Position;

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

/// One parked event in a hook's list, for `walhook parked list --events`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedListed {
    pub event_id: Uuid,
    pub event: String,
    pub ordering_key: String,
    pub commit_lsn: String,
    pub change_index: i32,
    pub reason: String,
    pub attempts: i32,
    /// RFC 3339 UTC.
    pub created: String,
}

/// One parked event, whole, for `walhook parked show` and `redeliver`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParkedDetail {
    pub webhook_id: i32,
    pub event_id: Uuid,
    pub event: String,
    pub ordering_key: String,
    /// The row's old key, when the change moved it to a new one: ordered
    /// after the events of both.
    pub also_after: Option<String>,
    /// A TRUNCATE: ordered after every earlier event.
    pub barrier: bool,
    /// The commit position and the change's index in its transaction: the
    /// event's place in its row's order.
    pub commit_lsn: String,
    pub change_index: i32,
    pub reason: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    /// RFC 3339 UTC.
    pub created: String,
    pub body: String,
}

impl ParkedDetail {
    /// The event's place in commit order, which names it with its hook.
    pub fn position(&self) -> anyhow::Result<Position> {
        Ok(Position {
            commit_lsn: self
                .commit_lsn
                .parse()
                .map_err(|e| anyhow::anyhow!("parked commit_lsn {:?}: {e}", self.commit_lsn))?,
            change_index: u32::try_from(self.change_index).map_err(|_| {
                anyhow::anyhow!("parked change_index {} is negative", self.change_index)
            })?,
        })
    }
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

    /// A page of one hook's parked events, in commit order (the order
    /// they are delivered in): `limit` of them after skipping `skip`.
    pub async fn parked_events_of(
        &self,
        webhook_id: i32,
        limit: i64,
        skip: i64,
    ) -> anyhow::Result<Vec<ParkedListed>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT d.event_id::text, p.event::text, p.ordering_key, d.commit_lsn::text, \
                            d.change_index, d.reason, d.attempts, \
                            to_char(d.created AT TIME ZONE 'UTC', {RFC3339}) \
                       FROM {} d JOIN {} p USING (commit_lsn, change_index) \
                      WHERE d.webhook_id = $1 \
                      ORDER BY d.commit_lsn, d.change_index LIMIT $2 OFFSET $3",
                    self.table("delivery"),
                    self.table("delivery_payload"),
                ),
                &[&webhook_id, &limit, &skip],
            )
            .await
            .sql(format!(
                "listing the parked events of webhook_id {webhook_id}"
            ))?;
        rows.iter()
            .map(|r| {
                let id: String = r.get(0);
                Ok(ParkedListed {
                    event_id: id
                        .parse()
                        .map_err(|e| anyhow::anyhow!("parked event_id {id:?}: {e}"))?,
                    event: r.get(1),
                    ordering_key: r.get(2),
                    commit_lsn: r.get(3),
                    change_index: r.get(4),
                    reason: r.get(5),
                    attempts: r.get(6),
                    created: r.get(7),
                })
            })
            .collect()
    }

    /// The parked events with this EventId: one, except in the unlikely
    /// case of two hooks' EventIds colliding, none when it is not parked.
    pub async fn parked_by_event_id(&self, event_id: Uuid) -> anyhow::Result<Vec<ParkedDetail>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT d.webhook_id, p.event::text, p.ordering_key, p.also_after, p.barrier, \
                            d.commit_lsn::text, d.change_index, d.reason, d.attempts, \
                            d.last_error::text, \
                            to_char(d.created AT TIME ZONE 'UTC', {RFC3339}), {BODY} \
                       FROM {} d JOIN {} p USING (commit_lsn, change_index) {} \
                      WHERE d.event_id = $1::text::uuid ORDER BY d.webhook_id",
                    self.table("delivery"),
                    self.table("delivery_payload"),
                    self.properties_join(),
                ),
                &[&event_id.to_string()],
            )
            .await
            .sql(format!("reading parked event {event_id}"))?;
        Ok(rows
            .iter()
            .map(|r| ParkedDetail {
                webhook_id: r.get(0),
                event_id,
                event: r.get(1),
                ordering_key: r.get(2),
                also_after: r.get(3),
                barrier: r.get(4),
                commit_lsn: r.get(5),
                change_index: r.get(6),
                reason: r.get(7),
                attempts: r.get(8),
                last_error: r.get(9),
                created: r.get(10),
                // Only a row written or removed by hand lacks the whole
                // body, the hook's part of it, or the properties it names.
                body: r.get::<_, Option<String>>(11).unwrap_or_else(|| {
                    "(no body: neither body nor webhook_name is set, or the properties it names \
                     are missing)"
                        .into()
                }),
            })
            .collect())
    }

    /// Events of the same hook parked before this one (earlier in commit
    /// order) that it must not overtake: of its row (its old key too, when
    /// it moved the row), a TRUNCATE, or any when it is a TRUNCATE. As
    /// (count, EventId of the first).
    pub async fn parked_before(&self, event: &ParkedDetail) -> anyhow::Result<Option<(i64, Uuid)>> {
        let mut keys = vec![event.ordering_key.as_str()];
        keys.extend(event.also_after.as_deref());
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*), \
                            (array_agg(d.event_id::text ORDER BY d.commit_lsn, d.change_index))[1] \
                       FROM {} d JOIN {} p USING (commit_lsn, change_index) \
                      WHERE d.webhook_id = $1 \
                        AND (d.commit_lsn, d.change_index) < ($2::text::pg_lsn, $3) \
                        AND ($4 OR p.barrier OR p.ordering_key = ANY($5) \
                             OR p.also_after = ANY($5))",
                    self.table("delivery"),
                    self.table("delivery_payload"),
                ),
                &[
                    &event.webhook_id,
                    &event.commit_lsn,
                    &event.change_index,
                    &event.barrier,
                    &keys,
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

    /// Remove one hook's parked event; false when it was no longer there
    /// (sent or discarded meanwhile).
    pub async fn discard_parked_event(
        &self,
        webhook_id: i32,
        position: Position,
    ) -> anyhow::Result<bool> {
        let n = self
            .client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE webhook_id = $1 \
                        AND commit_lsn = $2::text::pg_lsn AND change_index = $3",
                    self.table("delivery")
                ),
                &[
                    &webhook_id,
                    &position.commit_lsn.to_string(),
                    &(position.change_index as i32),
                ],
            )
            .await
            .sql(format!(
                "discarding the parked event of webhook_id {webhook_id} at {}/{}",
                position.commit_lsn, position.change_index
            ))?;
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
