//! Row changes into events, without a server.

use super::*;
use bytes::Bytes;
use serde_json::json;

fn column(name: &str, type_oid: u32, is_key: bool) -> pgoutput::Column {
    pgoutput::Column {
        is_key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    }
}

fn builder() -> EventBuilder {
    let config = Config::parse("[tables.\"crm.contacts\"]\nentity = \"contact\"\n").unwrap();
    let mut b = EventBuilder::new(&config, TypeCatalog::builtin());
    b.add_relation(
        pgoutput::Relation {
            oid: 100,
            namespace: "crm".into(),
            name: "contacts".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", 23, true),
                column("name", 25, false),
                column("updated_associate_id", 23, false),
            ],
        },
        None,
    );
    b
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

const TXN: TxnInfo = TxnInfo {
    xid: 700,
    commit_lsn: Lsn(0x16B3748),
    commit_time: 0,
};

fn event(change: Change) -> ChangeEvent {
    match change {
        Change::Event(e) => *e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn insert_gives_created_with_all_columns() {
    let mut b = builder();
    let mut index = 0;
    let mut out = b
        .change(
            &TXN,
            &mut index,
            pgoutput::Message::Insert(pgoutput::Insert {
                relation_oid: 100,
                new: TupleData(vec![text("42"), text("Ann"), text("7")]),
            }),
        )
        .unwrap();
    let e = event(out.remove(0));
    assert_eq!(e.event, "contact.created");
    assert_eq!(e.primary_key, json!(42));
    assert_eq!(e.changes, vec!["id", "name", "updated_associate_id"]);
    assert_eq!(e.field_values["name"], json!("Ann"));
    assert_eq!(e.changed_by_associate_id, 7);
    assert_eq!(index, 1);
    assert_eq!(e.timestamp(), "2000-01-01T00:00:00.000000Z");
}

#[test]
fn update_with_unchanged_toast_names_missing_column() {
    let mut b = builder();
    let mut index = 0;
    let mut out = b
        .change(
            &TXN,
            &mut index,
            pgoutput::Message::Update(pgoutput::Update {
                relation_oid: 100,
                old: None,
                new: TupleData(vec![
                    text("42"),
                    TupleValue::UnchangedToast,
                    TupleValue::Null,
                ]),
            }),
        )
        .unwrap();
    let e = event(out.remove(0));
    assert_eq!(e.event, "contact.changed");
    assert_eq!(e.missing_columns, vec!["name"]);
    assert!(!e.changes_exact);
    assert_eq!(e.changes, vec!["id", "updated_associate_id"]);
    assert!(!e.field_values.contains_key("name"));
}

#[test]
fn delete_reports_key_values() {
    let mut b = builder();
    let mut index = 3;
    let mut out = b
        .change(
            &TXN,
            &mut index,
            pgoutput::Message::Delete(pgoutput::Delete {
                relation_oid: 100,
                old: OldTuple::Key(TupleData(vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::Null,
                ])),
            }),
        )
        .unwrap();
    let e = event(out.remove(0));
    assert_eq!(e.event, "contact.deleted");
    assert_eq!(
        e.values,
        Some(json!({"id": 42}).as_object().unwrap().clone())
    );
    assert_eq!(e.index, 3);
    assert!(e.changes.is_empty());
}

#[test]
fn event_ids_are_stable_and_differ_between_hooks() {
    let mut b = builder();
    let mut index = 0;
    let e = event(
        b.change(
            &TXN,
            &mut index,
            pgoutput::Message::Insert(pgoutput::Insert {
                relation_oid: 100,
                new: TupleData(vec![text("1"), text("x"), TupleValue::Null]),
            }),
        )
        .unwrap()
        .remove(0),
    );
    assert_eq!(e.event_id("7", 1), e.event_id("7", 1));
    assert_ne!(e.event_id("7", 1), e.event_id("7", 2));
    assert_ne!(e.event_id("7", 1), e.event_id("8", 1));
}

#[test]
fn unknown_relation_is_an_error() {
    let mut b = builder();
    let err = b
        .change(
            &TXN,
            &mut 0,
            pgoutput::Message::Insert(pgoutput::Insert {
                relation_oid: 999,
                new: TupleData(vec![]),
            }),
        )
        .unwrap_err();
    assert!(err.to_string().contains("999"));
}

mod fuzz {
    //! The event builder against arbitrary tuples: wrong column counts,
    //! NULL keys, unchanged TOAST where no old row exists, bytes that are
    //! not UTF-8. Every message becomes events or an error, never a panic.

    use proptest::prelude::*;

    use super::*;

    fn tuple_value() -> impl Strategy<Value = TupleValue> {
        prop_oneof![
            Just(TupleValue::Null),
            Just(TupleValue::UnchangedToast),
            ".{0,30}".prop_map(|s| TupleValue::Text(Bytes::from(s))),
            prop::collection::vec(any::<u8>(), 0..30)
                .prop_map(|b| TupleValue::Text(Bytes::from(b))),
            prop::collection::vec(any::<u8>(), 0..30)
                .prop_map(|b| TupleValue::Binary(Bytes::from(b))),
        ]
    }

    fn tuple() -> impl Strategy<Value = TupleData> {
        prop::collection::vec(tuple_value(), 0..6).prop_map(TupleData)
    }

    fn message() -> impl Strategy<Value = pgoutput::Message> {
        let oid = prop_oneof![Just(100u32), any::<u32>()];
        prop_oneof![
            (oid.clone(), tuple()).prop_map(|(relation_oid, new)| {
                pgoutput::Message::Insert(pgoutput::Insert { relation_oid, new })
            }),
            (
                oid.clone(),
                proptest::option::of(tuple()),
                any::<bool>(),
                tuple()
            )
                .prop_map(|(relation_oid, old, key_only, new)| {
                    let old = old.map(|t| {
                        if key_only {
                            pgoutput::OldTuple::Key(t)
                        } else {
                            pgoutput::OldTuple::Full(t)
                        }
                    });
                    pgoutput::Message::Update(pgoutput::Update {
                        relation_oid,
                        old,
                        new,
                    })
                }),
            (oid, any::<bool>(), tuple()).prop_map(|(relation_oid, key_only, t)| {
                let old = if key_only {
                    pgoutput::OldTuple::Key(t)
                } else {
                    pgoutput::OldTuple::Full(t)
                };
                pgoutput::Message::Delete(pgoutput::Delete { relation_oid, old })
            }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_tuples_become_events_or_errors(messages in prop::collection::vec(message(), 1..8)) {
            let mut b = builder();
            let mut index = 0;
            for m in messages {
                if let Ok(changes) = b.change(&TXN, &mut index, m) {
                    for change in changes {
                        if let Change::Event(e) = change {
                            // Whatever came in, the event serialises.
                            prop_assert!(serde_json::to_vec(&e.field_values).is_ok());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn changed_by_is_the_first_configured_column_that_holds_an_id() {
    let config = Config::default();
    let relation = |oid| pgoutput::Relation {
        oid,
        namespace: "crm".into(),
        name: "person".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            column("id", 23, true),
            column("updated_associate_id", 23, false),
            column("registered_associate_id", 23, false),
        ],
    };
    let mut b = EventBuilder::new(&config, TypeCatalog::builtin());
    b.add_relation(relation(200), None);
    let changed_by = |b: &mut EventBuilder, updated: TupleValue, registered: TupleValue| {
        let mut index = 0;
        let mut out = b
            .change(
                &TXN,
                &mut index,
                pgoutput::Message::Insert(pgoutput::Insert {
                    relation_oid: 200,
                    new: TupleData(vec![text("1"), updated, registered]),
                }),
            )
            .unwrap();
        event(out.remove(0)).changed_by_associate_id
    };
    assert_eq!(changed_by(&mut b, text("7"), text("42")), 7);
    assert_eq!(changed_by(&mut b, TupleValue::Null, text("42")), 42);
    assert_eq!(changed_by(&mut b, TupleValue::Null, TupleValue::Null), 0);
    assert_eq!(changed_by(&mut b, text("7"), TupleValue::Null), 7);
}
