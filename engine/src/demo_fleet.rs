//! `tandem demo --fleet N`: the main job for a fleet. A one-member etcd on loopback, N pairs
//! registered in it (`tandem pair up --etcd URL --name pair-NN`), the load generator driving
//! every pair at once (found through etcd), and `tandem campaign --to 2.0` upgrading them in
//! waves under that load; then the fleet's run directory and its report, and everything
//! stopped. Each step is the command a user would run, started as a process of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use fleet::local::LocalEtcd;
use tokio::process::Command;

use crate::demo::{start_pair, Interrupts, PairProcess, PairWatchdog};

#[derive(Clone, Debug)]
pub struct FleetDemoArgs {
    pub out: Option<PathBuf>,
    pub pairs: usize,
    pub quick: bool,
    pub fault: Option<String>,
    /// The fleet's rate (requests per second, split over the pairs).
    pub rate_ops_s: Option<u64>,
    /// `--waves` of the campaign (default 1,2,4,...).
    pub waves: Option<String>,
    /// Pairs upgrading at once.
    pub parallel: u32,
    pub secret_file: PathBuf,
}

/// Pairs at most: each is three processes and seven ports.
pub const PAIRS_MAX: usize = 64;

/// Each pair's windows: (baseline, evaluation, settle) in ms.
fn windows(quick: bool) -> (u64, u64, u64) {
    if quick {
        (2_000, 2_000, 1_000)
    } else {
        (5_000, 5_000, 3_000)
    }
}

pub fn run(args: FleetDemoArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.pairs > PAIRS_MAX {
        bail!("--fleet {}: from 1 to {PAIRS_MAX} pairs", args.pairs);
    }
    if let Some(f) = &args.fault {
        crate::sessions::Fault::parse(f).map_err(anyhow::Error::msg)?;
    }
    if let Some(w) = &args.waves {
        fleet::campaign::WaveSpec::parse(w).map_err(|e| anyhow::anyhow!("--waves: {e}"))?;
    }
    if !fleet::local::available() {
        bail!("etcd not found: install Debian's etcd-server (scripts/setup.sh does)");
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let secs = reports::timeline::now_ms() / 1000;
        PathBuf::from("tandem-runs").join(format!("fleet-{secs}"))
    });
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating the run directory {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let secret = replicator::Secret::load(&args.secret_file)?;
    runtime.block_on(async move {
        let mut interrupts = Interrupts::catch()?;
        // etcd dies with the demo (a parent-death signal); the pairs' watchdogs stop them.
        let etcd = LocalEtcd::start(&out.join("etcd")).context("starting etcd")?;
        println!("etcd: {} (data and log in {})", etcd.url(), out.join("etcd").display());
        let url = etcd.url();
        let names: Vec<String> = (1..=args.pairs).map(|i| format!("pair-{i:02}")).collect();
        let mut watchdogs = Vec::new();
        let mut pairs: Vec<PairProcess> = Vec::new();
        let started = tokio::select! {
            biased;
            signal = interrupts.recv() => Err(anyhow::anyhow!("interrupted by {signal}: stopping the pairs")),
            r = start_pairs(&out, &names, &url, &args.secret_file, &secret, &mut watchdogs, &mut pairs) => r,
        };
        let result = match started {
            Ok(()) => tokio::select! {
                biased;
                signal = interrupts.recv() => Err(anyhow::anyhow!("interrupted by {signal}: stopping the pairs")),
                r = campaign_under_load(&args, &out, &url, &secret) => r,
            },
            Err(e) => Err(e),
        };
        // Stopped one by one through their supervisors; what does not stop, its watchdog does.
        for (pair, watchdog) in pairs.iter_mut().zip(watchdogs) {
            let stopped = pair.stop().await;
            watchdog.finish(stopped).await;
        }
        drop(etcd);
        result
    })
}

