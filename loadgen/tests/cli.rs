//! The `loadgen` binary: bad input gets one clear line and a non-zero exit; a good run
//! writes its run directory.

mod common;

use std::process::Output;

use common::{normal, start_one, temp_dir, FAKE_APP, FAKE_TANDEM_VERSION};
use reports::run::RunDir;

async fn loadgen(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .await
        .expect("the loadgen binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Each case's flags after `base` exit 2 with the needle on stderr.
async fn refused(base: &[&str], cases: &[(&[&str], &str)]) {
    for &(extra, needle) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = loadgen(&args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?} should fail");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[tokio::test]
async fn bad_flags_are_named() {
    let base = [
        "--target",
        "127.0.0.1:1",
        "--duration",
        "1s",
        "--out",
        "/tmp/x",
    ];
    let cases: [(&[&str], &str); 6] = [
        (&["--rate", "0"], "the rate must be at least 1 op/s"),
        (&["--rate", "ten"], "'ten' is not a whole number of ops/s"),
        (
            &["--rate", "10", "--mix", "put=1"],
            "unknown operation 'put'",
        ),
        (
            &["--rate", "10", "--distribution", "zipfian:2"],
            "between 0 and 1",
        ),
        (
            &["--rate", "10", "--wait"],
            "--wait makes Redis writes synchronous and needs --redis",
        ),
        (&["--rate", "10", "--closed", "2"], "cannot be used with"),
    ];
    refused(&base, &cases).await;
    let out = loadgen(&["--target", "127.0.0.1:1", "--rate", "10", "--out", "/tmp/x"]).await;
    assert!(stderr(&out).contains("--duration"), "{}", stderr(&out));
    let out = loadgen(&["--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--target",
        "--admin",
        "--redis",
        "--wait",
        "--rate",
        "--closed",
        "--pipeline",
        "--mix",
        "--distribution",
        "--quiet",
        "--slow",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[tokio::test]
async fn an_unreachable_target_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener); // nothing listens there now
    let out = loadgen(&[
        "--target",
        &addr,
        "--rate",
        "10",
        "--duration",
        "1s",
        "--out",
        "/tmp/x",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: cannot reach {addr}: connection refused (is the pair up?)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_its_directory() {
    let server = start_one(normal()).await;
    let dir = temp_dir("cli");
    let out = loadgen(&[
        "--target",
        &server.addr(),
        "--rate",
        "500",
        "--duration",
        "300ms",
        "--out",
        dir.to_str().unwrap(),
        "--distribution",
        "zipfian",
        "--slow",
        "250us",
        "--quiet",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("steady"), "{stdout}");
    assert!(stdout.contains("0 lost"), "{stdout}");
    // 150 samples support a median, not a p99: the table says so rather than print one.
    let row = stdout.lines().find(|l| l.starts_with("steady")).unwrap();
    assert_eq!(
        row.split_whitespace().filter(|c| *c == "-").count(),
        2,
        "{row}"
    );
    assert!(
        stdout.contains(loadgen::output::UNSUPPORTED_NOTE),
        "{stdout}"
    );
    let run = RunDir::new(&dir);
    let summary = run.read_summary().unwrap();
    assert_eq!(summary.schema, "tandem.run/1");
    assert_eq!(summary.target, "tandem");
    assert_eq!(summary.workload["distribution"], "zipfian:0.99");
    assert!(!run.read_slices().unwrap().is_empty());
    assert!(run.histograms_path().is_file());
    assert!(!run.timeline_path().exists(), "no timeline without --admin");
    let detail = run.read_detail_if_present().unwrap().expect("detail.json");
    assert_eq!(detail.schema, reports::run::DETAIL_SCHEMA);
    assert_eq!(detail.slow_threshold_us, 250);
    assert!(detail.zooms.is_empty(), "no switchover");
    let environment = summary.environment.expect("the run's environment");
    assert_eq!(
        environment.target_version,
        format!("tandem {FAKE_TANDEM_VERSION}, {FAKE_APP}"),
        "asked of the server (INFO)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_puts_the_summary_alone_on_stdout() {
    let server = start_one(normal()).await;
    let dir = temp_dir("cli-json");
    let out = loadgen(&[
        "--target",
        &server.addr(),
        "--rate",
        "500",
        "--duration",
        "300ms",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One JSON object and nothing else (the table went to stderr).
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    assert_eq!(stdout.trim().lines().count(), 1, "{stdout}");
    assert_eq!(summary["schema"], "tandem.run/1");
    assert_eq!(summary["target"], "tandem");
    assert_eq!(summary["lost_updates"], 0);
    assert!(
        summary["acknowledged_updates"].as_u64() > Some(0),
        "{summary}"
    );
    assert_eq!(summary["workload"]["rate_ops_s"], 500);
    assert_eq!(summary["run_dir"], dir.to_str().unwrap());
    assert!(summary["warnings"].is_array() && summary["unsent"].is_u64());
    assert!(stderr(&out).contains("steady"), "{}", stderr(&out));
    // The same figures as summary.json.
    let written = RunDir::new(&dir).read_summary().unwrap();
    assert_eq!(
        summary["acknowledged_updates"],
        written.acknowledged_updates
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_is_one_run_with_a_run_per_pair() {
    let (a, b) = (start_one(normal()).await, start_one(normal()).await);
    let dir = temp_dir("cli-fleet");
    let pair_a = format!("a={}", a.addr());
    let pair_b = format!("b={}", b.addr());
    let out = loadgen(&[
        "--pair",
        &pair_a,
        "--pair",
        &pair_b,
        "--rate",
        "500",
        "--duration",
        "300ms",
        "--out",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("updates over the fleet"), "{stdout}");
    assert!(stdout.contains(" 0 lost"), "{stdout}");
    let run = RunDir::new(&dir);
    let summary = run.read_summary().unwrap();
    let fleet = summary.fleet.as_ref().expect("a fleet section");
    assert_eq!(summary.workload["rate_ops_s"], 500);
    assert_eq!(summary.workload["pairs"], 2);
    let names: Vec<&str> = fleet.pairs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let mut acknowledged = 0;
    for (name, pair) in run.fleet_pairs().unwrap() {
        let s = pair.read_summary().expect("each pair's own summary");
        assert_eq!(
            s.workload["rate_ops_s"], 250,
            "{name}: half the fleet's rate"
        );
        assert_eq!(s.workload["fleet_pair"], name.as_str());
        assert!(pair.report_path().is_file(), "{name}: its report");
        acknowledged += s.acknowledged_updates;
    }
    assert_eq!(summary.acknowledged_updates, acknowledged);
    assert!(run.report_path().is_file());
    assert_eq!(run.check().unwrap(), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();

    // Fleet flags that do not fit are named.
    let base = ["--rate", "10", "--duration", "1s", "--out", "/tmp/x"];
    let cases: [(&[&str], &str); 3] = [
        (
            &["--pair", "a=127.0.0.1:1", "--pair", "a=127.0.0.1:2"],
            "pair 'a' given twice",
        ),
        (
            &["--target", "127.0.0.1:1", "--until-campaign-end"],
            "--until-campaign-end is for a fleet",
        ),
        (&["--pair", "a"], "expected NAME=ADDR"),
    ];
    refused(&base, &cases).await;
}
