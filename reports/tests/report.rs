//! The reports of recorded runs (`tests/fixtures/`, and the sample runs until and besides
//! them), rendered as `tandem report` renders them and checked for what a reader needs: the
//! verdict's figures, every phase, every chart, "too few samples" where a phase is short,
//! nothing loaded from a network, and a comparison of two runs.

mod common;

use common::{
    all_runs, assert_self_contained, chart_ids, esc, ms, nth_phase_row, phase_row, thousands,
    TempDir,
};
use reports::run::{RunDir, DETAIL_FILE, SLICES_FILE, SUMMARY_FILE};
use reports::summary::{percentile_supported, Summary};
use reports::timeline::phase;

/// The worst phase's p99 as a ratio of the baseline's, both supported, as "1.19×".
fn worst_ratio(summary: &Summary) -> Option<String> {
    let supported = |p: &reports::summary::PhaseSummary| {
        percentile_supported(p.ops.saturating_sub(p.errors), 0.99)
    };
    let baseline = summary
        .phases
        .iter()
        .find(|p| p.name == phase::BASELINE)
        .filter(|b| supported(b) && b.latency_us.p99 > 0)?;
    let r = summary
        .phases
        .iter()
        .filter(|p| p.name != phase::BASELINE && p.name != "steady" && supported(p))
        .map(|p| p.latency_us.p99 as f64 / baseline.latency_us.p99 as f64)
        .max_by(f64::total_cmp)?;
    Some(if r >= 100.0 {
        format!("{r:.0}×")
    } else if r >= 10.0 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    })
}

fn check_report(name: &str, run: &RunDir) -> String {
    let path = run.render_report().unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    let summary = run.read_summary().unwrap();
    assert_self_contained(name, &html);
    assert!(
        html.len() < 4_000_000,
        "{name}: the report is {} bytes",
        html.len()
    );
    assert!(html.contains("<title>tandem run · "), "{name}: title");

    // The verdict.
    let lost = if summary.lost_updates == 0 {
        "0 lost".to_string()
    } else {
        format!("{} lost", thousands(summary.lost_updates))
    };
    assert!(html.contains(&lost), "{name}: {lost:?} missing");
    if let Some(gap) = summary
        .switchovers
        .iter()
        .map(|s| s.client_gap_ms)
        .max_by(f64::total_cmp)
    {
        let text = format!(
            "{} ms</span><span class=\"label\">worst client-visible gap",
            ms(gap)
        );
        assert!(html.contains(&text), "{name}: worst gap {text:?} missing");
    }
    match worst_ratio(&summary) {
        Some(r) => assert!(
            html.contains(&format!(
                "{r}</span><span class=\"label\">worst phase p99 vs baseline"
            )),
            "{name}: worst p99 ratio {r} missing"
        ),
        None if reports::run::is_steady_only(&summary) => {} // its own tail, tested below
        None => assert!(
            html.contains("no phase and baseline with enough samples for a p99"),
            "{name}: an unsupported worst ratio must say so"
        ),
    }
    if summary.target != "redis" {
        assert!(html.contains("served alone"), "{name}: simplex time");
    }
    if let Some(env) = &summary.environment {
        for value in [&env.git_revision, &env.hostname, &env.cpu_model] {
            let escaped = value.replace('&', "&amp;").replace('<', "&lt;");
            assert!(
                html.contains(&escaped),
                "{name}: environment {value:?} missing"
            );
        }
    }

    // Every phase, in the table and in the lanes, with "too few samples" where it is short.
    for (i, p) in summary.phases.iter().enumerate() {
        let seen = summary.phases[..i]
            .iter()
            .filter(|q| q.name == p.name)
            .count();
        let row = nth_phase_row(&html, &p.name, seen);
        assert!(
            html.contains(&format!(">{}</text>", esc(&p.name))),
            "{name}: phase {} missing from the charts",
            p.name
        );
        let samples = p.ops.saturating_sub(p.errors);
        if samples == 0 {
            assert!(row.contains("no successful replies"), "{name}: {}", p.name);
        } else if !percentile_supported(samples, 0.99) {
            assert!(
                row.contains("n&lt;1,000") && row.contains("too few samples"),
                "{name}: phase {} has {samples} samples and must not print a p99: {row}",
                p.name
            );
        } else {
            assert!(!row.contains("n&lt;1,000"), "{name}: {} has a p99", p.name);
        }
    }
    for id in chart_ids(run) {
        assert!(
            html.contains(&format!("<svg id=\"{id}\"")),
            "{name}: chart {id} missing"
        );
    }
    html
}

