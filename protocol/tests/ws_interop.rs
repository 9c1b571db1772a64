//! The WebSocket codec against independent implementations, over real sockets on 127.0.0.1.
//!
//! A test-only echo server drives [`WsConn`] with blocking sockets, one thread per connection:
//! each message a client sends comes back as one frame of the same kind. Against it run
//! - the Python `websockets` library (`pip install websockets`): handshake with a
//!   `permessage-deflate` offer, echo of text, binary, fragmented and large messages, pings,
//!   the close handshake, and raw frames that break RFC 6455, each answered with its close code,
//!   then the server's FIN;
//! - the Autobahn test suite's fuzzing client, cases 1 to 10 (12 and 13 are compression, not
//!   offered): every case OK, NON-STRICT or INFORMATIONAL. `autobahntestsuite` is Python 2 code;
//!   install it in a Python 2.7 virtualenv and name its `wstest` in `RINGFAN_WSTEST`.
//!
//! Each test says why and skips when its client is missing; it never passes without running.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

mod autobahn;

use autobahn::run_bounded;
use bytes::Bytes;
use ringfan_protocol::ws::{self, Action, Opcode, WsConfig, WsConn};

/// How long an echo connection waits for its peer before giving up on it.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);

struct EchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(message_bytes_max: usize) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let config = WsConfig {
            header_bytes_max: 8192,
            message_bytes_max,
            publish: true,
            lines_topic: Bytes::from_static(b"lines"),
        };
        let stopping = stop.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let config = config.clone();
                std::thread::spawn(move || echo(stream, &config));
            }
        });
        EchoServer {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so that its thread sees `stop` and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection until its write half ended and the peer closed or went quiet.
fn echo(mut stream: TcpStream, config: &WsConfig) {
    stream.set_read_timeout(Some(PEER_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut conn = WsConn::new(config);
    let mut buf = vec![0u8; 64 * 1024];
    let mut actions = Vec::new();
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        conn.on_input(&buf[..n], &mut actions);
        for action in actions.drain(..) {
            let sent = match action {
                Action::Send(bytes) => stream.write_all(&bytes),
                Action::Publish { text, payload } => {
                    let opcode = if text { Opcode::Text } else { Opcode::Binary };
                    stream.write_all(&ws::frame(opcode, &payload))
                }
                Action::Shutdown => stream.shutdown(Shutdown::Write),
                Action::Subscribe(_) | Action::Pong(_) => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
        // After Shutdown the peer's FIN (read 0) or the timeout ends the loop; what it still
        // sends is ignored by the closed connection.
    }
}

/// The `websockets` client's checks; prints `ok <name>` for each and `all ok` at the end.
const WEBSOCKETS_CLIENT: &str = r#"
import socket, struct, sys, time
from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosedError

port = int(sys.argv[1])
URL = f"ws://127.0.0.1:{port}/news"
MAX = int(sys.argv[2])

def masked(first, payload, length=None):
    mask = b"\x11\x22\x33\x44"
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes([first, 0x80 | n])
    elif n < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def ok(name):
    print("ok", name, flush=True)

def open_ws():
    # The default offers permessage-deflate: the server must not take it up.
    return connect(URL, proxy=None, ping_interval=None, close_timeout=5)

with open_ws() as ws:
    assert ws.protocol.extensions == [], ws.protocol.extensions
    ws.send("hello"); assert ws.recv() == "hello"
    ws.send(b"\x00\xff"); assert ws.recv() == b"\x00\xff"
    ws.send(""); assert ws.recv() == ""
    ok("text, binary, empty")
    ws.send(["fr", "ag", "mé", "nts"]); assert ws.recv() == "fragménts"
    ws.send([b"a" * 10, b"", b"b" * 70000]); assert ws.recv() == b"a" * 10 + b"b" * 70000
    ok("fragmented")
    for n in (125, 126, 65535, 65536, MAX):
        ws.send(b"x" * n); assert ws.recv() == b"x" * n, n
    ok("7, 16 and 64-bit lengths")
    pong = ws.ping(b"payload"); assert pong.wait(5)
    ok("ping answered with its payload")
    # A character cut between fragments, a ping between them.
    ws.socket.sendall(masked(0x01, "€".encode()[:1]) + masked(0x89, b"p")
                      + masked(0x80, "€".encode()[1:]))
    assert ws.recv() == "€"
    ok("UTF-8 across fragments, ping between")
    start = time.monotonic()
    ws.close(4000, "done")
    assert ws.protocol.close_rcvd.code == 4000, ws.protocol.close_rcvd
    assert time.monotonic() - start < 3, "the server did not end the TCP connection"
    ok("close handshake echoes the code, then the server's FIN")

def fails_with(name, raw, code):
    with open_ws() as ws:
        ws.socket.sendall(raw)
        try:
            ws.recv(timeout=5)
            raise AssertionError(f"{name}: no close")
        except ConnectionClosedError as e:
            assert e.rcvd is not None and e.rcvd.code == code, (name, e.rcvd)
        except TimeoutError:
            raise AssertionError(f"{name}: no close in 5 s")
    ok(f"{name} -> {code}")

fails_with("unmasked", bytes([0x81, 1]) + b"x", 1002)
fails_with("RSV1", masked(0xC1, b"x"), 1002)
fails_with("reserved opcode 3", masked(0x83, b""), 1002)
fails_with("reserved control opcode 11", masked(0x8B, b""), 1002)
fails_with("ping of 126 bytes", masked(0x89, b"p" * 126), 1002)
fails_with("fragmented ping", masked(0x09, b"p"), 1002)
fails_with("continuation first", masked(0x80, b"x"), 1002)
fails_with("text inside a fragmented message", masked(0x01, b"a") + masked(0x81, b"b"), 1002)
fails_with("invalid UTF-8", masked(0x81, b"ok\xed\xa0\x80"), 1007)
fails_with("invalid UTF-8, fail fast", masked(0x01, b"\xf4\x90"), 1007)
fails_with("close with 1 byte", masked(0x88, b"\x03"), 1002)
fails_with("close code 1005", masked(0x88, struct.pack("!H", 1005)), 1002)
fails_with("close reason not UTF-8", masked(0x88, struct.pack("!H", 1000) + b"\xff"), 1007)
fails_with("message over the limit", masked(0x82, b"", length=MAX + 1), 1009)
fails_with("64-bit length, top bit", bytes([0x82, 0xFF]) + b"\x80" + b"\0" * 7 + b"abcd", 1002)

def http(request):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data

req = (b"GET /news HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
reply = http(req)
assert reply.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), reply
assert b"\r\nSec-WebSocket-Version: 13\r\n" in reply, reply
ok("version 8 -> 426 naming 13, then the server's FIN")
assert http(req.replace(b"GET", b"PUT")).startswith(b"HTTP/1.1 405 "), "PUT"
ok("PUT -> 405")
print("all ok")
"#;

fn python_with_websockets() -> Result<(), String> {
    let (ok, out) = run_bounded(
        {
            let mut c = Command::new("python3");
            c.args([
                "-c",
                "import websockets; assert int(websockets.version.version.split('.')[0]) >= 13",
            ]);
            c
        },
        Duration::from_secs(30),
    );
    if ok {
        Ok(())
    } else {
        Err(out)
    }
}

#[test]
fn python_websockets_client_against_the_codec() {
    // `Command::spawn` fails when python3 is absent: that is a skip too.
    let has = std::panic::catch_unwind(python_with_websockets);
    match has {
        Ok(Ok(())) => {}
        Ok(Err(why)) => {
            eprintln!(
                "SKIP python_websockets_client_against_the_codec: python3 with websockets >= 13 \
                 is needed (pip install websockets): {}",
                why.trim()
            );
            return;
        }
        Err(_) => {
            eprintln!("SKIP python_websockets_client_against_the_codec: python3 not found");
            return;
        }
    }
    let max = 1 << 20;
    let server = EchoServer::start(max);
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        WEBSOCKETS_CLIENT,
        &server.port.to_string(),
        &max.to_string(),
    ]);
    let (ok, out) = run_bounded(cmd, Duration::from_secs(120));
    assert!(ok && out.contains("\nall ok"), "websockets client:\n{out}");
    let checks = out.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(checks, 23, "{out}");
    eprintln!("{out}");
}

#[test]
fn autobahn_fuzzing_client_cases_1_to_10() {
    let wstest = match autobahn::wstest() {
        Ok(w) => w,
        Err(why) => return eprintln!("SKIP autobahn_fuzzing_client_cases_1_to_10: {why}"),
    };
    // Case 9 sends messages of up to 16 MiB.
    let server = EchoServer::start(64 << 20);
    let url = format!("ws://127.0.0.1:{}", server.port);
    let (total, report) = autobahn::fuzz(&wstest, &url, "codec");
    eprintln!("autobahn: {total} cases, report in {}", report.display());
}
