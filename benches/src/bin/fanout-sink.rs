//! `fanout-sink`: a trivial "server" that measures the load generator, not a server.
//!
//! It accepts connections speaking ringfan's line protocol and writes pre-built 64 KiB buffers
//! of valid `@0:<seq>:<send_ts_ns>;xxx…\n` messages to its subscribers as fast as their sockets
//! take them, with no broadcasting logic at all: one buffer (timestamps refreshed each time it
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
//! only its receive rate means something.
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

/// Fills `out` with as many whole messages of `size` bytes as fit in 64 KiB, seqs from `*seq`.
fn build(out: &mut Vec<u8>, size: usize, seq: &mut u64) {
    out.clear();
    let ts = now_ns();
    let n = (BUFFER_BYTES / size).max(1);
    for _ in 0..n {
        *seq += 1;
        let start = out.len();
        write!(out, "@0:{}:{};", *seq, ts).expect("write to Vec");
        let used = out.len() - start;
        out.resize(start + size - 1, b'x');
        debug_assert!(used < size);
        out.push(b'\n');
    }
}

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

fn main() {
    let cfg = parse();
    // SAFETY: installing async-signal-safe handlers (they only store to an atomic).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let listener = TcpListener::bind(cfg.listen).unwrap_or_else(|e| {
        eprintln!("fanout-sink: cannot listen on {}: {e}", cfg.listen);
        std::process::exit(1)
    });
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    println!(
        "fanout-sink listening on {}",
        listener.local_addr().expect("local addr")
    );
    let _ = std::io::stdout().flush();

    // SAFETY: plain syscall.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0, "epoll_create1 failed");
    const LISTENER: u64 = u64::MAX;
    epoll_ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER,
    );

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut accepted = 0usize;
    let mut seq = 0u64;
    let mut gen = 1u64;
    let mut cur = Arc::new(Vec::with_capacity(BUFFER_BYTES + cfg.size));
    build(Arc::get_mut(&mut cur).unwrap(), cfg.size, &mut seq);
    let mut want_new = false;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4096];
    let mut scratch = vec![0u8; 64 << 10];
    let deadline = Instant::now() + Duration::from_secs(cfg.max_seconds);
    let (mut sent_bytes, mut buffers) = (0u64, 0u64);

    // Bounded by --max-seconds (and SIGINT/SIGTERM).
    while !STOP.load(Relaxed) && Instant::now() < deadline {
        if want_new {
            // Refresh the timestamps: reuse the buffer if no connection still holds it.
            match Arc::get_mut(&mut cur) {
                Some(v) => build(v, cfg.size, &mut seq),
                None => {
                    let mut v = Vec::with_capacity(BUFFER_BYTES + cfg.size);
                    build(&mut v, cfg.size, &mut seq);
                    cur = Arc::new(v);
                }
            }
            gen += 1;
            buffers += 1;
            want_new = false;
        }
        // SAFETY: `events` is a live array of the given length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        if n < 0 {
            continue; // EINTR
        }
        for ev in &events[..n as usize] {
            let (flags, token) = (ev.events, ev.u64);
            if token == LISTENER {
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
                    let writer = accepted < cfg.subscribers;
                    accepted += 1;
                    let slot = match conns.iter().position(|c| c.is_none()) {
                        Some(i) => i,
                        None => {
                            conns.push(None);
                            conns.len() - 1
                        }
                    };
                    conns[slot] = Some(Conn {
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
                    epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, want, slot as u64);
                }
                continue;
            }
            let slot = token as usize;
            let Some(c) = conns.get_mut(slot).and_then(|c| c.as_mut()) else {
                continue;
            };
            let mut close = flags & (libc::EPOLLERR as u32 | libc::EPOLLHUP as u32) != 0;
            if flags & (libc::EPOLLIN as u32 | libc::EPOLLRDHUP as u32) != 0 {
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
                        close = true;
                    } else {
                        let e = std::io::Error::last_os_error().raw_os_error();
                        if !matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR)) {
                            close = true;
                        }
                    }
                    break;
                }
            }
            if !close && c.writer && flags & libc::EPOLLOUT as u32 != 0 {
                if c.buf.is_none() {
                    if c.gen == gen {
                        // Already sent the current buffer: a fresh one next turn.
                        want_new = true;
                    } else {
                        c.buf = Some(cur.clone());
                        c.gen = gen;
                        c.off = 0;
                    }
                }
                if let Some(b) = &c.buf {
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
                        sent_bytes += r as u64;
                        if c.off == b.len() {
                            c.buf = None;
                            want_new = true;
                        }
                    } else if r < 0 {
                        let e = std::io::Error::last_os_error().raw_os_error();
                        if !matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR)) {
                            close = true;
                        }
                    }
                }
            }
            if close {
                epoll_ctl(ep, libc::EPOLL_CTL_DEL, c.fd, 0, 0);
                // SAFETY: we own this fd and close it once.
                unsafe { libc::close(c.fd) };
                conns[slot] = None;
            }
        }
    }
    for c in conns.into_iter().flatten() {
        // SAFETY: we own these fds.
        unsafe { libc::close(c.fd) };
    }
    // SAFETY: we own the epoll fd.
    unsafe { libc::close(ep) };
    eprintln!(
        "fanout-sink: accepted {accepted}, sent {sent_bytes} bytes, {buffers} buffers rebuilt"
    );
}
