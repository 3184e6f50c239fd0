use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::events::Operation;
use crate::pgoutput::Lsn;

fn row(pairs: &[(&str, Option<&str>)]) -> WebhookRow {
    WebhookRow(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect(),
    )
}

fn good(id: &str, events: &str) -> WebhookRow {
    row(&[
        ("webhook_id", Some(id)),
        ("name", Some("n")),
        ("events", Some(events)),
        ("target_url", Some("https://example.com/hook")),
        ("type", Some("webhook")),
        ("state", Some("1")),
    ])
}

fn event(entity: &str, operation: Operation) -> ChangeEvent {
    ChangeEvent::sample(entity, operation)
}

/// What matching meant before the index: every hook asked in turn.
fn scan<'a>(registry: &'a Registry, event: &ChangeEvent) -> Vec<&'a Arc<Webhook>> {
    registry
        .hooks()
        .filter(|h| h.kind == "webhook" && h.wants(event))
        .collect()
}

fn matching_ids(registry: &Registry, event: &ChangeEvent) -> Vec<i32> {
    registry.matching(event).map(|h| h.id).collect()
}

#[test]
fn patterns() {
    use Operation::*;
    let any = EventPattern::parse("*").unwrap();
    let entity = EventPattern::parse("contact.*").unwrap();
    let op = EventPattern::parse("*.deleted").unwrap();
    let exact = EventPattern::parse("contact.created").unwrap();
    assert!(any.matches(&event("x", Created)));
    assert!(entity.matches(&event("contact", Changed)));
    assert!(!entity.matches(&event("person", Changed)));
    assert!(op.matches(&event("person", Deleted)));
    assert!(!op.matches(&event("person", Created)));
    assert!(exact.matches(&event("contact", Created)));
    assert!(!exact.matches(&event("contact", Changed)));
    assert!(EventPattern::parse("contact").is_err());
}

fn changed(entity: &str, changes: &[&str]) -> ChangeEvent {
    ChangeEvent {
        changes: changes.iter().map(|c| c.to_string()).collect(),
        ..event(entity, Operation::Changed)
    }
}

#[test]
fn a_column_filter_selects_changed_events_that_change_one_of_its_columns() {
    let filter = EventPattern::parse("contact.changed(name,email)").unwrap();
    assert_eq!(
        filter,
        EventPattern::ChangedColumns {
            entity: "contact".into(),
            columns: ["email".to_owned(), "name".to_owned()].into(),
        }
    );
    assert!(filter.matches(&changed("contact", &["phone", "email"])));
    assert!(!filter.matches(&changed("contact", &["phone"])));
    assert!(!filter.matches(&changed("contact", &[])));
    assert!(!filter.matches(&changed("person", &["email"])));
    assert!(!filter.matches(&event("contact", Operation::Created)));
}

#[test]
fn commas_inside_a_column_filter_do_not_split_the_events_column() {
    let hook = Webhook::from_row(&good(
        "1",
        " contact.changed( name , email ), person.* ,*.deleted",
    ))
    .unwrap();
    assert_eq!(hook.events.len(), 3);
    let filters: Vec<(&str, Vec<&String>)> = hook
        .column_filters()
        .map(|(entity, columns)| (entity, columns.iter().collect()))
        .collect();
    assert_eq!(
        filters,
        [("contact", vec![&"email".to_owned(), &"name".to_owned()])]
    );
}

#[test]
fn a_bad_column_filter_makes_the_row_invalid_and_says_why() {
    for (events, why) in [
        ("contact.changed(name", "not closed"),
        ("contact.changed(name))", "')' without '('"),
        ("contact.changed)", "')' without '('"),
        ("contact.changed((name))", "do not nest"),
        ("contact.changed()", "empty column name"),
        ("contact.changed(name,,email)", "empty column name"),
        ("contact.changed(name)x", "nothing follows"),
        ("contact.created(name)", "follows an entity's changed event"),
        ("*.changed(name)", "follows an entity's changed event"),
        ("contact.*(name)", "follows an entity's changed event"),
        ("(name)", "follows an entity's changed event"),
    ] {
        let err = Webhook::from_row(&good("7", events)).unwrap_err().0;
        assert!(err.contains(why), "{events:?}: {err}");
    }
    let many = (0..=MAX_FILTER_COLUMNS)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let err = Webhook::from_row(&good("7", &format!("contact.changed({many})")))
        .unwrap_err()
        .0;
    assert!(err.contains("more than"), "{err}");

    // The daemon keeps the previous hooks and skips the row.
    let mut registry = Registry::from_rows([good("1", "*")]);
    assert_eq!(
        registry.apply(WebhookChange::Upsert(good("7", "contact.changed(name"))),
        RegistryUpdate::Invalid(7)
    );
    assert!(registry.get(7).is_none());
}

