//! What Redis client libraries expect of a connection besides the data commands: the
//! handshake (`HELLO 2|3`, `CLIENT`, `SELECT 0`, `COMMAND`, `INFO`, `RESET`) and
//! transactions (`MULTI`, `EXEC`, `DISCARD`), whose updates all go out in one batch, so that
//! a standby applies all of a transaction or none of it.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use resp::{reply, Command};

use crate::keyspace::{self, Spec};
use crate::node::{Engine, Role};
use crate::server::{dispatch, Outcome, Port};

/// The Redis version whose protocol and replies tandem follows (client libraries gate
/// features on it); `tandem_version` says what runs.
pub const REDIS_VERSION: &str = "7.2.0";

/// One client connection's own state.
pub struct Conn {
    pub id: u64,
    /// The client asked for RESP3 (`HELLO 3`).
    pub resp3: bool,
    pub name: Option<Bytes>,
    /// `MULTI`: the commands queued for `EXEC`.
    multi: Option<Vec<Command>>,
    /// A command queued in this transaction was refused: `EXEC` discards it.
    multi_failed: bool,
    /// `WATCH`: each key with the fingerprint of its value and deadline then; `EXEC` runs
    /// only if none has changed.
    watched: Vec<(Bytes, u64)>,
    /// `CLIENT NOTACTIVE ON`: refusals name the active (`-NOTACTIVE <addr>`), for clients that
    /// follow the pair themselves. Otherwise Redis's `-READONLY`, on which Sentinel-aware
    /// client libraries ask Sentinel (`tandem`'s discovery port) for the primary again.
    pub notactive: bool,
}

impl Conn {
    pub fn new(id: u64) -> Conn {
        Conn {
            id,
            resp3: false,
            name: None,
            multi: None,
            multi_failed: false,
            watched: Vec::new(),
            notactive: false,
        }
    }

    /// A connection that follows `-NOTACTIVE <addr>` itself (tandem's own clients).
    pub fn following() -> Conn {
        Conn {
            notactive: true,
            ..Conn::new(0)
        }
    }

    /// This engine does not take the command: why, in the form this client asked for.
    pub fn refuse_not_active(&self, eng: &Engine, out: &mut BytesMut) {
        if self.notactive {
            reply::error(out, &eng.not_active_reply());
        } else {
            reply::error(out, READONLY);
        }
    }
}

/// Redis's answer of a replica to a write; client libraries recognize it.
pub const READONLY: &str = "READONLY You can't write against a read only replica.";

/// The connection commands, as `COMMAND` reports them.
const CONNECTION: &[Spec] = &[
    conn_spec("PING", -1),
    conn_spec("ECHO", 2),
    conn_spec("HELLO", -1),
    conn_spec("AUTH", -2),
    conn_spec("CLIENT", -2),
    conn_spec("SELECT", 2),
    conn_spec("COMMAND", -1),
    conn_spec("INFO", -1),
    conn_spec("ROLE", 1),
    conn_spec("CONFIG", -2),
    conn_spec("RESET", 1),
    conn_spec("QUIT", -1),
    conn_spec("MULTI", 1),
    conn_spec("EXEC", 1),
    conn_spec("DISCARD", 1),
    conn_spec("WATCH", -2),
    conn_spec("UNWATCH", 1),
];

const fn conn_spec(name: &'static str, arity: i64) -> Spec {
    Spec {
        name,
        arity,
        write: false,
        keys: (0, 0, 0),
    }
}

