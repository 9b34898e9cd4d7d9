//! What tandem keeps in etcd, under one prefix (`/tandem` unless `--etcd-prefix` says
//! otherwise):
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `P/pair/NAME` | `PairRecord` (JSON): the pair's epoch, addresses, versions, upgrade, and the supervisor's durable state | the pair's leading supervisor, by a transaction that requires `P/leader/NAME` to be its own |
//! | `P/leader/NAME` | the leading supervisor's id, attached to its etcd lease | a supervisor that found it absent (a transaction on version 0) |
//! | `P/campaign` | `CampaignRecord` (JSON): plan, waves, per-pair outcome | the campaign process that owns `P/campaign-owner`, by a transaction on the key's mod revision |
//! | `P/campaign-owner` | the campaign process's id, attached to its etcd lease | a campaign process that found it absent |
//!
//! An epoch is granted only by writing `P/pair/NAME` with it (so it is in etcd before any
//! engine hears of it), and an engine of a pair with a witness takes a new epoch only if it
//! is the one `P/pair/NAME` holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PREFIX: &str = "/tandem";

/// The keys of one tandem installation in etcd.
#[derive(Clone, Debug)]
pub struct Layout {
    prefix: String,
}

impl Default for Layout {
    fn default() -> Self {
        Layout::new(DEFAULT_PREFIX)
    }
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        Layout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every pair's record: `get_prefix(layout.pairs())`.
    pub fn pairs(&self) -> String {
        format!("{}/pair/", self.prefix)
    }

    pub fn pair(&self, name: &str) -> String {
        format!("{}/pair/{name}", self.prefix)
    }

    pub fn leader(&self, name: &str) -> String {
        format!("{}/leader/{name}", self.prefix)
    }

    pub fn campaign(&self) -> String {
        format!("{}/campaign", self.prefix)
    }

    pub fn campaign_owner(&self) -> String {
        format!("{}/campaign-owner", self.prefix)
    }

    /// The pair name in a key under `pairs()`.
    pub fn pair_name<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.pairs()).filter(|n| !n.contains('/'))
    }
}

/// A pair name: what can be a path segment of a key and a glob's subject.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("pair name {name:?}: 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "pair name {name:?}: letters, digits, '-', '_' and '.' only"
        ));
    }
    Ok(())
}

/// One engine of a pair, as the fleet sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineRecord {
    pub name: String,
    pub client_addr: String,
    pub app_version: String,
}

/// A pair's upgrade, as its supervisor records it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct UpgradeRecord {
    pub to: String,
    /// Who asked (a campaign's `campaign-id/pair`), so that a resumed campaign knows
    /// whether the upgrade it finds is the one it started.
    #[serde(default)]
    pub tag: Option<String>,
    /// The phase it is in (the timeline's phase names), while it runs.
    #[serde(default)]
    pub phase: Option<String>,
    /// `completed`, `rolled_back` or `failed`; none while it runs.
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    pub started_ms: u64,
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

/// `P/pair/NAME`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PairRecord {
    pub name: String,
    /// The epoch granted last: an engine takes a new epoch only if it is this one.
    pub epoch: u64,
    /// Id of the supervisor that wrote this (`host/pid/start`).
    pub supervisor: String,
    /// The supervisor's admin endpoint (`tandem status --admin`, the campaign's `UPGRADE`).
    pub admin: String,
    /// Its Sentinel-compatible discovery port (the load generator's `--target`).
    #[serde(default)]
    pub sentinel: Option<String>,
    /// The active engine's name.
    pub active: String,
    pub engines: Vec<EngineRecord>,
    /// The version both engines run with every feature on (none while they differ).
    #[serde(default)]
    pub version: Option<String>,
    /// `serving`, `simplex`, `unavailable`, or the upgrade's phase.
    pub phase: String,
    #[serde(default)]
    pub upgrade: Option<UpgradeRecord>,
    pub updated_ms: u64,
    /// The supervisor's own durable state (its `supervisor.json`), for a spare that takes
    /// the pair over. Opaque here.
    #[serde(default)]
    pub state: serde_json::Value,
}

/// What became of one pair in a campaign.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Not started.
    Pending,
    /// The campaign recorded that it starts this pair's upgrade (before asking for it).
    Running,
    /// On the new version, features enabled.
    Upgraded,
    /// The new version was not acceptable: the pair is back on the old one.
    RolledBack,
    /// The upgrade could not be carried out (the pair was unreachable, refused it...).
    Failed,
}

impl Outcome {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Outcome::Upgraded | Outcome::RolledBack | Outcome::Failed
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Running => "running",
            Outcome::Upgraded => "upgraded",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
        }
    }
}

/// One pair of a campaign.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CampaignPair {
    pub wave: usize,
    pub outcome: Outcome,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub ended_ms: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Where a campaign stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum CampaignState {
    Running,
    /// Stopped on a pair that rolled back or failed; nothing more is started.
    Stopped(String),
    Completed,
}

/// `P/campaign`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CampaignRecord {
    /// `to-V-<created ms>`: the tag of each pair's upgrade is `id/pair`.
    pub id: String,
    pub to: String,
    /// The `--pairs` glob it was planned with.
    pub pairs_glob: String,
    /// Pair names, wave by wave (the first is the canary).
    pub waves: Vec<Vec<String>>,
    pub parallel: usize,
    pub continue_on_rollback: bool,
    /// The arguments passed to each pair's `UPGRADE` after the version.
    pub upgrade_args: Vec<String>,
    pub pairs: BTreeMap<String, CampaignPair>,
    pub state: CampaignState,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Times a campaign process took the campaign over (1 for the first).
    #[serde(default)]
    pub runs: u32,
}

impl CampaignRecord {
    /// The wave being worked on: the first with a pair not final.
    pub fn current_wave(&self) -> Option<usize> {
        // One pass over the pairs (each knows its wave), not a lookup by name for each pair
        // of the waves done: the campaign asks this at every turn, and the fleet simulator
        // runs thousands of turns over 1,000 pairs.
        self.pairs
            .values()
            .filter(|p| !p.outcome.is_final())
            .map(|p| p.wave)
            .min()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.pairs.values().filter(|p| p.outcome == outcome).count()
    }
}

/// Whether `name` matches `glob` (`*` any run of characters, `?` one; nothing else special).
pub fn glob_match(glob: &str, name: &str) -> bool {
    fn go(g: &[u8], n: &[u8]) -> bool {
        match (g.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&g[1..], n) || (!n.is_empty() && go(g, &n[1..])),
            (Some(b'?'), Some(_)) => go(&g[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&g[1..], &n[1..]),
            _ => false,
        }
    }
    go(glob.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_a_shell_would() {
        assert!(glob_match("*", "p1"));
        assert!(glob_match("p?", "p1"));
        assert!(!glob_match("p?", "p10"));
        assert!(glob_match("site-a-*", "site-a-7"));
        assert!(!glob_match("site-a-*", "site-b-7"));
        assert!(glob_match("*-7", "site-b-7"));
    }

    #[test]
    fn keys_live_under_the_prefix() {
        let l = Layout::new("/tandem/");
        assert_eq!(l.pair("p1"), "/tandem/pair/p1");
        assert_eq!(l.pair_name("/tandem/pair/p1"), Some("p1"));
        assert_eq!(l.leader("p1"), "/tandem/leader/p1");
        assert!(check_name("p-1.a_b").is_ok());
        assert!(check_name("p/1").is_err());
        assert!(check_name("").is_err());
    }
}
