//! The network pump: peers arrive, publish, read, FIN and reset; armed accepts and recvs are
//! fed from their side, with faults (EMFILE, ENOBUFS, CQ overflow) injected.

use std::os::fd::RawFd;

use crate::topics::Proto;

use super::driver::{BufState, Kind, OpId, SimDriver, Sock};
use super::peer::{Peer, PeerState, Reader, StreamCtx};
use super::trace::{Cov, PeerEv};

/// First fake fd; worker `w` uses `FD_BASE + w * FD_STRIDE` upward.
pub(super) const FD_BASE: RawFd = 900_000;
pub(super) const FD_STRIDE: RawFd = 10_000;
/// Bytes a peer can have written that the server has not received yet (its socket buffers).
pub(super) const INBOUND_MAX: usize = 4096;

impl SimDriver {
    pub(super) fn alloc_fd(&self) -> RawFd {
        let mut fd = FD_BASE + self.w as RawFd * FD_STRIDE;
        while self.socks.contains_key(&fd) {
            fd += 1;
        }
        fd
    }

    /// Feeds every armed operation from the peers' side of the network.
    pub(super) fn pump(&mut self) {
        let armed: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| o.executed && !o.final_posted && o.kind.waits())
            .map(|(id, _)| *id)
            .collect();
        for id in armed {
            let Some(op) = self.ops.get(&id) else {
                continue;
            };
            if op.final_posted {
                continue;
            }
            match op.kind {
                Kind::Accept(l) => self.pump_accept(id, l),
                Kind::Recv => self.pump_recv(id),
                Kind::Send => self.try_send(id),
                _ => {}
            }
        }
    }

    pub(super) fn pump_accept(&mut self, id: OpId, listener: usize) {
        for _ in 0..self.rng.range(1, 3) {
            let Some(pi) = self
                .peers
                .iter()
                .position(|p| p.state == PeerState::Backlog && p.listener == listener)
            else {
                return;
            };
            if self.rng.chance(self.k.emfile_pm) {
                self.cov.bump(Cov::accept_emfile);
                return self.post(id, -libc::EMFILE, false, None, false);
            }
            let fd = self.alloc_fd();
            self.socks.insert(
                fd,
                Sock {
                    peer: pi,
                    owner: None,
                    shut_wr: false,
                    close_submitted: false,
                    // Reset while waiting in the backlog: the first operation reports it.
                    err_pending: self.peers[pi].reset,
                },
            );
            self.closed_fds.remove(&fd);
            let p = &mut self.peers[pi];
            p.fd = Some(fd);
            p.state = PeerState::Open;
            self.cov.bump(Cov::accepted);
            if p.proto == Proto::Resp {
                self.cov.bump(Cov::resp_peers);
            }
            let more = !self.rng.chance(self.k.overflow_pm);
            if !more {
                self.cq_overflows += 1;
                self.cov.bump(Cov::cq_overflow);
            }
            self.post(id, fd, more, None, false);
            if !more {
                return;
            }
        }
    }

    pub(super) fn pump_recv(&mut self, id: OpId) {
        let fd = self.ops[&id].fd;
        let Some(sock) = self.socks.get(&fd) else {
            return;
        };
        let pi = sock.peer;
        let mut chunks = self.rng.range(1, 4);
        loop {
            let sock = self.socks.get_mut(&fd).expect("open");
            if sock.err_pending {
                sock.err_pending = false;
                return self.post(id, -libc::ECONNRESET, false, None, false);
            }
            let p = &mut self.peers[pi];
            if !p.inbound.is_empty() {
                if chunks == 0 {
                    return;
                }
                chunks -= 1;
                let Some(b) = self.free.pop_front() else {
                    self.cov.bump(Cov::recv_enobufs);
                    return self.post(id, -libc::ENOBUFS, false, None, false);
                };
                let mut n = self.buf_size.min(p.inbound.len());
                if n > 1 && self.rng.chance(300) {
                    n = self.rng.range(1, n as u64) as usize;
                }
                for (dst, src) in self.bufs[b as usize].iter_mut().zip(p.inbound.drain(..n)) {
                    *dst = src;
                }
                self.buf_len[b as usize] = n;
                self.buf_state[b as usize] = BufState::Posted;
                let more = !self.rng.chance(self.k.overflow_pm);
                if !more {
                    self.cq_overflows += 1;
                    self.cov.bump(Cov::cq_overflow);
                }
                self.post(id, n as i32, more, Some(b), false);
                if !more {
                    return;
                }
            } else if p.fin || p.reset {
                // FIN, or a reset already reported once: end of file.
                return self.post(id, 0, false, None, false);
            } else {
                return;
            }
        }
    }

    /// The peers act: connect, publish, read, FIN, reset.
    pub(super) fn net_step(&mut self, step: u32, arrivals: bool, ctx: &StreamCtx) {
        self.step = step;
        if arrivals && self.peers.len() < self.k.max_peers && self.rng.chance(self.k.arrive_pm) {
            let listener = self.rng.below(self.listeners.len() as u64) as usize;
            let role = self.roles[listener];
            let next = match role.0 {
                Proto::Lines => &mut self.next_gid,
                Proto::Resp => &mut self.next_resp_gid,
                Proto::WebSocket => unreachable!("the simulated ring opens no WebSocket listener"),
            };
            let gid = *next;
            *next += 1;
            let p = Peer::new(gid, listener, role, step, &mut self.rng);
            self.peers.push(p);
            let what = match role.0 {
                Proto::Lines => PeerEv::Arrive,
                Proto::Resp => PeerEv::ArriveResp,
                Proto::WebSocket => unreachable!("the simulated ring opens no WebSocket listener"),
            };
            self.peer_ev(self.peers.len() - 1, what, 0);
        }
        for i in 0..self.peers.len() {
            // Peers in the backlog act too: a client may write, FIN or reset before its
            // connection is accepted.
            if self.peers[i].state != PeerState::Gone && !self.peers[i].reset {
                self.peer_act(i, step, ctx);
            }
        }
    }

    pub(super) fn peer_act(&mut self, i: usize, step: u32, ctx: &StreamCtx) {
        if self.peers[i].reset_at.is_some_and(|s| s <= step) {
            return self.reset_peer(i);
        }
        let p = &mut self.peers[i];
        if !p.fin && self.rng.chance(p.publish_pm) {
            let lines = if p.flood { self.rng.range(1, 6) } else { 1 };
            let before = p.inbound.len();
            let overlong = p.sent_overlong;
            for _ in 0..lines {
                if p.inbound.len() >= INBOUND_MAX {
                    break;
                }
                p.write_line(&mut self.rng, ctx.max_frame);
            }
            let (n, now_overlong) = (p.inbound.len() - before, p.sent_overlong);
            if now_overlong && !overlong {
                self.cov.bump(Cov::overlong_lines);
                self.peer_ev(i, PeerEv::Overlong, n);
            } else if n > 0 {
                self.peer_ev(i, PeerEv::Publish, n);
            }
        }
        if self.peers[i].state == PeerState::Backlog {
            let p = &mut self.peers[i];
            if p.fin_at.is_some_and(|s| s <= step) && !p.fin {
                p.fin = true;
                self.cov.bump(Cov::fins);
                self.peer_ev(i, PeerEv::Fin, 0);
            }
            return;
        }
        let p = &mut self.peers[i];
        let want = match p.reader {
            Reader::Fast => p.to_peer.len(),
            Reader::Slow if self.rng.chance(300) => self.rng.range(1, 48) as usize,
            Reader::Slow | Reader::Never => 0,
        };
        let n = want.min(p.to_peer.len());
        if n > 0 {
            let bytes: Vec<u8> = p.to_peer.drain(..n).collect();
            let (replies, others, from_resp) = (p.resp.replies, p.resp.others, p.lines_from_resp);
            match p.receive(&bytes, ctx) {
                Ok(lines) => {
                    self.cov.add_n(Cov::lines_checked, lines);
                    if p.proto == Proto::Resp {
                        self.cov.add_n(Cov::resp_messages_checked, lines);
                        self.cov.add_n(Cov::resp_replies, p.resp.replies - replies);
                        self.cov
                            .add_n(Cov::resp_other_replies, p.resp.others - others);
                    }
                    let from_resp = p.lines_from_resp - from_resp;
                    self.cov.add_n(Cov::resp_lines_to_line_peers, from_resp);
                }
                Err(e) => self.violate("stream", e),
            }
            self.peer_ev(i, PeerEv::Read, n);
        }
        let p = &mut self.peers[i];
        if p.server_fin && p.to_peer.is_empty() && !p.eof_seen {
            p.eof_seen = true;
            self.peer_ev(i, PeerEv::Eof, 0);
        }
        let p = &mut self.peers[i];
        let fin_now = p.fin_at.is_some_and(|s| s <= step)
            || (p.eof_seen && p.closes_on_eof && self.rng.chance(400));
        if fin_now && !p.fin {
            p.fin = true;
            self.cov.bump(Cov::fins);
            self.peer_ev(i, PeerEv::Fin, 0);
        }
    }

    pub(super) fn reset_peer(&mut self, i: usize) {
        let p = &mut self.peers[i];
        p.reset = true;
        p.inbound.clear();
        p.partial.clear();
        p.to_peer.clear();
        if let Some(s) = p.fd.and_then(|fd| self.socks.get_mut(&fd)) {
            s.err_pending = true;
        }
        self.cov.bump(Cov::resets);
        self.peer_ev(i, PeerEv::Reset, 0);
    }

    /// The server refused `fd` (connection limit) with plain syscalls, which failed on the fake
    /// fd: the socket is gone.
    pub(super) fn refused(&mut self, fd: RawFd) {
        if let Some(sock) = self.socks.remove(&fd) {
            self.peers[sock.peer].state = PeerState::Gone;
            self.closed_fds.insert(fd);
            self.cov.bump(Cov::refused);
            self.peer_ev(sock.peer, PeerEv::Refused, 0);
        }
    }
}
