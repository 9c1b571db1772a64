//! Client-to-server frames (RFC 6455 5), decoded as bytes arrive.
//!
//! Every rule is checked at the earliest byte that can break it: a bad first two bytes fail before
//! the length arrives, a too-long message fails at its header before its payload arrives, and a
//! text message fails at the first byte that no UTF-8 text can continue (RFC 6455 8.1), even in
//! the middle of a fragment. So a peer can make the decoder hold at most one message of
//! `message_bytes_max` bytes plus one control frame.
//!
//! Lengths: RFC 6455 5.2 asks a sender for the minimal length encoding but gives a receiver no
//! rule, so a longer encoding (126 then 0x007D for 125) is accepted, as the Python `websockets`
//! library does; the length's value is what the limit applies to. A 64-bit length with its most
//! significant bit set is refused (1002), as 5.2 requires.

use bytes::{Bytes, BytesMut};

use super::{close_code, is_valid_close_code, Opcode, CONTROL_PAYLOAD_BYTES_MAX};

/// What the decoder found, in the order of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete message, its fragments joined.
    Message(Message),
    /// A ping: answer with a pong carrying the same payload.
    Ping(Bytes),
    /// A pong, answered or unsolicited (RFC 6455 5.5.3 allows both).
    Pong(Bytes),
    /// The peer began or answered the close handshake; `None` when it gave no status code. The
    /// decoder reads nothing after it.
    Close(Option<CloseFrame>),
}

/// A complete message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sent as text (then `payload` is valid UTF-8) or as binary.
    pub text: bool,
    pub payload: Bytes,
}

/// A close frame's status code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// A code [`is_valid_close_code`] accepts.
    pub code: u16,
    /// Valid UTF-8, at most 123 bytes.
    pub reason: Bytes,
}

/// Why the connection must be failed (RFC 6455 7.1.7): close it with `code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The status code for our close frame: 1002, 1007, 1009, or 1008 from a decoder refusing
    /// messages.
    pub code: u16,
    /// Says what broke which rule; suitable as the close frame's reason.
    pub reason: String,
}

impl Failure {
    fn new(code: u16, reason: impl Into<String>) -> Failure {
        Failure {
            code,
            reason: reason.into(),
        }
    }
}

/// The frame whose payload is arriving.
#[derive(Debug)]
struct Frame {
    opcode: Opcode,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    /// Payload bytes unmasked so far: where in `mask` the next byte starts.
    done: usize,
}

/// Decodes one connection's client-to-server frames.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    /// The first bytes of a frame until its header (2 to 14 bytes) is complete.
    header: [u8; 14],
    header_len: usize,
    /// Set between a frame's header and the end of its payload.
    frame: Option<Frame>,
    /// Set while a data message is open: whether it is text.
    message_text: Option<bool>,
    /// The open message's payload so far, unmasked.
    message: BytesMut,
    /// Bytes at the start of `message` checked to be UTF-8 (text only); the rest is at most an
    /// incomplete character.
    utf8_checked: usize,
    /// The payload of the control frame arriving, at most 125 bytes.
    control: BytesMut,
    /// Set after a close frame or a failure: later input is ignored.
    done: bool,
    /// Set when the peer may not send messages at all: a data frame fails (1008) on its first two
    /// bytes.
    messages_refused: bool,
}

impl Decoder {
    /// `message_bytes_max`: the longest message accepted, all its fragments together; longer is
    /// failed with 1009.
    pub fn new(message_bytes_max: usize) -> Self {
        Decoder {
            message_bytes_max,
            header: [0; 14],
            header_len: 0,
            frame: None,
            message_text: None,
            message: BytesMut::new(),
            utf8_checked: 0,
            control: BytesMut::new(),
            done: false,
            messages_refused: false,
        }
    }

    /// A decoder for a peer that may not send messages (a subscribe-only connection): its first
    /// data frame fails with 1008 on the frame's first two bytes, before any payload is held.
    /// Control frames are decoded as usual.
    pub fn refusing_messages() -> Self {
        Decoder {
            messages_refused: true,
            ..Decoder::new(0)
        }
    }

    /// Payload bytes held: the open message's and a control frame's.
    pub fn buffered_bytes(&self) -> usize {
        self.message.len() + self.control.len()
    }

