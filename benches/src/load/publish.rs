//! Publisher threads: blocking sockets, paced in 1 ms ticks at a fixed rate, or 64 KiB writes
//! as fast as possible. Each publisher has a reader thread that drains what the server sends
//! back (ringfan echoes, redis `:count` replies, NATS PINGs, which it has the writer answer).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use memchr::memmem;

use super::cli::{Config, Proto};
use super::recv::Shared;
use super::sys::{connect, now_ns, sleep_until};
use super::topics::Topics;
use super::wire::{publisher_hello, FrameWriter};

const TICK_NS: u64 = 1_000_000;
const MAX_RATE_BATCH_BYTES: usize = 64 << 10;
const PACED_BATCH_MAX_BYTES: usize = 1 << 20;

/// Counters of all publishers together.
#[derive(Default)]
pub struct PubCounters {
    /// Messages completely written, warm-up included (for progress).
    pub sent: AtomicU64,
    /// Messages completely written in the measured window.
    pub published: AtomicU64,
    pub errors: AtomicU64,
    pub stop_readers: AtomicBool,
}

pub struct Publisher {
    writer: JoinHandle<Option<TcpStream>>,
    reader: JoinHandle<()>,
}

pub struct Timing {
    pub start: u64,
    pub measure_start: u64,
    pub measure_end: u64,
    /// Hard bound for the reader threads, in case nobody tells them to stop.
    pub reader_deadline: u64,
}

/// Connects one publisher (and sends the protocol hello). Not started yet.
pub fn connect_publisher(cfg: &Config) -> io::Result<TcpStream> {
    let mut s = connect(&cfg.addr, Duration::from_secs(3))?;
    s.set_nodelay(true)?;
    let hello = publisher_hello(cfg.proto);
    if !hello.is_empty() {
        s.write_all(hello)?;
    }
    Ok(s)
}

pub fn start(
    id: u32,
    stream: TcpStream,
    cfg: &Config,
    timing: &Timing,
    shared: Arc<Shared>,
    counters: Arc<PubCounters>,
) -> io::Result<Publisher> {
    let pong_due = Arc::new(AtomicU32::new(0));
    let mut rd = stream.try_clone()?;
    rd.set_read_timeout(Some(Duration::from_millis(100)))?;
    let nats = cfg.proto == Proto::Nats;
    let (c2, p2, deadline) = (counters.clone(), pong_due.clone(), timing.reader_deadline);
    let reader = std::thread::Builder::new()
        .name(format!("pub-rd-{id}"))
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let ping = memmem::Finder::new(b"PING\r\n");
            // Bounded by the stop flag and a hard deadline; each read waits at most 100 ms.
            while !c2.stop_readers.load(Relaxed) && now_ns() < deadline {
                match rd.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if nats {
                            let k = ping.find_iter(&buf[..n]).count() as u32;
                            if k > 0 {
                                p2.fetch_add(k, Relaxed);
                            }
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
        })?;
    let topics = cfg.topics();
    let fw = FrameWriter::new(cfg.proto, &cfg.channel, topics, cfg.size);
    let rate = cfg.rate / cfg.publishers as f64;
    let (start, ms, me) = (timing.start, timing.measure_start, timing.measure_end);
    let writer = std::thread::Builder::new()
        .name(format!("pub-{id}"))
        .spawn(move || {
            let mut w = Writer {
                id,
                stream,
                fw,
                topics,
                shared,
                counters,
                pong_due,
                seq: 0,
                buf: Vec::new(),
                ends: Vec::new(),
                measure_start: ms,
                measure_end: me,
                last_error: None,
            };
            let ok = if rate > 0.0 {
                w.paced(rate, start)
            } else {
                w.flat_out()
            };
            if let Err(e) = ok {
                if w.counters.errors.fetch_add(1, Relaxed) == 0 {
                    eprintln!("publisher {id}: {e}");
                }
            }
            Some(w.stream)
        })?;
    Ok(Publisher { writer, reader })
}

impl Publisher {
    /// Waits for the writer (it stops by itself at the end of the measured window) and returns
    /// the socket, kept open until the caller drops it.
    pub fn join_writer(self) -> (Option<TcpStream>, JoinHandle<()>) {
        let s = self.writer.join().unwrap_or(None);
        (s, self.reader)
    }
}

struct Writer {
    id: u32,
    stream: TcpStream,
    fw: FrameWriter,
    topics: Topics,
    shared: Arc<Shared>,
    counters: Arc<PubCounters>,
    pong_due: Arc<AtomicU32>,
    /// Last running number assigned (each message's channel and per-channel seq follow from
    /// it, see `Topics::route`).
    seq: u64,
    buf: Vec<u8>,
    /// Where each frame of `buf` ends (frames differ in length with the channel's name).
    ends: Vec<usize>,
    measure_start: u64,
    measure_end: u64,
    last_error: Option<io::Error>,
}

