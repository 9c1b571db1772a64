//! WebSocket connections: the upgrade's deadline, subscribing to the path's topic, publishing
//! what clients send, liveness pings, and the close handshake the server starts.
//!
//! The protocol itself (handshake, frames, close rules) is ringfan-protocol's `ws::WsConn`; here
//! its actions are carried out. A WebSocket connection's one deadline is, in turn: the upgrade
//! (`RINGFAN_WS_HANDSHAKE_TIMEOUT_MS`), the next ping (`RINGFAN_WS_PING_INTERVAL_MS`), the pong
//! awaited (`RINGFAN_WS_PONG_TIMEOUT_MS`), then, once its subscription drops, the close timeout
//! every connection has.

use ringfan_protocol::resp::Kind;
use ringfan_protocol::ws::{close_code, Phase};
use ringfan_ring::Driver;

use super::{AfterFanOut, Worker};
use crate::lifecycle::CloseReason;
use crate::topics::{Body, Message};
use crate::wire::{Input, WsInput};

impl<D: Driver> Worker<D> {
    /// Carries out one thing a WebSocket connection's input asked for.
    pub(crate) fn apply_ws(&mut self, slot: usize, input: WsInput) {
        match input {
            WsInput::Send(bytes) => self.queue_reply(slot, bytes),
            WsInput::Subscribe(topic) => {
                self.stats.ws_upgrades += 1;
                self.join(slot, Kind::Channel, &[topic]);
                self.ws_schedule_ping(slot);
            }
            WsInput::Publish {
                topic,
                text,
                payload,
            } => {
                self.stats.messages_in += 1;
                let message =
                    Message::new(Kind::Channel, topic, Body::Payload(payload)).sent_as_text(text);
                self.publish(message, slot);
            }
            WsInput::Pong => {
                if self.conns[slot].deadline.is_some() {
                    self.ws_schedule_ping(slot);
                }
            }
            // After this turn's fan-out, like a line client's FIN: what it published first is
            // delivered first.
            WsInput::Shutdown { failed } => {
                let reason = if failed {
                    self.stats.protocol_errors += 1;
                    CloseReason::ProtocolError
                } else {
                    CloseReason::ClientClose
                };
                self.after_fan_out.push((slot, AfterFanOut::End(reason)));
            }
        }
    }

    fn ws_schedule_ping(&mut self, slot: usize) {
        let interval = self.cfg.ws_ping_interval;
        if interval.is_zero() {
            self.clear_deadline(slot);
        } else {
            self.set_deadline(slot, self.now + interval);
        }
    }

    /// The deadline of a subscribed WebSocket connection: its upgrade took too long, it is time
    /// to ping, or its pong is late.
    pub(crate) fn ws_on_deadline(&mut self, slot: usize) {
        let mut inputs = std::mem::take(&mut self.inputs);
        let mut actions = Vec::new();
        let ws = self.conns[slot]
            .codec
            .ws_mut()
            .expect("a WebSocket connection");
        match ws.conn.phase() {
            Phase::Handshake => {
                self.stats.ws_handshake_timeouts += 1;
                ws.conn.on_handshake_timeout(&mut actions);
            }
            Phase::Open if ws.awaiting_pong => {
                self.stats.ws_pong_timeouts += 1;
                self.inputs = inputs;
                return self.conn_abort(slot, CloseReason::CloseTimeout);
            }
            Phase::Open => {
                ws.awaiting_pong = ws.conn.ping(b"", &mut actions);
                let at = self.now + self.cfg.ws_pong_timeout;
                self.set_deadline(slot, at);
            }
            Phase::Closing | Phase::Closed => {}
        }
        let ws = self.conns[slot]
            .codec
            .ws_mut()
            .expect("a WebSocket connection");
        ws.translate(actions, &mut inputs);
        for input in inputs.drain(..) {
            let Input::Ws(input) = input else {
                unreachable!("a WebSocket deadline yields WebSocket inputs")
            };
            self.apply_ws(slot, input);
        }
        self.inputs = inputs;
    }

    /// The server ends a WebSocket subscription: its close frame goes first (1001 at
    /// shutdown, 1008 for a slow consumer), queued after everything before it. Not after the
    /// peer's FIN or reset, or when the protocol already closed it.
    pub(crate) fn ws_goodbye(&mut self, slot: usize, reason: CloseReason) {
        let (code, text) = match reason {
            CloseReason::Shutdown => (close_code::GOING_AWAY, "server shutting down"),
            CloseReason::EvictedSlow => (close_code::POLICY_VIOLATION, "too slow"),
            CloseReason::CloseTimeout | CloseReason::IoError => (close_code::GOING_AWAY, ""),
            CloseReason::PeerFin
            | CloseReason::PeerReset
            | CloseReason::ProtocolError
            | CloseReason::ClientClose => return,
        };
        let Some(ws) = self.conns[slot].codec.ws_mut() else {
            return;
        };
        let mut actions = Vec::new();
        ws.conn.close(code, text, &mut actions);
        for action in actions {
            if let ringfan_protocol::ws::Action::Send(frame) = action {
                self.queue_own(slot, frame);
            }
        }
    }
}
