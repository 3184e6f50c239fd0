//! What walhook reads from the server's catalog: types and keys for the
//! event stage, tables and publications for setup, and the settings and
//! privileges `check` reports.

use std::collections::BTreeMap;

use super::{SqlResult, Store};
use crate::events::catalog::{CatalogRows, FIRST_NORMAL_OBJECT_ID};

/// One host table as setup sees it.
#[derive(Debug, Clone)]
pub struct HostTable {
    pub schema: String,
    pub name: String,
    /// Has a usable replica identity (primary key, index or FULL).
    pub has_identity: bool,
    /// REPLICA IDENTITY FULL: every column is part of the identity.
    pub identity_full: bool,
    /// The columns of the identity's index (primary key or USING INDEX),
    /// in table order; empty under FULL or without an identity.
    pub identity_columns: Vec<String>,
    pub columns: Vec<String>,
    /// UNLOGGED: never in the WAL, so never publishable.
    pub unlogged: bool,
}

impl HostTable {
    /// `schema.table` as people read it and config keys name it.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// A table in a publication, with its column list (empty: every column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
}

/// A publication's options as the server holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationOptions {
    /// `insert, update, delete, truncate` or a subset, in that order.
    pub publish: String,
    pub via_partition_root: bool,
}

/// The role walhook connects as.
#[derive(Debug, Clone)]
pub struct RoleFacts {
    pub name: String,
    /// REPLICATION (or superuser).
    pub may_stream: bool,
}

/// `max_replication_slots` and how many are in use.
#[derive(Debug, Clone)]
pub struct SlotCapacity {
    pub max: i32,
    pub used: i32,
    /// The configured slot is one of them.
    pub ours: bool,
}

impl Store {
    /// Every type in `pg_type`, the attributes of the composite types that
    /// table columns can reach, and the casts to json of non-built-in
    /// types; `loaded_at` is read first, so that every change committed
    /// before it is visible to the queries after it.
    pub async fn type_catalog(&self) -> anyhow::Result<CatalogRows> {
        let loaded_at = self.wal_insert_position().await?;
        let types = self
            .client
            .query(
                "SELECT t.oid, t.typtype::text, t.typelem, \
                        coalesce(e.typdelim, t.typdelim)::text, t.typbasetype, \
                        t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc, \
                        format_type(t.oid, NULL) \
                   FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem",
                &[],
            )
            .await
            .sql("reading the type catalog (pg_type)")?
            .iter()
            .map(|row| {
                let kind: String = row.get(1);
                let delimiter: String = row.get(3);
                crate::events::catalog::TypeRow {
                    oid: row.get(0),
                    kind: kind.bytes().next().unwrap_or(b'b'),
                    element: row.get(2),
                    delimiter: delimiter.bytes().next().unwrap_or(b','),
                    base: row.get(4),
                    is_array: row.get(5),
                    name: row.get(6),
                }
            })
            .collect();
        // Attributes of the composite types a table column can reach
        // (directly, or through arrays, domains and other composites):
        // every table's row type would be far more than needed.
        let fields = self
            .client
            .query(
                "WITH RECURSIVE reach(oid, depth) AS ( \
                     SELECT DISTINCT atttypid, 0 FROM pg_attribute \
                      WHERE attnum > 0 AND NOT attisdropped \
                     UNION \
                     SELECT v.oid, r.depth + 1 FROM reach r \
                       JOIN pg_type t ON t.oid = r.oid \
                      CROSS JOIN LATERAL (VALUES (t.typelem), (t.typbasetype)) v(oid) \
                      WHERE v.oid <> 0 AND r.depth < 16) \
                 SELECT t.oid, a.attname::text, a.atttypid \
                   FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid \
                  WHERE t.typtype = 'c' AND a.attnum > 0 AND NOT a.attisdropped \
                    AND t.oid IN (SELECT oid FROM reach) \
                  ORDER BY t.oid, a.attnum",
                &[],
            )
            .await
            .sql("reading composite type attributes (pg_attribute)")?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        // A composite type without attributes (`CREATE TYPE t AS ()`) has
        // no pg_attribute row; it still renders, as `{}`.
        let empty_composites = self
            .client
            .query(
                "SELECT t.oid FROM pg_type t \
                  WHERE t.typtype = 'c' AND NOT EXISTS (SELECT 1 FROM pg_attribute a \
                        WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)",
                &[],
            )
            .await
            .sql("reading composite types without attributes")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // No built-in type has a function cast to json (and `to_jsonb()`
        // ignores those of built-in types anyway); extensions such as
        // hstore add one.
        let json_casts = self
            .client
            .query(
                "SELECT c.castsource, p.proname::text \
                   FROM pg_cast c JOIN pg_proc p ON p.oid = c.castfunc \
                  WHERE c.casttarget = 'json'::regtype AND c.castmethod = 'f' \
                    AND c.castsource >= $1",
                &[&FIRST_NORMAL_OBJECT_ID],
            )
            .await
            .sql("reading casts to json (pg_cast)")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(CatalogRows {
            loaded_at,
            types,
            fields,
            empty_composites,
            json_casts,
        })
    }

