//! Run-state update records: the work-unit descriptions and database activities that the
//! active streams to the standby (claims 9 and 11).
//!
//! The replicator knows the *shape* of an update, not its meaning: a work unit has an id and a
//! description body, a database activity a key and a value, and the bodies are the
//! application's own encoding. Every record is an 8-byte header and two byte strings:
//!
//! ```text
//! | kind u8 | op u8 | key_len u16 | value_len u32 | key | value |
//! ```
//!
//! Records are appended straight into the frame being built, and decoded as zero-copy slices
//! of the received frame.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{FrameError, Kind};

pub const RECORD_HEADER_BYTES: usize = 8;
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;
pub const VALUE_BYTES_MAX: usize = 8 << 20;

/// What a record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A work unit was created (or, in a snapshot, exists) with this description.
    UnitCreate,
    /// A work unit's description changed.
    UnitUpdate,
    /// A work unit ended and leaves the registry.
    UnitEnd,
    /// A database record was written.
    DbPut,
    /// A database record was deleted.
    DbDelete,
    /// A pair-level event that travels in order with the updates (e.g. features enabled);
    /// the code is the engine's.
    Control(u8),
}

impl Op {
    fn to_wire(self) -> (u8, u8) {
        match self {
            Op::UnitCreate => (1, 1),
            Op::UnitUpdate => (1, 2),
            Op::UnitEnd => (1, 3),
            Op::DbPut => (2, 1),
            Op::DbDelete => (2, 2),
            Op::Control(code) => (3, code),
        }
    }

    fn from_wire(kind: u8, op: u8) -> Option<Op> {
        Some(match (kind, op) {
            (1, 1) => Op::UnitCreate,
            (1, 2) => Op::UnitUpdate,
            (1, 3) => Op::UnitEnd,
            (2, 1) => Op::DbPut,
            (2, 2) => Op::DbDelete,
            (3, code) => Op::Control(code),
            _ => return None,
        })
    }

    pub fn is_unit(self) -> bool {
        matches!(self, Op::UnitCreate | Op::UnitUpdate | Op::UnitEnd)
    }
}

/// One decoded update; `key` and `value` share the frame's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub op: Op,
    pub key: Bytes,
    pub value: Bytes,
}

impl Record {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            op: self.op,
            key: &self.key,
            value: &self.value,
        }
    }
}

/// One decoded update borrowed from its frame: what a snapshot chunk's restore reads, with
/// no reference count to touch per record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub op: Op,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Decodes the record at the start of `buf`: the record and the bytes after it.
fn split_record(buf: &[u8]) -> Option<(RecordRef<'_>, &[u8])> {
    let head = buf.get(..RECORD_HEADER_BYTES)?;
    let op = Op::from_wire(head[0], head[1])?;
    let key_len = u16::from_le_bytes([head[2], head[3]]) as usize;
    let value_len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if value_len > VALUE_BYTES_MAX || buf.len() < RECORD_HEADER_BYTES + key_len + value_len {
        return None;
    }
    let (key, rest) = buf[RECORD_HEADER_BYTES..].split_at(key_len);
    let (value, rest) = rest.split_at(value_len);
    Some((RecordRef { op, key, value }, rest))
}

/// The encoded size of a record, to check limits before appending.
pub fn encoded_len(key: &[u8], value: &[u8]) -> usize {
    RECORD_HEADER_BYTES + key.len() + value.len()
}

/// Appends one record. Panics if the key or value is over its limit: callers validate client
/// input before it becomes an update.
pub fn put(out: &mut BytesMut, op: Op, key: &[u8], value: &[u8]) {
    put_header(out, op, key.len(), value.len());
    out.put_slice(key);
    out.put_slice(value);
}

/// Appends one record whose key (the first `key_len` bytes of `entry`) and value lie back to
/// back in `entry`: the header, then one copy. Panics as [`put`] does.
pub fn put_entry(out: &mut BytesMut, op: Op, key_len: usize, entry: &[u8]) {
    put_header(out, op, key_len, entry.len() - key_len);
    out.put_slice(entry);
}

/// Appends a record's header, with room reserved for the key and value that follow.
fn put_header(out: &mut BytesMut, op: Op, key_len: usize, value_len: usize) {
    assert!(key_len <= KEY_BYTES_MAX && value_len <= VALUE_BYTES_MAX);
    let (kind, code) = op.to_wire();
    let mut head = [0u8; RECORD_HEADER_BYTES];
    head[0] = kind;
    head[1] = code;
    head[2..4].copy_from_slice(&(key_len as u16).to_le_bytes());
    head[4..8].copy_from_slice(&(value_len as u32).to_le_bytes());
    out.reserve(RECORD_HEADER_BYTES + key_len + value_len);
    out.put_slice(&head);
}

/// Iterates over the records of a payload (a u32 record count, then the records) as borrowed
/// slices. Yields at most one error, then ends.
#[derive(Clone)]
pub struct RecordRefs<'a> {
    rest: &'a [u8],
    left: u32,
    frame: Kind,
    failed: bool,
}

