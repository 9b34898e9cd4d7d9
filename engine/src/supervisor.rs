//! The pair supervisor: starts engines A and B as child processes of its own executable,
//! serves the admin endpoint, and is the arbiter of epochs.
//!
//! It renews the active's lease every tick and learns from the reply whether the standby is
//! in sync; only an in-sync standby may be promoted, and the supervisor marks it stale before
//! it lets the active run simplex. A dead active (its process exited, or it stopped answering
//! and was killed) is replaced by promoting the standby with a new epoch; a dead engine is
//! restarted as the standby of the active and catches up. Long operations (an upgrade, see
//! `upgrade.rs`) keep the lease ticking and child exits handled through [`Supervisor::pump`].

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reports::timeline::{self, Event as TimelineEvent, EventKind, SwitchoverKind, Timeline};
use resp::{Client, Reply};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::admin;

const TICK: Duration = Duration::from_millis(50);
const LEASE_TTL_MS: u64 = 500;
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// A switchover drains what is in flight to the standby first: it may take longer than a call.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Missed lease renewals after which a live but silent active is killed and replaced.
const SILENT_TICKS_MAX: u32 = 20;

#[derive(Clone, Debug)]
pub struct PairArgs {
    pub dir: PathBuf,
    pub base_port: u16,
    pub app_version: String,
    /// The pair's secret, handed to every engine by path.
    pub secret_file: PathBuf,
    /// The client port's `AUTH` password, if any (handed to engines in their environment).
    pub requirepass: Option<String>,
}

pub(crate) struct Slot {
    pub name: &'static str,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
    pub app_version: String,
    pub fault: Option<String>,
    pub pid: Option<u32>,
    stdin: Option<ChildStdin>,
    kill: Option<oneshot::Sender<()>>,
    client: Option<Client>,
    /// The supervisor is stopping this engine on purpose: do not replace it.
    expected_exit: bool,
}

pub(crate) enum Event {
    Exited {
        slot: usize,
        pid: u32,
    },
    Admin {
        cmd: Vec<String>,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Subscribe {
        tx: mpsc::Sender<String>,
    },
}

/// Events queued for the supervisor's loop, at most (admin commands wait for room).
const EVENTS_QUEUE: usize = 256;

pub(crate) struct Supervisor {
    pub args: PairArgs,
    pub admin_addr: String,
    pub slots: [Slot; 2],
    pub active: usize,
    pub epoch: u64,
    pub promotable: bool,
    silent_ticks: u32,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    tick: tokio::time::Interval,
    timeline: Timeline,
    subscribers: Vec<mpsc::Sender<String>>,
    secret: replicator::Secret,
    /// A long operation is running: other long operations are refused meanwhile.
    busy: bool,
    shutdown: bool,
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
        let listener = TcpListener::bind(addr_for(args.base_port, 0))
            .await
            .context("binding the admin endpoint")?;
        let admin_addr = listener.local_addr()?.to_string();
        let secret = replicator::Secret::load(&args.secret_file)?;
        let (events_tx, events) = mpsc::channel(EVENTS_QUEUE);
        let slot = |name, offset: u16, control: u16| Slot {
            name,
            client_addr: addr_for(args.base_port, offset),
            replication_addr: addr_for(args.base_port, offset + 1),
            control_addr: addr_for(args.base_port, control),
            app_version: args.app_version.clone(),
            fault: None,
            pid: None,
            stdin: None,
            kill: None,
            client: None,
            expected_exit: false,
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sup = Supervisor {
            slots: [slot("a", 1, 5), slot("b", 3, 6)],
            args: args.clone(),
            admin_addr: admin_addr.clone(),
            active: 0,
            epoch: 1,
            promotable: false,
            silent_ticks: 0,
            events_tx: events_tx.clone(),
            events,
            tick,
            timeline: Timeline::new(),
            subscribers: Vec::new(),
            busy: false,
            shutdown: false,
            secret: secret.clone(),
        };
        sup.start(0, None).await?;
        let follow = sup.slots[0].replication_addr.clone();
        sup.start(1, Some(follow)).await?;
        tokio::spawn(admin::serve(listener, events_tx, secret));
        sup.write_pair_file();
        sup.write_timeline();
        println!("READY admin={admin_addr}");
        eprintln!(
            "pair up: admin {admin_addr}, a active on {}, b standby on {}",
            sup.slots[0].client_addr, sup.slots[1].client_addr
        );
        while !sup.shutdown {
            tokio::select! {
                _ = sup.tick.tick() => sup.renew_lease().await,
                ev = sup.events.recv() => match ev {
                    Some(ev) => sup.handle(ev).await,
                    None => break,
                },
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        sup.stop_all();
        let _ = std::fs::remove_file(sup.args.dir.join("pair.json"));
        eprintln!("pair down");
        Ok(())
    })
}

impl Supervisor {
    pub fn standby(&self) -> usize {
        1 - self.active
    }

