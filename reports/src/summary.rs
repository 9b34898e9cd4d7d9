//! `summary.json`: what a run measured, per phase, and whether any acknowledged write was
//! lost. Written by the load generator, read by the reports and by tests. The schema is
//! versioned (`tandem.run/1`) and documented in `reports/SCHEMA.md`.

use serde::{Deserialize, Serialize};

pub const RUN_SCHEMA: &str = "tandem.run/1";

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseSummary {
    pub name: String,
    /// Milliseconds since the Unix epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    /// Replies received in the phase (successes and errors).
    pub ops: u64,
    pub throughput_ops_s: f64,
    pub errors: u64,
    /// Coordinated-omission-corrected latency, microseconds.
    pub latency_us: Latency,
    /// How much of the phase one engine served alone (no standby in sync), ms.
    #[serde(default)]
    pub simplex_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Switchover {
    /// `planned`, `failover` or `fallback`.
    pub kind: String,
    /// When it began (ms since the Unix epoch).
    pub at_ms: u64,
    /// Step-up signal to acknowledgement, as the supervisor measured it.
    pub stepup_ms: f64,
    /// Last reply before the switch to the first reply from the new active, as a client saw it.
    pub client_gap_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub schema: String,
    /// `completed` or `rolled_back`.
    pub outcome: String,
    /// `tandem` or `redis`.
    pub target: String,
    pub started_ms: u64,
    pub ended_ms: u64,
    /// The load: mode, rate or connections, pipeline, mix, value size, key distribution.
    pub workload: serde_json::Value,
    pub phases: Vec<PhaseSummary>,
    pub switchovers: Vec<Switchover>,
    pub acknowledged_updates: u64,
    pub verified_updates: u64,
    pub lost_updates: u64,
    /// How long, in all, one engine served alone during the run (ms); 0 for a peer that
    /// reports no such thing (Redis).
    #[serde(default)]
    pub simplex_ms: u64,
    /// Each window in which one engine served alone: `[start_ms, end_ms]`.
    #[serde(default)]
    pub simplex_windows: Vec<[u64; 2]>,
}

/// Milliseconds of `windows` that fall in `start_ms..end_ms`.
pub fn overlap_ms(windows: &[[u64; 2]], start_ms: u64, end_ms: u64) -> u64 {
    windows
        .iter()
        .map(|[s, e]| (*e).min(end_ms).saturating_sub((*s).max(start_ms)))
        .sum()
}
