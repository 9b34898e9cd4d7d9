//! `tandem`: the front door. Runs a pair, talks to its supervisor, and is also every engine
//! process (`tandem engine ...`, started by the supervisor from this same executable).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use cli::{parse_duration, parse_duration_ms};
use engine::link_io::LinkIo;
use engine::run::{run_engine, EngineArgs};
use engine::supervisor::{run_pair, PairArgs};
use replicator::{BatchConfig, LinkConfig};
use resp::Reply;

/// The exit codes, under every `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  done (for `tandem demo`: also when the upgrade fell back, as --fault makes it)
  1  an error, said on stderr as `error: ...`; `tandem demo`: an acknowledged update was
     lost; `tandem sim`: a seed broke an invariant
  2  bad usage: an unknown flag, a missing or malformed value
  3  `tandem upgrade`: the upgrade did not complete (it rolled back or was aborted);
     `tandem campaign`: not every pair was upgraded (it stopped at a rollback or failure,
     or went on past one with --continue-on-rollback)

Durations: a number and a unit (us, ms, s, m, h), e.g. 30s, 500ms, 2m, 1.5s; a bare number
is milliseconds for the --*-ms flags, seconds for the others.
Logs: on stderr (a pair's supervisor and engines: supervisor.log, a.log, b.log in its
directory), level info; RUST_LOG=debug (or warn, ...) changes it.";

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "Fault-tolerant engine pairs, upgraded while they serve",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// The pair's secret (default: $TANDEM_SECRET_FILE, else ~/.config/tandem/secret,
    /// created 0600 on first use). It authenticates the supervisor, the engines and the
    /// admin commands; clients of the data never need it.
    #[arg(long, global = true, value_name = "FILE")]
    secret_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The main job: start a pair, drive it with the load generator, upgrade it 1.0 -> 2.0
    /// under load (or fall back with --fault), and write the run directory and its report.
    Demo {
        /// Run directory (default: tandem-runs/demo-<unix seconds>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Short windows: the whole run takes about 30 seconds.
        #[arg(long)]
        quick: bool,
        /// Upgrade to a faulty 2.0 (slow or errors): the acceptance check fails and the
        /// pair falls back to 1.0.
        #[arg(long, value_enum)]
        fault: Option<FaultArg>,
        /// Requests per second offered by the load generator (default 5000 with --quick,
        /// 10000 otherwise).
        #[arg(long, value_parser = at_least_one::<u64>)]
        rate: Option<u64>,
        /// Preload N work units (sessions) and N database records, 100-byte payloads, before
        /// the baseline, to see the upgrade at a real state size (e.g. 1000000).
        #[arg(long, value_name = "N", default_value_t = 0)]
        state: u64,
        /// After the tandem run, the same load (rate, connections, pipeline, mix, keys, seed,
        /// state, duration) against another system, in OUT/peer-<PEER>, and a comparison page,
        /// OUT/compare-peer-<PEER>.html.
        #[arg(long, value_enum, value_name = "PEER", conflicts_with = "fleet")]
        peer: Option<PeerArg>,
        /// A fleet of N pairs instead of one: a local etcd (Debian's etcd-server), N pairs
        /// registered in it, the load on all of them, and `tandem campaign --to 2.0`
        /// upgrading them in waves; the fleet's run and report in OUT.
        #[arg(long, value_name = "N", conflicts_with = "state")]
        fleet: Option<usize>,
        /// With --fleet: the campaign's wave sizes (1,2,4 or 25%; default 1,2,4,...).
        #[arg(long, value_name = "SPEC", requires = "fleet")]
        waves: Option<String>,
        /// With --fleet: pairs upgrading at once, at most.
        #[arg(long, value_name = "N", default_value_t = 2, requires = "fleet", value_parser = clap::value_parser!(u32).range(1..))]
        parallel: u32,
    },
    /// Start or stop a pair (engine A active, engine B standby) under a supervisor.
    Pair {
        #[command(subcommand)]
        command: PairCmd,
    },
    /// Show both engines of a pair: role, version, epoch, sequence, work units, digest.
    Status {
        /// The supervisor's admin address (see pair.json).
        #[arg(long)]
        admin: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: the standby becomes active, the active its standby.
    Switchover {
        #[arg(long)]
        admin: String,
    },
    /// Make an engine active when the pair is unavailable (no engine is known to hold every
    /// acknowledged write), accepting the loss of what only the lost engine held.
    Promote {
        #[arg(long)]
        admin: String,
        /// The engine to make active.
        #[arg(long, value_enum)]
        engine: EngineName,
        /// Required: says that you accept losing acknowledged writes.
        #[arg(long, required = true)]
        accept_data_loss: bool,
    },
    /// Rolling upgrade of the pair's application, one engine at a time, while it serves.
    Upgrade(UpgradeCli),
    /// Upgrade every pair registered in etcd (`pair up --etcd`), in waves: a canary, then
    /// growing waves, each pair through its full rolling upgrade; stops at the first
    /// rollback. The campaign's state is in etcd: run the same command again (or --resume)
    /// to go on after its process died. `tandem campaign status`: the fleet at a glance.
    Campaign(engine::campaign::CampaignCli),
    /// Enable the new features of the application on both engines (every engine must run
    /// the new version).
    Features {
        #[command(subcommand)]
        command: FeaturesCmd,
    },
    /// Re-render a run's HTML report, or put two runs side by side.
    Report {
        /// The run directory (summary.json, slices.json, timeline.json).
        run_dir: PathBuf,
        /// A second run to compare with (e.g. the same workload against Redis).
        #[arg(long)]
        compare: Option<PathBuf>,
    },
    /// Run the pair in the deterministic simulator: two real engines, a model of the
    /// supervisor, clients and a nemesis (crashes, pauses, cuts, partitions, slow links,
    /// switchovers, an upgrade), all on a simulated clock and chosen by one seed, with the
    /// invariants checked after every step (see RELIABILITY.md).
    #[cfg(feature = "sim")]
    Sim {
        /// How many seeds to run (side by side); stops at the first that breaks an invariant.
        #[arg(long, default_value_t = 1000, value_parser = at_least_one::<u64>)]
        seeds: u64,
        /// The first seed of --seeds.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Run this one seed and print its trace digest (the same on every run).
        #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
        seed: Option<u64>,
        /// Put a known bug back, to see the simulator find it.
        #[arg(long, value_enum)]
        plant: Option<Plant>,
        /// With --seed: print the whole trace.
        #[arg(long, requires = "seed")]
        trace: bool,
        /// Leave the supervisor alone (by default the nemesis crashes it in half the seeds).
        #[arg(long)]
        no_supervisor_crashes: bool,
        /// Show the engines' own log lines (discarded by default: thousands of seeds).
        #[arg(long)]
        verbose: bool,
        /// Simulate an upgrade campaign over this many pairs instead (1000 if no number is
        /// given): the real campaign logic against models of etcd, the pairs' supervisors,
        /// the network and crashing campaign processes (see engine/src/sim/fleet.rs).
        #[arg(long, value_name = "PAIRS", num_args = 0..=1, default_missing_value = "1000", value_parser = at_least_one::<usize>, conflicts_with = "no_supervisor_crashes")]
        fleet: Option<usize>,
    },
    /// Run one engine process (the supervisor starts these).
    #[command(hide = true)]
    Engine(EngineCli),
}

