//! The reference application: a session service modelled on call processing, in the two
//! versions a rolling upgrade goes through, so that the engine's upgrade path is exercised by
//! an application whose replicated state format really changes between versions.
//!
//! Each session is a work unit keyed by its id; its description body is the replicated state
//! and carries its own format number. Version 1.0 knows format 1. Version 2.0 adds a priority
//! and a `transferred` state, which need format 2, but keeps writing format 1 until the pair's
//! features are enabled: until then a 1.0 standby can follow a 2.0 active, and the upgrade can
//! still be rolled back. A 1.0 standby that nevertheless receives format 2 (or a `transfer:`
//! database record) refuses it in `check_update`, so it stops instead of holding state it
//! cannot read. The optional [`Fault`] turns a build into a faulty one, for exercising the
//! detection and rollback of a bad upgrade; it is deterministic so that runs are repeatable.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use replicator::record::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use replicator::{Op, RecordRef};
use resp::{reply, Command};

use crate::app::{Access, Application, CommandError, Ctx};
use crate::state::control;

/// The version of the application a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AppVersion {
    V1_0,
    V2_0,
}

impl AppVersion {
    pub fn parse(text: &str) -> Result<AppVersion, String> {
        match text {
            "1.0" => Ok(AppVersion::V1_0),
            "2.0" => Ok(AppVersion::V2_0),
            other => Err(format!(
                "unknown application version '{other}': expected 1.0 or 2.0"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AppVersion::V1_0 => "1.0",
            AppVersion::V2_0 => "2.0",
        }
    }

    /// The highest description format this version reads and writes.
    pub fn feature_level(self) -> u32 {
        match self {
            AppVersion::V1_0 => u32::from(FORMAT_1),
            AppVersion::V2_0 => u32::from(FORMAT_2),
        }
    }

    fn fault_message(self) -> &'static str {
        match self {
            AppVersion::V1_0 => "ERR injected fault (tandem 1.0 faulty build)",
            AppVersion::V2_0 => "ERR injected fault (tandem 2.0 faulty build)",
        }
    }
}

impl fmt::Display for AppVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A defect built into the application on purpose, hitting a deterministic share of requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `share_percent` of the commands have their reply delayed by `delay_ms`; the engine asks
    /// [`Sessions::fault_delay`] so that the delay never blocks its event loop.
    Slow { share_percent: u8, delay_ms: u64 },
    /// `share_percent` of the write commands fail without changing anything.
    Errors { share_percent: u8 },
}

impl Fault {
    pub const SLOW_SHARE_PERCENT: u8 = 20;
    pub const SLOW_DELAY_MS: u64 = 5;
    pub const ERRORS_SHARE_PERCENT: u8 = 5;

    /// "slow" or "errors", with the default shares and delay.
    pub fn parse(text: &str) -> Result<Fault, String> {
        match text {
            "slow" => Ok(Fault::Slow {
                share_percent: Fault::SLOW_SHARE_PERCENT,
                delay_ms: Fault::SLOW_DELAY_MS,
            }),
            "errors" => Ok(Fault::Errors {
                share_percent: Fault::ERRORS_SHARE_PERCENT,
            }),
            other => Err(format!("unknown fault '{other}': expected slow or errors")),
        }
    }
}

/// The session service. Besides its configuration it keeps scratch buffers, reused by every
/// command, so that a write costs no allocation beyond the state's own copy.
#[derive(Clone, Debug)]
pub struct Sessions {
    version: AppVersion,
    fault: Option<Fault>,
    /// The description being written.
    body: Vec<u8>,
    /// The key and value of the database record being written.
    db_key: Vec<u8>,
    db_value: Vec<u8>,
    /// xorshift64 state deciding which requests a fault hits; never zero.
    fault_rng: u64,
}

/// The scratch description buffer gives back memory above this size.
const SCRATCH_BYTES_KEPT: usize = 64 << 10;

/// Seed of the fault generator: any non-zero constant, so that runs repeat.
const FAULT_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

impl Sessions {
    pub fn new(version: AppVersion, fault: Option<Fault>) -> Sessions {
        Sessions {
            version,
            fault,
            body: Vec::with_capacity(256),
            db_key: Vec::with_capacity(64),
            db_value: Vec::with_capacity(64),
            fault_rng: FAULT_SEED,
        }
    }

    pub fn app_version(&self) -> AppVersion {
        self.version
    }

    pub fn fault(&self) -> Option<Fault> {
        self.fault
    }

    /// How long the engine should hold back the reply of the command it is executing; asked
    /// once per command. Only a [`Fault::Slow`] build ever says anything but None.
    pub fn fault_delay(&mut self) -> Option<Duration> {
        match self.fault() {
            Some(Fault::Slow {
                share_percent,
                delay_ms,
            }) if self.roll(share_percent) => Some(Duration::from_millis(delay_ms)),
            _ => None,
        }
    }

    /// True for `share_percent` of the calls, in a fixed pseudo-random pattern.
    fn roll(&mut self, share_percent: u8) -> bool {
        let mut x = self.fault_rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.fault_rng = x;
        x % 100 < u64::from(share_percent)
    }

    /// Called by every write command before it changes anything.
    fn injected_fault(&mut self) -> Result<(), CommandError> {
        match self.fault() {
            Some(Fault::Errors { share_percent }) if self.roll(share_percent) => {
                Err(CommandError::new(self.version.fault_message()))
            }
            _ => Ok(()),
        }
    }

