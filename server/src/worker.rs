//! One worker: one ring, one listener, one connection table, one hub shard, one thread.
//!
//! A loop turn: take completions → take other workers' batches → decode input, bounded per
//! connection → fan the turn's lines out (locally, and one batch to each other worker) → submit
//! gathered sends → deadlines → wait.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::Chunk;
use ring::{Completion, Driver, Op, UserData};
use slab::Slab;

use crate::config::{Config, SlowConsumer};
use crate::conn::{CloseReason, Closing, Conn, ReadEnd, ReadHalf, WriteHalf};
use crate::hub::{Batch, BatchData, Shared};
use crate::metrics::{WorkerMetrics, LATENCY_SAMPLE_INTERVAL, PUBLISH_INTERVAL};
use crate::net;
use crate::stats::Stats;

/// Slots used in the listeners' user_data (`LISTENER_SLOT - index`); connection slots never
/// reach them (the doorbell uses u32::MAX).
const LISTENER_SLOT: u32 = u32::MAX - 1;
const REFUSAL_LINE: &[u8] = b"-ERR server full\n";

/// One of the worker's listeners: 0 accepts subscribers (and publishers unless a publish
/// listener is configured), 1 is the publish listener.
struct Listener {
    fd: Option<OwnedFd>,
    armed: bool,
    retry_at: Option<Instant>,
    /// Connections accepted here may publish.
    publishers: bool,
}

fn accept_ud(index: usize) -> UserData {
    UserData::new(LISTENER_SLOT - index as u32, 0, Op::Accept)
}

/// Longest the loop sleeps when nothing is due; bounds how late a shutdown flag is noticed if a
/// wake-up were ever lost.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Back-off before re-arming accept after EMFILE/ENFILE or an unexpected error (no busy loop).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A lagging subscriber holds input back only while its sends progressed within this window...
const STALL_PROGRESS_WINDOW: Duration = Duration::from_millis(500);
/// ...and for at most this long per episode over half its queue limit.
const STALL_MAX: Duration = Duration::from_millis(5000);

enum AfterFanOut {
    ReadEnd(ReadEnd),
    ProtocolError(protocol::FrameTooLong),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// Shutdown seen: our last input is published, waiting for every other worker's.
    WaitingPeers,
    /// Every subscription dropped; closing connections.
    Draining,
}

pub struct Worker<D: Driver> {
    pub(crate) id: usize,
    pub(crate) cfg: Arc<Config>,
    pub(crate) driver: D,
    pub(crate) shared: Arc<Shared>,
    inbox: Receiver<Batch>,
    listeners: Vec<Listener>,
    /// Kept open to be closed when accept fails with EMFILE, so the waiting connections can be
    /// accepted and refused instead of sitting in the backlog.
    spare_fd: Option<std::fs::File>,
    pub(crate) conns: Slab<Conn>,
    /// Generation of each slot, kept across reuse.
    pub(crate) generations: Vec<u32>,
    /// Slots of subscribed connections.
    pub(crate) subscribers: Vec<usize>,
    /// Connections with undecoded input.
    ready: VecDeque<usize>,
    /// Connections with queued bytes and no send in flight.
    dirty: Vec<usize>,
    /// Subscribers over half their queue limit (see `input_stalled`).
    lagging: Vec<(usize, u32)>,
    /// Connections whose recv ended for want of buffers; re-armed when buffers return.
    starved: Vec<(usize, u32)>,
    deadlines: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// This turn's published chunks with the slot that sent each.
    batch: Vec<(Chunk, usize)>,
    inbox_batches: Vec<Batch>,
    /// Read ends and protocol errors met while decoding, applied after this turn's fan-out.
    after_fan_out: Vec<(usize, AfterFanOut)>,
    completions: Vec<Completion>,
    evict: Vec<usize>,
    phase: Phase,
    shutdown_deadline: Option<Instant>,
    pub(crate) now: Instant,
    pub(crate) stats: Stats,
    unexpected_logged: u32,
    pub(crate) metrics: Option<WorkerMetrics>,
    next_metrics_publish: Instant,
    next_latency_sample: Instant,
    latency_rr: usize,
    /// Counts fan-outs; each starts at a different subscriber (see `fan_out_order`).
    fan_outs: u32,
}

