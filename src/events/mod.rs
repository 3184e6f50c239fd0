//! Row changes become events.
//!
//! Takes decoded pgoutput messages, keeps the relation descriptions the
//! stream sends ahead of their changes, and turns each Insert, Update,
//! Delete and Truncate into a [`ChangeEvent`]. Changes to walhook's own
//! `webhook` table become [`WebhookChange`]s for the registry instead, and
//! those to `webhook_control` the same for delivery's per-hook settings;
//! the rest of walhook's schema never yields anything.

pub mod catalog;
pub mod value;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::Config;
use crate::pgoutput::{self, Lsn, OldTuple, ReplicaIdentity, TupleData, TupleValue};
use catalog::TypeCatalog;

/// The operation an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Created,
    Changed,
    Deleted,
    Truncated,
}

impl Operation {
    pub fn suffix(self) -> &'static str {
        match self {
            Operation::Created => "created",
            Operation::Changed => "changed",
            Operation::Deleted => "deleted",
            Operation::Truncated => "truncated",
        }
    }
}

/// The transaction a change belongs to, from its Begin message.
#[derive(Debug, Clone, Copy)]
pub struct TxnInfo {
    pub xid: u32,
    /// LSN of the commit record (Begin's final LSN).
    pub commit_lsn: Lsn,
    /// Microseconds since 2000-01-01 UTC.
    pub commit_time: i64,
}

/// One committed row change, before it is addressed to any webhook.
#[derive(Debug, Clone)]
pub struct ChangeEvent {
    /// `<entity>.<operation>`.
    pub event: String,
    pub entity: String,
    pub operation: Operation,
    /// `schema.table`.
    pub table: String,
    pub primary_key: Value,
    /// The names of the key's columns: a body cut to fit its bound never
    /// leaves them out.
    pub key_columns: Vec<String>,
    pub changes: Vec<String>,
    pub changes_exact: bool,
    pub field_values: Map<String, Value>,
    pub missing_columns: Vec<String>,
    /// DELETE only: the key columns of the deleted row.
    pub values: Option<Map<String, Value>>,
    pub changed_by_associate_id: i64,
    pub txn: TxnInfo,
    /// Position of the change in its transaction.
    pub index: u32,
    /// Events with equal keys must keep commit order (same table and row).
    pub ordering_key: String,
    /// The row's old key when an UPDATE changed it: the event also orders
    /// after that key's earlier events.
    pub previous_key: Option<String>,
    /// The backfill_id when the event is an existing row sent by `walhook
    /// backfill` rather than a change.
    pub backfill: Option<i64>,
    /// What a hook's condition reads beyond FieldValues; never sent.
    pub condition_row: ConditionRow,
}

/// The column types and the old row of a change, for hook conditions.
#[derive(Debug, Clone, Default)]
pub struct ConditionRow {
    /// Column name to type oid, shared by every event of the relation.
    pub types: Arc<BTreeMap<String, u32>>,
    /// UPDATE: the old row as the WAL carried it (none when the server
    /// sent none: REPLICA IDENTITY DEFAULT and an unchanged key).
    pub old: Option<OldRow>,
}

/// An UPDATE's old row: every column under REPLICA IDENTITY FULL (`full`),
/// else only the key's.
#[derive(Debug, Clone)]
pub struct OldRow {
    pub values: Map<String, Value>,
    /// Columns the old row did not carry (an unchanged TOASTed value).
    pub unknown: Vec<String>,
    pub full: bool,
}

/// Namespace of walhook's EventIds (UUIDv5).
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5f0b_6c1e_8a4d_4f7e_9b21_7d3a_c0de_1a01);

impl ChangeEvent {
    /// The id receivers de-duplicate on: the same for every attempt, restart
    /// and replay of this change to this hook, and different between hooks.
    pub fn event_id(&self, system_id: &str, webhook_id: i32) -> Uuid {
        let name = format!(
            "{system_id}/{}/{}/{}/{webhook_id}",
            self.txn.xid, self.txn.commit_lsn, self.index
        );
        Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
    }

    /// Commit time as RFC 3339 UTC with a `Z`.
    pub fn timestamp(&self) -> String {
        rfc3339(self.txn.commit_time)
    }
}

