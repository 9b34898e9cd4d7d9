//! What the clients saw, and the invariants checked against it.
//!
//! Every write puts a value no other write puts (its index), so a read names the write it
//! saw. The register check is the lost-update check: a read invoked after write `W` was
//! acknowledged must return `W` or a write that may come after it, never a write acknowledged
//! before `W` was even sent, nor the empty value, nor a value no write can have put.

use std::fmt;

/// An invariant broken, with what shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    LostUpdate(String),
    PhantomRead(String),
    StaleAck(String),
    UngrantedEpoch(String),
    EpochWentBack(String),
    DigestsDiffer(String),
    NoService(String),
    UpgradeUnfinished(String),
}

impl Violation {
    pub fn name(&self) -> &'static str {
        match self {
            Violation::LostUpdate(_) => "no acknowledged update lost",
            Violation::PhantomRead(_) => "a read returns only a value that was written",
            Violation::StaleAck(_) => "no write acknowledged that a newer active lacks",
            Violation::UngrantedEpoch(_) => "no engine acknowledges in an epoch nobody granted",
            Violation::EpochWentBack(_) => "epochs never go back",
            Violation::DigestsDiffer(_) => "equal digests whenever the standby holds everything",
            Violation::NoService(_) => "once faults stop, the pair serves again or says why not",
            Violation::UpgradeUnfinished(_) => "an upgrade ends completed or rolled back",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Violation::LostUpdate(d)
            | Violation::PhantomRead(d)
            | Violation::StaleAck(d)
            | Violation::UngrantedEpoch(d)
            | Violation::EpochWentBack(d)
            | Violation::DigestsDiffer(d)
            | Violation::NoService(d)
            | Violation::UpgradeUnfinished(d) => d,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.detail())
    }
}

pub struct Write {
    pub key: u64,
    pub invoked: u64,
    pub acked: Option<u64>,
    /// Refused before it was executed.
    pub failed: bool,
}

#[derive(Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub reads_checked: u64,
    pub acked: u64,
    pub last_ack: u64,
    /// The newest epoch any engine was seen active in, and the newest the supervisor granted.
    pub newest_active: u64,
    /// The sequence the engine of `newest_active` had applied when it became active.
    pub newest_active_from: u64,
    pub granted: u64,
}

impl History {
    pub fn invoke(&mut self, key: u64, now: u64) -> usize {
        self.writes.push(Write {
            key,
            invoked: now,
            acked: None,
            failed: false,
        });
        self.writes.len() - 1
    }

    /// `engine`, in `epoch`, released the reply of `write`, which it made at sequence `seq`.
    /// An older epoch may still release what the newer active holds (a standby acknowledged
    /// it just before its promotion, and the ack reached a paused old active late), never
    /// a write made after the newer active took over.
    pub fn released(
        &mut self,
        write: usize,
        engine: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<(), Violation> {
        if epoch > self.granted {
            return Err(Violation::UngrantedEpoch(format!(
                "{engine} acknowledged write #{write} in epoch {epoch}; the newest granted is {}",
                self.granted
            )));
        }
        if epoch < self.newest_active && seq > self.newest_active_from {
            return Err(Violation::StaleAck(format!(
                "{engine} acknowledged write #{write} (sequence {seq}) in epoch {epoch}, but epoch {} became active at sequence {} without it",
                self.newest_active, self.newest_active_from
            )));
        }
        Ok(())
    }

    pub fn ack(&mut self, write: usize, now: u64) {
        self.writes[write].acked = Some(now);
        self.acked += 1;
        self.last_ack = now;
    }

    /// A read of `key`, invoked at `invoked`, returned the value of `value` (None: empty).
    pub fn read(
        &mut self,
        key: u64,
        invoked: u64,
        now: u64,
        value: Option<usize>,
    ) -> Result<(), Violation> {
        self.reads_checked += 1;
        let seen = match value {
            Some(v) => {
                let Some(w) = self.writes.get(v).filter(|w| w.key == key && !w.failed) else {
                    return Err(Violation::PhantomRead(format!(
                        "key {key} read as #{v}, which no write of that key put"
                    )));
                };
                if w.invoked > now {
                    return Err(Violation::PhantomRead(format!(
                        "key {key} read as #{v} before that write was sent"
                    )));
                }
                Some(v)
            }
            None => None,
        };
        // The newest write acknowledged before this read began: what it must at least see.
        let floor = self
            .writes
            .iter()
            .enumerate()
            .filter(|(_, w)| w.key == key && w.acked.is_some_and(|a| a < invoked))
            .max_by_key(|(_, w)| w.invoked);
        let Some((f, fw)) = floor else {
            return Ok(());
        };
        let lost = match seen {
            None => true,
            Some(v) => v != f && self.writes[v].acked.is_some_and(|a| a < fw.invoked),
        };
        if lost {
            let shown = seen.map_or("empty".to_string(), |v| format!("#{v}"));
            return Err(Violation::LostUpdate(format!(
                "key {key} read as {shown} at {:.3} ms, but write #{f} was acknowledged at {:.3} ms, before the read began ({:.3} ms)",
                now as f64 / 1e6,
                fw.acked.unwrap_or(0) as f64 / 1e6,
                invoked as f64 / 1e6
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_register_check_finds_a_lost_update_and_allows_a_concurrent_one() {
        let mut h = History::default();
        let w0 = h.invoke(1, 0);
        h.ack(w0, 10);
        let w1 = h.invoke(1, 20);
        h.ack(w1, 30);
        let w2 = h.invoke(1, 40); // outcome unknown: may or may not have happened
        assert!(h.read(1, 50, 60, Some(w1)).is_ok());
        assert!(h.read(1, 50, 60, Some(w2)).is_ok());
        assert!(matches!(
            h.read(1, 50, 60, Some(w0)),
            Err(Violation::LostUpdate(_))
        ));
        assert!(matches!(
            h.read(1, 50, 60, None),
            Err(Violation::LostUpdate(_))
        ));
        // A read that began before w1 was acknowledged may still see w0.
        assert!(h.read(1, 25, 60, Some(w0)).is_ok());
        h.writes[w2].failed = true;
        assert!(matches!(
            h.read(1, 50, 60, Some(w2)),
            Err(Violation::PhantomRead(_))
        ));
    }
}
