//! Shared harness for the `ringfan` integration tests.
//!
//! Every test starts its own server process (`CARGO_BIN_EXE_ringfan`) on an ephemeral port of
//! 127.0.0.1, talks to it over plain std sockets and checks the kernel's view of the server's
//! sockets (`/proc/net/tcp{,6}`) and file descriptors (`/proc/<pid>/fd`).
//!
//! Everything here is bounded in time: sockets get short read timeouts and every read loop checks a
//! deadline, so a misbehaving server makes a test fail, never hang.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ringfan");

/// How long `Server::start` waits for the listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket read timeout used by every client: reads wake up this often to check their deadline.
const READ_POLL: Duration = Duration::from_millis(50);

/// The line the server sends before closing a client whose line is too long.
pub fn err_line(max_frame_bytes: usize) -> Vec<u8> {
    format!("-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES ({max_frame_bytes})\n").into_bytes()
}

pub fn secs(s: u64) -> Instant {
    Instant::now() + Duration::from_secs(s)
}

pub fn millis(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

// ---------------------------------------------------------------------------------------------
// Test serialisation
// ---------------------------------------------------------------------------------------------

/// The machine has 2 cores and several tests push a few hundred connections or tens of MB through
/// the server with tight kernel-state deadlines. Tests that do network work take this lock so the
/// tests of one binary run one at a time (cargo runs the binaries one after another anyway).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// io_uring availability
// ---------------------------------------------------------------------------------------------

/// Runs `ringfan --check` once per test binary. Returns false (after printing
/// `SKIP: io_uring unavailable: <stderr>` straight to the process's stderr, bypassing the test
/// harness's output capture so it is always visible) when io_uring is unusable here.
/// Every test calls this first: `if !common::require_io_uring() { return; }`.
pub fn require_io_uring() -> bool {
    // The epoll driver needs no io_uring: that suite runs everywhere.
    if std::env::var("RINGFAN_TEST_DRIVER").as_deref() == Ok("epoll") {
        return true;
    }
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECK.get_or_init(|| {
        let out = run_ringfan(&["--check"], &[], Duration::from_secs(10));
        match out.status {
            None => panic!(
                "`ringfan --check` did not exit within 10 s\nstdout: {}\nstderr: {}",
                out.stdout, out.stderr
            ),
            Some(st) if st.success() => Ok(()),
            Some(st) if st.code().is_none() => panic!(
                "`ringfan --check` was killed by signal {:?} (a crash, not 'io_uring unavailable')\n\
                 stderr: {}",
                st.signal(),
                out.stderr
            ),
            Some(_) => {
                let mut msg = out.stderr.trim().to_string();
                if raw_io_uring_setup_works() {
                    msg.push_str(
                        " (note: a raw io_uring_setup(2) from the test process itself succeeded)",
                    );
                }
                Err(msg)
            }
        }
    });
    match result {
        Ok(()) => true,
        Err(msg) => {
            // Not eprintln!: libtest captures that for passing tests; the skip must be visible.
            let _ = writeln!(io::stderr(), "SKIP: io_uring unavailable: {msg}");
            false
        }
    }
}

/// Cross-check for the skip message only: can this process create an io_uring at all?
fn raw_io_uring_setup_works() -> bool {
    // struct io_uring_params is 120 bytes; all zero means "defaults".
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup reads and writes the 120-byte params array, a live local.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned to us and nothing else uses it.
        unsafe { libc::close(fd as i32) };
        true
    } else {
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------

/// Calls `f` with each line (newline kept) read from `r` until EOF or an error.
fn read_lines_until_eof(r: impl Read, mut f: impl FnMut(String)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => f(String::from_utf8_lossy(&buf).to_string()),
        }
    }
}

/// [`read_lines_until_eof`] on a thread of its own.
fn read_lines_in_thread(r: impl Read + Send + 'static, f: impl FnMut(String) + Send + 'static) {
    thread::spawn(move || read_lines_until_eof(r, f));
}

/// A `ringfan` command with a clean `RINGFAN_*` environment plus `RINGFAN_LISTEN=127.0.0.1:0` and
/// `RINGFAN_PIN=0`, then `env` applied on top. The child gets SIGKILL if the spawning thread dies
/// (a safety net so a panicking test never leaves a server behind).
pub fn ringfan_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    ringfan_command_nofile(args, env, None)
}

