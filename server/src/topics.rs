//! Topics: what a message is, who on this worker receives it, and which workers want it.
//!
//! A [`Message`] is a topic and a payload. The payload is one `Bytes`, shared by every
//! subscriber on every core; each protocol's frame for it is built the first time some
//! subscriber of that protocol needs it, once, and shared the same way (the `pmessage` frame of
//! a pattern is built once per matching pattern on each worker that has subscribers for it).
//!
//! Each worker keeps its own [`TopicIndex`]: topic -> its local subscribers' slots, one map per
//! kind of subscription (channels, patterns, shard channels). The line protocol is the channel
//! `RINGFAN_LINES_TOPIC`: every line connection is a member of it.
//!
//! Each worker also publishes its [`Interest`] (topic -> number of local subscribers) behind a
//! lock of its own, read by the other workers when they route a message: a message crosses to
//! another worker only if that worker has a subscriber for its channel or a pattern matching it.
//! A worker updates its interest before the confirmation of a subscription is queued, so a
//! message published after a client saw its confirmation is always routed to it.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};
use ringfan_protocol::resp::{self, Kind, Version};
use ringfan_protocol::ws::{self, Opcode};
use ringfan_protocol::{glob, Chunk};

/// What a publisher sent.
#[derive(Debug)]
pub enum Body {
    /// Complete lines from a line connection (each ending in `\n`), published to the lines topic.
    Lines(Chunk),
    /// One message from `PUBLISH` / `SPUBLISH`.
    Payload(Bytes),
}

/// Where a message comes from, which decides whom it reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Published on this node: every subscriber; also forwarded to the NATS backbone.
    Local,
    /// From the backbone through a channel's own subscription: channel subscribers only.
    Channels,
    /// From the backbone through the patterns' wildcard subscription: pattern subscribers
    /// only (a message matching both arrives once through each).
    Patterns,
}

/// A published message (for lines: one chunk of lines), with its frames built on first use.
#[derive(Debug)]
pub struct Message {
    /// `Channel` (reaches channel and pattern subscribers) or `Shard` (shard subscribers only).
    pub kind: Kind,
    pub topic: Bytes,
    pub body: Body,
    pub scope: Scope,
    /// Sent by a WebSocket client as a text (true) or binary frame: kept for WebSocket
    /// subscribers. None: text if valid UTF-8.
    text: Option<bool>,
    line: OnceLock<Option<Bytes>>,
    resp2: OnceLock<Bytes>,
    resp3: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
}

/// The wire protocol a listener's connections speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Lines,
    Resp,
    WebSocket,
}

/// The frame a connection gets for a message: its protocol, and for RESP the version it
/// negotiated (`HELLO 3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Lines,
    Resp(Version),
    WebSocket,
}

impl Message {
    pub fn new(kind: Kind, topic: Bytes, body: Body) -> Self {
        debug_assert!(kind != Kind::Pattern, "a message is published on a channel");
        Message {
            kind,
            topic,
            body,
            scope: Scope::Local,
            text: None,
            line: OnceLock::new(),
            resp2: OnceLock::new(),
            resp3: OnceLock::new(),
            ws: OnceLock::new(),
        }
    }

    /// A message that arrived from the backbone.
    pub fn arrived(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Keeps a WebSocket publisher's frame type for WebSocket subscribers.
    pub fn sent_as_text(mut self, text: bool) -> Self {
        self.text = Some(text);
        self
    }

    /// Messages this holds (lines in a chunk; 1 for a payload).
    pub fn count(&self) -> usize {
        match &self.body {
            Body::Lines(chunk) => chunk.count,
            Body::Payload(_) => 1,
        }
    }

    /// Payload bytes, for the inbox's accounting.
    pub fn payload_bytes(&self) -> usize {
        match &self.body {
            Body::Lines(chunk) => chunk.bytes.len(),
            Body::Payload(p) => p.len(),
        }
    }

    /// Each payload: a line without its `\n`, or the published message.
    fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        let (lines, payload) = match &self.body {
            Body::Lines(chunk) => (Some(chunk.lines().map(|l| &l[..l.len() - 1])), None),
            Body::Payload(p) => (None, Some(&p[..])),
        };
        lines.into_iter().flatten().chain(payload)
    }

