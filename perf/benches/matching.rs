//! What matching and webhook-row changes cost at the table sizes of a
//! multi-tenant installation, measured in-process, without a server:
//!
//!     cargo bench -p walhook-perf --bench matching
//!
//! Under criterion:
//! - one `Registry::matching` call with 0 hooks, 10,000 hooks of which
//!   none matches (`nomatchN.created, otherN.*`), the same 10,000 plus one
//!   that matches, and that one alone; beside it, for the two large
//!   tables, a scan asking every hook (how matching worked before the
//!   index);
//! - the reading side's per-change work (pgoutput decoding, building the
//!   event, matching, and for each matching hook its EventId, body and
//!   job) for the same four tables, as changes per second; the issue's
//!   goals are the ratios "10,000 none matching / 0 hooks" and "10,000 one
//!   matching / 1 hook" of these rates, at least 0.9 each;
//! - one webhook-row change in a table of 10,000 (applied to the registry
//!   and recorded for the next registry snapshot), next to the full copy
//!   of the rows that each such transaction used to cost, and writing one
//!   snapshot out;
//! - fan-out: with 1,000 hooks all matching the table, the changes per
//!   second whose events are built for every hook.
//!
//! Printed once before the timings, as they are not times: the memory a
//! registry of 10,000 hooks holds (and its index's share), the allocations
//! of each kind of webhook-row change, and the request bytes one change
//! creates under fan-out.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use walhook::checkpoint::Checkpoint;
use walhook::config::Config;
use walhook::delivery::EventIntake;
use walhook::events::catalog::TypeCatalog;
use walhook::events::{Change, ChangeEvent, EventBuilder, TxnInfo, WebhookChange, WebhookRow};
use walhook::pgoutput::{self, Column, Lsn, Relation, ReplicaIdentity};
use walhook::registry::{Admission, PendingSnapshots, Registry, RowRules, Webhook};

/// Counts allocations, so a figure can say what an operation allocates.
struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations of a stretch of code: count, bytes allocated, and bytes
/// still held at its end.
#[derive(Debug, Clone, Copy)]
struct Allocated {
    count: u64,
    bytes: u64,
    held: i64,
}

fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, Allocated) {
    let count = ALLOCATIONS.load(Ordering::Relaxed);
    let bytes = ALLOCATED_BYTES.load(Ordering::Relaxed);
    let freed = FREED_BYTES.load(Ordering::Relaxed);
    let result = f();
    let allocated = ALLOCATED_BYTES.load(Ordering::Relaxed) - bytes;
    let freed = FREED_BYTES.load(Ordering::Relaxed) - freed;
    (
        result,
        Allocated {
            count: ALLOCATIONS.load(Ordering::Relaxed) - count,
            bytes: allocated,
            held: allocated as i64 - freed as i64,
        },
    )
}

const TABLE: u32 = 16_384;
const TXN: TxnInfo = TxnInfo {
    xid: 700,
    commit_lsn: Lsn(0x16B_3748),
    commit_time: 0,
};

