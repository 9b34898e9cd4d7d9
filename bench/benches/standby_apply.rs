//! The standby's batch path: decoding one sealed batch frame (header and CRC32C), validating
//! its records, and applying them to an `engine::state::State` of 100,000 database records,
//! as the receiver and `apply_records` do. Two cases: every update overwrites an existing key
//! (the state keeps its size), or every update inserts a new one.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::state::State;
use replicator::{frame, BatchConfig, Kind, Op, Outbox, Records};

/// Database records the standby holds before the batch.
const STATE_RECORDS: usize = 100_000;
const VALUE_BYTES: usize = 100;

fn key(i: usize) -> String {
    format!("key:{i:08}")
}

/// A sealed batch of `DbPut`s of keys `first..first + updates`, as the active sends it.
fn sealed_batch(first: usize, updates: usize) -> Bytes {
    let mut outbox = Outbox::new(BatchConfig::default(), 0);
    let now = Instant::now();
    let value = vec![7u8; VALUE_BYTES];
    for i in first..first + updates {
        outbox.push(now, Op::DbPut, key(i).as_bytes(), &value);
    }
    outbox.seal().expect("batch").frame.clone()
}

fn state_of(records: usize) -> State {
    let mut state = State::default();
    let value = vec![1u8; VALUE_BYTES];
    for i in 0..records {
        state.apply(Op::DbPut, key(i).as_bytes(), &value).unwrap();
    }
    state
}

/// What the standby does with one batch frame read from its link.
fn receive_and_apply(rx: &mut BytesMut, state: &mut State) -> u64 {
    let f = frame::decode(rx)
        .expect("valid frame")
        .expect("whole frame");
    Records::validate(Kind::Batch, &f.payload).expect("valid records");
    for r in Records::new(Kind::Batch, f.payload).expect("records") {
        let r = r.expect("record");
        state.apply(r.op, &r.key, &r.value).expect("applies");
    }
    state.digest()
}

/// Frames received and applied per timed stretch: the clock is read once per stretch, not
/// per frame, and the copies into receive buffers (the socket reads) are made before it.
const CHUNK: u64 = 64;

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("standby_apply");
    bench::micro::configure(&mut group);
    let mut state = state_of(STATE_RECORDS);
    for updates in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(updates as u64));

        let overwrite = sealed_batch(0, updates);
        let id = BenchmarkId::new("overwrite_100B", format!("updates_{updates}"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for n in chunks(iters) {
                    let mut rx: Vec<BytesMut> =
                        (0..n).map(|_| BytesMut::from(&overwrite[..])).collect();
                    let start = Instant::now();
                    for buf in &mut rx {
                        std::hint::black_box(receive_and_apply(buf, &mut state));
                    }
                    spent += start.elapsed();
                }
                spent
            })
        });

        // Each frame of a stretch inserts keys of its own; deleting them afterwards (not
        // timed) keeps the state at its size.
        let inserts: Vec<Bytes> = (0..CHUNK as usize)
            .map(|j| sealed_batch(STATE_RECORDS + j * updates, updates))
            .collect();
        let id = BenchmarkId::new("insert_100B", format!("updates_{updates}"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for n in chunks(iters) {
                    let mut rx: Vec<BytesMut> = inserts[..n as usize]
                        .iter()
                        .map(|f| BytesMut::from(&f[..]))
                        .collect();
                    let start = Instant::now();
                    for buf in &mut rx {
                        std::hint::black_box(receive_and_apply(buf, &mut state));
                    }
                    spent += start.elapsed();
                    for i in STATE_RECORDS..STATE_RECORDS + n as usize * updates {
                        state.apply(Op::DbDelete, key(i).as_bytes(), b"").unwrap();
                    }
                }
                spent
            })
        });
    }
    group.finish();
}

/// `iters` split into stretches of at most [`CHUNK`].
fn chunks(iters: u64) -> impl Iterator<Item = u64> {
    (0..iters.div_ceil(CHUNK)).map(move |i| CHUNK.min(iters - i * CHUNK))
}

criterion_group!(benches, apply);
criterion_main!(benches);
