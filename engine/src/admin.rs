//! The supervisor's admin endpoint: RESP on the base port, for the user who holds the pair's
//! secret. A connection proves it with the challenge-response of `resp::auth` before anything
//! else (within a few seconds, and a bounded number of such connections at once); one that
//! speaks HTTP is closed unanswered. Every command is handed to the supervisor's loop and
//! answered when it is done; `SUBSCRIBE` turns the connection into a stream of timeline events
//! (one JSON document per RESP bulk string, past events first).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use replicator::Secret;
use resp::auth::{Gate, ServerAuth};
use resp::{reply, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::server::{AUTH_TIMEOUT, UNAUTHENTICATED_MAX};
use crate::supervisor::Event;
use crate::waiting_room::{Ticket, WaitingRoom};

/// Admin connections at once, at most.
const CONNECTIONS_MAX: usize = 256;
/// Timeline events queued for one subscriber; one that falls this far behind is dropped.
pub(crate) const SUBSCRIBER_QUEUE: usize = 4096;

/// Connects to a supervisor's admin endpoint and proves the pair's secret.
pub async fn connect(addr: &str, secret: &Secret) -> anyhow::Result<Client> {
    anyhow::ensure!(
        addr.rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
        "'{addr}' is not an admin address: expected HOST:PORT, e.g. 127.0.0.1:7400 (`admin` in the pair's pair.json)"
    );
    Client::connect_authenticated(addr, Duration::from_secs(3), secret, "admin")
        .await
        .map_err(|e| match e {
            resp::ClientError::Auth(why) => anyhow::anyhow!(
                "the supervisor at {addr} refused this user's secret ({why}); pass the pair's secret with --secret-file or {}",
                auth::SECRET_FILE_ENV
            ),
            e => anyhow::anyhow!(
                "cannot reach the supervisor at {addr}: {} (is the pair up? its address is `admin` in the pair's pair.json)",
                loadgen::error::describe_client_error(&e)
            ),
        })
}

pub(crate) async fn serve(listener: TcpListener, events: mpsc::Sender<Event>, secret: Secret) {
    let open = Arc::new(AtomicUsize::new(0));
    let waiting = WaitingRoom::new(UNAUTHENTICATED_MAX);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("admin endpoint: accept failed ({e}); pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= CONNECTIONS_MAX {
            continue; // dropped: closes it
        }
        let (ticket, _) = waiting.enter();
        let open = open.clone();
        let (events, secret) = (events.clone(), secret.clone());
        open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            connection(stream, events, secret, ticket).await;
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Reads and authenticates the start of a connection; false if it must be closed.
async fn authenticate(
    stream: &mut TcpStream,
    rx: &mut BytesMut,
    secret: &Secret,
    limits: &resp::Limits,
    ticket: &Ticket,
) -> bool {
    let mut gate = ServerAuth::new("admin");
    let mut out = BytesMut::new();
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let mut first = true;
    while !gate.is_done() {
        tokio::select! {
            read = tokio::time::timeout_at(deadline, stream.read_buf(rx)) => match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            },
            () = ticket.turned_out() => return false,
        }
        if std::mem::take(&mut first) && resp::auth::looks_like_http(rx) {
            tracing::warn!(
                "admin endpoint: closed a connection that speaks HTTP (cross-protocol attack?)"
            );
            return false;
        }
        while !gate.is_done() {
            let cmd = match resp::parse_command(rx, limits) {
                Ok(Some(cmd)) => cmd,
                Ok(None) => break,
                Err(_) => return false,
            };
            let verdict = gate.handle(secret, &cmd, &mut out);
            let _ = stream.write_all(&out).await;
            out.clear();
            if let Gate::Close(why) = verdict {
                tracing::warn!("admin endpoint: {why}; closing");
                return false;
            }
        }
    }
    true
}

async fn connection(
    mut stream: TcpStream,
    events: mpsc::Sender<Event>,
    secret: Secret,
    ticket: Ticket,
) {
    let mut rx = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    let limits = resp::Limits::default();
    let authenticated = authenticate(&mut stream, &mut rx, &secret, &limits, &ticket).await;
    drop(ticket); // out of the waiting room either way
    if !authenticated {
        return;
    }
    let mut have_input = !rx.is_empty();
    loop {
        if !std::mem::take(&mut have_input) {
            match stream.read_buf(&mut rx).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
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
            let args: Vec<String> = cmd
                .args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let verb = args
                .first()
                .map(|c| c.to_ascii_uppercase())
                .unwrap_or_default();
            if verb == "SUBSCRIBE" {
                let _ = stream.write_all(&out).await;
                return stream_timeline(stream, &events).await;
            }
            if verb == "SHUTDOWN" {
                // Answer before the supervisor goes away with this task.
                reply::simple(&mut out, "OK pair going down");
                let _ = stream.write_all(&out).await;
                let (tx, _) = oneshot::channel();
                let _ = events
                    .send(Event::Admin {
                        cmd: args,
                        reply: tx,
                    })
                    .await;
                return;
            }
            let (tx, wait) = oneshot::channel();
            if events
                .send(Event::Admin {
                    cmd: args,
                    reply: tx,
                })
                .await
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

async fn stream_timeline(mut stream: TcpStream, events: &mpsc::Sender<Event>) {
    let (tx, mut rx) = mpsc::channel(SUBSCRIBER_QUEUE);
    if events.send(Event::Subscribe { tx }).await.is_err() {
        return;
    }
    let mut out = BytesMut::new();
    while let Some(json) = rx.recv().await {
        out.clear();
        reply::bulk(&mut out, json.as_bytes());
        // Send whatever else is already queued in the same write.
        while let Ok(more) = rx.try_recv() {
            reply::bulk(&mut out, more.as_bytes());
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
