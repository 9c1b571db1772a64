//! The hub: how workers hand each other what their publishers sent.
//!
//! Each worker ships the messages its connections published in one loop turn as one [`Batch`]
//! per peer worker that has a subscriber for at least one of them (see [`crate::topics`]): the
//! messages themselves are shared, never copied per worker or per subscriber. Peers receive
//! batches in the order they were sent, so each publisher's messages keep their order on every
//! core.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use ringfan_ring::Doorbell;

use crate::topics::{Interest, Message};

/// The messages one worker's publishers sent in one loop turn that one peer has subscribers
/// for, in order.
pub struct BatchData {
    pub messages: Vec<Arc<Message>>,
    /// When the publishing worker decoded them (start of fan-out latency).
    pub at: Instant,
}

pub type Batch = Arc<BatchData>;

/// A worker's mailbox as seen by the others.
pub struct Mailbox {
    tx: Sender<Batch>,
    doorbell: Doorbell,
    /// Set by the first sender after the owner last looked, so only that sender rings.
    notified: AtomicBool,
    /// Bytes sent and not yet taken by the owner.
    bytes: AtomicUsize,
}

/// State all workers share.
pub struct Shared {
    pub workers: usize,
    /// Bytes waiting in one worker's inbox before publishers on the other workers stop being
    /// decoded (TCP pushes back on them) until it drains.
    pub inbox_bytes_max: usize,
    pub shutdown: AtomicBool,
    /// Connections held by all workers, against `max_connections`.
    pub open_connections: AtomicUsize,
    pub max_connections: usize,
    /// Workers that have published their last input during shutdown.
    pub quiesced: AtomicUsize,
    /// What `CLIENT ID` answers: unique over the process's life.
    pub next_client_id: AtomicU64,
    mailboxes: OnceLock<Vec<Mailbox>>,
    /// Each worker's subscriptions, written only by that worker.
    interest: Vec<RwLock<Interest>>,
    /// The NATS backbone, when configured (set before the workers start).
    pub backbone: OnceLock<crate::backbone::Link>,
}

impl Shared {
    pub fn new(workers: usize, inbox_bytes_max: usize, max_connections: usize) -> Self {
        Shared {
            workers,
            inbox_bytes_max,
            open_connections: AtomicUsize::new(0),
            max_connections,
            shutdown: AtomicBool::new(false),
            quiesced: AtomicUsize::new(0),
            next_client_id: AtomicU64::new(1),
            mailboxes: OnceLock::new(),
            interest: (0..workers).map(|_| RwLock::default()).collect(),
            backbone: OnceLock::new(),
        }
    }

    /// Called once, by the main thread, when every worker has built its ring and doorbell.
    pub fn set_mailboxes(&self, parts: Vec<(Sender<Batch>, Doorbell)>) {
        let boxes = parts
            .into_iter()
            .map(|(tx, doorbell)| Mailbox {
                tx,
                doorbell,
                notified: AtomicBool::new(false),
                bytes: AtomicUsize::new(0),
            })
            .collect();
        assert!(self.mailboxes.set(boxes).is_ok(), "mailboxes set twice");
    }

    fn mailboxes(&self) -> &[Mailbox] {
        self.mailboxes
            .get()
            .expect("mailboxes are set before workers run")
    }

    /// Sends `batch` (of `bytes` payload bytes) to worker `to`.
    pub fn send(&self, to: usize, batch: Batch, bytes: usize) {
        let m = &self.mailboxes()[to];
        m.bytes.fetch_add(bytes, Ordering::Relaxed);
        // The receiver lives as long as its worker; a send error means it already exited,
        // which only happens after shutdown has quiesced every publisher.
        let _ = m.tx.send(batch);
        // Release: the send above is visible to the owner's clear that reads this (see
        // `drain`).
        if !m.notified.swap(true, Ordering::AcqRel) {
            m.doorbell.ring();
        }
    }

    /// Bytes waiting in worker `worker`'s inbox.
    pub fn inbox_bytes(&self, worker: usize) -> usize {
        self.mailboxes()[worker].bytes.load(Ordering::Relaxed)
    }