/// One directory per pair under OUT/fleet, each pair started and registered in etcd.
async fn start_pairs(
    out: &Path,
    names: &[String],
    etcd: &str,
    secret_file: &Path,
    secret: &replicator::Secret,
    watchdogs: &mut Vec<PairWatchdog>,
    pairs: &mut Vec<PairProcess>,
) -> anyhow::Result<()> {
    for name in names {
        let dir = out.join("fleet").join(name);
        std::fs::create_dir_all(&dir)?;
        watchdogs.push(PairWatchdog::start(&dir, secret_file)?);
        let flags = ["--etcd", etcd, "--name", name].map(String::from);
        let pair = start_pair(&dir, &flags, secret_file, secret)
            .await
            .with_context(|| format!("starting {name}"))?;
        println!(
            "{name} up: admin {} (directory {})",
            pair.admin,
            dir.display()
        );
        pairs.push(pair);
    }
    Ok(())
}

/// The load on every pair, the campaign meanwhile, and the run's end.
async fn campaign_under_load(
    args: &FleetDemoArgs,
    out: &Path,
    etcd: &str,
    secret: &replicator::Secret,
) -> anyhow::Result<()> {
    let rate_ops_s = args
        .rate_ops_s
        .unwrap_or(if args.quick { 4_000 } else { 8_000 });
    let source = loadgen::fleet_run::EtcdSource {
        client: fleet::Client::new(etcd).map_err(anyhow::Error::msg)?,
        layout: fleet::Layout::default(),
    };
    let mut warnings = Vec::new();
    let mut targets = loadgen::fleet_run::discover::pairs(&source, "*", &mut warnings)
        .await
        .map_err(anyhow::Error::msg)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    for t in &mut targets {
        t.admin_secret = Some(secret.clone());
    }
    println!(
        "load: {rate_ops_s} ops/s over {} pairs; run directory {}",
        targets.len(),
        out.display()
    );
    println!("the fleet at a glance, from another terminal: tandem campaign status --etcd {etcd}");
    let config = loadgen::fleet_run::FleetConfig {
        pairs: targets,
        load: loadgen::Config {
            mode: loadgen::Mode::Open { rate_ops_s },
            connections: 2,
            pipeline: 32,
            duration: Duration::from_secs(60 * 60),
            tail: Duration::from_secs(1),
            out: Some(out.to_path_buf()),
            progress: false,
            target_version: Some(match &args.fault {
                Some(f) => format!("2.0 ({f} fault)"),
                None => "2.0".into(),
            }),
            ..loadgen::Config::default()
        },
        etcd: Some(source),
        until_campaign_end: true,
    };
    let load = tokio::spawn(loadgen::fleet_run::run(config));
    // A second of load before the first baseline, so that connections are warm.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (baseline, evaluate, settle) = windows(args.quick);
    let mut campaign = Command::new(std::env::current_exe()?);
    campaign
        .arg("--secret-file")
        .arg(&args.secret_file)
        .args(["campaign", "--etcd", etcd, "--to", "2.0"])
        .args(["--parallel", &args.parallel.to_string()])
        .args(["--baseline", &format!("{baseline}ms")])
        .args(["--evaluate", &format!("{evaluate}ms")])
        .args(["--settle", &format!("{settle}ms")])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(w) = &args.waves {
        campaign.args(["--waves", w]);
    }
    if let Some(f) = &args.fault {
        campaign.args(["--fault", f]);
    }
    let status = campaign.status().await.context("running tandem campaign")?;

    println!("verifying every acknowledged update on every pair...");
    let result = load.await.context("the load generator stopped")??;
    for w in &result.warnings {
        eprintln!("warning: {w}");
    }
    println!();
    let mut stdout = std::io::stdout().lock();
    loadgen::output::write_fleet(&mut stdout, &result.summary)?;
    drop(stdout);
    let run = reports::run::RunDir::new(out);
    for p in run.check()? {
        eprintln!("run check: {p}");
    }
    println!("\nreport: {}", run.report_path().display());
    if result.summary.lost_updates > 0 {
        bail!(
            "{} acknowledged updates were lost",
            result.summary.lost_updates
        );
    }
    match status.code() {
        Some(0) => Ok(()),
        // A faulty build: the canary rolled back and the campaign stopped, as it should.
        Some(code) if args.fault.is_some() && code == crate::campaign::EXIT_NOT_ALL_UPGRADED => {
            println!("the campaign stopped after the canary rolled back, as a faulty 2.0 should");
            Ok(())
        }
        _ => bail!("the campaign did not complete ({status})"),
    }
}
