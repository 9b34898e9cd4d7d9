//! Control commands (`TANDEM.*`), spoken by the supervisor in RESP on the engine's control
//! port, once it proved the pair's secret (see `server.rs`).
//!
//! Roles and epochs only change here or on the replication link: the supervisor grants epochs
//! (promote, switchover, follow) and leases; an engine refuses anything from an older epoch and
//! steps down when it learns of a newer one. Refusals start with a [`Code`] the supervisor
//! decides on: `STALEEPOCH` (an older epoch), `NOTREADY` (this engine's state is incomplete:
//! it must not be promoted). What the JSON replies hold is the [`crate::contract`].

use std::time::{Duration, Instant};

use bytes::BytesMut;
use replicator::StepUp;
use resp::{reply, Command};

use crate::app::Ctx;
use crate::contract::{self, Code, SyncPointReply};
use crate::node::{Engine, Follow, LeaseMode, Role};
use crate::server::Outcome;
use crate::state::control;

fn arg_u64(cmd: &Command, i: usize) -> Option<u64> {
    std::str::from_utf8(cmd.arg(i)?).ok()?.parse().ok()
}

fn arg_str(cmd: &Command, i: usize) -> Option<String> {
    String::from_utf8(cmd.arg(i)?.to_vec()).ok()
}

/// The epoch a control command would give this engine, if it is above the engine's own
/// (PROMOTE, FOLLOW, SWITCHOVER, a LEASE): with an etcd witness, it is taken only if etcd's
/// record of the pair holds it (checked before dispatch, see `server.rs`).
pub fn offered_epoch(eng: &Engine, upper: &[u8], cmd: &Command) -> Option<u64> {
    let epoch = match upper {
        b"TANDEM.PROMOTE" | b"TANDEM.SWITCHOVER" | b"TANDEM.LEASE" => arg_u64(cmd, 1)?,
        b"TANDEM.FOLLOW" => arg_u64(cmd, 2)?,
        _ => return None,
    };
    (epoch > eng.epoch).then_some(epoch)
}

