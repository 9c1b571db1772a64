//! Small OS helpers: the monotonic clock, non-blocking socket I/O, TCP memory. The /proc readers
//! and socket options shared with the server's tests come from the testkit crate.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::time::Duration;

pub use ringfan_testkit::{
    proc_cpu, proc_cpu_secs, raise_nofile, set_linger_zero, set_rcvbuf, try_fd_count, vm_rss_kib,
};
use ringfan_testkit::{
    tcp_rows, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, SYN_RECV,
    TIME_WAIT,
};

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one machine.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the live local `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until the monotonic clock reaches `deadline_ns` (returns at once if it has).
pub fn sleep_until(deadline_ns: u64) {
    let now = now_ns();
    if deadline_ns > now {
        std::thread::sleep(Duration::from_nanos(deadline_ns - now));
    }
}

pub fn secs_ns(secs: f64) -> u64 {
    (secs * 1e9).max(0.0) as u64
}

pub fn connect(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(addr, timeout)
}

/// Pages of memory all TCP sockets of this machine hold now (`TCP: ... mem N` in
/// /proc/net/sockstat).
pub fn tcp_mem_pages() -> Option<u64> {
    sockstat_tcp_mem(&std::fs::read_to_string("/proc/net/sockstat").ok()?)
}

fn sockstat_tcp_mem(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut f = line.split_whitespace();
    f.by_ref().find(|w| *w == "mem")?;
    f.next()?.parse().ok()
}

/// The kernel's TCP memory-pressure threshold in pages: the middle value of
/// net.ipv4.tcp_mem. Above it the kernel shrinks socket buffers and collapses queues.
pub fn tcp_mem_pressure_pages() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Reads and discards whatever is readable now, without blocking. Returns false on EOF/error.
pub fn drain_nonblocking(fd: RawFd, scratch: &mut [u8]) -> bool {
    for _ in 0..64 {
        // SAFETY: reads into the live `scratch` buffer, at most its length.
        let n = unsafe {
            libc::recv(
                fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return false;
        }
        let e = io::Error::last_os_error().raw_os_error();
        return matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR));
    }
    true
}

/// Sends `bytes` without blocking; best effort (used for tiny protocol replies such as PONG).
pub fn send_nonblocking(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: sends from the live `bytes` slice.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == bytes.len() as isize
}

/// Server-side TCP states: rows of /proc/net/tcp{,6} whose local port is `port`, one field per
/// state the storm report prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStates {
    pub established: u64,
    pub syn_recv: u64,
    pub fin_wait1: u64,
    pub fin_wait2: u64,
    pub time_wait: u64,
    pub close_wait: u64,
    pub last_ack: u64,
    pub closing: u64,
    pub listen: u64,
    pub other: u64,
}

impl ServerStates {
    /// Connections not yet fully closed on the server's side (TIME_WAIT and LISTEN excluded).
    pub fn open(&self) -> u64 {
        self.established
            + self.syn_recv
            + self.fin_wait1
            + self.fin_wait2
            + self.close_wait
            + self.last_ack
            + self.closing
    }
}

/// Counts the server-side rows on `port` (see [`ServerStates`]).
pub fn server_states(port: u16) -> ServerStates {
    let mut st = ServerStates::default();
    for row in tcp_rows().iter().filter(|r| r.local_port == port) {
        let n = match row.state {
            ESTABLISHED => &mut st.established,
            SYN_RECV => &mut st.syn_recv,
            FIN_WAIT1 => &mut st.fin_wait1,
            FIN_WAIT2 => &mut st.fin_wait2,
            TIME_WAIT => &mut st.time_wait,
            CLOSE_WAIT => &mut st.close_wait,
            LAST_ACK => &mut st.last_ack,
            CLOSING => &mut st.closing,
            LISTEN => &mut st.listen,
            _ => &mut st.other,
        };
        *n += 1;
    }
    st
}

/// (total, user) CPU seconds between two `proc_cpu` samples; None if either is missing.
pub fn cpu_between(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    Some((b.0 + b.1 - a.0 - a.1, b.0 - a.0))
}

/// Cores this process may run on (its affinity mask, e.g. under taskset).
pub fn available_cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sockstat_tcp_mem_is_the_value_after_mem() {
        let text = "sockets: used 8\nTCP: inuse 2004 orphan 0 tw 10 alloc 2004 mem 415396\n\
                    UDP: inuse 0 mem 3\n";
        assert_eq!(super::sockstat_tcp_mem(text), Some(415396));
        assert_eq!(super::sockstat_tcp_mem("UDP: inuse 0 mem 3\n"), None);
    }
}