// Parsed once per process: the size of `Up`'s flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum PairCmd {
    /// Start a pair; the supervisor runs in the foreground unless --detach.
    Up {
        /// Directory for pair.json and the engines' logs.
        #[arg(long)]
        dir: PathBuf,
        /// Admin endpoint port; the engines take the six ports after it, the Sentinel
        /// discovery port the seventh. 0: the OS chooses.
        #[arg(long, default_value_t = 7400)]
        base_port: u16,
        /// Application version both engines start with (1.0 or 2.0).
        #[arg(long, default_value = "1.0", value_parser = app_version)]
        app_version: String,
        /// Start the supervisor in the background and return once the pair is ready.
        #[arg(long)]
        detach: bool,
        /// The pair's name: the master name clients ask its Sentinel discovery port for
        /// (`sentinel_addr` in pair.json).
        #[arg(long, default_value = "tandem")]
        name: String,
        /// Clients must `AUTH` with this password before using the data (Redis's
        /// requirepass). The pair's own processes use the secret, never this.
        #[arg(long, value_name = "PASSWORD")]
        requirepass: Option<String>,
        /// An active that answers no lease renewal for this long is replaced (e.g. 500ms,
        /// 2s).
        #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
        hang_timeout: Duration,
        /// A simplex lease (an active serving alone) lasts this long after it was sent.
        #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
        lease_ttl: Duration,
        /// A standby silent this long on its link stops holding up writes.
        #[arg(long, value_name = "DURATION", default_value = "500ms", value_parser = parse_duration)]
        peer_timeout: Duration,
        /// A replaced or silent engine that stays unresponsive this long is killed and
        /// restarted.
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        hung_kill_after: Duration,
        /// While one engine serves alone, `journal` releases a write only once it is on
        /// disk (survives a crash of that engine); `memory` releases at once (does not).
        #[arg(long, value_enum, default_value_t = Durability::Journal)]
        simplex_durability: Durability,
        /// A client that takes none of its replies for this long is disconnected.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        output_stall_timeout: Duration,
        /// Client connections per engine, at most.
        #[arg(long, default_value_t = 10_000, value_parser = at_least_one::<usize>)]
        clients_max: usize,
        /// Start an empty pair even if DIR holds one whose engines and journals are gone.
        #[arg(long)]
        fresh: bool,
        /// The replication link's driver on both engines: tokio (epoll), or uring (io_uring,
        /// Linux 5.11+; refused at start where the kernel or a sandbox refuses io_uring).
        #[arg(long, value_enum, default_value_t = LinkIo::Tokio)]
        io: LinkIo,
        /// etcd as the pair's witness (http://host:port, comma-separated): epochs are granted
        /// only through etcd, and a second supervisor with the same --name waits as a hot
        /// spare and takes over when this one dies.
        #[arg(long, value_name = "URLS")]
        etcd: Option<String>,
        /// The prefix of tandem's keys in etcd.
        #[arg(long, value_name = "PREFIX", default_value = fleet::keys::DEFAULT_PREFIX, requires = "etcd")]
        etcd_prefix: String,
        /// The supervisor's etcd lease: a spare takes over this long after the leader died.
        #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration, requires = "etcd")]
        witness_ttl: Duration,
    },
    /// Stop a pair and its engines: through its supervisor (--admin), or, with --dir, also
    /// when its supervisor is gone.
    Down {
        #[arg(long, required_unless_present = "dir")]
        admin: Option<String>,
        /// The pair's directory.
        #[arg(long, conflicts_with = "admin")]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Durability {
    Journal,
    Memory,
}

