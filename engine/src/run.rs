//! Starting one engine process: recover its journal if told to, bind the ports, take the
//! initial role, announce readiness on stdout (one `READY {json}` line the supervisor reads,
//! and nothing else is ever written there: the supervisor that reads it may be gone later),
//! and serve until `TANDEM.SHUTDOWN` or a signal. An engine does not depend on its supervisor
//! staying alive: it keeps serving under the rules of `node.rs` when it is gone.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use anyhow::Context;
use replicator::{BatchConfig, LinkConfig};
use tokio::net::TcpListener;

use crate::link_io::LinkIo;
use crate::node::{Config, Engine, Follow, Role};
use crate::server::Port;
use crate::sessions::{AppVersion, Fault, Sessions};

#[derive(Clone, Debug)]
pub struct EngineArgs {
    pub name: String,
    pub client_addr: String,
    pub replication_addr: String,
    /// The supervisor's port: `TANDEM.*` commands, after the pair's secret was proven.
    pub control_addr: String,
    pub app_version: String,
    pub fault: Option<String>,
    /// Start as the active of this epoch...
    pub active_epoch: Option<u64>,
    /// ...or as a standby following this replication address.
    pub follow: Option<String>,
    pub epoch: u64,
    pub supervised: bool,
    /// The engine's data directory (its journal); None: simplex writes live in memory only.
    pub data_dir: Option<PathBuf>,
    /// Start from the journal in `data_dir` (out of service, until the supervisor promotes it).
    pub recover: bool,
    pub batch: BatchConfig,
    /// The link's limits and the pair's secret.
    pub link: LinkConfig,
    /// The link's driver.
    pub io: LinkIo,
    pub limits: crate::server::ServerLimits,
    /// The pair's etcd witness (its endpoints, the pair's key): a new epoch offered on the
    /// control port is taken only if etcd's record holds it.
    pub witness: Option<(String, String)>,
}

