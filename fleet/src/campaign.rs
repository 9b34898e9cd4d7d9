//! An upgrade campaign's decisions, without IO: the plan (which pairs, in which waves), and
//! what to do next given the campaign's record and what the driver observed. The campaign
//! process (`tandem campaign`, `engine/src/campaign.rs`) and the fleet simulator drive this
//! same code; each owns its clock, its etcd (or a model of it) and its calls to pairs.
//!
//! What is durable is the [`CampaignRecord`] (in etcd, `P/campaign`); what one campaign
//! process knows besides (which pairs it asked, which calls are in flight) is [`Campaign`]'s
//! memo, lost with the process. The rules that keep a pair from being upgraded twice or
//! skipped:
//!
//! - A pair goes Pending -> Running in the record, and the record is durable, before the
//!   pair's supervisor is asked ([`Next::upgrade`] lists a pair only once [`Campaign::persisted`]
//!   was called after it was marked).
//! - The ask carries the tag `CAMPAIGN_ID/PAIR`; the supervisor makes the tag durable in its
//!   pair record before it starts and refuses a tag it already ran.
//! - A Running pair this process has no call for (found on resume, or after a refusal or a
//!   lost call) is looked at in etcd: its upgrade record with our tag gives the outcome (or
//!   says to wait for it); a pair already on the target version is upgraded; otherwise it was
//!   never started and is asked now (again, up to [`MAX_ASKS`] times in one process: a
//!   supervisor that cannot record the tag, or is busy, refuses; then the pair failed).
//! - No pair of wave k+1 starts before every pair of wave k is final; at most `parallel`
//!   pairs are Running; a rollback or failure stops the starts (unless
//!   `continue_on_rollback`), and the campaign is Stopped once no pair runs any more.

use std::collections::BTreeMap;

use crate::keys::{CampaignPair, CampaignRecord, CampaignState, Outcome, PairRecord};

/// How the pairs are cut into waves.
#[derive(Clone, Debug, PartialEq)]
pub enum WaveSpec {
    /// `1,2,4`: the sizes of the first waves; the last size repeats for the rest.
    Sizes(Vec<usize>),
    /// `10%`: a canary of one pair, then waves of this share of the fleet (at least one pair).
    Percent(f64),
    /// The default: 1, 2, 4, 8, ... (a canary, then doubling).
    Doubling,
}

impl WaveSpec {
    pub fn parse(text: &str) -> Result<WaveSpec, String> {
        let text = text.trim();
        if text.is_empty() || text == "double" || text == "doubling" {
            return Ok(WaveSpec::Doubling);
        }
        if let Some(p) = text.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("waves {text:?}: expected a percentage such as 10%"))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "waves {text:?}: a percentage above 0 and at most 100"
                ));
            }
            return Ok(WaveSpec::Percent(p));
        }
        let sizes = text
            .split(',')
            .map(|s| match s.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "waves {text:?}: expected sizes such as 1,2,4 (each at least 1) or a percentage such as 10%"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WaveSpec::Sizes(sizes))
    }

    /// The sizes of the waves over `n` pairs (they add up to `n`).
    pub fn sizes(&self, n: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut left = n;
        let mut i = 0usize;
        while left > 0 {
            let want = match self {
                WaveSpec::Sizes(s) => s[i.min(s.len() - 1)],
                WaveSpec::Percent(_) if i == 0 => 1,
                WaveSpec::Percent(p) => ((n as f64 * p / 100.0).floor() as usize).max(1),
                WaveSpec::Doubling => 1usize.checked_shl(i.min(62) as u32).unwrap_or(usize::MAX),
            };
            let take = want.min(left);
            out.push(take);
            left -= take;
            i += 1;
        }
        out
    }
}

impl std::fmt::Display for WaveSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaveSpec::Sizes(s) => {
                let s: Vec<String> = s.iter().map(usize::to_string).collect();
                f.write_str(&s.join(","))
            }
            WaveSpec::Percent(p) => write!(f, "{p}%"),
            WaveSpec::Doubling => f.write_str("1,2,4,8,..."),
        }
    }
}

/// What a new campaign is planned with, besides its pairs and waves.
#[derive(Clone, Debug)]
pub struct Settings {
    pub to: String,
    pub pairs_glob: String,
    pub parallel: usize,
    pub continue_on_rollback: bool,
    /// What each pair's `UPGRADE` carries after the version (not the tag: that is added).
    pub upgrade_args: Vec<String>,
    pub now_ms: u64,
}