#[test]
fn a_filtered_hook_is_matched_beside_plain_names_and_wildcards() {
    let registry = Registry::from_rows([
        good("1", "contact.changed(email)"),
        good("2", "contact.changed"),
        good("3", "contact.*"),
        good("4", "*.changed"),
        good("5", "contact.changed(name), contact.deleted"),
    ]);
    assert_eq!(
        matching_ids(&registry, &changed("contact", &["email"])),
        [1, 2, 3, 4]
    );
    assert_eq!(
        matching_ids(&registry, &changed("contact", &["name", "email"])),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        matching_ids(&registry, &event("contact", Operation::Deleted)),
        [3, 5]
    );
}

/// Matching with one hook and with 10,000 of which one matches, timed:
/// printed, not asserted (a timing depends on the machine). Run with
/// `cargo test --release --lib -- matching_cost --nocapture`.
#[test]
fn matching_cost_with_1_and_10000_hooks() {
    use std::time::Instant;
    const EVENTS: u32 = 200_000;
    let wanted = changed("contact", &["email", "phone"]);
    let time = |registry: &Registry| {
        assert_eq!(matching_ids(registry, &wanted), [1]);
        let start = Instant::now();
        let mut found = 0usize;
        for _ in 0..EVENTS {
            found += registry.matching(std::hint::black_box(&wanted)).count();
        }
        assert_eq!(found, EVENTS as usize);
        start.elapsed().as_nanos() as f64 / f64::from(EVENTS)
    };
    let one = Registry::from_rows([good("1", "contact.changed(email)")]);
    // The hardest case for a lookup: every other hook filters the same
    // table's changed events, on columns this change did not touch.
    let same_table = Registry::from_rows(
        std::iter::once(good("1", "contact.changed(email)")).chain(
            (2..=10_000)
                .map(|i| good(&i.to_string(), &format!("contact.changed(col{i},other{i})"))),
        ),
    );
    // The common case: tenants filtering their own tables.
    let other_tables = Registry::from_rows(
        std::iter::once(good("1", "contact.changed(email)")).chain((2..=10_000).map(|i| {
            good(
                &i.to_string(),
                &format!("tenant{i}.changed(email), tenant{i}.*"),
            )
        })),
    );
    let base = time(&one);
    let same = time(&same_table);
    let other = time(&other_tables);
    println!(
        "matching one UPDATE: 1 hook {base:.0} ns; 10,000 hooks filtering the same table {same:.0} ns \
         (x{:.2}); 10,000 hooks on other tables {other:.0} ns (x{:.2})",
        same / base,
        other / base
    );
}

#[test]
fn events_ignore_spaces() {
    let hook = Webhook::from_row(&good("1", " contact.created , person.changed ")).unwrap();
    assert_eq!(hook.events.len(), 2);
}

#[test]
fn bad_rows_are_skipped_with_reason() {
    let mut r = good("5", "contact.created");
    r.0.insert("target_url".into(), Some("not a url".into()));
    assert!(Webhook::from_row(&r).unwrap_err().0.contains("target_url"));
    let mut r = good("5", "contact.created");
    r.0.insert("headers".into(), Some("[1]".into()));
    assert!(Webhook::from_row(&r).unwrap_err().0.contains("headers"));
    let mut r = good("5", "contact.created");
    r.0.insert("headers".into(), Some("{\"a\": 1}".into()));
    assert!(Webhook::from_row(&r).unwrap_err().0.contains("\"a\""));
    assert!(Webhook::from_row(&good("5", " , "))
        .unwrap_err()
        .0
        .contains("events"));

    let mut registry = Registry::from_rows([good("1", "*")]);
    let mut bad = good("2", "*");
    bad.0.insert("properties".into(), Some("3".into()));
    assert_eq!(
        registry.apply(WebhookChange::Upsert(bad)),
        RegistryUpdate::Invalid(2)
    );
    assert!(registry.get(1).is_some());
    assert!(registry.get(2).is_none());
}

