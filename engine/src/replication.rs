//! The engine's two ends of the replication link, driven by `replicator::driver`.
//!
//! The active listens: every connection on its replication port starts a [`replicator::Sender`]
//! that must see a valid hello within the peer timeout, or it is refused and closed (garbage,
//! another protocol, a second standby). The standby dials the active it was told to follow,
//! applies what it receives through the application, and acknowledges once per read.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use replicator::driver::{self, Turn};
use replicator::handshake::negotiate;
use replicator::{
    catch_up, frame, Hello, Kind, Receiver, ReceiverEvent, Records, Sender, SenderEvent, Snapshot,
    Start, VersionCheck,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::node::{Engine, Link, Role, Shared};
use crate::state::State;

pub async fn serve(engine: Shared, listener: TcpListener) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        tokio::task::spawn_local(async move {
            if let Err(reason) = active_link(engine.clone(), stream).await {
                let mut eng = engine.borrow_mut();
                eng.counters.replication_links_refused += 1;
                eprintln!(
                    "[{}] replication link from {peer} refused: {reason}",
                    eng.config.name
                );
            }
        });
    }
}

/// Decides, under one borrow, whether a standby may attach and how it starts: resuming from
/// the backlog, or with a snapshot (the entries and digest of one consistent state).
fn admit(
    eng: &mut Engine,
    hello: &Hello,
) -> Result<(Start, Vec<catch_up::Entry>, replicator::Identity, u64), String> {
    if eng.role != Role::Active || eng.stepping_down.is_some() {
        return Err(format!(
            "{} is not active ({})",
            eng.config.name,
            eng.not_active_reply()
        ));
    }
    if hello.identity.epoch > eng.epoch {
        let reason = format!(
            "standby is at epoch {}, above this engine's {}: stepping down",
            hello.identity.epoch, eng.epoch
        );
        eng.step_down(Role::OutOfService, hello.identity.epoch);
        return Err(reason);
    }
    negotiate(
        (frame::PROTOCOL_MIN, frame::PROTOCOL_MAX),
        (hello.protocol_min, hello.protocol_max),
    )?;
    if eng.state.features_enabled && hello.identity.feature_level < eng.app.feature_level() {
        return Err(format!(
            "standby runs {} {} but the new features of {} are enabled",
            hello.identity.app_name,
            hello.identity.app_version,
            eng.app.version()
        ));
    }
    if eng.link.as_ref().is_some_and(|l| !l.sender.is_closed()) {
        return Err("this active already has a standby".into());
    }
    let versions = VersionCheck {
        ours: eng.app.version().into(),
        theirs: hello.identity.app_version.clone(),
    };
    if versions.differ() {
        eprintln!(
            "[{}] standby {} runs {} {}, this engine runs {}: replicating in the older state format",
            eng.config.name, hello.identity.engine, hello.identity.app_name, versions.theirs, versions.ours
        );
    }
    eng.versions = Some(versions);
    let resume = hello.history == eng.history
        && hello.history != 0
        && hello.seq_applied <= eng.outbox.seq_sealed()
        && eng.outbox.covers(hello.seq_applied);
    if resume {
        eng.outbox.pin(Some(hello.seq_applied));
        return Ok((Start::Resume, Vec::new(), eng.identity(), 0));
    }
    eng.outbox.seal();
    let seq = eng.outbox.seq_sealed();
    eng.outbox.pin(Some(seq));
    eng.counters.snapshots_sent += 1;
    let entries = eng.app.snapshot(&eng.state);
    Ok((
        Start::Snapshot { seq },
        entries,
        eng.identity(),
        eng.state.digest(),
    ))
}

