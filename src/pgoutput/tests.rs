//! The decoder against hand-assembled messages and arbitrary bytes.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;

/// Hand-assembles a message, field by field, in wire order.
struct Wire(Vec<u8>);

impl Wire {
    fn new(tag: u8) -> Self {
        Wire(vec![tag])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn str(self, v: &str) -> Self {
        self.raw(v.as_bytes()).u8(0)
    }
    /// Int32 length, then the bytes.
    fn counted(self, v: &[u8]) -> Self {
        let len = i32::try_from(v.len()).expect("test value fits");
        self.i32(len).raw(v)
    }
    /// A 't' or 'b' tuple value: kind, Int32 length, bytes.
    fn value(self, kind: u8, v: &[u8]) -> Self {
        self.u8(kind).counted(v)
    }
    fn build(self) -> Bytes {
        Bytes::from(self.0)
    }
}

fn text(v: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(v.as_bytes()))
}

fn ok(buf: Bytes) -> Message {
    match decode(&buf) {
        Ok(m) => m,
        Err(e) => panic!("decode failed: {e}"),
    }
}

fn err(buf: Bytes) -> DecodeError {
    match decode(&buf) {
        Ok(m) => panic!("decoded {m:?}, expected an error"),
        Err(e) => e,
    }
}

#[test]
fn begin() {
    let buf = Wire::new(b'B')
        .u64(0x16_B374_D848)
        .i64(757_382_400_000_000)
        .u32(0xFFFF_FFF0)
        .build();
    let Message::Begin(b) = ok(buf) else {
        panic!("not a Begin")
    };
    assert_eq!(b.final_lsn, Lsn(0x16_B374_D848));
    assert_eq!(b.final_lsn.to_string(), "16/B374D848");
    assert_eq!(b.commit_time, 757_382_400_000_000);
    assert_eq!(b.xid, 0xFFFF_FFF0);
}

#[test]
fn commit() {
    let buf = Wire::new(b'C').u8(0).u64(100).u64(148).i64(-1).build();
    assert_eq!(
        ok(buf),
        Message::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(148),
            commit_time: -1,
        })
    );
}

#[test]
fn origin() {
    let buf = Wire::new(b'O').u64(0xABCDEF).str("upstream").build();
    assert_eq!(
        ok(buf),
        Message::Origin(Origin {
            commit_lsn: Lsn(0xABCDEF),
            name: "upstream".into(),
        })
    );
}

#[test]
fn relation() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let buf = Wire::new(b'R')
            .u32(16_395)
            .str("public")
            .str("account")
            .u8(byte)
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("émail")
            .u32(1043)
            .i32(68)
            .build();
        assert_eq!(
            ok(buf),
            Message::Relation(Relation {
                oid: 16_395,
                namespace: "public".into(),
                name: "account".into(),
                replica_identity: identity,
                columns: vec![
                    Column {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1,
                    },
                    Column {
                        is_key: false,
                        name: "émail".into(),
                        type_oid: 1043,
                        type_modifier: 68,
                    },
                ],
            })
        );
    }
}

#[test]
fn relation_without_columns_in_pg_catalog() {
    let buf = Wire::new(b'R')
        .u32(1)
        .str("")
        .str("t")
        .u8(b'n')
        .i16(0)
        .build();
    let Message::Relation(r) = ok(buf) else {
        panic!("not a Relation")
    };
    assert_eq!(r.namespace, "");
    assert!(r.columns.is_empty());
}

#[test]
fn type_message() {
    let buf = Wire::new(b'Y')
        .u32(16_389)
        .str("public")
        .str("mood")
        .build();
    assert_eq!(
        ok(buf),
        Message::Type(TypeMessage {
            oid: 16_389,
            namespace: "public".into(),
            name: "mood".into(),
        })
    );
}

