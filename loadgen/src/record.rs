//! Latency recording: HdrHistograms (microseconds, 3 significant digits, preallocated) per
//! one-second slice and phase.
//!
//! A request belongs to the slice and the phase of its *intended* send time (the open-loop
//! schedule's; closed loop: its actual send), not of its reply: a server that stalls for a
//! minute leaves a minute of slices whose latency climbs, not one slice holding the backlog
//! that arrived when it recovered, and the phase a stall happened in is the phase charged
//! with it (a phase boundary that falls inside a stall leaves each request in the phase it
//! was meant to be sent in, however late its reply came). Replies by arrival are counted
//! apart (`detail::Millis`).
//!
//! Each connection has a [`Recorder`]. A reply's [`Sample`] first waits [`GRACE_US`] in a
//! bounded queue, because the timeline event that starts a phase may arrive a little after
//! the samples that already fall in it; then it is recorded into the connection's cell for
//! its (slice, phase). A connection hands its cells to the shared [`Aggregate`] once it can
//! add nothing more to their slice, and publishes a watermark: the first slice it may still
//! add to (that of the earliest intended time among its requests in flight, to retry, not
//! sent yet, and samples waiting). The aggregate finalizes a slice once every connection's
//! watermark is past it (or at the end of the run): one interval of the HdrHistogram interval
//! log per (slice, phase), tagged with the phase, and one untagged interval for the whole
//! slice; one [`SliceRecord`] per slice (attributed to the phase its start fell in, as
//! `reports::run::Slice` is), contiguous: a second in which nothing was intended still gets
//! one; the per-phase totals; and the slice's slowest requests. Nothing here allocates or
//! locks per sample: histograms are created up front and recycled through pools, and a
//! connection takes the aggregate's lock once per slice.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use reports::summary::{Latency, PercentilePoint};

use crate::clock::Clock;
use crate::phase::{PhaseId, PhaseMap, PhaseView};

/// Highest latency recorded; slower replies are recorded as this.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
pub const SIGNIFICANT_DIGITS: u8 = 3;
pub const SLICE_US: u64 = 1_000_000;
/// How long a sample waits for the timeline before it is attributed to a phase.
pub const GRACE_US: u64 = 200_000;
/// Slow requests kept per slice (the slowest of its second); `detail.json`'s
/// `slow_per_slice_max`.
pub const SLOW_PER_SLICE_MAX: usize = 100;
/// Ticks per half distance of the percentile spectrum (HdrHistogram's
/// `outputPercentileDistribution` default, as HistogramLogProcessor prints it).
pub const PERCENTILE_TICKS: u32 = 5;

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

/// HdrHistogram's percentile distribution of `h` (`iter_quantiles(5)`, the grid
/// HistogramLogProcessor prints): `p` in percent, `us` the value there. One point per
/// percentile (the last value when the grid repeats one), non-decreasing in both, ending at
/// 100 with the maximum; empty for an empty histogram.
pub fn percentiles_of(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    let mut out: Vec<PercentilePoint> = Vec::new();
    if h.is_empty() {
        return out;
    }
    for v in h.iter_quantiles(PERCENTILE_TICKS) {
        // Rounded off the float noise of the grid (30.000000000000004).
        let p = ((v.quantile_iterated_to() * 100.0 * 1e9).round() / 1e9).clamp(0.0, 100.0);
        let us = h.highest_equivalent(v.value_iterated_to()).min(h.max());
        match out.last_mut() {
            Some(last) if last.p == p => last.us = last.us.max(us),
            Some(last) if last.p > p => {}
            _ => out.push(PercentilePoint { p, us }),
        }
    }
    let max = h.max();
    match out.last_mut() {
        Some(last) if last.p == 100.0 => last.us = max,
        _ => out.push(PercentilePoint { p: 100.0, us: max }),
    }
    // Values are bucket tops: keep the curve monotonic.
    let mut floor = 0;
    for point in &mut out {
        floor = floor.max(point.us);
        point.us = floor;
    }
    out
}

/// One reply: when its request was meant to be sent, when the reply came and how long it
/// took from the intended send time (coordinated-omission corrected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Microseconds since the run's start: the open-loop schedule's send time (closed loop:
    /// the actual send). A retried request keeps its first intended time.
    pub intended_us: u64,
    /// Microseconds since the run's start.
    pub reply_us: u64,
    pub latency_us: u64,
    /// An error reply is counted, and listed if slow, but its latency is not in the
    /// histograms.
    pub ok: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CellKey {
    /// The slice of the intended send time.
    pub slice: u64,
    /// The phase of the intended send time.
    pub phase: PhaseId,
}

pub fn slice_of(us: u64) -> u64 {
    us / SLICE_US
}

/// A request at least the slow threshold slow. Ordered by latency first (the slowest are
/// kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slow {
    pub latency_us: u64,
    /// Microseconds since the run's start.
    pub intended_us: u64,
    pub error: bool,
}

/// The slowest [`SLOW_PER_SLICE_MAX`] requests offered, and how many others were; its heap
/// is allocated once and never grows.
#[derive(Clone, Debug)]
pub struct SlowTop {
    heap: BinaryHeap<Reverse<Slow>>,
    pub omitted: u64,
}

impl SlowTop {
    pub fn new() -> SlowTop {
        SlowTop {
            heap: BinaryHeap::with_capacity(SLOW_PER_SLICE_MAX),
            omitted: 0,
        }
    }

