//! Benchmarks live in `benches/`; see `bench/RESULTS.md` for the figures.
#![forbid(unsafe_code)]
