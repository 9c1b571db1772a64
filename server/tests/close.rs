//! Connection teardown: no CLOSE_WAIT or fd leaks whichever side closes first and however.

mod common;

use common::*;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

const SUBS: usize = 200;
/// Flood rate: 8 x 64-byte lines per ms = 512 KB/s to each of 200 subscribers (~100 MB/s out).
const FLOOD_LINES_PER_MS: u64 = 8;
/// How long the subscribers sit unread under the flood before closing: ~300 KB each is then
/// pending (more than the client's receive buffer), so the server has queued data and sends in
/// flight when the FIN/RST arrives.
const SOAK: Duration = Duration::from_millis(600);

/// A server, a flooding publisher (whose own echo is drained and checked by a thread) and `n`
/// synced subscribers that have each received at least the first flood line.
struct FloodSetup {
    server: Server,
    flood: Flood,
    publisher_ctl: std::net::TcpStream,
    publisher_reader: FloodReader,
    subs: Vec<(Client, FloodCheck)>,
}

fn flood_setup(n: usize) -> FloodSetup {
    raise_nofile();
    let server = Server::start(&[("RINGFAN_ECHO", "1")]);
    let mut clients = connect_n(server.addr(), n + 1);
    sync_clients(&mut clients, 0);
    let publisher = clients.remove(0);
    let publisher_ctl = publisher.writer();
    let flood = Flood::start(publisher.writer(), FLOOD_LINES_PER_MS);
    let publisher_reader = FloodReader::spawn(publisher, FloodCheck::new(), None, secs(60));
    // Everybody must be receiving the flood (from line 0) before we start closing.
    let deadline = secs(10);
    let subs = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let l = c.expect_line(deadline, &format!("subscriber {i} waiting for the flood"));
            let mut chk = FloodCheck::new();
            chk.feed(&l)
                .unwrap_or_else(|e| panic!("subscriber {i}: {e}"));
            (c, chk)
        })
        .collect();
    thread::sleep(SOAK);
    FloodSetup {
        server,
        flood,
        publisher_ctl,
        publisher_reader,
        subs,
    }
}

impl FloodSetup {
    /// The publisher must still be served after the subscribers went away; then close it cleanly
    /// and check the server is back to baseline.
    fn finish(self, ctx: &str) {
        let FloodSetup {
            server,
            flood,
            publisher_ctl,
            publisher_reader,
            subs,
        } = self;
        assert!(subs.is_empty());
        let before = publisher_reader.progress();
        assert!(
            wait_until(secs(5), || publisher_reader.progress() >= before + 200),
            "{ctx}: the publisher's own echo stopped progressing ({before} lines); {}",
            server.describe()
        );
        let sent = flood.stop();
        publisher_ctl.shutdown(Shutdown::Write).unwrap();
        let r = publisher_reader.join();
        assert!(
            r.error.is_none(),
            "{ctx}: publisher echo: {}",
            r.error.unwrap()
        );
        assert!(
            matches!(r.end, Some(End::Eof)),
            "{ctx}: publisher expected clean EOF after half-close, got {:?}",
            r.end
        );
        assert_eq!(
            r.check.next, sent,
            "{ctx}: publisher got back {} of its {sent} lines",
            r.check.next
        );
        drop(r.client);
        server.assert_clean(
            0,
            Duration::from_secs(5),
            &format!("{ctx}: after the publisher closed"),
        );
    }
}

