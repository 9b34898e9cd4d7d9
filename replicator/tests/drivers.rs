//! The drivers over real loopback sockets: one scenario, run with the tokio driver on both
//! ends, the io_uring driver on both ends, and each of them against the other.
//!
//! An active streams updates from a producer thread through its [`Outbox`] and [`Sender`] to
//! a standby whose [`Receiver`] hands out batches that it applies to a map and acknowledges.
//! Each end runs on its own thread, in a current-thread runtime of its own; the producer
//! pushes in chunks, wakes the active's link from its own thread, and holds back while the
//! outbox is full or too far ahead of the acks. Every step is the same closure whichever
//! driver runs it. At the end both maps are equal, the last sequence is acknowledged, and no
//! more than `batches_in_flight_max` batches were ever unacknowledged. The tests wait on
//! joins and condition variables, never on the clock: deadlines are far enough away that
//! only a broken wake-up would ever reach one. The one deadline meant to be reached is the
//! write stall of a peer that stops reading, shortened for the test.
//!
//! A machine where io_uring is refused (a seccomp sandbox, `kernel.io_uring_disabled`) fails
//! the io_uring tests with the reason, rather than skipping them. The io_uring driver exists
//! on Linux only, and so do these tests.
#![cfg(target_os = "linux")]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use replicator::driver::{self, Turn};
use replicator::frame;
use replicator::uring;
use replicator::{
    BatchConfig, Hello, Identity, Kind, LinkConfig, Op, Outbox, Receiver, ReceiverEvent, Records,
    Sender, SenderEvent, Start,
};

const UPDATES: u64 = 100_000;
/// Updates the producer pushes under one lock, then wakes the link.
const CHUNK_UPDATES: u64 = 500;
/// The producer waits while the outbox is this many updates ahead of the acknowledgements.
const LAG_UPDATES_MAX: u64 = 20_000;
const KEYS: u64 = 7_919;
/// Far enough that a test never reaches a deadline unless something is broken.
const LONG: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    Tokio,
    Uring,
}

/// What wakes the active's link, from the producer's thread: the same for both drivers.
type Wake = Arc<tokio::sync::Notify>;

fn new_wake() -> Wake {
    Arc::new(tokio::sync::Notify::new())
}

/// Runs one end of a link with `driver`, on the calling thread (a current-thread runtime of
/// its own), until `step` is done; a write that makes no progress for `write_stall_max`
/// fails it.
fn run_link_with<F>(
    driver: Driver,
    stream: TcpStream,
    wake: &Wake,
    write_stall_max: Duration,
    step: F,
) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        driver::configure(&stream)?;
        match driver {
            Driver::Tokio => driver::run_with(stream, wake, write_stall_max, step).await,
            Driver::Uring => uring::run_with(stream, wake, write_stall_max, step).await,
        }
    })
}

/// [`run_link_with`] with the drivers' own write-stall deadline.
fn run_link<F>(driver: Driver, stream: TcpStream, wake: &Wake, step: F) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    run_link_with(driver, stream, wake, driver::WRITE_STALL_MAX, step)
}

/// Fails the test, with the reason, where io_uring cannot be used.
fn require_io_uring() {
    if let Err(e) = uring::available() {
        panic!("the io_uring driver cannot run on this machine: {e}");
    }
}

