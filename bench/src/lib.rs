//! Shared pieces of the benchmark suite (`benches/`): the quick mode, real processes (a tandem
//! pair, Redis) on OS-chosen ports that are always torn down, and a pipelined RESP writer
//! that both the tandem and the Redis benchmarks use. See `bench/README.md` for the suite and
//! `bench/RESULTS.md` for the figures.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use resp::{Client, Reply};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long anything a benchmark waits for may take before the benchmark fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The suite's notices (a stale binary, a missing redis-server) through the workspace's one
/// logging setup, on stderr beside criterion's output.
fn logging() {
    cli::logging::init();
}

/// `TANDEM_BENCH_QUICK=1`: minimum sample sizes, short measurements, smaller states.
pub fn quick() -> bool {
    std::env::var("TANDEM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Settings of the micro benchmarks (`benches/` but `scenarios.rs`).
pub mod micro {
    use std::time::Duration;

    use criterion::measurement::Measurement;
    use criterion::BenchmarkGroup;

    /// Criterion's defaults shortened (1 s warm-up, 3 s measurement, 100 samples); in quick
    /// mode 0.3 s, 0.7 s and 10 samples.
    pub fn configure<M: Measurement>(group: &mut BenchmarkGroup<'_, M>) {
        if super::quick() {
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_millis(700));
        } else {
            group
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
        }
    }
}

/// Settings of the scenario benchmarks (`benches/scenarios.rs`).
pub mod scenario {
    use std::time::Duration;

    use criterion::measurement::Measurement;
    use criterion::{BenchmarkGroup, SamplingMode};

    /// For benchmarks whose iterations are cheap and need no setup (throughput): 1 s warm-up,
    /// 3 s measurement, 50 samples; in quick mode 0.3 s, 1 s and 10 samples.
    pub fn configure_throughput<M: Measurement>(group: &mut BenchmarkGroup<'_, M>) {
        if super::quick() {
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_secs(1));
        } else {
            group
                .sample_size(50)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
        }
    }

    /// For benchmarks whose every iteration is an event that takes about `expected` and needs
    /// untimed setup around it (a switchover, a failover, a catch-up, an upgrade): flat
    /// sampling, 10 samples (criterion's least), one warm-up iteration, and a measurement
    /// time that comes to one iteration per sample in quick mode and about three otherwise.
    /// Criterion warns that it cannot complete the samples in that time when it plans one
    /// iteration per sample: that is intended.
    pub fn configure_events<M: Measurement>(group: &mut BenchmarkGroup<'_, M>, expected: Duration) {
        let per_sample = if super::quick() { 1 } else { 3 };
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_nanos(1))
            .measurement_time(expected * 10 * per_sample);
    }
}

/// A current-thread tokio runtime for a benchmark's client side.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A port that was free a moment ago (bound on 127.0.0.1:0 and released): for servers that
/// cannot be told to choose their own, such as `redis-server`.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(PathBuf);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tandem-bench-{what}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("benchmark directory");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop, panic or not.
pub struct ProcessGuard(Child);

impl ProcessGuard {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL to one process.
pub fn kill9(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap_or_else(|| panic!("not a pid: {pid}"));
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .unwrap_or_else(|e| panic!("kill -9 {pid:?}: {e}"));
}

/// The `tandem` executable of this build: `target/release/tandem`, next to the benchmark's
/// own `target/release/deps/...`. Run by cargo (`$CARGO` set), the benchmark first builds it
/// (`cargo build --release -p engine --bin tandem`: a no-op when it is up to date), so that a
/// stale binary is never measured; otherwise it must exist.
pub fn tandem_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let me = std::env::current_exe().expect("the benchmark's own path");
        let exe = me
            .parent()
            .and_then(Path::parent)
            .expect("the benchmark runs from target/<profile>/deps")
            .join("tandem");
        let built = std::env::var_os("CARGO").map(|cargo| {
            Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--quiet",
                    "-p",
                    "engine",
                    "--bin",
                    "tandem",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
        });
        match built {
            Some(Ok(s)) if s.success() && exe.is_file() => {}
            _ if exe.is_file() => {
                logging();
                tracing::warn!(
                    "could not (re)build {}; measuring the binary that is there",
                    exe.display()
                )
            }
            other => panic!(
                "{} is missing and could not be built ({other:?}): run \
                 `cargo build --release -p engine --bin tandem` and look at its errors",
                exe.display()
            ),
        }
        exe
    })
    .clone()
}

