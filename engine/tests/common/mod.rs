//! Test harness: a real pair (`tandem pair up`) on OS-chosen loopback ports, torn down on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use resp::{Client, Reply};
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

/// `UPGRADE` options for tests: short windows, and an acceptance check that judges errors
/// only: latency is for the benchmarks, and a noisy machine must not turn a test's upgrade
/// into a rollback.
pub const UPGRADE_QUICK: [&str; 10] = [
    "baseline_ms",
    "500",
    "evaluate_ms",
    "1000",
    "settle_ms",
    "200",
    "catch_up_timeout_ms",
    "30000",
    "p99_slack_ms",
    "60000",
];

/// `UPGRADE_QUICK` with shorter baseline and settle windows and a minute for the catch-up:
/// for tests whose upgrade goes on through a fault (a killed engine, etcd stalled or down).
pub const UPGRADE_QUICK_PATIENT: [&str; 10] = [
    "baseline_ms",
    "300",
    "evaluate_ms",
    "1000",
    "settle_ms",
    "100",
    "catch_up_timeout_ms",
    "60000",
    "p99_slack_ms",
    "60000",
];

pub struct Pair {
    supervisor: Child,
    pub admin: String,
    pub dir: PathBuf,
    /// The pair's own secret (each test pair has one, in its directory).
    pub secret: replicator::Secret,
    flags: Vec<String>,
}

#[allow(unused_imports)]
pub use reports::timeline::{Event as TimelineEvent, EventKind};

