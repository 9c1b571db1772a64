//! A differential harness for Redis pub/sub: scripted sessions (`pubsub_cases.txt`) run against
//! a server over TCP (redis-server, later ringfan) or against `resp::Session` without sockets,
//! each compared byte for byte with the replies recorded from redis-server 7.0.15.
//!
//! The script format, one step per line (`#` starts a comment):
//!
//! ```text
//! @first-client-id N     the id redis-server gives the harness's first connection (recorded)
//! === name               a new case: every client is a fresh connection
//! > C N ARG ARG...       client C sends these arguments as one multibulk request, then N reply
//!                        frames are awaited on C
//! >raw C N BYTES         client C sends BYTES as they are, then N frames are awaited on C
//! . C N                  N frames pushed to client C (messages) are awaited
//! ! C                    the server closes C: end of stream awaited, nothing before it
//! < BYTES                the frames of the step above, as redis-server sent them
//! ```
//!
//! A `~` after `>`, `>raw` or `.` (`>~`, `.~`) marks frames whose order Redis leaves to a hash
//! table with a random seed (unsubscribe-all, several patterns matching one message): they are
//! compared as a multiset, their trailing counts in order. A `*` (`>*`) marks a single array
//! whose elements come in hash order (`PUBSUB CHANNELS`).
//!
//! Arguments and bytes use escapes: `\\`, `\r`, `\n`, `\t`, `\0`, `\s` (space), `\xHH`; an
//! argument `\e` is the empty string.
//!
//! Connection ids: the harness's connections are numbered in script order from
//! `@first-client-id`, the first being a probe that reads `CLIENT ID`, so `CLIENT ID` and
//! `HELLO` answers can be compared too.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringfan_protocol::glob;
use ringfan_protocol::resp::{
    self, encode, Action, Decoder, Kind, Limits, Query, Session, SessionConfig,
};

/// How long one step may wait for its frames or its end of stream.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Exact,
    /// Frames in any order; each frame's trailing integer compared in sequence.
    Frames,
    /// One array, elements in any order.
    Elements,
}

#[derive(Clone, Debug)]
pub enum StepKind {
    /// Send bytes on a client, then await frames on it.
    Send { bytes: Vec<u8> },
    /// Await frames pushed to a client.
    Await,
    /// Await the server's close of a client.
    Closed,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub line: usize,
    pub client: usize,
    pub kind: StepKind,
    pub frames: usize,
    pub order: Order,
    /// The recorded frames (absent for `!`, or before recording).
    pub expect: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: String,
    pub steps: Vec<Step>,
}