impl<'a> RecordRefs<'a> {
    pub fn new(frame: Kind, payload: &'a [u8]) -> Result<RecordRefs<'a>, FrameError> {
        let (count, rest) = payload
            .split_first_chunk::<4>()
            .ok_or(FrameError::Malformed {
                kind: frame,
                what: "count",
            })?;
        Ok(RecordRefs {
            rest,
            left: u32::from_le_bytes(*count),
            frame,
            failed: false,
        })
    }

    fn fail(&mut self, what: &'static str) -> Option<Result<RecordRef<'a>, FrameError>> {
        self.failed = true;
        Some(Err(FrameError::Malformed {
            kind: self.frame,
            what,
        }))
    }
}

impl<'a> Iterator for RecordRefs<'a> {
    type Item = Result<RecordRef<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.left == 0 {
            return if self.rest.is_empty() {
                None
            } else {
                self.fail("bytes after the last record")
            };
        }
        self.left -= 1;
        match split_record(self.rest) {
            Some((r, rest)) => {
                self.rest = rest;
                Some(Ok(r))
            }
            None => self.fail("record"),
        }
    }
}

/// Iterates over the records of a batch or snapshot payload as [`Record`]s, whose key and
/// value share the payload's buffer. Yields at most one error, then ends.
pub struct Records {
    payload: Bytes,
    /// Where the next record starts in `payload`.
    at: usize,
    left: u32,
    frame: Kind,
    failed: bool,
}

impl Records {
    /// `payload` is a batch or snapshot-chunk payload: a u32 record count, then the records.
    pub fn new(frame: Kind, payload: Bytes) -> Result<Records, FrameError> {
        let left = RecordRefs::new(frame, &payload)?.left;
        Ok(Records {
            payload,
            at: 4,
            left,
            frame,
            failed: false,
        })
    }

    pub fn remaining(&self) -> u32 {
        self.left
    }

    /// Checks that the payload holds exactly the announced records, without applying any:
    /// a standby validates a whole batch before it changes its state.
    pub fn validate(frame: Kind, payload: &Bytes) -> Result<u32, FrameError> {
        let mut records = RecordRefs::new(frame, payload)?;
        let count = records.left;
        for r in records.by_ref() {
            r?;
        }
        Ok(count)
    }
}

impl Iterator for Records {
    type Item = Result<Record, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        // One parser: the borrowed iterator's, over what is left of the payload.
        let mut refs = RecordRefs {
            rest: &self.payload[self.at..],
            left: self.left,
            frame: self.frame,
            failed: self.failed,
        };
        let next = refs.next();
        self.at = self.payload.len() - refs.rest.len();
        self.left = refs.left;
        self.failed = refs.failed;
        Some(next?.map(|r| Record {
            op: r.op,
            key: self.payload.slice_ref(r.key),
            value: self.payload.slice_ref(r.value),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            Just(Op::UnitCreate),
            Just(Op::UnitUpdate),
            Just(Op::UnitEnd),
            Just(Op::DbPut),
            Just(Op::DbDelete),
            any::<u8>().prop_map(Op::Control),
        ]
    }

    proptest! {
        #[test]
        fn records_round_trip(recs in proptest::collection::vec(
            (arb_op(), proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..100)), 0..20)) {
            let mut out = BytesMut::new();
            out.put_u32_le(recs.len() as u32);
            for (op, k, v) in &recs { put(&mut out, *op, k, v); }
            let payload = out.freeze();
            prop_assert_eq!(Records::validate(Kind::Batch, &payload).unwrap() as usize, recs.len());
            let got: Vec<Record> = Records::new(Kind::Batch, payload).unwrap().map(|r| r.unwrap()).collect();
            prop_assert_eq!(got.len(), recs.len());
            for (g, (op, k, v)) in got.iter().zip(&recs) {
                prop_assert_eq!(g.op, *op);
                prop_assert_eq!(&g.key[..], &k[..]);
                prop_assert_eq!(&g.value[..], &v[..]);
            }
        }

        #[test]
        fn garbage_payloads_are_errors_not_panics(garbage in proptest::collection::vec(any::<u8>(), 0..200)) {
            let payload = Bytes::from(garbage);
            let _ = Records::validate(Kind::Batch, &payload);
            if let Ok(records) = Records::new(Kind::Batch, payload) {
                for _ in records.take(1000) {}
            }
        }
    }

    #[test]
    fn an_entry_encodes_as_its_key_and_value_would() {
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        put(&mut a, Op::UnitCreate, b"key", b"value");
        put_entry(&mut b, Op::UnitCreate, 3, b"keyvalue");
        assert_eq!(a, b);
    }

    #[test]
    fn truncated_record_is_malformed() {
        let mut out = BytesMut::new();
        out.put_u32_le(1);
        put(&mut out, Op::DbPut, b"key", b"value");
        let payload = out.freeze().slice(..10);
        assert!(Records::validate(Kind::Batch, &payload).is_err());
    }
}
