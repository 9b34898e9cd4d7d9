//! Latency recording: HdrHistograms (microseconds, 3 significant digits, preallocated) per
//! one-second slice and phase.
//!
//! Each connection has a [`Recorder`]. A reply's [`Sample`] first waits [`GRACE_US`] in a
//! bounded queue, because the timeline event that starts a phase may arrive a little after
//! the replies that already fall in it; then it is recorded into the connection's cell for
//! its (slice, phase). When a slice is over, the connection hands its cells to the shared
//! [`Aggregate`], which merges them, and once no connection can add to a slice any more,
//! finalizes it: one interval of the HdrHistogram interval log per (slice, phase), tagged
//! with the phase; one [`SliceRecord`] per slice (attributed to the phase its start fell in,
//! as `reports::run::Slice` is); and the per-phase totals. Nothing here allocates per
//! sample: histograms are created up front and recycled through pools.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use reports::summary::Latency;

use crate::clock::Clock;
use crate::phase::{PhaseId, PhaseMap, PhaseView};

/// Highest latency recorded; slower replies are recorded as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;
pub const SLICE_US: u64 = 1_000_000;
/// How long a sample waits for the timeline before it is attributed to a phase.
pub const GRACE_US: u64 = 200_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .expect("1 us .. 1 h at 3 significant digits is a valid histogram")
}

/// p50/p90/p99/p99.9/max of a histogram (all 0 when it is empty).
pub fn latency_of(h: &Histogram<u64>) -> Latency {
    if h.is_empty() {
        return Latency::default();
    }
    Latency {
        p50: h.value_at_quantile(0.50),
        p90: h.value_at_quantile(0.90),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// One reply: when it came and, for a success, how long it took from the request's
/// intended send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Microseconds since the run's start.
    pub reply_us: u64,
    pub latency_us: u64,
    /// An error reply has no latency recorded, only a count.
    pub ok: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    pub slice: u64,
    pub phase: PhaseId,
}

pub fn slice_of(us: u64) -> u64 {
    us / SLICE_US
}

/// What was recorded for one (slice, phase), or one phase.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Latency of the successful replies.
    pub histogram: Histogram<u64>,
    /// Replies: successes and errors.
    pub ops: u64,
    pub errors: u64,
    /// Reply times of the first and last sample (microseconds since the start).
    pub first_us: u64,
    pub last_us: u64,
}

impl Cell {
    pub fn new() -> Cell {
        Cell {
            histogram: new_histogram(),
            ops: 0,
            errors: 0,
            first_us: u64::MAX,
            last_us: 0,
        }
    }

    pub fn record(&mut self, sample: &Sample) {
        self.ops += 1;
        if sample.ok {
            self.histogram.saturating_record(sample.latency_us.max(1));
        } else {
            self.errors += 1;
        }
        self.first_us = self.first_us.min(sample.reply_us);
        self.last_us = self.last_us.max(sample.reply_us);
    }

    pub fn add(&mut self, other: &Cell) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms of one run share their bounds");
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_us = self.first_us.min(other.first_us);
        self.last_us = self.last_us.max(other.last_us);
    }

    pub fn reset(&mut self) {
        self.histogram.reset();
        self.ops = 0;
        self.errors = 0;
        self.first_us = u64::MAX;
        self.last_us = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }
}

impl Default for Cell {
    fn default() -> Self {
        Cell::new()
    }
}

/// One finalized second of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceRecord {
    pub slice: u64,
    /// The phase the slice's start fell in.
    pub phase: PhaseId,
    pub ops: u64,
    pub errors: u64,
    pub latency: Latency,
}

/// Cells a connection keeps open at once (a slice, and the next phase or slice).
const OPEN_CELLS_PER_CONNECTION: usize = 2;

/// One connection's recording: samples waiting for the timeline, then open cells.
pub struct Recorder {
    pending: VecDeque<Sample>,
    pending_max: usize,
    cells: Vec<(CellKey, Cell)>,
    spare: Vec<Cell>,
    aggregate: Arc<Aggregate>,
    phases: PhaseView,
    clock: Clock,
}