/// Test 2: 200 subscribers half-close (FIN) while the publisher floods, each reads to EOF (the
/// server must stop delivering, flush, FIN) and closes. Within 2 s: no CLOSE_WAIT, fds == baseline + 1.
#[test]
fn fin_close_of_200_subscribers_while_flooding_leaks_nothing() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut s = flood_setup(SUBS);
    let subs = std::mem::take(&mut s.subs);
    for (c, _) in &subs {
        c.half_close();
    }
    // Read every subscriber to EOF in 8 threads; each must get a consecutive run of flood lines
    // from line 0, whole lines only, then a clean EOF.
    let deadline = secs(10);
    let mut chunks: Vec<Vec<(usize, Client, FloodCheck)>> = (0..8).map(|_| Vec::new()).collect();
    for (i, (c, chk)) in subs.into_iter().enumerate() {
        chunks[i % 8].push((i, c, chk));
    }
    let threads: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            thread::spawn(move || -> Vec<String> {
                let mut errs = Vec::new();
                for (i, mut c, mut chk) in chunk {
                    let r = c.read_to_eof(deadline);
                    if !r.end.is_eof() {
                        errs.push(format!(
                            "subscriber {i}: after FIN expected EOF, got {:?}",
                            r.end
                        ));
                    }
                    chk.feed_all(&r.data)
                        .unwrap_or_else(|e| errs.push(format!("subscriber {i}: {e}")));
                    drop(c);
                }
                errs
            })
        })
        .collect();
    let errs: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        errs.is_empty(),
        "{} subscribers failed:\n{}",
        errs.len(),
        errs.join("\n")
    );
    s.server.assert_clean(
        1,
        Duration::from_secs(2),
        "2 s after 200 FIN-closed subscribers",
    );
    s.finish("fin close");
}

/// Test 3: same, but the subscribers close abortively (SO_LINGER 0: RST).
#[test]
fn rst_close_of_200_subscribers_while_flooding_leaks_nothing() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut s = flood_setup(SUBS);
    for (c, _) in std::mem::take(&mut s.subs) {
        c.set_linger_zero();
        drop(c);
    }
    s.server.assert_clean(
        1,
        Duration::from_secs(2),
        "2 s after 200 RST-closed subscribers",
    );
    s.finish("rst close");
}

/// Subscribers that are not reading simply close(): the kernel sends RST if unread data is
/// pending, FIN otherwise. Either way nothing may leak.
#[test]
fn plain_close_of_non_reading_subscribers_while_flooding_leaks_nothing() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut s = flood_setup(SUBS);
    for (c, _) in std::mem::take(&mut s.subs) {
        drop(c);
    }
    s.server.assert_clean(
        1,
        Duration::from_secs(2),
        "2 s after 200 plainly closed subscribers",
    );
    s.finish("plain close");
}

fn tagged(tag: &str, seq: u64) -> Vec<u8> {
    format!("{tag} {seq:06} some payload to make the line longer ............\n").into_bytes()
}

/// Parses `<tag> <seq> ...` lines, checking each tag's sequence is consecutive from 0.
fn check_tagged(data: &[u8], tags: &[&str]) -> Result<Vec<u64>, String> {
    let mut next = vec![0u64; tags.len()];
    for line in data.split_inclusive(|&b| b == b'\n') {
        let ok = tags.iter().enumerate().find_map(|(k, t)| {
            let s = String::from_utf8_lossy(line);
            let rest = s.strip_prefix(t)?.strip_prefix(' ')?;
            let seq: u64 = rest.get(..6)?.parse().ok()?;
            Some((k, seq))
        });
        let Some((k, seq)) = ok else {
            return Err(format!("unexpected line {}", show(line)));
        };
        if seq != next[k] || line != tagged(tags[k], seq).as_slice() {
            return Err(format!(
                "{}: expected seq {}, got {}",
                tags[k],
                next[k],
                show(line)
            ));
        }
        next[k] += 1;
    }
    Ok(next)
}

