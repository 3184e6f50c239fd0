//! pgoutput decoding of real captured messages (tests/fixtures/pgoutput:
//! every change of its workload in the text format, and one transaction
//! in the binary format), as bytes per second.
//!
//!     cargo bench -p walhook-perf --bench decode

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use walhook::pgoutput;

/// The messages of one fixture file: lines `<kind> <xid> <hex>`.
fn fixture(name: &str) -> Vec<Bytes> {
    let path = format!(
        "{}/../tests/fixtures/pgoutput/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let hex = line
                .rsplit(' ')
                .next()
                .unwrap_or_else(|| panic!("{path}: bad line {line:?}"));
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
                .collect::<Vec<u8>>();
            Bytes::from(bytes)
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("pgoutput::decode, captured messages");
    for (name, file) in [
        ("text format", "messages.txt"),
        ("binary format", "binary.txt"),
    ] {
        let messages = fixture(file);
        let bytes: usize = messages.iter().map(Bytes::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("{name}, {} messages", messages.len()), |b| {
            b.iter(|| {
                for m in &messages {
                    black_box(pgoutput::decode(black_box(m)).expect("a captured message decodes"));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