/// Starts `tandem pair up` on `dir` and waits for its `READY` line.
fn start_supervisor(dir: &std::path::Path, flags: &[String]) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("supervisor.log"))
        .expect("supervisor log");
    let mut supervisor = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .env("TANDEM_SECRET_FILE", dir.join("secret"))
        .args(["pair", "up", "--base-port", "0", "--dir"])
        .arg(dir)
        .args(flags)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start tandem pair up");
    let stdout = supervisor.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(admin) = line.strip_prefix("READY admin=") {
                let _ = tx.send(admin.to_string());
            }
        }
    });
    let admin = rx.recv_timeout(DEADLINE).expect("pair ready");
    (supervisor, admin)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pair {
    pub fn up() -> Pair {
        Pair::up_with(&[])
    }

    /// A pair with more `tandem pair up` flags.
    pub fn up_with(flags: &[&str]) -> Pair {
        Pair::up_in(flags, None)
    }

    /// A pair of a fleet: it takes the secret in `secret_file` (a copy in its directory), so
    /// that one secret reaches every supervisor of the fleet (as `tandem campaign` needs).
    pub fn up_sharing(secret_file: &std::path::Path, flags: &[&str]) -> Pair {
        Pair::up_in(flags, Some(secret_file))
    }

    fn up_in(flags: &[&str], shared_secret: Option<&std::path::Path>) -> Pair {
        let dir = std::env::temp_dir().join(format!(
            "tandem-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("test directory");
        let secret_file = dir.join("secret");
        if let Some(shared) = shared_secret {
            std::fs::copy(shared, &secret_file).expect("the fleet's secret");
        }
        let secret = replicator::Secret::load_or_create(&secret_file).expect("secret");
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let (supervisor, admin) = start_supervisor(&dir, &flags);
        Pair {
            supervisor,
            admin,
            dir,
            secret,
            flags,
        }
    }

    /// SIGKILL of the supervisor only: its engines go on.
    pub fn kill_supervisor(&mut self) {
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }

    /// A new supervisor on the pair's directory (`tandem pair up --dir` again).
    pub fn restart_supervisor(&mut self) {
        self.restart_with(&[]);
    }

    fn restart_with(&mut self, extra: &[&str]) {
        let mut flags = self.flags.clone();
        flags.extend(extra.iter().map(|f| f.to_string()));
        let (supervisor, admin) = start_supervisor(&self.dir, &flags);
        self.supervisor = supervisor;
        self.admin = admin;
    }

    /// A new, empty pair on the same directory (`tandem pair up --fresh`).
    pub fn restart_fresh(&mut self) {
        self.restart_with(&["--fresh"]);
    }

    /// The pair's timeline as it happens (past events first), through `SUBSCRIBE`.
    pub async fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<TimelineEvent> {
        let mut c = self.admin_client().await;
        c.queue(&[b"SUBSCRIBE"]);
        c.flush().await.expect("subscribe");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Reply::Bulk(json)) = c.read_reply().await {
                if let Ok(ev) = serde_json::from_slice::<TimelineEvent>(&json) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    /// The timeline as written in the pair's directory.
    pub fn timeline(&self) -> Vec<TimelineEvent> {
        let text = std::fs::read(self.dir.join("timeline.json")).expect("timeline.json");
        serde_json::from_slice::<reports::timeline::Timeline>(&text)
            .expect("timeline")
            .events
    }

    /// An authenticated connection to the supervisor's admin endpoint.
    pub async fn admin_client(&self) -> Client {
        Client::connect_authenticated(&self.admin, Duration::from_secs(5), &self.secret, "admin")
            .await
            .expect("admin reachable")
    }

    pub async fn admin(&self, args: &[&str]) -> Reply {
        let mut c = self.admin_client().await;
        c.set_timeout(Some(Duration::from_secs(30)));
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        c.call(&parts).await.expect("admin call")
    }

    pub async fn status(&self) -> Value {
        match self.admin(&["STATUS"]).await {
            Reply::Bulk(b) => serde_json::from_slice(&b).expect("status json"),
            other => panic!("status: {other}"),
        }
    }

    pub fn engine<'a>(status: &'a Value, role: &str) -> Option<&'a Value> {
        status["engines"]
            .as_array()?
            .iter()
            .find(|e| e["role"] == role)
    }

    /// Waits until the pair has an active and an in-sync standby; returns the status.
    pub async fn wait_in_sync(&self) -> Value {
        self.wait_for(|s| {
            s["standby_promotable"] == true
                && Pair::engine(s, "standby").is_some_and(|e| e["in_sync"] == true)
        })
        .await
    }

    /// Polls the pair's status until `cond` holds, failing after the deadline.
    pub async fn wait_for(&self, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let s = self.status().await;
            if cond(&s) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "condition not reached; last status: {s:#}"
            );
        }
    }

    pub async fn active_client(&self) -> Client {
        let s = self.wait_for(|s| Pair::engine(s, "active").is_some()).await;
        let addr = Pair::engine(&s, "active").unwrap()["client_addr"]
            .as_str()
            .unwrap()
            .to_string();
        Client::connect_timeout(addr, Duration::from_secs(5))
            .await
            .expect("connect to the active")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Engines outlive their supervisor: kill it, then every engine of this directory.
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        for pid in engine::process::engines_under(&self.dir) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        if std::thread::panicking() {
            // Show what the pair said before the failure.
            for log in ["supervisor.log", "a.log", "b.log"] {
                let text = std::fs::read_to_string(self.dir.join(log)).unwrap_or_default();
                eprintln!("---- {log}\n{text}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn kill9(pid: u64) {
    signal(pid, "-9");
}

/// Sends a signal (`-9`, `-STOP`, `-CONT`) to a process.
pub fn signal(pid: u64, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid}");
}

/// The application version of each engine in a status.
pub fn versions(s: &Value) -> Vec<String> {
    s["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["app_version"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The pid of the engine with `role` in a status.
pub fn pid_of(status: &Value, role: &str) -> u64 {
    Pair::engine(status, role)
        .and_then(|e| e["pid"].as_u64())
        .unwrap_or_else(|| panic!("no {role} engine in {status:#}"))
}

/// Fills the pair with `n` sessions of `payload_bytes` each (pipelined), so that a catch-up
/// takes a while.
pub async fn preload(pair: &Pair, n: usize, payload_bytes: usize) {
    let mut client = pair.active_client().await;
    let payload = Bytes::from(vec![b'p'; payload_bytes]);
    for start in (0..n).step_by(1000) {
        let reqs: Vec<Vec<Bytes>> = (start..(start + 1000).min(n))
            .map(|i| {
                vec![
                    Bytes::from_static(b"SESSION.OPEN"),
                    Bytes::from(format!("pre-{i}")),
                    Bytes::from_static(b"sub"),
                    payload.clone(),
                ]
            })
            .collect();
        for r in client.pipeline(&reqs).await.expect("preload") {
            assert!(!r.is_error(), "preload: {r}");
        }
    }
}

pub fn set(key: &str, value: &str) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"SET"),
        Bytes::from(key.to_string()),
        Bytes::from(value.to_string()),
    ]
}

pub fn get(key: &str) -> Vec<Bytes> {
    vec![Bytes::from_static(b"GET"), Bytes::from(key.to_string())]
}

/// A client that keeps writing through switchovers, failovers and reloads: it follows
/// `-NOTACTIVE <addr>` and reconnects to the active after a dropped connection, and keeps
/// every acknowledged write (`key -> value`). Writes of unknown outcome are not counted.
pub struct Writer {
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub handle: tokio::task::JoinHandle<WriterReport>,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    progress: tokio::sync::watch::Receiver<u64>,
}

#[derive(Default, Debug)]
pub struct WriterReport {
    pub acked: std::collections::HashMap<String, String>,
    pub errors: u64,
    pub redirects: u64,
    /// Pipelines that got no answer within the client's timeout (a hung engine).
    pub timeouts: u64,
}

impl Writer {
    /// Acknowledged so far (the writer keeps going).
    pub fn acked(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until the writer has `n` more acknowledged writes than now.
    pub async fn wait_for_more(&self, n: u64) {
        let target = self.acked() + n;
        let mut progress = self.progress.clone();
        let reached = tokio::time::timeout(DEADLINE, progress.wait_for(|&acked| acked >= target));
        assert!(
            matches!(reached.await, Ok(Ok(_))),
            "writes did not go on: {} acknowledged, waited for {target}",
            self.acked()
        );
    }
}

impl Writer {
    pub fn start(pair: &Pair, prefix: &'static str) -> Writer {
        let admin = pair.admin.clone();
        let secret = pair.secret.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = count.clone();
        let (progress_tx, progress) = tokio::sync::watch::channel(0u64);
        let handle = tokio::spawn(async move {
            let mut report = WriterReport::default();
            let mut client: Option<Client> = None;
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let c = match client.as_mut() {
                    Some(c) => c,
                    None => {
                        client = connect_active(&admin, &secret).await;
                        if client.is_none() {
                            // No supervisor or no active just now: ask again shortly.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        continue;
                    }
                };
                let reqs: Vec<Vec<Bytes>> = (0..32)
                    .map(|i| set(&format!("{prefix}{}", n + i), &format!("v{}", n + i)))
                    .collect();
                match c.pipeline(&reqs).await {
                    Ok(replies) => {
                        let mut redirect = None;
                        for (i, r) in replies.iter().enumerate() {
                            match r {
                                Reply::Simple(ok) if ok == "OK" => {
                                    report.acked.insert(
                                        format!("{prefix}{}", n + i as u64),
                                        format!("v{}", n + i as u64),
                                    );
                                    let acked = counter.fetch_add(1, Ordering::Relaxed) + 1;
                                    progress_tx.send_replace(acked);
                                }
                                Reply::Error(e) if e.starts_with("NOTACTIVE ") => {
                                    redirect = Some(e[10..].to_string())
                                }
                                _ => report.errors += 1,
                            }
                        }
                        if let Some(addr) = redirect {
                            report.redirects += 1;
                            client = following_client(&addr).await;
                        }
                    }
                    Err(resp::ClientError::Timeout) => {
                        report.timeouts += 1;
                        client = None;
                    }
                    Err(_) => client = None,
                }
                n += 32;
            }
            report
        });
        Writer {
            stop,
            handle,
            count,
            progress,
        }
    }

    pub async fn finish(self) -> WriterReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.expect("writer task")
    }
}

/// A pipeline unanswered this long: the writer gives the connection up (a hung engine) and
/// asks the supervisor where the active is.
const WRITER_TIMEOUT: Duration = Duration::from_secs(2);

async fn connect_active(admin: &str, secret: &replicator::Secret) -> Option<Client> {
    let mut c = Client::connect_authenticated(admin, Duration::from_secs(2), secret, "admin")
        .await
        .ok()?;
    c.set_timeout(Some(Duration::from_secs(5)));
    let Ok(Reply::Bulk(b)) = c.call(&[b"STATUS"]).await else {
        return None;
    };
    let s: Value = serde_json::from_slice(&b).ok()?;
    let addr = Pair::engine(&s, "active")?["client_addr"]
        .as_str()?
        .to_string();
    following_client(&addr).await
}

/// A client connection to an engine that is told the active's address when refused
/// (`CLIENT NOTACTIVE ON`: `-NOTACTIVE <addr>` rather than Redis's `-READONLY`).
pub async fn following_client(addr: &str) -> Option<Client> {
    let mut client = Client::connect_timeout(addr, Duration::from_secs(2))
        .await
        .ok()?;
    client.set_timeout(Some(WRITER_TIMEOUT));
    client.call(&[b"CLIENT", b"NOTACTIVE", b"ON"]).await.ok()?;
    Some(client)
}

/// The exact lost-update check: every key written and acknowledged reads back, from the
/// pair's active, with the value last acknowledged.
pub async fn assert_none_lost(pair: &Pair, written: &std::collections::HashMap<String, String>) {
    let mut client = pair.active_client().await;
    let missing = lost(&mut client, written).await;
    assert!(
        missing.is_empty(),
        "{} of {} lost: {:?}",
        missing.len(),
        written.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Reads every key back from the active and returns the ones missing or different.
pub async fn lost(
    client: &mut Client,
    expected: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let keys: Vec<&String> = expected.keys().collect();
    let mut lost = Vec::new();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Vec<Bytes>> = chunk.iter().map(|k| get(k)).collect();
        let replies = client.pipeline(&reqs).await.expect("read back");
        for (k, r) in chunk.iter().zip(replies) {
            if r.as_bytes() != Some(expected[*k].as_bytes()) {
                lost.push((*k).clone());
            }
        }
    }
    lost
}

/// Waits until `check` (which reads what it needs from etcd) says yes, on an etcd watch of
/// `key` (or of every key under it, with `prefix`): `check` runs now and again after each
/// change there, within [`DEADLINE`]; `what` names the wait in the panic.
pub async fn etcd_wait<T, F, Fut>(
    client: &fleet::Client,
    key: &str,
    prefix: bool,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Registered before the first look: a change after it is an event.
    let mut watch = client.watch(key, prefix).await.expect("an etcd watch");
    loop {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::timeout_at(deadline, watch.changed())
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
            .expect("the etcd watch");
    }
}
