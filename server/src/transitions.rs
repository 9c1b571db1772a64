//! The close state machine driven step by step through a scripted driver: every submission is
//! recorded, every completion is injected by the test.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringfan_protocol::resp::Kind;
use ringfan_ring::{Completion, Doorbell, Driver, DriverStats, Op, UserData};

use crate::config::Config;
use crate::hub::Shared;
use crate::lifecycle::{CloseReason, ReadHalf, WriteHalf};
use crate::topics::Proto;
use crate::worker::{ListenFd, Worker};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Sub {
    Accept,
    Recv(RawFd, UserData),
    Send(RawFd, UserData, Vec<u8>),
    Shutdown(RawFd, UserData),
    Close(RawFd, UserData),
    CancelFd(RawFd, UserData),
    Cancel(UserData, UserData),
}

struct Script {
    subs: Vec<Sub>,
    ready: VecDeque<Completion>,
    buffers: HashMap<u16, Vec<u8>>,
    next_buffer: u16,
    doorbell: Doorbell,
    /// What `unacked_bytes` answers per fd; fds not in it are not sockets (EBADF).
    unacked: HashMap<RawFd, usize>,
}

impl Script {
    fn new() -> Self {
        Script {
            subs: Vec::new(),
            ready: VecDeque::new(),
            buffers: HashMap::new(),
            next_buffer: 0,
            doorbell: Doorbell::new().unwrap(),
            unacked: HashMap::new(),
        }
    }
}

impl Driver for Script {
    fn accept_multi(&mut self, _listener: RawFd, _ud: UserData) {
        self.subs.push(Sub::Accept);
    }
    fn recv_multi(&mut self, fd: RawFd, ud: UserData) {
        self.subs.push(Sub::Recv(fd, ud));
    }
    unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, ud: UserData) {
        // SAFETY: the caller keeps msg and its iovecs valid until the completion; we copy now.
        let data = unsafe { crate::sim::read_msg(msg) };
        self.subs.push(Sub::Send(fd, ud, data));
    }
    fn shutdown_write(&mut self, fd: RawFd, ud: UserData) {
        self.subs.push(Sub::Shutdown(fd, ud));
    }
    fn close(&mut self, fd: RawFd, ud: UserData) {
        self.subs.push(Sub::Close(fd, ud));
    }
    fn cancel_fd(&mut self, fd: RawFd, ud: UserData) {
        self.subs.push(Sub::CancelFd(fd, ud));
    }
    fn cancel(&mut self, target: UserData, ud: UserData) {
        self.subs.push(Sub::Cancel(target, ud));
    }
    fn submit_and_wait(&mut self, _timeout: Duration) -> std::io::Result<()> {
        Ok(())
    }
    fn submit(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn completions(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.ready.drain(..));
    }
    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        &self.buffers[&id][..len]
    }
    fn recycle(&mut self, id: u16) {
        self.buffers
            .remove(&id)
            .expect("recycled a buffer that was not handed out");
    }
    fn buffers_available(&self) -> usize {
        64 - self.buffers.len()
    }
    fn doorbell(&self) -> Doorbell {
        self.doorbell.clone()
    }
    fn stats(&self) -> DriverStats {
        DriverStats::default()
    }
    fn unacked_bytes(&self, fd: RawFd) -> std::io::Result<usize> {
        self.unacked
            .get(&fd)
            .copied()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EBADF))
    }
    fn discard_unread(&mut self, _fd: RawFd, _max: usize) -> usize {
        0
    }
}

/// Fake fds far above any fd limit, so the few real syscalls made on them (SO_LINGER) fail with
/// EBADF instead of touching one of the test process's files.
const FD: RawFd = 900_000;

struct Harness {
    w: Worker<Script>,
    now: Instant,
}