    /// The frame for a connection speaking `proto` subscribed to this message's channel (or
    /// shard channel). None when it cannot be framed for that protocol: a payload containing
    /// `\n` is never sent to line connections, where it would arrive as two lines.
    pub fn frame(&self, framing: Framing) -> Option<&Bytes> {
        match framing {
            Framing::Lines => self
                .line
                .get_or_init(|| match &self.body {
                    Body::Lines(chunk) => Some(chunk.bytes.clone()),
                    Body::Payload(p) if memchr::memchr(b'\n', p).is_some() => None,
                    Body::Payload(p) => {
                        let mut line = BytesMut::with_capacity(p.len() + 1);
                        line.put_slice(p);
                        line.put_u8(b'\n');
                        Some(line.freeze())
                    }
                })
                .as_ref(),
            Framing::Resp(version) => {
                let cell = match version {
                    Version::Resp2 => &self.resp2,
                    Version::Resp3 => &self.resp3,
                };
                Some(cell.get_or_init(|| {
                    let frame = |payload: &[u8]| match self.kind {
                        Kind::Shard => resp::smessage_frame(version, &self.topic, payload),
                        _ => resp::message_frame(version, &self.topic, payload),
                    };
                    concat(self.payloads().map(frame))
                }))
            }
            Framing::WebSocket => Some(self.ws.get_or_init(|| match self.text {
                Some(text) => {
                    let opcode = if text { Opcode::Text } else { Opcode::Binary };
                    concat(self.payloads().map(|p| ws::frame(opcode, p)))
                }
                None => concat(self.payloads().map(ws::message_frame)),
            })),
        }
    }

    /// The `pmessage` frame(s) for subscribers of `pattern`: build once per matching pattern.
    pub fn pattern_frame(&self, version: Version, pattern: &[u8]) -> Bytes {
        concat(
            self.payloads()
                .map(|payload| resp::pmessage_frame(version, pattern, &self.topic, payload)),
        )
    }
}

/// One `Bytes` of all `frames`, without a copy when there is one.
fn concat(mut frames: impl Iterator<Item = Bytes>) -> Bytes {
    let Some(first) = frames.next() else {
        return Bytes::new();
    };
    let Some(second) = frames.next() else {
        return first;
    };
    let mut all = BytesMut::with_capacity(first.len() * 2);
    all.put_slice(&first);
    all.put_slice(&second);
    for f in frames {
        all.put_slice(&f);
    }
    all.freeze()
}

pub const KINDS: [Kind; 3] = [Kind::Channel, Kind::Pattern, Kind::Shard];

fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Channel => 0,
        Kind::Pattern => 1,
        Kind::Shard => 2,
    }
}

/// One connection's membership of a topic, and its place in the topic's member list.
#[derive(Clone, Debug)]
pub struct Sub {
    pub kind: Kind,
    pub topic: Bytes,
    pub pos: usize,
}

/// This worker's topics and their local subscribers (connection slots).
#[derive(Debug, Default)]
pub struct TopicIndex {
    maps: [HashMap<Bytes, Vec<usize>>; 3],
}

impl TopicIndex {
    pub fn members(&self, kind: Kind, topic: &[u8]) -> &[usize] {
        self.maps[kind_index(kind)]
            .get(topic)
            .map_or(&[], |v| &v[..])
    }

    pub fn contains(&self, kind: Kind, topic: &[u8]) -> bool {
        self.maps[kind_index(kind)].contains_key(topic)
    }

    /// Distinct topics (channels, patterns and shard channels) with local subscribers.
    pub fn distinct(&self) -> usize {
        self.maps.iter().map(HashMap::len).sum()
    }

    /// Memberships over every topic (for consistency checks).
    pub fn total_members(&self) -> usize {
        self.maps
            .iter()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum()
    }

    /// The patterns with local subscribers, and those subscribers.
    pub fn patterns(&self) -> impl Iterator<Item = (&Bytes, &Vec<usize>)> {
        self.maps[kind_index(Kind::Pattern)].iter()
    }

