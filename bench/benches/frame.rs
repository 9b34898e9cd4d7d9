//! Frame encode and decode: what one batch costs the active to build and the standby to check.

use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use replicator::{frame, BatchConfig, Kind, Op, Outbox, Records};

fn sealed_batch(updates: usize, value_bytes: usize) -> bytes::Bytes {
    let mut outbox = Outbox::new(BatchConfig::default(), 0);
    let now = Instant::now();
    let value = vec![7u8; value_bytes];
    for i in 0..updates {
        outbox.push(now, Op::DbPut, format!("key:{i:08}").as_bytes(), &value);
    }
    outbox.seal().expect("batch").frame.clone()
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_encode");
    bench::micro::configure(&mut group);
    for &updates in &[1usize, 16, 256] {
        let value = vec![7u8; 100];
        let keys: Vec<Vec<u8>> = (0..updates)
            .map(|i| format!("key:{i:08}").into_bytes())
            .collect();
        group.throughput(Throughput::Elements(updates as u64));
        group.bench_with_input(
            BenchmarkId::new("value_100B", format!("updates_{updates}")),
            &updates,
            |b, _| {
                let mut outbox = Outbox::new(BatchConfig::default(), 0);
                let now = Instant::now();
                b.iter(|| {
                    for k in &keys {
                        outbox.push(now, Op::DbPut, k, &value);
                    }
                    outbox.seal().map(|s| s.frame.len())
                });
            },
        );
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_decode");
    bench::micro::configure(&mut group);
    for &updates in &[1usize, 16, 256] {
        let bytes = sealed_batch(updates, 100);
        group.throughput(Throughput::Elements(updates as u64));
        group.bench_with_input(
            BenchmarkId::new("value_100B", format!("updates_{updates}")),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&bytes[..]);
                    let f = frame::decode(&mut buf).unwrap().unwrap();
                    let mut n = 0;
                    for r in Records::new(Kind::Batch, f.payload).unwrap() {
                        n += r.unwrap().value.len();
                    }
                    n
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
