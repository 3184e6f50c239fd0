//! Building request bodies (walhook::delivery::request): the part shared
//! by every hook of a change, rendered once, and each hook's body
//! assembled from it.
//!
//!     cargo bench -p walhook-perf --bench body

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use walhook::delivery::request;

fn body(c: &mut Criterion) {
    let hook = common::hook();
    let mut group = c.benchmark_group("request body");
    // A short label, and one that makes a body of about 16 KiB.
    for (name, label) in [
        ("small row", "item 4242".to_owned()),
        ("16 KiB row", "x".repeat(16 << 10)),
    ] {
        let event = common::event(&label);
        let event_id = event.event_id("7300000000000000000", hook.id);
        group.bench_function(format!("{name}: shared part, once per change"), |b| {
            b.iter(|| request::SharedBody::of(black_box(&event), "Default"))
        });
        let shared = request::SharedBody::of(&event, "Default");
        group.bench_function(format!("{name}: one hook's body"), |b| {
            b.iter(|| {
                let (body, _) =
                    request::hook_body(&shared, &event, event_id, &hook, "Default", 16 << 20)
                        .for_job(&shared);
                black_box(body)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, body);
criterion_main!(benches);
