//! What a run is asked to do: the [`Config`] that the `loadgen` binary builds from its flags
//! and that `tandem demo` builds in-process, the pieces it is made of (mode, mix, key
//! distribution), their textual forms (`set=70,get=20,session=10`, `zipfian:0.99`; durations
//! are `cli::parse_duration`'s), and the checks that turn bad input into a [`ConfigError`]
//! naming the flag to fix.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Most connections one run opens.
pub const CONNECTIONS_MAX: usize = 4096;
/// Most requests in flight on one connection.
pub const PIPELINE_MAX: usize = 4096;
/// Largest value written by `SET` (and session payload).
pub const VALUE_BYTES_MAX: usize = 1 << 20;
/// Largest key space: the lost-update ledger keeps 8 bytes per key.
pub const KEYS_MAX: u64 = 1 << 24;
/// Highest open-loop rate.
pub const RATE_OPS_S_MAX: u64 = 10_000_000;
/// Longest run.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A fixed rate, whatever the server does: latency is measured from each request's
    /// intended send time (coordinated-omission correction).
    Open { rate_ops_s: u64 },
    /// `connections` connections each keeping `pipeline` requests in flight; latency is
    /// measured from the actual send.
    Closed { connections: usize },
}

/// Relative shares of the three kinds of operation (any weights; percentages read best).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// `SET key:<i> <seq>:<padding>`: a database write.
    pub set: u32,
    /// `GET key:<i>`: a read.
    pub get: u32,
    /// One step of a session's cycle: `SESSION.OPEN`, `SESSION.UPDATE` ..., `SESSION.END`.
    pub session: u32,
}

impl Mix {
    pub fn total(&self) -> u64 {
        u64::from(self.set) + u64::from(self.get) + u64::from(self.session)
    }

    /// Whether any operation writes (`SET` or a session step).
    pub fn has_writes(&self) -> bool {
        self.set > 0 || self.session > 0
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            set: 70,
            get: 20,
            session: 10,
        }
    }
}

impl FromStr for Mix {
    type Err = ConfigError;

    /// `set=70,get=20,session=10`; a kind left out has share 0.
    fn from_str(text: &str) -> Result<Mix, ConfigError> {
        let bad = |why: String| ConfigError::Mix {
            text: text.to_string(),
            why,
        };
        let mut mix = Mix {
            set: 0,
            get: 0,
            session: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, share) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("'{part}' is not NAME=SHARE")))?;
            let share: u32 = share
                .trim()
                .parse()
                .map_err(|_| bad(format!("'{}' is not a whole number", share.trim())))?;
            match name.trim() {
                "set" => mix.set = share,
                "get" => mix.get = share,
                "session" => mix.session = share,
                other => {
                    return Err(bad(format!(
                        "unknown operation '{other}' (set, get, session)"
                    )))
                }
            }
        }
        if mix.total() == 0 {
            return Err(bad("the shares add up to 0".into()));
        }
        Ok(mix)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "set={},get={},session={}",
            self.set, self.get, self.session
        )
    }
}

/// Which keys the operations touch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    Uniform,
    /// YCSB's zipfian (Gray et al.): key rank r is drawn with probability ∝ 1/r^theta.
    Zipfian {
        theta: f64,
    },
}

/// YCSB's default skew.
pub const ZIPFIAN_THETA_DEFAULT: f64 = 0.99;

impl FromStr for Distribution {
    type Err = ConfigError;

    /// `uniform`, `zipfian` or `zipfian:THETA` with 0 < THETA < 1.
    fn from_str(text: &str) -> Result<Distribution, ConfigError> {
        let bad = |why: &str| ConfigError::Distribution {
            text: text.to_string(),
            why: why.to_string(),
        };
        match text.trim().split_once(':') {
            None if text.trim() == "uniform" => Ok(Distribution::Uniform),
            None if text.trim() == "zipfian" => Ok(Distribution::Zipfian {
                theta: ZIPFIAN_THETA_DEFAULT,
            }),
            Some(("zipfian", theta)) => {
                let theta: f64 = theta
                    .trim()
                    .parse()
                    .map_err(|_| bad("the skew after 'zipfian:' is not a number"))?;
                let distribution = Distribution::Zipfian { theta };
                distribution.check().map(|()| distribution)
            }
            _ => Err(bad("expected uniform, zipfian or zipfian:THETA")),
        }
    }
}

