//! What the simulated kernel does when it runs a submission: shutdown, close, cancel (by fd
//! or by user_data, possibly missing a running send) and sends into the peer's window.

use std::os::fd::RawFd;

use ringfan_ring::UserData;

use super::driver::{read_msg, Kind, OpId, SimDriver};
use super::peer::PeerState;
use super::trace::{fmt_ud, Cov};

impl SimDriver {
    /// Executes the submission queue in order, as `io_uring_enter` does.
    pub(super) fn execute(&mut self) {
        let sq = std::mem::take(&mut self.sq);
        for id in sq {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            op.executed = true;
            let (fd, kind) = (op.fd, op.kind);
            if !self.socks.contains_key(&fd) && !matches!(kind, Kind::Accept(_) | Kind::Cancel(_)) {
                // Submitted on a bad fd (already reported): fail it as the kernel would.
                self.post(id, -libc::EBADF, false, None, false);
                continue;
            }
            match kind {
                Kind::Accept(_) | Kind::Recv => {} // armed; `pump` feeds them
                Kind::Send => self.try_send(id),
                Kind::Shutdown => self.exec_shutdown(id, fd),
                Kind::Close => self.exec_close(id, fd),
                Kind::CancelFd => self.exec_cancel_fd(id, fd),
                Kind::Cancel(target) => self.exec_cancel(id, target),
            }
        }
    }

    pub(super) fn exec_shutdown(&mut self, id: OpId, fd: RawFd) {
        let pi = self.socks[&fd].peer;
        let p = &mut self.peers[pi];
        // shutdown(2) on a reset socket (TCP_CLOSE): ENOTCONN; it does not consume the error.
        let result = if p.reset {
            -libc::ENOTCONN
        } else {
            p.server_fin = true;
            0
        };
        self.post(id, result, false, None, false);
        if result == 0 && self.rng.chance(self.k.reset_after_shut_pm) {
            self.peers[pi].reset_at = Some(self.step + self.rng.range(0, 3) as u32);
            self.cov.bump(Cov::resets_after_shut_wr);
        }
    }

    pub(super) fn exec_close(&mut self, id: OpId, fd: RawFd) {
        // Operations still running here were reported at submission; end them as the kernel
        // would, so the run can be reported rather than wedged.
        for oid in self.running_on(fd, id) {
            self.post(oid, -libc::ECANCELED, false, None, false);
        }
        if let Some(sock) = self.socks.remove(&fd) {
            self.peers[sock.peer].state = PeerState::Gone;
        }
        self.closed_fds.insert(fd);
        self.post(id, 0, false, None, false);
    }

    /// Operations other than `except` executing on `fd` and still waiting for their final.
    pub(super) fn running_on(&self, fd: RawFd, except: OpId) -> Vec<OpId> {
        self.ops
            .iter()
            .filter(|(oid, o)| {
                **oid != except && o.fd == fd && o.executed && !o.final_posted && o.kind.waits()
            })
            .map(|(oid, _)| *oid)
            .collect()
    }

    /// Whether a cancel misses this operation: a send already running (in an io-wq worker)
    /// survives one cancel; the next one reaches it, as an interrupted worker would end it.
    pub(super) fn survives_cancel(&mut self, oid: OpId) -> bool {
        let op = self.ops.get_mut(&oid).expect("live");
        if op.kind == Kind::Send && !op.survived && self.rng.chance(self.k.survive_pm) {
            op.survived = true;
            self.cov.bump(Cov::survived_cancels);
            return true;
        }
        false
    }

    pub(super) fn exec_cancel_fd(&mut self, id: OpId, fd: RawFd) {
        let mut n = 0;
        for oid in self.running_on(fd, id) {
            if !self.survives_cancel(oid) {
                n += 1;
                self.cancel_op(oid);
            }
        }
        self.post(id, n, false, None, false);
    }

    pub(super) fn exec_cancel(&mut self, id: OpId, target: UserData) {
        let found = self
            .ops
            .iter()
            .find(|(oid, o)| {
                **oid != id && o.ud == target && o.executed && !o.final_posted && o.kind.waits()
            })
            .map(|(oid, _)| *oid);
        match found {
            Some(oid) if self.survives_cancel(oid) => {
                self.post(id, -libc::EALREADY, false, None, false);
            }
            Some(oid) => {
                self.cancel_op(oid);
                self.post(id, 0, false, None, false);
            }
            None => {
                self.cov.bump(Cov::cancel_not_found);
                self.post(id, -libc::ENOENT, false, None, false);
            }
        }
    }

    pub(super) fn cancel_op(&mut self, oid: OpId) {
        if self.k.lose_cancel_finals {
            // Broken driver: the final completion never comes.
            self.ops.get_mut(&oid).expect("live").final_posted = true;
            return;
        }
        let late = self.rng.chance(self.k.late_pm);
        if late {
            self.cov.bump(Cov::late_cancels);
        }
        self.post(oid, -libc::ECANCELED, false, None, late);
    }

    /// Runs a send: moves what the peer's window takes, or stays blocked.
    pub(super) fn try_send(&mut self, id: OpId) {
        let fd = self.ops[&id].fd;
        let Some(sock) = self.socks.get_mut(&fd) else {
            return;
        };
        if sock.err_pending {
            sock.err_pending = false;
            self.cov.bump(Cov::send_errors);
            let e = if self.rng.chance(500) {
                libc::ECONNRESET
            } else {
                libc::EPIPE
            };
            return self.post(id, -e, false, None, false);
        }
        let pi = sock.peer;
        if self.peers[pi].reset {
            self.cov.bump(Cov::send_errors);
            return self.post(id, -libc::EPIPE, false, None, false);
        }
        if self.rng.chance(self.k.send_enobufs_pm) {
            self.cov.bump(Cov::send_enobufs);
            return self.post(id, -libc::ENOBUFS, false, None, false);
        }
        let space = self.peers[pi]
            .window
            .saturating_sub(self.peers[pi].to_peer.len());
        if space == 0 {
            let op = self.ops.get_mut(&id).expect("live");
            if !op.blocked {
                op.blocked = true;
                self.cov.bump(Cov::blocked_sends);
                if self.rng.chance(self.k.reset_on_block_pm) && self.peers[pi].reset_at.is_none() {
                    self.peers[pi].reset_at = Some(self.step + self.rng.range(1, 20) as u32);
                    self.cov.bump(Cov::resets_during_flush);
                }
            }
            return;
        }
        // The kernel reads the iovecs now: they must still hold what was submitted.
        let op = &self.ops[&id];
        // SAFETY: the caller of send_msg keeps msg and what it points to valid until the final
        // completion of this send, which has not been posted yet.
        let now = unsafe { read_msg(op.msg) };
        if now != op.data {
            self.violate(
                "send-memory-changed",
                format!(
                    "send ({}) on fd {fd}: the iovecs changed while it was in flight ({} bytes submitted, {} now)",
                    fmt_ud(op.ud),
                    op.data.len(),
                    now.len()
                ),
            );
        }
        let len = op.data.len();
        let mut n = len.min(space);
        if n > 1 && self.rng.chance(self.k.short_pm) {
            n = self.rng.range(1, n as u64 - 1) as usize;
        }
        if n < len {
            self.cov.bump(Cov::short_sends);
        }
        let data = self.ops[&id].data[..n].to_vec();
        self.peers[pi].to_peer.extend(data);
        self.post(id, n as i32, false, None, false);
    }
}
