//! RESP request parsing: what the engine's request parser (`resp::parse_command`) costs per
//! command when a client pipelines, measured on the bytes of one read of P commands.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use resp::Limits;

/// P `SET key:<i> <value>` (or `GET key:<i>`), as a client sends them in one write.
fn pipelined(count: usize, value_bytes: Option<usize>) -> BytesMut {
    let mut buf = BytesMut::new();
    let value = vec![b'v'; value_bytes.unwrap_or(0)];
    for i in 0..count {
        let key = format!("key:{i:08}");
        match value_bytes {
            Some(_) => resp::encode_request(&mut buf, &[b"SET", key.as_bytes(), &value]),
            None => resp::encode_request(&mut buf, &[b"GET", key.as_bytes()]),
        }
    }
    buf
}

fn parse_all(buf: &mut BytesMut, limits: &Limits) -> usize {
    let mut n = 0;
    while let Some(cmd) = resp::parse_command(buf, limits).expect("valid requests") {
        n += cmd.len();
    }
    n
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("resp_parse");
    bench::micro::configure(&mut group);
    let limits = Limits::default();
    let cases = [
        ("set_100B", Some(100)),
        ("set_1KiB", Some(1024)),
        ("get", None),
    ];
    for (what, value_bytes) in cases {
        for pipeline in [1usize, 16, 128] {
            let input = pipelined(pipeline, value_bytes);
            group.throughput(Throughput::Elements(pipeline as u64));
            let id = BenchmarkId::new(what, format!("pipeline_{pipeline}"));
            group.bench_with_input(id, &input, |b, input| {
                // The copy stands for the socket read and is not timed.
                b.iter_batched_ref(
                    || input.clone(),
                    |buf| parse_all(buf, &limits),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
