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
use crate::node::{EngineStatus, Role};
use crate::sessions::AppVersion;
use crate::supervisor::Timing;

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
    Promote {
        target: usize,
        epoch: u64,
        dead: usize,
    },
    Follow(usize),
    StandbyStatus(usize),
    Resync(usize),
    Switchover {
        from: usize,
        to: usize,
        epoch: u64,
    },
    SwitchoverCheck {
        from: usize,
        to: usize,
        epoch: u64,
        lost: bool,
    },
    Degrade(usize, AppVersion),
    Shutdown(usize, AppVersion),
    Enable,
    /// After a failed switchover: the old active, in a new epoch; then the standby follows it.
    Retake {
        from: usize,
        to: usize,
    },
}

enum Task {
    Exited(usize),
    Switchover,
}

struct Promotion {
    target: usize,
    epoch: u64,
}

pub struct Upgrade {
    accept: bool,
    rolling_back: bool,
    eval_until: Option<u64>,
    evaluated: bool,
}

pub struct Pilot {
    timing: Timing,
    pub epoch: u64,
    pub active: usize,
    pub promotable: bool,
    released_any: bool,
    fenced: [bool; 2],
    last_answer: [u64; 2],
    expected_exit: [bool; 2],
    pub unavailable: Option<String>,
    promotion: Option<Promotion>,
    busy: Option<(u64, Then)>,
    tasks: VecDeque<Task>,
    next_tick: u64,
    ticks: u64,
    booted: bool,
    pub upgrade: Option<Upgrade>,
    pub upgrade_outcome: Option<String>,
    promote_stale: bool,
}

impl Pilot {
    pub fn new(promote_stale: bool) -> Pilot {
        Pilot {
            timing: Timing::default(),
            epoch: 0,
            active: 0,
            promotable: false,
            released_any: false,
            fenced: [false; 2],
            last_answer: [0; 2],
            expected_exit: [false; 2],
            unavailable: None,
            promotion: None,
            busy: None,
            tasks: VecDeque::new(),
            next_tick: TICK,
            ticks: 0,
            booted: false,
            upgrade: None,
            upgrade_outcome: None,
            promote_stale,
        }
    }

    pub fn next_at(&self) -> u64 {
        self.next_tick
    }

    fn standby(&self) -> usize {
        1 - self.active
    }

