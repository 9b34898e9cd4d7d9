//! Two runs side by side (`tandem report A --compare B`, `tandem demo --peer redis`): both
//! runs' latency and throughput over time from their own start on one time axis, the
//! spectra of the phases that can be compared on one pair of axes, and the per-phase and
//! per-switchover figures with their ratios B / A.

use std::fmt::Write as _;

use super::chart::{self, Band, Chart, Marker, Scale, Series};
use super::format::{self, esc};
use super::spectrum::Curve;
use super::*;

/// A run without an upgrade (all its phases `steady`, as [`crate::run::is_steady_only`] has
/// it everywhere) is the reference for every phase of the other run: an upgrade measured
/// against the peer's steady state under the same load.
fn steady_only(r: &Summary) -> bool {
    crate::run::is_steady_only(r)
}

/// A phase of a run as it is paired with the other run's: its name and which time the run
/// went through a phase of that name (1 the first), so that a run's second `steady` meets
/// the other run's second, not its first.
#[derive(Clone, Copy, PartialEq)]
struct Key<'a> {
    name: &'a str,
    nth: usize,
}

impl Key<'_> {
    /// The name, and for a phase gone through again, which time: `steady (2)`.
    fn label(&self) -> String {
        if self.nth == 1 {
            self.name.to_string()
        } else {
            format!("{} ({})", self.name, self.nth)
        }
    }
}

/// A run's phases in order, each with its [`Key`].
fn keyed(r: &Summary) -> Vec<(Key<'_>, &PhaseSummary)> {
    let mut out: Vec<(Key, &PhaseSummary)> = Vec::with_capacity(r.phases.len());
    for p in &r.phases {
        let nth = 1 + out.iter().filter(|(k, _)| k.name == p.name).count();
        out.push((Key { name: &p.name, nth }, p));
    }
    out
}

/// The phase of `phases` with `key`, or for a reference run its first phase (its steady
/// state, which every phase of the other run is measured against).
fn find<'a>(
    phases: &[(Key<'a>, &'a PhaseSummary)],
    key: Key,
    is_ref: bool,
) -> Option<(Key<'a>, &'a PhaseSummary)> {
    phases
        .iter()
        .find(|(k, _)| *k == key)
        .or(if is_ref { phases.first() } else { None })
        .copied()
}

fn card(body: &mut String, who: &str, label: &str, run: &Run) {
    let s = run.summary;
    let lost = if s.lost_updates == 0 {
        "<b class=\"better\">0 lost</b>".to_string()
    } else {
        format!(
            "<b class=\"bad\">{} lost</b>",
            format::thousands(s.lost_updates)
        )
    };
    let gap = match worst_gap(s) {
        Some((_, sw)) => format!(
            "worst client-visible gap <b>{} ms</b>",
            format::ms(sw.client_gap_ms)
        ),
        None => "no switchover".to_string(),
    };
    w!(
        body,
        "<div class=\"card {}\"><div class=\"head\"><span class=\"who\">{who}</span><code>{}</code>{}</div>\
         <p class=\"meta\">target <b>{}</b>{} · started <b>{}</b> · duration <b>{}</b></p>\
         <p class=\"meta\"><b>{}</b> acknowledged · <b>{}</b> verified · {lost} · {gap}</p>",
        who.to_ascii_lowercase(),
        esc(label),
        outcome_badge(&s.outcome),
        esc(&s.target),
        s.environment
            .as_ref()
            .filter(|e| !e.target_version.is_empty())
            .map_or(String::new(), |e| format!(" ({})", esc(&e.target_version))),
        format::utc(s.started_ms),
        format::duration(s.ended_ms.saturating_sub(s.started_ms)),
        format::thousands(s.acknowledged_updates),
        format::thousands(s.verified_updates),
    );
    if let serde_json::Value::Object(map) = &s.workload {
        let parts: Vec<String> = [
            ("rate_ops_s", "req/s"),
            ("connections", "connections"),
            ("pipeline", "pipeline"),
            ("state_work_units", "work units"),
        ]
        .into_iter()
        .filter_map(|(k, name)| {
            map.get(k)
                .map(|v| format!("<b>{}</b> {name}", esc(&workload_value(k, v))))
        })
        .collect();
        if !parts.is_empty() {
            w!(body, "<p class=\"meta\">{}</p>", parts.join(" · "));
        }
    }
    if let Some(e) = &s.environment {
        w!(
            body,
            "<p class=\"meta\"><b>{}</b> · {} · {} cpus · tandem {} <code>{}</code></p>",
            esc(&e.hostname),
            esc(&e.cpu_model),
            e.cpus,
            esc(&e.tandem_version),
            esc(&e.git_revision)
        );
    }
    body.push_str("</div>\n");
}