fn hook_row(id: i32, events: &str) -> WebhookRow {
    let text = |s: String| Some(s);
    WebhookRow(
        [
            ("webhook_id", text(id.to_string())),
            ("name", text(format!("tenant {id} integration"))),
            ("events", text(events.to_owned())),
            (
                "target_url",
                text(format!("https://tenant{id}.example.com/hooks/walhook")),
            ),
            ("type", text("webhook".into())),
            ("headers", text(format!("{{\"X-Tenant\": \"{id}\"}}"))),
            ("properties", text(format!("{{\"tenant\": {id}}}"))),
            (
                "secret",
                text(format!("whsec_dGVuYW50IHNlY3JldCB7aWR9{id}")),
            ),
            ("state", text("1".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    )
}

fn non_matching(count: i32) -> impl Iterator<Item = WebhookRow> {
    (1..=count).map(|n| hook_row(n, &format!("nomatch{n}.created, other{n}.*")))
}

/// The four tables the issue compares, by name.
fn tables() -> Vec<(&'static str, Registry)> {
    let one = hook_row(5_000, "bench_item.*");
    vec![
        ("0 hooks", Registry::from_rows([])),
        (
            "10,000 hooks, none matching",
            Registry::from_rows(non_matching(10_000)),
        ),
        (
            "10,000 hooks, one matching",
            Registry::from_rows(
                non_matching(10_000)
                    .filter(|r| r.0["webhook_id"].as_deref() != Some("5000"))
                    .chain([one.clone()]),
            ),
        ),
        ("1 hook, matching", Registry::from_rows([one])),
    ]
}

/// `public.bench_item (id int PRIMARY KEY, n int, label text)`, as
/// walhook-perf's nginx section creates it.
fn builder() -> EventBuilder {
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
    builder
}

/// pgoutput Insert messages for rows 1..=count, as the server sends them.
fn inserts(count: u32) -> Vec<Bytes> {
    (1..=count)
        .map(|i| {
            let values = [i.to_string(), i.to_string(), format!("item {i}")];
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
            m.freeze()
        })
        .collect()
}

/// The reading side's work for one change: decode it, build its event,
/// match it, and for each matching hook that takes events its EventId
/// and job, through delivery's intake as the pipeline does (the shared
/// body rendered once, then per hook its body and job).
/// Returns the jobs' body bytes.
fn read_one(
    builder: &mut EventBuilder,
    registry: &Registry,
    matching: Matching,
    checkpoint: &mut Checkpoint,
    message: &Bytes,
    index: &mut u32,
) -> usize {
    let message = pgoutput::decode(message).expect("a valid Insert");
    let changes = builder.change(&TXN, index, message).expect("an event");
    let txn = checkpoint.begin(std::time::SystemTime::now());
    let mut bytes = 0;
    for change in changes {
        let Change::Event(event) = change else {
            continue;
        };
        let intake = EventIntake::new(&event, "Default", 16 << 20);
        for hook in matching(registry, &event) {
            if !hook.state.takes_events() {
                continue;
            }
            let event_id = event.event_id("7300000000000000000", hook.id);
            let job = intake.job(hook, event_id, txn.ticket());
            bytes += black_box(job).body.len();
        }
    }
    bytes
}

/// The reading side's state between changes.
struct Reader {
    builder: EventBuilder,
    checkpoint: Checkpoint,
    index: u32,
    /// Request body bytes the last change created.
    body_bytes: usize,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            builder: builder(),
            checkpoint: Checkpoint::new(Lsn(0)),
            index: 0,
            body_bytes: 0,
        }
    }

    /// [`read_one`] for each of these messages.
    fn read(&mut self, registry: &Registry, matching: Matching, messages: &[Bytes]) {
        for m in messages {
            self.body_bytes = read_one(
                &mut self.builder,
                registry,
                matching,
                &mut self.checkpoint,
                m,
                &mut self.index,
            );
        }
    }
}

/// How the hooks of an event are found.
type Matching = fn(&Registry, &ChangeEvent) -> Vec<Arc<Webhook>>;

/// By the registry's index, as the pipeline does.
fn by_index(registry: &Registry, event: &ChangeEvent) -> Vec<Arc<Webhook>> {
    registry.matching(event).cloned().collect()
}

/// By asking every hook: how matching worked before the index.
fn scan(registry: &Registry, event: &ChangeEvent) -> Vec<Arc<Webhook>> {
    registry
        .hooks()
        .filter(|h| h.kind == "webhook" && h.wants(event))
        .cloned()
        .collect()
}

/// The `i`th change of one kind.
type ChangeMaker = Box<dyn Fn(u64) -> WebhookChange>;

/// The event of the first Insert, as matching sees it.
fn first_event(messages: &[Bytes]) -> ChangeEvent {
    let mut builder = builder();
    let mut index = 0;
    let message = pgoutput::decode(&messages[0]).expect("a valid Insert");
    match builder
        .change(&TXN, &mut index, message)
        .expect("an event")
        .remove(0)
    {
        Change::Event(event) => *event,
        Change::Webhook(_) | Change::Control(_) => unreachable!("bench_item is a host table"),
    }
}

fn one_matching_call(c: &mut Criterion) {
    let event = first_event(&inserts(1));
    let mut group = c.benchmark_group("one Registry::matching call");
    for (name, registry) in &tables() {
        group.bench_function(BenchmarkId::new("by index", name), |b| {
            b.iter(|| {
                let hooks: Vec<_> = registry.matching(black_box(&event)).cloned().collect();
                black_box(hooks)
            })
        });
        if registry.hooks().count() > 1 {
            group.bench_function(BenchmarkId::new("a scan of every hook", name), |b| {
                b.iter(|| black_box(scan(registry, black_box(&event))))
            });
        }
    }
    group.finish();
}

/// A condition on every hook of the table, as `webhook condition` sets it.
const CONDITION: &str = "new.n >= 0 and new.label like 'item%' and new.id is distinct from old.id";

/// Matching, then each matched hook's condition: what routing costs per
/// event when hooks have conditions (only matched hooks evaluate theirs).
fn matching_with_conditions(c: &mut Criterion) {
    let event = first_event(&inserts(1));
    let mut group = c.benchmark_group("one Registry::matching call and its hooks' conditions");
    for (name, mut registry) in tables().into_iter().filter(|(_, r)| r.hooks().count() > 0) {
        let ids: Vec<i32> = registry.hooks().map(|h| h.id).collect();
        for id in ids {
            let row = WebhookRow(
                [
                    ("webhook_id".to_owned(), Some(id.to_string())),
                    ("condition".to_owned(), Some(CONDITION.to_owned())),
                ]
                .into_iter()
                .collect(),
            );
            let (id, rules) = RowRules::from_row(&row).expect("a valid webhook_control row");
            registry.set_rules(id, Some(rules));
        }
        group.bench_function(BenchmarkId::new("by index, with conditions", name), |b| {
            b.iter(|| {
                let hooks: Vec<_> = registry.matching(black_box(&event)).cloned().collect();
                let sent = hooks
                    .iter()
                    .filter(|h| matches!(registry.admit(h.id, &event), Admission::Send(_)))
                    .count();
                assert_eq!(
                    sent,
                    hooks.len(),
                    "the condition is true for bench_item rows"
                );
                black_box(sent)
            })
        });
    }
    group.finish();
}

/// Changes per batch of the reading-side benchmarks.
const BATCH: usize = 1_000;

fn reading_side(c: &mut Criterion) {
    let messages = inserts(20_000);
    let mut group = c.benchmark_group("decode + event + match (+ body and job per matching hook)");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, registry) in &tables() {
        let mut reader = Reader::new();
        let mut batches = messages.chunks(BATCH).cycle();
        group.bench_function(BenchmarkId::new("by index", name), |b| {
            b.iter(|| reader.read(registry, by_index, batches.next().expect("cycles")))
        });
    }
    group.finish();
    // Scanning 10,000 hooks per change takes tens of milliseconds a batch.
    let mut group = c.benchmark_group("decode + event + match, a scan of every hook");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    for (name, registry) in tables().iter().filter(|(_, r)| r.hooks().count() > 1) {
        let mut reader = Reader::new();
        let mut batches = messages.chunks(BATCH).cycle();
        group.bench_function(BenchmarkId::new("scan", name), |b| {
            b.iter(|| reader.read(registry, scan, batches.next().expect("cycles")))
        });
    }
    group.finish();
}

