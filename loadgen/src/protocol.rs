//! What the load generator says to a target and how it reads the answers, without allocating:
//! requests are encoded straight into the connection's output buffer (integers formatted on
//! the stack), and replies are scanned in place ([`scan_reply`]) and classified
//! ([`classify`]) as a success, a redirection to the active (`-NOTACTIVE <addr>`, Redis'
//! `-READONLY`) or an error.
//!
//! One [`Dialect`] per target: tandem has the reference application's `SESSION.*` commands;
//! on Redis a session is emulated with a hash (`HSET sess:<id>`, `HINCRBY sess:<id> counter
//! 1`, `RENAME sess:<id> cdr:<id>`), so that both run the same workload.

use bytes::BytesMut;

use crate::workload::SessionStep;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Tandem,
    Redis,
}

/// A short byte string built on the stack (keys, session ids, numbers).
#[derive(Clone, Copy)]
pub struct Text {
    bytes: [u8; Text::CAPACITY],
    len: usize,
}

impl Text {
    const CAPACITY: usize = 64;

    pub fn new() -> Text {
        Text {
            bytes: [0; Text::CAPACITY],
            len: 0,
        }
    }

    pub fn push(&mut self, part: &[u8]) -> &mut Text {
        let end = self.len + part.len();
        assert!(
            end <= Text::CAPACITY,
            "a key longer than {} bytes",
            Text::CAPACITY
        );
        self.bytes[self.len..end].copy_from_slice(part);
        self.len = end;
        self
    }

    pub fn push_u64(&mut self, n: u64) -> &mut Text {
        let (digits, start) = decimal(n);
        self.push(&digits[start..])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::new()
    }
}

pub use resp::reply::decimal;

/// Parses a whole unsigned decimal number.
pub fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

/// `key:<i>`.
pub fn key_name(key: u64) -> Text {
    let mut t = Text::new();
    t.push(b"key:").push_u64(key);
    t
}

/// A session of a run. Its id, `s<run>.<connection>.<generation>`, is never reused: not
/// by another generation, another connection, nor a later run against the same pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionRef {
    /// The run's id (its start, wall-clock milliseconds).
    pub run: u64,
    pub connection: usize,
    pub generation: u64,
}

impl SessionRef {
    pub fn id(&self) -> Text {
        let mut t = Text::new();
        t.push(b"s")
            .push_u64(self.run)
            .push(b".")
            .push_u64(self.connection as u64)
            .push(b".")
            .push_u64(self.generation);
        t
    }
}

/// `cdr:<id>`: the record a session leaves when it ends (the reference application's, and
/// the emulation's on Redis).
pub fn record_key(id: &Text) -> Text {
    let mut t = Text::new();
    t.push(b"cdr:").push(id.as_bytes());
    t
}

/// `sess:<id>`: the hash of a live session on Redis.
pub fn redis_session_key(id: &Text) -> Text {
    let mut t = Text::new();
    t.push(b"sess:").push(id.as_bytes());
    t
}

/// The writer sequence number a `SET` value starts with (`<seq>:<padding>`).
pub fn value_seq(value: &[u8]) -> Option<u64> {
    let end = value.iter().position(|&b| b == b':')?;
    parse_u64(&value[..end])
}

/// Encodes one connection's requests; holds the reusable value and payload bytes.
pub struct Encoder {
    dialect: Dialect,
    value_bytes: usize,
    /// `<seq>:` then padding; rewritten in place for each `SET`.
    value: Vec<u8>,
    /// A session's payload: `value_bytes` bytes of padding.
    payload: Vec<u8>,
    /// The subscriber of this connection's sessions, `c<conn>`.
    subscriber: Text,
    connection: usize,
    run: u64,
}

const PAD: u8 = b'x';

impl Encoder {
    /// `run` is the run's id (see [`SessionRef`]).
    pub fn new(dialect: Dialect, value_bytes: usize, connection: usize, run: u64) -> Encoder {
        let mut subscriber = Text::new();
        subscriber.push(b"c").push_u64(connection as u64);
        Encoder {
            dialect,
            value_bytes,
            value: vec![PAD; value_bytes.max(21)],
            payload: vec![PAD; value_bytes],
            subscriber,
            connection,
            run,
        }
    }