#[test]
fn insert_with_every_value_kind() {
    let buf = Wire::new(b'I')
        .u32(7)
        .u8(b'N')
        .i16(5)
        .u8(b'n')
        .u8(b'u')
        .value(b't', b"42")
        .value(b'b', &[0xDE, 0xAD])
        .value(b't', b"")
        .build();
    let decoded = ok(buf.clone());
    assert_eq!(
        decoded,
        Message::Insert(Insert {
            relation_oid: 7,
            new: TupleData(vec![
                TupleValue::Null,
                TupleValue::UnchangedToast,
                text("42"),
                TupleValue::Binary(Bytes::from_static(&[0xDE, 0xAD])),
                text(""),
            ]),
        })
    );
    // Values are slices of the payload, not copies.
    let Message::Insert(insert) = decoded else {
        unreachable!()
    };
    let TupleValue::Text(v) = &insert.new.0[2] else {
        panic!("not text")
    };
    let offset = 1 + 4 + 1 + 2 + 1 + 1 + 1 + 4;
    assert_eq!(v.as_ptr(), buf[offset..].as_ptr());
}

#[test]
fn update_without_old_tuple() {
    let buf = Wire::new(b'U')
        .u32(7)
        .u8(b'N')
        .i16(1)
        .value(b't', b"a")
        .build();
    assert_eq!(
        ok(buf),
        Message::Update(Update {
            relation_oid: 7,
            old: None,
            new: TupleData(vec![text("a")]),
        })
    );
}

#[test]
fn update_with_key_and_full_old_tuples() {
    for (kind, wrap) in [
        (b'K', OldTuple::Key as fn(TupleData) -> OldTuple),
        (b'O', OldTuple::Full),
    ] {
        let buf = Wire::new(b'U')
            .u32(7)
            .u8(kind)
            .i16(2)
            .value(b't', b"1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .value(b't', b"2")
            .u8(b'u')
            .build();
        assert_eq!(
            ok(buf),
            Message::Update(Update {
                relation_oid: 7,
                old: Some(wrap(TupleData(vec![text("1"), TupleValue::Null]))),
                new: TupleData(vec![text("2"), TupleValue::UnchangedToast]),
            })
        );
    }
}

#[test]
fn delete_with_key_and_full_old_tuples() {
    let buf = Wire::new(b'D')
        .u32(9)
        .u8(b'K')
        .i16(1)
        .value(b't', b"1")
        .build();
    assert_eq!(
        ok(buf),
        Message::Delete(Delete {
            relation_oid: 9,
            old: OldTuple::Key(TupleData(vec![text("1")])),
        })
    );
    let buf = Wire::new(b'D').u32(9).u8(b'O').i16(1).u8(b'n').build();
    assert_eq!(
        ok(buf),
        Message::Delete(Delete {
            relation_oid: 9,
            old: OldTuple::Full(TupleData(vec![TupleValue::Null])),
        })
    );
}

#[test]
fn truncate_options() {
    for (options, cascade, restart_identity) in [
        (0, false, false),
        (1, true, false),
        (2, false, true),
        (3, true, true),
    ] {
        let buf = Wire::new(b'T').i32(2).u8(options).u32(10).u32(11).build();
        assert_eq!(
            ok(buf),
            Message::Truncate(Truncate {
                cascade,
                restart_identity,
                relation_oids: vec![10, 11],
            })
        );
    }
}

#[test]
fn logical_message() {
    let buf = Wire::new(b'M')
        .u8(1)
        .u64(0x1_0000_0000)
        .str("walhook-test")
        .i32(5)
        .raw(b"hello")
        .build();
    let decoded = ok(buf.clone());
    assert_eq!(
        decoded,
        Message::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x1_0000_0000),
            prefix: "walhook-test".into(),
            content: Bytes::from_static(b"hello"),
        })
    );
    let Message::Message(m) = decoded else {
        unreachable!()
    };
    assert_eq!(m.content.as_ptr(), buf[buf.len() - 5..].as_ptr());

    // Non-transactional, with content that is not UTF-8.
    let buf = Wire::new(b'M')
        .u8(0)
        .u64(1)
        .str("p")
        .i32(2)
        .raw(&[0, 0xFF])
        .build();
    let Message::Message(m) = ok(buf) else {
        panic!("not a Message")
    };
    assert!(!m.transactional);
    assert_eq!(&m.content[..], &[0, 0xFF]);
}

