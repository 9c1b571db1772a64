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
use super::topics::Topics;
use super::wire::{handshake, Event, Handshake, Scanner};
use super::ws::Frames;

/// State shared by the orchestrator, the publishers and the receivers.
pub struct Shared {
    pub stop: AtomicBool,
    /// Every marker seen (warm-up included), for the per-second progress line.
    pub delivered: AtomicU64,
    pub ready: AtomicUsize,
    pub hs_failed: AtomicUsize,
    pub disconnected: AtomicUsize,
    /// WebSocket connections whose frames broke the protocol (the first is printed).
    pub ws_errors: AtomicUsize,
    /// Messages sent at or after this instant are measured (u64::MAX until known). Also the
    /// start of the receive window (see `RecvResult::window_msgs`).
    pub measure_start: AtomicU64,
    /// End of the measured window (u64::MAX until known).
    pub measure_end: AtomicU64,
    /// When the publishers started (u64::MAX until then). A marker stamped earlier is not ours:
    /// a server reused right after another run still broadcasts what that run's publishers
    /// sent before they closed. Such markers are counted as `stale` and otherwise ignored.
    pub run_start: AtomicU64,
    /// Per publisher: the running number (see `Topics::route`) of its first message sent in
    /// the measured window (0 = none yet).
    pub first_measured: Vec<AtomicU64>,
    /// Per publisher: the running number of its last message completely written (final once
    /// the publisher has stopped).
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
            ws_errors: AtomicUsize::new(0),
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
    /// Deliveries the measured messages owe this thread's subscribers: each subscriber's
    /// share of them on its own channels.
    pub expected: u64,
    /// Markers received between the start and the end of the measured window, whenever they
    /// were sent: the steady-state receive rate's numerator.
    pub window_msgs: u64,
    pub lost_gaps: u64,
    pub lost_tail: u64,
    pub reordered: u64,
    pub malformed: u64,
    /// Markers of a channel the subscriber did not subscribe to.
    pub misrouted: u64,
    /// Markers stamped before this run's publishers started (see `Shared::run_start`).
    pub stale: u64,
    pub eof: u64,
    pub resets: u64,
    pub never_ready: u64,
    pub rearms: u64,
    pub enobufs: u64,
    /// Pongs sent: NATS `PONG`s, WebSocket pong frames.
    pub pongs: u64,
    /// WebSocket close frames received.
    pub ws_closes: u64,
    pub error: Option<String>,
}

/// A connected subscriber socket handed to a receiver thread.
pub struct Handed {
    pub fd: RawFd,
    /// Position in the order subscribers were connected (0 = first).
    pub order: u32,
    /// Which subscriber of the run it is, for its channels and patterns (see `Topics`).
    pub index: u32,
}

pub struct Receiver {
    tx: mpsc::Sender<Handed>,
    doorbell: Doorbell,
    join: JoinHandle<RecvResult>,
}

impl Receiver {
    /// Hands a connected socket (subscribe command already sent) to this receiver.
    pub fn add(&self, h: Handed) {
        match self.tx.send(h) {
            Ok(()) => self.doorbell.ring(),
            Err(mpsc::SendError(h)) => {
                // SAFETY: the receiver is gone; we still own the fd.
                unsafe { libc::close(h.fd) };
            }
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
            expected: 0,
            window_msgs: 0,
            lost_gaps: 0,
            lost_tail: 0,
            reordered: 0,
            malformed: 0,
            misrouted: 0,
            stale: 0,
            eof: 0,
            resets: 0,
            never_ready: 0,
            rearms: 0,
            enobufs: 0,
            pongs: 0,
            ws_closes: 0,
            error: Some(error),
        }
    }
}

struct Conn {
    fd: RawFd,
    order: u32,
    /// The first of its channels (see `Topics::first_channel`).
    first_channel: u32,
    /// Subscription confirmations still awaited (redis).
    awaiting: usize,
    /// This subscriber's measured latencies (created on its first measured marker).
    hist: Option<Histogram<u32>>,
    ready: bool,
    alive: bool,
    hs: Vec<u8>,
    scanner: Scanner,
    /// ws: the frame decoder in front of the scanner (unused otherwise).
    frames: Frames,
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
    misrouted: u64,
}

