//! Engine processes as the supervisor holds them: started as its children or adopted after a
//! supervisor restart, watched and signalled through a pidfd either way, so that an adopted
//! engine's exit is seen as promptly as a child's and a signal never reaches a recycled pid.
//!
//! Engines run in process groups of their own: a Ctrl-C meant for the supervisor's terminal,
//! or the supervisor's death, does not reach them.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;

/// A process we can wait for and kill, child or not.
#[derive(Clone)]
pub struct Watched {
    pub pid: u32,
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl Watched {
    /// Opens a pidfd on `pid`. For a child, call this before anything can reap it.
    pub fn open(pid: u32) -> std::io::Result<Watched> {
        let raw = i32::try_from(pid).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let pid_t = Pid::from_raw(raw).ok_or(std::io::ErrorKind::InvalidInput)?;
        let fd = pidfd_open(pid_t, PidfdFlags::empty())?;
        // SAFETY: the runtime may poll this descriptor for as long as it is registered; the
        // `OwnedFd` moves into the `AsyncFd`, which deregisters it before it closes it, and
        // nothing else can close or replace it meanwhile.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(Watched {
            pid,
            fd: Arc::new(fd),
        })
    }

    /// Resolves when the process has exited (a pidfd turns readable then).
    pub async fn exited(&self) {
        let _ = self.fd.readable().await;
    }

    /// SIGKILL, to this process only.
    pub fn kill(&self) {
        let _ = pidfd_send_signal(self.fd.get_ref(), Signal::KILL);
    }

    /// Is it still running?
    pub fn alive(&self) -> bool {
        use std::future::Future;
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut ready = std::pin::pin!(self.fd.readable());
        !ready.as_mut().poll(&mut cx).is_ready()
    }
}

/// The processes of `tandem engine` whose command line names `dir` (as their data directory):
/// what `tandem pair down --dir` and the tests look for when no supervisor knows them.
pub fn engines_under(dir: &std::path::Path) -> Vec<u32> {
    let needle = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            args.contains(&&b"engine"[..])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--data-dir" && w[1].starts_with(needle.as_bytes()))
        })
        .collect()
}
