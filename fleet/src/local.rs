//! A one-member etcd on loopback, for the tests and `tandem demo --fleet`: Debian's
//! `etcd-server` started in a directory of the caller's, on ports the OS chooses (etcd binds
//! `127.0.0.1:0` and says in its log which port it got), killed when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd; killed (and waited for) when dropped.
pub struct LocalEtcd {
    child: Option<Child>,
    dir: PathBuf,
    /// `127.0.0.1:port` of the client endpoint, kept across `restart`.
    client: String,
}

const READY: &str = "serving insecure client requests on ";

impl LocalEtcd {
    /// Starts etcd with its data and log in `dir` (`dir/etcd.data`, `dir/etcd.log`).
    pub fn start(dir: &Path) -> std::io::Result<LocalEtcd> {
        let mut etcd = LocalEtcd {
            child: None,
            dir: dir.to_path_buf(),
            client: String::new(),
        };
        // etcd's gateway dials the client URL it listens on, so that URL needs its real
        // port: one the OS chose a moment ago (bound on port 0 and released). Should another
        // process take it meanwhile, etcd exits and another port is tried.
        let mut last = None;
        for _ in 0..5 {
            etcd.client = free_port()?;
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    /// `http://127.0.0.1:port`, for `--etcd`.
    pub fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL: as a crash would), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same client port, with the same data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let log_path = self.dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let client_url = format!("http://{}", self.client);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg("tandem")
            .arg("--data-dir")
            .arg(self.dir.join("etcd.data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            // Peers: a one-member cluster talks to no one; its peer port is the OS's choice.
            .args(["--listen-peer-urls", "http://127.0.0.1:0"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "tandem=http://127.0.0.1:2380"])
            .args(["--logger", "capnslog"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(Stdio::piped());
        // SAFETY: only an async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "starting etcd ({e}); install Debian's etcd-server (scripts/setup.sh does)"
                ),
            )
        })?;
        // etcd says where it serves only in its log: a thread copies the log to the file and
        // hands over the address when the line passes (or nothing, when etcd exits first).
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = log;
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log, "{line}");
                if let Some(at) = line.find(READY) {
                    let rest = &line[at + READY.len()..];
                    let addr = rest.split([',', ' ']).next().unwrap_or("").to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.kill();
                let why = match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => "did not serve within 30 s",
                    std::sync::mpsc::RecvTimeoutError::Disconnected => "exited before serving",
                };
                Err(std::io::Error::other(format!(
                    "etcd {why}; see {}",
                    log_path.display()
                )))
            }
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `etcd` on PATH, or Debian's `/usr/bin/etcd`; `TANDEM_ETCD` overrides.
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANDEM_ETCD") {
        return PathBuf::from(path);
    }
    PathBuf::from("etcd")
}

/// Whether an etcd can be started here.
pub fn available() -> bool {
    Command::new(etcd_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}
