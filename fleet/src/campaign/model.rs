//! A model of what an upgrade campaign runs against, for checking [`Campaign`] under faults:
//! the campaign's proptest (`campaign/tests.rs`, arbitrary interleavings over a few pairs)
//! and the fleet simulator (`tandem sim --fleet N`, timed runs over 1,000 pairs) both drive
//! this one [`World`]. It has no clock or randomness of its own: whoever drives it picks
//! which transition happens next (a message delivered or lost, an upgrade's phase ending,
//! etcd going away, a campaign process dying...) and moves `now`.
//!
//! What is modelled, with the contracts of the real parts:
//!
//! - **etcd**: the campaign record with a mod revision (a write is a transaction that
//!   compares the revision and that `P/campaign-owner` holds the writer's id), the owner key
//!   on a lease that runs out `owner_ttl_ms` after its holder stopped keeping it alive (it
//!   died, stalled, or etcd was out of reach), the pairs' records as their supervisors
//!   published them; and outages: while etcd is unreachable nothing is read or written.
//! - **a pair's supervisor** (`engine/src/supervisor.rs`, `upgrade.rs`): busy from the moment
//!   it takes an `UPGRADE` (a second one is refused `BUSY`); refuses a tag it ran already and
//!   a pair already on the version; waits up to 10 s for its standby to be in sync (after a
//!   failover) and refuses if it is not; records the tag in etcd before it starts (refuses
//!   when etcd does not take it); runs the phases; a faulty build is rejected at the
//!   evaluation and rolled back; an active that dies mid-upgrade makes it roll back before
//!   the new version was accepted and finish (complete) after, as `settle`/`converge` do; the
//!   outcome goes to etcd when etcd answers, the report to the caller if its call is still
//!   connected.
//! - **the campaign process**: a model of the driver loop in `engine/src/campaign.rs` around
//!   the real [`Campaign`]: the write-then-ask order, the pause while etcd is unreachable,
//!   the owner key and its lease (a process that finds its lease lapsed takes the key again
//!   if it is free, and exits if another process holds it), a process that dies (its calls
//!   in flight still reach the supervisors or are lost), stalls (its lease lapses and a
//!   successor may take over while it sleeps), and a successor that takes over only once the
//!   owner key's lease expired, resuming from the record in etcd.
//! - **the network**: each `UPGRADE` request and each answer is a message the driver delivers
//!   or loses; a call whose connection drops while the upgrade runs leaves the upgrade
//!   running.
//!
//! The invariants are checked at every transition ([`World::broken`] holds the first one
//! broken): no pair upgraded twice, waves in order, at most `parallel` upgrades running, a
//! pair asked only once its Running is durable, no campaign write by a process that does not
//! own the campaign, nothing started after a stop; and at the end ([`World::check_end`]):
//! every pair's outcome in the record is what happened to it, a Completed campaign upgraded
//! every pair, a Stopped one left the pairs it did not start untouched.

use std::collections::{BTreeMap, BTreeSet};

use super::{outcome_of, plan, stop_reason, tag, Campaign, Event, Settings, WaveSpec};
use crate::keys::{CampaignRecord, CampaignState, Outcome, PairRecord, UpgradeRecord};

pub const FROM: &str = "1.0";
pub const TO: &str = "2.0";

/// A known bug, put back for the checks to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The campaign process asks for a pair's upgrade without waiting for the record that
    /// marks it Running to be durable.
    AskBeforeDurable,
    /// A supervisor runs an upgrade whose tag it ran already. Not found by the faults
    /// modelled (20,000 seeds): the campaign sends a tag again only while it cannot see it in
    /// the pair's record, and it is there from the start of the upgrade on; the refusal is a
    /// second line of defence (a process waking from a stall between a look and its ask is
    /// the one path, too narrow to hit).
    RerunTag,
    /// A supervisor records the upgrade's tag in etcd only when the upgrade ends, not before
    /// it starts.
    TagAtEnd,
}

