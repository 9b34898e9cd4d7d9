//! `loadgen`: the command line over the library. Parses and checks the flags, runs the load
//! on a multi-threaded runtime, prints a per-phase table and where the run directory is (or,
//! with `--json`, the summary as one JSON object on stdout and the table on stderr), and
//! exits non-zero on an error or when an acknowledged update was lost (see [`EXIT_CODES`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use cli::parse_duration;
use loadgen::{Config, Distribution, Mix, Mode};

/// At least one acknowledged update was lost (the run itself went through).
const EXIT_LOST: u8 = 1;
/// Bad usage or input, or the run could not be done (e.g. no target reachable).
const EXIT_ERROR: u8 = 2;

const EXIT_CODES: &str = "\
Exit codes:
  0  the run went through and no acknowledged update was lost
  1  an acknowledged update was lost (the count and examples are on stderr)
  2  an error, said on stderr as `error: ...`: bad usage (an unknown flag, a bad value), or
     the run could not be done (no target reachable, the run directory not writable)

Durations: a number and a unit (us, ms, s, m, h), e.g. 30s, 500ms, 2m, 1.5s; a bare number
is seconds.
Logs: on stderr, level info; RUST_LOG=debug (or warn, ...) changes it.";

/// Drives a tandem pair (or a Redis primary/replica) over RESP, measures latency per
/// phase with coordinated-omission correction, follows switchovers, and checks at the end
/// that no acknowledged update was lost.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version, after_help = EXIT_CODES)]
#[command(group(ArgGroup::new("pace").required(true).args(["rate", "closed"])))]
struct Args {
    /// Client address(es), comma-separated. Tandem: any engine of the pair (the load
    /// follows the active). Redis: the primary first, then the replica.
    #[arg(
        long,
        value_name = "ADDR[,ADDR]",
        value_delimiter = ',',
        required_unless_present_any = ["pair", "etcd"],
        conflicts_with_all = ["pair", "etcd"]
    )]
    target: Vec<String>,

    /// Fleet: drive this pair too (repeat the flag, one per pair); its client
    /// address(es) as --target takes them, and its supervisor's admin address after
    /// `admin=`. The run directory gets one run per pair (pairs/NAME/) and the fleet's
    /// at the top. --rate is the fleet's, split evenly; --connections is per pair.
    #[arg(long, value_name = "NAME=ADDR[,ADDR][,admin=ADDR]", value_parser = parse_pair, conflicts_with = "etcd")]
    pair: Vec<loadgen::fleet_run::PairTarget>,

    /// Fleet: find the pairs registered in etcd (each P/pair/NAME record: its engines and
    /// admin address), and read the campaign (P/campaign) for its waves; one or more
    /// http://host:port, comma-separated.
    #[arg(long, value_name = "URLS")]
    etcd: Option<String>,

    /// With --etcd: the key prefix P the pairs and the campaign live under.
    #[arg(long, value_name = "P", default_value = fleet::keys::DEFAULT_PREFIX, requires = "etcd")]
    etcd_prefix: String,

    /// With --etcd: only the pairs whose name matches (`*` any run, `?` one character).
    #[arg(long, value_name = "GLOB", default_value = "*", requires = "etcd")]
    pairs: String,

    /// Fleet: stop when the campaign ended (plus --tail), if before --duration. With --etcd:
    /// P/campaign completed or stopped after the run started; with --pair: every pair's
    /// timeline saw its upgrade end.
    #[arg(long)]
    until_campaign_end: bool,

    /// The tandem supervisor's admin address: subscribe to its timeline, attribute every
    /// sample to the upgrade phase it fell in, and measure its switchovers.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["pair", "etcd"])]
    admin: Option<String>,

    /// With --admin (or a fleet's admin addresses): the pairs' secret (default: $TANDEM_SECRET_FILE, else
    /// ~/.config/tandem/secret, as every tandem command finds it).
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,

    /// Drive Redis (primary/replica) instead of a tandem pair.
    #[arg(long)]
    redis: bool,

    /// With --redis: send `WAIT 1 0` after each write; a write counts as acknowledged
    /// only once a replica has it.
    #[arg(long)]
    wait: bool,

    /// Open loop: send this many requests per second, whatever the server does; latency
    /// counts from each request's intended send time.
    #[arg(long, value_name = "OPS_PER_S", value_parser = parse_rate)]
    rate: Option<u64>,

    /// Closed loop: this many connections, each keeping --pipeline requests in flight.
    #[arg(long, value_name = "CONNECTIONS", value_parser = parse_positive::<usize>)]
    closed: Option<usize>,

    /// A connection whose oldest request gets no reply for this long is given up and the
    /// active looked for again (how a client notices a hung engine), e.g. 1s, 500ms.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    reply_timeout: Duration,

    /// How long to run, e.g. 30s, 500ms, 2m (a bare number is seconds).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    duration: Duration,

    /// Stop when the timeline says the upgrade ended (plus --tail), if before --duration.
    #[arg(long, requires = "admin")]
    until_upgrade_end: bool,

    /// With --until-upgrade-end: keep going this long after the upgrade ended, e.g. 1s.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    tail: Duration,

    /// Requests at least this slow are listed one by one in detail.json (at most 100 per
    /// second, the slowest), e.g. 10ms, 1s.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "10ms")]
    slow: Duration,

    /// Run directory to write: summary.json, slices.json, detail.json, timeline.json,
    /// histograms.hlog.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Open loop: connections the rate is spread over.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_positive::<usize>)]
    connections: usize,

    /// Requests in flight per connection, at most.
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = parse_positive::<usize>)]
    pipeline: usize,

    /// Shares of the operations: set (database write), get (read), session (a
    /// SESSION.OPEN / UPDATE x3 / END cycle).
    #[arg(
        long,
        value_name = "set=S,get=G,session=N",
        default_value = "set=70,get=20,session=10"
    )]
    mix: Mix,

    /// Bytes of each SET value and session payload.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    value_bytes: usize,

    /// Key space size.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = parse_positive::<u64>)]
    keys: u64,

    /// Key popularity: uniform, zipfian (skew 0.99) or zipfian:THETA.
    #[arg(long, value_name = "D", default_value = "uniform")]
    distribution: Distribution,

    /// Seed of the random choices (operations, keys).
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,

    /// No progress line (it is shown only when stderr is a terminal anyway).
    #[arg(long)]
    quiet: bool,

    /// Print the end-of-run summary as one JSON object on stdout (summary.json's fields,
    /// and run_dir, unsent, warnings, error_examples, lost_examples); the table goes to
    /// stderr then, and nothing else to stdout.
    #[arg(long)]
    json: bool,
}

