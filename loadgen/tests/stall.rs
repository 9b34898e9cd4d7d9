//! A server that stops answering for seconds, then answers everything. The slices count
//! requests by the second they were meant to be sent in: the stall is a run of slices, each
//! with the offered rate, a latency of seconds and no reply arriving (`replied` 0), not a
//! gap followed by one slice holding the backlog. The histogram log's untagged intervals
//! hold the whole run, second by second.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{hlog_intervals, start_one, temp_dir, Action};
use loadgen::{Config, Mix, Mode};
use reports::run::RunDir;

const RATE_OPS_S: u64 = 1000;
const STALL: Duration = Duration::from_secs(3);
const STALL_AT_REQUEST: u64 = 500;
const DURATION: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stall_is_seconds_of_slices_with_no_reply_not_one_slice_of_backlog() {
    // From request 500 on, every connection's next request waits until the same moment:
    // the whole server stops answering for STALL.
    let until: Arc<Mutex<Option<Instant>>> = Arc::default();
    let server = start_one(Box::new(move |_, n, _| {
        let mut until = until.lock().unwrap();
        if n == STALL_AT_REQUEST {
            *until = Some(Instant::now() + STALL);
        }
        match until.map(|u| u.saturating_duration_since(Instant::now())) {
            Some(left) if !left.is_zero() => Action::PauseThenNormal(left),
            _ => Action::Normal,
        }
    }))
    .await;
    let dir = temp_dir("stall");
    let result = loadgen::run(Config {
        targets: vec![server.addr()],
        mode: Mode::Open {
            rate_ops_s: RATE_OPS_S,
        },
        connections: 2,
        pipeline: 16,
        duration: DURATION,
        // Longer than the stall: the connections wait it out rather than reconnect.
        reply_timeout: Duration::from_secs(30),
        mix: Mix {
            set: 1,
            get: 0,
            session: 0,
        },
        keys: 1000,
        out: Some(dir.clone()),
        ..Config::default()
    })
    .await
    .unwrap();
    let s = &result.summary;
    assert_eq!(s.lost_updates, 0, "{:?}", result.lost_examples);
    assert!(result.warnings.is_empty(), "{:?}", result.warnings);

    let slices = RunDir::new(&dir).read_slices().unwrap();
    assert_eq!(slices, result.slices);
    assert!(
        slices.windows(2).all(|w| w[1].t_ms == w[0].t_ms + 1000),
        "contiguous: {:?}",
        slices.iter().map(|s| s.t_ms).collect::<Vec<_>>()
    );
    let offered: Vec<_> = slices
        .iter()
        .filter(|sl| sl.t_ms + 1000 <= s.started_ms + DURATION.as_millis() as u64)
        .collect();
    assert_eq!(offered.len(), 6, "one slice per second of load");
    for slice in &offered {
        // Every request intended in the second is in it, however late its reply came.
        assert!(
            slice.ops.abs_diff(RATE_OPS_S) <= RATE_OPS_S / 100,
            "{slice:?}"
        );
        assert_eq!(slice.errors, 0);
    }
    // The stall covers at least two whole seconds: no reply arrived in them, and each of
    // their requests (answered when the stall ended) waited up to a second or more.
    let silent: Vec<_> = slices.iter().filter(|s| s.replied == Some(0)).collect();
    assert!(silent.len() >= 2, "{slices:?}");
    for slice in &silent {
        assert!(slice.ops > 0, "{slice:?}");
        assert!(slice.latency_us.max >= 1_000_000, "{slice:?}");
    }
    let replied: u64 = slices.iter().map(|s| s.replied.unwrap()).sum();
    let ops: u64 = slices.iter().map(|s| s.ops).sum();
    assert_eq!(replied, ops, "every reply counted once by arrival");
    assert_eq!(ops, s.phases.iter().map(|p| p.ops).sum::<u64>());

    // The untagged intervals are the whole run, one per slice.
    let log = std::fs::read(RunDir::new(&dir).histograms_path()).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(text.contains("microseconds"), "the header says the unit");
    let intervals = hlog_intervals(&log);
    let untagged: Vec<u64> = intervals
        .iter()
        .filter(|(tag, _, _)| tag.is_none())
        .map(|(_, _, count)| *count)
        .collect();
    assert_eq!(untagged.len(), slices.len());
    let successes: u64 = s.phases.iter().map(|p| p.ops - p.errors).sum();
    assert_eq!(untagged.iter().sum::<u64>(), successes);
    let tagged: u64 = intervals
        .iter()
        .filter(|(tag, _, _)| tag.is_some())
        .map(|(_, _, count)| count)
        .sum();
    assert_eq!(tagged, successes, "and the tagged ones each phase");

    // The stalled seconds are slow requests, at most 100 listed per second.
    let detail = RunDir::new(&dir).read_detail_if_present().unwrap().unwrap();
    assert!(
        detail.slow_omitted > 0,
        "a stall has more slow requests than are listed"
    );
    for second in slices.iter().map(|s| s.t_ms) {
        let listed = detail
            .slow
            .iter()
            .filter(|r| r.t_ms >= second && r.t_ms < second + 1000)
            .count();
        assert!(listed <= 100, "{listed} listed in the second at {second}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