/// A percentile of two phases with its ratio: a value only where the phase's samples
/// support it, the ratio only where both do.
fn percentile_pair(
    out: &mut String,
    pa: Option<&PhaseSummary>,
    pb: Option<&PhaseSummary>,
    q: f64,
    pick: fn(&PhaseSummary) -> u64,
) {
    let cell = |p: Option<&PhaseSummary>, class: &str| match p {
        Some(p) => percentile_cell(p, q, pick(p), class),
        None => format!("<td class=\"muted {class}\">–</td>"),
    };
    out.push_str(&cell(pa, "sep"));
    out.push_str(&cell(pb, ""));
    let ok = |p: Option<&PhaseSummary>| p.is_some_and(|p| percentile_supported(successes(p), q));
    match (pa.filter(|_| ok(pa)), pb.filter(|_| ok(pb))) {
        (Some(a), Some(b)) => out.push_str(&ratio_cell(
            format::ratio(pick(b) as f64, pick(a) as f64),
            true,
            1.1,
            None,
            "",
        )),
        (Some(_), None) | (None, Some(_)) => out.push_str(
            "<td class=\"few\" title=\"no ratio: one side has too few samples for this percentile\">–</td>",
        ),
        _ => out.push_str("<td class=\"muted\">–</td>"),
    }
}

pub fn render_compare(a: (&str, &Run), b: (&str, &Run)) -> String {
    let (label_a, run_a) = a;
    let (label_b, run_b) = b;
    let (sa, sb) = (run_a.summary, run_b.summary);
    let mut body = String::new();
    body.push_str("<header>\n<div class=\"head\"><h1>tandem: two runs compared</h1></div>\n");
    w!(
        body,
        "<p class=\"meta\"><b>A</b> <code>{}</code> against <b>B</b> <code>{}</code>; ratios are B / A: above 1× B has more throughput, or more latency, than A</p>\n</header>\n",
        esc(label_a),
        esc(label_b)
    );
    body.push_str("<div class=\"cards\">\n");
    card(&mut body, "A", label_a, run_a);
    card(&mut body, "B", label_b, run_b);
    body.push_str("</div>\n");

    charts(&mut body, run_a, run_b);
    compare_spectrum(&mut body, sa, sb);
    phases_table(&mut body, sa, sb);
    switchovers_table(&mut body, sa, sb);

    let schemas = if sa.schema == sb.schema {
        sa.schema.clone()
    } else {
        format!("{} / {}", sa.schema, sb.schema)
    };
    footer(&mut body, &schemas);
    page(&format!("tandem: {label_a} vs {label_b}"), &body)
}

