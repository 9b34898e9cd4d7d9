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
use crate::node::{monotonic_ns, EngineStatus};
use crate::pair_state::{DirLock, EngineState, PairState, UpgradeState};
use crate::process::Watched;
use crate::rules::{
    AdoptStandby, Adoption, AfterLease, Lost, NoPromotable, OnExit, PromoteAnswer, Rules, Said,
};
use crate::rules::{StandbyCheck, StandbyVerdict, SwitchoverUnanswered};
use crate::witness::{Standing, Witness};

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
    /// The pair's name: the master name its Sentinel discovery port answers to.
    pub name: String,
    pub timing: Timing,
    /// Simplex writes are released only once on disk (the journal); false: memory only.
    pub journal: bool,
    /// Start empty even if the directory holds a pair whose engines are gone.
    pub fresh: bool,
    /// More `tandem engine` flags for every engine (link and client limits).
    pub engine_args: Vec<String>,
    /// etcd as the pair's witness (`--etcd`): see `witness.rs`.
    pub witness: Option<crate::witness::WitnessArgs>,
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
    /// What the supervisor knows of the pair and decides from (`rules.rs`).
    pub rules: Rules,
    /// What the Sentinel discovery port tells clients (`sentinel.rs`).
    discovery: tokio::sync::watch::Sender<crate::sentinel::Discovery>,
    pub sentinel_addr: String,
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
    /// The upgrade in progress, as persisted.
    pub upgrade_state: Option<UpgradeState>,
    /// The last reply said so that did not fit the contract (said once, not every tick).
    contract_error: Option<String>,
    /// The pair's etcd witness, if it has one (`witness.rs`).
    pub witness: Option<Witness>,
    /// The supervisor's state changed since the witness's record was written.
    witness_dirty: std::cell::Cell<bool>,
    /// etcd has been said to be unreachable (a `witness_lost` event), not yet back.
    witness_lost_said: bool,
    /// Said once that the lease may have expired (no engine call meanwhile).
    witness_doubt_said: bool,
    /// Where the engines' data directories are: this directory, or the pair's first one
    /// when this supervisor took the pair over from another directory.
    pub engine_dir: PathBuf,
    /// The last upgrade as published in etcd (`PairRecord.upgrade`).
    pub upgrade_record: Option<fleet::keys::UpgradeRecord>,
    /// Tags of the upgrades this pair ran (never one twice).
    pub ran_tags: Vec<String>,
    /// A standby whose restart failed (etcd out of reach): tried again at a full tick.
    standby_restart_pending: Option<usize>,
    _lock: DirLock,
}

/// What the witness lets a tick do.
enum TickMode {
    Full,
    /// etcd unreachable: the active's (sync) lease only.
    LeasesOnly,
    Nothing,
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
        anyhow::ensure!(
            !args.dir.exists() || args.dir.is_dir(),
            "--dir {} is not a directory: give a directory for the pair (created if missing)",
            args.dir.display()
        );
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating the pair's directory {}", args.dir.display()))?;
        let lock = DirLock::take(&args.dir).map_err(anyhow::Error::msg)?;
        let mut previous = match args.fresh {
            true => None,
            false => PairState::load(&args.dir).map_err(anyhow::Error::msg)?,
        };
        let mut witness = match &args.witness {
            Some(w) => Some(Witness::connect(w, &args.name).await?),
            None => None,
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
        let mut admin_addr = listener.local_addr()?.to_string();
        let secret = replicator::Secret::load(&args.secret_file)?;
        let (events_tx, mut events) = mpsc::channel(EVENTS_QUEUE);
        let mut listener = Some(listener);
        // With a witness: lead the pair only once this supervisor holds its leader key; until
        // then it is a hot spare. Its state comes from etcd's record (the last leader's).
        let mut took_over_from = None;
        let mut fresh_epoch = None;
        if let Some(w) = witness.as_mut() {
            let listener = listener.take().expect("bound above");
            tokio::spawn(admin::serve(listener, events_tx.clone(), secret.clone()));
            match lead_or_wait(w, &admin_addr, &mut events).await? {
                None => return Ok(()), // told to stop while a spare
                Some(from) => took_over_from = from,
            }
            let record = w.read_record().await.map_err(anyhow::Error::msg)?;
            // The pair's admin address, if its last leader's is free (same host): clients of
            // the admin endpoint keep theirs. This supervisor's own stays served too.
            if let Some(old) = record.as_ref().map(|r| r.admin.clone()) {
                if old != admin_addr && !args.fresh {
                    if let Ok(l) = TcpListener::bind(&old).await {
                        tokio::spawn(admin::serve(l, events_tx.clone(), secret.clone()));
                        tracing::info!("serving the pair's admin address {old} too");
                        admin_addr = old;
                    }
                }
            }
            match record {
                Some(r) if args.fresh => fresh_epoch = Some(r.epoch + 1),
                Some(r) if !r.state.is_null() => {
                    let state: PairState = serde_json::from_value(r.state.clone()).map_err(|e| {
                        anyhow::anyhow!("the pair's state in etcd ({}) is unreadable: {e}", w.pair_key())
                    })?;
                    if state.schema != crate::pair_state::SCHEMA {
                        bail!("the pair's state in etcd has schema {}, this tandem reads {}", state.schema, crate::pair_state::SCHEMA);
                    }
                    previous = Some(state);
                }
                _ => {}
            }
        }
        let engine_dir = previous
            .as_ref()
            .and_then(|p| p.data_dir.clone())
            .unwrap_or_else(|| args.dir.clone());
        let sentinel = match previous.as_ref().and_then(|p| p.sentinel.clone()) {
            Some(addr) => match TcpListener::bind(&addr).await {
                Ok(l) => l,
                Err(_) => TcpListener::bind(addr_for(args.base_port, 7)).await?,
            },
            None => TcpListener::bind(addr_for(args.base_port, 7)).await?,
        };
        let sentinel_addr = sentinel.local_addr()?.to_string();
        let (discovery, discovery_rx) = tokio::sync::watch::channel(Default::default());
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
            rules: Rules::fresh(args.timing.clone()),
            discovery,
            sentinel_addr: sentinel_addr.clone(),
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
            upgrade_state: None,
            contract_error: None,
            witness,
            witness_dirty: std::cell::Cell::new(true),
            witness_lost_said: false,
            witness_doubt_said: false,
            engine_dir,
            upgrade_record: previous.as_ref().and_then(|p| p.upgrade_record.clone()),
            ran_tags: previous.as_ref().map(|p| p.ran_tags.clone()).unwrap_or_default(),
            standby_restart_pending: None,
            _lock: lock,
        };
        if let Some(epoch) = fresh_epoch {
            sup.rules.epoch = epoch; // above any the pair's name held before
        }
        if let Some(w) = &sup.witness {
            let (kind, message) = match &took_over_from {
                Some(old) => (
                    EventKind::TookOver,
                    format!("{} took pair {} over from {old}", w.id, args.name),
                ),
                None => (
                    EventKind::LeaderElected,
                    format!("{} leads pair {}", w.id, args.name),
                ),
            };
            tracing::info!("{message} (etcd {})", w.client.endpoints());
            sup.emit(TimelineEvent {
                message: Some(message),
                ..TimelineEvent::new(timeline::now_ms(), kind)
            });
        }
        match previous {
            None => sup.start_fresh().await?,
            Some(state) => sup.adopt(state).await?,
        }
        sup.flush_witness().await;
        if let Some(listener) = listener.take() {
            tokio::spawn(admin::serve(listener, events_tx, secret));
        }
        tokio::spawn(crate::sentinel::serve(
            sentinel,
            args.name.clone(),
            discovery_rx,
        ));
        sup.write_pair_file();
        sup.write_timeline();
        println!("READY admin={admin_addr}");
        tracing::info!(
            "pair up: admin {admin_addr}, {} active on {}, {} standby on {}",
            sup.slots[sup.rules.active].name,
            sup.slots[sup.rules.active].client_addr,
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
            if let Some(w) = &sup.witness {
                // The leader key goes now: a spare takes the engines over at once.
                w.resign().await;
            }
            tracing::info!(
                "supervisor stopping; the engines keep serving. `tandem pair up --dir {0}` takes them back, `tandem pair down --dir {0}` stops them",
                sup.args.dir.display()
            );
            return Ok(());
        }
        sup.stop_all().await;
        PairState::remove(&sup.args.dir);
        let _ = std::fs::remove_file(sup.args.dir.join("pair.json"));
        if let Some(w) = &sup.witness {
            // The pair is gone: its record and leader key go too.
            let _ = w.client.delete(&w.pair_key()).await;
            w.resign().await;
        }
        tracing::info!("pair down");
        Ok(())
    })
}

