//! The Redis string and key commands every engine serves on its database, beside the
//! application's own: each write goes through [`Ctx`] as one update record per key changed,
//! replicated and released like any other write. Replies follow Redis's, word for word where
//! clients match on them.
//!
//! Keys expire as in Redis (see [`crate::expiry`]): a command first removes the expired keys
//! it names, and the active's sweep removes the rest, both as replicated deletes.

use bytes::BytesMut;
use replicator::catch_up::SHARDS;
use resp::{reply, Command};

use crate::app::{Access, CommandError, Ctx};
use crate::expiry::{self, PREFIX, RESERVED};
use crate::state::{control, State};

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
    spec("SETEX", 4, true, (1, 1, 1)),
    spec("PSETEX", 4, true, (1, 1, 1)),
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
    spec("EXPIRE", -3, true, (1, 1, 1)),
    spec("PEXPIRE", -3, true, (1, 1, 1)),
    spec("EXPIREAT", -3, true, (1, 1, 1)),
    spec("PEXPIREAT", -3, true, (1, 1, 1)),
    spec("PERSIST", 2, true, (1, 1, 1)),
    spec("EXPIRETIME", 2, false, (1, 1, 1)),
    spec("PEXPIRETIME", 2, false, (1, 1, 1)),
    spec("GETEX", -2, true, (1, 1, 1)),
    spec("SCAN", -2, false, (0, 0, 0)),
    spec("KEYS", 2, false, (0, 0, 0)),
    spec("FLUSHDB", -1, true, (0, 0, 0)),
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

    /// The command's keys, by the positions `keys` gives.
    pub fn key_args<'c>(&self, cmd: &'c Command) -> impl Iterator<Item = &'c [u8]> {
        let (first, last, step) = self.keys;
        let n = cmd.len() as i64;
        let last = if last < 0 { n + last } else { last.min(n - 1) };
        let (first, step) = (first.max(1), step.max(1));
        let count = if self.keys.0 == 0 {
            0
        } else {
            (last - first) / step + 1
        };
        (0..count.max(0)).map(move |i| &cmd.args[(first + i * step) as usize][..])
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
const RESERVED_KEY: &str = "ERR keys that start with \\xfftandem: are tandem's own records";

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
    now_ms: u64,
) -> Result<(), CommandError> {
    let args = &cmd.args;
    let err = |m: &str| Err(CommandError::new(m));
    for key in spec.key_args(cmd) {
        if key.starts_with(RESERVED) {
            return err(RESERVED_KEY);
        }
        expire_if_due(ctx, key, now_ms)?;
    }
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
        // -2: no such key; -1: no deadline.
        "TTL" | "PTTL" | "EXPIRETIME" | "PEXPIRETIME" => {
            let n = match (ctx.db_get(&args[1]), deadline(ctx, &args[1])) {
                (None, _) => -2,
                (Some(_), None) => -1,
                (Some(_), Some(at)) => {
                    let n = match spec.name {
                        "TTL" => (at.saturating_sub(now_ms) + 500) / 1000,
                        "PTTL" => at.saturating_sub(now_ms),
                        "EXPIRETIME" => at / 1000,
                        _ => at,
                    };
                    n as i64
                }
            };
            reply::integer(out, n);
        }
        "DBSIZE" => reply::integer(out, (ctx.db_len() - ctx.expiring()) as i64),
        "SET" => return set(cmd, ctx, out, resp3, now_ms),
        "GETEX" => return getex(cmd, ctx, out, resp3, now_ms),
        "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
            return expire(spec.name, cmd, ctx, out, now_ms)
        }
        "PERSIST" => {
            let had = ctx.db_get(&args[1]).is_some() && deadline(ctx, &args[1]).is_some();
            if had {
                set_deadline(ctx, &args[1], None)?;
            }
            reply::integer(out, had as i64);
        }
        "SCAN" => return scan(cmd, ctx, out, now_ms),
        "KEYS" => {
            let mut keys = Vec::new();
            for shard in 0..SHARDS {
                collect_shard(ctx, shard, Some(&args[1]), now_ms, &mut keys);
            }
            reply::array_len(out, keys.len());
            for k in &keys {
                reply::bulk(out, k);
            }
        }
        "FLUSHDB" => {
            match args.get(1).map(|a| a.to_ascii_uppercase()).as_deref() {
                None | Some(b"SYNC") | Some(b"ASYNC") if args.len() <= 2 => {}
                _ => return err(SYNTAX),
            }
            ctx.control(control::FLUSH_DB)?;
            reply::simple(out, "OK");
        }
        "SETEX" | "PSETEX" => {
            let unit: &[u8] = if spec.name == "SETEX" { b"EX" } else { b"PX" };
            let shown = spec.name.to_ascii_lowercase();
            let at = deadline_of(unit, &args[2], now_ms, &shown)?;
            ctx.db_put(&args[1], &args[3])?;
            set_deadline(ctx, &args[1], Some(at))?;
            reply::simple(out, "OK");
        }
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
            set_deadline(ctx, &args[1], None)?;
        }
        "GETDEL" => match ctx.db_get(&args[1]) {
            Some(v) => {
                reply::bulk(out, v);
                delete(ctx, &args[1])?;
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
                    set_deadline(ctx, &kv[0], None)?;
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
                n += delete(ctx, key)? as i64;
            }
            reply::integer(out, n);
        }
        other => unreachable!("{other} is in DATA without a body"),
    }
    Ok(())
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`.
fn set(
    cmd: &Command,
    ctx: &mut Ctx<'_>,
    out: &mut BytesMut,
    resp3: bool,
    now_ms: u64,
) -> Result<(), CommandError> {
    let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
    let mut at = None;
    let mut i = 3;
    while i < cmd.len() {
        let opt = cmd.args[i].to_ascii_uppercase();
        match &opt[..] {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GET" => get = true,
            b"KEEPTTL" => keep = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if at.is_none() => {
                let value = cmd
                    .args
                    .get(i + 1)
                    .ok_or_else(|| CommandError::new(SYNTAX))?;
                at = Some(deadline_of(&opt, value, now_ms, "set")?);
                i += 1;
            }
            _ => return Err(CommandError::new(SYNTAX)),
        }
        i += 1;
    }
    if (nx && xx) || (keep && at.is_some()) {
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
    if !keep {
        set_deadline(ctx, key, at)?;
    }
    if !get {
        reply::simple(out, "OK");
    }
    Ok(())
}

/// `GETEX key [EX s | PX ms | EXAT s | PXAT ms | PERSIST]`.
fn getex(
    cmd: &Command,
    ctx: &mut Ctx<'_>,
    out: &mut BytesMut,
    resp3: bool,
    now_ms: u64,
) -> Result<(), CommandError> {
    let key = &cmd.args[1];
    let change = match cmd.len() {
        2 => None,
        3 if cmd.args[2].eq_ignore_ascii_case(b"PERSIST") => Some(None),
        4 => {
            let opt = cmd.args[2].to_ascii_uppercase();
            if !matches!(&opt[..], b"EX" | b"PX" | b"EXAT" | b"PXAT") {
                return Err(CommandError::new(SYNTAX));
            }
            Some(Some(deadline_of(&opt, &cmd.args[3], now_ms, "getex")?))
        }
        _ => return Err(CommandError::new(SYNTAX)),
    };
    match ctx.db_get(key) {
        Some(v) => reply::bulk(out, v),
        None => {
            nil(out, resp3);
            return Ok(());
        }
    }
    match change {
        Some(Some(at)) if at <= now_ms => {
            delete(ctx, key)?;
        }
        Some(at) => set_deadline(ctx, key, at)?,
        None => {}
    }
    Ok(())
}

/// `EXPIRE key seconds [NX | XX | GT | LT]` and its milliseconds and absolute forms. A
/// deadline in the past deletes the key, as in Redis.
fn expire(
    name: &str,
    cmd: &Command,
    ctx: &mut Ctx<'_>,
    out: &mut BytesMut,
    now_ms: u64,
) -> Result<(), CommandError> {
    let unit: &[u8] = match name {
        "EXPIRE" => b"EX",
        "PEXPIRE" => b"PX",
        "EXPIREAT" => b"EXAT",
        _ => b"PXAT",
    };
    let shown = name.to_ascii_lowercase();
    let at = deadline_of(unit, &cmd.args[2], now_ms, &shown).or_else(|e| {
        // Redis takes any integer here: zero or less is "now", an expired key.
        match parse_i64(&cmd.args[2]) {
            Some(n) if n <= 0 => Ok(0),
            _ => Err(e),
        }
    })?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &cmd.args[3..] {
        match &opt.to_ascii_uppercase()[..] {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                return Err(CommandError::new(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )))
            }
        }
    }
    if (nx && (xx || gt || lt)) || (gt && lt) {
        return Err(CommandError::new(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    let key = &cmd.args[1];
    if ctx.db_get(key).is_none() {
        reply::integer(out, 0);
        return Ok(());
    }
    let current = deadline(ctx, key);
    let applies = match current {
        None => !xx && !gt,
        Some(now) => !nx && (!gt || at > now) && (!lt || at < now),
    };
    if applies {
        if at <= now_ms {
            delete(ctx, key)?;
        } else {
            set_deadline(ctx, key, Some(at))?;
        }
    }
    reply::integer(out, applies as i64);
    Ok(())
}

/// The deadline (Unix ms) an `EX`/`PX`/`EXAT`/`PXAT` option with `value` names. Redis's
/// error for what is not a positive integer, or overflows.
fn deadline_of(unit: &[u8], value: &[u8], now_ms: u64, command: &str) -> Result<u64, CommandError> {
    let invalid = || CommandError::new(format!("ERR invalid expire time in '{command}' command"));
    let n = parse_i64(value).ok_or_else(|| CommandError::new(NOT_INTEGER))?;
    let n = u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(invalid)?;
    match unit {
        b"EX" => n.checked_mul(1000).and_then(|ms| ms.checked_add(now_ms)),
        b"PX" => n.checked_add(now_ms),
        b"EXAT" => n.checked_mul(1000),
        _ => Some(n),
    }
    .filter(|&at| at < i64::MAX as u64)
    .ok_or_else(invalid)
}

/// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE type]`. The cursor is the next of the
/// database's shards; each call returns whole shards until it has at least COUNT keys, so
/// that a key present for the whole scan is returned exactly once, whatever the writes.
fn scan(
    cmd: &Command,
    ctx: &mut Ctx<'_>,
    out: &mut BytesMut,
    now_ms: u64,
) -> Result<(), CommandError> {
    let cursor: usize = std::str::from_utf8(&cmd.args[1])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CommandError::new("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut strings) = (None, 10usize, true);
    let mut opts = cmd.args[2..].iter();
    while let Some(opt) = opts.next() {
        let value = opts.next().ok_or_else(|| CommandError::new(SYNTAX))?;
        match &opt.to_ascii_uppercase()[..] {
            b"MATCH" => pattern = Some(&value[..]),
            b"COUNT" => {
                count = parse_i64(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .ok_or_else(|| CommandError::new(SYNTAX))?
            }
            b"TYPE" => strings = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(CommandError::new(SYNTAX)),
        }
    }
    let mut keys = Vec::new();
    let mut shard = cursor.min(SHARDS);
    while shard < SHARDS && keys.len() < count {
        if strings {
            collect_shard(ctx, shard, pattern, now_ms, &mut keys);
        }
        shard += 1;
    }
    let next = if shard >= SHARDS { 0 } else { shard };
    reply::array_len(out, 2);
    reply::bulk(out, next.to_string().as_bytes());
    reply::array_len(out, keys.len());
    for k in &keys {
        reply::bulk(out, k);
    }
    Ok(())
}

/// Appends the live keys of `shard` that match `pattern` (tandem's own records left out).
fn collect_shard(
    ctx: &Ctx<'_>,
    shard: usize,
    pattern: Option<&[u8]>,
    now_ms: u64,
    keys: &mut Vec<Vec<u8>>,
) {
    let check_deadlines = ctx.expiring() > 0;
    for key in ctx.db_shard_keys(shard) {
        if key.starts_with(RESERVED) || pattern.is_some_and(|p| !glob_match(p, key)) {
            continue;
        }
        if check_deadlines && deadline(ctx, key).is_some_and(|at| at <= now_ms) {
            continue; // expired, not yet swept
        }
        keys.push(key.to_vec());
    }
}

/// Redis's glob: `*`, `?`, `[abc]`, `[^a-z]` and `\` to escape.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, and the text it swallowed to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((sp, st))) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[open] == b'['`: the position after
/// the class if it matches.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            hit |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (
                pattern[i].min(pattern[i + 2]),
                pattern[i].max(pattern[i + 2]),
            );
            hit |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            hit |= pattern[i] == c;
            i += 1;
        }
    }
    // An unclosed class ends the pattern, as in Redis.
    (hit != negate).then_some(i.min(pattern.len() - 1) + 1)
}

