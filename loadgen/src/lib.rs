//! The load generator: drives a tandem pair (or a Redis primary/replica, with the same
//! code) over RESP, open-loop at a fixed rate with coordinated-omission correction or
//! closed-loop; follows switchovers; records latency per phase and per second in
//! HdrHistograms; and verifies at the end that no acknowledged update was lost.
//!
//! [`run`] is the whole run: reach the targets, subscribe to the supervisor's timeline,
//! open the connections (`connection`), stop after the duration or the upgrade's end,
//! read everything back (`verify`), assemble the summary (`summary`, `switchover`) and
//! write the run directory (`output`). The `loadgen` binary is a thin CLI over it, and
//! `tandem demo` calls it in-process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), loadgen::Error> {
//! use std::time::Duration;
//! let result = loadgen::run(loadgen::Config {
//!     targets: vec!["127.0.0.1:7401".into()],
//!     admin: Some("127.0.0.1:7400".into()),
//!     mode: loadgen::Mode::Open { rate_ops_s: 20_000 },
//!     duration: Duration::from_secs(60),
//!     until_upgrade_end: true,
//!     out: Some("runs/demo".into()),
//!     ..loadgen::Config::default()
//! })
//! .await?;
//! assert_eq!(result.summary.lost_updates, 0);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod connection;
pub mod detail;
pub mod error;
pub mod fleet_run;
pub mod output;
pub mod pacer;
pub mod phase;
pub mod progress;
pub mod protocol;
pub mod record;
pub mod summary;
pub mod switchover;
pub mod timeline;
pub mod verify;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use reports::run::{Detail, Slice, DETAIL_SCHEMA};
use reports::summary::{Summary, RUN_SCHEMA};
use reports::timeline::Timeline;
use resp::{Client, Reply};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use config::{Config, ConfigError, Distribution, Mix, Mode};
pub use error::Error;

use clock::Clock;
use connection::{Setup, Shared, DRAIN_NS, RUNNING};
use phase::{PhaseMap, PhaseSource, PhaseView};
use protocol::{Dialect, Encoder};
use record::{slice_of, Aggregate, Recorder, GRACE_US, SLOW_PER_SLICE_MAX};
use switchover::Activity;
use timeline::Feed;
use verify::Ledger;
use workload::{partition_len, zipfians_for, KeyPicker, OpChooser, Rng, SESSION_UPDATES};

/// How often the run checks its stop conditions, finalizes slices and redraws progress.
const CONTROL_TICK: Duration = Duration::from_millis(100);
/// A slice is finalized once no connection may add to it any more (see `record`), or at the
/// latest this many slices after it: a request outstanding longer than that lands in a
/// second record of its slice, merged in `record::merge_slices` (counts added, percentiles
/// weighed by count, the larger maximum), rather than hold every slice since in memory.
/// Each open (slice, phase) is a ~180 KB histogram, so one stuck connection pins up to this
/// many times the phases a second overlaps (~22 MB at 60 with two). A request answered at
/// all is answered well within a minute of its second with the defaults: a reply timeout
/// of 1 s, then at most 30 s of looking for the active (`connection::FOLLOW_TIMEOUT`, after
/// which the connection gives up), 2 s of redirect drain, and the re-send's own reply
/// timeout. Only a reply timeout of tens of seconds, or an open-loop backlog over a minute
/// deep, makes late records, and those merge.
const OPEN_SLICES_MAX: u64 = 60;
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bounds on the per-connection sizing guesses.
const PENDING_SAMPLES_MAX: usize = 1 << 16;
const SESSIONS_HINT_MAX: usize = 1 << 20;

/// What a run measured.
pub struct RunResult {
    /// `summary.json`.
    pub summary: Summary,
    /// `slices.json`: one entry per second.
    pub slices: Vec<Slice>,
    /// `detail.json`: the slow requests and the switchovers at millisecond resolution.
    pub detail: Detail,
    /// The timeline as received (with `admin`).
    pub timeline: Option<Timeline>,
    /// The latency histogram of each phase, in the order of `summary.phases`.
    pub phase_histograms: Vec<(String, Histogram<u64>)>,
    /// A few lost updates, described (empty when none was lost).
    pub lost_examples: Vec<String>,
    /// Problems that did not stop the run: an unreachable target, a connection that gave
    /// up, a timeline subscription that ended early.
    pub warnings: Vec<String>,
    /// Open loop: requests that fell due but were never sent (the run stopped first).
    pub unsent: u64,
    /// A few of the error replies counted in `summary.phases[].errors`.
    pub error_examples: Vec<String>,
    /// The run directory written, if any.
    pub out: Option<PathBuf>,
}

