//! The application an engine runs: the trait a user implements, and the context through
//! which its commands read and change the replicated state.
//!
//! An application is made of work units and a database (claim 8). The engine owns both (see
//! [`crate::state`]) and replicates every change; the application decides what its commands
//! do and how a work unit's description is encoded. Every write goes through [`Ctx`], which
//! changes the state and encodes the run-state update into the outbound batch in one step,
//! so the active can never change something the standby does not hear about.

use std::time::Instant;

use bytes::BytesMut;
use replicator::{Op, Outbox, Record, RecordRef};
use resp::Command;

use crate::state::{ApplyError, State};

/// Does a command change state?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// An error reply from a command: the RESP error line, without the leading '-'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

impl CommandError {
    pub fn new(msg: impl Into<String>) -> Self {
        CommandError(msg.into())
    }
}

impl From<ApplyError> for CommandError {
    fn from(e: ApplyError) -> Self {
        CommandError(format!("ERR {e}"))
    }
}

/// The application an engine runs. The reference implementation is
/// [`crate::sessions::Sessions`].
pub trait Application {
    /// A short name, the same for every version ("sessions").
    fn name(&self) -> &str;
    /// The version this process runs ("1.0", "2.0").
    fn version(&self) -> &str;
    /// The highest state format this version can read and write.
    fn feature_level(&self) -> u32;
    /// Whether this application serves the command (upper-case name), and if it writes.
    fn access(&self, name: &[u8]) -> Option<Access>;
    /// Executes a command on the active; the reply is written to `out` (RESP). Writes go
    /// through `ctx`, which produces the run-state updates.
    fn execute(
        &mut self,
        cmd: &Command,
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
    ) -> Result<(), CommandError>;

    /// A deliberately faulty build fails some commands here, before they change anything;
    /// the engine asks before every command, built-in or the application's.
    fn write_fault(&mut self, _access: Access) -> Result<(), CommandError> {
        Ok(())
    }

    /// How long to hold back the reply of the command just executed (a deliberately slow
    /// build uses it; the engine delays that connection's replies, never the engine).
    fn reply_delay(&mut self) -> Option<std::time::Duration> {
        None
    }

    /// Checks an update from the active before the standby applies it: a version that cannot
    /// read a work unit's description refuses it here, before its state changes.
    fn check_update(&self, _record: RecordRef<'_>) -> Result<(), String> {
        Ok(())
    }

    /// Applies one run-state update on the standby.
    fn apply(&mut self, state: &mut State, record: &Record) -> Result<(), String> {
        self.check_update(record.as_ref())?;
        state.apply_record(record).map_err(|e| e.to_string())
    }

    /// The digest of the state, compared between the two engines.
    fn digest(&self, state: &State) -> u64 {
        state.digest()
    }
}

/// What a command on the active sees: the state, and the outbox its writes go to.
pub struct Ctx<'a> {
    state: &'a mut State,
    outbox: &'a mut Outbox,
    now: Instant,
}

impl<'a> Ctx<'a> {
    pub fn new(state: &'a mut State, outbox: &'a mut Outbox, now: Instant) -> Ctx<'a> {
        Ctx { state, outbox, now }
    }

    pub fn features_enabled(&self) -> bool {
        self.state.features_enabled
    }

    pub fn db_get(&self, key: &[u8]) -> Option<&[u8]> {
        self.state.db.get(key)
    }

    pub fn db_len(&self) -> usize {
        self.state.db.len()
    }

    /// Keys with a deadline (see [`crate::expiry`]).
    pub fn expiring(&self) -> usize {
        self.state.expiries.len()
    }

    /// The key whose deadline came first, if it is at or before `now_ms`.
    pub fn first_due(&self, now_ms: u64) -> Option<&[u8]> {
        self.state.expiries.first_due(now_ms)
    }

    /// The keys of one of the database's shards (`SCAN` goes shard by shard).
    pub fn db_shard_keys(&self, shard: usize) -> impl Iterator<Item = &[u8]> {
        self.state.db_shard_keys(shard)
    }

    pub fn unit_get(&self, id: &[u8]) -> Option<&[u8]> {
        self.state.units.get(id)
    }

    pub fn units_len(&self) -> usize {
        self.state.units.len()
    }

    /// Changes the state and records the update; nothing is recorded if the change is refused.
    pub fn write(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<u64, ApplyError> {
        if key.len() > replicator::record::KEY_BYTES_MAX
            || value.len() > replicator::record::VALUE_BYTES_MAX
        {
            return Err(ApplyError::Limit("key of 64 KiB or value of 8 MiB"));
        }
        self.state.apply(op, key, value)?;
        Ok(self.outbox.push(self.now, op, key, value))
    }

    pub fn db_put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ApplyError> {
        self.write(Op::DbPut, key, value)
    }

    /// Deletes a record; false (and no update) if it did not exist.
    pub fn db_delete(&mut self, key: &[u8]) -> Result<bool, ApplyError> {
        if self.state.db.get(key).is_none() {
            return Ok(false);
        }
        self.write(Op::DbDelete, key, b"")?;
        Ok(true)
    }

    pub fn unit_create(&mut self, id: &[u8], description: &[u8]) -> Result<u64, ApplyError> {
        self.write(Op::UnitCreate, id, description)
    }

    pub fn unit_update(&mut self, id: &[u8], description: &[u8]) -> Result<u64, ApplyError> {
        self.write(Op::UnitUpdate, id, description)
    }

    pub fn unit_end(&mut self, id: &[u8]) -> Result<u64, ApplyError> {
        self.write(Op::UnitEnd, id, b"")
    }

    /// Records a pair-level event in the stream (features enabled).
    pub fn control(&mut self, code: u8) -> Result<u64, ApplyError> {
        self.write(Op::Control(code), b"", b"")
    }
}
