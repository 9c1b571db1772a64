//! Both drivers against real sockets on 127.0.0.1: every check that is not about io_uring's own
//! queues runs once per driver (`<check>::uring`, `<check>::epoll`), so the epoll emulation is
//! held to the completions io_uring actually posts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ringfan_ring::{Completion, Driver, Epoll, Op, RingConfig, Uring, UserData};

fn uring_or_skip(config: RingConfig) -> Option<Uring> {
    match Uring::new(&config) {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("SKIP: io_uring unavailable: {e}");
            None
        }
    }
}

fn epoll(config: RingConfig) -> Epoll {
    Epoll::new(&config).expect("epoll driver")
}

fn small(sq: u32, cq: u32, buffers: u16, bytes: usize) -> RingConfig {
    RingConfig {
        sq_entries: sq,
        cq_entries: cq,
        recv_buffers: buffers,
        recv_buffer_bytes: bytes,
    }
}

/// One `#[test]` per driver for a generic check `fn check(d: impl Driver)`.
macro_rules! on_both_drivers {
    ($check:ident, $config:expr) => {
        mod $check {
            use super::*;

            #[test]
            fn uring() {
                if let Some(d) = uring_or_skip($config) {
                    super::$check(d);
                }
            }

            #[test]
            fn epoll() {
                super::$check(super::epoll($config));
            }
        }
    };
}

/// Waits until `pred` holds for the completions gathered so far, or 5 s pass.
fn collect<D: Driver>(
    d: &mut D,
    out: &mut Vec<Completion>,
    pred: impl Fn(&[Completion]) -> bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        d.completions(out);
        if pred(out) {
            return true;
        }
        d.submit_and_wait(Duration::from_millis(20)).unwrap();
    }
    d.completions(out);
    pred(out)
}

