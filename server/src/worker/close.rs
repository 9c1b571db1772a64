//! A connection's life: every transition is one function here, and so is every change to the
//! in-flight bookkeeping they depend on (recv, send, shutdown, cancels, close).
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

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use ringfan_ring::errno::{self, Outcome};
use ringfan_ring::{Driver, Op, UserData};

use std::sync::atomic::Ordering;

use ringfan_protocol::resp::{self, Kind};

use super::Worker;
use crate::conn::Conn;
use crate::lifecycle::{CloseReason, Closing, ReadEnd, ReadHalf, WriteHalf};
use crate::net;
use crate::topics::Proto;
use crate::wire::Codec;

/// How long a closing connection waits for its cancels before cancelling a survivor again.
const CANCEL_RETRY: Duration = Duration::from_secs(1);
/// Most bytes read and discarded from a connection closed at shutdown after its peer had
/// everything (a peer still flooding us then gets its reset: we stop reading for good).
const DRAIN_BEFORE_CLOSE_BYTES_MAX: usize = 1 << 20;

impl<D: Driver> Worker<D> {
    /// Accepted: start receiving; a line connection joins the lines topic.
    pub(crate) fn conn_open(&mut self, fd: RawFd, proto: Proto) -> usize {
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if self.generations.len() <= slot {
            self.generations.resize(slot + 1, 0);
        }
        let cfg = &self.cfg;
        let codec = match proto {
            Proto::Lines => Codec::lines(cfg.max_frame_bytes),
            Proto::Resp => Codec::resp(
                resp::Limits {
                    bulk_bytes_max: cfg.max_frame_bytes,
                    command_bytes_max: cfg.max_frame_bytes.saturating_mul(2).max(1 << 20),
                },
                &self.resp_session,
                self.shared.next_client_id.fetch_add(1, Ordering::Relaxed),
            ),
            Proto::WebSocket => Codec::ws(&self.ws_config),
        };
        entry.insert(Conn::new(fd, self.generations[slot], codec));
        match proto {
            Proto::Lines => {
                let topic = self.lines_topic.clone();
                self.join(slot, Kind::Channel, &[topic]);
            }
            Proto::WebSocket => {
                let at = self.now + self.cfg.ws_handshake_timeout;
                self.set_deadline(slot, at);
            }
            Proto::Resp => {}
        }
        self.arm_recv(slot);
        slot
    }

    pub(crate) fn arm_recv(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        debug_assert!(!conn.recv_in_flight && conn.read == ReadHalf::Open);
        conn.recv_in_flight = true;
        conn.recv_paused = false;
        let ud = conn.ud(slot, Op::Recv);
        self.driver.recv_multi(conn.fd, ud);
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
        self.leave_all(slot);
        self.ws_goodbye(slot, reason);
        self.stats.unsubscribed[reason as usize] += 1;
        match deadline {
            Some(deadline) => self.set_deadline(slot, deadline),
            // A WebSocket's ping deadline must not outlive its subscription.
            None => self.clear_deadline(slot),
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
    pub(crate) fn conn_flush_or_shut(&mut self, slot: usize) {
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
    pub(crate) fn conn_submit_shutdown(&mut self, slot: usize) {
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
            let reason = match errno::shutdown(-result) {
                // The peer reset before our FIN left. Nothing to wait for.
                Outcome::PeerGone => CloseReason::PeerReset,
                _ => {
                    self.log_unexpected(Op::Shutdown, -result);
                    CloseReason::IoError
                }
            };
            return self.conn_abort(slot, reason);
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
                let reason = match errno::recv(errno) {
                    Outcome::PeerGone => CloseReason::PeerReset,
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
        if sent > 0 {
            self.resume_held_input(slot);
        }
        if result < 0 {
            return match errno::send(-result) {
                // Retrying at once would spin on the same shortage: after a back-off.
                Outcome::Retry => {
                    self.stats.send_retries += 1;
                    self.retry_send_later(slot)
                }
                Outcome::PeerGone => self.conn_abort(slot, CloseReason::PeerReset),
                _ => {
                    self.log_unexpected(Op::Send, -result);
                    self.conn_abort(slot, CloseReason::IoError)
                }
            };
        }
        let conn = &self.conns[slot];
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
            self.leave_all(slot);
        }
        let conn = &mut self.conns[slot];
        conn.write = WriteHalf::Ended;
        self.stats.aborted += 1;
        self.discard_pending(slot);
        self.conn_begin_close(slot);
    }

    /// Both halves ended: cancel what is in flight, then close.
    pub(crate) fn conn_begin_close(&mut self, slot: usize) {
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
    pub(crate) fn conn_cancel_all(&mut self, slot: usize) {
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
        // The descriptor is released whatever close says; only what is not in its table is news.
        if result < 0 && errno::close(-result) != Outcome::Retry {
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
            // Only WebSocket connections have a deadline while subscribed.
            Closing::No if conn.write == WriteHalf::Subscribed => self.ws_on_deadline(slot),
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

    /// Sets (or moves) the connection's one deadline.
    pub(crate) fn set_deadline(&mut self, slot: usize, at: Instant) {
        self.clear_deadline(slot);
        self.conns[slot].deadline = Some(at);
        self.deadlines.insert((at, slot));
    }

    pub(crate) fn clear_deadline(&mut self, slot: usize) {
        if let Some(at) = self.conns[slot].deadline.take() {
            let removed = self.deadlines.remove(&(at, slot));
            assert!(
                removed,
                "a connection's deadline was missing from the deadline set"
            );
        }
    }

    /// Connections in the deadline set, for bound checks.
    #[cfg(test)]
    pub(crate) fn deadlines_len(&self) -> usize {
        self.deadlines.len()
    }

    pub(crate) fn expire_deadlines(&mut self) {
        while let Some(&(at, slot)) = self.deadlines.first() {
            if at > self.now {
                break;
            }
            assert_eq!(
                self.conns[slot].deadline,
                Some(at),
                "deadline set out of step"
            );
            self.clear_deadline(slot);
            self.conn_on_deadline(slot);
        }
    }

    /// A cancel of ours completed (whatever it found): one fewer in flight.
    pub(crate) fn conn_on_cancel(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        conn.cancels_in_flight = conn
            .cancels_in_flight
            .checked_sub(1)
            .expect("a cancel completed that this connection never submitted");
        self.conn_try_close(slot);
    }

    /// A publisher far ahead of its input budget: its recv is cancelled until it is caught up,
    /// so it cannot hold every provided buffer. Re-armed by `maybe_arm_recv`.
    pub(crate) fn conn_pause_recv(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        assert!(conn.recv_in_flight && !conn.recv_paused);
        conn.recv_paused = true;
        conn.cancels_in_flight = conn
            .cancels_in_flight
            .checked_add(1)
            .expect("cancels in flight overflow");
        let target = conn.ud(slot, Op::Recv);
        let ud = conn.ud(slot, Op::Cancel);
        self.driver.cancel(target, ud);
        self.stats.recv_paused += 1;
    }

    /// The multishot recv posted its final completion: no recv in flight any more.
    pub(crate) fn conn_on_recv_final(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        assert!(
            conn.recv_in_flight,
            "a final recv completion with no recv in flight"
        );
        conn.recv_in_flight = false;
    }

    /// Sends what is queued (up to IOV_MAX messages) in one gathered send; one in flight at most.
    pub(crate) fn conn_submit_send(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        assert!(
            !conn.send_in_flight,
            "a second send in flight would interleave bytes"
        );
        assert!(conn.closing == Closing::No);
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
}
