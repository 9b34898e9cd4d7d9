//! A deterministic simulation of a pair, replayable by seed (`tandem sim`).
//!
//! Two real [`Engine`]s (the reference application, both versions) run in one thread on a
//! simulated clock: their client commands and control commands go through the same
//! `server::dispatch` as on a socket, their replication link through the same
//! `replication::{attach, active_turn, standby_turn}` and sans-IO `Sender`/`Receiver`, their
//! leases through the same `grant_lease`. What is simulated is everything around them:
//!
//! - the network ([`net`]): every byte stream is a FIFO with a latency drawn per message;
//!   links can be cut, slowed, and partitioned one way or both ways (bytes wait until the
//!   partition heals, as TCP would retransmit them, and the peers' timeouts decide);
//! - the supervisor ([`pilot`]): a model of `supervisor.rs`, one call at a time, with its
//!   leases, failure detector, promotion, fencing, switchover, restarts and the upgrade of
//!   figure 6 (to 2.0 and back on a rejected evaluation);
//! - the clients: pipelined SET/GET rounds on a few keys, following `-NOTACTIVE`;
//! - the nemesis: crashes, pauses (`SIGSTOP`), cuts, partitions, slow links and switchovers,
//!   all drawn from one seed, during the first part of the run; then everything heals.
//!
//! After every step the [`history`] checks the invariants: no acknowledged update lost (a
//! register check per key), no write acknowledged that a newer active lacks, no epoch acknowledged that nobody granted, epochs never go back, equal
//! digests whenever the standby has applied everything, and, at the end, that the pair
//! serves again (or says why not) and that an upgrade ended `completed` or `rolled_back`.
//!
//! The simulator has no journal (its writer is a thread and a file): an active lost while
//! alone makes the pair unavailable, as a pair without `--journal` does.

pub mod cli;
pub mod fleet;
mod history;
mod net;
mod pilot;

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use replicator::{BatchConfig, Hello, LinkConfig, Receiver, SenderEvent};

use crate::conn::Conn;
use crate::node::{Config, Engine, Role, Shared};
use crate::replication;
use crate::server::{self, Outcome, Port};
use crate::sessions::{AppVersion, Sessions};

pub use history::Violation;
use net::{Latency, Pipe};
use pilot::Pilot;

/// A known bug, put back for the simulator to find.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The supervisor promotes a standby that is not in sync.
    PromoteStale,
    /// The active releases a reply before the standby acknowledged it.
    AckBeforeStandby,
}

impl Plant {
    pub fn parse(name: &str) -> Result<Plant, String> {
        match name {
            "promote-stale" => Ok(Plant::PromoteStale),
            "ack-before-standby" => Ok(Plant::AckBeforeStandby),
            _ => Err(format!(
                "unknown bug '{name}' (promote-stale or ack-before-standby)"
            )),
        }
    }
}

thread_local! {
    static PLANTED: Cell<Option<Plant>> = const { Cell::new(None) };
    static CLOCK_NS: Cell<u64> = const { Cell::new(0) };
}

/// Is `plant` switched on in this thread's simulation?
pub fn planted(plant: Plant) -> bool {
    PLANTED.with(|p| p.get() == Some(plant))
}

/// The simulated `CLOCK_MONOTONIC` the engines stamp and read leases with.
fn clock_ns() -> u64 {
    CLOCK_NS.with(Cell::get)
}

/// Where the simulated clock starts: leases are stamped with it, and zero means "none".
const CLOCK_ORIGIN_NS: u64 = 1_000_000_000_000;

/// What one seed does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub plant: Option<Plant>,
    /// How long the nemesis acts.
    pub faults: Duration,
    /// How long the run goes on after the last fault, for the pair to serve again.
    pub recovery: Duration,
    /// The nemesis also crashes the supervisor (in half the seeds). Its times come from a
    /// stream of their own, so a seed's other faults are the same with or without them.
    pub supervisor_crashes: bool,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            plant: None,
            faults: Duration::from_secs(5),
            recovery: Duration::from_secs(4),
            supervisor_crashes: true,
        }
    }
}

/// How one seed ended.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    /// A digest of the trace and the final states: equal on every run of the same seed.
    pub digest: u64,
    pub failure: Option<Violation>,
    /// The last lines of the trace (all of it with `full_trace`).
    pub trace: Vec<String>,
    pub acked_writes: u64,
    pub reads_checked: u64,
    pub upgrade: Option<String>,
    pub unavailable: Option<String>,
    pub simulated: Duration,
}

