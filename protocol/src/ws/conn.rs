//! One WebSocket connection's protocol state, sans-IO: input and the server's decisions in,
//! [`Action`]s out.
//!
//! ```text
//!   Handshake ──101──▶ Open ──close()──▶ Closing
//!       │               │                   │
//!       │ refused,      │ peer's close:     │ peer's close,
//!       │ timed out     │ echoed; failure:  │ or a failure
//!       │               │ our close frame   │
//!       ▼               ▼                   ▼
//!     Closed ◀──────────┴───────────────────┘    (each arrow into Closed: Action::Shutdown)
//! ```
//!
//! Closing is the server's half of the close handshake (RFC 6455 7.1.2): our close frame was
//! queued, the peer's is awaited; data it sends meanwhile is dropped and its pings are not
//! answered (nothing may follow our close frame). The write half ends
//! ([`Action::Shutdown`]) once the close handshake is done, as RFC 6455 7.1.1 asks of a server,
//! or at once when the connection is failed (7.1.7).
//!
//! The deadlines are the server's: while [`Phase::Handshake`], the time to complete the request
//! (call [`WsConn::on_handshake_timeout`] at its end: a 408 then the FIN); while
//! [`Phase::Open`], a pong after [`WsConn::ping`]; while [`Phase::Closing`], the peer's close
//! frame (at its end, end the connection).

use bytes::Bytes;

use super::{
    close_code, close_frame, pong_frame, Decoder, Event, Failure, Handshake, HandshakeStatus,
};

/// The limits and policy of WebSocket connections.
#[derive(Clone, Debug)]
pub struct WsConfig {
    /// The longest upgrade request, request line and headers included.
    pub header_bytes_max: usize,
    /// The longest message a client may send, fragments joined.
    pub message_bytes_max: usize,
    /// Whether a client's messages are published; if not, a data frame is failed with 1008 on
    /// its first two bytes.
    pub publish: bool,
    /// The topic the path `/` subscribes to.
    pub lines_topic: Bytes,
}

/// What the server must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes after everything queued before them. Never dropped by a slow-consumer
    /// policy: they are the handshake's response and control frames.
    Send(Bytes),
    /// The upgrade succeeded (its 101 is the `Send` before this): subscribe to this topic.
    Subscribe(Bytes),
    /// Publish a client's message to the connection's topic.
    Publish { text: bool, payload: Bytes },
    /// A pong arrived: the peer is alive.
    Pong(Bytes),
    /// End the write half (FIN) once everything queued is sent. The read half ends with the
    /// peer's FIN or the server's deadline; no `Send` follows.
    Shutdown,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading the upgrade request: the server's handshake deadline runs.
    Handshake,
    /// Frames flow both ways.
    Open,
    /// Our close frame is queued; the peer's is awaited (the server's close deadline runs).
    Closing,
    /// Nothing more is sent; input is ignored.
    Closed,
}

/// One connection.
#[derive(Debug)]
pub struct WsConn {
    state: State,
    message_bytes_max: usize,
    publish: bool,
    /// The connection ended for a fault of the client's (a refused or late upgrade, a
    /// protocol failure), not by a close handshake.
    failed: bool,
}

#[derive(Debug)]
enum State {
    Handshake(Handshake),
    Open(Decoder),
    Closing(Decoder),
    Closed,
}

