//! `tandem demo`: the main job. Starts a pair on free loopback ports, drives it with the load
//! generator, performs the whole rolling upgrade 1.0 -> 2.0 under that load (or the fallback,
//! with `--fault`), writes the run directory and its HTML report, prints a short per-phase
//! table, and stops everything it started, also on Ctrl-C, SIGTERM or SIGHUP; and on SIGKILL,
//! which it cannot catch, its redis-servers die with it and a watchdog stops the pair.
//!
//! With `--peer redis` it then offers the same load (rate, connections, pipeline, mix, value
//! size, keys, seed, and as long as the tandem run's load lasted) to a Redis primary and
//! replica that it starts and stops itself, `WAIT 1 0` after each write, in a run directory
//! of its own (`OUT/peer-redis`), and writes the comparison page (`OUT/compare-peer-redis.html`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reports::run::RunDir;
use reports::summary::Summary;
use resp::Reply;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::contract::PairStatus;
use crate::upgrade::Options;

#[derive(Clone, Debug)]
pub struct DemoArgs {
    pub out: Option<PathBuf>,
    pub quick: bool,
    pub fault: Option<String>,
    /// Requests per second offered by the load generator (open loop).
    pub rate_ops_s: Option<u64>,
    /// Work units (sessions) and database records to preload before the baseline, each.
    pub state: u64,
    /// The pair's secret, for the pair the demo starts and for talking to it.
    pub secret_file: PathBuf,
    /// After the tandem run, the same load against this peer, and a comparison page.
    pub peer: Option<Peer>,
}

/// What `--peer` compares the tandem run with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A Redis primary and its replica (`redis-server` from Debian's package), `WAIT 1 0`
    /// after each write so that a write is acknowledged once the replica has it, as tandem's.
    Redis,
}

impl Peer {
    /// The peer run's directory under the demo's, which also names it on the comparison page
    /// (`compare-peer-redis.html`, as `tandem report OUT --compare OUT/peer-redis` names it).
    pub fn dir_name(self) -> &'static str {
        match self {
            Peer::Redis => "peer-redis",
        }
    }
}

struct Plan {
    rate_ops_s: u64,
    options: Options,
}

