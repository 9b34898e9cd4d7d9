//! The engine's two RESP servers: the client port (the application's data) and the control
//! port (the supervisor's `TANDEM.*` commands, only after the pair's secret was proven), both
//! pipelined, one task per connection.
//!
//! A connection reads what the socket has, executes every complete command in it against the
//! engine in one borrow, waits once until the engine may release everything those commands
//! saw (the standby has acknowledged it), then writes all the replies with one syscall. A
//! malformed request gets a protocol error and the connection is closed; the engine goes on.
//!
//! Every resource a connection holds is bounded: a round stops executing once its replies
//! reach [`ROUND_OUTPUT_BYTES`] (the rest waits, unread, in the socket), a client that takes no
//! reply bytes for `output_stall_timeout` is disconnected and its buffers freed, connections
//! are counted against `clients_max`, an unauthenticated one must prove itself within
//! [`AUTH_TIMEOUT`] and waits in a bounded room that turns out its oldest occupant when full
//! (`waiting_room.rs`), and an accept error (out of file descriptors) backs off instead of
//! spinning.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use resp::auth::{Gate, ServerAuth};
use resp::{reply, Command, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{Access, CommandError};
use crate::conn::{self, Conn};
use crate::contract::Code;
use crate::control;
use crate::keyspace::{self, Spec};
use crate::node::{Engine, Role, Shared};
use crate::waiting_room::{Ticket, WaitingRoom};

const READ_BYTES: usize = 16 << 10;
/// A client whose unparsed input grows past this is cut off (a request is bounded by Limits).
const PENDING_INPUT_BYTES_MAX: usize = 64 << 20;
/// How often a waiting reply re-checks a lease that may have been granted or expired.
const RELEASE_RECHECK: Duration = Duration::from_millis(20);
/// A round stops executing commands once its replies reach this many bytes.
pub const ROUND_OUTPUT_BYTES: usize = 1 << 20;
/// An unauthenticated connection must finish the handshake (or `AUTH`) within this long.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Unauthenticated connections held at once, at most, per port; a new one turns out the
/// oldest.
pub const UNAUTHENTICATED_MAX: usize = 64;
/// Connections to the control port at once, at most (the supervisor uses one or two).
const CONTROL_CONNECTIONS_MAX: usize = 256;
/// After an accept error (EMFILE), the listener pauses this long before it tries again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Which of the engine's ports a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The application's commands; `TANDEM.*` is refused here.
    Client,
    /// The supervisor's `TANDEM.*` commands, after the pair's secret was proven.
    Control,
}

impl Port {
    fn name(self) -> &'static str {
        match self {
            Port::Client => "client",
            Port::Control => "control",
        }
    }
}

/// Limits on what clients may hold (flags of `tandem engine` and `tandem pair up`).
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections on the client port at once, at most (Redis's `maxclients`).
    pub clients_max: usize,
    /// A client whose replies wait this long without the socket taking a byte is dropped.
    pub output_stall_timeout: Duration,
    /// One round's replies beyond this many bytes drop the client at once.
    pub output_bytes_max: usize,
    /// With a password, the client port takes `AUTH` before anything else (`--requirepass`).
    pub requirepass: Option<Vec<u8>>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            clients_max: 10_000,
            output_stall_timeout: Duration::from_secs(30),
            output_bytes_max: 64 << 20,
            requirepass: None,
        }
    }
}

/// Counts live connections; the count drops when the guard does.
struct Slot(Rc<Cell<usize>>);

