//! redis-cli and redis-benchmark work against the active of a pair (installed by
//! scripts/setup.sh; the test fails if they are missing, it never skips).

mod common;

use std::process::Command;

use common::Pair;

fn port_of(addr: &str) -> String {
    addr.rsplit_once(':').unwrap().1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_and_redis_benchmark_work_against_the_active() {
    let pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let port = port_of(
        Pair::engine(&s, "active").unwrap()["client_addr"]
            .as_str()
            .unwrap(),
    );
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("redis-cli installed (scripts/setup.sh)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    assert_eq!(cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "hello");
    assert_eq!(cli(&["SESSION.OPEN", "call-1", "alice"]), "OK");
    assert!(cli(&["ROLE"]).starts_with("master"));
    let standby_port = port_of(
        Pair::engine(&s, "standby").unwrap()["client_addr"]
            .as_str()
            .unwrap(),
    );
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &standby_port, "SET", "x", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("READONLY"), "standby answered {text}");

    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "ping,set,get,incr,mset",
            "-n",
            "20000",
            "-P",
            "16",
            "-c",
            "4",
            "-q",
        ])
        .output()
        .expect("redis-benchmark installed (scripts/setup.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for test in [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "MSET (10 keys)",
    ] {
        assert!(
            out.status.success() && text.contains(&format!("{test}:")),
            "redis-benchmark has no {test} line: {text} {stderr}"
        );
    }
    assert!(
        !text.contains("ERR") && !stderr.contains("ERR"),
        "{text} {stderr}"
    );
    let s = pair
        .wait_for(|s| {
            let e = s["engines"].as_array().unwrap();
            e[0]["digest"] == e[1]["digest"]
        })
        .await;
    assert!(s["engines"][0]["seq_applied"].as_u64().unwrap() >= 20_000);
}