#[test]
fn updates_merge_and_deletes_remove() {
    let mut registry = Registry::from_rows([good("1", "*")]);
    let update = row(&[("webhook_id", Some("1")), ("state", Some("2"))]);
    assert_eq!(
        registry.apply(WebhookChange::Upsert(update)),
        RegistryUpdate::Changed {
            id: 1,
            was_active: true
        }
    );
    assert_eq!(registry.get(1).unwrap().state, WebhookState::Stopped);
    assert_eq!(
        registry.apply(WebhookChange::Delete {
            webhook_id: Some("1".into())
        }),
        RegistryUpdate::Removed(1)
    );
    assert!(registry.get(1).is_none());
}

#[test]
fn matching_finds_each_pattern_form_in_webhook_id_order() {
    let registry = Registry::from_rows([
        good("5", "*"),
        good("4", "*.deleted"),
        good("3", "contact.*"),
        good("2", "contact.deleted"),
        good("1", "person.deleted, contact.*, *.deleted"),
        good("6", "person.*"),
    ]);
    let deleted = event("contact", Operation::Deleted);
    assert_eq!(matching_ids(&registry, &deleted), [1, 2, 3, 4, 5]);
    let created = event("contact", Operation::Created);
    assert_eq!(matching_ids(&registry, &created), [1, 3, 5]);
    let other = event("project", Operation::Created);
    assert_eq!(matching_ids(&registry, &other), [5]);
}

#[test]
fn matching_leaves_out_hooks_of_other_types_and_keeps_every_state() {
    let mut other_type = good("1", "*");
    other_type.0.insert("type".into(), Some("email".into()));
    let mut stopped = good("2", "*");
    stopped.0.insert("state".into(), Some("2".into()));
    let mut too_many = good("3", "*");
    too_many.0.insert("state".into(), Some("3".into()));
    let registry = Registry::from_rows([other_type, stopped, too_many]);
    let e = event("contact", Operation::Created);
    assert_eq!(matching_ids(&registry, &e), [2, 3]);
}

#[test]
fn a_changed_hook_is_matched_by_its_new_patterns_only() {
    let mut registry = Registry::from_rows([good("1", "contact.created")]);
    let update = row(&[("webhook_id", Some("1")), ("events", Some("person.*"))]);
    registry.apply(WebhookChange::Upsert(update));
    assert!(matching_ids(&registry, &event("contact", Operation::Created)).is_empty());
    assert_eq!(
        matching_ids(&registry, &event("person", Operation::Changed)),
        [1]
    );
    let invalid = row(&[("webhook_id", Some("1")), ("target_url", Some("nope"))]);
    registry.apply(WebhookChange::Upsert(invalid));
    assert!(matching_ids(&registry, &event("person", Operation::Changed)).is_empty());
}

#[test]
fn row_changes_name_each_changed_row_once_as_it_stands() {
    let mut registry = Registry::from_rows([good("1", "*"), good("2", "*")]);
    assert!(registry.take_row_changes().is_empty());
    registry.apply(WebhookChange::Upsert(good("3", "*")));
    registry.apply(WebhookChange::Upsert(good("3", "contact.*")));
    registry.apply(WebhookChange::Delete {
        webhook_id: Some("1".into()),
    });
    let changes = registry.take_row_changes();
    let ids: Vec<(i32, bool)> = changes.iter().map(|(id, r)| (*id, r.is_some())).collect();
    assert_eq!(ids, [(1, false), (3, true)]);
    assert_eq!(
        changes[1].1.as_ref().unwrap().0["events"].as_deref(),
        Some("contact.*")
    );
    registry.apply(WebhookChange::Truncate);
    let ids: Vec<(i32, bool)> = registry
        .take_row_changes()
        .iter()
        .map(|(id, r)| (*id, r.is_some()))
        .collect();
    assert_eq!(ids, [(2, false), (3, false)]);
}