/// What `WATCH` compares: a hash of `key`'s value and deadline, 0 if there is no such key
/// (or it has expired). A write that leaves both as they were is not a change.
pub fn fingerprint(state: &State, key: &[u8], now_ms: u64) -> u64 {
    let at = if state.expiries.is_empty() {
        None
    } else {
        with_record_key(key, |rk| state.db.get(rk).and_then(expiry::decode))
    };
    match state.db.get(key) {
        None => 0,
        Some(_) if at.is_some_and(|at| at <= now_ms) => 0,
        Some(v) => xxhash_rust::xxh3::xxh3_64_with_seed(v, at.unwrap_or(u64::MAX)).max(1),
    }
}

/// Runs `f` with the key of `key`'s deadline record, built on the stack when it is short.
fn with_record_key<R>(key: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 128];
    let n = PREFIX.len() + key.len();
    if n <= buf.len() {
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        buf[PREFIX.len()..n].copy_from_slice(key);
        f(&buf[..n])
    } else {
        f(&expiry::record_key(key))
    }
}

/// `key`'s deadline, in Unix ms.
fn deadline(ctx: &Ctx<'_>, key: &[u8]) -> Option<u64> {
    if ctx.expiring() == 0 {
        return None;
    }
    with_record_key(key, |rk| ctx.db_get(rk).and_then(expiry::decode))
}