/// The one source of choice in a run: the load generator's SplitMix64, drawn from by modulo
/// (kept so that every recorded seed replays the run it was recorded with).
pub struct Rng(loadgen::workload::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(loadgen::workload::Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

pub const MS: u64 = 1_000_000;
const KEYS: u64 = 5;
const CLIENTS: usize = 3;
const NAMES: [&str; 2] = ["a", "b"];

/// One engine slot: the process (if it runs), paused or not, and its version.
pub struct Node {
    pub engine: Option<Shared>,
    /// Incremented by every crash and restart: connections to an older one are dead.
    pub incarnation: u64,
    pub paused: bool,
    pub version: AppVersion,
    /// The standby's side of the follow loop: its link, or when it may dial again.
    follow_link: Option<usize>,
    retry_at: u64,
    /// Highest epoch seen from this incarnation (epochs never go back).
    epoch_seen: u64,
}

/// A replication link between the two engines, both ends in this thread.
struct SimLink {
    active: usize,
    standby: usize,
    incarnations: (u64, u64),
    /// The active's replication address, as the standby dialled it.
    addr: String,
    /// Before the hello is accepted the active's end is a bare sender.
    handshake: Option<replicator::Sender>,
    handshake_until: u64,
    link_id: u64,
    receiver: Receiver,
    down: Pipe,
    up: Pipe,
    active_deadline: Option<u64>,
    standby_deadline: Option<u64>,
    active_done: bool,
    standby_done: bool,
}

/// A client's request round in flight or at the engine.
struct Round {
    client: usize,
    engine: usize,
    incarnation: u64,
    arrive_at: u64,
    ops: Vec<Op>,
    next: usize,
    replies: Vec<BytesMut>,
    /// The sequence each command saw (a write's own).
    seqs: Vec<u64>,
    wait: Option<(u64, u64)>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Set { key: u64, write: usize },
    Get { key: u64, read_at: u64 },
}

struct Client {
    target: usize,
    busy: bool,
    next_at: u64,
}

/// A reply on its way to a client.
struct Delivery {
    at: u64,
    client: usize,
    ops: Vec<Op>,
    /// None: the connection closed before the replies went.
    replies: Option<Vec<BytesMut>>,
    engine: usize,
}

pub struct World {
    pub now: u64,
    base: Instant,
    pub rng: Rng,
    pub nodes: [Node; 2],
    links: Vec<Option<SimLink>>,
    rounds: Vec<Round>,
    deliveries: Vec<Delivery>,
    clients: Vec<Client>,
    pub latency: Latency,
    pub history: history::History,
    trace: Vec<String>,
    trace_hash: xxhash_rust::xxh3::Xxh3,
    pub failure: Option<Violation>,
    config: LinkConfig,
    calls: Vec<Call>,
    next_call: u64,
    answers: Vec<(u64, u64, Result<String, String>)>,
    /// When each call in flight times out, by id.
    answers_due: Vec<(u64, u64)>,
    roles: [(Role, u64); 2],
}

impl World {
    fn new(seed: u64) -> World {
        let config = LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-sim-secret"));
        World {
            now: 0,
            base: Instant::now(),
            rng: Rng::new(seed),
            nodes: std::array::from_fn(|_| Node {
                engine: None,
                incarnation: 0,
                paused: false,
                version: AppVersion::V1_0,
                follow_link: None,
                retry_at: 0,
                epoch_seen: 0,
            }),
            links: Vec::new(),
            rounds: Vec::new(),
            deliveries: Vec::new(),
            clients: (0..CLIENTS)
                .map(|c| Client {
                    target: 0,
                    busy: false,
                    next_at: (c as u64 + 1) * 3 * MS,
                })
                .collect(),
            latency: Latency::default(),
            history: history::History::default(),
            trace: Vec::new(),
            trace_hash: xxhash_rust::xxh3::Xxh3::new(),
            failure: None,
            config,
            calls: Vec::new(),
            next_call: 0,
            answers: Vec::new(),
            answers_due: Vec::new(),
            roles: [(Role::OutOfService, 0); 2],
        }
    }

    pub fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    pub fn note(&mut self, line: String) {
        let line = format!("{:>9.3} ms  {line}", self.now as f64 / 1e6);
        self.trace_hash.update(line.as_bytes());
        self.trace_hash.update(b"\n");
        self.trace.push(line);
    }

    fn fail(&mut self, v: Violation) {
        if self.failure.is_none() {
            self.note(format!("INVARIANT BROKEN: {v}"));
            self.failure = Some(v);
        }
    }

    pub fn engine(&self, i: usize) -> Option<&Shared> {
        self.nodes[i].engine.as_ref()
    }

    /// Runs engine `i` now? Not if it is down or paused.
    pub fn runs(&self, i: usize) -> bool {
        self.nodes[i].engine.is_some() && !self.nodes[i].paused
    }

    /// Starts a new process in slot `i`, empty and out of service, running `version`.
    pub fn start(&mut self, i: usize, version: AppVersion) {
        let name = NAMES[i];
        let config = Config {
            name: name.into(),
            client_addr: format!("{name}.client"),
            replication_addr: format!("{name}.replication"),
            control_addr: format!("{name}.control"),
            supervised: true,
            batch: BatchConfig::default(),
            link: self.config.clone(),
            io: Default::default(),
            // Small chunks: a catch-up takes many turns, interleaved with everything else.
            snapshot_chunk_bytes: 512,
            limits: Default::default(),
            journal_dir: None,
        };
        let mut engine = Engine::new(config, Box::new(Sessions::new(version, None)));
        engine.clock = clock_ns;
        let node = &mut self.nodes[i];
        node.engine = Some(Rc::new(RefCell::new(engine)));
        node.incarnation += 1;
        node.paused = false;
        node.version = version;
        node.follow_link = None;
        node.retry_at = 0;
        node.epoch_seen = 0;
        self.note(format!("start {name} ({})", version.as_str()));
    }

    /// The process in slot `i` dies: its memory with it, its sockets closed by the kernel.
    pub fn crash(&mut self, i: usize) {
        if self.nodes[i].engine.take().is_none() {
            return;
        }
        self.nodes[i].incarnation += 1;
        self.nodes[i].paused = false;
        self.nodes[i].follow_link = None;
        self.note(format!("crash {}", NAMES[i]));
        for slot in &mut self.links {
            if let Some(link) = slot.as_mut() {
                if link.active == i {
                    link.active_done = true;
                    link.down.drop_pending();
                    link.down.close(self.now);
                }
                if link.standby == i {
                    link.standby_done = true;
                    link.up.drop_pending();
                    link.up.close(self.now);
                }
            }
        }
    }

    /// Sends a control command to engine `i`; its answer comes back as [`Answer`] with `id`.
    pub fn call(&mut self, i: usize, args: Vec<String>, timeout: u64) -> u64 {
        self.next_call += 1;
        let id = self.next_call;
        let at = self.now + self.latency.local(&mut self.rng);
        self.calls.push(Call {
            id,
            engine: i,
            incarnation: self.nodes[i].incarnation,
            args,
            arrive_at: at,
            later: None,
        });
        self.answers_due.push((self.now + timeout, id));
        id
    }

    /// Executes the control commands that reached a running engine, as its control port would.
    fn serve_calls(&mut self) {
        let mut k = 0;
        while k < self.calls.len() {
            let c = &self.calls[k];
            let (i, inc) = (c.engine, c.incarnation);
            if self.nodes[i].incarnation != inc || self.nodes[i].engine.is_none() {
                let c = self.calls.swap_remove(k);
                let at = self.now + self.latency.local(&mut self.rng);
                self.answers
                    .push((at, c.id, Err("connection refused".into())));
                continue;
            }
            if c.arrive_at > self.now || !self.runs(i) {
                k += 1;
                continue;
            }
            if let Some(rx) = self.calls[k].later.as_mut() {
                let done = match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
                    Err(_) => Some(Err("ERR the engine dropped the request".into())),
                };
                match done {
                    Some(r) => {
                        let c = self.calls.swap_remove(k);
                        let at = self.now + self.latency.local(&mut self.rng);
                        self.answers.push((at, c.id, r));
                    }
                    None => k += 1,
                }
                continue;
            }
            let engine = self.nodes[i].engine.clone().expect("checked");
            let cmd = resp::Command {
                args: self.calls[k]
                    .args
                    .iter()
                    .map(|a| Bytes::from(a.clone()))
                    .collect(),
            };
            let mut out = BytesMut::new();
            let now = self.instant();
            let outcome = server::dispatch(
                &mut engine.borrow_mut(),
                Port::Control,
                &mut Conn::new(0),
                &cmd,
                &mut out,
                now,
            );
            match outcome {
                Outcome::Later(rx) => {
                    self.calls[k].later = Some(rx);
                    k += 1;
                }
                Outcome::Done { .. } | Outcome::Quit => {
                    let c = self.calls.swap_remove(k);
                    let at = self.now + self.latency.local(&mut self.rng);
                    self.answers.push((at, c.id, parse_reply(&out)));
                }
            }
            self.observe();
        }
    }

    /// The answers (or timeouts) due now, in a fixed order.
    fn take_answers(&mut self) -> Vec<Answer> {
        let now = self.now;
        let mut due: Vec<Answer> = Vec::new();
        let mut k = 0;
        while k < self.answers.len() {
            if self.answers[k].0 <= now {
                let (_, id, r) = self.answers.swap_remove(k);
                due.push(Answer {
                    id,
                    result: Some(r),
                });
            } else {
                k += 1;
            }
        }
        let mut k = 0;
        while k < self.answers_due.len() {
            let (at, id) = self.answers_due[k];
            let answered = due.iter().any(|a| a.id == id);
            if answered {
                self.answers_due.swap_remove(k);
            } else if at <= now {
                self.answers_due.swap_remove(k);
                self.answers.retain(|a| a.1 != id); // a late answer is never read
                self.calls.retain(|c| c.id != id || c.later.is_some());
                due.push(Answer { id, result: None });
            } else {
                k += 1;
            }
        }
        due.sort_by_key(|a| a.id);
        due
    }
}

/// A control command on its way to an engine (or, with `later`, waiting for its answer).
struct Call {
    id: u64,
    engine: usize,
    incarnation: u64,
    args: Vec<String>,
    arrive_at: u64,
    later: Option<tokio::sync::oneshot::Receiver<Result<String, String>>>,
}

/// What came back for a call: its reply, or None if none came within its timeout.
pub struct Answer {
    pub id: u64,
    pub result: Option<Result<String, String>>,
}

/// A RESP reply as text (a bulk reply's bytes, a status line) or an error line.
fn parse_reply(out: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(out);
    let line = text.split("\r\n").next().unwrap_or("");
    match out.first() {
        Some(b'-') => Err(line[1..].to_string()),
        Some(b'+') | Some(b':') => Ok(line[1..].to_string()),
        Some(b'$') if line == "$-1" => Ok(String::new()),
        Some(b'$') => Ok(text.split("\r\n").nth(1).unwrap_or("").to_string()),
        _ => Err(format!("unexpected reply {text:?}")),
    }
}

fn index_of(addr: &str) -> Option<usize> {
    NAMES.iter().position(|n| addr.split('.').next() == Some(n))
}

impl World {
    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// What reached one end of a link from engine `from` by now, and whether the stream ended.
    fn receive(&self, pipe: &mut Pipe, from: usize) -> (Vec<u8>, bool) {
        let mut input = Vec::new();
        let eof = pipe.recv(self.now, self.latency.blocked(from, self.now), &mut input);
        (input, eof)
    }

    /// Sends frames between the engines, each with its own latency.
    fn transmit(&mut self, pipe: &mut Pipe, frames: impl IntoIterator<Item = Bytes>) {
        for frame in frames {
            let lat = self.latency.between(&mut self.rng, self.now);
            pipe.send(self.now, lat, frame);
        }
    }

    /// The standby's follow loop: dials the active it was told to follow.
    fn dial(&mut self) {
        for s in 0..2 {
            if !self.runs(s)
                || self.nodes[s].follow_link.is_some()
                || self.now < self.nodes[s].retry_at
            {
                continue;
            }
            let engine = self.nodes[s].engine.clone().expect("runs");
            let addr = {
                let eng = engine.borrow();
                match (&eng.role, &eng.follow) {
                    (Role::Standby, Some(f)) => f.replication_addr.clone(),
                    _ => continue,
                }
            };
            let a = index_of(&addr).expect("a simulated address");
            let peer_timeout = self.config.peer_timeout.as_nanos() as u64;
            let Some(active) = self.nodes[a].engine.clone().filter(|_| a != s) else {
                self.nodes[s].retry_at = self.now + replication::RETRY_PAUSE.as_nanos() as u64;
                continue; // connection refused
            };
            if self.latency.blocked(s, self.now) || self.latency.blocked(a, self.now) {
                self.nodes[s].retry_at = self.now + peer_timeout; // the connect times out
                continue;
            }
            let now = self.instant();
            let mut sender =
                replicator::Sender::new(now, self.config.clone(), active.borrow().epoch);
            let receiver = {
                let eng = engine.borrow();
                let hello = Hello::new(eng.identity(), eng.seq_applied, eng.history);
                Receiver::new(now, self.config.clone(), &hello)
            };
            let mut down = Pipe::default();
            self.transmit(&mut down, sender.drain_out());
            self.links.push(Some(SimLink {
                active: a,
                standby: s,
                incarnations: (self.nodes[a].incarnation, self.nodes[s].incarnation),
                addr,
                handshake: Some(sender),
                handshake_until: self.now + peer_timeout,
                link_id: 0,
                receiver,
                down,
                up: Pipe::default(),
                active_deadline: None,
                standby_deadline: Some(self.now),
                active_done: false,
                standby_done: false,
            }));
            self.nodes[s].follow_link = Some(self.links.len() - 1);
        }
    }

    /// One turn of each end of each link whose engine runs, as the driver would take it.
    fn step_links(&mut self) {
        for k in 0..self.links.len() {
            let Some(mut link) = self.links[k].take() else {
                continue;
            };
            self.step_active_end(&mut link);
            self.step_standby_end(&mut link, k);
            if !(link.active_done && link.standby_done) {
                self.links[k] = Some(link);
            }
        }
        while self.links.last().is_some_and(Option::is_none) {
            self.links.pop();
        }
    }

    fn step_active_end(&mut self, link: &mut SimLink) {
        let a = link.active;
        if link.active_done || !self.runs(a) || self.nodes[a].incarnation != link.incarnations.0 {
            return;
        }
        let engine = self.nodes[a].engine.clone().expect("runs");
        let (mut input, eof) = self.receive(&mut link.up, link.standby);
        let now = self.instant();
        let mut tx = std::collections::VecDeque::new();
        if let Some(mut sender) = link.handshake.take() {
            sender.handle_input(now, &input);
            input.clear();
            sender.handle_timeout(now);
            let mut hello = None;
            let mut refused = None;
            while let Some(ev) = sender.poll_event() {
                match ev {
                    SenderEvent::Hello(h) => hello = Some(h),
                    SenderEvent::Closed { reason } => refused = Some(reason),
                    _ => {}
                }
            }
            if hello.is_none() && refused.is_none() && (eof || self.now >= link.handshake_until) {
                refused = Some("no hello within the peer timeout".into());
            }
            match (hello, refused) {
                (Some(h), None) => {
                    let attached = replication::attach(&mut engine.borrow_mut(), sender, &h, now);
                    match attached {
                        Ok(id) => link.link_id = id,
                        Err(refused) => {
                            let (mut sender, reason) = *refused;
                            sender.refuse(&reason);
                            tx.extend(sender.drain_out());
                            link.active_done = true;
                        }
                    }
                }
                (_, Some(reason)) => {
                    sender.refuse(&reason);
                    tx.extend(sender.drain_out());
                    link.active_done = true;
                }
                (None, None) => {
                    tx.extend(sender.drain_out());
                    link.handshake = Some(sender);
                    link.active_deadline = Some(link.handshake_until);
                }
            }
        }
        if link.handshake.is_none() && !link.active_done {
            let turn = replication::active_turn(&engine, link.link_id, now, &input, &mut tx);
            link.active_deadline = turn.deadline.map(|d| self.ns(d));
            if turn.done || eof {
                link.active_done = true;
                engine.borrow_mut().close_link(link.link_id, now);
            }
        }
        self.transmit(&mut link.down, tx);
        if link.active_done {
            link.down.close(self.now);
        }
        self.observe();
    }

    fn step_standby_end(&mut self, link: &mut SimLink, k: usize) {
        let s = link.standby;
        if link.standby_done || !self.runs(s) || self.nodes[s].incarnation != link.incarnations.1 {
            return;
        }
        let engine = self.nodes[s].engine.clone().expect("runs");
        let (input, eof) = self.receive(&mut link.down, link.active);
        let now = self.instant();
        let mut tx = std::collections::VecDeque::new();
        let turn = replication::standby_turn(
            &engine,
            &link.addr,
            &mut link.receiver,
            now,
            &input,
            &mut tx,
        );
        link.standby_deadline = turn.deadline.map(|d| self.ns(d));
        self.transmit(&mut link.up, tx);
        if turn.done || eof {
            link.standby_done = true;
            link.up.close(self.now);
            let error = (!turn.done).then(|| "closed by the peer".to_string());
            let again = replication::follow_ended(&mut engine.borrow_mut(), &link.addr, error);
            if self.nodes[s].follow_link == Some(k) {
                self.nodes[s].follow_link = None;
            }
            if again {
                self.nodes[s].retry_at = self.now + replication::RETRY_PAUSE.as_nanos() as u64;
            }
        }
        self.observe();
    }

    /// Cuts the link between the engines (a reset: what was in flight is gone).
    fn cut(&mut self) {
        for link in self.links.iter_mut().flatten() {
            link.down.drop_pending();
            link.up.drop_pending();
            link.down.close(self.now);
            link.up.close(self.now);
        }
    }

    /// Clients send their next rounds.
    fn step_clients(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].busy || self.now < self.clients[c].next_at {
                continue;
            }
            let n = self.rng.range(1, 4);
            let ops = (0..n)
                .map(|_| {
                    let key = self.rng.range(0, KEYS);
                    if self.rng.chance(60) {
                        Op::Set {
                            key,
                            write: self.history.invoke(key, self.now),
                        }
                    } else {
                        Op::Get {
                            key,
                            read_at: self.now,
                        }
                    }
                })
                .collect();
            let e = self.clients[c].target;
            let arrive_at = self.now + self.latency.local(&mut self.rng);
            self.rounds.push(Round {
                client: c,
                engine: e,
                incarnation: self.nodes[e].incarnation,
                arrive_at,
                ops,
                next: 0,
                replies: Vec::new(),
                seqs: Vec::new(),
                wait: None,
            });
            self.clients[c].busy = true;
        }
    }

    /// Each engine executes the rounds that reached it, as its client connections would:
    /// every command it can in one borrow, then the replies wait for their release.
    fn serve_rounds(&mut self) {
        let mut k = 0;
        while k < self.rounds.len() {
            let e = self.rounds[k].engine;
            if self.nodes[e].engine.is_none()
                || self.nodes[e].incarnation != self.rounds[k].incarnation
            {
                let r = self.rounds.swap_remove(k);
                self.reply(r, false);
                continue;
            }
            if self.rounds[k].arrive_at > self.now || !self.runs(e) {
                k += 1;
                continue;
            }
            let engine = self.nodes[e].engine.clone().expect("runs");
            let now = self.instant();
            let mut eng = engine.borrow_mut();
            let round = &mut self.rounds[k];
            if round.next < round.ops.len() {
                let epoch_seen = round.wait.map_or(eng.epoch, |(_, ep)| ep);
                let mut wait_seq = round.wait.map_or(0, |(s, _)| s);
                let before = eng.outbox.seq_last();
                while round.next < round.ops.len() && !eng.writes_blocked() {
                    let cmd = match round.ops[round.next] {
                        Op::Set { key, write } => vec![
                            Bytes::from_static(b"SET"),
                            Bytes::from(format!("k{key}")),
                            Bytes::from(write.to_string()),
                        ],
                        Op::Get { key, .. } => {
                            vec![Bytes::from_static(b"GET"), Bytes::from(format!("k{key}"))]
                        }
                    };
                    let mut out = BytesMut::new();
                    let cmd = resp::Command { args: cmd };
                    let mut seen = 0;
                    if let Outcome::Done { seq } = server::dispatch(
                        &mut eng,
                        Port::Client,
                        &mut Conn::following(),
                        &cmd,
                        &mut out,
                        now,
                    ) {
                        wait_seq = wait_seq.max(seq);
                        seen = seq;
                    }
                    round.seqs.push(seen);
                    round.replies.push(out);
                    round.next += 1;
                }
                if eng.outbox.seq_last() > before {
                    eng.after_writes(now);
                }
                round.wait = Some((wait_seq, epoch_seen));
                if round.next < round.ops.len() {
                    k += 1; // back-pressure: the rest waits for the link
                    continue;
                }
            }
            let (seq, epoch_seen) = round.wait.expect("executed");
            if eng.seq_released < seq && eng.role == Role::Active && eng.epoch == epoch_seen {
                eng.refresh_released(now);
            }
            let released = eng.seq_released >= seq;
            let fenced = eng.role != Role::Active || eng.epoch != epoch_seen;
            let (name, epoch) = (eng.config.name.clone(), eng.epoch);
            drop(eng);
            if released || fenced {
                let r = self.rounds.swap_remove(k);
                if released {
                    for ((op, out), seq) in r.ops.iter().zip(&r.replies).zip(&r.seqs) {
                        if let (Op::Set { write, .. }, true) = (op, out.starts_with(b"+")) {
                            if let Err(v) = self.history.released(*write, &name, epoch, *seq) {
                                self.fail(v);
                            }
                        }
                    }
                }
                self.reply(r, released);
                continue;
            }
            k += 1;
        }
    }

    fn reply(&mut self, r: Round, released: bool) {
        let at = self.now + self.latency.local(&mut self.rng);
        self.deliveries.push(Delivery {
            at,
            client: r.client,
            ops: r.ops,
            replies: released.then_some(r.replies),
            engine: r.engine,
        });
    }

    /// Clients read the replies that reached them and check every read.
    fn deliver(&mut self) {
        let mut k = 0;
        while k < self.deliveries.len() {
            if self.deliveries[k].at > self.now {
                k += 1;
                continue;
            }
            let d = self.deliveries.swap_remove(k);
            let client = &mut self.clients[d.client];
            client.busy = false;
            client.next_at = self.now + self.rng.range(2 * MS, 15 * MS);
            let Some(replies) = d.replies else {
                // The connection closed: writes in it have an unknown outcome; reconnect.
                client.target = 1 - d.engine;
                continue;
            };
            for (op, out) in d.ops.iter().zip(&replies) {
                let reply = parse_reply(out);
                match (*op, reply) {
                    (Op::Set { write, .. }, Ok(_)) => self.history.ack(write, self.now),
                    (Op::Set { write, .. }, Err(e)) => {
                        self.history.writes[write].failed = true;
                        self.follow_hint(d.client, d.engine, &e);
                    }
                    (Op::Get { key, read_at }, Ok(v)) => {
                        let value =
                            (!v.is_empty()).then(|| v.parse::<usize>().expect("a write id"));
                        if let Err(v) = self.history.read(key, read_at, self.now, value) {
                            self.fail(v);
                        }
                    }
                    (Op::Get { .. }, Err(e)) => self.follow_hint(d.client, d.engine, &e),
                }
            }
        }
    }

    fn follow_hint(&mut self, client: usize, engine: usize, error: &str) {
        if let Some(rest) = error.strip_prefix("NOTACTIVE ") {
            self.clients[client].target = index_of(rest).unwrap_or(1 - engine);
        }
    }

    /// After every engine action: epochs, the newest active epoch, the digests, role changes.
    fn observe(&mut self) {
        let mut roles = [(Role::OutOfService, 0u64); 2];
        let mut shown = [String::new(), String::new()];
        for i in 0..2 {
            let Some(engine) = self.nodes[i].engine.clone() else {
                continue;
            };
            let eng = engine.borrow();
            if eng.epoch < self.nodes[i].epoch_seen {
                let v = Violation::EpochWentBack(format!(
                    "{} went from epoch {} to {}",
                    NAMES[i], self.nodes[i].epoch_seen, eng.epoch
                ));
                drop(eng);
                self.fail(v);
                return;
            }
            self.nodes[i].epoch_seen = eng.epoch;
            roles[i] = (eng.role, eng.epoch);
            shown[i] = format!(
                "{} {} @{} (seq {}, {} keys{})",
                NAMES[i],
                eng.role.as_str(),
                eng.epoch,
                if eng.role == Role::Active {
                    eng.outbox.seq_last()
                } else {
                    eng.seq_applied
                },
                eng.state.db.len(),
                if eng.state_complete {
                    ""
                } else {
                    ", incomplete"
                }
            );
            if eng.role == Role::Active && eng.epoch > self.history.newest_active {
                self.history.newest_active = eng.epoch;
                self.history.newest_active_from = eng.seq_applied;
            }
        }
        if roles != self.roles {
            for (i, line) in shown.iter_mut().enumerate() {
                if self.nodes[i].engine.is_none() {
                    *line = format!("{} down", NAMES[i]);
                }
            }
            self.roles = roles;
            self.note(shown.join(", "));
        }
        let (Some(x), Some(y)) = (self.engine(0).cloned(), self.engine(1).cloned()) else {
            return;
        };
        let (x, y) = (x.borrow(), y.borrow());
        let (active, standby) = match (x.role, y.role) {
            (Role::Active, Role::Standby) => (&x, &y),
            (Role::Standby, Role::Active) => (&y, &x),
            _ => return,
        };
        if active.standby_in_sync()
            && standby.state_complete
            && standby.restore.is_none()
            && standby.seq_applied == active.outbox.seq_last()
            && standby.state.digest() != active.state.digest()
        {
            let v = Violation::DigestsDiffer(format!(
                "{} and {} at sequence {}: {:016x} and {:016x}",
                active.config.name,
                standby.config.name,
                standby.seq_applied,
                active.state.digest(),
                standby.state.digest()
            ));
            drop((x, y));
            self.fail(v);
        }
    }

    /// The next instant anything is due, strictly after now.
    fn next_event(&self, mut next: u64) -> u64 {
        let mut at = |t: Option<u64>| {
            if let Some(t) = t.filter(|t| *t > self.now) {
                next = next.min(t);
            }
        };
        for link in self.links.iter().flatten() {
            at(link.down.next_at());
            at(link.up.next_at());
            at(link.active_deadline);
            at(link.standby_deadline);
        }
        for n in &self.nodes {
            at(Some(n.retry_at));
        }
        for r in &self.rounds {
            at(Some(r.arrive_at));
        }
        for d in &self.deliveries {
            at(Some(d.at));
        }
        for c in &self.clients {
            at((!c.busy).then_some(c.next_at));
        }
        for c in &self.calls {
            at(Some(c.arrive_at));
        }
        for a in &self.answers {
            at(Some(a.0));
        }
        for a in &self.answers_due {
            at(Some(a.0));
        }
        next.max(self.now + 1_000)
    }
}

