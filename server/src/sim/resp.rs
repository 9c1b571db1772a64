//! RESP peers: what they send (`HELLO 3`, `SUBSCRIBE lines`, then their self-checking lines as
//! `PUBLISH lines <line>`, and now and then `PING` or `SUBSCRIBE` / `UNSUBSCRIBE` of a side
//! channel) and the checks on what they read, decoded as RESP3.
//!
//! A RESP peer's stream is, in order: the `HELLO` map, the push confirming the subscription,
//! then `message` pushes interleaved with the answers to its later commands, one each, in the
//! order sent (an integer per `PUBLISH`, `+PONG`, a confirmation push with the count of
//! channels held). Each `message` payload plus `\n` passes the line peers' checks (whole, in
//! order per publisher, no gaps under the disconnect policy), except that its own lines arrive
//! whatever `RINGFAN_ECHO` says. A subscriber that publishes gets its own message before the
//! reply to its `PUBLISH` (as from Redis), so its line k arrives right after reply k - 1 and
//! before reply k; under the disconnect policy, reply k comes only after line k (its message is
//! never dropped). Changing topics between publishes exercises the topic index and the shared
//! interest (checked after every turn) and eviction in the middle of a peer's commands.

use super::peer::{make_line, parse_line, Expect, Peer, StreamCtx, PAD_MAX};
use super::rng::Rng;

/// The channel line connections are members of (`RINGFAN_LINES_TOPIC`, left at its default).
pub(super) const LINES_TOPIC: &[u8] = b"lines";
/// A channel RESP peers join and leave between publishes; nothing is published on it.
pub(super) const SIDE_TOPIC: &[u8] = b"side";
/// Longest value a RESP peer may have to wait for: the `HELLO` map (about 150 bytes) or one
/// `message` push (a line of at most 64 bytes plus about 40).
const VALUE_BYTES_MAX: usize = 512;

/// One decoded RESP3 value (only the types the server sends).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Value {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Push(Vec<Value>),
}

/// Either spelling of a command name: the server must not care.
fn name(rng: &mut Rng, upper: &str) -> String {
    if rng.chance(500) {
        upper.to_ascii_lowercase()
    } else {
        upper.to_string()
    }
}

/// `args` as one request: inline (`HELLO 3\r\n`) or multibulk, picked by `rng`.
fn command(rng: &mut Rng, args: &[&[u8]]) -> Vec<u8> {
    if rng.chance(500) {
        let mut v = args.join(&b' ');
        v.extend_from_slice(b"\r\n");
        return v;
    }
    multibulk(args)
}

fn multibulk(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// Parses one value at the start of `b`: `Ok(None)` until it is complete; with the bytes used.
pub(super) fn parse(b: &[u8]) -> Result<Option<(Value, usize)>, String> {
    let Some(&kind) = b.first() else {
        return Ok(None);
    };
    let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = &b[1..eol];
    let after = eol + 2;
    let num = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad number {:?}", String::from_utf8_lossy(line)))
    };
    let value = match kind {
        b'+' => (Value::Simple(line.to_vec()), after),
        b'-' => (Value::Error(line.to_vec()), after),
        b':' => (Value::Int(num()?), after),
        b'_' if line.is_empty() => (Value::Null, after),
        b'$' => {
            let n = usize::try_from(num()?).map_err(|_| "negative bulk length".to_string())?;
            if b.len() < after + n + 2 {
                return Ok(None);
            }
            if &b[after + n..after + n + 2] != b"\r\n" {
                return Err(format!("bulk of {n} bytes not followed by CRLF"));
            }
            (Value::Bulk(b[after..after + n].to_vec()), after + n + 2)
        }
        b'*' | b'>' | b'%' => {
            let n = usize::try_from(num()?).map_err(|_| "negative aggregate length".to_string())?;
            let items = if kind == b'%' { 2 * n } else { n };
            let mut at = after;
            let mut all = Vec::with_capacity(items);
            for _ in 0..items {
                let Some((v, used)) = parse(&b[at..])? else {
                    return Ok(None);
                };
                all.push(v);
                at += used;
            }
            let value = match kind {
                b'*' => Value::Array(all),
                b'>' => Value::Push(all),
                _ => {
                    let mut it = all.into_iter();
                    let mut pairs = Vec::with_capacity(n);
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                }
            };
            (value, at)
        }
        other => return Err(format!("unknown RESP type byte {:?}", other as char)),
    };
    Ok(Some(value))
}

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::Bulk(b) => Some(b),
        _ => None,
    }
}

