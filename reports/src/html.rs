//! The HTML report of a run, and two runs side by side. Each is one self-contained file:
//! inline CSS and inline SVG, no script, no font or image from elsewhere, because a report is
//! mailed, attached to tickets, printed and opened on machines without a network, years after
//! the run.
//!
//! The report answers a performance engineer's questions in the order they are asked: did
//! the upgrade complete, was anything lost, how long were clients left waiting and what did
//! the worst phase cost (the verdict); what ran where (configuration and environment); when
//! did latency and throughput move and why (time charts with the phases as lanes, the
//! switchovers as markers and every slow request as a dot); how do the phases' tails compare
//! (the percentile spectrum); what happened at each switchover, millisecond by millisecond
//! (zooms); and the numbers (tables), with a percentile printed only where the phase had the
//! samples to support it.

mod chart;
mod compare;
mod fleet;
mod format;
mod spectrum;
mod zoom;

/// `write!` to a `String`, whose writes cannot fail: one definition for the report's modules.
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}
pub(crate) use w;

use std::fmt::Write as _;

pub use compare::render_compare;
pub use fleet::render_fleet;

use crate::run::{Detail, Slice, Zoom};
use crate::summary::{percentile_supported, PhaseSummary, Summary, Switchover, SAMPLES_BEYOND_MIN};
use crate::timeline::{phase, EventKind, Timeline};
use chart::{Band, Chart, Dots, Marker, Scale, Series};
use format::esc;
use spectrum::Curve;

/// The load generator's name for samples outside every phase of the timeline.
const STEADY: &str = "steady";

/// Slices are one second unless the slices themselves say otherwise.
const SLICE_MS_DEFAULT: u64 = 1000;

/// What a report is drawn from: a run directory's files, as read.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub summary: &'a Summary,
    pub slices: &'a [Slice],
    /// `timeline.json`, absent for a run against Redis.
    pub timeline: Option<&'a Timeline>,
    /// `detail.json`, absent in runs written before it was added.
    pub detail: Option<&'a Detail>,
}

impl<'a> Run<'a> {
    pub fn new(summary: &'a Summary, slices: &'a [Slice]) -> Run<'a> {
        Run {
            summary,
            slices,
            timeline: None,
            detail: None,
        }
    }
}

