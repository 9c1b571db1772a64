//! The kernel's view of sockets and processes, shared by the server's integration tests and the
//! load generator: rows of `/proc/net/tcp{,6}`, a process's fds, memory and CPU time, and the few
//! socket options tests and benches set. One copy, so a reader fixed here is fixed for both.
//!
//! Each `/proc` reader is split into a pure parser over the file's text (tested below on fixed
//! samples) and a thin function that reads the file.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Sockets: /proc/net/tcp{,6}
// ---------------------------------------------------------------------------------------------

pub const ESTABLISHED: u8 = 0x01;
pub const SYN_SENT: u8 = 0x02;
pub const SYN_RECV: u8 = 0x03;
pub const FIN_WAIT1: u8 = 0x04;
pub const FIN_WAIT2: u8 = 0x05;
pub const TIME_WAIT: u8 = 0x06;
pub const CLOSE: u8 = 0x07;
pub const CLOSE_WAIT: u8 = 0x08;
pub const LAST_ACK: u8 = 0x09;
pub const LISTEN: u8 = 0x0A;
pub const CLOSING: u8 = 0x0B;

pub fn state_name(st: u8) -> &'static str {
    match st {
        ESTABLISHED => "ESTABLISHED",
        SYN_SENT => "SYN_SENT",
        SYN_RECV => "SYN_RECV",
        FIN_WAIT1 => "FIN_WAIT1",
        FIN_WAIT2 => "FIN_WAIT2",
        TIME_WAIT => "TIME_WAIT",
        CLOSE => "CLOSE",
        CLOSE_WAIT => "CLOSE_WAIT",
        LAST_ACK => "LAST_ACK",
        LISTEN => "LISTEN",
        CLOSING => "CLOSING",
        _ => "?",
    }
}

/// One row of /proc/net/tcp{,6}.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRow {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    /// For a LISTEN row: the accept backlog's length.
    pub rx_queue: usize,
    /// Bytes written and not yet acknowledged by the peer, unsent ones included.
    pub tx_queue: usize,
    /// Timer kind: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    pub timer: u8,
}

/// Parses the text of /proc/net/tcp or /proc/net/tcp6 (header line included); malformed rows
/// are skipped.
pub fn parse_tcp_rows(text: &str) -> Vec<TcpRow> {
    text.lines().skip(1).filter_map(parse_tcp_row).collect()
}

fn parse_tcp_row(line: &str) -> Option<TcpRow> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 6 {
        return None;
    }
    // "ADDR:PORT" for addresses, "TX:RX" for the queues, "KIND:WHEN" for the timer; all hex.
    let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
    let (tx_queue, rx_queue) = f[4].split_once(':').unwrap_or(("", ""));
    let timer = f[5].split(':').next().unwrap_or("");
    Some(TcpRow {
        local_port: port_of(f[1])?,
        remote_port: port_of(f[2])?,
        state: u8::from_str_radix(f[3], 16).ok()?,
        rx_queue: usize::from_str_radix(rx_queue, 16).unwrap_or(0),
        tx_queue: usize::from_str_radix(tx_queue, 16).unwrap_or(0),
        timer: u8::from_str_radix(timer, 16).unwrap_or(0xff),
    })
}

/// Every row of /proc/net/tcp and /proc/net/tcp6 (a missing file counts as empty).
pub fn tcp_rows() -> Vec<TcpRow> {
    let mut rows = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            rows.extend(parse_tcp_rows(&text));
        }
    }
    rows
}

/// Counts of sockets by TCP state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpStates {
    pub counts: HashMap<u8, usize>,
}

impl TcpStates {
    pub fn get(&self, st: u8) -> usize {
        self.counts.get(&st).copied().unwrap_or(0)
    }
    pub fn established(&self) -> usize {
        self.get(ESTABLISHED)
    }
    pub fn close_wait(&self) -> usize {
        self.get(CLOSE_WAIT)
    }
    pub fn fin_wait1(&self) -> usize {
        self.get(FIN_WAIT1)
    }
    pub fn fin_wait2(&self) -> usize {
        self.get(FIN_WAIT2)
    }
    pub fn time_wait(&self) -> usize {
        self.get(TIME_WAIT)
    }
    pub fn last_ack(&self) -> usize {
        self.get(LAST_ACK)
    }
    pub fn listen(&self) -> usize {
        self.get(LISTEN)
    }
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }
}