/// Test 4: a client sends lines, half-closes, keeps reading: it gets every line broadcast before
/// its FIN reached the server (its own and another client's), then a clean EOF, even while the
/// other client keeps publishing. One worker so "before its FIN reached the server" is well defined.
#[test]
fn half_close_delivers_everything_sent_before_fin_then_eof() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_THREADS", "1")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 1);
    let mut b = clients.pop().unwrap();
    let mut a = clients.pop().unwrap();
    const N: u64 = 2000;
    let a_lines: Vec<u8> = (0..N).flat_map(|i| tagged("a", i)).collect();
    let b_lines: Vec<u8> = (0..N).flat_map(|i| tagged("b", i)).collect();
    a.send(&a_lines);
    b.send(&b_lines);
    // When b has received all 2N lines, the (single) worker has broadcast all of them, to a too.
    let deadline = secs(10);
    let mut got = Vec::new();
    for _ in 0..2 * N {
        got.extend(b.expect_line(deadline, "b reading a's and b's lines"));
    }
    assert_eq!(
        check_tagged(&got, &["a", "b"]).unwrap_or_else(|e| panic!("b: {e}")),
        vec![N, N]
    );

    // a half-closes (it has not read anything yet: ~2N lines are queued for it). b keeps publishing.
    a.half_close();
    let mut bw = b.writer();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let publisher = thread::spawn(move || {
        use std::io::Write;
        let mut k = 0;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            bw.write_all(&tagged("after", k)).unwrap();
            k += 1;
            thread::sleep(Duration::from_millis(1));
        }
        k
    });
    let data = a.expect_clean_eof(secs(10), "a after its half-close");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent_after = publisher.join().unwrap();
    // a must have every a and b line, in order, possibly followed by a prefix of the "after"
    // lines that the server processed before a's FIN, and nothing else.
    let counts = check_tagged(&data, &["a", "b", "after"]).unwrap_or_else(|e| panic!("a: {e}"));
    assert_eq!(
        &counts[..2],
        &[N, N],
        "a's data before EOF missed lines (counts a/b/after {counts:?})"
    );
    assert!(counts[2] <= sent_after);
    drop(a);
    server.assert_clean(
        1,
        Duration::from_secs(3),
        "after the half-closed client closed",
    );

    // b: read what is left (the "after" echoes), then close.
    b.half_close();
    let rest = b.expect_clean_eof(secs(10), "b after half-close");
    let counts = check_tagged(&rest, &["after"]).unwrap_or_else(|e| panic!("b tail: {e}"));
    assert_eq!(counts, vec![sent_after], "b's own 'after' lines");
    drop(b);
    server.assert_clean(0, Duration::from_secs(3), "after both clients closed");
}

/// A line immediately followed by the FIN (same moment, likely the same read): the line reached
/// the server before the FIN did, so it is broadcast to every connection, its sender included,
/// and the sender gets it before its EOF. The other client gets it too.
#[test]
fn line_sent_right_before_fin_is_echoed_to_its_sender() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 1);
    clients[0].send(b"last words\n");
    clients[0].half_close();
    let l = clients[1].expect_line(secs(5), "other client");
    assert_eq!(l, b"last words\n", "other client got {}", show(&l));
    let data = clients[0].expect_clean_eof(secs(5), "sender after its half-close");
    assert_eq!(
        data,
        b"last words\n",
        "sender: expected the echo of its own last line before EOF, got {}",
        show(&data)
    );
    drop(clients.remove(0)); // already half-closed and at EOF
    close_all_gracefully(clients, "line before FIN");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}

