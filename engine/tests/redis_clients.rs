//! Real Redis client libraries, with their defaults, against the active of a real pair:
//! redis-py (RESP3 by default, and `protocol=2`), installed by scripts/setup.sh; the test
//! fails if it is missing, it never skips. Every value the client saw written is read back
//! afterwards, and both engines' digests agree.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{lost, Pair};

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
