//! Matching by lookup: which hooks want an event, found from its entity and
//! operation instead of by asking every hook.
//!
//! A multi-tenant `webhook` table holds thousands of rows, and most changes
//! concern none of them; comparing each change with every hook made the
//! pipeline's cost grow with the table. Each pattern form has its own
//! place, so an event reads exactly four lists, which hold only the hooks
//! that want it:
//!
//! | pattern           | kept in                                       |
//! |-------------------|-----------------------------------------------|
//! | `contact.created` | `by_entity["contact"].by_operation[created]`  |
//! | `contact.*`       | `by_entity["contact"].every_operation`        |
//! | `*.deleted`       | `by_operation[deleted]`                       |
//! | `*` (and `*.*`)   | `every_event`                                 |
//!
//! Each list is ordered by webhook_id, and matching merges the four, so
//! hooks come out in webhook_id order, each once, exactly as a scan of the
//! table in webhook_id order gives them (the registry's tests check that
//! for every pattern form). A pattern naming an operation that events
//! never have (`contact.updated`, `*.inserted`) can match nothing and is
//! not kept.
//!
//! Adding, changing or removing a hook touches only the lists its patterns
//! name, and an entity whose lists become empty is forgotten, so the index
//! stays the size of the live hooks. Most lists hold one hook or a few (a
//! tenant's own entity), so a list is a short sorted vector until it grows
//! long and then a B-tree: small for the many short lists, and adding or
//! removing a hook in a list of 10,000 costs a B-tree step, not a shift of
//! the whole list.
//!
//! A column filter is a key too: `contact.changed(name,email)` puts the
//! hook in `by_entity["contact"].changed_by_column["name"]` and `["email"]`,
//! and a `contact.changed` event reads, besides the four lists, the list of
//! each column its `Changes` name. Its cost grows with the columns the event
//! changed (bounded by the table's width), never with the hooks: ten
//! thousand hooks filtering other columns of the same table are not read.

use std::collections::{btree_map, BTreeMap, BTreeSet, HashMap};
use std::iter::Peekable;
use std::slice;
use std::sync::Arc;

use super::webhook::{EventPattern, Webhook};
use crate::events::{ChangeEvent, Operation};

/// Every operation an event can have, in the order of the per-operation
/// lists.
const OPERATIONS: [Operation; 4] = [
    Operation::Created,
    Operation::Changed,
    Operation::Deleted,
    Operation::Truncated,
];

/// The list of an operation in a per-operation array.
fn slot(operation: Operation) -> usize {
    match operation {
        Operation::Created => 0,
        Operation::Changed => 1,
        Operation::Deleted => 2,
        Operation::Truncated => 3,
    }
}

/// The list of an operation named in a pattern; `None` when no event ever
/// has that operation.
fn slot_named(suffix: &str) -> Option<usize> {
    OPERATIONS.iter().position(|op| op.suffix() == suffix)
}

/// The length from which a list is a B-tree; it goes back to a vector
/// below half of it, so a list at the border does not switch on every
/// change.
#[cfg(not(test))]
const LONG: usize = 32;
/// Short enough for the registry's property tests to move lists back and
/// forth between the two forms.
#[cfg(test)]
const LONG: usize = 4;

/// Hooks whose patterns select one key, in webhook_id order.
#[derive(Debug, Clone)]
enum Entries {
    Short(Vec<Entry>),
    Long(BTreeMap<i32, Entry>),
}

impl Default for Entries {
    fn default() -> Entries {
        Entries::Short(Vec::new())
    }
}

impl Entries {
    fn is_empty(&self) -> bool {
        match self {
            Entries::Short(entries) => entries.is_empty(),
            Entries::Long(entries) => entries.is_empty(),
        }
    }

