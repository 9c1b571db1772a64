//! The states of a connection's two halves and of its close, and why it ended. A leaf: it
//! imports nothing, so the connection, the worker, the statistics and the metrics can all use it.
//!
//! Both halves of the TCP connection are tracked:
//!
//! ```text
//! read half:   Open ──(zero-length recv: peer FIN)──────────────▶ Ended
//!                   ╰─(reset / fatal error / deadline: abort)──▶ Ended
//!                   ╰─(shutdown, peer acknowledged everything)─▶ Ended
//! write half:  Subscribed ─▶ Draining ─▶ ShutdownSent ─▶ Ended
//!              (unsubscribe)  (queue      (SHUT_WR
//!                              flushed)    completed)
//! close:       No ─(both halves ended)─▶ Cancelling ─(nothing in flight)─▶ CloseSubmitted
//! ```
//!
//! The transitions are in `worker/close.rs`.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadHalf {
    Open,
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteHalf {
    Subscribed,
    Draining,
    ShutdownSent,
    Ended,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    No,
    /// Both halves ended; waiting for in-flight operations to finish (cancelled).
    Cancelling,
    /// `close` submitted; the slot is freed on its completion.
    CloseSubmitted,
}

/// Why a connection ended (the first cause wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    PeerFin,
    PeerReset,
    EvictedSlow,
    ProtocolError,
    CloseTimeout,
    Shutdown,
    IoError,
    /// The client ended it: `QUIT`, or a WebSocket close handshake.
    ClientClose,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::PeerFin,
        CloseReason::PeerReset,
        CloseReason::EvictedSlow,
        CloseReason::ProtocolError,
        CloseReason::CloseTimeout,
        CloseReason::Shutdown,
        CloseReason::IoError,
        CloseReason::ClientClose,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::PeerFin => "peer_fin",
            CloseReason::PeerReset => "peer_reset",
            CloseReason::EvictedSlow => "evicted_slow",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::CloseTimeout => "close_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IoError => "io_error",
            CloseReason::ClientClose => "client_close",
        }
    }
}

/// How the read half ended, remembered until the data received before it has been processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    Fin,
    Error(i32),
}
