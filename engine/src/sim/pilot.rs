//! The supervisor, as the simulator runs it: a model of `supervisor.rs` that makes the same
//! decisions by the same rules, one call at a time (the real one awaits each call too).
//!
//! Its leases, failure detector (an exit at once, a hang after `hang_timeout` without a lease
//! answer), promotion only of a promotable standby (retried until it answers; `NOTREADY` makes
//! the pair unavailable), fencing of a hung active, restarts of a lost standby, checks of the
//! standby every ten ticks, planned switchovers with the lost-answer rules, and the rolling
//! upgrade of figure 6, driven towards a goal so that a failover in the middle of it does not
//! derail it: both engines on 2.0 and the features enabled, or, after a rejected evaluation,
//! both back on 1.0.

use std::collections::VecDeque;

use crate::contract::{self, Code};
use crate::node::EngineStatus;
use crate::rules::{
    AdoptStandby, Adoption, AfterLease, Lost, NoPromotable, OnExit, PromoteAnswer, Rules, Said,
};
use crate::rules::{StandbyCheck, StandbyVerdict, SwitchoverUnanswered, Toward};
use crate::sessions::AppVersion;
use crate::supervisor::{CallError, Timing};

use super::{Answer, World, CLOCK_ORIGIN_NS, MS, NAMES};

const TICK: u64 = 50 * MS;
const STANDBY_CHECK_TICKS: u64 = 10;
const STANDBY_CHECK_TIMEOUT: u64 = 100 * MS;
const CALL_TIMEOUT: u64 = 2_000 * MS;
const SWITCHOVER_TIMEOUT: u64 = 30_000 * MS;
const EVALUATION: u64 = 1_000 * MS;

/// What to do with the answer of the call in flight.
enum Then {
    Boot,
    Lease,
    Promote,
    /// Nothing was ever acknowledged: the other engine, whatever it holds.
    ForcePromote,
    Follow(usize),
    StandbyStatus,
    StandbyFollow,
    /// Both engines' statuses, asked one after the other.
    Resync(Vec<Option<EngineStatus>>),
    Switchover {
        from: usize,
        epoch: u64,
    },
    SwitchoverCheck {
        from: usize,
        epoch: u64,
        error: CallError,
    },
    Degrade(usize, AppVersion),
    Shutdown(usize, AppVersion),
    Enable,
    /// After a failed switchover: the old active, in a new epoch; then the standby follows it.
    Retake {
        from: usize,
    },
    /// A restarted supervisor asks each engine's status in turn (and whether it is hung).
    Adopt(Vec<(Option<EngineStatus>, bool)>),
}

enum Task {
    Exited(usize),
    Switchover,
}

#[derive(Clone)]
pub struct Upgrade {
    accept: bool,
    rolling_back: bool,
    eval_until: Option<u64>,
    evaluated: bool,
}

/// What the supervisor keeps on disk (`PairState`), as of its last step.
#[derive(Clone)]
struct Persisted {
    epoch: u64,
    active: usize,
    promotable: bool,
    released_any: bool,
    unavailable: Option<String>,
    upgrade: Option<Upgrade>,
    upgrade_outcome: Option<String>,
}

pub struct Pilot {
    /// The supervisor's own rules: this file only makes the calls they ask for.
    pub rules: Rules,
    persisted: Persisted,
    /// The supervisor process is down (crashed) until then; it restarts from `persisted`.
    down_until: Option<u64>,
    expected_exit: [bool; 2],
    /// The call in flight: its id, the engine called, what to do with its answer.
    busy: Option<(u64, usize, Then)>,
    tasks: VecDeque<Task>,
    next_tick: u64,
    ticks: u64,
    booted: bool,
    pub upgrade: Option<Upgrade>,
    pub upgrade_outcome: Option<String>,
}

/// A simulated call's answer as the supervisor's calls give it.
fn outcome(r: Option<Result<String, String>>) -> Result<String, CallError> {
    match r {
        None => Err(CallError::NoAnswer("no answer".into())),
        Some(Err(e)) => Err(CallError::Refused(Code::of(&e), e)),
        Some(Ok(text)) => Ok(text),
    }
}