/// Handles `cmd` if it is a connection or transaction command, or queues it inside a
/// transaction; None: run it now.
pub fn handle(
    eng: &mut Engine,
    conn: &mut Conn,
    upper: &[u8],
    cmd: &Command,
    out: &mut BytesMut,
    now: Instant,
) -> Option<Outcome> {
    let done = Some(Outcome::Done { seq: 0 });
    if conn.multi.is_some()
        && !matches!(
            upper,
            b"EXEC" | b"DISCARD" | b"MULTI" | b"RESET" | b"QUIT" | b"WATCH"
        )
    {
        return Some(queue(eng, conn, upper, cmd, out));
    }
    match upper {
        b"HELLO" => hello(eng, conn, cmd, out),
        b"CLIENT" => client(conn, cmd, out),
        b"SELECT" if cmd.len() == 2 => match &cmd.args[1][..] {
            b"0" => reply::simple(out, "OK"),
            _ => reply::error(out, "ERR DB index is out of range (tandem has database 0 only)"),
        },
        b"COMMAND" => command(cmd, out),
        b"INFO" => reply::bulk(out, info(eng, cmd).as_bytes()),
        b"AUTH" => reply::error(
            out,
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
        ),
        b"RESET" => {
            *conn = Conn::new(conn.id);
            reply::simple(out, "RESET");
        }
        b"MULTI" => match conn.multi {
            Some(_) => reply::error(out, "ERR MULTI calls can not be nested"),
            None => {
                conn.multi = Some(Vec::new());
                conn.multi_failed = false;
                reply::simple(out, "OK");
            }
        },
        b"DISCARD" => match conn.multi.take() {
            Some(_) => {
                conn.watched.clear();
                reply::simple(out, "OK")
            }
            None => reply::error(out, "ERR DISCARD without MULTI"),
        },
        b"EXEC" => return Some(exec(eng, conn, out, now)),
        b"WATCH" if conn.multi.is_some() => {
            conn.multi_failed = true;
            reply::error(out, "ERR WATCH inside MULTI is not allowed");
        }
        b"WATCH" if cmd.len() < 2 => reply::error(out, &keyspace::wrong_arity(cmd)),
        b"WATCH" => {
            let now_ms = eng.wall.unix_ms(now);
            for key in &cmd.args[1..] {
                let print = keyspace::fingerprint(&eng.state, key, now_ms);
                conn.watched.push((key.clone(), print));
            }
            reply::simple(out, "OK");
        }
        b"UNWATCH" => {
            conn.watched.clear();
            reply::simple(out, "OK");
        }
        _ => return None,
    }
    done
}

/// Inside `MULTI`: checks the command's name and argument count and queues it.
fn queue(
    eng: &Engine,
    conn: &mut Conn,
    upper: &[u8],
    cmd: &Command,
    out: &mut BytesMut,
) -> Outcome {
    let known = keyspace::find(keyspace::DATA, upper)
        .or_else(|| keyspace::find(CONNECTION, upper))
        .map(|s| s.arity_ok(cmd))
        .or_else(|| eng.app.access(upper).map(|_| true));
    match known {
        Some(true) => {
            conn.multi
                .as_mut()
                .expect("in a transaction")
                .push(cmd.clone());
            reply::simple(out, "QUEUED");
        }
        Some(false) => {
            conn.multi_failed = true;
            reply::error(out, &keyspace::wrong_arity(cmd));
        }
        None => {
            conn.multi_failed = true;
            let shown = String::from_utf8_lossy(&cmd.args[0]);
            reply::error(out, &format!("ERR unknown command '{shown}'"));
        }
    }
    Outcome::Done { seq: 0 }
}