impl Case {
    pub fn clients(&self) -> usize {
        self.steps.iter().map(|s| s.client + 1).max().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct Script {
    pub first_client_id: u64,
    pub cases: Vec<Case>,
    /// The file's lines, kept to rewrite it when recording.
    lines: Vec<String>,
}

pub fn cases_path() -> PathBuf {
    // The protocol crate's own tests, or the server's, which include this module too.
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    [
        "tests/redis/pubsub_cases.txt",
        "../protocol/tests/redis/pubsub_cases.txt",
    ]
    .iter()
    .map(|p| here.join(p))
    .find(|p| p.exists())
    .expect("pubsub_cases.txt")
}

pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 == b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        i += 1;
        match b[i] {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b's' => out.push(b' '),
            b'e' => {}
            b'x' => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("\\x needs two hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("\\x needs two hex digits"));
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    out
}

pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0 => s.push_str("\\0"),
            0x21..=0x7e | b' ' => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// One multibulk request.
pub fn multibulk(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend(a);
        out.extend(b"\r\n");
    }
    out
}

fn parse_order(op: &str) -> (&str, Order) {
    if let Some(op) = op.strip_suffix('~') {
        (op, Order::Frames)
    } else if let Some(op) = op.strip_suffix('*') {
        (op, Order::Elements)
    } else {
        (op, Order::Exact)
    }
}

pub fn load_script(path: &Path) -> Script {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut script = Script {
        first_client_id: 0,
        cases: Vec::new(),
        lines: lines.clone(),
    };
    for (n, raw) in lines.iter().enumerate() {
        let line = raw.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
        let at = format!("{}:{}", path.display(), n + 1);
        if op == "@first-client-id" {
            script.first_client_id = rest
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{at}: a number"));
            continue;
        }
        if op == "===" {
            script.cases.push(Case {
                name: rest.trim().to_owned(),
                steps: Vec::new(),
            });
            continue;
        }
        let case = script
            .cases
            .last_mut()
            .unwrap_or_else(|| panic!("{at}: step before any ==="));
        if op == "<" {
            let step = case
                .steps
                .last_mut()
                .unwrap_or_else(|| panic!("{at}: < with no step"));
            step.expect = Some(unescape(rest));
            continue;
        }
        let (op, order) = parse_order(op);
        let mut words = rest.split(' ').filter(|w| !w.is_empty());
        let mut number = |what: &str| -> usize {
            words
                .next()
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("{at}: {what} must be a number"))
        };
        let (client, frames) = match op {
            "!" => (number("client"), 0),
            _ => (number("client"), number("frame count")),
        };
        let kind = match op {
            ">" => StepKind::Send {
                bytes: multibulk(&words.map(unescape).collect::<Vec<_>>()),
            },
            // The rest of the line after the two numbers, spaces included.
            ">raw" => StepKind::Send {
                bytes: unescape(rest.trim_start().splitn(3, ' ').nth(2).unwrap_or("")),
            },
            "." => StepKind::Await,
            "!" => StepKind::Closed,
            _ => panic!("{at}: unknown step {op:?}"),
        };
        case.steps.push(Step {
            line: n + 1,
            client,
            kind,
            frames,
            order,
            expect: None,
        });
    }
    script
}

/// Rewrites the script with `replies[i]` (per step, in file order) as its `<` lines.
pub fn write_recording(
    path: &Path,
    script: &Script,
    first_client_id: u64,
    replies: &[(usize, Vec<u8>)],
) {
    let mut out = Vec::new();
    let mut by_line: std::collections::HashMap<usize, &Vec<u8>> =
        replies.iter().map(|(l, b)| (*l, b)).collect();
    for (n, line) in script.lines.iter().enumerate() {
        if line.starts_with("< ") || line == "<" {
            continue;
        }
        if line.starts_with("@first-client-id") {
            out.push(format!("@first-client-id {first_client_id}"));
            continue;
        }
        out.push(line.clone());
        if let Some(bytes) = by_line.remove(&(n + 1)) {
            out.push(format!("< {}", escape(bytes)));
        }
    }
    std::fs::write(path, out.join("\n") + "\n").expect("write the recording");
}

// ---------------------------------------------------------------------------------------------
// RESP2 frames as a client reads them.

fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Length of the first complete frame in `buf`.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let end = line_end(buf)?;
    let number = || -> i64 {
        std::str::from_utf8(&buf[1..end])
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("a RESP length")
    };
    match *buf.first()? {
        // RESP3's null, boolean, double and big number are one line too.
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => Some(end + 2),
        b'$' | b'!' | b'=' => {
            let n = number();
            let len = if n < 0 {
                end + 2
            } else {
                end + 2 + n as usize + 2
            };
            (buf.len() >= len).then_some(len)
        }
        // Arrays, RESP3's pushes and sets: n elements; maps: n pairs.
        kind @ (b'*' | b'>' | b'~' | b'%') => {
            let n = number() * if kind == b'%' { 2 } else { 1 };
            let mut at = end + 2;
            for _ in 0..n.max(0) {
                at += frame_len(&buf[at..])?;
            }
            Some(at)
        }
        other => panic!(
            "not a RESP frame: starts with {other:?} in {:?}",
            escape(buf)
        ),
    }
}

pub fn split_frames(mut buf: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let n = frame_len(buf).unwrap_or_else(|| panic!("incomplete frame {:?}", escape(buf)));
        frames.push(buf[..n].to_vec());
        buf = &buf[n..];
    }
    frames
}

/// The header and elements of one array frame.
fn array_elements(frame: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let end = line_end(frame).expect("array header");
    (frame[..end + 2].to_vec(), split_frames(&frame[end + 2..]))
}

/// The comparable form of `bytes` under `order`.
pub fn normalize(bytes: &[u8], order: Order) -> Vec<Vec<u8>> {
    match order {
        Order::Exact => vec![bytes.to_vec()],
        Order::Elements => {
            let (header, mut elements) = array_elements(bytes);
            elements.sort();
            std::iter::once(header).chain(elements).collect()
        }
        Order::Frames => {
            let mut counts = Vec::new();
            let mut rest: Vec<Vec<u8>> = split_frames(bytes)
                .into_iter()
                .map(|f| {
                    let (header, mut elements) = array_elements(&f);
                    if elements.last().is_some_and(|e| e.starts_with(b":")) {
                        counts.push(elements.pop().unwrap());
                    }
                    std::iter::once(header)
                        .chain(elements)
                        .collect::<Vec<_>>()
                        .concat()
                })
                .collect();
            rest.sort();
            counts
                .into_iter()
                .chain(std::iter::once(b"--".to_vec()))
                .chain(rest)
                .collect()
        }
    }
}