#[cfg(test)]
impl ChangeEvent {
    /// An event of `entity` keyed by `id` = 1, for tests without a server.
    pub(crate) fn sample(entity: &str, operation: Operation) -> ChangeEvent {
        ChangeEvent {
            event: format!("{entity}.{}", operation.suffix()),
            entity: entity.to_owned(),
            operation,
            table: format!("public.{entity}"),
            primary_key: 1.into(),
            key_columns: Vec::new(),
            changes: vec!["id".into()],
            changes_exact: true,
            field_values: Default::default(),
            missing_columns: Vec::new(),
            values: None,
            changed_by_associate_id: 0,
            txn: TxnInfo {
                xid: 1,
                commit_lsn: Lsn(1),
                commit_time: 0,
            },
            index: 0,
            ordering_key: "1".into(),
            previous_key: None,
            backfill: None,
            condition_row: ConditionRow::default(),
        }
    }
}

/// PostgreSQL epoch (2000-01-01) microseconds as RFC 3339 UTC.
pub fn rfc3339(pg_micros: i64) -> String {
    humantime::format_rfc3339_micros(pgoutput::pg_time(pg_micros)).to_string()
}

/// A row of walhook's `webhook` table as text, column name to value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookRow(pub BTreeMap<String, Option<String>>);

/// A change to the `webhook` table, applied to the registry in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookChange {
    Upsert(WebhookRow),
    /// An UPDATE that changed the row's webhook_id: the hook `from` is
    /// gone and the row's new id takes its place (its unchanged TOASTed
    /// values come from the old row).
    Rekey {
        from: String,
        row: WebhookRow,
    },
    Delete {
        webhook_id: Option<String>,
    },
    Truncate,
}

/// What one pgoutput change message yields.
#[derive(Debug, Clone)]
pub enum Change {
    Event(Box<ChangeEvent>),
    Webhook(WebhookChange),
    /// A change to `webhook_control`, rows keyed by webhook_id like those
    /// of `webhook`.
    Control(WebhookChange),
}

