//! The WebSocket listener over real sockets: an independent client (Python `websockets`), the
//! Autobahn fuzzing client, a headless Chromium, and the close paths seen from the kernel.

#[path = "../../protocol/tests/autobahn/mod.rs"]
mod autobahn;
mod common;
#[path = "../../protocol/tests/redis/mod.rs"]
mod redis;

use autobahn::run_bounded;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

fn start(env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let mut all = vec![
        ("RINGFAN_WS_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_RESP_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_METRICS_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_THREADS", "2"),
    ];
    all.extend_from_slice(env);
    let server = Server::start(&all);
    let ws: SocketAddr = server
        .printed("ringfan websocket on ")
        .parse()
        .expect("an address");
    (server, ws)
}

fn has_python_websockets() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success())
}

fn ws_client_script(server: &Server, ws: SocketAddr, publish: bool) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ws_client.py");
    let mut cmd = Command::new("python3");
    cmd.args([
        script,
        &ws.to_string(),
        &server.resp_addr().to_string(),
        &server.addr().to_string(),
        if publish { "1" } else { "0" },
    ]);
    let (ok, out) = run_bounded(cmd, Duration::from_secs(60));
    eprintln!("{out}");
    assert!(ok && out.contains("\nall ok"), "websockets client:\n{out}");
    out
}

#[test]
fn websockets_library_subscribes_publishes_and_closes() {
    if !require_io_uring() {
        return;
    }
    if !has_python_websockets() {
        return skip("Python websockets is not installed (python3 -m pip install websockets)");
    }
    let (server, ws) = start(&[
        ("RINGFAN_WS_PUBLISH", "1"),
        ("RINGFAN_MAX_FRAME_BYTES", "1MiB"),
    ]);
    let out = ws_client_script(&server, ws, true);
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), 5);
    server.assert_clean(0, Duration::from_secs(5), "after the websockets client");
}

#[test]
fn publishing_is_refused_with_1008_unless_enabled() {
    if !require_io_uring() {
        return;
    }
    if !has_python_websockets() {
        return skip("Python websockets is not installed (python3 -m pip install websockets)");
    }
    let (server, ws) = start(&[("RINGFAN_MAX_FRAME_BYTES", "1MiB")]);
    let out = ws_client_script(&server, ws, false);
    assert!(out.contains("ok a publish is refused with 1008"));
    server.assert_clean(0, Duration::from_secs(5), "after the websockets client");
}

// ---------------------------------------------------------------------------------------------
// A minimal client of our own for the close paths: exact bytes, no library hiding them.

const UPGRADE: &[u8] =
    b"GET /t HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Connects and upgrades on `/t`; returns the socket with the 101 read.
fn upgraded(ws: SocketAddr) -> TcpStream {
    ws_upgrade(ws, "/t")
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Everything until the server's FIN (or a reset), within 5 s.
fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    panic!("no end of stream within 5 s after {} bytes", all.len());
}

/// Every way a WebSocket connection ends leaves no CLOSE_WAIT and no fd behind: a close frame,
/// a FIN without one, a reset, an upgrade never finished, and a slowloris upgrade.
#[test]
fn websocket_close_paths_leave_no_close_wait_and_no_fd() {
    if !require_io_uring() {
        return;
    }
    let (server, ws) = start(&[
        ("RINGFAN_WS_HANDSHAKE_TIMEOUT_MS", "400"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "2000"),
    ]);
    // A close frame: echoed (1000), then the server's FIN.
    let mut a = upgraded(ws);
    a.write_all(&client_frame(0x8, &[0x03, 0xE8])).unwrap();
    assert_eq!(read_to_end(&mut a), b"\x88\x02\x03\xE8");
    // A FIN without a close frame: the server ends too, sending nothing.
    let mut b = upgraded(ws);
    b.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut b), b"");
    // A reset.
    let c = upgraded(ws);
    set_linger_zero(&c);
    drop(c);
    // An upgrade started and never finished: 408 and FIN at the deadline.
    let mut d = TcpStream::connect(ws).unwrap();
    d.write_all(b"GET /t HTTP/1.1\r\nHost: x\r\n").unwrap();
    let reply = read_to_end(&mut d);
    assert!(
        reply.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );
    // Slowloris: a byte every 50 ms never finishes in time either.
    let mut e = TcpStream::connect(ws).unwrap();
    let started = Instant::now();
    let mut sent = 0;
    e.set_nonblocking(true).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < started + Duration::from_secs(3) {
        if sent < UPGRADE.len() && e.write_all(&UPGRADE[sent..sent + 1]).is_ok() {
            sent += 1;
        }
        match e.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(reply.starts_with(b"HTTP/1.1 408 "), "slowloris: {reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "slowloris held on"
    );
    drop((a, b, d, e));
    server.assert_clean(0, Duration::from_secs(5), "after the WebSocket close paths");
    let m = scrape(&metrics_url(&server));
    assert_eq!(
        m["ringfan_websocket_timeouts_total{kind=\"handshake\"}"],
        2.0
    );
}

