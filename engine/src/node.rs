//! One engine: its role, epoch, state, outbox and replication link, and the rules that decide
//! when a client may be told that its write is done.
//!
//! An engine runs on one thread (a current-thread tokio runtime): client connections, the
//! replication link and the control commands all borrow the same `Engine` in turn, so the hot
//! path has no locks and no cross-thread hand-off. The one rule that keeps acknowledged writes
//! safe lives in [`Engine::refresh_released`]: a reply that saw sequence `s` is released when
//! the in-sync standby has acknowledged `s`, or, with no in-sync standby, only while the
//! supervisor's simplex lease is valid and (by default) once the simplex journal holds `s` on
//! disk; and while a published journal exists, never beyond what it holds. An active that has
//! lost both its standby and the supervisor stops acknowledging writes.
//!
//! Leases are stamped with the supervisor's `CLOCK_MONOTONIC` at the time it sent them (every
//! process of a pair runs on one machine): a lease is valid until its stamp plus its TTL, however
//! late it is read, and one stamped before a lease already taken is ignored, so that a renewal
//! delayed in a socket buffer or sent by a supervisor since replaced can never extend a lease.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use replicator::{BatchConfig, Identity, LinkConfig, Outbox, Sender, VersionCheck};

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};

use crate::app::Application;
use crate::catch_up;
use crate::contract::Code;
use crate::journal::{self, Journal};
use crate::state::State;

/// `CLOCK_MONOTONIC` in nanoseconds: the clock every process of a pair shares (leases).
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub type Shared = Rc<RefCell<Engine>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Active,
    Standby,
    OutOfService,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
            Role::OutOfService => "out_of_service",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub name: String,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
    /// Under a supervisor, simplex operation needs its lease; standalone engines run simplex
    /// freely.
    pub supervised: bool,
    pub batch: BatchConfig,
    pub link: LinkConfig,
    /// The driver of the replication link, both ends.
    pub io: crate::link_io::LinkIo,
    /// Payload bytes per snapshot-chunk frame and per slice of a catch-up or checkpoint.
    pub snapshot_chunk_bytes: usize,
    pub limits: crate::server::ServerLimits,
    /// The engine's data directory: with it (and a supervisor), simplex writes are released
    /// only once the journal there holds them; without it, simplex is memory only.
    pub journal_dir: Option<PathBuf>,
}

/// The active's link to its standby.
pub struct Link {
    pub id: u64,
    pub sender: Sender,
    pub peer: Option<Identity>,
    /// The snapshot still going to this standby, a slice per turn (see `catch_up`).
    pub catch_up: Option<catch_up::Cursor>,
}

/// The standby's view of the active it follows.
#[derive(Default)]
pub struct Follow {
    pub replication_addr: String,
    pub connected: bool,
    pub in_sync: bool,
    pub active: Option<Identity>,
    pub last_error: Option<String>,
}

#[derive(Default, Serialize, Deserialize, Clone, Debug)]
#[serde(default)]
pub struct Counters {
    pub client_protocol_errors: u64,
    pub replication_links_refused: u64,
    pub replication_links_closed: u64,
    pub snapshots_sent: u64,
    pub snapshots_received: u64,
    /// Connections closed before they were served: over a limit, unauthenticated, or HTTP.
    pub clients_refused: u64,
    /// Clients dropped because they did not read their replies.
    pub clients_dropped_output: u64,
    /// Leases ignored because a later one (by the supervisor's clock) was already taken.
    pub leases_stale: u64,
    pub journals_started: u64,
    /// Keys the expiry sweep deleted.
    pub expired_keys: u64,
}

