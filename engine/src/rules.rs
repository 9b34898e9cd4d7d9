//! The supervisor's rules, without IO: what it knows of the pair, and what it decides from
//! what it hears. The supervisor process (`supervisor.rs`) and the simulator's (`sim/pilot.rs`)
//! are two drivers of this one state machine: they make the calls it asks for, each in its
//! own way (awaiting them, or one simulated message at a time), and feed it the answers.
//!
//! Time is a driver's monotonic clock in nanoseconds. What must be on disk before an engine
//! hears of it (an epoch granted, the standby no longer promotable, the pair unavailable) is
//! queued as [`Said`]; the driver takes it with [`Rules::take_said`] after every decision and
//! makes it durable before its next call.

use std::time::Duration;

use crate::contract::Code;
use crate::node::{EngineStatus, Role};
use crate::supervisor::{CallError, Timing};

pub const NAMES: [&str; 2] = ["a", "b"];

/// What a driver must make durable (or tell) before it acts on the decision that said it.
#[derive(Clone, Debug, PartialEq)]
pub enum Said {
    /// This epoch is granted: never grant it again.
    Granted(u64),
    /// The standby became promotable, or stopped being: a successor must never promote a
    /// stale standby, so this is on disk before the active may run simplex.
    Promotable(bool, String),
    /// Some write was acknowledged: no engine may any more be promoted on the grounds that
    /// nothing could be lost.
    Released,
    /// No engine is known to hold every acknowledged write: the pair refuses writes.
    Unavailable(String),
}

/// A failover under way: the standby to promote, in this epoch, until it answers.
#[derive(Clone, Debug)]
pub struct Promotion {
    pub target: usize,
    pub epoch: u64,
    pub since_ns: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// What happened to the active (for the timeline).
    pub cause: String,
}

/// After the active's lease answer.
#[derive(Debug, PartialEq)]
pub enum AfterLease {
    /// Go on: the failure detector, then the standby.
    Fine,
    /// The standby just stopped being promotable: grant the simplex lease now, not a tick
    /// later (the active holds its writes until it has one).
    RenewSimplex,
    /// The active knows a newer epoch than this supervisor: ask both engines.
    Resync,
}

/// An engine's process exited.
#[derive(Debug, PartialEq)]
pub enum OnExit {
    /// Stopped on purpose: nothing to do.
    Expected,
    /// The active is gone: [`Rules::active_lost`].
    ActiveLost(String),
    /// The active is gone while a failover or an unavailable pair already says so.
    Quiet,
    /// The standby being promoted is gone too: [`Rules::no_promotable`].
    TargetLost(String),
    /// The standby (or a fenced old active) is gone: start it again, following the active.
    RestartStandby,
}

/// The active is lost.
#[derive(Debug, PartialEq)]
pub enum Lost {
    /// Promote the standby (the pending [`Promotion`]), retried until it answers.
    Promote,
    /// No standby is known to hold everything: [`Rules::no_promotable`].
    NoPromotable(String),
}

/// The active is lost and no standby is known to hold every acknowledged write.
#[derive(Debug, PartialEq)]
pub enum NoPromotable {
    /// Restart the lost engine from its journal and promote it.
    Recover,
    /// Nothing was ever acknowledged: kill the lost engine if it runs, then promote the other
    /// with `FORCE` in this epoch (the pending [`Promotion`]).
    ForcePromote { epoch: u64 },
    /// Refuse writes (said as [`Said::Unavailable`]).
    Unavailable,
}

/// The answer to a `TANDEM.PROMOTE` of the pending promotion.
#[derive(Debug, PartialEq)]
pub enum PromoteAnswer {
    /// The target is active: [`Rules::promoted`].
    Promoted,
    /// The target's state is not whole: [`Rules::no_promotable`], for this cause.
    NotReady(String),
    /// Someone granted a higher epoch: go above it ([`Rules::regrant`]) and retry.
    Stale,
    /// No answer: retried on the next tick.
    Retry,
}

