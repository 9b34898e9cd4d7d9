//! The lost-update check. Each connection keeps a [`Ledger`] of what was acknowledged to it:
//! per key of its partition the writer sequence number of the last acknowledged `SET` (a
//! `Vec<u64>` indexed by the key's rank in the partition), and per session the last
//! acknowledged state (open with its counter, or ended). Writes to one key come from one
//! connection, in order, and every `SET` (retries included) carries a new, higher sequence
//! number, so the check is exact.
//!
//! At the end of the run [`verify`] reads everything back from the active, pipelined, and
//! counts an update as lost when the value found is missing or older than the one
//! acknowledged (a newer one is fine: a write whose reply was lost may have been applied).
//! A live session is read with `SESSION.GET` (`HGET sess:<id> counter` on Redis); if it is
//! gone, an unacknowledged `SESSION.END` may have ended it, so its record `cdr:<id>` is
//! read instead. An ended session is checked by its record.

use std::time::{Duration, Instant};

use resp::{Client, Reply};

use crate::error::describe_client_error;
use crate::protocol::{
    key_name, parse_u64, record_key, redis_session_key, value_seq, Dialect, SessionRef, Text,
};
use crate::workload::SessionStep;

/// Requests per pipelined read-back batch.
const BATCH_REQUESTS: usize = 256;
/// How long the read-back may look for the active.
const FIND_ACTIVE_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Read-back batches redone after a redirect, at most (each after finding the active again).
const BATCH_ATTEMPTS_MAX: usize = 5;
/// Lost updates described in the result, at most.
const EXAMPLES_MAX: usize = 10;

/// The last acknowledged state of a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionAck {
    #[default]
    None,
    Open {
        counter: u64,
    },
    Ended {
        counter: u64,
    },
}

/// The first writer sequence number of a run whose id is `run` (its start, wall-clock
/// milliseconds): numbers grow across runs, so that a value left in the pair by an earlier
/// run is older than any write of this one and cannot pass for it (2^20 writes per
/// connection per millisecond of the earlier run would be needed to catch up).
pub fn first_seq(run: u64) -> u64 {
    (run << 20) + 1
}

/// What was acknowledged to one connection.
#[derive(Clone, Debug)]
pub struct Ledger {
    run: u64,
    connection: usize,
    stride: u64,
    /// By rank in the partition (key = rank * stride + connection); 0: never acknowledged.
    key_seq_acked: Vec<u64>,
    /// By generation.
    sessions: Vec<SessionAck>,
    acknowledged_updates: u64,
}

impl Ledger {
    pub fn new(
        run: u64,
        connection: usize,
        stride: u64,
        local_keys: u64,
        sessions_hint: usize,
    ) -> Ledger {
        Ledger {
            run,
            connection,
            stride,
            key_seq_acked: vec![0; local_keys as usize],
            sessions: Vec::with_capacity(sessions_hint),
            acknowledged_updates: 0,
        }
    }

    pub fn acknowledged_updates(&self) -> u64 {
        self.acknowledged_updates
    }

    /// A `SET` of the key of rank `local` with sequence number `seq` was acknowledged.
    pub fn ack_set(&mut self, local: u64, seq: u64) {
        let slot = &mut self.key_seq_acked[local as usize];
        // One connection writes a key, replies come in order, each send takes a new number.
        assert!(
            seq > *slot,
            "key rank {local}: acknowledgement of write #{seq} after #{slot}"
        );
        *slot = seq;
        self.acknowledged_updates += 1;
    }

    /// Makes room for session `generation` (called when it is first sent).
    pub fn note_session(&mut self, generation: u64) {
        while self.sessions.len() as u64 <= generation {
            self.sessions.push(SessionAck::None);
        }
    }

    /// A session step was acknowledged; `counter` is an update's reply.
    pub fn ack_session(&mut self, generation: u64, step: SessionStep, counter: Option<i64>) {
        self.note_session(generation);
        let slot = &mut self.sessions[generation as usize];
        let counter_now = match *slot {
            SessionAck::Open { counter } | SessionAck::Ended { counter } => counter,
            SessionAck::None => 0,
        };
        *slot = match (step, *slot) {
            (_, SessionAck::Ended { .. }) => *slot, // nothing follows an end
            (SessionStep::Open, SessionAck::None) => SessionAck::Open { counter: 0 },
            (SessionStep::Open, open) => open,
            (SessionStep::Update, _) => SessionAck::Open {
                counter: counter
                    .and_then(|c| u64::try_from(c).ok())
                    .unwrap_or(counter_now)
                    .max(counter_now),
            },
            (SessionStep::End, _) => SessionAck::Ended {
                counter: counter_now,
            },
        };
        self.acknowledged_updates += 1;
    }

