//! The timeline of a pair: what the supervisor did and when (upgrade phases, switchovers,
//! fallback, features enabled). The supervisor writes it to `timeline.json` in the pair's
//! directory and streams each event to subscribers of its admin endpoint; the load generator
//! attributes every latency sample to the phase it fell in; the reports draw the phases.

use serde::{Deserialize, Serialize};

pub const TIMELINE_SCHEMA: &str = "tandem.timeline/1";

/// Phase names (the contract of `reports/SCHEMA.md`): the upgrade path, then the fallback path.
pub mod phase {
    /// Load outside every phase of an upgrade (all of a run without one).
    pub const STEADY: &str = "steady";
    pub const BASELINE: &str = "baseline";
    pub const B_OUT_OF_SERVICE: &str = "b_out_of_service";
    pub const B_CATCH_UP: &str = "b_catch_up";
    pub const SWITCHOVER_TO_B: &str = "switchover_to_b";
    pub const EVALUATION: &str = "evaluation";
    pub const A_OUT_OF_SERVICE: &str = "a_out_of_service";
    pub const A_CATCH_UP: &str = "a_catch_up";
    pub const FEATURES_ENABLED: &str = "features_enabled";
    pub const FALLBACK: &str = "fallback";
    pub const B_RELOAD_PREVIOUS: &str = "b_reload_previous";
    pub const B_CATCH_UP_PREVIOUS: &str = "b_catch_up_previous";
    pub const RESTORED: &str = "restored";

    pub const UPGRADE: [&str; 8] = [
        BASELINE,
        B_OUT_OF_SERVICE,
        B_CATCH_UP,
        SWITCHOVER_TO_B,
        EVALUATION,
        A_OUT_OF_SERVICE,
        A_CATCH_UP,
        FEATURES_ENABLED,
    ];
    pub const FALLBACK_PATH: [&str; 4] =
        [FALLBACK, B_RELOAD_PREVIOUS, B_CATCH_UP_PREVIOUS, RESTORED];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UpgradeStart,
    PhaseStart,
    PhaseEnd,
    SwitchoverBegin,
    SwitchoverEnd,
    Fallback,
    FeaturesEnabled,
    UpgradeEnd,
    Failover,
    /// The pair lost its promotable standby: one engine serves alone (the simplex window).
    SimplexStart,
    /// A standby is in sync again.
    SimplexEnd,
    /// No engine is known to hold every acknowledged write: the pair refuses writes.
    Unavailable,
    /// A supervisor started on a pair whose engines were running, and took them back.
    SupervisorStart,
    /// The pair's etcd witness stopped answering: no new epoch can be granted meanwhile
    /// (the pair keeps serving at the one it holds).
    WitnessLost,
    /// The etcd witness answers again.
    WitnessBack,
    /// A supervisor took the pair's leader key in etcd (`--etcd`): it leads the pair.
    LeaderElected,
    /// A hot spare supervisor took the pair over from a leader that is gone.
    TookOver,
    /// A supervisor found it no longer leads the pair (its etcd lease expired, another one
    /// leads): it stopped acting and left the engines to the leader.
    SteppedDown,
}

impl SwitchoverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchoverKind::Planned => "planned",
            SwitchoverKind::Failover => "failover",
            SwitchoverKind::Fallback => "fallback",
        }
    }
}

/// How a switchover came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchoverKind {
    Planned,
    Failover,
    Fallback,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time, milliseconds since the Unix epoch (shared with the load generator).
    pub t_ms: u64,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverKind>,
    /// Step-up signal to the new active's acknowledgement (switchover end, failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stepup_ms: Option<f64>,
    /// `completed` or `rolled_back` (upgrade end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The pair the event happened to, in a fleet run's top-level timeline (each pair's
    /// events there carry its name); absent in a pair's own timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
}

impl Event {
    pub fn new(t_ms: u64, kind: EventKind) -> Event {
        Event {
            t_ms,
            kind,
            phase: None,
            switchover: None,
            stepup_ms: None,
            outcome: None,
            message: None,
            pair: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub schema: String,
    pub events: Vec<Event>,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            schema: TIMELINE_SCHEMA.into(),
            events: Vec::new(),
        }
    }