impl Recorder {
    /// `pending_max` bounds the samples waiting out the grace period (beyond it the oldest
    /// is attributed early).
    pub fn new(
        aggregate: Arc<Aggregate>,
        phases: PhaseView,
        clock: Clock,
        pending_max: usize,
    ) -> Recorder {
        let pending_max = pending_max.max(1);
        Recorder {
            pending: VecDeque::with_capacity(pending_max),
            pending_max,
            cells: Vec::with_capacity(OPEN_CELLS_PER_CONNECTION + 2),
            spare: (0..OPEN_CELLS_PER_CONNECTION)
                .map(|_| Cell::new())
                .collect(),
            aggregate,
            phases,
            clock,
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.pending.len() >= self.pending_max {
            if let Some(oldest) = self.pending.pop_front() {
                self.commit(oldest);
            }
        }
        self.pending.push_back(sample);
    }

    /// Attributes the samples older than the grace period and hands over the cells of
    /// slices that can get no more samples.
    pub fn commit_due(&mut self, now_us: u64) {
        let settled_us = now_us.saturating_sub(GRACE_US);
        while let Some(&sample) = self.pending.front() {
            if sample.reply_us > settled_us {
                break;
            }
            self.pending.pop_front();
            self.commit(sample);
        }
        self.flush_before(slice_of(settled_us));
    }

    /// Attributes every sample with the timeline as it now is and hands over every cell.
    pub fn finish(&mut self) {
        while let Some(sample) = self.pending.pop_front() {
            self.commit(sample);
        }
        self.flush_before(u64::MAX);
    }

    fn commit(&mut self, sample: Sample) {
        let wall_ms = self.clock.wall_ms_at_us(sample.reply_us);
        let key = CellKey {
            slice: slice_of(sample.reply_us),
            phase: self.phases.current().phase_at_ms(wall_ms),
        };
        if let Some((_, cell)) = self.cells.iter_mut().find(|(k, _)| *k == key) {
            cell.record(&sample);
            return;
        }
        // A new cell: the older slices are done with.
        self.flush_before(key.slice);
        if self.cells.len() >= OPEN_CELLS_PER_CONNECTION {
            self.flush_oldest();
        }
        let mut cell = self.spare.pop().unwrap_or_default();
        cell.record(&sample);
        self.cells.push((key, cell));
    }

    fn flush_before(&mut self, slice: u64) {
        let mut i = 0;
        while i < self.cells.len() {
            if self.cells[i].0.slice < slice {
                let (key, mut cell) = self.cells.swap_remove(i);
                self.aggregate.absorb(key, &mut cell);
                self.spare.push(cell);
            } else {
                i += 1;
            }
        }
    }

    fn flush_oldest(&mut self) {
        if let Some(i) = (0..self.cells.len()).min_by_key(|&i| self.cells[i].0) {
            let (key, mut cell) = self.cells.swap_remove(i);
            self.aggregate.absorb(key, &mut cell);
            self.spare.push(cell);
        }
    }
}

/// The run's recording, merged from every connection. Two locks: connections only ever
/// take `open` (a map insert or a histogram merge), so that the controller, which finalizes
/// slices under `done` (merging, serializing), never holds up a connection reading replies.
pub struct Aggregate {
    open: Mutex<OpenCells>,
    done: Mutex<Finalized>,
    clock: Clock,
}

struct OpenCells {
    cells: BTreeMap<CellKey, Cell>,
    /// Empty cells to hand to connections in exchange for full ones.
    pool: Vec<Cell>,
}

struct Finalized {
    phase_totals: BTreeMap<PhaseId, Cell>,
    slices: Vec<SliceRecord>,
    hlog_body: Vec<u8>,
    serializer: V2DeflateSerializer,
    scratch: Histogram<u64>,
    problems: Vec<String>,
}

/// What the aggregate holds at the end of the run.
pub struct Recorded {
    pub slices: Vec<SliceRecord>,
    pub phase_totals: BTreeMap<PhaseId, Cell>,
    /// The interval lines of `histograms.hlog` (without its header).
    pub hlog_body: Vec<u8>,
    pub problems: Vec<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Aggregate {
    pub fn new(clock: Clock) -> Aggregate {
        Aggregate {
            open: Mutex::new(OpenCells {
                cells: BTreeMap::new(),
                pool: Vec::new(),
            }),
            done: Mutex::new(Finalized {
                phase_totals: BTreeMap::new(),
                slices: Vec::new(),
                hlog_body: Vec::new(),
                serializer: V2DeflateSerializer::new(),
                scratch: new_histogram(),
                problems: Vec::new(),
            }),
            clock,
        }
    }

    /// Takes what `cell` holds; `cell` comes back empty, for reuse.
    pub fn absorb(&self, key: CellKey, cell: &mut Cell) {
        if cell.is_empty() {
            return;
        }
        let mut open = lock(&self.open);
        if let Some(existing) = open.cells.get_mut(&key) {
            existing.add(cell);
            cell.reset();
        } else {
            let mut empty = open.pool.pop().unwrap_or_default();
            std::mem::swap(&mut empty, cell);
            open.cells.insert(key, empty);
        }
    }

    /// Finalizes every slice before `slice_limit` that holds anything.
    pub fn finalize_below(&self, slice_limit: u64, phases: &PhaseMap) {
        let ready = {
            let mut open = lock(&self.open);
            let later = open.cells.split_off(&CellKey {
                slice: slice_limit,
                phase: PhaseId(0),
            });
            std::mem::replace(&mut open.cells, later)
        };
        if ready.is_empty() {
            return;
        }
        let mut emptied = Vec::with_capacity(ready.len());
        {
            let mut guard = lock(&self.done);
            let done = &mut *guard;
            let mut cells = ready.into_iter().peekable();
            while let Some((key, cell)) = cells.next() {
                let slice = key.slice;
                done.scratch.reset();
                let mut record = SliceRecord {
                    slice,
                    phase: phases.phase_at_ms(self.clock.wall_ms_at_us(slice * SLICE_US)),
                    ops: 0,
                    errors: 0,
                    latency: Latency::default(),
                };
                let mut next = Some((key, cell));
                while let Some((key, mut cell)) = next.take() {
                    done.scratch
                        .add(&cell.histogram)
                        .expect("histograms of one run share their bounds");
                    record.ops += cell.ops;
                    record.errors += cell.errors;
                    self.write_interval(done, key, &cell, phases);
                    done.phase_totals.entry(key.phase).or_default().add(&cell);
                    cell.reset();
                    emptied.push(cell);
                    if cells.peek().is_some_and(|(k, _)| k.slice == slice) {
                        next = cells.next();
                    }
                }
                record.latency = latency_of(&done.scratch);
                done.slices.push(record);
            }
        }
        lock(&self.open).pool.extend(emptied);
    }

    /// One interval line: the part of the slice that lies in the phase, tagged with it.
    fn write_interval(&self, done: &mut Finalized, key: CellKey, cell: &Cell, phases: &PhaseMap) {
        let slice_start_us = key.slice * SLICE_US;
        let (mut start_us, mut end_us) = (slice_start_us, slice_start_us + SLICE_US);
        if let Some(span) = phases.span(key.phase) {
            start_us = start_us.max(self.clock.us_at_wall_ms(span.start_ms));
            if let Some(end_ms) = span.end_ms {
                end_us = end_us.min(self.clock.us_at_wall_ms(end_ms));
            }
        }
        // Millisecond phase bounds may cut a sample off its own interval: keep it inside.
        start_us = start_us.min(cell.first_us);
        end_us = end_us.max(cell.last_us + 1).max(start_us + 1);
        let Finalized {
            hlog_body,
            serializer,
            problems,
            ..
        } = done;
        let written = IntervalLogWriterBuilder::new()
            .begin_log_with(hlog_body, serializer)
            .map_err(|e| e.to_string())
            .and_then(|mut log| {
                log.write_histogram(
                    &cell.histogram,
                    Duration::from_micros(start_us),
                    Duration::from_micros(end_us - start_us),
                    Tag::new(phases.name(key.phase)),
                )
                .map_err(|e| e.to_string())
            });
        if let Err(e) = written {
            if problems.is_empty() {
                problems.push(format!("histogram log: {e}"));
            }
        }
    }

    /// The latest finalized slice (for the progress line).
    pub fn last_slice(&self) -> Option<SliceRecord> {
        lock(&self.done).slices.last().cloned()
    }

    /// Everything recorded; call after the final [`Aggregate::finalize_below`].
    pub fn take(&self) -> Recorded {
        let mut done = lock(&self.done);
        Recorded {
            slices: std::mem::take(&mut done.slices),
            phase_totals: std::mem::take(&mut done.phase_totals),
            hlog_body: std::mem::take(&mut done.hlog_body),
            problems: std::mem::take(&mut done.problems),
        }
    }
}

/// Merges records of the same slice (a connection that fell behind can hand in a slice
/// after it was finalized): counts add up, each percentile is the larger of the two.
pub fn merge_slices(mut slices: Vec<SliceRecord>) -> Vec<SliceRecord> {
    slices.sort_by_key(|s| s.slice);
    let mut out: Vec<SliceRecord> = Vec::with_capacity(slices.len());
    for s in slices {
        match out.last_mut() {
            Some(last) if last.slice == s.slice => {
                last.ops += s.ops;
                last.errors += s.errors;
                let (a, b) = (&mut last.latency, s.latency);
                a.p50 = a.p50.max(b.p50);
                a.p90 = a.p90.max(b.p90);
                a.p99 = a.p99.max(b.p99);
                a.p999 = a.p999.max(b.p999);
                a.max = a.max.max(b.max);
            }
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::PhaseSource;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use reports::timeline::{Event, EventKind};

    fn ok(reply_us: u64, latency_us: u64) -> Sample {
        Sample {
            reply_us,
            latency_us,
            ok: true,
        }
    }

    #[test]
    fn samples_wait_for_the_grace_period_then_land_in_their_slice_and_phase() {
        let clock = Clock::start_now();
        let aggregate = Arc::new(Aggregate::new(clock));
        let source = Arc::new(PhaseSource::default());
        let mut recorder = Recorder::new(
            aggregate.clone(),
            PhaseView::new(source.clone()),
            clock,
            1024,
        );
        recorder.push(ok(100_000, 50));
        recorder.push(ok(1_100_000, 70));
        recorder.push(Sample {
            reply_us: 1_200_000,
            latency_us: 0,
            ok: false,
        });
        recorder.commit_due(250_000); // the first is still within its grace
        aggregate.finalize_below(10, &PhaseMap::default());
        assert!(aggregate.take().slices.is_empty());
        // A phase starting at 1.0 s arrives late; the samples after it still land in it.
        let phase_start_ms = clock.wall_ms_at_us(1_000_000);
        let events = vec![Event {
            phase: Some("baseline".into()),
            ..Event::new(phase_start_ms, EventKind::PhaseStart)
        }];
        source.publish(PhaseMap::from_events(&events));
        recorder.commit_due(2_500_000);
        let map = PhaseMap::from_events(&events);
        aggregate.finalize_below(2, &map);
        let recorded = aggregate.take();
        assert_eq!(recorded.slices.len(), 2);
        assert_eq!(recorded.slices[0].phase, PhaseId::STEADY);
        assert_eq!(recorded.slices[0].ops, 1);
        assert_eq!(recorded.slices[1].phase, PhaseId(0));
        assert_eq!((recorded.slices[1].ops, recorded.slices[1].errors), (2, 1));
        assert_eq!(recorded.phase_totals[&PhaseId(0)].histogram.len(), 1);
        assert_eq!(recorded.phase_totals[&PhaseId::STEADY].ops, 1);
        let tags: Vec<Option<String>> = IntervalLogIterator::new(&recorded.hlog_body)
            .map(|e| match e.unwrap() {
                LogEntry::Interval(h) => h.tag().map(|t| t.as_str().to_string()),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            tags,
            [Some("steady".to_string()), Some("baseline".to_string())]
        );
    }

    #[test]
    fn a_full_queue_attributes_early_and_finish_hands_over_everything() {
        let clock = Clock::start_now();
        let aggregate = Arc::new(Aggregate::new(clock));
        let source = Arc::new(PhaseSource::default());
        let mut recorder = Recorder::new(aggregate.clone(), PhaseView::new(source), clock, 2);
        for i in 0..5 {
            recorder.push(ok(i * 700_000, 10 + i));
        }
        recorder.finish();
        aggregate.finalize_below(u64::MAX, &PhaseMap::default());
        let recorded = aggregate.take();
        let ops: u64 = recorded.slices.iter().map(|s| s.ops).sum();
        assert_eq!(ops, 5);
        assert_eq!(recorded.phase_totals[&PhaseId::STEADY].histogram.len(), 5);
        assert_eq!(recorded.phase_totals[&PhaseId::STEADY].histogram.max(), 14);
    }

    #[test]
    fn late_slices_merge() {
        let l = |p: u64| Latency {
            p50: p,
            p90: p,
            p99: p,
            p999: p,
            max: p,
        };
        let s = |slice, ops, p| SliceRecord {
            slice,
            phase: PhaseId::STEADY,
            ops,
            errors: 0,
            latency: l(p),
        };
        let merged = merge_slices(vec![s(1, 5, 10), s(0, 1, 1), s(1, 2, 30)]);
        assert_eq!(merged, vec![s(0, 1, 1), s(1, 7, 30)]);
    }

    #[test]
    fn percentiles() {
        let mut h = new_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = latency_of(&h);
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        assert_eq!(l.max, 1000);
        assert_eq!(latency_of(&new_histogram()), Latency::default());
        h.saturating_record(u64::MAX);
        assert!(h.max() >= LATENCY_US_MAX);
    }
}
