//! End-to-end test of the client against a tiny RESP server built from this crate's
//! parser and encoders: PING answers +PONG, ECHO x answers bulk x, anything else an
//! error, and a protocol error is answered and then the connection closed.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use resp::{parse_command, parse_reply, reply, Client, ClientError, Limits, Reply};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn start_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket));
        }
    });
    addr
}

async fn serve(mut socket: TcpStream) -> std::io::Result<()> {
    let (mut input, mut output) = (BytesMut::new(), BytesMut::new());
    loop {
        loop {
            match parse_command(&mut input, &Limits::default()) {
                Ok(None) => break,
                Ok(Some(cmd)) if cmd.name_upper_eq(b"PING") => reply::simple(&mut output, "PONG"),
                Ok(Some(cmd)) if cmd.name_upper_eq(b"ECHO") && cmd.len() == 2 => {
                    reply::bulk(&mut output, &cmd.args[1])
                }
                Ok(Some(_)) => reply::error(&mut output, "ERR unknown command"),
                Err(e) => {
                    reply::error(&mut output, &e.to_string());
                    return socket.write_all(&output).await;
                }
            }
        }
        socket.write_all(&output).await?;
        output.clear();
        if socket.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
    }
}

#[tokio::test]
async fn call_ping_echo_and_errors() {
    let addr = start_server().await;
    let mut client = Client::connect_timeout(addr, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(client.peer_addr(), addr);
    assert_eq!(
        client.call(&[b"ping"]).await.unwrap(),
        Reply::Simple("PONG".into())
    );
    let odd: &[u8] = b"a\r\n\0$*";
    let echoed = client.call(&[b"ECHO", odd]).await.unwrap();
    assert_eq!(echoed.as_bytes(), Some(odd));
    let err = client.call(&[b"NOPE", b"x"]).await.unwrap();
    assert_eq!(err.error_message(), Some("ERR unknown command"));
}

#[tokio::test]
async fn queued_and_pipelined_requests() {
    let addr = start_server().await;
    let mut client = Client::connect(addr).await.unwrap();
    client.queue(&[b"PING"]);
    client.queue(&[b"ECHO", b"one"]);
    client.flush().await.unwrap();
    for want in [&b"PONG"[..], b"one"] {
        assert_eq!(client.read_reply().await.unwrap().as_bytes(), Some(want));
    }

    let echo = |i| vec![Bytes::from_static(b"ECHO"), format!("value-{i}").into()];
    let reqs: Vec<Vec<Bytes>> = (0..1000).map(echo).collect();
    let replies = client.pipeline(&reqs).await.unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, r) in replies.iter().enumerate() {
        assert_eq!(r.as_bytes(), Some(format!("value-{i}").as_bytes()));
    }
    assert!(
        client.call(&[b"PING"]).await.is_ok(),
        "still in step after the pipeline"
    );
}

#[tokio::test]
async fn inline_commands_and_protocol_errors() {
    let addr = start_server().await;
    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"\r\nPING\r\nECHO  hi\n*1\r\n$x\r\n")
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    while raw.read_buf(&mut buf).await.unwrap() > 0 {}
    while let Some(r) = parse_reply(&mut buf, &Limits::default()).unwrap() {
        replies.push(r);
    }
    let want = [
        Reply::Simple("PONG".into()),
        Reply::Bulk(Bytes::from_static(b"hi")),
        Reply::Error("Protocol error: invalid bulk length".into()),
    ];
    assert_eq!(replies, want);
}

#[tokio::test]
async fn peer_closing_is_reported_as_closed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Reads one whole request, then closes without answering (FIN, as nothing is unread).
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut input = BytesMut::new();
        while parse_command(&mut input, &Limits::default())
            .unwrap()
            .is_none()
        {
            socket.read_buf(&mut input).await.unwrap();
        }
    });
    let mut client = Client::connect(addr).await.unwrap();
    assert!(matches!(
        client.call(&[b"PING"]).await,
        Err(ClientError::Closed)
    ));
}
