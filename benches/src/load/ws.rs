//! WebSocket (RFC 6455) on the subscriber's side: the upgrade request, the check of the
//! server's `101`, and a decoder of the server's frames that hands data payloads to the marker
//! scanner.
//!
//! Why payloads and not raw bytes: a frame header is binary, and its length byte can be `@`
//! (0x40 = a 64-byte payload, as a 65-byte line becomes), which the marker scanner would take
//! for the start of a marker. Feeding it only the payloads keeps the scanner protocol-blind,
//! as the framing of the other protocols never contains `@`.
//!
//! The server's frames are unmasked (RFC 6455 5.1); a masked one, reserved bits or opcodes, or
//! a fragmented or oversized control frame is a protocol error: the decoder reports it once
//! and ignores the rest of that connection's bytes. Pings are answered with pongs, a close with
//! a close echoing its status code; the caller sends what [`Frames::replies`] holds.

use std::net::SocketAddr;

use memchr::memmem;

use super::wire::Handshake;

/// `Sec-WebSocket-Key` of every upgrade: the sample nonce of RFC 6455 1.3 ("the sample
/// nonce" in base64). A server cannot tell one key from another, and with the RFC's own example
/// the reply is checked against the RFC's own answer, [`ACCEPT`], with no SHA-1 here.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// The `Sec-WebSocket-Accept` RFC 6455 1.3 gives for [`KEY`].
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Bytes of a reply's head (status line and headers) past which the upgrade is declared failed.
const REPLY_HEAD_BYTES_MAX: usize = 16 << 10;

/// Appends `topic` percent-encoded for a request path: RFC 3986 unreserved bytes as they are,
/// every other byte as `%XX` (the server percent-decodes the path).
fn push_path(out: &mut Vec<u8>, topic: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in topic.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// The upgrade request of a subscriber of `topic` (`None`: the path `/`, the server's lines
/// topic) on the listener at `host`.
pub fn upgrade_request(host: &SocketAddr, topic: Option<&str>) -> Vec<u8> {
    let mut out = b"GET /".to_vec();
    if let Some(t) = topic {
        push_path(&mut out, t);
    }
    out.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    out
}

/// The server's answer to [`upgrade_request`], judged from the bytes received so far: ready
/// (frames start at the offset) once a complete `101` with the right `Sec-WebSocket-Accept`
/// has arrived; failed on any other status (its status line) or a wrong accept value.
pub fn upgrade_reply(seen: &[u8]) -> Handshake {
    let Some(end) = memmem::find(seen, b"\r\n\r\n") else {
        if seen.len() > REPLY_HEAD_BYTES_MAX {
            return Handshake::Failed(format!(
                "no end of the upgrade reply in its first {REPLY_HEAD_BYTES_MAX} bytes"
            ));
        }
        return Handshake::Pending {
            consumed: 0,
            confirmed: 0,
        };
    };
    let head = String::from_utf8_lossy(&seen[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut words = status.split(' ');
    if words.next() != Some("HTTP/1.1") || words.next() != Some("101") {
        return Handshake::Failed(format!("upgrade refused: {status}"));
    }
    let accept = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim())
    });
    if accept != Some(ACCEPT) {
        return Handshake::Failed(format!(
            "upgrade answered with Sec-WebSocket-Accept {accept:?}, expected {ACCEPT}"
        ));
    }
    Handshake::Ready(end + 4)
}

/// A frame's opcode (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Most payload bytes of a control frame (RFC 6455 5.5).
const CONTROL_PAYLOAD_MAX: u64 = 125;

/// One connection's frame decoder. The state between two reads is a partial header (up to 10
/// bytes), or the payload bytes left of the current frame: a frame split anywhere simply
/// continues in the next read, and data payloads are handed on in place, never copied.
#[derive(Clone, Debug, Default)]
pub struct Frames {
    /// Header bytes collected so far (2 to 10 make a header; the server never masks).
    head: [u8; 10],
    have: u8,
    /// Inside a frame's payload: its opcode and the bytes of it still to come.
    in_payload: bool,
    opcode: u8,
    left: u64,
    /// The current control frame's payload (at most 125 bytes).
    control: Vec<u8>,
    /// Frames to send back: pongs and the close echo, already masked.
    pub replies: Vec<u8>,
    /// Pongs in `replies`.
    pub pongs_queued: u64,
    /// Close frames received.
    pub closes: u64,
    /// The first protocol error (nothing is decoded after it).
    pub error: Option<&'static str>,
}

