//! RESP peers: what they send (`HELLO 3`, `SUBSCRIBE lines`, then their self-checking lines as
//! `PUBLISH lines <line>`) and the checks on what they read, decoded as RESP3.
//!
//! A RESP peer's stream is, in order: the `HELLO` map, the push confirming the subscription,
//! then `message` pushes and one integer reply per `PUBLISH`, interleaved. Each `message`
//! payload plus `\n` passes the line peers' checks (whole, in order per publisher, no gaps under
//! the disconnect policy), except that its own lines arrive whatever `RINGFAN_ECHO` says. A
//! subscriber that publishes gets its own message before the reply to its `PUBLISH` (as from
//! Redis), so its line k arrives right after reply k - 1 and before reply k; under the
//! disconnect policy, reply k comes only after line k (its message is never dropped).

use super::peer::{parse_line, Peer, StreamCtx};
use super::rng::Rng;

/// The channel line connections are members of (`RINGFAN_LINES_TOPIC`, left at its default).
pub(super) const LINES_TOPIC: &[u8] = b"lines";
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

/// `PUBLISH lines <line without its \n>`, multibulk.
pub(super) fn publish_command(line: &[u8], rng: &mut Rng) -> Vec<u8> {
    let publish = name(rng, "PUBLISH");
    multibulk(&[publish.as_bytes(), LINES_TOPIC, &line[..line.len() - 1]])
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

    /// Checks one value against where the stream is; returns 1 for a checked line.
    fn check_value(&mut self, value: Value, ctx: &StreamCtx) -> Result<u64, String> {
        let who = self.gid;
        let unexpected =
            |what: &str, v: &Value| format!("RESP peer {who} expected {what}, read {v:?}");
        if !self.resp.hello_seen {
            let Value::Map(fields) = &value else {
                return Err(unexpected("the HELLO 3 map", &value));
            };
            let proto = fields
                .iter()
                .find(|(k, _)| bulk(k) == Some(b"proto"))
                .map(|(_, v)| v);
            if fields.len() != 7 || proto != Some(&Value::Int(3)) {
                return Err(unexpected("the HELLO 3 map (7 fields, proto 3)", &value));
            }
            self.resp.hello_seen = true;
            return Ok(0);
        }
        if !self.resp.confirmed {
            let want = Value::Push(vec![
                Value::Bulk(b"subscribe".to_vec()),
                Value::Bulk(LINES_TOPIC.to_vec()),
                Value::Int(1),
            ]);
            if value != want {
                return Err(unexpected("the subscribe confirmation push", &value));
            }
            self.resp.confirmed = true;
            return Ok(0);
        }
        match value {
            Value::Int(n) => self.check_reply(n, ctx).map(|()| 0),
            Value::Push(items) => {
                let [word, channel, payload] = &items[..] else {
                    return Err(unexpected("a message push", &Value::Push(items)));
                };
                let (Some(b"message"), Some(LINES_TOPIC), Some(payload)) =
                    (bulk(word), bulk(channel), bulk(payload))
                else {
                    return Err(unexpected("a message push", &Value::Push(items)));
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
                            "RESP peer {who} read its own line {seq} after {} PUBLISH replies: \
                             its message must come right before the reply to its PUBLISH",
                            self.resp.replies
                        ));
                    }
                }
                self.check_line(payload, ctx).map(|()| 1)
            }
            other => Err(unexpected("a message push or a PUBLISH reply", &other)),
        }
    }

    /// Reply k (from 0) answers the `PUBLISH` of line k: it reached at least this subscriber,
    /// and (disconnect policy) the line itself arrived just before.
    fn check_reply(&mut self, n: i64, ctx: &StreamCtx) -> Result<(), String> {
        let (who, k) = (self.gid, self.resp.replies);
        if k >= self.next_seq {
            return Err(format!(
                "RESP peer {who} read reply {k} (:{n}) but sent only {} PUBLISH commands",
                self.next_seq
            ));
        }
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