impl Peer {
    /// `HELLO 3` then `SUBSCRIBE lines`, each inline or multibulk: written as it connects.
    pub(super) fn write_handshake(&mut self, rng: &mut Rng) {
        let hello = name(rng, "HELLO");
        self.inbound.extend(command(rng, &[hello.as_bytes(), b"3"]));
        let subscribe = name(rng, "SUBSCRIBE");
        self.inbound
            .extend(command(rng, &[subscribe.as_bytes(), LINES_TOPIC]));
        self.resp.expect.push_back(Expect::Hello);
        self.resp
            .expect
            .push_back(Expect::Subscribed(LINES_TOPIC, 1));
    }

    /// The next command: mostly `PUBLISH lines <next line without its \n>` (multibulk), now and
    /// then `SUBSCRIBE` / `UNSUBSCRIBE` of the side channel or `PING`, which change the
    /// connection's topics (and test the server's bookkeeping of them) between its publishes.
    pub(super) fn next_command(&mut self, rng: &mut Rng) -> Vec<u8> {
        if rng.chance(self.resp.other_pm) {
            let (cmd, expect) = match rng.below(3) {
                0 => (name(rng, "PING"), Expect::Pong),
                _ if self.resp.side => (
                    name(rng, "UNSUBSCRIBE"),
                    Expect::Unsubscribed(SIDE_TOPIC, 1),
                ),
                _ => (name(rng, "SUBSCRIBE"), Expect::Subscribed(SIDE_TOPIC, 2)),
            };
            self.resp.expect.push_back(expect);
            return match expect {
                Expect::Pong => command(rng, &[cmd.as_bytes()]),
                _ => {
                    self.resp.side = !self.resp.side;
                    command(rng, &[cmd.as_bytes(), SIDE_TOPIC])
                }
            };
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.resp.expect.push_back(Expect::Published(seq));
        let line = make_line(self.tag, self.gid, seq, rng.range(0, PAD_MAX));
        let publish = name(rng, "PUBLISH");
        multibulk(&[publish.as_bytes(), LINES_TOPIC, &line[..line.len() - 1]])
    }

    /// Decodes and checks every whole value read; returns how many lines were checked.
    pub(super) fn receive_resp(&mut self, ctx: &StreamCtx) -> Result<u64, String> {
        let who = self.gid;
        let mut checked = 0;
        loop {
            let parsed = parse(&self.rx).map_err(|e| {
                format!(
                    "RESP peer {who} read a malformed value ({e}): {:?}",
                    String::from_utf8_lossy(&self.rx[..self.rx.len().min(90)])
                )
            })?;
            let Some((value, used)) = parsed else {
                break;
            };
            self.rx.drain(..used);
            checked += self.check_value(value, ctx)?;
        }
        if self.rx.len() > VALUE_BYTES_MAX {
            return Err(format!(
                "RESP peer {who} read {} bytes without a whole value: {:?}",
                self.rx.len(),
                String::from_utf8_lossy(&self.rx[..90])
            ));
        }
        Ok(checked)
    }

    /// Checks one value: a `message` push (once subscribed), or the reply the oldest
    /// unanswered command asks for. Returns 1 for a checked line.
    fn check_value(&mut self, value: Value, ctx: &StreamCtx) -> Result<u64, String> {
        let who = self.gid;
        if let Value::Push(items) = &value {
            if items.first().and_then(bulk) == Some(b"message") {
                return self.check_message(items, ctx).map(|()| 1);
            }
        }
        let Some(expect) = self.resp.expect.pop_front() else {
            return Err(format!(
                "RESP peer {who} read {value:?} with every command it sent answered"
            ));
        };
        let push = |word: &[u8], topic: &[u8], n: i64| {
            Value::Push(vec![
                Value::Bulk(word.to_vec()),
                Value::Bulk(topic.to_vec()),
                Value::Int(n),
            ])
        };
        let ok = match (expect, &value) {
            (Expect::Hello, Value::Map(fields)) => {
                let proto = fields
                    .iter()
                    .find(|(k, _)| bulk(k) == Some(b"proto"))
                    .map(|(_, v)| v);
                fields.len() == 7 && proto == Some(&Value::Int(3))
            }
            (Expect::Subscribed(topic, n), v) => *v == push(b"subscribe", topic, n),
            (Expect::Unsubscribed(topic, n), v) => *v == push(b"unsubscribe", topic, n),
            (Expect::Pong, v) => *v == Value::Simple(b"PONG".to_vec()),
            (Expect::Published(k), &Value::Int(n)) => {
                self.check_reply(k, n, ctx)?;
                true
            }
            _ => false,
        };
        if !ok {
            return Err(format!(
                "RESP peer {who} expected the answer to its command ({expect:?}), read {value:?}"
            ));
        }
        match expect {
            Expect::Subscribed(LINES_TOPIC, _) => self.resp.confirmed = true,
            Expect::Hello | Expect::Published(_) => {}
            _ => self.resp.others += 1,
        }
        Ok(0)
    }

    /// A `message` push: on the lines topic, after the subscription's confirmation, a line
    /// as published; its own line k right before the reply to its `PUBLISH` of it.
    fn check_message(&mut self, items: &[Value], ctx: &StreamCtx) -> Result<(), String> {
        let who = self.gid;
        let payload = match items {
            [_, channel, payload] if bulk(channel) == Some(LINES_TOPIC) => bulk(payload),
            _ => None,
        };
        let Some(payload) = payload.filter(|_| self.resp.confirmed) else {
            return Err(format!(
                "RESP peer {who} read {items:?}, expected only messages of {:?} once confirmed \
                 (confirmed: {})",
                String::from_utf8_lossy(LINES_TOPIC),
                self.resp.confirmed
            ));
        };
        if payload.contains(&b'\n') {
            return Err(format!(
                "RESP peer {who} read a message holding a newline: {:?}",
                String::from_utf8_lossy(payload)
            ));
        }
        if let Some((_, gid, seq)) = parse_line(payload) {
            if gid == who && seq != self.resp.replies {
                return Err(format!(
                    "RESP peer {who} read its own line {seq} after {} PUBLISH replies: its \
                     message must come right before the reply to its PUBLISH",
                    self.resp.replies
                ));
            }
        }
        let payload = payload.to_vec();
        self.check_line(&payload, ctx)
    }

    /// The reply to `PUBLISH` of line k: it reached at least this subscriber, and (disconnect
    /// policy) the line itself arrived just before.
    fn check_reply(&mut self, k: u64, n: i64, ctx: &StreamCtx) -> Result<(), String> {
        let who = self.gid;
        debug_assert_eq!(k, self.resp.replies, "replies counted out of step");
        if n < 1 {
            return Err(format!(
                "RESP peer {who}: PUBLISH of line {k} reached {n} subscribers, but it is one"
            ));
        }
        let own = self.last_seq.get(&who).copied();
        if ctx.contiguous && own != Some(k) {
            return Err(format!(
                "RESP peer {who} read the reply to PUBLISH of line {k} with its own last line \
                 {own:?}: under the disconnect policy the message comes first"
            ));
        }
        self.resp.replies += 1;
        Ok(())
    }
}