#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("change for relation oid {0} arrived before its Relation message")]
    UnknownRelation(u32),
    #[error("table {table}: the change has {got} columns, the relation {expected}")]
    ColumnCount {
        table: String,
        got: usize,
        expected: usize,
    },
    #[error("table {table} column {column}: value is not UTF-8")]
    NotUtf8 { table: String, column: String },
    #[error(
        "table {table} column {column}: binary values are not requested and cannot be decoded"
    )]
    Binary { table: String, column: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RelationKind {
    Host,
    Webhook,
    Control,
    /// walhook's own schema: never an event.
    Internal,
}

#[derive(Debug, Clone)]
struct Relation {
    /// The table's own name, for the default entity.
    name: String,
    qualified: String,
    entity: String,
    kind: RelationKind,
    columns: Vec<pgoutput::Column>,
    /// Indices of the columns PrimaryKey and Values report.
    key: Vec<usize>,
    /// Column name to type oid, for hook conditions.
    types: Arc<BTreeMap<String, u32>>,
}

/// Builds events from the stream; holds the relations seen so far.
pub struct EventBuilder {
    schema: String,
    entities: HashMap<String, String>,
    changed_by_columns: Vec<String>,
    /// Tables published with a column list (`exclude_columns`): REPLICA
    /// IDENTITY FULL would make their UPDATE and DELETE fail, so it is
    /// never suggested for them.
    column_filtered: HashSet<String>,
    relations: HashMap<u32, Relation>,
    types: TypeCatalog,
    warned_inexact: HashSet<String>,
}

impl EventBuilder {
    pub fn new(config: &Config, types: TypeCatalog) -> EventBuilder {
        EventBuilder {
            schema: config.postgres.schema.clone(),
            entities: config
                .tables
                .iter()
                .filter_map(|(k, t)| Some((k.clone(), t.entity.clone()?)))
                .collect(),
            changed_by_columns: config.events.changed_by_columns.clone(),
            column_filtered: config
                .tables
                .iter()
                .filter(|(_, t)| !t.exclude_columns.is_empty())
                .map(|(k, _)| k.clone())
                .collect(),
            relations: HashMap::new(),
            types,
            warned_inexact: HashSet::new(),
        }
    }

    /// New entity names and event settings from a reloaded config; the
    /// relations already seen take the new names at once.
    pub fn set_mappings(&mut self, config: &Config) {
        let fresh = EventBuilder::new(config, TypeCatalog::default());
        self.entities = fresh.entities;
        self.changed_by_columns = fresh.changed_by_columns;
        self.column_filtered = fresh.column_filtered;
        for rel in self.relations.values_mut() {
            rel.entity = self
                .entities
                .get(&rel.qualified)
                .cloned()
                .unwrap_or_else(|| rel.name.clone());
        }
    }

    /// Whether a relation uses a type the catalog has not loaded yet.
    pub fn needs_types(&self, relation: &pgoutput::Relation) -> bool {
        relation
            .columns
            .iter()
            .any(|c| !self.types.knows(c.type_oid))
    }

    /// Whether the type catalog predates an ALTER TYPE that a change
    /// committed at `commit_lsn` showed (see `TypeCatalog::outdated_by`).
    pub fn types_outdated_by(&self, commit_lsn: Lsn) -> bool {
        self.types.outdated_by(commit_lsn)
    }

    pub fn set_types(&mut self, types: TypeCatalog) {
        self.types = types;
    }

    /// Whether `primary_key` must be looked up for this relation: under
    /// REPLICA IDENTITY FULL pgoutput flags every column as a key column.
    pub fn needs_primary_key(relation: &pgoutput::Relation) -> bool {
        relation.replica_identity == ReplicaIdentity::Full
    }

    /// Record a Relation message; `primary_key` is the table's key columns
    /// when [`needs_primary_key`](Self::needs_primary_key) said so.
    pub fn add_relation(&mut self, rel: pgoutput::Relation, primary_key: Option<Vec<String>>) {
        let kind = if rel.namespace == self.schema {
            if rel.name == "webhook" {
                RelationKind::Webhook
            } else if rel.name == "webhook_control" {
                RelationKind::Control
            } else {
                RelationKind::Internal
            }
        } else {
            RelationKind::Host
        };
        let qualified = format!("{}.{}", rel.namespace, rel.name);
        let entity = self
            .entities
            .get(&qualified)
            .cloned()
            .unwrap_or_else(|| rel.name.clone());
        let key = match primary_key {
            Some(pk) if !pk.is_empty() => pk
                .iter()
                .filter_map(|name| rel.columns.iter().position(|c| &c.name == name))
                .collect(),
            // FULL without a primary key flags every column: no key, so the
            // table keeps one order, as keyless tables do.
            _ if rel.replica_identity == ReplicaIdentity::Full => Vec::new(),
            _ => (0..rel.columns.len())
                .filter(|&i| rel.columns[i].is_key)
                .collect(),
        };
        let types = Arc::new(
            rel.columns
                .iter()
                .map(|c| (c.name.clone(), c.type_oid))
                .collect(),
        );
        self.relations.insert(
            rel.oid,
            Relation {
                name: rel.name.clone(),
                qualified,
                entity,
                kind,
                columns: rel.columns,
                key,
                types,
            },
        );
    }

    /// Turn one change message into events. `next_index` numbers the
    /// changes of the transaction and is advanced per produced change.
    pub fn change(
        &mut self,
        txn: &TxnInfo,
        next_index: &mut u32,
        message: pgoutput::Message,
    ) -> Result<Vec<Change>, EventError> {
        let mut out = Vec::new();
        match message {
            pgoutput::Message::Insert(m) => {
                let index = bump(next_index);
                out.extend(self.row_change(
                    txn,
                    index,
                    m.relation_oid,
                    Operation::Created,
                    None,
                    Some(m.new),
                )?);
            }
            pgoutput::Message::Update(m) => {
                let index = bump(next_index);
                out.extend(self.row_change(
                    txn,
                    index,
                    m.relation_oid,
                    Operation::Changed,
                    m.old,
                    Some(m.new),
                )?);
            }
            pgoutput::Message::Delete(m) => {
                let index = bump(next_index);
                out.extend(self.row_change(
                    txn,
                    index,
                    m.relation_oid,
                    Operation::Deleted,
                    Some(m.old),
                    None,
                )?);
            }
            pgoutput::Message::Truncate(m) => {
                for oid in m.relation_oids {
                    let index = bump(next_index);
                    let rel = self
                        .relations
                        .get(&oid)
                        .ok_or(EventError::UnknownRelation(oid))?;
                    match rel.kind {
                        RelationKind::Webhook => out.push(Change::Webhook(WebhookChange::Truncate)),
                        RelationKind::Control => out.push(Change::Control(WebhookChange::Truncate)),
                        RelationKind::Internal => {}
                        RelationKind::Host => out.push(Change::Event(Box::new(ChangeEvent {
                            event: format!("{}.truncated", rel.entity),
                            entity: rel.entity.clone(),
                            operation: Operation::Truncated,
                            table: rel.qualified.clone(),
                            primary_key: Value::Null,
                            key_columns: Vec::new(),
                            changes: Vec::new(),
                            changes_exact: true,
                            field_values: Map::new(),
                            missing_columns: Vec::new(),
                            values: None,
                            changed_by_associate_id: 0,
                            txn: *txn,
                            index,
                            ordering_key: rel.qualified.clone(),
                            previous_key: None,
                            backfill: None,
                            condition_row: ConditionRow::default(),
                        }))),
                    }
                }
            }
            _ => {}
        }
        Ok(out)
    }

    /// Existing rows of a table, read by a backfill in the stream's text
    /// form, as INSERT-shaped events (`<entity>.created`, every column in
    /// Changes), numbered from `first_index`. `relation` describes the
    /// table as the stream would; the stream's own description, if any,
    /// is left as it is, since live changes may still refer to it.
    pub fn backfill_events(
        &mut self,
        relation: pgoutput::Relation,
        primary_key: Option<Vec<String>>,
        txn: &TxnInfo,
        first_index: u32,
        rows: Vec<TupleData>,
    ) -> Result<Vec<ChangeEvent>, EventError> {
        let oid = relation.oid;
        let streamed = self.relations.remove(&oid);
        self.add_relation(relation, primary_key);
        let mut events = Vec::with_capacity(rows.len());
        let mut result = Ok(());
        for (n, row) in rows.into_iter().enumerate() {
            let index = first_index.saturating_add(n as u32);
            match self.row_change(txn, index, oid, Operation::Created, None, Some(row)) {
                Ok(Some(Change::Event(event))) => events.push(*event),
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        match streamed {
            Some(rel) => self.relations.insert(oid, rel),
            None => self.relations.remove(&oid),
        };
        result.map(|()| events)
    }

    fn row_change(
        &mut self,
        txn: &TxnInfo,
        index: u32,
        oid: u32,
        operation: Operation,
        old: Option<OldTuple>,
        new: Option<TupleData>,
    ) -> Result<Option<Change>, EventError> {
        let rel = self
            .relations
            .get(&oid)
            .ok_or(EventError::UnknownRelation(oid))?;
        let (old, old_is_full) = match old {
            Some(OldTuple::Full(t)) => (Some(t), true),
            Some(OldTuple::Key(t)) => (Some(t), false),
            None => (None, false),
        };
        for tuple in old.iter().chain(new.iter()) {
            if tuple.0.len() != rel.columns.len() {
                return Err(EventError::ColumnCount {
                    table: rel.qualified.clone(),
                    got: tuple.0.len(),
                    expected: rel.columns.len(),
                });
            }
        }
        match rel.kind {
            RelationKind::Internal => return Ok(None),
            kind @ (RelationKind::Webhook | RelationKind::Control) => {
                let change = match (&new, &old) {
                    (Some(new), old) => {
                        let mut row = text_row(rel, new)?;
                        let old_row = old.as_ref().map(|old| text_row(rel, old)).transpose()?;
                        // An unchanged TOASTed value is only in the old row,
                        // and only a full one carries it: the NULLs of an
                        // old-key tuple must not blank it (the registry
                        // keeps the value it knows instead).
                        if let (Some(old_row), true) = (&old_row, old_is_full) {
                            for (name, value) in old_row {
                                if new_is_unchanged(rel, new, name) {
                                    row.insert(name.clone(), value.clone());
                                }
                            }
                        }
                        let from = old_row
                            .and_then(|mut o| o.remove("webhook_id").flatten())
                            .filter(|from| {
                                Some(from) != row.get("webhook_id").and_then(|v| v.as_ref())
                            });
                        match from {
                            // The key changed: the old hook is removed.
                            Some(from) => WebhookChange::Rekey {
                                from,
                                row: WebhookRow(row),
                            },
                            None => WebhookChange::Upsert(WebhookRow(row)),
                        }
                    }
                    (None, Some(old)) => WebhookChange::Delete {
                        webhook_id: text_row(rel, old)?.remove("webhook_id").flatten(),
                    },
                    (None, None) => return Ok(None),
                };
                return Ok(Some(if kind == RelationKind::Webhook {
                    Change::Webhook(change)
                } else {
                    Change::Control(change)
                }));
            }
            RelationKind::Host => {}
        }

        let old_values = old.as_ref().map(|t| self.json_row(rel, t)).transpose()?;
        let new_values = new.as_ref().map(|t| self.json_row(rel, t)).transpose()?;

        let mut field_values = Map::new();
        let mut missing_columns = Vec::new();
        let mut changes = Vec::new();
        let changes_exact;
        match (&new_values, &old_values) {
            (Some(new_row), old_row) => {
                for (i, col) in rel.columns.iter().enumerate() {
                    match &new_row[i] {
                        Slot::Value(v) => {
                            field_values.insert(col.name.clone(), v.clone());
                        }
                        Slot::Unchanged => match old_row.as_ref().map(|o| &o[i]) {
                            Some(Slot::Value(v)) if old_is_full => {
                                field_values.insert(col.name.clone(), v.clone());
                            }
                            _ => missing_columns.push(col.name.clone()),
                        },
                    }
                }
                match operation {
                    Operation::Created => {
                        changes = rel.columns.iter().map(|c| c.name.clone()).collect();
                        changes_exact = true;
                    }
                    _ => match old_row {
                        Some(old_row) if old_is_full => {
                            for (i, col) in rel.columns.iter().enumerate() {
                                let differs = match (&old_row[i], &new_row[i]) {
                                    (_, Slot::Unchanged) => false,
                                    (Slot::Value(a), Slot::Value(b)) => a != b,
                                    (Slot::Unchanged, Slot::Value(_)) => true,
                                };
                                if differs {
                                    changes.push(col.name.clone());
                                }
                            }
                            changes_exact = true;
                        }
                        _ => {
                            changes = rel
                                .columns
                                .iter()
                                .zip(new_row)
                                .filter(|(_, v)| matches!(v, Slot::Value(_)))
                                .map(|(c, _)| c.name.clone())
                                .collect();
                            changes_exact = false;
                            if self.warned_inexact.insert(rel.qualified.clone()) {
                                if self.column_filtered.contains(&rel.qualified) {
                                    tracing::warn!(
                                        table = %rel.qualified,
                                        "UPDATE events of this table list every sent column in \
                                         Changes (ChangesExact false); they stay so: its \
                                         publication leaves columns out (exclude_columns), and \
                                         REPLICA IDENTITY FULL would make its UPDATEs and \
                                         DELETEs fail"
                                    );
                                } else {
                                    tracing::warn!(
                                        table = %rel.qualified,
                                        "UPDATE events of this table list every sent column in \
                                         Changes (ChangesExact false); ALTER TABLE ... REPLICA \
                                         IDENTITY FULL makes them exact"
                                    );
                                }
                            }
                        }
                    },
                }
            }
            (None, Some(old_row)) => {
                // DELETE: the old row as far as the WAL carries it.
                for (i, col) in rel.columns.iter().enumerate() {
                    let known = old_is_full || rel.columns[i].is_key;
                    match &old_row[i] {
                        Slot::Value(v) if known => {
                            field_values.insert(col.name.clone(), v.clone());
                        }
                        _ => missing_columns.push(col.name.clone()),
                    }
                }
                changes_exact = true;
            }
            (None, None) => return Ok(None),
        }

        // The key comes from the new row, else from the old one.
        let key_source = new_values.as_ref().or(old_values.as_ref());
        let mut key_map = Map::new();
        if let Some(row) = key_source {
            for &i in &rel.key {
                let value = match (&row[i], old_values.as_ref().map(|o| &o[i])) {
                    (Slot::Value(v), _) => v.clone(),
                    (Slot::Unchanged, Some(Slot::Value(v))) => v.clone(),
                    _ => Value::Null,
                };
                key_map.insert(rel.columns[i].name.clone(), value);
            }
        }
        let primary_key = match key_map.len() {
            0 => Value::Null,
            1 => key_map.values().next().cloned().unwrap_or(Value::Null),
            _ => Value::Object(key_map.clone()),
        };
        // Keyless tables keep one order per table; other rows order by
        // table and key, and a key-changing UPDATE also after its old key.
        let key_text = |row: &Vec<Slot>| {
            rel.key
                .iter()
                .map(|&i| match &row[i] {
                    Slot::Value(v) => v.to_string(),
                    Slot::Unchanged => String::new(),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let (ordering_key, previous_key) = if rel.key.is_empty() {
            (rel.qualified.clone(), None)
        } else {
            let current = format!("{}\u{1f}{}", rel.qualified, key_list(&key_map));
            let old = old_values
                .as_ref()
                .map(|o| format!("{}\u{1f}{}", rel.qualified, key_text(o)));
            match old {
                Some(old) if new_values.is_some() && old != current => (current, Some(old)),
                _ => (current, None),
            }
        };
        // The first configured column whose value is an id: a column that
        // exists but is NULL falls through to the next.
        let changed_by_associate_id = self
            .changed_by_columns
            .iter()
            .filter_map(|c| field_values.get(c))
            .find_map(|v| match v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse().ok(),
                _ => None,
            })
            .unwrap_or(0);
        Ok(Some(Change::Event(Box::new(ChangeEvent {
            event: format!("{}.{}", rel.entity, operation.suffix()),
            entity: rel.entity.clone(),
            operation,
            table: rel.qualified.clone(),
            key_columns: rel
                .key
                .iter()
                .map(|&i| rel.columns[i].name.clone())
                .collect(),
            primary_key,
            changes,
            changes_exact,
            field_values,
            missing_columns,
            values: (operation == Operation::Deleted).then_some(key_map),
            changed_by_associate_id,
            txn: *txn,
            index,
            ordering_key,
            previous_key,
            backfill: None,
            condition_row: ConditionRow {
                types: rel.types.clone(),
                old: match (operation, &old_values) {
                    (Operation::Changed, Some(old_row)) => {
                        Some(old_row_of(rel, old_row, old_is_full))
                    }
                    _ => None,
                },
            },
        }))))
    }

    fn json_row(&self, rel: &Relation, tuple: &TupleData) -> Result<Vec<Slot>, EventError> {
        rel.columns
            .iter()
            .zip(&tuple.0)
            .map(|(col, value)| {
                Ok(match value {
                    TupleValue::Null => Slot::Value(Value::Null),
                    TupleValue::UnchangedToast => Slot::Unchanged,
                    TupleValue::Text(bytes) => {
                        let text = std::str::from_utf8(bytes).map_err(|_| EventError::NotUtf8 {
                            table: rel.qualified.clone(),
                            column: col.name.clone(),
                        })?;
                        Slot::Value(value::text_to_json(&self.types, col.type_oid, text))
                    }
                    TupleValue::Binary(_) => {
                        return Err(EventError::Binary {
                            table: rel.qualified.clone(),
                            column: col.name.clone(),
                        })
                    }
                })
            })
            .collect()
    }
}

/// An UPDATE's old row for conditions: under FULL every column, else the
/// key's only (the rest of an old-key tuple is NULL placeholders).
fn old_row_of(rel: &Relation, old_row: &[Slot], full: bool) -> OldRow {
    let mut values = Map::new();
    let mut unknown = Vec::new();
    for (i, col) in rel.columns.iter().enumerate() {
        if !full && !rel.key.contains(&i) {
            continue;
        }
        match &old_row[i] {
            Slot::Value(v) => {
                values.insert(col.name.clone(), v.clone());
            }
            Slot::Unchanged => unknown.push(col.name.clone()),
        }
    }
    OldRow {
        values,
        unknown,
        full,
    }
}

fn bump(index: &mut u32) -> u32 {
    let i = *index;
    *index += 1;
    i
}

fn key_list(key: &Map<String, Value>) -> String {
    key.values()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A column's value in one row, or the marker for an unchanged TOASTed value.
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    Value(Value),
    Unchanged,
}

fn text_row(
    rel: &Relation,
    tuple: &TupleData,
) -> Result<BTreeMap<String, Option<String>>, EventError> {
    let mut row = BTreeMap::new();
    for (col, value) in rel.columns.iter().zip(&tuple.0) {
        let text = match value {
            TupleValue::Null => None,
            TupleValue::UnchangedToast => continue,
            TupleValue::Text(b) | TupleValue::Binary(b) => Some(
                String::from_utf8(b.to_vec()).map_err(|_| EventError::NotUtf8 {
                    table: rel.qualified.clone(),
                    column: col.name.clone(),
                })?,
            ),
        };
        row.insert(col.name.clone(), text);
    }
    Ok(row)
}

fn new_is_unchanged(rel: &Relation, new: &TupleData, column: &str) -> bool {
    rel.columns
        .iter()
        .position(|c| c.name == column)
        .is_some_and(|i| matches!(new.0.get(i), Some(TupleValue::UnchangedToast)))
}

#[cfg(test)]
mod tests;