#[test]
fn names() {
    let buf = Wire::new(b'T').i32(0).u8(0).build();
    assert_eq!(ok(buf).name(), "Truncate");
}

#[test]
fn empty() {
    assert_eq!(err(Bytes::new()), DecodeError::Empty);
    assert_eq!(DecodeError::Empty.to_string(), "empty pgoutput message");
}

#[test]
fn unknown_message() {
    let e = err(Bytes::from_static(b"Zabc"));
    assert_eq!(e, DecodeError::UnknownMessage(b'Z'));
    assert_eq!(e.to_string(), "unknown pgoutput message type 'Z' (0x5A)");
    // Streaming and two-phase messages are protocol version 2 and later.
    assert_eq!(
        err(Bytes::from_static(b"S")),
        DecodeError::UnknownMessage(b'S')
    );
    assert_eq!(
        err(Bytes::from_static(&[0])).to_string(),
        "unknown pgoutput message type 0x00"
    );
}

#[test]
fn truncated() {
    let e = err(Wire::new(b'I').u32(7).u8(b'N').build());
    assert_eq!(
        e,
        DecodeError::Truncated {
            message: "Insert",
            field: "the tuple's column count",
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message truncated while reading the tuple's column count"
    );
    assert_eq!(
        err(Wire::new(b'B').u64(1).i64(2).u8(0).build()),
        DecodeError::Truncated {
            message: "Begin",
            field: "the xid",
        }
    );
    // A string without its terminating NUL.
    assert_eq!(
        err(Wire::new(b'O').u64(1).raw(b"name").build()),
        DecodeError::Truncated {
            message: "Origin",
            field: "the origin name",
        }
    );
}

#[test]
fn length_fields_larger_than_the_payload() {
    // These must fail cleanly, without trying to allocate what they claim.
    assert_eq!(
        err(Wire::new(b'I')
            .u32(7)
            .u8(b'N')
            .i16(i16::MAX)
            .u8(b'n')
            .build()),
        DecodeError::Truncated {
            message: "Insert",
            field: "a tuple value's kind",
        }
    );
    assert_eq!(
        err(Wire::new(b'I')
            .u32(7)
            .u8(b'N')
            .i16(1)
            .u8(b'b')
            .i32(i32::MAX)
            .raw(b"x")
            .build()),
        DecodeError::Truncated {
            message: "Insert",
            field: "a binary value",
        }
    );
    assert_eq!(
        err(Wire::new(b'T').i32(i32::MAX).u8(0).u32(1).build()),
        DecodeError::Truncated {
            message: "Truncate",
            field: "a relation OID",
        }
    );
    assert_eq!(
        err(Wire::new(b'R')
            .u32(1)
            .str("")
            .str("t")
            .u8(b'd')
            .i16(i16::MAX)
            .build()),
        DecodeError::Truncated {
            message: "Relation",
            field: "a column's flags",
        }
    );
    assert_eq!(
        err(Wire::new(b'M')
            .u8(1)
            .u64(1)
            .str("p")
            .i32(6)
            .raw(b"hello")
            .build()),
        DecodeError::Truncated {
            message: "Message",
            field: "the content",
        }
    );
}

#[test]
fn negative_lengths() {
    let e = err(Wire::new(b'D').u32(7).u8(b'K').i16(-1).build());
    assert_eq!(
        e,
        DecodeError::NegativeLength {
            message: "Delete",
            field: "the tuple's column count",
            value: -1,
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Delete message has a negative value (-1) for the tuple's column count"
    );
    assert_eq!(
        err(Wire::new(b'I')
            .u32(7)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(i32::MIN)
            .build()),
        DecodeError::NegativeLength {
            message: "Insert",
            field: "a text value's length",
            value: i32::MIN,
        }
    );
    assert_eq!(
        err(Wire::new(b'T').i32(-2).u8(0).build()),
        DecodeError::NegativeLength {
            message: "Truncate",
            field: "the relation count",
            value: -2,
        }
    );
}

#[test]
fn trailing_bytes() {
    let e = err(Wire::new(b'B').u64(1).i64(2).u32(3).raw(b"xy").build());
    assert_eq!(
        e,
        DecodeError::TrailingBytes {
            message: "Begin",
            count: 2,
        }
    );
    assert_eq!(e.to_string(), "pgoutput Begin message has 2 trailing bytes");
}

#[test]
fn invalid_utf8() {
    let e = err(Wire::new(b'R')
        .u32(1)
        .str("public")
        .raw(&[0xC3, 0x28, 0])
        .u8(b'd')
        .i16(0)
        .build());
    assert_eq!(
        e,
        DecodeError::InvalidUtf8 {
            message: "Relation",
            field: "the relation name",
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Relation message has invalid UTF-8 in the relation name"
    );
    assert_eq!(
        err(Wire::new(b'M').u8(0).u64(1).raw(&[0xFF, 0]).i32(0).build()),
        DecodeError::InvalidUtf8 {
            message: "Message",
            field: "the prefix",
        }
    );
}

#[test]
fn unknown_replica_identity() {
    let e = err(Wire::new(b'R')
        .u32(1)
        .str("s")
        .str("t")
        .u8(b'x')
        .i16(0)
        .build());
    assert_eq!(e, DecodeError::UnknownReplicaIdentity(b'x'));
    assert_eq!(
        e.to_string(),
        "pgoutput Relation message has unknown replica identity 'x' (0x78)"
    );
}

#[test]
fn unknown_tuple_kind() {
    let e = err(Wire::new(b'I').u32(7).u8(b'N').i16(1).u8(b'z').build());
    assert_eq!(
        e,
        DecodeError::UnknownTupleKind {
            message: "Insert",
            kind: b'z',
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message has unknown tuple value kind 'z' (0x7A) \
         (expected 'n', 'u', 't' or 'b')"
    );
}

#[test]
fn unknown_old_tuple_kind() {
    let e = err(Wire::new(b'D').u32(7).u8(b'N').i16(0).build());
    assert_eq!(
        e,
        DecodeError::UnknownOldTupleKind {
            message: "Delete",
            kind: b'N',
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Delete message has unknown old tuple kind 'N' (0x4E) (expected 'K' or 'O')"
    );
    assert_eq!(
        err(Wire::new(b'U').u32(7).u8(b'X').i16(0).build()),
        DecodeError::UnknownOldTupleKind {
            message: "Update",
            kind: b'X',
        }
    );
}

#[test]
fn expected_new_tuple() {
    let e = err(Wire::new(b'I').u32(7).u8(b'K').i16(0).build());
    assert_eq!(
        e,
        DecodeError::ExpectedNewTuple {
            message: "Insert",
            found: b'K',
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Insert message has 'K' (0x4B) where the new tuple marker 'N' belongs"
    );
    // After an old tuple, an Update must continue with 'N'.
    assert_eq!(
        err(Wire::new(b'U')
            .u32(7)
            .u8(b'K')
            .i16(0)
            .u8(b'K')
            .i16(0)
            .build()),
        DecodeError::ExpectedNewTuple {
            message: "Update",
            found: b'K',
        }
    );
}

/// Encodes a message the way PostgreSQL does, for round-trip properties.
fn encode(message: &Message) -> Bytes {
    fn tuple(mut w: Wire, t: &TupleData) -> Wire {
        w = w.i16(i16::try_from(t.0.len()).expect("test tuple fits"));
        for v in &t.0 {
            w = match v {
                TupleValue::Null => w.u8(b'n'),
                TupleValue::UnchangedToast => w.u8(b'u'),
                TupleValue::Text(b) => w.value(b't', b),
                TupleValue::Binary(b) => w.value(b'b', b),
            };
        }
        w
    }
    fn old(w: Wire, o: &OldTuple) -> Wire {
        match o {
            OldTuple::Key(t) => tuple(w.u8(b'K'), t),
            OldTuple::Full(t) => tuple(w.u8(b'O'), t),
        }
    }
    match message {
        Message::Begin(b) => Wire::new(b'B')
            .u64(b.final_lsn.0)
            .i64(b.commit_time)
            .u32(b.xid),
        Message::Commit(c) => Wire::new(b'C')
            .u8(c.flags)
            .u64(c.commit_lsn.0)
            .u64(c.end_lsn.0)
            .i64(c.commit_time),
        Message::Origin(o) => Wire::new(b'O').u64(o.commit_lsn.0).str(&o.name),
        Message::Relation(r) => {
            let identity = match r.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            };
            let mut w = Wire::new(b'R')
                .u32(r.oid)
                .str(&r.namespace)
                .str(&r.name)
                .u8(identity)
                .i16(i16::try_from(r.columns.len()).expect("test relation fits"));
            for c in &r.columns {
                w = w
                    .u8(u8::from(c.is_key))
                    .str(&c.name)
                    .u32(c.type_oid)
                    .i32(c.type_modifier);
            }
            w
        }
        Message::Type(t) => Wire::new(b'Y').u32(t.oid).str(&t.namespace).str(&t.name),
        Message::Insert(i) => tuple(Wire::new(b'I').u32(i.relation_oid).u8(b'N'), &i.new),
        Message::Update(u) => {
            let mut w = Wire::new(b'U').u32(u.relation_oid);
            if let Some(o) = &u.old {
                w = old(w, o);
            }
            tuple(w.u8(b'N'), &u.new)
        }
        Message::Delete(d) => old(Wire::new(b'D').u32(d.relation_oid), &d.old),
        Message::Truncate(t) => {
            let options = u8::from(t.cascade) | u8::from(t.restart_identity) << 1;
            let mut w = Wire::new(b'T')
                .i32(i32::try_from(t.relation_oids.len()).expect("test list fits"))
                .u8(options);
            for oid in &t.relation_oids {
                w = w.u32(*oid);
            }
            w
        }
        Message::Message(m) => Wire::new(b'M')
            .u8(u8::from(m.transactional))
            .u64(m.lsn.0)
            .str(&m.prefix)
            .counted(&m.content),
    }
    .build()
}

fn arb_string() -> impl Strategy<Value = String> {
    // pgoutput strings are NUL-terminated, so they cannot contain NUL.
    any::<String>().prop_map(|s| s.replace('\0', ""))
}

fn arb_lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn arb_tuple() -> impl Strategy<Value = TupleData> {
    let value = prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        vec(any::<u8>(), 0..24).prop_map(|v| TupleValue::Text(v.into())),
        vec(any::<u8>(), 0..24).prop_map(|v| TupleValue::Binary(v.into())),
    ];
    vec(value, 0..8).prop_map(TupleData)
}

fn arb_old() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        arb_tuple().prop_map(OldTuple::Key),
        arb_tuple().prop_map(OldTuple::Full),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    let column = (any::<bool>(), arb_string(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    prop_oneof![
        (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time,
            })
        ),
        (arb_lsn(), arb_string())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            arb_string(),
            arb_string(),
            identity,
            vec(column, 0..6)
        )
            .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), arb_string(), arb_string()).prop_map(|(oid, namespace, name)| {
            Message::Type(TypeMessage {
                oid,
                namespace,
                name,
            })
        }),
        (any::<u32>(), arb_tuple())
            .prop_map(|(relation_oid, new)| Message::Insert(Insert { relation_oid, new })),
        (any::<u32>(), proptest::option::of(arb_old()), arb_tuple()).prop_map(
            |(relation_oid, old, new)| Message::Update(Update {
                relation_oid,
                old,
                new,
            })
        ),
        (any::<u32>(), arb_old())
            .prop_map(|(relation_oid, old)| Message::Delete(Delete { relation_oid, old })),
        (any::<bool>(), any::<bool>(), vec(any::<u32>(), 0..8)).prop_map(
            |(cascade, restart_identity, relation_oids)| Message::Truncate(Truncate {
                cascade,
                restart_identity,
                relation_oids,
            })
        ),
        (
            any::<bool>(),
            arb_lsn(),
            arb_string(),
            vec(any::<u8>(), 0..32)
        )
            .prop_map(|(transactional, lsn, prefix, content)| Message::Message(
                LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content: content.into(),
                }
            )),
    ]
}