impl Distribution {
    fn check(&self) -> Result<(), ConfigError> {
        match *self {
            Distribution::Zipfian { theta } if !(theta > 0.0 && theta < 1.0) => {
                Err(ConfigError::Distribution {
                    text: self.to_string(),
                    why: "the zipfian skew must be between 0 and 1 (exclusive), e.g. 0.99".into(),
                })
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Zipfian { theta } => write!(f, "zipfian:{theta}"),
        }
    }
}

/// Everything a run needs. Build it with struct update syntax over
/// [`Config::default`] so that fields added later keep their defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// Client addresses (`127.0.0.1:7401`). Tandem: any engine of the pair (the connections
    /// find the active). Redis: the primary first, then the replica.
    pub targets: Vec<String>,
    /// The tandem supervisor's admin address: the run subscribes to its timeline.
    pub admin: Option<String>,
    /// The pair's secret, which the admin endpoint asks for.
    pub admin_secret: Option<auth::Secret>,
    /// Drive a Redis primary/replica instead of a tandem pair.
    pub redis: bool,
    /// With `redis`: `WAIT 1 0` after each write, which counts as acknowledged only once a
    /// replica has it (synchronous like tandem).
    pub redis_wait: bool,
    /// A connection whose oldest request waits this long for its reply is given up and the
    /// active looked for again (a hung engine keeps connections open and silent).
    pub reply_timeout: Duration,
    pub mode: Mode,
    /// Open loop: the rate is spread over this many connections.
    pub connections: usize,
    /// Requests in flight per connection, at most.
    pub pipeline: usize,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or `tail` after the timeline's `upgrade_end`, whichever comes first.
    pub until_upgrade_end: bool,
    pub tail: Duration,
    pub mix: Mix,
    pub value_bytes: usize,
    /// Key space size: keys `key:0` .. `key:<keys-1>`.
    pub keys: u64,
    pub distribution: Distribution,
    /// Run directory to write (`summary.json`, `timeline.json`, `slices.json`,
    /// `histograms.hlog`); `None` writes nothing.
    pub out: Option<PathBuf>,
    /// A live progress line on stderr (only when stderr is a terminal).
    pub progress: bool,
    pub seed: u64,
    /// What is driven, for the run's environment (`1.0 -> 2.0`); `None` asks the server
    /// (`INFO server`) for its version.
    pub target_version: Option<String>,
    /// More about the run than the load generator knows (`state_work_units`), added to the
    /// summary's `workload` as they are.
    pub notes: Vec<(String, serde_json::Value)>,
    /// Requests at least this slow are listed one by one in `detail.json` (the report's
    /// dots), up to a bound per second.
    pub slow_threshold: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            targets: Vec::new(),
            admin: None,
            admin_secret: None,
            redis: false,
            redis_wait: false,
            reply_timeout: Duration::from_secs(1),
            mode: Mode::Open { rate_ops_s: 1000 },
            connections: 4,
            pipeline: 16,
            duration: Duration::from_secs(10),
            until_upgrade_end: false,
            tail: Duration::from_secs(1),
            mix: Mix::default(),
            value_bytes: 100,
            keys: 100_000,
            distribution: Distribution::Uniform,
            out: None,
            progress: false,
            seed: 1,
            target_version: None,
            notes: Vec::new(),
            slow_threshold: Duration::from_millis(10),
        }
    }
}

impl Config {
    /// Connections the run opens.
    pub fn connection_count(&self) -> usize {
        match self.mode {
            Mode::Open { .. } => self.connections,
            Mode::Closed { connections } => connections,
        }
    }

