//! One connection of the run: a task that sends requests, pipelined, and reads their replies
//! in order, on one socket, without allocating per request.
//!
//! Pacing. Open loop: the connection has a schedule of intended send times (its share of
//! the rate, staggered against the other connections); every request due is encoded into
//! the output buffer and the batch goes out with one write. When `pipeline` requests are in
//! flight, the requests that fall due wait, and their latency keeps growing from their
//! intended time, so a stall shows up as the tail it causes (coordinated-omission
//! correction, as wrk2 does). Closed loop: the connection keeps `pipeline` requests in
//! flight and measures from the actual send.
//!
//! Following the pair. A `-NOTACTIVE <addr>` (or Redis' `-READONLY`) means the request was
//! not executed: it is queued for retry, no more requests are sent, the replies still in
//! flight are read, and the connection moves to the named engine (or the next target), with
//! a backoff bounded in count and time. A lost connection leaves the outcome of the
//! requests in flight unknown: they are not acknowledged; a `SET` or `GET` is retried as a
//! new request (a `SET` with a new sequence number), a session whose step is unknown is
//! abandoned and the next session step opens a new one. A retried request keeps its
//! intended send time: the switchover's cost lands in its latency. A server that keeps the
//! connection open but answers nothing for `reply_timeout` (a hung engine) is a lost
//! connection too: that is how a client notices a failover the server cannot announce.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use reports::timeline::SwitchoverKind;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::clock::Clock;
use crate::detail::{Millis, Tally};
use crate::error::describe_io_error;
use crate::protocol::{classify, scan_reply, Dialect, Encoder, Verdict};
use crate::record::{Recorder, Sample, GRACE_US};
use crate::switchover::{Activity, Redirect, Retried};
use crate::verify::Ledger;
use crate::workload::{KeyPicker, OpChooser, OpKind, Rng, SessionCursor, SessionStep};

/// Wake-up period when nothing else is due: attributes samples, hands over slices.
const TICK_NS: u64 = 100_000_000;
/// After the stop, how long retries and replies in flight may still take.
pub const DRAIN_NS: u64 = 10_000_000_000;
/// After a redirect, how long the replies still in flight may take before the connection
/// is given up (their outcome is then unknown).
const REDIRECT_DRAIN_NS: u64 = 2_000_000_000;
/// Finding the active: at most this long and this many attempts without a success.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);
const FOLLOW_ATTEMPTS_MAX: u32 = 1000;
const BACKOFF_MAX: Duration = Duration::from_millis(100);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Free space made in the input buffer before each read.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// How late the timer wakes a paced connection if the pacer did not.
const PACER_SLACK_NS: u64 = 2_000_000;
/// Stop value of the run's watch while it runs.
pub const RUNNING: u64 = u64::MAX;

/// What every connection of a run shares.
pub struct Shared {
    pub clock: Clock,
    pub targets: Vec<String>,
    pub dialect: Dialect,
    pub redis_wait: bool,
    /// The oldest request in flight unanswered this long: the connection is given up.
    pub reply_timeout: Duration,
    pub pipeline: usize,
    /// Open loop: the run's rate; closed loop: `None`.
    pub rate_ops_s: Option<u64>,
    pub connections: usize,
    pub chooser: OpChooser,
    pub activity: Activity,
    /// Whether read replies mark activity (only in a workload without writes).
    pub mark_reads: bool,
    /// Connections that had to find the active (one entry per episode, its `found_us` set
    /// at its first success after it).
    pub redirects: Mutex<Vec<Redirect>>,
    /// Requests sent again, as they went out: each request once, at its first re-send.
    pub retried: Mutex<Vec<Retried>>,
    /// The run per millisecond, for `detail.json`, and replies per second by arrival.
    pub millis: Millis,
    /// Replies received so far (successes and errors), and errors: for the progress line.
    pub ops: AtomicU64,
    pub errors: AtomicU64,
}