/// Latency and throughput of both runs, each from its own start, on one time axis.
fn charts(body: &mut String, run_a: &Run, run_b: &Run) {
    let (fa, fb) = (Frame::of(run_a), Frame::of(run_b));
    let origin = fa.origin;
    let shift_b = |t: u64| t.saturating_sub(fb.origin).saturating_add(origin);
    let span = fa
        .end
        .saturating_sub(fa.origin)
        .max(fb.end.saturating_sub(fb.origin));
    let end = origin.saturating_add(span);

    // Lanes: each run's phases when it has more than one, named by run when both are drawn.
    let lanes_of = |r: &Run| r.summary.phases.len() > 1;
    let (lanes_a, lanes_b) = (lanes_of(run_a), lanes_of(run_b));
    let prefix = lanes_a && lanes_b;
    let mut names: Vec<(String, u64, u64, bool, String)> = Vec::new();
    for (who, run, draw, shift) in [
        ("A ", run_a, lanes_a, &(|t: u64| t) as &dyn Fn(u64) -> u64),
        ("B ", run_b, lanes_b, &shift_b as &dyn Fn(u64) -> u64),
    ] {
        if !draw {
            continue;
        }
        for p in &run.summary.phases {
            names.push((
                format!("{}{}", if prefix { who } else { "" }, p.name),
                shift(p.start_ms),
                shift(p.end_ms),
                phase::FALLBACK_PATH.contains(&p.name.as_str()),
                band_note(p.start_ms, p.end_ms, Some(p)),
            ));
        }
    }
    let bands: Vec<Band> = names
        .iter()
        .map(|(name, s, e, fb, note)| Band {
            name,
            start_ms: *s,
            end_ms: *e,
            fallback: *fb,
            note: note.clone(),
        })
        .collect();
    let mut markers = super::markers(run_a.summary, run_a.timeline, "A ", "marker");
    markers.extend(
        super::markers(run_b.summary, run_b.timeline, "B ", "markerb")
            .into_iter()
            .map(|m| Marker {
                at_ms: shift_b(m.at_ms),
                ..m
            }),
    );
    markers.sort_by_key(|m| m.at_ms);

    let same = |t: u64| t;
    let lat = |f: &Frame, shift: &dyn Fn(u64) -> u64, pick: fn(&Slice) -> u64| {
        slice_points(&f.slices, f.step_ms, shift, |s| {
            (s.ops > 0).then_some(pick(s) as f64)
        })
    };
    let p50 = |s: &Slice| s.latency_us.p50;
    let p99 = |s: &Slice| s.latency_us.p99;
    let latency = Chart {
        id: "latency",
        label: "Latency over time of both runs, each from its own start: p99 and p50 per second",
        origin_ms: origin,
        end_ms: end,
        bands: &bands,
        markers: &markers,
        scale: Scale::Log,
        format_y: format::latency_tick_us,
        lines: [
            ("p50", "bp50", p50 as fn(&Slice) -> u64),
            ("p99", "bp99", p99),
        ]
        .into_iter()
        .flat_map(|(class_a, class_b, pick)| {
            [
                (class_a, lat(&fa, &same, pick)),
                (class_b, lat(&fb, &shift_b, pick)),
            ]
        })
        .map(|(class, points)| Series {
            class,
            points,
            area: false,
        })
        .collect(),
        dots: Vec::new(),
        bars: None,
        bar_width_ms: fa.step_ms,
        threshold: None,
        empty_note: "no time slices recorded in either run",
    };
    body.push_str("<section>\n<h2>Latency over time <span class=\"muted\">(log scale, each run from its own start)</span></h2>\n");
    body.push_str(
        "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--p99)\"></span>A p99</span>\
         <span><span class=\"key\" style=\"background:var(--p50)\"></span>A p50</span>\
         <span><span class=\"key\" style=\"background:var(--b)\"></span>B p99</span>\
         <span><span class=\"key\" style=\"background:var(--bp50)\"></span>B p50</span>\
         <span><span class=\"key dash\"></span>A switchover</span><span><span class=\"key dashb\"></span>B switchover</span></div>\n",
    );
    body.push_str(&chart::svg(&latency));
    body.push_str("\n</section>\n");

    // Replies by arrival where recorded (a stall shows), requests otherwise.
    let tput = |f: &Frame, shift: &dyn Fn(u64) -> u64| {
        slice_points(&f.slices, f.step_ms, shift, |s| {
            f.per_s(s, s.replied.unwrap_or(s.ops))
        })
    };
    let throughput = Chart {
        id: "throughput",
        label: "Throughput of both runs, replies per second, each from its own start",
        origin_ms: origin,
        end_ms: end,
        bands: &bands,
        markers: &markers,
        scale: Scale::Linear,
        format_y: format::rate_tick,
        lines: vec![
            Series {
                class: "tput",
                points: tput(&fa, &same),
                area: false,
            },
            Series {
                class: "breplied",
                points: tput(&fb, &shift_b),
                area: false,
            },
        ],
        dots: Vec::new(),
        bars: None,
        bar_width_ms: fa.step_ms,
        threshold: None,
        empty_note: "no time slices recorded in either run",
    };
    body.push_str("<section>\n<h2>Throughput over time <span class=\"muted\">(replies per second)</span></h2>\n");
    body.push_str(
        "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--tput)\"></span>A</span>\
         <span><span class=\"key\" style=\"background:var(--b)\"></span>B</span></div>\n",
    );
    body.push_str(&chart::svg(&throughput));
    body.push_str("\n</section>\n");
}

