//! The shape of a table to backfill: resolved as the stream publishes it,
//! refused with the fix when it cannot be backfilled, and checked for what
//! the reading role may read.

use tokio_postgres::error::SqlState;

use super::super::{failed, ident, pg_message, SqlResult, Store};

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
    /// `pg_class.reltuples`; `None` when the table was never analysed or
    /// vacuumed (PostgreSQL then says -1), see [`Store::estimate_rows`].
    pub rows_estimate: Option<i64>,
    /// The role that reads it (the session's `current_user`), named in the
    /// fix when it lacks a privilege.
    pub reader: String,
}

impl TableShape {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    pub(super) fn sql_name(&self) -> String {
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

/// The reading role lacks a privilege on the table or its schema: the
/// message names the role and the GRANTs, which fix it without registering
/// the backfill again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "role {role:?} may not read {table} ({cause}): backfill reads the table as the daemon's \
     role (postgres.url); as the table's owner or a superuser: {}",
    grants.join("; ")
)]
pub struct MissingGrant {
    pub role: String,
    /// `schema.table`, as people read it.
    pub table: String,
    /// What the server said, or which privilege is missing.
    pub cause: String,
    /// The statements that fix it.
    pub grants: Vec<String>,
}

impl MissingGrant {
    /// The refusal for `role` on `(namespace, name)`, with the GRANTs it
    /// lacks.
    pub(super) fn new(
        role: &str,
        (namespace, name): (&str, &str),
        cause: String,
        needs_usage: bool,
        needs_select: bool,
    ) -> MissingGrant {
        let mut grants = Vec::new();
        if needs_usage {
            grants.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {}",
                ident(namespace),
                ident(role)
            ));
        }
        if needs_select {
            grants.push(format!(
                "GRANT SELECT ON {}.{} TO {}",
                ident(namespace),
                ident(name),
                ident(role)
            ));
        }
        MissingGrant {
            role: role.to_owned(),
            table: format!("{namespace}.{name}"),
            cause,
            grants,
        }
    }
}

/// A table never analysed is counted up to this many rows for its
/// estimate; past it the planner's estimate is used.
const COUNT_ROWS_UP_TO: i64 = 100_000;

/// Why a table cannot be backfilled; the message says how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TableRefused(pub String);

impl Store {
    /// Resolve `name` (as SQL spells it: `crm.contact`, `"Odd Name"`) to
    /// the table the stream publishes, or say why it cannot be backfilled.
    pub async fn backfill_table(
        &self,
        name: &str,
        publication: &str,
    ) -> anyhow::Result<TableShape> {
        let found = match self
            .client
            .query_opt(
                "SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, \
                        c.relispartition, c.relreplident::text, c.reltuples::bigint, \
                        CASE WHEN c.relispartition THEN pg_partition_root(c.oid)::regclass::text END, \
                        current_user::text, has_schema_privilege(n.oid, 'USAGE') \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = to_regclass($1)",
                &[&name],
            )
            .await
        {
            Ok(found) => found,
            // to_regclass refuses a schema the role may not use: the
            // catalogs name the table all the same.
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                return Err(self.schema_refused(name, pg_message(&e)).await?)
            }
            Err(e) => return Err(failed(format!("looking up table {name:?}"), e)),
        };
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
                            WHERE i.indrelid = a.attrelid AND i.indisprimary)::int2[]), false), \
                        has_column_privilege(a.attrelid, a.attnum, 'SELECT') \
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
            rows_estimate: Some(t.get::<_, i64>(6)).filter(|&n| n >= 0),
            reader: t.get(8),
        };
        let may_use_schema: bool = t.get(9);
        let mut unreadable = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            let name: String = c.get(0);
            if !c.get::<_, bool>(6) {
                unreadable.push(name.clone());
            }
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
        if !may_use_schema || !unreadable.is_empty() {
            let cause = if may_use_schema {
                format!("no SELECT on column(s) {}", unreadable.join(", "))
            } else {
                format!("no USAGE on schema {}", shape.namespace)
            };
            return Err(MissingGrant::new(
                &shape.reader,
                (&shape.namespace, &shape.name),
                cause,
                !may_use_schema,
                !unreadable.is_empty(),
            )
            .into());
        }
        Ok(shape)
    }

    /// The refusal for a name whose schema the role may not use: the
    /// catalogs, readable by any role, resolve the name instead.
    async fn schema_refused(&self, name: &str, cause: String) -> anyhow::Result<anyhow::Error> {
        let found = self
            .client
            .query_opt(
                "SELECT n.nspname::text, c.relname::text, current_user::text, \
                        has_table_privilege(c.oid, 'SELECT') \
                   FROM (SELECT parse_ident($1) AS parts) p \
                   JOIN pg_namespace n ON n.nspname = p.parts[1] \
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.parts[2] \
                  WHERE cardinality(p.parts) = 2",
                &[&name],
            )
            .await
            .sql(format!("looking up table {name:?} in the catalogs"))?;
        Ok(match found {
            Some(t) => MissingGrant::new(
                &t.get::<_, String>(2),
                (&t.get::<_, String>(0), &t.get::<_, String>(1)),
                cause,
                true,
                !t.get::<_, bool>(3),
            )
            .into(),
            None => TableRefused(format!("looking up table {name:?}: {cause}")).into(),
        })
    }

    /// About how many rows `table` has: `reltuples` once PostgreSQL
    /// analysed it, else a count up to [`COUNT_ROWS_UP_TO`] (a fresh table
    /// is often small) and past that the planner's estimate.
    pub async fn estimate_rows(&self, table: &TableShape) -> anyhow::Result<i64> {
        if let Some(n) = table.rows_estimate {
            return Ok(n);
        }
        let what = || format!("estimating the rows of {}", table.qualified());
        let counted: i64 = self
            .client
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT FROM {} LIMIT {}) t",
                    table.sql_name(),
                    COUNT_ROWS_UP_TO + 1
                ),
                &[],
            )
            .await
            .sql(what())?
            .get(0);
        if counted <= COUNT_ROWS_UP_TO {
            return Ok(counted);
        }
        let plan: serde_json::Value = self
            .client
            .query_one(
                &format!("EXPLAIN (FORMAT JSON) SELECT FROM {}", table.sql_name()),
                &[],
            )
            .await
            .sql(what())?
            .get(0);
        let planned = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64;
        Ok(planned.max(counted))
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
                    pg_message(&e)
                )))
            })?;
        Ok(())
    }
}
