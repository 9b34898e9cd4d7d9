//! A replication link end to end, with no socket and no real time: a [`Sender`] and a
//! [`Receiver`] driven against each other in memory. What one end hands out of
//! `poll_transmit` waits on a [`Wire`] until the test delivers it (whole, in pieces,
//! corrupted, or not at all) to the other end's `handle_input`, and the clock is an `Instant`
//! the test moves by hand. A small [`Standby`] engine applies what the receiver hands out and
//! reports it with `Receiver::applied`; the active's state is updated with every push, so the
//! two can be compared at the end. The helpers check on every move what must always hold:
//! batches arrive contiguous, no more than `batches_in_flight_max` batches are ever on the
//! wire unacknowledged, nothing is acknowledged before the standby applied it, and an idle end
//! never asks its driver to wake it at a deadline that has already passed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use replicator::catch_up::{self, ChunkWriter, SHARDS};
use replicator::frame::{self, HEADER_BYTES};
use replicator::{
    BatchConfig, Hello, Identity, Kind, LinkConfig, Op, Outbox, Receiver, ReceiverEvent, Records,
    Sender, SenderEvent, SnapshotEnd, Start, StepUp,
};

const MS: Duration = Duration::from_millis(1);
const ALL: usize = usize::MAX;

// -------------------------------------------------------------------------------------------
// Helpers
// -------------------------------------------------------------------------------------------

/// xorshift64*: a tiny deterministic PRNG, so that a failing seed replays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`; `n` must not be 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// The run-state as these tests see it: a work-unit registry and a database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    units: HashMap<Vec<u8>, Vec<u8>>,
    db: HashMap<Vec<u8>, Vec<u8>>,
}

impl State {
    fn apply(&mut self, op: Op, key: &[u8], value: &[u8]) {
        match op {
            Op::UnitCreate | Op::UnitUpdate => {
                self.units.insert(key.to_vec(), value.to_vec());
            }
            Op::UnitEnd => {
                self.units.remove(key);
            }
            Op::DbPut => {
                self.db.insert(key.to_vec(), value.to_vec());
            }
            Op::DbDelete => {
                self.db.remove(key);
            }
            Op::Control(_) => {}
        }
    }

    fn len(&self) -> usize {
        self.units.len() + self.db.len()
    }

    /// The records of shards `from..to` as they are now: work units, then database records.
    fn shards(&self, from: usize, to: usize) -> Vec<Vec<Entry<'_>>> {
        let mut out = vec![Vec::new(); to - from];
        let units = self.units.iter().map(|(k, v)| (Op::UnitCreate, k, v));
        let db = self.db.iter().map(|(k, v)| (Op::DbPut, k, v));
        for (op, k, v) in units.chain(db) {
            let shard = shard_of(k);
            if (from..to).contains(&shard) {
                out[shard - from].push((op, &k[..], &v[..]));
            }
        }
        out
    }

    fn clear_shard(&mut self, shard: usize) {
        self.units.retain(|k, _| shard_of(k) != shard);
        self.db.retain(|k, _| shard_of(k) != shard);
    }

    fn units_digest(&self) -> u64 {
        digest(&self.units)
    }

    fn digest(&self) -> u64 {
        digest(&self.units) ^ digest(&self.db).rotate_left(32)
    }
}

/// An order-independent digest of a map: the wrapping sum of each entry's FNV-1a hash.
fn digest(map: &HashMap<Vec<u8>, Vec<u8>>) -> u64 {
    map.iter().fold(0u64, |sum, (k, v)| {
        let len = (k.len() as u32).to_le_bytes();
        let h = len
            .iter()
            .chain(k)
            .chain(v)
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
        sum.wrapping_add(h)
    })
}

/// A record of the state, as a snapshot chunk carries it.
type Entry<'a> = (Op, &'a [u8], &'a [u8]);

fn shard_of(key: &[u8]) -> usize {
    catch_up::shard_of(catch_up::key_hash(key))
}

fn identity(engine: &str, epoch: u64) -> Identity {
    Identity {
        engine: engine.into(),
        epoch,
        app_name: "sessions".into(),
        app_version: "1.0".into(),
        ..Identity::default()
    }
}

/// The kind of a well-formed frame (None for garbage or a corrupted frame).
fn kind_of(f: &[u8]) -> Option<Kind> {
    frame::decode_exact(f).ok().map(|f| f.kind)
}

/// One direction of the link: frames written by one end and not yet read by the other, kept
/// frame by frame so that a test can corrupt or drop one, and delivered in any pieces.
#[derive(Default)]
struct Wire {
    frames: VecDeque<Bytes>,
    /// How much of the front frame has been delivered already.
    offset: usize,
}

impl Wire {
    /// Bytes in transit.
    fn len(&self) -> usize {
        self.frames.iter().map(Bytes::len).sum::<usize>() - self.offset
    }

    fn holds(&self, kind: Kind) -> bool {
        self.frames.iter().any(|f| kind_of(f) == Some(kind))
    }

    /// Index of the first frame of `kind` in transit.
    fn position(&self, kind: Kind) -> Option<usize> {
        self.frames.iter().position(|f| kind_of(f) == Some(kind))
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.offset = 0;
    }

    /// Takes up to `n` bytes off the front: the bytes, and the frames they completed.
    fn take(&mut self, mut n: usize) -> (Vec<u8>, Vec<Bytes>) {
        let (mut bytes, mut completed) = (Vec::new(), Vec::new());
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let k = (front.len() - self.offset).min(n);
            bytes.extend_from_slice(&front[self.offset..self.offset + k]);
            self.offset += k;
            n -= k;
            if self.offset == front.len() {
                completed.extend(self.frames.pop_front());
                self.offset = 0;
            }
        }
        (bytes, completed)
    }
}

/// Cuts `bytes` into pieces at random points (one piece without a splitter).
fn pieces<'a>(splitter: &mut Option<Rng>, bytes: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = match splitter {
            Some(rng) => 1 + rng.below(rest.len()),
            None => rest.len(),
        };
        let (piece, tail) = rest.split_at(n);
        out.push(piece);
        rest = tail;
    }
    out
}

