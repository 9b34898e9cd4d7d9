//! The cost of one put into the state (`State::apply(Op::DbPut, ..)`), by value size: the
//! map update, the copies of key and value, and the running digest, which hashes the new
//! (key, value) and, on an overwrite, the old one too. Only the digest's part grows with the
//! value (the copy's is a memcpy): the slope across sizes is the digest's per-byte cost.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::state::State;
use replicator::Op;

const STATE_RECORDS: usize = 10_000;
/// Inserts per timed stretch: the clock is read once per stretch, not per put.
const CHUNK: u64 = 64;

fn key(i: usize) -> String {
    format!("key:{i:08}")
}

fn digest(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest_update");
    bench::micro::configure(&mut group);
    for (label, value_bytes) in [
        ("16B", 16usize),
        ("100B", 100),
        ("1KiB", 1024),
        ("16KiB", 16 << 10),
    ] {
        let value = vec![7u8; value_bytes];
        let keys: Vec<String> = (0..STATE_RECORDS).map(key).collect();
        let mut state = State::default();
        for k in &keys {
            state.apply(Op::DbPut, k.as_bytes(), &value).unwrap();
        }
        group.throughput(Throughput::Bytes(value_bytes as u64));

        // Overwrites, cycling through the existing keys: the state keeps its size.
        let mut next = 0;
        let id = BenchmarkId::new("put_overwrite", format!("value_{label}"));
        group.bench_function(id, |b| {
            b.iter(|| {
                next = (next + 1) % keys.len();
                state
                    .apply(Op::DbPut, keys[next].as_bytes(), &value)
                    .unwrap();
                state.digest()
            })
        });

        // New keys, deleted again after each timed stretch (not timed).
        let fresh: Vec<String> = (STATE_RECORDS..STATE_RECORDS + CHUNK as usize)
            .map(key)
            .collect();
        let id = BenchmarkId::new("put_insert", format!("value_{label}"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let n = CHUNK.min(left) as usize;
                    left -= n as u64;
                    let start = Instant::now();
                    for k in &fresh[..n] {
                        state.apply(Op::DbPut, k.as_bytes(), &value).unwrap();
                    }
                    std::hint::black_box(state.digest());
                    spent += start.elapsed();
                    for k in &fresh[..n] {
                        state.apply(Op::DbDelete, k.as_bytes(), b"").unwrap();
                    }
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, digest);
criterion_main!(benches);