/// Takes the pair's leader key, or waits as a hot spare until it goes (answering `STATUS`
/// meanwhile). None: told to stop while waiting; Some(None): leads at once; Some(Some(id)):
/// took the pair over from that leader.
async fn lead_or_wait(
    w: &mut Witness,
    admin_addr: &str,
    events: &mut mpsc::Receiver<Event>,
) -> anyhow::Result<Option<Option<String>>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut waited_for: Option<String> = None;
    let mut unreachable_said = false;
    loop {
        match w.campaign().await {
            Ok(None) => {
                if let Some(old) = &waited_for {
                    tracing::info!("the leader {old} is gone: taking pair {} over", w.name);
                }
                return Ok(Some(waited_for));
            }
            Ok(Some(holder)) => {
                unreachable_said = false;
                if waited_for.as_deref() != Some(holder.as_str()) {
                    tracing::info!(
                        "pair {} is led by {holder}: this supervisor ({}) is a hot spare, waiting for it to go",
                        w.name,
                        w.id
                    );
                    if waited_for.is_none() {
                        println!("SPARE admin={admin_addr} leader={holder}");
                    }
                    waited_for = Some(holder);
                }
            }
            Err(e) if waited_for.is_none() && !unreachable_said => {
                tracing::warn!("etcd: {e}; trying again");
                unreachable_said = true;
            }
            Err(_) => {}
        }
        let pause = tokio::time::sleep(crate::witness::SPARE_POLL);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                ev = events.recv() => match ev {
                    Some(Event::Admin { cmd, reply }) => {
                        let verb = cmd.first().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
                        let answer = match verb.as_str() {
                            "PING" => Ok("PONG".into()),
                            "STATUS" => Ok(contract::encode(&spare_status(w, admin_addr).await)),
                            _ => Err(format!(
                                "SPARE this supervisor is a hot spare of pair {}; it is led by {}",
                                w.name,
                                waited_for.as_deref().unwrap_or("?")
                            )),
                        };
                        let _ = reply.send(answer);
                    }
                    Some(_) => {}
                    None => return Ok(None),
                },
                _ = tokio::signal::ctrl_c() => return Ok(None),
                _ = terminate.recv() => return Ok(None),
            }
        }
    }
}

