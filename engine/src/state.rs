//! The replicated state of an engine: the database and the work-unit registry.
//!
//! Both engines hold one `State`; the active changes it through [`crate::app::Ctx`] (which also
//! emits the run-state update), the standby through [`State::apply`] with the records it
//! receives. Each half keeps an order-independent digest up to date on every change, so that
//! "both engines hold the same state" is one comparison of two numbers, at any time.

use griddle::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;
use replicator::catch_up::Entry;
use replicator::{Op, Record};

/// Work units may not exceed this count, nor database records theirs: a limit on everything.
pub const WORK_UNITS_MAX: usize = 10_000_000;
pub const DB_RECORDS_MAX: usize = 50_000_000;

/// A map with a running digest: the wrapping sum of a hash of every (key, value).
#[derive(Default, Clone)]
pub struct DigestMap {
    map: HashMap<Bytes, Bytes>,
    digest: u64,
    salt: u8,
}

fn entry_hash(salt: u8, key: &[u8], value: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    salt.hash(&mut h);
    key.hash(&mut h);
    value.hash(&mut h);
    h.finish()
}

impl DigestMap {
    fn new(salt: u8) -> DigestMap {
        DigestMap {
            salt,
            ..DigestMap::default()
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Stores a copy of `key` and `value`: received frames are not kept alive by one record.
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let salt = self.salt;
        self.digest = self.digest.wrapping_add(entry_hash(salt, key, value));
        if let Some(old) = self
            .map
            .insert(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value))
        {
            self.digest = self.digest.wrapping_sub(entry_hash(salt, key, &old));
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.digest = self.digest.wrapping_sub(entry_hash(self.salt, key, &old));
                true
            }
            None => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.map.iter()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApplyError {
    #[error("work unit {0:?} already registered")]
    UnitExists(String),
    #[error("work unit {0:?} is not registered")]
    UnitMissing(String),
    #[error("limit reached: {0}")]
    Limit(&'static str),
    #[error("{0}")]
    Rejected(String),
}

/// Control codes that travel in the update stream (Op::Control).
pub mod control {
    /// The new features of the application were enabled at this sequence.
    pub const FEATURES_ENABLED: u8 = 1;
    /// A marker at which both engines note their digest, to compare them under load.
    pub const SYNC_POINT: u8 = 2;
}

#[derive(Clone)]
pub struct State {
    pub db: DigestMap,
    pub units: DigestMap,
    pub features_enabled: bool,
}

impl Default for State {
    fn default() -> Self {
        State {
            db: DigestMap::new(1),
            units: DigestMap::new(2),
            features_enabled: false,
        }
    }
}

impl State {
    /// Applies one update. The checks mirror what the active enforced, so a standby that
    /// disagrees stops instead of diverging silently.
    pub fn apply(&mut self, op: Op, key: &[u8], value: &[u8]) -> Result<(), ApplyError> {
        match op {
            Op::UnitCreate => {
                if self.units.get(key).is_some() {
                    return Err(ApplyError::UnitExists(String::from_utf8_lossy(key).into()));
                }
                if self.units.len() >= WORK_UNITS_MAX {
                    return Err(ApplyError::Limit("work units"));
                }
                self.units.put(key, value);
            }
            Op::UnitUpdate => {
                if self.units.get(key).is_none() {
                    return Err(ApplyError::UnitMissing(String::from_utf8_lossy(key).into()));
                }
                self.units.put(key, value);
            }
            Op::UnitEnd => {
                if !self.units.remove(key) {
                    return Err(ApplyError::UnitMissing(String::from_utf8_lossy(key).into()));
                }
            }
            Op::DbPut => {
                if self.db.len() >= DB_RECORDS_MAX && self.db.get(key).is_none() {
                    return Err(ApplyError::Limit("database records"));
                }
                self.db.put(key, value);
            }
            Op::DbDelete => {
                self.db.remove(key);
            }
            Op::Control(control::FEATURES_ENABLED) => self.features_enabled = true,
            Op::Control(control::SYNC_POINT) => {}
            Op::Control(code) => {
                return Err(ApplyError::Rejected(format!("unknown control code {code}")))
            }
        }
        Ok(())
    }

    pub fn apply_record(&mut self, r: &Record) -> Result<(), ApplyError> {
        self.apply(r.op, &r.key, &r.value)
    }

    /// The digest of the whole state: equal on two engines iff they hold the same state
    /// (up to a 64-bit collision).
    pub fn digest(&self) -> u64 {
        self.db.digest() ^ self.units.digest().rotate_left(17) ^ (self.features_enabled as u64)
    }

    /// The whole state as records, for a snapshot: work units first, then the database.
    pub fn entries(&self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.units.len() + self.db.len() + 1);
        out.extend(
            self.units
                .iter()
                .map(|(k, v)| (Op::UnitCreate, k.clone(), v.clone())),
        );
        out.extend(
            self.db
                .iter()
                .map(|(k, v)| (Op::DbPut, k.clone(), v.clone())),
        );
        if self.features_enabled {
            out.push((
                Op::Control(control::FEATURES_ENABLED),
                Bytes::new(),
                Bytes::new(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent_and_tracks_removal() {
        let mut a = State::default();
        let mut b = State::default();
        a.apply(Op::DbPut, b"x", b"1").unwrap();
        a.apply(Op::DbPut, b"y", b"2").unwrap();
        b.apply(Op::DbPut, b"y", b"2").unwrap();
        b.apply(Op::DbPut, b"x", b"0").unwrap();
        assert_ne!(a.digest(), b.digest());
        b.apply(Op::DbPut, b"x", b"1").unwrap();
        assert_eq!(a.digest(), b.digest());
        a.apply(Op::UnitCreate, b"s1", b"open").unwrap();
        assert_ne!(a.digest(), b.digest());
        a.apply(Op::UnitEnd, b"s1", b"").unwrap();
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn a_unit_key_and_a_db_key_do_not_collide() {
        let mut a = State::default();
        let mut b = State::default();
        a.apply(Op::DbPut, b"k", b"v").unwrap();
        b.apply(Op::UnitCreate, b"k", b"v").unwrap();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn registry_refuses_what_the_active_would_not_do() {
        let mut s = State::default();
        assert!(s.apply(Op::UnitUpdate, b"nope", b"").is_err());
        s.apply(Op::UnitCreate, b"a", b"").unwrap();
        assert!(s.apply(Op::UnitCreate, b"a", b"").is_err());
    }
}
