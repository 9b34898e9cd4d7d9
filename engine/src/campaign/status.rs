//! `tandem campaign status`: the fleet at a glance, from etcd alone: the campaign (id,
//! target, state, wave, counts, owner) and one line per registered pair (version, active
//! engine, epoch, phase, outcome in the campaign, wave, duration). Works with no campaign.

use anyhow::Context;
use fleet::keys::{CampaignRecord, Layout, Outcome, PairRecord};
use serde::Serialize;

/// What `--json` prints.
#[derive(Serialize)]
pub struct FleetStatus {
    pub campaign: Option<CampaignRecord>,
    /// The campaign process that owns the campaign now (none: no process drives it).
    pub owner: Option<String>,
    pub pairs: Vec<PairRecord>,
}

pub async fn read(urls: &str, prefix: &str) -> anyhow::Result<FleetStatus> {
    let client = fleet::Client::new(urls).map_err(anyhow::Error::msg)?;
    let layout = Layout::new(prefix);
    let campaign = match client.get(&layout.campaign()).await.context("etcd")? {
        Some(kv) => Some(
            serde_json::from_slice::<CampaignRecord>(&kv.value)
                .with_context(|| format!("{} is not a campaign record", layout.campaign()))?,
        ),
        None => None,
    };
    let owner = client
        .get(&layout.campaign_owner())
        .await
        .context("etcd")?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    let pairs = super::read_pairs(&client, &layout).await.context("etcd")?;
    Ok(FleetStatus {
        campaign,
        owner,
        pairs,
    })
}

pub async fn run(urls: &str, prefix: &str, json: bool) -> anyhow::Result<()> {
    let s = read(urls, prefix).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    print!("{}", render(&s));
    Ok(())
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1e3)
}

/// The human view.
pub fn render(s: &FleetStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    match &s.campaign {
        Some(c) => {
            let _ = writeln!(
                out,
                "campaign {}: to {}, {}{}",
                c.id,
                c.to,
                super::state_text(c),
                match &s.owner {
                    Some(o) => format!(", driven by {o}"),
                    None if c.state == fleet::keys::CampaignState::Running =>
                        ", NO PROCESS DRIVES IT (resume: tandem campaign --resume)".into(),
                    None => String::new(),
                }
            );
            let _ = writeln!(
                out,
                "  {} pairs in {} waves: {} upgraded, {} running, {} pending, {} rolled back, {} failed; at most {} at once",
                c.pairs.len(),
                c.waves.len(),
                c.count(Outcome::Upgraded),
                c.count(Outcome::Running),
                c.count(Outcome::Pending),
                c.count(Outcome::RolledBack),
                c.count(Outcome::Failed),
                c.parallel
            );
        }
        None => {
            let _ = writeln!(out, "no campaign");
        }
    }
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<6} {:>6}  {:<22} {:<12} {:>4} {:>9}  message",
        "pair", "version", "active", "epoch", "phase", "campaign", "wave", "duration"
    );
    let mut names: Vec<&str> = s.pairs.iter().map(|p| p.name.as_str()).collect();
    if let Some(c) = &s.campaign {
        // Pairs of the campaign no longer registered still show.
        for n in c.pairs.keys() {
            if !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    names.sort();
    for name in names {
        let pair = s.pairs.iter().find(|p| p.name == name);
        let in_campaign = s.campaign.as_ref().and_then(|c| c.pairs.get(name));
        let version = pair
            .map(|p| p.version.clone().unwrap_or_else(|| mixed(p)))
            .unwrap_or_else(|| "-".into());
        let phase = pair
            .map(
                |p| match p.upgrade.as_ref().filter(|u| u.outcome.is_none()) {
                    Some(u) => format!("upgrade:{}", u.phase.as_deref().unwrap_or("start")),
                    None => p.phase.clone(),
                },
            )
            .unwrap_or_else(|| "not registered".into());
        let took = in_campaign
            .and_then(|c| match (c.started_ms, c.ended_ms) {
                (Some(s), Some(e)) => Some(secs(e.saturating_sub(s))),
                (Some(s), None) => Some(format!(
                    "{}+",
                    secs(reports::timeline::now_ms().saturating_sub(s))
                )),
                _ => None,
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<6} {:>6}  {:<22} {:<12} {:>4} {:>9}  {}",
            name,
            version,
            pair.map_or("-", |p| p.active.as_str()),
            pair.map_or("-".into(), |p| p.epoch.to_string()),
            phase,
            in_campaign.map_or("-", |c| c.outcome.as_str()),
            in_campaign.map_or("-".into(), |c| (c.wave + 1).to_string()),
            took,
            in_campaign.and_then(|c| c.message.as_deref()).unwrap_or("")
        );
    }
    out
}

/// A pair whose engines run different versions: `1.0/2.0`.
fn mixed(p: &PairRecord) -> String {
    let v: Vec<&str> = p.engines.iter().map(|e| e.app_version.as_str()).collect();
    if v.is_empty() {
        "?".into()
    } else {
        v.join("/")
    }
}
