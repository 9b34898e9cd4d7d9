//! The pair supervisor: starts engines A and B as child processes of its own executable,
//! serves the admin endpoint, and is the arbiter of epochs.
//!
//! It renews the active's lease every tick and learns from the reply whether the standby is
//! in sync; only an in-sync standby may be promoted, and the supervisor marks it stale before
//! it lets the active run simplex. A dead active (its process exited, or it stopped answering
//! and was killed) is replaced by promoting the standby with a new epoch; a dead engine is
//! restarted as the standby of the active and catches up.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use resp::{reply, Client, Reply};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

const TICK: Duration = Duration::from_millis(50);
const LEASE_TTL_MS: u64 = 500;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Missed lease renewals after which a live but silent active is killed and replaced.
const SILENT_TICKS_MAX: u32 = 20;

#[derive(Clone, Debug)]
pub struct PairArgs {
    pub dir: PathBuf,
    pub base_port: u16,
    pub app_version: String,
}

struct Slot {
    name: &'static str,
    client_addr: String,
    replication_addr: String,
    app_version: String,
    pid: Option<u32>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    client: Option<Client>,
    last_status: Option<Value>,
}

enum Event {
    Exited {
        slot: usize,
        pid: u32,
    },
    Admin {
        cmd: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

struct Supervisor {
    args: PairArgs,
    admin_addr: String,
    slots: [Slot; 2],
    active: usize,
    epoch: u64,
    promotable: bool,
    silent_ticks: u32,
    events: mpsc::UnboundedSender<Event>,
}

#[derive(Serialize)]
struct PairFile<'a> {
    admin: &'a str,
    epoch: u64,
    engines: Vec<Value>,
}

fn addr_for(base: u16, offset: u16) -> String {
    if base == 0 {
        "127.0.0.1:0".into()
    } else {
        format!("127.0.0.1:{}", base + offset)
    }
}

pub fn run_pair(args: PairArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
        let admin = TcpListener::bind(addr_for(args.base_port, 0))
            .await
            .context("binding the admin endpoint")?;
        let admin_addr = admin.local_addr()?.to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let slot = |name, offset: u16| Slot {
            name,
            client_addr: addr_for(args.base_port, offset),
            replication_addr: addr_for(args.base_port, offset + 1),
            app_version: args.app_version.clone(),
            pid: None,
            child: None,
            stdin: None,
            client: None,
            last_status: None,
        };
        let mut sup = Supervisor {
            slots: [slot("a", 1), slot("b", 3)],
            args: args.clone(),
            admin_addr: admin_addr.clone(),
            active: 0,
            epoch: 1,
            promotable: false,
            silent_ticks: 0,
            events: tx.clone(),
        };
        sup.start(0, None).await?;
        let follow = sup.slots[0].replication_addr.clone();
        sup.start(1, Some(follow)).await?;
        tokio::spawn(serve_admin(admin, tx.clone()));
        sup.write_pair_file();
        println!("READY admin={admin_addr}");
        eprintln!(
            "pair up: admin {admin_addr}, a active on {}, b standby on {}",
            sup.slots[0].client_addr, sup.slots[1].client_addr
        );
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => sup.tick().await,
                ev = rx.recv() => match ev {
                    Some(Event::Exited { slot, pid }) => sup.on_exit(slot, pid).await,
                    Some(Event::Admin { cmd, reply }) => {
                        let down = cmd.first().is_some_and(|c| c.eq_ignore_ascii_case("SHUTDOWN"));
                        let result = sup.admin(cmd).await;
                        let _ = reply.send(result);
                        if down {
                            break;
                        }
                    }
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        sup.stop_all().await;
        let _ = std::fs::remove_file(sup.args.dir.join("pair.json"));
        eprintln!("pair down");
        Ok(())
    })
}

impl Supervisor {
    fn standby(&self) -> usize {
        1 - self.active
    }

