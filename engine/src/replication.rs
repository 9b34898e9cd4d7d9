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
use replicator::{frame, Hello, Receiver, ReceiverEvent, Sender, SenderEvent, Start, VersionCheck};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::catch_up;
use crate::node::{Engine, Link, Role, Shared};

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
                tracing::warn!(
                    engine = %eng.config.name,
                    "replication link from {peer} refused: {reason}",
                );
            }
        });
    }
}

/// Decides, under one borrow, whether a standby may attach and how it starts: resuming from
/// the backlog, or with a snapshot (sent shard by shard while the stream goes on after it).
fn admit(eng: &mut Engine, hello: &Hello) -> Result<(Start, replicator::Identity), String> {
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
        tracing::info!(
            engine = %eng.config.name,
            "standby {} runs {} {}, this engine runs {}: replicating in the older state format",
            hello.identity.engine,
            hello.identity.app_name,
            versions.theirs,
            versions.ours,
        );
    }
    eng.versions = Some(versions);
    let resume = hello.history == eng.history
        && hello.history != 0
        && hello.seq_applied <= eng.outbox.seq_sealed()
        && eng.outbox.covers(hello.seq_applied);
    if resume {
        eng.outbox.pin(Some(hello.seq_applied));
        return Ok((Start::Resume, eng.identity()));
    }
    // The snapshot starts here and goes out a slice per turn, alongside the stream after it.
    eng.outbox.seal();
    let seq = eng.outbox.seq_sealed();
    eng.outbox.pin(Some(seq));
    eng.counters.snapshots_sent += 1;
    Ok((Start::Snapshot { seq }, eng.identity()))
}

/// Admits the standby that sent `hello` and installs its link: the link's id, or the sender
/// back with the reason it is refused (the caller says so on the link and closes it).
pub(crate) fn attach(
    eng: &mut Engine,
    mut sender: Sender,
    hello: &Hello,
    now: Instant,
) -> Result<u64, Box<(Sender, String)>> {
    let (start, identity) = match admit(eng, hello) {
        Ok(d) => d,
        Err(reason) => return Err(Box::new((sender, reason))),
    };
    sender.accept(now, identity, start, hello.seq_applied);
    let Some(id) = eng.open_link(sender) else {
        unreachable!("admit refuses a second standby under this borrow")
    };
    let chunk_bytes = eng.config.snapshot_chunk_bytes;
    if let Some(link) = eng.link.as_mut() {
        link.peer = Some(hello.identity.clone());
        if let Start::Snapshot { .. } = start {
            link.catch_up = Some(catch_up::Cursor::new(chunk_bytes));
        }
    }
    tracing::info!(
        engine = %eng.config.name,
        "standby {} attached ({})",
        hello.identity.engine,
        match start {
            Start::Resume => format!("resuming after {}", hello.seq_applied),
            Start::Snapshot { seq } => format!("snapshot from {seq}"),
        },
    );
    Ok(id)
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
    let attached = attach(&mut engine.borrow_mut(), sender, &hello, Instant::now());
    let id = match attached {
        Ok(id) => id,
        Err(refused) => {
            let (sender, reason) = *refused;
            return refuse(sender, stream, reason).await;
        }
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
        tracing::warn!(engine = %eng.config.name, "standby link closed: {e}");
    }
    Ok(())
}

pub(crate) fn active_turn(
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
                tracing::info!(
                    engine = %eng.config.name,
                    "standby caught up at {}",
                    eng.outbox.seq_sealed(),
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
                tracing::warn!(engine = %eng.config.name, "standby link closed: {reason}");
                done = true;
            }
            SenderEvent::Hello(_) => {}
        }
    }
    let Engine {
        link,
        outbox,
        progress,
        state,
        config,
        ..
    } = &mut *eng;
    let Some(link) = link.as_mut().filter(|l| l.id == id) else {
        return Turn {
            deadline: None,
            done: true,
        };
    };
    let mut sealed = false;
    // One slice of the snapshot per turn, then the other tasks of this thread get theirs.
    let mut again = false;
    if let Some(cursor) = link
        .catch_up
        .as_mut()
        .filter(|_| link.sender.snapshot_pending())
    {
        let seq = outbox.seq_last();
        let push = &mut |f| link.sender.push_snapshot(f);
        if cursor.step(state, seq, push) {
            outbox.seal();
            sealed = true;
            let end = cursor.end(state, outbox.seq_sealed());
            tracing::info!(
                engine = %config.name,
                "snapshot sent: {} records, the stream goes on after {}",
                end.records,
                end.seq,
            );
            link.sender.finish_snapshot(end);
            link.catch_up = None;
        } else {
            again = true;
        }
    }
    // Group commit: seal what has gathered whenever the window has room for it.
    if link.sender.window_open() && outbox.ready(now) {
        outbox.seal();
        sealed = true;
    }
    if sealed {
        progress.send_modify(|v| *v = v.wrapping_add(1));
    }
    while let Some(f) = link.sender.poll_transmit(now, outbox) {
        tx.push_back(f);
    }
    tx.extend(link.sender.drain_out());
    let deadline = match (link.sender.poll_timeout(), outbox.deadline()) {
        _ if again => Some(now),
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
    tracing::info!(
        engine = %eng.config.name,
        "{} stepped up at {seq}: following it as standby",
        peer.engine,
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
        let still_following = follow_ended(
            &mut engine.borrow_mut(),
            &addr,
            result.err().map(|e| e.to_string()),
        );
        if still_following {
            retry_pause(&wake).await;
        }
    }
}

