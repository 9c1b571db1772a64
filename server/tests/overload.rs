//! Overload and hostile clients: connection limit, fd exhaustion, slow consumers (both
//! policies), keepalive, who may publish, a flooding publisher. Each checks the kernel's view.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const FULL: &[u8] = b"-ERR server full\n";

/// A refused client sees exactly the refusal line, then EOF, within 1 s of connecting.
fn expect_refused(addr: std::net::SocketAddr, what: &str) {
    let start = Instant::now();
    let mut c = Client::connect(addr);
    let data = c.expect_clean_eof(start + Duration::from_secs(1), what);
    assert_eq!(data, FULL, "{what}: got {}", show(&data));
}

/// Writes `lines` numbered 64-byte lines in bursts of 1024, pausing `pause` between bursts.
fn publish_numbered(
    mut w: TcpStream,
    lines: usize,
    pause: Duration,
) -> thread::JoinHandle<TcpStream> {
    thread::spawn(move || {
        for burst in 0..lines.div_ceil(1024) {
            let mut buf = Vec::with_capacity(1024 * 64);
            for i in burst * 1024..((burst + 1) * 1024).min(lines) {
                buf.extend_from_slice(format!("{i:063}\n").as_bytes());
            }
            w.write_all(&buf).unwrap();
            thread::sleep(pause);
        }
        w
    })
}

/// The held clients leave (the server is back to baseline), then up to 10 new ones are served
/// and close cleanly.
fn served_again_after(held: Vec<Client>, server: &Server, ctx: &str) {
    let n = held.len();
    drop(held);
    server.assert_clean(0, Duration::from_secs(3), ctx);
    let mut again = connect_n(server.addr(), n.min(10));
    sync_clients(&mut again, 0);
    close_all_gracefully(again, "served again");
    server.assert_clean(0, Duration::from_secs(3), "at the end");
}

fn line_number(l: &[u8]) -> usize {
    std::str::from_utf8(&l[..l.len() - 1])
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("not a numbered line: {}", show(l)))
}

#[test]
fn connection_limit_refuses_at_once_then_serves_again() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    raise_nofile();
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_MAX_CONNECTIONS", "100")]);
    let mut held = connect_n(server.addr(), 100);
    sync_clients(&mut held, 0);
    for i in 0..50 {
        expect_refused(server.addr(), &format!("client {} over the limit", 101 + i));
    }
    assert!(
        wait_until(secs(2), || listen_backlog(server.port()) == 0),
        "backlog {}",
        listen_backlog(server.port())
    );
    server.assert_clean(100, Duration::from_secs(2), "100 held, 50 refused");
    served_again_after(held, &server, "after the 100 left");
}

/// A client over the limit that sent 10 KB before the server got to it still reads the refusal
/// line and then EOF: closing a socket with unread bytes would send a reset instead of the FIN.
#[test]
fn refused_client_that_already_sent_data_gets_the_line_then_eof_not_a_reset() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_MAX_CONNECTIONS", "1"), ("RINGFAN_ECHO", "1")]);
    let mut held = connect_n(server.addr(), 1);
    sync_clients(&mut held, 0);
    // Stopped, the server accepts nothing: the kernel completes the handshake and queues the
    // bytes on the server's side, so the refusal finds them there unread.
    server.signal(libc::SIGSTOP);
    // kill() only queues the signal: connecting before the server has really stopped would let
    // it refuse the connection before the bytes arrive.
    let stopped = || proc_state(server.pid()) == Some('T');
    assert!(
        wait_until(secs(2), stopped),
        "the server did not stop on SIGSTOP"
    );
    let mut c = Client::connect(server.addr());
    c.stream.write_all(&[b'x'; 10 * 1024]).unwrap();
    let port = c.local_port();
    let queued = || {
        tcp_rows()
            .iter()
            .any(|r| r.local_port == server.port() && r.remote_port == port && r.rx_queue == 10240)
    };
    let seen = wait_until(secs(2), queued);
    server.signal(libc::SIGCONT);
    assert!(seen, "the server's side never held the 10 KB unread");
    let data = c.expect_clean_eof(secs(2), "refused after sending 10 KB");
    assert_eq!(data, FULL, "got {}", show(&data));
    server.assert_clean(1, Duration::from_secs(2), "1 held, 1 refused");
    served_again_after(held, &server, "after the held one left");
}

