//! A real pair of engine processes on loopback: acknowledged writes survive a planned
//! switchover (on either link driver) and a SIGKILL of the active, a standby killed mid
//! catch-up catches up after its restart, a standby that catches up under writes ends with
//! the active's digest, and garbage on either port is refused while the engine keeps serving.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{get, kill9, set, Pair, Writer, DEADLINE};
use resp::{Client, Reply};
use tokio::io::AsyncWriteExt;

async fn read_back(client: &mut Client, expected: &HashMap<String, String>) {
    let keys: Vec<&String> = expected.keys().collect();
    for chunk in keys.chunks(500) {
        let reqs: Vec<Vec<Bytes>> = chunk.iter().map(|k| get(k)).collect();
        let replies = client.pipeline(&reqs).await.expect("read back");
        for (k, r) in chunk.iter().zip(replies) {
            assert_eq!(
                r.as_bytes(),
                Some(expected[*k].as_bytes()),
                "key {k} after failover/switchover"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_acknowledged_writes_survive_a_switchover() {
    writes_survive_a_switchover(&Pair::up()).await;
}

/// The same on io_uring links (`--io uring`): the supervisor hands the flag to both engines,
/// and after the switchover the old active follows the new one on io_uring too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_acknowledged_writes_survive_a_switchover_on_io_uring() {
    let pair = Pair::up_with(&["--io", "uring"]);
    writes_survive_a_switchover(&pair).await;
    let s = pair.status().await;
    for e in s["engines"].as_array().unwrap() {
        let pid = e["pid"].as_u64().expect("a running engine");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("its command line");
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        assert!(
            args.windows(2).any(|w| w == [&b"--io"[..], &b"uring"[..]]),
            "engine {} runs without --io uring: {}",
            e["name"],
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }
}

/// Ten thousand writes, a planned switchover, every write read back from the new active, and
/// both engines end with the same state.
async fn writes_survive_a_switchover(pair: &Pair) {
    pair.wait_in_sync().await;
    let mut client = pair.active_client().await;
    let mut expected = HashMap::new();
    for batch in 0..100 {
        let reqs: Vec<Vec<Bytes>> = (0..100)
            .map(|i| {
                let (k, v) = (format!("key:{batch}:{i}"), format!("value-{batch}-{i}"));
                expected.insert(k.clone(), v.clone());
                set(&k, &v)
            })
            .collect();
        for r in client.pipeline(&reqs).await.expect("writes") {
            assert_eq!(r, Reply::Simple("OK".into()));
        }
    }
    let before = pair.status().await;
    let old_active = Pair::engine(&before, "active").unwrap()["name"].clone();
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "switchover: {reply}");
    let after = pair.wait_in_sync().await;
    let new_active = Pair::engine(&after, "active").unwrap();
    assert_ne!(new_active["name"], old_active);
    assert!(
        new_active["epoch"].as_u64() > Pair::engine(&before, "active").unwrap()["epoch"].as_u64()
    );
    let mut client = pair.active_client().await;
    read_back(&mut client, &expected).await;
    // Both engines hold the same state: same work units, same digest.
    let s = pair
        .wait_for(|s| {
            let e = s["engines"].as_array().unwrap();
            e[0]["digest"] == e[1]["digest"] && e[0]["seq_applied"] == e[1]["seq_applied"]
        })
        .await;
    assert_eq!(s["engines"][0]["db_records"], 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_active_under_pipelined_writes_loses_no_acknowledged_write() {
    let pair = Pair::up();
    let status = pair.wait_in_sync().await;
    let victim = Pair::engine(&status, "active").unwrap()["pid"]
        .as_u64()
        .unwrap();
    let mut client = pair.active_client().await;
    let mut acked: HashMap<String, String> = HashMap::new();
    let mut n = 0u64;
    let mut killed = false;
    let start = Instant::now();
    // Keep writing in pipelines of 64 through the kill; every OK counts as acknowledged.
    while acked.len() < 20_000 {
        assert!(
            start.elapsed() < DEADLINE,
            "writes did not resume after the failover"
        );
        if !killed && acked.len() >= 5_000 {
            kill9(victim);
            killed = true;
        }
        let reqs: Vec<Vec<Bytes>> = (0..64)
            .map(|i| set(&format!("k{}", n + i), &format!("v{}", n + i)))
            .collect();
        match client.pipeline(&reqs).await {
            Ok(replies) => {
                for (i, r) in replies.iter().enumerate() {
                    if *r == Reply::Simple("OK".into()) {
                        acked.insert(format!("k{}", n + i as u64), format!("v{}", n + i as u64));
                    }
                }
            }
            Err(_) => client = pair.active_client().await,
        }
        n += 64;
    }
    assert!(killed);
    let s = pair
        .wait_for(|s| Pair::engine(s, "active").is_some_and(|e| e["pid"].as_u64() != Some(victim)))
        .await;
    assert!(
        Pair::engine(&s, "active").unwrap()["epoch"]
            .as_u64()
            .unwrap()
            >= 2
    );
    let mut client = pair.active_client().await;
    read_back(&mut client, &acked).await;
    // The killed engine comes back as the standby and catches up.
    pair.wait_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_killed_mid_catch_up_catches_up_after_its_restart() {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    let mut client = pair.active_client().await;
    for batch in 0..40 {
        let reqs: Vec<Vec<Bytes>> = (0..1000)
            .map(|i| {
                let id = format!("s{batch}-{i}");
                vec![
                    Bytes::from_static(b"SESSION.OPEN"),
                    Bytes::from(id),
                    Bytes::from_static(b"sub"),
                    Bytes::from(vec![b'x'; 200]),
                ]
            })
            .collect();
        for r in client.pipeline(&reqs).await.unwrap() {
            assert!(!r.is_error(), "{r}");
        }
    }
    // Kill the standby, then kill its replacement as soon as it exists: mid catch-up.
    let s = pair.status().await;
    let first = Pair::engine(&s, "standby").unwrap()["pid"]
        .as_u64()
        .unwrap();
    kill9(first);
    let s = pair
        .wait_for(|s| {
            Pair::engine(s, "standby")
                .is_some_and(|e| e["pid"].as_u64().is_some_and(|p| p != first))
        })
        .await;
    let second = Pair::engine(&s, "standby").unwrap()["pid"]
        .as_u64()
        .unwrap();
    kill9(second);
    let s = pair
        .wait_for(|s| {
            let e = s["engines"].as_array().unwrap();
            s["standby_promotable"] == true
                && e.iter()
                    .all(|e| e["pid"].as_u64() != Some(second) && e["pid"].as_u64() != Some(first))
                && e[0]["digest"] == e[1]["digest"]
        })
        .await;
    for e in s["engines"].as_array().unwrap() {
        assert_eq!(e["work_units"], 40_000, "{e:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_catches_up_while_writes_go_on_ends_with_the_actives_digest() {
    catch_up_while_writes_go_on(Pair::up()).await;
}

/// The same on io_uring links: the active's slices and the standby's acks on the other driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_catches_up_on_io_uring_while_writes_go_on_ends_with_the_actives_digest() {
    catch_up_while_writes_go_on(Pair::up_with(&["--io", "uring"])).await;
}

async fn catch_up_while_writes_go_on(pair: Pair) {
    pair.wait_in_sync().await;
    common::preload(&pair, 100_000, 100).await;
    let writer = Writer::start(&pair, "during-catch-up");
    writer.wait_for_more(500).await;
    // A new standby takes a snapshot of 100,000 sessions while the writer keeps writing: the
    // shards go over interleaved with the live batches.
    let s = pair.status().await;
    let old = common::pid_of(&s, "standby");
    kill9(old);
    pair.wait_for(|s| {
        s["standby_promotable"] == true
            && Pair::engine(s, "standby").is_some_and(|e| e["pid"].as_u64() != Some(old))
    })
    .await;
    writer.wait_for_more(500).await;
    let report = writer.finish().await;
    let s = pair
        .wait_for(|s| {
            let e = s["engines"].as_array().unwrap();
            e[0]["digest"] == e[1]["digest"] && e[0]["seq_applied"] == e[1]["seq_applied"]
        })
        .await;
    for e in s["engines"].as_array().unwrap() {
        assert_eq!(e["work_units"], 100_000, "{e:#}");
    }
    let mut client = pair.active_client().await;
    let missing = common::lost(&mut client, &report.acked).await;
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost",
        missing.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_both_ports_is_refused_and_the_engine_keeps_serving() {
    let pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let active = Pair::engine(&s, "active").unwrap().clone();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for port in ["replication_addr", "client_addr"] {
        for round in 0..20 {
            let mut garbage = vec![0u8; 64 + round * 97];
            for b in garbage.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if round % 2 == 0 {
                garbage[0] = b'*'; // looks like RESP, then isn't
            }
            let mut stream = tokio::net::TcpStream::connect(active[port].as_str().unwrap())
                .await
                .unwrap();
            let _ = stream.write_all(&garbage).await;
            let _ = stream.shutdown().await;
        }
    }
    let mut client = pair.active_client().await;
    assert_eq!(
        client.call(&[b"SET", b"still", b"serving"]).await.unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        client.call(&[b"GET", b"still"]).await.unwrap().as_bytes(),
        Some(&b"serving"[..])
    );
    let s = pair.wait_in_sync().await;
    let a = Pair::engine(&s, "active").unwrap();
    assert_eq!(a["pid"], active["pid"], "the active kept running");
    assert!(a["counters"]["replication_links_refused"].as_u64().unwrap() >= 20);
    let _ = Duration::ZERO;
}
