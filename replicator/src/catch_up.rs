//! Catch-up of a new standby while the active keeps serving: the state goes over in shards,
//! a few at a time, interleaved with the live stream.
//!
//! The state of both engines is split into [`SHARDS`] shards by a fixed hash of the key
//! ([`shard_of`]), the same on every engine and version. The active encodes whole shards,
//! as they are at that moment, into snapshot-chunk frames, a bounded slice per turn of its
//! engine thread, while the batches after the snapshot's start stream to the standby as
//! usual. Each chunk frame carries the sequence its shards are as of (the frame header's
//! sequence: the last update the active had applied) and the range of shards it covers:
//!
//! ```text
//! payload: u16 shard_from | u16 shard_to (inclusive) | u32 count | count records
//! ```
//!
//! A shard too big for one frame is split over several frames of the same shard and
//! sequence. The receiving side (see `Restore` in the engine) replaces a shard the first time
//! a frame names it, and applies a batch record only to a shard it holds already, and only if
//! the record is newer than the shard's chunk. In whatever order chunks and batches
//! interleave, the standby ends with the active's state; the snapshot end names a sequence
//! (a batch boundary) and the active's digest there, which the standby checks when it has
//! applied up to it.

use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes};

use crate::frame::{FrameBuf, FrameError, Kind};
use crate::record::{self, Op, RecordRefs};

/// Shards of the state. Part of the protocol: both ends must agree.
pub const SHARDS: usize = 4096;
const SHARD_BITS: u32 = SHARDS.trailing_zeros();
/// The shard index is taken from the middle of the key hash: hash tables use the low bits
/// (bucket) and the top seven (tag), which must vary within a shard.
const SHARD_SHIFT: u32 = 44;

/// The hash of a key: XXH3-64 with seed 0, a fixed specification (the shard of a key and the
/// state digest must not change with the compiler or the platform).
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The shard a key belongs to, from its [`key_hash`].
pub fn shard_of(hash: u64) -> usize {
    ((hash >> SHARD_SHIFT) as usize) & ((1 << SHARD_BITS) - 1)
}

/// Chunk-frame payload bytes before the records' count.
const CHUNK_HEADER_BYTES: usize = 4;

/// Builds snapshot-chunk frames of whole shards: call [`ChunkWriter::begin_shard`] for each
/// shard in increasing order, then [`ChunkWriter::push`] its records; a frame is sealed
/// whenever it would exceed the size limit, and by [`ChunkWriter::flush`]. Frames are cut
/// from one arena of several frames, which is reused once the frames cut from it are
/// dropped: a frame per allocation would be above malloc's mmap threshold, and every frame
/// would cost fresh pages, faulted in and zeroed by the kernel.
pub struct ChunkWriter {
    /// The arena; a frame is open while it holds a payload (at least the chunk header).
    frames: FrameBuf,
    bytes_max: usize,
    shard_from: usize,
    shard_to: usize,
    count: u32,
    seq: u64,
}

/// Frames per arena.
const FRAMES_PER_ARENA: usize = 8;

impl ChunkWriter {
    /// Frames of about `bytes_max` payload bytes (a single larger record gets a frame of its
    /// own).
    pub fn new(bytes_max: usize) -> ChunkWriter {
        ChunkWriter {
            frames: FrameBuf::with_capacity(FRAMES_PER_ARENA * Self::room(bytes_max)),
            bytes_max,
            shard_from: 0,
            shard_to: 0,
            count: 0,
            seq: 0,
        }
    }

    /// Bytes a frame of `bytes_max` payload bytes takes at most, but for its last record.
    fn room(bytes_max: usize) -> usize {
        crate::frame::HEADER_BYTES + CHUNK_HEADER_BYTES + 4 + bytes_max
    }

    /// Starts shard `shard`, as it is after update `seq`: it belongs to the open frame (opened
    /// now if none is), which is sealed first if its shards are as of another sequence.
    pub fn begin_shard(&mut self, shard: usize, seq: u64, emit: &mut impl FnMut(Bytes)) {
        debug_assert!(shard < SHARDS);
        if self.is_open() && self.seq != seq {
            self.flush(emit);
        }
        if !self.is_open() {
            self.start(shard);
        }
        self.shard_to = shard;
        self.seq = seq;
    }

    fn is_open(&self) -> bool {
        self.frames.payload_len() > 0
    }

    fn start(&mut self, shard: usize) {
        self.frames
            .payload_mut()
            .put_bytes(0, CHUNK_HEADER_BYTES + 4);
        self.shard_from = shard;
        self.shard_to = shard;
        self.count = 0;
    }

    /// Appends one record of the current shard (after [`Self::begin_shard`]).
    pub fn push(&mut self, op: Op, key: &[u8], value: &[u8], emit: &mut impl FnMut(Bytes)) {
        self.make_room(record::encoded_len(key, value), emit);
        record::put(self.frames.payload_mut(), op, key, value);
        self.count += 1;
    }

    /// [`Self::push`] of a record whose key (its first `key_len` bytes) and value lie back to
    /// back in `entry`, as in the engine's shard arenas: one copy per record.
    pub fn push_entry(
        &mut self,
        op: Op,
        key_len: usize,
        entry: &[u8],
        emit: &mut impl FnMut(Bytes),
    ) {
        self.make_room(record::RECORD_HEADER_BYTES + entry.len(), emit);
        record::put_entry(self.frames.payload_mut(), op, key_len, entry);
        self.count += 1;
    }

