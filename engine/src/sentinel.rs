//! Sentinel-compatible discovery, served by the supervisor on `sentinel_addr` (in
//! `pair.json`): the part of Redis Sentinel's protocol that client libraries use to find the
//! primary and to hear that it changed, so that redis-py's `Sentinel`, Jedis, Lettuce,
//! go-redis and ioredis follow tandem's switchovers and failovers with no tandem-specific
//! code. Read-only and without a secret, as Sentinel's default is; it says only where the
//! engines are.
//!
//! `PING`, `HELLO`, `CLIENT`, `SENTINEL get-master-addr-by-name | masters | master |
//! replicas | slaves | sentinels`, `SUBSCRIBE` / `PSUBSCRIBE` (`+switch-master <name>
//! <old-ip> <old-port> <new-ip> <new-port>` when the active changes), `QUIT`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use resp::{reply, Command, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn::REDIS_VERSION;

/// Where the pair's engines are, as the supervisor last said.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discovery {
    /// The active's client address, if the pair has one serving.
    pub master: Option<String>,
    /// The last active known (what a client is told while there is none: flagged down).
    pub last_master: Option<String>,
    /// The standby's client address, and whether it is in sync.
    pub replica: Option<(String, bool)>,
    pub epoch: u64,
}

/// Connections served at once, at most (the port needs no secret).
const CONNECTIONS_MAX: usize = 256;