/// Reads until the sender has decided about the hello, within the peer timeout.
async fn read_hello(
    stream: &mut TcpStream,
    sender: &mut Sender,
    timeout: Duration,
) -> Result<Hello, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    // The challenge: nothing from the peer counts until it proved the pair's secret over it.
    let mut challenge: VecDeque<_> = sender.drain_out().collect();
    match tokio::time::timeout_at(deadline, driver::write_frames(stream, &mut challenge)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no hello within the peer timeout".into()),
    }
    let mut buf = [0u8; 4096];
    loop {
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Hello(hello) => return Ok(hello),
                SenderEvent::Closed { reason } => return Err(reason),
                _ => {}
            }
        }
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err("no hello within the peer timeout".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(0)) => return Err("closed before the hello".into()),
            Ok(Ok(n)) => n,
        };
        sender.handle_input(Instant::now(), &buf[..n]);
    }
}

async fn active_link(engine: Shared, mut stream: TcpStream) -> Result<(), String> {
    driver::configure(&stream).map_err(|e| e.to_string())?;
    let (config, epoch) = {
        let eng = engine.borrow();
        (eng.config.link.clone(), eng.epoch)
    };
    let mut sender = Sender::new(Instant::now(), config.clone(), epoch);
    let hello = read_hello(&mut stream, &mut sender, config.peer_timeout).await;
    let refuse = |mut sender: Sender, mut stream: TcpStream, reason: String| async move {
        sender.refuse(&reason);
        let mut goodbye: VecDeque<_> = sender.drain_out().collect();
        let _ = driver::write_frames(&mut stream, &mut goodbye).await;
        Err(reason)
    };
    let hello = match hello {
        Ok(h) => h,
        Err(reason) => return refuse(sender, stream, reason).await,
    };
    let decision = admit(&mut engine.borrow_mut(), &hello);
    let (start, entries, identity, digest) = match decision {
        Ok(d) => d,
        Err(reason) => return refuse(sender, stream, reason).await,
    };
    let snapshot = match start {
        Start::Resume => Snapshot::default(),
        Start::Snapshot { seq } => {
            // The entries and the digest were taken in one borrow: they describe the same
            // state, which may move on while the chunks are encoded off this thread.
            let chunk_bytes = engine.borrow().config.snapshot_chunk_bytes;
            let records = entries.len() as u64;
            let chunks = tokio::task::spawn_blocking(move || {
                catch_up::encode_snapshot(&entries, seq, chunk_bytes)
            })
            .await
            .map_err(|e| format!("snapshot encoding failed: {e}"))?;
            Snapshot {
                chunks,
                records,
                state_digest: digest,
            }
        }
    };
    let id = {
        let mut eng = engine.borrow_mut();
        sender.accept(Instant::now(), identity, start, hello.seq_applied, snapshot);
        let Some(id) = eng.open_link(sender) else {
            return Err("another standby attached meanwhile".into());
        };
        if let Some(link) = eng.link.as_mut() {
            link.peer = Some(hello.identity.clone());
        }
        eprintln!(
            "[{}] standby {} attached ({})",
            eng.config.name,
            hello.identity.engine,
            match start {
                Start::Resume => format!("resuming after {}", hello.seq_applied),
                Start::Snapshot { seq } => format!("snapshot at {seq}"),
            }
        );
        id
    };
    let (wake, io) = {
        let eng = engine.borrow();
        (eng.link_wake.clone(), eng.config.io)
    };
    let result = crate::link_io::run(io, stream, &wake, |now, input, tx| {
        active_turn(&engine, id, now, input, tx)
    })
    .await;
    let mut eng = engine.borrow_mut();
    eng.close_link(id, Instant::now());
    if let Err(e) = result {
        eprintln!("[{}] standby link closed: {e}", eng.config.name);
    }
    Ok(())
}