/// What a subscriber's markers are checked against: the run's topics, the publishers' progress,
/// and this subscriber's first channel.
#[derive(Clone, Copy)]
struct Streams<'a> {
    topics: &'a Topics,
    first_measured: &'a [AtomicU64],
    first_channel: u32,
}

impl Acc {
    /// `last`: this subscriber's last seq seen per (channel slot t, publisher p), at
    /// `t * publishers + p`.
    #[inline]
    fn on_event(
        &mut self,
        ev: Event,
        last: &mut [u64],
        st: Streams<'_>,
        own: &mut Option<Histogram<u32>>,
    ) {
        let m = match ev {
            Event::Marker(m) => m,
            Event::Malformed => {
                self.malformed += 1;
                return;
            }
        };
        let (p, j) = st.topics.split(m.publisher);
        let publishers = st.first_measured.len();
        if p as usize >= publishers || m.seq == 0 {
            self.malformed += 1;
            return;
        }
        if m.ts < self.run_start {
            self.stale += 1;
            return;
        }
        let Some(t) = st.topics.slot_of(st.first_channel, j) else {
            self.misrouted += 1;
            return;
        };
        let i = t as usize * publishers + p as usize;
        self.all += 1;
        if self.now >= self.measure_start && self.now < self.measure_end {
            self.window += 1;
        }
        let prev = last[i];
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
            // Only a jump past prev + 1 can be a loss: the common case skips the division
            // that finds where this (publisher, channel) sequence's measured part begins.
            if m.seq > prev + 1 {
                let fm = st.first_measured[p as usize].load(Relaxed).max(1);
                let fm = st.topics.sent_on(p, j, fm - 1) + 1;
                let from = (prev + 1).max(fm);
                if m.seq > from {
                    self.lost += m.seq - from;
                }
            }
        } else if m.seq <= prev {
            return;
        }
        last[i] = m.seq;
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
    topics: Topics,
    conns_hint: usize,
    shared: Arc<Shared>,
) -> Result<Receiver, String> {
    let (tx, rx) = mpsc::channel::<Handed>();
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
            run(&mut drv, rx, proto, topics, &shared)
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
    rx: mpsc::Receiver<Handed>,
    proto: Proto,
    topics: Topics,
    shared: &Shared,
) -> RecvResult {
    let mut r = Receiving::new(proto, topics, shared);
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
    topics: Topics,
    /// Entries of `last` per connection: its T channels x the publishers.
    streams: usize,
    conns: Vec<Conn>,
    /// The last seq seen per connection, channel of it and publisher: `streams` entries per
    /// connection (see `Acc::on_event`). Sized by each subscriber's T channels, not by K.
    last: Vec<u64>,
    acc: Acc,
    counts: Counts,
    ping: memmem::Finder<'static>,
}