/// At shutdown a WebSocket subscriber gets what was published, then close code 1001, then the
/// FIN; the server exits 0.
#[test]
fn shutdown_sends_going_away_after_the_messages() {
    if !require_io_uring() {
        return;
    }
    let (mut server, ws) = start(&[]);
    let mut s = upgraded(ws);
    let mut publisher = redis::Conn::connect(server.resp_addr());
    assert!(wait_until(secs(5), || {
        publisher.send(b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nt\r\n$4\r\nlast\r\n");
        publisher.frames(1).unwrap() == b":1\r\n"
    }));
    server.sigterm();
    let got = read_to_end(&mut s);
    let close = b"\x88\x16\x03\xE9server shutting down";
    assert!(got.ends_with(close), "{got:?}");
    assert!(got.starts_with(b"\x81\x04last"), "{got:?}");
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(0));
}

/// A client that never answers pings is reset after the pong timeout; one that answers (the
/// websockets library does) stays.
#[test]
fn silent_peer_is_reset_after_a_ping_goes_unanswered() {
    if !require_io_uring() {
        return;
    }
    let (server, ws) = start(&[
        ("RINGFAN_WS_PING_INTERVAL_MS", "200"),
        ("RINGFAN_WS_PONG_TIMEOUT_MS", "300"),
    ]);
    let mut silent = upgraded(ws);
    let started = Instant::now();
    let got = read_to_end(&mut silent);
    assert_eq!(got, b"\x89\x00", "one ping, then the end");
    assert!(started.elapsed() >= Duration::from_millis(450));
    let mut alive = upgraded(ws);
    alive
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    let mut buf = [0u8; 2];
    while Instant::now() < until {
        if alive.read_exact(&mut buf).is_ok() {
            assert_eq!(buf, [0x89, 0x00]);
            pings += 1;
            alive.write_all(&client_frame(0xA, b"")).unwrap();
        }
    }
    assert!(pings >= 3, "{pings} pings in 1.5 s");
    let m = scrape(&metrics_url(&server));
    assert_eq!(m["ringfan_websocket_timeouts_total{kind=\"pong\"}"], 1.0);
    drop(alive);
    server.assert_clean(0, Duration::from_secs(5), "after the ping test");
}