/// The faulty builds `--fault` selects (what `sessions::Fault::parse` takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FaultArg {
    /// 20 % of the commands take 5 ms more.
    Slow,
    /// 5 % of the commands answer an error.
    Errors,
}

impl FaultArg {
    fn as_str(self) -> &'static str {
        match self {
            FaultArg::Slow => "slow",
            FaultArg::Errors => "errors",
        }
    }
}

/// What `tandem demo --peer` compares with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PeerArg {
    /// A Redis primary + replica on free loopback ports, `WAIT 1 0` after each write
    /// (redis-server from Debian's package, on PATH; started and stopped by the demo).
    Redis,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EngineName {
    A,
    B,
}

/// The known bugs `tandem sim --plant` puts back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Plant {
    /// The supervisor promotes a standby that is not in sync.
    PromoteStale,
    /// The active releases a reply before its standby acknowledged it.
    AckBeforeStandby,
    /// --fleet: the campaign asks for a pair's upgrade before the record marking it Running
    /// is durable.
    AskBeforeDurable,
    /// --fleet: a supervisor runs an upgrade whose tag it ran already.
    RerunTag,
    /// --fleet: a supervisor records the upgrade's tag in etcd only when the upgrade ends.
    TagAtEnd,
}

/// The out-of-service phases `tandem upgrade --hold-phase` can keep open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum HoldPhase {
    #[value(name = "b_out_of_service")]
    BOutOfService,
    #[value(name = "a_out_of_service")]
    AOutOfService,
    #[value(name = "b_reload_previous")]
    BReloadPrevious,
}

