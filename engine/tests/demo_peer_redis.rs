//! `tandem demo --quick --peer redis` as a user runs it, with real processes: the tandem run,
//! then the same load on a Redis primary + replica (`redis-server` from Debian's package,
//! installed by scripts/setup.sh; the test fails if it is missing, it never skips) that the
//! demo starts and stops, two run directories, their reports and the comparison page; no
//! redis-server and no pair left behind, also when the demo gets SIGINT, SIGTERM or SIGKILL
//! while Redis serves, or SIGHUP or SIGKILL during the tandem run; and bad input said before
//! anything starts.
//!
//! The two demos go one after the other (they measure latency, and side by side on a small
//! machine they would measure each other).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

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
    assert_pair_stopped_within(&out);

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

/// How long the demo has to say that Redis is up (the quick tandem run comes first), and to
/// exit once signalled, and what it started to be gone: bounds on a hang, not timings.
const REDIS_UP_DEADLINE: Duration = Duration::from_secs(600);
const EXIT_DEADLINE: Duration = Duration::from_secs(120);
const GONE_DEADLINE: Duration = Duration::from_secs(60);

/// A demo child, signalled (SIGTERM, then SIGKILL if it has not exited within
/// [`EXIT_DEADLINE`]) and reaped on drop, so that a failed assertion does not leave it, its
/// pair or its redis-servers running; its stdout and stderr read by threads, so that no read
/// waits past a deadline.
struct Demo {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Its stdout so far.
    seen: String,
}

impl Demo {
    fn start(dir: &Path, out: &Path) -> Demo {
        Demo::start_with(tandem(dir), out)
    }

    /// In a process group of its own, as a shell starts a job: what a terminal's Ctrl-C
    /// reaches.
    fn start_as_job(dir: &Path, out: &Path) -> Demo {
        let mut cmd = tandem(dir);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Demo::start_with(cmd, out)
    }

    fn start_with(mut cmd: Command, out: &Path) -> Demo {
        let mut child = cmd
            .args(["demo", "--quick", "--peer", "redis", "--out"])
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tandem demo");
        let (tx, stdout) = mpsc::channel();
        let out_pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err_pipe.read_to_string(&mut text);
            text
        });
        Demo {
            child,
            stdout,
            stderr: Some(stderr),
            seen: String::new(),
        }
    }

    /// Reads its stdout until a line that `wanted` says yes to.
    fn wait_for_line(&mut self, wanted: impl Fn(&str) -> bool, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if wanted(&line) {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("the demo ended before the line:\n{}", self.seen)
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no such line within {} s:\n{}",
                    deadline.as_secs(),
                    self.seen
                ),
            }
        }
    }

    /// Once Redis serves (the demo says so).
    fn wait_for_redis(&mut self) {
        self.wait_for_line(
            |l| l.starts_with("Redis ") && l.contains(" up: primary "),
            REDIS_UP_DEADLINE,
        );
    }

    /// `signal`, to the demo alone.
    fn signal(&self, signal: i32) {
        // SAFETY: a signal to the child this test started (not yet reaped: `wait` takes
        // `&mut self`, and the guard reaps it only when dropped).
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for it to exit, within [`EXIT_DEADLINE`]: its status and stderr.
    fn exit(&mut self) -> (std::process::ExitStatus, String) {
        let until = Instant::now() + EXIT_DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the demo's status") {
                break status;
            }
            assert!(
                Instant::now() < until,
                "the demo did not exit within {} s:\n{}",
                EXIT_DEADLINE.as_secs(),
                self.seen
            );
            wait_any_exit(&[self.child.id()], until);
        };
        // Its pipe closes with it (what it started writes to log files).
        let stderr = self.stderr.take().expect("once").join().unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            let until = Instant::now() + EXIT_DEADLINE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                wait_any_exit(&[self.child.id()], until);
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The processes whose command line names the demo's pair directory: its supervisor (`pair
/// up --dir OUT/pair`), its engines (`--data-dir OUT/pair/...`) and the watchdog that stops
/// them if the demo dies (`pair down --dir OUT/pair`); zombies are not running.
fn pair_processes(out: &Path) -> Vec<u32> {
    let dir = out.join("pair");
    let dir = dir.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let names_dir = cmdline
                .split(|&b| b == 0)
                .any(|a| a.starts_with(dir.as_bytes()));
            names_dir && !zombie(*pid)
        })
        .collect()
}

fn zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|close| stat[close + 1..].trim_start().chars().next())
        .is_none_or(|state| state == 'Z')
}

/// Blocks until one of `pids` has exited (its pidfd turns readable, for a child or not) or
/// `until` has passed; at once when one is already gone.
fn wait_any_exit(pids: &[u32], until: Instant) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let Some(fds) = pids
        .iter()
        .map(|&p| pidfd_open(Pid::from_raw(p as i32)?, PidfdFlags::empty()).ok())
        .collect::<Option<Vec<_>>>()
    else {
        return;
    };
    let mut polled: Vec<PollFd> = fds
        .iter()
        .map(|fd| PollFd::new(fd, PollFlags::IN))
        .collect();
    let left = Timespec::try_from(until.saturating_duration_since(Instant::now())).ok();
    let _ = poll(&mut polled, left.as_ref());
}

/// Waits until `left()` is empty (looking again each time one of its processes exits) or
/// `deadline` has passed; what is left then.
fn gone_within(deadline: Duration, left: impl Fn() -> Vec<u32>) -> Vec<u32> {
    let until = Instant::now() + deadline;
    loop {
        let now_left = left();
        if now_left.is_empty() || Instant::now() >= until {
            return now_left;
        }
        wait_any_exit(&now_left, until);
    }
}

