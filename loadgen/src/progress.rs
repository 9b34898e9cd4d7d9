//! The live progress line on stderr: elapsed time, reply rate over the last second, p99 of
//! the last finalized second, errors, current phase. Written in place (`\r`), once a
//! second, only when asked for and stderr is a terminal; nothing otherwise.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(1);

pub struct Progress {
    enabled: bool,
    last_at: Instant,
    last_ops: u64,
    shown: bool,
}

/// What the line shows.
pub struct Snapshot<'a> {
    pub elapsed: Duration,
    pub ops: u64,
    pub errors: u64,
    /// p99 of the last finalized one-second slice, microseconds.
    pub p99_us: Option<u64>,
    pub phase: &'a str,
}

impl Progress {
    pub fn new(wanted: bool) -> Progress {
        Progress {
            enabled: wanted && std::io::stderr().is_terminal(),
            last_at: Instant::now(),
            last_ops: 0,
            shown: false,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Redraws the line if a period passed since the last time.
    pub fn update(&mut self, snapshot: &Snapshot<'_>) {
        if !self.enabled || self.last_at.elapsed() < PERIOD {
            return;
        }
        let rate = (snapshot.ops - self.last_ops) as f64 / self.last_at.elapsed().as_secs_f64();
        self.last_at = Instant::now();
        self.last_ops = snapshot.ops;
        let line = render(snapshot, rate);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.shown = true;
    }

    /// Ends the line so that what follows starts on a new one.
    pub fn finish(&mut self) {
        if self.shown {
            let _ = writeln!(std::io::stderr());
            self.shown = false;
        }
    }
}

fn render(s: &Snapshot<'_>, rate_ops_s: f64) -> String {
    let p99 = match s.p99_us {
        Some(us) if us >= 10_000 => format!("{:.0} ms", us as f64 / 1000.0),
        Some(us) if us >= 1000 => format!("{:.1} ms", us as f64 / 1000.0),
        Some(us) => format!("{us} us"),
        None => "-".into(),
    };
    format!(
        "{:>6.1} s  {:>9.0} ops/s  p99 {:>8}  errors {:<6}  phase {}",
        s.elapsed.as_secs_f64(),
        rate_ops_s,
        p99,
        s.errors,
        s.phase
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_well() {
        let s = Snapshot {
            elapsed: Duration::from_millis(12_340),
            ops: 100,
            errors: 2,
            p99_us: Some(1_234),
            phase: "baseline",
        };
        assert_eq!(
            render(&s, 19_998.4),
            "  12.3 s      19998 ops/s  p99   1.2 ms  errors 2       phase baseline"
        );
        let none = Snapshot { p99_us: None, ..s };
        assert!(render(&none, 0.0).contains("p99        -"));
    }
}
