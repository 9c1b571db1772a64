//! SIGTERM / SIGINT: stop accepting, flush everything to every client, FIN, wait, exit 0.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// ~1 MiB of 64-byte lines: well below the 4 MiB queue limit.
const LINES: u64 = 16_384;

/// Test 5: non-reading subscribers have ~1 MiB queued when SIGTERM arrives; each must then get
/// every line byte-exact and a clean EOF (not a reset), and the process exits 0.
#[test]
fn sigterm_flushes_queued_data_to_every_client_then_exits_zero() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut server = Server::start(&[("RINGFAN_ECHO", "1")]);
    let port = server.port();
    // 0: publisher (also a non-reading subscriber of its own echo), 1: observer, 2..6: non-reading.
    let mut clients = connect_n(server.addr(), 6);
    sync_clients(&mut clients, 0);
    let observer = clients.remove(1);
    let deadline = secs(20);
    let obs = FloodReader::spawn(observer, FloodCheck::new(), None, deadline);
    let expected = flood_bytes(0, LINES);
    clients[0].send(&expected);
    assert!(
        wait_until(secs(10), || obs.progress() == LINES),
        "observer received only {} of {LINES} lines",
        obs.progress()
    );

    server.sigterm();
    let t_sig = Instant::now();
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            thread::spawn(move || {
                let r = c.read_to_eof(deadline);
                drop(c);
                (i, r)
            })
        })
        .collect();
    for t in readers {
        let (i, r) = t.join().unwrap();
        let who = if i == 0 {
            "publisher".to_string()
        } else {
            format!("subscriber {i}")
        };
        assert_bytes_eq(&r.data, &expected, &format!("{who}: data after SIGTERM"));
        assert!(
            r.end.is_eof(),
            "{who}: expected a clean EOF after SIGTERM, got {:?}",
            r.end
        );
    }
    let o = obs.join();
    assert!(o.error.is_none(), "observer: {:?}", o.error);
    assert!(
        matches!(o.end, Some(End::Eof)),
        "observer: expected clean EOF, got {:?}",
        o.end
    );
    assert_eq!(o.check.next, LINES);
    drop(o.client);

    let status = server.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some(),
        "server still running {:?} after SIGTERM (all clients closed); {}",
        t_sig.elapsed(),
        server.describe()
    );
    let status = status.unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert_eq!(
        server.stdout_lines().len(),
        1,
        "stdout: {:?}",
        server.stdout_lines()
    );
    let st = tcp_states(port);
    assert_eq!(
        (st.listen(), st.established(), st.close_wait()),
        (0, 0, 0),
        "sockets on the port after exit: {st}"
    );
}

/// SIGINT with idle clients: each gets a clean EOF with no data, the process exits 0 promptly,
/// and the port no longer accepts connections.
#[test]
fn sigint_closes_idle_clients_cleanly_and_exits_zero() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut server = Server::start(&[("RINGFAN_ECHO", "1")]);
    let addr = server.addr();
    let mut clients = connect_n(addr, 3);
    sync_clients(&mut clients, 0);
    server.sigint();
    for (i, mut c) in clients.into_iter().enumerate() {
        let data = c.expect_clean_eof(secs(5), &format!("client {i} after SIGINT"));
        assert!(data.is_empty(), "client {i} got {}", show(&data));
    }
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "server still running 5 s after SIGINT; {}",
        server.describe()
    );
    assert!(
        status.unwrap().success(),
        "exit status after SIGINT: {status:?}"
    );
    assert!(
        Client::try_connect(addr).is_err(),
        "connect succeeded after the server exited"
    );
}

