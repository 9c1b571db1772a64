//! The io_uring driver against real sockets on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ring::{Completion, Driver, Op, RingConfig, Uring, UserData};

fn ring_or_skip(config: RingConfig) -> Option<Uring> {
    match Uring::new(&config) {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("SKIP: io_uring unavailable: {e}");
            None
        }
    }
}

fn small(sq: u32, cq: u32, buffers: u16, bytes: usize) -> RingConfig {
    RingConfig {
        sq_entries: sq,
        cq_entries: cq,
        recv_buffers: buffers,
        recv_buffer_bytes: bytes,
    }
}

/// Waits until `pred` holds for the completions gathered so far, or 5 s pass.
fn collect(u: &mut Uring, out: &mut Vec<Completion>, pred: impl Fn(&[Completion]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        u.completions(out);
        if pred(out) {
            return true;
        }
        u.submit_and_wait(Duration::from_millis(20)).unwrap();
    }
    u.completions(out);
    pred(out)
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

#[test]
fn full_submission_queue_is_flushed_and_overflowing_completions_survive() {
    // 8 submission entries, 16 completion entries, 200 operations pushed without reaping.
    let Some(mut u) = ring_or_skip(small(8, 16, 2, 64)) else {
        return;
    };
    for i in 0..200u32 {
        // Cancelling something that does not exist completes at once with -ENOENT.
        u.cancel(
            UserData::new(1_000_000 + i, 0, Op::Recv),
            UserData::new(i, 0, Op::Cancel),
        );
    }
    u.submit().unwrap();
    let mut out = Vec::new();
    let ok = collect(&mut u, &mut out, |c| {
        c.iter()
            .filter(|c| c.user_data.op() == Some(Op::Cancel))
            .count()
            >= 200
    });
    let cancels: Vec<_> = out
        .iter()
        .filter(|c| c.user_data.op() == Some(Op::Cancel))
        .collect();
    assert!(ok, "got {} of 200 completions", cancels.len());
    assert!(cancels.iter().all(|c| c.result == -libc::ENOENT && !c.more));
    let mut slots: Vec<u32> = cancels.iter().map(|c| c.user_data.slot()).collect();
    slots.sort_unstable();
    assert_eq!(
        slots,
        (0..200).collect::<Vec<_>>(),
        "every completion exactly once"
    );
    let stats = u.stats();
    assert!(
        stats.sq_full > 0,
        "an 8-entry queue took 200 pushes without filling: {stats:?}"
    );
    assert!(
        stats.cq_overflow > 0,
        "a 16-entry completion queue never overflowed: {stats:?}"
    );
}

#[test]
fn multishot_recv_uses_provided_buffers_then_sees_fin() {
    let Some(mut u) = ring_or_skip(small(64, 256, 8, 1024)) else {
        return;
    };
    let (mut client, server) = pair();
    let ud = UserData::new(3, 7, Op::Recv);
    u.recv_multi(server.as_raw_fd(), ud);
    u.submit().unwrap();
    client.write_all(b"hello ").unwrap();
    let mut out = Vec::new();
    assert!(collect(&mut u, &mut out, |c| !c.is_empty()));
    let c = out[0];
    assert_eq!(c.user_data, ud);
    assert!(c.more, "multishot recv should stay armed");
    let id = c.buffer.expect("data arrives in a provided buffer");
    assert_eq!(u.buffer(id, c.result as usize), b"hello ");
    assert_eq!(u.buffers_available(), 7);
    u.recycle(id);
    assert_eq!(u.buffers_available(), 8);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    out.clear();
    assert!(collect(&mut u, &mut out, |c| c.iter().any(|c| !c.more)));
    let last = out.last().unwrap();
    assert_eq!(
        (last.result, last.more, last.buffer),
        (0, false, None),
        "FIN is a zero-length final completion"
    );
}

#[test]
fn exhausted_buffer_ring_ends_recv_with_enobufs_and_keeps_the_data() {
    let Some(mut u) = ring_or_skip(small(64, 256, 2, 64)) else {
        return;
    };
    let (mut client, server) = pair();
    let ud = UserData::new(1, 0, Op::Recv);
    let sent: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    client.write_all(&sent).unwrap();
    u.recv_multi(server.as_raw_fd(), ud);
    let (mut got, mut enobufs) = (Vec::new(), 0);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    // Hold the buffers until the recv ends, as a slow consumer would, then give them back and
    // re-arm: two 64-byte buffers cannot hold 1000 bytes, so it ends with ENOBUFS each time.
    while got.len() < sent.len() && Instant::now() < deadline {
        u.submit_and_wait(Duration::from_millis(20)).unwrap();
        out.clear();
        u.completions(&mut out);
        let mut held = Vec::new();
        for c in &out {
            if let Some(id) = c.buffer {
                got.extend_from_slice(u.buffer(id, c.result as usize));
                held.push(id);
            }
            if !c.more {
                assert_eq!(c.result, -libc::ENOBUFS, "unexpected end {c:?}");
                enobufs += 1;
            }
        }
        let ended = out.iter().any(|c| !c.more);
        for id in held {
            u.recycle(id);
        }
        if ended && got.len() < sent.len() {
            u.recv_multi(server.as_raw_fd(), ud);
        }
    }
    assert_eq!(
        got, sent,
        "every byte arrives, in order, across the re-arms"
    );
    assert!(enobufs > 0, "the recv never ran out of buffers");
}

#[test]
fn gathered_send_and_shutdown_write_reach_the_peer() {
    let Some(mut u) = ring_or_skip(small(64, 256, 2, 64)) else {
        return;
    };
    let (mut client, server) = pair();
    let parts: [&[u8]; 3] = [b"one\n", b"two\n", b"three\n"];
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut _,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: msghdr is plain data; zeroed is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_iovlen = iov.len();
    // SAFETY: msg, iov and parts outlive the completion awaited below.
    unsafe { u.send_msg(server.as_raw_fd(), &msg, UserData::new(2, 0, Op::Send)) };
    let mut out = Vec::new();
    assert!(collect(&mut u, &mut out, |c| !c.is_empty()));
    assert_eq!(out[0].result, 14);
    u.shutdown_write(server.as_raw_fd(), UserData::new(2, 0, Op::Shutdown));
    out.clear();
    assert!(collect(&mut u, &mut out, |c| !c.is_empty()));
    assert_eq!(out[0].result, 0);
    let mut got = Vec::new();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"one\ntwo\nthree\n", "all bytes, then EOF");
}

#[test]
fn doorbell_wakes_a_waiting_ring_from_another_thread() {
    let Some(mut u) = ring_or_skip(small(8, 16, 2, 64)) else {
        return;
    };
    let bell = u.doorbell();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        bell.ring();
    });
    let start = Instant::now();
    let mut out = Vec::new();
    assert!(collect(&mut u, &mut out, |c| c
        .iter()
        .any(|c| c.user_data.op() == Some(Op::Doorbell))));
    assert!(start.elapsed() < Duration::from_secs(2));
    t.join().unwrap();
    // The driver re-armed it: a second ring is seen too.
    u.doorbell().ring();
    out.clear();
    assert!(collect(&mut u, &mut out, |c| c
        .iter()
        .any(|c| c.user_data.op() == Some(Op::Doorbell))));
}