#[test]
fn every_recorded_run_renders_with_its_verdict_phases_and_charts() {
    let root = TempDir::new("every-run");
    let runs = all_runs(root.path());
    for (name, run) in &runs {
        check_report(name, run);
    }
}

/// The quick run of the samples is a `tandem demo --quick`: its phases of milliseconds each
/// get a lane of their own, and the switchover's zoom tells its story in figures.
#[test]
fn short_phases_are_readable_and_marked() {
    let root = TempDir::new("short");
    let (_, run) = common::write_samples(root.path()).swap_remove(0);
    let html = check_report("quick", &run);
    for short in [
        phase::B_OUT_OF_SERVICE,
        phase::B_CATCH_UP,
        phase::SWITCHOVER_TO_B,
    ] {
        assert!(phase_row(&html, short).contains("n&lt;1,000"), "{short}");
    }
    let summary = run.read_summary().unwrap();
    let s = &summary.switchovers[0];
    assert!(html.contains(&format!(
        "<b>{}</b> retried · <b>{}</b> redirected",
        thousands(s.retried),
        thousands(s.redirected)
    )));
    assert!(html.contains(&format!("step-up <b>{} ms</b>", ms(s.stepup_ms))));
    assert!(html.contains("class=\"slow\""), "slow requests as dots");
    assert!(
        html.contains("replies received (by arrival"),
        "replies by arrival"
    );
}

/// A run written before environment, detail.json, spectra, replies by arrival and
/// retried/redirected existed still renders, and says what it lacks.
#[test]
fn older_runs_without_the_new_fields_still_render() {
    let root = TempDir::new("older");
    for (name, run) in all_runs(root.path()) {
        let dir = run.path();
        let mut summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(SUMMARY_FILE)).unwrap()).unwrap();
        let s = summary.as_object_mut().unwrap();
        s.remove("environment");
        for p in s["phases"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("percentiles");
        }
        for sw in s["switchovers"].as_array_mut().unwrap() {
            let sw = sw.as_object_mut().unwrap();
            sw.remove("retried");
            sw.remove("redirected");
        }
        std::fs::write(dir.join(SUMMARY_FILE), summary.to_string()).unwrap();
        if dir.join(SLICES_FILE).is_file() {
            let mut slices: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(SLICES_FILE)).unwrap()).unwrap();
            for s in slices["slices"].as_array_mut().unwrap() {
                s.as_object_mut().unwrap().remove("replied");
            }
            std::fs::write(dir.join(SLICES_FILE), slices.to_string()).unwrap();
        }
        let _ = std::fs::remove_file(dir.join(DETAIL_FILE));

        let html = check_report(&name, &run);
        assert!(
            html.contains("not recorded (a run written before the environment was)"),
            "{name}"
        );
        assert!(
            !html.contains("id=\"zoom-"),
            "{name}: no zoom without detail"
        );
        assert!(
            html.contains("replies by arrival not recorded in this run"),
            "{name}"
        );
    }
}

#[test]
fn two_runs_compare_on_shared_axes() {
    let root = TempDir::new("compare");
    let runs = all_runs(root.path());
    let find = |name: &str| {
        let fixture = format!("fixture-{name}");
        let sample = format!("sample-{name}");
        runs.iter()
            .find(|(n, _)| *n == fixture)
            .or_else(|| runs.iter().find(|(n, _)| *n == sample))
            .map(|(_, r)| r)
            .unwrap()
    };
    for (a, b) in [("completed", "redis"), ("completed", "rolled_back")] {
        let (run_a, run_b) = (find(a), find(b));
        let path = run_a.render_compare(run_b, a, b).unwrap();
        assert_eq!(path, run_a.path().join(format!("compare-{b}.html")));
        let html = std::fs::read_to_string(&path).unwrap();
        let what = format!("{a} vs {b}");
        assert_self_contained(&what, &html);
        assert!(html.contains(&format!("<title>tandem: {a} vs {b}</title>")));
        for id in ["latency", "throughput", "spectrum"] {
            assert!(html.contains(&format!("<svg id=\"{id}\"")), "{what}: {id}");
        }
        let (sa, sb) = (run_a.read_summary().unwrap(), run_b.read_summary().unwrap());
        for p in sa.phases.iter() {
            assert!(
                html.contains(&format!("<td class=\"l name\">{}", p.name)),
                "{what}: phase {}",
                p.name
            );
        }
        assert!(html.contains("B/A"), "{what}: ratio columns");
        // Both runs' lines on one chart, and a curve of each in the spectrum.
        assert!(html.contains("class=\"bp99\"") && html.contains("class=\"p99\""));
        assert!(
            html.contains("stroke-dasharray=\"7 4\""),
            "{what}: B's curves"
        );
        assert!(html.contains("0 lost"));
        if reports::run::is_steady_only(&sb) {
            assert!(
                html.contains(&format!("vs B {}", sb.phases[0].name)),
                "{what}: the steady run is the reference of every phase"
            );
        }
    }
}