#[test]
fn out_of_fds_refuses_waiting_connections_without_spinning() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    raise_nofile();
    // A hard limit of 40 fds and no connection limit: accept itself hits EMFILE.
    let server = Server::start_nofile(
        &[
            ("RINGFAN_ECHO", "1"),
            ("RINGFAN_THREADS", "1"),
            ("RINGFAN_MAX_CONNECTIONS", "100000"),
        ],
        Some(40),
    );
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..50 {
        let start = Instant::now();
        let mut c = Client::connect(server.addr());
        // A served client gets no data; a refused one gets the line and EOF at once.
        let r = c.read_to_eof(start + Duration::from_millis(250));
        match r.end {
            End::Eof => {
                assert_eq!(r.data, FULL);
                refused += 1;
            }
            End::TimedOut => held.push(c),
            other => panic!("unexpected end {other:?}"),
        }
    }
    eprintln!(
        "held {}, refused {refused}, server fds {}",
        held.len(),
        server.fds()
    );
    assert!(
        refused > 0 && !held.is_empty(),
        "held {} refused {refused}",
        held.len()
    );
    // The condition lasts: more clients are refused promptly, and the server does not spin.
    let cpu0 = cpu_time(server.pid());
    let t0 = Instant::now();
    for i in 0..10 {
        expect_refused(server.addr(), &format!("extra client {i} while out of fds"));
        thread::sleep(Duration::from_millis(100));
    }
    let cpu = cpu_time(server.pid()) - cpu0;
    let wall = t0.elapsed();
    eprintln!("out of fds for {wall:?}: server CPU {cpu:?}");
    assert!(
        cpu < wall / 5,
        "server used {cpu:?} CPU over {wall:?} while out of fds (busy loop?)"
    );
    assert!(
        wait_until(secs(2), || listen_backlog(server.port()) == 0),
        "backlog {}",
        listen_backlog(server.port())
    );
    assert_eq!(server.states().close_wait(), 0);
    // Fds free up: serving resumes by itself.
    served_again_after(held, &server, "after the held clients left");
}

/// 1 never-reading subscriber among fast ones under a steady flood, policy `disconnect` with
/// the slow-consumer timeout: the fast ones get every line; the stalled one is evicted within the
/// bounds and its socket closed; the server's memory stays bounded.
#[test]
fn never_reading_subscriber_is_evicted_fast_ones_get_everything() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    raise_nofile();
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "1MiB"),
        ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "500"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "300"),
    ]);
    let mut clients = connect_n(server.addr(), 12);
    sync_clients(&mut clients, 0);
    let rss0 = rss_bytes(server.pid());
    let slow = clients.pop().unwrap();
    set_rcvbuf(&slow.stream, 4096);
    let slow_port = slow.local_port();
    let publisher = clients.remove(0);
    // More than the server's socket send buffer can absorb for the slow one, paced.
    let wmem = tcp_mem_max("wmem").unwrap_or(4 << 20);
    let lines = ((wmem + (4 << 20)) / 64 / 1024 + 1) * 1024;
    let writer = publish_numbered(publisher.writer(), lines, Duration::from_millis(5));
    let readers: Vec<_> = std::iter::once(publisher)
        .chain(clients)
        .map(|mut c| {
            thread::spawn(move || {
                let got = c.read_lines(lines, secs(30));
                (
                    got.iter().enumerate().all(|(i, l)| line_number(l) == i),
                    got.len(),
                    c,
                )
            })
        })
        .collect();
    let mut peak = 0;
    let evicted = wait_until(secs(10), || {
        peak = peak.max(rss_bytes(server.pid()));
        tcp_states_of(server.port(), slow_port).is_empty()
    });
    assert!(
        evicted,
        "the never-reading subscriber is still connected: {:?}",
        tcp_states_of(server.port(), slow_port)
    );
    let w = writer.join().unwrap();
    for r in readers {
        let (in_order, n, _c) = r.join().unwrap();
        assert!(
            in_order && n == lines,
            "a fast subscriber got {n} of {lines} lines (in order: {in_order})"
        );
    }
    eprintln!(
        "server RSS {} KiB before, peak {} KiB",
        rss0 / 1024,
        peak / 1024
    );
    assert!(peak < rss0 + (64 << 20), "RSS grew from {rss0} to {peak}");
    drop((slow, w));
    server.assert_clean(0, Duration::from_secs(3), "after every client left");
}

