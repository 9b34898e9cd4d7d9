//! The replicated state of an engine: the database and the work-unit registry.
//!
//! Both engines hold one `State`; the active changes it through [`crate::app::Ctx`] (which also
//! emits the run-state update), the standby through [`State::apply`] with the records it
//! receives. Each half keeps an order-independent digest up to date on every change, so that
//! "both engines hold the same state" is one comparison of two numbers, at any time.

use bytes::Bytes;
use hashbrown::HashTable;

use replicator::catch_up::{key_hash, shard_of, ChunkWriter, SHARDS};
use replicator::{Op, Record, RecordRef};

use crate::expiry::{self, Index};

/// Work units may not exceed this count, nor database records theirs: a limit on everything.
pub const WORK_UNITS_MAX: usize = 10_000_000;
pub const DB_RECORDS_MAX: usize = 50_000_000;

/// One entry: where its key and value lie in the shard's arena, the key at `at`, then the
/// value in `room` bytes, of which it uses `value_len`; and the bits of the key's hash that
/// the table uses (see [`table_hash`]), kept for its resizes. 24 bytes.
#[derive(Clone, Copy)]
struct Slot {
    at: usize,
    room: u32,
    value_len: u32,
    key_len: u16,
    hash_top: u8,
    hash_low: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 24);

/// The hash a shard's table files an entry under: the key hash's low 32 bits (the bucket)
/// and top 7 (hashbrown's tag); the bits between choose the shard, the same for all of its
/// entries. What the slot keeps of it fits in the slot's padding.
fn table_hash(key_hash: u64) -> u64 {
    key_hash & 0xFE00_0000_FFFF_FFFF
}

impl Slot {
    fn new(key_hash: u64, at: usize, key_len: u16, value_len: u32) -> Slot {
        Slot {
            at,
            room: value_len,
            value_len,
            key_len,
            hash_top: (key_hash >> 57) as u8,
            hash_low: key_hash as u32,
        }
    }

    fn table_hash(&self) -> u64 {
        (u64::from(self.hash_top) << 57) | u64::from(self.hash_low)
    }

    /// The key and the value, back to back.
    fn entry<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &arena[self.at..self.at + self.key_len as usize + self.value_len as usize]
    }

    fn key<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &self.entry(arena)[..self.key_len as usize]
    }

    fn value<'a>(&self, arena: &'a [u8]) -> &'a [u8] {
        &self.entry(arena)[self.key_len as usize..]
    }

    /// Bytes of the arena the entry takes.
    fn span(&self) -> usize {
        self.key_len as usize + self.room as usize
    }
}

/// A shard keeps its keys and values back to back in one arena, so that a snapshot chunk is
/// restored with one allocation per shard, not two per entry, and a shard is encoded from
/// memory that is contiguous. An overwrite that fits stays in place; one that does not, and a
/// removal, leave garbage, which a compaction reclaims once it is half the arena.
#[derive(Clone, Default)]
struct Shard {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    garbage: usize,
    digest: u64,
}

/// Compactions wait for at least this much garbage, so that a small shard is not copied over
/// and over.
const GARBAGE_MIN: usize = 16 * 1024;

impl Shard {
    fn find(&self, hash: u64, key: &[u8]) -> Option<&Slot> {
        let arena = &self.arena;
        self.table.find(table_hash(hash), |s| s.key(arena) == key)
    }

    /// Compacts if half the arena is garbage.
    fn tidy(&mut self) {
        if self.worth_compacting() {
            self.compact();
        }
    }

    fn worth_compacting(&self) -> bool {
        self.garbage >= GARBAGE_MIN && self.garbage * 2 >= self.arena.len()
    }

    /// Copies the live entries into a new arena, with half as much room again to grow.
    fn compact(&mut self) {
        let live = self.arena.len() - self.garbage;
        let mut arena = Vec::with_capacity(live + live / 2);
        for slot in self.table.iter_mut() {
            let old = slot.at;
            slot.at = arena.len();
            arena.extend_from_slice(&self.arena[old..old + slot.span()]);
        }
        self.arena = arena;
        self.garbage = 0;
    }
}

/// A map in [`SHARDS`] shards (by `catch_up::shard_of`, the same on every engine) with a
/// running digest: the wrapping sum of a hash of every (key, value). Shards keep every
/// table resize small, and let a snapshot go shard by shard while the map keeps changing.
#[derive(Clone)]
pub struct DigestMap {
    shards: Box<[Shard]>,
    len: usize,
    digest: u64,
    seed: u64,
}