/// As [`ringfan_command`], with both the soft and the hard RLIMIT_NOFILE set to `nofile` in the
/// child (so the server cannot raise it), to provoke EMFILE.
pub fn ringfan_command_nofile(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGFAN_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RINGFAN_LISTEN", "127.0.0.1:0");
    cmd.env("RINGFAN_PIN", "0");
    // The suite runs once per driver: RINGFAN_TEST_DRIVER=epoll selects the readiness driver.
    if let Ok(v) = std::env::var("RINGFAN_TEST_DRIVER") {
        cmd.env("RINGFAN_DRIVER", v);
    }
    // Developer convenience: RINGFAN_TEST_LOG=debug cargo test ... -- --nocapture
    if let Ok(v) = std::env::var("RINGFAN_TEST_LOG") {
        cmd.env("RINGFAN_LOG", v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    // SAFETY: the pre_exec closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, setrlimit) on locals.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(n) = nofile {
                let lim = libc::rlimit {
                    rlim_cur: n as _,
                    rlim_max: n as _,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

pub struct RunOutput {
    /// None: it did not exit within the timeout (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ringfan args` to completion (killed after `timeout`), capturing stdout and stderr.
pub fn run_ringfan(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunOutput {
    let mut cmd = ringfan_command(args, env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait on ringfan: {e}"),
        }
    };
    RunOutput {
        status,
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
    }
}

/// A running server. Dropping it kills the process if it is still running.
pub struct Server {
    child: Child,
    port: u16,
    baseline_fds: usize,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stdout_closed: Arc<AtomicBool>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    exit: Option<ExitStatus>,
}

impl Server {
    /// Spawns the server with `RINGFAN_LISTEN=127.0.0.1:0 RINGFAN_PIN=0` plus `env`, waits (10 s
    /// max) for `ringfan listening on 127.0.0.1:PORT` on stdout, then records the baseline fd count.
    /// stderr is echoed (prefixed) through the test's captured output and kept for inspection.
    pub fn start(env: &[(&str, &str)]) -> Server {
        Server::start_nofile(env, None)
    }

    /// As [`Server::start`], with RLIMIT_NOFILE (soft and hard) fixed at `nofile`.
    pub fn start_nofile(env: &[(&str, &str)], nofile: Option<u64>) -> Server {
        let mut cmd = ringfan_command_nofile(&[], env, nofile);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {BIN}: {e}"));
        let pid = child.id();

        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = stderr_lines.clone();
            read_lines_in_thread(child.stderr.take().unwrap(), move |line| {
                let s = line.trim_end().to_string();
                eprintln!("[ringfan {pid}] {s}");
                lines.lock().unwrap().push(s);
            });
        }

        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_closed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let lines = stdout_lines.clone();
            let closed = stdout_closed.clone();
            let r = child.stdout.take().unwrap();
            thread::spawn(move || {
                read_lines_until_eof(r, |line| {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                });
                closed.store(true, Ordering::Release);
            });
        }

        let mut server = Server {
            child,
            port: 0,
            baseline_fds: 0,
            stdout_lines,
            stdout_closed,
            stderr_lines,
            exit: None,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let left = deadline.saturating_duration_since(Instant::now());
        let line = {
            match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = server.child.kill();
                    thread::sleep(Duration::from_millis(50));
                    panic!(
                        "ringfan (env {env:?}) printed no listening line within {START_TIMEOUT:?}\n\
                         stderr:\n{}",
                        server.stderr_text()
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = server.wait_exit(Duration::from_secs(5));
                    thread::sleep(Duration::from_millis(50));
                    panic!(
                        "ringfan (env {env:?}) closed stdout without a listening line; exit \
                         status {st:?}\nstderr:\n{}",
                        server.stderr_text()
                    );
                }
            }
        };
        let port = line
            .strip_suffix('\n')
            .and_then(|l| l.strip_prefix("ringfan listening on 127.0.0.1:"))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|&p| p != 0)
            .unwrap_or_else(|| {
                panic!(
                    "first stdout line is not `ringfan listening on 127.0.0.1:PORT\\n`: {line:?}"
                )
            });
        server.port = port;
        // The server is ready; take the fd baseline once it is stable.
        let mut last = fd_count(pid);
        let stable_by = Instant::now() + Duration::from_secs(1);
        loop {
            thread::sleep(Duration::from_millis(20));
            let now = fd_count(pid);
            if now == last || Instant::now() >= stable_by {
                last = now;
                break;
            }
            last = now;
        }
        server.baseline_fds = last;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// fd count right after start with no client connected.
    pub fn baseline_fds(&self) -> usize {
        self.baseline_fds
    }

    pub fn fds(&self) -> usize {
        fd_count(self.pid())
    }

    /// The server's sockets (local port == the server port) by TCP state.
    /// Socket states on the line listener's port.
    pub fn states(&self) -> TcpStates {
        tcp_states(self.port)
    }

    /// Socket states on every port the server listens on (the line listener, and the
    /// publish / RESP / WebSocket listeners it printed).
    pub fn states_all_ports(&self) -> TcpStates {
        let mut all = tcp_states(self.port);
        let extra = self.stdout_lines().into_iter().filter_map(|l| {
            let (_, addr) = l.trim().split_once(" on 127.0.0.1:")?;
            addr.parse::<u16>().ok()
        });
        for port in extra.filter(|&p| p != self.port) {
            for (state, n) in tcp_states(port).counts {
                *all.counts.entry(state).or_insert(0) += n;
            }
        }
        all
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; the pid is our own child's.
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(
            r,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            io::Error::last_os_error()
        );
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM)
    }

    pub fn sigint(&self) {
        self.signal(libc::SIGINT)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit {
            return Some(st);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return Some(st);
                }
                Ok(None) if Instant::now() >= deadline => return None,
                Ok(None) => thread::sleep(Duration::from_millis(10)),
                Err(e) => panic!("waitpid: {e}"),
            }
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    pub fn stderr_text(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr_lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Everything printed on stdout so far. Once the process has exited, waits (1 s max) until
    /// the whole of stdout has been read.
    pub fn stdout_lines(&self) -> Vec<String> {
        if self.exit.is_some() {
            wait_until(secs(1), || self.stdout_closed.load(Ordering::Acquire));
        }
        self.stdout_lines.lock().unwrap().clone()
    }

    /// What follows `prefix` on the stdout line that starts with it (e.g. `ringfan resp on `),
    /// waited for (5 s max).
    pub fn printed(&self, prefix: &str) -> String {
        let find = || {
            self.stdout_lines()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|u| u.trim().to_string()))
        };
        assert!(
            wait_until(secs(5), || find().is_some()),
            "the server prints `{prefix}...` on stdout"
        );
        find().unwrap()
    }

    /// The Redis-protocol listener's address (`ringfan resp on ADDR`).
    pub fn resp_addr(&self) -> SocketAddr {
        self.printed("ringfan resp on ")
            .parse()
            .expect("an address")
    }

    /// A human-readable description of the server's kernel-side state, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "server pid {} port {}: fds {} (baseline {}), sockets [{}], fd kinds [{}]",
            self.pid(),
            self.port,
            self.fds(),
            self.baseline_fds,
            self.states_all_ports(),
            fd_kinds(self.pid())
        )
    }

    /// Waits (up to `within`) until the server has no CLOSE_WAIT socket, exactly `open` ESTABLISHED
    /// sockets and exactly `baseline + open` file descriptors; panics with details otherwise.
    pub fn assert_clean(&self, open: usize, within: Duration, ctx: &str) {
        let deadline = Instant::now() + within;
        let ok = wait_until(deadline, || {
            let st = self.states_all_ports();
            st.close_wait() == 0
                && st.established() == open
                && self.fds() == self.baseline_fds + open
        });
        assert!(
            ok,
            "{ctx}: within {within:?} expected 0 CLOSE_WAIT, {open} ESTABLISHED and fds == baseline \
             {} + {open}; got {}",
            self.baseline_fds,
            self.describe()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel view
// ---------------------------------------------------------------------------------------------

// The /proc readers (socket states, fds, RSS, CPU) and socket options live in the testkit crate,
// shared with the load generator. The few whose signatures differ here panic instead of
// returning errors: a test cannot go on without them.
pub use ringfan_testkit::*;

/// Raises this process's soft RLIMIT_NOFILE to the hard limit (best effort: a test that needs
/// more fds than the hard limit fails on its own, naming what it could not open).
pub fn raise_nofile() {
    let _ = ringfan_testkit::raise_nofile();
}

/// SO_LINGER {on, 0}: close() then sends RST instead of FIN.
pub fn set_linger_zero(s: &TcpStream) {
    ringfan_testkit::set_linger_zero(s).expect("setsockopt(SO_LINGER)");
}

/// Pins a socket's receive buffer (turning off autotuning), e.g. to make a reader slow.
pub fn set_rcvbuf(s: &TcpStream, bytes: i32) {
    let bytes = usize::try_from(bytes).expect("set_rcvbuf: bytes must be >= 0");
    ringfan_testkit::set_rcvbuf(s, bytes).expect("SO_RCVBUF");
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// How a read-to-EOF ended.
#[derive(Debug)]
pub enum End {
    /// read() returned 0: the peer's FIN.
    Eof,
    /// ECONNRESET (or EPIPE after a reset).
    Reset(io::Error),
    TimedOut,
    Error(io::Error),
}

impl End {
    pub fn is_eof(&self) -> bool {
        matches!(self, End::Eof)
    }
    fn from_err(e: io::Error) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => End::Reset(e),
            io::ErrorKind::TimedOut => End::TimedOut,
            _ => End::Error(e),
        }
    }
}

pub struct ReadToEof {
    pub data: Vec<u8>,
    pub end: End,
}

/// A client connection with its own read buffer. Reads poll every 50 ms and honour deadlines.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    scanned: usize,
    tmp: Vec<u8>,
}