/// Curves of the phases that can be compared: phases of the same name in both runs (A solid,
/// B dashed, one colour per phase), or every phase of an upgrade against the other run's
/// single steady phase.
fn compare_spectrum(body: &mut String, sa: &Summary, sb: &Summary) {
    let mut curves: Vec<Curve> = Vec::new();
    let (ref_a, ref_b) = (steady_only(sa), steady_only(sb));
    if ref_a != ref_b {
        let (upgrade, reference, up_who, ref_who) = if ref_b {
            (sa, sb, "A", "B")
        } else {
            (sb, sa, "B", "A")
        };
        for (i, (k, p)) in keyed(upgrade).into_iter().enumerate() {
            curves.push(Curve::of_phase(
                p,
                format!("{up_who} {}", k.label()),
                phase_color(&p.name, i),
                up_who == "B",
            ));
        }
        if let Some(p) = reference.phases.first() {
            curves.push(Curve::of_phase(
                p,
                format!("{ref_who} {} ({})", p.name, reference.target),
                // The reference run's colour in the other charts.
                if ref_who == "B" { "#c2410c" } else { "#1d4ed8" },
                ref_who == "B",
            ));
        }
    } else {
        let phases_b = keyed(sb);
        for (i, (k, p)) in keyed(sa).into_iter().enumerate() {
            if let Some((_, q)) = find(&phases_b, k, false) {
                let color = phase_color(&p.name, i);
                curves.push(Curve::of_phase(p, format!("A {}", k.label()), color, false));
                curves.push(Curve::of_phase(q, format!("B {}", k.label()), color, true));
            }
        }
    }
    body.push_str("<section>\n<h2>Percentile spectra <span class=\"muted\">(comparable phases, same axes; A solid, B dashed)</span></h2>\n");
    w!(
        body,
        "<p class=\"note\">A curve stops where its phase has fewer than {} samples beyond the percentile.</p>\n",
        crate::summary::SAMPLES_BEYOND_MIN
    );
    if curves.is_empty() {
        body.push_str("<p class=\"note\">The runs have no phase in common.</p>\n");
    }
    spectrum_figure(
        body,
        "Percentile spectra of both runs' comparable phases",
        &curves,
    );
}

fn phases_table(body: &mut String, run_a: &Summary, run_b: &Summary) {
    let (ref_a, ref_b) = (steady_only(run_a), steady_only(run_b));
    let (phases_a, phases_b) = (keyed(run_a), keyed(run_b));
    // Every phase of both runs, a phase gone through twice once per time; only the other
    // run's when one is the reference of every phase.
    let mut keys: Vec<Key> = Vec::new();
    for (k, _) in phases_a
        .iter()
        .filter(|_| !ref_a || ref_b)
        .chain(phases_b.iter().filter(|_| !ref_b || ref_a))
    {
        if !keys.contains(k) {
            keys.push(*k);
        }
    }
    if keys.is_empty() {
        keys.extend(phases_a.iter().chain(&phases_b).map(|(k, _)| *k));
    }
    body.push_str("<section class=\"table\">\n<h2>Phases</h2>\n<div class=\"scroll\"><table id=\"phases\">\n<thead>\n");
    body.push_str(
        "<tr><th></th><th class=\"group sep\" colspan=\"3\">throughput ops/s</th><th class=\"group sep\" colspan=\"3\">p50</th>\
         <th class=\"group sep\" colspan=\"3\">p99</th><th class=\"group sep\" colspan=\"3\">p99.9</th></tr>\n<tr><th class=\"l\">phase</th>",
    );
    for _ in 0..4 {
        body.push_str("<th class=\"sep\">A</th><th>B</th><th>B/A</th>");
    }
    body.push_str("</tr>\n</thead>\n<tbody>\n");
    for &key in &keys {
        let a = find(&phases_a, key, ref_a && !ref_b);
        let b = find(&phases_b, key, ref_b && !ref_a);
        let (pa, pb) = (a.map(|(_, p)| p), b.map(|(_, p)| p));
        let name = esc(&key.label());
        let vs = |who: &str, side: Option<(Key, &PhaseSummary)>| {
            format!(
                "{name} <span class=\"meta\">vs {who} {}</span>",
                esc(&side.map_or(String::new(), |(k, _)| k.label()))
            )
        };
        let shown = match (ref_a && !ref_b, ref_b && !ref_a) {
            (true, _) => vs("A", a),
            (_, true) => vs("B", b),
            _ => name,
        };
        w!(body, "<tr><td class=\"l name\">{}</td>", shown);
        let cell = |p: Option<&PhaseSummary>| {
            p.map_or("–".to_string(), |p| format::rate(p.throughput_ops_s))
        };
        w!(
            body,
            "<td class=\"sep\">{}</td><td>{}</td>",
            cell(pa),
            cell(pb)
        );
        let long = |p: Option<&PhaseSummary>| {
            p.is_some_and(|p| p.end_ms.saturating_sub(p.start_ms) >= RATE_MEANINGFUL_MS)
        };
        let r = match (pa, pb) {
            (Some(a), Some(b)) => format::ratio(b.throughput_ops_s, a.throughput_ops_s),
            _ => None,
        };
        let grey = (!long(pa) || !long(pb)).then_some(SHORT_FOR_A_RATE);
        body.push_str(&ratio_cell(r, false, 1.1, grey, ""));
        percentile_pair(body, pa, pb, 0.5, |p| p.latency_us.p50);
        percentile_pair(body, pa, pb, 0.99, |p| p.latency_us.p99);
        percentile_pair(body, pa, pb, 0.999, |p| p.latency_us.p999);
        body.push_str("</tr>\n");
    }
    if keys.is_empty() {
        body.push_str(
            "<tr><td class=\"none\" colspan=\"13\">no phases recorded in either run</td></tr>\n",
        );
    }
    body.push_str("</tbody></table></div>\n");
    statistics_note(
        body,
        "A ratio B/A is given only when both phases have the samples for that percentile, and \
         coloured when it moved by more than 1.1× (throughput: when both phases last at least a \
         second); red where B is worse.",
    );
    body.push_str("</section>\n");
}

