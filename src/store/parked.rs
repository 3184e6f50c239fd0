//! Parked events (`delivery`): written durably so the slot can move on,
//! read back in commit order when their hook can take them.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;

use super::{SqlResult, Store};
use crate::delivery::{DeliveryStore, ParkedEvent, ParkedRow};
use crate::registry::WebhookState;
use crate::text::{truncate_chars, LAST_ERROR_MAX_CHARS};

#[async_trait]
impl DeliveryStore for Store {
    /// Park an event durably (the SQL session runs with synchronous_commit
    /// on, whatever the server's default); parking the same event again is
    /// a no-op.
    async fn park(&self, event: &ParkedEvent<'_>) -> anyhow::Result<()> {
        let body = std::str::from_utf8(event.body).context("parked body is not UTF-8")?;
        let sql = format!(
            "INSERT INTO {} (webhook_id, event_id, event, ordering_key, body, reason, \
                              attempts, last_error, commit_lsn, change_index) \
             VALUES ($1, $2::text::uuid, $3, $4, $5, $6, $7, $8, $9::text::pg_lsn, $10) \
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
            self.table("delivery")
        );
        let last_error = event
            .last_error
            .map(|e| truncate_chars(e, LAST_ERROR_MAX_CHARS));
        self.client
            .execute(
                &sql,
                &[
                    &event.webhook_id,
                    &event.event_id.to_string(),
                    &event.event,
                    &event.ordering_key,
                    &body,
                    &event.reason.as_str(),
                    &event.attempts,
                    &last_error,
                    &event.commit_lsn.to_string(),
                    &(event.change_index as i32),
                ],
            )
            .await
            .sql(format!(
                "parking event {} for webhook_id {}",
                event.event_id, event.webhook_id
            ))?;
        Ok(())
    }

    /// Park events durably in one statement and one commit, in the order
    /// given (their delivery_id follows it); events already parked are
    /// skipped.
    async fn park_batch(&self, events: &[ParkedEvent<'_>]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        let mut webhook_ids = Vec::with_capacity(n);
        let mut event_ids = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut errors = Vec::with_capacity(n);
        let mut lsns = Vec::with_capacity(n);
        let mut indexes = Vec::with_capacity(n);
        for event in events {
            webhook_ids.push(event.webhook_id);
            event_ids.push(event.event_id.to_string());
            names.push(event.event);
            keys.push(event.ordering_key);
            bodies.push(std::str::from_utf8(event.body).with_context(|| {
                format!("parked body of event {} is not UTF-8", event.event_id)
            })?);
            reasons.push(event.reason.as_str());
            attempts.push(event.attempts);
            errors.push(
                event
                    .last_error
                    .map(|e| truncate_chars(e, LAST_ERROR_MAX_CHARS)),
            );
            lsns.push(event.commit_lsn.to_string());
            indexes.push(event.change_index as i32);
        }
        // One multi-row INSERT from arrays: a single round trip and, as a
        // single statement outside a transaction, a single commit.
        let sql = format!(
            "INSERT INTO {} (webhook_id, event_id, event, ordering_key, body, reason, \
                              attempts, last_error, commit_lsn, change_index) \
             SELECT w, e::uuid, n, k, b, r, a, l, c::pg_lsn, i \
               FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::text[], \
                           $6::text[], $7::int[], $8::text[], $9::text[], $10::int[]) \
                    WITH ORDINALITY AS p (w, e, n, k, b, r, a, l, c, i, ord) \
              ORDER BY ord \
             ON CONFLICT (webhook_id, event_id) DO NOTHING",
            self.table("delivery")
        );
        self.client
            .execute(
                &sql,
                &[
                    &webhook_ids,
                    &event_ids,
                    &names,
                    &keys,
                    &bodies,
                    &reasons,
                    &attempts,
                    &errors,
                    &lsns,
                    &indexes,
                ],
            )
            .await
            .sql(format!("parking a batch of {n} events"))?;
        Ok(())
    }

    async fn next_parked(&self, webhook_id: i32, limit: i64) -> anyhow::Result<Vec<ParkedRow>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT delivery_id, event_id::text, event::text, body, attempts \
                       FROM {} WHERE webhook_id = $1 \
                      ORDER BY commit_lsn, change_index, delivery_id LIMIT $2",
                    self.table("delivery")
                ),
                &[&webhook_id, &limit],
            )
            .await
            .sql(format!("reading parked events of webhook_id {webhook_id}"))?;
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

    /// Remove delivered events, a batch at a time: after a crash between a
    /// delivery and this, the event is sent again with its EventId, never
    /// lost.
    async fn remove_parked(&self, delivery_ids: &[i64]) -> anyhow::Result<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        self.client
            .execute(
                &format!(
                    "DELETE FROM {} WHERE delivery_id = ANY ($1)",
                    self.table("delivery")
                ),
                &[&delivery_ids],
            )
            .await
            .sql(format!(
                "removing {} delivered parked events",
                delivery_ids.len()
            ))?;
        Ok(())
    }

    async fn record_parked_failure(
        &self,
        delivery_id: i64,
        attempts: u32,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let error = error.map(|e| truncate_chars(e, LAST_ERROR_MAX_CHARS));
        self.client
            .execute(
                &format!(
                    "UPDATE {} SET attempts = $2, last_error = coalesce($3, last_error), \
                            next_attempt = now() WHERE delivery_id = $1",
                    self.table("delivery")
                ),
                &[&delivery_id, &(attempts as i32), &error],
            )
            .await
            .sql(format!(
                "recording a failed attempt of parked event {delivery_id}"
            ))?;
        Ok(())
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

    /// Parked events per hook, by webhook_id.
    pub async fn parked_counts(&self) -> anyhow::Result<Vec<(i32, i64)>> {
        Ok(self
            .client
            .query(
                &format!(
                    "SELECT webhook_id, count(*) FROM {} GROUP BY 1 ORDER BY 1",
                    self.table("delivery")
                ),
                &[],
            )
            .await
            .sql("counting parked events")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// The hooks that have parked events, as a set.
    pub async fn parked_hook_set(&self) -> anyhow::Result<HashSet<i32>> {
        Ok(self.hooks_with_parked().await?.into_iter().collect())
    }

    /// Drop parked events older than `retention`; returns how many per
    /// hook, for the log.
    pub async fn drop_expired(&self, retention: Duration) -> anyhow::Result<Vec<(i32, i64)>> {
        let rows = self
            .client
            .query(
                &format!(
                    "WITH gone AS (DELETE FROM {} WHERE created < now() - make_interval(secs => $1) \
                     RETURNING webhook_id) SELECT webhook_id, count(*) FROM gone GROUP BY 1",
                    self.table("delivery")
                ),
                &[&retention.as_secs_f64()],
            )
            .await
            .sql("dropping parked events past delivery.parked_retention")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