fn plan(args: &DemoArgs) -> Plan {
    let (rate_ops_s, window_ms, settle_ms) = if args.quick {
        (5_000, 5_000, 3_000)
    } else {
        (10_000, 20_000, 15_000)
    };
    Plan {
        rate_ops_s: args.rate_ops_s.unwrap_or(rate_ops_s),
        options: Options {
            fault: args.fault.clone(),
            baseline_ms: window_ms,
            evaluate_ms: window_ms,
            settle_ms,
            ..Options::default()
        },
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(f) = &args.fault {
        crate::sessions::Fault::parse(f).map_err(anyhow::Error::msg)?;
    }
    if args.state > crate::state::WORK_UNITS_MAX as u64 {
        bail!(
            "--state {} is above the {} work units an engine holds at most",
            args.state,
            crate::state::WORK_UNITS_MAX
        );
    }
    // Before the tandem run: a missing redis-server is said before anything is started.
    let redis = match args.peer {
        Some(Peer::Redis) => Some(RedisBinary::find()?),
        None => None,
    };
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating the run directory {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let secret = replicator::Secret::load(&args.secret_file)?;
    runtime.block_on(async move {
        // Caught from here to the end, whatever runs: one that comes while the pair starts
        // is seen as soon as it is up, and it is stopped.
        let mut interrupts = Interrupts::catch()?;
        let pair_dir = out.join("pair");
        std::fs::create_dir_all(&pair_dir)?;
        let watchdog = PairWatchdog::start(&pair_dir, &args.secret_file)?;
        let mut pair = start_pair(&pair_dir, &[], &args.secret_file, &secret).await?;
        let result = tokio::select! {
            biased;
            signal = interrupts.recv() => Err(anyhow::anyhow!("interrupted by {signal}: stopping the pair")),
            r = demo(&args, &out, &pair.admin, &secret) => r,
        };
        let stopped = pair.stop().await;
        watchdog.finish(stopped).await;
        let tandem = result?;
        match redis {
            Some(redis) => {
                compare_with_redis(&args, &out, &tandem, &redis, &mut interrupts).await
            }
            None => Ok(()),
        }
    })
}

/// SIGINT (Ctrl-C), SIGTERM (`kill`, a CI job's cancel or timeout, systemd) and SIGHUP (the
/// terminal closed): each stops what the demo started and ends it with an error, as Ctrl-C
/// does. Their handlers are installed for good when this is made; a signal that comes while
/// nobody waits is kept for the next [`Interrupts::recv`].
pub(crate) struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub(crate) fn catch() -> std::io::Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next of them, by name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// `tandem pair down --dir OUT/pair` for when the demo ends without having stopped the pair
/// itself: SIGKILL (a signal no process can catch), a panic, or a supervisor that had to be
/// killed and left its engines. A shell in a process group of its own (signals for the
/// demo's terminal or job do not reach it) that waits on a pipe from the demo: `done` on it
/// and it exits; its end (the demo's death closes it) and it stops the pair, with the
/// supervisor's `SHUTDOWN` while one runs, else engine by engine (see `pair_down.rs`).
///
/// Not a parent-death signal for the supervisor: its SIGTERM (and a fortiori SIGKILL) leaves
/// the engines serving, by design (`tandem pair up --detach` outlives its parent, and a
/// restarted supervisor takes its engines back).
pub(crate) struct PairWatchdog {
    child: Child,
    pipe: Option<tokio::process::ChildStdin>,
    log: PathBuf,
}

impl PairWatchdog {
    /// What the shell runs: `$0 "$@"` is `tandem --secret-file F pair down --dir D`.
    const SCRIPT: &'static str = r#"read said; [ "$said" = done ] || exec "$0" "$@""#;

    pub(crate) fn start(pair_dir: &Path, secret_file: &Path) -> anyhow::Result<PairWatchdog> {
        let log = pair_dir.join("watchdog.log");
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new("/bin/sh")
            .args(["-c", Self::SCRIPT])
            .arg(std::env::current_exe()?)
            .arg("--secret-file")
            .arg(secret_file)
            .args(["pair", "down", "--dir"])
            .arg(pair_dir)
            .stdin(Stdio::piped())
            .stdout(file.try_clone()?)
            .stderr(file)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .context("starting the pair's watchdog (/bin/sh)")?;
        let pipe = child.stdin.take();
        Ok(PairWatchdog { child, pipe, log })
    }

    /// Once the demo has tried to stop the pair: nothing more when it did (`stopped`), else
    /// `tandem pair down` now. Either way it waits for the watchdog to exit.
    pub(crate) async fn finish(mut self, stopped: bool) {
        use tokio::io::AsyncWriteExt;
        let mut pipe = self.pipe.take();
        if stopped {
            if let Some(pipe) = &mut pipe {
                let _ = pipe.write_all(b"done\n").await;
            }
        } else {
            tracing::warn!(
                "the pair's supervisor did not stop it: `tandem pair down` stops what is left \
                 (see {})",
                self.log.display()
            );
        }
        drop(pipe);
        // `pair down` waits up to 10 s for a supervisor and 5 s for each engine.
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "the pair's watchdog did not exit: see {}",
                self.log.display()
            );
        }
    }
}

fn default_out_dir() -> PathBuf {
    let secs = reports::timeline::now_ms() / 1000;
    PathBuf::from("tandem-runs").join(format!("demo-{secs}"))
}

pub(crate) struct PairProcess {
    child: Child,
    pub(crate) admin: String,
    secret: replicator::Secret,
}

impl PairProcess {
    /// Admin `SHUTDOWN` (the supervisor stops both engines, then exits), a kill if the
    /// supervisor has not exited 5 s later. Whether the pair stopped: `SHUTDOWN` was
    /// answered and the supervisor exited by itself; otherwise its engines may still run.
    pub(crate) async fn stop(&mut self) -> bool {
        let mut asked = false;
        if let Ok(mut c) = crate::admin::connect(&self.admin, &self.secret).await {
            asked = c.call(&[b"SHUTDOWN"]).await.is_ok();
        }
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(exited) => asked && exited.is_ok(),
            Err(_) => {
                let _ = self.child.kill().await;
                false
            }
        }
    }
}