/// Sets or removes `key`'s deadline.
fn set_deadline(ctx: &mut Ctx<'_>, key: &[u8], at: Option<u64>) -> Result<(), CommandError> {
    match at {
        Some(at) => with_record_key(key, |rk| ctx.db_put(rk, &expiry::encode(at)))?,
        None if ctx.expiring() == 0 => return Ok(()),
        None => with_record_key(key, |rk| ctx.db_delete(rk)).map(|_| 0)?,
    };
    Ok(())
}

/// Deletes `key` and its deadline; false if there was no such key.
fn delete(ctx: &mut Ctx<'_>, key: &[u8]) -> Result<bool, CommandError> {
    let existed = ctx.db_delete(key)?;
    set_deadline(ctx, key, None)?;
    Ok(existed)
}

/// Deletes `key` if its deadline has passed (and a deadline left without its key).
fn expire_if_due(ctx: &mut Ctx<'_>, key: &[u8], now_ms: u64) -> Result<(), CommandError> {
    match deadline(ctx, key) {
        Some(at) if at <= now_ms || ctx.db_get(key).is_none() => {
            delete(ctx, key)?;
        }
        _ => {}
    }
    Ok(())
}

/// The active's sweep: deletes at most `max` keys whose deadline is at or before `now_ms`.
/// Returns how many it deleted.
pub fn sweep(ctx: &mut Ctx<'_>, now_ms: u64, max: usize) -> Result<usize, CommandError> {
    let mut n = 0;
    while n < max {
        let Some(key) = ctx.first_due(now_ms).map(<[u8]>::to_vec) else {
            break;
        };
        delete(ctx, &key)?;
        n += 1;
    }
    Ok(n)
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

#[cfg(test)]
mod engine_tests {
    use std::time::{Duration, Instant};

    use bytes::{Bytes, BytesMut};

    use crate::conn::Conn;
    use crate::expiry::WallClock;
    use crate::node::Engine;
    use crate::server::{dispatch, Port};

    const T0: u64 = 1_800_000_000_000;

    /// An active engine whose wall clock reads `T0` at `at`.
    fn engine(at: Instant) -> Engine {
        let mut eng = crate::node::tests::engine(true);
        eng.wall = WallClock::fixed(at, T0);
        eng
    }

    fn run_at(eng: &mut Engine, conn: &mut Conn, now: Instant, args: &[&str]) -> String {
        let cmd = resp::Command {
            args: args.iter().map(|a| Bytes::from(a.to_string())).collect(),
        };
        let mut out = BytesMut::new();
        dispatch(eng, Port::Client, conn, &cmd, &mut out, now);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_key_expires_on_access_as_replicated_deletes() {
        let t = Instant::now();
        let (mut eng, mut c) = (engine(t), Conn::new(1));
        assert_eq!(
            run_at(&mut eng, &mut c, t, &["SET", "k", "v", "EX", "10"]),
            "+OK\r\n"
        );
        assert_eq!(run_at(&mut eng, &mut c, t, &["TTL", "k"]), ":10\r\n");
        assert_eq!(run_at(&mut eng, &mut c, t, &["PTTL", "k"]), ":10000\r\n");
        let expiretime = format!(":{}\r\n", T0 / 1000 + 10);
        assert_eq!(
            run_at(&mut eng, &mut c, t, &["EXPIRETIME", "k"]),
            expiretime
        );
        assert_eq!(
            run_at(&mut eng, &mut c, t, &["DBSIZE"]),
            ":1\r\n",
            "the deadline is no key"
        );
        assert_eq!(eng.state.expiries.len(), 1);
        let seq = eng.outbox.seq_last();
        let later = t + Duration::from_secs(10);
        assert_eq!(run_at(&mut eng, &mut c, later, &["GET", "k"]), "$-1\r\n");
        assert_eq!(
            eng.outbox.seq_last(),
            seq + 2,
            "the key and its deadline, deleted"
        );
        assert_eq!(eng.state.db.len(), 0);
        assert!(eng.state.expiries.is_empty());
        assert_eq!(run_at(&mut eng, &mut c, later, &["TTL", "k"]), ":-2\r\n");
    }

    #[test]
    fn the_sweep_deletes_what_nobody_reads_a_bounded_number_per_turn() {
        let t = Instant::now();
        let (mut eng, mut c) = (engine(t), Conn::new(1));
        let due = crate::expiry::SWEEP_KEYS_MAX * 3 / 2;
        for i in 0..due {
            run_at(
                &mut eng,
                &mut c,
                t,
                &["SET", &format!("k{i}"), "v", "PX", "500"],
            );
        }
        run_at(&mut eng, &mut c, t, &["SET", "stays", "v"]);
        eng.sweep_expired(t + Duration::from_millis(499));
        assert_eq!(eng.counters.expired_keys, 0);
        eng.sweep_expired(t + Duration::from_millis(500));
        assert_eq!(
            eng.counters.expired_keys,
            crate::expiry::SWEEP_KEYS_MAX as u64
        );
        eng.sweep_expired(t + Duration::from_millis(600));
        assert_eq!(eng.counters.expired_keys, due as u64);
        assert_eq!(eng.state.db.len(), 1);
        assert!(eng.state.expiries.is_empty());
    }

    #[test]
    fn expire_persist_and_getex_follow_redis() {
        let t = Instant::now();
        let (mut eng, mut c) = (engine(t), Conn::new(1));
        let mut run = |args: &[&str]| run_at(&mut eng, &mut c, t, args);
        assert_eq!(run(&["EXPIRE", "none", "10"]), ":0\r\n");
        run(&["SET", "k", "v"]);
        assert_eq!(run(&["TTL", "k"]), ":-1\r\n");
        assert_eq!(
            run(&["EXPIRE", "k", "100", "XX"]),
            ":0\r\n",
            "XX: no deadline yet"
        );
        assert_eq!(
            run(&["EXPIRE", "k", "100", "GT"]),
            ":0\r\n",
            "GT: none is forever"
        );
        assert_eq!(run(&["EXPIRE", "k", "100", "NX"]), ":1\r\n");
        assert_eq!(run(&["EXPIRE", "k", "50", "GT"]), ":0\r\n");
        assert_eq!(run(&["EXPIRE", "k", "50", "LT"]), ":1\r\n");
        assert_eq!(run(&["TTL", "k"]), ":50\r\n");
        assert_eq!(run(&["INCR", "n"]), ":1\r\n");
        assert_eq!(run(&["APPEND", "k", "w"]), ":2\r\n");
        assert_eq!(run(&["TTL", "k"]), ":50\r\n", "APPEND keeps the deadline");
        assert_eq!(run(&["SET", "k", "x", "KEEPTTL"]), "+OK\r\n");
        assert_eq!(run(&["TTL", "k"]), ":50\r\n");
        assert_eq!(run(&["PERSIST", "k"]), ":1\r\n");
        assert_eq!(run(&["PERSIST", "k"]), ":0\r\n");
        assert_eq!(run(&["GETEX", "k", "PX", "1500"]), "$1\r\nx\r\n");
        assert_eq!(run(&["PTTL", "k"]), ":1500\r\n");
        assert_eq!(run(&["SET", "k", "y"]), "+OK\r\n");
        assert_eq!(run(&["TTL", "k"]), ":-1\r\n", "SET clears the deadline");
        let at = format!("{}", T0 + 2000);
        assert_eq!(run(&["PEXPIREAT", "k", &at]), ":1\r\n");
        assert_eq!(run(&["PTTL", "k"]), ":2000\r\n");
        assert_eq!(
            run(&["EXPIRE", "k", "-1"]),
            ":1\r\n",
            "a past deadline deletes"
        );
        assert_eq!(run(&["EXISTS", "k"]), ":0\r\n");
        assert!(run(&["SET", "k", "v", "EX", "0"]).starts_with("-ERR invalid expire time"));
        assert!(run(&["SET", "k", "v", "EX", "1", "KEEPTTL"]).starts_with("-ERR syntax"));
        assert_eq!(run(&["DBSIZE"]), ":1\r\n");
        let reserved = resp::Command {
            args: vec!["GET".into(), Bytes::from_static(b"\xfftandem:expires:n")],
        };
        let mut out = BytesMut::new();
        dispatch(&mut eng, Port::Client, &mut c, &reserved, &mut out, t);
        assert!(String::from_utf8_lossy(&out).contains("tandem's own records"));
    }

    #[test]
    fn a_scan_returns_every_key_present_throughout_exactly_once() {
        let t = Instant::now();
        let (mut eng, mut c) = (engine(t), Conn::new(1));
        for i in 0..5000 {
            run_at(&mut eng, &mut c, t, &["SET", &format!("key:{i}"), "v"]);
        }
        run_at(&mut eng, &mut c, t, &["SET", "gone", "v", "EX", "1"]);
        let later = t + Duration::from_secs(2); // "gone" expired, not swept
        let mut seen = std::collections::HashMap::<String, u32>::new();
        let mut cursor = "0".to_string();
        let mut calls = 0;
        loop {
            let reply = run_at(&mut eng, &mut c, later, &["SCAN", &cursor, "COUNT", "100"]);
            calls += 1;
            // Writes between calls: new keys, deleted ones (not counted as present throughout).
            run_at(
                &mut eng,
                &mut c,
                later,
                &["SET", &format!("new:{calls}"), "v"],
            );
            let mut lines = reply.split("\r\n");
            assert_eq!(lines.next(), Some("*2"));
            lines.next();
            cursor = lines.next().unwrap().to_string();
            for line in lines.skip(2).step_by(2).filter(|l| !l.is_empty()) {
                *seen.entry(line.to_string()).or_default() += 1;
            }
            if cursor == "0" {
                break;
            }
        }
        for i in 0..5000 {
            assert_eq!(seen.get(&format!("key:{i}")), Some(&1), "key:{i}");
        }
        assert!(!seen.contains_key("gone"));
        assert!(!seen.keys().any(|k| k.starts_with('\u{ff}')));
        assert!(calls > 10 && calls < 200, "{calls} calls");
        let matched = run_at(&mut eng, &mut c, later, &["KEYS", "key:49?9"]);
        assert!(matched.starts_with("*10\r\n"), "{matched}");
    }

    #[test]
    fn flushdb_is_one_update_and_keeps_work_units() {
        let t = Instant::now();
        let (mut eng, mut c) = (engine(t), Conn::new(1));
        for i in 0..100 {
            run_at(
                &mut eng,
                &mut c,
                t,
                &["SET", &format!("k{i}"), "v", "EX", "100"],
            );
        }
        eng.state
            .apply(replicator::Op::UnitCreate, b"call-1", b"x")
            .unwrap();
        let seq = eng.outbox.seq_last();
        assert_eq!(run_at(&mut eng, &mut c, t, &["FLUSHDB"]), "+OK\r\n");
        assert_eq!(eng.outbox.seq_last(), seq + 1);
        assert_eq!(run_at(&mut eng, &mut c, t, &["DBSIZE"]), ":0\r\n");
        assert!(eng.state.expiries.is_empty());
        assert_eq!(eng.state.units.len(), 1);
    }

    #[test]
    fn watch_aborts_exec_when_a_watched_key_changed() {
        let t = Instant::now();
        let mut eng = engine(t);
        let (mut a, mut b) = (Conn::new(1), Conn::new(2));
        run_at(&mut eng, &mut a, t, &["SET", "balance", "10"]);
        assert_eq!(
            run_at(&mut eng, &mut a, t, &["WATCH", "balance"]),
            "+OK\r\n"
        );
        run_at(&mut eng, &mut a, t, &["MULTI"]);
        run_at(&mut eng, &mut a, t, &["INCRBY", "balance", "5"]);
        run_at(&mut eng, &mut b, t, &["SET", "balance", "20"]);
        assert_eq!(run_at(&mut eng, &mut a, t, &["EXEC"]), "*-1\r\n");
        assert_eq!(
            run_at(&mut eng, &mut a, t, &["GET", "balance"]),
            "$2\r\n20\r\n"
        );
        // Unchanged (or written back as it was): the transaction runs.
        run_at(&mut eng, &mut a, t, &["WATCH", "balance", "other"]);
        run_at(&mut eng, &mut b, t, &["SET", "balance", "20"]);
        run_at(&mut eng, &mut a, t, &["MULTI"]);
        run_at(&mut eng, &mut a, t, &["INCRBY", "balance", "5"]);
        assert_eq!(run_at(&mut eng, &mut a, t, &["EXEC"]), "*1\r\n:25\r\n");
        // A watched key that expires counts as changed.
        run_at(&mut eng, &mut a, t, &["SET", "lock", "me", "PX", "100"]);
        run_at(&mut eng, &mut a, t, &["WATCH", "lock"]);
        run_at(&mut eng, &mut a, t, &["MULTI"]);
        run_at(&mut eng, &mut a, t, &["SET", "lock", "me"]);
        let later = t + Duration::from_millis(100);
        assert_eq!(run_at(&mut eng, &mut a, later, &["EXEC"]), "*-1\r\n");
        run_at(&mut eng, &mut a, t, &["MULTI"]);
        assert!(run_at(&mut eng, &mut a, t, &["WATCH", "x"]).starts_with("-ERR WATCH inside MULTI"));
        assert!(run_at(&mut eng, &mut a, t, &["EXEC"]).starts_with("-EXECABORT"));
    }

    #[test]
    fn globs_match_as_in_redis() {
        use super::glob_match as m;
        assert!(m(b"*", b""));
        assert!(m(b"h?llo", b"hello"));
        assert!(m(b"h*llo", b"heeeello"));
        assert!(m(b"h[ae]llo", b"hallo"));
        assert!(!m(b"h[^e]llo", b"hello"));
        assert!(m(b"h[a-b]llo", b"hbllo"));
        assert!(m(b"a\\*b", b"a*b"));
        assert!(!m(b"a\\*b", b"axb"));
        assert!(m(b"*:1?", b"user:12"));
        assert!(!m(b"*:1?", b"user:123"));
        assert!(m(b"a*b*c", b"aXbYbZc"));
    }
}
