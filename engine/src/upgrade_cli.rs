//! `tandem upgrade`: starts the supervisor's upgrade, shows its phases as they happen (from
//! the timeline subscription), and ends with a one-screen summary.

use std::time::Duration;

use anyhow::{bail, Context};
use replicator::Secret;
use reports::timeline::{self, Event, EventKind};
use resp::Reply;
use serde_json::Value;

use crate::upgrade::Options;

pub fn run(secret: &Secret, admin: &str, to: &str, options: &Options) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let started_ms = timeline::now_ms();
        let printer = print_timeline(secret, admin, started_ms).await?;
        let mut control = crate::admin::connect(admin, secret).await?;
        println!(
            "upgrading to {to} (baseline {} ms, evaluation {} ms)",
            options.baseline_ms, options.evaluate_ms
        );
        let mut args: Vec<String> = vec!["UPGRADE".into(), to.into()];
        args.extend(options.to_args());
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        control.set_timeout(None);
        let reply = control
            .call(&parts)
            .await
            .map_err(|e| anyhow::anyhow!("the upgrade request failed: {e} (the supervisor may have gone away: see `tandem status` and the pair's timeline.json)"))?;
        let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
        let report: Value = match reply {
            Reply::Error(e) => bail!("{e}"),
            Reply::Simple(s) => serde_json::from_str(&s).context("upgrade report")?,
            Reply::Bulk(b) => serde_json::from_slice(&b).context("upgrade report")?,
            other => bail!("unexpected reply: {other}"),
        };
        print_summary(&report);
        if report["outcome"] != "completed" {
            std::process::exit(3);
        }
        Ok(())
    })
}

/// Subscribes to the supervisor's timeline and prints each event from `started_ms` on, until
/// the upgrade ends.
pub(crate) async fn print_timeline(
    secret: &Secret,
    admin: &str,
    started_ms: u64,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut feed = crate::admin::connect(admin, secret).await?;
    feed.queue(&[b"SUBSCRIBE"]);
    feed.flush()
        .await
        .map_err(|e| anyhow::anyhow!("subscribing to the timeline: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok(Reply::Bulk(json)) = feed.read_reply().await else {
                return;
            };
            let Ok(ev) = serde_json::from_slice::<Event>(&json) else {
                continue;
            };
            if ev.t_ms + 50 < started_ms {
                continue; // an earlier upgrade's events, replayed
            }
            print_event(&ev, started_ms);
            if ev.kind == EventKind::UpgradeEnd {
                return;
            }
        }
    }))
}

pub(crate) fn print_event(ev: &Event, started_ms: u64) {
    let t = ev.t_ms.saturating_sub(started_ms) as f64 / 1e3;
    let phase = ev.phase.as_deref().unwrap_or("");
    let msg = ev
        .message
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let line = match ev.kind {
        EventKind::UpgradeStart => format!("upgrade started{msg}"),
        EventKind::PhaseStart => format!("phase {phase}"),
        EventKind::PhaseEnd => format!("  end {phase}{msg}"),
        EventKind::SwitchoverBegin => format!(
            "  {} switchover begins",
            ev.switchover
                .unwrap_or(timeline::SwitchoverKind::Planned)
                .as_str()
        ),
        EventKind::SwitchoverEnd => format!(
            "  switchover done, step-up {:.1} ms{msg}",
            ev.stepup_ms.unwrap_or(0.0)
        ),
        EventKind::Fallback => format!("FALLBACK{msg}"),
        EventKind::FeaturesEnabled => format!("  features enabled{msg}"),
        EventKind::Failover => format!("  FAILOVER{msg}"),
        EventKind::SimplexStart => format!("  simplex: one engine serves alone{msg}"),
        EventKind::SimplexEnd => format!("  duplex again{msg}"),
        EventKind::Unavailable => format!("  PAIR UNAVAILABLE{msg}"),
        EventKind::SupervisorStart => format!("  supervisor started{msg}"),
        EventKind::UpgradeEnd => format!(
            "upgrade ended: {}{msg}",
            ev.outcome.as_deref().unwrap_or("?")
        ),
    };
    println!("[{t:7.3}s] {line}");
}

fn print_summary(r: &Value) {
    println!();
    println!(
        "outcome:     {} ({} -> {})",
        r["outcome"].as_str().unwrap_or("?"),
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?")
    );
    if let Some(reason) = r["reason"].as_str() {
        println!("reason:      {reason}");
    }
    let b = &r["baseline"];
    let e = &r["evaluation"]["stats"];
    let ms = |v: &Value| {
        v.as_f64()
            .map(|us| format!("{:.2} ms", us / 1e3))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "baseline:    {} commands, error rate {:.3} %, p99 {}",
        b["commands"],
        b["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
        ms(&b["latency_us_p99"])
    );
    if !e.is_null() {
        println!(
            "evaluation:  {} commands, error rate {:.3} %, p99 {} (limit {:.2} ms)",
            e["commands"],
            e["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            ms(&e["latency_us_p99"]),
            r["evaluation"]["p99_limit_ms"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "switchovers: {}",
        r["switchovers_ms"]
            .as_array()
            .map(|v| v
                .iter()
                .map(|x| format!("{:.1} ms", x.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    println!("phases:");
    for p in r["phases"].as_array().into_iter().flatten() {
        println!(
            "  {:<22} {:>8} ms",
            p["name"].as_str().unwrap_or("?"),
            p["duration_ms"]
        );
    }
}