/// A planned switchover whose answer did not come back.
#[derive(Debug, PartialEq)]
pub enum SwitchoverUnanswered {
    /// The standby is active in the switchover's epoch: the old active follows it.
    Adopt,
    /// Neither answered: the standby may have stepped up, holding every acknowledged write (the
    /// active stopped taking writes for the switchover). It is promoted in the switchover's
    /// epoch (the pending [`Promotion`]); the old active is fenced.
    Promote,
    /// The standby did not step up: the old active takes this new epoch back and the standby
    /// follows it (a step-up still in flight can then only happen in an epoch left behind).
    Retake { epoch: u64 },
}

/// What to ask the engine that is not active, every few ticks.
#[derive(Debug, PartialEq)]
pub enum StandbyCheck {
    /// Not running: its exit is being handled.
    Nothing,
    /// It was fenced: tell it to follow the active.
    Follow(usize),
    /// Ask its status.
    Status(usize),
}

/// What the standby's check found.
#[derive(Debug, PartialEq)]
pub enum StandbyVerdict {
    Fine,
    /// It says it is active in this epoch or newer: it stepped up unheard; ask both engines.
    Resync,
    /// Silent for `hung_kill_after`: kill it (it is restarted as any lost standby is).
    Kill(String),
}

/// What a supervisor, started over its predecessor's engines, found.
#[derive(Debug, PartialEq)]
pub enum Adoption {
    /// Neither engine runs: recover one from its journal if there is one; else the data is
    /// gone.
    NoEngine,
    /// The active is known again (`Rules::active`); what its standby needs.
    Active(AdoptStandby),
    /// The active is known again, but in an epoch older than the last its predecessor
    /// granted: a switchover was under way when the predecessor died. Leased in the new epoch
    /// it would take it as granted elsewhere and step down, leaving nobody active. It takes
    /// this new epoch first ([`Rules::retaken`], as after a failed switchover), and the
    /// standby follows it there. Found by `tandem sim` (seed 58).
    Retake { epoch: u64 },
    /// Nobody is active: the active died (or was being switched) while no supervisor watched.
    /// The usual rules decide who holds the data ([`Rules::active_lost`]).
    ActiveLost {
        dead: usize,
        cause: String,
        exited: bool,
    },
}

/// The standby a restarted supervisor found.
#[derive(Debug, PartialEq)]
pub enum AdoptStandby {
    /// It follows the active.
    Fine,
    /// It is gone: start it again.
    Restart,
    /// It runs but does not answer: fenced, told to follow when it answers (or killed after
    /// `hung_kill_after`, and then restarted). Never started a second time beside itself.
    Fenced,
    /// Taken out of service by the predecessor mid-step: tell it to follow.
    Follow,
}

/// One move of an upgrade (or a fallback) towards both engines running the target version,
/// from the pair's real state: how the upgrade goes on after a failover, or after a
/// supervisor restart, whatever step it was in.
#[derive(Debug, PartialEq)]
pub enum Toward {
    /// The standby runs another version (or does not run): take it out of service and
    /// reload it with the target, new features disabled.
    ReloadStandby,
    /// Wait for the standby to be in sync (it catches up, across versions).
    AwaitStandby,
    /// The standby runs the target and is in sync, the active does not: switch over.
    Switchover,
    /// Both engines run the target, the standby in sync.
    Settled,
}

/// The pair as the supervisor knows it.
pub struct Rules {
    pub timing: Timing,
    pub active: usize,
    pub epoch: u64,
    pub promotable: bool,
    /// Has this pair ever acknowledged a write?
    pub released_any: bool,
    /// Why the pair refuses writes.
    pub unavailable: Option<String>,
    /// Engines that must follow the active when they answer again (a hung old active).
    pub fenced: [bool; 2],
    /// When each engine last answered a call.
    pub last_answer_ns: [u64; 2],
    pub promotion: Option<Promotion>,
    /// Failovers and recoveries so far.
    pub failovers: u64,
    said: Vec<Said>,
}

