//! The percentile spectrum: each phase's latency distribution on a "number of nines" axis
//! (HdrHistogram's percentile distribution plot), x = log10(1 / (1 − p)), so that 90 %,
//! 99 %, 99.9 % ... are equally spaced and a tail that a table of p50/p99 hides is a line
//! that bends up. A curve stops where its phase's samples stop supporting the percentile
//! (`percentile_supported`): a 20 ms phase has no p99.9, and drawing one would be its
//! maximum in disguise.

use std::fmt::Write as _;

use super::w;

use super::chart::{dot_path, line_paths, log_axis, y_ticks, LEFT, RIGHT, WIDTH};
use super::format::{self, esc};
use crate::summary::{percentile_supported, PercentilePoint, PhaseSummary};

const PLOT_TOP: f64 = 12.0;
const PLOT_HEIGHT: f64 = 300.0;
const AXIS_HEIGHT: f64 = 34.0;
/// The axis never shows fewer nines than this (99.9 %), so two reports look alike.
const NINES_MIN: f64 = 3.0;
const NINES_MAX: f64 = 7.0;

/// One curve: a phase of a run.
pub struct Curve {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    /// Replies that were not errors: the samples behind each percentile.
    pub samples: u64,
    pub points: Vec<PercentilePoint>,
}

impl Curve {
    /// A phase's curve: its recorded spectrum, or (a run written before spectra were
    /// recorded) the percentiles of its summary.
    pub fn of_phase(p: &PhaseSummary, label: String, color: &'static str, dashed: bool) -> Curve {
        let points = if p.percentiles.is_empty() {
            let l = &p.latency_us;
            [(50.0, l.p50), (90.0, l.p90), (99.0, l.p99), (99.9, l.p999)]
                .into_iter()
                .map(|(p, us)| PercentilePoint { p, us })
                .collect()
        } else {
            p.percentiles.clone()
        };
        Curve {
            label,
            color,
            dashed,
            samples: p.ops.saturating_sub(p.errors),
            points,
        }
    }

    /// The points the samples support, as (nines, µs), in order of p.
    pub fn supported(&self) -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(|pt| pt.p.is_finite() && (0.0..100.0).contains(&pt.p))
            .filter(|pt| percentile_supported(self.samples, pt.p / 100.0))
            .map(|pt| (nines(pt.p), pt.us as f64))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    }

    /// The highest percentile the curve shows, `None` when it shows none.
    pub fn cut_at(&self) -> Option<f64> {
        self.points
            .iter()
            .filter(|pt| pt.p.is_finite() && (0.0..100.0).contains(&pt.p))
            .filter(|pt| percentile_supported(self.samples, pt.p / 100.0))
            .map(|pt| pt.p)
            .max_by(f64::total_cmp)
    }
}

/// log10(1 / (1 − p/100)): 0 at 0 %, 1 at 90 %, 2 at 99 %, 3 at 99.9 %.
pub fn nines(p: f64) -> f64 {
    (1.0 / (1.0 - p / 100.0)).log10()
}

/// The tick label of `n` nines: "0%", "90%", "99%", "99.9%", "99.99%".
pub fn nines_label(n: u32) -> String {
    match n {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("99.{}%", "9".repeat(n as usize - 2)).replace("99.%", "99%"),
    }
}