fn switchovers_table(body: &mut String, run_a: &Summary, run_b: &Summary) {
    body.push_str("<section>\n<h2>Switchovers</h2>\n<div class=\"scroll\"><table id=\"switchovers\">\n<thead>\n");
    body.push_str(
        "<tr><th></th><th class=\"group sep\" colspan=\"2\">kind</th><th class=\"group sep\" colspan=\"3\">step-up ms</th>\
         <th class=\"group sep\" colspan=\"3\">client-visible gap ms</th><th class=\"group sep\" colspan=\"2\">retried</th>\
         <th class=\"group sep\" colspan=\"2\">redirected</th></tr>\n\
         <tr><th class=\"l\">#</th><th class=\"l sep\">A</th><th class=\"l\">B</th>\
         <th class=\"sep\">A</th><th>B</th><th>B/A</th><th class=\"sep\">A</th><th>B</th><th>B/A</th>\
         <th class=\"sep\">A</th><th>B</th><th class=\"sep\">A</th><th>B</th></tr>\n</thead>\n<tbody>\n",
    );
    let count = run_a.switchovers.len().max(run_b.switchovers.len());
    for i in 0..count {
        let (sa, sb) = (run_a.switchovers.get(i), run_b.switchovers.get(i));
        let kind = |s: Option<&Switchover>| s.map_or("–".to_string(), |s| esc(&s.kind));
        w!(
            body,
            "<tr><td class=\"l\">S{}</td><td class=\"l sep name\">{}</td><td class=\"l name\">{}</td>",
            i + 1,
            kind(sa),
            kind(sb)
        );
        for pick in [
            |s: &Switchover| s.stepup_ms,
            |s: &Switchover| s.client_gap_ms,
        ] {
            let (a, b) = (sa.map(pick), sb.map(pick));
            let cell = |v: Option<f64>| v.map_or("–".to_string(), format::ms);
            w!(
                body,
                "<td class=\"sep\">{}</td><td>{}</td>",
                cell(a),
                cell(b)
            );
            let r = match (a, b) {
                (Some(a), Some(b)) => format::ratio(b, a),
                _ => None,
            };
            body.push_str(&ratio_cell(r, true, 1.1, None, ""));
        }
        for pick in [|s: &Switchover| s.retried, |s: &Switchover| s.redirected] {
            let cell = |s: Option<&Switchover>| {
                s.map_or("–".to_string(), |s| format::thousands(pick(s)))
            };
            w!(
                body,
                "<td class=\"sep\">{}</td><td>{}</td>",
                cell(sa),
                cell(sb)
            );
        }
        body.push_str("</tr>\n");
    }
    if count == 0 {
        body.push_str(
            "<tr><td class=\"none\" colspan=\"13\">no switchover recorded in either run</td></tr>\n",
        );
    }
    body.push_str("</tbody></table></div>\n</section>\n");
}