impl Client {
    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_POLL))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            tmp: Vec::new(),
        })
    }

    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    /// A second handle on the same socket, e.g. for a writer thread.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("try_clone")
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream
            .write_all(data)
            .unwrap_or_else(|e| panic!("send {} bytes: {e}", data.len()));
    }

    /// FIN: shutdown(SHUT_WR); keeps reading possible.
    pub fn half_close(&self) {
        self.stream
            .shutdown(Shutdown::Write)
            .expect("shutdown(Write)");
    }

    pub fn set_linger_zero(&self) {
        set_linger_zero(&self.stream)
    }

    /// Bytes received but not yet consumed by read_line.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.scanned = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.scanned -= self.pos;
            self.pos = 0;
        }
        if self.tmp.is_empty() {
            self.tmp = vec![0u8; 65536];
        }
        loop {
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "test deadline passed",
                ));
            }
            match self.stream.read(&mut self.tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&self.tmp[..n]);
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Next complete line (with its `\n`); Ok(None) on EOF (a partial line stays in `buffered()`);
    /// Err(TimedOut) when `deadline` passes.
    pub fn read_line(&mut self, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i + 1;
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end;
                self.scanned = end;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.fill(deadline)? == 0 {
                return Ok(None);
            }
        }
    }

    /// Like read_line but panics (with `ctx`) on EOF, error or deadline.
    pub fn expect_line(&mut self, deadline: Instant, ctx: &str) -> Vec<u8> {
        match self.read_line(deadline) {
            Ok(Some(l)) => l,
            Ok(None) => panic!(
                "{ctx}: unexpected EOF (partial data {})",
                show(self.buffered())
            ),
            Err(e) => panic!(
                "{ctx}: no complete line: {e} (partial data {})",
                show(self.buffered())
            ),
        }
    }

    /// `n` complete lines; panics on EOF, error or deadline.
    pub fn read_lines(&mut self, n: usize, deadline: Instant) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| self.expect_line(deadline, &format!("line {i} of {n}")))
            .collect()
    }

    /// Everything until EOF/reset/deadline, including anything already buffered.
    pub fn read_to_eof(&mut self, deadline: Instant) -> ReadToEof {
        let end = loop {
            match self.fill(deadline) {
                Ok(0) => break End::Eof,
                Ok(_) => {}
                Err(e) => break End::from_err(e),
            }
        };
        let data = self.buf[self.pos..].to_vec();
        self.buf.clear();
        self.pos = 0;
        self.scanned = 0;
        ReadToEof { data, end }
    }

    /// Reads to EOF and panics unless it ended with a clean EOF (read() == 0).
    pub fn expect_clean_eof(&mut self, deadline: Instant, ctx: &str) -> Vec<u8> {
        let r = self.read_to_eof(deadline);
        assert!(
            r.end.is_eof(),
            "{ctx}: expected a clean EOF, got {:?} after {} bytes (tail {})",
            r.end,
            r.data.len(),
            show_tail(&r.data)
        );
        r.data
    }
}

