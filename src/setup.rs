//! `walhook setup` and `walhook check`: walhook's objects in the database.
//!
//! Setup is idempotent: it reads what exists, works out the statements that
//! would bring the database to the wanted state, and runs only those (a
//! second run runs nothing and says so). `--dry-run` prints them instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context};
use tokio_postgres::Client;

use crate::config::Config;
use crate::registry::Webhook;

/// The schema, tables and trigger (sql/schema.sql).
const SCHEMA_SQL: &str = include_str!("../sql/schema.sql");

/// The oldest server whose pgoutput and publications walhook relies on
/// (column lists, CREATE OR REPLACE TRIGGER).
pub const MIN_SERVER_VERSION: i32 = 150000;

/// A quoted SQL identifier.
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// A quoted SQL string literal.
pub fn literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}

/// The publication for tables that can only be published for INSERT (and
/// TRUNCATE): publishing their UPDATE or DELETE would make the host's
/// statements fail for want of a replica identity.
pub fn keyless_publication(config: &Config) -> String {
    format!("{}_keyless", config.postgres.publication)
}

/// walhook's publications (the main one, and the insert-only one for
/// tables without an identity), each with whether it exists.
pub async fn publications(client: &Client, config: &Config) -> anyhow::Result<Vec<(String, bool)>> {
    let names = [
        config.postgres.publication.clone(),
        keyless_publication(config),
    ];
    let present: Vec<String> = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname = ANY ($1)",
            &[&names.to_vec()],
        )
        .await
        .context("reading pg_publication")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(names
        .into_iter()
        .map(|name| {
            let exists = present.contains(&name);
            (name, exists)
        })
        .collect())
}

/// One host table as setup sees it.
#[derive(Debug, Clone)]
struct HostTable {
    schema: String,
    name: String,
    /// Has a usable replica identity (primary key, index or FULL).
    has_identity: bool,
    columns: Vec<String>,
}

impl HostTable {
    fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    fn sql_name(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

/// What setup would do.
#[derive(Debug, Default)]
pub struct Plan {
    pub statements: Vec<String>,
    pub warnings: Vec<String>,
    /// Run outside any transaction, after the statements.
    pub create_slot: Option<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.create_slot.is_none()
    }

    /// The SQL as `--dry-run` prints it.
    pub fn sql(&self) -> String {
        let mut out = String::new();
        for s in self.statements.iter().chain(&self.create_slot) {
            let _ = writeln!(out, "{};\n", s.trim_end().trim_end_matches(';'));
        }
        out
    }
}

pub async fn server_version(client: &Client) -> anyhow::Result<i32> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .context("reading server_version_num")?;
    Ok(row.get(0))
}

/// Work out the statements that bring the database to the wanted state.
pub async fn plan(client: &Client, config: &Config) -> anyhow::Result<Plan> {
    let version = server_version(client).await?;
    if version < MIN_SERVER_VERSION {
        bail!(
            "PostgreSQL {} is too old: walhook needs PostgreSQL 15 or newer",
            version / 10000
        );
    }
    let schema = &config.postgres.schema;
    let mut plan = Plan::default();

    // 1. Schema objects.
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL \
                AND to_regclass($3) IS NOT NULL AND to_regclass($4) IS NOT NULL \
                AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'webhook_touch' \
                            AND tgrelid = to_regclass($1))",
            &[
                &format!("{}.webhook", ident(schema)),
                &format!("{}.webhook_usage", ident(schema)),
                &format!("{}.delivery", ident(schema)),
                &format!("{}.registry_snapshot", ident(schema)),
            ],
        )
        .await
        .context("looking for walhook's tables")?;
    let schema_ready: bool = row.get(0);
    if !schema_ready {
        plan.statements
            .push(SCHEMA_SQL.replace("{schema}", &ident(schema)));
    }

    // 2. Publications: an explicit list of the captured host tables.
    let (full, keyless) = wanted_tables(client, config, &mut plan.warnings).await?;
    let publication = &config.postgres.publication;
    plan_publication(
        client,
        &mut plan,
        publication,
        &full,
        "insert, update, delete, truncate",
        config.capture.publish_via_partition_root,
    )
    .await?;
    plan_publication(
        client,
        &mut plan,
        &keyless_publication(config),
        &keyless,
        "insert, truncate",
        config.capture.publish_via_partition_root,
    )
    .await?;

    // 3. The slot.
    let slot = &config.postgres.slot;
    let existing = client
        .query_opt(
            "SELECT plugin::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .context("reading pg_replication_slots")?;
    match existing {
        None => {
            plan.create_slot = Some(format!(
                "SELECT pg_create_logical_replication_slot({}, 'pgoutput')",
                literal(slot)
            ))
        }
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            let wal_status: Option<String> = row.get(1);
            if plugin.as_deref() != Some("pgoutput") {
                bail!(
                    "replication slot {slot:?} exists but uses plugin {plugin:?}, not pgoutput; \
                     choose another [postgres] slot or drop it"
                );
            }
            if wal_status.as_deref() == Some("lost") {
                bail!(
                    "replication slot {slot:?} was invalidated by the server (wal_status lost): \
                     changes since its position are gone. walhook never re-creates it silently; \
                     run `walhook teardown` and `walhook setup` to start over from now"
                );
            }
        }
    }
    Ok(plan)
}