/// What a connection starts with.
pub struct Setup {
    pub index: usize,
    pub stream: TcpStream,
    pub address: String,
    pub keys: KeyPicker,
    pub rng: Rng,
    pub encoder: Encoder,
    pub ledger: Ledger,
    pub recorder: Recorder,
    /// `RUNNING`, then the run's stop time (ns since the start).
    pub stop: watch::Receiver<u64>,
    /// Open loop: woken by the pacer when the next request falls due.
    pub pacer: Option<Arc<Notify>>,
    /// The writer sequence number of the first `SET` (see `verify::first_seq`).
    pub seq_first: u64,
}

/// What a connection hands back at the end.
pub struct Report {
    pub index: usize,
    pub ledger: Ledger,
    /// Its samples may still wait for their phase: the run finishes them.
    pub recorder: Recorder,
    /// Where it last talked to.
    pub address: String,
    pub error: Option<ConnectionError>,
    /// Open loop: requests that fell due before the stop but were never sent.
    pub unsent: u64,
    /// The first few distinct error replies.
    pub error_examples: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionError {
    #[error("connection {index} gave up: no active engine among {candidates} after {waited_s:.1} s and {attempts} attempts (last: {last})")]
    NoActive {
        index: usize,
        candidates: String,
        waited_s: f64,
        attempts: u32,
        last: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `seq` is assigned at each send.
    Set {
        local: u64,
        seq: u64,
    },
    Get {
        local: u64,
    },
    Session {
        generation: u64,
        step: SessionStep,
    },
}

impl Op {
    fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// The reply to the write of a write-then-`WAIT` pair, while the `WAIT` reply is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    Pending,
    Done(Option<i64>),
    Redirect,
    Failed,
}

/// Error replies described per connection, at most (for the run's diagnostics).
const ERROR_EXAMPLES_MAX: usize = 3;

#[derive(Clone, Copy, Debug)]
struct Request {
    op: Op,
    intended_ns: u64,
    /// When it was last sent (for the reply timeout).
    sent_ns: u64,
    /// Replies still expected: 1, or 2 for a write followed by `WAIT`.
    replies_left: u8,
    first: First,
    /// Sent again at least once: `retried` counts a request once, however often it is
    /// re-sent.
    resent: bool,
}

/// Intended send times of an open-loop connection.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    first_ns: f64,
    interval_ns: f64,
    next: u64,
}

impl Schedule {
    fn intended_ns(&self) -> u64 {
        (self.first_ns + self.next as f64 * self.interval_ns) as u64
    }