    /// `tandem` or `redis`, as `summary.json` names the target.
    pub fn target_name(&self) -> &'static str {
        if self.redis {
            "redis"
        } else {
            "tandem"
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.targets.is_empty() {
            return Err(ConfigError::NoTarget);
        }
        for target in &self.targets {
            check_address(target)?;
        }
        if let Some(admin) = &self.admin {
            check_address(admin)?;
        }
        if self.redis_wait && !self.redis {
            return Err(ConfigError::WaitWithoutRedis);
        }
        if self.redis && self.admin.is_some() {
            return Err(ConfigError::AdminWithRedis);
        }
        if let Mode::Open { rate_ops_s } = self.mode {
            if rate_ops_s == 0 || rate_ops_s > RATE_OPS_S_MAX {
                return Err(ConfigError::Rate(rate_ops_s));
            }
        }
        let connections = self.connection_count();
        if connections == 0 || connections > CONNECTIONS_MAX {
            return Err(ConfigError::Connections(connections));
        }
        if self.pipeline == 0 || self.pipeline > PIPELINE_MAX {
            return Err(ConfigError::Pipeline(self.pipeline));
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            return Err(ConfigError::Duration(self.duration));
        }
        if self.tail > DURATION_MAX {
            return Err(ConfigError::Duration(self.tail));
        }
        if self.mix.total() == 0 {
            return Err(ConfigError::Mix {
                text: self.mix.to_string(),
                why: "the shares add up to 0".into(),
            });
        }
        if self.value_bytes > VALUE_BYTES_MAX {
            return Err(ConfigError::ValueBytes(self.value_bytes));
        }
        if self.keys == 0 || self.keys > KEYS_MAX {
            return Err(ConfigError::Keys(self.keys));
        }
        if self.keys < connections as u64 {
            return Err(ConfigError::FewerKeysThanConnections {
                keys: self.keys,
                connections,
            });
        }
        self.distribution.check()
    }

    /// The load as `summary.json` records it.
    pub fn workload_json(&self) -> serde_json::Value {
        let mut w = serde_json::json!({
            "mode": match self.mode { Mode::Open { .. } => "open", Mode::Closed { .. } => "closed" },
            "connections": self.connection_count(),
            "pipeline": self.pipeline,
            "mix": { "set": self.mix.set, "get": self.mix.get, "session": self.mix.session },
            "session_updates": crate::workload::SESSION_UPDATES,
            "value_bytes": self.value_bytes,
            "keys": self.keys,
            "distribution": self.distribution.to_string(),
            "duration_ms": self.duration.as_millis() as u64,
            "until_upgrade_end": self.until_upgrade_end,
            "seed": self.seed,
        });
        if let Mode::Open { rate_ops_s } = self.mode {
            w["rate_ops_s"] = rate_ops_s.into();
        }
        if self.redis {
            w["redis_wait"] = self.redis_wait.into();
        }
        for (key, value) in &self.notes {
            w[key.as_str()] = value.clone();
        }
        w
    }
}

/// `host:port` with a numeric port (resolution happens when connecting).
fn check_address(addr: &str) -> Result<(), ConfigError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Address(addr.to_string()))
    }
}

