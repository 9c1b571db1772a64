//! The request decoder: `processInputBuffer`, `processMultibulkBuffer` and
//! `processInlineBuffer` of redis-server 7.0.15 (src/networking.c), without the socket.
//!
//! Redis's quirks that a client can observe are kept:
//! - A request starting with `*` is multibulk, anything else inline.
//! - Lines are found with C's `strchr`, which stops at a NUL byte: a NUL before the line's end
//!   leaves the request incomplete until the size limit below ends the connection.
//! - After a `\r` only *some* byte is required, not `\n`; after a bulk's data two bytes are
//!   skipped unchecked (`$1\r\naXY` is the argument `a`).
//! - `*0`, `*-1` (any count <= 0) and empty inline lines are skipped without a reply.
//! - Numbers are parsed as `string2ll`: no `+`, no leading zero, no `-0`, at most 20 bytes.
//!
//! One deliberate difference: Redis checks the 64 KiB line limit only when a read ends without
//! the line's end, so a longer line can pass if it arrives whole in one read. Here a line (inline
//! request, multibulk count or bulk length) with more than 64 KiB before its terminator is always
//! refused, so that the outcome does not depend on how TCP happened to split the input.

use bytes::{Buf, Bytes, BytesMut};

use super::{Command, ProtocolError};

/// Longest line, in bytes before its terminator (`PROTO_INLINE_MAX_SIZE`).
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// Largest multibulk count Redis 7.0 accepts (`INT_MAX`).
const MULTIBULK_COUNT_MAX: i64 = i32::MAX as i64;

/// What each argument costs against [`Limits::command_bytes_max`] beyond its bytes: its `Bytes`
/// handle, so that a million empty arguments are not free.
pub const ARGUMENT_OVERHEAD_BYTES: usize = std::mem::size_of::<Bytes>();

/// Most room reserved ahead for a bulk announced but not yet received.
const BULK_PREALLOCATION_BYTES_MAX: usize = 64 * 1024;

/// Lower bound for the buffer's allocation when input must be copied, so that many small reads
/// do not each allocate.
const MIN_ALLOCATION_BYTES: usize = 4096;

/// The decoder's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk argument, in bytes (Redis: `proto-max-bulk-len`; ringfan passes
    /// `RINGFAN_MAX_FRAME_BYTES`).
    pub bulk_bytes_max: usize,
    /// Largest command: the sum over its arguments of their length plus
    /// [`ARGUMENT_OVERHEAD_BYTES`]. Redis has no such bound below its 1 GiB query buffer limit;
    /// ringfan needs one per connection.
    pub command_bytes_max: usize,
}

/// Where the decoder is within a request.
#[derive(Debug)]
enum State {
    /// Between requests: the next byte decides the request type.
    Idle,
    Inline,
    /// The `*N\r\n` line of a multibulk request.
    Count,
    Arguments {
        /// Arguments still to read.
        left: usize,
        /// The length of the bulk whose `$L\r\n` line was read, until its data is complete.
        bulk_len: Option<usize>,
        args: Vec<Bytes>,
        /// Bytes charged against `command_bytes_max` so far.
        cost_bytes: usize,
    },
}

