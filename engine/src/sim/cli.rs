//! `tandem sim`: many seeds side by side (rayon, one simulation per thread), or one seed with
//! its trace.

use std::io::Write as _;
use std::time::Instant;

use rayon::prelude::*;

use super::{run, Options, Plant, Report};

/// Seeds run side by side between two looks at the results.
const WAVE: u64 = 512;

pub struct Args {
    pub seeds: u64,
    pub first_seed: u64,
    pub seed: Option<u64>,
    pub plant: Option<String>,
    pub trace: bool,
    pub supervisor_crashes: bool,
}

impl Args {
    /// The flags a replay needs besides `--seed`.
    fn replay_flags(&self) -> String {
        let mut flags = String::new();
        if let Some(p) = &self.plant {
            flags += &format!(" --plant {p}");
        }
        if !self.supervisor_crashes {
            flags += " --no-supervisor-crashes";
        }
        flags
    }
}

/// Runs what `args` asks for; true if no invariant was broken.
pub fn main(args: &Args) -> Result<bool, String> {
    let plant = args.plant.as_deref().map(Plant::parse).transpose()?;
    let options = |seed| Options {
        plant,
        supervisor_crashes: args.supervisor_crashes,
        ..Options::new(seed)
    };
    let out = &mut std::io::stdout().lock();
    if let Some(seed) = args.seed {
        let report = run(&options(seed));
        if args.trace {
            for line in &report.trace {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(out, "{}", summary_line(&report));
        if report.failure.is_some() {
            let _ = write!(out, "{}", report.explain(&args.replay_flags(), 40));
        }
        return Ok(report.failure.is_none());
    }
    let (mut acked, mut reads) = (0u64, 0u64);
    let (mut completed, mut rolled_back, mut unavailable) = (0u64, 0u64, 0u64);
    let flags = args.replay_flags();
    let passed = side_by_side(
        out,
        args.first_seed,
        args.seeds,
        |seed| run(&options(seed)),
        |r| r.failure.as_ref().map(|_| r.explain(&flags, 40)),
        |r| {
            acked += r.acked_writes;
            reads += r.reads_checked;
            completed += (r.upgrade.as_deref() == Some("completed")) as u64;
            rolled_back += (r.upgrade.as_deref() == Some("rolled_back")) as u64;
            unavailable += r.unavailable.is_some() as u64;
        },
    );
    if let Some((done, secs)) = passed {
        let _ = writeln!(
            out,
            "all {done} seeds passed in {secs:.1} s: {acked} acknowledged writes, {reads} reads checked; upgrades {completed} completed, {rolled_back} rolled back; {unavailable} seeds ended with the pair saying it is unavailable"
        );
    }
    Ok(passed.is_some())
}

/// Runs `count` seeds from `first` side by side (rayon), [`WAVE`] at a time, printing the
/// progress; stops at the lowest failing seed of a wave (the same answer however the threads
/// ran) and prints `failed`'s text for it. Some((seeds, seconds)) if every seed passed.
pub(crate) fn side_by_side<R: Send>(
    out: &mut impl std::io::Write,
    first: u64,
    count: u64,
    run: impl Fn(u64) -> R + Sync + Send,
    failed: impl Fn(&R) -> Option<String>,
    mut tally: impl FnMut(&R),
) -> Option<(u64, f64)> {
    let started = Instant::now();
    let mut done = 0u64;
    let end = first.saturating_add(count);
    let mut next = first;
    while next < end {
        let wave_end = end.min(next + WAVE);
        let reports: Vec<R> = (next..wave_end).into_par_iter().map(&run).collect();
        next = wave_end;
        if let Some((i, text)) = reports
            .iter()
            .enumerate()
            .find_map(|(i, r)| failed(r).map(|t| (i, t)))
        {
            let _ = write!(out, "{text}");
            let _ = writeln!(
                out,
                "{} seeds passed before it ({:.1} s)",
                done + i as u64,
                started.elapsed().as_secs_f64()
            );
            return None;
        }
        reports.iter().for_each(&mut tally);
        done += reports.len() as u64;
        let secs = started.elapsed().as_secs_f64();
        let _ = writeln!(
            out,
            "{done}/{count} seeds passed ({secs:.1} s, {:.1} seeds/s)",
            done as f64 / secs.max(1e-9)
        );
    }
    Some((done, started.elapsed().as_secs_f64()))
}

fn summary_line(r: &Report) -> String {
    format!(
        "seed {}: {}, trace digest {:016x}; {} acknowledged writes, {} reads checked, {:.1} s simulated; upgrade {}; {}",
        r.seed,
        if r.failure.is_some() { "FAILED" } else { "ok" },
        r.digest,
        r.acked_writes,
        r.reads_checked,
        r.simulated.as_secs_f64(),
        r.upgrade.as_deref().unwrap_or("not run"),
        match &r.unavailable {
            Some(why) => format!("pair unavailable: {why}"),
            None => "pair serving".into(),
        }
    )
}
