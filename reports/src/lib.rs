//! The run schema shared by the engine, the load generator and the reports (the timeline of
//! a pair, the summary of a run), and self-contained HTML reports rendered from runs.
#![forbid(unsafe_code)]

pub mod summary;
pub mod timeline;
