//! Whether the role `setup` (and `teardown`) connects as may do what they
//! are about to do, asked before anything changes: a refused statement half
//! way would leave, say, the schema and publications without a slot.

use std::collections::BTreeMap;

use super::captured_tables;
use crate::config::Config;
use crate::store::privileges::NotOwned;
use crate::store::{ident, Store};

/// The role `setup` grants the daemon's privileges to: the user of
/// `postgres.url` when `postgres.setup_url` names another one.
pub fn run_role_to_grant(config: &Config) -> anyhow::Result<Option<String>> {
    if !config.has_setup_url() {
        return Ok(None);
    }
    let run = config.connection()?.user;
    let setup = config.setup_connection()?.user;
    Ok((run != setup).then_some(run))
}

/// What the server lacks for walhook, as `check` reports it: asked before
/// setup changes anything, so a server without `wal_level = logical` (say)
/// never gets the schema and publications and then a refused slot.
async fn server_problems(store: &Store, config: &Config) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let features = store.server_features().await?;
    if features.version_num < super::MIN_SERVER_VERSION {
        problems.push(format!(
            "server version {} is too old: walhook needs PostgreSQL 15 or newer",
            features.version
        ));
    }
    problems.extend(super::encoding_problem(&store.server_encoding().await?));
    let level = store.wal_level().await?;
    if level != "logical" {
        problems.push(format!(
            "wal_level is {level}, and a logical replication slot needs logical: set wal_level = \
             logical in postgresql.conf and restart PostgreSQL"
        ));
    }
    let capacity = store.slot_capacity(&config.postgres.slot).await?;
    if !capacity.ours && capacity.used >= capacity.max {
        problems.push(format!(
            "max_replication_slots is {} and all are in use, so the replication slot cannot be \
             created: raise it in postgresql.conf (restart needed) or drop an unused slot",
            capacity.max
        ));
    }
    Ok(problems)
}

/// What the connected role lacks for `setup`, each with the statement
/// that gives it; empty when setup can run to the end.
pub async fn setup_problems(store: &Store, config: &Config) -> anyhow::Result<Vec<String>> {
    let powers = store.role_powers().await?;
    let mut problems = server_problems(store, config).await?;
    if let Some(run_role) = run_role_to_grant(config)? {
        if !store.role_exists(&run_role).await? {
            problems.push(format!(
                "role {run_role:?} (the user of postgres.url) does not exist, so setup cannot grant \
                 it walhook's tables: CREATE ROLE {} LOGIN REPLICATION PASSWORD '...' (as a \
                 superuser)",
                ident(&run_role)
            ));
        }
    }
    if powers.superuser {
        return Ok(problems);
    }
    let role = ident(&powers.role);
    let names = config.publications();
    let present = store.existing_publications(&names).await?;
    let creates_something = !store.schema_exists().await? || present.len() < names.len();
    if creates_something && !powers.create_on_database {
        problems.push(format!(
            "role {:?} lacks CREATE on database {:?}, which creating walhook's schema and \
             publications takes: GRANT CREATE ON DATABASE {} TO {role}",
            powers.role,
            powers.database,
            ident(&powers.database)
        ));
    }
    if !powers.replication && !store.check_slot_for_setup(&config.postgres.slot).await? {
        problems.push(format!(
            "role {:?} lacks the REPLICATION attribute, which creating the replication slot \
             takes: ALTER ROLE {role} REPLICATION (as a superuser)",
            powers.role
        ));
    }
    let mut not_owned = store.walhook_objects_not_owned(&names).await?;
    let tables: Vec<(String, String)> = captured_tables(store, config)
        .await?
        .into_iter()
        .map(|t| (t.schema, t.name))
        .collect();
    not_owned.extend(store.tables_not_owned(&tables).await?);
    problems.extend(ownership_problems(&powers.role, &not_owned));
    Ok(problems)
}

/// What the connected role lacks for `teardown`: dropping the slot takes
/// REPLICATION, dropping a publication or the schema its owner's
/// privileges. Only objects that exist (and the schema only when it is to
/// be dropped) count.
pub async fn teardown_problems(
    store: &Store,
    config: &Config,
    slot_exists: bool,
    drop_schema: bool,
) -> anyhow::Result<Vec<String>> {
    let powers = store.role_powers().await?;
    if powers.superuser {
        return Ok(Vec::new());
    }
    let mut problems = Vec::new();
    if slot_exists && !powers.replication {
        problems.push(format!(
            "role {:?} lacks the REPLICATION attribute, which dropping replication slot {:?} \
             takes: run teardown as the setup role (postgres.setup_url), or ALTER ROLE {} \
             REPLICATION",
            powers.role,
            config.postgres.slot,
            ident(&powers.role)
        ));
    }
    let not_owned: Vec<NotOwned> = store
        .walhook_objects_not_owned(&config.publications())
        .await?
        .into_iter()
        .filter(|o| drop_schema || !o.object.starts_with("schema "))
        .collect();
    problems.extend(ownership_problems(&powers.role, &not_owned));
    Ok(problems)
}

/// One line per owner: the objects and the GRANT that makes `role` act
/// as their owner.
fn ownership_problems(role: &str, not_owned: &[NotOwned]) -> Vec<String> {
    let mut by_owner: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in not_owned {
        by_owner.entry(&o.owner).or_default().push(&o.object);
    }
    by_owner
        .into_iter()
        .map(|(owner, objects)| {
            let (verb, its, it) = if objects.len() == 1 {
                ("is", "its", "it")
            } else {
                ("are", "their", "them")
            };
            format!(
                "{} {verb} owned by role {owner:?}, and only {its} owner may publish, alter or \
                 drop {it}: GRANT {} TO {} (or run this as {owner:?})",
                objects.join(", "),
                ident(owner),
                ident(role)
            )
        })
        .collect()
}
