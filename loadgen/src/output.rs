//! Writing the run directory: `summary.json`, `slices.json`, `detail.json` and
//! `timeline.json` through `reports::run::RunDir` (which owns the file names and writes each
//! file atomically), and `histograms.hlog`, the HdrHistogram interval log: per second of
//! intended send time one untagged interval for the whole run (what HdrHistogram's
//! HistogramLogProcessor reads by default) and one per phase, tagged with it; timestamps
//! relative to the run's start.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use reports::run::{Detail, RunDir, Slice};
use reports::summary::{percentile_supported, Summary};
use reports::timeline::Timeline;

use crate::clock::Clock;
use crate::error::Error;

pub struct RunFiles<'a> {
    pub summary: &'a Summary,
    pub slices: &'a [Slice],
    pub detail: &'a Detail,
    /// `None` for a run without a supervisor (Redis): no `timeline.json`.
    pub timeline: Option<&'a Timeline>,
    pub hlog_body: &'a [u8],
}

pub fn write(dir: &Path, files: &RunFiles<'_>, clock: &Clock) -> Result<(), Error> {
    let run = RunDir::new(dir);
    run.write_summary(files.summary)?;
    run.write_slices(files.slices)?;
    run.write_detail(files.detail)?;
    if let Some(timeline) = files.timeline {
        run.write_timeline(timeline)?;
    }
    write_hlog(&run.histograms_path(), files.hlog_body, clock, false)
}

/// `histograms.hlog`: the header, then `body` (the interval lines). `fleet`: the untagged
/// intervals are the whole fleet's seconds (a fleet run's top level), not one pair's.
pub fn write_hlog(path: &Path, body: &[u8], clock: &Clock, fleet: bool) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut log = Vec::with_capacity(body.len() + 512);
    let start = UNIX_EPOCH + Duration::from_micros(clock.start_wall_us());
    let mut serializer = V2DeflateSerializer::new();
    let what = if fleet {
        "per second of intended send time: one untagged interval = every pair of the fleet (each pair's own log is in pairs/NAME/)"
    } else {
        "per second of intended send time: an untagged interval = the whole run; Tag=<phase> = that phase"
    };
    IntervalLogWriterBuilder::new()
        .add_comment(
            "tandem loadgen: values are latencies in microseconds, coordinated-omission corrected",
        )
        .add_comment(what)
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut log, &mut serializer)
        .map_err(io)?;
    log.extend_from_slice(body);
    write_atomically(path, &log)
}

/// Writes `bytes` to a temporary name beside `path` and renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The per-phase table, the switchovers and the update counts, as the `loadgen` binary and
/// `tandem demo` print them at the end of a run.
pub fn print_summary(s: &Summary) {
    // Nothing to do about a closed stdout but stop printing.
    let _ = write_summary(&mut std::io::stdout().lock(), s);
}

/// What a `-` in the table means (printed once below it when one was).
pub const UNSUPPORTED_NOTE: &str = "-: too few samples in the phase for that percentile \
(at least 10 must lie beyond it: p50 needs 20, p99 1,000, p99.9 10,000)";

/// [`print_summary`] to any writer (`loadgen --json` puts it on stderr). A percentile the
/// phase has too few successful samples for (`percentile_supported`) is printed as `-`.
pub fn write_summary(w: &mut impl std::io::Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<22} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "phase", "time s", "ops/s", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    )?;
    let mut unsupported = false;
    for p in &s.phases {
        let samples = p.ops.saturating_sub(p.errors);
        let mut cell = |us: u64, quantile: f64| {
            if percentile_supported(samples, quantile) {
                format!("{:.3}", us as f64 / 1000.0)
            } else {
                unsupported = true;
                "-".to_string()
            }
        };
        let (p50, p99, p999, max) = (
            cell(p.latency_us.p50, 0.50),
            cell(p.latency_us.p99, 0.99),
            cell(p.latency_us.p999, 0.999),
            cell(p.latency_us.max, 1.0),
        );
        writeln!(
            w,
            "{:<22} {:>8.1} {:>10.0} {:>7} {:>9} {:>9} {:>9} {:>9}",
            p.name,
            (p.end_ms.saturating_sub(p.start_ms)) as f64 / 1000.0,
            p.throughput_ops_s,
            p.errors,
            p50,
            p99,
            p999,
            max,
        )?;
    }
    if unsupported {
        writeln!(w, "{UNSUPPORTED_NOTE}")?;
    }
    for sw in &s.switchovers {
        writeln!(
            w,
            "switchover ({}): step-up {:.1} ms, client gap {:.1} ms, {} connections redirected, {} requests retried",
            sw.kind, sw.stepup_ms, sw.client_gap_ms, sw.redirected, sw.retried
        )?;
    }
    if s.target != "redis" {
        let phases: Vec<String> = s
            .phases
            .iter()
            .filter(|p| p.simplex_ms > 0)
            .map(|p| format!("{} {} ms", p.name, p.simplex_ms))
            .collect();
        writeln!(
            w,
            "one engine served alone: {} ms in {} window{}{}",
            s.simplex_ms,
            s.simplex_windows.len(),
            if s.simplex_windows.len() == 1 {
                ""
            } else {
                "s"
            },
            if phases.is_empty() {
                String::new()
            } else {
                format!(" ({})", phases.join(", "))
            }
        )?;
    }
    writeln!(
        w,
        "updates: {} acknowledged, {} verified, {} lost; outcome {}",
        s.acknowledged_updates, s.verified_updates, s.lost_updates, s.outcome
    )
}

