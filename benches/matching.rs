//! What matching and webhook-row changes cost at the table sizes of a
//! multi-tenant installation, measured in-process, without a server:
//!
//!     cargo bench --bench matching
//!
//! It prints:
//! - the time of one `Registry::matching` call with 0 hooks, 10,000 hooks
//!   of which none matches (`nomatchN.created, otherN.*`), the same 10,000
//!   plus one that matches, and that one alone; beside it, for the two
//!   large tables, a scan asking every hook (how matching worked before
//!   the index);
//! - changes per second through the reading side's per-change work
//!   (pgoutput decoding, building the event, matching, and for each
//!   matching hook its EventId, body and job) for the same four tables,
//!   and the ratios the issue sets goals for;
//! - the time and allocations of one webhook-row change in a table of
//!   10,000 (applied to the registry and recorded for the next registry
//!   snapshot), next to the full copy of the rows that each such
//!   transaction used to cost, and the cost of writing one snapshot out;
//! - fan-out: with 1,000 hooks all matching the table, events built per
//!   second and the request bytes one change creates.
//!
//! Figures are comparable only on one machine; each is the best of a few
//! rounds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use walhook::checkpoint::Checkpoint;
use walhook::config::Config;
use walhook::delivery::{request, Job, OrderScope};
use walhook::events::catalog::TypeCatalog;
use walhook::events::{Change, ChangeEvent, EventBuilder, TxnInfo, WebhookChange, WebhookRow};
use walhook::pgoutput::{self, Column, Lsn, Relation, ReplicaIdentity};
use walhook::registry::{PendingSnapshots, Registry, Webhook, WebhookState};

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