/// `EXEC`: every queued command in one borrow of the engine, their updates in one batch.
fn exec(eng: &mut Engine, conn: &mut Conn, out: &mut BytesMut, now: Instant) -> Outcome {
    let Some(queued) = conn.multi.take() else {
        reply::error(out, "ERR EXEC without MULTI");
        return Outcome::Done { seq: 0 };
    };
    let watched = std::mem::take(&mut conn.watched);
    if std::mem::take(&mut conn.multi_failed) {
        reply::error(
            out,
            "EXECABORT Transaction discarded because of previous errors.",
        );
        return Outcome::Done { seq: 0 };
    }
    if eng.role != Role::Active || eng.stepping_down.is_some() {
        conn.refuse_not_active(eng, out);
        return Outcome::Done { seq: 0 };
    }
    let now_ms = eng.wall.unix_ms(now);
    if watched
        .iter()
        .any(|(key, print)| keyspace::fingerprint(&eng.state, key, now_ms) != *print)
    {
        // A watched key changed: the transaction does not run (a null reply, as in Redis).
        if conn.resp3 {
            reply::null(out);
        } else {
            reply::null_array(out);
        }
        return Outcome::Done {
            seq: eng.outbox.seq_last(), // what it saw must be released before it says so
        };
    }
    // What the transaction may write, at most: its arguments and a record's framing for each.
    let bound: usize = queued
        .iter()
        .map(|c| c.args.iter().map(|a| a.len() + 32).sum::<usize>())
        .sum();
    if bound > replicator::frame::PAYLOAD_BYTES_MAX / 2 {
        reply::error(
            out,
            &format!(
                "ERR transaction too large to replicate as one batch ({bound} bytes of arguments, at most {})",
                replicator::frame::PAYLOAD_BYTES_MAX / 2
            ),
        );
        return Outcome::Done { seq: 0 };
    }
    if bound > eng.outbox.room() {
        eng.outbox.seal(); // the transaction starts a batch of its own
    }
    let sealed_before = eng.outbox.seq_sealed();
    reply::array_len(out, queued.len());
    let mut seq = 0;
    for cmd in &queued {
        if let Outcome::Done { seq: s } = dispatch(eng, Port::Client, conn, cmd, out, now) {
            seq = seq.max(s);
        }
    }
    debug_assert_eq!(
        eng.outbox.seq_sealed(),
        sealed_before,
        "a transaction's updates were split between batches"
    );
    Outcome::Done { seq }
}

/// `HELLO [2|3 [AUTH user pass] [SETNAME name]]` (AUTH itself is checked before this).
fn hello(eng: &Engine, conn: &mut Conn, cmd: &Command, out: &mut BytesMut) {
    let mut i = 1;
    if let Some(v) = cmd.arg(1) {
        match &v[..] {
            b"2" => conn.resp3 = false,
            b"3" => conn.resp3 = true,
            _ => {
                reply::error(out, "NOPROTO unsupported protocol version");
                return;
            }
        }
        i = 2;
    }
    while i < cmd.len() {
        let opt = cmd.args[i].to_ascii_uppercase();
        match &opt[..] {
            b"AUTH" if i + 2 < cmd.len() => i += 3,
            b"SETNAME" if i + 1 < cmd.len() => {
                conn.name = Some(cmd.args[i + 1].clone());
                i += 2;
            }
            _ => {
                reply::error(out, "ERR syntax error in HELLO option");
                return;
            }
        }
    }
    let role = if eng.role == Role::Active {
        "master"
    } else {
        "replica"
    };
    let fields: [(&str, Field); 7] = [
        ("server", Field::Text("redis")),
        ("version", Field::Text(REDIS_VERSION)),
        ("proto", Field::Int(if conn.resp3 { 3 } else { 2 })),
        ("id", Field::Int(conn.id as i64)),
        ("mode", Field::Text("standalone")),
        ("role", Field::Text(role)),
        ("modules", Field::Empty),
    ];
    if conn.resp3 {
        reply::map_len(out, fields.len());
    } else {
        reply::array_len(out, fields.len() * 2);
    }
    for (name, value) in fields {
        reply::bulk(out, name.as_bytes());
        match value {
            Field::Text(t) => reply::bulk(out, t.as_bytes()),
            Field::Int(n) => reply::integer(out, n),
            Field::Empty => reply::array_len(out, 0),
        }
    }
}

