//! The client server: RESP over TCP, pipelined, one task per connection.
//!
//! A connection reads what the socket has, executes every complete command in it against the
//! engine in one borrow, waits once until the engine may release everything those commands
//! saw (the standby has acknowledged it), then writes all the replies with one syscall. A
//! malformed request gets a protocol error and the connection is closed; the engine goes on.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use resp::{reply, Command, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::Access;
use crate::control;
use crate::node::{Engine, Role, Shared};

const READ_BYTES: usize = 16 << 10;
/// A client whose unparsed input grows past this is cut off (a request is bounded by Limits).
const PENDING_INPUT_BYTES_MAX: usize = 64 << 20;
/// How often a waiting reply re-checks a lease that may have been granted or expired.
const RELEASE_RECHECK: Duration = Duration::from_millis(20);

pub async fn serve(engine: Shared, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::task::spawn_local(connection(engine.clone(), stream));
    }
}

/// What executing one command asks of the connection.
pub enum Outcome {
    /// The reply is in the output buffer; it may go once `seq` is released.
    Done { seq: u64 },
    /// The reply comes later (control commands that take time, such as a switchover).
    Later(tokio::sync::oneshot::Receiver<Result<String, String>>),
    /// Reply, then close the connection.
    Quit,
}

async fn connection(engine: Shared, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut rx = BytesMut::with_capacity(READ_BYTES);
    let mut out = BytesMut::with_capacity(READ_BYTES);
    let mut progress = engine.borrow().progress.subscribe();
    'conn: loop {
        if rx.len() > PENDING_INPUT_BYTES_MAX {
            break;
        }
        match stream.read_buf(&mut rx).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // Execute what arrived; a command that must wait (full outbox, switchover) ends the
        // round early and the rest is parsed in the next round without reading more.
        loop {
            let mut wait_seq = 0;
            let mut later = None;
            let mut quit = false;
            let mut need_more = false;
            let mut delay = None;
            let epoch_seen;
            let commands;
            let round_start = Instant::now();
            {
                let now = round_start;
                let mut eng = engine.borrow_mut();
                epoch_seen = eng.epoch;
                let seq_before = eng.outbox.seq_last();
                loop {
                    if eng.role == Role::Active && eng.outbox.is_full() {
                        break; // back-pressure: let the link drain first
                    }
                    let cmd = match resp::parse_command(&mut rx, &limits) {
                        Ok(Some(cmd)) => cmd,
                        Ok(None) => {
                            need_more = true;
                            break;
                        }
                        Err(e) => {
                            eng.counters.client_protocol_errors += 1;
                            reply::error(&mut out, &e.to_string());
                            quit = true;
                            break;
                        }
                    };
                    match dispatch(&mut eng, &cmd, &mut out, now) {
                        Outcome::Done { seq } => {
                            wait_seq = wait_seq.max(seq);
                            delay = delay.max(eng.app.reply_delay());
                        }
                        Outcome::Later(rx) => {
                            later = Some(rx);
                            break;
                        }
                        Outcome::Quit => {
                            quit = true;
                            break;
                        }
                    }
                }
                if eng.outbox.seq_last() > seq_before {
                    eng.after_writes(now);
                }
                commands = std::mem::take(&mut eng.stats.unrecorded_commands);
            }
            if !wait_until_released(&engine, &mut progress, wait_seq, epoch_seen).await {
                break 'conn; // fenced or stepped down: the outcome of these writes is unknown
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await; // an injected fault: a slow build's latency
            }
            if let Some(pending) = later {
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    break 'conn;
                }
                out.clear();
                match pending.await {
                    Ok(Ok(msg)) => reply::simple(&mut out, &msg),
                    Ok(Err(msg)) => reply::error(&mut out, &msg),
                    Err(_) => reply::error(&mut out, "ERR the engine dropped the request"),
                }
            }
            if !out.is_empty() && stream.write_all(&out).await.is_err() {
                break 'conn;
            }
            out.clear();
            engine
                .borrow_mut()
                .stats
                .record(commands, round_start.elapsed().as_micros() as u64);
            if quit {
                break 'conn;
            }
            if need_more {
                break;
            }
            let stalled = {
                let eng = engine.borrow();
                eng.role == Role::Active && eng.outbox.is_full()
            };
            if stalled && progress.changed().await.is_err() {
                break 'conn;
            }
        }
    }
}

/// Waits until replies that saw `seq` may go. False if the engine left the epoch in which the
/// writes were made before they were released.
async fn wait_until_released(
    engine: &Shared,
    progress: &mut tokio::sync::watch::Receiver<u64>,
    seq: u64,
    epoch_seen: u64,
) -> bool {
    loop {
        {
            let mut eng = engine.borrow_mut();
            if eng.seq_released >= seq {
                return true;
            }
            if eng.role != Role::Active || eng.epoch != epoch_seen {
                return false;
            }
            eng.refresh_released(Instant::now());
            if eng.seq_released >= seq {
                return true;
            }
            progress.borrow_and_update();
        }
        let _ = tokio::time::timeout(RELEASE_RECHECK, progress.changed()).await;
    }
}

