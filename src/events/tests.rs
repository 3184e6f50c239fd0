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

/// EventIds are a contract with every receiver that de-duplicates: the
/// same change to the same hook must keep its id across versions of
/// walhook, or an upgrade re-sends what receivers already have under new
/// ids. These vectors were computed outside walhook (Python's
/// `uuid.uuid5`) from the documented inputs: a UUIDv5 in walhook's
/// namespace over `{system identifier}/{xid}/{commit LSN as PostgreSQL
/// writes it}/{change index}/{webhook_id}`. A change of the namespace, the
/// order or spelling of the inputs (an LSN written `0/016B3748`), or what
/// the index counts fails here.
#[test]
fn event_ids_match_fixed_vectors() {
    const SYSTEM: &str = "7312345678901234567";
    let mut b = builder();
    let mut index = 3;
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
    // The inputs as they are documented: xid 700, commit 0/16B3748, the
    // change's index as the builder counted it.
    assert_eq!(
        (e.txn.xid, e.txn.commit_lsn.to_string(), e.index),
        (700, "0/16B3748".to_owned(), 3)
    );
    assert_eq!(
        e.event_id(SYSTEM, 1).to_string(),
        "7b451919-5905-5771-a631-8be73744e497"
    );

    let vectors: [(u32, u64, u32, i32, &str); 4] = [
        (700, 0x16B3748, 0, 1, "a2e77902-7a67-5ba6-8486-fb639f87e1b5"),
        (700, 0x16B3748, 0, 2, "fb31549a-aeb1-5fe0-a9c1-1118a1792999"),
        (700, 0x16B3748, 3, 1, "7b451919-5905-5771-a631-8be73744e497"),
        (
            4_000_000_000,
            0x16_B374_D848,
            12,
            65535,
            "89d92842-3fee-59f5-860e-b39dfb559f3c",
        ),
    ];
    for (xid, lsn, index, webhook_id, expected) in vectors {
        let mut e = e.clone();
        e.txn = TxnInfo {
            xid,
            commit_lsn: Lsn(lsn),
            commit_time: 0,
        };
        e.index = index;
        assert_eq!(
            e.event_id(SYSTEM, webhook_id).to_string(),
            expected,
            "xid {xid}, commit {}, change {index}, webhook {webhook_id}",
            Lsn(lsn)
        );
    }
}

/// The row key that orders a row's events also names the row in backfill
/// EventIds (see backfill's fixed vectors): `schema.table`, a 0x1F, then
/// the key's values as JSON, comma-separated.
#[test]
fn ordering_keys_are_spelled_as_backfill_event_ids_expect() {
    let mut b = builder();
    let e = event(
        b.change(
            &TXN,
            &mut 0,
            pgoutput::Message::Insert(pgoutput::Insert {
                relation_oid: 100,
                new: TupleData(vec![text("1"), text("x"), TupleValue::Null]),
            }),
        )
        .unwrap()
        .remove(0),
    );
    assert_eq!(e.ordering_key, "crm.contacts\u{1f}1");
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
