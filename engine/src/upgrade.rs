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
//! Every step emits timeline events; a step that fails aborts the upgrade and restores a
//! working pair on the old version.

use std::time::Duration;

use reports::timeline::{self, phase, Event, EventKind, SwitchoverKind};
use serde::Serialize;
use serde_json::Value;

use crate::supervisor::Supervisor;

/// Acceptance criteria and step limits; every one has a flag on `tandem upgrade`.
#[derive(Clone, Debug, Serialize)]
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
        v.into_iter()
            .flat_map(|(k, v)| [k.to_string(), v])
            .collect()
    }
}

/// What an upgrade did, returned to `tandem upgrade` as JSON.
#[derive(Serialize)]
pub struct Report {
    pub outcome: &'static str,
    pub from: String,
    pub to: String,
    pub reason: Option<String>,
    pub phases: Vec<PhaseReport>,
    pub switchovers_ms: Vec<f64>,
    pub baseline: Value,
    pub evaluation: Value,
}

#[derive(Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub duration_ms: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| std::fmt::Error)?)
    }
}

struct Run {
    from: String,
    to: String,
    options: Options,
    phases: Vec<PhaseReport>,
    switchovers_ms: Vec<f64>,
    baseline: Value,
    evaluation: Value,
    open_phase: Option<(String, u64)>,
}

