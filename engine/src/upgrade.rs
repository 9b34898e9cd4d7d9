//! The rolling upgrade (claims 1-7, figure 6), run by the supervisor: one engine at a time,
//! while the pair serves, with an acceptance check of the new version and a fallback.
//!
//! 1. take B (the standby) out of service: A runs simplex;
//! 2. reload B with the new version, new features disabled;
//! 3. B follows A and catches up, across versions;
//! 4. switch over: B is active, A its standby, replicated in the old format;
//! 5. evaluate the new version against the baseline measured before step 1;
//! 6. not acceptable: fall back to A, reload B with the old version; the upgrade ends
//!    `rolled_back`;
//! 7. acceptable: take A out of service, reload it with the new version, make it standby;
//! 8. enable the new features on both engines: the upgrade ends `completed`.
//!
//! Every step emits timeline events, and the step the upgrade is in is on disk (see
//! `pair_state.rs`). Every failover during the upgrade is noticed at once: before the new
//! version was accepted the upgrade is rolled back (a pair on the old version), after it the
//! upgrade is finished from the pair's real state (both engines on the new version, in sync,
//! features enabled); the timeline says which. A supervisor that restarts in the middle of an
//! upgrade does the same from where its predecessor stopped. A step that fails otherwise
//! aborts the upgrade and restores a working pair on the old version.

use std::time::Duration;

use reports::timeline::{self, phase, Event, EventKind, SwitchoverKind};
use serde::{Deserialize, Serialize};

use crate::contract::SyncPointReply;
use crate::node::EngineStatus;
use crate::pair_state::UpgradeState;
use crate::rules::Toward;
use crate::stats::StatsReport;
use crate::supervisor::{Supervisor, CALL_TIMEOUT};

/// Acceptance criteria and step limits; every one has a flag on `tandem upgrade`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    /// Faulty build to upgrade to (slow, errors), for exercising the fallback.
    pub fault: Option<String>,
    pub baseline_ms: u64,
    pub evaluate_ms: u64,
    /// How long the pair runs in the final state (features enabled, or restored).
    pub settle_ms: u64,
    pub catch_up_timeout_ms: u64,
    /// Error replies per command, at most (0.01 = 1 %).
    pub max_error_rate: f64,
    /// The new version's p99 may be this many times the baseline's...
    pub p99_factor: f64,
    /// ...or the baseline's plus this, whichever is larger (tiny baselines are noisy).
    pub p99_slack_ms: f64,
    /// Fault injection: keep this out-of-service phase open this long with its engine down
    /// (the other serves alone), so that a test or a demo can fail that engine meanwhile.
    #[serde(default)]
    pub hold_phase: Option<String>,
    #[serde(default)]
    pub hold_ms: u64,
    /// Who asked (a campaign passes `CAMPAIGN_ID/PAIR`): published in etcd before the
    /// upgrade starts, and an upgrade whose tag this pair ran already is refused.
    #[serde(default)]
    pub tag: Option<String>,
}

impl Options {
    /// The acceptance check of the new version's figures against the baseline's: the p99
    /// limit it applied (ms), and what is not acceptable (nothing: acceptable). The engines'
    /// health, a failover and the digests are judged beside it, in `evaluate`.
    pub fn judge(&self, baseline: &StatsReport, stats: &StatsReport) -> (f64, Vec<String>) {
        let mut problems = Vec::new();
        if stats.error_rate > self.max_error_rate {
            problems.push(format!(
                "error rate {:.2} % above {:.2} %",
                stats.error_rate * 100.0,
                self.max_error_rate * 100.0
            ));
        }
        let base_p99_ms = baseline.latency_us_p99 as f64 / 1e3;
        let p99_ms = stats.latency_us_p99 as f64 / 1e3;
        let limit_ms = (base_p99_ms * self.p99_factor).max(base_p99_ms + self.p99_slack_ms);
        if p99_ms > limit_ms {
            problems.push(format!(
                "p99 {p99_ms:.2} ms above {limit_ms:.2} ms (baseline {base_p99_ms:.2} ms)"
            ));
        }
        (limit_ms, problems)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fault: None,
            baseline_ms: 5000,
            evaluate_ms: 5000,
            settle_ms: 3000,
            catch_up_timeout_ms: 60_000,
            max_error_rate: 0.01,
            p99_factor: 3.0,
            p99_slack_ms: 2.0,
            hold_phase: None,
            hold_ms: 0,
            tag: None,
        }
    }
}

