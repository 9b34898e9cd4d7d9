//! The report of a fleet run (`loadgen --pair ... | --etcd ...`): several pairs driven at
//! once while a campaign upgraded them in waves. It answers, in order: was anything lost
//! anywhere, how long were clients left waiting at worst, how far did the campaign get
//! (waves completed or stopped, pairs rolled back); then the fleet's latency and throughput
//! over time with the waves as bands, one lane per pair with its upgrade's phases, and a
//! table per pair linking to the pair's own report (`pairs/NAME/report.html`).
//!
//! The charts are the run report's (`chart::svg`, the same sections); the lanes are drawn
//! here on the same time axis (`chart::time_axis`), so that a pair's switchover lines up
//! with the fleet's latency above it. A fleet of a hundred pairs keeps one thin lane each,
//! labelled by wave rather than by pair (the names are in the tooltips and the table).

use std::fmt::Write as _;

use super::chart::{self, label_width, Band, LEFT, RIGHT, WIDTH};
use super::format::{self, esc};
use super::*;
use crate::summary::{Fleet, FleetPair, PhaseSummary, Wave};

/// Lanes up to this many pairs are labelled one by one; beyond, by wave.
const NAMED_LANES_MAX: usize = 40;

/// A wave's band: from its first pair's upgrade start to its last pair's end (the run's
/// end while it runs).
fn wave_bands<'a>(fleet: &'a Fleet, names: &'a [String], end_ms: u64) -> Vec<Band<'a>> {
    fleet
        .waves
        .iter()
        .zip(names)
        .filter_map(|(w, name)| {
            let start = w.start_ms?;
            let end = w.end_ms.unwrap_or(end_ms).max(start);
            Some(Band {
                name,
                start_ms: start,
                end_ms: end,
                fallback: w.state == "stopped",
                note: format!(
                    "{} pair{} · {} · {}",
                    w.pairs.len(),
                    if w.pairs.len() == 1 { "" } else { "s" },
                    format::duration(end - start),
                    w.state.replace('_', " ")
                ),
            })
        })
        .collect()
}

fn wave_name(w: &Wave) -> String {
    if w.wave == 1 {
        "wave 1 · canary".to_string()
    } else {
        format!("wave {}", w.wave)
    }
}

fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "upgraded" => "ok",
        "rolled_back" => "warn",
        "failed" => "bad",
        _ => "idle",
    }
}

/// The report of a fleet run; `run.summary.fleet` must be set.
pub fn render_fleet(run: &Run) -> String {
    let empty = Fleet::default();
    let fleet = run.summary.fleet.as_ref().unwrap_or(&empty);
    // The fleet's charts and tables are over its periods (the waves and `steady`), kept in
    // `fleet.periods`; the summary's `phases` are the upgrade's phases over the pairs,
    // which the pair table and the lanes show pair by pair. (Runs written before
    // `periods` had the periods as their `phases`.) The fleet's `timeline.json` is every
    // pair's: the lanes draw it, the charts keep to the waves.
    // The upgrade's phases over the pairs (older runs: none).
    let over_pairs: &[PhaseSummary] = if fleet.periods.is_empty() {
        &[]
    } else {
        &run.summary.phases
    };
    let periods_summary;
    let summary = if fleet.periods.is_empty() {
        run.summary
    } else {
        periods_summary = Summary {
            phases: fleet.periods.clone(),
            ..run.summary.clone()
        };
        &periods_summary
    };
    let run = &Run {
        summary,
        slices: run.slices,
        timeline: None,
        detail: run.detail,
    };
    let frame = Frame::of(run);
    let names: Vec<String> = fleet.waves.iter().map(wave_name).collect();
    let bands = wave_bands(fleet, &names, frame.end);

    let mut body = String::new();
    fleet_verdict(&mut body, summary, fleet, frame.origin, frame.end);
    configuration(&mut body, summary, frame.origin);
    latency_section(&mut body, run, &frame, &bands, &[]);
    throughput_section(&mut body, &frame, &bands, &[]);
    lanes_section(&mut body, fleet, &frame, &bands);
    pair_table(&mut body, fleet, over_pairs, frame.origin);
    phase_table(&mut body, summary, frame.origin);
    spectrum_section(&mut body, summary);
    footer(&mut body, &summary.schema);
    let title = format!(
        "tandem fleet · {} pairs · {} · {}",
        fleet.pairs.len(),
        summary.outcome.replace('_', " "),
        format::utc(frame.origin)
    );
    page(&title, &body)
}