impl Frames {
    /// Decodes the next bytes of the stream, calling `payload` with each piece of a data
    /// frame's payload (in order; a frame's payload may come in several pieces). Returns false
    /// when a protocol error has been found (now or before).
    pub fn feed(&mut self, mut data: &[u8], mut payload: impl FnMut(&[u8])) -> bool {
        if self.error.is_some() {
            return false;
        }
        // Bounded: every turn consumes at least one byte or returns.
        while !data.is_empty() {
            if self.in_payload {
                let n = (self.left.min(data.len() as u64)) as usize;
                let (piece, rest) = data.split_at(n);
                if self.opcode & 0x8 == 0 {
                    payload(piece);
                } else {
                    self.control.extend_from_slice(piece);
                }
                self.left -= n as u64;
                data = rest;
                if self.left == 0 {
                    self.end_frame();
                }
                continue;
            }
            // The common case, one whole header of a small unfragmented data frame, read in
            // place: what take_header would conclude from it, without collecting it.
            // (0x81, 0x82: FIN, no RSV bits, text or binary; below 126: unmasked, 7-bit length.)
            if self.have == 0 && data.len() >= 2 && matches!(data[0], 0x81 | 0x82) && data[1] < 126
            {
                let len = data[1] as u64;
                (self.opcode, self.left, self.in_payload) = (data[0] & 0x0F, len, len > 0);
                data = &data[2..];
                continue;
            }
            let taken = self.take_header(data);
            data = &data[taken..];
            if self.error.is_some() {
                return false;
            }
        }
        self.error.is_none()
    }

    /// Header bytes this header needs in all, from what has been collected (at least 2).
    fn header_len(&self) -> usize {
        match self.head[1] & 0x7F {
            126 => 4,
            127 => 10,
            _ => 2,
        }
    }

    /// Takes header bytes from `data`; once the header is complete, checks it and enters its
    /// payload. Returns the bytes taken.
    fn take_header(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        if self.have < 2 {
            let n = (2 - self.have as usize).min(data.len());
            self.head[self.have as usize..self.have as usize + n].copy_from_slice(&data[..n]);
            self.have += n as u8;
            taken = n;
            if self.have < 2 {
                return taken;
            }
            if let Err(e) = self.check_first_two() {
                self.error = Some(e);
                return taken;
            }
        }
        let need = self.header_len();
        let n = (need - self.have as usize).min(data.len() - taken);
        let at = self.have as usize;
        self.head[at..at + n].copy_from_slice(&data[taken..taken + n]);
        self.have += n as u8;
        taken += n;
        if (self.have as usize) < need {
            return taken;
        }
        let len = match need {
            2 => (self.head[1] & 0x7F) as u64,
            4 => u16::from_be_bytes([self.head[2], self.head[3]]) as u64,
            _ => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
        };
        if len >> 63 != 0 {
            self.error = Some("a 64-bit payload length with its top bit set");
            return taken;
        }
        if self.opcode & 0x8 != 0 && len > CONTROL_PAYLOAD_MAX {
            self.error = Some("a control frame of more than 125 bytes");
            return taken;
        }
        self.have = 0;
        self.left = len;
        self.in_payload = true;
        self.control.clear();
        if len == 0 {
            self.end_frame();
        }
        taken
    }

    /// Checks FIN, RSV, opcode and MASK, and keeps the opcode.
    fn check_first_two(&mut self) -> Result<(), &'static str> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if b0 & 0x70 != 0 {
            return Err("reserved bits set (no extension was negotiated)");
        }
        let opcode = b0 & 0x0F;
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err("a reserved opcode");
        }
        if opcode & 0x8 != 0 && b0 & 0x80 == 0 {
            return Err("a fragmented control frame");
        }
        if b1 & 0x80 != 0 {
            return Err("a masked frame from the server");
        }
        self.opcode = opcode;
        Ok(())
    }

    /// The current frame's payload is complete: answer a ping or a close.
    fn end_frame(&mut self) {
        self.in_payload = false;
        match self.opcode {
            PING => {
                push_client_frame(&mut self.replies, PONG, &self.control);
                self.pongs_queued += 1;
            }
            CLOSE => {
                self.closes += 1;
                // Echo the status code (RFC 6455 5.5.1), without the reason.
                let code = &self.control[..self.control.len().min(2)];
                push_client_frame(&mut self.replies, CLOSE, code);
            }
            _ => {}
        }
    }
}