    /// Intended times before `stop_ns` not taken yet.
    fn remaining_before(&self, stop_ns: u64) -> u64 {
        let total = ((stop_ns as f64 - self.first_ns) / self.interval_ns).ceil();
        (total.max(0.0) as u64).saturating_sub(self.next)
    }
}

/// A redirect being handled: where to go, and since when.
#[derive(Clone, Debug)]
struct Redirecting {
    hint: Option<String>,
    kind: SwitchoverKind,
    since_ns: u64,
}

/// Consecutive failures to find the active.
#[derive(Debug, Default)]
struct Follow {
    failures: u32,
    since: Option<Instant>,
    last_problem: String,
}

enum Wake {
    Ready(std::io::Result<tokio::io::Ready>),
    Other,
}

/// Sent first on every connection: tandem then refuses with `-NOTACTIVE <addr of the
/// active>` rather than Redis's `-READONLY`, so that a switchover is followed at once. Its
/// reply (an error, from a server that is not tandem) is skipped.
const PREAMBLE: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$9\r\nNOTACTIVE\r\n$2\r\nON\r\n";

struct Connection {
    shared: Arc<Shared>,
    /// Replies still to skip: the preamble's.
    preamble: usize,
    index: usize,
    stream: Option<TcpStream>,
    address: String,
    keys: KeyPicker,
    rng: Rng,
    encoder: Encoder,
    sessions: SessionCursor,
    ledger: Ledger,
    recorder: Recorder,
    stop: watch::Receiver<u64>,
    stop_closed: bool,
    pacer: Option<Arc<Notify>>,
    schedule: Option<Schedule>,
    in_flight: VecDeque<Request>,
    retry: VecDeque<Request>,
    out: BytesMut,
    input: BytesMut,
    seq_next: u64,
    redirect: Option<Redirecting>,
    follow: Follow,
    last_marked_bucket: u64,
    /// This connection's counts for the millisecond it is recording (it adds them to the
    /// shared counters itself when the millisecond or second changes; the rest at the end).
    tally: Tally,
    /// The millisecond (of the run's clock) the progress counters were last published in.
    published_ms: u64,
    /// The entry in `shared.redirects` of the episode being followed, until a success.
    episode: Option<usize>,
    ops_unpublished: u64,
    errors_unpublished: u64,
    /// Scratch list of abandoned session generations.
    abandoned: Vec<u64>,
    error_examples: Vec<String>,
}

/// Runs one connection until the run stops (and its work drains) or it cannot find the
/// active any more.
pub async fn run(shared: Arc<Shared>, setup: Setup) -> Report {
    let schedule = shared.rate_ops_s.map(|rate| {
        let per_op_ns = 1e9 / rate as f64;
        Schedule {
            first_ns: setup.index as f64 * per_op_ns,
            interval_ns: shared.connections as f64 * per_op_ns,
            next: 0,
        }
    });
    let pipeline = shared.pipeline;
    let mut out = BytesMut::with_capacity(READ_CHUNK_BYTES);
    out.extend_from_slice(PREAMBLE);
    let mut c = Connection {
        preamble: 1,
        index: setup.index,
        stream: Some(setup.stream),
        address: setup.address,
        keys: setup.keys,
        rng: setup.rng,
        encoder: setup.encoder,
        sessions: SessionCursor::default(),
        ledger: setup.ledger,
        recorder: setup.recorder,
        stop: setup.stop,
        stop_closed: false,
        pacer: setup.pacer,
        schedule,
        in_flight: VecDeque::with_capacity(pipeline),
        retry: VecDeque::with_capacity(pipeline),
        out,
        input: BytesMut::with_capacity(READ_CHUNK_BYTES * 2),
        seq_next: setup.seq_first,
        redirect: None,
        follow: Follow::default(),
        last_marked_bucket: u64::MAX,
        tally: Tally::default(),
        published_ms: u64::MAX,
        episode: None,
        ops_unpublished: 0,
        errors_unpublished: 0,
        abandoned: Vec::with_capacity(pipeline),
        error_examples: Vec::new(),
        shared,
    };
    let error = c.drive().await.err();
    // The counters of `detail.json` are read once every connection has ended.
    c.tally.flush(&c.shared.millis);
    c.publish_counters();
    if error.is_some() {
        // Given up mid-run: hand in what was measured once the timeline had its grace
        // period, so that the slices this connection held open are finalized with the run.
        tokio::time::sleep(Duration::from_micros(GRACE_US)).await;
        let now_us = c.clock().now_us();
        c.recorder.commit_due(now_us, u64::MAX);
    }
    let stop_ns = *c.stop.borrow();
    let unsent = match (&c.schedule, stop_ns) {
        (Some(s), stop) if stop != RUNNING => s.remaining_before(stop),
        _ => 0,
    };
    Report {
        index: c.index,
        ledger: c.ledger,
        recorder: c.recorder,
        address: c.address,
        error,
        unsent,
        error_examples: c.error_examples,
    }
}

impl Connection {
    fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    async fn drive(&mut self) -> Result<(), ConnectionError> {
        let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        loop {
            let now_ns = self.clock().now_ns();
            let stop_ns = *self.stop.borrow();
            let outstanding_us = self.outstanding_us(now_ns, stop_ns);
            self.recorder.commit_due(now_ns / 1000, outstanding_us);
            // The progress line reads these every 100 ms: once per millisecond is plenty,
            // and keeps the shared cache lines cold.
            let now_ms = now_ns / 1_000_000;
            if now_ms != self.published_ms {
                self.published_ms = now_ms;
                self.publish_counters();
            }
            if self.finished(now_ns, stop_ns) {
                return Ok(());
            }
            if self.must_reconnect(now_ns) {
                if !self.reconnect().await? {
                    return Ok(()); // the drain deadline passed while looking for the active
                }
                continue;
            }
            if self.reply_overdue(now_ns) {
                let ms = self.shared.reply_timeout.as_millis();
                self.connection_lost(&format!("no reply within {ms} ms"));
                continue;
            }
            if self.redirect.is_none() {
                self.fill(now_ns, stop_ns);
            }
            if !self.out.is_empty() {
                if let Err(problem) = self.write_some() {
                    self.connection_lost(&problem);
                    continue;
                }
            }
            let wake_ns = self.next_wake_ns(now_ns, stop_ns);
            timer
                .as_mut()
                .reset(self.clock().instant_at_ns(wake_ns).into());
            let interest = if self.out.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let wake = {
                let Some(stream) = self.stream.as_ref() else {
                    continue;
                };
                let (stop, stop_closed) = (&mut self.stop, self.stop_closed);
                let paced = self.pacer.as_deref().map(Notify::notified);
                tokio::select! {
                    biased;
                    ready = stream.ready(interest) => Wake::Ready(ready),
                    () = async { paced.expect("guarded").await }, if paced.is_some() => Wake::Other,
                    changed = stop.changed(), if !stop_closed => {
                        self.stop_closed = changed.is_err();
                        Wake::Other
                    }
                    () = &mut timer => Wake::Other,
                }
            };
            if let Wake::Ready(ready) = wake {
                let result = match ready {
                    Ok(ready) => {
                        let mut result = Ok(());
                        if ready.is_writable() && !self.out.is_empty() {
                            result = self.write_some();
                        }
                        if result.is_ok() && (ready.is_readable() || ready.is_read_closed()) {
                            result = self.read_some();
                        }
                        result
                    }
                    Err(e) => Err(describe_io_error(&e)),
                };
                if let Err(problem) = result {
                    self.connection_lost(&problem);
                }
            }
        }
    }

