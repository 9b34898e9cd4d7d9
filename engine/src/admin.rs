//! The supervisor's admin endpoint: RESP on the base port. Every command is handed to the
//! supervisor's loop and answered when it is done; `SUBSCRIBE` turns the connection into a
//! stream of timeline events (one JSON document per RESP bulk string, past events first).

use bytes::BytesMut;
use resp::reply;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::supervisor::Event;

pub(crate) async fn serve(listener: TcpListener, events: mpsc::UnboundedSender<Event>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(stream, events.clone()));
    }
}

async fn connection(mut stream: TcpStream, events: mpsc::UnboundedSender<Event>) {
    let mut rx = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    let limits = resp::Limits::default();
    loop {
        match stream.read_buf(&mut rx).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
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
                let _ = events.send(Event::Admin {
                    cmd: args,
                    reply: tx,
                });
                return;
            }
            let (tx, wait) = oneshot::channel();
            if events
                .send(Event::Admin {
                    cmd: args,
                    reply: tx,
                })
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

async fn stream_timeline(mut stream: TcpStream, events: &mpsc::UnboundedSender<Event>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if events.send(Event::Subscribe { tx }).is_err() {
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
