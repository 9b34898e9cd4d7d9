//! `tandem pair down --dir DIR`: stops a pair whether or not its supervisor still runs. With a
//! live supervisor it asks it (admin `SHUTDOWN`); without one it asks each engine on its control
//! port, then kills whatever engine process of that directory is left, and removes the state
//! files, so that the next `tandem pair up --dir DIR` starts a new pair.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use replicator::Secret;
use resp::Client;

use crate::pair_state::{DirLock, PairState};
use crate::process::{engines_under, Watched};

const DEADLINE: Duration = Duration::from_secs(10);

pub fn run(dir: &Path, secret: &Secret) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    anyhow::ensure!(
        dir.is_dir(),
        "{} is not a directory: give the --dir the pair was started with (`tandem pair up --dir`)",
        dir.display()
    );
    runtime.block_on(async {
        let state = PairState::load(dir).map_err(anyhow::Error::msg)?;
        if state.is_none() && !DirLock::held(dir) && engines_under(dir).is_empty() {
            return Ok(format!(
                "OK no pair in {}: no supervisor.json and no engine of it running, nothing to stop",
                dir.display()
            ));
        }
        if DirLock::held(dir) {
            let state = state.context("a supervisor holds the directory but wrote no state")?;
            let mut admin = crate::admin::connect(&state.admin, secret).await?;
            let _ = admin.call(&[b"SHUTDOWN"]).await;
            // The lock is released when the supervisor's process ends.
            let dir_owned = dir.to_path_buf();
            let released = tokio::task::spawn_blocking(move || DirLock::wait_released(&dir_owned));
            anyhow::ensure!(
                tokio::time::timeout(DEADLINE, released).await.is_ok(),
                "the supervisor (pid {}) did not stop within {DEADLINE:?}",
                state.supervisor_pid
            );
            return Ok(format!("OK pair in {} stopped by its supervisor", dir.display()));
        }
        let mut stopped = Vec::new();
        for e in state.iter().flat_map(|s| &s.engines) {
            let Some(pid) = e.pid else { continue };
            let connected = Client::connect_authenticated(
                &e.control_addr,
                Duration::from_secs(2),
                secret,
                "control",
            )
            .await;
            if let Ok(mut c) = connected {
                if c.call(&[b"TANDEM.SHUTDOWN"]).await.is_ok() {
                    stopped.push((e.name.clone(), pid));
                }
            }
        }
        for (name, pid) in &stopped {
            if let Ok(p) = Watched::open(*pid) {
                if tokio::time::timeout(Duration::from_secs(5), p.exited())
                    .await
                    .is_err()
                {
                    tracing::warn!("engine {name} (pid {pid}) did not stop: killing it");
                    p.kill();
                }
            }
        }
        let mut killed = 0;
        for pid in engines_under(dir) {
            if let Ok(p) = Watched::open(pid) {
                p.kill();
                killed += 1;
            }
        }
        PairState::remove(dir);
        let _ = std::fs::remove_file(dir.join("pair.json"));
        let names: Vec<String> = stopped.iter().map(|(n, _)| n.clone()).collect();
        Ok(format!(
            "OK pair in {} stopped (no supervisor was running): engines stopped [{}], {killed} killed",
            dir.display(),
            names.join(", ")
        ))
    })
}
