//! The opening handshake (RFC 6455 4.2), server side: an HTTP/1.1 `GET /<topic>` with
//! `Upgrade: websocket`, answered `101 Switching Protocols` or refused with a fixed response.
//!
//! The request is collected until its empty line, at most `header_bytes_max` bytes, and parsed
//! once by `httparse` (a request split into a thousand one-byte reads is scanned once, not a
//! thousand times). The checks, in order, each with its refusal:
//!
//! | check | refusal |
//! | --- | --- |
//! | the request and its headers fit in `header_bytes_max`, at most [`HEADERS_MAX`] headers | 431 |
//! | it is HTTP | 400 |
//! | the method is `GET` | 405 with `Allow: GET` |
//! | the version is HTTP/1.1 | 400 |
//! | the target is a path (`/...`) | 400 |
//! | a `Host` header | 400 |
//! | `Upgrade` lists `websocket` and `Connection` lists `upgrade` (any case) | 426 |
//! | one `Sec-WebSocket-Version`, and it is `13` | 426 with `Sec-WebSocket-Version: 13` |
//! | one `Sec-WebSocket-Key`, the base64 of 16 bytes | 400 |
//!
//! Extensions (`permessage-deflate`) and subprotocols offered are not taken up: the response
//! names none, which RFC 6455 4.2.2 allows. `Origin` is not checked: what the server sends
//! is public to anyone who can reach it.

use bytes::Bytes;
use sha1::{Digest, Sha1};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// The most header lines a request may have; more is refused with 431. Browsers send about 15.
pub const HEADERS_MAX: usize = 64;

/// The GUID RFC 6455 4.2.2 appends to the client's key before hashing it.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Collects and checks one upgrade request.
#[derive(Debug)]
pub struct Handshake {
    header_bytes_max: usize,
    lines_topic: Bytes,
    /// The request so far: never more than `header_bytes_max` bytes.
    request: Vec<u8>,
    /// Set once a status other than `Partial` was returned; later input is ignored.
    done: bool,
}

/// What [`Handshake::feed`] concluded.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeStatus {
    /// The request is not complete yet.
    Partial,
    Accepted(Accepted),
    Refused(Refusal),
}

/// An upgrade to carry out.
#[derive(Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The topic the path names: percent-decoded, without the leading `/`; `/` alone names the
    /// lines topic given to [`Handshake::new`]. A query string (`?...`) is ignored.
    pub topic: Bytes,
    /// The `101 Switching Protocols` response to send.
    pub response: Bytes,
    /// Bytes that followed the request in the input: already WebSocket frames.
    pub rest: Bytes,
}

/// A refused request: send `response`, then close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status code, e.g. 426.
    pub status: u16,
    /// The complete HTTP response: status line, headers, and a one-line plain-text body that says
    /// what was wrong and what is accepted.
    pub response: Bytes,
}

impl Handshake {
    /// `header_bytes_max`: the longest request accepted, request line and headers included (e.g.
    /// 8192); `lines_topic`: the topic the path `/` subscribes to.
    pub fn new(header_bytes_max: usize, lines_topic: Bytes) -> Self {
        Handshake {
            header_bytes_max,
            lines_topic,
            request: Vec::new(),
            done: false,
        }
    }

    /// Bytes of an incomplete request held, at most `header_bytes_max`.
    pub fn buffered_bytes(&self) -> usize {
        self.request.len()
    }

    /// Feeds the next input. After it returned `Accepted` or `Refused`, more input is ignored
    /// (`Partial`).
    pub fn feed(&mut self, input: &[u8]) -> HandshakeStatus {
        if self.done {
            return HandshakeStatus::Partial;
        }
        let held = self.request.len();
        let take = input.len().min(self.header_bytes_max - held);
        self.request.extend_from_slice(&input[..take]);
        let Some(end) = end_of_headers(&self.request, held) else {
            if self.request.len() >= self.header_bytes_max {
                return self.finish(HandshakeStatus::Refused(too_large(self.header_bytes_max)));
            }
            return HandshakeStatus::Partial;
        };
        let status = match self.check(&self.request[..end]) {
            Ok((topic, response)) => {
                let mut rest = self.request[end..].to_vec();
                rest.extend_from_slice(&input[take..]);
                HandshakeStatus::Accepted(Accepted {
                    topic,
                    response,
                    rest: Bytes::from(rest),
                })
            }
            Err(refusal) => HandshakeStatus::Refused(refusal),
        };
        self.finish(status)
    }