/// No redis-server of the demo's running (waited for within [`GONE_DEADLINE`]); the ones left
/// are killed.
fn assert_no_redis_left_within(out: &Path) {
    let pids = redis_pids(out);
    assert!(
        pids.len() >= 2,
        "a primary and a replica were started: {pids:?}"
    );
    let left = gone_within(GONE_DEADLINE, || {
        pids.iter().copied().filter(|&p| redis_running(p)).collect()
    });
    for &pid in &left {
        // SAFETY: a signal to a redis-server this test's demo started.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    assert!(left.is_empty(), "redis-server left running: {left:?}");
}

/// The demo's pair stopped, supervisor and engines (waited for within [`GONE_DEADLINE`]).
fn assert_pair_stopped_within(out: &Path) {
    let left = gone_within(GONE_DEADLINE, || pair_processes(out));
    if !left.is_empty() {
        // What is left is stopped as a user would, for the next tests.
        let _ = tandem(out.parent().expect("the test directory"))
            .args(["pair", "down", "--dir"])
            .arg(out.join("pair"))
            .output();
    }
    assert!(left.is_empty(), "the demo's pair left running: {left:?}");
}

/// Once Redis serves, `signal` to the demo alone: it stops Redis (the servers are gone when
/// it exits) and has stopped the pair before, says so, and exits with 1; the tandem run is
/// whole.
fn a_signalled_redis_run_stops_everything(name: &str, signal: i32, says: &str) {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir(name);
    let out = dir.join("run");
    let mut demo = Demo::start(&dir, &out);
    demo.wait_for_redis();
    demo.signal(signal);
    let (status, stderr) = demo.exit();
    assert_eq!(status.code(), Some(1), "{}\n{stderr}", demo.seen);
    assert!(
        stderr.contains(&format!("interrupted by {says}: stopping Redis")),
        "{stderr}"
    );
    assert_no_redis_left(&out);
    assert_pair_stopped_within(&out);
    // The tandem run is whole.
    assert_eq!(RunDir::new(&out).read_summary().unwrap().lost_updates, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_interrupted_redis_run_stops_its_servers() {
    a_signalled_redis_run_stops_everything("sigint", libc::SIGINT, "SIGINT");
}

#[test]
fn a_terminated_redis_run_stops_its_servers() {
    a_signalled_redis_run_stops_everything("sigterm", libc::SIGTERM, "SIGTERM");
}

/// SIGKILL, which the demo cannot catch, once Redis serves: its redis-servers die with it
/// (their parent-death signal). (Its pair was stopped before Redis started.)
#[test]
fn a_killed_demo_leaves_no_server_behind() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir("sigkill");
    let out = dir.join("run");
    let mut demo = Demo::start(&dir, &out);
    demo.wait_for_redis();
    demo.signal(libc::SIGKILL);
    let (status, _) = demo.exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_no_redis_left_within(&out);
    assert_pair_stopped_within(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Once the pair is up (the demo says so), during the tandem run.
fn wait_for_pair(demo: &mut Demo) {
    demo.wait_for_line(|l| l.starts_with("pair up: admin "), REDIS_UP_DEADLINE);
}

/// SIGHUP (the terminal closed) during the tandem run: the demo stops the pair, says so and
/// exits with 1, as on Ctrl-C.
#[test]
fn a_hung_up_demo_stops_its_pair() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir("sighup");
    let out = dir.join("run");
    let mut demo = Demo::start(&dir, &out);
    wait_for_pair(&mut demo);
    demo.signal(libc::SIGHUP);
    let (status, stderr) = demo.exit();
    assert_eq!(status.code(), Some(1), "{}\n{stderr}", demo.seen);
    assert!(
        stderr.contains("interrupted by SIGHUP: stopping the pair"),
        "{stderr}"
    );
    assert_pair_stopped_within(&out);
    assert!(
        !out.join("peer-redis").exists(),
        "no Redis run after an interrupted tandem run"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C at the terminal during the tandem run: SIGINT to the demo's whole process group.
/// Its supervisor, in a group of its own, does not get it (it would exit and leave its
/// engines serving): the demo stops the pair, engines included.
#[test]
fn ctrl_c_at_the_terminal_stops_the_pair() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir("terminal");
    let out = dir.join("run");
    let mut demo = Demo::start_as_job(&dir, &out);
    wait_for_pair(&mut demo);
    // SAFETY: a signal to the process group of the child this test started (its own).
    unsafe {
        libc::kill(-(demo.child.id() as i32), libc::SIGINT);
    }
    let (status, stderr) = demo.exit();
    assert_eq!(status.code(), Some(1), "{}\n{stderr}", demo.seen);
    assert!(
        stderr.contains("interrupted by SIGINT: stopping the pair"),
        "{stderr}"
    );
    assert_pair_stopped_within(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGKILL during the tandem run: the demo's watchdog stops its pair, supervisor and engines.
#[test]
fn a_killed_demo_stops_its_pair() {
    let _one = DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let dir = test_dir("sigkill-pair");
    let out = dir.join("run");
    let mut demo = Demo::start(&dir, &out);
    wait_for_pair(&mut demo);
    assert!(
        !pair_processes(&out).is_empty(),
        "the pair runs: {}",
        demo.seen
    );
    demo.signal(libc::SIGKILL);
    let (status, _) = demo.exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_pair_stopped_within(&out);
    let log = std::fs::read_to_string(out.join("pair").join("watchdog.log")).unwrap_or_default();
    assert!(log.contains("OK pair in"), "the watchdog said: {log}");
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