impl fmt::Display for TcpStates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.counts.keys().copied().collect();
        keys.sort_unstable();
        let parts: Vec<String> = keys
            .iter()
            .map(|k| format!("{}={}", state_name(*k), self.counts[k]))
            .collect();
        write!(f, "{}", parts.join(" "))
    }
}

/// Server-side sockets: rows whose LOCAL port is `port`.
pub fn tcp_states(port: u16) -> TcpStates {
    let mut s = TcpStates::default();
    for r in tcp_rows().into_iter().filter(|r| r.local_port == port) {
        *s.counts.entry(r.state).or_insert(0) += 1;
    }
    s
}

/// States of the rows with exactly this local and remote port (e.g. one client's socket).
pub fn tcp_states_of(local_port: u16, remote_port: u16) -> Vec<u8> {
    tcp_rows()
        .into_iter()
        .filter(|r| r.local_port == local_port && r.remote_port == remote_port)
        .map(|r| r.state)
        .collect()
}

/// The accept backlog of the server's LISTEN socket(s) on `port` (their rx_queue, summed).
pub fn listen_backlog(port: u16) -> usize {
    tcp_rows()
        .iter()
        .filter(|r| r.local_port == port && r.state == LISTEN)
        .map(|r| r.rx_queue)
        .sum()
}

/// Timer kinds of the server-side ESTABLISHED rows on `port` (see [`TcpRow::timer`]).
pub fn established_timers(port: u16) -> Vec<u8> {
    tcp_rows()
        .iter()
        .filter(|r| r.local_port == port && r.state == ESTABLISHED)
        .map(|r| r.timer)
        .collect()
}

/// Third value of /proc/sys/net/ipv4/tcp_{w,r}mem (autotuning maximum), if readable.
pub fn tcp_mem_max(which: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/tcp_{which}"))
        .ok()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Processes: /proc/<pid>/{fd,status,stat}
// ---------------------------------------------------------------------------------------------

/// Number of entries in /proc/<pid>/fd, if readable.
pub fn try_fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// Number of entries in /proc/<pid>/fd (0 if unreadable).
pub fn fd_count(pid: u32) -> usize {
    try_fd_count(pid).unwrap_or(0)
}

/// Summary of what the process's fds are (socket/anon_inode:[io_uring]/pipe...), for messages.
pub fn fd_kinds(pid: u32) -> String {
    let mut kinds: HashMap<String, usize> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let t = std::fs::read_link(e.path())
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "?".into());
            *kinds.entry(fd_kind(&t).to_string()).or_insert(0) += 1;
        }
    }
    let mut v: Vec<_> = kinds
        .into_iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    v.sort();
    v.join(", ")
}

/// The kind of an fd from its /proc/<pid>/fd link: sockets and pipes without their inode
/// number (so they group), anything else (files, anon inodes) as it is.
fn fd_kind(link: &str) -> &str {
    match link.find(":[") {
        Some(i) if link.starts_with("socket") || link.starts_with("pipe") => &link[..i],
        _ => link,
    }
}

/// VmRSS in KiB from the text of /proc/<pid>/status.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident set size of `pid` in KiB (VmRSS in /proc/<pid>/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    parse_vm_rss_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Resident memory of `pid` in bytes (VmRSS; 0 if unreadable).
pub fn rss_bytes(pid: u32) -> usize {
    vm_rss_kib(pid).map_or(0, |kib| kib as usize * 1024)
}

/// (utime, stime) in clock ticks from the text of /proc/<pid>/stat.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // After ')': field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let utime = f.nth(11)?.parse().ok()?;
    let stime = f.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The state letter of the process `pid` (R, S, T for stopped, ...), from /proc/<pid>/stat.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory arguments.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if tck > 0 {
        tck as u64
    } else {
        100
    }
}

/// (user, system) CPU seconds of the process `pid` (all threads), from /proc/<pid>/stat.
pub fn proc_cpu(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (utime, stime) = parse_stat_cpu_ticks(&text)?;
    let tck = clock_ticks_per_sec() as f64;
    Some((utime as f64 / tck, stime as f64 / tck))
}

/// CPU time (user + system, all threads) `pid` has used, in seconds.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    proc_cpu(pid).map(|(user, sys)| user + sys)
}

/// CPU time (user + system) of `pid` so far (zero if unreadable).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let (utime, stime) = parse_stat_cpu_ticks(&stat).unwrap_or((0, 0));
    Duration::from_millis((utime + stime) * 1000 / clock_ticks_per_sec())
}

// ---------------------------------------------------------------------------------------------
// This process: fd limit, socket options, waiting
// ---------------------------------------------------------------------------------------------

