//! Client-side RESP2 reply parsing: turns the bytes a server sent into [`Reply`] values.
//!
//! Like request parsing it is complete-or-nothing: a first pass checks that a whole
//! reply (arrays nested at most [`REPLY_DEPTH_MAX`] deep) is buffered, without
//! allocating; then that reply is split off and frozen, and a second pass builds the
//! [`Reply`] with bulk strings as zero-copy slices. Array lengths are bounded by
//! `Limits::args_max`, bulk strings by `bulk_bytes_max`, status and error lines by
//! `inline_bytes_max`.

use crate::command::{bulk_body, crlf_line, number_line, Limits, ProtocolError};
use crate::reply::Reply;
use bytes::{Bytes, BytesMut};

/// Deepest nesting of arrays accepted in one reply.
pub const REPLY_DEPTH_MAX: usize = 32;

/// Parses one complete reply from the front of `buf` and consumes it; `Ok(None)`, with
/// `buf` untouched, if more bytes are needed.
pub fn parse_reply(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Reply>, ProtocolError> {
    let Some((_, used)) = element(buf, None, 0, limits, 0)? else {
        return Ok(None);
    };
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
) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let pos = pos + 1;
    let parsed = match kind {
        b'+' | b'-' => {
            let max = limits.inline_bytes_max;
            let too_long = ProtocolError::InlineTooLong { max };
            let Some((end, next)) = crlf_line(buf, pos, max, too_long)? else {
                return Ok(None);
            };
            let text = match frame {
                Some(_) => String::from_utf8_lossy(buf.get(pos..end).unwrap_or_default()).into(),
                None => String::new(),
            };
            let reply = if kind == b'+' {
                Reply::Simple(text)
            } else {
                Reply::Error(text)
            };
            (reply, next)
        }
        b':' => {
            let Some((n, next)) = number_line(buf, pos, ProtocolError::InvalidInteger)? else {
                return Ok(None);
            };
            (Reply::Integer(n), next)
        }
        b'$' if buf.get(pos..pos + 4) == Some(b"-1\r\n") => (Reply::Nil, pos + 4),
        b'$' => {
            let Some((start, end)) = bulk_body(buf, pos, limits)? else {
                return Ok(None);
            };
            (
                frame.map_or(Reply::Nil, |f| Reply::Bulk(f.slice(start..end))),
                end + 2,
            )
        }
        b'*' => {
            let Some((count, mut next)) =
                number_line(buf, pos, ProtocolError::InvalidMultibulkLength)?
            else {
                return Ok(None);
            };
            if count == -1 {
                return Ok(Some((Reply::NilArray, next)));
            }
            let count =
                usize::try_from(count).map_err(|_| ProtocolError::InvalidMultibulkLength)?;
            if count > limits.args_max {
                return Err(ProtocolError::TooManyArgs {
                    max: limits.args_max,
                });
            }
            if depth >= REPLY_DEPTH_MAX {
                return Err(ProtocolError::TooDeep {
                    max: REPLY_DEPTH_MAX,
                });
            }
            let mut items = Vec::with_capacity(if frame.is_some() { count } else { 0 });
            for _ in 0..count {
                let Some((item, after)) = element(buf, frame, next, limits, depth + 1)? else {
                    return Ok(None);
                };
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
        assert_eq!(parse(b"$-1\r\n"), Ok(Some(Reply::Nil)));
        assert_eq!(parse(b"*-1\r\n"), Ok(Some(Reply::NilArray)));
        assert_eq!(parse(b"$-1\r"), Ok(None));
        assert_eq!(parse(b"$-2\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(
            parse(b"*-2\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(parse(b":1x\r\n"), Err(ProtocolError::InvalidInteger));
        assert_eq!(parse(b"?\r\n"), Err(ProtocolError::UnexpectedType(b'?')));
        let nested = |levels: usize| [b"*1\r\n".repeat(levels), b":7\r\n".to_vec()].concat();
        assert!(matches!(
            parse(&nested(REPLY_DEPTH_MAX)),
            Ok(Some(Reply::Array(_)))
        ));
        assert_eq!(
            parse(&nested(REPLY_DEPTH_MAX + 1)),
            Err(ProtocolError::TooDeep { max: 32 })
        );
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

    const TOKENS: &[&str] = &[
        "+", "-", ":", "$", "*", "\r\n", "\n", "-1", "0", "1", "2", "OK",
    ];

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
        fn arbitrary_bytes_never_panic(data in soup(TOKENS)) {
            let limits = Limits { args_max: 8, bulk_bytes_max: 64, inline_bytes_max: 64 };
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = parse_reply(&mut buf, &limits) {}
        }
    }
}