/// Executes one command. Built-in commands first, then control, then the application's.
pub fn dispatch(eng: &mut Engine, cmd: &Command, out: &mut BytesMut, now: Instant) -> Outcome {
    let Some(name) = cmd.arg(0) else {
        return Outcome::Done { seq: 0 };
    };
    let mut upper = [0u8; 32];
    let n = name.len().min(upper.len());
    upper[..n].copy_from_slice(&name[..n]);
    upper[..n].make_ascii_uppercase();
    let upper = &upper[..n];
    if upper.starts_with(b"TANDEM.") {
        return control::dispatch(eng, upper, cmd, out, now);
    }
    let visible = eng.outbox.seq_last();
    match upper {
        b"PING" => match cmd.arg(1) {
            Some(msg) => reply::bulk(out, msg),
            None => reply::simple(out, "PONG"),
        },
        b"ECHO" if cmd.len() == 2 => reply::bulk(out, &cmd.args[1]),
        b"QUIT" => {
            reply::simple(out, "OK");
            return Outcome::Quit;
        }
        b"ROLE" => role_reply(eng, out),
        b"INFO" => reply::bulk(out, info(eng).as_bytes()),
        // Clients and benchmarks probe these on connect; tandem has nothing to configure here.
        b"CONFIG" if cmd.len() == 3 && cmd.args[1].eq_ignore_ascii_case(b"GET") => {
            reply::array_len(out, 2);
            reply::bulk(out, &cmd.args[2]);
            reply::bulk(out, b"");
        }
        b"COMMAND" | b"CONFIG" => reply::array_len(out, 0),
        b"CLIENT" | b"SELECT" => reply::simple(out, "OK"),
        _ => return execute(eng, upper, cmd, out, now),
    }
    Outcome::Done { seq: visible }
}

fn execute(
    eng: &mut Engine,
    upper: &[u8],
    cmd: &Command,
    out: &mut BytesMut,
    now: Instant,
) -> Outcome {
    let builtin = match upper {
        b"GET" | b"EXISTS" | b"DBSIZE" => Some(Access::Read),
        b"SET" | b"DEL" => Some(Access::Write),
        _ => None,
    };
    let Some(access) = builtin.or_else(|| eng.app.access(upper)) else {
        let shown = String::from_utf8_lossy(&cmd.args[0]);
        reply::error(out, &format!("ERR unknown command '{shown}'"));
        return Outcome::Done { seq: 0 };
    };
    if eng.role != Role::Active || (access == Access::Write && eng.stepping_down.is_some()) {
        reply::error(out, &eng.not_active_reply());
        return Outcome::Done { seq: 0 };
    }
    let Engine {
        state, outbox, app, ..
    } = eng;
    let mut ctx = crate::app::Ctx::new(state, outbox, now);
    let fault = app.write_fault(access);
    let result = fault.and_then(|()| match (builtin.is_some(), upper) {
        (true, b"GET") if cmd.len() == 2 => {
            match ctx.db_get(&cmd.args[1]) {
                Some(v) => reply::bulk(out, v),
                None => reply::null_bulk(out),
            }
            Ok(())
        }
        (true, b"EXISTS") if cmd.len() >= 2 => {
            let n = cmd.args[1..]
                .iter()
                .filter(|k| ctx.db_get(k).is_some())
                .count();
            reply::integer(out, n as i64);
            Ok(())
        }
        (true, b"DBSIZE") => {
            reply::integer(out, ctx.db_len() as i64);
            Ok(())
        }
        (true, b"SET") if cmd.len() == 3 => ctx
            .db_put(&cmd.args[1], &cmd.args[2])
            .map(|_| reply::simple(out, "OK"))
            .map_err(Into::into),
        (true, b"DEL") if cmd.len() >= 2 => {
            let mut n = 0;
            let mut result = Ok(());
            for key in &cmd.args[1..] {
                match ctx.db_delete(key) {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => result = Err(e.into()),
                }
            }
            result.map(|_| reply::integer(out, n))
        }
        (true, _) => {
            let shown = String::from_utf8_lossy(&cmd.args[0]).to_lowercase();
            reply::error(
                out,
                &format!("ERR wrong number of arguments for '{shown}' command"),
            );
            Ok(())
        }
        (false, _) => app.execute(cmd, &mut ctx, out),
    });
    eng.stats.unrecorded_commands += 1;
    if let Err(e) = result {
        reply::error(out, &e.0);
        eng.stats.error();
    }
    Outcome::Done {
        seq: eng.outbox.seq_last(),
    }
}

fn role_reply(eng: &Engine, out: &mut BytesMut) {
    match eng.role {
        Role::Active => {
            reply::array_len(out, 3);
            reply::bulk(out, b"master");
            reply::integer(out, eng.outbox.seq_last() as i64);
            reply::array_len(out, 0);
        }
        _ => {
            reply::array_len(out, 5);
            reply::bulk(out, b"slave");
            let addr = eng.active_hint.clone().unwrap_or_default();
            let (host, port) = addr.rsplit_once(':').unwrap_or(("", "0"));
            reply::bulk(out, host.as_bytes());
            reply::integer(out, port.parse().unwrap_or(0));
            let linked = eng.follow.as_ref().is_some_and(|f| f.connected);
            reply::bulk(out, if linked { b"connected" } else { b"connect" });
            reply::integer(out, eng.seq_applied as i64);
        }
    }
}

fn info(eng: &Engine) -> String {
    let s = eng.status();
    format!(
        "# Server\r\ntandem_version:{}\r\nengine:{}\r\napp:{} {}\r\nuptime_ms:{}\r\n\r\n# Replication\r\nrole:{}\r\ntandem_role:{}\r\nepoch:{}\r\nseq_applied:{}\r\nin_sync:{}\r\nsimplex:{}\r\n\r\n# Keyspace\r\nwork_units:{}\r\ndb_records:{}\r\ndigest:{}\r\n",
        env!("CARGO_PKG_VERSION"),
        s.name,
        eng.app.name(),
        s.app_version,
        s.uptime_ms,
        if s.role == Role::Active { "master" } else { "slave" },
        s.role.as_str(),
        s.epoch,
        s.seq_applied,
        s.in_sync as u8,
        s.simplex as u8,
        s.work_units,
        s.db_records,
        s.digest,
    )
}
