//! Inline SVG time charts for the report, drawn by hand so that the report needs no script
//! and no library to open. One layout serves every chart of a run: the same time axis (seconds
//! from the run start), the phases as alternating bands whose names sit in a lane above the
//! plot (staggered when a short phase leaves no room), and a vertical line per switchover, so
//! that a latency spike can be read against the phase and the switchover that caused it.
//!
//! Latency uses a logarithmic axis: a switchover gap is a hundred times the steady-state p99,
//! and on a linear axis it would flatten everything else to the floor.

use std::fmt::Write as _;

use super::format::esc;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const PLOT_HEIGHT: f64 = 220.0;
const AXIS_HEIGHT: f64 = 30.0;
const LANE_ROW_HEIGHT: f64 = 15.0;
const LANE_ROWS_MAX: usize = 4;
/// Average advance of an 11 px system-font character, for placing labels without a layout
/// engine; errs wide so that estimated labels never touch.
const CHAR_WIDTH: f64 = 6.6;

macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

pub struct Band<'a> {
    pub name: &'a str,
    pub start_ms: u64,
    pub end_ms: u64,
    /// On the fallback path: tinted so a rolled-back upgrade reads as such at a glance.
    pub fallback: bool,
}

pub struct Marker {
    pub at_ms: u64,
    pub label: String,
}

/// A line of the chart; `None` breaks it (no replies in that slice, or slices missing).
pub struct Series {
    pub class: &'static str,
    pub points: Vec<Option<(u64, f64)>>,
}

#[derive(Clone, Copy, PartialEq)]
pub enum Scale {
    Log,
    Linear,
}

pub struct Chart<'a> {
    pub label: &'a str,
    pub origin_ms: u64,
    pub end_ms: u64,
    pub bands: &'a [Band<'a>],
    pub markers: &'a [Marker],
    pub scale: Scale,
    pub format_y: fn(f64) -> String,
    /// Switchover labels at the foot of the plot rather than the top: on a latency chart the
    /// top is where the switchover's own spike is drawn.
    pub marker_labels_low: bool,
    pub lines: Vec<Series>,
    /// The first line is filled down to the axis (throughput).
    pub area: bool,
    /// Drawn as bars of `bar_width_ms` from the axis, at least 2 px tall when non-zero, so a
    /// handful of errors among thousands of replies still shows.
    pub bars: Option<Series>,
    pub bar_width_ms: u64,
    pub empty_note: &'a str,
}

struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    scale: Scale,
}

impl Axis {
    fn fraction(&self, v: f64) -> f64 {
        let f = match self.scale {
            Scale::Linear => (v - self.lo) / (self.hi - self.lo),
            Scale::Log => (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln()),
        };
        f.clamp(0.0, 1.0)
    }
}

/// 1-2-5 steps: the values axis ticks may take.
fn nice_steps() -> impl Iterator<Item = f64> {
    (-3..=12).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
}

