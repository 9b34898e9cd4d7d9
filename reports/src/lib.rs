//! The run schema shared by the engine, the load generator and the reports (the timeline of
//! a pair, the summary of a run, the time slices of the load), the run directory that holds
//! them, and self-contained HTML reports rendered from runs.
#![forbid(unsafe_code)]

pub mod environment;
pub mod html;
pub mod run;
pub mod summary;
pub mod timeline;

/// Made-up runs for tests (this crate's and its integration tests); not a stable API.
#[doc(hidden)]
pub mod sample;
