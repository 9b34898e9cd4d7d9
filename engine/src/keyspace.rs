//! The Redis string and key commands every engine serves on its database, beside the
//! application's own: each write goes through [`Ctx`] as one update record per key changed,
//! replicated and released like any other write. Replies follow Redis's, word for word where
//! clients match on them.
//!
//! Not here yet: expiry (`SET ... EX`, `EXPIRE`; refused with a clear error, and `TTL` says no
//! key has one), `SCAN`, `FLUSHDB`.

use bytes::BytesMut;
use resp::{reply, Command};

use crate::app::{Access, CommandError, Ctx};

/// A command's shape, as `COMMAND` reports it and as it is checked before it runs or is
/// queued in a transaction.
pub struct Spec {
    pub name: &'static str,
    /// Redis's arity: exactly `n` arguments with the name, or at least `-n`.
    pub arity: i64,
    pub write: bool,
    /// The first and last key's positions and the step between keys (0 0 0: no key).
    pub keys: (i64, i64, i64),
}

const fn spec(name: &'static str, arity: i64, write: bool, keys: (i64, i64, i64)) -> Spec {
    Spec {
        name,
        arity,
        write,
        keys,
    }
}

/// The data commands of this module.
pub const DATA: &[Spec] = &[
    spec("GET", 2, false, (1, 1, 1)),
    spec("MGET", -2, false, (1, -1, 1)),
    spec("EXISTS", -2, false, (1, -1, 1)),
    spec("STRLEN", 2, false, (1, 1, 1)),
    spec("TYPE", 2, false, (1, 1, 1)),
    spec("TTL", 2, false, (1, 1, 1)),
    spec("PTTL", 2, false, (1, 1, 1)),
    spec("DBSIZE", 1, false, (0, 0, 0)),
    spec("SET", -3, true, (1, 1, 1)),
    spec("SETNX", 3, true, (1, 1, 1)),
    spec("GETSET", 3, true, (1, 1, 1)),
    spec("GETDEL", 2, true, (1, 1, 1)),
    spec("MSET", -3, true, (1, -1, 2)),
    spec("MSETNX", -3, true, (1, -1, 2)),
    spec("INCR", 2, true, (1, 1, 1)),
    spec("DECR", 2, true, (1, 1, 1)),
    spec("INCRBY", 3, true, (1, 1, 1)),
    spec("DECRBY", 3, true, (1, 1, 1)),
    spec("INCRBYFLOAT", 3, true, (1, 1, 1)),
    spec("APPEND", 3, true, (1, 1, 1)),
    spec("DEL", -2, true, (1, -1, 1)),
    spec("UNLINK", -2, true, (1, -1, 1)),
];

