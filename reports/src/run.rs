//! A run directory on disk (`reports/SCHEMA.md`): the one place that knows the file
//! names, so that the load generator that writes a run, the `tandem report` command that
//! re-renders it and the tests that check it cannot drift apart. `validate` holds the
//! contract checks of `summary.json` in Rust, rule for rule the same as the shared
//! the project's external run validator, so that integration tests can assert a run holds without Python.
//!
//! Files are written to a temporary name and renamed into place: a report rendered, or a
//! run validated, while the load generator is still writing never sees half a file.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::summary::{Latency, Summary};
use crate::timeline::{phase, Timeline};

pub const SUMMARY_FILE: &str = "summary.json";
pub const TIMELINE_FILE: &str = "timeline.json";
pub const SLICES_FILE: &str = "slices.json";
pub const DETAIL_FILE: &str = "detail.json";
/// The load generator's HdrHistogram interval log; this crate only names it.
pub const HISTOGRAMS_FILE: &str = "histograms.hlog";
pub const REPORT_FILE: &str = "report.html";

pub const SLICES_SCHEMA: &str = "tandem.slices/1";
pub const DETAIL_SCHEMA: &str = "tandem.detail/1";

/// One time slice of the load (one second as the load generator writes them), attributed to
/// the phase its start fell in. The charts of the report are drawn from these.
///
/// A slice holds the requests *intended* in its second (the open-loop schedule's send
/// times), however late their replies came: a server that stalls for a minute leaves a
/// minute of slices whose latency climbs, not one slice holding the whole backlog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// Start of the slice, milliseconds since the Unix epoch (the timeline's clock).
    pub t_ms: u64,
    pub phase: String,
    /// Requests intended in the slice that got a reply (successes and errors).
    pub ops: u64,
    pub errors: u64,
    /// Coordinated-omission-corrected latency of those requests, microseconds.
    pub latency_us: Latency,
    /// Replies that arrived in the slice, whenever their request was intended: what the
    /// clients saw as throughput (0 through a stall). Absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replied: Option<u64>,
}

/// `detail.json`: what the one-second slices are too coarse to show.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    pub schema: String,
    /// Requests at least this slow are listed in `slow`, microseconds.
    pub slow_threshold_us: u64,
    /// Requests at least `slow_threshold_us` slow, in intended-time order, at most
    /// `slow_per_slice_max` per second of the run (the slowest of that second).
    pub slow: Vec<SlowRequest>,
    pub slow_per_slice_max: u64,
    /// Slow requests left out of `slow` because their second already had its share.
    pub slow_omitted: u64,
    /// Each switchover at millisecond resolution, in the order of `summary.switchovers`.
    pub zooms: Vec<Zoom>,
}

/// One request slower than the threshold: when it was meant to be sent, and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowRequest {
    /// Intended send time, ms since the Unix epoch.
    pub t_ms: u64,
    pub latency_us: u64,
    /// An error reply (it still took that long).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub error: bool,
}

/// The time around one switchover in buckets of `bucket_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Zoom {
    /// `planned`, `failover` or `fallback`, as in `summary.switchovers`.
    pub kind: String,
    /// When the switchover began, ms since the Unix epoch.
    pub at_ms: u64,
    /// When it ended (the new active acknowledged its step-up).
    pub end_ms: u64,
    /// Start of the first bucket.
    pub from_ms: u64,
    pub bucket_ms: u64,
    pub buckets: Vec<ZoomBucket>,
}

/// One bucket of a [`Zoom`]. `ops`, `errors` and `max_us` count requests by intended send
/// time; `replied` counts replies by arrival.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZoomBucket {
    pub ops: u32,
    pub replied: u32,
    pub errors: u32,
    /// Slowest request of the bucket (0 when none), microseconds.
    pub max_us: u64,
}

/// A run's files as read for a report (`RunDir::read_for_report`).
#[derive(Clone, Debug)]
pub struct RunFiles {
    pub summary: Summary,
    pub slices: Vec<Slice>,
    pub timeline: Option<Timeline>,
    pub detail: Option<Detail>,
}

