//! Tests of the reports as files a user opens: well-formed, self-contained, every phase
//! shown, text from the run escaped, and no panic on the thin runs that crashed a supervisor
//! or a load generator may leave behind.

use super::*;
use crate::sample;
use crate::summary::Latency;
use self_contained::assert_self_contained;

/// The report of a run without detail.json.
fn render(summary: &Summary, slices: &[Slice], timeline: Option<&Timeline>) -> String {
    super::render(&Run {
        summary,
        slices,
        timeline,
        detail: None,
    })
}

/// Two runs compared on their summaries alone.
fn render_compare(a: (&str, &Summary), b: (&str, &Summary)) -> String {
    super::render_compare((a.0, &Run::new(a.1, &[])), (b.0, &Run::new(b.1, &[])))
}

const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];

/// Every element opened is closed, in order.
fn assert_well_formed(html: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        let close = rest[open..]
            .find('>')
            .map(|c| open + c)
            .expect("a '<' that never closes");
        let tag = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if tag.starts_with('!') {
            continue;
        }
        let self_closing = tag.ends_with('/');
        let (closing, tag) = match tag.strip_prefix('/') {
            Some(t) => (true, t),
            None => (false, tag),
        };
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        assert!(
            !name.is_empty(),
            "a '<' that starts no tag near: {}",
            &rest[..rest.len().min(60)]
        );
        if closing {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.as_str()),
                "</{name}> closes the wrong element"
            );
        } else if !self_closing && !VOID.contains(&name.as_str()) {
            stack.push(name);
        }
    }
    assert!(stack.is_empty(), "elements left open: {stack:?}");
}

#[test]
fn the_report_shows_every_phase_and_stands_alone() {
    let (summary, slices, timeline) = sample::upgrade_run();
    let html = render(&summary, &slices, Some(&timeline));
    assert_well_formed(&html);
    assert_self_contained("the report", &html);
    assert_eq!(
        html.matches("<svg").count(),
        3,
        "latency, throughput and spectrum (no zoom without detail.json)"
    );
    assert_eq!(html.matches("</svg>").count(), 3);
    for id in ["latency", "throughput", "spectrum"] {
        assert!(html.contains(&format!("<svg id=\"{id}\"")), "chart {id}");
    }
    for name in phase::UPGRADE {
        assert!(
            html.contains(&format!("<td class=\"l name\">{name}</td>")),
            "{name} missing from the phase table"
        );
        assert!(
            html.contains(&format!(">{name}</text>")),
            "{name} missing from the charts"
        );
    }
    assert!(html.contains("badge ok\">completed"));
    assert!(html.contains("0 lost"));
    assert!(html.contains("class=\"p99\""), "no p99 line");
    assert!(html.contains("class=\"p50\""), "no p50 line");
    assert!(html.contains("class=\"marker\""), "no switchover marker");
    assert!(
        html.contains("<td>11.6</td>"),
        "client gap of the switchover"
    );
    assert!(html.contains("11.6 ms</span><span class=\"label\">worst client-visible gap"));
    assert!(html.contains("AMD EPYC 7B13") && html.contains("b34cbab6471b"));
    assert!(
        html.contains("60% session · 20% get · 20% set")
            || html.contains("60% session · 20% set · 20% get")
    );
    assert!(html.contains("coordinated-omission corrected, measured from the intended send time"));
    assert!(html.contains("tandem.run/1"));
}

#[test]
fn a_rolled_back_run_with_losses_says_so() {
    let (mut summary, slices, timeline) = sample::rolled_back_run();
    summary.lost_updates = 3;
    let html = render(&summary, &slices, Some(&timeline));
    assert_well_formed(&html);
    assert!(html.contains("badge warn\">rolled back"));
    assert!(html.contains("class=\"stat lost\"><span class=\"num\">3 lost"));
    assert!(!html.contains("0 lost"));
    assert!(html.contains("bandfb"), "fallback phases are tinted");
    assert!(
        html.contains("<td class=\"bad\">"),
        "errors of the faulty evaluation are red"
    );
}

