//! Following the pair: a fake pair whose first engine hands over to the second mid-run,
//! by refusing (`-NOTACTIVE <addr of the second>`) or by dying. The run must go on against
//! the second engine, lose nothing acknowledged, and report the switchover.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{histogram, normal, now_ms, start_admin, start_pair, temp_dir, Action, Engine};
use loadgen::{Config, Mix, Mode};
use reports::run::RunDir;
use reports::timeline::{Event, EventKind, SwitchoverKind};

const SWITCH_AT_REQUEST: u64 = 300;

fn config(targets: Vec<String>) -> Config {
    Config {
        targets,
        mode: Mode::Open { rate_ops_s: 2000 },
        connections: 3,
        pipeline: 16,
        duration: Duration::from_millis(800),
        mix: Mix::default(), // sets, gets and sessions
        keys: 500,
        ..Config::default()
    }
}

fn ops(result: &loadgen::RunResult) -> u64 {
    result.summary.phases.iter().map(|p| p.ops).sum()
}

fn check_nothing_lost(result: &loadgen::RunResult, second: &Engine) {
    let s = &result.summary;
    assert_eq!(s.lost_updates, 0, "{:?}", result.lost_examples);
    assert!(s.acknowledged_updates > SWITCH_AT_REQUEST / 2);
    assert!(s.verified_updates > 0);
    assert!(
        second.requests.load(Ordering::SeqCst) > 100,
        "the second engine served the rest of the run"
    );
    assert!(ops(result) > SWITCH_AT_REQUEST + 100);
    assert!(
        result.warnings.is_empty(),
        "warnings: {:?}",
        result.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusal_naming_the_active_is_followed() {
    let pair = start_pair(vec![
        Box::new(|engine: &Engine, n, _: &resp::Command| {
            if n == SWITCH_AT_REQUEST {
                engine.make_active(1); // from now on engine 0 answers NOTACTIVE <engine 1>
            }
            Action::Normal
        }),
        normal(),
    ])
    .await;
    // Only the first engine is given: the second is found through the refusal.
    let result = loadgen::run(config(vec![pair[0].addr()])).await.unwrap();
    check_nothing_lost(&result, &pair[1]);
    let switchovers = &result.summary.switchovers;
    assert_eq!(switchovers.len(), 1, "{switchovers:?}");
    assert_eq!(switchovers[0].kind, "planned");
    assert_eq!(switchovers[0].stepup_ms, 0.0, "unknown without a timeline");
    assert!(switchovers[0].client_gap_ms > 0.0);
    // Every connection was refused and sent the refused requests again.
    assert_eq!(switchovers[0].redirected, 3);
    assert!(switchovers[0].retried >= 3, "{:?}", switchovers[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_refused_twice_counts_once_as_retried() {
    // Engine 0 hands over to engine 1 at its 20th request, which it refuses; engine 1 hands
    // back at its first, the re-sent one, which it refuses too: that request goes out three
    // times, the third to engine 0. One connection, one request in flight.
    let pair = start_pair(vec![
        Box::new(|engine: &Engine, n, _: &resp::Command| {
            if n == 20 {
                engine.make_active(1);
            }
            Action::Normal
        }),
        Box::new(|engine: &Engine, n, _: &resp::Command| {
            if n == 1 {
                engine.make_active(0);
            }
            Action::Normal
        }),
    ])
    .await;
    let result = loadgen::run(Config {
        mode: Mode::Open { rate_ops_s: 200 },
        connections: 1,
        pipeline: 1,
        duration: Duration::from_millis(500),
        mix: Mix {
            set: 1,
            get: 1,
            session: 0,
        },
        ..config(vec![pair[0].addr()])
    })
    .await
    .unwrap();
    assert!(result.warnings.is_empty(), "{:?}", result.warnings);
    assert_eq!(result.summary.lost_updates, 0, "{:?}", result.lost_examples);
    assert_eq!(
        pair[1].requests.load(Ordering::SeqCst),
        1,
        "engine 1 got (and refused) only the re-sent request"
    );
    let switchovers = &result.summary.switchovers;
    assert_eq!(switchovers.len(), 1, "{switchovers:?}");
    assert_eq!(switchovers[0].redirected, 1, "{switchovers:?}");
    assert_eq!(
        switchovers[0].retried, 1,
        "one request, re-sent twice: {switchovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_active_is_replaced_by_the_other_target() {
    let pair = start_pair(vec![
        Box::new(|engine: &Engine, n, _: &resp::Command| {
            if n == SWITCH_AT_REQUEST {
                engine.make_active(1);
                Action::GoDown
            } else {
                Action::Normal
            }
        }),
        normal(),
    ])
    .await;
    let result = loadgen::run(config(vec![pair[0].addr(), pair[1].addr()]))
        .await
        .unwrap();
    check_nothing_lost(&result, &pair[1]);
    let switchovers = &result.summary.switchovers;
    assert_eq!(switchovers.len(), 1, "{switchovers:?}");
    assert_eq!(switchovers[0].kind, "failover");
    assert_eq!(
        switchovers[0].redirected, 3,
        "each connection lost its engine and found the other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switchovers_come_from_the_timeline_when_there_is_one() {
    let admin = start_admin().await;
    let events = admin.events.clone();
    let pair = start_pair(vec![
        Box::new(move |engine: &Engine, n, _: &resp::Command| {
            if n == SWITCH_AT_REQUEST {
                let now = now_ms();
                let _ = events.send(Event {
                    switchover: Some(SwitchoverKind::Planned),
                    ..Event::new(now, EventKind::SwitchoverBegin)
                });
                engine.make_active(1);
                let _ = events.send(Event {
                    switchover: Some(SwitchoverKind::Planned),
                    stepup_ms: Some(1.5),
                    ..Event::new(now, EventKind::SwitchoverEnd)
                });
            }
            Action::Normal
        }),
        normal(),
    ])
    .await;
    let result = loadgen::run(Config {
        admin: Some(admin.addr.clone()),
        admin_secret: Some(admin.secret.clone()),
        ..config(vec![pair[0].addr(), pair[1].addr()])
    })
    .await
    .unwrap();
    check_nothing_lost(&result, &pair[1]);
    let switchovers = &result.summary.switchovers;
    assert_eq!(switchovers.len(), 1, "{switchovers:?}");
    assert_eq!(switchovers[0].kind, "planned");
    assert_eq!(switchovers[0].stepup_ms, 1.5);
    assert!(switchovers[0].client_gap_ms > 0.0);
    assert_eq!(result.timeline.as_ref().unwrap().events.len(), 2);
}

/// A request numbered this is held for `PAUSE` (slow requests before the switchover).
const PAUSE_AT_REQUEST: u64 = 150;
const PAUSE: Duration = Duration::from_millis(30);
const SLOW: Duration = Duration::from_millis(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn detail_has_the_switchover_at_millisecond_resolution_and_the_slow_requests() {
    let admin = start_admin().await;
    let events = admin.events.clone();
    let pair = start_pair(vec![
        Box::new(move |engine: &Engine, n, _: &resp::Command| {
            if n == PAUSE_AT_REQUEST {
                return Action::PauseThenNormal(PAUSE);
            }
            if n == SWITCH_AT_REQUEST {
                let now = now_ms();
                let _ = events.send(Event {
                    switchover: Some(SwitchoverKind::Planned),
                    ..Event::new(now, EventKind::SwitchoverBegin)
                });
                engine.make_active(1);
                let _ = events.send(Event {
                    switchover: Some(SwitchoverKind::Planned),
                    stepup_ms: Some(1.5),
                    ..Event::new(now + 2, EventKind::SwitchoverEnd)
                });
            }
            Action::Normal
        }),
        normal(),
    ])
    .await;
    let dir = temp_dir("following-detail");
    let result = loadgen::run(Config {
        admin: Some(admin.addr.clone()),
        admin_secret: Some(admin.secret.clone()),
        out: Some(dir.clone()),
        slow_threshold: SLOW,
        ..config(vec![pair[0].addr(), pair[1].addr()])
    })
    .await
    .unwrap();
    check_nothing_lost(&result, &pair[1]);
    let s = &result.summary;
    assert_eq!(s.switchovers.len(), 1, "{:?}", s.switchovers);
    let switchover = &s.switchovers[0];
    // Each of the three connections was refused, found engine 1, and sent again what was
    // refused.
    assert_eq!(switchover.redirected, 3, "{switchover:?}");
    assert!(switchover.retried >= 3, "{switchover:?}");

    let detail = RunDir::new(&dir).read_detail_if_present().unwrap().unwrap();
    assert_eq!(detail, result.detail);
    assert_eq!(detail.zooms.len(), 1);
    let zoom = &detail.zooms[0];
    assert_eq!(zoom.kind, "planned");
    assert_eq!(zoom.at_ms, switchover.at_ms);
    assert_eq!(
        zoom.end_ms,
        switchover.at_ms + 2,
        "the switchover_end event's time"
    );
    assert_eq!(zoom.bucket_ms, 1);
    assert_eq!(zoom.from_ms, (zoom.at_ms - 500).max(s.started_ms));
    let to_ms = (zoom.end_ms + 500).min(s.ended_ms);
    assert_eq!(zoom.buckets.len() as u64, to_ms - zoom.from_ms);
    let ops: u64 = zoom.buckets.iter().map(|b| u64::from(b.ops)).sum();
    let replied: u64 = zoom.buckets.iter().map(|b| u64::from(b.replied)).sum();
    assert!(ops > 0 && replied > 0, "{ops} intended, {replied} replied");
    let all_ops: u64 = s.phases.iter().map(|p| p.ops).sum();
    assert!(ops <= all_ops && replied <= all_ops);
    let h = histogram(&result, "steady");
    let zoom_max = zoom.buckets.iter().map(|b| b.max_us).max().unwrap();
    assert!(zoom_max <= h.max(), "{zoom_max} > {}", h.max());

    // The slow requests: every one at least the threshold, in intended order, at most 100
    // a second; listed and omitted together as many as the histogram has beyond the
    // threshold (within its resolution; there are no error replies).
    let threshold_us = SLOW.as_micros() as u64;
    assert_eq!(detail.slow_threshold_us, threshold_us);
    assert_eq!(detail.slow_per_slice_max, 100);
    assert!(!detail.slow.is_empty(), "the pause made requests slow");
    assert!(detail
        .slow
        .iter()
        .all(|r| r.latency_us >= threshold_us && !r.error));
    assert!(detail.slow.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    assert!(detail
        .slow
        .iter()
        .all(|r| r.t_ms >= s.started_ms && r.t_ms <= s.ended_ms));
    let slow = detail.slow.len() as u64 + detail.slow_omitted;
    let surely_slow = h.count_between(threshold_us + threshold_us / 50, h.max());
    let maybe_slow = h.count_between(threshold_us - threshold_us / 50, h.max());
    assert!(
        (surely_slow..=maybe_slow).contains(&slow),
        "{slow} slow, the histogram has {surely_slow}..={maybe_slow}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
