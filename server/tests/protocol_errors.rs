//! Over-long lines: the offender gets `-ERR ...` then EOF; nothing of the line is broadcast.

mod common;

use common::*;
use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

const MAX: usize = 65536;

/// Test 8: 1 MiB without a newline, limit 65536. The offender gets exactly the error line then a
/// clean EOF; the others get nothing of it, and a later normal line still reaches them.
#[test]
fn one_mib_line_without_newline_gets_error_then_eof_others_unaffected() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_MAX_FRAME_BYTES", "65536"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "1000"),
    ]);
    let mut clients = connect_n(server.addr(), 3);
    sync_clients(&mut clients, 1);
    let mut bad = clients.remove(0);
    // The write may block (the server stops reading) or fail (reset): do it from a thread and
    // ignore its outcome.
    let mut w = bad.writer();
    let writer = thread::spawn(move || {
        let big = vec![b'x'; 1 << 20];
        let _ = w.write_all(&big);
    });
    let data = bad.expect_clean_eof(secs(10), "offending client");
    assert_bytes_eq(&data, &err_line(MAX), "offending client's data before EOF");
    let _ = bad.stream.shutdown(Shutdown::Both); // unblocks the writer, sends our FIN
    writer.join().unwrap();

    // Nothing of the bad line went anywhere: the next line both others see is this one.
    clients[0].send(b"after the bad line\n");
    let deadline = secs(5);
    for (i, c) in clients.iter_mut().enumerate() {
        let l = c.expect_line(deadline, &format!("other client {i}"));
        assert_eq!(
            l,
            b"after the bad line\n",
            "other client {i} got {}",
            show(&l)
        );
    }
    drop(bad);
    server.assert_clean(
        2,
        Duration::from_secs(5),
        "after the offending client closed",
    );
    close_all_gracefully(clients, "others");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}

/// A line of exactly RINGFAN_MAX_FRAME_BYTES bytes (counting its `\n`) is delivered byte-exact.
#[test]
fn line_of_exactly_max_frame_bytes_is_delivered() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_MAX_FRAME_BYTES", "65536")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 0);
    // Every byte value but `\n`, then the `\n` as byte number 65536.
    let mut line: Vec<u8> = (0..MAX - 1)
        .map(|i| match (i % 251) as u8 {
            b'\n' => b'.',
            b => b,
        })
        .collect();
    line.push(b'\n');
    assert_eq!(line.len(), MAX);
    clients[0].send(&line);
    clients[0].send(b"next\n");
    let deadline = secs(5);
    for (i, c) in clients.iter_mut().enumerate() {
        let got = c.expect_line(
            deadline,
            &format!("client {i} waiting for the 65536-byte line"),
        );
        assert_bytes_eq(&got, &line, &format!("client {i}: max-size line"));
        assert_eq!(c.expect_line(deadline, "next line"), b"next\n");
    }
    close_all_gracefully(clients, "max-size line");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}

/// One byte over (65537 bytes including `\n`) is an error; nothing of it is delivered.
#[test]
fn line_one_byte_over_the_limit_is_rejected() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_MAX_FRAME_BYTES", "65536")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 1);
    let mut line = vec![b'y'; MAX];
    line.push(b'\n');
    clients[0].send(&line);
    let data = clients[0].expect_clean_eof(secs(5), "client that sent 65537 bytes");
    assert_bytes_eq(&data, &err_line(MAX), "offending client's data");
    clients[0].stream.shutdown(Shutdown::Write).unwrap();
    clients[1].send(b"after\n");
    let l = clients[1].expect_line(secs(5), "other client");
    assert_eq!(l, b"after\n", "other client got {}", show(&l));
    drop(clients.remove(0));
    server.assert_clean(
        1,
        Duration::from_secs(3),
        "after the offending client closed",
    );
    close_all_gracefully(clients, "other");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}

fn overlong_after_good_line(clients: &mut [Client]) -> Vec<u8> {
    let mut payload = b"ok1\n".to_vec();
    payload.extend(vec![b'z'; 200]);
    payload.extend_from_slice(b"\nnever\n");
    clients[0].send(&payload);
    let data = clients[0].expect_clean_eof(secs(5), "offending client");
    clients[0].stream.shutdown(Shutdown::Write).unwrap();
    data
}

/// Complete lines before the over-long one (same write) reach the other clients; the over-long
/// line and everything after it do not; the offender gets the error line last, then EOF.
#[test]
fn complete_lines_before_an_overlong_one_reach_others_nothing_after() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_MAX_FRAME_BYTES", "64")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 1);
    let data = overlong_after_good_line(&mut clients);
    // Whether its own good line is echoed first is checked by the next test.
    let with_echo = [b"ok1\n".as_slice(), &err_line(64)].concat();
    assert!(
        data == err_line(64) || data == with_echo,
        "offending client's data: {} (expected the error line, optionally preceded by ok1)",
        show(&data)
    );
    let deadline = secs(5);
    let l = clients[1].expect_line(deadline, "other client, first line");
    assert_eq!(l, b"ok1\n", "other client's first line: {}", show(&l));
    clients[1].send(b"after\n");
    let l = clients[1].expect_line(deadline, "other client, second line");
    assert_eq!(l, b"after\n", "other client got {}", show(&l));
    drop(clients.remove(0));
    server.assert_clean(
        1,
        Duration::from_secs(3),
        "after the offending client closed",
    );
    close_all_gracefully(clients, "other");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}

/// Stricter reading of "every complete line is delivered to every connection, the sender
/// included": the offender's own good line, which preceded the over-long one in the same write,
/// is echoed to it before the error line (the server-first close flushes what was queued).
#[test]
fn offender_gets_echo_of_its_good_line_before_the_error_line() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_MAX_FRAME_BYTES", "64")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 1);
    let data = overlong_after_good_line(&mut clients);
    let mut expected = b"ok1\n".to_vec();
    expected.extend(err_line(64));
    assert_bytes_eq(
        &data,
        &expected,
        "offending client's data (echo of its own good line, then -ERR)",
    );
}