impl Harness {
    fn new(vars: &[(&str, &str)]) -> Self {
        Harness::with_listeners(vars, false)
    }
    /// With `resp`, a RESP listener (index 1) next to the line listener.
    fn with_listeners(vars: &[(&str, &str)], resp: bool) -> Self {
        let env: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Arc::new(Config::from_vars(&env).unwrap());
        let shared = Arc::new(Shared::new(
            1,
            cfg.turn_input_bytes_max(),
            cfg.max_connections.unwrap_or(1000),
        ));
        let (tx, rx) = std::sync::mpsc::channel();
        let script = Script::new();
        shared.set_mailboxes(vec![(tx, script.doorbell())]);
        let open = || -> OwnedFd { std::fs::File::open("/dev/null").unwrap().into() };
        let mut listeners = ListenFd::lines(open(), None);
        if resp {
            listeners.push(ListenFd {
                fd: open(),
                proto: Proto::Resp,
                publishers: true,
            });
        }
        let n = listeners.len();
        let mut w = Worker::new(0, cfg, script, shared, rx, listeners);
        w.start();
        let mut h = Harness {
            w,
            now: Instant::now(),
        };
        h.turn();
        assert_eq!(h.take(), vec![Sub::Accept; n]);
        h
    }
    fn turn(&mut self) {
        self.w.turn(self.now);
    }
    fn take(&mut self) -> Vec<Sub> {
        std::mem::take(&mut self.w.driver.subs)
    }
    fn complete(&mut self, user_data: UserData, result: i32, more: bool) {
        self.w.driver.ready.push_back(Completion {
            user_data,
            result,
            more,
            buffer: None,
        });
    }
    fn data(&mut self, user_data: UserData, bytes: &[u8]) {
        let id = self.w.driver.next_buffer;
        self.w.driver.next_buffer += 1;
        self.w.driver.buffers.insert(id, bytes.to_vec());
        self.w.driver.ready.push_back(Completion {
            user_data,
            result: bytes.len() as i32,
            more: true,
            buffer: Some(id),
        });
    }
    /// Accepts `fd`; returns the recv's user_data.
    fn accept(&mut self, fd: RawFd) -> UserData {
        self.accept_on(0, fd)
    }
    /// Accepts `fd` on listener `index` (1: the RESP listener).
    fn accept_on(&mut self, index: u32, fd: RawFd) -> UserData {
        self.complete(UserData::new(u32::MAX - 1 - index, 0, Op::Accept), fd, true);
        self.turn();
        match self.take().as_slice() {
            [Sub::Recv(f, ud)] if *f == fd => *ud,
            other => panic!("expected one recv on accept, got {other:?}"),
        }
    }
    fn ud(recv: UserData, op: Op) -> UserData {
        UserData::new(recv.slot(), recv.generation(), op)
    }
    /// Sets the shutdown flag, as the main thread does on SIGTERM.
    fn sigterm(&mut self) {
        self.w
            .shared
            .shutdown
            .store(true, std::sync::atomic::Ordering::Release);
    }
    /// The submissions of this turn but the listener's (accept and its cancel at shutdown).
    fn take_conn_subs(&mut self) -> Vec<Sub> {
        self.take()
            .into_iter()
            .filter(|s| {
                !matches!(s, Sub::Accept)
                    && !matches!(s, Sub::Cancel(t, _) if t.op() == Some(Op::Accept))
            })
            .collect()
    }
    fn closed(&self, reason: CloseReason) -> u64 {
        self.w.stats.closed[reason as usize]
    }
}

#[test]
fn peer_fin_first_flushes_its_own_line_then_shuts_then_closes() {
    let mut h = Harness::new(&[("RINGFAN_ECHO", "1")]);
    let recv = h.accept(FD);
    h.data(recv, b"bye\n");
    h.complete(recv, 0, false); // FIN right behind the line
    h.turn();
    let send = Harness::ud(recv, Op::Send);
    assert_eq!(
        h.take(),
        vec![Sub::Send(FD, send, b"bye\n".to_vec())],
        "own line echoed before anything else"
    );
    let slot = recv.slot() as usize;
    assert_eq!(h.w.conns[slot].read, ReadHalf::Ended);
    assert_eq!(
        h.w.conns[slot].write,
        WriteHalf::Draining,
        "subscription dropped on FIN"
    );
    assert_eq!(h.w.index.total_members(), 0);
    h.complete(send, 4, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Shutdown(FD, Harness::ud(recv, Op::Shutdown))],
        "SHUT_WR only after the flush"
    );
    h.complete(Harness::ud(recv, Op::Shutdown), 0, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Close(FD, Harness::ud(recv, Op::Close))],
        "close once both halves ended, nothing in flight"
    );
    h.complete(Harness::ud(recv, Op::Close), 0, false);
    h.turn();
    assert!(h.w.conns.is_empty());
    assert_eq!(h.closed(CloseReason::PeerFin), 1);
    assert_eq!(
        h.w.generations[slot],
        recv.generation() + 1,
        "generation bumped on free"
    );
}