/// The publication entries (`"s"."t"` or `"s"."t" ("a", "b")`) setup wants,
/// keyed by `schema.table`: those with a replica identity, and those
/// published insert-only.
type Entries = BTreeMap<String, String>;

async fn wanted_tables(
    client: &Client,
    config: &Config,
    warnings: &mut Vec<String>,
) -> anyhow::Result<(Entries, Entries)> {
    let schema = &config.postgres.schema;
    let tables = host_tables(client, config).await?;
    let mut full: BTreeMap<String, String> = BTreeMap::new();
    let mut keyless: BTreeMap<String, String> = BTreeMap::new();
    full.insert(
        format!("{schema}.webhook"),
        format!("{}.webhook", ident(schema)),
    );
    for table in &tables {
        let excluded = config
            .tables
            .get(&table.qualified())
            .map(|t| t.exclude_columns.clone())
            .unwrap_or_default();
        for col in &excluded {
            if !table.columns.contains(col) {
                warnings.push(format!(
                    "[tables.\"{}\"] exclude_columns names {col:?}, which the table does not have",
                    table.qualified()
                ));
            }
        }
        let entry = if excluded.is_empty() {
            table.sql_name()
        } else {
            let kept: Vec<String> = table
                .columns
                .iter()
                .filter(|c| !excluded.contains(c))
                .map(|c| ident(c))
                .collect();
            format!("{} ({})", table.sql_name(), kept.join(", "))
        };
        if table.has_identity {
            full.insert(table.qualified(), entry);
        } else {
            warnings.push(format!(
                "table {} has no primary key or replica identity: only its INSERTs and TRUNCATEs \
                 are published (its UPDATE and DELETE keep working). Give it one with \
                 ALTER TABLE {} ADD PRIMARY KEY (...) or ALTER TABLE {} REPLICA IDENTITY FULL, \
                 then run setup again",
                table.qualified(),
                table.sql_name(),
                table.sql_name()
            ));
            keyless.insert(table.qualified(), entry);
        }
    }
    Ok((full, keyless))
}

/// The tables named in a publication and their column lists (empty: all
/// columns), keyed by `schema.table`.
async fn published_tables(
    client: &Client,
    name: &str,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let rows = client
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
            &[&name],
        )
        .await
        .context("reading pg_publication_rel")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Statements that add captured tables found in neither publication, for
/// the running daemon (`capture.auto_add_tables`): nothing is removed or
/// changed, only added.
pub async fn additions(client: &Client, config: &Config) -> anyhow::Result<Vec<String>> {
    let (full, keyless) = wanted_tables(client, config, &mut Vec::new()).await?;
    let main = &config.postgres.publication;
    let insert_only = keyless_publication(config);
    let mut published = published_tables(client, main).await?;
    published.extend(published_tables(client, &insert_only).await?);
    let mut out = Vec::new();
    for (publication, entries) in [(main.as_str(), &full), (insert_only.as_str(), &keyless)] {
        for (qualified, entry) in entries {
            if !published.contains_key(qualified) {
                out.push(format!(
                    "ALTER PUBLICATION {} ADD TABLE {entry}",
                    ident(publication)
                ));
            }
        }
    }
    Ok(out)
}