/// The faults of one seed: what, and when.
struct Nemesis {
    next_at: u64,
    until: u64,
    resume: Vec<(u64, usize)>,
    upgrade_at: Option<u64>,
    /// Supervisor crashes: their own random stream, the next one's time.
    supervisor: Rng,
    supervisor_at: u64,
}

impl Nemesis {
    fn new(rng: &mut Rng, until: u64, options: &Options) -> Nemesis {
        let upgrade_at = rng.chance(60).then(|| rng.range(until / 5, until * 7 / 10));
        let mut supervisor = Rng::new(options.seed ^ 0x5afe_c0de_5afe_c0de);
        let crashes = options.supervisor_crashes && supervisor.chance(50);
        let supervisor_at = match crashes {
            true => supervisor.range(300 * MS, 2_500 * MS),
            false => u64::MAX,
        };
        Nemesis {
            next_at: rng.range(200 * MS, 800 * MS),
            until,
            resume: Vec::new(),
            upgrade_at,
            supervisor,
            supervisor_at,
        }
    }

    fn step(&mut self, w: &mut World, pilot: &mut Pilot) {
        let now = w.now;
        for k in (0..self.resume.len()).rev() {
            if self.resume[k].0 <= now {
                let (_, i) = self.resume.swap_remove(k);
                if w.nodes[i].paused {
                    w.nodes[i].paused = false;
                    w.note(format!("nemesis: resume {}", NAMES[i]));
                }
            }
        }
        if self.upgrade_at.is_some_and(|t| t <= now) {
            self.upgrade_at = None;
            pilot.start_upgrade(w);
        }
        if now >= self.supervisor_at {
            let down = self.supervisor.range(20 * MS, 1_500 * MS);
            pilot.crash(w, down);
            self.supervisor_at = now + down + self.supervisor.range(300 * MS, 2_500 * MS);
        }
        if now >= self.until {
            if self.until != u64::MAX {
                self.until = u64::MAX;
                w.note("nemesis: faults stop; everything heals".into());
                w.latency.heal(now);
                for i in 0..2 {
                    w.nodes[i].paused = false;
                }
                self.resume.clear();
                self.next_at = u64::MAX;
                self.supervisor_at = u64::MAX;
            }
            return;
        }
        if now < self.next_at {
            return;
        }
        self.next_at = now + w.rng.range(100 * MS, 900 * MS);
        let i = w.rng.range(0, 2) as usize;
        let name = NAMES[i];
        match w.rng.range(0, 12) {
            0 | 1 => {
                if w.engine(i).is_some() {
                    w.note(format!("nemesis: crash {name}"));
                    w.crash(i);
                    pilot.exited(i);
                }
            }
            2..=4 => {
                if w.engine(i).is_some() && !w.nodes[i].paused {
                    let d = w.rng.range(20 * MS, 1_500 * MS);
                    w.note(format!("nemesis: pause {name} for {} ms", d / MS));
                    w.nodes[i].paused = true;
                    self.resume.push((now + d, i));
                }
            }
            5 | 6 => {
                w.note("nemesis: cut the link".into());
                w.cut();
            }
            7 | 8 => {
                let d = w.rng.range(50 * MS, 1_500 * MS);
                let both = w.rng.chance(50);
                w.note(format!(
                    "nemesis: partition {} for {} ms",
                    if both {
                        "both ways".to_string()
                    } else {
                        format!("{name} -> other")
                    },
                    d / MS
                ));
                w.latency.partitioned_until[i] = now + d;
                if both {
                    w.latency.partitioned_until[1 - i] = now + d;
                }
            }
            9 => {
                let d = w.rng.range(100 * MS, 2_000 * MS);
                w.note(format!("nemesis: slow link for {} ms", d / MS));
                w.latency.slow_until = now + d;
            }
            _ => {
                w.note("nemesis: ask for a switchover".into());
                pilot.request_switchover();
            }
        }
    }

