//! RESP2 replies, byte for byte as redis-server writes them, each built with one exact-size
//! allocation.
//!
//! The pub/sub frames (`message`, `pmessage`, `smessage`) depend only on the message, never on
//! the subscriber: build one per message (per matching pattern for `pmessage`) and hand clones
//! of the same `Bytes` to every subscriber.

use bytes::{BufMut, Bytes, BytesMut};

/// The three kinds of subscription, each its own namespace with its own confirmations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `SUBSCRIBE`: exact channels, delivered as `message`.
    Channel,
    /// `PSUBSCRIBE`: glob patterns over channels, delivered as `pmessage`.
    Pattern,
    /// `SSUBSCRIBE`: sharded channels, delivered as `smessage`; `PUBLISH` never reaches them.
    Shard,
}

impl Kind {
    fn subscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"subscribe",
            Kind::Pattern => b"psubscribe",
            Kind::Shard => b"ssubscribe",
        }
    }

    fn unsubscribe_word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"unsubscribe",
            Kind::Pattern => b"punsubscribe",
            Kind::Shard => b"sunsubscribe",
        }
    }
}

/// The protocol a connection speaks: RESP2 (the default), or RESP3 after `HELLO 3`.
///
/// For pub/sub the two differ in the aggregate type of what the server pushes (confirmations
/// and messages are arrays `*` in RESP2, push frames `>` in RESP3) and in the null (`$-1` /
/// `_`); the frame of a message is built once per version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Version {
    #[default]
    Resp2,
    Resp3,
}

impl Version {
    /// The type byte of a pushed aggregate.
    fn push(self) -> u8 {
        match self {
            Version::Resp2 => b'*',
            Version::Resp3 => b'>',
        }
    }

    fn null(self) -> &'static [u8] {
        match self {
            Version::Resp2 => b"$-1\r\n",
            Version::Resp3 => b"_\r\n",
        }
    }
}

/// Decimal digits of `n`, with its sign.
fn int_len(n: i64) -> usize {
    let mut len = if n < 0 { 2 } else { 1 };
    let mut v = n.unsigned_abs();
    while v >= 10 {
        v /= 10;
        len += 1;
    }
    len
}

/// Bytes of `$len\r\n<data>\r\n`.
fn bulk_len(data: &[u8]) -> usize {
    1 + int_len(data.len() as i64) + 2 + data.len() + 2
}

/// Bytes of `*n\r\n`.
fn header_len(n: usize) -> usize {
    1 + int_len(n as i64) + 2
}

