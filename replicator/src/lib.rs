//! tandem's run-state replication: how an active engine streams work-unit descriptions and
//! database activities to its standby, and how the standby takes over.
//!
//! The protocol is pure: [`frame`] and [`record`] are codecs, [`handshake`] negotiates,
//! [`batch`] turns updates into sealed batch frames, [`sender`] and [`receiver`] are the two
//! ends of a link as sans-IO state machines, [`catch_up`] encodes snapshots. Only the drivers
//! touch a socket: [`driver`] on tokio, and `uring` on Linux's io_uring (the one module
//! allowed `unsafe`). Nothing here knows what an application is.
#![deny(unsafe_code)]

pub mod batch;
pub mod catch_up;
pub mod driver;
pub mod frame;
pub mod handshake;
pub mod link;
pub mod receiver;
pub mod record;
pub mod sender;
#[cfg(target_os = "linux")]
pub mod uring;
mod wire;

pub use auth::Secret;
pub use batch::{BatchConfig, Outbox, Sealed};
pub use frame::{Frame, FrameError, Kind};
pub use handshake::{Hello, HelloReply, Identity, Start, VersionCheck};
pub use link::{LinkConfig, SnapshotEnd, StepUp};
pub use receiver::{Receiver, ReceiverEvent};
pub use record::{Op, Record, RecordRef, RecordRefs, Records};
pub use sender::{Sender, SenderEvent};