    fn next_at(&self) -> u64 {
        let mut next = self.next_at.min(self.until).min(self.supervisor_at);
        for (t, _) in &self.resume {
            next = next.min(*t);
        }
        if let Some(t) = self.upgrade_at {
            next = next.min(t);
        }
        next
    }
}

/// Runs one seed to its end or its first broken invariant.
pub fn run(options: &Options) -> Report {
    PLANTED.with(|p| p.set(options.plant));
    let mut w = World::new(options.seed);
    let mut pilot = Pilot::new();
    let faults = options.faults.as_nanos() as u64;
    let end = faults + options.recovery.as_nanos() as u64;
    let mut nemesis = Nemesis::new(&mut w.rng, faults, options);
    w.note(format!("seed {}", options.seed));
    while w.now < end && w.failure.is_none() {
        CLOCK_NS.with(|c| c.set(CLOCK_ORIGIN_NS + w.now));
        nemesis.step(&mut w, &mut pilot);
        pilot.step(&mut w);
        w.serve_calls();
        w.dial();
        w.step_links();
        w.serve_rounds();
        w.deliver();
        w.step_clients();
        let next = w.next_event(pilot.next_at().min(nemesis.next_at()).min(end));
        w.now = next;
    }
    if w.failure.is_none() {
        let quiet_for = w.now.saturating_sub(w.history.last_ack);
        if pilot.unavailable().is_none() && quiet_for > 2_000 * MS {
            w.fail(Violation::NoService(format!(
                "no write acknowledged in the last {} ms, {} ms after the faults stopped; nothing says why",
                quiet_for / MS,
                (w.now - faults) / MS
            )));
        } else if let (Some(_), None) = (&pilot.upgrade, pilot.unavailable()) {
            w.fail(Violation::UpgradeUnfinished(format!(
                "the upgrade is still under way {} ms after the faults stopped",
                (w.now - faults) / MS
            )));
        }
    }
    PLANTED.with(|p| p.set(None));
    let mut h = w.trace_hash.clone();
    for n in &w.nodes {
        if let Some(e) = &n.engine {
            h.update(&e.borrow().state.digest().to_le_bytes());
        }
    }
    h.update(&w.history.acked.to_le_bytes());
    Report {
        seed: options.seed,
        digest: h.digest(),
        failure: w.failure.clone(),
        trace: std::mem::take(&mut w.trace),
        acked_writes: w.history.acked,
        reads_checked: w.history.reads_checked,
        upgrade: pilot.upgrade_outcome.clone(),
        unavailable: pilot.unavailable().cloned(),
        simulated: Duration::from_nanos(w.now),
    }
}

