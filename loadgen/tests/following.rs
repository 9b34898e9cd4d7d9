//! Following the pair: a fake pair whose first engine hands over to the second mid-run,
//! by refusing (`-NOTACTIVE <addr of the second>`) or by dying. The run must go on against
//! the second engine, lose nothing acknowledged, and report the switchover.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{normal, now_ms, start_admin, start_pair, Action, Engine};
use loadgen::{Config, Mix, Mode};
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