/// A campaign's id: `to-V-<created ms>`.
pub fn campaign_id(to: &str, now_ms: u64) -> String {
    format!("to-{to}-{now_ms}")
}

/// The tag a campaign's upgrade of one pair carries: `CAMPAIGN_ID/PAIR`.
pub fn tag(campaign_id: &str, pair: &str) -> String {
    format!("{campaign_id}/{pair}")
}

/// A new campaign over `names` (sorted here; the first is the canary).
pub fn plan(names: &[String], spec: &WaveSpec, s: Settings) -> CampaignRecord {
    let mut names: Vec<String> = names.to_vec();
    names.sort();
    names.dedup();
    let mut waves = Vec::new();
    let mut rest = names.as_slice();
    for size in spec.sizes(names.len()) {
        let (wave, after) = rest.split_at(size);
        waves.push(wave.to_vec());
        rest = after;
    }
    let mut pairs = BTreeMap::new();
    for (k, wave) in waves.iter().enumerate() {
        for name in wave {
            pairs.insert(
                name.clone(),
                CampaignPair {
                    wave: k,
                    outcome: Outcome::Pending,
                    started_ms: None,
                    ended_ms: None,
                    message: None,
                },
            );
        }
    }
    CampaignRecord {
        id: campaign_id(&s.to, s.now_ms),
        to: s.to,
        pairs_glob: s.pairs_glob,
        waves,
        parallel: s.parallel.max(1),
        continue_on_rollback: s.continue_on_rollback,
        upgrade_args: s.upgrade_args,
        pairs,
        state: CampaignState::Running,
        created_ms: s.now_ms,
        updated_ms: s.now_ms,
        runs: 1,
    }
}

/// The outcome an upgrade record's `outcome` names.
pub fn outcome_of(upgrade_outcome: &str) -> Outcome {
    match upgrade_outcome {
        "completed" => Outcome::Upgraded,
        "rolled_back" => Outcome::RolledBack,
        _ => Outcome::Failed,
    }
}

/// Why the campaign stops (none: it goes on): the first pair, by end time, that rolled back
/// or failed, unless the campaign continues past those.
pub fn stop_reason(r: &CampaignRecord) -> Option<String> {
    if r.continue_on_rollback {
        return None;
    }
    r.pairs
        .iter()
        .filter(|(_, p)| matches!(p.outcome, Outcome::RolledBack | Outcome::Failed))
        .min_by_key(|(name, p)| (p.ended_ms.unwrap_or(u64::MAX), (*name).clone()))
        .map(|(name, p)| {
            let what = match p.outcome {
                Outcome::RolledBack => "rolled back",
                _ => "failed",
            };
            match &p.message {
                Some(m) => format!("{name} {what}: {m}"),
                None => format!("{name} {what}"),
            }
        })
}

/// How many times one process asks a pair whose supervisor refused it up front or could not
/// be reached (and shows no upgrade of ours), before the pair counts as failed. A `BUSY`
/// refusal or a call cut after it was sent ([`Event::Cut`]) is not counted: the supervisor
/// may hold that very request, not yet recorded, and the pair is looked at and asked again
/// (a re-ask meets `BUSY` while it is held, and the tag in etcd once it started).
pub const MAX_ASKS: u32 = 3;

/// The refusal code of a supervisor busy with an upgrade (the first word of its error).
pub const BUSY: &str = "BUSY";

/// What this process knows of one Running pair beyond the record.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    /// Marked Running; asked once the record is durable.
    ToAsk,
    /// Its `UPGRADE` call is in flight.
    InFlight,
    /// Its pair record must be read now (resumed, refused, or the call was lost), with why
    /// the last ask did not start it.
    Look { last_error: Option<String> },
    /// Our upgrade runs there and its caller is gone: read its record now and then.
    Watch,
}

#[derive(Clone, Debug)]
struct Memo {
    call: Call,
    asks: u32,
}

/// What the driver observed.
// `Found` carries a whole pair record: events are few (a handful per pair and campaign).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Event {
    /// The `UPGRADE` call answered with the upgrade's report.
    Ended {
        pair: String,
        outcome: Outcome,
        message: Option<String>,
    },
    /// The supervisor refused the `UPGRADE` (any error reply; its first word is its code).
    Refused { pair: String, message: String },
    /// The call could not be made (no connection, or the supervisor did not take the
    /// secret): the request never reached the supervisor.
    NoAnswer { pair: String, message: String },
    /// The request was sent, and no answer came (the connection was lost, the answer was
    /// unreadable): whether the supervisor took it is unknown.
    Cut { pair: String, message: String },
    /// The pair's record as read from etcd (none: the pair is not registered).
    Found {
        pair: String,
        record: Option<PairRecord>,
    },
}

