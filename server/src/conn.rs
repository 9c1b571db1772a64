//! One connection's state and its close state machine. Every transition is one function here.
//!
//! Both halves of the TCP connection are tracked:
//!
//! ```text
//! read half:   Open ──(zero-length recv: peer FIN)──────────────▶ Ended
//!                   ╰─(reset / fatal error / deadline: abort)──▶ Ended
//! write half:  Subscribed ─▶ Draining ─▶ ShutdownSent ─▶ Ended
//!              (unsubscribe)  (queue      (SHUT_WR
//!                              flushed)    completed)
//! ```
//!
//! The subscription drops (Subscribed → Draining) on the peer's FIN, on eviction (queue over its
//! limit, protocol error) or at server shutdown. A draining connection gets no new messages; it
//! flushes what was queued, then submits SHUT_WR. Once both halves have ended the connection is
//! closed: every operation still in flight is cancelled and its final completion awaited first,
//! because `close` while a recv holds the file sends no FIN at all. Only after the close completes
//! is the slot freed and its generation bumped, so a late completion is recognised as stale.
//!
//! Every connection that leaves Subscribed gets a deadline (`RINGFAN_CLOSE_TIMEOUT_MS`): a peer
//! that stops reading (flush stalls) or never sends its FIN (we would sit in FIN_WAIT2, which has
//! no kernel timer while we hold the socket) is closed abortively: SO_LINGER 0, RST.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::LineDecoder;
use ring::{Driver, Op, UserData};

use crate::net;
use crate::worker::Worker;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadHalf {
    Open,
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteHalf {
    Subscribed,
    Draining,
    ShutdownSent,
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    No,
    /// Both halves ended; waiting for in-flight operations to finish (cancelled).
    Cancelling,
    /// `close` submitted; the slot is freed on its completion.
    CloseSubmitted,
}

/// Why a connection ended (the first cause wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    PeerFin,
    PeerReset,
    EvictedSlow,
    ProtocolError,
    CloseTimeout,
    Shutdown,
    IoError,
}

impl CloseReason {
    pub const ALL: [CloseReason; 7] = [
        CloseReason::PeerFin,
        CloseReason::PeerReset,
        CloseReason::EvictedSlow,
        CloseReason::ProtocolError,
        CloseReason::CloseTimeout,
        CloseReason::Shutdown,
        CloseReason::IoError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerFin => "peer_fin",
            CloseReason::PeerReset => "peer_reset",
            CloseReason::EvictedSlow => "evicted_slow",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::CloseTimeout => "close_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IoError => "io_error",
        }
    }
}

/// How the read half ended, remembered until the data received before it has been processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    Fin,
    Error(i32),
}

/// The kernel-facing part of a send. Boxed: the kernel holds a pointer to `msg` while the send is
/// in flight, and the connection table may move connections when it grows.
pub struct SendState {
    pub msg: libc::msghdr,
    pub iov: Vec<libc::iovec>,
}

/// Most iovecs gathered into one `sendmsg` (the kernel's UIO_MAXIOV is 1024).
pub const IOV_MAX: usize = 1024;

/// How long a closing connection waits for its cancels before cancelling a survivor again.
const CANCEL_RETRY: Duration = Duration::from_secs(1);
/// Most bytes read and discarded from a connection closed at shutdown after its peer had
/// everything (a peer still flooding us then gets its reset: we stop reading for good).
const DRAIN_BEFORE_CLOSE_BYTES_MAX: usize = 1 << 20;

pub struct Conn {
    pub fd: RawFd,
    pub generation: u32,
    pub read: ReadHalf,
    pub write: WriteHalf,
    pub closing: Closing,
    pub reason: Option<CloseReason>,

    pub recv_in_flight: bool,
    pub send_in_flight: bool,
    pub shutdown_in_flight: bool,
    pub cancels_in_flight: u8,
    pub close_in_flight: bool,
    /// The recv was cancelled on purpose to stop taking input (backpressure); re-armed later.
    pub recv_paused: bool,
    /// Closed by us once the peer had everything (shutdown): read what it sent since, so the
    /// close ends with a FIN, not a reset.
    pub drain_before_close: bool,