/// Ten minutes of a run whose every second had its share of slow requests: the dots are
/// thinned to one per pixel, so the report stays small.
#[test]
fn a_ten_minute_run_stays_a_few_megabytes() {
    let (mut summary, slices, timeline) = reports::sample::upgrade_run();
    let mut long = Vec::new();
    for i in 0..10 {
        for s in &slices {
            let mut s = s.clone();
            s.t_ms += i * 62_000;
            long.push(s);
        }
    }
    summary.ended_ms = summary.started_ms + 620_000;
    let mut detail = reports::sample::detail(&summary, &long);
    let mut x: u64 = 7;
    detail.slow = (0..620_000u64)
        .step_by(5)
        .map(|t| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            reports::run::SlowRequest {
                t_ms: summary.started_ms + t,
                latency_us: 2_000 + (x >> 44) % 400_000,
                error: false,
            }
        })
        .collect();
    let root = TempDir::new("long");
    let run = RunDir::new(root.path().join("long"));
    run.write_summary(&summary).unwrap();
    run.write_slices(&long).unwrap();
    run.write_timeline(&timeline).unwrap();
    run.write_detail(&detail).unwrap();
    let html = check_report("ten minutes", &run);
    assert!(
        html.len() < 3_000_000,
        "{} bytes for 124,000 slow requests",
        html.len()
    );
}

/// A server that stalls for five seconds under an open-loop load: the slices still hold
/// the requests intended in each second (latency climbing), and the replies by arrival drop
/// to zero for those seconds, so the throughput chart shows the stall as the stall it was.
#[test]
fn a_stall_shows_as_a_stall() {
    let (summary, mut slices, timeline) = reports::sample::quick_run();
    for (i, s) in slices.iter_mut().enumerate().skip(3).take(5) {
        s.replied = Some(0);
        s.latency_us.p99 = 5_000_000 - i as u64 * 900_000;
        s.latency_us.max = s.latency_us.p99 + 1_000;
    }
    slices[8].replied = Some(slices[8].ops * 6);
    let root = TempDir::new("stall");
    let run = RunDir::new(root.path().join("stall"));
    run.write_summary(&summary).unwrap();
    run.write_slices(&slices).unwrap();
    run.write_timeline(&timeline).unwrap();
    let html = check_report("stall", &run);
    let throughput = &html[html.find("<svg id=\"throughput\"").unwrap()..];
    let throughput = &throughput[..throughput.find("</svg>").unwrap()];
    let d = throughput
        .split("<path class=\"replied\" d=\"")
        .nth(1)
        .expect("the replies line")
        .split('"')
        .next()
        .unwrap();
    let ys: Vec<f64> = d
        .split(['M', 'L'])
        .filter_map(|p| p.trim().split_once(','))
        .map(|(_, y)| y.parse::<f64>().unwrap())
        .collect();
    let bottom = ys.iter().copied().fold(f64::MIN, f64::max);
    assert_eq!(
        ys.iter().filter(|y| (**y - bottom).abs() < 0.05).count(),
        5,
        "five seconds without a reply, drawn at zero: {d}"
    );
    // The requests intended stay on the schedule through the stall.
    let intended = throughput
        .split("<path class=\"tput\" d=\"")
        .nth(1)
        .expect("the intended line");
    assert!(!intended.is_empty());
}