fn registry_memory(_: &mut Criterion) {
    let rows: Vec<WebhookRow> = non_matching(10_000).collect();
    let unindexed: Vec<WebhookRow> = rows
        .iter()
        .cloned()
        .map(|mut row| {
            row.0.insert("type".into(), Some("email".into()));
            row
        })
        .collect();
    let (registry, indexed) = allocated_by(|| Registry::from_rows(rows));
    drop(registry);
    let (registry, without_index) = allocated_by(|| Registry::from_rows(unindexed));
    drop(registry);
    println!(
        "registry of 10,000 hooks (nomatchN.created, otherN.*): {:.1} MiB held, of which the index {:.1} MiB",
        indexed.held as f64 / 1_048_576.0,
        (indexed.held - without_index.held) as f64 / 1_048_576.0,
    );
}

/// One webhook-row change applied to the registry and recorded for the
/// next snapshot, as the reading side does per webhook-row transaction.
struct RowChanges {
    registry: Registry,
    pending: PendingSnapshots,
    lsn: u64,
}

impl RowChanges {
    fn new() -> RowChanges {
        let registry = Registry::from_rows(non_matching(10_000));
        let pending = PendingSnapshots::new(&registry);
        let mut changes = RowChanges {
            registry,
            pending,
            lsn: 1,
        };
        // Warm up, so the figures are those of a steady state.
        for i in 0..1_000 {
            changes.transaction(state_change(i));
        }
        changes
    }

