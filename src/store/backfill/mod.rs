//! Backfills: the `backfill` table (requests and their progress); the
//! shape of a table to backfill ([`shape`]) and its chunks between
//! watermarks written into the WAL ([`chunks`], see [`crate::backfill`]).

mod chunks;
mod shape;

pub use chunks::{ChunkTimedOut, MESSAGE_PREFIX};
pub use shape::{MissingGrant, ShapeColumn, TableRefused, TableShape};

use anyhow::bail;

use super::{SqlResult, Store};

/// Where a backfill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillState {
    Pending,
    Running,
    Done,
    Cancelled,
    Failed,
}

impl BackfillState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Pending => "pending",
            BackfillState::Running => "running",
            BackfillState::Done => "done",
            BackfillState::Cancelled => "cancelled",
            BackfillState::Failed => "failed",
        }
    }

    fn parse(text: &str) -> anyhow::Result<BackfillState> {
        Ok(match text {
            "pending" => BackfillState::Pending,
            "running" => BackfillState::Running,
            "done" => BackfillState::Done,
            "cancelled" => BackfillState::Cancelled,
            "failed" => BackfillState::Failed,
            other => bail!("backfill state {other:?} is not one walhook writes"),
        })
    }

    /// Whether the daemon still has work for it.
    pub fn is_open(self) -> bool {
        matches!(self, BackfillState::Pending | BackfillState::Running)
    }
}

impl std::fmt::Display for BackfillState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the `backfill` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRow {
    pub id: i64,
    /// The table as resolved when the backfill was registered, quoted
    /// where needed (`public."Contact"`): the daemon resolves it again.
    pub table: String,
    pub webhook_ids: Vec<i32>,
    pub where_sql: Option<String>,
    pub state: BackfillState,
    /// The key of the last settled row, one text per key column.
    pub last_key: Option<Vec<String>>,
    pub rows_sent: i64,
    /// The table's row count estimate when registered (pg_class.reltuples).
    pub rows_estimate: i64,
    pub error: Option<String>,
    /// RFC 3339, for `status`.
    pub updated: String,
}

/// A backfill to register.
#[derive(Debug, Clone)]
pub struct NewBackfill<'a> {
    pub table: &'a TableShape,
    pub webhook_ids: &'a [i32],
    pub where_sql: Option<&'a str>,
    /// About how many rows the table has ([`Store::estimate_rows`]).
    pub rows_estimate: i64,
}

fn row(r: &tokio_postgres::Row) -> anyhow::Result<BackfillRow> {
    Ok(BackfillRow {
        id: r.get(0),
        table: r.get(1),
        webhook_ids: r.get(2),
        where_sql: r.get(3),
        state: BackfillState::parse(r.get(4))?,
        last_key: r.get(5),
        rows_sent: r.get(6),
        rows_estimate: r.get(7),
        error: r.get(8),
        updated: r.get(9),
    })
}

const COLUMNS: &str = "backfill_id, table_name, webhook_ids, where_sql, state, last_key, \
     rows_sent, rows_estimate, error, \
     to_char(updated AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')";
impl Store {
    /// Register a backfill; returns its backfill_id.
    pub async fn register_backfill(&self, new: &NewBackfill<'_>) -> anyhow::Result<i64> {
        let table = self.table("backfill");
        let row = self
            .client
            .query_one(
                &format!(
                    "INSERT INTO {table} (table_name, webhook_ids, where_sql, rows_estimate) \
                     VALUES ($1, $2, $3, $4) RETURNING backfill_id"
                ),
                &[
                    &new.table.reference(),
                    &new.webhook_ids,
                    &new.where_sql,
                    &new.rows_estimate,
                ],
            )
            .await
            .sql(format!(
                "registering a backfill of {}",
                new.table.qualified()
            ))?;
        Ok(row.get(0))
    }

    /// Every backfill, newest first.
    pub async fn backfills(&self) -> anyhow::Result<Vec<BackfillRow>> {
        let table = self.table("backfill");
        let rows = self
            .client
            .query(
                &format!("SELECT {COLUMNS} FROM {table} ORDER BY backfill_id DESC"),
                &[],
            )
            .await
            .sql(format!("reading {}", self.table_name("backfill")))?;
        rows.iter().map(row).collect()
    }

    pub async fn backfill(&self, id: i64) -> anyhow::Result<Option<BackfillRow>> {
        let table = self.table("backfill");
        let found = self
            .client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM {table} WHERE backfill_id = $1"),
                &[&id],
            )
            .await
            .sql(format!("reading backfill {id}"))?;
        found.as_ref().map(row).transpose()
    }

    /// The oldest backfill with work left.
    pub async fn next_backfill(&self) -> anyhow::Result<Option<BackfillRow>> {
        let table = self.table("backfill");
        let found = self
            .client
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM {table} WHERE state IN ('pending', 'running') \
                     ORDER BY backfill_id LIMIT 1"
                ),
                &[],
            )
            .await
            .sql(format!("reading {}", self.table_name("backfill")))?;
        found.as_ref().map(row).transpose()
    }

    /// Cancel a backfill that has work left; returns its state afterwards
    /// (`None`: no such backfill).
    pub async fn cancel_backfill(&self, id: i64) -> anyhow::Result<Option<BackfillState>> {
        let table = self.table("backfill");
        let found = self
            .client
            .query_opt(
                &format!(
                    "UPDATE {table} SET state = CASE WHEN state IN ('pending', 'running') \
                       THEN 'cancelled' ELSE state END, updated = now() \
                     WHERE backfill_id = $1 RETURNING state"
                ),
                &[&id],
            )
            .await
            .sql(format!("cancelling backfill {id}"))?;
        found.map(|r| BackfillState::parse(r.get(0))).transpose()
    }

    /// Set a backfill's state unless it was cancelled meanwhile.
    pub async fn set_backfill_state(
        &self,
        id: i64,
        state: BackfillState,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let table = self.table("backfill");
        self.client
            .execute(
                &format!(
                    "UPDATE {table} SET state = $2, error = $3, updated = now() \
                     WHERE backfill_id = $1 AND state <> 'cancelled'"
                ),
                &[&id, &state.as_str(), &error],
            )
            .await
            .sql(format!("setting backfill {id} to {state}"))?;
        Ok(())
    }

    /// Record that every row up to `last_key` was settled.
    pub async fn record_backfill_progress(
        &self,
        id: i64,
        last_key: &[String],
        rows_sent: i64,
    ) -> anyhow::Result<()> {
        let table = self.table("backfill");
        self.client
            .execute(
                &format!(
                    "UPDATE {table} SET last_key = $2, rows_sent = $3, error = NULL, \
                            updated = now() \
                     WHERE backfill_id = $1"
                ),
                &[&id, &last_key, &rows_sent],
            )
            .await
            .sql(format!("recording the progress of backfill {id}"))?;
        Ok(())
    }

    /// Record why a backfill that stays open cannot go on for now (a
    /// missing GRANT, a lost session): `backfill list` and `status` show it
    /// until its next chunk settles.
    pub async fn record_backfill_error(&self, id: i64, error: &str) -> anyhow::Result<()> {
        let table = self.table("backfill");
        self.client
            .execute(
                &format!(
                    "UPDATE {table} SET error = $2, updated = now() \
                     WHERE backfill_id = $1 AND state IN ('pending', 'running')"
                ),
                &[&id, &error],
            )
            .await
            .sql(format!("recording the error of backfill {id}"))?;
        Ok(())
    }
}
