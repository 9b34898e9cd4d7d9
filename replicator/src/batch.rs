//! The active's outbox: sequence numbers, group commit into batch frames, and the backlog.
//!
//! Updates are appended as records straight into the open batch frame. A batch is sealed
//! when the link can take it (group commit: while one batch is in flight, the next fills) or
//! when it reaches its byte or update limit. Sealed frames stay in a bounded backlog so that a
//! standby can be streamed what it has not seen yet: after a snapshot, or after a switchover
//! where the old active resumes as standby from the step-up sequence.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};

use crate::frame::{FrameBuf, Kind};
use crate::record::{self, Op};

#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// A batch closes when its payload reaches this many bytes...
    pub batch_bytes_max: usize,
    /// ...or holds this many updates...
    pub batch_updates_max: u32,
    /// ...or its first update has waited this long while the link had room.
    pub batch_delay: Duration,
    /// Sealed frames kept for resuming standbys; older ones are dropped.
    pub backlog_bytes_max: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            batch_bytes_max: 256 << 10,
            batch_updates_max: 4096,
            batch_delay: Duration::ZERO,
            backlog_bytes_max: 64 << 20,
        }
    }
}

/// A sealed batch: its sequence range and the finished frame.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub seq_first: u64,
    pub seq_last: u64,
    pub frame: Bytes,
}

pub struct Outbox {
    config: BatchConfig,
    open: FrameBuf,
    open_updates: u32,
    open_since: Option<Instant>,
    seq_last: u64,
    seq_sealed: u64,
    backlog: VecDeque<Sealed>,
    backlog_bytes: usize,
    /// The oldest sequence a standby still needs from the backlog.
    pin: Option<u64>,
}

const COUNT_BYTES: usize = 4;
/// Batches are built one after another in one arena of this size.
const ARENA_BYTES: usize = 1 << 20;

fn fresh_batch() -> FrameBuf {
    let mut frame = FrameBuf::with_capacity(ARENA_BYTES);
    frame.payload_mut().put_u32_le(0); // update count, filled in when sealed
    frame
}

