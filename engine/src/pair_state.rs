//! What a supervisor keeps on disk in the pair's directory, so that a supervisor that dies (or
//! is restarted) is replaced by one that knows what it knew: `supervisor.json` holds the epoch
//! (never to be granted twice), which engine is active, whether the standby is promotable, the
//! engines' processes and addresses, and the upgrade in progress with its step. It is written
//! whole, synced, and renamed into place (then the directory synced) at every change, before
//! the supervisor acts on the change.
//!
//! `supervisor.lock` is held (`flock`) by the live supervisor: a second one on the same
//! directory is refused while the first lives, and takes over as soon as it is gone.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::upgrade::Options;

pub const STATE_FILE: &str = "supervisor.json";
const LOCK_FILE: &str = "supervisor.lock";
pub const SCHEMA: &str = "tandem.supervisor/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairState {
    pub schema: String,
    pub admin: String,
    pub supervisor_pid: u32,
    /// The highest epoch granted. A restarted supervisor continues above it.
    pub epoch: u64,
    /// The engine that is active (or was, when the supervisor last acted).
    pub active: String,
    /// The standby holds every acknowledged write (no simplex lease granted since it did).
    pub promotable: bool,
    /// Why the pair refuses writes, when no engine is known to hold every acknowledged one.
    pub unavailable: Option<String>,
    /// The pair has acknowledged a write at some point (so a lost engine may hold one).
    #[serde(default)]
    pub released_any: bool,
    /// The Sentinel discovery port's address: a successor keeps it, so clients keep theirs.
    #[serde(default)]
    pub sentinel: Option<String>,
    pub engines: Vec<EngineState>,
    pub upgrade: Option<UpgradeState>,
    /// The directory holding the engines' data directories (`a/`, `b/`: their journals):
    /// the pair's first directory. A spare supervisor that took the pair over runs from a
    /// directory of its own and keeps the engines' data where it is.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The last upgrade as published to etcd (`PairRecord.upgrade`), with its outcome.
    #[serde(default)]
    pub upgrade_record: Option<fleet::keys::UpgradeRecord>,
    /// Tags of the upgrades this pair ran (a campaign's `id/pair`): one is never run twice.
    #[serde(default)]
    pub ran_tags: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineState {
    pub name: String,
    pub pid: Option<u32>,
    pub app_version: String,
    pub fault: Option<String>,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
}

/// An upgrade in progress: where it is, so that a restarted supervisor can finish it or roll
/// it back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpgradeState {
    pub from: String,
    pub to: String,
    pub options: Options,
    /// The phase it was in.
    pub step: String,
    /// The new version passed its evaluation: what remains is to finish, not to roll back.
    pub accepted: bool,
}

impl PairState {
    pub fn new(admin: String, epoch: u64, active: String, promotable: bool) -> PairState {
        PairState {
            schema: SCHEMA.into(),
            admin,
            supervisor_pid: std::process::id(),
            epoch,
            active,
            promotable,
            unavailable: None,
            released_any: false,
            sentinel: None,
            engines: Vec::new(),
            upgrade: None,
            data_dir: None,
            upgrade_record: None,
            ran_tags: Vec::new(),
        }
    }

    pub fn load(dir: &Path) -> Result<Option<PairState>, String> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let state: PairState = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a supervisor state file: {e}", path.display()))?;
        if state.schema != SCHEMA {
            return Err(format!(
                "{} has schema {}, this tandem reads {SCHEMA}",
                path.display(),
                state.schema
            ));
        }
        Ok(Some(state))
    }

    /// Writes the state durably (temporary file, sync, rename, directory sync).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        write_durably(&dir.join(STATE_FILE), &json)
    }

    pub fn remove(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(STATE_FILE));
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file whole.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(())
}

/// The lock of a live supervisor on `dir`; released when the process ends, however it ends.
pub struct DirLock {
    _file: File,
    pub path: PathBuf,
}

impl DirLock {
    /// Takes the lock, or says that another supervisor holds it.
    pub fn take(dir: &Path) -> Result<DirLock, String> {
        let path = dir.join(LOCK_FILE);
        let file = File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                let admin = PairState::load(dir)
                    .ok()
                    .flatten()
                    .map(|s| format!(" (admin {}, pid {})", s.admin, s.supervisor_pid))
                    .unwrap_or_default();
                format!(
                    "a supervisor already runs the pair in {}{admin}: use it, or stop it first",
                    dir.display()
                )
            },
        )?;
        Ok(DirLock { _file: file, path })
    }

    /// Blocks until no supervisor holds `dir` (its process has ended).
    pub fn wait_released(dir: &Path) {
        if let Ok(file) = File::open(dir.join(LOCK_FILE)) {
            let _ = rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared);
        }
    }

    /// Is a live supervisor holding `dir`?
    pub fn held(dir: &Path) -> bool {
        let Ok(file) = File::open(dir.join(LOCK_FILE)) else {
            return false;
        };
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_the_lock_excludes_a_second_supervisor() {
        let dir = std::env::temp_dir().join(format!("tandem-pair-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(PairState::load(&dir).unwrap().is_none());
        let mut s = PairState::new("127.0.0.1:1".into(), 7, "b".into(), true);
        s.unavailable = Some("why".into());
        s.save(&dir).unwrap();
        let back = PairState::load(&dir).unwrap().unwrap();
        assert_eq!(
            (back.epoch, back.active.as_str(), back.promotable),
            (7, "b", true)
        );
        let lock = DirLock::take(&dir).unwrap();
        assert!(DirLock::held(&dir));
        let second = DirLock::take(&dir);
        assert!(second.is_err());
        drop(lock);
        assert!(!DirLock::held(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