const STEADY_NAME: &str = crate::phase::STEADY;

/// A fleet run's end-of-run text: the fleet's periods (the waves and the rest), the
/// upgrade's phases over the pairs, one line per pair (wave, outcome, updates, worst gap,
/// worst p99 of its phases), the updates.
pub fn write_fleet(w: &mut dyn std::io::Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        w,
        "{:<22} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9}",
        "fleet period", "time s", "ops/s", "errors", "p50 ms", "p99 ms", "max ms"
    )?;
    let periods = match &s.fleet {
        Some(f) if !f.periods.is_empty() => &f.periods,
        _ => &s.phases,
    };
    let cell = |p: &reports::summary::PhaseSummary, us: u64, q: f64| {
        if percentile_supported(p.ops.saturating_sub(p.errors), q) {
            format!("{:.3}", us as f64 / 1000.0)
        } else {
            "-".to_string()
        }
    };
    for p in periods {
        writeln!(
            w,
            "{:<22} {:>8.1} {:>10.0} {:>7} {:>9} {:>9} {:>9}",
            p.name,
            p.end_ms.saturating_sub(p.start_ms) as f64 / 1000.0,
            p.throughput_ops_s,
            p.errors,
            cell(p, p.latency_us.p50, 0.5),
            cell(p, p.latency_us.p99, 0.99),
            cell(p, p.latency_us.max, 1.0),
        )?;
    }
    if let Some(fleet) = s.fleet.as_ref().filter(|f| !f.periods.is_empty()) {
        // The summary's phases: every pair's requests while it was in that phase.
        writeln!(
            w,
            "{:<22} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9}",
            "phase, over the pairs", "pairs", "ops", "errors", "p50 ms", "p99 ms", "max ms"
        )?;
        for p in s.phases.iter().filter(|p| p.name != STEADY_NAME) {
            let pairs = fleet
                .pairs
                .iter()
                .filter(|fp| fp.phases.iter().any(|ph| ph.name == p.name))
                .count();
            writeln!(
                w,
                "{:<22} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9}",
                p.name,
                pairs,
                p.ops,
                p.errors,
                cell(p, p.latency_us.p50, 0.5),
                cell(p, p.latency_us.p99, 0.99),
                cell(p, p.latency_us.max, 1.0),
            )?;
        }
    }
    if let Some(fleet) = &s.fleet {
        writeln!(
            w,
            "{:<16} {:>4} {:<12} {:>10} {:>5} {:>11} {:>13}",
            "pair", "wave", "outcome", "acked", "lost", "worst gap", "worst p99 ms"
        )?;
        for p in &fleet.pairs {
            let worst = p
                .phases
                .iter()
                .filter(|ph| percentile_supported(ph.ops.saturating_sub(ph.errors), 0.99))
                .max_by_key(|ph| ph.latency_us.p99);
            writeln!(
                w,
                "{:<16} {:>4} {:<12} {:>10} {:>5} {:>11} {:>13}",
                p.name,
                p.wave.map_or("-".to_string(), |k| k.to_string()),
                p.outcome,
                p.acknowledged_updates,
                p.lost_updates,
                p.worst_gap_ms
                    .map_or("-".to_string(), |g| format!("{g:.1} ms")),
                worst.map_or("-".to_string(), |ph| format!(
                    "{:.3} {}",
                    ph.latency_us.p99 as f64 / 1000.0,
                    ph.name
                )),
            )?;
        }
        if let Some(state) = &fleet.campaign_state {
            writeln!(
                w,
                "campaign {}: {state}{}",
                fleet.campaign.as_deref().unwrap_or("?"),
                fleet
                    .campaign_reason
                    .as_ref()
                    .map_or(String::new(), |r| format!(" ({r})"))
            )?;
        }
        let done = fleet
            .waves
            .iter()
            .filter(|w| w.state == "completed")
            .count();
        writeln!(
            w,
            "waves: {} of {} completed{}",
            done,
            fleet.waves.len(),
            if fleet.waves_inferred {
                " (no campaign record: grouped from the pairs' overlapping upgrades)"
            } else {
                ""
            }
        )?;
    }
    writeln!(
        w,
        "updates over the fleet: {} acknowledged, {} verified, {} lost; outcome {}",
        s.acknowledged_updates, s.verified_updates, s.lost_updates, s.outcome
    )
}