pub struct Engine {
    pub config: Config,
    pub app: Box<dyn Application>,
    pub state: State,
    pub role: Role,
    pub epoch: u64,
    pub history: u64,
    /// The last applied sequence (on the active, the last one handed out).
    pub seq_applied: u64,
    /// Replies that saw up to this sequence may be sent.
    pub seq_released: u64,
    pub outbox: Outbox,
    pub link: Option<Link>,
    next_link_id: u64,
    pub follow: Option<Follow>,
    pub simplex_lease_until: Option<Instant>,
    /// The supervisor's clock stamp of the latest lease taken (see the module comment).
    pub lease_stamp_ns: u64,
    /// Does this engine hold a whole state (of `history`)? False from the start of a snapshot
    /// until it is verified, and after an update failed to apply: such a standby must never be
    /// promoted.
    pub state_complete: bool,
    /// A standby taking a snapshot: which shards it holds (see `catch_up`).
    pub restore: Option<Box<catch_up::Restore>>,
    /// The simplex journal, open while this active has no in-sync standby.
    pub journal: Option<Journal>,
    /// Woken by the journal's writer when more is on disk.
    pub journal_wake: Arc<tokio::sync::Notify>,
    /// Callers waiting for the journal to be published (`TANDEM.JOURNAL`).
    pub journal_waiters: Vec<oneshot::Sender<Result<String, String>>>,
    /// Opened ahead of a planned window (`TANDEM.JOURNAL`): sync leases do not close it; the
    /// degrade lease that starts the window (or `TANDEM.JOURNAL UNPIN`) ends the pin.
    pub journal_pinned: bool,
    /// What this engine recovered from its journal at start, if it did.
    pub recovered: Option<journal::Recovered>,
    /// Recovered from a journal that is still the one a recovery would read: until a new
    /// journal is published, nothing past this sequence may be released (that old file would
    /// not hold it).
    pub journal_floor: Option<u64>,
    /// The journal's checkpoint still to write, a slice per turn of the journal task.
    journal_cursor: Option<catch_up::Cursor>,
    /// Set by a degrade lease: the current standby no longer counts, until a new one attaches.
    pub standby_stale: bool,
    /// A standby link closed (it died, hung, or was taken away) and no new one is in sync yet.
    pub standby_lost: bool,
    /// The client address of the active, for `-NOTACTIVE` answers.
    pub active_hint: Option<String>,
    /// A switchover in progress: writes are refused, the caller waits for the outcome.
    pub stepping_down: Option<oneshot::Sender<Result<String, String>>>,
    /// The epoch the standby takes over with, during a switchover.
    pub stepping_down_epoch: Option<u64>,
    pub versions: Option<VersionCheck>,
    pub counters: Counters,
    pub stats: crate::stats::Stats,
    /// Client connections open now, and accepted since the start (the last one's id).
    pub clients_connected: usize,
    pub clients_total: u64,
    /// The last sync point this engine passed: its sequence and the state digest there.
    pub sync_point: Option<(u64, u64)>,
    /// Bumped whenever something a waiting client may care about changes.
    pub progress: watch::Sender<u64>,
    /// Wakes the replication task (new batches to send, role changes).
    pub link_wake: Rc<Notify>,
    /// Wakes the standby task when it should stop following.
    pub follow_wake: Rc<Notify>,
    /// Tells the process to exit (`TANDEM.SHUTDOWN`).
    pub shutdown: Rc<Notify>,
    pub started: Instant,
    /// The clock leases are stamped with: [`monotonic_ns`], or the simulator's.
    pub clock: fn() -> u64,
    /// The wall clock keys expire by (set again on every expiry sweep).
    pub wall: crate::expiry::WallClock,
}

impl Engine {
    pub fn new(config: Config, app: Box<dyn Application>) -> Engine {
        let outbox = Outbox::new(config.batch.clone(), 0);
        Engine {
            config,
            app,
            state: State::default(),
            role: Role::OutOfService,
            epoch: 0,
            history: 0,
            seq_applied: 0,
            seq_released: 0,
            outbox,
            link: None,
            next_link_id: 1,
            follow: None,
            simplex_lease_until: None,
            lease_stamp_ns: 0,
            state_complete: true,
            restore: None,
            journal: None,
            journal_wake: Arc::new(tokio::sync::Notify::new()),
            journal_waiters: Vec::new(),
            journal_pinned: false,
            recovered: None,
            journal_floor: None,
            journal_cursor: None,
            standby_stale: false,
            standby_lost: false,
            active_hint: None,
            stepping_down: None,
            stepping_down_epoch: None,
            versions: None,
            counters: Counters::default(),
            clients_connected: 0,
            clients_total: 0,
            stats: crate::stats::Stats::default(),
            sync_point: None,
            progress: watch::channel(0).0,
            link_wake: Rc::new(Notify::new()),
            follow_wake: Rc::new(Notify::new()),
            shutdown: Rc::new(Notify::new()),
            started: Instant::now(),
            clock: monotonic_ns,
            wall: crate::expiry::WallClock::now(),
        }
    }

    /// The expiry sweep's turn (every [`crate::expiry::SWEEP_PERIOD`], after `wall` is set
    /// again): on the active, deletes keys whose deadline has passed, a bounded number per
    /// turn, as replicated writes.
    /// Returns how many it deleted.
    pub fn sweep_expired(&mut self, now: Instant) -> usize {
        if self.state.expiries.is_empty()
            || self.role != Role::Active
            || self.stepping_down.is_some()
            || self.writes_blocked()
        {
            return 0;
        }
        let now_ms = self.wall.unix_ms(now);
        let before = self.outbox.seq_last();
        let mut ctx = crate::app::Ctx::new(&mut self.state, &mut self.outbox, now);
        // Deletes cannot reach a limit; nothing to do on an error but try again next turn.
        let n =
            crate::keyspace::sweep(&mut ctx, now_ms, crate::expiry::SWEEP_KEYS_MAX).unwrap_or(0);
        self.counters.expired_keys += n as u64;
        if self.outbox.seq_last() > before {
            self.after_writes(now);
        }
        n
    }

