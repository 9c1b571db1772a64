//! What goes on the wire: message payloads, protocol framing, subscription handshakes, and the
//! marker scanner the subscribers run over the received byte stream.
//!
//! Payload (same for every protocol): `@<publisher>:<seq>:<send_ts_ns>;` then `x` padding up to
//! S-1 bytes, then `\n`. The framing bytes of RESP and NATS never contain `@`, so one scanner
//! that looks for `@…;` works on their byte streams as they are. A WebSocket frame header can
//! contain `@`: there the scanner sees the frames' payloads only (see `ws.rs`).

use memchr::memmem;

use super::cli::{Config, Proto};
use super::topics::{fmt_u64, Topics};
use super::ws;

/// Builds publisher frames: protocol prefix (naming the channel) + payload of exactly `size`
/// bytes + suffix.
pub struct FrameWriter {
    proto: Proto,
    channel: String,
    topics: Topics,
    suffix: &'static [u8],
    size: usize,
    /// `size` in decimal, as the prefix states it.
    size_text: Vec<u8>,
    padding: Vec<u8>,
}

impl FrameWriter {
    pub fn new(proto: Proto, channel: &str, topics: Topics, size: usize) -> Self {
        let suffix: &'static [u8] = match proto {
            // ws: publishers send lines.
            Proto::Ringfan | Proto::Ws => b"",
            Proto::Redis | Proto::Nats => b"\r\n",
        };
        FrameWriter {
            proto,
            channel: channel.to_string(),
            topics,
            suffix,
            size,
            size_text: size.to_string().into_bytes(),
            padding: vec![b'x'; size],
        }
    }

    /// Appends the protocol's prefix for a message on channel `j`.
    #[inline]
    fn prefix(&self, j: u32, out: &mut Vec<u8>) {
        match self.proto {
            Proto::Ringfan | Proto::Ws => {}
            Proto::Redis => {
                let mut d = [0u8; 20];
                let name_len = self.name_len(j);
                out.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n$");
                out.extend_from_slice(fmt_u64(name_len as u64, &mut d));
                out.extend_from_slice(b"\r\n");
                self.topics.write_name(&self.channel, j, out);
                out.extend_from_slice(b"\r\n$");
                out.extend_from_slice(&self.size_text);
                out.extend_from_slice(b"\r\n");
            }
            Proto::Nats => {
                out.extend_from_slice(b"PUB ");
                self.topics.write_name(&self.channel, j, out);
                out.push(b' ');
                out.extend_from_slice(&self.size_text);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    fn name_len(&self, j: u32) -> usize {
        let mut d = [0u8; 20];
        let digits = fmt_u64(j as u64, &mut d).len();
        self.channel.len()
            + if self.topics.channels > 1 {
                1 + digits
            } else {
                0
            }
    }

    /// Bytes of one frame on channel `j` on the wire.
    pub fn frame_len(&self, j: u32) -> usize {
        let mut prefix = Vec::new();
        self.prefix(j, &mut prefix);
        prefix.len() + self.size + self.suffix.len()
    }

    /// Bytes of the longest frame of the run (the last channel has the longest name).
    pub fn frame_len_max(&self) -> usize {
        self.frame_len(self.topics.channels - 1)
    }

    /// Appends one frame on channel `j`, its marker `@<stream>:<seq>:<ts>;`; `false` (nothing
    /// appended) if the marker does not fit in `size`.
    #[inline]
    pub fn push(&self, out: &mut Vec<u8>, j: u32, stream: u32, seq: u64, ts: u64) -> bool {
        let (mut a, mut b, mut c) = ([0u8; 20], [0u8; 20], [0u8; 20]);
        let p = fmt_u64(stream as u64, &mut a);
        let s = fmt_u64(seq, &mut b);
        let t = fmt_u64(ts, &mut c);
        let marker = 1 + p.len() + 1 + s.len() + 1 + t.len() + 1;
        if marker + 1 > self.size {
            return false;
        }
        self.prefix(j, out);
        out.push(b'@');
        out.extend_from_slice(p);
        out.push(b':');
        out.extend_from_slice(s);
        out.push(b':');
        out.extend_from_slice(t);
        out.push(b';');
        out.extend_from_slice(&self.padding[..self.size - 1 - marker]);
        out.push(b'\n');
        out.extend_from_slice(self.suffix);
        true
    }
}

/// Appends one RESP command: `*<n>\r\n`, then `$<len>\r\n<item>\r\n` for `name` and each
/// argument.
fn resp_command(out: &mut Vec<u8>, name: &[u8], args: &[Vec<u8>]) {
    out.extend_from_slice(format!("*{}\r\n", args.len() + 1).as_bytes());
    for it in std::iter::once(name).chain(args.iter().map(|a| a.as_slice())) {
        out.extend_from_slice(format!("${}\r\n", it.len()).as_bytes());
        out.extend_from_slice(it);
        out.extend_from_slice(b"\r\n");
    }
}

/// Bytes subscriber `i` of the run sends right after connecting: ws, the upgrade request for
/// `/` (or `/<channel>` with --channel); otherwise [`subscribe_command`].
pub fn subscriber_hello(cfg: &Config, topics: &Topics, i: u32) -> Vec<u8> {
    match cfg.proto {
        Proto::Ws => ws::upgrade_request(
            &cfg.subscriber_addr(),
            cfg.channel_given.then_some(cfg.channel.as_str()),
        ),
        p => subscribe_command(p, &cfg.channel, topics, i),
    }
}

/// Bytes subscriber `i` sends right after connecting: its T channels in one SUBSCRIBE (NATS:
/// one SUB each, then a PING), then its patterns in one PSUBSCRIBE (redis only). Nothing for
/// ringfan, and for ws (its upgrade request comes from [`subscriber_hello`]).
pub fn subscribe_command(proto: Proto, channel: &str, topics: &Topics, i: u32) -> Vec<u8> {
    let names: Vec<Vec<u8>> = topics
        .channels_of(i)
        .map(|j| topics.name(channel, j))
        .collect();
    let mut out = Vec::new();
    match proto {
        Proto::Ringfan | Proto::Ws => {}
        Proto::Redis => {
            resp_command(&mut out, b"SUBSCRIBE", &names);
            let patterns: Vec<Vec<u8>> = topics
                .patterns_of(i)
                .map(|q| Topics::pattern(channel, q))
                .collect();
            if !patterns.is_empty() {
                resp_command(&mut out, b"PSUBSCRIBE", &patterns);
            }
        }
        Proto::Nats => {
            out.extend_from_slice(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
            for (sid, name) in names.iter().enumerate() {
                out.extend_from_slice(b"SUB ");
                out.extend_from_slice(name);
                out.extend_from_slice(format!(" {}\r\n", sid + 1).as_bytes());
            }
            out.extend_from_slice(b"PING\r\n");
        }
    }
    out
}

/// Bytes a publisher sends right after connecting.
pub fn publisher_hello(proto: Proto) -> &'static [u8] {
    match proto {
        Proto::Nats => b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n",
        _ => b"",
    }
}

/// State of a subscription handshake, judged from the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Not yet. The first `consumed` bytes were complete replies, `confirmed` of them
    /// subscription confirmations: the caller may drop those bytes and wait for that many
    /// fewer confirmations.
    Pending { consumed: usize, confirmed: usize },
    /// Confirmed; message data starts at this offset of the bytes seen.
    Ready(usize),
    /// The server answered with an error (the first line of it).
    Failed(String),
}

impl Handshake {
    const WAITING: Handshake = Handshake::Pending {
        consumed: 0,
        confirmed: 0,
    };
}

/// ringfan: any byte received means the subscription exists (the loader sends sync lines).
/// redis: `want` confirmations, each a `subscribe` or `psubscribe` reply
/// (`*3\r\n$9\r\nsubscribe\r\n$n\r\nchan\r\n:count\r\n`); other replies before them (a
/// message still on its way from an earlier run) are skipped.
/// NATS: the `PONG` answering the `PING` sent after the `SUB`s (NATS answers in order).
/// ws: the `101` answering the upgrade (the server subscribes the connection as it upgrades).
pub fn handshake(proto: Proto, seen: &[u8], want: usize) -> Handshake {
    match proto {
        Proto::Ws => ws::upgrade_reply(seen),
        Proto::Ringfan => {
            if seen.is_empty() {
                Handshake::WAITING
            } else {
                Handshake::Ready(0)
            }
        }
        Proto::Redis => redis_confirmations(seen, want),
        Proto::Nats => {
            if let Some(e) = nats_error_line(seen) {
                return Handshake::Failed(e);
            }
            match memmem::find(seen, b"PONG\r\n") {
                Some(i) => Handshake::Ready(i + 6),
                None => Handshake::WAITING,
            }
        }
    }
}

fn nats_error_line(seen: &[u8]) -> Option<String> {
    let start = if seen.starts_with(b"-") {
        0
    } else {
        memmem::find(seen, b"\r\n-")? + 2
    };
    let end = memmem::find(&seen[start..], b"\r\n")? + start;
    Some(String::from_utf8_lossy(&seen[start..end]).into_owned())
}

/// Walks the complete RESP2 replies in `seen`, counting subscription confirmations.
fn redis_confirmations(seen: &[u8], want: usize) -> Handshake {
    let (mut at, mut confirmed) = (0usize, 0usize);
    while at < seen.len() {
        let end = match resp_reply_end(seen, at, 0) {
            Ok(Some(end)) => end,
            Ok(None) => break,
            Err(e) => return Handshake::Failed(e),
        };
        let reply = &seen[at..end];
        if reply.starts_with(b"*3\r\n$9\r\nsubscribe\r\n")
            || reply.starts_with(b"*3\r\n$10\r\npsubscribe\r\n")
        {
            confirmed += 1;
            if confirmed >= want {
                return Handshake::Ready(end);
            }
        }
        at = end;
    }
    Handshake::Pending {
        consumed: at,
        confirmed,
    }
}

/// Nesting deeper than this is not a pub/sub reply.
const RESP_DEPTH_MAX: u32 = 4;

/// The end of the RESP2 reply starting at `at`: Ok(None) if it is not complete yet, Err with
/// the server's error line (or a description of what is not RESP).
fn resp_reply_end(b: &[u8], at: usize, depth: u32) -> Result<Option<usize>, String> {
    let Some(eol) = memmem::find(&b[at..], b"\r\n").map(|e| at + e) else {
        return Ok(None);
    };
    let line = &b[at..eol];
    let number = || -> Result<i64, String> {
        std::str::from_utf8(&line[1..])
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| format!("not a RESP reply: {}", String::from_utf8_lossy(line)))
    };
    match line.first() {
        Some(b'+' | b':') => Ok(Some(eol + 2)),
        Some(b'-') => Err(String::from_utf8_lossy(line).into_owned()),
        Some(b'$') => {
            let n = number()?;
            if n < 0 {
                return Ok(Some(eol + 2));
            }
            let end = eol + 2 + n as usize + 2;
            Ok((end <= b.len()).then_some(end))
        }
        Some(b'*') if depth < RESP_DEPTH_MAX => {
            let n = number()?;
            let mut end = eol + 2;
            for _ in 0..n.max(0) {
                match resp_reply_end(b, end, depth + 1)? {
                    Some(e) => end = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(end))
        }
        _ => Err(format!(
            "not a RESP reply: {}",
            String::from_utf8_lossy(&line[..line.len().min(80)])
        )),
    }
}

/// A parsed marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub publisher: u32,
    pub seq: u64,
    pub ts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Marker(Marker),
    Malformed,
}

