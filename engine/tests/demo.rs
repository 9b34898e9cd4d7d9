//! `tandem demo --quick` end to end, as a user runs it: the upgrade completes under load and
//! the faulty upgrade rolls back, each leaving a valid run directory with every phase, a
//! self-contained report, and zero lost updates. The two runs go one after the other: they
//! measure latency, and running them side by side on a small machine would measure each other.

use std::path::Path;
use std::process::Command;

use reports::run::RunDir;
use reports::timeline::phase;

fn demo(out: &Path, extra: &[&str]) -> reports::summary::Summary {
    let _ = std::fs::remove_dir_all(out);
    let secret = out
        .parent()
        .expect("a run directory in a test directory")
        .join("secret");
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .env("TANDEM_SECRET_FILE", secret)
        .args(["demo", "--quick", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run tandem demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tandem demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("report: "), "{stdout}");
    let run = RunDir::new(out);
    let problems = run.check().expect("run directory readable");
    assert!(
        problems.is_empty(),
        "run directory problems: {problems:?}\n{stdout}"
    );
    let html = std::fs::read_to_string(run.report_path()).unwrap();
    assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));
    run.read_summary().unwrap()
}

#[test]
fn quick_demo_completes_and_the_faulty_one_rolls_back_with_nothing_lost() {
    let base = std::env::temp_dir().join(format!("tandem-demo-test-{}", std::process::id()));

    let s = demo(&base.join("completed"), &[]);
    assert_eq!(s.outcome, "completed");
    let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    for p in phase::UPGRADE {
        assert!(names.contains(&p), "phase {p} missing from {names:?}");
    }
    assert_eq!(s.lost_updates, 0);
    assert!(s.acknowledged_updates > 0 && s.verified_updates > 0);
    assert!(s.switchovers.iter().any(|w| w.kind == "planned"));
    // The windows in which one engine served alone are measured, and fall in the phases
    // where the upgrade takes an engine away.
    assert!(s.simplex_ms > 0 && !s.simplex_windows.is_empty(), "{s:?}");
    let alone = |name: &str| s.phases.iter().find(|p| p.name == name).unwrap().simplex_ms;
    assert!(alone("b_out_of_service") > 0 && alone("a_out_of_service") > 0);
    assert_eq!(alone("baseline"), 0);

    let s = demo(&base.join("rolled_back"), &["--fault", "errors"]);
    assert_eq!(s.outcome, "rolled_back");
    let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    for p in [
        "baseline",
        "fallback",
        "b_reload_previous",
        "b_catch_up_previous",
        "restored",
    ] {
        assert!(names.contains(&p), "phase {p} missing from {names:?}");
    }
    assert!(
        s.phases
            .iter()
            .find(|p| p.name == "evaluation")
            .unwrap()
            .errors
            > 0,
        "the faulty build failed writes"
    );
    assert_eq!(s.lost_updates, 0);
    assert!(s.switchovers.iter().any(|w| w.kind == "fallback"));
    let _ = std::fs::remove_dir_all(&base);
}

/// `tandem demo --fleet 2 --quick`: a local etcd, two pairs registered in it, a campaign over
/// both under load; the fleet's run and each pair's hold, nothing is lost, and the demo
/// leaves no process behind (its pairs are in OUT/fleet, its etcd in OUT/etcd).
#[test]
fn quick_fleet_demo_upgrades_every_pair_with_nothing_lost_and_stops_everything() {
    let base = std::env::temp_dir().join(format!("tandem-demo-fleet-{}", std::process::id()));
    let out = base.join("fleet");
    let s = demo(&out, &["--fleet", "2", "--waves", "1"]);
    assert_eq!(s.lost_updates, 0);
    let fleet = s.fleet.as_ref().expect("a fleet run");
    assert_eq!(fleet.pairs.len(), 2, "{fleet:?}");
    assert!(
        fleet.pairs.iter().all(|p| p.outcome == "upgraded"),
        "{fleet:?}"
    );
    let mut pair_ops: std::collections::BTreeMap<String, u64> = Default::default();
    let mut pair_switchovers = Vec::new();
    for (name, pair) in RunDir::new(&out).fleet_pairs().unwrap() {
        let p = pair.read_summary().unwrap();
        assert_eq!(
            (p.outcome.as_str(), p.lost_updates),
            ("completed", 0),
            "{name}"
        );
        for ph in &p.phases {
            *pair_ops.entry(ph.name.clone()).or_default() += ph.ops;
        }
        pair_switchovers.extend(p.switchovers.iter().map(|w| (name.clone(), w.at_ms)));
    }
    // The top level is a run of the upgrade too: its phases are the upgrade's, every pair's
    // requests while it was in them (the pairs' ops add up), `steady` the fleet outside the
    // waves; its switchovers are every pair's, named; its timeline every pair's events.
    assert_eq!(s.outcome, "completed");
    for name in phase::UPGRADE {
        let p = s.phases.iter().find(|p| p.name == name).expect(name);
        assert_eq!(Some(&p.ops), pair_ops.get(name), "{name}");
        assert!(p.start_ms <= p.end_ms, "{name}");
    }
    assert_eq!(s.phases[0].name, phase::STEADY, "{:?}", s.phases);
    let periods: Vec<&str> = fleet.periods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(periods, ["steady", "wave_1", "wave_2"]);
    let mut named: Vec<(String, u64)> = s
        .switchovers
        .iter()
        .map(|w| {
            (
                w.pair.clone().expect("a fleet switchover names its pair"),
                w.at_ms,
            )
        })
        .collect();
    named.sort();
    pair_switchovers.sort();
    assert_eq!(named, pair_switchovers);
    let timeline = RunDir::new(&out).read_timeline().unwrap();
    for p in &fleet.pairs {
        assert!(
            timeline
                .events
                .iter()
                .any(|e| e.pair.as_deref() == Some(&p.name)
                    && e.kind == reports::timeline::EventKind::UpgradeEnd),
            "{}'s upgrade in the fleet's timeline",
            p.name
        );
    }
    assert!(timeline.events.iter().all(|e| e.pair.is_some()));
    assert!(timeline.events.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    // Nothing of the demo's is left running: no process has its directory in its arguments.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(out.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "left running: {left:?}");
    let _ = std::fs::remove_dir_all(&base);
}
