//! The simplex journal: what keeps an active that serves alone from losing acknowledged writes
//! when it crashes.
//!
//! Whenever an active has no in-sync standby it opens a journal in its data directory: a
//! header frame, then exactly the frames a new standby would get: the checkpoint (the
//! snapshot-chunk frames of every shard, a slice per turn of the engine thread, see
//! `catch_up`) interleaved with the batches sealed meanwhile, the snapshot end, and every
//! batch after it, each group of frames made durable with one `fdatasync`. While a journal is open the engine
//! releases a reply only once the journal holds its writes (see `Engine::refresh_released`),
//! so `journal.tj`, whenever it exists, holds every write this engine ever acknowledged. A
//! restart with `--recover` replays it (checkpoint, then the batches up to the first torn or
//! corrupt frame) and the supervisor promotes the recovered engine. The journal is removed
//! once a standby is in sync again and the supervisor knows it.
//!
//! The writing happens on a thread of its own, so the engine thread never waits for the disk:
//! it hands over frames (reference-counted, not copied) and is woken when they are durable.
//! The file is written under a temporary name; once its checkpoint is durable the engine
//! gates its releases on the journal and, as soon as nothing released is missing from it,
//! publishes it (renames it into place). Until then the previous journal (if any, from a
//! recovery) stays the one to recover from, and an engine whose standby comes back in sync
//! before the checkpoint is done never waited for the disk at all.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use bytes::{Bytes, BytesMut};
use replicator::catch_up as catch_up_proto;
use replicator::driver;
use replicator::{frame, Kind, Records, Sealed, SnapshotEnd};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::app::Application;
use crate::catch_up::{self, Restore};
use crate::state::State;

pub const FILE: &str = "journal.tj";
const FILE_NEW: &str = "journal.tj.new";
/// v2: the checkpoint is in shards, interleaved with the batches (protocol v3 frames).
const SCHEMA: &str = "tandem.journal/2";
/// Frames handed to the writer and not yet durable, at most; beyond, writes wait.
const QUEUE_BYTES_MAX: usize = 64 << 20;
/// The checkpoint goes on only while less than this waits for the disk: it yields to writes.
const CHECKPOINT_QUEUE_BYTES: usize = 4 << 20;

/// Who wrote a journal, and where its checkpoint stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub schema: String,
    pub engine: String,
    pub app_version: String,
    pub epoch: u64,
    pub history: u64,
    /// The checkpoint starts after this sequence: the batches after it follow, interleaved
    /// with its chunks.
    pub seq: u64,
    pub written_ms: u64,
}

impl Header {
    pub fn new(engine: &str, app_version: &str, epoch: u64, history: u64, seq: u64) -> Header {
        Header {
            schema: SCHEMA.into(),
            engine: engine.into(),
            app_version: app_version.into(),
            epoch,
            history,
            seq,
            written_ms: reports::timeline::now_ms(),
        }
    }
}

/// What `TANDEM.STATUS` says of a journal.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JournalStatus {
    pub checkpoint_seq: u64,
    /// Published: a recovery would read this journal, and it holds every released write.
    pub durable: bool,
    pub synced_seq: u64,
    pub queued_bytes: usize,
    pub error: Option<String>,
}

struct Queue {
    frames: VecDeque<Bytes>,
    seq_last: u64,
    /// The checkpoint's end is among `frames`: once they are durable, so is the checkpoint.
    checkpoint_end: bool,
    stop: bool,
    remove: bool,
    /// The engine renamed the file into place: make the rename durable.
    sync_dir: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// The checkpoint is on disk (under the temporary name), up to its end.
    checkpointed: AtomicBool,
    synced: AtomicU64,
    failed: AtomicBool,
    /// Bytes handed to the writer and not yet written (read without the lock).
    queued: AtomicUsize,
    error: Mutex<Option<String>>,
    /// Wakes the engine thread when more is durable (or the writer failed).
    wake: Arc<Notify>,
}