/// Serves discovery on `listener` until the supervisor goes (its watch closes).
pub async fn serve(listener: TcpListener, name: String, discovery: watch::Receiver<Discovery>) {
    let name: Arc<str> = name.into();
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if open.fetch_add(1, Ordering::Relaxed) >= CONNECTIONS_MAX {
            open.fetch_sub(1, Ordering::Relaxed);
            continue; // dropped: a client retries
        }
        let (name, discovery, open) = (name.clone(), discovery.clone(), open.clone());
        tokio::spawn(async move {
            let _ = connection(stream, &name, discovery).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

struct Session {
    resp3: bool,
    /// Subscribed channels and patterns (any of them hears `+switch-master`).
    subscriptions: usize,
    hears_switches: bool,
}

async fn connection(
    mut stream: TcpStream,
    name: &str,
    mut discovery: watch::Receiver<Discovery>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let limits = Limits::default();
    let mut rx = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    let mut session = Session {
        resp3: false,
        subscriptions: 0,
        hears_switches: false,
    };
    let mut master_seen = discovery.borrow().master.clone();
    loop {
        tokio::select! {
            read = stream.read_buf(&mut rx) => {
                if read? == 0 {
                    return Ok(());
                }
                loop {
                    let cmd = match resp::parse_command(&mut rx, &limits) {
                        Ok(Some(cmd)) => cmd,
                        Ok(None) => break,
                        Err(e) => {
                            reply::error(&mut out, &e.to_string());
                            stream.write_all(&out).await?;
                            return Ok(());
                        }
                    };
                    let now = discovery.borrow().clone();
                    if !answer(&cmd, name, &now, &mut session, &mut out) {
                        stream.write_all(&out).await?;
                        return Ok(());
                    }
                }
                stream.write_all(&out).await?;
                out.clear();
            }
            changed = discovery.changed() => {
                if changed.is_err() {
                    return Ok(()); // the supervisor is gone
                }
                let now = discovery.borrow_and_update().clone();
                if now.master.is_some() && now.master != master_seen {
                    let old = master_seen.replace(now.master.clone().unwrap_or_default());
                    if session.hears_switches {
                        let (old_host, old_port) = split(old.as_deref().unwrap_or(":0"));
                        let (host, port) = split(now.master.as_deref().unwrap_or(":0"));
                        let text = format!("{name} {old_host} {old_port} {host} {port}");
                        push(&mut out, session.resp3, 3);
                        reply::bulk(&mut out, b"message");
                        reply::bulk(&mut out, b"+switch-master");
                        reply::bulk(&mut out, text.as_bytes());
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                }
            }
        }
    }
}

fn split(addr: &str) -> (&str, &str) {
    addr.rsplit_once(':').unwrap_or((addr, "0"))
}

/// A pub/sub message's header: RESP3's push type, or RESP2's array.
fn push(out: &mut BytesMut, resp3: bool, len: usize) {
    if resp3 {
        out.extend_from_slice(format!(">{len}\r\n").as_bytes());
    } else {
        reply::array_len(out, len);
    }
}

/// Answers one command; false: close the connection after the reply.
fn answer(
    cmd: &Command,
    name: &str,
    now: &Discovery,
    session: &mut Session,
    out: &mut BytesMut,
) -> bool {
    let verb = cmd.args[0].to_ascii_uppercase();
    let arg = |i: usize| {
        cmd.arg(i)
            .map(|a| a.to_ascii_lowercase())
            .unwrap_or_default()
    };
    match &verb[..] {
        b"PING" => reply::simple(out, "PONG"),
        b"QUIT" => {
            reply::simple(out, "OK");
            return false;
        }
        b"HELLO" => {
            match cmd.arg(1).map(|v| &v[..]) {
                Some(b"3") => session.resp3 = true,
                Some(b"2") => session.resp3 = false,
                None => {}
                Some(_) => {
                    reply::error(out, "NOPROTO unsupported protocol version");
                    return true;
                }
            }
            let proto = if session.resp3 { b"3" } else { b"2" };
            let fields: [(&[u8], &[u8]); 4] = [
                (b"server", b"redis"),
                (b"version", REDIS_VERSION.as_bytes()),
                (b"proto", proto),
                (b"mode", b"sentinel"),
            ];
            map(out, session.resp3, fields.len());
            for (k, v) in fields {
                reply::bulk(out, k);
                if k == b"proto" {
                    reply::integer(out, if session.resp3 { 3 } else { 2 });
                } else {
                    reply::bulk(out, v);
                }
            }
        }
        b"CLIENT" => reply::simple(out, "OK"),
        b"SUBSCRIBE" | b"PSUBSCRIBE" => {
            let kind: &[u8] = if verb[..] == b"SUBSCRIBE"[..] {
                b"subscribe"
            } else {
                b"psubscribe"
            };
            for channel in &cmd.args[1..] {
                session.subscriptions += 1;
                let all = &channel[..] == b"*" || &channel[..] == b"+switch-master";
                session.hears_switches |= all;
                push(out, session.resp3, 3);
                reply::bulk(out, kind);
                reply::bulk(out, channel);
                reply::integer(out, session.subscriptions as i64);
            }
        }
        b"SENTINEL" => match &arg(1)[..] {
            b"get-master-addr-by-name" if arg(2).eq_ignore_ascii_case(name.as_bytes()) => {
                match &now.master {
                    Some(addr) => {
                        let (host, port) = split(addr);
                        reply::array_len(out, 2);
                        reply::bulk(out, host.as_bytes());
                        reply::bulk(out, port.as_bytes());
                    }
                    None if session.resp3 => reply::null(out),
                    None => reply::null_array(out),
                }
            }
            b"masters" => {
                reply::array_len(out, 1);
                master_state(out, session.resp3, name, now);
            }
            b"master" if arg(2).eq_ignore_ascii_case(name.as_bytes()) => {
                master_state(out, session.resp3, name, now)
            }
            b"replicas" | b"slaves" if arg(2).eq_ignore_ascii_case(name.as_bytes()) => {
                match &now.replica {
                    Some((addr, in_sync)) => {
                        reply::array_len(out, 1);
                        replica_state(out, session.resp3, addr, *in_sync, now);
                    }
                    None => reply::array_len(out, 0),
                }
            }
            b"sentinels" if arg(2).eq_ignore_ascii_case(name.as_bytes()) => {
                reply::array_len(out, 0)
            }
            b"get-master-addr-by-name" | b"master" | b"replicas" | b"slaves" | b"sentinels" => {
                reply::error(out, "ERR No such master with that name")
            }
            _ => reply::error(
                out,
                "ERR unknown SENTINEL subcommand (tandem serves get-master-addr-by-name, masters, master, replicas, slaves, sentinels)",
            ),
        },
        _ => {
            let shown = String::from_utf8_lossy(&cmd.args[0]);
            reply::error(
                out,
                &format!("ERR unknown command '{shown}' (this is tandem's Sentinel discovery port)"),
            );
        }
    }
    true
}

fn map(out: &mut BytesMut, resp3: bool, fields: usize) {
    if resp3 {
        reply::map_len(out, fields);
    } else {
        reply::array_len(out, fields * 2);
    }
}

fn fields(out: &mut BytesMut, resp3: bool, pairs: &[(&str, String)]) {
    map(out, resp3, pairs.len());
    for (k, v) in pairs {
        reply::bulk(out, k.as_bytes());
        reply::bulk(out, v.as_bytes());
    }
}

/// The primary as Sentinel describes it; with no active serving, the last one known,
/// flagged down (clients then wait and ask again).
fn master_state(out: &mut BytesMut, resp3: bool, name: &str, now: &Discovery) {
    let addr = now.master.as_ref().or(now.last_master.as_ref());
    let (host, port) = split(addr.map_or(":0", String::as_str));
    let flags = if now.master.is_some() {
        "master"
    } else {
        "master,s_down,o_down"
    };
    let pairs = [
        ("name", name.to_string()),
        ("ip", host.to_string()),
        ("port", port.to_string()),
        ("runid", String::new()),
        ("flags", flags.to_string()),
        ("role-reported", "master".to_string()),
        ("config-epoch", now.epoch.to_string()),
        ("num-slaves", (now.replica.is_some() as u8).to_string()),
        ("num-other-sentinels", "0".to_string()),
        ("quorum", "1".to_string()),
        ("down-after-milliseconds", "500".to_string()),
        ("failover-timeout", "30000".to_string()),
        ("parallel-syncs", "1".to_string()),
    ];
    fields(out, resp3, &pairs);
}

fn replica_state(out: &mut BytesMut, resp3: bool, addr: &str, in_sync: bool, now: &Discovery) {
    let (host, port) = split(addr);
    let master = now.master.as_ref().or(now.last_master.as_ref());
    let (master_host, master_port) = split(master.map_or(":0", String::as_str));
    let pairs = [
        ("name", addr.to_string()),
        ("ip", host.to_string()),
        ("port", port.to_string()),
        ("runid", String::new()),
        ("flags", "slave".to_string()),
        ("role-reported", "slave".to_string()),
        (
            "master-link-status",
            if in_sync { "ok" } else { "err" }.to_string(),
        ),
        ("master-host", master_host.to_string()),
        ("master-port", master_port.to_string()),
        ("slave-priority", "100".to_string()),
    ];
    fields(out, resp3, &pairs);
}
