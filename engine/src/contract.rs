//! The contract between tandem's processes: what an engine tells the supervisor (and the
//! command line) in JSON, under one version, and the codes its refusals start with.
//!
//! Engines and the supervisor of a pair may come from different builds: a rolling upgrade of
//! tandem itself runs an old supervisor with a new engine. So every message here carries the
//! contract's version `v`, and a reader decodes it with [`decode`] into its type: a message of
//! another version, or one without a field the type has, is refused with what is missing.
//! Nothing is read as zero because its field was renamed or dropped. Refusals are decided on
//! by their [`Code`], the first word of the RESP error, never by the rest of its text.
//!
//! The messages: from an engine, [`crate::node::EngineStatus`] (`TANDEM.STATUS`, and the
//! reply to `TANDEM.LEASE`), [`crate::stats::StatsReport`] (`TANDEM.STATS`, what the
//! upgrade's acceptance check compares), [`SyncPointReply`] (`TANDEM.SYNCPOINT`) and
//! [`Ready`] (the line an engine prints once it serves); from the supervisor to the command
//! line, [`PairStatus`] (`STATUS`) and [`crate::upgrade::Report`] (`UPGRADE`). The timeline's
//! events have their own schema (`reports::timeline`). What stays inside one process is not
//! here.

use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The contract's version. A change that renames, removes or retypes a field of a message
/// bumps it; a reader refuses any other version than its own.
pub const VERSION: u64 = 1;

/// A message of the contract: `NAME` is what an error calls it.
pub trait Message: Serialize + DeserializeOwned {
    const NAME: &'static str;
}

/// The message as JSON, with the contract's version.
pub fn encode<T: Message>(msg: &T) -> String {
    let mut value = serde_json::to_value(msg).expect("a contract message serializes");
    let Value::Object(fields) = &mut value else {
        panic!("{} is not a JSON object", T::NAME);
    };
    fields.insert("v".into(), VERSION.into());
    value.to_string()
}

/// Decodes a message that `from` sent: refused if it is of another contract version, or if a
/// field of `T` is missing (an `Option` must be there too, as `null`).
pub fn decode<T: Message>(from: &str, json: &[u8]) -> Result<T, String> {
    let mut fields: Map<String, Value> = serde_json::from_slice(json)
        .map_err(|e| format!("{from} sent a {} that is not a JSON object: {e}", T::NAME))?;
    match fields.remove("v") {
        Some(v) if v.as_u64() == Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "{from} speaks contract version {v}, this tandem version {VERSION}: run one tandem build for the supervisor and both engines, or upgrade the supervisor first"
            ))
        }
        None => {
            return Err(format!(
                "{from} sent a {} without a contract version: an older tandem build?",
                T::NAME
            ))
        }
    }
    if let Some(missing) = field_names::<T>()
        .iter()
        .find(|f| !fields.contains_key(**f))
    {
        return Err(format!("{from} sent a {} without `{missing}`", T::NAME));
    }
    serde_json::from_value(Value::Object(fields))
        .map_err(|e| format!("{from} sent a {} that does not fit: {e}", T::NAME))
}

/// The field names of a struct that derives `Deserialize`, as serde knows them.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

/// A deserializer that only learns which fields a struct has, then gives up.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("field names only"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("field names only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// What a refusal is, by the first word of its RESP error: what a caller decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// An epoch older than the engine's: the supervisor lags behind a grant.
    StaleEpoch,
    /// The engine's state is not whole (a snapshot under way or failed): never promote it.
    NotReady,
    /// Not the active (the rest of the error names the active's client address if known).
    NotActive,
    /// A new epoch that the pair's etcd witness does not hold (or etcd could not be read):
    /// the supervisor that offered it does not lead the pair, or lags behind it.
    NotGranted,
    /// Anything else the engine refused: a usage error, a state that does not allow it.
    Err,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::StaleEpoch => "STALEEPOCH",
            Code::NotReady => "NOTREADY",
            Code::NotActive => "NOTACTIVE",
            Code::NotGranted => "NOTGRANTED",
            Code::Err => "ERR",
        }
    }

    /// The code of a RESP error's text; an unknown first word is `Err`.
    pub fn of(error: &str) -> Code {
        match error.split(' ').next().unwrap_or("") {
            "STALEEPOCH" => Code::StaleEpoch,
            "NOTREADY" => Code::NotReady,
            "NOTACTIVE" => Code::NotActive,
            "NOTGRANTED" => Code::NotGranted,
            _ => Code::Err,
        }
    }

    /// A refusal with this code: the text a RESP error carries.
    pub fn refuse(self, why: impl std::fmt::Display) -> String {
        format!("{} {why}", self.as_str())
    }
}

/// `TANDEM.SYNCPOINT`: the sync point's sequence in the stream and the active's digest there.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncPointReply {
    pub seq: u64,
    pub digest: String,
}

impl Message for SyncPointReply {
    const NAME: &'static str = "sync point";
}

/// The line an engine prints on its standard output once it serves: `READY ` and this.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ready {
    pub name: String,
    pub pid: u32,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
    pub recovered: Option<crate::journal::Recovered>,
}

impl Message for Ready {
    const NAME: &'static str = "ready line";
}

/// The admin endpoint's `STATUS`: the pair as its supervisor sees it (`tandem status`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairStatus {
    pub admin: String,
    pub supervisor_pid: u32,
    pub epoch: u64,
    /// The engine the supervisor holds active (`a` or `b`).
    pub active: String,
    pub standby_promotable: bool,
    pub simplex: bool,
    pub upgrade_in_progress: bool,
    /// Why the pair refuses writes, if it does.
    pub unavailable: Option<String>,
    pub failover_pending: Option<PendingFailover>,
    pub failovers: u64,
    pub engines: Vec<PairEngine>,
    /// The pair's etcd witness (`--etcd`), none without one.
    pub witness: Option<WitnessStatus>,
}

