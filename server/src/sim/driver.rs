//! [`SimDriver`]: the simulated ring's state (operations in flight, completion queue, provided
//! buffers, sockets) and its [`Driver`] implementation, which checks the submission-time
//! contract (no close under an operation in flight, one send per fd, nothing on a closed fd).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::os::fd::RawFd;
use std::time::Duration;

use ringfan_ring::{Completion, Doorbell, Driver, DriverStats, Op, UserData};

use crate::topics::Proto;

use super::knobs::Knobs;
use super::peer::{Peer, RESP_GID_OFFSET};
use super::rng::Rng;
use super::trace::{fmt_ud, Cov, Coverage, Ev, PeerEv, SharedTrace, Violation};

/// Slots at or above this are the worker's listeners (and the doorbell), not connections.
pub(super) const LISTENER_SLOT_MIN: u32 = u32::MAX - 8;

pub(super) type OpId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Accept(usize),
    Recv,
    Send,
    Shutdown,
    Close,
    CancelFd,
    Cancel(UserData),
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Accept(_) => "accept",
            Kind::Recv => "recv",
            Kind::Send => "send",
            Kind::Shutdown => "shutdown",
            Kind::Close => "close",
            Kind::CancelFd => "cancel_fd",
            Kind::Cancel(_) => "cancel",
        }
    }

    /// Operations that stay armed after execution until something completes them.
    pub(super) fn waits(self) -> bool {
        matches!(self, Kind::Accept(_) | Kind::Recv | Kind::Send)
    }
}

/// One submitted operation whose final completion the server has not received yet.
pub(super) struct OpState {
    pub(super) ud: UserData,
    pub(super) fd: RawFd,
    pub(super) kind: Kind,
    /// Executed by `submit` (until then it sits in the submission queue).
    pub(super) executed: bool,
    /// Its final completion is in the completion queue (or was lost, in the broken mode).
    pub(super) final_posted: bool,
    pub(super) blocked: bool,
    /// A cancel already missed it once.
    pub(super) survived: bool,
    /// The send's msghdr and the bytes it pointed at when submitted.
    pub(super) msg: *const libc::msghdr,
    pub(super) data: Vec<u8>,
}

pub(super) struct Cqe {
    pub(super) op: OpId,
    pub(super) c: Completion,
    pub(super) not_before: u64,
    pub(super) holds: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BufState {
    /// In the pool: the kernel may fill it.
    Kernel,
    /// Filled, its completion not yet handed to the server.
    Posted,
    /// Handed to the server, not yet recycled.
    Server,
}

/// A server-side socket: an accepted fd not yet closed.
pub(super) struct Sock {
    pub(super) peer: usize,
    /// (slot, generation) of the first operation submitted on it.
    pub(super) owner: Option<(u32, u32)>,
    pub(super) shut_wr: bool,
    pub(super) close_submitted: bool,
    /// A peer reset no operation has reported yet (the kernel reports it once).
    pub(super) err_pending: bool,
}

pub(crate) struct SimDriver {
    pub(super) w: usize,
    pub(super) rng: Rng,
    pub(super) k: Knobs,
    pub(super) doorbell: Doorbell,
    pub(super) trace: SharedTrace,
    pub(super) step: u32,
    pub(super) batch: u64,
    pub(super) next_op: OpId,
    pub(super) sq: Vec<OpId>,
    pub(super) ops: BTreeMap<OpId, OpState>,
    pub(super) cq: Vec<Cqe>,
    pub(super) buf_size: usize,
    pub(super) bufs: Vec<Vec<u8>>,
    pub(super) buf_len: Vec<usize>,
    pub(super) buf_state: Vec<BufState>,
    pub(super) free: VecDeque<u16>,
    pub(super) listeners: Vec<RawFd>,
    /// What each listener's peers speak, and the tag of their lines (`s`: may not publish).
    pub(super) roles: Vec<(Proto, u8)>,
    pub(super) socks: BTreeMap<RawFd, Sock>,
    pub(super) closed_fds: BTreeSet<RawFd>,
    pub(super) peers: Vec<Peer>,
    pub(super) next_gid: u64,
    pub(super) next_resp_gid: u64,
    /// Fds handed out by accept completions in the last `completions` call.
    pub(super) accepted_now: Vec<RawFd>,
    pub(super) violations: RefCell<Vec<Violation>>,
    pub(super) cov: Coverage,
    pub(super) cq_overflows: u64,
}

impl SimDriver {
    pub(super) fn new(
        w: usize,
        rng: Rng,
        k: &Knobs,
        trace: SharedTrace,
        listeners: Vec<(RawFd, (Proto, u8))>,
    ) -> Self {
        let n = k.recv_buffers as usize;
        SimDriver {
            w,
            rng,
            k: k.clone(),
            doorbell: Doorbell::new().expect("eventfd"),
            trace,
            step: 0,
            batch: 0,
            next_op: 1,
            sq: Vec::new(),
            ops: BTreeMap::new(),
            cq: Vec::new(),
            buf_size: k.recv_buffer_bytes,
            bufs: vec![vec![0; k.recv_buffer_bytes]; n],
            buf_len: vec![0; n],
            buf_state: vec![BufState::Kernel; n],
            free: (0..n as u16).collect(),
            roles: listeners.iter().map(|l| l.1).collect(),
            listeners: listeners.iter().map(|l| l.0).collect(),
            socks: BTreeMap::new(),
            closed_fds: BTreeSet::new(),
            peers: Vec::new(),
            next_gid: (w as u64) * 1000,
            next_resp_gid: (w as u64) * 1000 + RESP_GID_OFFSET,
            accepted_now: Vec::new(),
            violations: RefCell::new(Vec::new()),
            cov: Coverage::default(),
            cq_overflows: 0,
        }
    }