/// The digest of one entry: XXH3-64 of the value, seeded with the key's hash and the map's
/// seed. A fixed specification, so that two builds compare digests.
fn entry_hash(seed: u64, key_hash: u64, value: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(value, key_hash ^ seed)
}

impl DigestMap {
    fn new(seed: u64) -> DigestMap {
        DigestMap {
            shards: vec![Shard::default(); SHARDS].into_boxed_slice(),
            len: 0,
            digest: 0,
            seed,
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let hash = key_hash(key);
        let shard = &self.shards[shard_of(hash)];
        shard.find(hash, key).map(|s| s.value(&shard.arena))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Stores a copy of `key` (at most `u16::MAX` bytes, as on the wire) and `value`; an
    /// overwrite that fits the entry's room stays in place and allocates nothing.
    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.put_hashed(key_hash(key), key, value)
    }

    /// [`Self::put`], with the key's hash known already.
    fn put_hashed(&mut self, hash: u64, key: &[u8], value: &[u8]) {
        let seed = self.seed;
        let shard = &mut self.shards[shard_of(hash)];
        let add = entry_hash(seed, hash, value);
        let value_len = u32::try_from(value.len()).expect("a value is under 4 GiB");
        let mut removed = 0u64;
        let Shard {
            table,
            arena,
            garbage,
            ..
        } = shard;
        match table.find_mut(table_hash(hash), |s| s.key(arena) == key) {
            Some(slot) => {
                removed = entry_hash(seed, hash, slot.value(arena));
                if value_len <= slot.room {
                    let at = slot.at + key.len();
                    arena[at..at + value.len()].copy_from_slice(value);
                } else {
                    *garbage += slot.span();
                    slot.at = arena.len();
                    slot.room = value_len;
                    arena.extend_from_slice(key);
                    arena.extend_from_slice(value);
                }
                slot.value_len = value_len;
            }
            None => {
                let key_len = u16::try_from(key.len()).expect("a key is under 64 KiB");
                let slot = Slot::new(hash, arena.len(), key_len, value_len);
                arena.extend_from_slice(key);
                arena.extend_from_slice(value);
                table.insert_unique(table_hash(hash), slot, Slot::table_hash);
                self.len += 1;
            }
        }
        shard.tidy();
        shard.digest = shard.digest.wrapping_add(add).wrapping_sub(removed);
        self.digest = self.digest.wrapping_add(add).wrapping_sub(removed);
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        let hash = key_hash(key);
        let shard = &mut self.shards[shard_of(hash)];
        let arena = &shard.arena;
        let Ok(entry) = shard
            .table
            .find_entry(table_hash(hash), |s| s.key(arena) == key)
        else {
            return false;
        };
        let (slot, _) = entry.remove();
        let removed = entry_hash(self.seed, hash, slot.value(&shard.arena));
        shard.garbage += slot.span();
        shard.tidy();
        shard.digest = shard.digest.wrapping_sub(removed);
        self.digest = self.digest.wrapping_sub(removed);
        self.len -= 1;
        true
    }

    /// Empties the map.
    fn clear(&mut self) {
        *self = DigestMap::new(self.seed);
    }

    /// Empties one shard (a snapshot chunk replaces it).
    fn clear_shard(&mut self, shard: usize) {
        let s = &mut self.shards[shard];
        self.len -= s.table.len();
        self.digest = self.digest.wrapping_sub(s.digest);
        *s = Shard::default();
    }

    /// Makes room in shard `shard` for `entries` more entries of `bytes` key and value bytes
    /// in all, so that a restore fills it without a resize.
    fn reserve_shard(&mut self, shard: usize, (entries, bytes): (usize, usize)) {
        let s = &mut self.shards[shard];
        s.table.reserve(entries, Slot::table_hash);
        s.arena.reserve(bytes);
    }

    fn shard_len(&self, shard: usize) -> usize {
        self.shards[shard].table.len()
    }

    /// A shard's entries as they lie in its arena: the key's length, and the key and value
    /// back to back (what a record carries after its header).
    fn shard_iter(&self, shard: usize) -> impl Iterator<Item = (usize, &[u8])> {
        let s = &self.shards[shard];
        s.table
            .iter()
            .map(|slot| (slot.key_len as usize, slot.entry(&s.arena)))
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
    /// `FLUSHDB`: every database record is removed here (work units stay).
    pub const FLUSH_DB: u8 = 3;
}

#[derive(Clone)]
pub struct State {
    pub db: DigestMap,
    pub units: DigestMap,
    pub features_enabled: bool,
    /// The deadlines of the database's keys that expire (derived from their deadline
    /// records, see [`crate::expiry`]).
    pub expiries: Index,
}

impl Default for State {
    fn default() -> Self {
        State {
            db: DigestMap::new(u64::from_le_bytes(*b"tandemdb")),
            units: DigestMap::new(u64::from_le_bytes(*b"tandemwu")),
            features_enabled: false,
            expiries: Index::default(),
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
                let old = self.db.get(key);
                if self.db.len() >= DB_RECORDS_MAX && old.is_none() {
                    return Err(ApplyError::Limit("database records"));
                }
                if key.starts_with(expiry::PREFIX) {
                    let (old, new) = (old.and_then(expiry::decode), expiry::decode(value));
                    if new.is_none() {
                        return Err(ApplyError::Rejected(
                            "a deadline record of other than 8 bytes".into(),
                        ));
                    }
                    self.expiries.note(key, old, new);
                }
                self.db.put(key, value);
            }
            Op::DbDelete => {
                if key.starts_with(expiry::PREFIX) {
                    let old = self.db.get(key).and_then(expiry::decode);
                    self.expiries.note(key, old, None);
                }
                self.db.remove(key);
            }
            Op::Control(control::FLUSH_DB) => {
                self.db.clear();
                self.expiries.clear();
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

    /// Appends shard `shard` (work units, then database records) to a snapshot chunk.
    pub fn encode_shard(
        &self,
        shard: usize,
        chunks: &mut ChunkWriter,
        emit: &mut impl FnMut(Bytes),
    ) {
        for (key_len, entry) in self.units.shard_iter(shard) {
            chunks.push_entry(Op::UnitCreate, key_len, entry, emit);
        }
        for (key_len, entry) in self.db.shard_iter(shard) {
            chunks.push_entry(Op::DbPut, key_len, entry, emit);
        }
    }

    /// The keys of the database's shard `shard`.
    pub fn db_shard_keys(&self, shard: usize) -> impl Iterator<Item = &[u8]> {
        self.db
            .shard_iter(shard)
            .map(|(key_len, entry)| &entry[..key_len])
    }

    /// Entries in shard `shard`, of both maps.
    pub fn shard_entries(&self, shard: usize) -> usize {
        self.units.shard_len(shard) + self.db.shard_len(shard)
    }

    /// Empties a shard of both maps, before a snapshot chunk fills it again.
    pub fn clear_shard(&mut self, shard: usize) {
        if !self.expiries.is_empty() {
            for (key_len, entry) in self.db.shard_iter(shard) {
                let (key, value) = entry.split_at(key_len);
                self.expiries.note(key, expiry::decode(value), None);
            }
        }
        self.units.clear_shard(shard);
        self.db.clear_shard(shard);
    }

    /// Makes room in a shard for what a snapshot chunk brings to each map: (entries, bytes)
    /// of work units and of database records.
    pub fn reserve_shard(&mut self, shard: usize, units: (usize, usize), db: (usize, usize)) {
        self.units.reserve_shard(shard, units);
        self.db.reserve_shard(shard, db);
    }

    /// Restores one record of a snapshot chunk into its (cleared) shard; `hash` is the key's
    /// `key_hash` (the caller computed it to find the shard).
    pub fn restore(&mut self, r: RecordRef<'_>, hash: u64) -> Result<(), ApplyError> {
        match r.op {
            Op::UnitCreate => self.units.put_hashed(hash, r.key, r.value),
            Op::DbPut => {
                if r.key.starts_with(expiry::PREFIX) {
                    self.expiries.note(r.key, None, expiry::decode(r.value));
                }
                self.db.put_hashed(hash, r.key, r.value)
            }
            Op::Control(control::FEATURES_ENABLED) => self.features_enabled = true,
            op => return Err(ApplyError::Rejected(format!("{op:?} in a snapshot"))),
        }
        Ok(())
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

    /// Digests are compared across engines, builds and versions: they must not change with
    /// a Rust release or a dependency update. XXH3-64 of the empty input is the
    /// specification's test vector; the state's value pins how entries are combined.
    #[test]
    fn the_digest_is_pinned_to_its_specification() {
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        let mut s = State::default();
        s.apply(Op::DbPut, b"x", b"1").unwrap();
        s.apply(Op::DbPut, b"key:00000042", &[7u8; 100]).unwrap();
        s.apply(Op::UnitCreate, b"call-1", b"sub-1 open").unwrap();
        assert_eq!(format!("{:016x}", s.digest()), "6aafc1d806e889c4");
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
