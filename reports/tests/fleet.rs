//! The report of a fleet run (`tests/fixtures/fleet`, recorded from a real fleet run: three
//! pairs, a canary wave and a wave of two in which one pair rolled back): the verdict over
//! the fleet, the waves as bands, one lane per pair, the pair table linking to each pair's
//! own report, every pair's run a run of its own, and a hundred pairs still readable.

mod common;

use common::{assert_self_contained, esc, fleet_fixture, ms, thousands, TempDir};
use reports::html::{render_fleet, Run};
use reports::summary::{Fleet, Summary};

fn fleet_of(summary: &Summary) -> &Fleet {
    summary.fleet.as_ref().expect("a fleet run")
}

#[test]
fn the_fleet_report_shows_the_verdict_the_waves_and_a_lane_per_pair() {
    let work = TempDir::new("fleet");
    let run = fleet_fixture(&work.path().join("fleet"));
    let summary = run.read_summary().unwrap();
    let fleet = fleet_of(&summary);
    assert!(fleet.pairs.len() >= 2, "the fixture drives several pairs");

    // Every pair's directory is a run of its own, with its own report.
    for (name, pair) in run.fleet_pairs().unwrap() {
        let html = std::fs::read_to_string(pair.render_report().unwrap()).unwrap();
        assert!(html.contains("<title>tandem run · "), "{name}");
    }
    let html = std::fs::read_to_string(run.render_report().unwrap()).unwrap();
    assert_self_contained("fleet", &html);
    assert!(html.contains(&format!(
        "<title>tandem fleet · {} pairs · ",
        fleet.pairs.len()
    )));

    // The verdict: lost updates over the fleet, the worst gap and its pair, the waves, the
    // pairs rolled back.
    assert_eq!(summary.lost_updates, 0);
    assert!(html.contains(&format!(
        "0 lost</span><span class=\"label\">of {} acknowledged updates over {} pairs",
        thousands(summary.acknowledged_updates),
        fleet.pairs.len()
    )));
    let (worst, gap) = fleet
        .pairs
        .iter()
        .filter_map(|p| p.worst_gap_ms.map(|g| (p, g)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("switchovers in the fixture");
    assert!(
        html.contains(&format!(
            "{} ms</span><span class=\"label\">worst client-visible gap (pair <code>{}</code>",
            ms(gap),
            esc(&worst.name)
        )),
        "worst gap"
    );
    let done = fleet
        .waves
        .iter()
        .filter(|w| w.state == "completed")
        .count();
    assert!(html.contains(&format!(
        "{done} / {}</span><span class=\"label\">waves completed",
        fleet.waves.len()
    )));
    let back: Vec<&str> = fleet
        .pairs
        .iter()
        .filter(|p| p.outcome == "rolled_back")
        .map(|p| p.name.as_str())
        .collect();
    assert!(!back.is_empty(), "the fixture has a pair that rolled back");
    if let Some(w) = fleet.waves.iter().find(|w| w.state == "stopped") {
        assert!(html.contains(&format!("stopped at wave {}", w.wave)));
    }
    assert!(html.contains(&format!(
        "{}</span><span class=\"label\">pair{} rolled back or failed ({})",
        back.len(),
        if back.len() == 1 { "" } else { "s" },
        back.join(", ")
    )));

    // The waves are bands of the fleet's charts, and lanes span them.
    let latency = &html[html.find("id=\"latency\"").unwrap()..];
    let latency = &latency[..latency.find("</svg>").unwrap()];
    for w in &fleet.waves {
        let name = if w.wave == 1 {
            "wave 1 · canary".to_string()
        } else {
            format!("wave {}", w.wave)
        };
        assert!(
            latency.contains(&format!("<title>{name}</title>")),
            "{name} band"
        );
    }
    let lanes = &html[html.find("<svg id=\"lanes\"").expect("the lanes")..];
    let lanes = &lanes[..lanes.find("</svg>").unwrap()];
    assert_eq!(
        lanes.matches("class=\"pairlane\"").count(),
        fleet.pairs.len()
    );
    for p in &fleet.pairs {
        assert!(
            lanes.contains(&format!(">{}</text>", esc(&p.name))),
            "{}",
            p.name
        );
        for phase in p.phases.iter().filter(|ph| ph.name != "steady") {
            assert!(
                lanes.contains(&format!("{} · {} · ", esc(&p.name), phase.name)),
                "{} {}",
                p.name,
                phase.name
            );
        }
    }

    // The table: a row per pair, linking to its report.
    let table = &html[html.find("id=\"pairs\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    for p in &fleet.pairs {
        assert!(table.contains(&format!("href=\"pairs/{}/report.html\"", esc(&p.name))));
    }
    let rows = &table[table.find("<tbody>").unwrap()..table.find("</tbody>").unwrap()];
    assert_eq!(rows.matches("<tr").count(), fleet.pairs.len());
    // Its last row: the fleet over the pairs, each upgrade phase's p99 from the summary's
    // phases (every pair's requests while it was in that phase).
    let foot = &table[table.find("<tfoot>").expect("the fleet's row")..];
    assert!(foot.contains(">all pairs</td>"));
    assert!(foot.contains(&format!(
        "<td>{}</td>",
        thousands(summary.acknowledged_updates)
    )));
    let baseline = summary
        .phases
        .iter()
        .find(|p| p.name == "baseline")
        .unwrap();
    assert!(
        foot.contains(&format!(
            ">{:.3}</td>",
            baseline.latency_us.p99 as f64 / 1000.0
        )) || foot.contains(&format!(
            ">{:.2}</td>",
            baseline.latency_us.p99 as f64 / 1000.0
        )) || foot.contains("n&lt;1k"),
        "{foot}"
    );

    // The fleet's periods (the waves and `steady`) are its charts' and its period table.
    let periods = &html[html.find("id=\"phases\"").expect("the period table")..];
    let periods = &periods[..periods.find("</table>").unwrap()];
    assert!(!fleet.periods.is_empty());
    for p in &fleet.periods {
        assert!(periods.contains(&format!(">{}</", p.name)), "{}", p.name);
    }
    assert!(!periods.contains(">b_out_of_service</"));
    for id in ["latency", "throughput", "lanes", "spectrum"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }

    // The fleet run holds as a run of its own (the upgrade's phases over the pairs, every
    // pair's switchovers named, the fleet's timeline), and each pair's run holds.
    assert_eq!(run.check().unwrap(), Vec::<String>::new());
    let names: Vec<&str> = summary.phases.iter().map(|p| p.name.as_str()).collect();
    for name in reports::timeline::phase::UPGRADE {
        assert!(names.contains(&name), "{name}: {names:?}");
    }
    assert!(names.contains(&"fallback"), "{names:?}");
    assert!(summary.switchovers.iter().all(|w| w.pair.is_some()));
    let timeline = run.read_timeline().unwrap();
    for p in &fleet.pairs {
        assert!(
            timeline
                .events
                .iter()
                .any(|e| e.pair.as_deref() == Some(p.name.as_str())),
            "{}",
            p.name
        );
    }
    // Without its timeline, or with a pair's phase missing, the top level does not hold.
    std::fs::remove_file(run.timeline_path()).unwrap();
    assert!(run
        .check()
        .unwrap()
        .contains(&"no timeline.json".to_string()));
}

/// The fixture's pairs copied into `n` pairs over waves of 1, 4, 15 and the rest.
fn hundred(summary: &Summary, n: usize) -> Summary {
    let mut big = summary.clone();
    let fleet = big.fleet.as_mut().unwrap();
    let pattern = fleet.pairs.clone();
    fleet.pairs = (0..n)
        .map(|i| {
            let mut p = pattern[i % pattern.len()].clone();
            p.name = format!("site-{i:03}");
            p.dir = format!("pairs/{}", p.name);
            p.wave = Some(match i {
                0 => 1,
                1..=4 => 2,
                5..=19 => 3,
                _ => 4,
            });
            p
        })
        .collect();
    fleet.waves.truncate(1);
    big
}

#[test]
fn a_hundred_pairs_stay_readable() {
    let work = TempDir::new("fleet-100");
    let run = fleet_fixture(&work.path().join("fleet"));
    let summary = hundred(&run.read_summary().unwrap(), 100);
    let slices = run.read_slices().unwrap();
    let html = render_fleet(&Run::new(&summary, &slices));
    assert_self_contained("fleet-100", &html);
    assert!(html.contains("100 pairs: lanes are labelled by wave"));
    let lanes = &html[html.find("<svg id=\"lanes\"").unwrap()..];
    let lanes = &lanes[..lanes.find("</svg>").unwrap()];
    assert_eq!(lanes.matches("class=\"pairlane\"").count(), 100);
    // One label per wave, not per pair.
    assert_eq!(lanes.matches("class=\"lanename").count(), 0);
    assert!(lanes.contains(">80 pairs</text>"));
    let height: f64 = lanes
        .split("viewBox=\"0 0 1100 ")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|h| h.parse().ok())
        .unwrap();
    assert!(height <= 900.0, "the lanes are {height} px tall");
    assert!(html.len() < 2_000_000, "{} bytes", html.len());
    if let Some(keep) = std::env::var_os("TANDEM_KEEP_FLEET_REPORT") {
        std::fs::write(keep, &html).unwrap();
    }
}