    /// Decodes a description the way this version reads it.
    fn read<'a>(&self, body: &'a [u8]) -> Result<(u8, Session<'a>), String> {
        if self.version == AppVersion::V1_0 && body.first() == Some(&FORMAT_2) {
            return Err("session description format 2 needs version 2.0".into());
        }
        decode(body).map_err(|e| e.to_string())
    }

    /// The format of a description written now. 2.0 writes format 2 only once the features
    /// are enabled (a 1.0 standby may still be following), or to keep a session that already
    /// is in format 2 readable without losing its priority or state.
    fn format_for(&self, ctx: &Ctx<'_>, current_format: u8) -> u8 {
        match self.version {
            AppVersion::V1_0 => FORMAT_1,
            AppVersion::V2_0 if ctx.features_enabled() || current_format == FORMAT_2 => FORMAT_2,
            AppVersion::V2_0 => FORMAT_1,
        }
    }

    /// The session's description, a cheap clone of the registry's, so that the context can be
    /// written to while the session is still being read.
    fn load(&self, ctx: &Ctx<'_>, id: &[u8]) -> Result<Bytes, CommandError> {
        ctx.unit_get(id)
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| CommandError(format!("ERR no such session {}", lossy(id))))
    }

    fn decode_loaded<'a>(
        &self,
        id: &[u8],
        body: &'a [u8],
    ) -> Result<(u8, Session<'a>), CommandError> {
        self.read(body)
            .map_err(|e| CommandError(format!("ERR session {}: {e}", lossy(id))))
    }

    /// Encodes `session` into the scratch body and checks its size, before any write: a
    /// command that writes twice must not fail between the two.
    fn encode_body(&mut self, format: u8, session: &Session<'_>) -> Result<(), CommandError> {
        let body_bytes = encoded_len(format, session);
        if body_bytes > VALUE_BYTES_MAX {
            return Err(CommandError::new(
                "ERR session description longer than 8 MiB",
            ));
        }
        if self.body.capacity() > SCRATCH_BYTES_KEPT && body_bytes <= SCRATCH_BYTES_KEPT {
            // One large session must not pin its size in memory for good.
            self.body = Vec::with_capacity(SCRATCH_BYTES_KEPT);
        }
        encode(&mut self.body, format, session);
        Ok(())
    }

    fn open(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &[u8],
        subscriber: &[u8],
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        if id.len() > ID_BYTES_MAX {
            return Err(CommandError(format!(
                "ERR session id longer than {ID_BYTES_MAX} bytes"
            )));
        }
        if subscriber.len() > SUBSCRIBER_BYTES_MAX {
            return Err(CommandError(format!(
                "ERR subscriber longer than {SUBSCRIBER_BYTES_MAX} bytes"
            )));
        }
        if ctx.unit_get(id).is_some() {
            return Err(CommandError(format!("ERR session {} exists", lossy(id))));
        }
        let session = Session {
            state: SessionState::Open,
            counter: 0,
            priority: 0,
            subscriber,
            payload,
        };
        self.encode_body(self.format_for(ctx, FORMAT_1), &session)?;
        ctx.unit_create(id, &self.body)?;
        reply::simple(out, "OK");
        Ok(())
    }

    fn update(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &[u8],
        payload: Option<&[u8]>,
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        let body = self.load(ctx, id)?;
        let (format, current) = self.decode_loaded(id, &body)?;
        if current.state == SessionState::Transferred {
            return Err(not_in_state(id, current.state));
        }
        let counter = current.counter.saturating_add(1);
        let next = Session {
            state: SessionState::Active,
            counter,
            payload: payload.unwrap_or(current.payload),
            ..current
        };
        self.encode_body(self.format_for(ctx, format), &next)?;
        ctx.unit_update(id, &self.body)?;
        reply::integer(out, i64::try_from(counter).unwrap_or(i64::MAX));
        Ok(())
    }

    fn hold(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        let body = self.load(ctx, id)?;
        let (format, current) = self.decode_loaded(id, &body)?;
        if current.state != SessionState::Active {
            return Err(not_in_state(id, current.state));
        }
        let next = Session {
            state: SessionState::Held,
            ..current
        };
        self.encode_body(self.format_for(ctx, format), &next)?;
        ctx.unit_update(id, &self.body)?;
        reply::simple(out, "OK");
        Ok(())
    }

    /// Ends the session from any state, leaving its call detail record in the database.
    fn end(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        let body = self.load(ctx, id)?;
        let (_, current) = self.decode_loaded(id, &body)?;
        self.db_key.clear();
        self.db_key.extend_from_slice(CDR_PREFIX);
        self.db_key.extend_from_slice(id);
        self.db_value.clear();
        self.db_value.extend_from_slice(current.subscriber);
        self.db_value.push(b' ');
        push_decimal(&mut self.db_value, current.counter);
        // The record first: it is the write that can be refused (database full), and ending a
        // registered unit cannot be.
        ctx.db_put(&self.db_key, &self.db_value)?;
        ctx.unit_end(id)?;
        reply::simple(out, "OK");
        Ok(())
    }

    fn get(&self, ctx: &Ctx<'_>, id: &[u8], out: &mut BytesMut) -> Result<(), CommandError> {
        let Some(body) = ctx.unit_get(id) else {
            reply::null_bulk(out);
            return Ok(());
        };
        let (_, session) = self.decode_loaded(id, body)?;
        let with_priority = self.version == AppVersion::V2_0 && ctx.features_enabled();
        reply::array_len(out, if with_priority { 5 } else { 4 });
        reply::bulk(out, session.state.name().as_bytes());
        reply::integer(out, i64::try_from(session.counter).unwrap_or(i64::MAX));
        reply::bulk(out, session.subscriber);
        reply::bulk(out, session.payload);
        if with_priority {
            reply::integer(out, i64::from(session.priority));
        }
        Ok(())
    }

    /// Hands the session over to `target`: it stays registered, in the new state
    /// `transferred`, until it ends; the transfer itself is recorded in the database.
    fn transfer(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &[u8],
        target: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        let body = self.load(ctx, id)?;
        let (format, current) = self.decode_loaded(id, &body)?;
        if current.state == SessionState::Transferred {
            return Err(not_in_state(id, current.state));
        }
        let next = Session {
            state: SessionState::Transferred,
            ..current
        };
        self.encode_body(self.format_for(ctx, format), &next)?;
        self.db_key.clear();
        self.db_key.extend_from_slice(TRANSFER_PREFIX);
        self.db_key.extend_from_slice(id);
        // The record first, as in `end`: the update of a registered unit whose size was
        // checked cannot be refused.
        ctx.db_put(&self.db_key, target)?;
        ctx.unit_update(id, &self.body)?;
        reply::simple(out, "OK");
        Ok(())
    }

    fn set_priority(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: &[u8],
        priority: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        let priority = parse_priority(priority).ok_or_else(|| {
            CommandError(format!(
                "ERR priority must be an integer from 0 to {PRIORITY_MAX}"
            ))
        })?;
        let body = self.load(ctx, id)?;
        let (format, current) = self.decode_loaded(id, &body)?;
        let next = Session {
            priority,
            ..current
        };
        self.encode_body(self.format_for(ctx, format), &next)?;
        ctx.unit_update(id, &self.body)?;
        reply::simple(out, "OK");
        Ok(())
    }
}