fn fleet_verdict(body: &mut String, summary: &Summary, fleet: &Fleet, origin: u64, end: u64) {
    let duration_ms = if summary.ended_ms > summary.started_ms {
        summary.ended_ms - summary.started_ms
    } else {
        end.saturating_sub(origin)
    };
    let badge = match fleet.campaign_state.as_deref() {
        Some("stopped") => r#"<span class="badge warn">campaign stopped</span>"#.to_string(),
        Some("running") => r#"<span class="badge warn">campaign still running</span>"#.to_string(),
        _ => outcome_badge(&summary.outcome),
    };
    w!(
        body,
        "<header>\n<div class=\"head\"><h1>tandem fleet run</h1>{badge}</div>\n"
    );
    w!(
        body,
        "<p class=\"meta\"><b>{}</b> pairs · started <b>{}</b> · duration <b>{}</b> · {}</p>\n",
        fleet.pairs.len(),
        format::utc(origin),
        format::duration(duration_ms),
        match &fleet.campaign {
            Some(id) => format!(
                "campaign <code>{}</code> <b>{}</b>{}",
                esc(id),
                esc(fleet.campaign_state.as_deref().unwrap_or("?")),
                fleet
                    .campaign_reason
                    .as_ref()
                    .map_or(String::new(), |r| format!(": {}", esc(r)))
            ),
            None =>
                "no campaign record: the waves are the pairs' upgrades grouped where they overlap"
                    .to_string(),
        }
    );
    body.push_str("</header>\n<div class=\"stats\" id=\"verdict\">\n");
    let lost_in: Vec<&FleetPair> = fleet.pairs.iter().filter(|p| p.lost_updates > 0).collect();
    if summary.lost_updates == 0 {
        w!(
            body,
            "<div class=\"stat good\"><span class=\"num\">0 lost</span><span class=\"label\">of {} acknowledged updates over {} pairs, {} verified after the run</span></div>\n",
            format::thousands(summary.acknowledged_updates),
            fleet.pairs.len(),
            format::thousands(summary.verified_updates)
        );
    } else {
        w!(
            body,
            "<div class=\"stat lost\"><span class=\"num\">{} lost</span><span class=\"label\">acknowledged updates missing or stale (of {}), in {}</span></div>\n",
            format::thousands(summary.lost_updates),
            format::thousands(summary.acknowledged_updates),
            esc(&name_list(&lost_in))
        );
    }
    let worst = fleet
        .pairs
        .iter()
        .filter_map(|p| p.worst_gap_ms.map(|g| (p, g)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        Some((p, g)) => {
            w!(
                body,
                "<div class=\"stat\"><span class=\"num\">{} ms</span><span class=\"label\">worst client-visible gap (pair <code>{}</code>; {} switchovers over the fleet)</span></div>\n",
                format::ms(g),
                esc(&p.name),
                summary.switchovers.len()
            );
        }
        None => body.push_str(
            "<div class=\"stat\"><span class=\"num muted\">–</span><span class=\"label\">client-visible gap: no switchover recorded</span></div>\n",
        ),
    }
    let done = fleet
        .waves
        .iter()
        .filter(|w| w.state == "completed")
        .count();
    let stopped: Vec<&Wave> = fleet
        .waves
        .iter()
        .filter(|w| w.state == "stopped")
        .collect();
    let class = if stopped.is_empty() { "" } else { " warnbox" };
    w!(
        body,
        "<div class=\"stat{class}\"><span class=\"num\">{done} / {}</span><span class=\"label\">waves completed{}</span></div>\n",
        fleet.waves.len(),
        match stopped.first() {
            Some(w) => format!("; stopped at wave {}", w.wave),
            None if fleet.waves.is_empty() => "; no pair was upgraded during the run".to_string(),
            None => String::new(),
        }
    );
    let upgraded = fleet
        .pairs
        .iter()
        .filter(|p| p.outcome == "upgraded")
        .count();
    let back: Vec<&FleetPair> = fleet
        .pairs
        .iter()
        .filter(|p| matches!(p.outcome.as_str(), "rolled_back" | "failed"))
        .collect();
    let class = if back.is_empty() { "" } else { " warnbox" };
    w!(
        body,
        "<div class=\"stat{class}\"><span class=\"num\">{}</span><span class=\"label\">pair{} rolled back or failed{} · {upgraded} of {} upgraded</span></div>\n",
        back.len(),
        if back.len() == 1 { "" } else { "s" },
        if back.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&name_list(&back)))
        },
        fleet.pairs.len()
    );
    body.push_str("</div>\n");
}

