//! The load generator (issue 5 builds it out).
#![forbid(unsafe_code)]