impl Options {
    /// Parses `key value` pairs as the admin command carries them.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        if !args.len().is_multiple_of(2) {
            return Err("ERR options come in pairs: name value".into());
        }
        for pair in args.chunks(2) {
            let (key, value) = (pair[0].as_str(), pair[1].as_str());
            let bad = || format!("ERR bad value {value:?} for {key}");
            let num = |v: &str| v.parse::<f64>().map_err(|_| bad());
            match key {
                "fault" => o.fault = Some(value.to_string()),
                "baseline_ms" => o.baseline_ms = num(value)? as u64,
                "evaluate_ms" => o.evaluate_ms = num(value)? as u64,
                "settle_ms" => o.settle_ms = num(value)? as u64,
                "catch_up_timeout_ms" => o.catch_up_timeout_ms = num(value)? as u64,
                "max_error_rate" => o.max_error_rate = num(value)?,
                "p99_factor" => o.p99_factor = num(value)?,
                "p99_slack_ms" => o.p99_slack_ms = num(value)?,
                "hold_phase" => o.hold_phase = Some(value.to_string()),
                "hold_ms" => o.hold_ms = num(value)? as u64,
                "tag" => o.tag = Some(value.to_string()),
                _ => return Err(format!("ERR unknown upgrade option {key}")),
            }
        }
        Ok(o)
    }

    /// The options as `key value` pairs for the admin command.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            ("baseline_ms", self.baseline_ms.to_string()),
            ("evaluate_ms", self.evaluate_ms.to_string()),
            ("settle_ms", self.settle_ms.to_string()),
            ("catch_up_timeout_ms", self.catch_up_timeout_ms.to_string()),
            ("max_error_rate", self.max_error_rate.to_string()),
            ("p99_factor", self.p99_factor.to_string()),
            ("p99_slack_ms", self.p99_slack_ms.to_string()),
        ];
        if let Some(f) = &self.fault {
            v.push(("fault", f.clone()));
        }
        if let Some(h) = &self.hold_phase {
            v.push(("hold_phase", h.clone()));
            v.push(("hold_ms", self.hold_ms.to_string()));
        }
        if let Some(t) = &self.tag {
            v.push(("tag", t.clone()));
        }
        v.into_iter()
            .flat_map(|(k, v)| [k.to_string(), v])
            .collect()
    }
}

/// What an upgrade did, returned to `tandem upgrade` (a [`crate::contract`] message).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `completed`, `rolled_back` or `failed`.
    pub outcome: String,
    pub from: String,
    pub to: String,
    pub reason: Option<String>,
    pub phases: Vec<PhaseReport>,
    pub switchovers_ms: Vec<f64>,
    /// The active's figures over the baseline (none if the upgrade stopped before).
    pub baseline: Option<StatsReport>,
    /// The new version's evaluation (none if the upgrade stopped before).
    pub evaluation: Option<Evaluation>,
}

impl crate::contract::Message for Report {
    const NAME: &'static str = "upgrade report";
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseReport {
    pub name: String,
    pub duration_ms: u64,
}

/// What the acceptance check measured of the new version, and what it found wrong.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    pub stats: StatsReport,
    pub p99_limit_ms: f64,
    /// The sequence of the sync point where both digests were equal, if they were.
    pub digests_equal_at_seq: Option<u64>,
    /// Empty if acceptable.
    pub problems: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::contract::encode(self))
    }
}