/// The engine of a pair playing `role`, as the supervisor's `STATUS` shows it.
pub fn engine<'a>(status: &'a Value, role: &str) -> Option<&'a Value> {
    status["engines"]
        .as_array()?
        .iter()
        .find(|e| e["role"] == role)
}

/// A string field of the engine playing `role`.
pub fn engine_field(status: &Value, role: &str, field: &str) -> String {
    engine(status, role)
        .and_then(|e| e[field].as_str())
        .unwrap_or_else(|| panic!("no {field} of a {role} engine in {status:#}"))
        .to_string()
}

/// The pid of the engine playing `role`.
pub fn engine_pid(status: &Value, role: &str) -> u32 {
    engine(status, role)
        .and_then(|e| e["pid"].as_u64())
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_else(|| panic!("no pid of a {role} engine in {status:#}"))
}

/// The pair is duplex: an active, and a standby the supervisor counts as promotable.
pub fn duplex(status: &Value) -> bool {
    status["standby_promotable"] == true
        && engine(status, "active").is_some()
        && engine(status, "standby").is_some_and(|e| e["in_sync"] == true)
}

/// A tandem pair (`tandem pair up --base-port 0 --detach`) in its own temp dir with its own
/// secret; `tandem pair down --dir` on drop, then SIGKILL to any engine left of that dir.
pub struct Pair {
    pub admin: String,
    pub secret: replicator::Secret,
    dir: TempDir,
}