impl<'a> Receiving<'a> {
    fn new(proto: Proto, topics: Topics, shared: &'a Shared) -> Self {
        Receiving {
            shared,
            proto,
            topics,
            streams: topics.per_sub as usize * shared.first_measured.len(),
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
                misrouted: 0,
            },
            counts: Counts::default(),
            ping: memmem::Finder::new(b"PING\r\n"),
        }
    }

    /// Takes the sockets the orchestrator handed over and arms a multishot recv on each.
    fn adopt(&mut self, drv: &mut Uring, rx: &mpsc::Receiver<Handed>) {
        while let Ok(Handed { fd, order, index }) = rx.try_recv() {
            let slot = self.conns.len() as u32;
            self.conns.push(Conn {
                fd,
                order,
                first_channel: self.topics.first_channel(index),
                awaiting: self.topics.subscriptions_of(index),
                hist: None,
                ready: false,
                alive: true,
                hs: Vec::new(),
                scanner: Scanner::default(),
                frames: Frames::default(),
            });
            self.last.resize(self.last.len() + self.streams, 0);
            drv.recv_multi(fd, UserData::new(slot, 0, Op::Recv));
        }
    }

    /// Bytes received on connection `idx`: through its handshake, then the marker scanner and
    /// the loss accounting.
    fn take(&mut self, idx: usize, data: &[u8]) {
        let conn = &mut self.conns[idx];
        let last = &mut self.last[idx * self.streams..(idx + 1) * self.streams];
        let st = Streams {
            topics: &self.topics,
            first_measured: &self.shared.first_measured,
            first_channel: conn.first_channel,
        };
        on_data(conn, data, self.proto, &mut self.acc, last, st, self.shared);
    }

    fn on_completion(&mut self, drv: &mut Uring, c: &Completion) {
        if c.user_data.op() != Some(Op::Recv) {
            return;
        }
        let idx = c.user_data.slot() as usize;
        if idx >= self.conns.len() {
            if let Some(id) = c.buffer {
                drv.recycle(id);
            }
            return;
        }
        if let Some(id) = c.buffer {
            if c.result > 0 {
                let data = drv.buffer(id, c.result as usize);
                self.acc.now = now_ns();
                self.take(idx, data);
                let conn = &mut self.conns[idx];
                // NATS servers ping idle-looking clients; answer so long runs survive.
                // A PING split across two buffers is missed (the server pings again).
                if self.proto == Proto::Nats
                    && conn.ready
                    && self.ping.find(data).is_some()
                    && send_nonblocking(conn.fd, b"PONG\r\n")
                {
                    self.counts.pongs += 1;
                }
                if !conn.frames.replies.is_empty() {
                    // Pongs and a close echo: a few bytes on a socket we never otherwise write
                    // to, so its send buffer has room and the send is whole.
                    if send_nonblocking(conn.fd, &conn.frames.replies) {
                        self.counts.pongs += conn.frames.pongs_queued;
                    }
                    conn.frames.replies.clear();
                    conn.frames.pongs_queued = 0;
                }
            }
            drv.recycle(id);
        }
        let conn = &mut self.conns[idx];
        if !c.more && conn.alive {
            rearm_or_end(drv, conn, c, &mut self.counts, self.shared);
        }
    }

    fn finish(self, error: Option<String>) -> RecvResult {
        let (lost_tail, expected) = self.tail_and_expected();
        let never_ready = self.conns.iter().filter(|c| !c.ready).count() as u64;
        let ws_closes = self.conns.iter().map(|c| c.frames.closes).sum();
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
            expected,
            window_msgs: acc.window,
            lost_gaps: acc.lost,
            lost_tail,
            reordered: acc.reordered,
            malformed: acc.malformed,
            misrouted: acc.misrouted,
            stale: acc.stale,
            eof: counts.eof,
            resets: counts.resets,
            never_ready,
            rearms: counts.rearms,
            enobufs: counts.enobufs,
            pongs: counts.pongs,
            ws_closes,
            error,
        }
        .with_closed(fds)
    }

    /// (Messages of the measured window that never arrived, deliveries they owed): for each
    /// subscriber, channel of it and publisher, the measured part of that sequence against
    /// the last seq the subscriber saw of it.
    fn tail_and_expected(&self) -> (u64, u64) {
        let progress: Vec<(u64, u64)> = (self.shared.first_measured.iter())
            .zip(&self.shared.last_sent)
            .map(|(fm, ls)| (fm.load(Relaxed), ls.load(Relaxed)))
            .collect();
        let publishers = progress.len();
        let (mut lost_tail, mut expected) = (0u64, 0u64);
        for (c, conn) in self.conns.iter().enumerate() {
            let last = &self.last[c * self.streams..(c + 1) * self.streams];
            let k = self.topics.channels;
            for t in 0..self.topics.per_sub {
                let j = ((conn.first_channel as u64 + t as u64) % k as u64) as u32;
                for (p, &(fm, ls)) in progress.iter().enumerate() {
                    let owed = self.topics.measured_on(p as u32, j, fm, ls);
                    if owed.is_empty() {
                        continue;
                    }
                    expected += owed.end - owed.start;
                    let seen = last[t as usize * publishers + p].max(owed.start - 1);
                    lost_tail += (owed.end - 1).saturating_sub(seen);
                }
            }
        }
        (lost_tail, expected)
    }
}

/// Bytes of one incomplete handshake reply past which the receiver stops waiting (more than the
/// largest message an earlier run may still be delivering, in one reply).
const HANDSHAKE_PENDING_BYTES_MAX: usize = super::cli::MAX_SIZE + (64 << 10);

