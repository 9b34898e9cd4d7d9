//! `tandem sim --fleet N`: a deterministic simulation of an upgrade campaign over N pairs,
//! replayable by seed.
//!
//! The campaign's decisions are the real [`fleet::campaign::Campaign`], the same code the
//! campaign process runs; everything around it is [`fleet::campaign::model`] (the model the
//! campaign's proptest drives too): etcd, each pair's supervisor, the campaign processes'
//! driver loop, the network. The pairs are models of a supervisor running an upgrade, not
//! engines: for the engines themselves, `tandem sim` without `--fleet`.
//!
//! This file is the clock and the nemesis: every message takes a latency, every phase of a
//! pair's upgrade a duration, and during the first part of the run faults come at random
//! times, all drawn from one seed: etcd unreachable for a while (longer than the owner
//! lease in some), the campaign process dying (at any point: between a write and its asks,
//! with calls in flight; a new one is started a moment later and takes over once the owner
//! lease expired) or stalling (its lease lapses; a successor may take over while it
//! sleeps), a pair's active engine dying (mid-upgrade or not), requests lost, calls cut
//! while their upgrade runs, a write's answer lost; a faulty build in some seeds. Then the
//! faults stop and the campaign must end (Completed or Stopped). The model checks its
//! invariants at every transition, and at the end that the record says what happened to
//! each pair.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::io::Write as _;

use super::Rng;
use fleet::campaign::model::{Config, Effect, Plant, Stage, Wake, World, WATCH_MS};
use fleet::campaign::WaveSpec;
use fleet::keys::{CampaignState, Outcome};

/// What one seed does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub pairs: usize,
    pub plant: Option<Plant>,
    /// Keep every line of the trace (else the last ones).
    pub full_trace: bool,
}

impl Options {
    pub fn new(seed: u64, pairs: usize) -> Options {
        Options {
            seed,
            pairs,
            plant: None,
            full_trace: false,
        }
    }
}

/// How one seed ended.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub pairs: usize,
    /// Over the trace: the same on every run of the seed.
    pub digest: u64,
    /// The invariant broken (its name, what happened) and at which step.
    pub failure: Option<(&'static str, String)>,
    pub step: u64,
    pub trace: Vec<String>,
    pub scenario: String,
    pub state: String,
    pub upgraded: usize,
    pub rolled_back: usize,
    pub failed: usize,
    pub pending: usize,
    pub simulated_s: f64,
    pub processes: u32,
    /// Processes that exited on a campaign not finished (another took it over, or its
    /// write found the record changed).
    pub gave_up: u32,
    pub outages: u32,
    pub failovers: u64,
    pub writes: u64,
    pub asks: u64,
}

impl Report {
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {}, trace digest {:016x}; {} pairs, {}; campaign {} after {:.0} s simulated: {} upgraded, {} rolled back, {} failed, {} not started; {} campaign processes ({} gave up), {} etcd outages, {} active engines died, {} record writes, {} asks",
            self.seed,
            if self.failure.is_some() { "FAILED" } else { "ok" },
            self.digest,
            self.pairs,
            self.scenario,
            self.state,
            self.simulated_s,
            self.upgraded,
            self.rolled_back,
            self.failed,
            self.pending,
            self.processes,
            self.gave_up,
            self.outages,
            self.failovers,
            self.writes,
            self.asks
        )
    }

    /// What broke, the trace's last `tail` lines, and how to replay it.
    pub fn explain(&self, flags: &str, tail: usize) -> String {
        let mut s = String::new();
        let Some((name, what)) = &self.failure else {
            return s;
        };
        let _ = writeln!(
            s,
            "seed {} broke an invariant at step {}: {name}",
            self.seed, self.step
        );
        let _ = writeln!(s, "  {what}");
        let _ = writeln!(s, "  ({})", self.scenario);
        let _ = writeln!(s, "trace (last {tail} lines):");
        let from = self.trace.len().saturating_sub(tail);
        for line in &self.trace[from..] {
            let _ = writeln!(s, "  {line}");
        }
        let _ = writeln!(
            s,
            "replay: cargo run --release -p engine --bin tandem -- sim --fleet {} --seed {}{flags} --trace",
            self.pairs, self.seed
        );
        s
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A campaign process's turn (stale unless it is the one scheduled for it).
    Drive(u32),
    StartProcess,
    Deliver(u64),
    Lose(u64),
    Answer(u64),
    SupStep {
        pair: usize,
        timer: u64,
    },
    EtcdDown {
        for_ms: u64,
    },
    EtcdUp,
    Crash,
    Stall {
        for_ms: u64,
    },
    Unstall(u32),
    ActiveDies(usize),
    BreakCall(usize),
    FaultsStop,
}