/// Most digits accepted per marker field: 19 digits always fit in a u64, so no overflow checks.
const MAX_DIGITS: u8 = 19;

/// Per-connection marker scanner: a small state machine over `@<u32>:<u64>:<u64>;`. A marker
/// split across receive buffers simply continues in the next one (the parser state is the
/// carry), so nothing is copied and nothing is allocated.
#[derive(Clone, Default)]
pub struct Scanner {
    /// Inside a marker (after its `@`).
    active: bool,
    /// Which field is being read (0 publisher, 1 seq, 2 timestamp).
    field: u8,
    /// Digits of the current field so far.
    digits: u8,
    /// Completed fields (publisher, seq).
    fields: [u64; 2],
    /// Value of the field being read.
    acc: u64,
}

enum Step {
    /// The marker ended at this index (exclusive): valid or not, it was reported.
    Done(usize),
    /// The data ran out inside the marker.
    More,
}

impl Scanner {
    /// Runs the marker state machine over `data[i..]`.
    #[inline]
    fn step(&mut self, data: &[u8], mut i: usize, f: &mut impl FnMut(Event)) -> Step {
        // Locals, so the hot loop keeps its state in registers.
        let (mut field, mut digits, mut acc) = (self.field, self.digits, self.acc);
        while i < data.len() {
            let b = data[i];
            let d = b.wrapping_sub(b'0');
            if d < 10 {
                if digits == MAX_DIGITS {
                    break;
                }
                acc = acc * 10 + d as u64;
                digits += 1;
            } else if b == b':' && field < 2 && digits > 0 {
                self.fields[field as usize] = acc;
                acc = 0;
                field += 1;
                digits = 0;
            } else if b == b';' && field == 2 && digits > 0 {
                self.active = false;
                match u32::try_from(self.fields[0]) {
                    Ok(publisher) => f(Event::Marker(Marker {
                        publisher,
                        seq: self.fields[1],
                        ts: acc,
                    })),
                    Err(_) => f(Event::Malformed),
                }
                return Step::Done(i + 1);
            } else {
                break;
            }
            i += 1;
        }
        if i == data.len() {
            (self.field, self.digits, self.acc) = (field, digits, acc);
            return Step::More;
        }
        // An unexpected byte: report, and resume the search for '@' at that byte (it may be
        // the start of the next marker).
        self.active = false;
        f(Event::Malformed);
        Step::Done(i)
    }

