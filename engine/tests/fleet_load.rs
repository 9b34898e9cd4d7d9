//! The load generator's fleet run against real pairs: three pairs on loopback driven at
//! once while they are upgraded in two waves (the canary, then two pairs together, one of
//! them to a faulty build that rolls back), written as one run directory: a complete run
//! per pair under `pairs/NAME/`, and the fleet's summary, slices, histogram log and report
//! at the top, with nothing acknowledged lost.
//!
//! `TANDEM_FLEET_RUN_KEEP=DIR` keeps the run directory there (how the report tests'
//! `fleet` fixture is recorded).

mod common;

use std::time::Duration;

use common::{Pair, UPGRADE_QUICK as QUICK};
use loadgen::fleet_run::{FleetConfig, PairTarget};
use reports::run::RunDir;
use resp::Reply;
use serde_json::Value;

async fn upgrade(pair: &Pair, extra: &[&str]) -> Value {
    let mut cmd = vec!["UPGRADE", "2.0"];
    cmd.extend_from_slice(extra);
    cmd.extend_from_slice(&QUICK);
    match pair.admin(&cmd).await {
        Reply::Simple(s) => serde_json::from_str(&s).expect("upgrade report"),
        Reply::Bulk(b) => serde_json::from_slice(&b).expect("upgrade report"),
        other => panic!("upgrade: {other}"),
    }
}

/// The fleet's load, in the background: 3,000 ops/s over the pairs, until the campaign
/// ended (plus half a second), 2 minutes at most (a bound, not a wait).
fn start_load(
    pairs: Vec<PairTarget>,
    out: &std::path::Path,
    etcd: Option<loadgen::fleet_run::EtcdSource>,
) -> tokio::task::JoinHandle<Result<loadgen::fleet_run::FleetResult, loadgen::Error>> {
    let config = FleetConfig {
        pairs,
        load: loadgen::Config {
            mode: loadgen::Mode::Open { rate_ops_s: 3000 },
            connections: 2,
            duration: Duration::from_secs(120),
            tail: Duration::from_millis(500),
            keys: 10_000,
            out: Some(out.to_path_buf()),
            ..loadgen::Config::default()
        },
        etcd,
        until_campaign_end: true,
    };
    tokio::task::spawn_blocking(move || loadgen::fleet_run::run_blocking(config))
}

