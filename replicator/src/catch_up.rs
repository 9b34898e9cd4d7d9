//! Snapshot encoding for a new or returning standby: the full state as records, in bounded
//! chunk frames, encoded in parallel with rayon.
//!
//! The chunk boundaries are found in one cheap sequential pass over the record sizes; the
//! encoding (copying keys and values, computing the CRC) runs on all cores.

use bytes::{BufMut, Bytes};
use rayon::prelude::*;

use crate::frame::{FrameBuf, Kind};
use crate::record::{self, Op};

/// One entry of the state to snapshot (key and value share the engine's buffers).
pub type Entry = (Op, Bytes, Bytes);

/// Encodes `entries` into snapshot-chunk frames of at most about `chunk_bytes_max` payload
/// bytes each (a single record larger than that gets a chunk of its own), on every core.
pub fn encode_snapshot(entries: &[Entry], seq: u64, chunk_bytes_max: usize) -> Vec<Bytes> {
    chunk_ranges(entries, chunk_bytes_max)
        .into_par_iter()
        .map(|range| encode_chunk(entries, range, seq))
        .collect()
}

/// The same chunks one after another on the calling thread, for a writer that must leave the
/// other cores to serving (the journal's checkpoint).
pub fn encode_snapshot_sequential(
    entries: &[Entry],
    seq: u64,
    chunk_bytes_max: usize,
) -> impl Iterator<Item = Bytes> + '_ {
    chunk_ranges(entries, chunk_bytes_max)
        .into_iter()
        .map(move |range| encode_chunk(entries, range, seq))
}

/// `(from, to, payload bytes)` of each chunk, in one cheap pass over the record sizes.
fn chunk_ranges(entries: &[Entry], chunk_bytes_max: usize) -> Vec<(usize, usize, usize)> {
    let mut ranges = Vec::new();
    let (mut start, mut bytes) = (0, 4);
    for (i, (_, k, v)) in entries.iter().enumerate() {
        let len = record::encoded_len(k, v);
        if i > start && bytes + len > chunk_bytes_max {
            ranges.push((start, i, bytes));
            (start, bytes) = (i, 4);
        }
        bytes += len;
    }
    if start < entries.len() {
        ranges.push((start, entries.len(), bytes));
    }
    ranges
}

fn encode_chunk(entries: &[Entry], (from, to, bytes): (usize, usize, usize), seq: u64) -> Bytes {
    let mut frame = FrameBuf::with_capacity(bytes);
    let out = frame.payload_mut();
    out.put_u32_le((to - from) as u32);
    for (op, k, v) in &entries[from..to] {
        record::put(out, *op, k, v);
    }
    frame.seal(Kind::SnapshotChunk, seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_exact;
    use crate::record::Records;

    #[test]
    fn chunks_hold_every_entry_in_order_and_respect_the_bound() {
        let entries: Vec<Entry> = (0..10_000u32)
            .map(|i| {
                (
                    Op::DbPut,
                    Bytes::from(format!("key{i}")),
                    Bytes::from(vec![i as u8; (i % 50) as usize]),
                )
            })
            .collect();
        let chunks = encode_snapshot(&entries, 77, 4096);
        assert!(chunks.len() > 10);
        let mut seen = Vec::new();
        for c in &chunks {
            let f = decode_exact(c).unwrap();
            assert_eq!((f.kind, f.seq), (Kind::SnapshotChunk, 77));
            assert!(f.payload.len() <= 4096);
            for r in Records::new(Kind::SnapshotChunk, f.payload).unwrap() {
                seen.push(r.unwrap().key);
            }
        }
        let want: Vec<Bytes> = entries.iter().map(|e| e.1.clone()).collect();
        assert_eq!(seen, want);
        let sequential: Vec<Bytes> = encode_snapshot_sequential(&entries, 77, 4096).collect();
        assert_eq!(sequential, chunks);
    }

    #[test]
    fn an_empty_state_has_no_chunks() {
        assert!(encode_snapshot(&[], 0, 1024).is_empty());
    }
}