#[test]
fn text_from_the_run_is_escaped() {
    let (mut summary, mut slices, mut timeline) = sample::upgrade_run();
    summary.target = "<script>alert('x')</script>".into();
    summary.phases[1].name = "a<b&c\"".into();
    summary.switchovers[0].kind = "<i>planned</i>".into();
    summary.workload = serde_json::json!({"<k>": "<v>"});
    slices[0].phase = "<slice>".into();
    timeline.events[0].message = Some("</details><script>".into());
    let html = render(&summary, &slices, Some(&timeline));
    assert_well_formed(&html);
    assert_self_contained("the report", &html);
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("a&lt;b&amp;c&quot;"));
    let compare = render_compare(("<a>", &summary), ("b&b", &summary));
    assert_well_formed(&compare);
    assert!(compare.contains("&lt;a&gt;") && compare.contains("b&amp;b"));
}

#[test]
fn thin_runs_render_without_panicking() {
    let (summary, slices, timeline) = sample::upgrade_run();
    let empty = Summary {
        schema: String::new(),
        outcome: String::new(),
        target: String::new(),
        started_ms: 0,
        ended_ms: 0,
        workload: serde_json::Value::Null,
        phases: Vec::new(),
        switchovers: Vec::new(),
        acknowledged_updates: 0,
        verified_updates: 0,
        lost_updates: 0,
        simplex_ms: 0,
        simplex_windows: Vec::new(),
        environment: None,
        fleet: None,
    };
    let mut reversed = empty.clone();
    reversed.started_ms = 5_000;
    reversed.ended_ms = 1_000;
    let mut gappy = slices.clone();
    gappy.retain(|s| !(10..20).contains(&((s.t_ms - sample::STARTED_MS) / 1000)));
    gappy[3].ops = 0;
    gappy[3].latency_us = Latency::default();
    let one = vec![slices[0].clone()];
    let cases: Vec<(&str, &Summary, &[Slice], Option<&Timeline>)> = vec![
        ("no slices", &summary, &[], Some(&timeline)),
        ("no phases", &empty, &slices, None),
        ("nothing at all", &empty, &[], None),
        (
            "phases from the timeline only",
            &empty,
            &[],
            Some(&timeline),
        ),
        ("ends before it starts", &reversed, &slices, None),
        ("missing and empty slices", &summary, &gappy, None),
        ("one slice", &summary, &one, None),
    ];
    for (what, summary, slices, timeline) in cases {
        let html = render(summary, slices, timeline);
        assert_well_formed(&html);
        assert_self_contained("the report", &html);
        assert!(html.contains("<svg"), "{what}: no chart");
        assert!(
            !html.contains("NaN") && !html.contains("inf"),
            "{what}: a coordinate is not a number"
        );
    }
    let html = render(&empty, &[], Some(&timeline));
    for name in phase::UPGRADE {
        assert!(
            html.contains(&format!(">{name}</text>")),
            "{name}: the timeline's phases are drawn when the summary has none"
        );
    }
    assert!(render(&empty, &[], None).contains("no phases recorded"));
    assert_well_formed(&render_compare(("a", &empty), ("b", &empty)));
    assert_well_formed(&render_compare(("a", &summary), ("b", &empty)));
}

/// A corrupt or hand-edited file is still input: extreme values render, they do not panic.
#[test]
fn extreme_values_render_without_panicking() {
    let (mut summary, mut slices, mut timeline) = sample::upgrade_run();
    summary.started_ms = u64::MAX - 5;
    summary.ended_ms = u64::MAX;
    summary.phases[0].start_ms = u64::MAX;
    summary.phases[0].end_ms = 0;
    summary.phases[1].throughput_ops_s = f64::NAN;
    summary.phases[2].throughput_ops_s = f64::INFINITY;
    summary.phases[3].latency_us = Latency {
        p50: u64::MAX,
        p90: u64::MAX,
        p99: u64::MAX,
        p999: u64::MAX,
        max: u64::MAX,
    };
    summary.switchovers[0].client_gap_ms = f64::NAN;
    summary.switchovers[0].at_ms = u64::MAX;
    summary.acknowledged_updates = u64::MAX;
    slices[0].t_ms = u64::MAX;
    slices[1].t_ms = 0;
    slices[2].ops = u64::MAX;
    slices[2].errors = u64::MAX;
    slices[3].latency_us.p99 = u64::MAX;
    timeline.events[0].t_ms = u64::MAX;
    let html = render(&summary, &slices, Some(&timeline));
    assert_well_formed(&html);
    assert!(!html.contains("NaN"), "a coordinate is not a number");
    assert_well_formed(&render(&summary, &slices[..2], None));
    assert_well_formed(&render_compare(
        ("a", &summary),
        ("b", &sample::upgrade_run().0),
    ));
}

