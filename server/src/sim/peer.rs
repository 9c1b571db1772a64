//! The fake peers: self-checking lines they publish, and the checks every received stream
//! passes (whole lines, in order per publisher, no gaps under the disconnect policy, never its
//! own with echo off, nothing after a protocol-error line).

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::RawFd;

use crate::topics::Proto;

use super::rng::Rng;

/// Longest pad of a normal line: `p<gid>.<seq>.<len>:<pad>\n` stays within 64 bytes.
pub(super) const PAD_MAX: u64 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PeerState {
    /// Connected, waiting in the listener's backlog.
    Backlog,
    /// Accepted: the server holds an fd for it.
    Open,
    /// The server closed its fd (or refused it).
    Gone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reader {
    Fast,
    Slow,
    Never,
}

/// What every peer's received stream is checked against.
pub(super) struct StreamCtx {
    pub(super) err_line: Vec<u8>,
    /// Disconnect policy: a subscriber gets a contiguous run of each publisher's lines (nothing is
    /// dropped, eviction only cuts the end). Under the drop policy gaps are allowed.
    pub(super) contiguous: bool,
    pub(super) echo: bool,
    pub(super) max_frame: usize,
}

/// Peers of worker `w` are numbered from `w * 1000`, RESP peers from `w * 1000 + 500` (a run has
/// fewer than 500 peers per worker), so a line names the protocol of its publisher.
pub(super) const RESP_GID_OFFSET: u64 = 500;

pub(super) fn is_resp_gid(gid: u64) -> bool {
    gid % 1000 >= RESP_GID_OFFSET
}

/// Pad byte `i` of line `seq` of peer `gid`: lines are self-checking.
pub(super) fn pad_byte(gid: u64, seq: u64, i: u64) -> u8 {
    b'a' + ((gid * 7 + seq * 13 + i) % 26) as u8
}

/// `p` (may publish) or `s` (accepted where publishing is off: must never be delivered).
pub(super) fn make_line(tag: u8, gid: u64, seq: u64, pad: u64) -> Vec<u8> {
    let mut v = format!("{}{gid}.{seq}.{pad}:", tag as char).into_bytes();
    v.extend((0..pad).map(|i| pad_byte(gid, seq, i)));
    v.push(b'\n');
    v
}

pub(super) struct Peer {
    pub(super) gid: u64,
    pub(super) listener: usize,
    /// Lines of this peer are delivered only if its listener lets connections publish.
    pub(super) tag: u8,
    /// What it speaks: lines, or RESP3 (see `resp.rs`).
    pub(super) proto: Proto,
    pub(super) fd: Option<RawFd>,
    pub(super) state: PeerState,

    pub(super) publish_pm: u32,
    pub(super) flood: bool,
    pub(super) overlong_pm: u32,
    pub(super) partial_pm: u32,
    pub(super) reader: Reader,
    /// Bytes the server may have sent that this peer has not read (socket buffers + window).
    pub(super) window: usize,
    pub(super) fin_at: Option<u32>,
    pub(super) reset_at: Option<u32>,
    pub(super) closes_on_eof: bool,

    /// Peer → server, not yet received by the server.
    pub(super) inbound: VecDeque<u8>,
    /// Rest of a line written in two pieces.
    pub(super) partial: Vec<u8>,
    pub(super) fin: bool,
    pub(super) reset: bool,
    pub(super) next_seq: u64,
    pub(super) sent_overlong: bool,

    /// Server → peer, not yet read by the peer.
    pub(super) to_peer: VecDeque<u8>,
    pub(super) server_fin: bool,
    pub(super) eof_seen: bool,
    /// Read, not yet a whole line.
    pub(super) rx: Vec<u8>,
    pub(super) err_seen: bool,
    pub(super) last_seq: BTreeMap<u64, u64>,
    pub(super) lines: u64,
    /// Lines of RESP peers read by this line peer.
    pub(super) lines_from_resp: u64,
    /// RESP: how far its stream got (`HELLO` reply, subscribe confirmation, `PUBLISH` replies).
    pub(super) resp: RespRx,
}

/// A RESP peer's conversation: what its commands asked for and what it has read.
#[derive(Debug, Default)]
pub(super) struct RespRx {
    /// The reply (or confirmation push) each command sent asks for, oldest first.
    pub(super) expect: VecDeque<Expect>,
    /// Its subscription to the lines topic was confirmed: messages may come.
    pub(super) confirmed: bool,
    /// `PUBLISH` replies read (reply k answers line k).
    pub(super) replies: u64,
    /// Answers read to `PING` and to (un)subscribing the side channel.
    pub(super) others: u64,
    /// It holds the side channel, as of the commands it sent.
    pub(super) side: bool,
    /// Odds (per mille) that a command it sends is not a `PUBLISH` but `SUBSCRIBE` or
    /// `UNSUBSCRIBE` of the side channel, or `PING`.
    pub(super) other_pm: u32,
}

/// What a RESP peer expects for one command it sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Expect {
    Hello,
    /// The confirmation push of `(un)subscribe` of this channel, with this count.
    Subscribed(&'static [u8], i64),
    Unsubscribed(&'static [u8], i64),
    Pong,
    /// The reply to `PUBLISH` of line k.
    Published(u64),
}

impl Peer {
    pub(super) fn new(
        gid: u64,
        listener: usize,
        (proto, tag): (Proto, u8),
        step: u32,
        rng: &mut Rng,
    ) -> Self {
        let mut p = Peer {
            gid,
            listener,
            tag,
            proto,
            fd: None,
            state: PeerState::Backlog,
            publish_pm: rng.pick(&[0, 30, 150, 500, 900]),
            flood: rng.chance(150),
            overlong_pm: if rng.chance(150) {
                rng.range(5, 80) as u32
            } else {
                0
            },
            partial_pm: rng.pick(&[0, 300]),
            reader: match rng.below(100) {
                0..=59 => Reader::Fast,
                60..=84 => Reader::Slow,
                _ => Reader::Never,
            },
            window: rng.range(16, 600) as usize,
            fin_at: rng.chance(300).then(|| step + rng.range(1, 250) as u32),
            reset_at: rng.chance(100).then(|| step + rng.range(1, 300) as u32),
            closes_on_eof: rng.chance(850),
            inbound: VecDeque::new(),
            partial: Vec::new(),
            fin: false,
            reset: false,
            next_seq: 0,
            sent_overlong: false,
            to_peer: VecDeque::new(),
            server_fin: false,
            eof_seen: false,
            rx: Vec::new(),
            err_seen: false,
            last_seq: BTreeMap::new(),
            lines: 0,
            lines_from_resp: 0,
            resp: RespRx::default(),
        };
        if proto == Proto::Resp {
            // A RESP peer never sends an over-long line: its commands are well-formed.
            p.overlong_pm = 0;
            p.resp.other_pm = rng.pick(&[0, 0, 50, 300]);
            p.write_handshake(rng);
        }
        p
    }

    pub(super) fn write_line(&mut self, rng: &mut Rng, max_frame: usize) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.inbound.extend(rest);
        }
        let line = if self.proto == Proto::Resp {
            self.next_command(rng)
        } else if rng.chance(self.overlong_pm) {
            self.sent_overlong = true;
            let mut v = vec![b'X'; max_frame + rng.range(0, max_frame as u64) as usize];
            v.push(b'\n');
            v
        } else {
            let seq = self.next_seq;
            self.next_seq += 1;
            make_line(self.tag, self.gid, seq, rng.range(0, PAD_MAX))
        };
        if line.len() > 2 && rng.chance(self.partial_pm) {
            let cut = rng.range(1, line.len() as u64 - 1) as usize;
            self.inbound.extend(&line[..cut]);
            self.partial = line[cut..].to_vec();
        } else {
            self.inbound.extend(line);
        }
    }

    /// Takes bytes the peer read; checks every line (or RESP value) they complete.
    pub(super) fn receive(&mut self, bytes: &[u8], ctx: &StreamCtx) -> Result<u64, String> {
        self.rx.extend_from_slice(bytes);
        if self.proto == Proto::Resp {
            return self.receive_resp(ctx);
        }
        let mut checked = 0;
        while let Some(nl) = self.rx.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.rx.drain(..=nl).collect();
            self.check_line(&line[..nl], ctx)?;
            checked += 1;
        }
        if self.rx.len() > ctx.max_frame.max(ctx.err_line.len() + 1) {
            return Err(format!(
                "peer {} received {} bytes without a newline: {:?}",
                self.gid,
                self.rx.len(),
                String::from_utf8_lossy(&self.rx[..self.rx.len().min(80)])
            ));
        }
        Ok(checked)
    }

    pub(super) fn check_line(&mut self, line: &[u8], ctx: &StreamCtx) -> Result<(), String> {
        let who = self.gid;
        let shown = || String::from_utf8_lossy(&line[..line.len().min(90)]).into_owned();
        if self.err_seen {
            return Err(format!(
                "peer {who} received {:?} after its protocol-error line",
                shown()
            ));
        }
        if line == &ctx.err_line[..] {
            if !self.sent_overlong {
                return Err(format!(
                    "peer {who} received the protocol-error line but never sent an over-long line"
                ));
            }
            self.err_seen = true;
            return Ok(());
        }
        let parsed = parse_line(line);
        let Some((tag, gid, seq)) = parsed else {
            return Err(format!("peer {who} received a garbled line {:?}", shown()));
        };
        if tag == b's' {
            return Err(format!(
                "peer {who} received {:?}, published by a connection that may not publish",
                shown()
            ));
        }
        // RINGFAN_ECHO concerns line clients only: a RESP subscriber gets its own messages.
        if !ctx.echo && gid == who && self.proto == Proto::Lines {
            return Err(format!(
                "peer {who} received its own line {:?} with RINGFAN_ECHO=0",
                shown()
            ));
        }
        if let Some(&last) = self.last_seq.get(&gid) {
            if seq <= last {
                return Err(format!(
                    "peer {who} received line {seq} of peer {gid} after line {last} (duplicate or reordered)"
                ));
            }
            if ctx.contiguous && seq != last + 1 {
                return Err(format!(
                    "peer {who} received line {seq} of peer {gid} right after line {last}: lines lost in between"
                ));
            }
        }
        self.last_seq.insert(gid, seq);
        self.lines += 1;
        if self.proto == Proto::Lines && is_resp_gid(gid) {
            self.lines_from_resp += 1;
        }
        Ok(())
    }
}

/// Parses `<tag><gid>.<seq>.<pad>:<pad bytes>`; None unless every byte is as generated.
pub(super) fn parse_line(line: &[u8]) -> Option<(u8, u64, u64)> {
    let (&tag, rest) = line.split_first()?;
    if tag != b'p' && tag != b's' {
        return None;
    }
    let colon = rest.iter().position(|&b| b == b':')?;
    let head = std::str::from_utf8(&rest[..colon]).ok()?;
    let mut it = head.split('.');
    let gid: u64 = it.next()?.parse().ok()?;
    let seq: u64 = it.next()?.parse().ok()?;
    let pad: u64 = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    let body = &rest[colon + 1..];
    if body.len() as u64 != pad {
        return None;
    }
    body.iter()
        .enumerate()
        .all(|(i, &b)| b == pad_byte(gid, seq, i as u64))
        .then_some((tag, gid, seq))
}