pub fn dispatch(
    eng: &mut Engine,
    upper: &[u8],
    cmd: &Command,
    out: &mut BytesMut,
    now: Instant,
) -> Outcome {
    let result: Result<Option<String>, String> = match upper {
        b"TANDEM.STATUS" => Ok(None),
        b"TANDEM.LEASE" => match (
            arg_u64(cmd, 1),
            arg_u64(cmd, 2),
            arg_u64(cmd, 3),
            cmd.arg(4).map(|m| &m[..]),
        ) {
            (
                Some(epoch),
                Some(stamp_ns),
                Some(ttl_ms),
                Some(mode @ (b"simplex" | b"sync" | b"degrade")),
            ) => {
                let mode = match mode {
                    b"sync" => LeaseMode::Sync,
                    b"simplex" => LeaseMode::Simplex,
                    _ => LeaseMode::Degrade,
                };
                eng.grant_lease(epoch, stamp_ns, Duration::from_millis(ttl_ms), mode, now)
                    .map(|_| None)
            }
            _ => Err(
                "ERR usage: TANDEM.LEASE epoch stamp_ns ttl_ms simplex|sync|degrade".into(),
            ),
        },
        b"TANDEM.PROMOTE" => match arg_u64(cmd, 1) {
            Some(epoch)
                if epoch > eng.epoch
                    && !eng.state_complete
                    && !cmd.arg(2).is_some_and(|a| a.eq_ignore_ascii_case(b"FORCE")) =>
            {
                Err(Code::NotReady.refuse(format_args!(
                    "{} holds no whole state (a snapshot is under way or failed): promoting it would lose acknowledged writes",
                    eng.config.name
                )))
            }
            Some(epoch) if epoch > eng.epoch => {
                eng.become_active(epoch, true, now);
                tracing::info!(
                    engine = %eng.config.name,
                    "promoted to active, epoch {epoch}, seq {}",
                    eng.seq_applied,
                );
                Ok(Some("OK".into()))
            }
            // A step-up the supervisor did not hear the end of already made us active.
            Some(epoch) if epoch == eng.epoch && eng.role == Role::Active => {
                Ok(Some("OK already active".into()))
            }
            Some(epoch) => Err(Code::StaleEpoch.refuse(format_args!(
                "epoch {epoch} is not above {}",
                eng.epoch
            ))),
            None => Err("ERR usage: TANDEM.PROMOTE epoch".into()),
        },
        b"TANDEM.FOLLOW" => match (arg_str(cmd, 1), arg_u64(cmd, 2)) {
            (Some(addr), Some(epoch)) if epoch >= eng.epoch => {
                if eng.role == Role::Active && epoch == eng.epoch {
                    Err("ERR the active of this epoch cannot follow: grant a new epoch".into())
                } else {
                    // Told again to follow the active it is connected to: the link goes on.
                    let continues = eng.role == Role::Standby
                        && eng
                            .follow
                            .as_ref()
                            .is_some_and(|f| f.connected && f.replication_addr == addr);
                    eng.step_down(Role::Standby, epoch);
                    if eng.history == 0 && !continues {
                        // Nothing it holds belongs to a history: it is whole only once its
                        // snapshot is. Until then a promotion would serve an empty (or stale)
                        // state as the pair's. Found by `tandem sim` (seed 1256): a standby
                        // restarted during a partition, promoted before it ever connected.
                        // Not so on a link that goes on: what it holds is that active's
                        // state, verified (seed 18515: a standby whose snapshot came from an
                        // active mid-way through a failed switchover, told to follow it
                        // again, stayed "incomplete" for good and could never be promoted).
                        eng.state_complete = false;
                    }
                    eng.active_hint = arg_str(cmd, 3).or(eng.active_hint.take());
                    if !continues {
                        eng.follow = Some(Follow {
                            replication_addr: addr,
                            ..Follow::default()
                        });
                    }
                    eng.follow_wake.notify_one();
                    Ok(Some("OK".into()))
                }
            }
            (Some(_), Some(epoch)) => Err(Code::StaleEpoch.refuse(format_args!(
                "epoch {epoch} is below {}",
                eng.epoch
            ))),
            _ => Err("ERR usage: TANDEM.FOLLOW replication_addr epoch [active_client_addr]".into()),
        },
        b"TANDEM.OUTOFSERVICE" => {
            eng.follow = None;
            eng.step_down(Role::OutOfService, eng.epoch);
            Ok(Some("OK".into()))
        }
        b"TANDEM.JOURNAL" if cmd.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"UNPIN")) => {
            eng.journal_pinned = false;
            Ok(Some("OK".into()))
        }
        b"TANDEM.JOURNAL" => return journal(eng, out),
        b"TANDEM.SHUTDOWN" => {
            // Out of service first, so nothing is answered by a process about to go away.
            eng.follow = None;
            eng.step_down(Role::OutOfService, eng.epoch);
            eng.shutdown.notify_one();
            Ok(Some("OK".into()))
        }
        b"TANDEM.STATS" => {
            let report = eng.stats.report();
            if cmd.arg(1).is_some_and(|a| a.eq_ignore_ascii_case(b"RESET")) {
                eng.stats.reset();
            }
            reply::bulk(out, contract::encode(&report).as_bytes());
            return Outcome::Done { seq: 0 };
        }
        b"TANDEM.FEATURES.ENABLE" => return enable_features(eng, out, now),
        b"TANDEM.SYNCPOINT" => return sync_point(eng, out, now),
        b"TANDEM.SWITCHOVER" => match arg_u64(cmd, 1) {
            Some(epoch) => return switchover(eng, epoch, out),
            None => Err("ERR usage: TANDEM.SWITCHOVER epoch".into()),
        },
        _ => Err(format!(
            "ERR unknown control command '{}'",
            String::from_utf8_lossy(upper)
        )),
    };
    match result {
        Ok(Some(msg)) => reply::simple(out, &msg),
        Ok(None) => reply::bulk(out, contract::encode(&eng.status()).as_bytes()),
        Err(msg) => reply::error(out, &msg),
    }
    Outcome::Done { seq: 0 }
}