/// Submits and waits (5 s at most) for the final completion of `ud`, looking first among the
/// completions already in `seen`; returns it and leaves every other completion in `seen`.
fn wait_final<D: Driver>(d: &mut D, ud: UserData, seen: &mut Vec<Completion>) -> Completion {
    let is_it = |c: &Completion| c.user_data == ud && !c.more;
    assert!(
        collect(d, seen, |c| c.iter().any(is_it)),
        "no final completion for {ud:?}; got {seen:?}"
    );
    let i = seen.iter().position(is_it).unwrap();
    seen.remove(i)
}

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` is a live local of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// Raises the soft open-file limit to at least `want`; false (and says why) if the hard limit
/// does not allow it.
fn raise_nofile_to(want: u64) -> bool {
    // SAFETY: getrlimit/setrlimit read and write a live local.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur >= want {
            return true;
        }
        if lim.rlim_max < want {
            eprintln!(
                "SKIP: the hard open-file limit {} is below {want}",
                lim.rlim_max
            );
            return false;
        }
        lim.rlim_cur = want;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    true
}

/// A msghdr over `parts`; the caller keeps `parts` and the returned iovecs alive.
fn msghdr(iov: &[libc::iovec]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; zeroed is an empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut _;
    msg.msg_iovlen = iov.len();
    msg
}

fn iovecs(parts: &[&[u8]]) -> Vec<libc::iovec> {
    parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut _,
            iov_len: p.len(),
        })
        .collect()
}

// ---- io_uring only -----------------------------------------------------------------------------

#[test]
fn full_submission_queue_is_flushed_and_overflowing_completions_survive() {
    // 8 submission entries, 16 completion entries, 200 operations pushed without reaping.
    let Some(mut u) = uring_or_skip(small(8, 16, 2, 64)) else {
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

// ---- both drivers ------------------------------------------------------------------------------

on_both_drivers!(
    multishot_recv_uses_provided_buffers_then_sees_fin,
    small(64, 256, 8, 1024)
);
fn multishot_recv_uses_provided_buffers_then_sees_fin(mut u: impl Driver) {
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

on_both_drivers!(
    exhausted_buffers_end_recv_with_enobufs_and_keep_the_data,
    small(64, 256, 2, 64)
);
fn exhausted_buffers_end_recv_with_enobufs_and_keep_the_data(mut u: impl Driver) {
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

on_both_drivers!(
    gathered_send_and_shutdown_write_reach_the_peer,
    small(64, 256, 2, 64)
);
fn gathered_send_and_shutdown_write_reach_the_peer(mut u: impl Driver) {
    let (mut client, server) = pair();
    let iov = iovecs(&[b"one\n", b"two\n", b"three\n"]);
    let msg = msghdr(&iov);
    // SAFETY: msg, iov and the parts outlive the completion awaited below.
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

on_both_drivers!(
    doorbell_wakes_a_waiting_driver_from_another_thread,
    small(8, 16, 2, 64)
);
fn doorbell_wakes_a_waiting_driver_from_another_thread(mut u: impl Driver) {
    let bell = u.doorbell();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        bell.ring();
    });
    let start = Instant::now();
    let mut out = Vec::new();
    let rung = |c: &[Completion]| {
        c.iter().any(|c| {
            c.user_data == UserData::new(u32::MAX, 0, Op::Doorbell) && !c.more && c.result >= 0
        })
    };
    assert!(collect(&mut u, &mut out, rung));
    assert!(start.elapsed() < Duration::from_secs(2));
    t.join().unwrap();
    // The driver re-armed it: a second ring is seen too.
    u.doorbell().ring();
    out.clear();
    assert!(collect(&mut u, &mut out, rung));
    // And a quiet doorbell stays quiet: a wait with nothing to do times out empty.
    out.clear();
    u.submit_and_wait(Duration::from_millis(30)).unwrap();
    u.completions(&mut out);
    assert!(out.is_empty(), "spurious completions {out:?}");
}

/// Accepts five connections through one multishot accept, then cancels it. Returns the accepted
/// fds.
fn multishot_accept_takes_several_connections(u: &mut impl Driver) -> Vec<OwnedFd> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let ud = UserData::new(9, 0, Op::Accept);
    u.accept_multi(listener.as_raw_fd(), ud);
    u.submit().unwrap();
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(listener.local_addr().unwrap()).unwrap())
        .collect();
    let mut out = Vec::new();
    assert!(collect(u, &mut out, |c| c.len() >= 5), "got {out:?}");
    assert_eq!(out.len(), 5, "one completion per connection: {out:?}");
    let mut fds = Vec::new();
    for c in &out {
        assert_eq!((c.user_data, c.more, c.buffer), (ud, true, None), "{c:?}");
        assert!(c.result >= 0, "accept failed: {c:?}");
        // SAFETY: the driver just handed us this fd; nothing else owns it.
        fds.push(unsafe { OwnedFd::from_raw_fd(c.result) });
    }
    let mut peers: Vec<SocketAddr> = fds
        .iter()
        .map(|fd| {
            let s = TcpStream::from(fd.try_clone().unwrap());
            s.peer_addr().unwrap()
        })
        .collect();
    let mut locals: Vec<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    peers.sort();
    locals.sort();
    assert_eq!(peers, locals, "each client accepted once");
    // Cancel: the multishot ends with -ECANCELED, the cancel itself completes with 0.
    let cancel = UserData::new(9, 0, Op::Cancel);
    u.cancel(ud, cancel);
    let mut others = Vec::new();
    let end = wait_final(u, ud, &mut others);
    assert_eq!(end.result, -libc::ECANCELED);
    let c = wait_final(u, cancel, &mut others);
    assert_eq!(c.result, 0);
    assert!(others.is_empty(), "{others:?}");
    // Nothing accepted after the cancel.
    let _late = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    u.submit_and_wait(Duration::from_millis(50)).unwrap();
    u.completions(&mut others);
    assert!(others.is_empty(), "accept still armed: {others:?}");
    fds
}

mod multishot_accept_takes_several_connections {
    use super::*;

    #[test]
    fn uring() {
        if let Some(mut d) = uring_or_skip(small(64, 256, 2, 64)) {
            super::multishot_accept_takes_several_connections(&mut d);
        }
    }

    #[test]
    fn epoll() {
        let mut d = super::epoll(small(64, 256, 2, 64));
        for fd in super::multishot_accept_takes_several_connections(&mut d) {
            // SAFETY: fcntl with integer arguments on an fd we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
            assert!(
                flags >= 0 && flags & libc::O_NONBLOCK != 0,
                "epoll hands out non-blocking sockets"
            );
        }
    }
}

on_both_drivers!(
    cancel_fd_ends_an_armed_recv_with_ecanceled,
    small(64, 256, 4, 64)
);
fn cancel_fd_ends_an_armed_recv_with_ecanceled(mut u: impl Driver) {
    let (mut client, server) = pair();
    let fd = server.as_raw_fd();
    let recv = UserData::new(4, 1, Op::Recv);
    u.recv_multi(fd, recv);
    u.submit_and_wait(Duration::from_millis(20)).unwrap();
    let cancel = UserData::new(4, 1, Op::Cancel);
    u.cancel_fd(fd, cancel);
    let mut others = Vec::new();
    let end = wait_final(&mut u, recv, &mut others);
    assert_eq!((end.result, end.buffer), (-libc::ECANCELED, None));
    let c = wait_final(&mut u, cancel, &mut others);
    assert_eq!(c.result, 1, "the cancel counts what it ended");
    assert!(others.is_empty(), "{others:?}");
    // Nothing left on the fd: data sent now is not received.
    client.write_all(b"late").unwrap();
    u.submit_and_wait(Duration::from_millis(50)).unwrap();
    u.completions(&mut others);
    assert!(others.is_empty(), "recv still armed: {others:?}");
    // Cancelling every operation of an fd that has none: a count of 0 (io_uring's
    // IORING_ASYNC_CANCEL_ALL does not report -ENOENT).
    let cancel_none = UserData::new(4, 3, Op::Cancel);
    u.cancel_fd(fd, cancel_none);
    assert_eq!(wait_final(&mut u, cancel_none, &mut others).result, 0);
    // Cancelling a single operation that is not there.
    let cancel2 = UserData::new(4, 2, Op::Cancel);
    u.cancel(recv, cancel2);
    assert_eq!(
        wait_final(&mut u, cancel2, &mut others).result,
        -libc::ENOENT
    );
    assert_eq!(u.buffers_available(), 4, "no buffer taken by the cancel");
}

on_both_drivers!(
    send_larger_than_the_socket_buffer_arrives_whole,
    small(64, 256, 2, 64)
);
fn send_larger_than_the_socket_buffer_arrives_whole(mut u: impl Driver) {
    let (client, server) = pair();
    set_int_opt(
        server.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDBUF,
        32 * 1024,
    );
    set_int_opt(
        client.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        32 * 1024,
    );
    let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let reader = std::thread::spawn(move || {
        let mut client = client;
        // Start late, so the first send meets a full socket buffer.
        std::thread::sleep(Duration::from_millis(100));
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).map(|_| got)
    });
    let (mut offset, mut sends) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut others = Vec::new();
    while offset < payload.len() {
        assert!(
            Instant::now() < deadline,
            "sent {offset} of {}",
            payload.len()
        );
        // Two iovecs, as the server gathers queued messages.
        let rest = &payload[offset..];
        let (a, b) = rest.split_at(rest.len() / 2);
        let iov = iovecs(&[a, b]);
        let msg = msghdr(&iov);
        let ud = UserData::new(5, sends, Op::Send);
        // SAFETY: msg, iov and payload live until the final completion awaited right below.
        unsafe { u.send_msg(server.as_raw_fd(), &msg, ud) };
        let c = wait_final(&mut u, ud, &mut others);
        assert!(
            c.result > 0 && c.result as usize <= rest.len(),
            "send: {c:?}"
        );
        offset += c.result as usize;
        sends += 1;
    }
    let shut = UserData::new(5, 0, Op::Shutdown);
    u.shutdown_write(server.as_raw_fd(), shut);
    assert_eq!(wait_final(&mut u, shut, &mut others).result, 0);
    assert!(others.is_empty(), "{others:?}");
    let got = reader.join().unwrap().expect("reader");
    assert!(
        got == payload,
        "{} bytes arrived, not in order or not all",
        got.len()
    );
    assert!(
        sends > 1,
        "4 MiB went in one send: the socket buffer was never full"
    );
}

on_both_drivers!(
    recv_and_a_blocked_send_share_one_fd,
    small(64, 256, 4, 1024)
);
fn recv_and_a_blocked_send_share_one_fd(mut u: impl Driver) {
    let (client, server) = pair();
    let fd = server.as_raw_fd();
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 32 * 1024);
    set_int_opt(
        client.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUF,
        32 * 1024,
    );
    let recv = UserData::new(6, 0, Op::Recv);
    u.recv_multi(fd, recv);
    let payload = vec![b'x'; 4 << 20];
    let iov = iovecs(&[&payload]);
    let msg = msghdr(&iov);
    let mut others = Vec::new();
    // Send until a send finds no room and waits: the socket buffers are full.
    let (mut sent, mut blocked) = (0usize, None);
    for i in 0..1000 {
        let ud = UserData::new(6, i, Op::Send);
        // SAFETY: msg, iov and payload outlive every send's final completion (awaited below).
        unsafe { u.send_msg(fd, &msg, ud) };
        u.submit_and_wait(Duration::from_millis(100)).unwrap();
        u.completions(&mut others);
        match others.iter().position(|c| c.user_data == ud) {
            Some(at) => {
                let c = others.remove(at);
                assert!(c.result > 0 && !c.more, "send {c:?}");
                sent += c.result as usize;
            }
            None => {
                blocked = Some(ud);
                break;
            }
        }
        assert!(others.is_empty(), "{others:?}");
    }
    let second = blocked.expect("the socket buffers never filled");
    // The peer writes: the recv delivers while the send still waits.
    (&client).write_all(b"ping").unwrap();
    let mut out = Vec::new();
    assert!(collect(&mut u, &mut out, |c| c
        .iter()
        .any(|c| c.user_data == recv)));
    assert_eq!(out.len(), 1, "only the recv: {out:?}");
    let c = out[0];
    assert!(c.more);
    let id = c.buffer.unwrap();
    assert_eq!(u.buffer(id, c.result as usize), b"ping");
    u.recycle(id);
    // The peer reads: the waiting send completes; the recv is still armed.
    let reader = std::thread::spawn(move || {
        let mut client = client;
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        while let Ok(n @ 1..) = client.read(&mut buf) {
            total += n;
        }
        total
    });
    let done = wait_final(&mut u, second, &mut others);
    assert!(done.result > 0, "second send {done:?}");
    assert!(others.is_empty(), "{others:?}");
    let cancel = UserData::new(6, 0, Op::Cancel);
    u.cancel_fd(fd, cancel);
    assert_eq!(
        wait_final(&mut u, recv, &mut others).result,
        -libc::ECANCELED
    );
    assert_eq!(wait_final(&mut u, cancel, &mut others).result, 1);
    drop(server);
    let total = reader.join().unwrap();
    assert_eq!(total, sent + done.result as usize);
}

on_both_drivers!(peer_reset_ends_recv_with_econnreset, small(64, 256, 4, 64));
fn peer_reset_ends_recv_with_econnreset(mut u: impl Driver) {
    let (client, server) = pair();
    let recv = UserData::new(7, 0, Op::Recv);
    u.recv_multi(server.as_raw_fd(), recv);
    u.submit_and_wait(Duration::from_millis(20)).unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a live local of the size passed.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    drop(client); // RST
    let mut others = Vec::new();
    let end = wait_final(&mut u, recv, &mut others);
    assert_eq!((end.result, end.buffer), (-libc::ECONNRESET, None));
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(u.buffers_available(), 4);
}

on_both_drivers!(a_reused_fd_number_is_watched_afresh, small(64, 256, 4, 64));
fn a_reused_fd_number_is_watched_afresh(mut u: impl Driver) {
    let (_client1, server1) = pair();
    let (mut client2, server2) = pair();
    let fd = server1.into_raw_fd();
    let recv = UserData::new(8, 0, Op::Recv);
    u.recv_multi(fd, recv);
    u.submit_and_wait(Duration::from_millis(20)).unwrap();
    let cancel = UserData::new(8, 0, Op::Cancel);
    u.cancel_fd(fd, cancel);
    let mut others = Vec::new();
    assert_eq!(
        wait_final(&mut u, recv, &mut others).result,
        -libc::ECANCELED
    );
    assert_eq!(wait_final(&mut u, cancel, &mut others).result, 1);
    // The same number now names another socket (dup2 closes the first one atomically, so no
    // other thread of the test process can take the number in between).
    // SAFETY: both fds are ours; `fd` is replaced, not leaked.
    assert_eq!(unsafe { libc::dup2(server2.as_raw_fd(), fd) }, fd);
    let recv2 = UserData::new(8, 1, Op::Recv);
    u.recv_multi(fd, recv2);
    client2.write_all(b"second").unwrap();
    let mut out = Vec::new();
    assert!(collect(&mut u, &mut out, |c| !c.is_empty()));
    let c = out[0];
    assert_eq!((c.user_data, c.more), (recv2, true), "{out:?}");
    let id = c.buffer.unwrap();
    assert_eq!(u.buffer(id, c.result as usize), b"second");
    u.recycle(id);
    let cancel2 = UserData::new(8, 1, Op::Cancel);
    u.cancel_fd(fd, cancel2);
    assert_eq!(
        wait_final(&mut u, recv2, &mut others).result,
        -libc::ECANCELED
    );
    assert_eq!(wait_final(&mut u, cancel2, &mut others).result, 1);
    let close = UserData::new(8, 1, Op::Close);
    u.close(fd, close);
    assert_eq!(wait_final(&mut u, close, &mut others).result, 0);
    assert!(others.is_empty(), "{others:?}");
}

on_both_drivers!(
    cancel_finds_one_operation_among_ten_thousand,
    small(64, 256, 8, 64)
);
/// 10,000 multishot receives wait (one UDP socket each: one fd per operation); one is cancelled
/// by user_data, then 1,000 cancels name operations that are not there. Only the target ends,
/// the others still receive, and the missing ones get -ENOENT. (The epoll driver once scanned
/// every fd for a target it could not find at once.)
fn cancel_finds_one_operation_among_ten_thousand(mut u: impl Driver) {
    const OPS: u32 = 10_000;
    // One driver at a time: both at once would hold 20,000 fds.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !raise_nofile_to(OPS as u64 + 1000) {
        return;
    }
    let sockets: Vec<std::net::UdpSocket> = (0..OPS)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let recv = |i: u32| UserData::new(i, 0, Op::Recv);
    for (i, s) in sockets.iter().enumerate() {
        u.recv_multi(s.as_raw_fd(), recv(i as u32));
    }
    u.submit().unwrap();
    let target = 4321;
    let cancel = UserData::new(target, 0, Op::Cancel);
    u.cancel(recv(target), cancel);
    let mut seen = Vec::new();
    assert_eq!(
        wait_final(&mut u, recv(target), &mut seen).result,
        -libc::ECANCELED
    );
    assert_eq!(wait_final(&mut u, cancel, &mut seen).result, 0);
    let started = Instant::now();
    for i in 0..1000 {
        u.cancel(
            UserData::new(OPS + i, 0, Op::Recv),
            UserData::new(OPS + i, 0, Op::Cancel),
        );
    }
    let is_missing =
        |c: &Completion| c.user_data.op() == Some(Op::Cancel) && c.user_data.slot() >= OPS;
    assert!(collect(&mut u, &mut seen, |c| c
        .iter()
        .filter(|c| is_missing(c))
        .count()
        == 1000));
    eprintln!(
        "1000 cancels of missing operations among {OPS}: {:?}",
        started.elapsed()
    );
    let missing: Vec<Completion> = seen.iter().copied().filter(is_missing).collect();
    assert!(
        missing.iter().all(|c| c.result == -libc::ENOENT),
        "{missing:?}"
    );
    seen.retain(|c| !is_missing(c));
    // A neighbour of the target still receives; the target does not.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in [target, target + 1] {
        probe
            .send_to(b"ping", sockets[i as usize].local_addr().unwrap())
            .unwrap();
    }
    assert!(collect(&mut u, &mut seen, |c| !c.is_empty()));
    let c = seen[0];
    assert_eq!(
        (c.user_data, c.result, c.more),
        (recv(target + 1), 4, true),
        "{seen:?}"
    );
    u.recycle(c.buffer.unwrap());
    assert!(
        seen[1..].iter().all(|c| c.user_data != recv(target)),
        "{seen:?}"
    );
}
