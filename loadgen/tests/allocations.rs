//! The hot path does not allocate per request: allocations on the load generator's threads
//! grow with the run's seconds (slices, ticks), not with its requests. A counting global
//! allocator counts only on threads of the runtime that drives the load; the fake server
//! runs on a runtime of its own.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loadgen::{Config, Mix, Mode};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's to choose.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations on the load's threads during one run, and the requests it made.
fn measure(target: &str, rate_ops_s: u64, duration: Duration) -> (u64, u64) {
    let load = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| COUNTED.with(|c| c.set(true)))
        .build()
        .unwrap();
    let config = Config {
        targets: vec![target.to_string()],
        mode: Mode::Open { rate_ops_s },
        connections: 2,
        pipeline: 16,
        duration,
        // No sessions: each one is a ledger entry and a read-back, by design.
        mix: Mix {
            set: 3,
            get: 1,
            session: 0,
        },
        // Few keys: the read-back at the end is the same size for both runs.
        keys: 64,
        ..Config::default()
    };
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(true));
    let result = load.block_on(loadgen::run(config)).unwrap();
    COUNTED.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(result.summary.lost_updates, 0);
    let requests = result.summary.phases.iter().map(|p| p.ops).sum();
    drop(result);
    load.shutdown_timeout(Duration::from_secs(1));
    (allocations, requests)
}

#[test]
fn allocations_do_not_grow_with_requests() {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.block_on(common::start_one(common::normal()));
    let target = server.addr();
    let (short_allocations, short_requests) = measure(&target, 4000, Duration::from_millis(500));
    let (long_allocations, long_requests) = measure(&target, 4000, Duration::from_millis(2500));
    let extra_requests = long_requests - short_requests;
    let extra_allocations = long_allocations.saturating_sub(short_allocations);
    assert!(extra_requests >= 7000, "{extra_requests} more requests");
    // Per second the run allocates a few cells and tick bookkeeping, tens in all; one
    // allocation per request would be thousands.
    assert!(
        extra_allocations * 20 < extra_requests,
        "{extra_allocations} more allocations for {extra_requests} more requests \
         ({short_allocations} then {long_allocations} in all)"
    );
}
