//! `--redis`: the same workload in Redis' terms (sessions as hashes), `WAIT 1 0` after
//! each write with `--wait`, and `-READONLY` followed to the other target.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{normal, start_one, start_pair, Action, Engine};
use loadgen::{Config, Mix, Mode};

fn config(targets: Vec<String>) -> Config {
    Config {
        targets,
        redis: true,
        redis_wait: true,
        mode: Mode::Open { rate_ops_s: 1000 },
        connections: 2,
        pipeline: 8,
        duration: Duration::from_millis(400),
        mix: Mix::default(),
        keys: 300,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_acknowledged_by_a_replica_are_verified() {
    let server = start_one(normal()).await;
    let result = loadgen::run(config(vec![server.addr()])).await.unwrap();
    let s = &result.summary;
    assert_eq!(s.target, "redis");
    assert_eq!(s.workload["redis_wait"], true);
    assert_eq!(s.lost_updates, 0, "{:?}", result.lost_examples);
    assert!(s.acknowledged_updates > 0);
    assert!(s.verified_updates > 0);
    assert_eq!(s.phases[0].errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_no_replica_has_is_not_acknowledged() {
    let server = start_one(normal()).await;
    server.wait_replicas.store(0, Ordering::SeqCst);
    let result = loadgen::run(Config {
        mix: Mix {
            set: 1,
            get: 0,
            session: 0,
        },
        ..config(vec![server.addr()])
    })
    .await
    .unwrap();
    let s = &result.summary;
    assert_eq!(s.acknowledged_updates, 0);
    assert_eq!(
        s.phases[0].errors, s.phases[0].ops,
        "every write failed WAIT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_only_replica_sends_the_load_to_the_other_target() {
    // The fake answers NOTACTIVE; a real replica answers READONLY, which the protocol unit
    // tests cover: both are a redirect without (or with) a named address.
    let pair = start_pair(vec![
        Box::new(|engine: &Engine, n, _: &resp::Command| {
            if n == 200 {
                engine.make_active(1);
            }
            Action::Normal
        }),
        normal(),
    ])
    .await;
    let result = loadgen::run(config(vec![pair[0].addr(), pair[1].addr()]))
        .await
        .unwrap();
    assert_eq!(result.summary.lost_updates, 0, "{:?}", result.lost_examples);
    assert!(pair[1].requests.load(Ordering::SeqCst) > 100);
    assert_eq!(result.summary.switchovers.len(), 1);
}