/// RINGFAN_NOTSENT_LOWAT: what a stalled subscriber cannot take yet waits in ringfan's queue,
/// one copy shared by every subscriber, not as a private copy in its socket's send buffer; once
/// it reads, it gets every line in order. With the option off, the kernel holds the backlog.
#[test]
fn unsent_backlog_waits_in_the_server_not_in_the_socket() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    // 768 KiB: under the flow-control threshold (a quarter of the default 4 MiB queue limit).
    let lines = 12 * 1024;
    // The bound: the low-water mark plus one more segment of up to 64 KiB that the kernel may
    // still be filling when it crosses the mark.
    for (lowat, kernel_bound) in [("16KiB", Some(128usize << 10)), ("0", None)] {
        let server = Server::start(&[("RINGFAN_NOTSENT_LOWAT", lowat), ("RINGFAN_ECHO", "0")]);
        let mut clients = connect_n(server.addr(), 2);
        sync_clients_opts(&mut clients, 0, false);
        // Not reading: once its receive buffer is full, the rest waits on the server's side.
        let mut slow = clients.pop().unwrap();
        let slow_port = slow.local_port();
        let publisher = clients.pop().unwrap();
        let w = publish_numbered(publisher.writer(), lines, Duration::from_millis(1))
            .join()
            .unwrap();
        // The server's socket toward the stalled subscriber: bytes it holds (sent or not) that
        // the peer has not acknowledged. Wait until it stops changing.
        let held = || {
            tcp_rows()
                .iter()
                .find(|r| r.local_port == server.port() && r.remote_port == slow_port)
                .map_or(0, |r| r.tx_queue)
        };
        let (mut last, mut since) = (usize::MAX, Instant::now());
        assert!(
            wait_until(secs(10), || {
                let now = held();
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                since.elapsed() >= Duration::from_millis(300)
            }),
            "RINGFAN_NOTSENT_LOWAT={lowat}: the socket's queue never settled"
        );
        eprintln!(
            "RINGFAN_NOTSENT_LOWAT={lowat}: the socket holds {last} of {} bytes",
            lines * 64
        );
        match kernel_bound {
            Some(bound) => assert!(
                last > 0 && last <= bound,
                "RINGFAN_NOTSENT_LOWAT={lowat}: the socket holds {last} bytes (at most {bound} expected)"
            ),
            // The contrast that makes the bound above mean something: without the option the
            // kernel takes (nearly) the whole backlog.
            None => assert!(
                last >= lines * 64 / 2,
                "RINGFAN_NOTSENT_LOWAT=0: the socket holds only {last} bytes"
            ),
        }
        let got = slow.read_lines(lines, secs(30));
        assert_eq!(
            got.len(),
            lines,
            "RINGFAN_NOTSENT_LOWAT={lowat}: lines received"
        );
        assert!(
            got.iter().enumerate().all(|(i, l)| line_number(l) == i),
            "RINGFAN_NOTSENT_LOWAT={lowat}: lines out of order"
        );
        drop(w);
        close_all_gracefully(vec![slow, publisher], "notsent lowat");
        server.assert_clean(0, Duration::from_secs(3), "at the end");
    }
}

