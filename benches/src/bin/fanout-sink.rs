//! `fanout-sink`: a trivial "server" that measures the load generator, not a server.
//!
//! It accepts connections speaking ringfan's line protocol and writes pre-built 64 KiB buffers
//! of valid `@0:<seq>:<send_ts_ns>;xxx…\n` messages (fixed-width fields, so refreshing a
//! buffer only overwrites digits) to its subscribers as fast as their sockets
//! take them (holding at most 128 KiB unsent per socket in the kernel, as ringfan does by
//! default), with no broadcasting logic at all: one buffer (timestamps refreshed each time it
//! is rebuilt) is sent to every subscriber, whole, in order. `scripts/bench.sh` points
//! `ringfan-load` at it to find how many messages per second the generator can receive (the
//! "generator ceiling"): a server that comes close to that figure is limited by the generator.
//!
//! Subscribers are the first `--subscribers` connections accepted (ringfan-load connects its
//! subscribers before its sync helper and its publishers), and any connection that sends a byte
//! stops being written to; input is read and discarded.
//!
//! Messages of one subscriber have strictly increasing seqs, but a subscriber that was not
//! writable when a buffer was current skips it, so the generator reports gaps (`lost`) here:
//! only its receive rate means something. A connection gets up to 8 buffers per readiness
//! event; a buffer is rebuilt (fresh seqs and timestamps) when a connection has already had
//! the current one.
//!
//!   fanout-sink [--listen 127.0.0.1:0] [--size 64] [--subscribers N] [--max-seconds 600]
//!
//! Prints `fanout-sink listening on ADDR` on stdout once listening. Exits on SIGINT/SIGTERM, or
//! after --max-seconds in any case. One thread (pin it with taskset).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUFFER_BYTES: usize = 64 << 10;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Relaxed);
}

struct Cfg {
    listen: SocketAddr,
    size: usize,
    subscribers: usize,
    max_seconds: u64,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "fanout-sink: {msg}\nusage: fanout-sink [--listen 127.0.0.1:0] [--size BYTES (40..=65536)] \
         [--subscribers N] [--max-seconds S]"
    );
    std::process::exit(2);
}

