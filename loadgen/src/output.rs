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
    let path = run.histograms_path();
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut log = Vec::with_capacity(files.hlog_body.len() + 512);
    let start = UNIX_EPOCH + Duration::from_micros(clock.start_wall_us());
    let mut serializer = V2DeflateSerializer::new();
    IntervalLogWriterBuilder::new()
        .add_comment("tandem loadgen: values are latencies in microseconds, coordinated-omission corrected")
        .add_comment("per second of intended send time: an untagged interval = the whole run; Tag=<phase> = that phase")
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut log, &mut serializer)
        .map_err(io)?;
    log.extend_from_slice(files.hlog_body);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, &log).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
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