    /// Seals the open frame if a record of `len` bytes would take it over the limit.
    fn make_room(&mut self, len: usize, emit: &mut impl FnMut(Bytes)) {
        assert!(self.is_open(), "push after begin_shard");
        let full = self.count > 0 && self.pending_bytes() + len > self.bytes_max;
        if full {
            // The rest of this shard continues in a frame of the same shard and sequence.
            let shard = self.shard_to;
            self.flush(emit);
            self.start(shard);
        }
    }

    /// Payload bytes in the open frame.
    pub fn pending_bytes(&self) -> usize {
        self.frames.payload_len()
    }

    /// Seals the open frame, if any (a frame of shards with no records goes too: the receiver
    /// learns that those shards are empty).
    pub fn flush(&mut self, emit: &mut impl FnMut(Bytes)) {
        if !self.is_open() {
            return;
        }
        let head = &mut self.frames.payload_mut()[crate::frame::HEADER_BYTES..];
        head[0..2].copy_from_slice(&(self.shard_from as u16).to_le_bytes());
        head[2..4].copy_from_slice(&(self.shard_to as u16).to_le_bytes());
        head[4..8].copy_from_slice(&self.count.to_le_bytes());
        let room = Self::room(self.bytes_max);
        emit(self.frames.seal_and_continue_with_room(
            Kind::SnapshotChunk,
            self.seq,
            room,
            FRAMES_PER_ARENA * room,
        ));
    }
}

/// A decoded chunk: the shards it covers and its records, borrowed from the payload.
pub struct Chunk<'a> {
    pub shards: RangeInclusive<usize>,
    pub records: RecordRefs<'a>,
}

/// Decodes a chunk frame's payload (the records are checked as they are iterated).
pub fn decode_chunk(payload: &[u8]) -> Result<Chunk<'_>, FrameError> {
    let malformed = FrameError::Malformed {
        kind: Kind::SnapshotChunk,
        what: "shard range",
    };
    let Some((range, records)) = payload.split_first_chunk::<4>() else {
        return Err(malformed);
    };
    let from = u16::from_le_bytes([range[0], range[1]]) as usize;
    let to = u16::from_le_bytes([range[2], range[3]]) as usize;
    if from > to || to >= SHARDS {
        return Err(malformed);
    }
    Ok(Chunk {
        shards: from..=to,
        records: RecordRefs::new(Kind::SnapshotChunk, records)?,
    })
}

/// Checks a whole chunk frame's payload: its range and that it holds exactly its records.
/// That each key belongs to one of the chunk's shards is checked where the chunk is applied,
/// with the key hash that the apply computes anyway.
pub fn validate_chunk(payload: &[u8]) -> Result<(), FrameError> {
    for r in decode_chunk(payload)?.records {
        r?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_exact;

    fn by_shard(n: u32) -> Vec<Vec<(Bytes, Bytes)>> {
        let mut shards = vec![Vec::new(); SHARDS];
        for i in 0..n {
            let key = Bytes::from(format!("key{i}"));
            shards[shard_of(key_hash(&key))]
                .push((key, Bytes::from(vec![i as u8; (i % 300) as usize])));
        }
        shards
    }

    #[test]
    fn chunks_cover_every_shard_once_in_order_and_respect_the_bound() {
        let shards = by_shard(20_000);
        let mut frames = Vec::new();
        let mut emit = |f: Bytes| frames.push(f);
        let mut w = ChunkWriter::new(4096);
        for (j, entries) in shards.iter().enumerate() {
            w.begin_shard(j, 9, &mut emit);
            for (k, v) in entries {
                w.push(Op::DbPut, k, v, &mut emit);
            }
            if w.pending_bytes() > 2048 {
                w.flush(&mut emit);
            }
        }
        w.flush(&mut emit);
        let mut next = 0;
        let mut seen = vec![Vec::new(); SHARDS];
        for f in &frames {
            let f = decode_exact(f).unwrap();
            assert_eq!((f.kind, f.seq), (Kind::SnapshotChunk, 9));
            assert!(f.payload.len() <= 4096 + 8 + 300 + 16);
            validate_chunk(&f.payload).unwrap();
            let chunk = decode_chunk(&f.payload).unwrap();
            // Consecutive: a frame starts at the next shard, or continues the last one.
            assert!(*chunk.shards.start() == next || *chunk.shards.start() + 1 == next);
            next = chunk.shards.end() + 1;
            for r in chunk.records {
                let r = r.unwrap();
                seen[shard_of(key_hash(r.key))].push((
                    Bytes::copy_from_slice(r.key),
                    Bytes::copy_from_slice(r.value),
                ));
            }
        }
        assert_eq!(next, SHARDS);
        assert_eq!(seen, shards);
    }

    #[test]
    fn the_key_hash_is_xxh3() {
        // The published XXH3-64 test vector of the empty input, seed 0.
        assert_eq!(key_hash(b""), 0x2D06_8005_38D3_94C2);
    }
}