#[test]
fn the_comparison_puts_both_runs_and_their_ratios_side_by_side() {
    let (a, _, _) = sample::upgrade_run();
    let (b, _, _) = sample::rolled_back_run();
    let html = render_compare(("runs/tandem", &a), ("runs/faulty", &b));
    assert_well_formed(&html);
    assert_self_contained("the report", &html);
    for name in phase::UPGRADE
        .iter()
        .chain(&[phase::FALLBACK, phase::RESTORED])
    {
        assert!(html.contains(&format!(">{name}</td>")), "{name} missing");
    }
    let (pa, pb) = (&a.phases[0].latency_us.p99, &b.phases[0].latency_us.p99);
    assert!(
        html.contains(&format::times(*pb as f64 / *pa as f64)),
        "the baseline p99 ratio b/a"
    );
    assert!(html.contains("runs/tandem") && html.contains("runs/faulty"));
    assert_eq!(
        html.matches("0 lost").count(),
        2,
        "both runs' lost-update counts"
    );
}

/// `TANDEM_SAMPLE_REPORT=/tmp/sample cargo test -p reports sample_report` writes whole run
/// directories of the sample runs under that directory (`quick/`, `completed/`,
/// `rolled_back/`, `redis/`, `warmed/`), each with its `report.html`, and the comparisons of
/// `quick` and `warmed` against others, for a human to open; `=1` writes to the temp directory.
#[test]
fn sample_report_for_a_human() {
    // `TANDEM_RENDER_RUN=DIR` renders DIR's report.html again with this build (a real run
    // looked at while the report changes).
    if let Some(dir) = std::env::var_os("TANDEM_RENDER_RUN") {
        let path = crate::run::RunDir::new(dir).render_report().unwrap();
        eprintln!("rendered {}", path.display());
    }
    let Some(target) = std::env::var_os("TANDEM_SAMPLE_REPORT") else {
        return;
    };
    let root = match target.to_str() {
        Some("1") | Some("") => std::env::temp_dir().join("tandem-sample-reports"),
        _ => std::path::PathBuf::from(target),
    };
    let runs = sample::all();
    for (name, (summary, slices, timeline)) in &runs {
        let run = crate::run::RunDir::new(root.join(name));
        run.write_summary(summary).unwrap();
        if *name != "redis" {
            run.write_timeline(timeline).unwrap();
        }
        run.write_slices(slices).unwrap();
        run.write_detail(&sample::detail(summary, slices)).unwrap();
        run.render_report().unwrap();
    }
    let quick = crate::run::RunDir::new(root.join("quick"));
    for other in ["redis", "rolled_back"] {
        quick
            .render_compare(&crate::run::RunDir::new(root.join(other)), "quick", other)
            .unwrap();
    }
    // A run that goes through `steady` twice, against one that does not and one that does.
    let warmed = crate::run::RunDir::new(root.join("warmed"));
    for other in ["completed", "warmed"] {
        warmed
            .render_compare(&crate::run::RunDir::new(root.join(other)), "warmed", other)
            .unwrap();
    }
    eprintln!("sample reports written under {}", root.display());
}

/// The `<tr>` of the comparison's phase table whose first cell starts with `label`.
fn compare_row<'a>(html: &'a str, label: &str) -> &'a str {
    let cell = format!("<tr><td class=\"l name\">{label}");
    let start = html
        .find(&cell)
        .unwrap_or_else(|| panic!("no row {label:?}"));
    let end = start + html[start..].find("</tr>").unwrap();
    &html[start..end]
}

