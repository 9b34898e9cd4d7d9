//! The handshake: who the two engines are, which protocol they both speak, and whether they
//! run different versions of the application (claim 11).
//!
//! The active speaks first with a challenge (a fresh nonce); the standby answers with a
//! [`Hello`] [`seal`]ed with the pair's secret over that nonce and its own; the active checks
//! the proof before it looks at anything in the hello, and answers with [`HelloReply`], which
//! either accepts (sealed in turn, so that the standby knows it follows a real member of its
//! pair; it says whether the stream resumes after the standby's last applied sequence or
//! starts with a snapshot) or refuses with a reason. A peer without the secret learns nothing
//! and changes nothing.

use auth::{Nonce, Secret, NONCE_BYTES, PROOF_BYTES};
use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{self, FrameError, Kind, PROTOCOL_MAX, PROTOCOL_MIN};
use crate::wire::{put_string, Reader};

/// What an engine says about itself when a link opens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Identity {
    pub engine: String,
    pub epoch: u64,
    /// The lineage of the data: kept across a planned switchover, new at every failover, so
    /// that only an engine with the same history may resume from its sequence.
    pub history: u64,
    pub app_name: String,
    pub app_version: String,
    pub feature_level: u32,
    pub features_enabled: bool,
    pub client_addr: String,
    pub replication_addr: String,
}

/// Standby -> active.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol_min: u8,
    pub protocol_max: u8,
    pub identity: Identity,
    /// The last sequence this engine applied, and the history it belongs to (0 and 0 for an
    /// empty engine).
    pub seq_applied: u64,
    pub history: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The stream continues after the standby's `seq_applied`.
    Resume,
    /// A snapshot of the state at this sequence follows, then the stream after it.
    Snapshot { seq: u64 },
}

/// Active -> standby.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloReply {
    Accept {
        protocol: u8,
        identity: Identity,
        start: Start,
    },
    Refuse {
        reason: String,
    },
}

fn put_identity(out: &mut BytesMut, id: &Identity) {
    put_string(out, &id.engine);
    out.put_u64_le(id.epoch);
    out.put_u64_le(id.history);
    put_string(out, &id.app_name);
    put_string(out, &id.app_version);
    out.put_u32_le(id.feature_level);
    out.put_u8(id.features_enabled as u8);
    put_string(out, &id.client_addr);
    put_string(out, &id.replication_addr);
}

fn read_identity(r: &mut Reader) -> Option<Identity> {
    Some(Identity {
        engine: r.string()?,
        epoch: r.u64()?,
        history: r.u64()?,
        app_name: r.string()?,
        app_version: r.string()?,
        feature_level: r.u32()?,
        features_enabled: r.u8()? != 0,
        client_addr: r.string()?,
        replication_addr: r.string()?,
    })
}

impl Hello {
    pub fn new(identity: Identity, seq_applied: u64, history: u64) -> Hello {
        Hello {
            protocol_min: PROTOCOL_MIN,
            protocol_max: PROTOCOL_MAX,
            identity,
            seq_applied,
            history,
        }
    }

    /// The hello's payload, before [`seal`] adds the standby's nonce and proof.
    pub fn to_payload(&self) -> BytesMut {
        let mut p = BytesMut::new();
        p.put_u8(self.protocol_min);
        p.put_u8(self.protocol_max);
        put_identity(&mut p, &self.identity);
        p.put_u64_le(self.seq_applied);
        p.put_u64_le(self.history);
        p
    }

    pub fn decode(payload: Bytes) -> Result<Hello, FrameError> {
        let bad = FrameError::Malformed {
            kind: Kind::Hello,
            what: "hello",
        };
        let mut r = Reader::new(payload);
        let parse = |r: &mut Reader| -> Option<Hello> {
            Some(Hello {
                protocol_min: r.u8()?,
                protocol_max: r.u8()?,
                identity: read_identity(r)?,
                seq_applied: r.u64()?,
                history: r.u64()?,
            })
        };
        parse(&mut r).ok_or(bad)
    }
}