    /// Add a hook, once: a hook whose patterns name one key twice stays
    /// one entry.
    fn add(&mut self, hook: &Arc<Webhook>) {
        let id = hook.id;
        let new = || Entry {
            id,
            hook: hook.clone(),
        };
        match self {
            Entries::Short(entries) => match entries.binary_search_by_key(&id, |e| e.id) {
                Ok(_) => {}
                Err(i) => {
                    entries.insert(i, new());
                    if entries.len() >= LONG {
                        let long = entries.drain(..).map(|e| (e.id, e)).collect();
                        *self = Entries::Long(long);
                    }
                }
            },
            Entries::Long(entries) => {
                entries.entry(id).or_insert_with(new);
            }
        }
    }

    fn remove(&mut self, id: i32) {
        match self {
            Entries::Short(entries) => {
                if let Ok(i) = entries.binary_search_by_key(&id, |e| e.id) {
                    entries.remove(i);
                    if entries.is_empty() {
                        // Give the memory back: most lists are emptied for good.
                        *entries = Vec::new();
                    }
                }
            }
            Entries::Long(entries) => {
                entries.remove(&id);
                if entries.len() < LONG / 2 {
                    let short = std::mem::take(entries).into_values().collect();
                    *self = Entries::Short(short);
                }
            }
        }
    }

    fn iter(&self) -> EntriesIter<'_> {
        match self {
            Entries::Short(entries) => EntriesIter::Short(entries.iter()),
            Entries::Long(entries) => EntriesIter::Long(entries.values()),
        }
    }
}

enum EntriesIter<'a> {
    Short(slice::Iter<'a, Entry>),
    Long(btree_map::Values<'a, i32, Entry>),
}

impl<'a> Iterator for EntriesIter<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        match self {
            EntriesIter::Short(entries) => entries.next(),
            EntriesIter::Long(entries) => entries.next(),
        }
    }
}

/// The lists every event reads when its entity has none: matching always
/// merges four lists, an empty one standing in for a missing entity.
static NO_ENTRIES: Entries = Entries::Short(Vec::new());

/// One hook in one list.
#[derive(Debug, Clone)]
struct Entry {
    /// The hook's webhook_id, kept here so that merging lists reads no
    /// hook.
    id: i32,
    hook: Arc<Webhook>,
}

/// The lists of one entity: `contact.*`, `contact.<operation>` and
/// `contact.changed(<column>)`.
#[derive(Debug, Default, Clone)]
struct EntityEntries {
    every_operation: Entries,
    by_operation: [Entries; 4],
    /// Hooks filtering this entity's `changed` events, by column.
    changed_by_column: HashMap<Box<str>, Entries>,
}

impl EntityEntries {
    fn is_empty(&self) -> bool {
        self.every_operation.is_empty()
            && self.by_operation.iter().all(Entries::is_empty)
            && self.changed_by_column.is_empty()
    }
}