    /// The primary-key columns of a relation, in key order (empty when
    /// none).
    pub async fn primary_key(&self, relation_oid: u32) -> anyhow::Result<Vec<String>> {
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_index i \
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                &[&relation_oid],
            )
            .await
            .sql(format!(
                "reading the primary key of relation oid {relation_oid}"
            ))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// `server_version_num`, e.g. 150004.
    pub async fn server_version(&self) -> anyhow::Result<i32> {
        Ok(self
            .client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .sql("reading server_version_num")?
            .get(0))
    }

    /// The database's encoding (`server_encoding`), e.g. `UTF8`.
    pub async fn server_encoding(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .query_one("SHOW server_encoding", &[])
            .await
            .sql("SHOW server_encoding")?
            .get(0))
    }

    pub async fn wal_level(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .query_one("SHOW wal_level", &[])
            .await
            .sql("SHOW wal_level")?
            .get(0))
    }

    pub async fn role(&self) -> anyhow::Result<RoleFacts> {
        let row = self
            .client
            .query_one(
                "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles \
                  WHERE rolname = current_user",
                &[],
            )
            .await
            .sql("reading pg_roles")?;
        Ok(RoleFacts {
            name: row.get(0),
            may_stream: row.get(1),
        })
    }

    pub async fn slot_capacity(&self, slot: &str) -> anyhow::Result<SlotCapacity> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('max_replication_slots')::int, \
                        (SELECT count(*) FROM pg_replication_slots)::int, \
                        EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
                &[&slot],
            )
            .await
            .sql("reading max_replication_slots")?;
        Ok(SlotCapacity {
            max: row.get(0),
            used: row.get(1),
            ours: row.get(2),
        })
    }

    /// Which of `names` exist as publications.
    pub async fn existing_publications(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        Ok(self
            .client
            .query(
                "SELECT pubname::text FROM pg_publication WHERE pubname = ANY ($1)",
                &[&names],
            )
            .await
            .sql("reading pg_publication")?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// A publication's options, `None` when it does not exist.
    pub async fn publication_options(
        &self,
        name: &str,
    ) -> anyhow::Result<Option<PublicationOptions>> {
        let row = self
            .client
            .query_opt(
                "SELECT concat_ws(', ', CASE WHEN pubinsert THEN 'insert' END, \
                        CASE WHEN pubupdate THEN 'update' END, CASE WHEN pubdelete THEN 'delete' END, \
                        CASE WHEN pubtruncate THEN 'truncate' END), pubviaroot \
                   FROM pg_publication WHERE pubname = $1",
                &[&name],
            )
            .await
            .sql("reading pg_publication")?;
        Ok(row.map(|r| PublicationOptions {
            publish: r.get(0),
            via_partition_root: r.get(1),
        }))
    }

    /// The tables named in a publication and their column lists (empty:
    /// all columns), keyed by `schema.table`.
    pub async fn published_tables(
        &self,
        publication: &str,
    ) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text || '.' || c.relname::text, \
                        coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) \
                                    FROM pg_attribute a \
                                   WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs)), \
                                 '{}'::text[]) \
                   FROM pg_publication_rel pr \
                   JOIN pg_publication p ON p.oid = pr.prpubid \
                   JOIN pg_class c ON c.oid = pr.prrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE p.pubname = $1",
                &[&publication],
            )
            .await
            .sql("reading pg_publication_rel")?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The published host tables (walhook's own schema left out) with
    /// their replica identity (`d`, `f`, `i`, `n`).
    pub async fn published_identities(
        &self,
        publication: &str,
    ) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .client
            .query(
                "SELECT schemaname::text || '.' || tablename::text, c.relreplident::text \
                   FROM pg_publication_tables p \
                   JOIN pg_namespace n ON n.nspname = p.schemaname \
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
                  WHERE p.pubname = $1 AND p.schemaname <> $2 ORDER BY 1",
                &[&publication, &self.schema()],
            )
            .await
            .sql("reading published tables")?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    /// The published host tables that have a column list (walhook's own
    /// schema left out), each with the identity columns the list leaves
    /// out: under REPLICA IDENTITY FULL every column is in the identity.
    /// PostgreSQL refuses UPDATE and DELETE on a table whose list does not
    /// cover its identity.
    pub async fn column_lists(&self, publication: &str) -> anyhow::Result<Vec<ColumnListFacts>> {
        Ok(self
            .client
            .query(
                "SELECT n.nspname::text || '.' || c.relname::text, c.relreplident = 'f', \
                        format('%I.%I', n.nspname, c.relname), \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                                 AND NOT (a.attnum = ANY (pr.prattrs)) \
                                 AND (c.relreplident = 'f' OR a.attnum IN ( \
                                      SELECT unnest(i.indkey) FROM pg_index i \
                                       WHERE i.indrelid = c.oid \
                                         AND ((c.relreplident = 'd' AND i.indisprimary) \
                                           OR (c.relreplident = 'i' AND i.indisreplident)))) \
                               ORDER BY a.attnum) \
                   FROM pg_publication_rel pr \
                   JOIN pg_publication p ON p.oid = pr.prpubid \
                   JOIN pg_class c ON c.oid = pr.prrelid \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE p.pubname = $1 AND pr.prattrs IS NOT NULL AND n.nspname <> $2 \
                  ORDER BY 1",
                &[&publication, &self.schema()],
            )
            .await
            .sql("reading the column lists of published tables")?
            .iter()
            .map(|r| ColumnListFacts {
                table: r.get(0),
                identity_full: r.get(1),
                sql_name: r.get(2),
                uncovered_identity: r.get(3),
            })
            .collect())
    }

    /// The published host tables, to map an entity back to its tables.
    pub async fn published_for_filters(
        &self,
        publication: &str,
    ) -> anyhow::Result<Vec<FilterTable>> {
        Ok(self
            .client
            .query(
                "SELECT p.schemaname::text, p.tablename::text, c.relreplident = 'f', \
                        p.attnames::text[] \
                   FROM pg_publication_tables p \
                   JOIN pg_namespace n ON n.nspname = p.schemaname \
                   JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
                  WHERE p.pubname = $1 AND p.schemaname <> $2 ORDER BY 1, 2",
                &[&publication, &self.schema()],
            )
            .await
            .sql("reading the replica identity of published tables")?
            .iter()
            .map(|r| FilterTable {
                schema: r.get(0),
                table: r.get(1),
                full: r.get(2),
                columns: r.get(3),
            })
            .collect())
    }

    /// The ordinary and partitioned tables outside the system schemas and
    /// walhook's own (partitions are published through their root).
    pub async fn host_tables(&self) -> anyhow::Result<Vec<HostTable>> {
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text, \
                        CASE c.relreplident \
                          WHEN 'f' THEN true \
                          WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
                          WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                          ELSE false END, \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                               WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                                 AND a.attgenerated = '' ORDER BY a.attnum), \
                        c.relreplident = 'f', \
                        ARRAY(SELECT a.attname::text FROM pg_attribute a \
                               WHERE a.attrelid = c.oid AND a.attnum IN ( \
                                     SELECT unnest(i.indkey) FROM pg_index i \
                                      WHERE i.indrelid = c.oid \
                                        AND ((c.relreplident = 'd' AND i.indisprimary) \
                                          OR (c.relreplident = 'i' AND i.indisreplident))) \
                               ORDER BY a.attnum), \
                        c.relpersistence = 'u' \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) \
                    AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
                  ORDER BY 1, 2",
                &[&self.schema()],
            )
            .await
            .sql("listing the host's tables")?;
        Ok(rows
            .iter()
            .map(|r| HostTable {
                schema: r.get(0),
                name: r.get(1),
                has_identity: r.get(2),
                columns: r.get(3),
                identity_full: r.get(4),
                identity_columns: r.get(5),
                unlogged: r.get(6),
            })
            .collect())
    }

    /// Whether walhook's tables and trigger all exist.
    pub async fn schema_ready(&self) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL \
                    AND to_regclass($3) IS NOT NULL AND to_regclass($4) IS NOT NULL \
                    AND to_regclass($5) IS NOT NULL AND to_regclass($6) IS NOT NULL \
                    AND to_regclass($7) IS NOT NULL AND to_regclass($8) IS NOT NULL \
                    AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'webhook_touch' \
                                AND tgrelid = to_regclass($1))",
                &[
                    &self.table("webhook"),
                    &self.table("webhook_usage"),
                    &self.table("delivery"),
                    &self.table("registry_snapshot"),
                    &self.table("slot_progress"),
                    &self.table("webhook_control"),
                    // Made last, by the migration to shared payloads too.
                    &self.table("parked_event"),
                    // Made with the move of properties out of `delivery`.
                    &self.table("delivery_properties"),
                ],
            )
            .await
            .sql("looking for walhook's tables")?
            .get(0))
    }

    pub async fn schema_exists(&self) -> anyhow::Result<bool> {
        Ok(self
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&self.schema()],
            )
            .await
            .sql(format!("looking for schema {:?}", self.schema()))?
            .get(0))
    }

    /// How many hooks and parked events the schema holds, for `teardown`.
    pub async fn schema_contents(&self) -> anyhow::Result<(i64, i64)> {
        let row = self
            .client
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {}), (SELECT count(*) FROM {})",
                    self.table("webhook"),
                    self.table("delivery")
                ),
                &[],
            )
            .await
            .sql(format!("counting the rows of schema {:?}", self.schema()))?;
        Ok((row.get(0), row.get(1)))
    }
}

/// A published host table as column filters see it.
#[derive(Debug, Clone)]
pub struct FilterTable {
    pub schema: String,
    pub table: String,
    /// REPLICA IDENTITY FULL: `Changes` is exact.
    pub full: bool,
    /// The published columns: the only names `Changes` can hold.
    pub columns: Vec<String>,
}

/// A published table with a column list (`exclude_columns`).
#[derive(Debug, Clone)]
pub struct ColumnListFacts {
    /// `schema.table`.
    pub table: String,
    /// The name as SQL needs it (quoted where needed).
    pub sql_name: String,
    pub identity_full: bool,
    /// Identity columns the list leaves out (non-empty: PostgreSQL fails
    /// the table's UPDATE and DELETE).
    pub uncovered_identity: Vec<String>,
}
