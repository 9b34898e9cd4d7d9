//! A switchover at millisecond resolution: the second around it as the clients lived it.
//! Top, requests per millisecond: intended (the open-loop schedule, a flat line unless the
//! load generator itself fell behind) and replies (by arrival: the gap is where they stop,
//! the burst after it the backlog). Bottom, the slowest request intended in each
//! millisecond, on a log axis: the diagonal of requests that waited out the switchover.
//! The step-up (signal to acknowledgement) is shaded, its start and end marked.

use std::fmt::Write as _;

use super::w;

use super::chart::{label_width, lanes, line_paths, linear_axis, log_axis, y_ticks};
use super::format::{self, esc};
use crate::run::Zoom;

pub const WIDTH: f64 = 540.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 18.0;
const COUNT_HEIGHT: f64 = 110.0;
const PANEL_GAP: f64 = 24.0;
const LATENCY_HEIGHT: f64 = 100.0;
const AXIS_HEIGHT: f64 = 30.0;
const LANE_ROW_HEIGHT: f64 = 17.0;

/// The longest bucket a zoom is drawn with: detail.json's buckets are a millisecond, and a
/// bucket longer than a minute (or of no length) is a file that does not say what it means.
pub const BUCKET_MS_MAX: u64 = 60_000;

/// Whether `zoom`'s bucket length can be drawn (see [`BUCKET_MS_MAX`]).
pub fn drawable(zoom: &Zoom) -> bool {
    (1..=BUCKET_MS_MAX).contains(&zoom.bucket_ms)
}

/// The run of buckets without a reply nearest the step-up (the longest among those that
/// touch it), as (first bucket, count): the gap the clients saw, as the buckets show it.
/// At a low rate replies come in bursts and short silences are everywhere; the one that
/// matters is the one at the switchover.
pub fn silence(zoom: &Zoom) -> Option<(usize, usize)> {
    let bucket_ms = zoom.bucket_ms.max(1) as f64;
    let at = zoom.at_ms as f64 - zoom.from_ms as f64;
    let end = (zoom.end_ms.max(zoom.at_ms) as f64 - zoom.from_ms as f64).max(at + bucket_ms);
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut run_start = None;
    for (i, b) in zoom.buckets.iter().enumerate() {
        match (b.replied == 0, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                runs.push((s, i - s));
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        runs.push((s, zoom.buckets.len() - s));
    }
    let distance = |&(s, n): &(usize, usize)| {
        let (r0, r1) = (s as f64 * bucket_ms, (s + n) as f64 * bucket_ms);
        (at - r1).max(r0 - end).max(0.0)
    };
    runs.into_iter().min_by(|a, b| {
        distance(a)
            .total_cmp(&distance(b))
            .then_with(|| b.1.cmp(&a.1))
    })
}

/// A phase drawn over a zoom: name, start and end (ms since the epoch), colour.
pub struct ZoomPhase<'a> {
    pub name: &'a str,
    pub start_ms: u64,
    pub end_ms: u64,
    pub color: &'static str,
}

/// The buckets worth drawing: the step-up, the silence at it, and the phases that began in
/// the quarter second before it (the standby's stop, its catch-up), with room around them,
/// so that an 8 ms gap is not a sliver of a one-second window.
pub fn window(zoom: &Zoom, gap_ms: f64, phases: &[ZoomPhase]) -> std::ops::Range<usize> {
    let bucket_ms = zoom.bucket_ms.max(1) as f64;
    let rel = |t_ms: u64| t_ms as f64 - zoom.from_ms as f64;
    let at = rel(zoom.at_ms);
    let mut first = at;
    let mut last = rel(zoom.end_ms.max(zoom.at_ms));
    if let Some((s, n)) = silence(zoom) {
        first = first.min(s as f64 * bucket_ms);
        last = last.max((s + n) as f64 * bucket_ms);
    }
    if gap_ms.is_finite() {
        last = last.max(at + gap_ms);
    }
    for p in phases {
        let start = rel(p.start_ms);
        if start < at && start >= at - 250.0 {
            first = first.min(start);
        }
        let end = rel(p.end_ms);
        if end > at && end <= at + 250.0 && start <= last {
            last = last.max(end);
        }
    }
    let span = (last - first).max(1.0);
    let from = ((first - (span / 2.0).max(20.0)) / bucket_ms)
        .floor()
        .max(0.0) as usize;
    let to = ((last + span.max(50.0)) / bucket_ms).ceil().max(0.0) as usize;
    from.min(zoom.buckets.len())..to.min(zoom.buckets.len())
}