fn parse_pair(text: &str) -> Result<loadgen::fleet_run::PairTarget, String> {
    loadgen::fleet_run::PairTarget::parse(text)
}

fn parse_rate(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("the rate must be at least 1 op/s".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a whole number of ops/s")),
    }
}

/// A count for which 0 means nothing.
fn parse_positive<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(n) if n < T::from(1) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a whole number")),
    }
}

/// What the command line asks for: one pair's run, or a fleet's.
enum Job {
    One(Config),
    Fleet(loadgen::fleet_run::FleetConfig),
}

impl Args {
    fn into_job(self) -> anyhow::Result<(Job, bool)> {
        let mode = match (self.rate, self.closed) {
            (Some(rate_ops_s), _) => Mode::Open { rate_ops_s },
            (None, Some(connections)) => Mode::Closed { connections },
            (None, None) => unreachable!("clap requires --rate or --closed"),
        };
        let fleet = !self.pair.is_empty() || self.etcd.is_some();
        if self.until_campaign_end && !fleet {
            anyhow::bail!("--until-campaign-end is for a fleet: give --pair (repeated) or --etcd");
        }
        let fleet_admin = self.pair.iter().any(|p| p.admin.is_some()) || self.etcd.is_some();
        let admin_secret = if self.admin.is_some() || fleet_admin {
            Some(auth::Secret::resolve(self.secret_file.as_deref())?.1)
        } else {
            None
        };
        let config = Config {
            targets: self.target,
            admin: self.admin,
            admin_secret: admin_secret.clone(),
            redis: self.redis,
            redis_wait: self.wait,
            reply_timeout: self.reply_timeout,
            mode,
            connections: self.connections,
            pipeline: self.pipeline,
            duration: self.duration,
            until_upgrade_end: self.until_upgrade_end,
            tail: self.tail,
            mix: self.mix,
            value_bytes: self.value_bytes,
            keys: self.keys,
            distribution: self.distribution,
            out: Some(self.out),
            progress: !self.quiet,
            seed: self.seed,
            slow_threshold: self.slow,
            ..Config::default()
        };
        if !fleet {
            return Ok((Job::One(config), self.json));
        }
        if self.redis || self.until_upgrade_end {
            anyhow::bail!(
                "a fleet run drives tandem pairs and stops with --until-campaign-end (not --redis, --until-upgrade-end)"
            );
        }
        let etcd = match &self.etcd {
            Some(urls) => Some(loadgen::fleet_run::EtcdSource {
                client: fleet::Client::new(urls).map_err(|e| anyhow::anyhow!("--etcd: {e}"))?,
                layout: fleet::Layout::new(&self.etcd_prefix),
            }),
            None => None,
        };
        let mut pairs = self.pair;
        if let Some(source) = &etcd {
            let mut warnings = Vec::new();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            pairs = runtime
                .block_on(loadgen::fleet_run::discover::pairs(
                    source,
                    &self.pairs,
                    &mut warnings,
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            for w in warnings {
                eprintln!("warning: {w}");
            }
            if pairs.is_empty() {
                anyhow::bail!(
                    "no pair registered under {} matches --pairs '{}' in etcd at {}",
                    source.layout.pairs(),
                    self.pairs,
                    source.client.endpoints()
                );
            }
        }
        for p in &mut pairs {
            if p.admin.is_some() {
                p.admin_secret = admin_secret.clone();
            }
        }
        let fleet = loadgen::fleet_run::FleetConfig {
            pairs,
            load: config,
            etcd,
            until_campaign_end: self.until_campaign_end,
        };
        Ok((Job::Fleet(fleet), self.json))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::logging::init();
    match args.into_job().and_then(|(job, json)| match job {
        Job::One(config) => run(config, json),
        Job::Fleet(config) => run_fleet(config, json),
    }) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::exit::one_line(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(config: Config, json: bool) -> anyhow::Result<ExitCode> {
    config.validate()?;
    let result = loadgen::run_blocking(config)?;
    for warning in &result.warnings {
        eprintln!("warning: {warning}");
    }
    if json {
        // The human text goes to stderr: stdout is the JSON object alone.
        let mut err = std::io::stderr().lock();
        write_table(&mut err, &result)?;
        println!("{}", summary_json(&result));
    } else {
        write_table(&mut std::io::stdout().lock(), &result)?;
    }
    let s = &result.summary;
    if s.lost_updates > 0 {
        eprintln!(
            "error: {} acknowledged updates were lost, e.g.:",
            s.lost_updates
        );
        for example in &result.lost_examples {
            eprintln!("  {example}");
        }
        return Ok(ExitCode::from(EXIT_LOST));
    }
    Ok(ExitCode::SUCCESS)
}

fn run_fleet(config: loadgen::fleet_run::FleetConfig, json: bool) -> anyhow::Result<ExitCode> {
    let result = loadgen::fleet_run::run_blocking(config)?;
    for warning in &result.warnings {
        eprintln!("warning: {warning}");
    }
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        loadgen::output::write_fleet(w, &result.summary)?;
        if let Some(dir) = &result.out {
            writeln!(
                w,
                "run directory: {} (each pair's in pairs/NAME/)",
                dir.display()
            )?;
        }
        Ok(())
    };
    if json {
        write(&mut std::io::stderr().lock())?;
        let mut v = serde_json::to_value(&result.summary).expect("a summary is JSON");
        v["run_dir"] = result.out.as_ref().map(|d| d.display().to_string()).into();
        v["warnings"] = result.warnings.clone().into();
        println!("{v}");
    } else {
        write(&mut std::io::stdout().lock())?;
    }
    let lost = result.summary.lost_updates;
    if lost > 0 {
        eprintln!("error: {lost} acknowledged updates were lost, e.g.:");
        for (name, r) in &result.pairs {
            for example in &r.lost_examples {
                eprintln!("  {name}: {example}");
            }
        }
        return Ok(ExitCode::from(EXIT_LOST));
    }
    Ok(ExitCode::SUCCESS)
}

/// The per-phase table and what else a person reads at the end of a run.
fn write_table(w: &mut impl Write, result: &loadgen::RunResult) -> std::io::Result<()> {
    loadgen::output::write_summary(w, &result.summary)?;
    if result.unsent > 0 {
        writeln!(
            w,
            "{} requests fell due but were not sent before the run stopped",
            result.unsent
        )?;
    }
    if !result.error_examples.is_empty() {
        writeln!(
            w,
            "error replies, e.g.: {}",
            result.error_examples.join("; ")
        )?;
    }
    if let Some(dir) = &result.out {
        writeln!(w, "run directory: {}", dir.display())?;
    }
    Ok(())
}

/// `--json`: `summary.json`'s object, and what the table says besides.
fn summary_json(result: &loadgen::RunResult) -> serde_json::Value {
    let mut v = serde_json::to_value(&result.summary).expect("a summary is JSON");
    v["run_dir"] = result.out.as_ref().map(|d| d.display().to_string()).into();
    v["unsent"] = result.unsent.into();
    v["warnings"] = result.warnings.clone().into();
    v["error_examples"] = result.error_examples.clone().into();
    v["lost_examples"] = result.lost_examples.clone().into();
    v
}