/// Where a pattern's hooks are kept.
enum Place<'p> {
    EveryEvent,
    Operation(usize),
    EveryOperationOf(&'p str),
    Exact(&'p str, usize),
    /// `contact.changed(name,email)`: one list per column.
    ChangedColumns(&'p str, &'p BTreeSet<String>),
}

impl<'p> Place<'p> {
    /// `None` for a pattern that no event can match.
    fn of(pattern: &'p EventPattern) -> Option<Place<'p>> {
        Some(match pattern {
            EventPattern::Any => Place::EveryEvent,
            EventPattern::Operation(op) => Place::Operation(slot_named(op)?),
            EventPattern::Entity(entity) => Place::EveryOperationOf(entity),
            // Parsing guarantees one dot with text on both sides; an event
            // is named `<entity>.<operation>`, so the exact name matches
            // exactly when both halves do.
            EventPattern::Exact(name) => {
                let (entity, op) = name.split_once('.')?;
                Place::Exact(entity, slot_named(op)?)
            }
            EventPattern::ChangedColumns { entity, columns } => {
                Place::ChangedColumns(entity, columns)
            }
        })
    }
}

/// The hooks that receive events, by the keys their patterns select.
#[derive(Debug, Default, Clone)]
pub struct MatchIndex {
    /// `contact.*` and `contact.created`, by entity. Boxed: a table of
    /// thousands of tenants has thousands of entities, and the map's free
    /// slots then cost a pointer each, not five lists.
    by_entity: HashMap<Box<str>, Box<EntityEntries>>,
    /// `*.deleted`, by operation.
    by_operation: [Entries; 4],
    /// `*`.
    every_event: Entries,
}

impl MatchIndex {
    /// Index a hook under each of its patterns. A hook already indexed
    /// must be removed first (its old patterns may differ).
    pub fn insert(&mut self, hook: &Arc<Webhook>) {
        for pattern in &hook.events {
            if let Some(place) = Place::of(pattern) {
                self.add(place, hook);
            }
        }
    }

    /// Forget a hook, given as it was indexed: only the lists its patterns
    /// name are touched.
    pub fn remove(&mut self, hook: &Webhook) {
        let id = hook.id;
        for pattern in &hook.events {
            match Place::of(pattern) {
                None => {}
                Some(Place::EveryEvent) => self.every_event.remove(id),
                Some(Place::Operation(op)) => self.by_operation[op].remove(id),
                Some(Place::EveryOperationOf(entity)) => {
                    self.remove_from_entity(entity, id, |e| &mut e.every_operation);
                }
                Some(Place::Exact(entity, op)) => {
                    self.remove_from_entity(entity, id, |e| &mut e.by_operation[op]);
                }
                Some(Place::ChangedColumns(entity, columns)) => {
                    let Some(entries) = self.by_entity.get_mut(entity) else {
                        continue;
                    };
                    for column in columns {
                        if let Some(list) = entries.changed_by_column.get_mut(column.as_str()) {
                            list.remove(id);
                            if list.is_empty() {
                                entries.changed_by_column.remove(column.as_str());
                            }
                        }
                    }
                    if entries.is_empty() {
                        self.by_entity.remove(entity);
                    }
                }
            }
        }
    }

    pub fn clear(&mut self) {
        *self = MatchIndex::default();
    }

    /// Whether no hook is indexed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_entity.is_empty()
            && self.every_event.is_empty()
            && self.by_operation.iter().all(Entries::is_empty)
    }

    /// The indexed hooks that want this event, in webhook_id order, each
    /// once.
    pub fn matching<'a>(&'a self, event: &'a ChangeEvent) -> Matches<'a> {
        let op = slot(event.operation);
        let entity = self.by_entity.get(event.entity.as_str());
        let (entity_any, entity_exact) = match entity {
            Some(entries) => (&entries.every_operation, &entries.by_operation[op]),
            None => (&NO_ENTRIES, &NO_ENTRIES),
        };
        // Only an UPDATE of an entity with column filters reads (and
        // allocates) more lists: one per changed column that one filters.
        let by_column = match entity {
            Some(entries)
                if event.operation == Operation::Changed
                    && !entries.changed_by_column.is_empty() =>
            {
                event
                    .changes
                    .iter()
                    .filter_map(|c| entries.changed_by_column.get(c.as_str()))
                    .map(|list| list.iter().peekable())
                    .collect()
            }
            _ => Vec::new(),
        };
        Matches {
            by_column,
            lists: [
                entity_exact.iter().peekable(),
                entity_any.iter().peekable(),
                self.by_operation[op].iter().peekable(),
                self.every_event.iter().peekable(),
            ],
        }
    }

    fn add(&mut self, place: Place<'_>, hook: &Arc<Webhook>) {
        let entries = match place {
            Place::EveryEvent => &mut self.every_event,
            Place::Operation(op) => &mut self.by_operation[op],
            Place::EveryOperationOf(entity) => &mut self.entity_entries(entity).every_operation,
            Place::Exact(entity, op) => &mut self.entity_entries(entity).by_operation[op],
            Place::ChangedColumns(entity, columns) => {
                let by_column = &mut self.entity_entries(entity).changed_by_column;
                for column in columns {
                    if let Some(list) = by_column.get_mut(column.as_str()) {
                        list.add(hook);
                    } else {
                        let mut list = Entries::default();
                        list.add(hook);
                        by_column.insert(column.as_str().into(), list);
                    }
                }
                return;
            }
        };
        entries.add(hook);
    }

    fn entity_entries(&mut self, entity: &str) -> &mut EntityEntries {
        // Look up before inserting so that only a new entity allocates.
        if !self.by_entity.contains_key(entity) {
            self.by_entity.insert(entity.into(), Box::default());
        }
        self.by_entity
            .get_mut(entity)
            .expect("the entity was just inserted")
    }

    fn remove_from_entity(
        &mut self,
        entity: &str,
        id: i32,
        list: impl FnOnce(&mut EntityEntries) -> &mut Entries,
    ) {
        let Some(entries) = self.by_entity.get_mut(entity) else {
            return;
        };
        list(entries).remove(id);
        if entries.is_empty() {
            self.by_entity.remove(entity);
        }
    }
}

/// The hooks that want one event: the lists it selects, merged in
/// webhook_id order.
pub struct Matches<'a> {
    lists: [Peekable<EntriesIter<'a>>; 4],
    /// The column lists of the columns the event changed.
    by_column: Vec<Peekable<EntriesIter<'a>>>,
}

impl<'a> Iterator for Matches<'a> {
    type Item = &'a Arc<Webhook>;

    fn next(&mut self) -> Option<&'a Arc<Webhook>> {
        let id = self
            .lists
            .iter_mut()
            .chain(self.by_column.iter_mut())
            .filter_map(|list| list.peek().map(|entry| entry.id))
            .min()?;
        // A hook may sit in several lists (`contact.*, *`, or two columns
        // the event changed): take it from each, return it once.
        let mut hook = None;
        for list in self.lists.iter_mut().chain(self.by_column.iter_mut()) {
            if let Some(entry) = list.next_if(|entry| entry.id == id) {
                hook = Some(&entry.hook);
            }
        }
        hook
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::WebhookRow;

    fn hook(id: i32, events: &str) -> Arc<Webhook> {
        let row = WebhookRow(
            [
                ("webhook_id", id.to_string()),
                ("events", events.to_owned()),
                ("target_url", "https://example.com/hook".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Some(v)))
            .collect(),
        );
        Arc::new(Webhook::from_row(&row).unwrap())
    }

    fn changed(entity: &str, changes: &[&str]) -> ChangeEvent {
        ChangeEvent {
            changes: changes.iter().map(|c| c.to_string()).collect(),
            ..ChangeEvent::sample(entity, Operation::Changed)
        }
    }

    fn ids(index: &MatchIndex, event: &ChangeEvent) -> Vec<i32> {
        index.matching(event).map(|h| h.id).collect()
    }

    #[test]
    fn a_column_filter_reads_only_the_lists_of_the_changed_columns() {
        let mut index = MatchIndex::default();
        index.insert(&hook(1, "contact.changed(name,email)"));
        index.insert(&hook(2, "contact.changed"));
        index.insert(&hook(3, "contact.changed(phone), contact.changed(email)"));
        assert_eq!(ids(&index, &changed("contact", &["email"])), [1, 2, 3]);
        assert_eq!(
            ids(&index, &changed("contact", &["name", "email"])),
            [1, 2, 3]
        );
        assert_eq!(ids(&index, &changed("contact", &["zip"])), [2]);
        assert_eq!(
            ids(&index, &changed("person", &["email"])),
            Vec::<i32>::new()
        );
    }

    #[test]
    fn removing_the_last_hook_of_an_entity_forgets_the_entity() {
        let mut index = MatchIndex::default();
        let h = hook(
            1,
            "contact.changed, contact.*, *.deleted, *, contact.updated, contact.changed(a,b)",
        );
        index.insert(&h);
        assert!(!index.is_empty());
        index.remove(&h);
        assert!(index.is_empty());
    }
}
