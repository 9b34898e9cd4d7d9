//! One logging setup for every process: `tracing` events to stderr, one line each with a
//! timestamp, the level and the fields (`engine=a` names the engine), filtered by
//! `RUST_LOG` (default `info`), without colours unless stderr is a terminal. A pair's
//! supervisor and engines have their stderr in a log file each, in the pair's directory.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber, once per process (a second call does nothing).
pub fn init() {
    init_with_default("info");
}

/// As [`init`], with another default filter (`RUST_LOG` still wins when it is set).
pub fn init_with_default(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
