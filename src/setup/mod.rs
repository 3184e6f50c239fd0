//! `walhook setup`: walhook's objects in the database, and `walhook check`
//! ([`check`]).
//!
//! Setup is idempotent: it reads what exists, works out the statements that
//! would bring the database to the wanted state, and runs only those (a
//! second run runs nothing and says so). `--dry-run` prints them instead.
//! What to create is decided here from typed facts; the SQL is the
//! store's.

mod check;
mod cluster;
mod failover;
mod instances;
mod line;
mod privileges;
mod rules_check;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;

pub use self::check::{
    check, check_delivery_files, check_setup_role, is_set_up, published_tables, unknown_entities,
};
pub use self::cluster::check_cluster;
pub use self::instances::{instance_config, instance_from_env, instance_line, INSTANCE_VAR};
pub use self::line::{CheckLevel, CheckLine};
pub use self::privileges::{run_role_to_grant, setup_problems, teardown_problems};
pub use self::rules_check::{old_columns_warning, rule_lines};
use crate::config::Config;
use crate::store::catalog::{HostTable, PublicationOptions, PublishedTable};
use crate::store::privileges::run_role_grants;
use crate::store::{ddl, Store};

/// The oldest server whose pgoutput and publications walhook relies on
/// (column lists, CREATE OR REPLACE TRIGGER).
pub const MIN_SERVER_VERSION: i32 = 150000;

/// Why walhook refuses a database whose encoding is not UTF-8: the
/// replication stream carries text in the server's encoding, and a byte
/// that is not UTF-8 (SQL_ASCII accepts any) makes the server fail the
/// stream at that change, every time it is read again.
pub fn encoding_problem(encoding: &str) -> Option<String> {
    (encoding != "UTF8").then(|| {
        format!(
            "the database's encoding is {encoding}, not UTF8: walhook sends JSON, which is \
             UTF-8, and a value the server cannot convert stops the replication stream at that \
             change. Move the data to a database created with ENCODING 'UTF8' (pg_dump, then \
             restore into it) and point postgres.url there"
        )
    })
}

