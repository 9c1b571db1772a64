//! Mixed-population soak: at the same time, publishers sending sequence-numbered, checksummed
//! lines; churners closing by FIN, RST and half-close; slowloris clients; binary garbage;
//! over-long lines; never-reading and late-reading subscribers. Checks every healthy
//! subscriber's stream (no gap, duplicate, reorder or torn line), that no server socket stays in
//! CLOSE_WAIT longer than 2 s, fds back to baseline, RSS bounded; then SIGTERM: every line
//! published before it is delivered, a clean EOF, exit 0, promptly.
//!
//! Short in the suite (RINGFAN_SOAK_SECS, default 6); `scripts/soak.sh` runs the long form.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const PUBLISHERS: u64 = 3;
const HEALTHY: usize = 6;
const NEVER_READING: usize = 4;
const LATE_READING: usize = 3;
const SLOWLORIS: usize = 8;
const MAX_FRAME: usize = 4096;
/// Lines per second per publisher (paced in bursts every 10 ms).
const LINES_PER_SEC: u64 = 3000;
const RSS_MAX_BYTES: usize = 256 << 20;
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(2);

fn soak_secs() -> u64 {
    std::env::var("RINGFAN_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// xorshift64*: deterministic per thread, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// `S <publisher> <seq> <pad> <checksum of the preceding fields>\n`, the pad 0..200 bytes.
fn soak_line(publisher: u64, seq: u64, pad_len: usize) -> Vec<u8> {
    let pad: String = (0..pad_len)
        .map(|i| (b'a' + ((seq as usize + i) % 26) as u8) as char)
        .collect();
    let body = format!("S {publisher} {seq} {pad}");
    format!("{body} {:08x}\n", fnv1a(body.as_bytes())).into_bytes()
}

/// Checks one received line; returns (publisher, seq).
fn parse_soak_line(line: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(line).map_err(|_| format!("not UTF-8: {line:?}"))?;
    let text = text
        .strip_suffix('\n')
        .ok_or_else(|| format!("no newline: {text:?}"))?;
    let (body, sum) = text
        .rsplit_once(' ')
        .ok_or_else(|| format!("torn line: {text:?}"))?;
    if format!("{:08x}", fnv1a(body.as_bytes())) != sum {
        return Err(format!(
            "checksum mismatch (torn or corrupted line): {text:?}"
        ));
    }
    let mut f = body.split(' ');
    let (Some("S"), Some(p), Some(s)) = (f.next(), f.next(), f.next()) else {
        return Err(format!("not a soak line: {text:?}"));
    };
    Ok((
        p.parse()
            .map_err(|_| format!("bad publisher in {text:?}"))?,
        s.parse().map_err(|_| format!("bad seq in {text:?}"))?,
    ))
}

/// Per-publisher continuity: each publisher's lines arrive exactly once and in order, from the
/// first one this reader saw (`from_zero`: from seq 0).
#[derive(Default)]
struct StreamCheck {
    next: HashMap<u64, u64>,
    lines: u64,
    from_zero: bool,
}

impl StreamCheck {
    fn feed(&mut self, line: &[u8]) -> Result<(), String> {
        let (p, seq) = parse_soak_line(line)?;
        let first = if self.from_zero { 0 } else { seq };
        let next = self.next.entry(p).or_insert(first);
        if seq != *next {
            return Err(format!(
                "publisher {p}: expected seq {next}, got {seq} ({})",
                if seq < *next {
                    "duplicate or reorder"
                } else {
                    "gap"
                }
            ));
        }
        *next += 1;
        self.lines += 1;
        Ok(())
    }
}

/// Reads lines from `s` into `check` until EOF, an error, or `stop`; returns how it ended.
fn read_stream(
    mut s: TcpStream,
    check: &Mutex<StreamCheck>,
    stop: &AtomicBool,
) -> Result<String, String> {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                return if carry.is_empty() {
                    Ok("eof".into())
                } else {
                    Err(format!(
                        "EOF after a partial line: {:?}",
                        String::from_utf8_lossy(&carry)
                    ))
                }
            }
            Ok(n) => {
                carry.extend_from_slice(&buf[..n]);
                let mut start = 0;
                let mut c = check.lock().unwrap();
                while let Some(i) = carry[start..].iter().position(|&b| b == b'\n') {
                    c.feed(&carry[start..start + i + 1])?;
                    start += i + 1;
                }
                drop(c);
                carry.drain(..start);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    return Ok("stopped".into());
                }
            }
            Err(e) => return Ok(format!("error: {e}")),
        }
    }
}

fn connect(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()
}

fn linger_zero(s: &TcpStream) {
    set_linger_zero(s);
}