/// A WebSocket subscriber that stops reading is evicted with close code 1008 after what was
/// queued for it.
#[test]
fn slow_websocket_subscriber_is_closed_with_1008() {
    if !require_io_uring() {
        return;
    }
    let (server, ws) = start(&[
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "262144"),
        ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "0"),
    ]);
    // Not reading: the kernel's buffers (about 128 KiB each way on loopback) fill, then the
    // server's queue. (A receive buffer shrunk after the handshake would make loopback crawl
    // once it reads: a tiny window and delayed ACKs, past the close timeout.)
    let mut slow = upgraded(ws);
    let mut publisher = redis::Conn::connect(server.resp_addr());
    let payload = vec![b'p'; 1000];
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(redis::multibulk(&[
            b"PUBLISH".to_vec(),
            b"t".to_vec(),
            payload.clone(),
        ]));
    }
    let url = metrics_url(&server);
    for _ in 0..40 {
        publisher.send(&batch);
        publisher.frames(100).unwrap();
    }
    assert!(wait_until(secs(5), || scrape(&url)
        .get("ringfan_subscribers_evicted_total")
        == Some(&1.0)));
    let t = Instant::now();
    let got = read_to_end(&mut slow);
    assert!(
        got.ends_with(b"\x88\x0a\x03\xF0too slow"),
        "{} bytes in {:?}, ending {:?}; {}",
        got.len(),
        t.elapsed(),
        &got[got.len().saturating_sub(16)..],
        server.describe()
    );
    drop(slow);
    server.assert_clean(1, Duration::from_secs(5), "after the eviction");
}

// ---------------------------------------------------------------------------------------------
// Autobahn.

#[test]
fn autobahn_fuzzing_client_cases_1_to_10_against_the_server() {
    if !require_io_uring() {
        return;
    }
    let wstest = match autobahn::wstest() {
        Ok(w) => w,
        Err(why) => return skip(&why),
    };
    // An echo: each case's client is the only subscriber of `/`, and publishes to it. Case 9
    // sends messages of up to 16 MiB.
    let (server, ws) = start(&[
        ("RINGFAN_WS_PUBLISH", "1"),
        ("RINGFAN_MAX_FRAME_BYTES", "20MiB"),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "64MiB"),
        ("RINGFAN_WS_PING_INTERVAL_MS", "0"),
    ]);
    let (total, report) = autobahn::fuzz(&wstest, &format!("ws://{ws}"), "server");
    eprintln!(
        "autobahn against the server: {total} cases, report in {}",
        report.display()
    );
    server.assert_clean(0, Duration::from_secs(10), "after Autobahn");
}

// ---------------------------------------------------------------------------------------------
// A real browser.

/// A tiny HTTP server for the browser test: serves the page, learns when it subscribed, and
/// receives what it got.
struct PageServer {
    addr: SocketAddr,
    /// The page's script ran (the browser works here).
    loaded: Arc<Mutex<bool>>,
    /// Its WebSocket opened.
    ready: Arc<Mutex<bool>>,
    result: Arc<Mutex<Option<String>>>,
}

impl PageServer {
    fn start(page: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let loaded = Arc::new(Mutex::new(false));
        let ready = Arc::new(Mutex::new(false));
        let result = Arc::new(Mutex::new(None));
        let (l, r, res) = (loaded.clone(), ready.clone(), result.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut req = Vec::new();
                let mut buf = [0u8; 65536];
                // Headers, then a body of Content-Length bytes.
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&req).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let body = text
                    .split_once("\r\n\r\n")
                    .map_or("", |(_, b)| b)
                    .to_string();
                let reply = if text.starts_with("GET / ") {
                    page.clone()
                } else if text.starts_with("POST /loaded") {
                    *l.lock().unwrap() = true;
                    String::new()
                } else if text.starts_with("POST /ready") {
                    *r.lock().unwrap() = true;
                    String::new()
                } else if text.starts_with("POST /result") {
                    *res.lock().unwrap() = Some(body);
                    String::new()
                } else {
                    String::new()
                };
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                        reply.len()
                    )
                    .as_bytes(),
                );
            }
        });
        PageServer {
            addr,
            loaded,
            ready,
            result,
        }
    }
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|b| b.to_string())
}