/// What setup would do.
#[derive(Debug, Default)]
pub struct Plan {
    pub statements: Vec<String>,
    /// What the statements change in the publications, in words.
    pub publication_changes: Vec<String>,
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

/// The tables each publication should list, keyed by `schema.table`.
type Wanted = BTreeMap<String, PublishedTable>;

/// Work out the statements that bring the database to the wanted state.
pub async fn plan(store: &Store, config: &Config) -> anyhow::Result<Plan> {
    let version = store.server_version().await?;
    if version < MIN_SERVER_VERSION {
        bail!(
            "PostgreSQL {} is too old: walhook needs PostgreSQL 15 or newer",
            version / 10000
        );
    }
    if config.postgres.failover_slot {
        if let Some(refusal) = failover::failover_refusal(version) {
            bail!("{refusal}");
        }
    }
    let mut plan = Plan::default();

    // 1. Schema objects.
    let schema_ready = store.schema_ready().await?;
    if !schema_ready {
        plan.statements
            .push(ddl::create_schema(&config.postgres.schema));
    }

    // 2. Publications: an explicit list of the captured host tables.
    let WantedTables {
        full,
        keyless,
        refused,
        unlogged,
    } = wanted_tables(store, config, &mut plan.warnings).await?;
    plan.warnings.extend(unlogged.into_values());
    if !refused.is_empty() {
        bail!(
            "setup refuses a publication that would make the application's statements fail, \
             so nothing was changed:\n  - {}",
            refused.into_values().collect::<Vec<_>>().join("\n  - ")
        );
    }
    let via_root = config.capture.publish_via_partition_root;
    let [main, insert_only] = config.publications();
    for (name, wanted, publish) in [
        (main, &full, "insert, update, delete, truncate"),
        (insert_only, &keyless, "insert, truncate"),
    ] {
        let options = PublicationOptions {
            publish: publish.to_owned(),
            via_partition_root: via_root,
        };
        plan_publication(store, &mut plan, &name, wanted, &options).await?;
    }

    // 3. What the daemon's role needs, when setup runs as another role.
    if let Some(role) = run_role_to_grant(config)? {
        // A missing role is `setup_problems`' to report.
        // Tables the schema statements are about to create (an upgrade adds
        // some) are not in the catalog yet, so their grants are given then.
        if store.role_exists(&role).await?
            && (!schema_ready || !store.run_role_has_grants(&role).await?)
        {
            plan.statements
                .extend(run_role_grants(&config.postgres.schema, &role));
        }
    }

    // 4. The slot.
    let slot = &config.postgres.slot;
    if !store.check_slot_for_setup(slot).await? {
        plan.create_slot = Some(ddl::create_slot(slot, config.postgres.failover_slot));
    } else if config.postgres.failover_slot {
        // Re-creating the slot would lose the changes it holds.
        let facts = store.slot_facts(slot).await?;
        if facts.is_some_and(|f| f.failover != Some(true)) {
            plan.warnings.push(failover::not_a_failover_slot(slot));
        }
    }
    Ok(plan)
}

/// The captured host tables.
async fn captured_tables(store: &Store, config: &Config) -> anyhow::Result<Vec<HostTable>> {
    Ok(store
        .host_tables()
        .await?
        .into_iter()
        .filter(|t| config.captures(&t.schema, &t.name))
        .collect())
}

/// The tables setup wants published, and those it refuses to publish.
#[derive(Debug, Default)]
struct WantedTables {
    /// Those with a replica identity (and walhook's own `webhook` and
    /// `webhook_control`): every operation.
    full: Wanted,
    /// Those without one: INSERT and TRUNCATE only.
    keyless: Wanted,
    /// Tables left out, each with why and the fix, keyed by `schema.table`.
    refused: BTreeMap<String, String>,
    /// UNLOGGED tables, left out (PostgreSQL refuses them in a
    /// publication), each with what to do, keyed by `schema.table`.
    unlogged: BTreeMap<String, String>,
}

/// Why a table with a replica identity cannot be published with the
/// column list `exclude_columns` gives it: PostgreSQL refuses UPDATE and
/// DELETE on a table whose publication column list does not cover its
/// replica identity ("cannot update table"), and under REPLICA IDENTITY
/// FULL every column is in the identity.
fn identity_refusal(table: &HostTable, excluded: &[String]) -> Option<String> {
    if excluded.is_empty() || !table.has_identity {
        return None;
    }
    let qualified = table.qualified();
    let sql_name = format!(
        "{}.{}",
        crate::store::ident(&table.schema),
        crate::store::ident(&table.name)
    );
    let key = format!("[tables.\"{qualified}\"] exclude_columns");
    if table.identity_full {
        return Some(format!(
            "table {qualified} has REPLICA IDENTITY FULL, so every column is part of its \
             identity, and {key} leaves out {}: PostgreSQL would then refuse every UPDATE and \
             DELETE on the table (\"cannot update table\"). Either give it back its key as \
             identity (ALTER TABLE {sql_name} REPLICA IDENTITY DEFAULT; Changes then lists every \
             sent column) or remove the excluded columns from {key}, then run setup again",
            excluded.join(", ")
        ));
    }
    let in_identity: Vec<&str> = excluded
        .iter()
        .filter(|c| table.identity_columns.contains(c))
        .map(String::as_str)
        .collect();
    if in_identity.is_empty() {
        return None;
    }
    Some(format!(
        "table {qualified}: {key} leaves out {}, part of its replica identity ({}): PostgreSQL \
         would then refuse every UPDATE and DELETE on the table (\"cannot update table\"). \
         Remove {} from {key} (the identity is the event's PrimaryKey and is always sent), or \
         give the table an identity without it (ALTER TABLE {sql_name} REPLICA IDENTITY USING \
         INDEX ...), then run setup again",
        in_identity.join(", "),
        table.identity_columns.join(", "),
        in_identity.join(", "),
    ))
}

/// The tables setup wants published and those it refuses.
async fn wanted_tables(
    store: &Store,
    config: &Config,
    warnings: &mut Vec<String>,
) -> anyhow::Result<WantedTables> {
    let schema = &config.postgres.schema;
    let mut wanted = WantedTables::default();
    for own in ["webhook", "webhook_control"] {
        wanted.full.insert(
            format!("{schema}.{own}"),
            PublishedTable {
                schema: schema.clone(),
                name: own.into(),
                columns: Vec::new(),
            },
        );
    }
    for table in captured_tables(store, config).await? {
        if table.unlogged {
            // PostgreSQL refuses them in a publication: their changes never
            // reach the WAL, so no logical decoding can see them.
            let why = format!(
                "table {} is UNLOGGED: its changes never reach the WAL, so walhook cannot see \
                 them; left out of the publication (ALTER TABLE ... SET LOGGED, then run setup \
                 again, to capture it)",
                table.qualified()
            );
            wanted.unlogged.insert(table.qualified(), why);
            continue;
        }
        let named = config
            .tables
            .get(&table.qualified())
            .map(|t| t.exclude_columns.clone())
            .unwrap_or_default();
        for col in &named {
            if !table.columns.contains(col) {
                warnings.push(format!(
                    "[tables.\"{}\"] exclude_columns names {col:?}, which the table does not have",
                    table.qualified()
                ));
            }
        }
        // Only columns the table has: a list naming every column would
        // still be a column list, which REPLICA IDENTITY FULL forbids.
        let excluded: Vec<String> = named
            .into_iter()
            .filter(|c| table.columns.contains(c))
            .collect();
        if let Some(refusal) = identity_refusal(&table, &excluded) {
            wanted.refused.insert(table.qualified(), refusal);
            continue;
        }
        let columns = if excluded.is_empty() {
            Vec::new()
        } else {
            table
                .columns
                .iter()
                .filter(|c| !excluded.contains(c))
                .cloned()
                .collect()
        };
        let entry = PublishedTable {
            schema: table.schema.clone(),
            name: table.name.clone(),
            columns,
        };
        if table.has_identity {
            wanted.full.insert(table.qualified(), entry);
        } else {
            let sql_name = format!(
                "{}.{}",
                crate::store::ident(&table.schema),
                crate::store::ident(&table.name)
            );
            // FULL with excluded columns would be refused (see
            // `identity_refusal`): only a key is offered then.
            let full = if excluded.is_empty() {
                format!(" or ALTER TABLE {sql_name} REPLICA IDENTITY FULL")
            } else {
                String::new()
            };
            warnings.push(format!(
                "table {} has no primary key or replica identity: only its INSERTs and TRUNCATEs \
                 are published (its UPDATE and DELETE keep working). Give it one with \
                 ALTER TABLE {sql_name} ADD PRIMARY KEY (...){full}, then run setup again",
                table.qualified(),
            ));
            wanted.keyless.insert(table.qualified(), entry);
        }
    }
    Ok(wanted)
}

async fn plan_publication(
    store: &Store,
    plan: &mut Plan,
    name: &str,
    wanted: &Wanted,
    options: &PublicationOptions,
) -> anyhow::Result<()> {
    let tables: Vec<PublishedTable> = wanted.values().cloned().collect();
    let Some(existing) = store.publication_options(name).await? else {
        plan.statements
            .push(ddl::create_publication(name, &tables, options));
        return Ok(());
    };
    if existing != *options {
        plan.statements
            .push(ddl::set_publication_options(name, options));
    }
    let current = store.published_tables(name).await?;
    let wanted_columns: BTreeMap<String, Vec<String>> = wanted
        .iter()
        .map(|(qualified, t)| (qualified.clone(), t.columns.clone()))
        .collect();
    if current == wanted_columns {
        return Ok(());
    }
    for (qualified, columns) in &wanted_columns {
        match current.get(qualified) {
            None => plan
                .publication_changes
                .push(format!("publication {name:?} adds table {qualified}")),
            Some(now) if now != columns => plan.publication_changes.push(format!(
                "publication {name:?} changes the columns it publishes of {qualified}"
            )),
            Some(_) => {}
        }
    }
    for qualified in current.keys().filter(|q| !wanted_columns.contains_key(*q)) {
        plan.publication_changes
            .push(format!("publication {name:?} drops table {qualified}"));
    }
    if tables.is_empty() {
        // A publication cannot SET an empty table list: re-create it.
        plan.statements.push(ddl::drop_publication(name));
        plan.statements
            .push(ddl::create_publication(name, &tables, options));
    } else {
        plan.statements
            .push(ddl::set_publication_tables(name, &tables));
    }
    Ok(())
}

/// Run a plan.
pub async fn apply(store: &Store, config: &Config, plan: &Plan) -> anyhow::Result<()> {
    store.run_in_transaction(&plan.statements).await?;
    if let Some(create) = &plan.create_slot {
        // Snapshots and the settled position of an earlier slot's history
        // describe positions the new slot never had; the new slot starts
        // from the hooks as they are, at its own position.
        store.clear_snapshots().await?;
        store.clear_progress(&config.postgres.slot).await?;
        store
            .run_statement(
                create,
                &format!("creating replication slot {:?}", config.postgres.slot),
            )
            .await?;
    }
    store.seed_snapshot(&config.postgres.slot).await
}

/// Publish tables created since `setup` ran, as `setup` would, by adding
/// them only: the running daemon never removes a table or changes a column
/// list (that is `setup`'s job, with the config it is given). A table that
/// cannot be added never keeps the others out: each is tried, and the
/// error names every table left out and why.
pub async fn add_new_tables(store: &Store, config: &Config) -> anyhow::Result<()> {
    let WantedTables {
        full,
        keyless,
        refused,
        unlogged,
    } = wanted_tables(store, config, &mut Vec::new()).await?;
    let [main, insert_only] = config.publications();
    let mut published = store.published_tables(&main).await?;
    published.extend(store.published_tables(&insert_only).await?);
    let mut failures: Vec<String> = refused
        .into_iter()
        .chain(unlogged)
        .filter(|(qualified, _)| !published.contains_key(qualified))
        .map(|(_, why)| why)
        .collect();
    for (publication, wanted) in [(&main, &full), (&insert_only, &keyless)] {
        for (qualified, table) in wanted {
            if published.contains_key(qualified) {
                continue;
            }
            let statement = ddl::add_publication_table(publication, table);
            match store
                .run_statement(&statement, &format!("running: {statement}"))
                .await
            {
                Ok(()) => tracing::info!("publication updated with new tables: {statement}"),
                Err(e) => failures.push(format!("table {qualified} was not added: {e:#}")),
            }
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    bail!(
        "{} new table(s) left out of the publications (every other new table was added); \
         each is tried again at the next check:\n  - {}",
        failures.len(),
        failures.join("\n  - ")
    )
}

/// walhook's publications, each with whether it exists.
pub async fn publications(store: &Store, config: &Config) -> anyhow::Result<Vec<(String, bool)>> {
    let names = config.publications();
    let present = store.existing_publications(&names).await?;
    Ok(names
        .into_iter()
        .map(|name| {
            let exists = present.contains(&name);
            (name, exists)
        })
        .collect())
}