fn active_turn(
    engine: &Shared,
    id: u64,
    now: Instant,
    input: &[u8],
    tx: &mut VecDeque<bytes::Bytes>,
) -> Turn {
    let mut eng = engine.borrow_mut();
    let mut events = Vec::new();
    {
        let Engine { link, .. } = &mut *eng;
        let Some(link) = link.as_mut().filter(|l| l.id == id) else {
            return Turn {
                deadline: None,
                done: true,
            };
        };
        if !input.is_empty() {
            link.sender.handle_input(now, input);
        }
        link.sender.handle_timeout(now);
        while let Some(ev) = link.sender.poll_event() {
            events.push(ev);
        }
    }
    let mut done = false;
    for ev in events {
        match ev {
            SenderEvent::Acked(seq) => {
                eng.outbox.pin(Some(seq));
                eng.refresh_released(now);
            }
            SenderEvent::CaughtUp => {
                eprintln!(
                    "[{}] standby caught up at {}",
                    eng.config.name,
                    eng.outbox.seq_sealed()
                );
                eng.refresh_released(now);
                eng.bump();
            }
            SenderEvent::SteppedUp { seq } => {
                on_stepped_up(&mut eng, seq);
                done = true;
            }
            SenderEvent::StepUpRefused { reason } => {
                if let Some(done) = eng.stepping_down.take() {
                    let _ = done.send(Err(format!("ERR the standby refused to step up: {reason}")));
                }
                eng.bump();
            }
            SenderEvent::Closed { reason } => {
                eprintln!("[{}] standby link closed: {reason}", eng.config.name);
                done = true;
            }
            SenderEvent::Hello(_) => {}
        }
    }
    let Engine {
        link,
        outbox,
        progress,
        ..
    } = &mut *eng;
    let Some(link) = link.as_mut().filter(|l| l.id == id) else {
        return Turn {
            deadline: None,
            done: true,
        };
    };
    // Group commit: seal what has gathered whenever the window has room for it.
    let mut sealed = false;
    if link.sender.window_open() && outbox.ready(now) {
        outbox.seal();
        progress.send_modify(|v| *v = v.wrapping_add(1));
        sealed = true;
    }
    while let Some(f) = link.sender.poll_transmit(now, outbox) {
        tx.push_back(f);
    }
    tx.extend(link.sender.drain_out());
    let deadline = match (link.sender.poll_timeout(), outbox.deadline()) {
        (Some(a), Some(b)) if link.sender.window_open() => Some(a.min(b)),
        (a, _) => a,
    };
    let done = done || link.sender.is_closed();
    if sealed && eng.journal.is_some() {
        eng.refresh_released(now); // the journal takes the new batch too
    }
    Turn { deadline, done }
}

fn on_stepped_up(eng: &mut Engine, seq: u64) {
    let peer = eng.link.as_ref().and_then(|l| l.peer.clone());
    let Some(peer) = peer else { return };
    let epoch = eng.epoch.max(peer.epoch);
    eprintln!(
        "[{}] {} stepped up at {seq}: following it as standby",
        eng.config.name, peer.engine
    );
    eng.seq_applied = seq;
    let new_epoch = eng.stepping_down_epoch.take().unwrap_or(epoch);
    eng.step_down(Role::Standby, new_epoch);
    eng.active_hint = Some(peer.client_addr.clone());
    eng.follow = Some(crate::node::Follow {
        replication_addr: peer.replication_addr.clone(),
        ..Default::default()
    });
    eng.follow_wake.notify_one();
    if let Some(done) = eng.stepping_down.take() {
        let _ = done.send(Ok(format!(
            "OK {} is active at epoch {new_epoch}",
            peer.engine
        )));
    }
}