/// Test 6: server-first close (protocol error) to a client that never closes. With
/// RINGFAN_CLOSE_TIMEOUT_MS=1000 the server's socket sits in FIN_WAIT2 (fd still open), then after
/// about the timeout it closes abortively: fd count back to baseline, no FIN_WAIT2 row left (an
/// orphaned FIN_WAIT2 would mean a plain close), and the client's socket is reset.
#[test]
fn server_first_close_times_out_with_reset_when_client_never_closes() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[
        ("RINGFAN_CLOSE_TIMEOUT_MS", "1000"),
        ("RINGFAN_MAX_FRAME_BYTES", "256"),
    ]);
    let mut c = Client::connect(server.addr());
    let cport = c.local_port();
    c.send(&[b'x'; 1000]);
    let data = c.expect_clean_eof(secs(5), "client after over-long line");
    let t_eof = Instant::now();
    assert_bytes_eq(&data, &err_line(256), "error line");

    // Read the fd count before the socket states: the FIN_WAIT2 row then proves the fd was
    // still open when it was counted. The 1 s timeout leaves a wide window on a loaded machine.
    let mut in_fw2 = None;
    let saw_fw2 = wait_until(t_eof + Duration::from_millis(800), || {
        let fds = server.fds();
        if server.states().fin_wait2() == 1 {
            in_fw2 = Some((fds, server.describe()));
            true
        } else {
            false
        }
    });
    assert!(
        saw_fw2,
        "server socket never observed in FIN_WAIT2 after its SHUT_WR; {}",
        server.describe()
    );
    let t_fw2 = t_eof.elapsed();
    let (fds_in_fw2, described) = in_fw2.unwrap();
    assert_eq!(
        fds_in_fw2,
        server.baseline_fds() + 1,
        "while waiting for the client's FIN the server must keep the connection's fd open \
         (observed {t_fw2:?} after EOF: {described})"
    );

    let cleaned = wait_until(t_eof + Duration::from_secs(4), || {
        let st = server.states();
        st.fin_wait2() == 0 && st.total() == st.listen() && server.fds() == server.baseline_fds()
    });
    let t_clean = t_eof.elapsed();
    assert!(
        cleaned,
        "4 s after EOF (close timeout 1000 ms) the server still has the connection; expected fds == \
         baseline and no FIN_WAIT2 row (abortive close); {}",
        server.describe()
    );
    assert!(
        t_clean >= Duration::from_millis(500),
        "the server dropped the connection {t_clean:?} after the client's EOF; it should wait ~1000 ms \
         for the client's FIN (FIN_WAIT2 seen at {t_fw2:?})"
    );
    // The abortive close reached the client: its socket (CLOSE_WAIT until now) is gone.
    let reset = wait_until(secs(2), || tcp_states_of(cport, server.port()).is_empty());
    assert!(
        reset,
        "client socket still in {:?} (expected the server's RST to remove it)",
        tcp_states_of(cport, server.port())
            .iter()
            .map(|&s| state_name(s))
            .collect::<Vec<_>>()
    );
    let r = c.read_to_eof(secs(2));
    assert!(
        matches!(r.end, End::Eof | End::Reset(_)) && r.data.is_empty(),
        "client read after the reset: {:?} with {} bytes",
        r.end,
        r.data.len()
    );
    drop(c);
    server.assert_clean(0, Duration::from_secs(2), "after the timed-out connection");
}

/// A subscriber that stops reading is evicted once its queue exceeds
/// RINGFAN_SEND_QUEUE_BYTES_MAX: it gets a consecutive prefix of whole lines, then a clean EOF;
/// the publisher and a reading observer are unaffected (never evicted, get every line).
#[test]
fn slow_subscriber_is_evicted_with_flush_and_fin() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    // 2 MiB: small enough to overflow quickly, large enough that the two reading clients (which
    // keep up with the paced publisher) have ~100 ms of slack for scheduling hiccups.
    const LIMIT: usize = 2 << 20;
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "2097152"),
    ]);
    let mut clients = connect_n(server.addr(), 3);
    sync_clients(&mut clients, 0);
    let mut slow = clients.pop().unwrap();
    let observer = clients.pop().unwrap();
    let publisher = clients.pop().unwrap();
    // Enough to overflow the kernel buffers on both sides of the slow client plus the queue.
    let wmem = tcp_mem_max("wmem").unwrap_or(4 << 20);
    let total_bytes = (wmem + 2 * LIMIT + (4 << 20)).max(12 << 20);
    let lines = (total_bytes / FLOOD_LINE_LEN) as u64;
    let deadline = secs(20);
    let mut w = publisher.writer();
    let obs_ctl = observer.writer();
    let pub_reader = FloodReader::spawn(publisher, FloodCheck::new(), None, deadline);
    let obs_reader = FloodReader::spawn(observer, FloodCheck::new(), None, deadline);
    // Paced at ~16 MB/s (64 KiB every 4 ms).
    let writer = thread::spawn(move || {
        use std::io::Write;
        let t0 = Instant::now();
        let mut seq = 0;
        let mut k = 0u32;
        while seq < lines {
            let to = (seq + 1024).min(lines);
            w.write_all(&flood_bytes(seq, to)).unwrap();
            seq = to;
            k += 1;
            if let Some(wait) = (Duration::from_millis(4) * k).checked_sub(t0.elapsed()) {
                thread::sleep(wait);
            }
        }
        w
    });
    let w = writer.join().unwrap();
    let all_in = wait_until(deadline, || {
        obs_reader.progress() == lines && pub_reader.progress() == lines
            || obs_reader.is_finished()
            || pub_reader.is_finished()
    });
    for (who, r) in [("observer", &obs_reader), ("publisher", &pub_reader)] {
        assert!(
            all_in && !r.is_finished(),
            "{who} stopped at {} of {lines} lines (reader thread finished: {}: evicted or closed?)",
            r.progress(),
            r.is_finished()
        );
    }
    let data = slow.expect_clean_eof(secs(10), "slow subscriber (no EOF: was it evicted?)");
    let mut chk = FloodCheck::new();
    chk.feed_all(&data)
        .unwrap_or_else(|e| panic!("evicted subscriber's data: {e}"));
    assert!(
        chk.next < lines,
        "the slow subscriber got all {lines} lines: it was never evicted"
    );
    drop(slow);
    server.assert_clean(
        2,
        Duration::from_secs(3),
        "after the evicted subscriber closed",
    );

    w.shutdown(Shutdown::Write).unwrap();
    let p = pub_reader.join();
    assert!(p.error.is_none(), "publisher: {:?}", p.error);
    assert!(
        matches!(p.end, Some(End::Eof)),
        "publisher: expected EOF, got {:?}",
        p.end
    );
    assert_eq!(p.check.next, lines);
    drop(p.client);
    obs_ctl.shutdown(Shutdown::Write).unwrap();
    let o = obs_reader.join();
    assert!(o.error.is_none(), "observer: {:?}", o.error);
    assert!(
        matches!(o.end, Some(End::Eof)),
        "observer: expected EOF, got {:?}",
        o.end
    );
    assert_eq!(o.check.next, lines);
    drop(o.client);
    server.assert_clean(0, Duration::from_secs(5), "after all clients closed");
}

