//! Subscriber receive path: io_uring receiver threads, each owning one `ringfan_ring::Uring` and many
//! sockets, with multishot recv into provided buffers. No allocation per message.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use memchr::memmem;
use ringfan_ring::{Completion, Doorbell, Driver, Op, RingConfig, Uring, UserData};

use super::cli::Proto;
use super::sys::{now_ns, send_nonblocking};
use super::wire::{handshake, Event, Handshake, Scanner};

/// State shared by the orchestrator, the publishers and the receivers.
pub struct Shared {
    pub stop: AtomicBool,
    /// Every marker seen (warm-up included), for the per-second progress line.
    pub delivered: AtomicU64,
    pub ready: AtomicUsize,
    pub hs_failed: AtomicUsize,
    pub disconnected: AtomicUsize,
    /// Messages sent at or after this instant are measured (u64::MAX until known). Also the
    /// start of the receive window (see `RecvResult::window_msgs`).
    pub measure_start: AtomicU64,
    /// End of the measured window (u64::MAX until known).
    pub measure_end: AtomicU64,
    /// When the publishers started (u64::MAX until then). A marker stamped earlier is not ours:
    /// a server reused right after another run still broadcasts what that run's publishers
    /// sent before they closed. Such markers are counted as `stale` and otherwise ignored.
    pub run_start: AtomicU64,
    /// Per publisher: first seq sent in the measured window (0 = none yet).
    pub first_measured: Vec<AtomicU64>,
    /// Per publisher: last seq completely written (final once the publisher has stopped).
    pub last_sent: Vec<AtomicU64>,
}

impl Shared {
    pub fn new(publishers: usize) -> Arc<Self> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            ready: AtomicUsize::new(0),
            hs_failed: AtomicUsize::new(0),
            disconnected: AtomicUsize::new(0),
            measure_start: AtomicU64::new(u64::MAX),
            measure_end: AtomicU64::new(u64::MAX),
            run_start: AtomicU64::new(u64::MAX),
            first_measured: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            last_sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
        })
    }
}

pub fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram bounds")
}

/// Per-subscriber latency: microseconds, 2 significant digits, up to 10 minutes (about 10 KiB
/// per subscriber, so 10000 subscribers fit in 100 MiB).
fn new_sub_histogram() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 600_000_000, 2).expect("histogram bounds")
}

/// One subscriber's own latency percentiles (its measured markers only).
#[derive(Clone, Copy, Debug)]
pub struct SubLatency {
    /// Position in the order subscribers were connected (0 = first).
    pub order: u32,
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// What one receiver thread measured.
pub struct RecvResult {
    pub hist: Histogram<u64>,
    /// Every subscriber of this thread that received at least one measured marker.
    pub per_sub: Vec<SubLatency>,
    /// Markers of measured messages received (sent in the measured window, received any time
    /// before the end of the drain).
    pub msgs: u64,
    /// Markers received between the start and the end of the measured window, whenever they
    /// were sent: the steady-state receive rate's numerator.
    pub window_msgs: u64,
    pub lost_gaps: u64,
    pub lost_tail: u64,
    pub reordered: u64,
    pub malformed: u64,
    /// Markers stamped before this run's publishers started (see `Shared::run_start`).
    pub stale: u64,
    pub eof: u64,
    pub resets: u64,
    pub never_ready: u64,
    pub rearms: u64,
    pub enobufs: u64,
    pub pongs: u64,
    pub error: Option<String>,
}

pub struct Receiver {
    tx: mpsc::Sender<(RawFd, u32)>,
    doorbell: Doorbell,
    join: JoinHandle<RecvResult>,
}

impl Receiver {
    /// Hands a connected socket (subscribe command already sent) to this receiver; `order` is
    /// its position in the order subscribers were connected.
    pub fn add(&self, fd: RawFd, order: u32) {
        if self.tx.send((fd, order)).is_ok() {
            self.doorbell.ring();
        } else {
            // SAFETY: the receiver is gone; we still own the fd.
            unsafe { libc::close(fd) };
        }
    }

