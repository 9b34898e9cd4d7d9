//! The tandem engine: an application of work units and a database, run as one of a
//! fault-tolerant pair (active and standby) that replicates every change and can be upgraded
//! one engine at a time while it serves.
//!
//! [`app`] is the trait a user implements ([`sessions`] is the reference application),
//! [`state`] the replicated state and its digest, [`node`] one engine's roles and release
//! rule, [`server`] the RESP client server, [`replication`] the two ends of the link,
//! [`control`] the supervisor's commands, [`contract`] what the processes say to each other, [`link_io`] the link's driver, [`run`] starts an engine process, and
//! [`supervisor`] runs a pair.
// Two `unsafe` blocks: `process.rs` (registering a pidfd with the runtime) and `demo.rs` (a
// parent-death signal for the redis-servers of `--peer redis`, set between fork and exec).
#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod campaign;
pub mod catch_up;
pub mod conn;
pub mod contract;
pub mod control;
pub mod demo;
pub mod demo_fleet;
pub mod expiry;
pub mod journal;
pub mod keyspace;
pub mod link_io;
pub mod node;
pub mod pair_down;
pub mod pair_state;
pub mod process;
pub mod replication;
pub mod rules;
pub mod run;
pub mod sentinel;
pub mod server;
pub mod sessions;
#[cfg(feature = "sim")]
pub mod sim;
pub mod state;
pub mod stats;
pub mod supervisor;
pub mod upgrade;
pub mod upgrade_cli;
pub mod waiting_room;
pub mod witness;