    pub fn offer(&mut self, slow: Slow) {
        if self.heap.len() < SLOW_PER_SLICE_MAX {
            self.heap.push(Reverse(slow));
            return;
        }
        self.omitted += 1;
        if let Some(mut least) = self.heap.peek_mut() {
            if slow > least.0 {
                *least = Reverse(slow);
            }
        }
    }

    pub fn add(&mut self, other: &SlowTop) {
        for slow in other.heap.iter() {
            self.offer(slow.0);
        }
        self.omitted += other.omitted;
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Moves the kept requests to `out`, in intended-time order; `self` is empty after.
    pub fn drain_into(&mut self, out: &mut Vec<Slow>) {
        let from = out.len();
        out.extend(self.heap.drain().map(|r| r.0));
        out[from..].sort_by_key(|s| (s.intended_us, Reverse(s.latency_us)));
        self.omitted = 0;
    }

    pub fn clear(&mut self) {
        self.heap.clear();
        self.omitted = 0;
    }
}

impl Default for SlowTop {
    fn default() -> Self {
        SlowTop::new()
    }
}

/// What was recorded for one (slice, phase), or one phase.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Latency of the successful replies.
    pub histogram: Histogram<u64>,
    /// Replies: successes and errors.
    pub ops: u64,
    pub errors: u64,
    /// Intended send times of the first and last sample (microseconds since the start).
    pub first_us: u64,
    pub last_us: u64,
    /// The slowest requests at least the slow threshold slow.
    pub slow: SlowTop,
}

impl Cell {
    pub fn new() -> Cell {
        Cell {
            histogram: new_histogram(),
            ops: 0,
            errors: 0,
            first_us: u64::MAX,
            last_us: 0,
            slow: SlowTop::new(),
        }
    }

    pub fn record(&mut self, sample: &Sample) {
        self.ops += 1;
        if sample.ok {
            self.histogram.saturating_record(sample.latency_us.max(1));
        } else {
            self.errors += 1;
        }
        self.first_us = self.first_us.min(sample.intended_us);
        self.last_us = self.last_us.max(sample.intended_us);
    }

    pub fn add(&mut self, other: &Cell) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms of one run share their bounds");
        self.ops += other.ops;
        self.errors += other.errors;
        self.first_us = self.first_us.min(other.first_us);
        self.last_us = self.last_us.max(other.last_us);
        self.slow.add(&other.slow);
    }

    pub fn reset(&mut self) {
        self.histogram.reset();
        self.ops = 0;
        self.errors = 0;
        self.first_us = u64::MAX;
        self.last_us = 0;
        self.slow.clear();
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
    /// Requests intended in the slice that got a reply (successes and errors).
    pub ops: u64,
    pub errors: u64,
    pub latency: Latency,
}

/// Cells a connection keeps open at once (a slice, and the next phase or slice).
const OPEN_CELLS_PER_CONNECTION: usize = 2;

/// One connection's recording: samples waiting for the timeline, then open cells.
pub struct Recorder {
    /// Samples waiting out the grace period, in reply order.
    pending: VecDeque<Sample>,
    /// The running minimum of `pending`'s intended times: the intended times of the
    /// samples no later sample undercuts, in queue order (so non-decreasing); its front is
    /// the minimum. Replies come in send order, but a retried request keeps its early
    /// intended time, so its reply can wait behind later-intended ones.
    pending_min: VecDeque<u64>,
    pending_max: usize,
    cells: Vec<(CellKey, Cell)>,
    spare: Vec<Cell>,
    aggregate: Arc<Aggregate>,
    phases: PhaseView,
    clock: Clock,
    /// The connection's index: its watermark in the aggregate.
    index: usize,
    slow_threshold_us: u64,
    /// The watermark last published.
    watermark: u64,
}

impl Recorder {
    /// `pending_max` bounds the samples waiting out the grace period (beyond it the oldest
    /// is attributed early). `index` is the connection's (its watermark's) and
    /// `slow_threshold_us` the latency from which a request is listed as slow.
    pub fn new(
        aggregate: Arc<Aggregate>,
        phases: PhaseView,
        clock: Clock,
        pending_max: usize,
        index: usize,
        slow_threshold_us: u64,
    ) -> Recorder {
        let pending_max = pending_max.max(1);
        Recorder {
            pending: VecDeque::with_capacity(pending_max),
            pending_min: VecDeque::with_capacity(pending_max),
            pending_max,
            cells: Vec::with_capacity(OPEN_CELLS_PER_CONNECTION + 2),
            spare: (0..OPEN_CELLS_PER_CONNECTION)
                .map(|_| Cell::new())
                .collect(),
            aggregate,
            phases,
            clock,
            index,
            slow_threshold_us: slow_threshold_us.max(1),
            watermark: 0,
        }
    }

    pub fn push(&mut self, sample: Sample) {
        if self.pending.len() >= self.pending_max {
            if let Some(oldest) = self.pop_pending() {
                self.commit(oldest);
            }
        }
        // Amortised O(1), and no allocation: both queues hold at most `pending_max`.
        while self
            .pending_min
            .back()
            .is_some_and(|&low| low > sample.intended_us)
        {
            self.pending_min.pop_back();
        }
        self.pending_min.push_back(sample.intended_us);
        self.pending.push_back(sample);
    }