/// A spare's `STATUS`: the pair as etcd's record has it, and who leads.
async fn spare_status(w: &Witness, admin_addr: &str) -> PairStatus {
    let record = w.read_record().await;
    let (epoch, active, error) = match &record {
        Ok(Some(r)) => (r.epoch, r.active.clone(), None),
        Ok(None) => (0, String::new(), None),
        Err(e) => (0, String::new(), Some(e.clone())),
    };
    let health = w.health();
    PairStatus {
        admin: admin_addr.to_string(),
        supervisor_pid: std::process::id(),
        epoch,
        active,
        standby_promotable: false,
        simplex: false,
        upgrade_in_progress: false,
        unavailable: None,
        failover_pending: None,
        failovers: 0,
        engines: Vec::new(),
        witness: Some(contract::WitnessStatus {
            url: w.client.endpoints(),
            key: w.pair_key(),
            supervisor: w.id.clone(),
            role: "spare".into(),
            leader: w.leader.clone(),
            state: if error.is_some() || health.unreachable_since.is_some() {
                "unreachable".into()
            } else {
                "ok".into()
            },
            unreachable_since_ms: health.unreachable_since.map(|(_, ms, _)| ms),
            error,
            published_epoch: None,
        }),
    }
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
        1 - self.rules.active
    }

    /// Is there an active engine serving (no failover under way, not unavailable)?
    pub fn has_active(&self) -> bool {
        self.rules.promotion.is_none()
            && self.rules.unavailable.is_none()
            && self.slots[self.rules.active].alive()
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
            self.rules.epoch,
            self.slots[self.rules.active].name.into(),
            self.rules.promotable,
        );
        s.unavailable = self.rules.unavailable.clone();
        s.released_any = self.rules.released_any;
        s.sentinel = Some(self.sentinel_addr.clone());
        s.engines = self.slots.iter().map(Slot::state).collect();
        s.upgrade = self.upgrade_state.clone();
        s.data_dir = Some(self.engine_dir.clone());
        s.upgrade_record = self.upgrade_record.clone();
        s.ran_tags = self.ran_tags.clone();
        s
    }

    /// Writes the supervisor's state to disk; called before acting on a change. With a
    /// witness, the record in etcd is written before the next engine call (`witness_gate`).
    pub fn persist(&self) {
        if let Err(e) = self.pair_state().save(&self.args.dir) {
            tracing::error!("could not save the supervisor's state: {e}");
        }
        self.witness_dirty.set(true);
    }

    /// The pair as etcd's record holds it (`P/pair/NAME`).
    pub fn pair_record(&self) -> fleet::keys::PairRecord {
        let phase = match (&self.upgrade_state, &self.rules.unavailable) {
            (Some(u), _) => u.step.clone(),
            (None, Some(_)) => "unavailable".into(),
            (None, None) if !self.rules.promotable => "simplex".into(),
            _ => "serving".into(),
        };
        // Both engines on one version and no upgrade under way: its features are enabled
        // (an upgrade enables them as its last step, a rollback ends on the old version).
        let version = (self.slots[0].app_version == self.slots[1].app_version
            && self.upgrade_state.is_none())
        .then(|| self.slots[0].app_version.clone());
        fleet::keys::PairRecord {
            name: self.args.name.clone(),
            epoch: self.rules.epoch,
            supervisor: self
                .witness
                .as_ref()
                .map(|w| w.id.clone())
                .unwrap_or_default(),
            admin: self.admin_addr.clone(),
            sentinel: Some(self.sentinel_addr.clone()),
            active: self.slots[self.rules.active].name.into(),
            engines: self
                .slots
                .iter()
                .map(|s| fleet::keys::EngineRecord {
                    name: s.name.into(),
                    client_addr: s.client_addr.clone(),
                    app_version: s.app_version.clone(),
                })
                .collect(),
            version,
            phase,
            upgrade: self.upgrade_record.clone(),
            updated_ms: timeline::now_ms(),
            state: serde_json::to_value(self.pair_state()).expect("state serializes"),
        }
    }

    /// Writes the pair's record to etcd if it changed. A supervisor that finds another one
    /// leading steps down. False if the record in etcd is not the current one.
    pub async fn flush_witness(&mut self) -> bool {
        self.flush_witness_with(false).await
    }

    /// `flush_witness`, for a grant: with the client's whole deadline, tried twice, unless
    /// etcd is known to be out of reach.
    pub async fn flush_witness_patient(&mut self) -> bool {
        for _ in 0..2 {
            if self.flush_witness_with(true).await {
                return true;
            }
            if self
                .witness
                .as_ref()
                .is_none_or(|w| w.standing() != Standing::Sure)
            {
                return false;
            }
        }
        false
    }

    async fn flush_witness_with(&mut self, patient: bool) -> bool {
        if self.witness.is_none() || !self.witness_dirty.get() {
            return true;
        }
        let record = self.pair_record();
        let w = self.witness.as_mut().expect("checked");
        if w.in_flight {
            return false; // a grant's write runs in the background (`await_witness`)
        }
        // etcd just failed to answer: not tried again at every call (each try costs a
        // timeout when etcd is out of reach rather than down).
        if !patient
            && w.last_failed_publish
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return false;
        }
        match w.publish(&record, patient).await {
            Ok(()) => {
                self.witness_dirty.set(false);
                true
            }
            Err(crate::witness::PublishError::NotLeader(holder)) if w.overtaken_by(&holder) => self
                .step_down(format!(
                    "the pair's leader key is no longer this supervisor's (held by {})",
                    holder.as_deref().unwrap_or("nobody")
                )),
            Err(crate::witness::PublishError::NotLeader(_)) => {
                w.mark_lost(
                    "the pair's leader key is gone (this supervisor's lease expired)".into(),
                );
                false
            }
            Err(e) => {
                tracing::debug!("writing the pair's record: {e}");
                false
            }
        }
    }

    /// This supervisor does not lead the pair any more: it stops acting at once (no engine
    /// call, no signal to an engine), says so and exits, leaving the engines to the leader.
    pub fn step_down(&mut self, why: String) -> ! {
        let message =
            format!("stepping down: {why}; the engines are left to the pair's leader (exit 3)");
        tracing::error!("{message}");
        self.emit(TimelineEvent {
            message: Some(message),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SteppedDown)
        });
        std::process::exit(3)
    }

    /// What the witness allows before an engine call (`args`): nothing while this
    /// supervisor's lease may have expired; only what etcd already holds otherwise (a new
    /// epoch must be in etcd first, so must the standby's not being promotable before a
    /// simplex lease); with etcd unreachable, only the active's sync lease and statuses.
    async fn witness_gate(&mut self, args: &[&str]) -> Result<(), CallError> {
        let Some(w) = &self.witness else {
            return Ok(());
        };
        let standing = w.standing();
        match &standing {
            // Lost: taken again or stepped down at the next tick (`witness_tick`).
            Standing::Doubtful | Standing::Lost(_) => {
                w.poke();
                return Err(CallError::NoAnswer(
                    "this supervisor's etcd lease may have expired (no keep-alive answered in time): no engine call until etcd confirms it".into(),
                ));
            }
            Standing::Sure | Standing::EtcdDown => {}
        }
        let verb = args.first().copied().unwrap_or("");
        if matches!(verb, "TANDEM.STATUS" | "TANDEM.STATS") {
            return Ok(());
        }
        let sync_lease = verb == "TANDEM.LEASE" && args.get(4) == Some(&"sync");
        let (epoch, promotable) = w.published.unwrap_or((0, true));
        let needs = self.rules.epoch > epoch || (promotable && !self.rules.promotable);
        if needs && standing == Standing::Sure {
            // A grant (or a simplex) waits on this write: worth the client's deadline.
            self.flush_witness_patient().await;
        } else {
            self.flush_witness().await;
        }
        let w = self.witness.as_ref().expect("checked");
        let (epoch, promotable) = w.published.unwrap_or((0, true));
        if self.rules.epoch > epoch {
            return Err(CallError::NoAnswer(format!(
                "epoch {} is not in etcd yet (it holds {epoch}; etcd unreachable?): {verb} waits",
                self.rules.epoch
            )));
        }
        if verb == "TANDEM.LEASE" && !sync_lease && promotable {
            return Err(CallError::NoAnswer(
                "the standby's not being promotable is not in etcd yet: no simplex lease".into(),
            ));
        }
        if standing == Standing::EtcdDown && !sync_lease {
            return Err(CallError::NoAnswer(format!(
                "etcd is unreachable: only the active's lease is renewed, {verb} waits"
            )));
        }
        Ok(())
    }

    /// Whether the witness lets this supervisor grant a new epoch now (an upgrade's start):
    /// its lease sure and the record in etcd written just now (`await_witness`).
    pub async fn witness_can_grant(&mut self) -> Result<(), String> {
        let limit = self.witness_wait();
        self.await_witness(false, limit, true).await
    }

    /// How long a grant waits for etcd: `WITNESS_WAIT`, or during an upgrade its catch-up
    /// timeout if that is longer.
    pub fn witness_wait(&self) -> Duration {
        let catch_up = self
            .upgrade_state
            .as_ref()
            .map(|u| Duration::from_millis(u.options.catch_up_timeout_ms))
            .unwrap_or_default();
        crate::witness::WITNESS_WAIT.max(catch_up)
    }

    /// Waits until etcd holds the pair's record as of now (with `next_epoch`, holding the
    /// epoch the next grant takes, so that the grant needs no further write), for at most
    /// `limit`: the write runs in the background, retried until etcd takes it, while `pump`
    /// keeps the pair served and the leases renewed. With `wait_for_etcd` false, etcd known
    /// to be out of reach refuses at once (an operator's SWITCHOVER); otherwise that waits
    /// too (an upgrade). Err (NOWITNESS) says why etcd did not take it.
    pub async fn await_witness(
        &mut self,
        next_epoch: bool,
        limit: Duration,
        wait_for_etcd: bool,
    ) -> Result<(), String> {
        if self.witness.is_none() {
            return Ok(());
        }
        let began = Instant::now();
        let deadline = began + limit;
        let mut said = false;
        let mut why = String::from("etcd is unreachable");
        loop {
            let standing = self.witness.as_ref().expect("checked").standing();
            if standing == Standing::Sure {
                let mut record = self.pair_record();
                if next_epoch {
                    record.epoch = self.rules.epoch + 1;
                }
                let w = self.witness.as_mut().expect("checked");
                let write = match w.spawn_publish(&record, crate::witness::WAIT_WRITE_TIMEOUT) {
                    Ok(write) => write,
                    Err(e) => self.step_down(e.to_string()),
                };
                w.in_flight = true;
                let left = deadline.saturating_duration_since(Instant::now());
                self.pump(left, |_| write.is_finished()).await;
                let outcome = if write.is_finished() {
                    write.await.unwrap_or_else(|e| {
                        Err(fleet::Error::Unreachable(format!("the write failed: {e}")))
                    })
                } else {
                    write.abort();
                    Err(fleet::Error::Unreachable("no answer in time".into()))
                };
                let w = self.witness.as_mut().expect("checked");
                w.in_flight = false;
                match w.published_with(&record, outcome) {
                    Ok(()) => {
                        // The record as of now (or the next epoch's) is in etcd; the loop
                        // writes any change since as usual. The grant also needs the
                        // lease sure (etcd answered the write, the keep-alive says so soon).
                        w.poke();
                        let left = deadline.saturating_duration_since(Instant::now());
                        let sure = |s: &Supervisor| {
                            s.witness
                                .as_ref()
                                .is_some_and(|w| w.standing() == Standing::Sure)
                        };
                        if !self.pump(left, sure).await {
                            return Err(format!(
                                "NOWITNESS etcd took the pair's record but this supervisor's lease is not confirmed: no new epoch (waited {:.1} s)",
                                limit.as_secs_f64()
                            ));
                        }
                        if said || began.elapsed() > Duration::from_millis(500) {
                            tracing::info!(
                                "etcd took the pair's record after {:.1} s: the grant goes on",
                                began.elapsed().as_secs_f64()
                            );
                        }
                        return Ok(());
                    }
                    Err(crate::witness::PublishError::NotLeader(holder))
                        if w.overtaken_by(&holder) =>
                    {
                        self.step_down(format!(
                            "the pair's leader key is no longer this supervisor's (held by {})",
                            holder.as_deref().unwrap_or("nobody")
                        ))
                    }
                    Err(crate::witness::PublishError::NotLeader(_)) => {
                        why = "this supervisor's lease expired: taking the leader key again".into();
                        w.mark_lost(why.clone());
                    }
                    Err(e) => why = format!("etcd did not take the pair's record ({e})"),
                }
            } else if !wait_for_etcd {
                return Err(
                    "NOWITNESS etcd is unreachable: no new epoch can be granted until it answers"
                        .into(),
                );
            }
            if Instant::now() >= deadline || self.shutdown {
                return Err(format!(
                    "NOWITNESS {why}: no new epoch can be granted until it does (waited {:.1} s)",
                    limit.as_secs_f64()
                ));
            }
            if !std::mem::replace(&mut said, true) {
                tracing::warn!("waiting for etcd to take the pair's record before a grant (up to {:.0} s): {why}", limit.as_secs_f64());
            }
            let pause =
                Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now()));
            self.pump_for(pause).await;
        }
    }

    /// Before a tick: what the witness lets it do, and the witness's ups and downs told.
    async fn witness_tick(&mut self) -> TickMode {
        let Some(w) = &self.witness else {
            return TickMode::Full;
        };
        let standing = w.standing();
        match standing {
            Standing::Lost(why) => self.witness_retake(why).await,
            Standing::Doubtful => {
                w.poke();
                if !std::mem::replace(&mut self.witness_doubt_said, true) {
                    tracing::warn!("no etcd keep-alive answered in time: this supervisor's lease may have expired; no engine call until etcd confirms it");
                }
                TickMode::Nothing
            }
            Standing::EtcdDown => {
                let health = w.health();
                self.witness_doubt_said = false;
                if !std::mem::replace(&mut self.witness_lost_said, true) {
                    let why = health
                        .unreachable_since
                        .map(|(_, _, e)| e)
                        .unwrap_or_default();
                    let message = format!("etcd unreachable ({why}): the pair keeps serving at epoch {}; no new epoch until etcd answers", self.rules.epoch);
                    tracing::warn!("{message}");
                    self.emit(TimelineEvent {
                        message: Some(message),
                        ..TimelineEvent::new(timeline::now_ms(), EventKind::WitnessLost)
                    });
                }
                TickMode::LeasesOnly
            }
            Standing::Sure => {
                self.witness_doubt_said = false;
                if self.witness_lost_said && self.flush_witness().await {
                    self.witness_lost_said = false;
                    let message = format!(
                        "etcd answers again; the pair is at epoch {}",
                        self.rules.epoch
                    );
                    tracing::info!("{message}");
                    self.emit(TimelineEvent {
                        message: Some(message),
                        ..TimelineEvent::new(timeline::now_ms(), EventKind::WitnessBack)
                    });
                } else {
                    self.flush_witness().await;
                }
                TickMode::Full
            }
        }
    }

    /// etcd said this supervisor's lease expired: it leads on if nobody took the pair over
    /// meanwhile (`Witness::retake`), else steps down; no engine call until then.
    async fn witness_retake(&mut self, why: String) -> TickMode {
        let w = self.witness.as_mut().expect("a witness");
        if w.last_retake
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return TickMode::Nothing;
        }
        match w.retake().await {
            Ok(true) => {
                self.witness_dirty.set(true);
                self.witness_doubt_said = false;
                let message = format!(
                    "{why}; nobody took the pair over meanwhile: this supervisor took a new lease and the leader key again and leads on at epoch {}",
                    self.rules.epoch
                );
                tracing::warn!("{message}");
                self.flush_witness().await;
                self.witness_lost_said = false;
                self.emit(TimelineEvent {
                    message: Some(message),
                    ..TimelineEvent::new(timeline::now_ms(), EventKind::WitnessBack)
                });
                TickMode::Nothing
            }
            Ok(false) => self.step_down(format!(
                "{why}, and another supervisor took the pair over meanwhile (leader {})",
                self.witness
                    .as_ref()
                    .and_then(|w| w.leader.clone())
                    .unwrap_or_else(|| "none, but the pair's record is not this one's".into())
            )),
            Err(e) => {
                if !std::mem::replace(&mut self.witness_doubt_said, true) {
                    tracing::warn!("{why}: taking the leader key again when etcd answers ({e}); no engine call meanwhile");
                }
                TickMode::Nothing
            }
        }
    }

    /// The witness as `STATUS` shows it.
    fn witness_status(&self) -> Option<contract::WitnessStatus> {
        let w = self.witness.as_ref()?;
        let health = w.health();
        let state = match w.standing() {
            Standing::Sure => "ok",
            Standing::EtcdDown => "unreachable",
            Standing::Doubtful | Standing::Lost(_) => "doubtful",
        };
        Some(contract::WitnessStatus {
            url: w.client.endpoints(),
            key: w.pair_key(),
            supervisor: w.id.clone(),
            role: "leader".into(),
            leader: w.leader.clone(),
            state: state.into(),
            unreachable_since_ms: health.unreachable_since.as_ref().map(|(_, ms, _)| *ms),
            error: health.unreachable_since.map(|(_, _, e)| e),
            published_epoch: w.published.map(|(e, _)| e),
        })
    }

    /// Starts an engine process of this executable, in a process group of its own.
    async fn start(&mut self, i: usize, how: Start) -> anyhow::Result<()> {
        self.heed();
        if self.witness.is_some() {
            // The engine starts at the supervisor's epoch: etcd holds it first (and holds
            // that the standby is not promotable, before a new one starts empty).
            let args = ["TANDEM.START"];
            self.witness_gate(&args)
                .await
                .map_err(|e| anyhow::anyhow!("engine {} not started: {e}", self.slots[i].name))?;
        }
        let exe = std::env::current_exe().context("finding the tandem executable")?;
        let slot = &self.slots[i];
        let log_path = self.args.dir.join(format!("{}.log", slot.name));
        let data_dir = self.engine_dir.join(slot.name);
        let mut cmd = Command::new(exe);
        cmd.arg("engine")
            .args(["--name", slot.name])
            .args(["--client-addr", &slot.client_addr])
            .args(["--replication-addr", &slot.replication_addr])
            .args(["--control-addr", &slot.control_addr])
            .arg("--secret-file")
            .arg(&self.args.secret_file)
            .args(["--app-version", &slot.app_version])
            .args(["--epoch", &self.rules.epoch.to_string()])
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
        if let Some(w) = &self.witness {
            cmd.args(["--etcd", &w.client.endpoints()])
                .args(["--etcd-key", &w.pair_key()]);
        }
        match &how {
            Start::Active => cmd.args(["--active-epoch", &self.rules.epoch.to_string()]),
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
        tracing::info!(
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
        self.rules.started(i, monotonic_ns());
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
        if let Some(w) = &self.witness {
            if w.standing() != Standing::Sure {
                tracing::warn!(
                    "not killing engine {}: this supervisor's etcd lease is not sure",
                    self.slots[i].name
                );
                return;
            }
        }
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
        self.heed(); // what the rules said is durable before any engine hears of it
        self.witness_gate(args).await?; // ...and in etcd, with a witness
        let secret = self.secret.clone();
        let witness = self.witness.as_ref();
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
            // Looked at again right before the bytes go: a supervisor frozen since the gate
            // (connecting may take a while) must not send what it decided before.
            if witness.is_some_and(|w| !matches!(w.standing(), Standing::Sure | Standing::EtcdDown))
            {
                return Err(ClientError::Io(std::io::Error::other(
                    "this supervisor's etcd lease may have expired: not sent",
                )));
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
                self.rules.heard(i, monotonic_ns());
                Err(CallError::Refused(Code::of(&e), e))
            }
            Ok(Ok(r)) => {
                self.rules.heard(i, monotonic_ns());
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
            tracing::warn!("{e}");
            self.contract_error = Some(e.to_string());
        }
    }

    /// Marks the standby promotable or not. Going to not promotable is on disk before the
    /// caller lets the active run simplex: a successor must never promote a stale standby.
    fn set_promotable(&mut self, promotable: bool, why: &str) {
        self.rules.set_promotable(promotable, why);
        self.heed();
    }

    /// Makes what the rules said durable, then tells it: on disk before any engine hears of
    /// it (`call_timeout` heeds before every call), on the timeline, in `pair.json`.
    fn heed(&mut self) {
        let said = self.rules.take_said();
        if said.is_empty() {
            return;
        }
        self.persist();
        for said in said {
            match said {
                Said::Granted(_) | Said::Released => {}
                Said::Promotable(promotable, why) => {
                    self.publish_discovery();
                    let (kind, what) = match promotable {
                        true => (EventKind::SimplexEnd, "standby in sync"),
                        false => (EventKind::SimplexStart, "no standby in sync"),
                    };
                    self.emit(TimelineEvent {
                        message: Some(format!("{what}: {why}")),
                        ..TimelineEvent::new(timeline::now_ms(), kind)
                    });
                }
                Said::Unavailable(why) => {
                    let why = format!(
                        "{why}. To accept the loss: `tandem promote --admin {} --engine {} --accept-data-loss`",
                        self.admin_addr,
                        self.slots[self.rules.standby()].name
                    );
                    tracing::error!("PAIR UNAVAILABLE: {why}");
                    self.rules.unavailable = Some(why.clone());
                    self.persist();
                    self.emit(TimelineEvent {
                        message: Some(why),
                        ..TimelineEvent::new(timeline::now_ms(), EventKind::Unavailable)
                    });
                    self.write_pair_file();
                }
            }
        }
    }

    /// One tick: a pending promotion first, then the lease, the failure detector, the standby.
    async fn on_tick(&mut self) {
        self.ticks += 1;
        match self.witness_tick().await {
            TickMode::Full => {}
            TickMode::LeasesOnly => {
                if self.rules.promotion.is_none() && self.rules.unavailable.is_none() {
                    self.renew_lease().await;
                }
                return;
            }
            TickMode::Nothing => return,
        }
        if let Some(i) = self.standby_restart_pending {
            if self.slots[i].pid.is_none()
                && i != self.rules.active
                && self.rules.promotion.is_none()
            {
                self.restart_standby(i).await;
            } else {
                self.standby_restart_pending = None;
            }
        }
        if self.rules.promotion.is_some() {
            self.try_promotion().await;
            return;
        }
        if self.rules.unavailable.is_some() {
            return;
        }
        self.renew_lease().await;
        let active = self.rules.active;
        let running = self.slots[active].alive();
        if let Some(cause) = self.rules.active_hung(running, monotonic_ns()) {
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
        if self.renew_lease_once().await == AfterLease::RenewSimplex {
            self.renew_lease_once().await;
        }
    }

    async fn renew_lease_once(&mut self) -> AfterLease {
        let active = self.rules.active;
        if !self.slots[active].alive() || self.rules.promotion.is_some() {
            return AfterLease::Fine;
        }
        self.heed();
        self.flush_witness().await;
        let mut mode = self.rules.lease_mode();
        if let Some(w) = &self.witness {
            if mode != "sync" && w.published.is_none_or(|(_, promotable)| promotable) {
                // Not promotable is not in etcd yet: the active keeps waiting for its standby
                // (a successor reading etcd must never promote a stale standby).
                mode = "sync";
            }
        }
        let stamp = monotonic_ns().to_string();
        let (epoch, ttl) = (
            self.rules.epoch.to_string(),
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
        let after = self.rules.lease_answered(reply.as_ref());
        self.heed();
        if let (AfterLease::Resync, Err(e)) = (&after, &reply) {
            let name = self.slots[active].name;
            tracing::warn!("lease refused by {name}: {e}; resyncing");
            self.resync().await;
        }
        after
    }

    /// After the engines and the supervisor disagree (an epoch it did not grant, a lost
    /// answer): adopt the engine that is active at the highest epoch.
    async fn resync(&mut self) {
        let mut statuses: [Option<EngineStatus>; 2] = [None, None];
        for (i, st) in statuses.iter_mut().enumerate() {
            *st = self.status_of(i, CALL_TIMEOUT).await.ok();
        }
        if let Some(i) = self
            .rules
            .resynced([statuses[0].as_ref(), statuses[1].as_ref()])
        {
            tracing::warn!(
                "resync: {} is active at epoch {}; adopting it",
                self.slots[i].name,
                self.rules.epoch
            );
            self.slots[1 - i].client = None;
        }
        self.heed();
        self.persist();
        self.write_pair_file();
    }

    /// Tells engine `i` to follow the active in this epoch.
    async fn follow(&mut self, i: usize, timeout: Duration) -> Result<Reply, CallError> {
        let a = self.rules.active;
        let (addr, hint, epoch) = (
            self.slots[a].replication_addr.clone(),
            self.slots[a].client_addr.clone(),
            self.rules.epoch.to_string(),
        );
        let args = ["TANDEM.FOLLOW", &addr, &epoch, &hint];
        self.call_timeout(i, &args, timeout).await
    }

    /// Looks after the engine that is not active: a fenced one must follow the active, a
    /// silent one is killed once it has been silent for `hung_kill_after`.
    async fn check_standby(&mut self) {
        let standby = self.rules.standby();
        let answer = match self.rules.standby_check(self.slots[standby].alive()) {
            StandbyCheck::Nothing => return,
            StandbyCheck::Follow(i) => {
                let r = self.follow(i, STANDBY_CHECK_TIMEOUT).await;
                if r.is_ok() {
                    self.rules.followed(i);
                    tracing::info!(
                        "{} answers again: it follows {} at epoch {}",
                        self.slots[i].name,
                        self.slots[self.rules.active].name,
                        self.rules.epoch
                    );
                }
                r.map(|_| None)
            }
            StandbyCheck::Status(i) => self.status_of(i, STANDBY_CHECK_TIMEOUT).await.map(Some),
        };
        let answer = answer.as_ref().map(Option::as_ref);
        match self.rules.standby_checked(answer, monotonic_ns()) {
            StandbyVerdict::Fine => {}
            StandbyVerdict::Resync => self.resync().await,
            StandbyVerdict::Kill(why) => {
                tracing::warn!("{why}: killing it, it will be restarted");
                self.kill(standby);
            }
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
        let expected = std::mem::take(&mut slot.expected_exit) || self.shutdown;
        let decision = self.rules.exited(i, expected);
        self.heed();
        self.persist();
        match decision {
            OnExit::Expected => {
                tracing::info!("engine {name} (pid {pid}) stopped");
                self.write_pair_file();
            }
            OnExit::Quiet => {}
            OnExit::ActiveLost(cause) => {
                let cause = format!("{cause} (pid {pid})");
                self.active_lost(i, cause, true).await;
            }
            OnExit::TargetLost(cause) => self.no_promotable(self.rules.active, cause, true).await,
            OnExit::RestartStandby => {
                tracing::warn!("standby {name} (pid {pid}) died: restarting it");
                self.restart_standby(i).await;
            }
        }
    }

    /// Restarts engine `i` as the standby of the active.
    async fn restart_standby(&mut self, i: usize) {
        if !self.slots[self.rules.active].alive() || self.rules.unavailable.is_some() {
            return;
        }
        // A new process holds nothing until it has caught up.
        self.set_promotable(false, &format!("{} restarts empty", self.slots[i].name));
        let follow = self.slots[self.rules.active].replication_addr.clone();
        match self.start(i, Start::Follow(follow)).await {
            Ok(()) => self.standby_restart_pending = None,
            Err(e) => {
                tracing::error!("restarting {} failed: {e:#}", self.slots[i].name);
                if self.witness.is_some() {
                    // Refused for want of etcd, most likely: tried again once it answers.
                    self.standby_restart_pending = Some(i);
                }
            }
        }
        self.write_pair_file();
    }

    /// The active is gone (`exited`) or hung: replace it by an engine that holds every
    /// acknowledged write, or say that none does.
    async fn active_lost(&mut self, dead: usize, cause: String, exited: bool) {
        tracing::warn!("active lost: {cause}");
        let other_running = self.slots[1 - dead].alive();
        let now = monotonic_ns();
        match self
            .rules
            .active_lost(dead, cause, exited, other_running, now)
        {
            Lost::Promote => {
                self.slots[dead].client = None; // its answers may still come, late
                self.try_promotion().await;
            }
            Lost::NoPromotable(cause) => self.no_promotable(dead, cause, exited).await,
        }
    }

    /// One attempt at the pending promotion; kept pending while the standby does not answer.
    async fn try_promotion(&mut self) {
        if self.rules.promotion_overdue(monotonic_ns()) && self.take_back().await {
            return;
        }
        let Some((target, args)) = self.rules.promotion_attempt() else {
            return;
        };
        let timeout = self
            .args
            .timing
            .hang_timeout
            .max(Duration::from_millis(200));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = self.call_timeout(target, &args, timeout).await;
        match self.rules.promote_answered(result.as_ref().map(|_| ())) {
            PromoteAnswer::Promoted => self.promoted().await,
            PromoteAnswer::NotReady(cause) => {
                let dead = 1 - target;
                let exited = self.slots[dead].pid.is_none();
                self.no_promotable(dead, cause, exited).await;
            }
            PromoteAnswer::Stale => {
                // Someone (a predecessor) granted a higher epoch: go above it and retry.
                let seen = self.status_of(target, CALL_TIMEOUT).await;
                self.rules.regrant(seen.map_or(0, |st| st.epoch));
                self.heed();
            }
            PromoteAnswer::Retry => {
                let attempts = self.rules.promotion.as_ref().map_or(0, |p| p.attempts);
                if attempts == 1 || attempts.is_power_of_two() {
                    let e = result.err().map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(
                        "promoting {} at epoch {}: attempt {attempts} failed ({e}); retrying",
                        self.slots[target].name,
                        args[1]
                    );
                }
            }
        }
    }

    /// A promotion that has not been answered for `hung_kill_after`: if the engine it was to
    /// replace answers again (it was hung, not dead) and is still active with a whole state,
    /// it takes the pair back in a new epoch, and the silent target is fenced instead.
    async fn take_back(&mut self) -> bool {
        let Some(p) = self.rules.promotion.clone() else {
            return false;
        };
        let lost = 1 - p.target;
        if !self.slots[lost].alive() {
            return false;
        }
        let Ok(st) = self.status_of(lost, STANDBY_CHECK_TIMEOUT).await else {
            return false;
        };
        if !self.rules.may_take_back(&st) {
            return false;
        }
        let epoch = self.rules.grant().to_string();
        if self.call(lost, &["TANDEM.PROMOTE", &epoch]).await.is_err() {
            return false;
        }
        let (back, silent) = (self.slots[lost].name, self.slots[p.target].name);
        tracing::info!("{back} answers again and {silent} still does not: {back} stays active at epoch {epoch}");
        self.rules.taken_back(monotonic_ns());
        self.slots[p.target].client = None;
        self.heed();
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

    async fn promoted(&mut self) {
        let now = monotonic_ns();
        let Some(p) = self.rules.promoted(now) else {
            return;
        };
        let dead = 1 - p.target;
        let took_ms = now.saturating_sub(p.since_ns) as f64 / 1e6;
        self.heed();
        self.persist();
        self.renew_lease().await;
        let (to, from) = (self.slots[p.target].name, self.slots[dead].name);
        tracing::info!(
            "failover: {}; {to} promoted at epoch {} in {took_ms:.1} ms ({} attempts)",
            p.cause,
            p.epoch,
            p.attempts
        );
        self.emit(TimelineEvent {
            switchover: Some(SwitchoverKind::Failover),
            stepup_ms: Some(took_ms),
            message: Some(format!("{}; {to} promoted at epoch {}", p.cause, p.epoch)),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
        });
        self.write_pair_file();
        if self.slots[dead].pid.is_none() {
            tracing::info!("restarting {from} as the standby of {to}");
            self.restart_standby(dead).await;
        }
    }

    /// The active is lost and no standby is known to hold every acknowledged write: recover the
    /// lost engine from its journal if it has one, else refuse writes and say why.
    async fn no_promotable(&mut self, dead: usize, cause: String, exited: bool) {
        let journal = crate::journal::exists(&self.engine_dir.join(self.slots[dead].name));
        let other = 1 - dead;
        let other_running = self.slots[other].alive();
        let now = monotonic_ns();
        let decision = self
            .rules
            .no_promotable(dead, cause.clone(), journal, other_running, now);
        match decision {
            NoPromotable::Recover => {
                if let Err(e) = self.recover(dead, &cause, exited).await {
                    self.rules.refuse_writes(format!(
                        "{cause}; recovering it from its journal failed: {e}"
                    ));
                }
            }
            NoPromotable::ForcePromote { epoch } => {
                // Nothing was ever acknowledged: nothing can be lost by promoting the other.
                // The lost one, if it still runs, is killed first: it must not serve beside it.
                if !exited {
                    if let Some(p) = self.slots[dead].process.clone() {
                        self.slots[dead].expected_exit = true;
                        p.kill();
                        let _ = tokio::time::timeout(STOP_TIMEOUT, p.exited()).await;
                    }
                }
                let epoch = epoch.to_string();
                match self.call(other, &["TANDEM.PROMOTE", &epoch, "FORCE"]).await {
                    Ok(_) => self.promoted().await,
                    Err(e) => self.rules.force_promote_failed(&e),
                }
            }
            NoPromotable::Unavailable => {}
        }
        self.heed();
    }

    /// Restarts engine `dead` from its journal (killing it first if it still runs) and
    /// promotes it; the other engine follows it.
    async fn recover(&mut self, dead: usize, cause: &str, exited: bool) -> Result<(), String> {
        let name = self.slots[dead].name;
        if !exited {
            if let Some(p) = self.slots[dead].process.clone() {
                tracing::warn!("{name} is hung and holds the only copy of some writes, in its journal: killing it to recover it");
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
        let epoch = self.rules.grant().to_string();
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
        self.rules.recovered(dead, monotonic_ns());
        self.heed();
        self.persist();
        self.renew_lease().await;
        let other = 1 - dead;
        tracing::info!("recovery: {cause}; {name} restarted from its journal and active at epoch {epoch} in {took_ms:.0} ms");
        self.emit(TimelineEvent {
            switchover: Some(SwitchoverKind::Failover),
            stepup_ms: Some(took_ms),
            message: Some(format!(
                "{cause}; {name} recovered from its journal, active at epoch {epoch}"
            )),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
        });
        if self.slots[other].alive() {
            if self.follow(other, CALL_TIMEOUT).await.is_err() {
                self.rules.follow_failed(other);
            }
        } else if self.slots[other].pid.is_none() && !self.slots[other].expected_exit {
            self.restart_standby(other).await;
        }
        self.write_pair_file();
        Ok(())
    }

    /// The operator accepts the loss: `name` becomes active whatever it holds.
    async fn force_promote(&mut self, name: &str) -> Result<String, String> {
        let i = engine_index(name).ok_or_else(|| format!("ERR no engine named {name}"))?;
        if self.rules.unavailable.is_none() && self.rules.promotion.is_none() {
            return Err("ERR the pair is available: use SWITCHOVER".into());
        }
        if self.slots[i].pid.is_none() {
            // Its journal if it has one, else empty: the operator accepted the loss.
            let has_journal = crate::journal::exists(&self.engine_dir.join(name));
            let how = if has_journal {
                Start::Recover
            } else {
                Start::Active
            };
            self.start(i, how)
                .await
                .map_err(|e| format!("ERR starting {name}: {e:#}"))?;
        }
        let epoch = self.rules.grant().to_string();
        self.call(i, &["TANDEM.PROMOTE", &epoch, "FORCE"]).await?;
        let why = self.rules.forced(i, monotonic_ns()).unwrap_or_default();
        self.heed();
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
        } else if self.follow(other, CALL_TIMEOUT).await.is_err() {
            self.rules.follow_failed(other);
        }
        self.write_pair_file();
        Ok(format!("OK {name} is active at epoch {epoch}"))
    }

    /// Takes back the engines of a pair whose supervisor is gone.
    async fn adopt(&mut self, state: PairState) -> anyhow::Result<()> {
        self.rules.epoch = state.epoch;
        self.rules.promotable = state.promotable;
        self.rules.unavailable = state.unavailable.clone();
        self.rules.released_any = state.released_any;
        self.upgrade_state = state.upgrade.clone();
        self.rules.active = engine_index(&state.active).unwrap_or(0);
        let mut statuses: [Option<EngineStatus>; 2] = [None, None];
        let mut hung = [false; 2];
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
                    tracing::warn!(
                        "engine {} (pid {pid}) runs but does not answer ({e}): adopting it as hung",
                        self.slots[i].name
                    );
                    hung[i] = true;
                    self.watch(i, process);
                }
                _ => {
                    // Another process under that pid, or it died meanwhile.
                    self.slots[i].pid = None;
                    self.slots[i].client = None;
                }
            }
        }
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
            self.rules.epoch,
            describe(0, &statuses[0]),
            describe(1, &statuses[1])
        );
        tracing::info!("{message}");
        self.emit(TimelineEvent {
            message: Some(message),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SupervisorStart)
        });
        let adoption = self
            .rules
            .adopt([statuses[0].as_ref(), statuses[1].as_ref()], hung);
        self.heed();
        match adoption {
            Adoption::NoEngine => {
                let journals: Vec<usize> = (0..2)
                    .filter(|&i| crate::journal::exists(&self.engine_dir.join(self.slots[i].name)))
                    .collect();
                let Some(&i) = journals
                    .iter()
                    .find(|&&i| i == self.rules.active)
                    .or(journals.first())
                else {
                    bail!(
                        "the pair in {} (epoch {}) has no engine left and no journal to recover from: its data is gone. `tandem pair up --dir {} --fresh` starts an empty pair",
                        self.args.dir.display(),
                        self.rules.epoch,
                        self.args.dir.display()
                    );
                };
                self.rules.active = i;
                let cause = "both engines were gone when the supervisor started";
                self.recover(i, cause, true)
                    .await
                    .map_err(anyhow::Error::msg)?;
                return Ok(());
            }
            Adoption::Active(standby) => {
                self.persist();
                let i = self.standby();
                match standby {
                    AdoptStandby::Fine | AdoptStandby::Fenced => {}
                    AdoptStandby::Restart => self.restart_standby(i).await,
                    AdoptStandby::Follow => {
                        if self.follow(i, CALL_TIMEOUT).await.is_err() {
                            self.rules.follow_failed(i);
                        }
                    }
                }
            }
            Adoption::Retake { epoch } => {
                let a = self.rules.active;
                tracing::warn!(
                    "{} is active in an epoch before {}, granted by a predecessor that died mid-switchover: it takes epoch {epoch}",
                    self.slots[a].name,
                    epoch - 1
                );
                self.retake(a, epoch).await;
            }
            Adoption::ActiveLost {
                dead,
                cause,
                exited,
            } => self.active_lost(dead, cause, exited).await,
        }
        self.persist();
        Ok(())
    }

    /// A planned switchover to the standby; returns the step-up time in milliseconds.
    pub async fn switchover(&mut self, kind: SwitchoverKind) -> Result<f64, String> {
        // etcd holds the epoch this switchover grants before it is granted: a slow write
        // waits (the pair served meanwhile) rather than fail the switchover.
        let limit = self.witness_wait();
        let in_upgrade = self.upgrade_state.is_some();
        self.await_witness(true, limit, in_upgrade).await?;
        let (from, to) = (self.rules.active, self.rules.standby());
        let epoch = self.rules.begin_switchover()?;
        self.heed(); // granted once, whatever happens next
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
        match result {
            Ok(_) => self.rules.switched_over(to, true, monotonic_ns()),
            Err(e) => {
                // The step-up may have happened even though its answer was lost.
                let status = self.status_of(to, CALL_TIMEOUT).await;
                let now = monotonic_ns();
                match self
                    .rules
                    .switchover_unanswered(from, epoch, &e, status.as_ref(), now)
                {
                    SwitchoverUnanswered::Adopt => {
                        tracing::warn!(
                            "switchover answer lost ({e}), but {} is active at epoch {epoch}",
                            self.slots[to].name
                        );
                        self.rules.switched_over(to, false, now);
                        if self.follow(from, CALL_TIMEOUT).await.is_err() {
                            self.rules.follow_failed(from);
                        }
                    }
                    SwitchoverUnanswered::Promote => {
                        let unreachable = status.err().map(|e| e.to_string()).unwrap_or_default();
                        self.emit(end(format!("unconfirmed: {e}; {unreachable}")));
                        self.slots[from].client = None;
                        self.heed();
                        return Err(format!(
                            "{e}; {} did not answer either: promoting it at epoch {epoch}",
                            self.slots[to].name
                        ));
                    }
                    SwitchoverUnanswered::Retake { epoch } => {
                        self.emit(end(format!("failed: {e}")));
                        self.retake(from, epoch).await;
                        return Err(e.into());
                    }
                }
            }
        }
        self.heed();
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
    async fn retake(&mut self, from: usize, epoch: u64) {
        let epoch = epoch.to_string();
        if let Err(e) = self.call(from, &["TANDEM.PROMOTE", &epoch]).await {
            // Its next lease, in the new epoch, would step it down: it is lost, and the usual
            // rules replace it (or say that nobody holds every acknowledged write).
            let cause = format!(
                "after the failed switchover, {} did not take epoch {epoch}: {e}",
                self.slots[from].name
            );
            self.active_lost(from, cause, false).await;
            return;
        }
        self.rules.retaken(from, monotonic_ns());
        let to = 1 - from;
        if !self.slots[to].alive() {
            self.restart_standby(to).await;
        } else if self.follow(to, CALL_TIMEOUT).await.is_err() {
            self.rules.follow_failed(to); // told again by `check_standby` when it answers
        }
        self.heed();
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
        if i == self.standby() && self.slots[self.rules.active].alive() {
            // The standby goes only once the active's journal holds everything: until then
            // the standby stays promotable (the journal is pinned against the sync leases
            // that would close it), and if that fails the standby is not taken away at all.
            let active = self.rules.active;
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
                self.rules.epoch.to_string(),
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
            tracing::warn!(
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
        if i == self.rules.active {
            return Err(format!(
                "ERR {} is active: only the standby is reloaded",
                self.slots[i].name
            ));
        }
        self.stop_engine(i).await?;
        self.slots[i].app_version = version.to_string();
        self.slots[i].fault = fault;
        self.persist();
        if !self.slots[self.rules.active].alive() {
            return Err(format!(
                "the active {} is gone",
                self.slots[self.rules.active].name
            ));
        }
        let follow = self.slots[self.rules.active].replication_addr.clone();
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
        if let Some(why) = &self.rules.unavailable {
            if verb != "PROMOTE" {
                return Err(format!("UNAVAILABLE {why}"));
            }
        }
        match verb.as_str() {
            "SWITCHOVER" => self.switchover(SwitchoverKind::Planned).await.map(|ms| {
                format!("OK {} is active at epoch {}, step-up took {ms:.1} ms", self.slots[self.rules.active].name, self.rules.epoch)
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
        let active = self.rules.active;
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
            epoch: self.rules.epoch,
            active: self.slots[self.rules.active].name.into(),
            standby_promotable: self.rules.promotable,
            simplex: !self.rules.promotable,
            upgrade_in_progress: self.busy,
            unavailable: self.rules.unavailable.clone(),
            failover_pending: self.rules.promotion.as_ref().map(|p| PendingFailover {
                promoting: self.slots[p.target].name.into(),
                epoch: p.epoch,
                attempts: p.attempts,
                last_error: p.last_error.clone(),
                cause: p.cause.clone(),
            }),
            failovers: self.rules.failovers,
            engines,
            witness: self.witness_status(),
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
            epoch: self.rules.epoch,
        }
    }

    pub fn write_pair_file(&self) {
        let engines: Vec<Value> = (0..2)
            .map(|i| {
                let s = &self.slots[i];
                let role = if s.pid.is_none() {
                    "out_of_service"
                } else if i == self.rules.active && self.rules.unavailable.is_none() {
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
            "name": self.args.name, "admin": self.admin_addr, "sentinel_addr": self.sentinel_addr,
            "supervisor_pid": std::process::id(), "epoch": self.rules.epoch, "engines": engines,
        });
        self.publish_discovery();
        let json = serde_json::to_string_pretty(&file).expect("pair file serializes");
        write_atomically(&self.args.dir.join("pair.json"), &json);
    }

    /// Tells the Sentinel discovery port where the engines are now.
    fn publish_discovery(&self) {
        let (a, s) = (self.rules.active, self.rules.standby());
        let serving = self.has_active();
        let active = self.slots[a].client_addr.clone();
        let next = crate::sentinel::Discovery {
            master: serving.then(|| active.clone()),
            last_master: Some(active),
            replica: self.slots[s]
                .pid
                .map(|_| (self.slots[s].client_addr.clone(), self.rules.promotable)),
            epoch: self.rules.epoch,
        };
        self.discovery.send_if_modified(|d| {
            let changed = *d != next;
            *d = next;
            changed
        });
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
        tracing::warn!("could not write {}", path.display());
    }
}