/// The standby's engine: applies snapshot chunks as they arrive, queues batches, and applies
/// them (and says so to the receiver) when the test lets it.
#[derive(Default)]
struct Standby {
    state: State,
    seq_applied: u64,
    /// The last sequence the receiver handed out: the next batch must follow it.
    seq_received: u64,
    /// Batches received and not yet applied: `(seq_first, seq_last, payload)`.
    pending: VecDeque<(u64, u64, Bytes)>,
    snapshot_records: u64,
    /// During a snapshot: the shards held, as of which sequence (the engine's `Restore`).
    restore: Option<HashMap<usize, u64>>,
    end: Option<SnapshotEnd>,
}

impl Standby {
    /// Is a batch record, update `seq`, to be applied (see `catch_up`)?
    fn wants(&self, seq: u64, op: Op, key: &[u8]) -> bool {
        match (&self.restore, op) {
            (None, _) | (_, Op::Control(_)) => true,
            (Some(held), _) => held.get(&shard_of(key)).is_some_and(|&s| seq > s),
        }
    }
}

/// The active's walk over the shards of a snapshot: next shard, chunk writer, records sent.
struct Cursor {
    next: usize,
    writer: ChunkWriter,
    records: u64,
}

/// An active and its standby, joined by two wires and a hand-driven clock.
struct Pair {
    now: Instant,
    link: LinkConfig,
    sender: Sender,
    receiver: Receiver,
    outbox: Outbox,
    /// The active's state, updated with every push.
    active: State,
    standby: Standby,
    to_receiver: Wire,
    to_sender: Wire,
    /// Everything each end reported, in order.
    sender_events: Vec<SenderEvent>,
    receiver_events: Vec<ReceiverEvent>,
    /// Our own flow-control ledger: `(seq_last, bytes)` of each batch put on the wire and not
    /// yet covered by an ack that the sender has read.
    unacked: VecDeque<(u64, usize)>,
    unacked_bytes: usize,
    /// The most batches ever unacknowledged at once.
    max_in_flight: usize,
    /// Cuts deliveries into random pieces when set.
    splitter: Option<Rng>,
    /// The snapshot still to send, if the standby was accepted with one.
    cursor: Option<Cursor>,
}

impl Pair {
    /// A new link: the standby (empty) has queued its hello, the active (epoch 1) waits for it.
    fn new(link: LinkConfig, batch: BatchConfig) -> Pair {
        let now = Instant::now();
        let hello = Hello::new(identity("standby", 0), 0, 0);
        Pair {
            now,
            sender: Sender::new(now, link.clone(), 1),
            receiver: Receiver::new(now, link.clone(), &hello),
            link,
            outbox: Outbox::new(batch, 0),
            active: State::default(),
            standby: Standby::default(),
            to_receiver: Wire::default(),
            to_sender: Wire::default(),
            sender_events: Vec::new(),
            receiver_events: Vec::new(),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            max_in_flight: 0,
            splitter: None,
            cursor: None,
        }
    }

    /// A new link whose two ends hold different secrets.
    fn mismatched(sender_secret: &[u8], receiver_secret: &[u8]) -> Pair {
        let mut pair = Pair::new(
            LinkConfig::new(replicator::Secret::from_bytes(sender_secret)),
            BatchConfig::default(),
        );
        let hello = Hello::new(identity("standby", 7), 0, 0);
        let secret = replicator::Secret::from_bytes(receiver_secret);
        pair.receiver = Receiver::new(pair.now, LinkConfig::new(secret), &hello);
        pair
    }

    /// A link past its handshake, resuming an empty standby at sequence 0.
    fn resumed(link: LinkConfig, batch: BatchConfig) -> Pair {
        let mut pair = Pair::new(link, batch);
        let hello = pair.hello();
        pair.sender.accept(
            pair.now,
            identity("active", 1),
            Start::Resume,
            hello.seq_applied,
        );
        pair.pump();
        assert!(
            matches!(
                pair.receiver_events[..],
                [ReceiverEvent::Accepted {
                    start: Start::Resume,
                    ..
                }]
            ),
            "{:?}",
            pair.receiver_events
        );
        assert_eq!(pair.sender_events, [SenderEvent::CaughtUp]);
        pair.clear_logs();
        pair
    }

    /// Delivers the standby's hello and returns it, as the active's engine gets it.
    fn hello(&mut self) -> Hello {
        self.pump();
        match &self.sender_events.drain(..).collect::<Vec<_>>()[..] {
            [SenderEvent::Hello(hello)] => hello.clone(),
            other => panic!("expected the standby's hello, got {other:?}"),
        }
    }

