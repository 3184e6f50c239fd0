//! The `webhook` table: its rows as the registry reads them, and the
//! DBA's commands that add, change and remove them.

use serde::Serialize;

use super::{SqlResult, Store};
use crate::events::WebhookRow;
use crate::registry::WebhookState;

/// The `webhook` columns walhook reads, as text: the one list that the
/// queries, the registry snapshots and the rows built from them share.
pub const WEBHOOK_COLUMNS: [&str; 9] = [
    "webhook_id",
    "name",
    "events",
    "target_url",
    "type",
    "headers",
    "properties",
    "secret",
    "state",
];

/// `w.webhook_id::text, w.name::text, ...` for a select list.
fn columns_as_text(alias: &str) -> String {
    WEBHOOK_COLUMNS
        .iter()
        .map(|c| format!("{alias}.{c}::text"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `jsonb_build_object('webhook_id', w.webhook_id::text, ...)`: a row as a
/// snapshot stores it.
pub(super) fn row_as_jsonb(alias: &str) -> String {
    let pairs: Vec<String> = WEBHOOK_COLUMNS
        .iter()
        .map(|c| format!("'{c}', {alias}.{c}::text"))
        .collect();
    format!("jsonb_build_object({})", pairs.join(", "))
}

fn webhook_row(row: &tokio_postgres::Row) -> WebhookRow {
    WebhookRow(
        WEBHOOK_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), row.get::<_, Option<String>>(i)))
            .collect(),
    )
}

/// A hook to add (`walhook webhook add`), already validated.
pub struct NewWebhook<'a> {
    pub name: &'a str,
    pub events: &'a str,
    pub target_url: &'a str,
    pub headers: Option<&'a str>,
    pub properties: Option<&'a str>,
    pub secret: Option<&'a str>,
    pub state: WebhookState,
}

/// What `walhook webhook remove` removed or left.
pub struct Removal {
    /// The removed row's name; `None` when there was no row.
    pub name: Option<String>,
    /// `webhook_usage` rows of the hook: deleted with `purge`, else kept.
    pub usage_rows: i64,
    /// Parked events of the hook: deleted with `purge`, else kept.
    pub parked: i64,
}

/// One line of the hooks table in `walhook status`.
#[derive(Debug, Clone, Serialize)]
pub struct HookStats {
    #[serde(rename = "webhook_id")]
    pub id: i32,
    /// A row exists in `webhook` (else: removed, with statistics or parked
    /// events left).
    pub registered: bool,
    pub name: Option<String>,
    pub state: Option<i16>,
    pub total_calls: i64,
    pub total_errors: i64,
    pub consecutive_errors: i32,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub last_error: Option<String>,
    pub parked: i64,
    /// What its parked events count toward
    /// `delivery.max_parked_bytes_per_webhook`.
    pub parked_bytes: i64,
    pub oldest_parked: Option<String>,
    /// `walhook webhook pause` holds its events.
    pub paused: bool,
    /// `walhook webhook throttle`: at most this many requests a minute.
    pub max_per_minute: Option<i32>,
    /// Answers that asked for less (429, 503 with Retry-After).
    pub total_throttled: i64,
}