    /// Heap bytes held for payloads, capacity included: 0 between messages, so an idle connection
    /// costs only the decoder itself.
    pub fn allocated_bytes(&self) -> usize {
        self.message.capacity() + self.control.capacity()
    }

    /// True once a close frame was decoded or the input failed: later input is ignored.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Decodes `input`, appending what it completes to `events`. On a failure the events before
    /// it stay in `events` and the decoder is done.
    pub fn decode(&mut self, mut input: &[u8], events: &mut Vec<Event>) -> Result<(), Failure> {
        while !self.done && !input.is_empty() {
            let step = if self.frame.is_some() {
                self.payload(input, events)
            } else {
                self.header(input, events)
            };
            match step {
                Ok(used) => input = &input[used..],
                Err(failure) => {
                    self.done = true;
                    self.message = BytesMut::new();
                    self.control = BytesMut::new();
                    return Err(failure);
                }
            }
        }
        Ok(())
    }

    /// Takes header bytes from `input`; returns how many it used.
    fn header(&mut self, input: &[u8], events: &mut Vec<Event>) -> Result<usize, Failure> {
        let need = if self.header_len < 2 {
            2
        } else {
            header_bytes(self.header[1])
        };
        let take = (need - self.header_len).min(input.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
        self.header_len += take;
        if self.header_len == 2 && need == 2 {
            self.check_first_two()?;
            // The rest of the header follows in the same input or the next.
            return Ok(take);
        }
        if self.header_len < need {
            return Ok(take);
        }
        self.start_frame(events)?;
        Ok(take)
    }

    /// The rules that the first two bytes alone can break.
    fn check_first_two(&self) -> Result<(), Failure> {
        let [b0, b1] = [self.header[0], self.header[1]];
        if b0 & 0x70 != 0 {
            return Err(protocol("RSV bits set, no extension was negotiated"));
        }
        let Some(opcode) = Opcode::from_bits(b0) else {
            return Err(protocol(format!("reserved opcode {:#x}", b0 & 0x0F)));
        };
        if b1 & 0x80 == 0 {
            return Err(protocol("a client's frames must be masked"));
        }
        let fin = b0 & 0x80 != 0;
        if opcode.is_control() {
            if !fin {
                return Err(protocol("a control frame may not be fragmented"));
            }
            if (b1 & 0x7F) as usize > CONTROL_PAYLOAD_BYTES_MAX {
                return Err(protocol("a control frame's payload is at most 125 bytes"));
            }
        } else if self.messages_refused {
            return Err(Failure::new(
                close_code::POLICY_VIOLATION,
                "this server does not take messages from WebSocket clients",
            ));
        } else if opcode == Opcode::Continuation && self.message_text.is_none() {
            return Err(protocol(
                "a continuation frame without a message to continue",
            ));
        } else if opcode != Opcode::Continuation && self.message_text.is_some() {
            return Err(protocol("a new message inside a fragmented message"));
        }
        Ok(())
    }

    /// The header is complete: check the length and begin the payload.
    fn start_frame(&mut self, events: &mut Vec<Event>) -> Result<(), Failure> {
        let h = &self.header[..self.header_len];
        let opcode = Opcode::from_bits(h[0]).expect("checked by check_first_two");
        let fin = h[0] & 0x80 != 0;
        let (len, mask_at) = match h[1] & 0x7F {
            126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
            127 => {
                let len = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(protocol(
                        "a 64-bit length with its most significant bit set",
                    ));
                }
                (len, 10)
            }
            short => (short as u64, 2),
        };
        let mask = h[mask_at..mask_at + 4].try_into().expect("4 bytes");
        self.header_len = 0;
        if !opcode.is_control() {
            let total = self.message.len() as u64 + len;
            if total > self.message_bytes_max as u64 {
                return Err(Failure::new(
                    close_code::MESSAGE_TOO_BIG,
                    format!(
                        "a message may have at most {} bytes",
                        self.message_bytes_max
                    ),
                ));
            }
            if opcode != Opcode::Continuation {
                self.message_text = Some(opcode == Opcode::Text);
            }
        }
        self.frame = Some(Frame {
            opcode,
            fin,
            remaining: len,
            mask,
            done: 0,
        });
        if len == 0 {
            self.end_frame(events)?;
        }
        Ok(())
    }

