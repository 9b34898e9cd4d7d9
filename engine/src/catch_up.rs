//! Catch-up on the engine's state, both sides (the protocol is in `replicator::catch_up`).
//!
//! The active (or the journal, for its checkpoint) walks the live state with a [`Cursor`]: a
//! slice of whole shards per turn of the engine thread, each encoded as it is at that moment,
//! while the batches after the snapshot's start keep flowing. The receiving side (a standby,
//! or a recovery reading a journal) follows with a [`Restore`]: a shard is replaced the first
//! time a chunk names it, a batch record is applied only to a shard held already and only if
//! it is newer than the shard's chunk, and the state is whole (and checked against the
//! active's digest) once the batches up to the snapshot end's sequence are applied.

use std::cell::Cell;

use bytes::Bytes;
use replicator::catch_up::{self, key_hash, shard_of, ChunkWriter, SHARDS};
use replicator::{Kind, Op, Record, Records, SnapshotEnd};

use crate::app::Application;
use crate::state::{control, State};

/// Payload bytes per chunk frame, and of chunks per slice of the engine thread's time: about
/// 50-100 µs of copying, so that a client waits at most that long behind a catch-up.
pub const CHUNK_BYTES: usize = 128 << 10;

/// The sending side: where the walk over the shards stands.
pub struct Cursor {
    next: usize,
    writer: ChunkWriter,
    /// Payload bytes per frame, and per slice.
    chunk_bytes: usize,
    records: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor::new(CHUNK_BYTES)
    }
}

impl Cursor {
    /// A walk in frames (and slices) of about `chunk_bytes`.
    pub fn new(chunk_bytes: usize) -> Cursor {
        Cursor {
            next: 0,
            writer: ChunkWriter::new(chunk_bytes),
            chunk_bytes,
            records: 0,
        }
    }

    /// Encodes whole shards from where the last call stopped, until about a slice of frames
    /// is out; `seq` is the last update applied to `state`. True once every shard is.
    pub fn step(&mut self, state: &State, seq: u64, emit: &mut impl FnMut(Bytes)) -> bool {
        let out = Cell::new(0);
        let mut emit = |f: Bytes| {
            out.set(out.get() + f.len());
            emit(f)
        };
        while self.next < SHARDS && out.get() + self.writer.pending_bytes() < self.chunk_bytes {
            self.writer.begin_shard(self.next, seq, &mut emit);
            if self.next == 0 && state.features_enabled {
                // Pair-level state travels with the first shard, as of the same sequence.
                let features = Op::Control(control::FEATURES_ENABLED);
                self.writer.push(features, b"", b"", &mut emit);
            }
            state.encode_shard(self.next, &mut self.writer, &mut emit);
            self.records += state.shard_entries(self.next) as u64;
            self.next += 1;
        }
        // A slice's last frame goes now: the next slice is as of a later sequence.
        self.writer.flush(&mut emit);
        self.next == SHARDS
    }

    /// The snapshot end once every shard is out: the caller sealed its outbox at `seq`, the
    /// last update applied to `state`.
    pub fn end(&self, state: &State, seq: u64) -> SnapshotEnd {
        debug_assert_eq!(self.next, SHARDS);
        SnapshotEnd {
            seq,
            records: self.records,
            state_digest: state.digest(),
        }
    }
}

/// "Not received yet", in [`Restore`]'s table of shard sequences.
const MISSING: u64 = u64::MAX;

/// What one shard of a chunk brings to each map: entries, and key and value bytes.
#[derive(Clone, Copy, Default)]
struct ShardSize {
    shard: usize,
    units: (usize, usize),
    db: (usize, usize),
}

/// The receiving side: which shards it holds, as of which sequence.
pub struct Restore {
    shard_seq: Box<[u64]>,
    shards_held: usize,
    records: u64,
    end: Option<SnapshotEnd>,
    /// A chunk's key hashes (0 for a control record) and its shards' sizes, from the first
    /// pass over it; kept from chunk to chunk, so that a restore allocates them once.
    hashes: Vec<u64>,
    sizes: Vec<ShardSize>,
    /// Chunk payload bytes so far, and since when: what a log line says of the catch-up.
    pub bytes: u64,
    pub started: std::time::Instant,
}

impl Default for Restore {
    fn default() -> Self {
        Restore {
            shard_seq: vec![MISSING; SHARDS].into_boxed_slice(),
            shards_held: 0,
            records: 0,
            end: None,
            hashes: Vec::new(),
            sizes: Vec::new(),
            bytes: 0,
            started: std::time::Instant::now(),
        }
    }
}

