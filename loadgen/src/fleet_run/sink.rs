//! The fleet's latency per second: each pair's run hands the whole-run histogram of every
//! second it finalizes to the [`FleetSink`] (one HdrHistogram add per pair and second,
//! nothing per request), and the sink finalizes a second of the fleet once every pair is
//! past it: its percentiles, one untagged interval of the fleet's `histograms.hlog`, and
//! the histogram itself, kept serialized (V2 + deflate, a few kilobytes) so that the
//! fleet's periods (the campaign's waves, known only at the end) can be summed exactly.
//!
//! A pair's slice finalized late (a reply that came after its second was forced out, see
//! `record`) arrives after the fleet's second was finalized: it becomes a second record of
//! that second, and [`FleetSink::finish`] merges the records of a second exactly (the
//! histograms are kept, so the merge is an HdrHistogram add, not a weighing of percentiles).

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use reports::summary::Latency;

use crate::record::{latency_of, new_histogram, SLICE_US};

/// One second of the fleet: every pair's requests intended in it.
#[derive(Clone, Debug)]
pub struct FleetSecond {
    pub slice: u64,
    pub latency: Latency,
    /// Successful replies (the histogram's count).
    pub successes: u64,
    /// The histogram, V2 deflate (empty for an empty second).
    pub encoded: Vec<u8>,
}

impl FleetSecond {
    /// The histogram back (an empty one for an empty second).
    pub fn histogram(&self) -> Histogram<u64> {
        if self.encoded.is_empty() {
            return new_histogram();
        }
        let mut h = new_histogram();
        if let Ok(decoded) = Deserializer::new().deserialize::<u64, _>(&mut self.encoded.as_slice())
        {
            let _ = h.add(&decoded);
        }
        h
    }
}

/// What the sink holds at the end.
pub struct FleetRecorded {
    /// One per second from the start, contiguous, late records merged in.
    pub seconds: Vec<FleetSecond>,
    /// The interval lines of the fleet's `histograms.hlog` (without its header).
    pub hlog_body: Vec<u8>,
    pub problems: Vec<String>,
}

pub struct FleetSink {
    inner: Mutex<Inner>,
}

struct Inner {
    /// Per pair: the first second it may still add to (`u64::MAX` once it ended).
    members: Vec<u64>,
    open: BTreeMap<u64, Histogram<u64>>,
    /// The first second not finalized.
    next: u64,
    seconds: Vec<FleetSecond>,
    hlog_body: Vec<u8>,
    serializer: V2DeflateSerializer,
    problems: Vec<String>,
    pool: Vec<Histogram<u64>>,
}

/// Empty histograms kept for reuse (each is ~180 KB).
const POOL_MAX: usize = 8;