/// Best time per iteration over a few rounds of `iterations` each.
fn time_per(iterations: u64, mut f: impl FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed() / iterations as u32
        })
        .min()
        .expect("five rounds")
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
/// bench/run.sh creates it.
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
/// match it, and for each matching hook that gets it, its EventId, body
/// and job (what `Pipeline::route` does before handing the job over).
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
    let txn = checkpoint.begin();
    let mut bytes = 0;
    for change in changes {
        let Change::Event(event) = change else {
            continue;
        };
        let shared = request::SharedBody::of(&event, "Default");
        for hook in matching(registry, &event) {
            if matches!(hook.state, WebhookState::Stopped | WebhookState::Unknown) {
                continue;
            }
            let event_id = event.event_id("7300000000000000000", hook.id);
            let (body, parts) =
                request::hook_body(&shared, &event, event_id, &hook, "Default", 16 << 20)
                    .for_job(&shared);
            let job = Job {
                event: event.event.clone(),
                event_id,
                ordering_key: event.ordering_key.clone(),
                scope: OrderScope::Key,
                body,
                shared: parts,
                commit_lsn: event.txn.commit_lsn,
                change_index: event.index,
                ticket: txn.ticket(),
                hook,
            };
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

    /// The time [`read_one`] takes for all these messages.
    fn round(&mut self, registry: &Registry, matching: Matching, messages: &[Bytes]) -> Duration {
        let start = Instant::now();
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
        start.elapsed()
    }
}

/// Changes per second through [`read_one`] for each table, best of
/// `rounds` rounds that take the tables in turn, so that a passing load on
/// the machine weighs on all of them alike.
fn read_rates(tables: &[&Registry], messages: &[Bytes], rounds: usize) -> Vec<(f64, usize)> {
    let mut readers: Vec<Reader> = tables.iter().map(|_| Reader::new()).collect();
    let mut best = vec![Duration::MAX; tables.len()];
    for _ in 0..rounds {
        for ((registry, reader), best) in tables.iter().zip(&mut readers).zip(&mut best) {
            *best = (*best).min(reader.round(registry, by_index, messages));
        }
    }
    best.iter()
        .zip(&readers)
        .map(|(d, r)| (messages.len() as f64 / d.as_secs_f64(), r.body_bytes))
        .collect()
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

fn per_call(d: Duration) -> String {
    format!("{:>9.1} ns", d.as_nanos() as f64)
}

fn main() {
    let tables = tables();
    let messages = inserts(20_000);
    let event = {
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
    };

    println!("== one Registry::matching call (event bench_item.created)");
    for (name, registry) in &tables {
        let by_index = time_per(200_000, || {
            let hooks: Vec<_> = registry.matching(black_box(&event)).cloned().collect();
            black_box(hooks);
        });
        let before = if registry.hooks().count() > 1 {
            let by_scan = time_per(200, || {
                black_box(scan(registry, black_box(&event)));
            });
            format!("   (a scan of every hook: {})", per_call(by_scan))
        } else {
            String::new()
        };
        println!("{name:<30}: {}{before}", per_call(by_index));
    }

    println!();
    println!(
        "== decode + event + match (+ body and job per matching hook), {} Insert messages",
        messages.len()
    );
    let registries: Vec<&Registry> = tables.iter().map(|(_, r)| r).collect();
    let rates: Vec<f64> = read_rates(&registries, &messages, 9)
        .into_iter()
        .map(|(rate, _)| rate)
        .collect();
    for ((name, registry), rate) in tables.iter().zip(&rates) {
        let before = if registry.hooks().count() > 1 {
            let d = Reader::new().round(registry, scan, &messages[..1_000]);
            let rate = 1_000.0 / d.as_secs_f64();
            format!("   (with a scan of every hook: {rate:>7.0} changes/s)")
        } else {
            String::new()
        };
        println!("{name:<30}: {rate:>10.0} changes/s{before}");
    }
    println!(
        "ratio 10,000 none matching / 0 hooks       : {:.3}   (goal >= 0.9)",
        rates[1] / rates[0]
    );
    println!(
        "ratio 10,000 one matching / 1 hook alone   : {:.3}   (goal >= 0.9)",
        rates[2] / rates[3]
    );

    println!();
    println!("== memory of a registry of 10,000 hooks (nomatchN.created, otherN.*)");
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
        "{:<30}: {:>6.1} MiB held, of which the index {:.1} MiB",
        "registry",
        indexed.held as f64 / 1_048_576.0,
        (indexed.held - without_index.held) as f64 / 1_048_576.0,
    );

    println!();
    println!(
        "== one webhook-row change in a table of 10,000 (applied, and kept for the next snapshot)"
    );
    let mut registry = Registry::from_rows(non_matching(10_000));
    let mut pending = PendingSnapshots::new(&registry);
    let mut lsn = 1u64;
    let mut transaction = |registry: &mut Registry, pending: &mut PendingSnapshots, change| {
        registry.apply(change);
        lsn += 1;
        pending.record(Lsn(lsn), registry.take_row_changes());
    };
    let state_change = |i: u64| {
        let mut row = WebhookRow::default();
        row.0.insert("webhook_id".into(), Some("5000".into()));
        row.0.insert(
            "state".into(),
            Some(if i.is_multiple_of(2) { "3" } else { "1" }.into()),
        );
        WebhookChange::Upsert(row)
    };
    // Warm up, so the figures are those of a steady state.
    for i in 0..1_000 {
        transaction(&mut registry, &mut pending, state_change(i));
    }
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
    const CHANGES: u64 = 2_000;
    for (name, change) in &cases {
        let start = Instant::now();
        let ((), allocated) = allocated_by(|| {
            for i in 0..CHANGES {
                transaction(&mut registry, &mut pending, change(i));
            }
        });
        let each = start.elapsed() / CHANGES as u32;
        println!(
            "{name:<30}: {:>7.2} µs, {:>5.1} allocations, {:>6} bytes allocated, {:>6} bytes more held afterwards (net, the pending snapshot included)",
            each.as_nanos() as f64 / 1000.0,
            allocated.count as f64 / CHANGES as f64,
            allocated.bytes / CHANGES,
            allocated.held / CHANGES as i64,
        );
    }
    let start = Instant::now();
    let (copy, allocated) = allocated_by(|| {
        registry
            .rows()
            .map(|row| WebhookRow::clone(row))
            .collect::<Vec<_>>()
    });
    let copy_time = start.elapsed();
    drop(copy);
    println!(
        "{:<30}: {:>7.2} µs, {:>5} allocations, {:>6} bytes held until the snapshot is written (per transaction)",
        "before: a full copy of the rows",
        copy_time.as_nanos() as f64 / 1000.0,
        allocated.count,
        allocated.held,
    );
    let position = Lsn(lsn);
    let start = Instant::now();
    let written = pending.due(position).map(|_| {
        serde_json::Value::Array(
            pending
                .rows()
                .map(|r| serde_json::to_value(&r.0).unwrap_or_default())
                .collect(),
        )
        .to_string()
        .len()
    });
    println!(
        "{:<30}: {:>7.2} ms for {} bytes of JSON (at most once per confirmation, when the position passed a webhook-row change)",
        "one snapshot written",
        start.elapsed().as_secs_f64() * 1000.0,
        written.unwrap_or(0),
    );

    println!();
    println!("== fan-out: 1,000 hooks all matching bench_item");
    let fan_out = Registry::from_rows((1..=1_000).map(|n| hook_row(n, "bench_item.*")));
    let few = &messages[..2_000];
    let (rate, body_bytes) = read_rates(&[&fan_out], few, 5)[0];
    println!(
        "{:<30}: {:>10.0} events/s ({:.0} changes/s), {} bytes of request bodies per change",
        "events built",
        rate * 1_000.0,
        rate,
        body_bytes,
    );
}
