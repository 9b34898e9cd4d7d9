use proptest::prelude::*;

use super::*;
use crate::keys::UpgradeRecord;

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("p{i:02}")).collect()
}

fn settings(parallel: usize, continue_on_rollback: bool) -> Settings {
    Settings {
        to: "2.0".into(),
        pairs_glob: "*".into(),
        parallel,
        continue_on_rollback,
        upgrade_args: vec![],
        now_ms: 1000,
    }
}

#[test]
fn wave_specs_parse_and_cut_the_fleet() {
    assert_eq!(WaveSpec::parse("").unwrap(), WaveSpec::Doubling);
    assert_eq!(WaveSpec::Doubling.sizes(10), [1, 2, 4, 3]);
    let s = WaveSpec::parse("1, 2,4").unwrap();
    assert_eq!(s, WaveSpec::Sizes(vec![1, 2, 4]));
    assert_eq!(s.sizes(15), [1, 2, 4, 4, 4]);
    assert_eq!(s.sizes(2), [1, 1]);
    let p = WaveSpec::parse("10%").unwrap();
    assert_eq!(p.sizes(1000)[..3], [1, 100, 100]);
    assert_eq!(p.sizes(1000).len(), 11);
    assert_eq!(p.sizes(4), [1, 1, 1, 1], "at least one pair a wave");
    assert_eq!(WaveSpec::Sizes(vec![3]).sizes(0), Vec::<usize>::new());
    for bad in ["0", "1,x", "0%", "120%", "-1"] {
        assert!(WaveSpec::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_plan_puts_the_sorted_pairs_in_waves_the_first_a_canary() {
    let mut n = names(7);
    n.reverse();
    let r = plan(&n, &WaveSpec::Doubling, settings(2, false));
    assert_eq!(r.id, "to-2.0-1000");
    assert_eq!(
        r.waves,
        vec![
            vec!["p01"],
            vec!["p02", "p03"],
            vec!["p04", "p05", "p06", "p07"]
        ]
    );
    assert_eq!(r.pairs["p05"].wave, 2);
    assert!(r.pairs.values().all(|p| p.outcome == Outcome::Pending));
    assert_eq!(tag(&r.id, "p05"), "to-2.0-1000/p05");
}

/// Runs `next` until it settles, persisting as asked; the pairs to ask.
fn step(c: &mut Campaign, now: u64) -> Next {
    loop {
        let n = c.next(now);
        if n.persist {
            c.persisted();
            continue;
        }
        return n;
    }
}

fn ended(c: &mut Campaign, pair: &str, outcome: Outcome) {
    c.observe(
        Event::Ended {
            pair: pair.into(),
            outcome,
            message: Some(format!("{pair} {}", outcome.as_str())),
        },
        2000,
    );
}

#[test]
fn a_campaign_goes_wave_by_wave_at_most_parallel_at_once() {
    let mut c = Campaign::resume(plan(&names(4), &WaveSpec::Doubling, settings(1, false)));
    // Marking Running comes first, alone: nothing is asked before it is durable.
    let n = c.next(1);
    assert!(n.persist && n.upgrade.is_empty());
    assert_eq!(c.record().pairs["p01"].outcome, Outcome::Running);
    c.persisted();
    let n = c.next(1);
    assert_eq!(n.upgrade, ["p01"]);
    assert!(step(&mut c, 1).upgrade.is_empty(), "asked once");
    ended(&mut c, "p01", Outcome::Upgraded);
    assert_eq!(step(&mut c, 2).upgrade, ["p02"], "parallel 1");
    ended(&mut c, "p02", Outcome::Upgraded);
    assert_eq!(step(&mut c, 3).upgrade, ["p03"]);
    ended(&mut c, "p03", Outcome::Upgraded);
    assert_eq!(step(&mut c, 4).upgrade, ["p04"]);
    assert_eq!(c.record().current_wave(), Some(2));
    ended(&mut c, "p04", Outcome::Upgraded);
    let n = step(&mut c, 5);
    assert!(n.finished);
    assert_eq!(c.record().state, CampaignState::Completed);
}

#[test]
fn a_wave_waits_for_the_one_before_even_with_room() {
    let mut c = Campaign::resume(plan(&names(7), &WaveSpec::Doubling, settings(8, false)));
    assert_eq!(step(&mut c, 1).upgrade, ["p01"]);
    assert!(step(&mut c, 1).upgrade.is_empty());
    ended(&mut c, "p01", Outcome::Upgraded);
    assert_eq!(step(&mut c, 2).upgrade, ["p02", "p03"]);
    ended(&mut c, "p02", Outcome::Upgraded);
    assert!(step(&mut c, 3).upgrade.is_empty(), "p03 still runs");
    ended(&mut c, "p03", Outcome::Upgraded);
    assert_eq!(step(&mut c, 4).upgrade, ["p04", "p05", "p06", "p07"]);
}

#[test]
fn a_rollback_stops_the_campaign_once_the_running_pairs_end() {
    let mut c = Campaign::resume(plan(&names(7), &WaveSpec::Doubling, settings(8, false)));
    step(&mut c, 1);
    ended(&mut c, "p01", Outcome::Upgraded);
    assert_eq!(step(&mut c, 2).upgrade, ["p02", "p03"]);
    ended(&mut c, "p02", Outcome::RolledBack);
    let n = step(&mut c, 3);
    assert!(n.upgrade.is_empty() && !n.finished, "p03 still runs");
    assert_eq!(c.record().state, CampaignState::Running);
    ended(&mut c, "p03", Outcome::Upgraded);
    let n = step(&mut c, 4);
    assert!(n.finished);
    let CampaignState::Stopped(why) = &c.record().state else {
        panic!("{:?}", c.record().state)
    };
    assert_eq!(why, "p02 rolled back: p02 rolled_back");
    assert_eq!(c.record().count(Outcome::Pending), 4);
}

#[test]
fn continue_on_rollback_goes_on_to_the_end() {
    let mut c = Campaign::resume(plan(&names(3), &WaveSpec::Doubling, settings(8, true)));
    step(&mut c, 1);
    ended(&mut c, "p01", Outcome::RolledBack);
    assert_eq!(step(&mut c, 2).upgrade, ["p02", "p03"]);
    ended(&mut c, "p02", Outcome::Failed);
    ended(&mut c, "p03", Outcome::Upgraded);
    assert!(step(&mut c, 3).finished);
    assert_eq!(c.record().state, CampaignState::Completed);
    assert_eq!(c.record().count(Outcome::Upgraded), 1);
}

fn pair_record(version: &str, upgrade: Option<(&str, Option<&str>)>) -> PairRecord {
    PairRecord {
        name: "p".into(),
        version: Some(version.into()),
        upgrade: upgrade.map(|(tag, outcome)| UpgradeRecord {
            to: "2.0".into(),
            tag: Some(tag.into()),
            outcome: outcome.map(str::to_string),
            message: outcome.map(|o| format!("it {o}")),
            started_ms: 10,
            ended_ms: outcome.map(|_| 20),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A campaign whose first wave (p01, p02, p03 with waves 3) is marked Running and durable,
/// resumed by a new process.
fn resumed_with_three_running() -> Campaign {
    let mut c = Campaign::resume(plan(
        &names(4),
        &WaveSpec::Sizes(vec![3]),
        settings(8, true),
    ));
    c.next(1);
    c.persisted();
    let mut c = Campaign::resume(c.record().clone());
    let n = step(&mut c, 2);
    assert!(n.upgrade.is_empty(), "nothing asked before a look");
    assert_eq!(n.look, ["p01", "p02", "p03"]);
    c
}

#[test]
fn a_resumed_campaign_reconciles_each_running_pair_from_its_record() {
    let mut c = resumed_with_three_running();
    let id = c.record().id.clone();
    // p01: our upgrade ended there; p02: ours still runs; p03: never reached it.
    let found = |c: &mut Campaign, pair: &str, r: PairRecord| {
        c.observe(
            Event::Found {
                pair: pair.into(),
                record: Some(r),
            },
            30,
        )
    };
    found(
        &mut c,
        "p01",
        pair_record("1.0", Some((&tag(&id, "p01"), Some("rolled_back")))),
    );
    found(
        &mut c,
        "p02",
        pair_record("1.0", Some((&tag(&id, "p02"), None))),
    );
    found(
        &mut c,
        "p03",
        pair_record("1.0", Some(("to-2.0-1/p03", Some("completed")))),
    );
    let n = step(&mut c, 40);
    assert_eq!(c.record().pairs["p01"].outcome, Outcome::RolledBack);
    assert_eq!(
        c.record().pairs["p01"].message.as_deref(),
        Some("it rolled_back")
    );
    assert_eq!(n.watch, ["p02"]);
    assert_eq!(
        n.upgrade,
        ["p03"],
        "another campaign's tag is not ours: ask"
    );
    found(
        &mut c,
        "p02",
        pair_record("2.0", Some((&tag(&id, "p02"), Some("completed")))),
    );
    // An answer to the ask of p03 that comes with its record showing our tag: taken once.
    c.observe(
        Event::Found {
            pair: "p03".into(),
            record: Some(pair_record("1.0", None)),
        },
        50,
    );
    assert!(
        step(&mut c, 50).upgrade.is_empty(),
        "p03's call is in flight"
    );
    ended(&mut c, "p03", Outcome::Upgraded);
    assert_eq!(step(&mut c, 60).upgrade, ["p04"]);
    assert_eq!(c.record().count(Outcome::Upgraded), 2);
}

#[test]
fn a_pair_already_on_the_target_is_upgraded_without_an_ask() {
    let mut c = resumed_with_three_running();
    for p in ["p01", "p02", "p03"] {
        c.observe(
            Event::Found {
                pair: p.into(),
                record: Some(pair_record("2.0", None)),
            },
            5,
        );
    }
    let n = step(&mut c, 6);
    assert_eq!(n.upgrade, ["p04"]);
    assert_eq!(
        c.record().pairs["p01"].message.as_deref(),
        Some("already on 2.0")
    );
}

#[test]
fn a_refused_ask_is_retried_a_few_times_then_fails() {
    let mut c = Campaign::resume(plan(&names(2), &WaveSpec::Doubling, settings(1, false)));
    assert_eq!(step(&mut c, 1).upgrade, ["p01"]);
    for i in 1..=MAX_ASKS {
        c.observe(
            Event::Refused {
                pair: "p01".into(),
                message: format!("busy {i}"),
            },
            2,
        );
        assert_eq!(step(&mut c, 2).look, ["p01"]);
        c.observe(
            Event::Found {
                pair: "p01".into(),
                record: Some(pair_record("1.0", None)),
            },
            3,
        );
        let n = step(&mut c, 3);
        if i < MAX_ASKS {
            assert_eq!(n.upgrade, ["p01"], "ask {}", i + 1);
        } else {
            assert!(n.finished);
        }
    }
    assert_eq!(c.record().pairs["p01"].outcome, Outcome::Failed);
    assert_eq!(
        c.record().state,
        CampaignState::Stopped("p01 failed: busy 3".into())
    );
}

#[test]
fn a_refusal_because_our_upgrade_runs_already_is_followed() {
    let mut c = Campaign::resume(plan(&names(1), &WaveSpec::Doubling, settings(1, false)));
    step(&mut c, 1);
    let id = c.record().id.clone();
    c.observe(
        Event::NoAnswer {
            pair: "p01".into(),
            message: "connection reset".into(),
        },
        2,
    );
    step(&mut c, 2);
    c.observe(
        Event::Found {
            pair: "p01".into(),
            record: Some(pair_record("1.0", Some((&tag(&id, "p01"), None)))),
        },
        3,
    );
    let n = step(&mut c, 3);
    assert!(n.upgrade.is_empty());
    assert_eq!(n.watch, ["p01"]);
    c.observe(
        Event::Found {
            pair: "p01".into(),
            record: Some(pair_record(
                "2.0",
                Some((&tag(&id, "p01"), Some("completed"))),
            )),
        },
        4,
    );
    assert!(step(&mut c, 4).finished);
    assert_eq!(c.record().state, CampaignState::Completed);
}

// ---- Under faults: the model shared with the fleet simulator (`model.rs`). ----

fn wave_spec() -> impl Strategy<Value = WaveSpec> {
    prop_oneof![
        Just(WaveSpec::Doubling),
        proptest::collection::vec(1usize..4, 1..4).prop_map(WaveSpec::Sizes),
        (10.0f64..60.0).prop_map(WaveSpec::Percent),
    ]
}

/// The `i`-th of `items` (none if there are none).
fn pick<T: Copy>(items: impl IntoIterator<Item = T>, i: usize) -> Option<T> {
    let items: Vec<T> = items.into_iter().collect();
    (!items.is_empty()).then(|| items[i % items.len()])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Under arbitrary interleavings of asks, answers, lost calls, upgrades ending, active
    /// engines dying, etcd going away, the campaign process crashing or stalling and another
    /// taking over: no pair is upgraded twice, none skipped, no wave starts before the one
    /// before ended, at most `parallel` at once, and the record's outcomes are what happened
    /// to the pairs.
    #[test]
    fn no_pair_is_upgraded_twice_or_skipped(
        n in 1usize..9,
        spec in wave_spec(),
        parallel in 1usize..4,
        cont in any::<bool>(),
        faulty in proptest::collection::vec(prop::bool::weighted(0.15), 9),
        ops in proptest::collection::vec((0u8..16, any::<u8>()), 0..300),
    ) {
        use model::{Config, World};
        let mut w = World::new(
            Config {
                names: names(n),
                waves: spec,
                parallel,
                continue_on_rollback: cont,
                faulty,
                owner_ttl_ms: 3000,
                plant: None,
            },
            1000,
        );
        for (op, i) in ops {
            let i = i as usize;
            w.effects.clear();
            let busy = |w: &World| pick(w.sups.iter().enumerate().filter(|(_, s)| s.busy.is_some()).map(|(k, _)| k), i);
            match op {
                0..=3 => {
                    if let Some(id) = pick(w.procs.iter().map(|p| p.id), i) {
                        w.now += 1;
                        w.drive(id, i.is_multiple_of(7));
                    }
                }
                4 => if let Some(&id) = pick(w.requests.keys(), i) { w.deliver_request(id) },
                5 => if let Some(&id) = pick(w.requests.keys(), i) { w.lose_request(id) },
                6 => if let Some(k) = busy(&w) { w.sup_step(k, None) },
                7 | 8 => if let Some(&id) = pick(w.answers.keys(), i) { w.deliver_answer(id) },
                9 => if let Some(k) = busy(&w) { w.break_call(k) },
                10 => if let Some(id) = pick(w.procs.iter().map(|p| p.id), i) { w.crash(id, 0) },
                11 => { let up = !w.etcd.up; w.set_etcd(up, 0) },
                12 => { w.start_process(); },
                13 => { let to = w.now + 100 * i as u64; w.advance(to) },
                14 => w.active_dies(i % n, 100 * (i as u64 % 40)),
                _ => {
                    if let Some(p) = pick(0..w.procs.len(), i) {
                        let (id, stalled) = (w.procs[p].id, w.procs[p].stalled);
                        w.stall(id, !stalled, 0);
                    }
                }
            }
        }
        let ended = w.settle();
        w.check_end();
        prop_assert!(ended || w.broken.is_some(), "did not settle");
        if let Some((name, what)) = &w.broken {
            prop_assert!(false, "{name}: {what}\n{}", w.trace.join("\n"));
        }
    }
}

#[test]
fn a_busy_supervisor_or_a_cut_call_is_asked_again_without_counting() {
    let mut c = Campaign::resume(plan(&names(1), &WaveSpec::Doubling, settings(1, false)));
    assert_eq!(step(&mut c, 1).upgrade, ["p01"]);
    // Far more than MAX_ASKS answers that leave it open: the pair is never counted failed.
    for i in 0..(3 * MAX_ASKS) {
        let event = if i % 2 == 0 {
            Event::Refused {
                pair: "p01".into(),
                message: format!("{BUSY} an upgrade is in progress"),
            }
        } else {
            Event::Cut {
                pair: "p01".into(),
                message: "connection reset".into(),
            }
        };
        c.observe(event, 2);
        assert_eq!(step(&mut c, 2).look, ["p01"]);
        c.observe(
            Event::Found {
                pair: "p01".into(),
                record: Some(pair_record("1.0", None)),
            },
            3,
        );
        assert_eq!(step(&mut c, 3).upgrade, ["p01"], "asked again ({i})");
    }
    assert_eq!(c.record().pairs["p01"].outcome, Outcome::Running);
    // A definitive "not started" answer counts.
    for _ in 0..MAX_ASKS {
        c.observe(
            Event::NoAnswer {
                pair: "p01".into(),
                message: "connection refused".into(),
            },
            4,
        );
        step(&mut c, 4);
        c.observe(
            Event::Found {
                pair: "p01".into(),
                record: Some(pair_record("1.0", None)),
            },
            5,
        );
        step(&mut c, 5);
    }
    assert_eq!(c.record().pairs["p01"].outcome, Outcome::Failed);
}
