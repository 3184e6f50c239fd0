//! `walhook check`: the pre-flight checks, each a line with a level and,
//! for a problem, the fix: the files the config names, then everything
//! that needs a database connection.

use super::line::{CheckLevel, CheckLine};
use super::{failover, publications, MIN_SERVER_VERSION};
use crate::config::Config;
use crate::delivery::{check_target, parked_bytes_warning, parked_limit_warning, tls};
use crate::registry::{EventPattern, Webhook};
use crate::store::catalog::{ColumnListFacts, FilterTable};
use crate::store::privileges::InternalWriter;
use crate::store::{ident, Store};

/// The HTTPS files of `[delivery]`: each readable, the client key not
/// readable by others, and together a usable TLS configuration.
pub fn check_delivery_files(config: &Config) -> Vec<CheckLine> {
    let d = &config.delivery;
    let mut out = Vec::new();
    let mut unreadable = false;
    for (key, path) in [
        ("delivery.ca_file", &d.ca_file),
        ("delivery.client_cert_file", &d.client_cert_file),
        ("delivery.client_key_file", &d.client_key_file),
    ] {
        let Some(path) = path else { continue };
        if let Err(e) = std::fs::read(path) {
            unreadable = true;
            out.push(CheckLine {
                level: CheckLevel::Fail,
                text: format!(
                    "key {key}: cannot read {}: {e} (the file must exist and be readable by the \
                     user walhook runs as, for instance root:walhook mode 640)",
                    path.display()
                ),
            });
        }
    }
    if let Some(problem) = d
        .client_key_file
        .as_deref()
        .and_then(tls::key_file_exposure)
    {
        out.push(CheckLine {
            level: CheckLevel::Fail,
            text: problem,
        });
    }
    if !unreadable {
        out.push(match tls::client_config(d) {
            Ok((_, trust)) => CheckLine {
                level: CheckLevel::Ok,
                text: format!("HTTPS targets: trusting {trust}"),
            },
            Err(e) => CheckLine {
                level: CheckLevel::Fail,
                text: format!("{e:#}"),
            },
        });
    }
    out
}

/// Which of walhook's schema, publications and slot exist, by name.
async fn installed_parts(store: &Store, config: &Config) -> anyhow::Result<Vec<String>> {
    let mut parts = Vec::new();
    if store.schema_exists().await? {
        parts.push(format!("schema {:?}", config.postgres.schema));
    }
    for (publication, exists) in publications(store, config).await? {
        if exists {
            parts.push(format!("publication {publication:?}"));
        }
    }
    // Another database's slot of that name is not part of this install.
    if store
        .slot_facts(&config.postgres.slot)
        .await?
        .is_some_and(|f| f.other_database().is_none())
    {
        parts.push(format!("replication slot {:?}", config.postgres.slot));
    }
    Ok(parts)
}

/// Whether the role `setup` connects as (postgres.setup_url, else
/// postgres.url) may run it, naming the missing GRANT: a failure before
/// setup, a warning after it (the daemon runs; adding tables later or
/// `teardown` would fail).
pub async fn check_setup_role(store: &Store, config: &Config, set_up: bool) -> Vec<CheckLine> {
    let key = if config.has_setup_url() {
        "postgres.setup_url"
    } else {
        "postgres.url"
    };
    let problems = match super::setup_problems(store, config).await {
        Ok(problems) => problems,
        Err(e) => {
            return vec![CheckLine {
                level: CheckLevel::Fail,
                text: format!("{e:#}"),
            }]
        }
    };
    if problems.is_empty() {
        let role = store
            .role_powers()
            .await
            .map(|p| p.role)
            .unwrap_or_default();
        return vec![CheckLine {
            level: CheckLevel::Ok,
            text: format!("setup role {role:?} ({key}) has what `walhook setup` needs"),
        }];
    }
    let level = if set_up {
        CheckLevel::Warn
    } else {
        CheckLevel::Fail
    };
    problems
        .into_iter()
        .map(|problem| CheckLine {
            level: level.clone(),
            text: format!("setup ({key}): {problem}"),
        })
        .collect()
}

/// Whether anything of walhook exists in the database (`check` and
/// `teardown` say "not set up yet" otherwise).
pub async fn is_set_up(store: &Store, config: &Config) -> anyhow::Result<bool> {
    Ok(!installed_parts(store, config).await?.is_empty())
}

