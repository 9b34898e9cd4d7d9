//! Scenario benchmarks of a real pair: `tandem` processes (the release binary next to this
//! benchmark, built if missing) and, where it is the peer, `redis-server`, each on ports of
//! its own and torn down afterwards, panic or not. Every pair or Redis is started the first
//! time a benchmark that needs it runs, so listing or filtering starts nothing.
//!
//! - `pair_set_throughput/connections_N/pipeline_P`: one round of N connections each sending
//!   P `SET`s (100-byte values) in one pipeline to the active of a pair and reading the P
//!   replies, all connections at once; each reply is released only once the standby holds
//!   the write. Time per round = the latency of a pipeline; throughput = SETs/s.
//!   `redis_async_replica_set_throughput/...`: the same client against a Redis primary with
//!   an asynchronous replica, alternating with the pair configuration by configuration.
//! - `planned_switchover/until_new_active_acknowledges_a_write`: admin `SWITCHOVER` sent to
//!   a `SET` acknowledged by the engine that was the standby (written to again and again from
//!   the moment the command goes out; the supervisor's answer comes later).
//! - `failover_sigkill_active/until_promoted_acknowledges_a_write`: SIGKILL of the active's
//!   process to a `SET` acknowledged by the promoted standby (detection, promotion, and the
//!   new active's journal checkpoint before it releases anything).
//! - `catch_up/state_N`: a pair holding N work units; the standby is stopped and restarted
//!   (admin `RELOAD`); from the restarted engine process's start until the active reports it
//!   in sync (handshake, snapshot, then the stream; the stop is not counted).
//! - `upgrade_under_load/1.0_to_2.0`: a whole `UPGRADE 2.0` (what `tandem upgrade --to 2.0`
//!   asks; 500 ms baseline and evaluation windows, 200 ms settle, p99 acceptance slack 20 ms
//!   so that the transient of a catch-up in a 500 ms window does not roll it back) on a
//!   fresh pair while a paced write load runs: its wall time.

use std::cell::OnceCell;
use std::time::{Duration, Instant};

use bench::{
    engine_field, engine_pid, kill9, preload_sessions, quick, runtime, scenario, write_until_ok,
    Admin, Conn, Load, LoadShape, Pair, Pipeline, RedisPair,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::runtime::Runtime;

const VALUE_BYTES: usize = 100;

/// `iters` rounds on every connection at once: each sends its pipeline and reads the replies.
fn rounds(rt: &Runtime, conns: &mut Vec<(Conn, Pipeline)>, iters: u64) -> Duration {
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let start = Instant::now();
        for (mut conn, pipeline) in conns.drain(..) {
            tasks.spawn(async move {
                for _ in 0..iters {
                    conn.send_ok(&pipeline).await;
                }
                (conn, pipeline)
            });
        }
        while let Some(done) = tasks.join_next().await {
            conns.push(done.expect("a connection's rounds"));
        }
        start.elapsed()
    })
}

/// `connections` connections to `addr`, each with its own keys.
fn open(rt: &Runtime, addr: &str, connections: usize, pipeline: usize) -> Vec<(Conn, Pipeline)> {
    rt.block_on(async {
        let mut conns = Vec::new();
        for c in 0..connections {
            let conn = Conn::connect(addr).await.expect("connect");
            conns.push((
                conn,
                Pipeline::sets(&format!("bench:{c}:"), pipeline, VALUE_BYTES),
            ));
        }
        conns
    })
}

