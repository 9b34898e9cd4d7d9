//! What a fleet of tandem pairs shares through etcd: the witness of each pair's epochs and
//! the memory of upgrade campaigns. `etcd` is the client, `keys` what lives where, `local`
//! a one-member etcd for tests and the demo.

pub mod campaign;
pub mod etcd;
pub mod keys;
pub mod local;

pub use etcd::{Client, Compare, Error, Kv, Op};
pub use keys::{Layout, PairRecord};