#[test]
fn server_first_close_keeps_reading_until_fin() {
    let mut h = Harness::new(&[("RINGFAN_ECHO", "1"), ("RINGFAN_MAX_FRAME_BYTES", "8")]);
    let recv = h.accept(FD);
    h.data(recv, b"ok\nthis line is too long\n");
    h.turn();
    let send = Harness::ud(recv, Op::Send);
    let mut expect = b"ok\n".to_vec();
    expect.extend_from_slice(b"-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES (8)\n");
    let n = expect.len() as i32;
    assert_eq!(
        h.take(),
        vec![Sub::Send(FD, send, expect)],
        "good line, then the error line, in one send"
    );
    h.complete(send, n, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Shutdown(FD, Harness::ud(recv, Op::Shutdown))]
    );
    h.complete(Harness::ud(recv, Op::Shutdown), 0, false);
    h.data(recv, b"ignored\n"); // read and discarded while waiting for the FIN
    h.turn();
    assert_eq!(
        h.take(),
        vec![],
        "no close before the peer's FIN: the recv is still armed"
    );
    assert!(
        h.w.driver.buffers.is_empty(),
        "discarded input gives its buffer back at once"
    );
    h.complete(recv, 0, false);
    h.turn();
    assert_eq!(h.take(), vec![Sub::Close(FD, Harness::ud(recv, Op::Close))]);
    h.complete(Harness::ud(recv, Op::Close), 0, false);
    h.turn();
    assert_eq!(h.closed(CloseReason::ProtocolError), 1);
}

#[test]
fn missing_fin_hits_the_deadline_and_close_waits_for_the_cancelled_recv() {
    let mut h = Harness::new(&[
        ("RINGFAN_MAX_FRAME_BYTES", "4"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "100"),
    ]);
    let recv = h.accept(FD);
    h.data(recv, b"xxxxxxxx");
    h.turn();
    let send = Harness::ud(recv, Op::Send);
    assert!(matches!(h.take().as_slice(), [Sub::Send(..)]));
    h.complete(send, 47, false);
    h.turn();
    h.complete(Harness::ud(recv, Op::Shutdown), 0, false);
    h.turn();
    h.take();
    h.now += Duration::from_millis(150);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Cancel(recv, Harness::ud(recv, Op::Cancel))],
        "deadline: cancel the armed recv (by its user_data), do not close under it"
    );
    h.complete(Harness::ud(recv, Op::Cancel), 1, false);
    h.turn();
    assert_eq!(h.take(), vec![], "recv's final completion has not come yet");
    h.complete(recv, -libc::ECANCELED, false);
    h.turn();
    assert_eq!(h.take(), vec![Sub::Close(FD, Harness::ud(recv, Op::Close))]);
    h.complete(Harness::ud(recv, Op::Close), 0, false);
    h.turn();
    // The reason is the first cause; the timeout that ended it is counted on its own.
    assert_eq!(h.closed(CloseReason::ProtocolError), 1);
    assert_eq!(h.w.stats.close_timeouts, 1);
    assert_eq!(h.w.stats.aborted, 1);
}

#[test]
fn late_completion_for_a_reused_slot_is_dropped() {
    let mut h = Harness::new(&[]);
    let old = h.accept(FD);
    h.complete(old, -libc::ECONNRESET, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Close(FD, Harness::ud(old, Op::Close))],
        "reset: nothing in flight, close at once"
    );
    h.complete(Harness::ud(old, Op::Close), 0, false);
    h.turn();
    assert_eq!(h.closed(CloseReason::PeerReset), 1);
    let new = h.accept(FD + 1);
    assert_eq!(new.slot(), old.slot(), "the slot is reused");
    assert_ne!(new.generation(), old.generation());
    // A stale recv completion carrying data for the old connection arrives now.
    h.data(old, b"evil\n");
    h.complete(Harness::ud(old, Op::Send), 5, false);
    h.turn();
    assert_eq!(h.take(), vec![], "nothing is sent to the new connection");
    assert_eq!(h.w.stats.stale_completions, 2);
    assert!(
        h.w.driver.buffers.is_empty(),
        "the stale completion's buffer went back"
    );
    assert_eq!(h.w.conns[new.slot() as usize].queue_bytes, 0);
}