const TAGS: &[u8] = b"BCORYIUDTM";

/// One hand-built valid message of each kind, deep enough to reach
/// every reader.
fn samples() -> Vec<Bytes> {
    vec![
        Wire::new(b'B').u64(1).i64(2).u32(3).build(),
        Wire::new(b'C').u8(0).u64(1).u64(2).i64(3).build(),
        Wire::new(b'O').u64(1).str("o").build(),
        Wire::new(b'R')
            .u32(1)
            .str("public")
            .str("t")
            .u8(b'f')
            .i16(1)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .build(),
        Wire::new(b'Y').u32(1).str("public").str("mood").build(),
        Wire::new(b'I')
            .u32(1)
            .u8(b'N')
            .i16(4)
            .u8(b'n')
            .u8(b'u')
            .value(b't', b"x")
            .value(b'b', b"y")
            .build(),
        Wire::new(b'U')
            .u32(1)
            .u8(b'O')
            .i16(1)
            .value(b't', b"1")
            .u8(b'N')
            .i16(1)
            .value(b't', b"2")
            .build(),
        Wire::new(b'D')
            .u32(1)
            .u8(b'K')
            .i16(1)
            .value(b't', b"1")
            .build(),
        Wire::new(b'T').i32(2).u8(3).u32(1).u32(2).build(),
        Wire::new(b'M')
            .u8(1)
            .u64(1)
            .str("p")
            .i32(2)
            .raw(b"hi")
            .build(),
    ]
}

