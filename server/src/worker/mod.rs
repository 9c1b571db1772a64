//! One worker: one ring, one listener, one connection table, one hub shard, one thread.
//!
//! A loop turn: take completions → take other workers' batches → decode input, bounded per
//! connection → fan the turn's lines out (locally, and one batch to each other worker) → submit
//! gathered sends → deadlines → wait.
//!
//! The worker is split by concern, each file an `impl Worker` block:
//! - [`accept`]: listeners, refusals, running out of fds;
//! - [`input`]: receives, decoding through the connection's codec ([`crate::wire`]), carrying
//!   out what it asks, the fairness budget;
//! - [`membership`]: topics joined and left, routing a published message, `PUBSUB` queries;
//! - [`fanout`]: delivery to local subscribers, batches to other workers, slow consumers;
//! - [`close`]: every connection transition and all the in-flight bookkeeping they rely on;
//! - [`shutdown`]: the shutdown phases and their deadline.

mod accept;
mod close;
mod fanout;
mod input;
mod membership;
mod shutdown;
mod websocket;

use std::collections::{BTreeSet, VecDeque};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringfan_protocol::resp::SessionConfig;
use ringfan_protocol::ws::WsConfig;
use ringfan_ring::{Completion, Driver, Op};
use slab::Slab;

use crate::config::Config;
use crate::conn::Conn;
use crate::hub::{Batch, Shared};
use crate::lifecycle::{CloseReason, ReadEnd};
use crate::metrics::{WorkerMetrics, PUBLISH_INTERVAL};
use crate::stats::{Census, Stats};
use crate::topics::{Message, TopicIndex};
use crate::wire::Input;

pub use accept::ListenFd;
use accept::{Listener, LISTENER_SLOT};
use shutdown::Phase;

/// The longest WebSocket upgrade request accepted (request line and headers).
const WS_HEADER_BYTES_MAX: usize = 8192;

/// Longest the loop sleeps when nothing is due; bounds how late a shutdown flag is noticed if a
/// wake-up were ever lost.
const IDLE_WAIT: Duration = Duration::from_millis(500);

enum AfterFanOut {
    ReadEnd(ReadEnd),
    /// Malformed input: send this reply, then close gracefully.
    ProtocolError(Bytes),
    /// Close gracefully once what is queued is sent (`QUIT`, a WebSocket close handshake).
    End(CloseReason),
    /// Close at once, without sending what is queued (Redis's guard against HTTP requests).
    Drop,
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
    /// Topic -> local subscribers.
    pub(crate) index: TopicIndex,
    /// The lines topic, shared by every line message.
    lines_topic: Bytes,
    /// What every WebSocket connection starts from.
    ws_config: WsConfig,
    /// The settings every RESP connection shares.
    resp_session: Arc<SessionConfig>,
    /// Connections with undecoded input.
    ready: VecDeque<usize>,
    /// Connections with queued bytes and no send in flight.
    dirty: Vec<usize>,
    /// Subscribers over half their queue limit (see `input_stalled`).
    lagging: Vec<(usize, u32)>,
    /// Connections whose recv ended for want of buffers; re-armed when buffers return.
    starved: Vec<(usize, u32)>,
    /// Every connection's deadline, at most one entry each (`Conn::deadline` is its key): the
    /// set never holds more entries than there are live connections, however fast they churn.
    deadlines: BTreeSet<(Instant, usize)>,
    /// Connections whose send failed for want of kernel memory, re-marked for sending at
    /// `send_retry_at`.
    send_backoff: Vec<(usize, u32)>,
    send_retry_at: Option<Instant>,
    /// At shutdown: connections whose FIN is sent, waiting for the peer to acknowledge
    /// everything (then closed without waiting for its FIN).
    awaiting_delivery: Vec<(usize, u32)>,
    next_delivery_check: Instant,
    /// The testing fault this worker injects, if any, and when.
    fault: Option<(crate::config::FaultKind, Instant)>,
    /// This turn's published messages with the slot that sent each.
    batch: Vec<(Arc<Message>, usize)>,
    /// This turn's messages for each other worker (routed when published).
    outgoing: Vec<Vec<Arc<Message>>>,
    /// This turn's messages for the NATS backbone.
    backbone_out: Vec<Arc<Message>>,
    /// What the connection being decoded asked for.
    inputs: Vec<Input>,
    /// Scratch: the members of the topic being delivered.
    members: Vec<usize>,
    /// Scratch: the patterns the message being delivered matches.
    matching: Vec<Bytes>,
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
    /// Counts fan-outs; each starts at a different subscriber (see `fan_out_start`).
    fan_outs: u32,
    /// A subscriber the last fan-out reached, for the latency sample.
    latency_candidate: Option<usize>,
}