fn status(i: usize, r: Option<Result<String, String>>) -> Result<EngineStatus, CallError> {
    let json = outcome(r)?;
    contract::decode::<EngineStatus>(NAMES[i], json.as_bytes()).map_err(CallError::Garbled)
}

impl Pilot {
    pub fn new() -> Pilot {
        Pilot {
            rules: Rules::new(Timing::default()),
            persisted: Persisted {
                epoch: 0,
                active: 0,
                promotable: false,
                released_any: false,
                unavailable: None,
                upgrade: None,
                upgrade_outcome: None,
            },
            down_until: None,
            expected_exit: [false; 2],
            busy: None,
            tasks: VecDeque::new(),
            next_tick: TICK,
            ticks: 0,
            booted: false,
            upgrade: None,
            upgrade_outcome: None,
        }
    }

    pub fn next_at(&self) -> u64 {
        self.down_until.unwrap_or(self.next_tick)
    }

    /// The supervisor process dies: what it had in memory (its call in flight, the exits it
    /// had not handled yet, pending promotions, fencing) is gone; it restarts after `down`
    /// from what it persisted, and adopts the engines as `Supervisor::adopt` does.
    pub fn crash(&mut self, w: &mut World, down: u64) {
        if self.down_until.is_some() || !self.booted {
            return;
        }
        w.note(format!(
            "nemesis: crash the supervisor for {} ms",
            down / MS
        ));
        self.down_until = Some(w.now + down);
        self.busy = None;
        self.tasks.clear();
    }

    /// The supervisor starts again over its predecessor's engines.
    fn restart(&mut self, w: &mut World) {
        w.note("supervisor: restarted: adopting the engines".into());
        let p = self.persisted.clone();
        self.rules = Rules::new(Timing::default());
        self.rules.epoch = p.epoch;
        self.rules.active = p.active;
        self.rules.promotable = p.promotable;
        self.rules.released_any = p.released_any;
        self.rules.unavailable = p.unavailable;
        self.upgrade = p.upgrade;
        self.upgrade_outcome = p.upgrade_outcome;
        self.adopt(w, Vec::new());
    }

    /// Asks the next engine's status; one not running is gone without a call.
    fn adopt(&mut self, w: &mut World, mut statuses: Vec<(Option<EngineStatus>, bool)>) {
        while statuses.len() < 2 && !self.running(w, statuses.len()) {
            statuses.push((None, false));
        }
        if statuses.len() < 2 {
            let i = statuses.len();
            return self.send(
                w,
                i,
                &["TANDEM.STATUS"],
                CALL_TIMEOUT,
                Then::Adopt(statuses),
            );
        }
        let sts = [statuses[0].0.as_ref(), statuses[1].0.as_ref()];
        match self.rules.adopt(sts, [statuses[0].1, statuses[1].1]) {
            Adoption::NoEngine => self.rules.refuse_writes(
                "both engines were gone when the supervisor started, and there is no journal: the data is gone".into(),
            ),
            Adoption::Active(standby) => {
                let s = self.rules.standby();
                w.note(format!(
                    "supervisor: adopted {} as the active at epoch {}",
                    NAMES[self.rules.active], self.rules.epoch
                ));
                match standby {
                    AdoptStandby::Fine | AdoptStandby::Fenced => {}
                    AdoptStandby::Restart => self.restart_standby(w, s),
                    AdoptStandby::Follow => self.follow(w, s),
                }
            }
            Adoption::Retake { epoch } => {
                let (a, e) = (self.rules.active, epoch.to_string());
                w.note(format!("supervisor: {} was left behind epoch {}", NAMES[a], epoch - 1));
                let then = Then::Retake { from: a };
                self.send(w, a, &["TANDEM.PROMOTE", &e], CALL_TIMEOUT, then);
            }
            Adoption::ActiveLost {
                dead,
                cause,
                exited,
            } => self.active_lost(w, dead, cause, exited),
        }
    }

