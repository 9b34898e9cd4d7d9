//! The standby's end of a replication link, as a sans-IO state machine.
//!
//! It answers the active's challenge with a sealed [`Hello`], then turns the active's frames into [`ReceiverEvent`]s for the
//! engine to apply: snapshot chunks, batches (checked to be contiguous, validated whole before
//! they are handed out), heartbeats and the step-up signal. The engine reports what it applied
//! with [`Receiver::applied`], which queues one cumulative ack per call: the driver calls it
//! once per read, so a burst of batches costs one ack.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::catch_up;
use crate::frame::{self, Frame, FrameBuf, FrameError, Kind};
use crate::handshake::{self, negotiate, Hello, HelloReply, Identity, Start};
use crate::link::{self, frame_bytes, LinkConfig, SnapshotEnd, StepUp};
use crate::record::Records;

/// Bytes of ack frames per arena allocation (a hundred and more acks).
const ACK_ARENA_BYTES: usize = 4096;
/// Receive buffer blocks: whole frames are handed out as slices of one block.
const RX_BLOCK_BYTES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The active accepted us; `start` says whether a snapshot follows.
    Accepted {
        protocol: u8,
        active: Identity,
        start: Start,
    },
    /// Shards of the snapshot as of update `seq` (payload: see `catch_up`), validated.
    SnapshotChunk { seq: u64, payload: Bytes },
    /// The last chunk is out: the state is whole once the batches up to `seq` are applied, and
    /// its digest there is `state_digest`.
    SnapshotEnd(SnapshotEnd),
    /// A batch of updates ending at `seq_last` (payload: count, then records), validated.
    Batch {
        seq_first: u64,
        seq_last: u64,
        payload: Bytes,
    },
    /// The active's heartbeat: its epoch, and whether it counts us as in sync.
    Heartbeat { epoch: u64, in_sync: bool },
    /// The step-up signal: check it with [`Receiver::step_up_verdict`] and answer.
    StepUp(StepUp),
    /// The link is finished; the reason says why.
    Closed { reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitChallenge,
    AwaitReply,
    Snapshot,
    Streaming,
    Closed,
}

pub struct Receiver {
    config: LinkConfig,
    state: State,
    rx: BytesMut,
    out: VecDeque<Bytes>,
    events: VecDeque<ReceiverEvent>,
    /// Last sequence received (handed out as an event).
    seq_received: u64,
    /// Last sequence acknowledged to the active.
    seq_acked: u64,
    last_rx: Instant,
    last_tx: Instant,
    /// Acks are built one after another in this arena: one allocation per many acks, none
    /// once the active has read the earlier ones.
    acks: FrameBuf,
    /// The hello, sent once the active's challenge arrives, and the nonces of both ends.
    hello: Hello,
    nonce: auth::Nonce,
    challenge: auth::Nonce,
}

