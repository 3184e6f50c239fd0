//! `webhook_control`: walhook's own per-hook settings (a rotated-out
//! secret, the maximum rate, a pause), read at start and written by the
//! DBA's commands. The daemon follows later changes through the stream.

use std::time::Duration;

use super::{SqlResult, Store};
use crate::events::WebhookRow;

/// The `webhook_control` columns, as text; timestamps in UTC with a `Z`.
const CONTROL_SELECT: &str = "webhook_id::text, previous_secret::text, \
     to_char(previous_secret_expires AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
     max_per_minute::text, paused_at::text, \
     to_jsonb(c) ->> 'condition', to_jsonb(c) ->> 'columns_only', to_jsonb(c) ->> 'columns_except'";
// The last three read through to_jsonb so an install whose table predates
// them (setup not yet run again) still reads, as without rules.
const CONTROL_COLUMNS: [&str; 8] = [
    "webhook_id",
    "previous_secret",
    "previous_secret_expires",
    "max_per_minute",
    "paused_at",
    "condition",
    "columns_only",
    "columns_except",
];

/// What `walhook webhook pause|resume` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseChange {
    NoSuchHook,
    Changed,
    /// It was already in the asked state.
    Unchanged,
}

impl Store {
    /// Whether `webhook_control` exists: an install set up by an older
    /// walhook gets it from the next `walhook setup`.
    pub async fn has_control_table(&self) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&self.table("webhook_control")],
            )
            .await
            .sql(format!(
                "looking for {}",
                self.table_name("webhook_control")
            ))?
            .get(0))
    }

    /// Every `webhook_control` row, as text.
    pub async fn control_rows(&self) -> anyhow::Result<Vec<WebhookRow>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {CONTROL_SELECT} FROM {} c ORDER BY webhook_id",
                    self.table("webhook_control")
                ),
                &[],
            )
            .await
            .sql(format!("reading {}", self.table_name("webhook_control")))?;
        Ok(rows
            .iter()
            .map(|r| {
                WebhookRow(
                    CONTROL_COLUMNS
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (n.to_string(), r.get::<_, Option<String>>(i)))
                        .collect(),
                )
            })
            .collect())
    }

    /// Give hook `id` a new secret; its current one keeps signing for
    /// `grace`. One statement, so one commit: the daemon sees both at
    /// once. Returns `None` when there is no such hook, else when the
    /// previous secret stops signing (`None` inside when it had none).
    pub async fn rotate_secret(
        &self,
        id: i32,
        secret: &str,
        grace: Duration,
    ) -> anyhow::Result<Option<Option<String>>> {
        let sql = format!(
            "WITH old AS (SELECT webhook_id, nullif(secret, '') AS secret FROM {webhook} \
                           WHERE webhook_id = $1 FOR UPDATE), \
                  ctl AS (INSERT INTO {control} AS c \
                              (webhook_id, previous_secret, previous_secret_expires, updated) \
                          SELECT webhook_id, secret, \
                                 CASE WHEN secret IS NULL THEN NULL \
                                      ELSE now() + make_interval(secs => $3) END, now() \
                            FROM old \
                          ON CONFLICT (webhook_id) DO UPDATE SET \
                              previous_secret = EXCLUDED.previous_secret, \
                              previous_secret_expires = EXCLUDED.previous_secret_expires, \
                              updated = now() \
                          RETURNING previous_secret_expires), \
                  upd AS (UPDATE {webhook} w SET secret = $2 FROM old \
                           WHERE w.webhook_id = old.webhook_id RETURNING 1) \
             SELECT (SELECT count(*) FROM upd), \
                    (SELECT to_char(previous_secret_expires AT TIME ZONE 'UTC', \
                                    'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM ctl)",
            webhook = self.table("webhook"),
            control = self.table("webhook_control"),
        );
        let row = self
            .client
            .query_one(&sql, &[&id, &secret, &grace.as_secs_f64()])
            .await
            .sql(format!("rotating the secret of webhook_id {id}"))?;
        let updated: i64 = row.get(0);
        Ok((updated > 0).then(|| row.get(1)))
    }

    /// Set or clear hook `id`'s maximum rate; false when there is no such
    /// hook.
    pub async fn set_max_rate(&self, id: i32, per_minute: Option<i32>) -> anyhow::Result<bool> {
        let sql = format!(
            "INSERT INTO {control} AS c (webhook_id, max_per_minute, updated) \
             SELECT webhook_id, $2, now() FROM {webhook} WHERE webhook_id = $1 \
             ON CONFLICT (webhook_id) DO UPDATE SET max_per_minute = $2, updated = now()",
            webhook = self.table("webhook"),
            control = self.table("webhook_control"),
        );
        let n = self
            .client
            .execute(&sql, &[&id, &per_minute])
            .await
            .sql(format!("setting the rate of webhook_id {id}"))?;
        Ok(n > 0)
    }

    /// Pause (`true`) or resume hook `id`.
    pub async fn set_paused(&self, id: i32, paused: bool) -> anyhow::Result<PauseChange> {
        let sql = format!(
            "WITH h AS (SELECT webhook_id FROM {webhook} WHERE webhook_id = $1), \
                  p AS (INSERT INTO {control} AS c (webhook_id, paused_at, updated) \
                        SELECT webhook_id, now(), now() FROM h WHERE $2 \
                        ON CONFLICT (webhook_id) DO UPDATE SET paused_at = now(), updated = now() \
                         WHERE c.paused_at IS NULL \
                        RETURNING 1), \
                  r AS (UPDATE {control} SET paused_at = NULL, updated = now() \
                         WHERE webhook_id = $1 AND NOT $2 AND paused_at IS NOT NULL \
                        RETURNING 1) \
             SELECT (SELECT count(*) FROM h), (SELECT count(*) FROM p) + (SELECT count(*) FROM r)",
            webhook = self.table("webhook"),
            control = self.table("webhook_control"),
        );
        let row = self
            .client
            .query_one(&sql, &[&id, &paused])
            .await
            .sql(format!(
                "{} webhook_id {id}",
                if paused { "pausing" } else { "resuming" }
            ))?;
        let (hooks, changed): (i64, i64) = (row.get(0), row.get(1));
        Ok(match (hooks, changed) {
            (0, _) => PauseChange::NoSuchHook,
            (_, 0) => PauseChange::Unchanged,
            _ => PauseChange::Changed,
        })
    }
}
