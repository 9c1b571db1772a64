//! Fan-out: delivery to local subscribers, batches to the other workers, slow consumers, and
//! gathered sends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringfan_protocol::glob;
use ringfan_protocol::resp::Kind;
use ringfan_ring::Driver;

use super::{AfterFanOut, Worker};
use crate::config::SlowConsumer;
use crate::hub::BatchData;
use crate::lifecycle::{CloseReason, Closing, WriteHalf};
use crate::metrics::LATENCY_SAMPLE_INTERVAL;
use crate::topics::{Framing, Message, Scope};

/// Wait before resending after a send failed for want of kernel memory (ENOBUFS, ENOMEM).
const SEND_RETRY_BACKOFF: Duration = Duration::from_millis(2);

impl<D: Driver> Worker<D> {
    /// Delivers this turn's messages to local subscribers and ships them to the other workers.
    pub(crate) fn fan_out(&mut self) {
        if !self.batch.is_empty() {
            self.fan_out_batch();
        }
        // A connection's FIN or protocol error takes effect only now, after the messages it sent
        // before it were delivered, to itself included.
        let mut after = std::mem::take(&mut self.after_fan_out);
        for (slot, action) in after.drain(..) {
            match action {
                AfterFanOut::ReadEnd(end) => self.conn_on_read_end(slot, end),
                AfterFanOut::ProtocolError(reply) => {
                    self.queue_reply(slot, reply);
                    self.conn_evict(slot, CloseReason::ProtocolError);
                }
                AfterFanOut::End(reason) => self.conn_evict(slot, reason),
                AfterFanOut::Drop => self.conn_abort(slot, CloseReason::ProtocolError),
            }
        }
        self.after_fan_out = after;
    }

    /// Where one fan-out starts in a member list of `n` subscribers: it queues (and so submits)
    /// their sends from there, wrapping around, a different start each time. The kernel works through a turn's
    /// sends in submission order, so at N = 5000 the last send of a message goes out tens of
    /// milliseconds after the first; always starting at index 0 would make the same
    /// (earliest-connected) subscribers first and the same ones last, every message. The start
    /// follows the golden-ratio sequence, which spreads consecutive starts evenly over the list
    /// whatever its length, so each subscriber's latency percentiles come out alike.
    fn fan_out_start(&mut self, n: usize) -> usize {
        self.fan_outs = self.fan_outs.wrapping_add(1);
        // 2^32 / golden ratio: fan_outs * this mod 2^32 is the Weyl sequence, scaled to 0..n.
        ((self.fan_outs.wrapping_mul(0x9E37_79B9) as u64 * n as u64) >> 32) as usize
    }

