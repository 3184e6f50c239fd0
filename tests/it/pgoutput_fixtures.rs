//! Decodes pgoutput messages captured from a real PostgreSQL 15 (see
//! tests/fixtures/pgoutput/README.md) and checks every decoded value against
//! the workload in tests/fixtures/pgoutput/workload.sql.

use std::collections::HashSet;

use bytes::Bytes;
use walhook::pgoutput::{
    decode, Begin, Column, Commit, LogicalMessage, Lsn, Message, OldTuple, ReplicaIdentity,
    TupleData, TupleValue,
};

/// One fixture line: the kind label and xid the server reported, and the
/// message bytes.
struct Captured {
    kind: String,
    xid: u32,
    bytes: Bytes,
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn load(name: &str) -> Vec<Captured> {
    let path = format!(
        "{}/tests/fixtures/pgoutput/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [kind, xid, data] = fields[..] else {
                panic!("{path}: bad line {line:?}");
            };
            Captured {
                kind: kind.to_owned(),
                xid: xid.parse().expect("xid"),
                bytes: Bytes::from(hex(data)),
            }
        })
        .collect()
}

/// Decodes every message, checking it has the kind the server labelled it
/// with, and that every shorter prefix of it is rejected.
fn decode_all(name: &str) -> Vec<(u32, Message)> {
    let captured = load(name);
    assert!(!captured.is_empty(), "{name} has no messages");
    captured
        .iter()
        .map(|c| {
            let message = decode(&c.bytes)
                .unwrap_or_else(|e| panic!("{name}: {} {:?}: {e}", c.kind, c.bytes));
            assert_eq!(message.name().to_ascii_lowercase(), c.kind);
            for len in 0..c.bytes.len() {
                assert!(
                    decode(&c.bytes.slice(..len)).is_err(),
                    "{name}: {} truncated to {len} bytes decoded",
                    c.kind
                );
            }
            (c.xid, message)
        })
        .collect()
}

#[derive(Debug)]
enum Item {
    Transaction {
        begin: Begin,
        body: Vec<Message>,
        commit: Commit,
    },
    /// A message outside any transaction (a non-transactional logical message).
    Alone(Message),
}

/// Groups Begin ... Commit, checking the server's xid for each message.
fn transactions(messages: Vec<(u32, Message)>) -> Vec<Item> {
    let mut items = Vec::new();
    let mut open: Option<(Begin, Vec<Message>)> = None;
    for (xid, message) in messages {
        match (message, open.take()) {
            (Message::Begin(begin), None) => {
                assert_eq!(begin.xid, xid, "Begin xid matches the server's");
                open = Some((begin, Vec::new()));
            }
            (Message::Commit(commit), Some((begin, body))) => {
                assert_eq!(xid, begin.xid);
                items.push(Item::Transaction {
                    begin,
                    body,
                    commit,
                });
            }
            (message, Some((begin, mut body))) => {
                assert_eq!(xid, begin.xid, "{message:?} belongs to its transaction");
                body.push(message);
                open = Some((begin, body));
            }
            (message, None) => {
                assert_eq!(xid, 0, "{message:?} has no transaction");
                items.push(Item::Alone(message));
            }
        }
    }
    assert!(open.is_none(), "unterminated transaction");
    items
}