enum Field {
    Text(&'static str),
    Int(i64),
    Empty,
}

/// The `CLIENT` subcommands client libraries send on connect and when asked.
fn client(conn: &mut Conn, cmd: &Command, out: &mut BytesMut) {
    let sub = cmd
        .arg(1)
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    match (&sub[..], cmd.len()) {
        (b"SETINFO", 4) => reply::simple(out, "OK"), // LIB-NAME, LIB-VER: noted by nobody
        (b"SETNAME", 3) => {
            conn.name = (!cmd.args[2].is_empty()).then(|| cmd.args[2].clone());
            reply::simple(out, "OK");
        }
        (b"GETNAME", 2) => match &conn.name {
            Some(n) => reply::bulk(out, n),
            None => keyspace::nil(out, conn.resp3),
        },
        (b"ID", 2) => reply::integer(out, conn.id as i64),
        (b"NOTACTIVE", 3) => match &cmd.args[2].to_ascii_uppercase()[..] {
            b"ON" => {
                conn.notactive = true;
                reply::simple(out, "OK");
            }
            b"OFF" => {
                conn.notactive = false;
                reply::simple(out, "OK");
            }
            _ => reply::error(out, "ERR CLIENT NOTACTIVE ON|OFF"),
        },
        (b"INFO", 2) | (b"LIST", 2) => {
            let name = conn.name.as_deref().map(String::from_utf8_lossy);
            let line = format!(
                "id={} name={} db=0 resp={}\n",
                conn.id,
                name.unwrap_or_default(),
                if conn.resp3 { 3 } else { 2 }
            );
            reply::bulk(out, line.as_bytes());
        }
        _ => {
            let shown = String::from_utf8_lossy(&cmd.args[1..].join(&b' ')).into_owned();
            reply::error(
                out,
                &format!("ERR unsupported CLIENT subcommand '{shown}' (tandem has SETINFO, SETNAME, GETNAME, ID, INFO, LIST, NOTACTIVE)"),
            );
        }
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS` (empty: no docs).
fn command(cmd: &Command, out: &mut BytesMut) {
    let all = || keyspace::DATA.iter().chain(CONNECTION);
    let sub = cmd
        .arg(1)
        .map(|s| s.to_ascii_uppercase())
        .unwrap_or_default();
    match &sub[..] {
        b"COUNT" => reply::integer(out, all().count() as i64),
        b"DOCS" => reply::array_len(out, 0),
        b"INFO" => {
            reply::array_len(out, cmd.len() - 2);
            for name in &cmd.args[2..] {
                match all().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name)) {
                    Some(spec) => command_info(out, spec),
                    None => reply::null_array(out),
                }
            }
        }
        b"" => {
            reply::array_len(out, all().count());
            for spec in all() {
                command_info(out, spec);
            }
        }
        _ => reply::error(out, "ERR unknown COMMAND subcommand (COUNT, INFO, DOCS)"),
    }
}

fn command_info(out: &mut BytesMut, spec: &Spec) {
    reply::array_len(out, 6);
    reply::bulk(out, spec.name.to_ascii_lowercase().as_bytes());
    reply::integer(out, spec.arity);
    let flags: &[&str] = if spec.write {
        &["write", "denyoom"]
    } else {
        &["readonly", "fast"]
    };
    reply::array_len(out, flags.len());
    for f in flags {
        reply::simple(out, f);
    }
    reply::integer(out, spec.keys.0);
    reply::integer(out, spec.keys.1);
    reply::integer(out, spec.keys.2);
}

/// `INFO [section...]`: Redis's sections and the fields dashboards and exporters read, and a
/// `tandem` section.
fn info(eng: &Engine, cmd: &Command) -> String {
    use std::fmt::Write as _;
    let s = eng.status();
    let wanted: Vec<String> = cmd.args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let show = |section: &str| {
        wanted.is_empty()
            || wanted
                .iter()
                .any(|w| w == section || w == "all" || w == "everything" || w == "default")
    };
    let mut text = String::new();
    let uptime_s = s.uptime_ms / 1000;
    if show("server") {
        let port = eng.config.client_addr.rsplit(':').next().unwrap_or("0");
        let _ = write!(
            text,
            "# Server\r\nredis_version:{REDIS_VERSION}\r\ntandem_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{uptime_s}\r\nuptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::process::id(),
            uptime_s / 86_400,
        );
    }
    if show("clients") {
        let _ = write!(
            text,
            "# Clients\r\nconnected_clients:{}\r\nrejected_connections:{}\r\n\r\n",
            eng.clients_connected, s.counters.clients_refused
        );
    }
    if show("memory") {
        let rss = rss_bytes();
        let _ = write!(
            text,
            "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\n\r\n"
        );
    }
    if show("stats") {
        let _ = write!(
            text,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\n\r\n",
            eng.clients_total,
            eng.stats.commands_total(),
            s.counters.clients_refused,
            s.counters.expired_keys
        );
    }
    if show("replication") {
        let _ = write!(
            text,
            "# Replication\r\nrole:{}\r\n",
            if s.role == Role::Active {
                "master"
            } else {
                "slave"
            }
        );
        if s.role == Role::Active {
            let _ = write!(text, "connected_slaves:{}\r\n", s.standby.is_some() as u8);
            if let Some(addr) = eng
                .link
                .as_ref()
                .and_then(|l| l.peer.as_ref())
                .map(|p| &p.client_addr)
            {
                let (ip, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
                let state = if s.standby_in_sync {
                    "online"
                } else {
                    "wait_bgsave"
                };
                let _ = write!(
                    text,
                    "slave0:ip={ip},port={port},state={state},offset={},lag=0\r\n",
                    s.standby_seq_acked.unwrap_or(0)
                );
            }
            let _ = write!(text, "master_repl_offset:{}\r\n\r\n", s.seq_applied);
        } else {
            let active = eng.active_hint.clone().unwrap_or_default();
            let (host, port) = active.rsplit_once(':').unwrap_or(("", "0"));
            let up = eng.follow.as_ref().is_some_and(|f| f.connected);
            let _ = write!(
                text,
                "master_host:{host}\r\nmaster_port:{port}\r\nmaster_link_status:{}\r\nslave_repl_offset:{}\r\nslave_read_only:1\r\nconnected_slaves:0\r\nmaster_repl_offset:{}\r\n\r\n",
                if up { "up" } else { "down" },
                s.seq_applied,
                s.seq_applied
            );
        }
    }
    if show("keyspace") {
        text += "# Keyspace\r\n";
        let expires = eng.state.expiries.len();
        let keys = eng.state.db.len() - expires;
        if keys > 0 {
            let _ = write!(text, "db0:keys={keys},expires={expires},avg_ttl=0\r\n");
        }
        text += "\r\n";
    }
    if show("tandem") {
        let _ = write!(
            text,
            "# Tandem\r\nengine:{}\r\napp:{} {}\r\ntandem_role:{}\r\nepoch:{}\r\nseq_applied:{}\r\nin_sync:{}\r\nsimplex:{}\r\nwork_units:{}\r\ndb_records:{}\r\ndigest:{}\r\n",
            s.name,
            eng.app.name(),
            s.app_version,
            s.role.as_str(),
            s.epoch,
            s.seq_applied,
            s.in_sync as u8,
            s.simplex as u8,
            s.work_units,
            s.db_records,
            s.digest,
        );
    }
    text
}

/// This process's resident memory, from `/proc/self/statm` (0 where there is none).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(eng: &mut Engine, conn: &mut Conn, args: &[&str]) -> String {
        let cmd = Command {
            args: args.iter().map(|a| Bytes::from(a.to_string())).collect(),
        };
        let mut out = BytesMut::new();
        dispatch(eng, Port::Client, conn, &cmd, &mut out, Instant::now());
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_transaction_goes_out_in_one_batch_or_not_at_all() {
        let mut eng = crate::node::tests::engine(true);
        let mut conn = Conn::new(1);
        run(&mut eng, &mut conn, &["SET", "before", "x"]);
        let (sealed, last) = (eng.outbox.seq_sealed(), eng.outbox.seq_last());
        assert_eq!(run(&mut eng, &mut conn, &["MULTI"]), "+OK\r\n");
        assert_eq!(run(&mut eng, &mut conn, &["SET", "a", "1"]), "+QUEUED\r\n");
        assert_eq!(run(&mut eng, &mut conn, &["INCR", "a"]), "+QUEUED\r\n");
        assert_eq!(
            run(&mut eng, &mut conn, &["MSET", "b", "2", "c", "3"]),
            "+QUEUED\r\n"
        );
        assert_eq!(eng.outbox.seq_last(), last, "queued, not run");
        let reply = run(&mut eng, &mut conn, &["EXEC"]);
        assert_eq!(reply, "*3\r\n+OK\r\n:2\r\n+OK\r\n");
        assert_eq!(eng.outbox.seq_last(), last + 4);
        assert_eq!(
            eng.outbox.seq_sealed(),
            sealed,
            "all four updates in the open batch"
        );

        // A command refused while queued discards the whole transaction.
        run(&mut eng, &mut conn, &["MULTI"]);
        run(&mut eng, &mut conn, &["SET", "d", "4"]);
        assert!(run(&mut eng, &mut conn, &["NOSUCH"]).starts_with("-ERR unknown command"));
        assert!(run(&mut eng, &mut conn, &["EXEC"]).starts_with("-EXECABORT"));
        assert_eq!(eng.outbox.seq_last(), last + 4, "nothing of it written");
        assert_eq!(
            run(&mut eng, &mut conn, &["EXEC"]),
            "-ERR EXEC without MULTI\r\n"
        );
    }

    #[test]
    fn a_transaction_that_would_not_fit_the_open_batch_starts_a_new_one() {
        let mut eng = crate::node::tests::engine(true);
        let mut conn = Conn::new(1);
        let big = "v".repeat(1 << 20);
        // Fill the open batch to within a megabyte of a frame.
        for i in 0..15 {
            run(&mut eng, &mut conn, &["SET", &format!("k{i}"), &big]);
        }
        let sealed = eng.outbox.seq_sealed();
        run(&mut eng, &mut conn, &["MULTI"]);
        run(&mut eng, &mut conn, &["SET", "x", &big]);
        run(&mut eng, &mut conn, &["SET", "y", &big]);
        assert_eq!(run(&mut eng, &mut conn, &["EXEC"]), "*2\r\n+OK\r\n+OK\r\n");
        assert!(
            eng.outbox.seq_sealed() > sealed,
            "the batch before was sealed first"
        );
        assert_eq!(eng.outbox.seq_sealed(), eng.outbox.seq_last() - 2);
    }

    #[test]
    fn hello_3_answers_a_map_and_switches_nulls() {
        let mut eng = crate::node::tests::engine(true);
        let mut conn = Conn::new(7);
        assert_eq!(run(&mut eng, &mut conn, &["GET", "nope"]), "$-1\r\n");
        let hello = run(&mut eng, &mut conn, &["HELLO", "3", "SETNAME", "me"]);
        assert!(
            hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
            "{hello}"
        );
        assert!(
            hello.contains("$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:7\r\n"),
            "{hello}"
        );
        assert_eq!(run(&mut eng, &mut conn, &["GET", "nope"]), "_\r\n");
        assert_eq!(
            run(&mut eng, &mut conn, &["CLIENT", "GETNAME"]),
            "$2\r\nme\r\n"
        );
        assert!(run(&mut eng, &mut conn, &["HELLO", "4"]).starts_with("-NOPROTO"));
        assert!(run(&mut eng, &mut conn, &["HELLO", "2"]).starts_with("*14\r\n"));
    }
}