    pub fn join(self) -> RecvResult {
        let Receiver { tx, doorbell, join } = self;
        drop(tx);
        doorbell.ring();
        join.join()
            .unwrap_or_else(|_| RecvResult::failed("receiver thread panicked".into()))
    }
}

impl RecvResult {
    fn failed(error: String) -> Self {
        RecvResult {
            hist: new_histogram(),
            per_sub: Vec::new(),
            msgs: 0,
            window_msgs: 0,
            lost_gaps: 0,
            lost_tail: 0,
            reordered: 0,
            malformed: 0,
            stale: 0,
            eof: 0,
            resets: 0,
            never_ready: 0,
            rearms: 0,
            enobufs: 0,
            pongs: 0,
            error: Some(error),
        }
    }
}

struct Conn {
    fd: RawFd,
    order: u32,
    /// This subscriber's measured latencies (created on its first measured marker).
    hist: Option<Histogram<u32>>,
    ready: bool,
    alive: bool,
    hs: Vec<u8>,
    scanner: Scanner,
}

/// Counters and histogram updated for every marker.
struct Acc {
    hist: Histogram<u64>,
    now: u64,
    measure_start: u64,
    measure_end: u64,
    run_start: u64,
    stale: u64,
    all: u64,
    /// Markers received in [measure_start, measure_end) by receive time.
    window: u64,
    msgs: u64,
    lost: u64,
    reordered: u64,
    malformed: u64,
}

impl Acc {
    #[inline]
    fn on_event(
        &mut self,
        ev: Event,
        last: &mut [u64],
        first_measured: &[AtomicU64],
        own: &mut Option<Histogram<u32>>,
    ) {
        let m = match ev {
            Event::Marker(m) => m,
            Event::Malformed => {
                self.malformed += 1;
                return;
            }
        };
        let p = m.publisher as usize;
        if p >= last.len() || m.seq == 0 {
            self.malformed += 1;
            return;
        }
        if m.ts < self.run_start {
            self.stale += 1;
            return;
        }
        self.all += 1;
        if self.now >= self.measure_start && self.now < self.measure_end {
            self.window += 1;
        }
        let prev = last[p];
        if m.ts >= self.measure_start {
            self.msgs += 1;
            let ns = self.now.saturating_sub(m.ts).max(1);
            let _ = self.hist.record(ns);
            own.get_or_insert_with(new_sub_histogram)
                .saturating_record((ns / 1000).max(1));
            if m.seq <= prev {
                self.reordered += 1;
                return;
            }
            let fm = first_measured[p].load(Relaxed).max(1);
            let from = (prev + 1).max(fm);
            if m.seq > from {
                self.lost += m.seq - from;
            }
        } else if m.seq <= prev {
            return;
        }
        last[p] = m.seq;
    }
}

/// Ring sizing for `conns` sockets: enough provided buffers that one loop turn rarely runs
/// out (each completion takes a whole buffer), about 64 MiB of buffers at most.
fn ring_config(conns: usize) -> RingConfig {
    let buffers = (conns * 2).next_power_of_two().clamp(1024, 16384);
    let bytes = (64usize << 20) / buffers;
    let bytes = bytes.clamp(4096, 32768);
    let cq = (buffers * 2 + conns).next_power_of_two().clamp(4096, 65536);
    RingConfig {
        sq_entries: 2048,
        cq_entries: cq as u32,
        recv_buffers: buffers as u16,
        recv_buffer_bytes: bytes,
    }
}

/// Starts a receiver thread sized for about `conns_hint` sockets. Fails if io_uring cannot be
/// set up (the error names cause and fix).
pub fn spawn(
    index: usize,
    proto: Proto,
    publishers: usize,
    conns_hint: usize,
    shared: Arc<Shared>,
) -> Result<Receiver, String> {
    let (tx, rx) = mpsc::channel::<(RawFd, u32)>();
    let (btx, brx) = mpsc::sync_channel::<Result<Doorbell, String>>(1);
    let join = std::thread::Builder::new()
        .name(format!("recv-{index}"))
        .spawn(move || {
            let mut drv = match Uring::new(&ring_config(conns_hint)) {
                Ok(d) => d,
                Err(e) => {
                    let msg = e.to_string();
                    let _ = btx.send(Err(msg.clone()));
                    return RecvResult::failed(msg);
                }
            };
            let _ = btx.send(Ok(drv.doorbell()));
            run(&mut drv, rx, proto, publishers, &shared)
        })
        .map_err(|e| format!("cannot start receiver thread: {e}"))?;
    match brx.recv() {
        Ok(Ok(doorbell)) => Ok(Receiver { tx, doorbell, join }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err("receiver thread died during setup".into()),
    }
}

fn run(
    drv: &mut Uring,
    rx: mpsc::Receiver<(RawFd, u32)>,
    proto: Proto,
    publishers: usize,
    shared: &Shared,
) -> RecvResult {
    let mut r = Receiving::new(proto, publishers, shared);
    let mut cqes = Vec::with_capacity(8192);
    let mut error = None;
    let mut reported_all = 0u64;
    // Bounded: ends when the orchestrator sets `stop` (it always does), or on a ring error.
    loop {
        r.adopt(drv, &rx);
        if shared.stop.load(Relaxed) {
            break;
        }
        if let Err(e) = drv.submit_and_wait(Duration::from_millis(100)) {
            error = Some(format!("io_uring_enter failed: {e}"));
            break;
        }
        cqes.clear();
        drv.completions(&mut cqes);
        r.acc.measure_start = shared.measure_start.load(Relaxed);
        r.acc.measure_end = shared.measure_end.load(Relaxed);
        r.acc.run_start = shared.run_start.load(Relaxed);
        for c in &cqes {
            r.on_completion(drv, c);
        }
        if r.acc.all != reported_all {
            shared
                .delivered
                .fetch_add(r.acc.all - reported_all, Relaxed);
            reported_all = r.acc.all;
        }
    }
    r.finish(error)
}

/// Per-thread counts of how receives ended and were re-armed, and of NATS PONGs sent.
#[derive(Default)]
struct Counts {
    eof: u64,
    resets: u64,
    rearms: u64,
    enobufs: u64,
    pongs: u64,
}

/// A receiver thread's state between completions.
struct Receiving<'a> {
    shared: &'a Shared,
    proto: Proto,
    publishers: usize,
    conns: Vec<Conn>,
    /// The last seq seen per connection and publisher, `publishers` entries per connection.
    last: Vec<u64>,
    acc: Acc,
    counts: Counts,
    ping: memmem::Finder<'static>,
}

impl<'a> Receiving<'a> {
    fn new(proto: Proto, publishers: usize, shared: &'a Shared) -> Self {
        Receiving {
            shared,
            proto,
            publishers,
            conns: Vec::new(),
            last: Vec::new(),
            acc: Acc {
                hist: new_histogram(),
                now: 0,
                measure_start: u64::MAX,
                measure_end: u64::MAX,
                run_start: u64::MAX,
                stale: 0,
                all: 0,
                window: 0,
                msgs: 0,
                lost: 0,
                reordered: 0,
                malformed: 0,
            },
            counts: Counts::default(),
            ping: memmem::Finder::new(b"PING\r\n"),
        }
    }

