//! Which driver moves the replication link's bytes: `tandem pair up --io tokio|uring`.
//!
//! Both run on the engine's one thread with the same contract (see `replicator::driver` and
//! `replicator::uring`), so the link's turns are the same whichever is chosen. tokio stays the
//! default: measured end to end (`bench/scripts/io-drivers.sh`, `bench/RESULTS.md`), io_uring
//! did not win by more than this machine's noise.

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use bytes::Bytes;
use replicator::driver::{self, Turn};
use tokio::net::TcpStream;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LinkIo {
    /// Readiness and system calls through tokio (epoll, writev, recv).
    #[default]
    Tokio,
    /// Reads and writes submitted to an io_uring (Linux 5.11+), waited for on tokio.
    Uring,
}

impl LinkIo {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkIo::Tokio => "tokio",
            LinkIo::Uring => "uring",
        }
    }

    /// Checks that this driver can run here: io_uring may be missing or refused (a sandbox,
    /// `kernel.io_uring_disabled`), and an engine must say so at start rather than fail every
    /// link later.
    pub fn check(self) -> io::Result<()> {
        match self {
            LinkIo::Tokio => Ok(()),
            #[cfg(target_os = "linux")]
            LinkIo::Uring => replicator::uring::available(),
            #[cfg(not(target_os = "linux"))]
            LinkIo::Uring => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring exists on Linux only; use --io tokio",
            )),
        }
    }
}

/// Runs one link with the driver `io`: see `replicator::driver::run`.
pub async fn run<F>(io: LinkIo, stream: TcpStream, wake: &Notify, step: F) -> io::Result<()>
where
    F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
{
    match io {
        LinkIo::Tokio => driver::run(stream, wake, step).await,
        #[cfg(target_os = "linux")]
        LinkIo::Uring => replicator::uring::run(stream, wake, step).await,
        #[cfg(not(target_os = "linux"))]
        LinkIo::Uring => Err(LinkIo::Uring.check().unwrap_err()),
    }
}
