//! `tandem demo --quick --peer redis` as a user runs it, with real processes: the tandem run,
//! then the same load on a Redis primary + replica (`redis-server` from Debian's package,
//! installed by scripts/setup.sh; the test fails if it is missing, it never skips) that the
//! demo starts and stops, two run directories, their reports and the comparison page; no
//! redis-server left behind, also when the demo is interrupted while Redis serves; and bad
//! input said before anything starts.
//!
//! The two demos go one after the other (they measure latency, and side by side on a small
//! machine they would measure each other).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use reports::run::RunDir;

/// One demo at a time.
static DEMO: Mutex<()> = Mutex::new(());

fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tandem-demo-peer-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test directory");
    dir
}

fn tandem(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem"));
    cmd.env("TANDEM_SECRET_FILE", dir.join("secret"));
    cmd
}

/// The pids of every redis-server the demo started in `out`, from the first line each
/// writes to its log (`... pid=1234, just started`), bind retries included.
fn redis_pids(out: &Path) -> Vec<u32> {
    let dir = out.join("peer-redis").join("redis");
    let mut pids = Vec::new();
    for name in ["primary.log", "replica.log"] {
        let log = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
        for line in log.lines() {
            if let Some((_, rest)) = line.split_once("pid=") {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                pids.push(digits.parse().expect("a pid"));
            }
        }
    }
    pids
}

/// A redis-server that is still running as `pid` (not a zombie, not another program that
/// reused the pid).
fn redis_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state ...`
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm.starts_with("redis-server") && state != Some('Z')
}

fn assert_no_redis_left(out: &Path) {
    let pids = redis_pids(out);
    assert!(
        pids.len() >= 2,
        "a primary and a replica were started: {pids:?}"
    );
    let left: Vec<u32> = pids.into_iter().filter(|&p| redis_running(p)).collect();
    for &pid in &left {
        // SAFETY: a signal to a process this test's demo started; nothing else is touched.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    assert!(left.is_empty(), "redis-server left running: {left:?}");
}

#[test]
fn demo_with_redis_as_peer_writes_both_runs_and_the_comparison() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir("full");
    let out = dir.join("tandem-vs-redis");
    let output = tandem(&dir)
        .args(["demo", "--quick", "--peer", "redis", "--out"])
        .arg(&out)
        .output()
        .expect("run tandem demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tandem demo --peer redis failed:\n{stdout}\n{stderr}"
    );
    assert_no_redis_left(&out);

    let tandem_run = RunDir::new(&out);
    let redis_run = RunDir::new(out.join("peer-redis"));
    let t = tandem_run.read_summary().expect("OUT/summary.json");
    let r = redis_run
        .read_summary()
        .expect("OUT/peer-redis/summary.json");
    assert_eq!(t.target, "tandem");
    assert_eq!(r.target, "redis");
    assert_eq!(t.lost_updates, 0);
    assert_eq!(r.lost_updates, 0, "{stdout}");
    assert!(
        r.acknowledged_updates > 0 && r.verified_updates > 0,
        "{r:?}"
    );
    assert_eq!(r.workload["redis_wait"], true);
    // The same load on both sides.
    for field in [
        "rate_ops_s",
        "connections",
        "pipeline",
        "mix",
        "value_bytes",
        "keys",
        "distribution",
        "seed",
        "state_work_units",
    ] {
        assert_eq!(t.workload[field], r.workload[field], "workload.{field}");
    }
    assert_eq!(t.workload["state_work_units"], 0);
    if let Some(env) = &t.environment {
        assert_eq!(env.target_version, "1.0 -> 2.0");
    }
    assert!(
        tandem_run.check().expect("readable").is_empty(),
        "{:?}",
        tandem_run.check()
    );

    for report in [tandem_run.report_path(), redis_run.report_path()] {
        let html = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("{}: {e}", report.display()));
        assert!(html.contains("<svg"), "{} has no chart", report.display());
    }
    let compare = out.join("compare-peer-redis.html");
    let html =
        std::fs::read_to_string(&compare).unwrap_or_else(|e| panic!("{}: {e}", compare.display()));
    assert!(
        html.contains("tandem-vs-redis") && html.contains("peer-redis"),
        "the comparison names both runs"
    );
    // Both tables, and where the pages are.
    assert_eq!(stdout.matches("updates: ").count(), 2, "{stdout}");
    assert!(
        stdout.contains(&format!("comparison: {}", compare.display())),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_redis_run_stops_its_servers() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir("interrupted");
    let out = dir.join("run");
    let mut child = tandem(&dir)
        .args(["demo", "--quick", "--peer", "redis", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tandem demo");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // Once Redis serves (the demo says so), Ctrl-C, to the demo alone.
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).expect("demo stdout");
        assert!(n > 0, "the demo ended before Redis was up:\n{seen}");
        seen.push_str(&line);
        if line.starts_with("Redis ") && line.contains(" up: primary ") {
            break;
        }
    }
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let output = child.wait_with_output().expect("demo exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{seen}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_no_redis_left(&out);
    // The tandem run is whole.
    assert_eq!(RunDir::new(&out).read_summary().unwrap().lost_updates, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_peer_input_is_said_before_anything_starts() {
    let dir = test_dir("bad");
    let out = dir.join("run");

    let output = tandem(&dir)
        .args(["demo", "--quick", "--peer", "valkey", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("valkey") && stderr.contains("redis"),
        "{stderr}"
    );

    // No redis-server on PATH: one line naming the package, and no pair started.
    let empty = dir.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let output = tandem(&dir)
        .env("PATH", &empty)
        .args(["demo", "--quick", "--peer", "redis", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: ") && stderr.contains("apt-get install redis-server"),
        "{stderr}"
    );
    assert!(
        !out.join("summary.json").exists() && !out.join("pair").exists(),
        "nothing ran"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
