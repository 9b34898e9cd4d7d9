//! Inline SVG time charts for the report, drawn by hand so that the report needs no script
//! and no library to open. One layout serves every time chart of a run: the same time axis
//! (seconds from the run start), the phases as lanes above the plot (a Gantt row per label
//! where labels would touch, so a phase of ten milliseconds is as readable as one of ten
//! seconds) and as alternating bands through the plot, and a vertical line per switchover,
//! so that a latency spike can be read against the phase and the switchover that caused it.
//!
//! Latency uses a logarithmic axis: a switchover gap is a hundred times the steady-state p99,
//! and on a linear axis it would flatten everything else to the floor.

use std::collections::HashSet;
use std::fmt::Write as _;

use super::format::esc;
use super::w;

pub const WIDTH: f64 = 1100.0;
pub const LEFT: f64 = 72.0;
pub const RIGHT: f64 = 24.0;
const PLOT_HEIGHT: f64 = 230.0;
const AXIS_HEIGHT: f64 = 30.0;
const LANE_ROW_HEIGHT: f64 = 17.0;
/// Average advance of an 11 px system-font character, for placing labels without a layout
/// engine; errs wide so that estimated labels never touch.
pub const CHAR_WIDTH: f64 = 6.6;
/// Room between two labels of a lane row.
const LABEL_GAP: f64 = 10.0;

/// The horizontal grid lines of a y axis, each with its label right-aligned at `label_x`:
/// `ticks` in data units, `y` their position, `x` the plot's left and right edges.
pub fn y_ticks(
    out: &mut String,
    ticks: &[f64],
    y: impl Fn(f64) -> f64,
    (x0, x1): (f64, f64),
    label_x: f64,
    label: impl Fn(f64) -> String,
) {
    for &tick in ticks {
        let ty = y(tick);
        w!(
            out,
            r#"<line class="grid" x1="{x0}" x2="{x1:.1}" y1="{ty:.1}" y2="{ty:.1}"/><text class="tick" x="{label_x:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            ty + 4.0,
            esc(&label(tick))
        );
    }
}

pub struct Band<'a> {
    pub name: &'a str,
    pub start_ms: u64,
    pub end_ms: u64,
    /// On the fallback path: tinted so a rolled-back upgrade reads as such at a glance.
    pub fallback: bool,
    /// Text of the label's tooltip (duration, samples).
    pub note: String,
}

pub struct Marker {
    pub at_ms: u64,
    pub label: String,
    /// `marker` (a run's switchover) or `markerb` (the second run of a comparison).
    pub class: &'static str,
}

/// A line of the chart; `None` breaks it (no replies in that slice, or slices missing).
pub struct Series {
    pub class: &'static str,
    pub points: Vec<Option<(u64, f64)>>,
    /// Filled down to the axis.
    pub area: bool,
}

/// Single requests (slow ones), drawn as dots; thinned to one dot per pixel cell.
pub struct Dots {
    pub class: &'static str,
    pub points: Vec<(u64, f64)>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Scale {
    Log,
    Linear,
}

pub struct Chart<'a> {
    /// The `<svg>`'s `id`: stable, for links and for tests.
    pub id: &'a str,
    pub label: &'a str,
    pub origin_ms: u64,
    pub end_ms: u64,
    pub bands: &'a [Band<'a>],
    pub markers: &'a [Marker],
    pub scale: Scale,
    pub format_y: fn(f64) -> String,
    pub lines: Vec<Series>,
    pub dots: Vec<Dots>,
    /// Drawn as bars of `bar_width_ms` from the axis, at least 2 px tall when non-zero, so a
    /// handful of errors among thousands of replies still shows.
    pub bars: Option<Series>,
    pub bar_width_ms: u64,
    /// A horizontal reference line (the slow-request threshold) and its label.
    pub threshold: Option<(f64, String)>,
    pub empty_note: &'a str,
}

pub struct Axis {
    pub lo: f64,
    pub hi: f64,
    pub ticks: Vec<f64>,
    pub scale: Scale,
}