    /// Messages to send, oldest first. The front `head_sent` bytes of the first are already sent.
    pub queue: VecDeque<Bytes>,
    pub head_sent: usize,
    /// Unsent bytes in `queue`.
    pub queue_bytes: usize,
    /// Bytes handed to the in-flight send.
    pub send_bytes: usize,
    pub send: Option<Box<SendState>>,
    /// Bytes ever queued / ever sent: a fan-out latency sample completes when `sent_total`
    /// reaches the `queued_total` noted with it.
    pub queued_total: u64,
    pub sent_total: u64,
    pub latency_probe: Option<(u64, Instant)>,
    /// When the queue went over half its limit (None while under).
    pub lagging_since: Option<Instant>,
    /// When a send last moved bytes.
    pub last_send_progress: Option<Instant>,
    /// When the queue last drained (a send progressed, or it went from empty to non-empty):
    /// the slow-consumer timeout runs from here.
    pub progress_at: Option<Instant>,
    /// Lines dropped for this subscriber under the drop policy.
    pub dropped_messages: u64,
    /// Accepted on a listener whose connections may publish.
    pub may_publish: bool,

    pub decoder: LineDecoder,
    /// Received buffers not yet decoded (fairness: bounded work per connection per loop turn).
    pub pending: VecDeque<(u16, u32)>,
    pub pending_bytes: usize,
    pub read_end: Option<ReadEnd>,

    pub deadline: Option<Instant>,
    /// Position in the worker's subscriber list while Subscribed.
    pub sub_index: usize,
    pub in_ready: bool,
    pub in_dirty: bool,
}

impl Conn {
    pub fn new(fd: RawFd, generation: u32, max_frame_bytes: usize) -> Self {
        Conn {
            fd,
            generation,
            read: ReadHalf::Open,
            write: WriteHalf::Subscribed,
            closing: Closing::No,
            reason: None,
            recv_in_flight: false,
            send_in_flight: false,
            shutdown_in_flight: false,
            cancels_in_flight: 0,
            close_in_flight: false,
            recv_paused: false,
            drain_before_close: false,
            queue: VecDeque::new(),
            head_sent: 0,
            queue_bytes: 0,
            send_bytes: 0,
            send: None,
            queued_total: 0,
            sent_total: 0,
            latency_probe: None,
            lagging_since: None,
            last_send_progress: None,
            progress_at: None,
            dropped_messages: 0,
            may_publish: true,
            decoder: LineDecoder::new(max_frame_bytes),
            pending: VecDeque::new(),
            pending_bytes: 0,
            read_end: None,
            deadline: None,
            sub_index: usize::MAX,
            in_ready: false,
            in_dirty: false,
        }
    }

    pub fn ud(&self, slot: usize, op: Op) -> UserData {
        UserData::new(slot as u32, self.generation, op)
    }

    pub fn ops_in_flight(&self) -> bool {
        self.recv_in_flight
            || self.send_in_flight
            || self.shutdown_in_flight
            || self.cancels_in_flight > 0
            || self.close_in_flight
    }

    /// True while received lines are decoded and published.
    pub fn takes_input(&self) -> bool {
        self.may_publish
            && self.write == WriteHalf::Subscribed
            && self.read == ReadHalf::Open
            && !self.decoder.failed()
    }

    fn set_reason(&mut self, reason: CloseReason) {
        self.reason.get_or_insert(reason);
    }
}

impl<D: Driver> Worker<D> {
    /// Accepted: subscribe and start receiving.
    pub(crate) fn conn_open(&mut self, fd: RawFd) -> usize {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if self.generations.len() <= slot {
            self.generations.resize(slot + 1, 0);
        }
        let conn = Conn::new(fd, self.generations[slot], self.cfg.max_frame_bytes);
        entry.insert(conn);
        self.conns[slot].sub_index = self.subscribers.len();
        self.subscribers.push(slot);
        self.arm_recv(slot);
        slot
    }