impl Outbox {
    /// `seq_last` is the last sequence already applied (the outbox continues after it).
    pub fn new(config: BatchConfig, seq_last: u64) -> Outbox {
        Outbox {
            config,
            open: fresh_batch(),
            open_updates: 0,
            open_since: None,
            seq_last,
            seq_sealed: seq_last,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            pin: None,
        }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Appends one update to the open batch and returns its sequence number. A batch never
    /// outgrows a frame: one command that writes a lot (a DEL of many large keys) closes the
    /// open batch early rather than build a frame the protocol refuses.
    pub fn push(&mut self, now: Instant, op: Op, key: &[u8], value: &[u8]) -> u64 {
        let frame_bytes_after = self.open.payload_len() + record::encoded_len(key, value);
        if self.has_open() && frame_bytes_after > crate::frame::PAYLOAD_BYTES_MAX {
            self.seal();
        }
        record::put(self.open.payload_mut(), op, key, value);
        self.open_updates += 1;
        self.open_since.get_or_insert(now);
        self.seq_last += 1;
        self.seq_last
    }

    /// The last sequence handed out.
    pub fn seq_last(&self) -> u64 {
        self.seq_last
    }

    /// The last sequence in a sealed batch.
    pub fn seq_sealed(&self) -> u64 {
        self.seq_sealed
    }

    pub fn has_open(&self) -> bool {
        self.open_updates > 0
    }

    /// How many more payload bytes the open batch takes before it must be sealed.
    pub fn room(&self) -> usize {
        crate::frame::PAYLOAD_BYTES_MAX.saturating_sub(self.open.payload_len())
    }

    /// The open batch has reached a limit: it must be sealed before it takes more.
    pub fn is_full(&self) -> bool {
        self.open_updates >= self.config.batch_updates_max
            || self.open.payload_len() >= self.config.batch_bytes_max
    }

    /// When the open batch's delay runs out (None if it is empty or there is no delay).
    pub fn deadline(&self) -> Option<Instant> {
        self.open_since.map(|t| t + self.config.batch_delay)
    }

    /// Should the open batch be sealed now, given that the link has room for it?
    pub fn ready(&self, now: Instant) -> bool {
        self.has_open() && (self.is_full() || self.deadline().is_some_and(|d| now >= d))
    }

    /// Closes the open batch into a frame and keeps it in the backlog.
    pub fn seal(&mut self) -> Option<&Sealed> {
        if !self.has_open() {
            return None;
        }
        self.open.payload_mut()[crate::frame::HEADER_BYTES..][..COUNT_BYTES]
            .copy_from_slice(&self.open_updates.to_le_bytes());
        let frame = self
            .open
            .seal_and_continue(Kind::Batch, self.seq_last, ARENA_BYTES);
        self.open.payload_mut().put_u32_le(0);
        let sealed = Sealed {
            seq_first: self.seq_sealed + 1,
            seq_last: self.seq_last,
            frame,
        };
        debug_assert!(sealed.seq_first <= sealed.seq_last);
        self.seq_sealed = self.seq_last;
        self.open_updates = 0;
        self.open_since = None;
        self.backlog_bytes += sealed.frame.len();
        self.backlog.push_back(sealed);
        self.trim();
        self.backlog.back()
    }

    /// Keeps the frames after `seq` while a standby still needs them (None: no standby).
    pub fn pin(&mut self, seq: Option<u64>) {
        self.pin = seq;
    }

    /// Drops the oldest frames over the byte limit, but never one after the pin unless the
    /// hard limit of twice the configured bytes is reached.
    fn trim(&mut self) {
        while self.backlog_bytes > self.config.backlog_bytes_max {
            let Some(front) = self.backlog.front() else {
                break;
            };
            let needed = self.pin.is_some_and(|s| front.seq_last > s);
            if needed && self.backlog_bytes <= 2 * self.config.backlog_bytes_max {
                break;
            }
            self.backlog_bytes -= front.frame.len();
            self.backlog.pop_front();
        }
    }

    /// Can a standby that has applied `seq` be streamed from the backlog alone? Only from a
    /// batch boundary: batches are never split.
    pub fn covers(&self, seq: u64) -> bool {
        seq == self.seq_sealed || self.batch_after(seq).is_some()
    }

    /// The sealed batch that starts right after `seq`, if still in the backlog.
    pub fn batch_after(&self, seq: u64) -> Option<&Sealed> {
        let front = self.backlog.front()?;
        if seq + 1 < front.seq_first || seq >= self.seq_sealed {
            return None;
        }
        // Batches are contiguous, so a binary search on the first sequence finds it.
        let i = self.backlog.partition_point(|s| s.seq_last <= seq);
        self.backlog.get(i).filter(|s| s.seq_first == seq + 1)
    }

    pub fn backlog_bytes(&self) -> usize {
        self.backlog_bytes
    }

    /// Forgets everything after a restore: the outbox continues after `seq`.
    pub fn reset(&mut self, seq: u64) {
        *self = Outbox::new(self.config.clone(), seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::decode_exact;
    use crate::record::Records;

    fn outbox() -> Outbox {
        Outbox::new(
            BatchConfig {
                backlog_bytes_max: 1 << 20,
                ..BatchConfig::default()
            },
            0,
        )
    }

    #[test]
    fn sequences_increase_and_batches_are_contiguous() {
        let now = Instant::now();
        let mut out = outbox();
        for round in 0..10u64 {
            for i in 0..=round {
                out.push(now, Op::DbPut, format!("k{round}.{i}").as_bytes(), b"v");
            }
            let sealed = out.seal().unwrap().clone();
            let frame = decode_exact(&sealed.frame).unwrap();
            assert_eq!(frame.seq, sealed.seq_last);
            let n = Records::validate(Kind::Batch, &frame.payload).unwrap() as u64;
            assert_eq!(n, sealed.seq_last - sealed.seq_first + 1);
        }
        assert_eq!(out.seq_last(), 55);
        let mut seq = 0;
        while let Some(b) = out.batch_after(seq) {
            assert_eq!(b.seq_first, seq + 1);
            seq = b.seq_last;
        }
        assert_eq!(seq, 55);
        assert!(out.covers(0) && out.covers(10) && out.covers(55));
        assert!(out.seal().is_none());
    }

    #[test]
    fn a_full_batch_is_ready_and_a_delayed_one_waits() {
        let now = Instant::now();
        let mut out = Outbox::new(
            BatchConfig {
                batch_updates_max: 3,
                batch_delay: Duration::from_millis(5),
                ..BatchConfig::default()
            },
            0,
        );
        out.push(now, Op::DbPut, b"a", b"1");
        assert!(!out.ready(now));
        assert!(out.ready(now + Duration::from_millis(5)));
        out.push(now, Op::DbPut, b"b", b"1");
        out.push(now, Op::DbPut, b"c", b"1");
        assert!(out.is_full() && out.ready(now));
    }

    #[test]
    fn a_batch_never_outgrows_a_frame() {
        let now = Instant::now();
        let mut out = Outbox::new(
            BatchConfig {
                batch_bytes_max: usize::MAX,
                ..BatchConfig::default()
            },
            0,
        );
        let value = vec![1u8; 1 << 20];
        for i in 0..40u32 {
            out.push(now, Op::DbPut, &i.to_le_bytes(), &value);
        }
        out.seal();
        let mut seq = 0;
        while let Some(b) = out.batch_after(seq) {
            assert!(b.frame.len() <= crate::frame::HEADER_BYTES + crate::frame::PAYLOAD_BYTES_MAX);
            seq = b.seq_last;
        }
        assert_eq!(seq, 40);
    }

    #[test]
    fn the_backlog_is_bounded() {
        let now = Instant::now();
        let mut out = Outbox::new(
            BatchConfig {
                backlog_bytes_max: 10_000,
                ..BatchConfig::default()
            },
            100,
        );
        for _ in 0..1000 {
            out.push(now, Op::DbPut, b"key", &[7u8; 100]);
            out.seal();
        }
        assert!(out.backlog_bytes() <= 10_000);
        assert!(!out.covers(100));
        assert!(out.covers(out.seq_sealed()));
        assert!(out.batch_after(out.seq_sealed() - 1).is_some());
    }
}