    /// Takes payload bytes from `input`, unmasked into the message or the control frame; returns
    /// how many it used.
    fn payload(&mut self, input: &[u8], events: &mut Vec<Event>) -> Result<usize, Failure> {
        let frame = self.frame.as_mut().expect("payload without a frame");
        let take = input
            .len()
            .min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let into = if frame.opcode.is_control() {
            &mut self.control
        } else {
            // Grows with what arrived, not with what the header announced, so a header alone
            // cannot make the decoder allocate.
            self.message.reserve(take);
            &mut self.message
        };
        let start = into.len();
        into.extend_from_slice(&input[..take]);
        for (i, b) in into[start..].iter_mut().enumerate() {
            *b ^= frame.mask[(frame.done + i) % 4];
        }
        frame.done += take;
        frame.remaining -= take as u64;
        let text_data = !frame.opcode.is_control() && self.message_text == Some(true);
        let complete = frame.remaining == 0;
        if text_data {
            self.check_utf8()?;
        }
        if complete {
            self.end_frame(events)?;
        }
        Ok(take)
    }

    /// Fails as soon as the text so far cannot be the start of UTF-8 text.
    fn check_utf8(&mut self) -> Result<(), Failure> {
        match std::str::from_utf8(&self.message[self.utf8_checked..]) {
            Ok(_) => self.utf8_checked = self.message.len(),
            // `error_len` is `None` only when the bytes end inside a character that more bytes
            // could still complete; any byte no continuation can save is `Some`.
            Err(e) if e.error_len().is_none() => self.utf8_checked += e.valid_up_to(),
            Err(_) => return Err(invalid_utf8("a text message that is not UTF-8")),
        }
        Ok(())
    }

    fn end_frame(&mut self, events: &mut Vec<Event>) -> Result<(), Failure> {
        let frame = self
            .frame
            .take()
            .expect("end of a frame that did not start");
        match frame.opcode {
            Opcode::Ping => events.push(Event::Ping(take(&mut self.control))),
            Opcode::Pong => events.push(Event::Pong(take(&mut self.control))),
            Opcode::Close => {
                let close = close_payload(&take(&mut self.control))?;
                self.done = true;
                events.push(Event::Close(close));
            }
            Opcode::Text | Opcode::Binary | Opcode::Continuation if frame.fin => {
                let text = self.message_text.take().expect("a data frame in a message");
                if text && self.utf8_checked != self.message.len() {
                    return Err(invalid_utf8("a text message ends inside a character"));
                }
                self.utf8_checked = 0;
                let payload = take(&mut self.message);
                events.push(Event::Message(Message { text, payload }));
            }
            Opcode::Text | Opcode::Binary | Opcode::Continuation => {}
        }
        Ok(())
    }
}

/// The buffer's bytes, and its allocation with them. `BytesMut::split` would keep the spare
/// capacity here, and with it the whole allocation the handed-out `Bytes` shares, for as long as
/// the connection lives: an idle subscriber would hold its largest message.
fn take(buf: &mut BytesMut) -> Bytes {
    std::mem::take(buf).freeze()
}

/// The status code and reason of a close frame's payload (RFC 6455 5.5.1, 7.4).
fn close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, Failure> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("a close frame's payload of 1 byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(protocol(format!("close code {code} may not be sent")));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(invalid_utf8("a close reason that is not UTF-8"));
            }
            Ok(Some(CloseFrame {
                code,
                reason: Bytes::copy_from_slice(reason),
            }))
        }
    }
}

/// The header length announced by a frame's second byte: 2, plus 2 or 8 for a long length, plus 4
/// for the mask (client frames are always masked; an unmasked one fails before this matters).
fn header_bytes(b1: u8) -> usize {
    let len = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + len + 4
}

fn protocol(reason: impl Into<String>) -> Failure {
    Failure::new(close_code::PROTOCOL_ERROR, reason)
}

fn invalid_utf8(reason: &str) -> Failure {
    Failure::new(close_code::INVALID_PAYLOAD, reason)
}