    fn finish(&mut self, status: HandshakeStatus) -> HandshakeStatus {
        self.done = true;
        self.request = Vec::new();
        status
    }

    /// The checks of the module's table, in its order.
    fn check(&self, head: &[u8]) -> Result<(Bytes, Bytes), Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(refusal(
                    431,
                    &format!("a WebSocket upgrade request may have at most {HEADERS_MAX} headers"),
                ))
            }
            // A block that ends in an empty line but httparse finds incomplete is not HTTP.
            Ok(httparse::Status::Partial) | Err(_) => {
                return Err(refusal(400, "not an HTTP request"))
            }
        }
        if req.method != Some("GET") {
            return Err(refusal(405, "a WebSocket upgrade must be a GET"));
        }
        if req.version != Some(1) {
            return Err(refusal(400, "a WebSocket upgrade must be HTTP/1.1"));
        }
        let topic = self.topic(req.path.unwrap_or(""))?;
        let headers = req.headers;
        if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
            return Err(refusal(400, "the Host header is missing"));
        }
        if !lists_token(headers, "upgrade", "websocket")
            || !lists_token(headers, "connection", "upgrade")
        {
            return Err(refusal(
                426,
                "this is a WebSocket endpoint: send Upgrade: websocket and Connection: Upgrade",
            ));
        }
        if only_value(headers, "sec-websocket-version").map(trim) != Some(&b"13"[..]) {
            return Err(refusal(426, "Sec-WebSocket-Version must be 13"));
        }
        let key = only_value(headers, "sec-websocket-key").map(trim);
        let key = key.filter(|k| BASE64.decode(k).is_ok_and(|raw| raw.len() == 16));
        let Some(key) = key else {
            return Err(refusal(
                400,
                "Sec-WebSocket-Key must be the base64 of 16 bytes, once",
            ));
        };
        Ok((topic, switching_protocols(key)))
    }

    /// The topic a request target names; `/` alone is the lines topic.
    fn topic(&self, target: &str) -> Result<Bytes, Refusal> {
        let Some(path) = target.strip_prefix('/') else {
            return Err(refusal(400, "the request target must be a path: /<topic>"));
        };
        let path = path.split_once('?').map_or(path, |(p, _query)| p);
        if path.is_empty() {
            return Ok(self.lines_topic.clone());
        }
        // Lenient as browsers are: a `%` not followed by two hex digits stands for itself.
        let topic: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
        Ok(Bytes::from(topic))
    }
}

/// The value of `Sec-WebSocket-Accept` for the client's `Sec-WebSocket-Key` (RFC 6455 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    BASE64.encode(sha1.finalize())
}

impl Refusal {
    /// The answer to a client that did not complete its request in the caller's time limit
    /// (slowloris).
    pub fn timeout() -> Refusal {
        refusal(
            408,
            "the WebSocket upgrade request was not completed in time",
        )
    }
}

fn switching_protocols(key: &[u8]) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\
         \r\n",
        accept_key(key)
    ))
}

fn too_large(header_bytes_max: usize) -> Refusal {
    refusal(
        431,
        &format!(
            "a WebSocket upgrade request may have at most {header_bytes_max} bytes of headers"
        ),
    )
}

/// The complete response for a refusal: the connection is closed after it.
fn refusal(status: u16, why: &str) -> Refusal {
    let (reason, extra) = match status {
        400 => ("Bad Request", ""),
        405 => ("Method Not Allowed", "Allow: GET\r\n"),
        408 => ("Request Timeout", ""),
        // RFC 9110 15.5.22: a 426 names the protocol to upgrade to, and RFC 6455 4.4 the version.
        426 => (
            "Upgrade Required",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        ),
        431 => ("Request Header Fields Too Large", ""),
        _ => unreachable!("no refusal with status {status}"),
    };
    let connection = if status == 426 {
        "Upgrade, close"
    } else {
        "close"
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         {extra}\
         Connection: {connection}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         \r\n\
         {why}\n",
        why.len() + 1
    );
    Refusal {
        status,
        response: Bytes::from(response),
    }
}

