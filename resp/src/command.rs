//! Server-side RESP2 request parsing: turns the bytes a client sent into [`Command`]s.
//!
//! A request is either a multibulk array (`*N\r\n$len\r\narg\r\n...`), as client
//! libraries send, or an inline line of space-separated words ending in `\r\n` or `\n`,
//! as typed into telnet. Parsing is complete-or-nothing and zero-copy: a complete request
//! is split off the front of the input buffer and frozen, and its arguments are slices of
//! that one allocation. Every length is bounded by [`Limits`]; a violation is a
//! [`ProtocolError`], after which the caller should send it and close the connection.
//! The line helpers here are shared with the reply parser in `value.rs`.

use bytes::{Buf, Bytes, BytesMut};

/// Bounds applied to untrusted input, for requests and (in `value.rs`) replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most arguments in one request; also most elements in one reply array.
    pub args_max: usize,
    /// Longest single bulk string, in bytes.
    pub bulk_bytes_max: usize,
    /// Longest inline request line (and status/error reply line), in bytes, without CRLF.
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            args_max: 4096,
            bulk_bytes_max: 16 << 20,
            inline_bytes_max: 64 << 10,
        }
    }
}

/// Malformed or over-limit input. The connection cannot be resynchronised after one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    #[error("Protocol error: too many arguments (max {0})")]
    TooManyArgs(usize),
    #[error("Protocol error: bulk too large (max {0} bytes)")]
    BulkTooLarge(usize),
    #[error("Protocol error: too big inline request (max {0} bytes)")]
    InlineTooLong(usize),
    #[error("Protocol error: expected CRLF")]
    MissingCrlf,
    #[error("Protocol error: invalid integer")]
    InvalidInteger,
    #[error("Protocol error: unexpected reply type '{}'", char::from(*.0).escape_default())]
    UnexpectedType(u8),
    #[error("Protocol error: reply nested deeper than {0} arrays")]
    TooDeep(usize),
}

/// A parse step's outcome: `Ok(None)` means more input is needed.
pub(crate) type Parsed<T> = Result<Option<T>, ProtocolError>;

/// Unwraps a `Parsed`, returning `Ok(None)` from the caller if input is incomplete.
macro_rules! need {
    ($step:expr) => {
        match $step? {
            Some(value) => value,
            None => return Ok(None),
        }
    };
}
pub(crate) use need;

/// One request: the command name followed by its arguments, never empty when parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Zero-copy slices of the request's frozen bytes; `args[0]` is the command name.
    pub args: Vec<Bytes>,
}

impl Command {
    /// Whether the command name equals `name` (given in upper case), ignoring ASCII case.
    pub fn name_upper_eq(&self, name: &[u8]) -> bool {
        self.args
            .first()
            .is_some_and(|a| a.eq_ignore_ascii_case(name))
    }

    /// Argument `i`, counting the command name as 0.
    pub fn arg(&self, i: usize) -> Option<&Bytes> {
        self.args.get(i)
    }

    /// Number of arguments including the command name.
    pub fn len(&self) -> usize {
        self.args.len()
    }

    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }
}

/// Longest digit run accepted after a type byte: room for `-9223372036854775808`.
const NUMBER_BYTES_MAX: usize = 20;

/// Reports each argument of a request as a byte range of the buffer.
type ArgSink<'a> = &'a mut dyn FnMut(usize, usize);
/// Walks one request: `(bytes consumed, argument count)` once it is complete.
type Walk = fn(&[u8], &Limits, ArgSink) -> Parsed<(usize, usize)>;

/// Parses one complete request from the front of `buf` and consumes it. Returns
/// `Ok(None)` if more bytes are needed; then only blank inline lines and empty arrays
/// (which are skipped, as Redis does) have been consumed.
pub fn parse_command(buf: &mut BytesMut, limits: &Limits) -> Parsed<Command> {
    while let Some(&first) = buf.first() {
        let walk: Walk = if first == b'*' {
            walk_multibulk
        } else {
            walk_inline
        };
        let (used, count) = need!(walk(buf, limits, &mut |_, _| {}));
        if count == 0 {
            buf.advance(used);
            continue;
        }
        // Second walk over the same, now known complete, bytes to slice the arguments.
        let frame = buf.split_to(used).freeze();
        let mut args = Vec::with_capacity(count);
        walk(&frame, limits, &mut |start, end| {
            args.push(frame.slice(start..end))
        })?;
        return Ok(Some(Command { args }));
    }
    Ok(None)
}