impl RunFiles {
    /// What the renderer borrows.
    pub fn view(&self) -> crate::html::Run<'_> {
        crate::html::Run {
            summary: &self.summary,
            slices: &self.slices,
            timeline: self.timeline.as_ref(),
            detail: self.detail.as_ref(),
        }
    }
}

/// `slices.json` is versioned like the other files of a run, so the slices sit in an object.
#[derive(Serialize, Deserialize)]
struct SlicesFile {
    schema: String,
    slices: Vec<Slice>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid JSON for this file: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: schema {found:?}, this build reads {expected}", path.display())]
    Schema {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
}

/// A run directory. Creating the value touches nothing; the first write creates the
/// directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> RunDir {
        RunDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn summary_path(&self) -> PathBuf {
        self.path.join(SUMMARY_FILE)
    }

    pub fn timeline_path(&self) -> PathBuf {
        self.path.join(TIMELINE_FILE)
    }

    pub fn slices_path(&self) -> PathBuf {
        self.path.join(SLICES_FILE)
    }

    pub fn detail_path(&self) -> PathBuf {
        self.path.join(DETAIL_FILE)
    }

    pub fn write_detail(&self, detail: &Detail) -> Result<(), RunError> {
        self.write_json(&self.detail_path(), detail)
    }

    /// `detail.json`, or `None` for a run without one (written before it was added).
    pub fn read_detail_if_present(&self) -> Result<Option<Detail>, RunError> {
        let path = self.detail_path();
        if !path.is_file() {
            return Ok(None);
        }
        let detail: Detail = read_json(&path)?;
        if !detail.schema.starts_with("tandem.detail/") {
            return Err(RunError::Schema {
                path,
                found: detail.schema,
                expected: DETAIL_SCHEMA,
            });
        }
        Ok(Some(detail))
    }

    pub fn histograms_path(&self) -> PathBuf {
        self.path.join(HISTOGRAMS_FILE)
    }

    pub fn report_path(&self) -> PathBuf {
        self.path.join(REPORT_FILE)
    }

    pub fn write_summary(&self, summary: &Summary) -> Result<(), RunError> {
        self.write_json(&self.summary_path(), summary)
    }

    pub fn read_summary(&self) -> Result<Summary, RunError> {
        read_json(&self.summary_path())
    }

    pub fn write_timeline(&self, timeline: &Timeline) -> Result<(), RunError> {
        self.write_json(&self.timeline_path(), timeline)
    }

    pub fn read_timeline(&self) -> Result<Timeline, RunError> {
        read_json(&self.timeline_path())
    }