    pub(super) fn violate(&self, kind: &'static str, detail: String) {
        self.violations
            .borrow_mut()
            .push(Violation::new(kind, detail));
    }

    pub(super) fn trace(&self, ev: Ev) {
        self.trace.borrow_mut().push(ev);
    }

    pub(super) fn peer_ev(&self, i: usize, what: PeerEv, n: usize) {
        let p = &self.peers[i];
        self.trace(Ev::Peer {
            w: self.w,
            gid: p.gid,
            fd: p.fd,
            what,
            n,
        });
    }

    /// Operations on `fd` whose final completion the server has not received.
    pub(super) fn outstanding_on(&self, fd: RawFd) -> Vec<String> {
        self.ops
            .values()
            .filter(|o| o.fd == fd)
            .map(|o| {
                format!(
                    "{} ({}){}",
                    o.kind.name(),
                    fmt_ud(o.ud),
                    if o.final_posted {
                        ", final completion not yet reaped"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    pub(super) fn has_outstanding(&self, fd: RawFd, kind: Kind) -> bool {
        self.ops.values().any(|o| o.fd == fd && o.kind == kind)
    }

    /// Checks that `fd` is an open, accepted socket used by one connection only.
    pub(super) fn check_sock(&mut self, fd: RawFd, ud: UserData, what: &str) {
        if self.listeners.contains(&fd) {
            return self.violate(
                "op-on-listener",
                format!("{what} ({}) submitted on listener fd {fd}", fmt_ud(ud)),
            );
        }
        match self.socks.get_mut(&fd) {
            None if self.closed_fds.contains(&fd) => self.violate(
                if what == "close" {
                    "double-close"
                } else {
                    "op-on-closed-fd"
                },
                format!(
                    "{what} ({}) submitted on fd {fd}, already closed",
                    fmt_ud(ud)
                ),
            ),
            None => self.violate(
                "op-on-unknown-fd",
                format!(
                    "{what} ({}) submitted on fd {fd}, never accepted",
                    fmt_ud(ud)
                ),
            ),
            Some(s) if s.close_submitted => {
                let kind = if what == "close" {
                    "double-close"
                } else {
                    "op-on-closed-fd"
                };
                self.violate(
                    kind,
                    format!(
                        "{what} ({}) submitted on fd {fd} after its close was submitted",
                        fmt_ud(ud)
                    ),
                )
            }
            Some(s) => {
                let me = (ud.slot(), ud.generation());
                match s.owner {
                    None => s.owner = Some(me),
                    Some(owner) if owner != me => self.violate(
                        "fd-shared",
                        format!(
                            "{what} ({}) submitted on fd {fd}, which belongs to slot {} gen {}",
                            fmt_ud(ud),
                            owner.0,
                            owner.1
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    pub(super) fn push_op(
        &mut self,
        ud: UserData,
        fd: RawFd,
        kind: Kind,
        msg: *const libc::msghdr,
        data: Vec<u8>,
    ) {
        let op = match kind {
            Kind::Accept(_) => Op::Accept,
            Kind::Recv => Op::Recv,
            Kind::Send => Op::Send,
            Kind::Shutdown => Op::Shutdown,
            Kind::Close => Op::Close,
            Kind::CancelFd | Kind::Cancel(_) => Op::Cancel,
        };
        let arg = match kind {
            Kind::Send => data.len() as i64,
            Kind::Cancel(t) => t.to_u64() as i64,
            _ => 0,
        };
        self.trace(Ev::Submit {
            w: self.w,
            op,
            fd,
            ud,
            arg,
        });
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            id,
            OpState {
                ud,
                fd,
                kind,
                executed: false,
                final_posted: false,
                blocked: false,
                survived: false,
                msg,
                data,
            },
        );
        self.sq.push(id);
    }

    pub(super) fn post(
        &mut self,
        id: OpId,
        result: i32,
        more: bool,
        buffer: Option<u16>,
        late: bool,
    ) {
        let op = self.ops.get_mut(&id).expect("posting for a live operation");
        assert!(
            !op.final_posted,
            "simulator bug: completion after the final one"
        );
        if !more {
            op.final_posted = true;
        }
        let mut not_before = self.batch + 1;
        if late {
            let most = if self.rng.chance(100) { 8 } else { 3 };
            not_before += self.rng.range(1, most);
        }
        self.cq.push(Cqe {
            op: id,
            c: Completion {
                user_data: op.ud,
                result,
                more,
                buffer,
            },
            not_before,
            holds: 0,
        });
    }
}

/// Copies out what a msghdr's iovecs point at.
///
/// # Safety
/// `msg` and every buffer it points to must be valid.
pub(crate) unsafe fn read_msg(msg: *const libc::msghdr) -> Vec<u8> {
    let mut data = Vec::new();
    // SAFETY: guaranteed by the caller.
    unsafe {
        let m = &*msg;
        for i in 0..m.msg_iovlen {
            let v = &*m.msg_iov.add(i);
            data.extend_from_slice(std::slice::from_raw_parts(
                v.iov_base as *const u8,
                v.iov_len,
            ));
        }
    }
    data
}

impl Driver for SimDriver {
    fn accept_multi(&mut self, listener: RawFd, ud: UserData) {
        let Some(index) = self.listeners.iter().position(|&l| l == listener) else {
            self.violate(
                "op-on-unknown-fd",
                format!("accept on fd {listener}, not a listener"),
            );
            return self.push_op(
                ud,
                listener,
                Kind::Accept(usize::MAX),
                std::ptr::null(),
                Vec::new(),
            );
        };
        if self.ops.values().any(|o| o.kind == Kind::Accept(index)) {
            self.violate(
                "two-accepts",
                format!("accept armed on listener {index} while one is in flight"),
            );
        }
        self.push_op(
            ud,
            listener,
            Kind::Accept(index),
            std::ptr::null(),
            Vec::new(),
        );
    }

    fn recv_multi(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "recv");
        if self.has_outstanding(fd, Kind::Recv) {
            self.violate(
                "two-recvs",
                format!(
                    "recv ({}) armed on fd {fd} while one is in flight",
                    fmt_ud(ud)
                ),
            );
        }
        self.push_op(ud, fd, Kind::Recv, std::ptr::null(), Vec::new());
    }

    unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, ud: UserData) {
        self.check_sock(fd, ud, "send");
        if self.has_outstanding(fd, Kind::Send) {
            self.violate(
                "two-sends",
                format!(
                    "send ({}) on fd {fd} while another send is in flight",
                    fmt_ud(ud)
                ),
            );
        }
        if self.socks.get(&fd).is_some_and(|s| s.shut_wr) {
            self.violate(
                "send-after-shutdown",
                format!("send ({}) on fd {fd} after SHUT_WR", fmt_ud(ud)),
            );
        }
        // SAFETY: the caller keeps msg and its iovecs valid until the final completion.
        let data = unsafe { read_msg(msg) };
        if data.is_empty() {
            self.violate(
                "empty-send",
                format!("send ({}) of 0 bytes on fd {fd}", fmt_ud(ud)),
            );
        }
        self.push_op(ud, fd, Kind::Send, msg, data);
    }

    fn shutdown_write(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "shutdown");
        if self.has_outstanding(fd, Kind::Send) {
            self.violate(
                "shutdown-during-send",
                format!(
                    "SHUT_WR ({}) on fd {fd} while a send is in flight",
                    fmt_ud(ud)
                ),
            );
        }
        if let Some(s) = self.socks.get_mut(&fd) {
            let twice = std::mem::replace(&mut s.shut_wr, true);
            if twice {
                self.violate(
                    "double-shutdown",
                    format!("SHUT_WR ({}) on fd {fd} twice", fmt_ud(ud)),
                );
            }
        }
        self.push_op(ud, fd, Kind::Shutdown, std::ptr::null(), Vec::new());
    }

    fn close(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "close");
        let outstanding = self.outstanding_on(fd);
        if !outstanding.is_empty() {
            self.violate(
                "close-with-ops-in-flight",
                format!(
                    "close ({}) of fd {fd} while in flight: {}",
                    fmt_ud(ud),
                    outstanding.join("; ")
                ),
            );
        }
        if let Some(s) = self.socks.get_mut(&fd) {
            s.close_submitted = true;
        }
        self.push_op(ud, fd, Kind::Close, std::ptr::null(), Vec::new());
    }

    fn cancel_fd(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "cancel_fd");
        self.push_op(ud, fd, Kind::CancelFd, std::ptr::null(), Vec::new());
    }

    fn cancel(&mut self, target: UserData, ud: UserData) {
        // Counted against the target's fd (for the close check); a target not in flight is
        // legal (-ENOENT) and then belongs to the connection's fd, or to none.
        let fd = self
            .ops
            .values()
            .find(|o| o.ud == target)
            .map(|o| o.fd)
            .or_else(|| {
                self.socks
                    .iter()
                    .find(|(_, s)| s.owner == Some((ud.slot(), ud.generation())))
                    .map(|(fd, _)| *fd)
            })
            .unwrap_or(-1);
        if fd >= 0 && !self.listeners.contains(&fd) {
            self.check_sock(fd, ud, "cancel");
        }
        self.push_op(ud, fd, Kind::Cancel(target), std::ptr::null(), Vec::new());
    }

    fn submit_and_wait(&mut self, _timeout: Duration) -> std::io::Result<()> {
        self.execute();
        Ok(())
    }

    fn submit(&mut self) -> std::io::Result<()> {
        self.execute();
        Ok(())
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        self.batch += 1;
        // Hold some back (to a later batch), never letting a later completion of the same
        // user_data overtake an earlier one.
        let mut blocked: Vec<UserData> = Vec::new();
        let mut groups: Vec<(UserData, VecDeque<Cqe>)> = Vec::new();
        let mut kept = Vec::new();
        for mut e in std::mem::take(&mut self.cq) {
            let ud = e.c.user_data;
            let hold = e.not_before > self.batch
                || blocked.contains(&ud)
                || (e.holds < 3 && self.rng.chance(self.k.hold_pm));
            if hold {
                e.holds = e.holds.saturating_add(1);
                if !blocked.contains(&ud) {
                    blocked.push(ud);
                }
                kept.push(e);
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == ud) {
                Some((_, q)) => q.push_back(e),
                None => groups.push((ud, VecDeque::from([e]))),
            }
        }
        self.cq = kept;
        // Interleave the operations at random, each in its own order.
        while !groups.is_empty() {
            let g = self.rng.below(groups.len() as u64) as usize;
            let e = groups[g].1.pop_front().expect("non-empty group");
            if groups[g].1.is_empty() {
                groups.swap_remove(g);
            }
            let late = e.holds > 0;
            if late {
                self.cov.bump(Cov::held_back);
            }
            if let Some(b) = e.c.buffer {
                let st = &mut self.buf_state[b as usize];
                assert_eq!(*st, BufState::Posted, "simulator bug: buffer {b} state");
                *st = BufState::Server;
            }
            let op = &self.ops[&e.op];
            if matches!(op.kind, Kind::Accept(_)) && e.c.result >= 0 {
                self.accepted_now.push(e.c.result);
            }
            if !e.c.more {
                self.ops.remove(&e.op);
            }
            self.trace(Ev::Deliver {
                w: self.w,
                c: e.c,
                late,
            });
            out.push(e.c);
        }
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        let i = id as usize;
        match self.buf_state.get(i) {
            Some(BufState::Server) if len <= self.buf_len[i] => {}
            state => self.violate(
                "buffer-read",
                format!(
                    "read of buffer {id} ({len} bytes) in state {state:?} holding {} bytes",
                    self.buf_len.get(i).copied().unwrap_or(0)
                ),
            ),
        }
        let b = self.bufs.get(i).map(|b| &b[..]).unwrap_or(&[]);
        &b[..len.min(b.len())]
    }

    fn recycle(&mut self, id: u16) {
        match self.buf_state.get(id as usize) {
            Some(BufState::Server) => {
                self.buf_state[id as usize] = BufState::Kernel;
                self.free.push_back(id);
            }
            state => self.violate(
                "buffer-recycle",
                format!("recycle of buffer {id} in state {state:?}: recycled twice, or never handed out"),
            ),
        }
    }

    fn buffers_available(&self) -> usize {
        self.free.len()
    }

    /// What the peer has not read yet stands for what it has not acknowledged (a peer's window
    /// is what it reads), plus our FIN until it has seen it.
    fn unacked_bytes(&self, fd: RawFd) -> std::io::Result<usize> {
        let Some(sock) = self.socks.get(&fd) else {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        };
        let p = &self.peers[sock.peer];
        if p.reset {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        Ok(p.to_peer.len() + usize::from(p.server_fin && !p.eof_seen))
    }

    fn discard_unread(&mut self, fd: RawFd, _max: usize) -> usize {
        let Some(sock) = self.socks.get(&fd) else {
            return 0;
        };
        let p = &mut self.peers[sock.peer];
        let n = p.inbound.len();
        p.inbound.clear();
        n
    }

    fn doorbell(&self) -> Doorbell {
        self.doorbell.clone()
    }

    fn stats(&self) -> DriverStats {
        DriverStats {
            sq_full: 0,
            cq_overflow: self.cq_overflows,
            enter_retries: 0,
        }
    }
}