/// An open journal, owned by the engine thread.
pub struct Journal {
    shared: Arc<Shared>,
    dir: PathBuf,
    seq_checkpoint: u64,
    seq_queued: u64,
    /// Renamed into place: from now on it is what a recovery reads.
    published: bool,
}

impl Journal {
    /// Opens a journal after `header.seq`; the writer thread starts at once. The caller then
    /// sends the checkpoint ([`Self::push_chunk`], [`Self::finish_checkpoint`]) and the batches.
    pub fn start(dir: &Path, header: Header, wake: Arc<Notify>) -> Journal {
        let seq = header.seq;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                seq_last: seq,
                checkpoint_end: false,
                stop: false,
                remove: false,
                sync_dir: false,
            }),
            ready: Condvar::new(),
            checkpointed: AtomicBool::new(false),
            synced: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            error: Mutex::new(None),
            wake,
        });
        let writer = Writer {
            shared: shared.clone(),
            dir: dir.to_path_buf(),
        };
        let spawned = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || writer.run(header));
        if let Err(e) = spawned {
            *shared.error.lock().expect("journal lock") = Some(format!("no journal thread: {e}"));
            shared.failed.store(true, Ordering::Release);
        }
        Journal {
            shared,
            dir: dir.to_path_buf(),
            seq_checkpoint: seq,
            seq_queued: seq,
            published: false,
        }
    }

    fn enqueue(&mut self, frame: Bytes, seq_last: Option<u64>, checkpoint_end: bool) {
        self.shared.queued.fetch_add(frame.len(), Ordering::AcqRel);
        let mut q = self.shared.queue.lock().expect("journal lock");
        q.frames.push_back(frame);
        if let Some(seq) = seq_last {
            q.seq_last = seq;
        }
        q.checkpoint_end |= checkpoint_end;
        drop(q);
        self.shared.ready.notify_one();
    }

    /// Queues a frame of the checkpoint.
    pub fn push_chunk(&mut self, chunk: Bytes) {
        self.enqueue(chunk, None, false);
    }

    /// Queues the checkpoint's end: the caller sealed at `end.seq` and queued the batches up
    /// to it. Once that is on disk, [`Self::synced`] says how far.
    pub fn finish_checkpoint(&mut self, end: &SnapshotEnd) {
        debug_assert_eq!(end.seq, self.seq_queued);
        self.seq_checkpoint = end.seq;
        let mut frame = BytesMut::new();
        end.encode(&mut frame);
        self.enqueue(frame.freeze(), None, true);
    }

    /// Is there room for more of the checkpoint (writes first)?
    pub fn checkpoint_room(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) < CHECKPOINT_QUEUE_BYTES
    }

    /// The last sequence handed to the writer.
    pub fn seq_queued(&self) -> u64 {
        self.seq_queued
    }

    /// Queues a sealed batch; batches must come in order, each right after the last.
    pub fn push(&mut self, sealed: &Sealed) {
        assert_eq!(
            sealed.seq_first,
            self.seq_queued + 1,
            "journal batches out of order"
        );
        self.seq_queued = sealed.seq_last;
        self.enqueue(sealed.frame.clone(), Some(sealed.seq_last), false);
    }

    /// Everything up to this sequence is on disk; None until the checkpoint is.
    pub fn synced(&self) -> Option<u64> {
        self.shared
            .checkpointed
            .load(Ordering::Acquire)
            .then(|| self.shared.synced.load(Ordering::Acquire))
    }

    /// Is this the journal a recovery would read?
    pub fn is_published(&self) -> bool {
        self.published
    }

    /// Renames the file into place. The caller has released nothing beyond [`Self::synced`]:
    /// from here on the file holds every released write.
    pub fn publish(&mut self) -> Result<(), String> {
        debug_assert!(self.synced().is_some());
        std::fs::rename(self.dir.join(FILE_NEW), self.dir.join(FILE))
            .map_err(|e| format!("publishing the journal in {}: {e}", self.dir.display()))?;
        self.published = true;
        self.shared.queue.lock().expect("journal lock").sync_dir = true;
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Why the writer stopped, if it failed (cheap to ask while it has not).
    pub fn error(&self) -> Option<String> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return None;
        }
        self.shared.error.lock().expect("journal lock").clone()
    }

    /// Too much waits for the disk: writers must wait too.
    pub fn is_full(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) > QUEUE_BYTES_MAX
    }

    pub fn status(&self) -> JournalStatus {
        JournalStatus {
            checkpoint_seq: self.seq_checkpoint,
            durable: self.published,
            synced_seq: self.shared.synced.load(Ordering::Acquire),
            queued_bytes: self.shared.queued.load(Ordering::Acquire),
            error: self.shared.error.lock().expect("journal lock").clone(),
        }
    }

    /// Closes the journal. With `remove`, its file (and any older one, recovered from) is
    /// gone before this returns: a journal that no longer holds every released write must
    /// never be recovered from.
    pub fn close(self, remove: bool) {
        if remove {
            discard(&self.dir);
        }
        let mut q = self.shared.queue.lock().expect("journal lock");
        q.stop = true;
        q.remove = remove;
        drop(q);
        self.shared.ready.notify_one();
    }
}

