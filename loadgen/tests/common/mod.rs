//! Test doubles for the load generator's integration tests: a fake engine pair speaking RESP
//! (built with the `resp` crate's parser and reply encoders) whose behaviour a test bends
//! with a hook per request (stall, flip the active, drop a write, close the connection), and
//! a fake supervisor admin endpoint that streams timeline events to `SUBSCRIBE`.

#![allow(dead_code)]

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use reports::timeline::Event;
use resp::{reply, Command, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What a fake engine does with one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Normal,
    /// Send the replies so far, wait, then answer normally (a stall).
    PauseThenNormal(Duration),
    /// Acknowledge a write without applying it (a lost update).
    AckWithoutApplying,
    /// Close the connection without answering; the engine accepts no more clients.
    GoDown,
}

pub type Hook = Box<dyn Fn(&Engine, u64, &Command) -> Action + Send + Sync>;

#[derive(Default)]
pub struct Session {
    pub counter: u64,
    pub subscriber: Vec<u8>,
    pub payload: Vec<u8>,
}

/// The replicated state of the fake pair (both engines share it: perfect replication).
#[derive(Default)]
pub struct Store {
    pub kv: HashMap<Vec<u8>, Vec<u8>>,
    pub sessions: HashMap<Vec<u8>, Session>,
    pub hashes: HashMap<Vec<u8>, HashMap<Vec<u8>, Vec<u8>>>,
}

/// Which engine of the pair is active, and their addresses.
pub struct Pair {
    pub active: AtomicUsize,
    pub addrs: Mutex<Vec<String>>,
    pub store: Mutex<Store>,
}

/// One fake engine.
pub struct Engine {
    pub index: usize,
    pub pair: Arc<Pair>,
    /// Requests answered so far (`ROLE` and `PING` excluded), numbered from 1.
    pub requests: AtomicU64,
    pub down: AtomicBool,
    /// `WAIT`'s answer (Redis dialect): replicas that acknowledged.
    pub wait_replicas: AtomicU64,
    hook: Hook,
}

impl Engine {
    pub fn addr(&self) -> String {
        self.pair.addrs.lock().unwrap()[self.index].clone()
    }

    pub fn is_active(&self) -> bool {
        self.pair.active.load(Ordering::SeqCst) == self.index
    }

    /// Makes engine `index` the active of the pair.
    pub fn make_active(&self, index: usize) {
        self.pair.active.store(index, Ordering::SeqCst);
    }
}

/// A fake engine answers `ROLE`, `PING`, `CLIENT` and `INFO` without counting them or asking
/// its hook. Starts a pair of fake engines on loopback ports chosen by the OS; engine 0 is active.
/// `hooks[i]` decides for engine i what to do with each request.
pub async fn start_pair(hooks: Vec<Hook>) -> Vec<Arc<Engine>> {
    let pair = Arc::new(Pair {
        active: AtomicUsize::new(0),
        addrs: Mutex::new(Vec::new()),
        store: Mutex::new(Store::default()),
    });
    let mut listeners = Vec::new();
    for _ in &hooks {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        pair.addrs
            .lock()
            .unwrap()
            .push(listener.local_addr().unwrap().to_string());
        listeners.push(listener);
    }
    let mut engines = Vec::new();
    for (index, (hook, listener)) in hooks.into_iter().zip(listeners).enumerate() {
        let engine = Arc::new(Engine {
            index,
            pair: pair.clone(),
            requests: AtomicU64::new(0),
            down: AtomicBool::new(false),
            wait_replicas: AtomicU64::new(1),
            hook,
        });
        tokio::spawn(serve(engine.clone(), listener));
        engines.push(engine);
    }
    engines
}

/// One fake engine that is always active.
pub async fn start_one(hook: Hook) -> Arc<Engine> {
    start_pair(vec![hook]).await.remove(0)
}

pub fn normal() -> Hook {
    Box::new(|_, _, _| Action::Normal)
}

async fn serve(engine: Arc<Engine>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        if engine.down.load(Ordering::SeqCst) {
            drop(stream); // a dead engine: the client sees the connection close
            continue;
        }
        tokio::spawn(connection(engine.clone(), stream));
    }
}