    /// Local subscribers a `kind` message on `topic` reaches: its channel's and, for a channel,
    /// every matching pattern's (a connection with both counts twice, as in Redis).
    pub fn receivers(&self, kind: Kind, topic: &[u8]) -> usize {
        let mut n = self.members(kind, topic).len();
        if kind == Kind::Channel {
            n += self
                .patterns()
                .filter(|(p, _)| glob::matches(p, topic))
                .map(|(_, m)| m.len())
                .sum::<usize>();
        }
        n
    }

    /// Adds `slot`; returns its position in the member list.
    pub fn join(&mut self, kind: Kind, topic: &Bytes, slot: usize) -> usize {
        let members = self.maps[kind_index(kind)]
            .entry(topic.clone())
            .or_default();
        members.push(slot);
        members.len() - 1
    }

    /// Removes the member at `pos` (which must be `slot`); returns the slot moved into `pos`,
    /// whose [`Sub::pos`] must be updated.
    pub fn leave(&mut self, kind: Kind, topic: &[u8], pos: usize, slot: usize) -> Option<usize> {
        let map = &mut self.maps[kind_index(kind)];
        let members = map.get_mut(topic).expect("leaving a topic never joined");
        assert_eq!(members[pos], slot, "topic membership out of step");
        members.swap_remove(pos);
        let moved = members.get(pos).copied();
        if members.is_empty() {
            map.remove(topic);
        }
        moved
    }
}

/// A worker's subscriptions as the other workers see them: topic -> local subscribers.
#[derive(Debug, Default)]
pub struct Interest {
    maps: [HashMap<Bytes, u32>; 3],
}

impl Interest {
    /// Counts a subscriber; true if it is the topic's first here.
    pub fn add(&mut self, kind: Kind, topic: &Bytes) -> bool {
        let n = self.maps[kind_index(kind)]
            .entry(topic.clone())
            .or_insert(0);
        *n += 1;
        *n == 1
    }

    /// Uncounts a subscriber; true if it was the topic's last here.
    pub fn remove(&mut self, kind: Kind, topic: &[u8]) -> bool {
        let map = &mut self.maps[kind_index(kind)];
        let n = map.get_mut(topic).expect("interest removed twice");
        *n -= 1;
        if *n == 0 {
            map.remove(topic);
            return true;
        }
        false
    }

    /// Subscribers a `kind` message on `topic` reaches here (0: the worker needs no copy).
    pub fn receivers(&self, kind: Kind, topic: &[u8]) -> u64 {
        let mut n = self.count(kind, topic);
        if kind == Kind::Channel {
            n += self.maps[kind_index(Kind::Pattern)]
                .iter()
                .filter(|(p, _)| glob::matches(p, topic))
                .map(|(_, &c)| u64::from(c))
                .sum::<u64>();
        }
        n
    }

    /// Subscribers of exactly this topic of `kind`.
    pub fn count(&self, kind: Kind, topic: &[u8]) -> u64 {
        self.maps[kind_index(kind)]
            .get(topic)
            .map_or(0, |&c| u64::from(c))
    }

    /// The topics of `kind` with at least one subscriber.
    pub fn topics(&self, kind: Kind) -> impl Iterator<Item = &Bytes> {
        self.maps[kind_index(kind)].keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &'static [u8]) -> Message {
        let count = text.iter().filter(|&&b| b == b'\n').count();
        Message::new(
            Kind::Channel,
            Bytes::from_static(b"lines"),
            Body::Lines(Chunk {
                bytes: Bytes::from_static(text),
                count,
            }),
        )
    }

