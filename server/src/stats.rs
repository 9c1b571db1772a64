//! Per-worker counters: plain integers on the hot path, summed across workers at exit.

use std::fmt;

use ringfan_ring::DriverStats;

use crate::lifecycle::CloseReason;

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
    /// Connections closed at shutdown once their peer had acknowledged everything.
    pub shutdown_delivered: u64,
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
    /// Sends retried after a back-off because the kernel was short of memory.
    pub send_retries: u64,
    /// Messages not sent to a line subscriber because the payload holds a `\n`.
    pub line_frames_skipped: u64,
    /// Batches shipped to other workers, and the messages in them.
    pub hub_batches_sent: u64,
    pub hub_messages_sent: u64,
    /// Messages another worker was not sent because it had no subscriber for them (one per
    /// message and worker).
    pub hub_messages_skipped: u64,
    /// RESP commands carried out.
    pub commands: u64,
    /// Subscribes refused at RINGFAN_TOPICS_MAX.
    pub topics_refused: u64,
    /// WebSocket upgrades completed, upgrades not completed in time, pongs not back in time.
    pub ws_upgrades: u64,
    pub ws_handshake_timeouts: u64,
    pub ws_pong_timeouts: u64,
    /// The NATS backbone: messages (and payload bytes) published to it and received from it,
    /// messages dropped on the way out (workers: its queue full) and in (a worker's inbox
    /// full), publishes the client refused, and reconnects.
    pub backbone_out: u64,
    pub backbone_bytes_out: u64,
    pub backbone_in: u64,
    pub backbone_bytes_in: u64,
    pub backbone_dropped_out: u64,
    pub backbone_dropped_in: u64,
    pub backbone_publish_errors: u64,
    pub backbone_reconnects: u64,
    pub unexpected_errors: u64,
    pub driver: DriverStats,
}

/// A worker's connections counted by state, for the metrics (which so need not know `Conn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Connections held (accepted, not yet closed).
    pub open: usize,
    /// Not yet closing, by write half: draining, SHUT_WR sent, waiting for the peer's FIN.
    pub draining: usize,
    pub shutdown_sent: usize,
    pub awaiting_fin: usize,
    /// Bytes queued over all connections, and the largest single queue.
    pub queued_bytes: usize,
    pub largest_queue_bytes: usize,
    /// Distinct topics with local subscribers, and subscriptions held.
    pub topics: usize,
    pub subscriptions: usize,
    /// The NATS backbone's subscriptions, and 1 while it is connected.
    pub backbone_subscriptions: usize,
    pub backbone_connected: usize,
}

/// Applies `$m!(name, ...)` to every scalar counter: `add`, `Display` and the exhaustiveness check
/// below all expand from this one list.
macro_rules! scalar_counters {
    ($m:ident) => {
        $m! {
            accepted,
            aborted,
            close_timeouts,
            shutdown_aborted,
            shutdown_delivered,
            lost_bytes,
            stale_completions,
            bytes_in,
            bytes_out,
            bytes_discarded,
            messages_in,
            messages_out,
            protocol_errors,
            evicted_slow,
            recv_enobufs,
            recv_paused,
            backpressure_turns,
            stalled_turns,
            accept_emfile,
            refused_limit,
            refused_emfile,
            subscriber_bytes_discarded,
            slow_timeouts,
            messages_dropped,
            send_retries,
            line_frames_skipped,
            hub_batches_sent,
            hub_messages_sent,
            hub_messages_skipped,
            commands,
            topics_refused,
            ws_upgrades,
            ws_handshake_timeouts,
            ws_pong_timeouts,
            backbone_out,
            backbone_bytes_out,
            backbone_in,
            backbone_bytes_in,
            backbone_dropped_out,
            backbone_dropped_in,
            backbone_publish_errors,
            backbone_reconnects,
            unexpected_errors
        }
    };
}

/// The compile-time check: every field of `Stats` is a scalar in `scalar_counters!` or one of the
/// three handled by hand (`closed`, `unsubscribed`, `driver`). A counter added to the struct but
/// not to the list fails here, so neither `add` nor `Display` can leave it out.
macro_rules! every_field_listed {
    ($($f:ident),*) => {
        #[allow(dead_code)]
        fn every_field_listed(s: &Stats) {
            let Stats {
                $($f: _,)*
                closed: _,
                unsubscribed: _,
                driver: _,
            } = s;
        }
    };
}
scalar_counters!(every_field_listed);

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        macro_rules! add {
            ($($f:ident),*) => { $( self.$f += o.$f; )* };
        }
        scalar_counters!(add);
        for (mine, theirs) in self.closed.iter_mut().zip(o.closed) {
            *mine += theirs;
        }
        for (mine, theirs) in self.unsubscribed.iter_mut().zip(o.unsubscribed) {
            *mine += theirs;
        }
        let DriverStats {
            sq_full,
            cq_overflow,
            enter_retries,
        } = o.driver;
        self.driver.sq_full += sq_full;
        self.driver.cq_overflow += cq_overflow;
        self.driver.enter_retries += enter_retries;
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        macro_rules! show {
            ($($f:ident),*) => {{
                let mut sep = "";
                $(
                    write!(f, "{sep}{}={}", stringify!($f), self.$f)?;
                    sep = " ";
                )*
                let _ = sep;
            }};
        }
        scalar_counters!(show);
        for r in CloseReason::ALL {
            write!(f, " closed_{}={}", r.name(), self.closed[r as usize])?;
        }
        for r in CloseReason::ALL {
            write!(
                f,
                " unsubscribed_{}={}",
                r.name(),
                self.unsubscribed[r as usize]
            )?;
        }
        let DriverStats {
            sq_full,
            cq_overflow,
            enter_retries,
        } = self.driver;
        write!(
            f,
            " sq_full={sq_full} cq_overflow={cq_overflow} enter_retries={enter_retries}"
        )
    }
}