fn walk_multibulk(buf: &[u8], limits: &Limits, sink: ArgSink) -> Parsed<(usize, usize)> {
    let (count, mut pos) = need!(number_line(buf, 1, ProtocolError::InvalidMultibulkLength));
    let Ok(count) = usize::try_from(count) else {
        return Ok(Some((pos, 0))); // `*-1`: nothing to do
    };
    if count > limits.args_max {
        return Err(ProtocolError::TooManyArgs(limits.args_max));
    }
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
        }
        let (start, end) = need!(bulk_body(buf, pos + 1, limits));
        sink(start, end);
        pos = end + 2;
    }
    Ok(Some((pos, count)))
}

fn walk_inline(buf: &[u8], limits: &Limits, sink: ArgSink) -> Parsed<(usize, usize)> {
    let max = limits.inline_bytes_max;
    let window = buf.get(..max.saturating_add(2)).unwrap_or(buf);
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        let too_long = window.len() > max.saturating_add(1);
        return if too_long {
            Err(ProtocolError::InlineTooLong(max))
        } else {
            Ok(None)
        };
    };
    let end = match newline.checked_sub(1) {
        Some(cr) if buf.get(cr) == Some(&b'\r') => cr,
        _ => newline,
    };
    if end > max {
        return Err(ProtocolError::InlineTooLong(max));
    }
    let (mut count, mut word_start) = (0, 0);
    for i in 0..=end {
        if i == end || matches!(buf.get(i), Some(b' ' | b'\t')) {
            if i > word_start {
                count += 1;
                if count > limits.args_max {
                    return Err(ProtocolError::TooManyArgs(limits.args_max));
                }
                sink(word_start, i);
            }
            word_start = i + 1;
        }
    }
    Ok(Some((newline + 1, count)))
}

/// Reads `<len>\r\n<data>\r\n` starting at `pos` (just after a `$`) and returns the
/// range of the data. A length of -1 is not accepted here.
pub(crate) fn bulk_body(buf: &[u8], pos: usize, limits: &Limits) -> Parsed<(usize, usize)> {
    let (len, start) = need!(number_line(buf, pos, ProtocolError::InvalidBulkLength));
    let len = usize::try_from(len).map_err(|_| ProtocolError::InvalidBulkLength)?;
    let too_large = ProtocolError::BulkTooLarge(limits.bulk_bytes_max);
    if len > limits.bulk_bytes_max {
        return Err(too_large);
    }
    let end = start.checked_add(len).ok_or(too_large)?;
    match buf.get(end..end.saturating_add(2)) {
        None => Ok(None),
        Some(b"\r\n") => Ok(Some((start, end))),
        Some(_) => Err(ProtocolError::MissingCrlf),
    }
}

/// Finds the line starting at `pos`, which must end in CRLF with at most `max` bytes
/// before it. Returns the end of its content and the start of what follows;
/// `too_long` is the error for an overlong line.
pub(crate) fn crlf_line(
    buf: &[u8],
    pos: usize,
    max: usize,
    too_long: ProtocolError,
) -> Parsed<(usize, usize)> {
    let rest = buf.get(pos..).unwrap_or_default();
    let window = rest.get(..max.saturating_add(2)).unwrap_or(rest);
    match window.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && window.get(i - 1) == Some(&b'\r') => {
            Ok(Some((pos + i - 1, pos + i + 1)))
        }
        Some(_) => Err(ProtocolError::MissingCrlf),
        None if window.len() > max.saturating_add(1) => Err(too_long),
        None => Ok(None),
    }
}