impl Receiver {
    /// Starts a link: the hello goes out, sealed, when the active's challenge comes in.
    pub fn new(now: Instant, config: LinkConfig, hello: &Hello) -> Receiver {
        Receiver {
            config,
            state: State::AwaitChallenge,
            rx: BytesMut::with_capacity(RX_BLOCK_BYTES),
            out: VecDeque::new(),
            events: VecDeque::new(),
            seq_received: hello.seq_applied,
            seq_acked: hello.seq_applied,
            last_rx: now,
            last_tx: now,
            acks: FrameBuf::with_capacity(ACK_ARENA_BYTES),
            hello: hello.clone(),
            nonce: auth::nonce(),
            challenge: [0; auth::NONCE_BYTES],
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn seq_received(&self) -> u64 {
        self.seq_received
    }

    /// The receive buffer, for drivers that read straight into it.
    pub fn rx_buffer(&mut self) -> &mut BytesMut {
        &mut self.rx
    }

    /// Bytes received from the active (or, after reading into `rx_buffer`, none).
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.last_rx = now;
        // Decoded frames share the buffer until the engine has applied them (within the
        // turn). Once they are, the block is reused in place; a new one (a block at a time,
        // not a frame at a time) only while some are still held.
        if self.rx.capacity() - self.rx.len() < data.len() && !self.rx.try_reclaim(data.len()) {
            self.rx.reserve(data.len().max(RX_BLOCK_BYTES));
        }
        self.rx.extend_from_slice(data);
        while self.state != State::Closed {
            match frame::decode(&mut self.rx) {
                Ok(Some(f)) => {
                    if let Err(e) = self.handle_frame(f) {
                        self.close(format!("bad frame from active: {e}"));
                    }
                }
                Ok(None) => break,
                Err(e) => self.close(format!("bad frame from active: {e}")),
            }
        }
    }

    fn handle_frame(&mut self, f: Frame) -> Result<(), FrameError> {
        match (self.state, f.kind) {
            (State::AwaitChallenge, Kind::Challenge) => {
                self.challenge = handshake::decode_challenge(&f.payload)?;
                self.out.push_back(handshake::seal(
                    Kind::Hello,
                    self.hello.seq_applied,
                    self.hello.to_payload(),
                    &self.config.secret,
                    handshake::LABEL_STANDBY,
                    &self.challenge,
                    &self.nonce,
                ));
                self.state = State::AwaitReply;
            }
            (State::AwaitReply, Kind::HelloReply) if f.payload.first() == Some(&0) => {
                // A refusal is not signed: it only ends the link.
                if let HelloReply::Refuse { reason } = HelloReply::decode(f.payload)? {
                    self.close(format!("active refused this standby: {reason}"));
                }
            }
            (State::AwaitReply, Kind::HelloReply) => {
                let opened = handshake::open(
                    f.payload,
                    &self.config.secret,
                    handshake::LABEL_ACTIVE,
                    &self.nonce,
                );
                let Some((body, _)) = opened.filter(|(_, n)| *n == self.challenge) else {
                    self.close("the active does not hold this pair's secret".into());
                    return Ok(());
                };
                self.handle_reply(HelloReply::decode(body)?);
            }
            (State::Snapshot, Kind::SnapshotChunk) => {
                catch_up::validate_chunk(&f.payload)?;
                self.events.push_back(ReceiverEvent::SnapshotChunk {
                    seq: f.seq,
                    payload: f.payload,
                });
            }
            (State::Snapshot, Kind::SnapshotEnd) => {
                let end = SnapshotEnd::decode(f.seq, f.payload)?;
                if end.seq < self.seq_received {
                    self.close(format!(
                        "snapshot end at {} is behind the stream at {}",
                        end.seq, self.seq_received
                    ));
                    return Ok(());
                }
                self.state = State::Streaming;
                self.events.push_back(ReceiverEvent::SnapshotEnd(end));
            }
            // Batches stream alongside the snapshot: the engine applies each record to the
            // shards it holds already (see `catch_up`).
            (State::Snapshot | State::Streaming, Kind::Batch) => {
                let count = Records::validate(Kind::Batch, &f.payload)? as u64;
                let seq_first = f.seq.wrapping_sub(count).wrapping_add(1);
                if count == 0 || seq_first != self.seq_received + 1 {
                    self.close(format!(
                        "batch {}..={} does not follow {}: updates missing",
                        seq_first, f.seq, self.seq_received
                    ));
                    return Ok(());
                }
                self.seq_received = f.seq;
                self.events.push_back(ReceiverEvent::Batch {
                    seq_first,
                    seq_last: f.seq,
                    payload: f.payload,
                });
            }
            (State::Streaming, Kind::StepUp) => {
                let signal = StepUp::decode(f.seq, f.payload)?;
                self.events.push_back(ReceiverEvent::StepUp(signal));
            }
            (State::Snapshot | State::Streaming, Kind::Heartbeat) => {
                let (epoch, in_sync) = link::decode_heartbeat(f.payload)?;
                self.events
                    .push_back(ReceiverEvent::Heartbeat { epoch, in_sync });
            }
            (_, Kind::Goodbye) => {
                let (_, reason) = link::decode_status(f.kind, f.payload)?;
                self.close(format!("active said goodbye: {reason}"));
            }
            (state, kind) => self.close(format!("unexpected {kind:?} frame while {state:?}")),
        }
        Ok(())
    }

    fn handle_reply(&mut self, reply: HelloReply) {
        match reply {
            HelloReply::Accept {
                protocol,
                identity,
                start,
            } => {
                if let Err(e) = negotiate(
                    (frame::PROTOCOL_MIN, frame::PROTOCOL_MAX),
                    (protocol, protocol),
                ) {
                    self.close(e);
                    return;
                }
                self.state = match start {
                    Start::Resume => State::Streaming,
                    Start::Snapshot { seq } => {
                        // A snapshot replaces whatever this engine held; the stream goes on
                        // after `seq` while it arrives.
                        self.seq_received = seq;
                        self.seq_acked = seq;
                        State::Snapshot
                    }
                };
                self.events.push_back(ReceiverEvent::Accepted {
                    protocol,
                    active: identity,
                    start,
                });
            }
            HelloReply::Refuse { reason } => {
                self.close(format!("active refused this standby: {reason}"))
            }
        }
    }

    /// The engine applied everything up to `seq`: queue a cumulative ack.
    pub fn applied(&mut self, seq: u64) {
        assert!(
            seq <= self.seq_received,
            "applied {seq} beyond received {}",
            self.seq_received
        );
        if seq > self.seq_acked {
            self.seq_acked = seq;
            let ack = self.acks.seal_and_continue(Kind::Ack, seq, ACK_ARENA_BYTES);
            self.out.push_back(ack);
        }
    }

    /// The snapshot is whole at `seq` (applied, digest checked): a cumulative ack that says so,
    /// without which the active never counts this standby as caught up.
    pub fn snapshot_verified(&mut self, seq: u64) {
        assert!(seq <= self.seq_received);
        self.seq_acked = self.seq_acked.max(seq);
        self.acks.payload_mut().put_u8(link::ACK_SNAPSHOT_VERIFIED);
        let ack = self.acks.seal_and_continue(Kind::Ack, seq, ACK_ARENA_BYTES);
        self.out.push_back(ack);
    }

    /// The answer to a step-up signal: `Ok` if this engine holds everything it describes.
    pub fn step_up_verdict(
        &self,
        signal: &StepUp,
        seq_applied: u64,
        work_units: u64,
        work_units_digest: u64,
    ) -> Result<(), String> {
        if seq_applied != signal.seq_final {
            return Err(format!(
                "applied up to {seq_applied}, step-up says {}",
                signal.seq_final
            ));
        }
        if work_units != signal.work_units || work_units_digest != signal.work_units_digest {
            return Err(format!(
                "work units differ: {work_units} here (digest {work_units_digest:016x}), {} on the active (digest {:016x})",
                signal.work_units, signal.work_units_digest
            ));
        }
        Ok(())
    }

    /// Queues the step-up acknowledgement (or refusal).
    pub fn answer_step_up(&mut self, seq: u64, verdict: &Result<(), String>) {
        let reason = verdict.as_ref().err().map(String::as_str).unwrap_or("");
        self.out.push_back(frame_bytes(|o| {
            link::encode_status(o, Kind::StepUpAck, seq, verdict.is_ok(), reason)
        }));
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        let f = self.out.pop_front().or_else(|| {
            // Nothing but the hello goes out before the active has challenged us.
            let speaking = !matches!(self.state, State::Closed | State::AwaitChallenge);
            (speaking && now >= self.last_tx + self.config.heartbeat_interval).then(|| {
                frame_bytes(|o| frame::encode(o, Kind::Heartbeat, self.seq_acked, &[0; 9]))
            })
        })?;
        self.last_tx = now;
        Some(f)
    }

    /// How long the active may stay silent in the current state.
    fn silence_allowed(&self) -> std::time::Duration {
        match self.state {
            State::AwaitChallenge | State::AwaitReply => self.config.handshake_timeout,
            _ => self.config.peer_timeout,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let silence = self.last_rx + self.silence_allowed();
        match self.state {
            State::Closed => None,
            // No heartbeats before the challenge (see `poll_transmit`): only the silence.
            State::AwaitChallenge => Some(silence),
            _ => Some((self.last_tx + self.config.heartbeat_interval).min(silence)),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != State::Closed && now >= self.last_rx + self.silence_allowed() {
            self.close(format!(
                "active silent for {} ms",
                self.silence_allowed().as_millis()
            ));
        }
    }

    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    pub fn close(&mut self, reason: String) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.out.push_back(link::goodbye(&reason));
        self.events.push_back(ReceiverEvent::Closed { reason });
    }
}