#[test]
fn a_snapshot_falls_due_once_the_position_reaches_its_commit() {
    let mut registry = Registry::from_rows([good("1", "*")]);
    let mut pending = PendingSnapshots::new(&registry);
    assert_eq!(pending.due(Lsn(100)), None);
    registry.apply(WebhookChange::Upsert(good("2", "*")));
    pending.record(Lsn(10), registry.take_row_changes());
    registry.apply(WebhookChange::Delete {
        webhook_id: Some("1".into()),
    });
    pending.record(Lsn(20), registry.take_row_changes());
    assert_eq!(pending.due(Lsn(9)), None);
    assert_eq!(pending.due(Lsn(15)), Some(Lsn(10)));
    let ids = |p: &PendingSnapshots| -> Vec<String> {
        p.rows()
            .map(|r| r.0["webhook_id"].clone().unwrap())
            .collect()
    };
    assert_eq!(ids(&pending), ["1", "2"]);
    // Not written (the write failed): due again, or a newer state instead.
    assert_eq!(pending.due(Lsn(15)), Some(Lsn(10)));
    assert_eq!(pending.due(Lsn(20)), Some(Lsn(20)));
    assert_eq!(ids(&pending), ["2"]);
    pending.written();
    assert_eq!(pending.due(Lsn(30)), None);
}

// ---------------------------------------------------------------------
// The index against a scan, on random tables changed at random.

/// Entities of patterns and of events: `a` and `a.b` check that an
/// entity containing a dot is matched by no pattern of its first part.
const ENTITIES: [&str; 4] = ["contact", "person", "project", "a"];
const EVENT_ENTITIES: [&str; 6] = ["contact", "person", "project", "a", "a.b", "other"];
/// `updated` is no operation of any event.
const PATTERN_OPERATIONS: [&str; 5] = ["created", "changed", "deleted", "truncated", "updated"];
/// Columns of filters; events change these and `other`.
const COLUMNS: [&str; 3] = ["name", "email", "phone"];
const EVENT_CHANGES: [&[&str]; 5] = [
    &[],
    &["name"],
    &["email", "phone"],
    &["other"],
    &["phone", "other"],
];
const OPERATIONS: [Operation; 4] = [
    Operation::Created,
    Operation::Changed,
    Operation::Deleted,
    Operation::Truncated,
];

fn pattern() -> impl Strategy<Value = String> {
    let entity = proptest::sample::select(&ENTITIES[..]);
    let op = proptest::sample::select(&PATTERN_OPERATIONS[..]);
    prop_oneof![
        2 => Just("*".to_owned()),
        1 => Just("*.*".to_owned()),
        4 => entity.clone().prop_map(|e| format!("{e}.*")),
        4 => op.clone().prop_map(|o| format!("*.{o}")),
        8 => (entity.clone(), op).prop_map(|(e, o)| format!("{e}.{o}")),
        4 => (entity, proptest::sample::subsequence(&COLUMNS[..], 1..3))
            .prop_map(|(e, c)| format!("{e}.changed({})", c.join(" , "))),
        // Rows these make are invalid: skipped, and out of the index.
        1 => Just("contact".to_owned()),
        1 => Just("a.b.created".to_owned()),
        1 => Just("contact.changed(name".to_owned()),
        1 => Just("contact.created(name)".to_owned()),
    ]
}

/// An `events` column: comma-separated, with spaces anywhere.
fn events_column() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec((pattern(), 0..3usize, 0..3usize), 0..4),
        any::<bool>(),
    )
        .prop_map(|(patterns, trailing_comma)| {
            let mut text = patterns
                .iter()
                .map(|(p, before, after)| {
                    format!("{}{p}{}", " ".repeat(*before), " ".repeat(*after))
                })
                .collect::<Vec<_>>()
                .join(",");
            if trailing_comma {
                text.push_str(", ");
            }
            text
        })
}

