//! The replication frame: a fixed 24-byte header and a payload, CRC32C-protected.
//!
//! ```text
//! 0      4    5     6       8        12             20      24
//! | magic | ver | kind | flags | length | sequence     | crc32c | payload ...
//! ```
//! All integers are little-endian. The CRC covers the first 20 header bytes and the payload,
//! so a flipped bit anywhere in a frame is caught: the decoder checks magic, version, kind,
//! flags and length as soon as the header is in, and the CRC once the payload is.
//!
//! Batches are encoded in place: [`FrameBuf`] reserves the header, the caller appends the
//! payload, and [`FrameBuf::seal`] fills in the header and hands out the frozen bytes, so an
//! update is written once, into the buffer that goes to the socket.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MAGIC: u32 = u32::from_le_bytes(*b"TNDM");
pub const HEADER_BYTES: usize = 24;
/// The protocol versions this build speaks, oldest first.
/// v2: the handshake is authenticated with the pair's secret (v1 was not, and is refused).
/// v3: snapshot chunks carry whole shards and stream alongside the batches (`catch_up`).
pub const PROTOCOL_MIN: u8 = 3;
pub const PROTOCOL_MAX: u8 = 3;
/// No frame carries more than this; a larger length is a corrupt or hostile peer.
pub const PAYLOAD_BYTES_MAX: usize = 16 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    HelloReply = 2,
    Batch = 3,
    Ack = 4,
    SnapshotChunk = 5,
    SnapshotEnd = 6,
    Heartbeat = 7,
    StepUp = 8,
    StepUpAck = 9,
    Goodbye = 10,
    Challenge = 11,
    /// The first frame of an engine's journal file (never sent on a link): who wrote it, in
    /// which epoch and history, and the sequence of the checkpoint that follows.
    JournalHeader = 12,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::HelloReply,
            3 => Kind::Batch,
            4 => Kind::Ack,
            5 => Kind::SnapshotChunk,
            6 => Kind::SnapshotEnd,
            7 => Kind::Heartbeat,
            8 => Kind::StepUp,
            9 => Kind::StepUpAck,
            10 => Kind::Goodbye,
            11 => Kind::Challenge,
            12 => Kind::JournalHeader,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("bad magic {0:#010x}: the peer does not speak the tandem replication protocol")]
    BadMagic(u32),
    #[error("peer speaks protocol v{0}, this engine speaks v{PROTOCOL_MIN}-v{PROTOCOL_MAX}")]
    UnsupportedVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("reserved flags set ({0:#06x})")]
    BadFlags(u16),
    #[error("frame payload of {0} bytes exceeds the limit of {PAYLOAD_BYTES_MAX}")]
    TooLarge(usize),
    #[error("checksum mismatch: frame corrupted in transit")]
    BadChecksum,
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    #[error("malformed {kind:?} payload: {what}")]
    Malformed { kind: Kind, what: &'static str },
}

/// A decoded frame; the payload is a zero-copy slice of the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub kind: Kind,
    pub seq: u64,
    pub payload: Bytes,
}

struct Header {
    version: u8,
    kind: Kind,
    length: usize,
    seq: u64,
    crc: u32,
}

fn parse_header(head: &[u8]) -> Result<Header, FrameError> {
    debug_assert!(head.len() >= HEADER_BYTES);
    let mut h = &head[..HEADER_BYTES];
    let magic = h.get_u32_le();
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = h.get_u8();
    if !(PROTOCOL_MIN..=PROTOCOL_MAX).contains(&version) {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let kind_byte = h.get_u8();
    let kind = Kind::from_u8(kind_byte).ok_or(FrameError::UnknownKind(kind_byte))?;
    let flags = h.get_u16_le();
    if flags != 0 {
        return Err(FrameError::BadFlags(flags));
    }
    let length = h.get_u32_le() as usize;
    if length > PAYLOAD_BYTES_MAX {
        return Err(FrameError::TooLarge(length));
    }
    let seq = h.get_u64_le();
    let crc = h.get_u32_le();
    Ok(Header {
        version,
        kind,
        length,
        seq,
        crc,
    })
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&head[..20]), payload)
}

