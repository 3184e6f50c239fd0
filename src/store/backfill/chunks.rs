//! A backfill's chunks: the watermarks written into the WAL around each
//! one, and its read-only SELECT.

use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio_postgres::error::SqlState;

use super::super::{failed, ident, pg_message, SqlResult, Store};
use super::{MissingGrant, TableShape};

/// The prefix of walhook's logical messages (`pg_logical_emit_message`).
pub const MESSAGE_PREFIX: &str = "walhook";

/// A chunk's SELECT ran past `backfill.statement_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the chunk's SELECT ran past backfill.statement_timeout")]
pub struct ChunkTimedOut;

impl Store {
    /// Write a watermark into the WAL: a transactional logical message, so
    /// the stream carries it in commit order between the changes.
    pub async fn emit_watermark(&self, content: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "SELECT pg_logical_emit_message(true, $1, $2)",
                &[&MESSAGE_PREFIX, &content],
            )
            .await
            .sql("writing a backfill watermark (pg_logical_emit_message)")?;
        Ok(())
    }

    /// Fix the text form of values as the replication session does, so a
    /// chunk's values convert exactly as the stream's.
    pub async fn pin_output_settings(&self, settings: &[(&str, &str)]) -> anyhow::Result<()> {
        for (name, value) in settings {
            self.client
                .batch_execute(&format!("SET {name} = {}", super::super::literal(value)))
                .await
                .sql(format!("setting {name} on the backfill session"))?;
        }
        Ok(())
    }

    /// Up to `limit` rows after `after` (key order), each column's text
    /// output (`None`: NULL) in `table.columns` order. A SELECT that runs
    /// past `timeout` is [`ChunkTimedOut`].
    pub async fn read_chunk(
        &self,
        table: &TableShape,
        where_sql: Option<&str>,
        after: Option<&[String]>,
        limit: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let columns = table
            .columns
            .iter()
            .map(|c| format!("t.{}::text", ident(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        let key_columns = table
            .key
            .iter()
            .map(|&i| format!("t.{}", ident(&table.columns[i].name)))
            .collect::<Vec<_>>();
        let mut conditions = Vec::new();
        if let Some(after) = after {
            if after.len() != table.key.len() {
                bail!(
                    "backfill of {}: the recorded key has {} values, the table's key {} columns \
                     (did the key change?)",
                    table.qualified(),
                    after.len(),
                    table.key.len()
                );
            }
            let bounds = table
                .key
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("CAST(${}::text AS {})", n + 1, table.columns[i].type_name))
                .collect::<Vec<_>>();
            conditions.push(format!(
                "({}) > ({})",
                key_columns.join(", "),
                bounds.join(", ")
            ));
        }
        if let Some(w) = where_sql {
            conditions.push(format!("({w})"));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {columns} FROM {} t{filter} ORDER BY {} LIMIT {limit}",
            table.sql_name(),
            key_columns.join(", ")
        );
        let what = || format!("reading a chunk of {}", table.qualified());
        // Read-only, so a --where cannot write; the timeout bounds it.
        self.client
            .batch_execute(&format!(
                "BEGIN READ ONLY; SET LOCAL statement_timeout = {}",
                timeout.as_millis()
            ))
            .await
            .sql(what())?;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = after
            .unwrap_or_default()
            .iter()
            .map(|v| v as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let result = self.client.query(&sql, &params).await;
        let end = self.client.batch_execute("ROLLBACK").await;
        let rows = match result {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                return Err(ChunkTimedOut.into())
            }
            // A GRANT revoked after the backfill was registered.
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(MissingGrant::new(
                    &table.reader,
                    (&table.namespace, &table.name),
                    pg_message(&e),
                    true,
                    true,
                )
                .into())
            }
            Err(e) => return Err(failed(what(), e)),
        };
        end.sql(what())?;
        rows.iter()
            .map(|r| {
                (0..table.columns.len())
                    .map(|i| r.try_get::<_, Option<String>>(i))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow!("{}: {e}", what()))
            })
            .collect()
    }
}
