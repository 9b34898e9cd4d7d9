//! A fleet run: several pairs driven at once, written as one run directory.
//!
//! Each pair gets its own run, exactly as `loadgen --target` would drive it alone (its
//! connections, its keys, its ledger and lost-update check, its timeline subscription and
//! phases), written to `RUN/pairs/NAME/` as a complete run directory that every tool reads.
//! What they share: one clock (so that their seconds line up), one pacing thread (one
//! schedule per pair), one stop, and a [`sink::FleetSink`] that adds each pair's finalized
//! second into the fleet's (an HdrHistogram add per pair and second, nothing per request).
//!
//! The rate (`--rate`) is the fleet's, split evenly over the pairs; connections
//! (`--connections`, `--closed`), pipeline and key space are per pair.
//!
//! At the top of the run directory: `summary.json` (the same schema: the fleet's latency
//! and throughput per period, the sums of the pairs' updates, and a `fleet` section with the
//! pairs and the waves), `slices.json` (the fleet per second), `histograms.hlog` (the fleet's
//! histogram per second, untagged), `campaign.json` (the campaign record at the end, with
//! etcd) and `report.html`.

pub mod discover;
pub mod sink;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ::fleet::keys::{CampaignRecord, CampaignState, Layout, Outcome};
use hdrhistogram::Histogram;
use reports::run::{RunDir, Slice};
use reports::summary::{Fleet, FleetPair, PhaseSummary, Summary, Switchover, Wave, RUN_SCHEMA};
use reports::timeline::{EventKind, Timeline};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::connection::RUNNING;
use crate::record::{latency_of, new_histogram, percentiles_of, SLICE_US};
use crate::{Config, Error, Hooks, Mode, RunResult};

/// Where a fleet run's pair directories go: `RUN/pairs/NAME`.
pub const PAIRS_DIR: &str = "pairs";
/// The campaign record at the end of the run.
pub const CAMPAIGN_FILE: &str = "campaign.json";
/// How often the campaign's record is read while the run waits for its end.
const CAMPAIGN_POLL: Duration = Duration::from_millis(500);
const CONTROL_TICK: Duration = Duration::from_millis(100);

/// One pair to drive.
#[derive(Clone, Debug)]
pub struct PairTarget {
    pub name: String,
    /// As `--target` takes them: any engine of the pair.
    pub targets: Vec<String>,
    /// Its supervisor's admin endpoint (its timeline).
    pub admin: Option<String>,
    pub admin_secret: Option<auth::Secret>,
}

impl PairTarget {
    /// `NAME=ADDR[,ADDR...][,admin=ADDR]`: the `--pair` flag.
    pub fn parse(text: &str) -> Result<PairTarget, String> {
        let (name, rest) = text
            .split_once('=')
            .ok_or_else(|| format!("--pair '{text}': expected NAME=ADDR[,ADDR][,admin=ADDR]"))?;
        let name = name.trim();
        ::fleet::keys::check_name(name).map_err(|e| format!("--pair '{text}': {e}"))?;
        let mut targets = Vec::new();
        let mut admin = None;
        for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.strip_prefix("admin=") {
                Some(a) => admin = Some(a.to_string()),
                None => targets.push(part.to_string()),
            }
        }
        if targets.is_empty() {
            return Err(format!(
                "--pair '{text}': no client address (NAME=ADDR[,ADDR][,admin=ADDR])"
            ));
        }
        Ok(PairTarget {
            name: name.to_string(),
            targets,
            admin,
            admin_secret: None,
        })
    }
}

/// Where the campaign is read from (`--etcd`).
#[derive(Clone, Debug)]
pub struct EtcdSource {
    pub client: ::fleet::Client,
    pub layout: Layout,
}

/// A fleet run.
#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub pairs: Vec<PairTarget>,
    /// The load, as for one pair: `mode`'s rate is the fleet's (split evenly over the
    /// pairs); connections, pipeline, keys are per pair; `out` is the fleet's run
    /// directory. `targets`, `admin` and `until_upgrade_end` are ignored.
    pub load: Config,
    pub etcd: Option<EtcdSource>,
    /// Stop `load.tail` after the campaign ended (with etcd: `P/campaign` completed or
    /// stopped after the run started; without: every pair's timeline saw its upgrade end),
    /// if before `load.duration`.
    pub until_campaign_end: bool,
}

/// What a fleet run measured.
pub struct FleetResult {
    /// The fleet's `summary.json`.
    pub summary: Summary,
    pub slices: Vec<Slice>,
    /// Each pair's run, in the order given.
    pub pairs: Vec<(String, RunResult)>,
    pub campaign: Option<CampaignRecord>,
    pub warnings: Vec<String>,
    pub out: Option<PathBuf>,
}

