//! The io_uring driver: the same thin loop as [`crate::driver`], with the socket's reads and
//! writes on an io_uring, and the waiting on the tokio runtime of the calling task, so that
//! an engine's link can run on its one thread next to everything else.
//!
//! The contract is [`crate::driver::run`]'s, to the letter: the same `step` closure, the same
//! [`Turn`], the same ends (a `done` turn is written and the write half shut down; a peer that
//! closes gets a last turn, then `UnexpectedEof`), and the same write-stall deadline (a write
//! that makes no progress for [`WRITE_STALL_MAX`] fails the link with `TimedOut`).
//!
//! The ring holds at most two operations: a receive into one reusable buffer, and one `writev`
//! gathering up to [`IOV_MAX`] frames (the remainder of a short write is resubmitted). Each
//! turn queues the write and, if none is pending, a receive, and hands them to the kernel with
//! one submit-only `io_uring_enter`. The ring signals an eventfd registered with it whenever a
//! completion is posted; the driver waits for that eventfd's readiness through tokio, together
//! with the caller's wake-up ([`Notify`]) and the deadline, and reads completions from the
//! ring's shared memory.
//!
//! Soundness rests on one rule: memory handed to the kernel (the receive buffer, the iovec
//! array and the frames it points into) is neither touched nor freed until that operation's
//! completion has been reaped. Everything the kernel may use lives in `Ring`, whose `Drop`
//! cancels what is still in flight and waits for it before any field is freed, on every way
//! out of [`run`]: an error, a panic in `step`, or the future being dropped at an `.await`.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::driver::{Turn, IOV_MAX, WRITE_STALL_MAX};

const READ_BYTES: usize = 64 << 10;
/// Receive, write, and a cancel for each of them when the ring is torn down.
const RING_ENTRIES: u32 = 4;
/// Tearing down waits this long, this many times, for cancelled operations to complete.
const QUIESCE_WAIT: Duration = Duration::from_millis(100);
const QUIESCE_WAITS_MAX: usize = 50;

const USER_DATA_RECV: u64 = 1;
const USER_DATA_WRITE: u64 = 2;
const USER_DATA_CANCEL: u64 = 3;

/// Checks that this process may use io_uring and that the kernel has what [`run`] needs, with
/// an error that says so and what to do otherwise.
pub fn available() -> io::Result<()> {
    new_ring().map(drop)
}

fn new_ring() -> io::Result<IoUring> {
    let ring = IoUring::new(RING_ENTRIES).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "io_uring is unavailable ({e}): the kernel lacks it, or a sandbox (seccomp, \
                 kernel.io_uring_disabled) refuses it; use the tokio driver"
            ),
        )
    })?;
    // Tearing down waits for cancelled operations with a timeout.
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's io_uring cannot wait with a timeout (IORING_FEAT_EXT_ARG, Linux \
             5.11+); use the tokio driver",
        ));
    }
    Ok(ring)
}

/// A non-blocking eventfd that the ring signals on every completion.
fn completion_eventfd(ring: &IoUring) -> io::Result<AsyncFd<File>> {
    // SAFETY: eventfd(2) takes no pointers; it returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2), is open, and is owned by nobody else.
    let eventfd = unsafe { File::from_raw_fd(fd) };
    // The ring takes its own reference to the eventfd: closing ours first is harmless.
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    // SAFETY: the `File` owns its descriptor, which stays open and the same until the
    // `AsyncFd` that owns the `File` is dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(eventfd, tokio::io::Interest::READABLE) };
    Ok(registered?)
}

/// Runs one link until `step` says it is done or the socket fails; `wake` is notified by the
/// caller when there is something new to send. See [`crate::driver::run`].
pub async fn run<F>(stream: tokio::net::TcpStream, wake: &Notify, step: F) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    run_with(stream, wake, WRITE_STALL_MAX, step).await
}