fn link_config() -> LinkConfig {
    LinkConfig {
        heartbeat_interval: LONG,
        peer_timeout: LONG,
        handshake_timeout: LONG,
        ..LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"))
    }
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

/// The key and value of update `i`: keys repeat, so later updates overwrite earlier ones.
fn update(i: u64, value: &mut Vec<u8>) -> Vec<u8> {
    value.clear();
    value.extend_from_slice(&i.to_le_bytes());
    value.resize(8 + (i % 93) as usize, (i % 251) as u8);
    format!("key:{}", i % KEYS).into_bytes()
}

/// What the producer and the active's link share.
struct Active {
    outbox: Outbox,
    seq_acked: u64,
    /// The link has ended: the producer stops waiting for it.
    link_finished: bool,
}

struct Shared {
    active: Mutex<Active>,
    /// Signalled when an ack arrives, a batch is sealed, or the link ends.
    progress: Condvar,
}

impl Shared {
    fn finish(&self) {
        if let Ok(mut active) = self.active.lock() {
            active.link_finished = true;
        }
        self.progress.notify_all();
    }
}

/// Marks the link finished however its thread ends, a panic included, so that the producer
/// never waits for it forever.
struct FinishOnDrop(Arc<Shared>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// What the active's end saw.
struct ActiveReport {
    result: io::Result<()>,
    seq_acked: u64,
    batches_sent: u64,
    in_flight_max: usize,
    closed: Option<String>,
}

/// What the standby's end saw.
struct StandbyReport {
    result: io::Result<()>,
    db: HashMap<Vec<u8>, Vec<u8>>,
    seq_applied: u64,
    batches_applied: u64,
    closed: Option<String>,
}

fn active_end(
    driver: Driver,
    stream: TcpStream,
    wake: Wake,
    shared: Arc<Shared>,
    total: u64,
) -> ActiveReport {
    let _finish = FinishOnDrop(shared.clone());
    let link = link_config();
    let batches_in_flight_max = link.batches_in_flight_max;
    let mut sender = Sender::new(Instant::now(), link, 1);
    // Our own flow-control ledger: the last sequence of each batch on the wire, unacked.
    let mut unacked: VecDeque<u64> = VecDeque::new();
    let (mut batches_sent, mut in_flight_max) = (0u64, 0usize);
    let mut closed = None;
    let result = run_link(driver, stream, &wake, |now, input, tx| {
        let mut active = shared.active.lock().expect("the producer never panics");
        if !input.is_empty() {
            sender.handle_input(now, input);
        }
        sender.handle_timeout(now);
        while let Some(event) = sender.poll_event() {
            match event {
                SenderEvent::Hello(hello) => {
                    sender.accept(now, identity("active", 1), Start::Resume, hello.seq_applied)
                }
                SenderEvent::Acked(seq) => {
                    while unacked.front().is_some_and(|&last| last <= seq) {
                        unacked.pop_front();
                    }
                    active.seq_acked = seq;
                    active.outbox.pin(Some(seq));
                    shared.progress.notify_all();
                }
                SenderEvent::CaughtUp => {}
                SenderEvent::Closed { reason } => closed = Some(reason),
                other => panic!("unexpected event on the active: {other:?}"),
            }
        }
        // Group commit, as the engine does it: seal what gathered whenever the window has room.
        if sender.window_open() && active.outbox.ready(now) {
            active.outbox.seal();
            shared.progress.notify_all();
        }
        while let Some(f) = sender.poll_transmit(now, &active.outbox) {
            let decoded = frame::decode_exact(&f).expect("the sender writes sound frames");
            if decoded.kind == Kind::Batch {
                assert!(
                    unacked.len() < batches_in_flight_max,
                    "flow control: batch ending at {} sent with {} unacknowledged",
                    decoded.seq,
                    unacked.len()
                );
                unacked.push_back(decoded.seq);
                in_flight_max = in_flight_max.max(unacked.len());
                batches_sent += 1;
            }
            tx.push_back(f);
        }
        tx.extend(sender.drain_out());
        let deadline = match (sender.poll_timeout(), active.outbox.deadline()) {
            (Some(a), Some(b)) if sender.window_open() => Some(a.min(b)),
            (a, _) => a,
        };
        Turn {
            deadline,
            done: sender.is_closed() || sender.seq_acked() == total,
        }
    });
    ActiveReport {
        result,
        seq_acked: sender.seq_acked(),
        batches_sent,
        in_flight_max,
        closed,
    }
}

fn standby_end(driver: Driver, stream: TcpStream, total: u64) -> StandbyReport {
    // Nobody wakes the standby: it turns on reads alone.
    let wake = new_wake();
    let hello = Hello::new(identity("standby", 0), 0, 0);
    let mut receiver = Receiver::new(Instant::now(), link_config(), &hello);
    let mut db = HashMap::new();
    let (mut seq_applied, mut batches_applied) = (0u64, 0u64);
    let mut closed = None;
    let result = run_link(driver, stream, &wake, |now, input, tx| {
        if !input.is_empty() {
            receiver.handle_input(now, input);
        }
        receiver.handle_timeout(now);
        let mut applied = None;
        while let Some(event) = receiver.poll_event() {
            match event {
                ReceiverEvent::Accepted { .. } | ReceiverEvent::Heartbeat { .. } => {}
                ReceiverEvent::Batch {
                    seq_first,
                    seq_last,
                    payload,
                } => {
                    assert_eq!(seq_first, seq_applied + 1, "batches must be contiguous");
                    let mut count = 0;
                    for record in Records::new(Kind::Batch, payload).expect("a validated batch") {
                        let record = record.expect("a validated batch");
                        assert_eq!(record.op, Op::DbPut);
                        db.insert(record.key.to_vec(), record.value.to_vec());
                        count += 1;
                    }
                    assert_eq!(count, seq_last - seq_first + 1);
                    seq_applied = seq_last;
                    batches_applied += 1;
                    applied = Some(seq_last);
                }
                ReceiverEvent::Closed { reason } => closed = Some(reason),
                other => panic!("unexpected event on the standby: {other:?}"),
            }
        }
        if let Some(seq) = applied {
            receiver.applied(seq);
        }
        while let Some(f) = receiver.poll_transmit(now) {
            tx.push_back(f);
        }
        Turn {
            deadline: receiver.poll_timeout(),
            done: receiver.is_closed() || seq_applied == total,
        }
    });
    StandbyReport {
        result,
        db,
        seq_applied,
        batches_applied,
        closed,
    }
}

/// Pushes `total` updates in chunks, never more than the outbox holds or far ahead of the
/// acks; returns the active's map.
fn produce(shared: &Shared, wake: &Wake, total: u64) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut db = HashMap::new();
    let mut value = Vec::new();
    let mut i = 0;
    while i < total {
        {
            let mut active = shared
                .active
                .lock()
                .expect("the link never panics holding it");
            while !active.link_finished
                && (active.outbox.is_full()
                    || active.outbox.seq_last() - active.seq_acked >= LAG_UPDATES_MAX)
            {
                active = shared.progress.wait(active).expect("not poisoned");
            }
            if active.link_finished {
                break;
            }
            let now = Instant::now();
            let end = (i + CHUNK_UPDATES).min(total);
            while i < end && !active.outbox.is_full() {
                let key = update(i, &mut value);
                let seq = active.outbox.push(now, Op::DbPut, &key, &value);
                assert_eq!(seq, i + 1);
                db.insert(key, value.clone());
                i += 1;
            }
        }
        wake.notify_one();
    }
    db
}

/// Streams `total` updates from an active run by `active_driver` to a standby run by
/// `standby_driver`, over a loopback socket, and checks the outcome.
fn stream_updates(active_driver: Driver, standby_driver: Driver, total: u64) {
    if active_driver == Driver::Uring || standby_driver == Driver::Uring {
        require_io_uring();
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let standby = thread::spawn(move || {
        let stream = TcpStream::connect(addr).expect("connect to the active");
        standby_end(standby_driver, stream, total)
    });
    let (stream, _) = listener.accept().expect("the standby connects");
    let shared = Arc::new(Shared {
        active: Mutex::new(Active {
            outbox: Outbox::new(BatchConfig::default(), 0),
            seq_acked: 0,
            link_finished: false,
        }),
        progress: Condvar::new(),
    });
    let wake = new_wake();
    let active = {
        let (shared, wake) = (shared.clone(), wake.clone());
        thread::spawn(move || active_end(active_driver, stream, wake, shared, total))
    };
    let expected = produce(&shared, &wake, total);
    let active = active.join().expect("the active's thread");
    let standby = standby.join().expect("the standby's thread");

    let label = format!("{active_driver:?} active, {standby_driver:?} standby");
    active
        .result
        .unwrap_or_else(|e| panic!("{label}: the active's link failed: {e}"));
    standby
        .result
        .unwrap_or_else(|e| panic!("{label}: the standby's link failed: {e}"));
    assert_eq!(active.closed, None, "{label}");
    assert_eq!(standby.closed, None, "{label}");
    assert_eq!(
        active.seq_acked, total,
        "{label}: acks reach the last update"
    );
    assert_eq!(standby.seq_applied, total, "{label}");
    assert_eq!(standby.batches_applied, active.batches_sent, "{label}");
    assert!(
        active.batches_sent > 1 && active.batches_sent < total,
        "{label}: updates travel in batches ({} batches)",
        active.batches_sent
    );
    let window = link_config().batches_in_flight_max;
    assert!(
        (1..=window).contains(&active.in_flight_max),
        "{label}: {} batches in flight, window {window}",
        active.in_flight_max
    );
    assert_eq!(expected.len() as u64, KEYS.min(total), "{label}");
    assert!(standby.db == expected, "{label}: the standby's map differs");
}

#[test]
fn tokio_to_tokio() {
    stream_updates(Driver::Tokio, Driver::Tokio, UPDATES);
}

#[test]
fn uring_to_uring() {
    stream_updates(Driver::Uring, Driver::Uring, UPDATES);
}

#[test]
fn uring_active_to_tokio_standby() {
    stream_updates(Driver::Uring, Driver::Tokio, UPDATES);
}

#[test]
fn tokio_active_to_uring_standby() {
    stream_updates(Driver::Tokio, Driver::Uring, UPDATES);
}

// -------------------------------------------------------------------------------------------
// The driver contract, the same for both
// -------------------------------------------------------------------------------------------

fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let client = TcpStream::connect(listener.local_addr().expect("its address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (server, client)
}

/// Frames far larger than the socket buffers, in more pieces than one vectored write takes:
/// every byte arrives, in order, through short writes and resubmitted remainders.
fn writes_everything_in_order(driver: Driver) {
    const FRAMES: usize = 200;
    const FRAME_BYTES: usize = 97 * 1024 + 13;
    let (server, mut client) = loopback_pair();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        client
            .read_to_end(&mut got)
            .expect("read until the driver shuts down");
        got
    });
    let frames: Vec<Bytes> = (0..FRAMES)
        .map(|i| Bytes::from(vec![(i % 251) as u8; FRAME_BYTES - i]))
        .collect();
    let mut expected = Vec::new();
    for f in &frames {
        expected.extend_from_slice(f);
    }
    let mut turns = 0;
    let wake = new_wake();
    let result = run_link(driver, server, &wake, |_, _, tx| {
        turns += 1;
        tx.extend(frames.iter().cloned());
        Turn {
            deadline: None,
            done: true,
        }
    });
    result.expect("the driver writes and shuts down");
    assert_eq!(turns, 1);
    let got = reader.join().expect("the reader");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "{driver:?}: bytes differ");
}