fn seq_applied(status: &Value) -> u64 {
    Pair::engine(status, "active")
        .and_then(|e| e["seq_applied"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_run_drives_three_pairs_through_two_waves_and_writes_one_run() {
    let pairs = [Pair::up(), Pair::up(), Pair::up()];
    let mut targets = Vec::new();
    let mut before = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let status = pair.wait_in_sync().await;
        before.push(seq_applied(&status));
        let clients: Vec<String> = status["engines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["client_addr"].as_str().unwrap().to_string())
            .collect();
        targets.push(PairTarget {
            name: format!("p{}", i + 1),
            targets: clients,
            admin: Some(pair.admin.clone()),
            admin_secret: Some(pair.secret.clone()),
        });
    }
    let keep = std::env::var_os("TANDEM_FLEET_RUN_KEEP").map(std::path::PathBuf::from);
    let out = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tandem-fleet-run-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&out);
    let load = start_load(targets, &out, None);

    // The load runs once every pair's active applies writes it did not have before.
    for (pair, seq) in pairs.iter().zip(&before) {
        pair.wait_for(|s| seq_applied(s) > *seq + 100).await;
    }
    // Wave 1, the canary; wave 2, two pairs at once, one of them to a faulty build.
    let canary = upgrade(&pairs[0], &[]).await;
    assert_eq!(canary["outcome"], "completed", "{canary:#}");
    let (second, faulty) = tokio::join!(
        upgrade(&pairs[1], &[]),
        upgrade(&pairs[2], &["fault", "errors"])
    );
    assert_eq!(second["outcome"], "completed", "{second:#}");
    assert_eq!(faulty["outcome"], "rolled_back", "{faulty:#}");

    let result = load.await.expect("load thread").expect("fleet run");
    let s = &result.summary;
    assert_eq!(s.lost_updates, 0, "{:?}", result.warnings);
    assert!(s.acknowledged_updates > 0);
    assert_eq!(s.outcome, "rolled_back");
    let fleet = s.fleet.as_ref().expect("a fleet section");
    assert!(fleet.waves_inferred);
    let waves: Vec<(Vec<String>, &str)> = fleet
        .waves
        .iter()
        .map(|w| (w.pairs.clone(), w.state.as_str()))
        .collect();
    assert_eq!(
        waves,
        vec![
            (vec!["p1".to_string()], "completed"),
            (vec!["p2".to_string(), "p3".to_string()], "stopped"),
        ]
    );
    let outcomes: Vec<(&str, Option<usize>, &str)> = fleet
        .pairs
        .iter()
        .map(|p| (p.name.as_str(), p.wave, p.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("p1", Some(1), "upgraded"),
            ("p2", Some(2), "upgraded"),
            ("p3", Some(2), "rolled_back"),
        ]
    );
    for p in &fleet.pairs {
        assert_eq!(p.lost_updates, 0, "{}", p.name);
        assert!(p.acknowledged_updates > 0, "{}", p.name);
        assert!(p.switchovers >= 1, "{}", p.name);
    }
    // The fleet's periods: the waves, and the rest of the run.
    let names: Vec<&str> = fleet.periods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["steady", "wave_1", "wave_2"]);
    // Its phases: `steady` (the period), then the upgrade's phases and p3's fallback over
    // the pairs: each phase's requests are the pairs' in it.
    let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "steady",
            "baseline",
            "b_out_of_service",
            "b_catch_up",
            "switchover_to_b",
            "evaluation",
            "a_out_of_service",
            "a_catch_up",
            "features_enabled",
            "fallback",
            "b_reload_previous",
            "b_catch_up_previous",
            "restored",
        ]
    );
    for p in s.phases.iter().skip(1) {
        let pairs: Vec<&reports::summary::PhaseSummary> = result
            .pairs
            .iter()
            .flat_map(|(_, r)| r.summary.phases.iter().filter(|q| q.name == p.name))
            .collect();
        assert_eq!(
            p.ops,
            pairs.iter().map(|q| q.ops).sum::<u64>(),
            "{}",
            p.name
        );
        assert_eq!(p.start_ms, pairs.iter().map(|q| q.start_ms).min().unwrap());
        assert_eq!(p.end_ms, pairs.iter().map(|q| q.end_ms).max().unwrap());
        let worst = pairs.iter().map(|q| q.latency_us.max).max().unwrap();
        assert!(p.latency_us.max >= worst * 99 / 100, "{}: {p:?}", p.name);
    }
    assert_eq!(
        s.switchovers.len(),
        fleet.pairs.iter().map(|p| p.switchovers).sum::<usize>()
    );
    assert!(s
        .switchovers
        .iter()
        .any(|w| w.pair.as_deref() == Some("p3") && w.kind == "fallback"));
    let fleet_ops: u64 = result.slices.iter().map(|x| x.ops).sum();
    let pair_ops: u64 = result
        .pairs
        .iter()
        .flat_map(|(_, r)| r.slices.iter().map(|x| x.ops))
        .sum();
    assert_eq!(fleet_ops, pair_ops, "the fleet's seconds add the pairs' up");

    // One run directory: each pair's a complete run, the fleet's at the top.
    let run = RunDir::new(&out);
    assert_eq!(run.check().expect("readable run"), Vec::<String>::new());
    for name in ["p1", "p2", "p3"] {
        let dir = out.join("pairs").join(name);
        for file in [
            "summary.json",
            "slices.json",
            "detail.json",
            "timeline.json",
            "histograms.hlog",
            "report.html",
        ] {
            assert!(dir.join(file).is_file(), "{}", dir.join(file).display());
        }
    }
    for file in [
        "summary.json",
        "slices.json",
        "timeline.json",
        "histograms.hlog",
        "report.html",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    // The fleet's timeline: every pair's events, named; p3's fallback among them.
    let timeline = run.read_timeline().unwrap();
    for name in ["p1", "p2", "p3"] {
        assert!(
            timeline
                .events
                .iter()
                .any(|e| e.pair.as_deref() == Some(name)
                    && e.kind == reports::timeline::EventKind::UpgradeEnd),
            "{name}"
        );
    }
    assert!(timeline.events.iter().any(
        |e| e.pair.as_deref() == Some("p3") && e.kind == reports::timeline::EventKind::Fallback
    ));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("tandem fleet run"));
    assert!(html.contains("href=\"pairs/p3/report.html\""));
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// The same measured through etcd: three pairs registered with `pair up --etcd`, found by
/// the load generator in `P/pair/*` (their engines and admin addresses), upgraded by
/// `tandem campaign` in waves of 1 and 2; the load stops when `P/campaign` says the
/// campaign completed, and the run has the campaign's waves and record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_found_in_etcd_is_measured_through_its_campaign() {
    use fleet::keys::{CampaignRecord, Layout};
    use loadgen::fleet_run::{discover, EtcdSource};

    let dir = std::env::temp_dir().join(format!("tandem-fleet-etcd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let etcd = fleet::local::LocalEtcd::start(&dir.join("etcd")).expect("etcd starts");
    let url = etcd.url();
    let secret_file = dir.join("secret");
    let secret = replicator::Secret::load_or_create(&secret_file).unwrap();
    let pairs: Vec<Pair> = (1..=3)
        .map(|i| Pair::up_sharing(&secret_file, &["--etcd", &url, "--name", &format!("p{i}")]))
        .collect();
    let mut before = Vec::new();
    for pair in &pairs {
        before.push(seq_applied(&pair.wait_in_sync().await));
    }
    // Registered: each record names both engines (polled: etcd's gateway has no watch
    // here).
    let source = EtcdSource {
        client: fleet::Client::new(&url).unwrap(),
        layout: Layout::default(),
    };
    let pairs_key = Layout::default().pairs();
    let mut found = common::etcd_wait(
        &source.client,
        &pairs_key,
        true,
        "three pairs registered",
        || async {
            let mut warnings = Vec::new();
            let found = discover::pairs(&source, "p*", &mut warnings)
                .await
                .unwrap_or_default();
            (found.len() == 3
                && found
                    .iter()
                    .all(|p| p.targets.len() == 2 && p.admin.is_some()))
            .then_some(found)
        },
    )
    .await;
    for p in &mut found {
        p.admin_secret = Some(secret.clone());
    }
    let out = dir.join("run");
    let load = start_load(found, &out, Some(source));
    for (pair, seq) in pairs.iter().zip(&before) {
        pair.wait_for(|s| seq_applied(s) > *seq + 100).await;
    }
    let log = std::fs::File::create(dir.join("campaign.log")).unwrap();
    let mut campaign = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .env("TANDEM_SECRET_FILE", &secret_file)
        .args(["campaign", "--etcd", &url, "--to", "2.0", "--waves", "1,2"])
        .args([
            "--parallel",
            "2",
            "--baseline",
            "400ms",
            "--evaluate",
            "800ms",
        ])
        .args(["--settle", "200ms", "--p99-slack-ms", "60000"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("tandem campaign");
    let status = tokio::task::spawn_blocking(move || campaign.wait())
        .await
        .unwrap()
        .unwrap();
    let campaign_log = std::fs::read_to_string(dir.join("campaign.log")).unwrap_or_default();
    assert!(status.success(), "{campaign_log}");

    let result = load.await.expect("load thread").expect("fleet run");
    let s = &result.summary;
    assert_eq!(s.lost_updates, 0, "{:?}", result.warnings);
    assert_eq!(s.outcome, "completed");
    let record = result.campaign.clone().expect("the campaign record");
    let fleet = s.fleet.as_ref().unwrap();
    assert!(!fleet.waves_inferred);
    assert_eq!(fleet.campaign.as_deref(), Some(record.id.as_str()));
    assert_eq!(fleet.campaign_state.as_deref(), Some("completed"));
    let waves: Vec<Vec<String>> = fleet.waves.iter().map(|w| w.pairs.clone()).collect();
    assert_eq!(waves, record.waves);
    assert_eq!(waves.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2]);
    for w in &fleet.waves {
        assert_eq!(w.state, "completed", "{w:?}");
        assert!(w.start_ms.is_some() && w.end_ms >= w.start_ms, "{w:?}");
    }
    for p in &fleet.pairs {
        assert_eq!(p.outcome, "upgraded", "{}", p.name);
        assert!(p.wave.is_some() && p.upgrade_end_ms.is_some(), "{}", p.name);
    }
    let written: CampaignRecord =
        serde_json::from_slice(&std::fs::read(out.join("campaign.json")).unwrap()).unwrap();
    assert_eq!(written, record);
    assert_eq!(RunDir::new(&out).check().unwrap(), Vec::<String>::new());
    drop(pairs);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