    /// Delivers the local batch and ships each other worker the messages routed to it.
    pub(crate) fn fan_out_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.deliver_all(&batch, self.cfg.echo);
        for peer in 0..self.outgoing.len() {
            if self.outgoing[peer].is_empty() {
                continue;
            }
            let messages = std::mem::take(&mut self.outgoing[peer]);
            let bytes = messages.iter().map(|m| m.payload_bytes()).sum();
            self.stats.hub_batches_sent += 1;
            let at = self.now;
            self.shared
                .send(peer, Arc::new(BatchData { messages, at }), bytes);
        }
        if !self.backbone_out.is_empty() {
            let out = std::mem::take(&mut self.backbone_out);
            if let Some(link) = self.shared.backbone.get() {
                if let Err(dropped) = link.forward(out) {
                    self.stats.backbone_dropped_out += dropped as u64;
                }
            }
        }
        self.apply_evictions();
        self.sample_latency(self.now);
        self.batch = batch;
        self.batch.clear();
    }

    /// Delivers `messages` (each with the slot that published it, or `usize::MAX`) in order.
    /// Consecutive messages of one topic go out subscriber by subscriber, so each subscriber's
    /// queue takes the whole run at once.
    fn deliver_all(&mut self, messages: &[(Arc<Message>, usize)], echo: bool) {
        let mut i = 0;
        while i < messages.len() {
            let (kind, topic, scope) = (
                messages[i].0.kind,
                &messages[i].0.topic,
                messages[i].0.scope,
            );
            // The patterns this message matches, found once for the decision below and for the
            // delivery.
            self.matching.clear();
            if kind == Kind::Channel && scope != Scope::Channels {
                self.matching.extend(
                    self.index
                        .patterns()
                        .filter(|(p, _)| glob::matches(p, topic))
                        .map(|(p, _)| p.clone()),
                );
            }
            let patterns = !self.matching.is_empty();
            // With a matching pattern, message by message: a client on both the channel and
            // the pattern gets `message` then `pmessage` for each, as Redis sends them.
            let mut end = i + 1;
            while !patterns
                && end < messages.len()
                && messages[end].0.kind == kind
                && messages[end].0.scope == scope
                && messages[end].0.topic == *topic
            {
                end += 1;
            }
            // From the backbone's wildcard subscription: for pattern subscribers only (the
            // channel's own subscription brings it to channel subscribers).
            if scope != Scope::Patterns {
                self.deliver_run(&messages[i..end], echo);
            }
            if patterns {
                self.deliver_patterns(&messages[i].0);
            }
            i = end;
        }
    }

    /// Delivers a run of messages of one channel to its local subscribers.
    fn deliver_run(&mut self, run: &[(Arc<Message>, usize)], echo: bool) {
        let first = &run[0].0;
        let mut members = std::mem::take(&mut self.members);
        members.clear();
        members.extend_from_slice(self.index.members(first.kind, &first.topic));
        let n = members.len();
        let start = self.fan_out_start(n);
        for i in (start..n).chain(0..start) {
            let slot = members[i];
            let framing = self.conns[slot].codec.framing();
            // RINGFAN_ECHO is the line protocol's; a RESP subscriber gets its own messages, as
            // from Redis.
            let skip_own = !echo && framing == Framing::Lines;
            for (message, from) in run {
                if skip_own && *from == slot {
                    continue;
                }
                let Some(frame) = message.frame(framing) else {
                    self.stats.line_frames_skipped += 1;
                    continue;
                };
                if !self.deliver(slot, frame, message.count()) {
                    break;
                }
            }
        }
        if !members.is_empty() {
            self.latency_candidate = Some(members[self.fan_outs as usize % members.len()]);
        }
        self.members = members;
    }

    /// Delivers a channel message to the local subscribers of every pattern it matches (found by
    /// `deliver_all` in `self.matching`): one `pmessage` frame per pattern, shared by its
    /// subscribers.
    fn deliver_patterns(&mut self, message: &Message) {
        let matching = std::mem::take(&mut self.matching);
        let mut members = std::mem::take(&mut self.members);
        for pattern in &matching {
            members.clear();
            members.extend_from_slice(self.index.members(Kind::Pattern, pattern));
            // Built on first use per protocol version, then shared.
            let mut frames: [Option<Bytes>; 2] = [None, None];
            for &slot in &members {
                let Framing::Resp(version) = self.conns[slot].codec.framing() else {
                    continue; // only RESP connections hold patterns
                };
                let frame = frames[version as usize]
                    .get_or_insert_with(|| message.pattern_frame(version, pattern));
                self.deliver(slot, frame, message.count());
            }
        }
        self.members = members;
        self.matching = matching;
    }

    /// Queues `frame` (holding `count` messages) for `slot`. False if that put the subscriber
    /// over its limit (it is then marked for eviction and gets nothing more).
    pub(crate) fn deliver(&mut self, slot: usize, frame: &Bytes, count: usize) -> bool {
        let conn = &mut self.conns[slot];
        if conn.doomed {
            return false;
        }
        let over = conn.queue_bytes + frame.len() > self.cfg.send_queue_bytes_max;
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
                    tracing::debug!(worker = self.id, slot, queue_bytes = conn.queue_bytes, frame = frame.len(), stuck,
                        lagging_for = ?conn.lagging_since.map(|t| self.now.saturating_duration_since(t)),
                        since_progress = ?conn.last_send_progress.map(|t| self.now.saturating_duration_since(t)),
                        "slow subscriber");
                    conn.doomed = true;
                    self.evict.push(slot);
                    false
                }
                SlowConsumer::Drop => {
                    // Whole messages only: the subscriber sees a gap, never a cut frame.
                    conn.dropped_messages += count as u64;
                    self.stats.messages_dropped += count as u64;
                    true
                }
            };
        }
        if conn.queue_bytes == 0 {
            conn.progress_at = Some(self.now);
        }
        conn.queue_bytes += frame.len();
        conn.queued_total += frame.len() as u64;
        conn.queue.push_back(frame.clone());
        self.stats.messages_out += count as u64;
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

    /// Now and then, follows the last delivery to one subscriber (round robin) until its send
    /// completes: the fan-out latency histogram. Off without metrics.
    pub(crate) fn sample_latency(&mut self, arrival: Instant) {
        if self.metrics.is_none() || self.now < self.next_latency_sample {
            return;
        }
        let Some(slot) = self.latency_candidate.take() else {
            return;
        };
        self.next_latency_sample = self.now + LATENCY_SAMPLE_INTERVAL;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.latency_probe.is_none() && conn.queued_total > conn.sent_total {
            conn.latency_probe = Some((conn.queued_total, arrival));
        }
    }

    pub(crate) fn apply_evictions(&mut self) {
        let mut evict = std::mem::take(&mut self.evict);
        for slot in evict.drain(..) {
            self.conns[slot].doomed = false;
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

    pub(crate) fn take_inbox(&mut self) {
        let mut batches = std::mem::take(&mut self.inbox_batches);
        self.shared.drain(self.id, &self.inbox, &mut batches);
        let mut messages = Vec::new();
        for batch in batches.drain(..) {
            messages.clear();
            messages.extend(batch.messages.iter().map(|m| (Arc::clone(m), usize::MAX)));
            self.deliver_all(&messages, true);
            // Before the next batch: an evicted subscriber must not get later messages after
            // missing one.
            self.apply_evictions();
            self.sample_latency(batch.at);
        }
        self.inbox_batches = batches;
    }

    pub(crate) fn submit_sends(&mut self) {
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
            self.conn_submit_send(slot);
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

    /// A send failed for want of kernel memory: mark it for sending again after a back-off.
    pub(crate) fn retry_send_later(&mut self, slot: usize) {
        self.send_backoff.push((slot, self.conns[slot].generation));
        self.send_retry_at
            .get_or_insert(self.now + SEND_RETRY_BACKOFF);
    }

    pub(crate) fn retry_backed_off_sends(&mut self) {
        if self.send_retry_at.is_none_or(|at| self.now < at) {
            return;
        }
        self.send_retry_at = None;
        let mut backoff = std::mem::take(&mut self.send_backoff);
        for (slot, generation) in backoff.drain(..) {
            if self
                .conns
                .get(slot)
                .is_some_and(|c| c.generation == generation)
            {
                self.mark_dirty(slot);
            }
        }
        self.send_backoff = backoff;
    }
}