/// The writer thread's side.
struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl Writer {
    fn run(self, header: Header) {
        let result = self.create(&header).and_then(|file| self.stream(file));
        if let Err(e) = result {
            tracing::error!(engine = %header.engine, "journal failed: {e}");
            *self.shared.error.lock().expect("journal lock") = Some(e);
            self.shared.failed.store(true, Ordering::Release);
            self.shared.wake.notify_one();
        }
    }

    /// Creates the file under the temporary name, with its header.
    fn create(&self, header: &Header) -> Result<File, String> {
        let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.dir.display());
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", e))?;
        let tmp = self.dir.join(FILE_NEW);
        let mut file = File::create(&tmp).map_err(|e| io("creating a journal in", e))?;
        let mut head = BytesMut::new();
        let json = serde_json::to_vec(header).expect("journal header serializes");
        frame::encode(&mut head, Kind::JournalHeader, header.seq, &json);
        file.write_all(&head).map_err(|e| io("writing to", e))?;
        Ok(file)
    }

    /// Appends queued frames, one `writev` and one `fdatasync` per group, until closed.
    fn stream(&self, mut file: File) -> Result<(), String> {
        let mut frames = VecDeque::new();
        loop {
            let (seq, checkpoint_end, stop, remove, sync_dir) = {
                let mut q = self.shared.queue.lock().expect("journal lock");
                while q.frames.is_empty() && !q.stop && !q.sync_dir {
                    q = self.shared.ready.wait(q).expect("journal lock");
                }
                std::mem::swap(&mut frames, &mut q.frames);
                (
                    q.seq_last,
                    std::mem::take(&mut q.checkpoint_end),
                    q.stop,
                    q.remove,
                    std::mem::take(&mut q.sync_dir),
                )
            };
            if stop && remove {
                return Ok(()); // the file is gone already
            }
            if sync_dir {
                // The rename survives a crash of the process as it is; this makes it survive
                // a crash of the machine too.
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| format!("syncing {}: {e}", self.dir.display()))?;
            }
            if !frames.is_empty() {
                let bytes: usize = frames.iter().map(Bytes::len).sum();
                write_all(&mut file, &mut frames).map_err(|e| format!("writing: {e}"))?;
                self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
                file.sync_data().map_err(|e| format!("syncing: {e}"))?;
                self.shared.synced.store(seq, Ordering::Release);
                if checkpoint_end {
                    self.shared.checkpointed.store(true, Ordering::Release);
                }
                self.shared.wake.notify_one();
            }
            if stop {
                return Ok(());
            }
        }
    }
}

fn write_all(file: &mut File, frames: &mut VecDeque<Bytes>) -> std::io::Result<()> {
    while !frames.is_empty() {
        let mut iov = [IoSlice::new(&[]); driver::IOV_MAX];
        let n = driver::gather(frames, &mut iov);
        let written = file.write_vectored(&iov[..n])?;
        driver::consume(frames, written)?;
    }
    Ok(())
}

