//! `tandem upgrade`: starts the supervisor's upgrade, shows its phases as they happen (from
//! the timeline subscription), and ends with a one-screen summary.

use std::time::Duration;

use anyhow::{bail, Context};
use replicator::Secret;
use reports::timeline::{self, Event, EventKind};
use resp::Reply;

use crate::upgrade::{Options, Report};

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
        let json = match reply {
            Reply::Error(e) => bail!("{e}"),
            Reply::Simple(s) => s.into_bytes(),
            Reply::Bulk(b) => b.to_vec(),
            other => bail!("unexpected reply: {other}"),
        };
        let report: Report = crate::contract::decode("the supervisor", &json)
            .map_err(anyhow::Error::msg)
            .context("reading the upgrade report")?;
        print_summary(&report);
        if report.outcome != "completed" {
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
        EventKind::WitnessLost => format!("  etcd witness lost{msg}"),
        EventKind::WitnessBack => format!("  etcd witness back{msg}"),
        EventKind::LeaderElected => format!("  supervisor leads{msg}"),
        EventKind::TookOver => format!("  spare supervisor took over{msg}"),
        EventKind::SteppedDown => format!("  supervisor stepped down{msg}"),
        EventKind::UpgradeEnd => format!(
            "upgrade ended: {}{msg}",
            ev.outcome.as_deref().unwrap_or("?")
        ),
    };
    println!("[{t:7.3}s] {line}");
}

fn print_summary(r: &Report) {
    println!();
    println!("outcome:     {} ({} -> {})", r.outcome, r.from, r.to);
    if let Some(reason) = &r.reason {
        println!("reason:      {reason}");
    }
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
    match &r.baseline {
        Some(b) => println!(
            "baseline:    {} commands, error rate {:.3} %, p99 {}",
            b.commands,
            b.error_rate * 100.0,
            ms(b.latency_us_p99)
        ),
        None => println!("baseline:    not measured"),
    }
    if let Some(e) = &r.evaluation {
        println!(
            "evaluation:  {} commands, error rate {:.3} %, p99 {} (limit {:.2} ms)",
            e.stats.commands,
            e.stats.error_rate * 100.0,
            ms(e.stats.latency_us_p99),
            e.p99_limit_ms
        );
    }
    let switchovers: Vec<String> = r
        .switchovers_ms
        .iter()
        .map(|x| format!("{x:.1} ms"))
        .collect();
    println!("switchovers: {}", switchovers.join(", "));
    println!("phases:");
    for p in &r.phases {
        println!("  {:<22} {:>8} ms", p.name, p.duration_ms);
    }
}
