//! Shutdown in three steps, so nothing a client sent before the signal is lost: (1) stop
//! accepting and publish every line already received; (2) wait until every worker has done the
//! same, take their last batches; (3) drop every subscription, flush, and close each connection
//! once its peer has acknowledged everything, or reset what is left at
//! RINGFAN_SHUTDOWN_TIMEOUT_MS.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ringfan_ring::{Driver, Op, UserData};

use super::accept::accept_ud;
use super::Worker;
use crate::lifecycle::{CloseReason, Closing, ReadHalf, WriteHalf};

/// At shutdown, how often the connections waiting for their peers' acknowledgements are
/// checked (one ioctl each).
const DELIVERY_CHECK_INTERVAL: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    Running,
    /// Shutdown seen: our last input is published, waiting for every other worker's.
    WaitingPeers,
    /// Every subscription dropped; closing connections.
    Draining,
}

impl<D: Driver> Worker<D> {
    /// Shutdown in three steps, so nothing a client sent before the signal is lost: (1) stop
    /// accepting and publish every line already received; (2) wait until every worker has done
    /// the same, take their last batches; (3) drop every subscription and close.
    pub(crate) fn advance_phase(&mut self) {
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
                let subscribed: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.write == WriteHalf::Subscribed)
                    .map(|(slot, _)| slot)
                    .collect();
                tracing::info!(
                    worker = self.id,
                    connections = self.conns.len(),
                    "shutting down: flushing and closing every connection"
                );
                for slot in subscribed {
                    self.conn_unsubscribe(slot, CloseReason::Shutdown);
                }
                // Connections that sent their FIN before the shutdown (evicted, say) need the
                // peer's FIN no more than the others do.
                let waiting: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| {
                        c.write == WriteHalf::Ended
                            && c.read == ReadHalf::Open
                            && c.closing == Closing::No
                    })
                    .map(|(slot, _)| slot)
                    .collect();
                for slot in waiting {
                    self.await_delivery(slot);
                }
            }
            _ => {}
        }
    }

    /// True once every subscription has been dropped for shutdown.
    pub(crate) fn shutting_down(&self) -> bool {
        self.phase == Phase::Draining
    }

    /// At shutdown, a connection whose FIN is sent waits for its peer's acknowledgements.
    pub(crate) fn await_delivery(&mut self, slot: usize) {
        let generation = self.conns[slot].generation;
        if self.awaiting_delivery.is_empty() {
            self.next_delivery_check = self.now;
        }
        self.awaiting_delivery.push((slot, generation));
    }

    /// Closes every waiting connection whose peer has acknowledged all we sent and our FIN.
    /// Polled (one ioctl per connection, every `DELIVERY_CHECK_INTERVAL`): no completion tells
    /// when an acknowledgement arrives.
    pub(crate) fn check_delivered(&mut self) {
        if self.awaiting_delivery.is_empty() || self.now < self.next_delivery_check {
            return;
        }
        self.next_delivery_check = self.now + DELIVERY_CHECK_INTERVAL;
        let mut waiting = std::mem::take(&mut self.awaiting_delivery);
        waiting.retain(|&(slot, generation)| {
            let Some(conn) = self.conns.get(slot).filter(|c| c.generation == generation) else {
                return false;
            };
            if conn.closing != Closing::No || conn.read != ReadHalf::Open {
                return false;
            }
            match self.driver.unacked_bytes(conn.fd) {
                Ok(0) => {
                    self.conn_on_delivered(slot);
                    false
                }
                Ok(_) => true,
                // Not a connected socket any more (reset): the recv reports how it ended.
                Err(_) => false,
            }
        });
        waiting.append(&mut self.awaiting_delivery);
        self.awaiting_delivery = waiting;
    }

    /// RINGFAN_SHUTDOWN_TIMEOUT_MS passed: every connection still open is reset, counted as a
    /// shutdown abort.
    pub(crate) fn expire_shutdown_deadline(&mut self) {
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
}