    pub fn session(&self, generation: u64) -> SessionAck {
        self.sessions
            .get(generation as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// The result of the read-back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verification {
    /// Keys and sessions found with their acknowledged state (or newer).
    pub verified: u64,
    /// Keys and sessions found older than acknowledged, or missing.
    pub lost: u64,
    /// A few of the lost ones, described.
    pub examples: Vec<String>,
    /// Where it was read from.
    pub read_from: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot verify the acknowledged updates: no active engine among {candidates} within {waited_s:.0} s (last: {last})")]
    NoActive {
        candidates: String,
        waited_s: f64,
        last: String,
    },
    #[error("cannot verify the acknowledged updates: reading back from {addr} failed {attempts} times (last: {last})")]
    ReadBack {
        addr: String,
        attempts: usize,
        last: String,
    },
}

/// What to read back, and what must be found.
#[derive(Clone, Copy, Debug)]
enum Probe {
    Key {
        key: u64,
        seq: u64,
    },
    /// A session left open (its record is read if it is gone).
    Live {
        session: SessionRef,
        counter: u64,
    },
    /// A session's end record.
    Record {
        session: SessionRef,
        counter: u64,
        ended: bool,
    },
}

enum Finding {
    Ok,
    Lost(String),
    /// The live session is gone: read its record.
    ReadRecord,
}

/// Reads back everything the ledgers hold from the active among `candidates`.
pub async fn verify(
    ledgers: &[Ledger],
    candidates: &[String],
    dialect: Dialect,
) -> Result<Verification, VerifyError> {
    let mut reader = Reader::connect(candidates, dialect).await?;
    let mut result = Verification {
        read_from: reader.addr.clone(),
        ..Verification::default()
    };
    let mut batch = Vec::with_capacity(BATCH_REQUESTS);
    let mut records = Vec::new();
    for ledger in ledgers {
        for (rank, &seq) in ledger.key_seq_acked.iter().enumerate() {
            if seq > 0 {
                let key = rank as u64 * ledger.stride + ledger.connection as u64;
                batch.push(Probe::Key { key, seq });
                if batch.len() == BATCH_REQUESTS {
                    reader.check(&mut batch, &mut result, &mut records).await?;
                }
            }
        }
        for (generation, ack) in ledger.sessions.iter().enumerate() {
            let session = SessionRef {
                run: ledger.run,
                connection: ledger.connection,
                generation: generation as u64,
            };
            let probe = match *ack {
                SessionAck::None => continue,
                SessionAck::Open { counter } => Probe::Live { session, counter },
                SessionAck::Ended { counter } => Probe::Record {
                    session,
                    counter,
                    ended: true,
                },
            };
            batch.push(probe);
            if batch.len() == BATCH_REQUESTS {
                reader.check(&mut batch, &mut result, &mut records).await?;
            }
        }
    }
    reader.check(&mut batch, &mut result, &mut records).await?;
    for chunk in std::mem::take(&mut records).chunks(BATCH_REQUESTS) {
        batch.extend_from_slice(chunk);
        reader.check(&mut batch, &mut result, &mut records).await?;
    }
    debug_assert!(records.is_empty(), "a record probe never asks for another");
    Ok(result)
}

struct Reader {
    client: Client,
    addr: String,
    candidates: Vec<String>,
    dialect: Dialect,
}

impl Reader {
    /// Connects to the engine that says it is the active (`ROLE` -> `master`); if no
    /// candidate knows `ROLE`, to the first that answers.
    async fn connect(candidates: &[String], dialect: Dialect) -> Result<Reader, VerifyError> {
        let started = Instant::now();
        let mut last = String::from("nothing tried");
        let mut pause = Duration::from_millis(20);
        loop {
            let mut fallback: Option<(Client, String)> = None;
            for addr in candidates {
                let mut client = match Client::connect_timeout(addr.as_str(), CONNECT_TIMEOUT).await
                {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("{addr}: {}", describe_client_error(&e));
                        continue;
                    }
                };
                client.set_timeout(Some(CALL_TIMEOUT));
                match client.call(&[b"ROLE"]).await {
                    Ok(Reply::Array(items))
                        if items.first().and_then(Reply::as_bytes) == Some(b"master") =>
                    {
                        return Ok(Reader {
                            client,
                            addr: addr.clone(),
                            candidates: candidates.to_vec(),
                            dialect,
                        });
                    }
                    Ok(Reply::Error(e)) if !e.starts_with("NOTACTIVE") => {
                        last = format!("{addr}: ROLE: {e}");
                        if fallback.is_none() {
                            fallback = Some((client, addr.clone()));
                        }
                    }
                    Ok(_) => last = format!("{addr}: not the active"),
                    Err(e) => last = format!("{addr}: {}", describe_client_error(&e)),
                }
            }
            if let Some((client, addr)) = fallback {
                return Ok(Reader {
                    client,
                    addr,
                    candidates: candidates.to_vec(),
                    dialect,
                });
            }
            if started.elapsed() >= FIND_ACTIVE_TIMEOUT {
                return Err(VerifyError::NoActive {
                    candidates: candidates.join(", "),
                    waited_s: started.elapsed().as_secs_f64(),
                    last,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Reads `batch` back, adds the findings to `result` and the records to read next to
    /// `records`; empties `batch`.
    async fn check(
        &mut self,
        batch: &mut Vec<Probe>,
        result: &mut Verification,
        records: &mut Vec<Probe>,
    ) -> Result<(), VerifyError> {
        if batch.is_empty() {
            return Ok(());
        }
        let replies = self.read(batch).await?;
        for (probe, reply) in batch.iter().zip(&replies) {
            match judge(self.dialect, probe, reply) {
                Finding::Ok => result.verified += 1,
                Finding::Lost(what) => {
                    result.lost += 1;
                    if result.examples.len() < EXAMPLES_MAX {
                        result.examples.push(what);
                    }
                }
                Finding::ReadRecord => {
                    if let Probe::Live { session, counter } = *probe {
                        records.push(Probe::Record {
                            session,
                            counter,
                            ended: false,
                        });
                    }
                }
            }
        }
        batch.clear();
        Ok(())
    }

    /// One pipelined round trip; after a redirect or a lost connection, finds the active
    /// again and redoes the batch.
    async fn read(&mut self, batch: &[Probe]) -> Result<Vec<Reply>, VerifyError> {
        let mut last = String::new();
        for _ in 0..BATCH_ATTEMPTS_MAX {
            for probe in batch {
                let (name, arg, field) = request(self.dialect, probe);
                match field {
                    Some(field) => self.client.queue(&[name, arg.as_bytes(), field]),
                    None => self.client.queue(&[name, arg.as_bytes()]),
                }
            }
            let mut replies = Vec::with_capacity(batch.len());
            let mut failed = self
                .client
                .flush()
                .await
                .err()
                .map(|e| describe_client_error(&e));
            while failed.is_none() && replies.len() < batch.len() {
                match self.client.read_reply().await {
                    Ok(reply) => replies.push(reply),
                    Err(e) => failed = Some(describe_client_error(&e)),
                }
            }
            let redirected = replies.iter().find_map(|r| {
                r.error_message()
                    .filter(|m| m.starts_with("NOTACTIVE") || m.starts_with("READONLY"))
            });
            match (failed, redirected) {
                (None, None) => return Ok(replies),
                (Some(reason), _) => last = reason,
                (None, Some(message)) => last = message.to_string(),
            }
            let fresh = Reader::connect(&self.candidates, self.dialect).await?;
            *self = fresh;
        }
        Err(VerifyError::ReadBack {
            addr: self.addr.clone(),
            attempts: BATCH_ATTEMPTS_MAX,
            last,
        })
    }
}

/// The request that reads a probe back: command, key, and a hash field on Redis.
fn request(dialect: Dialect, probe: &Probe) -> (&'static [u8], Text, Option<&'static [u8]>) {
    match (*probe, dialect) {
        (Probe::Key { key, .. }, _) => (b"GET", key_name(key), None),
        (Probe::Live { session, .. }, Dialect::Tandem) => (b"SESSION.GET", session.id(), None),
        (Probe::Live { session, .. }, Dialect::Redis) => {
            (b"HGET", redis_session_key(&session.id()), Some(b"counter"))
        }
        (Probe::Record { session, .. }, Dialect::Tandem) => {
            (b"GET", record_key(&session.id()), None)
        }
        (Probe::Record { session, .. }, Dialect::Redis) => {
            (b"HGET", record_key(&session.id()), Some(b"counter"))
        }
    }
}

fn judge(dialect: Dialect, probe: &Probe, reply: &Reply) -> Finding {
    let found = |n: Option<u64>, wanted: u64, what: String| match n {
        Some(n) if n >= wanted => Finding::Ok,
        Some(n) => Finding::Lost(format!("{what}, found {n}")),
        None => Finding::Lost(format!("{what}, found {}", describe(reply))),
    };
    let name = |session: SessionRef| String::from_utf8_lossy(session.id().as_bytes()).into_owned();
    match *probe {
        Probe::Key { key, seq } => {
            let what = format!("key:{key}: acknowledged write #{seq}");
            match reply {
                Reply::Bulk(value) => match value_seq(value) {
                    Some(n) if n >= seq => Finding::Ok,
                    Some(n) => Finding::Lost(format!("{what}, found write #{n}")),
                    None => Finding::Lost(format!("{what}, found a value not written here")),
                },
                _ => Finding::Lost(format!("{what}, found {}", describe(reply))),
            }
        }
        Probe::Live { session, counter } => {
            let what = format!(
                "session {}: acknowledged open with counter {counter}",
                name(session)
            );
            let n = match (dialect, reply) {
                (_, Reply::Nil | Reply::NilArray) => return Finding::ReadRecord,
                (Dialect::Tandem, Reply::Array(items)) => items
                    .get(1)
                    .and_then(Reply::as_integer)
                    .and_then(|n| u64::try_from(n).ok()),
                (Dialect::Redis, Reply::Bulk(b)) => parse_u64(b),
                _ => None,
            };
            found(n, counter, what)
        }
        Probe::Record {
            session,
            counter,
            ended,
        } => {
            let what = format!(
                "session {}: acknowledged {} with counter {counter}",
                name(session),
                if ended { "end" } else { "open" }
            );
            let n = match (dialect, reply) {
                // The reference application's record: "<subscriber> <counter>".
                (Dialect::Tandem, Reply::Bulk(b)) => b
                    .iter()
                    .rposition(|&c| c == b' ')
                    .and_then(|space| parse_u64(&b[space + 1..])),
                (Dialect::Redis, Reply::Bulk(b)) => parse_u64(b),
                _ => None,
            };
            found(n, counter, what)
        }
    }
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Nil | Reply::NilArray => "nothing".into(),
        Reply::Error(e) => format!("error '{e}'"),
        other => format!("'{other}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn ledger_keeps_the_last_acknowledged_state() {
        let mut l = Ledger::new(7, 1, 4, 10, 0);
        l.ack_set(3, 5);
        l.ack_set(3, 9);
        assert_eq!(l.key_seq_acked[3], 9);
        l.ack_session(2, SessionStep::Open, None);
        assert_eq!(l.session(2), SessionAck::Open { counter: 0 });
        l.ack_session(2, SessionStep::Update, Some(2));
        l.ack_session(2, SessionStep::End, None);
        assert_eq!(l.session(2), SessionAck::Ended { counter: 2 });
        l.ack_session(2, SessionStep::Open, None);
        assert_eq!(l.session(2), SessionAck::Ended { counter: 2 }, "final");
        assert_eq!(l.session(0), SessionAck::None);
        assert_eq!(l.acknowledged_updates(), 6);
    }

    #[test]
    #[should_panic(expected = "acknowledgement of write #4 after #5")]
    fn acknowledgements_go_forward() {
        let mut l = Ledger::new(7, 0, 1, 10, 0);
        l.ack_set(3, 5);
        l.ack_set(3, 4);
    }

    #[test]
    fn judging_what_was_read_back() {
        let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let key = Probe::Key { key: 7, seq: 10 };
        let t = Dialect::Tandem;
        assert!(matches!(judge(t, &key, &bulk("10:xx")), Finding::Ok));
        assert!(
            matches!(judge(t, &key, &bulk("11:xx")), Finding::Ok),
            "newer is fine"
        );
        match judge(t, &key, &bulk("9:xx")) {
            Finding::Lost(what) => {
                assert_eq!(what, "key:7: acknowledged write #10, found write #9")
            }
            _ => panic!("older is lost"),
        }
        assert!(matches!(judge(t, &key, &Reply::Nil), Finding::Lost(_)));
        let session = SessionRef {
            run: 7,
            connection: 1,
            generation: 2,
        };
        let live = Probe::Live {
            session,
            counter: 3,
        };
        let found = Reply::Array(vec![
            bulk("active"),
            Reply::Integer(3),
            bulk("c1"),
            bulk(""),
        ]);
        assert!(matches!(judge(t, &live, &found), Finding::Ok));
        assert!(matches!(judge(t, &live, &Reply::Nil), Finding::ReadRecord));
        let record = Probe::Record {
            session,
            counter: 3,
            ended: true,
        };
        assert!(matches!(judge(t, &record, &bulk("c1 4")), Finding::Ok));
        match judge(t, &record, &bulk("c1 2")) {
            Finding::Lost(what) => assert_eq!(
                what,
                "session s7.1.2: acknowledged end with counter 3, found 2"
            ),
            _ => panic!("an older record is lost"),
        }
        let r = Dialect::Redis;
        assert!(matches!(judge(r, &live, &bulk("3")), Finding::Ok));
        assert!(matches!(judge(r, &record, &Reply::Nil), Finding::Lost(_)));
        let (name, arg, field) = request(r, &live);
        assert_eq!(
            (name, arg.as_bytes(), field),
            (&b"HGET"[..], &b"sess:s7.1.2"[..], Some(&b"counter"[..]))
        );
    }
}
