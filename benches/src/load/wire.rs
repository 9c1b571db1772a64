//! What goes on the wire: message payloads, protocol framing, subscription handshakes, and the
//! marker scanner the subscribers run over the received byte stream.
//!
//! Payload (same for every protocol): `@<publisher>:<seq>:<send_ts_ns>;` then `x` padding up to
//! S-1 bytes, then `\n`. The framing bytes of RESP and NATS never contain `@`, so one scanner
//! that looks for `@…;` works for all three protocols.

use memchr::memmem;

use super::cli::Proto;

/// Writes `v` in decimal into `out`, returns the bytes used.
#[inline]
fn fmt_u64(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = 20;
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

/// Builds publisher frames: protocol prefix + payload of exactly `size` bytes + suffix.
pub struct FrameWriter {
    prefix: Vec<u8>,
    suffix: &'static [u8],
    size: usize,
    padding: Vec<u8>,
}

impl FrameWriter {
    pub fn new(proto: Proto, channel: &str, size: usize) -> Self {
        let (prefix, suffix): (Vec<u8>, &'static [u8]) = match proto {
            Proto::Ringfan => (Vec::new(), b""),
            Proto::Redis => (
                format!(
                    "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n",
                    channel.len(),
                    channel,
                    size
                )
                .into_bytes(),
                b"\r\n",
            ),
            Proto::Nats => (format!("PUB {channel} {size}\r\n").into_bytes(), b"\r\n"),
        };
        FrameWriter {
            prefix,
            suffix,
            size,
            padding: vec![b'x'; size],
        }
    }

    /// Bytes of one frame on the wire (constant for a run).
    pub fn frame_len(&self) -> usize {
        self.prefix.len() + self.size + self.suffix.len()
    }

    /// Appends one frame; `false` (nothing appended) if the marker does not fit in `size`.
    #[inline]
    pub fn push(&self, out: &mut Vec<u8>, publisher: u32, seq: u64, ts: u64) -> bool {
        let (mut a, mut b, mut c) = ([0u8; 20], [0u8; 20], [0u8; 20]);
        let p = fmt_u64(publisher as u64, &mut a);
        let s = fmt_u64(seq, &mut b);
        let t = fmt_u64(ts, &mut c);
        let marker = 1 + p.len() + 1 + s.len() + 1 + t.len() + 1;
        if marker + 1 > self.size {
            return false;
        }
        out.extend_from_slice(&self.prefix);
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

/// Bytes a subscriber sends right after connecting.
pub fn subscribe_command(proto: Proto, channel: &str) -> Vec<u8> {
    match proto {
        Proto::Ringfan => Vec::new(),
        Proto::Redis => format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{}\r\n",
            channel.len(),
            channel
        )
        .into_bytes(),
        Proto::Nats => format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {channel} 1\r\nPING\r\n"
        )
        .into_bytes(),
    }
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
    Pending,
    /// Confirmed; message data starts at this offset of the bytes seen.
    Ready(usize),
    /// The server answered with an error (the first line of it).
    Failed(String),
}

/// ringfan: any byte received means the subscription exists (the loader sends sync lines).
/// redis: the `subscribe` confirmation (`…subscribe\r\n$n\r\nchan\r\n:count\r\n`).
/// NATS: the `PONG` answering the `PING` sent after `SUB`.
pub fn handshake(proto: Proto, seen: &[u8]) -> Handshake {
    let error_line = |seen: &[u8]| -> Option<String> {
        let start = if seen.starts_with(b"-") {
            0
        } else {
            memmem::find(seen, b"\r\n-")? + 2
        };
        let end = memmem::find(&seen[start..], b"\r\n")? + start;
        Some(String::from_utf8_lossy(&seen[start..end]).into_owned())
    };
    match proto {
        Proto::Ringfan => {
            if seen.is_empty() {
                Handshake::Pending
            } else {
                Handshake::Ready(0)
            }
        }
        Proto::Redis => {
            if let Some(e) = error_line(seen) {
                return Handshake::Failed(e);
            }
            let Some(s) = memmem::find(seen, b"subscribe\r\n") else {
                return Handshake::Pending;
            };
            let Some(colon) = memmem::find(&seen[s..], b"\r\n:") else {
                return Handshake::Pending;
            };
            let from = s + colon + 3;
            match memmem::find(&seen[from..], b"\r\n") {
                Some(e) => Handshake::Ready(from + e + 2),
                None => Handshake::Pending,
            }
        }
        Proto::Nats => {
            if let Some(e) = error_line(seen) {
                return Handshake::Failed(e);
            }
            match memmem::find(seen, b"PONG\r\n") {
                Some(i) => Handshake::Ready(i + 6),
                None => Handshake::Pending,
            }
        }
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

    fn frames(proto: Proto, size: usize, n: u64) -> (Vec<u8>, Vec<Marker>) {
        let w = FrameWriter::new(proto, "chan", size);
        let mut out = Vec::new();
        let mut want = Vec::new();
        for s in 1..=n {
            let m = Marker {
                publisher: (s % 3) as u32,
                seq: s,
                ts: 1_000_000_000_000 + s * 7,
            };
            assert!(w.push(&mut out, m.publisher, m.seq, m.ts));
            want.push(m);
        }
        assert_eq!(out.len(), w.frame_len() * n as usize);
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
        let w = FrameWriter::new(Proto::Ringfan, "c", 40);
        let mut out = Vec::new();
        assert!(w.push(&mut out, 999, 9_999_999_999, 99_999_999_999_999_999));
        assert_eq!(out.len(), 40);
        assert_eq!(*out.last().unwrap(), b'\n');
        assert!(!w.push(&mut out, 999, u64::MAX, u64::MAX));
    }

    #[test]
    fn every_split_point_every_protocol() {
        for proto in [Proto::Ringfan, Proto::Redis, Proto::Nats] {
            let (data, want) = frames(proto, 64, 50);
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
        assert_eq!(handshake(Proto::Redis, &r[..30]), Handshake::Pending);
        assert_eq!(handshake(Proto::Redis, r), Handshake::Ready(33));
        assert!(matches!(
            handshake(Proto::Redis, b"-NOAUTH Authentication required.\r\n"),
            Handshake::Failed(_)
        ));
        let n = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG";
        assert_eq!(handshake(Proto::Nats, &n[..20]), Handshake::Pending);
        assert_eq!(handshake(Proto::Nats, n), Handshake::Ready(n.len() - 3));
        assert!(matches!(
            handshake(
                Proto::Nats,
                b"INFO {}\r\n-ERR 'Authorization Violation'\r\n"
            ),
            Handshake::Failed(_)
        ));
        assert_eq!(handshake(Proto::Ringfan, b""), Handshake::Pending);
        assert_eq!(handshake(Proto::Ringfan, b"x"), Handshake::Ready(0));
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p ringfan-benches --bin ringfan-load -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn scanner_throughput() {
        let w = FrameWriter::new(Proto::Ringfan, "c", 64);
        let mut data = Vec::new();
        for s in 1..=256u64 {
            w.push(&mut data, 0, 1_000_000 + s, 123_456_789_012_345);
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
