//! A small async RESP2 client over one `tokio::net::TcpStream` (with TCP_NODELAY).
//!
//! Requests are encoded as multibulk arrays into an internal write buffer. [`Client::call`]
//! sends one request and reads its reply; for pipelining, [`Client::queue`] several,
//! [`Client::flush`] them with one write and [`Client::read_reply`] once per request, or
//! use [`Client::pipeline`], which writes and reads concurrently so that a large
//! pipeline cannot deadlock against a server blocked on writing its replies. Replies
//! are parsed with the bounds of [`Limits`]. After any error the connection's state is
//! unknown (a reply may be half read or a request half written): drop the client.

use crate::command::{Limits, ProtocolError};
use crate::reply::{self, Reply};
use crate::value::parse_reply;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::{io, net::SocketAddr, time::Duration};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Bytes of free space made in the read buffer before each read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("connection closed by peer")]
    Closed,
    #[error("timed out")]
    Timeout,
    #[error("authentication failed: {0}")]
    Auth(String),
}

/// Appends `args` to `out` as one multibulk request.
pub fn encode_request(out: &mut BytesMut, args: &[&[u8]]) {
    encode_args(out, args);
}

fn encode_args<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    reply::array_len(out, args.len());
    for arg in args {
        reply::bulk(out, arg.as_ref());
    }
}

pub struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    read_buf: BytesMut,
    write_buf: BytesMut,
    limits: Limits,
    timeout: Option<Duration>,
}

impl Client {
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Client {
            peer: stream.peer_addr()?,
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: BytesMut::new(),
            limits: Limits::default(),
            timeout: None,
        })
    }

    /// [`Client::connect`], failing with [`ClientError::Timeout`] after `timeout`.
    pub async fn connect_timeout(
        addr: impl ToSocketAddrs,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        bounded(Some(timeout), Client::connect(addr)).await
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Bounds on replies read from now on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bounds each `flush`, `read_reply` and `pipeline` (and so `call`'s two halves);
    /// `None`, the default, waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Sends one request and reads its reply. Use it only when no earlier request is
    /// still queued or awaiting its reply: that reply would be taken for this one.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, ClientError> {
        self.queue(args);
        self.flush().await?;
        self.read_reply().await
    }

    /// Appends a request to the write buffer without sending it.
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode_request(&mut self.write_buf, args);
    }

    /// Writes all queued requests with one `write_all`.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let (stream, write_buf) = (&mut self.stream, &mut self.write_buf);
        if !write_buf.is_empty() {
            bounded(self.timeout, async {
                Ok(stream.write_all(write_buf).await?)
            })
            .await?;
            write_buf.clear();
        }
        Ok(())
    }

    /// Reads the next reply. A server error reply is `Ok(Reply::Error(_))`.
    pub async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let read = next_reply(&mut self.stream, &mut self.read_buf, &self.limits);
        bounded(self.timeout, read).await
    }

    /// Sends `reqs`, writing and reading concurrently, and returns their replies in
    /// order. Like [`Client::call`], only when no earlier request is pending.
    pub async fn pipeline(&mut self, reqs: &[Vec<Bytes>]) -> Result<Vec<Reply>, ClientError> {
        for req in reqs {
            encode_args(&mut self.write_buf, req);
        }
        let (mut reader, mut writer) = self.stream.split();
        let (read_buf, write_buf) = (&mut self.read_buf, &self.write_buf);
        let write = async { Ok(writer.write_all(write_buf).await?) };
        let read = async {
            let mut replies = Vec::with_capacity(reqs.len());
            for _ in reqs {
                replies.push(next_reply(&mut reader, read_buf, &self.limits).await?);
            }
            Ok(replies)
        };
        let result = bounded(self.timeout, async { tokio::try_join!(write, read) }).await;
        self.write_buf.clear();
        result.map(|((), replies)| replies)
    }
}

async fn next_reply(
    stream: &mut (impl AsyncRead + Unpin),
    read_buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Reply, ClientError> {
    loop {
        if let Some(reply) = parse_reply(read_buf, limits)? {
            return Ok(reply);
        }
        read_buf.reserve(READ_CHUNK_BYTES);
        if stream.read_buf(read_buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

async fn bounded<T>(
    timeout: Option<Duration>,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match timeout {
        Some(limit) => tokio::time::timeout(limit, work)
            .await
            .map_err(|_| ClientError::Timeout)?,
        None => work.await,
    }
}