impl Plant {
    pub const NAMES: [&'static str; 3] = ["ask-before-durable", "rerun-tag", "tag-at-end"];

    pub fn parse(name: &str) -> Result<Plant, String> {
        match name {
            "ask-before-durable" => Ok(Plant::AskBeforeDurable),
            "rerun-tag" => Ok(Plant::RerunTag),
            "tag-at-end" => Ok(Plant::TagAtEnd),
            _ => Err(format!(
                "unknown fleet bug '{name}' ({})",
                Plant::NAMES.join(", ")
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Plant::AskBeforeDurable => Plant::NAMES[0],
            Plant::RerunTag => Plant::NAMES[1],
            Plant::TagAtEnd => Plant::NAMES[2],
        }
    }
}

/// The phases of a pair's upgrade, as `upgrade.rs` runs them; the new version is accepted
/// at the end of `evaluation`.
pub const PHASES: [&str; 8] = [
    "baseline",
    "b_out_of_service",
    "b_catch_up",
    "switchover",
    "evaluation",
    "a_out_of_service",
    "a_catch_up",
    "features_enabled",
];
const EVALUATION: usize = 4;
/// The fallback's phases: back to the old version, then restored.
pub const FALLBACK: [&str; 2] = ["fallback", "restored"];

/// How long a supervisor waits for its standby to be in sync before it refuses an upgrade.
pub const SYNC_WAIT_MS: u64 = 10_000;

/// Where a busy supervisor is.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// It took the `UPGRADE` and waits for its standby to be in sync (until `give_up`).
    Syncing { give_up: u64 },
    /// The tag is in etcd; phase `phase` of [`PHASES`] runs.
    Upgrading { phase: usize, accepted: bool },
    /// Rolling back: phase `phase` of [`FALLBACK`] runs.
    FallingBack { phase: usize, why: String },
}

#[derive(Clone, Debug)]
pub struct Busy {
    pub tag: String,
    /// The campaign process whose call waits on it (none: the call is gone).
    pub caller: Option<u32>,
    pub stage: Stage,
}

/// One pair's supervisor.
#[derive(Clone, Debug)]
pub struct Sup {
    /// What it knows of the pair; published to etcd when etcd answers.
    pub record: PairRecord,
    pub unpublished: bool,
    pub tags_run: BTreeSet<String>,
    pub busy: Option<Busy>,
    /// Upgrades it started (recorded the tag of and ran).
    pub starts: u32,
    /// The new build fails its evaluation on this pair.
    pub faulty: bool,
    /// After a failover its standby is out of sync until this time.
    pub in_sync_at: u64,
    /// Bumped at every change of stage: a timer set for an older stage is stale.
    pub timer: u64,
    pub failovers: u32,
}

/// The owner key and its lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub process: u32,
    /// When its lease runs out; none while its holder keeps it alive.
    pub expires: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Etcd {
    pub up: bool,
    /// `P/campaign` (none before the first write) and its mod revision.
    pub campaign: Option<CampaignRecord>,
    pub rev: u64,
    pub owner: Option<Owner>,
    /// `P/pair/NAME`, by pair index.
    pub pairs: Vec<PairRecord>,
    pub writes: u64,
}

impl Etcd {
    /// The owner key's holder, if the key is there at `now`.
    pub fn owner_at(&self, now: u64) -> Option<u32> {
        self.owner
            .as_ref()
            .filter(|o| o.expires.is_none_or(|e| now < e))
            .map(|o| o.process)
    }
}

/// A campaign process: the real [`Campaign`] and what the driver loop keeps beside it.
#[derive(Debug)]
pub struct Process {
    pub id: u32,
    core: Campaign,
    /// The mod revision of its last write (or of the record it read).
    rev: u64,
    inbox: Vec<Event>,
    to_ask: BTreeSet<String>,
    last_watch: Option<u64>,
    pub paused: Option<String>,
    pub stalled: bool,
    /// Its keep-alive learned that its lease lapsed.
    lapsed: bool,
}

impl Process {
    pub fn record(&self) -> &CampaignRecord {
        self.core.record()
    }
}

/// An `UPGRADE` call on its way to a supervisor.
#[derive(Clone, Debug)]
pub struct Request {
    pub pair: usize,
    pub tag: String,
    pub from: u32,
}

/// An answer on its way back to a campaign process.
#[derive(Clone, Debug)]
pub struct Answer {
    pub to: u32,
    pub event: Event,
}

/// What a transition asks of whoever drives the world (a timer to set, a message to route).
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A request was sent: deliver or lose it.
    Sent(u64),
    /// An answer was sent: deliver it (after the caller's one-second slow-down for a refusal
    /// or a lost call, as `ask` does).
    Answered { id: u64, slow: bool },
    /// A supervisor's stage changed: call [`World::sup_step`] with this timer at `at`, or
    /// after a phase's duration (none).
    SupTimer {
        pair: usize,
        timer: u64,
        at: Option<u64>,
    },
}

/// What a campaign process does after a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// At once (after an etcd round trip): it wrote the record, or has more to do.
    Soon,
    /// When an answer comes, or after a while to look at watched pairs again.
    Watch,
    /// After a while: etcd is unreachable.
    Paused,
    /// Only when an answer comes.
    Idle,
    /// The process is gone (the campaign ended, or another process holds it).
    Exited,
}

/// How often a process reads the records of the pairs it watches (`drive`'s 500 ms).
pub const WATCH_MS: u64 = 500;

/// The settings of a modelled campaign.
#[derive(Clone, Debug)]
pub struct Config {
    pub names: Vec<String>,
    pub waves: WaveSpec,
    pub parallel: usize,
    pub continue_on_rollback: bool,
    pub faulty: Vec<bool>,
    pub owner_ttl_ms: u64,
    pub plant: Option<Plant>,
}

/// Counts for a report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub processes: u32,
    pub writes: u64,
    pub asks: u64,
    pub refusals: u64,
    pub failovers: u64,
    pub rollbacks_by_failover: u64,
    pub finished_after_failover: u64,
    /// Processes that exited because another held the campaign or its write was not theirs.
    pub processes_stepped_down: u32,
    pub lost_write_answers: u64,
}

pub struct World {
    pub config: Config,
    index: BTreeMap<String, usize>,
    pub sups: Vec<Sup>,
    pub etcd: Etcd,
    /// Live campaign processes (a stalled one and its successor may both be here).
    pub procs: Vec<Process>,
    next_process: u32,
    pub requests: BTreeMap<u64, Request>,
    pub answers: BTreeMap<u64, Answer>,
    next_msg: u64,
    pub now: u64,
    pub effects: Vec<Effect>,
    /// The first invariant broken: what it is, and at which transition.
    pub broken: Option<(&'static str, String)>,
    /// Pairs Pending in the durable record when it first showed a stop.
    stop_pending: Option<BTreeSet<String>>,
    /// Recent lines of what happened (for a report); `trace_all` keeps every line.
    pub trace: Vec<String>,
    pub trace_all: bool,
    /// FNV-1a over every line of the trace: equal on every run of the same choices.
    pub digest: u64,
    pub stats: Stats,
}

impl World {
    /// A fleet on the old version, etcd up, and the first campaign process with its plan
    /// (not yet written: its first write carries the plan with the canary Running).
    pub fn new(config: Config, now: u64) -> World {
        let index = config
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        let sups: Vec<Sup> = config
            .names
            .iter()
            .enumerate()
            .map(|(i, name)| Sup {
                record: PairRecord {
                    name: name.clone(),
                    epoch: 1,
                    version: Some(FROM.into()),
                    phase: "serving".into(),
                    ..Default::default()
                },
                unpublished: false,
                tags_run: BTreeSet::new(),
                busy: None,
                starts: 0,
                faulty: config.faulty.get(i).copied().unwrap_or(false),
                in_sync_at: 0,
                timer: 0,
                failovers: 0,
            })
            .collect();
        let etcd = Etcd {
            up: true,
            campaign: None,
            rev: 0,
            owner: None,
            pairs: sups.iter().map(|s| s.record.clone()).collect(),
            writes: 0,
        };
        let mut w = World {
            config,
            index,
            sups,
            etcd,
            procs: Vec::new(),
            next_process: 0,
            requests: BTreeMap::new(),
            answers: BTreeMap::new(),
            next_msg: 0,
            now,
            effects: Vec::new(),
            broken: None,
            stop_pending: None,
            trace: Vec::new(),
            trace_all: false,
            digest: 0xcbf2_9ce4_8422_2325,
            stats: Stats::default(),
        };
        let started = w.start_process();
        debug_assert!(started.is_some());
        w
    }

