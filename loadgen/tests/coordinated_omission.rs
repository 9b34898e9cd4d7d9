//! A server that stalls once: the open-loop run must charge the stall to every request
//! that fell due during it (coordinated-omission correction), where a closed loop sees one
//! slow request.

mod common;

use std::time::Duration;

use common::{histogram, start_one, Action};
use loadgen::{Config, Mix, Mode};

const RATE_OPS_S: u64 = 2000;
const STALL: Duration = Duration::from_millis(100);
const STALL_AT_REQUEST: u64 = 200;

fn stalling_server_hook() -> common::Hook {
    Box::new(|_, n, _| {
        if n == STALL_AT_REQUEST {
            Action::PauseThenNormal(STALL)
        } else {
            Action::Normal
        }
    })
}

fn config(target: String, mode: Mode, pipeline: usize) -> Config {
    Config {
        targets: vec![target],
        mode,
        connections: 1,
        pipeline,
        duration: Duration::from_millis(1500),
        mix: Mix {
            set: 1,
            get: 0,
            session: 0,
        },
        keys: 1000,
        ..Config::default()
    }
}

/// Samples of at least `us` microseconds.
fn at_least(h: &hdrhistogram::Histogram<u64>, us: u64) -> u64 {
    h.count_between(us, h.max().max(us))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stall_shows_up_in_every_request_that_fell_due_during_it() {
    let server = start_one(stalling_server_hook()).await;
    let result = loadgen::run(config(
        server.addr(),
        Mode::Open {
            rate_ops_s: RATE_OPS_S,
        },
        1000,
    ))
    .await
    .unwrap();
    let h = histogram(&result, "steady");
    let stall_us = STALL.as_micros() as u64;
    assert!(h.max() >= stall_us, "max {} us", h.max());
    // Requests fall due every 0.5 ms during the 100 ms stall; the one due at t into it
    // waits about 100 ms - t. So about rate * (stall - 25 ms) = 150 wait 25 ms or more;
    // at least half of rate * stall = 100 must.
    let delayed = at_least(h, 25_000);
    let expected_min = RATE_OPS_S * STALL.as_millis() as u64 / 1000 / 2;
    assert!(
        delayed >= expected_min,
        "{delayed} samples >= 25 ms, expected at least {expected_min}"
    );
    assert!(
        h.value_at_quantile(0.999) >= 25_000,
        "p99.9 {} us",
        h.value_at_quantile(0.999)
    );
    assert_eq!(result.summary.lost_updates, 0);
    assert!(result.summary.verified_updates > 0);

    // The same stall measured closed-loop, one request at a time: one slow sample.
    let server = start_one(stalling_server_hook()).await;
    let closed = loadgen::run(config(server.addr(), Mode::Closed { connections: 1 }, 1))
        .await
        .unwrap();
    let h_closed = histogram(&closed, "steady");
    assert!(h_closed.max() >= stall_us);
    let delayed_closed = at_least(h_closed, 25_000);
    assert!(
        delayed_closed * 10 < delayed,
        "closed loop: {delayed_closed} samples >= 25 ms, open loop: {delayed}"
    );
}