    /// Starts an engine process: as the active (no `follow`) or following an address.
    pub async fn start(&mut self, i: usize, follow: Option<String>) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the tandem executable")?;
        let slot = &self.slots[i];
        let log_path = self.args.dir.join(format!("{}.log", slot.name));
        let mut cmd = Command::new(exe);
        cmd.arg("engine")
            .args(["--name", slot.name])
            .args(["--client-addr", &slot.client_addr])
            .args(["--replication-addr", &slot.replication_addr])
            .args(["--control-addr", &slot.control_addr])
            .arg("--secret-file")
            .arg(&self.args.secret_file)
            .args(["--app-version", &slot.app_version])
            .args(["--epoch", &self.epoch.to_string()])
            .arg("--supervised")
            .arg("--exit-with-stdin");
        if let Some(fault) = &slot.fault {
            cmd.args(["--fault", fault]);
        }
        if let Some(pass) = &self.args.requirepass {
            cmd.env("TANDEM_REQUIREPASS", pass);
        }
        match &follow {
            Some(addr) => cmd.args(["--follow", addr]),
            None => cmd.args(["--active-epoch", &self.epoch.to_string()]),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting an engine process")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let name = slot.name;
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(json) = line.strip_prefix("READY ") {
                    return Ok::<_, anyhow::Error>(serde_json::from_str::<Value>(json)?);
                }
            }
            let last = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = last.lines().last().unwrap_or("").to_string();
            bail!("engine {name} exited before it was ready: {last}")
        })
        .await
        .map_err(|_| anyhow::anyhow!("engine {name} not ready within {START_TIMEOUT:?}"))??;
        let pid = child.id().unwrap_or(0);
        let slot = &mut self.slots[i];
        slot.client_addr = ready["client_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        slot.replication_addr = ready["replication_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        slot.control_addr = ready["control_addr"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        slot.pid = Some(pid);
        slot.stdin = child.stdin.take();
        slot.client = None;
        slot.expected_exit = false;
        // Keep draining stdout so the engine never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        slot.kill = Some(kill_tx);
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = child.wait() => {}
                _ = kill_rx => { let _ = child.kill().await; }
            }
            let _ = events.send(Event::Exited { slot: i, pid }).await;
        });
        eprintln!(
            "started engine {} {} (pid {pid}) on {}",
            slot.name, slot.app_version, slot.client_addr
        );
        Ok(())
    }

    /// Kills an engine process (SIGKILL through its child handle).
    fn kill(&mut self, i: usize) {
        if let Some(tx) = self.slots[i].kill.take() {
            let _ = tx.send(());
        }
    }

    pub async fn call(&mut self, i: usize, args: &[&str]) -> Result<Reply, String> {
        let slot = &mut self.slots[i];
        if slot.pid.is_none() {
            return Err(format!("engine {} is not running", slot.name));
        }
        if slot.client.is_none() {
            let mut c = Client::connect_authenticated(
                &slot.control_addr,
                CALL_TIMEOUT,
                &self.secret,
                "control",
            )
            .await
            .map_err(|e| format!("engine {} did not answer: {e}", slot.name))?;
            c.set_timeout(Some(CALL_TIMEOUT));
            slot.client = Some(c);
        }
        let client = slot.client.as_mut().expect("connected above");
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match client.call(&parts).await {
            Ok(Reply::Error(e)) => Err(e),
            Ok(r) => Ok(r),
            Err(e) => {
                slot.client = None;
                Err(format!("engine {} did not answer: {e:?}", slot.name))
            }
        }
    }

    /// A control call that may take up to `timeout`.
    pub async fn call_timeout(
        &mut self,
        i: usize,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Reply, String> {
        if let Some(c) = self.slots[i].client.as_mut() {
            c.set_timeout(Some(timeout));
        }
        let result = self.call(i, args).await;
        if let Some(c) = self.slots[i].client.as_mut() {
            c.set_timeout(Some(CALL_TIMEOUT));
        }
        result
    }

    /// After the engines and the supervisor disagree (an epoch it did not grant, a lost
    /// answer): adopt the engine that is active at the highest epoch.
    async fn resync(&mut self) {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..2 {
            if let Ok(st) = self.call_json(i, &["TANDEM.STATUS"]).await {
                let epoch = st["epoch"].as_u64().unwrap_or(0);
                if st["role"] == "active" && best.is_none_or(|(_, e)| epoch > e) {
                    best = Some((i, epoch));
                }
                self.epoch = self.epoch.max(epoch);
            }
        }
        if let Some((i, epoch)) = best {
            if i != self.active {
                eprintln!(
                    "resync: {} is active at epoch {epoch}; adopting it",
                    self.slots[i].name
                );
                self.active = i;
                self.promotable = false;
                self.write_pair_file();
            }
        }
    }

    /// A control call whose reply is JSON.
    pub async fn call_json(&mut self, i: usize, args: &[&str]) -> Result<Value, String> {
        match self.call(i, args).await? {
            Reply::Bulk(b) => serde_json::from_slice(&b).map_err(|e| e.to_string()),
            other => Err(format!("unexpected reply {other}")),
        }
    }

    /// Renews the active's lease and learns whether the standby is in sync.
    pub async fn renew_lease(&mut self) {
        let active = self.active;
        if self.slots[active].pid.is_none() {
            return;
        }
        // The standby stops being promotable before the active may run simplex.
        let mode = if self.promotable { "sync" } else { "simplex" };
        let (epoch, ttl) = (self.epoch.to_string(), LEASE_TTL_MS.to_string());
        match self
            .call_json(active, &["TANDEM.LEASE", &epoch, &ttl, mode])
            .await
        {
            Ok(status) => {
                self.silent_ticks = 0;
                self.promotable = status["standby_in_sync"].as_bool() == Some(true);
            }
            Err(e) if e.contains("did not answer") || e.contains("Io") => {
                self.silent_ticks += 1;
                if self.silent_ticks == SILENT_TICKS_MAX {
                    eprintln!(
                        "active {} silent for {SILENT_TICKS_MAX} ticks: killing it",
                        self.slots[active].name
                    );
                    self.kill(active);
                }
            }
            Err(e) if e.starts_with("STALEEPOCH") => {
                eprintln!(
                    "lease refused by {}: {e}; resyncing",
                    self.slots[active].name
                );
                self.resync().await;
            }
            Err(e) => eprintln!("lease refused by {}: {e}", self.slots[active].name),
        }
    }

    /// Handles one event from the main loop.
    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exited { slot, pid } => self.on_exit(slot, pid).await,
            Event::Subscribe { tx } => self.subscribe(tx),
            Event::Admin { cmd, reply } => {
                let result = self.admin(cmd).await;
                let _ = reply.send(result);
            }
        }
    }

    /// Keeps the pair served while a long operation waits: renews leases, handles child exits
    /// and quick admin commands, until `cond` holds or `timeout` passes. True if `cond` held.
    pub async fn pump(&mut self, timeout: Duration, cond: impl Fn(&Supervisor) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if self.shutdown || tokio::time::Instant::now() >= deadline {
                return cond(self);
            }
            tokio::select! {
                _ = self.tick.tick() => self.renew_lease().await,
                ev = self.events.recv() => match ev {
                    Some(Event::Admin { cmd, reply }) => {
                        let result = match self.quick_admin(&cmd).await {
                            Some(result) => result,
                            None => Err("BUSY an upgrade is in progress; try again when it ends".into()),
                        };
                        let _ = reply.send(result);
                    }
                    Some(Event::Exited { slot, pid }) => self.on_exit(slot, pid).await,
                    Some(Event::Subscribe { tx }) => self.subscribe(tx),
                    None => self.shutdown = true,
                },
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Waits for a pause of `duration` while keeping the pair served.
    pub async fn pump_for(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        self.pump(duration, move |_| Instant::now() >= until).await;
    }

    async fn on_exit(&mut self, i: usize, pid: u32) {
        if self.slots[i].pid != Some(pid) {
            return; // an engine we already replaced
        }
        let name = self.slots[i].name;
        let slot = &mut self.slots[i];
        slot.pid = None;
        slot.client = None;
        slot.stdin = None;
        slot.kill = None;
        if i != self.active {
            self.promotable = false;
        }
        if std::mem::take(&mut slot.expected_exit) {
            eprintln!("engine {name} (pid {pid}) stopped");
            self.write_pair_file();
            return;
        }
        if i == self.active {
            self.failover(i, pid).await;
        } else {
            eprintln!("standby {name} (pid {pid}) died");
        }
        if self.shutdown {
            return;
        }
        // Nobody could be promoted: the engine comes back as the active (with what state it
        // can get: none), rather than leave the pair without one or following itself.
        let follow = (self.active != i).then(|| self.slots[self.active].replication_addr.clone());
        if let Err(e) = self.start(i, follow).await {
            eprintln!("restarting {name} failed: {e:#}");
        }
        self.write_pair_file();
    }

    async fn failover(&mut self, dead: usize, pid: u32) {
        let detected = Instant::now();
        let other = 1 - dead;
        let name = self.slots[dead].name;
        if !self.promotable {
            eprintln!(
                "active {name} died while {} was not in sync: promoting it anyway, writes acknowledged in simplex may be lost",
                self.slots[other].name
            );
        }
        self.epoch += 1;
        let epoch = self.epoch.to_string();
        if self.slots[other].pid.is_none() || self.slots[other].expected_exit {
            eprintln!(
                "active {name} died while {} was out of service: no engine holds the state; {name} restarts as an empty active",
                self.slots[other].name
            );
            return;
        }
        match self.call(other, &["TANDEM.PROMOTE", &epoch]).await {
            Ok(_) => {
                self.active = other;
                self.promotable = false;
                let _ = self
                    .call(
                        other,
                        &["TANDEM.LEASE", &epoch, &LEASE_TTL_MS.to_string(), "simplex"],
                    )
                    .await;
                let took_ms = detected.elapsed().as_secs_f64() * 1e3;
                eprintln!("failover: {name} (pid {pid}) died, {} promoted at epoch {epoch} in {took_ms:.1} ms", self.slots[other].name);
                self.emit(TimelineEvent {
                    switchover: Some(SwitchoverKind::Failover),
                    stepup_ms: Some(took_ms),
                    message: Some(format!(
                        "{name} died, {} promoted at epoch {epoch}",
                        self.slots[other].name
                    )),
                    ..TimelineEvent::new(timeline::now_ms(), EventKind::Failover)
                });
            }
            Err(e) => eprintln!("failover of {name} failed: {e}"),
        }
    }

    /// A planned switchover to the standby; returns the step-up time in milliseconds.
    pub async fn switchover(&mut self, kind: SwitchoverKind) -> Result<f64, String> {
        let (from, to) = (self.active, self.standby());
        if !self.promotable {
            return Err(format!(
                "ERR standby {} is not in sync: no switchover",
                self.slots[to].name
            ));
        }
        let epoch = self.epoch + 1;
        self.emit(TimelineEvent {
            switchover: Some(kind),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SwitchoverBegin)
        });
        let started = Instant::now();
        let result = self
            .call_timeout(
                from,
                &["TANDEM.SWITCHOVER", &epoch.to_string()],
                SWITCHOVER_TIMEOUT,
            )
            .await;
        let took_ms = started.elapsed().as_secs_f64() * 1e3;
        let end = |message| TimelineEvent {
            switchover: Some(kind),
            stepup_ms: Some(took_ms),
            message: Some(message),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::SwitchoverEnd)
        };
        if let Err(e) = result {
            // The step-up may have happened even though its answer was lost: then the standby
            // is active in the new epoch, and the old active must follow it.
            let adopted = match self.call_json(to, &["TANDEM.STATUS"]).await {
                Ok(st) => st["role"] == "active" && st["epoch"].as_u64() == Some(epoch),
                Err(_) => false,
            };
            if !adopted {
                self.emit(end(format!("failed: {e}")));
                return Err(e);
            }
            eprintln!(
                "switchover answer lost ({e}), but {} is active at epoch {epoch}",
                self.slots[to].name
            );
            let (addr, hint) = (
                self.slots[to].replication_addr.clone(),
                self.slots[to].client_addr.clone(),
            );
            let _ = self
                .call(from, &["TANDEM.FOLLOW", &addr, &epoch.to_string(), &hint])
                .await;
        }
        self.epoch = epoch;
        self.active = to;
        self.promotable = false;
        self.renew_lease().await;
        self.write_pair_file();
        let msg = format!(
            "{} active at epoch {epoch}, {} follows",
            self.slots[to].name, self.slots[from].name
        );
        self.emit(end(msg));
        Ok(took_ms)
    }

    /// Stops an engine on purpose (out of service, then its process), waiting for it to exit.
    pub async fn stop_engine(&mut self, i: usize) -> Result<(), String> {
        let Some(pid) = self.slots[i].pid else {
            return Ok(());
        };
        if i == self.standby() {
            // The active is about to lose its standby: it runs simplex from now on, before
            // the link drops, so that no write waits for the next lease renewal.
            self.promotable = false;
            let active = self.active;
            let (epoch, ttl) = (self.epoch.to_string(), LEASE_TTL_MS.to_string());
            if let Err(e) = self
                .call(active, &["TANDEM.LEASE", &epoch, &ttl, "degrade"])
                .await
            {
                eprintln!("degrade lease refused by {}: {e}", self.slots[active].name);
            }
        }
        self.slots[i].expected_exit = true;
        let _ = self.call(i, &["TANDEM.OUTOFSERVICE"]).await;
        self.slots[i].stdin = None; // the engine exits when its standard input closes
        if !self
            .pump(STOP_TIMEOUT, move |s| s.slots[i].pid != Some(pid))
            .await
        {
            eprintln!(
                "engine {} did not stop within {STOP_TIMEOUT:?}: killing it",
                self.slots[i].name
            );
            self.kill(i);
            if !self
                .pump(STOP_TIMEOUT, move |s| s.slots[i].pid != Some(pid))
                .await
            {
                return Err(format!(
                    "engine {} (pid {pid}) would not stop",
                    self.slots[i].name
                ));
            }
        }
        Ok(())
    }

    /// Reload: a new process of the same executable, running `version`, standby to the active.
    pub async fn reload(
        &mut self,
        i: usize,
        version: &str,
        fault: Option<String>,
    ) -> Result<(), String> {
        assert_ne!(i, self.active, "only the standby is reloaded");
        self.stop_engine(i).await?;
        self.slots[i].app_version = version.to_string();
        self.slots[i].fault = fault;
        let follow = self.slots[self.active].replication_addr.clone();
        let result = self
            .start(i, Some(follow))
            .await
            .map_err(|e| format!("{e:#}"));
        self.write_pair_file();
        result
    }

    fn subscribe(&mut self, tx: mpsc::Sender<String>) {
        for ev in &self.timeline.events {
            if tx
                .try_send(serde_json::to_string(ev).expect("event serializes"))
                .is_err()
            {
                return; // a timeline longer than a subscriber's queue: it gets none
            }
        }
        self.subscribers.push(tx);
    }

    /// Records a timeline event: in memory, in `timeline.json`, and to every subscriber.
    pub fn emit(&mut self, ev: TimelineEvent) {
        let json = serde_json::to_string(&ev).expect("event serializes");
        // A subscriber that does not keep up is dropped rather than buffered without bound.
        self.subscribers
            .retain(|s| s.try_send(json.clone()).is_ok());
        self.timeline.events.push(ev);
        self.write_timeline();
    }

    fn write_timeline(&self) {
        let json = serde_json::to_string_pretty(&self.timeline).expect("timeline serializes");
        write_atomically(&self.args.dir.join("timeline.json"), &json);
    }

    /// Admin commands that may run at any time, even during an upgrade.
    async fn quick_admin(&mut self, cmd: &[String]) -> Option<Result<String, String>> {
        let verb = cmd
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        Some(match verb.as_str() {
            "PING" => Ok("PONG".into()),
            "STATUS" => Ok(self.status().await.to_string()),
            "SHUTDOWN" => {
                self.shutdown = true;
                Ok("OK".into())
            }
            _ => return None,
        })
    }

    async fn admin(&mut self, cmd: Vec<String>) -> Result<String, String> {
        if let Some(result) = self.quick_admin(&cmd).await {
            return result;
        }
        let verb = cmd
            .first()
            .map(|c| c.to_ascii_uppercase())
            .unwrap_or_default();
        let arg = |i: usize| cmd.get(i).map(String::as_str);
        match verb.as_str() {
            "SWITCHOVER" => self.switchover(SwitchoverKind::Planned).await.map(|ms| {
                format!("OK {} is active at epoch {}, step-up took {ms:.1} ms", self.slots[self.active].name, self.epoch)
            }),
            "UPGRADE" => {
                let Some(to) = arg(1) else { return Err("ERR usage: UPGRADE version [option value]...".into()) };
                let options = crate::upgrade::Options::parse(&cmd[2..])?;
                self.busy = true;
                let result = self.upgrade(to.to_string(), options).await;
                self.busy = false;
                result.map(|report| report.to_string())
            }
            "FEATURES.ENABLE" => self.enable_features().await,
            "RELOAD" => {
                let standby = self.standby();
                match (arg(1), arg(2)) {
                    (Some(name), Some(version)) if name == self.slots[standby].name => {
                        self.reload(standby, version, arg(3).map(str::to_string)).await?;
                        Ok(format!("OK {name} reloaded with {version}"))
                    }
                    (Some(name), Some(_)) => Err(format!("ERR only the standby ({}) can be reloaded, not {name}", self.slots[standby].name)),
                    _ => Err("ERR usage: RELOAD standby_name version [fault]".into()),
                }
            }
            _ => Err(format!(
                "ERR unknown admin command '{verb}' (PING, STATUS, SWITCHOVER, UPGRADE, FEATURES.ENABLE, RELOAD, SUBSCRIBE, SHUTDOWN)"
            )),
        }
    }

    /// Enables the new features on both engines, refusing unless every engine runs the
    /// active's version.
    pub async fn enable_features(&mut self) -> Result<String, String> {
        let versions: Vec<String> = self
            .slots
            .iter()
            .map(|s| format!("{} runs {}", s.name, s.app_version))
            .collect();
        if self.slots[0].app_version != self.slots[1].app_version
            || self.slots.iter().any(|s| s.pid.is_none())
        {
            return Err(format!(
                "ERR refused: {}; every engine must run the new version, in service",
                versions.join(", ")
            ));
        }
        let active = self.active;
        self.call(active, &["TANDEM.FEATURES.ENABLE"]).await?;
        self.emit(TimelineEvent {
            message: Some(format!(
                "new features of {} enabled",
                self.slots[active].app_version
            )),
            ..TimelineEvent::new(timeline::now_ms(), EventKind::FeaturesEnabled)
        });
        Ok("OK new features enabled on both engines".into())
    }

    pub async fn status(&mut self) -> Value {
        let mut engines = Vec::new();
        for i in 0..2 {
            let status = match self.slots[i].pid {
                Some(_) => self.call_json(i, &["TANDEM.STATUS"]).await.ok(),
                None => None,
            };
            engines.push(status.unwrap_or_else(|| self.down_status(i)));
        }
        serde_json::json!({
            "admin": self.admin_addr,
            "epoch": self.epoch,
            "active": self.slots[self.active].name,
            "standby_promotable": self.promotable,
            "upgrade_in_progress": self.busy,
            "engines": engines,
        })
    }

    fn down_status(&self, i: usize) -> Value {
        let s = &self.slots[i];
        serde_json::json!({
            "name": s.name, "role": "out_of_service", "app_version": s.app_version, "pid": Value::Null,
            "client_addr": s.client_addr, "replication_addr": s.replication_addr,
            "control_addr": s.control_addr, "epoch": self.epoch,
        })
    }

    pub fn write_pair_file(&self) {
        let engines: Vec<Value> = (0..2)
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
                    "control_addr": s.control_addr,
                })
            })
            .collect();
        let file = serde_json::json!({ "admin": self.admin_addr, "epoch": self.epoch, "engines": engines });
        let json = serde_json::to_string_pretty(&file).expect("pair file serializes");
        write_atomically(&self.args.dir.join("pair.json"), &json);
    }

    fn stop_all(&mut self) {
        for i in 0..2 {
            self.slots[i].stdin = None; // the engine exits when its stdin closes
            self.kill(i);
        }
    }
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .is_err()
    {
        eprintln!("could not write {}", path.display());
    }
}
