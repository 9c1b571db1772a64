//! One connection's state: plain data. Its transitions are in `worker/close.rs`, its states in
//! `lifecycle.rs`.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Instant;

use bytes::Bytes;
use ringfan_ring::{Op, UserData};

use crate::lifecycle::{CloseReason, Closing, ReadEnd, ReadHalf, WriteHalf};
use crate::topics::Sub;
use crate::wire::Codec;

/// The kernel-facing part of a send. Boxed: the kernel holds a pointer to `msg` while the send is
/// in flight, and the connection table may move connections when it grows.
pub struct SendState {
    pub msg: libc::msghdr,
    pub iov: Vec<libc::iovec>,
}

/// Most iovecs gathered into one `sendmsg` (the kernel's UIO_MAXIOV is 1024).
pub const IOV_MAX: usize = 1024;

pub struct Conn {
    pub fd: RawFd,
    pub generation: u32,
    pub read: ReadHalf,
    pub write: WriteHalf,
    pub closing: Closing,
    pub reason: Option<CloseReason>,

    pub recv_in_flight: bool,
    pub send_in_flight: bool,
    pub shutdown_in_flight: bool,
    pub cancels_in_flight: u8,
    pub close_in_flight: bool,
    /// The recv was cancelled on purpose to stop taking input (backpressure); re-armed later.
    pub recv_paused: bool,
    /// Closed by us once the peer had everything (shutdown): read what it sent since, so the
    /// close ends with a FIN, not a reset.
    pub drain_before_close: bool,

    /// Messages to send, oldest first. The front `head_sent` bytes of the first are already sent.
    pub queue: VecDeque<Bytes>,
    pub head_sent: usize,
    /// Unsent bytes in `queue`.
    pub queue_bytes: usize,
    /// Bytes handed to the in-flight send.
    pub send_bytes: usize,
    pub send: Option<Box<SendState>>,
    /// Bytes ever queued / ever sent: a fan-out latency sample completes when `sent_total`
    /// reaches the `queued_total` noted with it.
    pub queued_total: u64,
    pub sent_total: u64,
    pub latency_probe: Option<(u64, Instant)>,
    /// When the queue went over half its limit (None while under).
    pub lagging_since: Option<Instant>,
    /// When a send last moved bytes.
    pub last_send_progress: Option<Instant>,
    /// When the queue last drained (a send progressed, or it went from empty to non-empty):
    /// the slow-consumer timeout runs from here.
    pub progress_at: Option<Instant>,
    /// Lines dropped for this subscriber under the drop policy.
    pub dropped_messages: u64,
    /// Over its queue limit in this turn's fan-out: evicted after it, gets nothing more.
    pub doomed: bool,
    /// Accepted on a listener whose connections may publish.
    pub may_publish: bool,

    /// The wire protocol: its decoder and session.
    pub codec: Codec,
    /// The topics it receives, while Subscribed.
    pub subs: Vec<Sub>,
    /// Input not decoded while its replies wait unsent (over half the queue limit).
    pub input_held: bool,
    /// Received buffers not yet decoded (fairness: bounded work per connection per loop turn).
    pub pending: VecDeque<(u16, u32)>,
    pub pending_bytes: usize,
    pub read_end: Option<ReadEnd>,

    pub deadline: Option<Instant>,
    pub in_ready: bool,
    pub in_dirty: bool,
}

impl Conn {
    pub fn new(fd: RawFd, generation: u32, codec: Codec) -> Self {
        Conn {
            fd,
            generation,
            read: ReadHalf::Open,
            write: WriteHalf::Subscribed,
            closing: Closing::No,
            reason: None,
            recv_in_flight: false,
            send_in_flight: false,
            shutdown_in_flight: false,
            cancels_in_flight: 0,
            close_in_flight: false,
            recv_paused: false,
            drain_before_close: false,
            queue: VecDeque::new(),
            head_sent: 0,
            queue_bytes: 0,
            send_bytes: 0,
            send: None,
            queued_total: 0,
            sent_total: 0,
            latency_probe: None,
            lagging_since: None,
            last_send_progress: None,
            progress_at: None,
            dropped_messages: 0,
            doomed: false,
            may_publish: true,
            codec,
            subs: Vec::new(),
            input_held: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
            read_end: None,
            deadline: None,
            in_ready: false,
            in_dirty: false,
        }
    }