    fn transaction(&mut self, change: WebhookChange) {
        self.registry.apply(change);
        self.lsn += 1;
        self.pending
            .record(Lsn(self.lsn), self.registry.take_row_changes());
    }
}

fn state_change(i: u64) -> WebhookChange {
    let mut row = WebhookRow::default();
    row.0.insert("webhook_id".into(), Some("5000".into()));
    row.0.insert(
        "state".into(),
        Some(if i.is_multiple_of(2) { "3" } else { "1" }.into()),
    );
    WebhookChange::Upsert(row)
}

fn webhook_row_changes(c: &mut Criterion) {
    let cases: [(&str, ChangeMaker); 4] = [
        ("state of one hook changed", Box::new(state_change)),
        (
            "events of one hook changed",
            Box::new(|i| {
                WebhookChange::Upsert(hook_row(7_000, &format!("nomatch{i}.created, other7000.*")))
            }),
        ),
        (
            "one hook added",
            Box::new(|i| WebhookChange::Upsert(hook_row(20_000 + i as i32, "x.created"))),
        ),
        (
            "one hook removed",
            Box::new(|i| WebhookChange::Delete {
                webhook_id: Some((20_000 + i).to_string()),
            }),
        ),
    ];
    // Allocations are counted once, over 2,000 changes of each kind.
    let mut changes = RowChanges::new();
    for (name, change) in &cases {
        const CHANGES: u64 = 2_000;
        let ((), allocated) = allocated_by(|| {
            for i in 0..CHANGES {
                changes.transaction(change(i));
            }
        });
        println!(
            "{name:<30}: {:>5.1} allocations, {:>6} bytes allocated, {:>6} bytes more held afterwards (net, the pending snapshot included)",
            allocated.count as f64 / CHANGES as f64,
            allocated.bytes / CHANGES,
            allocated.held / CHANGES as i64,
        );
    }
    let mut group = c.benchmark_group("one webhook-row change in a table of 10,000");
    for (name, change) in &cases[..2] {
        let mut changes = RowChanges::new();
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                changes.transaction(change(i));
                i += 1;
            })
        });
    }
    // A hook added, then removed, each timed alone, so that the table stays
    // at 10,000 however many iterations criterion runs.
    let (add, remove) = (&cases[2].1, &cases[3].1);
    for (name, timed_add) in [("one hook added", true), ("one hook removed", false)] {
        let mut changes = RowChanges::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iterations| {
                let mut spent = Duration::ZERO;
                for i in 0..iterations {
                    let start = Instant::now();
                    changes.transaction(add(i));
                    let added = start.elapsed();
                    let start = Instant::now();
                    changes.transaction(remove(i));
                    spent += if timed_add { added } else { start.elapsed() };
                }
                spent
            })
        });
    }
    let mut changes = RowChanges::new();
    group.bench_function("before: a full copy of the rows", |b| {
        b.iter(|| {
            changes
                .registry
                .rows()
                .map(|row| WebhookRow::clone(row))
                .collect::<Vec<_>>()
        })
    });
    let position = Lsn(changes.lsn);
    let due = changes.pending.due(position);
    assert!(due.is_some(), "the warm-up left a snapshot due");
    group.bench_function("one snapshot written (as JSON text)", |b| {
        b.iter(|| {
            serde_json::Value::Array(
                changes
                    .pending
                    .changes()
                    .filter_map(|(_, row)| row)
                    .map(|r| serde_json::to_value(&r.0).unwrap_or_default())
                    .collect(),
            )
            .to_string()
            .len()
        })
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let registry = Registry::from_rows((1..=1_000).map(|n| hook_row(n, "bench_item.*")));
    let messages = inserts(2_000);
    let mut reader = Reader::new();
    reader.read(&registry, by_index, &messages[..1]);
    println!(
        "fan-out to 1,000 hooks: {} bytes of request bodies per change",
        reader.body_bytes
    );
    let mut group = c.benchmark_group("fan-out: 1,000 hooks all matching bench_item");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    let mut changes = messages.chunks(1).cycle();
    group.bench_function("events built for every hook, per change", |b| {
        b.iter(|| reader.read(&registry, by_index, changes.next().expect("cycles")))
    });
    group.finish();
}

criterion_group!(
    benches,
    registry_memory,
    one_matching_call,
    matching_with_conditions,
    reading_side,
    webhook_row_changes,
    fan_out
);
criterion_main!(benches);