struct Run {
    from: String,
    to: String,
    options: Options,
    phases: Vec<PhaseReport>,
    switchovers_ms: Vec<f64>,
    /// The active's figures over the baseline, what the evaluation is held against.
    baseline: Option<StatsReport>,
    evaluation: Option<Evaluation>,
    open_phase: Option<(String, u64)>,
    /// Failovers counted when the current step began.
    failovers: u64,
}

impl Run {
    fn new(from: &str, to: &str, options: Options, failovers: u64) -> Run {
        Run {
            from: from.to_string(),
            to: to.to_string(),
            options,
            phases: Vec::new(),
            switchovers_ms: Vec::new(),
            baseline: None,
            evaluation: None,
            open_phase: None,
            failovers,
        }
    }
}

impl Supervisor {
    fn phase(&mut self, run: &mut Run, name: &str) {
        self.phase_noted(run, name, String::new());
    }

    /// Starts a phase whose start event says why (empty: nothing to say).
    fn phase_noted(&mut self, run: &mut Run, name: &str, note: String) {
        self.end_phase(run, None);
        let now = timeline::now_ms();
        tracing::info!("upgrade: phase {name}");
        self.emit(Event {
            phase: Some(name.into()),
            message: (!note.is_empty()).then_some(note),
            ..Event::new(now, EventKind::PhaseStart)
        });
        run.open_phase = Some((name.to_string(), now));
        if let Some(u) = self.upgrade_state.as_mut() {
            u.step = name.to_string();
        }
        if let Some(r) = self.upgrade_record.as_mut().filter(|r| r.outcome.is_none()) {
            r.phase = Some(name.to_string()); // in etcd at the next write (`flush_witness`)
        }
        self.persist();
    }

    /// Fails the step if a failover happened since the last check, or the pair is unavailable.
    fn check_failover(&mut self, run: &mut Run) -> Result<(), String> {
        if let Some(why) = &self.rules.unavailable {
            return Err(format!("the pair became unavailable: {why}"));
        }
        if self.rules.failovers != run.failovers {
            run.failovers = self.rules.failovers;
            let at = run
                .open_phase
                .as_ref()
                .map_or("the upgrade", |p| p.0.as_str());
            return Err(format!(
                "an engine failed during {at} and was replaced: {}",
                self.last_failover_message()
            ));
        }
        Ok(())
    }

    fn last_failover_message(&self) -> String {
        self.timeline()
            .events
            .iter()
            .rev()
            .find(|e| e.kind == EventKind::Failover)
            .and_then(|e| e.message.clone())
            .unwrap_or_default()
    }

    /// Keeps the current out-of-service phase open if the options ask so (fault injection).
    async fn hold(&mut self, run: &Run, name: &str) {
        if run.options.hold_phase.as_deref() == Some(name) && run.options.hold_ms > 0 {
            let failovers = self.rules.failovers;
            let until = std::time::Instant::now() + Duration::from_millis(run.options.hold_ms);
            self.pump(Duration::from_millis(run.options.hold_ms), move |s| {
                s.rules.failovers != failovers || std::time::Instant::now() >= until
            })
            .await;
        }
    }

    fn end_phase(&mut self, run: &mut Run, message: Option<String>) {
        if let Some((name, start)) = run.open_phase.take() {
            let now = timeline::now_ms();
            self.emit(Event {
                phase: Some(name.clone()),
                message,
                ..Event::new(now, EventKind::PhaseEnd)
            });
            run.phases.push(PhaseReport {
                name,
                duration_ms: now.saturating_sub(start),
            });
        }
    }