/// The config of pair `index` of `n`: its share of the rate, its own directory and seed.
fn pair_config(fleet: &FleetConfig, index: usize) -> Result<Config, Error> {
    let n = fleet.pairs.len() as u64;
    let pair = &fleet.pairs[index];
    let mode = match fleet.load.mode {
        Mode::Open { rate_ops_s } => {
            if rate_ops_s < n {
                return Err(Error::Fleet(format!(
                    "--rate {rate_ops_s} is the fleet's rate, split over {n} pairs: give at least 1 op/s per pair"
                )));
            }
            let share = rate_ops_s / n + u64::from((index as u64) < rate_ops_s % n);
            Mode::Open { rate_ops_s: share }
        }
        closed => closed,
    };
    let mut notes = fleet.load.notes.clone();
    notes.push(("fleet_pair".into(), pair.name.clone().into()));
    Ok(Config {
        targets: pair.targets.clone(),
        admin: pair.admin.clone(),
        admin_secret: pair.admin_secret.clone(),
        mode,
        until_upgrade_end: false,
        out: fleet
            .load
            .out
            .as_ref()
            .map(|d| d.join(PAIRS_DIR).join(&pair.name)),
        progress: false,
        // Each pair its own random sequence.
        seed: fleet
            .load
            .seed
            .wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        notes,
        ..fleet.load.clone()
    })
}