impl Report {
    /// What `tandem sim` prints for a failed seed: the seed, the invariant, the trace's end
    /// and the command that replays it.
    pub fn explain(&self, flags: &str, tail: usize) -> String {
        let mut s = String::new();
        let Some(v) = &self.failure else {
            return s;
        };
        let _ = writeln!(s, "seed {} broke an invariant: {}", self.seed, v.name());
        let _ = writeln!(s, "  {v}");
        let _ = writeln!(s, "trace (last {tail} lines):");
        let from = self.trace.len().saturating_sub(tail);
        for line in &self.trace[from..] {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(
            s,
            "replay: cargo run --release -p engine --bin tandem -- sim --seed {}{flags} --trace",
            self.seed
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing_seed(seeds: std::ops::Range<u64>, plant: Option<Plant>) -> Option<Report> {
        seeds
            .map(|seed| {
                run(&Options {
                    plant,
                    ..Options::new(seed)
                })
            })
            .find(|r| r.failure.is_some())
    }

    fn keep_every_invariant(seeds: std::ops::Range<u64>) {
        if let Some(r) = failing_seed(seeds, None) {
            panic!("{}", r.explain("", 60));
        }
    }

    // Three thousand seeds in four tests, so that the test threads share them.
    #[test]
    fn seeds_0_to_750_keep_every_invariant() {
        keep_every_invariant(0..750);
    }

    #[test]
    fn seeds_750_to_1500_keep_every_invariant() {
        keep_every_invariant(750..1500);
    }

    #[test]
    fn seeds_1500_to_2250_keep_every_invariant() {
        keep_every_invariant(1500..2250);
    }

    #[test]
    fn seeds_2250_to_3000_keep_every_invariant() {
        keep_every_invariant(2250..3000);
    }

    #[test]
    fn a_seed_replays_to_the_same_trace() {
        let (x, y) = (run(&Options::new(7)), run(&Options::new(7)));
        assert_eq!(x.trace, y.trace);
        assert_eq!(x.digest, y.digest);
        assert_ne!(x.digest, run(&Options::new(8)).digest);
    }

    #[test]
    fn each_planted_bug_is_found_within_2000_seeds() {
        for plant in [Plant::PromoteStale, Plant::AckBeforeStandby] {
            let found = failing_seed(0..2000, Some(plant))
                .unwrap_or_else(|| panic!("{plant:?} was not found in 2000 seeds"));
            assert!(
                matches!(found.failure, Some(Violation::LostUpdate(_))),
                "{plant:?}: {}",
                found.explain("", 30)
            );
        }
    }

    /// The seeds of the bugs the simulator found, kept: each failed before its fix.
    #[test]
    fn the_seeds_of_fixed_bugs_pass() {
        // 198: a switchover that failed left the old active an epoch behind the supervisor,
        // whose next lease fenced it: nobody active, and nothing said so.
        // 1256, 1646: a standby restarted during a partition counted as whole before its
        // first snapshot, was promoted, and served an empty state.
        // (These three were found before the nemesis crashed the supervisor: they replay
        // without those crashes.)
        // 58: the supervisor died mid-switchover, after granting its epoch; its successor
        // leased the old active in that epoch, which stepped it down: nobody active.
        // 18515: a standby whose snapshot came from an active mid-way through a failed
        // switchover, told to follow that active again on the same link, stayed "incomplete"
        // for good: switched over to, it could not take an epoch back, and nobody was active.
        for (seed, supervisor_crashes, shows) in [
            (198, false, "a retakes epoch 3"),
            (1256, false, "a standby @4 (seq 0, 0 keys, incomplete)"),
            (
                1646,
                false,
                "a down, b standby @3 (seq 0, 0 keys, incomplete)",
            ),
            (58, true, "b was left behind epoch 7"),
            (18515, true, "a retakes epoch 7"),
        ] {
            let r = run(&Options {
                supervisor_crashes,
                ..Options::new(seed)
            });
            assert!(r.failure.is_none(), "{}", r.explain("", 60));
            // Still the interleaving that broke it, not merely a passing seed.
            assert!(
                r.trace.iter().any(|l| l.contains(shows)),
                "seed {seed}: no '{shows}'"
            );
        }
    }
}