    fn pop_pending(&mut self) -> Option<Sample> {
        let sample = self.pending.pop_front()?;
        // If the sample is still a candidate it is the first one; if it is not, a later
        // sample undercut it and the front is smaller.
        if self.pending_min.front() == Some(&sample.intended_us) {
            self.pending_min.pop_front();
        }
        Some(sample)
    }

    /// The earliest intended time among the samples waiting.
    fn pending_low_us(&self) -> Option<u64> {
        self.pending_min.front().copied()
    }

    /// Attributes the samples older than the grace period, hands over the cells of slices
    /// this connection can add nothing more to, and publishes its watermark.
    /// `outstanding_us` is the earliest intended time (µs since the start) of the requests
    /// that may still get a reply: in flight, to retry, or due and not sent yet (`u64::MAX`
    /// when none may).
    ///
    /// Samples wait in reply order, which is not intended order (a retried request keeps
    /// its first intended time and is answered after requests intended later), so the
    /// earliest intended time among them is kept as a running minimum.
    pub fn commit_due(&mut self, now_us: u64, outstanding_us: u64) {
        let settled_us = now_us.saturating_sub(GRACE_US);
        while self
            .pending
            .front()
            .is_some_and(|s| s.reply_us <= settled_us)
        {
            if let Some(sample) = self.pop_pending() {
                self.commit(sample);
            }
        }
        let low_us = self
            .pending_low_us()
            .map_or(outstanding_us, |low| low.min(outstanding_us));
        let low = if low_us == u64::MAX {
            u64::MAX
        } else {
            slice_of(low_us)
        };
        self.flush_before(low);
        self.publish(low);
    }

    /// Attributes every sample with the timeline as it now is and hands over every cell.
    pub fn finish(&mut self) {
        while let Some(sample) = self.pop_pending() {
            self.commit(sample);
        }
        self.flush_before(u64::MAX);
        self.publish(u64::MAX);
    }

