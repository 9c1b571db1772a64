//! The hub's enqueue path, without the kernel: for one loop turn's batch of chunks, push a
//! `Bytes` clone of each onto every subscriber's queue (`ringfan::conn::Conn`), then build each
//! subscriber's gathered `sendmsg` (`Conn::prepare_send`), then account the send as complete
//! (`Conn::advance`), as the worker does when the send's completion arrives.
//!
//! Throughput is in deliveries (one chunk queued for one subscriber). A chunk holds the lines
//! of one publisher read: 16 chunks of 4 KiB (64 lines of 64 B each) per turn here.
//!
//!   cargo bench -p ringfan-benches --bench enqueue

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringfan::conn::Conn;

const CHUNKS_PER_TURN: usize = 16;
const CHUNK_BYTES: usize = 4096;

fn enqueue(c: &mut Criterion) {
    let chunks: Vec<Bytes> = (0..CHUNKS_PER_TURN)
        .map(|i| {
            let mut v = Vec::with_capacity(CHUNK_BYTES);
            while v.len() < CHUNK_BYTES {
                let start = v.len();
                v.extend_from_slice(format!("@{i}:{start}:1234567890123;").as_bytes());
                v.resize(start + 63, b'x');
                v.push(b'\n');
            }
            Bytes::from(v)
        })
        .collect();
    let mut g = c.benchmark_group("enqueue_prepare_send");
    for n in [100usize, 1000, 10000] {
        let mut conns: Vec<Conn> = (0..n)
            .map(|i| Conn::new(-1, i as u32, ringfan::wire::Codec::lines(65536)))
            .collect();
        g.throughput(Throughput::Elements((n * CHUNKS_PER_TURN) as u64));
        g.bench_function(BenchmarkId::new("subscribers", n), |b| {
            b.iter(|| {
                let mut total = 0usize;
                for conn in conns.iter_mut() {
                    for ch in &chunks {
                        conn.queue.push_back(ch.clone());
                        conn.queue_bytes += ch.len();
                    }
                }
                for conn in conns.iter_mut() {
                    let (msg, bytes) = conn.prepare_send();
                    black_box(msg);
                    total += bytes;
                    conn.advance(bytes);
                }
                assert_eq!(total, n * CHUNKS_PER_TURN * CHUNK_BYTES);
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, enqueue);
criterion_main!(benches);