    #[test]
    fn a_chunk_of_lines_is_one_frame_per_protocol_built_once() {
        let m = lines(b"a\nbc\r\n");
        assert_eq!(&m.frame(Framing::Lines).unwrap()[..], b"a\nbc\r\n");
        let resp = m.frame(Framing::Resp(Version::Resp2)).unwrap();
        assert_eq!(
            &resp[..],
            b"*3\r\n$7\r\nmessage\r\n$5\r\nlines\r\n$1\r\na\r\n*3\r\n$7\r\nmessage\r\n$5\r\nlines\r\n$3\r\nbc\r\r\n"
        );
        // The same allocation every time: built once, shared.
        assert_eq!(
            resp.as_ptr(),
            m.frame(Framing::Resp(Version::Resp2)).unwrap().as_ptr()
        );
        assert_eq!(
            &m.pattern_frame(Version::Resp2, b"l*")[..],
            b"*4\r\n$8\r\npmessage\r\n$2\r\nl*\r\n$5\r\nlines\r\n$1\r\na\r\n*4\r\n$8\r\npmessage\r\n$2\r\nl*\r\n$5\r\nlines\r\n$3\r\nbc\r\r\n"
        );
    }

    #[test]
    fn a_payload_gets_a_newline_for_line_clients_unless_it_holds_one() {
        let m = Message::new(Kind::Channel, "t".into(), Body::Payload("x y".into()));
        assert_eq!(&m.frame(Framing::Lines).unwrap()[..], b"x y\n");
        let m = Message::new(Kind::Channel, "t".into(), Body::Payload("x\ny".into()));
        assert_eq!(m.frame(Framing::Lines), None);
        assert_eq!(
            &m.frame(Framing::Resp(Version::Resp2)).unwrap()[..],
            b"*3\r\n$7\r\nmessage\r\n$1\r\nt\r\n$3\r\nx\ny\r\n"
        );
        let s = Message::new(Kind::Shard, "t".into(), Body::Payload("".into()));
        assert_eq!(
            &s.frame(Framing::Resp(Version::Resp3)).unwrap()[..],
            b">3\r\n$8\r\nsmessage\r\n$1\r\nt\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn websocket_frames_keep_the_publishers_type_else_follow_utf8() {
        let m = lines(b"hi\n\xff\n");
        assert_eq!(
            &m.frame(Framing::WebSocket).unwrap()[..],
            b"\x81\x02hi\x82\x01\xff"
        );
        let bin = Message::new(Kind::Channel, "t".into(), Body::Payload("abc".into()))
            .sent_as_text(false);
        assert_eq!(&bin.frame(Framing::WebSocket).unwrap()[..], b"\x82\x03abc");
    }

    #[test]
    fn index_members_stay_in_step_through_swap_removes() {
        let mut ix = TopicIndex::default();
        let t = Bytes::from_static(b"t");
        assert_eq!(ix.join(Kind::Channel, &t, 10), 0);
        assert_eq!(ix.join(Kind::Channel, &t, 11), 1);
        assert_eq!(ix.join(Kind::Channel, &t, 12), 2);
        assert_eq!(ix.leave(Kind::Channel, b"t", 0, 10), Some(12));
        assert_eq!(ix.members(Kind::Channel, b"t"), &[12, 11]);
        assert_eq!(ix.leave(Kind::Channel, b"t", 1, 11), None);
        assert_eq!(ix.leave(Kind::Channel, b"t", 0, 12), None);
        assert_eq!(ix.distinct(), 0);
        ix.join(Kind::Pattern, &Bytes::from_static(b"t*"), 1);
        ix.join(Kind::Channel, &Bytes::from_static(b"tx"), 2);
        assert_eq!(ix.receivers(Kind::Channel, b"tx"), 2);
        assert_eq!(ix.receivers(Kind::Shard, b"tx"), 0);
    }

    #[test]
    fn interest_counts_patterns_and_forgets_empty_topics() {
        let mut i = Interest::default();
        let p = Bytes::from_static(b"news.*");
        i.add(Kind::Pattern, &p);
        i.add(Kind::Channel, &Bytes::from_static(b"news.a"));
        assert_eq!(i.receivers(Kind::Channel, b"news.a"), 2);
        assert_eq!(i.receivers(Kind::Channel, b"other"), 0);
        assert_eq!(i.receivers(Kind::Shard, b"news.a"), 0);
        i.remove(Kind::Pattern, b"news.*");
        assert_eq!(i.topics(Kind::Pattern).count(), 0);
    }
}