/// Decodes one frame from the front of `buf`, consuming it. `Ok(None)` means more bytes are
/// needed. Header errors are reported as soon as the header is complete.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let header = parse_header(&buf[..HEADER_BYTES])?;
    let total = HEADER_BYTES + header.length;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if checksum(&buf[..HEADER_BYTES], &buf[HEADER_BYTES..total]) != header.crc {
        return Err(FrameError::BadChecksum);
    }
    let mut whole = buf.split_to(total).freeze();
    let payload = whole.split_off(HEADER_BYTES);
    Ok(Some(Frame {
        version: header.version,
        kind: header.kind,
        seq: header.seq,
        payload,
    }))
}

/// Decodes a buffer that must hold exactly one frame (tests, files, fuzzing).
pub fn decode_exact(bytes: &[u8]) -> Result<Frame, FrameError> {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf)? {
        Some(frame) if buf.is_empty() => Ok(frame),
        Some(_) => Err(FrameError::TrailingBytes(buf.len())),
        None => {
            let need = if bytes.len() < HEADER_BYTES {
                HEADER_BYTES
            } else {
                HEADER_BYTES + parse_header(bytes)?.length
            };
            Err(FrameError::Truncated {
                have: bytes.len(),
                need,
            })
        }
    }
}

/// Encodes a small control frame in one go.
pub fn encode(out: &mut BytesMut, kind: Kind, seq: u64, payload: &[u8]) {
    let mut frame = FrameBuf::with_capacity(payload.len());
    frame.payload_mut().put_slice(payload);
    out.extend_from_slice(&frame.seal(kind, seq));
}

/// A frame being built in place: the header is reserved up front, the payload is appended by
/// the caller, and `seal` writes the header and freezes the frame without copying it.
pub struct FrameBuf {
    buf: BytesMut,
}

impl FrameBuf {
    pub fn with_capacity(payload_bytes: usize) -> FrameBuf {
        let mut buf = BytesMut::with_capacity(HEADER_BYTES + payload_bytes);
        buf.put_bytes(0, HEADER_BYTES);
        FrameBuf { buf }
    }

    /// The payload written so far, to append to.
    pub fn payload_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub fn payload_len(&self) -> usize {
        self.buf.len() - HEADER_BYTES
    }

    pub fn payload(&self) -> &[u8] {
        &self.buf[HEADER_BYTES..]
    }

    /// Fills in the header and returns the finished frame. The payload must fit the limit.
    pub fn seal(mut self, kind: Kind, seq: u64) -> Bytes {
        self.seal_in_place(kind, seq);
        self.buf.freeze()
    }

    /// Seals the frame, splits it off, and starts the next frame in the same allocation: a
    /// stream of frames costs an allocation only when the arena's capacity runs out (and
    /// `reserve` reclaims it once the sent frames are dropped). The next frame gets a new
    /// arena of `arena_bytes` if less than an eighth of that is left.
    pub fn seal_and_continue(&mut self, kind: Kind, seq: u64, arena_bytes: usize) -> Bytes {
        self.seal_and_continue_with_room(kind, seq, arena_bytes / 8, arena_bytes)
    }

    /// [`Self::seal_and_continue`], with the room the next frame needs: `room` bytes.
    pub fn seal_and_continue_with_room(
        &mut self,
        kind: Kind,
        seq: u64,
        room: usize,
        arena_bytes: usize,
    ) -> Bytes {
        self.seal_in_place(kind, seq);
        let frame = self.buf.split().freeze();
        if self.buf.capacity() < room {
            self.buf.reserve(arena_bytes.max(room));
        }
        self.buf.put_bytes(0, HEADER_BYTES);
        frame
    }