impl HelloReply {
    /// The reply's payload; an acceptance goes through [`seal`] before it is sent.
    pub fn to_payload(&self) -> BytesMut {
        let mut p = BytesMut::new();
        match self {
            HelloReply::Accept {
                protocol,
                identity,
                start,
            } => {
                p.put_u8(1);
                p.put_u8(*protocol);
                put_identity(&mut p, identity);
                match start {
                    Start::Resume => p.put_u8(1),
                    Start::Snapshot { seq } => {
                        p.put_u8(2);
                        p.put_u64_le(*seq);
                    }
                }
            }
            HelloReply::Refuse { reason } => {
                p.put_u8(0);
                put_string(&mut p, reason);
            }
        }
        p
    }

    pub fn decode(payload: Bytes) -> Result<HelloReply, FrameError> {
        let mut r = Reader::new(payload);
        let parse = |r: &mut Reader| -> Option<HelloReply> {
            Some(match r.u8()? {
                0 => HelloReply::Refuse {
                    reason: r.string()?,
                },
                1 => {
                    let protocol = r.u8()?;
                    let identity = read_identity(r)?;
                    let start = match r.u8()? {
                        1 => Start::Resume,
                        2 => Start::Snapshot { seq: r.u64()? },
                        _ => return None,
                    };
                    HelloReply::Accept {
                        protocol,
                        identity,
                        start,
                    }
                }
                _ => return None,
            })
        };
        parse(&mut r).ok_or(FrameError::Malformed {
            kind: Kind::HelloReply,
            what: "hello reply",
        })
    }
}

/// The highest protocol version both ends speak.
pub fn negotiate(ours: (u8, u8), theirs: (u8, u8)) -> Result<u8, String> {
    let high = ours.1.min(theirs.1);
    let low = ours.0.max(theirs.0);
    if high >= low {
        Ok(high)
    } else {
        Err(format!(
            "peer speaks protocol v{}-v{}, this engine speaks v{}-v{}",
            theirs.0, theirs.1, ours.0, ours.1
        ))
    }
}

/// What the standby proves over its hello, and the active over its acceptance.
pub const LABEL_STANDBY: &str = "tandem/1 replication standby";
pub const LABEL_ACTIVE: &str = "tandem/1 replication active";

/// The active's first frame: a fresh nonce the standby's proof must cover.
pub fn challenge_frame(nonce: &Nonce) -> Bytes {
    let mut out = BytesMut::with_capacity(frame::HEADER_BYTES + NONCE_BYTES);
    frame::encode(&mut out, Kind::Challenge, 0, nonce);
    out.freeze()
}

pub fn decode_challenge(payload: &[u8]) -> Result<Nonce, FrameError> {
    payload.try_into().map_err(|_| FrameError::Malformed {
        kind: Kind::Challenge,
        what: "challenge nonce",
    })
}

/// A handshake frame signed with the pair's secret: `body || own nonce || proof`, where the
/// proof is an HMAC over `label`, the peer's nonce, our nonce and the body. Only a process
/// holding the secret can produce one, and it is good for this connection only.
pub fn seal(
    kind: Kind,
    seq: u64,
    mut body: BytesMut,
    secret: &Secret,
    label: &str,
    peer_nonce: &Nonce,
    own_nonce: &Nonce,
) -> Bytes {
    let proof = secret.prove(label, &[peer_nonce, own_nonce, &body]);
    body.put_slice(own_nonce);
    body.put_slice(&proof);
    let mut out = BytesMut::with_capacity(frame::HEADER_BYTES + body.len());
    frame::encode(&mut out, kind, seq, &body);
    out.freeze()
}

