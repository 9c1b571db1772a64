//! Fan-out: delivery to local subscribers, batches to the other workers, slow consumers, and
//! gathered sends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfan_protocol::Chunk;
use ringfan_ring::Driver;

use super::{AfterFanOut, Worker};
use crate::config::SlowConsumer;
use crate::hub::{Batch, BatchData};
use crate::lifecycle::{CloseReason, Closing, WriteHalf};
use crate::metrics::LATENCY_SAMPLE_INTERVAL;

/// Wait before resending after a send failed for want of kernel memory (ENOBUFS, ENOMEM).
const SEND_RETRY_BACKOFF: Duration = Duration::from_millis(2);

impl<D: Driver> Worker<D> {
    /// Delivers this turn's chunks to local subscribers and ships them to the other workers.
    pub(crate) fn fan_out(&mut self) {
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

    pub(crate) fn fan_out_batch(&mut self) {
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
    pub(crate) fn deliver(&mut self, slot: usize, chunk: &Chunk) -> bool {
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

    /// Now and then, follows the last delivery to one subscriber (round robin) until its send
    /// completes: the fan-out latency histogram. Off without metrics.
    pub(crate) fn sample_latency(&mut self, arrival: Instant) {
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

    pub(crate) fn apply_evictions(&mut self) {
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

    pub(crate) fn take_inbox(&mut self) {
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

    pub(crate) fn remove_subscriber(&mut self, slot: usize) {
        let index = self.conns[slot].sub_index;
        assert_eq!(self.subscribers[index], slot);
        self.subscribers.swap_remove(index);
        if let Some(&moved) = self.subscribers.get(index) {
            self.conns[moved].sub_index = index;
        }
        self.conns[slot].sub_index = usize::MAX;
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