/// The zoom chart of `zoom`'s buckets in `range` (see [`window`]); `end_label` marks
/// `end_ms` (`acked` for a step-up the timeline recorded). Arithmetic saturates: a zoom's
/// times come from a file.
pub fn svg(
    id: &str,
    label: &str,
    zoom: &Zoom,
    range: std::ops::Range<usize>,
    phases: &[ZoomPhase],
    end_label: &str,
) -> String {
    let bucket_ms = zoom.bucket_ms.clamp(1, BUCKET_MS_MAX);
    let silent = silence(zoom).and_then(|(s, n)| {
        let (s, e) = (s.max(range.start), (s + n).min(range.end));
        (e > s).then(|| (s - range.start, e - s))
    });
    let shown = Zoom {
        from_ms: zoom
            .from_ms
            .saturating_add((range.start as u64).saturating_mul(bucket_ms)),
        buckets: zoom.buckets[range].to_vec(),
        ..zoom.clone()
    };
    let zoom = &shown;
    let n = zoom.buckets.len() as u64;
    let span_ms = n.saturating_mul(bucket_ms).max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    // Relative to the switchover's start, in ms (may be negative: the buckets begin before).
    let rel = |t_ms: u64| t_ms as f64 - zoom.at_ms as f64;
    let from_rel = rel(zoom.from_ms);
    let x = |r: f64| LEFT + ((r - from_rel) / span_ms).clamp(0.0, 1.0) * plot_w;
    // The phases in lanes above the panels, as on the time charts.
    let in_view: Vec<&ZoomPhase> = phases
        .iter()
        .filter(|p| rel(p.end_ms) > from_rel && rel(p.start_ms) < from_rel + span_ms)
        .collect();
    let bars: Vec<(f64, f64)> = in_view
        .iter()
        .map(|p| (x(rel(p.start_ms)), x(rel(p.end_ms.max(p.start_ms)))))
        .collect();
    let widths: Vec<f64> = in_view.iter().map(|p| label_width(p.name)).collect();
    let lane = lanes(&bars, &widths, LEFT, WIDTH - RIGHT);
    let rows = lane.iter().map(|l| l.row + 1).max().unwrap_or(0);
    let lanes_h = rows as f64 * LANE_ROW_HEIGHT;
    let count_top = TOP + lanes_h + if rows > 0 { 6.0 } else { 0.0 };
    let count_bottom = count_top + COUNT_HEIGHT;
    let lat_top = count_bottom + PANEL_GAP;
    let lat_bottom = lat_top + LATENCY_HEIGHT;
    let height = lat_bottom + AXIS_HEIGHT;

    let per_ms = |v: u32| f64::from(v) / bucket_ms as f64;
    let count_max = zoom
        .buckets
        .iter()
        .map(|b| per_ms(b.ops.max(b.replied)))
        .fold(0.0f64, f64::max);
    let counts = linear_axis(count_max);
    let cy = |v: f64| count_bottom - counts.fraction(v) * COUNT_HEIGHT;
    let (lat_min, lat_max) = zoom
        .buckets
        .iter()
        .filter(|b| b.max_us > 0)
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), b| {
            (lo.min(b.max_us as f64), hi.max(b.max_us as f64))
        });
    let mut lat = log_axis(lat_min, lat_max);
    // Three ticks at most in a small panel: every other decade.
    if lat.ticks.len() > 4 {
        let keep: Vec<f64> = lat.ticks.iter().copied().step_by(2).collect();
        lat.ticks = keep;
    }
    let ly = |us: f64| lat_bottom - lat.fraction(us) * LATENCY_HEIGHT;

    let mut out = String::new();
    w!(
        out,
        r#"<svg id="{}" class="chart zoom" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" aria-label="{}" preserveAspectRatio="xMinYMin meet"><title>{}</title>"#,
        esc(id),
        esc(label),
        esc(label)
    );

    for (p, item) in in_view.iter().zip(&lane) {
        let ry = item.row as f64 * LANE_ROW_HEIGHT + 2.0;
        w!(
            out,
            r#"<g><title>{}</title><rect x="{:.1}" y="{ry:.1}" width="{:.1}" height="{:.1}" rx="2" style="fill:{};fill-opacity:.35"/><line class="gridfaint" x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}"/><text class="bandlabel" x="{:.1}" y="{:.1}" text-anchor="{}">{}</text></g>"#,
            esc(p.name),
            item.bar_x0,
            (item.bar_x1 - item.bar_x0).max(2.0),
            LANE_ROW_HEIGHT - 4.0,
            p.color,
            item.bar_x0,
            item.bar_x0,
            ry + LANE_ROW_HEIGHT - 4.0,
            count_top + COUNT_HEIGHT + PANEL_GAP + LATENCY_HEIGHT,
            item.label_x,
            ry + LANE_ROW_HEIGHT - 7.0,
            item.anchor,
            esc(p.name)
        );
    }

    // The step-up, shaded across both panels, and the silence the buckets show.
    let (s0, s1) = (x(0.0), x(rel(zoom.end_ms.max(zoom.at_ms))));
    if let Some((first, len)) = silent {
        let g0 = x(from_rel + first as f64 * bucket_ms as f64);
        let g1 = x(from_rel + (first + len) as f64 * bucket_ms as f64);
        w!(
            out,
            r#"<rect class="silence" x="{g0:.1}" y="{count_top}" width="{:.1}" height="{:.1}"><title>no replies for {} ms</title></rect>"#,
            (g1 - g0).max(1.0),
            lat_bottom - count_top,
            (len as u64).saturating_mul(bucket_ms)
        );
    }
    w!(
        out,
        r#"<rect class="stepup" x="{s0:.1}" y="{count_top}" width="{:.1}" height="{:.1}"/>"#,
        (s1 - s0).max(1.0),
        lat_bottom - count_top
    );

    let edges = (LEFT, WIDTH - RIGHT);
    y_ticks(
        &mut out,
        &counts.ticks,
        cy,
        edges,
        LEFT - 6.0,
        format::rate_tick,
    );
    y_ticks(
        &mut out,
        &lat.ticks,
        ly,
        edges,
        LEFT - 6.0,
        format::latency_tick_us,
    );
    w!(
        out,
        r#"<text class="paneltitle" x="{LEFT}" y="{:.1}">requests per ms</text><text class="paneltitle" x="{LEFT}" y="{:.1}">slowest request per ms (log)</text>"#,
        count_top - 5.0,
        lat_top - 4.0
    );

    // Replies per ms as a filled step, intended per ms as a line over it.
    let step = |v: &dyn Fn(usize) -> f64| -> Vec<Option<(f64, f64)>> {
        let mut pts = Vec::with_capacity(zoom.buckets.len() * 2);
        for i in 0..zoom.buckets.len() {
            let r0 = from_rel + i as f64 * bucket_ms as f64;
            let value = v(i);
            pts.push(Some((x(r0), value)));
            pts.push(Some((x(r0 + bucket_ms as f64), value)));
        }
        pts
    };
    let replied = step(&|i| cy(per_ms(zoom.buckets[i].replied)));
    out.push_str(&line_paths("zreplied", &replied, Some(count_bottom)));
    let intended = step(&|i| cy(per_ms(zoom.buckets[i].ops)));
    out.push_str(&line_paths("zintended", &intended, None));
    for (i, b) in zoom
        .buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.errors > 0)
    {
        let r0 = from_rel + i as f64 * bucket_ms as f64;
        let top = cy(per_ms(b.errors)).min(count_bottom - 2.0);
        w!(
            out,
            r#"<rect class="err" x="{:.1}" y="{top:.1}" width="{:.1}" height="{:.1}"/>"#,
            x(r0),
            (x(r0 + bucket_ms as f64) - x(r0)).max(1.0),
            count_bottom - top
        );
    }
    let slowest: Vec<Option<(f64, f64)>> = zoom
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (b.max_us > 0).then(|| {
                let r = from_rel + i as f64 * bucket_ms as f64 + bucket_ms as f64 / 2.0;
                (x(r), ly(b.max_us as f64))
            })
        })
        .collect();
    out.push_str(&line_paths("zmax", &slowest, None));

    // Marks of the step-up, over the data.
    w!(
        out,
        r#"<line class="stepupline" x1="{s0:.1}" x2="{s0:.1}" y1="{count_top}" y2="{lat_bottom:.1}"/><line class="stepupline" x1="{s1:.1}" x2="{s1:.1}" y1="{count_top}" y2="{lat_bottom:.1}"/>"#
    );
    w!(
        out,
        r#"<text class="stepuplabel" x="{:.1}" y="{:.1}" text-anchor="end">step-up</text><text class="stepuplabel" x="{:.1}" y="{:.1}" text-anchor="start">{}</text>"#,
        s0 - 3.0,
        count_top + 11.0,
        s1 + 3.0,
        count_top + 11.0,
        esc(end_label)
    );

    // Time axis: ms from the switchover's start.
    let step_ms = [
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 250.0, 500.0, 1000.0,
    ]
    .into_iter()
    .find(|s| span_ms / s <= 8.0)
    .unwrap_or(span_ms / 5.0);
    let mut t = (from_rel / step_ms).ceil() * step_ms;
    while t <= from_rel + span_ms + 0.01 {
        let tx = x(t);
        let text = if t == 0.0 {
            "0".to_string()
        } else {
            format!("{}{} ms", if t > 0.0 { "+" } else { "−" }, t.abs())
        };
        w!(
            out,
            r#"<line class="axis" x1="{tx:.1}" x2="{tx:.1}" y1="{lat_bottom:.1}" y2="{:.1}"/><text class="tick" x="{tx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            lat_bottom + 5.0,
            lat_bottom + 18.0,
            text
        );
        t += step_ms;
    }
    w!(
        out,
        r#"<line class="axis" x1="{LEFT}" x2="{:.1}" y1="{count_bottom:.1}" y2="{count_bottom:.1}"/><line class="axis" x1="{LEFT}" x2="{:.1}" y1="{lat_bottom:.1}" y2="{lat_bottom:.1}"/>"#,
        WIDTH - RIGHT,
        WIDTH - RIGHT
    );
    if zoom.buckets.is_empty() {
        w!(
            out,
            r#"<text class="empty" x="{:.1}" y="{:.1}" text-anchor="middle">no buckets recorded around this switchover</text>"#,
            LEFT + plot_w / 2.0,
            count_top + COUNT_HEIGHT / 2.0
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::ZoomBucket;

    #[test]
    fn the_silence_is_the_one_at_the_step_up() {
        let b = |replied| ZoomBucket {
            ops: 5,
            replied,
            errors: 0,
            max_us: 100,
        };
        let zoom = Zoom {
            kind: "planned".into(),
            at_ms: 994,
            end_ms: 996,
            from_ms: 990,
            bucket_ms: 1,
            buckets: vec![b(5), b(0), b(5), b(0), b(0), b(0), b(9), b(0)],
        };
        assert_eq!(silence(&zoom), Some((3, 3)));
        assert_eq!(window(&zoom, 3.0, &[]), 0..8);
        let phases = [ZoomPhase {
            name: "switchover_to_b",
            start_ms: 992,
            end_ms: 999,
            color: "#000",
        }];
        let html = svg("zoom-1", "t", &zoom, 0..8, &phases, "acked");
        assert!(html.contains(">switchover_to_b</text>"));
        assert!(html.contains("no replies for 3 ms"));
        assert!(!html.contains("NaN"));
        let empty = Zoom {
            buckets: Vec::new(),
            ..zoom.clone()
        };
        assert_eq!(silence(&empty), None);
        assert_eq!(window(&empty, 3.0, &phases), 0..0);
        assert!(svg("zoom-1", "t", &empty, 0..0, &[], "acked").contains("no buckets"));
        // Times at the end of the clock: nothing overflows.
        let late = Zoom {
            at_ms: u64::MAX - 2,
            end_ms: u64::MAX,
            from_ms: u64::MAX - 6,
            bucket_ms: BUCKET_MS_MAX,
            ..zoom
        };
        let html = svg("zoom-1", "t", &late, 0..8, &[], "found");
        assert!(!html.contains("NaN"));
    }
}
