//! What the report tests share: the runs to render (the recorded fixture runs of
//! `tests/fixtures/`, and the sample runs of `reports::sample`, written out as run
//! directories), temporary directories that clean up after themselves, and the content
//! checks every report must pass.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use reports::run::{RunDir, DETAIL_FILE, SLICES_FILE, SUMMARY_FILE, TIMELINE_FILE};
use reports::sample;

// The library's own check, included by path: unit and integration tests share one.
#[path = "../../src/html/self_contained.rs"]
mod self_contained;
#[allow(unused_imports)] // not every test file checks pages
pub use self_contained::assert_self_contained;

/// A directory under the system's temp directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tandem-reports-it-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The recorded runs in `tests/fixtures/` (each directory with a `summary.json`), by name;
/// `TANDEM_REPORT_FIXTURES=DIR` reads them from DIR instead (runs just recorded, before
/// they are committed).
pub fn fixtures() -> Vec<(String, PathBuf)> {
    let root = std::env::var_os("TANDEM_REPORT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut runs: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join(SUMMARY_FILE).is_file())
        // A fleet run is a directory of runs, with a report of its own (`fleet.rs`).
        .filter(|p| !is_fleet(p))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    runs.sort();
    runs
}

/// Whether the run in `dir` is a fleet's (its summary has a `fleet` section).
pub fn is_fleet(dir: &Path) -> bool {
    RunDir::new(dir)
        .read_summary()
        .is_ok_and(|s| s.fleet.is_some())
}

/// The recorded fleet run (`tests/fixtures/fleet`, or `TANDEM_REPORT_FIXTURES=DIR`'s
/// `fleet`), copied into `to` with its pairs' runs.
pub fn fleet_fixture(to: &Path) -> RunDir {
    let root = std::env::var_os("TANDEM_REPORT_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    let from = root.join("fleet");
    let run = copy_run(&from, to);
    for (_, pair) in RunDir::new(&from).fleet_pairs().expect("the fleet fixture") {
        let rel = pair.path().strip_prefix(&from).unwrap().to_path_buf();
        copy_run(pair.path(), &to.join(rel));
    }
    run
}

/// Copies a run's files (never its report) into `to`: a fixture is rendered in a copy, so
/// the recorded directory is never written.
pub fn copy_run(from: &Path, to: &Path) -> RunDir {
    std::fs::create_dir_all(to).unwrap();
    for file in [SUMMARY_FILE, SLICES_FILE, TIMELINE_FILE, DETAIL_FILE] {
        let src = from.join(file);
        if src.is_file() {
            std::fs::copy(&src, to.join(file)).unwrap();
        }
    }
    RunDir::new(to)
}

/// The sample runs as run directories under `root`: `quick` (phases of milliseconds),
/// `completed`, `rolled_back` (each with a timeline and detail.json), `redis` (one steady
/// phase, no timeline) and `warmed` (an upgrade between a steady warm-up and a steady tail: a
/// phase gone through twice).
pub fn write_samples(root: &Path) -> Vec<(String, RunDir)> {
    let runs = sample::all();
    runs.into_iter()
        .map(|(name, (summary, slices, timeline))| {
            let run = RunDir::new(root.join(format!("sample-{name}")));
            run.write_summary(&summary).unwrap();
            if name != "redis" {
                run.write_timeline(&timeline).unwrap();
            }
            run.write_slices(&slices).unwrap();
            run.write_detail(&sample::detail(&summary, &slices))
                .unwrap();
            (format!("sample-{name}"), run)
        })
        .collect()
}

/// Every run to render: the samples, and a copy of each recorded fixture.
pub fn all_runs(root: &Path) -> Vec<(String, RunDir)> {
    let mut runs = write_samples(root);
    for (name, dir) in fixtures() {
        let name = format!("fixture-{name}");
        let run = copy_run(&dir, &root.join(&name));
        runs.push((name, run));
    }
    runs
}

/// A run to look at in a browser: the recorded `completed` fixture when there is one, the
/// quick sample (phases of milliseconds) otherwise.
pub fn showcase(root: &Path) -> RunDir {
    match fixtures().into_iter().find(|(name, _)| name == "completed") {
        Some((_, dir)) => copy_run(&dir, &root.join("completed")),
        None => write_samples(root).swap_remove(0).1,
    }
}

/// The ids of the charts a report of `run` must have: latency, throughput, spectrum, and a
/// zoom per switchover recorded in detail.json.
pub fn chart_ids(run: &RunDir) -> Vec<String> {
    let mut ids: Vec<String> = ["latency", "throughput", "spectrum"]
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(detail) = run.read_detail_if_present().unwrap() {
        ids.extend((1..=detail.zooms.len()).map(|i| format!("zoom-{i}")));
    }
    ids
}

/// A count grouped by threes, as the report writes it.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds as the report writes them in a column whose header carries the unit.
pub fn ms(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.2}")
    } else if v.abs() < 1_000.0 {
        format!("{v:.1}")
    } else {
        thousands(v.round() as u64)
    }
}

/// The row of `phase` in the phase table.
pub fn phase_row<'a>(html: &'a str, phase: &str) -> &'a str {
    nth_phase_row(html, phase, 0)
}

/// The row of the `n`th phase named `phase` (a run may go through a phase twice).
pub fn nth_phase_row<'a>(html: &'a str, phase: &str, n: usize) -> &'a str {
    let start = html
        .match_indices(&format!("<td class=\"l name\">{}</td>", esc(phase)))
        .nth(n)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no row {n} for phase {phase}"));
    let end = html[start..]
        .find("</tr>")
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

/// Text as the report escapes it.
pub fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
