//! `tandem demo`: the main job. Starts a pair on free loopback ports, drives it with the load
//! generator, performs the whole rolling upgrade 1.0 -> 2.0 under that load (or the fallback,
//! with `--fault`), writes the run directory and its HTML report, prints a short per-phase
//! table, and stops everything it started, also on Ctrl-C.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use reports::run::RunDir;
use resp::Reply;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::contract::PairStatus;
use crate::upgrade::Options;

#[derive(Clone, Debug)]
pub struct DemoArgs {
    pub out: Option<PathBuf>,
    pub quick: bool,
    pub fault: Option<String>,
    /// Requests per second offered by the load generator (open loop).
    pub rate_ops_s: Option<u64>,
    /// Work units (sessions) and database records to preload before the baseline, each.
    pub state: u64,
    /// The pair's secret, for the pair the demo starts and for talking to it.
    pub secret_file: PathBuf,
}

struct Plan {
    rate_ops_s: u64,
    options: Options,
}

fn plan(args: &DemoArgs) -> Plan {
    let (rate_ops_s, window_ms, settle_ms) = if args.quick {
        (5_000, 5_000, 3_000)
    } else {
        (10_000, 20_000, 15_000)
    };
    Plan {
        rate_ops_s: args.rate_ops_s.unwrap_or(rate_ops_s),
        options: Options {
            fault: args.fault.clone(),
            baseline_ms: window_ms,
            evaluate_ms: window_ms,
            settle_ms,
            ..Options::default()
        },
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(f) = &args.fault {
        crate::sessions::Fault::parse(f).map_err(anyhow::Error::msg)?;
    }
    if args.state > crate::state::WORK_UNITS_MAX as u64 {
        bail!(
            "--state {} is above the {} work units an engine holds at most",
            args.state,
            crate::state::WORK_UNITS_MAX
        );
    }
    let out = args.out.clone().unwrap_or_else(default_out_dir);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("creating the run directory {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let secret = replicator::Secret::load(&args.secret_file)?;
    runtime.block_on(async move {
        let mut pair = start_pair(&out, &args.secret_file, &secret).await?;
        let result = tokio::select! {
            r = demo(&args, &out, &pair.admin, &secret) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted: stopping the pair")),
        };
        pair.stop().await;
        result
    })
}

fn default_out_dir() -> PathBuf {
    let secs = reports::timeline::now_ms() / 1000;
    PathBuf::from("tandem-runs").join(format!("demo-{secs}"))
}

struct PairProcess {
    child: Child,
    admin: String,
    secret: replicator::Secret,
}

impl PairProcess {
    async fn stop(&mut self) {
        if let Ok(mut c) = crate::admin::connect(&self.admin, &self.secret).await {
            let _ = c.call(&[b"SHUTDOWN"]).await;
        }
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

async fn start_pair(
    out: &std::path::Path,
    secret_file: &std::path::Path,
    secret: &replicator::Secret,
) -> anyhow::Result<PairProcess> {
    let dir = out.join("pair");
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("supervisor.log"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--secret-file")
        .arg(secret_file)
        .args(["pair", "up", "--base-port", "0", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the pair supervisor")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let admin = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(admin) = line.strip_prefix("READY admin=") {
                return Ok(admin.to_string());
            }
        }
        bail!(
            "the pair supervisor exited before it was ready; see {}",
            dir.join("supervisor.log").display()
        )
    })
    .await
    .context("the pair was not ready within 30 s")??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(PairProcess {
        child,
        admin,
        secret: secret.clone(),
    })
}

async fn admin_call(
    admin: &str,
    secret: &replicator::Secret,
    args: &[String],
) -> anyhow::Result<Reply> {
    let mut c = crate::admin::connect(admin, secret).await?;
    let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    c.call(&parts)
        .await
        .map_err(|e| anyhow::anyhow!("supervisor at {admin}: {e}"))
}

async fn pair_status(admin: &str, secret: &replicator::Secret) -> anyhow::Result<PairStatus> {
    match admin_call(admin, secret, &["STATUS".into()]).await? {
        Reply::Bulk(b) => crate::contract::decode("the supervisor", &b).map_err(anyhow::Error::msg),
        other => bail!("status: {other}"),
    }
}

/// Sessions and database records per pipeline, and pipelines in flight, while preloading.
const PRELOAD_PIPELINE: u64 = 1000;
const PRELOAD_CONNECTIONS: u64 = 4;

/// Preloads `n` work units (sessions `pre-<i>`) and `n` database records (`pre:<i>`), each
/// with a 100-byte payload, over a few pipelined connections, with a progress line.
async fn preload(active: &str, n: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..PRELOAD_CONNECTIONS {
        let (active, done) = (active.to_string(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = resp::Client::connect(active.as_str()).await?;
            let payload = bytes::Bytes::from(vec![b'p'; 100]);
            let mut start = c * PRELOAD_PIPELINE;
            while start < n {
                let end = (start + PRELOAD_PIPELINE).min(n);
                let mut reqs = Vec::with_capacity(2 * (end - start) as usize);
                for i in start..end {
                    reqs.push(vec![
                        bytes::Bytes::from_static(b"SESSION.OPEN"),
                        bytes::Bytes::from(format!("pre-{i}")),
                        bytes::Bytes::from(format!("sub-{}", i % 1000)),
                        payload.clone(),
                    ]);
                    reqs.push(vec![
                        bytes::Bytes::from_static(b"SET"),
                        bytes::Bytes::from(format!("pre:{i}")),
                        payload.clone(),
                    ]);
                }
                for r in client.pipeline(&reqs).await? {
                    if let Reply::Error(e) = r {
                        bail!("preloading: {e}");
                    }
                }
                done.fetch_add(end - start, std::sync::atomic::Ordering::Relaxed);
                start += PRELOAD_CONNECTIONS * PRELOAD_PIPELINE;
            }
            anyhow::Ok(())
        }));
    }
    let progress = std::io::stderr().is_terminal();
    let all = join_all(tasks);
    tokio::pin!(all);
    loop {
        tokio::select! {
            r = &mut all => { r?; break; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if progress {
                    let d = done.load(std::sync::atomic::Ordering::Relaxed);
                    eprint!("\rpreloading: {d} of {n} work units and database records each");
                }
            }
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    println!(
        "preloaded {n} work units and {n} database records (100-byte payloads) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Waits for every task; an error of any is the result.
async fn join_all(tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    for t in tasks {
        t.await.context("a preload connection")??;
    }
    Ok(())
}

async fn demo(
    args: &DemoArgs,
    out: &std::path::Path,
    admin: &str,
    secret: &replicator::Secret,
) -> anyhow::Result<()> {
    let plan = plan(args);
    let status = pair_status(admin, secret).await?;
    let targets: Vec<String> = status
        .engines
        .iter()
        .map(|e| e.client_addr().to_string())
        .collect();
    println!(
        "pair up: admin {admin}, engines {}; load {} ops/s; run directory {}",
        targets.join(", "),
        plan.rate_ops_s,
        out.display()
    );
    if args.state > 0 {
        let active = status
            .active_engine()
            .map(|e| e.client_addr.as_str())
            .context("no active engine to preload")?;
        preload(active, args.state).await?;
    }
    let config = loadgen::Config {
        targets,
        admin: Some(admin.to_string()),
        admin_secret: Some(secret.clone()),
        mode: loadgen::Mode::Open {
            rate_ops_s: plan.rate_ops_s,
        },
        connections: 4,
        pipeline: 64,
        duration: Duration::from_secs(15 * 60),
        until_upgrade_end: true,
        tail: Duration::from_secs(1),
        out: Some(out.to_path_buf()),
        progress: std::io::stderr().is_terminal(),
        ..loadgen::Config::default()
    };
    let load = tokio::spawn(loadgen::run(config));
    // A second of load before the baseline starts, so that connections are warm.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let printer =
        crate::upgrade_cli::print_timeline(secret, admin, reports::timeline::now_ms()).await?;
    let mut cmd = vec!["UPGRADE".to_string(), "2.0".to_string()];
    cmd.extend(plan.options.to_args());
    let upgraded = admin_call(admin, secret, &cmd).await?;
    if let Reply::Error(e) = &upgraded {
        bail!("the upgrade was refused: {e}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    println!("verifying every acknowledged update...");
    let result = load.await.context("the load generator stopped")??;
    let run = RunDir::new(out);
    let report = run.render_report().context("rendering the report")?;
    println!();
    loadgen::output::print_summary(&result.summary);
    let problems = run.check()?;
    for p in &problems {
        eprintln!("run check: {p}");
    }
    println!("\nreport: {}", report.display());
    if result.summary.lost_updates > 0 {
        bail!(
            "{} acknowledged updates were lost",
            result.summary.lost_updates
        );
    }
    Ok(())
}
