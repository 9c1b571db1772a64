//! Input: receives into provided buffers, decoding bounded per connection and per turn through
//! the connection's codec, carrying out what it asks for, and flow control (a lagging
//! subscriber holds input back; so does a client's own reply backlog).

use std::time::Duration;

use bytes::Bytes;
use ringfan_protocol::resp::{encode, Action, Kind};
use ringfan_ring::errno::{self, Outcome};
use ringfan_ring::{Completion, Driver};

use super::shutdown::Phase;
use super::{AfterFanOut, Worker};
use crate::lifecycle::{CloseReason, Closing, ReadEnd, ReadHalf, WriteHalf};
use crate::topics::{Body, Message, Proto};
use crate::wire::Input;

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
                if self.replies_backlogged(slot) && !force {
                    // Its replies wait unsent: read no more of its commands until they drain.
                    self.conns[slot].input_held = true;
                    break;
                }
                let conn = &mut self.conns[slot];
                let Some((id, len)) = conn.pending.pop_front() else {
                    break;
                };
                conn.pending_bytes = conn
                    .pending_bytes
                    .checked_sub(len as usize)
                    .expect("pending input counted short");
                taken += len as usize;
                turn_left = turn_left.saturating_sub(len as usize);
                self.decode_one(slot, id, len as usize);
                if !self.conns[slot].takes_input() {
                    break;
                }
            }
            let conn = &mut self.conns[slot];
            if conn.pending.is_empty() && conn.pending.capacity() > 0 {
                // An idle connection keeps no input queue.
                conn.pending = Default::default();
            }
            if conn.input_held || conn.write != WriteHalf::Subscribed {
                // Held: resumed when its queue drains. Ended: whatever is pending was discarded.
            } else if !conn.pending.is_empty() && conn.takes_input() {
                conn.in_ready = true;
                self.ready.push_back(slot);
            } else if let Some(end) = conn.read_end.take() {
                self.after_fan_out.push((slot, AfterFanOut::ReadEnd(end)));
            } else {
                self.maybe_arm_recv(slot);
            }
        }
    }

    /// Decodes one received buffer of `slot` and carries out what it asks for.
    fn decode_one(&mut self, slot: usize, id: u16, len: usize) {
        let mut inputs = std::mem::take(&mut self.inputs);
        {
            let index = &self.index;
            let max = self.cfg.topics_max;
            let refused = &mut self.stats.topics_refused;
            // Topics admitted by earlier commands of this buffer, not yet in the index.
            let mut admitted = 0;
            let mut admit = |kind: Kind, new: &[&Bytes]| {
                let fresh = new.iter().filter(|t| !index.contains(kind, t)).count();
                if fresh > 0 && index.distinct() + admitted + fresh > max {
                    *refused += 1;
                    let text = format!(
                        "too many channels and patterns on this server: at most {max} per worker (RINGFAN_TOPICS_MAX)"
                    );
                    return Err(encode::error(text.as_bytes()));
                }
                admitted += fresh;
                Ok(())
            };
            let input = self.driver.buffer(id, len);
            self.conns[slot]
                .codec
                .decode(input, &mut inputs, &mut admit);
        }
        self.driver.recycle(id);
        for input in inputs.drain(..) {
            // A fan-out run by an earlier command of this buffer (a subscriber's own PUBLISH, a
            // (un)subscribe delivering the turn's batch first) may have evicted the connection:
            // what it sent after that is not carried out, as Redis stops reading a client it is
            // closing. Its session ran ahead of the worker: an UNSUBSCRIBE here would leave a
            // topic the eviction already left, a SUBSCRIBE join one for a connection that will
            // never leave it again.
            if self.conns[slot].write != WriteHalf::Subscribed {
                break;
            }
            self.apply_input(slot, input);
        }
        self.inputs = inputs;
    }

    /// Carries out one thing a connection's input asked for.
    fn apply_input(&mut self, slot: usize, input: Input) {
        match input {
            Input::Lines(chunk) => {
                self.stats.messages_in += chunk.count as u64;
                let topic = self.lines_topic.clone();
                self.publish(Message::new(Kind::Channel, topic, Body::Lines(chunk)), slot);
            }
            Input::Error(reply) => {
                self.stats.protocol_errors += 1;
                self.after_fan_out
                    .push((slot, AfterFanOut::ProtocolError(reply)));
            }
            Input::Resp(action) => self.apply_action(slot, action),
            Input::Ws(input) => self.apply_ws(slot, input),
        }
    }

    fn apply_action(&mut self, slot: usize, action: Action) {
        match action {
            Action::Reply(reply) => {
                self.stats.commands += 1;
                self.queue_reply(slot, reply);
            }
            Action::Subscribe { kind, topics } => self.join(slot, kind, &topics),
            Action::Unsubscribe { kind, topics } => self.leave(slot, kind, &topics),
            Action::Publish {
                kind,
                channel,
                message,
            } => {
                self.stats.commands += 1;
                self.stats.messages_in += 1;
                let n = self.publish(Message::new(kind, channel, Body::Payload(message)), slot);
                if !self.conns[slot].subs.is_empty() {
                    // A subscriber publishing (RESP3): Redis writes the message to its
                    // subscribers, the publisher among them, before the reply.
                    self.fan_out_batch();
                }
                self.queue_reply(slot, encode::integer(n as i64));
            }
            Action::Query(query) => {
                self.stats.commands += 1;
                let reply = self.query(&query);
                self.queue_reply(slot, reply);
            }
            Action::Close => self
                .after_fan_out
                .push((slot, AfterFanOut::End(CloseReason::ClientClose))),
            Action::Drop => self.after_fan_out.push((slot, AfterFanOut::Drop)),
        }
    }

    /// Queues a reply to the connection's own command: never refused, never dropped (its
    /// input is held instead while replies wait, see `replies_backlogged`).
    pub(crate) fn queue_reply(&mut self, slot: usize, reply: Bytes) {
        if self.conns[slot].write == WriteHalf::Subscribed {
            self.queue_own(slot, reply);
        }
    }

    /// Queues bytes of the connection's own (a reply, a control frame) after what is queued:
    /// outside the slow-consumer limit and policy, which are for deliveries.
    pub(crate) fn queue_own(&mut self, slot: usize, bytes: Bytes) {
        let conn = &mut self.conns[slot];
        if conn.queue_bytes == 0 {
            conn.progress_at = Some(self.now);
        }
        conn.queue_bytes += bytes.len();
        conn.queued_total += bytes.len() as u64;
        conn.queue.push_back(bytes);
        self.mark_dirty(slot);
    }

    /// True when a RESP connection has more queued than half its limit: its next commands
    /// wait, so a client that pipelines commands and never reads replies is held back by TCP
    /// instead of growing its queue without bound.
    fn replies_backlogged(&self, slot: usize) -> bool {
        let conn = &self.conns[slot];
        conn.codec.proto() == Proto::Resp && conn.queue_bytes > self.cfg.send_queue_bytes_max / 2
    }

    /// A send progressed: input held behind a reply backlog may go on.
    pub(crate) fn resume_held_input(&mut self, slot: usize) {
        let conn = &mut self.conns[slot];
        if conn.input_held && conn.queue_bytes <= self.cfg.send_queue_bytes_max / 2 {
            conn.input_held = false;
            if !conn.in_ready && conn.write == WriteHalf::Subscribed {
                conn.in_ready = true;
                self.ready.push_back(slot);
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