    fn publish(&mut self, watermark: u64) {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.aggregate.set_watermark(self.index, watermark);
        }
    }

    fn commit(&mut self, sample: Sample) {
        let wall_ms = self.clock.wall_ms_at_us(sample.intended_us);
        let key = CellKey {
            slice: slice_of(sample.intended_us),
            phase: self.phases.current().phase_at_ms(wall_ms),
        };
        let slow = (sample.latency_us >= self.slow_threshold_us).then_some(Slow {
            latency_us: sample.latency_us,
            intended_us: sample.intended_us,
            error: !sample.ok,
        });
        if let Some((_, cell)) = self.cells.iter_mut().find(|(k, _)| *k == key) {
            cell.record(&sample);
            if let Some(slow) = slow {
                cell.slow.offer(slow);
            }
            return;
        }
        // A new cell: the older slices are done with (a straggler reopens one, and the
        // aggregate merges it, as long as the watermark held the slice open).
        self.flush_before(key.slice);
        if self.cells.len() >= OPEN_CELLS_PER_CONNECTION {
            self.flush_oldest();
        }
        let mut cell = self.spare.pop().unwrap_or_default();
        cell.record(&sample);
        if let Some(slow) = slow {
            cell.slow.offer(slow);
        }
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

/// A recorder that goes away says it will add nothing more, whatever became of its
/// connection: a task that panicked (or a run that dropped it without [`Recorder::finish`])
/// must not hold its slices open for the rest of the run. Only the watermark is published
/// here (an atomic store, which cannot fail while unwinding); what was still waiting or
/// open is lost with the task.
impl Drop for Recorder {
    fn drop(&mut self) {
        self.publish(u64::MAX);
    }
}

/// The run's recording, merged from every connection. Two locks: connections only ever
/// take `open` (a map insert or a histogram merge, once per slice), so that the controller,
/// which finalizes slices under `done` (merging, serializing), never holds up a connection
/// reading replies.
pub struct Aggregate {
    open: Mutex<OpenCells>,
    done: Mutex<Finalized>,
    /// Per connection: the first slice it may still add to.
    watermarks: Box<[AtomicU64]>,
    clock: Clock,
    /// A fleet run: where each finalized second's whole histogram is also added, and this
    /// run's index among the fleet's pairs.
    sink: Option<(Arc<crate::fleet_run::sink::FleetSink>, usize)>,
}

struct OpenCells {
    cells: BTreeMap<CellKey, Cell>,
    /// Empty cells to hand to connections in exchange for full ones; at most
    /// [`POOL_MAX`].
    pool: Vec<Cell>,
}

/// Empty cells the aggregate keeps for reuse. A running aggregate needs a few (the slices
/// the watermarks hold open, times the phases they overlap); after a stall released many
/// at once, the rest are freed rather than kept for the run (each is ~180 KB).
const POOL_MAX: usize = 16;

struct Finalized {
    phase_totals: BTreeMap<PhaseId, Cell>,
    slices: Vec<SliceRecord>,
    /// The first slice not finalized yet (slices before it are, gaps included).
    next_slice: u64,
    hlog_body: Vec<u8>,
    serializer: V2DeflateSerializer,
    scratch: Histogram<u64>,
    slow_scratch: SlowTop,
    slow: Vec<Slow>,
    slow_omitted: u64,
    problems: Vec<String>,
}

/// What the aggregate holds at the end of the run.
pub struct Recorded {
    /// In slice order, one per second from the start (a slice handed in after it was
    /// finalized adds a second record: see [`merge_slices`]).
    pub slices: Vec<SliceRecord>,
    pub phase_totals: BTreeMap<PhaseId, Cell>,
    /// The interval lines of `histograms.hlog` (without its header).
    pub hlog_body: Vec<u8>,
    /// The slowest requests of each slice, in intended-time order.
    pub slow: Vec<Slow>,
    /// Slow requests left out because their slice had its share.
    pub slow_omitted: u64,
    pub problems: Vec<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Aggregate {
    /// For a run of `connections` connections (each a [`Recorder`] with its index).
    pub fn new(clock: Clock, connections: usize) -> Aggregate {
        Aggregate {
            open: Mutex::new(OpenCells {
                cells: BTreeMap::new(),
                pool: Vec::new(),
            }),
            done: Mutex::new(Finalized {
                phase_totals: BTreeMap::new(),
                slices: Vec::new(),
                next_slice: 0,
                hlog_body: Vec::new(),
                serializer: V2DeflateSerializer::new(),
                scratch: new_histogram(),
                slow_scratch: SlowTop::new(),
                slow: Vec::new(),
                slow_omitted: 0,
                problems: Vec::new(),
            }),
            watermarks: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            clock,
            sink: None,
        }
    }

    /// A pair of a fleet run: each finalized second's histogram is added to the fleet's
    /// (one HdrHistogram add per second, nothing per request).
    pub fn with_sink(
        mut self,
        sink: Arc<crate::fleet_run::sink::FleetSink>,
        member: usize,
    ) -> Self {
        self.sink = Some((sink, member));
        self
    }

    fn set_watermark(&self, index: usize, slice: u64) {
        if let Some(w) = self.watermarks.get(index) {
            w.fetch_max(slice, Ordering::Release);
        }
    }

    /// The first slice some connection may still add to (`u64::MAX` when none may): every
    /// slice before it can be finalized.
    pub fn settled_slice(&self) -> u64 {
        self.watermarks
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
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

    /// Finalizes every slice before `slice_limit`: those with samples, and (for a finite
    /// limit) the empty seconds between them, so that the slices stay contiguous.
    pub fn finalize_below(&self, slice_limit: u64, phases: &PhaseMap) {
        let ready = {
            let mut open = lock(&self.open);
            let later = open.cells.split_off(&CellKey {
                slice: slice_limit,
                phase: PhaseId(0),
            });
            std::mem::replace(&mut open.cells, later)
        };
        let mut emptied = Vec::with_capacity(ready.len());
        {
            let mut guard = lock(&self.done);
            let done = &mut *guard;
            let mut cells = ready.into_iter().peekable();
            while let Some((key, cell)) = cells.next() {
                let slice = key.slice;
                self.fill_gaps(done, slice, phases);
                done.scratch.reset();
                done.slow_scratch.clear();
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
                    done.slow_scratch.add(&cell.slow);
                    record.ops += cell.ops;
                    record.errors += cell.errors;
                    self.write_phase_interval(done, key, &cell, phases);
                    done.phase_totals.entry(key.phase).or_default().add(&cell);
                    cell.reset();
                    emptied.push(cell);
                    if cells.peek().is_some_and(|(k, _)| k.slice == slice) {
                        next = cells.next();
                    }
                }
                record.latency = latency_of(&done.scratch);
                let Finalized {
                    slow_scratch,
                    slow,
                    slow_omitted,
                    ..
                } = done;
                *slow_omitted += slow_scratch.omitted;
                slow_scratch.drain_into(slow);
                Self::write_whole_interval(done, slice);
                if let Some((sink, member)) = &self.sink {
                    sink.add(*member, slice, &done.scratch);
                }
                done.slices.push(record);
                done.next_slice = done.next_slice.max(slice + 1);
            }
            if slice_limit != u64::MAX {
                self.fill_gaps(done, slice_limit, phases);
            }
            if let Some((sink, member)) = &self.sink {
                sink.advance(*member, done.next_slice);
            }
        }
        if !emptied.is_empty() {
            let mut open = lock(&self.open);
            let room = POOL_MAX.saturating_sub(open.pool.len());
            open.pool.extend(emptied.drain(..room.min(emptied.len())));
        }
        // The cells beyond the pool's bound are freed here, outside the lock.
        drop(emptied);
    }

    /// After the final [`Aggregate::finalize_below`]: empty slices up to `last_slice`
    /// (inclusive), for seconds at the end in which nothing was intended.
    pub fn fill_to(&self, last_slice: u64, phases: &PhaseMap) {
        let mut done = lock(&self.done);
        self.fill_gaps(&mut done, last_slice.saturating_add(1), phases);
    }

    /// Empty records (and empty untagged intervals) for the slices from the next one not
    /// finalized up to `slice` (exclusive).
    fn fill_gaps(&self, done: &mut Finalized, slice: u64, phases: &PhaseMap) {
        while done.next_slice < slice {
            let gap = done.next_slice;
            done.scratch.reset();
            Self::write_whole_interval(done, gap);
            done.slices.push(SliceRecord {
                slice: gap,
                phase: phases.phase_at_ms(self.clock.wall_ms_at_us(gap * SLICE_US)),
                ops: 0,
                errors: 0,
                latency: Latency::default(),
            });
            done.next_slice = gap + 1;
        }
    }

    /// The untagged interval of a slice: `done.scratch`, the whole run's histogram of that
    /// second (every phase), which HdrHistogram's tools read by default.
    fn write_whole_interval(done: &mut Finalized, slice: u64) {
        let start_us = slice * SLICE_US;
        let Finalized {
            hlog_body,
            serializer,
            problems,
            scratch,
            ..
        } = done;
        write_interval(
            hlog_body,
            serializer,
            problems,
            scratch,
            start_us,
            start_us + SLICE_US,
            None,
        );
    }

    /// One tagged interval: the part of the slice that lies in the phase.
    fn write_phase_interval(
        &self,
        done: &mut Finalized,
        key: CellKey,
        cell: &Cell,
        phases: &PhaseMap,
    ) {
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
        write_interval(
            hlog_body,
            serializer,
            problems,
            &cell.histogram,
            start_us,
            end_us,
            Tag::new(phases.name(key.phase)),
        );
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
            slow: std::mem::take(&mut done.slow),
            slow_omitted: std::mem::take(&mut done.slow_omitted),
            problems: std::mem::take(&mut done.problems),
        }
    }
}

/// One interval line of the histogram log; the first failure is kept as a problem.
pub(crate) fn write_interval(
    hlog_body: &mut Vec<u8>,
    serializer: &mut V2DeflateSerializer,
    problems: &mut Vec<String>,
    histogram: &Histogram<u64>,
    start_us: u64,
    end_us: u64,
    tag: Option<Tag<'_>>,
) {
    let written = IntervalLogWriterBuilder::new()
        .begin_log_with(hlog_body, serializer)
        .map_err(|e| e.to_string())
        .and_then(|mut log| {
            log.write_histogram(
                histogram,
                Duration::from_micros(start_us),
                Duration::from_micros(end_us.saturating_sub(start_us)),
                tag,
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        if problems.is_empty() {
            problems.push(format!("histogram log: {e}"));
        }
    }
}

/// Merges records of the same slice (a slice finalized while a request intended in it was
/// still outstanding, past the bound on open slices, gets a second record when its reply
/// comes): counts add up, the maximum is the larger of the two, and each percentile is
/// weighed by the records' successes (see [`merge_latency`]), so that one late reply does
/// not make a second's p50 its latency.
pub fn merge_slices(mut slices: Vec<SliceRecord>) -> Vec<SliceRecord> {
    // Stable: a slice's first record stays first.
    slices.sort_by_key(|s| s.slice);
    let mut out: Vec<SliceRecord> = Vec::with_capacity(slices.len());
    for s in slices {
        match out.last_mut() {
            Some(last) if last.slice == s.slice => {
                last.latency = merge_latency(
                    &last.latency,
                    last.ops.saturating_sub(last.errors),
                    &s.latency,
                    s.ops.saturating_sub(s.errors),
                );
                last.ops += s.ops;
                last.errors += s.errors;
            }
            _ => out.push(s),
        }
    }
    out
}

/// The percentiles of `a` (of `a_n` successes) and `b` (of `b_n`) together, from their
/// summaries alone (the histograms are gone once a slice is written). The q-quantile of
/// the `n = a_n + b_n` samples is the one of rank `ceil(q·n)`: a record can hold it only
/// if it has more samples than the `n − ceil(q·n)` above it, whatever the other record
/// holds. So a record's percentile counts only where its successes exceed that, roughly
/// `(1 − q)·n`: a single late reply in a second of 2,000 moves none of p50..p99.9, only
/// the maximum; a late record holding most of the second's replies sets them. Where both
/// records may hold the quantile, the larger of their percentiles is taken (an upper
/// bound). The maximum is exact.
pub fn merge_latency(a: &Latency, a_n: u64, b: &Latency, b_n: u64) -> Latency {
    let n = a_n + b_n;
    if n == 0 {
        return Latency::default();
    }
    let pick = |q: f64, pa: u64, pb: u64| -> u64 {
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let above = n - rank;
        match (a_n > above, b_n > above) {
            (true, false) => pa,
            (false, true) => pb,
            // Both may hold it, or (for a median of two equal halves) neither alone does.
            _ => pa.max(pb),
        }
    };
    let mut merged = Latency {
        p50: pick(0.50, a.p50, b.p50),
        p90: pick(0.90, a.p90, b.p90),
        p99: pick(0.99, a.p99, b.p99),
        p999: pick(0.999, a.p999, b.p999),
        max: a.max.max(b.max),
    };
    // Non-decreasing in that order, as every latency of the schema.
    merged.p90 = merged.p90.max(merged.p50);
    merged.p99 = merged.p99.max(merged.p90);
    merged.p999 = merged.p999.max(merged.p99);
    merged.max = merged.max.max(merged.p999);
    merged
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::PhaseSource;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    use reports::timeline::{Event, EventKind};

    const NONE_OUTSTANDING: u64 = u64::MAX;

    fn ok(intended_us: u64, reply_us: u64) -> Sample {
        Sample {
            intended_us,
            reply_us,
            latency_us: reply_us - intended_us,
            ok: true,
        }
    }

    type Setup = (Clock, Arc<Aggregate>, Vec<Recorder>, Arc<PhaseSource>);

    fn setup(connections: usize, pending_max: usize) -> Setup {
        let clock = Clock::start_now();
        let aggregate = Arc::new(Aggregate::new(clock, connections));
        let source = Arc::new(PhaseSource::default());
        let recorders = (0..connections)
            .map(|i| {
                Recorder::new(
                    aggregate.clone(),
                    PhaseView::new(source.clone()),
                    clock,
                    pending_max,
                    i,
                    10_000,
                )
            })
            .collect();
        (clock, aggregate, recorders, source)
    }

    /// `(tag, start, count)` of every interval of a log body.
    fn intervals(body: &[u8]) -> Vec<(Option<String>, f64, u64)> {
        IntervalLogIterator::new(body)
            .map(|e| match e.unwrap() {
                LogEntry::Interval(h) => {
                    let mut d = Deserializer::new();
                    let hist: Histogram<u64> = d
                        .deserialize(
                            &mut base64::Engine::decode(
                                &base64::engine::general_purpose::STANDARD,
                                h.encoded_histogram(),
                            )
                            .expect("base64")
                            .as_slice(),
                        )
                        .unwrap();
                    (
                        h.tag().map(|t| t.as_str().to_string()),
                        h.start_timestamp().as_secs_f64(),
                        hist.len(),
                    )
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn samples_land_in_the_slice_and_phase_of_their_intended_time() {
        let (clock, aggregate, mut recorders, source) = setup(1, 1024);
        let recorder = &mut recorders[0];
        recorder.push(ok(100_000, 100_500));
        // Intended in the second slice, answered in the third.
        recorder.push(ok(1_100_000, 2_300_000));
        recorder.push(Sample {
            intended_us: 1_200_000,
            reply_us: 2_350_000,
            latency_us: 1_150_000,
            ok: false,
        });
        recorder.commit_due(250_000, NONE_OUTSTANDING); // the first is still within its grace
        aggregate.finalize_below(aggregate.settled_slice(), &PhaseMap::default());
        assert!(aggregate.take().slices.is_empty());
        // A phase starting at 1.0 s arrives late; the samples intended after it land in it.
        let phase_start_ms = clock.wall_ms_at_us(1_000_000);
        let events = vec![Event {
            phase: Some("baseline".into()),
            ..Event::new(phase_start_ms, EventKind::PhaseStart)
        }];
        source.publish(PhaseMap::from_events(&events));
        recorder.commit_due(2_600_000, NONE_OUTSTANDING);
        assert_eq!(aggregate.settled_slice(), u64::MAX);
        let map = PhaseMap::from_events(&events);
        aggregate.finalize_below(3, &map);
        let recorded = aggregate.take();
        assert_eq!(recorded.slices.len(), 3, "{:?}", recorded.slices);
        assert_eq!(recorded.slices[0].phase, PhaseId::STEADY);
        assert_eq!(recorded.slices[0].ops, 1);
        assert_eq!(recorded.slices[1].phase, PhaseId(0));
        assert_eq!((recorded.slices[1].ops, recorded.slices[1].errors), (2, 1));
        assert!(recorded.slices[1].latency.max >= 1_200_000);
        assert_eq!(
            recorded.slices[2].ops, 0,
            "nothing was intended in the third"
        );
        assert_eq!(recorded.phase_totals[&PhaseId(0)].histogram.len(), 1);
        assert_eq!(recorded.phase_totals[&PhaseId::STEADY].ops, 1);
        // The slow ones, in intended order, errors included.
        assert_eq!(
            recorded.slow,
            vec![
                Slow {
                    latency_us: 1_200_000,
                    intended_us: 1_100_000,
                    error: false
                },
                Slow {
                    latency_us: 1_150_000,
                    intended_us: 1_200_000,
                    error: true
                },
            ]
        );
        let tags: Vec<Option<String>> = intervals(&recorded.hlog_body)
            .into_iter()
            .map(|(tag, _, _)| tag)
            .collect();
        assert_eq!(
            tags,
            [
                Some("steady".to_string()),
                None,
                Some("baseline".to_string()),
                None,
                None
            ]
        );
    }

    #[test]
    fn a_slice_stays_open_while_a_request_intended_in_it_is_outstanding() {
        let (_, aggregate, mut recorders, _) = setup(2, 1024);
        let map = PhaseMap::default();
        // Connection 0 stalls: its request intended at 0.5 s is answered at 6 s. Connection
        // 1 goes on answering every second.
        for s in 0..6 {
            recorders[1].push(ok(s * SLICE_US + 10, s * SLICE_US + 20));
        }
        recorders[1].commit_due(6_000_000, 6_000_000);
        recorders[0].commit_due(6_000_000, 500_000);
        assert_eq!(aggregate.settled_slice(), 0);
        aggregate.finalize_below(aggregate.settled_slice(), &map);
        assert!(
            aggregate.last_slice().is_none(),
            "slice 0 waits for connection 0"
        );
        // The stalled request and the ones behind it come back, late, all at once.
        for s in 0..6 {
            recorders[0].push(ok(s * SLICE_US + 500_000, 6_000_100));
        }
        recorders[0].commit_due(6_300_000, 6_500_000);
        recorders[1].commit_due(6_300_000, 6_500_000);
        assert_eq!(aggregate.settled_slice(), 6);
        aggregate.finalize_below(aggregate.settled_slice(), &map);
        let recorded = aggregate.take();
        let ops: Vec<u64> = recorded.slices.iter().map(|s| s.ops).collect();
        assert_eq!(
            ops,
            [2, 2, 2, 2, 2, 2],
            "by intended second, not by arrival"
        );
        let maxes: Vec<u64> = recorded.slices.iter().map(|s| s.latency.max).collect();
        assert!(
            maxes.windows(2).all(|w| w[0] > w[1]),
            "each second's latency is the rest of the stall, the first the highest: {maxes:?}"
        );
    }

    #[test]
    fn slices_are_contiguous_and_the_untagged_intervals_hold_every_success() {
        let (_, aggregate, mut recorders, _) = setup(1, 4);
        let r = &mut recorders[0];
        // Seconds 0 and 3 have samples, 1 and 2 none; 5 is the run's last.
        for i in 0..10 {
            r.push(ok(i * 1000, i * 1000 + 50));
        }
        r.push(Sample {
            intended_us: 20_000,
            reply_us: 20_100,
            latency_us: 100,
            ok: false,
        });
        r.commit_due(2_000_000, 3_000_000);
        aggregate.finalize_below(aggregate.settled_slice(), &PhaseMap::default());
        assert_eq!(
            aggregate.last_slice().map(|s| s.slice),
            Some(2),
            "slices 0, 1, 2 are known"
        );
        for i in 0..7 {
            r.push(ok(3 * SLICE_US + i, 3 * SLICE_US + 2 * i + 1));
        }
        r.finish();
        aggregate.finalize_below(u64::MAX, &PhaseMap::default());
        aggregate.fill_to(5, &PhaseMap::default());
        let recorded = aggregate.take();
        let ops: Vec<(u64, u64)> = recorded.slices.iter().map(|s| (s.slice, s.ops)).collect();
        assert_eq!(ops, [(0, 11), (1, 0), (2, 0), (3, 7), (4, 0), (5, 0)]);
        let log = intervals(&recorded.hlog_body);
        let untagged: Vec<(f64, u64)> = log
            .iter()
            .filter(|(tag, _, _)| tag.is_none())
            .map(|(_, start, count)| (*start, *count))
            .collect();
        assert_eq!(
            untagged,
            [(0.0, 10), (1.0, 0), (2.0, 0), (3.0, 7), (4.0, 0), (5.0, 0)]
        );
        let tagged: u64 = log
            .iter()
            .filter(|(tag, _, _)| tag.is_some())
            .map(|(_, _, count)| count)
            .sum();
        assert_eq!(tagged, 17);
    }

    #[test]
    fn a_full_queue_attributes_early_and_finish_hands_over_everything() {
        let (_, aggregate, mut recorders, _) = setup(1, 2);
        for i in 0..5 {
            recorders[0].push(ok(i * 700_000, i * 700_000 + 10 + i));
        }
        recorders[0].finish();
        aggregate.finalize_below(u64::MAX, &PhaseMap::default());
        let recorded = aggregate.take();
        let ops: u64 = recorded.slices.iter().map(|s| s.ops).sum();
        assert_eq!(ops, 5);
        assert_eq!(recorded.phase_totals[&PhaseId::STEADY].histogram.len(), 5);
        assert_eq!(recorded.phase_totals[&PhaseId::STEADY].histogram.max(), 14);
    }

    #[test]
    fn a_retried_reply_behind_a_later_one_holds_its_slice_open() {
        let (_, aggregate, mut recorders, _) = setup(1, 1024);
        let map = PhaseMap::default();
        let r = &mut recorders[0];
        // Intended at 1.5 s, answered at 2.0 s; then a retried request intended at 0.9 s
        // (slice 0), answered at 2.05 s, behind it in the queue.
        r.push(ok(1_500_000, 2_000_000));
        r.push(ok(900_000, 2_050_000));
        r.commit_due(2_100_000, 2_100_000);
        assert_eq!(
            aggregate.settled_slice(),
            0,
            "slice 0 has a sample waiting, behind one of slice 1"
        );
        aggregate.finalize_below(aggregate.settled_slice(), &map);
        assert!(aggregate.last_slice().is_none());
        r.commit_due(2_300_000, 2_300_000);
        assert_eq!(aggregate.settled_slice(), 2);
        aggregate.finalize_below(aggregate.settled_slice(), &map);
        let recorded = aggregate.take();
        let ops: Vec<(u64, u64)> = recorded.slices.iter().map(|s| (s.slice, s.ops)).collect();
        assert_eq!(ops, [(0, 1), (1, 1)], "one record each: none late");
    }

    #[test]
    fn the_pending_minimum_follows_the_queue() {
        const MAX: usize = 8;
        let (_, _aggregate, mut recorders, _) = setup(1, MAX);
        let r = &mut recorders[0];
        let capacity = r.pending_min.capacity();
        let mut model: VecDeque<u64> = VecDeque::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                let popped = r.pop_pending().map(|s| s.intended_us);
                assert_eq!(popped, model.pop_front());
            } else {
                // Few distinct values: duplicates too.
                let intended_us = (x >> 8) % 40;
                if model.len() >= MAX {
                    model.pop_front(); // a full queue commits its oldest
                }
                model.push_back(intended_us);
                r.push(ok(intended_us, 1_000 + step));
            }
            assert_eq!(
                r.pending_low_us(),
                model.iter().min().copied(),
                "step {step}"
            );
            assert!(r.pending_min.len() <= r.pending.len());
        }
        assert_eq!(r.pending_min.capacity(), capacity, "never grew");
    }

    #[test]
    fn a_dropped_recorder_holds_no_slice_open() {
        let (_, aggregate, mut recorders, _) = setup(2, 16);
        recorders[1].commit_due(5_000_000, 5_000_000);
        let mut stuck = recorders.remove(0);
        stuck.push(ok(100, 200));
        stuck.commit_due(1_000, 100);
        assert_eq!(aggregate.settled_slice(), 0);
        // The connection task panics: its recorder is dropped while unwinding.
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _owned = stuck;
            panic!("a connection task fails");
        }));
        assert!(panicked.is_err());
        assert_eq!(aggregate.settled_slice(), 5, "only connection 1 counts now");
    }

    #[test]
    fn the_pool_of_empty_cells_is_bounded() {
        let (_, aggregate, _, _) = setup(1, 16);
        // A stall released: 40 slices handed in at once, then finalized.
        for slice in 0..40 {
            let mut cell = Cell::new();
            cell.record(&ok(slice * SLICE_US, slice * SLICE_US + 10));
            aggregate.absorb(
                CellKey {
                    slice,
                    phase: PhaseId::STEADY,
                },
                &mut cell,
            );
        }
        aggregate.finalize_below(40, &PhaseMap::default());
        assert_eq!(aggregate.take().slices.len(), 40);
        assert_eq!(lock(&aggregate.open).pool.len(), POOL_MAX);
    }

    #[test]
    fn the_slowest_of_a_slice_are_kept_and_the_rest_counted() {
        let mut a = SlowTop::new();
        let mut b = SlowTop::new();
        for i in 0..150u64 {
            let slow = Slow {
                latency_us: 10_000 + i,
                intended_us: i,
                error: false,
            };
            if i % 2 == 0 {
                a.offer(slow);
            } else {
                b.offer(slow);
            }
        }
        assert_eq!((a.len(), a.omitted), (75, 0));
        a.add(&b);
        assert_eq!((a.len(), a.omitted), (SLOW_PER_SLICE_MAX, 50));
        let mut out = Vec::new();
        a.drain_into(&mut out);
        assert_eq!(out.len(), SLOW_PER_SLICE_MAX);
        assert_eq!(out[0].intended_us, 50, "the 50 fastest were left out");
        assert!(out.windows(2).all(|w| w[0].intended_us < w[1].intended_us));
        assert!(a.is_empty());
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
        // Of 7 samples, the 2 late ones can hold neither the median (rank 4: 3 above it)
        // nor less than p90 (rank 7: none above).
        let mut one = s(1, 7, 30);
        one.latency.p50 = 10;
        assert_eq!(merged, vec![s(0, 1, 1), one]);
        // A late record holding most of the second sets its percentiles.
        let merged = merge_slices(vec![s(3, 1, 5), s(3, 99, 40)]);
        assert_eq!(merged, vec![s(3, 100, 40)]);
        // Error replies have no latency: they do not weigh.
        let mut errors = s(4, 10, 0);
        errors.errors = 10;
        let merged = merge_slices(vec![s(4, 1, 7), errors]);
        assert_eq!(merged[0].latency, l(7));
        assert_eq!((merged[0].ops, merged[0].errors), (11, 10));
    }

    #[test]
    fn one_late_reply_raises_its_seconds_maximum_only() {
        // Slice 0 has 2,000 replies on connection 0; connection 1's request intended in it
        // is answered 300 s later, after the slice was force-finalized (the bound on open
        // slices), so it comes as a second record of slice 0.
        let (_, aggregate, mut recorders, _) = setup(2, 4096);
        let map = PhaseMap::default();
        for i in 0..2000 {
            let intended_us = i * 400;
            recorders[0].push(ok(intended_us, intended_us + 100 + i % 500));
        }
        recorders[0].commit_due(2_000_000, 2_000_000);
        recorders[1].commit_due(2_000_000, 500_000);
        assert_eq!(aggregate.settled_slice(), 0, "connection 1 holds slice 0");
        aggregate.finalize_below(1, &map); // forced, as the run does past OPEN_SLICES_MAX
        let first = aggregate.last_slice().unwrap();
        assert_eq!((first.slice, first.ops), (0, 2000));
        recorders[1].push(ok(500_000, 300_500_000));
        recorders[0].finish();
        recorders[1].finish();
        aggregate.finalize_below(u64::MAX, &map);
        let recorded = aggregate.take();
        let late: Vec<&SliceRecord> = recorded.slices.iter().filter(|s| s.slice == 0).collect();
        assert_eq!(late.len(), 2, "a second record of slice 0");
        let merged = merge_slices(recorded.slices.clone());
        assert_eq!(merged[0].slice, 0);
        assert_eq!(merged[0].ops, 2001);
        let (before, after) = (first.latency, merged[0].latency);
        assert_eq!(after.p50, before.p50);
        assert_eq!(after.p90, before.p90);
        assert_eq!(after.p99, before.p99);
        assert_eq!(after.p999, before.p999);
        assert!(before.max < 1_000, "{before:?}");
        assert!(
            (300_000_000..300_300_000).contains(&after.max),
            "300 s at 3 significant digits: {after:?}"
        );
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
        let spectrum = percentiles_of(&h);
        assert!(spectrum.len() > 20, "{} points", spectrum.len());
        assert_eq!(spectrum[0].p, 0.0);
        let last = spectrum.last().unwrap();
        assert_eq!((last.p, last.us), (100.0, 1000));
        assert!(spectrum
            .windows(2)
            .all(|w| w[0].p < w[1].p && w[0].us <= w[1].us));
        let p50 = spectrum.iter().find(|p| p.p == 50.0).unwrap();
        assert_eq!(p50.us, h.value_at_quantile(0.5));
        assert!(percentiles_of(&new_histogram()).is_empty());
        h.saturating_record(u64::MAX);
        assert!(h.max() >= LATENCY_US_MAX);
    }
}
