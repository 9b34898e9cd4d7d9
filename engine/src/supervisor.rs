//! The pair supervisor: starts engines A and B from its own executable, serves the admin
//! endpoint, grants epochs and leases, and replaces a failed engine without ever losing an
//! acknowledged write.
//!
//! Every tick it renews the active's lease (stamped with its clock, see `node.rs`) and learns
//! from the reply whether the standby is in sync: the standby is *promotable* only then, and
//! the supervisor marks it not promotable (on disk, see `pair_state.rs`) before it lets the
//! active run simplex. When the active is lost (its process exited, or it answered no lease for
//! `hang_timeout`):
//! - a promotable standby is promoted in a new epoch, retried until it answers (a promotion
//!   whose answer was lost is found out by the retry); a standby that says its state is not
//!   whole is never promoted;
//! - otherwise, if the lost active's journal exists, that engine is killed if it still runs,
//!   restarted from its journal, and promoted;
//! - otherwise no engine is known to hold every acknowledged write: the pair refuses writes and
//!   says why (status, timeline, log) until an operator accepts the loss (`PROMOTE name FORCE`).
//!
//! A hung engine that was replaced is fenced: it must follow the new active when it answers
//! again, and is killed if it does not within `hung_kill_after`. A dead standby is restarted
//! and catches up.
//!
//! Engines outlive the supervisor. A supervisor started on a directory whose engines still run
//! adopts them (checks who they are through their control ports, takes the highest epoch,
//! resumes the leases) and finishes or rolls back an upgrade its predecessor left half done.
//! Long operations (an upgrade, see `upgrade.rs`) keep the pair served through
//! [`Supervisor::pump`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reports::timeline::{self, Event as TimelineEvent, EventKind, SwitchoverKind, Timeline};
use resp::{Client, ClientError, Reply};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

use crate::admin;
use crate::contract::{
    self, Code, DownEngine, Message, PairEngine, PairStatus, PendingFailover, Ready,
};
use crate::node::{EngineStatus, Role};
use crate::pair_state::{DirLock, EngineState, PairState, UpgradeState};
use crate::process::Watched;

const TICK: Duration = Duration::from_millis(50);
/// Control calls other than the lease: status, follow, promote.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A status asked of each engine for `STATUS`: a hung engine must not hold the answer up.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);
/// An engine has this long to be ready (a recovery replays its whole journal first).
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A switchover drains what is in flight to the standby first: it may take longer than a call.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// The active writes its journal's checkpoint before a planned simplex window.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(60);
/// The standby (and a fenced engine) is looked at every this many ticks...
const STANDBY_CHECK_TICKS: u64 = 10;
/// ...briefly: a hung standby must not hold up the active's leases.
const STANDBY_CHECK_TIMEOUT: Duration = Duration::from_millis(100);

/// Timeouts of the failure detector and the leases (flags of `tandem pair up`).
#[derive(Clone, Debug)]
pub struct Timing {
    /// A simplex lease lasts this long after the supervisor sent it.
    pub lease_ttl: Duration,
    /// An active that answers no lease renewal for this long is taken for hung and replaced.
    pub hang_timeout: Duration,
    /// A replaced (fenced) or silent standby engine that stays unresponsive this long is killed
    /// and restarted.
    pub hung_kill_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: Duration::from_millis(500),
            hang_timeout: Duration::from_millis(500),
            hung_kill_after: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PairArgs {
    pub dir: PathBuf,
    pub base_port: u16,
    pub app_version: String,
    /// The pair's secret, handed to every engine by path.
    pub secret_file: PathBuf,
    /// The client port's `AUTH` password, if any (handed to engines in their environment).
    pub requirepass: Option<String>,
    pub timing: Timing,
    /// Simplex writes are released only once on disk (the journal); false: memory only.
    pub journal: bool,
    /// Start empty even if the directory holds a pair whose engines are gone.
    pub fresh: bool,
    /// More `tandem engine` flags for every engine (link and client limits).
    pub engine_args: Vec<String>,
}

pub(crate) struct Slot {
    pub name: &'static str,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
    pub app_version: String,
    pub fault: Option<String>,
    pub pid: Option<u32>,
    process: Option<Watched>,
    client: Option<Client>,
    /// The supervisor is stopping this engine on purpose: do not replace it.
    expected_exit: bool,
    /// When this engine last answered a control call.
    last_answer: Instant,
    /// Replaced while it hung: when it answers again it must follow the active, not serve.
    fenced: bool,
}

impl Slot {
    fn new(name: &'static str, base_port: u16, offsets: [u16; 3], app_version: &str) -> Slot {
        Slot {
            name,
            client_addr: addr_for(base_port, offsets[0]),
            replication_addr: addr_for(base_port, offsets[1]),
            control_addr: addr_for(base_port, offsets[2]),
            app_version: app_version.to_string(),
            fault: None,
            pid: None,
            process: None,
            client: None,
            expected_exit: false,
            last_answer: Instant::now(),
            fenced: false,
        }
    }

    fn alive(&self) -> bool {
        self.pid.is_some() && !self.expected_exit
    }

