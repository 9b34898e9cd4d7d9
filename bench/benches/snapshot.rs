//! The snapshot of a catch-up (or a journal checkpoint), both ends, on a state of 100,000
//! database records of 100 bytes (10,000 in quick mode), throughput in state bytes.
//!
//! - `snapshot_encode/engine_thread`: what the active's engine thread does, a `Cursor` slice
//!   after slice over every shard (`catch_up::CHUNK_BYTES` per slice), each frame dropped
//!   once out as the link drops it once written.
//! - `snapshot_encode/rayon`: the same shards encoded on every core at once, one writer per
//!   range of shards: the speed a snapshot could reach if it did not leave a core to serving.
//! - `snapshot_apply/engine_thread`: the standby's side: each chunk validated (CRC, records,
//!   shards) and restored into an empty state by `Restore`, one after the other.
//! - `snapshot_apply/rayon_validate`: the chunks validated on every core first, then restored
//!   in order on one thread (the state has one owner; the checking is what parallelises).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use engine::catch_up::{Cursor, Restore, CHUNK_BYTES};
use engine::sessions::{AppVersion, Sessions};
use engine::state::State;
use rayon::prelude::*;
use replicator::catch_up::{validate_chunk, ChunkWriter, SHARDS};
use replicator::frame::decode_exact;
use replicator::Op;

const VALUE_BYTES: usize = 100;

fn records() -> usize {
    if bench::quick() {
        10_000
    } else {
        100_000
    }
}

fn state_of(records: usize) -> (State, u64) {
    let mut state = State::default();
    let value = vec![7u8; VALUE_BYTES];
    let mut bytes = 0;
    for i in 0..records {
        let key = format!("key:{i:08}");
        bytes += (key.len() + VALUE_BYTES) as u64;
        state.apply(Op::DbPut, key.as_bytes(), &value).unwrap();
    }
    (state, bytes)
}

fn encode_on_the_engine_thread(state: &State) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut cursor = Cursor::default();
    while !cursor.step(state, 1, &mut |f| frames.push(f)) {}
    frames
}

/// [`encode_on_the_engine_thread`], each frame dropped once out, as the link does once it
/// has written it: the writer's arena is then reused, as on the active.
fn encode_and_drop(state: &State) -> usize {
    let mut bytes = 0;
    let mut cursor = Cursor::default();
    while !cursor.step(state, 1, &mut |f| bytes += f.len()) {}
    bytes
}

fn encode_with_rayon(state: &State) -> Vec<Bytes> {
    let per_task = SHARDS / (4 * rayon::current_num_threads()).max(1);
    (0..SHARDS)
        .step_by(per_task)
        .collect::<Vec<_>>()
        .into_par_iter()
        .flat_map_iter(|from| {
            let mut frames = Vec::new();
            let mut emit = |f| frames.push(f);
            let mut writer = ChunkWriter::new(CHUNK_BYTES);
            for shard in from..(from + per_task).min(SHARDS) {
                writer.begin_shard(shard, 1, &mut emit);
                state.encode_shard(shard, &mut writer, &mut emit);
            }
            writer.flush(&mut emit);
            frames
        })
        .collect()
}

/// Restores `frames` into `state` (empty); the state is returned so that criterion drops it
/// outside the timed section (freeing a state is not what a standby does in a catch-up).
fn restore(app: &Sessions, frames: &[Bytes], validate: bool, mut state: State) -> State {
    let mut restore = Restore::default();
    for f in frames {
        let f = decode_exact(f).expect("a frame");
        if validate {
            validate_chunk(&f.payload).expect("a valid chunk");
        }
        restore
            .chunk(app, &mut state, f.seq, f.payload)
            .expect("restores");
    }
    state
}

fn encode(c: &mut Criterion) {
    let (state, bytes) = state_of(records());
    let mut group = c.benchmark_group("snapshot_encode");
    bench::micro::configure(&mut group);
    group.throughput(Throughput::Bytes(bytes));
    let n = records();
    group.bench_with_input(BenchmarkId::new("engine_thread", n), &state, |b, s| {
        b.iter(|| encode_and_drop(s))
    });
    group.bench_with_input(BenchmarkId::new("rayon", n), &state, |b, s| {
        b.iter(|| encode_with_rayon(s).len())
    });
    group.finish();
}

fn apply(c: &mut Criterion) {
    let (state, bytes) = state_of(records());
    let frames = encode_on_the_engine_thread(&state);
    let app = Sessions::new(AppVersion::V1_0, None);
    let want = state.digest();
    assert_eq!(
        restore(&app, &frames, true, State::default()).digest(),
        want
    );
    let mut group = c.benchmark_group("snapshot_apply");
    bench::micro::configure(&mut group);
    group.throughput(Throughput::Bytes(bytes));
    let n = records();
    group.bench_function(BenchmarkId::new("engine_thread", n), |b| {
        b.iter_batched(
            State::default,
            |state| restore(&app, &frames, true, state),
            BatchSize::LargeInput,
        )
    });
    group.bench_function(BenchmarkId::new("rayon_validate", n), |b| {
        b.iter_batched(
            State::default,
            |state| {
                frames.par_iter().for_each(|f| {
                    let f = decode_exact(f).expect("a frame");
                    validate_chunk(&f.payload).expect("a valid chunk");
                });
                restore(&app, &frames, false, state)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, encode, apply);
criterion_main!(benches);