pub fn assert_same(case: &Case, step: &Step, got: &[u8], expected: &[u8], who: &str) {
    if normalize(got, step.order) != normalize(expected, step.order) {
        panic!(
            "case {:?}, step at line {} ({who}):\n  expected {}\n  got      {}",
            case.name,
            step.line,
            escape(expected),
            escape(got)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Over TCP: any server that speaks RESP.

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).ok();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn fill(&mut self, deadline: Instant) -> std::io::Result<usize> {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next `n` frames, waiting up to `STEP_TIMEOUT`.
    pub fn frames(&mut self, n: usize) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let mut at = 0;
            let mut complete = 0;
            while complete < n {
                match frame_len(&self.buf[at..]) {
                    Some(len) => {
                        at += len;
                        complete += 1;
                    }
                    None => break,
                }
            }
            if complete == n {
                return Ok(self.buf.drain(..at).collect());
            }
            match self.fill(deadline) {
                Ok(0) => {
                    return Err(format!(
                        "closed after {complete} of {n} frames: {}",
                        escape(&self.buf)
                    ))
                }
                Ok(_) => {}
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{e}: {complete} of {n} frames in time: {}",
                        escape(&self.buf)
                    ))
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(format!("{e} after {complete} of {n} frames")),
            }
        }
    }

    /// Ends our direction of the stream: the server sees end of input after what was sent.
    pub fn shutdown_write(&mut self) {
        self.stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown(SHUT_WR)");
    }

    /// Everything the server sends until it closes, waiting up to `STEP_TIMEOUT`.
    pub fn read_to_end(&mut self) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.fill(deadline) {
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(std::mem::take(&mut self.buf))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("not closed in time: {e}"))
                }
                Err(_) => {}
            }
        }
    }

    /// Waits for the server's close, with nothing unread before it.
    pub fn closed(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match self.fill(deadline) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("not closed in time: {e}"))
                }
                Err(_) => {}
            }
        }
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("bytes before the close: {}", escape(&self.buf)))
        }
    }
}

/// Runs `case` against the server at `addr`; returns each awaiting step's frames by line.
pub fn run_over_tcp(addr: SocketAddr, case: &Case) -> Result<Vec<(usize, Vec<u8>)>, String> {
    let mut conns: Vec<Conn> = (0..case.clients()).map(|_| Conn::connect(addr)).collect();
    let mut closed = vec![false; conns.len()];
    let mut replies = Vec::new();
    for step in &case.steps {
        let conn = &mut conns[step.client];
        let at = format!("case {:?} line {}", case.name, step.line);
        match &step.kind {
            StepKind::Send { bytes } => {
                conn.send(bytes);
                replies.push((
                    step.line,
                    conn.frames(step.frames).map_err(|e| format!("{at}: {e}"))?,
                ));
            }
            StepKind::Await => replies.push((
                step.line,
                conn.frames(step.frames).map_err(|e| format!("{at}: {e}"))?,
            )),
            StepKind::Closed => {
                conn.closed().map_err(|e| format!("{at}: {e}"))?;
                closed[step.client] = true;
            }
        }
    }
    // Leave no subscription behind for the next case: a server frees a connection's
    // subscriptions before it closes the socket, so QUIT's end of stream proves they are gone.
    for (conn, _) in conns
        .iter_mut()
        .zip(&closed)
        .filter(|(_, closed)| !**closed)
    {
        conn.send(b"*1\r\n$4\r\nQUIT\r\n");
        let end = format!("case {:?} cleanup", case.name);
        let rest = conn.frames(1).map_err(|e| format!("{end}: {e}"))?;
        if rest != b"+OK\r\n" {
            return Err(format!(
                "{end}: unexpected frames before QUIT's reply: {}",
                escape(&rest)
            ));
        }
        conn.closed().map_err(|e| format!("{end}: {e}"))?;
    }
    Ok(replies)
}

