//! Real Redis client libraries, with their defaults, against the active of a real pair:
//! redis-py (RESP3 by default, and `protocol=2`), installed by scripts/setup.sh; the test
//! fails if it is missing, it never skips. Every value the client saw written is read back
//! afterwards, and both engines' digests agree.

mod common;

use std::collections::HashMap;
use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{lost, pid_of, Pair, DEADLINE};
use resp::{Client, Reply};

/// Runs the redis-py script against `port`; the keys it wrote and their values.
fn redis_py(
    port: &str,
    protocol: &str,
    prefix: &str,
    password: Option<&str>,
) -> HashMap<String, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/redis_py.py");
    let out = Command::new("python3")
        .args([script, port, protocol, prefix])
        .args(password)
        .output()
        .expect("python3 (scripts/setup.sh installs it, and redis-py)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.ends_with("ok\n"),
        "redis-py, protocol {protocol}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = if protocol == "default" { "3" } else { protocol };
    assert!(
        stdout.contains(&format!("handshake: protocol {shown}")),
        "{stdout}"
    );
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("KEY "))
        .map(|kv| {
            let (k, v) = kv.split_once(' ').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Waits for equal digests, then reads every written value back from the active.
async fn nothing_lost(pair: &Pair, written: &HashMap<String, String>, password: Option<&str>) {
    assert!(written.len() > 200, "{} keys", written.len());
    pair.wait_for(|s| {
        let e = s["engines"].as_array().unwrap();
        e[0]["digest"] == e[1]["digest"]
    })
    .await;
    let mut client = pair.active_client().await;
    if let Some(p) = password {
        let reply = client.call(&[b"AUTH", p.as_bytes()]).await.expect("AUTH");
        assert!(!reply.is_error(), "{reply}");
    }
    let missing = lost(&mut client, written).await;
    assert!(missing.is_empty(), "lost: {missing:?}");
}

fn active_port(s: &serde_json::Value) -> String {
    let addr = Pair::engine(s, "active").unwrap()["client_addr"]
        .as_str()
        .unwrap();
    addr.rsplit_once(':').unwrap().1.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_with_its_defaults_and_with_resp2_runs_every_command_on_the_active() {
    let pair = Pair::up();
    let port = active_port(&pair.wait_in_sync().await);
    let mut written = redis_py(&port, "default", "py", None);
    written.extend(redis_py(&port, "2", "py2", None));
    nothing_lost(&pair, &written, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_authenticates_in_its_hello_with_requirepass() {
    let pair = Pair::up_with(&["--requirepass", "s3cret-pass"]);
    let port = active_port(&pair.wait_in_sync().await);
    let mut written = redis_py(&port, "default", "py", Some("s3cret-pass"));
    written.extend(redis_py(&port, "2", "py2", Some("s3cret-pass")));
    nothing_lost(&pair, &written, Some("s3cret-pass")).await;
}

/// The pair's Sentinel discovery address, from pair.json.
fn sentinel_addr(pair: &Pair) -> String {
    let text = std::fs::read(pair.dir.join("pair.json")).expect("pair.json");
    let v: serde_json::Value = serde_json::from_slice(&text).expect("pair.json is JSON");
    v["sentinel_addr"]
        .as_str()
        .expect("sentinel_addr")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_sentinel_follows_a_switchover_and_a_sigkill_failover_losing_nothing() {
    let pair = Pair::up();
    let s = pair.wait_in_sync().await;
    let sentinel = sentinel_addr(&pair);
    let active = Pair::engine(&s, "active").unwrap()["client_addr"]
        .as_str()
        .unwrap()
        .to_string();
    // What a Sentinel client asks first.
    let mut c = Client::connect_timeout(sentinel.as_str(), Duration::from_secs(5))
        .await
        .expect("discovery port");
    let reply = c
        .call(&[b"SENTINEL", b"get-master-addr-by-name", b"tandem"])
        .await
        .unwrap();
    let (host, port) = active.rsplit_once(':').unwrap();
    assert_eq!(reply.to_string(), format!("1) \"{host}\"\n2) \"{port}\""));
    let mut switches = Client::connect_timeout(sentinel.as_str(), Duration::from_secs(5))
        .await
        .unwrap();
    switches.queue(&[b"SUBSCRIBE", b"+switch-master"]);
    switches.flush().await.unwrap();
    switches.read_reply().await.expect("subscribed");

    let stop = pair.dir.join("stop-writer");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/redis_py_sentinel.py"
    );
    let sentinel_port = sentinel.rsplit_once(':').unwrap().1.to_string();
    let mut child = Command::new("python3")
        .args([
            script,
            &sentinel_port,
            "tandem",
            "sx",
            stop.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/setup.sh installs it, and redis-py)");
    let (tx, acked) = tokio::sync::watch::channel(0u64);
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut written = HashMap::new();
        let mut tail = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(n) = line.strip_prefix("ACKED ") {
                tx.send_replace(n.parse().unwrap());
            } else if let Some(kv) = line.strip_prefix("KEY ") {
                let (k, v) = kv.split_once(' ').unwrap();
                written.insert(k.to_string(), v.to_string());
            } else {
                tail.push(line);
            }
        }
        (written, tail)
    });
    let more = |n: u64| {
        let mut acked = acked.clone();
        async move {
            let target = *acked.borrow() + n;
            let reached = tokio::time::timeout(DEADLINE, acked.wait_for(|&a| a >= target))
                .await
                .is_ok_and(|r| r.is_ok());
            let now = *acked.borrow();
            assert!(reached, "redis-py stopped at {now} of {target}");
        }
    };
    more(200).await;
    let reply = pair.admin(&["SWITCHOVER"]).await;
    assert!(!reply.is_error(), "{reply}");
    let message = tokio::time::timeout(DEADLINE, switches.read_reply())
        .await
        .expect("+switch-master within the deadline")
        .unwrap();
    let Reply::Array(parts) = &message else {
        panic!("{message}")
    };
    assert_eq!(parts[1].as_bytes(), Some(&b"+switch-master"[..]));
    let text = String::from_utf8_lossy(parts[2].as_bytes().unwrap()).into_owned();
    assert!(
        text.starts_with(&format!("tandem {host} {port} ")),
        "{text}"
    );
    more(300).await;
    let s = pair.status().await;
    common::kill9(pid_of(&s, "active"));
    more(300).await;
    std::fs::write(&stop, b"").unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap();
    let (written, tail) = reader.join().unwrap();
    assert!(status.unwrap().success(), "{tail:?}");
    assert_eq!(tail.last().map(String::as_str), Some("ok"), "{tail:?}");
    // It did meet the switchover and the failover: some writes had to be sent again.
    let retries: u64 = tail
        .iter()
        .find_map(|l| l.strip_prefix("retries "))
        .and_then(|n| n.parse().ok())
        .expect("retries line");
    assert!(retries >= 1, "{tail:?}");
    eprintln!(
        "redis-py: {} writes acknowledged, {retries} sent again",
        written.len()
    );
    common::assert_none_lost(&pair, &written).await;
}