/// A timestamptz column as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(expr: &str) -> String {
    format!("to_char({expr} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}

impl Store {
    /// Every row of the `webhook` table, as text, by webhook_id.
    pub async fn webhook_rows(&self) -> anyhow::Result<Vec<WebhookRow>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {} FROM {} w ORDER BY w.webhook_id",
                    columns_as_text("w"),
                    self.table("webhook")
                ),
                &[],
            )
            .await
            .sql(format!("reading {}", self.table_name("webhook")))?;
        Ok(rows.iter().map(webhook_row).collect())
    }

    /// One row of the `webhook` table, as text.
    pub async fn webhook_row(&self, id: i32) -> anyhow::Result<Option<WebhookRow>> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "SELECT {} FROM {} w WHERE w.webhook_id = $1",
                    columns_as_text("w"),
                    self.table("webhook")
                ),
                &[&id],
            )
            .await
            .sql(format!("reading webhook_id {id}"))?;
        Ok(row.as_ref().map(webhook_row))
    }

    /// Add a hook; returns its webhook_id.
    pub async fn insert_webhook(&self, hook: &NewWebhook<'_>) -> anyhow::Result<i32> {
        let sql = format!(
            "INSERT INTO {} (name, events, target_url, headers, properties, secret, state) \
             VALUES ($1, $2, $3, $4::text::jsonb, $5::text::jsonb, $6, $7) RETURNING webhook_id",
            self.table("webhook")
        );
        Ok(self
            .client
            .query_one(
                &sql,
                &[
                    &hook.name,
                    &hook.events,
                    &hook.target_url,
                    &hook.headers,
                    &hook.properties,
                    &hook.secret,
                    &(hook.state as i16),
                ],
            )
            .await
            .sql(format!(
                "adding webhook {:?} to {}",
                hook.name,
                self.table_name("webhook")
            ))?
            .get(0))
    }

    /// A hook's stored state, `None` when it has no row.
    pub async fn webhook_state(&self, id: i32) -> anyhow::Result<Option<i16>> {
        Ok(self
            .client
            .query_opt(
                &format!(
                    "SELECT state FROM {} WHERE webhook_id = $1",
                    self.table("webhook")
                ),
                &[&id],
            )
            .await
            .sql(format!("reading webhook_id {id}"))?
            .map(|r| r.get(0)))
    }

    /// Set a hook's state; returns whether a row changed (false: no such
    /// row, or it had that state already).
    pub async fn set_webhook_state(&self, id: i32, state: WebhookState) -> anyhow::Result<bool> {
        let updated = self
            .client
            .execute(
                &format!(
                    "UPDATE {} SET state = $2 WHERE webhook_id = $1 AND state <> $2",
                    self.table("webhook")
                ),
                &[&id, &(state as i16)],
            )
            .await
            .sql(format!("setting state {state} on webhook_id {id}"))?;
        Ok(updated > 0)
    }

    /// Remove a hook's row; with `purge` also its statistics and parked
    /// events, in one statement.
    pub async fn remove_webhook(&self, id: i32, purge: bool) -> anyhow::Result<Removal> {
        let (webhook, usage, delivery) = (
            self.table("webhook"),
            self.table("webhook_usage"),
            self.table("delivery"),
        );
        // The counts see the tables as they were before the deletions (a
        // statement's data-modifying CTEs are invisible to its own reads).
        let row = self
            .client
            .query_one(
                &format!(
                    "WITH w AS (DELETE FROM {webhook} WHERE webhook_id = $1 RETURNING name::text), \
                          u AS (DELETE FROM {usage} WHERE $2 AND webhook_id = $1 RETURNING 1), \
                          p AS (DELETE FROM {delivery} WHERE $2 AND webhook_id = $1 RETURNING 1) \
                     SELECT (SELECT name FROM w), \
                            (SELECT count(*) FROM {usage} WHERE webhook_id = $1), \
                            (SELECT count(*) FROM {delivery} WHERE webhook_id = $1), \
                            (SELECT count(*) FROM u) + (SELECT count(*) FROM p)"
                ),
                &[&id, &purge],
            )
            .await
            .sql(format!("removing webhook_id {id}"))?;
        Ok(Removal {
            name: row.get(0),
            usage_rows: row.get(1),
            parked: row.get(2),
        })
    }

    /// Every hook with a row, statistics or parked events, for `status`.
    pub async fn hook_stats(&self) -> anyhow::Result<Vec<HookStats>> {
        let sql = format!(
            "WITH parked AS (SELECT webhook_id, count(*) AS n, min(created) AS oldest, \
                                    sum(coalesce(bytes, 0)) AS bytes \
                               FROM {delivery} GROUP BY 1), \
                  ids AS (SELECT webhook_id FROM {webhook} \
                          UNION SELECT webhook_id FROM {usage} \
                          UNION SELECT webhook_id FROM parked) \
             SELECT i.webhook_id, w.webhook_id IS NOT NULL, w.name::text, w.state, \
                    coalesce(u.total_calls, 0)::bigint, coalesce(u.total_errors, 0)::bigint, \
                    coalesce(u.consecutive_errors, 0)::int, {last_success}, {last_failure}, \
                    u.last_error::text, coalesce(p.n, 0)::bigint, {oldest}, \
                    c.paused_at IS NOT NULL, c.max_per_minute, \
                    coalesce(u.total_throttled, 0)::bigint, coalesce(p.bytes, 0)::bigint \
               FROM ids i \
               LEFT JOIN {webhook} w ON w.webhook_id = i.webhook_id \
               LEFT JOIN {usage} u ON u.webhook_id = i.webhook_id \
               LEFT JOIN parked p ON p.webhook_id = i.webhook_id \
               LEFT JOIN {control} c ON c.webhook_id = i.webhook_id \
              ORDER BY 1",
            control = self.table("webhook_control"),
            delivery = self.table("delivery"),
            webhook = self.table("webhook"),
            usage = self.table("webhook_usage"),
            last_success = utc("u.last_success"),
            last_failure = utc("u.last_failure"),
            oldest = utc("p.oldest"),
        );
        let rows = self.client.query(&sql, &[]).await.sql(format!(
            "reading {}, {} and {}",
            self.table_name("webhook"),
            self.table_name("webhook_usage"),
            self.table_name("delivery")
        ))?;
        Ok(rows
            .iter()
            .map(|r| HookStats {
                id: r.get(0),
                registered: r.get(1),
                name: r.get(2),
                state: r.get(3),
                total_calls: r.get(4),
                total_errors: r.get(5),
                consecutive_errors: r.get(6),
                last_success: r.get(7),
                last_failure: r.get(8),
                last_error: r.get(9),
                parked: r.get(10),
                oldest_parked: r.get(11),
                paused: r.get(12),
                max_per_minute: r.get(13),
                total_throttled: r.get(14),
                parked_bytes: r.get(15),
            })
            .collect())
    }
}