    /// Whether the run stopped and nothing is left to do (or the drain time is up).
    fn finished(&self, now_ns: u64, stop_ns: u64) -> bool {
        if stop_ns == RUNNING {
            return false;
        }
        if now_ns >= stop_ns.saturating_add(DRAIN_NS) {
            return true;
        }
        let nothing_due = self
            .schedule
            .as_ref()
            .is_none_or(|s| s.intended_ns() >= stop_ns);
        nothing_due && self.in_flight.is_empty() && self.retry.is_empty()
    }

    fn must_reconnect(&self, now_ns: u64) -> bool {
        match (&self.stream, &self.redirect) {
            (None, _) => true,
            (Some(_), Some(r)) => {
                self.in_flight.is_empty() || now_ns >= r.since_ns + REDIRECT_DRAIN_NS
            }
            (Some(_), None) => false,
        }
    }

    /// The earliest intended time (µs since the start) of a request that may still get a
    /// reply: the first in flight, the first to retry, the next due (closed loop: now, while
    /// the run goes on); `u64::MAX` when none may. Requests go out in intended order
    /// (retries first), so the fronts are the earliest.
    fn outstanding_us(&self, now_ns: u64, stop_ns: u64) -> u64 {
        let mut low = u64::MAX;
        if let Some(r) = self.in_flight.front() {
            low = low.min(r.intended_ns);
        }
        if let Some(r) = self.retry.front() {
            low = low.min(r.intended_ns);
        }
        match &self.schedule {
            Some(schedule) => {
                let t = schedule.intended_ns();
                if t < stop_ns {
                    low = low.min(t);
                }
            }
            None if now_ns < stop_ns => low = low.min(now_ns),
            None => {}
        }
        if low == u64::MAX {
            u64::MAX
        } else {
            low / 1000
        }
    }

