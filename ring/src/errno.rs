//! What each operation's errors mean: one table per operation, one line per errno saying why.
//!
//! Both drivers report the same errnos (the epoll driver maps its syscalls' errors onto
//! io_uring's), so the connection logic decides once, here, what an error means, and an errno
//! that has no line is `Unexpected`: logged once with the operation's name and counted by the
//! caller, never silently ignored.

/// What an operation's failure means for the connection (or listener) it ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Transient: the same operation will succeed later (after a back-off where noted).
    Retry,
    /// The peer reset, vanished or timed out: end the connection abortively, nothing to flush.
    PeerGone,
    /// The provided-buffer pool is empty: re-arm once buffers come back. No data is lost.
    NoBuffers,
    /// The process or system is out of file descriptors (accept only).
    OutOfFds,
    /// Ended by our own cancel.
    Cancelled,
    /// An error only a bug can cause (an fd we closed, an argument we built): panic.
    Bug,
    /// Not in the table: log with the operation's name, count, treat as fatal for the connection.
    Unexpected,
}

/// A multishot accept's final completion with an error.
pub fn accept(errno: i32) -> Outcome {
    match errno {
        // Our cancel at shutdown.
        libc::ECANCELED => Outcome::Cancelled,
        // The connection stays in the backlog: refuse what waits, re-arm after a back-off.
        libc::EMFILE | libc::ENFILE => Outcome::OutOfFds,
        // The client reset before we accepted it; the listener is fine.
        libc::ECONNABORTED | libc::EPROTO => Outcome::PeerGone,
        // Kernel memory short for a new socket: re-arm after a back-off.
        libc::ENOBUFS | libc::ENOMEM | libc::EAGAIN | libc::EINTR => Outcome::Retry,
        // Not a listening socket of ours.
        libc::EBADF | libc::ENOTSOCK | libc::EINVAL | libc::EOPNOTSUPP => Outcome::Bug,
        _ => Outcome::Unexpected,
    }
}

/// A multishot recv's final completion with an error.
pub fn recv(errno: i32) -> Outcome {
    match errno {
        // Our cancel (close, or a publisher paused for being over its budget).
        libc::ECANCELED => Outcome::Cancelled,
        // The provided-buffer ring ran dry; the data waits in the socket.
        libc::ENOBUFS => Outcome::NoBuffers,
        // Reset by the peer (or, after a reset, a broken pipe); keepalive or TCP_USER_TIMEOUT gave
        // up on it; the route to it vanished.
        libc::ECONNRESET
        | libc::EPIPE
        | libc::ETIMEDOUT
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::ENOTCONN => Outcome::PeerGone,
        // Interrupted before any data: arm again.
        libc::EINTR | libc::EAGAIN => Outcome::Retry,
        libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL => Outcome::Bug,
        _ => Outcome::Unexpected,
    }
}

/// A send's completion with an error.
pub fn send(errno: i32) -> Outcome {
    match errno {
        libc::ECANCELED => Outcome::Cancelled,
        // Kernel memory short, or interrupted: retry after a back-off, never at once.
        libc::EINTR | libc::EAGAIN | libc::ENOBUFS | libc::ENOMEM => Outcome::Retry,
        // The same "peer gone" list as recv: first ECONNRESET, then EPIPE after a reset.
        libc::ECONNRESET
        | libc::EPIPE
        | libc::ETIMEDOUT
        | libc::EHOSTUNREACH
        | libc::ENETUNREACH
        | libc::ENOTCONN => Outcome::PeerGone,
        libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL | libc::EMSGSIZE => Outcome::Bug,
        _ => Outcome::Unexpected,
    }
}

/// `shutdown(SHUT_WR)` with an error.
pub fn shutdown(errno: i32) -> Outcome {
    match errno {
        libc::ECANCELED => Outcome::Cancelled,
        // The peer reset before our FIN left: the socket is already closed for TCP.
        libc::ENOTCONN | libc::ECONNRESET | libc::EPIPE => Outcome::PeerGone,
        libc::EBADF | libc::ENOTSOCK | libc::EINVAL => Outcome::Bug,
        _ => Outcome::Unexpected,
    }
}

/// `close` with an error. The fd is released whatever it says (close(2)); the caller logs what
/// is not a bug.
pub fn close(errno: i32) -> Outcome {
    match errno {
        // A signal or a flush error on close: the descriptor is gone all the same.
        libc::EINTR | libc::EIO => Outcome::Retry,
        // Closing an fd twice: a bookkeeping bug.
        libc::EBADF => Outcome::Bug,
        _ => Outcome::Unexpected,
    }
}

/// An `AsyncCancel`'s own completion (its target posts its final completion separately).
pub fn cancel(errno: i32) -> Outcome {
    match errno {
        // The target had already completed, or was running and could not be stopped: its
        // final completion is on its way (the caller re-cancels after a deadline if not).
        libc::ENOENT | libc::EALREADY => Outcome::Retry,
        libc::EINVAL | libc::EBADF => Outcome::Bug,
        _ => Outcome::Unexpected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recv and send agree on which errnos mean the peer is gone.
    #[test]
    fn recv_and_send_agree_on_peer_gone() {
        for errno in 1..200 {
            assert_eq!(
                recv(errno) == Outcome::PeerGone,
                send(errno) == Outcome::PeerGone,
                "errno {errno}: {}",
                std::io::Error::from_raw_os_error(errno)
            );
        }
    }

    #[test]
    fn tables_cover_what_the_kernel_is_known_to_return() {
        assert_eq!(recv(libc::ENOBUFS), Outcome::NoBuffers);
        assert_eq!(send(libc::ENOBUFS), Outcome::Retry);
        assert_eq!(accept(libc::EMFILE), Outcome::OutOfFds);
        assert_eq!(shutdown(libc::ENOTCONN), Outcome::PeerGone);
        assert_eq!(recv(libc::E2BIG), Outcome::Unexpected);
    }
}