    fn state(&self) -> EngineState {
        EngineState {
            name: self.name.into(),
            pid: self.pid,
            app_version: self.app_version.clone(),
            fault: self.fault.clone(),
            client_addr: self.client_addr.clone(),
            replication_addr: self.replication_addr.clone(),
            control_addr: self.control_addr.clone(),
        }
    }
}

pub(crate) enum Event {
    Exited {
        slot: usize,
        pid: u32,
    },
    Admin {
        cmd: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Subscribe {
        tx: mpsc::Sender<String>,
    },
}

/// Events queued for the supervisor's loop, at most (admin commands wait for room).
const EVENTS_QUEUE: usize = 256;

/// A failover under way: the standby to promote, in this epoch, until it answers.
#[derive(Clone, Debug)]
struct Promotion {
    target: usize,
    epoch: u64,
    since: Instant,
    attempts: u32,
    last_error: Option<String>,
    /// What happened to the active (for the timeline).
    cause: String,
}

/// How an engine is started.
enum Start {
    Active,
    Follow(String),
    /// From its journal, out of service until promoted.
    Recover,
}

pub(crate) struct Supervisor {
    pub args: PairArgs,
    pub admin_addr: String,
    pub slots: [Slot; 2],
    pub active: usize,
    pub epoch: u64,
    pub promotable: bool,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    tick: tokio::time::Interval,
    ticks: u64,
    timeline: Timeline,
    subscribers: Vec<mpsc::Sender<String>>,
    /// A long operation is running: other long operations are refused meanwhile.
    busy: bool,
    shutdown: bool,
    /// Exit leaving the engines running (a signal to the supervisor, not `SHUTDOWN`).
    leave: bool,
    secret: replicator::Secret,
    promotion: Option<Promotion>,
    /// Why the pair refuses writes (no engine known to hold every acknowledged write).
    pub unavailable: Option<String>,
    /// Failovers and recoveries so far: an upgrade notices the ones during its steps.
    pub failovers: u64,
    /// The upgrade in progress, as persisted.
    pub upgrade_state: Option<UpgradeState>,
    /// Has this pair ever acknowledged a write (on disk, so that no successor assumes not)?
    pub released_any: bool,
    /// The last reply said so that did not fit the contract (said once, not every tick).
    contract_error: Option<String>,
    _lock: DirLock,
}

fn addr_for(base: u16, offset: u16) -> String {
    if base == 0 {
        "127.0.0.1:0".into()
    } else {
        format!("127.0.0.1:{}", base + offset)
    }
}

fn engine_index(name: &str) -> Option<usize> {
    match name {
        "a" => Some(0),
        "b" => Some(1),
        _ => None,
    }
}

pub fn run_pair(args: PairArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
        let lock = DirLock::take(&args.dir).map_err(anyhow::Error::msg)?;
        let previous = match args.fresh {
            true => None,
            false => PairState::load(&args.dir).map_err(anyhow::Error::msg)?,
        };
        // A restarted supervisor keeps its predecessor's admin address when it can.
        let listener = match previous.as_ref().map(|p| p.admin.clone()) {
            Some(addr) if args.base_port == 0 || addr == addr_for(args.base_port, 0) => {
                match TcpListener::bind(&addr).await {
                    Ok(l) => l,
                    Err(_) => TcpListener::bind(addr_for(args.base_port, 0)).await?,
                }
            }
            _ => TcpListener::bind(addr_for(args.base_port, 0)).await?,
        };
        let admin_addr = listener.local_addr()?.to_string();
        let secret = replicator::Secret::load(&args.secret_file)?;
        let (events_tx, events) = mpsc::channel(EVENTS_QUEUE);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let base = args.base_port;
        let mut sup = Supervisor {
            slots: [
                Slot::new("a", base, [1, 2, 5], &args.app_version),
                Slot::new("b", base, [3, 4, 6], &args.app_version),
            ],
            args: args.clone(),
            admin_addr: admin_addr.clone(),
            active: 0,
            epoch: 1,
            promotable: true,
            events_tx: events_tx.clone(),
            events,
            tick,
            ticks: 0,
            timeline: load_timeline(&args.dir),
            subscribers: Vec::new(),
            busy: false,
            shutdown: false,
            leave: false,
            secret: secret.clone(),
            promotion: None,
            unavailable: None,
            failovers: 0,
            upgrade_state: None,
            released_any: false,
            contract_error: None,
            _lock: lock,
        };
        match previous {
            None => sup.start_fresh().await?,
            Some(state) => sup.adopt(state).await?,
        }
        tokio::spawn(admin::serve(listener, events_tx, secret));
        sup.write_pair_file();
        sup.write_timeline();
        println!("READY admin={admin_addr}");
        eprintln!(
            "pair up: admin {admin_addr}, {} active on {}, {} standby on {}",
            sup.slots[sup.active].name,
            sup.slots[sup.active].client_addr,
            sup.slots[sup.standby()].name,
            sup.slots[sup.standby()].client_addr
        );
        if sup.upgrade_state.is_some() {
            sup.busy = true;
            sup.resume_upgrade().await;
            sup.busy = false;
        }
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        while !sup.shutdown {
            tokio::select! {
                _ = sup.tick.tick() => sup.on_tick().await,
                ev = sup.events.recv() => match ev {
                    Some(ev) => sup.handle(ev).await,
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => sup.leave = true,
                _ = terminate.recv() => sup.leave = true,
            }
            sup.shutdown |= sup.leave;
        }
        if sup.leave {
            eprintln!(
                "supervisor stopping; the engines keep serving. `tandem pair up --dir {0}` takes them back, `tandem pair down --dir {0}` stops them",
                sup.args.dir.display()
            );
            return Ok(());
        }
        sup.stop_all().await;
        PairState::remove(&sup.args.dir);
        let _ = std::fs::remove_file(sup.args.dir.join("pair.json"));
        eprintln!("pair down");
        Ok(())
    })
}

fn load_timeline(dir: &std::path::Path) -> Timeline {
    std::fs::read(dir.join("timeline.json"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

/// Why a control call brought no reply to use. Decisions are made on the variant (and a
/// refusal's [`Code`]), never on the text.
#[derive(Clone, Debug)]
pub enum CallError {
    /// The engine refused: its code, and its whole error text.
    Refused(Code, String),
    /// The engine did not take this supervisor's secret.
    Unauthenticated(String),
    /// The engine answered something that is not the contract's message (another tandem
    /// build, see `contract.rs`).
    Garbled(String),
    /// No answer: not running, not connected, or not within the timeout.
    NoAnswer(String),
}

impl CallError {
    /// The refusal's code, if the engine refused.
    pub fn code(&self) -> Option<Code> {
        match self {
            CallError::Refused(code, _) => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused(_, e)
            | CallError::Unauthenticated(e)
            | CallError::Garbled(e)
            | CallError::NoAnswer(e) => f.write_str(e),
        }
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

impl Supervisor {
    pub fn standby(&self) -> usize {
        1 - self.active
    }

    /// Is there an active engine serving (no failover under way, not unavailable)?
    pub fn has_active(&self) -> bool {
        self.promotion.is_none() && self.unavailable.is_none() && self.slots[self.active].alive()
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// A new pair: A active, B its standby, both empty (so B is trivially promotable).
    async fn start_fresh(&mut self) -> anyhow::Result<()> {
        self.persist();
        self.start(0, Start::Active).await?;
        let follow = self.slots[0].replication_addr.clone();
        self.start(1, Start::Follow(follow)).await?;
        self.persist();
        Ok(())
    }

    /// Everything the supervisor knows, as it must survive it.
    fn pair_state(&self) -> PairState {
        let mut s = PairState::new(
            self.admin_addr.clone(),
            self.epoch,
            self.slots[self.active].name.into(),
            self.promotable,
        );
        s.unavailable = self.unavailable.clone();
        s.released_any = self.released_any;
        s.engines = self.slots.iter().map(Slot::state).collect();
        s.upgrade = self.upgrade_state.clone();
        s
    }

    /// Writes the supervisor's state to disk; called before acting on a change.
    pub fn persist(&self) {
        if let Err(e) = self.pair_state().save(&self.args.dir) {
            eprintln!("could not save the supervisor's state: {e}");
        }
    }

    /// Starts an engine process of this executable, in a process group of its own.
    async fn start(&mut self, i: usize, how: Start) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the tandem executable")?;
        let slot = &self.slots[i];
        let log_path = self.args.dir.join(format!("{}.log", slot.name));
        let data_dir = self.args.dir.join(slot.name);
        let mut cmd = Command::new(exe);
        cmd.arg("engine")
            .args(["--name", slot.name])
            .args(["--client-addr", &slot.client_addr])
            .args(["--replication-addr", &slot.replication_addr])
            .args(["--control-addr", &slot.control_addr])
            .arg("--secret-file")
            .arg(&self.args.secret_file)
            .args(["--app-version", &slot.app_version])
            .args(["--epoch", &self.epoch.to_string()])
            .arg("--supervised")
            .args(&self.args.engine_args);
        if self.args.journal {
            cmd.arg("--data-dir").arg(&data_dir);
        }
        if let Some(fault) = &slot.fault {
            cmd.args(["--fault", fault]);
        }
        if let Some(pass) = &self.args.requirepass {
            cmd.env("TANDEM_REQUIREPASS", pass);
        }
        match &how {
            Start::Active => cmd.args(["--active-epoch", &self.epoch.to_string()]),
            Start::Follow(addr) => cmd.args(["--follow", addr]),
            Start::Recover => cmd.arg("--recover"),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().context("starting an engine process")?;
        let pid = child.id().unwrap_or(0);
        // Opened before anything can reap the child: the pid is surely this process's.
        let process = Watched::open(pid).context("watching the engine process")?;
        let stdout = child.stdout.take().expect("piped stdout");
        tokio::spawn(async move {
            let _ = child.wait().await; // reaps it; the pidfd tells the supervisor
        });
        let mut lines = BufReader::new(stdout).lines();
        let name = slot.name;
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(json) = line.strip_prefix("READY ") {
                    let from = format!("engine {name}");
                    return contract::decode::<Ready>(&from, json.as_bytes())
                        .map_err(anyhow::Error::msg);
                }
            }
            let last = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = last.lines().last().unwrap_or("").to_string();
            bail!("engine {name} exited before it was ready: {last}")
        })
        .await;
        let ready = match ready {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                process.kill();
                bail!("engine {name} not ready within {START_TIMEOUT:?}")
            }
        };
        let slot = &mut self.slots[i];
        slot.client_addr = ready.client_addr;
        slot.replication_addr = ready.replication_addr;
        slot.control_addr = ready.control_addr;
        slot.client = None;
        slot.expected_exit = false;
        slot.fenced = false;
        slot.last_answer = Instant::now();
        eprintln!(
            "started engine {} {} (pid {pid}) on {}{}",
            slot.name,
            slot.app_version,
            slot.client_addr,
            match how {
                Start::Recover => format!(
                    ", recovered {}",
                    serde_json::to_string(&ready.recovered).unwrap_or_default()
                ),
                _ => String::new(),
            }
        );
        self.watch(i, process);
        self.persist();
        Ok(())
    }

    /// Takes `process` as engine `i`'s and tells the loop when it exits.
    fn watch(&mut self, i: usize, process: Watched) {
        let pid = process.pid;
        self.slots[i].pid = Some(pid);
        self.slots[i].process = Some(process.clone());
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            process.exited().await;
            let _ = events.send(Event::Exited { slot: i, pid }).await;
        });
    }

    /// Kills an engine process (SIGKILL through its pidfd).
    fn kill(&mut self, i: usize) {
        if let Some(p) = &self.slots[i].process {
            p.kill();
        }
    }

    pub async fn call(&mut self, i: usize, args: &[&str]) -> Result<Reply, CallError> {
        self.call_timeout(i, args, CALL_TIMEOUT).await
    }

    /// A control call that may take up to `timeout` (connecting and authenticating included).
    pub async fn call_timeout(
        &mut self,
        i: usize,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let secret = self.secret.clone();
        let slot = &mut self.slots[i];
        if slot.pid.is_none() {
            return Err(CallError::NoAnswer(format!(
                "engine {} is not running",
                slot.name
            )));
        }
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let result = tokio::time::timeout(timeout, async {
            if slot.client.is_none() {
                let c =
                    Client::connect_authenticated(&slot.control_addr, timeout, &secret, "control")
                        .await?;
                slot.client = Some(c);
            }
            slot.client
                .as_mut()
                .expect("connected above")
                .call(&parts)
                .await
        })
        .await;
        match result {
            Ok(Ok(Reply::Error(e))) => {
                slot.last_answer = Instant::now();
                Err(CallError::Refused(Code::of(&e), e))
            }
            Ok(Ok(r)) => {
                slot.last_answer = Instant::now();
                Ok(r)
            }
            Ok(Err(e @ ClientError::Auth(_))) => {
                slot.client = None;
                Err(CallError::Unauthenticated(format!(
                    "engine {}: {e}",
                    slot.name
                )))
            }
            Ok(Err(e)) => {
                slot.client = None;
                Err(CallError::NoAnswer(format!(
                    "engine {} did not answer: {e}",
                    slot.name
                )))
            }
            Err(_) => {
                slot.client = None; // its answer may still come: on a connection now closed
                Err(CallError::NoAnswer(format!(
                    "engine {} did not answer within {} ms",
                    slot.name,
                    timeout.as_millis()
                )))
            }
        }
    }

    /// A control call whose reply is a message of the contract (see `contract.rs`).
    pub async fn call_message<T: Message>(
        &mut self,
        i: usize,
        args: &[&str],
        timeout: Duration,
    ) -> Result<T, CallError> {
        let reply = self.call_timeout(i, args, timeout).await?;
        let from = format!("engine {}", self.slots[i].name);
        let decoded = match reply {
            Reply::Bulk(b) => contract::decode(&from, &b),
            other => Err(format!("{from} answered {} with {other}", args[0])),
        };
        decoded.map_err(|e| {
            self.note_contract_error(&e);
            CallError::Garbled(e)
        })
    }

    async fn status_of(&mut self, i: usize, timeout: Duration) -> Result<EngineStatus, CallError> {
        self.call_message(i, &["TANDEM.STATUS"], timeout).await
    }

    /// Says once (not every tick) that an engine's replies do not fit the contract.
    fn note_contract_error(&mut self, e: &str) {
        if self.contract_error.as_deref() != Some(e) {
            eprintln!("{e}");
            self.contract_error = Some(e.to_string());
        }
    }

    /// Notes an engine's release point: once anything was acknowledged, no engine may be
    /// promoted on the grounds that nothing could be lost.
    fn note_released(&mut self, seq_released: u64) {
        if seq_released > 0 && !self.released_any {
            self.released_any = true;
            self.persist();
        }
    }

    /// Marks the standby promotable or not. Going to not promotable is on disk before the
    /// caller lets the active run simplex: a successor must never promote a stale standby.
    fn set_promotable(&mut self, promotable: bool, why: &str) {
        if self.promotable == promotable {
            return;
        }
        self.promotable = promotable;
        self.persist();
        let (kind, what) = match promotable {
            true => (EventKind::SimplexEnd, "standby in sync"),
            false => (EventKind::SimplexStart, "no standby in sync"),
        };
        self.emit(TimelineEvent {
            message: Some(format!("{what}: {why}")),
            ..TimelineEvent::new(timeline::now_ms(), kind)
        });
    }

    /// One tick: a pending promotion first, then the lease, the failure detector, the standby.
    async fn on_tick(&mut self) {
        self.ticks += 1;
        if self.promotion.is_some() {
            self.try_promotion().await;
            return;
        }
        if self.unavailable.is_some() {
            return;
        }
        self.renew_lease().await;
        let active = self.active;
        let silent = self.slots[active].last_answer.elapsed();
        if self.slots[active].alive() && silent >= self.args.timing.hang_timeout {
            let cause = format!(
                "{} answered no lease for {} ms",
                self.slots[active].name,
                silent.as_millis()
            );
            self.active_lost(active, cause, false).await;
            return;
        }
        if self.ticks.is_multiple_of(STANDBY_CHECK_TICKS) {
            self.check_standby().await;
        }
    }

    /// Renews the active's lease and learns whether the standby is in sync; when it learns
    /// that it no longer is, grants the simplex lease at once rather than a tick later.
    pub async fn renew_lease(&mut self) {
        let promotable = self.promotable;
        self.renew_lease_once().await;
        if promotable && !self.promotable {
            self.renew_lease_once().await;
        }
    }

    async fn renew_lease_once(&mut self) {
        let active = self.active;
        if !self.slots[active].alive() || self.promotion.is_some() {
            return;
        }
        // The standby stops being promotable before the active may run simplex.
        let mode = if self.promotable { "sync" } else { "simplex" };
        let stamp = crate::node::monotonic_ns().to_string();
        let (epoch, ttl) = (
            self.epoch.to_string(),
            self.args.timing.lease_ttl.as_millis().to_string(),
        );
        // Half the hang timeout: a slow answer is not waited for past the point of replacing.
        let timeout = self.args.timing.hang_timeout / 2;
        let reply = self
            .call_message::<EngineStatus>(
                active,
                &["TANDEM.LEASE", &epoch, &stamp, &ttl, mode],
                timeout,
            )
            .await;
        match reply {
            Ok(status) => {
                self.note_released(status.seq_released);
                let in_sync = status.standby_in_sync;
                let standby = self.slots[self.standby()].name;
                self.set_promotable(
                    in_sync,
                    &format!(
                        "the active reports {standby} {}",
                        if in_sync { "in sync" } else { "not in sync" }
                    ),
                );
            }
            Err(e) if e.code() == Some(Code::StaleEpoch) => {
                eprintln!(
                    "lease refused by {}: {e}; resyncing",
                    self.slots[active].name
                );
                self.resync().await;
            }
            // The failure detector counts the silence. A reply that does not fit the contract
            // was said (`note_contract_error`); the standby is then not known to be in sync.
            Err(CallError::Garbled(_)) => {
                self.set_promotable(false, "its status does not fit the contract")
            }
            Err(_) => {}
        }
    }

    /// After the engines and the supervisor disagree (an epoch it did not grant, a lost
    /// answer): adopt the engine that is active at the highest epoch.
    async fn resync(&mut self) {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..2 {
            if let Ok(st) = self.status_of(i, CALL_TIMEOUT).await {
                let epoch = st.epoch;
                if st.role == Role::Active && best.is_none_or(|(_, e)| epoch > e) {
                    best = Some((i, epoch));
                }
                self.epoch = self.epoch.max(epoch);
            }
        }
        if let Some((i, epoch)) = best {
            if i != self.active {
                eprintln!(
                    "resync: {} is active at epoch {epoch}; adopting it",
                    self.slots[i].name
                );
                self.active = i;
                self.set_promotable(false, "resynced with the engines");
            }
        }
        self.persist();
        self.write_pair_file();
    }

    /// Looks after the engine that is not active: a fenced one must follow the active, a
    /// silent one is killed once it has been silent for `hung_kill_after`.
    async fn check_standby(&mut self) {
        let (active, standby) = (self.active, self.standby());
        if !self.slots[standby].alive() {
            return;
        }
        let answered = if self.slots[standby].fenced {
            let (addr, hint, epoch) = (
                self.slots[active].replication_addr.clone(),
                self.slots[active].client_addr.clone(),
                self.epoch.to_string(),
            );
            let r = self
                .call_timeout(
                    standby,
                    &["TANDEM.FOLLOW", &addr, &epoch, &hint],
                    STANDBY_CHECK_TIMEOUT,
                )
                .await;
            if r.is_ok() {
                self.slots[standby].fenced = false;
                eprintln!(
                    "{} answers again: it follows {} at epoch {epoch}",
                    self.slots[standby].name, self.slots[active].name
                );
            }
            r.is_ok()
        } else {
            match self.status_of(standby, STANDBY_CHECK_TIMEOUT).await {
                Ok(st) => {
                    if st.role == Role::Active && st.epoch >= self.epoch {
                        // It stepped up without our hearing of it: it is the active.
                        self.resync().await;
                    }
                    true
                }
                Err(_) => false,
            }
        };
        let silent = self.slots[standby].last_answer.elapsed();
        if !answered && silent >= self.args.timing.hung_kill_after {
            eprintln!(
                "{} silent for {} ms: killing it, it will be restarted",
                self.slots[standby].name,
                silent.as_millis()
            );
            self.kill(standby);
        }
    }

    /// Handles one event from the main loop.
    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exited { slot, pid } => self.on_exit(slot, pid).await,
            Event::Subscribe { tx } => self.subscribe(tx),
            Event::Admin { cmd, reply } => {
                let result = self.admin(cmd).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Keeps the pair served while a long operation waits: ticks (leases, failovers), engine
    /// exits and quick admin commands, until `cond` holds or `timeout` passes. True if `cond`
    /// held.
    pub async fn pump(&mut self, timeout: Duration, cond: impl Fn(&Supervisor) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if self.shutdown || tokio::time::Instant::now() >= deadline {
                return cond(self);
            }
            tokio::select! {
                _ = self.tick.tick() => self.on_tick().await,
                ev = self.events.recv() => match ev {
                    Some(Event::Admin { cmd, reply }) => {
                        let result = match self.quick_admin(&cmd).await {
                            Some(result) => result,
                            None => Err("BUSY an upgrade is in progress; try again when it ends".into()),
                        };
                        let _ = reply.send(result);
                    }
                    Some(Event::Exited { slot, pid }) => self.on_exit(slot, pid).await,
                    Some(Event::Subscribe { tx }) => self.subscribe(tx),
                    None => self.shutdown = true,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Waits for a pause of `duration` while keeping the pair served.
    pub async fn pump_for(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        self.pump(duration, move |_| Instant::now() >= until).await;
    }

    async fn on_exit(&mut self, i: usize, pid: u32) {
        if self.slots[i].pid != Some(pid) {
            return; // an engine we already replaced
        }
        let name = self.slots[i].name;
        let slot = &mut self.slots[i];
        slot.pid = None;
        slot.process = None;
        slot.client = None;
        let expected = std::mem::take(&mut slot.expected_exit);
        let fenced = std::mem::take(&mut slot.fenced);
        if i != self.active || fenced {
            self.set_promotable(false, &format!("{name} exited"));
        }
        self.persist();
        if expected || self.shutdown {
            eprintln!("engine {name} (pid {pid}) stopped");
            self.write_pair_file();
            return;
        }
        if i == self.active && !fenced {
            if self.promotion.is_none() && self.unavailable.is_none() {
                self.active_lost(i, format!("{name} (pid {pid}) exited"), true)
                    .await;
            }
            return;
        }
        if self.promotion.as_ref().is_some_and(|p| p.target == i) {
            // The engine being promoted died too: nobody in sync is left.
            let p = self.promotion.take().expect("checked");
            let cause = format!("{}; then {name}, being promoted, exited", p.cause);
            self.no_promotable(self.active, cause, true).await;
            return;
        }
        eprintln!("standby {name} (pid {pid}) died: restarting it");
        self.restart_standby(i).await;
    }

    /// Restarts engine `i` as the standby of the active.
    async fn restart_standby(&mut self, i: usize) {
        if !self.slots[self.active].alive() || self.unavailable.is_some() {
            return;
        }
        // A new process holds nothing until it has caught up.
        self.set_promotable(false, &format!("{} restarts empty", self.slots[i].name));
        let follow = self.slots[self.active].replication_addr.clone();
        if let Err(e) = self.start(i, Start::Follow(follow)).await {
            eprintln!("restarting {} failed: {e:#}", self.slots[i].name);
        }
        self.write_pair_file();
    }

    /// The active is gone (`exited`) or hung: replace it by an engine that holds every
    /// acknowledged write, or say that none does.
    async fn active_lost(&mut self, dead: usize, cause: String, exited: bool) {
        let other = 1 - dead;
        eprintln!("active lost: {cause}");
        let standby_ok = self.slots[other].alive() && !self.slots[other].fenced;
        if self.promotable && standby_ok {
            self.epoch += 1;
            self.persist(); // this epoch is never granted twice
            if !exited {
                self.slots[dead].fenced = true; // it must follow when it answers again
                self.slots[dead].client = None;
            }
            self.promotion = Some(Promotion {
                target: other,
                epoch: self.epoch,
                since: Instant::now(),
                attempts: 0,
                last_error: None,
                cause,
            });
            self.try_promotion().await;
            return;
        }
        self.no_promotable(dead, cause, exited).await;
    }

    /// One attempt at the pending promotion; kept pending while the standby does not answer.
    async fn try_promotion(&mut self) {
        let Some(mut p) = self.promotion.take() else {
            return;
        };
        if p.since.elapsed() >= self.args.timing.hung_kill_after && self.take_back(&p).await {
            return;
        }
        p.attempts += 1;
        let epoch = p.epoch.to_string();
        let timeout = self
            .args
            .timing
            .hang_timeout
            .max(Duration::from_millis(200));
        let result = self
            .call_timeout(p.target, &["TANDEM.PROMOTE", &epoch], timeout)
            .await;
        match result {
            Ok(_) => self.promoted(p).await,
            Err(e) if e.code() == Some(Code::NotReady) => {
                let dead = 1 - p.target;
                let cause = format!(
                    "{}; {} refused to be promoted: {e}",
                    p.cause, self.slots[p.target].name
                );
                self.no_promotable(dead, cause, self.slots[dead].pid.is_none())
                    .await;
            }
            Err(e) if e.code() == Some(Code::StaleEpoch) => {
                // Someone (a predecessor) granted a higher epoch: go above it and retry.
                if let Ok(st) = self.status_of(p.target, CALL_TIMEOUT).await {
                    self.epoch = self.epoch.max(st.epoch) + 1;
                    self.persist();
                    p.epoch = self.epoch;
                }
                p.last_error = Some(e.to_string());
                self.promotion = Some(p);
            }
            Err(e) => {
                if p.attempts == 1 || p.attempts.is_power_of_two() {
                    eprintln!(
                        "promoting {} at epoch {epoch}: attempt {} failed ({e}); retrying",
                        self.slots[p.target].name, p.attempts
                    );
                }
                p.last_error = Some(e.to_string());
                self.promotion = Some(p);
            }
        }
    }

    /// A promotion that has not been answered for `hung_kill_after`: if the engine it was to
    /// replace answers again (it was hung, not dead) and is still active with a whole state,
    /// it takes the pair back in a new epoch, and the silent target is fenced instead.
    async fn take_back(&mut self, p: &Promotion) -> bool {
        let lost = 1 - p.target;
        if !self.slots[lost].alive() {
            return false;
        }
        let Ok(st) = self.status_of(lost, STANDBY_CHECK_TIMEOUT).await else {
            return false;
        };
        if st.role != Role::Active || !st.state_complete {
            return false;
        }
        self.epoch += 1;
        self.persist();
        let epoch = self.epoch.to_string();
        if self.call(lost, &["TANDEM.PROMOTE", &epoch]).await.is_err() {
            return false;
        }
        let (back, silent) = (self.slots[lost].name, self.slots[p.target].name);
        eprintln!("{back} answers again and {silent} still does not: {back} stays active at epoch {epoch}");
        self.slots[lost].fenced = false;
        self.slots[p.target].fenced = true;
        self.slots[p.target].client = None;
        self.active = lost;
        self.failovers += 1;
        self.set_promotable(false, &format!("{silent} does not answer"));
        self.persist();
        self.emit(TimelineEvent {
            message: Some(format!(
                "{}; {silent} never answered its promotion, {back} answers again: {back} active at epoch {epoch}",
                p.cause
            )),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
        });
        self.write_pair_file();
        true
    }

    async fn promoted(&mut self, p: Promotion) {
        let dead = 1 - p.target;
        let took_ms = p.since.elapsed().as_secs_f64() * 1e3;
        self.active = p.target;
        self.failovers += 1;
        self.set_promotable(
            false,
            &format!("{} took over alone", self.slots[p.target].name),
        );
        self.persist();
        self.renew_lease().await;
        let (to, from) = (self.slots[p.target].name, self.slots[dead].name);
        eprintln!(
            "failover: {}; {to} promoted at epoch {} in {took_ms:.1} ms ({} attempts)",
            p.cause, p.epoch, p.attempts
        );
        self.emit(TimelineEvent {
            switchover: Some(SwitchoverKind::Failover),
            stepup_ms: Some(took_ms),
            message: Some(format!("{}; {to} promoted at epoch {}", p.cause, p.epoch)),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
        });
        self.write_pair_file();
        if self.slots[dead].pid.is_none() {
            eprintln!("restarting {from} as the standby of {to}");
            self.restart_standby(dead).await;
        }
    }

    /// The active is lost and no standby is known to hold every acknowledged write: recover the
    /// lost engine from its journal if it has one, else refuse writes and say why.
    async fn no_promotable(&mut self, dead: usize, cause: String, exited: bool) {
        let data_dir = self.args.dir.join(self.slots[dead].name);
        let other = 1 - dead;
        if crate::journal::exists(&data_dir) {
            if let Err(e) = self.recover(dead, &cause, exited).await {
                self.set_unavailable(format!(
                    "{cause}; recovering it from its journal failed: {e}"
                ));
            }
            return;
        }
        if !self.released_any && self.slots[other].alive() {
            // Nothing was ever acknowledged: nothing can be lost by promoting the other. The
            // lost one, if it still runs, is killed first: it must not serve beside it.
            if !exited {
                if let Some(p) = self.slots[dead].process.clone() {
                    self.slots[dead].expected_exit = true;
                    p.kill();
                    let _ = tokio::time::timeout(STOP_TIMEOUT, p.exited()).await;
                }
            }
            self.epoch += 1;
            self.persist();
            let epoch = self.epoch.to_string();
            if self
                .call(other, &["TANDEM.PROMOTE", &epoch, "FORCE"])
                .await
                .is_ok()
            {
                let p = Promotion {
                    target: other,
                    epoch: self.epoch,
                    since: Instant::now(),
                    attempts: 1,
                    last_error: None,
                    cause: format!("{cause} (nothing had been acknowledged yet)"),
                };
                self.promoted(p).await;
                return;
            }
        }
        let standby = self.slots[other].name;
        self.set_unavailable(format!(
            "{cause}, while {standby} was not in sync and with no journal: no engine is known to hold every acknowledged write, so the pair refuses writes. To accept the loss: `tandem promote --admin {} --engine {standby} --accept-data-loss`",
            self.admin_addr
        ));
    }

    /// Restarts engine `dead` from its journal (killing it first if it still runs) and
    /// promotes it; the other engine follows it.
    async fn recover(&mut self, dead: usize, cause: &str, exited: bool) -> Result<(), String> {
        let name = self.slots[dead].name;
        if !exited {
            if let Some(p) = self.slots[dead].process.clone() {
                eprintln!("{name} is hung and holds the only copy of some writes, in its journal: killing it to recover it");
                self.slots[dead].expected_exit = true;
                p.kill();
                if tokio::time::timeout(STOP_TIMEOUT, p.exited())
                    .await
                    .is_err()
                {
                    return Err(format!("{name} would not die"));
                }
                self.slots[dead].pid = None;
                self.slots[dead].process = None;
                self.slots[dead].expected_exit = false;
            }
        }
        let started = Instant::now();
        self.start(dead, Start::Recover)
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.epoch += 1;
        self.persist();
        let epoch = self.epoch.to_string();
        let mut last = String::new();
        for _ in 0..20 {
            match self.call(dead, &["TANDEM.PROMOTE", &epoch]).await {
                Ok(_) => {
                    last.clear();
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        if !last.is_empty() {
            return Err(format!("promoting the recovered {name}: {last}"));
        }
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        self.active = dead;
        self.failovers += 1;
        self.unavailable = None;
        self.set_promotable(false, &format!("{name} recovered from its journal"));
        self.persist();
        self.renew_lease().await;
        let other = 1 - dead;
        eprintln!("recovery: {cause}; {name} restarted from its journal and active at epoch {epoch} in {took_ms:.0} ms");
        self.emit(TimelineEvent {
            switchover: Some(SwitchoverKind::Failover),
            stepup_ms: Some(took_ms),
            message: Some(format!(
                "{cause}; {name} recovered from its journal, active at epoch {epoch}"
            )),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
        });
        if self.slots[other].alive() {
            let (addr, hint) = (
                self.slots[dead].replication_addr.clone(),
                self.slots[dead].client_addr.clone(),
            );
            if self
                .call(other, &["TANDEM.FOLLOW", &addr, &epoch, &hint])
                .await
                .is_err()
            {
                self.slots[other].fenced = true;
            }
        } else if self.slots[other].pid.is_none() && !self.slots[other].expected_exit {
            self.restart_standby(other).await;
        }
        self.write_pair_file();
        Ok(())
    }

    fn set_unavailable(&mut self, why: String) {
        eprintln!("PAIR UNAVAILABLE: {why}");
        self.unavailable = Some(why.clone());
        self.persist();
        self.emit(TimelineEvent {
            message: Some(why),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Unavailable)
        });
        self.write_pair_file();
    }

    /// The operator accepts the loss: `name` becomes active whatever it holds.
    async fn force_promote(&mut self, name: &str) -> Result<String, String> {
        let i = engine_index(name).ok_or_else(|| format!("ERR no engine named {name}"))?;
        if self.unavailable.is_none() && self.promotion.is_none() {
            return Err("ERR the pair is available: use SWITCHOVER".into());
        }
        if self.slots[i].pid.is_none() {
            // Its journal if it has one, else empty: the operator accepted the loss.
            let has_journal = crate::journal::exists(&self.args.dir.join(name));
            let how = if has_journal {
                Start::Recover
            } else {
                Start::Active
            };
            self.start(i, how)
                .await
                .map_err(|e| format!("ERR starting {name}: {e:#}"))?;
        }
        self.epoch += 1;
        self.persist();
        let epoch = self.epoch.to_string();
        self.call(i, &["TANDEM.PROMOTE", &epoch, "FORCE"]).await?;
        self.promotion = None;
        let why = self.unavailable.take().unwrap_or_default();
        self.active = i;
        self.failovers += 1;
        self.set_promotable(false, "forced promotion");
        self.persist();
        self.emit(TimelineEvent {
            switchover: Some(SwitchoverKind::Failover),
            message: Some(format!(
                "{name} promoted at epoch {epoch} by the operator, accepting data loss ({why})"
            )),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
        });
        let other = 1 - i;
        if self.slots[other].pid.is_none() {
            self.restart_standby(other).await;
        } else {
            let (addr, hint) = (
                self.slots[i].replication_addr.clone(),
                self.slots[i].client_addr.clone(),
            );
            let _ = self
                .call(other, &["TANDEM.FOLLOW", &addr, &epoch, &hint])
                .await;
        }
        self.write_pair_file();
        Ok(format!("OK {name} is active at epoch {epoch}"))
    }

    /// Takes back the engines of a pair whose supervisor is gone.
    async fn adopt(&mut self, state: PairState) -> anyhow::Result<()> {
        self.epoch = state.epoch;
        self.promotable = state.promotable;
        self.unavailable = state.unavailable.clone();
        self.released_any = state.released_any;
        self.upgrade_state = state.upgrade.clone();
        self.active = engine_index(&state.active).unwrap_or(0);
        let mut statuses: [Option<EngineStatus>; 2] = [None, None];
        for e in &state.engines {
            let Some(i) = engine_index(&e.name) else {
                continue;
            };
            let slot = &mut self.slots[i];
            slot.app_version = e.app_version.clone();
            slot.fault = e.fault.clone();
            slot.client_addr = e.client_addr.clone();
            slot.replication_addr = e.replication_addr.clone();
            slot.control_addr = e.control_addr.clone();
            let Some(pid) = e.pid else { continue };
            let Ok(process) = Watched::open(pid) else {
                continue;
            };
            slot.pid = Some(pid);
            match self.status_of(i, CALL_TIMEOUT).await {
                Ok(st) if st.pid == pid && st.name == e.name => {
                    self.epoch = self.epoch.max(st.epoch);
                    self.note_released(st.seq_released.max(st.seq_applied));
                    self.watch(i, process);
                    statuses[i] = Some(st);
                }
                Err(CallError::Unauthenticated(_)) => bail!(
                    "engine {} (pid {pid}) runs but refuses this supervisor's secret ({}): start it with the pair's secret (--secret-file or {})",
                    self.slots[i].name,
                    self.args.secret_file.display(),
                    auth::SECRET_FILE_ENV
                ),
                Err(e) if process.alive() => {
                    // Running but silent (hung, or busy): watched, and fenced until it answers.
                    eprintln!(
                        "engine {} (pid {pid}) runs but does not answer ({e}): adopting it as hung",
                        self.slots[i].name
                    );
                    self.slots[i].fenced = true;
                    self.watch(i, process);
                }
                _ => {
                    // Another process under that pid, or it died meanwhile.
                    self.slots[i].pid = None;
                    self.slots[i].client = None;
                }
            }
        }
        let hung = [self.slots[0].fenced, self.slots[1].fenced];
        let describe = |i: usize, st: &Option<EngineStatus>| match st {
            Some(st) => format!(
                "{} ({}, epoch {})",
                ["a", "b"][i],
                st.role.as_str(),
                st.epoch
            ),
            None if hung[i] => format!("{} (running, not answering)", ["a", "b"][i]),
            None => format!("{} (gone)", ["a", "b"][i]),
        };
        let message = format!(
            "supervisor restarted (pid {}): epoch {}, {}, {}",
            std::process::id(),
            self.epoch,
            describe(0, &statuses[0]),
            describe(1, &statuses[1])
        );
        eprintln!("{message}");
        self.emit(TimelineEvent {
            message: Some(message),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SupervisorStart)
        });
        // The active: whichever engine says so at the highest epoch.
        let active = (0..2)
            .filter(|&i| statuses[i].as_ref().is_some_and(|s| s.role == Role::Active))
            .max_by_key(|&i| statuses[i].as_ref().map(|s| s.epoch));
        if statuses.iter().all(Option::is_none) && !hung.contains(&true) {
            let journals: Vec<usize> = (0..2)
                .filter(|&i| crate::journal::exists(&self.args.dir.join(self.slots[i].name)))
                .collect();
            let Some(&i) = journals
                .iter()
                .find(|&&i| i == self.active)
                .or(journals.first())
            else {
                bail!(
                    "the pair in {} (epoch {}) has no engine left and no journal to recover from: its data is gone. `tandem pair up --dir {} --fresh` starts an empty pair",
                    self.args.dir.display(),
                    self.epoch,
                    self.args.dir.display()
                );
            };
            self.active = i;
            self.recover(
                i,
                "both engines were gone when the supervisor started",
                true,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            return Ok(());
        }
        match active {
            Some(i) => {
                self.active = i;
                self.persist();
                let standby = self.standby();
                let st = statuses[standby].clone();
                match st {
                    None => self.restart_standby(standby).await,
                    Some(st) if st.role != Role::Standby => {
                        // Taken out of service by the predecessor mid-step: make it a standby.
                        let (addr, hint, epoch) = (
                            self.slots[i].replication_addr.clone(),
                            self.slots[i].client_addr.clone(),
                            self.epoch.to_string(),
                        );
                        let _ = self
                            .call(standby, &["TANDEM.FOLLOW", &addr, &epoch, &hint])
                            .await;
                    }
                    Some(_) => {}
                }
            }
            None => {
                // Nobody is active: the active died (or was being switched) while no
                // supervisor watched. The usual rules decide who holds the data.
                let dead = self.active;
                let exited = statuses[dead].is_none() && !hung[dead];
                if !exited {
                    self.slots[dead].fenced = true;
                }
                self.active_lost(
                    dead,
                    format!(
                        "no engine was active when the supervisor started ({} was {})",
                        self.slots[dead].name,
                        if exited { "gone" } else { "not active" }
                    ),
                    exited,
                )
                .await;
            }
        }
        self.persist();
        Ok(())
    }

    /// A planned switchover to the standby; returns the step-up time in milliseconds.
    pub async fn switchover(&mut self, kind: SwitchoverKind) -> Result<f64, String> {
        let (from, to) = (self.active, self.standby());
        if !self.promotable {
            return Err(format!(
                "ERR standby {} is not in sync: no switchover",
                self.slots[to].name
            ));
        }
        let epoch = self.epoch + 1;
        self.epoch = epoch;
        self.persist(); // granted once, whatever happens next
        self.emit(TimelineEvent {
            switchover: Some(kind),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SwitchoverBegin)
        });
        let started = Instant::now();
        let result = self
            .call_timeout(
                from,
                &["TANDEM.SWITCHOVER", &epoch.to_string()],
                SWITCHOVER_TIMEOUT,
            )
            .await;
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        let end = |message| TimelineEvent {
            switchover: Some(kind),
            stepup_ms: Some(took_ms),
            message: Some(message),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SwitchoverEnd)
        };
        let answered = result.is_ok();
        if let Err(e) = result {
            // The step-up may have happened even though its answer was lost: then the standby
            // is active in the new epoch, and the old active must follow it.
            let adopted = match self.status_of(to, CALL_TIMEOUT).await {
                Ok(st) => st.role == Role::Active && st.epoch == epoch,
                Err(unreachable) if matches!(e, CallError::NoAnswer(_)) => {
                    // Neither answered: the standby may have stepped up. It held every
                    // acknowledged write (the active stopped taking writes for the
                    // switchover), so it is promoted in this epoch, retried until it answers
                    // ("already active" if it did step up); the old active is fenced.
                    self.emit(end(format!("unconfirmed: {e}; {unreachable}")));
                    self.slots[from].fenced = true;
                    self.slots[from].client = None;
                    self.promotion = Some(Promotion {
                        target: to,
                        epoch,
                        since: Instant::now(),
                        attempts: 0,
                        last_error: None,
                        cause: format!("the switchover's answer was lost ({e})"),
                    });
                    return Err(format!(
                        "{e}; {} did not answer either: promoting it at epoch {epoch}",
                        self.slots[to].name
                    ));
                }
                Err(_) => false,
            };
            if !adopted {
                self.emit(end(format!("failed: {e}")));
                self.retake(from, to).await;
                return Err(e.into());
            }
            eprintln!(
                "switchover answer lost ({e}), but {} is active at epoch {epoch}",
                self.slots[to].name
            );
            let (addr, hint) = (
                self.slots[to].replication_addr.clone(),
                self.slots[to].client_addr.clone(),
            );
            let _ = self
                .call(from, &["TANDEM.FOLLOW", &addr, &epoch.to_string(), &hint])
                .await;
        }
        self.active = to;
        self.slots[to].last_answer = Instant::now();
        if !answered {
            // Told to follow after a lost answer, the old active starts over with a snapshot.
            self.set_promotable(
                false,
                "switched over without an answer: the old active re-syncs",
            );
        }
        // Otherwise the old active still holds every acknowledged write, and the new one
        // releases only what it acknowledges (sync leases): it stays promotable, and a planned
        // switchover opens no simplex window.
        self.persist();
        self.renew_lease().await;
        self.write_pair_file();
        let msg = format!(
            "{} active at epoch {epoch}, {} follows",
            self.slots[to].name, self.slots[from].name
        );
        self.emit(end(msg));
        Ok(took_ms)
    }

    /// After a switchover that failed with the standby not active in its epoch: the old active
    /// is still active in the epoch before, which this supervisor has left (the next lease would
    /// fence it, and nobody would be active). It is granted an epoch above the switchover's, and
    /// the standby follows it there: a step-up still in flight on the dead link can then only
    /// make the standby active in an epoch already left behind. Found by `tandem sim` (seed 198).
    async fn retake(&mut self, from: usize, to: usize) {
        self.epoch += 1;
        self.persist();
        let epoch = self.epoch.to_string();
        if let Err(e) = self.call(from, &["TANDEM.PROMOTE", &epoch]).await {
            eprintln!(
                "after the failed switchover, {} did not take epoch {epoch}: {e}",
                self.slots[from].name
            );
            return;
        }
        self.slots[from].last_answer = Instant::now();
        self.set_promotable(false, "a failed switchover: the standby re-syncs");
        let (addr, hint) = (
            self.slots[from].replication_addr.clone(),
            self.slots[from].client_addr.clone(),
        );
        if self
            .call(to, &["TANDEM.FOLLOW", &addr, &epoch, &hint])
            .await
            .is_err()
        {
            self.slots[to].fenced = true; // told again by `check_standby` when it answers
        }
        self.renew_lease().await;
        self.write_pair_file();
    }

    /// Stops an engine on purpose (out of service, then its process), waiting for it to exit.
    /// Before the standby goes, the active's journal is on disk: the simplex window that starts
    /// is durable from its first write.
    pub async fn stop_engine(&mut self, i: usize) -> Result<(), String> {
        let Some(pid) = self.slots[i].pid else {
            return Ok(());
        };
        if i == self.standby() && self.slots[self.active].alive() {
            // The standby goes only once the active's journal holds everything: until then
            // the standby stays promotable (the journal is pinned against the sync leases
            // that would close it), and if that fails the standby is not taken away at all.
            let active = self.active;
            let journaled = self
                .call_timeout(active, &["TANDEM.JOURNAL"], JOURNAL_TIMEOUT)
                .await;
            if let Err(e) = journaled {
                let _ = self.call(active, &["TANDEM.JOURNAL", "UNPIN"]).await;
                return Err(format!(
                    "the active's journal is not on disk ({e}): {} stays in service",
                    self.slots[i].name
                ));
            }
            self.set_promotable(false, &format!("{} is being stopped", self.slots[i].name));
            // The active is about to lose its standby: it runs simplex from now on, before
            // the link drops, so that no write waits for the next lease renewal.
            let stamp = crate::node::monotonic_ns().to_string();
            let (epoch, ttl) = (
                self.epoch.to_string(),
                self.args.timing.lease_ttl.as_millis().to_string(),
            );
            if let Err(e) = self
                .call(active, &["TANDEM.LEASE", &epoch, &stamp, &ttl, "degrade"])
                .await
            {
                return Err(format!(
                    "degrade lease refused by {} ({e}): {} stays in service",
                    self.slots[active].name, self.slots[i].name
                ));
            }
        }
        self.slots[i].expected_exit = true;
        let _ = self.call(i, &["TANDEM.SHUTDOWN"]).await;
        if !self
            .pump(STOP_TIMEOUT, move |s| s.slots[i].pid != Some(pid))
            .await
        {
            eprintln!(
                "engine {} did not stop within {STOP_TIMEOUT:?}: killing it",
                self.slots[i].name
            );
            self.kill(i);
            if !self
                .pump(STOP_TIMEOUT, move |s| s.slots[i].pid != Some(pid))
                .await
            {
                return Err(format!(
                    "engine {} (pid {pid}) would not stop",
                    self.slots[i].name
                ));
            }
        }
        Ok(())
    }

    /// Reload: a new process of the same executable, running `version`, standby to the active.
    pub async fn reload(
        &mut self,
        i: usize,
        version: &str,
        fault: Option<String>,
    ) -> Result<(), String> {
        if i == self.active {
            return Err(format!(
                "ERR {} is active: only the standby is reloaded",
                self.slots[i].name
            ));
        }
        self.stop_engine(i).await?;
        self.slots[i].app_version = version.to_string();
        self.slots[i].fault = fault;
        self.persist();
        if !self.slots[self.active].alive() {
            return Err(format!(
                "the active {} is gone",
                self.slots[self.active].name
            ));
        }
        let follow = self.slots[self.active].replication_addr.clone();
        let result = self
            .start(i, Start::Follow(follow))
            .await
            .map_err(|e| format!("{e:#}"));
        self.write_pair_file();
        result
    }

    fn subscribe(&mut self, tx: mpsc::Sender<String>) {
        for ev in &self.timeline.events {
            if tx
                .try_send(serde_json::to_string(ev).expect("event serializes"))
                .is_err()
            {
                return; // a timeline longer than a subscriber's queue: it gets none
            }
        }
        self.subscribers.push(tx);
    }

    /// Records a timeline event: in memory, in `timeline.json`, and to every subscriber.
    pub fn emit(&mut self, ev: TimelineEvent) {
        let json = serde_json::to_string(&ev).expect("event serializes");
        // A subscriber that does not keep up is dropped rather than buffered without bound.
        self.subscribers
            .retain(|s| s.try_send(json.clone()).is_ok());
        self.timeline.events.push(ev);
        self.write_timeline();
    }

    fn write_timeline(&self) {
        let json = serde_json::to_string_pretty(&self.timeline).expect("timeline serializes");
        write_atomically(&self.args.dir.join("timeline.json"), &json);
    }

    /// Admin commands that may run at any time, even during an upgrade.
    async fn quick_admin(&mut self, cmd: &[String]) -> Option<Result<String, String>> {
        let verb = cmd
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        Some(match verb.as_str() {
            "PING" => Ok("PONG".into()),
            "STATUS" => Ok(contract::encode(&self.status().await)),
            "SHUTDOWN" => {
                self.shutdown = true;
                Ok("OK".into())
            }
            _ => return None,
        })
    }

    async fn admin(&mut self, cmd: Vec<String>) -> Result<String, String> {
        if let Some(result) = self.quick_admin(&cmd).await {
            return result;
        }
        let verb = cmd
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        let arg = |i: usize| cmd.get(i).map(String::as_str);
        if let Some(why) = &self.unavailable {
            if verb != "PROMOTE" {
                return Err(format!("UNAVAILABLE {why}"));
            }
        }
        match verb.as_str() {
            "SWITCHOVER" => self.switchover(SwitchoverKind::Planned).await.map(|ms| {
                format!("OK {} is active at epoch {}, step-up took {ms:.1} ms", self.slots[self.active].name, self.epoch)
            }),
            "UPGRADE" => {
                let Some(to) = arg(1) else { return Err("ERR usage: UPGRADE version [option value]...".into()) };
                let options = crate::upgrade::Options::parse(&cmd[2..])?;
                self.busy = true;
                let result = self.upgrade(to.to_string(), options).await;
                self.busy = false;
                result.map(|report| report.to_string())
            }
            "FEATURES.ENABLE" => self.enable_features().await,
            "RELOAD" => {
                let standby = self.standby();
                match (arg(1), arg(2)) {
                    (Some(name), Some(version)) if name == self.slots[standby].name => {
                        self.reload(standby, version, arg(3).map(str::to_string)).await?;
                        Ok(format!("OK {name} reloaded with {version}"))
                    }
                    (Some(name), Some(_)) => Err(format!("ERR only the standby ({}) can be reloaded, not {name}", self.slots[standby].name)),
                    _ => Err("ERR usage: RELOAD standby_name version [fault]".into()),
                }
            }
            "PROMOTE" => match (arg(1), arg(2).map(str::to_ascii_uppercase).as_deref()) {
                (Some(name), Some("FORCE")) => self.force_promote(name).await,
                _ => Err("ERR usage: PROMOTE engine_name FORCE (accepts losing acknowledged writes)".into()),
            },
            _ => Err(format!(
                "ERR unknown admin command '{verb}' (PING, STATUS, SWITCHOVER, UPGRADE, FEATURES.ENABLE, RELOAD, PROMOTE, SUBSCRIBE, SHUTDOWN)"
            )),
        }
    }

    /// Enables the new features on both engines, refusing unless every engine runs the
    /// active's version.
    pub async fn enable_features(&mut self) -> Result<String, String> {
        let versions: Vec<String> = self
            .slots
            .iter()
            .map(|s| format!("{} runs {}", s.name, s.app_version))
            .collect();
        if self.slots[0].app_version != self.slots[1].app_version
            || self.slots.iter().any(|s| s.pid.is_none())
        {
            return Err(format!(
                "ERR refused: {}; every engine must run the new version, in service",
                versions.join(", ")
            ));
        }
        let active = self.active;
        self.call(active, &["TANDEM.FEATURES.ENABLE"]).await?;
        self.emit(TimelineEvent {
            message: Some(format!(
                "new features of {} enabled",
                self.slots[active].app_version
            )),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::FeaturesEnabled)
        });
        Ok("OK new features enabled on both engines".into())
    }

    pub async fn status(&mut self) -> PairStatus {
        let mut engines = Vec::new();
        for i in 0..2 {
            let status = match self.slots[i].pid {
                Some(_) => self.status_of(i, STATUS_TIMEOUT).await.ok(),
                None => None,
            };
            engines.push(match status {
                Some(s) => PairEngine::Up(Box::new(s)),
                None => PairEngine::Down(self.down_status(i)),
            });
        }
        PairStatus {
            admin: self.admin_addr.clone(),
            supervisor_pid: std::process::id(),
            epoch: self.epoch,
            active: self.slots[self.active].name.into(),
            standby_promotable: self.promotable,
            simplex: !self.promotable,
            upgrade_in_progress: self.busy,
            unavailable: self.unavailable.clone(),
            failover_pending: self.promotion.as_ref().map(|p| PendingFailover {
                promoting: self.slots[p.target].name.into(),
                epoch: p.epoch,
                attempts: p.attempts,
                last_error: p.last_error.clone(),
                cause: p.cause.clone(),
            }),
            failovers: self.failovers,
            engines,
        }
    }

    fn down_status(&self, i: usize) -> DownEngine {
        let s = &self.slots[i];
        let role = if s.pid.is_some() {
            "unresponsive"
        } else {
            "out_of_service"
        };
        DownEngine {
            name: s.name.into(),
            role: role.into(),
            app_version: s.app_version.clone(),
            pid: s.pid,
            client_addr: s.client_addr.clone(),
            replication_addr: s.replication_addr.clone(),
            control_addr: s.control_addr.clone(),
            epoch: self.epoch,
        }
    }

    pub fn write_pair_file(&self) {
        let engines: Vec<Value> = (0..2)
            .map(|i| {
                let s = &self.slots[i];
                let role = if s.pid.is_none() {
                    "out_of_service"
                } else if i == self.active && self.unavailable.is_none() {
                    "active"
                } else {
                    "standby"
                };
                serde_json::json!({
                    "name": s.name, "role": role, "pid": s.pid, "app_version": s.app_version,
                    "client_addr": s.client_addr, "replication_addr": s.replication_addr,
                    "control_addr": s.control_addr,
                })
            })
            .collect();
        let file = serde_json::json!({
            "admin": self.admin_addr, "supervisor_pid": std::process::id(),
            "epoch": self.epoch, "engines": engines,
        });
        let json = serde_json::to_string_pretty(&file).expect("pair file serializes");
        write_atomically(&self.args.dir.join("pair.json"), &json);
    }

    /// `SHUTDOWN`: every engine stops (asked, then killed), and so does the supervisor.
    async fn stop_all(&mut self) {
        for i in 0..2 {
            self.slots[i].expected_exit = true;
            let _ = self
                .call_timeout(i, &["TANDEM.SHUTDOWN"], STATUS_TIMEOUT)
                .await;
        }
        for i in 0..2 {
            if let Some(p) = self.slots[i].process.clone() {
                if tokio::time::timeout(STOP_TIMEOUT, p.exited())
                    .await
                    .is_err()
                {
                    p.kill();
                }
            }
        }
    }
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .is_err()
    {
        eprintln!("could not write {}", path.display());
    }
}