/// Checks the pairs: at least one, names unique, no engine address in two pairs (two
/// pairs' loads would write the same keys).
fn check_pairs(pairs: &[PairTarget]) -> Result<(), Error> {
    if pairs.is_empty() {
        return Err(Error::Fleet(
            "no pair to drive: give --pair NAME=ADDR (repeated) or --etcd URL".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut addrs: BTreeMap<&str, &str> = BTreeMap::new();
    for p in pairs {
        if !names.insert(p.name.as_str()) {
            return Err(Error::Fleet(format!("pair '{}' given twice", p.name)));
        }
        for t in &p.targets {
            if let Some(other) = addrs.insert(t.as_str(), p.name.as_str()) {
                if other != p.name {
                    return Err(Error::Fleet(format!(
                        "{t} is in pair '{other}' and in pair '{}': each pair's load owns its keys, so a pair may be driven once",
                        p.name
                    )));
                }
            }
        }
    }
    Ok(())
}

/// [`run`] on a multi-threaded runtime of its own.
pub fn run_blocking(config: FleetConfig) -> Result<FleetResult, Error> {
    let connections = config.pairs.len().max(1) * config.load.connection_count();
    crate::runtime(connections)?.block_on(run(config))
}

/// Reads `P/campaign`, if etcd is given and holds one.
async fn read_campaign(etcd: &EtcdSource) -> Result<Option<CampaignRecord>, String> {
    etcd.client
        .get_json(&etcd.layout.campaign())
        .await
        .map_err(|e| e.to_string())
}

/// Drives every pair until the duration is up or the campaign ended, then writes the
/// pairs' run directories and the fleet's.
pub async fn run(config: FleetConfig) -> Result<FleetResult, Error> {
    check_pairs(&config.pairs)?;
    let n = config.pairs.len();
    let mut configs = Vec::with_capacity(n);
    for i in 0..n {
        let c = pair_config(&config, i)?;
        c.validate()
            .map_err(|e| pair_error(&config.pairs[i].name, e.into()))?;
        configs.push(c);
    }
    let mut warnings = Vec::new();

    // Every pair reached and subscribed before the clock starts.
    let preparing: Vec<_> = configs
        .iter()
        .cloned()
        .map(|c| tokio::spawn(crate::prepare(c)))
        .collect();
    let mut prepared = Vec::with_capacity(n);
    for (i, task) in preparing.into_iter().enumerate() {
        let name = &config.pairs[i].name;
        match task.await {
            Ok(Ok(p)) => prepared.push(p),
            Ok(Err(e)) => return Err(pair_error(name, e)),
            Err(e) => return Err(Error::Fleet(format!("pair '{name}': {e}"))),
        }
    }
    let feeds: Vec<_> = prepared.iter().map(|p| p.feed()).collect();

    let clock = Clock::start_now();
    let started_ms = clock.start_wall_ms();
    let groups: Vec<(u64, usize)> = prepared
        .iter()
        .map(|p| match p.config.mode {
            Mode::Open { rate_ops_s } => (rate_ops_s, p.connections),
            Mode::Closed { .. } => (1, 0),
        })
        .collect();
    let mut pacer = match config.load.mode {
        Mode::Open { .. } => {
            Some(crate::pacer::Pacer::start_groups(clock, &groups).map_err(Error::Runtime)?)
        }
        Mode::Closed { .. } => None,
    };
    let sink = Arc::new(sink::FleetSink::new(n));
    let (stop_tx, stop_rx) = watch::channel(RUNNING);
    let mut tasks = Vec::with_capacity(n);
    for (i, p) in prepared.into_iter().enumerate() {
        let hooks = Hooks {
            own_pacer: None,
            wakers: pacer.as_ref().map(|pc| pc.group_wakers(i)),
            stop: Some(stop_rx.clone()),
            sink: Some((sink.clone(), i)),
        };
        tasks.push(tokio::spawn(crate::drive(p, clock, hooks)));
    }

    // Until the duration is up, or the campaign ended (plus the tail), or every pair's
    // run ended by itself.
    let duration_ns = config.load.duration.as_nanos() as u64;
    let tail_ns = config.load.tail.as_nanos() as u64;
    let mut campaign: Option<CampaignRecord> = None;
    let mut campaign_problem: Option<String> = None;
    let mut last_poll: Option<std::time::Instant> = None;
    let mut ended_at_ms: Option<u64> = None;
    let stop_ns = loop {
        let now_ns = clock.now_ns();
        if let (Some(etcd), true) = (
            &config.etcd,
            last_poll.is_none_or(|t| t.elapsed() >= CAMPAIGN_POLL),
        ) {
            last_poll = Some(std::time::Instant::now());
            match read_campaign(etcd).await {
                Ok(c) => {
                    campaign = c;
                    campaign_problem = None;
                }
                Err(e) => campaign_problem = Some(e),
            }
        }
        if config.until_campaign_end && ended_at_ms.is_none() {
            ended_at_ms = match &config.etcd {
                Some(_) => campaign
                    .as_ref()
                    .filter(|c| c.state != CampaignState::Running && c.updated_ms >= started_ms)
                    .map(|c| c.updated_ms),
                None => {
                    let ends: Vec<Option<u64>> = feeds
                        .iter()
                        .map(|f| f.upgrade_end().map(|(_, e)| e.t_ms))
                        .collect();
                    ends.iter()
                        .all(Option::is_some)
                        .then(|| ends.iter().flatten().copied().max().unwrap_or(started_ms))
                }
            };
        }
        let mut stop_ns = duration_ns;
        if let Some(end_ms) = ended_at_ms {
            let at_ns = (end_ms.saturating_sub(started_ms)).saturating_mul(1_000_000);
            stop_ns = stop_ns.min(at_ns + tail_ns);
        }
        if now_ns >= stop_ns || tasks.iter().all(|t| t.is_finished()) {
            break stop_ns.min(now_ns);
        }
        let wake_ns = stop_ns.min(now_ns + CONTROL_TICK.as_nanos() as u64);
        tokio::time::sleep_until(clock.instant_at_ns(wake_ns).into()).await;
    };
    let _ = stop_tx.send(stop_ns);
    if let Some(p) = &mut pacer {
        p.stop();
    }
    let mut results = Vec::with_capacity(n);
    for (i, task) in tasks.into_iter().enumerate() {
        let name = config.pairs[i].name.clone();
        match task.await {
            Ok(Ok(r)) => results.push((name, r)),
            Ok(Err(e)) => return Err(pair_error(&name, e)),
            Err(e) => return Err(Error::Fleet(format!("pair '{name}': {e}"))),
        }
    }
    drop(stop_tx);
    if let Some(problem) = campaign_problem {
        warnings.push(format!("campaign record: {problem}"));
    }
    if let Some(etcd) = &config.etcd {
        match read_campaign(etcd).await {
            Ok(c) => campaign = c.or(campaign),
            Err(e) => warnings.push(format!("campaign record at the end: {e}")),
        }
    }
    for (name, r) in &results {
        warnings.extend(r.warnings.iter().map(|w| format!("{name}: {w}")));
    }

    let last_slice = results
        .iter()
        .flat_map(|(_, r)| r.slices.last())
        .map(|s| (s.t_ms.saturating_sub(started_ms) * 1000) / SLICE_US)
        .max()
        .unwrap_or(0);
    let recorded = sink.finish(last_slice);
    warnings.extend(recorded.problems.iter().cloned());
    let ended_ms = results
        .iter()
        .map(|(_, r)| r.summary.ended_ms)
        .max()
        .unwrap_or(started_ms);

    let fleet = fleet_section(&results, campaign.as_ref(), started_ms);
    let periods = periods(&fleet.waves, started_ms, ended_ms);
    let slices = fleet_slices(&results, &recorded.seconds, &clock, &periods);
    let phases = period_summaries(
        &periods,
        &recorded.seconds,
        &slices,
        &clock,
        started_ms,
        ended_ms,
    );
    let mut fleet = fleet;
    fleet.periods = phases;
    // The upgrade's phases over the pairs, and `steady` as the fleet's period outside
    // every wave (no pair upgrading).
    let mut phases = upgrade_phases(&results);
    phases.retain(|p| p.name != crate::phase::STEADY);
    if let Some(steady) = fleet
        .periods
        .iter()
        .find(|p| p.name == crate::phase::STEADY)
    {
        phases.insert(0, steady.clone());
    }
    let timeline = fleet_timeline(&results);
    let summary = fleet_summary(&config, &results, fleet, phases, started_ms, ended_ms);

    if let Some(dir) = &config.load.out {
        let run = RunDir::new(dir);
        for (name, _) in &results {
            RunDir::new(dir.join(PAIRS_DIR).join(name)).render_report()?;
        }
        run.write_summary(&summary)?;
        run.write_timeline(&timeline)?;
        run.write_slices(&slices)?;
        crate::output::write_hlog(&run.histograms_path(), &recorded.hlog_body, &clock, true)?;
        if let Some(c) = &campaign {
            let path = dir.join(CAMPAIGN_FILE);
            let mut bytes = serde_json::to_vec_pretty(c).expect("a campaign record is JSON");
            bytes.push(b'\n');
            crate::output::write_atomically(&path, &bytes)?;
        }
        run.render_report()?;
    }
    Ok(FleetResult {
        summary,
        slices,
        pairs: results,
        campaign,
        warnings,
        out: config.load.out.clone(),
    })
}

fn pair_error(name: &str, e: Error) -> Error {
    Error::Fleet(format!("pair '{name}': {e}"))
}

/// A pair's upgrade during the run, as its timeline says.
struct Upgrade {
    start_ms: u64,
    end_ms: Option<u64>,
    outcome: Option<String>,
    message: Option<String>,
}

fn upgrade_of(timeline: Option<&Timeline>, started_ms: u64) -> Option<Upgrade> {
    let events = &timeline?.events;
    let start = events
        .iter()
        .position(|e| e.kind == EventKind::UpgradeStart && e.t_ms + 50 >= started_ms)?;
    let end = events[start..]
        .iter()
        .find(|e| e.kind == EventKind::UpgradeEnd);
    Some(Upgrade {
        start_ms: events[start].t_ms,
        end_ms: end.map(|e| e.t_ms),
        outcome: end.and_then(|e| e.outcome.clone()),
        message: end.and_then(|e| e.message.clone()),
    })
}

/// The pairs and waves of the run.
fn fleet_section(
    results: &[(String, RunResult)],
    campaign: Option<&CampaignRecord>,
    started_ms: u64,
) -> Fleet {
    let mut pairs: Vec<FleetPair> = results
        .iter()
        .map(|(name, r)| {
            let s = &r.summary;
            let upgrade = upgrade_of(r.timeline.as_ref(), started_ms);
            let outcome = match &upgrade {
                None => "not_upgraded",
                Some(u) => match (u.end_ms, u.outcome.as_deref()) {
                    (None, _) => "running",
                    (Some(_), Some("completed")) => "upgraded",
                    (Some(_), Some("rolled_back")) => "rolled_back",
                    (Some(_), _) => "failed",
                },
            };
            FleetPair {
                name: name.clone(),
                dir: format!("{PAIRS_DIR}/{name}"),
                wave: None,
                outcome: outcome.to_string(),
                upgrade_start_ms: upgrade.as_ref().map(|u| u.start_ms),
                upgrade_end_ms: upgrade.as_ref().and_then(|u| u.end_ms),
                acknowledged_updates: s.acknowledged_updates,
                verified_updates: s.verified_updates,
                lost_updates: s.lost_updates,
                switchovers: s.switchovers.len(),
                worst_gap_ms: s
                    .switchovers
                    .iter()
                    .map(|w| w.client_gap_ms)
                    .filter(|g| g.is_finite())
                    .max_by(f64::total_cmp),
                simplex_ms: s.simplex_ms,
                phases: s
                    .phases
                    .iter()
                    .map(|p| PhaseSummary {
                        percentiles: Vec::new(),
                        ..p.clone()
                    })
                    .collect(),
                message: upgrade.and_then(|u| u.message),
            }
        })
        .collect();
    let mut fleet = Fleet::default();
    match campaign {
        Some(c) => {
            fleet.campaign = Some(c.id.clone());
            let (state, reason) = match &c.state {
                CampaignState::Running => ("running", None),
                CampaignState::Completed => ("completed", None),
                CampaignState::Stopped(why) => ("stopped", Some(why.clone())),
            };
            fleet.campaign_state = Some(state.into());
            fleet.campaign_reason = reason;
            for p in &mut pairs {
                if let Some(cp) = c.pairs.get(&p.name) {
                    p.wave = Some(cp.wave + 1);
                    p.outcome = cp.outcome.as_str().to_string();
                    if p.upgrade_start_ms.is_none() {
                        p.upgrade_start_ms = cp.started_ms;
                    }
                    if p.upgrade_end_ms.is_none() {
                        p.upgrade_end_ms = cp.ended_ms.filter(|_| cp.outcome.is_final());
                    }
                    if cp.message.is_some() {
                        p.message = cp.message.clone();
                    }
                }
            }
            for (k, names) in c.waves.iter().enumerate() {
                let mut wave = Wave {
                    wave: k + 1,
                    pairs: names.clone(),
                    ..Wave::default()
                };
                let members: Vec<(Option<u64>, Option<u64>, Outcome)> = names
                    .iter()
                    .map(|name| {
                        let ours = pairs.iter().find(|p| &p.name == name);
                        let cp = c.pairs.get(name);
                        let outcome = cp.map_or(Outcome::Pending, |cp| cp.outcome);
                        let start = ours
                            .and_then(|p| p.upgrade_start_ms)
                            .or(cp.and_then(|cp| cp.started_ms));
                        let end = ours
                            .and_then(|p| p.upgrade_end_ms)
                            .or(cp.and_then(|cp| cp.ended_ms))
                            .filter(|_| outcome.is_final());
                        (start, end, outcome)
                    })
                    .collect();
                wave_times(&mut wave, &members);
                fleet.waves.push(wave);
            }
        }
        None => {
            // No campaign: the upgrades that overlap in time form a wave.
            fleet.waves_inferred = true;
            let mut upgraded: Vec<&mut FleetPair> = pairs
                .iter_mut()
                .filter(|p| p.upgrade_start_ms.is_some())
                .collect();
            upgraded.sort_by_key(|p| p.upgrade_start_ms);
            let mut reach = 0u64;
            for p in upgraded {
                let start = p.upgrade_start_ms.unwrap_or(0);
                if fleet.waves.is_empty() || start > reach {
                    fleet.waves.push(Wave {
                        wave: fleet.waves.len() + 1,
                        ..Wave::default()
                    });
                    reach = 0;
                }
                reach = reach.max(p.upgrade_end_ms.unwrap_or(u64::MAX));
                let wave = fleet.waves.last_mut().expect("pushed");
                wave.pairs.push(p.name.clone());
                p.wave = Some(wave.wave);
            }
            for wave in &mut fleet.waves {
                wave.pairs.sort();
                let members: Vec<(Option<u64>, Option<u64>, Outcome)> = wave
                    .pairs
                    .iter()
                    .filter_map(|name| pairs.iter().find(|p| &p.name == name))
                    .map(|p| {
                        let outcome = match p.outcome.as_str() {
                            "upgraded" => Outcome::Upgraded,
                            "rolled_back" => Outcome::RolledBack,
                            "failed" => Outcome::Failed,
                            _ => Outcome::Running,
                        };
                        (p.upgrade_start_ms, p.upgrade_end_ms, outcome)
                    })
                    .collect();
                wave_times(wave, &members);
            }
        }
    }
    // Wave by wave, then by name: the order of the lanes and the table.
    pairs.sort_by(|a, b| {
        (a.wave.unwrap_or(usize::MAX), &a.name).cmp(&(b.wave.unwrap_or(usize::MAX), &b.name))
    });
    fleet.pairs = pairs;
    fleet
}

/// A wave's span (first start to last end) and state from its pairs'.
fn wave_times(wave: &mut Wave, members: &[(Option<u64>, Option<u64>, Outcome)]) {
    wave.start_ms = members.iter().filter_map(|m| m.0).min();
    let all_final = !members.is_empty() && members.iter().all(|m| m.2.is_final());
    wave.end_ms = if all_final {
        members.iter().filter_map(|m| m.1).max()
    } else {
        None
    };
    let bad = members
        .iter()
        .any(|m| matches!(m.2, Outcome::RolledBack | Outcome::Failed));
    wave.state = if bad {
        "stopped"
    } else if all_final {
        "completed"
    } else if wave.start_ms.is_some() {
        "running"
    } else {
        "not_started"
    }
    .to_string();
}

/// The fleet's periods: each wave that started, `[start, end)` (a wave still running ends
/// with the run), named `wave_K`; the rest of the run is `steady`.
fn periods(waves: &[Wave], started_ms: u64, ended_ms: u64) -> Vec<(String, u64, u64)> {
    waves
        .iter()
        .filter_map(|w| {
            let start = w.start_ms?.max(started_ms);
            let end = w.end_ms.unwrap_or(ended_ms).min(ended_ms);
            (end > start).then(|| (format!("wave_{}", w.wave), start, end))
        })
        .collect()
}

/// The period a moment falls in.
fn period_at(periods: &[(String, u64, u64)], t_ms: u64) -> &str {
    periods
        .iter()
        .rev()
        .find(|(_, s, e)| t_ms >= *s && t_ms < *e)
        .map_or(crate::phase::STEADY, |(name, _, _)| name)
}

/// The fleet per second: the pairs' slices added up (every pair's run has the same clock,
/// so their seconds coincide), latency from the merged histograms.
fn fleet_slices(
    results: &[(String, RunResult)],
    seconds: &[sink::FleetSecond],
    clock: &Clock,
    periods: &[(String, u64, u64)],
) -> Vec<Slice> {
    let mut by_t: BTreeMap<u64, (u64, u64, Option<u64>)> = BTreeMap::new();
    for (_, r) in results {
        for s in &r.slices {
            let e = by_t.entry(s.t_ms).or_insert((0, 0, None));
            e.0 += s.ops;
            e.1 += s.errors;
            if let Some(n) = s.replied {
                e.2 = Some(e.2.unwrap_or(0) + n);
            }
        }
    }
    let mut out = Vec::with_capacity(seconds.len().max(by_t.len()));
    let last = seconds
        .iter()
        .map(|s| s.slice)
        .chain(by_t.keys().map(|t| clock.us_at_wall_ms(*t) / SLICE_US))
        .max();
    let Some(last) = last else {
        return out;
    };
    for k in 0..=last {
        let t_ms = clock.wall_ms_at_us(k * SLICE_US);
        let (ops, errors, replied) = by_t.get(&t_ms).copied().unwrap_or((0, 0, Some(0)));
        let latency = seconds
            .get(k as usize)
            .filter(|s| s.slice == k)
            .or_else(|| seconds.iter().find(|s| s.slice == k))
            .map(|s| s.latency)
            .unwrap_or_default();
        out.push(Slice {
            t_ms,
            phase: period_at(periods, t_ms).to_string(),
            ops,
            errors,
            latency_us: latency,
            replied,
        });
    }
    out
}

/// The fleet's periods as the summary's phases: each wave, then `steady` (the rest of the
/// run), the histograms of the seconds that start in them added up.
fn period_summaries(
    periods: &[(String, u64, u64)],
    seconds: &[sink::FleetSecond],
    slices: &[Slice],
    clock: &Clock,
    started_ms: u64,
    ended_ms: u64,
) -> Vec<PhaseSummary> {
    let mut names: Vec<(String, u64, u64)> = periods.to_vec();
    let waves_ms: u64 = periods.iter().map(|(_, s, e)| e - s).sum();
    let steady_ms = ended_ms.saturating_sub(started_ms).saturating_sub(waves_ms);
    names.insert(0, (crate::phase::STEADY.to_string(), started_ms, ended_ms));
    let mut out = Vec::new();
    for (name, start, end) in names {
        let mut h: Histogram<u64> = new_histogram();
        let (mut ops, mut errors) = (0, 0);
        for s in slices.iter().filter(|s| s.phase == name) {
            ops += s.ops;
            errors += s.errors;
            let k = clock.us_at_wall_ms(s.t_ms) / SLICE_US;
            if let Some(sec) = seconds.iter().find(|x| x.slice == k) {
                if sec.successes > 0 {
                    let _ = h.add(sec.histogram());
                }
            }
        }
        // The rate over the seconds the period was given (the last one cut by the end of
        // the run), so that a period of a second and a half does not read as half the rate.
        let attributed_ms: u64 = slices
            .iter()
            .filter(|s| s.phase == name)
            .map(|s| ended_ms.saturating_sub(s.t_ms).min(SLICE_US / 1000))
            .sum();
        let active_ms = if attributed_ms > 0 {
            attributed_ms
        } else if name == crate::phase::STEADY {
            steady_ms
        } else {
            end - start
        };
        if name == crate::phase::STEADY && ops == 0 && !periods.is_empty() {
            continue;
        }
        out.push(PhaseSummary {
            name,
            start_ms: start,
            end_ms: end,
            ops,
            throughput_ops_s: ops as f64 / (active_ms.max(1) as f64 / 1000.0),
            errors,
            latency_us: latency_of(&h),
            simplex_ms: 0,
            percentiles: percentiles_of(&h),
        });
    }
    out
}

/// The fleet's latency by upgrade phase: for each phase name, every pair's requests while
/// that pair was in it (the pairs' phase histograms added, their ops and errors summed),
/// from the first pair's start of it to the last pair's end; its throughput the sum of the
/// pairs' throughputs in it (the fleet's rate were every pair that went through the phase
/// in it at once); `simplex_ms` the pairs' sum. In the upgrade's order, then the
/// fallback's, then any other name as first met.
fn upgrade_phases(results: &[(String, RunResult)]) -> Vec<PhaseSummary> {
    struct Acc {
        start_ms: u64,
        end_ms: u64,
        ops: u64,
        errors: u64,
        throughput: f64,
        simplex_ms: u64,
        histogram: Histogram<u64>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    for (_, r) in results {
        for (i, p) in r.summary.phases.iter().enumerate() {
            let a = acc.entry(p.name.clone()).or_insert_with(|| {
                order.push(p.name.clone());
                Acc {
                    start_ms: p.start_ms,
                    end_ms: p.end_ms,
                    ops: 0,
                    errors: 0,
                    throughput: 0.0,
                    simplex_ms: 0,
                    histogram: new_histogram(),
                }
            });
            a.start_ms = a.start_ms.min(p.start_ms);
            a.end_ms = a.end_ms.max(p.end_ms);
            a.ops += p.ops;
            a.errors += p.errors;
            a.throughput += p.throughput_ops_s;
            a.simplex_ms += p.simplex_ms;
            if let Some((_, h)) = r.phase_histograms.get(i).filter(|(n, _)| *n == p.name) {
                let _ = a.histogram.add(h);
            }
        }
    }
    let rank = |name: &str| {
        std::iter::once(crate::phase::STEADY)
            .chain(reports::timeline::phase::UPGRADE)
            .chain(reports::timeline::phase::FALLBACK_PATH)
            .position(|n| n == name)
            .unwrap_or(usize::MAX)
    };
    let mut names = order;
    names.sort_by_key(|n| rank(n));
    names
        .into_iter()
        .map(|name| {
            let a = acc.remove(&name).expect("accumulated");
            PhaseSummary {
                name,
                start_ms: a.start_ms,
                end_ms: a.end_ms,
                ops: a.ops,
                throughput_ops_s: a.throughput,
                errors: a.errors,
                latency_us: latency_of(&a.histogram),
                simplex_ms: a.simplex_ms,
                percentiles: percentiles_of(&a.histogram),
            }
        })
        .collect()
}

/// The fleet's timeline: every pair's events, each with its pair's name, in time order.
fn fleet_timeline(results: &[(String, RunResult)]) -> Timeline {
    let mut timeline = Timeline::new();
    for (name, r) in results {
        if let Some(t) = &r.timeline {
            timeline
                .events
                .extend(t.events.iter().map(|e| reports::timeline::Event {
                    pair: Some(name.clone()),
                    ..e.clone()
                }));
        }
    }
    // Stable: a pair's own events keep their order within a millisecond.
    timeline.events.sort_by_key(|e| e.t_ms);
    timeline
}

/// The fleet's `summary.json`.
fn fleet_summary(
    config: &FleetConfig,
    results: &[(String, RunResult)],
    fleet: Fleet,
    phases: Vec<PhaseSummary>,
    started_ms: u64,
    ended_ms: u64,
) -> Summary {
    let sum = |f: fn(&Summary) -> u64| results.iter().map(|(_, r)| f(&r.summary)).sum::<u64>();
    let mut switchovers: Vec<Switchover> = results
        .iter()
        .flat_map(|(name, r)| {
            r.summary.switchovers.iter().map(move |s| Switchover {
                pair: Some(name.clone()),
                ..s.clone()
            })
        })
        .collect();
    switchovers.sort_by_key(|s| s.at_ms);
    let mut simplex_windows: Vec<[u64; 2]> = results
        .iter()
        .flat_map(|(_, r)| r.summary.simplex_windows.iter().copied())
        .collect();
    simplex_windows.sort_unstable();
    let rolled_back = fleet
        .pairs
        .iter()
        .any(|p| matches!(p.outcome.as_str(), "rolled_back" | "failed"));
    let mut workload = config.load.workload_json();
    workload["pairs"] = results.len().into();
    workload["connections_per_pair"] = config.load.connection_count().into();
    if let Mode::Open { rate_ops_s } = config.load.mode {
        workload["rate_ops_s"] = rate_ops_s.into();
        workload["rate_split"] = "even over the pairs".into();
    }
    if let Some(map) = workload.as_object_mut() {
        map.remove("connections");
        map.remove("until_upgrade_end");
    }
    workload["until_campaign_end"] = config.until_campaign_end.into();
    let versions: Vec<&str> = results
        .iter()
        .filter_map(|(_, r)| r.summary.environment.as_ref())
        .map(|e| e.target_version.as_str())
        .collect();
    let environment = results
        .iter()
        .find_map(|(_, r)| r.summary.environment.clone())
        .map(|mut e| {
            let first = versions.first().copied().unwrap_or("");
            e.target_version = if versions.iter().all(|v| *v == first) {
                format!("{} pairs: {first}", results.len())
            } else {
                format!("{} pairs: {}", results.len(), versions.join(" | "))
            };
            e
        });
    Summary {
        schema: RUN_SCHEMA.to_string(),
        outcome: if rolled_back {
            "rolled_back"
        } else {
            "completed"
        }
        .to_string(),
        target: results
            .first()
            .map_or("tandem".to_string(), |(_, r)| r.summary.target.clone()),
        started_ms,
        ended_ms,
        workload,
        phases,
        switchovers,
        acknowledged_updates: sum(|s| s.acknowledged_updates),
        verified_updates: sum(|s| s.verified_updates),
        lost_updates: sum(|s| s.lost_updates),
        simplex_ms: sum(|s| s.simplex_ms),
        simplex_windows,
        environment,
        fleet: Some(fleet),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_flags_parse() {
        let p = PairTarget::parse("p1=127.0.0.1:7401,127.0.0.1:7403,admin=127.0.0.1:7400").unwrap();
        assert_eq!(p.name, "p1");
        assert_eq!(p.targets, vec!["127.0.0.1:7401", "127.0.0.1:7403"]);
        assert_eq!(p.admin.as_deref(), Some("127.0.0.1:7400"));
        assert!(PairTarget::parse("p1").is_err());
        assert!(PairTarget::parse("p/1=127.0.0.1:1").is_err());
        assert!(PairTarget::parse("p1=admin=127.0.0.1:1").is_err());
    }

    #[test]
    fn the_rate_is_split_and_pairs_are_distinct() {
        let pair = |name: &str, addr: &str| PairTarget::parse(&format!("{name}={addr}")).unwrap();
        let config = FleetConfig {
            pairs: vec![
                pair("a", "127.0.0.1:1"),
                pair("b", "127.0.0.1:2"),
                pair("c", "127.0.0.1:3"),
            ],
            load: Config {
                mode: Mode::Open { rate_ops_s: 1000 },
                out: Some("/tmp/x".into()),
                ..Config::default()
            },
            etcd: None,
            until_campaign_end: false,
        };
        let rates: Vec<u64> = (0..3)
            .map(|i| match pair_config(&config, i).unwrap().mode {
                Mode::Open { rate_ops_s } => rate_ops_s,
                _ => 0,
            })
            .collect();
        assert_eq!(rates, vec![334, 333, 333]);
        assert_eq!(
            pair_config(&config, 1).unwrap().out,
            Some(PathBuf::from("/tmp/x/pairs/b"))
        );
        assert!(check_pairs(&config.pairs).is_ok());
        let twice = vec![pair("a", "127.0.0.1:1"), pair("b", "127.0.0.1:1")];
        assert!(check_pairs(&twice)
            .unwrap_err()
            .to_string()
            .contains("in pair 'a' and in pair 'b'"));
        assert!(check_pairs(&[]).is_err());
    }

    #[test]
    fn a_wave_spans_its_pairs_upgrades() {
        let mut w = Wave {
            wave: 1,
            ..Wave::default()
        };
        wave_times(
            &mut w,
            &[
                (Some(10), Some(20), Outcome::Upgraded),
                (Some(12), Some(30), Outcome::RolledBack),
            ],
        );
        assert_eq!(
            (w.start_ms, w.end_ms, w.state.as_str()),
            (Some(10), Some(30), "stopped")
        );
        let periods = periods(&[w], 0, 100);
        assert_eq!(periods, vec![("wave_1".to_string(), 10, 30)]);
        assert_eq!(period_at(&periods, 15), "wave_1");
        assert_eq!(period_at(&periods, 30), "steady");
    }
}