async fn connection(engine: Arc<Engine>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut input = BytesMut::with_capacity(16 << 10);
    let mut out = BytesMut::new();
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let cmd = match resp::parse_command(&mut input, &limits) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err(e) => {
                    reply::error(&mut out, &e.to_string());
                    let _ = stream.write_all(&out).await;
                    return;
                }
            };
            if engine.down.load(Ordering::SeqCst) {
                return;
            }
            let upper = cmd.args[0].to_ascii_uppercase();
            if upper == b"ROLE" || upper == b"PING" || upper == b"CLIENT" || upper == b"INFO" {
                control(&engine, &upper, &mut out);
                continue;
            }
            let n = engine.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let action = (engine.hook)(&engine, n, &cmd);
            match action {
                Action::GoDown => {
                    engine.down.store(true, Ordering::SeqCst);
                    let _ = stream.write_all(&out).await;
                    return;
                }
                Action::PauseThenNormal(pause) => {
                    if !out.is_empty() && stream.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    tokio::time::sleep(pause).await;
                    execute(&engine, &upper, &cmd, true, &mut out);
                }
                Action::AckWithoutApplying => execute(&engine, &upper, &cmd, false, &mut out),
                Action::Normal => execute(&engine, &upper, &cmd, true, &mut out),
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// What `INFO server` says the fake engine is (and `INFO tandem` its application).
pub const FAKE_TANDEM_VERSION: &str = "0.0.0-fake";
pub const FAKE_APP: &str = "fake 1.0";

fn control(engine: &Engine, upper: &[u8], out: &mut BytesMut) {
    if upper == b"INFO" {
        let info = format!(
            "# Server\r\nredis_version:7.2.0\r\ntandem_version:{FAKE_TANDEM_VERSION}\r\n\r\n# Tandem\r\napp:{FAKE_APP}\r\n"
        );
        reply::bulk(out, info.as_bytes());
    } else if upper == b"PING" {
        reply::simple(out, "PONG");
    } else if upper == b"CLIENT" {
        reply::simple(out, "OK"); // CLIENT NOTACTIVE ON, which a real engine takes too
    } else if engine.is_active() {
        reply::array_len(out, 3);
        reply::bulk(out, b"master");
        reply::integer(out, 0);
        reply::array_len(out, 0);
    } else {
        reply::array_len(out, 2);
        reply::bulk(out, b"slave");
        reply::bulk(out, b"127.0.0.1");
    }
}

/// Executes one command the way the tandem reference application (and Redis, for the
/// hash commands) would; `apply` false acknowledges a write without changing anything.
fn execute(engine: &Engine, upper: &[u8], cmd: &Command, apply: bool, out: &mut BytesMut) {
    if !engine.is_active() {
        let active = engine.pair.active.load(Ordering::SeqCst);
        let hint = engine.pair.addrs.lock().unwrap()[active].clone();
        reply::error(out, &format!("NOTACTIVE {hint}"));
        return;
    }
    let arg = |i: usize| cmd.args.get(i).map(|a| a.to_vec()).unwrap_or_default();
    let mut store = engine.pair.store.lock().unwrap();
    match upper {
        b"SET" => {
            if apply {
                store.kv.insert(arg(1), arg(2));
            }
            reply::simple(out, "OK");
        }
        b"GET" => match store.kv.get(&arg(1)) {
            Some(v) => reply::bulk(out, v),
            None => reply::null_bulk(out),
        },
        b"SESSION.OPEN" => match store.sessions.entry(arg(1)) {
            Entry::Occupied(_) => reply::error(out, "ERR session exists"),
            Entry::Vacant(slot) => {
                if apply {
                    slot.insert(Session {
                        counter: 0,
                        subscriber: arg(2),
                        payload: arg(3),
                    });
                }
                reply::simple(out, "OK");
            }
        },
        b"SESSION.UPDATE" => match store.sessions.get_mut(&arg(1)) {
            Some(s) => {
                if apply {
                    s.counter += 1;
                }
                reply::integer(out, s.counter as i64 + i64::from(!apply));
            }
            None => reply::error(out, "ERR no such session"),
        },
        b"SESSION.END" => {
            let id = arg(1);
            let Some(session) = store.sessions.get(&id) else {
                reply::error(out, "ERR no such session");
                return;
            };
            if apply {
                let record = [
                    session.subscriber.clone(),
                    format!(" {}", session.counter).into_bytes(),
                ]
                .concat();
                store.sessions.remove(&id);
                store.kv.insert([b"cdr:".to_vec(), id].concat(), record);
            }
            reply::simple(out, "OK");
        }
        b"SESSION.GET" => match store.sessions.get(&arg(1)) {
            Some(s) => {
                reply::array_len(out, 4);
                reply::bulk(out, if s.counter == 0 { b"open" } else { b"active" });
                reply::integer(out, s.counter as i64);
                reply::bulk(out, &s.subscriber);
                reply::bulk(out, &s.payload);
            }
            None => reply::null_array(out),
        },
        // Redis: the hash commands the session emulation uses, and WAIT.
        b"HSET" => {
            let hash = store.hashes.entry(arg(1)).or_default();
            let mut added = 0;
            for pair in cmd.args[2..].chunks(2) {
                if pair.len() == 2
                    && apply
                    && hash.insert(pair[0].to_vec(), pair[1].to_vec()).is_none()
                {
                    added += 1;
                }
            }
            reply::integer(out, added);
        }
        b"HINCRBY" => {
            let hash = store.hashes.entry(arg(1)).or_default();
            let field = hash.entry(arg(2)).or_insert_with(|| b"0".to_vec());
            let n: i64 = String::from_utf8_lossy(field).parse().unwrap_or(0) + 1;
            if apply {
                *field = n.to_string().into_bytes();
            }
            reply::integer(out, n);
        }
        b"HGET" => match store.hashes.get(&arg(1)).and_then(|h| h.get(&arg(2))) {
            Some(v) => reply::bulk(out, v),
            None => reply::null_bulk(out),
        },
        b"RENAME" => match store.hashes.remove(&arg(1)) {
            Some(h) => {
                if apply {
                    store.hashes.insert(arg(2), h);
                } else {
                    store.hashes.insert(arg(1), h);
                }
                reply::simple(out, "OK");
            }
            None => reply::error(out, "ERR no such key"),
        },
        b"WAIT" => reply::integer(out, engine.wait_replicas.load(Ordering::SeqCst) as i64),
        _ => reply::error(out, "ERR unknown command"),
    }
}

/// A fake supervisor admin endpoint: checks the pair's secret as the real one does, then
/// answers `SUBSCRIBE` with every event sent through `events` (those sent before the
/// subscription are replayed first).
pub struct FakeAdmin {
    pub addr: String,
    pub events: mpsc::UnboundedSender<Event>,
    pub secret: auth::Secret,
}

pub async fn start_admin() -> FakeAdmin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let secret = auth::Secret::from_bytes(*b"loadgen-test-secret");
    let theirs = secret.clone();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut input = BytesMut::new();
        let mut gate = resp::auth::ServerAuth::new("admin");
        let mut out = BytesMut::new();
        loop {
            if let Ok(Some(cmd)) = resp::parse_command(&mut input, &Limits::default()) {
                if !gate.is_done() {
                    let verdict = gate.handle(&theirs, &cmd, &mut out);
                    stream.write_all(&out).await.unwrap();
                    out.clear();
                    assert_eq!(verdict, resp::auth::Gate::Handled, "the handshake");
                    continue;
                }
                assert!(cmd.name_upper_eq(b"SUBSCRIBE"), "expected SUBSCRIBE");
                break;
            }
            match stream.read_buf(&mut input).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let mut out = BytesMut::new();
        while let Some(event) = rx.recv().await {
            out.clear();
            reply::bulk(&mut out, serde_json::to_string(&event).unwrap().as_bytes());
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    FakeAdmin {
        addr,
        events: tx,
        secret,
    }
}

pub fn now_ms() -> u64 {
    reports::timeline::now_ms()
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The histogram of phase `name` in a run result.
pub fn histogram<'a>(
    result: &'a loadgen::RunResult,
    name: &str,
) -> &'a hdrhistogram::Histogram<u64> {
    &result
        .phase_histograms
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no phase {name}"))
        .1
}

/// The intervals of an HdrHistogram interval log, as HdrHistogram's own reader parses them:
/// `(tag, start seconds, samples)`.
pub fn hlog_intervals(log: &[u8]) -> Vec<(Option<String>, f64, u64)> {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let mut deserializer = Deserializer::new();
    IntervalLogIterator::new(log)
        .filter_map(|entry| match entry.expect("a well-formed interval log") {
            LogEntry::Interval(h) => {
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    h.encoded_histogram(),
                )
                .expect("base64");
                let histogram: hdrhistogram::Histogram<u64> = deserializer
                    .deserialize(&mut bytes.as_slice())
                    .expect("a histogram");
                Some((
                    h.tag().map(|t| t.as_str().to_string()),
                    h.start_timestamp().as_secs_f64(),
                    histogram.len(),
                ))
            }
            _ => None,
        })
        .collect()
}
