//! Several ringfan nodes sharing topics through real nats-server processes (clustered by routes,
//! on free 127.0.0.1 ports): delivery across nodes in publisher order, interest-only traffic,
//! failover to another NATS server, and a stalled NATS server that must not slow local fan-out.
//! Skipped, saying so, without nats-server; `.ci/run` installs it.

mod common;
#[path = "../../protocol/tests/redis/mod.rs"]
mod redis;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

fn nats_server_path() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// One nats-server of a test cluster.
struct Nats {
    child: Child,
    port: u16,
    monitor: u16,
}

impl Drop for Nats {
    fn drop(&mut self) {
        // SIGCONT first, in case a test stopped it.
        // SAFETY: kill takes plain integers; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGCONT) };
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Nats {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// GET `path` of the monitoring endpoint.
    fn monitor(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor)).expect("monitor port");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).ok();
        body
    }

    /// A number field of the monitoring JSON at `path` (the first occurrence).
    fn field(&self, path: &str, name: &str) -> Option<u64> {
        let body = self.monitor(path);
        let at = body.find(&format!("\"{name}\":"))? + name.len() + 3;
        body[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Sum of a number field over every occurrence (e.g. every connection of `/connz`).
    fn sum(&self, path: &str, name: &str) -> u64 {
        let body = self.monitor(path);
        body.match_indices(&format!("\"{name}\":"))
            .filter_map(|(at, _)| {
                body[at + name.len() + 3..]
                    .trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

/// `n` nats-servers, each routed to the others, started and waited for (routes included).
fn nats_cluster(n: usize) -> Result<Vec<Nats>, String> {
    let binary = nats_server_path()
        .ok_or("nats-server is not installed (Debian: apt-get install nats-server)")?;
    let cluster_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    let mut servers = Vec::new();
    for i in 0..n {
        let (port, monitor) = (free_port(), free_port());
        let mut cmd = Command::new(&binary);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &monitor.to_string(),
        ]);
        if n > 1 {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.args([
                "--name",
                &format!("n{i}"),
                "--cluster_name",
                "ringfan-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", cluster_ports[i]),
                "--routes",
                &routes.join(","),
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        servers.push(Nats {
            child,
            port,
            monitor,
        });
    }
    for s in &servers {
        let up = wait_until(secs(10), || {
            TcpStream::connect(("127.0.0.1", s.port)).is_ok()
                && (n == 1 || s.field("/routez", "num_routes") == Some(n as u64 - 1))
        });
        if !up {
            return Err(format!(
                "nats-server on {} did not come up with its routes",
                s.port
            ));
        }
    }
    Ok(servers)
}

/// A ringfan node on the backbone at `urls`, with RESP and WebSocket listeners and metrics.
fn node(urls: &[String], env: &[(&str, &str)]) -> Server {
    let urls = urls.join(",");
    let mut all = vec![
        ("RINGFAN_NATS_URL", urls.as_str()),
        ("RINGFAN_RESP_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_WS_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_METRICS_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_THREADS", "2"),
    ];
    all.extend_from_slice(env);
    Server::start(&all)
}

/// One nats-server and two nodes on it; None (having said why) without nats-server.
fn two_nodes_on_one_nats() -> Option<(Vec<Nats>, Server, Server)> {
    let cluster = match nats_cluster(1) {
        Ok(c) => c,
        Err(why) => {
            skip(&why);
            return None;
        }
    };
    let url = [cluster[0].url()];
    let (a, b) = (node(&url, &[]), node(&url, &[]));
    Some((cluster, a, b))
}

fn publish(c: &mut redis::Conn, channel: &[u8], payload: &[u8]) {
    c.send(&redis::multibulk(&[
        b"PUBLISH".to_vec(),
        channel.to_vec(),
        payload.to_vec(),
    ]));
    c.frames(1).expect("PUBLISH reply");
}

fn subscribe(addr: SocketAddr, channel: &[u8]) -> redis::Conn {
    let mut c = redis::Conn::connect(addr);
    c.send(&redis::multibulk(&[
        b"SUBSCRIBE".to_vec(),
        channel.to_vec(),
    ]));
    c.frames(1).expect("confirmation");
    c
}

/// The payloads of `message` frames in `frames`.
fn payloads(frames: &[u8]) -> Vec<Vec<u8>> {
    redis::split_frames(frames)
        .into_iter()
        .map(|f| {
            let body = &f[..f.len() - 2];
            let start = body.iter().rposition(|&b| b == b'\n').unwrap() + 1;
            body[start..].to_vec()
        })
        .collect()
}

/// Publishes probes on `via` (from another connection to the same RESP listener, every 50 ms)
/// until every one of `subs` has one: NATS interest has crossed the cluster. Then a last probe
/// marks the end of the probes in every stream, read up to it.
fn until_routed(via: &mut redis::Conn, channel: &[u8], subs: &mut [&mut redis::Conn]) {
    let addr = via.stream().peer_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = std::thread::spawn({
        let (stop, channel) = (stop.clone(), channel.to_vec());
        move || {
            let mut c = redis::Conn::connect(addr);
            let deadline = Instant::now() + Duration::from_secs(15);
            while !stop.load(std::sync::atomic::Ordering::Acquire) && Instant::now() < deadline {
                publish(&mut c, &channel, b"probe");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    });
    for s in subs.iter_mut() {
        s.frames(1)
            .expect("NATS interest never crossed the cluster");
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    prober.join().unwrap();
    publish(via, channel, b"last-probe");
    for s in subs.iter_mut() {
        loop {
            let f = s.frames(1).expect("the last probe");
            if f.ends_with(b"last-probe\r\n") {
                break;
            }
        }
    }
}

/// Three nodes on a three-server NATS cluster: lines and RESP messages published on node 1
/// reach line, RESP and WebSocket subscribers on nodes 2 and 3, each publisher's in order.
#[test]
fn three_nodes_share_topics_in_publisher_order() {
    if !require_io_uring() {
        return;
    }
    let cluster = match nats_cluster(3) {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    const N: usize = 500;
    let nodes: Vec<Server> = cluster.iter().map(|n| node(&[n.url()], &[])).collect();
    let mut resp_pub = redis::Conn::connect(nodes[0].resp_addr());
    let mut line_pub = Client::connect(nodes[0].addr());
    let mut subs_t: Vec<redis::Conn> = nodes[1..]
        .iter()
        .map(|n| subscribe(n.resp_addr(), b"t"))
        .collect();
    let mut subs_lines: Vec<redis::Conn> = nodes[1..]
        .iter()
        .map(|n| subscribe(n.resp_addr(), b"lines"))
        .collect();
    let mut line_readers: Vec<Client> = nodes[1..]
        .iter()
        .map(|n| Client::connect(n.addr()))
        .collect();
    let mut ws_readers: Vec<TcpStream> = nodes[1..]
        .iter()
        .map(|n| ws_upgrade(n.printed("ringfan websocket on ").parse().unwrap(), "/"))
        .collect();
    {
        let mut all: Vec<&mut redis::Conn> = subs_t.iter_mut().collect();
        until_routed(&mut resp_pub, b"t", &mut all);
    }
    {
        let mut all: Vec<&mut redis::Conn> = subs_lines.iter_mut().collect();
        until_routed(&mut resp_pub, b"lines", &mut all);
    }
    // The line readers got the lines probes too: skip up to the last one.
    for r in line_readers.iter_mut() {
        while r.expect_line(secs(5), "probe") != b"last-probe\n" {}
    }
    for w in ws_readers.iter_mut() {
        while ws_read_frame(w) != (1, b"last-probe".to_vec()) {}
    }
    for i in 0..N {
        publish(&mut resp_pub, b"t", format!("resp {i}").as_bytes());
        line_pub.send(format!("line {i}\n").as_bytes());
    }
    for s in subs_t.iter_mut() {
        let got = payloads(&s.frames(N).unwrap());
        let want: Vec<Vec<u8>> = (0..N).map(|i| format!("resp {i}").into_bytes()).collect();
        assert_eq!(got, want, "RESP messages across nodes, in order");
    }
    for s in subs_lines.iter_mut() {
        let got = payloads(&s.frames(N).unwrap());
        let want: Vec<Vec<u8>> = (0..N).map(|i| format!("line {i}").into_bytes()).collect();
        assert_eq!(
            got, want,
            "lines across nodes to RESP subscribers, in order"
        );
    }
    for r in line_readers.iter_mut() {
        for i in 0..N {
            assert_eq!(
                r.expect_line(secs(5), "line"),
                format!("line {i}\n").into_bytes()
            );
        }
    }
    for w in ws_readers.iter_mut() {
        for i in 0..N {
            let want = (1, format!("line {i}").into_bytes());
            assert_eq!(ws_read_frame(w), want, "WebSocket, across nodes");
        }
    }
    // NATS carried each message once to each interested node: node 1 published N on `t` and
    // N/chunk on `lines`; each other node received them once.
    let url = metrics_url(&nodes[1]);
    assert!(wait_until(secs(5), || {
        let m = scrape(&url);
        m["ringfan_backbone_messages_total{direction=\"in\"}"] >= (2 * N) as f64
            && m["ringfan_backbone_connected"] == 1.0
    }));
}

/// A node with no subscriber for a topic receives no NATS traffic for it: the NATS server sends
/// nothing to any connection while node 1 publishes to a topic no one holds; once node 2
/// subscribes, it does.
#[test]
fn a_node_gets_nats_traffic_only_for_topics_it_has_subscribers_for() {
    if !require_io_uring() {
        return;
    }
    let Some((cluster, a, b)) = two_nodes_on_one_nats() else {
        return;
    };
    let _held = subscribe(b.resp_addr(), b"other");
    let mut publisher = redis::Conn::connect(a.resp_addr());
    // Node B's interest in `other` reached NATS: one subscription of its connection.
    assert!(wait_until(secs(5), || cluster[0]
        .sum("/connz", "subscriptions")
        >= 1));
    for i in 0..1000 {
        publish(&mut publisher, b"t", format!("{i}").as_bytes());
    }
    assert!(wait_until(secs(5), || cluster[0].sum("/connz", "in_msgs") >= 1000));
    assert_eq!(
        cluster[0].sum("/connz", "out_msgs"),
        0,
        "NATS sent messages to a node without subscribers: {}",
        cluster[0].monitor("/connz?subs=1")
    );
    let mut sub = subscribe(b.resp_addr(), b"t");
    until_routed(&mut publisher, b"t", &mut [&mut sub]);
    assert!(cluster[0].sum("/connz", "out_msgs") > 0);
}

/// The NATS server a node is connected to is killed: the node reconnects to the next URL within
/// 2 s, delivery resumes, the reconnect is counted, and nothing leaks.
#[test]
fn failover_to_another_nats_server() {
    if !require_io_uring() {
        return;
    }
    let mut cluster = match nats_cluster(2) {
        Ok(c) => c,
        Err(why) => return skip(&why),
    };
    let urls = [cluster[0].url(), cluster[1].url()];
    let n1 = node(&urls, &[]);
    let n2 = node(&[cluster[1].url()], &[]);
    let mut sub = subscribe(n2.resp_addr(), b"t");
    let mut publisher = redis::Conn::connect(n1.resp_addr());
    until_routed(&mut publisher, b"t", &mut [&mut sub]);
    let fds_before = n1.fds();
    let url1 = metrics_url(&n1);
    // Kill the server node 1 is connected to (the first of its list).
    let killed = cluster.remove(0);
    drop(killed);
    let killed_at = Instant::now();
    let mut resumed = None;
    let mut i = 0u64;
    while Instant::now() < killed_at + Duration::from_secs(10) {
        publish(&mut publisher, b"t", format!("after {i}").as_bytes());
        i += 1;
        sub.stream()
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        if sub.frames(1).is_ok() {
            resumed = Some(killed_at.elapsed());
            break;
        }
    }
    let resumed = resumed.expect("delivery did not resume within 10 s");
    eprintln!("delivery resumed {resumed:?} after the NATS server was killed");
    assert!(
        resumed < Duration::from_secs(2) + Duration::from_millis(500),
        "{resumed:?}"
    );
    assert!(wait_until(secs(5), || scrape(&url1)
        ["ringfan_backbone_reconnects_total"]
        >= 1.0));
    assert!(
        n1.fds() <= fds_before + 1,
        "fds grew: {} -> {}",
        fds_before,
        n1.fds()
    );
}

/// NATS stalled (SIGSTOP) for 5 s under load: local fan-out goes on at full rate, what could
/// not be forwarded is dropped and counted, memory stays bounded, and forwarding resumes after
/// SIGCONT.
#[test]
fn a_stalled_nats_server_never_slows_local_fan_out() {
    if !require_io_uring() {
        return;
    }
    let Some((cluster, n1, n2)) = two_nodes_on_one_nats() else {
        return;
    };
    let mut remote = subscribe(n2.resp_addr(), b"lines");
    let mut local = Client::connect(n1.addr());
    let mut publisher = Client::connect(n1.addr());
    let mut via = redis::Conn::connect(n1.resp_addr());
    until_routed(&mut via, b"lines", &mut [&mut remote]);
    while local.expect_line(secs(5), "probe") != b"last-probe\n" {}
    cluster[0].signal(libc::SIGSTOP);
    // 5 s of lines at full speed: the local subscriber gets every one of them.
    let stalled_at = Instant::now();
    let mut sent = 0u64;
    let reader = std::thread::spawn(move || {
        let mut got = 0u64;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match local.read_line(deadline) {
                Ok(Some(l)) if l == b"end\n" => break,
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        (got, local)
    });
    let line = [b'x'; 63];
    let mut chunk = Vec::new();
    for _ in 0..1000 {
        chunk.extend_from_slice(&line);
        chunk.push(b'\n');
    }
    let mut max_rss = 0;
    while stalled_at.elapsed() < Duration::from_secs(5) {
        publisher.send(&chunk);
        sent += 1000;
        max_rss = max_rss.max(rss_kib(n1.pid()));
    }
    publisher.send(b"end\n");
    let (got, _local) = reader.join().unwrap();
    cluster[0].signal(libc::SIGCONT);
    eprintln!(
        "while NATS was stopped: {sent} lines sent in 5 s, {got} delivered locally; RSS peak {max_rss} KiB"
    );
    assert_eq!(got, sent, "local fan-out lost lines while NATS was stalled");
    assert!(
        sent > 100_000,
        "local fan-out slowed to {sent} lines in 5 s"
    );
    assert!(max_rss < 512 * 1024, "memory grew to {max_rss} KiB");
    let url1 = metrics_url(&n1);
    assert!(wait_until(secs(5), || scrape(&url1)
        ["ringfan_backbone_dropped_total{direction=\"out\"}"]
        > 0.0));
    // Forwarding resumes (on a fresh channel: `remote`, not reading, was rightly evicted as a
    // slow consumer by the flood that NATS delivered after SIGCONT).
    drop(remote);
    let mut fresh = subscribe(n2.resp_addr(), b"after");
    until_routed(&mut via, b"after", &mut [&mut fresh]);
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
