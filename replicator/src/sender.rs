//! The active's end of a replication link, as a sans-IO state machine.
//!
//! Bytes from the standby go in through [`Sender::handle_input`]; frames to write come out of
//! [`Sender::poll_transmit`], which also pulls sealed batches from the [`Outbox`] while the
//! flow-control window has room; [`Sender::poll_timeout`] says when to call
//! [`Sender::handle_timeout`]; what happened comes out of [`Sender::poll_event`]. No socket,
//! no clock, no runtime: the tokio driver and the tests feed it.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::batch::Outbox;
use crate::frame::{self, Frame, Kind};
use crate::handshake::{self, Hello, HelloReply, Identity, Start};
use crate::link::{self, frame_bytes, LinkConfig, SnapshotEnd, StepUp};

/// See [`Sender::caught_up`].
const ACKS_BEHIND_MAX: u32 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// The standby introduced itself: answer with [`Sender::accept`] or [`Sender::refuse`].
    Hello(Hello),
    /// The standby has applied everything up to this sequence.
    Acked(u64),
    /// The standby has applied the snapshot (or the resume point): it is following the stream.
    CaughtUp,
    /// The standby took over: it is the active now.
    SteppedUp { seq: u64 },
    /// The standby refused to step up.
    StepUpRefused { reason: String },
    /// The link is finished; the reason says why.
    Closed { reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitAccept,
    Streaming,
    SteppingUp,
    Closed,
}

pub struct Sender {
    config: LinkConfig,
    state: State,
    epoch: u64,
    rx: BytesMut,
    out: VecDeque<Bytes>,
    events: VecDeque<SenderEvent>,
    /// The standby has everything up to here (sent or in the snapshot).
    seq_sent: u64,
    seq_acked: u64,
    /// Sequence the standby must ack to have caught up (snapshot or resume point).
    seq_caught_up: Option<u64>,
    /// Set once the standby has applied the start point and is no more than one batch behind.
    is_caught_up: bool,
    /// The standby said it checked the snapshot's digest (always true for a resume).
    snapshot_verified: bool,
    /// Acks since the start point was applied, while the standby was still further behind.
    acks_behind: u32,
    in_flight: VecDeque<(u64, usize)>,
    bytes_in_flight: usize,
    step_up: Option<StepUp>,
    last_rx: Instant,
    last_tx: Instant,
    in_sync_flag: bool,
    /// The challenge this end sent, and the standby's nonce from its hello.
    nonce: auth::Nonce,
    peer_nonce: auth::Nonce,
}

impl Sender {
    /// A link from a standby that just connected: the challenge is the first frame out.
    pub fn new(now: Instant, config: LinkConfig, epoch: u64) -> Sender {
        let nonce = auth::nonce();
        Sender {
            config,
            state: State::AwaitHello,
            epoch,
            rx: BytesMut::with_capacity(4096),
            out: VecDeque::from([handshake::challenge_frame(&nonce)]),
            events: VecDeque::new(),
            seq_sent: 0,
            seq_acked: 0,
            seq_caught_up: None,
            is_caught_up: false,
            snapshot_verified: false,
            acks_behind: 0,
            in_flight: VecDeque::new(),
            bytes_in_flight: 0,
            step_up: None,
            last_rx: now,
            last_tx: now,
            in_sync_flag: false,
            nonce,
            peer_nonce: [0; auth::NONCE_BYTES],
        }
    }

    pub fn seq_acked(&self) -> u64 {
        self.seq_acked
    }

    pub fn seq_sent(&self) -> u64 {
        self.seq_sent
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn is_streaming(&self) -> bool {
        self.state == State::Streaming
    }

    /// Has the standby applied the snapshot or resume point, and then drained the stream to
    /// within one batch? Only then do writes start to wait for its acknowledgements: a standby
    /// still working through what queued up during its snapshot would stall every client.
    pub fn caught_up(&self) -> bool {
        self.is_caught_up
    }

    fn check_caught_up(&mut self) {
        if self.is_caught_up
            || !self.snapshot_verified
            || self.seq_caught_up.is_none_or(|s| self.seq_acked < s)
        {
            return;
        }
        // A standby that never drains the window (the active is saturated) is declared caught
        // up after a bounded number of acks anyway: sync mode is what makes it promotable.
        self.acks_behind += 1;
        if self.in_flight.len() <= 1 || self.acks_behind > ACKS_BEHIND_MAX {
            self.is_caught_up = true;
            self.events.push_back(SenderEvent::CaughtUp);
        }
    }

    /// Tells the standby in the next heartbeat whether the active counts it as in sync.
    pub fn set_in_sync_flag(&mut self, in_sync: bool) {
        self.in_sync_flag = in_sync;
    }

    /// Can another batch go out now?
    pub fn window_open(&self) -> bool {
        self.state == State::Streaming
            && self.in_flight.len() < self.config.batches_in_flight_max
            && self.bytes_in_flight < self.config.bytes_in_flight_max
    }

    /// Bytes received from the standby.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.last_rx = now;
        self.rx.extend_from_slice(data);
        loop {
            match frame::decode(&mut self.rx) {
                Ok(Some(f)) => self.handle_frame(f),
                Ok(None) => break,
                Err(e) => {
                    self.close(format!("bad frame from standby: {e}"));
                    break;
                }
            }
            if self.state == State::Closed {
                break;
            }
        }
    }