/// [`run`] on a multi-threaded runtime of its own. Call it from a thread that is not
/// running a tokio runtime (e.g. inside `spawn_blocking` or a plain thread).
pub fn run_blocking(config: Config) -> Result<RunResult, Error> {
    runtime(config.connection_count())?.block_on(run(config))
}

/// A multi-threaded runtime for `connections` connections: a thread each, at most one per
/// CPU, at least two.
pub(crate) fn runtime(connections: usize) -> Result<tokio::runtime::Runtime, Error> {
    let threads = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .min(connections + 1)
        .max(2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// Runs the load described by `config` on the current tokio runtime (use a multi-threaded
/// one: each connection is a task) and returns what it measured; writes the run directory
/// if `config.out` is set.
pub async fn run(config: Config) -> Result<RunResult, Error> {
    let prepared = prepare(config).await?;
    let clock = Clock::start_now();
    let pacer = match prepared.config.mode {
        Mode::Open { rate_ops_s } => Some(
            pacer::Pacer::start(clock, rate_ops_s, prepared.connections).map_err(Error::Runtime)?,
        ),
        Mode::Closed { .. } => None,
    };
    drive(
        prepared,
        clock,
        Hooks {
            own_pacer: pacer,
            ..Hooks::default()
        },
    )
    .await
}

/// A run whose targets are reached, timeline subscribed and connections open: what
/// [`drive`] starts from. A fleet run prepares every pair before it starts one clock for
/// all of them.
pub(crate) struct Prepared {
    pub(crate) config: Config,
    dialect: Dialect,
    pub(crate) connections: usize,
    warnings: Vec<String>,
    targets: Vec<String>,
    server_version: Option<String>,
    phase_source: Arc<PhaseSource>,
    feed: Arc<Feed>,
    subscription: Option<tokio::task::JoinHandle<()>>,
    streams: Vec<TcpStream>,
}

impl Prepared {
    /// The pair's timeline as received so far.
    pub(crate) fn feed(&self) -> Arc<Feed> {
        self.feed.clone()
    }
}

/// What a fleet run shares with each of its pairs' runs; a lone run has its own pacer.
#[derive(Default)]
pub(crate) struct Hooks {
    /// Stopped when the run stops.
    pub(crate) own_pacer: Option<pacer::Pacer>,
    /// A fleet's pacer: what this run's connections wait on, by index.
    pub(crate) wakers: Option<Vec<Arc<tokio::sync::Notify>>>,
    /// The fleet's stop time (ns on the shared clock; `RUNNING` until decided).
    pub(crate) stop: Option<watch::Receiver<u64>>,
    /// Where each finalized second's histogram also goes, and this run's index there.
    pub(crate) sink: Option<(Arc<fleet_run::sink::FleetSink>, usize)>,
}

/// Reaches the targets, subscribes to the timeline and opens the connections.
pub(crate) async fn prepare(config: Config) -> Result<Prepared, Error> {
    config.validate()?;
    let dialect = if config.redis {
        Dialect::Redis
    } else {
        Dialect::Tandem
    };
    let connections = config.connection_count();
    let mut warnings = Vec::new();
    let targets = order_targets(&config, &mut warnings).await?;
    let server_version = match &config.target_version {
        Some(_) => None,
        None => server_version(&targets[0]).await,
    };

    let phase_source = Arc::new(PhaseSource::default());
    let feed = Arc::new(Feed::new(phase_source.clone(), reports::timeline::now_ms()));
    let subscription = match &config.admin {
        Some(admin) => {
            Some(timeline::subscribe(admin, config.admin_secret.as_ref(), feed.clone()).await?)
        }
        None => None,
    };
    let streams = connect_all(&targets[0], connections, unreachable_hint(&config)).await?;
    Ok(Prepared {
        config,
        dialect,
        connections,
        warnings,
        targets,
        server_version,
        phase_source,
        feed,
        subscription,
        streams,
    })
}

/// Waits for the next change of an optional watch; never, without one (or once closed).
async fn changed(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs a prepared load from `clock`'s start until it stops, reads everything back and
/// writes the run directory.
pub(crate) async fn drive(
    prepared: Prepared,
    clock: Clock,
    mut hooks: Hooks,
) -> Result<RunResult, Error> {
    let Prepared {
        config,
        dialect,
        connections,
        mut warnings,
        targets,
        server_version,
        phase_source,
        feed,
        subscription,
        streams,
    } = prepared;
    let mut aggregate = Aggregate::new(clock, connections);
    if let Some((sink, member)) = &hooks.sink {
        aggregate = aggregate.with_sink(sink.clone(), *member);
    }
    let aggregate = Arc::new(aggregate);
    let run_span_us = (config.duration.as_micros() as u64) + DRAIN_NS / 1000 + 60_000_000;
    let shared = Arc::new(Shared {
        clock,
        targets: targets.clone(),
        dialect,
        redis_wait: config.redis_wait,
        reply_timeout: config.reply_timeout,
        pipeline: config.pipeline,
        rate_ops_s: match config.mode {
            Mode::Open { rate_ops_s } => Some(rate_ops_s),
            Mode::Closed { .. } => None,
        },
        connections,
        chooser: OpChooser::new(config.mix),
        activity: Activity::new(run_span_us),
        mark_reads: !config.mix.has_writes(),
        redirects: Mutex::new(Vec::new()),
        retried: Mutex::new(Vec::new()),
        millis: detail::Millis::new(&clock, run_span_us),
        ops: 0.into(),
        errors: 0.into(),
    });
    let (stop_tx, stop_rx) = watch::channel(RUNNING);
    let zipfians = zipfians_for(config.distribution, config.keys, connections as u64);
    let (pending_max, sessions_hint) = sizing(&config);
    // Session ids and writer sequence numbers are unique to this run (see `verify`).
    let run_id = clock.start_wall_ms();
    let mut pacer = hooks.own_pacer.take();
    let wakers = match (&hooks.wakers, &pacer) {
        (Some(w), _) => Some(w.clone()),
        (None, Some(p)) => Some(p.group_wakers(0)),
        (None, None) => None,
    };
    let mut tasks = Vec::with_capacity(connections);
    for (index, stream) in streams.into_iter().enumerate() {
        let local_keys = partition_len(config.keys, connections as u64, index as u64);
        let zipfian = zipfians.iter().find(|z| z.items() == local_keys).cloned();
        let setup = Setup {
            index,
            stream,
            address: targets[0].clone(),
            keys: KeyPicker::new(config.keys, connections as u64, index as u64, zipfian),
            rng: Rng::for_stream(config.seed, index as u64),
            encoder: Encoder::new(dialect, config.value_bytes, index, run_id),
            ledger: Ledger::new(run_id, index, connections as u64, local_keys, sessions_hint),
            recorder: Recorder::new(
                aggregate.clone(),
                PhaseView::new(phase_source.clone()),
                clock,
                pending_max,
                index,
                config.slow_threshold.as_micros() as u64,
            ),
            stop: stop_rx.clone(),
            pacer: wakers.as_ref().map(|w| w[index].clone()),
            seq_first: verify::first_seq(run_id),
        };
        tasks.push(tokio::spawn(connection::run(shared.clone(), setup)));
    }

    // Run until the duration is up, or the upgrade ended (plus the tail), or every
    // connection gave up.
    let mut progress = progress::Progress::new(config.progress);
    let duration_ns = config.duration.as_nanos() as u64;
    let mut stop_ns;
    loop {
        let now_ns = clock.now_ns();
        stop_ns = duration_ns;
        if config.until_upgrade_end {
            if let Some((at, _)) = feed.upgrade_end() {
                let at_ns = at.saturating_duration_since(clock.start()).as_nanos() as u64;
                stop_ns = stop_ns.min(at_ns + config.tail.as_nanos() as u64);
            }
        }
        if let Some(fleet_stop) = &hooks.stop {
            stop_ns = stop_ns.min(*fleet_stop.borrow());
        }
        if now_ns >= stop_ns || tasks.iter().all(|t| t.is_finished()) {
            // Nothing falls due after the stop time, even if this wake-up came late.
            stop_ns = stop_ns.min(now_ns);
            break;
        }
        let (_, map) = phase_source.snapshot();
        let now_us = now_ns / 1000;
        let now_slice = slice_of(now_us);
        let settled = aggregate.settled_slice().min(now_slice);
        aggregate.finalize_below(settled.max(now_slice.saturating_sub(OPEN_SLICES_MAX)), &map);
        if progress.enabled() {
            let last = aggregate.last_slice();
            progress.update(&progress::Snapshot {
                elapsed: Duration::from_nanos(now_ns),
                ops: shared.ops.load(Ordering::Relaxed),
                errors: shared.errors.load(Ordering::Relaxed),
                p99_us: last.map(|s| s.latency.p99),
                phase: map.name(map.phase_at_ms(clock.wall_ms_at_us(now_us))),
            });
        }
        let wake_ns = stop_ns.min(now_ns + CONTROL_TICK.as_nanos() as u64);
        let wake = tokio::time::sleep_until(clock.instant_at_ns(wake_ns).into());
        tokio::select! {
            () = wake => {}
            () = feed.changed(), if config.until_upgrade_end => {}
            () = changed(&mut hooks.stop) => {}
        }
    }
    let _ = stop_tx.send(stop_ns);
    if let Some(pacer) = &mut pacer {
        pacer.stop();
    }
    let mut reports = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await {
            Ok(report) => reports.push(report),
            Err(e) => warnings.push(format!("a connection task failed: {e}")),
        }
    }
    drop(stop_tx);
    progress.finish();
    let ended_us = clock.now_us();

    // The timeline as it stands now places every sample that still waits for its phase.
    let timeline = feed.timeline();
    if let Some(task) = subscription {
        task.abort();
        if let Some(problem) = feed.problem() {
            warnings.push(problem);
        }
    }
    let map = PhaseMap::from_events(&timeline.events);
    phase_source.publish(map.clone());
    for report in &mut reports {
        report.recorder.finish();
        if let Some(error) = &report.error {
            warnings.push(error.to_string());
        }
    }
    aggregate.finalize_below(u64::MAX, &map);
    // Slices run on to the last second in which load was offered (or a reply arrived).
    let replied = shared.millis.replied_per_slice();
    let last_replied = replied.iter().rposition(|&n| n > 0).unwrap_or(0) as u64;
    aggregate.fill_to(
        slice_of(stop_ns.saturating_sub(1) / 1000).max(last_replied),
        &map,
    );
    if let Some((sink, member)) = &hooks.sink {
        sink.member_done(*member);
    }
    let recorded = aggregate.take();
    warnings.extend(recorded.problems);

    let ledgers: Vec<Ledger> = reports.iter().map(|r| r.ledger.clone()).collect();
    let acknowledged_updates: u64 = ledgers.iter().map(Ledger::acknowledged_updates).sum();
    let verification = if acknowledged_updates > 0 {
        let mut candidates = targets.clone();
        for r in &reports {
            if !candidates.contains(&r.address) {
                candidates.push(r.address.clone());
            }
        }
        verify::verify(&ledgers, &candidates, dialect).await?
    } else {
        verify::Verification::default()
    };

    let started_ms = clock.start_wall_ms();
    let ended_ms = clock.wall_ms_at_us(ended_us);
    let windows = if config.admin.is_some() {
        switchover::windows_from_timeline(&timeline.events, started_ms, ended_ms)
    } else {
        let redirects = shared
            .redirects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        switchover::windows_from_redirects(redirects, |us| clock.wall_ms_at_us(us))
    };
    let mut switchovers =
        switchover::summarize(&windows, &shared.activity.snapshot(), clock.start_wall_us());
    {
        let redirects = shared.redirects.lock().unwrap_or_else(|e| e.into_inner());
        let retried = shared.retried.lock().unwrap_or_else(|e| e.into_inner());
        switchover::attribute(&mut switchovers, &windows, &redirects, &retried, |us| {
            clock.wall_ms_at_us(us)
        });
    }
    let phases = summary::phases(&map, recorded.phase_totals, started_ms, ended_ms);
    let outcome = timeline
        .events
        .iter()
        .rev()
        .find(|e| e.kind == reports::timeline::EventKind::UpgradeEnd && e.t_ms + 50 >= started_ms)
        .and_then(|e| e.outcome.clone())
        .unwrap_or_else(|| "completed".to_string());
    let simplex_windows: Vec<[u64; 2]> = timeline
        .simplex_windows(started_ms, ended_ms)
        .into_iter()
        .map(|(s, e)| [s, e])
        .collect();
    let mut phases = phases;
    for p in &mut phases {
        p.summary.simplex_ms =
            reports::summary::overlap_ms(&simplex_windows, p.summary.start_ms, p.summary.end_ms);
    }
    let summary = Summary {
        schema: RUN_SCHEMA.to_string(),
        outcome,
        target: config.target_name().to_string(),
        started_ms,
        ended_ms,
        workload: config.workload_json(),
        phases: phases.iter().map(|p| p.summary.clone()).collect(),
        switchovers,
        acknowledged_updates,
        verified_updates: verification.verified,
        lost_updates: verification.lost,
        simplex_ms: simplex_windows.iter().map(|[s, e]| e - s).sum(),
        simplex_windows,
        environment: Some(reports::environment::capture(&target_version(
            config.target_version.as_deref(),
            server_version.as_deref(),
            &timeline,
        ))),
        fleet: None,
    };
    let slices = summary::slices(recorded.slices, &map, &clock, &replied);
    let detail = Detail {
        schema: DETAIL_SCHEMA.to_string(),
        slow_threshold_us: config.slow_threshold.as_micros() as u64,
        slow: detail::slow_requests(&recorded.slow, &clock),
        slow_per_slice_max: SLOW_PER_SLICE_MAX as u64,
        slow_omitted: recorded.slow_omitted,
        zooms: detail::zooms(&windows, &shared.millis, started_ms, ended_ms),
    };
    let timeline = config.admin.is_some().then_some(timeline);
    if let Some(dir) = &config.out {
        output::write(
            dir,
            &output::RunFiles {
                summary: &summary,
                slices: &slices,
                detail: &detail,
                timeline: timeline.as_ref(),
                hlog_body: &recorded.hlog_body,
            },
            &clock,
        )?;
    }
    Ok(RunResult {
        summary,
        slices,
        detail,
        timeline,
        phase_histograms: phases
            .into_iter()
            .map(|p| (p.summary.name, p.cell.histogram))
            .collect(),
        lost_examples: verification.examples,
        warnings,
        unsent: reports.iter().map(|r| r.unsent).sum(),
        error_examples: error_examples(&reports),
        out: config.out.clone(),
    })
}

/// The distinct error replies the connections kept, at most ten.
fn error_examples(reports: &[connection::Report]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for example in reports.iter().flat_map(|r| &r.error_examples) {
        if out.len() < 10 && !out.contains(example) {
            out.push(example.clone());
        }
    }
    out
}

fn unreachable_hint(config: &Config) -> &'static str {
    if config.redis {
        "is Redis up?"
    } else {
        "is the pair up?"
    }
}

/// The targets with the active (the one whose `ROLE` says `master`) first. Fails only if
/// none can be reached.
async fn order_targets(config: &Config, warnings: &mut Vec<String>) -> Result<Vec<String>, Error> {
    let mut first_failure: Option<(String, String)> = None;
    let mut active: Option<String> = None;
    let mut reachable = 0;
    for target in &config.targets {
        match Client::connect_timeout(target.as_str(), PREFLIGHT_TIMEOUT).await {
            Ok(mut client) => {
                reachable += 1;
                client.set_timeout(Some(PREFLIGHT_TIMEOUT));
                if let Ok(Reply::Array(items)) = client.call(&[b"ROLE"]).await {
                    let master = items.first().and_then(Reply::as_bytes) == Some(b"master");
                    if master && active.is_none() {
                        active = Some(target.clone());
                    }
                }
            }
            Err(e) => {
                let reason = error::describe_client_error(&e);
                warnings.push(format!("cannot reach {target}: {reason}"));
                first_failure.get_or_insert((target.clone(), reason));
            }
        }
    }
    if reachable == 0 {
        let (addr, reason) = first_failure.unwrap_or_default();
        return Err(Error::Unreachable {
            addr,
            reason,
            hint: unreachable_hint(config),
        });
    }
    let mut ordered: Vec<String> = active.into_iter().collect();
    for target in &config.targets {
        if !ordered.contains(target) {
            ordered.push(target.clone());
        }
    }
    Ok(ordered)
}

/// What the server at `addr` says it is (`INFO server`): `redis 7.0.15`; tandem adds its
/// application (`tandem 0.1.0, sessions 2.0`). `None` if it does not say.
/// What was driven: what the caller said, else what the server said before the run, and
/// the upgrade the timeline saw during it (`tandem 0.1.0, sessions 1.0; upgrade 1.0 -> 2.0`),
/// so that a run across an upgrade does not pass for a run of the version it started on.
fn target_version(given: Option<&str>, server: Option<&str>, timeline: &Timeline) -> String {
    if let Some(given) = given {
        return given.to_string();
    }
    let upgrade = timeline
        .events
        .iter()
        .find(|e| e.kind == reports::timeline::EventKind::UpgradeStart)
        .and_then(|e| e.message.as_deref())
        .filter(|m| !m.is_empty());
    match (server, upgrade) {
        (Some(s), Some(u)) => format!("{s}; {u}"),
        (None, Some(u)) => u.to_string(),
        (Some(s), None) => s.to_string(),
        (None, None) => "unknown".to_string(),
    }
}

async fn server_version(addr: &str) -> Option<String> {
    let mut client = Client::connect_timeout(addr, PREFLIGHT_TIMEOUT)
        .await
        .ok()?;
    client.set_timeout(Some(PREFLIGHT_TIMEOUT));
    let info = |reply: Reply| {
        reply
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let server = info(client.call(&[b"INFO", b"server"]).await.ok()?)?;
    if let Some(tandem) = info_field(&server, "tandem_version") {
        // The application (and its version) is what an upgrade changes.
        let app = match client.call(&[b"INFO", b"tandem"]).await {
            Ok(reply) => info(reply).and_then(|text| info_field(&text, "app")),
            Err(_) => None,
        };
        return Some(match app {
            Some(app) => format!("tandem {tandem}, {app}"),
            None => format!("tandem {tandem}"),
        });
    }
    info_field(&server, "redis_version").map(|v| format!("redis {v}"))
}

/// A `field:value` line of an `INFO` reply.
fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == field && !v.trim().is_empty()).then(|| v.trim().to_string())
    })
}