/// `tandem pair up` in `dir`, with `flags` besides; back once the pair is ready.
pub(crate) async fn start_pair(
    dir: &std::path::Path,
    flags: &[String],
    secret_file: &std::path::Path,
    secret: &replicator::Secret,
) -> anyhow::Result<PairProcess> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("supervisor.log"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--secret-file")
        .arg(secret_file)
        .args(["pair", "up", "--base-port", "0", "--dir"])
        .arg(dir)
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // A group of its own, as its engines have: SIGINT from the terminal's Ctrl-C, or
        // SIGHUP when the terminal closes, would make it exit and leave its engines serving
        // (what a supervisor does on a signal). They reach the demo alone, which stops the
        // pair with `SHUTDOWN`.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting the pair supervisor")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let admin = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(admin) = line.strip_prefix("READY admin=") {
                return Ok(admin.to_string());
            }
        }
        bail!(
            "the pair supervisor exited before it was ready; see {}",
            dir.join("supervisor.log").display()
        )
    })
    .await
    .context("the pair was not ready within 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(PairProcess {
        child,
        admin,
        secret: secret.clone(),
    })
}

async fn admin_call(
    admin: &str,
    secret: &replicator::Secret,
    args: &[String],
) -> anyhow::Result<Reply> {
    let mut c = crate::admin::connect(admin, secret).await?;
    let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.call(&parts)
        .await
        .map_err(|e| anyhow::anyhow!("supervisor at {admin}: {e}"))
}

async fn pair_status(admin: &str, secret: &replicator::Secret) -> anyhow::Result<PairStatus> {
    match admin_call(admin, secret, &["STATUS".into()]).await? {
        Reply::Bulk(b) => crate::contract::decode("the supervisor", &b).map_err(anyhow::Error::msg),
        other => bail!("status: {other}"),
    }
}

/// Sessions and database records per pipeline, and pipelines in flight, while preloading.
const PRELOAD_PIPELINE: u64 = 1000;
const PRELOAD_CONNECTIONS: u64 = 4;
/// How long a Redis replica may take to acknowledge a preload connection's last write.
const PRELOAD_WAIT_MS: u64 = 60_000;

/// What a preload writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Preload {
    Tandem,
    Redis,
}

impl Preload {
    /// Record `i`'s requests: a work unit (session) and a database record, 100-byte payloads.
    fn requests(self, i: u64, payload: &bytes::Bytes, reqs: &mut Vec<Vec<bytes::Bytes>>) {
        use bytes::Bytes;
        let subscriber = Bytes::from(format!("sub-{}", i % 1000));
        reqs.push(match self {
            Preload::Tandem => vec![
                Bytes::from_static(b"SESSION.OPEN"),
                Bytes::from(format!("pre-{i}")),
                subscriber,
                payload.clone(),
            ],
            // Sessions as hashes, as the load generator's Redis emulation of SESSION.OPEN
            // makes them (`HSET sess:<id> counter 0 subscriber .. payload ..`): the same
            // shape and bytes as the sessions of the load itself.
            Preload::Redis => vec![
                Bytes::from_static(b"HSET"),
                Bytes::from(format!("sess:pre-{i}")),
                Bytes::from_static(b"counter"),
                Bytes::from_static(b"0"),
                Bytes::from_static(b"subscriber"),
                subscriber,
                Bytes::from_static(b"payload"),
                payload.clone(),
            ],
        });
        // The same database records on both: plain strings under the same names.
        reqs.push(vec![
            Bytes::from_static(b"SET"),
            Bytes::from(format!("pre:{i}")),
            payload.clone(),
        ]);
    }
}