fn linear_axis(max: f64) -> Axis {
    let max = if max > 0.0 { max } else { 1.0 };
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

fn log_axis(min: f64, max: f64) -> Axis {
    let min = min.max(1.0);
    let max = max.max(min);
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

/// Assigns each band label a lane row so that no two labels of a row overlap; returns the rows
/// (in band order) and how many rows are used.
fn label_rows(centers_x: &[f64], widths_px: &[f64]) -> (Vec<usize>, usize) {
    let mut row_right = [f64::NEG_INFINITY; LANE_ROWS_MAX];
    let mut rows = Vec::with_capacity(centers_x.len());
    for (&c, &w) in centers_x.iter().zip(widths_px) {
        let left = c - w / 2.0;
        let row = (0..LANE_ROWS_MAX)
            .find(|&r| left >= row_right[r] + 8.0)
            .unwrap_or_else(|| {
                // Every row is taken here: overlap where it overlaps least.
                (0..LANE_ROWS_MAX)
                    .min_by(|&a, &b| row_right[a].total_cmp(&row_right[b]))
                    .unwrap_or(0)
            });
        row_right[row] = c + w / 2.0;
        rows.push(row);
    }
    let used = rows.iter().max().map_or(1, |r| r + 1);
    (rows, used)
}

pub fn svg(chart: &Chart) -> String {
    let end_ms = chart.end_ms.max(chart.origin_ms.saturating_add(1000));
    let span_ms = (end_ms - chart.origin_ms) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t_ms: u64| {
        LEFT + (t_ms.saturating_sub(chart.origin_ms) as f64 / span_ms).min(1.0) * plot_w
    };

    // Band labels: centred on their band, kept inside the plot, staggered into lane rows.
    let widths: Vec<f64> = chart
        .bands
        .iter()
        .map(|b| b.name.chars().count() as f64 * CHAR_WIDTH + 4.0)
        .collect();
    let centers: Vec<f64> = chart
        .bands
        .iter()
        .zip(&widths)
        .map(|(b, w)| {
            ((x(b.start_ms) + x(b.end_ms)) / 2.0).clamp(LEFT + w / 2.0, WIDTH - RIGHT - w / 2.0)
        })
        .collect();
    let (rows, rows_used) = label_rows(&centers, &widths);
    let lane_h = if chart.bands.is_empty() {
        6.0
    } else {
        rows_used as f64 * LANE_ROW_HEIGHT + 8.0
    };
    let plot_top = lane_h;
    let plot_bottom = plot_top + PLOT_HEIGHT;
    let height = plot_bottom + AXIS_HEIGHT;

    let values = chart
        .lines
        .iter()
        .flat_map(|s| s.points.iter().flatten().map(|p| p.1));
    let (min, max) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (if v > 0.0 { lo.min(v) } else { lo }, hi.max(v))
    });
    let has_data = max > 0.0
        || chart
            .lines
            .iter()
            .any(|s| s.points.iter().any(Option::is_some));
    let axis = match chart.scale {
        Scale::Linear => linear_axis(max),
        Scale::Log => log_axis(if min.is_finite() { min } else { 1.0 }, max),
    };
    let y = |v: f64| plot_bottom - axis.fraction(v) * PLOT_HEIGHT;

    let mut out = String::new();
    w!(
        out,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}" preserveAspectRatio="xMinYMin meet">"#,
        esc(chart.label)
    );
    w!(out, "<title>{}</title>", esc(chart.label));

    for (i, band) in chart.bands.iter().enumerate() {
        let (x0, x1) = (x(band.start_ms), x(band.end_ms));
        let class = match (band.fallback, i % 2) {
            (false, 0) => "band0",
            (false, _) => "band1",
            (true, 0) => "bandfb0",
            (true, _) => "bandfb1",
        };
        w!(
            out,
            r#"<rect class="{class}" x="{x0:.1}" y="0" width="{:.1}" height="{plot_bottom:.1}"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            esc(band.name)
        );
    }
    for (i, band) in chart.bands.iter().enumerate() {
        let ly = rows[i] as f64 * LANE_ROW_HEIGHT + 12.0;
        w!(
            out,
            r#"<text class="bandlabel" x="{:.1}" y="{ly:.1}" text-anchor="middle">{}</text>"#,
            centers[i],
            esc(band.name)
        );
    }

    for &tick in &axis.ticks {
        let ty = y(tick);
        w!(
            out,
            r#"<line class="grid" x1="{LEFT}" x2="{:.1}" y1="{ty:.1}" y2="{ty:.1}"/>"#,
            WIDTH - RIGHT
        );
        w!(
            out,
            r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            ty + 4.0,
            esc(&(chart.format_y)(tick))
        );
    }
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

    for (i, series) in chart.lines.iter().enumerate() {
        let segments: Vec<Vec<(f64, f64)>> = series
            .points
            .split(Option::is_none)
            .filter(|s| !s.is_empty())
            .map(|s| s.iter().flatten().map(|&(t, v)| (x(t), y(v))).collect())
            .collect();
        for seg in &segments {
            if chart.area && i == 0 && seg.len() > 1 {
                let mut d = format!("M{:.1},{plot_bottom:.1}", seg[0].0);
                for (px, py) in seg {
                    w!(d, " L{px:.1},{py:.1}");
                }
                w!(d, " L{:.1},{plot_bottom:.1} Z", seg[seg.len() - 1].0);
                w!(out, r#"<path class="area" d="{d}"/>"#);
            }
            if seg.len() == 1 {
                w!(
                    out,
                    r#"<circle class="{}dot" cx="{:.1}" cy="{:.1}" r="2.5"/>"#,
                    series.class,
                    seg[0].0,
                    seg[0].1
                );
            } else {
                let mut d = String::new();
                for (j, (px, py)) in seg.iter().enumerate() {
                    w!(d, "{}{px:.1},{py:.1}", if j == 0 { "M" } else { " L" });
                }
                w!(out, r#"<path class="{}" d="{d}"/>"#, series.class);
            }
        }
    }

    for marker in chart.markers {
        let mx = x(marker.at_ms);
        w!(
            out,
            r#"<line class="marker" x1="{mx:.1}" x2="{mx:.1}" y1="{plot_top:.1}" y2="{plot_bottom:.1}"/>"#
        );
        let near_right = mx > WIDTH - RIGHT - 180.0;
        let (lx, anchor) = if near_right {
            (mx - 5.0, "end")
        } else {
            (mx + 5.0, "start")
        };
        w!(
            out,
            r#"<text class="markerlabel" x="{lx:.1}" y="{:.1}" text-anchor="{anchor}">{}</text>"#,
            if chart.marker_labels_low {
                plot_bottom - 7.0
            } else {
                plot_top + 14.0
            },
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

    #[test]
    fn crowded_labels_take_other_rows() {
        let (rows, used) = label_rows(&[100.0, 110.0, 120.0, 400.0], &[60.0, 60.0, 60.0, 60.0]);
        assert_eq!(rows, vec![0, 1, 2, 0]);
        assert_eq!(used, 3);
    }
}