/// What the driver does next, in this order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Next {
    /// The record changed: write it (a transaction on its mod revision), then call
    /// [`Campaign::persisted`]. Nothing below is listed while the record is not durable.
    pub persist: bool,
    /// Ask these pairs' supervisors to upgrade (`UPGRADE to ... tag ID/PAIR`), each answer an
    /// [`Event::Ended`], [`Event::Refused`], [`Event::NoAnswer`] or [`Event::Cut`].
    pub upgrade: Vec<String>,
    /// Read these pairs' records now and report each as [`Event::Found`].
    pub look: Vec<String>,
    /// Our upgrades run in these pairs with no call of ours waiting on them: read their
    /// records again after a while ([`Event::Found`]).
    pub watch: Vec<String>,
    /// The campaign is over (Completed or Stopped), and durable.
    pub finished: bool,
}

/// A campaign as one process drives it: the record, and the process's memo.
#[derive(Clone, Debug)]
pub struct Campaign {
    record: CampaignRecord,
    memo: BTreeMap<String, Memo>,
    dirty: bool,
}

impl Campaign {
    /// A campaign as found in etcd (new, or left by a process that is gone): every pair the
    /// record shows Running is looked at before anything else is decided for it.
    pub fn resume(record: CampaignRecord) -> Campaign {
        let memo = record
            .pairs
            .iter()
            .filter(|(_, p)| p.outcome == Outcome::Running)
            .map(|(name, _)| {
                (
                    name.clone(),
                    Memo {
                        call: Call::Look { last_error: None },
                        asks: 0,
                    },
                )
            })
            .collect();
        Campaign {
            record,
            memo,
            dirty: false,
        }
    }

    pub fn record(&self) -> &CampaignRecord {
        &self.record
    }

    /// Whether the record holds changes not yet durable.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// The driver wrote the record (as it was when `next` last returned).
    pub fn persisted(&mut self) {
        self.dirty = false;
    }

    /// Records the number of processes that ran the campaign (the driver's takeover).
    pub fn took_over(&mut self, now_ms: u64) {
        self.record.runs += 1;
        self.touch(now_ms);
    }

    fn touch(&mut self, now_ms: u64) {
        self.record.updated_ms = now_ms.max(self.record.updated_ms);
        self.dirty = true;
    }

    fn tag(&self, pair: &str) -> String {
        tag(&self.record.id, pair)
    }

    fn running(&self) -> usize {
        self.record.count(Outcome::Running)
    }

    fn finish(&mut self, pair: &str, outcome: Outcome, message: Option<String>, now_ms: u64) {
        let Some(p) = self.record.pairs.get_mut(pair) else {
            return;
        };
        if p.outcome != Outcome::Running {
            return;
        }
        p.outcome = outcome;
        p.message = message;
        p.ended_ms = Some(now_ms);
        self.memo.remove(pair);
        self.touch(now_ms);
    }

    /// Takes what the driver observed.
    pub fn observe(&mut self, event: Event, now_ms: u64) {
        let pair = match &event {
            Event::Ended { pair, .. }
            | Event::Refused { pair, .. }
            | Event::NoAnswer { pair, .. }
            | Event::Cut { pair, .. }
            | Event::Found { pair, .. } => pair.clone(),
        };
        // Only a Running pair is waited on; anything else about it is old news.
        if self.record.pairs.get(&pair).map(|p| p.outcome) != Some(Outcome::Running) {
            return;
        }
        // Whether an answer says the ask did not start the upgrade (counted towards
        // MAX_ASKS), or leaves it open (BUSY, a cut call: not counted).
        let not_started = match &event {
            Event::Refused { message, .. } => message.split_whitespace().next() != Some(BUSY),
            Event::NoAnswer { .. } => true,
            _ => false,
        };
        match event {
            Event::Ended {
                outcome, message, ..
            } => {
                let outcome = if outcome.is_final() {
                    outcome
                } else {
                    Outcome::Failed
                };
                self.finish(&pair, outcome, message, now_ms);
            }
            Event::Refused { message, .. }
            | Event::NoAnswer { message, .. }
            | Event::Cut { message, .. } => {
                // Whether the upgrade started all the same is in the pair's record.
                let asks = self.memo.get(&pair).map_or(0, |m| m.asks);
                let asks = if not_started {
                    asks
                } else {
                    asks.saturating_sub(1)
                };
                self.memo.insert(
                    pair,
                    Memo {
                        call: Call::Look {
                            last_error: Some(message),
                        },
                        asks,
                    },
                );
            }
            Event::Found { record, .. } => self.found(&pair, record, now_ms),
        }
    }

