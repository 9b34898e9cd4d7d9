//! Settings and small frames shared by both ends of a replication link.

use std::time::Duration;

use auth::Secret;
use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{self, FrameError, Kind};
use crate::wire::{put_string, Reader};

#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Batches sent but not yet acknowledged, at most.
    pub batches_in_flight_max: usize,
    /// Bytes sent but not yet acknowledged, at most.
    pub bytes_in_flight_max: usize,
    /// An idle link sends a heartbeat this often.
    pub heartbeat_interval: Duration,
    /// A link that hears nothing for this long is dead.
    pub peer_timeout: Duration,
    /// How long a standby waits for the active's answer to its hello (the active may be
    /// encoding a large snapshot meanwhile).
    pub handshake_timeout: Duration,
    /// The pair's secret: both ends prove they hold it before anything else is said.
    pub secret: Secret,
}

impl LinkConfig {
    /// The default limits and timeouts, for a pair holding `secret`.
    pub fn new(secret: Secret) -> LinkConfig {
        LinkConfig {
            batches_in_flight_max: 4,
            bytes_in_flight_max: 8 << 20,
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(30),
            secret,
        }
    }
}

/// The step-up signal (claim 13): the final sequence, the new epoch, and the description of
/// the work units the new active must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepUp {
    pub seq_final: u64,
    pub epoch: u64,
    pub work_units: u64,
    pub work_units_digest: u64,
    pub state_digest: u64,
}

impl StepUp {
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::with_capacity(32);
        p.put_u64_le(self.epoch);
        p.put_u64_le(self.work_units);
        p.put_u64_le(self.work_units_digest);
        p.put_u64_le(self.state_digest);
        frame::encode(out, Kind::StepUp, self.seq_final, &p);
    }

    pub fn decode(seq: u64, payload: Bytes) -> Result<StepUp, FrameError> {
        let mut r = Reader::new(payload);
        let parse = |r: &mut Reader| {
            Some(StepUp {
                seq_final: seq,
                epoch: r.u64()?,
                work_units: r.u64()?,
                work_units_digest: r.u64()?,
                state_digest: r.u64()?,
            })
        };
        parse(&mut r).ok_or(FrameError::Malformed {
            kind: Kind::StepUp,
            what: "step-up",
        })
    }
}

/// The payload of an ack that also says: the snapshot is whole here, its digest checked.
pub const ACK_SNAPSHOT_VERIFIED: u8 = 1;

/// The end of a snapshot: how many records it held and the state digest to check against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotEnd {
    pub seq: u64,
    pub records: u64,
    pub state_digest: u64,
}

impl SnapshotEnd {
    pub fn encode(&self, out: &mut BytesMut) {
        let mut p = BytesMut::with_capacity(16);
        p.put_u64_le(self.records);
        p.put_u64_le(self.state_digest);
        frame::encode(out, Kind::SnapshotEnd, self.seq, &p);
    }

    pub fn decode(seq: u64, payload: Bytes) -> Result<SnapshotEnd, FrameError> {
        let mut r = Reader::new(payload);
        match (r.u64(), r.u64()) {
            (Some(records), Some(state_digest)) => Ok(SnapshotEnd {
                seq,
                records,
                state_digest,
            }),
            _ => Err(FrameError::Malformed {
                kind: Kind::SnapshotEnd,
                what: "snapshot end",
            }),
        }
    }
}

/// A one-line frame: an ok flag or a reason (step-up ack, goodbye).
pub fn encode_status(out: &mut BytesMut, kind: Kind, seq: u64, ok: bool, reason: &str) {
    let mut p = BytesMut::with_capacity(3 + reason.len());
    p.put_u8(ok as u8);
    put_string(&mut p, reason);
    frame::encode(out, kind, seq, &p);
}

pub fn decode_status(kind: Kind, payload: Bytes) -> Result<(bool, String), FrameError> {
    let mut r = Reader::new(payload);
    match (r.u8(), r.string()) {
        (Some(ok), Some(reason)) => Ok((ok != 0, reason)),
        _ => Err(FrameError::Malformed {
            kind,
            what: "status",
        }),
    }
}

/// Heartbeats carry the sender's epoch; an active's heartbeat also says whether the standby
/// is in sync, so that the standby can report it.
pub fn encode_heartbeat(out: &mut BytesMut, seq: u64, epoch: u64, in_sync: bool) {
    let mut p = [0u8; 9];
    p[..8].copy_from_slice(&epoch.to_le_bytes());
    p[8] = in_sync as u8;
    frame::encode(out, Kind::Heartbeat, seq, &p);
}

pub fn decode_heartbeat(payload: Bytes) -> Result<(u64, bool), FrameError> {
    let mut r = Reader::new(payload);
    match (r.u64(), r.u8()) {
        (Some(epoch), Some(flag)) => Ok((epoch, flag != 0)),
        _ => Err(FrameError::Malformed {
            kind: Kind::Heartbeat,
            what: "heartbeat",
        }),
    }
}

/// The frame that ends a link, with the reason for the peer's log.
pub(crate) fn goodbye(reason: &str) -> Bytes {
    frame_bytes(|o| encode_status(o, Kind::Goodbye, 0, false, reason))
}

/// Encodes a control frame into a fresh `Bytes`.
pub(crate) fn frame_bytes(f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::new();
    f(&mut out);
    out.freeze()
}