/// Turns a byte stream into [`Command`]s. Feed input with [`Decoder::feed`], then take commands
/// with [`Decoder::next_command`] until it returns `Ok(None)`.
///
/// Holds at most one request's worth of input beyond what the caller fed since it last drained:
/// a line is at most [`LINE_BYTES_MAX`] bytes and a bulk at most `bulk_bytes_max`.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Unconsumed input; its first byte belongs to the request in progress.
    buf: BytesMut,
    state: State,
    /// Bytes of `buf` already searched for the current line's terminator without finding it.
    scanned: usize,
    spent: bool,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            buf: BytesMut::new(),
            state: State::Idle,
            scanned: 0,
            spent: false,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// True once a protocol error was reported; all later input is ignored.
    pub fn spent(&self) -> bool {
        self.spent
    }

    /// Bytes received and not yet handed out as part of a command.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Bytes of buffer held for input, received or reserved (for memory accounting).
    pub fn capacity_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the buffer's memory back when nothing is buffered, so an idle connection holds
    /// no input buffer (its commands' arguments keep what they share of it alive on their own).
    pub fn release_idle_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            debug_assert_eq!(self.scanned, 0);
            self.buf = BytesMut::new();
        }
    }

    /// Appends `input`. It is copied once; the arguments of a command share that copy.
    pub fn feed(&mut self, input: &[u8]) {
        if self.spent || input.is_empty() {
            return;
        }
        if self.buf.is_empty() && self.buf.capacity() < input.len() {
            // Between commands (the usual case: a read holds whole commands): exactly what this
            // input needs, so a connection that sends one command and goes idle held a few
            // dozen bytes for it, not a page.
            self.buf = BytesMut::with_capacity(input.len());
        } else if self.buf.capacity() - self.buf.len() < input.len() {
            self.buf.reserve(input.len().max(MIN_ALLOCATION_BYTES));
        }
        self.buf.extend_from_slice(input);
    }

    /// The next complete command, `Ok(None)` if more input is needed, or the protocol error that
    /// ends the connection. The error is returned once; after it the decoder is spent and
    /// returns `Ok(None)` forever.
    pub fn next_command(&mut self) -> Result<Option<Command>, ProtocolError> {
        if self.spent {
            return Ok(None);
        }
        let result = self.decode();
        if result.is_err() {
            self.spent = true;
            self.buf = BytesMut::new();
            self.state = State::Idle;
        }
        result
    }

    fn decode(&mut self) -> Result<Option<Command>, ProtocolError> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let command = match self.state {
                State::Idle => {
                    self.state = if self.buf[0] == b'*' {
                        State::Count
                    } else {
                        State::Inline
                    };
                    continue;
                }
                State::Inline => self.inline()?,
                State::Count => {
                    if !self.count()? {
                        return Ok(None);
                    }
                    continue;
                }
                State::Arguments { .. } => self.arguments()?,
            };
            match command {
                Some(command) if command.args.is_empty() => continue,
                other => return Ok(other),
            }
        }
    }

    /// Finds the current line's terminator (`\n` for inline, `\r` otherwise) the way `strchr`
    /// does: a NUL first means not found. Applies the line limit either way.
    fn find_line_end(
        &mut self,
        terminator: u8,
        too_big: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        let found =
            memchr::memchr2(terminator, 0, &self.buf[self.scanned..]).map(|i| i + self.scanned);
        match found {
            Some(i) if self.buf[i] == terminator => {
                if i > LINE_BYTES_MAX {
                    return Err(too_big);
                }
                self.scanned = i;
                Ok(Some(i))
            }
            stuck_or_none => {
                // Behind a NUL nothing is ever found; before more input nothing new is.
                self.scanned = stuck_or_none.unwrap_or(self.buf.len());
                if self.buf.len() > LINE_BYTES_MAX {
                    return Err(too_big);
                }
                Ok(None)
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.scanned = 0;
    }

    /// An inline request: `Some` with possibly no arguments (skipped by the caller).
    fn inline(&mut self) -> Result<Option<Command>, ProtocolError> {
        let Some(newline) = self.find_line_end(b'\n', ProtocolError::TooBigInlineRequest)? else {
            return Ok(None);
        };
        let line_len = if newline > 0 && self.buf[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        let line = self.buf.split_to(newline + 1).freeze().slice(..line_len);
        self.scanned = 0;
        self.state = State::Idle;
        let args = split_args(&line).ok_or(ProtocolError::UnbalancedQuotes)?;
        Ok(Some(Command { args }))
    }

    /// The `*N` line. True if it was complete and consumed.
    fn count(&mut self) -> Result<bool, ProtocolError> {
        let Some(cr) = self.find_line_end(b'\r', ProtocolError::TooBigMultibulkCount)? else {
            return Ok(false);
        };
        if cr + 2 > self.buf.len() {
            return Ok(false);
        }
        let count = match string_to_i64(&self.buf[1..cr]) {
            Some(n) if n <= MULTIBULK_COUNT_MAX => n,
            _ => return Err(ProtocolError::InvalidMultibulkLength),
        };
        self.consume(cr + 2);
        self.state = if count <= 0 {
            State::Idle
        } else {
            State::Arguments {
                left: count as usize,
                bulk_len: None,
                args: Vec::with_capacity((count as usize).min(1024)),
                cost_bytes: 0,
            }
        };
        Ok(true)
    }

    /// Bulk arguments until the multibulk is complete (`Some`) or input runs out (`None`).
    fn arguments(&mut self) -> Result<Option<Command>, ProtocolError> {
        loop {
            let State::Arguments { left, bulk_len, .. } = self.state else {
                unreachable!("arguments() outside State::Arguments");
            };
            if left == 0 {
                let State::Arguments { args, .. } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    unreachable!()
                };
                return Ok(Some(Command { args }));
            }
            let len = match bulk_len {
                Some(len) => len,
                None => match self.bulk_header()? {
                    Some(len) => len,
                    None => return Ok(None),
                },
            };
            if self.buf.len() < len + 2 {
                // Room for the bulk in one allocation rather than a doubling series, but only up
                // to a bound: a header alone must not make the server allocate a whole
                // `bulk_bytes_max` that the peer may never send.
                let missing = len + 2 - self.buf.len();
                self.buf.reserve(missing.min(BULK_PREALLOCATION_BYTES_MAX));
                return Ok(None);
            }
            let arg = self.buf.split_to(len + 2).freeze().slice(..len);
            self.scanned = 0;
            if let State::Arguments {
                left,
                bulk_len,
                args,
                ..
            } = &mut self.state
            {
                args.push(arg);
                *left -= 1;
                *bulk_len = None;
            }
        }
    }

    /// The `$L` line of the next bulk: its length once complete and valid.
    fn bulk_header(&mut self) -> Result<Option<usize>, ProtocolError> {
        let Some(cr) = self.find_line_end(b'\r', ProtocolError::TooBigBulkCount)? else {
            return Ok(None);
        };
        if cr + 2 > self.buf.len() {
            return Ok(None);
        }
        if self.buf[0] != b'$' {
            return Err(ProtocolError::ExpectedDollar(self.buf[0]));
        }
        let len = match string_to_i64(&self.buf[1..cr]) {
            Some(n) if n >= 0 && n as u64 <= self.limits.bulk_bytes_max as u64 => n as usize,
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        let command_bytes_max = self.limits.command_bytes_max;
        if let State::Arguments {
            bulk_len,
            cost_bytes,
            ..
        } = &mut self.state
        {
            *cost_bytes = cost_bytes.saturating_add(len + ARGUMENT_OVERHEAD_BYTES);
            if *cost_bytes > command_bytes_max {
                return Err(ProtocolError::CommandTooBig { command_bytes_max });
            }
            *bulk_len = Some(len);
        }
        self.consume(cr + 2);
        Ok(Some(len))
    }
}

/// Redis's `string2ll`: an optional `-`, then `0` alone or a digit 1-9 followed by digits; no
/// other byte, fewer than 21 bytes, within `i64`.
pub fn string_to_i64(s: &[u8]) -> Option<i64> {
    const LONG_STR_SIZE: usize = 21;
    if s.is_empty() || s.len() >= LONG_STR_SIZE {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if negative {
        if v > i64::MAX as u64 + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Redis's `sdssplitargs` on one inline line (which holds no NUL and no `\n`). `None` for
/// unbalanced quotes, or a closing quote followed by something other than a space.
///
/// Unquoted tokens end at ` `, `\t`, `\r` or `\n` only (not at `\v` or `\f`, which are skipped
/// between tokens); a quote inside a token opens a quoted part of the same token (`a"b c"` is
/// `ab c`). In "double quotes": `\n \r \t \b \a`, `\xHH`, and `\` before any other byte gives
/// that byte. In 'single quotes' only `\'` is an escape.
pub fn split_args(line: &Bytes) -> Option<Vec<Bytes>> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Some(args);
        }
        let start = p;
        let mut unquoted_end = None;
        let mut token: Option<Vec<u8>> = None; // only once a quote makes it differ from the line
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = at(p);
            if in_double {
                if c == b'\\'
                    && at(p + 1) == b'x'
                    && at(p + 2).is_ascii_hexdigit()
                    && at(p + 3).is_ascii_hexdigit()
                {
                    let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                    token
                        .get_or_insert_with(Vec::new)
                        .push(hex(at(p + 2)) * 16 + hex(at(p + 3)));
                    p += 3;
                } else if c == b'\\' && at(p + 1) != 0 {
                    p += 1;
                    let escaped = match at(p) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    };
                    token.get_or_insert_with(Vec::new).push(escaped);
                } else if c == b'"' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    token.get_or_insert_with(Vec::new).push(c);
                }
            } else if in_single {
                if c == b'\\' && at(p + 1) == b'\'' {
                    p += 1;
                    token.get_or_insert_with(Vec::new).push(b'\'');
                } else if c == b'\'' {
                    if at(p + 1) != 0 && !is_space(at(p + 1)) {
                        return None;
                    }
                    p += 1;
                    break;
                } else if c == 0 {
                    return None;
                } else {
                    token.get_or_insert_with(Vec::new).push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => {
                        unquoted_end = Some(p);
                        if c != 0 {
                            p += 1;
                        }
                        break;
                    }
                    b'"' | b'\'' => {
                        // From here on the token differs from the line: copy what it had.
                        token.get_or_insert_with(|| line[start..p].to_vec());
                        if c == b'"' {
                            in_double = true;
                        } else {
                            in_single = true;
                        }
                    }
                    _ => {
                        if let Some(t) = token.as_mut() {
                            t.push(c);
                        }
                    }
                }
            }
            p += 1;
        }
        args.push(match (token, unquoted_end) {
            (Some(t), _) => Bytes::from(t),
            // An unquoted token: shared with the line.
            (None, Some(end)) => line.slice(start..end),
            (None, None) => unreachable!("a token ends at a quote or a terminator"),
        });
    }
}