/// Policy `drop`: the stalled subscriber stays connected and, once it reads, sees whole lines in
/// order with a gap where messages were dropped for it.
#[test]
fn drop_policy_keeps_the_subscriber_and_drops_whole_lines() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_SLOW_CONSUMER", "drop"),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "256KiB"),
        ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "0"),
    ]);
    let mut clients = connect_n(server.addr(), 3);
    sync_clients(&mut clients, 0);
    // Default socket buffers (a tiny receive buffer never reopens its window by a full MSS on
    // loopback, and the sender would wait for its persist timer): flood past both of them.
    let mut slow = clients.pop().unwrap();
    let mut reader = clients.pop().unwrap();
    let publisher = clients.pop().unwrap();
    let wmem = tcp_mem_max("wmem").unwrap_or(4 << 20);
    let rmem = tcp_mem_max("rmem").unwrap_or(6 << 20);
    let lines = ((wmem + rmem + (2 << 20)) / 64 / 1024 + 1) * 1024;
    let writer = publish_numbered(publisher.writer(), lines, Duration::from_millis(1));
    let mut publisher = publisher;
    let echo = thread::spawn(move || (publisher.read_lines(lines, secs(30)).len(), publisher));
    assert_eq!(
        reader.read_lines(lines, secs(30)).len(),
        lines,
        "the reading subscriber gets every line"
    );
    let mut pw = writer.join().unwrap();
    let (echoed, mut publisher) = echo.join().unwrap();
    assert_eq!(echoed, lines);
    // Still connected (ESTABLISHED on the server side), and it gets a gap, never a cut line.
    assert_eq!(server.states().established(), 3);
    let mut all = Vec::new();
    while let Ok(Some(l)) = slow.read_line(Instant::now() + Duration::from_millis(500)) {
        all.push(l);
    }
    assert!(!all.is_empty(), "the slow subscriber got nothing at all");
    // Now that it has caught up, the next line reaches it again: after a gap.
    pw.write_all(format!("{lines:063}\n").as_bytes()).unwrap();
    all.push(slow.expect_line(secs(5), "slow subscriber after catching up"));
    assert_eq!(line_number(&reader.expect_line(secs(5), "reader")), lines);
    assert_eq!(
        line_number(&publisher.expect_line(secs(5), "publisher")),
        lines
    );
    drop(pw);
    let mut last = None;
    let mut gap = false;
    for l in &all {
        assert_eq!(l.len(), 64, "cut line {}", show(l));
        let n = line_number(l);
        if let Some(p) = last {
            assert!(n > p, "out of order: {n} after {p}");
            gap |= n != p + 1;
        }
        last = Some(n);
    }
    assert!(
        gap && all.len() <= lines,
        "no message was dropped for the stalled subscriber ({} lines)",
        all.len()
    );
    close_all_gracefully(vec![slow, reader, publisher], "drop policy");
    server.assert_clean(0, Duration::from_secs(3), "at the end");
}

#[test]
fn keepalive_timer_runs_on_idle_connections() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    for (secs_var, expect) in [("30", 2u8), ("0", 0u8)] {
        let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_KEEPALIVE_SECS", secs_var)]);
        let mut c = connect_n(server.addr(), 1);
        sync_clients(&mut c, 0);
        assert!(
            wait_until(secs(2), || established_timers(server.port())
                == vec![expect]),
            "RINGFAN_KEEPALIVE_SECS={secs_var}: timers {:?}, expected [{expect}] (2 = keepalive)",
            established_timers(server.port())
        );
    }
}

#[test]
fn only_the_publish_listener_may_publish() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    // Small receive-buffer pool: its pages count in RSS once touched, and that is bounded by
    // configuration, not by what a client sends.
    let server = Server::start(&[
        ("RINGFAN_PUBLISH_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_RECV_BUFFERS", "64"),
    ]);
    let find = || {
        server.stdout_lines().iter().find_map(|l| {
            l.strip_prefix("ringfan publishers on ")
                .map(|a| a.trim().parse().unwrap())
        })
    };
    assert!(
        wait_until(secs(5), || find().is_some()),
        "no publishers line on stdout"
    );
    let paddr: std::net::SocketAddr = find().unwrap();
    let mut a = Client::connect(server.addr());
    let mut b = Client::connect(server.addr());
    let mut p = Client::connect(paddr);
    a.send(b"inject\n");
    // Until the publisher's line arrives, nobody has received anything: the injection was dropped.
    let rss0 = rss_bytes(server.pid());
    let deadline = secs(5);
    let mut got_a = None;
    while got_a.is_none() && Instant::now() < deadline {
        p.send(b"hello\n");
        if let Ok(Some(l)) = a.read_line(Instant::now() + Duration::from_millis(100)) {
            got_a = Some(l);
        }
    }
    assert_eq!(
        got_a.as_deref(),
        Some(&b"hello\n"[..]),
        "subscriber a's first line"
    );
    assert_eq!(b.expect_line(secs(2), "b"), b"hello\n");
    // A subscriber that keeps sending (32 MiB, no newlines at all) grows no buffer.
    let mut w = a.writer();
    let junk = thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..32 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    junk.join().unwrap();
    let rss = rss_bytes(server.pid());
    eprintln!(
        "server RSS {} KiB before, {} KiB after 32 MiB from a subscriber",
        rss0 / 1024,
        rss / 1024
    );
    assert!(rss < rss0 + (8 << 20), "RSS grew from {rss0} to {rss}");
    p.send(b"second\n");
    // a and b drain any extra hellos, then get "second".
    for (c, name) in [(&mut a, "a"), (&mut b, "b")] {
        loop {
            let l = c.expect_line(secs(5), name);
            if l != b"hello\n" {
                assert_eq!(l, b"second\n", "{name}");
                break;
            }
        }
    }
    assert_eq!(
        server.states().established(),
        2,
        "both subscribers, the sending one included, are still served"
    );
}

