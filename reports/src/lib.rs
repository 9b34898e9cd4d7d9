//! The run-directory schema and HTML reports (issue 5 builds them out).
#![forbid(unsafe_code)]
