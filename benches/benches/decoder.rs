//! `ringfan_protocol::LineDecoder` throughput: 1 MiB of 64-byte or 1 KiB lines fed in 16 KiB reads,
//! as a worker's receive buffers hand them over. The reads start a third of a line in, so
//! (as with real TCP reads) nearly every read ends inside a line and the decoder carries a
//! partial line into the next one.
//!
//!   cargo bench -p ringfan-benches --bench decoder

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringfan_protocol::LineDecoder;

const READ_BYTES: usize = 16 << 10;
const INPUT_BYTES: usize = 1 << 20;

/// `INPUT_BYTES` of `line_len`-byte lines (the last byte of each is `\n`).
fn input(line_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(INPUT_BYTES);
    let mut seq = 0u64;
    while out.len() + line_len <= INPUT_BYTES {
        let start = out.len();
        out.extend_from_slice(format!("@0:{seq}:1234567890123;").as_bytes());
        out.resize(start + line_len - 1, b'x');
        out.push(b'\n');
        seq += 1;
    }
    out
}

/// The input cut into reads: a first short one, then 16 KiB each.
fn reads(data: &[u8], line_len: usize) -> Vec<&[u8]> {
    let first = READ_BYTES - line_len / 3;
    let mut v = vec![&data[..first]];
    v.extend(data[first..].chunks(READ_BYTES));
    v
}

fn decoder(c: &mut Criterion) {
    let mut g = c.benchmark_group("line_decoder");
    for line_len in [64usize, 1024] {
        let data = input(line_len);
        let parts = reads(&data, line_len);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("16KiB_reads", format!("{line_len}B_lines")),
            &parts,
            |b, parts| {
                b.iter(|| {
                    let mut dec = LineDecoder::new(65536);
                    let mut lines = 0usize;
                    for p in parts {
                        let d = dec.decode(black_box(p));
                        if let Some(chunk) = d.chunk {
                            lines += chunk.count;
                            black_box(&chunk.bytes);
                        }
                    }
                    assert_eq!(lines, data.len() / line_len);
                    lines
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, decoder);
criterion_main!(benches);
