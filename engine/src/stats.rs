//! What an engine measures of its own service, for the upgrade's acceptance check: commands
//! served, error replies, and reply latency (read to reply written) in an HdrHistogram.
//!
//! The supervisor reads and resets it at the start and end of a window (the baseline before
//! an upgrade, the evaluation of the new version), so the figures describe just that window.

use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub struct Stats {
    latency_us: Histogram<u64>,
    commands: u64,
    errors: u64,
    /// Commands since the engine started (never reset): `INFO`'s `total_commands_processed`.
    commands_total: u64,
    since: Instant,
    /// Commands executed in the current round of a connection, not yet recorded.
    pub unrecorded_commands: u64,
}

/// What `TANDEM.STATS` reports (a [`crate::contract`] message).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct StatsReport {
    pub window_ms: u64,
    pub commands: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub latency_us_p999: u64,
    pub latency_us_max: u64,
}

impl crate::contract::Message for StatsReport {
    const NAME: &'static str = "stats";
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            // 1 µs to 1 hour at 3 significant digits: allocated once.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            commands: 0,
            errors: 0,
            commands_total: 0,
            since: Instant::now(),
            unrecorded_commands: 0,
        }
    }
}

impl Stats {
    pub fn error(&mut self) {
        self.errors += 1;
    }

    /// `commands` were answered after `latency_us`.
    pub fn record(&mut self, commands: u64, latency_us: u64) {
        if commands == 0 {
            return;
        }
        self.commands += commands;
        self.commands_total += commands;
        let _ = self.latency_us.record_n(latency_us.max(1), commands);
    }

    pub fn report(&self) -> StatsReport {
        let h = &self.latency_us;
        StatsReport {
            window_ms: self.since.elapsed().as_millis() as u64,
            commands: self.commands,
            errors: self.errors,
            error_rate: if self.commands == 0 {
                0.0
            } else {
                self.errors as f64 / self.commands as f64
            },
            latency_us_p50: h.value_at_quantile(0.5),
            latency_us_p99: h.value_at_quantile(0.99),
            latency_us_p999: h.value_at_quantile(0.999),
            latency_us_max: h.max(),
        }
    }

    pub fn commands_total(&self) -> u64 {
        self.commands_total
    }

    pub fn reset(&mut self) {
        self.latency_us.reset();
        self.commands = 0;
        self.errors = 0;
        self.since = Instant::now();
    }
}