    /// Encodes the retries, then every request due, up to `pipeline` in flight.
    fn fill(&mut self, now_ns: u64, stop_ns: u64) {
        let mut retried = 0;
        while self.in_flight.len() < self.shared.pipeline {
            if let Some(mut request) = self.retry.pop_front() {
                if !request.resent {
                    request.resent = true;
                    retried += 1;
                }
                self.send(request);
                continue;
            }
            let intended_ns = match &mut self.schedule {
                Some(schedule) => {
                    let t = schedule.intended_ns();
                    if t > now_ns || t >= stop_ns {
                        break;
                    }
                    schedule.next += 1;
                    t
                }
                None if now_ns >= stop_ns => break,
                None => now_ns,
            };
            let request = self.new_request(intended_ns);
            self.send(request);
        }
        if retried > 0 {
            let mut all = self
                .shared
                .retried
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            all.push(Retried {
                at_us: now_ns / 1000,
                count: retried,
            });
        }
    }

    fn new_request(&mut self, intended_ns: u64) -> Request {
        let op = match self.shared.chooser.choose(&mut self.rng) {
            OpKind::Set => Op::Set {
                local: self.keys.pick_local(&mut self.rng),
                seq: 0,
            },
            OpKind::Get => Op::Get {
                local: self.keys.pick_local(&mut self.rng),
            },
            OpKind::Session => {
                let (generation, step) = self.sessions.next_step();
                self.ledger.note_session(generation);
                Op::Session { generation, step }
            }
        };
        Request {
            op,
            intended_ns,
            sent_ns: 0,
            replies_left: 0,
            first: First::Pending,
            resent: false,
        }
    }

    fn send(&mut self, mut request: Request) {
        match &mut request.op {
            Op::Set { local, seq } => {
                *seq = self.seq_next;
                self.seq_next += 1;
                self.encoder.set(&mut self.out, self.keys.key(*local), *seq);
            }
            Op::Get { local } => self.encoder.get(&mut self.out, self.keys.key(*local)),
            Op::Session { generation, step } => {
                self.encoder.session(&mut self.out, *generation, *step)
            }
        }
        request.replies_left = 1;
        request.first = First::Pending;
        request.sent_ns = self.shared.clock.now_ns();
        if self.shared.redis_wait && request.op.is_write() {
            self.encoder.wait(&mut self.out);
            request.replies_left = 2;
        }
        self.in_flight.push_back(request);
    }

    fn write_some(&mut self) -> Result<(), String> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(());
        };
        while !self.out.is_empty() {
            match stream.try_write(&self.out) {
                Ok(0) => return Err("the connection was closed".into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(describe_io_error(&e)),
            }
        }
        self.out.clear();
        Ok(())
    }

