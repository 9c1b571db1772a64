//! Input: receives into provided buffers, decoding bounded per connection and per turn, and
//! flow control (a lagging subscriber holds input back).

use std::time::Duration;

use ringfan_ring::errno::{self, Outcome};
use ringfan_ring::{Completion, Driver};

use super::shutdown::Phase;
use super::{AfterFanOut, Worker};
use crate::lifecycle::{Closing, ReadEnd, ReadHalf, WriteHalf};

/// A lagging subscriber holds input back only while its sends progressed within this window...
const STALL_PROGRESS_WINDOW: Duration = Duration::from_millis(500);
/// ...and for at most this long per episode over half its queue limit.
const STALL_MAX: Duration = Duration::from_millis(5000);

impl<D: Driver> Worker<D> {
    pub(crate) fn on_recv(&mut self, slot: usize, c: Completion) {
        if !c.more {
            self.conn_on_recv_final(slot);
        }
        let conn = &mut self.conns[slot];
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
                    self.conn_pause_recv(slot);
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
            r => match errno::recv(-r) {
                Outcome::NoBuffers => {
                    self.stats.recv_enobufs += 1;
                    self.starved.push((slot, conn.generation));
                    return;
                }
                // Cancelled to pause input, or interrupted: re-armed below when due.
                Outcome::Cancelled | Outcome::Retry => None,
                _ => Some(ReadEnd::Error(-r)),
            },
        };
        match end {
            Some(end) if !conn.pending.is_empty() => conn.read_end = Some(end),
            Some(end) => self.conn_on_read_end(slot, end),
            None => self.maybe_arm_recv(slot),
        }
    }

    /// Re-arms the recv if the read half is open and the connection is not over its input budget.
    pub(crate) fn maybe_arm_recv(&mut self, slot: usize) {
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

    pub(crate) fn rearm_starved(&mut self) {
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

    /// Decodes pending input, at most `read_budget_bytes` per connection per turn.
    /// With `force`, other workers' backlog is ignored (shutdown publishes everything received).
    pub(crate) fn decode_ready(&mut self, budget: usize, force: bool) {
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
                conn.pending_bytes = conn
                    .pending_bytes
                    .checked_sub(len as usize)
                    .expect("pending input counted short");
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

    /// Flow control: true while some subscriber is over a quarter of its queue limit *and* draining it
    /// (a send made progress lately). Then this worker takes no new input (its publishers feel
    /// TCP backpressure) and leaves its inbox alone (so other workers' publishers stall too),
    /// instead of queueing past the limit and evicting a subscriber that is merely behind. A
    /// subscriber that makes no progress, or has been over for longer than [`STALL_MAX`], does
    /// not hold anyone back: it goes on to its limit and is evicted. (A quarter, plus at most an
    /// eighth from the inbox and an eighth of local input when the stall lifts, stays well under
    /// the limit.)
    pub(crate) fn input_stalled(&mut self) -> bool {
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
}