/// `a, b, c` or `a, b, c and 7 more`.
fn name_list(pairs: &[&FleetPair]) -> String {
    let shown: Vec<&str> = pairs.iter().take(5).map(|p| p.name.as_str()).collect();
    let mut text = shown.join(", ");
    if pairs.len() > shown.len() {
        let _ = write!(text, " and {} more", pairs.len() - shown.len());
    }
    text
}

/// The upgrade phases of the pairs present, in the order a pair goes through them.
fn phase_names(fleet: &Fleet) -> Vec<&str> {
    let order: Vec<&str> = phase::UPGRADE
        .iter()
        .chain(phase::FALLBACK_PATH.iter())
        .copied()
        .collect();
    let mut names: Vec<&str> = Vec::new();
    for p in &fleet.pairs {
        for ph in &p.phases {
            if !names.contains(&ph.name.as_str()) {
                names.push(&ph.name);
            }
        }
    }
    names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(usize::MAX));
    names
}

fn lanes_section(body: &mut String, fleet: &Fleet, frame: &Frame, bands: &[Band]) {
    let n = fleet.pairs.len();
    let names = phase_names(fleet);
    body.push_str("<section>\n<h2>Pairs over time <span class=\"muted\">(one lane per pair: its upgrade's phases)</span></h2>\n<div class=\"legend\">");
    for (i, name) in names.iter().filter(|n| **n != STEADY).enumerate() {
        w!(
            body,
            "<span><span class=\"key box\" style=\"background:{}\"></span><code>{}</code></span>",
            phase_color(name, i),
            esc(name)
        );
    }
    body.push_str("<span><span class=\"key box\" style=\"background:#64748b;opacity:.2\"></span>wave (first upgrade start to last end)</span></div>\n");
    if n > NAMED_LANES_MAX {
        w!(
            body,
            "<p class=\"note\">{n} pairs: lanes are labelled by wave; hover a lane for its pair, or find it in the table below.</p>\n"
        );
    }
    body.push_str(&lanes_svg(fleet, frame, bands));
    body.push_str("\n</section>\n");
}

