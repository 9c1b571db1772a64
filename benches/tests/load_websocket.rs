//! `ringfan-load --proto ws` against ringfan's WebSocket listener on 127.0.0.1 (the `ringfan`
//! binary built next to `ringfan-load`; skipped with a message where it has not been built, or
//! where io_uring is unavailable). Subscribers upgrade on `/` (the lines topic), the publisher
//! sends lines; the runs are short and at a fixed rate, so every figure checked is exact.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::{io_uring_available, num, run_load, serial, Proc};
use ringfan_testkit::{tcp_states, wait_until};

const SUBSCRIBERS: usize = 20;

/// ringfan with its lines and WebSocket listeners on free ports, pinging every WebSocket
/// client every 200 ms and resetting one whose pong is 500 ms late: a subscriber that did not
/// answer pings would be reset within the run.
fn start() -> Option<(Proc, SocketAddr, SocketAddr)> {
    let env = [
        ("RINGFAN_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_WS_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_THREADS", "2"),
        ("RINGFAN_WS_PING_INTERVAL_MS", "200"),
        ("RINGFAN_WS_PONG_TIMEOUT_MS", "500"),
    ];
    let printed = ["ringfan listening on ", "ringfan websocket on "];
    let (child, addrs) = common::start_ringfan(&env, &printed)?;
    Some((child, addrs[0], addrs[1]))
}

/// One fixed-rate run with `size`-byte lines: while it lasts the kernel shows the server
/// holding every subscriber's connection on the WebSocket port; every measured line reaches
/// every subscriber once, in order, nothing malformed, every ping answered (none reset); then
/// the loader's connections are gone.
fn fanout_run(lines: SocketAddr, ws: SocketAddr, size: usize) {
    let args = [
        "--proto",
        "ws",
        "--addr",
        &lines.to_string(),
        "--ws-addr",
        &ws.to_string(),
        "--subscribers",
        &SUBSCRIBERS.to_string(),
        "--size",
        &size.to_string(),
        "--rate",
        "1000",
        "--warmup",
        "0.3",
        "--duration",
        "1.5",
        "--drain",
        "2",
    ]
    .map(String::from);
    let load = thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        run_load(&args, Duration::from_secs(60))
    });
    let mut most = 0;
    let all_held = wait_until(Instant::now() + Duration::from_secs(30), || {
        most = most.max(tcp_states(ws.port()).established());
        most == SUBSCRIBERS || load.is_finished()
    }) && most == SUBSCRIBERS;
    let (code, s, stderr) = load.join().expect("the ringfan-load thread");
    let ctx = format!("size {size}: {s:?}\n{stderr}");
    assert!(
        all_held,
        "the server held at most {most} WebSocket connections\n{ctx}"
    );
    assert_eq!(code, Some(0), "{ctx}");
    for key in [
        "lost",
        "reordered",
        "malformed",
        "misrouted",
        "stale",
        "disconnected",
        "unconfirmed",
        "never_confirmed",
        "ws_close_frames",
    ] {
        assert_eq!(num(&s, key), 0, "{key}, {ctx}");
    }
    let published = num(&s, "published");
    assert!(published >= 1000, "{ctx}");
    assert_eq!(num(&s, "expected"), published * SUBSCRIBERS as u64, "{ctx}");
    assert_eq!(num(&s, "measured_delivered"), num(&s, "expected"), "{ctx}");
    // Pinged every 200 ms for about 2 s: each subscriber answered several.
    assert!(
        num(&s, "sub_pongs") >= 3 * SUBSCRIBERS as u64,
        "pongs: {ctx}"
    );
    assert!(
        wait_until(Instant::now() + Duration::from_secs(5), || {
            tcp_states(ws.port()).established() == 0
        }),
        "connections left: {:?}",
        tcp_states(ws.port())
    );
}

/// 65-byte lines arrive as 64-byte payloads, whose frame header's length byte is `@`; 1000-byte
/// lines take the 16-bit length form.
#[test]
fn websocket_subscribers_get_every_line_in_order() {
    let _turn = serial();
    if !io_uring_available() {
        return;
    }
    let Some((_ringfan, lines, ws)) = start() else {
        return;
    };
    for size in [65, 1000] {
        fanout_run(lines, ws, size);
    }
}

/// The idle scenario holds upgraded subscribers (answering pings) and measures the server's
/// memory per connection.
#[test]
fn idle_websocket_subscribers_are_upgraded_and_held() {
    let _turn = serial();
    if !io_uring_available() {
        return;
    }
    let Some((ringfan, lines, ws)) = start() else {
        return;
    };
    let (lines, ws, pid) = (
        lines.to_string(),
        ws.to_string(),
        ringfan.0.id().to_string(),
    );
    let args = [
        "--proto",
        "ws",
        "--addr",
        &lines,
        "--ws-addr",
        &ws,
        "--scenario",
        "idle",
        "--subscribers",
        "20",
        "--duration",
        "1",
        "--server-pid",
        &pid,
    ];
    let (code, s, stderr) = run_load(&args, Duration::from_secs(60));
    let ctx = format!("{s:?}\n{stderr}");
    assert_eq!(code, Some(0), "{ctx}");
    assert_eq!(num(&s, "connected"), 20, "{ctx}");
    for key in ["unconfirmed", "disconnected", "malformed", "conn_failed"] {
        assert_eq!(num(&s, key), 0, "{key}, {ctx}");
    }
    let per_conn: f64 = s["rss_per_conn_bytes"].parse().expect(&ctx);
    assert!(per_conn.is_finite(), "{ctx}");
}

/// Without the WebSocket listener's address there is nothing to subscribe to: refused.
#[test]
fn ws_without_its_address_is_refused() {
    let (code, _, stderr) = run_load(&["--proto", "ws"], Duration::from_secs(10));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--ws-addr"), "{stderr}");
}
