//! The lost-update check against servers that acknowledge writes they do not keep, and
//! against a correct one.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{normal, start_one, Action};
use loadgen::{Config, Mix, Mode};

fn config(target: String, mix: Mix) -> Config {
    Config {
        targets: vec![target],
        mode: Mode::Closed { connections: 3 },
        pipeline: 8,
        duration: Duration::from_millis(400),
        mix,
        keys: 200,
        value_bytes: 16,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_correct_server_loses_nothing() {
    let server = start_one(normal()).await;
    let result = loadgen::run(config(server.addr(), Mix::default()))
        .await
        .unwrap();
    let s = &result.summary;
    assert_eq!(s.lost_updates, 0, "{:?}", result.lost_examples);
    assert!(s.acknowledged_updates > 0);
    assert!(s.verified_updates > 0);
    assert!(s.verified_updates <= s.acknowledged_updates);
    assert_eq!(s.phases.len(), 1);
    assert_eq!(s.phases[0].name, "steady");
    assert_eq!(s.phases[0].errors, 0);
    assert!(s.switchovers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_write_the_server_did_not_keep_is_lost() {
    // From the 50th SET on, the server acknowledges the writes to that key and drops them.
    let sets = Arc::new(AtomicU64::new(0));
    let dropped_key = Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let server = start_one(Box::new(move |_, _, cmd| {
        if !cmd.name_upper_eq(b"SET") {
            return Action::Normal;
        }
        let mut dropped = dropped_key.lock().unwrap();
        if sets.fetch_add(1, Ordering::SeqCst) + 1 == 50 {
            *dropped = Some(cmd.args[1].to_vec());
        }
        if dropped.as_deref() == Some(&cmd.args[1][..]) {
            Action::AckWithoutApplying
        } else {
            Action::Normal
        }
    }))
    .await;
    let result = loadgen::run(config(
        server.addr(),
        Mix {
            set: 1,
            get: 1,
            session: 0,
        },
    ))
    .await
    .unwrap();
    let s = &result.summary;
    assert_eq!(s.lost_updates, 1, "{:?}", result.lost_examples);
    assert!(
        s.verified_updates + s.lost_updates <= 200,
        "at most one check per key"
    );
    let example = &result.lost_examples[0];
    assert!(
        example.starts_with("key:") && example.contains("acknowledged write #"),
        "{example}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acknowledged_session_end_the_server_did_not_keep_is_lost() {
    let ends = Arc::new(AtomicU64::new(0));
    let server = start_one(Box::new(move |_, _, cmd| {
        if cmd.name_upper_eq(b"SESSION.END") && ends.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
            Action::AckWithoutApplying
        } else {
            Action::Normal
        }
    }))
    .await;
    let result = loadgen::run(config(
        server.addr(),
        Mix {
            set: 0,
            get: 0,
            session: 1,
        },
    ))
    .await
    .unwrap();
    let s = &result.summary;
    assert_eq!(s.lost_updates, 1, "{:?}", result.lost_examples);
    assert!(
        result.lost_examples[0].contains("acknowledged end"),
        "{:?}",
        result.lost_examples
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_write_is_not_hidden_by_an_earlier_run() {
    // The first run leaves many writes on few keys; the second loses every write to the
    // key of its first SET, so that key still holds the first run's value, which must not
    // pass for the second run's acknowledged writes.
    let second_run = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sets = Arc::new(AtomicU64::new(0));
    let dropped_key = Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let server = start_one({
        let second_run = second_run.clone();
        Box::new(move |_, _, cmd| {
            if !cmd.name_upper_eq(b"SET") || !second_run.load(Ordering::SeqCst) {
                return Action::Normal;
            }
            let mut dropped = dropped_key.lock().unwrap();
            if sets.fetch_add(1, Ordering::SeqCst) == 0 {
                *dropped = Some(cmd.args[1].to_vec());
            }
            if dropped.as_deref() == Some(&cmd.args[1][..]) {
                Action::AckWithoutApplying
            } else {
                Action::Normal
            }
        })
    })
    .await;
    let set_only = Mix {
        set: 1,
        get: 0,
        session: 0,
    };
    let few_keys = |target: String| Config {
        mode: Mode::Closed { connections: 1 },
        keys: 4,
        ..config(target, set_only)
    };
    // Numbered from 1 in each run, the first run's (longer) values would all be newer.
    let first = loadgen::run(Config {
        duration: Duration::from_millis(800),
        ..few_keys(server.addr())
    })
    .await
    .unwrap();
    assert_eq!(first.summary.lost_updates, 0);
    assert!(first.summary.acknowledged_updates > 100);
    second_run.store(true, Ordering::SeqCst);
    let second = loadgen::run(Config {
        duration: Duration::from_millis(100),
        ..few_keys(server.addr())
    })
    .await
    .unwrap();
    assert_eq!(second.summary.lost_updates, 1, "{:?}", second.lost_examples);
}

/// `tandem demo` may call `run` on whatever runtime it has, a current-thread one included.
#[tokio::test(flavor = "current_thread")]
async fn a_current_thread_runtime_is_enough() {
    let server = start_one(normal()).await;
    let result = loadgen::run(Config {
        mode: Mode::Open { rate_ops_s: 1000 },
        duration: Duration::from_millis(300),
        ..config(server.addr(), Mix::default())
    })
    .await
    .unwrap();
    assert_eq!(result.summary.lost_updates, 0);
    assert!(result.summary.acknowledged_updates > 100);
}