/// Every byte the peer sends reaches `step`, and a peer that closes ends the loop with
/// `UnexpectedEof` after a last turn.
fn reads_everything_then_eof(driver: Driver) {
    const BYTES: usize = 3 << 20;
    let (server, mut client) = loopback_pair();
    let sent: Vec<u8> = (0..BYTES).map(|i| (i * 7 % 253) as u8).collect();
    let writer = {
        let sent = sent.clone();
        thread::spawn(move || {
            for piece in sent.chunks(10_007) {
                client.write_all(piece).expect("write to the driver");
            }
        })
    };
    let mut got = Vec::new();
    let wake = new_wake();
    let result = run_link(driver, server, &wake, |_, input, _| {
        got.extend_from_slice(input);
        Turn {
            deadline: None,
            done: false,
        }
    });
    writer.join().expect("the writer");
    let err = result.expect_err("the peer closed");
    assert_eq!(
        err.kind(),
        io::ErrorKind::UnexpectedEof,
        "{driver:?}: {err}"
    );
    assert!(
        got == sent,
        "{driver:?}: {} of {BYTES} bytes, or out of order",
        got.len()
    );
}

/// A wake-up from another thread, with no deadline and nothing to read, gives a turn; a
/// wake-up given before the loop waits is not lost.
fn wakes_from_another_thread(driver: Driver) {
    const WAKES: usize = 50;
    let (server, _client) = loopback_pair();
    let wake = new_wake();
    let (ready_tx, ready_rx) = mpsc::channel::<usize>();
    let waker = {
        let wake = wake.clone();
        thread::spawn(move || {
            for i in ready_rx {
                // Every other wake-up is given twice: the loop may take one turn for both.
                wake.notify_one();
                if i % 2 == 0 {
                    wake.notify_one();
                }
            }
        })
    };
    let mut turns = 0;
    let guard = Instant::now() + LONG;
    let result = run_link(driver, server, &wake, |now, input, _| {
        assert!(input.is_empty());
        assert!(
            now < guard,
            "{driver:?}: woken by the deadline, not the wake-up"
        );
        turns += 1;
        if turns <= WAKES {
            ready_tx.send(turns).expect("the waker is there");
        }
        Turn {
            deadline: Some(guard),
            done: turns > WAKES,
        }
    });
    result.expect("the loop ends when the step says so");
    drop(ready_tx);
    waker.join().expect("the waker");
    assert!(turns > WAKES);
}

