//! Parked events (`delivery`): written durably so the slot can move on,
//! read back in commit order when their hook can take them.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use tokio_postgres::types::PgLsn;

use super::{SqlResult, Store};
use crate::delivery::{
    DeliveryStore, OrderScope, ParkedBody, ParkedEvent, ParkedRow, ParkedSize, Position,
};
use crate::metrics::ParkedCount;
use crate::pgoutput::Lsn;
use crate::registry::WebhookState;
use crate::text::{truncate_chars, LAST_ERROR_MAX_CHARS};

/// A parked event's body, from `delivery d`, `delivery_payload p` and
/// `delivery_properties pp` (joined by [`Store::properties_join`]): the
/// same expression as sql/schema.sql's `parked_event` view, spelled here
/// so reading needs no view (setup may not have made it yet). NULL when
/// the properties it names are missing.
pub(super) const BODY: &str = "coalesce(d.body, '{\"EventId\":\"' || d.event_id::text || p.head \
                    || d.webhook_name || coalesce(d.fields, p.fields) \
                    || CASE WHEN d.properties_digest IS NULL \
                            THEN coalesce(',\"Properties\":' || d.properties, '') \
                            ELSE ',\"Properties\":' || pp.properties END \
                    || p.tail)";

#[async_trait]
impl DeliveryStore for Store {
    /// Park an event durably (the SQL session runs with synchronous_commit
    /// on, whatever the server's default); parking the same event again is
    /// a no-op.
    async fn park(&self, event: &ParkedEvent<'_>) -> anyhow::Result<()> {
        self.insert_parked(&[event]).await
    }