    fn planted(&self, plant: Plant) -> bool {
        self.config.plant == Some(plant)
    }

    pub fn note(&mut self, line: impl FnOnce() -> String) {
        if !self.trace_all && self.trace.len() >= 200 {
            self.trace.drain(..100);
        }
        let line = format!("{:>9.3}s {}", self.now as f64 / 1e3, line());
        for b in line.bytes() {
            self.digest = (self.digest ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.trace.push(line);
    }

    fn fail(&mut self, name: &'static str, what: impl FnOnce() -> String) {
        if self.broken.is_none() {
            let what = what();
            self.note(|| format!("BROKEN {name}: {what}"));
            self.broken = Some((name, what));
        }
    }

    pub fn pair_index(&self, name: &str) -> usize {
        self.index[name]
    }

    fn campaign_id(&self) -> Option<&str> {
        self.etcd.campaign.as_ref().map(|r| r.id.as_str())
    }

    /// The durable record's state (none before the first write).
    pub fn state(&self) -> Option<&CampaignState> {
        self.etcd.campaign.as_ref().map(|r| &r.state)
    }

    /// Whether the campaign is over in etcd and no process is left with anything to write.
    pub fn ended(&self) -> bool {
        matches!(
            self.state(),
            Some(CampaignState::Completed | CampaignState::Stopped(_))
        ) && self.procs.iter().all(|p| !p.core.dirty())
    }

    // ---------------------------------------------------------------- etcd and leases

    /// The owner key's lease: kept alive by a live, running holder while etcd answers;
    /// otherwise it runs out `owner_ttl_ms` after the last keep-alive (`keepalive_age_ms`
    /// before now), and the key goes with it.
    fn leases(&mut self, keepalive_age_ms: u64) {
        let now = self.now;
        let Some(o) = self.etcd.owner.clone() else {
            return;
        };
        if o.expires.is_some_and(|e| now >= e) {
            if self.etcd.up {
                self.note(|| format!("etcd: the owner key of process {} expired", o.process));
                self.etcd.owner = None;
            }
            return;
        }
        let holder_alive = self.procs.iter().any(|p| p.id == o.process && !p.stalled);
        let owner = self.etcd.owner.as_mut().expect("there");
        if holder_alive && self.etcd.up {
            owner.expires = None;
        } else if owner.expires.is_none() {
            let ttl = self.config.owner_ttl_ms;
            owner.expires = Some(now + ttl.saturating_sub(keepalive_age_ms.min(ttl / 3)));
        }
    }

    /// The clock moves on (leases run out).
    pub fn advance(&mut self, to: u64) {
        self.now = self.now.max(to);
        self.leases(0);
    }

    /// etcd becomes unreachable (`up` false) or reachable again; `keepalive_age_ms`: how
    /// long before now the owner's last keep-alive was (at most a third of the TTL).
    pub fn set_etcd(&mut self, up: bool, keepalive_age_ms: u64) {
        if self.etcd.up == up {
            return;
        }
        self.etcd.up = up;
        self.note(|| {
            format!(
                "etcd {}",
                if up { "reachable again" } else { "unreachable" }
            )
        });
        self.leases(keepalive_age_ms);
        if up {
            // Supervisors publish what they could not (their next write to etcd).
            for i in 0..self.sups.len() {
                self.publish(i);
            }
        }
    }

    fn publish(&mut self, i: usize) {
        let s = &mut self.sups[i];
        if s.unpublished && self.etcd.up {
            s.unpublished = false;
            self.etcd.pairs[i] = s.record.clone();
        }
    }

    /// The campaign write of process `p`: a transaction comparing the record's revision and
    /// (unless planted away) the owner key. Ok(true): written; Ok(false): the compare failed;
    /// Err: etcd unreachable.
    fn write(&mut self, p: usize, answer_lost: bool) -> Result<bool, ()> {
        if !self.etcd.up {
            return Err(());
        }
        let now = self.now;
        let id = self.procs[p].id;
        if self.procs[p].rev != self.etcd.rev || self.etcd.owner_at(now) != Some(id) {
            return Ok(false);
        }
        if self.procs[p].stalled {
            self.fail("write-without-ownership", || {
                format!("process {id} wrote the campaign while stalled")
            });
        }
        let new = self.procs[p].core.record();
        let (fault, stop) = transition(self.etcd.campaign.as_ref(), new, &self.stop_pending);
        match self.etcd.campaign.as_mut() {
            Some(old) => assign(old, new),
            None => self.etcd.campaign = Some(new.clone()),
        }
        if let Some((name, what)) = fault {
            self.fail(name, || what);
        }
        if stop.is_some() {
            self.stop_pending = stop;
        }
        self.etcd.rev += 1;
        self.etcd.writes += 1;
        self.stats.writes += 1;
        if answer_lost {
            self.stats.lost_write_answers += 1;
            return Err(());
        }
        self.procs[p].rev = self.etcd.rev;
        Ok(true)
    }

    // ---------------------------------------------------------------- campaign processes

    /// A campaign process starts (`tandem campaign --resume`, or the first one): it takes
    /// the owner key if it is free (a dead holder's lease expired) and etcd answers, and
    /// resumes the record it finds. None: it cannot yet (try again later).
    pub fn start_process(&mut self) -> Option<u32> {
        self.leases(0);
        if !self.etcd.up || self.etcd.owner_at(self.now).is_some() {
            return None;
        }
        let id = self.next_process;
        self.next_process += 1;
        self.stats.processes += 1;
        self.etcd.owner = Some(Owner {
            process: id,
            expires: None,
        });
        let core = match &self.etcd.campaign {
            Some(r) if r.state == CampaignState::Running => {
                let mut c = Campaign::resume(r.clone());
                c.took_over(self.now);
                c
            }
            Some(r) => {
                let state = r.state.clone();
                self.note(|| {
                    format!("process {id}: the campaign has ended ({state:?}); nothing to resume")
                });
                self.etcd.owner = None;
                return Some(id);
            }
            None => Campaign::resume(plan(
                &self.config.names,
                &self.config.waves,
                Settings {
                    to: TO.into(),
                    pairs_glob: "*".into(),
                    parallel: self.config.parallel,
                    continue_on_rollback: self.config.continue_on_rollback,
                    upgrade_args: vec![],
                    now_ms: self.now,
                },
            )),
        };
        self.note(|| format!("process {id} owns the campaign"));
        self.procs.push(Process {
            id,
            core,
            rev: self.etcd.rev,
            inbox: Vec::new(),
            to_ask: BTreeSet::new(),
            last_watch: None,
            paused: None,
            stalled: false,
            lapsed: false,
        });
        Some(id)
    }

    fn proc_index(&self, id: u32) -> Option<usize> {
        self.procs.iter().position(|p| p.id == id)
    }

    /// Process `id` dies: its memo is lost, the supervisors' calls from it are cut, its
    /// requests in flight still arrive or are lost; its lease runs out.
    pub fn crash(&mut self, id: u32, keepalive_age_ms: u64) {
        let Some(p) = self.proc_index(id) else {
            return;
        };
        self.procs.remove(p);
        self.note(|| format!("process {id} dies"));
        for s in &mut self.sups {
            if let Some(b) = s.busy.as_mut() {
                if b.caller == Some(id) {
                    b.caller = None;
                }
            }
        }
        self.leases(keepalive_age_ms);
    }

    /// Process `id` stops running (`SIGSTOP`, a long pause) or runs again.
    pub fn stall(&mut self, id: u32, stalled: bool, keepalive_age_ms: u64) {
        if let Some(p) = self.proc_index(id) {
            self.procs[p].stalled = stalled;
            self.note(|| {
                format!(
                    "process {id} {}",
                    if stalled { "stalls" } else { "runs again" }
                )
            });
            self.leases(keepalive_age_ms);
        }
    }

    /// One turn of process `id`'s driver loop (`drive` in `engine/src/campaign.rs`): take
    /// the answers that came, take the owner key again if its lease lapsed, write the record
    /// if it changed (one write a turn), else ask and look. `write_answer_lost`: the write,
    /// if any, lands but its answer does not come back.
    pub fn drive(&mut self, id: u32, write_answer_lost: bool) -> Wake {
        let Some(p) = self.proc_index(id) else {
            return Wake::Exited;
        };
        if self.procs[p].stalled {
            return Wake::Idle;
        }
        let now = self.now;
        for event in std::mem::take(&mut self.procs[p].inbox) {
            self.procs[p].core.observe(event, now);
        }
        let wake = self.turn(p, write_answer_lost);
        // The keep-alive learns whether the lease lapsed (after this turn: a process that
        // wakes from a stall acts once on what it knew).
        if let Some(p) = self.proc_index(id) {
            if self.etcd.up {
                self.procs[p].lapsed = self.etcd.owner_at(self.now) != Some(id);
            }
        }
        if wake == Wake::Exited {
            if let Some(p) = self.proc_index(id) {
                self.procs.remove(p);
            }
            if self.etcd.owner_at(self.now) == Some(id) {
                self.etcd.owner = None; // it revokes its lease as it leaves
            }
        }
        wake
    }

    fn pause(&mut self, p: usize, why: &str) -> Wake {
        if self.procs[p].paused.is_none() {
            let id = self.procs[p].id;
            self.note(|| format!("process {id} PAUSED: {why}"));
        }
        self.procs[p].paused = Some(why.to_string());
        Wake::Paused
    }

    fn turn(&mut self, p: usize, write_answer_lost: bool) -> Wake {
        let id = self.procs[p].id;
        let now = self.now;
        if self.procs[p].lapsed {
            // Owner::retake.
            if !self.etcd.up {
                return self.pause(p, "etcd unreachable; the lease lapsed");
            }
            match self.etcd.owner_at(now) {
                Some(h) if h != id => {
                    self.note(|| format!("process {id} exits: process {h} took the campaign over"));
                    self.stats.processes_stepped_down += 1;
                    return Wake::Exited;
                }
                _ => {
                    self.etcd.owner = Some(Owner {
                        process: id,
                        expires: None,
                    });
                    self.procs[p].lapsed = false;
                    self.note(|| format!("process {id} took the owner key again"));
                }
            }
        }
        let next = self.procs[p].core.next(now);
        if next.persist {
            match self.write(p, write_answer_lost) {
                Ok(true) => {
                    self.procs[p].core.persisted();
                    if self.procs[p].paused.take().is_some() {
                        self.note(|| format!("process {id}: etcd reachable again, goes on"));
                    }
                    return Wake::Soon;
                }
                Ok(false) => {
                    // write_record's failed compare: whose write is there?
                    match self.etcd.owner_at(now) {
                        Some(h) if h != id => {
                            self.note(|| {
                                format!("process {id} exits: process {h} took the campaign over")
                            });
                            self.stats.processes_stepped_down += 1;
                            return Wake::Exited;
                        }
                        None => return self.pause(p, "the hold on the campaign lapsed"),
                        Some(_) => {}
                    }
                    if self.etcd.campaign.as_ref() == Some(self.procs[p].core.record()) {
                        // Its own write, whose answer was lost.
                        self.procs[p].rev = self.etcd.rev;
                        self.procs[p].core.persisted();
                        self.check_durable(p);
                        return Wake::Soon;
                    }
                    self.note(|| {
                        format!(
                            "process {id} exits: the campaign record was changed by someone else"
                        )
                    });
                    self.stats.processes_stepped_down += 1;
                    return Wake::Exited;
                }
                Err(()) => {
                    if self.planted(Plant::AskBeforeDurable) {
                        self.procs[p].core.persisted();
                        return Wake::Soon;
                    }
                    return self.pause(p, "etcd unreachable");
                }
            }
        }
        if next.finished {
            let state = self.procs[p].core.record().state.clone();
            self.note(|| format!("process {id}: the campaign is over: {state:?}"));
            return Wake::Exited;
        }
        self.procs[p].to_ask.extend(next.upgrade);
        let watch_due = self.procs[p].last_watch.is_none_or(|t| now >= t + WATCH_MS);
        let mut looks = next.look;
        if watch_due && !next.watch.is_empty() {
            looks.extend(next.watch.iter().cloned());
            self.procs[p].last_watch = Some(now);
        }
        if !self.etcd.up {
            if self.procs[p].to_ask.is_empty() && looks.is_empty() {
                return if next.watch.is_empty() {
                    Wake::Idle
                } else {
                    Wake::Watch
                };
            }
            return self.pause(p, "etcd unreachable");
        }
        if self.procs[p].paused.take().is_some() {
            self.note(|| format!("process {id}: etcd reachable again, goes on"));
        }
        for pair in std::mem::take(&mut self.procs[p].to_ask) {
            self.ask(p, pair);
        }
        let looked = !looks.is_empty();
        for pair in looks {
            let record = Some(self.etcd.pairs[self.index[&pair]].clone());
            self.procs[p]
                .core
                .observe(Event::Found { pair, record }, now);
        }
        // What it found may call for a write or an ask at once.
        if looked || self.procs[p].core.dirty() {
            Wake::Soon
        } else if next.watch.is_empty() {
            Wake::Idle
        } else {
            Wake::Watch
        }
    }

    /// What the process believes durable is: checked after each write it takes as done.
    fn check_durable(&mut self, p: usize) {
        if self.etcd.campaign.as_ref() != Some(self.procs[p].core.record()) {
            let id = self.procs[p].id;
            self.fail("not-durable", || {
                format!("process {id} took the record as written, but etcd holds another")
            });
        }
    }

    fn ask(&mut self, p: usize, pair: String) {
        let from = self.procs[p].id;
        let i = self.index[&pair];
        let tag = tag(&self.procs[p].core.record().id, &pair);
        // Asked only once the pair's Running is durable (it is Running in etcd, or already
        // final: a process that wakes from a stall may ask a pair its successor finished,
        // and the pair's supervisor refuses the tag it ran), after every earlier wave ended
        // there.
        let durable = self.etcd.campaign.as_ref().map(|r| {
            let wave = r.pairs[&pair].wave;
            let earlier_final = r.waves[..wave]
                .iter()
                .flatten()
                .all(|q| r.pairs[q].outcome.is_final());
            (r.pairs[&pair].outcome != Outcome::Pending, earlier_final)
        });
        match durable {
            Some((true, true)) => {}
            Some((running, earlier)) => self.fail("asked-before-durable", || {
                format!("process {from} asked {pair}: past Pending in etcd {running}, earlier waves final in etcd {earlier}")
            }),
            None => self.fail("asked-before-durable", || {
                format!("process {from} asked {pair} before the campaign was in etcd")
            }),
        }
        let id = self.next_msg;
        self.next_msg += 1;
        self.stats.asks += 1;
        self.note(|| format!("process {from} asks {pair} (request {id})"));
        self.requests.insert(id, Request { pair: i, tag, from });
        self.effects.push(Effect::Sent(id));
    }

    fn answer(&mut self, to: u32, event: Event) {
        let slow = !matches!(event, Event::Ended { .. });
        let id = self.next_msg;
        self.next_msg += 1;
        self.answers.insert(id, Answer { to, event });
        self.effects.push(Effect::Answered { id, slow });
    }

    /// An answer reaches its process (if it still lives; a new process never gets it).
    pub fn deliver_answer(&mut self, id: u64) {
        let Some(a) = self.answers.remove(&id) else {
            return;
        };
        if let Some(p) = self.proc_index(a.to) {
            self.procs[p].inbox.push(a.event);
        }
    }

    // ---------------------------------------------------------------- the network and pairs

    /// A request is lost (the connection could not be made): its caller hears of it.
    pub fn lose_request(&mut self, id: u64) {
        let Some(r) = self.requests.remove(&id) else {
            return;
        };
        let pair = self.config.names[r.pair].clone();
        self.note(|| format!("request {id} to {pair} lost"));
        self.answer(
            r.from,
            Event::NoAnswer {
                pair,
                message: "connection refused".into(),
            },
        );
    }

    fn set_stage(&mut self, i: usize, stage: Option<Stage>, at: Option<u64>) {
        let s = &mut self.sups[i];
        s.timer += 1;
        let timer = s.timer;
        match stage {
            Some(stage) => {
                s.busy.as_mut().expect("busy").stage = stage;
                self.effects.push(Effect::SupTimer { pair: i, timer, at });
            }
            None => s.busy = None,
        }
    }

    /// A request reaches its supervisor, which takes it (`UPGRADE` in `supervisor.rs`, then
    /// `upgrade`): busy already, a tag it ran, a pair on the version: refused.
    pub fn deliver_request(&mut self, id: u64) {
        let Some(r) = self.requests.remove(&id) else {
            return;
        };
        let i = r.pair;
        let pair = self.config.names[i].clone();
        let caller = self.proc_index(r.from).map(|_| r.from);
        let s = &self.sups[i];
        let refusal = if s.busy.is_some() {
            Some("BUSY an upgrade is in progress; try again when it ends".to_string())
        } else if s.tags_run.contains(&r.tag) && !self.planted(Plant::RerunTag) {
            Some(format!(
                "ALREADY the upgrade tagged {} ran on this pair already",
                r.tag
            ))
        } else if s.record.version.as_deref() == Some(TO) {
            Some(format!("ERR the pair already runs {TO}"))
        } else {
            None
        };
        if let Some(message) = refusal {
            self.note(|| format!("{pair} refuses request {id}: {message}"));
            self.stats.refusals += 1;
            if let Some(c) = caller {
                self.answer(c, Event::Refused { pair, message });
            }
            return;
        }
        self.note(|| format!("{pair} takes request {id} ({})", r.tag));
        self.sups[i].busy = Some(Busy {
            tag: r.tag,
            caller,
            stage: Stage::Syncing { give_up: 0 },
        });
        let give_up = self.now + SYNC_WAIT_MS;
        let at = self.sups[i].in_sync_at.max(self.now).min(give_up);
        self.set_stage(i, Some(Stage::Syncing { give_up }), Some(at));
    }

    /// A supervisor's timer: the standby in sync (or not) for a waiting upgrade, or a phase
    /// of the upgrade or of its fallback ending. `timer`: the one it was set with (a stale
    /// one does nothing); none: whatever the supervisor is at.
    pub fn sup_step(&mut self, i: usize, timer: Option<u64>) {
        if timer.is_some_and(|t| t != self.sups[i].timer) {
            return;
        }
        let Some(busy) = self.sups[i].busy.clone() else {
            return;
        };
        let pair = self.config.names[i].clone();
        let now = self.now;
        match busy.stage {
            Stage::Syncing { give_up } => {
                if self.sups[i].in_sync_at > now {
                    if now < give_up {
                        // Out of sync again since (another failover): wait on.
                        let at = self.sups[i].in_sync_at.min(give_up);
                        self.set_stage(i, Some(Stage::Syncing { give_up }), Some(at));
                        return;
                    }
                    self.refuse_taken(
                        i,
                        "ERR the standby is not in sync: an upgrade needs a healthy pair".into(),
                    );
                    return;
                }
                // The tag in etcd before anything of the upgrade happens.
                if !self.etcd.up {
                    self.refuse_taken(
                        i,
                        "NOWITNESS etcd is unreachable (the upgrade was not started)".into(),
                    );
                    return;
                }
                let s = &mut self.sups[i];
                s.tags_run.insert(busy.tag.clone());
                s.starts += 1;
                let planted = self.config.plant == Some(Plant::TagAtEnd);
                s.record.upgrade = Some(UpgradeRecord {
                    to: TO.into(),
                    tag: (!planted).then(|| busy.tag.clone()),
                    phase: Some(PHASES[0].into()),
                    started_ms: now,
                    ..Default::default()
                });
                s.record.phase = PHASES[0].into();
                s.unpublished = true;
                self.publish(i);
                self.note(|| format!("{pair} starts its upgrade ({})", busy.tag));
                self.check_start(i);
                self.set_stage(
                    i,
                    Some(Stage::Upgrading {
                        phase: 0,
                        accepted: false,
                    }),
                    None,
                );
            }
            Stage::Upgrading { phase, accepted } => {
                let accepted = accepted || phase == EVALUATION && !self.sups[i].faulty;
                if phase == EVALUATION && !accepted {
                    self.fall_back(i, "the new version was not acceptable (evaluation)".into());
                } else if phase + 1 == PHASES.len() {
                    self.end_upgrade(i, "completed", None);
                } else {
                    self.sup_phase(i, PHASES[phase + 1]);
                    self.set_stage(
                        i,
                        Some(Stage::Upgrading {
                            phase: phase + 1,
                            accepted,
                        }),
                        None,
                    );
                }
            }
            Stage::FallingBack { phase, why } => {
                if phase + 1 == FALLBACK.len() {
                    self.end_upgrade(i, "rolled_back", Some(why));
                } else {
                    self.sup_phase(i, FALLBACK[phase + 1]);
                    self.set_stage(
                        i,
                        Some(Stage::FallingBack {
                            phase: phase + 1,
                            why,
                        }),
                        None,
                    );
                }
            }
        }
    }

    fn sup_phase(&mut self, i: usize, phase: &str) {
        let s = &mut self.sups[i];
        s.record.phase = phase.into();
        if let Some(u) = s.record.upgrade.as_mut() {
            u.phase = Some(phase.into());
        }
        s.unpublished = true;
        self.publish(i);
    }

    fn refuse_taken(&mut self, i: usize, message: String) {
        let busy = self.sups[i].busy.clone().expect("busy");
        let pair = self.config.names[i].clone();
        self.note(|| format!("{pair} refuses {}: {message}", busy.tag));
        self.stats.refusals += 1;
        self.set_stage(i, None, None);
        if let Some(c) = busy.caller {
            self.answer(c, Event::Refused { pair, message });
        }
    }

    fn fall_back(&mut self, i: usize, why: String) {
        let pair = self.config.names[i].clone();
        self.note(|| format!("{pair} falls back: {why}"));
        self.sup_phase(i, FALLBACK[0]);
        self.set_stage(i, Some(Stage::FallingBack { phase: 0, why }), None);
    }

    fn end_upgrade(&mut self, i: usize, outcome: &str, why: Option<String>) {
        let busy = self.sups[i].busy.clone().expect("busy");
        let pair = self.config.names[i].clone();
        let now = self.now;
        let s = &mut self.sups[i];
        s.record.version = Some(if outcome == "completed" { TO } else { FROM }.into());
        s.record.phase = "serving".into();
        let u = s.record.upgrade.as_mut().expect("recorded at the start");
        u.phase = None;
        u.tag = Some(busy.tag.clone());
        u.outcome = Some(outcome.into());
        u.message = why.clone();
        u.ended_ms = Some(now);
        s.unpublished = true;
        self.publish(i);
        self.note(|| {
            format!(
                "{pair} upgrade {outcome}{}",
                why.as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            )
        });
        self.set_stage(i, None, None);
        if let Some(c) = busy.caller {
            self.answer(
                c,
                Event::Ended {
                    pair,
                    outcome: outcome_of(outcome),
                    message: why,
                },
            );
        }
    }

    /// The pair's active engine dies; the standby takes over and the pair is out of sync for
    /// `resync_ms`. During an upgrade: before the new version was accepted the upgrade rolls
    /// back; after it, the upgrade is finished from the pair's state (`settle` and
    /// `converge` in `upgrade.rs`): it ends completed.
    pub fn active_dies(&mut self, i: usize, resync_ms: u64) {
        let pair = self.config.names[i].clone();
        self.note(|| format!("{pair}: the active dies, the standby takes over"));
        self.stats.failovers += 1;
        let s = &mut self.sups[i];
        s.failovers += 1;
        s.record.epoch += 1;
        s.in_sync_at = self.now + resync_ms;
        s.unpublished = true;
        self.publish(i);
        let stage = self.sups[i].busy.as_ref().map(|b| b.stage.clone());
        match stage {
            Some(Stage::Upgrading {
                accepted: false, ..
            }) => {
                self.stats.rollbacks_by_failover += 1;
                self.fall_back(
                    i,
                    "the active died before the new version was accepted".into(),
                );
            }
            Some(Stage::Upgrading { accepted: true, .. }) => {
                self.stats.finished_after_failover += 1;
                self.note(|| format!("{pair}: {TO} was accepted already: finishing the upgrade"));
                self.sup_phase(i, PHASES[6]);
                self.set_stage(
                    i,
                    Some(Stage::Upgrading {
                        phase: 6,
                        accepted: true,
                    }),
                    None,
                );
            }
            // Waiting for sync (it waits longer now), falling back (goes on), or idle.
            _ => {}
        }
    }

    /// The connection of the call waiting on pair `i`'s upgrade drops; the upgrade goes on.
    pub fn break_call(&mut self, i: usize) {
        let Some(b) = self.sups[i].busy.as_mut() else {
            return;
        };
        let Some(c) = b.caller.take() else {
            return;
        };
        let pair = self.config.names[i].clone();
        self.note(|| format!("{pair}: the call from process {c} loses its connection"));
        self.answer(
            c,
            Event::Cut {
                pair,
                message: "connection reset".into(),
            },
        );
    }

    // ---------------------------------------------------------------- invariants

    fn check_start(&mut self, i: usize) {
        let pair = self.config.names[i].clone();
        let starts = self.sups[i].starts;
        if starts > 1 {
            self.fail("upgraded-twice", || {
                format!("{pair} started {starts} upgrades")
            });
        }
        let running = self
            .sups
            .iter()
            .filter(|s| {
                matches!(
                    s.busy.as_ref().map(|b| &b.stage),
                    Some(Stage::Upgrading { .. } | Stage::FallingBack { .. })
                )
            })
            .count();
        let parallel = self.config.parallel;
        if running > parallel {
            self.fail("too-many-running", || {
                format!("{running} upgrades run at once (parallel {parallel}) as {pair} starts")
            });
        }
        if self
            .stop_pending
            .as_ref()
            .is_some_and(|s| s.contains(&pair))
        {
            self.fail("started-after-stop", || {
                format!("{pair} started its upgrade after the campaign stopped")
            });
        }
        let ours = self
            .campaign_id()
            .map(|id| tag(id, &pair))
            .zip(self.sups[i].busy.as_ref().map(|b| b.tag.clone()));
        if let Some((ours, theirs)) = ours {
            if ours != theirs {
                self.fail("foreign-tag", || {
                    format!("{pair} started {theirs}, not {ours}")
                });
            }
        }
    }

    /// Once everything settled: the record says what happened to each pair, and the
    /// campaign ended as it should.
    pub fn check_end(&mut self) {
        let Some(record) = self.etcd.campaign.clone() else {
            self.fail("did-not-end", || "no campaign record in etcd".into());
            return;
        };
        if record.state == CampaignState::Running {
            let (pending, running) = (
                record.count(Outcome::Pending),
                record.count(Outcome::Running),
            );
            self.fail("did-not-end", || {
                format!("still Running in etcd ({pending} pending, {running} running)")
            });
        }
        for (name, p) in &record.pairs {
            let i = self.index[name];
            let s = &self.sups[i];
            let upgraded = s.record.version.as_deref() == Some(TO);
            let (starts, busy) = (s.starts, s.busy.is_some());
            let ok = !busy
                && match p.outcome {
                    Outcome::Upgraded => upgraded && starts == 1,
                    Outcome::RolledBack => !upgraded && starts == 1,
                    Outcome::Failed => !upgraded && starts == 0,
                    Outcome::Pending => {
                        !upgraded && starts == 0 && record.state != CampaignState::Completed
                    }
                    Outcome::Running => false,
                };
            if !ok {
                let o = p.outcome;
                self.fail("record-disagrees", || {
                    format!("{name} is {o:?} in the record, but the pair: on {TO} {upgraded}, upgrades started {starts}, busy {busy}")
                });
            }
        }
        match &record.state {
            CampaignState::Completed => {
                let ok = record.pairs.values().all(|p| {
                    p.outcome == Outcome::Upgraded
                        || record.continue_on_rollback && p.outcome.is_final()
                });
                if !ok {
                    self.fail("skipped", || "Completed with a pair not upgraded".into());
                }
            }
            CampaignState::Stopped(_) => {
                if stop_reason(&record).is_none() {
                    self.fail("stopped-without-reason", || {
                        "Stopped with no pair rolled back or failed".into()
                    });
                }
            }
            CampaignState::Running => {} // said first
        }
    }

    /// Lets every fault go and runs everything in order until the campaign ended (for the
    /// proptest; the simulator does the same on its clock). False if it did not end.
    pub fn settle(&mut self) -> bool {
        self.set_etcd(true, 0);
        for p in 0..self.procs.len() {
            self.procs[p].stalled = false;
        }
        for _ in 0..100_000 {
            if self.ended() {
                return true;
            }
            self.effects.clear();
            self.now += 1;
            self.leases(0);
            if let Some(&id) = self.requests.keys().next() {
                self.deliver_request(id);
                continue;
            }
            if let Some(i) = self.sups.iter().position(|s| s.busy.is_some()) {
                self.now = self.now.max(self.sups[i].in_sync_at);
                self.sup_step(i, None);
                continue;
            }
            if let Some(&id) = self.answers.keys().next() {
                self.deliver_answer(id);
                continue;
            }
            if self.procs.is_empty() {
                // A new process once the dead one's lease ran out.
                self.now += self.config.owner_ttl_ms;
                self.leases(0);
                self.start_process();
                continue;
            }
            let ids: Vec<u32> = self.procs.iter().map(|p| p.id).collect();
            for id in ids {
                self.now += WATCH_MS;
                self.drive(id, false);
            }
        }
        false
    }
}

/// `dst = src.clone()` for two records of one campaign, without allocating for the pairs
/// that did not change.
fn assign(dst: &mut CampaignRecord, src: &CampaignRecord) {
    if dst.id != src.id || dst.pairs.len() != src.pairs.len() {
        *dst = src.clone();
        return;
    }
    for ((dn, dp), (sn, sp)) in dst.pairs.iter_mut().zip(&src.pairs) {
        debug_assert_eq!(dn, sn);
        if dp != sp {
            dp.clone_from(sp);
        }
    }
    dst.state.clone_from(&src.state);
    dst.updated_ms = src.updated_ms;
    dst.runs = src.runs;
}

/// What a durable record may become: the first rule `new` breaks, and the pairs left
/// Pending when the record first shows a stop.
fn transition(
    old: Option<&CampaignRecord>,
    new: &CampaignRecord,
    stop_pending: &Option<BTreeSet<String>>,
) -> (Option<(&'static str, String)>, Option<BTreeSet<String>>) {
    let fault = |name: &'static str, what: String| (Some((name, what)), None);
    if let Some(old) = old {
        if old.id != new.id {
            return fault(
                "campaign-replaced",
                format!("campaign {} overwritten by {}", old.id, new.id),
            );
        }
        if old.state != CampaignState::Running && new.state != old.state {
            return fault(
                "state-changed-after-end",
                format!("{:?} became {:?}", old.state, new.state),
            );
        }
        for ((name, o), (_, n)) in old.pairs.iter().zip(&new.pairs) {
            if o.outcome.is_final() && n.outcome != o.outcome
                || o.outcome == Outcome::Running && n.outcome == Outcome::Pending
            {
                return fault(
                    "outcome-went-back",
                    format!("{name}: {:?} became {:?}", o.outcome, n.outcome),
                );
            }
        }
    }
    let running = new.count(Outcome::Running);
    if running > new.parallel {
        return fault(
            "too-many-running",
            format!(
                "the record has {running} pairs Running, parallel {}",
                new.parallel
            ),
        );
    }
    // Waves in order: no pair of a wave leaves Pending while one of an earlier wave is not
    // final (each pair knows its wave).
    let unfinished = new
        .pairs
        .iter()
        .filter(|(_, p)| !p.outcome.is_final())
        .min_by_key(|(_, p)| p.wave);
    if let Some((u, up)) = unfinished {
        if let Some((p, pp)) = new
            .pairs
            .iter()
            .find(|(_, p)| p.wave > up.wave && p.outcome != Outcome::Pending)
        {
            return fault(
                "waves-out-of-order",
                format!(
                    "{p} of wave {} left Pending while {u} of wave {} is not final",
                    pp.wave, up.wave
                ),
            );
        }
    }
    if let Some(pending) = stop_pending {
        if let Some(p) = pending
            .iter()
            .find(|p| new.pairs[*p].outcome != Outcome::Pending)
        {
            return fault(
                "started-after-stop",
                format!(
                    "{p} became {:?} after the campaign stopped",
                    new.pairs[p].outcome
                ),
            );
        }
        return (None, None);
    }
    if !new.continue_on_rollback && stop_reason(new).is_some() {
        let pending = new
            .pairs
            .iter()
            .filter(|(_, p)| p.outcome == Outcome::Pending)
            .map(|(n, _)| n.clone())
            .collect();
        return (None, Some(pending));
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(n: usize, plant: Option<Plant>) -> World {
        World::new(
            Config {
                names: (1..=n).map(|i| format!("p{i:02}")).collect(),
                waves: WaveSpec::Doubling,
                parallel: 2,
                continue_on_rollback: false,
                faulty: vec![],
                owner_ttl_ms: 3000,
                plant,
            },
            1000,
        )
    }

    #[test]
    fn without_faults_a_campaign_completes() {
        let mut w = world(7, None);
        assert!(w.settle());
        w.check_end();
        assert_eq!(w.broken, None);
        assert_eq!(w.state(), Some(&CampaignState::Completed));
        assert!(w.sups.iter().all(|s| s.starts == 1));
    }

    /// The canary is asked and starts; the campaign process dies; its successor finds the
    /// canary Running and looks at its record.
    fn canary_running_then_crash(plant: Option<Plant>) -> World {
        let mut w = world(3, plant);
        assert_eq!(w.drive(0, false), Wake::Soon); // the plan, the canary Running
        w.drive(0, false); // the ask
        let id = *w.requests.keys().next().expect("asked");
        w.deliver_request(id);
        w.sup_step(0, None); // in sync: the tag recorded, the upgrade starts
        assert_eq!(w.sups[0].starts, 1);
        w.crash(0, 0);
        w
    }

    #[test]
    fn a_successor_follows_the_upgrade_it_finds_and_does_not_ask_again() {
        let mut w = canary_running_then_crash(None);
        assert!(w.settle());
        w.check_end();
        assert_eq!(w.broken, None);
        assert_eq!(w.etcd.campaign.as_ref().unwrap().runs, 2);
        assert_eq!(w.state(), Some(&CampaignState::Completed));
    }

    #[test]
    fn a_tag_recorded_only_at_the_end_is_caught() {
        let mut w = canary_running_then_crash(Some(Plant::TagAtEnd));
        // The successor looks while the canary's upgrade runs, finds no tag of its own, and
        // asks again; the first ask is refused BUSY (not counted), the next ones never
        // reach the supervisor (counted): the canary counts as failed while it upgrades.
        w.advance(w.now + 3000);
        let id = w.start_process().expect("the lease expired");
        let mut delivered = false;
        for _ in 0..20 {
            w.drive(id, false);
            let ids: Vec<u64> = w.requests.keys().copied().collect();
            for r in ids {
                if delivered {
                    w.lose_request(r);
                } else {
                    w.deliver_request(r);
                    delivered = true;
                }
            }
            let ids: Vec<u64> = w.answers.keys().copied().collect();
            ids.into_iter().for_each(|a| w.deliver_answer(a));
        }
        w.settle();
        w.check_end();
        let (name, what) = w.broken.expect("caught");
        assert_eq!(name, "record-disagrees", "{what}");
    }
}