    fn seal_in_place(&mut self, kind: Kind, seq: u64) {
        let length = self.payload_len();
        assert!(
            length <= PAYLOAD_BYTES_MAX,
            "frame payload {length} over the limit"
        );
        let mut head = &mut self.buf[..HEADER_BYTES];
        head.put_u32_le(MAGIC);
        head.put_u8(PROTOCOL_MAX);
        head.put_u8(kind as u8);
        head.put_u16_le(0);
        head.put_u32_le(length as u32);
        head.put_u64_le(seq);
        let crc = checksum(&self.buf[..HEADER_BYTES], &self.buf[HEADER_BYTES..]);
        self.buf[20..24].copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KINDS: [Kind; 10] = [
        Kind::Hello,
        Kind::HelloReply,
        Kind::Batch,
        Kind::Ack,
        Kind::SnapshotChunk,
        Kind::SnapshotEnd,
        Kind::Heartbeat,
        Kind::StepUp,
        Kind::StepUpAck,
        Kind::Goodbye,
    ];

    fn arb_frame() -> impl Strategy<Value = (Kind, u64, Vec<u8>)> {
        (
            0..KINDS.len(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(k, seq, payload)| (KINDS[k], seq, payload))
    }

    fn encoded(kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(&mut out, kind, seq, payload);
        out.to_vec()
    }

    proptest! {
        #[test]
        fn round_trip((kind, seq, payload) in arb_frame()) {
            let bytes = encoded(kind, seq, &payload);
            let frame = decode_exact(&bytes).unwrap();
            prop_assert_eq!(frame.kind, kind);
            prop_assert_eq!(frame.seq, seq);
            prop_assert_eq!(&frame.payload[..], &payload[..]);
        }

        #[test]
        fn every_truncation_is_an_error((kind, seq, payload) in arb_frame()) {
            let bytes = encoded(kind, seq, &payload);
            for cut in 0..bytes.len() {
                prop_assert!(decode_exact(&bytes[..cut]).is_err());
                // The streaming decoder waits for more and leaves the buffer alone.
                let mut buf = BytesMut::from(&bytes[..cut]);
                prop_assert_eq!(decode(&mut buf), Ok(None));
                prop_assert_eq!(buf.len(), cut);
            }
        }

        #[test]
        fn every_bit_flip_is_an_error((kind, seq, payload) in arb_frame()) {
            let bytes = encoded(kind, seq, &payload);
            for bit in 0..bytes.len() * 8 {
                let mut bad = bytes.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(decode_exact(&bad).is_err(), "flip of bit {} accepted", bit);
            }
        }

        #[test]
        fn garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&garbage[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }

        #[test]
        fn pipelined_frames_split_anywhere(
            frames in proptest::collection::vec(arb_frame(), 1..5),
            split in any::<prop::sample::Index>(),
        ) {
            let mut stream = Vec::new();
            for (k, s, p) in &frames {
                stream.extend(encoded(*k, *s, p));
            }
            let cut = split.index(stream.len() + 1);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode(&mut buf).unwrap() { got.push(f); }
            buf.extend_from_slice(&stream[cut..]);
            while let Some(f) = decode(&mut buf).unwrap() { got.push(f); }
            prop_assert_eq!(got.len(), frames.len());
            prop_assert!(buf.is_empty());
        }
    }

    #[test]
    fn oversized_length_is_refused_before_the_payload_arrives() {
        let mut bytes = encoded(Kind::Batch, 1, b"x");
        bytes[8..12].copy_from_slice(&(PAYLOAD_BYTES_MAX as u32 + 1).to_le_bytes());
        let mut buf = BytesMut::from(&bytes[..HEADER_BYTES]);
        assert!(matches!(decode(&mut buf), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn another_protocol_is_named_in_the_error() {
        let mut buf = BytesMut::from(&b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n"[..]);
        assert!(matches!(decode(&mut buf), Err(FrameError::BadMagic(_))));
    }
}