    pub fn unavailable(&self) -> Option<&String> {
        self.rules.unavailable.as_ref()
    }

    fn running(&self, w: &World, i: usize) -> bool {
        w.engine(i).is_some()
    }

    /// The pidfd of engine `i` became readable: it exited.
    pub fn exited(&mut self, i: usize) {
        if self.down_until.is_none() {
            self.tasks.push_back(Task::Exited(i)); // else found gone when it adopts
        }
    }

    /// An operator's `tandem switchover`; one sent while the supervisor is down is taken by
    /// its successor (the CLI retries until it connects).
    pub fn request_switchover(&mut self) {
        self.tasks.push_back(Task::Switchover);
    }

    pub fn start_upgrade(&mut self, w: &mut World) {
        if self.upgrade.is_none() && self.upgrade_outcome.is_none() {
            let accept = w.rng.chance(75);
            w.note(format!(
                "upgrade to 2.0 begins (its evaluation will {})",
                if accept { "pass" } else { "fail" }
            ));
            self.upgrade = Some(Upgrade {
                accept,
                rolling_back: false,
                eval_until: None,
                evaluated: false,
            });
        }
    }

    fn send(&mut self, w: &mut World, i: usize, args: &[&str], timeout: u64, then: Then) {
        let id = w.call(i, args.iter().map(|a| a.to_string()).collect(), timeout);
        self.busy = Some((id, i, then));
    }

    /// What the rules said: epochs granted are what the history checks acknowledgements
    /// against; the rest goes to the trace.
    fn heed(&mut self, w: &mut World) {
        for said in self.rules.take_said() {
            match said {
                Said::Granted(epoch) => w.history.granted = w.history.granted.max(epoch),
                Said::Promotable(promotable, why) => w.note(format!(
                    "supervisor: {} ({why})",
                    if promotable {
                        "standby in sync"
                    } else {
                        "no standby in sync"
                    }
                )),
                Said::Released => {}
                Said::Unavailable(why) => {
                    w.note(format!("supervisor: PAIR UNAVAILABLE: {why}"));
                    if self.upgrade.take().is_some() {
                        self.upgrade_outcome = Some("abandoned: the pair is unavailable".into());
                    }
                }
            }
        }
    }

    /// One turn: the answer to the call in flight, then queued tasks, then the tick.
    pub fn step(&mut self, w: &mut World) {
        if let Some(until) = self.down_until {
            w.take_answers(); // to a process that is gone
            if w.now < until {
                return;
            }
            self.down_until = None;
            self.next_tick = w.now + TICK;
            self.restart(w);
        }
        if !self.booted {
            self.booted = true;
            w.start(0, AppVersion::V1_0);
            w.start(1, AppVersion::V1_0);
            self.boot(w);
        }
        for answer in w.take_answers() {
            if self
                .busy
                .as_ref()
                .is_some_and(|(id, _, _)| *id == answer.id)
            {
                let (_, engine, then) = self.busy.take().expect("checked");
                if answer.result.is_some() {
                    self.rules.heard(engine, w.now);
                }
                self.answered(w, then, answer);
            }
        }
        while self.busy.is_none() {
            let Some(task) = self.tasks.pop_front() else {
                break;
            };
            match task {
                Task::Exited(i) => self.on_exit(w, i),
                Task::Switchover => self.switchover(w),
            }
        }
        if w.now >= self.next_tick {
            self.next_tick += TICK;
            if self.busy.is_none() {
                self.tick(w);
            }
        }
        self.heed(w);
        self.persisted = Persisted {
            epoch: self.rules.epoch,
            active: self.rules.active,
            promotable: self.rules.promotable,
            released_any: self.rules.released_any,
            unavailable: self.rules.unavailable.clone(),
            upgrade: self.upgrade.clone(),
            upgrade_outcome: self.upgrade_outcome.clone(),
        };
    }

