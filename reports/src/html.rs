//! The HTML report of a run, and two runs side by side. Each is one self-contained file:
//! inline CSS and inline SVG, no script, no font or image from elsewhere, because a report is
//! mailed, attached to tickets and opened on machines without a network, years after the run.
//!
//! The report answers an operator's questions in the order they are asked: did the upgrade
//! complete and was anything lost (header), what did each phase cost against the baseline
//! (phase table), when did latency and throughput move and why (charts with the phases and
//! switchovers drawn on them), and how long were clients left waiting at each switchover.

mod chart;
mod format;

use std::fmt::Write as _;

use crate::run::Slice;
use crate::summary::{PhaseSummary, Summary, Switchover};
use crate::timeline::{phase, EventKind, Timeline};
use chart::{Band, Chart, Marker, Scale, Series};
use format::esc;

/// Slices are one second unless the slices themselves say otherwise.
const SLICE_MS_DEFAULT: u64 = 1000;

macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

const CSS: &str = r#"
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--ok:#15803d;--warn:#b45309;--bad:#b91c1c;
--p99:#1d4ed8;--p50:#7fb0f5;--tput:#0f766e;--marker:#7c3aed}
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 40px}
h1{font-size:22px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:15px;margin:0 0 10px;font-weight:620}
.head{display:flex;align-items:center;gap:12px;flex-wrap:wrap}
.badge{display:inline-block;padding:2px 11px;border-radius:999px;font-weight:600;font-size:13px}
.badge.ok{background:#dcfce7;color:#166534}
.badge.warn{background:#fef3c7;color:#92400e}
.badge.bad{background:#fee2e2;color:#991b1b}
.meta{color:var(--muted);margin:6px 0 0}
.meta b{color:var(--ink);font-weight:600}
.stats{display:flex;gap:14px;margin-top:18px;flex-wrap:wrap}
.stat{flex:1;min-width:200px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.stat .num{display:block;font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.stat .label{color:var(--muted);font-size:12px}
.stat.good{border-color:#bbf7d0;background:#f0fdf4}
.stat.good .num{color:var(--ok)}
.stat.lost{border-color:#fecaca;background:#fef2f2}
.stat.lost .num{color:var(--bad)}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-top:18px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px;vertical-align:bottom;white-space:normal;line-height:1.25}
tr:last-child td{border-bottom:none}
table.narrow{width:auto;min-width:55%}
th.l,td.l{text-align:left}
th.group{text-align:center;border-bottom:1px solid #cbd5e1}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
td.sep,th.sep{border-left:1px solid var(--line)}
tr.fb td.name{color:var(--warn)}
.bad{color:var(--bad);font-weight:600}
.worse{color:var(--bad)}
.better{color:var(--ok)}
.muted{color:var(--muted)}
.none{color:#94a3b8;text-align:center}
.legend{display:flex;gap:18px;font-size:12px;color:var(--muted);margin:0 0 6px;flex-wrap:wrap}
.key{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:6px;border-radius:2px}
.key.dash{height:0;border-top:2px dashed var(--marker);border-radius:0}
.key.box{height:10px;width:14px}
svg.chart{display:block;overflow:visible}
svg text{font-family:inherit}
.tick{font-size:11px;fill:var(--muted);font-variant-numeric:tabular-nums}
.grid{stroke:#edf0f4;stroke-width:1}
.axis{stroke:#94a3b8;stroke-width:1}
.band0{fill:#64748b;fill-opacity:.10}
.band1{fill:#64748b;fill-opacity:.03}
.bandfb0{fill:#d97706;fill-opacity:.17}
.bandfb1{fill:#d97706;fill-opacity:.08}
.bandlabel{font-size:11px;fill:#334155}
.p99{fill:none;stroke:var(--p99);stroke-width:1.8;stroke-linejoin:round}
.p50{fill:none;stroke:var(--p50);stroke-width:1.6;stroke-linejoin:round}
.tput{fill:none;stroke:var(--tput);stroke-width:1.8;stroke-linejoin:round}
.p99dot{fill:var(--p99)}.p50dot{fill:var(--p50)}.tputdot{fill:var(--tput)}
.area{fill:var(--tput);fill-opacity:.10}
.err{fill:var(--bad)}
.marker{stroke:var(--marker);stroke-width:1.5;stroke-dasharray:4 3}
.markerlabel{font-size:11px;font-weight:600;fill:#6d28d9;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.empty{font-size:13px;fill:var(--muted)}
details{margin-top:18px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 20px}
details summary{cursor:pointer;font-weight:600;font-size:14px}
details table{margin-top:8px}
.cards{display:flex;gap:14px;margin-top:16px;flex-wrap:wrap}
.card{flex:1;min-width:300px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.card .who{font-weight:650;margin-right:8px}
footer{color:var(--muted);font-size:12px;margin-top:22px;line-height:1.6}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
"#;

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        esc(title)
    )
}

fn outcome_badge(outcome: &str) -> String {
    match outcome {
        "completed" => r#"<span class="badge ok">completed</span>"#.to_string(),
        "rolled_back" => r#"<span class="badge warn">rolled back</span>"#.to_string(),
        other => format!(r#"<span class="badge bad">{}</span>"#, esc(other)),
    }
}

/// Where the time axis starts: the run's start, or the earliest thing recorded when a
/// summary was written without one.
fn origin_ms(summary: &Summary, slices: &[Slice], timeline: Option<&Timeline>) -> u64 {
    if summary.started_ms > 0 {
        return summary.started_ms;
    }
    let phases = summary.phases.iter().map(|p| p.start_ms);
    let slices = slices.iter().map(|s| s.t_ms);
    let events = timeline
        .into_iter()
        .flat_map(|t| t.events.iter().map(|e| e.t_ms));
    phases
        .chain(slices)
        .chain(events)
        .filter(|t| *t > 0)
        .min()
        .unwrap_or(0)
}

/// The slice length the load generator used: the commonest step between slices.
fn slice_ms(slices: &[Slice]) -> u64 {
    let mut steps: Vec<u64> = slices
        .windows(2)
        .map(|w| w[1].t_ms.saturating_sub(w[0].t_ms))
        .filter(|d| *d > 0)
        .collect();
    steps.sort_unstable();
    steps
        .get(steps.len() / 2)
        .copied()
        .unwrap_or(SLICE_MS_DEFAULT)
}

fn bands<'a>(summary: &'a Summary, timeline_phases: &'a [(String, u64, u64)]) -> Vec<Band<'a>> {
    let is_fallback = |name: &str| phase::FALLBACK_PATH.contains(&name);
    if summary.phases.is_empty() {
        timeline_phases
            .iter()
            .map(|(name, start_ms, end_ms)| Band {
                name,
                start_ms: *start_ms,
                end_ms: *end_ms,
                fallback: is_fallback(name),
            })
            .collect()
    } else {
        summary
            .phases
            .iter()
            .map(|p| Band {
                name: &p.name,
                start_ms: p.start_ms,
                end_ms: p.end_ms,
                fallback: is_fallback(&p.name),
            })
            .collect()
    }
}

fn markers(summary: &Summary, timeline: Option<&Timeline>) -> Vec<Marker> {
    if !summary.switchovers.is_empty() {
        return summary
            .switchovers
            .iter()
            .map(|s| Marker {
                at_ms: s.at_ms,
                label: format!("{} · gap {} ms", s.kind, format::ms(s.client_gap_ms)),
            })
            .collect();
    }
    // A summary written before its switchovers were measured: the timeline still knows when.
    let events = timeline.map(|t| t.events.as_slice()).unwrap_or_default();
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::SwitchoverBegin | EventKind::Failover))
        .map(|e| Marker {
            at_ms: e.t_ms,
            label: e.switchover.map_or("switchover".into(), |k| serde_name(&k)),
        })
        .collect()
}

/// The snake_case name serde gives an enum of the timeline.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Per-slice points at the slice's middle; `None` where the line must break (no replies, or
/// slices missing), so that a gap is drawn as a gap rather than bridged.
fn slice_points(
    slices: &[Slice],
    slice_ms: u64,
    value: impl Fn(&Slice) -> Option<f64>,
) -> Vec<Option<(u64, f64)>> {
    let mut points = Vec::with_capacity(slices.len());
    let mut previous_ms: Option<u64> = None;
    for s in slices {
        if previous_ms.is_some_and(|p| s.t_ms.saturating_sub(p) > slice_ms.saturating_mul(3) / 2) {
            points.push(None);
        }
        points.push(value(s).map(|v| (s.t_ms.saturating_add(slice_ms / 2), v)));
        previous_ms = Some(s.t_ms);
    }
    points
}

fn workload_text(workload: &serde_json::Value) -> String {
    let compact = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match workload {
        serde_json::Value::Null => String::new(),
        serde_json::Value::Object(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{}&nbsp;<b>{}</b>", esc(k), esc(&compact(v))))
            .collect::<Vec<_>>()
            .join(" · "),
        other => esc(&compact(other)),
    }
}

/// The report of one run.
pub fn render(summary: &Summary, slices: &[Slice], timeline: Option<&Timeline>) -> String {
    let mut slices: Vec<Slice> = slices.to_vec();
    slices.sort_by_key(|s| s.t_ms);
    let origin = origin_ms(summary, &slices, timeline);
    let step_ms = slice_ms(&slices);
    let last_phase_end = summary.phases.iter().map(|p| p.end_ms).max().unwrap_or(0);
    let last_slice_end = slices.last().map_or(0, |s| s.t_ms.saturating_add(step_ms));
    let end = summary
        .ended_ms
        .max(last_phase_end)
        .max(last_slice_end)
        .max(origin);
    let timeline_phases = timeline.map(|t| t.phases(end)).unwrap_or_default();
    let bands = bands(summary, &timeline_phases);
    let markers = markers(summary, timeline);

    let mut body = String::new();
    header(&mut body, summary, origin, end);
    phase_table(&mut body, summary, origin);

    let per_s = |n: u64| n as f64 * 1000.0 / step_ms as f64;
    let with_replies = |s: &Slice, v: u64| (s.ops > 0).then_some(v as f64);
    let latency = Chart {
        label: "Latency per one-second slice: p99 and p50",
        origin_ms: origin,
        end_ms: end,
        bands: &bands,
        markers: &markers,
        scale: Scale::Log,
        format_y: format::latency_tick_us,
        marker_labels_low: true,
        lines: vec![
            Series {
                class: "p50",
                points: slice_points(&slices, step_ms, |s| with_replies(s, s.latency_us.p50)),
            },
            Series {
                class: "p99",
                points: slice_points(&slices, step_ms, |s| with_replies(s, s.latency_us.p99)),
            },
        ],
        area: false,
        bars: None,
        bar_width_ms: step_ms,
        empty_note: "no time slices recorded in this run",
    };
    body.push_str(
        "<section>\n<h2>Latency over time <span class=\"muted\">(log scale)</span></h2>\n",
    );
    body.push_str(
        "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--p99)\"></span>p99</span>\
         <span><span class=\"key\" style=\"background:var(--p50)\"></span>p50</span>\
         <span><span class=\"key dash\"></span>switchover</span>\
         <span><span class=\"key box\" style=\"background:#e2e5ea\"></span>phase</span></div>\n",
    );
    body.push_str(&chart::svg(&latency));
    body.push_str("\n</section>\n");

    let throughput = Chart {
        label: "Throughput per one-second slice, replies per second, errors in red",
        origin_ms: origin,
        end_ms: end,
        bands: &bands,
        markers: &markers,
        scale: Scale::Linear,
        format_y: format::rate_tick,
        marker_labels_low: false,
        lines: vec![Series {
            class: "tput",
            points: slice_points(&slices, step_ms, |s| Some(per_s(s.ops))),
        }],
        area: true,
        bars: Some(Series {
            class: "err",
            points: slice_points(&slices, step_ms, |s| Some(per_s(s.errors))),
        }),
        bar_width_ms: step_ms,
        empty_note: "no time slices recorded in this run",
    };
    body.push_str(
        "<section>\n<h2>Throughput over time <span class=\"muted\">(ops/s)</span></h2>\n",
    );
    body.push_str(
        "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--tput)\"></span>replies/s</span>\
         <span><span class=\"key box\" style=\"background:var(--bad)\"></span>errors/s</span>\
         <span><span class=\"key dash\"></span>switchover</span></div>\n",
    );
    body.push_str(&chart::svg(&throughput));
    body.push_str("\n</section>\n");

    switchover_table(&mut body, &summary.switchovers, origin);
    if let Some(t) = timeline {
        event_table(&mut body, t, origin);
    }
    footer(&mut body, &summary.schema);

    let title = format!(
        "tandem run · {} · {} · {}",
        summary.outcome.replace('_', " "),
        summary.target,
        format::utc(origin)
    );
    page(&title, &body)
}

fn header(body: &mut String, summary: &Summary, origin: u64, end: u64) {
    // The run's own clock when it has one; the extent of what was recorded otherwise.
    let duration_ms = if summary.ended_ms > summary.started_ms {
        summary.ended_ms - summary.started_ms
    } else {
        end.saturating_sub(origin)
    };
    w!(
        body,
        "<header>\n<div class=\"head\"><h1>tandem run</h1>{}</div>\n",
        outcome_badge(&summary.outcome)
    );
    let switchovers = summary.switchovers.len();
    w!(
        body,
        "<p class=\"meta\">target <b>{}</b> · started <b>{}</b> · duration <b>{}</b> · <b>{}</b> phases · <b>{}</b> switchover{}</p>\n",
        esc(&summary.target),
        format::utc(origin),
        format::duration(duration_ms),
        summary.phases.len(),
        switchovers,
        if switchovers == 1 { "" } else { "s" }
    );
    let workload = workload_text(&summary.workload);
    if !workload.is_empty() {
        w!(body, "<p class=\"meta\">workload: {workload}</p>\n");
    }
    body.push_str("</header>\n<div class=\"stats\">\n");
    w!(
        body,
        "<div class=\"stat\"><span class=\"num\">{}</span><span class=\"label\">acknowledged updates</span></div>\n",
        format::thousands(summary.acknowledged_updates)
    );
    w!(
        body,
        "<div class=\"stat\"><span class=\"num\">{}</span><span class=\"label\">verified after the run</span></div>\n",
        format::thousands(summary.verified_updates)
    );
    if summary.target != "redis" {
        w!(
            body,
            "<div class=\"stat\"><span class=\"num\">{} ms</span><span class=\"label\">one engine served alone ({} window{})</span></div>\n",
            format::thousands(summary.simplex_ms),
            summary.simplex_windows.len(),
            if summary.simplex_windows.len() == 1 { "" } else { "s" }
        );
    }
    if summary.lost_updates == 0 {
        body.push_str(
            "<div class=\"stat good\"><span class=\"num\">0 lost</span><span class=\"label\">every acknowledged update was found</span></div>\n",
        );
    } else {
        w!(
            body,
            "<div class=\"stat lost\"><span class=\"num\">{} lost</span><span class=\"label\">acknowledged updates missing after the run</span></div>\n",
            format::thousands(summary.lost_updates)
        );
    }
    body.push_str("</div>\n");
}

/// A ratio to a reference, coloured only when it moved by more than `worse_beyond` either
/// way, so that noise stays grey and the eye goes to what changed.
fn ratio_cell(
    r: Option<f64>,
    higher_is_worse: bool,
    worse_beyond: f64,
    extra_class: &str,
) -> String {
    match r {
        None => format!("<td class=\"muted{extra_class}\">–</td>"),
        Some(r) => {
            let worse = if higher_is_worse {
                r > worse_beyond
            } else {
                r < 1.0 / worse_beyond
            };
            let better = if higher_is_worse {
                r < 1.0 / worse_beyond
            } else {
                r > worse_beyond
            };
            let class = if worse {
                "worse"
            } else if better {
                "better"
            } else {
                "muted"
            };
            format!(
                "<td class=\"{class}{extra_class}\">{}</td>",
                format::times(r)
            )
        }
    }
}

fn latency_cells(out: &mut String, p: &PhaseSummary) {
    let l = &p.latency_us;
    for (i, v) in [l.p50, l.p90, l.p99, l.p999, l.max].into_iter().enumerate() {
        w!(
            out,
            "<td{}>{}</td>",
            if i == 0 { " class=\"sep\"" } else { "" },
            format::latency_us(v)
        );
    }
}

fn phase_table(body: &mut String, summary: &Summary, origin: u64) {
    body.push_str("<section>\n<h2>Phases</h2>\n<div class=\"scroll\"><table>\n<thead><tr>");
    body.push_str(
        "<th class=\"l\">phase</th><th>start&nbsp;s</th><th>duration&nbsp;s</th><th>alone&nbsp;ms</th><th>ops</th><th>throughput ops/s</th><th>errors</th>\
         <th class=\"sep\">p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th>\
         <th class=\"sep\">ops/s vs baseline</th><th>p99 vs baseline</th></tr></thead>\n<tbody>\n",
    );
    let baseline = summary.phases.iter().find(|p| p.name == phase::BASELINE);
    for p in &summary.phases {
        let fallback = phase::FALLBACK_PATH.contains(&p.name.as_str());
        w!(body, "<tr{}>", if fallback { " class=\"fb\"" } else { "" });
        w!(body, "<td class=\"l name\">{}</td>", esc(&p.name));
        w!(
            body,
            "<td>{}</td>",
            format::offset_seconds(p.start_ms, origin)
        );
        w!(
            body,
            "<td>{}</td>",
            format::seconds(p.end_ms.saturating_sub(p.start_ms))
        );
        match p.simplex_ms {
            0 => body.push_str("<td class=\"muted\">–</td>"),
            ms => {
                w!(body, "<td>{}</td>", format::thousands(ms));
            }
        }
        w!(body, "<td>{}</td>", format::thousands(p.ops));
        w!(body, "<td>{}</td>", format::rate(p.throughput_ops_s));
        if p.errors > 0 {
            w!(
                body,
                "<td class=\"bad\">{}</td>",
                format::thousands(p.errors)
            );
        } else {
            body.push_str("<td class=\"muted\">0</td>");
        }
        latency_cells(body, p);
        match baseline {
            Some(b) if !std::ptr::eq(b, p) => {
                let tput = ratio_cell(
                    format::ratio(p.throughput_ops_s, b.throughput_ops_s),
                    false,
                    1.25,
                    " sep",
                );
                let p99 = ratio_cell(
                    format::ratio(p.latency_us.p99 as f64, b.latency_us.p99 as f64),
                    true,
                    2.0,
                    "",
                );
                w!(body, "{tput}{p99}");
            }
            _ => body.push_str("<td class=\"sep muted\">–</td><td class=\"muted\">–</td>"),
        }
        body.push_str("</tr>\n");
    }
    if summary.phases.is_empty() {
        body.push_str("<tr><td class=\"none\" colspan=\"14\">no phases recorded</td></tr>\n");
    }
    body.push_str("</tbody></table></div>\n</section>\n");
}

fn switchover_table(body: &mut String, switchovers: &[Switchover], origin: u64) {
    body.push_str("<section>\n<h2>Switchovers</h2>\n<div class=\"scroll\"><table class=\"narrow\">\n<thead><tr>");
    body.push_str("<th class=\"l\">#</th><th class=\"l\">kind</th><th>at&nbsp;s</th><th>step-up&nbsp;ms</th><th>client-visible gap&nbsp;ms</th></tr></thead>\n<tbody>\n");
    for (i, s) in switchovers.iter().enumerate() {
        w!(
            body,
            "<tr><td class=\"l\">{}</td><td class=\"l name\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            i + 1,
            esc(&s.kind),
            format::offset_seconds(s.at_ms, origin),
            format::ms(s.stepup_ms),
            format::ms(s.client_gap_ms)
        );
    }
    if switchovers.is_empty() {
        body.push_str("<tr><td class=\"none\" colspan=\"5\">no switchover recorded</td></tr>\n");
    }
    body.push_str("</tbody></table></div>\n</section>\n");
}

fn event_table(body: &mut String, timeline: &Timeline, origin: u64) {
    w!(
        body,
        "<details>\n<summary>Timeline events ({})</summary>\n<div class=\"scroll\"><table class=\"narrow\">\n",
        timeline.events.len()
    );
    body.push_str("<thead><tr><th>at s</th><th class=\"l\">event</th><th class=\"l\">phase</th><th class=\"l\">detail</th></tr></thead>\n<tbody>\n");
    for e in &timeline.events {
        let mut detail: Vec<String> = Vec::new();
        if let Some(kind) = e.switchover {
            detail.push(serde_name(&kind));
        }
        if let Some(stepup) = e.stepup_ms {
            detail.push(format!("step-up {} ms", format::ms(stepup)));
        }
        if let Some(outcome) = &e.outcome {
            detail.push(outcome.clone());
        }
        if let Some(message) = &e.message {
            detail.push(message.clone());
        }
        w!(
            body,
            "<tr><td>{}</td><td class=\"l name\">{}</td><td class=\"l name\">{}</td><td class=\"l\">{}</td></tr>\n",
            format::offset_seconds(e.t_ms, origin),
            esc(&serde_name(&e.kind)),
            esc(e.phase.as_deref().unwrap_or("")),
            esc(&detail.join(" · "))
        );
    }
    body.push_str("</tbody></table></div>\n</details>\n");
}

fn footer(body: &mut String, schema: &str) {
    w!(
        body,
        "<footer>schema <code>{}</code> · Latency is coordinated-omission corrected, measured from the intended send time \
         of each request (HdrHistogram); throughput counts replies, successes and errors. \
         This file is self-contained and opens without a network.</footer>\n",
        esc(schema)
    );
}

/// Two runs side by side (`tandem report A --compare B`): per phase, both runs' throughput
/// and p50/p99/p99.9 and the ratio b/a, the switchovers, and the lost-update counts.
pub fn render_compare<'a>(a: (&str, &'a Summary), b: (&str, &'a Summary)) -> String {
    let (label_a, run_a) = a;
    let (label_b, run_b) = b;
    let mut body = String::new();
    body.push_str("<header>\n<div class=\"head\"><h1>tandem: two runs compared</h1></div>\n");
    body.push_str("<p class=\"meta\">ratios are B / A: above 1× B has more throughput, or more latency, than A</p>\n</header>\n");
    body.push_str("<div class=\"cards\">\n");
    for (who, label, run) in [("A", label_a, run_a), ("B", label_b, run_b)] {
        let lost = if run.lost_updates == 0 {
            "<b class=\"better\">0 lost</b>".to_string()
        } else {
            format!(
                "<b class=\"bad\">{} lost</b>",
                format::thousands(run.lost_updates)
            )
        };
        w!(
            body,
            "<div class=\"card\"><div class=\"head\"><span class=\"who\">{who}</span><code>{}</code>{}</div>\
             <p class=\"meta\">target <b>{}</b> · started <b>{}</b> · duration <b>{}</b></p>\
             <p class=\"meta\"><b>{}</b> acknowledged · <b>{}</b> verified · {lost}</p></div>\n",
            esc(label),
            outcome_badge(&run.outcome),
            esc(&run.target),
            format::utc(run.started_ms),
            format::duration(run.ended_ms.saturating_sub(run.started_ms)),
            format::thousands(run.acknowledged_updates),
            format::thousands(run.verified_updates),
        );
    }
    body.push_str("</div>\n");

    // A run without an upgrade is one steady phase: it is the reference for every phase of
    // the other run (an upgrade measured against the peer's steady state under the same load).
    let steady_only = |r: &Summary| r.phases.len() == 1;
    let (ref_a, ref_b) = (steady_only(run_a), steady_only(run_b));
    let mut names: Vec<&str> = Vec::new();
    for p in run_a
        .phases
        .iter()
        .filter(|_| !ref_a || ref_b)
        .chain(run_b.phases.iter().filter(|_| !ref_b || ref_a))
    {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    if names.is_empty() {
        names.extend(
            run_a
                .phases
                .iter()
                .chain(&run_b.phases)
                .map(|p| p.name.as_str()),
        );
    }
    body.push_str("<section>\n<h2>Phases</h2>\n<div class=\"scroll\"><table>\n<thead>\n");
    body.push_str(
        "<tr><th></th><th class=\"group sep\" colspan=\"3\">throughput ops/s</th><th class=\"group sep\" colspan=\"3\">p50</th>\
         <th class=\"group sep\" colspan=\"3\">p99</th><th class=\"group sep\" colspan=\"3\">p99.9</th></tr>\n<tr><th class=\"l\">phase</th>",
    );
    for _ in 0..4 {
        body.push_str("<th class=\"sep\">A</th><th>B</th><th>B/A</th>");
    }
    body.push_str("</tr>\n</thead>\n<tbody>\n");
    for name in &names {
        let pick_phase = |r: &'a Summary, is_ref: bool| {
            r.phases.iter().find(|p| p.name == *name).or_else(|| {
                if is_ref {
                    r.phases.first()
                } else {
                    None
                }
            })
        };
        let pa = pick_phase(run_a, ref_a && !ref_b);
        let pb = pick_phase(run_b, ref_b && !ref_a);
        let shown = match (ref_a && !ref_b, ref_b && !ref_a) {
            (true, _) => format!(
                "{} <span class=\"meta\">vs A {}</span>",
                esc(name),
                esc(pa.map_or("", |p| p.name.as_str()))
            ),
            (_, true) => format!(
                "{} <span class=\"meta\">vs B {}</span>",
                esc(name),
                esc(pb.map_or("", |p| p.name.as_str()))
            ),
            _ => esc(name).to_string(),
        };
        w!(body, "<tr><td class=\"l name\">{}</td>", shown);
        let tput = |p: Option<&PhaseSummary>| p.map(|p| p.throughput_ops_s);
        compare_cells(&mut body, tput(pa), tput(pb), format::rate, false);
        let lat = |p: Option<&PhaseSummary>, f: fn(&PhaseSummary) -> u64| p.map(|p| f(p) as f64);
        let fmt_lat: fn(f64) -> String = |v| format::latency_us(v as u64);
        for pick in [
            |p: &PhaseSummary| p.latency_us.p50,
            |p: &PhaseSummary| p.latency_us.p99,
            |p: &PhaseSummary| p.latency_us.p999,
        ] {
            compare_cells(&mut body, lat(pa, pick), lat(pb, pick), fmt_lat, true);
        }
        body.push_str("</tr>\n");
    }
    if names.is_empty() {
        body.push_str(
            "<tr><td class=\"none\" colspan=\"13\">no phases recorded in either run</td></tr>\n",
        );
    }
    body.push_str("</tbody></table></div>\n</section>\n");

    body.push_str("<section>\n<h2>Switchovers</h2>\n<div class=\"scroll\"><table>\n<thead>\n");
    body.push_str(
        "<tr><th></th><th class=\"group sep\" colspan=\"2\">kind</th><th class=\"group sep\" colspan=\"3\">step-up ms</th>\
         <th class=\"group sep\" colspan=\"3\">client-visible gap ms</th></tr>\n\
         <tr><th class=\"l\">#</th><th class=\"l sep\">A</th><th class=\"l\">B</th>\
         <th class=\"sep\">A</th><th>B</th><th>B/A</th><th class=\"sep\">A</th><th>B</th><th>B/A</th></tr>\n</thead>\n<tbody>\n",
    );
    let count = run_a.switchovers.len().max(run_b.switchovers.len());
    for i in 0..count {
        let (sa, sb) = (run_a.switchovers.get(i), run_b.switchovers.get(i));
        let kind = |s: Option<&Switchover>| s.map_or("–".to_string(), |s| esc(&s.kind));
        w!(body, "<tr><td class=\"l\">{}</td><td class=\"l sep name\">{}</td><td class=\"l name\">{}</td>", i + 1, kind(sa), kind(sb));
        compare_cells(
            &mut body,
            sa.map(|s| s.stepup_ms),
            sb.map(|s| s.stepup_ms),
            format::ms,
            true,
        );
        compare_cells(
            &mut body,
            sa.map(|s| s.client_gap_ms),
            sb.map(|s| s.client_gap_ms),
            format::ms,
            true,
        );
        body.push_str("</tr>\n");
    }
    if count == 0 {
        body.push_str(
            "<tr><td class=\"none\" colspan=\"9\">no switchover recorded in either run</td></tr>\n",
        );
    }
    body.push_str("</tbody></table></div>\n</section>\n");

    // The compare page has no chart of its own; an empty inline SVG would only be noise.
    let schemas = if run_a.schema == run_b.schema {
        run_a.schema.clone()
    } else {
        format!("{} / {}", run_a.schema, run_b.schema)
    };
    footer(&mut body, &schemas);
    page(&format!("tandem: {label_a} vs {label_b}"), &body)
}

/// A, B and B/A; the ratio is coloured when it differs by more than a tenth, red where B is
/// worse (less throughput, more latency).
fn compare_cells(
    out: &mut String,
    a: Option<f64>,
    b: Option<f64>,
    fmt: fn(f64) -> String,
    higher_is_worse: bool,
) {
    let cell = |v: Option<f64>| v.map_or("–".to_string(), fmt);
    w!(
        out,
        "<td class=\"sep\">{}</td><td>{}</td>",
        cell(a),
        cell(b)
    );
    let r = match (a, b) {
        (Some(a), Some(b)) => format::ratio(b, a),
        _ => None,
    };
    out.push_str(&ratio_cell(r, higher_is_worse, 1.1, ""));
}

#[cfg(test)]
mod tests;
