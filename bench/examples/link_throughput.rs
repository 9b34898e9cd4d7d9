//! Replication link throughput, tokio driver against io_uring driver, side by side in one run.
//!
//! Each run streams N updates (100-byte values) from an active to a standby over a loopback
//! socket, each end on its own thread, both ends on the same driver: the active fills one
//! batch of a fixed size whenever the flow-control window has room (no producer thread, so
//! the figures are the link's and not a lock's), the standby validates every batch (the
//! `Receiver` does: CRC and records) and acknowledges once per read. A run ends when the last
//! sequence is acknowledged. Drivers alternate within each round (three rounds unless told),
//! for a few batch sizes. Each run reports wall-clock rates (updates/s, batches/s), the turns
//! each end took, and each end's thread CPU time per update, which a noisy shared machine
//! disturbs less than wall-clock time; the summary is the median of the rounds and the
//! io_uring/tokio ratio.
//!
//! ```text
//! cargo run --release -p bench --example link_throughput [updates] [batch sizes] [rounds]
//! cargo run --release -p bench --example link_throughput 1000000 16,256,4096 3
//! ```
#![forbid(unsafe_code)]

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("link_throughput compares the io_uring driver, which needs Linux");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
fn main() {
    linux::main();
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::VecDeque;
    use std::io;
    use std::net::{TcpListener, TcpStream};
    use std::thread;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use replicator::driver::{self, Turn};
    use replicator::uring;
    use replicator::{
        BatchConfig, Hello, Identity, LinkConfig, Op, Outbox, Receiver, ReceiverEvent, Sender,
        SenderEvent, Start,
    };

    const ROUNDS_DEFAULT: usize = 3;
    const VALUE_BYTES: usize = 100;
    const KEYS: u64 = 100_000;
    const UPDATES_DEFAULT: u64 = 1_000_000;
    const BATCH_SIZES_DEFAULT: [u32; 3] = [16, 256, 4096];

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Driver {
        Tokio,
        Uring,
    }

    impl Driver {
        fn name(self) -> &'static str {
            match self {
                Driver::Tokio => "tokio",
                Driver::Uring => "io_uring",
            }
        }
    }

    /// One end's figures.
    #[derive(Clone, Copy, Default)]
    struct End {
        turns: u64,
        cpu_ns: u64,
    }

    /// One run's figures.
    struct Run {
        elapsed: Duration,
        batches: u64,
        active: End,
        standby: End,
    }

    /// CPU time the calling thread has run, in nanoseconds (user and kernel, io_uring's
    /// inline and task-work completions included; io-wq workers would not be, and a socket
    /// ring punts nothing to them).
    fn thread_cpu_ns() -> io::Result<u64> {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
        stat.split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected schedstat {stat:?}")))
    }

    fn link_config() -> LinkConfig {
        // No heartbeats during a run: both ends are busy, and an idle-time heartbeat racing
        // the final close could reset the connection under the last ack.
        LinkConfig {
            heartbeat_interval: Duration::from_secs(3600),
            peer_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(3600),
            ..LinkConfig::new(replicator::Secret::from_bytes(*b"tandem-test-secret"))
        }
    }

    fn identity(engine: &str) -> Identity {
        Identity {
            engine: engine.into(),
            app_name: "bench".into(),
            app_version: "1.0".into(),
            ..Identity::default()
        }
    }

    /// Runs one end on the calling thread (a current-thread runtime) with `driver`; nothing
    /// ever wakes either end.
    fn run_end<F>(driver: Driver, stream: TcpStream, step: F) -> io::Result<()>
    where
        F: FnMut(Instant, &[u8], &mut VecDeque<Bytes>) -> Turn,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let notify = tokio::sync::Notify::new();
        runtime.block_on(async {
            stream.set_nonblocking(true)?;
            let stream = tokio::net::TcpStream::from_std(stream)?;
            driver::configure(&stream)?;
            match driver {
                Driver::Tokio => driver::run(stream, &notify, step).await,
                Driver::Uring => uring::run(stream, &notify, step).await,
            }
        })
    }

    fn active(
        driver: Driver,
        stream: TcpStream,
        updates: u64,
        batch_updates: u32,
    ) -> io::Result<(u64, End)> {
        let cpu_ns_start = thread_cpu_ns()?;
        let mut sender = Sender::new(Instant::now(), link_config(), 1);
        let mut outbox = Outbox::new(
            BatchConfig {
                batch_updates_max: batch_updates,
                backlog_bytes_max: 8 << 20,
                ..BatchConfig::default()
            },
            0,
        );
        let mut key = *b"key:\0\0\0\0\0\0\0\0";
        let mut value = [7u8; VALUE_BYTES];
        let (mut pushed, mut batches, mut turns) = (0u64, 0u64, 0u64);
        run_end(driver, stream, |now, input, tx| {
            turns += 1;
            if !input.is_empty() {
                sender.handle_input(now, input);
            }
            while let Some(event) = sender.poll_event() {
                match event {
                    SenderEvent::Hello(hello) => {
                        sender.accept(now, identity("active"), Start::Resume, hello.seq_applied)
                    }
                    SenderEvent::Acked(seq) => outbox.pin(Some(seq)),
                    _ => {}
                }
            }
            // Fill and send one batch at a time while the window has room.
            while sender.window_open() && pushed < updates {
                let end = (pushed + u64::from(batch_updates)).min(updates);
                while pushed < end {
                    key[4..].copy_from_slice(&(pushed % KEYS).to_le_bytes());
                    value[..8].copy_from_slice(&pushed.to_le_bytes());
                    outbox.push(now, Op::DbPut, &key, &value);
                    pushed += 1;
                }
                outbox.seal();
                batches += 1;
                while let Some(f) = sender.poll_transmit(now, &outbox) {
                    tx.push_back(f);
                }
            }
            while let Some(f) = sender.poll_transmit(now, &outbox) {
                tx.push_back(f);
            }
            tx.extend(sender.drain_out());
            Turn {
                deadline: sender.poll_timeout(),
                done: sender.is_closed() || sender.seq_acked() == updates,
            }
        })?;
        if sender.seq_acked() != updates {
            return Err(io::Error::other(format!(
                "the link closed at {} of {updates}",
                sender.seq_acked()
            )));
        }
        let cpu_ns = thread_cpu_ns()? - cpu_ns_start;
        Ok((batches, End { turns, cpu_ns }))
    }

    fn standby(driver: Driver, stream: TcpStream, updates: u64) -> io::Result<End> {
        let cpu_ns_start = thread_cpu_ns()?;
        let hello = Hello::new(identity("standby"), 0, 0);
        let mut receiver = Receiver::new(Instant::now(), link_config(), &hello);
        let (mut seq_applied, mut turns) = (0u64, 0u64);
        run_end(driver, stream, |now, input, tx| {
            turns += 1;
            if !input.is_empty() {
                receiver.handle_input(now, input);
            }
            while let Some(event) = receiver.poll_event() {
                if let ReceiverEvent::Batch { seq_last, .. } = event {
                    seq_applied = seq_last;
                }
            }
            receiver.applied(seq_applied);
            while let Some(f) = receiver.poll_transmit(now) {
                tx.push_back(f);
            }
            Turn {
                deadline: receiver.poll_timeout(),
                done: receiver.is_closed() || seq_applied == updates,
            }
        })?;
        let cpu_ns = thread_cpu_ns()? - cpu_ns_start;
        Ok(End { turns, cpu_ns })
    }

    fn run_once(driver: Driver, updates: u64, batch_updates: u32) -> io::Result<Run> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let standby = thread::spawn(move || standby(driver, TcpStream::connect(addr)?, updates));
        let (stream, _) = listener.accept()?;
        let start = Instant::now();
        let active = thread::spawn(move || active(driver, stream, updates, batch_updates));
        let active = active
            .join()
            .map_err(|_| io::Error::other("the active panicked"))?;
        let elapsed = start.elapsed();
        let standby = standby
            .join()
            .map_err(|_| io::Error::other("the standby panicked"))??;
        let (batches, active) = active?;
        Ok(Run {
            elapsed,
            batches,
            active,
            standby,
        })
    }

    fn median(mut xs: Vec<f64>) -> f64 {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    }

    fn parse_args() -> Result<(u64, Vec<u32>, usize), String> {
        let mut args = std::env::args().skip(1);
        let updates = match args.next() {
            Some(a) => a
                .parse()
                .map_err(|e| format!("updates {a:?}: {e} (expected a count)"))?,
            None => UPDATES_DEFAULT,
        };
        let sizes = match args.next() {
            Some(a) => a
                .split(',')
                .map(|s| {
                    s.parse()
                        .map_err(|e| format!("batch size {s:?}: {e} (expected e.g. 16,256)"))
                })
                .collect::<Result<_, _>>()?,
            None => BATCH_SIZES_DEFAULT.to_vec(),
        };
        let rounds = match args.next() {
            Some(a) => a
                .parse()
                .ok()
                .filter(|&r| r > 0)
                .ok_or_else(|| format!("rounds {a:?}: expected a count above 0"))?,
            None => ROUNDS_DEFAULT,
        };
        Ok((updates, sizes, rounds))
    }

    pub fn main() {
        let (updates, sizes, rounds) = match parse_args() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2);
            }
        };
        if let Err(e) = uring::available() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        println!(
            "{updates} updates of {VALUE_BYTES} B per run, loopback TCP, window {} batches; \
             {rounds} rounds, drivers alternating",
            link_config().batches_in_flight_max
        );
        println!(
            "{:>6} {:>5} {:>9} {:>8} {:>11} {:>10} {:>8} {:>8} {:>10} {:>10}",
            "batch",
            "round",
            "driver",
            "ms",
            "updates/s",
            "batches/s",
            "turns_a",
            "turns_s",
            "cpu_a ns/u",
            "cpu_s ns/u"
        );
        let mut summary = Vec::new();
        for &batch_updates in &sizes {
            // Per driver, per round: updates/s, batches/s, CPU ns per update (active, standby).
            let mut figures: [Vec<[f64; 4]>; 2] = [Vec::new(), Vec::new()];
            for round in 1..=rounds {
                for (i, driver) in [Driver::Tokio, Driver::Uring].into_iter().enumerate() {
                    let run = match run_once(driver, updates, batch_updates) {
                        Ok(run) => run,
                        Err(e) => {
                            eprintln!("error: the {} run failed: {e}", driver.name());
                            std::process::exit(1);
                        }
                    };
                    let secs = run.elapsed.as_secs_f64();
                    let f = [
                        updates as f64 / secs,
                        run.batches as f64 / secs,
                        run.active.cpu_ns as f64 / updates as f64,
                        run.standby.cpu_ns as f64 / updates as f64,
                    ];
                    figures[i].push(f);
                    println!(
                        "{batch_updates:>6} {round:>5} {:>9} {:>8.1} {:>11.0} {:>10.0} {:>8} \
                         {:>8} {:>10.1} {:>10.1}",
                        driver.name(),
                        secs * 1e3,
                        f[0],
                        f[1],
                        run.active.turns,
                        run.standby.turns,
                        f[2],
                        f[3]
                    );
                }
            }
            let med = |i: usize, k: usize| median(figures[i].iter().map(|f| f[k]).collect());
            summary.push((batch_updates, [0, 1, 2, 3].map(|k| [med(0, k), med(1, k)])));
        }
        println!("\nmedian of {rounds} rounds (ratio: io_uring / tokio)");
        println!(
            "{:>6} {:>11} {:>11} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10} {:>6}",
            "batch",
            "tokio upd/s",
            "uring upd/s",
            "ratio",
            "tokio b/s",
            "uring b/s",
            "tokio cpu_a",
            "uring cpu_a",
            "ratio",
            "tokio cpu_s",
            "uring cpu_s",
            "ratio"
        );
        for (batch, [u, b, ca, cs]) in summary {
            println!(
                "{batch:>6} {:>11.0} {:>11.0} {:>6.2} {:>10.0} {:>10.0} {:>10.1} {:>10.1} {:>6.2} \
                 {:>10.1} {:>10.1} {:>6.2}",
                u[0],
                u[1],
                u[1] / u[0],
                b[0],
                b[1],
                ca[0],
                ca[1],
                ca[1] / ca[0],
                cs[0],
                cs[1],
                cs[1] / cs[0]
            );
        }
    }
}