impl Restore {
    /// Applies a chunk frame (its records well formed, see `catch_up::validate_chunk`) as of
    /// update `seq`. A first pass checks every record (the application's check, and that its
    /// key belongs to the chunk's shards, in order) and sizes each shard, before anything
    /// changes; the second inserts into tables and arenas reserved to size, with each key
    /// hashed once.
    pub fn chunk(
        &mut self,
        app: &dyn Application,
        state: &mut State,
        seq: u64,
        payload: Bytes,
    ) -> Result<(), String> {
        self.bytes += payload.len() as u64;
        let chunk = catch_up::decode_chunk(&payload).map_err(|e| e.to_string())?;
        self.hashes.clear();
        self.sizes.clear();
        for record in chunk.records.clone() {
            let record = record.map_err(|e| e.to_string())?;
            app.check_update(record)?;
            match record.op {
                Op::Control(_) => {
                    self.hashes.push(0);
                    continue;
                }
                Op::UnitCreate | Op::DbPut => {}
                op => return Err(format!("{op:?} in a snapshot")),
            }
            let hash = key_hash(record.key);
            let shard = shard_of(hash);
            let last = self.sizes.last().map(|s| s.shard);
            if !chunk.shards.contains(&shard) || last.is_some_and(|l| l > shard) {
                return Err(format!(
                    "a record of shard {shard} out of place in a chunk of shards {:?}",
                    chunk.shards
                ));
            }
            if last != Some(shard) {
                self.sizes.push(ShardSize {
                    shard,
                    ..ShardSize::default()
                });
            }
            let size = self.sizes.last_mut().expect("pushed");
            let (entries, bytes) = if record.op == Op::UnitCreate {
                &mut size.units
            } else {
                &mut size.db
            };
            *entries += 1;
            *bytes += record.key.len() + record.value.len();
            self.hashes.push(hash);
        }
        for shard in chunk.shards.clone() {
            match self.shard_seq[shard] {
                MISSING => {
                    state.clear_shard(shard);
                    self.shard_seq[shard] = seq;
                    self.shards_held += 1;
                }
                // The rest of a shard too big for one frame.
                held if held == seq && shard == *chunk.shards.start() => {}
                _ => return Err(format!("shard {shard} of the snapshot came twice")),
            }
        }
        for s in &self.sizes {
            state.reserve_shard(s.shard, s.units, s.db);
        }
        for (record, &hash) in chunk.records.zip(&self.hashes) {
            let record = record.map_err(|e| e.to_string())?;
            state.restore(record, hash).map_err(|e| e.to_string())?;
            if !matches!(record.op, Op::Control(_)) {
                self.records += 1;
            }
        }
        Ok(())
    }

    /// Is a batch record, update `seq`, to be applied? Not to a shard whose chunk is still to
    /// come (the chunk brings it), nor if the shard's chunk already holds it.
    pub fn wants(&self, seq: u64, record: &Record) -> bool {
        match record.op {
            Op::Control(_) => true,
            _ => {
                let held = self.shard_seq[shard_of(key_hash(&record.key))];
                held != MISSING && seq > held
            }
        }
    }

    /// Every chunk is in: checks they were all there, and waits for the batches up to `end.seq`.
    pub fn end(&mut self, end: SnapshotEnd) -> Result<(), String> {
        if self.shards_held != SHARDS {
            return Err(format!(
                "the snapshot ended with {} of {SHARDS} shards",
                self.shards_held
            ));
        }
        if self.records != end.records {
            return Err(format!(
                "the snapshot held {} records, its end says {}",
                self.records, end.records
            ));
        }
        self.end = Some(end);
        Ok(())
    }

    /// After applying the batches up to `seq_applied`: `Some(Ok(seq))` once the state is whole
    /// and its digest is the active's at the snapshot end's sequence `seq`.
    pub fn finished(&self, seq_applied: u64, state: &State) -> Option<Result<u64, String>> {
        let end = self.end.as_ref()?;
        if seq_applied < end.seq {
            return None;
        }
        let digest = state.digest();
        Some(if seq_applied > end.seq {
            Err(format!(
                "the snapshot ended at {} inside a batch (applied {seq_applied})",
                end.seq
            ))
        } else if digest != end.state_digest {
            Err(format!(
                "snapshot digest {digest:016x} differs from the active's {:016x} at {}",
                end.state_digest, end.seq
            ))
        } else {
            Ok(end.seq)
        })
    }
}

