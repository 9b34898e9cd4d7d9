//! Test harness: a real pair (`tandem pair up`) on OS-chosen loopback ports, torn down on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use resp::{Client, Reply};
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Pair {
    supervisor: Child,
    pub admin: String,
    pub dir: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Pair {
    pub fn up() -> Pair {
        let dir = std::env::temp_dir().join(format!(
            "tandem-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut supervisor = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["pair", "up", "--base-port", "0", "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start tandem pair up");
        let stdout = supervisor.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(admin) = line.strip_prefix("READY admin=") {
                    let _ = tx.send(admin.to_string());
                }
            }
        });
        let admin = rx.recv_timeout(DEADLINE).expect("pair ready");
        Pair {
            supervisor,
            admin,
            dir,
        }
    }

    pub async fn admin(&self, args: &[&str]) -> Reply {
        let mut c = Client::connect_timeout(&self.admin, Duration::from_secs(5))
            .await
            .expect("admin reachable");
        c.set_timeout(Some(Duration::from_secs(30)));
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        c.call(&parts).await.expect("admin call")
    }

    pub async fn status(&self) -> Value {
        match self.admin(&["STATUS"]).await {
            Reply::Bulk(b) => serde_json::from_slice(&b).expect("status json"),
            other => panic!("status: {other}"),
        }
    }

    pub fn engine<'a>(status: &'a Value, role: &str) -> Option<&'a Value> {
        status["engines"]
            .as_array()?
            .iter()
            .find(|e| e["role"] == role)
    }

    /// Waits until the pair has an active and an in-sync standby; returns the status.
    pub async fn wait_in_sync(&self) -> Value {
        self.wait_for(|s| {
            s["standby_promotable"] == true
                && Pair::engine(s, "standby").is_some_and(|e| e["in_sync"] == true)
        })
        .await
    }

    /// Polls the pair's status until `cond` holds, failing after the deadline.
    pub async fn wait_for(&self, cond: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let s = self.status().await;
            if cond(&s) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "condition not reached; last status: {s:#}"
            );
        }
    }

    pub async fn active_client(&self) -> Client {
        let s = self.wait_for(|s| Pair::engine(s, "active").is_some()).await;
        let addr = Pair::engine(&s, "active").unwrap()["client_addr"]
            .as_str()
            .unwrap()
            .to_string();
        Client::connect_timeout(addr, Duration::from_secs(5))
            .await
            .expect("connect to the active")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SIGKILL the supervisor: its engines exit when their stdin closes.
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn kill9(pid: u64) {
    let ok = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -9 {pid}");
}

pub fn set(key: &str, value: &str) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"SET"),
        Bytes::from(key.to_string()),
        Bytes::from(value.to_string()),
    ]
}

pub fn get(key: &str) -> Vec<Bytes> {
    vec![Bytes::from_static(b"GET"), Bytes::from(key.to_string())]
}