    /// The timeline, or `None` when the run has none (a Redis run has no supervisor).
    pub fn read_timeline_if_present(&self) -> Result<Option<Timeline>, RunError> {
        if self.timeline_path().is_file() {
            self.read_timeline().map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn write_slices(&self, slices: &[Slice]) -> Result<(), RunError> {
        let file = SlicesFile {
            schema: SLICES_SCHEMA.into(),
            slices: slices.to_vec(),
        };
        self.write_json(&self.slices_path(), &file)
    }

    pub fn read_slices(&self) -> Result<Vec<Slice>, RunError> {
        let path = self.slices_path();
        let file: SlicesFile = read_json(&path)?;
        if !file.schema.starts_with("tandem.slices/") {
            return Err(RunError::Schema {
                path,
                found: file.schema,
                expected: SLICES_SCHEMA,
            });
        }
        Ok(file.slices)
    }

    pub fn write_report(&self, html: &str) -> Result<(), RunError> {
        self.write_bytes(&self.report_path(), html.as_bytes())
    }

    /// Renders `report.html` from what the directory holds (`tandem report RUN_DIR`): the
    /// summary is required; the slices, the timeline and `detail.json` are drawn when present.
    /// A fleet run's top level (its summary has a `fleet` section) gets the fleet's report;
    /// its pairs' directories are runs of their own, rendered on their own.
    pub fn render_report(&self) -> Result<PathBuf, RunError> {
        let files = self.read_for_report()?;
        let html = if files.summary.fleet.is_some() {
            crate::html::render_fleet(&files.view())
        } else {
            crate::html::render(&files.view())
        };
        self.write_report(&html)?;
        Ok(self.report_path())
    }

    /// A fleet run's pairs' directories (`pairs/NAME`), as its summary lists them; empty
    /// for a run of one pair.
    pub fn fleet_pairs(&self) -> Result<Vec<(String, RunDir)>, RunError> {
        let summary = self.read_summary()?;
        Ok(summary
            .fleet
            .map(|f| {
                f.pairs
                    .into_iter()
                    .map(|p| (p.name, RunDir::new(self.path.join(&p.dir))))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The path of the comparison page of this run against `label_b`:
    /// `compare-<label_b>.html` in this run's directory.
    pub fn compare_path(&self, label_b: &str) -> PathBuf {
        let safe: String = label_b
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.path.join(format!("compare-{safe}.html"))
    }

    /// Renders this run against `other` (`tandem report A --compare B`, `tandem demo --peer
    /// redis`): reads the summary, slices, timeline and detail of both and writes
    /// [`RunDir::compare_path`]`(label_b)` in this run's directory. Ratios are B / A, this
    /// run being A.
    pub fn render_compare(
        &self,
        other: &RunDir,
        label_a: &str,
        label_b: &str,
    ) -> Result<PathBuf, RunError> {
        let a = self.read_for_report()?;
        let b = other.read_for_report()?;
        let html = crate::html::render_compare((label_a, &a.view()), (label_b, &b.view()));
        let path = self.compare_path(label_b);
        self.write_bytes(&path, html.as_bytes())?;
        Ok(path)
    }

    /// Everything a report draws: the summary (required), and the slices, timeline and
    /// detail when present.
    pub fn read_for_report(&self) -> Result<RunFiles, RunError> {
        let summary = self.read_summary()?;
        let slices = if self.slices_path().is_file() {
            self.read_slices()?
        } else {
            Vec::new()
        };
        Ok(RunFiles {
            summary,
            slices,
            timeline: self.read_timeline_if_present()?,
            detail: self.read_detail_if_present()?,
        })
    }

    /// The whole-directory check: `validate` on the summary, plus
    /// the files that must be there and a report that opens without a network.
    pub fn check(&self) -> Result<Vec<String>, RunError> {
        let summary = self.read_summary()?;
        let timeline = self.read_timeline_if_present()?;
        let mut problems = validate(&summary, timeline.as_ref());
        if timeline.is_none() && !is_steady_only(&summary) {
            problems.push("no timeline.json".into());
        }
        // A fleet run holds when each of its pairs' runs does.
        for (name, pair) in self.fleet_pairs()? {
            match pair.check() {
                Ok(found) => {
                    problems.extend(found.into_iter().map(|p| format!("pair {name}: {p}")))
                }
                Err(e) => problems.push(format!("pair {name}: {e}")),
            }
        }
        let report = self.report_path();
        if report.is_file() {
            let html = fs::read_to_string(&report).map_err(|source| RunError::Io {
                path: report,
                source,
            })?;
            if loads_from_network(&html) {
                problems.push("report.html loads from the network".into());
            }
            if !html.contains("<svg") {
                problems.push("report.html has no inline SVG".into());
            }
        } else {
            problems.push("no report.html".into());
        }
        Ok(problems)
    }

    fn write_json<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), RunError> {
        let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| RunError::Json {
            path: path.into(),
            source,
        })?;
        bytes.push(b'\n');
        self.write_bytes(path, &bytes)
    }

    fn write_bytes(&self, path: &Path, bytes: &[u8]) -> Result<(), RunError> {
        let io = |source| RunError::Io {
            path: path.into(),
            source,
        };
        fs::create_dir_all(&self.path).map_err(io)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        fs::write(&tmp, bytes).map_err(|source| RunError::Io {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, path).map_err(io)
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, RunError> {
    let bytes = fs::read(path).map_err(|source| RunError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| RunError::Json {
        path: path.into(),
        source,
    })
}

/// `src=` or `href=` followed by `//` or `http(s)://`, as a run validator looks for it.
fn loads_from_network(html: &str) -> bool {
    let lower = html.to_ascii_lowercase();
    ["src", "href"].iter().any(|attr| {
        lower.match_indices(attr).any(|(at, _)| {
            let rest = lower[at + attr.len()..].trim_start();
            let Some(rest) = rest.strip_prefix('=') else {
                return false;
            };
            let rest = rest.trim_start().trim_start_matches(['"', '\'']);
            let rest = rest
                .strip_prefix("https:")
                .or_else(|| rest.strip_prefix("http:"))
                .unwrap_or(rest);
            rest.starts_with("//")
        })
    })
}

/// The contract checks of a run's summary (`reports/SCHEMA.md`), the same rules and
/// messages as the external run validator. Returns the problems; empty means the summary holds.
/// The timeline, when given, must carry a `tandem.timeline/` schema; whether the file must
/// exist is the directory's business (`RunDir::check`).
/// A run without an upgrade: all its load in the one phase outside every upgrade phase.
pub fn is_steady_only(summary: &Summary) -> bool {
    !summary.phases.is_empty() && summary.phases.iter().all(|p| p.name == phase::STEADY)
}

pub fn validate(summary: &Summary, timeline: Option<&Timeline>) -> Vec<String> {
    let mut problems = Vec::new();
    if !summary.schema.starts_with("tandem.run/") {
        problems.push("schema: expected 'tandem.run/N'".to_string());
    }
    let names: Vec<&str> = summary.phases.iter().map(|p| p.name.as_str()).collect();
    let mut need_phases = |required: &[&str]| {
        for name in required {
            if !names.contains(name) {
                problems.push(format!("phase {name} missing"));
            }
        }
    };
    // A load run with no upgrade to measure (Redis, or a pair left alone) has one phase,
    // `steady`, and neither upgrade phases nor switchovers to demand.
    // A fleet's top level is held to the same rules: its phases are the upgrade's phases
    // over the pairs, its switchovers every pair's (its pairs' own summaries are checked in
    // their directories too, `RunDir::check`).
    let upgrade = !is_steady_only(summary);
    match summary.outcome.as_str() {
        "completed" if upgrade => need_phases(&phase::UPGRADE),
        "rolled_back" => need_phases(&[phase::BASELINE, phase::FALLBACK]),
        "completed" => {}
        other => problems.push(format!("outcome: '{other}'")),
    }
    for p in &summary.phases {
        let l = &p.latency_us;
        if !(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max) {
            problems.push(format!("phase {} percentiles not monotonic", p.name));
        }
    }
    if upgrade && summary.switchovers.is_empty() {
        problems.push("no switchover recorded".into());
    }
    if summary.lost_updates != 0 {
        problems.push(format!("lost_updates = {}", summary.lost_updates));
    }
    if let Some(t) = timeline {
        if !t.schema.starts_with("tandem.timeline/") {
            problems.push("timeline schema: expected 'tandem.timeline/N'".into());
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tandem-reports-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_run_without_an_upgrade_needs_no_upgrade_phases() {
        let mut summary = sample::upgrade_run().0;
        summary.phases.truncate(1);
        summary.phases[0].name = phase::STEADY.into();
        summary.switchovers.clear();
        assert!(is_steady_only(&summary));
        assert_eq!(validate(&summary, None), Vec::<String>::new());
        summary.phases.clear();
        assert!(validate(&summary, None).contains(&"phase baseline missing".to_string()));
    }

    #[test]
    fn a_good_summary_holds() {
        let (summary, _, timeline) = sample::upgrade_run();
        assert_eq!(validate(&summary, Some(&timeline)), Vec::<String>::new());
        assert_eq!(validate(&summary, None), Vec::<String>::new());
        let (rolled_back, _, _) = sample::rolled_back_run();
        assert_eq!(validate(&rolled_back, None), Vec::<String>::new());
    }

    #[test]
    fn each_broken_rule_is_named() {
        let (good, _, _) = sample::upgrade_run();
        let check = |edit: &dyn Fn(&mut Summary), expected: &[&str]| {
            let mut s = good.clone();
            edit(&mut s);
            assert_eq!(
                validate(&s, None),
                expected,
                "after an edit of the sample summary"
            );
        };
        check(
            &|s| s.schema = "run/1".into(),
            &["schema: expected 'tandem.run/N'"],
        );
        check(&|s| s.outcome = "aborted".into(), &["outcome: 'aborted'"]);
        check(
            &|s| s.phases.retain(|p| p.name != phase::EVALUATION),
            &["phase evaluation missing"],
        );
        let mut no_phases = good.clone();
        no_phases.phases.clear();
        let every_phase_missing: Vec<String> = phase::UPGRADE
            .iter()
            .map(|n| format!("phase {n} missing"))
            .collect();
        assert_eq!(validate(&no_phases, None), every_phase_missing);
        check(
            &|s| {
                s.outcome = "rolled_back".into();
                s.phases.retain(|p| p.name != phase::BASELINE);
            },
            &["phase baseline missing", "phase fallback missing"],
        );
        check(
            &|s| s.phases[2].latency_us.p90 = s.phases[2].latency_us.p99 + 1,
            &["phase b_catch_up percentiles not monotonic"],
        );
        check(
            &|s| s.phases[0].latency_us.max = 0,
            &["phase baseline percentiles not monotonic"],
        );
        check(&|s| s.switchovers.clear(), &["no switchover recorded"]);
        check(&|s| s.lost_updates = 3, &["lost_updates = 3"]);
        check(
            &|s| {
                s.lost_updates = 1;
                s.switchovers.clear();
            },
            &["no switchover recorded", "lost_updates = 1"],
        );

        let mut timeline = Timeline::new();
        timeline.schema = "tandem.run/1".into();
        assert_eq!(
            validate(&good, Some(&timeline)),
            ["timeline schema: expected 'tandem.timeline/N'"]
        );
    }

    #[test]
    fn a_run_directory_round_trips_and_checks() {
        let dir = temp_dir("round-trip");
        let run = RunDir::new(&dir);
        let (summary, slices, timeline) = sample::upgrade_run();
        run.write_summary(&summary).unwrap();
        run.write_timeline(&timeline).unwrap();
        run.write_slices(&slices).unwrap();
        assert_eq!(run.read_summary().unwrap(), summary);
        assert_eq!(run.read_timeline().unwrap(), timeline);
        assert_eq!(run.read_slices().unwrap(), slices);
        assert_eq!(run.check().unwrap(), ["no report.html"]);

        let report = run.render_report().unwrap();
        assert_eq!(report, dir.join("report.html"));
        assert_eq!(run.check().unwrap(), Vec::<String>::new());
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary files left behind: {leftovers:?}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = temp_dir("errors");
        let run = RunDir::new(&dir);
        let err = run.read_summary().unwrap_err();
        assert!(matches!(err, RunError::Io { .. }));
        assert!(err.to_string().contains("summary.json"), "{err}");

        fs::create_dir_all(&dir).unwrap();
        fs::write(run.summary_path(), b"{\"schema\": \"tandem.run/1\"").unwrap();
        let err = run.read_summary().unwrap_err();
        assert!(matches!(err, RunError::Json { .. }));
        assert!(err.to_string().contains("summary.json"), "{err}");

        fs::write(
            run.slices_path(),
            b"{\"schema\": \"other/1\", \"slices\": []}",
        )
        .unwrap();
        let err = run.read_slices().unwrap_err();
        assert!(matches!(err, RunError::Schema { .. }), "{err}");
        assert!(err.to_string().contains("slices.json"), "{err}");

        assert_eq!(run.read_timeline_if_present().unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn network_references_are_found() {
        assert!(loads_from_network(r#"<img src="https://x/y.png">"#));
        assert!(loads_from_network(r#"<link href = '//cdn/x.css'>"#));
        assert!(loads_from_network("<script SRC=http://x/a.js>"));
        assert!(!loads_from_network(
            r##"<a href="#phases">phases</a> <p>see https://example.org</p>"##
        ));
    }
}
