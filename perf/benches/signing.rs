//! Signing (walhook::delivery::signing): a key prepared from a hook's
//! secret, each signature over the body of a small row (about 600 bytes,
//! walhook's usual size) and of a 16 KiB row, and all headers of one
//! attempt (both signatures included).
//!
//!     cargo bench -p walhook-perf --bench signing

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walhook::delivery::request::{self, SigningKeys};
use walhook::delivery::signing::SigningKey;

const SECRET: &str = "whsec_dGVuYW50IHNlY3JldCB7aWR9";
const ID: &str = "6f0c1d7e-5c1a-5f0e-9a3b-1c2d3e4f5a6b";

fn signing(c: &mut Criterion) {
    let mut group = c.benchmark_group("signing");
    group.bench_function("a key from a secret", |b| {
        b.iter(|| SigningKey::new(black_box(SECRET)))
    });
    let key = SigningKey::new(SECRET);
    let hook = common::hook();
    for (name, label) in [
        ("small row", "item 4242".to_owned()),
        ("16 KiB row", "x".repeat(16 << 10)),
    ] {
        let event = common::event(&label);
        let shared = request::SharedBody::of(&event, "Default");
        let event_id = event.event_id("7300000000000000000", hook.id);
        let (body, _) = request::hook_body(&shared, &event, event_id, &hook, "Default", 16 << 20)
            .for_job(&shared);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("X-SuperOffice-Signature, {name}"), |b| {
            b.iter(|| key.superoffice_signature(black_box(&body)))
        });
        group.bench_function(format!("webhook-signature, {name}"), |b| {
            b.iter(|| key.standard_webhooks_signature(ID, "1767254400", black_box(&body)))
        });
        let keys = SigningKeys {
            key: Some(&key),
            previous_secret: None,
        };
        group.bench_function(format!("all headers of an attempt, {name}"), |b| {
            b.iter(|| {
                request::headers(
                    &hook,
                    &keys,
                    "bench_item.created",
                    event_id,
                    black_box(&body),
                    0,
                    1_767_254_400,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