impl Slot {
    fn take(count: &Rc<Cell<usize>>, max: usize) -> Option<Slot> {
        (count.get() < max).then(|| {
            count.set(count.get() + 1);
            Slot(count.clone())
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

pub async fn serve(engine: Shared, listener: TcpListener, port: Port) {
    let connections = Rc::new(Cell::new(0));
    let waiting = WaitingRoom::new(UNAUTHENTICATED_MAX);
    let mut accept_failures = 0u64;
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    let name = engine.borrow().config.name.clone();
                    tracing::warn!(
                        engine = %name,
                        "{} port: accept failed ({e}), {accept_failures} times so far; pausing",
                        port.name(),
                    );
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let max = match port {
            Port::Client => engine.borrow().config.limits.clients_max,
            Port::Control => CONTROL_CONNECTIONS_MAX,
        };
        let Some(slot) = Slot::take(&connections, max) else {
            engine.borrow_mut().counters.clients_refused += 1;
            tokio::task::spawn_local(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let needs_auth =
            port == Port::Control || engine.borrow().config.limits.requirepass.is_some();
        let pending = needs_auth.then(|| {
            let (ticket, evicted) = waiting.enter();
            if evicted {
                engine.borrow_mut().counters.clients_refused += 1;
            }
            ticket
        });
        tokio::task::spawn_local(connection(engine.clone(), stream, port, slot, pending));
    }
}

/// Where a connection stands with authentication.
enum Auth {
    /// Nothing to prove (the client port without `--requirepass`), or proven.
    Open,
    /// The control port: the pair's secret, by challenge-response.
    Secret(Box<ServerAuth>),
    /// The client port with `--requirepass`: Redis's `AUTH [user] password`.
    Password,
}

impl Auth {
    fn is_open(&self) -> bool {
        matches!(self, Auth::Open)
    }

    /// Lets `cmd` through, answers it as part of authenticating, or closes the connection.
    fn check(&mut self, eng: &Engine, cmd: &Command, out: &mut BytesMut) -> Gate {
        match self {
            Auth::Open => Gate::Pass,
            Auth::Secret(gate) => {
                let result = gate.handle(&eng.config.link.secret, cmd, out);
                if gate.is_done() {
                    *self = Auth::Open;
                }
                result
            }
            Auth::Password => {
                let name = cmd.arg(0).map_or(&[][..], |n| &n[..]);
                if name.eq_ignore_ascii_case(b"QUIT") {
                    return Gate::Pass;
                }
                let hello = name.eq_ignore_ascii_case(b"HELLO");
                let given = if hello {
                    // HELLO <proto> AUTH <user> <pass>: authenticates, then HELLO is answered.
                    let auth = cmd
                        .args
                        .iter()
                        .position(|a| a.eq_ignore_ascii_case(b"AUTH"));
                    match auth.filter(|&i| i == 2 && cmd.len() >= 5) {
                        Some(i) if cmd.args[i + 1].eq_ignore_ascii_case(b"default") => {
                            &cmd.args[i + 2]
                        }
                        Some(_) => b"".as_slice(), // another user: refused below
                        None => {
                            reply::error(out, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
                            return Gate::Handled;
                        }
                    }
                } else if name.eq_ignore_ascii_case(b"AUTH") {
                    match cmd.len() {
                        2 => &cmd.args[1],
                        3 if cmd.args[1].eq_ignore_ascii_case(b"default") => &cmd.args[2],
                        _ => {
                            reply::error(out, "ERR wrong number of arguments for 'auth' command");
                            return Gate::Handled;
                        }
                    }
                } else {
                    reply::error(out, "NOAUTH Authentication required.");
                    return Gate::Handled;
                };
                let want = eng.config.limits.requirepass.as_deref().unwrap_or_default();
                if !given.is_empty() && constant_time_eq(given, want) {
                    *self = Auth::Open;
                    if hello {
                        return Gate::Pass;
                    }
                    reply::simple(out, "OK");
                } else {
                    reply::error(
                        out,
                        "WRONGPASS invalid username-password pair or user is disabled.",
                    );
                }
                Gate::Handled
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a round's replies, dropping the client if its socket takes nothing for `stall`.
async fn write_replies(stream: &mut TcpStream, out: &[u8], stall: Duration) -> Result<(), ()> {
    let mut written = 0;
    while written < out.len() {
        match tokio::time::timeout(stall, stream.write(&out[written..])).await {
            Ok(Ok(n)) if n > 0 => written += n,
            _ => return Err(()),
        }
    }
    Ok(())
}

/// Counts an open client connection in `Engine::clients_connected` while it lives.
struct Counted(Option<Shared>);

impl Counted {
    /// The connection's own state, numbered as Redis numbers clients (from 1).
    fn client(engine: &Shared, port: Port) -> (Conn, Counted) {
        let mut eng = engine.borrow_mut();
        if port != Port::Client {
            return (Conn::new(0), Counted(None));
        }
        eng.clients_total += 1;
        eng.clients_connected += 1;
        (Conn::new(eng.clients_total), Counted(Some(engine.clone())))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(mut eng) = self.0.as_ref().and_then(|e| e.try_borrow_mut().ok()) {
            eng.clients_connected -= 1;
        }
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

async fn connection(
    engine: Shared,
    mut stream: TcpStream,
    port: Port,
    _slot: Slot,
    mut unauthenticated: Option<Ticket>,
) {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut rx = BytesMut::with_capacity(READ_BYTES);
    let mut out = BytesMut::with_capacity(READ_BYTES);
    let (mut progress, mut auth, server_limits) = {
        let eng = engine.borrow();
        let auth = match port {
            Port::Control => Auth::Secret(Box::new(ServerAuth::new("control"))),
            Port::Client if eng.config.limits.requirepass.is_some() => Auth::Password,
            Port::Client => Auth::Open,
        };
        (eng.progress.subscribe(), auth, eng.config.limits.clone())
    };
    let (mut conn, _counted) = Counted::client(&engine, port);
    let auth_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let mut first_read = true;
    'conn: loop {
        if rx.len() > PENDING_INPUT_BYTES_MAX {
            break;
        }
        let read = stream.read_buf(&mut rx);
        let read = match (auth.is_open(), unauthenticated.as_ref()) {
            (false, Some(ticket)) => tokio::select! {
                r = tokio::time::timeout_at(auth_deadline, read) => match r {
                    Ok(r) => r,
                    Err(_) => break, // never authenticated: its place goes to someone else
                },
                () = ticket.turned_out() => break, // the room was full and it waited longest
            },
            _ => read.await,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if std::mem::take(&mut first_read)
            && port == Port::Control
            && resp::auth::looks_like_http(&rx)
        {
            let mut eng = engine.borrow_mut();
            eng.counters.clients_refused += 1;
            tracing::warn!(
                engine = %eng.config.name,
                "closed a connection to the control port that speaks HTTP (cross-protocol attack?)",
            );
            break;
        }
        // Execute what arrived; a command that must wait (full outbox, switchover) ends the
        // round early and the rest is parsed in the next round without reading more.
        loop {
            let mut wait_seq = 0;
            let mut later = None;
            let mut quit = false;
            let mut need_more = false;
            let mut delay = None;
            // A control command offering a new epoch, held until etcd's record is read.
            let mut witnessed: Option<(Command, u64)> = None;
            let epoch_seen;
            let commands;
            let round_start = Instant::now();
            {
                let now = round_start;
                let mut eng = engine.borrow_mut();
                epoch_seen = eng.epoch;
                let seq_before = eng.outbox.seq_last();
                loop {
                    if eng.writes_blocked() {
                        break; // back-pressure: let the link (or the journal) drain first
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
                    match auth.check(&eng, &cmd, &mut out) {
                        Gate::Pass => {}
                        Gate::Handled => {
                            if auth.is_open() {
                                drop(unauthenticated.take()); // its slot is free again
                            }
                            continue;
                        }
                        Gate::Close(why) => {
                            eng.counters.clients_refused += 1;
                            tracing::warn!(
                                engine = %eng.config.name,
                                "{} port: {why}; closing",
                                port.name(),
                            );
                            quit = true;
                            break;
                        }
                    }
                    if port == Port::Control && crate::witness::engine_witness().is_some() {
                        if let Some(epoch) = offered_epoch(&eng, &cmd) {
                            witnessed = Some((cmd, epoch));
                            break;
                        }
                    }
                    match dispatch(&mut eng, port, &mut conn, &cmd, &mut out, now) {
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
                    if out.len() > server_limits.output_bytes_max {
                        eng.counters.clients_dropped_output += 1;
                        tracing::warn!(
                            engine = %eng.config.name,
                            "a client's replies reached {} bytes, over the limit of {}: disconnecting it",
                            out.len(),
                            server_limits.output_bytes_max,
                        );
                        break 'conn;
                    }
                    if out.len() >= ROUND_OUTPUT_BYTES {
                        break; // the rest of the pipeline waits until these replies are out
                    }
                }
                if eng.outbox.seq_last() > seq_before {
                    eng.after_writes(now);
                }
                commands = std::mem::take(&mut eng.stats.unrecorded_commands);
            }
            if let Some((cmd, epoch)) = witnessed.take() {
                // Read etcd without holding the engine: the thread serves on meanwhile.
                let witness = crate::witness::engine_witness().expect("checked above");
                let verdict = witness.check(epoch).await;
                let mut eng = engine.borrow_mut();
                match verdict {
                    Ok(()) => {
                        match dispatch(&mut eng, port, &mut conn, &cmd, &mut out, Instant::now()) {
                            Outcome::Done { seq } => wait_seq = wait_seq.max(seq),
                            Outcome::Later(rx) => later = Some(rx),
                            Outcome::Quit => quit = true,
                        }
                    }
                    Err(why) => {
                        tracing::warn!(engine = %eng.config.name, "refused epoch {epoch}: {why}");
                        reply::error(&mut out, &Code::NotGranted.refuse(why));
                    }
                }
                need_more = false; // what follows in the buffer is parsed next round
            }
            if !wait_until_released(&engine, &mut progress, wait_seq, epoch_seen).await {
                break 'conn; // fenced or stepped down: the outcome of these writes is unknown
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await; // an injected fault: a slow build's latency
            }
            let stall = server_limits.output_stall_timeout;
            if let Some(pending) = later {
                if write_replies(&mut stream, &out, stall).await.is_err() {
                    engine.borrow_mut().counters.clients_dropped_output += 1;
                    break 'conn;
                }
                out.clear();
                match pending.await {
                    Ok(Ok(msg)) => reply::simple(&mut out, &msg),
                    Ok(Err(msg)) => reply::error(&mut out, &msg),
                    Err(_) => reply::error(&mut out, "ERR the engine dropped the request"),
                }
            }
            if write_replies(&mut stream, &out, stall).await.is_err() {
                let mut eng = engine.borrow_mut();
                eng.counters.clients_dropped_output += 1;
                tracing::warn!(
                    engine = %eng.config.name,
                    "a client took no reply bytes for {} ms: disconnecting it",
                    stall.as_millis(),
                );
                break 'conn;
            }
            out.clear();
            if out.capacity() > 4 * ROUND_OUTPUT_BYTES {
                out = BytesMut::with_capacity(READ_BYTES); // give back a large reply's memory
            }
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
            let stalled = engine.borrow().writes_blocked();
            if stalled && progress.changed().await.is_err() {
                break 'conn;
            }
        }
    }
}

/// Waits until replies that saw `seq` may go. False if the engine left the epoch in which the
/// writes were made before they were released.
pub(crate) async fn wait_until_released(
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

/// The new epoch a control command offers this engine (see `control::offered_epoch`).
fn offered_epoch(eng: &Engine, cmd: &Command) -> Option<u64> {
    let name = cmd.arg(0)?;
    let mut upper = [0u8; 32];
    let n = name.len().min(upper.len());
    upper[..n].copy_from_slice(&name[..n]);
    upper[..n].make_ascii_uppercase();
    control::offered_epoch(eng, &upper[..n], cmd)
}

/// Executes one command that came in on `port`: on the control port only `TANDEM.*` (and
/// `PING`); on the client port built-in commands first, then the application's.
pub fn dispatch(
    eng: &mut Engine,
    port: Port,
    conn: &mut Conn,
    cmd: &Command,
    out: &mut BytesMut,
    now: Instant,
) -> Outcome {
    let Some(name) = cmd.arg(0) else {
        return Outcome::Done { seq: 0 };
    };
    let mut upper = [0u8; 32];
    let n = name.len().min(upper.len());
    upper[..n].copy_from_slice(&name[..n]);
    upper[..n].make_ascii_uppercase();
    let upper = &upper[..n];
    match (port, upper.starts_with(b"TANDEM.")) {
        (Port::Control, true) => return control::dispatch(eng, upper, cmd, out, now),
        (Port::Control, false) if upper == b"PING" => {}
        (Port::Control, false) => {
            reply::error(out, "ERR the control port takes TANDEM.* commands only");
            return Outcome::Done { seq: 0 };
        }
        (Port::Client, true) => {
            let shown = String::from_utf8_lossy(&cmd.args[0]);
            reply::error(
                out,
                &format!("ERR unknown command '{shown}' (engine control is not accepted on the client port)"),
            );
            return Outcome::Done { seq: 0 };
        }
        (Port::Client, false) => {}
    }
    if let Some(outcome) = conn::handle(eng, conn, upper, cmd, out, now) {
        return outcome;
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
        // Clients and benchmarks probe these on connect; tandem has nothing to configure here.
        b"CONFIG" if cmd.len() == 3 && cmd.args[1].eq_ignore_ascii_case(b"GET") => {
            if conn.resp3 {
                reply::map_len(out, 1);
            } else {
                reply::array_len(out, 2);
            }
            reply::bulk(out, &cmd.args[2]);
            reply::bulk(out, b"");
        }
        b"CONFIG" => reply::array_len(out, 0),
        _ => return execute(eng, upper, cmd, out, now, conn),
    }
    Outcome::Done { seq: visible }
}

fn execute(
    eng: &mut Engine,
    upper: &[u8],
    cmd: &Command,
    out: &mut BytesMut,
    now: Instant,
    conn: &Conn,
) -> Outcome {
    let builtin = keyspace::find(keyspace::DATA, upper);
    let Some(access) = builtin.map(Spec::access).or_else(|| eng.app.access(upper)) else {
        let shown = String::from_utf8_lossy(&cmd.args[0]);
        reply::error(out, &format!("ERR unknown command '{shown}'"));
        return Outcome::Done { seq: 0 };
    };
    if eng.role != Role::Active || (access == Access::Write && eng.stepping_down.is_some()) {
        conn.refuse_not_active(eng, out);
        return Outcome::Done { seq: 0 };
    }
    let resp3 = conn.resp3;
    let now_ms = eng.wall.unix_ms(now);
    let Engine {
        state, outbox, app, ..
    } = eng;
    let mut ctx = crate::app::Ctx::new(state, outbox, now);
    let fault = app.write_fault(access);
    let result = fault.and_then(|()| match builtin {
        Some(spec) if !spec.arity_ok(cmd) => Err(CommandError::new(keyspace::wrong_arity(cmd))),
        Some(spec) => keyspace::execute(spec, cmd, &mut ctx, out, resp3, now_ms),
        None => app.execute(cmd, &mut ctx, out),
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