/// Headless Chromium opens a page whose script subscribes to the lines topic over WebSocket;
/// N lines published over TCP and over RESP all arrive, in order, read back from the page; a
/// screenshot of what it received is saved.
#[test]
fn headless_chromium_receives_every_line_in_order() {
    if !require_io_uring() {
        return;
    }
    let Some(browser) = chromium() else {
        return skip("Chromium is not installed (Debian: apt-get install chromium)");
    };
    const N: usize = 200;
    let (server, ws) = start(&[]);
    let page = format!(
        r#"<!doctype html><html><head><title>0</title></head><body><ol id="got"></ol><script>
fetch("/loaded", {{method: "POST"}});
const got = [];
const ws = new WebSocket("ws://{ws}/");
ws.onopen = () => fetch("/ready", {{method: "POST"}});
ws.onmessage = (e) => {{
  got.push(e.data);
  const li = document.createElement("li"); li.textContent = e.data;
  document.getElementById("got").appendChild(li);
  document.title = String(got.length);
  if (got.length === {N}) fetch("/result", {{method: "POST", body: got.join("\n")}});
}};
</script></body></html>"#
    );
    let pages = PageServer::start(page);
    let profile = std::env::temp_dir().join(format!("ringfan-chromium-{}", std::process::id()));
    let mut chrome = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("http://{}/", pages.addr))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium");
    if !wait_until(secs(30), || *pages.loaded.lock().unwrap()) {
        chrome.kill().ok();
        chrome.wait().ok();
        return skip("Chromium started but never ran the page's script (no display or sandbox?)");
    }
    // The browser works: a WebSocket that does not open is the server's failure, not a skip.
    let opened = wait_until(secs(10), || *pages.ready.lock().unwrap());
    if !opened {
        chrome.kill().ok();
        chrome.wait().ok();
    }
    assert!(
        opened,
        "the page ran but its WebSocket to {ws} never opened"
    );
    let mut line = Client::connect(server.addr());
    let mut resp = redis::Conn::connect(server.resp_addr());
    let (mut over_tcp, mut over_resp) = (Vec::new(), Vec::new());
    for i in 0..N {
        if i % 2 == 0 {
            let text = format!("line {i} over tcp");
            line.send(format!("{text}\n").as_bytes());
            over_tcp.push(text);
        } else {
            let text = format!("line {i} over resp");
            let cmd = format!(
                "*3\r\n$7\r\nPUBLISH\r\n$5\r\nlines\r\n${}\r\n{text}\r\n",
                text.len()
            );
            resp.send(cmd.as_bytes());
            assert!(resp.frames(1).unwrap().starts_with(b":"));
            over_resp.push(text);
        }
    }
    let got = wait_until(secs(30), || pages.result.lock().unwrap().is_some());
    chrome.kill().ok();
    chrome.wait().ok();
    assert!(got, "the page did not receive all {N} messages in 30 s");
    let received = pages.result.lock().unwrap().clone().unwrap();
    let received: Vec<&str> = received.split('\n').collect();
    // Each publisher's lines in its order (two publishers' lines may interleave either way).
    let from = |suffix: &str| -> Vec<String> {
        received
            .iter()
            .filter(|l| l.ends_with(suffix))
            .map(|l| l.to_string())
            .collect()
    };
    assert_eq!(received.len(), N);
    assert_eq!(
        from("over tcp"),
        over_tcp,
        "the TCP publisher's lines, in order"
    );
    assert_eq!(
        from("over resp"),
        over_resp,
        "the RESP publisher's lines, in order"
    );
    // A screenshot of the received list, rendered by the same browser.
    let shot_page = format!(
        "<html><body><h3>{N} messages received over WebSocket</h3><ol>{}</ol></body></html>",
        received
            .iter()
            .take(40)
            .map(|l| format!("<li>{l}</li>"))
            .collect::<String>()
    );
    let shot_pages = PageServer::start(shot_page);
    let shot = std::env::temp_dir().join("ringfan-chromium-websocket.png");
    let mut cmd = Command::new(&browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=800,1000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--screenshot={}", shot.display()))
    .arg(format!("http://{}/", shot_pages.addr));
    let (ok, out) = run_bounded(cmd, Duration::from_secs(60));
    assert!(ok && shot.exists(), "screenshot failed: {out}");
    eprintln!("screenshot: {}", shot.display());
    drop(line);
    std::fs::remove_dir_all(&profile).ok();
}