    pub fn identity(&self) -> Identity {
        Identity {
            engine: self.config.name.clone(),
            epoch: self.epoch,
            history: self.history,
            app_name: self.app.name().to_string(),
            app_version: self.app.version().to_string(),
            feature_level: self.app.feature_level(),
            features_enabled: self.state.features_enabled,
            client_addr: self.config.client_addr.clone(),
            replication_addr: self.config.replication_addr.clone(),
        }
    }

    pub fn bump(&self) {
        self.progress.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Is the standby following closely enough that writes wait for its acknowledgement?
    pub fn sync_mode(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| !l.sender.is_closed() && l.sender.caught_up())
    }

    /// Does the standby hold every write ever released? Only then may it be promoted.
    pub fn standby_in_sync(&self) -> bool {
        self.sync_mode()
            && !self.standby_stale
            && self
                .link
                .as_ref()
                .is_some_and(|l| l.sender.seq_acked() >= self.seq_released)
    }

    fn simplex_allowed(&self, now: Instant) -> bool {
        !self.config.supervised || self.simplex_lease_until.is_some_and(|t| now < t)
    }

    /// Must writers wait (the open batch is full, or the journal is that far behind the disk)?
    pub fn writes_blocked(&self) -> bool {
        self.role == Role::Active
            && (self.outbox.is_full() || self.journal.as_ref().is_some_and(Journal::is_full))
    }

    /// Should a journal be open? When this active may serve alone (it holds a simplex lease)
    /// or has just lost its standby (the checkpoint then overlaps the supervisor's reaction).
    /// Not merely for having no standby yet: after a planned switchover the old active
    /// resumes within milliseconds, and releases wait for it under sync leases.
    fn wants_journal(&self) -> bool {
        self.journal_required()
            && self.role == Role::Active
            && !self.standby_in_sync()
            && (self.simplex_lease_until.is_some() || self.standby_lost || self.standby_stale)
    }

    /// Is every simplex write to be on disk before its reply goes?
    pub fn journal_required(&self) -> bool {
        self.config.supervised && self.config.journal_dir.is_some()
    }

    /// Recomputes how far replies may be released. Call after acks, lease, link and journal
    /// changes.
    pub fn refresh_released(&mut self, now: Instant) {
        if self.role != Role::Active {
            return;
        }
        if self.wants_journal() && self.journal.is_none() {
            // Opened on the journal task's next turn (`on_journal_wake`), not in this borrow:
            // a step-up or a promotion answers first, and the checkpoint's copy comes after.
            self.journal_wake.notify_one();
        }
        self.feed_journal();
        let before = self.seq_released;
        let mut release = self.seq_released;
        if self.sync_mode() && !self.standby_stale {
            let acked = self.link.as_ref().map_or(0, |l| l.sender.seq_acked());
            #[cfg(feature = "sim")]
            let acked = match crate::sim::planted(crate::sim::Plant::AckBeforeStandby) {
                true => self.outbox.seq_last(), // the bug: released before the standby has it
                false => acked,
            };
            release = release.max(acked);
            if self.standby_in_sync() {
                // From here on only the standby's acks release writes: a simplex lease from
                // before must not outlive the moment the supervisor learns we are in sync.
                self.simplex_lease_until = None;
                self.standby_lost = false;
            }
        } else if self.simplex_allowed(now) {
            release = match (&self.journal, self.journal_required()) {
                (Some(j), true) if j.is_published() => release.max(j.synced().unwrap_or(0)),
                (_, true) => release, // the checkpoint is not on disk yet
                (_, false) => release.max(self.outbox.seq_last()),
            };
        }
        // A journal whose checkpoint is on disk gates every release, so that once published it
        // holds every write ever released; it is published as soon as that is true.
        if let Some(error) = self.journal.as_ref().and_then(Journal::error) {
            for waiter in self.journal_waiters.drain(..) {
                let _ = waiter.send(Err(format!("ERR the journal failed: {error}")));
            }
        }
        let gate = self.journal.as_ref().and_then(Journal::synced);
        if let Some(synced) = gate {
            release = release.min(synced).max(self.seq_released);
            self.publish_journal(synced);
        }
        if let Some(floor) = self.journal_floor {
            release = release.min(floor.max(self.seq_released));
        }
        self.seq_released = release;
        if self.seq_released != before {
            self.bump();
        }
        let in_sync = self.standby_in_sync();
        if let Some(link) = self.link.as_mut() {
            link.sender.set_in_sync_flag(in_sync);
        }
    }