    /// Starts an engine process: as the active (no `follow`) or following an address.
    async fn start(&mut self, i: usize, follow: Option<String>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the tandem executable")?;
        let slot = &self.slots[i];
        let mut cmd = Command::new(exe);
        cmd.arg("engine")
            .args(["--name", slot.name])
            .args(["--client-addr", &slot.client_addr])
            .args(["--replication-addr", &slot.replication_addr])
            .args(["--app-version", &slot.app_version])
            .args(["--epoch", &self.epoch.to_string()])
            .arg("--supervised")
            .arg("--exit-with-stdin");
        match &follow {
            Some(addr) => cmd.args(["--follow", addr]),
            None => cmd.args(["--active-epoch", &self.epoch.to_string()]),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.args.dir.join(format!("{}.log", slot.name)))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting an engine process")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(json) = line.strip_prefix("READY ") {
                    return Ok::<_, anyhow::Error>(serde_json::from_str::<Value>(json)?);
                }
            }
            bail!(
                "engine {} exited before it was ready (see its log)",
                self.slots[i].name
            )
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "engine {} not ready within {:?}",
                self.slots[i].name,
                START_TIMEOUT
            )
        })??;
        let slot = &mut self.slots[i];
        slot.client_addr = ready["client_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        slot.replication_addr = ready["replication_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let pid = child.id().unwrap_or(0);
        slot.pid = Some(pid);
        slot.stdin = child.stdin.take();
        slot.client = None;
        // Keep draining stdout so the engine never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let events = self.events.clone();
        let mut waiter = child;
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        slot.child = None;
        tokio::spawn(async move {
            tokio::select! {
                _ = waiter.wait() => {}
                _ = kill_rx => { let _ = waiter.kill().await; }
            }
            let _ = events.send(Event::Exited { slot: i, pid });
        });
        KILLERS.with(|k| k.borrow_mut().insert(pid, kill_tx));
        eprintln!(
            "started engine {} (pid {pid}) on {}",
            slot.name, slot.client_addr
        );
        Ok(())
    }

    async fn call(&mut self, i: usize, args: &[&str]) -> Result<Reply, String> {
        let slot = &mut self.slots[i];
        if slot.client.is_none() {
            let mut c = Client::connect_timeout(&slot.client_addr, CALL_TIMEOUT)
                .await
                .map_err(|e| format!("{e:?}"))?;
            c.set_timeout(Some(CALL_TIMEOUT));
            slot.client = Some(c);
        }
        let client = slot.client.as_mut().expect("connected above");
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match client.call(&parts).await {
            Ok(r) => Ok(r),
            Err(e) => {
                slot.client = None;
                Err(format!("{e:?}"))
            }
        }
    }

    async fn engine_status(&mut self, i: usize) -> Option<Value> {
        match self.call(i, &["TANDEM.STATUS"]).await {
            Ok(Reply::Bulk(b)) => serde_json::from_slice(&b).ok(),
            _ => None,
        }
    }

    /// Renews the active's lease, learns whether the standby is in sync.
    async fn tick(&mut self) {
        let active = self.active;
        if self.slots[active].pid.is_none() {
            return;
        }
        // Before the active may run simplex, the standby stops being promotable.
        let mode = if self.promotable { "sync" } else { "simplex" };
        let epoch = self.epoch.to_string();
        let ttl = LEASE_TTL_MS.to_string();
        match self
            .call(active, &["TANDEM.LEASE", &epoch, &ttl, mode])
            .await
        {
            Ok(Reply::Bulk(b)) => {
                self.silent_ticks = 0;
                if let Ok(status) = serde_json::from_slice::<Value>(&b) {
                    self.promotable = status["standby_in_sync"].as_bool() == Some(true);
                    self.slots[active].last_status = Some(status);
                }
            }
            Ok(other) => eprintln!("lease refused by {}: {other}", self.slots[active].name),
            Err(_) => {
                self.silent_ticks += 1;
                if self.silent_ticks == SILENT_TICKS_MAX {
                    eprintln!(
                        "active {} silent for {} ticks: killing it",
                        self.slots[active].name, SILENT_TICKS_MAX
                    );
                    if let Some(pid) = self.slots[active].pid {
                        kill(pid);
                    }
                }
            }
        }
    }

    async fn on_exit(&mut self, i: usize, pid: u32) {
        if self.slots[i].pid != Some(pid) {
            return; // an engine we already replaced
        }
        let name = self.slots[i].name;
        self.slots[i].pid = None;
        self.slots[i].client = None;
        self.slots[i].stdin = None;
        let detected = Instant::now();
        if i == self.active {
            let other = self.standby();
            if !self.promotable {
                eprintln!("active {name} died while {} was not in sync: promoting it anyway, writes acknowledged in simplex may be lost", self.slots[other].name);
            }
            self.epoch += 1;
            let epoch = self.epoch.to_string();
            match self.call(other, &["TANDEM.PROMOTE", &epoch]).await {
                Ok(r) if !r.is_error() => {
                    self.active = other;
                    self.promotable = false;
                    let ttl = LEASE_TTL_MS.to_string();
                    let _ = self
                        .call(other, &["TANDEM.LEASE", &epoch, &ttl, "simplex"])
                        .await;
                    eprintln!(
                        "failover: {name} (pid {pid}) died, {} promoted at epoch {} in {} ms",
                        self.slots[other].name,
                        self.epoch,
                        detected.elapsed().as_millis()
                    );
                }
                other_reply => eprintln!("failover of {name} failed: {other_reply:?}"),
            }
        } else {
            self.promotable = false;
            eprintln!("standby {name} (pid {pid}) died");
        }
        let follow = self.slots[self.active].replication_addr.clone();
        if let Err(e) = self.start(i, Some(follow)).await {
            eprintln!("restarting {name} failed: {e:#}");
        }
        self.write_pair_file();
    }

    async fn admin(&mut self, cmd: Vec<String>) -> Result<String, String> {
        let verb = cmd
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        match verb.as_str() {
            "PING" => Ok("PONG".into()),
            "STATUS" => {
                let mut engines = Vec::new();
                for i in 0..2 {
                    let status = match self.slots[i].pid {
                        Some(_) => self.engine_status(i).await,
                        None => None,
                    };
                    engines.push(status.unwrap_or_else(|| self.down_status(i)));
                }
                let pair = serde_json::json!({
                    "admin": self.admin_addr,
                    "epoch": self.epoch,
                    "active": self.slots[self.active].name,
                    "standby_promotable": self.promotable,
                    "engines": engines,
                });
                Ok(pair.to_string())
            }
            "SWITCHOVER" => self.switchover().await,
            "SHUTDOWN" => Ok("OK".into()),
            _ => Err(format!(
                "ERR unknown admin command '{verb}' (PING, STATUS, SWITCHOVER, SHUTDOWN)"
            )),
        }
    }

    fn down_status(&self, i: usize) -> Value {
        let s = &self.slots[i];
        serde_json::json!({
            "name": s.name, "role": "out_of_service", "app_version": s.app_version, "pid": Value::Null,
            "client_addr": s.client_addr, "replication_addr": s.replication_addr, "epoch": self.epoch,
        })
    }

    async fn switchover(&mut self) -> Result<String, String> {
        let (from, to) = (self.active, self.standby());
        if !self.promotable {
            return Err(format!(
                "ERR standby {} is not in sync: no switchover",
                self.slots[to].name
            ));
        }
        let epoch = self.epoch + 1;
        let started = Instant::now();
        let reply = self
            .call(from, &["TANDEM.SWITCHOVER", &epoch.to_string()])
            .await?;
        if let Some(msg) = reply.error_message() {
            return Err(msg.to_string());
        }
        self.epoch = epoch;
        self.active = to;
        self.promotable = false;
        let took = started.elapsed();
        self.tick().await;
        self.write_pair_file();
        Ok(format!(
            "OK {} is active at epoch {epoch}, {} follows it (step-up took {:.1} ms)",
            self.slots[to].name,
            self.slots[from].name,
            took.as_secs_f64() * 1e3
        ))
    }

    fn write_pair_file(&self) {
        let engines = (0..2)
            .map(|i| {
                let s = &self.slots[i];
                let role = if s.pid.is_none() {
                    "out_of_service"
                } else if i == self.active {
                    "active"
                } else {
                    "standby"
                };
                serde_json::json!({
                    "name": s.name, "role": role, "pid": s.pid, "app_version": s.app_version,
                    "client_addr": s.client_addr, "replication_addr": s.replication_addr,
                })
            })
            .collect();
        let file = PairFile {
            admin: &self.admin_addr,
            epoch: self.epoch,
            engines,
        };
        let path = self.args.dir.join("pair.json");
        let tmp = self.args.dir.join("pair.json.tmp");
        let json = serde_json::to_string_pretty(&file).expect("pair file serializes");
        if std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .is_err()
        {
            eprintln!("could not write {}", path.display());
        }
    }

    async fn stop_all(&mut self) {
        for slot in &mut self.slots {
            slot.stdin = None; // the engine exits when its stdin closes
            if let Some(pid) = slot.pid.take() {
                kill(pid);
            }
        }
    }
}