/// Hands the bytes of a subscribed connection to its marker scanner: as they are, or with ws
/// the payloads of its frames (a frame header can contain `@`).
fn scan(
    conn: &mut Conn,
    data: &[u8],
    proto: Proto,
    acc: &mut Acc,
    last: &mut [u64],
    st: Streams<'_>,
    shared: &Shared,
) {
    let Conn {
        scanner,
        hist,
        frames,
        ..
    } = conn;
    if proto != Proto::Ws {
        scanner.feed(data, |ev| acc.on_event(ev, last, st, hist));
        return;
    }
    let was_ok = frames.error.is_none();
    let ok = frames.feed(data, |payload| {
        scanner.feed(payload, |ev| acc.on_event(ev, last, st, hist))
    });
    if was_ok && !ok {
        acc.malformed += 1;
        if shared.ws_errors.fetch_add(1, Relaxed) == 0 {
            eprintln!(
                "subscriber: WebSocket protocol error, the rest of that connection is ignored: {}",
                frames.error.unwrap_or_default()
            );
        }
    }
}

/// Feeds received bytes to the connection's scanner, first through the protocol's subscribe
/// handshake (Redis and NATS, the WebSocket upgrade) until it is acknowledged.
fn on_data(
    conn: &mut Conn,
    data: &[u8],
    proto: Proto,
    acc: &mut Acc,
    last: &mut [u64],
    st: Streams<'_>,
    shared: &Shared,
) {
    if conn.ready {
        scan(conn, data, proto, acc, last, st, shared);
        return;
    }
    if proto == Proto::Ringfan {
        conn.ready = true;
        shared.ready.fetch_add(1, Relaxed);
        scan(conn, data, proto, acc, last, st, shared);
        return;
    }
    conn.hs.extend_from_slice(data);
    match handshake(proto, &conn.hs, conn.awaiting) {
        Handshake::Pending { .. } if conn.hs.len() > HANDSHAKE_PENDING_BYTES_MAX => {
            // Something we do not understand: stop waiting, scan from here.
            conn.ready = true;
            conn.hs = Vec::new();
            shared.hs_failed.fetch_add(1, Relaxed);
        }
        Handshake::Pending {
            consumed,
            confirmed,
        } => {
            // Complete replies are done with: T confirmations of thousands of channels
            // need not be kept, nor walked again.
            conn.hs.drain(..consumed);
            conn.awaiting -= confirmed;
        }
        Handshake::Ready(off) => {
            conn.ready = true;
            shared.ready.fetch_add(1, Relaxed);
            let hs = std::mem::take(&mut conn.hs);
            scan(conn, &hs[off..], proto, acc, last, st, shared);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::wire::{FrameWriter, Marker};

    /// What the server would send subscriber `i`: its confirmations, then every message of the
    /// publishers on its channels except those `drop` picks; plus one marker of a channel it
    /// did not take, which must count as misrouted and nothing else.
    struct Run {
        topics: Topics,
        /// Per publisher: (first measured running number, last sent running number).
        progress: Vec<(u64, u64)>,
    }

    const MEASURE_START: u64 = 2_000_000;

    impl Run {
        fn ts(&self, p: u32, n: u64) -> u64 {
            let (fm, _) = self.progress[p as usize];
            if fm != 0 && n >= fm {
                MEASURE_START + n
            } else {
                1_000_000 + n
            }
        }

        /// The bytes subscriber `i` receives, and how many measured deliveries were dropped.
        fn stream_for(&self, i: u32, drop: impl Fn(u32, u64) -> bool) -> (Vec<u8>, u64) {
            let w = FrameWriter::new(Proto::Redis, "c", self.topics, 64);
            let mut out = Vec::new();
            for (q, j) in self.topics.channels_of(i).enumerate() {
                let name = self.topics.name("c", j);
                out.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n");
                out.extend_from_slice(format!("${}\r\n", name.len()).as_bytes());
                out.extend_from_slice(&name);
                out.extend_from_slice(format!("\r\n:{}\r\n", q + 1).as_bytes());
            }
            for q in self.topics.patterns_of(i) {
                let pat = Topics::pattern("c", q);
                out.extend_from_slice(b"*3\r\n$10\r\npsubscribe\r\n");
                out.extend_from_slice(format!("${}\r\n", pat.len()).as_bytes());
                out.extend_from_slice(&pat);
                out.extend_from_slice(b"\r\n:9\r\n");
            }
            let mine: Vec<u32> = self.topics.channels_of(i).collect();
            let mut dropped = 0;
            let longest = self.progress.iter().map(|&(_, ls)| ls).max().unwrap();
            // Publishers interleaved message by message, as the server would merge them.
            for n in 1..=longest {
                for (p, &(fm, ls)) in self.progress.iter().enumerate() {
                    let p = p as u32;
                    if n > ls {
                        continue;
                    }
                    let (j, seq) = self.topics.route(p, n);
                    if !mine.contains(&j) {
                        continue;
                    }
                    if drop(p, n) {
                        dropped += u64::from(fm != 0 && n >= fm);
                        continue;
                    }
                    let stream = self.topics.stream(p, j);
                    assert!(w.push(&mut out, j, stream, seq, self.ts(p, n)));
                }
            }
            if let Some(j) = (0..self.topics.channels).find(|j| !mine.contains(j)) {
                let stream = self.topics.stream(0, j);
                assert!(w.push(&mut out, j, stream, 1, MEASURE_START + 1));
            }
            (out, dropped)
        }
    }

    /// Feeds `data` to connection `idx` in chunks of `cut` bytes, as completions would.
    fn feed(r: &mut Receiving<'_>, idx: usize, data: &[u8], cut: usize) {
        for chunk in data.chunks(cut) {
            r.take(idx, chunk);
        }
    }

    fn account(topics: Topics, progress: Vec<(u64, u64)>, subs: u32) {
        let run = Run { topics, progress };
        let shared = Shared::new(run.progress.len());
        for (p, &(fm, ls)) in run.progress.iter().enumerate() {
            shared.first_measured[p].store(fm, Relaxed);
            shared.last_sent[p].store(ls, Relaxed);
        }
        let mut r = Receiving::new(Proto::Redis, topics, &shared);
        r.acc.measure_start = MEASURE_START;
        r.acc.run_start = 0;
        r.acc.now = MEASURE_START * 2;
        let (mut dropped, mut expected) = (0u64, 0u64);
        for i in 0..subs {
            r.conns.push(Conn {
                fd: -1,
                order: i,
                first_channel: topics.first_channel(i),
                awaiting: topics.subscriptions_of(i),
                hist: None,
                ready: false,
                alive: true,
                hs: Vec::new(),
                scanner: Scanner::default(),
                frames: Frames::default(),
            });
            r.last.resize(r.last.len() + r.streams, 0);
            // Gaps in the middle, and for subscriber 1 the tail of publisher 0 as well.
            let tail = run.progress[0].1.saturating_sub(3);
            let (data, d) = run.stream_for(i, |p, n| {
                (n + i as u64 + p as u64).is_multiple_of(11) || (i == 1 && p == 0 && n > tail)
            });
            dropped += d;
            feed(&mut r, i as usize, &data, 7 + i as usize * 13);
            for (p, &(fm, ls)) in run.progress.iter().enumerate() {
                let mine: Vec<u32> = topics.channels_of(i).collect();
                let owed =
                    (fm.max(1)..=ls).filter(|&n| mine.contains(&topics.route(p as u32, n).0));
                expected += if fm == 0 { 0 } else { owed.count() as u64 };
            }
        }
        let ctx = format!("{topics:?} {:?}", run.progress);
        assert!(r.conns.iter().all(|c| c.ready), "{ctx}: handshake");
        assert_eq!(shared.ready.load(Relaxed), subs as usize, "{ctx}");
        let (tail, owed) = r.tail_and_expected();
        assert!(
            dropped > 0 && tail > 0 && r.acc.lost > 0,
            "{ctx}: nothing lost"
        );
        assert_eq!(owed, expected, "{ctx}: expected");
        assert_eq!(r.acc.lost + tail, dropped, "{ctx}: lost");
        assert_eq!(r.acc.msgs, expected - dropped, "{ctx}: measured delivered");
        assert_eq!(r.acc.reordered, 0, "{ctx}");
        assert_eq!(r.acc.malformed, 0, "{ctx}");
        let foreign = if topics.per_sub < topics.channels {
            subs
        } else {
            0
        };
        assert_eq!(r.acc.misrouted, foreign as u64, "{ctx}");
    }

    fn topics(k: u32, t: u32, p: u32, n: u32) -> Topics {
        Topics::new(k, t, p, n)
    }

    /// Loss, expected deliveries and misrouting are exact, with one channel and with many,
    /// for publishers whose measured window starts anywhere (or not at all).
    #[test]
    fn accounting_is_exact_per_publisher_and_channel() {
        let progress = vec![(5, 60), (1, 47), (0, 9), (23, 22)];
        account(Topics::single(3), progress.clone(), 3);
        account(topics(10, 3, 4, 20), progress.clone(), 20);
        account(topics(7, 7, 0, 5), progress.clone(), 5);
        account(topics(8, 2, 1, 12), progress, 12);
    }

    /// A duplicate or an older seq of a (publisher, channel) is reordered, not a loss; another
    /// channel's sequence is independent of it.
    #[test]
    fn order_is_checked_per_channel() {
        let tp = topics(4, 2, 0, 1);
        let shared = Shared::new(1);
        shared.first_measured[0].store(1, Relaxed);
        let mut r = Receiving::new(Proto::Redis, tp, &shared);
        r.acc.measure_start = 0;
        r.acc.run_start = 0;
        let mut last = vec![0u64; r.streams];
        let mut own = None;
        let st = Streams {
            topics: &tp,
            first_measured: &shared.first_measured,
            first_channel: 0,
        };
        let mut ev = |j: u32, seq: u64| {
            let m = Marker {
                publisher: tp.stream(0, j),
                seq,
                ts: 1,
            };
            r.acc.on_event(Event::Marker(m), &mut last, st, &mut own);
        };
        ev(0, 1);
        ev(1, 1);
        ev(0, 2);
        ev(1, 3); // channel 1's seq 2 is missing
        ev(0, 2); // a duplicate
        ev(2, 1); // not one of this subscriber's channels (0 and 1)
        assert_eq!(
            (r.acc.msgs, r.acc.lost, r.acc.reordered, r.acc.misrouted),
            (5, 1, 1, 1)
        );
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use crate::load::wire::FrameWriter;

    /// The receive path's cost per marker (scanner, accounting, both histograms), one channel:
    /// `cargo test --release -p ringfan-benches --bin ringfan-load -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn accounting_throughput() {
        let topics = Topics::single(1);
        let shared = Shared::new(1);
        shared.first_measured[0].store(1, Relaxed);
        let w = FrameWriter::new(Proto::Ringfan, "c", topics, 64);
        let rounds = 20_000u64;
        let mut data = Vec::new();
        let mut r = Receiving::new(Proto::Ringfan, topics, &shared);
        r.acc.measure_start = 0;
        r.acc.run_start = 0;
        r.acc.measure_end = u64::MAX;
        r.acc.now = 123_456_789_999_999;
        let mut conn = Conn {
            fd: -1,
            order: 0,
            first_channel: 0,
            awaiting: 1,
            hist: None,
            ready: true,
            alive: true,
            hs: Vec::new(),
            scanner: Scanner::default(),
            frames: Frames::default(),
        };
        let mut last = vec![0u64; r.streams];
        let mut el = std::time::Duration::ZERO;
        for round in 0..rounds {
            data.clear();
            for s in 1..=256u64 {
                w.push(&mut data, 0, 0, round * 256 + s, 123_456_789_012_345);
            }
            let st = Streams {
                topics: &topics,
                first_measured: &shared.first_measured,
                first_channel: 0,
            };
            let t = std::time::Instant::now();
            on_data(
                &mut conn, &data, r.proto, &mut r.acc, &mut last, st, &shared,
            );
            el += t.elapsed();
        }
        assert_eq!(r.acc.msgs, rounds * 256);
        assert_eq!(r.acc.lost + r.acc.reordered, 0);
        eprintln!(
            "{:.1} ns/marker",
            el.as_nanos() as f64 / (rounds * 256) as f64
        );
    }
}