    pub fn ud(&self, slot: usize, op: Op) -> UserData {
        UserData::new(slot as u32, self.generation, op)
    }

    pub fn ops_in_flight(&self) -> bool {
        self.recv_in_flight
            || self.send_in_flight
            || self.shutdown_in_flight
            || self.cancels_in_flight > 0
            || self.close_in_flight
    }

    /// True while received input is decoded.
    pub fn takes_input(&self) -> bool {
        self.may_publish
            && self.write == WriteHalf::Subscribed
            && self.read == ReadHalf::Open
            && !self.codec.finished()
    }

    pub(crate) fn set_reason(&mut self, reason: CloseReason) {
        self.reason.get_or_insert(reason);
    }
}

impl Conn {
    /// Drops `sent` bytes from the front of the queue.
    pub fn advance(&mut self, mut sent: usize) {
        self.queue_bytes = self
            .queue_bytes
            .checked_sub(sent)
            .expect("a send reported more bytes than were queued");
        while sent > 0 {
            let front_left = self.queue[0].len() - self.head_sent;
            if sent >= front_left {
                sent -= front_left;
                self.queue.pop_front();
                self.head_sent = 0;
            } else {
                self.head_sent += sent;
                sent = 0;
            }
        }
    }

    /// Fills the send state's iovecs from the queue; returns the msghdr and the bytes it covers.
    pub fn prepare_send(&mut self) -> (*const libc::msghdr, usize) {
        let state = self.send.get_or_insert_with(|| {
            Box::new(SendState {
                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                msg: unsafe { std::mem::zeroed() },
                iov: Vec::new(),
            })
        });
        state.iov.clear();
        let mut bytes = 0;
        for (i, b) in self.queue.iter().enumerate().take(IOV_MAX) {
            let skip = if i == 0 { self.head_sent } else { 0 };
            let part = &b[skip..];
            state.iov.push(libc::iovec {
                iov_base: part.as_ptr() as *mut _,
                iov_len: part.len(),
            });
            bytes += part.len();
        }
        state.msg.msg_iov = state.iov.as_mut_ptr();
        state.msg.msg_iovlen = state.iov.len() as _;
        (&state.msg as *const libc::msghdr, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_with(msgs: &[&'static [u8]]) -> Conn {
        let mut c = Conn::new(-1, 0, Codec::lines(1024));
        for m in msgs {
            c.queue.push_back(Bytes::from_static(m));
            c.queue_bytes += m.len();
        }
        c
    }

    #[test]
    fn advance_handles_partial_and_whole_messages() {
        let mut c = conn_with(&[b"abc", b"de", b"fghij"]);
        c.advance(4);
        assert_eq!(c.queue.len(), 2);
        assert_eq!(c.head_sent, 1);
        assert_eq!(c.queue_bytes, 6);
        let (_, bytes) = c.prepare_send();
        assert_eq!(bytes, 6);
        let iov = &c.send.as_ref().unwrap().iov;
        // SAFETY: the iovec points into the queued static bytes.
        let first =
            unsafe { std::slice::from_raw_parts(iov[0].iov_base as *const u8, iov[0].iov_len) };
        assert_eq!(first, b"e");
        c.advance(6);
        assert!(c.queue.is_empty());
        assert_eq!((c.head_sent, c.queue_bytes), (0, 0));
    }

    #[test]
    fn prepare_send_caps_iovecs() {
        let mut c = Conn::new(-1, 0, Codec::lines(1024));
        for _ in 0..(IOV_MAX + 10) {
            c.queue.push_back(Bytes::from_static(b"x\n"));
            c.queue_bytes += 2;
        }
        let (msg, bytes) = c.prepare_send();
        assert_eq!(bytes, IOV_MAX * 2);
        // SAFETY: msg points into c.send, alive here.
        assert_eq!(unsafe { (*msg).msg_iovlen }, IOV_MAX);
    }

    #[test]
    fn close_reason_names_are_unique() {
        let mut names: Vec<_> = CloseReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CloseReason::ALL.len());
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }
}