    /// The pidfd of engine `i` became readable: it exited.
    pub fn exited(&mut self, i: usize) {
        self.tasks.push_back(Task::Exited(i));
    }

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
        self.busy = Some((id, then));
    }

    fn grant(&mut self, w: &mut World) -> u64 {
        self.epoch += 1;
        w.history.granted = w.history.granted.max(self.epoch);
        self.epoch
    }

    fn set_promotable(&mut self, w: &mut World, promotable: bool, why: &str) {
        if self.promotable != promotable {
            self.promotable = promotable;
            w.note(format!(
                "supervisor: {} ({why})",
                if promotable {
                    "standby in sync"
                } else {
                    "no standby in sync"
                }
            ));
        }
    }

    /// One turn: the answer to the call in flight, then queued tasks, then the tick.
    pub fn step(&mut self, w: &mut World) {
        if !self.booted {
            self.booted = true;
            w.start(0, AppVersion::V1_0);
            w.start(1, AppVersion::V1_0);
            let epoch = self.grant(w).to_string();
            self.send(w, 0, &["TANDEM.PROMOTE", &epoch], CALL_TIMEOUT, Then::Boot);
        }
        for answer in w.take_answers() {
            if self.busy.as_ref().is_some_and(|(id, _)| *id == answer.id) {
                let (_, then) = self.busy.take().expect("checked");
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
    }

    fn tick(&mut self, w: &mut World) {
        self.ticks += 1;
        if self.promotion.is_some() {
            return self.try_promotion(w);
        }
        if self.unavailable.is_some() {
            return;
        }
        self.renew_lease(w);
    }

    fn renew_lease(&mut self, w: &mut World) {
        let active = self.active;
        if w.engine(active).is_none() || self.promotion.is_some() {
            return;
        }
        let mode = if self.promotable { "sync" } else { "simplex" };
        let timeout = self.timing.hang_timeout.as_nanos() as u64 / 2;
        self.lease(w, active, mode, timeout, Then::Lease);
    }

    /// A lease of this epoch to engine `i`, stamped now.
    fn lease(&mut self, w: &mut World, i: usize, mode: &str, timeout: u64, then: Then) {
        let stamp = (CLOCK_ORIGIN_NS + w.now).to_string();
        let (epoch, ttl) = (
            self.epoch.to_string(),
            self.timing.lease_ttl.as_millis().to_string(),
        );
        let args = ["TANDEM.LEASE", &epoch, &stamp, &ttl, mode];
        self.send(w, i, &args, timeout, then);
    }

    /// After the lease: the failure detector, the standby, the upgrade.
    fn after_lease(&mut self, w: &mut World) {
        let active = self.active;
        let silent = w.now - self.last_answer[active];
        if w.engine(active).is_some() && silent >= self.timing.hang_timeout.as_nanos() as u64 {
            let cause = format!("{} answered no lease for {} ms", NAMES[active], silent / MS);
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
                    self.last_answer = [w.now; 2];
                    self.follow(w, 1);
                }
                _ => {
                    let epoch = self.grant(w).to_string();
                    self.send(w, 0, &["TANDEM.PROMOTE", &epoch], CALL_TIMEOUT, Then::Boot);
                }
            },
            Then::Lease => {
                let active = self.active;
                match r {
                    Some(Ok(json)) => {
                        self.last_answer[active] = w.now;
                        match contract::decode::<EngineStatus>(NAMES[active], json.as_bytes()) {
                            Ok(st) => {
                                self.released_any |= st.seq_released > 0;
                                let was = self.promotable;
                                let why = "the active's lease answer";
                                self.set_promotable(w, st.standby_in_sync, why);
                                if was && !self.promotable {
                                    return self.renew_lease(w); // simplex at once
                                }
                            }
                            Err(_) => self.set_promotable(w, false, "a garbled status"),
                        }
                    }
                    Some(Err(e)) if Code::of(&e) == Code::StaleEpoch => {
                        w.note(format!("supervisor: lease refused ({e}): resync"));
                        return self.resync(w, 0);
                    }
                    _ => {}
                }
                self.after_lease(w);
            }
            Then::Promote {
                target,
                epoch,
                dead,
            } => match r {
                Some(Ok(_)) => self.promoted(w, target, epoch, dead),
                Some(Err(e)) if Code::of(&e) == Code::NotReady => {
                    self.promotion = None;
                    let cause = format!("{} refused to be promoted: {e}", NAMES[target]);
                    self.no_promotable(w, dead, cause);
                }
                Some(Err(e)) if Code::of(&e) == Code::StaleEpoch => {
                    let epoch = self.grant(w);
                    if let Some(p) = self.promotion.as_mut() {
                        p.epoch = epoch;
                    }
                }
                _ => {} // retried on the next tick
            },
            Then::Follow(i) => {
                if let Some(Ok(_)) = r {
                    self.last_answer[i] = w.now;
                    if self.fenced[i] {
                        w.note(format!(
                            "supervisor: {} answers again and follows",
                            NAMES[i]
                        ));
                    }
                    self.fenced[i] = false;
                }
            }
            Then::StandbyStatus(i) => {
                let status = match r {
                    Some(Ok(json)) => {
                        contract::decode::<EngineStatus>(NAMES[i], json.as_bytes()).ok()
                    }
                    _ => None,
                };
                match status {
                    Some(st) => {
                        self.last_answer[i] = w.now;
                        if st.role == Role::Active && st.epoch >= self.epoch {
                            return self.resync(w, 0);
                        }
                    }
                    None => {
                        let silent = w.now - self.last_answer[i];
                        if silent >= self.timing.hung_kill_after.as_nanos() as u64 {
                            w.note(format!("supervisor: {} silent: killing it", NAMES[i]));
                            w.crash(i);
                            self.exited(i);
                        }
                    }
                }
                self.advance_upgrade(w);
            }
            Then::Resync(i) => {
                if let Some(Ok(json)) = r {
                    if let Ok(st) = contract::decode::<EngineStatus>(NAMES[i], json.as_bytes()) {
                        self.epoch = self.epoch.max(st.epoch);
                        w.history.granted = w.history.granted.max(self.epoch);
                        let other = 1 - i;
                        if st.role == Role::Active && i != self.active && st.epoch >= self.epoch {
                            w.note(format!("supervisor: resync adopts {}", NAMES[i]));
                            self.active = i;
                            self.fenced[i] = false;
                            self.fenced[other] = true;
                            self.set_promotable(w, false, "resynced with the engines");
                        }
                    }
                }
                if i == 0 {
                    self.resync(w, 1);
                }
            }
            Then::Switchover { from, to, epoch } => match r {
                Some(Ok(_)) => {
                    self.active = to;
                    self.last_answer[to] = w.now;
                    w.note(format!(
                        "supervisor: switched over to {} at epoch {epoch}",
                        NAMES[to]
                    ));
                    self.renew_lease(w);
                }
                other => {
                    let lost = other.is_none();
                    let args = ["TANDEM.STATUS"];
                    let then = Then::SwitchoverCheck {
                        from,
                        to,
                        epoch,
                        lost,
                    };
                    self.send(w, to, &args, CALL_TIMEOUT, then);
                }
            },
            Then::SwitchoverCheck {
                from,
                to,
                epoch,
                lost,
            } => {
                let st = match r {
                    Some(Ok(json)) => {
                        contract::decode::<EngineStatus>(NAMES[to], json.as_bytes()).ok()
                    }
                    _ => None,
                };
                match st {
                    Some(st) if st.role == Role::Active && st.epoch == epoch => {
                        w.note(format!(
                            "supervisor: switchover answer lost, {} is active",
                            NAMES[to]
                        ));
                        self.active = to;
                        self.last_answer[to] = w.now;
                        self.set_promotable(w, false, "switched over without an answer");
                        self.follow(w, from);
                    }
                    None if lost => {
                        w.note(format!(
                            "supervisor: switchover unconfirmed: promoting {}",
                            NAMES[to]
                        ));
                        self.fenced[from] = true;
                        self.promotion = Some(Promotion { target: to, epoch });
                    }
                    _ => {
                        w.note("supervisor: switchover failed".into());
                        // As `Supervisor::retake`: the old active, in an epoch above the
                        // switchover's, and the standby follows it (seed 198).
                        let epoch = self.grant(w).to_string();
                        let then = Then::Retake { from, to };
                        self.send(w, from, &["TANDEM.PROMOTE", &epoch], CALL_TIMEOUT, then);
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
                if w.engine(i).is_some() {
                    self.expected_exit[i] = true;
                    w.crash(i); // the process exits after TANDEM.SHUTDOWN (or is killed)
                    self.expected_exit[i] = false;
                }
                if w.engine(self.active).is_some() && self.unavailable.is_none() {
                    w.start(i, version);
                    self.follow(w, i);
                }
            }
            Then::Retake { from, to } => match r {
                Some(Ok(_)) => {
                    self.last_answer[from] = w.now;
                    w.note(format!(
                        "supervisor: {} retakes epoch {}",
                        NAMES[from], self.epoch
                    ));
                    self.set_promotable(w, false, "a failed switchover: the standby re-syncs");
                    self.follow(w, to);
                    self.fenced[to] = true; // until the follow is answered
                }
                _ => w.note(format!("supervisor: {} did not retake", NAMES[from])),
            },
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

    fn follow(&mut self, w: &mut World, i: usize) {
        let a = self.active;
        let args = [
            "TANDEM.FOLLOW".to_string(),
            format!("{}.replication", NAMES[a]),
            self.epoch.to_string(),
            format!("{}.client", NAMES[a]),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.send(w, i, &args, CALL_TIMEOUT, Then::Follow(i));
    }

    fn resync(&mut self, w: &mut World, i: usize) {
        self.send(w, i, &["TANDEM.STATUS"], CALL_TIMEOUT, Then::Resync(i));
    }

    fn check_standby(&mut self, w: &mut World) {
        let standby = self.standby();
        if w.engine(standby).is_none() {
            return self.advance_upgrade(w);
        }
        if self.fenced[standby] {
            return self.follow(w, standby);
        }
        let then = Then::StandbyStatus(standby);
        self.send(w, standby, &["TANDEM.STATUS"], STANDBY_CHECK_TIMEOUT, then);
    }

    fn on_exit(&mut self, w: &mut World, i: usize) {
        let fenced = std::mem::take(&mut self.fenced[i]);
        if i != self.active || fenced {
            self.set_promotable(w, false, &format!("{} exited", NAMES[i]));
        }
        if i == self.active && !fenced {
            if self.promotion.is_none() && self.unavailable.is_none() {
                self.active_lost(w, i, format!("{} exited", NAMES[i]), true);
            }
            return;
        }
        if self.promotion.as_ref().is_some_and(|p| p.target == i) {
            self.promotion = None;
            let cause = format!("{}, being promoted, exited", NAMES[i]);
            return self.no_promotable(w, self.active, cause);
        }
        self.restart_standby(w, i);
    }

    fn restart_standby(&mut self, w: &mut World, i: usize) {
        if w.engine(self.active).is_none() || self.unavailable.is_some() {
            return;
        }
        self.set_promotable(w, false, &format!("{} restarts empty", NAMES[i]));
        let version = w.nodes[i].version;
        w.start(i, version);
        self.follow(w, i);
    }

    fn active_lost(&mut self, w: &mut World, dead: usize, cause: String, exited: bool) {
        let other = 1 - dead;
        w.note(format!("supervisor: active lost: {cause}"));
        let standby_ok = w.engine(other).is_some() && !self.fenced[other];
        if (self.promotable || self.promote_stale) && standby_ok {
            let epoch = self.grant(w);
            if !exited {
                self.fenced[dead] = true;
            }
            self.promotion = Some(Promotion {
                target: other,
                epoch,
            });
            return self.try_promotion(w);
        }
        self.no_promotable(w, dead, cause);
    }

    fn try_promotion(&mut self, w: &mut World) {
        let Some(p) = self.promotion.as_ref() else {
            return;
        };
        let (target, epoch) = (p.target, p.epoch);
        let timeout = (self.timing.hang_timeout.as_nanos() as u64).max(200 * MS);
        let e = epoch.to_string();
        let mut args = vec!["TANDEM.PROMOTE", &e];
        if self.promote_stale {
            args.push("FORCE"); // the planted bug: whatever the standby holds
        }
        let then = Then::Promote {
            target,
            epoch,
            dead: 1 - target,
        };
        self.send(w, target, &args, timeout, then);
    }

    fn promoted(&mut self, w: &mut World, target: usize, epoch: u64, dead: usize) {
        self.promotion = None;
        self.active = target;
        self.last_answer[target] = w.now;
        w.note(format!(
            "supervisor: failover: {} promoted at epoch {epoch}",
            NAMES[target]
        ));
        self.set_promotable(w, false, &format!("{} took over alone", NAMES[target]));
        if w.engine(dead).is_none() {
            self.restart_standby(w, dead);
        } else {
            self.renew_lease(w);
        }
    }

    fn no_promotable(&mut self, w: &mut World, dead: usize, cause: String) {
        let other = 1 - dead;
        if !self.released_any && w.engine(other).is_some() {
            if w.engine(dead).is_some() {
                self.expected_exit[dead] = true;
                w.crash(dead);
                self.expected_exit[dead] = false;
            }
            let epoch = self.grant(w);
            let e = epoch.to_string();
            let then = Then::Promote {
                target: other,
                epoch,
                dead,
            };
            self.promotion = Some(Promotion {
                target: other,
                epoch,
            });
            return self.send(
                w,
                other,
                &["TANDEM.PROMOTE", &e, "FORCE"],
                CALL_TIMEOUT,
                then,
            );
        }
        let why = format!(
            "{cause}, while {} was not in sync and with no journal: the pair refuses writes",
            NAMES[other]
        );
        w.note(format!("supervisor: PAIR UNAVAILABLE: {why}"));
        self.unavailable = Some(why);
        if self.upgrade.take().is_some() {
            self.upgrade_outcome = Some("abandoned: the pair is unavailable".into());
        }
    }

    /// A planned switchover, if the standby is promotable.
    fn switchover(&mut self, w: &mut World) {
        if !self.promotable || self.unavailable.is_some() || self.promotion.is_some() {
            return;
        }
        let (from, to) = (self.active, self.standby());
        let epoch = self.grant(w);
        w.note(format!(
            "supervisor: switchover {} -> {} at epoch {epoch}",
            NAMES[from], NAMES[to]
        ));
        let e = epoch.to_string();
        let then = Then::Switchover { from, to, epoch };
        self.send(
            w,
            from,
            &["TANDEM.SWITCHOVER", &e],
            SWITCHOVER_TIMEOUT,
            then,
        );
    }

    /// One move of the upgrade towards its goal, from the pair's real state.
    fn advance_upgrade(&mut self, w: &mut World) {
        if self.unavailable.is_some() || self.promotion.is_some() || self.busy.is_some() {
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
        let (a, s) = (self.active, 1 - self.active);
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
        if w.engine(s).is_none() {
            return; // restarted by the failure handling
        }
        if w.nodes[s].version != target {
            // Take the standby out of service and reload it with the target version.
            w.note(format!(
                "upgrade: reloading {} with {}",
                NAMES[s],
                target.as_str()
            ));
            self.promotable = false;
            return self.lease(w, a, "degrade", CALL_TIMEOUT, Then::Degrade(s, target));
        }
        if !self.promotable {
            return;
        }
        if w.nodes[a].version != target {
            if !up.rolling_back && !up.evaluated {
                up.eval_until = Some(w.now + EVALUATION);
            }
            return self.switchover(w);
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