pub fn svg(id: &str, label: &str, curves: &[Curve]) -> String {
    let supported: Vec<Vec<(f64, f64)>> = curves.iter().map(Curve::supported).collect();
    let widest = supported
        .iter()
        .flat_map(|c| c.last().map(|p| p.0))
        .fold(0.0f64, f64::max);
    let x_max = widest.ceil().clamp(NINES_MIN, NINES_MAX);
    let (min, max) = supported
        .iter()
        .flatten()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), p| {
            (if p.1 > 0.0 { lo.min(p.1) } else { lo }, hi.max(p.1))
        });
    let axis = log_axis(min, max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_bottom = PLOT_TOP + PLOT_HEIGHT;
    let height = plot_bottom + AXIS_HEIGHT;
    let x = |n: f64| LEFT + (n / x_max).clamp(0.0, 1.0) * plot_w;
    let y = |us: f64| plot_bottom - axis.fraction(us) * PLOT_HEIGHT;

    let mut out = String::new();
    w!(
        out,
        r#"<svg id="{}" class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}" preserveAspectRatio="xMinYMin meet"><title>{}</title>"#,
        esc(id),
        esc(label),
        esc(label)
    );
    y_ticks(
        &mut out,
        &axis.ticks,
        y,
        (LEFT, WIDTH - RIGHT),
        LEFT - 8.0,
        format::latency_tick_us,
    );
    for n in 0..=x_max as u32 {
        let tx = x(f64::from(n));
        w!(
            out,
            r#"<line class="grid" x1="{tx:.1}" x2="{tx:.1}" y1="{PLOT_TOP}" y2="{plot_bottom:.1}"/><text class="tick" x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            plot_bottom + 18.0,
            nines_label(n)
        );
    }
    // The median, faint: where most readers look first.
    let median = x(nines(50.0));
    w!(
        out,
        r#"<line class="gridfaint" x1="{median:.1}" x2="{median:.1}" y1="{PLOT_TOP}" y2="{plot_bottom:.1}"/><text class="tick" x="{median:.1}" y="{:.1}" text-anchor="middle">50%</text>"#,
        plot_bottom + 18.0
    );
    w!(
        out,
        r#"<line class="axis" x1="{LEFT}" x2="{:.1}" y1="{plot_bottom:.1}" y2="{plot_bottom:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">percentile (log scale of 1 / (1 − p))</text>"#,
        WIDTH - RIGHT,
        WIDTH - RIGHT,
        plot_bottom + 32.0
    );

    for (curve, pts) in curves.iter().zip(&supported) {
        if pts.is_empty() {
            continue;
        }
        let cut = curve.cut_at().unwrap_or(0.0);
        w!(
            out,
            r#"<g style="stroke:{};fill:{}"{}><title>{}: {} samples, shown up to p{}</title>"#,
            curve.color,
            curve.color,
            if curve.dashed {
                r#" stroke-dasharray="7 4""#
            } else {
                ""
            },
            esc(&curve.label),
            format::thousands(curve.samples),
            format::percent(format::round_down_percentile(cut))
        );
        let points: Vec<Option<(f64, f64)>> =
            pts.iter().map(|&(n, us)| Some((x(n), y(us)))).collect();
        out.push_str(&line_paths("spec", &points, None));
        // The end of the curve: the samples support nothing beyond it.
        if let Some(&(n, us)) = pts.last() {
            out.push_str(&dot_path("specend", std::iter::once((x(n), y(us)))));
        }
        out.push_str("</g>");
    }
    if supported.iter().all(Vec::is_empty) {
        w!(
            out,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no phase has enough samples for a percentile</text>"#,
            LEFT + plot_w / 2.0,
            PLOT_TOP + PLOT_HEIGHT / 2.0
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_counts_nines() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(0.0), 0.0);
        assert_eq!(nines_label(0), "0%");
        assert_eq!(nines_label(1), "90%");
        assert_eq!(nines_label(2), "99%");
        assert_eq!(nines_label(3), "99.9%");
        assert_eq!(nines_label(4), "99.99%");
    }

    #[test]
    fn a_curve_stops_where_its_samples_stop_supporting_it() {
        let points: Vec<PercentilePoint> = [0.0, 50.0, 90.0, 99.0, 99.9, 100.0]
            .into_iter()
            .map(|p| PercentilePoint { p, us: 100 })
            .collect();
        let curve = |samples| Curve {
            label: "x".into(),
            color: "#000",
            dashed: false,
            samples,
            points: points.clone(),
        };
        assert_eq!(curve(150).cut_at(), Some(90.0));
        assert_eq!(curve(150).supported().len(), 3);
        assert_eq!(curve(10_000).cut_at(), Some(99.9));
        assert_eq!(curve(5).cut_at(), None);
        assert!(svg("spectrum", "t", &[curve(5)]).contains("no phase has enough samples"));
    }
}
