//! A per-thread event loop for socket servers: io_uring, or epoll where io_uring is refused.
//!
//! The crate knows sockets and completions, nothing of what the bytes mean. The server drives a
//! [`Driver`]: it submits operations tagged with a [`UserData`] and reads back [`Completion`]s.
//! The trait is deliberately narrow (a dozen calls) so that a readiness-based driver or a
//! simulated, fault-injecting ring can stand in for io_uring without touching connection logic.
//!
//! Two drivers implement it: [`Uring`] (multishot io_uring operations, a provided-buffer ring)
//! and [`Epoll`], which turns epoll readiness into the same completions (same multishot
//! `more` flags, same buffer-pool rules, `-ENOBUFS` and `-ECANCELED` where io_uring posts them)
//! for hosts where io_uring is disabled by sysctl or seccomp.
//!
//! Rules every driver keeps, and every caller may rely on:
//! - At most the operations submitted complete; each ends with exactly one *final* completion
//!   (`more == false`); multishot operations post zero or more non-final ones before it.
//! - Memory handed to the kernel (the `msghdr` of a send and what it points to) is the caller's
//!   to keep valid until that operation's final completion.
//! - A full submission queue is flushed and retried inside the driver, never an error.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

mod buf_ring;
mod doorbell;
mod epoll;
pub mod errno;
mod uring;
mod user_data;

pub use doorbell::Doorbell;
pub use epoll::Epoll;
pub use uring::{probe, RingConfig, RingFeatures, SetupError, Uring};
pub use user_data::{Op, UserData};

/// One completion, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub user_data: UserData,
    /// The operation's result: bytes, an fd, 0, or a negated errno.
    pub result: i32,
    /// True while a multishot operation stays armed; false on every final completion.
    pub more: bool,
    /// The provided buffer that holds received bytes, to be handed back with
    /// [`Driver::recycle`] once read.
    pub buffer: Option<u16>,
}

/// Counters a driver keeps about itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Times the submission queue was full and had to be flushed before a push.
    pub sq_full: u64,
    /// Times the kernel reported completion-queue overflow (multishots end then; callers re-arm).
    pub cq_overflow: u64,
    /// Times a wait, or the flush of a full submission queue, returned EINTR/EBUSY/EAGAIN and
    /// was retried.
    pub enter_retries: u64,
}

/// What the connection logic needs from an I/O backend.
pub trait Driver {
    /// Arms a multishot accept: one completion per accepted fd (`result` is the fd).
    fn accept_multi(&mut self, listener: RawFd, user_data: UserData);

    /// Arms a multishot receive into the provided-buffer pool: one completion per chunk
    /// (`buffer` set), `result == 0` on the peer's FIN.
    fn recv_multi(&mut self, fd: RawFd, user_data: UserData);

    /// Sends the gathered iovecs of `msg`.
    ///
    /// # Safety
    /// `msg`, its iovec array and every buffer they point to must stay valid and unchanged until
    /// the final completion for `user_data` has been returned by [`Driver::completions`].
    unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, user_data: UserData);

    /// `shutdown(fd, SHUT_WR)`: the peer reads EOF once what was sent before arrives.
    fn shutdown_write(&mut self, fd: RawFd, user_data: UserData);

    /// Closes `fd`. The caller must have no operation on `fd` in flight.
    fn close(&mut self, fd: RawFd, user_data: UserData);

    /// Cancels every operation in flight on `fd`; each then posts its final completion.
    ///
    /// io_uring finds the targets by walking every armed poll of the ring: with thousands of
    /// connections closing at once that is quadratic. The server therefore cancels each
    /// operation by its user_data ([`Driver::cancel`], a hash lookup). This stays for callers
    /// that do not track what they have in flight, and the driver tests use it to check that
    /// both drivers end every operation on an fd the same way.
    fn cancel_fd(&mut self, fd: RawFd, user_data: UserData);

    /// Cancels the operation tagged `target`.
    fn cancel(&mut self, target: UserData, user_data: UserData);

    /// Submits what is queued and waits until a completion is ready or `timeout` passes.
    fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()>;

    /// Submits what is queued without waiting.
    fn submit(&mut self) -> io::Result<()>;

    /// Appends every ready completion to `out`. Doorbell completions are re-armed by the driver
    /// and reported with [`Op::Doorbell`].
    fn completions(&mut self, out: &mut Vec<Completion>);

    /// The first `len` bytes of provided buffer `id`. Panics unless a completion handed `id` out
    /// and it has not been recycled since: any other buffer may be being written by the kernel.
    fn buffer(&self, id: u16, len: usize) -> &[u8];

    /// Hands buffer `id` back to the kernel. Panics unless `id` is held (recycled twice, or never
    /// handed out), since two receives would then share one buffer.
    fn recycle(&mut self, id: u16);

    /// Provided buffers currently owned by the kernel (available for receives).
    fn buffers_available(&self) -> usize;

    /// Wakes this driver's wait from any thread.
    fn doorbell(&self) -> Doorbell;

    fn stats(&self) -> DriverStats;

    /// Bytes of `fd`'s send queue the peer has not acknowledged yet, unsent ones included, and
    /// one for a FIN not yet acknowledged (`SIOCOUTQ`, the same request number as `TIOCOUTQ`: `write_seq - snd_una`). Zero once the peer
    /// has received everything written and, after `SHUT_WR`, the FIN.
    ///
    /// A plain synchronous ioctl on both drivers; a simulated driver answers from its model.
    fn unacked_bytes(&self, fd: RawFd) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one c_int through the pointer, which points at a live local.
        let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as usize)
    }

    /// Throws away what `fd` has received, up to `max` bytes, without blocking; returns how
    /// much. For a graceful close: `close` with unread data sends a reset. The caller must have no
    /// receive in flight on `fd`. A simulated driver answers from its model.
    fn discard_unread(&mut self, fd: RawFd, max: usize) -> usize {
        discard_unread(fd, max)
    }
}

/// Drops up to `max` bytes queued on TCP socket `fd`, without waiting for more and without
/// copying them; returns how many. `close` with unread bytes in the receive queue sends a reset
/// instead of the FIN (RFC 2525), so a graceful close reads them away first.
pub fn discard_unread(fd: RawFd, max: usize) -> usize {
    let mut total = 0;
    while total < max {
        // SAFETY: with MSG_TRUNC, TCP discards up to `max - total` bytes and copies nothing, so
        // no buffer is written (man 7 tcp); MSG_DONTWAIT keeps a blocking socket from blocking.
        let n = unsafe {
            libc::recv(
                fd,
                std::ptr::null_mut(),
                max - total,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        // recv errno table: EINTR, retry; EAGAIN, nothing more queued; 0, the peer's FIN;
        // anything else (ECONNRESET...): the connection is gone, nothing left to protect.
        match n {
            1.. => total += (n as usize).min(max - total),
            0 => break,
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => break,
        }
    }
    total
}
