//! The io_uring driver: the same thin loop as [`crate::driver`], on one ring and the calling
//! thread, with no runtime.
//!
//! Each turn, the caller's `step` gets the bytes just read (or none, on a wake-up or a
//! deadline) and returns the frames to write and the next deadline, exactly as with the tokio
//! driver, so one `step` closure runs on either. The ring holds at most three operations: a
//! receive into one reusable buffer, a read of the [`UringWake`] eventfd, and one `writev`
//! gathering up to [`IOV_MAX`] frames (the remainder of a short write is resubmitted). The
//! deadline is the timeout of the `io_uring_enter` that waits (`IORING_FEAT_EXT_ARG`, Linux
//! 5.11+). The write, a fresh receive and the wait for the next event go in one
//! `io_uring_enter`, so a turn whose write completes at once costs one system call, where the
//! tokio driver makes three (`writev`, `epoll_wait`, `recvfrom`).
//!
//! Soundness rests on one rule: memory handed to the kernel (the receive buffer, the eventfd
//! buffer, the iovec array and the frames it points into) is neither touched nor freed until
//! that operation's completion has been reaped. Everything the kernel may use lives in
//! `Ring`, whose `Drop` cancels what is still in flight and waits for it before any field is
//! freed, on every way out of [`run`], an error or a panic in `step` included.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};

use crate::driver::Turn;

/// How many frames one `writev` gathers at most.
pub const IOV_MAX: usize = 64;
const READ_BYTES: usize = 64 << 10;
/// Receive, wake read, write, and a cancel for each of them when the ring is torn down.
const RING_ENTRIES: u32 = 8;
/// Tearing down waits this long, this many times, for cancelled operations to complete.
const QUIESCE_WAIT: Duration = Duration::from_millis(100);
const QUIESCE_WAITS_MAX: usize = 50;

const USER_DATA_RECV: u64 = 1;
const USER_DATA_WAKE: u64 = 2;
const USER_DATA_WRITE: u64 = 3;
const USER_DATA_CANCEL: u64 = 4;

/// Wakes a [`run`] loop from any thread: new batches are sealed, or the caller wants a turn.
///
/// An eventfd: notifications before the loop waits are not lost (the counter holds them until
/// the loop's read), and any number of them cost the loop one turn.
pub struct UringWake {
    eventfd: File,
}

impl UringWake {
    pub fn new() -> io::Result<UringWake> {
        // Blocking on purpose: io_uring completes reads of a non-blocking file with EAGAIN
        // instead of waiting for it to become readable.
        // SAFETY: eventfd(2) takes no pointers; it returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd(2), is open, and is owned by nobody else.
        let eventfd = unsafe { File::from_raw_fd(fd) };
        Ok(UringWake { eventfd })
    }

    /// Asks the loop for a turn. Never blocks: an eventfd write only waits when the counter
    /// would overflow, after 2^64 - 2 notifications that no turn consumed.
    pub fn notify(&self) {
        let written = (&self.eventfd).write(&1u64.to_ne_bytes());
        debug_assert!(
            matches!(written, Ok(8)),
            "eventfd write failed: {written:?}"
        );
    }

    fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }
}

/// Sets the socket options every replication link uses.
pub fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)
}

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
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's io_uring cannot wait with a timeout (IORING_FEAT_EXT_ARG, Linux \
             5.11+); use the tokio driver",
        ));
    }
    Ok(ring)
}