/// `1.5s`, `300ms`: a duration as the flags write it.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// Bad input, each naming what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("no target: give the client address of an engine (or of the Redis primary), e.g. --target 127.0.0.1:7401")]
    NoTarget,
    #[error("'{0}' is not an address: expected HOST:PORT, e.g. 127.0.0.1:7401")]
    Address(String),
    #[error("--wait makes Redis writes synchronous and needs --redis (tandem writes always are)")]
    WaitWithoutRedis,
    #[error(
        "--admin subscribes to a tandem supervisor's timeline and cannot be used with --redis"
    )]
    AdminWithRedis,
    #[error("--rate {0}: the rate must be between 1 and {max} ops/s", max = RATE_OPS_S_MAX)]
    Rate(u64),
    #[error("{0} connections: use between 1 and {max}", max = CONNECTIONS_MAX)]
    Connections(usize),
    #[error("--pipeline {0}: use between 1 and {max} requests in flight per connection", max = PIPELINE_MAX)]
    Pipeline(usize),
    #[error("duration {}: use more than 0 and at most 24 h", fmt_duration(*.0))]
    Duration(Duration),
    #[error("--mix '{text}': {why} (e.g. set=70,get=20,session=10)")]
    Mix { text: String, why: String },
    #[error("--value-bytes {0}: at most {max}", max = VALUE_BYTES_MAX)]
    ValueBytes(usize),
    #[error("--keys {0}: use between 1 and {max}", max = KEYS_MAX)]
    Keys(u64),
    #[error("--keys {keys} is fewer than the {connections} connections: each connection owns its own keys (key index = connection index mod connections), so give at least one key per connection")]
    FewerKeysThanConnections { keys: u64, connections: usize },
    #[error("--distribution '{text}': {why}")]
    Distribution { text: String, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            targets: vec!["127.0.0.1:7401".into()],
            ..Config::default()
        }
    }

    #[test]
    fn mixes_parse_and_print() {
        let mix: Mix = "set=70, get=20,session=10".parse().unwrap();
        assert_eq!(
            mix,
            Mix {
                set: 70,
                get: 20,
                session: 10
            }
        );
        assert_eq!(mix.to_string(), "set=70,get=20,session=10");
        assert_eq!("get=1".parse::<Mix>().unwrap().set, 0);
        for bad in ["", "set=0", "put=3", "set", "set=-1", "set=x"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
        let err = "put=3".parse::<Mix>().unwrap_err().to_string();
        assert!(err.contains("unknown operation 'put'"), "{err}");
    }

    #[test]
    fn distributions_parse_and_print() {
        assert_eq!("uniform".parse(), Ok(Distribution::Uniform));
        assert_eq!(
            "zipfian".parse(),
            Ok(Distribution::Zipfian {
                theta: ZIPFIAN_THETA_DEFAULT
            })
        );
        assert_eq!(
            "zipfian:0.5".parse(),
            Ok(Distribution::Zipfian { theta: 0.5 })
        );
        for bad in [
            "zipf",
            "zipfian:1",
            "zipfian:0",
            "zipfian:x",
            "zipfian:-0.5",
        ] {
            assert!(bad.parse::<Distribution>().is_err(), "{bad}");
        }
        assert_eq!(
            Distribution::Zipfian { theta: 0.99 }.to_string(),
            "zipfian:0.99"
        );
    }

    #[test]
    fn validation_names_the_problem() {
        assert_eq!(config().validate(), Ok(()));
        let check = |edit: &dyn Fn(&mut Config), needle: &str| {
            let mut c = config();
            edit(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        check(&|c| c.mode = Mode::Open { rate_ops_s: 0 }, "--rate 0");
        check(&|c| c.targets.clear(), "no target");
        check(&|c| c.targets = vec!["localhost".into()], "HOST:PORT");
        check(&|c| c.redis_wait = true, "needs --redis");
        check(&|c| c.pipeline = 0, "--pipeline 0");
        check(&|c| c.connections = 0, "0 connections");
        check(
            &|c| c.mode = Mode::Closed { connections: 0 },
            "0 connections",
        );
        check(&|c| c.duration = Duration::ZERO, "duration");
        check(&|c| c.keys = 3, "fewer than the 4 connections");
        check(
            &|c| c.distribution = Distribution::Zipfian { theta: 1.5 },
            "between 0 and 1",
        );
        check(
            &|c| {
                c.redis = true;
                c.admin = Some("127.0.0.1:1".into());
            },
            "--admin",
        );
    }

    #[test]
    fn workload_json_names_the_load() {
        let w = config().workload_json();
        assert_eq!(w["mode"], "open");
        assert_eq!(w["rate_ops_s"], 1000);
        assert_eq!(w["mix"]["set"], 70);
        assert!(w.get("redis_wait").is_none());
    }
}
