//! etcd as a pair's witness (`tandem pair up --etcd`), with a real etcd (Debian's
//! `etcd-server`, started by `fleet::local::LocalEtcd` on loopback in a temporary directory)
//! and real `tandem` processes: the pair registers and its engines' epoch is etcd's; an
//! engine refuses an epoch etcd does not hold; a hot spare takes over a dead leader under
//! load, and the dead one restarted cannot grant; a frozen leader that was overtaken steps
//! down when it wakes; with etcd down the pair serves on but grants no epoch until etcd is
//! back; an upgrade waits for a stalled etcd rather than roll back, and its outcome is in
//! etcd after; a leader whose lease expired during an outage leads on when nobody took over. Every wait is on a line, a status, an exit or etcd's record, with a deadline.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{lost, signal, EventKind, Pair, Writer, DEADLINE, UPGRADE_QUICK_PATIENT as QUICK};
use fleet::keys::{Layout, PairRecord};
use fleet::local::LocalEtcd;
use resp::{Client, Reply};
use serde_json::Value;

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tandem-witness-{what}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A real etcd in a temporary directory (killed when dropped, the directory removed).
struct Etcd {
    etcd: Option<LocalEtcd>,
    dir: PathBuf,
}

impl Etcd {
    fn start(what: &str) -> Etcd {
        let dir = temp_dir(&format!("etcd-{what}"));
        let etcd = LocalEtcd::start(&dir).expect("etcd starts (Debian's etcd-server)");
        Etcd {
            etcd: Some(etcd),
            dir,
        }
    }

    /// Kills etcd (SIGKILL): the pair's witness is gone until `restart`.
    fn kill(&mut self) {
        self.etcd.as_mut().unwrap().kill();
    }

    /// Starts etcd again on its data and ports.
    fn restart(&mut self) {
        self.etcd
            .as_mut()
            .unwrap()
            .restart()
            .expect("etcd restarts");
    }

    /// The leader key of pair `name` (its value the supervisor's id, on its lease).
    async fn leader_key(&self, name: &str) -> fleet::Kv {
        self.client()
            .get(&Layout::default().leader(name))
            .await
            .unwrap()
            .expect("the pair has a leader")
    }

    fn url(&self) -> String {
        self.etcd.as_ref().unwrap().url()
    }

    fn client(&self) -> fleet::Client {
        fleet::Client::new(&self.url()).unwrap()
    }

    async fn record(&self, name: &str) -> PairRecord {
        let kv = self
            .client()
            .get(&Layout::default().pair(name))
            .await
            .expect("etcd answers")
            .expect("the pair is registered");
        serde_json::from_slice(&kv.value).expect("a pair record")
    }