/// One lane per pair, grouped by wave, on the charts' time axis.
fn lanes_svg(fleet: &Fleet, frame: &Frame, bands: &[Band]) -> String {
    let n = fleet.pairs.len();
    let named = n <= NAMED_LANES_MAX;
    let row_h: f64 = if n <= 16 {
        18.0
    } else if named {
        13.0
    } else {
        (700.0 / n as f64).clamp(4.0, 8.0)
    };
    // A gap between waves.
    let group_gap = if named { 6.0 } else { 4.0 };
    let end_ms = frame.end.max(frame.origin.saturating_add(1000));
    let span_ms = (end_ms - frame.origin) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x =
        |t_ms: u64| LEFT + (t_ms.saturating_sub(frame.origin) as f64 / span_ms).min(1.0) * plot_w;

    // Rows: y of each pair, wave by wave (the pairs come sorted by wave).
    let mut ys = Vec::with_capacity(n);
    let mut groups: Vec<(Option<usize>, f64, f64)> = Vec::new();
    let mut y = 4.0;
    for (i, p) in fleet.pairs.iter().enumerate() {
        if i > 0 && fleet.pairs[i - 1].wave != p.wave {
            y += group_gap;
        }
        match groups.last_mut() {
            Some(g) if g.0 == p.wave => g.2 = y + row_h,
            _ => groups.push((p.wave, y, y + row_h)),
        }
        ys.push(y);
        y += row_h;
    }
    let plot_bottom = y + 4.0;
    let height = plot_bottom + 30.0;
    let mut out = String::new();
    w!(
        out,
        r#"<svg id="lanes" class="chart" viewBox="0 0 {WIDTH} {height:.0}" width="100%" role="img" aria-label="one lane per pair: its upgrade's phases over time" preserveAspectRatio="xMinYMin meet">"#
    );
    out.push_str("<title>Pairs over time: one lane per pair, its upgrade's phases</title>");
    let bars: Vec<(f64, f64)> = bands.iter().map(|b| (x(b.start_ms), x(b.end_ms))).collect();
    chart::band_rects(&mut out, bands, &bars, 0.0, plot_bottom);
    let label_room = LEFT - 8.0;
    for (i, p) in fleet.pairs.iter().enumerate() {
        let ry = ys[i];
        if i % 2 == 0 && named {
            w!(
                out,
                r#"<rect class="lanerow" x="{LEFT}" y="{ry:.1}" width="{plot_w:.1}" height="{row_h:.1}"/>"#
            );
        }
        let tip = pair_tip(p, frame.origin);
        w!(out, "<g class=\"pairlane\"><title>{}</title>", esc(&tip));
        if named {
            let mut label = p.name.clone();
            if label_width(&label) > label_room {
                let mut chars: Vec<char> = p.name.chars().collect();
                while chars.len() > 2
                    && label_width(&format!("{}…", chars.iter().collect::<String>())) > label_room
                {
                    chars.pop();
                }
                label = format!("{}…", chars.iter().collect::<String>());
            }
            w!(
                out,
                r#"<text class="lanename {}" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                outcome_class(&p.outcome),
                LEFT - 6.0,
                ry + row_h / 2.0 + 4.0,
                esc(&label)
            );
        }
        // A thin line: the pair under load; the phases of its upgrade on it.
        let mid = ry + row_h / 2.0;
        w!(
            out,
            r#"<line class="laneidle" x1="{LEFT}" x2="{:.1}" y1="{mid:.1}" y2="{mid:.1}"/>"#,
            WIDTH - RIGHT
        );
        let pad = if row_h >= 10.0 { 2.0 } else { 0.5 };
        for (j, ph) in p.phases.iter().enumerate() {
            if ph.name == STEADY {
                continue;
            }
            let (x0, x1) = (x(ph.start_ms), x(ph.end_ms.max(ph.start_ms)));
            w!(
                out,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
                ry + pad,
                (x1 - x0).max(1.0),
                row_h - 2.0 * pad,
                phase_color(&ph.name, j),
                esc(&format!(
                    "{} · {} · {}",
                    p.name,
                    ph.name,
                    format::ms_duration(ph.end_ms.saturating_sub(ph.start_ms))
                ))
            );
        }
        if matches!(p.outcome.as_str(), "rolled_back" | "failed") {
            if let Some(end) = p.upgrade_end_ms {
                let what = if p.outcome == "failed" {
                    "failed"
                } else {
                    "rolled back"
                };
                if named {
                    w!(
                        out,
                        r#"<text class="lanemark" x="{:.1}" y="{:.1}">{what}</text>"#,
                        x(end) + 3.0,
                        mid + 4.0
                    );
                } else {
                    // A hundred lanes: a mark, not a word, on each.
                    w!(
                        out,
                        r#"<rect class="lanefbmark" x="{:.1}" y="{ry:.1}" width="4" height="{row_h:.1}"><title>{what}</title></rect>"#,
                        x(end) + 2.0
                    );
                }
            }
        }
        out.push_str("</g>");
    }
    // Wave labels: beside the lanes when the lanes are unnamed, else a hairline between.
    let mut label_floor = f64::NEG_INFINITY;
    for (k, &(wave, top, bottom)) in groups.iter().enumerate() {
        if k > 0 {
            let ly = top - group_gap / 2.0;
            w!(
                out,
                r#"<line class="wavesep" x1="4" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}"/>"#,
                WIDTH - RIGHT
            );
        }
        if !named {
            // Two lines where the wave's lanes have room, one otherwise, each below the
            // one before: short waves of a few pairs never print over each other.
            let count = fleet.pairs.iter().filter(|p| p.wave == wave).count();
            let name = match wave {
                Some(w) => format!("wave {w}"),
                None => "no wave".to_string(),
            };
            let two = bottom - top >= 24.0;
            let wanted = (top + bottom) / 2.0 + if two { -2.0 } else { 4.0 };
            let y = wanted.max(label_floor + 11.0);
            w!(
                out,
                r#"<text class="tick" x="{:.1}" y="{y:.1}" text-anchor="end"><title>{count} pairs</title>{}</text>"#,
                LEFT - 6.0,
                esc(&name)
            );
            label_floor = y;
            if two {
                w!(
                    out,
                    r#"<text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{count} pairs</text>"#,
                    LEFT - 6.0,
                    y + 12.0
                );
                label_floor = y + 12.0;
            }
        }
    }
    chart::time_axis(&mut out, span_ms, plot_bottom);
    out.push_str("</svg>");
    out
}