#[test]
fn short_send_is_resumed_then_reset_on_send_aborts_after_cancel() {
    let mut h = Harness::new(&[("RINGFAN_ECHO", "1")]);
    let recv = h.accept(FD);
    h.data(recv, b"aaaa\nbbbb\n");
    h.turn();
    let send = Harness::ud(recv, Op::Send);
    assert_eq!(
        h.take(),
        vec![Sub::Send(FD, send, b"aaaa\nbbbb\n".to_vec())]
    );
    h.complete(send, 3, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Send(FD, send, b"a\nbbbb\n".to_vec())],
        "rest of a short send"
    );
    h.complete(send, -libc::ECONNRESET, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Cancel(recv, Harness::ud(recv, Op::Cancel))]
    );
    h.complete(recv, -libc::ECANCELED, false);
    h.complete(Harness::ud(recv, Op::Cancel), 1, false);
    h.turn();
    assert_eq!(h.take(), vec![Sub::Close(FD, Harness::ud(recv, Op::Close))]);
    h.complete(Harness::ud(recv, Op::Close), 0, false);
    h.turn();
    assert_eq!(h.closed(CloseReason::PeerReset), 1);
    assert_eq!(h.w.stats.aborted, 1);
}

/// A cancel still on its way when the retry deadline passes is waited for, never repeated (at
/// scale, repeated cancels piled up faster than io_uring could run them); an operation that
/// survived a completed cancel is cancelled again.
#[test]
fn retry_deadline_waits_for_a_pending_cancel_and_recancels_a_survivor() {
    let mut h = Harness::new(&[("RINGFAN_ECHO", "1")]);
    let recv = h.accept(FD);
    h.data(recv, b"aaaa\n");
    h.turn();
    let send = Harness::ud(recv, Op::Send);
    assert_eq!(h.take(), vec![Sub::Send(FD, send, b"aaaa\n".to_vec())]);
    // The peer resets: the recv ends, the send is still in flight and gets cancelled.
    h.complete(recv, -libc::ECONNRESET, false);
    h.turn();
    let cancel = Harness::ud(recv, Op::Cancel);
    assert_eq!(h.take(), vec![Sub::Cancel(send, cancel)]);
    for _ in 0..3 {
        h.now += Duration::from_millis(1500);
        h.turn();
        assert_eq!(
            h.take(),
            vec![],
            "a cancel is in flight: nothing more is submitted"
        );
    }
    // The cancel found nothing to cancel (the send was already running) and the send lives on.
    h.complete(cancel, -libc::EALREADY, false);
    h.turn();
    assert_eq!(h.take(), vec![], "no close while the send is in flight");
    h.now += Duration::from_millis(1500);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Cancel(send, cancel)],
        "the survivor is cancelled again"
    );
    h.complete(send, -libc::ECANCELED, false);
    h.complete(cancel, 0, false);
    h.turn();
    assert_eq!(h.take(), vec![Sub::Close(FD, Harness::ud(recv, Op::Close))]);
    h.complete(Harness::ud(recv, Op::Close), 0, false);
    h.turn();
    assert_eq!(h.closed(CloseReason::PeerReset), 1);
}

#[test]
fn slow_subscriber_is_evicted_and_its_queue_still_flushed() {
    let mut h = Harness::new(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "16"),
    ]);
    let slow = h.accept(FD);
    let publisher = h.accept(FD + 1);
    h.data(publisher, b"0123456789\n");
    h.turn();
    let subs = h.take();
    assert_eq!(subs.len(), 2, "both get the first line: {subs:?}");
    // The slow one's send never completes; the publisher's does.
    h.complete(Harness::ud(publisher, Op::Send), 11, false);
    h.data(publisher, b"abcdefghij\n");
    h.turn();
    let slot = slow.slot() as usize;
    assert_eq!(
        h.w.conns[slot].write,
        WriteHalf::Draining,
        "over 16 bytes queued: evicted"
    );
    assert_eq!(
        h.w.conns[slot].queue_bytes, 11,
        "the line that did not fit was not queued"
    );
    h.complete(Harness::ud(slow, Op::Send), 11, false);
    h.turn();
    assert!(
        h.take()
            .contains(&Sub::Shutdown(FD, Harness::ud(slow, Op::Shutdown))),
        "flushed, then SHUT_WR"
    );
    assert_eq!(h.w.stats.evicted_slow, 1);
}