/// A rolled-back upgrade says why in its header (the acceptance check that failed, in the
/// supervisor's words) and how many requests failed.
#[test]
fn a_rolled_back_run_says_why() {
    let root = TempDir::new("why");
    for (name, run) in all_runs(root.path()) {
        let summary = run.read_summary().unwrap();
        let Some(timeline) = run.read_timeline_if_present().unwrap() else {
            continue;
        };
        let html = std::fs::read_to_string(run.render_report().unwrap()).unwrap();
        let reason = timeline
            .events
            .iter()
            .rev()
            .find(|e| e.kind == reports::timeline::EventKind::UpgradeEnd)
            .and_then(|e| e.message.clone());
        if let Some(reason) = reason.filter(|r| !r.is_empty()) {
            let text = format!(
                "<b>{}</b>: {}",
                summary.outcome.replace('_', " "),
                esc(&reason)
            );
            assert!(html.contains(&text), "{name}: {text:?} missing");
        }
        let errors: u64 = summary.phases.iter().map(|p| p.errors).sum();
        if errors > 0 {
            let text = format!("{} error replies", thousands(errors));
            assert!(html.contains(&text), "{name}: {text:?} missing");
        }
    }
}

/// A run with no upgrade (Redis with WAIT) has no baseline to compare with: its verdict gives
/// its own tail instead of an empty ratio.
#[test]
fn a_run_without_an_upgrade_gives_its_own_tail() {
    let root = TempDir::new("steady");
    let mut seen = 0;
    for (name, run) in all_runs(root.path()) {
        let summary = run.read_summary().unwrap();
        if !reports::run::is_steady_only(&summary) {
            continue;
        }
        seen += 1;
        let html = std::fs::read_to_string(run.render_report().unwrap()).unwrap();
        assert!(
            html.contains("</span><span class=\"label\">p99 of the run (p99.9 "),
            "{name}: the run's own p99 missing"
        );
        assert!(!html.contains("worst phase p99 vs baseline"), "{name}");
    }
    assert!(
        seen > 0,
        "no run without an upgrade among the fixtures and samples"
    );
}

/// Whatever a run's files say is text on the page, never markup: an outcome, a phase name or
/// a reason written to trip the report up is escaped like any other.
#[test]
fn text_from_the_run_files_is_escaped() {
    let root = TempDir::new("escape");
    let hostile = "<script>alert(1)</script>";
    for (name, run) in all_runs(root.path()) {
        let path = run.path().join(SUMMARY_FILE);
        let mut summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        summary["outcome"] = hostile.into();
        summary["target"] = hostile.into();
        if let Some(p) = summary["phases"].get_mut(0) {
            p["errors"] = 1.into();
        }
        std::fs::write(&path, serde_json::to_vec(&summary).unwrap()).unwrap();
        let html = std::fs::read_to_string(run.render_report().unwrap()).unwrap();
        assert_self_contained(&name, &html);
        assert!(
            !html.contains(hostile),
            "{name}: raw markup from summary.json"
        );
    }
}

/// detail.json from a load generator that got its bucket length wrong: no bucket at all, or
/// one as long as the clock. The report renders, and says the zoom is not drawn.
#[test]
fn odd_zoom_buckets_render_without_panic() {
    let (summary, slices, timeline) = reports::sample::rolled_back_run();
    let mut detail = reports::sample::detail(&summary, &slices);
    assert_eq!(detail.zooms.len(), 2);
    detail.zooms[0].bucket_ms = 0;
    detail.zooms[1].bucket_ms = u64::MAX;
    // And a zoom the summary does not list, at the end of the clock.
    let mut late = detail.zooms[1].clone();
    late.at_ms = u64::MAX - 10;
    late.end_ms = u64::MAX;
    late.from_ms = u64::MAX - 100;
    late.bucket_ms = u64::MAX;
    detail.zooms.push(late);
    let root = TempDir::new("odd-zoom");
    let run = RunDir::new(root.path().join("odd"));
    run.write_summary(&summary).unwrap();
    run.write_slices(&slices).unwrap();
    run.write_timeline(&timeline).unwrap();
    run.write_detail(&detail).unwrap();
    let html = std::fs::read_to_string(run.render_report().unwrap()).unwrap();
    assert_self_contained("odd zoom buckets", &html);
    assert_eq!(html.matches("Zoom not drawn").count(), 3);
    assert!(html.contains("buckets of 0 ms"));
    assert!(html.contains(&format!("buckets of {} ms", thousands(u64::MAX))));
    assert!(!html.contains("id=\"zoom-"), "no zoom drawn");
}