/// A peer that stops reading (but keeps its socket open) fails the link with `TimedOut` once
/// a write has made no progress for the write-stall deadline, and no sooner.
fn a_peer_that_stops_reading_hits_the_write_stall(driver: Driver) {
    const STALL: Duration = Duration::from_millis(300);
    // Far more than loopback socket buffers hold, in one turn.
    const FRAMES: usize = 256;
    let (server, client) = loopback_pair();
    let frame = Bytes::from(vec![0x5a; 1 << 20]);
    let wake = new_wake();
    let mut turns = 0;
    let mut last_progress = Instant::now();
    let result = run_link_with(driver, server, &wake, STALL, |now, _, tx| {
        turns += 1;
        last_progress = now;
        if turns == 1 {
            tx.extend((0..FRAMES).map(|_| frame.clone()));
        }
        Turn {
            deadline: None,
            done: false,
        }
    });
    let failed_at = Instant::now();
    drop(client);
    let err = result.expect_err("the peer never reads");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{driver:?}: {err}");
    assert_eq!(err.to_string(), "the peer stopped reading", "{driver:?}");
    assert_eq!(
        turns, 1,
        "{driver:?}: no turn before the frames are written"
    );
    assert!(
        failed_at - last_progress >= STALL,
        "{driver:?}: failed {:?} after the turn, before the stall deadline",
        failed_at - last_progress
    );
}

#[test]
fn tokio_a_peer_that_stops_reading_hits_the_write_stall() {
    a_peer_that_stops_reading_hits_the_write_stall(Driver::Tokio);
}

#[test]
fn uring_a_peer_that_stops_reading_hits_the_write_stall() {
    require_io_uring();
    a_peer_that_stops_reading_hits_the_write_stall(Driver::Uring);
}

#[test]
fn tokio_writes_everything_in_order() {
    writes_everything_in_order(Driver::Tokio);
}

#[test]
fn uring_writes_everything_in_order() {
    require_io_uring();
    writes_everything_in_order(Driver::Uring);
}

#[test]
fn tokio_reads_everything_then_eof() {
    reads_everything_then_eof(Driver::Tokio);
}

#[test]
fn uring_reads_everything_then_eof() {
    require_io_uring();
    reads_everything_then_eof(Driver::Uring);
}

#[test]
fn tokio_wakes_from_another_thread() {
    wakes_from_another_thread(Driver::Tokio);
}

#[test]
fn uring_wakes_from_another_thread() {
    require_io_uring();
    wakes_from_another_thread(Driver::Uring);
}