    fn boot(&mut self, w: &mut World) {
        let epoch = self.rules.grant().to_string();
        self.send(w, 0, &["TANDEM.PROMOTE", &epoch], CALL_TIMEOUT, Then::Boot);
    }

    fn tick(&mut self, w: &mut World) {
        self.ticks += 1;
        if self.rules.promotion.is_some() {
            return self.try_promotion(w);
        }
        if self.rules.unavailable.is_some() {
            return;
        }
        self.renew_lease(w);
    }

    fn renew_lease(&mut self, w: &mut World) {
        let active = self.rules.active;
        if !self.running(w, active) || self.rules.promotion.is_some() {
            return;
        }
        let mode = self.rules.lease_mode();
        let timeout = self.rules.timing.hang_timeout.as_nanos() as u64 / 2;
        self.lease(w, active, mode, timeout, Then::Lease);
    }

    /// A lease of this epoch to engine `i`, stamped now.
    fn lease(&mut self, w: &mut World, i: usize, mode: &str, timeout: u64, then: Then) {
        let stamp = (CLOCK_ORIGIN_NS + w.now).to_string();
        let (epoch, ttl) = (
            self.rules.epoch.to_string(),
            self.rules.timing.lease_ttl.as_millis().to_string(),
        );
        let args = ["TANDEM.LEASE", &epoch, &stamp, &ttl, mode];
        self.send(w, i, &args, timeout, then);
    }

    /// After the lease: the failure detector, the standby, the upgrade.
    fn after_lease(&mut self, w: &mut World) {
        let active = self.rules.active;
        if let Some(cause) = self.rules.active_hung(self.running(w, active), w.now) {
            return self.active_lost(w, active, cause, false);
        }
        if self.ticks.is_multiple_of(STANDBY_CHECK_TICKS) {
            return self.check_standby(w);
        }
        self.advance_upgrade(w);
    }