/// [`run`], with a write that makes no progress for `write_stall_max` failing the link.
pub async fn run_with<F>(
    stream: tokio::net::TcpStream,
    wake: &Notify,
    write_stall_max: Duration,
    mut step: F,
) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    let stream = stream.into_std()?;
    // Blocking on purpose: io_uring completes a `writev` to a non-blocking socket with EAGAIN
    // instead of waiting for room. The ring never blocks the thread on the socket itself.
    stream.set_nonblocking(false)?;
    let mut ring = Ring {
        ring: new_ring()?,
        rx: vec![0; READ_BYTES],
        iovecs: Vec::with_capacity(IOV_MAX),
        tx: VecDeque::new(),
        recv: Slot::Idle,
        write: Slot::Idle,
        stream,
    };
    let completions = completion_eventfd(&ring.ring)?;
    let mut input_len = 0usize;
    let mut closed_by_peer = false;
    loop {
        // The receive buffer is only looked at between a receive's completion and the next
        // submission; on other turns `step` gets an empty slice not borrowed from it.
        let input: &[u8] = if input_len > 0 {
            &ring.rx[..input_len]
        } else {
            &[]
        };
        let turn = step(Instant::now(), input, &mut ring.tx);
        input_len = 0;
        let receiving = !turn.done && !closed_by_peer && ring.arm_recv()?;
        if ring.arm_write()? | receiving {
            ring.ring.submit()?;
        }
        // As with the tokio driver, all of the turn's frames are written before the next turn.
        let mut stall_at = Instant::now() + write_stall_max;
        loop {
            ring.reap();
            if let Slot::Done(result) = ring.write {
                ring.write = Slot::Idle;
                crate::driver::consume(&mut ring.tx, check(result)?)?;
                if ring.arm_write()? {
                    ring.ring.submit()?;
                    stall_at = Instant::now() + write_stall_max;
                }
            }
            if ring.write == Slot::Idle {
                break;
            }
            tokio::select! {
                ready = completion(&completions) => ready?,
                _ = tokio::time::sleep_until(stall_at.into()) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading"));
                }
            }
        }
        if turn.done {
            let _ = ring.stream.shutdown(Shutdown::Write);
            return Ok(());
        }
        if closed_by_peer {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if turn.deadline.is_some_and(|d| d <= Instant::now()) {
            // More to do at once (a slice of a snapshot): the other tasks of this thread go
            // first, and a receive that completed meanwhile is taken without waiting.
            tokio::task::yield_now().await;
            ring.reap();
            if let Slot::Done(result) = ring.recv {
                ring.recv = Slot::Idle;
                input_len = check(result)?;
                closed_by_peer = input_len == 0;
            }
            continue;
        }
        // Wait for a reason to turn: bytes read, a wake-up, or the deadline.
        let sleep = async {
            match turn.deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            ring.reap();
            if let Slot::Done(result) = ring.recv {
                ring.recv = Slot::Idle;
                input_len = check(result)?;
                debug_assert!(input_len <= ring.rx.len());
                closed_by_peer = input_len == 0;
                break;
            }
            tokio::select! {
                biased;
                ready = completion(&completions) => ready?,
                _ = wake.notified() => break,
                _ = &mut sleep => break,
            }
        }
    }
}

/// Waits until the ring has posted a completion since the eventfd was last read, and reads it.
/// A completion may also be found on the ring without one (it was reaped before its signal was
/// read): the caller looks at the ring after every return.
async fn completion(eventfd: &AsyncFd<File>) -> io::Result<()> {
    loop {
        let mut ready = eventfd.readable().await?;
        let mut count = [0u8; 8];
        match ready.try_io(|fd| fd.get_ref().read(&mut count)) {
            Ok(read) => {
                read?;
                // The read took the whole count: nothing is left to read until the next
                // signal, which makes epoll report the eventfd again. Clearing readiness now
                // saves a read that would only find EAGAIN.
                ready.clear_ready();
                return Ok(());
            }
            // Drained already: readiness is cleared, wait for the next signal.
            Err(_would_block) => continue,
        }
    }
}

/// Where one kind of operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Idle,
    InFlight,
    /// Completed with this result (a count, or a negated errno), not yet looked at.
    Done(i32),
}

/// The ring and every buffer it may touch: see the module's soundness rule.
struct Ring {
    ring: IoUring,
    stream: TcpStream,
    /// Written by the kernel while `recv` is in flight; read only once it is `Done`. A `Vec`
    /// rather than a `Box` so that moving the struct does not assert unique access to it.
    rx: Vec<u8>,
    /// Read by the kernel, as are the frames they point into, while `write` is in flight.
    iovecs: Vec<libc::iovec>,
    tx: VecDeque<Bytes>,
    recv: Slot,
    write: Slot,
}