    /// `SET key:<key> <seq>:<padding>`, `value_bytes` long (longer if the number is).
    pub fn set(&mut self, out: &mut BytesMut, key: u64, seq: u64) {
        let (digits, start) = decimal(seq);
        let prefix = digits.len() - start + 1;
        self.value[..prefix - 1].copy_from_slice(&digits[start..]);
        self.value[prefix - 1] = b':';
        let len = self.value_bytes.max(prefix);
        let key = key_name(key);
        resp::encode_request(out, &[b"SET", key.as_bytes(), &self.value[..len]]);
        // Restore the padding under the next, maybe shorter, number.
        self.value[..prefix].fill(PAD);
    }

    pub fn get(&self, out: &mut BytesMut, key: u64) {
        let key = key_name(key);
        resp::encode_request(out, &[b"GET", key.as_bytes()]);
    }

    pub fn session(&self, out: &mut BytesMut, generation: u64, step: SessionStep) {
        let id = SessionRef {
            run: self.run,
            connection: self.connection,
            generation,
        }
        .id();
        match (self.dialect, step) {
            (Dialect::Tandem, SessionStep::Open) => resp::encode_request(
                out,
                &[
                    b"SESSION.OPEN",
                    id.as_bytes(),
                    self.subscriber.as_bytes(),
                    &self.payload,
                ],
            ),
            (Dialect::Tandem, SessionStep::Update) => {
                resp::encode_request(out, &[b"SESSION.UPDATE", id.as_bytes()])
            }
            (Dialect::Tandem, SessionStep::End) => {
                resp::encode_request(out, &[b"SESSION.END", id.as_bytes()])
            }
            (Dialect::Redis, SessionStep::Open) => {
                let key = redis_session_key(&id);
                resp::encode_request(
                    out,
                    &[
                        b"HSET",
                        key.as_bytes(),
                        b"counter",
                        b"0",
                        b"subscriber",
                        self.subscriber.as_bytes(),
                        b"payload",
                        &self.payload,
                    ],
                )
            }
            (Dialect::Redis, SessionStep::Update) => {
                let key = redis_session_key(&id);
                resp::encode_request(out, &[b"HINCRBY", key.as_bytes(), b"counter", b"1"])
            }
            (Dialect::Redis, SessionStep::End) => {
                let key = redis_session_key(&id);
                let record = record_key(&id);
                resp::encode_request(out, &[b"RENAME", key.as_bytes(), record.as_bytes()])
            }
        }
    }

    /// `WAIT 1 0`: returns once one replica has every earlier write of this connection.
    pub fn wait(&self, out: &mut BytesMut) {
        resp::encode_request(out, &[b"WAIT", b"1", b"0"]);
    }
}

/// One reply, borrowed from the input buffer. Arrays are skipped over, not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyView<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(&'a [u8]),
    Nil,
    Array,
}

/// Longest status or error line accepted.
const LINE_BYTES_MAX: usize = 64 << 10;
/// Longest bulk string accepted.
const BULK_BYTES_MAX: usize = 512 << 20;
/// Deepest nesting of arrays accepted.
const DEPTH_MAX: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("malformed reply from the server: {0}")]
    Malformed(&'static str),
}

/// Scans one reply at the front of `buf`: `Ok(None)` if it is not complete yet, else the
/// reply and the bytes it takes.
pub fn scan_reply(buf: &[u8]) -> Result<Option<(ReplyView<'_>, usize)>, ScanError> {
    scan_at(buf, 0, 0)
}

fn scan_at(
    buf: &[u8],
    pos: usize,
    depth: usize,
) -> Result<Option<(ReplyView<'_>, usize)>, ScanError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line_end, next)) = line(buf, pos + 1)? else {
        return Ok(None);
    };
    let text = &buf[pos + 1..line_end];
    let parsed = match kind {
        b'+' => (ReplyView::Simple(text), next),
        b'-' => (ReplyView::Error(text), next),
        b':' => (ReplyView::Integer(parse_i64(text)?), next),
        b'$' if text == b"-1" => (ReplyView::Nil, next),
        b'$' => {
            let len = parse_u64(text)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= BULK_BYTES_MAX)
                .ok_or(ScanError::Malformed("bad bulk length"))?;
            let end = next + len;
            match buf.get(end..end + 2) {
                None => return Ok(None),
                Some(b"\r\n") => (ReplyView::Bulk(&buf[next..end]), end + 2),
                Some(_) => return Err(ScanError::Malformed("bulk string without CRLF")),
            }
        }
        b'*' if text == b"-1" => (ReplyView::Nil, next),
        b'*' => {
            if depth >= DEPTH_MAX {
                return Err(ScanError::Malformed("arrays nested too deep"));
            }
            let count = parse_u64(text).ok_or(ScanError::Malformed("bad array length"))?;
            let mut at = next;
            for _ in 0..count {
                match scan_at(buf, at, depth + 1)? {
                    Some((_, after)) => at = after,
                    None => return Ok(None),
                }
            }
            (ReplyView::Array, at)
        }
        _ => return Err(ScanError::Malformed("unknown reply type")),
    };
    Ok(Some(parsed))
}