thread_local! {
    static KILLERS: std::cell::RefCell<std::collections::HashMap<u32, oneshot::Sender<()>>> = Default::default();
}

/// Kills an engine process the supervisor started (SIGKILL through its child handle).
fn kill(pid: u32) {
    if let Some(tx) = KILLERS.with(|k| k.borrow_mut().remove(&pid)) {
        let _ = tx.send(());
    }
}

async fn serve_admin(listener: TcpListener, events: mpsc::UnboundedSender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(admin_connection(stream, events.clone()));
    }
}

async fn admin_connection(mut stream: TcpStream, events: mpsc::UnboundedSender<Event>) {
    let mut rx = bytes::BytesMut::with_capacity(4096);
    let mut out = bytes::BytesMut::new();
    let limits = resp::Limits::default();
    loop {
        match stream.read_buf(&mut rx).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let cmd = match resp::parse_command(&mut rx, &limits) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err(e) => {
                    reply::error(&mut out, &e.to_string());
                    let _ = stream.write_all(&out).await;
                    return;
                }
            };
            let args = cmd
                .args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let (tx, wait) = oneshot::channel();
            if events
                .send(Event::Admin {
                    cmd: args,
                    reply: tx,
                })
                .is_err()
            {
                return;
            }
            match wait.await {
                Ok(Ok(msg)) if msg.starts_with('{') => reply::bulk(&mut out, msg.as_bytes()),
                Ok(Ok(msg)) => reply::simple(&mut out, &msg),
                Ok(Err(msg)) => reply::error(&mut out, &msg),
                Err(_) => reply::error(&mut out, "ERR supervisor is shutting down"),
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}