impl Ring {
    /// Queues a receive into `rx`, unless one is in flight already; true if it queued one.
    fn arm_recv(&mut self) -> io::Result<bool> {
        if self.recv != Slot::Idle {
            return Ok(false);
        }
        let entry = opcode::Recv::new(
            types::Fd(self.stream.as_raw_fd()),
            self.rx.as_mut_ptr(),
            self.rx.len() as u32,
        )
        .build()
        .user_data(USER_DATA_RECV);
        // SAFETY: `rx` is owned by this ring and is not resized, read or freed until this
        // receive's completion is reaped (`recv` leaves `InFlight` only then; `Drop` waits for
        // it or leaks the buffer). The socket stays open for as long, owned by this ring too.
        unsafe { self.push(&entry)? };
        self.recv = Slot::InFlight;
        Ok(true)
    }

    /// Queues one `writev` of up to `IOV_MAX` frames from `tx`, unless one is in flight
    /// already or there is nothing to write; true if it queued one.
    fn arm_write(&mut self) -> io::Result<bool> {
        if self.write != Slot::Idle {
            return Ok(false);
        }
        while self.tx.front().is_some_and(Bytes::is_empty) {
            self.tx.pop_front();
        }
        if self.tx.is_empty() {
            return Ok(false);
        }
        self.iovecs.clear();
        self.iovecs
            .extend(self.tx.iter().take(IOV_MAX).map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }));
        let entry = opcode::Writev::new(
            types::Fd(self.stream.as_raw_fd()),
            self.iovecs.as_ptr(),
            self.iovecs.len() as u32,
        )
        .build()
        .user_data(USER_DATA_WRITE);
        // SAFETY: the iovec array and the frames it points into are owned by this ring
        // (`iovecs`, `tx`) and are neither changed nor dropped until this write's completion
        // is reaped: `run` calls `step`, the only other user of `tx`, only once `write` is back
        // to `Idle`, and `Drop` waits for the completion (or leaks both) when an error, a
        // panic or a dropped future leaves first.
        unsafe { self.push(&entry)? };
        self.write = Slot::InFlight;
        Ok(true)
    }

    /// # Safety
    /// Every buffer and descriptor that `entry` refers to must stay valid, and untouched by
    /// this process where the kernel writes to it, until the entry's completion is reaped.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        // SAFETY: passed on to the caller, above.
        let pushed = unsafe { self.ring.submission().push(entry) };
        pushed.map_err(|_| {
            // Never more than RING_ENTRIES operations are queued at once: a full queue is a bug.
            io::Error::other("io_uring submission queue full")
        })
    }

    /// Records every completion posted so far (no system call: the ring's shared memory).
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let done = Slot::Done(cqe.result());
            match cqe.user_data() {
                USER_DATA_RECV => self.recv = done,
                USER_DATA_WRITE => self.write = done,
                // A cancel's own result (done, not found, already running) changes nothing:
                // the cancelled operation completes on its own.
                USER_DATA_CANCEL => {}
                other => debug_assert!(false, "completion with unknown user data {other}"),
            }
        }
    }

    fn in_flight(&self) -> bool {
        [self.recv, self.write].contains(&Slot::InFlight)
    }

    /// Cancels every operation in flight and waits, blocking the thread, for all of them to
    /// complete; false if that could not be done within the bounded wait. Cancelling a socket
    /// operation completes it at once: the wait is a formality unless the kernel misbehaves.
    fn quiesce(&mut self) -> bool {
        for (slot, user_data) in [(self.recv, USER_DATA_RECV), (self.write, USER_DATA_WRITE)] {
            if slot == Slot::InFlight {
                let cancel = opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data(USER_DATA_CANCEL);
                // SAFETY: a cancel refers to no memory, only to the user data of another entry.
                if unsafe { self.push(&cancel) }.is_err() {
                    return false;
                }
            }
        }
        for _ in 0..QUIESCE_WAITS_MAX {
            self.reap();
            if !self.in_flight() {
                return true;
            }
            let timeout = types::Timespec::from(QUIESCE_WAIT);
            let args = types::SubmitArgs::new().timespec(&timeout);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(_) => return false,
            }
        }
        self.reap();
        !self.in_flight()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.quiesce() {
            // The kernel may still use these: leak them rather than free memory under it.
            std::mem::forget(std::mem::take(&mut self.rx));
            std::mem::forget(std::mem::take(&mut self.iovecs));
            std::mem::forget(std::mem::take(&mut self.tx));
        }
    }
}

/// A completion's result as a byte count, or the error it carries.
fn check(result: i32) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as usize)
    }
}
