//! The run's time base. Everything inside the run is an offset from its start on the
//! monotonic clock (nanoseconds or microseconds since [`Clock::start`]); the wall clock is
//! read once, at the start, to place those offsets on the timeline's clock (milliseconds
//! since the Unix epoch, which the supervisor stamps its events with).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_wall_us: u64,
}

impl Clock {
    pub fn start_now() -> Clock {
        let start = Instant::now();
        let start_wall_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Clock {
            start,
            start_wall_us,
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The instant `ns` after the start.
    pub fn instant_at_ns(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }

    pub fn start_wall_us(&self) -> u64 {
        self.start_wall_us
    }

    pub fn start_wall_ms(&self) -> u64 {
        self.start_wall_us / 1000
    }

    /// Wall-clock milliseconds of the offset `us`.
    pub fn wall_ms_at_us(&self, us: u64) -> u64 {
        (self.start_wall_us + us) / 1000
    }

    /// The offset, in microseconds, of wall-clock millisecond `ms` (0 if before the start).
    pub fn us_at_wall_ms(&self, ms: u64) -> u64 {
        (ms * 1000).saturating_sub(self.start_wall_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_and_offsets_agree() {
        let c = Clock::start_now();
        let ms = c.wall_ms_at_us(2_500_000);
        assert_eq!(ms, (c.start_wall_us() + 2_500_000) / 1000);
        let back = c.us_at_wall_ms(ms);
        assert!(back <= 2_500_000 && 2_500_000 - back < 1000);
        assert_eq!(c.us_at_wall_ms(0), 0);
        assert!(c.instant_at_ns(1_000) > c.start());
    }
}