    /// Subscribed → Draining: stop delivering, flush what is queued, then SHUT_WR.
    pub(crate) fn conn_unsubscribe(&mut self, slot: usize, reason: CloseReason) {
        // At shutdown the whole shutdown has one deadline (RINGFAN_SHUTDOWN_TIMEOUT_MS, kept by
        // the worker); a shorter per-connection close timeout must not cut it short.
        let deadline = (reason != CloseReason::Shutdown).then(|| self.now + self.cfg.close_timeout);
        let conn = &mut self.conns[slot];
        assert_eq!(
            conn.write,
            WriteHalf::Subscribed,
            "unsubscribe of a connection not subscribed"
        );
        conn.set_reason(reason);
        conn.write = WriteHalf::Draining;
        self.remove_subscriber(slot);
        self.stats.unsubscribed[reason as usize] += 1;
        if let Some(deadline) = deadline {
            self.set_deadline(slot, deadline);
        }
        let end = self.discard_pending(slot);
        self.conn_flush_or_shut(slot);
        match end {
            // The FIN was waiting behind input we no longer publish: the read half has ended.
            Some(ReadEnd::Fin) => self.conns[slot].read = ReadHalf::Ended,
            Some(end @ ReadEnd::Error(_)) => self.conn_on_read_end(slot, end),
            None => {}
        }
    }

    /// Draining: send what is queued, or SHUT_WR once nothing is.
    fn conn_flush_or_shut(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        debug_assert_eq!(conn.write, WriteHalf::Draining);
        if conn.send_in_flight {
            return; // its completion calls back here
        }
        if conn.queue_bytes > 0 {
            self.mark_dirty(slot);
        } else {
            self.conn_submit_shutdown(slot);
        }
    }

    /// Draining with an empty queue → ShutdownSent.
    fn conn_submit_shutdown(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        assert_eq!(conn.write, WriteHalf::Draining);
        assert!(
            !conn.send_in_flight && conn.queue_bytes == 0,
            "SHUT_WR before the flush finished"
        );
        conn.write = WriteHalf::ShutdownSent;
        conn.shutdown_in_flight = true;
        let ud = conn.ud(slot, Op::Shutdown);
        self.driver.shutdown_write(conn.fd, ud);
    }

    /// SHUT_WR completed → write half Ended; close once the read half has ended too.
    pub(crate) fn conn_on_shutdown(&mut self, slot: usize, result: i32) {
        let conn = &mut self.conns[slot];
        assert!(conn.shutdown_in_flight);
        conn.shutdown_in_flight = false;
        if conn.closing != Closing::No {
            return self.conn_try_close(slot);
        }
        assert_eq!(conn.write, WriteHalf::ShutdownSent);
        conn.write = WriteHalf::Ended;
        if result < 0 {
            // ENOTCONN: the peer reset before our FIN left. Nothing to wait for.
            return self.conn_abort(slot, CloseReason::PeerReset);
        }
        if conn.read == ReadHalf::Ended {
            self.conn_begin_close(slot);
        } else if self.shutting_down() {
            // At shutdown the peer's FIN is not needed: once it has acknowledged every byte and
            // our FIN, it has everything, and the connection is closed (see `conn_on_delivered`).
            self.await_delivery(slot);
        }
    }

    /// Shutting down, write half ended, and the peer acknowledged every byte and our FIN: it has
    /// received everything, so its own FIN is not waited for. The read half is ended from our
    /// side and the connection closed gracefully: what the peer sent meanwhile is read and
    /// discarded first, because `close` with unread data sends a reset instead of leaving the
    /// socket to finish with a FIN.
    pub(crate) fn conn_on_delivered(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        assert_eq!(
            conn.write,
            WriteHalf::Ended,
            "delivered before SHUT_WR completed"
        );
        if conn.closing != Closing::No || conn.read != ReadHalf::Open {
            return;
        }
        conn.read = ReadHalf::Ended;
        conn.drain_before_close = true;
        self.stats.shutdown_delivered += 1;
        self.discard_pending(slot);
        self.conn_begin_close(slot);
    }