fn put_int(out: &mut BytesMut, n: i64) {
    // itoa without allocating: at most 20 digits and a sign.
    let mut digits = [0u8; 20];
    let mut v = n.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

fn put_line(out: &mut BytesMut, prefix: u8, n: i64) {
    out.put_u8(prefix);
    put_int(out, n);
    out.put_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_line(out, b'$', data.len() as i64);
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Builds a reply of exactly `len` bytes.
fn build(len: usize, fill: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(len);
    fill(&mut out);
    // A wrong length would mean a reallocation on every message: cheap to check, always.
    assert_eq!(out.len(), len, "reply length computed wrongly");
    out.freeze()
}

/// `+text\r\n`. Redis never lets a status carry a line break; neither does this.
pub fn simple(text: &[u8]) -> Bytes {
    build(1 + text.len() + 2, |out| {
        out.put_u8(b'+');
        out.extend(text.iter().map(|&b| no_line_break(b)));
        out.put_slice(b"\r\n");
    })
}

/// An error reply as Redis's `addReplyErrorLength`: `-ERR ` is prepended unless `text` starts
/// with `-` (which then names its own code, as `-NOPROTO ...`). `\r` and `\n` become spaces.
pub fn error(text: &[u8]) -> Bytes {
    let prefix: &[u8] = if text.first() == Some(&b'-') {
        b""
    } else {
        b"-ERR "
    };
    build(prefix.len() + text.len() + 2, |out| {
        out.put_slice(prefix);
        out.extend(text.iter().map(|&b| no_line_break(b)));
        out.put_slice(b"\r\n");
    })
}

fn no_line_break(b: u8) -> u8 {
    if b == b'\r' || b == b'\n' {
        b' '
    } else {
        b
    }
}

/// `:n\r\n`.
pub fn integer(n: i64) -> Bytes {
    build(1 + int_len(n) + 2, |out| put_line(out, b':', n))
}

/// `$len\r\ndata\r\n`.
pub fn bulk(data: &[u8]) -> Bytes {
    build(bulk_len(data), |out| put_bulk(out, data))
}

/// The null: `$-1\r\n` in RESP2, `_\r\n` in RESP3.
pub fn null(version: Version) -> Bytes {
    Bytes::from_static(version.null())
}

/// `%n\r\n`, RESP3's map header (`n` pairs), or in RESP2 the flat array of `2n` elements
/// Redis sends instead.
pub fn map_header(version: Version, n: usize) -> Bytes {
    match version {
        Version::Resp2 => array_header(n * 2),
        Version::Resp3 => build(header_len(n), |out| put_line(out, b'%', n as i64)),
    }
}

/// `*n\r\n`, for an array whose elements are written separately.
pub fn array_header(n: usize) -> Bytes {
    build(header_len(n), |out| put_line(out, b'*', n as i64))
}

/// An array of bulk strings.
pub fn bulk_array<T: AsRef<[u8]>>(items: &[T]) -> Bytes {
    let len = header_len(items.len()) + items.iter().map(|i| bulk_len(i.as_ref())).sum::<usize>();
    build(len, |out| {
        put_line(out, b'*', items.len() as i64);
        for item in items {
            put_bulk(out, item.as_ref());
        }
    })
}

/// `PUBSUB NUMSUB` / `SHARDNUMSUB`: channel, count, channel, count...
pub fn numsub<T: AsRef<[u8]>>(counts: &[(T, u64)]) -> Bytes {
    let len = header_len(counts.len() * 2)
        + counts
            .iter()
            .map(|(c, n)| bulk_len(c.as_ref()) + 1 + int_len(*n as i64) + 2)
            .sum::<usize>();
    build(len, |out| {
        put_line(out, b'*', (counts.len() * 2) as i64);
        for (channel, n) in counts {
            put_bulk(out, channel.as_ref());
            put_line(out, b':', *n as i64);
        }
    })
}

/// The confirmation of one (p|s)subscribe: `*3 $subscribe $<topic> :<count>`. `count` is the
/// connection's subscriptions afterwards: channels + patterns, or shard channels for `Shard`.
pub fn subscribed(version: Version, kind: Kind, topic: &[u8], count: usize) -> Bytes {
    confirmation(version, kind.subscribe_word(), Some(topic), count)
}

/// The confirmation of one (p|s)unsubscribe; `topic` is `None` (a null bulk) when the
/// connection asked to leave everything and had nothing to leave.
pub fn unsubscribed(version: Version, kind: Kind, topic: Option<&[u8]>, count: usize) -> Bytes {
    confirmation(version, kind.unsubscribe_word(), topic, count)
}

fn confirmation(version: Version, word: &[u8], topic: Option<&[u8]>, count: usize) -> Bytes {
    let topic_len = topic.map_or(version.null().len(), bulk_len);
    let len = 4 + bulk_len(word) + topic_len + 1 + int_len(count as i64) + 2;
    build(len, |out| {
        out.put_u8(version.push());
        out.put_slice(b"3\r\n");
        put_bulk(out, word);
        match topic {
            Some(t) => put_bulk(out, t),
            None => out.put_slice(version.null()),
        }
        put_line(out, b':', count as i64);
    })
}

/// `*3 $message $<channel> $<payload>`: what every subscriber of `channel` receives.
pub fn message_frame(version: Version, channel: &[u8], payload: &[u8]) -> Bytes {
    three(version, b"message", channel, payload)
}

/// `*3 $smessage $<channel> $<payload>`: what every shard subscriber of `channel` receives.
pub fn smessage_frame(version: Version, channel: &[u8], payload: &[u8]) -> Bytes {
    three(version, b"smessage", channel, payload)
}

fn three(version: Version, word: &[u8], channel: &[u8], payload: &[u8]) -> Bytes {
    let len = 4 + bulk_len(word) + bulk_len(channel) + bulk_len(payload);
    build(len, |out| {
        out.put_u8(version.push());
        out.put_slice(b"3\r\n");
        put_bulk(out, word);
        put_bulk(out, channel);
        put_bulk(out, payload);
    })
}

/// `*4 $pmessage $<pattern> $<channel> $<payload>`: what every subscriber of `pattern` receives
/// for a message on a matching channel.
pub fn pmessage_frame(version: Version, pattern: &[u8], channel: &[u8], payload: &[u8]) -> Bytes {
    let len = 4 + bulk_len(b"pmessage") + bulk_len(pattern) + bulk_len(channel) + bulk_len(payload);
    build(len, |out| {
        out.put_u8(version.push());
        out.put_slice(b"4\r\n");
        put_bulk(out, b"pmessage");
        put_bulk(out, pattern);
        put_bulk(out, channel);
        put_bulk(out, payload);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars() {
        assert_eq!(&simple(b"OK")[..], b"+OK\r\n");
        assert_eq!(&integer(0)[..], b":0\r\n");
        assert_eq!(&integer(-12)[..], b":-12\r\n");
        assert_eq!(&integer(i64::MIN)[..], b":-9223372036854775808\r\n");
        assert_eq!(&integer(i64::MAX)[..], b":9223372036854775807\r\n");
        assert_eq!(&bulk(b"")[..], b"$0\r\n\r\n");
        assert_eq!(&bulk(b"a\r\nb")[..], b"$4\r\na\r\nb\r\n");
        assert_eq!(&null(Version::Resp2)[..], b"$-1\r\n");
        assert_eq!(&null(Version::Resp3)[..], b"_\r\n");
        assert_eq!(&map_header(Version::Resp3, 7)[..], b"%7\r\n");
        assert_eq!(&map_header(Version::Resp2, 7)[..], b"*14\r\n");
        assert_eq!(&array_header(10)[..], b"*10\r\n");
        assert_eq!(
            &bulk_array(&[&b"a"[..], b"bc"])[..],
            b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n"
        );
        assert_eq!(&bulk_array::<&[u8]>(&[])[..], b"*0\r\n");
    }

    #[test]
    fn errors_get_a_code_and_lose_line_breaks() {
        assert_eq!(&error(b"unknown")[..], b"-ERR unknown\r\n");
        assert_eq!(&error(b"-NOPROTO x")[..], b"-NOPROTO x\r\n");
        assert_eq!(&error(b"a\r\nb")[..], b"-ERR a  b\r\n");
        assert_eq!(&error(b"")[..], b"-ERR \r\n");
    }

    #[test]
    fn pubsub_frames() {
        assert_eq!(
            &subscribed(Version::Resp2, Kind::Channel, b"news", 1)[..],
            b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
        );
        assert_eq!(
            &unsubscribed(Version::Resp2, Kind::Pattern, None, 0)[..],
            b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n"
        );
        assert_eq!(
            &unsubscribed(Version::Resp3, Kind::Pattern, None, 0)[..],
            b">3\r\n$12\r\npunsubscribe\r\n_\r\n:0\r\n"
        );
        assert_eq!(
            &unsubscribed(Version::Resp2, Kind::Shard, Some(b"s"), 12)[..],
            b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:12\r\n"
        );
        assert_eq!(
            &message_frame(Version::Resp2, b"ch", b"\0\r\n\xff")[..],
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\n\0\r\n\xff\r\n"
        );
        assert_eq!(
            &smessage_frame(Version::Resp3, b"ch", b"")[..],
            b">3\r\n$8\r\nsmessage\r\n$2\r\nch\r\n$0\r\n\r\n"
        );
        assert_eq!(
            &pmessage_frame(Version::Resp2, b"c*", b"ch", b"hi")[..],
            b"*4\r\n$8\r\npmessage\r\n$2\r\nc*\r\n$2\r\nch\r\n$2\r\nhi\r\n"
        );
        assert_eq!(
            &numsub(&[(&b"a"[..], 2u64)])[..],
            b"*2\r\n$1\r\na\r\n:2\r\n"
        );
    }

    #[test]
    fn lengths_are_exact_across_digit_boundaries() {
        // `build` asserts the computed length; cross every digit count of every field.
        for n in [0usize, 9, 10, 99, 100, 999, 1000, 12345] {
            let payload = vec![b'x'; n];
            assert_eq!(
                message_frame(Version::Resp3, b"c", &payload).len(),
                4 + 13 + 7 + bulk_len(&payload)
            );
            pmessage_frame(Version::Resp3, &payload, &payload, &payload);
            subscribed(Version::Resp2, Kind::Shard, &payload, n);
            unsubscribed(Version::Resp3, Kind::Channel, None, n);
            unsubscribed(Version::Resp2, Kind::Channel, None, n);
            numsub(&[(&payload, n as u64)]);
            bulk_array(&[&payload, &payload]);
            integer(n as i64);
            integer(-(n as i64));
        }
    }
}
