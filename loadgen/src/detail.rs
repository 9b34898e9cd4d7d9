//! What the one-second slices are too coarse to show, for `detail.json`
//! (`reports::run::Detail`): the run at millisecond resolution ([`Millis`]), cut out around
//! each switchover at the end ([`zooms`]), and replies by arrival per second (the slices'
//! `replied`).
//!
//! [`Millis`] covers the run (atomic counters per millisecond, bounded by
//! [`MILLIS_SPAN_MAX_MS`]) in chunks of [`CHUNK_MS`] allocated as the run reaches them, so
//! that its memory grows with the run, not with the configured duration; each connection
//! keeps a [`Tally`] of the millisecond it is recording and adds it to the shared counters
//! when the millisecond (or the second) changes, and once more when the connection ends
//! ([`Tally::flush`]), so the hot path takes no lock, allocates nothing (but the first
//! flush into a chunk, once per [`CHUNK_MS`]), and touches a shared cache line about once
//! per millisecond rather than once per reply. The counters are read at the end of the run.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use reports::run::{SlowRequest, Zoom, ZoomBucket};

use crate::clock::Clock;
use crate::record::{slice_of, Slow, SLICE_US};
use crate::switchover::{kind_name, Window};

/// Longest span covered at millisecond resolution (16 bytes per millisecond: 58 MB for an
/// hour, allocated a chunk at a time as the run reaches it); a zoom beyond it has no
/// buckets past the end of the covered span.
pub const MILLIS_SPAN_MAX_MS: u64 = 3_600_000;
/// The milliseconds of one chunk of counters (160 KB), allocated when the run reaches it.
pub const CHUNK_MS: u64 = 10_000;
/// A zoom's bucket width.
pub const ZOOM_BUCKET_MS: u64 = 1;
/// A zoom starts this long before its switchover and ends this long after its end.
pub const ZOOM_MARGIN_MS: u64 = 500;
/// Most buckets in one zoom (a longer switchover is cut at its start plus this).
pub const ZOOM_BUCKETS_MAX: u64 = 5_000;

/// [`CHUNK_MS`] milliseconds of counters.
struct Chunk {
    /// Requests by intended millisecond that got a reply: `ops | errors << 32`.
    intended: Box<[AtomicU64]>,
    /// Slowest success by intended millisecond, µs (latency is at most an hour: fits).
    max_us: Box<[AtomicU32]>,
    /// Replies by arrival millisecond.
    replied: Box<[AtomicU32]>,
}