pub fn run_engine(args: EngineArgs) -> anyhow::Result<()> {
    let version = AppVersion::parse(&args.app_version).map_err(anyhow::Error::msg)?;
    let fault = args
        .fault
        .as_deref()
        .map(Fault::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some((urls, key)) = &args.witness {
        crate::witness::set_engine_witness(
            crate::witness::EngineWitness::new(urls, key).map_err(anyhow::Error::msg)?,
        );
    }
    // Refused here, before the ports are bound, rather than on every link later.
    args.io
        .check()
        .with_context(|| format!("--io {}", args.io.as_str()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let client = TcpListener::bind(&args.client_addr)
            .await
            .with_context(|| format!("binding the client address {}", args.client_addr))?;
        let replication = TcpListener::bind(&args.replication_addr)
            .await
            .with_context(|| {
                format!("binding the replication address {}", args.replication_addr)
            })?;
        let control = TcpListener::bind(&args.control_addr)
            .await
            .with_context(|| format!("binding the control address {}", args.control_addr))?;
        let client_addr = client.local_addr()?.to_string();
        let replication_addr = replication.local_addr()?.to_string();
        let control_addr = control.local_addr()?.to_string();
        let config = Config {
            name: args.name.clone(),
            client_addr: client_addr.clone(),
            replication_addr: replication_addr.clone(),
            control_addr: control_addr.clone(),
            supervised: args.supervised,
            batch: args.batch.clone(),
            link: args.link.clone(),
            io: args.io,
            snapshot_chunk_bytes: crate::catch_up::CHUNK_BYTES,
            limits: args.limits.clone(),
            journal_dir: args.data_dir.clone(),
        };
        let mut engine = Engine::new(config, Box::new(Sessions::new(version, fault)));
        engine.epoch = args.epoch;
        if args.recover {
            let dir = args
                .data_dir
                .as_deref()
                .context("--recover needs --data-dir")?;
            let started = Instant::now();
            let Engine { app, state, .. } = &mut engine;
            let r = crate::journal::recover(dir, app.as_mut(), state).map_err(anyhow::Error::msg)?;
            tracing::info!(
                engine = %args.name,
                "recovered from the journal: checkpoint at {} ({} records) and {} batches, up to sequence {} (epoch {}, {} torn bytes ignored) in {:.0} ms",
                r.header.seq,
                r.checkpoint_records,
                r.batches,
                r.seq,
                r.header.epoch,
                r.torn_bytes,
                started.elapsed().as_secs_f64() * 1e3,
            );
            engine.seq_applied = r.seq;
            engine.history = r.header.history;
            engine.epoch = engine.epoch.max(r.header.epoch);
            engine.journal_floor = Some(r.seq);
            engine.recovered = Some(r);
        }
        if !args.recover {
            if let Some(dir) = args.data_dir.as_deref().filter(|d| crate::journal::exists(d)) {
                // Started without it: the supervisor holds the data elsewhere, and a journal
                // left from an earlier life must never be recovered from later.
                crate::journal::discard(dir);
                tracing::info!(engine = %args.name, "discarded the journal of an earlier run");
            }
        }
        if let Some(epoch) = args.active_epoch {
            engine.become_active(epoch, true, Instant::now());
        } else if let Some(addr) = &args.follow {
            engine.role = Role::Standby;
            // Nothing is held until a snapshot (or a resume) says what: not promotable before.
            engine.state_complete = false;
            engine.follow = Some(Follow {
                replication_addr: addr.clone(),
                ..Follow::default()
            });
        }
        tracing::info!(
            engine = %args.name,
            "{} {} {} on {client_addr} (replication {replication_addr})",
            engine.app.name(),
            engine.app.version(),
            engine.role.as_str(),
        );
        let recovered = engine.recovered.clone();
        let (journal_wake, shutdown) = (engine.journal_wake.clone(), engine.shutdown.clone());
        let engine = Rc::new(RefCell::new(engine));
        let journal_engine = engine.clone();
        tokio::task::spawn_local(async move {
            loop {
                journal_wake.notified().await;
                // A checkpoint goes a slice per turn, the other tasks of this thread between.
                while journal_engine.borrow_mut().on_journal_wake(Instant::now()) {
                    tokio::task::yield_now().await;
                }
            }
        });
        let sweeper = engine.clone();
        let mut progress = engine.borrow().progress.subscribe();
        tokio::task::spawn_local(async move {
            let mut turn = tokio::time::interval(crate::expiry::SWEEP_PERIOD);
            turn.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                turn.tick().await;
                sweeper.borrow_mut().wall = crate::expiry::WallClock::now();
                // A full turn means more is due: go on, up to a bound per period, so that
                // expiry keeps up with a high rate of deadlines. Each turn waits until the
                // standby holds the one before, so that a mass expiry never queues more than
                // one turn of deletes ahead of a client's read or write.
                for _ in 0..crate::expiry::SWEEP_TURNS_MAX {
                    let (n, seq, epoch) = {
                        let mut eng = sweeper.borrow_mut();
                        let n = eng.sweep_expired(Instant::now());
                        (n, eng.outbox.seq_last(), eng.epoch)
                    };
                    if n < crate::expiry::SWEEP_KEYS_MAX
                        || !crate::server::wait_until_released(&sweeper, &mut progress, seq, epoch)
                            .await
                    {
                        break;
                    }
                }
            }
        });
        tokio::task::spawn_local(crate::server::serve(engine.clone(), client, Port::Client));
        tokio::task::spawn_local(crate::server::serve(engine.clone(), control, Port::Control));
        tokio::task::spawn_local(crate::replication::serve(engine.clone(), replication));
        tokio::task::spawn_local(crate::replication::follow(engine.clone()));
        let ready = crate::contract::Ready {
            name: args.name.clone(),
            pid: std::process::id(),
            client_addr,
            replication_addr,
            control_addr,
            recovered,
        };
        println!("READY {}", crate::contract::encode(&ready));
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = shutdown.notified() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!(engine = %args.name, "stopping");
        // Skip freeing a large state piece by piece, so that taking an engine out of service
        // costs milliseconds, not a walk over every record. (A journal, if open, holds what it
        // must: every released write is on disk already.)
        std::process::exit(0)
    })
}
