//! `tandem campaign`: upgrades the pairs registered in etcd in waves, driving
//! [`fleet::campaign`]'s decisions: the campaign's record is `P/campaign`, written only by a
//! transaction on its mod revision while this process owns `P/campaign-owner` (a key on its
//! etcd lease); each pair's upgrade runs in its supervisor (`UPGRADE V ... tag ID/PAIR` on the
//! admin endpoint its `P/pair/NAME` names). With etcd out of reach the campaign pauses (no
//! pair starts; upgrades already asked go on in their supervisors) and says so, and carries
//! on when etcd is back. `tandem campaign status` is [`status`].

pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fleet::campaign::{Campaign, Event, Settings, WaveSpec};
use fleet::keys::{CampaignRecord, CampaignState, Layout, Outcome, PairRecord};
use fleet::{Compare, Op};
use replicator::Secret;
use reports::timeline::now_ms;
use resp::Reply;
use tokio::sync::mpsc;

use crate::upgrade::{Options, Report};

/// `tandem campaign ...`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CampaignCli {
    #[command(subcommand)]
    pub command: Option<CampaignCmd>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum CampaignCmd {
    /// The fleet at a glance: the campaign (id, target, state, wave, counts) and one line per
    /// registered pair (version, active engine, epoch, phase, its outcome in the campaign).
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print the raw JSON ({"campaign", "owner", "pairs"}).
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd's client URLs (http://host:port, comma-separated).
    #[arg(long, value_name = "URLS")]
    pub etcd: String,
    /// The prefix of tandem's keys in etcd.
    #[arg(long, value_name = "PREFIX", default_value = fleet::keys::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// etcd's client URLs (http://host:port, comma-separated).
    #[arg(long, value_name = "URLS")]
    pub etcd: Option<String>,
    /// The prefix of tandem's keys in etcd.
    #[arg(long, value_name = "PREFIX", default_value = fleet::keys::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// The version to upgrade every pair to (1.0 or 2.0). Run the same command again to
    /// resume the campaign after its process died.
    #[arg(long, value_name = "V")]
    pub to: Option<String>,
    /// Resume the unfinished campaign in etcd as it was planned, whatever its options.
    #[arg(long, conflicts_with_all = ["to", "pairs", "waves", "parallel", "continue_on_rollback"])]
    pub resume: bool,
    /// Only the registered pairs whose name matches (`*` any run of characters, `?` one).
    #[arg(long, value_name = "GLOB", default_value = "*")]
    pub pairs: String,
    /// Wave sizes: `1,2,4` (the last size repeats), or `10%` (a canary of one pair, then
    /// waves of 10 % of the pairs); default 1,2,4,8,... A wave starts once every pair of the
    /// one before is done.
    #[arg(long, value_name = "SPEC", value_parser = WaveSpec::parse)]
    pub waves: Option<WaveSpec>,
    /// Pairs upgrading at once, at most.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub parallel: u32,
    /// Go on after a pair rolls back or fails (by default the campaign stops there: no
    /// further pair starts).
    #[arg(long)]
    pub continue_on_rollback: bool,
    /// Upgrade to a deliberately faulty build (slow, errors), to see the campaign stop.
    #[arg(long, value_parser = ["slow", "errors"])]
    pub fault: Option<String>,
    /// Each pair's baseline measurement (as `tandem upgrade --baseline-ms`).
    #[arg(long, alias = "baseline", value_name = "DURATION", default_value = "5000", value_parser = cli::parse_duration_ms)]
    pub baseline_ms: Duration,
    /// Each pair's evaluation of the new version.
    #[arg(long, alias = "evaluate", value_name = "DURATION", default_value = "5000", value_parser = cli::parse_duration_ms)]
    pub evaluate_ms: Duration,
    /// How long each pair runs in its final state before its upgrade is done.
    #[arg(long, alias = "settle", value_name = "DURATION", default_value = "3000", value_parser = cli::parse_duration_ms)]
    pub settle_ms: Duration,
    /// A reloaded engine must catch up within this long.
    #[arg(long, value_name = "DURATION", default_value = "60000", value_parser = cli::parse_duration_ms)]
    pub catch_up_timeout_ms: Duration,
    /// Acceptance: error replies per command, at most (0.01 = 1 %).
    #[arg(long, default_value_t = 0.01)]
    pub max_error_rate: f64,
    /// Acceptance: p99 latency at most this many times the baseline's...
    #[arg(long, default_value_t = 3.0)]
    pub p99_factor: f64,
    /// ...or the baseline's plus this, whichever is larger.
    #[arg(long, value_name = "DURATION", default_value = "2", value_parser = cli::parse_duration_ms)]
    pub p99_slack_ms: Duration,
    /// The campaign process's etcd lease: another process takes the campaign over this long
    /// after this one died.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = cli::parse_duration)]
    pub owner_ttl: Duration,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RunArgs {
    fn options(&self) -> Options {
        Options {
            fault: self.fault.clone(),
            baseline_ms: millis(self.baseline_ms),
            evaluate_ms: millis(self.evaluate_ms),
            settle_ms: millis(self.settle_ms),
            catch_up_timeout_ms: millis(self.catch_up_timeout_ms),
            max_error_rate: self.max_error_rate,
            p99_factor: self.p99_factor,
            p99_slack_ms: self.p99_slack_ms.as_secs_f64() * 1e3,
            ..Options::default()
        }
    }
}

/// Exit code of a campaign that did not upgrade every pair (stopped, or went on past one).
pub const EXIT_NOT_ALL_UPGRADED: i32 = 3;

/// Runs `tandem campaign [status]`; the process's exit code.
pub fn main(c: CampaignCli, secret_file: Option<&std::path::Path>) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match c.command {
        Some(CampaignCmd::Status { etcd, json }) => {
            runtime.block_on(status::run(&etcd.etcd, &etcd.etcd_prefix, json))?;
            Ok(0)
        }
        None => {
            let args = c.run;
            let Some(etcd) = args.etcd.clone() else {
                bail!("--etcd is required: where the pairs are registered (http://host:port)");
            };
            if args.to.is_none() && !args.resume {
                bail!("say --to V (the version to upgrade to), or --resume to go on with the campaign in etcd");
            }
            if let Some(to) = &args.to {
                crate::sessions::AppVersion::parse(to).map_err(anyhow::Error::msg)?;
            }
            let secret = Secret::resolve(secret_file)?.1;
            runtime.block_on(run(&etcd, args, secret))
        }
    }
}