/// Appends a client frame (FIN, `opcode`, masked as RFC 6455 5.3 requires of clients) carrying
/// `payload` of at most 125 bytes. The masking key is zero, so the payload goes as it is: a
/// server unmasks with whatever key the frame names, and these frames carry nothing to hide.
fn push_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    debug_assert!(payload.len() as u64 <= CONTROL_PAYLOAD_MAX);
    out.extend_from_slice(&[0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::load::cli::Proto;
    use crate::load::topics::Topics;
    use crate::load::wire::{Event, FrameWriter, Marker, Scanner};

    /// A server frame (FIN, unmasked) of `opcode` around `payload`, with the shortest length
    /// encoding, as the server builds them.
    pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(n as u8),
            n @ 126..=65535 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `stream` in pieces of `cut` bytes; returns the data payloads joined, and the
    /// decoder.
    fn decode(stream: &[u8], cut: usize) -> (Vec<u8>, Frames) {
        let mut fr = Frames::default();
        let mut out = Vec::new();
        for piece in stream.chunks(cut) {
            fr.feed(piece, |p| out.extend_from_slice(p));
        }
        (out, fr)
    }

    /// Payload lengths at every boundary of the length encoding (7-bit, 16-bit, 64-bit),
    /// ones whose length byte is `@` (64) or holds 0x40 in its 16-bit form (320 = 0x0140,
    /// 16448 = 0x4040), and pings and a close between them: the joined payloads and the
    /// replies are the same wherever the stream is cut.
    #[test]
    fn frames_split_anywhere_give_the_same_payloads_and_replies() {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        let mut n = 0u8;
        let lens = [
            0usize, 1, 63, 64, 125, 126, 127, 320, 16448, 65535, 65536, 70000,
        ];
        for (i, &len) in lens.iter().enumerate() {
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            let opcode = if i % 2 == 0 { TEXT } else { BINARY };
            stream.extend_from_slice(&server_frame(opcode, &payload));
            want.extend_from_slice(&payload);
            if i % 3 == 1 {
                stream.extend_from_slice(&server_frame(PING, format!("p{i}").as_bytes()));
            }
        }
        stream.extend_from_slice(&server_frame(PING, b""));
        stream.extend_from_slice(&server_frame(CLOSE, b"\x03\xe8bye"));
        let mut replies = Vec::new();
        for i in (0..lens.len()).filter(|i| i % 3 == 1) {
            push_client_frame(&mut replies, PONG, format!("p{i}").as_bytes());
        }
        push_client_frame(&mut replies, PONG, b"");
        push_client_frame(&mut replies, CLOSE, b"\x03\xe8");
        assert_eq!(&replies[..8], b"\x8a\x82\0\0\0\0p1");
        // Every cut up to a few frame headers long, then some larger ones.
        for cut in (1..=40).chain([61, 64, 127, 1000, 4096, 65536, stream.len()]) {
            let (got, fr) = decode(&stream, cut);
            assert_eq!(fr.error, None, "cut {cut}");
            assert!(got == want, "cut {cut}: payloads differ");
            assert_eq!(fr.replies, replies, "cut {cut}");
            assert_eq!((fr.pongs_queued, fr.closes), (5, 1), "cut {cut}");
        }
    }

    /// A 65-byte line arrives as a 64-byte payload whose frame header's length byte is `@`:
    /// scanning the raw bytes finds malformed markers, scanning the decoded payloads finds
    /// every marker, wherever the reads are cut.
    #[test]
    fn markers_are_found_in_payloads_not_in_headers() {
        let w = FrameWriter::new(Proto::Ws, "c", Topics::single(1), 65);
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for s in 1..=40u64 {
            let mut line = Vec::new();
            assert!(w.push(&mut line, 0, 2, s, 1_000 + s));
            assert_eq!(line.pop(), Some(b'\n'));
            let frame = server_frame(TEXT, &line);
            assert_eq!(&frame[..2], b"\x81@");
            stream.extend_from_slice(&frame);
            want.push(Marker {
                publisher: 2,
                seq: s,
                ts: 1_000 + s,
            });
        }
        let mut raw_bad = 0;
        Scanner::default().feed(&stream, |e| raw_bad += u32::from(e == Event::Malformed));
        assert!(raw_bad > 0, "the raw stream must trip the scanner");
        for cut in 1..=150 {
            let (mut fr, mut sc) = (Frames::default(), Scanner::default());
            let (mut got, mut bad) = (Vec::new(), 0);
            for piece in stream.chunks(cut) {
                fr.feed(piece, |p| {
                    sc.feed(p, |e| match e {
                        Event::Marker(m) => got.push(m),
                        Event::Malformed => bad += 1,
                    })
                });
            }
            assert_eq!((bad, &got), (0, &want), "cut {cut}");
        }
    }

    #[test]
    fn protocol_errors_stop_the_decoder() {
        for (bytes, says) in [
            (&b"\x81\x85\0\0\0\0hello"[..], "masked"),
            (&b"\xc1\x01x"[..], "reserved bits"),
            (&b"\x83\x01x"[..], "reserved opcode"),
            (&b"\x09\x00"[..], "fragmented control"),
            (&b"\x89\x7e\x00\x7e"[..], "125 bytes"),
            (&b"\x82\x7f\x80\0\0\0\0\0\0\0"[..], "top bit"),
        ] {
            for cut in 1..=bytes.len() {
                let (got, fr) = decode(bytes, cut);
                let e = fr.error.unwrap_or_else(|| panic!("{bytes:?} cut {cut}"));
                assert!(e.contains(says), "{bytes:?}: {e}");
                assert!(got.is_empty(), "{bytes:?}");
            }
        }
        // Nothing after the error is decoded.
        let mut fr = Frames::default();
        assert!(!fr.feed(b"\x81\x85", |_| {}));
        assert!(!fr.feed(&server_frame(TEXT, b"later"), |_| panic!("decoded")));
    }

    #[test]
    fn upgrade_request_names_the_topic_percent_encoded() {
        let host: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let r = String::from_utf8(upgrade_request(&host, None)).unwrap();
        assert_eq!(
            r,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let r = String::from_utf8(upgrade_request(&host, Some("news/a%b?c#d.e_f~g"))).unwrap();
        assert!(
            r.starts_with("GET /news%2Fa%25b%3Fc%23d.e_f~g HTTP/1.1\r\n"),
            "{r}"
        );
    }

    #[test]
    fn upgrade_reply_needs_101_and_the_right_accept() {
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             sec-websocket-accept:  {ACCEPT}\r\n\r\n"
        );
        let mut seen = ok.clone().into_bytes();
        seen.extend_from_slice(&server_frame(TEXT, b"@1:1:1;"));
        for cut in 0..ok.len() {
            assert_eq!(
                upgrade_reply(&seen[..cut]),
                Handshake::Pending {
                    consumed: 0,
                    confirmed: 0
                },
                "cut {cut}"
            );
        }
        assert_eq!(upgrade_reply(&seen), Handshake::Ready(ok.len()));
        assert_eq!(
            upgrade_reply(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n"),
            Handshake::Failed("upgrade refused: HTTP/1.1 426 Upgrade Required".into())
        );
        let wrong = ok.replace(ACCEPT, "x3JJHMbDL1EzLkh9GBhXDw==");
        assert!(matches!(
            upgrade_reply(wrong.as_bytes()),
            Handshake::Failed(e) if e.contains("Sec-WebSocket-Accept")
        ));
        assert!(matches!(
            upgrade_reply(&vec![b'x'; REPLY_HEAD_BYTES_MAX + 1]),
            Handshake::Failed(_)
        ));
    }
}

#[cfg(test)]
mod speed {
    use super::tests::server_frame;
    use super::*;
    use crate::load::cli::Proto;
    use crate::load::topics::Topics;
    use crate::load::wire::{Event, FrameWriter, Scanner};

    /// The WebSocket receive path's cost per 64-byte line (frame decoding and marker scanning),
    /// beside the scanner alone on the same lines:
    /// `cargo test --release -p ringfan-benches --bin ringfan-load -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn frames_and_scanner_throughput() {
        let w = FrameWriter::new(Proto::Ws, "c", Topics::single(1), 64);
        let (mut lines, mut frames) = (Vec::new(), Vec::new());
        for s in 1..=256u64 {
            let mut line = Vec::new();
            w.push(&mut line, 0, 0, 1_000_000 + s, 123_456_789_012_345);
            lines.extend_from_slice(&line);
            line.pop();
            frames.extend_from_slice(&server_frame(0x1, &line));
        }
        let rounds = 20_000u64;
        let mut n = 0u64;
        let mut sc = Scanner::default();
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            sc.feed(&lines, |e| n += u64::from(matches!(e, Event::Marker(_))));
        }
        let plain = t.elapsed();
        let mut fr = Frames::default();
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            fr.feed(&frames, |p| {
                sc.feed(p, |e| n += u64::from(matches!(e, Event::Marker(_))))
            });
        }
        let ws = t.elapsed();
        assert_eq!(n, 2 * rounds * 256);
        let per = |d: std::time::Duration| d.as_nanos() as f64 / (rounds * 256) as f64;
        eprintln!(
            "lines {:.1} ns/msg, ws frames {:.1} ns/msg",
            per(plain),
            per(ws)
        );
    }
}
