//! Backfills: the `backfill` table (requests and their progress), the
//! shape of a table to backfill, its chunks, and the watermarks written
//! into the WAL around each chunk (see [`crate::backfill`]).

use std::time::Duration;

use anyhow::{anyhow, bail};
use tokio_postgres::error::SqlState;

use super::{failed, ident, SqlResult, Store};

/// The prefix of walhook's logical messages (`pg_logical_emit_message`).
pub const MESSAGE_PREFIX: &str = "walhook";

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
}

/// One column of a table to backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    /// `format_type()`, to cast key values back from text.
    pub type_name: String,
    /// Part of the replica identity (what pgoutput flags as key).
    pub is_identity: bool,
}

/// What the daemon needs to read a table as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableShape {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `pg_class.relreplident`.
    pub replica_identity: u8,
    /// The published columns, in the stream's order (attnum).
    pub columns: Vec<ShapeColumn>,
    /// Indices into `columns` of the key chunks are ordered by: the replica
    /// identity's columns, which is what live events are keyed by.
    pub key: Vec<usize>,
    /// The primary key's column names (the event builder needs them under
    /// REPLICA IDENTITY FULL).
    pub primary_key: Vec<String>,
    pub rows_estimate: i64,
}

impl TableShape {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    fn sql_name(&self) -> String {
        format!("{}.{}", ident(&self.namespace), ident(&self.name))
    }

    /// The name the backfill row records and the daemon resolves again:
    /// `schema.table` as `to_regclass` reads it, each part quoted unless
    /// it reads the same unquoted (lower case letters, digits, `_`, `$`),
    /// so `public."Contact"` and `public."a.b"` find that table and no
    /// other, while plain names show as they always did.
    pub fn reference(&self) -> String {
        format!(
            "{}.{}",
            plain_or_quoted(&self.namespace),
            plain_or_quoted(&self.name)
        )
    }
}

/// `name` as `to_regclass` reads it back: unquoted when that gives the
/// same name, else quoted (quotes doubled).
fn plain_or_quoted(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        ident(name)
    }
}

/// Why a table cannot be backfilled; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TableRefused(pub String);