impl HoldPhase {
    fn as_str(self) -> &'static str {
        match self {
            HoldPhase::BOutOfService => "b_out_of_service",
            HoldPhase::AOutOfService => "a_out_of_service",
            HoldPhase::BReloadPrevious => "b_reload_previous",
        }
    }
}

/// An application version the engines run.
fn app_version(text: &str) -> Result<String, String> {
    engine::sessions::AppVersion::parse(text).map(|v| v.as_str().to_string())
}

/// A count for which 0 means nothing (a rate, connections, batch sizes).
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.trim().parse::<T>() {
        Ok(n) if n < T::from(1) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{text}' is not a whole number")),
    }
}

/// A duration as the milliseconds the upgrade's options carry.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Subcommand)]
enum FeaturesCmd {
    /// Enable them.
    Enable {
        #[arg(long)]
        admin: String,
    },
}

#[derive(clap::Args)]
struct UpgradeCli {
    /// The supervisor's admin address (see pair.json).
    #[arg(long)]
    admin: String,
    /// The application version to upgrade to (1.0 or 2.0).
    #[arg(long, value_parser = app_version)]
    to: String,
    /// Upgrade to a deliberately faulty build to exercise the fallback.
    #[arg(long, value_enum)]
    fault: Option<FaultArg>,
    /// How long to measure the old version before the upgrade (the baseline), e.g. 5s; a
    /// bare number is milliseconds.
    #[arg(long, value_name = "DURATION", default_value = "5000", value_parser = parse_duration_ms)]
    baseline_ms: Duration,
    /// How long to evaluate the new version while it is active (e.g. 5s, or 5000 ms).
    #[arg(long, value_name = "DURATION", default_value = "5000", value_parser = parse_duration_ms)]
    evaluate_ms: Duration,
    /// How long the pair runs in its final state before the upgrade is declared done (e.g.
    /// 3s, or 3000 ms).
    #[arg(long, value_name = "DURATION", default_value = "3000", value_parser = parse_duration_ms)]
    settle_ms: Duration,
    /// A reloaded engine must catch up within this long, or the upgrade is aborted (e.g. 1m,
    /// or 60000 ms).
    #[arg(long, value_name = "DURATION", default_value = "60000", value_parser = parse_duration_ms)]
    catch_up_timeout_ms: Duration,
    /// Acceptance: error replies per command, at most (0.01 = 1 %).
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
    /// Acceptance: p99 latency at most this many times the baseline's...
    #[arg(long, default_value_t = 3.0)]
    p99_factor: f64,
    /// ...or the baseline's plus this, whichever is larger (e.g. 2ms, 500us; a bare number
    /// is milliseconds).
    #[arg(long, value_name = "DURATION", default_value = "2", value_parser = parse_duration_ms)]
    p99_slack_ms: Duration,
    /// Fault injection: keep this out-of-service phase open with its engine down for
    /// --hold-ms, so that the engine serving alone can be failed meanwhile.
    #[arg(long, value_enum, requires = "hold_ms")]
    hold_phase: Option<HoldPhase>,
    /// With --hold-phase: how long (e.g. 5s, or 5000 ms).
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    hold_ms: Duration,
    /// A name for this upgrade (a campaign's `ID/PAIR`): published in etcd with its outcome;
    /// the pair refuses to run an upgrade whose tag it ran already.
    #[arg(long, value_name = "TAG")]
    tag: Option<String>,
}