async fn plan_publication(
    client: &Client,
    plan: &mut Plan,
    name: &str,
    wanted: &BTreeMap<String, String>,
    publish: &str,
    via_root: bool,
) -> anyhow::Result<()> {
    let options = format!(
        "publish = {}, publish_via_partition_root = {via_root}",
        literal(publish)
    );
    let existing = client
        .query_opt(
            "SELECT concat_ws(', ', CASE WHEN pubinsert THEN 'insert' END, \
                    CASE WHEN pubupdate THEN 'update' END, CASE WHEN pubdelete THEN 'delete' END, \
                    CASE WHEN pubtruncate THEN 'truncate' END), pubviaroot \
               FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .context("reading pg_publication")?;
    let list = wanted.values().cloned().collect::<Vec<_>>().join(", ");
    let Some(existing) = existing else {
        plan.statements.push(if wanted.is_empty() {
            format!("CREATE PUBLICATION {} WITH ({options})", ident(name))
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {list} WITH ({options})",
                ident(name)
            )
        });
        return Ok(());
    };
    let current_publish: String = existing.get(0);
    let current_via_root: bool = existing.get(1);
    if current_publish != publish || current_via_root != via_root {
        plan.statements
            .push(format!("ALTER PUBLICATION {} SET ({options})", ident(name)));
    }
    let current = published_tables(client, name).await?;
    let wanted_columns: BTreeMap<String, Vec<String>> = wanted
        .iter()
        .map(|(qualified, entry)| (qualified.clone(), entry_columns(entry)))
        .collect();
    if current == wanted_columns {
        return Ok(());
    }
    if wanted.is_empty() {
        plan.statements
            .push(format!("DROP PUBLICATION {}", ident(name)));
        plan.statements.push(format!(
            "CREATE PUBLICATION {} WITH ({options})",
            ident(name)
        ));
    } else {
        plan.statements.push(format!(
            "ALTER PUBLICATION {} SET TABLE {list}",
            ident(name)
        ));
    }
    Ok(())
}

/// The column names of a publication entry `"s"."t" ("a", "b")`, unquoted.
fn entry_columns(entry: &str) -> Vec<String> {
    match entry.rsplit_once(" (") {
        Some((_, cols)) if entry.ends_with(')') => cols
            .trim_end_matches(')')
            .split(", ")
            .map(|c| c.trim_matches('"').replace("\"\"", "\""))
            .collect(),
        _ => Vec::new(),
    }
}

/// The captured host tables: ordinary and partitioned tables outside the
/// system schemas and walhook's own, selected by the capture patterns.
async fn host_tables(client: &Client, config: &Config) -> anyhow::Result<Vec<HostTable>> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, \
                    CASE c.relreplident \
                      WHEN 'f' THEN true \
                      WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) \
                      WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) \
                      ELSE false END, \
                    ARRAY(SELECT a.attname::text FROM pg_attribute a \
                           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                             AND a.attgenerated = '' ORDER BY a.attnum) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', $1) \
                AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
              ORDER BY 1, 2",
            &[&config.postgres.schema],
        )
        .await
        .context("listing the host's tables")?;
    Ok(rows
        .iter()
        .map(|r| HostTable {
            schema: r.get(0),
            name: r.get(1),
            has_identity: r.get(2),
            columns: r.get(3),
        })
        .filter(|t| config.captures(&t.schema, &t.name))
        .collect())
}

/// Run a plan. Returns what was done, for the user.
pub async fn apply(client: &Client, config: &Config, plan: &Plan) -> anyhow::Result<()> {
    // One transaction: a table moving between the two publications, or a
    // publication re-created, is never half done while the host commits.
    if !plan.statements.is_empty() {
        client
            .batch_execute("BEGIN")
            .await
            .context("starting setup")?;
        for statement in &plan.statements {
            if let Err(e) = client.batch_execute(statement).await {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e).with_context(|| format!("running: {}", first_line(statement)));
            }
        }
        client
            .batch_execute("COMMIT")
            .await
            .context("committing setup")?;
    }
    if let Some(create) = &plan.create_slot {
        // Snapshots of an earlier slot's history describe positions the new
        // slot never had; the new slot starts from the hooks as they are.
        client
            .batch_execute(&format!(
                "DELETE FROM {}.registry_snapshot",
                ident(&config.postgres.schema)
            ))
            .await
            .context("clearing registry snapshots of an earlier slot")?;
        client
            .batch_execute(create)
            .await
            .with_context(|| format!("creating replication slot {:?}", config.postgres.slot))?;
    }
    seed_snapshot(client, config).await
}