/// A chunk's SELECT ran past `backfill.statement_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the chunk's SELECT ran past backfill.statement_timeout")]
pub struct ChunkTimedOut;

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
    /// Resolve `name` (as SQL spells it: `crm.contact`, `"Odd Name"`) to
    /// the table the stream publishes, or say why it cannot be backfilled.
    pub async fn backfill_table(
        &self,
        name: &str,
        publication: &str,
    ) -> anyhow::Result<TableShape> {
        let found = self
            .client
            .query_opt(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                        c.relispartition, c.relreplident::text, \
                        GREATEST(c.reltuples, 0)::bigint, \
                        CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::regclass::text END \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = to_regclass($1)",
                &[&name],
            )
            .await
            .sql(format!("looking up table {name:?}"))?;
        let Some(t) = found else {
            return Err(TableRefused(format!("table {name:?} does not exist")).into());
        };
        let oid: u32 = t.get(0);
        let namespace: String = t.get(1);
        let relname: String = t.get(2);
        let kind: String = t.get(3);
        let qualified = format!("{namespace}.{relname}");
        if namespace == self.schema() {
            return Err(TableRefused(format!(
                "{qualified} is walhook's own table: it never yields events"
            ))
            .into());
        }
        if kind != "r" && kind != "p" {
            return Err(TableRefused(format!("{qualified} is not a table")).into());
        }
        if t.get::<_, bool>(4) {
            let root: Option<String> = t.get(7);
            return Err(TableRefused(format!(
                "{qualified} is a partition: backfill its partitioned table {} instead \
                 (events name it, as the stream does)",
                root.unwrap_or_default()
            ))
            .into());
        }
        let identity = t.get::<_, String>(5).bytes().next().unwrap_or(b'd');
        let published = self
            .client
            .query_opt(
                "SELECT attnames::text[] FROM pg_publication_tables \
                  WHERE pubname::text = $1 AND schemaname::text = $2 AND tablename::text = $3",
                &[&publication, &namespace, &relname],
            )
            .await
            .sql(format!("reading publication {publication:?}"))?;
        // The key is checked first, over every column: a keyless table is in
        // the insert-only publication, and the key is what it lacks.
        let published: Option<Vec<String>> = published.map(|r| r.get(0));
        let columns = self
            .client
            .query(
                "SELECT a.attname::text, a.atttypid, a.atttypmod, \
                        format_type(a.atttypid, a.atttypmod), \
                        COALESCE(a.attnum = ANY((SELECT i.indkey::int2[] FROM pg_index i \
                            WHERE i.indrelid = a.attrelid AND \
                                  CASE WHEN $2::text = 'i' THEN i.indisreplident \
                                       ELSE i.indisprimary END)::int2[]), false), \
                        COALESCE(a.attnum = ANY((SELECT i.indkey::int2[] FROM pg_index i \
                            WHERE i.indrelid = a.attrelid AND i.indisprimary)::int2[]), false) \
                   FROM pg_attribute a \
                  WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                    AND a.attgenerated = '' \
                    AND ($3::text[] IS NULL OR a.attname::text = ANY($3::text[])) \
                  ORDER BY a.attnum",
                &[&oid, &(identity as char).to_string(), &published],
            )
            .await
            .sql(format!("reading the columns of {qualified}"))?;
        let mut shape = TableShape {
            oid,
            namespace,
            name: relname,
            replica_identity: identity,
            columns: Vec::new(),
            key: Vec::new(),
            primary_key: Vec::new(),
            rows_estimate: t.get(6),
        };
        for (i, c) in columns.iter().enumerate() {
            let name: String = c.get(0);
            let in_identity: bool = c.get(4);
            let in_primary: bool = c.get(5);
            if in_primary {
                shape.primary_key.push(name.clone());
            }
            // Chunks go by the key live events carry: the identity index's
            // columns, or the primary key under FULL.
            let keyed = if identity == b'f' {
                in_primary
            } else {
                in_identity
            };
            if keyed {
                shape.key.push(i);
            }
            shape.columns.push(ShapeColumn {
                name,
                type_oid: c.get(1),
                type_modifier: c.get(2),
                type_name: c.get(3),
                is_identity: identity == b'f' || in_identity,
            });
        }
        let sql_name = shape.sql_name();
        let fix = format!(
            "give it a primary key (ALTER TABLE {sql_name} ADD PRIMARY KEY (...)) or a \
             replica identity index (ALTER TABLE {sql_name} REPLICA IDENTITY USING INDEX ...)"
        );
        if identity == b'n' {
            return Err(TableRefused(format!(
                "{qualified} has REPLICA IDENTITY NOTHING, so live changes carry no key to \
                 reconcile a backfill with: {fix}"
            ))
            .into());
        }
        if shape.key.is_empty() {
            return Err(TableRefused(format!(
                "{qualified} has no key (or its key columns are not published), so it cannot \
                 be read in chunks nor reconciled with live changes: {fix}"
            ))
            .into());
        }
        if published.is_none() {
            return Err(TableRefused(format!(
                "{qualified} is not in publication {publication:?}, so its live changes are \
                 not streamed: capture it ([capture] in the config) and run `walhook setup`"
            ))
            .into());
        }
        Ok(shape)
    }

    /// Check `where_sql` against the table without reading rows: a typo is
    /// refused here, not in the daemon.
    pub async fn check_backfill_where(
        &self,
        table: &TableShape,
        where_sql: &str,
    ) -> anyhow::Result<()> {
        self.client
            .query(
                &format!(
                    "EXPLAIN SELECT 1 FROM {} t WHERE ({where_sql})",
                    table.sql_name()
                ),
                &[],
            )
            .await
            .map_err(|e| {
                anyhow::Error::new(TableRefused(format!(
                    "--where {where_sql:?} on {}: {}",
                    table.qualified(),
                    super::pg_message(&e)
                )))
            })?;
        Ok(())
    }

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
                    &new.table.rows_estimate,
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
                    "UPDATE {table} SET last_key = $2, rows_sent = $3, updated = now() \
                     WHERE backfill_id = $1"
                ),
                &[&id, &last_key, &rows_sent],
            )
            .await
            .sql(format!("recording the progress of backfill {id}"))?;
        Ok(())
    }

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
                .batch_execute(&format!("SET {name} = {}", super::literal(value)))
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