/// The standby's link to `addr` ended (with `error`, if it failed): true if this engine is
/// still a standby and reconnects.
pub(crate) fn follow_ended(eng: &mut Engine, addr: &str, error: Option<String>) -> bool {
    if let Some(f) = eng.follow.as_mut() {
        f.connected = false;
        f.in_sync = false;
        if let Some(e) = error {
            f.last_error = Some(format!("link to {addr}: {e}"));
        }
    }
    eng.bump();
    eng.role == Role::Standby
}

/// How long a standby waits before it reconnects after a lost link or a refused connect.
pub(crate) const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A short pause before reconnecting, cut short by a new instruction.
async fn retry_pause(wake: &tokio::sync::Notify) {
    let _ = tokio::time::timeout(RETRY_PAUSE, wake.notified()).await;
}

fn set_follow_error(engine: &Shared, msg: String) {
    if let Some(f) = engine.borrow_mut().follow.as_mut() {
        f.last_error = Some(msg);
    }
}

pub(crate) fn standby_turn(
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
            tracing::warn!(engine = %eng.config.name, "replication from {addr} stopped: {reason}");
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
                tracing::info!(
                    engine = %eng.config.name,
                    "active {} runs {}, this engine runs {}: following across versions",
                    active.engine,
                    versions.theirs,
                    versions.ours,
                );
            }
            eng.versions = Some(versions);
            eng.epoch = eng.epoch.max(active.epoch);
            eng.active_hint = Some(active.client_addr.clone());
            if let Start::Snapshot { .. } = start {
                // Until the snapshot is complete and verified this state is nobody's: a link
                // that breaks half-way must not be resumed from it, nor promoted.
                // The old state is freed off this thread: dropping millions of entries takes
                // longer than a turn should.
                let old = std::mem::take(&mut eng.state);
                let _ = std::thread::Builder::new()
                    .name("free-state".into())
                    .spawn(move || drop(old));
                eng.restore = Some(Box::default());
                eng.seq_applied = match start {
                    Start::Snapshot { seq } => seq,
                    Start::Resume => unreachable!(),
                };
                eng.history = 0;
                eng.state_complete = false;
                eng.counters.snapshots_received += 1;
            } else {
                // Resumed: only a standby of this very history, whole, gets to resume.
                eng.restore = None;
                eng.state_complete = eng.history != 0;
            }
            if let Some(f) = eng.follow.as_mut() {
                f.connected = true;
                f.last_error = None;
                f.active = Some(active);
            }
            eng.bump();
        }
        ReceiverEvent::SnapshotChunk { seq, payload } => {
            let Engine {
                app,
                state,
                restore,
                ..
            } = eng;
            let restore = restore
                .as_mut()
                .ok_or("a snapshot chunk outside a snapshot")?;
            restore.chunk(app.as_ref(), state, seq, payload)?;
        }
        ReceiverEvent::SnapshotEnd(end) => {
            let restore = eng
                .restore
                .as_mut()
                .ok_or("a snapshot end outside a snapshot")?;
            restore.end(end)?;
            finish_restore(eng, receiver)?;
        }
        ReceiverEvent::Batch {
            seq_first,
            seq_last,
            payload,
        } => {
            apply_records(eng, seq_first, payload)?;
            eng.seq_applied = seq_last;
            *applied = Some(seq_last);
            finish_restore(eng, receiver)?;
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
                    tracing::info!(
                        engine = %eng.config.name,
                        "step-up at {}: active at epoch {}",
                        signal.seq_final,
                        signal.epoch,
                    );
                    eng.become_active(signal.epoch, false, now);
                    *stepped_up = true;
                }
                Err(reason) => {
                    tracing::warn!(engine = %eng.config.name, "refused to step up: {reason}")
                }
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

/// Applies the records of a batch whose first sequence is `seq_first` (during a snapshot,
/// those `Restore` wants), noting the digest at each sync point once the state is whole.
fn apply_records(eng: &mut Engine, seq_first: u64, payload: bytes::Bytes) -> Result<(), String> {
    let Engine {
        app,
        state,
        sync_point,
        restore,
        ..
    } = eng;
    let whole = restore.is_none();
    catch_up::apply_batch(
        app.as_mut(),
        state,
        restore.as_deref(),
        seq_first,
        payload,
        |seq, code, state| {
            if whole && code == crate::state::control::SYNC_POINT {
                *sync_point = Some((seq, state.digest()));
            }
        },
    )
}

/// Once the batches up to the snapshot end are applied, checks the digest: the state is whole,
/// and the active hears so (until then it does not count this standby as caught up).
fn finish_restore(eng: &mut Engine, receiver: &mut Receiver) -> Result<(), String> {
    let Some(restore) = eng.restore.as_ref() else {
        return Ok(());
    };
    match restore.finished(eng.seq_applied, &eng.state) {
        None => Ok(()),
        Some(Err(e)) => Err(e),
        Some(Ok(seq)) => {
            let (bytes, took) = (restore.bytes, restore.started.elapsed());
            eng.restore = None;
            eng.state_complete = true;
            eng.history = eng
                .follow
                .as_ref()
                .and_then(|f| f.active.as_ref())
                .map_or(0, |a| a.history);
            receiver.snapshot_verified(seq);
            tracing::info!(
                engine = %eng.config.name,
                "snapshot complete and verified at {seq}: {} work units, {} records, {:.1} MB in {} ms ({:.0} MB/s)",
                eng.state.units.len(),
                eng.state.db.len(),
                bytes as f64 / 1e6,
                took.as_millis(),
                bytes as f64 / 1e6 / took.as_secs_f64().max(1e-6),
            );
            Ok(())
        }
    }
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
            catch_up: None,
        });
        Some(id)
    }
}