/// Preloads `n` work units (sessions `pre-<i>`; on Redis hashes `sess:pre-<i>`) and `n`
/// database records (`pre:<i>`), each with a 100-byte payload, over a few pipelined
/// connections, with a progress line. On Redis each connection ends with a `WAIT` so that the
/// replica holds all of it before the load starts.
async fn preload(addr: &str, n: u64, target: Preload) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..PRELOAD_CONNECTIONS {
        let (addr, done) = (addr.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = resp::Client::connect(addr.as_str()).await?;
            let payload = bytes::Bytes::from(vec![b'p'; 100]);
            let mut start = c * PRELOAD_PIPELINE;
            let mut wrote = false;
            while start < n {
                let end = (start + PRELOAD_PIPELINE).min(n);
                let mut reqs = Vec::with_capacity(2 * (end - start) as usize);
                for i in start..end {
                    target.requests(i, &payload, &mut reqs);
                }
                for r in client.pipeline(&reqs).await? {
                    if let Reply::Error(e) = r {
                        bail!("preloading: {e}");
                    }
                }
                wrote = true;
                done.fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
                start += PRELOAD_CONNECTIONS * PRELOAD_PIPELINE;
            }
            if target == Preload::Redis && wrote {
                let timeout = PRELOAD_WAIT_MS.to_string();
                match client.call(&[b"WAIT", b"1", timeout.as_bytes()]).await? {
                    Reply::Integer(r) if r >= 1 => {}
                    other => bail!(
                        "the Redis replica did not acknowledge the preload within {} s: WAIT \
                         answered {other}",
                        PRELOAD_WAIT_MS / 1000
                    ),
                }
            }
            anyhow::Ok(())
        }));
    }
    let progress = std::io::stderr().is_terminal();
    let all = join_all(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            r = &mut all => { r?; break; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if progress {
                    let d = done.load(std::sync::atomic::Ordering::Relaxed);
                    eprint!("\rpreloading: {d} of {n} work units and database records each");
                }
            }
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    let secs = started.elapsed().as_secs_f64();
    match target {
        Preload::Tandem => println!(
            "preloaded {n} work units and {n} database records (100-byte payloads) in {secs:.1} s"
        ),
        Preload::Redis => println!(
            "preloaded {n} sessions (hashes sess:pre-<i>) and {n} database records (pre:<i>), \
             100-byte payloads, into Redis in {secs:.1} s"
        ),
    }
    Ok(())
}

/// Waits for every task; an error of any is the result.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for t in tasks {
        t.await.context("a preload connection")??;
    }
    Ok(())
}

/// What the tandem run leaves for the peer's: its load and what it measured.
struct TandemRun {
    config: loadgen::Config,
    summary: Summary,
}

impl TandemRun {
    /// How long the load ran (from its first request to its stop, as `summary.json` says).
    fn load_duration(&self) -> Duration {
        let ms = self
            .summary
            .ended_ms
            .saturating_sub(self.summary.started_ms);
        Duration::from_millis(ms.max(1000))
    }
}

/// `1.0 -> 2.0`, and the faulty build when there is one, for the run's environment.
fn target_version(args: &DemoArgs) -> String {
    match &args.fault {
        Some(fault) => format!("1.0 -> 2.0 (faulty: {fault})"),
        None => "1.0 -> 2.0".to_string(),
    }
}