/// The standby's side: follows whichever active the engine is told to, reconnecting after a
/// lost link until its role changes.
pub async fn follow(engine: Shared) {
    let wake = engine.borrow().follow_wake.clone();
    loop {
        let target = {
            let eng = engine.borrow();
            (eng.role == Role::Standby)
                .then(|| eng.follow.as_ref().map(|f| f.replication_addr.clone()))
                .flatten()
        };
        let Some(addr) = target else {
            wake.notified().await;
            continue;
        };
        let timeout = engine.borrow().config.link.peer_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                set_follow_error(&engine, format!("connect to {addr}: {e}"));
                retry_pause(&wake).await;
                continue;
            }
            Err(_) => {
                set_follow_error(&engine, format!("connect to {addr}: timed out"));
                continue;
            }
        };
        let _ = driver::configure(&stream);
        let mut receiver = {
            let eng = engine.borrow();
            let hello = Hello::new(eng.identity(), eng.seq_applied, eng.history);
            Receiver::new(Instant::now(), eng.config.link.clone(), &hello)
        };
        let io = engine.borrow().config.io;
        let result = crate::link_io::run(io, stream, &wake, |now, input, tx| {
            standby_turn(&engine, &addr, &mut receiver, now, input, tx)
        })
        .await;
        let still_following = {
            let mut eng = engine.borrow_mut();
            if let Some(f) = eng.follow.as_mut() {
                f.connected = false;
                f.in_sync = false;
                if let Err(e) = result {
                    f.last_error = Some(format!("link to {addr}: {e}"));
                }
            }
            eng.bump();
            eng.role == Role::Standby
        };
        if still_following {
            retry_pause(&wake).await;
        }
    }
}

/// A short pause before reconnecting, cut short by a new instruction.
async fn retry_pause(wake: &tokio::sync::Notify) {
    let _ = tokio::time::timeout(Duration::from_millis(50), wake.notified()).await;
}

fn set_follow_error(engine: &Shared, msg: String) {
    if let Some(f) = engine.borrow_mut().follow.as_mut() {
        f.last_error = Some(msg);
    }
}

fn standby_turn(
    engine: &Shared,
    addr: &str,
    receiver: &mut Receiver,
    now: Instant,
    input: &[u8],
    tx: &mut VecDeque<bytes::Bytes>,
) -> Turn {
    let mut eng = engine.borrow_mut();
    let still_mine = eng.role == Role::Standby
        && eng
            .follow
            .as_ref()
            .is_some_and(|f| f.replication_addr == addr);
    if !still_mine {
        receiver.close("this engine is no longer a standby of this active".into());
    }
    if !input.is_empty() {
        receiver.handle_input(now, input);
    }
    receiver.handle_timeout(now);
    let mut applied = None;
    let mut stepped_up = false;
    while let Some(ev) = receiver.poll_event() {
        if let Err(reason) =
            standby_event(&mut eng, receiver, ev, now, &mut applied, &mut stepped_up)
        {
            eprintln!(
                "[{}] replication from {addr} stopped: {reason}",
                eng.config.name
            );
            // Nothing after the failed update is applied or acknowledged, and this engine's
            // state no longer belongs to any history: the next link starts with a snapshot.
            applied = None;
            eng.history = 0;
            eng.state_complete = false;
            receiver.close(reason);
            break;
        }
    }
    if let Some(seq) = applied {
        receiver.applied(seq);
    }
    while let Some(f) = receiver.poll_transmit(now) {
        tx.push_back(f);
    }
    Turn {
        deadline: receiver.poll_timeout(),
        done: receiver.is_closed() || stepped_up,
    }
}