    /// The read half ended (after everything received before it was processed).
    pub(crate) fn conn_on_read_end(&mut self, slot: usize, end: ReadEnd) {
        let conn = &mut self.conns[slot];
        if conn.closing != Closing::No {
            return;
        }
        match end {
            ReadEnd::Fin => {
                conn.read = ReadHalf::Ended;
                match conn.write {
                    // Peer first: no more deliveries; flush, SHUT_WR, close. Until then the socket
                    // is in CLOSE_WAIT, bounded by the flush and the close deadline.
                    WriteHalf::Subscribed => self.conn_unsubscribe(slot, CloseReason::PeerFin),
                    WriteHalf::Draining | WriteHalf::ShutdownSent => {}
                    WriteHalf::Ended => self.conn_begin_close(slot),
                }
            }
            ReadEnd::Error(errno) => {
                let reason = match errno {
                    libc::ECONNRESET | libc::EPIPE | libc::ETIMEDOUT | libc::EHOSTUNREACH => {
                        CloseReason::PeerReset
                    }
                    _ => {
                        self.log_unexpected(Op::Recv, errno);
                        CloseReason::IoError
                    }
                };
                self.conn_abort(slot, reason);
            }
        }
    }

    /// A send completed: advance the queue by what was sent; go on flushing or SHUT_WR.
    pub(crate) fn conn_on_send(&mut self, slot: usize, result: i32) {
        let conn = &mut self.conns[slot];
        assert!(conn.send_in_flight);
        conn.send_in_flight = false;
        let sent = if result > 0 { result as usize } else { 0 };
        assert!(
            sent <= conn.send_bytes,
            "a send reported more bytes than it was given"
        );
        conn.send_bytes = 0;
        self.stats.bytes_out += sent as u64;
        conn.advance(sent);
        conn.sent_total += sent as u64;
        if sent > 0 {
            conn.last_send_progress = Some(self.now);
            conn.progress_at = Some(self.now);
        }
        if let Some((target, at)) = conn.latency_probe {
            if conn.sent_total >= target {
                conn.latency_probe = None;
                if let Some(m) = &self.metrics {
                    m.latency
                        .record(self.now.saturating_duration_since(at).as_secs_f64());
                }
            }
        }
        if conn.closing != Closing::No {
            return self.conn_try_close(slot);
        }
        if result < 0 {
            return match -result {
                // Transient: the kernel is short of memory (or the send was interrupted). Retrying
                // at once would spin on the same shortage: try again after a back-off.
                libc::EINTR | libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM => {
                    self.stats.send_retries += 1;
                    self.retry_send_later(slot)
                }
                libc::ECONNRESET | libc::EPIPE | libc::ETIMEDOUT => {
                    self.conn_abort(slot, CloseReason::PeerReset)
                }
                errno => {
                    self.log_unexpected(Op::Send, errno);
                    self.conn_abort(slot, CloseReason::IoError)
                }
            };
        }
        match conn.write {
            WriteHalf::Subscribed if conn.queue_bytes > 0 => self.mark_dirty(slot),
            WriteHalf::Subscribed => {}
            WriteHalf::Draining => self.conn_flush_or_shut(slot),
            WriteHalf::ShutdownSent | WriteHalf::Ended => {
                unreachable!("a send completed after SHUT_WR was submitted")
            }
        }
    }

    /// Reset, fatal error or deadline: end both halves now, close with RST.
    pub(crate) fn conn_abort(&mut self, slot: usize, reason: CloseReason) {
        let conn = &mut self.conns[slot];
        if conn.closing != Closing::No {
            return;
        }
        conn.set_reason(reason);
        // Abortive close: RST instead of FIN, no TIME_WAIT or FIN_WAIT2 left behind. Fails only if
        // the socket is already gone, which is what we want anyway.
        let _ = net::set_linger_zero(conn.fd);
        conn.read = ReadHalf::Ended;
        if conn.write == WriteHalf::Subscribed {
            self.remove_subscriber(slot);
        }
        let conn = &mut self.conns[slot];
        conn.write = WriteHalf::Ended;
        self.stats.aborted += 1;
        self.discard_pending(slot);
        self.conn_begin_close(slot);
    }