    fn answered(&mut self, w: &mut World, then: Then, answer: Answer) {
        let r = answer.result;
        match then {
            Then::Boot => match r {
                Some(Ok(_)) => {
                    self.rules.started(0, w.now);
                    self.rules.started(1, w.now);
                    self.follow(w, 1);
                }
                _ => self.boot(w),
            },
            Then::Lease => {
                let active = self.rules.active;
                let st = status(active, r);
                match self.rules.lease_answered(st.as_ref()) {
                    AfterLease::RenewSimplex => self.renew_lease(w),
                    AfterLease::Resync => {
                        w.note("supervisor: lease refused (stale epoch): resync".into());
                        self.resync(w, Vec::new());
                    }
                    AfterLease::Fine => self.after_lease(w),
                }
            }
            Then::Promote => match self
                .rules
                .promote_answered(outcome(r).map(drop).as_ref().copied())
            {
                PromoteAnswer::Promoted => self.promoted(w),
                PromoteAnswer::NotReady(cause) => {
                    let dead = self.rules.standby();
                    self.no_promotable(w, dead, cause);
                }
                PromoteAnswer::Stale => self.rules.regrant(0),
                PromoteAnswer::Retry => {}
            },
            Then::ForcePromote => match outcome(r) {
                Ok(_) => self.promoted(w),
                Err(e) => self.rules.force_promote_failed(&e),
            },
            Then::Follow(i) => {
                if let Some(Ok(_)) = r {
                    if self.rules.fenced[i] {
                        w.note(format!(
                            "supervisor: {} answers again and follows",
                            NAMES[i]
                        ));
                    }
                    self.rules.followed(i);
                } else {
                    self.rules.follow_failed(i);
                }
            }
            Then::StandbyFollow => {
                let followed = outcome(r).map(drop);
                if followed.is_ok() {
                    let i = self.rules.standby();
                    w.note(format!(
                        "supervisor: {} answers again and follows",
                        NAMES[i]
                    ));
                    self.rules.followed(i);
                }
                self.standby_checked(w, followed.as_ref().map(|_| None));
            }
            Then::StandbyStatus => {
                let st = status(self.rules.standby(), r);
                self.standby_checked(w, st.as_ref().map(Some));
            }
            Then::Resync(mut statuses) => {
                statuses.push(status(statuses.len(), r).ok());
                if statuses.len() < 2 {
                    return self.resync(w, statuses);
                }
                if let Some(i) = self
                    .rules
                    .resynced([statuses[0].as_ref(), statuses[1].as_ref()])
                {
                    w.note(format!("supervisor: resync adopts {}", NAMES[i]));
                }
            }
            Then::Switchover { from, epoch } => match outcome(r) {
                Ok(_) => {
                    let to = 1 - from;
                    self.rules.switched_over(to, true, w.now);
                    w.note(format!(
                        "supervisor: switched over to {} at epoch {epoch}",
                        NAMES[to]
                    ));
                    self.renew_lease(w);
                }
                Err(error) => {
                    let then = Then::SwitchoverCheck { from, epoch, error };
                    self.send(w, 1 - from, &["TANDEM.STATUS"], CALL_TIMEOUT, then);
                }
            },
            Then::SwitchoverCheck { from, epoch, error } => {
                let to = 1 - from;
                let st = status(to, r);
                match self
                    .rules
                    .switchover_unanswered(from, epoch, &error, st.as_ref(), w.now)
                {
                    SwitchoverUnanswered::Adopt => {
                        w.note(format!(
                            "supervisor: switchover answer lost, {} is active",
                            NAMES[to]
                        ));
                        self.rules.switched_over(to, false, w.now);
                        self.follow(w, from);
                    }
                    SwitchoverUnanswered::Promote => w.note(format!(
                        "supervisor: switchover unconfirmed: promoting {}",
                        NAMES[to]
                    )),
                    SwitchoverUnanswered::Retake { epoch } => {
                        w.note("supervisor: switchover failed".into());
                        let e = epoch.to_string();
                        let then = Then::Retake { from };
                        self.send(w, from, &["TANDEM.PROMOTE", &e], CALL_TIMEOUT, then);
                    }
                }
            }
            Then::Degrade(i, version) => match r {
                Some(Ok(_)) => self.send(
                    w,
                    i,
                    &["TANDEM.SHUTDOWN"],
                    CALL_TIMEOUT,
                    Then::Shutdown(i, version),
                ),
                _ => w.note(format!(
                    "supervisor: degrade lease refused: {} stays",
                    NAMES[i]
                )),
            },
            Then::Shutdown(i, version) => {
                if self.running(w, i) {
                    self.expected_exit[i] = true;
                    w.crash(i); // the process exits after TANDEM.SHUTDOWN (or is killed)
                    self.expected_exit[i] = false;
                }
                if self.running(w, self.rules.active) && self.rules.unavailable.is_none() {
                    self.start(w, i, version);
                }
            }
            Then::Retake { from } => match r {
                Some(Ok(_)) => {
                    self.rules.retaken(from, w.now);
                    w.note(format!(
                        "supervisor: {} retakes epoch {}",
                        NAMES[from], self.rules.epoch
                    ));
                    let to = 1 - from;
                    if self.running(w, to) {
                        self.follow(w, to);
                        self.rules.follow_failed(to); // until the follow is answered
                    } else {
                        self.restart_standby(w, to);
                    }
                }
                other => {
                    // Its next lease, in the new epoch, would step it down: it is lost.
                    let e = outcome(other)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    let cause = format!("{} did not take its epoch back ({e})", NAMES[from]);
                    self.active_lost(w, from, cause, false);
                }
            },
            Then::Adopt(mut statuses) => {
                let i = statuses.len();
                let st = status(i, r).ok();
                let hung = st.is_none() && self.running(w, i);
                statuses.push((st, hung));
                self.adopt(w, statuses);
            }
            Then::Enable => match r {
                Some(Ok(_)) => {
                    w.note("supervisor: new features enabled: upgrade completed".into());
                    self.upgrade = None;
                    self.upgrade_outcome = Some("completed".into());
                }
                other => w.note(format!("supervisor: enabling features failed: {other:?}")),
            },
        }
    }