fn pair_tip(p: &FleetPair, origin: u64) -> String {
    let mut tip = format!(
        "{} · wave {} · {}",
        p.name,
        p.wave.map_or("–".to_string(), |w| w.to_string()),
        p.outcome.replace('_', " ")
    );
    if let Some(start) = p.upgrade_start_ms {
        let _ = write!(
            tip,
            " · upgrade from {} s",
            format::offset_seconds(start, origin)
        );
        if let Some(end) = p.upgrade_end_ms {
            let _ = write!(tip, " to {} s", format::offset_seconds(end, origin));
        }
    }
    if let Some(g) = p.worst_gap_ms {
        let _ = write!(tip, " · worst gap {} ms", format::ms(g));
    }
    if p.simplex_ms > 0 {
        let _ = write!(
            tip,
            " · one engine alone {} ms",
            format::thousands(p.simplex_ms)
        );
    }
    tip
}

/// Microseconds as bare milliseconds, three significant figures at most (`0.607`, `12.4`):
/// the pair table's p99 columns, whose head says the unit.
fn bare_ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format::thousands(ms.round() as u64)
    }
}

/// A count as the narrow table writes it: `1k`, `10k`, `500`.
fn kilo(n: u64) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        format::thousands(n)
    }
}

/// A phase's column head in the pair table: short, so that twelve phases fit.
fn short_phase(name: &str) -> String {
    match name {
        phase::BASELINE => "baseline".into(),
        phase::B_OUT_OF_SERVICE => "B out".into(),
        phase::B_CATCH_UP => "B catch-up".into(),
        phase::SWITCHOVER_TO_B => "to B".into(),
        phase::EVALUATION => "evaluation".into(),
        phase::A_OUT_OF_SERVICE => "A out".into(),
        phase::A_CATCH_UP => "A catch-up".into(),
        phase::FEATURES_ENABLED => "features".into(),
        phase::FALLBACK => "fallback".into(),
        phase::B_RELOAD_PREVIOUS => "B reload".into(),
        phase::B_CATCH_UP_PREVIOUS => "B catch-up (prev.)".into(),
        phase::RESTORED => "restored".into(),
        other => esc(&other.replace('_', " ")),
    }
}

