//! Keys that expire. As in Redis, the active decides when a key has expired and replicates
//! its removal as deletes, so that both engines always agree on what exists: a standby never
//! expires anything by its own clock.
//!
//! A key's deadline is a database record of its own, under [`PREFIX`] + the key, holding
//! the deadline in Unix milliseconds (8 bytes, big-endian). It is written in the same batch
//! as the write that set it, so it replicates, snapshots and journals like every record,
//! between any two versions, with no change to the wire format. Every engine also keeps an
//! [`Index`] of deadlines (derived, never replicated), so that the active's sweep finds what
//! is due without a walk over the database.

use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Keys starting with this are tandem's own records; clients cannot name them.
pub const RESERVED: &[u8] = b"\xfftandem:";

/// The prefix of a deadline record: `PREFIX` + the key it belongs to.
pub const PREFIX: &[u8] = b"\xfftandem:expires:";

/// The deadline record's key for `key`.
pub fn record_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX.len() + key.len());
    k.extend_from_slice(PREFIX);
    k.extend_from_slice(key);
    k
}

pub fn encode(deadline_ms: u64) -> [u8; 8] {
    deadline_ms.to_be_bytes()
}

/// The deadline a record holds; None if it is not 8 bytes (never written by tandem).
pub fn decode(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// The deadlines of every key that has one, in deadline order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Index {
    by_deadline: BTreeSet<(u64, Box<[u8]>)>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.by_deadline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_deadline.is_empty()
    }

    /// Notes a deadline record `record` (with its prefix) changing from `old` to `new`.
    pub fn note(&mut self, record: &[u8], old: Option<u64>, new: Option<u64>) {
        let Some(key) = record.strip_prefix(PREFIX) else {
            return;
        };
        if let Some(old) = old {
            self.by_deadline.remove(&(old, Box::from(key)));
        }
        if let Some(new) = new {
            self.by_deadline.insert((new, Box::from(key)));
        }
    }

    /// The key with the earliest deadline, if that deadline is at or before `now_ms`.
    pub fn first_due(&self, now_ms: u64) -> Option<&[u8]> {
        let (deadline, key) = self.by_deadline.first()?;
        (*deadline <= now_ms).then_some(&key[..])
    }

    pub fn clear(&mut self) {
        self.by_deadline.clear();
    }
}

/// The wall clock that expiry reads, in Unix milliseconds, derived from the monotonic clock
/// (a command reads no clock of its own) and set again from the system's clock on every
/// sweep, so it follows the system clock to within a sweep's period.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    pub fn now() -> WallClock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        WallClock {
            at: Instant::now(),
            unix_ms,
        }
    }

    /// A clock that reads `unix_ms` at `at` (tests).
    pub fn fixed(at: Instant, unix_ms: u64) -> WallClock {
        WallClock { at, unix_ms }
    }

    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_ms + now.saturating_duration_since(self.at).as_millis() as u64
    }
}

/// How often the active looks for expired keys, how many it removes at most per turn, and
/// how many turns (other tasks running between them) it takes per look while turns come
/// back full: at most 200,000 keys a second, and never a stall of more than one turn (about
/// 0.5 ms of 200 keys on a 2-vCPU VM with 300,000 keys due at once; bench/RESULTS.md).
pub const SWEEP_PERIOD: std::time::Duration = std::time::Duration::from_millis(100);
pub const SWEEP_KEYS_MAX: usize = 200;
pub const SWEEP_TURNS_MAX: usize = 100;
