//! `ringfan-load` with topics against real servers on 127.0.0.1: redis-server (Debian's
//! `redis-server`, skipped with a message where it is not installed) and ringfan's own RESP
//! listener (the `ringfan` binary built next to `ringfan-load`; skipped with a message where it
//! has not been built, e.g. by `cargo build --release -p ringfan`). The runs are short and at a
//! fixed rate, so every figure checked here is exact: nothing lost, every delivery owed made.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};
use std::{io, thread};

use common::{command, free_port, io_uring_available, num, run_load, serial, skip, Proc};
use ringfan_testkit::{tcp_states, wait_until};

/// Waits until the kernel shows a listener on `port` and it answers a RESP PING.
fn wait_resp_ready(port: u16, deadline: Instant) -> bool {
    wait_until(deadline, || {
        if tcp_states(port).listen() == 0 {
            return false;
        }
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
            && s.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    })
}

/// redis-server on a free port of 127.0.0.1, no persistence. None (after saying why) if it is
/// not installed.
fn start_redis() -> Option<(Proc, SocketAddr)> {
    // Nothing is saved (no RDB, no AOF), so the working directory stays untouched.
    let dir = std::env::temp_dir();
    for _ in 0..3 {
        let port = free_port();
        let child = command("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => Proc(c),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                skip("redis-server is not installed (Debian package redis-server)");
                return None;
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        if wait_resp_ready(port, Instant::now() + Duration::from_secs(10)) {
            return Some((child, SocketAddr::from(([127, 0, 0, 1], port))));
        }
    }
    panic!("redis-server did not answer PING on 127.0.0.1 within 10 s, three times");
}

/// ringfan with its RESP listener on a free port. None (after saying why) if the binary was
/// not built next to ringfan-load.
fn start_ringfan() -> Option<(Proc, SocketAddr)> {
    let env = [
        ("RINGFAN_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_RESP_LISTEN", "127.0.0.1:0"),
    ];
    let (child, addrs) = common::start_ringfan(&env, &["ringfan resp on "])?;
    let addr = addrs[0];
    assert!(
        wait_resp_ready(addr.port(), Instant::now() + Duration::from_secs(10)),
        "ringfan's RESP PING"
    );
    Some((child, addr))
}

/// One RESP command's reply, flattened into its scalar values (bulk strings, integers).
fn resp_call(addr: SocketAddr, args: &[&str]) -> io::Result<Vec<String>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let mut pending = 1u64;
    // Bounded: each element is read once, and the reply declares how many there are.
    while pending > 0 {
        pending -= 1;
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        match line.split_at(1.min(line.len())) {
            ("*", n) => pending += n.parse::<u64>().unwrap_or(0),
            ("$", _) => {
                let mut v = String::new();
                r.read_line(&mut v)?;
                out.push(v.trim_end().to_string());
            }
            (":" | "+", v) => out.push(v.to_string()),
            _ => return Err(io::Error::other(format!("unexpected reply {line:?}"))),
        }
    }
    Ok(out)
}

/// The server's own count of the run's subscriptions: `PUBSUB NUMPAT` patterns, and per
/// channel `PUBSUB NUMSUB` subscribers.
fn server_view(addr: SocketAddr, channels: &[String]) -> Option<(u64, Vec<u64>)> {
    let numpat = resp_call(addr, &["PUBSUB", "NUMPAT"]).ok()?;
    let mut args = vec!["PUBSUB", "NUMSUB"];
    args.extend(channels.iter().map(|c| c.as_str()));
    let numsub = resp_call(addr, &args).ok()?;
    let per_channel = numsub.chunks(2).map(|kv| kv[1].parse().unwrap_or(0));
    Some((numpat.first()?.parse().ok()?, per_channel.collect()))
}