fn t(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn b(v: &[u8]) -> TupleValue {
    TupleValue::Binary(Bytes::copy_from_slice(v))
}

fn col(is_key: bool, name: &str, type_oid: u32, type_modifier: i32) -> Column {
    Column {
        is_key,
        name: name.to_owned(),
        type_oid,
        type_modifier,
    }
}

macro_rules! expect {
    ($message:expr, $variant:path) => {
        match $message {
            $variant(inner) => inner,
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}

/// Checks transaction framing and ordering, returns the bodies.
fn bodies(items: &[Item]) -> Vec<&[Message]> {
    let mut previous_end = Lsn(0);
    let mut previous_xid = 0;
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Transaction {
                begin,
                body,
                commit,
            } => {
                assert_eq!(commit.flags, 0);
                assert_eq!(commit.commit_lsn, begin.final_lsn);
                assert!(commit.end_lsn > commit.commit_lsn, "{commit:?}");
                assert_eq!(commit.commit_time, begin.commit_time);
                assert!(
                    begin.final_lsn > previous_end,
                    "{begin:?} after {previous_end}"
                );
                assert!(begin.xid > previous_xid);
                previous_end = commit.end_lsn;
                previous_xid = begin.xid;
                out.push(&body[..]);
            }
            Item::Alone(Message::Message(m)) => {
                assert!(m.lsn > previous_end, "{m:?} after {previous_end}");
            }
            Item::Alone(other) => panic!("unexpected lone message {other:?}"),
        }
    }
    out
}

// From workload.sql, as the server describes them.
const INT4: u32 = 23;
const INT8: u32 = 20;
const BOOL: u32 = 16;
const TEXT: u32 = 25;
const BYTEA: u32 = 17;
const VARCHAR: u32 = 1043;
const NUMERIC: u32 = 1700;
const TIMESTAMPTZ: u32 = 1184;
/// varchar(64): 64 plus the 4-byte header.
const VARCHAR_64: i32 = 68;
/// numeric(10, 2): (10 << 16 | 2) plus the 4-byte header.
const NUMERIC_10_2: i32 = (10 << 16 | 2) + 4;
/// 2024-01-01 00:00:00+00 in microseconds since 2000-01-01.
const ORIGIN_COMMIT_TIME: i64 = 757_382_400_000_000;

#[test]
fn text_workload() {
    let items = transactions(decode_all("messages.txt"));
    assert_eq!(items.len(), 10);
    let txs = bodies(&items);
    assert_eq!(txs.len(), 9);

    // Transaction 1: the enum's Type, the account Relation, an INSERT.
    let tx = txs[0];
    assert_eq!(tx.len(), 3);
    let mood = expect!(&tx[0], Message::Type);
    assert_eq!(
        (mood.namespace.as_str(), mood.name.as_str()),
        ("public", "mood")
    );
    assert!(mood.oid >= 16_384, "user type OIDs start at 16384");
    let account = expect!(&tx[1], Message::Relation);
    assert_eq!(account.namespace, "public");
    assert_eq!(account.name, "account");
    assert_eq!(account.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        account.columns,
        [
            col(true, "id", INT4, -1),
            col(false, "email", VARCHAR, VARCHAR_64),
            col(false, "nickname", TEXT, -1),
            col(false, "mood", mood.oid, -1),
        ]
    );
    let insert = expect!(&tx[2], Message::Insert);
    assert_eq!(insert.relation_oid, account.oid);
    assert_eq!(
        insert.new,
        TupleData(vec![
            t("1"),
            t("ann@example.com"),
            TupleValue::Null,
            t("happy")
        ])
    );

    // Transaction 2: an UPDATE without old tuple, then a key change ('K').
    let tx = txs[1];
    assert_eq!(tx.len(), 2, "the Relation is not sent again");
    let update = expect!(&tx[0], Message::Update);
    assert_eq!(update.relation_oid, account.oid);
    assert_eq!(update.old, None);
    assert_eq!(
        update.new,
        TupleData(vec![t("1"), t("ann@example.com"), t("annie"), t("happy")])
    );
    let update = expect!(&tx[1], Message::Update);
    assert_eq!(update.relation_oid, account.oid);
    let null = || TupleValue::Null;
    assert_eq!(
        update.old,
        Some(OldTuple::Key(TupleData(vec![
            t("1"),
            null(),
            null(),
            null()
        ])))
    );
    assert_eq!(
        update.new,
        TupleData(vec![t("2"), t("ann@example.com"), t("annie"), t("happy")])
    );

    // Transaction 3: DELETE by key.
    let tx = txs[2];
    assert_eq!(tx.len(), 1);
    let delete = expect!(&tx[0], Message::Delete);
    assert_eq!(delete.relation_oid, account.oid);
    assert_eq!(
        delete.old,
        OldTuple::Key(TupleData(vec![t("2"), null(), null(), null()]))
    );

    // Transaction 4: REPLICA IDENTITY FULL gives whole old rows ('O').
    let tx = txs[3];
    assert_eq!(tx.len(), 4);
    let audit = expect!(&tx[0], Message::Relation);
    assert_eq!(audit.name, "audit_log");
    assert_eq!(audit.replica_identity, ReplicaIdentity::Full);
    assert_eq!(
        audit.columns,
        [
            col(true, "id", INT4, -1),
            col(true, "note", TEXT, -1),
            col(true, "amount", NUMERIC, NUMERIC_10_2),
        ],
        "with REPLICA IDENTITY FULL every column is part of the key"
    );
    let opened = TupleData(vec![t("1"), t("opened"), t("10.50")]);
    let changed = TupleData(vec![t("1"), t("opened"), t("12.25")]);
    let insert = expect!(&tx[1], Message::Insert);
    assert_eq!((insert.relation_oid, &insert.new), (audit.oid, &opened));
    let update = expect!(&tx[2], Message::Update);
    assert_eq!(update.relation_oid, audit.oid);
    assert_eq!(update.old, Some(OldTuple::Full(opened)));
    assert_eq!(update.new, changed);
    let delete = expect!(&tx[3], Message::Delete);
    assert_eq!(delete.relation_oid, audit.oid);
    assert_eq!(delete.old, OldTuple::Full(changed));

    // Transaction 5: the ~100 kB body is unchanged TOAST ('u').
    let tx = txs[4];
    assert_eq!(tx.len(), 2);
    let document = expect!(&tx[0], Message::Relation);
    assert_eq!(document.name, "document");
    assert_eq!(
        document.columns,
        [
            col(true, "id", INT4, -1),
            col(false, "title", TEXT, -1),
            col(false, "body", TEXT, -1),
        ]
    );
    let update = expect!(&tx[1], Message::Update);
    assert_eq!(update.relation_oid, document.oid);
    assert_eq!(update.old, None);
    assert_eq!(
        update.new,
        TupleData(vec![t("1"), t("final"), TupleValue::UnchangedToast])
    );

    // Transaction 6: TRUNCATE parent, child RESTART IDENTITY CASCADE.
    let tx = txs[5];
    assert_eq!(tx.len(), 3);
    let parent = expect!(&tx[0], Message::Relation);
    let child = expect!(&tx[1], Message::Relation);
    assert_eq!(
        (parent.name.as_str(), child.name.as_str()),
        ("parent", "child")
    );
    assert_eq!(
        parent.columns,
        [col(true, "id", INT8, -1), col(false, "name", TEXT, -1)]
    );
    assert_eq!(
        child.columns,
        [col(true, "id", INT8, -1), col(false, "parent_id", INT8, -1)]
    );
    let truncate = expect!(&tx[2], Message::Truncate);
    assert!(truncate.cascade);
    assert!(truncate.restart_identity);
    assert_eq!(truncate.relation_oids.len(), 2);
    assert_eq!(
        truncate
            .relation_oids
            .iter()
            .copied()
            .collect::<HashSet<_>>(),
        HashSet::from([parent.oid, child.oid])
    );

    // Transaction 7: a transactional logical message.
    let tx = txs[6];
    assert_eq!(tx.len(), 1);
    let message = expect!(&tx[0], Message::Message);
    assert!(message.transactional);
    assert_eq!(message.prefix, "walhook-test");
    assert_eq!(&message.content[..], b"hello");

    // Between transactions 7 and 8: a non-transactional message.
    let Item::Alone(Message::Message(alone)) = &items[7] else {
        panic!("expected a lone message, got {:?}", items[7]);
    };
    assert_eq!(
        (
            alone.transactional,
            alone.prefix.as_str(),
            &alone.content[..]
        ),
        (false, "walhook-test", &[0x00, 0xFF][..])
    );

    // Transaction 8: replayed from origin "fixture_origin".
    let Item::Transaction { begin, .. } = &items[8] else {
        panic!("expected a transaction, got {:?}", items[8]);
    };
    assert_eq!(begin.commit_time, ORIGIN_COMMIT_TIME);
    let tx = txs[7];
    assert_eq!(tx.len(), 2);
    let origin = expect!(&tx[0], Message::Origin);
    assert_eq!(origin.name, "fixture_origin");
    assert_eq!(origin.commit_lsn, Lsn(0xABCDEF));
    assert_eq!(origin.commit_lsn.to_string(), "0/ABCDEF");
    let insert = expect!(&tx[1], Message::Insert);
    assert_eq!(insert.relation_oid, account.oid);
    assert_eq!(
        insert.new,
        TupleData(vec![t("3"), t("bob@example.com"), t("bob"), t("ok")])
    );

    // Transaction 9: the binary workload's row, in text form.
    let tx = txs[8];
    assert_eq!(tx.len(), 2);
    let sample = expect!(&tx[0], Message::Relation);
    assert_eq!(sample.columns, binary_sample_columns());
    let insert = expect!(&tx[1], Message::Insert);
    assert_eq!(insert.relation_oid, sample.oid);
    assert_eq!(
        insert.new,
        TupleData(vec![
            t("1"),
            t("t"),
            t("1234567890123"),
            t("héllo"),
            t("\\xdeadbeef"),
            t("2024-01-01 00:00:00+00"),
            TupleValue::Null,
        ])
    );
}

fn binary_sample_columns() -> Vec<Column> {
    vec![
        col(true, "id", INT4, -1),
        col(false, "flag", BOOL, -1),
        col(false, "big", INT8, -1),
        col(false, "note", TEXT, -1),
        col(false, "raw", BYTEA, -1),
        col(false, "at", TIMESTAMPTZ, -1),
        col(false, "missing", INT4, -1),
    ]
}

#[test]
fn binary_workload() {
    let items = transactions(decode_all("binary.txt"));
    assert_eq!(items.len(), 1);
    let txs = bodies(&items);
    let tx = txs[0];
    assert_eq!(tx.len(), 2);
    let sample = expect!(&tx[0], Message::Relation);
    assert_eq!(sample.name, "binary_sample");
    assert_eq!(sample.replica_identity, ReplicaIdentity::Default);
    assert_eq!(sample.columns, binary_sample_columns());
    let insert = expect!(&tx[1], Message::Insert);
    assert_eq!(insert.relation_oid, sample.oid);
    assert_eq!(
        insert.new,
        TupleData(vec![
            b(&1i32.to_be_bytes()),
            b(&[1]),
            b(&1_234_567_890_123i64.to_be_bytes()),
            b("héllo".as_bytes()),
            b(&[0xDE, 0xAD, 0xBE, 0xEF]),
            b(&ORIGIN_COMMIT_TIME.to_be_bytes()),
            TupleValue::Null,
        ])
    );

    // The same transaction as the last one of messages.txt, decoded from a
    // second slot: same xid and LSNs.
    let text = transactions(decode_all("messages.txt"));
    let (
        Item::Transaction {
            begin: b1,
            commit: c1,
            ..
        },
        Some(Item::Transaction {
            begin: b2,
            commit: c2,
            ..
        }),
    ) = (&items[0], text.last())
    else {
        panic!("expected transactions");
    };
    assert_eq!((b1, c1), (b2, c2));
}

#[test]
fn values_are_slices_of_the_payload() {
    let captured = load("messages.txt");
    let insert = captured
        .iter()
        .find(|c| c.kind == "insert")
        .expect("an insert");
    let Message::Insert(decoded) = decode(&insert.bytes).expect("decodes") else {
        panic!("not an insert");
    };
    let TupleValue::Text(email) = &decoded.new.0[1] else {
        panic!("not text");
    };
    let payload = insert.bytes.as_ptr_range();
    assert!(payload.contains(&email.as_ptr()));
    assert_eq!(&email[..], b"ann@example.com");

    let message = captured
        .iter()
        .find(|c| c.kind == "message")
        .expect("a message");
    let Message::Message(LogicalMessage { content, .. }) = decode(&message.bytes).expect("decodes")
    else {
        panic!("not a message");
    };
    assert!(message.bytes.as_ptr_range().contains(&content.as_ptr()));
}
