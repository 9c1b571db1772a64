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

/// A client that never closes after the shutdown FIN: with RINGFAN_SHUTDOWN_TIMEOUT_MS=500 (and a
/// long per-connection close timeout) the server waits, then closes abortively (the client's
/// socket is reset) and exits 0 within the bound.
#[test]
fn shutdown_timeout_aborts_clients_that_never_close() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let mut server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_SHUTDOWN_TIMEOUT_MS", "500"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "60000"),
    ]);
    let port = server.port();
    let mut clients = connect_n(server.addr(), 1);
    sync_clients(&mut clients, 0);
    let mut c = clients.pop().unwrap();
    let cport = c.local_port();
    server.sigterm();
    let t_sig = Instant::now();
    // Read just up to the EOF; do not close.
    match c.read_line(secs(5)) {
        Ok(None) => {}
        other => panic!("client after SIGTERM: expected EOF, got {other:?}"),
    }
    let status = server.wait_exit(Duration::from_secs(5));
    let took = t_sig.elapsed();
    assert!(
        status.is_some(),
        "server still running 5 s after SIGTERM with RINGFAN_SHUTDOWN_TIMEOUT_MS=500; {}",
        server.describe()
    );
    assert!(status.unwrap().success(), "exit status: {status:?}");
    assert!(
        took >= Duration::from_millis(300),
        "server exited {took:?} after SIGTERM without waiting for the client's FIN"
    );
    // Abortive close: the client's socket got a RST (it was in CLOSE_WAIT), and no orphaned
    // FIN_WAIT2 remains on the server's port.
    let reset = wait_until(secs(2), || tcp_states_of(cport, port).is_empty());
    assert!(
        reset,
        "client socket still {:?}: the server did not reset the connection it could not finish",
        tcp_states_of(cport, port)
            .iter()
            .map(|&s| state_name(s))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        tcp_states(port).fin_wait2(),
        0,
        "orphaned FIN_WAIT2 on the server port"
    );
    drop(c);
}
