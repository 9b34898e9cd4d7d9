//! Phase attribution against a fake supervisor: the engine pauses at known requests while
//! the admin endpoint announces a phase boundary that falls inside the pause. A request
//! belongs to the phase it was meant to be sent in (closed loop: sent), so the request the
//! engine paused on belongs to the phase before the boundary (with the pause in its
//! latency) and every request after it to the next, whatever the machine's speed.

mod common;

use std::time::Duration;

use common::{histogram, now_ms, start_admin, start_one, temp_dir, Action};
use loadgen::{Config, Mix, Mode};
use reports::run::RunDir;
use reports::timeline::{phase, Event, EventKind};

fn phase_event(t_ms: u64, kind: EventKind, name: &str) -> Event {
    Event {
        phase: Some(name.into()),
        ..Event::new(t_ms, kind)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_land_in_the_phase_they_were_intended_in() {
    let admin = start_admin().await;
    let events = admin.events.clone();
    // Past events are replayed first: the baseline began before the run.
    events
        .send(phase_event(
            now_ms() - 1_000,
            EventKind::PhaseStart,
            phase::BASELINE,
        ))
        .unwrap();
    // Requests 1..=100 are answered before the server sees request 101 (one request in
    // flight); it then announces a boundary 50 ms ahead and answers request 101 100 ms
    // later. Likewise at 201. At 301 the upgrade ends.
    let engine = start_one(Box::new(move |_, n, _| {
        let boundary_ms = now_ms() + 50;
        let pause = Action::PauseThenNormal(Duration::from_millis(100));
        match n {
            101 => {
                let _ = events.send(phase_event(
                    boundary_ms,
                    EventKind::PhaseEnd,
                    phase::BASELINE,
                ));
                let _ = events.send(phase_event(
                    boundary_ms,
                    EventKind::PhaseStart,
                    phase::B_OUT_OF_SERVICE,
                ));
                pause
            }
            201 => {
                let _ = events.send(phase_event(
                    boundary_ms,
                    EventKind::PhaseEnd,
                    phase::B_OUT_OF_SERVICE,
                ));
                let _ = events.send(phase_event(
                    boundary_ms,
                    EventKind::PhaseStart,
                    phase::EVALUATION,
                ));
                pause
            }
            301 => {
                let _ = events.send(Event {
                    outcome: Some("rolled_back".into()),
                    ..Event::new(now_ms(), EventKind::UpgradeEnd)
                });
                Action::Normal
            }
            _ => Action::Normal,
        }
    }))
    .await;
    let dir = temp_dir("phases");
    let result = loadgen::run(Config {
        targets: vec![engine.addr()],
        admin: Some(admin.addr.clone()),
        admin_secret: Some(admin.secret.clone()),
        mode: Mode::Closed { connections: 1 },
        pipeline: 1,
        duration: Duration::from_secs(60),
        until_upgrade_end: true,
        tail: Duration::ZERO,
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
    let names: Vec<&str> = s.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [phase::BASELINE, phase::B_OUT_OF_SERVICE, phase::EVALUATION],
        "no sample outside the phases, so no steady phase"
    );
    // Requests 1..=101 were sent before the first boundary (101 waited out the pause),
    // 102..=201 before the second.
    assert_eq!(s.phases[0].ops, 101);
    assert_eq!(s.phases[1].ops, 100);
    assert!(s.phases[2].ops >= 100, "{} in evaluation", s.phases[2].ops);
    assert_eq!(s.outcome, "rolled_back", "the upgrade_end event's outcome");
    assert!(s.duration_shorter_than(Duration::from_secs(60)));
    assert_eq!(histogram(&result, phase::BASELINE).len(), 101);
    // The last request of each phase before a boundary waited out the pause: the phase it
    // was sent in is charged with it.
    assert!(histogram(&result, phase::BASELINE).max() >= 100_000);
    assert!(histogram(&result, phase::B_OUT_OF_SERVICE).max() >= 100_000);
    assert_eq!(s.phases[0].end_ms, s.phases[1].start_ms);
    assert_eq!(s.lost_updates, 0);

    // The run directory holds what was received and measured.
    let run = RunDir::new(&dir);
    // (Not compared whole: JSON does not round-trip every f64 to the last bit.)
    let written = run.read_summary().unwrap();
    let ops = |s: &reports::summary::Summary| -> Vec<(String, u64)> {
        s.phases.iter().map(|p| (p.name.clone(), p.ops)).collect()
    };
    assert_eq!(ops(&written), ops(s));
    assert_eq!(written.outcome, s.outcome);
    assert_eq!(
        (
            written.acknowledged_updates,
            written.verified_updates,
            written.lost_updates
        ),
        (s.acknowledged_updates, s.verified_updates, s.lost_updates)
    );
    let timeline = run.read_timeline().unwrap();
    assert_eq!(timeline.events.len(), 6);
    let slices = run.read_slices().unwrap();
    assert_eq!(
        slices.iter().map(|s| s.ops).sum::<u64>(),
        s.phases.iter().map(|p| p.ops).sum::<u64>()
    );
    let hlog = std::fs::read_to_string(run.histograms_path()).unwrap();
    for name in names {
        assert!(
            hlog.contains(&format!("Tag={name},")),
            "no interval tagged {name}"
        );
    }
    assert!(hlog.contains("#[BaseTime: "));
    std::fs::remove_dir_all(&dir).unwrap();
}

trait RunLength {
    fn duration_shorter_than(&self, limit: Duration) -> bool;
}

impl RunLength for reports::summary::Summary {
    fn duration_shorter_than(&self, limit: Duration) -> bool {
        self.ended_ms - self.started_ms < limit.as_millis() as u64
    }
}