/// What a recovery found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recovered {
    pub header: Header,
    /// The last sequence recovered (the checkpoint's, or the last whole batch's).
    pub seq: u64,
    pub batches: u64,
    pub checkpoint_records: u64,
    /// Bytes after the last whole frame (a write the crash cut short), ignored.
    pub torn_bytes: u64,
}

/// Removes the journal in `dir`, if any (an engine started without `--recover`, or a
/// journal closed). Once this returns no recovery can read it: it is renamed out of the way at
/// once, and freed on a thread of its own, because unlinking a journal of a million records
/// takes tens of milliseconds (46 ms for 145 MB on ext4 here) that the engine thread would
/// otherwise not be serving.
pub fn discard(dir: &Path) {
    let stamp = reports::timeline::now_ms();
    let mut trash = Vec::new();
    for name in [FILE, FILE_NEW] {
        // A name no other file has: renaming onto an existing file would free that one here.
        let to = dir.join(format!("{name}.discarded-{stamp}-{}", trash.len()));
        match std::fs::rename(dir.join(name), &to) {
            Ok(()) => trash.push(to),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => {
                let _ = std::fs::remove_file(dir.join(name));
            }
        }
    }
    // And whatever an earlier engine renamed and did not get to free.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let discarded = e.file_name().to_string_lossy().contains(".discarded-");
            if discarded && !trash.contains(&e.path()) {
                trash.push(e.path());
            }
        }
    }
    if !trash.is_empty() {
        let _ = std::thread::Builder::new()
            .name("journal-discard".into())
            .spawn(move || trash.iter().for_each(|t| drop(std::fs::remove_file(t))));
    }
}

/// Does `dir` hold a journal to recover from?
pub fn exists(dir: &Path) -> bool {
    dir.join(FILE).is_file()
}