/// At shutdown a connection is closed as soon as its peer has acknowledged every byte and our
/// FIN: its own FIN is not waited for, and it is closed gracefully, never reset.
#[test]
fn shutdown_closes_once_the_peer_acknowledged_everything_without_waiting_for_its_fin() {
    let mut h = Harness::new(&[("RINGFAN_CLOSE_TIMEOUT_MS", "60000")]);
    let recv = h.accept(FD);
    h.sigterm();
    h.turn();
    let shut = Harness::ud(recv, Op::Shutdown);
    assert_eq!(
        h.take_conn_subs(),
        vec![Sub::Shutdown(FD, shut)],
        "nothing queued: SHUT_WR at once"
    );
    // The listener's accept ends with its cancel.
    h.complete(
        UserData::new(u32::MAX - 1, 0, Op::Accept),
        -libc::ECANCELED,
        false,
    );
    h.w.driver.unacked.insert(FD, 1); // our FIN is not acknowledged yet
    h.complete(shut, 0, false);
    h.turn();
    assert_eq!(
        h.take(),
        vec![],
        "the peer has not acknowledged the FIN yet"
    );
    h.w.driver.unacked.insert(FD, 0);
    h.now += Duration::from_millis(5);
    h.turn();
    let cancel = Harness::ud(recv, Op::Cancel);
    assert_eq!(
        h.take(),
        vec![Sub::Cancel(recv, cancel)],
        "acknowledged: end the read half from our side (cancel the recv), no FIN awaited"
    );
    h.complete(recv, -libc::ECANCELED, false);
    h.complete(cancel, 0, false);
    h.turn();
    assert_eq!(h.take(), vec![Sub::Close(FD, Harness::ud(recv, Op::Close))]);
    h.complete(Harness::ud(recv, Op::Close), 0, false);
    assert!(
        h.w.turn(h.now),
        "the worker is done once the connection is freed"
    );
    assert_eq!(h.closed(CloseReason::Shutdown), 1);
    assert_eq!(h.w.stats.aborted, 0, "never reset");
    assert_eq!(h.w.stats.shutdown_delivered, 1);
}

/// The per-connection close timeout does not cut a shutdown short: RINGFAN_SHUTDOWN_TIMEOUT_MS
/// bounds it, and what is reset at that deadline is counted as a shutdown abort.
#[test]
fn shutdown_timeout_not_the_close_timeout_bounds_a_shutdown() {
    let mut h = Harness::new(&[
        ("RINGFAN_CLOSE_TIMEOUT_MS", "100"),
        ("RINGFAN_SHUTDOWN_TIMEOUT_MS", "1000"),
    ]);
    let recv = h.accept(FD);
    h.sigterm();
    h.turn();
    let shut = Harness::ud(recv, Op::Shutdown);
    assert_eq!(h.take_conn_subs(), vec![Sub::Shutdown(FD, shut)]);
    h.w.driver.unacked.insert(FD, 1000); // a peer that does not read
    h.complete(shut, 0, false);
    h.turn();
    h.now += Duration::from_millis(500);
    h.turn();
    assert_eq!(
        h.take(),
        vec![],
        "500 ms in: past the close timeout, within the shutdown's"
    );
    h.now += Duration::from_millis(600);
    h.turn();
    assert_eq!(
        h.take(),
        vec![Sub::Cancel(recv, Harness::ud(recv, Op::Cancel))],
        "shutdown deadline: abort"
    );
    assert_eq!(h.w.stats.shutdown_aborted, 1);
    assert_eq!(h.w.stats.close_timeouts, 0);
}

/// A cancel completion the connection never asked for is a bookkeeping bug: it must panic,
/// not wrap the counter (the connection would then wait in Cancelling forever and shutdown
/// would never end).
#[test]
#[should_panic(expected = "a cancel completed that this connection never submitted")]
fn stray_cancel_completion_panics_instead_of_wrapping_the_counter() {
    let mut h = Harness::new(&[]);
    let recv = h.accept(FD);
    h.complete(Harness::ud(recv, Op::Cancel), 0, false);
    h.turn();
}

/// ENOBUFS/ENOMEM on a send: the kernel is short of memory. Resubmitting at once would spin;
/// the send is retried after a back-off.
#[test]
fn send_short_of_kernel_memory_is_retried_after_a_back_off() {
    let mut h = Harness::new(&[("RINGFAN_ECHO", "1")]);
    let recv = h.accept(FD);
    h.data(recv, b"x\n");
    h.turn();
    let send = Harness::ud(recv, Op::Send);
    assert_eq!(h.take(), vec![Sub::Send(FD, send, b"x\n".to_vec())]);
    for errno in [libc::ENOBUFS, libc::ENOMEM] {
        h.complete(send, -errno, false);
        h.turn();
        h.turn();
        assert_eq!(h.take(), vec![], "no resend in the same instant");
        h.now += Duration::from_millis(5);
        h.turn();
        assert_eq!(
            h.take(),
            vec![Sub::Send(FD, send, b"x\n".to_vec())],
            "resent after the back-off"
        );
    }
    assert_eq!(h.w.stats.send_retries, 2);
}