#[test]
fn every_truncation_of_a_sample_is_an_error() {
    for sample in samples() {
        assert!(decode(&sample).is_ok(), "sample {sample:?} must decode");
        for len in 0..sample.len() {
            assert!(
                decode(&sample.slice(..len)).is_err(),
                "{sample:?} truncated to {len} bytes decoded"
            );
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_tag_never_panic(
        tag in proptest::sample::select(TAGS),
        rest in vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn corrupted_samples_never_panic(
        sample in any::<prop::sample::Index>(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let samples = samples();
        let mut bytes = sample.get(&samples).to_vec();
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let _ = decode(&Bytes::from(bytes));
    }

    #[test]
    fn round_trip(message in arb_message()) {
        prop_assert_eq!(decode(&encode(&message)), Ok(message));
    }

    #[test]
    fn truncated_messages_are_errors(
        message in arb_message(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&message);
        let len = cut.index(bytes.len());
        prop_assert!(decode(&bytes.slice(..len)).is_err());
    }

    #[test]
    fn appended_bytes_are_errors(
        message in arb_message(),
        extra in vec(any::<u8>(), 1..8),
    ) {
        let mut bytes = encode(&message).to_vec();
        bytes.extend_from_slice(&extra);
        prop_assert!(decode(&Bytes::from(bytes)).is_err());
    }
}