pub fn find(specs: &'static [Spec], upper: &[u8]) -> Option<&'static Spec> {
    specs.iter().find(|s| s.name.as_bytes() == upper)
}

impl Spec {
    /// Does `cmd` have an argument count this command takes?
    pub fn arity_ok(&self, cmd: &Command) -> bool {
        let n = cmd.len() as i64;
        match self.arity {
            a if a >= 0 => n == a,
            a => n >= -a,
        }
    }

    pub fn access(&self) -> Access {
        if self.write {
            Access::Write
        } else {
            Access::Read
        }
    }
}

/// Redis's error for a wrong argument count.
pub fn wrong_arity(cmd: &Command) -> String {
    let shown = String::from_utf8_lossy(&cmd.args[0]).to_lowercase();
    format!("ERR wrong number of arguments for '{shown}' command")
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const OVERFLOW: &str = "ERR increment or decrement would overflow";
const NOT_FLOAT: &str = "ERR value is not a valid float";
const SYNTAX: &str = "ERR syntax error";
const NO_EXPIRY: &str =
    "ERR tandem does not expire keys yet: SET without EX/PX/EXAT/PXAT, and no EXPIRE";

/// The nil reply in the connection's protocol: `_` in RESP3, `$-1` in RESP2.
pub fn nil(out: &mut BytesMut, resp3: bool) {
    if resp3 {
        reply::null(out);
    } else {
        reply::null_bulk(out);
    }
}

fn parse_i64(v: &[u8]) -> Option<i64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_f64(v: &[u8]) -> Option<f64> {
    let v: f64 = std::str::from_utf8(v).ok()?.trim().parse().ok()?;
    v.is_finite().then_some(v)
}

/// Runs data command `spec` (its arity already checked) on `ctx`, writing its reply.
pub fn execute(
    spec: &Spec,
    cmd: &Command,
    ctx: &mut Ctx<'_>,
    out: &mut BytesMut,
    resp3: bool,
) -> Result<(), CommandError> {
    let args = &cmd.args;
    let err = |m: &str| Err(CommandError::new(m));
    match spec.name {
        "GET" => match ctx.db_get(&args[1]) {
            Some(v) => reply::bulk(out, v),
            None => nil(out, resp3),
        },
        "MGET" => {
            reply::array_len(out, args.len() - 1);
            for key in &args[1..] {
                match ctx.db_get(key) {
                    Some(v) => reply::bulk(out, v),
                    None => nil(out, resp3),
                }
            }
        }
        "EXISTS" => {
            let n = args[1..].iter().filter(|k| ctx.db_get(k).is_some()).count();
            reply::integer(out, n as i64);
        }
        "STRLEN" => reply::integer(out, ctx.db_get(&args[1]).map_or(0, |v| v.len() as i64)),
        "TYPE" => reply::simple(
            out,
            if ctx.db_get(&args[1]).is_some() {
                "string"
            } else {
                "none"
            },
        ),
        // No key has an expiry: -1 for a key, -2 for none.
        "TTL" | "PTTL" => reply::integer(
            out,
            if ctx.db_get(&args[1]).is_some() {
                -1
            } else {
                -2
            },
        ),
        "DBSIZE" => reply::integer(out, ctx.db_len() as i64),
        "SET" => return set(cmd, ctx, out, resp3),
        "SETNX" => {
            let fresh = ctx.db_get(&args[1]).is_none();
            if fresh {
                ctx.db_put(&args[1], &args[2])?;
            }
            reply::integer(out, fresh as i64);
        }
        "GETSET" => {
            match ctx.db_get(&args[1]) {
                Some(v) => reply::bulk(out, v),
                None => nil(out, resp3),
            }
            ctx.db_put(&args[1], &args[2])?;
        }
        "GETDEL" => match ctx.db_get(&args[1]) {
            Some(v) => {
                reply::bulk(out, v);
                ctx.db_delete(&args[1])?;
            }
            None => nil(out, resp3),
        },
        "MSET" | "MSETNX" => {
            if args.len().is_multiple_of(2) {
                return Err(CommandError::new(wrong_arity(cmd)));
            }
            let pairs = args[1..].chunks_exact(2);
            let all_fresh =
                spec.name == "MSET" || pairs.clone().all(|kv| ctx.db_get(&kv[0]).is_none());
            if all_fresh {
                for kv in pairs {
                    ctx.db_put(&kv[0], &kv[1])?;
                }
            }
            match spec.name {
                "MSET" => reply::simple(out, "OK"),
                _ => reply::integer(out, all_fresh as i64),
            }
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match spec.name {
                "INCR" => 1,
                "DECR" => -1,
                _ => match parse_i64(&args[2]) {
                    Some(n) if spec.name == "INCRBY" => n,
                    Some(n) => n.checked_neg().ok_or_else(|| CommandError::new(OVERFLOW))?,
                    None => return err(NOT_INTEGER),
                },
            };
            let now = match ctx.db_get(&args[1]) {
                None => 0,
                Some(v) => parse_i64(v).ok_or_else(|| CommandError::new(NOT_INTEGER))?,
            };
            let n = now
                .checked_add(by)
                .ok_or_else(|| CommandError::new(OVERFLOW))?;
            let (digits, start) = reply::decimal(n.unsigned_abs());
            let mut text = [0u8; 21];
            let len = if n < 0 {
                text[0] = b'-';
                text[1..][..20 - start].copy_from_slice(&digits[start..]);
                21 - start
            } else {
                text[..20 - start].copy_from_slice(&digits[start..]);
                20 - start
            };
            ctx.db_put(&args[1], &text[..len])?;
            reply::integer(out, n);
        }
        "INCRBYFLOAT" => {
            let Some(by) = parse_f64(&args[2]) else {
                return err(NOT_FLOAT);
            };
            let now = match ctx.db_get(&args[1]) {
                None => 0.0,
                Some(v) => parse_f64(v).ok_or_else(|| CommandError::new(NOT_FLOAT))?,
            };
            let n = now + by;
            if !n.is_finite() {
                return err("ERR increment would produce NaN or Infinity");
            }
            let text = format_float(n);
            ctx.db_put(&args[1], text.as_bytes())?;
            reply::bulk(out, text.as_bytes());
        }
        "APPEND" => {
            let mut v = ctx.db_get(&args[1]).map(<[u8]>::to_vec).unwrap_or_default();
            v.extend_from_slice(&args[2]);
            ctx.db_put(&args[1], &v)?;
            reply::integer(out, v.len() as i64);
        }
        "DEL" | "UNLINK" => {
            let mut n = 0;
            for key in &args[1..] {
                n += ctx.db_delete(key)? as i64;
            }
            reply::integer(out, n);
        }
        other => unreachable!("{other} is in DATA without a body"),
    }
    Ok(())
}

/// `SET key value [NX | XX] [GET] [KEEPTTL]`; the expiry options are refused.
fn set(
    cmd: &Command,
    ctx: &mut Ctx<'_>,
    out: &mut BytesMut,
    resp3: bool,
) -> Result<(), CommandError> {
    let (mut nx, mut xx, mut get) = (false, false, false);
    let mut i = 3;
    while i < cmd.len() {
        let opt = cmd.args[i].to_ascii_uppercase();
        match &opt[..] {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" => {} // no key has an expiry to keep
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => return Err(CommandError::new(NO_EXPIRY)),
            _ => return Err(CommandError::new(SYNTAX)),
        }
        i += 1;
    }
    if nx && xx {
        return Err(CommandError::new(SYNTAX));
    }
    let key = &cmd.args[1];
    let exists = ctx.db_get(key).is_some();
    if get {
        match ctx.db_get(key) {
            Some(v) => reply::bulk(out, v),
            None => nil(out, resp3),
        }
    }
    if (nx && exists) || (xx && !exists) {
        if !get {
            nil(out, resp3);
        }
        return Ok(());
    }
    ctx.db_put(key, &cmd.args[2])?;
    if !get {
        reply::simple(out, "OK");
    }
    Ok(())
}

/// A float as Redis prints it after `INCRBYFLOAT`: no exponent, no trailing zeros.
fn format_float(n: f64) -> String {
    let mut s = format!("{n:.17}");
    if s.contains('.') {
        let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(trimmed);
    }
    // The shortest form that reads back the same, when it is shorter.
    let short = format!("{n}");
    if !short.contains('e') && short.len() < s.len() {
        return short;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_redis_prints_them() {
        assert_eq!(format_float(10.5), "10.5");
        assert_eq!(format_float(3.0), "3");
        assert_eq!(format_float(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(format_float(-2.25), "-2.25");
    }
}