    /// Both halves ended: cancel what is in flight, then close.
    fn conn_begin_close(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        assert!(
            conn.read == ReadHalf::Ended && conn.write == WriteHalf::Ended,
            "close with a half open"
        );
        assert_eq!(conn.closing, Closing::No);
        conn.closing = Closing::Cancelling;
        self.clear_deadline(slot);
        let conn = &self.conns[slot];
        if conn.recv_in_flight || conn.send_in_flight || conn.shutdown_in_flight {
            self.conn_cancel_all(slot);
        }
        self.conn_try_close(slot);
    }

    /// Cancels every operation in flight on the connection, each by its own user_data.
    ///
    /// Not by fd: io_uring finds a cancel-by-fd target by walking every armed poll of the ring,
    /// so when thousands of connections close at once (a load generator exiting) that is
    /// quadratic, and the cancels themselves outlast their deadline. A cancel by user_data is a
    /// hash lookup.
    fn conn_cancel_all(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        let cancel = conn.ud(slot, Op::Cancel);
        let targets = [
            (conn.recv_in_flight, Op::Recv),
            (conn.send_in_flight, Op::Send),
            (conn.shutdown_in_flight, Op::Shutdown),
        ]
        .map(|(in_flight, op)| in_flight.then(|| conn.ud(slot, op)));
        let count = targets.iter().flatten().count() as u8;
        conn.cancels_in_flight = conn
            .cancels_in_flight
            .checked_add(count)
            .expect("cancels in flight overflow: a cancel was submitted twice without completing");
        for target in targets.into_iter().flatten() {
            self.driver.cancel(target, cancel);
        }
        // If something survives the cancel (it was already running), the deadline cancels again.
        self.set_deadline(slot, self.now + CANCEL_RETRY);
    }

    /// Cancelling and nothing in flight → CloseSubmitted.
    pub(crate) fn conn_try_close(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.closing != Closing::Cancelling || conn.ops_in_flight() {
            return;
        }
        conn.closing = Closing::CloseSubmitted;
        conn.close_in_flight = true;
        if conn.drain_before_close {
            // Nothing of ours is in flight on it any more, so a plain read cannot race one.
            let fd = conn.fd;
            self.stats.bytes_discarded +=
                self.driver.discard_unread(fd, DRAIN_BEFORE_CLOSE_BYTES_MAX) as u64;
        }
        let conn = &mut self.conns[slot];
        let ud = conn.ud(slot, Op::Close);
        self.driver.close(conn.fd, ud);
    }

    /// Close completed: free the slot; the generation bump makes every later completion for it
    /// stale.
    pub(crate) fn conn_on_close(&mut self, slot: usize, result: i32) {
        self.clear_deadline(slot);
        let conn = self.conns.remove(slot);
        assert_eq!(conn.closing, Closing::CloseSubmitted);
        assert!(conn.close_in_flight);
        assert!(
            !conn.recv_in_flight
                && !conn.send_in_flight
                && !conn.shutdown_in_flight
                && conn.cancels_in_flight == 0
        );
        assert!(
            conn.pending.is_empty(),
            "provided buffers leaked by a closed connection"
        );
        if result < 0 {
            self.log_unexpected(Op::Close, -result);
        }
        self.generations[slot] = UserData::next_generation(self.generations[slot]);
        self.shared.release();
        let reason = conn.reason.unwrap_or(CloseReason::IoError);
        self.stats.closed[reason as usize] += 1;
        self.stats.lost_bytes += conn.queue_bytes as u64;
    }