#[derive(Debug, Clone)]
enum TableChange {
    /// An INSERT or UPDATE sending every column.
    Whole {
        id: i32,
        events: String,
        kind: &'static str,
        state: &'static str,
        url_ok: bool,
    },
    /// An UPDATE sending some columns only (merged over the known row).
    Some {
        id: i32,
        events: Option<String>,
        kind: Option<&'static str>,
        state: Option<&'static str>,
    },
    Delete(Option<String>),
    Truncate,
}

fn table_change() -> impl Strategy<Value = TableChange> {
    let id = 1..16i32;
    let kind = proptest::sample::select(&["webhook", "webhook", "webhook", "email"][..]);
    let state = proptest::sample::select(&["0", "1", "1", "2", "3", "9"][..]);
    prop_oneof![
        8 => (id.clone(), events_column(), kind.clone(), state.clone(), proptest::bool::weighted(0.9))
            .prop_map(|(id, events, kind, state, url_ok)| TableChange::Whole { id, events, kind, state, url_ok }),
        4 => (
            id.clone(),
            proptest::option::of(events_column()),
            proptest::option::of(kind),
            proptest::option::of(state),
        )
            .prop_map(|(id, events, kind, state)| TableChange::Some { id, events, kind, state }),
        3 => prop_oneof![
            8 => id.prop_map(|id| Some(id.to_string())),
            1 => Just(None),
            1 => Just(Some("x".to_owned())),
        ]
        .prop_map(TableChange::Delete),
        1 => Just(TableChange::Truncate),
    ]
}

impl TableChange {
    fn into_change(self) -> WebhookChange {
        match self {
            TableChange::Whole {
                id,
                events,
                kind,
                state,
                url_ok,
            } => {
                let id = id.to_string();
                let url = if url_ok {
                    "https://example.com/h"
                } else {
                    "not a url"
                };
                WebhookChange::Upsert(row(&[
                    ("webhook_id", Some(&id)),
                    ("name", Some("n")),
                    ("events", Some(&events)),
                    ("target_url", Some(url)),
                    ("type", Some(kind)),
                    ("state", Some(state)),
                ]))
            }
            TableChange::Some {
                id,
                events,
                kind,
                state,
            } => {
                let id = id.to_string();
                let mut pairs = vec![("webhook_id", Some(id.as_str()))];
                pairs.extend(events.as_deref().map(|e| ("events", Some(e))));
                pairs.extend(kind.map(|k| ("type", Some(k))));
                pairs.extend(state.map(|s| ("state", Some(s))));
                WebhookChange::Upsert(row(&pairs))
            }
            TableChange::Delete(webhook_id) => WebhookChange::Delete { webhook_id },
            TableChange::Truncate => WebhookChange::Truncate,
        }
    }
}

fn assert_index_agrees_with_scan(registry: &Registry) -> Result<(), TestCaseError> {
    for entity in EVENT_ENTITIES {
        let events = OPERATIONS
            .iter()
            .map(|op| event(entity, *op))
            .chain(EVENT_CHANGES.iter().map(|c| changed(entity, c)));
        for e in events {
            let by_index: Vec<&Arc<Webhook>> = registry.matching(&e).collect();
            let by_scan = scan(registry, &e);
            let ids = |hooks: &[&Arc<Webhook>]| hooks.iter().map(|h| h.id).collect::<Vec<_>>();
            prop_assert_eq!(ids(&by_index), ids(&by_scan), "event {}", e.event);
            for (a, b) in by_index.iter().zip(&by_scan) {
                prop_assert!(Arc::ptr_eq(a, b), "hook {} is not the current one", a.id);
            }
        }
    }
    Ok(())
}

fn rows_now(registry: &Registry) -> Vec<WebhookRow> {
    registry.rows().map(|r| WebhookRow::clone(r)).collect()
}