impl Supervisor {
    fn phase(&mut self, run: &mut Run, name: &str) {
        self.end_phase(run, None);
        let now = timeline::now_ms();
        eprintln!("upgrade: phase {name}");
        self.emit(Event {
            phase: Some(name.into()),
            ..Event::new(now, EventKind::PhaseStart)
        });
        run.open_phase = Some((name.to_string(), now));
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

    async fn wait_caught_up(&mut self, run: &Run, what: &str) -> Result<(), String> {
        let timeout = Duration::from_millis(run.options.catch_up_timeout_ms);
        if self.pump(timeout, |s| s.promotable).await {
            Ok(())
        } else {
            Err(format!(
                "{what} did not catch up within {} ms",
                timeout.as_millis()
            ))
        }
    }

    /// Runs the whole upgrade to `to`. Errors are only for requests refused up front; a step
    /// that fails later ends the upgrade `rolled_back` with the pair restored.
    pub(crate) async fn upgrade(&mut self, to: String, options: Options) -> Result<Report, String> {
        let from = self.slots[self.active].app_version.clone();
        if self.slots[0].app_version != self.slots[1].app_version {
            return Err(format!(
                "ERR the engines run different versions ({} and {}): finish or roll back that first",
                self.slots[0].app_version, self.slots[1].app_version
            ));
        }
        if from == to && options.fault.is_none() {
            return Err(format!("ERR the pair already runs {to}"));
        }
        // A pair that just started, or just recovered, gets a moment to get its standby in sync.
        if !self.pump(Duration::from_secs(10), |s| s.promotable).await {
            return Err("ERR the standby is not in sync: an upgrade needs a healthy pair".into());
        }
        let mut run = Run {
            from: from.clone(),
            to: to.clone(),
            options,
            phases: Vec::new(),
            switchovers_ms: Vec::new(),
            baseline: Value::Null,
            evaluation: Value::Null,
            open_phase: None,
        };
        self.emit(Event {
            message: Some(format!("upgrade {from} -> {to}")),
            ..Event::new(timeline::now_ms(), EventKind::UpgradeStart)
        });
        let (outcome, reason) = match self.upgrade_steps(&mut run).await {
            Ok(None) => ("completed", None),
            Ok(Some(verdict)) => ("rolled_back", Some(verdict)),
            Err(failure) => {
                self.end_phase(&mut run, Some(format!("failed: {failure}")));
                eprintln!("upgrade: {failure}; restoring the pair on {from}");
                match self.restore(&mut run).await {
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
        };
        self.end_phase(&mut run, None);
        self.emit(Event {
            outcome: Some(outcome.into()),
            message: reason.clone(),
            ..Event::new(timeline::now_ms(), EventKind::UpgradeEnd)
        });
        eprintln!(
            "upgrade: {outcome}{}",
            reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        Ok(Report {
            outcome,
            from,
            to,
            reason,
            phases: run.phases,
            switchovers_ms: run.switchovers_ms,
            baseline: run.baseline,
            evaluation: run.evaluation,
        })
    }

    /// The steps; Ok(None) completed, Ok(Some(verdict)) fell back, Err aborted.
    async fn upgrade_steps(&mut self, run: &mut Run) -> Result<Option<String>, String> {
        let fault = run.options.fault.clone();
        let to = run.to.clone();

        self.phase(run, phase::BASELINE);
        let a = self.active;
        self.call(a, &["TANDEM.STATS", "RESET"]).await?;
        self.pump_for(Duration::from_millis(run.options.baseline_ms))
            .await;
        run.baseline = self.call_json(a, &["TANDEM.STATS", "RESET"]).await?;

        self.phase(run, phase::B_OUT_OF_SERVICE);
        let b = self.standby();
        self.reload(b, &to, fault).await?;

        self.phase(run, phase::B_CATCH_UP);
        self.wait_caught_up(run, "the new version").await?;

        self.phase(run, phase::SWITCHOVER_TO_B);
        run.switchovers_ms
            .push(self.switchover(SwitchoverKind::Planned).await?);
        self.wait_caught_up(run, "the old version, following the new")
            .await?;

        self.phase(run, phase::EVALUATION);
        let verdict = self.evaluate(run).await?;
        if let Some(verdict) = verdict {
            self.end_phase(run, Some(format!("not acceptable: {verdict}")));
            self.emit(Event {
                message: Some(verdict.clone()),
                ..Event::new(timeline::now_ms(), EventKind::Fallback)
            });
            self.fall_back(run).await?;
            return Ok(Some(verdict));
        }
        let idle = run.evaluation["stats"]["commands"].as_u64() == Some(0);
        let verdict = if idle {
            "acceptable (no traffic while evaluated: only health and digests were checked)"
        } else {
            "acceptable"
        };
        self.end_phase(run, Some(verdict.into()));

        self.phase(run, phase::A_OUT_OF_SERVICE);
        let a = self.standby();
        self.reload(a, &to, run.options.fault.clone()).await?;

        self.phase(run, phase::A_CATCH_UP);
        self.wait_caught_up(run, "the second engine").await?;

        self.phase(run, phase::FEATURES_ENABLED);
        self.enable_features().await?;
        self.pump_for(Duration::from_millis(run.options.settle_ms))
            .await;
        Ok(None)
    }

    /// Measures the new version while it is active and returns why it is not acceptable,
    /// if it is not.
    async fn evaluate(&mut self, run: &mut Run) -> Result<Option<String>, String> {
        let active = self.active;
        self.call(active, &["TANDEM.STATS", "RESET"]).await?;
        let exits_before = self.slots.iter().filter_map(|s| s.pid).collect::<Vec<_>>();
        self.pump_for(Duration::from_millis(run.options.evaluate_ms))
            .await;
        let stats = self.call_json(active, &["TANDEM.STATS", "RESET"]).await?;
        let mut problems = Vec::new();
        let error_rate = stats["error_rate"].as_f64().unwrap_or(0.0);
        if error_rate > run.options.max_error_rate {
            problems.push(format!(
                "error rate {:.2} % above {:.2} %",
                error_rate * 100.0,
                run.options.max_error_rate * 100.0
            ));
        }
        let base_p99_ms = run.baseline["latency_us_p99"].as_f64().unwrap_or(0.0) / 1e3;
        let p99_ms = stats["latency_us_p99"].as_f64().unwrap_or(0.0) / 1e3;
        let limit_ms =
            (base_p99_ms * run.options.p99_factor).max(base_p99_ms + run.options.p99_slack_ms);
        if p99_ms > limit_ms {
            problems.push(format!(
                "p99 {p99_ms:.2} ms above {limit_ms:.2} ms (baseline {base_p99_ms:.2} ms)"
            ));
        }
        let exits_after = self.slots.iter().filter_map(|s| s.pid).collect::<Vec<_>>();
        if exits_after != exits_before || self.active != active {
            problems.push("an engine failed during the evaluation".into());
        } else if !self.promotable {
            problems.push("the standby is not in sync".into());
        }
        let digests = self.compare_at_sync_point().await;
        if let Err(e) = &digests {
            problems.push(e.clone());
        }
        run.evaluation = serde_json::json!({
            "stats": stats,
            "p99_limit_ms": limit_ms,
            "digests_equal_at_seq": digests.ok(),
            "problems": problems,
        });
        Ok((!problems.is_empty()).then(|| problems.join("; ")))
    }

    /// Puts a sync point into the stream and compares both engines' digests there.
    async fn compare_at_sync_point(&mut self) -> Result<u64, String> {
        let (active, standby) = (self.active, self.standby());
        let point = self.call_json(active, &["TANDEM.SYNCPOINT"]).await?;
        let seq = point["seq"].as_u64().unwrap_or(0);
        // The sync point's reply is released once the standby applied it.
        let theirs = self.call_json(standby, &["TANDEM.STATUS"]).await?;
        let sp = &theirs["sync_point"];
        if sp["seq"].as_u64() != Some(seq) {
            return Err(format!("the standby has not noted sync point {seq}"));
        }
        if sp["digest"] != point["digest"] {
            return Err(format!(
                "state digests differ at sequence {seq}: {} and {}",
                point["digest"], sp["digest"]
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

        self.phase(run, phase::B_RELOAD_PREVIOUS);
        let b = self.standby();
        let from = run.from.clone();
        self.reload(b, &from, None).await?;

        self.phase(run, phase::B_CATCH_UP_PREVIOUS);
        self.wait_caught_up(run, "the reloaded engine").await?;

        self.phase(run, phase::RESTORED);
        self.pump_for(Duration::from_millis(run.options.settle_ms))
            .await;
        Ok(())
    }

    /// After a failed step: a working pair on the old version, whatever state it was left in.
    async fn restore(&mut self, run: &mut Run) -> Result<(), String> {
        let from = run.from.clone();
        let active = self.active;
        if self.slots[active].app_version != from {
            // The new version is active: the old one must be standby and in sync first.
            let standby = self.standby();
            if self.slots[standby].app_version != from || self.slots[standby].pid.is_none() {
                self.reload(standby, &from, None).await?;
            }
            self.wait_caught_up(run, "the old version").await?;
            run.switchovers_ms
                .push(self.switchover(SwitchoverKind::Fallback).await?);
        }
        let standby = self.standby();
        if self.slots[standby].app_version != from
            || self.slots[standby].pid.is_none()
            || self.slots[standby].fault.is_some()
        {
            self.reload(standby, &from, None).await?;
        }
        self.wait_caught_up(run, "the restored standby").await
    }
}
