//! The seam between a connection's bytes and the worker: one codec per wire protocol.
//!
//! A codec turns what a connection sent into [`Input`]s, in order: lines to publish, or the
//! actions of a RESP command (replies, subscriptions, publishes, queries, close). The frames a
//! message is sent in are the other half of the seam: [`crate::topics::Message::frame`], built
//! once per protocol per message.

use bytes::Bytes;
use ringfan_protocol::resp::{self, Action, Admit, Session, SessionConfig};
use ringfan_protocol::{Chunk, LineDecoder};

use crate::topics::{Framing, Proto};

/// What a connection's input asks of the worker, in the order it was sent.
#[derive(Debug)]
pub enum Input {
    /// Complete lines from a line connection, to publish on the lines topic.
    Lines(Chunk),
    /// One action of a RESP command.
    Resp(Action),
    /// Malformed input: send this, then close gracefully. Nothing follows it.
    Error(Bytes),
}

/// One connection's decoder (and, for RESP, its session).
#[derive(Debug)]
pub enum Codec {
    Lines(LineDecoder),
    Resp(Box<RespCodec>),
}

#[derive(Debug)]
pub struct RespCodec {
    decoder: resp::Decoder,
    session: Session,
}

impl Codec {
    pub fn lines(max_frame_bytes: usize) -> Codec {
        Codec::Lines(LineDecoder::new(max_frame_bytes))
    }

    pub fn resp(limits: resp::Limits, session: SessionConfig) -> Codec {
        Codec::Resp(Box::new(RespCodec {
            decoder: resp::Decoder::new(limits),
            session: Session::new(session),
        }))
    }

    pub fn proto(&self) -> Proto {
        match self {
            Codec::Lines(_) => Proto::Lines,
            Codec::Resp(_) => Proto::Resp,
        }
    }

    /// True once the input can produce nothing more (protocol error, `QUIT`).
    pub fn finished(&self) -> bool {
        match self {
            Codec::Lines(d) => d.failed(),
            Codec::Resp(r) => r.decoder.spent() || r.session.closed(),
        }
    }

    /// The frame this connection gets for a message, as of now.
    pub fn framing(&self) -> Framing {
        match self {
            Codec::Lines(_) => Framing::Lines,
            Codec::Resp(r) => Framing::Resp(r.session.version()),
        }
    }

    pub fn session(&self) -> Option<&Session> {
        match self {
            Codec::Lines(_) => None,
            Codec::Resp(r) => Some(&r.session),
        }
    }

    /// Decodes `input`, appending what it asks for to `out`. `admit` has the server's say on new
    /// subscriptions (RESP).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<Input>, admit: Admit<'_>) {
        match self {
            Codec::Lines(decoder) => {
                let decoded = decoder.decode(input);
                if let Some(chunk) = decoded.chunk {
                    out.push(Input::Lines(chunk));
                }
                if let Some(err) = decoded.error {
                    out.push(Input::Error(err.error_line()));
                }
            }
            Codec::Resp(r) => r.decode(input, out, admit),
        }
    }
}

impl RespCodec {
    fn decode(&mut self, input: &[u8], out: &mut Vec<Input>, admit: Admit<'_>) {
        self.decoder.feed(input);
        let mut actions = Vec::new();
        while !self.session.closed() {
            match self.decoder.next_command() {
                Ok(Some(mut command)) => {
                    if is_subscribe(&command.args[0]) {
                        // Kept for as long as the subscription lasts: own copies, so they do not
                        // pin the whole receive buffer they were decoded from.
                        for arg in &mut command.args[1..] {
                            *arg = Bytes::copy_from_slice(arg);
                        }
                    }
                    self.session.handle_with(&command, &mut actions, admit);
                    out.extend(actions.drain(..).map(Input::Resp));
                }
                Ok(None) => break,
                Err(e) => {
                    out.push(Input::Error(e.reply()));
                    break;
                }
            }
        }
        self.decoder.release_idle_buffer();
    }
}

fn is_subscribe(name: &[u8]) -> bool {
    [&b"subscribe"[..], b"psubscribe", b"ssubscribe"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
}