/// The seed's draw of the campaign and of how hard the nemesis hits.
struct Scenario {
    parallel: usize,
    waves: WaveSpec,
    continue_on_rollback: bool,
    faulty: Vec<bool>,
    faulty_text: &'static str,
    /// When the faults stop (ms).
    faults_until: u64,
    /// Mean time between faults of each kind (ms; 0: none).
    outage_every: u64,
    crash_every: u64,
    stall_every: u64,
    death_every: u64,
    /// Per mille.
    lose_request: u64,
    break_call: u64,
    lose_write_answer: u64,
    death_in_upgrade: u64,
}

const OWNER_TTL_MS: u64 = 5_000;
/// A phase of a pair's upgrade: 0.5 to 5 s (the whole upgrade ~20 s, as with the real
/// defaults: 5 s baseline, 5 s evaluation, 3 s settle, reloads and catch-ups).
const PHASE_MS: (u64, u64) = (500, 5_000);

impl Scenario {
    fn draw(rng: &mut Rng, pairs: usize) -> Scenario {
        let parallel = [1, 2, 4, 8, 16, 32, 64][rng.range(0, 7) as usize];
        let waves = match rng.range(0, 3) {
            0 => WaveSpec::Doubling,
            1 => WaveSpec::Sizes(vec![1, 5, 25, 100]),
            _ => WaveSpec::Percent(rng.range(5, 30) as f64),
        };
        let (faulty, faulty_text) = match rng.range(0, 10) {
            0 => (vec![true; pairs], "a faulty build"),
            1 | 2 => (
                (0..pairs).map(|_| rng.next_u64() % 1000 < 3).collect(),
                "a build faulty on 0.3 % of the pairs",
            ),
            _ => (vec![false; pairs], "a good build"),
        };
        // The campaign's length with no fault, roughly: the faults act during a part of it.
        let rounds = pairs.div_ceil(parallel) as u64 + waves.sizes(pairs).len() as u64;
        let expected = rounds * 8 * (PHASE_MS.0 + PHASE_MS.1) / 2;
        let faults_until = rng.range(expected / 4, expected + 1);
        let every = |rng: &mut Rng, lo: u64, hi: u64| rng.range(lo, hi);
        Scenario {
            parallel,
            waves,
            continue_on_rollback: rng.chance(50),
            faulty,
            faulty_text,
            faults_until,
            outage_every: every(rng, 60_000, 600_000),
            crash_every: every(rng, 60_000, 600_000),
            stall_every: every(rng, 120_000, 1_200_000),
            death_every: every(rng, 5_000, 120_000),
            lose_request: rng.range(0, 30),
            break_call: rng.range(0, 30),
            lose_write_answer: rng.range(0, 20),
            death_in_upgrade: rng.range(0, 10),
        }
    }

    fn describe(&self) -> String {
        format!(
            "waves {}, parallel {}, {}, {}; faults for {:.0} s",
            self.waves,
            self.parallel,
            if self.continue_on_rollback {
                "going on past a rollback"
            } else {
                "stopping at a rollback"
            },
            self.faulty_text,
            self.faults_until as f64 / 1e3
        )
    }
}

struct Sim {
    w: World,
    rng: Rng,
    s: Scenario,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    /// The turn scheduled for each live process.
    wake: BTreeMap<u32, u64>,
    faulting: bool,
    outages: u32,
    step: u64,
}

impl Sim {
    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn after(&mut self, ms: u64, ev: Ev) {
        let t = self.w.now + ms;
        self.at(t, ev);
    }