/// Record the hooks as they stand at the slot's position when no snapshot
/// exists yet, so a restart can match replayed changes against them.
async fn seed_snapshot(client: &Client, config: &Config) -> anyhow::Result<()> {
    let s = ident(&config.postgres.schema);
    let sql = format!(
        "INSERT INTO {s}.registry_snapshot (lsn, hooks) \
         SELECT r.confirmed_flush_lsn, \
                coalesce((SELECT jsonb_agg(jsonb_build_object( \
                    'webhook_id', w.webhook_id::text, 'name', w.name::text, \
                    'events', w.events::text, 'target_url', w.target_url::text, \
                    'type', w.type::text, 'headers', w.headers::text, \
                    'properties', w.properties::text, 'secret', w.secret::text, \
                    'state', w.state::text)) FROM {s}.webhook w), '[]'::jsonb) \
           FROM pg_replication_slots r \
          WHERE r.slot_name = $1 AND r.confirmed_flush_lsn IS NOT NULL \
            AND NOT EXISTS (SELECT 1 FROM {s}.registry_snapshot) \
         ON CONFLICT (lsn) DO NOTHING"
    );
    client
        .execute(&sql, &[&config.postgres.slot])
        .await
        .context("recording the hooks at the slot's position")?;
    Ok(())
}

fn first_line(sql: &str) -> &str {
    sql.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or(sql)
}

/// One line of `walhook check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckLevel {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone)]
pub struct CheckLine {
    pub level: CheckLevel,
    pub text: String,
}