impl WsConn {
    pub fn new(config: &WsConfig) -> Self {
        WsConn {
            state: State::Handshake(Handshake::new(
                config.header_bytes_max,
                config.lines_topic.clone(),
            )),
            message_bytes_max: config.message_bytes_max,
            publish: config.publish,
            failed: false,
        }
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Handshake(_) => Phase::Handshake,
            State::Open(_) => Phase::Open,
            State::Closing(_) => Phase::Closing,
            State::Closed => Phase::Closed,
        }
    }

    /// True once the connection ended for the client's fault: a refused or late upgrade, or a
    /// protocol failure (as opposed to a close handshake).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Bytes of input held: an incomplete request, or an incomplete message and control frame.
    pub fn buffered_bytes(&self) -> usize {
        match &self.state {
            State::Handshake(h) => h.buffered_bytes(),
            State::Open(d) | State::Closing(d) => d.buffered_bytes(),
            State::Closed => 0,
        }
    }

    /// Feeds bytes read from the peer.
    pub fn on_input(&mut self, input: &[u8], actions: &mut Vec<Action>) {
        match &mut self.state {
            State::Handshake(h) => match h.feed(input) {
                HandshakeStatus::Partial => {}
                HandshakeStatus::Accepted(a) => {
                    actions.push(Action::Send(a.response));
                    actions.push(Action::Subscribe(a.topic));
                    self.state = State::Open(if self.publish {
                        Decoder::new(self.message_bytes_max)
                    } else {
                        Decoder::refusing_messages()
                    });
                    self.on_input(&a.rest, actions);
                }
                HandshakeStatus::Refused(r) => {
                    actions.push(Action::Send(r.response));
                    self.failed = true;
                    self.shut_down(actions);
                }
            },
            State::Open(d) | State::Closing(d) => {
                let mut events = Vec::new();
                let result = d.decode(input, &mut events);
                for event in events {
                    self.on_event(event, actions);
                }
                if let Err(failure) = result {
                    self.fail(failure, actions);
                }
            }
            State::Closed => {}
        }
    }

    /// Starts the close handshake with `code` (e.g. 1001 at shutdown, 1008 or 1013 for a slow
    /// consumer). Before the upgrade there is nothing to close but the connection itself.
    pub fn close(&mut self, code: u16, reason: &str, actions: &mut Vec<Action>) {
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Handshake(h) => {
                self.state = State::Handshake(h);
                self.shut_down(actions);
            }
            State::Open(d) => {
                actions.push(Action::Send(close_frame(code, reason)));
                self.state = State::Closing(d);
            }
            kept @ (State::Closing(_) | State::Closed) => self.state = kept,
        }
    }

    /// Sends a ping to learn whether the peer is alive; only while open (nothing may follow our
    /// close frame). Returns whether it was sent.
    pub fn ping(&mut self, payload: &[u8], actions: &mut Vec<Action>) -> bool {
        if !matches!(self.state, State::Open(_)) {
            return false;
        }
        actions.push(Action::Send(super::ping_frame(payload)));
        true
    }

    /// The peer did not complete its upgrade request in time: refuse it with 408.
    pub fn on_handshake_timeout(&mut self, actions: &mut Vec<Action>) {
        if matches!(self.state, State::Handshake(_)) {
            actions.push(Action::Send(super::Refusal::timeout().response));
            self.failed = true;
            self.shut_down(actions);
        }
    }

    fn on_event(&mut self, event: Event, actions: &mut Vec<Action>) {
        if matches!(self.state, State::Closed) {
            // A failure earlier in the same input ended the connection.
            return;
        }
        let open = matches!(self.state, State::Open(_));
        match event {
            // Only a decoder that takes messages hands any out (`Decoder::refusing_messages`).
            Event::Message(m) if open => actions.push(Action::Publish {
                text: m.text,
                payload: m.payload,
            }),
            Event::Ping(payload) if open => actions.push(Action::Send(pong_frame(&payload))),
            Event::Pong(payload) => actions.push(Action::Pong(payload)),
            Event::Close(frame) if open => {
                // Echo the peer's code (RFC 6455 5.5.1); a close without one is answered 1000.
                let code = frame.map_or(close_code::NORMAL, |f| f.code);
                actions.push(Action::Send(close_frame(code, "")));
                self.shut_down(actions);
            }
            Event::Close(_) => self.shut_down(actions),
            // Closing: data and pings after our close frame are dropped.
            Event::Message(_) | Event::Ping(_) => {}
        }
    }

    /// Fails the connection (RFC 6455 7.1.7): our close frame unless one was sent, then the FIN.
    fn fail(&mut self, failure: Failure, actions: &mut Vec<Action>) {
        self.failed = true;
        match self.state {
            State::Open(_) => {
                actions.push(Action::Send(close_frame(failure.code, &failure.reason)));
                self.shut_down(actions);
            }
            State::Closing(_) => self.shut_down(actions),
            State::Handshake(_) | State::Closed => {}
        }
    }

    fn shut_down(&mut self, actions: &mut Vec<Action>) {
        assert!(
            !matches!(self.state, State::Closed),
            "a connection is shut down once"
        );
        self.state = State::Closed;
        actions.push(Action::Shutdown);
    }
}
