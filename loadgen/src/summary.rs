//! From what was recorded to the run schema: the phases of `summary.json` (timeline order,
//! clipped to the run; a run without an upgrade is one "steady" phase) and the one-second
//! slices of `slices.json`.
//!
//! A phase's `ops`, `errors`, latency and percentile spectrum are of the requests *intended*
//! in the phase (the open-loop schedule's send time; closed loop: the actual send), as the
//! slices' are: a stall that starts in one phase is charged to that phase, not to the one in
//! which its backlog was finally answered. `throughput_ops_s` is those requests over the
//! phase's duration.

use std::collections::BTreeMap;

use reports::run::Slice;
use reports::summary::PhaseSummary;

use crate::clock::Clock;
use crate::phase::{PhaseId, PhaseMap, STEADY};
use crate::record::{latency_of, merge_slices, percentiles_of, Cell, SliceRecord, SLICE_US};

/// A phase of the summary, with its histogram.
pub struct PhaseResult {
    pub summary: PhaseSummary,
    pub cell: Cell,
}

/// The phases of the run in timeline order: every phase of the timeline that overlaps the
/// run `[started_ms, ended_ms]`, clipped to it; or, when the timeline has no phase in the
/// run, one "steady" phase over the whole run. Throughput is over the clipped span.
pub fn phases(
    map: &PhaseMap,
    mut totals: BTreeMap<PhaseId, Cell>,
    started_ms: u64,
    ended_ms: u64,
) -> Vec<PhaseResult> {
    let mut out = Vec::new();
    let mut covered: Vec<(u64, u64)> = Vec::new();
    for (i, span) in map.spans().iter().enumerate() {
        let id = PhaseId(i as u16);
        let start_ms = span.start_ms.max(started_ms);
        let end_ms = span.end_ms.unwrap_or(ended_ms).min(ended_ms);
        let cell = totals.remove(&id).unwrap_or_default();
        if end_ms < start_ms && cell.is_empty() {
            continue; // an earlier upgrade's phase, replayed
        }
        covered.push((start_ms, end_ms.max(start_ms)));
        out.push(result(
            span.name.clone(),
            start_ms,
            end_ms.max(start_ms),
            cell,
            None,
        ));
    }
    // "steady" is the phase of a run without an upgrade. In an upgrade run the samples
    // outside every phase (the warm-up before the baseline, the tail after the upgrade) stay
    // in the slices but get no row: a row spanning the whole run would read as a phase.
    let steady = totals.remove(&PhaseId::STEADY).unwrap_or_default();
    if out.is_empty() {
        let outside_ms = ended_ms.saturating_sub(started_ms) - union_ms(&mut covered);
        out.push(result(
            STEADY.to_string(),
            started_ms,
            ended_ms,
            steady,
            Some(outside_ms),
        ));
    }
    out.sort_by_key(|p| p.summary.start_ms); // stable: timeline order among equals
    out
}

/// Milliseconds covered by the union of `spans`.
fn union_ms(spans: &mut [(u64, u64)]) -> u64 {
    spans.sort_unstable();
    let mut total = 0;
    let mut reach = 0;
    for &(start, end) in spans.iter() {
        let start = start.max(reach);
        if end > start {
            total += end - start;
        }
        reach = reach.max(end);
    }
    total
}

/// `active_ms`: the time the throughput is over, if not `end_ms - start_ms`.
fn result(
    name: String,
    start_ms: u64,
    end_ms: u64,
    cell: Cell,
    active_ms: Option<u64>,
) -> PhaseResult {
    let active_ms = active_ms.unwrap_or(end_ms.saturating_sub(start_ms));
    let span_s = active_ms.max(1) as f64 / 1000.0;
    PhaseResult {
        summary: PhaseSummary {
            name,
            start_ms,
            end_ms,
            ops: cell.ops,
            throughput_ops_s: cell.ops as f64 / span_s,
            errors: cell.errors,
            latency_us: latency_of(&cell.histogram),
            simplex_ms: 0,
            percentiles: percentiles_of(&cell.histogram),
        },
        cell,
    }
}