fn standby_event(
    eng: &mut Engine,
    receiver: &mut Receiver,
    ev: ReceiverEvent,
    now: Instant,
    applied: &mut Option<u64>,
    stepped_up: &mut bool,
) -> Result<(), String> {
    match ev {
        ReceiverEvent::Accepted { active, start, .. } => {
            let versions = VersionCheck {
                ours: eng.app.version().into(),
                theirs: active.app_version.clone(),
            };
            if versions.differ() {
                eprintln!(
                    "[{}] active {} runs {}, this engine runs {}: following across versions",
                    eng.config.name, active.engine, versions.theirs, versions.ours
                );
            }
            eng.versions = Some(versions);
            eng.epoch = eng.epoch.max(active.epoch);
            eng.active_hint = Some(active.client_addr.clone());
            if let Start::Snapshot { .. } = start {
                // Until the snapshot is complete and verified this state is nobody's: a link
                // that breaks half-way must not be resumed from it, nor promoted.
                eng.state = State::default();
                eng.seq_applied = 0;
                eng.history = 0;
                eng.state_complete = false;
                eng.counters.snapshots_received += 1;
            } else {
                // Resumed: only a standby of this very history, whole, gets to resume.
                eng.state_complete = eng.history != 0;
            }
            if let Some(f) = eng.follow.as_mut() {
                f.connected = true;
                f.last_error = None;
                f.active = Some(active);
            }
            eng.bump();
        }
        ReceiverEvent::SnapshotChunk(payload) => {
            apply_records(eng, Kind::SnapshotChunk, 0, payload)?
        }
        ReceiverEvent::SnapshotEnd(end) => {
            let digest = eng.state.digest();
            if digest != end.state_digest {
                return Err(format!(
                    "snapshot digest {digest:016x} differs from the active's {:016x}",
                    end.state_digest
                ));
            }
            eng.seq_applied = end.seq;
            eng.state_complete = true;
            eng.history = eng
                .follow
                .as_ref()
                .and_then(|f| f.active.as_ref())
                .map_or(0, |a| a.history);
            *applied = Some(end.seq);
        }
        ReceiverEvent::Batch {
            seq_first,
            seq_last,
            payload,
        } => {
            apply_records(eng, Kind::Batch, seq_first, payload)?;
            eng.seq_applied = seq_last;
            *applied = Some(seq_last);
        }
        ReceiverEvent::Heartbeat { epoch, in_sync } => {
            eng.epoch = eng.epoch.max(epoch);
            if let Some(f) = eng.follow.as_mut() {
                f.in_sync = in_sync;
            }
        }
        ReceiverEvent::StepUp(signal) => {
            let verdict = if signal.epoch <= eng.epoch {
                Err(format!(
                    "step-up to epoch {} is not above {}",
                    signal.epoch, eng.epoch
                ))
            } else {
                receiver.step_up_verdict(
                    &signal,
                    eng.seq_applied,
                    eng.state.units.len() as u64,
                    eng.state.units.digest(),
                )
            };
            receiver.answer_step_up(eng.seq_applied, &verdict);
            match verdict {
                Ok(()) => {
                    eprintln!(
                        "[{}] step-up at {}: active at epoch {}",
                        eng.config.name, signal.seq_final, signal.epoch
                    );
                    eng.become_active(signal.epoch, false, now);
                    *stepped_up = true;
                }
                Err(reason) => eprintln!("[{}] refused to step up: {reason}", eng.config.name),
            }
        }
        ReceiverEvent::Closed { reason } => {
            if let Some(f) = eng.follow.as_mut() {
                f.last_error = Some(reason);
            }
        }
    }
    Ok(())
}

/// Applies the records of a batch (whose first sequence is `seq_first`) or snapshot chunk.
fn apply_records(
    eng: &mut Engine,
    kind: Kind,
    seq_first: u64,
    payload: bytes::Bytes,
) -> Result<(), String> {
    let Engine {
        app,
        state,
        sync_point,
        ..
    } = eng;
    for (i, record) in Records::new(kind, payload)
        .map_err(|e| e.to_string())?
        .enumerate()
    {
        let record = record.map_err(|e| e.to_string())?;
        app.apply(state, &record)?;
        if kind == Kind::Batch
            && record.op == replicator::Op::Control(crate::state::control::SYNC_POINT)
        {
            *sync_point = Some((seq_first + i as u64, state.digest()));
        }
    }
    Ok(())
}

impl Engine {
    /// Installs the link for an accepted standby; None if another one is attached.
    pub fn open_link(&mut self, sender: Sender) -> Option<u64> {
        if self.link.as_ref().is_some_and(|l| !l.sender.is_closed()) {
            return None;
        }
        let id = self.next_link_id();
        self.standby_stale = false;
        self.link = Some(Link {
            id,
            sender,
            peer: None,
        });
        Some(id)
    }
}
