//! What every command line of the workspace shares (`tandem`, each engine and supervisor
//! process it starts, `loadgen`): one duration syntax for flags ([`duration`]), one logging
//! setup ([`logging`]), and one way to print an error and leave ([`exit`]).

pub mod duration;
pub mod exit;
pub mod logging;

pub use duration::{parse_duration, parse_duration_ms, DurationError};