    fn drive_at(&mut self, id: u32, t: u64) {
        if self
            .wake
            .get(&id)
            .is_some_and(|&w| w <= t && w >= self.w.now)
        {
            return;
        }
        self.wake.insert(id, t);
        self.at(t, Ev::Drive(id));
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.faulting && self.rng.next_u64() % 1000 < per_mille
    }

    /// A network latency: mostly under 5 ms, now and then a retransmission's second or two.
    fn latency(&mut self) -> u64 {
        if self.rng.chance(1) {
            self.rng.range(200, 2_000)
        } else {
            self.rng.range(1, 5)
        }
    }

    /// The next fault of a kind after an exponential-ish gap (none past the fault window).
    fn schedule_fault(&mut self, every: u64, ev: Ev) {
        if every == 0 {
            return;
        }
        let gap = self.rng.range(every / 10, every * 2);
        let t = self.w.now + gap;
        if t < self.s.faults_until {
            self.at(t, ev);
        }
    }

    /// What the last transition asked for: messages to route, timers to set.
    fn effects(&mut self) {
        for effect in std::mem::take(&mut self.w.effects) {
            match effect {
                Effect::Sent(id) => {
                    let lat = self.latency();
                    if self.chance(self.s.lose_request) {
                        self.after(lat + 1_000, Ev::Lose(id));
                    } else {
                        self.after(lat, Ev::Deliver(id));
                    }
                }
                Effect::Answered { id, slow } => {
                    let lat = self.latency() + if slow { 1_000 } else { 0 };
                    self.after(lat, Ev::Answer(id));
                }
                Effect::SupTimer { pair, timer, at } => {
                    let t = match at {
                        Some(t) => t,
                        None => self.w.now + self.rng.range(PHASE_MS.0, PHASE_MS.1),
                    };
                    // An upgrade that just started: will its active die?
                    let started = matches!(
                        self.w.sups[pair].busy.as_ref().map(|b| &b.stage),
                        Some(Stage::Upgrading { phase: 0, .. })
                    );
                    if started && self.chance(self.s.death_in_upgrade) {
                        let t = self.rng.range(0, 25_000);
                        self.after(t, Ev::ActiveDies(pair));
                    }
                    // A supervisor that just took an UPGRADE: will the call be cut (while
                    // it waits for its standby, or during the upgrade)?
                    let taken = matches!(
                        self.w.sups[pair].busy.as_ref().map(|b| &b.stage),
                        Some(Stage::Syncing { .. })
                    );
                    if taken && self.chance(self.s.break_call * 10) {
                        let syncing = self.w.sups[pair].in_sync_at.saturating_sub(self.w.now);
                        let t = self
                            .rng
                            .range(0, if syncing > 0 { syncing } else { 25_000 });
                        self.after(t, Ev::BreakCall(pair));
                    }
                    self.at(t, Ev::SupStep { pair, timer });
                }
            }
        }
    }

    fn wake_all(&mut self) {
        let ids: Vec<u32> = self.w.procs.iter().map(|p| p.id).collect();
        for id in ids {
            self.drive_at(id, self.w.now);
        }
    }

