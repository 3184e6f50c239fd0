//! What the body and signing benchmarks share: one `bench_item` change as
//! walhook sees it, and a hook to send it to.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use walhook::config::Config;
use walhook::events::catalog::TypeCatalog;
use walhook::events::{Change, ChangeEvent, EventBuilder, TxnInfo, WebhookRow};
use walhook::pgoutput::{self, Column, Lsn, Relation, ReplicaIdentity};
use walhook::registry::{Registry, Webhook};

const TABLE: u32 = 16_384;

/// The event of an Insert into `public.bench_item (id int PRIMARY KEY, n
/// int, label text)`, its label `label`.
pub fn event(label: &str) -> ChangeEvent {
    let config = Config::parse("").expect("the empty config is valid");
    let mut builder = EventBuilder::new(&config, TypeCatalog::builtin());
    let column = |name: &str, type_oid, is_key| Column {
        is_key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    builder.add_relation(
        Relation {
            oid: TABLE,
            namespace: "public".into(),
            name: "bench_item".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", 23, true),
                column("n", 23, false),
                column("label", 25, false),
            ],
        },
        None,
    );
    let values = ["4242", "4243", label];
    let mut m = BytesMut::new();
    m.put_u8(b'I');
    m.put_u32(TABLE);
    m.put_u8(b'N');
    m.put_u16(values.len() as u16);
    for v in values {
        m.put_u8(b't');
        m.put_u32(v.len() as u32);
        m.put_slice(v.as_bytes());
    }
    let message = pgoutput::decode(&Bytes::from(m)).expect("a valid Insert");
    let txn = TxnInfo {
        xid: 700,
        commit_lsn: Lsn(0x16B_3748),
        commit_time: 0,
    };
    match builder
        .change(&txn, &mut 0, message)
        .expect("an event")
        .remove(0)
    {
        Change::Event(event) => *event,
        Change::Webhook(_) | Change::Control(_) => unreachable!("bench_item is a host table"),
    }
}

/// A hook for every event with a secret, a header and properties, as a
/// tenant's integration registers it.
pub fn hook() -> Arc<Webhook> {
    let row = [
        ("webhook_id", "5000"),
        ("name", "tenant 5000 integration"),
        ("events", "*"),
        ("target_url", "https://tenant5000.example.com/hooks/walhook"),
        ("type", "webhook"),
        ("headers", "{\"X-Tenant\": \"5000\"}"),
        ("properties", "{\"tenant\": 5000}"),
        ("secret", "whsec_dGVuYW50IHNlY3JldCB7aWR9"),
        ("state", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), Some(v.to_owned())))
    .collect();
    Registry::from_rows([WebhookRow(row)])
        .hooks()
        .next()
        .cloned()
        .expect("one hook")
}