/// Opens the probe connection and returns its `CLIENT ID`.
pub fn probe_client_id(addr: SocketAddr) -> u64 {
    let mut probe = Conn::connect(addr);
    probe.send(b"*2\r\n$6\r\nCLIENT\r\n$2\r\nID\r\n");
    let reply = probe.frames(1).expect("CLIENT ID");
    std::str::from_utf8(&reply[1..reply.len() - 2])
        .unwrap()
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Without sockets: `resp::Session`s joined by an in-memory hub.

/// redis-server's default `proto-max-bulk-len`, so that bulk errors match.
pub const REDIS_BULK_BYTES_MAX: usize = 512 * 1024 * 1024;

struct SimClient {
    session: Session,
    decoder: Decoder,
    out: Vec<u8>,
    closed: bool,
}

/// Every connection of one case, and Redis's global pub/sub semantics over them.
pub struct SimHub {
    clients: Vec<SimClient>,
}

impl SimHub {
    pub fn new(clients: usize, first_client_id: u64) -> SimHub {
        let limits = Limits {
            bulk_bytes_max: REDIS_BULK_BYTES_MAX,
            command_bytes_max: usize::MAX,
        };
        SimHub {
            clients: (0..clients)
                .map(|i| SimClient {
                    session: Session::new(SessionConfig {
                        client_id: first_client_id + i as u64,
                        ..SessionConfig::default()
                    }),
                    decoder: Decoder::new(limits),
                    out: Vec::new(),
                    closed: false,
                })
                .collect(),
        }
    }

    pub fn send(&mut self, client: usize, bytes: &[u8]) {
        if self.clients[client].closed {
            return;
        }
        self.clients[client].decoder.feed(bytes);
        // What this read produced, for `Action::Drop`.
        let sent_before = self.clients[client].out.len();
        let mut actions = Vec::new();
        loop {
            let c = &mut self.clients[client];
            match c.decoder.next_command() {
                Ok(Some(command)) => {
                    actions.clear();
                    c.session.handle(&command, &mut actions);
                    for action in actions.drain(..) {
                        if action == Action::Drop {
                            self.clients[client].out.truncate(sent_before);
                        }
                        self.apply(client, action);
                    }
                    if self.clients[client].closed {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    c.out.extend_from_slice(&e.reply());
                    c.closed = true;
                    return;
                }
            }
        }
    }

    fn apply(&mut self, client: usize, action: Action) {
        match action {
            Action::Reply(bytes) => self.clients[client].out.extend_from_slice(&bytes),
            // The sessions hold their own subscriptions; this hub reads them.
            Action::Subscribe { .. } | Action::Unsubscribe { .. } => {}
            Action::Publish {
                kind,
                channel,
                message,
            } => {
                let n = self.publish(kind, &channel, &message);
                self.clients[client]
                    .out
                    .extend_from_slice(&encode::integer(n as i64));
            }
            Action::Query(query) => {
                let reply = self.query(&query);
                self.clients[client].out.extend_from_slice(&reply);
            }
            Action::Close | Action::Drop => self.clients[client].closed = true,
        }
    }

    fn open(&self) -> impl Iterator<Item = &SimClient> {
        self.clients.iter().filter(|c| !c.closed)
    }

    fn publish(&mut self, kind: Kind, channel: &Bytes, message: &Bytes) -> usize {
        let frame = |version| match kind {
            Kind::Shard => resp::smessage_frame(version, channel, message),
            _ => resp::message_frame(version, channel, message),
        };
        let mut deliveries = 0;
        for c in self.clients.iter_mut().filter(|c| !c.closed) {
            let version = c.session.version();
            if c.session.is_subscribed(kind, channel) {
                c.out.extend_from_slice(&frame(version));
                deliveries += 1;
            }
            if kind == Kind::Channel {
                for pattern in c.session.topics(Kind::Pattern) {
                    if glob::matches(&pattern, channel) {
                        c.out.extend_from_slice(&resp::pmessage_frame(
                            version, &pattern, channel, message,
                        ));
                        deliveries += 1;
                    }
                }
            }
        }
        deliveries
    }

    fn query(&self, query: &Query) -> Bytes {
        let kind_of = |shard: bool| if shard { Kind::Shard } else { Kind::Channel };
        match query {
            Query::Channels { shard, pattern } => {
                let mut all: Vec<Bytes> = self
                    .open()
                    .flat_map(|c| c.session.topics(kind_of(*shard)))
                    .collect();
                all.sort();
                all.dedup();
                all.retain(|ch| pattern.as_ref().is_none_or(|p| glob::matches(p, ch)));
                encode::bulk_array(&all)
            }
            Query::NumSub { shard, channels } => {
                let counts: Vec<(Bytes, u64)> = channels
                    .iter()
                    .map(|ch| {
                        let n = self
                            .open()
                            .filter(|c| c.session.is_subscribed(kind_of(*shard), ch))
                            .count();
                        (ch.clone(), n as u64)
                    })
                    .collect();
                encode::numsub(&counts)
            }
            Query::NumPat => {
                let mut all: Vec<Bytes> = self
                    .open()
                    .flat_map(|c| c.session.topics(Kind::Pattern))
                    .collect();
                all.sort();
                all.dedup();
                encode::integer(all.len() as i64)
            }
        }
    }

    /// The next `n` frames sent to `client`.
    pub fn frames(&mut self, client: usize, n: usize) -> Result<Vec<u8>, String> {
        let out = &mut self.clients[client].out;
        let mut at = 0;
        for i in 0..n {
            at += frame_len(&out[at..])
                .ok_or_else(|| format!("{i} of {n} frames: {}", escape(out)))?;
        }
        Ok(out.drain(..at).collect())
    }

    /// Everything sent to `client` and not yet taken.
    pub fn take_output(&mut self, client: usize) -> Vec<u8> {
        std::mem::take(&mut self.clients[client].out)
    }

    pub fn closed(&mut self, client: usize) -> Result<(), String> {
        let c = &self.clients[client];
        match (c.closed, c.out.is_empty()) {
            (true, true) => Ok(()),
            (false, _) => Err("still open".into()),
            (true, false) => Err(format!("bytes before the close: {}", escape(&c.out))),
        }
    }
}

/// Runs `case` on sessions; `first_client_id` is the id of its first connection.
pub fn run_on_sessions(case: &Case, first_client_id: u64) -> Result<Vec<(usize, Vec<u8>)>, String> {
    let mut hub = SimHub::new(case.clients(), first_client_id);
    let mut replies = Vec::new();
    for step in &case.steps {
        let at = format!("case {:?} line {}", case.name, step.line);
        match &step.kind {
            StepKind::Send { bytes } => {
                hub.send(step.client, bytes);
                replies.push((
                    step.line,
                    hub.frames(step.client, step.frames)
                        .map_err(|e| format!("{at}: {e}"))?,
                ));
            }
            StepKind::Await => replies.push((
                step.line,
                hub.frames(step.client, step.frames)
                    .map_err(|e| format!("{at}: {e}"))?,
            )),
            StepKind::Closed => hub.closed(step.client).map_err(|e| format!("{at}: {e}"))?,
        }
    }
    Ok(replies)
}

/// Checks `replies` (by line) against the recording in `case`.
pub fn check_against_recording(case: &Case, replies: &[(usize, Vec<u8>)], who: &str) {
    for (line, got) in replies {
        let step = case.steps.iter().find(|s| s.line == *line).unwrap();
        let expected = step
            .expect
            .as_ref()
            .unwrap_or_else(|| panic!("case {:?} line {line}: no recorded reply (record with RINGFAN_RECORD_REDIS_CASES=1)", case.name));
        assert_same(case, step, got, expected, who);
    }
}

// ---------------------------------------------------------------------------------------------
// redis-server, started for a test on a free loopback port.

pub struct RedisServer {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The redis-server binary, if installed.
pub fn redis_server_path() -> Option<PathBuf> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts redis-server on a free 127.0.0.1 port, or says why it cannot.
pub fn start_redis() -> Result<RedisServer, String> {
    let binary = redis_server_path()
        .ok_or("redis-server is not installed (Debian: apt-get install redis-server)")?;
    let version = Process::new(&binary)
        .arg("--version")
        .output()
        .map_err(|e| e.to_string())?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    if !version.contains("v=7.0.") {
        return Err(format!(
            "the recording is of redis-server 7.0.x, this is {}",
            version.trim()
        ));
    }
    // A port the kernel just handed out and released: free unless taken in between, which the
    // connect loop below would report.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("ringfan-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let child = Process::new(&binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let server = RedisServer {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(server.addr).is_err() {
        if Instant::now() >= deadline {
            return Err(format!(
                "redis-server did not listen on {} in 10 s",
                server.addr
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}