    /// Park events durably in one statement and one commit; events
    /// already parked are skipped.
    async fn park_batch(&self, events: &[ParkedEvent<'_>]) -> anyhow::Result<()> {
        let events: Vec<&ParkedEvent<'_>> = events.iter().collect();
        self.insert_parked(&events).await
    }

    async fn next_parked(
        &self,
        webhook_id: i32,
        after: Option<Position>,
        limit: i64,
    ) -> anyhow::Result<Vec<ParkedRow>> {
        // Before every real position: commit LSNs are above 0/0.
        let after = after.unwrap_or(Position {
            commit_lsn: Lsn(0),
            change_index: 0,
        });
        let rows = self
            .client
            .query(
                &format!(
                    // The limit applies before the join: a plan from stale
                    // statistics (a table just filled) then sorts the
                    // hook's small rows, never joins all of them first.
                    "SELECT d.commit_lsn::text, d.change_index, d.event_id::text, p.event::text, \
                            p.ordering_key, p.also_after, p.barrier, {BODY}, d.attempts, \
                            coalesce(d.bytes, 0) \
                       FROM (SELECT * FROM {} \
                              WHERE webhook_id = $1 \
                                AND (commit_lsn, change_index) > ($2::text::pg_lsn, $3) \
                              ORDER BY commit_lsn, change_index LIMIT $4) d \
                       JOIN {} p USING (commit_lsn, change_index) {} \
                      ORDER BY d.commit_lsn, d.change_index",
                    self.table("delivery"),
                    self.table("delivery_payload"),
                    self.properties_join(),
                ),
                &[
                    &webhook_id,
                    &after.commit_lsn.to_string(),
                    &(after.change_index as i32),
                    &limit,
                ],
            )
            .await
            .sql(format!("reading parked events of webhook_id {webhook_id}"))?;
        rows.iter()
            .map(|r| {
                let lsn: String = r.get(0);
                let index: i32 = r.get(1);
                let id: String = r.get(2);
                let also_after: Option<String> = r.get(5);
                let barrier: bool = r.get(6);
                // Only a row written or removed by hand lacks the whole
                // body, the hook's part of it, or the properties it names.
                let body: String = r.get::<_, Option<String>>(7).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the parked event {id} of webhook_id {webhook_id} at {lsn}/{index} has \
                         neither a body nor a webhook_name in {}, or the properties it names \
                         are missing from {}: it cannot be sent as it was parked; \
                         `walhook parked discard {id}` removes it",
                        self.table_name("delivery"),
                        self.table_name("delivery_properties")
                    )
                })?;
                Ok(ParkedRow {
                    position: Position {
                        commit_lsn: lsn
                            .parse()
                            .map_err(|e| anyhow::anyhow!("parked commit_lsn {lsn:?}: {e}"))?,
                        change_index: u32::try_from(index)
                            .with_context(|| format!("parked change_index {index}"))?,
                    },
                    event_id: id
                        .parse()
                        .with_context(|| format!("parked event_id {id:?} is not a UUID"))?,
                    event: r.get(3),
                    ordering_key: r.get(4),
                    scope: match (barrier, also_after) {
                        (true, _) => OrderScope::Barrier,
                        (false, Some(old)) => OrderScope::AlsoAfter(old),
                        (false, None) => OrderScope::Key,
                    },
                    body: Bytes::from(body),
                    attempts: r.get(8),
                    bytes: r.get(9),
                })
            })
            .collect()
    }

    async fn parked_count(&self, webhook_id: i32) -> anyhow::Result<i64> {
        Ok(self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE webhook_id = $1",
                    self.table("delivery")
                ),
                &[&webhook_id],
            )
            .await
            .sql(format!("counting parked events of webhook_id {webhook_id}"))?
            .get(0))
    }

    async fn parked_size(&self, webhook_id: i32) -> anyhow::Result<ParkedSize> {
        let row = self
            .client
            .query_one(
                &format!(
                    // Only rows an older walhook wrote after setup lack
                    // their bytes.
                    "SELECT count(*), coalesce(sum(coalesce(bytes, 0)), 0)::bigint \
                       FROM {} WHERE webhook_id = $1",
                    self.table("delivery")
                ),
                &[&webhook_id],
            )
            .await
            .sql(format!("counting parked events of webhook_id {webhook_id}"))?;
        Ok(ParkedSize {
            events: row.get(0),
            bytes: row.get(1),
        })
    }

    /// Remove delivered events, a batch at a time: after a crash between a
    /// delivery and this, the event is sent again with its EventId, never
    /// lost. Their payloads stay (see `release_payloads`).
    async fn remove_parked(&self, webhook_id: i32, delivered: &[Position]) -> anyhow::Result<()> {
        if delivered.is_empty() {
            return Ok(());
        }
        let (lsns, indexes) = position_arrays(delivered);
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE webhook_id = $1 AND (commit_lsn, change_index) IN \
                       (SELECT c, i FROM unnest($2::pg_lsn[], $3::int[]) AS u (c, i))",
                    self.table("delivery")
                ),
                &[&webhook_id, &lsns, &indexes],
            )
            .await
            .sql(format!(
                "removing {} delivered parked events of webhook_id {webhook_id}",
                delivered.len()
            ))?;
        Ok(())
    }

    /// Remove the payloads at `positions` that no parked event holds any
    /// more. Only the session that parks may call it: its statements run
    /// one after another, so no event can be parked against a payload
    /// while it is being removed.
    async fn release_payloads(&self, positions: &[Position]) -> anyhow::Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let (lsns, indexes) = position_arrays(positions);
        self.remove_unheld_payloads(Some((&lsns, &indexes))).await
    }

    /// Only the session that parks may call it (see `release_payloads`):
    /// a batch that names properties stores them in the same statement, so
    /// no parked event is ever left naming properties that were removed.
    async fn release_properties(&self, webhook_id: i32) -> anyhow::Result<()> {
        self.remove_unheld_properties(Some(webhook_id)).await
    }

    async fn record_parked_failure(
        &self,
        webhook_id: i32,
        position: Position,
        attempts: u32,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let error = error.map(|e| truncate_chars(e, LAST_ERROR_MAX_CHARS));
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET attempts = $4, last_error = coalesce($5, last_error) \
                      WHERE webhook_id = $1 AND commit_lsn = $2::text::pg_lsn AND change_index = $3",
                    self.table("delivery")
                ),
                &[
                    &webhook_id,
                    &position.commit_lsn.to_string(),
                    &(position.change_index as i32),
                    &(attempts as i32),
                    &error,
                ],
            )
            .await
            .sql(format!(
                "recording a failed attempt of the parked event of webhook_id {webhook_id} at {}/{}",
                position.commit_lsn, position.change_index
            ))?;
        Ok(())
    }

    /// A table filled since autovacuum last looked has statistics that
    /// say it is nearly empty: the planner then reads all of a hook's rows
    /// for every batch (30-50 ms each for 100,000 rows instead of 1). The
    /// role may not own the tables (the README's role split): PostgreSQL
    /// then skips them with a WARNING to this session, which would reach
    /// the log at every replay, so the session hears errors only.
    async fn refresh_statistics(&self) {
        let sql = format!(
            "SET client_min_messages = error; ANALYZE {}, {}; RESET client_min_messages",
            self.table("delivery"),
            self.table("delivery_payload")
        );
        // Not in a transaction: a failed ANALYZE must not leave the shared
        // session in an aborted one.
        if let Err(e) = self.client.batch_execute(&sql).await {
            tracing::debug!("analyzing the parked tables before a replay: {e}");
            let _ = self.client.batch_execute("RESET client_min_messages").await;
        }
    }

    /// Store a hook's state now (not batched): used where an event is
    /// dropped because of it.
    async fn store_state(&self, webhook_id: i32, state: WebhookState) -> anyhow::Result<()> {
        self.set_webhook_state(webhook_id, state).await.map(|_| ())
    }

    fn is_closed(&self) -> bool {
        Store::is_closed(self)
    }
}