/// Connections closing one after another leave no deadline behind: the deadline set holds at
/// most one entry per live connection (it used to keep one per closed connection until its
/// close timeout passed, growing with churn x RINGFAN_CLOSE_TIMEOUT_MS).
#[test]
fn deadline_set_holds_at_most_one_entry_per_live_connection_under_churn() {
    let mut h = Harness::new(&[("RINGFAN_CLOSE_TIMEOUT_MS", "60000")]);
    let keep = h.accept(FD);
    for i in 0..1000 {
        let recv = h.accept(FD + 1 + i);
        h.complete(recv, 0, false); // peer FIN: unsubscribe, deadline set
        h.turn();
        let shut = Harness::ud(recv, Op::Shutdown);
        assert_eq!(h.take(), vec![Sub::Shutdown(FD + 1 + i, shut)]);
        h.complete(shut, 0, false);
        h.turn();
        let close = Harness::ud(recv, Op::Close);
        assert_eq!(h.take(), vec![Sub::Close(FD + 1 + i, close)]);
        h.complete(close, 0, false);
        h.turn();
        assert!(
            h.w.deadlines_len() <= h.w.conns.len(),
            "after {i} closes: {} deadlines for {} connections",
            h.w.deadlines_len(),
            h.w.conns.len()
        );
    }
    assert!(h.w.conns.contains(keep.slot() as usize));
}

/// A RESP subscriber is evicted by the fan-out its own (UN)SUBSCRIBE runs first (a line
/// published earlier in the same turn does not fit its queue). The (un)subscribe must then not
/// go on: it used to join the topic for a connection no longer subscribed (a member the topic
/// kept after the connection was freed), and an UNSUBSCRIBE panicked the worker on finding the
/// topic already left.
#[test]
fn a_subscriber_evicted_by_the_fan_out_of_its_own_subscribe_joins_and_leaves_nothing() {
    for command in [&b"SUBSCRIBE x\r\n"[..], b"UNSUBSCRIBE held\r\n"] {
        let cmd = String::from_utf8_lossy(command.trim_ascii_end());
        // A 64-byte queue: 8 bytes of input per turn, replies hold input back over 32 bytes.
        let mut h = Harness::with_listeners(
            &[
                ("RINGFAN_SEND_QUEUE_BYTES_MAX", "64"),
                ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "0"),
            ],
            true,
        );
        let publisher = h.accept(FD);
        let resp = h.accept_on(1, FD + 1);
        let slot = resp.slot() as usize;
        h.data(resp, b"SUBSCRIBE lines held\r\n");
        h.turn();
        // The confirmations go out short: 27 bytes stay queued (not enough to hold input).
        let send = Harness::ud(resp, Op::Send);
        match h.take().as_slice() {
            [Sub::Send(fd, ud, bytes)] if *fd == FD + 1 && *ud == send => {
                h.complete(send, bytes.len() as i32 - 27, false)
            }
            other => panic!("expected the confirmations' send, got {other:?}"),
        }
        h.turn();
        assert_eq!(h.w.conns[slot].queue_bytes, 27);
        // In one turn: a line (its 40-byte message does not fit the 37 bytes left), then the
        // subscriber's command, whose fan-out of the turn's batch evicts it.
        h.data(publisher, b"aaaaaa\n");
        h.data(resp, command);
        h.turn();
        let c = &h.w.conns[slot];
        assert_ne!(c.write, WriteHalf::Subscribed, "{cmd}: not evicted");
        assert_eq!(h.w.stats.evicted_slow, 1, "{cmd}");
        assert!(c.subs.is_empty(), "{cmd}: topics held: {:?}", c.subs);
        assert_eq!(
            h.w.index.total_members(),
            1,
            "{cmd}: only the line publisher left"
        );
        for topic in [&b"x"[..], b"held"] {
            assert!(
                !h.w.index.contains(Kind::Channel, topic),
                "{cmd}: {:?} kept a member",
                String::from_utf8_lossy(topic)
            );
        }
    }
}