    /// After a client's commands have written: seal now when no link will (or the journal
    /// needs the batch), and wake the link.
    pub fn after_writes(&mut self, now: Instant) {
        self.seq_applied = self.outbox.seq_last();
        let linked = self.link.as_ref().is_some_and(|l| !l.sender.is_closed());
        if !linked || self.journal.is_some() {
            self.outbox.seal();
        }
        if linked {
            self.link_wake.notify_one();
        }
        self.refresh_released(now);
    }

    /// The journal task's turn: opens the journal if one is wanted, writes a slice of its
    /// checkpoint, then looks at what is on disk now. True if it wants another turn at once.
    pub fn on_journal_wake(&mut self, now: Instant) -> bool {
        if self.wants_journal() {
            self.open_journal();
        }
        let again = self.step_checkpoint();
        self.refresh_released(now);
        self.bump(); // writers held back by a full journal queue look again
        again
    }

    /// Opens the simplex journal if none is open, after sealing what is open; its checkpoint
    /// follows a slice per turn (`step_checkpoint`).
    pub fn open_journal(&mut self) {
        let Some(dir) = self.config.journal_dir.clone() else {
            return;
        };
        if self.journal.is_some() || self.role != Role::Active {
            return;
        }
        self.outbox.seal();
        let seq = self.outbox.seq_sealed();
        let header = journal::Header::new(
            &self.config.name,
            self.app.version(),
            self.epoch,
            self.history,
            seq,
        );
        self.counters.journals_started += 1;
        tracing::info!(
            engine = %self.config.name,
            "no standby in sync: journaling from sequence {seq} (checkpoint of {} records)",
            self.state.units.len() + self.state.db.len(),
        );
        self.journal = Some(Journal::start(&dir, header, self.journal_wake.clone()));
        self.journal_cursor = Some(catch_up::Cursor::new(self.config.snapshot_chunk_bytes));
        // The checkpoint goes on the journal task's turns, whoever opened the journal (the
        // task itself, or `TANDEM.JOURNAL` ahead of a planned window).
        self.journal_wake.notify_one();
    }

    /// Writes one slice of the journal's checkpoint, if the writer has room for it. True if
    /// more is to be written at once.
    fn step_checkpoint(&mut self) -> bool {
        self.feed_journal();
        let Engine {
            journal: Some(journal),
            journal_cursor: Some(cursor),
            state,
            outbox,
            ..
        } = self
        else {
            return false;
        };
        if !journal.checkpoint_room() {
            return false; // the writer's wake brings the next turn
        }
        let seq = outbox.seq_last();
        if !cursor.step(state, seq, &mut |f| journal.push_chunk(f)) {
            return true;
        }
        outbox.seal();
        let end = cursor.end(state, outbox.seq_sealed());
        self.journal_cursor = None;
        self.feed_journal();
        if let Some(j) = self.journal.as_mut() {
            j.finish_checkpoint(&end);
        }
        false
    }

    /// Hands every batch sealed since the last call to the journal.
    fn feed_journal(&mut self) {
        let Engine {
            journal, outbox, ..
        } = self;
        if let Some(j) = journal.as_mut() {
            while let Some(batch) = outbox.batch_after(j.seq_queued()) {
                j.push(batch);
            }
        }
    }