/// This process, as `P/campaign-owner` names it: `host/pid/start ms`.
fn process_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}/{}/{}", std::process::id(), now_ms())
}

/// The campaign process's hold on `P/campaign-owner`.
struct Owner {
    id: String,
    key: String,
    lease: i64,
    ttl: Duration,
    /// Set by the keep-alive task when etcd says the lease expired.
    expired: Arc<AtomicBool>,
}

impl Owner {
    /// Takes `P/campaign-owner`, waiting for a dead owner's lease to expire; refuses while
    /// another owner lives (keeps its key alive past its TTL).
    async fn acquire(
        client: &fleet::Client,
        layout: &Layout,
        ttl: Duration,
    ) -> anyhow::Result<Owner> {
        let id = process_id();
        let key = layout.campaign_owner();
        let ttl_s = ttl.as_secs().max(2) as i64;
        let mut waited_for: Option<(i64, Instant)> = None;
        loop {
            let lease = client.lease_grant(ttl_s).await.context("etcd")?;
            let txn = client
                .txn(
                    &[Compare::Version(key.clone(), 0)],
                    &[Op::Put {
                        key: key.clone(),
                        value: id.clone().into_bytes(),
                        lease,
                    }],
                    &[Op::Get(key.clone())],
                )
                .await
                .context("etcd")?;
            if txn.succeeded {
                let expired = Arc::new(AtomicBool::new(false));
                return Ok(Owner {
                    id,
                    key,
                    lease,
                    ttl: Duration::from_secs(ttl_s as u64),
                    expired,
                });
            }
            let _ = client.lease_revoke(lease).await;
            let holder = txn.gets.first().and_then(|g| g.first()).cloned();
            let Some(holder) = holder else { continue };
            let who = String::from_utf8_lossy(&holder.value).into_owned();
            match waited_for {
                Some((rev, since)) if rev == holder.create_revision => {
                    // Still the same holder's key: it kept its lease (of the same TTL as
                    // ours, --owner-ttl) alive, so it lives.
                    if since.elapsed() > ttl + Duration::from_secs(2) {
                        bail!(
                            "another campaign process ({who}) drives the campaign and is alive (it kept {key} on its lease for {:.0} s); stop it first, or follow it with `tandem campaign status`",
                            since.elapsed().as_secs_f64()
                        );
                    }
                }
                _ => {
                    println!(
                        "the campaign is owned by {who}: waiting up to {} s for its lease to expire (a live owner keeps it)",
                        (ttl + Duration::from_secs(2)).as_secs()
                    );
                    waited_for = Some((holder.create_revision, Instant::now()));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Keeps the lease alive in the background.
    fn keep_alive(&self, client: fleet::Client) {
        let lease = self.lease;
        let every = self.ttl / 3;
        let expired = self.expired.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match client.lease_keepalive(lease).await {
                    Ok(_) => {}
                    Err(e) if e.is_unreachable() => {}
                    Err(_) => {
                        expired.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }

    /// After the lease expired (etcd out of reach longer than its TTL): takes the key again
    /// on a new lease, unless another process has it.
    async fn retake(&mut self, client: &fleet::Client) -> Result<(), Stop> {
        let ttl_s = self.ttl.as_secs() as i64;
        let lease = client.lease_grant(ttl_s).await.map_err(Stop::etcd)?;
        let txn = client
            .txn(
                &[Compare::Version(self.key.clone(), 0)],
                &[Op::Put {
                    key: self.key.clone(),
                    value: self.id.clone().into_bytes(),
                    lease,
                }],
                &[Op::Get(self.key.clone())],
            )
            .await
            .map_err(Stop::etcd)?;
        if !txn.succeeded {
            let _ = client.lease_revoke(lease).await;
            let who = txn
                .gets
                .first()
                .and_then(|g| g.first())
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .unwrap_or_default();
            return Err(Stop::Fatal(format!(
                "this process's lease expired while etcd was out of reach, and another campaign process ({who}) took the campaign over"
            )));
        }
        self.lease = lease;
        self.expired = Arc::new(AtomicBool::new(false));
        self.keep_alive(client.clone());
        Ok(())
    }
}

/// Why a step against etcd did not happen.
enum Stop {
    /// etcd out of reach: pause and try again.
    Unreachable(String),
    /// The campaign cannot go on from this process.
    Fatal(String),
}

impl Stop {
    fn etcd(e: fleet::Error) -> Stop {
        if e.is_unreachable() {
            Stop::Unreachable(e.to_string())
        } else {
            Stop::Fatal(format!("etcd: {e}"))
        }
    }
}

/// The record as stored: its bytes and mod revision.
struct Stored {
    rev: i64,
    /// What this process last tried to write (to recognize its own write whose answer was
    /// lost).
    last_attempt: Option<Vec<u8>>,
}

async fn write_record(
    client: &fleet::Client,
    layout: &Layout,
    owner: &Owner,
    stored: &mut Stored,
    record: &CampaignRecord,
) -> Result<(), Stop> {
    let key = layout.campaign();
    let value = serde_json::to_vec(record).expect("serializable");
    stored.last_attempt = Some(value.clone());
    let compare = [
        Compare::ModRevision(key.clone(), stored.rev),
        Compare::Value(owner.key.clone(), owner.id.clone().into_bytes()),
    ];
    let txn = client
        .txn(
            &compare,
            &[Op::put(key.clone(), value.clone()), Op::Get(key.clone())],
            &[Op::Get(key.clone()), Op::Get(owner.key.clone())],
        )
        .await
        .map_err(Stop::etcd)?;
    let current = txn.gets.first().and_then(|g| g.first()).cloned();
    if txn.succeeded {
        stored.rev = current.map_or(txn.revision, |kv| kv.mod_revision);
        return Ok(());
    }
    let holder = txn
        .gets
        .get(1)
        .and_then(|g| g.first())
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    match (current, holder) {
        (_, Some(h)) if h != owner.id => Err(Stop::Fatal(format!(
            "another campaign process ({h}) took the campaign over"
        ))),
        (_, None) => Err(Stop::Unreachable(
            "this process's hold on the campaign lapsed (etcd was out of reach longer than its lease)".into(),
        )),
        // Our own write, whose answer was lost on the way back.
        (Some(kv), Some(_)) if kv.value == value => {
            stored.rev = kv.mod_revision;
            Ok(())
        }
        _ => Err(Stop::Fatal(format!(
            "{key} was changed by someone else while this process owned the campaign"
        ))),
    }
}

async fn read_pairs(
    client: &fleet::Client,
    layout: &Layout,
) -> Result<Vec<PairRecord>, fleet::Error> {
    let mut out = Vec::new();
    for kv in client.get_prefix(&layout.pairs()).await? {
        let key = kv.key_str();
        if layout.pair_name(&key).is_none() {
            continue;
        }
        match serde_json::from_slice::<PairRecord>(&kv.value) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("{key}: not a pair record ({e}); left out"),
        }
    }
    Ok(out)
}

async fn read_pair(
    client: &fleet::Client,
    layout: &Layout,
    name: &str,
) -> Result<Option<PairRecord>, fleet::Error> {
    Ok(client
        .get(&layout.pair(name))
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// What an ask came back with, and how long it took.
struct Answer {
    event: Event,
    /// The upgrade's report, when there was one.
    report: Option<Report>,
}

/// Asks one pair's supervisor to upgrade, and waits for the report.
async fn ask(admin: String, secret: Secret, pair: String, to: String, args: Vec<String>) -> Answer {
    let mut parts: Vec<String> = vec!["UPGRADE".into(), to];
    parts.extend(args);
    // Err(Ok): not sent (never reached the supervisor); Err(Err): sent, no answer.
    let result: Result<Reply, Result<String, String>> = async {
        let mut c = crate::admin::connect(&admin, &secret)
            .await
            .map_err(|e| Ok(format!("{e:#}")))?;
        c.set_timeout(None);
        let p: Vec<&[u8]> = parts.iter().map(|a| a.as_bytes()).collect();
        c.call(&p)
            .await
            .map_err(|e| Err(format!("the upgrade call to {admin} got no answer: {e}")))
    }
    .await;
    let slow_down = || tokio::time::sleep(Duration::from_secs(1));
    match result {
        Err(Ok(message)) => {
            slow_down().await;
            Answer {
                event: Event::NoAnswer { pair, message },
                report: None,
            }
        }
        Err(Err(message)) => {
            slow_down().await;
            Answer {
                event: Event::Cut { pair, message },
                report: None,
            }
        }
        Ok(Reply::Error(message)) => {
            slow_down().await;
            Answer {
                event: Event::Refused { pair, message },
                report: None,
            }
        }
        Ok(reply) => {
            let json = match reply {
                Reply::Simple(s) => s.into_bytes(),
                Reply::Bulk(b) => b.to_vec(),
                other => other.to_string().into_bytes(),
            };
            match crate::contract::decode::<Report>("the supervisor", &json) {
                Ok(report) => Answer {
                    event: Event::Ended {
                        pair,
                        outcome: fleet::campaign::outcome_of(&report.outcome),
                        message: report.reason.clone(),
                    },
                    report: Some(report),
                },
                Err(e) => Answer {
                    // The upgrade ran; what became of it is in the pair's record.
                    event: Event::Cut {
                        pair,
                        message: format!("unreadable upgrade report: {e}"),
                    },
                    report: None,
                },
            }
        }
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1e3)
}

/// Prints what became durable since the last record printed.
/// (`since_ms`: when this process started; a pair Running from before is an earlier run's.)
fn print_progress(
    before: &CampaignRecord,
    after: &CampaignRecord,
    reports: &BTreeMap<String, Report>,
    since_ms: u64,
) {
    let n = after.waves.len();
    for (k, wave) in after.waves.iter().enumerate() {
        let started =
            |r: &CampaignRecord| wave.iter().any(|p| r.pairs[p].outcome != Outcome::Pending);
        if started(after) && !started(before) {
            println!(
                "wave {}/{n}{}: {}",
                k + 1,
                if k == 0 { " (canary)" } else { "" },
                wave.join(", ")
            );
        }
        for p in wave {
            let (old, new) = (&before.pairs[p], &after.pairs[p]);
            if old.outcome == new.outcome {
                continue;
            }
            match new.outcome {
                Outcome::Running if new.started_ms.is_some_and(|t| t < since_ms) => println!(
                    "  {p}: upgrading to {} (marked by an earlier run: reconciled from its record in etcd)",
                    after.to
                ),
                Outcome::Running => println!("  {p}: upgrading to {}", after.to),
                o if o.is_final() => {
                    let took = match (new.started_ms, new.ended_ms) {
                        (Some(s), Some(e)) => format!(" in {}", secs(e.saturating_sub(s))),
                        _ => String::new(),
                    };
                    let what = match o {
                        Outcome::Upgraded => "upgraded",
                        Outcome::RolledBack => "ROLLED BACK",
                        _ => "FAILED",
                    };
                    let why = new
                        .message
                        .as_deref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    let extra = reports
                        .get(p)
                        .filter(|r| !r.switchovers_ms.is_empty())
                        .map(|r| {
                            let s: Vec<String> = r
                                .switchovers_ms
                                .iter()
                                .map(|x| format!("{x:.1} ms"))
                                .collect();
                            format!(" (switchovers {})", s.join(", "))
                        })
                        .unwrap_or_default();
                    println!("  {p}: {what}{took}{extra}{why}");
                }
                _ => {}
            }
        }
    }
    if before.state != after.state {
        match &after.state {
            CampaignState::Completed => println!("campaign {} completed", after.id),
            CampaignState::Stopped(why) => println!("campaign {} STOPPED: {why}", after.id),
            CampaignState::Running => {}
        }
    }
}

fn print_summary(r: &CampaignRecord) {
    println!();
    println!("campaign {} (to {}): {}", r.id, r.to, state_text(r));
    println!(
        "pairs: {} upgraded, {} rolled back, {} failed, {} not started ({} in all, {} waves)",
        r.count(Outcome::Upgraded),
        r.count(Outcome::RolledBack),
        r.count(Outcome::Failed),
        r.count(Outcome::Pending),
        r.pairs.len(),
        r.waves.len()
    );
    println!(
        "{:<16} {:>4}  {:<12} {:>9}  message",
        "pair", "wave", "outcome", "duration"
    );
    for (k, wave) in r.waves.iter().enumerate() {
        for p in wave {
            let c = &r.pairs[p];
            let took = match (c.started_ms, c.ended_ms) {
                (Some(s), Some(e)) => secs(e.saturating_sub(s)),
                _ => "-".into(),
            };
            println!(
                "{:<16} {:>4}  {:<12} {:>9}  {}",
                p,
                k + 1,
                c.outcome.as_str(),
                took,
                c.message.as_deref().unwrap_or("")
            );
        }
    }
}

pub(crate) fn state_text(r: &CampaignRecord) -> String {
    match &r.state {
        CampaignState::Completed => "completed".into(),
        CampaignState::Stopped(why) => format!("stopped: {why}"),
        CampaignState::Running => match r.current_wave() {
            Some(k) => format!("running, wave {} of {}", k + 1, r.waves.len()),
            None => "running".into(),
        },
    }
}

fn exit_code(r: &CampaignRecord) -> i32 {
    match r.state {
        CampaignState::Completed if r.count(Outcome::Upgraded) == r.pairs.len() => 0,
        _ => EXIT_NOT_ALL_UPGRADED,
    }
}

async fn run(urls: &str, args: RunArgs, secret: Secret) -> anyhow::Result<i32> {
    let client = fleet::Client::new(urls).map_err(anyhow::Error::msg)?;
    let layout = Layout::new(&args.etcd_prefix);
    // Refused at once, before waiting for the campaign's owner: a campaign to another
    // version while one is unfinished (checked again once owned).
    if let (Some(to), Some(kv)) = (
        &args.to,
        client.get(&layout.campaign()).await.context("etcd")?,
    ) {
        if let Ok(r) = serde_json::from_slice::<CampaignRecord>(&kv.value) {
            refuse_another(&r, to)?;
        }
    }
    let mut owner = Owner::acquire(&client, &layout, args.owner_ttl).await?;
    owner.keep_alive(client.clone());
    let result = campaign(&client, &layout, &mut owner, args, secret).await;
    // Let a successor in at once (a process that dies leaves it to the lease's expiry).
    let _ = client.lease_revoke(owner.lease).await;
    result
}

/// Refuses a campaign to `to` while `r`, to another version, is unfinished.
fn refuse_another(r: &CampaignRecord, to: &str) -> anyhow::Result<()> {
    if r.state == CampaignState::Running && r.to != to {
        bail!(
            "campaign {} (to {}) is unfinished ({}): it is not replaced by one to {to}; resume it with `tandem campaign --resume`",
            r.id,
            r.to,
            state_text(r)
        );
    }
    Ok(())
}

/// Creates or resumes the campaign and drives it to its end.
async fn campaign(
    client: &fleet::Client,
    layout: &Layout,
    owner: &mut Owner,
    args: RunArgs,
    secret: Secret,
) -> anyhow::Result<i32> {
    let existing = client.get(&layout.campaign()).await.context("etcd")?;
    let existing_record = match &existing {
        Some(kv) => Some(
            serde_json::from_slice::<CampaignRecord>(&kv.value)
                .with_context(|| format!("{} is not a campaign record", layout.campaign()))?,
        ),
        None => None,
    };
    let mut stored = Stored {
        rev: existing.as_ref().map_or(0, |kv| kv.mod_revision),
        last_attempt: None,
    };
    let unfinished = existing_record
        .as_ref()
        .filter(|r| r.state == CampaignState::Running);
    let mut core = match (unfinished, &args.to) {
        (Some(r), to) if args.resume || to.as_deref() == Some(r.to.as_str()) => {
            println!(
                "resuming campaign {} (to {}, {}; run {} of it) as it was planned",
                r.id,
                r.to,
                state_text(r),
                r.runs + 1
            );
            let mut core = Campaign::resume(r.clone());
            core.took_over(now_ms());
            core
        }
        (Some(r), Some(to)) => {
            refuse_another(r, to)?;
            unreachable!("a campaign to another version")
        }
        (Some(_), None) => unreachable!("--resume or --to"),
        (None, None) => match existing_record {
            Some(r) => {
                println!("the campaign in etcd has ended; nothing to resume");
                print_summary(&r);
                return Ok(exit_code(&r));
            }
            None => bail!("there is no campaign in etcd to resume"),
        },
        (None, Some(to)) => {
            let pairs = read_pairs(client, layout).await.context("etcd")?;
            let matching: Vec<&PairRecord> = pairs
                .iter()
                .filter(|p| fleet::keys::glob_match(&args.pairs, &p.name))
                .collect();
            if matching.is_empty() {
                bail!(
                    "no registered pair matches {:?} (pairs register with `tandem pair up --etcd URL --name NAME`)",
                    args.pairs
                );
            }
            let (done, todo): (Vec<&PairRecord>, Vec<&PairRecord>) = matching
                .into_iter()
                .partition(|p| p.version.as_deref() == Some(to.as_str()));
            for p in &done {
                println!("{}: already on {to}, left out", p.name);
            }
            let names: Vec<String> = todo.iter().map(|p| p.name.clone()).collect();
            let spec = args.waves.clone().unwrap_or(WaveSpec::Doubling);
            let record = fleet::campaign::plan(
                &names,
                &spec,
                Settings {
                    to: to.clone(),
                    pairs_glob: args.pairs.clone(),
                    parallel: args.parallel as usize,
                    continue_on_rollback: args.continue_on_rollback,
                    upgrade_args: args.options().to_args(),
                    now_ms: now_ms(),
                },
            );
            if record.pairs.is_empty() {
                println!("every matching pair runs {to} already: nothing to do");
                return Ok(0);
            }
            let sizes: Vec<String> = record.waves.iter().map(|w| w.len().to_string()).collect();
            println!(
                "campaign {}: {} pairs to {to} in {} waves ({}), at most {} at once{}",
                record.id,
                record.pairs.len(),
                record.waves.len(),
                sizes.join(", "),
                record.parallel,
                if record.continue_on_rollback {
                    ", going on past a rollback"
                } else {
                    ", stopping at the first rollback"
                }
            );
            // Written with the canary marked Running, before it is asked (the first `next`).
            Campaign::resume(record)
        }
    };
    drive(client, layout, owner, &mut stored, &mut core, &secret).await?;
    print_summary(core.record());
    Ok(exit_code(core.record()))
}

async fn drive(
    client: &fleet::Client,
    layout: &Layout,
    owner: &mut Owner,
    stored: &mut Stored,
    core: &mut Campaign,
    secret: &Secret,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Answer>();
    // What the last printed progress was made of (durable facts only).
    let mut shown = core.record().clone();
    // A first resumed record prints as progress from an all-pending plan.
    for p in shown.pairs.values_mut() {
        p.outcome = Outcome::Pending;
    }
    shown.state = CampaignState::Running;
    let mut reports: BTreeMap<String, Report> = BTreeMap::new();
    let since_ms = now_ms();
    let mut to_ask: BTreeSet<String> = BTreeSet::new();
    let mut paused: Option<String> = None;
    let mut last_watch = Instant::now() - Duration::from_secs(60);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    let pause = |paused: &mut Option<String>, why: String| {
        if paused.is_none() {
            println!("PAUSED: {why}; no pair starts until it is back (upgrades already asked go on in their supervisors)");
        }
        *paused = Some(why);
    };
    loop {
        if interrupted.load(Ordering::Relaxed) {
            bail!(
                "interrupted: campaign {} is left {} in etcd (upgrades already asked go on in their supervisors); run the same command again, or `tandem campaign --resume`, to go on",
                core.record().id,
                state_text(core.record())
            );
        }
        while let Ok(answer) = rx.try_recv() {
            if let (Some(report), Event::Ended { pair, .. }) = (answer.report, &answer.event) {
                reports.insert(pair.clone(), report);
            }
            core.observe(answer.event, now_ms());
        }
        let mut etcd_ok = true;
        if owner.expired.load(Ordering::Relaxed) {
            match owner.retake(client).await {
                Ok(()) => {}
                Err(Stop::Unreachable(why)) => {
                    pause(&mut paused, why);
                    etcd_ok = false;
                }
                Err(Stop::Fatal(why)) => bail!("{why}"),
            }
        }
        let next = core.next(now_ms());
        if etcd_ok && next.persist {
            match write_record(client, layout, owner, stored, core.record()).await {
                Ok(()) => {
                    core.persisted();
                    if paused.take().is_some() {
                        println!("etcd reachable again: the campaign goes on");
                    }
                    print_progress(&shown, core.record(), &reports, since_ms);
                    shown = core.record().clone();
                    continue;
                }
                Err(Stop::Unreachable(why)) => {
                    pause(&mut paused, why);
                    etcd_ok = false;
                }
                Err(Stop::Fatal(why)) => bail!("{why}"),
            }
        }
        if !next.persist {
            if next.finished {
                return Ok(());
            }
            to_ask.extend(next.upgrade);
            let watch_due = last_watch.elapsed() >= Duration::from_millis(500);
            let mut looks: Vec<String> = next.look;
            if watch_due {
                looks.extend(next.watch);
                last_watch = Instant::now();
            }
            // Each ask needs the pair's admin address, fresh from etcd.
            for pair in to_ask.clone() {
                if !etcd_ok {
                    break;
                }
                match read_pair(client, layout, &pair).await {
                    Ok(record) => {
                        to_ask.remove(&pair);
                        let Some(record) = record else {
                            core.observe(
                                Event::NoAnswer {
                                    pair: pair.clone(),
                                    message: "the pair is not registered in etcd".into(),
                                },
                                now_ms(),
                            );
                            continue;
                        };
                        let tag = fleet::campaign::tag(&core.record().id, &pair);
                        let mut upgrade_args = core.record().upgrade_args.clone();
                        upgrade_args.extend(["tag".to_string(), tag]);
                        let tx = tx.clone();
                        let fut = ask(
                            record.admin.clone(),
                            secret.clone(),
                            pair.clone(),
                            core.record().to.clone(),
                            upgrade_args,
                        );
                        tokio::spawn(async move {
                            let _ = tx.send(fut.await);
                        });
                    }
                    Err(e) if e.is_unreachable() => {
                        pause(&mut paused, e.to_string());
                        etcd_ok = false;
                    }
                    Err(e) => bail!("etcd: {e}"),
                }
            }
            for pair in looks {
                if !etcd_ok {
                    break;
                }
                match read_pair(client, layout, &pair).await {
                    Ok(record) => core.observe(Event::Found { pair, record }, now_ms()),
                    Err(e) if e.is_unreachable() => {
                        pause(&mut paused, e.to_string());
                        etcd_ok = false;
                    }
                    Err(e) => bail!("etcd: {e}"),
                }
            }
            if etcd_ok && paused.take().is_some() {
                println!("etcd reachable again: the campaign goes on");
            }
        }
        // Wait for an answer, or a moment (etcd again, a pair to look at again).
        let tick = if paused.is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_millis(250)
        };
        tokio::select! {
            Some(answer) = rx.recv() => {
                if let (Some(report), Event::Ended { pair, .. }) = (answer.report, &answer.event) {
                    reports.insert(pair.clone(), report);
                }
                core.observe(answer.event, now_ms());
            }
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
