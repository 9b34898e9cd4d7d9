//! The faults a reliability engineer tries first, on a real pair under pipelined writes, each
//! ending with the exact lost-update check (every write answered OK is read back):
//! the supervisor killed (idle, and in the middle of an upgrade), the active paused, the
//! standby paused, the engine serving alone killed in each simplex phase of an upgrade, a
//! promotion that cannot be answered, and a client that never reads its replies.
//! Every wait is on an event or a status, with a deadline.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
// QUICK: short windows, and an acceptance check that judges errors only (latency is for the
// benchmarks, and a noisy machine must not turn these tests into rollbacks).
use common::{
    lost, pid_of, preload, signal, versions, EventKind, Pair, TimelineEvent, Writer, DEADLINE,
    UPGRADE_QUICK_PATIENT as QUICK,
};
use resp::{Client, Reply};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Reads every write the writer had acknowledged back from the active: none may be missing.
async fn check_nothing_lost(pair: &Pair, writer: Writer) -> common::WriterReport {
    let report = writer.finish().await;
    assert!(
        !report.acked.is_empty(),
        "the writer got nothing acknowledged"
    );
    let mut client = pair.active_client().await;
    let missing = lost(&mut client, &report.acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        report.acked.len(),
        &missing[..missing.len().min(5)]
    );
    report
}

/// Waits for the next timeline event that `matches`.
async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<TimelineEvent>,
    matches: impl Fn(&TimelineEvent) -> bool,
) -> TimelineEvent {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if matches(&ev) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the timeline subscription ended"),
            Err(_) => panic!("the event did not come within {DEADLINE:?}"),
        }
    }
}