/// Where the headers end: just past the first empty line (CRLF CRLF, or bare LF LF as RFC 9112
/// 2.2 lets a recipient accept). Scanning restarts a few bytes before `scanned_to`, so a
/// request arriving one byte at a time is scanned once.
fn end_of_headers(request: &[u8], scanned_to: usize) -> Option<usize> {
    let from = scanned_to.saturating_sub(3);
    memchr::memchr_iter(b'\n', &request[from..])
        .map(|i| from + i)
        .find(|&nl| {
            (nl >= 1 && request[nl - 1] == b'\n')
                || (nl >= 2 && request[nl - 1] == b'\r' && request[nl - 2] == b'\n')
        })
        .map(|nl| nl + 1)
}

/// Whether some header `name` holds `token` in its comma-separated list, ignoring case.
fn lists_token(headers: &[httparse::Header], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

/// The value of header `name` if it appears exactly once.
fn only_value<'a>(headers: &[httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    match (found.next(), found.next()) {
        (Some(h), None) => Some(h.value),
        _ => None,
    }
}

fn trim(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: &[u8] = b"lines";

    fn request(extra: &str) -> String {
        format!(
            "GET /news HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn feed(input: &[u8]) -> HandshakeStatus {
        Handshake::new(8192, Bytes::from_static(LINES)).feed(input)
    }

    fn refused(input: &[u8]) -> Refusal {
        match feed(input) {
            HandshakeStatus::Refused(r) => {
                assert_content_length(&r);
                r
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// A client reads exactly the body its Content-Length announces.
    fn assert_content_length(r: &Refusal) {
        let text = std::str::from_utf8(&r.response).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap();
        assert_eq!(len.trim().parse::<usize>().unwrap(), body.len(), "{text}");
        assert!(head.starts_with(&format!("HTTP/1.1 {} ", r.status)));
    }

    #[test]
    fn rfc_sample_key_gives_the_rfc_accept() {
        // RFC 6455 1.3's example.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn accepted_response_is_exact() {
        let HandshakeStatus::Accepted(a) = feed(request("").as_bytes()) else {
            panic!("not accepted")
        };
        assert_eq!(&a.topic[..], b"news");
        assert_eq!(
            &a.response[..],
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        assert!(a.rest.is_empty());
    }

    #[test]
    fn refusals_are_exact() {
        let r = refused(request("").replace("Version: 13", "Version: 8").as_bytes());
        assert_eq!(
            std::str::from_utf8(&r.response).unwrap(),
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Connection: Upgrade, close\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 33\r\n\r\nSec-WebSocket-Version must be 13\n"
        );
        let r = refused(request("").replace("GET", "POST").as_bytes());
        assert_eq!(
            std::str::from_utf8(&r.response).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 34\r\n\r\n\
             a WebSocket upgrade must be a GET\n"
        );
        let r = refused(request("").replace("Host: x\r\n", "").as_bytes());
        assert_eq!(
            std::str::from_utf8(&r.response).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 27\r\n\r\n\
             the Host header is missing\n"
        );
        let HandshakeStatus::Refused(r) = Handshake::new(16, Bytes::new()).feed(&[b'G'; 16]) else {
            panic!("not refused")
        };
        assert_eq!(
            std::str::from_utf8(&r.response).unwrap(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 65\r\n\r\n\
             a WebSocket upgrade request may have at most 16 bytes of headers\n"
        );
        let r = Refusal::timeout();
        assert_content_length(&r);
        assert_eq!(
            std::str::from_utf8(&r.response).unwrap(),
            "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 56\r\n\r\n\
             the WebSocket upgrade request was not completed in time\n"
        );
    }

    #[test]
    fn each_check_has_its_status() {
        let base = request("");
        let cases: &[(&str, &str, u16)] = &[
            ("GET /news HTTP/1.1", "GET /news HTTP/1.0", 400),
            ("GET /news HTTP/1.1", "GET news HTTP/1.1", 400),
            ("GET /news HTTP/1.1", "HEAD /news HTTP/1.1", 405),
            ("Host: x\r\n", "", 400),
            ("Upgrade: websocket\r\n", "", 426),
            ("Upgrade: websocket", "Upgrade: h2c", 426),
            ("Connection: Upgrade", "Connection: keep-alive", 426),
            ("Sec-WebSocket-Version: 13\r\n", "", 426),
            (
                "Sec-WebSocket-Version: 13",
                "Sec-WebSocket-Version: 13, 8",
                426,
            ),
            ("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==", 400),
            ("dGhlIHNhbXBsZSBub25jZQ==", "not base64!", 400),
            ("GET /news HTTP/1.1", "GET /news HTTP/1.1 junk", 400),
        ];
        for &(from, to, status) in cases {
            let req = base.replacen(from, to, 1);
            assert_ne!(req, base, "{from} not in the request");
            assert_eq!(refused(req.as_bytes()).status, status, "{from} -> {to}");
        }
        let twice = request("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n");
        assert_eq!(refused(twice.as_bytes()).status, 400);
    }

    #[test]
    fn token_lists_and_case_are_accepted_extensions_ignored() {
        let req =
            request("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n")
                .replace("Upgrade: websocket", "upgrade: WebSocket")
                .replace("Connection: Upgrade", "Connection: keep-alive, UPGRADE")
                .replace("GET /news", "GET /");
        let HandshakeStatus::Accepted(a) = feed(req.as_bytes()) else {
            panic!("not accepted")
        };
        assert_eq!(&a.topic[..], LINES, "/ is the lines topic");
        assert!(!a.response.windows(9).any(|w| w == b"Extension"));
    }

    #[test]
    fn path_is_percent_decoded_query_dropped() {
        for (path, topic) in [
            ("/a%20b", &b"a b"[..]),
            ("/x%2Fy/z", b"x/y/z"),
            ("/%FF%00", b"\xFF\x00"),
            ("/news?since=3", b"news"),
            ("/?t=1", LINES),
            ("/%zz", b"%zz"),
        ] {
            let req = request("").replace("GET /news", &format!("GET {path}"));
            let HandshakeStatus::Accepted(a) = feed(req.as_bytes()) else {
                panic!("{path} not accepted")
            };
            assert_eq!(&a.topic[..], topic, "{path}");
        }
    }

    #[test]
    fn header_size_limit_counts_the_request_line_and_headers() {
        let req = request("");
        let exact = req.len();
        let mut h = Handshake::new(exact, Bytes::from_static(LINES));
        assert!(matches!(
            h.feed(req.as_bytes()),
            HandshakeStatus::Accepted(_)
        ));
        let mut h = Handshake::new(exact - 1, Bytes::from_static(LINES));
        let HandshakeStatus::Refused(r) = h.feed(req.as_bytes()) else {
            panic!("not refused")
        };
        assert_eq!(r.status, 431);
        // Without an end in sight, refused as soon as the limit is reached, holding no more.
        let mut h = Handshake::new(100, Bytes::from_static(LINES));
        assert_eq!(h.feed(&[b'a'; 99]), HandshakeStatus::Partial);
        assert_eq!(h.buffered_bytes(), 99);
        assert!(matches!(h.feed(b"aaaa"), HandshakeStatus::Refused(r) if r.status == 431));
        assert_eq!(h.buffered_bytes(), 0);
        assert_eq!(h.feed(b"GET"), HandshakeStatus::Partial, "spent");
        let many: String = (0..HEADERS_MAX).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(refused(request(&many).as_bytes()).status, 431);
    }

    #[test]
    fn byte_at_a_time_and_pipelined_frames() {
        let mut input = request("").into_bytes();
        input.extend_from_slice(b"\x81\x80abcd");
        let mut h = Handshake::new(8192, Bytes::from_static(LINES));
        let mut last = HandshakeStatus::Partial;
        for (i, b) in input.iter().enumerate() {
            last = h.feed(std::slice::from_ref(b));
            if last != HandshakeStatus::Partial {
                assert_eq!(i, request("").len() - 1, "accepted at the empty line");
                break;
            }
        }
        assert!(matches!(last, HandshakeStatus::Accepted(_)));
        let HandshakeStatus::Accepted(a) = feed(&input) else {
            panic!("not accepted")
        };
        assert_eq!(&a.rest[..], b"\x81\x80abcd");
    }

    #[test]
    fn bare_lf_line_ends_are_accepted() {
        let req = request("").replace("\r\n", "\n");
        assert!(matches!(feed(req.as_bytes()), HandshakeStatus::Accepted(_)));
    }
}