/// Opens the simplex journal (if not open) and answers once it is on disk: the supervisor asks
/// before it takes the standby away, so that the window starts durable and clients never wait
/// for the checkpoint.
fn journal(eng: &mut Engine, out: &mut BytesMut) -> Outcome {
    if eng.role != Role::Active {
        reply::error(out, &eng.not_active_reply());
        return Outcome::Done { seq: 0 };
    }
    if !eng.journal_required() {
        reply::simple(out, "OK no journal: simplex is memory only on this engine");
        return Outcome::Done { seq: 0 };
    }
    eng.open_journal();
    // Kept open through sync leases until the degrade lease that takes the standby away.
    eng.journal_pinned = true;
    if eng.journal.as_ref().is_some_and(|j| j.is_published()) {
        reply::simple(out, "OK journal on disk");
        return Outcome::Done { seq: 0 };
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    eng.journal_waiters.push(tx);
    Outcome::Later(rx)
}

/// Starts a planned switchover: stop taking writes, drain, send the step-up signal with the
/// work-unit description (claim 13); the reply comes when the standby has taken over.
fn switchover(eng: &mut Engine, epoch: u64, out: &mut BytesMut) -> Outcome {
    let refuse = |out: &mut BytesMut, msg: String| {
        reply::error(out, &msg);
        Outcome::Done { seq: 0 }
    };
    if eng.role != Role::Active {
        return refuse(out, format!("ERR {} is not active", eng.config.name));
    }
    if epoch <= eng.epoch {
        return refuse(
            out,
            Code::StaleEpoch.refuse(format_args!("epoch {epoch} is not above {}", eng.epoch)),
        );
    }
    if eng.stepping_down.is_some() {
        return refuse(out, "ERR a switchover is already in progress".into());
    }
    if !eng.standby_in_sync() {
        return refuse(
            out,
            "ERR no standby in sync: nothing to switch over to".into(),
        );
    }
    eng.outbox.seal();
    let signal = StepUp {
        seq_final: eng.outbox.seq_last(),
        epoch,
        work_units: eng.state.units.len() as u64,
        work_units_digest: eng.state.units.digest(),
        state_digest: eng.app.digest(&eng.state),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    eng.stepping_down = Some(tx);
    eng.stepping_down_epoch = Some(epoch);
    if let Some(link) = eng.link.as_mut() {
        link.sender.step_up(signal);
    }
    eng.link_wake.notify_one();
    Outcome::Later(rx)
}

/// Enables the new features of the application on both engines at one sequence number: the
/// change travels in the update stream, and the reply waits until the standby applied it.
fn enable_features(eng: &mut Engine, out: &mut BytesMut, now: Instant) -> Outcome {
    let refuse = |out: &mut BytesMut, msg: String| {
        reply::error(out, &msg);
        Outcome::Done { seq: 0 }
    };
    if eng.role != Role::Active {
        return refuse(out, eng.not_active_reply());
    }
    if eng.state.features_enabled {
        reply::simple(out, "OK features already enabled");
        return Outcome::Done {
            seq: eng.outbox.seq_last(),
        };
    }
    let level = eng.app.feature_level();
    if level < 2 {
        return refuse(
            out,
            format!(
                "ERR {} {} has no new features to enable",
                eng.app.name(),
                eng.app.version()
            ),
        );
    }
    if !eng.standby_in_sync() {
        return refuse(out, "ERR the standby is not in sync: enable the features once both engines run the new version and are in sync".into());
    }
    let peer = eng.link.as_ref().and_then(|l| l.peer.as_ref());
    if let Some(peer) = peer.filter(|p| p.feature_level < level) {
        return refuse(
            out,
            format!(
                "ERR standby {} runs {} {}: every engine must run {} before its features are enabled",
                peer.engine,
                peer.app_name,
                peer.app_version,
                eng.app.version()
            ),
        );
    }
    let Engine { state, outbox, .. } = eng;
    match Ctx::new(state, outbox, now).control(control::FEATURES_ENABLED) {
        Ok(seq) => {
            eng.after_writes(now);
            tracing::info!(engine = %eng.config.name, "new features enabled at sequence {seq}");
            reply::simple(out, "OK");
            Outcome::Done { seq }
        }
        Err(e) => refuse(out, format!("ERR {e}")),
    }
}

/// Writes a sync point into the stream and notes this engine's digest there; the standby notes
/// its own when it applies it, so the two can be compared while writes go on.
fn sync_point(eng: &mut Engine, out: &mut BytesMut, now: Instant) -> Outcome {
    if eng.role != Role::Active {
        reply::error(out, &eng.not_active_reply());
        return Outcome::Done { seq: 0 };
    }
    let Engine { state, outbox, .. } = eng;
    match Ctx::new(state, outbox, now).control(control::SYNC_POINT) {
        Ok(seq) => {
            let digest = eng.state.digest();
            eng.sync_point = Some((seq, digest));
            eng.after_writes(now);
            let point = SyncPointReply {
                seq,
                digest: format!("{digest:016x}"),
            };
            reply::bulk(out, contract::encode(&point).as_bytes());
            Outcome::Done { seq }
        }
        Err(e) => {
            reply::error(out, &format!("ERR {e}"));
            Outcome::Done { seq: 0 }
        }
    }
}
