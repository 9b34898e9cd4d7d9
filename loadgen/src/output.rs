//! Writing the run directory: `summary.json`, `slices.json` and `timeline.json` through
//! `reports::run::RunDir` (which owns the file names and writes each file atomically), and
//! `histograms.hlog`, the HdrHistogram interval log of the latency per (second, phase),
//! tagged with the phase, timestamps relative to the run's start.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use reports::run::{RunDir, Slice};
use reports::summary::Summary;
use reports::timeline::Timeline;

use crate::clock::Clock;
use crate::error::Error;

pub struct RunFiles<'a> {
    pub summary: &'a Summary,
    pub slices: &'a [Slice],
    /// `None` for a run without a supervisor (Redis): no `timeline.json`.
    pub timeline: Option<&'a Timeline>,
    pub hlog_body: &'a [u8],
}

pub fn write(dir: &Path, files: &RunFiles<'_>, clock: &Clock) -> Result<(), Error> {
    let run = RunDir::new(dir);
    run.write_summary(files.summary)?;
    run.write_slices(files.slices)?;
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
        .add_comment("tandem loadgen: latency in microseconds, coordinated-omission corrected")
        .add_comment("one interval per (one-second slice, phase); the tag is the phase")
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

/// [`print_summary`] to any writer (`loadgen --json` puts it on stderr).
pub fn write_summary(w: &mut impl std::io::Write, s: &Summary) -> std::io::Result<()> {
    let ms = |us: u64| us as f64 / 1000.0;
    writeln!(
        w,
        "{:<22} {:>8} {:>10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "phase", "time s", "ops/s", "errors", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    )?;
    for p in &s.phases {
        writeln!(
            w,
            "{:<22} {:>8.1} {:>10.0} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.name,
            (p.end_ms.saturating_sub(p.start_ms)) as f64 / 1000.0,
            p.throughput_ops_s,
            p.errors,
            ms(p.latency_us.p50),
            ms(p.latency_us.p99),
            ms(p.latency_us.p999),
            ms(p.latency_us.max),
        )?;
    }
    for sw in &s.switchovers {
        writeln!(
            w,
            "switchover ({}): step-up {:.1} ms, client gap {:.1} ms",
            sw.kind, sw.stepup_ms, sw.client_gap_ms
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