#[derive(clap::Args)]
struct EngineCli {
    #[arg(long)]
    name: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    client_addr: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    replication_addr: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    control_addr: String,
    #[arg(long, default_value = "1.0", value_parser = app_version)]
    app_version: String,
    /// Inject a fault.
    #[arg(long, value_enum)]
    fault: Option<FaultArg>,
    /// Start as the active of this epoch.
    #[arg(long)]
    active_epoch: Option<u64>,
    /// Start as standby following this replication address.
    #[arg(long)]
    follow: Option<String>,
    #[arg(long, default_value_t = 0)]
    epoch: u64,
    /// Run simplex only under the supervisor's lease.
    #[arg(long)]
    supervised: bool,
    /// Data directory: the simplex journal lives here.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Start from the journal in --data-dir.
    #[arg(long, requires = "data_dir")]
    recover: bool,
    /// A batch closes at this many bytes...
    #[arg(long, default_value_t = 256 << 10, value_parser = at_least_one::<usize>)]
    batch_bytes_max: usize,
    /// ...or this many updates.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one::<u32>)]
    batch_updates_max: u32,
    /// Batches in flight to the standby, at most.
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    batches_in_flight_max: usize,
    /// A silent peer is declared dead after this long (a bare number is milliseconds).
    #[arg(long, value_name = "DURATION", default_value = "500", value_parser = parse_duration_ms)]
    peer_timeout_ms: Duration,
    /// Client connections at once, at most.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one::<usize>)]
    clients_max: usize,
    /// A client that takes none of its replies for this long is disconnected (a bare number
    /// is milliseconds).
    #[arg(long, value_name = "DURATION", default_value = "30000", value_parser = parse_duration_ms)]
    output_stall_timeout_ms: Duration,
    /// The replication link's driver.
    #[arg(long, value_enum, default_value_t = LinkIo::Tokio)]
    io: LinkIo,
    /// The pair's etcd witness: a new epoch is taken only if --etcd-key holds it.
    #[arg(long, value_name = "URLS", requires = "etcd_key")]
    etcd: Option<String>,
    /// The pair's record in etcd (`P/pair/NAME`).
    #[arg(long, value_name = "KEY", requires = "etcd")]
    etcd_key: Option<String>,
}

/// With a password here the client port takes Redis's `AUTH` first (not a flag: it would
/// show in `ps`).
const REQUIREPASS_ENV: &str = "TANDEM_REQUIREPASS";

fn secret(explicit: Option<&std::path::Path>) -> anyhow::Result<replicator::Secret> {
    Ok(replicator::Secret::resolve(explicit)?.1)
}

fn main() {
    let cli = Cli::parse();
    #[cfg(feature = "sim")]
    let silent = matches!(cli.command, Cmd::Sim { verbose: false, .. });
    #[cfg(not(feature = "sim"))]
    let silent = false;
    if !silent {
        cli::logging::init();
    }
    if matches!(cli.command, Cmd::Status { .. } | Cmd::Report { .. }) {
        // What these print is often piped (`tandem status --json | head`): a closed pipe
        // ends them quietly, as any Unix tool, not as a panic on the next print. Not for the
        // commands that serve: a peer that closes its socket must be an error to handle
        // (`writev` on a closed socket raises SIGPIPE), never the end of the process.
        // SAFETY: before any thread exists; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Err(e) = run(cli) {
        cli::exit::fail(&e);
    }
}

