//! Socket set-up done with plain syscalls: listeners and per-connection options.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live reference and its exact size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, valid when zeroed, and large enough for both
    // families written below.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is at least as large and as aligned as sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn local_port(fd: RawFd) -> io::Result<u16> {
    // SAFETY: getsockname writes at most `len` bytes into the zeroed storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        check(libc::getsockname(
            fd,
            &mut storage as *mut _ as *mut libc::sockaddr,
            &mut len,
        ))?;
        Ok(match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                u16::from_be((*(&storage as *const _ as *const libc::sockaddr_in)).sin_port)
            }
            _ => u16::from_be((*(&storage as *const _ as *const libc::sockaddr_in6)).sin6_port),
        })
    }
}

/// One `SO_REUSEPORT` listener per worker, all on the same port. With port 0 the first listener
/// picks a free port and the others join it.
pub fn reuseport_listeners(
    addr: SocketAddr,
    count: usize,
    backlog: i32,
) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    let mut addr = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall; the fd is owned right below.
        let fd = check(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `fd` is a fresh socket nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, &1i32)?;
        let (storage, len) = to_sockaddr(&addr);
        // SAFETY: storage holds a valid sockaddr of `len` bytes.
        check(unsafe { libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) })?;
        // SAFETY: plain syscall on an owned socket.
        check(unsafe { libc::listen(fd, backlog) })?;
        if addr.port() == 0 {
            addr.set_port(local_port(fd)?);
        }
        out.push(owned);
    }
    Ok((out, addr))
}

/// Small replies and batched broadcasts should leave at once, not wait for Nagle.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &1i32)
}

/// Makes the next `close` abortive: an RST is sent and no TIME_WAIT or FIN_WAIT state is left.
pub fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (old soft, new soft).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    // SAFETY: getrlimit/setrlimit read and write a local rlimit.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
        let old = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
        }
        Ok((old as u64, lim.rlim_cur as u64))
    }
}

/// Options for every accepted connection: no Nagle; keepalive after `keepalive_secs` idle (then
/// probes every `keepalive_secs / 6`, at least 1 s, 6 of them) so a vanished peer is found;
/// TCP_USER_TIMEOUT so unacknowledged data (or a zero window) cannot hold a socket forever; and
/// TCP_NOTSENT_LOWAT, so that what a subscriber cannot take yet waits in the server's queue (one
/// copy shared by every subscriber) instead of a private copy in each socket's send buffer.
pub fn tune_accepted(
    fd: RawFd,
    keepalive_secs: u32,
    user_timeout_ms: u32,
    notsent_lowat: u32,
) -> io::Result<()> {
    set_nodelay(fd)?;
    if notsent_lowat > 0 {
        setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &(notsent_lowat as i32),
        )?;
    }
    if keepalive_secs > 0 {
        let interval = (keepalive_secs / 6).max(1) as i32;
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &1i32)?;
        setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            &(keepalive_secs as i32),
        )?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, &interval)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, &6i32)?;
    }
    if user_timeout_ms > 0 {
        setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            &(user_timeout_ms as i32),
        )?;
    }
    Ok(())
}

/// Most bytes a refusal discards from what the peer sent before it: more than any request a
/// client writes before reading, and cheap, since discarding copies nothing.
const REFUSAL_DISCARD_BYTES_MAX: usize = 1 << 20;

/// Refuses an accepted connection with one line and a FIN, never a reset, and never blocks.
/// Takes ownership of `fd`.
pub fn refuse(fd: RawFd, line: &[u8]) {
    // SAFETY: `fd` is an accepted socket we own; the buffer is live for the call.
    unsafe {
        // Best effort: the line always fits an empty send buffer.
        libc::send(
            fd,
            line.as_ptr().cast(),
            line.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::shutdown(fd, libc::SHUT_WR);
    }
    // close() with unread bytes in the receive queue sends a reset instead of the FIN (RFC 2525),
    // and a peer that wrote before reading would get ECONNRESET instead of the line. Bytes that
    // arrive after the close still get one: a peer that goes on sending after being refused
    // cannot be waited for without holding the slot the server does not have.
    ringfan_ring::discard_unread(fd, REFUSAL_DISCARD_BYTES_MAX);
    // SAFETY: ends our ownership; nothing else refers to the fd.
    unsafe { libc::close(fd) };
}

/// Switches O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an fd we hold, with integer arguments only.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        check(libc::fcntl(fd, libc::F_SETFL, flags)).map(drop)
    }
}

/// `accept4` without blocking (the listener must be non-blocking): Ok(None) when the backlog is
/// empty.
pub fn accept_now(listener: RawFd) -> io::Result<Option<RawFd>> {
    // SAFETY: null address pointers are allowed; the fd returned is owned by the caller.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd >= 0 {
        return Ok(Some(fd));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(None),
        _ => Err(e),
    }
}
