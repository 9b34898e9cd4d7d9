use std::collections::{BTreeMap, BTreeSet};

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

// ---- The model: supervisors, a network, etcd, and a campaign process that crashes. ----

/// One pair's supervisor, as far as the campaign sees it.
#[derive(Debug)]
struct Sup {
    record: PairRecord,
    tags_run: BTreeSet<String>,
    /// The upgrade it runs, and the campaign process generation whose call waits on it.
    running: Option<(String, Option<u32>)>,
    /// Upgrades it started.
    starts: u32,
    faulty: bool,
}

struct World {
    to: String,
    sups: BTreeMap<String, Sup>,
    /// `UPGRADE` requests on their way: (pair, tag, generation of the asking process).
    net: Vec<(String, String, u32)>,
    /// Answers on their way back: (generation, event).
    replies: Vec<(u32, Event)>,
    etcd: CampaignRecord,
    etcd_up: bool,
    process: Option<Campaign>,
    generation: u32,
    now: u64,
    /// Invariant broken, if any.
    broken: Option<String>,
}

impl World {
    fn new(n: usize, spec: &WaveSpec, parallel: usize, cont: bool, faulty: &[bool]) -> World {
        let names = names(n);
        let sups = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.clone(),
                    Sup {
                        record: PairRecord {
                            name: name.clone(),
                            version: Some("1.0".into()),
                            ..Default::default()
                        },
                        tags_run: BTreeSet::new(),
                        running: None,
                        starts: 0,
                        faulty: faulty.get(i).copied().unwrap_or(false),
                    },
                )
            })
            .collect();
        let record = plan(&names, spec, settings(parallel, cont));
        World {
            to: "2.0".into(),
            sups,
            net: Vec::new(),
            replies: Vec::new(),
            etcd: record.clone(),
            etcd_up: true,
            process: Some(Campaign::resume(record)),
            generation: 0,
            now: 1000,
            broken: None,
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok && self.broken.is_none() {
            self.broken = Some(what());
        }
    }

    /// One turn of the campaign process's driver.
    fn step(&mut self) {
        self.now += 1;
        let now = self.now;
        if self.process.is_none() {
            if !self.etcd_up {
                return;
            }
            let mut c = Campaign::resume(self.etcd.clone());
            c.took_over(now);
            self.process = Some(c);
        }
        let mut c = self.process.take().expect("running");
        let next = loop {
            let next = c.next(now);
            if !next.persist {
                break Some(next);
            }
            if !self.etcd_up {
                break None; // paused
            }
            self.etcd = c.record().clone();
            c.persisted();
        };
        if let Some(next) = next {
            for pair in next.upgrade {
                let wave = self.etcd.pairs[&pair].wave;
                let earlier_final = self.etcd.waves[..wave]
                    .iter()
                    .flatten()
                    .all(|p| self.etcd.pairs[p].outcome.is_final());
                let durable = self.etcd.pairs[&pair].outcome == Outcome::Running;
                self.check(earlier_final && durable, || {
                    format!("{pair} asked: earlier waves final {earlier_final}, Running durable {durable}")
                });
                let tag = tag(&self.etcd.id, &pair);
                self.net.push((pair, tag, self.generation));
            }
            if self.etcd_up {
                for pair in next.look.into_iter().chain(next.watch) {
                    let record = Some(self.sups[&pair].record.clone());
                    c.observe(Event::Found { pair, record }, now);
                }
            }
        }
        self.process = Some(c);
    }

    fn deliver_request(&mut self, i: usize) {
        if self.net.is_empty() {
            return;
        }
        let (pair, tag, generation) = self.net.remove(i % self.net.len());
        let etcd_up = self.etcd_up;
        let to = self.to.clone();
        let sup = self.sups.get_mut(&pair).expect("pair");
        let refusal = if !etcd_up {
            Some("etcd unreachable: cannot record the tag")
        } else if sup.running.is_some() {
            Some("busy")
        } else if sup.tags_run.contains(&tag) {
            Some("tag already run")
        } else if sup.record.version.as_deref() == Some(to.as_str()) {
            Some("already on the version")
        } else {
            None
        };
        match refusal {
            Some(why) => self.replies.push((
                generation,
                Event::Refused {
                    pair,
                    message: why.into(),
                },
            )),
            None => {
                sup.tags_run.insert(tag.clone());
                sup.starts += 1;
                sup.record.upgrade = Some(UpgradeRecord {
                    to,
                    tag: Some(tag.clone()),
                    started_ms: self.now,
                    ..Default::default()
                });
                sup.running = Some((tag, Some(generation)));
            }
        }
    }

    fn lose_request(&mut self, i: usize) {
        if self.net.is_empty() {
            return;
        }
        let (pair, _, generation) = self.net.remove(i % self.net.len());
        self.replies.push((
            generation,
            Event::NoAnswer {
                pair,
                message: "connection refused".into(),
            },
        ));
    }

    fn running(&self) -> Vec<String> {
        self.sups
            .iter()
            .filter(|(_, s)| s.running.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The upgrade of one running pair ends (the supervisor records it in etcd, so not
    /// while etcd is down).
    fn finish_upgrade(&mut self, i: usize) {
        let running = self.running();
        if running.is_empty() || !self.etcd_up {
            return;
        }
        let pair = running[i % running.len()].clone();
        let to = self.to.clone();
        let now = self.now;
        let sup = self.sups.get_mut(&pair).expect("pair");
        let (_, caller) = sup.running.take().expect("running");
        let outcome = if sup.faulty {
            "rolled_back"
        } else {
            "completed"
        };
        if !sup.faulty {
            sup.record.version = Some(to);
        }
        let u = sup.record.upgrade.as_mut().expect("recorded");
        u.outcome = Some(outcome.into());
        u.message = Some(format!("{pair} {outcome}"));
        u.ended_ms = Some(now);
        if let Some(generation) = caller {
            self.replies.push((
                generation,
                Event::Ended {
                    pair: pair.clone(),
                    outcome: outcome_of(outcome),
                    message: Some(format!("{pair} {outcome}")),
                },
            ));
        }
    }

    /// The call waiting on a running upgrade loses its connection (the upgrade goes on).
    fn break_call(&mut self, i: usize) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        let pair = running[i % running.len()].clone();
        let sup = self.sups.get_mut(&pair).expect("pair");
        if let Some((_, caller)) = sup.running.as_mut() {
            if let Some(generation) = caller.take() {
                self.replies.push((
                    generation,
                    Event::NoAnswer {
                        pair,
                        message: "connection reset".into(),
                    },
                ));
            }
        }
    }

    fn deliver_reply(&mut self, i: usize) {
        if self.replies.is_empty() {
            return;
        }
        let (generation, event) = self.replies.remove(i % self.replies.len());
        if generation == self.generation {
            if let Some(c) = self.process.as_mut() {
                c.observe(event, self.now);
            }
        }
    }

    /// The campaign process dies. What it sent is read by the supervisors or lost before a
    /// successor takes over (a successor first waits for the dead one's lease to expire);
    /// the answers for it go nowhere.
    fn crash(&mut self, deliver: bool) {
        self.process = None;
        let dead = self.generation;
        self.generation += 1;
        let mut i = 0;
        while i < self.net.len() {
            if self.net[i].2 == dead {
                if deliver {
                    self.deliver_request(i);
                } else {
                    self.net.remove(i);
                }
            } else {
                i += 1;
            }
        }
        for sup in self.sups.values_mut() {
            if let Some((_, caller)) = sup.running.as_mut() {
                if *caller == Some(dead) {
                    *caller = None;
                }
            }
        }
        self.replies.retain(|(g, _)| *g != dead);
    }

    fn invariants_always(&mut self) {
        let running = self.running().len();
        let parallel = self.etcd.parallel;
        self.check(running <= parallel, || {
            format!("{running} upgrades at once, parallel {parallel}")
        });
        let twice: Vec<String> = self
            .sups
            .iter()
            .filter(|(_, s)| s.starts > 1)
            .map(|(n, _)| n.clone())
            .collect();
        self.check(twice.is_empty(), || format!("upgraded twice: {twice:?}"));
    }

    /// Everything delivered, etcd up, no more crashes: the campaign must end.
    fn drain(&mut self) {
        self.etcd_up = true;
        for _ in 0..10_000 {
            self.step();
            while !self.net.is_empty() {
                self.deliver_request(0);
            }
            while !self.running().is_empty() {
                self.finish_upgrade(0);
            }
            while !self.replies.is_empty() {
                self.deliver_reply(0);
            }
            self.invariants_always();
            if self.etcd.state != CampaignState::Running
                && !self.process.as_ref().expect("running").dirty()
            {
                return;
            }
        }
        let record = format!("{:?}", self.etcd);
        self.check(false, || format!("the campaign did not end: {record}"));
    }

    fn invariants_at_the_end(&mut self) {
        let record = self.etcd.clone();
        for (name, p) in &record.pairs {
            let sup = &self.sups[name];
            let upgraded = sup.record.version.as_deref() == Some("2.0");
            let ok = match p.outcome {
                Outcome::Upgraded => upgraded && sup.starts == 1,
                Outcome::RolledBack => sup.faulty && sup.starts == 1,
                Outcome::Failed => sup.starts == 0,
                Outcome::Pending => sup.starts == 0 && record.state != CampaignState::Completed,
                Outcome::Running => false,
            };
            let (starts, faulty) = (sup.starts, sup.faulty);
            self.check(ok, || {
                format!("{name}: {p:?} but the pair: upgraded {upgraded}, starts {starts}, faulty {faulty}")
            });
        }
        match &record.state {
            CampaignState::Completed => {
                let skipped = record.pairs.values().any(|p| !p.outcome.is_final());
                self.check(!skipped, || "completed with a pair not final".into());
                let all_upgraded = record.continue_on_rollback
                    || record
                        .pairs
                        .values()
                        .all(|p| p.outcome == Outcome::Upgraded);
                self.check(all_upgraded, || "completed past a rollback".into());
            }
            CampaignState::Stopped(_) => {
                let why = stop_reason(&record).is_some();
                self.check(why, || "stopped without a rollback or failure".into());
            }
            CampaignState::Running => self.check(false, || "still running".into()),
        }
    }
}

fn wave_spec() -> impl Strategy<Value = WaveSpec> {
    prop_oneof![
        Just(WaveSpec::Doubling),
        proptest::collection::vec(1usize..4, 1..4).prop_map(WaveSpec::Sizes),
        (10.0f64..60.0).prop_map(WaveSpec::Percent),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Under arbitrary interleavings of asks, answers, lost calls, upgrades ending, etcd
    /// going away and the campaign process crashing and resuming: no pair is upgraded twice,
    /// none skipped, no wave starts before the one before ended, at most `parallel` at once,
    /// and the record's outcomes are what happened to the pairs.
    #[test]
    fn no_pair_is_upgraded_twice_or_skipped(
        n in 1usize..9,
        spec in wave_spec(),
        parallel in 1usize..4,
        cont in any::<bool>(),
        faulty in proptest::collection::vec(prop::bool::weighted(0.15), 9),
        ops in proptest::collection::vec((0u8..12, any::<u8>()), 0..300),
    ) {
        let mut w = World::new(n, &spec, parallel, cont, &faulty);
        for (op, i) in ops {
            let i = i as usize;
            match op {
                0..=3 => w.step(),
                4 => w.deliver_request(i),
                5 => w.lose_request(i),
                6 => w.finish_upgrade(i),
                7 | 8 => w.deliver_reply(i),
                9 => w.break_call(i),
                10 => w.crash(i % 2 == 0),
                _ => w.etcd_up = !w.etcd_up,
            }
            w.invariants_always();
        }
        w.drain();
        w.invariants_at_the_end();
        prop_assert!(w.broken.is_none(), "{}", w.broken.unwrap());
    }
}