async fn demo(
    args: &DemoArgs,
    out: &std::path::Path,
    admin: &str,
    secret: &replicator::Secret,
) -> anyhow::Result<TandemRun> {
    let plan = plan(args);
    let status = pair_status(admin, secret).await?;
    let targets: Vec<String> = status
        .engines
        .iter()
        .map(|e| e.client_addr().to_string())
        .collect();
    println!(
        "pair up: admin {admin}, engines {}; load {} ops/s; run directory {}",
        targets.join(", "),
        plan.rate_ops_s,
        out.display()
    );
    if args.state > 0 {
        let active = status
            .active_engine()
            .map(|e| e.client_addr.as_str())
            .context("no active engine to preload")?;
        preload(active, args.state, Preload::Tandem).await?;
    }
    let config = loadgen::Config {
        targets,
        admin: Some(admin.to_string()),
        admin_secret: Some(secret.clone()),
        mode: loadgen::Mode::Open {
            rate_ops_s: plan.rate_ops_s,
        },
        connections: 4,
        pipeline: 64,
        duration: Duration::from_secs(15 * 60),
        until_upgrade_end: true,
        tail: Duration::from_secs(1),
        out: Some(out.to_path_buf()),
        progress: std::io::stderr().is_terminal(),
        target_version: Some(target_version(args)),
        notes: vec![("state_work_units".to_string(), args.state.into())],
        ..loadgen::Config::default()
    };
    let load = tokio::spawn(loadgen::run(config.clone()));
    // A second of load before the baseline starts, so that connections are warm.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let printer =
        crate::upgrade_cli::print_timeline(secret, admin, reports::timeline::now_ms()).await?;
    let mut cmd = vec!["UPGRADE".to_string(), "2.0".to_string()];
    cmd.extend(plan.options.to_args());
    let upgraded = admin_call(admin, secret, &cmd).await?;
    if let Reply::Error(e) = &upgraded {
        bail!("the upgrade was refused: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    println!("verifying every acknowledged update...");
    let result = load.await.context("the load generator stopped")??;
    let run = RunDir::new(out);
    let report = run.render_report().context("rendering the report")?;
    println!();
    loadgen::output::print_summary(&result.summary);
    let problems = run.check()?;
    for p in &problems {
        eprintln!("run check: {p}");
    }
    println!("\nreport: {}", report.display());
    if result.summary.lost_updates > 0 {
        bail!(
            "{} acknowledged updates were lost",
            result.summary.lost_updates
        );
    }
    Ok(TandemRun {
        config,
        summary: result.summary,
    })
}

/// `redis-server` as found on `PATH`, and its version.
#[derive(Clone, Debug)]
struct RedisBinary {
    path: PathBuf,
    version: String,
}

impl RedisBinary {
    fn find() -> anyhow::Result<RedisBinary> {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("redis-server"))
            .find(|f| {
                f.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .context(
                "--peer redis needs redis-server, which is not on PATH: install it with \
                 `apt-get install redis-server` (or scripts/setup.sh)",
            )?;
        let out = std::process::Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} --version", path.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} --version failed ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // `Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=...`
        let version = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or("(unknown version)")
            .to_string();
        Ok(RedisBinary { path, version })
    }
}

/// How long a redis-server may take to answer, and its replica to attach.
const REDIS_START_DEADLINE: Duration = Duration::from_secs(30);
/// How often a starting redis-server is asked whether it is there yet (it says nothing
/// else when it is: its exit is noticed at once).
const REDIS_POLL: Duration = Duration::from_millis(10);
/// Ports tried for one redis-server (another process may take the one we picked first).
const REDIS_BIND_ATTEMPTS: usize = 5;
/// How long a redis-server has to exit after `SHUTDOWN NOSAVE` before it is killed.
const REDIS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// One redis-server child of the demo.
struct RedisServer {
    name: &'static str,
    addr: String,
    child: Child,
    log: PathBuf,
}

/// Why a redis-server was not what was waited for.
enum Waited {
    /// It exited, with this status.
    Exited(std::process::ExitStatus),
    Deadline,
    Io(std::io::Error),
}

impl RedisServer {
    /// Asks `INFO <section>` every [`REDIS_POLL`] until `ready` says yes, or the deadline
    /// passes; the child's exit is noticed at once, whatever a call waits for.
    async fn poll_info(
        &mut self,
        section: &str,
        deadline: Instant,
        ready: impl Fn(&str) -> bool,
    ) -> Result<(), Waited> {
        let RedisServer { addr, child, .. } = self;
        let addr = addr.as_str();
        let poll = async {
            loop {
                if let Some(info) = redis_info(addr, section).await {
                    if ready(&info) {
                        return;
                    }
                }
                tokio::time::sleep(REDIS_POLL).await;
            }
        };
        tokio::select! {
            biased;
            status = child.wait() => Err(match status {
                Ok(status) => Waited::Exited(status),
                Err(e) => Waited::Io(e),
            }),
            () = poll => Ok(()),
            () = tokio::time::sleep_until(deadline.into()) => Err(Waited::Deadline),
        }
    }

    /// Waits until the server on `addr` answers as this child (`INFO server`'s
    /// `process_id`: not another program that took the port), or the child exits, or the
    /// deadline passes.
    async fn wait_serving(&mut self, deadline: Instant) -> Result<(), Waited> {
        let pid = self.child.id().map(|p| p.to_string());
        self.poll_info("server", deadline, |info| {
            info_field(info, "process_id") == pid.as_deref()
        })
        .await
    }

    /// `SHUTDOWN NOSAVE`, then a kill if it has not exited after [`REDIS_STOP_TIMEOUT`].
    async fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(1), resp::Client::connect(&*self.addr)).await
        {
            c.set_timeout(Some(Duration::from_secs(2)));
            // It answers by closing the connection.
            let _ = c.call(&[b"SHUTDOWN", b"NOSAVE"]).await;
        }
        if tokio::time::timeout(REDIS_STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "redis-server ({}) did not exit within {} s of SHUTDOWN NOSAVE: killing it",
                self.name,
                REDIS_STOP_TIMEOUT.as_secs()
            );
            let _ = self.child.kill().await;
        }
    }
}

/// The Redis primary and replica of `--peer redis`: children of this process (killed if
/// dropped, and when the demo dies), their working directory and logs in `dir`, stopped by
/// [`RedisServers::stop`].
struct RedisServers {
    bin: RedisBinary,
    dir: PathBuf,
    running: Vec<RedisServer>,
}