impl<D: Driver> Worker<D> {
    pub fn new(
        id: usize,
        cfg: Arc<Config>,
        driver: D,
        shared: Arc<Shared>,
        inbox: Receiver<Batch>,
        listeners: Vec<ListenFd>,
    ) -> Self {
        let fault = cfg
            .fault
            .filter(|f| f.worker == id)
            .map(|f| (f.kind, Instant::now() + f.after));
        let lines_topic = Bytes::from(cfg.lines_topic.clone().into_bytes());
        let outgoing = (0..shared.workers).map(|_| Vec::new()).collect();
        let resp_session = Arc::new(SessionConfig {
            topic_bytes_max: cfg.topic_bytes_max,
            subscriptions_max: cfg.subscriptions_max,
            patterns_max: cfg.patterns_max,
            ..SessionConfig::default()
        });
        let ws_config = WsConfig {
            header_bytes_max: WS_HEADER_BYTES_MAX,
            message_bytes_max: cfg.max_frame_bytes,
            publish: cfg.ws_publish,
            lines_topic: lines_topic.clone(),
        };
        Worker {
            id,
            cfg,
            driver,
            shared,
            inbox,
            listeners: listeners
                .into_iter()
                .map(|l| Listener {
                    fd: Some(l.fd),
                    armed: false,
                    retry_at: None,
                    proto: l.proto,
                    publishers: l.publishers,
                })
                .collect(),
            spare_fd: std::fs::File::open("/dev/null").ok(),
            conns: Slab::new(),
            generations: Vec::new(),
            index: TopicIndex::default(),
            ws_config,
            resp_session,
            lines_topic,
            ready: VecDeque::new(),
            dirty: Vec::new(),
            starved: Vec::new(),
            lagging: Vec::new(),
            deadlines: BTreeSet::new(),
            send_backoff: Vec::new(),
            send_retry_at: None,
            awaiting_delivery: Vec::new(),
            next_delivery_check: Instant::now(),
            fault,
            batch: Vec::new(),
            outgoing,
            backbone_out: Vec::new(),
            inputs: Vec::new(),
            members: Vec::new(),
            matching: Vec::new(),
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
            fan_outs: 0,
            latency_candidate: None,
        }
    }

    /// Publishes this worker's counters to the installed metrics recorder.
    pub fn with_metrics(mut self) -> Self {
        self.metrics = Some(WorkerMetrics::new(self.id));
        self
    }

    /// Runs until shutdown has closed every connection. Returns the worker's counters.
    pub fn run(mut self) -> std::io::Result<Stats> {
        self.start();
        while !self.turn(Instant::now()) {
            self.inject_fault()?;
            let wait = self.wait_time();
            self.driver.submit_and_wait(wait)?;
        }
        self.driver.submit()?;
        self.stats.driver = self.driver.stats();
        Ok(self.stats)
    }

    /// RINGFAN_FAULT: fail this worker on purpose, to test that a failing worker ends the
    /// process promptly instead of hanging it.
    fn inject_fault(&mut self) -> std::io::Result<()> {
        use crate::config::FaultKind;
        match self.fault {
            Some((kind, at)) if Instant::now() >= at => match kind {
                FaultKind::Panic => panic!("RINGFAN_FAULT: worker {} panics on purpose", self.id),
                FaultKind::Error => Err(std::io::Error::other(format!(
                    "RINGFAN_FAULT: worker {} fails on purpose",
                    self.id
                ))),
            },
            _ => Ok(()),
        }
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
        self.expire_shutdown_deadline();
        self.retry_backed_off_sends();
        self.check_delivered();
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
        if let Some(&(t, _)) = self.deadlines.first() {
            due(t);
        }
        if let Some(t) = self.send_retry_at {
            due(t);
        }
        if !self.awaiting_delivery.is_empty() {
            due(self.next_delivery_check);
        }
        if let Some((_, t)) = self.fault {
            due(t);
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
            Op::Cancel => self.conn_on_cancel(slot),
            Op::Accept | Op::Doorbell => unreachable!(),
        }
    }

    fn publish_metrics(&mut self) {
        if let Some(m) = &self.metrics {
            if self.now >= self.next_metrics_publish {
                self.next_metrics_publish = self.now + PUBLISH_INTERVAL;
                self.stats.driver = self.driver.stats();
                m.publish(&self.stats, &self.census());
            }
        }
    }

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

    /// Counts this worker's connections by state.
    fn census(&self) -> Census {
        use crate::lifecycle::{Closing, ReadHalf, WriteHalf};
        let mut n = Census {
            topics: self.index.distinct(),
            ..Census::default()
        };
        for (_, c) in self.conns.iter() {
            n.open += 1;
            n.subscriptions += c.subs.len();
            n.queued_bytes += c.queue_bytes;
            n.largest_queue_bytes = n.largest_queue_bytes.max(c.queue_bytes);
            if c.closing != Closing::No {
                continue;
            }
            match c.write {
                WriteHalf::Draining => n.draining += 1,
                WriteHalf::ShutdownSent => n.shutdown_sent += 1,
                WriteHalf::Ended if c.read == ReadHalf::Open => n.awaiting_fin += 1,
                _ => {}
            }
        }
        n
    }
}
