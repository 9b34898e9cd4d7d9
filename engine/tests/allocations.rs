//! Zero allocations per replicated update in steady state, on both engines: the active's
//! write through `Ctx` (state change and update record in the open batch), sealing, the
//! sender's frames, the standby's receiver (framing, CRC, validation), applying the batch
//! through the application to its state, the cumulative ack, and the active taking the ack
//! in. The two ends are the engine's own sans-IO state machines joined in memory (no socket),
//! so that every allocation counted is one of this path's. A counting global allocator counts
//! between the warm-up and the end; what may allocate is what is amortised over many batches
//! (the outbox's arena, once per its size in bytes), never something per update or per batch.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use engine::app::{Application, Ctx};
use engine::catch_up::apply_batch;
use engine::sessions::{AppVersion, Sessions};
use engine::state::State;
use replicator::{
    BatchConfig, Hello, Identity, LinkConfig, Outbox, Receiver, ReceiverEvent, Sender, SenderEvent,
    Start,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`; `ptr` came from this allocator with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const KEYS: usize = 10_000;
const UPDATES_PER_BATCH: usize = 64;

fn identity(name: &str) -> Identity {
    Identity {
        engine: name.into(),
        epoch: 1,
        app_name: "sessions".into(),
        app_version: "1.0".into(),
        ..Identity::default()
    }
}

/// An active and a standby engine's replication path, joined in memory.
struct Engines {
    active: State,
    outbox: Outbox,
    sender: Sender,
    receiver: Receiver,
    app: Sessions,
    standby: State,
    keys: Vec<Vec<u8>>,
    value: Vec<u8>,
    next: usize,
}

impl Engines {
    fn new() -> Engines {
        let now = Instant::now();
        let link = LinkConfig::new(replicator::Secret::from_bytes(*b"allocation-test-secret"));
        let hello = Hello::new(identity("b"), 0, 0);
        let mut e = Engines {
            active: State::default(),
            outbox: Outbox::new(BatchConfig::default(), 0),
            sender: Sender::new(now, link.clone(), 1),
            receiver: Receiver::new(now, link, &hello),
            app: Sessions::new(AppVersion::V1_0, None),
            standby: State::default(),
            keys: (0..KEYS)
                .map(|i| format!("key:{i:08}").into_bytes())
                .collect(),
            value: vec![b'v'; 100],
            next: 0,
        };
        for _ in 0..4 {
            e.exchange(now);
        }
        assert!(e.sender.caught_up(), "the link did not come up");
        e
    }

    /// Moves every frame each way once, as the drivers do per turn; the standby applies what
    /// it received and acknowledges once per read.
    fn exchange(&mut self, now: Instant) {
        while let Some(f) = self.sender.poll_transmit(now, &self.outbox) {
            self.receiver.handle_input(now, &f);
        }
        let mut applied = None;
        while let Some(ev) = self.receiver.poll_event() {
            if let ReceiverEvent::Batch {
                seq_first,
                seq_last,
                payload,
            } = ev
            {
                let app: &mut dyn Application = &mut self.app;
                apply_batch(
                    app,
                    &mut self.standby,
                    None,
                    seq_first,
                    payload,
                    |_, _, _| {},
                )
                .expect("the standby applies the batch");
                applied = Some(seq_last);
            }
        }
        if let Some(seq) = applied {
            self.receiver.applied(seq);
        }
        while let Some(f) = self.receiver.poll_transmit(now) {
            self.sender.handle_input(now, &f);
        }
        while let Some(ev) = self.sender.poll_event() {
            match ev {
                SenderEvent::Hello(_) => self.sender.accept(now, identity("a"), Start::Resume, 0),
                SenderEvent::Acked(seq) => self.outbox.pin(Some(seq)),
                SenderEvent::Closed { reason } => panic!("link closed: {reason}"),
                _ => {}
            }
        }
    }

    /// One batch of overwrites on the active (the keys exist after the first round), sealed,
    /// sent, applied on the standby, acknowledged.
    fn batch(&mut self, now: Instant) {
        let mut ctx = Ctx::new(&mut self.active, &mut self.outbox, now);
        for _ in 0..UPDATES_PER_BATCH {
            let key = &self.keys[self.next % KEYS];
            self.value[0] = b'a' + (self.next % 26) as u8;
            ctx.db_put(key, &self.value).expect("the active writes");
            self.next += 1;
        }
        self.outbox.seal();
        self.exchange(now);
    }
}

#[test]
fn a_replicated_update_allocates_nothing_in_steady_state_on_either_engine() {
    let mut e = Engines::new();
    let now = Instant::now();
    // Warm-up: every key exists on both engines, the queues and buffers have their size.
    for _ in 0..3 * KEYS / UPDATES_PER_BATCH {
        e.batch(now);
    }
    let batches = 20_000u64;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..batches {
        e.batch(now);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let updates = batches * UPDATES_PER_BATCH as u64;
    assert_eq!(
        e.sender.seq_acked(),
        e.outbox.seq_last(),
        "everything acknowledged"
    );
    assert_eq!(
        e.standby.digest(),
        e.active.digest(),
        "both engines hold the same state"
    );
    println!(
        "{allocations} allocations for {updates} replicated updates in {batches} batches \
         ({:.5} per update, {:.4} per batch)",
        allocations as f64 / updates as f64,
        allocations as f64 / batches as f64
    );
    // Amortised allocations only (the outbox's 1 MiB arena, a few per arena: every hundred
    // batches or so here, as the backlog keeps the sealed frames alive for resuming standbys):
    // far fewer than one per batch, let alone per update.
    assert!(
        allocations * 20 < batches,
        "{allocations} allocations in {batches} batches of {UPDATES_PER_BATCH} updates"
    );
}