    async fn wait_caught_up(&mut self, run: &mut Run, what: &str) -> Result<(), String> {
        let timeout = Duration::from_millis(run.options.catch_up_timeout_ms);
        let failovers = run.failovers;
        let done = self
            .pump(timeout, move |s| {
                s.rules.promotable
                    || s.rules.failovers != failovers
                    || s.rules.unavailable.is_some()
            })
            .await;
        self.check_failover(run)?;
        if done {
            Ok(())
        } else {
            Err(format!(
                "{what} did not catch up within {} ms",
                timeout.as_millis()
            ))
        }
    }

    /// Waits until the pair has an active engine again (a failover in progress ends).
    async fn wait_for_active(&mut self, run: &Run) -> Result<(), String> {
        let timeout = Duration::from_millis(run.options.catch_up_timeout_ms);
        self.pump(timeout, |s| s.has_active() || s.rules.unavailable.is_some())
            .await;
        match &self.rules.unavailable {
            Some(why) => Err(format!("the pair is unavailable: {why}")),
            None if self.has_active() => Ok(()),
            None => Err("no engine became active".into()),
        }
    }

    /// Brings the pair, whatever state it is in, to both engines on `version` (with `fault`)
    /// and the standby in sync: reloads the standby if it runs anything else, switches over if
    /// the active does, and goes on from the pair's new state after a failover.
    async fn converge(
        &mut self,
        run: &mut Run,
        version: &str,
        fault: Option<String>,
        kind: SwitchoverKind,
    ) -> Result<(), String> {
        let mut failures = Vec::new();
        for _ in 0..12 {
            match self.converge_step(run, version, &fault, kind).await {
                Ok(true) => return Ok(()),
                Ok(false) => {} // a move made: the next one from the new state
                Err(e) => {
                    tracing::warn!("upgrade: {e}; going on from the pair's state");
                    run.failovers = self.rules.failovers;
                    failures.push(e);
                    if failures.len() == 3 {
                        break;
                    }
                }
            }
        }
        Err(format!(
            "the pair did not settle on {version}: {}",
            failures.join("; ")
        ))
    }

    /// One step of [`Self::converge`]; true once settled.
    async fn converge_step(
        &mut self,
        run: &mut Run,
        version: &str,
        fault: &Option<String>,
        kind: SwitchoverKind,
    ) -> Result<bool, String> {
        self.wait_for_active(run).await?;
        let standby = self.standby();
        let on_target =
            |s: &Self, i: usize| s.slots[i].app_version == version && s.slots[i].fault == *fault;
        let running = self.slots[standby].pid.is_some();
        let what = format!("{} on {version}", self.slots[standby].name);
        match self
            .rules
            .toward([on_target(self, 0), on_target(self, 1)], running)
        {
            Toward::ReloadStandby => {
                self.reload(standby, version, fault.clone()).await?;
                self.check_failover(run)?;
                self.wait_caught_up(run, &what).await?;
                Ok(false)
            }
            Toward::AwaitStandby => {
                self.wait_caught_up(run, &what).await?;
                Ok(false)
            }
            Toward::Switchover => {
                run.switchovers_ms.push(self.switchover(kind).await?);
                Ok(false)
            }
            Toward::Settled => Ok(true),
        }
    }