impl Pair {
    pub fn up(extra_flags: &[&str]) -> Pair {
        let dir = TempDir::new("pair");
        let secret_file = dir.path().join("secret");
        let secret = replicator::Secret::load_or_create(&secret_file).expect("pair secret");
        let out = Command::new(tandem_exe())
            .env("TANDEM_SECRET_FILE", &secret_file)
            .args(["pair", "up", "--base-port", "0", "--detach", "--dir"])
            .arg(dir.path())
            .args(extra_flags)
            .stdin(Stdio::null())
            .output()
            .expect("running tandem pair up");
        let pair_json = std::fs::read(dir.path().join("pair.json"));
        let admin = match (out.status.success(), pair_json) {
            (true, Ok(json)) => {
                let v: Value = serde_json::from_slice(&json).expect("pair.json");
                v["admin"].as_str().expect("admin in pair.json").to_string()
            }
            _ => panic!(
                "tandem pair up failed: {}{}\nsupervisor.log:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.path().join("supervisor.log")).unwrap_or_default()
            ),
        };
        Pair { admin, secret, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An authenticated connection to the supervisor's admin endpoint.
    pub async fn admin(&self) -> Admin {
        let client = Client::connect_authenticated(&self.admin, DEADLINE, &self.secret, "admin")
            .await
            .unwrap_or_else(|e| panic!("admin endpoint {}: {e}", self.admin));
        Admin { client }
    }

    /// An authenticated connection to an engine's control port (`TANDEM.*`).
    pub async fn control(&self, control_addr: &str) -> Admin {
        let client = Client::connect_authenticated(control_addr, DEADLINE, &self.secret, "control")
            .await
            .unwrap_or_else(|e| panic!("control port {control_addr}: {e}"));
        Admin { client }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let down = Command::new(tandem_exe())
            .env("TANDEM_SECRET_FILE", self.dir.path().join("secret"))
            .args(["pair", "down", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !down.is_ok_and(|s| s.success()) {
            logging();
            tracing::warn!(
                "tandem pair down --dir {} failed",
                self.dir.path().display()
            );
        }
        for pid in engine::process::engines_under(self.dir.path()) {
            let _ = std::panic::catch_unwind(|| kill9(pid));
        }
        if std::thread::panicking() {
            for log in ["supervisor.log", "a.log", "b.log"] {
                let text = std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("---- {log} (last lines)");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

/// One authenticated RESP connection to a supervisor's admin endpoint or an engine's control
/// port; every call must answer within [`DEADLINE`].
pub struct Admin {
    client: Client,
}

impl Admin {
    /// A call whose reply is not an error; its text (simple string or bulk).
    pub async fn call(&mut self, args: &[&str]) -> String {
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let reply = tokio::time::timeout(DEADLINE, self.client.call(&parts))
            .await
            .unwrap_or_else(|_| panic!("{args:?}: no answer within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        match reply {
            Reply::Simple(s) => s,
            Reply::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
            other => panic!("{args:?} answered {other}"),
        }
    }

    /// The JSON answer of `STATUS` (admin) or `TANDEM.STATUS` (control).
    pub async fn json(&mut self, args: &[&str]) -> Value {
        let text = self.call(args).await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    pub async fn status(&mut self) -> Value {
        self.json(&["STATUS"]).await
    }

    /// Polls `STATUS` every `every` until `cond` holds; fails after [`DEADLINE`].
    pub async fn wait_for(&mut self, every: Duration, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let s = self.status().await;
            if cond(&s) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the pair did not get there within {DEADLINE:?}; last status: {s:#}"
            );
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until the pair is duplex again (see [`duplex`]).
    pub async fn wait_duplex(&mut self) -> Value {
        self.wait_for(Duration::from_millis(10), duplex).await
    }
}

/// Requests encoded once, sent as one pipeline again and again.
#[derive(Clone)]
pub struct Pipeline {
    bytes: Bytes,
    count: usize,
}

impl Pipeline {
    pub fn new<'a>(requests: impl IntoIterator<Item = Vec<&'a [u8]>>) -> Pipeline {
        let mut buf = BytesMut::new();
        let mut count = 0;
        for args in requests {
            resp::encode_request(&mut buf, &args);
            count += 1;
        }
        Pipeline {
            bytes: buf.freeze(),
            count,
        }
    }

    /// `count` `SET <prefix><i> <value>` with a value of `value_bytes` bytes.
    pub fn sets(prefix: &str, count: usize, value_bytes: usize) -> Pipeline {
        let keys: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        let value = vec![b'v'; value_bytes];
        Pipeline::new(
            keys.iter()
                .map(|k| vec![&b"SET"[..], k.as_bytes(), &value[..]]),
        )
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A RESP connection that sends a [`Pipeline`] with one write while it reads the replies.
pub struct Conn {
    stream: TcpStream,
    rx: BytesMut,
}

/// What the replies of one pipeline said.
#[derive(Debug, Default)]
pub struct Replies {
    pub errors: usize,
    pub first_error: Option<String>,
}

impl Conn {
    /// Connects, and asks to be told the active's address when refused (`CLIENT NOTACTIVE
    /// ON`: `-NOTACTIVE <addr>` rather than Redis's `-READONLY`).
    pub async fn connect(addr: &str) -> std::io::Result<Conn> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream
            .write_all(b"*3\r\n$6\r\nCLIENT\r\n$9\r\nNOTACTIVE\r\n$2\r\nON\r\n")
            .await?;
        let mut rx = BytesMut::with_capacity(64 << 10);
        while !rx.windows(2).any(|w| w == b"\r\n") {
            if stream.read_buf(&mut rx).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        let end = rx.windows(2).position(|w| w == b"\r\n").expect("found") + 2;
        let _ = rx.split_to(end); // +OK (or a server that is not tandem's error)
        Ok(Conn { stream, rx })
    }

    /// Sends the pipeline and reads one reply per request.
    pub async fn send(&mut self, pipeline: &Pipeline) -> Result<Replies, resp::ClientError> {
        let (mut reader, mut writer) = self.stream.split();
        let rx = &mut self.rx;
        let write = async { Ok(writer.write_all(&pipeline.bytes).await?) };
        let read = async {
            let mut replies = Replies::default();
            let limits = resp::Limits::default();
            for _ in 0..pipeline.count {
                let reply = loop {
                    if let Some(reply) = resp::parse_reply(rx, &limits)? {
                        break reply;
                    }
                    rx.reserve(16 << 10);
                    if tokio::io::AsyncReadExt::read_buf(&mut reader, rx).await? == 0 {
                        return Err(resp::ClientError::Closed);
                    }
                };
                if let Reply::Error(e) = reply {
                    replies.errors += 1;
                    replies.first_error.get_or_insert(e);
                }
            }
            Ok(replies)
        };
        let ((), replies) = tokio::try_join!(write, read)?;
        Ok(replies)
    }

    /// [`Conn::send`], failing the benchmark on an error reply or after [`DEADLINE`].
    pub async fn send_ok(&mut self, pipeline: &Pipeline) {
        let replies = tokio::time::timeout(DEADLINE, self.send(pipeline))
            .await
            .expect("replies within the deadline")
            .expect("connection");
        if let Some(e) = replies.first_error {
            panic!("{} error replies, the first: {e}", replies.errors);
        }
    }
}

/// Writes one `SET` to `addr` until it is acknowledged: through `conn` (reconnecting after a
/// dropped connection), again at once after `-NOTACTIVE` or any error reply. Fails after
/// [`DEADLINE`]. For "how soon does the new active serve".
pub async fn write_until_ok(addr: &str, conn: &mut Option<Conn>) {
    let probe = Pipeline::sets("probe:", 1, 16);
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < DEADLINE,
            "no write acknowledged by {addr} within {DEADLINE:?}"
        );
        let Some(c) = conn.as_mut() else {
            match Conn::connect(addr).await {
                Ok(c) => *conn = Some(c),
                // Not listening (yet): the only case that waits a little before trying again.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(5), c.send(&probe)).await {
            Ok(Ok(r)) if r.errors == 0 => return,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => *conn = None,
        }
    }
}

/// Fills a pair with `n` work units: `SESSION.OPEN pre-<i> sub-<i % 1000> <payload>`, 1000
/// per pipeline.
pub async fn preload_sessions(client_addr: &str, n: usize, payload_bytes: usize) {
    let mut conn = Conn::connect(client_addr)
        .await
        .expect("connect to preload");
    let payload = vec![b'p'; payload_bytes];
    for start in (0..n).step_by(1000) {
        let ids: Vec<(String, String)> = (start..(start + 1000).min(n))
            .map(|i| (format!("pre-{i}"), format!("sub-{}", i % 1000)))
            .collect();
        let pipeline = Pipeline::new(ids.iter().map(|(id, sub)| {
            vec![
                &b"SESSION.OPEN"[..],
                id.as_bytes(),
                sub.as_bytes(),
                &payload[..],
            ]
        }));
        conn.send_ok(&pipeline).await;
    }
}

/// A background write load on its own thread: `connections` connections, each sending a
/// pipeline of `pipeline` SETs every `interval` (a paced closed loop), following the active
/// through switchovers (`-NOTACTIVE <addr>`, or the supervisor's status after a dropped
/// connection). Stopped on drop.
pub struct Load {
    counters: Arc<LoadCounters>,
    progress: tokio::sync::watch::Receiver<u64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug)]
pub struct LoadShape {
    pub connections: usize,
    pub pipeline: usize,
    pub interval: Duration,
}

struct LoadCounters {
    stop: AtomicBool,
    acked: AtomicU64,
    errors: AtomicU64,
    progress: tokio::sync::watch::Sender<u64>,
}

impl Load {
    pub fn start(pair: &Pair, shape: LoadShape) -> Load {
        let (progress_tx, progress) = tokio::sync::watch::channel(0u64);
        let counters = Arc::new(LoadCounters {
            stop: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            progress: progress_tx,
        });
        let (admin, secret, shared) = (pair.admin.clone(), pair.secret.clone(), counters.clone());
        let thread = std::thread::spawn(move || {
            runtime().block_on(async move {
                let mut tasks = tokio::task::JoinSet::new();
                for c in 0..shape.connections {
                    let pipeline = Pipeline::sets(&format!("load:{c}:"), shape.pipeline, 100);
                    let writer = load_connection(
                        admin.clone(),
                        secret.clone(),
                        pipeline,
                        shape.interval,
                        shared.clone(),
                    );
                    tasks.spawn(writer);
                }
                while tasks.join_next().await.is_some() {}
            })
        });
        Load {
            counters,
            progress,
            thread: Some(thread),
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.counters.acked.load(Ordering::Relaxed)
    }

    /// Error replies other than redirections so far.
    pub fn errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// Waits until `n` more writes than now are acknowledged; fails after [`DEADLINE`].
    pub async fn wait_for_more(&self, n: u64) {
        let target = self.acked() + n;
        let mut progress = self.progress.clone();
        let reached = tokio::time::timeout(DEADLINE, progress.wait_for(|&a| a >= target)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "the load did not go on: {} acknowledged, waited for {target}",
            self.acked()
        );
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of a [`Load`].
async fn load_connection(
    admin: String,
    secret: replicator::Secret,
    pipeline: Pipeline,
    interval: Duration,
    counters: Arc<LoadCounters>,
) {
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !counters.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let Some(c) = conn.as_mut() else {
            conn = connect_active(&admin, &secret).await;
            continue;
        };
        let Ok(Ok(replies)) = tokio::time::timeout(Duration::from_secs(2), c.send(&pipeline)).await
        else {
            conn = None; // dropped or hung: ask the supervisor where the active is
            continue;
        };
        let ok = (pipeline.len() - replies.errors) as u64;
        let acked = counters.acked.fetch_add(ok, Ordering::Relaxed) + ok;
        counters.progress.send_replace(acked);
        match replies.first_error {
            None => {}
            // Not the active (any more): go where it says, or ask the supervisor.
            Some(err) if err.starts_with("NOTACTIVE") => {
                conn = match redirect(&err) {
                    Some(to) => Conn::connect(&to).await.ok(),
                    None => None,
                };
            }
            Some(_) => {
                counters
                    .errors
                    .fetch_add(replies.errors as u64, Ordering::Relaxed);
            }
        }
    }
}

/// The address in `NOTACTIVE <addr>`, if the error is one with an address.
fn redirect(error: &str) -> Option<String> {
    let addr = error.strip_prefix("NOTACTIVE ")?;
    addr.parse::<std::net::SocketAddr>().ok()?;
    Some(addr.to_string())
}

/// A plain connection to whichever engine the supervisor says is active.
async fn connect_active(admin: &str, secret: &replicator::Secret) -> Option<Conn> {
    let mut c = Client::connect_authenticated(admin, Duration::from_secs(2), secret, "admin")
        .await
        .ok()?;
    c.set_timeout(Some(Duration::from_secs(5)));
    let Ok(Reply::Bulk(b)) = c.call(&[b"STATUS"]).await else {
        return None;
    };
    let status: Value = serde_json::from_slice(&b).ok()?;
    let addr = engine(&status, "active")?["client_addr"]
        .as_str()?
        .to_string();
    Conn::connect(&addr).await.ok()
}

/// Redis: a primary with an asynchronous replica (no persistence), each a `redis-server`
/// child on a free port in its own temp dir, killed on drop. `None`, with a notice, when
/// `redis-server` is not installed.
pub struct RedisPair {
    pub primary: String,
    pub replica: String,
    _processes: Vec<ProcessGuard>,
    _dir: TempDir,
}

impl RedisPair {
    pub async fn start() -> Option<RedisPair> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            logging();
            tracing::warn!("redis-server is not installed: the Redis peer benchmarks are skipped");
            return None;
        }
        let dir = TempDir::new("redis");
        let (p, r) = (free_port(), free_port());
        let primary = redis_server(dir.path(), p, &[]);
        let replica = redis_server(dir.path(), r, &["--replicaof", "127.0.0.1", &p.to_string()]);
        let pair = RedisPair {
            primary: format!("127.0.0.1:{p}"),
            replica: format!("127.0.0.1:{r}"),
            _processes: vec![primary, replica],
            _dir: dir,
        };
        // The replica is attached once its link to the primary is up.
        let start = Instant::now();
        loop {
            let info = redis_call(&pair.replica, &[b"INFO", b"replication"]).await;
            if info.is_some_and(|i| i.contains("master_link_status:up")) {
                return Some(pair);
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the Redis replica did not attach within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn redis_server(dir: &Path, port: u16, extra: &[&str]) -> ProcessGuard {
    let log = std::fs::File::create(dir.join(format!("redis-{port}.log"))).expect("redis log");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("starting redis-server");
    ProcessGuard(child)
}

/// One call to a Redis server; `None` while it does not answer.
async fn redis_call(addr: &str, args: &[&[u8]]) -> Option<String> {
    let mut c = Client::connect_timeout(addr, Duration::from_secs(1))
        .await
        .ok()?;
    c.set_timeout(Some(Duration::from_secs(5)));
    match c.call(args).await.ok()? {
        Reply::Bulk(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Reply::Simple(s) => Some(s),
        _ => None,
    }
}