/// The pre-flight checks that need a database connection.
pub async fn check(client: &Client, config: &Config) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    match server_version(client).await {
        Ok(v) if v >= MIN_SERVER_VERSION => {
            push(CheckLevel::Ok, format!("server version {}", v / 10000))
        }
        Ok(v) => push(
            CheckLevel::Fail,
            format!(
                "server version {} is too old: walhook needs PostgreSQL 15 or newer",
                v / 10000
            ),
        ),
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    match client.query_one("SHOW wal_level", &[]).await {
        Ok(row) if row.get::<_, String>(0) == "logical" => {
            push(CheckLevel::Ok, "wal_level is logical".into())
        }
        Ok(row) => push(
            CheckLevel::Fail,
            format!(
                "wal_level is {}: set wal_level = logical in postgresql.conf and restart PostgreSQL",
                row.get::<_, String>(0)
            ),
        ),
        Err(e) => push(CheckLevel::Fail, format!("SHOW wal_level: {e}")),
    }
    match client
        .query_one(
            "SELECT current_user::text, rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
    {
        Ok(row) if row.get::<_, bool>(1) => push(
            CheckLevel::Ok,
            format!("role {} may stream (REPLICATION)", row.get::<_, String>(0)),
        ),
        Ok(row) => push(
            CheckLevel::Fail,
            format!(
                "role {0} lacks the REPLICATION attribute: ALTER ROLE {0} REPLICATION (note that it then reads every published change regardless of row-level security)",
                row.get::<_, String>(0)
            ),
        ),
        Err(e) => push(CheckLevel::Fail, format!("reading pg_roles: {e}")),
    }
    match client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots)::int, \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&config.postgres.slot],
        )
        .await
    {
        Ok(row) => {
            let (max, used, ours): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
            if !ours && used >= max {
                push(
                    CheckLevel::Fail,
                    format!("max_replication_slots is {max} and all are in use: raise it in postgresql.conf (restart needed) or drop an unused slot"),
                );
            } else {
                push(
                    CheckLevel::Ok,
                    format!("max_replication_slots {max}, {used} in use"),
                );
            }
        }
        Err(e) => push(
            CheckLevel::Fail,
            format!("reading max_replication_slots: {e}"),
        ),
    }
    let slot = &config.postgres.slot;
    match client
        .query_opt(
            "SELECT plugin::text, wal_status, active FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
    {
        Ok(None) => push(
            CheckLevel::Fail,
            format!("replication slot {slot:?} does not exist: run `walhook setup`"),
        ),
        Ok(Some(row)) => {
            let wal_status: Option<String> = row.get(1);
            if wal_status.as_deref() == Some("lost") {
                push(
                    CheckLevel::Fail,
                    format!("replication slot {slot:?} was invalidated (wal_status lost): changes were lost; walhook will not re-create it silently"),
                );
            } else {
                push(CheckLevel::Ok, format!("replication slot {slot:?} exists"));
            }
        }
        Err(e) => push(CheckLevel::Fail, format!("reading pg_replication_slots: {e}")),
    }
    match publications(client, config).await {
        Ok(list) => {
            for (publication, exists) in list {
                if exists {
                    push(
                        CheckLevel::Ok,
                        format!("publication {publication:?} exists"),
                    );
                } else {
                    push(
                        CheckLevel::Fail,
                        format!("publication {publication:?} does not exist: run `walhook setup`"),
                    );
                }
            }
        }
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    match client
        .query(
            "SELECT schemaname::text || '.' || tablename::text, c.relreplident::text \
               FROM pg_publication_tables p \
               JOIN pg_namespace n ON n.nspname = p.schemaname \
               JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
              WHERE p.pubname = $1 AND p.schemaname <> $2 ORDER BY 1",
            &[&config.postgres.publication, &config.postgres.schema],
        )
        .await
    {
        Ok(rows) => {
            for row in rows {
                let table: String = row.get(0);
                let identity: String = row.get(1);
                if identity != "f" {
                    push(
                        CheckLevel::Warn,
                        format!(
                            "table {table}: UPDATE events list every sent column (ChangesExact false); \
                             ALTER TABLE {table} REPLICA IDENTITY FULL makes Changes exact at the cost \
                             of logging the whole old row in the WAL for each UPDATE and DELETE"
                        ),
                    );
                }
            }
        }
        Err(e) => push(CheckLevel::Warn, format!("reading published tables: {e}")),
    }
    match client
        .query(
            "SELECT schemaname::text || '.' || tablename::text FROM pg_publication_tables \
              WHERE pubname = $1 ORDER BY 1",
            &[&keyless_publication(config)],
        )
        .await
    {
        Ok(rows) => {
            for row in rows {
                let table: String = row.get(0);
                push(
                    CheckLevel::Warn,
                    format!(
                        "table {table} has no primary key or replica identity: only INSERT and \
                         TRUNCATE events are sent; add a primary key or ALTER TABLE {table} \
                         REPLICA IDENTITY FULL, then run `walhook setup`"
                    ),
                );
            }
        }
        Err(e) => push(CheckLevel::Warn, format!("reading published tables: {e}")),
    }
    match crate::registry::load_rows(client, &config.postgres.schema).await {
        Ok(rows) => {
            let mut bad = 0;
            for row in &rows {
                match Webhook::from_row(row) {
                    Ok(hook) => {
                        if let Err(refusal) =
                            crate::delivery::check_target(&config.delivery, &hook.target_url)
                        {
                            bad += 1;
                            push(
                                CheckLevel::Warn,
                                format!("webhook_id {}: {refusal}", hook.id),
                            );
                        }
                    }
                    Err(why) => {
                        bad += 1;
                        let id = row
                            .0
                            .get("webhook_id")
                            .cloned()
                            .flatten()
                            .unwrap_or_default();
                        push(
                            CheckLevel::Warn,
                            format!("webhook_id {id} is skipped: {why}"),
                        );
                    }
                }
            }
            if bad == 0 {
                push(
                    CheckLevel::Ok,
                    format!("{} webhook row(s) valid", rows.len()),
                );
            }
        }
        Err(e) => push(
            CheckLevel::Fail,
            format!(
                "reading {}.webhook: {e} (run `walhook setup`)",
                config.postgres.schema
            ),
        ),
    }
    out
}