/// Applies a batch's records, the first being update `seq_first`: every one, or during a
/// restore those it wants. `on_control(seq, code, state)` runs after each control record
/// applied.
pub fn apply_batch(
    app: &mut dyn Application,
    state: &mut State,
    restore: Option<&Restore>,
    seq_first: u64,
    payload: Bytes,
    mut on_control: impl FnMut(u64, u8, &State),
) -> Result<(), String> {
    let records = Records::new(Kind::Batch, payload).map_err(|e| e.to_string())?;
    for (seq, record) in (seq_first..).zip(records) {
        let record = record.map_err(|e| e.to_string())?;
        if restore.is_some_and(|r| !r.wants(seq, &record)) {
            continue;
        }
        app.apply(state, &record)?;
        if let Op::Control(code) = record.op {
            on_control(seq, code, state);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Access, CommandError, Ctx};
    use replicator::frame::decode_exact;
    use replicator::{BatchConfig, Outbox};
    use std::collections::VecDeque;
    use std::time::Instant;

    /// An application that takes every record as it is.
    struct Plain;

    impl Application for Plain {
        fn name(&self) -> &str {
            "plain"
        }
        fn version(&self) -> &str {
            "1.0"
        }
        fn feature_level(&self) -> u32 {
            1
        }
        fn access(&self, _: &[u8]) -> Option<Access> {
            None
        }
        fn execute(
            &mut self,
            _: &resp::Command,
            _: &mut Ctx<'_>,
            _: &mut bytes::BytesMut,
        ) -> Result<(), CommandError> {
            unreachable!("no commands")
        }
    }

    /// xorshift64*, so that a failing seed replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    /// One random write the active's state accepts, applied and queued in the outbox.
    fn write(rng: &mut Rng, state: &mut State, outbox: &mut Outbox) {
        let key = format!("k{}", rng.below(3000));
        // Values up to 400 bytes: with small frames, shards split over several of them.
        let value = "v".repeat(1 + rng.below(400) as usize);
        let (mut key, mut value) = (key.into_bytes(), value.into_bytes());
        let op = match rng.below(9) {
            0 if state.units.get(&key).is_none() => Op::UnitCreate,
            1 if state.units.get(&key).is_some() => Op::UnitUpdate,
            2 if state.units.get(&key).is_some() => Op::UnitEnd,
            3 => Op::DbDelete,
            // Deadlines of keys that expire, which every engine indexes.
            6 | 7 => {
                key = crate::expiry::record_key(&key);
                value = crate::expiry::encode(rng.below(1000)).to_vec();
                Op::DbPut
            }
            8 if rng.below(1000) == 0 => Op::Control(control::FLUSH_DB),
            8 => {
                key = crate::expiry::record_key(&key);
                Op::DbDelete
            }
            _ => Op::DbPut,
        };
        state.apply(op, &key, &value).unwrap();
        outbox.push(Instant::now(), op, &key, &value);
    }

    /// A chunk whose records are not all of its shards, in order, is refused before it
    /// changes anything.
    #[test]
    fn a_chunk_with_a_record_out_of_its_shards_is_refused_whole() {
        let key = b"somewhere";
        let shard = shard_of(key_hash(key));
        let other = b"elsewhere";
        let shard_other = shard_of(key_hash(other));
        assert_ne!(shard, shard_other);
        let chunk = |shards: &[(usize, &[u8])]| {
            let mut frames = Vec::new();
            let mut w = ChunkWriter::new(1 << 20);
            for &(s, key) in shards {
                w.begin_shard(s, 1, &mut |f| frames.push(f));
                w.push(Op::DbPut, key, b"v", &mut |f| frames.push(f));
            }
            w.flush(&mut |f| frames.push(f));
            decode_exact(&frames[0]).unwrap().payload
        };
        let (lo, hi) = if shard < shard_other {
            ((shard, &key[..]), (shard_other, &other[..]))
        } else {
            ((shard_other, &other[..]), (shard, &key[..]))
        };
        let wrong_shard = chunk(&[((shard + 1) % SHARDS, key)]);
        let out_of_order = chunk(&[(lo.0, hi.1), (hi.0, lo.1)]);
        for payload in [wrong_shard, out_of_order] {
            catch_up::validate_chunk(&payload).unwrap();
            let mut state = State::default();
            state.apply(Op::DbPut, key, b"before").unwrap();
            let digest = state.digest();
            let mut r = Restore::default();
            assert!(r.chunk(&Plain, &mut state, 1, payload).is_err());
            assert_eq!(state.digest(), digest, "nothing changed");
            assert_eq!(r.shards_held, 0);
        }
        let mut state = State::default();
        Restore::default()
            .chunk(&Plain, &mut state, 1, chunk(&[lo, hi]))
            .unwrap();
        assert_eq!(state.db.get(key), Some(&b"v"[..]));
        assert_eq!(state.db.get(other), Some(&b"v"[..]));
    }

    /// The frames of one link, in the order the sender hands them out: chunks go ahead of the
    /// batches not yet sent, the batches in sequence.
    #[test]
    fn a_standby_restoring_while_writes_go_on_ends_with_the_actives_state() {
        for seed in 1..=20u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut active = State::default();
            let mut outbox = Outbox::new(BatchConfig::default(), 0);
            for _ in 0..5000 {
                write(&mut rng, &mut active, &mut outbox);
            }
            if seed % 2 == 1 {
                // Pair-level state goes with the snapshot too.
                let features = Op::Control(control::FEATURES_ENABLED);
                active.apply(features, b"", b"").unwrap();
                outbox.push(Instant::now(), features, b"", b"");
            }
            outbox.seal();
            let start = outbox.seq_sealed();
            outbox.pin(Some(start));
            let mut cursor = Cursor::new(256 + rng.below(8 << 10) as usize);
            let mut wire: VecDeque<Bytes> = VecDeque::new();
            let (mut sent, mut end) = (start, None);
            while end.is_none() {
                for _ in 0..rng.below(40) {
                    write(&mut rng, &mut active, &mut outbox);
                }
                if rng.below(2) == 0 {
                    outbox.seal();
                }
                // Some of the sealed batches go out before this slice, the rest after it.
                while rng.below(3) != 0 {
                    let Some(b) = outbox.batch_after(sent) else {
                        break;
                    };
                    sent = b.seq_last;
                    wire.push_back(b.frame.clone());
                }
                if cursor.step(&active, outbox.seq_last(), &mut |f| wire.push_back(f)) {
                    outbox.seal();
                    let e = cursor.end(&active, outbox.seq_sealed());
                    let mut f = bytes::BytesMut::new();
                    e.encode(&mut f);
                    wire.push_back(f.freeze());
                    end = Some(e);
                }
            }
            while let Some(b) = outbox.batch_after(sent) {
                sent = b.seq_last;
                wire.push_back(b.frame.clone());
            }

            let mut app = Plain;
            let mut standby = State::default();
            let mut restore = Some(Restore::default());
            let mut applied = start;
            for f in wire {
                let f = decode_exact(&f).unwrap();
                match f.kind {
                    Kind::SnapshotChunk => {
                        catch_up::validate_chunk(&f.payload).unwrap();
                        let r = restore.as_mut().unwrap();
                        r.chunk(&app, &mut standby, f.seq, f.payload).unwrap();
                    }
                    Kind::SnapshotEnd => {
                        let e = SnapshotEnd::decode(f.seq, f.payload).unwrap();
                        restore.as_mut().unwrap().end(e).unwrap();
                    }
                    Kind::Batch => {
                        let count = Records::validate(Kind::Batch, &f.payload).unwrap() as u64;
                        assert_eq!(f.seq - count, applied, "seed {seed}: batches in order");
                        let r = restore.as_ref();
                        apply_batch(
                            &mut app,
                            &mut standby,
                            r,
                            applied + 1,
                            f.payload,
                            |_, _, _| {},
                        )
                        .unwrap();
                        applied = f.seq;
                    }
                    other => panic!("{other:?}"),
                }
                if let Some(done) = restore.as_ref().and_then(|r| r.finished(applied, &standby)) {
                    assert_eq!(done, Ok(end.as_ref().unwrap().seq), "seed {seed}");
                    restore = None;
                }
            }
            assert!(restore.is_none(), "seed {seed}: never verified");
            assert_eq!(applied, outbox.seq_last());
            assert_eq!(standby.digest(), active.digest(), "seed {seed}");
            assert_eq!(standby.db.len(), active.db.len());
            assert_eq!(standby.units.len(), active.units.len());
            assert_eq!(standby.features_enabled, active.features_enabled);
            assert!(
                standby.expiries == active.expiries,
                "seed {seed}: deadlines indexed"
            );
            assert!(!active.expiries.is_empty());
        }
    }
}
