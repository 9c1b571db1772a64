//! Per-worker counters: plain integers on the hot path, summed across workers at exit.

use std::fmt;

use ring::DriverStats;

use crate::conn::CloseReason;

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    /// Connections freed, by [`CloseReason`] index.
    pub closed: [u64; CloseReason::ALL.len()],
    /// Subscriptions dropped, by [`CloseReason`] index.
    pub unsubscribed: [u64; CloseReason::ALL.len()],
    pub aborted: u64,
    pub close_timeouts: u64,
    pub shutdown_aborted: u64,
    /// Queued bytes that were never sent because the connection was closed abortively.
    pub lost_bytes: u64,
    pub stale_completions: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_discarded: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub protocol_errors: u64,
    pub evicted_slow: u64,
    pub recv_enobufs: u64,
    pub recv_paused: u64,
    pub backpressure_turns: u64,
    /// Turns that took no input because a subscriber was draining a large queue.
    pub stalled_turns: u64,
    pub accept_emfile: u64,
    /// Connections refused at RINGFAN_MAX_CONNECTIONS.
    pub refused_limit: u64,
    /// Connections accepted and refused while out of file descriptors.
    pub refused_emfile: u64,
    /// Bytes sent by connections that may not publish (RINGFAN_PUBLISH_LISTEN), discarded.
    pub subscriber_bytes_discarded: u64,
    /// Subscribers found slow by RINGFAN_SLOW_CONSUMER_TIMEOUT_MS (not draining).
    pub slow_timeouts: u64,
    /// Lines not queued to a subscriber over its limit (drop policy).
    pub messages_dropped: u64,
    pub unexpected_errors: u64,
    pub driver: DriverStats,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.accepted += o.accepted;
        for i in 0..self.closed.len() {
            self.closed[i] += o.closed[i];
            self.unsubscribed[i] += o.unsubscribed[i];
        }
        self.aborted += o.aborted;
        self.close_timeouts += o.close_timeouts;
        self.shutdown_aborted += o.shutdown_aborted;
        self.lost_bytes += o.lost_bytes;
        self.stale_completions += o.stale_completions;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.bytes_discarded += o.bytes_discarded;
        self.messages_in += o.messages_in;
        self.messages_out += o.messages_out;
        self.protocol_errors += o.protocol_errors;
        self.evicted_slow += o.evicted_slow;
        self.recv_enobufs += o.recv_enobufs;
        self.recv_paused += o.recv_paused;
        self.backpressure_turns += o.backpressure_turns;
        self.stalled_turns += o.stalled_turns;
        self.accept_emfile += o.accept_emfile;
        self.refused_limit += o.refused_limit;
        self.refused_emfile += o.refused_emfile;
        self.subscriber_bytes_discarded += o.subscriber_bytes_discarded;
        self.slow_timeouts += o.slow_timeouts;
        self.messages_dropped += o.messages_dropped;
        self.unexpected_errors += o.unexpected_errors;
        self.driver.sq_full += o.driver.sq_full;
        self.driver.cq_overflow += o.driver.cq_overflow;
        self.driver.enter_retries += o.driver.enter_retries;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accepted={}", self.accepted)?;
        for r in CloseReason::ALL {
            write!(f, " closed_{}={}", r.name(), self.closed[r as usize])?;
        }
        write!(
            f,
            " aborted={} close_timeouts={} shutdown_aborted={} lost_bytes={} stale_completions={} \
             messages_in={} messages_out={} bytes_in={} bytes_out={} bytes_discarded={} \
             protocol_errors={} evicted_slow={} recv_enobufs={} recv_paused={} backpressure_turns={} stalled_turns={} \
             accept_emfile={} refused_limit={} refused_emfile={} subscriber_bytes_discarded={} slow_timeouts={} messages_dropped={} unexpected_errors={} sq_full={} cq_overflow={}",
            self.aborted,
            self.close_timeouts,
            self.shutdown_aborted,
            self.lost_bytes,
            self.stale_completions,
            self.messages_in,
            self.messages_out,
            self.bytes_in,
            self.bytes_out,
            self.bytes_discarded,
            self.protocol_errors,
            self.evicted_slow,
            self.recv_enobufs,
            self.recv_paused,
            self.backpressure_turns,
            self.stalled_turns,
            self.accept_emfile,
            self.refused_limit,
            self.refused_emfile,
            self.subscriber_bytes_discarded,
            self.slow_timeouts,
            self.messages_dropped,
            self.unexpected_errors,
            self.driver.sq_full,
            self.driver.cq_overflow
        )
    }
}