/// Starts `UPGRADE` on the pair's admin endpoint in a task; resolves to the report.
fn start_upgrade(pair: &Pair, args: &[&str]) -> tokio::task::JoinHandle<Result<Value, String>> {
    let (admin, secret) = (pair.admin.clone(), pair.secret.clone());
    let mut cmd: Vec<String> = vec!["UPGRADE".into(), "2.0".into()];
    cmd.extend(args.iter().map(|a| a.to_string()));
    tokio::spawn(async move {
        let mut c = Client::connect_authenticated(&admin, Duration::from_secs(5), &secret, "admin")
            .await
            .map_err(|e| e.to_string())?;
        c.set_timeout(Some(Duration::from_secs(120)));
        let parts: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        match c.call(&parts).await.map_err(|e| e.to_string())? {
            Reply::Simple(s) => serde_json::from_str(&s).map_err(|e| e.to_string()),
            Reply::Bulk(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
            other => Err(format!("upgrade: {other}")),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_supervisor_loses_nothing_and_a_new_one_adopts_the_engines() {
    let mut pair = Pair::up();
    let before = pair.wait_in_sync().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    pair.kill_supervisor();
    // In sync, the pair goes on acknowledging writes with no supervisor at all.
    writer.wait_for_more(3000).await;
    pair.restart_supervisor();
    let after = pair.wait_in_sync().await;
    for role in ["active", "standby"] {
        assert_eq!(
            pid_of(&before, role),
            pid_of(&after, role),
            "{role} was replaced"
        );
    }
    assert!(pair
        .timeline()
        .iter()
        .any(|e| e.kind == EventKind::SupervisorStart));
    // The new supervisor is in charge: a switchover works.
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    writer.wait_for_more(1000).await;
    check_nothing_lost(&pair, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_supervisor_during_an_upgrade_is_rolled_back_by_its_successor() {
    let mut pair = Pair::up();
    pair.wait_in_sync().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    let mut events = pair.subscribe().await;
    let mut args = QUICK.to_vec();
    args.extend(["hold_phase", "b_out_of_service", "hold_ms", "5000"]);
    let upgrade = start_upgrade(&pair, &args);
    next_event(&mut events, |e| {
        e.kind == EventKind::PhaseStart && e.phase.as_deref() == Some("b_out_of_service")
    })
    .await;
    pair.kill_supervisor();
    let lost_answer = upgrade.await.expect("the upgrade task");
    assert!(
        lost_answer.is_err(),
        "the killed supervisor answered: {lost_answer:?}"
    );
    pair.restart_supervisor();
    let mut events = pair.subscribe().await;
    let end = next_event(&mut events, |e| e.kind == EventKind::UpgradeEnd).await;
    let s = pair.wait_in_sync().await;
    assert_eq!(end.outcome.as_deref(), Some("rolled_back"));
    assert!(
        end.message
            .as_deref()
            .unwrap_or("")
            .contains("supervisor restarted"),
        "{end:?}"
    );
    assert_eq!(versions(&s), ["1.0", "1.0"]);
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_active_is_replaced_and_the_resumed_one_acknowledges_nothing_and_rejoins() {
    let pair = Pair::up();
    let before = pair.wait_in_sync().await;
    let (old, epoch) = (pid_of(&before, "active"), before["epoch"].as_u64().unwrap());
    let old_addr = Pair::engine(&before, "active").unwrap()["client_addr"]
        .as_str()
        .unwrap()
        .to_string();
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    signal(old, "-STOP");
    let stopped = Instant::now();
    // Writes sent to the paused active wait in its socket: it must never answer them OK.
    let mut stale = tokio::net::TcpStream::connect(&old_addr).await.unwrap();
    for i in 0..20 {
        let req = format!("*3\r\n$3\r\nSET\r\n$7\r\nstale{i:02}\r\n$1\r\nx\r\n");
        stale.write_all(req.as_bytes()).await.unwrap();
    }
    let after = pair
        .wait_for(|s| {
            Pair::engine(s, "active").is_some_and(|e| e["pid"].as_u64() != Some(old))
                && s["epoch"].as_u64() > Some(epoch)
        })
        .await;
    eprintln!("paused active replaced after {:?}", stopped.elapsed());
    writer.wait_for_more(1000).await;
    signal(old, "-CONT");
    let mut replies = Vec::new();
    let _ = tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncReadExt::read_to_end(&mut stale, &mut replies),
    )
    .await;
    let replies = String::from_utf8_lossy(&replies);
    assert!(
        !replies.contains("+OK"),
        "the old active acknowledged a write in its old epoch: {replies}"
    );
    // It rejoins as the standby of the new active, the same process.
    let s = pair
        .wait_for(|s| {
            s["standby_promotable"] == true
                && Pair::engine(s, "standby").is_some_and(|e| e["pid"].as_u64() == Some(old))
        })
        .await;
    assert_eq!(pid_of(&s, "active"), pid_of(&after, "active"));
    let mut client = pair.active_client().await;
    for i in 0..20 {
        let key = format!("stale{i:02}");
        let got = client.call(&[b"GET", key.as_bytes()]).await.unwrap();
        assert_eq!(
            got,
            Reply::Nil,
            "a write the old active took is visible: {key}"
        );
    }
    check_nothing_lost(&pair, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_of_the_standby_stops_holding_up_writes() {
    let pair = Pair::up();
    let before = pair.wait_in_sync().await;
    let standby = pid_of(&before, "standby");
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    signal(standby, "-STOP");
    let stopped = Instant::now();
    // The active goes on alone (journaled) once the standby's link times out.
    writer.wait_for_more(2000).await;
    eprintln!(
        "2000 writes acknowledged {:?} after the standby paused",
        stopped.elapsed()
    );
    let s = pair.status().await;
    assert_eq!(s["standby_promotable"], false, "{s:#}");
    signal(standby, "-CONT");
    let s = pair.wait_in_sync().await;
    assert_eq!(
        pid_of(&s, "standby"),
        standby,
        "the standby came back as itself"
    );
    check_nothing_lost(&pair, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_that_cannot_be_answered_is_retried_and_the_dead_active_stays_down() {
    // A long peer timeout keeps the paused standby counted in sync (it holds every
    // acknowledged write: writes wait for its acknowledgement meanwhile).
    let pair = Pair::up_with(&["--peer-timeout", "60s"]);
    let before = pair.wait_in_sync().await;
    let (active, standby) = (pid_of(&before, "active"), pid_of(&before, "standby"));
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(1000).await;
    signal(standby, "-STOP");
    common::kill9(active);
    let pending = pair
        .wait_for(|s| s["failover_pending"]["attempts"].as_u64().unwrap_or(0) >= 3)
        .await;
    // The dead active did not come back (empty) while the standby holds the data.
    let a = pending["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == before["active"])
        .unwrap();
    assert!(
        a["pid"].is_null(),
        "the dead active was restarted: {pending:#}"
    );
    signal(standby, "-CONT");
    let s = pair
        .wait_for(|s| {
            s["standby_promotable"] == true
                && Pair::engine(s, "active").is_some_and(|e| e["pid"].as_u64() == Some(standby))
        })
        .await;
    assert!(s["failover_pending"].is_null());
    writer.wait_for_more(1000).await;
    check_nothing_lost(&pair, writer).await;
}

/// Kills the engine that serves alone as soon as `phase` starts, during an upgrade under
/// writes; the supervisor recovers it from its journal and the upgrade rolls back (or
/// finishes, after acceptance), with nothing lost.
async fn kill_the_lone_engine_in(phase: &str, extra: &[&str], preload_sessions: usize) -> Value {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    if preload_sessions > 0 {
        // Enough state that the catch-up is still going when the kill lands.
        preload(&pair, preload_sessions, 256).await;
        pair.wait_in_sync().await;
    }
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    let mut events = pair.subscribe().await;
    let mut args = QUICK.to_vec();
    args.extend_from_slice(extra);
    let upgrade = start_upgrade(&pair, &args);
    let start = next_event(&mut events, |e| {
        e.kind == EventKind::PhaseStart && e.phase.as_deref() == Some(phase)
    })
    .await;
    let s = pair.status().await;
    let victim = pid_of(&s, "active");
    common::kill9(victim);
    let report = upgrade
        .await
        .expect("the upgrade task")
        .expect("the upgrade answered");
    let failover = pair
        .timeline()
        .into_iter()
        .find(|e| e.kind == EventKind::Failover && e.t_ms >= start.t_ms)
        .expect("a failover was recorded");
    let message = failover.message.clone().unwrap_or_default();
    assert!(
        message.contains("recovered from its journal"),
        "the kill did not land while one engine served alone: {message}"
    );
    let s = pair.wait_in_sync().await;
    let v = versions(&s);
    assert_eq!(v[0], v[1], "the pair is left on mixed versions: {s:#}");
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lone_engine_in_b_out_of_service_loses_nothing() {
    let r = kill_the_lone_engine_in(
        "b_out_of_service",
        &["hold_phase", "b_out_of_service", "hold_ms", "5000"],
        0,
    )
    .await;
    assert_eq!(r["outcome"], "rolled_back", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lone_engine_in_b_catch_up_loses_nothing() {
    let r = kill_the_lone_engine_in("b_catch_up", &[], 200_000).await;
    assert_eq!(r["outcome"], "rolled_back", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lone_engine_in_a_out_of_service_loses_nothing() {
    let r = kill_the_lone_engine_in(
        "a_out_of_service",
        &["hold_phase", "a_out_of_service", "hold_ms", "5000"],
        0,
    )
    .await;
    // 2.0 was accepted already: the upgrade is finished from the pair's state.
    assert_eq!(r["outcome"], "completed", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lone_engine_in_a_catch_up_loses_nothing() {
    let r = kill_the_lone_engine_in("a_catch_up", &[], 200_000).await;
    assert_eq!(r["outcome"], "completed", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lone_engine_in_b_reload_previous_loses_nothing() {
    let r = kill_the_lone_engine_in(
        "b_reload_previous",
        &[
            "fault",
            "errors",
            "hold_phase",
            "b_reload_previous",
            "hold_ms",
            "5000",
        ],
        0,
    )
    .await;
    assert_eq!(r["outcome"], "rolled_back", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_lone_engine_in_b_catch_up_previous_loses_nothing() {
    let r = kill_the_lone_engine_in("b_catch_up_previous", &["fault", "errors"], 200_000).await;
    assert_eq!(r["outcome"], "rolled_back", "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_the_engine_keeps_serving() {
    let pair = Pair::up_with(&["--output-stall-timeout", "1s"]);
    let s = pair.wait_in_sync().await;
    let active = Pair::engine(&s, "active").unwrap().clone();
    let mut client = pair.active_client().await;
    let value = Bytes::from(vec![b'v'; 1 << 20]);
    let reply = client
        .pipeline(&[vec![
            Bytes::from_static(b"SET"),
            Bytes::from_static(b"big"),
            value,
        ]])
        .await
        .unwrap();
    assert_eq!(reply, [Reply::Simple("OK".into())]);
    // 400 pipelined GETs of a 1 MiB value, never read: 400 MiB of replies, were they kept.
    let mut greedy = tokio::net::TcpStream::connect(active["client_addr"].as_str().unwrap())
        .await
        .unwrap();
    let requests = "*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(400);
    greedy.write_all(requests.as_bytes()).await.unwrap();
    let dropped = pair
        .wait_for(|s| {
            Pair::engine(s, "active").unwrap()["counters"]["clients_dropped_output"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        })
        .await;
    let pid = pid_of(&dropped, "active");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(rss_kb < 200 * 1024, "the engine holds {rss_kb} kB");
    assert_eq!(
        client.call(&[b"SET", b"still", b"serving"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(pid, active["pid"].as_u64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_whose_engines_all_died_is_not_restarted_empty() {
    // What does not hold: both engines and the supervisor killed at once while in sync (no
    // journal then) loses the state. A new supervisor says so and refuses to start empty.
    let mut pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let mut client = pair.active_client().await;
    assert_eq!(
        client.call(&[b"SET", b"k", b"v"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
    pair.kill_supervisor();
    for role in ["active", "standby"] {
        common::kill9(pid_of(&s, role));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandem"))
        .env("TANDEM_SECRET_FILE", pair.dir.join("secret"))
        .args(["pair", "up", "--base-port", "0", "--dir"])
        .arg(&pair.dir)
        .output()
        .expect("run tandem pair up");
    assert!(!out.status.success(), "an empty pair was started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no journal to recover from") && stderr.contains("--fresh"),
        "{stderr}"
    );
    pair.restart_fresh();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_restarted_by_a_new_supervisor_is_not_promoted_before_it_caught_up() {
    // The supervisor and the standby die; a new supervisor restarts the standby (empty) and
    // the active dies at once: the empty standby must not become the active.
    let mut pair = Pair::up();
    pair.wait_in_sync().await;
    preload(&pair, 200_000, 256).await;
    let s = pair.wait_in_sync().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    pair.kill_supervisor();
    let old = pid_of(&s, "standby");
    common::kill9(old);
    pair.restart_supervisor();
    // The restarted standby is frozen before it can take in 200,000 sessions (a catch-up
    // takes a fraction of a second): it stays behind while the active dies.
    let restarted = pair
        .wait_for(|s| {
            Pair::engine(s, "standby").is_some_and(|e| e["pid"].as_u64().is_some_and(|p| p != old))
        })
        .await;
    let standby = pid_of(&restarted, "standby");
    common::signal(standby, "-STOP");
    // The active, alone, has its journal on disk (a second fault before that would lose
    // what only the dead standby and its memory held: see RELIABILITY.md). Should the
    // standby have caught up before it was frozen, it is promotable instead, and promoting
    // it is right.
    let now = pair
        .wait_for(|s| {
            s["standby_promotable"] == true
                || Pair::engine(s, "active").is_some_and(|e| e["journal"]["durable"] == true)
        })
        .await;
    common::kill9(pid_of(&now, "active"));
    common::signal(standby, "-CONT");
    let after = pair
        .wait_for(|s| {
            s["standby_promotable"] == true
                && Pair::engine(s, "active")
                    .is_some_and(|e| e["work_units"].as_u64() >= Some(200_000))
        })
        .await;
    assert!(after["unavailable"].is_null(), "{after:#}");
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
}

/// Waits until `log` (an engine's log in the pair's directory) holds `line` more than
/// `seen` times.
async fn wait_for_log(pair: &Pair, log: &str, line: &str, seen: usize) {
    let path = pair.dir.join(log);
    let count = || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .matches(line)
            .count()
    };
    let deadline = Instant::now() + DEADLINE;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while count() <= seen {
        assert!(Instant::now() < deadline, "{log} never said '{line}'");
        tick.tick().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_supervisor_mid_switchover_leaves_its_successor_an_active() {
    // The supervisor grants (and persists) the switchover's epoch, then dies; the switchover
    // fails (its standby is frozen), so the old active stays active in the epoch before. Its
    // successor must not lease it in the new epoch (it would step down: nobody active), but
    // give it an epoch of its own. Found by `tandem sim` (seed 58).
    let mut pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let writer = Writer::start(&pair, "w");
    writer.wait_for_more(500).await;
    let (active, standby) = (Pair::engine(&s, "active").unwrap(), pid_of(&s, "standby"));
    let log = format!("{}.log", active["name"].as_str().unwrap());
    let closed = "standby link closed";
    let seen = std::fs::read_to_string(pair.dir.join(&log))
        .unwrap_or_default()
        .matches(closed)
        .count();
    let mut events = pair.subscribe().await;
    common::signal(standby, "-STOP");
    let (admin, secret) = (pair.admin.clone(), pair.secret.clone());
    let switchover = tokio::spawn(async move {
        let c = Client::connect_authenticated(&admin, Duration::from_secs(5), &secret, "admin");
        let _ = c.await.expect("admin").call(&[b"SWITCHOVER"]).await;
    });
    next_event(&mut events, |e| e.kind == EventKind::SwitchoverBegin).await;
    pair.kill_supervisor();
    let _ = switchover.await;
    // The old active gives the switchover up when its link to the frozen standby times out.
    wait_for_log(&pair, &log, closed, seen).await;
    pair.restart_supervisor();
    writer.wait_for_more(500).await;
    common::signal(standby, "-CONT");
    pair.wait_in_sync().await;
    writer.wait_for_more(500).await;
    check_nothing_lost(&pair, writer).await;
}
