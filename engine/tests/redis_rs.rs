//! The `redis` crate (redis-rs), with its defaults, against a real pair: every string and key
//! command tandem serves, over RESP2 (its default) and RESP3, transactions with and without
//! WATCH, and its Sentinel client following a planned switchover and a SIGKILL failover
//! through the pair's discovery port with no acknowledged write lost.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{pid_of, Pair, DEADLINE};
use redis::{Commands, RedisResult};

fn active_port(s: &serde_json::Value) -> String {
    let addr = Pair::engine(s, "active").unwrap()["client_addr"]
        .as_str()
        .unwrap();
    addr.rsplit_once(':').unwrap().1.to_string()
}

/// Every command of the compatibility table on one connection; the keys written, with their
/// final values.
fn every_command(con: &mut redis::Connection, p: &str) -> HashMap<String, String> {
    let k = |name: &str| format!("{p}:{name}");
    let ok: RedisResult<()> = redis::cmd("PING").query(con);
    ok.unwrap();
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(con).unwrap();
    assert!(id > 0);
    let info: redis::InfoDict = redis::cmd("INFO").query(con).unwrap();
    assert_eq!(info.get::<String>("role").as_deref(), Some("master"));
    assert!(info.get::<String>("redis_version").is_some());
    let refused: RedisResult<()> = redis::cmd("SELECT").arg(3).query(con);
    assert!(refused.is_err());

    // Strings.
    let () = con.set(k("s"), "v1").unwrap();
    assert_eq!(con.get::<_, String>(k("s")).unwrap(), "v1");
    let opts = redis::SetOptions::default().conditional_set(redis::ExistenceCheck::NX);
    assert_eq!(
        con.set_options::<_, _, Option<String>>(k("s"), "no", opts)
            .unwrap(),
        None
    );
    let opts = redis::SetOptions::default()
        .conditional_set(redis::ExistenceCheck::XX)
        .get(true);
    let old: Option<String> = con.set_options(k("s"), "v2", opts).unwrap();
    assert_eq!(old.as_deref(), Some("v1"));
    assert_eq!(con.getset::<_, _, String>(k("s"), "v3").unwrap(), "v2");
    assert!(con.set_nx::<_, _, bool>(k("nx"), "1").unwrap());
    assert_eq!(con.get_del::<_, String>(k("nx")).unwrap(), "1");
    let () = con.mset(&[(k("m1"), "a"), (k("m2"), "b")]).unwrap();
    let got: Vec<Option<String>> = con.mget(&[k("m1"), k("m2"), k("none")]).unwrap();
    assert_eq!(got, [Some("a".into()), Some("b".into()), None]);
    assert!(!con
        .mset_nx::<_, _, bool>(&[(k("m1"), "z"), (k("m3"), "c")])
        .unwrap());
    assert_eq!(con.append::<_, _, i64>(k("m1"), "bc").unwrap(), 3);
    assert_eq!(con.strlen::<_, i64>(k("m1")).unwrap(), 3);
    assert_eq!(con.incr::<_, _, i64>(k("n"), 1).unwrap(), 1);
    assert_eq!(con.incr::<_, _, i64>(k("n"), 41).unwrap(), 42);
    assert_eq!(con.decr::<_, _, i64>(k("n"), 2).unwrap(), 40);
    assert_eq!(con.incr::<_, _, f64>(k("f"), 2.5).unwrap(), 2.5);
    let refused: RedisResult<i64> = con.incr(k("m1"), 1);
    assert!(refused.unwrap_err().to_string().contains("not an integer"));

    // Keys and expiry.
    assert_eq!(con.key_type::<_, String>(k("s")).unwrap(), "string");
    assert_eq!(
        con.exists::<_, i64>(&[k("s"), k("m1"), k("none")]).unwrap(),
        2
    );
    let () = con.set_ex(k("e"), "x", 100).unwrap();
    let ttl: i64 = con.ttl(k("e")).unwrap();
    assert!((90..=100).contains(&ttl), "{ttl}");
    let () = con.pset_ex(k("short"), "x", 50).unwrap();
    assert!(con.expire::<_, bool>(k("s"), 1000).unwrap());
    assert!(con.persist::<_, bool>(k("s")).unwrap());
    assert_eq!(con.ttl::<_, i64>(k("s")).unwrap(), -1);
    assert!(con.pexpire::<_, bool>(k("e"), 200_000).unwrap());
    assert!(con.pttl::<_, i64>(k("e")).unwrap() > 100_000);
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 500;
    assert!(con.expire_at::<_, bool>(k("e"), at as i64).unwrap());
    assert_eq!(
        con.get_ex::<_, String>(k("e"), redis::Expiry::PERSIST)
            .unwrap(),
        "x"
    );
    assert_eq!(con.ttl::<_, i64>(k("e")).unwrap(), -1);
    let end = Instant::now() + DEADLINE;
    while con.exists::<_, bool>(k("short")).unwrap() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10)); // polls for the event, with a deadline
    }
    assert!(!con.exists::<_, bool>(k("short")).unwrap(), "PX 50 expired");
    let () = con.set(k("gone"), "x").unwrap();
    assert_eq!(con.del::<_, i64>(k("gone")).unwrap(), 1);
    assert_eq!(con.unlink::<_, i64>(&[k("m2"), k("none")]).unwrap(), 1);

    // Transactions: an atomic pipeline, and WATCH through redis-rs's transaction helper.
    let (a, b): (i64, String) = redis::pipe()
        .atomic()
        .incr(k("t"), 5)
        .ignore()
        .incr(k("t"), 1)
        .set(k("t2"), "y")
        .ignore()
        .get(k("t2"))
        .query(con)
        .unwrap();
    assert_eq!((a, b.as_str()), (6, "y"));
    let (w,): (i64,) = redis::transaction(con, &[k("w")], |con, pipe| {
        let n: i64 = con.get::<_, Option<i64>>(k("w"))?.unwrap_or(0);
        pipe.set(k("w"), n + 1).ignore().get(k("w")).query(con)
    })
    .unwrap();
    assert_eq!(w, 1);

    // SCAN, as scan_match drives it.
    for i in 0..300 {
        let () = con.set(k(&format!("p{i}")), i).unwrap();
    }
    let seen: std::collections::HashSet<String> =
        con.scan_match::<_, String>(k("p*")).unwrap().collect();
    assert_eq!(seen.len(), 300);

    let mut written = HashMap::new();
    for name in ["s", "m1", "n", "f", "t", "t2", "w", "e"]
        .into_iter()
        .map(String::from)
        .chain((0..300).map(|i| format!("p{i}")))
    {
        let v: String = con.get(k(&name)).unwrap();
        written.insert(k(&name), v);
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_runs_every_command_over_resp2_and_resp3_and_loses_nothing() {
    let pair = Pair::up();
    let port = active_port(&pair.wait_in_sync().await);
    let written = tokio::task::spawn_blocking(move || {
        let mut written = HashMap::new();
        for (url, p) in [
            (format!("redis://127.0.0.1:{port}/"), "rs2"),
            (format!("redis://127.0.0.1:{port}/?protocol=resp3"), "rs3"),
        ] {
            let client = redis::Client::open(url.as_str()).expect("a URL redis-rs takes");
            let mut con = client.get_connection().expect("redis-rs connects");
            written.extend(every_command(&mut con, p));
        }
        // FLUSHDB empties the database in one update; what follows is written again.
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection().unwrap();
        let () = redis::cmd("FLUSHDB").query(&mut con).unwrap();
        assert_eq!(redis::cmd("DBSIZE").query::<i64>(&mut con).unwrap(), 0);
        for (k, v) in &written {
            let () = con.set(k, v).unwrap();
        }
        written
    })
    .await
    .unwrap();
    pair.wait_for(|s| {
        let e = s["engines"].as_array().unwrap();
        e[0]["digest"] == e[1]["digest"]
    })
    .await;
    common::assert_none_lost(&pair, &written).await;
}

/// Writes `key:i = i` through the Sentinel client until told to stop; a write that fails is
/// sent again on a connection to whatever Sentinel names as the primary then.
fn sentinel_writer(
    sentinel: String,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> (HashMap<String, String>, u64) {
    let mut client = redis::sentinel::SentinelClient::build(
        vec![format!("redis://{sentinel}/")],
        "tandem".to_string(),
        None,
        redis::sentinel::SentinelServerType::Master,
    )
    .expect("a Sentinel client");
    let mut con = None;
    let (mut written, mut retries) = (HashMap::new(), 0);
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = (format!("rss:{i}"), i.to_string());
        let end = Instant::now() + DEADLINE;
        loop {
            if con.is_none() {
                con = client.get_connection().ok();
            }
            let done = con
                .as_mut()
                .map(|c: &mut redis::Connection| c.set::<_, _, ()>(&key, &value));
            match done {
                Some(Ok(())) => break,
                _ => {
                    con = None;
                    retries += 1;
                    assert!(Instant::now() < end, "no primary took {key} in time");
                    std::thread::sleep(Duration::from_millis(20)); // back off, then ask again
                }
            }
        }
        written.insert(key, value);
        i += 1;
        acked.store(i, Ordering::Relaxed);
    }
    (written, retries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_sentinel_follows_a_switchover_and_a_sigkill_failover_losing_nothing() {
    let pair = Pair::up();
    pair.wait_in_sync().await;
    let text = std::fs::read(pair.dir.join("pair.json")).expect("pair.json");
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let sentinel = v["sentinel_addr"]
        .as_str()
        .expect("sentinel_addr")
        .to_string();
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || sentinel_writer(sentinel, acked, stop))
    };
    let more = |n: u64| {
        let acked = acked.clone();
        async move {
            let target = acked.load(Ordering::Relaxed) + n;
            let end = Instant::now() + DEADLINE;
            while acked.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < end, "the writer stopped short of {target}");
                tokio::time::sleep(Duration::from_millis(5)).await; // polls a counter
            }
        }
    };
    more(200).await;
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    more(300).await;
    let s = pair.status().await;
    common::kill9(pid_of(&s, "active"));
    more(300).await;
    stop.store(true, Ordering::Relaxed);
    let (written, retries) = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    eprintln!(
        "redis-rs: {} writes acknowledged, {retries} sent again",
        written.len()
    );
    common::assert_none_lost(&pair, &written).await;
}