/// `slices.json`: one entry per second of the run, attributed to the phase its start fell
/// in: the requests intended in it, and `replied[slice]`, the replies that arrived in it.
pub fn slices(
    records: Vec<SliceRecord>,
    map: &PhaseMap,
    clock: &Clock,
    replied: &[u64],
) -> Vec<Slice> {
    merge_slices(records)
        .into_iter()
        .map(|r| Slice {
            t_ms: clock.wall_ms_at_us(r.slice * SLICE_US),
            phase: map.name(r.phase).to_string(),
            ops: r.ops,
            errors: r.errors,
            latency_us: r.latency,
            replied: Some(replied.get(r.slice as usize).copied().unwrap_or(0)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Sample;
    use reports::timeline::{Event, EventKind};

    fn cell(samples: &[(u64, u64)]) -> Cell {
        let mut c = Cell::new();
        for &(reply_us, latency_us) in samples {
            c.record(&Sample {
                intended_us: reply_us - latency_us,
                reply_us,
                latency_us,
                ok: true,
            });
        }
        c
    }

    #[test]
    fn phases_in_timeline_order_without_the_samples_around_them() {
        let clock = Clock::start_now();
        let started_ms = clock.start_wall_ms();
        let ev = |t, kind, name: &str| Event {
            phase: Some(name.into()),
            ..Event::new(started_ms + t, kind)
        };
        let events = vec![
            // An earlier upgrade's phase, replayed: left out.
            Event {
                phase: Some("old".into()),
                ..Event::new(started_ms - 5_000, EventKind::PhaseStart)
            },
            Event {
                phase: Some("old".into()),
                ..Event::new(started_ms - 4_000, EventKind::PhaseEnd)
            },
            ev(1_000, EventKind::PhaseStart, "baseline"),
            ev(3_000, EventKind::PhaseEnd, "baseline"),
            ev(3_000, EventKind::PhaseStart, "evaluation"),
        ];
        let map = PhaseMap::from_events(&events);
        let mut totals = BTreeMap::new();
        totals.insert(PhaseId(1), cell(&[(1_500_000, 10), (2_500_000, 30)]));
        totals.insert(PhaseId::STEADY, cell(&[(200_000, 5)]));
        let ended_ms = started_ms + 5_000;
        let phases = phases(&map, totals, started_ms, ended_ms);
        let names: Vec<&str> = phases.iter().map(|p| p.summary.name.as_str()).collect();
        assert_eq!(
            names,
            ["baseline", "evaluation"],
            "samples outside the phases get no row"
        );
        let baseline = &phases[0].summary;
        assert_eq!(
            (baseline.start_ms, baseline.end_ms),
            (started_ms + 1_000, started_ms + 3_000)
        );
        assert_eq!(baseline.ops, 2);
        assert_eq!(baseline.throughput_ops_s, 1.0);
        assert_eq!(baseline.latency_us.max, 30);
        let spectrum: Vec<(f64, u64)> = baseline.percentiles.iter().map(|p| (p.p, p.us)).collect();
        assert_eq!(
            spectrum,
            [
                (0.0, 10),
                (10.0, 10),
                (20.0, 10),
                (30.0, 10),
                (40.0, 10),
                (50.0, 10),
                (55.0, 30),
                (100.0, 30)
            ],
            "HdrHistogram's grid, as HistogramLogProcessor prints it"
        );
        let evaluation = &phases[1].summary;
        assert_eq!(
            evaluation.end_ms, ended_ms,
            "an open phase ends with the run"
        );
        assert_eq!(evaluation.ops, 0);
    }

    #[test]
    fn the_union_of_spans_counts_overlaps_once() {
        assert_eq!(union_ms(&mut [(5, 10), (0, 3), (2, 4), (6, 7)]), 9);
    }

    #[test]
    fn a_run_without_timeline_is_one_steady_phase() {
        let mut totals = BTreeMap::new();
        totals.insert(PhaseId::STEADY, cell(&[(100, 10), (900_000, 20)]));
        let phases = phases(&PhaseMap::default(), totals, 1_000, 3_000);
        assert_eq!(phases.len(), 1);
        assert_eq!(phases[0].summary.name, "steady");
        assert_eq!(
            (phases[0].summary.start_ms, phases[0].summary.end_ms),
            (1_000, 3_000)
        );
        assert_eq!(phases[0].summary.throughput_ops_s, 1.0);
    }
}