/// Opens the run's connections to `addr`, all at once.
async fn connect_all(
    addr: &str,
    count: usize,
    hint: &'static str,
) -> Result<Vec<TcpStream>, Error> {
    let attempts: Vec<_> = (0..count)
        .map(|_| {
            let addr = addr.to_string();
            tokio::spawn(async move {
                let stream =
                    tokio::time::timeout(connection::CONNECT_TIMEOUT, TcpStream::connect(addr))
                        .await
                        .map_err(|_| "timed out".to_string())?
                        .map_err(|e| error::describe_io_error(&e))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| error::describe_io_error(&e))?;
                Ok::<_, String>(stream)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(count);
    for attempt in attempts {
        let connected = attempt.await.map_err(|e| e.to_string()).and_then(|r| r);
        match connected {
            Ok(stream) => streams.push(stream),
            Err(reason) => {
                return Err(Error::Unreachable {
                    addr: addr.to_string(),
                    reason,
                    hint,
                })
            }
        }
    }
    Ok(streams)
}

/// Per connection: samples that may wait out the grace period, sessions it may start.
fn sizing(config: &Config) -> (usize, usize) {
    let connections = config.connection_count() as f64;
    let per_connection_ops_s = match config.mode {
        Mode::Open { rate_ops_s } => rate_ops_s as f64 / connections,
        Mode::Closed { .. } => 50_000.0,
    };
    let grace_s = GRACE_US as f64 / 1e6;
    let pending = per_connection_ops_s * grace_s * 2.0 + config.pipeline as f64 * 2.0 + 64.0;
    let session_share = f64::from(config.mix.session) / config.mix.total() as f64;
    let cycles = per_connection_ops_s * config.duration.as_secs_f64() * session_share
        / f64::from(2 + SESSION_UPDATES);
    (
        (pending as usize).min(PENDING_SAMPLES_MAX),
        (cycles as usize + 16).min(SESSIONS_HINT_MAX),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_info() {
        let redis = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n";
        assert_eq!(
            info_field(redis, "redis_version").as_deref(),
            Some("7.0.15")
        );
        assert_eq!(info_field(redis, "tandem_version"), None);
        let tandem = "# Tandem\r\nengine:a\r\napp:sessions 2.0\r\n";
        assert_eq!(info_field(tandem, "app").as_deref(), Some("sessions 2.0"));
    }

    #[test]
    fn a_run_across_an_upgrade_names_it() {
        use reports::timeline::{Event, EventKind};
        let mut timeline = Timeline::new();
        let server = Some("tandem 0.1.0, sessions 1.0");
        assert_eq!(
            target_version(None, server, &timeline),
            "tandem 0.1.0, sessions 1.0"
        );
        timeline.events.push(Event {
            message: Some("upgrade 1.0 -> 2.0".into()),
            ..Event::new(5, EventKind::UpgradeStart)
        });
        assert_eq!(
            target_version(None, server, &timeline),
            "tandem 0.1.0, sessions 1.0; upgrade 1.0 -> 2.0"
        );
        assert_eq!(target_version(None, None, &timeline), "upgrade 1.0 -> 2.0");
        assert_eq!(
            target_version(Some("1.0 -> 2.0"), server, &timeline),
            "1.0 -> 2.0"
        );
        assert_eq!(target_version(None, None, &Timeline::new()), "unknown");
    }
}