/// A client sending 32 MiB of lines as fast as it can while others subscribe: the subscribers
/// keep getting a second publisher's probe lines promptly and memory stays bounded.
#[test]
fn flooding_publisher_does_not_starve_others_or_grow_memory() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1")]);
    let mut clients = connect_n(server.addr(), 4);
    sync_clients(&mut clients, 0);
    let rss0 = rss_bytes(server.pid());
    let flooder = clients.remove(0);
    let mut prober = clients.remove(0);
    // Readers count probe lines and measure their delay; flood lines are skipped.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let mut worst = Duration::ZERO;
                let mut probes = 0;
                while probes < 20 {
                    let Ok(Some(l)) = c.read_line(secs(30)) else {
                        break;
                    };
                    if let Some(ts) = l.strip_prefix(b"probe ") {
                        let sent: u128 = std::str::from_utf8(&ts[..ts.len() - 1])
                            .unwrap()
                            .parse()
                            .unwrap();
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_micros();
                        worst = worst.max(Duration::from_micros((now - sent) as u64));
                        probes += 1;
                    }
                }
                (probes, worst)
            })
        })
        .collect();
    let mut fw = flooder.writer();
    let mut flooder = flooder;
    let drain = thread::spawn(move || while let Ok(Some(_)) = flooder.read_line(secs(30)) {});
    let flood = thread::spawn(move || {
        let line = [b'f'; 63];
        let mut buf = Vec::with_capacity(1 << 20);
        while buf.len() < (1 << 20) {
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        for _ in 0..32 {
            fw.write_all(&buf).unwrap();
        }
        fw
    });
    // The prober is a subscriber too: it must read, or it would (rightly) be evicted as a slow
    // consumer and its later probes discarded.
    let mut pw = prober.writer();
    let prober_drain = thread::spawn(move || {
        let mut seen = 0;
        while seen < 20 {
            match prober.read_line(secs(30)) {
                Ok(Some(l)) if l.starts_with(b"probe ") => seen += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        prober
    });
    let mut peak = 0;
    for _ in 0..20 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        pw.write_all(format!("probe {now}\n").as_bytes()).unwrap();
        peak = peak.max(rss_bytes(server.pid()));
        thread::sleep(Duration::from_millis(50));
    }
    for r in readers {
        let (probes, worst) = r.join().unwrap();
        assert_eq!(probes, 20, "a subscriber missed probe lines");
        eprintln!("worst probe delay behind the flood: {worst:?}");
        assert!(worst < Duration::from_secs(3), "probe delayed {worst:?}");
    }
    let fw = flood.join().unwrap();
    eprintln!(
        "server RSS {} KiB before, peak {} KiB during the flood",
        rss0 / 1024,
        peak / 1024
    );
    assert!(peak < rss0 + (96 << 20), "RSS grew from {rss0} to {peak}");
    fw.shutdown(std::net::Shutdown::Write).unwrap();
    drain.join().unwrap();
    drop((prober_drain.join().unwrap(), pw));
    server.assert_clean(0, Duration::from_secs(3), "after every client left");
}
