//! WebSocket (RFC 6455), server side, without extensions, sans-IO.
//!
//! - [`Handshake`]: the HTTP/1.1 upgrade request, parsed incrementally with a header size limit,
//!   answered with the exact bytes of a `101 Switching Protocols` or of a refusal.
//! - [`Decoder`]: client-to-server frames, checked as they arrive (masking, RSV bits, opcodes,
//!   lengths, control frame rules, fragmentation, UTF-8 of text failing fast) and reassembled
//!   into whole messages with control frames interleaved.
//! - [`message_frame`], [`close_frame`], [`ping_frame`], [`pong_frame`]: server-to-client frames,
//!   unmasked, built once. One [`message_frame`] is meant to be shared by every subscriber.
//! - [`WsConn`]: one connection's protocol state (handshake, open, closing, closed), turning input
//!   into [`Action`]s for the server to carry out.
//!
//! Nothing here reads a clock or a socket: deadlines (a slow handshake, a missing pong, a peer
//! that never answers a close) are the caller's, which is told what state the connection is in.

mod conn;
mod decode;
mod handshake;

pub use conn::{Action, Phase, WsConfig, WsConn};
pub use decode::{CloseFrame, Decoder, Event, Failure, Message};
pub use handshake::{accept_key, Accepted, Handshake, HandshakeStatus, Refusal, HEADERS_MAX};

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's opcode (RFC 6455 5.2). The other values (3-7, 11-15) are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    /// The opcode of the low four bits of a frame's first byte, `None` if reserved.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        match bits & 0x0F {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    /// Close, ping and pong: at most 125 bytes of payload, never fragmented.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The close status codes this crate sends (RFC 6455 7.4.1, and 1013 from the IANA registry).
pub mod close_code {
    /// The close handshake of a connection that ends normally.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke RFC 6455 (masking, RSV bits, opcode, control frame rules, fragmentation).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message, or a close reason, that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client did what the server's configuration forbids (publishing when it is off), or
    /// could not keep up.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message longer than the configured limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server is overloaded; the client may come back later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The largest payload of a close, ping or pong frame (RFC 6455 5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Whether a peer may send `code` in a close frame (RFC 6455 7.4): the codes defined for use in
/// frames (1000-1003, 1007-1011), those registered with IANA since (1012-1014), and the ranges
/// left to libraries and applications (3000-4999). 1004-1006 and 1015 must never be sent; the
/// rest is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One frame's bytes, FIN set, unmasked (a server never masks, RFC 6455 5.1).
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(header_bytes(len) + len);
    out.put_u8(0x80 | opcode as u8);
    // The minimal length encoding, as RFC 6455 5.2 requires of senders.
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// The header length of an unmasked frame with `payload_bytes` of payload.
pub fn header_bytes(payload_bytes: usize) -> usize {
    match payload_bytes {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

/// A message as one frame: text if `payload` is UTF-8 (what a browser shows as a string), else
/// binary (a `Blob` or `ArrayBuffer` there, so no byte is lost to a replacement character). Built
/// once per message: the same `Bytes` goes to every WebSocket subscriber.
pub fn message_frame(payload: &[u8]) -> Bytes {
    let opcode = if std::str::from_utf8(payload).is_ok() {
        Opcode::Text
    } else {
        Opcode::Binary
    };
    frame(opcode, payload)
}

/// A close frame with `code` and as much of `reason` as fits in a control frame (123 bytes),
/// cut at a character boundary so the peer never sees invalid UTF-8.
///
/// # Panics
/// If `code` is not one a close frame may carry ([`is_valid_close_code`]): that is a bug here.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    assert!(
        is_valid_close_code(code),
        "close code {code} may not be sent"
    );
    let mut end = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; CONTROL_PAYLOAD_BYTES_MAX];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload[..2 + end])
}

/// A ping with `payload`, e.g. a counter to match its pong.
///
/// # Panics
/// If `payload` is longer than [`CONTROL_PAYLOAD_BYTES_MAX`].
pub fn ping_frame(payload: &[u8]) -> Bytes {
    assert!(
        payload.len() <= CONTROL_PAYLOAD_BYTES_MAX,
        "ping payload is {} bytes, at most {CONTROL_PAYLOAD_BYTES_MAX} allowed",
        payload.len()
    );
    frame(Opcode::Ping, payload)
}

/// The answer to a ping: the same payload (RFC 6455 5.5.3).
///
/// # Panics
/// If `payload` is longer than [`CONTROL_PAYLOAD_BYTES_MAX`]; the [`Decoder`] never hands out a
/// longer ping.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    assert!(
        payload.len() <= CONTROL_PAYLOAD_BYTES_MAX,
        "pong payload is {} bytes, at most {CONTROL_PAYLOAD_BYTES_MAX} allowed",
        payload.len()
    );
    frame(Opcode::Pong, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_minimal_encoding() {
        assert_eq!(&frame(Opcode::Binary, &[7; 125])[..2], &[0x82, 125]);
        assert_eq!(&frame(Opcode::Binary, &[7; 126])[..4], &[0x82, 126, 0, 126]);
        assert_eq!(
            &frame(Opcode::Binary, &[7; 65535])[..4],
            &[0x82, 126, 0xFF, 0xFF]
        );
        assert_eq!(
            &frame(Opcode::Binary, &[7; 65536])[..10],
            &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
        for len in [0, 1, 125, 126, 65535, 65536] {
            let f = frame(Opcode::Text, &vec![b'a'; len]);
            assert_eq!(f.len(), header_bytes(len) + len, "len {len}");
        }
    }

    #[test]
    fn message_frame_is_text_for_utf8_binary_otherwise() {
        assert_eq!(&message_frame(b"hi")[..], b"\x81\x02hi");
        assert_eq!(&message_frame("é".as_bytes())[..], b"\x81\x02\xC3\xA9");
        assert_eq!(&message_frame(b"\xFF\x00")[..], b"\x82\x02\xFF\x00");
        assert_eq!(&message_frame(b"")[..], b"\x81\x00");
    }

    #[test]
    fn close_frame_cuts_the_reason_at_a_character_boundary() {
        assert_eq!(&close_frame(1001, "bye")[..], b"\x88\x05\x03\xE9bye");
        // 61 two-byte characters are 122 bytes; one more would pass 123, so it is left out.
        let reason = "é".repeat(70);
        let f = close_frame(1000, &reason);
        assert_eq!(f[1] as usize, 2 + 122);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    #[test]
    fn control_frames() {
        assert_eq!(&ping_frame(b"7")[..], b"\x89\x017");
        assert_eq!(&pong_frame(b"")[..], b"\x8A\x00");
    }

    #[test]
    fn close_codes() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert!(is_valid_close_code(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(bad), "{bad}");
        }
    }
}