/// Points fd 2 at /dev/null: the simulated engines log as real ones do, thousands of times.
#[cfg(feature = "sim")]
fn silence_stderr() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2 of an fd we own; nothing holds a borrowed fd 2.
        unsafe {
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let secret_file = cli.secret_file.as_deref();
    match cli.command {
        Cmd::Engine(e) => run_engine(EngineArgs {
            name: e.name,
            client_addr: e.client_addr,
            replication_addr: e.replication_addr,
            control_addr: e.control_addr,
            app_version: e.app_version,
            fault: e.fault.map(|f| f.as_str().to_string()),
            active_epoch: e.active_epoch,
            follow: e.follow,
            epoch: e.epoch,
            supervised: e.supervised,
            data_dir: e.data_dir,
            recover: e.recover,
            batch: BatchConfig {
                batch_bytes_max: e.batch_bytes_max,
                batch_updates_max: e.batch_updates_max,
                ..BatchConfig::default()
            },
            link: LinkConfig {
                batches_in_flight_max: e.batches_in_flight_max,
                peer_timeout: e.peer_timeout_ms,
                ..LinkConfig::new(secret(secret_file)?)
            },
            io: e.io,
            limits: engine::server::ServerLimits {
                clients_max: e.clients_max,
                output_stall_timeout: e.output_stall_timeout_ms,
                requirepass: std::env::var_os(REQUIREPASS_ENV)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.into_encoded_bytes()),
                ..Default::default()
            },
            witness: e.etcd.zip(e.etcd_key),
        }),
        Cmd::Pair {
            command:
                PairCmd::Up {
                    dir,
                    base_port,
                    app_version,
                    detach,
                    name,
                    requirepass,
                    hang_timeout,
                    lease_ttl,
                    peer_timeout,
                    hung_kill_after,
                    simplex_durability,
                    output_stall_timeout,
                    clients_max,
                    fresh,
                    io,
                    etcd,
                    etcd_prefix,
                    witness_ttl,
                },
        } => {
            // Every engine would refuse to start: say so once, before starting any.
            io.check()
                .with_context(|| format!("--io {}", io.as_str()))?;
            let (secret_file, _) = replicator::Secret::resolve(secret_file)?;
            let engine_args = vec![
                "--peer-timeout-ms".to_string(),
                peer_timeout.as_millis().to_string(),
                "--output-stall-timeout-ms".into(),
                output_stall_timeout.as_millis().to_string(),
                "--clients-max".into(),
                clients_max.to_string(),
                "--io".into(),
                io.as_str().into(),
            ];
            let args = PairArgs {
                dir,
                base_port,
                app_version,
                secret_file,
                requirepass,
                name,
                timing: engine::supervisor::Timing {
                    lease_ttl,
                    hang_timeout,
                    hung_kill_after,
                },
                journal: simplex_durability == Durability::Journal,
                fresh,
                engine_args,
                witness: etcd.map(|urls| engine::witness::WitnessArgs {
                    urls,
                    prefix: etcd_prefix,
                    ttl: witness_ttl,
                }),
            };
            if detach {
                return detach_pair(&std::env::args().collect::<Vec<_>>(), &args.dir);
            }
            run_pair(args)
        }
        Cmd::Pair {
            command: PairCmd::Down { admin, dir },
        } => {
            match (admin, dir) {
                (Some(admin), _) => println!("{}", admin_call(secret_file, &admin, &["SHUTDOWN"])?),
                (None, Some(dir)) => {
                    println!("{}", engine::pair_down::run(&dir, &secret(secret_file)?)?)
                }
                (None, None) => unreachable!("clap requires --admin or --dir"),
            }
            Ok(())
        }
        Cmd::Promote {
            admin,
            engine,
            accept_data_loss: _,
        } => {
            println!(
                "{}",
                admin_call(
                    secret_file,
                    &admin,
                    &[
                        "PROMOTE",
                        engine.to_possible_value().expect("named").get_name(),
                        "FORCE"
                    ]
                )?
            );
            Ok(())
        }
        Cmd::Status { admin, json } => {
            let text = admin_call(secret_file, &admin, &["STATUS"])?;
            if json {
                println!("{text}");
            } else {
                print_status(&text)?;
            }
            Ok(())
        }
        Cmd::Switchover { admin } => {
            println!("{}", admin_call(secret_file, &admin, &["SWITCHOVER"])?);
            Ok(())
        }
        Cmd::Demo {
            out,
            quick,
            fault,
            rate,
            fleet: Some(pairs),
            waves,
            parallel,
            ..
        } => engine::demo_fleet::run(engine::demo_fleet::FleetDemoArgs {
            out,
            pairs,
            quick,
            fault: fault.map(|f| f.as_str().to_string()),
            rate_ops_s: rate,
            waves,
            parallel,
            secret_file: replicator::Secret::resolve(secret_file)?.0,
        }),
        Cmd::Demo {
            out,
            quick,
            fault,
            rate,
            state,
            peer,
            fleet: None,
            ..
        } => engine::demo::run(engine::demo::DemoArgs {
            out,
            quick,
            fault: fault.map(|f| f.as_str().to_string()),
            rate_ops_s: rate,
            state,
            secret_file: replicator::Secret::resolve(secret_file)?.0,
            peer: peer.map(|PeerArg::Redis| engine::demo::Peer::Redis),
        }),
        Cmd::Report { run_dir, compare } => report(&run_dir, compare.as_deref()),
        #[cfg(feature = "sim")]
        Cmd::Sim {
            seeds,
            first_seed,
            seed,
            plant,
            trace,
            no_supervisor_crashes,
            verbose,
            fleet,
        } => {
            if !verbose {
                silence_stderr();
            }
            let plant = plant.map(|p| p.to_possible_value().expect("named").get_name().to_string());
            if let Some(pairs) = fleet {
                let args = engine::sim::fleet::Args {
                    pairs,
                    seeds,
                    first_seed,
                    seed,
                    plant,
                    trace,
                };
                if !engine::sim::fleet::main(&args).map_err(anyhow::Error::msg)? {
                    std::process::exit(1);
                }
                return Ok(());
            }
            let args = engine::sim::cli::Args {
                seeds,
                first_seed,
                seed,
                plant,
                trace,
                supervisor_crashes: !no_supervisor_crashes,
            };
            let passed = engine::sim::cli::main(&args).map_err(anyhow::Error::msg)?;
            if !passed {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Features {
            command: FeaturesCmd::Enable { admin },
        } => {
            println!("{}", admin_call(secret_file, &admin, &["FEATURES.ENABLE"])?);
            Ok(())
        }
        Cmd::Campaign(c) => {
            let code = engine::campaign::main(c, secret_file)?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Cmd::Upgrade(u) => {
            let options = engine::upgrade::Options {
                fault: u.fault.map(|f| f.as_str().to_string()),
                baseline_ms: millis(u.baseline_ms),
                evaluate_ms: millis(u.evaluate_ms),
                settle_ms: millis(u.settle_ms),
                catch_up_timeout_ms: millis(u.catch_up_timeout_ms),
                max_error_rate: u.max_error_rate,
                p99_factor: u.p99_factor,
                p99_slack_ms: u.p99_slack_ms.as_secs_f64() * 1e3,
                hold_phase: u.hold_phase.map(|h| h.as_str().to_string()),
                hold_ms: millis(u.hold_ms),
                tag: u.tag,
            };
            engine::upgrade_cli::run(&secret(secret_file)?, &u.admin, &u.to, &options)
        }
    }
}

fn admin_call(
    secret_file: Option<&std::path::Path>,
    admin: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let secret = secret(secret_file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = engine::admin::connect(admin, &secret).await?;
        let parts: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        match client
            .call(&parts)
            .await
            .map_err(|e| anyhow::anyhow!("the supervisor at {admin} did not answer: {e}"))?
        {
            Reply::Error(e) => bail!("{e}"),
            Reply::Simple(s) => Ok(s),
            Reply::Bulk(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            other => Ok(other.to_string()),
        }
    })
}

fn print_status(text: &str) -> anyhow::Result<()> {
    use engine::contract::{PairEngine, PairStatus};
    let pair: PairStatus =
        engine::contract::decode("the supervisor", text.as_bytes()).map_err(anyhow::Error::msg)?;
    println!(
        "pair: epoch {}, active {}, standby promotable: {}{}",
        pair.epoch,
        pair.active,
        pair.standby_promotable,
        if pair.upgrade_in_progress {
            ", upgrade in progress"
        } else {
            ""
        }
    );
    if let Some(why) = &pair.unavailable {
        println!("UNAVAILABLE (writes refused): {why}");
    }
    if let Some(w) = &pair.witness {
        let state = match (&w.state[..], w.unreachable_since_ms) {
            ("unreachable", Some(since)) => format!(
                "UNREACHABLE for {:.1} s (no new epoch until it answers; {})",
                reports::timeline::now_ms().saturating_sub(since) as f64 / 1e3,
                w.error.as_deref().unwrap_or("")
            ),
            (state, _) => state.to_string(),
        };
        println!(
            "witness: etcd {} ({}), this supervisor is the {}{}, etcd {state}",
            w.url,
            w.key,
            w.role,
            match (&w.role[..], &w.leader) {
                ("spare", Some(leader)) => format!(" (leader: {leader})"),
                _ => String::new(),
            }
        );
    }
    if let Some(p) = &pair.failover_pending {
        println!(
            "failover in progress: promoting {} at epoch {} (attempt {}{})",
            p.promoting,
            p.epoch,
            p.attempts,
            p.last_error
                .as_deref()
                .map(|e| format!(", last: {e}"))
                .unwrap_or_default()
        );
    }
    let row = |cells: [&str; 11]| {
        println!(
            "{:<4} {:<15} {:<7} {:<9} {:<8} {:<21} {:<21} {:>5} {:>10} {:>10} {:<16}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10]
        )
    };
    row([
        "name",
        "role",
        "version",
        "features",
        "pid",
        "client",
        "replication",
        "epoch",
        "seq",
        "work_units",
        "digest",
    ]);
    for e in &pair.engines {
        match e {
            PairEngine::Up(s) => {
                let features = format!(
                    "L{}{}",
                    s.feature_level,
                    if s.features_enabled { "+on" } else { "" }
                );
                row([
                    &s.name,
                    s.role.as_str(),
                    &s.app_version,
                    &features,
                    &s.pid.to_string(),
                    &s.client_addr,
                    &s.replication_addr,
                    &s.epoch.to_string(),
                    &s.seq_applied.to_string(),
                    &s.work_units.to_string(),
                    &s.digest,
                ]);
            }
            PairEngine::Down(d) => {
                let pid = d.pid.map_or("-".into(), |p| p.to_string());
                row([
                    &d.name,
                    &d.role,
                    &d.app_version,
                    "-",
                    &pid,
                    &d.client_addr,
                    &d.replication_addr,
                    &d.epoch.to_string(),
                    "-",
                    "-",
                    "-",
                ]);
            }
        }
    }
    Ok(())
}

/// Starts the supervisor in the background (this same command line without `--detach`) and
/// waits for it to say it is ready.
fn detach_pair(argv: &[String], dir: &std::path::Path) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    std::fs::create_dir_all(dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("supervisor.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(argv.iter().skip(1).filter(|a| *a != "--detach"));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(log)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(admin) = line.strip_prefix("READY admin=") {
            println!(
                "pair up (supervisor pid {}), admin {admin}; details in {}",
                child.id(),
                dir.join("pair.json").display()
            );
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix("SPARE admin=") {
            println!(
                "hot spare supervisor up (pid {}), admin {rest}; it takes the pair over when its leader goes",
                child.id()
            );
            return Ok(());
        }
    }
    bail!(
        "the supervisor exited before the pair was ready; see {}",
        dir.join("supervisor.log").display()
    )
}

fn report(run_dir: &std::path::Path, compare: Option<&std::path::Path>) -> anyhow::Result<()> {
    use reports::run::RunDir;
    for dir in std::iter::once(run_dir).chain(compare) {
        anyhow::ensure!(
            dir.join("summary.json").is_file(),
            "{} is not a run directory (it has no summary.json): give one that `tandem demo` or \
             `loadgen --out` wrote",
            dir.display()
        );
    }
    let run = RunDir::new(run_dir);
    match compare {
        None => {
            let path = run.render_report()?;
            for problem in run.check()? {
                eprintln!("warning: {problem}");
            }
            println!("{}", path.display());
        }
        Some(other) => {
            let label = |p: &std::path::Path| {
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| p.display().to_string())
            };
            // Both runs' summaries, slices, timelines and detail, charts on shared axes.
            let path = run.render_compare(&RunDir::new(other), &label(run_dir), &label(other))?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