/// Replays the journal in `dir` into `state` through the application, as a standby would
/// apply the same frames: the checkpoint's chunks and the batches among them (see
/// `catch_up::Restore`) up to its end, whose digest must match, then every whole batch in
/// sequence. A frame cut short or corrupt at the end is where the crash stopped the writer.
pub fn recover(
    dir: &Path,
    app: &mut dyn Application,
    state: &mut State,
) -> Result<Recovered, String> {
    let path = dir.join(FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut buf = BytesMut::from(&bytes[..]);
    drop(bytes);
    let bad = |what: String| format!("{}: {what}", path.display());
    let header = match frame::decode(&mut buf) {
        Ok(Some(f)) if f.kind == Kind::JournalHeader => {
            serde_json::from_slice::<Header>(&f.payload)
                .map_err(|e| bad(format!("unreadable header: {e}")))?
        }
        _ => return Err(bad("not a tandem journal".into())),
    };
    if header.schema != SCHEMA {
        return Err(bad(format!("schema {} is not {SCHEMA}", header.schema)));
    }
    *state = State::default();
    let mut restore = Some(Restore::default());
    let mut seq = header.seq;
    let mut batches = 0;
    let mut checkpoint_records = 0;
    loop {
        let before = buf.len();
        let f = match frame::decode(&mut buf) {
            Ok(Some(f)) => f,
            _ if restore.is_some() => return Err(bad("the checkpoint is incomplete".into())),
            _ => {
                return Ok(Recovered {
                    header,
                    seq,
                    batches,
                    checkpoint_records,
                    torn_bytes: before as u64,
                })
            }
        };
        match (f.kind, restore.as_mut()) {
            (Kind::SnapshotChunk, Some(r)) => {
                catch_up_proto::validate_chunk(&f.payload).map_err(|e| bad(e.to_string()))?;
                r.chunk(&*app, state, f.seq, f.payload).map_err(&bad)?;
            }
            (Kind::SnapshotEnd, Some(r)) => {
                let end = SnapshotEnd::decode(f.seq, f.payload).map_err(|e| bad(e.to_string()))?;
                checkpoint_records = end.records;
                r.end(end).map_err(&bad)?;
            }
            (Kind::Batch, _) => {
                let count = Records::validate(Kind::Batch, &f.payload)
                    .map_err(|e| bad(e.to_string()))? as u64;
                if count == 0 || f.seq.wrapping_sub(count) != seq {
                    return Err(bad(format!(
                        "batch ending at {} does not follow {seq}",
                        f.seq
                    )));
                }
                catch_up::apply_batch(
                    app,
                    state,
                    restore.as_ref(),
                    seq + 1,
                    f.payload,
                    |_, _, _| {},
                )
                .map_err(&bad)?;
                seq = f.seq;
                batches += 1;
            }
            (other, _) => return Err(bad(format!("unexpected {other:?} frame"))),
        }
        if let Some(done) = restore.as_ref().and_then(|r| r.finished(seq, state)) {
            done.map_err(&bad)?;
            restore = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessions::{AppVersion, Sessions};
    use replicator::{BatchConfig, Op, Outbox};
    use std::time::{Duration, Instant};

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The whole checkpoint at once (the engine writes it a slice per turn).
    fn checkpoint(journal: &mut Journal, state: &State, seq: u64) {
        let mut cursor = crate::catch_up::Cursor::default();
        while !cursor.step(state, seq, &mut |f| journal.push_chunk(f)) {}
        journal.finish_checkpoint(&cursor.end(state, seq));
    }

    fn wait(journal: &Journal, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while journal.synced().is_none_or(|s| s < seq) {
            assert!(journal.status().error.is_none(), "{:?}", journal.status());
            assert!(Instant::now() < deadline, "journal not durable");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_checkpoint_and_batches_recover_to_the_same_state_and_a_torn_tail_is_ignored() {
        let dir = temp_dir("recover");
        let now = Instant::now();
        let mut state = State::default();
        for i in 0..1000 {
            state
                .apply(Op::DbPut, format!("k{i}").as_bytes(), b"v0")
                .unwrap();
        }
        let header = Header::new("a", "1.0", 3, 3, 1000);
        let mut journal = Journal::start(&dir, header, Arc::new(Notify::new()));
        checkpoint(&mut journal, &state, 1000);
        let mut outbox = Outbox::new(BatchConfig::default(), 1000);
        for round in 0..20 {
            for i in 0..50 {
                let (k, v) = (format!("k{i}"), format!("v{round}"));
                state.apply(Op::DbPut, k.as_bytes(), v.as_bytes()).unwrap();
                outbox.push(now, Op::DbPut, k.as_bytes(), v.as_bytes());
            }
            let sealed = outbox.seal().unwrap().clone();
            journal.push(&sealed);
        }
        wait(&journal, 2000);
        assert!(!exists(&dir), "published before the engine said so");
        journal.publish().unwrap();
        assert!(exists(&dir));
        let want = state.digest();
        journal.close(false);
        // A crash mid-write leaves half a frame at the end.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(FILE))
            .unwrap();
        f.write_all(&[b'T', b'N', b'D', b'M', 2, 3, 0, 0, 99])
            .unwrap();
        drop(f);
        let mut app = Sessions::new(AppVersion::V1_0, None);
        let mut recovered = State::default();
        let r = recover(&dir, &mut app, &mut recovered).unwrap();
        assert_eq!((r.seq, r.batches, r.checkpoint_records), (2000, 20, 1000));
        assert_eq!(r.torn_bytes, 9);
        assert_eq!(recovered.digest(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn closing_with_remove_leaves_nothing_to_recover() {
        let dir = temp_dir("remove");
        let state = State::default();
        let mut journal = Journal::start(
            &dir,
            Header::new("a", "1.0", 1, 1, 0),
            Arc::new(Notify::new()),
        );
        checkpoint(&mut journal, &state, 0);
        wait(&journal, 0);
        journal.publish().unwrap();
        assert!(exists(&dir));
        journal.close(true);
        assert!(!exists(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