    fn found(&mut self, pair: &str, record: Option<PairRecord>, now_ms: u64) {
        let memo = self.memo.get(pair).cloned().unwrap_or(Memo {
            call: Call::Look { last_error: None },
            asks: 0,
        });
        let last_error = match &memo.call {
            // A call is on its way or its answer will come: what etcd shows now may be from
            // before the supervisor took it.
            Call::ToAsk | Call::InFlight => return,
            Call::Look { last_error } => last_error.clone(),
            Call::Watch => None,
        };
        let Some(record) = record else {
            self.finish(
                pair,
                Outcome::Failed,
                Some("the pair is not registered in etcd".into()),
                now_ms,
            );
            return;
        };
        let ours = self.tag(pair);
        match record
            .upgrade
            .as_ref()
            .filter(|u| u.tag.as_deref() == Some(&ours))
        {
            Some(u) => match &u.outcome {
                Some(o) => {
                    let message = u.message.clone();
                    let ended = u.ended_ms.unwrap_or(now_ms);
                    self.finish(pair, outcome_of(o), message, ended);
                }
                None => {
                    self.memo.insert(
                        pair.to_string(),
                        Memo {
                            call: Call::Watch,
                            asks: memo.asks,
                        },
                    );
                }
            },
            None if record.version.as_deref() == Some(self.record.to.as_str()) => {
                let message = Some(format!("already on {}", self.record.to));
                self.finish(pair, Outcome::Upgraded, message, now_ms);
            }
            // Not started. Asked often enough: the pair failed, for the last reason given.
            None if memo.asks >= MAX_ASKS => {
                let why = last_error.unwrap_or_else(|| "not started".into());
                self.finish(pair, Outcome::Failed, Some(why), now_ms);
            }
            None => {
                // Ask (again): the record already says Running, durably; a supervisor that
                // took an earlier ask shows our tag, and refuses a tag it already ran.
                self.memo.insert(
                    pair.to_string(),
                    Memo {
                        call: Call::ToAsk,
                        asks: memo.asks,
                    },
                );
            }
        }
    }

    /// What to do now.
    pub fn next(&mut self, now_ms: u64) -> Next {
        let mut next = Next::default();
        if self.record.state != CampaignState::Running {
            next.persist = self.dirty;
            next.finished = !self.dirty;
            return next;
        }
        let stop = stop_reason(&self.record);
        if stop.is_none() {
            if let Some(k) = self.record.current_wave() {
                let free = self.record.parallel.saturating_sub(self.running());
                let starting: Vec<String> = self.record.waves[k]
                    .iter()
                    .filter(|p| self.record.pairs[*p].outcome == Outcome::Pending)
                    .take(free)
                    .cloned()
                    .collect();
                for name in starting {
                    let p = self.record.pairs.get_mut(&name).expect("planned");
                    p.outcome = Outcome::Running;
                    p.started_ms = Some(now_ms);
                    self.memo.insert(
                        name,
                        Memo {
                            call: Call::ToAsk,
                            asks: 0,
                        },
                    );
                    self.touch(now_ms);
                }
            }
        }
        if self.running() == 0 {
            let state = match stop {
                Some(why) => CampaignState::Stopped(why),
                None if self.record.current_wave().is_none() => CampaignState::Completed,
                None => CampaignState::Running,
            };
            if state != CampaignState::Running {
                self.record.state = state;
                self.touch(now_ms);
            }
        }
        next.persist = self.dirty;
        if !self.dirty {
            for (name, memo) in self.memo.iter_mut() {
                match memo.call {
                    Call::ToAsk => {
                        memo.call = Call::InFlight;
                        memo.asks += 1;
                        next.upgrade.push(name.clone());
                    }
                    Call::Look { .. } => next.look.push(name.clone()),
                    Call::Watch => next.watch.push(name.clone()),
                    Call::InFlight => {}
                }
            }
            next.finished = self.record.state != CampaignState::Running;
        }
        next
    }
}

pub mod model;
#[cfg(test)]
mod tests;