impl FleetSink {
    pub fn new(pairs: usize) -> FleetSink {
        FleetSink {
            inner: Mutex::new(Inner {
                members: vec![0; pairs],
                open: BTreeMap::new(),
                next: 0,
                seconds: Vec::new(),
                hlog_body: Vec::new(),
                serializer: V2DeflateSerializer::new(),
                problems: Vec::new(),
                pool: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pair `member`'s whole histogram of second `slice`.
    pub fn add(&self, _member: usize, slice: u64, histogram: &Histogram<u64>) {
        if histogram.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if slice < inner.next {
            // Late: the fleet's second is written; a second record of it.
            let mut h = inner.pool.pop().unwrap_or_else(new_histogram);
            let _ = h.add(histogram);
            inner.finalize_one(slice, h);
            return;
        }
        let inner = &mut *inner;
        let h = match inner.open.entry(slice) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(inner.pool.pop().unwrap_or_else(new_histogram))
            }
        };
        let _ = h.add(histogram);
    }

    /// Pair `member` will add nothing before `next_slice` any more.
    pub fn advance(&self, member: usize, next_slice: u64) {
        let mut inner = self.lock();
        if let Some(m) = inner.members.get_mut(member) {
            *m = (*m).max(next_slice);
        }
        inner.finalize_settled();
    }

    /// Pair `member`'s run ended: it holds nothing back any more.
    pub fn member_done(&self, member: usize) {
        self.advance(member, u64::MAX);
    }

    /// Everything, up to and including second `last_slice`; call once every pair ended.
    pub fn finish(&self, last_slice: u64) -> FleetRecorded {
        let mut inner = self.lock();
        for m in inner.members.iter_mut() {
            *m = u64::MAX;
        }
        inner.finalize_through(last_slice.saturating_add(1));
        let seconds = merge_records(std::mem::take(&mut inner.seconds));
        FleetRecorded {
            seconds,
            hlog_body: std::mem::take(&mut inner.hlog_body),
            problems: std::mem::take(&mut inner.problems),
        }
    }
}

impl Inner {
    fn finalize_settled(&mut self) {
        let settled = self.members.iter().copied().min().unwrap_or(u64::MAX);
        if settled == u64::MAX {
            // Every pair ended: what is open is finalized by `finish`, which knows the end.
            let last = self.open.keys().next_back().map_or(self.next, |s| s + 1);
            self.finalize_through(last);
        } else {
            self.finalize_through(settled);
        }
    }

    /// Finalizes every second before `limit`, empty ones included.
    fn finalize_through(&mut self, limit: u64) {
        while self.next < limit {
            let slice = self.next;
            let h = self
                .open
                .remove(&slice)
                .unwrap_or_else(|| self.pool.pop().unwrap_or_else(new_histogram));
            self.finalize_one(slice, h);
            self.next = slice + 1;
        }
    }

    fn finalize_one(&mut self, slice: u64, mut h: Histogram<u64>) {
        let mut encoded = Vec::new();
        if !h.is_empty() {
            if let Err(e) = self.serializer.serialize(&h, &mut encoded) {
                if self.problems.is_empty() {
                    self.problems.push(format!("fleet histogram: {e:?}"));
                }
                encoded.clear();
            }
        }
        crate::record::write_interval(
            &mut self.hlog_body,
            &mut self.serializer,
            &mut self.problems,
            &h,
            slice * SLICE_US,
            (slice + 1) * SLICE_US,
            None,
        );
        self.seconds.push(FleetSecond {
            slice,
            latency: latency_of(&h),
            successes: h.len(),
            encoded,
        });
        h.reset();
        if self.pool.len() < POOL_MAX {
            self.pool.push(h);
        }
    }
}

/// Records of the same second merged by adding their histograms.
fn merge_records(mut records: Vec<FleetSecond>) -> Vec<FleetSecond> {
    records.sort_by_key(|r| r.slice);
    let mut out: Vec<FleetSecond> = Vec::with_capacity(records.len());
    for r in records {
        match out.last_mut() {
            Some(last) if last.slice == r.slice => {
                let mut h = last.histogram();
                let _ = h.add(r.histogram());
                let mut encoded = Vec::new();
                let _ = V2DeflateSerializer::new().serialize(&h, &mut encoded);
                *last = FleetSecond {
                    slice: last.slice,
                    latency: latency_of(&h),
                    successes: h.len(),
                    encoded,
                };
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn seconds_wait_for_every_pair_and_merge_exactly() {
        let sink = FleetSink::new(2);
        sink.add(0, 0, &hist(&[100, 200]));
        sink.advance(0, 1);
        // Pair 1 has not finished second 0: nothing is final yet.
        assert_eq!(sink.lock().seconds.len(), 0);
        sink.add(1, 0, &hist(&[300]));
        sink.add(1, 1, &hist(&[50]));
        sink.advance(1, 2);
        {
            let inner = sink.lock();
            assert_eq!(inner.seconds.len(), 1);
            assert_eq!(inner.seconds[0].successes, 3);
        }
        // A late record of second 0 (pair 0), and the ends.
        sink.add(0, 0, &hist(&[10_000]));
        sink.member_done(0);
        sink.member_done(1);
        let recorded = sink.finish(2);
        let secs: Vec<u64> = recorded.seconds.iter().map(|s| s.slice).collect();
        assert_eq!(secs, vec![0, 1, 2]);
        assert_eq!(recorded.seconds[0].successes, 4);
        assert!(recorded.seconds[0].latency.max >= 10_000);
        assert_eq!(recorded.seconds[0].histogram().len(), 4);
        assert_eq!(recorded.seconds[1].successes, 1);
        assert_eq!(recorded.seconds[2].successes, 0);
        assert!(!recorded.hlog_body.is_empty());
    }
}