/// The checks that need the database, in the order a DBA fixes things.
pub async fn check(store: &Store, config: &Config) -> Vec<CheckLine> {
    let mut out = Vec::new();
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    let features = match store.server_features().await {
        Ok(f) if f.version_num >= MIN_SERVER_VERSION => {
            push(CheckLevel::Ok, failover::features_line(&f));
            Some(f)
        }
        Ok(f) => {
            push(
                CheckLevel::Fail,
                format!(
                    "server version {} is too old: walhook needs PostgreSQL 15 or newer",
                    f.version
                ),
            );
            None
        }
        Err(e) => {
            push(CheckLevel::Fail, format!("{e:#}"));
            None
        }
    };
    if let Some(f) = &features {
        out.extend(failover::idle_timeout_line(f));
        out.extend(failover::check_failover(store, config, f).await);
    }
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    match store.server_encoding().await {
        Ok(encoding) => match super::encoding_problem(&encoding) {
            Some(problem) => push(CheckLevel::Fail, problem),
            None => push(CheckLevel::Ok, format!("database encoding is {encoding}")),
        },
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    match store.wal_level().await {
        Ok(level) if level == "logical" => push(CheckLevel::Ok, "wal_level is logical".into()),
        Ok(level) => push(
            CheckLevel::Fail,
            format!(
                "wal_level is {level}: set wal_level = logical in postgresql.conf and restart PostgreSQL"
            ),
        ),
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    match store.role().await {
        Ok(role) if role.may_stream => push(
            CheckLevel::Ok,
            format!("role {} may stream (REPLICATION)", role.name),
        ),
        Ok(role) => push(
            CheckLevel::Fail,
            format!(
                "role {0} lacks the REPLICATION attribute: ALTER ROLE {0} REPLICATION (note that it \
                 then reads every published change regardless of row-level security)",
                role.name
            ),
        ),
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    match store.role_powers().await {
        Ok(powers) if !powers.superuser => match store.reads_all_stats(&powers.role).await {
            Ok(true) => {}
            Ok(false) => push(
                CheckLevel::Warn,
                format!(
                    "role {0:?} is not a member of pg_read_all_stats: `walhook status` shows the \
                     time lag only of a walsender of its own role; GRANT pg_read_all_stats TO {1} \
                     (as a superuser) shows it whoever streams",
                    powers.role,
                    crate::store::ident(&powers.role)
                ),
            ),
            Err(e) => push(CheckLevel::Warn, format!("{e:#}")),
        },
        Ok(_) => {}
        Err(e) => push(CheckLevel::Warn, format!("{e:#}")),
    }
    let slot = &config.postgres.slot;
    match store.slot_capacity(slot).await {
        Ok(c) if !c.ours && c.used >= c.max => push(
            CheckLevel::Fail,
            format!(
                "max_replication_slots is {} and all are in use: raise it in postgresql.conf \
                 (restart needed) or drop an unused slot",
                c.max
            ),
        ),
        Ok(c) => push(
            CheckLevel::Ok,
            format!("max_replication_slots {}, {} in use", c.max, c.used),
        ),
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    // A second instance (walhook@.service) for another database of the
    // cluster that kept the first one's slot name: the server refuses to
    // stream it to another database, and `setup` refuses it too.
    let facts = store.slot_facts(slot).await;
    let mut daemon_running = false;
    if let Ok(Some(f)) = &facts {
        match f.other_database() {
            Some(other) => push(
                CheckLevel::Fail,
                crate::errors::slot_of_other_database(slot, other, &f.this_database),
            ),
            None => daemon_running = f.active,
        }
    }
    out.extend(super::instances::check_metrics_listen(
        config,
        daemon_running,
    ));
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    // Before setup nothing of walhook's exists yet: that is the next
    // step, not a list of failures.
    let set_up = match installed_parts(store, config).await {
        Ok(parts) if parts.is_empty() => {
            push(
                CheckLevel::Next,
                format!(
                    "walhook is not set up in this database yet: run `walhook setup` (it creates \
                     schema {:?}, publications {}, replication slot {slot:?})",
                    config.postgres.schema,
                    config
                        .publications()
                        .iter()
                        .map(|p| format!("{p:?}"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
            false
        }
        Ok(_) => true,
        Err(e) => {
            push(CheckLevel::Fail, format!("{e:#}"));
            false
        }
    };
    if !set_up {
        return out;
    }
    match facts {
        // Said above.
        Ok(Some(facts)) if facts.other_database().is_some() => {}
        Ok(None) => push(
            CheckLevel::Fail,
            format!("replication slot {slot:?} does not exist: run `walhook setup`"),
        ),
        Ok(Some(facts)) => match facts.lost {
            Some(cause) => push(
                CheckLevel::Fail,
                crate::errors::SlotLost {
                    slot: slot.clone(),
                    cause,
                }
                .to_string(),
            ),
            None => push(CheckLevel::Ok, format!("replication slot {slot:?} exists")),
        },
        Err(e) => push(CheckLevel::Fail, format!("{e:#}")),
    }
    match publications(store, config).await {
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
    out.extend(unpublished_tables(store, config).await);
    out.extend(backfill_readable(store, config).await);
    out.extend(check_internal_writers(store, config).await);
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    // Tables whose publication has a column list (`exclude_columns`):
    // REPLICA IDENTITY FULL is never recommended for them, and an identity
    // the list does not cover fails the application's UPDATE and DELETE.
    let listed = match store.column_lists(&config.postgres.publication).await {
        Ok(listed) => listed,
        Err(e) => {
            push(CheckLevel::Warn, format!("{e:#}"));
            Vec::new()
        }
    };
    for t in listed.iter().filter(|t| !t.uncovered_identity.is_empty()) {
        push(CheckLevel::Fail, uncovered_identity_line(t));
    }
    match store
        .published_identities(&config.postgres.publication)
        .await
    {
        Ok(rows) => {
            for (table, identity) in rows {
                if identity == "f" {
                    continue;
                }
                if listed.iter().any(|t| t.table == table) {
                    push(
                        CheckLevel::Warn,
                        format!(
                            "table {table}: UPDATE events list every sent column (ChangesExact \
                             false); leave its replica identity as it is: REPLICA IDENTITY FULL \
                             on a table with excluded columns (exclude_columns) makes PostgreSQL \
                             refuse its UPDATEs and DELETEs"
                        ),
                    );
                } else {
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
        Err(e) => push(CheckLevel::Warn, format!("{e:#}")),
    }
    match store.published_tables(&config.keyless_publication()).await {
        Ok(tables) => {
            for table in tables.keys() {
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
        Err(e) => push(CheckLevel::Warn, format!("{e:#}")),
    }
    match store.webhook_rows().await {
        Ok(rows) => {
            out.extend(check_column_filters(store, config, &rows, &listed).await);
            match published_tables(store, config).await {
                Ok(tables) => {
                    out.extend(
                        rows.iter()
                            .filter_map(|r| Webhook::from_row(r).ok())
                            .flat_map(|hook| unknown_entities(&hook, &tables, config))
                            .map(|text| CheckLine {
                                level: CheckLevel::Warn,
                                text,
                            }),
                    );
                    // Conditions and column lists (webhook_control).
                    if let Ok(control) = store.control_rows().await {
                        let hooks: Vec<_> = rows
                            .iter()
                            .filter_map(|r| Webhook::from_row(r).ok())
                            .collect();
                        out.extend(super::rule_lines(&control, &hooks, &tables, config));
                    }
                }
                Err(e) => out.push(CheckLine {
                    level: CheckLevel::Warn,
                    text: format!("{e:#}"),
                }),
            }
            let mut push = |level, text: String| out.push(CheckLine { level, text });
            let mut bad = 0;
            for row in &rows {
                match Webhook::from_row(row) {
                    Ok(hook) => {
                        if let Err(refusal) = check_target(&config.delivery, &hook.target_url) {
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
        Err(e) => out.push(CheckLine {
            level: CheckLevel::Fail,
            text: format!("{e:#} (run `walhook setup`)"),
        }),
    }
    let mut push = |level, text: String| out.push(CheckLine { level, text });
    let d = &config.delivery;
    match store.parked_sizes().await {
        Ok(sizes) => {
            for (webhook_id, parked) in sizes {
                // Warn well before a bound stops the hook.
                let events = parked_limit_warning(
                    webhook_id,
                    parked.events,
                    d.max_parked_events_per_webhook,
                );
                let bytes =
                    parked_bytes_warning(webhook_id, parked.bytes, d.max_parked_bytes_per_webhook);
                for warning in [events, bytes].into_iter().flatten() {
                    push(CheckLevel::Warn, warning);
                }
            }
        }
        Err(e) => push(CheckLevel::Warn, format!("{e:#}")),
    }
    out
}

/// At most this many tables are named in a GRANT; past it, each schema's
/// tables are granted at once.
const MAX_GRANTED_TABLES: usize = 20;

/// Whether the run role may read the published tables, as `walhook
/// backfill` needs (delivering does not): a note with the GRANTs when not.
async fn backfill_readable(store: &Store, config: &Config) -> Vec<CheckLine> {
    let line = |level, text| vec![CheckLine { level, text }];
    let (role, tables) = match (
        store.role().await,
        store
            .unreadable_published_tables(&config.postgres.publication)
            .await,
    ) {
        (Ok(role), Ok(tables)) => (role.name, tables),
        (Err(e), _) | (_, Err(e)) => return line(CheckLevel::Warn, format!("{e:#}")),
    };
    if tables.is_empty() {
        return line(
            CheckLevel::Ok,
            format!("role {role:?} may read every published table (as `walhook backfill` needs)"),
        );
    }
    let mut grants: Vec<String> = Vec::new();
    let mut schemas: Vec<&str> = tables
        .iter()
        .filter(|t| t.needs_usage)
        .map(|t| t.schema.as_str())
        .collect();
    schemas.dedup();
    for schema in &schemas {
        grants.push(format!(
            "GRANT USAGE ON SCHEMA {} TO {}",
            ident(schema),
            ident(&role)
        ));
    }
    let unselectable: Vec<_> = tables.iter().filter(|t| t.needs_select).collect();
    if unselectable.len() > MAX_GRANTED_TABLES {
        let mut schemas: Vec<&str> = unselectable.iter().map(|t| t.schema.as_str()).collect();
        schemas.dedup();
        for schema in schemas {
            grants.push(format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
                ident(schema),
                ident(&role)
            ));
        }
    } else if !unselectable.is_empty() {
        let names: Vec<String> = unselectable
            .iter()
            .map(|t| format!("{}.{}", ident(&t.schema), ident(&t.name)))
            .collect();
        grants.push(format!(
            "GRANT SELECT ON {} TO {}",
            names.join(", "),
            ident(&role)
        ));
    }
    let named: Vec<String> = tables
        .iter()
        .take(MAX_GRANTED_TABLES)
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    let more = tables.len().saturating_sub(named.len());
    line(
        CheckLevel::Note,
        format!(
            "role {role:?} may not read {} published table(s): {}{}; delivering needs no such \
             privilege, but `walhook backfill` reads a table as this role: to backfill them, as \
             their owner or a superuser: {}",
            tables.len(),
            named.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            grants.join("; ")
        ),
    )
}

/// The failure for a published table whose column list leaves out part of
/// its replica identity: PostgreSQL fails its UPDATE and DELETE now.
fn uncovered_identity_line(t: &ColumnListFacts) -> String {
    let (table, sql_name) = (&t.table, &t.sql_name);
    let columns = t.uncovered_identity.join(", ");
    if t.identity_full {
        format!(
            "table {table} has REPLICA IDENTITY FULL but its publication leaves out {columns} \
             (exclude_columns): PostgreSQL refuses every UPDATE and DELETE on it (\"cannot update \
             table\"). ALTER TABLE {sql_name} REPLICA IDENTITY DEFAULT fixes it now; or remove the \
             columns from [tables.\"{table}\"] exclude_columns and run `walhook setup`"
        )
    } else {
        format!(
            "table {table}: its publication leaves out {columns} (exclude_columns), part of its \
             replica identity: PostgreSQL refuses every UPDATE and DELETE on it (\"cannot update \
             table\"). Remove {columns} from [tables.\"{table}\"] exclude_columns and run \
             `walhook setup`"
        )
    }
}

/// Warnings per hook and table about column filters: a filter on a table
/// without REPLICA IDENTITY FULL is not exact (its UPDATE events list every
/// column whose new value was sent, so the filter lets through updates that
/// did not change its columns); a filter naming a column the table does not
/// publish, or an entity no published table has, can never match.
async fn check_column_filters(
    store: &Store,
    config: &Config,
    rows: &[crate::events::WebhookRow],
    listed: &[ColumnListFacts],
) -> Vec<CheckLine> {
    let hooks: Vec<Webhook> = rows
        .iter()
        .filter_map(|r| Webhook::from_row(r).ok())
        .filter(|h| h.column_filters().next().is_some())
        .collect();
    if hooks.is_empty() {
        return Vec::new();
    }
    let tables = match store
        .published_for_filters(&config.postgres.publication)
        .await
    {
        Ok(tables) => tables,
        Err(e) => {
            return vec![CheckLine {
                level: CheckLevel::Warn,
                text: format!("{e:#}"),
            }]
        }
    };
    let mut out = Vec::new();
    let mut warn = |text: String| {
        out.push(CheckLine {
            level: CheckLevel::Warn,
            text,
        })
    };
    for hook in &hooks {
        let id = hook.id;
        // One line per hook and table, however many filters name it.
        let mut not_exact = std::collections::BTreeSet::new();
        for (entity, _) in hook.column_filters() {
            let of_entity: Vec<_> = tables
                .iter()
                .filter(|t| config.entity_for(&t.schema, &t.table) == entity)
                .collect();
            // Unknown entities and columns: `unknown_entities`.
            for t in of_entity {
                let qualified = format!("{}.{}", t.schema, t.table);
                let has_list = listed.iter().any(|l| l.table == qualified);
                if !t.full && has_list && not_exact.insert((&t.schema, &t.table)) {
                    warn(format!(
                        "webhook_id {id}: its column filter on {entity} is not exact for table \
                         {qualified}: without REPLICA IDENTITY FULL an UPDATE lists every column \
                         whose new value was sent, so the hook also receives updates that did \
                         not change its columns (FULL is not an option: the table has excluded \
                         columns, and PostgreSQL would refuse its UPDATEs and DELETEs)"
                    ));
                }
                if !t.full && !has_list && not_exact.insert((&t.schema, &t.table)) {
                    warn(format!(
                        "webhook_id {id}: its column filter on {entity} is not exact for table \
                         {0}.{1}: without REPLICA IDENTITY FULL an UPDATE lists every column \
                         whose new value was sent, so the hook also receives updates that did \
                         not change its columns; ALTER TABLE {0}.{1} REPLICA IDENTITY FULL makes \
                         it exact",
                        t.schema, t.table
                    ));
                }
            }
        }
    }
    out
}

/// Captured host tables that neither publication has yet (created since
/// `setup` last ran): their changes are not sent until `setup` runs again.
async fn unpublished_tables(store: &Store, config: &Config) -> Vec<CheckLine> {
    // A missing publication is reported above, with the same fix.
    let names = config.publications();
    if !store
        .existing_publications(&names)
        .await
        .is_ok_and(|present| present.len() == names.len())
    {
        return Vec::new();
    }
    let captured = match super::captured_tables(store, config).await {
        Ok(tables) => tables,
        Err(e) => {
            return vec![CheckLine {
                level: CheckLevel::Warn,
                text: format!("{e:#}"),
            }]
        }
    };
    let mut published = std::collections::BTreeSet::new();
    for publication in config.publications() {
        match store.published_tables(&publication).await {
            Ok(tables) => published.extend(tables.into_keys()),
            Err(e) => {
                return vec![CheckLine {
                    level: CheckLevel::Warn,
                    text: format!("{e:#}"),
                }]
            }
        }
    }
    captured
        .iter()
        .filter(|t| !t.unlogged && !published.contains(&t.qualified()))
        .map(|t| CheckLine {
            level: CheckLevel::Next,
            text: format!(
                "table {} is captured ([capture]) but not published yet, so its changes are not \
                 sent: run `walhook setup` to publish it",
                t.qualified()
            ),
        })
        .collect()
}

/// The host tables walhook's publications publish (both of them).
pub async fn published_tables(store: &Store, config: &Config) -> anyhow::Result<Vec<FilterTable>> {
    let mut tables = Vec::new();
    for publication in config.publications() {
        tables.extend(store.published_for_filters(&publication).await?);
    }
    Ok(tables)
}

/// What in a hook's events can never fire: an entity no published table
/// has (a typo such as `contcat.*`), or a column filter on an entity whose
/// tables do not publish the columns it names. Each a line naming the
/// hook; empty when every entry can fire.
pub fn unknown_entities(hook: &Webhook, tables: &[FilterTable], config: &Config) -> Vec<String> {
    let entities: std::collections::BTreeSet<&str> = tables
        .iter()
        .map(|t| config.entity_for(&t.schema, &t.table))
        .collect();
    let mut out = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for pattern in &hook.events {
        let entity = match pattern {
            EventPattern::Entity(e) | EventPattern::ChangedColumns { entity: e, .. } => e.as_str(),
            EventPattern::Exact(text) => text.split_once('.').map_or(text.as_str(), |(e, _)| e),
            EventPattern::Any | EventPattern::Operation(_) => continue,
        };
        if !entities.contains(entity) && named.insert(entity) {
            out.push(format!(
                "webhook_id {}: its events name the entity {entity:?}, which no published table \
                 has, so they never fire (published entities: {}; an entity is a table's name \
                 unless [tables.\"schema.table\"] entity renames it)",
                hook.id,
                if entities.is_empty() {
                    "none".to_owned()
                } else {
                    entities.iter().copied().collect::<Vec<_>>().join(", ")
                }
            ));
        }
        if let EventPattern::ChangedColumns { entity, columns } = pattern {
            for t in tables
                .iter()
                .filter(|t| config.entity_for(&t.schema, &t.table) == entity)
            {
                let unknown: Vec<&str> = columns
                    .iter()
                    .filter(|c| !t.columns.contains(c))
                    .map(String::as_str)
                    .collect();
                if !unknown.is_empty() {
                    out.push(format!(
                        "webhook_id {}: its column filter on {entity} names {} that table \
                         {}.{} does not publish; they never appear in Changes",
                        hook.id,
                        unknown.join(", "),
                        t.schema,
                        t.table
                    ));
                }
            }
        }
    }
    out
}

/// Roles other than walhook's own that can write its internal tables
/// (every table of its schema but `webhook`), each a failure with the
/// REVOKE that fixes it. walhook trusts what those tables hold, so a
/// writer there can make it skip changes, run SQL or sign any payload.
/// Superusers are not named: no GRANT or REVOKE binds them.
pub async fn check_internal_writers(store: &Store, config: &Config) -> Vec<CheckLine> {
    match store.schema_exists().await {
        Ok(true) => {}
        Ok(false) => return Vec::new(),
        Err(e) => {
            return vec![CheckLine {
                level: CheckLevel::Warn,
                text: format!("{e:#}"),
            }]
        }
    }
    let mut own = Vec::new();
    if let Ok(c) = config.connection() {
        own.push(c.user);
    }
    if config.has_setup_url() {
        if let Ok(c) = config.setup_connection() {
            own.push(c.user);
        }
    }
    if let Ok(powers) = store.role_powers().await {
        own.push(powers.role);
    }
    let schema = store.schema();
    match store.internal_writers(&own).await {
        Ok(writers) if writers.is_empty() => vec![CheckLine {
            level: CheckLevel::Ok,
            text: format!(
                "only walhook's roles can write its internal tables (schema {schema:?} but \
                 webhook)"
            ),
        }],
        Ok(writers) => writers
            .iter()
            .map(|w| CheckLine {
                level: CheckLevel::Fail,
                text: internal_writer_line(schema, w),
            })
            .collect(),
        Err(e) => vec![CheckLine {
            level: CheckLevel::Warn,
            text: format!("{e:#}"),
        }],
    }
}

/// What a role can write of walhook's internal tables, why that matters,
/// and the statements that take it away.
fn internal_writer_line(schema: &str, w: &InternalWriter) -> String {
    let public = w.role == "PUBLIC";
    let (who, grantee) = if public {
        ("PUBLIC (every role)".to_owned(), "PUBLIC".to_owned())
    } else {
        (format!("role {:?}", w.role), ident(&w.role))
    };
    let tables: Vec<String> = w
        .tables
        .iter()
        .map(|(table, privileges)| format!("{table} ({})", privileges.join(", ")))
        .collect();
    let mut fixes = Vec::new();
    if !w.granted.is_empty() {
        let mut granted: Vec<String> = w
            .granted
            .iter()
            .map(|t| format!("{}.{}", ident(schema), ident(t)))
            .collect();
        granted.sort();
        fixes.push(format!(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {grantee}",
            granted.join(", ")
        ));
    }
    for role in &w.through {
        fixes.push(format!("REVOKE {} FROM {grantee}", ident(role)));
    }
    let through = if w.through.is_empty() {
        String::new()
    } else {
        format!(" (through {})", w.through.join(", "))
    };
    format!(
        "{who} can write walhook's internal tables {}{through}. walhook trusts them: a raised \
         slot_progress position makes it skip changes, a backfill row's where_sql is run as \
         SQL, a parked event is signed with its hook's secret. Only walhook's roles may write \
         them (the application gets the webhook table alone: see Roles in the README); the \
         fix: {}",
        tables.join(", "),
        fixes.join("; ")
    )
}