    fn keepalive_age(&mut self) -> u64 {
        self.rng.range(0, OWNER_TTL_MS / 3)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Drive(id) => {
                if self.wake.get(&id) != Some(&self.w.now) {
                    return; // another turn was scheduled since
                }
                self.wake.remove(&id);
                let lost = self.chance(self.s.lose_write_answer);
                let wake = self.w.drive(id, lost);
                let next = match wake {
                    Wake::Soon => Some(self.rng.range(1, 4)),
                    Wake::Watch => Some(WATCH_MS),
                    Wake::Paused => Some(1_000),
                    // The driver loop's tick finds nothing new: looked at now and then.
                    Wake::Idle => Some(5_000),
                    Wake::Exited => None,
                };
                if let Some(ms) = next {
                    let t = self.w.now + ms;
                    self.drive_at(id, t);
                } else if self.w.procs.is_empty() && !self.w.ended() {
                    // It gave up on an unfinished campaign (said why, exit 1): someone runs
                    // `tandem campaign --resume`.
                    let t = self.rng.range(500, 20_000);
                    self.after(t, Ev::StartProcess);
                }
            }
            Ev::StartProcess => match self.w.start_process() {
                Some(id) => self.drive_at(id, self.w.now),
                // The owner key's lease has not run out, or etcd does not answer: it waits.
                None => self.after(1_000, Ev::StartProcess),
            },
            Ev::Deliver(id) => self.w.deliver_request(id),
            Ev::Lose(id) => self.w.lose_request(id),
            Ev::Answer(id) => {
                let to = self.w.answers.get(&id).map(|a| a.to);
                self.w.deliver_answer(id);
                if let Some(to) = to {
                    if self.w.procs.iter().any(|p| p.id == to) {
                        self.drive_at(to, self.w.now);
                    }
                }
            }
            Ev::SupStep { pair, timer } => self.w.sup_step(pair, Some(timer)),
            Ev::EtcdDown { for_ms } => {
                if self.w.etcd.up {
                    self.outages += 1;
                    let age = self.keepalive_age();
                    self.w.set_etcd(false, age);
                    self.after(for_ms, Ev::EtcdUp);
                }
                let (every, for_ms) = (self.s.outage_every, self.outage_length());
                self.schedule_fault(every, Ev::EtcdDown { for_ms });
            }
            Ev::EtcdUp => {
                self.w.set_etcd(true, 0);
                self.wake_all();
            }
            Ev::Crash => {
                let live: Vec<u32> = self.w.procs.iter().map(|p| p.id).collect();
                if !live.is_empty() {
                    let id = live[self.rng.range(0, live.len() as u64) as usize];
                    let age = self.keepalive_age();
                    self.w.crash(id, age);
                    self.wake.remove(&id);
                    // Someone runs `tandem campaign --resume` (or the same command) again.
                    let t = self.rng.range(500, 20_000);
                    self.after(t, Ev::StartProcess);
                }
                self.schedule_fault(self.s.crash_every, Ev::Crash);
            }
            Ev::Stall { for_ms } => {
                let live: Vec<u32> = self
                    .w
                    .procs
                    .iter()
                    .filter(|p| !p.stalled)
                    .map(|p| p.id)
                    .collect();
                if !live.is_empty() {
                    let id = live[self.rng.range(0, live.len() as u64) as usize];
                    let age = self.keepalive_age();
                    self.w.stall(id, true, age);
                    self.after(for_ms, Ev::Unstall(id));
                    if for_ms > OWNER_TTL_MS && self.rng.chance(50) {
                        // Taken for dead: someone starts another process.
                        let t = self.rng.range(OWNER_TTL_MS, for_ms);
                        self.after(t, Ev::StartProcess);
                    }
                }
                let for_ms = self.stall_length();
                self.schedule_fault(self.s.stall_every, Ev::Stall { for_ms });
            }
            Ev::Unstall(id) => {
                self.w.stall(id, false, 0);
                if self.w.procs.iter().any(|p| p.id == id) {
                    self.wake.remove(&id);
                    self.drive_at(id, self.w.now);
                }
            }
            Ev::ActiveDies(pair) => {
                let resync = self.rng.range(500, 15_000);
                self.w.active_dies(pair, resync);
            }
            Ev::BreakCall(pair) => self.w.break_call(pair),
            Ev::FaultsStop => {
                self.faulting = false;
                self.w.note(|| "the faults stop".into());
                if !self.w.etcd.up {
                    self.w.set_etcd(true, 0);
                    self.wake_all();
                }
                let stalled: Vec<u32> = self
                    .w
                    .procs
                    .iter()
                    .filter(|p| p.stalled)
                    .map(|p| p.id)
                    .collect();
                for id in stalled {
                    self.handle(Ev::Unstall(id));
                }
                if self.w.procs.is_empty() && !self.w.ended() {
                    self.after(0, Ev::StartProcess);
                }
            }
        }
    }

    /// A campaign process's stall: mostly a few seconds, now and then a minute (a VM paused,
    /// `SIGSTOP`), long enough for a successor to run a pair's whole upgrade meanwhile.
    fn stall_length(&mut self) -> u64 {
        if self.rng.chance(30) {
            self.rng.range(3 * OWNER_TTL_MS, 60_000)
        } else {
            self.rng.range(1_000, 3 * OWNER_TTL_MS)
        }
    }

    fn outage_length(&mut self) -> u64 {
        if self.rng.chance(30) {
            self.rng.range(OWNER_TTL_MS, 60_000) // past the owner lease
        } else {
            self.rng.range(200, OWNER_TTL_MS)
        }
    }
}

