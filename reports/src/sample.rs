//! Made-up but realistic runs for the tests of this crate: a completed rolling upgrade and a
//! rolled-back one at 20,000 ops/s, with a simplex window that is faster than the baseline, a
//! catch-up that costs p99, and a switchover whose client-visible gap shows as a p99 spike.
//! Deterministic (a fixed linear congruential jitter) so that a report diff means a code change.

use crate::run::{Detail, Slice, SlowRequest, Zoom, ZoomBucket, DETAIL_SCHEMA};
use crate::summary::{
    Environment, Latency, PercentilePoint, PhaseSummary, Summary, Switchover, RUN_SCHEMA,
};
use crate::timeline::{phase, Event, EventKind, SwitchoverKind, Timeline};

/// The load outside every phase of the timeline, as the load generator names it.
const STEADY: &str = "steady";

/// 2024-12-24 09:26:40 UTC.
pub const STARTED_MS: u64 = 1_735_032_400_000;

#[derive(Clone, Copy)]
struct Plan {
    name: &'static str,
    duration_ms: u64,
    rate_ops_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors_per_million: u64,
}

struct PlannedSwitchover {
    kind: SwitchoverKind,
    offset_ms: u64,
    stepup_ms: f64,
    client_gap_ms: f64,
}

const fn plan(
    name: &'static str,
    duration_ms: u64,
    rate_ops_s: f64,
    p50_us: f64,
    p99_us: f64,
) -> Plan {
    Plan {
        name,
        duration_ms,
        rate_ops_s,
        p50_us,
        p99_us,
        errors_per_million: 0,
    }
}

struct Jitter(u64);

impl Jitter {
    /// A factor in [1 - spread, 1 + spread].
    fn next(&mut self, spread: f64) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let unit = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        1.0 + spread * (2.0 * unit - 1.0)
    }
}

fn latency(p50_us: f64, p99_us: f64, jitter: &mut Jitter) -> Latency {
    let p50 = (p50_us * jitter.next(0.06)) as u64;
    let p90 = ((p50_us * 1.9).max(p50 as f64 + 1.0) * jitter.next(0.06)) as u64;
    let p99 = ((p99_us * jitter.next(0.12)) as u64).max(p90 + 1);
    let p999 = ((p99 as f64 * 2.1 * jitter.next(0.15)) as u64).max(p99 + 1);
    let max = ((p999 as f64 * 1.7 * jitter.next(0.25)) as u64).max(p999 + 1);
    Latency {
        p50,
        p90,
        p99,
        p999,
        max,
    }
}

/// A switchover inside `[from, to)` leaves clients waiting for its gap: the slowest replies
/// of that interval waited that long.
fn with_gap(mut l: Latency, gap_ms: f64) -> Latency {
    let gap_us = (gap_ms * 1000.0) as u64;
    l.p999 = l.p999.max(gap_us * 7 / 10);
    l.max = l.max.max(gap_us + l.p99);
    l.p99 = l.p99.max(gap_us / 6).min(l.p999);
    l
}