/// Reads a decimal `i64` line starting at `pos`; `invalid` is the error if it is not one.
pub(crate) fn number_line(buf: &[u8], pos: usize, invalid: ProtocolError) -> Parsed<(i64, usize)> {
    let (end, next) = need!(crlf_line(buf, pos, NUMBER_BYTES_MAX, invalid.clone()));
    let digits = buf.get(pos..end).unwrap_or_default();
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    let value = digits.iter().try_fold(0i64, |n, &d| {
        let d = d.is_ascii_digit().then(|| i64::from(d - b'0'))?;
        let n = n.checked_mul(10)?;
        if negative {
            n.checked_sub(d)
        } else {
            n.checked_add(d)
        }
    });
    match value {
        Some(n) if !digits.is_empty() => Ok(Some((n, next))),
        _ => Err(invalid),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::client::encode_request;
    use proptest::prelude::*;

    fn parse_all(buf: &mut BytesMut, limits: &Limits) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(cmd) = parse_command(buf, limits)? {
            out.push(cmd.args);
        }
        Ok(out)
    }

    fn parse_str(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        parse_all(&mut BytesMut::from(input), &Limits::default())
    }

    #[test]
    fn multibulk_inline_and_helpers() {
        let got = parse_str(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n\r\n\n*0\r\n  PING \t\r\nset a  b\n");
        let want = vec![vec!["GET", ""], vec!["PING"], vec!["set", "a", "b"]];
        assert_eq!(got.unwrap(), want);
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nget\r\n$1\r\nk\r\n"[..]);
        let cmd = parse_command(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert!(cmd.name_upper_eq(b"GET") && !cmd.name_upper_eq(b"SET"));
        assert_eq!(
            (cmd.len(), cmd.arg(1).unwrap().as_ref(), cmd.arg(2)),
            (2, &b"k"[..], None)
        );
        let gap = cmd.args[1].as_ptr() as usize - cmd.args[0].as_ptr() as usize;
        assert_eq!(gap, b"get\r\n$1\r\n".len(), "arguments share one buffer");
    }

    #[test]
    fn incomplete_leaves_buffer_untouched() {
        for input in [
            &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r"[..],
            b"*2",
            b"*1\r\n$3\r\nab",
            b"PING",
        ] {
            let mut buf = BytesMut::from(input);
            assert_eq!(parse_command(&mut buf, &Limits::default()), Ok(None));
            assert_eq!(&buf[..], input);
        }
    }

    #[test]
    fn errors() {
        use ProtocolError::*;
        let big_inline = vec![b'a'; (64 << 10) + 2];
        let cases: [(&[u8], ProtocolError); 9] = [
            (b"*x\r\n", InvalidMultibulkLength),
            (b"*123456789012345678901\r\n", InvalidMultibulkLength),
            (b"*1\r\n$-1\r\n", InvalidBulkLength),
            (b"*1\r\n+OK\r\n", ExpectedBulk(b'+')),
            (b"*4097\r\n", TooManyArgs(4096)),
            (b"*1\r\n$16777217\r\n", BulkTooLarge(16 << 20)),
            (b"*1\r\n$1\r\nab\r\n", MissingCrlf),
            (b"*1\n", MissingCrlf),
            (&big_inline, InlineTooLong(64 << 10)),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_str(input),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            InvalidBulkLength.to_string(),
            "Protocol error: invalid bulk length"
        );
        assert_eq!(
            ExpectedBulk(b'\n').to_string(),
            "Protocol error: expected '$', got '\\n'"
        );
    }

    /// Arguments and their wire form, multibulk or inline.
    fn command() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
        let args = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 1..5);
        let multibulk = args.prop_map(|args| {
            let mut wire = BytesMut::new();
            encode_request(
                &mut wire,
                &args.iter().map(Vec::as_slice).collect::<Vec<_>>(),
            );
            (args, wire.to_vec())
        });
        let words = prop::collection::vec("[a-zA-Z0-9_]{1,8}", 1..5);
        let end = prop_oneof![Just("\r\n"), Just("\n")];
        let inline = (words, "[ \t]{0,2}", end).prop_map(|(words, pad, end)| {
            let wire = format!("{pad}{}{pad}{end}", words.join(" ")).into_bytes();
            (words.into_iter().map(String::into_bytes).collect(), wire)
        });
        prop_oneof![multibulk, inline]
    }

    /// Bytes biased towards protocol tokens (given `|`-separated), to reach deep into parsers.
    pub(crate) fn soup(tokens: &'static str) -> impl Strategy<Value = Vec<u8>> {
        let token = prop_oneof![
            prop::sample::select(tokens.split('|').collect::<Vec<_>>())
                .prop_map(|t| t.as_bytes().to_vec()),
            any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(token, 0..64).prop_map(|ts| ts.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            data in soup("*|$|\r\n|\n|\r|-1|0|1|2|3|99999999999999999999| |a|PING"),
            split in 0usize..64,
        ) {
            let limits = Limits { args_max: 8, bulk_bytes_max: 64, inline_bytes_max: 64 };
            let split = split.min(data.len());
            let mut buf = BytesMut::from(&data[..split]);
            if parse_all(&mut buf, &limits).is_ok() {
                buf.extend_from_slice(&data[split..]);
                let _ = parse_all(&mut buf, &limits);
            }
        }

        #[test]
        fn every_split_parses_like_the_whole(cmds in prop::collection::vec(command(), 1..4)) {
            let wire: Vec<u8> = cmds.iter().flat_map(|(_, w)| w.iter().copied()).collect();
            let want: Vec<Vec<Vec<u8>>> = cmds.into_iter().map(|(args, _)| args).collect();
            let limits = Limits::default();
            for split in 0..=wire.len() {
                let mut buf = BytesMut::from(&wire[..split]);
                let mut got = parse_all(&mut buf, &limits).unwrap();
                buf.extend_from_slice(&wire[split..]);
                got.extend(parse_all(&mut buf, &limits).unwrap());
                prop_assert!(buf.is_empty());
                prop_assert_eq!(&got, &want);
            }
        }
    }
}