    /// Takes the sockets the orchestrator handed over and arms a multishot recv on each.
    fn adopt(&mut self, drv: &mut Uring, rx: &mpsc::Receiver<(RawFd, u32)>) {
        while let Ok((fd, order)) = rx.try_recv() {
            let slot = self.conns.len() as u32;
            self.conns.push(Conn {
                fd,
                order,
                hist: None,
                ready: false,
                alive: true,
                hs: Vec::new(),
                scanner: Scanner::default(),
            });
            self.last.resize(self.last.len() + self.publishers, 0);
            drv.recv_multi(fd, UserData::new(slot, 0, Op::Recv));
        }
    }

    fn on_completion(&mut self, drv: &mut Uring, c: &Completion) {
        if c.user_data.op() != Some(Op::Recv) {
            return;
        }
        let idx = c.user_data.slot() as usize;
        let Some(conn) = self.conns.get_mut(idx) else {
            if let Some(id) = c.buffer {
                drv.recycle(id);
            }
            return;
        };
        if let Some(id) = c.buffer {
            if c.result > 0 {
                let data = drv.buffer(id, c.result as usize);
                self.acc.now = now_ns();
                let last = &mut self.last[idx * self.publishers..(idx + 1) * self.publishers];
                on_data(conn, data, self.proto, &mut self.acc, last, self.shared);
                // NATS servers ping idle-looking clients; answer so long runs survive.
                // A PING split across two buffers is missed (the server pings again).
                if self.proto == Proto::Nats
                    && conn.ready
                    && self.ping.find(data).is_some()
                    && send_nonblocking(conn.fd, b"PONG\r\n")
                {
                    self.counts.pongs += 1;
                }
            }
            drv.recycle(id);
        }
        if !c.more && conn.alive {
            rearm_or_end(drv, conn, c, &mut self.counts, self.shared);
        }
    }

