//! Listeners: multishot accept, the connection limit, refusals, and running out of fds.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ringfan_ring::errno::{self, Outcome};
use ringfan_ring::{Completion, Driver, Op, UserData};

use super::shutdown::Phase;
use super::Worker;
use crate::lifecycle::CloseReason;
use crate::net;
use crate::topics::Proto;

/// Slots used in the listeners' user_data (`LISTENER_SLOT - index`); connection slots never
/// reach them (the doorbell uses u32::MAX).
pub(super) const LISTENER_SLOT: u32 = u32::MAX - 1;
const REFUSAL_LINE: &[u8] = b"-ERR server full\n";
/// Back-off before re-arming accept after EMFILE/ENFILE or an unexpected error (no busy loop).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A listening socket handed to a worker, and what its connections speak.
pub struct ListenFd {
    pub fd: OwnedFd,
    pub proto: Proto,
    /// Connections accepted here may publish (lines: false when a publish listener exists).
    pub publishers: bool,
}

impl ListenFd {
    /// The line listener and, if configured, the publish listener (then the only one whose
    /// connections may publish lines).
    pub fn lines(listener: OwnedFd, publish: Option<OwnedFd>) -> Vec<ListenFd> {
        let publishers = publish.is_none();
        std::iter::once(ListenFd {
            fd: listener,
            proto: Proto::Lines,
            publishers,
        })
        .chain(publish.map(|fd| ListenFd {
            fd,
            proto: Proto::Lines,
            publishers: true,
        }))
        .collect()
    }
}

/// One of the worker's listeners.
pub(super) struct Listener {
    pub(super) fd: Option<OwnedFd>,
    pub(super) armed: bool,
    pub(super) retry_at: Option<Instant>,
    pub(super) proto: Proto,
    /// Connections accepted here may publish.
    pub(super) publishers: bool,
}

pub(super) fn accept_ud(index: usize) -> UserData {
    UserData::new(LISTENER_SLOT - index as u32, 0, Op::Accept)
}

impl<D: Driver> Worker<D> {
    pub(crate) fn arm_accept(&mut self, index: usize) {
        let l = &mut self.listeners[index];
        debug_assert!(!l.armed);
        l.armed = true;
        let fd = l.fd.as_ref().expect("listener open").as_raw_fd();
        self.driver.accept_multi(fd, accept_ud(index));
    }

    pub(crate) fn accepting(&self) -> bool {
        self.listeners.iter().any(|l| l.armed)
    }

    pub(crate) fn on_accept(&mut self, index: usize, c: Completion) {
        if !c.more {
            self.listeners[index].armed = false;
        }
        if c.result >= 0 {
            self.on_accepted(index, c.result);
        } else {
            let errno = -c.result;
            match errno::accept(errno) {
                Outcome::Cancelled | Outcome::PeerGone | Outcome::Retry => {}
                Outcome::OutOfFds => self.on_out_of_fds(index),
                Outcome::Bug | Outcome::Unexpected | Outcome::NoBuffers => {
                    self.log_unexpected(Op::Accept, errno)
                }
            }
        }
        let l = &mut self.listeners[index];
        if !l.armed && self.phase == Phase::Running {
            if c.result < 0 && errno::accept(-c.result) != Outcome::PeerGone {
                // EMFILE, memory and unexpected errors: re-arming at once would fail again at once.
                l.retry_at = Some(self.now + ACCEPT_BACKOFF);
            } else {
                // Ended without error (e.g. completion-queue overflow): re-arm at once.
                self.arm_accept(index);
            }
        }
        let l = &mut self.listeners[index];
        if !l.armed && self.phase != Phase::Running {
            // Final accept completion after the cancel: nothing refers to the listener any more.
            l.fd = None;
        }
    }

    /// A new connection: refused if the server is full, else subscribed.
    pub(crate) fn on_accepted(&mut self, index: usize, fd: RawFd) {
        self.stats.accepted += 1;
        if !self.shared.admit() {
            // Never leave it waiting: one line, then FIN.
            net::refuse(fd, REFUSAL_LINE);
            self.stats.refused_limit += 1;
            if self.stats.refused_limit.is_power_of_two() {
                tracing::warn!(worker = self.id, refused = self.stats.refused_limit,
                    "connection limit reached (RINGFAN_MAX_CONNECTIONS = {}): refusing new connections",
                    self.shared.max_connections);
            }
            return;
        }
        if let Err(e) = net::tune_accepted(
            fd,
            self.cfg.keepalive_secs,
            self.cfg.user_timeout_ms,
            self.cfg.notsent_lowat,
        ) {
            self.log_unexpected_io("setsockopt on an accepted connection", &e);
        }
        let (proto, publishers) = (
            self.listeners[index].proto,
            self.listeners[index].publishers,
        );
        let slot = self.conn_open(fd, proto);
        self.conns[slot].may_publish = publishers;
        if self.phase >= Phase::Draining {
            // Accepted while shutting down: greet it with a clean FIN.
            self.conn_unsubscribe(slot, CloseReason::Shutdown);
        }
    }

    /// Accept failed with EMFILE/ENFILE: the connections stay in the listen backlog, where clients
    /// would hang. Free the spare fd, accept and refuse everything waiting, take the spare back.
    /// The caller re-arms accept after a back-off, so the condition costs no CPU while it lasts.
    pub(crate) fn on_out_of_fds(&mut self, index: usize) {
        self.stats.accept_emfile += 1;
        if self.stats.accept_emfile.is_power_of_two() {
            tracing::warn!(worker = self.id, times = self.stats.accept_emfile,
                "out of file descriptors (EMFILE/ENFILE): refusing waiting connections, retrying accept every {:?}",
                ACCEPT_BACKOFF);
        }
        let Some(fd) = self.listeners[index].fd.as_ref().map(|l| l.as_raw_fd()) else {
            return;
        };
        self.spare_fd = None;
        if net::set_nonblocking(fd, true).is_err() {
            return;
        }
        // Bounded: at most the backlog's length per attempt.
        for _ in 0..self.cfg.listen_backlog.max(1) {
            match net::accept_now(fd) {
                Ok(Some(conn)) => {
                    net::refuse(conn, REFUSAL_LINE);
                    self.stats.refused_emfile += 1;
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = net::set_nonblocking(fd, false);
        self.spare_fd = std::fs::File::open("/dev/null").ok();
    }
}