    fn standby_checked(
        &mut self,
        w: &mut World,
        answer: Result<Option<&EngineStatus>, &CallError>,
    ) {
        match self.rules.standby_checked(answer, w.now) {
            StandbyVerdict::Resync => return self.resync(w, Vec::new()),
            StandbyVerdict::Kill(why) => {
                w.note(format!("supervisor: {why}: killing it"));
                let standby = self.rules.standby();
                w.crash(standby);
                self.exited(standby);
            }
            StandbyVerdict::Fine => {}
        }
        self.advance_upgrade(w);
    }

    fn follow(&mut self, w: &mut World, i: usize) {
        let a = self.rules.active;
        let args = [
            "TANDEM.FOLLOW".to_string(),
            format!("{}.replication", NAMES[a]),
            self.rules.epoch.to_string(),
            format!("{}.client", NAMES[a]),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.send(w, i, &args, CALL_TIMEOUT, Then::Follow(i));
    }

    /// Engine `i` starts, following the active.
    fn start(&mut self, w: &mut World, i: usize, version: AppVersion) {
        w.start(i, version);
        self.rules.started(i, w.now);
        self.follow(w, i);
    }

    /// Asks the engines' statuses in turn, from `statuses.len()`.
    fn resync(&mut self, w: &mut World, statuses: Vec<Option<EngineStatus>>) {
        let i = statuses.len();
        self.send(
            w,
            i,
            &["TANDEM.STATUS"],
            CALL_TIMEOUT,
            Then::Resync(statuses),
        );
    }

    fn check_standby(&mut self, w: &mut World) {
        let standby = self.rules.standby();
        match self.rules.standby_check(self.running(w, standby)) {
            StandbyCheck::Nothing => self.advance_upgrade(w),
            StandbyCheck::Follow(i) => {
                self.follow(w, i);
                if let Some((_, _, then)) = self.busy.as_mut() {
                    *then = Then::StandbyFollow;
                }
            }
            StandbyCheck::Status(i) => {
                let args = ["TANDEM.STATUS"];
                self.send(w, i, &args, STANDBY_CHECK_TIMEOUT, Then::StandbyStatus);
            }
        }
    }

    fn on_exit(&mut self, w: &mut World, i: usize) {
        match self.rules.exited(i, self.expected_exit[i]) {
            OnExit::Expected | OnExit::Quiet => {}
            OnExit::ActiveLost(cause) => self.active_lost(w, i, cause, true),
            OnExit::TargetLost(cause) => {
                let dead = self.rules.active;
                self.no_promotable(w, dead, cause);
            }
            OnExit::RestartStandby => self.restart_standby(w, i),
        }
    }

    fn restart_standby(&mut self, w: &mut World, i: usize) {
        if !self.running(w, self.rules.active) || self.rules.unavailable.is_some() {
            return;
        }
        self.rules
            .set_promotable(false, &format!("{} restarts empty", NAMES[i]));
        let version = w.nodes[i].version;
        self.start(w, i, version);
    }

    fn active_lost(&mut self, w: &mut World, dead: usize, cause: String, exited: bool) {
        w.note(format!("supervisor: active lost: {cause}"));
        let other_running = self.running(w, 1 - dead);
        match self
            .rules
            .active_lost(dead, cause, exited, other_running, w.now)
        {
            Lost::Promote => self.try_promotion(w),
            Lost::NoPromotable(cause) => self.no_promotable(w, dead, cause),
        }
    }

    fn try_promotion(&mut self, w: &mut World) {
        let Some((target, args)) = self.rules.promotion_attempt() else {
            return;
        };
        let timeout = (self.rules.timing.hang_timeout.as_nanos() as u64).max(200 * MS);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.send(w, target, &args, timeout, Then::Promote);
    }

    fn promoted(&mut self, w: &mut World) {
        let Some(p) = self.rules.promoted(w.now) else {
            return;
        };
        w.note(format!(
            "supervisor: failover: {} promoted at epoch {}",
            NAMES[p.target], p.epoch
        ));
        let dead = 1 - p.target;
        if self.running(w, dead) {
            self.renew_lease(w);
        } else {
            self.restart_standby(w, dead);
        }
    }

    fn no_promotable(&mut self, w: &mut World, dead: usize, cause: String) {
        let other_running = self.running(w, 1 - dead);
        let decision = self
            .rules
            .no_promotable(dead, cause, false, other_running, w.now);
        match decision {
            NoPromotable::ForcePromote { epoch } => {
                if self.running(w, dead) {
                    self.expected_exit[dead] = true;
                    w.crash(dead);
                    self.expected_exit[dead] = false;
                }
                let e = epoch.to_string();
                let args = ["TANDEM.PROMOTE", &e, "FORCE"];
                self.send(w, 1 - dead, &args, CALL_TIMEOUT, Then::ForcePromote);
            }
            NoPromotable::Unavailable => {}
            NoPromotable::Recover => unreachable!("the simulated engines keep no journal"),
        }
    }

    /// A planned switchover, if the standby is promotable.
    fn switchover(&mut self, w: &mut World) {
        let Ok(epoch) = self.rules.begin_switchover() else {
            return;
        };
        let (from, to) = (self.rules.active, self.rules.standby());
        w.note(format!(
            "supervisor: switchover {} -> {} at epoch {epoch}",
            NAMES[from], NAMES[to]
        ));
        let e = epoch.to_string();
        let then = Then::Switchover { from, epoch };
        let args = ["TANDEM.SWITCHOVER", &e];
        self.send(w, from, &args, SWITCHOVER_TIMEOUT, then);
    }

    /// One move of the upgrade towards its goal, from the pair's real state.
    fn advance_upgrade(&mut self, w: &mut World) {
        if self.rules.unavailable.is_some() || self.rules.promotion.is_some() || self.busy.is_some()
        {
            return;
        }
        let Some(up) = self.upgrade.as_mut() else {
            return;
        };
        let target = if up.rolling_back {
            AppVersion::V1_0
        } else {
            AppVersion::V2_0
        };
        let (a, s) = (self.rules.active, self.rules.standby());
        if let Some(until) = up
            .eval_until
            .filter(|_| w.nodes[a].version == AppVersion::V2_0)
        {
            if w.now < until {
                return;
            }
            up.eval_until = None;
            up.evaluated = true;
            if !up.accept {
                w.note("upgrade: evaluation failed: falling back to 1.0".into());
                up.rolling_back = true;
                return;
            }
            w.note("upgrade: evaluation passed".into());
        }
        let on_target = [w.nodes[0].version == target, w.nodes[1].version == target];
        let standby_running = w.engine(s).is_some();
        match self.rules.toward(on_target, standby_running) {
            // Restarted by the failure handling, with the version it ran.
            Toward::ReloadStandby if !standby_running => return,
            Toward::ReloadStandby => {
                // Take the standby out of service and reload it with the target version.
                w.note(format!(
                    "upgrade: reloading {} with {}",
                    NAMES[s],
                    target.as_str()
                ));
                let why = format!("{} is being stopped", NAMES[s]);
                self.rules.set_promotable(false, &why);
                return self.lease(w, a, "degrade", CALL_TIMEOUT, Then::Degrade(s, target));
            }
            Toward::AwaitStandby => return,
            Toward::Switchover => {
                if !up.rolling_back && !up.evaluated {
                    up.eval_until = Some(w.now + EVALUATION);
                }
                return self.switchover(w);
            }
            Toward::Settled => {}
        }
        if up.rolling_back {
            w.note("upgrade: rolled back".into());
            self.upgrade = None;
            self.upgrade_outcome = Some("rolled_back".into());
            return;
        }
        self.send(
            w,
            a,
            &["TANDEM.FEATURES.ENABLE"],
            CALL_TIMEOUT,
            Then::Enable,
        );
    }
}