/// Runs one seed.
pub fn run(options: &Options) -> Report {
    let mut rng = Rng::new(options.seed ^ 0xf1ee_7000);
    let pairs = options.pairs.max(1);
    let s = Scenario::draw(&mut rng, pairs);
    let width = pairs.to_string().len();
    let names: Vec<String> = (1..=pairs).map(|i| format!("p{i:0width$}")).collect();
    let config = Config {
        names,
        waves: s.waves.clone(),
        parallel: s.parallel,
        continue_on_rollback: s.continue_on_rollback,
        faulty: s.faulty.clone(),
        owner_ttl_ms: OWNER_TTL_MS,
        plant: options.plant,
    };
    let mut w = World::new(config, 0);
    w.trace_all = options.full_trace;
    let scenario = s.describe();
    w.note(|| format!("seed {}: {pairs} pairs, {scenario}", options.seed));
    let faults_until = s.faults_until;
    let rounds = pairs.div_ceil(s.parallel) as u64 + s.waves.sizes(pairs).len() as u64;
    // Once the faults stop the campaign must end; generously: every round at its slowest,
    // three times over, and ten minutes.
    let deadline = faults_until + 3 * rounds * 8 * PHASE_MS.1 + 600_000;
    let mut sim = Sim {
        w,
        rng,
        s,
        queue: BinaryHeap::new(),
        seq: 0,
        wake: BTreeMap::new(),
        faulting: true,
        outages: 0,
        step: 0,
    };
    let first = sim.w.procs[0].id;
    sim.drive_at(first, 0);
    let (outage, stall) = (sim.outage_length(), sim.stall_length());
    sim.schedule_fault(sim.s.outage_every, Ev::EtcdDown { for_ms: outage });
    sim.schedule_fault(sim.s.crash_every, Ev::Crash);
    sim.schedule_fault(sim.s.stall_every, Ev::Stall { for_ms: stall });
    let mut t = 0;
    while sim.s.death_every > 0 {
        t += sim.rng.range(sim.s.death_every / 10, sim.s.death_every * 2);
        if t >= faults_until {
            break;
        }
        let pair = sim.rng.range(0, pairs as u64) as usize;
        sim.at(t, Ev::ActiveDies(pair));
    }
    sim.at(faults_until, Ev::FaultsStop);
    while let Some(Reverse((t, _, ev))) = sim.queue.pop() {
        if t > deadline || sim.w.broken.is_some() {
            break;
        }
        sim.step += 1;
        sim.w.advance(t);
        sim.handle(ev);
        sim.effects();
    }
    if sim.w.broken.is_none() {
        sim.w.check_end();
    }
    let record = sim.w.etcd.campaign.clone();
    let count = |o: Outcome| record.as_ref().map_or(0, |r| r.count(o));
    let state = match record.as_ref().map(|r| &r.state) {
        Some(CampaignState::Completed) => "Completed".to_string(),
        Some(CampaignState::Stopped(why)) => format!("Stopped ({why})"),
        Some(CampaignState::Running) => "still Running".to_string(),
        None => "never written".to_string(),
    };
    let stats = sim.w.stats.clone();
    Report {
        seed: options.seed,
        pairs,
        digest: sim.w.digest,
        failure: sim.w.broken.clone(),
        step: sim.step,
        trace: std::mem::take(&mut sim.w.trace),
        scenario,
        state,
        upgraded: count(Outcome::Upgraded),
        rolled_back: count(Outcome::RolledBack),
        failed: count(Outcome::Failed),
        pending: count(Outcome::Pending),
        simulated_s: sim.w.now as f64 / 1e3,
        processes: stats.processes,
        gave_up: stats.processes_stepped_down,
        outages: sim.outages,
        failovers: stats.failovers,
        writes: stats.writes,
        asks: stats.asks,
    }
}

/// `tandem sim --fleet N`'s arguments.
pub struct Args {
    pub pairs: usize,
    pub seeds: u64,
    pub first_seed: u64,
    pub seed: Option<u64>,
    pub plant: Option<String>,
    pub trace: bool,
}