fn parse() -> Cfg {
    let mut c = Cfg {
        listen: "127.0.0.1:0".parse().unwrap(),
        size: 64,
        subscribers: usize::MAX,
        max_seconds: 600,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("see the comment at the top of benches/src/bin/fanout-sink.rs");
            std::process::exit(0);
        }
        let Some(v) = args.next() else {
            usage(&format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                c.listen = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --listen '{v}'")))
            }
            "--size" => {
                c.size = match v.parse() {
                    Ok(n) if (40..=BUFFER_BYTES).contains(&n) => n,
                    _ => usage(&format!("bad --size '{v}'")),
                }
            }
            "--subscribers" => {
                c.subscribers = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --subscribers '{v}'")))
            }
            "--max-seconds" => {
                c.max_seconds = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --max-seconds '{v}'")))
            }
            _ => usage(&format!("unknown flag '{flag}'")),
        }
    }
    c
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the live local `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Message layout (every field fixed-width, so a refresh only overwrites digits):
/// `@0:` + seq (8 digits of buffer number, 4 of index in the buffer) + `:` + timestamp (19
/// digits, CLOCK_MONOTONIC ns) + `;` + `x` padding + `\n`. Leading zeros are valid digits for
/// the generator's scanner. Seqs jump between buffers (gaps), they never go back.
const BASE_AT: usize = 3;
const BASE_DIGITS: usize = 8;
const INDEX_DIGITS: usize = 4;
const TS_AT: usize = BASE_AT + BASE_DIGITS + INDEX_DIGITS + 1;
const TS_DIGITS: usize = 19;
const MARKER_BYTES: usize = TS_AT + TS_DIGITS + 1;

/// Decimal digits of `v`, zero-padded to `out.len()` (the high digits are dropped if longer).
fn digits(mut v: u64, out: &mut [u8]) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// A buffer of as many whole `size`-byte messages as fit in 64 KiB (at least one).
fn template(size: usize) -> Vec<u8> {
    let n = (BUFFER_BYTES / size).max(1);
    let mut out = Vec::with_capacity(n * size);
    for i in 0..n {
        let start = out.len();
        out.extend_from_slice(b"@0:");
        out.resize(start + TS_AT, b'0');
        digits(
            i as u64,
            &mut out[start + BASE_AT + BASE_DIGITS..start + TS_AT - 1],
        );
        out[start + TS_AT - 1] = b':';
        out.resize(start + MARKER_BYTES - 1, b'0');
        out.push(b';');
        out.resize(start + size - 1, b'x');
        out.push(b'\n');
    }
    out
}

/// Stamps buffer number `base` and the time now into every message of `buf`.
fn stamp(buf: &mut [u8], size: usize, base: u64) {
    let mut b = [0u8; BASE_DIGITS];
    let mut t = [0u8; TS_DIGITS];
    digits(base, &mut b);
    digits(now_ns(), &mut t);
    for m in buf.chunks_exact_mut(size) {
        m[BASE_AT..BASE_AT + BASE_DIGITS].copy_from_slice(&b);
        m[TS_AT..TS_AT + TS_DIGITS].copy_from_slice(&t);
    }
}

/// Replaces the current buffer by a fresh one (next buffer number, timestamps now), reusing
/// its memory when no connection still holds it.
fn refresh(cur: &mut Arc<Vec<u8>>, gen: &mut u64, size: usize) {
    *gen += 1;
    if Arc::get_mut(cur).is_none() {
        *cur = Arc::new(cur.as_ref().clone());
    }
    let v = Arc::get_mut(cur).expect("unique buffer");
    stamp(v, size, *gen);
}

/// Most buffers written to one connection per readiness event.
const BUFFERS_PER_EVENT: usize = 8;

/// TCP_NOTSENT_LOWAT of every connection: ringfan's default (RINGFAN_NOTSENT_LOWAT).
const NOTSENT_LOWAT: i32 = 128 << 10;

struct Conn {
    fd: RawFd,
    writer: bool,
    /// Generation of the buffer in `buf` (or last sent).
    gen: u64,
    buf: Option<Arc<Vec<u8>>>,
    off: usize,
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, token: u64) {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a live epoll_event.
    unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
}

/// The token of the listener in epoll; connections use their slot index.
const LISTENER: u64 = u64::MAX;

fn main() {
    let cfg = parse();
    install_signal_handlers();
    let listener = listen(&cfg);
    let mut sink = Sink::new(&cfg, &listener);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4096];
    let deadline = Instant::now() + Duration::from_secs(cfg.max_seconds);
    // Bounded by --max-seconds (and SIGINT/SIGTERM).
    while !STOP.load(Relaxed) && Instant::now() < deadline {
        // SAFETY: `events` is a live array of the given length.
        let n = unsafe { libc::epoll_wait(sink.ep, events.as_mut_ptr(), events.len() as i32, 100) };
        if n < 0 {
            continue; // EINTR
        }
        for ev in &events[..n as usize] {
            let (flags, token) = (ev.events, ev.u64);
            if token == LISTENER {
                sink.accept_all(&listener);
            } else {
                sink.on_event(token, flags);
            }
        }
    }
    sink.finish();
}

fn install_signal_handlers() {
    // SAFETY: installing async-signal-safe handlers (they only store to an atomic).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Binds the non-blocking listener with a large backlog and prints where it listens.
fn listen(cfg: &Cfg) -> TcpListener {
    let listener = TcpListener::bind(cfg.listen).unwrap_or_else(|e| {
        eprintln!("fanout-sink: cannot listen on {}: {e}", cfg.listen);
        std::process::exit(1)
    });
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    // std listens with a backlog of 128; a sink busy writing accepts late, and 10000 clients
    // connecting at once would wait for SYN retransmits. listen(2) again raises the backlog.
    // SAFETY: plain syscall on our listening socket.
    unsafe { libc::listen(listener.as_raw_fd(), 65535) };
    println!(
        "fanout-sink listening on {}",
        listener.local_addr().expect("local addr")
    );
    let _ = std::io::stdout().flush();
    listener
}

/// The buffer every writer sends, and how often it was rebuilt.
struct Current {
    buf: Arc<Vec<u8>>,
    gen: u64,
    size: usize,
    rebuilt: u64,
}

/// The event loop's state: connections by slot, the current buffer and the totals printed at
/// the end.
struct Sink {
    ep: RawFd,
    conns: Vec<Option<Conn>>,
    /// The first this many connections accepted are writers (subscribers).
    subscribers: usize,
    accepted: usize,
    current: Current,
    sent_bytes: u64,
    scratch: Vec<u8>,
}

impl Sink {
    fn new(cfg: &Cfg, listener: &TcpListener) -> Sink {
        // SAFETY: plain syscall.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0, "epoll_create1 failed");
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER,
        );
        let gen = 1u64;
        let mut buf = Arc::new(template(cfg.size));
        stamp(
            Arc::get_mut(&mut buf).expect("unique buffer"),
            cfg.size,
            gen,
        );
        Sink {
            ep,
            conns: Vec::new(),
            subscribers: cfg.subscribers,
            accepted: 0,
            current: Current {
                buf,
                gen,
                size: cfg.size,
                rebuilt: 0,
            },
            sent_bytes: 0,
            scratch: vec![0u8; 64 << 10],
        }
    }

    fn accept_all(&mut self, listener: &TcpListener) {
        // Bounded: at most 1024 accepts per turn.
        for _ in 0..1024 {
            // SAFETY: accept4 with null address pointers.
            let fd = unsafe {
                libc::accept4(
                    listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                break;
            }
            self.add(fd);
        }
    }

    fn add(&mut self, fd: RawFd) {
        // Like ringfan: the kernel holds at most this much unsent per socket, so the generator
        // reads recently written data and the machine's TCP memory stays under
        // net.ipv4.tcp_mem's pressure threshold.
        let lowat = NOTSENT_LOWAT;
        // SAFETY: sets an int option on the fd just accepted.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&lowat as *const i32).cast(),
                4,
            )
        };
        let writer = self.accepted < self.subscribers;
        self.accepted += 1;
        let slot = match self.conns.iter().position(|c| c.is_none()) {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.conns[slot] = Some(Conn {
            fd,
            writer,
            gen: 0,
            buf: None,
            off: 0,
        });
        let mut want = libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32;
        if writer {
            want |= libc::EPOLLOUT as u32;
        }
        epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, want, slot as u64);
    }

    fn on_event(&mut self, token: u64, flags: u32) {
        let slot = token as usize;
        let Some(c) = self.conns.get_mut(slot).and_then(|c| c.as_mut()) else {
            return;
        };
        let mut close = flags & (libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0;
        if flags & (libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32) != 0 {
            close |= read_side(self.ep, c, token, &mut self.scratch);
        }
        if !close && c.writer && flags & libc::EPOLLOUT as u32 != 0 {
            close |= write_side(c, &mut self.current, &mut self.sent_bytes);
        }
        if close {
            epoll_ctl(self.ep, libc::EPOLL_CTL_DEL, c.fd, 0, 0);
            // SAFETY: we own this fd and close it once.
            unsafe { libc::close(c.fd) };
            self.conns[slot] = None;
        }
    }

    fn finish(self) {
        for c in self.conns.into_iter().flatten() {
            // SAFETY: we own these fds.
            unsafe { libc::close(c.fd) };
        }
        // SAFETY: we own the epoll fd.
        unsafe { libc::close(self.ep) };
        eprintln!(
            "fanout-sink: accepted {}, sent {} bytes, {} buffers rebuilt",
            self.accepted, self.sent_bytes, self.current.rebuilt
        );
    }
}

/// Reads and discards what `c` sent; a connection that talks stops being a writer. True when
/// it is to be closed (EOF or an error).
fn read_side(ep: RawFd, c: &mut Conn, token: u64, scratch: &mut [u8]) -> bool {
    // Bounded: at most 16 reads per event.
    for _ in 0..16 {
        // SAFETY: reads into the live scratch buffer.
        let r = unsafe {
            libc::recv(
                c.fd,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r > 0 {
            if c.writer {
                // It talks: a publisher or a sync helper, not a subscriber.
                c.writer = false;
                c.buf = None;
                epoll_ctl(ep, libc::EPOLL_CTL_MOD, c.fd, libc::EPOLLIN as u32, token);
            }
            continue;
        }
        if r == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error().raw_os_error();
        return !matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR));
    }
    false
}

/// Sends buffers to the writer `c` until its socket is full. True when it is to be closed.
fn write_side(c: &mut Conn, cur: &mut Current, sent_bytes: &mut u64) -> bool {
    // Bounded: at most BUFFERS_PER_EVENT buffers, and it stops when the socket is full.
    for _ in 0..BUFFERS_PER_EVENT {
        if c.buf.is_none() {
            if c.gen == cur.gen {
                // This connection already has the current buffer: a fresh one.
                refresh(&mut cur.buf, &mut cur.gen, cur.size);
                cur.rebuilt += 1;
            }
            c.buf = Some(cur.buf.clone());
            c.gen = cur.gen;
            c.off = 0;
        }
        let b = c.buf.as_ref().expect("buffer just set");
        // SAFETY: sends from the live buffer, within its length.
        let r = unsafe {
            libc::send(
                c.fd,
                b[c.off..].as_ptr().cast(),
                b.len() - c.off,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if r > 0 {
            c.off += r as usize;
            *sent_bytes += r as u64;
            if c.off < b.len() {
                return false; // the socket took only part: it is full
            }
            c.buf = None;
        } else {
            let e = std::io::Error::last_os_error().raw_os_error();
            return r == 0 || !matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR));
        }
    }
    false
}