proptest! {
    #[test]
    fn the_index_returns_exactly_the_hooks_a_scan_returns(
        initial in proptest::collection::vec(table_change(), 0..12),
        changes in proptest::collection::vec(table_change(), 1..40),
    ) {
        let mut registry = Registry::from_rows(initial.into_iter().filter_map(|c| match c.into_change() {
            WebhookChange::Upsert(row) => Some(row),
            _ => None,
        }));
        assert_index_agrees_with_scan(&registry)?;
        for change in changes {
            registry.apply(change.into_change());
            assert_index_agrees_with_scan(&registry)?;
        }
        let ids: Vec<i32> = registry.hooks().map(|h| h.id).collect();
        for id in ids {
            registry.apply(WebhookChange::Delete { webhook_id: Some(id.to_string()) });
        }
        prop_assert!(registry.index.is_empty(), "entries left behind: {:?}", registry.index);
    }

    #[test]
    fn a_snapshot_written_is_the_table_as_of_its_position(
        initial in proptest::collection::vec(table_change(), 0..8),
        transactions in proptest::collection::vec(
            (proptest::collection::vec(table_change(), 0..4), 0..3usize, any::<bool>()),
            1..20,
        ),
    ) {
        let mut registry = Registry::from_rows(initial.into_iter().filter_map(|c| match c.into_change() {
            WebhookChange::Upsert(row) => Some(row),
            _ => None,
        }));
        let mut pending = PendingSnapshots::new(&registry);
        // The table after each transaction, by its end position.
        let mut history = BTreeMap::from([(Lsn(0), rows_now(&registry))]);
        let mut written = rows_now(&registry);
        let mut written_at = Lsn(0);
        let mut position = Lsn(0);
        for (i, (changes, lag, write_succeeds)) in transactions.into_iter().enumerate() {
            let end = Lsn(10 * (i as u64 + 1));
            let touched = !changes.is_empty();
            for change in changes {
                registry.apply(change.into_change());
            }
            if touched {
                pending.record(end, registry.take_row_changes());
            }
            history.insert(end, rows_now(&registry));
            // The confirmable position trails the stream by a few commits.
            position = position.max(Lsn(end.0.saturating_sub(10 * lag as u64)));
            let table_at_position = history.range(..=position).next_back().unwrap().1.clone();
            match pending.due(position) {
                Some(lsn) => {
                    prop_assert!(lsn <= position && lsn >= written_at);
                    let rows: Vec<WebhookRow> = pending.rows().cloned().collect();
                    prop_assert_eq!(&rows, &history[&lsn]);
                    prop_assert_eq!(&rows, &table_at_position);
                    // What is written, the rows changed since the last
                    // written state, gives the same state applied to it.
                    let mut folded: BTreeMap<i32, WebhookRow> = written
                        .iter()
                        .map(|r| (r.0["webhook_id"].clone().unwrap().parse().unwrap(), r.clone()))
                        .collect();
                    for (id, row) in pending.changes() {
                        match row {
                            Some(row) => folded.insert(id, row.clone()),
                            None => folded.remove(&id),
                        };
                    }
                    let folded: Vec<WebhookRow> = folded.into_values().collect();
                    prop_assert_eq!(&folded, &rows);
                    if write_succeeds {
                        pending.written();
                        written = rows;
                        written_at = lsn;
                    }
                }
                None => prop_assert_eq!(&written, &table_at_position),
            }
        }
    }
}