    fn handle_frame(&mut self, f: Frame) {
        match (self.state, f.kind) {
            (State::AwaitHello, Kind::Hello) => {
                let opened = handshake::open(
                    f.payload,
                    &self.config.secret,
                    handshake::LABEL_STANDBY,
                    &self.nonce,
                );
                let Some((body, peer_nonce)) = opened else {
                    // Nothing in an unproven hello is looked at: not its epoch, not its name.
                    self.refuse("authentication failed: the peer does not hold this pair's secret");
                    return;
                };
                match Hello::decode(body) {
                    Ok(hello) => {
                        self.peer_nonce = peer_nonce;
                        self.state = State::AwaitAccept;
                        self.events.push_back(SenderEvent::Hello(hello));
                    }
                    Err(e) => self.close(e.to_string()),
                }
            }
            (State::Streaming | State::SteppingUp, Kind::Ack) => {
                if f.payload[..] == [link::ACK_SNAPSHOT_VERIFIED] {
                    // Meaningful only for the end of the snapshot this end sent.
                    if self.seq_caught_up.is_none_or(|end| f.seq < end) {
                        self.close(format!("standby verified a snapshot ending at {}", f.seq));
                        return;
                    }
                    self.snapshot_verified = true;
                }
                self.handle_ack(f.seq)
            }
            (_, Kind::Heartbeat) => {}
            (State::SteppingUp, Kind::StepUpAck) => match link::decode_status(f.kind, f.payload) {
                Ok((true, _)) => {
                    self.events.push_back(SenderEvent::SteppedUp { seq: f.seq });
                    self.state = State::Closed;
                }
                Ok((false, reason)) => {
                    self.state = State::Streaming;
                    self.step_up = None;
                    self.events.push_back(SenderEvent::StepUpRefused { reason });
                }
                Err(e) => self.close(e.to_string()),
            },
            (_, Kind::Goodbye) => {
                let reason = link::decode_status(f.kind, f.payload)
                    .map(|(_, r)| r)
                    .unwrap_or_default();
                self.close(format!("standby said goodbye: {reason}"));
            }
            (state, kind) => self.close(format!("unexpected {kind:?} frame while {state:?}")),
        }
    }

    fn handle_ack(&mut self, seq: u64) {
        if seq < self.seq_acked || seq > self.seq_sent {
            self.close(format!(
                "standby acknowledged {seq}, outside {}..={}",
                self.seq_acked, self.seq_sent
            ));
            return;
        }
        self.seq_acked = seq;
        while let Some(&(last, bytes)) = self.in_flight.front() {
            if last > seq {
                break;
            }
            self.bytes_in_flight -= bytes;
            self.in_flight.pop_front();
        }
        self.events.push_back(SenderEvent::Acked(seq));
        self.check_caught_up();
    }

    /// Accepts the standby. With `Start::Resume` the stream continues after the standby's own
    /// `seq_applied` (`resume_from`), which the outbox must cover. With `Start::Snapshot { seq }`
    /// the stream continues after `seq` and the caller sends the state alongside it, a slice
    /// at a time ([`Sender::push_snapshot`], see `catch_up`), then [`Sender::finish_snapshot`].
    pub fn accept(&mut self, now: Instant, identity: Identity, start: Start, resume_from: u64) {
        debug_assert_eq!(self.state, State::AwaitAccept);
        // The standby has been waiting while the start was decided; its silence is ours.
        self.last_rx = now;
        let reply = HelloReply::Accept {
            protocol: frame::PROTOCOL_MAX,
            identity,
            start,
        };
        self.out.push_back(handshake::seal(
            Kind::HelloReply,
            0,
            reply.to_payload(),
            &self.config.secret,
            handshake::LABEL_ACTIVE,
            &self.peer_nonce,
            &self.nonce,
        ));
        let seq = match start {
            Start::Resume => resume_from,
            Start::Snapshot { seq } => seq,
        };
        self.seq_sent = seq;
        self.seq_acked = seq;
        self.state = State::Streaming;
        if start == Start::Resume {
            self.seq_caught_up = Some(seq);
            self.snapshot_verified = true;
            self.check_caught_up();
        }
    }