    fn finish(self, error: Option<String>) -> RecvResult {
        let lost_tail = self.lost_tail();
        let never_ready = self.conns.iter().filter(|c| !c.ready).count() as u64;
        let fds: Vec<RawFd> = self.conns.iter().map(|c| c.fd).collect();
        let per_sub = self
            .conns
            .iter()
            .filter_map(|c| {
                let h = c.hist.as_ref()?;
                Some(SubLatency {
                    order: c.order,
                    samples: h.len(),
                    p50_us: h.value_at_quantile(0.5),
                    p99_us: h.value_at_quantile(0.99),
                })
            })
            .collect();
        let (acc, counts) = (self.acc, self.counts);
        RecvResult {
            hist: acc.hist,
            per_sub,
            msgs: acc.msgs,
            window_msgs: acc.window,
            lost_gaps: acc.lost,
            lost_tail,
            reordered: acc.reordered,
            malformed: acc.malformed,
            stale: acc.stale,
            eof: counts.eof,
            resets: counts.resets,
            never_ready,
            rearms: counts.rearms,
            enobufs: counts.enobufs,
            pongs: counts.pongs,
            error,
        }
        .with_closed(fds)
    }

    /// Messages of the measured window that never arrived.
    fn lost_tail(&self) -> u64 {
        let mut lost_tail = 0u64;
        for i in 0..self.conns.len() {
            for p in 0..self.publishers {
                let fm = self.shared.first_measured[p].load(Relaxed);
                let ls = self.shared.last_sent[p].load(Relaxed);
                if fm == 0 || ls < fm {
                    continue;
                }
                let seen = self.last[i * self.publishers + p].max(fm - 1);
                lost_tail += ls.saturating_sub(seen);
            }
        }
        lost_tail
    }
}

/// Feeds received bytes to the connection's scanner, first through the protocol's subscribe
/// handshake (Redis and NATS) until it is acknowledged.
fn on_data(
    conn: &mut Conn,
    data: &[u8],
    proto: Proto,
    acc: &mut Acc,
    last: &mut [u64],
    shared: &Shared,
) {
    let fm = &shared.first_measured[..];
    if conn.ready {
        conn.scanner
            .feed(data, |ev| acc.on_event(ev, last, fm, &mut conn.hist));
        return;
    }
    if proto == Proto::Ringfan {
        conn.ready = true;
        shared.ready.fetch_add(1, Relaxed);
        conn.scanner
            .feed(data, |ev| acc.on_event(ev, last, fm, &mut conn.hist));
        return;
    }
    conn.hs.extend_from_slice(data);
    match handshake(proto, &conn.hs) {
        Handshake::Pending if conn.hs.len() > 1 << 16 => {
            // Something we do not understand: stop waiting, scan from here.
            conn.ready = true;
            conn.hs = Vec::new();
            shared.hs_failed.fetch_add(1, Relaxed);
        }
        Handshake::Pending => {}
        Handshake::Ready(off) => {
            conn.ready = true;
            shared.ready.fetch_add(1, Relaxed);
            let hs = std::mem::take(&mut conn.hs);
            conn.scanner
                .feed(&hs[off..], |ev| acc.on_event(ev, last, fm, &mut conn.hist));
        }
        Handshake::Failed(line) => {
            if shared.hs_failed.fetch_add(1, Relaxed) == 0 {
                eprintln!("subscriber handshake failed: {line}");
            }
            conn.ready = true;
            conn.hs = Vec::new();
        }
    }
}

/// A multishot recv ended: re-arm it unless the peer is gone (EOF or an error).
fn rearm_or_end(
    drv: &mut Uring,
    conn: &mut Conn,
    c: &Completion,
    counts: &mut Counts,
    shared: &Shared,
) {
    let r = c.result;
    if r > 0
        || r == -libc::ENOBUFS
        || r == -libc::ECANCELED
        || r == -libc::EINTR
        || r == -libc::EAGAIN
    {
        if r == -libc::ENOBUFS {
            counts.enobufs += 1;
        }
        counts.rearms += 1;
        drv.recv_multi(conn.fd, c.user_data);
    } else {
        conn.alive = false;
        if r == 0 {
            counts.eof += 1;
        } else {
            counts.resets += 1;
        }
        shared.disconnected.fetch_add(1, Relaxed);
    }
}

impl RecvResult {
    /// Closes the sockets. The ring (dropped by the caller's thread exit) may still hold
    /// multishot receives on them; closing the fd table entries is harmless either way.
    fn with_closed(self, fds: Vec<RawFd>) -> Self {
        for fd in fds {
            // SAFETY: these fds were handed to this thread, which owns them and closes each once.
            unsafe { libc::close(fd) };
        }
        self
    }
}