#[test]
fn the_comparison_pairs_a_phase_gone_through_twice_by_its_turn() {
    let (a, _, _) = sample::warmed_upgrade_run();
    let steady: Vec<usize> = (0..a.phases.len())
        .filter(|&i| a.phases[i].name == STEADY)
        .collect();
    assert_eq!(steady.len(), 2, "the sample goes through steady twice");
    // B: the same run, its tail three times slower at p99 and with its own count.
    let mut b = a.clone();
    let tail = &mut b.phases[steady[1]];
    tail.latency_us.p99 = a.phases[steady[1]].latency_us.p99 * 3;
    tail.ops += 7;
    let html = render_compare(("a", &a), ("b", &b));
    assert_well_formed(&html);
    assert_self_contained("warm vs warm", &html);

    let first = compare_row(&html, "steady</td>");
    let second = compare_row(&html, "steady (2)</td>");
    let p99 = |s: &Summary, i: usize| format::latency_us(s.phases[i].latency_us.p99);
    // The tail is paired with the tail: both p99s, and their ratio 3×.
    assert!(second.contains(&p99(&a, steady[1])), "{second}");
    assert!(second.contains(&p99(&b, steady[1])), "{second}");
    assert!(second.contains(&format::times(3.0)), "{second}");
    // The warm-up with the warm-up, and not with the tail.
    assert!(first.contains(&p99(&a, steady[0])), "{first}");
    assert!(!first.contains(&p99(&b, steady[1])), "{first}");
    assert_eq!(html.matches("<td class=\"l name\">steady").count(), 2);

    // In the spectrum each occurrence has its curve, B's second with B's tail.
    let legend = |label: &str, p: &PhaseSummary| {
        format!("<code>{label}</code> n={}", format::thousands(successes(p)))
    };
    for (label, p) in [
        ("A steady", &a.phases[steady[0]]),
        ("B steady", &b.phases[steady[0]]),
        ("A steady (2)", &a.phases[steady[1]]),
        ("B steady (2)", &b.phases[steady[1]]),
    ] {
        assert!(html.contains(&legend(label, p)), "{label} in the legend");
    }
}

#[test]
fn a_one_phase_upgrade_run_is_not_a_reference() {
    let (a, _, _) = sample::upgrade_run();
    // An upgrade that got no further than its baseline.
    let mut b = a.clone();
    b.phases.truncate(1);
    assert_eq!(b.phases[0].name, phase::BASELINE);
    let html = render_compare(("a", &a), ("b", &b));
    assert_well_formed(&html);
    assert!(
        !html.contains("vs B "),
        "B's baseline is not B's steady state"
    );
    // Each phase of A against B's phase of that name: only the baselines meet.
    let evaluation = compare_row(&html, "evaluation</td>");
    assert!(
        evaluation.contains("<td>–</td>"),
        "B has no evaluation: {evaluation}"
    );
    assert!(html.contains("<code>B baseline</code>"));
    assert!(!html.contains("<code>A evaluation</code>"));

    // A run that is all steady is still the reference of every phase.
    let (redis, _, _) = sample::redis_run();
    let html = render_compare(("a", &a), ("redis", &redis));
    assert!(compare_row(&html, "evaluation").contains("vs B steady"));
}

#[test]
fn a_grey_ratio_says_why() {
    let (summary, slices, timeline) = sample::quick_run();
    let html = render(&summary, &slices, Some(&timeline));
    assert!(
        html.contains("title=\"not coloured: a phase lasted under a second"),
        "the short phases' throughput ratios"
    );
    assert!(!html.contains("one side has too few samples"));
}

#[test]
fn the_environment_is_the_load_generators_and_its_memory_is_rounded() {
    let (mut summary, slices, timeline) = sample::upgrade_run();
    summary.environment.as_mut().unwrap().memory_mb = 24_105;
    let html = render(&summary, &slices, Some(&timeline));
    assert!(html.contains("23.5 GiB"), "24,105 MB");
    assert!(html.contains("Load generator's build and machine"));
    assert!(html.contains("the load generator ran here"));
}

#[test]
fn a_zoom_the_summary_does_not_list_says_what_its_end_is() {
    let (mut summary, slices, timeline) = sample::upgrade_run();
    let detail = sample::detail(&summary, &slices);
    let z = &detail.zooms[0];
    summary.switchovers.clear();
    let html = super::render(&Run {
        summary: &summary,
        slices: &slices,
        timeline: Some(&timeline),
        detail: Some(&detail),
    });
    assert_well_formed(&html);
    let caption = format!(
        "<b>{} ms</b> until the clients found the new active",
        format::ms(z.end_ms.saturating_sub(z.at_ms) as f64)
    );
    assert!(html.contains(&caption), "{caption}");
    assert!(!html.contains("step-up <b>"), "not a step-up");
    assert!(html.contains(">found</text>"));
}