/// Why the soft RLIMIT_NOFILE could not be raised, with the limits found.
#[derive(Debug)]
pub struct NofileError {
    /// The soft limit in force (0 if even getrlimit failed).
    pub soft: u64,
    pub hard: u64,
    pub source: io::Error,
}

impl fmt::Display for NofileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot raise RLIMIT_NOFILE from {} to {}: {}",
            self.soft, self.hard, self.source
        )
    }
}

impl std::error::Error for NofileError {}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (one fd per connection); returns
/// the soft limit now in force.
pub fn raise_nofile() -> Result<u64, NofileError> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live local `rl`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        let source = io::Error::last_os_error();
        return Err(NofileError {
            soft: 0,
            hard: 0,
            source,
        });
    }
    if rl.rlim_cur >= rl.rlim_max {
        return Ok(rl.rlim_cur);
    }
    let want = libc::rlimit {
        rlim_cur: rl.rlim_max,
        rlim_max: rl.rlim_max,
    };
    // SAFETY: setrlimit reads the live local `want`.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        let source = io::Error::last_os_error();
        return Err(NofileError {
            soft: rl.rlim_cur,
            hard: rl.rlim_max,
            source,
        });
    }
    Ok(want.rlim_cur)
}

/// SO_LINGER {1, 0}: the next close sends RST instead of FIN.
pub fn set_linger_zero(s: &TcpStream) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_LINGER, &l)
}

/// SO_RCVBUF: a fixed receive buffer (the kernel doubles the value and stops autotuning it),
/// e.g. to make a reader slow. Values above `i32::MAX` are clamped.
pub fn set_rcvbuf(s: &TcpStream, bytes: usize) -> io::Result<()> {
    let v = i32::try_from(bytes).unwrap_or(i32::MAX);
    setsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &v)
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size; the kernel only reads it.
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

/// Polls `cond` every ~10 ms until it holds (true) or `deadline` passes (false).
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two rows from a 6.x kernel: a LISTEN socket on port 0x1F90 (8080) with 3 connections
    // waiting in its backlog, and an ESTABLISHED one with 0x40 bytes unacknowledged and a
    // retransmit timer.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000040:00000000 01:00000014 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn tcp_rows_parse_ports_state_queues_and_timer() {
        let rows = parse_tcp_rows(TCP);
        assert_eq!(
            rows,
            vec![
                TcpRow {
                    local_port: 8080,
                    remote_port: 0,
                    state: LISTEN,
                    rx_queue: 3,
                    tx_queue: 0,
                    timer: 0,
                },
                TcpRow {
                    local_port: 8080,
                    remote_port: 50000,
                    state: ESTABLISHED,
                    rx_queue: 0,
                    tx_queue: 0x40,
                    timer: 1,
                },
            ]
        );
    }

    #[test]
    fn tcp6_addresses_and_malformed_rows() {
        let text = "header\n   0: 00000000000000000000000001000000:1F90 \
                    00000000000000000000000001000000:C350 06 00000000:00000000 03:00001770 \
                    00000000 0 0 0 3 0000000000000000\n   1: garbage\n";
        let rows = parse_tcp_rows(text);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].local_port, rows[0].remote_port), (8080, 50000));
        assert_eq!(rows[0].state, TIME_WAIT);
        assert_eq!(rows[0].timer, 3);
    }

    #[test]
    fn vm_rss_is_the_kib_value() {
        let status = "Name:\tringfan\nVmPeak:\t  9000 kB\nVmRSS:\t    4242 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(4242));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn stat_cpu_ticks_skip_a_command_name_with_spaces_and_parens() {
        let stat = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu_ticks(stat), Some((17, 5)));
        assert_eq!(parse_stat_cpu_ticks("1234 (x) S 1"), None);
    }

    #[test]
    fn fd_kinds_group_sockets_and_pipes_but_keep_anon_inodes() {
        assert_eq!(fd_kind("socket:[12345]"), "socket");
        assert_eq!(fd_kind("pipe:[77]"), "pipe");
        assert_eq!(fd_kind("anon_inode:[io_uring]"), "anon_inode:[io_uring]");
        assert_eq!(fd_kind("/dev/null"), "/dev/null");
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        assert!(fd_count(me) >= 3, "stdin/out/err at least");
        assert!(vm_rss_kib(me).is_some_and(|k| k > 0));
        assert!(proc_cpu(me).is_some());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(tcp_states(port).listen(), 1, "{}", tcp_states(port));
    }
}