fn set_throughput(c: &mut Criterion) {
    let rt = runtime();
    let pair: OnceCell<(Pair, String)> = OnceCell::new();
    let redis: OnceCell<Option<RedisPair>> = OnceCell::new();
    let active = || {
        &pair
            .get_or_init(|| {
                let pair = Pair::up(&[]);
                let status = rt.block_on(async { pair.admin().await.wait_duplex().await });
                let addr = engine_field(&status, "active", "client_addr");
                (pair, addr)
            })
            .1
    };
    let redis_primary = || {
        redis
            .get_or_init(|| rt.block_on(RedisPair::start()))
            .as_ref()
            .map(|r| r.primary.clone())
    };
    for connections in [1usize, 8, 32] {
        for pipeline in [1usize, 16, 64] {
            let id = format!("connections_{connections}/pipeline_{pipeline}");
            let elements = Throughput::Elements((connections * pipeline) as u64);

            let mut group = c.benchmark_group("pair_set_throughput");
            scenario::configure_throughput(&mut group);
            group.throughput(elements.clone());
            let mut conns = None;
            group.bench_function(&id, |b| {
                let conns = conns.get_or_insert_with(|| open(&rt, active(), connections, pipeline));
                b.iter_custom(|iters| rounds(&rt, conns, iters))
            });
            group.finish();

            let mut group = c.benchmark_group("redis_async_replica_set_throughput");
            scenario::configure_throughput(&mut group);
            group.throughput(elements);
            let mut conns = None;
            group.bench_function(&id, |b| {
                let Some(primary) = redis_primary() else {
                    return b.iter(|| ()); // no redis-server: skipped with a notice
                };
                let conns = conns.get_or_insert_with(|| open(&rt, &primary, connections, pipeline));
                b.iter_custom(|iters| rounds(&rt, conns, iters))
            });
            group.finish();
        }
    }
}

/// A pair and a connection to its admin endpoint, made the first time it is asked for.
fn lazy_pair<'a>(rt: &Runtime, cell: &'a mut Option<(Pair, Admin)>) -> &'a mut (Pair, Admin) {
    cell.get_or_insert_with(|| {
        let pair = Pair::up(&[]);
        let admin = rt.block_on(pair.admin());
        (pair, admin)
    })
}

fn planned_switchover(c: &mut Criterion) {
    let rt = runtime();
    let mut pair = None;
    let mut group = c.benchmark_group("planned_switchover");
    scenario::configure_events(&mut group, Duration::from_millis(5));
    group.bench_function("until_new_active_acknowledges_a_write", |b| {
        let (_, admin) = lazy_pair(&rt, &mut pair);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let status = admin.wait_duplex().await;
                    let target = engine_field(&status, "standby", "client_addr");
                    let mut conn = Some(Conn::connect(&target).await.expect("connect"));
                    // Written to from the moment the command goes out: the new active may
                    // serve before the supervisor has answered (it persists its state first).
                    let start = Instant::now();
                    let serving = async {
                        write_until_ok(&target, &mut conn).await;
                        start.elapsed()
                    };
                    let (answer, took) = tokio::join!(admin.call(&["SWITCHOVER"]), serving);
                    spent += took;
                    assert!(answer.starts_with("OK"), "SWITCHOVER: {answer}");
                }
                spent
            })
        })
    });
    group.finish();
}

fn failover(c: &mut Criterion) {
    let rt = runtime();
    let mut pair = None;
    let mut group = c.benchmark_group("failover_sigkill_active");
    scenario::configure_events(&mut group, Duration::from_millis(30));
    group.bench_function("until_promoted_acknowledges_a_write", |b| {
        let (_, admin) = lazy_pair(&rt, &mut pair);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    // The killed engine is restarted as the standby and must catch up first.
                    let status = admin.wait_duplex().await;
                    let target = engine_field(&status, "standby", "client_addr");
                    let victim = engine_pid(&status, "active");
                    let mut conn = Some(Conn::connect(&target).await.expect("connect"));
                    let start = Instant::now();
                    kill9(victim);
                    write_until_ok(&target, &mut conn).await;
                    spent += start.elapsed();
                }
                spent
            })
        })
    });
    group.finish();
}

/// Work units in the pair for `catch_up/state_N`: up to 10^5 in quick mode.
fn catch_up_sizes() -> &'static [usize] {
    if quick() {
        &[10_000, 100_000]
    } else {
        &[10_000, 100_000, 1_000_000]
    }
}

