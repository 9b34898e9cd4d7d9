//! Encoding RESP2 replies straight into a `BytesMut`, and the owned [`Reply`] value.
//!
//! The free functions write one reply element each with no intermediate allocation
//! (integers are formatted into a stack buffer); servers use them on their hot path.
//! [`Reply`] is the owned form a client gets back from `value::parse_reply`; it encodes
//! itself with the same functions and prints itself the way redis-cli does.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt::{self, Write as _};

/// `+<msg>\r\n`; CR and LF in `msg` become spaces so the line cannot be split.
pub fn simple(out: &mut BytesMut, msg: &str) {
    line(out, b'+', msg);
}

/// `-<msg>\r\n`; CR and LF in `msg` become spaces so the line cannot be split.
pub fn error(out: &mut BytesMut, msg: &str) {
    line(out, b'-', msg);
}

/// `:<n>\r\n`.
pub fn integer(out: &mut BytesMut, n: i64) {
    header(out, b':', n < 0, n.unsigned_abs());
}

/// `$<len>\r\n<data>\r\n`.
pub fn bulk(out: &mut BytesMut, data: &[u8]) {
    header(out, b'$', false, data.len() as u64);
    out.reserve(data.len() + 2);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// `$-1\r\n`, the nil bulk string.
pub fn null_bulk(out: &mut BytesMut) {
    out.put_slice(b"$-1\r\n");
}

/// `_\r\n`, RESP3's null.
pub fn null(out: &mut BytesMut) {
    out.put_slice(b"_\r\n");
}

/// `%<len>\r\n`, a RESP3 map; the caller then writes `len` keys, each followed by its value.
pub fn map_len(out: &mut BytesMut, len: usize) {
    header(out, b'%', false, len as u64);
}

/// `*<len>\r\n`; the caller then writes `len` elements.
pub fn array_len(out: &mut BytesMut, len: usize) {
    header(out, b'*', false, len as u64);
}

/// `*-1\r\n`, the nil array.
pub fn null_array(out: &mut BytesMut) {
    out.put_slice(b"*-1\r\n");
}

fn line(out: &mut BytesMut, kind: u8, msg: &str) {
    out.reserve(msg.len() + 3);
    out.put_u8(kind);
    out.extend(
        msg.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

/// `n` in decimal, formatted on the stack: the digits are `buf[start..]` of the returned
/// `(buf, start)`. Shared by every encoder that writes numbers on a hot path.
pub fn decimal(mut n: u64) -> ([u8; 20], usize) {
    let mut buf = [0u8; 20]; // u64::MAX has 20 digits
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return (buf, at);
        }
    }
}

/// Writes `<kind>[-]<magnitude>\r\n`, formatting the digits on the stack.
fn header(out: &mut BytesMut, kind: u8, negative: bool, magnitude: u64) {
    let (digits, at) = decimal(magnitude);
    out.reserve(digits.len() - at + 4);
    out.put_u8(kind);
    if negative {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
}

/// One RESP2 reply, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    /// The nil bulk string, `$-1`.
    Nil,
    Array(Vec<Reply>),
    /// The nil array, `*-1`.
    NilArray,
}

impl Reply {
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Simple(s) => simple(out, s),
            Reply::Error(e) => error(out, e),
            Reply::Integer(n) => integer(out, *n),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Nil => null_bulk(out),
            Reply::Array(items) => {
                array_len(out, items.len());
                items.iter().for_each(|item| item.encode(out));
            }
            Reply::NilArray => null_array(out),
        }
    }

    /// The payload of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(b) => Some(b),
            Reply::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(n) => Some(*n),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The message of an error reply, e.g. `ERR unknown command`.
    pub fn error_message(&self) -> Option<&str> {
        match self {
            Reply::Error(e) => Some(e),
            _ => None,
        }
    }

    fn fmt_indented(&self, f: &mut fmt::Formatter<'_>, indent: usize) -> fmt::Result {
        match self {
            Reply::Simple(s) => f.write_str(s),
            Reply::Error(e) => write!(f, "(error) {e}"),
            Reply::Integer(n) => write!(f, "(integer) {n}"),
            Reply::Bulk(b) => {
                f.write_char('"')?;
                for &c in b.iter() {
                    match c {
                        b'\'' => f.write_char('\''),
                        c => write!(f, "{}", c.escape_ascii()),
                    }?;
                }
                f.write_char('"')
            }
            Reply::Nil | Reply::NilArray => f.write_str("(nil)"),
            Reply::Array(items) if items.is_empty() => f.write_str("(empty array)"),
            Reply::Array(items) => {
                let width = items.len().ilog10() as usize + 1;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, "\n{:indent$}", "")?;
                    }
                    write!(f, "{:>width$}) ", i + 1)?;
                    item.fmt_indented(f, indent + width + 2)?;
                }
                Ok(())
            }
        }
    }
}

/// Prints like redis-cli: `OK`, `(integer) 1`, `"bulk"`, `(nil)`, numbered array lines.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_indented(f, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(write: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        write(&mut out);
        out.to_vec()
    }

    #[test]
    fn encoders() {
        assert_eq!(encoded(|o| simple(o, "OK")), b"+OK\r\n");
        assert_eq!(encoded(|o| error(o, "ERR a\r\nb")), b"-ERR a  b\r\n");
        assert_eq!(encoded(|o| integer(o, 0)), b":0\r\n");
        assert_eq!(encoded(|o| integer(o, -42)), b":-42\r\n");
        assert_eq!(
            encoded(|o| integer(o, i64::MIN)),
            b":-9223372036854775808\r\n"
        );
        assert_eq!(
            encoded(|o| integer(o, i64::MAX)),
            b":9223372036854775807\r\n"
        );
        assert_eq!(encoded(|o| bulk(o, b"a\r\n")), b"$3\r\na\r\n\r\n");
        assert_eq!(encoded(|o| bulk(o, b"")), b"$0\r\n\r\n");
        assert_eq!(encoded(null_bulk), b"$-1\r\n");
        assert_eq!(encoded(|o| array_len(o, 12)), b"*12\r\n");
        assert_eq!(encoded(null_array), b"*-1\r\n");
    }

    #[test]
    fn display_like_redis_cli() {
        let bulk = |s: &str| Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()));
        let mut items = vec![Reply::Array(vec![bulk("a"), Reply::Nil]), Reply::Integer(3)];
        items.extend((0..8).map(|_| Reply::Simple("OK".into())));
        let text = Reply::Array(items).to_string();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(" 1) 1) \"a\""));
        assert_eq!(lines.next(), Some("    2) (nil)"));
        assert_eq!(lines.next(), Some(" 2) (integer) 3"));
        assert_eq!(lines.last(), Some("10) OK"));
        assert_eq!(bulk("q\"\\\n\u{1}").to_string(), r#""q\"\\\n\x01""#);
        assert_eq!(Reply::Array(vec![]).to_string(), "(empty array)");
        assert_eq!(Reply::Error("ERR x".into()).to_string(), "(error) ERR x");
    }

    #[test]
    fn helpers() {
        let e = Reply::Error("ERR x".into());
        assert!(e.is_error() && e.as_bytes().is_none());
        assert_eq!(e.error_message(), Some("ERR x"));
        assert_eq!(Reply::Simple("OK".into()).as_bytes(), Some(&b"OK"[..]));
        assert_eq!(Reply::Integer(7).as_integer(), Some(7));
    }
}