impl Axis {
    pub fn fraction(&self, v: f64) -> f64 {
        let f = match self.scale {
            Scale::Linear => (v - self.lo) / (self.hi - self.lo),
            Scale::Log => (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln()),
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// 1-2-5 steps: the values axis ticks may take.
fn nice_steps() -> impl Iterator<Item = f64> {
    (-3..=12).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
}

pub fn linear_axis(max: f64) -> Axis {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let step = nice_steps().find(|s| max / s <= 5.0).unwrap_or(max);
    let top = (max / step).ceil().max(1.0);
    let ticks = (0..=top as u64).map(|i| i as f64 * step).collect();
    Axis {
        lo: 0.0,
        hi: top * step,
        ticks,
        scale: Scale::Linear,
    }
}

pub fn log_axis(min: f64, max: f64) -> Axis {
    let min = if min.is_finite() { min.max(1.0) } else { 1.0 };
    let max = if max.is_finite() { max.max(min) } else { min };
    let mut lo = nice_steps().take_while(|s| *s <= min).last().unwrap_or(1.0);
    let mut hi = nice_steps()
        .find(|s| *s >= max && *s > lo)
        .unwrap_or(lo * 10.0);
    let mut ticks: Vec<f64> = nice_steps().filter(|s| *s >= lo && *s <= hi).collect();
    if ticks.len() > 8 {
        lo = 10f64.powf(lo.log10().floor());
        hi = 10f64.powf(hi.log10().ceil());
        ticks = nice_steps()
            .filter(|s| *s >= lo && *s <= hi && (s.log10() - s.log10().round()).abs() < 1e-9)
            .collect();
    }
    Axis {
        lo,
        hi,
        ticks,
        scale: Scale::Log,
    }
}

/// Seconds between time ticks: about ten ticks whatever the run's length.
fn time_step_s(span_s: f64) -> f64 {
    [
        1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
        7200.0,
    ]
    .into_iter()
    .find(|s| span_s / s <= 12.0)
    .unwrap_or(span_s / 10.0)
}

/// Where a band and its label sit in the lanes above the plot.
#[derive(Debug, PartialEq)]
pub struct LaneItem {
    pub row: usize,
    pub bar_x0: f64,
    pub bar_x1: f64,
    pub label_x: f64,
    /// `middle` (inside its bar), `start` (right of a short bar) or `end` (left of it).
    pub anchor: &'static str,
}

/// Lays out the band labels in rows: a label sits inside its band when the band is wide
/// enough, next to it otherwise, and takes the first row where it touches nothing. Rows are
/// added as needed, so no two labels ever overlap however short the phases.
pub fn lanes(bars: &[(f64, f64)], label_widths: &[f64], left: f64, right: f64) -> Vec<LaneItem> {
    let mut row_right: Vec<f64> = Vec::new();
    let mut items = Vec::with_capacity(bars.len());
    for (&(x0, x1), &lw) in bars.iter().zip(label_widths) {
        let x1 = x1.max(x0 + 2.0);
        // What the item occupies in its row: its bar (bars may touch) and its label (with
        // room to the next label).
        let (from, to, label_x, anchor) = if x1 - x0 >= lw + 8.0 {
            (x0, x1, (x0 + x1) / 2.0, "middle")
        } else if x1 + 4.0 + lw <= right {
            (x0, x1 + 4.0 + lw + LABEL_GAP, x1 + 4.0, "start")
        } else {
            ((x0 - 4.0 - lw - LABEL_GAP).max(left), x1, x0 - 4.0, "end")
        };
        let row = match row_right.iter().position(|&r| from >= r) {
            Some(r) => r,
            None => {
                row_right.push(f64::NEG_INFINITY);
                row_right.len() - 1
            }
        };
        row_right[row] = to;
        items.push(LaneItem {
            row,
            bar_x0: x0,
            bar_x1: x1,
            label_x,
            anchor,
        });
    }
    items
}

pub fn label_width(text: &str) -> f64 {
    text.chars().count() as f64 * CHAR_WIDTH + 4.0
}

/// Rows for marker labels at the top of the plot, so that two switchovers a few pixels apart
/// do not print on top of each other.
fn marker_rows(xs: &[f64], widths: &[f64], right: f64) -> Vec<(usize, f64, &'static str)> {
    let mut row_right: Vec<f64> = Vec::new();
    let mut out = Vec::new();
    for (&x, &w) in xs.iter().zip(widths) {
        let (span0, span1, lx, anchor) = if x + 5.0 + w <= right {
            (x, x + 5.0 + w, x + 5.0, "start")
        } else {
            (x - 5.0 - w, x, x - 5.0, "end")
        };
        let row = match row_right.iter().position(|&r| span0 >= r + 6.0) {
            Some(r) => r,
            None => {
                row_right.push(f64::NEG_INFINITY);
                row_right.len() - 1
            }
        };
        row_right[row] = span1;
        out.push((row, lx, anchor));
    }
    out
}

/// Dots as one path of zero-length strokes with round caps (a few bytes per dot), at most one
/// per pixel cell: ten minutes of slow requests stay a few hundred kilobytes.
pub fn dot_path(class: &str, points: impl Iterator<Item = (f64, f64)>) -> String {
    let mut seen: HashSet<(i32, i32)> = HashSet::new();
    let mut d = String::new();
    for (px, py) in points {
        if !(px.is_finite() && py.is_finite()) {
            continue;
        }
        let cell = (px.round() as i32, py.round() as i32);
        if seen.insert(cell) {
            w!(d, "M{} {}h0", cell.0, cell.1);
        }
    }
    if d.is_empty() {
        return String::new();
    }
    format!(r#"<path class="{class}" d="{d}"/>"#)
}

/// A polyline through the points; `None` breaks it, a lone point is a dot.
pub fn line_paths(class: &str, points: &[Option<(f64, f64)>], fill_to: Option<f64>) -> String {
    let mut out = String::new();
    for seg in points.split(Option::is_none).filter(|s| !s.is_empty()) {
        let seg: Vec<(f64, f64)> = seg.iter().flatten().copied().collect();
        if let (Some(bottom), true) = (fill_to, seg.len() > 1) {
            let mut d = format!("M{:.1},{bottom:.1}", seg[0].0);
            for (px, py) in &seg {
                w!(d, " L{px:.1},{py:.1}");
            }
            w!(d, " L{:.1},{bottom:.1} Z", seg[seg.len() - 1].0);
            w!(out, r#"<path class="{class}area" d="{d}"/>"#);
        }
        if seg.len() == 1 {
            w!(
                out,
                r#"<circle class="{class}dot" cx="{:.1}" cy="{:.1}" r="2.5"/>"#,
                seg[0].0,
                seg[0].1
            );
        } else {
            let mut d = String::new();
            for (j, (px, py)) in seg.iter().enumerate() {
                w!(d, "{}{px:.1},{py:.1}", if j == 0 { "M" } else { " L" });
            }
            w!(out, r#"<path class="{class}" d="{d}"/>"#);
        }
    }
    out
}

/// The bands through a plot, `bars[i]` the x extent of `bands[i]`: alternating shades, the
/// fallback path's tinted.
pub fn band_rects(out: &mut String, bands: &[Band], bars: &[(f64, f64)], top: f64, height: f64) {
    for (i, band) in bands.iter().enumerate() {
        let (x0, x1) = bars[i];
        let class = match (band.fallback, i % 2) {
            (false, 0) => "band0",
            (false, _) => "band1",
            (true, 0) => "bandfb0",
            (true, _) => "bandfb1",
        };
        w!(
            out,
            r#"<rect class="{class}" x="{x0:.1}" y="{top:.1}" width="{:.1}" height="{height:.1}"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            esc(band.name)
        );
    }
}

/// The time axis under a plot whose bottom is at `plot_bottom`: seconds from the origin,
/// about ten ticks, over `span_ms` from `LEFT` to `WIDTH - RIGHT`.
pub fn time_axis(out: &mut String, span_ms: f64, plot_bottom: f64) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let step_s = time_step_s(span_ms / 1e3);
    let mut k = 0.0;
    while k * step_s * 1e3 <= span_ms + 1.0 {
        let t_s = k * step_s;
        let tx = LEFT + (t_s * 1e3 / span_ms).min(1.0) * plot_w;
        w!(
            out,
            r#"<line class="axis" x1="{tx:.1}" x2="{tx:.1}" y1="{plot_bottom:.1}" y2="{:.1}"/>"#,
            plot_bottom + 5.0
        );
        w!(
            out,
            r#"<text class="tick" x="{tx:.1}" y="{:.1}" text-anchor="middle">{t_s:.0} s</text>"#,
            plot_bottom + 19.0
        );
        k += 1.0;
    }
    w!(
        out,
        r#"<line class="axis" x1="{LEFT}" x2="{:.1}" y1="{plot_bottom:.1}" y2="{plot_bottom:.1}"/>"#,
        WIDTH - RIGHT
    );
}

pub fn svg(chart: &Chart) -> String {
    let end_ms = chart.end_ms.max(chart.origin_ms.saturating_add(1000));
    let span_ms = (end_ms - chart.origin_ms) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t_ms: u64| {
        LEFT + (t_ms.saturating_sub(chart.origin_ms) as f64 / span_ms).min(1.0) * plot_w
    };

    let bars: Vec<(f64, f64)> = chart
        .bands
        .iter()
        .map(|b| (x(b.start_ms), x(b.end_ms.max(b.start_ms))))
        .collect();
    let widths: Vec<f64> = chart.bands.iter().map(|b| label_width(b.name)).collect();
    let lane = lanes(&bars, &widths, LEFT, WIDTH - RIGHT);
    let rows = lane.iter().map(|l| l.row + 1).max().unwrap_or(0);
    let lane_h = if rows == 0 {
        6.0
    } else {
        rows as f64 * LANE_ROW_HEIGHT + 6.0
    };
    let marker_xs: Vec<f64> = chart.markers.iter().map(|m| x(m.at_ms)).collect();
    let marker_ws: Vec<f64> = chart
        .markers
        .iter()
        .map(|m| label_width(&m.label))
        .collect();
    let marker_layout = marker_rows(&marker_xs, &marker_ws, WIDTH - RIGHT);
    let plot_top = lane_h;
    let plot_bottom = plot_top + PLOT_HEIGHT;
    let height = plot_bottom + AXIS_HEIGHT;

    let values = chart
        .lines
        .iter()
        .flat_map(|s| s.points.iter().flatten().map(|p| p.1))
        .chain(chart.dots.iter().flat_map(|d| d.points.iter().map(|p| p.1)))
        .chain(chart.threshold.iter().map(|t| t.0))
        .filter(|v| v.is_finite());
    let (min, max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (if v > 0.0 { lo.min(v) } else { lo }, hi.max(v))
    });
    let has_data = chart
        .lines
        .iter()
        .any(|s| s.points.iter().any(Option::is_some))
        || chart.dots.iter().any(|d| !d.points.is_empty());
    let axis = match chart.scale {
        Scale::Linear => linear_axis(max),
        Scale::Log => log_axis(if min.is_finite() { min } else { 1.0 }, max),
    };
    let y = |v: f64| plot_bottom - axis.fraction(v) * PLOT_HEIGHT;

    let mut out = String::new();
    w!(
        out,
        r#"<svg id="{}" class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}" preserveAspectRatio="xMinYMin meet">"#,
        esc(chart.id),
        esc(chart.label)
    );
    w!(out, "<title>{}</title>", esc(chart.label));

    // Bands through the plot, then the lanes with their labels above it.
    band_rects(&mut out, chart.bands, &bars, plot_top, PLOT_HEIGHT);
    for (i, band) in chart.bands.iter().enumerate() {
        let item = &lane[i];
        let ry = item.row as f64 * LANE_ROW_HEIGHT + 2.0;
        let lane_class = if band.fallback { "lanefb" } else { "lane" };
        w!(
            out,
            r#"<g><title>{}</title><rect class="{lane_class}" x="{:.1}" y="{ry:.1}" width="{:.1}" height="{:.1}" rx="2"/>"#,
            esc(&format!("{} · {}", band.name, band.note)),
            item.bar_x0,
            (item.bar_x1 - item.bar_x0).max(2.0),
            LANE_ROW_HEIGHT - 4.0
        );
        // A hairline from a short phase's lane down to the plot, so the eye finds its place.
        if item.anchor != "middle" {
            w!(
                out,
                r#"<line class="leader" x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{plot_top:.1}"/>"#,
                item.bar_x0,
                item.bar_x0,
                ry + LANE_ROW_HEIGHT - 4.0
            );
        }
        w!(
            out,
            r#"<text class="bandlabel" x="{:.1}" y="{:.1}" text-anchor="{}">{}</text></g>"#,
            item.label_x,
            ry + LANE_ROW_HEIGHT - 7.0,
            item.anchor,
            esc(band.name)
        );
    }

    y_ticks(
        &mut out,
        &axis.ticks,
        y,
        (LEFT, WIDTH - RIGHT),
        LEFT - 8.0,
        chart.format_y,
    );
    time_axis(&mut out, span_ms, plot_bottom);

    if let Some((v, label)) = &chart.threshold {
        let ty = y(*v);
        w!(
            out,
            r#"<line class="threshold" x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}"/><text class="thresholdlabel" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            WIDTH - RIGHT - 4.0,
            ty - 4.0,
            esc(label)
        );
    }

    for dots in &chart.dots {
        out.push_str(&dot_path(
            dots.class,
            dots.points.iter().map(|&(t, v)| (x(t), y(v))),
        ));
    }

    if let Some(bars) = &chart.bars {
        let bar_w = (chart.bar_width_ms as f64 / span_ms * plot_w * 0.6).clamp(1.5, 24.0);
        for &(t, v) in bars.points.iter().flatten().filter(|p| p.1 > 0.0) {
            let top = y(v).min(plot_bottom - 2.0);
            w!(
                out,
                r#"<rect class="{}" x="{:.1}" y="{top:.1}" width="{bar_w:.1}" height="{:.1}"/>"#,
                bars.class,
                x(t) - bar_w / 2.0,
                plot_bottom - top
            );
        }
    }

    for series in &chart.lines {
        let points: Vec<Option<(f64, f64)>> = series
            .points
            .iter()
            .map(|p| p.map(|(t, v)| (x(t), y(v))))
            .collect();
        out.push_str(&line_paths(
            series.class,
            &points,
            series.area.then_some(plot_bottom),
        ));
    }

    for (marker, &(row, lx, anchor)) in chart.markers.iter().zip(&marker_layout) {
        let mx = x(marker.at_ms);
        w!(
            out,
            r#"<line class="{}" x1="{mx:.1}" x2="{mx:.1}" y1="{plot_top:.1}" y2="{plot_bottom:.1}"/>"#,
            marker.class
        );
        w!(
            out,
            r#"<text class="{}label" x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            marker.class,
            plot_top + 13.0 + row as f64 * 14.0,
            esc(&marker.label)
        );
    }

    if !has_data {
        w!(
            out,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            plot_top + PLOT_HEIGHT / 2.0,
            esc(chart.empty_note)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_their_values_with_nice_ticks() {
        let a = linear_axis(20_480.0);
        assert_eq!(a.hi, 25_000.0);
        assert_eq!(a.ticks.first(), Some(&0.0));
        let a = log_axis(92.0, 41_000.0);
        assert!(a.lo <= 92.0 && a.hi >= 41_000.0, "{} {}", a.lo, a.hi);
        assert!(a.ticks.len() <= 8 && a.ticks.len() >= 2, "{:?}", a.ticks);
        let a = log_axis(1.0, 1.0);
        assert!(a.hi > a.lo);
    }

    /// Three phases of a few milliseconds at the same pixel, inside a 30 s run: each label
    /// gets a row of its own, and no two labels of a row overlap.
    #[test]
    fn labels_of_short_phases_never_overlap() {
        let px = |ms: f64| LEFT + ms / 30_000.0 * (WIDTH - LEFT - RIGHT);
        let bands = [
            (0.0, 15_000.0),
            (15_000.0, 15_010.0),
            (15_010.0, 15_060.0),
            (15_060.0, 15_080.0),
            (15_080.0, 22_000.0),
            (22_000.0, 22_040.0),
            (22_040.0, 22_130.0),
            (22_130.0, 30_000.0),
        ];
        let bars: Vec<(f64, f64)> = bands.iter().map(|&(a, b)| (px(a), px(b))).collect();
        let names = [
            "baseline",
            "b_out_of_service",
            "b_catch_up",
            "switchover_to_b",
            "evaluation",
            "a_out_of_service",
            "a_catch_up",
            "features_enabled",
        ];
        let widths: Vec<f64> = names.iter().map(|n| label_width(n)).collect();
        let items = lanes(&bars, &widths, LEFT, WIDTH - RIGHT);
        let span = |i: usize| {
            let it = &items[i];
            match it.anchor {
                "middle" => (it.label_x - widths[i] / 2.0, it.label_x + widths[i] / 2.0),
                "start" => (it.label_x, it.label_x + widths[i]),
                _ => (it.label_x - widths[i], it.label_x),
            }
        };
        for i in 0..items.len() {
            for j in 0..i {
                if items[i].row == items[j].row {
                    let (a, b) = (span(i), span(j));
                    assert!(
                        a.0 >= b.1 || b.0 >= a.1,
                        "{} and {} overlap in row {}",
                        names[i],
                        names[j],
                        items[i].row
                    );
                }
            }
        }
        assert!(items.iter().map(|i| i.row).max().unwrap() >= 2);
        assert!(items.iter().map(|i| i.row).max().unwrap() <= 4);
    }

    #[test]
    fn dots_are_thinned_to_one_per_pixel() {
        let many = (0..10_000).map(|i| (100.0 + (i % 10) as f64 * 0.01, 50.0));
        let path = dot_path("slow", many);
        assert_eq!(path.matches("h0").count(), 1);
    }
}
