//! Open-loop pacing with sub-millisecond precision. Tokio's timers have a resolution of one
//! millisecond: a request intended at `t` would go out at the next tick, and since latency
//! counts from the intended time, up to a millisecond of the generator's own waiting (half
//! on average) would be charged to the server. So a dedicated thread walks the run's
//! schedule (request `j` is due at `j / rate` and belongs to connection `j mod n`, the
//! same schedule the connections follow) and wakes each connection when its next request
//! falls due. It sleeps with a timer slack of one microsecond (instead of Linux's default
//! 50 µs) rather than spinning: on a small machine a spinning load generator takes a core
//! from the system it measures. The last [`SPIN_NS`] are spun. The wake-up reaches the
//! connection's task through a `Notify`, whose stored permit means none is ever missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Notify;

use crate::clock::Clock;

/// With a 1 µs timer slack a park overshoots by a few microseconds: park until this long
/// before the deadline, then spin.
pub const SPIN_NS: u64 = 5_000;
/// The pacing thread's timer slack.
const TIMER_SLACK_NS: u64 = 1_000;
/// Longest park, so that a stop is seen promptly even without an unpark.
const PARK_MAX: Duration = Duration::from_millis(10);

/// The pacing thread of a run.
pub struct Pacer {
    wakers: Vec<Arc<Notify>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    /// Starts pacing `connections` connections at `rate_ops_s` from the clock's start.
    pub fn start(clock: Clock, rate_ops_s: u64, connections: usize) -> std::io::Result<Pacer> {
        let wakers: Vec<Arc<Notify>> = (0..connections).map(|_| Arc::new(Notify::new())).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("loadgen-pacer".into())
            .spawn({
                let wakers = wakers.clone();
                let stop = stop.clone();
                move || pace(clock, rate_ops_s, &wakers, &stop)
            })?;
        Ok(Pacer {
            wakers,
            stop,
            thread: Some(thread),
        })
    }

    /// What connection `index` waits on.
    pub fn waker(&self, index: usize) -> Arc<Notify> {
        self.wakers[index].clone()
    }

    /// Stops the thread (nothing is due after the run's stop).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pace(clock: Clock, rate_ops_s: u64, wakers: &[Arc<Notify>], stop: &AtomicBool) {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS) {
        tracing::warn!("could not tighten the pacer's timer slack ({e}); pacing may lag by ~50 us");
    }
    let per_op_ns = 1e9 / rate_ops_s as f64;
    let due = |j: u64| (j as f64 * per_op_ns) as u64;
    let n = wakers.len() as u64;
    let mut j: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        if !wait_until(&clock, due(j), stop) {
            return;
        }
        let now_ns = clock.now_ns();
        let mut woken = 0;
        while due(j) <= now_ns && woken < n {
            wakers[(j % n) as usize].notify_one();
            j += 1;
            woken += 1;
        }
        if woken == n {
            // Behind by a full round: every connection is awake and takes all that is
            // due; skip to the first request still ahead.
            j = j.max((now_ns as f64 / per_op_ns).floor() as u64 + 1);
        }
    }
}

/// Waits until `due_ns` on the run's clock; false if stopped first.
fn wait_until(clock: &Clock, due_ns: u64, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now_ns = clock.now_ns();
        if now_ns >= due_ns {
            return true;
        }
        let left_ns = due_ns - now_ns;
        if left_ns > SPIN_NS {
            std::thread::park_timeout(Duration::from_nanos(left_ns - SPIN_NS).min(PARK_MAX));
        } else {
            std::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_is_woken_and_the_thread_stops() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = Clock::start_now();
        let mut pacer = Pacer::start(clock, 10_000, 3).unwrap();
        runtime.block_on(async {
            for i in 0..3 {
                for _ in 0..5 {
                    pacer.waker(i).notified().await;
                }
            }
        });
        pacer.stop();
        assert!(pacer.thread.is_none());
    }
}