const CSS: &str = r#"
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--ok:#15803d;--warn:#b45309;--bad:#b91c1c;
--p99:#1d4ed8;--p50:#7fb0f5;--max:#94a3b8;--tput:#0f766e;--replied:#0f172a;--marker:#7c3aed;
--b:#c2410c;--bp50:#fdba74}
*{box-sizing:border-box}
body{margin:0;background:#f6f7f9;color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 24px 40px}
h1{font-size:22px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:15px;margin:0 0 4px;font-weight:620}
h3{font-size:13px;margin:0 0 4px;font-weight:620}
.head{display:flex;align-items:center;gap:12px;flex-wrap:wrap}
.badge{display:inline-block;padding:2px 11px;border-radius:999px;font-weight:600;font-size:13px}
.badge.ok{background:#dcfce7;color:#166534}
.badge.warn{background:#fef3c7;color:#92400e}
.badge.bad{background:#fee2e2;color:#991b1b}
.badge.idle{background:#f1f5f9;color:#475569}
td .badge{font-size:12px;padding:1px 8px}
table.compact th,table.compact td{padding:4px 5px}
table.compact th{font-size:11px}
tfoot td{border-top:2px solid var(--line);font-weight:600}
.lanerow{fill:#f8fafc}
.laneidle{stroke:#cbd5e1;stroke-width:1}
.lanename{font-size:11px;fill:#1e293b;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.lanename.warn{fill:#b45309;font-weight:600}.lanename.bad{fill:#b91c1c;font-weight:600}
.lanemark{font-size:10px;font-weight:600;fill:#b45309;paint-order:stroke;stroke:#fff;stroke-width:3px}
.lanefbmark{fill:#b45309}
.wavesep{stroke:#94a3b8;stroke-width:1;stroke-dasharray:2 3}
td.name a{color:inherit}
.meta{color:var(--muted);margin:6px 0 0}
.meta b{color:var(--ink);font-weight:600}
.note{color:var(--muted);font-size:12px;margin:2px 0 8px}
.stats{display:flex;gap:12px;margin-top:16px;flex-wrap:wrap}
.stat{flex:1;min-width:190px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.stat .num{display:block;font-size:25px;font-weight:650;font-variant-numeric:tabular-nums}
.stat .label{color:var(--muted);font-size:12px;display:block}
.stat.good{border-color:#bbf7d0;background:#f0fdf4}
.stat.good .num{color:var(--ok)}
.stat.lost{border-color:#fecaca;background:#fef2f2}
.stat.lost .num{color:var(--bad)}
.stat.warnbox{border-color:#fde68a;background:#fffbeb}
.stat.warnbox .num{color:var(--warn)}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:14px 20px;margin-top:16px}
.config{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:4px 28px}
.config dl{margin:0;display:grid;align-content:start;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13px}
.config dt{color:var(--muted)}
.config dd{margin:0;font-variant-numeric:tabular-nums;overflow-wrap:anywhere}
.config h3{grid-column:1/-1;margin-top:6px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 7px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px;vertical-align:bottom;white-space:normal;line-height:1.25}
tr:last-child td{border-bottom:none}
table.narrow{width:auto;min-width:55%}
th.l,td.l{text-align:left}
th.group{text-align:center;border-bottom:1px solid #cbd5e1}
td.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
td.sep,th.sep{border-left:1px solid var(--line)}
tr.fb td.name{color:var(--warn)}
.bad{color:var(--bad);font-weight:600}
.worse{color:var(--bad);font-weight:600}
.better{color:var(--ok);font-weight:600}
.muted{color:var(--muted)}
.few{color:#94a3b8;font-style:italic;cursor:help}
.none{color:#94a3b8;text-align:center}
.legend{display:flex;gap:6px 18px;font-size:12px;color:var(--muted);margin:4px 0 6px;flex-wrap:wrap}
.key{display:inline-block;width:18px;height:3px;vertical-align:middle;margin-right:6px;border-radius:2px}
.key.dash{height:0;border-top:2px dashed var(--marker);border-radius:0;background:none}
.key.dashb{height:0;border-top:2px dashed var(--b);border-radius:0;background:none}
.key.box{height:10px;width:14px}
.key.dot{width:7px;height:7px;border-radius:50%}
.key.thin{height:1px}
svg.chart{display:block;overflow:visible;margin-top:2px}
@media (max-width:820px){section{overflow-x:auto}svg.chart{min-width:760px}svg.chart.zoom{min-width:440px}}
svg text{font-family:inherit}
.tick{font-size:11px;fill:var(--muted);font-variant-numeric:tabular-nums}
.paneltitle{font-size:11px;fill:#334155;font-weight:600}
.grid{stroke:#edf0f4;stroke-width:1}
.gridfaint{stroke:#e2e8f0;stroke-width:1;stroke-dasharray:2 3}
.axis{stroke:#94a3b8;stroke-width:1}
.band0{fill:#64748b;fill-opacity:.09}
.band1{fill:#64748b;fill-opacity:.025}
.bandfb0{fill:#d97706;fill-opacity:.16}
.bandfb1{fill:#d97706;fill-opacity:.07}
.lane{fill:#cbd5e1}
.lanefb{fill:#fcd34d}
.leader{stroke:#94a3b8;stroke-width:1;stroke-dasharray:1 2}
.bandlabel{font-size:11px;fill:#1e293b}
.p99,.p50,.max,.tput,.replied,.bp99,.bp50,.breplied,.spec,.zintended,.zmax{fill:none;stroke-linejoin:round}
.p99{stroke:var(--p99);stroke-width:1.8}
.p50{stroke:var(--p50);stroke-width:1.5}
.max{stroke:var(--max);stroke-width:1;stroke-dasharray:3 2}
.bp99{stroke:var(--b);stroke-width:1.8}
.bp50{stroke:var(--bp50);stroke-width:1.5}
.tput{stroke:var(--tput);stroke-width:1.8}
.replied{stroke:var(--replied);stroke-width:1.3}
.breplied{stroke:var(--b);stroke-width:1.5}
.p99dot{fill:var(--p99)}.p50dot{fill:var(--p50)}.maxdot{fill:var(--max)}.tputdot{fill:var(--tput)}
.replieddot{fill:var(--replied)}.bp99dot{fill:var(--b)}.bp50dot{fill:var(--bp50)}.breplieddot{fill:var(--b)}
.tputarea{fill:var(--tput);fill-opacity:.10}
.slow{stroke:#dc2626;stroke-opacity:.45;stroke-width:3;stroke-linecap:round;fill:none}
.slowerr{stroke:#7f1d1d;stroke-width:3.5;stroke-linecap:round;fill:none}
.threshold{stroke:#dc2626;stroke-width:1;stroke-dasharray:2 3;stroke-opacity:.6}
.thresholdlabel{font-size:10px;fill:#b91c1c;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.err{fill:var(--bad)}
.marker{stroke:var(--marker);stroke-width:1.5;stroke-dasharray:4 3}
.markerb{stroke:var(--b);stroke-width:1.5;stroke-dasharray:4 3}
.markerlabel,.markerblabel{font-size:11px;font-weight:600;paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.markerlabel{fill:#6d28d9}.markerblabel{fill:#9a3412}
.spec{stroke-width:2}
.specdot{stroke:none}
.specend{stroke-width:6;stroke-linecap:round;fill:none}
.zreplied{fill:none;stroke:var(--tput);stroke-width:1}
.zrepliedarea{fill:var(--tput);fill-opacity:.28}
.zintended{stroke:#334155;stroke-width:1.2;stroke-dasharray:3 2}
.zmax{stroke:#dc2626;stroke-width:1.3}
.zmaxdot{fill:#dc2626}
.stepup{fill:var(--marker);fill-opacity:.14}
.stepupline{stroke:var(--marker);stroke-width:1.3}
.stepuplabel{font-size:10px;font-weight:600;fill:#6d28d9;paint-order:stroke;stroke:#fff;stroke-width:3px}
.silence{fill:#dc2626;fill-opacity:.08}
.empty{font-size:13px;fill:var(--muted)}
.zooms{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:14px 26px;margin:6px 0 10px}
@media (max-width:900px){.zooms{grid-template-columns:1fr}}
.zoomcap{font-size:12px;color:var(--muted);margin:0 0 2px}
.zoomcap b{color:var(--ink)}
details{margin-top:16px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 20px}
details summary{cursor:pointer;font-weight:600;font-size:14px}
details table{margin-top:8px}
.cards{display:flex;gap:14px;margin-top:16px;flex-wrap:wrap}
.card{flex:1;min-width:300px;background:#fff;border:1px solid var(--line);border-radius:8px;padding:12px 16px}
.card .who{font-weight:650;margin-right:8px}
.card.a{border-top:3px solid var(--p99)}.card.b{border-top:3px solid var(--b)}
footer{color:var(--muted);font-size:12px;margin-top:22px;line-height:1.6}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
@media print{
@page{size:A4 portrait;margin:10mm}
svg.chart,svg.chart.zoom{min-width:0}
section{overflow:visible}
body{background:#fff;font-size:10px}
main{max-width:none;padding:0}
h1{font-size:18px}
section,details,.stat,.card{border-color:#cbd5e1;break-inside:avoid;page-break-inside:avoid}
section{padding:8px 10px;margin-top:8px}
section.table{break-inside:auto;page-break-inside:auto}
tr{break-inside:avoid}
.scroll{overflow:visible}
table{font-size:8.5px}
th{font-size:8px}
th,td{padding:2px 3px}
td.name{font-size:8.5px}
.stat .num{font-size:18px}
.zooms{grid-template-columns:1fr 1fr}
.zooms>div{break-inside:avoid}
.badge,.stat,.lane,.lanefb,.band0,.band1,.bandfb0,.bandfb1{print-color-adjust:exact;-webkit-print-color-adjust:exact}
}
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

/// Replies that were not errors: the samples behind a phase's latency percentiles.
fn successes(p: &PhaseSummary) -> u64 {
    p.ops.saturating_sub(p.errors)
}

/// The samples a percentile needs: [`SAMPLES_BEYOND_MIN`] beyond it (20 for p50, 1,000 for
/// p99).
fn samples_needed(quantile: f64) -> u64 {
    (SAMPLES_BEYOND_MIN as f64 / (1.0 - quantile)).round() as u64
}

/// Whether a phase's p99 means something.
fn p99_supported(p: &PhaseSummary) -> bool {
    percentile_supported(successes(p), 0.99)
}

/// A percentile's cell: the value when the phase's samples support it, otherwise "n<N"
/// with a tooltip that says why, so that nobody reads a phase's maximum as its p99.
fn percentile_cell(p: &PhaseSummary, quantile: f64, value_us: u64, class: &str) -> String {
    percentile_cell_as(
        p,
        quantile,
        value_us,
        class,
        (format::latency_us, format::thousands),
    )
}

/// How a percentile cell writes its value (µs) and the samples it needs.
type CellFormat = (fn(u64) -> String, fn(u64) -> String);

/// [`percentile_cell`] with the value written by `show.0` and the samples a percentile
/// needs by `show.1` (the fleet's narrow pair table: bare ms, `1k`).
fn percentile_cell_as(
    p: &PhaseSummary,
    quantile: f64,
    value_us: u64,
    class: &str,
    show: CellFormat,
) -> String {
    let n = successes(p);
    let class_attr = |extra: &str| {
        let c = format!("{class} {extra}");
        let c = c.trim();
        if c.is_empty() {
            String::new()
        } else {
            format!(" class=\"{c}\"")
        }
    };
    if quantile < 1.0 && !percentile_supported(n, quantile) {
        let need = samples_needed(quantile);
        if n == 0 {
            return format!(
                "<td{} title=\"no successful replies in this phase\">–</td>",
                class_attr("few")
            );
        }
        return format!(
            "<td{} title=\"too few samples: {} successful replies; p{} needs {} (at least {} beyond it)\">n&lt;{}</td>",
            class_attr("few"),
            format::thousands(n),
            format::percent(quantile * 100.0),
            format::thousands(need),
            SAMPLES_BEYOND_MIN,
            show.1(need)
        );
    }
    if n == 0 {
        return format!(
            "<td{} title=\"no successful replies in this phase\">–</td>",
            class_attr("few")
        );
    }
    format!("<td{}>{}</td>", class_attr(""), show.0(value_us))
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

/// A run's time frame: sorted slices, where its axis starts and ends, its slice length.
struct Frame {
    slices: Vec<Slice>,
    origin: u64,
    end: u64,
    step_ms: u64,
    /// When the load stopped (`u64::MAX` when the summary does not say): the last slice
    /// is cut there.
    load_end: u64,
}

impl Frame {
    fn of(run: &Run) -> Frame {
        let mut slices: Vec<Slice> = run.slices.to_vec();
        slices.sort_by_key(|s| s.t_ms);
        let summary = run.summary;
        let origin = origin_ms(summary, &slices, run.timeline);
        let step_ms = slice_ms(&slices);
        let last_phase_end = summary.phases.iter().map(|p| p.end_ms).max().unwrap_or(0);
        let last_slice_end = slices.last().map_or(0, |s| s.t_ms.saturating_add(step_ms));
        let end = summary
            .ended_ms
            .max(last_phase_end)
            .max(last_slice_end)
            .max(origin);
        Frame {
            slices,
            origin,
            end,
            step_ms,
            load_end: if summary.ended_ms > summary.started_ms {
                summary.ended_ms
            } else {
                u64::MAX
            },
        }
    }

    /// `n` per second in slice `s`: over the part of the slice the load ran, so that the
    /// last slice, cut by the end of the run, is not drawn as a collapse. `None` for a
    /// sliver of a slice too short to be a rate.
    fn per_s(&self, s: &Slice, n: u64) -> Option<f64> {
        let len = self.step_ms.min(self.load_end.saturating_sub(s.t_ms));
        (len * 10 >= self.step_ms && len > 0).then(|| n as f64 * 1000.0 / len as f64)
    }
}

fn band_note(start_ms: u64, end_ms: u64, phase: Option<&PhaseSummary>) -> String {
    let d = end_ms.saturating_sub(start_ms);
    let dur = if d < 10_000 {
        format!("{} ms", format::thousands(d))
    } else {
        format::duration(d)
    };
    match phase {
        Some(p) => format!("{dur} · {} replies", format::thousands(p.ops)),
        None => dur,
    }
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
                note: band_note(*start_ms, *end_ms, None),
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
                note: band_note(p.start_ms, p.end_ms, Some(p)),
            })
            .collect()
    }
}

fn markers(
    summary: &Summary,
    timeline: Option<&Timeline>,
    prefix: &str,
    class: &'static str,
) -> Vec<Marker> {
    if !summary.switchovers.is_empty() {
        return summary
            .switchovers
            .iter()
            .enumerate()
            .map(|(i, s)| Marker {
                at_ms: s.at_ms,
                label: format!(
                    "{prefix}S{} {} · gap {} ms",
                    i + 1,
                    s.kind,
                    format::ms(s.client_gap_ms)
                ),
                class,
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
            label: format!(
                "{prefix}{}",
                e.switchover.map_or("switchover".into(), |k| serde_name(&k))
            ),
            class,
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
/// slices missing), so that a gap is drawn as a gap rather than bridged. `shift` moves a
/// second run onto the first one's time axis.
fn slice_points(
    slices: &[Slice],
    slice_ms: u64,
    shift: impl Fn(u64) -> u64,
    value: impl Fn(&Slice) -> Option<f64>,
) -> Vec<Option<(u64, f64)>> {
    let mut points = Vec::with_capacity(slices.len());
    let mut previous_ms: Option<u64> = None;
    for s in slices {
        if previous_ms.is_some_and(|p| s.t_ms.saturating_sub(p) > slice_ms.saturating_mul(3) / 2) {
            points.push(None);
        }
        points.push(value(s).map(|v| (shift(s.t_ms.saturating_add(slice_ms / 2)), v)));
        previous_ms = Some(s.t_ms);
    }
    points
}

/// A colour per phase, the same in every report, so that a phase is recognised across the
/// spectrum, its legend and a comparison.
fn phase_color(name: &str, index: usize) -> &'static str {
    const OTHERS: [&str; 6] = [
        "#0891b2", "#9333ea", "#65a30d", "#e11d48", "#0369a1", "#a16207",
    ];
    match name {
        phase::BASELINE => "#1e293b",
        phase::B_OUT_OF_SERVICE => "#38bdf8",
        phase::B_CATCH_UP => "#2563eb",
        phase::SWITCHOVER_TO_B => "#7c3aed",
        phase::EVALUATION => "#db2777",
        phase::A_OUT_OF_SERVICE => "#2dd4bf",
        phase::A_CATCH_UP => "#059669",
        phase::FEATURES_ENABLED => "#ca8a04",
        phase::FALLBACK => "#dc2626",
        phase::B_RELOAD_PREVIOUS => "#f97316",
        phase::B_CATCH_UP_PREVIOUS => "#a16207",
        phase::RESTORED => "#4d7c0f",
        STEADY => "#64748b",
        _ => OTHERS[index % OTHERS.len()],
    }
}

/// The report of one run.
pub fn render(run: &Run) -> String {
    let summary = run.summary;
    let frame = Frame::of(run);
    let timeline_phases = run
        .timeline
        .map(|t| t.phases(frame.end))
        .unwrap_or_default();
    let bands = bands(summary, &timeline_phases);
    let markers = markers(summary, run.timeline, "", "marker");

    let mut body = String::new();
    verdict(&mut body, summary, run.timeline, frame.origin, frame.end);
    configuration(&mut body, summary, frame.origin);
    latency_section(&mut body, run, &frame, &bands, &markers);
    throughput_section(&mut body, &frame, &bands, &markers);
    spectrum_section(&mut body, summary);
    phase_table(&mut body, summary, frame.origin);
    switchover_section(&mut body, summary, run.detail, frame.origin);
    if let Some(t) = run.timeline {
        event_table(&mut body, t, frame.origin);
    }
    footer(&mut body, &summary.schema);

    let title = format!(
        "tandem run · {} · {} · {}",
        summary.outcome.replace('_', " "),
        summary.target,
        format::utc(frame.origin)
    );
    page(&title, &body)
}

/// The worst client-visible gap: (index, switchover).
fn worst_gap(summary: &Summary) -> Option<(usize, &Switchover)> {
    summary
        .switchovers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.client_gap_ms.is_finite())
        .max_by(|a, b| a.1.client_gap_ms.total_cmp(&b.1.client_gap_ms))
}

/// The worst phase's p99 against the baseline's, among the phases whose p99 is supported,
/// and only when the baseline's is: (phase, ratio). The load outside the upgrade's phases
/// (`steady`: the warm-up before the baseline, the tail after the end) is not a cost of it.
fn worst_p99_ratio(summary: &Summary) -> Option<(&PhaseSummary, f64)> {
    let baseline = summary
        .phases
        .iter()
        .find(|p| p.name == phase::BASELINE)
        .filter(|b| p99_supported(b) && b.latency_us.p99 > 0)?;
    summary
        .phases
        .iter()
        .filter(|p| !std::ptr::eq(*p, baseline) && p.name != STEADY && p99_supported(p))
        .filter_map(|p| {
            format::ratio(p.latency_us.p99 as f64, baseline.latency_us.p99 as f64).map(|r| (p, r))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Why the upgrade ended as it did, in the supervisor's words (`upgrade_end`'s message: the
/// acceptance check that failed), when the timeline says.
fn outcome_reason(timeline: Option<&Timeline>) -> Option<&str> {
    timeline?
        .events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::UpgradeEnd)?
        .message
        .as_deref()
        .filter(|m| !m.is_empty())
}

fn verdict(
    body: &mut String,
    summary: &Summary,
    timeline: Option<&Timeline>,
    origin: u64,
    end: u64,
) {
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
    let errors: u64 = summary.phases.iter().map(|p| p.errors).sum();
    let ops: u64 = summary.phases.iter().map(|p| p.ops).sum();
    let reason = outcome_reason(timeline).map(|m| format!(": {}", esc(m)));
    if reason.is_some() || errors > 0 {
        w!(
            body,
            "<p class=\"meta reason\"><b>{}</b>{} · {}</p>\n",
            esc(&summary.outcome.replace('_', " ")),
            reason.unwrap_or_default(),
            if errors == 0 {
                "no error replies".to_string()
            } else {
                format!(
                    "<span class=\"bad\">{} error replies</span> ({:.2} % of {})",
                    format::thousands(errors),
                    errors as f64 * 100.0 / ops.max(1) as f64,
                    format::thousands(ops)
                )
            }
        );
    }
    body.push_str("</header>\n<div class=\"stats\" id=\"verdict\">\n");
    if summary.lost_updates == 0 {
        w!(
            body,
            "<div class=\"stat good\"><span class=\"num\">0 lost</span><span class=\"label\">of {} acknowledged updates, {} verified after the run</span></div>\n",
            format::thousands(summary.acknowledged_updates),
            format::thousands(summary.verified_updates)
        );
    } else {
        w!(
            body,
            "<div class=\"stat lost\"><span class=\"num\">{} lost</span><span class=\"label\">acknowledged updates missing or stale after the run (of {})</span></div>\n",
            format::thousands(summary.lost_updates),
            format::thousands(summary.acknowledged_updates)
        );
    }
    match worst_gap(summary) {
        Some((i, s)) => {
            w!(
                body,
                "<div class=\"stat\"><span class=\"num\">{} ms</span><span class=\"label\">worst client-visible gap (S{} {}, step-up {} ms)</span></div>\n",
                format::ms(s.client_gap_ms),
                i + 1,
                esc(&s.kind),
                format::ms(s.stepup_ms)
            );
        }
        None => body.push_str(
            "<div class=\"stat\"><span class=\"num muted\">–</span><span class=\"label\">client-visible gap: no switchover recorded</span></div>\n",
        ),
    }
    let steady = crate::run::is_steady_only(summary).then(|| &summary.phases[0]);
    match (worst_p99_ratio(summary), steady) {
        // A run without an upgrade has no baseline to compare with: its own tail instead.
        (_, Some(p)) => {
            let shown = |q: f64, us: u64| {
                if percentile_supported(successes(p), q) {
                    format::latency_us(us)
                } else {
                    "–".to_string()
                }
            };
            w!(
                body,
                "<div class=\"stat\"><span class=\"num\">{}</span><span class=\"label\">p99 of the run (p99.9 {}, max {}): no upgrade, so no baseline to compare with</span></div>\n",
                shown(0.99, p.latency_us.p99),
                shown(0.999, p.latency_us.p999),
                format::latency_us(p.latency_us.max)
            );
        }
        (Some((p, r)), None) => {
            let class = if r > 2.0 { " warnbox" } else { "" };
            w!(
                body,
                "<div class=\"stat{class}\"><span class=\"num\">{}</span><span class=\"label\">worst phase p99 vs baseline: <code>{}</code> ({} vs {})</span></div>\n",
                format::times(r),
                esc(&p.name),
                format::latency_us(p.latency_us.p99),
                format::latency_us(
                    summary
                        .phases
                        .iter()
                        .find(|p| p.name == phase::BASELINE)
                        .map_or(0, |b| b.latency_us.p99)
                )
            );
        }
        (None, None) => {
            w!(
                body,
                "<div class=\"stat\" title=\"a p99 needs {} successful replies in the phase\"><span class=\"num muted\">–</span><span class=\"label\">worst phase p99 vs baseline: no phase and baseline with enough samples for a p99</span></div>\n",
                format::thousands(samples_needed(0.99))
            );
        }
    }
    if summary.target != "redis" {
        w!(
            body,
            "<div class=\"stat\"><span class=\"num\">{}</span><span class=\"label\">one engine served alone ({} simplex window{})</span></div>\n",
            format::ms_duration(summary.simplex_ms),
            summary.simplex_windows.len(),
            if summary.simplex_windows.len() == 1 { "" } else { "s" }
        );
    }
    body.push_str("</div>\n");
}

/// A workload value as a reader wants it: "60% session · 20% set · 20% get" for a mix.
fn workload_value(key: &str, v: &serde_json::Value) -> String {
    use serde_json::Value;
    match (key, v) {
        ("mix", Value::Object(map)) => {
            let total: f64 = map.values().filter_map(Value::as_f64).sum();
            let mut parts: Vec<(&String, f64)> = map
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|f| (k, f)))
                .filter(|(_, f)| *f > 0.0)
                .collect();
            parts.sort_by(|a, b| b.1.total_cmp(&a.1));
            if total > 0.0 {
                parts
                    .iter()
                    .map(|(k, f)| format!("{:.0}% {k}", f * 100.0 / total))
                    .collect::<Vec<_>>()
                    .join(" · ")
            } else {
                v.to_string()
            }
        }
        (_, Value::String(s)) => s.clone(),
        (_, Value::Number(n)) => match n.as_u64() {
            Some(u) if u >= 1_000 && key != "seed" => format::thousands(u),
            _ => n.to_string(),
        },
        (_, other) => other.to_string(),
    }
}

fn configuration(body: &mut String, summary: &Summary, origin: u64) {
    let mut run_rows: Vec<(String, String)> = Vec::new();
    let mut load_rows: Vec<(String, String)> = Vec::new();
    let mut env_rows: Vec<(String, String)> = Vec::new();
    run_rows.push(("date".into(), format::utc(origin)));
    run_rows.push(("target".into(), summary.target.clone()));
    if let Some(env) = &summary.environment {
        if !env.target_version.is_empty() {
            run_rows.push(("versions".into(), env.target_version.clone()));
        }
        env_rows.push(("tandem".into(), env.tandem_version.clone()));
        if !env.git_revision.is_empty() {
            env_rows.push(("git revision".into(), env.git_revision.clone()));
        }
        env_rows.push(("host".into(), env.hostname.clone()));
        env_rows.push(("OS".into(), env.os.clone()));
        env_rows.push(("CPU".into(), env.cpu_model.clone()));
        env_rows.push(("cpus".into(), env.cpus.to_string()));
        env_rows.push((
            "memory".into(),
            if env.memory_mb >= 10_240 {
                format!("{:.1} GiB", env.memory_mb as f64 / 1024.0)
            } else {
                format!("{} MiB", format::thousands(env.memory_mb))
            },
        ));
    }
    let known: &[(&str, &str)] = &[
        ("pairs", "pairs"),
        ("mode", "mode"),
        ("rate_ops_s", "rate (req/s)"),
        ("rate_split", "rate split"),
        ("connections", "connections"),
        ("connections_per_pair", "connections per pair"),
        ("pipeline", "pipeline"),
        ("mix", "mix"),
        ("state_work_units", "state size (work units)"),
        ("value_bytes", "value bytes"),
        ("keys", "keys"),
        ("distribution", "distribution"),
        ("duration_ms", "duration (ms)"),
        ("redis_wait", "redis WAIT"),
        ("until_campaign_end", "until campaign end"),
        ("seed", "seed"),
    ];
    match &summary.workload {
        serde_json::Value::Object(map) => {
            for &(key, label) in known {
                if let Some(v) = map.get(key) {
                    load_rows.push((label.into(), workload_value(key, v)));
                }
            }
            for (k, v) in map {
                if !known.iter().any(|(key, _)| key == k) {
                    load_rows.push((k.clone(), workload_value(k, v)));
                }
            }
        }
        serde_json::Value::Null => {}
        other => load_rows.push(("workload".into(), workload_value("", other))),
    }
    body.push_str("<section class=\"config\" id=\"configuration\">\n");
    let dl = |body: &mut String, title: &str, rows: &[(String, String)], empty: &str| {
        w!(body, "<dl><h3>{title}</h3>");
        if rows.is_empty() {
            w!(body, "<dt>–</dt><dd class=\"muted\">{empty}</dd>");
        }
        for (k, v) in rows {
            w!(body, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(v));
        }
        body.push_str("</dl>\n");
    };
    dl(body, "Run", &run_rows, "");
    dl(body, "Load", &load_rows, "not recorded in this run");
    dl(
        body,
        // The environment is the load generator's host (the servers ran there too in
        // `tandem demo`, but not necessarily elsewhere).
        "Load generator's build and machine <span class=\"muted\" style=\"font-weight:400\">· the load generator ran here</span>",
        &env_rows,
        "not recorded (a run written before the environment was)",
    );
    body.push_str("</section>\n");
}

fn latency_section(
    body: &mut String,
    run: &Run,
    frame: &Frame,
    bands: &[Band],
    markers: &[Marker],
) {
    let slices = &frame.slices;
    let with_replies = |s: &Slice, v: u64| (s.ops > 0).then_some(v as f64);
    let same = |t: u64| t;
    let mut dots = Vec::new();
    let mut threshold = None;
    if let Some(d) = run.detail {
        let slow = |error: bool| Dots {
            class: if error { "slowerr" } else { "slow" },
            points: d
                .slow
                .iter()
                .filter(|r| r.error == error)
                .map(|r| (r.t_ms, r.latency_us as f64))
                .collect(),
        };
        dots.push(slow(false));
        dots.push(slow(true));
        if d.slow_threshold_us > 0 {
            threshold = Some((
                d.slow_threshold_us as f64,
                format!("slow ≥ {}", format::latency_us(d.slow_threshold_us)),
            ));
        }
    }
    let chart = Chart {
        id: "latency",
        label: "Latency over time: p50, p99 and max per one-second slice, each slow request a dot",
        origin_ms: frame.origin,
        end_ms: frame.end,
        bands,
        markers,
        scale: Scale::Log,
        format_y: format::latency_tick_us,
        lines: vec![
            Series {
                class: "max",
                points: slice_points(slices, frame.step_ms, same, |s| {
                    with_replies(s, s.latency_us.max)
                }),
                area: false,
            },
            Series {
                class: "p50",
                points: slice_points(slices, frame.step_ms, same, |s| {
                    with_replies(s, s.latency_us.p50)
                }),
                area: false,
            },
            Series {
                class: "p99",
                points: slice_points(slices, frame.step_ms, same, |s| {
                    with_replies(s, s.latency_us.p99)
                }),
                area: false,
            },
        ],
        dots,
        bars: None,
        bar_width_ms: frame.step_ms,
        threshold,
        empty_note: "no time slices recorded in this run",
    };
    body.push_str(
        "<section>\n<h2>Latency over time <span class=\"muted\">(log scale, by intended send time)</span></h2>\n",
    );
    body.push_str(
        "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--p99)\"></span>p99 per second</span>\
         <span><span class=\"key\" style=\"background:var(--p50)\"></span>p50</span>\
         <span><span class=\"key thin\" style=\"background:var(--max)\"></span>max</span>",
    );
    match run.detail {
        Some(d) => {
            let shown = d.slow.len() as u64;
            w!(
                body,
                "<span><span class=\"key dot\" style=\"background:#dc2626;opacity:.6\"></span>a request slower than {} ({} listed{}; at most one dot per pixel)</span>",
                format::latency_us(d.slow_threshold_us),
                format::thousands(shown),
                if d.slow_omitted > 0 {
                    format!(
                        ", {} more left out beyond {} a second",
                        format::thousands(d.slow_omitted),
                        format::thousands(d.slow_per_slice_max)
                    )
                } else {
                    String::new()
                }
            );
        }
        None if run.summary.fleet.is_some() => body.push_str(
            "<span>the fleet's seconds merged from every pair's histograms (each pair's slow requests are in its own report)</span>",
        ),
        None => body.push_str("<span>no slow requests listed (a run without detail.json)</span>"),
    }
    if !markers.is_empty() {
        body.push_str("<span><span class=\"key dash\"></span>switchover</span>");
    }
    w!(
        body,
        "<span><span class=\"key box\" style=\"background:#cbd5e1\"></span>{} (lanes above, bands below)</span></div>\n",
        if run.summary.fleet.is_some() {
            "wave: its first pair's upgrade start to its last pair's end"
        } else {
            "phase"
        }
    );
    body.push_str(&chart::svg(&chart));
    body.push_str("\n</section>\n");
}

fn throughput_section(body: &mut String, frame: &Frame, bands: &[Band], markers: &[Marker]) {
    let slices = &frame.slices;
    let same = |t: u64| t;
    let has_replied = slices.iter().any(|s| s.replied.is_some());
    let mut lines = vec![Series {
        class: "tput",
        points: slice_points(slices, frame.step_ms, same, |s| frame.per_s(s, s.ops)),
        area: true,
    }];
    if has_replied {
        lines.push(Series {
            class: "replied",
            points: slice_points(slices, frame.step_ms, same, |s| {
                s.replied.and_then(|n| frame.per_s(s, n))
            }),
            area: false,
        });
    }
    let chart = Chart {
        id: "throughput",
        label: "Throughput per one-second slice: requests intended and replies received per second, errors in red",
        origin_ms: frame.origin,
        end_ms: frame.end,
        bands,
        markers,
        scale: Scale::Linear,
        format_y: format::rate_tick,
        lines,
        dots: Vec::new(),
        bars: Some(Series {
            class: "err",
            points: slice_points(slices, frame.step_ms, same, |s| frame.per_s(s, s.errors)),
            area: false,
        }),
        bar_width_ms: frame.step_ms,
        threshold: None,
        empty_note: "no time slices recorded in this run",
    };
    body.push_str(
        "<section>\n<h2>Throughput over time <span class=\"muted\">(per second)</span></h2>\n",
    );
    body.push_str(
        "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--tput)\"></span>requests intended (answered, by send time)</span>",
    );
    if has_replied {
        body.push_str(
            "<span><span class=\"key\" style=\"background:var(--replied)\"></span>replies received (by arrival: a stall drops to 0)</span>",
        );
    } else {
        body.push_str("<span>replies by arrival not recorded in this run</span>");
    }
    body.push_str(
        "<span><span class=\"key box\" style=\"background:var(--bad)\"></span>errors/s</span>",
    );
    if !markers.is_empty() {
        body.push_str("<span><span class=\"key dash\"></span>switchover</span>");
    }
    body.push_str("</div>\n");
    body.push_str(&chart::svg(&chart));
    body.push_str("\n</section>\n");
}

/// The legend of a spectrum: each curve's colour, name, samples and where it stops.
fn spectrum_legend(body: &mut String, curves: &[Curve]) {
    body.push_str("<div class=\"legend\">");
    for c in curves {
        let reach = match c.cut_at() {
            Some(p) => format!("to p{}", format::percent(format::round_down_percentile(p))),
            None => format!(
                "<span class=\"few\" title=\"a p50 needs {} successful replies\">too few samples</span>",
                samples_needed(0.5)
            ),
        };
        w!(
            body,
            "<span><span class=\"key\" style=\"{}\"></span><code>{}</code> n={} {}</span>",
            if c.dashed {
                format!("height:0;background:none;border-top:2px dashed {}", c.color)
            } else {
                format!("background:{}", c.color)
            },
            esc(&c.label),
            format::thousands(c.samples),
            reach
        );
    }
    body.push_str("</div>\n");
}

fn spectrum_section(body: &mut String, summary: &Summary) {
    let curves: Vec<Curve> = summary
        .phases
        .iter()
        .enumerate()
        .map(|(i, p)| Curve::of_phase(p, p.name.clone(), phase_color(&p.name, i), false))
        .collect();
    let recorded = summary.phases.iter().any(|p| !p.percentiles.is_empty());
    body.push_str("<section>\n<h2>Percentile spectrum per phase <span class=\"muted\">(latency at each percentile, log scale)</span></h2>\n");
    w!(
        body,
        "<p class=\"note\">{} A curve stops where its phase has fewer than {} samples beyond the percentile: a phase of 200 requests has a p90, not a p99.</p>\n",
        if recorded {
            "Each phase's whole latency distribution (HdrHistogram), on a scale that gives 90%, 99%, 99.9% the same room."
        } else {
            "This run recorded no spectra: each curve joins its phase's p50, p90, p99 and p99.9."
        },
        SAMPLES_BEYOND_MIN
    );
    spectrum_figure(
        body,
        "Percentile spectrum: latency by percentile, one curve per phase",
        &curves,
    );
}

/// The rest of a spectrum's section: the legend, the chart (id `spectrum`), the close.
fn spectrum_figure(body: &mut String, label: &str, curves: &[Curve]) {
    spectrum_legend(body, curves);
    body.push_str(&spectrum::svg("spectrum", label, curves));
    body.push_str("\n</section>\n");
}

/// A ratio to a reference, coloured only when it moved by more than `worse_beyond` either
/// way and nothing makes it meaningless (`grey_because`: why it is not, which its tooltip
/// says), so that noise stays grey and the eye goes to what changed.
fn ratio_cell(
    r: Option<f64>,
    higher_is_worse: bool,
    worse_beyond: f64,
    grey_because: Option<&str>,
    extra_class: &str,
) -> String {
    let meaningful = grey_because.is_none();
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
            let class = match (meaningful, worse, better) {
                (false, _, _) => "muted",
                (true, true, _) => "worse",
                (true, _, true) => "better",
                _ => "muted",
            };
            let title = grey_because.map_or(String::new(), |why| {
                format!(" title=\"not coloured: {}\"", esc(why))
            });
            format!(
                "<td class=\"{class}{extra_class}\"{title}>{}</td>",
                format::times(r)
            )
        }
    }
}

/// Phases short enough that their throughput is a handful of requests over a few
/// milliseconds: their rate is not compared.
const RATE_MEANINGFUL_MS: u64 = 1000;

/// Why a throughput ratio of such a phase is grey.
const SHORT_FOR_A_RATE: &str = "a phase lasted under a second, too short for its rate to compare";

fn latency_cells(out: &mut String, p: &PhaseSummary) {
    let l = &p.latency_us;
    out.push_str(&percentile_cell(p, 0.5, l.p50, "sep"));
    out.push_str(&percentile_cell(p, 0.9, l.p90, ""));
    out.push_str(&percentile_cell(p, 0.99, l.p99, ""));
    out.push_str(&percentile_cell(p, 0.999, l.p999, ""));
    out.push_str(&percentile_cell(p, 1.0, l.max, ""));
}

fn phase_table(body: &mut String, summary: &Summary, origin: u64) {
    w!(
        body,
        "<section class=\"table\">\n<h2>{}</h2>\n<div class=\"scroll\"><table id=\"phases\">\n<thead><tr>",
        if summary.fleet.is_some() {
            "Fleet periods <span class=\"muted\">(each wave, and the rest of the run as <code>steady</code>; a second belongs to the period its start fell in)</span>"
        } else {
            "Phases"
        }
    );
    // A fleet's periods compare with the fleet outside every wave.
    let reference = if summary.fleet.is_some() {
        STEADY
    } else {
        phase::BASELINE
    };
    w!(
        body,
        "<th class=\"l\">{}</th><th>start&nbsp;s</th><th>duration</th><th>alone&nbsp;ms</th><th>replies</th><th>throughput ops/s</th><th>errors</th>\
         <th class=\"sep\">p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th>\
         <th class=\"sep\">ops/s vs {reference}</th><th>p99 vs {reference}</th></tr></thead>\n<tbody>\n",
        if summary.fleet.is_some() { "fleet period" } else { "phase" }
    );
    let baseline = summary.phases.iter().find(|p| p.name == reference);
    for p in &summary.phases {
        let fallback = phase::FALLBACK_PATH.contains(&p.name.as_str());
        w!(body, "<tr{}>", if fallback { " class=\"fb\"" } else { "" });
        w!(body, "<td class=\"l name\">{}</td>", esc(&p.name));
        w!(
            body,
            "<td>{}</td>",
            format::offset_seconds(p.start_ms, origin)
        );
        if summary.fleet.is_some() && p.name == STEADY {
            // The fleet outside every wave: its span is the run's, its time the rest.
            let waves: u64 = summary
                .phases
                .iter()
                .filter(|q| q.name != STEADY)
                .map(|q| q.end_ms.saturating_sub(q.start_ms))
                .sum();
            w!(
                body,
                "<td title=\"the run outside every wave\">{}</td>",
                format::ms_duration(p.end_ms.saturating_sub(p.start_ms).saturating_sub(waves))
            );
        } else {
            w!(
                body,
                "<td>{}</td>",
                format::ms_duration(p.end_ms.saturating_sub(p.start_ms))
            );
        }
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
                let long =
                    |p: &PhaseSummary| p.end_ms.saturating_sub(p.start_ms) >= RATE_MEANINGFUL_MS;
                let tput = ratio_cell(
                    format::ratio(p.throughput_ops_s, b.throughput_ops_s),
                    false,
                    1.25,
                    (!long(p) || !long(b)).then_some(SHORT_FOR_A_RATE),
                    " sep",
                );
                let p99 = if p99_supported(p) {
                    ratio_cell(
                        format::ratio(p.latency_us.p99 as f64, b.latency_us.p99 as f64),
                        true,
                        2.0,
                        (!p99_supported(b)).then_some("the baseline has too few samples for a p99"),
                        "",
                    )
                } else {
                    format!(
                        "<td class=\"few\" title=\"no ratio: the phase has too few samples for a p99 ({} of {})\">–</td>",
                        format::thousands(successes(p)),
                        format::thousands(samples_needed(0.99))
                    )
                };
                w!(body, "{tput}{p99}");
            }
            _ => body.push_str("<td class=\"sep muted\">–</td><td class=\"muted\">–</td>"),
        }
        body.push_str("</tr>\n");
    }
    if summary.phases.is_empty() {
        body.push_str("<tr><td class=\"none\" colspan=\"14\">no phases recorded</td></tr>\n");
    }
    body.push_str("</tbody></table></div>\n");
    statistics_note(
        body,
        "Ratios are coloured only when both sides have the samples (p99) or last at least a second \
         (throughput), and moved by more than 2× (p99) or 1.25× (throughput).",
    );
    body.push_str("</section>\n");
}

/// What the marks of a table mean: `ratios` says when a ratio is coloured.
fn statistics_note(body: &mut String, ratios: &str) {
    w!(
        body,
        "<p class=\"note\"><span class=\"few\">n&lt;1,000</span>: too few samples for that percentile; a percentile is printed only with at least {} successful replies beyond it \
         (p50 needs {}, p90 {}, p99 {}, p99.9 {}); hover for the count. {ratios}</p>\n",
        SAMPLES_BEYOND_MIN,
        samples_needed(0.5),
        samples_needed(0.9),
        format::thousands(samples_needed(0.99)),
        format::thousands(samples_needed(0.999)),
    );
}

/// The zoom of switchover `i`: `detail.zooms` is in the order of the switchovers; a zoom
/// whose start differs is matched by time instead.
fn zoom_of<'a>(detail: Option<&'a Detail>, i: usize, s: &Switchover) -> Option<&'a Zoom> {
    let zooms = &detail?.zooms;
    zooms
        .get(i)
        .filter(|z| z.at_ms.abs_diff(s.at_ms) <= 1000)
        .or_else(|| zooms.iter().find(|z| z.at_ms.abs_diff(s.at_ms) <= 1000))
}

fn switchover_section(body: &mut String, summary: &Summary, detail: Option<&Detail>, origin: u64) {
    body.push_str("<section>\n<h2>Switchovers</h2>\n");
    let switchovers = &summary.switchovers;
    if detail.is_some_and(|d| !d.zooms.is_empty()) {
        body.push_str(
            "<div class=\"legend\"><span><span class=\"key\" style=\"background:var(--tput)\"></span>replies per ms (by arrival)</span>\
             <span><span class=\"key\" style=\"background:#334155\"></span>requests intended per ms</span>\
             <span><span class=\"key\" style=\"background:#dc2626\"></span>slowest request per ms</span>\
             <span><span class=\"key box\" style=\"background:#ddd6fe\"></span>step-up (signal to acknowledgement)</span>\
             <span><span class=\"key box\" style=\"background:#fde2e2\"></span>no replies</span></div>\n<div class=\"zooms\">\n",
        );
        let zooms = detail.map(|d| d.zooms.as_slice()).unwrap_or_default();
        let mut drawn = 0;
        for (i, s) in switchovers.iter().enumerate() {
            if let Some(z) = zoom_of(detail, i, s) {
                drawn += 1;
                zoom_figure(
                    body,
                    &summary.phases,
                    drawn,
                    &format!("S{}", i + 1),
                    z,
                    Some(s),
                    origin,
                );
            }
        }
        // Zooms of switchovers the summary does not list (a summary written without them).
        for z in zooms {
            let listed = switchovers
                .iter()
                .enumerate()
                .any(|(i, s)| zoom_of(detail, i, s).is_some_and(|m| std::ptr::eq(m, z)));
            if !listed {
                drawn += 1;
                zoom_figure(
                    body,
                    &summary.phases,
                    drawn,
                    &format!("Z{drawn}"),
                    z,
                    None,
                    origin,
                );
            }
        }
    } else if !switchovers.is_empty() {
        body.push_str("<p class=\"note\">No millisecond zoom: this run has no detail.json (recorded before the load generator kept one).</p>\n");
    }
    // In the grid of zooms the table takes the next cell: beside a lone zoom, below a pair.
    let in_grid = detail.is_some_and(|d| !d.zooms.is_empty());
    body.push_str("<div class=\"scroll\"><table class=\"narrow\" id=\"switchovers\">\n<thead><tr>");
    body.push_str("<th class=\"l\">#</th><th class=\"l\">kind</th><th>at&nbsp;s</th><th>step-up&nbsp;ms</th><th>client-visible gap&nbsp;ms</th><th>retried</th><th>redirected</th></tr></thead>\n<tbody>\n");
    for (i, s) in switchovers.iter().enumerate() {
        w!(
            body,
            "<tr><td class=\"l\">S{}</td><td class=\"l name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            i + 1,
            esc(&s.kind),
            format::offset_seconds(s.at_ms, origin),
            format::ms(s.stepup_ms),
            format::ms(s.client_gap_ms),
            format::thousands(s.retried),
            format::thousands(s.redirected)
        );
    }
    if switchovers.is_empty() {
        body.push_str("<tr><td class=\"none\" colspan=\"7\">no switchover recorded</td></tr>\n");
    }
    body.push_str("</tbody></table></div>\n");
    if in_grid {
        body.push_str("</div>\n");
    }
    body.push_str("</section>\n");
}

fn zoom_figure(
    body: &mut String,
    phases: &[PhaseSummary],
    n: usize,
    name: &str,
    z: &Zoom,
    s: Option<&Switchover>,
    origin: u64,
) {
    body.push_str("<div>");
    w!(
        body,
        "<h3>{name} · {} at {} s</h3><p class=\"zoomcap\">",
        esc(&z.kind),
        format::offset_seconds(z.at_ms, origin)
    );
    match s {
        Some(s) => {
            w!(body, "step-up <b>{} ms</b>", format::ms(s.stepup_ms));
        }
        // Not in the summary: its end is when the last client the switchover affected got
        // its first success, not an acknowledged step-up.
        None => {
            w!(
                body,
                "<b>{} ms</b> until the clients found the new active",
                format::ms(z.end_ms.saturating_sub(z.at_ms) as f64)
            );
        }
    }
    if !zoom::drawable(z) {
        w!(
            body,
            "</p><p class=\"note\">Zoom not drawn: detail.json gives this switchover buckets of {} ms, \
             where a zoom needs buckets of 1 ms to {} ms.</p></div>\n",
            format::thousands(z.bucket_ms),
            format::thousands(zoom::BUCKET_MS_MAX)
        );
        return;
    }
    if let Some(s) = s {
        w!(
            body,
            " · client-visible gap <b>{} ms</b> · <b>{}</b> retried · <b>{}</b> redirected",
            format::ms(s.client_gap_ms),
            format::thousands(s.retried),
            format::thousands(s.redirected)
        );
    }
    if let Some((_, len)) = zoom::silence(z) {
        w!(
            body,
            " · no reply for <b>{} ms</b>",
            format::thousands((len as u64).saturating_mul(z.bucket_ms))
        );
    }
    let phases: Vec<zoom::ZoomPhase> = phases
        .iter()
        .enumerate()
        .map(|(i, p)| zoom::ZoomPhase {
            name: &p.name,
            start_ms: p.start_ms,
            end_ms: p.end_ms,
            color: phase_color(&p.name, i),
        })
        .collect();
    let range = zoom::window(z, s.map_or(f64::NAN, |s| s.client_gap_ms), &phases);
    if range.len() < z.buckets.len() {
        let bucket = z.bucket_ms as i128;
        let edge = |i: usize| {
            let t = i128::from(z.from_ms) + i as i128 * bucket - i128::from(z.at_ms);
            t.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
        };
        w!(
            body,
            " · shown {} to +{} ms of the recorded {} to +{} ms",
            format::signed_ms(edge(range.start)),
            edge(range.end),
            format::signed_ms(edge(0)),
            edge(z.buckets.len())
        );
    }
    body.push_str("</p>");
    body.push_str(&zoom::svg(
        &format!("zoom-{n}"),
        &format!("{name}: the switchover at millisecond resolution"),
        z,
        range,
        &phases,
        if s.is_some() { "acked" } else { "found" },
    ));
    body.push_str("</div>\n");
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
            format::offset_seconds_ms(e.t_ms, origin),
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
         of each request (HdrHistogram); a slice holds the requests intended in its second, so a stall shows as seconds of high latency \
         (highest for the requests meant at its start) while replies by arrival drop to zero. This file is self-contained and opens without a network.</footer>\n",
        esc(schema)
    );
}

#[cfg(test)]
mod self_contained;
#[cfg(test)]
mod tests;