    /// Is the standby still to get the rest of a snapshot?
    pub fn snapshot_pending(&self) -> bool {
        self.state == State::Streaming && self.seq_caught_up.is_none()
    }

    /// Queues snapshot-chunk frames, ahead of the batches not yet sent.
    pub fn push_snapshot(&mut self, chunk: Bytes) {
        self.out.push_back(chunk);
    }

    /// Ends the snapshot: `end.seq` is a batch boundary the caller sealed at, and
    /// `end.state_digest` the state's digest there. The standby is caught up once it has
    /// applied `end.seq` and said it checked the digest there (an ack marked verified).
    pub fn finish_snapshot(&mut self, end: SnapshotEnd) {
        debug_assert!(self.seq_caught_up.is_none());
        self.seq_caught_up = Some(end.seq);
        self.out.push_back(frame_bytes(|o| end.encode(o)));
        self.check_caught_up();
    }

    /// Refuses the standby (unsigned: a refusal only ends the link) and closes.
    pub fn refuse(&mut self, reason: &str) {
        if self.state == State::Closed {
            return;
        }
        let reply = HelloReply::Refuse {
            reason: reason.to_string(),
        };
        let payload = reply.to_payload();
        self.out.push_back(frame_bytes(|o| {
            frame::encode(o, Kind::HelloReply, 0, &payload)
        }));
        self.close(reason.to_string());
    }

    /// Sends the step-up signal once everything sent has been acknowledged. The caller has
    /// stopped taking writes and sealed the outbox.
    pub fn step_up(&mut self, signal: StepUp) {
        self.step_up = Some(signal);
    }

    /// The next frame to write, if any.
    pub fn poll_transmit(&mut self, now: Instant, outbox: &Outbox) -> Option<Bytes> {
        let frame = self.next_frame(now, outbox)?;
        self.last_tx = now;
        Some(frame)
    }

    fn next_frame(&mut self, now: Instant, outbox: &Outbox) -> Option<Bytes> {
        if let Some(f) = self.out.pop_front() {
            return Some(f);
        }
        if self.state != State::Streaming {
            return None;
        }
        if self.window_open() && self.seq_sent < outbox.seq_sealed() {
            let Some(batch) = outbox.batch_after(self.seq_sent) else {
                self.close(format!(
                    "standby fell behind: sequence {} is no longer in the backlog",
                    self.seq_sent + 1
                ));
                return None;
            };
            self.seq_sent = batch.seq_last;
            self.in_flight
                .push_back((batch.seq_last, batch.frame.len()));
            self.bytes_in_flight += batch.frame.len();
            return Some(batch.frame.clone());
        }
        if let Some(signal) = &self.step_up {
            if self.seq_sent == outbox.seq_sealed()
                && self.seq_acked == self.seq_sent
                && !outbox.has_open()
            {
                debug_assert_eq!(signal.seq_final, self.seq_sent);
                let f = frame_bytes(|o| signal.encode(o));
                self.state = State::SteppingUp;
                return Some(f);
            }
        }
        if now >= self.last_tx + self.config.heartbeat_interval {
            return Some(frame_bytes(|o| {
                link::encode_heartbeat(o, self.seq_sent, self.epoch, self.in_sync_flag)
            }));
        }
        None
    }

    /// When the driver must call [`Sender::handle_timeout`] at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = self.last_rx + self.config.peer_timeout;
        match self.state {
            State::Closed => None,
            State::Streaming => Some((self.last_tx + self.config.heartbeat_interval).min(silence)),
            // No heartbeats while waiting on the standby (hello, accept, step-up answer): a
            // heartbeat deadline here would be past and never move, and the driver would spin.
            _ => Some(silence),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Closed && now >= self.last_rx + self.config.peer_timeout {
            self.close(format!(
                "standby silent for {} ms",
                self.config.peer_timeout.as_millis()
            ));
        }
    }

    pub fn poll_event(&mut self) -> Option<SenderEvent> {
        self.events.pop_front()
    }

    /// Ends the link, with a goodbye frame the driver may still write.
    pub fn close(&mut self, reason: String) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.out.push_back(link::goodbye(&reason));
        self.events.push_back(SenderEvent::Closed { reason });
    }

    /// Frames still queued after the link closed (the goodbye), for a last write.
    pub fn drain_out(&mut self) -> impl Iterator<Item = Bytes> + '_ {
        self.out.drain(..)
    }
}
