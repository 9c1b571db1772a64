//! The hub: how workers hand each other what their publishers sent.
//!
//! Each worker publishes the lines its connections completed in one loop turn as one [`Batch`]:
//! one allocation and one reference count per peer worker, never a lock or a copy per subscriber.
//! Peers receive batches in the order they were sent, so each publisher's lines keep their order
//! on every core.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use protocol::Chunk;
use ring::Doorbell;

/// The chunks one worker's publishers completed in one loop turn, in order.
pub struct BatchData {
    pub chunks: Vec<Chunk>,
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
    mailboxes: OnceLock<Vec<Mailbox>>,
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
            mailboxes: OnceLock::new(),
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

    /// Sends `batch` to every worker but `from`.
    pub fn publish(&self, from: usize, batch: &Batch, bytes: usize) {
        for (i, m) in self.mailboxes().iter().enumerate() {
            if i == from {
                continue;
            }
            m.bytes.fetch_add(bytes, Ordering::Relaxed);
            // The receiver lives as long as its worker; a send error means it already exited,
            // which only happens after shutdown has quiesced every publisher.
            let _ = m.tx.send(Arc::clone(batch));
            if !m.notified.swap(true, Ordering::AcqRel) {
                m.doorbell.ring();
            }
        }
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
        // Clear before draining: a batch sent after our last try_recv then sees `false` and rings.
        m.notified.store(false, Ordering::SeqCst);
        // Empty or disconnected (the senders live in `Shared`; only at exit) both end the drain.
        while let Ok(batch) = rx.try_recv() {
            let bytes: usize = batch.chunks.iter().map(|c| c.bytes.len()).sum();
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