/// Checks a [`seal`]ed payload: the body and the peer's nonce if the proof holds.
pub fn open(
    mut payload: Bytes,
    secret: &Secret,
    label: &str,
    own_nonce: &Nonce,
) -> Option<(Bytes, Nonce)> {
    let body_len = payload.len().checked_sub(NONCE_BYTES + PROOF_BYTES)?;
    let tail = payload.split_off(body_len);
    let peer_nonce: Nonce = tail[..NONCE_BYTES].try_into().ok()?;
    secret
        .verify(
            label,
            &[own_nonce, &peer_nonce, &payload],
            &tail[NONCE_BYTES..],
        )
        .then_some((payload, peer_nonce))
}

/// Claim 11: do the two engines run different versions of the application?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionCheck {
    pub ours: String,
    pub theirs: String,
}

impl VersionCheck {
    pub fn differ(&self) -> bool {
        self.ours != self.theirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            engine: "b".into(),
            epoch: 3,
            history: 1,
            app_name: "sessions".into(),
            app_version: "2.0".into(),
            feature_level: 2,
            features_enabled: false,
            client_addr: "127.0.0.1:7403".into(),
            replication_addr: "127.0.0.1:7404".into(),
        }
    }

    #[test]
    fn hello_round_trips() {
        let hello = Hello::new(identity(), 42, 3);
        assert_eq!(Hello::decode(hello.to_payload().freeze()).unwrap(), hello);
    }

    #[test]
    fn replies_round_trip() {
        for reply in [
            HelloReply::Accept {
                protocol: 1,
                identity: identity(),
                start: Start::Snapshot { seq: 9 },
            },
            HelloReply::Accept {
                protocol: 1,
                identity: identity(),
                start: Start::Resume,
            },
            HelloReply::Refuse {
                reason: "epoch 2 is stale".into(),
            },
        ] {
            assert_eq!(
                HelloReply::decode(reply.to_payload().freeze()).unwrap(),
                reply
            );
        }
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate((1, 2), (1, 3)), Ok(2));
        assert_eq!(negotiate((1, 1), (1, 1)), Ok(1));
        let err = negotiate((1, 2), (7, 7)).unwrap_err();
        assert!(err.contains("v7-v7") && err.contains("v1-v2"), "{err}");
    }

    #[test]
    fn truncated_hello_is_malformed() {
        let payload = Hello::new(identity(), 1, 1).to_payload().freeze();
        for cut in 0..payload.len() {
            assert!(Hello::decode(payload.slice(..cut)).is_err());
        }
    }

    #[test]
    fn a_sealed_payload_opens_only_with_the_secret_and_the_nonce() {
        let secret = Secret::from_bytes(*b"0123456789abcdef");
        let (challenge, ours) = (auth::nonce(), auth::nonce());
        let body = Hello::new(identity(), 1, 1).to_payload();
        let sealed = seal(
            Kind::Hello,
            1,
            body.clone(),
            &secret,
            LABEL_STANDBY,
            &challenge,
            &ours,
        );
        let f = frame::decode(&mut BytesMut::from(&sealed[..]))
            .unwrap()
            .unwrap();
        let (opened, nonce) = open(f.payload.clone(), &secret, LABEL_STANDBY, &challenge).unwrap();
        assert_eq!((&opened[..], nonce), (&body[..], ours));
        let wrong = Secret::from_bytes(*b"fedcba9876543210");
        assert!(open(f.payload.clone(), &wrong, LABEL_STANDBY, &challenge).is_none());
        assert!(open(f.payload.clone(), &secret, LABEL_ACTIVE, &challenge).is_none());
        assert!(open(f.payload.clone(), &secret, LABEL_STANDBY, &auth::nonce()).is_none());
        for i in 0..f.payload.len() {
            let mut flipped = f.payload.to_vec();
            flipped[i] ^= 1;
            assert!(open(flipped.into(), &secret, LABEL_STANDBY, &challenge).is_none());
        }
        assert!(open(f.payload.slice(..40), &secret, LABEL_STANDBY, &challenge).is_none());
    }
}