/// The line starting at `pos`: (end of its text, start of what follows the CRLF).
fn line(buf: &[u8], pos: usize) -> Result<Option<(usize, usize)>, ScanError> {
    let rest = buf.get(pos..).unwrap_or_default();
    let window = &rest[..rest.len().min(LINE_BYTES_MAX + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && window[i - 1] == b'\r' => Ok(Some((pos + i - 1, pos + i + 1))),
        Some(_) => Err(ScanError::Malformed("line without CRLF")),
        None if window.len() > LINE_BYTES_MAX => Err(ScanError::Malformed("line too long")),
        None => Ok(None),
    }
}

fn parse_i64(text: &[u8]) -> Result<i64, ScanError> {
    let bad = ScanError::Malformed("bad integer");
    match text.split_first() {
        Some((b'-', digits)) => parse_u64(digits)
            .and_then(|n| 0i64.checked_sub_unsigned(n))
            .ok_or(bad),
        _ => parse_u64(text)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or(bad),
    }
}

/// What a reply means for the request it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Executed. `integer` is an integer reply's value (a session's counter).
    Done { integer: Option<i64> },
    /// Not executed: this engine is not the active. `hint` is the active's address, if the
    /// engine named one (`-NOTACTIVE 127.0.0.1:7402`).
    Redirect { hint: Option<&'a [u8]> },
    /// An error reply: counted, not retried.
    Failed { message: &'a [u8] },
}

pub fn classify(reply: ReplyView<'_>) -> Verdict<'_> {
    match reply {
        ReplyView::Error(message) => {
            if let Some(rest) = message.strip_prefix(b"NOTACTIVE") {
                Verdict::Redirect {
                    hint: address_hint(rest),
                }
            } else if message.starts_with(b"READONLY") {
                Verdict::Redirect { hint: None }
            } else {
                Verdict::Failed { message }
            }
        }
        ReplyView::Integer(n) => Verdict::Done { integer: Some(n) },
        _ => Verdict::Done { integer: None },
    }
}

/// `host:port` after `NOTACTIVE`, or `None` for a message such as "switchover in progress".
fn address_hint(rest: &[u8]) -> Option<&[u8]> {
    let text = rest.trim_ascii();
    let colon = text.iter().rposition(|&b| b == b':')?;
    let (host, port) = (&text[..colon], &text[colon + 1..]);
    let port_ok = parse_u64(port).is_some_and(|p| p > 0 && p <= u64::from(u16::MAX));
    let host_ok = !host.is_empty() && !host.iter().any(|b| b.is_ascii_whitespace());
    (port_ok && host_ok).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use resp::Limits;

    fn parsed(out: &BytesMut) -> Vec<Vec<u8>> {
        let mut buf = out.clone();
        let cmd = resp::parse_command(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        cmd.args.iter().map(|a| a.to_vec()).collect()
    }

    #[test]
    fn set_values_carry_the_sequence_and_keep_their_size() {
        let mut e = Encoder::new(Dialect::Tandem, 10, 3, 9);
        let mut out = BytesMut::new();
        e.set(&mut out, 42, 12345);
        let args = parsed(&out);
        assert_eq!(args[0], b"SET");
        assert_eq!(args[1], b"key:42");
        assert_eq!(args[2], b"12345:xxxx");
        assert_eq!(value_seq(&args[2]), Some(12345));
        out.clear();
        e.set(&mut out, 1, 7);
        assert_eq!(parsed(&out)[2], b"7:xxxxxxxx", "no digits left over");
        let mut tiny = Encoder::new(Dialect::Tandem, 0, 0, 9);
        out.clear();
        tiny.set(&mut out, 1, 99);
        assert_eq!(parsed(&out)[2], b"99:");
    }

    #[test]
    fn session_commands_per_dialect() {
        let mut out = BytesMut::new();
        let t = Encoder::new(Dialect::Tandem, 4, 2, 9);
        t.session(&mut out, 5, SessionStep::Open);
        assert_eq!(
            parsed(&out),
            [&b"SESSION.OPEN"[..], b"s9.2.5", b"c2", b"xxxx"]
        );
        out.clear();
        t.session(&mut out, 5, SessionStep::Update);
        assert_eq!(parsed(&out), [&b"SESSION.UPDATE"[..], b"s9.2.5"]);
        let r = Encoder::new(Dialect::Redis, 4, 2, 9);
        out.clear();
        r.session(&mut out, 5, SessionStep::Update);
        assert_eq!(
            parsed(&out),
            [&b"HINCRBY"[..], b"sess:s9.2.5", b"counter", b"1"]
        );
        out.clear();
        r.session(&mut out, 5, SessionStep::End);
        assert_eq!(
            parsed(&out),
            [&b"RENAME"[..], b"sess:s9.2.5", b"cdr:s9.2.5"]
        );
        out.clear();
        r.wait(&mut out);
        assert_eq!(parsed(&out), [&b"WAIT"[..], b"1", b"0"]);
    }

    #[test]
    fn replies_scan_in_place() {
        let input = b"+OK\r\n-NOTACTIVE 127.0.0.1:7402\r\n:-12\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:1\r\n*-1\r\n";
        let mut at = 0;
        let mut seen = Vec::new();
        while let Some((reply, used)) = scan_reply(&input[at..]).unwrap() {
            seen.push(format!("{reply:?}"));
            at += used;
        }
        assert_eq!(at, input.len());
        assert_eq!(seen.len(), 7);
        assert_eq!(scan_reply(b"$3\r\nab").unwrap(), None);
        assert_eq!(scan_reply(b"*2\r\n:1\r\n").unwrap(), None);
        assert_eq!(scan_reply(b"+O").unwrap(), None);
        for bad in [
            &b"?x\r\n"[..],
            b":x\r\n",
            b"$-2\r\n",
            b"$1\r\nab\r\n",
            b"+a\nb",
        ] {
            assert!(
                scan_reply(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = b"*1\r\n".repeat(40);
        assert!(scan_reply(&deep).is_err());
    }

    #[test]
    fn arbitrary_prefixes_never_panic() {
        let input = b"*3\r\n$5\r\nhello\r\n:42\r\n*1\r\n-ERR x\r\n";
        for end in 0..input.len() {
            assert_eq!(scan_reply(&input[..end]).unwrap(), None, "prefix {end}");
        }
        let mut rng = crate::workload::Rng::new(3);
        let alphabet = b"+-:$*\r\n0123-1abc";
        for _ in 0..20_000 {
            let len = rng.below(24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let _ = scan_reply(&bytes);
        }
    }

    #[test]
    fn verdicts() {
        use ReplyView::*;
        assert_eq!(
            classify(Error(b"NOTACTIVE 127.0.0.1:7402")),
            Verdict::Redirect {
                hint: Some(b"127.0.0.1:7402")
            }
        );
        assert_eq!(
            classify(Error(b"NOTACTIVE switchover in progress")),
            Verdict::Redirect { hint: None }
        );
        assert_eq!(
            classify(Error(b"NOTACTIVE no active engine known")),
            Verdict::Redirect { hint: None }
        );
        assert_eq!(
            classify(Error(
                b"READONLY You can't write against a read only replica."
            )),
            Verdict::Redirect { hint: None }
        );
        assert_eq!(
            classify(Error(b"ERR no such session")),
            Verdict::Failed {
                message: b"ERR no such session"
            }
        );
        assert_eq!(classify(Integer(3)), Verdict::Done { integer: Some(3) });
        assert_eq!(classify(Simple(b"OK")), Verdict::Done { integer: None });
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Ok(i64::MIN));
        assert!(parse_i64(b"9223372036854775808").is_err());
        let session = SessionRef {
            run: 1_795_636_700_590,
            connection: 3,
            generation: 17,
        };
        assert_eq!(session.id().as_bytes(), b"s1795636700590.3.17");
        assert_eq!(
            record_key(&session.id()).as_bytes(),
            b"cdr:s1795636700590.3.17"
        );
        assert_eq!(value_seq(b"17:xx"), Some(17));
        assert_eq!(value_seq(b"17xx"), None);
    }
}
