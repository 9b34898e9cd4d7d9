//! The simulated network: FIFO byte streams with per-message latency, partitions, slow links.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Rng, MS};

/// One direction of a connection. `None` is the end of the stream (the peer closed it).
#[derive(Default)]
pub struct Pipe {
    queue: VecDeque<(u64, Option<Bytes>)>,
    last_at: u64,
    closed: bool,
}

impl Pipe {
    /// Queues `frame`, delivered `latency` from `now` but never before what was sent earlier.
    pub fn send(&mut self, now: u64, latency: u64, frame: Bytes) {
        if self.closed {
            return;
        }
        self.last_at = self.last_at.max(now + latency);
        self.queue.push_back((self.last_at, Some(frame)));
    }

    /// The writer is done: the reader sees the end after what is queued.
    pub fn close(&mut self, now: u64) {
        if !self.closed {
            self.closed = true;
            self.last_at = self.last_at.max(now);
            self.queue.push_back((self.last_at, None));
        }
    }

    /// The writer's process died or the connection was reset: what it had not yet delivered
    /// is gone.
    pub fn drop_pending(&mut self) {
        self.queue.retain(|(_, frame)| frame.is_none()); // an end already sent still arrives
    }

    /// Everything delivered by `now` (nothing while `blocked`), and whether the end came.
    pub fn recv(&mut self, now: u64, blocked: bool, into: &mut Vec<u8>) -> bool {
        if blocked {
            return false;
        }
        while let Some((at, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            match self.queue.pop_front().expect("peeked").1 {
                Some(frame) => into.extend_from_slice(&frame),
                None => return true,
            }
        }
        false
    }

    pub fn next_at(&self) -> Option<u64> {
        self.queue.front().map(|(at, _)| *at)
    }
}

/// Latencies and the faults of the link between the two engines.
#[derive(Default)]
pub struct Latency {
    /// Until when each direction (0: a to b, 1: b to a) is partitioned.
    pub partitioned_until: [u64; 2],
    /// Until when the link between the engines is slow.
    pub slow_until: u64,
}

impl Latency {
    /// A message on this machine (client, supervisor): 20-200 µs.
    pub fn local(&self, rng: &mut Rng) -> u64 {
        rng.range(20_000, 200_000)
    }

    /// A message between the engines: as local, or 2-30 ms while the link is slow.
    pub fn between(&self, rng: &mut Rng, now: u64) -> u64 {
        if now < self.slow_until {
            rng.range(2 * MS, 30 * MS)
        } else {
            self.local(rng)
        }
    }

    /// Is the direction from engine `from` to the other one cut at `now`?
    pub fn blocked(&self, from: usize, now: u64) -> bool {
        now < self.partitioned_until[from]
    }

    pub fn heal(&mut self, now: u64) {
        self.partitioned_until = [now; 2];
        self.slow_until = now;
    }
}
