//! `loadgen`: the command line over the library. Parses and checks the flags, runs the load
//! on a multi-threaded runtime, prints a per-phase table and where the run directory is,
//! and exits non-zero on an error or when an acknowledged update was lost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use loadgen::{Config, Distribution, Mix, Mode};

/// Drives a tandem pair (or a Redis primary/replica) over RESP, measures latency per
/// phase with coordinated-omission correction, follows switchovers, and checks at the end
/// that no acknowledged update was lost.
#[derive(Parser, Debug)]
#[command(name = "loadgen", version)]
#[command(group(ArgGroup::new("pace").required(true).args(["rate", "closed"])))]
struct Args {
    /// Client address(es), comma-separated. Tandem: any engine of the pair (the load
    /// follows the active). Redis: the primary first, then the replica.
    #[arg(
        long,
        value_name = "ADDR[,ADDR]",
        value_delimiter = ',',
        required = true
    )]
    target: Vec<String>,

    /// The tandem supervisor's admin address: subscribe to its timeline, attribute every
    /// sample to the upgrade phase it fell in, and measure its switchovers.
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,

    /// With --admin: the pair's secret (default: $TANDEM_SECRET_FILE, else
    /// ~/.config/tandem/secret, as every tandem command finds it).
    #[arg(long, value_name = "FILE", requires = "admin")]
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
    #[arg(long, value_name = "CONNECTIONS", value_parser = parse_positive)]
    closed: Option<usize>,

    /// A connection whose oldest request gets no reply for this long is given up and the
    /// active looked for again (how a client notices a hung engine), e.g. 1s, 500ms.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    reply_timeout: Duration,

    /// How long to run, e.g. 30s, 500ms, 2m.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    duration: Duration,

    /// Stop when the timeline says the upgrade ended (plus --tail), if before --duration.
    #[arg(long, requires = "admin")]
    until_upgrade_end: bool,

    /// With --until-upgrade-end: keep going this long after the upgrade ended.
    #[arg(long, value_name = "D", value_parser = parse_duration, default_value = "1s")]
    tail: Duration,

    /// Run directory to write: summary.json, slices.json, timeline.json, histograms.hlog.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Open loop: connections the rate is spread over.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = parse_positive)]
    connections: usize,

    /// Requests in flight per connection, at most.
    #[arg(long, value_name = "P", default_value_t = 16, value_parser = parse_positive)]
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
    #[arg(long, value_name = "N", default_value_t = 100_000)]
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
}

fn parse_rate(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("the rate must be at least 1 op/s".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a whole number of ops/s")),
    }
}

fn parse_positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a whole number")),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    loadgen::parse_duration(text).map_err(|e| e.to_string())
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mode = match (self.rate, self.closed) {
            (Some(rate_ops_s), _) => Mode::Open { rate_ops_s },
            (None, Some(connections)) => Mode::Closed { connections },
            (None, None) => unreachable!("clap requires --rate or --closed"),
        };
        let admin_secret = match &self.admin {
            Some(_) => Some(auth::Secret::resolve(self.secret_file.as_deref())?.1),
            None => None,
        };
        Ok(Config {
            targets: self.target,
            admin: self.admin,
            admin_secret,
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
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::logging::init();
    match args.into_config().and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(config: Config) -> anyhow::Result<ExitCode> {
    config.validate()?;
    let result = loadgen::run_blocking(config)?;
    for warning in &result.warnings {
        eprintln!("warning: {warning}");
    }
    print_table(&result);
    if !result.error_examples.is_empty() {
        println!("error replies, e.g.: {}", result.error_examples.join("; "));
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
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(result: &loadgen::RunResult) {
    loadgen::output::print_summary(&result.summary);
    if result.unsent > 0 {
        println!(
            "{} requests fell due but were not sent before the run stopped",
            result.unsent
        );
    }
    if let Some(dir) = &result.out {
        println!("run directory: {}", dir.display());
    }
}