    fn read_some(&mut self) -> Result<(), String> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(());
        };
        self.input.reserve(READ_CHUNK_BYTES);
        match stream.try_read_buf(&mut self.input) {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => {
                let now_ns = self.clock().now_ns();
                self.take_replies(now_ns)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(describe_io_error(&e)),
        }
    }

    /// Handles every complete reply in the input buffer.
    fn take_replies(&mut self, now_ns: u64) -> Result<(), String> {
        let input = std::mem::take(&mut self.input);
        let mut consumed = 0;
        let result = loop {
            match scan_reply(&input[consumed..]) {
                Ok(Some((_, used))) if self.preamble > 0 => {
                    consumed += used;
                    self.preamble -= 1;
                }
                Ok(Some((reply, used))) => {
                    consumed += used;
                    if let Err(problem) = self.on_reply(classify(reply), now_ns) {
                        break Err(problem);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.to_string()),
            }
        };
        self.input = input;
        self.input.advance(consumed);
        result
    }

    fn on_reply(&mut self, verdict: Verdict<'_>, now_ns: u64) -> Result<(), String> {
        let Some(front) = self.in_flight.front_mut() else {
            return Err("the server sent a reply to no request".into());
        };
        if front.replies_left == 2 {
            front.replies_left = 1;
            front.first = match verdict {
                Verdict::Done { integer } => First::Done(integer),
                Verdict::Redirect { .. } => First::Redirect,
                Verdict::Failed { .. } => First::Failed,
            };
            match verdict {
                Verdict::Redirect { hint } => self.note_redirect(hint, now_ns),
                Verdict::Failed { message } => self.note_error(message),
                Verdict::Done { .. } => {}
            }
            return Ok(());
        }
        let Some(request) = self.in_flight.pop_front() else {
            return Err("the server sent a reply to no request".into());
        };
        let verdict = match (request.first, verdict) {
            (First::Pending, verdict) => verdict,
            (First::Redirect, _) => Verdict::Redirect { hint: None },
            (First::Failed, _) => Verdict::Failed { message: b"" },
            // The write's reply, then WAIT's: acknowledged once a replica has it.
            (First::Done(integer), Verdict::Done { integer: Some(n) }) if n >= 1 => {
                Verdict::Done { integer }
            }
            (First::Done(_), Verdict::Failed { message }) => Verdict::Failed { message },
            (First::Done(_), _) => Verdict::Failed {
                message: b"WAIT: no replica acknowledged the write",
            },
        };
        match verdict {
            Verdict::Done { integer } => self.on_success(request, integer, now_ns),
            Verdict::Redirect { hint } => {
                self.note_redirect(hint, now_ns);
                self.retry.push_back(request);
            }
            Verdict::Failed { message } => {
                self.note_error(message);
                // A refused session step changed nothing: start a new session rather than
                // send the rest of this one's cycle to certain failure.
                if let Op::Session { generation, .. } = request.op {
                    self.sessions.abandon(generation);
                }
                self.record(&request, now_ns, false);
                self.ops_unpublished += 1;
                self.errors_unpublished += 1;
            }
        }
        Ok(())
    }

    /// A request that got its answer: a sample for the histograms, and the millisecond
    /// counts.
    fn record(&mut self, request: &Request, now_ns: u64, ok: bool) {
        let sample = Sample {
            intended_us: request.intended_ns / 1000,
            reply_us: now_ns / 1000,
            latency_us: now_ns.saturating_sub(request.intended_ns) / 1000,
            ok,
        };
        self.recorder.push(sample);
        self.tally.record(
            &self.shared.millis,
            &self.shared.clock,
            sample.intended_us,
            sample.reply_us,
            sample.latency_us,
            ok,
        );
    }

    fn on_success(&mut self, request: Request, integer: Option<i64>, now_ns: u64) {
        let reply_us = now_ns / 1000;
        self.record(&request, now_ns, true);
        self.ops_unpublished += 1;
        match request.op {
            Op::Set { local, seq } => self.ledger.ack_set(local, seq),
            Op::Get { .. } => {}
            Op::Session { generation, step } => self.ledger.ack_session(generation, step, integer),
        }
        if request.op.is_write() || self.shared.mark_reads {
            let bucket = self.shared.activity.bucket_of(reply_us);
            if bucket != self.last_marked_bucket {
                self.shared.activity.mark(bucket);
                self.last_marked_bucket = bucket;
            }
        }
        self.follow.failures = 0;
        self.follow.since = None;
        if let Some(episode) = self.episode.take() {
            let mut redirects = self
                .shared
                .redirects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(r) = redirects.get_mut(episode) {
                r.found_us = Some(reply_us);
            }
        }
    }

    /// Keeps the first few error messages (allocating only for those).
    fn note_error(&mut self, message: &[u8]) {
        if !message.is_empty() && self.error_examples.len() < ERROR_EXAMPLES_MAX {
            let text = String::from_utf8_lossy(message).into_owned();
            if !self.error_examples.contains(&text) {
                self.error_examples.push(text);
            }
        }
    }

    /// The engine refused a request: stop sending and move once the replies are in.
    fn note_redirect(&mut self, hint: Option<&[u8]>, now_ns: u64) {
        let hint = hint.map(|h| String::from_utf8_lossy(h).into_owned());
        match &mut self.redirect {
            Some(r) => {
                if r.hint.is_none() {
                    r.hint = hint;
                }
            }
            None => {
                self.follow.last_problem = match &hint {
                    Some(h) => format!("{}: not the active, which is {h}", self.address),
                    None => format!("{}: not the active", self.address),
                };
                self.redirect = Some(Redirecting {
                    hint,
                    kind: SwitchoverKind::Planned,
                    since_ns: now_ns,
                });
            }
        }
    }

    /// The connection failed: what was in flight has an unknown outcome.
    fn connection_lost(&mut self, problem: &str) {
        let now_ns = self.clock().now_ns();
        self.stream = None;
        self.out.clear();
        self.input.clear();
        self.follow.last_problem = format!("{}: {problem}", self.address);
        // After a refusal the handover is planned, even if the engine then hangs up.
        if self.redirect.is_none() {
            self.redirect = Some(Redirecting {
                hint: None,
                kind: SwitchoverKind::Failover,
                since_ns: now_ns,
            });
        }
        self.abandoned.clear();
        while let Some(request) = self.in_flight.pop_front() {
            match request.op {
                Op::Session { generation, .. } => {
                    if !self.abandoned.contains(&generation) {
                        self.abandoned.push(generation);
                    }
                }
                _ => self.retry.push_back(request),
            }
        }
        if !self.abandoned.is_empty() {
            for &generation in &self.abandoned {
                self.sessions.abandon(generation);
            }
            let abandoned = &self.abandoned;
            self.retry.retain(|r| match r.op {
                Op::Session { generation, .. } => !abandoned.contains(&generation),
                _ => true,
            });
        }
    }

    /// Finds the active: the engine the refusal named, then the other targets, with a
    /// backoff. `Ok(false)` if the run's drain deadline passed first.
    async fn reconnect(&mut self) -> Result<bool, ConnectionError> {
        if self.stream.is_some() && !self.in_flight.is_empty() {
            // Replies still missing after a redirect: their outcome is unknown too.
            self.connection_lost("no reply after a redirect");
        }
        let now_ns = self.clock().now_ns();
        let redirect = self.redirect.take().unwrap_or(Redirecting {
            hint: None,
            kind: SwitchoverKind::Failover,
            since_ns: now_ns,
        });
        self.stream = None;
        if self.follow.failures == 0 {
            let mut redirects = self
                .shared
                .redirects
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.episode = Some(redirects.len());
            redirects.push(Redirect {
                at_us: redirect.since_ns / 1000,
                kind: redirect.kind,
                found_us: None,
            });
        }
        let started = *self.follow.since.get_or_insert_with(Instant::now);
        let candidates = candidates(redirect.hint, &self.shared.targets, &self.address);
        let mut next = 0;
        loop {
            self.follow.failures += 1;
            if started.elapsed() > FOLLOW_TIMEOUT || self.follow.failures > FOLLOW_ATTEMPTS_MAX {
                return Err(ConnectionError::NoActive {
                    index: self.index,
                    candidates: candidates.join(", "),
                    waited_s: started.elapsed().as_secs_f64(),
                    attempts: self.follow.failures - 1,
                    last: std::mem::take(&mut self.follow.last_problem),
                });
            }
            let (now_ns, stop_ns) = (self.clock().now_ns(), *self.stop.borrow());
            if stop_ns != RUNNING && now_ns >= stop_ns.saturating_add(DRAIN_NS) {
                return Ok(false);
            }
            // Keep handing in slices while looking, so that none is held open longer than
            // what is still to retry needs.
            let outstanding_us = self.outstanding_us(now_ns, stop_ns);
            self.recorder.commit_due(now_ns / 1000, outstanding_us);
            if self.follow.failures > 1 {
                let exponent = (self.follow.failures - 2).min(16);
                tokio::time::sleep(Duration::from_millis(1 << exponent).min(BACKOFF_MAX)).await;
            }
            let addr = &candidates[next % candidates.len()];
            next += 1;
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.stream = Some(stream);
                    self.address.clone_from(addr);
                    self.input.clear();
                    self.out.clear();
                    self.out.extend_from_slice(PREAMBLE);
                    self.preamble = 1;
                    return Ok(true);
                }
                Ok(Err(e)) => {
                    self.follow.last_problem = format!("{addr}: {}", describe_io_error(&e))
                }
                Err(_) => self.follow.last_problem = format!("{addr}: connecting timed out"),
            }
        }
    }

    /// Has the oldest request in flight waited longer than the reply timeout?
    fn reply_overdue(&self, now_ns: u64) -> bool {
        self.stream.is_some()
            && self
                .in_flight
                .front()
                .is_some_and(|r| now_ns >= r.sent_ns + self.shared.reply_timeout.as_nanos() as u64)
    }

    fn next_wake_ns(&self, now_ns: u64, stop_ns: u64) -> u64 {
        let mut wake = now_ns + TICK_NS;
        if let Some(r) = self.in_flight.front() {
            wake = wake.min(r.sent_ns + self.shared.reply_timeout.as_nanos() as u64);
        }
        let room = self.in_flight.len() < self.shared.pipeline && self.retry.is_empty();
        if self.redirect.is_none() && room {
            if let Some(schedule) = &self.schedule {
                // The pacer wakes the connection on time; the timer is only a safety net.
                let slack_ns = if self.pacer.is_some() {
                    PACER_SLACK_NS
                } else {
                    0
                };
                let t = schedule.intended_ns();
                if t < stop_ns {
                    wake = wake.min(t + slack_ns);
                }
            }
        }
        if stop_ns != RUNNING {
            wake = wake.min(stop_ns.saturating_add(DRAIN_NS));
        }
        if let Some(r) = &self.redirect {
            wake = wake.min(r.since_ns + REDIRECT_DRAIN_NS);
        }
        wake.max(now_ns)
    }

    /// Adds the replies and errors counted since the last call to the run's progress
    /// counters.
    fn publish_counters(&mut self) {
        if self.ops_unpublished > 0 {
            self.shared
                .ops
                .fetch_add(self.ops_unpublished, Ordering::Relaxed);
            self.ops_unpublished = 0;
        }
        if self.errors_unpublished > 0 {
            self.shared
                .errors
                .fetch_add(self.errors_unpublished, Ordering::Relaxed);
            self.errors_unpublished = 0;
        }
    }
}