impl RedisServers {
    fn new(bin: RedisBinary, dir: PathBuf) -> RedisServers {
        RedisServers {
            bin,
            dir,
            running: Vec::new(),
        }
    }

    /// Starts redis-server `name` (`primary`, `replica`) on a free loopback port, with no
    /// persistence, and returns its address once it answers. A port someone else took in
    /// the meantime is given up for another.
    async fn start(&mut self, name: &'static str, extra: &[String]) -> anyhow::Result<String> {
        self.start_on(name, extra, &mut free_port).await
    }

    /// [`RedisServers::start`] on the ports `pick` gives, one per attempt.
    async fn start_on(
        &mut self,
        name: &'static str,
        extra: &[String],
        pick: &mut dyn FnMut() -> anyhow::Result<u16>,
    ) -> anyhow::Result<String> {
        let log = self.dir.join(format!("{name}.log"));
        for attempt in 1..=REDIS_BIND_ATTEMPTS {
            let port = pick()?;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let said_before = file.metadata()?.len();
            let mut command = Command::new(&self.bin.path);
            let demo = rustix::process::getpid();
            // SAFETY: the closure runs in the forked child before exec, where only
            // async-signal-safe calls are allowed: it makes two system calls (prctl,
            // getppid), through rustix, without allocating (its errors are raw errnos) or
            // taking a lock, and touches nothing of the parent's but a copied pid.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(move || die_with_the_demo(demo));
            }
            let child = command
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                // A primary waits 5 s by default for more replicas before a full sync.
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--dbfilename", &format!("{name}.rdb"), "--dir"])
                .arg(&self.dir)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", self.bin.path.display()))?;
            self.running.push(RedisServer {
                name,
                addr: format!("127.0.0.1:{port}"),
                child,
                log: log.clone(),
            });
            let server = self.running.last_mut().expect("just pushed");
            match server
                .wait_serving(Instant::now() + REDIS_START_DEADLINE)
                .await
            {
                Ok(()) => return Ok(server.addr.clone()),
                Err(Waited::Deadline) => bail!(
                    "redis-server ({name}) did not answer on {} within {} s; see {}",
                    server.addr,
                    REDIS_START_DEADLINE.as_secs(),
                    log.display()
                ),
                Err(Waited::Io(e)) => return Err(e).context("waiting for redis-server"),
                Err(Waited::Exited(status)) => {
                    let addr = server.addr.clone();
                    self.running.pop();
                    let said = read_from(&log, said_before);
                    if said.contains("Address already in use") && attempt < REDIS_BIND_ATTEMPTS {
                        tracing::info!("{addr} was taken before redis-server ({name}) bound it: trying another port");
                        continue;
                    }
                    let last = said
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("");
                    bail!(
                        "redis-server ({name}) exited ({status}) before it served on {addr}: {}; see {}",
                        last.trim(),
                        log.display()
                    );
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Waits for the replica's link to the primary (`master_link_status:up`).
    async fn wait_attached(&mut self, replica: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + REDIS_START_DEADLINE;
        let server = self
            .running
            .iter_mut()
            .find(|s| s.addr == replica)
            .context("the replica is not running")?;
        let waited = server
            .poll_info("replication", deadline, |info| {
                info_field(info, "master_link_status") == Some("up")
            })
            .await;
        let log = server.log.display();
        match waited {
            Ok(()) => Ok(()),
            Err(Waited::Deadline) => bail!(
                "the Redis replica did not attach to its primary within {} s; see {log}",
                REDIS_START_DEADLINE.as_secs()
            ),
            Err(Waited::Exited(status)) => {
                bail!("the Redis replica exited ({status}) before it attached; see {log}")
            }
            Err(Waited::Io(e)) => Err(e).context("waiting for the Redis replica"),
        }
    }

    /// Stops every server, the replica first: a primary with a replica attached would wait
    /// for it to catch up before it shuts down.
    async fn stop(&mut self) {
        while let Some(mut server) = self.running.pop() {
            server.stop().await;
        }
    }
}

/// In a redis-server child, before exec: SIGKILL when the demo dies, however it dies (SIGKILL
/// included, which no cleanup of the demo's own survives); the servers keep nothing worth a
/// graceful shutdown (no persistence). If the demo died between the fork and this, the
/// server is not started.
///
/// The kernel sends it when the *thread* that forked the child ends, not the process. The
/// servers are spawned by [`RedisServers::start_on`], which runs in the future that
/// `runtime.block_on` drives in [`run`]: on the main thread, which ends only with the
/// process. (A runtime worker would do too, they live as long as the runtime, which outlives
/// the servers; a `spawn_blocking` thread would not, it ends when idle.)
fn die_with_the_demo(demo: rustix::process::Pid) -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != Some(demo) {
        return Err(rustix::io::Errno::SRCH.into());
    }
    Ok(())
}

/// A loopback port that was free a moment ago (bound on 127.0.0.1:0 and released), for
/// redis-server, which cannot be told to pick its own.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("looking for a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// What `path` holds from byte `offset` on (what one attempt logged).
fn read_from(path: &Path, offset: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned()
}

/// `INFO <section>` of the Redis server on `addr`; `None` while it does not answer.
async fn redis_info(addr: &str, section: &str) -> Option<String> {
    let mut c = resp::Client::connect_timeout(addr, Duration::from_secs(1))
        .await
        .ok()?;
    c.set_timeout(Some(Duration::from_secs(2)));
    match c.call(&[b"INFO", section.as_bytes()]).await.ok()? {
        Reply::Bulk(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        _ => None,
    }
}

/// `field:value` of an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// `--peer redis`, after the tandem run: the same load against a Redis primary + replica
/// with `WAIT 1 0` after each write, its run directory and report, and the comparison page.
/// The servers are stopped whatever happens: also on SIGINT, SIGTERM or SIGHUP, and they
/// die with the demo on SIGKILL ([`die_with_the_demo`]).
async fn compare_with_redis(
    args: &DemoArgs,
    out: &Path,
    tandem: &TandemRun,
    bin: &RedisBinary,
    interrupts: &mut Interrupts,
) -> anyhow::Result<()> {
    let peer_out = out.join(Peer::Redis.dir_name());
    // A directory this command writes: what an earlier run left there would be mixed in.
    if peer_out.exists() {
        std::fs::remove_dir_all(&peer_out)
            .with_context(|| format!("removing the earlier {}", peer_out.display()))?;
    }
    let redis_dir = peer_out.join("redis");
    std::fs::create_dir_all(&redis_dir)
        .with_context(|| format!("creating {}", redis_dir.display()))?;
    let mut servers = RedisServers::new(bin.clone(), redis_dir);
    let result = tokio::select! {
        // First: one that came while the pair stopped means no Redis run at all.
        biased;
        signal = interrupts.recv() => Err(anyhow::anyhow!("interrupted by {signal}: stopping Redis")),
        r = redis_run(&mut servers, args, &peer_out, tandem) => r,
    };
    servers.stop().await;
    let redis = result?;
    let comparison = write_comparison(out, &peer_out)?;
    println!(
        "\nthe same load on Redis {} (primary + replica, WAIT 1 0 after each write):",
        bin.version
    );
    loadgen::output::print_summary(&redis);
    println!(
        "\nreports: {} (tandem), {} (Redis)",
        RunDir::new(out).report_path().display(),
        RunDir::new(&peer_out).report_path().display()
    );
    println!("comparison: {}", comparison.display());
    Ok(())
}

/// The Redis run: servers up, the same preload as the tandem run's, the same load for as
/// long, its report.
async fn redis_run(
    servers: &mut RedisServers,
    args: &DemoArgs,
    peer_out: &Path,
    tandem: &TandemRun,
) -> anyhow::Result<Summary> {
    let primary = servers.start("primary", &[]).await?;
    let port = primary.rsplit_once(':').expect("host:port").1.to_string();
    let replica = servers
        .start("replica", &["--replicaof".into(), "127.0.0.1".into(), port])
        .await?;
    servers.wait_attached(&replica).await?;
    let duration = tandem.load_duration();
    println!(
        "\nRedis {} up: primary {primary}, replica {replica}; the same load for {:.1} s, WAIT 1 0 \
         after each write; run directory {}",
        servers.bin.version,
        duration.as_secs_f64(),
        peer_out.display()
    );
    if args.state > 0 {
        preload(&primary, args.state, Preload::Redis).await?;
    }
    let config = loadgen::Config {
        targets: vec![primary, replica],
        admin: None,
        admin_secret: None,
        redis: true,
        redis_wait: true,
        duration,
        until_upgrade_end: false,
        out: Some(peer_out.to_path_buf()),
        // Redis says its own version (INFO server).
        target_version: None,
        // The same rate, connections, pipeline, mix, value size, keys, distribution, seed
        // and state note as the tandem run's.
        ..tandem.config.clone()
    };
    let result = loadgen::run(config)
        .await
        .context("the load generator on Redis")?;
    let run = RunDir::new(peer_out);
    run.render_report()
        .context("rendering the Redis run's report")?;
    for p in run.check()? {
        eprintln!("run check (Redis): {p}");
    }
    Ok(result.summary)
}

/// `OUT/compare-peer-redis.html`: the tandem run (named by its directory) and the Redis run
/// side by side, as `tandem report OUT --compare OUT/peer-redis` writes it.
fn write_comparison(out: &Path, peer_out: &Path) -> anyhow::Result<PathBuf> {
    let label = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tandem".to_string());
    RunDir::new(out)
        .render_compare(&RunDir::new(peer_out), &label, Peer::Redis.dir_name())
        .context("writing the comparison page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nmaster_link_down_since_seconds:-1\r\n";
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "master_link"), None);
        assert_eq!(info_field(info, "process_id"), None);
    }

    #[test]
    fn both_preloads_write_the_same_database_records() {
        let payload = bytes::Bytes::from(vec![b'p'; 100]);
        let (mut tandem, mut redis) = (Vec::new(), Vec::new());
        Preload::Tandem.requests(7, &payload, &mut tandem);
        Preload::Redis.requests(7, &payload, &mut redis);
        assert_eq!(tandem[1], redis[1]);
        assert_eq!(&tandem[1][1][..], b"pre:7");
        assert_eq!(&tandem[0][0][..], b"SESSION.OPEN");
        assert_eq!(&redis[0][0][..], b"HSET");
        assert_eq!(&redis[0][1][..], b"sess:pre-7");
        assert!(redis[0].contains(&payload) && tandem[0].contains(&payload));
    }

    fn servers(name: &str) -> RedisServers {
        let dir =
            std::env::temp_dir().join(format!("tandem-demo-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = RedisBinary::find().expect("redis-server installed (scripts/setup.sh)");
        RedisServers::new(bin, dir)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A port someone took between our pick and redis-server's bind: another is tried.
    #[test]
    fn a_port_taken_before_redis_binds_it_is_given_up_for_another() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut servers = servers("taken");
        let mut picks = vec![taken_port];
        let mut pick = || match picks.pop() {
            Some(p) => Ok(p),
            None => free_port(),
        };
        runtime().block_on(async {
            let addr = servers.start_on("primary", &[], &mut pick).await.unwrap();
            assert_ne!(addr, format!("127.0.0.1:{taken_port}"));
            assert!(redis_info(&addr, "server").await.is_some());
            let mut server = servers.running.pop().unwrap();
            server.stop().await;
            assert!(server.child.try_wait().unwrap().is_some(), "stopped");
        });
        let log = std::fs::read_to_string(servers.dir.join("primary.log")).unwrap();
        assert!(log.contains("Address already in use"), "{log}");
        let _ = std::fs::remove_dir_all(&servers.dir);
    }

    /// Any other failure to start is an error that says what redis-server said.
    #[test]
    fn a_redis_server_that_cannot_start_says_why() {
        let mut servers = servers("bad");
        let err = runtime()
            .block_on(servers.start("primary", &["--no-such-directive".into(), "1".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis-server (primary) exited") && err.contains("primary.log"),
            "{err}"
        );
        assert!(servers.running.is_empty());
        let _ = std::fs::remove_dir_all(&servers.dir);
    }

    #[test]
    fn the_target_version_names_a_faulty_build() {
        let args = |fault: Option<&str>| DemoArgs {
            out: None,
            quick: true,
            fault: fault.map(str::to_string),
            rate_ops_s: None,
            state: 0,
            secret_file: PathBuf::new(),
            peer: Some(Peer::Redis),
        };
        assert_eq!(target_version(&args(None)), "1.0 -> 2.0");
        assert_eq!(
            target_version(&args(Some("errors"))),
            "1.0 -> 2.0 (faulty: errors)"
        );
    }
}
