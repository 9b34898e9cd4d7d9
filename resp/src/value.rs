//! Client-side RESP2 reply parsing: turns the bytes a server sent into [`Reply`] values.
//!
//! Like request parsing it is complete-or-nothing: a first pass checks that a whole
//! reply (arrays nested at most [`REPLY_DEPTH_MAX`] deep) is buffered, without
//! allocating; then that reply is split off and frozen, and a second pass builds the
//! [`Reply`] with bulk strings as zero-copy slices. Array lengths are bounded by
//! `Limits::args_max`, bulk strings by `bulk_bytes_max`, status and error lines by
//! `inline_bytes_max`.

use crate::command::{bulk_body, crlf_line, need, number_line, Limits, Parsed, ProtocolError};
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};

/// Deepest nesting of arrays accepted in one reply.
pub const REPLY_DEPTH_MAX: usize = 32;

/// Parses one complete reply from the front of `buf` and consumes it; `Ok(None)`, with
/// `buf` untouched, if more bytes are needed.
pub fn parse_reply(buf: &mut BytesMut, limits: &Limits) -> Parsed<Reply> {
    let (_, used) = need!(element(buf, None, 0, limits, 0));
    let frame = buf.split_to(used).freeze();
    Ok(element(&frame, Some(&frame), 0, limits, 0)?.map(|(reply, _)| reply))
}

/// Parses the element at `pos`, returning it and the position after it. Without a
/// `frame` (the first pass) it only checks and measures: strings and arrays come back
/// empty. With one, `buf` is that frame's bytes and bulk strings are sliced from it.
fn element(
    buf: &[u8],
    frame: Option<&Bytes>,
    pos: usize,
    limits: &Limits,
    depth: usize,
) -> Parsed<(Reply, usize)> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let pos = pos + 1;
    let parsed = match kind {
        b'+' | b'-' => {
            let max = limits.inline_bytes_max;
            let (end, next) = need!(crlf_line(buf, pos, max, ProtocolError::InlineTooLong(max)));
            let text = match frame {
                Some(_) => String::from_utf8_lossy(buf.get(pos..end).unwrap_or_default()).into(),
                None => String::new(),
            };
            (
                if kind == b'+' {
                    Reply::Simple(text)
                } else {
                    Reply::Error(text)
                },
                next,
            )
        }
        b':' => {
            let (n, next) = need!(number_line(buf, pos, ProtocolError::InvalidInteger));
            (Reply::Integer(n), next)
        }
        b'$' if buf.get(pos..pos + 4) == Some(b"-1\r\n") => (Reply::Nil, pos + 4),
        b'$' => {
            let (start, end) = need!(bulk_body(buf, pos, limits));
            (
                frame.map_or(Reply::Nil, |f| Reply::Bulk(f.slice(start..end))),
                end + 2,
            )
        }
        b'*' => {
            let (count, mut next) =
                need!(number_line(buf, pos, ProtocolError::InvalidMultibulkLength));
            if count == -1 {
                return Ok(Some((Reply::NilArray, next)));
            }
            let count =
                usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
            if count > limits.args_max {
                return Err(ProtocolError::TooManyArgs(limits.args_max));
            }
            if depth >= REPLY_DEPTH_MAX {
                return Err(ProtocolError::TooDeep(REPLY_DEPTH_MAX));
            }
            let mut items = Vec::with_capacity(if frame.is_some() { count } else { 0 });
            for _ in 0..count {
                let (item, after) = need!(element(buf, frame, next, limits, depth + 1));
                if frame.is_some() {
                    items.push(item);
                }
                next = after;
            }
            (Reply::Array(items), next)
        }
        other => return Err(ProtocolError::UnexpectedType(other)),
    };
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::tests::soup;
    use proptest::prelude::*;

    fn parse(input: &[u8]) -> Result<Option<Reply>, ProtocolError> {
        parse_reply(&mut BytesMut::from(input), &Limits::default())
    }

    #[test]
    fn nils_errors_and_depth() {
        use ProtocolError::*;
        assert_eq!(parse(b"$-1\r\n"), Ok(Some(Reply::Nil)));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some(Reply::NilArray)));
        assert_eq!(parse(b"$-1\r"), Ok(None));
        let nested = |levels: usize| [b"*1\r\n".repeat(levels), b":7\r\n".to_vec()].concat();
        assert!(matches!(
            parse(&nested(REPLY_DEPTH_MAX)),
            Ok(Some(Reply::Array(_)))
        ));
        let deep = nested(REPLY_DEPTH_MAX + 1);
        let cases: [(&[u8], ProtocolError); 5] = [
            (b"$-2\r\n", InvalidBulkLength),
            (b"*-2\r\n", InvalidMultibulkLength),
            (b":1x\r\n", InvalidInteger),
            (b"?\r\n", UnexpectedType(b'?')),
            (&deep, TooDeep(32)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want));
        }
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            "[^\r\n]{0,16}".prop_map(Reply::Simple),
            "[^\r\n]{0,16}".prop_map(Reply::Error),
            any::<i64>().prop_map(Reply::Integer),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| Reply::Bulk(b.into())),
            Just(Reply::Nil),
            Just(Reply::NilArray),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop::collection::vec(inner, 0..6).prop_map(Reply::Array)
        })
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(r in reply()) {
            let mut wire = BytesMut::new();
            r.encode(&mut wire);
            for split in 0..wire.len() {
                prop_assert_eq!(parse(&wire[..split]), Ok(None));
            }
            let mut buf = wire.clone();
            buf.extend_from_slice(b"+next\r\n");
            prop_assert_eq!(parse_reply(&mut buf, &Limits::default()), Ok(Some(r)));
            prop_assert_eq!(&buf[..], b"+next\r\n");
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in soup("+|-|:|$|*|\r\n|\n|-1|0|1|2|OK")) {
            let limits = Limits { args_max: 8, bulk_bytes_max: 64, inline_bytes_max: 64 };
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = parse_reply(&mut buf, &limits) {}
        }
    }
}