    /// The phases as (name, start_ms, end_ms), in order; a phase still open ends at `now_ms`.
    /// A phase ends by the end event of the same pair (a fleet's timeline interleaves them).
    pub fn phases(&self, now_ms: u64) -> Vec<(String, u64, u64)> {
        let mut out: Vec<(String, u64, u64, Option<&str>)> = Vec::new();
        for e in &self.events {
            match (e.kind, &e.phase) {
                (EventKind::PhaseStart, Some(p)) => {
                    out.push((p.clone(), e.t_ms, u64::MAX, e.pair.as_deref()))
                }
                (EventKind::PhaseEnd, Some(p)) => {
                    if let Some(open) = out.iter_mut().rev().find(|(n, _, end, pair)| {
                        n == p && *end == u64::MAX && *pair == e.pair.as_deref()
                    }) {
                        open.2 = e.t_ms;
                    }
                }
                _ => {}
            }
        }
        out.into_iter()
            .map(|(n, s, e, _)| (n, s, if e == u64::MAX { now_ms.max(s) } else { e }))
            .collect()
    }

    /// When one engine served alone (between `simplex_start` and `simplex_end` events),
    /// clipped to `from_ms..to_ms`; a window still open ends at `to_ms`.
    pub fn simplex_windows(&self, from_ms: u64, to_ms: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut open: Option<u64> = None;
        for e in &self.events {
            match e.kind {
                EventKind::SimplexStart if open.is_none() => open = Some(e.t_ms),
                EventKind::SimplexEnd => {
                    if let Some(start) = open.take() {
                        out.push((start, e.t_ms));
                    }
                }
                _ => {}
            }
        }
        if let Some(start) = open {
            out.push((start, to_ms.max(start)));
        }
        out.into_iter()
            .map(|(s, e)| (s.max(from_ms), e.min(to_ms)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    /// The phase a sample taken at `t_ms` belongs to (the latest phase that started at or
    /// before it and had not ended).
    pub fn phase_at(&self, t_ms: u64, now_ms: u64) -> Option<String> {
        self.phases(now_ms)
            .into_iter()
            .rev()
            .find(|(_, s, e)| *s <= t_ms && t_ms < (*e).max(*s + 1))
            .map(|p| p.0)
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: u64, kind: EventKind, p: &str) -> Event {
        Event {
            phase: Some(p.into()),
            ..Event::new(t, kind)
        }
    }

    #[test]
    fn simplex_windows_pair_up_and_are_clipped_to_the_run() {
        let mut t = Timeline::new();
        for (ms, kind) in [
            (50, EventKind::SimplexStart),
            (120, EventKind::SimplexEnd),
            (300, EventKind::SimplexStart),
            (310, EventKind::SimplexStart),
            (400, EventKind::SimplexEnd),
            (900, EventKind::SimplexStart),
        ] {
            t.events.push(Event::new(ms, kind));
        }
        assert_eq!(
            t.simplex_windows(100, 1000),
            vec![(100, 120), (300, 400), (900, 1000)]
        );
        assert!(t.simplex_windows(500, 800).is_empty());
    }

    #[test]
    fn phases_are_read_back_in_order_and_samples_attributed() {
        let mut t = Timeline::new();
        t.events
            .push(ev(100, EventKind::PhaseStart, phase::BASELINE));
        t.events.push(ev(200, EventKind::PhaseEnd, phase::BASELINE));
        t.events
            .push(ev(200, EventKind::PhaseStart, phase::B_OUT_OF_SERVICE));
        let phases = t.phases(500);
        assert_eq!(
            phases,
            vec![
                ("baseline".into(), 100, 200),
                ("b_out_of_service".into(), 200, 500)
            ]
        );
        assert_eq!(t.phase_at(150, 500).as_deref(), Some("baseline"));
        assert_eq!(t.phase_at(200, 500).as_deref(), Some("b_out_of_service"));
        assert_eq!(t.phase_at(50, 500), None);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timeline>(&json).unwrap(), t);
    }
}
