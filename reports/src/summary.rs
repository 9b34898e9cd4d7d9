//! `summary.json`: what a run measured, per phase, and whether any acknowledged write was
//! lost. Written by the load generator, read by the reports and by tests. The schema is
//! versioned (`tandem.run/1`) and documented in `reports/SCHEMA.md`.

use serde::{Deserialize, Serialize};

pub const RUN_SCHEMA: &str = "tandem.run/1";

/// Samples that must lie beyond a percentile before it is worth printing: with fewer, the
/// "p99" of a phase is one or two requests, its maximum in disguise.
pub const SAMPLES_BEYOND_MIN: u64 = 10;

/// Whether `samples` latencies support the percentile `quantile` (0.99 for p99): at least
/// [`SAMPLES_BEYOND_MIN`] of them lie beyond it. p50 needs 20 samples, p99 1,000 and p99.9
/// 10,000; the maximum is always what it is.
pub fn percentile_supported(samples: u64, quantile: f64) -> bool {
    if quantile >= 1.0 {
        return samples > 0;
    }
    samples as f64 * (1.0 - quantile) >= SAMPLES_BEYOND_MIN as f64 - 1e-9
}

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
    /// The phase's latency distribution on a "number of nines" grid (HdrHistogram's
    /// percentile distribution): the percentile spectrum of the report. Empty in runs
    /// written before it was added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percentiles: Vec<PercentilePoint>,
}

/// One point of a latency distribution: `us` is the latency at percentile `p` (0..=100).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    pub p: f64,
    pub us: u64,
}

/// What ran, where: enough for a reader to know whether two runs are comparable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// The tandem build that drove the run (crate version).
    pub tandem_version: String,
    /// `git describe` of that build (`unknown` outside a checkout).
    #[serde(default)]
    pub git_revision: String,
    /// The application versions of the upgrade (`1.0 -> 2.0`), or the peer's server version
    /// (`redis 7.0.15`).
    #[serde(default)]
    pub target_version: String,
    pub hostname: String,
    /// Kernel and architecture (`Linux 6.1.0 x86_64`).
    pub os: String,
    pub cpu_model: String,
    pub cpus: u32,
    pub memory_mb: u64,
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
    /// Requests the load generator sent again because of the switchover (refused by the old
    /// active, or in flight on a connection that was lost).
    #[serde(default)]
    pub retried: u64,
    /// Connections that had to find the new active (a `-NOTACTIVE`/`-READONLY` refusal or a
    /// lost connection).
    #[serde(default)]
    pub redirected: u64,
    /// The pair it happened to: set in a fleet run's top-level summary (every pair's
    /// switchovers), absent in a pair's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
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
    /// Versions, machine and build of the run; absent in runs written before it was added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Environment>,
    /// A fleet run's top-level summary only: the pairs driven, how each fared, and the
    /// campaign's waves (`reports/SCHEMA.md`, "Fleet runs").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
}

/// What a fleet run adds to its top-level `summary.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    /// The campaign's id (`P/campaign` in etcd), when etcd was given and held one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// The campaign's state at the end of the run: `running`, `completed` or `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_state: Option<String>,
    /// Why it stopped (`stopped` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_reason: Option<String>,
    /// No campaign record: the waves are the pairs' upgrades grouped where they overlap.
    #[serde(default)]
    pub waves_inferred: bool,
    pub waves: Vec<Wave>,
    /// The fleet over time: `wave_K` for each wave that started (its first pair's upgrade
    /// start to its last pair's end), `steady` for the rest of the run; each with the
    /// fleet's latency and throughput then (every pair's requests intended in it). Runs
    /// written before it had these as their `phases`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub periods: Vec<PhaseSummary>,
    pub pairs: Vec<FleetPair>,
}

/// One wave of a campaign.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// 1 for the first (the canary).
    pub wave: usize,
    pub pairs: Vec<String>,
    /// Its first pair's upgrade start (ms since the Unix epoch); none if none started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<u64>,
    /// Its last pair's upgrade end; none while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<u64>,
    /// `completed` (every pair upgraded), `stopped` (a pair rolled back or failed),
    /// `running` or `not_started`.
    pub state: String,
}

/// One pair of a fleet run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetPair {
    pub name: String,
    /// Its own run directory, relative to the fleet run's: `pairs/NAME`.
    pub dir: String,
    /// The wave it belongs to (1-based), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
    /// `upgraded`, `rolled_back`, `failed`, `running`, `pending` (a campaign's), or
    /// `not_upgraded` (no upgrade during the run, and no campaign says otherwise).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_start_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_end_ms: Option<u64>,
    pub acknowledged_updates: u64,
    pub verified_updates: u64,
    pub lost_updates: u64,
    pub switchovers: usize,
    /// Its worst client-visible gap, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_gap_ms: Option<f64>,
    #[serde(default)]
    pub simplex_ms: u64,
    /// Its phases as its own summary has them (without the percentile spectra).
    pub phases: Vec<PhaseSummary>,
    /// Why it ended as it did (the upgrade's or the campaign's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Milliseconds of `windows` that fall in `start_ms..end_ms`.
pub fn overlap_ms(windows: &[[u64; 2]], start_ms: u64, end_ms: u64) -> u64 {
    windows
        .iter()
        .map(|[s, e]| (*e).min(end_ms).saturating_sub((*s).max(start_ms)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_need_ten_samples_beyond_them() {
        assert!(!percentile_supported(19, 0.5));
        assert!(percentile_supported(20, 0.5));
        assert!(!percentile_supported(999, 0.99));
        assert!(percentile_supported(1_000, 0.99));
        assert!(!percentile_supported(9_999, 0.999));
        assert!(percentile_supported(10_000, 0.999));
        assert!(percentile_supported(1, 1.0));
        assert!(!percentile_supported(0, 1.0));
    }
}