impl Application for Sessions {
    fn write_fault(&mut self, access: Access) -> Result<(), CommandError> {
        match access {
            Access::Write => self.injected_fault(),
            Access::Read => Ok(()),
        }
    }

    fn reply_delay(&mut self) -> Option<Duration> {
        self.fault_delay()
    }

    fn name(&self) -> &str {
        "sessions"
    }

    fn version(&self) -> &str {
        self.version.as_str()
    }

    fn feature_level(&self) -> u32 {
        self.version.feature_level()
    }

    fn access(&self, name: &[u8]) -> Option<Access> {
        let name = Name::parse(name)?;
        if name.is_2_0_only() && self.version == AppVersion::V1_0 {
            return None;
        }
        Some(name.access())
    }

    fn execute(
        &mut self,
        cmd: &Command,
        ctx: &mut Ctx<'_>,
        out: &mut BytesMut,
    ) -> Result<(), CommandError> {
        let raw_name = cmd.arg(0).map_or(&[][..], |n| &n[..]);
        let name = match Name::parse(raw_name) {
            Some(name) if !(name.is_2_0_only() && self.version == AppVersion::V1_0) => name,
            _ => {
                return Err(CommandError(format!(
                    "ERR unknown command '{}'",
                    lossy(raw_name)
                )));
            }
        };
        // A feature that is not enabled yet behaves as absent, whatever the arguments.
        if name.is_2_0_only() && !ctx.features_enabled() {
            return Err(CommandError::new(name.disabled_message()));
        }
        let args = cmd.args.get(1..).unwrap_or_default();
        match (name, args) {
            (Name::Open, [id, subscriber]) => self.open(ctx, id, subscriber, b"", out),
            (Name::Open, [id, subscriber, payload]) => self.open(ctx, id, subscriber, payload, out),
            (Name::Update, [id]) => self.update(ctx, id, None, out),
            (Name::Update, [id, payload]) => self.update(ctx, id, Some(payload), out),
            (Name::Hold, [id]) => self.hold(ctx, id, out),
            (Name::End, [id]) => self.end(ctx, id, out),
            (Name::Get, [id]) => self.get(ctx, id, out),
            (Name::Count, []) => {
                reply::integer(out, i64::try_from(ctx.units_len()).unwrap_or(i64::MAX));
                Ok(())
            }
            (Name::Transfer, [id, target]) => self.transfer(ctx, id, target, out),
            (Name::Priority, [id, priority]) => self.set_priority(ctx, id, priority, out),
            _ => Err(CommandError::new(name.wrong_arity_message())),
        }
    }

    /// Refuses what this version could not read, and checks every description it will hold,
    /// so that a standby stops at the first update it cannot take over with.
    fn check_update(&self, record: RecordRef<'_>) -> Result<(), String> {
        match record.op {
            Op::UnitCreate | Op::UnitUpdate => self.read(record.value).map(drop),
            Op::DbPut
                if self.version == AppVersion::V1_0 && record.key.starts_with(TRANSFER_PREFIX) =>
            {
                Err(format!(
                    "database record '{}' needs version 2.0",
                    lossy(record.key)
                ))
            }
            Op::Control(control::FEATURES_ENABLED) if self.version == AppVersion::V1_0 => {
                Err("the 2.0 features need version 2.0".into())
            }
            _ => Ok(()),
        }
    }
}

/// The commands, by their upper-case names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Open,
    Update,
    Hold,
    End,
    Get,
    Count,
    Transfer,
    Priority,
}

const NAME_PREFIX: &[u8] = b"SESSION.";

const VERBS: [(&[u8], Name); 8] = [
    (b"OPEN", Name::Open),
    (b"UPDATE", Name::Update),
    (b"HOLD", Name::Hold),
    (b"END", Name::End),
    (b"GET", Name::Get),
    (b"COUNT", Name::Count),
    (b"TRANSFER", Name::Transfer),
    (b"PRIORITY", Name::Priority),
];

/// The 2.0-only commands' answer while the features are disabled.
macro_rules! disabled {
    ($name:literal) => {
        concat!(
            "FEATUREDISABLED ",
            $name,
            " needs the 2.0 features: enable them with 'tandem features enable' once every \
             engine runs 2.0"
        )
    };
}

impl Name {
    /// Any case: clients send lower case, the engine may pass it on unchanged.
    fn parse(name: &[u8]) -> Option<Name> {
        let (prefix, verb) = name.split_at_checked(NAME_PREFIX.len())?;
        if !prefix.eq_ignore_ascii_case(NAME_PREFIX) {
            return None;
        }
        VERBS
            .iter()
            .find(|(v, _)| verb.eq_ignore_ascii_case(v))
            .map(|&(_, name)| name)
    }

    fn access(self) -> Access {
        match self {
            Name::Get | Name::Count => Access::Read,
            _ => Access::Write,
        }
    }

    fn is_2_0_only(self) -> bool {
        matches!(self, Name::Transfer | Name::Priority)
    }