/// Subscribers that read everything and then keep their sockets open (they never send a FIN):
/// once each has acknowledged every byte and the server's FIN, the server closes it gracefully
/// and exits, without waiting for FINs it does not need and without resetting anyone. (It used
/// to wait for the close timeout, 5 s, and then reset every connection.)
#[test]
fn sigterm_exits_once_every_byte_is_acknowledged_without_waiting_for_fins() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    // Echo off: the publisher does not read, so its own lines would hold the shutdown back.
    let mut server = Server::start(&[
        ("RINGFAN_SHUTDOWN_TIMEOUT_MS", "20000"),
        ("RINGFAN_ECHO", "0"),
    ]);
    let port = server.port();
    let mut clients = connect_n(server.addr(), 21);
    sync_clients_opts(&mut clients, 0, false);
    let lines = 2000;
    let expected = flood_bytes(0, lines);
    clients[0].send(&expected);
    // The shutdown publishes what the server has read; wait (kernel's view) until the publisher's
    // bytes have left its socket and the server's side has read them all.
    let pport = clients[0].local_port();
    let read_all = || {
        let rows = tcp_rows();
        let mine = rows
            .iter()
            .find(|r| r.local_port == pport && r.remote_port == port);
        let theirs = rows
            .iter()
            .find(|r| r.local_port == port && r.remote_port == pport);
        matches!((mine, theirs), (Some(m), Some(t)) if m.tx_queue == 0 && t.rx_queue == 0)
    };
    assert!(
        wait_until(secs(5), read_all),
        "the server never read the publisher's lines"
    );
    let subscribers = clients.split_off(1);
    let publisher = clients.pop().unwrap();
    server.sigterm();
    // Each subscriber reads everything up to the EOF, notes when, and keeps its socket open.
    let deadline = secs(15);
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|mut c| {
            thread::spawn(move || {
                let r = c.read_to_eof(deadline);
                (c, r, Instant::now())
            })
        })
        .collect();
    let mut last_eof = Instant::now() - Duration::from_secs(1000);
    let mut open = Vec::new();
    for (i, t) in readers.into_iter().enumerate() {
        let (c, r, at) = t.join().unwrap();
        assert_bytes_eq(
            &r.data,
            &expected,
            &format!("subscriber {i}: data after SIGTERM"),
        );
        assert!(
            r.end.is_eof(),
            "subscriber {i}: expected EOF, got {:?}",
            r.end
        );
        last_eof = last_eof.max(at);
        open.push(c);
    }
    let status = server.wait_exit(Duration::from_secs(10));
    let exit_after_last_eof = last_eof.elapsed();
    assert!(
        status.is_some(),
        "server still running {exit_after_last_eof:?} after the last subscriber read its EOF; {}",
        server.describe()
    );
    assert!(status.unwrap().success(), "exit status: {status:?}");
    eprintln!("shutdown: exited {exit_after_last_eof:?} after the last subscriber read its EOF");
    // Generous for a loaded machine; the old behaviour took the whole close timeout (5 s).
    assert!(
        exit_after_last_eof < Duration::from_millis(2500),
        "exited {exit_after_last_eof:?} after the last EOF was read: it waited for FINs it does not need"
    );
    let stderr = server.stderr_text();
    assert!(
        stderr.contains("shutdown_aborted=0") && stderr.contains(" aborted=0"),
        "the summary counts aborts: {stderr}"
    );
    // The kernel's view: every subscriber socket got a FIN and no reset, so it sits in
    // CLOSE_WAIT (a reset would have removed it), and reading again gives EOF, not ECONNRESET.
    for (i, c) in open.iter_mut().enumerate() {
        let states = tcp_states_of(c.local_port(), port);
        assert_eq!(
            states,
            vec![0x08],
            "subscriber {i}: socket state {:?}, expected CLOSE_WAIT (FIN, no reset)",
            states.iter().map(|&s| state_name(s)).collect::<Vec<_>>()
        );
        let again = c.read_to_eof(secs(2));
        assert!(
            again.end.is_eof(),
            "subscriber {i}: read after exit: {:?}",
            again.end
        );
    }
    drop(publisher);
}

/// A subscriber that stops reading with more queued than its socket can hold: its flush cannot
/// finish, so RINGFAN_SHUTDOWN_TIMEOUT_MS (not the longer per-connection close timeout) ends it
/// with a reset, counted as a shutdown abort, and the server exits 0 within the bound.
#[test]
fn shutdown_timeout_resets_a_subscriber_that_stopped_reading() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_SHUTDOWN_TIMEOUT_MS", "500"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "60000"),
        ("RINGFAN_ECHO", "0"),
    ]);
    let port = server.port();
    let mut clients = connect_n(server.addr(), 2);
    set_rcvbuf(&clients[1].stream, 4096);
    sync_clients_opts(&mut clients, 0, false);
    let stuck = clients.pop().unwrap();
    let cport = stuck.local_port();
    // ~1 MiB: far more than the stuck subscriber's socket buffers hold.
    clients[0].send(&flood_bytes(0, 16_384));
    let queued = wait_until(secs(5), || {
        tcp_rows()
            .iter()
            .any(|r| r.local_port == cport && r.remote_port == port && r.rx_queue > 0)
    });
    assert!(queued, "the stuck subscriber never got data");
    server.sigterm();
    let t_sig = Instant::now();
    let status = server.wait_exit(Duration::from_secs(5));
    let took = t_sig.elapsed();
    assert!(
        status.is_some(),
        "server still running 5 s after SIGTERM with RINGFAN_SHUTDOWN_TIMEOUT_MS=500; {}",
        server.describe()
    );
    assert!(status.unwrap().success(), "exit status: {status:?}");
    assert!(
        took >= Duration::from_millis(400),
        "server exited {took:?} after SIGTERM before its subscriber could have read everything"
    );
    let stderr = server.stderr_text();
    assert!(
        stderr.contains("shutdown_aborted=1"),
        "the reset connection is counted as a shutdown abort: {stderr}"
    );
    // The stuck subscriber's socket was reset: it is gone from the kernel's table (a FIN
    // would have left it in CLOSE_WAIT), and no orphaned FIN_WAIT2 remains on the server port.
    let reset = wait_until(secs(2), || tcp_states_of(cport, port).is_empty());
    assert!(
        reset,
        "stuck subscriber still {:?}: not reset at the shutdown deadline",
        tcp_states_of(cport, port)
            .iter()
            .map(|&s| state_name(s))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        tcp_states_of(port, cport),
        Vec::<u8>::new(),
        "the server's side of the reset connection is gone too (no orphaned FIN_WAIT2)"
    );
    drop(stuck);
}
