//! RESP2, the Redis protocol, sans-IO: the pieces of a Redis pub/sub listener that need no
//! socket.
//!
//! - [`Decoder`]: bytes in, [`Command`]s out, split anywhere, with redis-server 7.0.15's limits
//!   and its exact protocol errors ([`ProtocolError`]).
//! - [`encode`]: replies, and the pub/sub frames built once per message for all subscribers.
//! - [`Session`]: one connection's command semantics; returns [`Action`]s for the server.
//!
//! "As Redis" means redis-server 7.0.15 as Debian 12 ships it, checked byte for byte against
//! it by `protocol/tests/redis_differential.rs`. Each module lists where it deliberately
//! differs.

mod commands;
mod decode;
pub mod encode;
mod session;

pub use decode::{
    split_args, string_to_i64, Decoder, Limits, ARGUMENT_OVERHEAD_BYTES, LINE_BYTES_MAX,
};
pub use encode::{message_frame, pmessage_frame, smessage_frame, Kind, Version};
pub use session::{Action, Admit, Query, Session, SessionConfig};

use bytes::Bytes;

/// One request: the command name and its arguments, never empty. Arguments of a multibulk
/// request share the decoder's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub args: Vec<Bytes>,
}

/// Malformed input. Redis replies [`ProtocolError::reply`] and closes the connection once it
/// is sent; so does ringfan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// An inline request with more than [`LINE_BYTES_MAX`] bytes before its `\n`.
    TooBigInlineRequest,
    /// An inline request with an unclosed quote, or a closing quote not followed by a space.
    UnbalancedQuotes,
    /// A `*N` line longer than [`LINE_BYTES_MAX`].
    TooBigMultibulkCount,
    /// `*N` where N is not a number or over `i32::MAX`.
    InvalidMultibulkLength,
    /// A `$L` line longer than [`LINE_BYTES_MAX`].
    TooBigBulkCount,
    /// A bulk header not starting with `$`: the byte found.
    ExpectedDollar(u8),
    /// `$L` where L is not a number, negative, or over [`Limits::bulk_bytes_max`].
    InvalidBulkLength,
    /// The command's arguments would exceed [`Limits::command_bytes_max`] (ringfan's own limit).
    CommandTooBig { command_bytes_max: usize },
}

impl ProtocolError {
    /// The error reply, exactly as Redis words it.
    pub fn reply(&self) -> Bytes {
        let text: Vec<u8> = match self {
            ProtocolError::TooBigInlineRequest => {
                b"Protocol error: too big inline request".to_vec()
            }
            ProtocolError::UnbalancedQuotes => {
                b"Protocol error: unbalanced quotes in request".to_vec()
            }
            ProtocolError::TooBigMultibulkCount => {
                b"Protocol error: too big mbulk count string".to_vec()
            }
            ProtocolError::InvalidMultibulkLength => {
                b"Protocol error: invalid multibulk length".to_vec()
            }
            ProtocolError::TooBigBulkCount => b"Protocol error: too big bulk count string".to_vec(),
            ProtocolError::ExpectedDollar(got) => {
                // `%c` of the byte itself, NUL included; a line break becomes a space.
                let mut t = b"Protocol error: expected '$', got '".to_vec();
                t.push(*got);
                t.push(b'\'');
                t
            }
            ProtocolError::InvalidBulkLength => b"Protocol error: invalid bulk length".to_vec(),
            ProtocolError::CommandTooBig { command_bytes_max } => {
                format!("Protocol error: command larger than {command_bytes_max} bytes")
                    .into_bytes()
            }
        };
        encode::error(&text)
    }
}