/// Runs one link on the calling thread until `step` says it is done or the socket fails.
/// `wake` is notified by the caller, from any thread, when there is something new to send.
///
/// The same contract as [`crate::driver::run`]: `step` is called first with no input (to
/// write what the endpoint has queued, such as the standby's hello), then after every read,
/// wake-up or deadline; when it returns `done`, its frames are written, the write half is
/// shut down and `run` returns `Ok`. A peer that closes first ends the loop with
/// `UnexpectedEof` after a last `step`.
pub fn run<F>(stream: TcpStream, wake: &UringWake, step: F) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    // Blocking on purpose: io_uring completes a `writev` to a non-blocking socket with EAGAIN
    // instead of waiting for room. The ring never blocks the thread on the socket itself.
    stream.set_nonblocking(false)?;
    let mut ring = Ring {
        ring: new_ring()?,
        wake_fd: wake.fd(),
        rx: vec![0; READ_BYTES],
        wake_buf: vec![0; 8],
        iovecs: Vec::with_capacity(IOV_MAX),
        tx: VecDeque::new(),
        recv: Slot::Idle,
        wake: Slot::Idle,
        write: Slot::Idle,
        stream,
    };
    ring.run(step)
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
    /// Borrowed from the caller's [`UringWake`], which outlives [`run`] and so this ring.
    wake_fd: RawFd,
    /// Written by the kernel while `recv` is in flight; read only once it is `Done`. A `Vec`
    /// rather than a `Box` so that moving the struct does not assert unique access to it.
    rx: Vec<u8>,
    wake_buf: Vec<u8>,
    /// Read by the kernel, as are the frames they point into, while `write` is in flight.
    iovecs: Vec<libc::iovec>,
    tx: VecDeque<Bytes>,
    recv: Slot,
    wake: Slot,
    write: Slot,
}