    /// Scans the next bytes of the stream, calling `f` for every marker (or malformed one).
    #[inline]
    pub fn feed(&mut self, data: &[u8], mut f: impl FnMut(Event)) {
        let mut i = 0;
        loop {
            if !self.active {
                let Some(at) = memchr::memchr(b'@', &data[i..]) else {
                    return;
                };
                i += at + 1;
                self.active = true;
                self.field = 0;
                self.digits = 0;
                self.acc = 0;
            }
            match self.step(data, i, &mut f) {
                Step::Done(next) => i = next,
                Step::More => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(proto: Proto, topics: Topics, size: usize, n: u64) -> (Vec<u8>, Vec<Marker>) {
        let w = FrameWriter::new(proto, "chan", topics, size);
        let mut out = Vec::new();
        let mut want = Vec::new();
        let mut len = 0;
        for s in 1..=n {
            let j = (s % topics.channels as u64) as u32;
            let m = Marker {
                publisher: topics.stream((s % 3) as u32, j),
                seq: s,
                ts: 1_000_000_000_000 + s * 7,
            };
            assert!(w.push(&mut out, j, m.publisher, m.seq, m.ts));
            len += w.frame_len(j);
            assert!(w.frame_len(j) <= w.frame_len_max());
            want.push(m);
        }
        assert_eq!(out.len(), len);
        (out, want)
    }

    fn scan_chunks(data: &[u8], cut: usize) -> (Vec<Marker>, usize) {
        let mut sc = Scanner::default();
        let mut got = Vec::new();
        let mut bad = 0;
        for chunk in data.chunks(cut) {
            sc.feed(chunk, |e| match e {
                Event::Marker(m) => got.push(m),
                Event::Malformed => bad += 1,
            });
        }
        (got, bad)
    }

    #[test]
    fn payload_is_exact_size() {
        let w = FrameWriter::new(Proto::Ringfan, "c", Topics::single(1), 40);
        let mut out = Vec::new();
        assert!(w.push(&mut out, 0, 999, 9_999_999_999, 99_999_999_999_999_999));
        assert_eq!(out.len(), 40);
        assert_eq!(*out.last().unwrap(), b'\n');
        assert!(!w.push(&mut out, 0, 999, u64::MAX, u64::MAX));
    }

    fn topics(k: u32, t: u32, p: u32, n: u32) -> Topics {
        Topics::new(k, t, p, n)
    }

    /// With one channel the frames are byte for byte what they were before topics; with K the
    /// channel's name follows `<channel>.<j>`.
    #[test]
    fn frames_name_their_channel() {
        let one = Topics::single(1);
        let mut out = Vec::new();
        let w = FrameWriter::new(Proto::Redis, "chan", one, 40);
        assert!(w.push(&mut out, 0, 7, 12, 345));
        let pad = "x".repeat(40 - "@7:12:345;".len() - 1);
        let payload = format!("@7:12:345;{pad}\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("*3\r\n$7\r\nPUBLISH\r\n$4\r\nchan\r\n$40\r\n{payload}\r\n")
        );
        let mut out = Vec::new();
        let w = FrameWriter::new(Proto::Redis, "chan", topics(12, 1, 0, 1), 40);
        assert!(w.push(&mut out, 11, 7, 12, 345));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("*3\r\n$7\r\nPUBLISH\r\n$7\r\nchan.11\r\n$40\r\n{payload}\r\n")
        );
        assert_eq!(w.frame_len(11), w.frame_len_max());
        assert_eq!(w.frame_len(9) + 1, w.frame_len_max());
        let mut out = Vec::new();
        let w = FrameWriter::new(Proto::Nats, "chan", topics(12, 1, 0, 1), 40);
        assert!(w.push(&mut out, 3, 7, 12, 345));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("PUB chan.3 40\r\n{payload}\r\n")
        );
    }

    #[test]
    fn subscribe_commands_name_each_channel_and_pattern() {
        let one = Topics::single(3);
        assert_eq!(
            subscribe_command(Proto::Redis, "chan", &one, 2),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nchan\r\n"
        );
        assert!(subscribe_command(Proto::Ringfan, "chan", &one, 0).is_empty());
        let tp = topics(10, 3, 4, 3);
        // Subscriber 1: channels 3, 4, 5; patterns 1 (and 4 is past P).
        assert_eq!(
            String::from_utf8(subscribe_command(Proto::Redis, "c", &tp, 1)).unwrap(),
            "*4\r\n$9\r\nSUBSCRIBE\r\n$3\r\nc.3\r\n$3\r\nc.4\r\n$3\r\nc.5\r\n\
             *2\r\n$10\r\nPSUBSCRIBE\r\n$13\r\nc.nomatch.1.*\r\n"
        );
        // Subscriber 0 has two patterns (0 and 3) in one PSUBSCRIBE.
        let s0 = String::from_utf8(subscribe_command(Proto::Redis, "c", &tp, 0)).unwrap();
        assert!(s0.ends_with(
            "*3\r\n$10\r\nPSUBSCRIBE\r\n$13\r\nc.nomatch.0.*\r\n$13\r\nc.nomatch.3.*\r\n"
        ));
        assert_eq!(
            String::from_utf8(subscribe_command(Proto::Nats, "c", &topics(10, 2, 0, 3), 9))
                .unwrap(),
            "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nSUB c.8 1\r\nSUB c.9 2\r\nPING\r\n"
        );
    }

    #[test]
    fn every_split_point_every_protocol() {
        for (proto, tp) in [
            (Proto::Ringfan, Topics::single(1)),
            (Proto::Redis, Topics::single(1)),
            (Proto::Nats, Topics::single(1)),
            (Proto::Redis, topics(13, 1, 0, 1)),
            (Proto::Nats, topics(13, 1, 0, 1)),
        ] {
            let (data, want) = frames(proto, tp, 64, 50);
            for cut in 1..=data.len().min(200) {
                let (got, bad) = scan_chunks(&data, cut);
                assert_eq!(bad, 0, "{proto:?} cut {cut}");
                assert_eq!(got, want, "{proto:?} cut {cut}");
            }
        }
    }

    #[test]
    fn malformed_markers_are_counted_and_skipped() {
        let mut data = b"@1:2;@x:1:2;@1:2:3:4;@@5:6:7;".to_vec();
        data.extend_from_slice(b"@");
        data.extend_from_slice(&[b'1'; 100]);
        data.extend_from_slice(b";@0:1:2;@99999999999:1:2;");
        for cut in 1..data.len() {
            let (got, bad) = scan_chunks(&data, cut);
            assert_eq!(
                got,
                vec![
                    Marker {
                        publisher: 5,
                        seq: 6,
                        ts: 7
                    },
                    Marker {
                        publisher: 0,
                        seq: 1,
                        ts: 2
                    }
                ],
                "cut {cut}"
            );
            assert_eq!(bad, 6, "cut {cut}");
        }
    }

    #[test]
    fn handshakes() {
        let r = b"*3\r\n$9\r\nsubscribe\r\n$4\r\nchan\r\n:1\r\n*3\r\n$7";
        assert_eq!(handshake(Proto::Redis, &r[..30], 1), Handshake::WAITING);
        assert_eq!(handshake(Proto::Redis, r, 1), Handshake::Ready(33));
        assert!(matches!(
            handshake(Proto::Redis, b"-NOAUTH Authentication required.\r\n", 1),
            Handshake::Failed(_)
        ));
        let n = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG";
        assert_eq!(handshake(Proto::Nats, &n[..20], 1), Handshake::WAITING);
        assert_eq!(handshake(Proto::Nats, n, 1), Handshake::Ready(n.len() - 3));
        assert!(matches!(
            handshake(
                Proto::Nats,
                b"INFO {}\r\n-ERR 'Authorization Violation'\r\n",
                1
            ),
            Handshake::Failed(_)
        ));
        assert_eq!(handshake(Proto::Ringfan, b"", 1), Handshake::WAITING);
        assert_eq!(handshake(Proto::Ringfan, b"x", 1), Handshake::Ready(0));
    }

    /// Redis: every confirmation counts, channels and patterns alike, whatever arrives between
    /// them; a reply cut anywhere waits; what was complete can be dropped.
    #[test]
    fn redis_handshake_waits_for_every_confirmation() {
        let mut r = Vec::new();
        r.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$9\r\nsubscribe\r\n:1\r\n");
        // A message of an earlier run, with `subscribe` and `*3` in its payload.
        r.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$3\r\nc.1\r\n$15\r\n*3\r\nsubscribe\r\n\r\n");
        r.extend_from_slice(b"*3\r\n$9\r\nsubscribe\r\n$3\r\nc.1\r\n:2\r\n");
        let two = r.len();
        r.extend_from_slice(b"*3\r\n$10\r\npsubscribe\r\n$13\r\nc.nomatch.0.*\r\n:3\r\n");
        let end = r.len();
        r.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$3\r\nc.1\r\n$5\r\n@1:1;");
        assert_eq!(handshake(Proto::Redis, &r, 3), Handshake::Ready(end));
        assert_eq!(handshake(Proto::Redis, &r, 2), Handshake::Ready(two));
        assert_eq!(
            handshake(Proto::Redis, &r, 4),
            Handshake::Pending {
                consumed: end,
                confirmed: 3
            }
        );
        for cut in 0..end {
            let got = handshake(Proto::Redis, &r[..cut], 3);
            let Handshake::Pending {
                consumed,
                confirmed,
            } = got
            else {
                panic!("cut {cut}: {got:?}");
            };
            assert!(consumed <= cut);
            // Resuming from what was consumed needs the rest of the confirmations.
            assert_eq!(
                handshake(Proto::Redis, &r[consumed..], 3 - confirmed),
                Handshake::Ready(end - consumed),
                "cut {cut}"
            );
        }
        let err = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n-ERR too many patterns\r\n";
        assert_eq!(
            handshake(Proto::Redis, err, 2),
            Handshake::Failed("-ERR too many patterns".into())
        );
        assert!(matches!(
            handshake(Proto::Redis, b"HTTP/1.1 400 Bad Request\r\n", 1),
            Handshake::Failed(_)
        ));
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p ringfan-benches --bin ringfan-load -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn scanner_throughput() {
        let w = FrameWriter::new(Proto::Ringfan, "c", Topics::single(1), 64);
        let mut data = Vec::new();
        for s in 1..=256u64 {
            w.push(&mut data, 0, 0, 1_000_000 + s, 123_456_789_012_345);
        }
        let mut sc = Scanner::default();
        let mut n = 0u64;
        let t = std::time::Instant::now();
        for _ in 0..20_000 {
            sc.feed(&data, |e| {
                if let Event::Marker(m) = e {
                    n += m.seq & 1;
                }
            });
        }
        let el = t.elapsed();
        let msgs = 256.0 * 20_000.0;
        eprintln!(
            "{n}: {:.1} ns/msg, {:.0} MB/s",
            el.as_nanos() as f64 / msgs,
            data.len() as f64 * 20_000.0 / el.as_secs_f64() / 1e6
        );
    }
}