    fn clear_logs(&mut self) {
        self.sender_events.clear();
        self.receiver_events.clear();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// The active writes one update.
    fn push(&mut self, op: Op, key: &[u8], value: &[u8]) -> u64 {
        self.active.apply(op, key, value);
        self.outbox.push(self.now, op, key, value)
    }

    /// The active writes one random update: database writes and deletes, work units coming
    /// and going.
    fn push_random(&mut self, rng: &mut Rng) -> u64 {
        let key = format!("k{}", rng.below(64));
        let unit = format!("u{}", rng.below(16));
        let value = format!("{:x}", rng.next()).repeat(rng.below(4));
        let (op, key) = match rng.below(20) {
            0..=11 => (Op::DbPut, key),
            12..=14 => (Op::DbDelete, key),
            15..=16 => (Op::UnitCreate, unit),
            17 => (Op::UnitUpdate, unit),
            _ => (Op::UnitEnd, unit),
        };
        self.push(op, key.as_bytes(), value.as_bytes())
    }

    /// Puts up to `max_frames` frames from the sender on the wire; returns how many.
    fn transmit_sender(&mut self, max_frames: usize) -> usize {
        let mut n = 0;
        while n < max_frames {
            let Some(f) = self.sender.poll_transmit(self.now, &self.outbox) else {
                break;
            };
            let decoded = frame::decode_exact(&f).expect("the sender writes whole, sound frames");
            if decoded.kind == Kind::Batch {
                assert!(
                    self.unacked.len() < self.link.batches_in_flight_max,
                    "flow control: a batch ending at {} went out with {} batches unacknowledged",
                    decoded.seq,
                    self.unacked.len()
                );
                assert!(
                    self.unacked_bytes < self.link.bytes_in_flight_max,
                    "flow control: a batch went out with {} bytes unacknowledged",
                    self.unacked_bytes
                );
                self.unacked.push_back((decoded.seq, f.len()));
                self.unacked_bytes += f.len();
                self.max_in_flight = self.max_in_flight.max(self.unacked.len());
            }
            self.to_receiver.frames.push_back(f);
            n += 1;
        }
        self.collect_sender_events();
        n
    }

    /// Puts everything the receiver has to say on the wire; returns how many frames.
    fn transmit_receiver(&mut self) -> usize {
        let mut n = 0;
        while let Some(f) = self.receiver.poll_transmit(self.now) {
            if let Ok(ack) = frame::decode_exact(&f).map(|d| (d.kind, d.seq)) {
                if ack.0 == Kind::Ack {
                    assert!(
                        ack.1 <= self.standby.seq_applied,
                        "ack of {} but the standby applied only up to {}",
                        ack.1,
                        self.standby.seq_applied
                    );
                }
            }
            self.to_sender.frames.push_back(f);
            n += 1;
        }
        n
    }

    /// Delivers up to `n` bytes from the wire to the receiver.
    fn deliver_to_receiver(&mut self, n: usize) -> usize {
        let (bytes, _) = self.to_receiver.take(n);
        for piece in pieces(&mut self.splitter, &bytes) {
            self.receiver.handle_input(self.now, piece);
            self.collect_receiver_events();
        }
        bytes.len()
    }

    /// Delivers up to `n` bytes from the wire to the sender.
    fn deliver_to_sender(&mut self, n: usize) -> usize {
        let (bytes, completed) = self.to_sender.take(n);
        for piece in pieces(&mut self.splitter, &bytes) {
            self.sender.handle_input(self.now, piece);
            self.collect_sender_events();
        }
        for f in completed {
            let Ok(ack) = frame::decode_exact(&f) else {
                continue;
            };
            if ack.kind != Kind::Ack {
                continue;
            }
            while let Some(&(seq_last, bytes)) = self.unacked.front() {
                if seq_last > ack.seq {
                    break;
                }
                self.unacked.pop_front();
                self.unacked_bytes -= bytes;
            }
        }
        bytes.len()
    }

    /// The standby applies up to `max_batches` of the batches it received, then reports.
    fn apply(&mut self, max_batches: usize) {
        for _ in 0..max_batches {
            let Some((seq_first, seq_last, payload)) = self.standby.pending.pop_front() else {
                break;
            };
            let records = Records::new(Kind::Batch, payload).expect("a validated batch");
            let mut count = 0;
            for (seq, r) in (seq_first..).zip(records) {
                let r = r.expect("a validated batch");
                if self.standby.wants(seq, r.op, &r.key) {
                    self.standby.state.apply(r.op, &r.key, &r.value);
                }
                count += 1;
            }
            assert_eq!(
                count,
                seq_last - seq_first + 1,
                "batch {seq_first}..={seq_last}"
            );
            self.standby.seq_applied = seq_last;
            self.finish_restore();
        }
        if !self.receiver.is_closed() {
            self.receiver.applied(self.standby.seq_applied);
        }
    }

    /// Once the batches up to the snapshot end are applied: the digest must be the active's
    /// there, and the standby says it is verified.
    fn finish_restore(&mut self) {
        let standby = &mut self.standby;
        let Some(end) = standby
            .end
            .as_ref()
            .filter(|e| standby.seq_applied >= e.seq)
        else {
            return;
        };
        assert_eq!(
            standby.seq_applied, end.seq,
            "the snapshot ends on a batch boundary"
        );
        assert_eq!(end.state_digest, standby.state.digest(), "snapshot digest");
        let seq = end.seq;
        (standby.restore, standby.end) = (None, None);
        if !self.receiver.is_closed() {
            self.receiver.snapshot_verified(seq);
        }
    }

    /// Starts a snapshot for a standby accepted with `Start::Snapshot`.
    fn accept_snapshot(&mut self, resume_from: u64) -> u64 {
        let seq = self.outbox.seq_sealed();
        self.sender.accept(
            self.now,
            identity("active", 1),
            Start::Snapshot { seq },
            resume_from,
        );
        self.cursor = Some(Cursor {
            next: 0,
            writer: ChunkWriter::new(256 + (seq as usize % 2048)),
            records: 0,
        });
        seq
    }

    /// The active's engine sends up to `shards` more shards of the snapshot, as they are now,
    /// and the end once all are out. Returns how many frames it queued.
    fn send_snapshot(&mut self, shards: usize) -> usize {
        let Some(cursor) = self.cursor.as_mut() else {
            return 0;
        };
        if !self.sender.snapshot_pending() {
            return 0;
        }
        let seq = self.outbox.seq_last();
        let to = (cursor.next + shards).min(SHARDS);
        let mut frames = Vec::new();
        let mut emit = |f| frames.push(f);
        for (i, records) in self.active.shards(cursor.next, to).into_iter().enumerate() {
            cursor.writer.begin_shard(cursor.next + i, seq, &mut emit);
            for (op, k, v) in records {
                cursor.writer.push(op, k, v, &mut emit);
                cursor.records += 1;
            }
        }
        cursor.writer.flush(&mut emit);
        cursor.next = to;
        let sent = frames.len();
        for f in frames {
            self.sender.push_snapshot(f);
        }
        if to == SHARDS {
            self.outbox.seal();
            let end = SnapshotEnd {
                seq: self.outbox.seq_sealed(),
                records: cursor.records,
                state_digest: self.active.digest(),
            };
            self.sender.finish_snapshot(end);
            self.cursor = None;
        }
        sent
    }

    fn collect_sender_events(&mut self) {
        while let Some(ev) = self.sender.poll_event() {
            if let SenderEvent::Acked(seq) = ev {
                assert!(
                    seq <= self.standby.seq_applied,
                    "the sender reports {seq} acked, the standby applied only up to {}",
                    self.standby.seq_applied
                );
                assert!(seq >= self.sender_acked().last().copied().unwrap_or(0));
            }
            self.sender_events.push(ev);
        }
    }

    fn collect_receiver_events(&mut self) {
        let mut finish = false;
        while let Some(ev) = self.receiver.poll_event() {
            let standby = &mut self.standby;
            match &ev {
                ReceiverEvent::Accepted {
                    start: Start::Snapshot { seq },
                    ..
                } => {
                    // A snapshot replaces whatever the standby held; the stream goes on after
                    // `seq` meanwhile.
                    *standby = Standby {
                        seq_applied: *seq,
                        seq_received: *seq,
                        restore: Some(HashMap::new()),
                        ..Standby::default()
                    };
                }
                ReceiverEvent::SnapshotChunk { seq, payload } => {
                    let chunk = catch_up::decode_chunk(payload).unwrap();
                    let held = standby.restore.as_mut().expect("a chunk during a snapshot");
                    for shard in chunk.shards.clone() {
                        if let std::collections::hash_map::Entry::Vacant(e) = held.entry(shard) {
                            e.insert(*seq);
                            standby.state.clear_shard(shard);
                        }
                    }
                    for r in chunk.records {
                        let r = r.expect("a validated chunk");
                        standby.state.apply(r.op, r.key, r.value);
                        standby.snapshot_records += 1;
                    }
                }
                ReceiverEvent::SnapshotEnd(end) => {
                    assert_eq!(end.records, standby.snapshot_records);
                    assert_eq!(standby.restore.as_ref().map(HashMap::len), Some(SHARDS));
                    standby.end = Some(end.clone());
                    finish = true;
                }
                ReceiverEvent::Batch {
                    seq_first,
                    seq_last,
                    payload,
                } => {
                    assert_eq!(
                        *seq_first,
                        standby.seq_received + 1,
                        "batches must be contiguous"
                    );
                    assert!(seq_first <= seq_last);
                    standby.seq_received = *seq_last;
                    standby
                        .pending
                        .push_back((*seq_first, *seq_last, payload.clone()));
                }
                _ => {}
            }
            self.receiver_events.push(ev);
        }
        if finish {
            self.finish_restore();
        }
    }

    /// Lets each end see the clock, as a driver does on a deadline.
    fn handle_timeouts(&mut self) {
        self.sender.handle_timeout(self.now);
        self.receiver.handle_timeout(self.now);
        self.collect_sender_events();
        self.collect_receiver_events();
    }

    /// Moves bytes both ways, and has the standby apply and acknowledge everything, until
    /// neither end has anything more to say.
    fn pump(&mut self) {
        for _ in 0..100_000 {
            let slice = self.send_snapshot(SHARDS / 8);
            let moved = slice + self.transmit_sender(ALL) + self.transmit_receiver();
            let in_transit = self.to_receiver.len() + self.to_sender.len();
            if moved == 0 && in_transit == 0 && self.standby.pending.is_empty() {
                self.check_deadlines();
                return;
            }
            self.deliver_to_receiver(ALL);
            self.apply(ALL);
            self.deliver_to_sender(ALL);
        }
        panic!("the link never went quiet");
    }

    /// A driver writes what `poll_transmit` hands out, then sleeps until `poll_timeout`. If
    /// that deadline has passed already and `handle_timeout` does not end the link, the
    /// driver wakes at once to nothing and spins.
    fn check_deadlines(&mut self) {
        if self.sender.poll_timeout().is_some_and(|d| d <= self.now) {
            self.sender.handle_timeout(self.now);
            self.collect_sender_events();
            assert!(
                self.sender.is_closed(),
                "the sender, idle, asks to be woken {:?} ago",
                self.now - self.sender.poll_timeout().unwrap()
            );
        }
        if self.receiver.poll_timeout().is_some_and(|d| d <= self.now) {
            self.receiver.handle_timeout(self.now);
            self.collect_receiver_events();
            assert!(
                self.receiver.is_closed(),
                "the receiver, idle, asks to be woken {:?} ago",
                self.now - self.receiver.poll_timeout().unwrap()
            );
        }
    }

    /// `(seq_first, seq_last)` of every batch the receiver handed out.
    fn batches(&self) -> Vec<(u64, u64)> {
        let batches = self.receiver_events.iter().filter_map(|ev| match ev {
            ReceiverEvent::Batch {
                seq_first,
                seq_last,
                ..
            } => Some((*seq_first, *seq_last)),
            _ => None,
        });
        batches.collect()
    }

    fn sender_acked(&self) -> Vec<u64> {
        let acked = self.sender_events.iter().filter_map(|ev| match ev {
            SenderEvent::Acked(seq) => Some(*seq),
            _ => None,
        });
        acked.collect()
    }

    fn sender_closed_reason(&self) -> Option<&str> {
        self.sender_events.iter().find_map(|ev| match ev {
            SenderEvent::Closed { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    fn receiver_closed_reason(&self) -> Option<&str> {
        self.receiver_events.iter().find_map(|ev| match ev {
            ReceiverEvent::Closed { reason } => Some(reason.as_str()),
            _ => None,
        })
    }

    /// The step-up signal the active would send now.
    fn step_up_signal(&self, epoch: u64) -> StepUp {
        StepUp {
            seq_final: self.outbox.seq_sealed(),
            epoch,
            work_units: self.active.units.len() as u64,
            work_units_digest: self.active.units_digest(),
            state_digest: self.active.digest(),
        }
    }

    /// The standby's answer to a step-up signal, from what it holds.
    fn standby_verdict(&self, signal: &StepUp) -> Result<(), String> {
        let units = &self.standby.state;
        self.receiver.step_up_verdict(
            signal,
            self.standby.seq_applied,
            units.units.len() as u64,
            units.units_digest(),
        )
    }

    /// The step-up signal the receiver handed out last.
    fn received_step_up(&self) -> StepUp {
        match self.receiver_events.last() {
            Some(ReceiverEvent::StepUp(signal)) => signal.clone(),
            other => panic!("expected a step-up signal, got {other:?}"),
        }
    }

    /// Streams `updates` random updates: sealed whenever the window has room, read and
    /// acknowledged now and then.
    fn stream_random(&mut self, rng: &mut Rng, updates: usize) {
        for _ in 0..updates {
            self.push_random(rng);
            if self.sender.window_open() {
                self.outbox.seal();
                self.transmit_sender(ALL);
            }
            if rng.one_in(5) {
                self.pump();
            }
        }
    }
}

// -------------------------------------------------------------------------------------------
// Handshake and streaming
// -------------------------------------------------------------------------------------------

#[test]
fn handshake_then_resume_streams_a_thousand_updates_in_order() {
    let link = LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"));
    let mut pair = Pair::new(link.clone(), BatchConfig::default());

    let hello = pair.hello();
    assert_eq!(hello.identity.engine, "standby");
    assert_eq!((hello.seq_applied, hello.history), (0, 0));
    assert!(pair.outbox.covers(hello.seq_applied));
    pair.sender.accept(
        pair.now,
        identity("active", 1),
        Start::Resume,
        hello.seq_applied,
    );
    pair.pump();
    match &pair.receiver_events[..] {
        [ReceiverEvent::Accepted {
            protocol: frame::PROTOCOL_MAX,
            active,
            start: Start::Resume,
        }] => {
            assert_eq!(active.engine, "active");
        }
        other => panic!("expected the active's acceptance, got {other:?}"),
    }
    // Resuming at the standby's own sequence: it is caught up from the start.
    assert_eq!(pair.sender_events, [SenderEvent::CaughtUp]);
    pair.clear_logs();

    let mut window_was_full = false;
    for i in 1..=1000u64 {
        let seq = pair.push(
            Op::DbPut,
            format!("key{}", i % 101).as_bytes(),
            format!("value{i}").as_bytes(),
        );
        assert_eq!(seq, i);
        // Group commit: seal whenever the link can take a batch.
        if pair.sender.window_open() {
            pair.outbox.seal();
            pair.transmit_sender(ALL);
        } else {
            window_was_full = true;
        }
        // The standby reads, applies and acknowledges after every 7th update.
        if i % 7 == 0 {
            pair.pump();
        }
    }
    pair.outbox.seal();
    pair.pump();

    let batches = pair.batches();
    assert_eq!(batches.first().map(|b| b.0), Some(1));
    assert_eq!(batches.last().map(|b| b.1), Some(1000));
    for w in batches.windows(2) {
        assert_eq!(w[1].0, w[0].1 + 1, "batches {:?} and {:?}", w[0], w[1]);
    }
    assert!(window_was_full, "the window never filled");
    assert!(
        batches.len() < 1000,
        "updates were grouped while the window was full"
    );
    assert_eq!(pair.max_in_flight, link.batches_in_flight_max);

    let acked = pair.sender_acked();
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
    assert_eq!(acked.last(), Some(&1000));
    assert_eq!(pair.sender.seq_acked(), 1000);
    assert!(pair.unacked.is_empty());
    assert_eq!(pair.standby.state, pair.active);
    assert_eq!(pair.standby.state.db.len(), 101);
    assert!(!pair.sender.is_closed() && !pair.receiver.is_closed());
}

#[test]
fn a_refused_standby_is_told_why() {
    let mut pair = Pair::new(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        BatchConfig::default(),
    );
    pair.hello();
    pair.sender.refuse("this active already has a standby");
    pair.pump();
    let reason = pair.receiver_closed_reason().expect("the receiver closes");
    assert!(
        reason.contains("refused") && reason.contains("already has a standby"),
        "{reason}"
    );
    assert!(pair.sender.is_closed() && pair.receiver.is_closed());
}

// -------------------------------------------------------------------------------------------
// Snapshot catch-up
// -------------------------------------------------------------------------------------------

#[test]
fn a_new_standby_catches_up_from_a_snapshot_while_updates_keep_coming() {
    // A backlog too small for the history: an empty standby cannot resume from it.
    let batch = BatchConfig {
        backlog_bytes_max: 32 << 10,
        ..BatchConfig::default()
    };
    let mut pair = Pair::new(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        batch,
    );
    for i in 0..5000u32 {
        if i % 10 == 0 {
            pair.push(
                Op::UnitCreate,
                format!("unit{i}").as_bytes(),
                format!("desc {i}").as_bytes(),
            );
        } else {
            pair.push(
                Op::DbPut,
                format!("key{i}").as_bytes(),
                format!("value {i}").as_bytes(),
            );
        }
        if i % 100 == 99 {
            pair.outbox.seal();
        }
    }
    pair.outbox.seal();
    assert_eq!(pair.active.len(), 5000);
    let seq = pair.outbox.seq_sealed();

    let hello = pair.hello();
    assert!(
        !pair.outbox.covers(hello.seq_applied),
        "the backlog should not reach back to 0"
    );
    let start = pair.accept_snapshot(hello.seq_applied);
    assert_eq!(start, seq);
    assert!(!pair.sender.caught_up());

    // The snapshot goes out a few shards at a time while the active keeps writing, and the
    // batches after its start go out alongside.
    let mut rng = Rng::new(2);
    for round in 0..60 {
        for _ in 0..8 {
            let key = format!("key{}", rng.below(6000));
            if rng.one_in(5) {
                pair.push(Op::DbDelete, key.as_bytes(), b"");
            } else {
                pair.push(
                    Op::DbPut,
                    key.as_bytes(),
                    format!("live {round}").as_bytes(),
                );
            }
        }
        if pair.sender.window_open() {
            pair.outbox.seal();
        }
        pair.send_snapshot(SHARDS / 50);
        pair.transmit_sender(3);
        pair.deliver_to_receiver(ALL);
        pair.apply(ALL);
        pair.transmit_receiver();
        pair.deliver_to_sender(ALL);
    }
    pair.outbox.seal();
    pair.pump();

    // Accepted first; chunks and batches interleaved; one end, after the live writes began.
    let events = &pair.receiver_events;
    assert!(matches!(
        events[0],
        ReceiverEvent::Accepted { start: Start::Snapshot { seq: s }, .. } if s == seq
    ));
    let chunk_at: Vec<usize> = (0..events.len())
        .filter(|&i| matches!(events[i], ReceiverEvent::SnapshotChunk { .. }))
        .collect();
    let batch_at: Vec<usize> = (0..events.len())
        .filter(|&i| matches!(events[i], ReceiverEvent::Batch { .. }))
        .collect();
    assert!(chunk_at.len() > 10);
    assert!(
        batch_at.first() < chunk_at.last(),
        "batches should stream while the snapshot does"
    );
    let ends: Vec<&SnapshotEnd> = events
        .iter()
        .filter_map(|ev| match ev {
            ReceiverEvent::SnapshotEnd(end) => Some(end),
            _ => None,
        })
        .collect();
    assert_eq!(ends.len(), 1);
    assert!(
        ends[0].seq > seq,
        "live updates went on during the snapshot"
    );
    assert!(ends[0].records >= 5000 - 60 * 8);
    assert_eq!(pair.batches().first().map(|b| b.0), Some(seq + 1));
    let seq = ends[0].seq;

    // CaughtUp exactly once, right after an ack at or beyond the snapshot's end (the one
    // that says the standby checked the digest there).
    let caught_up: Vec<usize> = (0..pair.sender_events.len())
        .filter(|&i| pair.sender_events[i] == SenderEvent::CaughtUp)
        .collect();
    assert_eq!(caught_up.len(), 1);
    assert!(matches!(pair.sender_events[caught_up[0] - 1], SenderEvent::Acked(s) if s >= seq));
    assert!(pair.sender.caught_up());

    assert_eq!(pair.sender.seq_acked(), pair.outbox.seq_last());
    assert_eq!(pair.standby.state, pair.active);
}

// -------------------------------------------------------------------------------------------
// Step-up
// -------------------------------------------------------------------------------------------

#[test]
fn step_up_waits_for_every_ack_then_the_standby_takes_over() {
    let mut pair = Pair::resumed(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        BatchConfig::default(),
    );
    let mut rng = Rng::new(3);
    pair.stream_random(&mut rng, 500);

    // The last writes: sealed and on the wire, not yet read by the standby.
    for _ in 0..20 {
        pair.push_random(&mut rng);
    }
    pair.outbox.seal();
    pair.transmit_sender(ALL);
    assert!(pair.sender.seq_acked() < pair.outbox.seq_sealed());

    let signal = pair.step_up_signal(2);
    assert!(signal.work_units > 0);
    pair.sender.step_up(signal.clone());
    pair.transmit_sender(ALL);
    assert!(
        !pair.to_receiver.holds(Kind::StepUp),
        "step-up sent ahead of unacked batches"
    );

    // The standby applies the batches, but its acks are still on their way.
    pair.deliver_to_receiver(ALL);
    pair.apply(ALL);
    pair.transmit_receiver();
    pair.transmit_sender(ALL);
    assert!(
        !pair.to_receiver.holds(Kind::StepUp),
        "step-up sent before the acks were read"
    );

    // The acks arrive: now the signal goes out.
    pair.deliver_to_sender(ALL);
    pair.transmit_sender(ALL);
    assert!(pair.to_receiver.holds(Kind::StepUp));
    pair.deliver_to_receiver(ALL);

    let got = pair.received_step_up();
    assert_eq!(got, signal);
    let verdict = pair.standby_verdict(&got);
    assert_eq!(verdict, Ok(()));
    assert_eq!(got.state_digest, pair.standby.state.digest());
    pair.receiver.answer_step_up(got.seq_final, &verdict);
    pair.pump();

    assert_eq!(
        pair.sender_events.last(),
        Some(&SenderEvent::SteppedUp {
            seq: signal.seq_final
        })
    );
    assert!(pair.sender.is_closed());
    assert!(!pair.receiver.is_closed());
    assert_eq!(pair.standby.seq_applied, signal.seq_final);
    assert_eq!(pair.standby.state, pair.active);
}

#[test]
fn a_step_up_with_the_wrong_work_units_is_refused_and_streaming_goes_on() {
    let mut pair = Pair::resumed(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        BatchConfig::default(),
    );
    let mut rng = Rng::new(4);
    pair.stream_random(&mut rng, 300);
    pair.outbox.seal();
    pair.pump();

    let mut signal = pair.step_up_signal(2);
    signal.work_units += 1;
    pair.sender.step_up(signal.clone());
    pair.pump();
    let got = pair.received_step_up();
    let verdict = pair.standby_verdict(&got);
    let reason = verdict
        .clone()
        .expect_err("the standby holds one work unit fewer");
    assert!(reason.contains("work units differ"), "{reason}");
    pair.receiver.answer_step_up(got.seq_final, &verdict);
    pair.pump();

    assert_eq!(
        pair.sender_events.last(),
        Some(&SenderEvent::StepUpRefused { reason })
    );
    assert!(pair.sender.is_streaming());

    // The active stays active and the link carries on.
    pair.stream_random(&mut rng, 200);
    pair.outbox.seal();
    pair.pump();
    assert_eq!(pair.sender.seq_acked(), pair.outbox.seq_last());
    assert_eq!(pair.standby.state, pair.active);
    assert!(!pair.sender.is_closed() && !pair.receiver.is_closed());
}

// -------------------------------------------------------------------------------------------
// Faults
// -------------------------------------------------------------------------------------------

/// A resumed pair with one sealed batch of ten updates on the wire to the receiver.
fn pair_with_a_batch_in_transit() -> Pair {
    let mut pair = Pair::resumed(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        BatchConfig::default(),
    );
    for i in 0..10 {
        pair.push(Op::DbPut, format!("key{i}").as_bytes(), b"value");
    }
    pair.outbox.seal();
    pair.transmit_sender(ALL);
    assert!(pair.to_receiver.holds(Kind::Batch));
    pair
}

#[test]
fn a_corrupted_batch_frame_closes_the_receiver() {
    let mut pair = pair_with_a_batch_in_transit();
    let i = pair.to_receiver.position(Kind::Batch).unwrap();
    let mut bad = pair.to_receiver.frames[i].to_vec();
    bad[HEADER_BYTES + 9] ^= 0x40;
    pair.to_receiver.frames[i] = Bytes::from(bad);

    pair.deliver_to_receiver(ALL);
    let reason = pair
        .receiver_closed_reason()
        .expect("the receiver closes")
        .to_string();
    assert!(
        reason.contains("bad frame") && reason.contains("checksum"),
        "{reason}"
    );
    assert!(pair.batches().is_empty());
    assert_eq!(pair.standby.state, State::default());

    // The receiver's goodbye tells the active why.
    pair.pump();
    let reason = pair.sender_closed_reason().expect("the sender closes");
    assert!(
        reason.contains("goodbye") && reason.contains("checksum"),
        "{reason}"
    );
}

#[test]
fn a_flipped_byte_anywhere_in_a_batch_frame_never_gets_the_batch_applied() {
    let frame_len = pair_with_a_batch_in_transit().to_receiver.frames[0].len();
    for at in 0..frame_len {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut pair = pair_with_a_batch_in_transit();
            let mut bad = pair.to_receiver.frames[0].to_vec();
            bad[at] ^= mask;
            pair.to_receiver.frames[0] = Bytes::from(bad);

            pair.deliver_to_receiver(ALL);
            assert!(
                pair.batches().is_empty(),
                "byte {at} ^ {mask:#04x}: batch handed out"
            );
            match pair.receiver_closed_reason() {
                Some(reason) => assert!(reason.contains("bad frame"), "byte {at}: {reason}"),
                None => {
                    // Only a length grown by the flip leaves the receiver waiting for the rest
                    // of the frame; the peer timeout ends that wait.
                    assert!(
                        (8..12).contains(&at),
                        "byte {at} ^ {mask:#04x}: not detected"
                    );
                    assert!(pair.receiver_events.is_empty());
                    pair.advance(pair.link.peer_timeout);
                    pair.handle_timeouts();
                    assert!(pair.receiver.is_closed());
                }
            }
        }
    }
}

#[test]
fn garbage_from_the_standby_closes_the_sender() {
    let mut pair = Pair::resumed(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        BatchConfig::default(),
    );
    pair.to_sender.frames.push_back(Bytes::from_static(
        b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n",
    ));
    pair.deliver_to_sender(ALL);
    let reason = pair.sender_closed_reason().expect("the sender closes");
    assert!(
        reason.contains("bad frame from standby") && reason.contains("bad magic"),
        "{reason}"
    );

    // Its goodbye reaches the standby.
    pair.pump();
    let reason = pair.receiver_closed_reason().expect("the receiver closes");
    assert!(
        reason.contains("active said goodbye") && reason.contains("bad magic"),
        "{reason}"
    );
}

#[test]
fn a_dropped_batch_is_a_gap_that_closes_the_receiver() {
    let mut pair = Pair::resumed(
        LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
        BatchConfig::default(),
    );
    for batch in 0..3 {
        for i in 0..5 {
            pair.push(Op::DbPut, format!("key{batch}.{i}").as_bytes(), b"value");
        }
        pair.outbox.seal();
        pair.transmit_sender(ALL);
    }
    // Deliver the first batch, lose the second.
    pair.deliver_to_receiver(pair.to_receiver.frames[0].len());
    let lost = pair.to_receiver.position(Kind::Batch).unwrap();
    pair.to_receiver.frames.remove(lost);
    pair.deliver_to_receiver(ALL);

    assert_eq!(pair.batches(), [(1, 5)]);
    let reason = pair.receiver_closed_reason().expect("the receiver closes");
    assert!(
        reason.contains("updates missing") && reason.contains("11..=15"),
        "{reason}"
    );
    assert_eq!(pair.receiver.seq_received(), 5);
}

#[test]
fn a_silent_peer_times_out_on_both_ends() {
    let link = LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"));
    let mut pair = Pair::resumed(link.clone(), BatchConfig::default());
    pair.stream_random(&mut Rng::new(5), 50);
    pair.outbox.seal();
    pair.pump();

    // The network goes dark: what either end writes from now on is lost.
    pair.advance(link.peer_timeout - MS);
    pair.transmit_sender(ALL);
    pair.transmit_receiver();
    pair.to_receiver.clear();
    pair.to_sender.clear();
    pair.handle_timeouts();
    assert!(
        !pair.sender.is_closed() && !pair.receiver.is_closed(),
        "closed too early"
    );

    pair.advance(MS);
    assert!(pair.sender.poll_timeout().is_some_and(|d| d <= pair.now));
    assert!(pair.receiver.poll_timeout().is_some_and(|d| d <= pair.now));
    pair.handle_timeouts();
    let reason = pair.sender_closed_reason().expect("the sender closes");
    assert!(reason.contains("standby silent"), "{reason}");
    let reason = pair.receiver_closed_reason().expect("the receiver closes");
    assert!(reason.contains("active silent"), "{reason}");
    assert_eq!(pair.sender.poll_timeout(), None);
    assert_eq!(pair.receiver.poll_timeout(), None);
}

#[test]
fn an_idle_link_exchanges_heartbeats_and_stays_up() {
    let link = LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"));
    let mut pair = Pair::resumed(link.clone(), BatchConfig::default());
    pair.sender.set_in_sync_flag(true);

    pair.advance(link.heartbeat_interval - MS);
    assert_eq!(
        pair.transmit_sender(ALL) + pair.transmit_receiver(),
        0,
        "nothing is due yet"
    );
    pair.advance(MS);
    assert_eq!(pair.transmit_sender(ALL), 1);
    assert!(pair.to_receiver.holds(Kind::Heartbeat));
    assert_eq!(pair.transmit_receiver(), 1);
    assert!(pair.to_sender.holds(Kind::Heartbeat));
    pair.pump();
    assert_eq!(
        pair.receiver_events,
        [ReceiverEvent::Heartbeat {
            epoch: 1,
            in_sync: true
        }]
    );
    assert!(pair.sender_events.is_empty());

    // Heartbeats alone keep an idle link up for many peer timeouts.
    for _ in 0..50 {
        pair.advance(link.heartbeat_interval);
        pair.pump();
        pair.handle_timeouts();
    }
    assert!(!pair.sender.is_closed() && !pair.receiver.is_closed());
    let heartbeats = pair
        .receiver_events
        .iter()
        .filter(|ev| matches!(ev, ReceiverEvent::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats, 51);
}

#[test]
fn a_sender_waiting_on_its_standby_is_not_woken_in_a_busy_loop() {
    let link = LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"));
    let a_while = link.heartbeat_interval * 3;

    // Waiting for the hello.
    let mut pair = Pair::new(link.clone(), BatchConfig::default());
    pair.advance(a_while);
    pair.transmit_sender(ALL);
    pair.transmit_receiver();
    pair.check_deadlines();

    // Waiting for the engine to accept (say, while it encodes a snapshot).
    let hello = pair.hello();
    pair.advance(a_while);
    pair.pump();
    pair.sender.accept(
        pair.now,
        identity("active", 1),
        Start::Resume,
        hello.seq_applied,
    );
    pair.pump();

    // Waiting for the standby's answer to a step-up.
    pair.push(Op::DbPut, b"key", b"value");
    pair.outbox.seal();
    pair.pump();
    pair.sender.step_up(pair.step_up_signal(2));
    pair.pump();
    assert!(matches!(
        pair.receiver_events.last(),
        Some(ReceiverEvent::StepUp(_))
    ));
    pair.advance(a_while);
    pair.pump();
    assert!(!pair.sender.is_closed() && !pair.receiver.is_closed());
}

// -------------------------------------------------------------------------------------------
// Randomized interleavings
// -------------------------------------------------------------------------------------------

/// One seeded run: random link and batch limits, a random history, a resume or a snapshot,
/// then pushes, seals, partial deliveries cut at random points, acks and clock ticks in a
/// random order. The helpers check the window and the acks on every move.
fn random_run(seed: u64) {
    let mut rng = Rng::new(seed);
    let link = LinkConfig {
        batches_in_flight_max: 1 + rng.below(4),
        bytes_in_flight_max: if rng.one_in(3) { 512 } else { 8 << 20 },
        ..LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"))
    };
    let batch = BatchConfig {
        batch_updates_max: 1 + rng.below(32) as u32,
        batch_bytes_max: 64 + rng.below(2048),
        ..BatchConfig::default()
    };
    let mut pair = Pair::new(link, batch);
    pair.splitter = Some(Rng::new(seed ^ 0x5eed));

    // What the active wrote before the standby connected.
    for _ in 0..rng.below(200) {
        pair.push_random(&mut rng);
        if rng.one_in(8) {
            pair.outbox.seal();
        }
    }
    pair.outbox.seal();
    let hello = pair.hello();
    let active = identity("active", 1);
    if rng.one_in(2) {
        assert!(pair.outbox.covers(hello.seq_applied));
        pair.sender
            .accept(pair.now, active, Start::Resume, hello.seq_applied);
    } else {
        pair.accept_snapshot(hello.seq_applied);
    }

    for step in 0..600 {
        match rng.below(10) {
            0..=2 => {
                for _ in 0..1 + rng.below(4) {
                    if pair.outbox.is_full() {
                        pair.outbox.seal();
                    }
                    pair.push_random(&mut rng);
                }
            }
            3 => {
                if pair.sender.window_open() || rng.one_in(4) {
                    pair.outbox.seal();
                }
            }
            4 => {
                if rng.one_in(2) {
                    pair.send_snapshot(1 + rng.below(SHARDS / 4));
                }
                pair.transmit_sender(1 + rng.below(4));
            }
            5 | 6 => {
                let n = rng.below(pair.to_receiver.len() + 1);
                pair.deliver_to_receiver(n);
            }
            7 => pair.apply(1 + rng.below(3)),
            8 => {
                pair.transmit_receiver();
                let n = rng.below(pair.to_sender.len() + 1);
                pair.deliver_to_sender(n);
            }
            _ => pair.advance(MS * rng.below(40) as u32),
        }
        assert!(
            !pair.sender.is_closed() && !pair.receiver.is_closed(),
            "seed {seed}, step {step}: {:?} / {:?}",
            pair.sender_closed_reason(),
            pair.receiver_closed_reason()
        );
    }

    pair.outbox.seal();
    pair.pump();
    assert_eq!(pair.standby.state, pair.active, "seed {seed}");
    assert_eq!(
        pair.standby.seq_applied,
        pair.outbox.seq_last(),
        "seed {seed}"
    );
    assert_eq!(
        pair.sender.seq_acked(),
        pair.outbox.seq_last(),
        "seed {seed}"
    );
    assert!(pair.sender.caught_up(), "seed {seed}");
    assert!(pair.unacked.is_empty(), "seed {seed}");
}

#[test]
fn random_interleavings_of_writes_deliveries_and_acks_converge() {
    for seed in 1..=64 {
        random_run(seed);
    }
}

#[test]
fn a_standby_without_the_secret_is_refused_before_its_hello_is_read() {
    let mut pair = Pair::mismatched(b"the-pair-secret-1", b"someone-else-guessing");
    pair.pump();
    // The active never reports the hello (with its epoch 7) to the engine: it closes.
    assert!(
        matches!(&pair.sender_events[..], [SenderEvent::Closed { reason }] if reason.contains("authentication failed")),
        "{:?}",
        pair.sender_events
    );
    assert!(
        matches!(&pair.receiver_events[..], [ReceiverEvent::Closed { reason }] if reason.contains("refused")),
        "{:?}",
        pair.receiver_events
    );
}

#[test]
fn a_standby_does_not_follow_an_active_without_the_secret() {
    let mut pair = Pair::mismatched(b"an-impostor-active", b"the-pair-secret-1");
    pair.pump();
    // The impostor cannot even verify the hello; the standby never sees an acceptance.
    assert!(pair
        .receiver_events
        .iter()
        .all(|e| !matches!(e, ReceiverEvent::Accepted { .. })));
    assert!(pair.receiver.is_closed() && pair.sender.is_closed());
}