/// Runs what `args` asks for; true if no invariant was broken.
pub fn main(args: &Args) -> Result<bool, String> {
    let plant = args.plant.as_deref().map(Plant::parse).transpose()?;
    let flags = plant
        .map(|p| format!(" --plant {}", p.name()))
        .unwrap_or_default();
    let options = |seed| Options {
        plant,
        full_trace: args.trace,
        ..Options::new(seed, args.pairs)
    };
    let out = &mut std::io::stdout().lock();
    if let Some(seed) = args.seed {
        let report = run(&options(seed));
        if args.trace {
            for line in &report.trace {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(out, "{}", report.summary());
        if report.failure.is_some() {
            let _ = write!(out, "{}", report.explain(&flags, 40));
        }
        return Ok(report.failure.is_none());
    }
    let (mut completed, mut stopped) = (0u64, 0u64);
    let (mut upgraded, mut processes, mut outages, mut deaths) = (0u64, 0u64, 0u64, 0u64);
    let mut simulated = 0f64;
    let passed = super::cli::side_by_side(
        out,
        args.first_seed,
        args.seeds,
        |seed| {
            let mut r = run(&options(seed));
            if r.failure.is_none() {
                r.trace = Vec::new();
            }
            r
        },
        |r| r.failure.as_ref().map(|_| r.explain(&flags, 40)),
        |r| {
            completed += r.state.starts_with("Completed") as u64;
            stopped += r.state.starts_with("Stopped") as u64;
            upgraded += r.upgraded as u64;
            processes += r.processes as u64;
            outages += r.outages as u64;
            deaths += r.failovers;
            simulated += r.simulated_s;
        },
    );
    if let Some((done, secs)) = passed {
        let _ = writeln!(
            out,
            "all {done} seeds of {} pairs passed in {secs:.1} s: campaigns {completed} completed, {stopped} stopped; {upgraded} pair upgrades, {processes} campaign processes, {outages} etcd outages, {deaths} active engines died; {:.0} h simulated",
            args.pairs,
            simulated / 3600.0
        );
    }
    Ok(passed.is_some())
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    fn failing(seeds: std::ops::Range<u64>, pairs: usize, plant: Option<Plant>) -> Option<Report> {
        let reports: Vec<Report> = seeds
            .into_par_iter()
            .map(|seed| {
                run(&Options {
                    plant,
                    ..Options::new(seed, pairs)
                })
            })
            .collect();
        reports.into_iter().find(|r| r.failure.is_some())
    }

    /// 20 seeds of a 1,000-pair campaign with every fault: no invariant broken.
    #[test]
    fn fleet_campaigns_of_a_thousand_pairs_keep_every_invariant() {
        if let Some(r) = failing(0..20, 1000, None) {
            panic!("{}", r.explain("", 60));
        }
    }

    #[test]
    fn a_fleet_seed_replays_to_the_same_trace() {
        let a = run(&Options::new(7, 300));
        let b = run(&Options::new(7, 300));
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.trace, b.trace);
        assert_ne!(a.digest, run(&Options::new(8, 300)).digest);
    }

    fn caught(plant: Plant) -> Report {
        failing(0..200, 200, Some(plant))
            .unwrap_or_else(|| panic!("{} was not caught in 200 seeds", plant.name()))
    }

    /// Asking before the record that marks the pair Running is durable is seen.
    #[test]
    fn fleet_sim_catches_an_ask_before_the_record_is_durable() {
        let r = caught(Plant::AskBeforeDurable);
        assert_eq!(
            r.failure.as_ref().unwrap().0,
            "asked-before-durable",
            "{}",
            r.explain("", 20)
        );
    }

    /// A supervisor that publishes the tag only when the upgrade ends: a campaign whose call
    /// was cut (or a resumed one) cannot tell that the upgrade runs, asks again, and counts
    /// the pair failed once enough of those asks were lost.
    #[test]
    fn fleet_sim_catches_a_tag_recorded_after_the_start() {
        let r = caught(Plant::TagAtEnd);
        let name = r.failure.as_ref().unwrap().0;
        assert!(
            ["record-disagrees", "too-many-running"].contains(&name),
            "{}",
            r.explain("", 20)
        );
    }
}