impl Chunk {
    fn new() -> Chunk {
        let n = CHUNK_MS as usize;
        Chunk {
            intended: (0..n).map(|_| AtomicU64::new(0)).collect(),
            max_us: (0..n).map(|_| AtomicU32::new(0)).collect(),
            replied: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

/// The run per millisecond (wall clock, from the run's start millisecond) and replies per
/// second (the slices' seconds).
pub struct Millis {
    start_wall_ms: u64,
    /// Milliseconds covered (from the run's start).
    span_ms: u64,
    /// One per [`CHUNK_MS`] of the span, allocated by the first flush into it.
    chunks: Box<[OnceLock<Chunk>]>,
    /// Replies by arrival second (slice).
    replied_per_slice: Box<[AtomicU64]>,
}

impl Millis {
    /// Room for `span_us` from the run's start (milliseconds up to [`MILLIS_SPAN_MAX_MS`]);
    /// the per-millisecond counters are allocated as the run reaches them.
    pub fn new(clock: &Clock, span_us: u64) -> Millis {
        let ms = span_us.div_ceil(1000).clamp(1, MILLIS_SPAN_MAX_MS) + 1;
        let slices = span_us.div_ceil(SLICE_US).max(1) as usize + 1;
        Millis {
            start_wall_ms: clock.start_wall_ms(),
            span_ms: ms,
            chunks: (0..ms.div_ceil(CHUNK_MS))
                .map(|_| OnceLock::new())
                .collect(),
            replied_per_slice: (0..slices).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Millisecond `i`'s chunk (allocated on first use) and its place in it; none beyond
    /// the span.
    fn slot(&self, i: u64) -> Option<(&Chunk, usize)> {
        if i >= self.span_ms {
            return None;
        }
        let chunk = self.chunks.get((i / CHUNK_MS) as usize)?;
        Some((chunk.get_or_init(Chunk::new), (i % CHUNK_MS) as usize))
    }

    /// Chunks allocated so far (for tests and measurements).
    pub fn chunks_allocated(&self) -> usize {
        self.chunks.iter().filter(|c| c.get().is_some()).count()
    }

    fn index(&self, clock: &Clock, us: u64) -> u64 {
        clock.wall_ms_at_us(us) - self.start_wall_ms
    }

    /// Replies that arrived in each slice, from slice 0 (0 through a stall).
    pub fn replied_per_slice(&self) -> Vec<u64> {
        self.replied_per_slice
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Buckets of `ZOOM_BUCKET_MS` over wall-clock `[from_ms, to_ms)` (nothing outside the
    /// covered span).
    pub fn buckets(&self, from_ms: u64, to_ms: u64) -> Vec<ZoomBucket> {
        (from_ms..to_ms)
            .map_while(|ms| {
                let i = ms.checked_sub(self.start_wall_ms)?;
                if i >= self.span_ms {
                    return None;
                }
                // A chunk the run never reached counts nothing.
                let Some(c) = self.chunks.get((i / CHUNK_MS) as usize)?.get() else {
                    return Some(ZoomBucket::default());
                };
                let k = (i % CHUNK_MS) as usize;
                let intended = c.intended[k].load(Ordering::Relaxed);
                Some(ZoomBucket {
                    ops: intended as u32,
                    errors: (intended >> 32) as u32,
                    replied: c.replied[k].load(Ordering::Relaxed),
                    max_us: u64::from(c.max_us[k].load(Ordering::Relaxed)),
                })
            })
            .collect()
    }
}

/// One connection's running counts for the millisecond (and second) it is recording.
#[derive(Debug)]
pub struct Tally {
    intended_ms: u64,
    intended: u64,
    max_us: u32,
    replied_ms: u64,
    replied: u32,
    replied_slice: u64,
    replied_in_slice: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            intended_ms: u64::MAX,
            intended: 0,
            max_us: 0,
            replied_ms: u64::MAX,
            replied: 0,
            replied_slice: u64::MAX,
            replied_in_slice: 0,
        }
    }
}

impl Tally {
    /// A request that got its reply (a success or an error reply): intended at
    /// `intended_us`, answered at `reply_us` (µs since the run's start).
    pub fn record(
        &mut self,
        millis: &Millis,
        clock: &Clock,
        intended_us: u64,
        reply_us: u64,
        latency_us: u64,
        ok: bool,
    ) {
        let ms = millis.index(clock, intended_us);
        if ms != self.intended_ms {
            self.flush_intended(millis);
            self.intended_ms = ms;
        }
        self.intended += 1 | (u64::from(!ok) << 32);
        if ok {
            self.max_us = self.max_us.max(latency_us.min(u64::from(u32::MAX)) as u32);
        }
        let ms = millis.index(clock, reply_us);
        if ms != self.replied_ms {
            self.flush_replied(millis);
            self.replied_ms = ms;
        }
        self.replied += 1;
        let slice = slice_of(reply_us);
        if slice != self.replied_slice {
            self.flush_slice(millis);
            self.replied_slice = slice;
        }
        self.replied_in_slice += 1;
    }

    /// Adds what is counted to the shared counters: once, when the connection ends (a
    /// change of millisecond or second flushes by itself).
    pub fn flush(&mut self, millis: &Millis) {
        self.flush_intended(millis);
        self.flush_replied(millis);
        self.flush_slice(millis);
    }

    fn flush_intended(&mut self, millis: &Millis) {
        if self.intended > 0 {
            if let Some((c, k)) = millis.slot(self.intended_ms) {
                c.intended[k].fetch_add(self.intended, Ordering::Relaxed);
                c.max_us[k].fetch_max(self.max_us, Ordering::Relaxed);
            }
        }
        self.intended = 0;
        self.max_us = 0;
    }

    fn flush_replied(&mut self, millis: &Millis) {
        if self.replied > 0 {
            if let Some((c, k)) = millis.slot(self.replied_ms) {
                c.replied[k].fetch_add(self.replied, Ordering::Relaxed);
            }
        }
        self.replied = 0;
    }

    fn flush_slice(&mut self, millis: &Millis) {
        if self.replied_in_slice > 0 {
            if let Some(c) = millis.replied_per_slice.get(self.replied_slice as usize) {
                c.fetch_add(self.replied_in_slice, Ordering::Relaxed);
            }
        }
        self.replied_in_slice = 0;
    }
}

/// One zoom per switchover window (in the summary's order): 1 ms buckets from
/// [`ZOOM_MARGIN_MS`] before the switchover began to as long after it ended (the new active
/// acknowledged its step-up; without a timeline, the last connection found it), clipped to
/// the run `[started_ms, ended_ms]`, at most [`ZOOM_BUCKETS_MAX`].
pub fn zooms(windows: &[Window], millis: &Millis, started_ms: u64, ended_ms: u64) -> Vec<Zoom> {
    windows
        .iter()
        .map(|w| {
            let from_ms = w.at_ms.saturating_sub(ZOOM_MARGIN_MS).max(started_ms);
            let to_ms = (w.to_ms.max(w.at_ms) + ZOOM_MARGIN_MS)
                .min(ended_ms.max(from_ms))
                .min(from_ms + ZOOM_BUCKETS_MAX * ZOOM_BUCKET_MS);
            Zoom {
                kind: kind_name(w.kind).to_string(),
                at_ms: w.at_ms,
                end_ms: w.to_ms.max(w.at_ms),
                from_ms,
                bucket_ms: ZOOM_BUCKET_MS,
                buckets: millis.buckets(from_ms, to_ms),
            }
        })
        .collect()
}

/// The slow requests as `detail.json` lists them, in intended-time order.
pub fn slow_requests(slow: &[Slow], clock: &Clock) -> Vec<SlowRequest> {
    let mut out: Vec<SlowRequest> = slow
        .iter()
        .map(|s| SlowRequest {
            t_ms: clock.wall_ms_at_us(s.intended_us),
            latency_us: s.latency_us,
            error: s.error,
        })
        .collect();
    // Slices are finalized in order; a late record of one is not.
    out.sort_by_key(|s| s.t_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reports::timeline::SwitchoverKind;

    #[test]
    fn a_tally_flushes_itself_when_its_millisecond_changes() {
        let clock = Clock::start_now();
        let millis = Millis::new(&clock, 10 * SLICE_US);
        let ms0 = 1000 - clock.start_wall_us() % 1000;
        let at = |ms: u64| ms0 + ms * 1000;
        let base_ms = clock.wall_ms_at_us(at(0));
        let ops = |ms: u64| millis.buckets(base_ms + ms, base_ms + ms + 1)[0].ops;
        let replied = |ms: u64| millis.buckets(base_ms + ms, base_ms + ms + 1)[0].replied;
        let mut t = Tally::default();
        t.record(&millis, &clock, at(2), at(5), 3000, true);
        t.record(&millis, &clock, at(2) + 10, at(5) + 10, 3000, true);
        assert_eq!(
            (ops(2), replied(5)),
            (0, 0),
            "held while the millisecond lasts"
        );
        // The next millisecond, intended and replied: the previous one is added.
        t.record(&millis, &clock, at(3), at(6), 3000, true);
        assert_eq!((ops(2), replied(5)), (2, 2));
        assert_eq!(
            millis.replied_per_slice().iter().sum::<u64>(),
            0,
            "same second"
        );
        // The next second: its replies so far are added; the last millisecond at the end.
        t.record(&millis, &clock, at(1003), at(1006), 3000, true);
        assert_eq!(millis.replied_per_slice().iter().sum::<u64>(), 3);
        assert_eq!((ops(3), ops(1003)), (1, 0));
        t.flush(&millis);
        assert_eq!((ops(1003), replied(1006)), (1, 1));
        assert_eq!(millis.replied_per_slice().iter().sum::<u64>(), 4);
    }

    #[test]
    fn the_counters_grow_with_the_run_a_chunk_at_a_time() {
        let clock = Clock::start_now();
        // An hour's room: nothing per millisecond allocated until the run gets there.
        let millis = Millis::new(&clock, 3_600 * SLICE_US);
        assert_eq!(millis.chunks_allocated(), 0);
        let ms0 = 1000 - clock.start_wall_us() % 1000;
        let at = |ms: u64| ms0 + ms * 1000;
        let mut t = Tally::default();
        t.record(&millis, &clock, at(2), at(3), 1000, true);
        t.record(&millis, &clock, at(2_500), at(2_501), 1000, true);
        t.flush(&millis);
        assert_eq!(millis.chunks_allocated(), 1, "both in the first chunk");
        let far = CHUNK_MS * 7 + 5;
        t.record(&millis, &clock, at(far), at(far + 1), 1000, true);
        t.flush(&millis);
        assert_eq!(millis.chunks_allocated(), 2);
        let base_ms = clock.wall_ms_at_us(at(0));
        // Across a chunk never reached: zeros, and the counts on either side.
        let buckets = millis.buckets(base_ms, base_ms + far + 2);
        assert_eq!(buckets.len() as u64, far + 2);
        assert_eq!(buckets[2].ops + buckets[2_500].ops, 2);
        assert_eq!(buckets[(CHUNK_MS * 3) as usize], ZoomBucket::default());
        assert_eq!(
            (buckets[far as usize].ops, buckets[far as usize + 1].replied),
            (1, 1)
        );
        // Nothing beyond the span.
        let small = Millis::new(&clock, 2 * SLICE_US);
        let mut t = Tally::default();
        t.record(&small, &clock, at(50_000), at(50_001), 1000, true);
        t.flush(&small);
        assert_eq!(small.chunks_allocated(), 0);
        assert!(small.buckets(base_ms + 50_000, base_ms + 50_002).is_empty());
    }

    #[test]
    fn tallies_add_up_per_millisecond_and_zooms_cut_them_out() {
        let clock = Clock::start_now();
        let millis = Millis::new(&clock, 10 * SLICE_US);
        let mut a = Tally::default();
        let mut b = Tally::default();
        // Align on the wall clock's milliseconds, as the buckets are.
        let ms0 = 1000 - clock.start_wall_us() % 1000; // offset of the start of a wall ms
        let at = |ms: u64| ms0 + ms * 1000;
        // Intended at ms 2 and 3 (one error), all answered at ms 1500.
        a.record(&millis, &clock, at(2), at(1500), 1_498_000, true);
        a.record(&millis, &clock, at(2) + 10, at(1500), 1_497_990, true);
        b.record(&millis, &clock, at(3), at(1500), 1_497_000, false);
        a.flush(&millis);
        b.flush(&millis);
        let base_ms = clock.wall_ms_at_us(at(0));
        let buckets = millis.buckets(base_ms, base_ms + 1600);
        assert_eq!(buckets.len(), 1600);
        assert_eq!(
            (buckets[2].ops, buckets[2].errors, buckets[2].max_us),
            (2, 0, 1_498_000)
        );
        assert_eq!(
            (buckets[3].ops, buckets[3].errors, buckets[3].max_us),
            (1, 1, 0)
        );
        assert_eq!(buckets[1500].replied, 3);
        assert_eq!(buckets.iter().map(|b| b.replied).sum::<u32>(), 3);
        let per_slice = millis.replied_per_slice();
        assert_eq!(per_slice.iter().sum::<u64>(), 3);
        assert_eq!(per_slice[slice_of(at(1500)) as usize], 3);

        let started_ms = clock.start_wall_ms();
        let window = Window {
            kind: SwitchoverKind::Planned,
            at_ms: base_ms + 1000,
            stepup_ms: 2.0,
            from_ms: base_ms + 1000,
            to_ms: base_ms + 1010,
        };
        let zoom = &zooms(
            std::slice::from_ref(&window),
            &millis,
            started_ms,
            started_ms + 10_000,
        )[0];
        assert_eq!(zoom.kind, "planned");
        assert_eq!((zoom.from_ms, zoom.end_ms), (base_ms + 500, base_ms + 1010));
        assert_eq!(zoom.buckets.len(), 1010);
        assert_eq!(zoom.buckets[1000].replied, 3, "ms 1500 of the run");
        // Clipped to the run, and to at most 5,000 buckets.
        let early = Window {
            at_ms: started_ms + 100,
            to_ms: started_ms + 60_000,
            ..window
        };
        let zoom = &zooms(&[early], &millis, started_ms, started_ms + 90_000)[0];
        assert_eq!(zoom.from_ms, started_ms);
        assert_eq!(zoom.buckets.len(), ZOOM_BUCKETS_MAX as usize);
    }
}