impl Ring {
    fn run<F>(&mut self, mut step: F) -> io::Result<()>
    where
        F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
    {
        let mut input_len = 0usize;
        let mut closed_by_peer = false;
        loop {
            // The receive buffer is only looked at between a receive's completion and the
            // next submission; on other turns `step` gets an empty slice not borrowed from it.
            let input: &[u8] = if input_len > 0 {
                debug_assert_eq!(self.recv, Slot::Idle);
                &self.rx[..input_len]
            } else {
                &[]
            };
            let turn = step(Instant::now(), input, &mut self.tx);
            input_len = 0;
            let finishing = turn.done || closed_by_peer;
            if !finishing {
                self.arm_recv()?;
            }
            self.arm_wake()?;
            self.arm_write()?;
            // As with the tokio driver, all of the turn's frames are written before the next
            // turn; but the write, the receive and the wait go to the kernel together, so a
            // turn whose write completes at once costs one `io_uring_enter`.
            loop {
                if let Slot::Done(result) = self.write {
                    self.write = Slot::Idle;
                    self.advance(result)?;
                    self.arm_write()?;
                }
                let writing = self.write == Slot::InFlight;
                if !writing {
                    if turn.done {
                        let _ = self.stream.shutdown(Shutdown::Write);
                        return Ok(());
                    }
                    if closed_by_peer {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                    let woken = self.take_wake()?;
                    if let Slot::Done(result) = self.recv {
                        self.recv = Slot::Idle;
                        input_len = check(result)?;
                        debug_assert!(input_len <= self.rx.len());
                        closed_by_peer = input_len == 0;
                        break;
                    }
                    if woken || turn.deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                // Wait for the write, if one is in flight, and for a reason to turn: a read,
                // a wake-up or the deadline (once the deadline has passed, the write alone).
                let event_ready = matches!(self.recv, Slot::Done(_))
                    || matches!(self.wake, Slot::Done(_))
                    || turn.deadline.is_some_and(|d| Instant::now() >= d);
                let need_event = !finishing && !event_ready;
                let want = usize::from(writing) + usize::from(need_event);
                debug_assert!(want > 0);
                self.wait(want, turn.deadline.filter(|_| need_event))?;
            }
        }
    }

    /// Queues a receive into `rx`, unless one is in flight already.
    fn arm_recv(&mut self) -> io::Result<()> {
        if self.recv != Slot::Idle {
            return Ok(());
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
        Ok(())
    }

    /// Queues a read of the wake eventfd, unless one is in flight already.
    fn arm_wake(&mut self) -> io::Result<()> {
        if self.wake != Slot::Idle {
            return Ok(());
        }
        let entry = opcode::Read::new(
            types::Fd(self.wake_fd),
            self.wake_buf.as_mut_ptr(),
            self.wake_buf.len() as u32,
        )
        .build()
        .user_data(USER_DATA_WAKE);
        // SAFETY: `wake_buf` is owned by this ring and untouched until the read's completion
        // is reaped (see `arm_recv`). The eventfd belongs to the caller's `UringWake`, borrowed
        // for the whole of `run`, and `Drop` reaps this read before `run` returns.
        unsafe { self.push(&entry)? };
        self.wake = Slot::InFlight;
        Ok(())
    }

    /// Queues one `writev` of up to `IOV_MAX` frames from `tx`, unless one is in flight
    /// already or there is nothing to write.
    fn arm_write(&mut self) -> io::Result<()> {
        if self.write != Slot::Idle {
            return Ok(());
        }
        while self.tx.front().is_some_and(Bytes::is_empty) {
            self.tx.pop_front();
        }
        if self.tx.is_empty() {
            return Ok(());
        }
        self.iovecs.clear();
        self.iovecs
            .extend(self.tx.iter().take(IOV_MAX).map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            }));
        debug_assert!(self.iovecs.len() <= IOV_MAX);
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
        // to `Idle`, and `Drop` waits for the completion (or leaks both) when an error or a
        // panic leaves first.
        unsafe { self.push(&entry)? };
        self.write = Slot::InFlight;
        Ok(())
    }

    /// Drops what a completed `writev` wrote from `tx`. A short write leaves the rest of a
    /// frame, and the frames after it, for the next `writev`.
    fn advance(&mut self, result: i32) -> io::Result<()> {
        crate::driver::consume(&mut self.tx, check(result)?)
    }

    /// Takes a completed wake read, if any: true if the caller asked for a turn.
    fn take_wake(&mut self) -> io::Result<bool> {
        let Slot::Done(result) = self.wake else {
            return Ok(false);
        };
        self.wake = Slot::Idle;
        check(result)?;
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

    /// Submits what is queued and waits for `want` completions, or until `deadline`; then
    /// records every completion.
    fn wait(&mut self, want: usize, deadline: Option<Instant>) -> io::Result<()> {
        let submitter = self.ring.submitter();
        let result = match deadline {
            None => submitter.submit_and_wait(want),
            Some(deadline) => {
                let now = Instant::now();
                if deadline <= now {
                    submitter.submit()
                } else {
                    let timeout = types::Timespec::from(deadline - now);
                    let args = types::SubmitArgs::new().timespec(&timeout);
                    submitter.submit_with_args(want, &args)
                }
            }
        };
        match result {
            Ok(_) => {}
            // The deadline passed, or a signal came: the caller looks at the clock again.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
        self.reap();
        Ok(())
    }

    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            let done = Slot::Done(cqe.result());
            match cqe.user_data() {
                USER_DATA_RECV => self.recv = done,
                USER_DATA_WAKE => self.wake = done,
                USER_DATA_WRITE => self.write = done,
                // A cancel's own result (done, not found, already running) changes nothing:
                // the cancelled operation completes on its own.
                USER_DATA_CANCEL => {}
                other => debug_assert!(false, "completion with unknown user data {other}"),
            }
        }
    }

    fn in_flight(&self) -> bool {
        [self.recv, self.wake, self.write].contains(&Slot::InFlight)
    }

    /// Cancels every operation in flight and waits for all of them to complete; false if
    /// that could not be done within the bounded wait.
    fn quiesce(&mut self) -> bool {
        for (slot, user_data) in [
            (self.recv, USER_DATA_RECV),
            (self.wake, USER_DATA_WAKE),
            (self.write, USER_DATA_WRITE),
        ] {
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
            if !self.in_flight() {
                return true;
            }
            if self.wait(1, Some(Instant::now() + QUIESCE_WAIT)).is_err() {
                return false;
            }
        }
        !self.in_flight()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if !self.quiesce() {
            // The kernel may still use these: leak them rather than free memory under it.
            std::mem::forget(std::mem::take(&mut self.rx));
            std::mem::forget(std::mem::take(&mut self.wake_buf));
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