    fn disabled_message(self) -> &'static str {
        match self {
            Name::Transfer => disabled!("SESSION.TRANSFER"),
            _ => disabled!("SESSION.PRIORITY"),
        }
    }

    fn wrong_arity_message(self) -> &'static str {
        match self {
            Name::Open => "ERR wrong number of arguments for 'session.open' command",
            Name::Update => "ERR wrong number of arguments for 'session.update' command",
            Name::Hold => "ERR wrong number of arguments for 'session.hold' command",
            Name::End => "ERR wrong number of arguments for 'session.end' command",
            Name::Get => "ERR wrong number of arguments for 'session.get' command",
            Name::Count => "ERR wrong number of arguments for 'session.count' command",
            Name::Transfer => "ERR wrong number of arguments for 'session.transfer' command",
            Name::Priority => "ERR wrong number of arguments for 'session.priority' command",
        }
    }
}

/// Description formats (the first byte of every description).
const FORMAT_1: u8 = 1;
const FORMAT_2: u8 = 2;

const PRIORITY_MAX: u8 = 9;
const SUBSCRIBER_BYTES_MAX: usize = u16::MAX as usize;
const CDR_PREFIX: &[u8] = b"cdr:";
const TRANSFER_PREFIX: &[u8] = b"transfer:";
/// Ids short enough that the database keys derived from them fit the record limit.
const ID_BYTES_MAX: usize = KEY_BYTES_MAX - TRANSFER_PREFIX.len();

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionState {
    Open = 1,
    Active = 2,
    Held = 3,
    /// Format 2 only.
    Transferred = 4,
}

impl SessionState {
    fn from_wire(code: u8, format: u8) -> Option<SessionState> {
        match code {
            1 => Some(SessionState::Open),
            2 => Some(SessionState::Active),
            3 => Some(SessionState::Held),
            4 if format >= FORMAT_2 => Some(SessionState::Transferred),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Active => "active",
            SessionState::Held => "held",
            SessionState::Transferred => "transferred",
        }
    }
}

fn not_in_state(id: &[u8], state: SessionState) -> CommandError {
    CommandError(format!("ERR session {} is {}", lossy(id), state.name()))
}

/// A decoded description, borrowing its byte strings from the encoded one. Format 1 has no
/// priority; it reads as 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Session<'a> {
    state: SessionState,
    counter: u64,
    priority: u8,
    subscriber: &'a [u8],
    payload: &'a [u8],
}

#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    Empty,
    UnknownFormat(u8),
    Truncated,
    State { code: u8, format: u8 },
    Priority(u8),
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Empty => f.write_str("empty session description"),
            BodyError::UnknownFormat(format) => {
                write!(f, "session description format {format} is unknown")
            }
            BodyError::Truncated => f.write_str("truncated session description"),
            BodyError::State { code, format } => {
                write!(
                    f,
                    "session state {code} does not exist in description format {format}"
                )
            }
            BodyError::Priority(p) => write!(f, "session priority {p} is over {PRIORITY_MAX}"),
        }
    }
}

/// Reads either format:
/// `[format u8][state u8][counter u64 le]([priority u8] in format 2)[subscriber_len u16 le]
/// [subscriber][payload...]`.
fn decode(body: &[u8]) -> Result<(u8, Session<'_>), BodyError> {
    let (&format, rest) = body.split_first().ok_or(BodyError::Empty)?;
    if format != FORMAT_1 && format != FORMAT_2 {
        return Err(BodyError::UnknownFormat(format));
    }
    let (&code, rest) = rest.split_first().ok_or(BodyError::Truncated)?;
    let state = SessionState::from_wire(code, format).ok_or(BodyError::State { code, format })?;
    let (counter, rest) = rest.split_first_chunk::<8>().ok_or(BodyError::Truncated)?;
    let (priority, rest) = if format == FORMAT_2 {
        let (&priority, rest) = rest.split_first().ok_or(BodyError::Truncated)?;
        if priority > PRIORITY_MAX {
            return Err(BodyError::Priority(priority));
        }
        (priority, rest)
    } else {
        (0, rest)
    };
    let (subscriber_len, rest) = rest.split_first_chunk::<2>().ok_or(BodyError::Truncated)?;
    let (subscriber, payload) = rest
        .split_at_checked(usize::from(u16::from_le_bytes(*subscriber_len)))
        .ok_or(BodyError::Truncated)?;
    let counter = u64::from_le_bytes(*counter);
    Ok((
        format,
        Session {
            state,
            counter,
            priority,
            subscriber,
            payload,
        },
    ))
}

/// The size of `session` encoded in `format`.
fn encoded_len(format: u8, session: &Session<'_>) -> usize {
    let priority_bytes = usize::from(format == FORMAT_2);
    1 + 1 + 8 + priority_bytes + 2 + session.subscriber.len() + session.payload.len()
}

/// Writes `session` in `format` into `out` (cleared first). The subscriber is at most
/// `SUBSCRIBER_BYTES_MAX` bytes: checked when the session is opened, and kept since.
fn encode(out: &mut Vec<u8>, format: u8, session: &Session<'_>) {
    debug_assert!(session.subscriber.len() <= SUBSCRIBER_BYTES_MAX);
    debug_assert!(format == FORMAT_2 || session.state != SessionState::Transferred);
    out.clear();
    out.reserve(encoded_len(format, session));
    out.push(format);
    out.push(session.state as u8);
    out.extend_from_slice(&session.counter.to_le_bytes());
    if format == FORMAT_2 {
        out.push(session.priority);
    }
    out.extend_from_slice(&(session.subscriber.len() as u16).to_le_bytes());
    out.extend_from_slice(session.subscriber);
    out.extend_from_slice(session.payload);
    debug_assert_eq!(out.len(), encoded_len(format, session));
}

fn parse_priority(text: &[u8]) -> Option<u8> {
    match text {
        [digit @ b'0'..=b'9'] => Some(digit - b'0'),
        _ => None,
    }
}

