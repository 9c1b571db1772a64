//! The seam between a connection's bytes and the worker: one codec per wire protocol.
//!
//! A codec turns what a connection sent into [`Input`]s, in order: lines to publish, or the
//! actions of a RESP command (replies, subscriptions, publishes, queries, close). The frames a
//! message is sent in are the other half of the seam: [`crate::topics::Message::frame`], built
//! once per protocol per message.

use std::sync::Arc;

use bytes::Bytes;
use ringfan_protocol::resp::{self, Action, Admit, Session, SessionConfig};
use ringfan_protocol::ws::{self, Phase, WsConfig, WsConn};
use ringfan_protocol::{Chunk, LineDecoder};

use crate::topics::{Framing, Proto};

/// What a connection's input asks of the worker, in the order it was sent.
#[derive(Debug)]
pub enum Input {
    /// Complete lines from a line connection, to publish on the lines topic.
    Lines(Chunk),
    /// One action of a RESP command.
    Resp(Action),
    /// What a WebSocket connection's input asks for.
    Ws(WsInput),
    /// Malformed input: send this, then close gracefully. Nothing follows it.
    Error(Bytes),
}

/// A WebSocket connection's requests of the worker.
#[derive(Debug)]
pub enum WsInput {
    /// Queue these bytes (the handshake's response, control frames): never dropped.
    Send(Bytes),
    /// The upgrade succeeded: start delivering this topic.
    Subscribe(Bytes),
    /// A client's message for its topic.
    Publish {
        topic: Bytes,
        text: bool,
        payload: Bytes,
    },
    /// A pong arrived.
    Pong,
    /// End the write half once everything queued is sent: the close handshake is done, or
    /// the connection `failed` (refused upgrade, protocol failure: its reply is queued).
    Shutdown { failed: bool },
}

/// One connection's decoder (and, for RESP and WebSocket, its protocol state).
#[derive(Debug)]
pub enum Codec {
    Lines(LineDecoder),
    Resp(Box<RespCodec>),
    Ws(Box<WsCodec>),
}

#[derive(Debug)]
pub struct WsCodec {
    pub conn: WsConn,
    /// The topic of its upgrade path, once upgraded.
    pub topic: Option<Bytes>,
    /// A ping is out and its pong not yet back.
    pub awaiting_pong: bool,
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

    /// A RESP connection: `session` is the listener's settings, shared by its connections.
    pub fn resp(limits: resp::Limits, session: &Arc<SessionConfig>, client_id: u64) -> Codec {
        Codec::Resp(Box::new(RespCodec {
            decoder: resp::Decoder::new(limits),
            session: Session::shared(Arc::clone(session), client_id),
        }))
    }

    pub fn ws(config: &WsConfig) -> Codec {
        Codec::Ws(Box::new(WsCodec {
            conn: WsConn::new(config),
            topic: None,
            awaiting_pong: false,
        }))
    }

    pub fn proto(&self) -> Proto {
        match self {
            Codec::Lines(_) => Proto::Lines,
            Codec::Resp(_) => Proto::Resp,
            Codec::Ws(_) => Proto::WebSocket,
        }
    }

    /// True once the input can produce nothing more (protocol error, `QUIT`).
    pub fn finished(&self) -> bool {
        match self {
            Codec::Lines(d) => d.failed(),
            Codec::Resp(r) => r.decoder.spent() || r.session.closed(),
            Codec::Ws(w) => w.conn.phase() == Phase::Closed,
        }
    }

    /// The frame this connection gets for a message, as of now.
    pub fn framing(&self) -> Framing {
        match self {
            Codec::Lines(_) => Framing::Lines,
            Codec::Resp(r) => Framing::Resp(r.session.version()),
            Codec::Ws(_) => Framing::WebSocket,
        }
    }

    pub fn ws_mut(&mut self) -> Option<&mut WsCodec> {
        match self {
            Codec::Ws(w) => Some(w),
            _ => None,
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
            Codec::Ws(w) => {
                let mut actions = Vec::new();
                w.conn.on_input(input, &mut actions);
                w.translate(actions, out);
            }
        }
    }
}

impl WsCodec {
    /// Turns the connection's actions into the worker's inputs.
    pub fn translate(&mut self, actions: Vec<ws::Action>, out: &mut Vec<Input>) {
        for action in actions {
            out.push(Input::Ws(match action {
                ws::Action::Send(bytes) => WsInput::Send(bytes),
                ws::Action::Subscribe(topic) => {
                    self.topic = Some(topic.clone());
                    WsInput::Subscribe(topic)
                }
                ws::Action::Publish { text, payload } => WsInput::Publish {
                    topic: self
                        .topic
                        .clone()
                        .expect("messages flow only once upgraded"),
                    text,
                    payload,
                },
                ws::Action::Pong(_) => {
                    self.awaiting_pong = false;
                    WsInput::Pong
                }
                ws::Action::Shutdown => WsInput::Shutdown {
                    failed: self.conn.failed(),
                },
            }));
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
