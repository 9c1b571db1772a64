//! Small OS helpers: the monotonic clock, fd limits, socket options.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

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

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the live local `rl`.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur as u64;
            }
        }
        rl.rlim_cur as u64
    }
}

pub fn connect(addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(addr, timeout)
}

/// SO_RCVBUF: a fixed receive buffer (the kernel doubles the value and stops autotuning it).
pub fn set_rcvbuf(s: &TcpStream, bytes: usize) -> io::Result<()> {
    let v = i32::try_from(bytes).unwrap_or(i32::MAX);
    setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &v)
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

/// SO_LINGER {1, 0}: the next close sends RST instead of FIN.
pub fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

/// Number of entries in /proc/PID/fd, if readable.
pub fn count_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Server-side TCP states: rows of /proc/net/tcp{,6} whose local port is `port`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStates {
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

impl TcpStates {
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

/// Calls `f(remote_port, state)` for every row of /proc/net/tcp{,6} whose local port is `port`
/// (the server's side of each connection to it). `state` is the kernel's hex state, e.g. "01".
pub fn for_each_server_row(port: u16, mut f: impl FnMut(u16, &str)) {
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let (Some(_sl), Some(local), Some(rem), Some(state)) =
                (cols.next(), cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let Some(p) = local
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
            else {
                continue;
            };
            if p != port {
                continue;
            }
            let remote = rem
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            f(remote, state);
        }
    }
}

pub fn tcp_states(port: u16) -> TcpStates {
    let mut st = TcpStates::default();
    for_each_server_row(port, |_, state| match state {
        "01" => st.established += 1,
        "03" => st.syn_recv += 1,
        "04" => st.fin_wait1 += 1,
        "05" => st.fin_wait2 += 1,
        "06" => st.time_wait += 1,
        "08" => st.close_wait += 1,
        "09" => st.last_ack += 1,
        "0B" => st.closing += 1,
        "0A" => st.listen += 1,
        _ => st.other += 1,
    });
    st
}

/// CPU time (user + system, all threads) the process `pid` has used, in seconds, from
/// /proc/PID/stat.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    proc_cpu(pid).map(|(user, sys)| user + sys)
}

/// (user, system) CPU seconds of the process `pid` (all threads), from /proc/PID/stat.
pub fn proc_cpu(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((utime as f64 / tck, stime as f64 / tck))
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

/// Resident set size of `pid` in KiB (VmRSS in /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
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