    /// A deadline passed: the flush or the peer's FIN did not come in time.
    pub(crate) fn conn_on_deadline(&mut self, slot: usize) {
        let conn = &self.conns[slot];
        debug_assert!(
            conn.deadline.is_none(),
            "the worker clears a deadline before it fires"
        );
        match conn.closing {
            Closing::No => {
                self.stats.close_timeouts += 1;
                self.conn_abort(slot, CloseReason::CloseTimeout)
            }
            // Cancels still on their way: wait for them, never pile more on top.
            Closing::Cancelling if conn.cancels_in_flight > 0 => {
                self.set_deadline(slot, self.now + CANCEL_RETRY)
            }
            // An operation outlived its cancel: cancel again.
            Closing::Cancelling if conn.ops_in_flight() => self.conn_cancel_all(slot),
            Closing::Cancelling | Closing::CloseSubmitted => {}
        }
    }

    /// The queue grew past its limit or a protocol error: evict through the close state machine.
    pub(crate) fn conn_evict(&mut self, slot: usize, reason: CloseReason) {
        if self.conns[slot].write == WriteHalf::Subscribed {
            self.conn_unsubscribe(slot, reason);
        }
    }
}

impl Conn {
    /// Drops `sent` bytes from the front of the queue.
    pub fn advance(&mut self, mut sent: usize) {
        self.queue_bytes = self
            .queue_bytes
            .checked_sub(sent)
            .expect("a send reported more bytes than were queued");
        while sent > 0 {
            let front_left = self.queue[0].len() - self.head_sent;
            if sent >= front_left {
                sent -= front_left;
                self.queue.pop_front();
                self.head_sent = 0;
            } else {
                self.head_sent += sent;
                sent = 0;
            }
        }
    }

    /// Fills the send state's iovecs from the queue; returns the msghdr and the bytes it covers.
    pub fn prepare_send(&mut self) -> (*const libc::msghdr, usize) {
        let state = self.send.get_or_insert_with(|| {
            Box::new(SendState {
                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                msg: unsafe { std::mem::zeroed() },
                iov: Vec::new(),
            })
        });
        state.iov.clear();
        let mut bytes = 0;
        for (i, b) in self.queue.iter().enumerate().take(IOV_MAX) {
            let skip = if i == 0 { self.head_sent } else { 0 };
            let part = &b[skip..];
            state.iov.push(libc::iovec {
                iov_base: part.as_ptr() as *mut _,
                iov_len: part.len(),
            });
            bytes += part.len();
        }
        state.msg.msg_iov = state.iov.as_mut_ptr();
        state.msg.msg_iovlen = state.iov.len() as _;
        (&state.msg as *const libc::msghdr, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_with(msgs: &[&'static [u8]]) -> Conn {
        let mut c = Conn::new(-1, 0, 1024);
        for m in msgs {
            c.queue.push_back(Bytes::from_static(m));
            c.queue_bytes += m.len();
        }
        c
    }

    #[test]
    fn advance_handles_partial_and_whole_messages() {
        let mut c = conn_with(&[b"abc", b"de", b"fghij"]);
        c.advance(4);
        assert_eq!(c.queue.len(), 2);
        assert_eq!(c.head_sent, 1);
        assert_eq!(c.queue_bytes, 6);
        let (_, bytes) = c.prepare_send();
        assert_eq!(bytes, 6);
        let iov = &c.send.as_ref().unwrap().iov;
        // SAFETY: the iovec points into the queued static bytes.
        let first =
            unsafe { std::slice::from_raw_parts(iov[0].iov_base as *const u8, iov[0].iov_len) };
        assert_eq!(first, b"e");
        c.advance(6);
        assert!(c.queue.is_empty());
        assert_eq!((c.head_sent, c.queue_bytes), (0, 0));
    }

    #[test]
    fn prepare_send_caps_iovecs() {
        let mut c = Conn::new(-1, 0, 1024);
        for _ in 0..(IOV_MAX + 10) {
            c.queue.push_back(Bytes::from_static(b"x\n"));
            c.queue_bytes += 2;
        }
        let (msg, bytes) = c.prepare_send();
        assert_eq!(bytes, IOV_MAX * 2);
        // SAFETY: msg points into c.send, alive here.
        assert_eq!(unsafe { (*msg).msg_iovlen }, IOV_MAX);
    }

    #[test]
    fn close_reason_names_are_unique() {
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CloseReason::ALL.len());
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
