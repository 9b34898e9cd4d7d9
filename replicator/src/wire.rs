//! Bounds-checked reading and writing of the small fields inside frame payloads.
//!
//! Every read returns `None` when the payload is too short or a string is not UTF-8, so a
//! hostile or corrupt payload becomes a `FrameError::Malformed`, never a panic.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) struct Reader {
    bytes: Bytes,
}

impl Reader {
    pub fn new(bytes: Bytes) -> Reader {
        Reader { bytes }
    }

    pub fn u8(&mut self) -> Option<u8> {
        (self.bytes.remaining() >= 1).then(|| self.bytes.get_u8())
    }

    pub fn u16(&mut self) -> Option<u16> {
        (self.bytes.remaining() >= 2).then(|| self.bytes.get_u16_le())
    }

    pub fn u32(&mut self) -> Option<u32> {
        (self.bytes.remaining() >= 4).then(|| self.bytes.get_u32_le())
    }

    pub fn u64(&mut self) -> Option<u64> {
        (self.bytes.remaining() >= 8).then(|| self.bytes.get_u64_le())
    }

    /// `n` bytes as a zero-copy slice of the frame.
    pub fn bytes(&mut self, n: usize) -> Option<Bytes> {
        (self.bytes.remaining() >= n).then(|| self.bytes.split_to(n))
    }

    /// A string prefixed by its u16 length.
    pub fn string(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
}

pub(crate) fn put_string(out: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16_le(s.len() as u16);
    out.put_slice(s);
}