/// Thousands of subscribers with sends stuck in flight reset at once (a load generator exiting):
/// the server must close every one of them promptly, at a cost linear in their number.
/// Cancelling each connection's operations by fd made io_uring walk every armed poll of the ring
/// per cancel: at this scale the cancels outlasted their 1 s retry deadline, piled up, and kept a
/// core busy for minutes with every fd still open.
#[test]
fn mass_reset_of_backlogged_subscribers_closes_all_promptly() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    raise_nofile();
    const N: usize = 6000;
    // A small low-water mark and receive buffers, so a few KiB block every subscriber's send.
    let server = Server::start(&[("RINGFAN_NOTSENT_LOWAT", "4KiB"), ("RINGFAN_ECHO", "0")]);
    let mut clients = connect_n(server.addr(), N + 1);
    for c in &clients[1..] {
        set_rcvbuf(&c.stream, 4096);
    }
    sync_clients_opts(&mut clients, 0, false);
    let publisher = clients.remove(0);
    let mut w = publisher.writer();
    let lines: Vec<u8> = (0..1024)
        .flat_map(|i| format!("{i:063}\n").into_bytes())
        .collect();
    std::io::Write::write_all(&mut w, &lines).unwrap();
    // Every subscriber's socket on the server holds unacknowledged bytes: its send is blocked.
    let port = server.port();
    let blocked = || {
        tcp_rows()
            .iter()
            .filter(|r| r.local_port == port && r.state == 0x01 && r.tx_queue > 0)
            .count()
    };
    assert!(
        wait_until(secs(20), || blocked() >= N),
        "only {} of {N} subscribers have a blocked send",
        blocked()
    );
    let cpu0 = cpu_time(server.pid());
    let t0 = Instant::now();
    for c in clients {
        c.set_linger_zero();
        drop(c);
    }
    server.assert_clean(1, Duration::from_secs(10), "after the mass reset");
    let (took, cpu) = (t0.elapsed(), cpu_time(server.pid()) - cpu0);
    eprintln!("{N} backlogged subscribers reset: all closed in {took:?}, server CPU {cpu:?}");
    assert!(
        cpu < Duration::from_secs(3),
        "closing {N} connections cost {cpu:?} of server CPU"
    );
    drop((w, publisher));
    server.assert_clean(0, Duration::from_secs(5), "after the publisher left");
}