impl<D: Driver> Worker<D> {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        driver: D,
        shared: Arc<Shared>,
        inbox: Receiver<Batch>,
        listener: OwnedFd,
        publish_listener: Option<OwnedFd>,
    ) -> Self {
        Worker {
            id,
            cfg,
            driver,
            shared,
            inbox,
            listeners: std::iter::once((listener, publish_listener.is_none()))
                .chain(publish_listener.map(|l| (l, true)))
                .map(|(fd, publishers)| Listener {
                    fd: Some(fd),
                    armed: false,
                    retry_at: None,
                    publishers,
                })
                .collect(),
            spare_fd: std::fs::File::open("/dev/null").ok(),
            conns: Slab::new(),
            generations: Vec::new(),
            subscribers: Vec::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            starved: Vec::new(),
            lagging: Vec::new(),
            deadlines: BinaryHeap::new(),
            batch: Vec::new(),
            inbox_batches: Vec::new(),
            after_fan_out: Vec::new(),
            completions: Vec::new(),
            evict: Vec::new(),
            phase: Phase::Running,
            shutdown_deadline: None,
            now: Instant::now(),
            stats: Stats::default(),
            unexpected_logged: 0,
            metrics: None,
            next_metrics_publish: Instant::now(),
            next_latency_sample: Instant::now(),
            latency_rr: 0,
            fan_outs: 0,
        }
    }

    /// Publishes this worker's counters to the installed metrics recorder.
    pub fn with_metrics(mut self) -> Self {
        self.metrics = Some(WorkerMetrics::new(self.id));
        self
    }

    fn arm_accept(&mut self, index: usize) {
        let l = &mut self.listeners[index];
        debug_assert!(!l.armed);
        l.armed = true;
        let fd = l.fd.as_ref().expect("listener open").as_raw_fd();
        self.driver.accept_multi(fd, accept_ud(index));
    }

    fn accepting(&self) -> bool {
        self.listeners.iter().any(|l| l.armed)
    }

    /// Runs until shutdown has closed every connection. Returns the worker's counters.
    pub fn run(mut self) -> std::io::Result<Stats> {
        self.start();
        while !self.turn(Instant::now()) {
            let wait = self.wait_time();
            self.driver.submit_and_wait(wait)?;
        }
        self.driver.submit()?;
        self.stats.driver = self.driver.stats();
        Ok(self.stats)
    }

    pub(crate) fn start(&mut self) {
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
    }

    /// One loop turn at time `now`. True once shutdown has closed everything.
    pub(crate) fn turn(&mut self, now: Instant) -> bool {
        self.now = now;
        self.take_completions();
        if self.input_stalled() {
            self.stats.stalled_turns += 1;
        } else {
            self.take_inbox();
            self.decode_ready(self.cfg.read_budget_bytes, false);
        }
        self.advance_phase();
        self.fan_out();
        self.rearm_starved();
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if self.phase == Phase::Running
                && !l.armed
                && l.retry_at.is_some_and(|at| self.now >= at)
            {
                l.retry_at = None;
                self.arm_accept(i);
            }
        }
        self.expire_deadlines();
        self.submit_sends();
        self.publish_metrics();
        self.phase == Phase::Draining && self.conns.is_empty() && !self.accepting()
    }

    fn wait_time(&self) -> Duration {
        if !self.ready.is_empty()
            && !self.shared.peers_backlogged(self.id)
            && self.lagging.is_empty()
        {
            return Duration::ZERO;
        }
        let stalled = !self.lagging.is_empty() && !self.ready.is_empty();
        let mut wait = if self.ready.is_empty() && !stalled {
            IDLE_WAIT
        } else {
            Duration::from_millis(1)
        };
        let mut due = |t: Instant| wait = wait.min(t.saturating_duration_since(self.now));
        if let Some(Reverse((t, _, _))) = self.deadlines.peek() {
            due(*t);
        }
        for t in self.listeners.iter().filter_map(|l| l.retry_at) {
            due(t);
        }
        if let Some(t) = self.shutdown_deadline {
            due(t);
        }
        if self.metrics.is_some() {
            due(self.next_metrics_publish);
        }
        if !self.starved.is_empty() {
            due(self.now + Duration::from_millis(1));
        }
        wait
    }

    // ---- completions -------------------------------------------------------------------------

    fn take_completions(&mut self) {
        let mut completions = std::mem::take(&mut self.completions);
        self.driver.completions(&mut completions);
        for c in completions.drain(..) {
            self.dispatch(c);
        }
        self.completions = completions;
    }

    fn dispatch(&mut self, c: Completion) {
        let op = match c.user_data.op() {
            Some(op) => op,
            None => panic!(
                "completion with a user_data this worker never submitted: {:?}",
                c
            ),
        };
        let listener = LISTENER_SLOT.wrapping_sub(c.user_data.slot()) as usize;
        if listener < self.listeners.len() {
            return match op {
                Op::Accept => self.on_accept(listener, c),
                Op::Cancel => {}
                _ => unreachable!("listener completion for {op:?}"),
            };
        }
        if op == Op::Doorbell {
            return; // the inbox is drained every turn
        }
        let slot = c.user_data.slot() as usize;
        let live = self
            .conns
            .get(slot)
            .is_some_and(|conn| conn.generation == c.user_data.generation());
        if !live {
            // A completion for a connection already freed (its slot may be reused): never apply.
            self.stats.stale_completions += 1;
            if let Some(id) = c.buffer {
                self.driver.recycle(id);
            }
            return;
        }
        match op {
            Op::Recv => self.on_recv(slot, c),
            Op::Send => self.conn_on_send(slot, c.result),
            Op::Shutdown => self.conn_on_shutdown(slot, c.result),
            Op::Close => self.conn_on_close(slot, c.result),
            Op::Cancel => {
                let conn = &mut self.conns[slot];
                conn.cancels_in_flight -= 1;
                self.conn_try_close(slot);
            }
            Op::Accept | Op::Doorbell => unreachable!(),
        }
    }

    fn on_accept(&mut self, index: usize, c: Completion) {
        if !c.more {
            self.listeners[index].armed = false;
        }
        if c.result >= 0 {
            self.on_accepted(index, c.result);
        } else {
            match -c.result {
                libc::ECANCELED => {}
                libc::EMFILE | libc::ENFILE => self.on_out_of_fds(index),
                errno => self.log_unexpected(Op::Accept, errno),
            }
        }
        let l = &mut self.listeners[index];
        if !l.armed && self.phase == Phase::Running {
            if c.result < 0 {
                // EMFILE and unexpected errors: re-arming at once would fail again at once.
                l.retry_at = Some(self.now + ACCEPT_BACKOFF);
            } else {
                // Ended without error (e.g. completion-queue overflow): re-arm at once.
                self.arm_accept(index);
            }
        }
        let l = &mut self.listeners[index];
        if !l.armed && self.phase != Phase::Running {
            // Final accept completion after the cancel: nothing refers to the listener any more.
            l.fd = None;
        }
    }

    /// A new connection: refused if the server is full, else subscribed.
    fn on_accepted(&mut self, index: usize, fd: RawFd) {
        self.stats.accepted += 1;
        if !self.shared.admit() {
            // Never leave it waiting: one line, then FIN.
            net::refuse(fd, REFUSAL_LINE);
            self.stats.refused_limit += 1;
            if self.stats.refused_limit.is_power_of_two() {
                tracing::warn!(worker = self.id, refused = self.stats.refused_limit,
                    "connection limit reached (RINGFAN_MAX_CONNECTIONS = {}): refusing new connections",
                    self.shared.max_connections);
            }
            return;
        }
        if let Err(e) = net::tune_accepted(
            fd,
            self.cfg.keepalive_secs,
            self.cfg.user_timeout_ms,
            self.cfg.notsent_lowat,
        ) {
            self.log_unexpected_io("setsockopt on an accepted connection", &e);
        }
        let slot = self.conn_open(fd);
        self.conns[slot].may_publish = self.listeners[index].publishers;
        if self.phase >= Phase::Draining {
            // Accepted while shutting down: greet it with a clean FIN.
            self.conn_unsubscribe(slot, CloseReason::Shutdown);
        }
    }

    /// Accept failed with EMFILE/ENFILE: the connections stay in the listen backlog, where clients
    /// would hang. Free the spare fd, accept and refuse everything waiting, take the spare back.
    /// The caller re-arms accept after a back-off, so the condition costs no CPU while it lasts.
    fn on_out_of_fds(&mut self, index: usize) {
        self.stats.accept_emfile += 1;
        if self.stats.accept_emfile.is_power_of_two() {
            tracing::warn!(worker = self.id, times = self.stats.accept_emfile,
                "out of file descriptors (EMFILE/ENFILE): refusing waiting connections, retrying accept every {:?}",
                ACCEPT_BACKOFF);
        }
        let Some(fd) = self.listeners[index].fd.as_ref().map(|l| l.as_raw_fd()) else {
            return;
        };
        self.spare_fd = None;
        if net::set_nonblocking(fd, true).is_err() {
            return;
        }
        // Bounded: at most the backlog's length per attempt.
        for _ in 0..self.cfg.listen_backlog.max(1) {
            match net::accept_now(fd) {
                Ok(Some(conn)) => {
                    net::refuse(conn, REFUSAL_LINE);
                    self.stats.refused_emfile += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = net::set_nonblocking(fd, false);
        self.spare_fd = std::fs::File::open("/dev/null").ok();
    }

    fn on_recv(&mut self, slot: usize, c: Completion) {
        let conn = &mut self.conns[slot];
        if !c.more {
            conn.recv_in_flight = false;
        }
        if let Some(id) = c.buffer {
            let len = c.result.max(0) as u32;
            self.stats.bytes_in += len as u64;
            if conn.takes_input() && self.phase == Phase::Running {
                conn.pending.push_back((id, len));
                conn.pending_bytes += len as usize;
                if !conn.in_ready {
                    conn.in_ready = true;
                    self.ready.push_back(slot);
                }
                // A publisher far ahead of its budget stops being read until it is caught up, so
                // it cannot hold every provided buffer.
                if conn.pending_bytes > 4 * self.cfg.read_budget_bytes
                    && conn.recv_in_flight
                    && !conn.recv_paused
                {
                    conn.recv_paused = true;
                    conn.cancels_in_flight += 1;
                    let target = conn.ud(slot, Op::Recv);
                    let ud = conn.ud(slot, Op::Cancel);
                    self.driver.cancel(target, ud);
                    self.stats.recv_paused += 1;
                }
            } else {
                // Not publishing (may not publish, draining, evicted, shutting down): read and
                // discard at once, so the peer's FIN is still seen and nothing piles up.
                if !conn.may_publish {
                    self.stats.subscriber_bytes_discarded += len as u64;
                }
                self.stats.bytes_discarded += len as u64;
                self.driver.recycle(id);
            }
        }
        if c.more {
            return;
        }
        let conn = &mut self.conns[slot];
        if conn.closing != Closing::No {
            return self.conn_try_close(slot);
        }
        let end = match c.result {
            0 if c.buffer.is_none() => Some(ReadEnd::Fin),
            r if r >= 0 => None, // multishot ended with data (e.g. CQ overflow): re-arm below
            r => match -r {
                libc::ENOBUFS => {
                    self.stats.recv_enobufs += 1;
                    self.starved.push((slot, conn.generation));
                    return;
                }
                libc::ECANCELED => None,
                errno => Some(ReadEnd::Error(errno)),
            },
        };
        match end {
            Some(end) if !conn.pending.is_empty() => conn.read_end = Some(end),
            Some(end) => self.conn_on_read_end(slot, end),
            None => self.maybe_arm_recv(slot),
        }
    }

    pub(crate) fn arm_recv(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        debug_assert!(!conn.recv_in_flight && conn.read == ReadHalf::Open);
        conn.recv_in_flight = true;
        conn.recv_paused = false;
        let ud = conn.ud(slot, Op::Recv);
        self.driver.recv_multi(conn.fd, ud);
    }

    /// Re-arms the recv if the read half is open and the connection is not over its input budget.
    fn maybe_arm_recv(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        if conn.read != ReadHalf::Open
            || conn.closing != Closing::No
            || conn.recv_in_flight
            || conn.read_end.is_some()
            || conn.pending_bytes > self.cfg.read_budget_bytes
        {
            return;
        }
        if self.driver.buffers_available() == 0 {
            self.starved.push((slot, conn.generation));
            return;
        }
        self.arm_recv(slot);
    }

    fn rearm_starved(&mut self) {
        while !self.starved.is_empty() && self.driver.buffers_available() > 0 {
            let (slot, generation) = self.starved.pop().expect("not empty");
            if self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == generation)
            {
                self.maybe_arm_recv(slot);
            }
        }
    }

    // ---- input and fan-out -------------------------------------------------------------------

    /// Decodes pending input, at most `read_budget_bytes` per connection per turn.
    /// With `force`, other workers' backlog is ignored (shutdown publishes everything received).
    fn decode_ready(&mut self, budget: usize, force: bool) {
        if !force && self.shared.peers_backlogged(self.id) {
            self.stats.backpressure_turns += 1;
            return;
        }
        let mut turn_left = if force {
            usize::MAX
        } else {
            self.cfg.turn_input_bytes_max()
        };
        for _ in 0..self.ready.len() {
            if turn_left == 0 {
                break; // the rest keep their place in the queue for the next turn
            }
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.in_ready = false;
            let mut taken = 0;
            while taken < budget && turn_left > 0 {
                let Some((id, len)) = conn.pending.pop_front() else {
                    break;
                };
                conn.pending_bytes -= len as usize;
                taken += len as usize;
                turn_left = turn_left.saturating_sub(len as usize);
                let decoded = conn.decoder.decode(self.driver.buffer(id, len as usize));
                self.driver.recycle(id);
                if let Some(chunk) = decoded.chunk {
                    self.stats.messages_in += chunk.count as u64;
                    self.batch.push((chunk, slot));
                }
                if let Some(err) = decoded.error {
                    self.stats.protocol_errors += 1;
                    self.after_fan_out
                        .push((slot, AfterFanOut::ProtocolError(err)));
                    break;
                }
            }
            let conn = &mut self.conns[slot];
            if !conn.pending.is_empty() {
                conn.in_ready = true;
                self.ready.push_back(slot);
            } else if let Some(end) = conn.read_end.take() {
                self.after_fan_out.push((slot, AfterFanOut::ReadEnd(end)));
            } else {
                self.maybe_arm_recv(slot);
            }
        }
    }

    /// Delivers this turn's chunks to local subscribers and ships them to the other workers.
    fn fan_out(&mut self) {
        if !self.batch.is_empty() {
            self.fan_out_batch();
        }
        // A connection's FIN or protocol error takes effect only now, after the lines it sent
        // before it were delivered, to itself included.
        let mut after = std::mem::take(&mut self.after_fan_out);
        for (slot, action) in after.drain(..) {
            match action {
                AfterFanOut::ReadEnd(end) => self.conn_on_read_end(slot, end),
                AfterFanOut::ProtocolError(err) => {
                    let conn = &mut self.conns[slot];
                    if conn.write == WriteHalf::Subscribed {
                        conn.queue_bytes += err.error_line().len();
                        conn.queue.push_back(err.error_line());
                        self.conn_evict(slot, CloseReason::ProtocolError);
                    }
                }
            }
        }
        self.after_fan_out = after;
    }

    /// The order in which one fan-out queues (and so submits) the subscribers' sends: the
    /// subscriber list from a different start each time. The kernel works through a turn's
    /// sends in submission order, so at N = 5000 the last send of a message goes out tens of
    /// milliseconds after the first; always starting at index 0 would make the same
    /// (earliest-connected) subscribers first and the same ones last, every message. The start
    /// follows the golden-ratio sequence, which spreads consecutive starts evenly over the list
    /// whatever its length, so each subscriber's latency percentiles come out alike.
    fn fan_out_order(&mut self) -> impl Iterator<Item = usize> {
        let n = self.subscribers.len();
        self.fan_outs = self.fan_outs.wrapping_add(1);
        // 2^32 / golden ratio: fan_outs * this mod 2^32 is the Weyl sequence, scaled to 0..n.
        let start = ((self.fan_outs.wrapping_mul(0x9E37_79B9) as u64 * n as u64) >> 32) as usize;
        (start..n).chain(0..start)
    }

    fn fan_out_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let echo = self.cfg.echo;
        for i in self.fan_out_order() {
            let slot = self.subscribers[i];
            for (chunk, from) in &batch {
                if !echo && *from == slot {
                    continue;
                }
                if !self.deliver(slot, chunk) {
                    break;
                }
            }
        }
        if self.shared.workers > 1 {
            let bytes = batch.iter().map(|(c, _)| c.bytes.len()).sum();
            let shipped: Batch = Arc::new(BatchData {
                chunks: batch.iter().map(|(c, _)| c.clone()).collect(),
                at: self.now,
            });
            self.shared.publish(self.id, &shipped, bytes);
        }
        self.apply_evictions();
        self.sample_latency(self.now);
        self.batch = batch;
        self.batch.clear();
    }

    /// Queues `chunk` for `slot`. False if that put the subscriber over its limit (it is then
    /// marked for eviction and gets nothing more).
    fn deliver(&mut self, slot: usize, chunk: &Chunk) -> bool {
        let conn = &mut self.conns[slot];
        let over = conn.queue_bytes + chunk.bytes.len() > self.cfg.send_queue_bytes_max;
        let timeout = self.cfg.slow_consumer_timeout;
        let stuck = !timeout.is_zero()
            && conn.queue_bytes > 0
            && conn
                .progress_at
                .is_some_and(|t| self.now.saturating_duration_since(t) > timeout);
        if over || stuck {
            if stuck && !over {
                self.stats.slow_timeouts += 1;
            }
            return match self.cfg.slow_consumer {
                SlowConsumer::Disconnect => {
                    tracing::debug!(worker = self.id, slot, queue_bytes = conn.queue_bytes, chunk = chunk.bytes.len(), stuck,
                        lagging_for = ?conn.lagging_since.map(|t| self.now.saturating_duration_since(t)),
                        since_progress = ?conn.last_send_progress.map(|t| self.now.saturating_duration_since(t)),
                        "slow subscriber");
                    self.evict.push(slot);
                    false
                }
                SlowConsumer::Drop => {
                    // Whole chunks only: the subscriber sees a gap, never a cut line.
                    conn.dropped_messages += chunk.count as u64;
                    self.stats.messages_dropped += chunk.count as u64;
                    true
                }
            };
        }
        if conn.queue_bytes == 0 {
            conn.progress_at = Some(self.now);
        }
        conn.queue_bytes += chunk.bytes.len();
        conn.queued_total += chunk.bytes.len() as u64;
        conn.queue.push_back(chunk.bytes.clone());
        self.stats.messages_out += chunk.count as u64;
        if conn.queue_bytes > self.cfg.lagging_bytes() && conn.lagging_since.is_none() {
            conn.lagging_since = Some(self.now);
            self.lagging.push((slot, conn.generation));
        }
        if !conn.send_in_flight && !conn.in_dirty {
            conn.in_dirty = true;
            self.dirty.push(slot);
        }
        true
    }

    /// Flow control: true while some subscriber is over a quarter of its queue limit *and* draining it
    /// (a send made progress lately). Then this worker takes no new input (its publishers feel
    /// TCP backpressure) and leaves its inbox alone (so other workers' publishers stall too),
    /// instead of queueing past the limit and evicting a subscriber that is merely behind. A
    /// subscriber that makes no progress, or has been over for longer than [`STALL_MAX`], does
    /// not hold anyone back: it goes on to its limit and is evicted. (A quarter, plus at most an
    /// eighth from the inbox and an eighth of local input when the stall lifts, stays well under
    /// the limit.)
    fn input_stalled(&mut self) -> bool {
        let half = self.cfg.lagging_bytes();
        let now = self.now;
        let conns = &mut self.conns;
        let mut stall = false;
        self.lagging.retain(|&(slot, generation)| {
            let Some(conn) = conns.get_mut(slot).filter(|c| c.generation == generation) else {
                return false;
            };
            let Some(since) = conn.lagging_since else {
                return false;
            };
            if conn.queue_bytes <= half || conn.write != WriteHalf::Subscribed {
                conn.lagging_since = None;
                return false;
            }
            let progressing = conn
                .last_send_progress
                .is_some_and(|t| now.saturating_duration_since(t) < STALL_PROGRESS_WINDOW);
            stall |= progressing && now.saturating_duration_since(since) < STALL_MAX;
            true
        });
        stall
    }

    /// Now and then, follows the last delivery to one subscriber (round robin) until its send
    /// completes: the fan-out latency histogram. Off without metrics.
    fn sample_latency(&mut self, arrival: Instant) {
        if self.metrics.is_none()
            || self.now < self.next_latency_sample
            || self.subscribers.is_empty()
        {
            return;
        }
        self.next_latency_sample = self.now + LATENCY_SAMPLE_INTERVAL;
        self.latency_rr = self.latency_rr.wrapping_add(1);
        let slot = self.subscribers[self.latency_rr % self.subscribers.len()];
        let conn = &mut self.conns[slot];
        if conn.latency_probe.is_none() && conn.queued_total > conn.sent_total {
            conn.latency_probe = Some((conn.queued_total, arrival));
        }
    }

    fn publish_metrics(&mut self) {
        if let Some(m) = &self.metrics {
            if self.now >= self.next_metrics_publish {
                self.next_metrics_publish = self.now + PUBLISH_INTERVAL;
                self.stats.driver = self.driver.stats();
                m.publish(&self.stats, self.conns.iter().map(|(_, c)| c));
            }
        }
    }

    fn apply_evictions(&mut self) {
        let mut evict = std::mem::take(&mut self.evict);
        for slot in evict.drain(..) {
            if self.conns[slot].write == WriteHalf::Subscribed {
                self.stats.evicted_slow += 1;
                if self.stats.evicted_slow.is_power_of_two() {
                    tracing::warn!(worker = self.id, total = self.stats.evicted_slow,
                        "evicting a slow subscriber: send queue over RINGFAN_SEND_QUEUE_BYTES_MAX ({} bytes)",
                        self.cfg.send_queue_bytes_max);
                }
                self.conn_evict(slot, CloseReason::EvictedSlow);
            }
        }
        self.evict = evict;
    }

    fn take_inbox(&mut self) {
        let mut batches = std::mem::take(&mut self.inbox_batches);
        self.shared.drain(self.id, &self.inbox, &mut batches);
        for batch in batches.drain(..) {
            for i in self.fan_out_order() {
                let slot = self.subscribers[i];
                for chunk in batch.chunks.iter() {
                    if !self.deliver(slot, chunk) {
                        break;
                    }
                }
            }
            // Before the next batch: an evicted subscriber must not get later messages after
            // missing one.
            self.apply_evictions();
            self.sample_latency(batch.at);
        }
        self.inbox_batches = batches;
    }

    fn submit_sends(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for slot in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.in_dirty = false;
            if conn.send_in_flight || conn.queue_bytes == 0 || conn.closing != Closing::No {
                continue;
            }
            if !matches!(conn.write, WriteHalf::Subscribed | WriteHalf::Draining) {
                continue;
            }
            let (msg, bytes) = conn.prepare_send();
            conn.send_in_flight = true;
            conn.send_bytes = bytes;
            let ud = conn.ud(slot, Op::Send);
            // SAFETY: `msg` lives in the connection's boxed SendState and points at iovecs in it,
            // which point into `Bytes` held by the queue; none of them is touched until this
            // send's completion (prepare_send is only called with no send in flight, and the
            // queue is only popped by `advance` after the completion, never dropped before the
            // connection's close completes).
            unsafe { self.driver.send_msg(conn.fd, msg, ud) };
        }
        self.dirty = dirty;
    }

    pub(crate) fn mark_dirty(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if !conn.in_dirty {
            conn.in_dirty = true;
            self.dirty.push(slot);
        }
    }

    pub(crate) fn remove_subscriber(&mut self, slot: usize) {
        let index = self.conns[slot].sub_index;
        assert_eq!(self.subscribers[index], slot);
        self.subscribers.swap_remove(index);
        if let Some(&moved) = self.subscribers.get(index) {
            self.conns[moved].sub_index = index;
        }
        self.conns[slot].sub_index = usize::MAX;
    }

    /// Gives back provided buffers of input that will never be decoded. Returns how the read
    /// half ended, if that was waiting behind the discarded data.
    pub(crate) fn discard_pending(&mut self, slot: usize) -> Option<ReadEnd> {
        let conn = &mut self.conns[slot];
        for (id, len) in conn.pending.drain(..) {
            self.stats.bytes_discarded += len as u64;
            self.driver.recycle(id);
        }
        conn.pending_bytes = 0;
        conn.read_end.take()
    }

    // ---- deadlines and shutdown --------------------------------------------------------------

    pub(crate) fn set_deadline(&mut self, slot: usize, at: Instant) {
        let conn = &mut self.conns[slot];
        conn.deadline = Some(at);
        self.deadlines.push(Reverse((at, slot, conn.generation)));
    }

    fn expire_deadlines(&mut self) {
        while let Some(&Reverse((at, slot, generation))) = self.deadlines.peek() {
            if at > self.now {
                break;
            }
            self.deadlines.pop();
            let current = self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == generation && c.deadline == Some(at));
            if current {
                self.conn_on_deadline(slot);
            }
        }
        if let Some(at) = self.shutdown_deadline {
            if self.now >= at {
                self.shutdown_deadline = None;
                let open: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.closing == Closing::No)
                    .map(|(slot, _)| slot)
                    .collect();
                if !open.is_empty() {
                    tracing::warn!(worker = self.id, connections = open.len(),
                        "RINGFAN_SHUTDOWN_TIMEOUT_MS passed: closing the remaining connections abortively");
                }
                self.stats.shutdown_aborted += open.len() as u64;
                for slot in open {
                    self.conn_abort(slot, CloseReason::Shutdown);
                }
            }
        }
    }

    /// Shutdown in three steps, so nothing a client sent before the signal is lost: (1) stop
    /// accepting and publish every line already received; (2) wait until every worker has done
    /// the same, take their last batches; (3) drop every subscription and close.
    fn advance_phase(&mut self) {
        match self.phase {
            Phase::Running if self.shared.shutdown.load(Ordering::Acquire) => {
                for i in 0..self.listeners.len() {
                    let l = &mut self.listeners[i];
                    l.retry_at = None;
                    if l.armed {
                        let target = accept_ud(i);
                        self.driver
                            .cancel(target, UserData::new(target.slot(), 0, Op::Cancel));
                    } else {
                        l.fd = None;
                    }
                }
                // Publish everything already received, ignoring the per-turn budget.
                while !self.ready.is_empty() {
                    self.decode_ready(usize::MAX, true);
                }
                self.fan_out();
                self.phase = Phase::WaitingPeers;
                let done = self.shared.quiesced.fetch_add(1, Ordering::AcqRel) + 1;
                if done == self.shared.workers {
                    self.shared.wake_all();
                }
                self.advance_phase();
            }
            Phase::WaitingPeers
                if self.shared.quiesced.load(Ordering::Acquire) == self.shared.workers =>
            {
                // Every worker's final batch is in our inbox now.
                self.take_inbox();
                self.phase = Phase::Draining;
                self.shutdown_deadline = Some(self.now + self.cfg.shutdown_timeout);
                let subscribed: Vec<usize> = self.subscribers.clone();
                tracing::info!(
                    worker = self.id,
                    connections = self.conns.len(),
                    "shutting down: flushing and closing every connection"
                );
                for slot in subscribed {
                    self.conn_unsubscribe(slot, CloseReason::Shutdown);
                }
            }
            _ => {}
        }
    }

    // ---- errors ------------------------------------------------------------------------------

    /// An errno with no line in the operation's table: logged (a few times), always counted.
    pub(crate) fn log_unexpected(&mut self, op: Op, errno: i32) {
        self.stats.unexpected_errors += 1;
        if self.unexpected_logged < 16 {
            self.unexpected_logged += 1;
            tracing::warn!(worker = self.id, op = op.name(), errno, error = %std::io::Error::from_raw_os_error(errno),
                "unexpected error from an operation");
        }
    }

    fn log_unexpected_io(&mut self, what: &str, e: &std::io::Error) {
        self.stats.unexpected_errors += 1;
        if self.unexpected_logged < 16 {
            self.unexpected_logged += 1;
            tracing::warn!(worker = self.id, %e, "unexpected error from {what}");
        }
    }
}