/// The pair's etcd witness as its supervisor sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WitnessStatus {
    /// etcd's endpoints.
    pub url: String,
    /// The pair's record (`P/pair/NAME`).
    pub key: String,
    /// This supervisor's id (`host/pid/start_ms`).
    pub supervisor: String,
    /// `leader`, or `spare` (waiting for the leader key to go).
    pub role: String,
    /// The leader's id as last seen.
    pub leader: Option<String>,
    /// `ok`, `unreachable` (etcd does not answer: no new epoch), or `doubtful` (this
    /// supervisor's lease may have expired: it makes no engine call until etcd tells).
    pub state: String,
    /// Since when etcd has not answered (ms since the Unix epoch).
    pub unreachable_since_ms: Option<u64>,
    pub error: Option<String>,
    /// The epoch the record in etcd holds, as last written by this supervisor.
    pub published_epoch: Option<u64>,
}

impl Message for PairStatus {
    const NAME: &'static str = "pair status";
}

impl PairStatus {
    /// The engine that says it is active, if one answered so.
    pub fn active_engine(&self) -> Option<&crate::node::EngineStatus> {
        self.engines.iter().find_map(|e| match e {
            PairEngine::Up(s) if s.role == crate::node::Role::Active => Some(&**s),
            _ => None,
        })
    }
}

/// A promotion the supervisor keeps trying.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingFailover {
    pub promoting: String,
    pub epoch: u64,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub cause: String,
}

/// One engine of a pair: its own status if it answered, else what the supervisor knows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PairEngine {
    Up(Box<crate::node::EngineStatus>),
    Down(DownEngine),
}

impl PairEngine {
    pub fn client_addr(&self) -> &str {
        match self {
            PairEngine::Up(s) => &s.client_addr,
            PairEngine::Down(d) => &d.client_addr,
        }
    }
}

/// An engine that did not answer (`unresponsive`) or runs no process (`out_of_service`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DownEngine {
    pub name: String,
    pub role: String,
    pub app_version: String,
    pub pid: Option<u32>,
    pub client_addr: String,
    pub replication_addr: String,
    pub control_addr: String,
    /// The pair's epoch, as the supervisor knows it.
    pub epoch: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::StatsReport;

    /// A message as it goes on the wire, to be tampered with.
    fn wire<T: Message>(msg: &T) -> Value {
        serde_json::from_str(&encode(msg)).unwrap()
    }

    fn decode_from_a<T: Message>(value: &Value) -> Result<T, String> {
        decode("engine a", value.to_string().as_bytes())
    }

    fn stats() -> StatsReport {
        StatsReport {
            window_ms: 5000,
            commands: 50_000,
            errors: 3,
            error_rate: 0.00006,
            latency_us_p50: 210,
            latency_us_p99: 980,
            latency_us_p999: 4100,
            latency_us_max: 9000,
        }
    }

    #[test]
    fn a_message_comes_back_as_it_went() {
        let json = encode(&stats());
        assert!(json.contains("\"v\":1"), "{json}");
        let back: StatsReport = decode("engine a", json.as_bytes()).unwrap();
        assert_eq!(back.latency_us_p99, 980);
        assert_eq!(back.commands, 50_000);
    }

    #[test]
    fn a_missing_field_is_refused_by_name_not_read_as_zero() {
        let mut value = wire(&stats());
        value.as_object_mut().unwrap().remove("latency_us_p99");
        let e = decode::<StatsReport>("engine b", value.to_string().as_bytes()).unwrap_err();
        assert_eq!(e, "engine b sent a stats without `latency_us_p99`");
    }

    #[test]
    fn an_option_must_be_there_as_null() {
        let ready = Ready {
            name: "a".into(),
            pid: 7,
            client_addr: "127.0.0.1:1".into(),
            replication_addr: "127.0.0.1:2".into(),
            control_addr: "127.0.0.1:3".into(),
            recovered: None,
        };
        let mut value = wire(&ready);
        assert!(decode_from_a::<Ready>(&value).is_ok());
        value.as_object_mut().unwrap().remove("recovered");
        let e = decode_from_a::<Ready>(&value).unwrap_err();
        assert!(e.contains("without `recovered`"), "{e}");
    }

    #[test]
    fn another_version_or_none_is_refused() {
        let mut value = wire(&stats());
        value["v"] = 2.into();
        let e = decode_from_a::<StatsReport>(&value).unwrap_err();
        assert!(e.starts_with("engine a speaks contract version 2"), "{e}");
        value.as_object_mut().unwrap().remove("v");
        let e = decode_from_a::<StatsReport>(&value).unwrap_err();
        assert!(e.contains("without a contract version"), "{e}");
    }

    #[test]
    fn a_wrong_type_is_refused() {
        let mut value = wire(&stats());
        value["latency_us_p99"] = "fast".into();
        let e = decode_from_a::<StatsReport>(&value).unwrap_err();
        assert!(
            e.starts_with("engine a sent a stats that does not fit"),
            "{e}"
        );
    }

    #[test]
    fn codes_are_the_first_word_only() {
        for code in [
            Code::StaleEpoch,
            Code::NotReady,
            Code::NotActive,
            Code::NotGranted,
            Code::Err,
        ] {
            assert_eq!(Code::of(&code.refuse("because")), code);
        }
        assert_eq!(Code::of("NOTREADYISH no"), Code::Err);
        assert_eq!(Code::of("ERR the text says STALEEPOCH"), Code::Err);
        assert_eq!(Code::of(""), Code::Err);
    }
}