    async fn leader(&self, name: &str) -> Option<String> {
        self.client()
            .get(&Layout::default().leader(name))
            .await
            .expect("etcd answers")
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        drop(self.etcd.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// True (and says the test is skipped) where no etcd is installed.
fn no_etcd() -> bool {
    if fleet::local::available() {
        return false;
    }
    eprintln!("skipped: no etcd here (install Debian's etcd-server)");
    true
}

/// A pair up with a witness, named `name`.
fn witnessed_pair(etcd: &Etcd, name: &str) -> Pair {
    let url = etcd.url();
    Pair::up_with(&["--etcd", &url, "--name", name])
}

/// A new etcd (`what`) and a pair up with it as its witness, named `name`, on a 1 s etcd
/// lease, in sync; None (the test skipped) where no etcd is installed.
async fn short_ttl_pair(what: &str, name: &str) -> Option<(Etcd, Pair)> {
    if no_etcd() {
        return None;
    }
    let etcd = Etcd::start(what);
    let pair = Pair::up_with(&["--etcd", &etcd.url(), "--name", name, "--witness-ttl", "1s"]);
    pair.wait_in_sync().await;
    Some((etcd, pair))
}

/// Another supervisor of the pair (`tandem pair up --etcd ... --name NAME --dir DIR`) with
/// the pair's secret: a spare while the pair has a leader. Killed when dropped, with the
/// engines of its own directory if it had to start any.
struct Supervisor {
    child: Child,
    dir: PathBuf,
    own_dir: bool,
    lines: mpsc::Receiver<String>,
}

impl Supervisor {
    fn start(pair: &Pair, etcd: &Etcd, name: &str, dir: Option<&Path>) -> Supervisor {
        let own_dir = dir.is_none();
        let dir = dir
            .map(Path::to_path_buf)
            .unwrap_or_else(|| temp_dir("spare"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("supervisor.log"))
            .expect("supervisor log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .env("TANDEM_SECRET_FILE", pair.dir.join("secret"))
            .args(["pair", "up", "--base-port", "0", "--dir"])
            .arg(&dir)
            .args(["--etcd", &etcd.url(), "--name", name])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start tandem pair up");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Supervisor {
            child,
            dir,
            own_dir,
            lines,
        }
    }

    /// Waits for its stdout line starting with `prefix`; the rest of it.
    fn wait_line(&self, prefix: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!(
                    "no {prefix:?} line from the supervisor in {} ({e}); its log:\n{}",
                    self.dir.display(),
                    std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default()
                ),
            }
        }
    }

    /// Its admin address, from its `SPARE admin=... leader=...` line.
    fn wait_spare(&self) -> String {
        let rest = self.wait_line("SPARE admin=");
        rest.split(' ').next().unwrap().to_string()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.own_dir {
            for pid in engine::process::engines_under(&self.dir) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            if std::thread::panicking() {
                let text =
                    std::fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default();
                eprintln!("---- spare's supervisor.log\n{text}");
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn admin_call(pair: &Pair, admin: &str, args: &[&str]) -> Reply {
    let mut c = Client::connect_authenticated(admin, Duration::from_secs(5), &pair.secret, "admin")
        .await
        .expect("admin reachable");
    c.set_timeout(Some(Duration::from_secs(30)));
    let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.call(&parts).await.expect("admin call")
}

async fn status_at(pair: &Pair, admin: &str) -> Value {
    match admin_call(pair, admin, &["STATUS"]).await {
        Reply::Bulk(b) => serde_json::from_slice(&b).expect("status json"),
        other => panic!("status: {other}"),
    }
}

/// A client of the standby's control port (in status `s`), with the pair's secret.
async fn standby_control(pair: &Pair, s: &Value) -> Client {
    let control = Pair::engine(s, "standby").unwrap()["control_addr"]
        .as_str()
        .unwrap()
        .to_string();
    Client::connect_authenticated(&control, Duration::from_secs(5), &pair.secret, "control")
        .await
        .expect("the pair's secret opens the control port")
}

/// Every engine's epoch in a status.
fn engine_epochs(s: &Value) -> Vec<u64> {
    s["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect()
}

/// Both engines report etcd's epoch, and so does the supervisor.
async fn assert_epochs_are_etcds(pair: &Pair, etcd: &Etcd, name: &str) -> u64 {
    let record = etcd.record(name).await;
    let s = pair.wait_in_sync().await;
    assert_eq!(s["epoch"], record.epoch, "supervisor vs etcd: {s:#}");
    assert_eq!(
        engine_epochs(&s),
        vec![record.epoch; 2],
        "engines vs etcd: {s:#}"
    );
    record.epoch
}

/// Reads every write the writer had acknowledged back from the active: none may be missing.
async fn check_nothing_lost(pair: &Pair, writer: Writer) {
    let report = writer.finish().await;
    assert!(!report.acked.is_empty(), "nothing acknowledged");
    common::assert_none_lost(pair, &report.acked).await;
}

/// Blocks until `pid` has exited (its pidfd turns readable) or the deadline passed.
fn wait_exit(pid: u32) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let Ok(fd) = pidfd_open(Pid::from_raw(pid as i32).unwrap(), PidfdFlags::empty()) else {
        return true; // gone already
    };
    let mut polled = [PollFd::new(&fd, PollFlags::IN)];
    let left = Timespec::try_from(DEADLINE).unwrap();
    matches!(poll(&mut polled, Some(&left)), Ok(n) if n > 0)
}

fn timeline_of(dir: &Path) -> Vec<common::TimelineEvent> {
    let text = std::fs::read(dir.join("timeline.json")).expect("timeline.json");
    serde_json::from_slice::<reports::timeline::Timeline>(&text)
        .expect("timeline")
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_registers_its_engines_take_only_etcds_epoch() {
    if no_etcd() {
        return;
    }
    let etcd = Etcd::start("registers");
    let pair = witnessed_pair(&etcd, "reg");
    let s = pair.wait_in_sync().await;
    let epoch = assert_epochs_are_etcds(&pair, &etcd, "reg").await;
    let record = etcd.record("reg").await;
    assert_eq!(record.name, "reg");
    assert_eq!(record.admin, pair.admin);
    assert_eq!(record.active, "a");
    assert_eq!(record.version.as_deref(), Some("1.0"));
    assert_eq!(record.phase, "serving");
    assert_eq!(
        etcd.leader("reg").await.as_deref(),
        Some(&record.supervisor[..])
    );
    assert_eq!(s["witness"]["role"], "leader");
    assert_eq!(s["witness"]["state"], "ok");
    assert_eq!(record.state["data_dir"], pair.dir.to_str().unwrap());

    // A switchover's new epoch is in etcd, and is the engines'.
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    let after = assert_epochs_are_etcds(&pair, &etcd, "reg").await;
    assert_eq!(after, epoch + 1);
    assert_eq!(etcd.record("reg").await.active, "b");

    // Someone with the pair's secret offers the standby an epoch etcd does not hold.
    let mut c = standby_control(&pair, &s).await;
    let offered = (after + 5).to_string();
    for cmd in [
        vec!["TANDEM.PROMOTE", &offered[..]],
        vec!["TANDEM.FOLLOW", "127.0.0.1:1", &offered[..]],
    ] {
        let parts: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        let reply = c.call(&parts).await.unwrap();
        assert!(
            matches!(&reply, Reply::Error(e) if e.starts_with("NOTGRANTED ")),
            "{}: {reply}",
            cmd[0]
        );
    }
    // Nothing changed: the pair is as etcd says.
    assert_eq!(assert_epochs_are_etcds(&pair, &etcd, "reg").await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_takes_over_a_dead_leader_under_load_and_the_dead_one_restarted_cannot_grant() {
    if no_etcd() {
        return;
    }
    let etcd = Etcd::start("spare");
    let mut pair = witnessed_pair(&etcd, "sp");
    let before = pair.wait_in_sync().await;
    let spare = Supervisor::start(&pair, &etcd, "sp", None);
    let spare_admin = spare.wait_spare();
    let s = status_at(&pair, &spare_admin).await;
    assert_eq!(s["witness"]["role"], "spare", "{s:#}");
    // A spare grants nothing.
    let reply = admin_call(&pair, &spare_admin, &["SWITCHOVER"]).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("SPARE")),
        "{reply}"
    );

    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    let old_leader = etcd.leader("sp").await.expect("a leader");
    let killed = Instant::now();
    pair.kill_supervisor();
    // The spare takes the pair over (the leader key goes with the dead one's etcd lease)...
    let admin = spare.wait_line("READY admin=");
    eprintln!(
        "the spare took over {:.1} s after the leader's SIGKILL (etcd lease TTL 3 s)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        admin, pair.admin,
        "the spare serves the pair's admin address"
    );
    let new_leader = etcd.leader("sp").await.expect("a leader");
    assert_ne!(new_leader, old_leader);
    let s = pair.wait_in_sync().await;
    assert_eq!(s["witness"]["role"], "leader", "{s:#}");
    for role in ["active", "standby"] {
        assert_eq!(
            common::pid_of(&before, role),
            common::pid_of(&s, role),
            "{role} was replaced, not adopted"
        );
    }
    assert!(timeline_of(&spare.dir)
        .iter()
        .any(|e| e.kind == EventKind::TookOver));
    // ...the pair served on meanwhile, and a switchover (a new epoch) works.
    writer.wait_for_more(1000).await;
    let epoch = assert_epochs_are_etcds(&pair, &etcd, "sp").await;
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    assert_eq!(assert_epochs_are_etcds(&pair, &etcd, "sp").await, epoch + 1);
    assert_eq!(etcd.record("sp").await.supervisor, new_leader);
    writer.wait_for_more(1000).await;

    // The dead leader restarted on its old directory finds the key taken: a spare.
    let restarted = Supervisor::start(&pair, &etcd, "sp", Some(&pair.dir.clone()));
    let restarted_admin = restarted.wait_spare();
    let reply = admin_call(&pair, &restarted_admin, &["SWITCHOVER"]).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("SPARE")),
        "{reply}"
    );
    assert_eq!(etcd.leader("sp").await.as_deref(), Some(&new_leader[..]));
    assert_eq!(assert_epochs_are_etcds(&pair, &etcd, "sp").await, epoch + 1);
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
    drop(restarted);
    // The leader's engines must go before the pair's directory does (Pair's drop).
    drop(spare);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_was_overtaken_steps_down_when_it_wakes() {
    if no_etcd() {
        return;
    }
    let etcd = Etcd::start("frozen");
    let pair = witnessed_pair(&etcd, "fz");
    let s = pair.wait_in_sync().await;
    let frozen = s["supervisor_pid"].as_u64().unwrap();
    let spare = Supervisor::start(&pair, &etcd, "fz", None);
    let spare_admin = spare.wait_spare();
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    signal(frozen, "-STOP");
    // Its lease runs out: the spare takes over (on its own admin address: the frozen one
    // still holds the pair's), and grants a new epoch.
    spare.wait_line("READY admin=");
    let s = status_at(&pair, &spare_admin).await;
    assert_eq!(s["witness"]["role"], "leader", "{s:#}");
    let reply = admin_call(&pair, &spare_admin, &["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    let record = etcd.record("fz").await;
    // The frozen one wakes: it steps down (exits) without acting.
    signal(frozen, "-CONT");
    assert!(wait_exit(frozen as u32), "the woken leader did not exit");
    assert!(
        timeline_of(&pair.dir)
            .iter()
            .any(|e| e.kind == EventKind::SteppedDown),
        "no stepped_down event"
    );
    // Nothing it might have said took: the engines are at etcd's epoch, under the spare.
    let s = status_at(&pair, &spare_admin).await;
    assert_eq!(engine_epochs(&s), vec![record.epoch; 2], "{s:#}");
    assert_eq!(etcd.record("fz").await.epoch, record.epoch);
    writer.wait_for_more(1000).await;
    let report = writer.finish().await;
    let active = Pair::engine(&s, "active").unwrap()["client_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let mut client = Client::connect_timeout(active, Duration::from_secs(5))
        .await
        .unwrap();
    let missing = lost(&mut client, &report.acked).await;
    assert!(
        missing.is_empty(),
        "{} lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    drop(spare);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_down_the_pair_serves_grants_no_epoch_and_resumes_when_it_is_back() {
    if no_etcd() {
        return;
    }
    let mut etcd = Etcd::start("down");
    let pair = witnessed_pair(&etcd, "dn");
    pair.wait_in_sync().await;
    let epoch = assert_epochs_are_etcds(&pair, &etcd, "dn").await;
    let mut events = pair.subscribe().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;

    let s = etcd_down(&mut etcd, &pair).await;
    assert!(
        s["witness"]["unreachable_since_ms"].as_u64().is_some(),
        "{s:#}"
    );
    next_event(&mut events, EventKind::WitnessLost).await;
    // The in-sync pair keeps acknowledging writes at its epoch...
    writer.wait_for_more(2000).await;
    // ...but grants no new one.
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("NOWITNESS")),
        "{reply}"
    );
    let s = pair.wait_in_sync().await;
    assert_eq!(s["epoch"], epoch);
    assert_eq!(engine_epochs(&s), vec![epoch; 2]);
    // An engine offered a new epoch while etcd is unreachable refuses it.
    let mut c = standby_control(&pair, &s).await;
    let offered = (epoch + 1).to_string();
    let reply = c
        .call(&[b"TANDEM.PROMOTE", offered.as_bytes()])
        .await
        .unwrap();
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("NOTGRANTED ")),
        "{reply}"
    );
    writer.wait_for_more(1000).await;

    etcd.restart();
    pair.wait_for(|s| s["witness"]["state"] == "ok").await;
    next_event(&mut events, EventKind::WitnessBack).await;
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    assert_eq!(assert_epochs_are_etcds(&pair, &etcd, "dn").await, epoch + 1);
    writer.wait_for_more(1000).await;
    check_nothing_lost(&pair, writer).await;
}

async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<common::TimelineEvent>,
    kind: EventKind,
) -> common::TimelineEvent {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if ev.kind == kind => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the timeline subscription ended"),
            Err(_) => panic!("no {kind:?} event within {DEADLINE:?}"),
        }
    }
}

/// Starts `UPGRADE 2.0` (QUICK, tagged `tag`) on the pair's admin endpoint in a task that
/// waits up to `wait` for its reply.
fn start_upgrade(pair: &Pair, tag: &str, wait: Duration) -> tokio::task::JoinHandle<Reply> {
    let mut cmd = vec!["UPGRADE", "2.0"];
    cmd.extend(QUICK);
    cmd.extend(["tag", tag]);
    let (admin, secret) = (pair.admin.clone(), pair.secret.clone());
    let args: Vec<String> = cmd.iter().map(|a| a.to_string()).collect();
    tokio::spawn(async move {
        let mut c = Client::connect_authenticated(&admin, Duration::from_secs(5), &secret, "admin")
            .await
            .unwrap();
        c.set_timeout(Some(wait));
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        c.call(&parts).await.unwrap()
    })
}

/// The upgrade's reply is a report of a completed upgrade.
fn assert_completed(reply: &Reply) {
    assert!(!reply.is_error(), "{reply}");
    let report: Value = match reply {
        Reply::Bulk(b) => serde_json::from_slice(b).expect("report json"),
        Reply::Simple(s) => serde_json::from_str(s).expect("report json"),
        other => panic!("upgrade: {other}"),
    };
    assert_eq!(report["outcome"], "completed", "{report:#}");
}

/// etcd's record of pair `name` after its upgrade tagged `tag`: completed, to 2.0, and the
/// engines at its epoch.
async fn completed_in_etcd(pair: &Pair, etcd: &Etcd, name: &str, tag: &str) -> PairRecord {
    let record = etcd.record(name).await;
    let done = record.upgrade.as_ref().expect("the upgrade is in etcd");
    assert_eq!(done.outcome.as_deref(), Some("completed"), "{done:?}");
    assert_eq!(done.tag.as_deref(), Some(tag));
    assert_eq!(record.version.as_deref(), Some("2.0"));
    assert_eq!(
        assert_epochs_are_etcds(pair, etcd, name).await,
        record.epoch
    );
    record
}

/// Kills etcd and waits for the pair to say its witness is unreachable; that status.
async fn etcd_down(etcd: &mut Etcd, pair: &Pair) -> Value {
    etcd.kill();
    pair.wait_for(|s| s["witness"]["state"] == "unreachable")
        .await
}

/// Says how long etcd was `how` (stopped, down) and how long the test took.
fn say_outage(how: &str, outage: Duration, when: &str, started: Instant) {
    eprintln!(
        "etcd {how} for {:.1} s {when}; test took {:.1} s",
        outage.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// Keeps the writer writing (the pair serving) until `since` is `long` ago.
async fn serve_until(writer: &Writer, since: Instant, long: Duration) {
    while since.elapsed() < long {
        writer.wait_for_more(200).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_in_etcd_before_it_starts_with_its_outcome_after_and_a_tag_runs_once() {
    if no_etcd() {
        return;
    }
    let etcd = Etcd::start("upgrade");
    let pair = witnessed_pair(&etcd, "up");
    pair.wait_in_sync().await;
    let mut events = pair.subscribe().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    let upgrade = start_upgrade(&pair, "c1/up", Duration::from_secs(120));
    // By the time the upgrade starts, etcd holds it, with its tag, and no outcome yet.
    next_event(&mut events, EventKind::UpgradeStart).await;
    let running = etcd
        .record("up")
        .await
        .upgrade
        .expect("the upgrade is in etcd");
    assert_eq!(running.to, "2.0");
    assert_eq!(running.tag.as_deref(), Some("c1/up"));
    assert_eq!(running.outcome, None);
    assert_completed(&upgrade.await.unwrap());
    let record = completed_in_etcd(&pair, &etcd, "up", "c1/up").await;
    let done = record.upgrade.as_ref().unwrap();
    assert!(done.ended_ms.is_some_and(|end| end >= done.started_ms));
    assert_eq!(record.phase, "serving");
    // The same tag again (a resumed campaign asking twice): refused, nothing runs.
    let mut again = vec!["UPGRADE", "1.0"];
    again.extend(QUICK);
    again.extend(["tag", "c1/up"]);
    let reply = pair.admin(&again).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.starts_with("ALREADY")),
        "{reply}"
    );
    assert_eq!(etcd.record("up").await.epoch, record.epoch);
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_lost_while_etcd_is_down_is_replaced_once_etcd_is_back_and_nothing_is_lost() {
    if no_etcd() {
        return;
    }
    let mut etcd = Etcd::start("standby");
    let pair = witnessed_pair(&etcd, "sb");
    let s = pair.wait_in_sync().await;
    let standby = common::pid_of(&s, "standby");
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    etcd_down(&mut etcd, &pair).await;
    // The standby dies: going simplex needs etcd to hold that it is stale first, and a new
    // standby needs etcd too. Both wait; nothing acknowledged may be lost meanwhile.
    common::kill9(standby);
    pair.wait_for(|s| s["standby_promotable"] == false).await;
    etcd.restart();
    let s = pair.wait_in_sync().await;
    assert_ne!(common::pid_of(&s, "standby"), standby);
    assert_eq!(s["witness"]["state"], "ok");
    writer.wait_for_more(1000).await;
    assert_eq!(etcd.record("sb").await.epoch, s["epoch"]);
    check_nothing_lost(&pair, writer).await;
}

/// Waits for the timeline's start of `phase`.
async fn phase_starts(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<common::TimelineEvent>,
    phase: &str,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev))
                if ev.kind == EventKind::PhaseStart && ev.phase.as_deref() == Some(phase) =>
            {
                return
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the timeline subscription ended"),
            Err(_) => panic!("no start of {phase} within {DEADLINE:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_waits_for_a_stalled_etcd_completes_and_its_outcome_is_in_etcd() {
    if no_etcd() {
        return;
    }
    let started = Instant::now();
    let etcd = Etcd::start("stall");
    let pair = witnessed_pair(&etcd, "st");
    pair.wait_in_sync().await;
    let mut events = pair.subscribe().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    let upgrade = start_upgrade(&pair, "c2/st", Duration::from_secs(180));
    // etcd frozen (as a busy etcd 3.4 fsyncing on two loaded cores, only longer) while the
    // new standby catches up: the switchover that follows needs a new epoch in etcd.
    phase_starts(&mut events, "b_catch_up").await;
    let pid = etcd.etcd.as_ref().unwrap().pid().unwrap() as u64;
    signal(pid, "-STOP");
    let stalled = Instant::now();
    pair.wait_for(|s| s["witness"]["state"] == "unreachable")
        .await;
    let stopped_for = stalled.elapsed();
    signal(pid, "-CONT");
    assert_completed(&upgrade.await.unwrap());
    // Its outcome is in etcd (the record written once etcd answered again).
    completed_in_etcd(&pair, &etcd, "st", "c2/st").await;
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
    let log = std::fs::read_to_string(pair.dir.join("supervisor.log")).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("etcd took") || l.contains("waiting for etcd"))
    {
        eprintln!("{line}");
    }
    say_outage("stopped", stopped_for, "during the upgrade", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_expired_in_an_etcd_outage_takes_it_again_and_leads_on() {
    let started = Instant::now();
    let Some((mut etcd, pair)) = short_ttl_pair("expired", "ex").await else {
        return;
    };
    let epoch = assert_epochs_are_etcds(&pair, &etcd, "ex").await;
    let supervisor = pair.wait_in_sync().await["supervisor_pid"].as_u64();
    let leader = etcd.leader_key("ex").await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    etcd_down(&mut etcd, &pair).await;
    // Down for longer than the TTL: the pair serves on at its epoch meanwhile.
    let down = Instant::now();
    writer.wait_for_more(2000).await;
    serve_until(&writer, down, Duration::from_secs(2)).await;
    let outage = down.elapsed();
    etcd.restart();
    // etcd back: the lease is gone (a restarted etcd may renew a lease's TTL, so it is
    // revoked here as its expiry would have ended it).
    let _ = etcd.client().lease_revoke(leader.lease).await;
    // The supervisor takes the leader key again, on a new lease.
    let key = Layout::default().leader("ex");
    let client = etcd.client();
    let now = common::etcd_wait(
        &client,
        &key,
        false,
        "the leader key taken again",
        || async {
            let kv = client.get(&key).await.unwrap();
            kv.filter(|kv| kv.lease != leader.lease)
        },
    )
    .await;
    assert_eq!(now.value, leader.value, "the same supervisor leads");
    let s = pair
        .wait_for(|s| {
            s["witness"]["state"] == "ok"
                && s["witness"]["role"] == "leader"
                && s["standby_promotable"] == true
        })
        .await;
    if let Some(pid) = supervisor {
        assert_eq!(s["supervisor_pid"].as_u64(), Some(pid), "{s:#}");
    }
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    assert_eq!(assert_epochs_are_etcds(&pair, &etcd, "ex").await, epoch + 1);
    assert!(
        !timeline_of(&pair.dir)
            .iter()
            .any(|e| e.kind == EventKind::SteppedDown),
        "the supervisor stepped down"
    );
    writer.wait_for_more(1000).await;
    check_nothing_lost(&pair, writer).await;
    say_outage("down", outage, "(from unreachable) with a 1 s TTL", started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_through_an_etcd_outage_longer_than_the_ttl_ends_with_its_outcome_in_etcd() {
    let started = Instant::now();
    let Some((mut etcd, pair)) = short_ttl_pair("outage", "ou").await else {
        return;
    };
    let leader = etcd.leader_key("ou").await;
    let mut events = pair.subscribe().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    let upgrade = start_upgrade(&pair, "c3/ou", Duration::from_secs(180));
    phase_starts(&mut events, "b_catch_up").await;
    let down = Instant::now();
    etcd_down(&mut etcd, &pair).await;
    // Down for longer than the TTL, the pair serving meanwhile.
    serve_until(&writer, down, Duration::from_secs(3)).await;
    let outage = down.elapsed();
    etcd.restart();
    // The lease ended as its expiry would have (a restarted etcd may renew its TTL).
    let _ = etcd.client().lease_revoke(leader.lease).await;
    assert_completed(&upgrade.await.unwrap());
    completed_in_etcd(&pair, &etcd, "ou", "c3/ou").await;
    assert_eq!(
        etcd.leader("ou").await.as_deref(),
        Some(String::from_utf8_lossy(&leader.value).as_ref()),
        "the same supervisor leads"
    );
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
    say_outage("down", outage, "during the upgrade (TTL 1 s)", started);
}