impl Writer {
    /// Builds a batch of `n` frames stamped now, writes it; returns false when time is up.
    fn batch(&mut self, n: usize) -> io::Result<bool> {
        self.buf.clear();
        self.ends.clear();
        let pongs = self.pong_due.swap(0, Relaxed);
        for _ in 0..pongs {
            self.buf.extend_from_slice(b"PONG\r\n");
        }
        let ts = now_ns();
        if ts >= self.measure_end {
            return Ok(false);
        }
        let measured = ts >= self.measure_start;
        let first = self.seq + 1;
        for i in 0..n as u64 {
            let (j, seq) = self.topics.route(self.id, first + i);
            let stream = self.topics.stream(self.id, j);
            if !self.fw.push(&mut self.buf, j, stream, seq, ts) {
                return Err(io::Error::other("message size too small for the marker"));
            }
            self.ends.push(self.buf.len());
        }
        if n > 0 && measured && self.shared.first_measured[self.id as usize].load(Relaxed) == 0 {
            self.shared.first_measured[self.id as usize].store(first, Relaxed);
        }
        self.seq += n as u64;
        let written = self.write_until_deadline();
        let done = self.ends.partition_point(|&end| end <= written) as u64;
        if done > 0 {
            self.shared.last_sent[self.id as usize].store(first + done - 1, Relaxed);
            self.counters.sent.fetch_add(done, Relaxed);
            if measured {
                self.counters.published.fetch_add(done, Relaxed);
            }
        }
        if done < n as u64 {
            // Time ran out in the middle of the batch, or the socket failed.
            return match self.last_error.take() {
                Some(e) => Err(e),
                None => Ok(false),
            };
        }
        Ok(true)
    }

    /// Writes `buf`, giving up at the end of the measured window. Returns bytes written.
    fn write_until_deadline(&mut self) -> usize {
        let mut off = 0;
        while off < self.buf.len() {
            match self.stream.write(&self.buf[off..]) {
                Ok(0) => {
                    self.last_error = Some(io::Error::from(io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => off += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if now_ns() >= self.measure_end {
                        break;
                    }
                }
                Err(e) => {
                    self.last_error = Some(e);
                    break;
                }
            }
        }
        off
    }

    fn flat_out(&mut self) -> io::Result<()> {
        self.stream
            .set_write_timeout(Some(Duration::from_millis(100)))?;
        let n = (MAX_RATE_BATCH_BYTES / self.fw.frame_len_max()).max(1);
        // Bounded: every batch checks the clock against the end of the measured window.
        while self.batch(n)? {}
        Ok(())
    }

    fn paced(&mut self, rate: f64, start: u64) -> io::Result<()> {
        self.stream
            .set_write_timeout(Some(Duration::from_millis(100)))?;
        let cap = (PACED_BATCH_MAX_BYTES / self.fw.frame_len_max()).max(1) as u64;
        let mut next_tick = start;
        let mut generated = 0u64;
        // Bounded: ends at the end of the measured window (checked in every turn).
        loop {
            let now = now_ns();
            if now >= self.measure_end {
                return Ok(());
            }
            let due_total = ((now.saturating_sub(start)) as f64 * rate / 1e9) as u64;
            let due = due_total.saturating_sub(generated).min(cap);
            if due > 0 {
                if !self.batch(due as usize)? {
                    return Ok(());
                }
                generated += due;
            } else if self.pong_due.load(Relaxed) > 0 {
                self.batch(0)?;
            }
            if due < cap {
                next_tick += TICK_NS;
                if next_tick < now {
                    next_tick = now + TICK_NS - (now - start) % TICK_NS;
                }
                // At low rates skip the ticks in which nothing falls due (fewer wake-ups),
                // but wake at least every 50 ms to answer NATS PINGs.
                let next_due = start + ((generated + 1) as f64 * 1e9 / rate) as u64;
                if next_due > next_tick {
                    let skip = (next_due - next_tick).div_ceil(TICK_NS) * TICK_NS;
                    next_tick += skip.min(50 * TICK_NS);
                }
                sleep_until(next_tick.min(self.measure_end));
            }
        }
    }
}

/// Connects all publishers; failures are counted and reported, not fatal unless all fail.
pub fn connect_all(cfg: &Config) -> (Vec<(u32, TcpStream)>, usize) {
    let mut ok = Vec::new();
    let mut failed = 0;
    for id in 0..cfg.publishers as u32 {
        match connect_publisher(cfg) {
            Ok(s) => ok.push((id, s)),
            Err(e) => {
                if failed == 0 {
                    eprintln!("publisher {id}: connect to {} failed: {e}", cfg.addr);
                }
                failed += 1;
            }
        }
    }
    (ok, failed)
}