pub fn read_lines(c: &mut Client, n: usize, deadline: Instant) -> Vec<Vec<u8>> {
    c.read_lines(n, deadline)
}

pub fn read_to_eof(c: &mut Client, deadline: Instant) -> ReadToEof {
    c.read_to_eof(deadline)
}

/// Connects `n` clients.
pub fn connect_n(addr: SocketAddr, n: usize) -> Vec<Client> {
    (0..n).map(|_| Client::connect(addr)).collect()
}

/// Half-closes every client, reads each to a clean EOF expecting no further data, drops them.
pub fn close_all_gracefully(clients: Vec<Client>, ctx: &str) {
    for c in &clients {
        c.half_close();
    }
    let deadline = secs(10);
    for (i, mut c) in clients.into_iter().enumerate() {
        let data = c.expect_clean_eof(deadline, &format!("{ctx}: client {i} after half-close"));
        assert!(
            data.is_empty(),
            "{ctx}: client {i} got unexpected data {}",
            show(&data)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Synchronisation: make sure every client is registered with the server
// ---------------------------------------------------------------------------------------------

static NONCE: AtomicU64 = AtomicU64::new(1);

/// After this returns, every client in `clients` is known to be registered with the server (it
/// received a line broadcast by `clients[sender]`), and every client's read buffer is drained
/// up to a common marker, so the next line each reads is new traffic.
///
/// `clients[sender]` sends `~sync <nonce> <k>` every 5 ms until every client has received one, then
/// `~syncend <nonce>`; each client then reads up to the syncend line. With `echo == false` the
/// sender itself is not expected to receive anything.
///
/// `sync_clients` (echo expected) needs a server started with `RINGFAN_ECHO=1` (the default is 0).
pub fn sync_clients_opts(clients: &mut [Client], sender: usize, echo: bool) {
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed) * 1_000_003 + std::process::id() as u64;
    let prefix = format!("~sync {nonce} ");
    let end_line = format!("~syncend {nonce}\n").into_bytes();
    let stop = Arc::new(AtomicBool::new(false));
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let guard = StopOnDrop(stop.clone());
    let mut w = clients[sender].writer();
    let pfx = prefix.clone();
    let h = thread::spawn(move || -> io::Result<u64> {
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            w.write_all(format!("{pfx}{k}\n").as_bytes())?;
            k += 1;
            thread::sleep(Duration::from_millis(5));
        }
        Ok(k)
    });
    let deadline = secs(15);
    for (i, c) in clients.iter_mut().enumerate() {
        if i == sender && !echo {
            continue;
        }
        match c.read_line(deadline) {
            Ok(Some(l)) if l.starts_with(prefix.as_bytes()) => {}
            Ok(Some(l)) => panic!("sync: client {i} got unexpected line {}", show(&l)),
            Ok(None) => panic!("sync: client {i} got EOF before any sync line"),
            Err(e) => panic!("sync: client {i} never received a sync line: {e}"),
        }
    }
    drop(guard);
    h.join()
        .unwrap()
        .unwrap_or_else(|e| panic!("sync: sender write failed: {e}"));
    clients[sender].send(&end_line);
    for (i, c) in clients.iter_mut().enumerate() {
        if i == sender && !echo {
            continue;
        }
        loop {
            match c.read_line(deadline) {
                Ok(Some(l)) if l == end_line => break,
                Ok(Some(l)) if l.starts_with(prefix.as_bytes()) => {}
                Ok(Some(l)) => panic!("sync: client {i} got unexpected line {}", show(&l)),
                Ok(None) => panic!("sync: client {i} got EOF before the syncend line"),
                Err(e) => panic!("sync: client {i} never received the syncend line: {e}"),
            }
        }
    }
}

pub fn sync_clients(clients: &mut [Client], sender: usize) {
    sync_clients_opts(clients, sender, true)
}

// ---------------------------------------------------------------------------------------------
// Flood traffic: numbered 64-byte lines
// ---------------------------------------------------------------------------------------------

pub const FLOOD_LINE_LEN: usize = 64;

/// `f <seq:010> <50 letters>\n`, exactly 64 bytes, written without allocating.
pub fn flood_line_into(seq: u64, out: &mut [u8; FLOOD_LINE_LEN]) {
    out[0] = b'f';
    out[1] = b' ';
    let mut s = seq;
    for i in (2..12).rev() {
        out[i] = b'0' + (s % 10) as u8;
        s /= 10;
    }
    out[12] = b' ';
    for i in 0..FLOOD_LINE_LEN - 14 {
        out[13 + i] = b'a' + ((seq as usize + i) % 26) as u8;
    }
    out[FLOOD_LINE_LEN - 1] = b'\n';
}

/// `f <seq:010> xxxx...\n`, exactly 64 bytes.
pub fn flood_line(seq: u64) -> Vec<u8> {
    let mut b = [0u8; FLOOD_LINE_LEN];
    flood_line_into(seq, &mut b);
    b.to_vec()
}

/// The sequence number of a flood line, if it is one (not checked byte-exact: use FloodCheck).
pub fn parse_flood_seq(line: &[u8]) -> Option<u64> {
    if line.len() != FLOOD_LINE_LEN || !line.starts_with(b"f ") {
        return None;
    }
    std::str::from_utf8(&line[2..12]).ok()?.parse().ok()
}

/// Lines `from..to` concatenated.
pub fn flood_bytes(from: u64, to: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity((to - from) as usize * FLOOD_LINE_LEN);
    let mut line = [0u8; FLOOD_LINE_LEN];
    for s in from..to {
        flood_line_into(s, &mut line);
        v.extend_from_slice(&line);
    }
    v
}

/// A publisher thread sending flood lines at a steady rate until stopped.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl Flood {
    /// Sends about `lines_per_ms` lines per millisecond (in small batches) on `w`.
    pub fn start(mut w: TcpStream, lines_per_ms: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (st, se) = (stop.clone(), sent.clone());
        let handle = thread::spawn(move || -> io::Result<()> {
            let t0 = Instant::now();
            let mut seq = 0u64;
            let mut batch = Vec::new();
            while !st.load(Ordering::Relaxed) {
                let target = (t0.elapsed().as_micros() as u64 * lines_per_ms / 1000).min(seq + 256);
                if target > seq {
                    batch.clear();
                    for s in seq..target {
                        batch.extend_from_slice(&flood_line(s));
                    }
                    w.write_all(&batch)?;
                    seq = target;
                    se.store(seq, Ordering::Release);
                }
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        Flood {
            stop,
            sent,
            handle: Some(handle),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Stops, joins, returns the number of lines sent; panics if a write failed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.handle.take().unwrap().join().unwrap();
        if let Err(e) = r {
            panic!(
                "flood publisher write failed after {} lines: {e}",
                self.sent()
            );
        }
        self.sent()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Checks a stream of lines: flood lines must be consecutive (byte-exact) from `next`; lines
/// starting with `c ` are tolerated (counted) when `allow_c` is set; anything else is an error.
#[derive(Clone, Debug, Default)]
pub struct FloodCheck {
    pub next: u64,
    pub others: u64,
    pub allow_c: bool,
}

impl FloodCheck {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn allowing_c_lines() -> Self {
        FloodCheck {
            allow_c: true,
            ..Self::default()
        }
    }

    pub fn feed(&mut self, line: &[u8]) -> Result<(), String> {
        let mut expected = [0u8; FLOOD_LINE_LEN];
        flood_line_into(self.next, &mut expected);
        if line == expected.as_slice() {
            self.next += 1;
            return Ok(());
        }
        if self.allow_c && line.starts_with(b"c ") && line.ends_with(b"\n") {
            self.others += 1;
            return Ok(());
        }
        Err(format!(
            "after {} consecutive flood lines expected {} but got {}",
            self.next,
            show(&flood_line(self.next)),
            show(line)
        ))
    }

    /// Feeds every line of `data`; it must end on a line boundary.
    pub fn feed_all(&mut self, data: &[u8]) -> Result<(), String> {
        for line in data.split_inclusive(|&b| b == b'\n') {
            if !line.ends_with(b"\n") {
                return Err(format!("data ends with an incomplete line {}", show(line)));
            }
            self.feed(line)?;
        }
        Ok(())
    }
}

/// Result of a FloodReader thread.
pub struct FloodRead {
    pub client: Client,
    pub check: FloodCheck,
    /// Stopped because the end marker arrived.
    pub saw_end_marker: bool,
    /// Set if it stopped on EOF/reset/timeout instead of the marker.
    pub end: Option<End>,
    /// A line that failed the check.
    pub error: Option<String>,
}

/// A thread that reads a client continuously, checking flood lines, until `end_marker`, EOF, an
/// error or `deadline`. `progress()` is the number of flood lines seen so far.
pub struct FloodReader {
    progress: Arc<AtomicU64>,
    handle: JoinHandle<FloodRead>,
}

impl FloodReader {
    pub fn spawn(
        mut client: Client,
        mut check: FloodCheck,
        end_marker: Option<Vec<u8>>,
        deadline: Instant,
    ) -> FloodReader {
        let progress = Arc::new(AtomicU64::new(0));
        let p = progress.clone();
        let handle = thread::spawn(move || loop {
            match client.read_line(deadline) {
                Ok(Some(l)) => {
                    if end_marker.as_deref() == Some(l.as_slice()) {
                        return FloodRead {
                            client,
                            check,
                            saw_end_marker: true,
                            end: None,
                            error: None,
                        };
                    }
                    if let Err(e) = check.feed(&l) {
                        return FloodRead {
                            client,
                            check,
                            saw_end_marker: false,
                            end: None,
                            error: Some(e),
                        };
                    }
                    p.store(check.next, Ordering::Release);
                }
                Ok(None) => {
                    return FloodRead {
                        client,
                        check,
                        saw_end_marker: false,
                        end: Some(End::Eof),
                        error: None,
                    }
                }
                Err(e) => {
                    return FloodRead {
                        client,
                        check,
                        saw_end_marker: false,
                        end: Some(End::from_err(e)),
                        error: None,
                    }
                }
            }
        });
        FloodReader { progress, handle }
    }

    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Acquire)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub fn join(self) -> FloodRead {
        self.handle.join().expect("flood reader thread panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

/// Escaped, truncated rendering of bytes for messages.
pub fn show(b: &[u8]) -> String {
    const MAX: usize = 120;
    let s: String = String::from_utf8_lossy(&b[..b.len().min(MAX)])
        .escape_debug()
        .collect();
    if b.len() > MAX {
        format!("\"{s}\"... ({} bytes)", b.len())
    } else {
        format!("\"{s}\"")
    }
}

pub fn show_tail(b: &[u8]) -> String {
    let start = b.len().saturating_sub(80);
    show(&b[start..])
}

/// assert_eq for large byte buffers with a readable first-difference report.
pub fn assert_bytes_eq(actual: &[u8], expected: &[u8], ctx: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    let from = first.saturating_sub(40);
    panic!(
        "{ctx}: got {} bytes, expected {}; first difference at offset {first}:\n  got      {}\n  expected {}",
        actual.len(),
        expected.len(),
        show(&actual[from.min(actual.len())..(first + 80).min(actual.len())]),
        show(&expected[from.min(expected.len())..(first + 80).min(expected.len())])
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus scrapes.

/// Scrapes `url` (http://127.0.0.1:PORT/metrics) and sums each series over its `worker` label:
/// `name{reason="x"}` keys keep their other labels.
pub fn scrape(addr: &str) -> HashMap<String, f64> {
    let body = scrape_text(addr);
    let mut out = HashMap::new();
    for line in body.lines().filter(|l| l.starts_with("ringfan_")) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let rest: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.starts_with("worker=") && !l.is_empty())
                    .collect();
                if rest.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}{{{}}}", rest.join(","))
                }
            }
            None => series.to_string(),
        };
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// The whole response to one scrape of `addr` (http://127.0.0.1:PORT/metrics), checked to be a 200.
pub fn scrape_text(addr: &str) -> String {
    let hostport = addr
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = TcpStream::connect(hostport).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "scrape failed: {body:.200}"
    );
    body
}

/// The `/metrics` URL the server printed (`ringfan metrics on URL`), waited for.
pub fn metrics_url(server: &Server) -> String {
    server.printed("ringfan metrics on ")
}

// ---------------------------------------------------------------------------------------------
// A minimal WebSocket client: exact bytes, no library hiding them.

/// Connects to `addr` and upgrades on `path`; returns the socket with the 101 read.
pub fn ws_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The next server frame (unmasked): its opcode and payload.
pub fn ws_read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("a frame header");
    let len = match head[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("a frame payload");
    (head[0] & 0x0f, payload)
}