/// A part of a parked event's body as text: JSON the event's body was
/// made from, so always UTF-8; an error names the event otherwise.
fn json_text<'a>(event: &ParkedEvent<'_>, part: &str, bytes: &'a [u8]) -> anyhow::Result<&'a str> {
    std::str::from_utf8(bytes).with_context(|| {
        format!(
            "the {part} of parked event {} (webhook_id {}) is not UTF-8",
            event.event_id, event.webhook_id
        )
    })
}

impl Store {
    /// The hooks that have parked events, by webhook_id.
    pub async fn hooks_with_parked(&self) -> anyhow::Result<Vec<i32>> {
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT DISTINCT webhook_id FROM {} ORDER BY 1",
                    self.table("delivery")
                ),
                &[],
            )
            .await
            .sql("reading parked events")?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Parked events per hook and the age of the oldest, by webhook_id:
    /// one grouped scan for both gauges.
    pub async fn parked_counts(&self) -> anyhow::Result<Vec<ParkedCount>> {
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT webhook_id, count(*), \
                            greatest(extract(epoch FROM now() - min(created)), 0)::float8 \
                       FROM {} GROUP BY 1 ORDER BY 1",
                    self.table("delivery")
                ),
                &[],
            )
            .await
            .sql("counting parked events")?
            .iter()
            .map(|r| ParkedCount {
                webhook_id: r.get(0),
                events: r.get(1),
                oldest_age_seconds: r.get(2),
            })
            .collect())
    }

    /// Parked events per hook and the bytes they count, by webhook_id.
    pub async fn parked_sizes(&self) -> anyhow::Result<Vec<(i32, ParkedSize)>> {
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT webhook_id, count(*), coalesce(sum(coalesce(bytes, 0)), 0)::bigint \
                       FROM {} GROUP BY 1 ORDER BY 1",
                    self.table("delivery")
                ),
                &[],
            )
            .await
            .sql("counting parked events")?
            .iter()
            .map(hook_size)
            .collect())
    }

    /// The hooks that have parked events, as a set.
    pub async fn parked_hook_set(&self) -> anyhow::Result<HashSet<i32>> {
        Ok(self.hooks_with_parked().await?.into_iter().collect())
    }

    /// Drop parked events older than `retention`; returns how many per
    /// hook and the bytes they counted, for the log and the hooks' bounds.
    pub async fn drop_expired(
        &self,
        retention: Duration,
    ) -> anyhow::Result<Vec<(i32, ParkedSize)>> {
        let rows = self
            .client
            .query(
                &format!(
                    "WITH gone AS (DELETE FROM {} WHERE created < now() - make_interval(secs => $1) \
                     RETURNING webhook_id, bytes) \
                     SELECT webhook_id, count(*), coalesce(sum(coalesce(bytes, 0)), 0)::bigint \
                       FROM gone GROUP BY 1",
                    self.table("delivery")
                ),
                &[&retention.as_secs_f64()],
            )
            .await
            .sql("dropping parked events past delivery.parked_retention")?;
        // Also the payloads and properties left by events removed
        // elsewhere (a deleted hook, an admin's discard or replay). Run by
        // the daemon's session.
        self.remove_unheld_payloads(None).await?;
        self.remove_unheld_properties(None).await?;
        Ok(rows.iter().map(hook_size).collect())
    }

    /// `LEFT JOIN delivery_properties pp`, to the parked events `d`: what
    /// [`BODY`] reads their properties from.
    pub(super) fn properties_join(&self) -> String {
        format!(
            "LEFT JOIN {} pp ON pp.webhook_id = d.webhook_id AND pp.digest = d.properties_digest",
            self.table("delivery_properties")
        )
    }

    /// Write parked events and their payloads (once per change) in one
    /// statement, so one commit.
    async fn insert_parked(&self, events: &[&ParkedEvent<'_>]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        // The payload columns, once per change.
        let mut seen = HashSet::with_capacity(n);
        let mut p_lsns = Vec::new();
        let mut p_indexes = Vec::new();
        let mut p_names = Vec::new();
        let mut p_keys = Vec::new();
        let mut p_also = Vec::new();
        let mut p_barriers = Vec::new();
        let mut p_heads = Vec::new();
        let mut p_fields = Vec::new();
        let mut p_tails = Vec::new();
        // The hooks' properties, once per hook and version.
        let mut seen_properties = HashSet::new();
        let mut pr_hooks = Vec::new();
        let mut pr_digests: Vec<&[u8]> = Vec::new();
        let mut pr_texts: Vec<&str> = Vec::new();
        // The per-hook columns.
        let mut webhook_ids = Vec::with_capacity(n);
        let mut lsns = Vec::with_capacity(n);
        let mut indexes = Vec::with_capacity(n);
        let mut event_ids = Vec::with_capacity(n);
        let mut hook_names = Vec::with_capacity(n);
        let mut digests: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        let mut own_fields = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        let mut bytes = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        for event in events {
            let lsn = PgLsn::from(event.position.commit_lsn.0);
            let index = event.position.change_index as i32;
            if seen.insert(event.position) {
                p_lsns.push(lsn);
                p_indexes.push(index);
                p_names.push(event.event);
                p_keys.push(event.ordering_key);
                let (also, barrier) = match event.scope {
                    OrderScope::Key => (None, false),
                    OrderScope::AlsoAfter(old) => (Some(old.as_str()), false),
                    OrderScope::Barrier => (None, true),
                };
                p_also.push(also);
                p_barriers.push(barrier);
                p_heads.push(json_text(event, "head", event.payload.head)?);
                p_fields.push(json_text(event, "fields", event.payload.fields)?);
                p_tails.push(json_text(event, "tail", event.payload.tail)?);
            }
            webhook_ids.push(event.webhook_id);
            lsns.push(lsn);
            indexes.push(index);
            event_ids.push(event.event_id);
            match &event.body {
                ParkedBody::Assembled {
                    name,
                    fields,
                    properties,
                } => {
                    hook_names.push(Some(json_text(event, "webhook_name", name)?));
                    own_fields.push(fields.map(|f| json_text(event, "fields", f)).transpose()?);
                    digests.push(properties.map(|p| p.digest.as_slice()));
                    if let Some(p) = properties {
                        if seen_properties.insert((event.webhook_id, p.digest)) {
                            pr_hooks.push(event.webhook_id);
                            pr_digests.push(p.digest.as_slice());
                            pr_texts.push(p.json.as_str());
                        }
                    }
                    bodies.push(None);
                }
                ParkedBody::Whole(body) => {
                    hook_names.push(None);
                    own_fields.push(None);
                    digests.push(None);
                    bodies.push(Some(json_text(event, "body", body)?));
                }
            }
            bytes.push(event.bytes);
            reasons.push(event.reason.as_str());
            attempts.push(event.attempts);
            errors.push(
                event
                    .last_error
                    .map(|e| truncate_chars(e, LAST_ERROR_MAX_CHARS)),
            );
        }
        // One statement from arrays: a single round trip and, outside a
        // transaction, a single commit. Properties stored already (the
        // same text, by its digest) are kept as they are.
        let sql = format!(
            "WITH payload AS ( \
               INSERT INTO {payload} (commit_lsn, change_index, event, ordering_key, also_after, \
                                      barrier, head, fields, tail) \
               SELECT c, i, n, k, a, b, h, f, t \
                 FROM unnest($1::pg_lsn[], $2::int[], $3::text[], $4::text[], $5::text[], \
                             $6::bool[], $7::text[], $8::text[], $9::text[]) \
                      AS p (c, i, n, k, a, b, h, f, t) \
               ON CONFLICT DO NOTHING), \
             properties AS ( \
               INSERT INTO {properties} (webhook_id, digest, properties) \
               SELECT w, g, t FROM unnest($20::int[], $21::bytea[], $22::text[]) AS p (w, g, t) \
               ON CONFLICT DO NOTHING) \
             INSERT INTO {delivery} (webhook_id, commit_lsn, change_index, event_id, webhook_name, \
                                     properties_digest, fields, body, bytes, reason, attempts, \
                                     last_error) \
             SELECT w, c, i, e, wn, g, f, bo, n, r, a, l \
               FROM unnest($10::int[], $11::pg_lsn[], $12::int[], $13::uuid[], $14::text[], \
                           $15::bytea[], $16::text[], $17::text[], $23::int8[], $18::text[], \
                           $19::int[], $24::text[]) \
                    AS d (w, c, i, e, wn, g, f, bo, n, r, a, l) \
             ON CONFLICT DO NOTHING",
            payload = self.table("delivery_payload"),
            properties = self.table("delivery_properties"),
            delivery = self.table("delivery"),
        );
        self.client
            .execute(
                &sql,
                &[
                    &p_lsns,
                    &p_indexes,
                    &p_names,
                    &p_keys,
                    &p_also,
                    &p_barriers,
                    &p_heads,
                    &p_fields,
                    &p_tails,
                    &webhook_ids,
                    &lsns,
                    &indexes,
                    &event_ids,
                    &hook_names,
                    &digests,
                    &own_fields,
                    &bodies,
                    &reasons,
                    &attempts,
                    &pr_hooks,
                    &pr_digests,
                    &pr_texts,
                    &bytes,
                    &errors,
                ],
            )
            .await
            .sql(if n == 1 {
                format!(
                    "parking event {} for webhook_id {}",
                    events[0].event_id, events[0].webhook_id
                )
            } else {
                format!("parking a batch of {n} events")
            })?;
        Ok(())
    }

    /// Remove the payloads no parked event refers to any more: those at
    /// `positions`, or all.
    async fn remove_unheld_payloads(
        &self,
        positions: Option<(&Vec<PgLsn>, &Vec<i32>)>,
    ) -> anyhow::Result<()> {
        let (payload, delivery) = (self.table("delivery_payload"), self.table("delivery"));
        let unheld = format!(
            "NOT EXISTS (SELECT 1 FROM {delivery} d \
                          WHERE d.commit_lsn = p.commit_lsn AND d.change_index = p.change_index)"
        );
        match positions {
            Some((lsns, indexes)) => {
                self.client
                    .execute(
                        &format!(
                            "DELETE FROM {payload} p \
                              USING unnest($1::pg_lsn[], $2::int[]) AS u (c, i) \
                              WHERE p.commit_lsn = u.c AND p.change_index = u.i \
                                AND {unheld}"
                        ),
                        &[lsns, indexes],
                    )
                    .await
            }
            None => {
                self.client
                    .execute(&format!("DELETE FROM {payload} p WHERE {unheld}"), &[])
                    .await
            }
        }
        .sql("removing the payloads of delivered parked events")?;
        Ok(())
    }
}

impl Store {
    /// Remove the stored properties no parked event names any more: one
    /// hook's, or all.
    async fn remove_unheld_properties(&self, webhook_id: Option<i32>) -> anyhow::Result<()> {
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} pp WHERE ($1::int IS NULL OR pp.webhook_id = $1) \
                        AND NOT EXISTS (SELECT 1 FROM {} d WHERE d.webhook_id = pp.webhook_id \
                                           AND d.properties_digest = pp.digest)",
                    self.table("delivery_properties"),
                    self.table("delivery")
                ),
                &[&webhook_id],
            )
            .await
            .sql("removing the properties of delivered parked events")?;
        Ok(())
    }
}

/// Positions as the pg_lsn and integer arrays the statements take.
fn position_arrays(positions: &[Position]) -> (Vec<PgLsn>, Vec<i32>) {
    positions
        .iter()
        .map(|p| (PgLsn::from(p.commit_lsn.0), p.change_index as i32))
        .unzip()
}

/// A `(webhook_id, count, bytes)` row as the hook and its parked size.
fn hook_size(row: &tokio_postgres::Row) -> (i32, ParkedSize) {
    (
        row.get(0),
        ParkedSize {
            events: row.get(1),
            bytes: row.get(2),
        },
    )
}
