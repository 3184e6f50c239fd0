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
//! An entry may carry a column set: a pattern such as
//! `contact.changed(name,email)` lands in the same list as
//! `contact.changed` and only lets events through whose `Changes` name one
//! of its columns. The `events` syntax for it is not parsed yet, so every
//! entry kept today has no column set.

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

    /// Add a hook's entry, or widen the one it has.
    fn add(&mut self, hook: &Arc<Webhook>, columns: Option<BTreeSet<String>>) {
        let id = hook.id;
        let new = |columns: Option<BTreeSet<String>>| Entry {
            id,
            columns: columns.map(Arc::new),
            hook: hook.clone(),
        };
        match self {
            Entries::Short(entries) => match entries.binary_search_by_key(&id, |e| e.id) {
                Ok(i) => entries[i].widen(columns.as_ref()),
                Err(i) => {
                    entries.insert(i, new(columns));
                    if entries.len() >= LONG {
                        let long = entries.drain(..).map(|e| (e.id, e)).collect();
                        *self = Entries::Long(long);
                    }
                }
            },
            Entries::Long(entries) => match entries.entry(id) {
                btree_map::Entry::Occupied(mut entry) => entry.get_mut().widen(columns.as_ref()),
                btree_map::Entry::Vacant(entry) => {
                    entry.insert(new(columns));
                }
            },
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
    /// `None`: every event of the list's key. `Some`: only events whose
    /// `Changes` name one of these columns (a column filter). When several
    /// of a hook's patterns land in one list, the entry lets through what
    /// any of them would.
    columns: Option<Arc<BTreeSet<String>>>,
    hook: Arc<Webhook>,
}

impl Entry {
    fn accepts(&self, event: &ChangeEvent) -> bool {
        match &self.columns {
            None => true,
            Some(columns) => event.changes.iter().any(|c| columns.contains(c)),
        }
    }

    /// Let through, in addition, what a further pattern of the same hook
    /// selects.
    fn widen(&mut self, columns: Option<&BTreeSet<String>>) {
        match (&mut self.columns, columns) {
            (None, _) => {}
            (own, None) => *own = None,
            (Some(own), Some(more)) => Arc::make_mut(own).extend(more.iter().cloned()),
        }
    }
}

/// The lists of one entity: `contact.*` and `contact.<operation>`.
#[derive(Debug, Default, Clone)]
struct EntityEntries {
    every_operation: Entries,
    by_operation: [Entries; 4],
}

impl EntityEntries {
    fn is_empty(&self) -> bool {
        self.every_operation.is_empty() && self.by_operation.iter().all(Entries::is_empty)
    }
}

/// Where a pattern's hooks are kept.
enum Place<'p> {
    EveryEvent,
    Operation(usize),
    EveryOperationOf(&'p str),
    Exact(&'p str, usize),
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
                // Column filters, once the `events` syntax has them, are
                // passed here with their pattern.
                self.add(place, hook, None);
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
        let (entity_any, entity_exact) = match self.by_entity.get(event.entity.as_str()) {
            Some(entries) => (&entries.every_operation, &entries.by_operation[op]),
            None => (&NO_ENTRIES, &NO_ENTRIES),
        };
        Matches {
            event,
            lists: [
                entity_exact.iter().peekable(),
                entity_any.iter().peekable(),
                self.by_operation[op].iter().peekable(),
                self.every_event.iter().peekable(),
            ],
        }
    }

    fn add(&mut self, place: Place<'_>, hook: &Arc<Webhook>, columns: Option<BTreeSet<String>>) {
        let entries = match place {
            Place::EveryEvent => &mut self.every_event,
            Place::Operation(op) => &mut self.by_operation[op],
            Place::EveryOperationOf(entity) => &mut self.entity_entries(entity).every_operation,
            Place::Exact(entity, op) => &mut self.entity_entries(entity).by_operation[op],
        };
        entries.add(hook, columns);
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

/// The hooks that want one event: the four lists it selects, merged in
/// webhook_id order. Allocates nothing.
pub struct Matches<'a> {
    event: &'a ChangeEvent,
    lists: [Peekable<EntriesIter<'a>>; 4],
}

impl<'a> Iterator for Matches<'a> {
    type Item = &'a Arc<Webhook>;

    fn next(&mut self) -> Option<&'a Arc<Webhook>> {
        loop {
            let id = self
                .lists
                .iter_mut()
                .filter_map(|list| list.peek().map(|entry| entry.id))
                .min()?;
            // A hook may sit in several lists (`contact.*, *`): take it
            // from each, and let it through when any of its entries does.
            let mut wanted = None;
            for list in &mut self.lists {
                if let Some(entry) = list.next_if(|entry| entry.id == id) {
                    if entry.accepts(self.event) {
                        wanted = Some(&entry.hook);
                    }
                }
            }
            if wanted.is_some() {
                return wanted;
            }
        }
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

    fn columns(names: &[&str]) -> Option<BTreeSet<String>> {
        Some(names.iter().map(|c| c.to_string()).collect())
    }

    #[test]
    fn an_entry_with_columns_lets_through_only_events_that_change_one_of_them() {
        let mut index = MatchIndex::default();
        let filtered = hook(1, "contact.changed");
        index.add(
            Place::Exact("contact", 1),
            &filtered,
            columns(&["name", "email"]),
        );
        index.insert(&hook(2, "contact.changed"));
        assert_eq!(ids(&index, &changed("contact", &["email"])), [1, 2]);
        assert_eq!(ids(&index, &changed("contact", &["phone"])), [2]);
    }

    #[test]
    fn a_hook_in_several_lists_passes_when_any_of_its_entries_does() {
        let mut index = MatchIndex::default();
        let wide = hook(1, "contact.changed");
        index.add(Place::Exact("contact", 1), &wide, columns(&["name"]));
        index.add(Place::Operation(1), &wide, columns(&["email"]));
        assert_eq!(ids(&index, &changed("contact", &["email"])), [1]);
        assert_eq!(ids(&index, &changed("contact", &["name"])), [1]);
        assert!(ids(&index, &changed("contact", &["phone"])).is_empty());
    }

    #[test]
    fn patterns_of_one_hook_in_one_list_let_through_what_any_of_them_would() {
        let mut index = MatchIndex::default();
        let h = hook(1, "contact.changed");
        index.add(Place::Exact("contact", 1), &h, columns(&["name"]));
        index.add(Place::Exact("contact", 1), &h, columns(&["email"]));
        assert_eq!(ids(&index, &changed("contact", &["email"])), [1]);
        index.add(Place::Exact("contact", 1), &h, None);
        assert_eq!(ids(&index, &changed("contact", &["phone"])), [1]);
    }

    #[test]
    fn removing_the_last_hook_of_an_entity_forgets_the_entity() {
        let mut index = MatchIndex::default();
        let h = hook(
            1,
            "contact.changed, contact.*, *.deleted, *, contact.updated",
        );
        index.insert(&h);
        assert!(!index.is_empty());
        index.remove(&h);
        assert!(index.is_empty());
    }
}