/// Appends `n` in decimal, without going through the formatting machinery.
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let (digits, at) = resp::reply::decimal(n);
    out.extend_from_slice(&digits[at..]);
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;
    use replicator::{frame, BatchConfig, Kind, Outbox, Record, Records};

    use super::*;
    use crate::state::State;

    /// An active engine reduced to what the application sees: state, outbox, and the frames
    /// sealed so far (one per command), which a standby replays.
    struct Active {
        app: Sessions,
        state: State,
        outbox: Outbox,
        frames: Vec<Bytes>,
    }

    impl Active {
        fn new(version: AppVersion, features_enabled: bool) -> Active {
            let mut active = Active {
                app: Sessions::new(version, None),
                state: State::default(),
                outbox: Outbox::new(BatchConfig::default(), 0),
                frames: Vec::new(),
            };
            if features_enabled {
                let mut ctx = Ctx::new(&mut active.state, &mut active.outbox, Instant::now());
                ctx.control(control::FEATURES_ENABLED)
                    .expect("control record");
                active.seal();
            }
            active
        }

        fn seal(&mut self) {
            if let Some(sealed) = self.outbox.seal() {
                self.frames.push(sealed.frame.clone());
            }
        }

        /// Runs one command as the engine would and returns the RESP reply. Checks on the way
        /// that a failed command changed nothing and a read wrote nothing.
        fn run_args(&mut self, args: &[&[u8]]) -> String {
            let cmd = Command {
                args: args.iter().map(|a| Bytes::copy_from_slice(a)).collect(),
            };
            let mut out = BytesMut::new();
            let upper = args
                .first()
                .map(|n| n.to_ascii_uppercase())
                .unwrap_or_default();
            let Some(access) = self.app.access(&upper) else {
                return "-ERR unknown command\r\n".into();
            };
            let before = (self.state.digest(), self.outbox.seq_last());
            let mut ctx = Ctx::new(&mut self.state, &mut self.outbox, Instant::now());
            let result = self.app.execute(&cmd, &mut ctx, &mut out);
            let after = (self.state.digest(), self.outbox.seq_last());
            if let Err(e) = result {
                assert!(out.is_empty(), "no partial reply before an error");
                assert_eq!(before, after, "a failed command changes nothing");
                reply::error(&mut out, &e.0);
            }
            if access == Access::Read {
                assert_eq!(before, after, "a read writes nothing");
            }
            self.seal();
            String::from_utf8_lossy(&out).into_owned()
        }

        fn run(&mut self, line: &str) -> String {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            self.run_args(&args)
        }

        /// What a standby running `app` holds after applying every update so far.
        fn replay(&self, mut app: Sessions) -> Result<State, String> {
            let mut standby = State::default();
            for bytes in &self.frames {
                let frame = frame::decode_exact(bytes).map_err(|e| e.to_string())?;
                let records =
                    Records::new(Kind::Batch, frame.payload).map_err(|e| e.to_string())?;
                for record in records {
                    let record = record.map_err(|e| e.to_string())?;
                    app.apply(&mut standby, &record)?;
                }
            }
            Ok(standby)
        }

        fn body(&self, id: &str) -> Bytes {
            self.state
                .units
                .get(id.as_bytes())
                .map(Bytes::copy_from_slice)
                .expect("registered session")
        }
    }

    fn v1() -> Active {
        Active::new(AppVersion::V1_0, false)
    }

    fn v2(features_enabled: bool) -> Active {
        Active::new(AppVersion::V2_0, features_enabled)
    }

    fn get4(state: &str, counter: u64, subscriber: &str, payload: &str) -> String {
        format!(
            "*4\r\n${}\r\n{state}\r\n:{counter}\r\n${}\r\n{subscriber}\r\n${}\r\n{payload}\r\n",
            state.len(),
            subscriber.len(),
            payload.len()
        )
    }

    #[test]
    fn versions_and_identity() {
        assert_eq!(AppVersion::parse("1.0"), Ok(AppVersion::V1_0));
        assert_eq!(AppVersion::parse("2.0").map(AppVersion::as_str), Ok("2.0"));
        assert!(AppVersion::parse("3.0").is_err());
        let app = Sessions::new(AppVersion::V1_0, None);
        assert_eq!(
            (app.name(), app.version(), app.feature_level()),
            ("sessions", "1.0", 1)
        );
        let app = Sessions::new(AppVersion::V2_0, None);
        assert_eq!(
            (app.name(), app.version(), app.feature_level()),
            ("sessions", "2.0", 2)
        );
        assert_eq!(app.access(b"SESSION.GET"), Some(Access::Read));
        assert_eq!(app.access(b"SESSION.COUNT"), Some(Access::Read));
        assert_eq!(app.access(b"SESSION.OPEN"), Some(Access::Write));
        assert_eq!(app.access(b"SESSION.TRANSFER"), Some(Access::Write));
        assert_eq!(app.access(b"SESSION."), None);
        assert_eq!(app.access(b"SESSION.OPENX"), None);
        assert_eq!(app.access(b"GET"), None);
    }

    /// The GET reply a client of `e` expects: priority last on 2.0 with the features enabled.
    fn expected_get(
        e: &Active,
        state: &str,
        counter: u64,
        subscriber: &str,
        payload: &str,
    ) -> String {
        let four = get4(state, counter, subscriber, payload);
        if e.app.app_version() == AppVersion::V2_0 && e.state.features_enabled {
            format!("*5{}:0\r\n", &four[2..])
        } else {
            four
        }
    }

    #[test]
    fn state_machine() {
        for mut e in [v1(), v2(false), v2(true)] {
            assert_eq!(e.run("SESSION.OPEN s1 alice hello"), "+OK\r\n");
            assert_eq!(e.run("SESSION.COUNT"), ":1\r\n");
            assert_eq!(
                e.run("SESSION.GET s1"),
                expected_get(&e, "open", 0, "alice", "hello")
            );
            assert_eq!(e.run("SESSION.UPDATE s1"), ":1\r\n");
            assert_eq!(
                e.run("SESSION.GET s1"),
                expected_get(&e, "active", 1, "alice", "hello")
            );
            assert_eq!(e.run("SESSION.HOLD s1"), "+OK\r\n");
            assert_eq!(
                e.run("SESSION.GET s1"),
                expected_get(&e, "held", 1, "alice", "hello")
            );
            assert_eq!(
                e.run("session.update s1 world"),
                ":2\r\n",
                "any case; resumes a held session"
            );
            assert_eq!(
                e.run("SESSION.GET s1"),
                expected_get(&e, "active", 2, "alice", "world")
            );
            assert_eq!(e.run("SESSION.UPDATE s1"), ":3\r\n");
            assert_eq!(
                e.run("SESSION.GET s1"),
                expected_get(&e, "active", 3, "alice", "world")
            );
            assert_eq!(e.run("SESSION.END s1"), "+OK\r\n");
            assert_eq!(e.run("SESSION.GET s1"), "$-1\r\n");
            assert_eq!(e.run("SESSION.COUNT"), ":0\r\n");
            assert_eq!(e.state.db.get(b"cdr:s1"), Some(&b"alice 3"[..]));
            // An open session ends too, and an empty payload is a payload.
            assert_eq!(e.run("SESSION.OPEN s2 bob"), "+OK\r\n");
            assert_eq!(
                e.run("SESSION.GET s2"),
                expected_get(&e, "open", 0, "bob", "")
            );
            assert_eq!(e.run("SESSION.END s2"), "+OK\r\n");
            assert_eq!(e.state.db.get(b"cdr:s2"), Some(&b"bob 0"[..]));
            // A session id can be reused once ended; its record is then overwritten.
            assert_eq!(e.run("SESSION.OPEN s1 carol"), "+OK\r\n");
        }
    }

    #[test]
    fn errors() {
        let mut e = v2(false);
        assert_eq!(e.run("SESSION.OPEN s1 alice"), "+OK\r\n");
        assert_eq!(e.run("SESSION.OPEN s1 bob"), "-ERR session s1 exists\r\n");
        assert_eq!(e.run("SESSION.HOLD s1"), "-ERR session s1 is open\r\n");
        e.run("SESSION.UPDATE s1");
        e.run("SESSION.HOLD s1");
        assert_eq!(e.run("SESSION.HOLD s1"), "-ERR session s1 is held\r\n");
        for cmd in ["UPDATE", "HOLD", "END"] {
            assert_eq!(
                e.run(&format!("SESSION.{cmd} nope")),
                "-ERR no such session nope\r\n"
            );
        }
        assert_eq!(e.run("SESSION.GET nope"), "$-1\r\n");
        let arity = [
            ("SESSION.OPEN s9", "session.open"),
            ("session.open a b c d", "session.open"),
            ("SESSION.UPDATE", "session.update"),
            ("SESSION.UPDATE s1 a b", "session.update"),
            ("SESSION.HOLD", "session.hold"),
            ("SESSION.END s1 x", "session.end"),
            ("SESSION.GET", "session.get"),
            ("SESSION.COUNT x", "session.count"),
        ];
        for (line, name) in arity {
            assert_eq!(
                e.run(line),
                format!("-ERR wrong number of arguments for '{name}' command\r\n"),
                "{line}"
            );
        }
        let long_subscriber = vec![b'x'; SUBSCRIBER_BYTES_MAX + 1];
        let reply = e.run_args(&[b"SESSION.OPEN", b"s2", &long_subscriber]);
        assert!(reply.starts_with("-ERR subscriber longer than"), "{reply}");
        let long_id = vec![b'i'; ID_BYTES_MAX + 1];
        assert!(e
            .run_args(&[b"SESSION.OPEN", &long_id, b"a"])
            .starts_with("-ERR session id longer than"));
        // Descriptions over the record limit are refused before anything is written, and
        // the scratch buffer does not keep the size of a large one.
        let huge = vec![b'p'; VALUE_BYTES_MAX];
        let reply = e.run_args(&[b"SESSION.UPDATE", b"s1", &huge]);
        assert_eq!(reply, "-ERR session description longer than 8 MiB\r\n");
        let large = vec![b'p'; 1 << 20];
        assert_eq!(e.run_args(&[b"SESSION.UPDATE", b"s1", &large]), ":2\r\n");
        assert!(e.app.body.capacity() >= 1 << 20);
        assert_eq!(e.run("SESSION.UPDATE s1 small"), ":3\r\n");
        assert!(e.app.body.capacity() <= SCRATCH_BYTES_KEPT);
        // An unreadable description is an error reply, not a panic.
        e.state
            .apply(Op::UnitCreate, b"bad", &[1, 9])
            .expect("raw write");
        assert_eq!(
            e.run("SESSION.GET bad"),
            "-ERR session bad: session state 9 does not exist in description format 1\r\n"
        );
        assert_eq!(
            e.run("SESSION.UPDATE bad"),
            "-ERR session bad: session state 9 does not exist in description format 1\r\n"
        );
        // Straight to execute (the engine checks access first): unknown is still an error.
        let mut app = Sessions::new(AppVersion::V1_0, None);
        let cmd = Command {
            args: vec![
                Bytes::from_static(b"SESSION.TRANSFER"),
                Bytes::from_static(b"s1"),
            ],
        };
        let mut ctx = Ctx::new(&mut e.state, &mut e.outbox, Instant::now());
        let err = app
            .execute(&cmd, &mut ctx, &mut BytesMut::new())
            .expect_err("unknown on 1.0");
        assert_eq!(err.0, "ERR unknown command 'SESSION.TRANSFER'");
        let empty = Command { args: vec![] };
        assert!(app.execute(&empty, &mut ctx, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn gated_commands_are_refused_while_the_features_are_disabled() {
        let mut e = v2(false);
        e.run("SESSION.OPEN s1 alice");
        assert_eq!(
            e.run("SESSION.TRANSFER s1 bob"),
            "-FEATUREDISABLED SESSION.TRANSFER needs the 2.0 features: enable them with 'tandem \
             features enable' once every engine runs 2.0\r\n"
        );
        assert_eq!(
            e.run("session.priority s1 3"),
            "-FEATUREDISABLED SESSION.PRIORITY needs the 2.0 features: enable them with 'tandem \
             features enable' once every engine runs 2.0\r\n"
        );
        assert!(
            e.run("SESSION.TRANSFER").starts_with("-FEATUREDISABLED"),
            "the gate comes before arity"
        );
        let mut e = v1();
        assert_eq!(e.app.access(b"SESSION.TRANSFER"), None);
        assert_eq!(e.app.access(b"SESSION.PRIORITY"), None);
        assert_eq!(e.run("SESSION.TRANSFER s1 bob"), "-ERR unknown command\r\n");
    }

    #[test]
    fn gated_commands_work_once_the_features_are_enabled() {
        let mut e = v2(true);
        assert!(e.state.features_enabled);
        e.run("SESSION.OPEN s1 alice");
        assert_eq!(e.body("s1")[0], FORMAT_2);
        assert_eq!(e.run("SESSION.PRIORITY s1 7"), "+OK\r\n");
        assert!(e.run("SESSION.GET s1").ends_with(":7\r\n"));
        for bad in ["10", "-1", "x", ""] {
            assert_eq!(
                e.run_args(&[b"SESSION.PRIORITY", b"s1", bad.as_bytes()]),
                "-ERR priority must be an integer from 0 to 9\r\n"
            );
        }
        assert_eq!(
            e.run("SESSION.PRIORITY nope 1"),
            "-ERR no such session nope\r\n"
        );
        e.run("SESSION.UPDATE s1 p");
        assert_eq!(e.run("SESSION.TRANSFER s1 bob"), "+OK\r\n");
        assert_eq!(
            e.run("SESSION.GET s1"),
            "*5\r\n$11\r\ntransferred\r\n:1\r\n$5\r\nalice\r\n$1\r\np\r\n:7\r\n"
        );
        assert_eq!(e.state.db.get(b"transfer:s1"), Some(&b"bob"[..]));
        assert_eq!(
            e.run("SESSION.TRANSFER s1 carol"),
            "-ERR session s1 is transferred\r\n"
        );
        assert_eq!(
            e.run("SESSION.UPDATE s1"),
            "-ERR session s1 is transferred\r\n"
        );
        assert_eq!(
            e.run("SESSION.HOLD s1"),
            "-ERR session s1 is transferred\r\n"
        );
        assert_eq!(
            e.run("SESSION.TRANSFER s1"),
            "-ERR wrong number of arguments for 'session.transfer' command\r\n"
        );
        assert_eq!(e.run("SESSION.END s1"), "+OK\r\n");
        assert_eq!(e.state.db.get(b"cdr:s1"), Some(&b"alice 1"[..]));
        let standby = e
            .replay(Sessions::new(AppVersion::V2_0, None))
            .expect("2.0 follows 2.0");
        assert_eq!(standby.digest(), e.state.digest());
    }

    #[test]
    fn a_format_1_session_is_rewritten_as_format_2_once_enabled() {
        let mut e = v2(false);
        e.run("SESSION.OPEN s1 alice x");
        assert_eq!(e.body("s1")[0], FORMAT_1);
        e.run("SESSION.HOLD s1");
        e.state.features_enabled = true;
        assert_eq!(e.run("SESSION.UPDATE s1"), ":1\r\n");
        let body = e.body("s1");
        let (format, session) = decode(&body).expect("valid");
        assert_eq!(
            (format, session.priority, session.state),
            (FORMAT_2, 0, SessionState::Active)
        );
        assert_eq!(
            (session.subscriber, session.payload),
            (&b"alice"[..], &b"x"[..])
        );
    }

    #[test]
    fn version_1_0_refuses_what_it_cannot_read() {
        let mut e = v2(true);
        e.run("SESSION.OPEN s1 alice");
        e.run("SESSION.TRANSFER s1 bob");
        let v1_app = Sessions::new(AppVersion::V1_0, None);
        let v2_app = Sessions::new(AppVersion::V2_0, None);
        let format_2 = Record {
            op: Op::UnitUpdate,
            key: Bytes::from_static(b"s1"),
            value: e.body("s1"),
        };
        assert_eq!(
            v1_app.check_update(format_2.as_ref()),
            Err("session description format 2 needs version 2.0".into())
        );
        assert_eq!(v2_app.check_update(format_2.as_ref()), Ok(()));
        let transfer = Record {
            op: Op::DbPut,
            key: Bytes::from_static(b"transfer:s1"),
            value: Bytes::from_static(b"bob"),
        };
        assert_eq!(
            v1_app.check_update(transfer.as_ref()),
            Err("database record 'transfer:s1' needs version 2.0".into())
        );
        assert_eq!(v2_app.check_update(transfer.as_ref()), Ok(()));
        let enable = Record {
            op: Op::Control(control::FEATURES_ENABLED),
            key: Bytes::new(),
            value: Bytes::new(),
        };
        assert!(v1_app.check_update(enable.as_ref()).is_err());
        assert_eq!(v2_app.check_update(enable.as_ref()), Ok(()));
        // apply refuses before the state changes.
        let mut standby = State::default();
        let digest = standby.digest();
        let create = Record {
            op: Op::UnitCreate,
            ..format_2
        };
        assert!(Sessions::new(AppVersion::V1_0, None)
            .apply(&mut standby, &create)
            .is_err());
        assert_eq!(standby.digest(), digest);
        // The whole stream: a 1.0 standby stops, a 2.0 standby follows.
        assert!(e.replay(Sessions::new(AppVersion::V1_0, None)).is_err());
        assert!(e.replay(Sessions::new(AppVersion::V2_0, None)).is_ok());
        // Garbage is refused by both versions.
        for body in [
            &[][..],
            &[3, 1],
            &[1, 1, 0],
            &[2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0],
            &[1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let record = Record {
                op: Op::UnitCreate,
                key: Bytes::from_static(b"k"),
                value: Bytes::copy_from_slice(body),
            };
            assert!(v2_app.check_update(record.as_ref()).is_err(), "{body:?}");
            assert!(v1_app.check_update(record.as_ref()).is_err(), "{body:?}");
        }
        let truncated_subscriber = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, b'a'];
        assert_eq!(decode(&truncated_subscriber), Err(BodyError::Truncated));
    }

    #[test]
    fn faults() {
        assert_eq!(
            Fault::parse("slow"),
            Ok(Fault::Slow {
                share_percent: 20,
                delay_ms: 5
            })
        );
        assert_eq!(
            Fault::parse("errors"),
            Ok(Fault::Errors { share_percent: 5 })
        );
        assert!(Fault::parse("fast").is_err());

        let mut e = v2(false);
        e.app = Sessions::new(AppVersion::V2_0, Some(Fault::Errors { share_percent: 100 }));
        assert_eq!(
            e.app.write_fault(Access::Write),
            Err(CommandError::new(
                "ERR injected fault (tandem 2.0 faulty build)"
            ))
        );
        assert_eq!(e.app.write_fault(Access::Read), Ok(()), "reads are not hit");
        assert_eq!(e.app.fault_delay(), None);

        let mut e = v2(false);
        e.app = Sessions::new(AppVersion::V2_0, Some(Fault::Errors { share_percent: 5 }));
        let failed = (0..1000)
            .filter(|_| e.app.write_fault(Access::Write).is_err())
            .count();
        assert!((20..=100).contains(&failed), "{failed} of 1000 failed");

        let mut app = Sessions::new(AppVersion::V2_0, Some(Fault::parse("slow").expect("known")));
        let slow = (0..1000)
            .filter_map(|_| app.fault_delay())
            .collect::<Vec<_>>();
        assert!(
            (100..=300).contains(&slow.len()),
            "{} of 1000 slow",
            slow.len()
        );
        assert!(slow.iter().all(|d| *d == Duration::from_millis(5)));
        let mut again = Sessions::new(AppVersion::V2_0, Some(Fault::parse("slow").expect("known")));
        assert_eq!(
            (0..1000).filter_map(|_| again.fault_delay()).count(),
            slow.len(),
            "deterministic"
        );
        assert_eq!(Sessions::new(AppVersion::V2_0, None).fault_delay(), None);
    }

    #[test]
    fn decimal() {
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    /// Mostly well-formed commands on a few ids, so that sessions go through their states;
    /// the rest have random arguments.
    fn arb_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let names = prop::sample::select(vec![
            "SESSION.OPEN",
            "session.open",
            "SESSION.UPDATE",
            "Session.Update",
            "SESSION.HOLD",
            "SESSION.END",
            "SESSION.GET",
            "SESSION.COUNT",
            "SESSION.TRANSFER",
            "SESSION.PRIORITY",
        ]);
        let id = prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| s.as_bytes().to_vec());
        let word = prop_oneof![
            id.clone(),
            "[0-9]{1,2}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..12),
        ];
        let well_formed = (
            names.clone(),
            id.clone(),
            word.clone(),
            any::<bool>(),
            0u8..12,
        )
            .prop_map(|(name, id, word, optional, priority)| {
                let verb = name
                    .get(NAME_PREFIX.len()..)
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let mut args = vec![name.as_bytes().to_vec()];
                match verb.as_str() {
                    "COUNT" => {}
                    "OPEN" => {
                        args.extend([id, b"alice".to_vec()]);
                        args.extend(optional.then_some(word));
                    }
                    "UPDATE" => {
                        args.push(id);
                        args.extend(optional.then_some(word));
                    }
                    "TRANSFER" => args.extend([id, word]),
                    "PRIORITY" => args.extend([id, priority.to_string().into_bytes()]),
                    _ => args.push(id),
                }
                args
            });
        let random = (
            names,
            prop::option::weighted(0.9, id),
            prop::collection::vec(word, 0..3),
        )
            .prop_map(|(name, id, rest)| {
                let mut args = vec![name.as_bytes().to_vec()];
                args.extend(id);
                args.extend(rest);
                args
            });
        prop_oneof![4 => well_formed, 1 => random]
    }

    fn as_slices(args: &[Vec<u8>]) -> Vec<&[u8]> {
        args.iter().map(Vec::as_slice).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Until the features are enabled 2.0 is indistinguishable from 1.0, to clients and in
        /// the replicated state, and each version can follow the other as standby.
        #[test]
        fn v2_0_with_features_disabled_behaves_as_v1_0(cmds in prop::collection::vec(arb_command(), 1..80)) {
            let (mut old, mut new) = (v1(), v2(false));
            for args in &cmds {
                let args = as_slices(args);
                let (old_reply, new_reply) = (old.run_args(&args), new.run_args(&args));
                if Name::parse(args[0]).is_some_and(Name::is_2_0_only) {
                    prop_assert_eq!(old_reply, "-ERR unknown command\r\n");
                    prop_assert!(new_reply.starts_with("-FEATUREDISABLED "), "{}", new_reply);
                } else {
                    prop_assert_eq!(old_reply, new_reply);
                }
                prop_assert_eq!(old.state.digest(), new.state.digest());
            }
            let digest = old.state.digest();
            for (active, standby) in [
                (&old, AppVersion::V1_0),
                (&old, AppVersion::V2_0),
                (&new, AppVersion::V1_0),
                (&new, AppVersion::V2_0),
            ] {
                let replayed = active.replay(Sessions::new(standby, None));
                prop_assert_eq!(replayed.map(|s| s.digest()), Ok(digest), "standby {}", standby);
            }
        }

        /// With the features enabled, a 2.0 standby replaying the outbox holds what the active
        /// holds.
        #[test]
        fn a_v2_0_standby_follows_a_v2_0_active(cmds in prop::collection::vec(arb_command(), 1..80)) {
            let mut active = v2(true);
            for args in &cmds {
                active.run_args(&as_slices(args));
            }
            let replayed = active.replay(Sessions::new(AppVersion::V2_0, None));
            prop_assert_eq!(replayed.map(|s| s.digest()), Ok(active.state.digest()));
        }
    }
}