#[test]
fn pending_snapshots_pass_their_bound_before_memory_grows() {
    // A hook with 1 MB of headers, renamed again and again while the
    // confirmed position is held back: the pending states reach the spill
    // bound after a few renames, not after hundreds of megabytes.
    let headers = format!("{{\"X-Big\": \"{}\"}}", "h".repeat(1024 * 1024));
    let row = |name: &str| {
        WebhookRow(
            [
                ("webhook_id", Some("1".to_owned())),
                ("name", Some(name.to_owned())),
                ("events", Some("*".to_owned())),
                ("target_url", Some("https://example.com/".to_owned())),
                ("type", Some("webhook".to_owned())),
                ("headers", Some(headers.clone())),
                ("state", Some("1".to_owned())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        )
    };
    let mut registry = Registry::from_rows([row("start")]);
    let mut pending = PendingSnapshots::new(&registry);
    let mut renames = 0;
    while !pending.over_bound() {
        renames += 1;
        assert!(renames < 50, "never over the bound");
        registry.apply(crate::events::WebhookChange::Upsert(row(&format!(
            "n{renames}"
        ))));
        pending.record(Lsn(renames), registry.take_row_changes());
    }
    assert!(
        renames as usize <= SPILL_PENDING_BYTES / (1024 * 1024) + 1,
        "{renames}"
    );
    // Spilling writes every state oldest first, and empties the queue.
    let mut written = Vec::new();
    while let Some(lsn) = pending.oldest_pending() {
        assert_eq!(pending.due(lsn), Some(lsn));
        written.push(lsn);
        pending.written();
    }
    assert_eq!(written, (1..=renames).map(Lsn).collect::<Vec<_>>());
    assert!(!pending.over_bound());
}

#[test]
fn rows_past_the_size_bounds_are_invalid_and_say_which_bound() {
    let with = |column: &str, value: String| {
        let mut r = good("9", "*");
        r.0.insert(column.to_owned(), Some(value));
        Webhook::from_row(&r).map(|_| ()).unwrap_err().0
    };
    let many: serde_json::Map<String, serde_json::Value> = (0..25_000)
        .map(|i| (format!("x-h{i}"), serde_json::Value::from("v")))
        .collect();
    let why = with("headers", serde_json::Value::Object(many).to_string());
    assert!(why.contains("25000 entries"), "{why}");
    let big = serde_json::json!({"x-big": "v".repeat(MAX_HEADER_BYTES)});
    assert!(with("headers", big.to_string()).contains("bytes"));
    let props = serde_json::json!({"blob": "p".repeat(MAX_PROPERTIES_BYTES)});
    assert!(with("properties", props.to_string()).contains("properties take"));
    let url = format!("https://example.com/{}", "a".repeat(MAX_TEXT_CHARS));
    assert!(with("target_url", url).contains("target_url has more than"));
    // At the bounds, a row is fine.
    let mut at: serde_json::Map<String, serde_json::Value> = (0..MAX_HEADERS)
        .map(|i| (format!("x-h{i}"), serde_json::Value::from("v")))
        .collect();
    at.remove("x-h0");
    let mut r = good("9", "*");
    r.0.insert(
        "headers".into(),
        Some(serde_json::Value::Object(at).to_string()),
    );
    assert!(Webhook::from_row(&r).is_ok());
}

#[test]
fn a_changed_webhook_id_removes_the_old_hook_and_keeps_its_unsent_values() {
    let mut first = good("1", "*");
    first
        .0
        .insert("properties".into(), Some(r#"{"big":"kept"}"#.into()));
    let mut registry = Registry::from_rows([first]);
    // The UPDATE sent the new id and URL; properties was an unchanged
    // TOASTed value, not sent.
    let update = row(&[
        ("webhook_id", Some("2")),
        ("target_url", Some("https://example.com/new")),
    ]);
    let applied = registry.apply(WebhookChange::Rekey {
        from: "1".into(),
        row: update,
    });
    assert_eq!(
        applied,
        RegistryUpdate::Moved {
            from: 1,
            to: Box::new(RegistryUpdate::Added(2))
        }
    );
    assert!(registry.get(1).is_none(), "no hook left under the old id");
    let moved = registry.get(2).expect("the hook under its new id");
    assert_eq!(moved.target_url.as_str(), "https://example.com/new");
    assert_eq!(
        moved.properties.as_ref().and_then(|p| p.get("big")),
        Some(&serde_json::json!("kept"))
    );
}

#[test]
fn a_secret_must_give_keys_of_sixteen_bytes() {
    assert!(secret_problem("whsec_").is_some(), "an empty key");
    assert!(secret_problem("whsec_AAAA").is_some(), "three bytes");
    assert!(secret_problem("short").is_some());
    assert!(secret_problem("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
    assert!(secret_problem("sixteen-chars-ok").is_none());
    let mut r = good("9", "*");
    r.0.insert("secret".into(), Some("whsec_".into()));
    let why = Webhook::from_row(&r).map(|_| ()).unwrap_err().0;
    assert!(why.contains("fewer than 16"), "{why}");
}