/// A publisher: paced lines, its own input drained and ignored (it is a subscriber too).
fn publisher(
    addr: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> (TcpStream, JoinHandle<()>) {
    let s = connect(addr).expect("publisher connects");
    s.set_nodelay(true).unwrap();
    // Drained until EOF: the shutdown flushes to publishers too.
    let mut drain = s.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = drain.read(&mut buf) {
            if n == 0 {
                return;
            }
        }
    });
    let mut w = s.try_clone().unwrap();
    let h = thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9 ^ id);
        let mut seq = 0u64;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let due = start.elapsed().as_millis() as u64 * LINES_PER_SEC / 1000;
            let mut out = Vec::new();
            while seq < due {
                out.extend(soak_line(id, seq, rng.below(200) as usize));
                seq += 1;
            }
            if !out.is_empty() {
                w.write_all(&out).expect("publisher write");
                sent.store(seq, Ordering::Release);
            }
            thread::sleep(Duration::from_millis(10));
        }
    });
    (s, h)
}

/// Connections that come and go: FIN, RST, or half-close then read to EOF.
fn churner(
    addr: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut buf = vec![0u8; 16 << 10];
        while !stop.load(Ordering::Relaxed) {
            let Some(mut s) = connect(addr) else { continue };
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            for _ in 0..rng.below(6) {
                let _ = s.read(&mut buf);
            }
            match rng.below(3) {
                0 => drop(s), // FIN
                1 => {
                    linger_zero(&s);
                    drop(s); // RST
                }
                _ => {
                    // Half-close: the server flushes what it queued, sends its FIN.
                    let _ = s.shutdown(Shutdown::Write);
                    let end = Instant::now() + Duration::from_secs(3);
                    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                    while Instant::now() < end {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                }
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Garbage (no newline, so nothing is ever published) or an over-long line (a protocol error:
/// the offender alone gets the error line, then EOF).
fn abuser(
    addr: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut rng = Rng(seed);
        while !stop.load(Ordering::Relaxed) {
            let Some(mut s) = connect(addr) else { continue };
            let overlong = rng.below(2) == 0;
            let len = if overlong {
                MAX_FRAME * 2
            } else {
                1 + rng.below(MAX_FRAME as u64 / 2) as usize
            };
            let data: Vec<u8> = (0..len)
                .map(|_| match rng.next() as u8 {
                    b'\n' => 0,
                    b => b,
                })
                .collect();
            let _ = s.write_all(&data);
            if overlong {
                // Read (and discard broadcast traffic) until the server's EOF.
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
            } else if rng.below(2) == 0 {
                linger_zero(&s);
            }
            drop(s);
            count.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(5));
        }
    })
}

/// One byte every 100 ms of a line that never ends (stays under the frame limit).
fn slowloris(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    thread::spawn(move || {
        let Some(mut s) = connect(addr) else { return };
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) && n < MAX_FRAME / 2 {
            if s.write_all(b"x").is_err() {
                return;
            }
            n += 1;
            thread::sleep(Duration::from_millis(100));
        }
        drop(s);
    })
}

/// Server sockets on `port` in CLOSE_WAIT, by remote port.
fn close_wait_remotes(port: u16) -> Vec<u16> {
    tcp_rows()
        .into_iter()
        .filter(|r| r.local_port == port && r.state == 0x08)
        .map(|r| r.remote_port)
        .collect()
}

#[test]
fn mixed_population_soak() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    raise_nofile();
    let max_frame = MAX_FRAME.to_string();
    let mut server = Server::start(&[
        ("RINGFAN_ECHO", "0"),
        ("RINGFAN_MAX_FRAME_BYTES", &max_frame),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "256KiB"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "1000"),
        ("RINGFAN_SHUTDOWN_TIMEOUT_MS", "10000"),
    ]);
    let addr = server.addr();
    let port = server.port();
    let pid = server.pid();
    let baseline = server.baseline_fds();
    let stop_readers = Arc::new(AtomicBool::new(false));

    // Healthy subscribers first, so they see every line from seq 0.
    let mut healthy = Vec::new();
    for _ in 0..HEALTHY {
        let s = connect(addr).expect("subscriber connects");
        let check = Arc::new(Mutex::new(StreamCheck {
            from_zero: true,
            ..Default::default()
        }));
        let (c, stop) = (check.clone(), stop_readers.clone());
        let probe = s.try_clone().unwrap();
        let h = thread::spawn(move || read_stream(s, &c, &stop));
        healthy.push((probe, check, h));
    }
    let never: Vec<TcpStream> = (0..NEVER_READING)
        .map(|_| {
            let s = connect(addr).unwrap();
            set_rcvbuf(&s, 4096);
            s
        })
        .collect();
    let late: Vec<TcpStream> = (0..LATE_READING).map(|_| connect(addr).unwrap()).collect();
    // Every connection so far is subscribed before the first line is published.
    assert!(
        wait_until(secs(5), || fd_count(pid)
            >= baseline + HEALTHY + NEVER_READING + LATE_READING),
        "subscribers not accepted: {}",
        server.describe()
    );

    let stop_load = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let abused = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for id in 0..PUBLISHERS {
        let sent = Arc::new(AtomicU64::new(0));
        let (s, h) = publisher(addr, id, stop_load.clone(), sent.clone());
        publishers.push((s, h, sent));
    }
    let mut load: Vec<JoinHandle<()>> = Vec::new();
    for i in 0..3 {
        load.push(churner(addr, 11 + i, stop_load.clone(), churned.clone()));
    }
    for i in 0..2 {
        load.push(abuser(addr, 101 + i, stop_load.clone(), abused.clone()));
    }
    for _ in 0..SLOWLORIS {
        load.push(slowloris(addr, stop_load.clone()));
    }
    // Late readers start reading after 2 s; whatever they get must be a clean prefix.
    let late_checks: Vec<_> = late
        .into_iter()
        .map(|s| {
            let check = Arc::new(Mutex::new(StreamCheck {
                from_zero: true,
                ..Default::default()
            }));
            let (c, stop) = (check.clone(), stop_readers.clone());
            let h = thread::spawn(move || {
                thread::sleep(Duration::from_secs(2));
                read_stream(s, &c, &stop)
            });
            (check, h)
        })
        .collect();

    // Watch the kernel's view while the load runs.
    let run = Duration::from_secs(soak_secs());
    let t0 = Instant::now();
    let mut close_wait_since: HashMap<u16, Instant> = HashMap::new();
    let mut rss_max = 0;
    while t0.elapsed() < run {
        let now = Instant::now();
        let cw = close_wait_remotes(port);
        close_wait_since.retain(|p, _| cw.contains(p));
        for p in cw {
            let since = *close_wait_since.entry(p).or_insert(now);
            assert!(
                now - since <= CLOSE_WAIT_MAX,
                "server socket to port {p} in CLOSE_WAIT for {:?}; {}",
                now - since,
                server.describe()
            );
        }
        rss_max = rss_max.max(rss_bytes(pid));
        assert!(server.is_running(), "server died: {}", server.stderr_text());
        thread::sleep(Duration::from_millis(100));
    }
    stop_load.store(true, Ordering::Relaxed);
    for h in load {
        h.join().unwrap();
    }
    let mut pub_streams = Vec::new();
    let mut last_seq = HashMap::new();
    for (id, (s, h, sent)) in publishers.into_iter().enumerate() {
        h.join().unwrap();
        last_seq.insert(id as u64, sent.load(Ordering::Acquire));
        pub_streams.push(s);
    }
    drop(never);
    for (check, h) in late_checks {
        let end = h.join().unwrap();
        let c = check.lock().unwrap();
        assert!(
            end.is_ok(),
            "late reader: {end:?} after {} good lines",
            c.lines
        );
    }
    eprintln!(
        "soak: {:?}, {} churned, {} garbage/over-long, publishers sent {:?}, server RSS max {} KiB",
        run,
        churned.load(Ordering::Relaxed),
        abused.load(Ordering::Relaxed),
        last_seq,
        rss_max >> 10
    );
    assert!(churned.load(Ordering::Relaxed) > 0 && abused.load(Ordering::Relaxed) > 0);
    assert!(
        rss_max < RSS_MAX_BYTES,
        "server RSS reached {} MiB",
        rss_max >> 20
    );

    // Everything but publishers and healthy subscribers has gone: fds back to baseline + those.
    let expected = baseline + PUBLISHERS as usize + HEALTHY;
    assert!(
        wait_until(secs(5), || fd_count(pid) == expected),
        "fds {} after the load stopped, expected {expected}; {}",
        fd_count(pid),
        server.describe()
    );
    assert!(
        wait_until(secs(3), || close_wait_remotes(port).is_empty()),
        "CLOSE_WAIT left: {}",
        server.describe()
    );

    // Publishers' last bytes have reached the server's socket (acknowledged) before SIGTERM.
    let pub_ports: Vec<u16> = pub_streams
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    assert!(
        wait_until(secs(5), || tcp_rows()
            .iter()
            .filter(|r| pub_ports.contains(&r.local_port) && r.remote_port == port)
            .all(|r| r.tx_queue == 0)),
        "publishers' data not acknowledged"
    );
    server.sigterm();
    let t_sig = Instant::now();
    for (i, (probe, check, h)) in healthy.into_iter().enumerate() {
        let end = h.join().unwrap();
        let c = check.lock().unwrap();
        assert_eq!(
            end,
            Ok("eof".to_string()),
            "healthy subscriber {i} after {} lines",
            c.lines
        );
        for (p, last) in &last_seq {
            assert_eq!(
                c.next.get(p).copied().unwrap_or(0),
                *last,
                "healthy subscriber {i}: publisher {p}'s lines before SIGTERM not all delivered"
            );
        }
        drop(probe);
    }
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "server still running {:?} after SIGTERM; {}",
        t_sig.elapsed(),
        server.describe()
    );
    assert!(status.unwrap().success(), "exit status {status:?}");
    stop_readers.store(true, Ordering::Relaxed);
    drop(pub_streams);
}