    /// Worker `worker`'s subscriptions, for routing and `PUBSUB`. Never held while taking a
    /// write lock (a worker writes only its own, and holds no other while it does).
    pub fn interest(&self, worker: usize) -> RwLockReadGuard<'_, Interest> {
        // A worker that panicked aborts the process: no lock is ever left poisoned in use.
        self.interest[worker]
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Worker `me`'s own subscriptions, to change them.
    pub fn interest_mut(&self, me: usize) -> RwLockWriteGuard<'_, Interest> {
        self.interest[me].write().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a new connection; false when the server is full.
    pub fn admit(&self) -> bool {
        let before = self.open_connections.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_connections {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Gives back the place of a closed connection.
    pub fn release(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Moves every batch waiting for worker `me` into `out`, in order.
    pub fn drain(&self, me: usize, rx: &Receiver<Batch>, out: &mut Vec<Batch>) {
        let m = &self.mailboxes()[me];
        // Clear, then drain; a publisher sends, then sets the flag and rings if it was clear.
        // No batch can wait unseen while the owner sleeps. Every access to `notified` is a swap,
        // so they form one order, each reading the one before it. Take a publisher whose swap
        // read `true` and did not ring:
        // - if this clear comes after that swap, it reads that swap's `true` or a later swap's
        //   (a release sequence): as an Acquire it synchronises with the publisher's Release,
        //   so the publisher's send happens before the try_recv below, which takes the batch;
        // - if it comes before, the `true` the publisher read was written after this clear by
        //   a publisher that read `false` and rang: the owner wakes and clears again, and the
        //   same two cases apply to that clear.
        // A plain store here could acquire nothing: the try_recv could miss a batch whose
        // publisher had seen the flag still set (the classic lost wake-up). The eventfd keeps a
        // ring made before the owner waits, so the ring itself cannot be lost.
        m.notified.swap(false, Ordering::AcqRel);
        // Empty or disconnected (the senders live in `Shared`; only at exit) both end the drain.
        while let Ok(batch) = rx.try_recv() {
            let bytes: usize = batch.messages.iter().map(|m| m.payload_bytes()).sum();
            m.bytes.fetch_sub(bytes, Ordering::Relaxed);
            out.push(batch);
        }
    }

    /// True when some other worker has more than `inbox_bytes_max` waiting.
    pub fn peers_backlogged(&self, me: usize) -> bool {
        self.mailboxes()
            .iter()
            .enumerate()
            .any(|(i, m)| i != me && m.bytes.load(Ordering::Relaxed) > self.inbox_bytes_max)
    }

    /// Wakes every worker (shutdown, or the last worker to quiesce).
    pub fn wake_all(&self) {
        if let Some(boxes) = self.mailboxes.get() {
            for m in boxes {
                m.doorbell.ring();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::Body;
    use ringfan_protocol::resp::Kind;
    use ringfan_protocol::Chunk;
    use ringfan_ring::{Driver, Epoll, RingConfig};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A publisher and a worker that waits on its doorbell and drains, as `Worker::run` does:
    /// every batch arrives, in order, and the worker is never left waiting while one is queued.
    #[test]
    fn a_batch_published_during_a_drain_is_never_missed() {
        const BATCHES: usize = 100_000;
        let shared = Arc::new(Shared::new(2, usize::MAX, 0));
        let (tx0, _rx0) = mpsc::channel();
        let (tx1, rx1) = mpsc::channel();
        let (bell_tx, bell_rx) = mpsc::channel();
        let owner = std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || {
                let config = RingConfig {
                    sq_entries: 8,
                    cq_entries: 16,
                    recv_buffers: 1,
                    recv_buffer_bytes: 64,
                };
                let mut driver = Epoll::new(&config).unwrap();
                bell_tx.send(driver.doorbell()).unwrap();
                let (mut taken, mut batches, mut completions) = (0, Vec::new(), Vec::new());
                while taken < BATCHES {
                    // Publishing continues until the last batch: a 2 s silence is a lost ring.
                    driver.submit_and_wait(Duration::from_secs(2)).unwrap();
                    driver.completions(&mut completions);
                    assert!(
                        !completions.is_empty(),
                        "no ring for 2 s after {taken} of {BATCHES} batches; one waiting: {}",
                        rx1.try_recv().is_ok()
                    );
                    completions.clear();
                    shared.drain(1, &rx1, &mut batches);
                    for b in batches.drain(..) {
                        assert_eq!(b.messages[0].count(), taken, "out of order");
                        taken += 1;
                    }
                }
                taken
            }
        });
        let bell1 = bell_rx.recv().unwrap();
        shared.set_mailboxes(vec![(tx0, Doorbell::new().unwrap()), (tx1, bell1)]);
        for i in 0..BATCHES {
            let chunk = Chunk {
                bytes: Default::default(),
                count: i,
            };
            let message = Message::new(Kind::Channel, "t".into(), Body::Lines(chunk));
            let batch = Arc::new(BatchData {
                messages: vec![Arc::new(message)],
                at: Instant::now(),
            });
            shared.send(1, batch, 0);
            // Uneven gaps, so that publishes land on every point of the owner's clear and drain,
            // not only on long drains.
            for _ in 0..(i * 7919) % 512 {
                std::hint::spin_loop();
            }
        }
        assert_eq!(owner.join().unwrap(), BATCHES);
    }
}
