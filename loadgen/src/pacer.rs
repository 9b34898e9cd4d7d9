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
//!
//! A fleet run (`fleet`) drives several pairs, each with its own rate and connections: one
//! thread walks every pair's schedule ([`Pacer::start_groups`]), so that the machine pays
//! for one pacing thread however many pairs are driven.

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
    /// Per group (one per pair), per connection.
    wakers: Vec<Vec<Arc<Notify>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pacer {
    /// Starts pacing `connections` connections at `rate_ops_s` from the clock's start.
    pub fn start(clock: Clock, rate_ops_s: u64, connections: usize) -> std::io::Result<Pacer> {
        Pacer::start_groups(clock, &[(rate_ops_s, connections)])
    }

    /// Starts pacing several groups of connections from the clock's start, each
    /// `(rate_ops_s, connections)` on its own schedule (a fleet: one group per pair).
    pub fn start_groups(clock: Clock, groups: &[(u64, usize)]) -> std::io::Result<Pacer> {
        let wakers: Vec<Vec<Arc<Notify>>> = groups
            .iter()
            .map(|&(_, n)| (0..n).map(|_| Arc::new(Notify::new())).collect())
            .collect();
        let rates: Vec<u64> = groups.iter().map(|&(rate, _)| rate).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("loadgen-pacer".into())
            .spawn({
                let wakers = wakers.clone();
                let stop = stop.clone();
                move || pace(clock, &rates, &wakers, &stop)
            })?;
        Ok(Pacer {
            wakers,
            stop,
            thread: Some(thread),
        })
    }

    /// What connection `index` (of the first group) waits on.
    pub fn waker(&self, index: usize) -> Arc<Notify> {
        self.wakers[0][index].clone()
    }

    /// What the connections of group `group` wait on, by index.
    pub fn group_wakers(&self, group: usize) -> Vec<Arc<Notify>> {
        self.wakers[group].clone()
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

/// One group's walk through its schedule: request `j` is due at `j / rate` and belongs
/// to connection `j mod n`.
struct Walk<'w> {
    per_op_ns: f64,
    wakers: &'w [Arc<Notify>],
    j: u64,
}

impl Walk<'_> {
    fn due(&self, j: u64) -> u64 {
        (j as f64 * self.per_op_ns) as u64
    }

    /// Wakes the connections whose requests are due by `now_ns`.
    fn wake_due(&mut self, now_ns: u64) {
        let n = self.wakers.len() as u64;
        let mut woken = 0;
        while self.due(self.j) <= now_ns && woken < n {
            self.wakers[(self.j % n) as usize].notify_one();
            self.j += 1;
            woken += 1;
        }
        if woken == n {
            // Behind by a full round: every connection is awake and takes all that is
            // due; skip to the first request still ahead.
            self.j = self
                .j
                .max((now_ns as f64 / self.per_op_ns).floor() as u64 + 1);
        }
    }
}

fn pace(clock: Clock, rates: &[u64], wakers: &[Vec<Arc<Notify>>], stop: &AtomicBool) {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_timerslack(TIMER_SLACK_NS) {
        tracing::warn!("could not tighten the pacer's timer slack ({e}); pacing may lag by ~50 us");
    }
    let mut walks: Vec<Walk> = rates
        .iter()
        .zip(wakers)
        .filter(|(_, w)| !w.is_empty())
        .map(|(&rate, w)| Walk {
            per_op_ns: 1e9 / rate as f64,
            wakers: w,
            j: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        let Some(next_ns) = walks.iter().map(|w| w.due(w.j)).min() else {
            return;
        };
        if !wait_until(&clock, next_ns, stop) {
            return;
        }
        let now_ns = clock.now_ns();
        for walk in &mut walks {
            walk.wake_due(now_ns);
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

    #[test]
    fn groups_are_paced_on_their_own_schedules() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let clock = Clock::start_now();
        let mut pacer = Pacer::start_groups(clock, &[(10_000, 2), (5_000, 3)]).unwrap();
        runtime.block_on(async {
            for group in 0..2 {
                for waker in pacer.group_wakers(group) {
                    for _ in 0..3 {
                        waker.notified().await;
                    }
                }
            }
        });
        pacer.stop();
    }
}