    /// Runs the whole upgrade to `to`. Errors are only for requests refused up front; a step
    /// that fails later ends the upgrade `rolled_back` with the pair restored.
    pub(crate) async fn upgrade(&mut self, to: String, options: Options) -> Result<Report, String> {
        let from = self.slots[self.rules.active].app_version.clone();
        if self.slots[0].app_version != self.slots[1].app_version {
            return Err(format!(
                "ERR the engines run different versions ({} and {}): finish or roll back that first",
                self.slots[0].app_version, self.slots[1].app_version
            ));
        }
        if let Some(tag) = &options.tag {
            if self.ran_tags.iter().any(|t| t == tag) {
                let outcome = self
                    .upgrade_record
                    .as_ref()
                    .filter(|r| r.tag.as_deref() == Some(tag.as_str()))
                    .and_then(|r| r.outcome.clone())
                    .unwrap_or_else(|| "ran".into());
                return Err(format!(
                    "ALREADY the upgrade tagged {tag} ran on this pair already ({outcome}): it is not run twice"
                ));
            }
        }
        if from == to && options.fault.is_none() {
            return Err(format!("ERR the pair already runs {to}"));
        }
        // A pair that just started, or just recovered, gets a moment to get its standby in sync.
        if !self
            .pump(Duration::from_secs(10), |s| s.rules.promotable)
            .await
        {
            return Err("ERR the standby is not in sync: an upgrade needs a healthy pair".into());
        }
        // The upgrade is in etcd (with its tag) before anything of it happens.
        let previous_record = self.upgrade_record.replace(fleet::keys::UpgradeRecord {
            to: to.clone(),
            tag: options.tag.clone(),
            phase: Some("start".into()),
            outcome: None,
            message: None,
            started_ms: timeline::now_ms(),
            ended_ms: None,
        });
        if let Some(tag) = &options.tag {
            self.ran_tags.push(tag.clone());
            if self.ran_tags.len() > 64 {
                self.ran_tags.remove(0);
            }
        }
        self.persist();
        if self.witness.is_some() {
            if let Err(e) = self.witness_can_grant().await {
                self.upgrade_record = previous_record;
                if let Some(tag) = &options.tag {
                    self.ran_tags.retain(|t| t != tag);
                }
                self.persist();
                return Err(format!("{e} (the upgrade was not started)"));
            }
        }
        let mut run = Run::new(&from, &to, options.clone(), self.rules.failovers);
        self.upgrade_state = Some(UpgradeState {
            from: from.clone(),
            to: to.clone(),
            options,
            step: "start".into(),
            accepted: false,
        });
        self.persist();
        self.emit(Event {
            message: Some(format!("upgrade {from} -> {to}")),
            ..Event::new(timeline::now_ms(), EventKind::UpgradeStart)
        });
        let result = self.upgrade_steps(&mut run).await;
        let (outcome, reason) = self.settle(&mut run, result).await;
        self.end_upgrade(&mut run, outcome, &reason);
        self.await_outcome_in_etcd().await;
        Ok(Report {
            outcome: outcome.into(),
            from,
            to,
            reason,
            phases: run.phases,
            switchovers_ms: run.switchovers_ms,
            baseline: run.baseline,
            evaluation: run.evaluation,
        })
    }