fn pair_table(body: &mut String, fleet: &Fleet, over_pairs: &[PhaseSummary], origin: u64) {
    let names = phase_names(fleet);
    let shown: Vec<&str> = names.iter().copied().filter(|n| *n != STEADY).collect();
    body.push_str("<section class=\"table\">\n<h2>Pairs</h2>\n<p class=\"note\">Right of the line: the p99 of each phase of the pair's upgrade (hover a head for the phase; its own report has the rest); the last row, every pair's requests while it was in that phase. A pair's name opens its report.</p>\n<div class=\"scroll\"><table id=\"pairs\" class=\"compact\">\n<thead><tr>");
    if !shown.is_empty() {
        w!(
            body,
            "<th colspan=\"7\"></th><th class=\"group sep\" colspan=\"{}\">p99 by phase, ms</th></tr>\n<tr>",
            shown.len()
        );
    }
    body.push_str("<th class=\"l\">pair</th><th>wave</th><th class=\"l\">outcome</th><th>acknow&shy;ledged</th><th>lost</th><th>switch&shy;overs</th><th>worst gap&nbsp;ms</th>");
    for (i, name) in shown.iter().enumerate() {
        w!(
            body,
            "<th class=\"{}\" title=\"p99 in {}\">{}</th>",
            if i == 0 { "sep" } else { "" },
            esc(name),
            short_phase(name)
        );
    }
    body.push_str("</tr></thead>\n<tbody>\n");
    for p in &fleet.pairs {
        let fb = matches!(p.outcome.as_str(), "rolled_back" | "failed");
        w!(body, "<tr{}>", if fb { " class=\"fb\"" } else { "" });
        w!(
            body,
            "<td class=\"l name\" title=\"{}\"><a href=\"{}/report.html\">{}</a></td>",
            esc(&pair_tip(p, origin)),
            esc(&p.dir),
            esc(&p.name)
        );
        w!(
            body,
            "<td>{}</td>",
            p.wave.map_or("–".to_string(), |w| w.to_string())
        );
        w!(
            body,
            "<td class=\"l\"><span class=\"badge {}\"{}>{}</span></td>",
            outcome_class(&p.outcome),
            p.message
                .as_ref()
                .map_or(String::new(), |m| format!(" title=\"{}\"", esc(m))),
            esc(&p.outcome.replace('_', " "))
        );
        w!(
            body,
            "<td>{}</td>",
            format::thousands(p.acknowledged_updates)
        );
        if p.lost_updates > 0 {
            w!(
                body,
                "<td class=\"bad\">{}</td>",
                format::thousands(p.lost_updates)
            );
        } else {
            body.push_str("<td class=\"muted\">0</td>");
        }
        w!(body, "<td>{}</td>", p.switchovers);
        w!(
            body,
            "<td>{}</td>",
            p.worst_gap_ms.map_or("–".to_string(), format::ms)
        );
        for (i, name) in shown.iter().enumerate() {
            let class = if i == 0 { "sep" } else { "" };
            match p.phases.iter().find(|ph| ph.name == *name) {
                Some(ph) => body.push_str(&percentile_cell_as(
                    ph,
                    0.99,
                    ph.latency_us.p99,
                    class,
                    (bare_ms, kilo),
                )),
                None => {
                    w!(body, "<td class=\"muted {class}\">·</td>");
                }
            }
        }
        body.push_str("</tr>\n");
    }
    if fleet.pairs.is_empty() {
        body.push_str("<tr><td class=\"none\" colspan=\"7\">no pairs recorded</td></tr>\n");
    }
    body.push_str("</tbody>");
    if !over_pairs.is_empty() && !fleet.pairs.is_empty() {
        // The fleet: the pairs' sums, the worst gap, each phase over the pairs.
        let sum = |f: fn(&FleetPair) -> u64| fleet.pairs.iter().map(f).sum::<u64>();
        let lost = sum(|p| p.lost_updates);
        w!(
            body,
            "\n<tfoot><tr id=\"over-pairs\"><td class=\"l name\" title=\"every pair's requests while it was in each phase, their histograms added\">all pairs</td><td></td><td></td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td>",
            format::thousands(sum(|p| p.acknowledged_updates)),
            if lost > 0 { "bad" } else { "muted" },
            format::thousands(lost),
            fleet.pairs.iter().map(|p| p.switchovers).sum::<usize>(),
            fleet
                .pairs
                .iter()
                .filter_map(|p| p.worst_gap_ms)
                .max_by(f64::total_cmp)
                .map_or("–".to_string(), format::ms)
        );
        for (i, name) in shown.iter().enumerate() {
            let class = if i == 0 { "sep" } else { "" };
            match over_pairs.iter().find(|ph| ph.name == *name) {
                Some(ph) => body.push_str(&percentile_cell_as(
                    ph,
                    0.99,
                    ph.latency_us.p99,
                    class,
                    (bare_ms, kilo),
                )),
                None => {
                    w!(body, "<td class=\"muted {class}\">·</td>");
                }
            }
        }
        body.push_str("</tr></tfoot>");
    }
    body.push_str("</table></div>\n");
    statistics_note(body, "");
    body.push_str("</section>\n");
}