/// N = 20 subscribers, K = 10 channels, T = 3 each (6 per channel), P = 4 patterns, two
/// publishers: while the run lasts, the server itself counts 4 patterns and 6 subscribers on
/// each channel; every measured message is owed and delivered 6 times, nothing is lost or
/// misrouted, and every subscriber's T + P subscriptions were confirmed before publishing.
/// Then the loader's sockets are gone from the kernel's table.
fn topics_run(addr: SocketAddr, server: &str) {
    let addr_s = addr.to_string();
    let args = [
        "--proto",
        "redis",
        "--addr",
        &addr_s,
        "--subscribers",
        "20",
        "--publishers",
        "2",
        "--topics",
        "10",
        "--topic-subs",
        "3",
        "--patterns",
        "4",
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
    let channels: Vec<String> = (0..10).map(|j| format!("ringfan.{j}")).collect();
    let mut last_view = None;
    let seen = wait_until(Instant::now() + Duration::from_secs(30), || {
        last_view = server_view(addr, &channels);
        last_view == Some((4, vec![6; 10])) || load.is_finished()
    }) && last_view == Some((4, vec![6; 10]));
    let (code, s, stderr) = load.join().expect("the ringfan-load thread");
    let ctx = format!("{server}: {s:?}\n{stderr}");
    assert!(
        seen,
        "{server} never counted 4 patterns and 6 subscribers per channel: {last_view:?}\n{ctx}"
    );
    assert_eq!(code, Some(0), "{ctx}");
    assert_eq!(
        (
            num(&s, "topics"),
            num(&s, "topic_subs"),
            num(&s, "patterns")
        ),
        (10, 3, 4),
        "{ctx}"
    );
    for key in [
        "lost",
        "reordered",
        "misrouted",
        "malformed",
        "stale",
        "unconfirmed",
        "never_confirmed",
        "disconnected",
    ] {
        assert_eq!(num(&s, key), 0, "{key}, {ctx}");
    }
    let published = num(&s, "published");
    assert!(published >= 1000, "{ctx}");
    assert_eq!(num(&s, "expected"), published * 20 * 3 / 10, "{ctx}");
    assert_eq!(num(&s, "measured_delivered"), num(&s, "expected"), "{ctx}");
    // Received inside the window, whenever sent: it differs from what was owed only by what
    // was in flight at the window's two ends.
    let delivered = num(&s, "delivered");
    assert!(
        delivered.abs_diff(published * 6) <= published * 6 / 10,
        "{ctx}"
    );
    assert!(
        wait_until(Instant::now() + Duration::from_secs(5), || {
            tcp_states(addr.port()).established() == 0
        }),
        "{server}: connections left: {:?}",
        tcp_states(addr.port())
    );
}

/// Without --topics the run is what it always was: one plain channel, each message owed to
/// every subscriber.
fn single_channel_run(addr: SocketAddr, server: &str) {
    let addr_s = addr.to_string();
    let args = [
        "--proto",
        "redis",
        "--addr",
        &addr_s,
        "--subscribers",
        "10",
        "--rate",
        "1000",
        "--warmup",
        "0.3",
        "--duration",
        "1",
    ];
    let (code, s, stderr) = run_load(&args, Duration::from_secs(60));
    let ctx = format!("{server}: {s:?}\n{stderr}");
    assert_eq!(code, Some(0), "{ctx}");
    assert_eq!((num(&s, "topics"), num(&s, "patterns")), (1, 0), "{ctx}");
    assert_eq!(num(&s, "lost") + num(&s, "misrouted"), 0, "{ctx}");
    let published = num(&s, "published");
    assert!(published >= 500, "{ctx}");
    assert_eq!(num(&s, "expected"), published * 10, "{ctx}");
    assert_eq!(num(&s, "measured_delivered"), published * 10, "{ctx}");
}

#[test]
fn topics_and_patterns_against_redis_server() {
    let _turn = serial();
    if !io_uring_available() {
        return;
    }
    let Some((_redis, addr)) = start_redis() else {
        return;
    };
    topics_run(addr, "redis-server");
    single_channel_run(addr, "redis-server");
}

#[test]
fn topics_and_patterns_against_ringfan_resp() {
    let _turn = serial();
    if !io_uring_available() {
        return;
    }
    let Some((_ringfan, addr)) = start_ringfan() else {
        return;
    };
    topics_run(addr, "ringfan");
    single_channel_run(addr, "ringfan");
}

/// What cannot be measured is refused up front, naming the flag and why.
#[test]
fn topics_the_protocol_cannot_carry_are_refused() {
    for (args, flag, why) in [
        (&["--topics", "4"][..], "--topics", "no channels"),
        (
            &["--proto", "nats", "--topics", "4", "--patterns", "1"][..],
            "--patterns",
            "NATS wildcards",
        ),
        (
            &["--proto", "redis", "--topics", "4", "--topic-subs", "5"][..],
            "--topic-subs",
            "--topics (4)",
        ),
    ] {
        let (code, _, stderr) = run_load(args, Duration::from_secs(10));
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }
}