    /// Publishes the journal once nothing released is missing from it (`synced` is on disk).
    fn publish_journal(&mut self, synced: u64) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if j.is_published() || self.seq_released > synced {
            return;
        }
        let result = j.publish();
        if result.is_ok() {
            self.journal_floor = None; // the new journal replaced the recovered one
        }
        if let Err(e) = &result {
            tracing::error!(engine = %self.config.name, "{e}");
        } else {
            tracing::info!(
                engine = %self.config.name,
                "journal on disk up to {synced}: simplex writes are durable",
            );
        }
        for waiter in self.journal_waiters.drain(..) {
            let _ = waiter.send(
                result
                    .clone()
                    .map(|()| format!("OK journal on disk up to {synced}")),
            );
        }
    }

    /// Closes the journal, removing its file: it no longer holds everything released.
    pub fn close_journal(&mut self, why: &str) {
        self.journal_cursor = None;
        if let Some(j) = self.journal.take() {
            tracing::info!(engine = %self.config.name, "journal closed: {why}");
            j.close(true); // and any recovered one with it
            self.journal_floor = None;
        }
        self.journal_pinned = false;
        for waiter in self.journal_waiters.drain(..) {
            let _ = waiter.send(Err(format!("ERR journal closed: {why}")));
        }
    }

    pub fn next_link_id(&mut self) -> u64 {
        self.next_link_id += 1;
        self.next_link_id
    }

    pub fn close_link(&mut self, id: u64, now: Instant) {
        if self.link.as_ref().is_some_and(|l| l.id == id) {
            self.link = None;
            self.standby_lost = true;
            self.outbox.pin(None);
            self.counters.replication_links_closed += 1;
            if let Some(done) = self.stepping_down.take() {
                let _ = done.send(Err("the standby link closed during the switchover".into()));
                // The standby may have stepped up without our hearing it: from here on this
                // engine's writes are not the new active's, so it never resumes as its standby.
                self.history = 0;
            }
            self.refresh_released(now);
            self.bump();
        }
    }

    /// Becomes the active of `epoch` (promotion by the supervisor, or a step-up).
    pub fn become_active(&mut self, epoch: u64, new_history: bool, now: Instant) {
        assert!(
            epoch >= self.epoch,
            "epoch goes back from {} to {epoch}",
            self.epoch
        );
        self.role = Role::Active;
        self.epoch = epoch;
        self.standby_lost = false;
        self.restore = None; // a forced promotion mid-snapshot: nothing more is coming
        if new_history || self.history == 0 {
            self.history = epoch;
        }
        self.follow = None;
        self.follow_wake.notify_one();
        self.outbox.reset(self.seq_applied);
        self.seq_released = self.seq_applied;
        self.active_hint = Some(self.config.client_addr.clone());
        self.refresh_released(now);
        self.bump();
    }

    /// Leaves the active role (fenced by a higher epoch, or taken out of service).
    pub fn step_down(&mut self, role: Role, epoch: u64) {
        if self.role == Role::Active {
            self.close_journal("no longer active");
        }
        if let Some(dir) = self.config.journal_dir.as_deref() {
            if self.journal_floor.take().is_some() {
                // Recovered, then told to step aside: another engine holds the data now.
                journal::discard(dir);
            }
        }
        self.role = role;
        self.epoch = self.epoch.max(epoch);
        self.link = None;
        self.simplex_lease_until = None;
        self.link_wake.notify_one();
        self.follow_wake.notify_one();
        self.bump();
    }

    /// A lease from the supervisor, stamped with its clock when it was sent.
    pub fn grant_lease(
        &mut self,
        epoch: u64,
        stamp_ns: u64,
        ttl: Duration,
        mode: LeaseMode,
        now: Instant,
    ) -> Result<(), String> {
        if stamp_ns < self.lease_stamp_ns {
            // Sent before one already taken (delayed, or from a supervisor since replaced).
            self.counters.leases_stale += 1;
            return Ok(());
        }
        if epoch < self.epoch {
            return Err(Code::StaleEpoch.refuse(format_args!(
                "lease for epoch {epoch}, this engine is at {}",
                self.epoch
            )));
        }
        if epoch > self.epoch {
            if self.role == Role::Active {
                self.step_down(Role::OutOfService, epoch);
                return Err(Code::StaleEpoch.refuse(format_args!(
                    "epoch {epoch} granted elsewhere: stepped down"
                )));
            }
            self.epoch = epoch;
        }
        if mode == LeaseMode::Degrade {
            self.journal_pinned = false;
        }
        if mode == LeaseMode::Degrade && self.role == Role::Active {
            // The supervisor has written the standby off (it is about to be stopped): no
            // longer in sync, whatever its link says, until a new standby attaches.
            self.standby_stale = true;
        }
        self.lease_stamp_ns = stamp_ns;
        if mode != LeaseMode::Sync && self.role == Role::Active && !self.standby_in_sync() {
            // The instant at which the shared clock reads the lease's end.
            let end_ns = stamp_ns.saturating_add(ttl.as_nanos() as u64);
            let until = now + Duration::from_nanos(end_ns.saturating_sub((self.clock)()));
            self.simplex_lease_until = Some(until);
        }
        if mode == LeaseMode::Sync
            && self.standby_in_sync()
            && self.journal.is_some()
            && !self.journal_pinned
        {
            // The supervisor counts the standby as promotable: it, not the journal, is what a
            // failover would use from now on.
            self.close_journal("the standby is in sync and the supervisor knows it");
        }
        self.refresh_released(now);
        Ok(())
    }

    pub fn not_active_reply(&self) -> String {
        match (&self.active_hint, self.role) {
            (_, Role::Active) if self.stepping_down.is_some() => {
                match self.link.as_ref().and_then(|l| l.peer.as_ref()) {
                    Some(peer) => Code::NotActive.refuse(&peer.client_addr),
                    None => Code::NotActive.refuse("switchover in progress"),
                }
            }
            (Some(addr), _) if *addr != self.config.client_addr => Code::NotActive.refuse(addr),
            _ => Code::NotActive.refuse("no active engine known"),
        }
    }

    pub fn status(&self) -> EngineStatus {
        let link = self.link.as_ref();
        EngineStatus {
            name: self.config.name.clone(),
            role: self.role,
            app_version: self.app.version().to_string(),
            feature_level: self.app.feature_level(),
            features_enabled: self.state.features_enabled,
            pid: std::process::id(),
            client_addr: self.config.client_addr.clone(),
            replication_addr: self.config.replication_addr.clone(),
            control_addr: self.config.control_addr.clone(),
            epoch: self.epoch,
            history: self.history,
            seq_applied: if self.role == Role::Active {
                self.outbox.seq_last()
            } else {
                self.seq_applied
            },
            seq_released: self.seq_released,
            work_units: self.state.units.len() as u64,
            db_records: self.state.db.len() as u64,
            digest: format!("{:016x}", self.app.digest(&self.state)),
            simplex: self.role == Role::Active && !self.sync_mode(),
            standby: link.and_then(|l| l.peer.as_ref()).map(|p| p.engine.clone()),
            standby_in_sync: self.standby_in_sync(),
            standby_seq_acked: link.map(|l| l.sender.seq_acked()),
            following: self.follow.as_ref().map(|f| f.replication_addr.clone()),
            in_sync: match self.role {
                Role::Active => self.standby_in_sync(),
                _ => self
                    .follow
                    .as_ref()
                    .is_some_and(|f| f.connected && f.in_sync),
            },
            peer_app_version: self.versions.as_ref().map(|v| v.theirs.clone()),
            versions_differ: self.versions.as_ref().is_some_and(|v| v.differ()),
            follow_error: self.follow.as_ref().and_then(|f| f.last_error.clone()),
            backlog_bytes: self.outbox.backlog_bytes() as u64,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            sync_point: self.sync_point.map(|(seq, d)| SyncPoint {
                seq,
                digest: format!("{d:016x}"),
            }),
            state_complete: self.state_complete,
            journal: self.journal.as_ref().map(Journal::status),
            recovered: self.recovered.clone(),
            lease_ms_left: self
                .simplex_lease_until
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            counters: self.counters.clone(),
        }
    }
}