fn silent_for(now_ns: u64, since_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(since_ns))
}

impl Rules {
    pub fn new(timing: Timing) -> Rules {
        Rules {
            timing,
            active: 0,
            epoch: 0,
            promotable: false,
            released_any: false,
            unavailable: None,
            fenced: [false; 2],
            last_answer_ns: [0; 2],
            promotion: None,
            failovers: 0,
            said: Vec::new(),
        }
    }

    /// A new pair: A active at epoch 1, B its standby, both empty (so B is trivially in sync).
    pub fn fresh(timing: Timing) -> Rules {
        Rules {
            epoch: 1,
            promotable: true,
            ..Rules::new(timing)
        }
    }

    pub fn standby(&self) -> usize {
        1 - self.active
    }

    /// What the decisions since the last call said, oldest first.
    pub fn take_said(&mut self) -> Vec<Said> {
        std::mem::take(&mut self.said)
    }

    /// A new epoch, never granted before.
    pub fn grant(&mut self) -> u64 {
        self.epoch += 1;
        self.said.push(Said::Granted(self.epoch));
        self.epoch
    }

    /// An epoch an engine reports: never grant it again.
    pub fn seen_epoch(&mut self, epoch: u64) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.said.push(Said::Granted(epoch));
        }
    }

    pub fn set_promotable(&mut self, promotable: bool, why: &str) {
        if self.promotable != promotable {
            self.promotable = promotable;
            self.said
                .push(Said::Promotable(promotable, why.to_string()));
        }
    }

    /// Engine `i` answered a call (any answer: it is not hung).
    pub fn heard(&mut self, i: usize, now_ns: u64) {
        self.last_answer_ns[i] = now_ns;
    }

    /// Engine `i` was started: it answers, and follows whom it was told to.
    pub fn started(&mut self, i: usize, now_ns: u64) {
        self.fenced[i] = false;
        self.heard(i, now_ns);
    }

    pub fn note_released(&mut self, seq_released: u64) {
        if seq_released > 0 && !self.released_any {
            self.released_any = true;
            self.said.push(Said::Released);
        }
    }

    /// The lease mode: the standby stops being promotable before the active may run simplex.
    pub fn lease_mode(&self) -> &'static str {
        if self.promotable {
            "sync"
        } else {
            "simplex"
        }
    }

    /// The active answered its lease (or did not).
    pub fn lease_answered(&mut self, answer: Result<&EngineStatus, &CallError>) -> AfterLease {
        let was = self.promotable;
        match answer {
            Ok(status) => {
                self.note_released(status.seq_released);
                let in_sync = status.standby_in_sync;
                let standby = NAMES[self.standby()];
                let why = format!(
                    "the active reports {standby} {}",
                    if in_sync { "in sync" } else { "not in sync" }
                );
                self.set_promotable(in_sync, &why);
            }
            Err(e) if e.code() == Some(Code::StaleEpoch) => return AfterLease::Resync,
            // Its standby is then not known to be in sync.
            Err(CallError::Garbled(_)) => {
                self.set_promotable(false, "its status does not fit the contract")
            }
            // The failure detector counts the silence.
            Err(_) => {}
        }
        if was && !self.promotable {
            AfterLease::RenewSimplex
        } else {
            AfterLease::Fine
        }
    }

    /// The failure detector: the active, still running, has answered no lease for
    /// `hang_timeout`. The cause, if so.
    pub fn active_hung(&self, active_running: bool, now_ns: u64) -> Option<String> {
        let silent = silent_for(now_ns, self.last_answer_ns[self.active]);
        (active_running && silent >= self.timing.hang_timeout).then(|| {
            format!(
                "{} answered no lease for {} ms",
                NAMES[self.active],
                silent.as_millis()
            )
        })
    }

    /// Engine `i` exited (`expected`: stopped on purpose, or the supervisor is stopping).
    pub fn exited(&mut self, i: usize, expected: bool) -> OnExit {
        let fenced = std::mem::take(&mut self.fenced[i]);
        if i != self.active || fenced {
            self.set_promotable(false, &format!("{} exited", NAMES[i]));
        }
        if expected {
            return OnExit::Expected;
        }
        if i == self.active && !fenced {
            if self.promotion.is_some() || self.unavailable.is_some() {
                return OnExit::Quiet;
            }
            return OnExit::ActiveLost(format!("{} exited", NAMES[i]));
        }
        if self.promotion.as_ref().is_some_and(|p| p.target == i) {
            let p = self.promotion.take().expect("checked");
            return OnExit::TargetLost(format!(
                "{}; then {}, being promoted, exited",
                p.cause, NAMES[i]
            ));
        }
        OnExit::RestartStandby
    }

    /// The active (`dead`) is gone (`exited`) or hung: replace it by an engine that holds every
    /// acknowledged write, or say that none does.
    pub fn active_lost(
        &mut self,
        dead: usize,
        cause: String,
        exited: bool,
        other_running: bool,
        now_ns: u64,
    ) -> Lost {
        let other = 1 - dead;
        let standby_ok = other_running && !self.fenced[other];
        #[cfg(feature = "sim")]
        let promotable = self.promotable || crate::sim::planted(crate::sim::Plant::PromoteStale);
        #[cfg(not(feature = "sim"))]
        let promotable = self.promotable;
        if !(promotable && standby_ok) {
            return Lost::NoPromotable(cause);
        }
        let epoch = self.grant();
        if !exited {
            self.fenced[dead] = true; // it must follow when it answers again
        }
        self.promotion = Some(Promotion {
            target: other,
            epoch,
            since_ns: now_ns,
            attempts: 0,
            last_error: None,
            cause,
        });
        Lost::Promote
    }

    /// The arguments of the pending promotion's next attempt, counted as made.
    pub fn promotion_attempt(&mut self) -> Option<(usize, Vec<String>)> {
        let p = self.promotion.as_mut()?;
        p.attempts += 1;
        let mut args = vec!["TANDEM.PROMOTE".to_string(), p.epoch.to_string()];
        #[cfg(feature = "sim")]
        if crate::sim::planted(crate::sim::Plant::PromoteStale) {
            args.push("FORCE".into()); // the planted bug: whatever the standby holds
        }
        Some((p.target, args))
    }

    /// The promotion has waited `hung_kill_after`: the engine it replaces may take the pair
    /// back if it answers again (it was hung, not dead).
    pub fn promotion_overdue(&self, now_ns: u64) -> bool {
        self.promotion
            .as_ref()
            .is_some_and(|p| silent_for(now_ns, p.since_ns) >= self.timing.hung_kill_after)
    }

    pub fn promote_answered(&mut self, answer: Result<(), &CallError>) -> PromoteAnswer {
        let Some(p) = self.promotion.as_mut() else {
            return PromoteAnswer::Retry;
        };
        match answer {
            Ok(()) => PromoteAnswer::Promoted,
            Err(e) if e.code() == Some(Code::NotReady) => {
                let p = self.promotion.take().expect("checked");
                PromoteAnswer::NotReady(format!(
                    "{}; {} refused to be promoted: {e}",
                    p.cause, NAMES[p.target]
                ))
            }
            Err(e) => {
                p.last_error = Some(e.to_string());
                if e.code() == Some(Code::StaleEpoch) {
                    PromoteAnswer::Stale
                } else {
                    PromoteAnswer::Retry
                }
            }
        }
    }

    /// The pending promotion moves to an epoch above every one granted and `seen`.
    pub fn regrant(&mut self, seen: u64) {
        self.seen_epoch(seen);
        let epoch = self.grant();
        if let Some(p) = self.promotion.as_mut() {
            p.epoch = epoch;
        }
    }

    /// May the engine the overdue promotion replaces, answering `status`, take the pair back?
    /// Only if it is still active with a whole state (it was hung, not dead).
    pub fn may_take_back(&self, status: &EngineStatus) -> bool {
        status.role == Role::Active && status.state_complete
    }

    /// It did, in a new epoch: it stays the active, and the silent target is fenced instead.
    pub fn taken_back(&mut self, now_ns: u64) -> Option<Promotion> {
        let p = self.promotion.take()?;
        let back = 1 - p.target;
        self.active = back;
        self.fenced = [false; 2];
        self.fenced[p.target] = true;
        self.failovers += 1;
        self.heard(back, now_ns);
        self.set_promotable(false, &format!("{} does not answer", NAMES[p.target]));
        Some(p)
    }

    /// Engine `i`, restarted from its journal, took a new epoch: it is the active, alone.
    pub fn recovered(&mut self, i: usize, now_ns: u64) {
        self.take_over(
            i,
            now_ns,
            &format!("{} recovered from its journal", NAMES[i]),
        );
        self.unavailable = None;
    }

    /// The operator promoted engine `i` whatever it holds, accepting the loss. Why the pair
    /// had been unavailable, if it was.
    pub fn forced(&mut self, i: usize, now_ns: u64) -> Option<String> {
        self.take_over(i, now_ns, "forced promotion");
        self.unavailable.take()
    }

    fn take_over(&mut self, i: usize, now_ns: u64, why: &str) {
        self.promotion = None;
        self.active = i;
        self.fenced[i] = false;
        self.failovers += 1;
        self.heard(i, now_ns);
        self.set_promotable(false, why);
    }

    /// The pending promotion was answered: its target is the active, alone.
    pub fn promoted(&mut self, now_ns: u64) -> Option<Promotion> {
        let p = self.promotion.clone()?;
        self.take_over(
            p.target,
            now_ns,
            &format!("{} took over alone", NAMES[p.target]),
        );
        Some(p)
    }

    /// The active (`dead`) is lost and no standby is known to hold every acknowledged write.
    pub fn no_promotable(
        &mut self,
        dead: usize,
        cause: String,
        journal: bool,
        other_running: bool,
        now_ns: u64,
    ) -> NoPromotable {
        self.promotion = None;
        if journal {
            return NoPromotable::Recover;
        }
        let other = 1 - dead;
        if !self.released_any && other_running {
            let epoch = self.grant();
            self.promotion = Some(Promotion {
                target: other,
                epoch,
                since_ns: now_ns,
                attempts: 1,
                last_error: None,
                cause: format!("{cause} (nothing had been acknowledged yet)"),
            });
            return NoPromotable::ForcePromote { epoch };
        }
        self.refuse_writes(format!(
            "{cause}, while {} was not in sync and with no journal: no engine is known to hold every acknowledged write, so the pair refuses writes",
            NAMES[other]
        ));
        NoPromotable::Unavailable
    }

    /// The `FORCE` promotion of [`NoPromotable::ForcePromote`] was refused or not answered.
    pub fn force_promote_failed(&mut self, error: &CallError) {
        let Some(p) = self.promotion.take() else {
            return;
        };
        self.refuse_writes(format!(
            "{}; promoting {} failed ({error}), and it was not in sync: no engine is known to hold every acknowledged write, so the pair refuses writes",
            p.cause, NAMES[p.target]
        ));
    }

    /// The pair refuses writes, for this reason.
    pub fn refuse_writes(&mut self, why: String) {
        self.promotion = None;
        self.unavailable = Some(why.clone());
        self.said.push(Said::Unavailable(why));
    }

    /// A planned switchover may begin: its (granted) epoch, or why not.
    pub fn begin_switchover(&mut self) -> Result<u64, String> {
        if let Some(why) = &self.unavailable {
            return Err(format!("ERR the pair is unavailable: {why}"));
        }
        if self.promotion.is_some() {
            return Err("ERR a failover is under way".into());
        }
        if !self.promotable {
            return Err(format!(
                "ERR standby {} is not in sync: no switchover",
                NAMES[self.standby()]
            ));
        }
        Ok(self.grant())
    }

    /// The switchover to `to` is done. Unanswered (the old active was told to follow after a
    /// lost answer), the old active starts over with a snapshot. Answered, the old active
    /// still holds every acknowledged write and the new one releases only what it
    /// acknowledges (sync leases): the standby stays promotable, and a planned switchover
    /// opens no simplex window.
    pub fn switched_over(&mut self, to: usize, answered: bool, now_ns: u64) {
        self.active = to;
        self.heard(to, now_ns);
        if !answered {
            self.set_promotable(
                false,
                "switched over without an answer: the old active re-syncs",
            );
        }
    }

    /// The switchover from `from` to `to` in `epoch` failed (`error`); `to` then said `status`.
    pub fn switchover_unanswered(
        &mut self,
        from: usize,
        epoch: u64,
        error: &CallError,
        status: Result<&EngineStatus, &CallError>,
        now_ns: u64,
    ) -> SwitchoverUnanswered {
        let to = 1 - from;
        match status {
            Ok(st) if st.role == Role::Active && st.epoch == epoch => SwitchoverUnanswered::Adopt,
            Err(unreachable) if matches!(error, CallError::NoAnswer(_)) => {
                self.fenced[from] = true;
                self.promotion = Some(Promotion {
                    target: to,
                    epoch,
                    since_ns: now_ns,
                    attempts: 0,
                    last_error: Some(unreachable.to_string()),
                    cause: format!("the switchover's answer was lost ({error})"),
                });
                SwitchoverUnanswered::Promote
            }
            _ => SwitchoverUnanswered::Retake {
                epoch: self.grant(),
            },
        }
    }

    /// After a failed switchover, `from` took the new epoch back; its standby re-syncs.
    pub fn retaken(&mut self, from: usize, now_ns: u64) {
        self.heard(from, now_ns);
        self.set_promotable(false, "a failed switchover: the standby re-syncs");
    }

    /// Engine `i` did not take a `TANDEM.FOLLOW`: it is told again when it answers.
    pub fn follow_failed(&mut self, i: usize) {
        self.fenced[i] = true;
    }

    /// Engine `i` follows the active.
    pub fn followed(&mut self, i: usize) {
        self.fenced[i] = false;
    }

    pub fn standby_check(&self, standby_running: bool) -> StandbyCheck {
        let standby = self.standby();
        match (standby_running, self.fenced[standby]) {
            (false, _) => StandbyCheck::Nothing,
            (true, true) => StandbyCheck::Follow(standby),
            (true, false) => StandbyCheck::Status(standby),
        }
    }

    /// The standby's check: `answer` to its status (`None` for a follow that it took).
    pub fn standby_checked(
        &self,
        answer: Result<Option<&EngineStatus>, &CallError>,
        now_ns: u64,
    ) -> StandbyVerdict {
        let standby = self.standby();
        match answer {
            Ok(Some(st)) if st.role == Role::Active && st.epoch >= self.epoch => {
                StandbyVerdict::Resync
            }
            Ok(_) => StandbyVerdict::Fine,
            Err(_) => {
                let silent = silent_for(now_ns, self.last_answer_ns[standby]);
                if silent >= self.timing.hung_kill_after {
                    StandbyVerdict::Kill(format!(
                        "{} silent for {} ms",
                        NAMES[standby],
                        silent.as_millis()
                    ))
                } else {
                    StandbyVerdict::Fine
                }
            }
        }
    }

    /// After the engines and the supervisor disagree (an epoch it did not grant, a lost
    /// answer): adopt the engine that is active at the highest epoch. The one adopted, if it
    /// was not the active.
    pub fn resynced(&mut self, statuses: [Option<&EngineStatus>; 2]) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        for (i, st) in statuses.iter().enumerate() {
            let Some(st) = st else { continue };
            if st.role == Role::Active && best.is_none_or(|(_, e)| st.epoch > e) {
                best = Some((i, st.epoch));
            }
            self.seen_epoch(st.epoch);
        }
        let (i, _) = best.filter(|&(i, _)| i != self.active)?;
        self.active = i;
        self.fenced[i] = false;
        self.fenced[1 - i] = true; // the old active follows the one adopted
        self.set_promotable(false, "resynced with the engines");
        Some(i)
    }

    /// A supervisor restarted from its predecessor's persisted state (already in these
    /// rules) heard each engine's status; an engine that runs without answering is `hung`.
    pub fn adopt(&mut self, statuses: [Option<&EngineStatus>; 2], hung: [bool; 2]) -> Adoption {
        self.fenced = hung;
        for st in statuses.iter().flatten() {
            self.seen_epoch(st.epoch);
            self.note_released(st.seq_released.max(st.seq_applied));
        }
        if statuses.iter().all(Option::is_none) && !hung.contains(&true) {
            return Adoption::NoEngine;
        }
        // The active: whichever engine says so at the highest epoch.
        let active = (0..2)
            .filter(|&i| statuses[i].is_some_and(|s| s.role == Role::Active))
            .max_by_key(|&i| statuses[i].map(|s| s.epoch));
        let Some(i) = active else {
            let dead = self.active;
            let exited = statuses[dead].is_none() && !hung[dead];
            if !exited {
                self.fenced[dead] = true; // it must follow when it answers again
            }
            let cause = format!(
                "no engine was active when the supervisor started ({} was {})",
                NAMES[dead],
                if exited { "gone" } else { "not active" }
            );
            return Adoption::ActiveLost {
                dead,
                cause,
                exited,
            };
        };
        self.active = i;
        if statuses[i].is_some_and(|st| st.epoch < self.epoch) {
            return Adoption::Retake {
                epoch: self.grant(),
            };
        }
        let standby = 1 - i;
        Adoption::Active(match statuses[standby] {
            None if hung[standby] => AdoptStandby::Fenced,
            None => AdoptStandby::Restart,
            Some(st) if st.role != Role::Standby => AdoptStandby::Follow,
            Some(_) => AdoptStandby::Fine,
        })
    }

    /// The next move towards both engines on the target; `on_target[i]`: engine `i` runs the
    /// target version (and fault); `standby_running`: its process runs.
    pub fn toward(&self, on_target: [bool; 2], standby_running: bool) -> Toward {
        let (active, standby) = (self.active, self.standby());
        if !standby_running || !on_target[standby] {
            Toward::ReloadStandby
        } else if !self.promotable {
            Toward::AwaitStandby
        } else if !on_target[active] {
            Toward::Switchover
        } else {
            Toward::Settled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: Role, epoch: u64) -> EngineStatus {
        let mut st = crate::node::tests::engine(true).status();
        st.role = role;
        st.epoch = epoch;
        st
    }

    fn rules(active: usize, epoch: u64, promotable: bool) -> Rules {
        let mut r = Rules::new(Timing::default());
        r.active = active;
        r.epoch = epoch;
        r.promotable = promotable;
        r
    }

    #[test]
    fn a_lost_active_is_replaced_only_by_a_promotable_standby() {
        let mut r = rules(0, 3, false);
        let lost = r.active_lost(0, "a hung".into(), false, true, 0);
        assert_eq!(lost, Lost::NoPromotable("a hung".into()));
        assert!(r.promotion.is_none() && r.take_said().is_empty());

        let mut r = rules(0, 3, true);
        assert_eq!(
            r.active_lost(0, "a hung".into(), false, true, 0),
            Lost::Promote
        );
        let p = r.promotion.clone().expect("pending");
        assert_eq!((p.target, p.epoch), (1, 4));
        assert!(r.fenced[0], "a hung active follows when it answers again");
        assert_eq!(r.take_said(), vec![Said::Granted(4)]);
        assert_eq!(r.promote_answered(Ok(())), PromoteAnswer::Promoted);
        r.promoted(0);
        assert_eq!((r.active, r.promotable, r.failovers), (1, false, 1));
    }

    #[test]
    fn with_nothing_acknowledged_the_other_is_forced_else_the_pair_refuses_writes() {
        let mut r = rules(0, 2, false);
        let d = r.no_promotable(0, "a exited".into(), false, true, 0);
        assert_eq!(d, NoPromotable::ForcePromote { epoch: 3 });

        let mut r = rules(0, 2, false);
        r.note_released(10);
        let d = r.no_promotable(0, "a exited".into(), false, true, 0);
        assert_eq!(d, NoPromotable::Unavailable);
        assert!(r.unavailable.as_deref().unwrap().starts_with("a exited"));
        let d = r.no_promotable(0, "a exited".into(), true, true, 0);
        assert_eq!(d, NoPromotable::Recover, "a journal comes first");
    }

    #[test]
    fn a_switchover_without_answers_promotes_the_standby_and_a_refusal_retakes() {
        let silent = CallError::NoAnswer("timed out".into());
        let mut r = rules(0, 5, true);
        let epoch = r.begin_switchover().unwrap();
        let d = r.switchover_unanswered(0, epoch, &silent, Err(&silent), 0);
        assert_eq!(d, SwitchoverUnanswered::Promote);
        assert_eq!(
            r.promotion.as_ref().map(|p| (p.target, p.epoch)),
            Some((1, 6))
        );
        assert!(r.fenced[0]);

        let mut r = rules(0, 5, true);
        let epoch = r.begin_switchover().unwrap();
        let standby = status(Role::Standby, 5);
        let d = r.switchover_unanswered(0, epoch, &silent, Ok(&standby), 0);
        assert_eq!(d, SwitchoverUnanswered::Retake { epoch: 7 });

        let stepped_up = status(Role::Active, 6);
        let mut r = rules(0, 5, true);
        let epoch = r.begin_switchover().unwrap();
        let d = r.switchover_unanswered(0, epoch, &silent, Ok(&stepped_up), 0);
        assert_eq!(d, SwitchoverUnanswered::Adopt);

        let mut r = rules(0, 5, false);
        assert!(
            r.begin_switchover().is_err(),
            "never to a standby not in sync"
        );
    }

    #[test]
    fn a_successor_gives_an_active_left_behind_a_granted_epoch_a_new_one() {
        // The predecessor granted 7 for a switchover b -> a and died before it was done.
        let mut r = rules(1, 7, true);
        let (a, b) = (status(Role::Standby, 6), status(Role::Active, 6));
        let d = r.adopt([Some(&a), Some(&b)], [false; 2]);
        assert_eq!(d, Adoption::Retake { epoch: 8 });
        assert_eq!(r.active, 1);

        let mut r = rules(1, 6, true);
        let d = r.adopt([Some(&a), Some(&b)], [false; 2]);
        assert_eq!(d, Adoption::Active(AdoptStandby::Fine));

        // A standby that runs but does not answer is fenced, never started beside itself.
        let mut r = rules(1, 6, true);
        let d = r.adopt([None, Some(&b)], [true, false]);
        assert_eq!(d, Adoption::Active(AdoptStandby::Fenced));
        assert!(r.fenced[0]);

        let mut r = rules(1, 6, true);
        let d = r.adopt([Some(&a), None], [false, false]);
        assert!(matches!(
            d,
            Adoption::ActiveLost {
                dead: 1,
                exited: true,
                ..
            }
        ));
    }
}