    /// After the steps: a failure before the new version was accepted rolls the pair back to
    /// the old version; one after it finishes the upgrade from the pair's real state.
    async fn settle(
        &mut self,
        run: &mut Run,
        result: Result<Option<String>, String>,
    ) -> (&'static str, Option<String>) {
        let failure = match result {
            Ok(None) => return ("completed", None),
            Ok(Some(verdict)) => return ("rolled_back", Some(verdict)),
            Err(failure) => failure,
        };
        self.end_phase(run, Some(format!("failed: {failure}")));
        let accepted = self.upgrade_state.as_ref().is_some_and(|u| u.accepted);
        let (from, to) = (run.from.clone(), run.to.clone());
        let decision = if accepted {
            format!(
                "{failure}; {to} was accepted already: finishing the upgrade from the pair's state"
            )
        } else {
            format!("{failure}; rolling back to {from}")
        };
        tracing::info!("upgrade: {decision}");
        run.failovers = self.rules.failovers;
        let settle = Duration::from_millis(run.options.settle_ms);
        if accepted {
            // The phases of the path it finishes on, so that the run reads as any upgrade.
            self.phase_noted(run, phase::A_CATCH_UP, decision);
            let fault = run.options.fault.clone();
            let finished = match self
                .converge(run, &to, fault, SwitchoverKind::Planned)
                .await
            {
                Ok(()) => {
                    self.phase(run, phase::FEATURES_ENABLED);
                    let enabled = match self.witness_ready().await {
                        Ok(()) => self.enable_features().await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    self.pump_for(settle).await;
                    enabled
                }
                Err(e) => Err(e),
            };
            return match finished {
                Ok(()) => ("completed", Some(format!("{failure}; finished on {to}"))),
                Err(e) => (
                    "rolled_back",
                    Some(format!("{failure}; finishing on {to} failed: {e}")),
                ),
            };
        }
        self.emit(Event {
            message: Some(decision.clone()),
            ..Event::new(timeline::now_ms(), EventKind::Fallback)
        });
        self.phase_noted(run, phase::FALLBACK, decision);
        let restored = self
            .converge(run, &from, None, SwitchoverKind::Fallback)
            .await;
        if restored.is_ok() {
            self.phase(run, phase::RESTORED);
            self.pump_for(settle).await;
        }
        match restored {
            Ok(()) => (
                "rolled_back",
                Some(format!("aborted: {failure}; pair restored on {from}")),
            ),
            Err(e) => (
                "rolled_back",
                Some(format!("aborted: {failure}; restoring failed too: {e}")),
            ),
        }
    }

    fn end_upgrade(&mut self, run: &mut Run, outcome: &str, reason: &Option<String>) {
        self.end_phase(run, None);
        self.emit(Event {
            outcome: Some(outcome.into()),
            message: reason.clone(),
            ..Event::new(timeline::now_ms(), EventKind::UpgradeEnd)
        });
        self.upgrade_state = None;
        let now = timeline::now_ms();
        let record = self
            .upgrade_record
            .get_or_insert_with(|| fleet::keys::UpgradeRecord {
                to: run.to.clone(),
                tag: run.options.tag.clone(),
                started_ms: now,
                ..Default::default()
            });
        record.phase = None;
        record.outcome = Some(outcome.to_string());
        record.message = reason.clone();
        record.ended_ms = Some(now);
        self.persist(); // in etcd at the next write: now if it answers, else when it does
        tracing::info!(
            "upgrade: {outcome}{}",
            reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
    }

    /// A supervisor restarted in the middle of an upgrade finishes it (the new version was
    /// accepted) or rolls it back (it was not), and says which.
    pub(crate) async fn resume_upgrade(&mut self) {
        let Some(u) = self.upgrade_state.clone() else {
            return;
        };
        let mut run = Run::new(&u.from, &u.to, u.options.clone(), self.rules.failovers);
        let failure = format!(
            "the supervisor restarted during {} of the upgrade {} -> {}",
            u.step, u.from, u.to
        );
        let (outcome, reason) = self.settle(&mut run, Err(failure)).await;
        self.end_upgrade(&mut run, outcome, &reason);
        self.await_outcome_in_etcd().await;
    }

    /// A step of an upgrade that calls the engines waits for etcd first if it is out of reach
    /// (only the active's lease is renewed meanwhile), up to `witness_wait`: an etcd outage
    /// or a busy etcd delays the upgrade rather than rolls it back.
    async fn witness_ready(&mut self) -> Result<(), String> {
        let sure = self
            .witness
            .as_ref()
            .is_none_or(|w| w.standing() == crate::witness::Standing::Sure);
        if sure {
            return Ok(());
        }
        let limit = self.witness_wait();
        self.await_witness(false, limit, true).await
    }

    /// The upgrade's outcome in etcd before the answer: waited for (`await_witness`, the pair
    /// served meanwhile); if etcd is still out of reach after that, the record stays to be
    /// written (`persist` marked it) and the supervisor's loop writes it when etcd answers.
    async fn await_outcome_in_etcd(&mut self) {
        if self.witness.is_none() {
            return;
        }
        let limit = self.witness_wait();
        if let Err(e) = self.await_witness(false, limit, true).await {
            tracing::warn!(
                "the upgrade's outcome is not in etcd yet ({e}): written when etcd answers"
            );
        }
    }

    /// The steps; Ok(None) completed, Ok(Some(verdict)) fell back, Err aborted.
    async fn upgrade_steps(&mut self, run: &mut Run) -> Result<Option<String>, String> {
        let fault = run.options.fault.clone();
        let to = run.to.clone();

        self.phase(run, phase::BASELINE);
        self.witness_ready().await?;
        let a = self.rules.active;
        self.call(a, &["TANDEM.STATS", "RESET"]).await?;
        self.pump_for(Duration::from_millis(run.options.baseline_ms))
            .await;
        run.baseline = Some(self.stats_reset(a).await?);

        self.phase(run, phase::B_OUT_OF_SERVICE);
        let b = self.standby();
        self.reload_held(run, b, &to, fault, phase::B_OUT_OF_SERVICE)
            .await?;

        self.phase(run, phase::B_CATCH_UP);
        self.wait_caught_up(run, "the new version").await?;

        self.phase(run, phase::SWITCHOVER_TO_B);
        run.switchovers_ms
            .push(self.switchover(SwitchoverKind::Planned).await?);
        self.check_failover(run)?;
        self.wait_caught_up(run, "the old version, following the new")
            .await?;

        self.phase(run, phase::EVALUATION);
        let verdict = self.evaluate(run).await?;
        self.check_failover(run)?;
        if let Some(verdict) = verdict {
            self.end_phase(run, Some(format!("not acceptable: {verdict}")));
            self.emit(Event {
                message: Some(verdict.clone()),
                ..Event::new(timeline::now_ms(), EventKind::Fallback)
            });
            self.fall_back(run).await?;
            return Ok(Some(verdict));
        }
        if let Some(u) = self.upgrade_state.as_mut() {
            u.accepted = true;
        }
        self.persist();
        let idle = run
            .evaluation
            .as_ref()
            .is_some_and(|e| e.stats.commands == 0);
        let verdict = if idle {
            "acceptable (no traffic while evaluated: only health and digests were checked)"
        } else {
            "acceptable"
        };
        self.end_phase(run, Some(verdict.into()));

        self.phase(run, phase::A_OUT_OF_SERVICE);
        let a = self.standby();
        let fault = run.options.fault.clone();
        self.reload_held(run, a, &to, fault, phase::A_OUT_OF_SERVICE)
            .await?;

        self.phase(run, phase::A_CATCH_UP);
        self.wait_caught_up(run, "the second engine").await?;

        self.phase(run, phase::FEATURES_ENABLED);
        self.witness_ready().await?;
        self.enable_features().await?;
        self.pump_for(Duration::from_millis(run.options.settle_ms))
            .await;
        self.check_failover(run)?;
        Ok(None)
    }

    /// Reloads the standby, keeping it down for the hold of `phase` if the options ask so;
    /// fails if the active was lost meanwhile.
    async fn reload_held(
        &mut self,
        run: &mut Run,
        i: usize,
        version: &str,
        fault: Option<String>,
        phase: &str,
    ) -> Result<(), String> {
        self.witness_ready().await?;
        self.stop_engine(i).await?;
        self.hold(run, phase).await;
        self.check_failover(run)?;
        self.reload(i, version, fault).await?;
        self.check_failover(run)
    }

    /// Measures the new version while it is active and returns why it is not acceptable,
    /// if it is not.
    async fn evaluate(&mut self, run: &mut Run) -> Result<Option<String>, String> {
        self.witness_ready().await?;
        let active = self.rules.active;
        self.call(active, &["TANDEM.STATS", "RESET"]).await?;
        let exits_before = self.slots.iter().filter_map(|s| s.pid).collect::<Vec<_>>();
        self.pump_for(Duration::from_millis(run.options.evaluate_ms))
            .await;
        let stats = self.stats_reset(active).await?;
        let Some(baseline) = &run.baseline else {
            return Err("no baseline was measured to evaluate against".into());
        };
        let (limit_ms, mut problems) = run.options.judge(baseline, &stats);
        let exits_after = self.slots.iter().filter_map(|s| s.pid).collect::<Vec<_>>();
        if exits_after != exits_before
            || self.rules.active != active
            || self.rules.failovers != run.failovers
        {
            problems.push("an engine failed during the evaluation".into());
        } else if !self.rules.promotable {
            problems.push("the standby is not in sync".into());
        }
        let digests = self.compare_at_sync_point().await;
        if let Err(e) = &digests {
            problems.push(e.clone());
        }
        let verdict = (!problems.is_empty()).then(|| problems.join("; "));
        run.evaluation = Some(Evaluation {
            stats,
            p99_limit_ms: limit_ms,
            digests_equal_at_seq: digests.ok(),
            problems,
        });
        Ok(verdict)
    }

    /// The active's figures since the last reset, and a reset.
    async fn stats_reset(&mut self, i: usize) -> Result<StatsReport, String> {
        Ok(self
            .call_message(i, &["TANDEM.STATS", "RESET"], CALL_TIMEOUT)
            .await?)
    }

    /// Puts a sync point into the stream and compares both engines' digests there.
    async fn compare_at_sync_point(&mut self) -> Result<u64, String> {
        self.witness_ready().await?;
        let (active, standby) = (self.rules.active, self.standby());
        let point: SyncPointReply = self
            .call_message(active, &["TANDEM.SYNCPOINT"], CALL_TIMEOUT)
            .await?;
        let seq = point.seq;
        // The sync point's reply is released once the standby applied it.
        let theirs: EngineStatus = self
            .call_message(standby, &["TANDEM.STATUS"], CALL_TIMEOUT)
            .await?;
        let Some(sp) = theirs.sync_point.filter(|sp| sp.seq == seq) else {
            return Err(format!("the standby has not noted sync point {seq}"));
        };
        if sp.digest != point.digest {
            return Err(format!(
                "state digests differ at sequence {seq}: {} and {}",
                point.digest, sp.digest
            ));
        }
        Ok(seq)
    }

    /// Step 6: the old version's engine becomes active again and the other one is reloaded
    /// with the old version.
    async fn fall_back(&mut self, run: &mut Run) -> Result<(), String> {
        self.phase(run, phase::FALLBACK);
        self.wait_caught_up(run, "the old version").await?;
        run.switchovers_ms
            .push(self.switchover(SwitchoverKind::Fallback).await?);
        self.check_failover(run)?;

        self.phase(run, phase::B_RELOAD_PREVIOUS);
        let b = self.standby();
        let from = run.from.clone();
        self.reload_held(run, b, &from, None, phase::B_RELOAD_PREVIOUS)
            .await?;

        self.phase(run, phase::B_CATCH_UP_PREVIOUS);
        self.wait_caught_up(run, "the reloaded engine").await?;

        self.phase(run, phase::RESTORED);
        self.pump_for(Duration::from_millis(run.options.settle_ms))
            .await;
        self.check_failover(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(error_rate: f64, p99_us: u64) -> StatsReport {
        StatsReport {
            commands: 1000,
            error_rate,
            latency_us_p99: p99_us,
            ..StatsReport::default()
        }
    }

    #[test]
    fn the_acceptance_check_judges_errors_and_p99_against_the_baseline() {
        let o = Options::default();
        let base = stats(0.0, 1_000);
        let (limit, problems) = o.judge(&base, &stats(0.0, 1_100));
        assert!(problems.is_empty(), "{problems:?}");
        assert!(limit >= 1.0);
        let (_, problems) = o.judge(&base, &stats(o.max_error_rate * 2.0, 1_000));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("error rate"), "{problems:?}");
        let slow = (limit * 1e3) as u64 + 1_000;
        let (_, problems) = o.judge(&base, &stats(0.0, slow));
        assert!(problems[0].starts_with("p99"), "{problems:?}");
    }
}