impl crate::contract::Message for EngineStatus {
    const NAME: &'static str = "status";
}

/// What a lease allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseMode {
    /// Writes are released by the standby's acknowledgements only.
    Sync,
    /// With no in-sync standby, writes may be released by the active alone until the lease
    /// runs out. Ignored while the standby is in sync (the grant may predate it).
    Simplex,
    /// The supervisor has written the standby off before stopping it: simplex at once.
    Degrade,
}

/// What `TANDEM.STATUS` reports (a [`crate::contract`] message); its field names are also the
/// contract of `tandem status --json` and `pair.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct EngineStatus {
    pub name: String,
    pub role: Role,
    pub app_version: String,
    pub feature_level: u32,
    pub features_enabled: bool,
    pub pid: u32,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
    pub epoch: u64,
    pub history: u64,
    pub seq_applied: u64,
    pub seq_released: u64,
    pub work_units: u64,
    pub db_records: u64,
    pub digest: String,
    pub simplex: bool,
    pub standby: Option<String>,
    pub standby_in_sync: bool,
    pub standby_seq_acked: Option<u64>,
    pub following: Option<String>,
    pub in_sync: bool,
    pub peer_app_version: Option<String>,
    pub versions_differ: bool,
    pub follow_error: Option<String>,
    pub backlog_bytes: u64,
    pub uptime_ms: u64,
    pub sync_point: Option<SyncPoint>,
    /// This engine holds a whole state (see `Engine::state_complete`).
    pub state_complete: bool,
    pub journal: Option<journal::JournalStatus>,
    pub recovered: Option<journal::Recovered>,
    /// How long the simplex lease has left, if one is held.
    pub lease_ms_left: Option<u64>,
    pub counters: Counters,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SyncPoint {
    pub seq: u64,
    pub digest: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::server::{dispatch, Outcome, Port};
    use crate::sessions::{AppVersion, Sessions};
    use bytes::BytesMut;

    pub(crate) fn engine(supervised: bool) -> Engine {
        let config = Config {
            name: "a".into(),
            client_addr: "127.0.0.1:1".into(),
            replication_addr: "127.0.0.1:2".into(),
            control_addr: "127.0.0.1:3".into(),
            supervised,
            batch: BatchConfig::default(),
            link: LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret")),
            io: Default::default(),
            snapshot_chunk_bytes: 4096,
            limits: Default::default(),
            journal_dir: None,
        };
        let mut e = Engine::new(config, Box::new(Sessions::new(AppVersion::V1_0, None)));
        e.become_active(1, true, Instant::now());
        e
    }

    fn set(e: &mut Engine, key: &str, now: Instant) -> u64 {
        let cmd = resp::Command {
            args: vec!["SET".into(), key.to_string().into(), "v".into()],
        };
        let mut out = BytesMut::new();
        let Outcome::Done { seq } = dispatch(
            e,
            Port::Client,
            &mut crate::conn::Conn::new(0),
            &cmd,
            &mut out,
            now,
        ) else {
            panic!("SET is immediate")
        };
        e.after_writes(now);
        seq
    }

    #[test]
    fn a_pair_status_tells_an_answering_engine_from_a_silent_one() {
        use crate::contract::{self, DownEngine, PairEngine, PairStatus};
        let up = engine(true).status();
        let down = DownEngine {
            name: "b".into(),
            role: "unresponsive".into(),
            app_version: "1.0".into(),
            pid: Some(7),
            client_addr: "127.0.0.1:4".into(),
            replication_addr: "127.0.0.1:5".into(),
            control_addr: "127.0.0.1:6".into(),
            epoch: 1,
        };
        let pair = PairStatus {
            admin: "127.0.0.1:9".into(),
            supervisor_pid: 1,
            epoch: 1,
            active: "a".into(),
            standby_promotable: false,
            simplex: true,
            upgrade_in_progress: false,
            unavailable: None,
            failover_pending: None,
            failovers: 0,
            engines: vec![PairEngine::Up(Box::new(up)), PairEngine::Down(down)],
            witness: None,
        };
        let back: PairStatus =
            contract::decode("the supervisor", contract::encode(&pair).as_bytes()).unwrap();
        assert!(matches!(&back.engines[0], PairEngine::Up(s) if s.name == "a"));
        assert!(matches!(&back.engines[1], PairEngine::Down(d) if d.role == "unresponsive"));
        assert_eq!(back.active_engine().map(|e| e.name.as_str()), Some("a"));
    }

    #[test]
    fn the_status_an_engine_sends_is_what_the_supervisor_decodes() {
        let now = Instant::now();
        let mut e = engine(true);
        set(&mut e, "k", now);
        let mut out = BytesMut::new();
        let cmd = resp::Command {
            args: vec!["TANDEM.STATUS".into()],
        };
        dispatch(
            &mut e,
            Port::Control,
            &mut crate::conn::Conn::new(0),
            &cmd,
            &mut out,
            now,
        );
        let json = out[..].split(|&b| b == b'\n').nth(1).expect("a bulk reply");
        let status: EngineStatus = crate::contract::decode("engine a", json).unwrap();
        assert_eq!(status.role, Role::Active);
        assert_eq!(status.seq_applied, 1);
        assert!(status.journal.is_none());
    }

    #[test]
    fn a_supervised_active_without_standby_or_lease_releases_nothing() {
        let now = Instant::now();
        let mut e = engine(true);
        let seq = set(&mut e, "k", now);
        assert!(e.seq_released < seq, "released without standby or lease");
        e.grant_lease(
            1,
            monotonic_ns(),
            Duration::from_millis(500),
            LeaseMode::Simplex,
            now,
        )
        .unwrap();
        assert!(e.seq_released >= seq);
        // Once the lease runs out, new writes wait again.
        let later = now + Duration::from_millis(501);
        let seq2 = set(&mut e, "k2", later);
        assert!(e.seq_released < seq2);
    }

    #[test]
    fn a_standalone_active_runs_simplex() {
        let now = Instant::now();
        let mut e = engine(false);
        let seq = set(&mut e, "k", now);
        assert!(e.seq_released >= seq);
    }

    fn control(e: &mut Engine, args: &[&str]) -> String {
        let cmd = resp::Command {
            args: args.iter().map(|a| a.to_string().into()).collect(),
        };
        let mut out = BytesMut::new();
        dispatch(
            e,
            Port::Control,
            &mut crate::conn::Conn::new(0),
            &cmd,
            &mut out,
            Instant::now(),
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_lease_stamped_before_the_last_one_taken_is_ignored() {
        let now = Instant::now();
        let mut e = engine(true);
        let late = monotonic_ns();
        let early = late - 1_000_000;
        e.grant_lease(1, late, Duration::from_millis(1), LeaseMode::Simplex, now)
            .unwrap();
        // A renewal sent earlier but read later (a stale socket, a replaced supervisor) does
        // not extend the lease.
        e.grant_lease(1, early, Duration::from_secs(60), LeaseMode::Simplex, now)
            .unwrap();
        assert_eq!(e.counters.leases_stale, 1);
        let seq = set(&mut e, "k", now + Duration::from_millis(5));
        assert!(e.seq_released < seq, "a stale lease released a write");
        // And a lease counts from when it was sent, not when it is read.
        let sent_long_ago = monotonic_ns() - 2_000_000_000;
        let mut f = engine(true);
        f.grant_lease(
            1,
            sent_long_ago,
            Duration::from_secs(1),
            LeaseMode::Simplex,
            now,
        )
        .unwrap();
        let seq = set(&mut f, "k", Instant::now());
        assert!(f.seq_released < seq, "an expired lease released a write");
    }

    #[test]
    fn a_standby_whose_state_is_incomplete_refuses_promotion() {
        let mut e = engine(true);
        e.step_down(Role::Standby, 1);
        e.state_complete = false; // a snapshot under way
        let reply = control(&mut e, &["TANDEM.PROMOTE", "2"]);
        assert!(reply.starts_with("-NOTREADY"), "{reply}");
        assert_eq!((e.role, e.epoch), (Role::Standby, 1));
        // Only the operator, accepting the loss, can force it.
        let reply = control(&mut e, &["TANDEM.PROMOTE", "2", "FORCE"]);
        assert!(reply.starts_with("+OK"), "{reply}");
        assert_eq!((e.role, e.epoch), (Role::Active, 2));
    }

    /// A supervised active with a journal directory (fresh) and a long simplex lease.
    fn alone_with_a_journal(name: &str) -> (Engine, std::path::PathBuf, Instant) {
        let dir = std::env::temp_dir().join(format!("tandem-node-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = engine(true);
        e.config.journal_dir = Some(dir.clone());
        let now = Instant::now();
        let lease = Duration::from_secs(60);
        e.grant_lease(1, monotonic_ns(), lease, LeaseMode::Simplex, now)
            .unwrap();
        (e, dir, now)
    }

    #[test]
    fn a_simplex_write_is_released_only_once_the_journal_holds_it() {
        let (mut e, dir, now) = alone_with_a_journal("journal");
        let seq = set(&mut e, "k", now);
        e.on_journal_wake(now); // what the journal task does when woken
        assert!(e.journal.is_some(), "no standby in sync: a journal opens");
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.seq_released < seq {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                e.journal.as_ref().map(Journal::status)
            );
            // Until the journal has it on disk the write is not released...
            assert!(!crate::journal::exists(&dir) || e.journal.as_ref().unwrap().is_published());
            std::thread::yield_now();
            e.refresh_released(Instant::now());
        }
        // ...and once it is, a recovery would find it.
        assert!(crate::journal::exists(&dir));
        let mut app = Sessions::new(AppVersion::V1_0, None);
        let mut state = State::default();
        let r = crate::journal::recover(&dir, &mut app, &mut state).unwrap();
        assert!(r.seq >= seq && state.db.get(b"k").is_some());
        e.close_journal("test over");
        assert!(!crate::journal::exists(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn after_a_recovery_nothing_passes_the_old_journal_until_a_new_one_is_on_disk() {
        let (mut e, dir, now) = alone_with_a_journal("floor");
        // Recovered up to 0 from a journal still on disk: a release past it waits for the new
        // journal.
        e.journal_floor = Some(0);
        let seq = set(&mut e, "k", now);
        let deadline = Instant::now() + Duration::from_secs(20);
        while e.seq_released < seq {
            assert!(Instant::now() < deadline, "never released");
            std::thread::yield_now();
            e.on_journal_wake(Instant::now());
            if e.seq_released > 0 {
                assert!(e.journal.as_ref().unwrap().is_published());
            }
        }
        assert_eq!(
            e.journal_floor, None,
            "the new journal replaced the recovered one"
        );
        e.step_down(Role::Standby, 2);
        assert!(
            !crate::journal::exists(&dir),
            "a stepped-down engine kept a journal"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn epochs_fence_a_stale_active() {
        let now = Instant::now();
        let mut e = engine(true);
        assert!(e
            .grant_lease(
                0,
                monotonic_ns(),
                Duration::from_millis(500),
                LeaseMode::Simplex,
                now
            )
            .is_err());
        assert_eq!(e.role, Role::Active);
        assert!(e
            .grant_lease(
                2,
                monotonic_ns(),
                Duration::from_millis(500),
                LeaseMode::Simplex,
                now
            )
            .is_err());
        assert_eq!(e.role, Role::OutOfService);
        assert_eq!(e.epoch, 2);
        let seq = e.outbox.seq_last() + 1;
        let cmd = resp::Command {
            args: vec!["SET".into(), "k".into(), "v".into()],
        };
        let mut out = BytesMut::new();
        dispatch(
            &mut e,
            Port::Client,
            &mut crate::conn::Conn::following(),
            &cmd,
            &mut out,
            now,
        );
        assert!(out.starts_with(b"-NOTACTIVE"));
        assert!(e.outbox.seq_last() < seq, "a stepped-down engine wrote");
    }
}
