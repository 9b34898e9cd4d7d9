//! Shared pieces of the benchmark suite (`benches/`): the quick mode and the settings of the
//! micro benchmarks. See `bench/README.md` for the suite and `bench/RESULTS.md` for the
//! figures.
#![forbid(unsafe_code)]

/// `TANDEM_BENCH_QUICK=1`: minimum sample sizes, short measurements, smaller states.
pub fn quick() -> bool {
    std::env::var("TANDEM_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Settings of the micro benchmarks (`benches/` but `scenarios.rs`).
pub mod micro {
    use std::time::Duration;

    use criterion::measurement::Measurement;
    use criterion::BenchmarkGroup;

    /// Criterion's defaults shortened (1 s warm-up, 3 s measurement, 100 samples); in quick
    /// mode 0.3 s, 0.7 s and 10 samples.
    pub fn configure<M: Measurement>(group: &mut BenchmarkGroup<'_, M>) {
        if super::quick() {
            group
                .sample_size(10)
                .warm_up_time(Duration::from_millis(300))
                .measurement_time(Duration::from_millis(700));
        } else {
            group
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(3));
        }
    }
}