/// Where to look for the active: the address a refusal named, then the targets starting
/// after the current one (so the current one comes last).
fn candidates(hint: Option<String>, targets: &[String], current: &str) -> Vec<String> {
    let mut out: Vec<String> = hint.into_iter().collect();
    let start = targets
        .iter()
        .position(|t| t == current)
        .map_or(0, |i| i + 1);
    for k in 0..targets.len() {
        let t = &targets[(start + k) % targets.len()];
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    if out.is_empty() {
        out.push(current.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_is_looked_for_where_it_was_named_then_elsewhere() {
        let targets = vec!["a:1".to_string(), "b:2".to_string()];
        assert_eq!(
            candidates(Some("b:2".into()), &targets, "a:1"),
            ["b:2", "a:1"]
        );
        assert_eq!(candidates(None, &targets, "a:1"), ["b:2", "a:1"]);
        assert_eq!(candidates(None, &targets, "b:2"), ["a:1", "b:2"]);
        assert_eq!(
            candidates(Some("c:3".into()), &targets, "c:3"),
            ["c:3", "a:1", "b:2"]
        );
    }

    #[test]
    fn schedules_spread_the_rate() {
        // 1000 ops/s over 4 connections: each every 4 ms, staggered by 1 ms.
        let s = Schedule {
            first_ns: 2e6,
            interval_ns: 4e6,
            next: 0,
        };
        assert_eq!(s.intended_ns(), 2_000_000);
        assert_eq!(s.remaining_before(10_000_000), 2); // 2 ms and 6 ms
        let later = Schedule { next: 2, ..s };
        assert_eq!(later.intended_ns(), 10_000_000);
        assert_eq!(later.remaining_before(10_000_000), 0);
    }
}
