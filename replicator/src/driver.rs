//! The tokio driver: a thin loop that moves bytes between a TCP socket and a sans-IO
//! endpoint ([`crate::Sender`] or [`crate::Receiver`]), owned by the caller.
//!
//! Each turn, the caller's `step` gets the bytes just read (or none, on a wake-up or a
//! deadline), feeds them to its state machine, handles the events and returns the frames to
//! write and the next deadline. The driver writes all of a turn's frames with vectored writes,
//! one syscall for the lot when the socket takes it, and then waits for the first of: bytes
//! to read, a wake-up from the caller (new batches sealed), or the deadline.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What the caller wants after a turn.
pub struct Turn {
    /// Call `step` again no later than this.
    pub deadline: Option<Instant>,
    /// The endpoint is finished: write what is queued and return.
    pub done: bool,
}

/// A write that makes no progress for this long fails the link: a peer that stops reading
/// (frozen mid-snapshot) must not hold a link forever.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(10);

/// How many frames one vectored write gathers at most (both drivers).
pub const IOV_MAX: usize = 64;
const READ_BYTES: usize = 64 << 10;

/// Sets the socket options every replication link uses.
pub fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}

/// Points `iov` at the first frames of `frames` (up to `IOV_MAX`); returns how many.
pub fn gather<'a>(frames: &'a VecDeque<Bytes>, iov: &mut [IoSlice<'a>; IOV_MAX]) -> usize {
    let mut count = 0;
    for (slot, frame) in iov.iter_mut().zip(frames.iter()) {
        *slot = IoSlice::new(frame);
        count += 1;
    }
    count
}

/// Drops what a vectored write wrote from the front of `frames`. A short write leaves the rest
/// of a frame, and the frames after it, for the next write.
pub fn consume(frames: &mut VecDeque<Bytes>, mut written: usize) -> io::Result<()> {
    if written == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    while written > 0 {
        let Some(front) = frames.front_mut() else {
            return Err(io::Error::other(
                "a write reported more bytes than were queued",
            ));
        };
        if written >= front.len() {
            written -= front.len();
            frames.pop_front();
        } else {
            front.advance(written);
            written = 0;
        }
    }
    Ok(())
}

/// Writes every frame in `frames`, gathering up to `IOV_MAX` per `writev`.
pub async fn write_frames(stream: &mut TcpStream, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
    write_frames_within(stream, frames, WRITE_STALL_MAX).await
}

/// [`write_frames`], with a write that makes no progress for `write_stall_max` failing.
pub async fn write_frames_within(
    stream: &mut TcpStream,
    frames: &mut VecDeque<Bytes>,
    write_stall_max: Duration,
) -> io::Result<()> {
    while !frames.is_empty() {
        // The iovec array lives on the stack: no allocation per write.
        let mut iov = [IoSlice::new(&[]); IOV_MAX];
        let count = gather(frames, &mut iov);
        let written = tokio::time::timeout(write_stall_max, stream.write_vectored(&iov[..count]))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading"))??;
        consume(frames, written)?;
    }
    Ok(())
}

/// Runs one link until `step` says it is done or the socket fails. `wake` is notified by the
/// caller when there is something new to send.
///
/// `step` is called first with no input (to write what the endpoint has queued, such as the
/// standby's hello), then after every read, wake-up or deadline. When it returns `done`, its
/// frames are written, the write half is shut down and `run` returns `Ok`. A peer that closes
/// first ends the loop with `UnexpectedEof` after a last `step`; a write that makes no
/// progress for [`WRITE_STALL_MAX`] ends it with `TimedOut`.
pub async fn run<F>(stream: TcpStream, wake: &Notify, step: F) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    run_with(stream, wake, WRITE_STALL_MAX, step).await
}

/// [`run`], with a write that makes no progress for `write_stall_max` failing the link.
pub async fn run_with<F>(
    mut stream: TcpStream,
    wake: &Notify,
    write_stall_max: Duration,
    mut step: F,
) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    let mut rx = BytesMut::with_capacity(READ_BYTES);
    let mut tx: VecDeque<Bytes> = VecDeque::new();
    let mut input_len = 0usize;
    let mut closed_by_peer = false;
    loop {
        let turn = step(Instant::now(), &rx[..input_len], &mut tx);
        rx.clear();
        write_frames_within(&mut stream, &mut tx, write_stall_max).await?;
        if turn.done {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        if closed_by_peer {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        rx.reserve(READ_BYTES);
        if turn.deadline.is_some_and(|d| d <= Instant::now()) {
            // More to do at once (a slice of a snapshot): the other tasks of this thread go
            // first, and the socket gives what it has without waiting.
            tokio::task::yield_now().await;
            input_len = match stream.try_read_buf(&mut rx) {
                Ok(n) => {
                    closed_by_peer = n == 0;
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            continue;
        }
        let sleep = async {
            match turn.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            read = stream.read_buf(&mut rx) => {
                input_len = read?;
                closed_by_peer = input_len == 0;
            }
            _ = wake.notified() => input_len = 0,
            _ = sleep => input_len = 0,
        }
    }
}