fn catch_up(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("catch_up");
    for &units in catch_up_sizes() {
        // About 2 µs per work unit (bench/RESULTS.md), and the restart's tens of ms.
        scenario::configure_events(&mut group, Duration::from_micros(2 * units as u64 + 20_000));
        let mut pair = None;
        group.bench_function(format!("state_{units}"), |b| {
            let (pair, admin) = pair.get_or_insert_with(|| {
                let pair = Pair::up(&[]);
                let admin = rt.block_on(async {
                    let mut admin = pair.admin().await;
                    let status = admin.wait_duplex().await;
                    let active = engine_field(&status, "active", "client_addr");
                    preload_sessions(&active, units, VALUE_BYTES).await;
                    admin
                });
                (pair, admin)
            });
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let status = admin.wait_duplex().await;
                        let standby = engine_field(&status, "standby", "name");
                        let control = engine_field(&status, "active", "control_addr");
                        let mut active = pair.control(&control).await;
                        // Answered once the new standby process has started and follows.
                        let answer = admin.call(&["RELOAD", &standby, "1.0"]).await;
                        assert!(answer.starts_with("OK"), "RELOAD: {answer}");
                        spent += caught_up_after_start(pair, admin, &mut active).await;
                    }
                    spent
                })
            })
        });
    }
    group.finish();
}

/// How long after its process started the restarted standby was in sync, as its active
/// reports: waits for that (polling the active every millisecond), then asks the standby its
/// uptime and takes off the time that has passed since. (The supervisor's answer to `RELOAD`
/// comes only after it has written its state to disk, well into a small catch-up.)
async fn caught_up_after_start(pair: &Pair, admin: &mut Admin, active: &mut Admin) -> Duration {
    let start = Instant::now();
    loop {
        let s = active.json(&["TANDEM.STATUS"]).await;
        if s["standby_in_sync"] == true {
            break;
        }
        assert!(
            start.elapsed() < bench::DEADLINE,
            "the standby did not catch up: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let synced = Instant::now();
    let status = admin.status().await;
    let mut standby = pair
        .control(&engine_field(&status, "standby", "control_addr"))
        .await;
    let uptime_ms = standby.json(&["TANDEM.STATUS"]).await["uptime_ms"]
        .as_u64()
        .expect("uptime_ms in the standby's status");
    Duration::from_millis(uptime_ms).saturating_sub(synced.elapsed())
}

/// The load that runs through `upgrade_under_load`: 2 connections x 8 SETs every 2 ms
/// (about 8,000 SET/s offered).
const UPGRADE_LOAD: LoadShape = LoadShape {
    connections: 2,
    pipeline: 8,
    interval: Duration::from_millis(2),
};

/// The admin command of `upgrade_under_load`: short windows, and a p99 acceptance slack that a
/// catch-up's transient inside a 500 ms evaluation window does not exceed (the benchmark
/// measures the whole upgrade, not its rollback).
const UPGRADE: [&str; 10] = [
    "UPGRADE",
    "2.0",
    "baseline_ms",
    "500",
    "evaluate_ms",
    "500",
    "settle_ms",
    "200",
    "p99_slack_ms",
    "20",
];

fn upgrade_under_load(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("upgrade_under_load");
    scenario::configure_events(&mut group, Duration::from_millis(1500));
    group.bench_function("1.0_to_2.0", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let pair = Pair::up(&[]);
                spent += rt.block_on(async {
                    let mut admin = pair.admin().await;
                    admin.wait_duplex().await;
                    let load = Load::start(&pair, UPGRADE_LOAD);
                    load.wait_for_more(1000).await;
                    let start = Instant::now();
                    let report = admin.json(&UPGRADE).await;
                    let took = start.elapsed();
                    load.wait_for_more(100).await; // the load survived the upgrade
                    if report["outcome"] != "completed" || load.errors() > 0 {
                        eprintln!(
                            "NOTICE upgrade_under_load: {report}; {} error replies to the load",
                            load.errors()
                        );
                    }
                    took
                });
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    set_throughput,
    planned_switchover,
    failover,
    catch_up,
    upgrade_under_load
);
criterion_main!(benches);