fn build(
    outcome: &str,
    plans: &[Plan],
    switchovers: &[PlannedSwitchover],
) -> (Summary, Vec<Slice>, Timeline) {
    let mut jitter = Jitter(0x7a6d);
    let total_ms: u64 = plans.iter().map(|p| p.duration_ms).sum();
    let mut bounds = Vec::with_capacity(plans.len());
    let mut at = STARTED_MS;
    for p in plans {
        bounds.push((at, at + p.duration_ms));
        at += p.duration_ms;
    }
    let gap_in = |from: u64, to: u64| {
        switchovers
            .iter()
            .filter(move |s| (from..to).contains(&(STARTED_MS + s.offset_ms)))
            .map(|s| s.client_gap_ms)
    };

    let mut slices = Vec::new();
    let mut t = STARTED_MS;
    while t < STARTED_MS + total_ms {
        let i = bounds
            .iter()
            .position(|(s, e)| (*s..*e).contains(&t))
            .unwrap_or(0);
        let p = &plans[i];
        let mut ops_f = p.rate_ops_s * jitter.next(0.015);
        let mut l = latency(p.p50_us, p.p99_us, &mut jitter);
        for gap_ms in gap_in(t, t + 1000) {
            ops_f *= 1.0 - gap_ms / 1000.0;
            l = with_gap(l, gap_ms);
        }
        let ops = ops_f as u64;
        slices.push(Slice {
            t_ms: t,
            phase: p.name.into(),
            ops,
            errors: ops * p.errors_per_million / 1_000_000,
            latency_us: l,
            replied: Some(ops),
        });
        t += 1000;
    }

    let phases: Vec<PhaseSummary> = plans
        .iter()
        .zip(&bounds)
        .map(|(p, &(start_ms, end_ms))| {
            let ops = (p.rate_ops_s * p.duration_ms as f64 / 1000.0) as u64;
            let mut l = latency(p.p50_us, p.p99_us * 1.15, &mut jitter);
            for gap_ms in gap_in(start_ms, end_ms) {
                l = with_gap(l, gap_ms);
            }
            PhaseSummary {
                name: p.name.into(),
                start_ms,
                end_ms,
                ops,
                throughput_ops_s: ops as f64 * 1000.0 / p.duration_ms as f64,
                errors: ops * p.errors_per_million / 1_000_000,
                latency_us: l,
                simplex_ms: if serves_alone(p.name) {
                    end_ms - start_ms
                } else {
                    0
                },
                percentiles: spectrum(&l, ops),
            }
        })
        .collect();
    let simplex_windows: Vec<[u64; 2]> = phases
        .iter()
        .filter(|p| p.simplex_ms > 0)
        .map(|p| [p.start_ms, p.end_ms])
        .collect();

    let mut timeline = Timeline::new();
    let mut push = |e: Event| timeline.events.push(e);
    push(Event {
        message: Some("upgrade 1.0 -> 2.0".into()),
        ..Event::new(STARTED_MS, EventKind::UpgradeStart)
    });
    for (p, &(start_ms, end_ms)) in plans.iter().zip(&bounds) {
        // `steady` is the load generator's name for the load outside every phase of the
        // timeline: no events of its own.
        let timed = p.name != STEADY;
        if timed {
            push(Event {
                phase: Some(p.name.into()),
                ..Event::new(start_ms, EventKind::PhaseStart)
            });
        }
        if serves_alone(p.name) {
            push(Event::new(start_ms, EventKind::SimplexStart));
        }
        for s in switchovers
            .iter()
            .filter(|s| (start_ms..end_ms).contains(&(STARTED_MS + s.offset_ms)))
        {
            let at_ms = STARTED_MS + s.offset_ms;
            push(Event {
                switchover: Some(s.kind),
                ..Event::new(at_ms, EventKind::SwitchoverBegin)
            });
            let end = Event::new(at_ms + s.stepup_ms.ceil() as u64, EventKind::SwitchoverEnd);
            push(Event {
                switchover: Some(s.kind),
                stepup_ms: Some(s.stepup_ms),
                ..end
            });
        }
        if p.name == phase::FEATURES_ENABLED {
            push(Event::new(start_ms + 20, EventKind::FeaturesEnabled));
        }
        if serves_alone(p.name) {
            push(Event::new(end_ms, EventKind::SimplexEnd));
        }
        if timed {
            push(Event {
                phase: Some(p.name.into()),
                ..Event::new(end_ms, EventKind::PhaseEnd)
            });
        }
    }
    push(Event {
        outcome: Some(outcome.into()),
        ..Event::new(STARTED_MS + total_ms, EventKind::UpgradeEnd)
    });

    let acknowledged_updates = phases.iter().map(|p| p.ops - p.errors).sum::<u64>() * 6 / 10;
    let summary = Summary {
        schema: RUN_SCHEMA.into(),
        outcome: outcome.into(),
        target: "tandem".into(),
        started_ms: STARTED_MS,
        ended_ms: STARTED_MS + total_ms,
        workload: serde_json::json!({
            "mode": "open", "rate_ops_s": plans[0].rate_ops_s as u64, "connections": 16, "pipeline": 8,
            "mix": {"set": 20, "get": 20, "session": 60}, "value_bytes": 128, "keys": 100_000,
            "distribution": "zipf:0.99", "state_work_units": 50_000,
        }),
        phases,
        switchovers: switchovers
            .iter()
            .map(|s| Switchover {
                kind: serde_json::to_value(s.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                at_ms: STARTED_MS + s.offset_ms,
                stepup_ms: s.stepup_ms,
                client_gap_ms: s.client_gap_ms,
                retried: (s.client_gap_ms * plans[0].rate_ops_s / 1000.0) as u64,
                redirected: 16,
                pair: None,
            })
            .collect(),
        acknowledged_updates,
        verified_updates: acknowledged_updates,
        lost_updates: 0,
        simplex_ms: simplex_windows.iter().map(|[s, e]| e - s).sum(),
        simplex_windows,
        environment: Some(environment()),
        fleet: None,
    };
    (summary, slices, timeline)
}

/// A fixed machine, so that reports of samples do not change with the machine the tests run on.
pub fn environment() -> Environment {
    Environment {
        tandem_version: "0.1.0".into(),
        git_revision: "b34cbab6471b".into(),
        target_version: "1.0 -> 2.0".into(),
        hostname: "bench-7".into(),
        os: "Linux 6.1.0-28-amd64 x86_64".into(),
        cpu_model: "AMD EPYC 7B13".into(),
        cpus: 8,
        memory_mb: 32_100,
    }
}

/// A phase's spectrum on HdrHistogram's grid (five points per halving of the distance to
/// 100 %), joining its percentiles in log latency, up to the last request of the phase.
fn spectrum(l: &Latency, ops: u64) -> Vec<PercentilePoint> {
    if ops == 0 {
        return Vec::new();
    }
    let top = (ops as f64).log10().max(0.5);
    let anchors = [
        (0.0, (l.p50 as f64 * 0.45).max(1.0)),
        (2f64.log10(), l.p50 as f64),
        (1.0, l.p90 as f64),
        (2.0, l.p99 as f64),
        (3.0, l.p999 as f64),
        (top.max(3.5), l.max as f64),
    ];
    let at = |x: f64| {
        let i = anchors
            .windows(2)
            .position(|w| x <= w[1].0)
            .unwrap_or(anchors.len() - 2);
        let (a, b) = (anchors[i], anchors[i + 1]);
        let f = ((x - a.0) / (b.0 - a.0)).clamp(0.0, 1.0);
        (a.1.ln() + f * (b.1.ln() - a.1.ln())).exp() as u64
    };
    let mut points = Vec::new();
    let mut x = 0.0;
    while x < top {
        // Rounded as a file holds it, so that a run written and read back is equal.
        let p = (1e6 * (1.0 - 10f64.powf(-x))).round() / 1e4;
        points.push(PercentilePoint { p, us: at(x) });
        x += 0.1;
    }
    points.push(PercentilePoint {
        p: 100.0,
        us: l.max,
    });
    points
}

/// `detail.json` for a sample run: the slowest requests of each second (a diagonal of them at
/// each switchover, the requests that waited it out), and each switchover at 1 ms.
pub fn detail(summary: &Summary, slices: &[Slice]) -> Detail {
    let threshold_us = 2_000;
    let per_slice_max = 200;
    let mut jitter = Jitter(0x51ce);
    let mut slow = Vec::new();
    let mut omitted = 0;
    for s in slices {
        if s.latency_us.max < threshold_us {
            continue;
        }
        // Requests beyond the threshold: about (1 - q) of the slice where p_q crosses it.
        let beyond = if s.latency_us.p99 >= threshold_us {
            s.ops / 50
        } else if s.latency_us.p999 >= threshold_us {
            s.ops / 400
        } else {
            3
        };
        let listed = beyond.min(per_slice_max);
        omitted += beyond - listed;
        for k in 0..listed {
            let t_ms = s.t_ms + (k * 997 + 13) % 1000;
            let top = s.latency_us.max as f64;
            let f = jitter.next(1.0) / 2.0;
            let us = (threshold_us as f64 * (top / threshold_us as f64).powf(f * f)) as u64;
            slow.push(SlowRequest {
                t_ms,
                latency_us: us.max(threshold_us),
                error: s.errors > 0 && k % 40 == 0,
            });
        }
    }
    let mut zooms = Vec::new();
    for sw in &summary.switchovers {
        let rate_per_ms = summary
            .phases
            .first()
            .map_or(20.0, |p| p.throughput_ops_s / 1000.0);
        let gap = sw.client_gap_ms;
        for i in 0..(gap * 2.0) as u64 {
            let t = sw.at_ms as f64 - 2.0 + i as f64 * 0.5;
            let waited = (sw.at_ms as f64 + gap - t).max(0.0);
            slow.push(SlowRequest {
                t_ms: t as u64,
                latency_us: (waited * 1000.0) as u64 + 240,
                error: false,
            });
        }
        let from_ms = sw.at_ms - 250;
        let gap_start = sw.at_ms as f64 - 1.0;
        let gap_end = gap_start + gap;
        let mut backlog = 0.0;
        let buckets = (0..500)
            .map(|i| {
                let t = (from_ms + i) as f64;
                let ops = (rate_per_ms * jitter.next(0.2)) as u32;
                let silent = t + 1.0 > gap_start && t < gap_end;
                let replied = if silent {
                    backlog += f64::from(ops);
                    0
                } else {
                    let burst = backlog.min(rate_per_ms * 6.0);
                    backlog -= burst;
                    ops + burst as u32
                };
                let waited_us = if t + 1.0 > gap_start && t < gap_end {
                    ((gap_end - t) * 1000.0) as u64 + 240
                } else {
                    (300.0 * jitter.next(0.5)) as u64 + (backlog * 10.0) as u64
                };
                ZoomBucket {
                    ops,
                    replied,
                    errors: 0,
                    max_us: waited_us,
                }
            })
            .collect();
        zooms.push(Zoom {
            kind: sw.kind.clone(),
            at_ms: sw.at_ms,
            end_ms: sw.at_ms + sw.stepup_ms.ceil() as u64,
            from_ms,
            bucket_ms: 1,
            buckets,
        });
    }
    slow.sort_by_key(|r| r.t_ms);
    Detail {
        schema: DETAIL_SCHEMA.into(),
        slow_threshold_us: threshold_us,
        slow,
        slow_per_slice_max: per_slice_max,
        slow_omitted: omitted,
        zooms,
    }
}

/// A run as `tandem demo --quick` makes one: 30 s at 5,000 req/s in which the phases around
/// each step last tens of milliseconds, so that their labels would pile up at one-second
/// resolution and most of them have too few samples for a p99.
pub fn quick_run() -> (Summary, Vec<Slice>, Timeline) {
    let plans = [
        plan(phase::BASELINE, 12_000, 5_000.0, 160.0, 700.0),
        plan(phase::B_OUT_OF_SERVICE, 40, 5_000.0, 90.0, 400.0),
        plan(phase::B_CATCH_UP, 120, 5_000.0, 230.0, 1_900.0),
        plan(phase::SWITCHOVER_TO_B, 15, 4_000.0, 900.0, 9_000.0),
        plan(phase::EVALUATION, 8_000, 5_000.0, 170.0, 760.0),
        plan(phase::A_OUT_OF_SERVICE, 35, 5_000.0, 92.0, 410.0),
        plan(phase::A_CATCH_UP, 90, 5_000.0, 240.0, 2_000.0),
        plan(phase::FEATURES_ENABLED, 9_700, 5_000.0, 175.0, 780.0),
    ];
    let switchover = PlannedSwitchover {
        kind: SwitchoverKind::Planned,
        offset_ms: 12_000 + 40 + 120 + 3,
        stepup_ms: 2.9,
        client_gap_ms: 8.4,
    };
    build("completed", &plans, &[switchover])
}

/// The same load against a Redis primary and replica: one steady phase, no switchover.
pub fn redis_run() -> (Summary, Vec<Slice>, Timeline) {
    let plans = [plan(STEADY, 30_000, 5_000.0, 140.0, 520.0)];
    let (mut summary, slices, _) = build("completed", &plans, &[]);
    summary.target = "redis".into();
    summary.simplex_ms = 0;
    summary.simplex_windows.clear();
    if let Some(env) = &mut summary.environment {
        env.target_version = "redis 7.0.15".into();
    }
    (summary, slices, Timeline::new())
}

/// The phases in which one engine serves alone.
fn serves_alone(name: &str) -> bool {
    name.ends_with("out_of_service")
        || name.contains("catch_up")
        || name == phase::B_RELOAD_PREVIOUS
}

/// The eight phases of a completed upgrade, 62 s.
const UPGRADE_PLANS: [Plan; 8] = [
    plan(phase::BASELINE, 15_000, 20_000.0, 182.0, 910.0),
    plan(phase::B_OUT_OF_SERVICE, 3_200, 20_000.0, 96.0, 420.0),
    plan(phase::B_CATCH_UP, 5_800, 19_400.0, 240.0, 2_450.0),
    plan(phase::SWITCHOVER_TO_B, 600, 16_800.0, 230.0, 9_500.0),
    plan(phase::EVALUATION, 14_400, 20_000.0, 188.0, 940.0),
    plan(phase::A_OUT_OF_SERVICE, 3_000, 20_000.0, 98.0, 430.0),
    plan(phase::A_CATCH_UP, 6_000, 19_300.0, 245.0, 2_600.0),
    plan(phase::FEATURES_ENABLED, 14_000, 20_000.0, 190.0, 950.0),
];

/// The planned switchover of [`UPGRADE_PLANS`], `offset_ms` after the upgrade's start.
fn upgrade_switchover(offset_ms: u64) -> PlannedSwitchover {
    PlannedSwitchover {
        kind: SwitchoverKind::Planned,
        offset_ms: offset_ms + 24_130,
        stepup_ms: 3.8,
        client_gap_ms: 11.6,
    }
}

/// The eight phases of a completed upgrade over 62 s, one planned switchover.
pub fn upgrade_run() -> (Summary, Vec<Slice>, Timeline) {
    build("completed", &UPGRADE_PLANS, &[upgrade_switchover(0)])
}

/// An upgrade to a faulty 2.0 that evaluation rejects: back to 1.0 with nothing lost.
pub fn rolled_back_run() -> (Summary, Vec<Slice>, Timeline) {
    let plans = [
        plan(phase::BASELINE, 12_000, 20_000.0, 180.0, 900.0),
        plan(phase::B_OUT_OF_SERVICE, 3_000, 20_000.0, 95.0, 410.0),
        plan(phase::B_CATCH_UP, 5_000, 19_500.0, 240.0, 2_400.0),
        plan(phase::SWITCHOVER_TO_B, 500, 17_000.0, 230.0, 9_000.0),
        Plan {
            errors_per_million: 8_000,
            ..plan(phase::EVALUATION, 8_000, 19_800.0, 620.0, 6_800.0)
        },
        plan(phase::FALLBACK, 600, 17_000.0, 240.0, 9_000.0),
        plan(phase::B_RELOAD_PREVIOUS, 3_000, 20_000.0, 97.0, 420.0),
        plan(phase::B_CATCH_UP_PREVIOUS, 5_000, 19_400.0, 245.0, 2_500.0),
        plan(phase::RESTORED, 10_000, 20_000.0, 183.0, 915.0),
    ];
    let switchovers = [
        PlannedSwitchover {
            kind: SwitchoverKind::Planned,
            offset_ms: 20_100,
            stepup_ms: 3.6,
            client_gap_ms: 10.9,
        },
        PlannedSwitchover {
            kind: SwitchoverKind::Fallback,
            offset_ms: 28_600,
            stepup_ms: 4.1,
            client_gap_ms: 13.2,
        },
    ];
    build("rolled_back", &plans, &switchovers)
}

/// A completed upgrade with the load on before and after it: a `steady` warm-up and a
/// `steady` tail, the one phase name the run goes through twice (the tail a little slower,
/// so that the two are told apart).
pub fn warmed_upgrade_run() -> (Summary, Vec<Slice>, Timeline) {
    const WARM_UP_MS: u64 = 5_000;
    let mut plans = vec![plan(STEADY, WARM_UP_MS, 20_000.0, 175.0, 860.0)];
    plans.extend(UPGRADE_PLANS);
    plans.push(plan(STEADY, 6_000, 20_000.0, 260.0, 1_900.0));
    build("completed", &plans, &[upgrade_switchover(WARM_UP_MS)])
}

/// A sample run's files: its summary, slices and timeline.
pub type SampleRun = (Summary, Vec<Slice>, Timeline);

/// Every sample run by name: `quick`, `completed`, `rolled_back`, `redis` (no timeline of
/// its own: written without one) and `warmed`.
pub fn all() -> Vec<(&'static str, SampleRun)> {
    vec![
        ("quick", quick_run()),
        ("completed", upgrade_run()),
        ("rolled_back", rolled_back_run()),
        ("redis", redis_run()),
        ("warmed", warmed_upgrade_run()),
    ]
}
