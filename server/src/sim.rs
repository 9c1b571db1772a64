//! A deterministic, fault-injecting simulated ring under real [`Worker`]s.
//!
//! [`SimDriver`] implements [`ring::Driver`] with io_uring's completion semantics and fake peers
//! (fds from 900 000 up, reused lowest-first as the kernel does, so the server's few real
//! syscalls on them, setsockopt and SO_LINGER, fail with EBADF and touch nothing). Everything is
//! decided by one seed through a self-contained PRNG: the configuration (1 or 2 workers, limits,
//! timeouts, buffer pool, policies), the peers' behaviour, the faults, the completion order, the
//! clock passed to [`Worker::turn`]. Each run ends with a shutdown, set as `main.rs` sets it.
//!
//! Semantics kept (as io_uring does):
//! - submissions are executed in order when the simulator submits after a loop turn;
//! - multishot accept: one completion per fd with `more`; multishot recv into a bounded pool of
//!   provided buffers: data with `more`, FIN as a final 0, `-ENOBUFS` final when no buffer is
//!   left, `-ECONNRESET` final after a peer reset (then EOF, as the kernel reports the error once);
//! - `send_msg` copies the iovecs at submit time and reads them again when it completes (the
//!   kernel reads them when it runs), so memory changed under an in-flight send is caught; a send
//!   moves what fits the peer's window (a short count, or a random short one), blocks on a full
//!   window (peers that never read), fails with `-ECONNRESET`/`-EPIPE` after a reset;
//! - `cancel_fd` ends every running operation on the fd with a final `-ECANCELED`, possibly in a
//!   later batch than the cancel's own completion (late); a blocked send may survive one cancel
//!   (it was already running), as io_uring allows; `cancel(target)` likewise (a surviving send:
//!   `-EALREADY`), or `-ENOENT`;
//! - completion order varies per batch: completions of different operations are reordered and may
//!   be held back to a later batch; the completions of one `user_data` keep their order (data in
//!   order, the final one last);
//! - CQ overflow ends a multishot early (final with a non-error result), so the server re-arms;
//!   accept fails now and then with `-EMFILE`;
//! - SQ-full is flushed inside real drivers and never visible to the caller: not modelled.
//!
//! Peers connect, publish self-checking lines (some written in two pieces, some over-long), read
//! fast, slowly or never, FIN at random or after the server's FIN, reset at any point (also in
//! the backlog, during a blocked flush and right after SHUT_WR).
//!
//! Checked after every loop turn ([`Sim::check_worker`]), at submission time (in the driver) and
//! at the end of each run:
//! - no slot is freed while an operation of it is in flight; `close` is never submitted while an
//!   operation on the fd is outstanding (submitted, final completion not yet reaped); no fd is
//!   closed twice, no operation is submitted on a closed fd or on another connection's fd;
//! - at most one send (and one recv) in flight per fd; no send after SHUT_WR, no SHUT_WR during
//!   a send; the memory of an in-flight send is left alone;
//! - nothing is queued for a connection after its subscription dropped (the protocol-error line
//!   is queued before it drops);
//! - provided buffers: those handed to the server are exactly those its connections hold
//!   (none leaked), none recycled twice or read when not held; all back in the pool at the end;
//! - the server's in-flight flags, cancel counts and subscriber list match the ring;
//! - every peer's received stream is whole lines, each exactly as published, in order per
//!   publisher, without gaps under the disconnect policy, never its own with echo off, never from
//!   a connection that may not publish, nothing after a protocol-error line;
//! - after shutdown every connection is freed in bounded time and `turn` returns true, with
//!   nothing left in flight.
//!
//! Replay one seed: `RINGFAN_SIM_SEED=<n> cargo test -p ringfan --lib sim -- --nocapture`
//! (add `RINGFAN_SIM_TRACE=1` for the whole trace). `RINGFAN_SIM_SEEDS=<count>` and
//! `RINGFAN_SIM_SEED_BASE=<first>` choose the seeds the main test runs (for longer soaks).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::{Completion, Doorbell, Driver, DriverStats, Op, UserData};

use crate::config::Config;
use crate::hub::Shared;
use crate::lifecycle::{Closing, ReadHalf, WriteHalf};
use crate::worker::Worker;

/// First fake fd; worker `w` uses `FD_BASE + w * FD_STRIDE` upward.
const FD_BASE: RawFd = 900_000;
const FD_STRIDE: RawFd = 10_000;
/// Slots at or above this are the worker's listeners (and the doorbell), not connections.
const LISTENER_SLOT_MIN: u32 = u32::MAX - 8;
/// Bytes a peer can have written that the server has not received yet (its socket buffers).
const INBOUND_MAX: usize = 4096;
/// Longest pad of a normal line: `p<gid>.<seq>.<len>:<pad>\n` stays within 64 bytes.
const PAD_MAX: u64 = 40;
/// Events kept for a failure report, and how many of them are printed.
const TRACE_KEEP: usize = 30;

// ---- PRNG ------------------------------------------------------------------------------------

/// SplitMix64: tiny, fast, and good enough to drive a simulation.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.below(1000) < per_mille as u64
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    fn fork(&mut self) -> Rng {
        Rng::new(self.next())
    }
}

// ---- trace -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum PeerEv {
    Arrive,
    Publish,
    Overlong,
    Read,
    Eof,
    Fin,
    Reset,
    Refused,
}

#[derive(Clone, Debug)]
enum Ev {
    Step {
        step: u32,
        ms: u64,
    },
    Shutdown,
    Submit {
        w: usize,
        op: Op,
        fd: RawFd,
        ud: UserData,
        arg: i64,
    },
    Deliver {
        w: usize,
        c: Completion,
        late: bool,
    },
    Turn {
        w: usize,
        conns: usize,
    },
    Peer {
        w: usize,
        gid: u64,
        fd: Option<RawFd>,
        what: PeerEv,
        n: usize,
    },
    Note(String),
}

fn fmt_ud(ud: UserData) -> String {
    if ud.slot() >= LISTENER_SLOT_MIN {
        format!("listener {}", (u32::MAX - 1).wrapping_sub(ud.slot()))
    } else {
        format!("slot {} gen {}", ud.slot(), ud.generation())
    }
}

fn op_name(op: Option<Op>) -> &'static str {
    op.map(Op::name).unwrap_or("?")
}

impl fmt::Display for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ev::Step { step, ms } => write!(f, "---- step {step}, t = {ms} ms"),
            Ev::Shutdown => write!(f, "shutdown flag set"),
            Ev::Submit { w, op, fd, ud, arg } => {
                write!(f, "w{w} submit {:<8} fd {fd} ({})", op.name(), fmt_ud(*ud))?;
                match op {
                    Op::Send => write!(f, " {arg} bytes"),
                    Op::Cancel if *arg != 0 => {
                        write!(f, " target {}", fmt_ud(UserData::from_u64(*arg as u64)))
                    }
                    _ => Ok(()),
                }
            }
            Ev::Deliver { w, c, late } => {
                let res = if c.result < 0 {
                    format!("-{}", errno_name(-c.result))
                } else {
                    c.result.to_string()
                };
                write!(
                    f,
                    "w{w} complete {:<8} ({}) result {res}{}{}{}",
                    op_name(c.user_data.op()),
                    fmt_ud(c.user_data),
                    if c.more { " MORE" } else { " final" },
                    c.buffer.map(|b| format!(" buf {b}")).unwrap_or_default(),
                    if *late { " (held back)" } else { "" }
                )
            }
            Ev::Turn { w, conns } => write!(f, "w{w} turn: {conns} connections"),
            Ev::Peer {
                w,
                gid,
                fd,
                what,
                n,
            } => {
                write!(f, "w{w} peer {gid}")?;
                if let Some(fd) = fd {
                    write!(f, " (fd {fd})")?;
                }
                write!(f, ": {what:?}")?;
                if *n > 0 {
                    write!(f, " {n}")?;
                }
                Ok(())
            }
            Ev::Note(s) => write!(f, "{s}"),
        }
    }
}

fn errno_name(e: i32) -> String {
    match e {
        libc::ECANCELED => "ECANCELED".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ENOBUFS => "ENOBUFS".into(),
        libc::ENOTCONN => "ENOTCONN".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EMFILE => "EMFILE".into(),
        libc::EBADF => "EBADF".into(),
        e => format!("errno {e}"),
    }
}

struct Trace {
    events: VecDeque<Ev>,
    /// Keep every event (replay with RINGFAN_SIM_TRACE=1), not only the last few.
    all: bool,
}

impl Trace {
    fn push(&mut self, ev: Ev) {
        if !self.all && self.events.len() >= TRACE_KEEP {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }
}

type SharedTrace = Rc<RefCell<Trace>>;

// ---- violations and coverage -----------------------------------------------------------------

/// A broken invariant: `kind` names it (tests match on it), `detail` says what happened.
#[derive(Clone, Debug)]
struct Violation {
    kind: &'static str,
    detail: String,
}

impl Violation {
    fn new(kind: &'static str, detail: String) -> Self {
        Violation { kind, detail }
    }
}

macro_rules! coverage {
    ($($name:ident),* $(,)?) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug)]
        enum Cov { $($name),* }
        const COV_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

coverage!(
    runs,
    two_workers,
    publish_listener,
    steps,
    turns,
    accepted,
    refused,
    short_sends,
    blocked_sends,
    send_errors,
    send_enobufs,
    recv_enobufs,
    cq_overflow,
    held_back,
    late_cancels,
    survived_cancels,
    cancel_not_found,
    resets,
    resets_after_shut_wr,
    resets_during_flush,
    fins,
    overlong_lines,
    accept_emfile,
    stale_completions,
    protocol_errors,
    evicted_slow,
    close_timeouts,
    shutdown_aborted,
    recv_paused,
    slow_timeouts,
    messages_dropped,
    lines_checked,
);

#[derive(Clone, Debug)]
struct Coverage([u64; COV_NAMES.len()]);

impl Default for Coverage {
    fn default() -> Self {
        Coverage([0; COV_NAMES.len()])
    }
}

impl Coverage {
    fn bump(&mut self, c: Cov) {
        self.0[c as usize] += 1;
    }
    fn add_n(&mut self, c: Cov, n: u64) {
        self.0[c as usize] += n;
    }
    fn add(&mut self, o: &Coverage) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }
    fn get(&self, c: Cov) -> u64 {
        self.0[c as usize]
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, name) in COV_NAMES.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{name} {}", self.0[i])?;
        }
        Ok(())
    }
}

// ---- knobs -----------------------------------------------------------------------------------

/// Everything a seed decides up front: the server's configuration and the fault rates
/// (per mille).
#[derive(Clone, Debug)]
struct Knobs {
    workers: usize,
    publish_listener: bool,
    max_frame: usize,
    queue_max: usize,
    close_timeout_ms: u64,
    shutdown_timeout_ms: u64,
    read_budget: usize,
    recv_buffers: u16,
    recv_buffer_bytes: usize,
    drop_policy: bool,
    slow_timeout_ms: u64,
    max_connections: usize,
    echo: bool,
    run_steps: u32,
    max_peers: usize,
    arrive_pm: u32,
    short_pm: u32,
    hold_pm: u32,
    late_pm: u32,
    overflow_pm: u32,
    emfile_pm: u32,
    send_enobufs_pm: u32,
    survive_pm: u32,
    reset_after_shut_pm: u32,
    reset_on_block_pm: u32,
    /// Broken-driver mode: cancelled operations never post their final completion.
    lose_cancel_finals: bool,
}

impl Knobs {
    fn random(rng: &mut Rng) -> Self {
        Knobs {
            workers: if rng.chance(300) { 2 } else { 1 },
            publish_listener: rng.chance(150),
            max_frame: rng.range(64, 160) as usize,
            queue_max: rng.pick(&[200, 600, 1500, 4000, 20_000]),
            close_timeout_ms: rng.range(20, 600),
            shutdown_timeout_ms: rng.range(100, 3000),
            read_budget: rng.range(16, 1024) as usize,
            recv_buffers: rng.pick(&[2, 4, 8, 16, 64]),
            recv_buffer_bytes: rng.range(64, 300) as usize,
            drop_policy: rng.chance(250),
            slow_timeout_ms: if rng.chance(500) {
                0
            } else {
                rng.range(30, 2000)
            },
            max_connections: rng.range(2, 16) as usize,
            echo: rng.chance(800),
            run_steps: rng.range(30, 500) as u32,
            max_peers: rng.range(2, 24) as usize,
            arrive_pm: rng.range(20, 300) as u32,
            short_pm: rng.pick(&[0, 100, 400, 800]),
            hold_pm: rng.pick(&[0, 50, 200, 400]),
            late_pm: rng.pick(&[0, 300, 700, 1000]),
            overflow_pm: rng.pick(&[0, 0, 20, 100]),
            emfile_pm: rng.pick(&[0, 0, 0, 30]),
            send_enobufs_pm: rng.pick(&[0, 0, 20]),
            survive_pm: rng.pick(&[0, 100, 400]),
            reset_after_shut_pm: rng.pick(&[0, 100, 300]),
            reset_on_block_pm: rng.pick(&[0, 30, 100]),
            lose_cancel_finals: false,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("RINGFAN_MAX_FRAME_BYTES", self.max_frame.to_string()),
            ("RINGFAN_SEND_QUEUE_BYTES_MAX", self.queue_max.to_string()),
            (
                "RINGFAN_CLOSE_TIMEOUT_MS",
                self.close_timeout_ms.to_string(),
            ),
            (
                "RINGFAN_SHUTDOWN_TIMEOUT_MS",
                self.shutdown_timeout_ms.to_string(),
            ),
            ("RINGFAN_READ_BUDGET_BYTES", self.read_budget.to_string()),
            ("RINGFAN_RECV_BUFFERS", self.recv_buffers.to_string()),
            (
                "RINGFAN_RECV_BUFFER_BYTES",
                self.recv_buffer_bytes.to_string(),
            ),
            (
                "RINGFAN_SLOW_CONSUMER",
                if self.drop_policy {
                    "drop"
                } else {
                    "disconnect"
                }
                .to_string(),
            ),
            (
                "RINGFAN_SLOW_CONSUMER_TIMEOUT_MS",
                self.slow_timeout_ms.to_string(),
            ),
            ("RINGFAN_MAX_CONNECTIONS", self.max_connections.to_string()),
            (
                "RINGFAN_ECHO",
                if self.echo { "1" } else { "0" }.to_string(),
            ),
            ("RINGFAN_KEEPALIVE_SECS", "0".to_string()),
            ("RINGFAN_USER_TIMEOUT_MS", "0".to_string()),
            ("RINGFAN_THREADS", self.workers.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if self.publish_listener {
            env.push((
                "RINGFAN_PUBLISH_LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ));
        }
        env
    }
}

// ---- peers -----------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerState {
    /// Connected, waiting in the listener's backlog.
    Backlog,
    /// Accepted: the server holds an fd for it.
    Open,
    /// The server closed its fd (or refused it).
    Gone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    Fast,
    Slow,
    Never,
}

/// What every peer's received stream is checked against.
struct StreamCtx {
    err_line: Vec<u8>,
    /// Disconnect policy: a subscriber gets a contiguous run of each publisher's lines (nothing is
    /// dropped, eviction only cuts the end). Under the drop policy gaps are allowed.
    contiguous: bool,
    echo: bool,
    max_frame: usize,
}

/// Pad byte `i` of line `seq` of peer `gid`: lines are self-checking.
fn pad_byte(gid: u64, seq: u64, i: u64) -> u8 {
    b'a' + ((gid * 7 + seq * 13 + i) % 26) as u8
}

/// `p` (may publish) or `s` (accepted where publishing is off: must never be delivered).
fn make_line(tag: u8, gid: u64, seq: u64, pad: u64) -> Vec<u8> {
    let mut v = format!("{}{gid}.{seq}.{pad}:", tag as char).into_bytes();
    v.extend((0..pad).map(|i| pad_byte(gid, seq, i)));
    v.push(b'\n');
    v
}

struct Peer {
    gid: u64,
    listener: usize,
    /// Lines of this peer are delivered only if its listener lets connections publish.
    tag: u8,
    fd: Option<RawFd>,
    state: PeerState,

    publish_pm: u32,
    flood: bool,
    overlong_pm: u32,
    partial_pm: u32,
    reader: Reader,
    /// Bytes the server may have sent that this peer has not read (socket buffers + window).
    window: usize,
    fin_at: Option<u32>,
    reset_at: Option<u32>,
    closes_on_eof: bool,

    /// Peer → server, not yet received by the server.
    inbound: VecDeque<u8>,
    /// Rest of a line written in two pieces.
    partial: Vec<u8>,
    fin: bool,
    reset: bool,
    next_seq: u64,
    sent_overlong: bool,

    /// Server → peer, not yet read by the peer.
    to_peer: VecDeque<u8>,
    server_fin: bool,
    eof_seen: bool,
    /// Read, not yet a whole line.
    rx: Vec<u8>,
    err_seen: bool,
    last_seq: BTreeMap<u64, u64>,
    lines: u64,
}

impl Peer {
    fn new(gid: u64, listener: usize, tag: u8, step: u32, rng: &mut Rng) -> Self {
        Peer {
            gid,
            listener,
            tag,
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
        }
    }

    fn write_line(&mut self, rng: &mut Rng, max_frame: usize) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.inbound.extend(rest);
        }
        let line = if rng.chance(self.overlong_pm) {
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

    /// Takes bytes the peer read; checks every line they complete.
    fn receive(&mut self, bytes: &[u8], ctx: &StreamCtx) -> Result<u64, String> {
        self.rx.extend_from_slice(bytes);
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

    fn check_line(&mut self, line: &[u8], ctx: &StreamCtx) -> Result<(), String> {
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
        if !ctx.echo && gid == who {
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
        Ok(())
    }
}

/// Parses `<tag><gid>.<seq>.<pad>:<pad bytes>`; None unless every byte is as generated.
fn parse_line(line: &[u8]) -> Option<(u8, u64, u64)> {
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

// ---- the simulated ring ----------------------------------------------------------------------

type OpId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Accept(usize),
    Recv,
    Send,
    Shutdown,
    Close,
    CancelFd,
    Cancel(UserData),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Accept(_) => "accept",
            Kind::Recv => "recv",
            Kind::Send => "send",
            Kind::Shutdown => "shutdown",
            Kind::Close => "close",
            Kind::CancelFd => "cancel_fd",
            Kind::Cancel(_) => "cancel",
        }
    }

    /// Operations that stay armed after execution until something completes them.
    fn waits(self) -> bool {
        matches!(self, Kind::Accept(_) | Kind::Recv | Kind::Send)
    }
}

/// One submitted operation whose final completion the server has not received yet.
struct OpState {
    ud: UserData,
    fd: RawFd,
    kind: Kind,
    /// Executed by `submit` (until then it sits in the submission queue).
    executed: bool,
    /// Its final completion is in the completion queue (or was lost, in the broken mode).
    final_posted: bool,
    blocked: bool,
    /// A cancel already missed it once.
    survived: bool,
    /// The send's msghdr and the bytes it pointed at when submitted.
    msg: *const libc::msghdr,
    data: Vec<u8>,
}

struct Cqe {
    op: OpId,
    c: Completion,
    not_before: u64,
    holds: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufState {
    /// In the pool: the kernel may fill it.
    Kernel,
    /// Filled, its completion not yet handed to the server.
    Posted,
    /// Handed to the server, not yet recycled.
    Server,
}

/// A server-side socket: an accepted fd not yet closed.
struct Sock {
    peer: usize,
    /// (slot, generation) of the first operation submitted on it.
    owner: Option<(u32, u32)>,
    shut_wr: bool,
    close_submitted: bool,
    /// A peer reset no operation has reported yet (the kernel reports it once).
    err_pending: bool,
}

pub(crate) struct SimDriver {
    w: usize,
    rng: Rng,
    k: Knobs,
    doorbell: Doorbell,
    trace: SharedTrace,
    step: u32,
    batch: u64,
    next_op: OpId,
    sq: Vec<OpId>,
    ops: BTreeMap<OpId, OpState>,
    cq: Vec<Cqe>,
    buf_size: usize,
    bufs: Vec<Vec<u8>>,
    buf_len: Vec<usize>,
    buf_state: Vec<BufState>,
    free: VecDeque<u16>,
    listeners: Vec<RawFd>,
    socks: BTreeMap<RawFd, Sock>,
    closed_fds: BTreeSet<RawFd>,
    peers: Vec<Peer>,
    next_gid: u64,
    /// Fds handed out by accept completions in the last `completions` call.
    accepted_now: Vec<RawFd>,
    violations: RefCell<Vec<Violation>>,
    cov: Coverage,
    cq_overflows: u64,
}

impl SimDriver {
    fn new(w: usize, rng: Rng, k: &Knobs, trace: SharedTrace, listeners: Vec<RawFd>) -> Self {
        let n = k.recv_buffers as usize;
        SimDriver {
            w,
            rng,
            k: k.clone(),
            doorbell: Doorbell::new().expect("eventfd"),
            trace,
            step: 0,
            batch: 0,
            next_op: 1,
            sq: Vec::new(),
            ops: BTreeMap::new(),
            cq: Vec::new(),
            buf_size: k.recv_buffer_bytes,
            bufs: vec![vec![0; k.recv_buffer_bytes]; n],
            buf_len: vec![0; n],
            buf_state: vec![BufState::Kernel; n],
            free: (0..n as u16).collect(),
            listeners,
            socks: BTreeMap::new(),
            closed_fds: BTreeSet::new(),
            peers: Vec::new(),
            next_gid: (w as u64) * 1000,
            accepted_now: Vec::new(),
            violations: RefCell::new(Vec::new()),
            cov: Coverage::default(),
            cq_overflows: 0,
        }
    }

    fn violate(&self, kind: &'static str, detail: String) {
        self.violations
            .borrow_mut()
            .push(Violation::new(kind, detail));
    }

    fn trace(&self, ev: Ev) {
        self.trace.borrow_mut().push(ev);
    }

    fn peer_ev(&self, i: usize, what: PeerEv, n: usize) {
        let p = &self.peers[i];
        self.trace(Ev::Peer {
            w: self.w,
            gid: p.gid,
            fd: p.fd,
            what,
            n,
        });
    }

    /// Operations on `fd` whose final completion the server has not received.
    fn outstanding_on(&self, fd: RawFd) -> Vec<String> {
        self.ops
            .values()
            .filter(|o| o.fd == fd)
            .map(|o| {
                format!(
                    "{} ({}){}",
                    o.kind.name(),
                    fmt_ud(o.ud),
                    if o.final_posted {
                        ", final completion not yet reaped"
                    } else {
                        ""
                    }
                )
            })
            .collect()
    }

    fn has_outstanding(&self, fd: RawFd, kind: Kind) -> bool {
        self.ops.values().any(|o| o.fd == fd && o.kind == kind)
    }

    /// Checks that `fd` is an open, accepted socket used by one connection only.
    fn check_sock(&mut self, fd: RawFd, ud: UserData, what: &str) {
        if self.listeners.contains(&fd) {
            return self.violate(
                "op-on-listener",
                format!("{what} ({}) submitted on listener fd {fd}", fmt_ud(ud)),
            );
        }
        match self.socks.get_mut(&fd) {
            None if self.closed_fds.contains(&fd) => self.violate(
                if what == "close" {
                    "double-close"
                } else {
                    "op-on-closed-fd"
                },
                format!(
                    "{what} ({}) submitted on fd {fd}, already closed",
                    fmt_ud(ud)
                ),
            ),
            None => self.violate(
                "op-on-unknown-fd",
                format!(
                    "{what} ({}) submitted on fd {fd}, never accepted",
                    fmt_ud(ud)
                ),
            ),
            Some(s) if s.close_submitted => {
                let kind = if what == "close" {
                    "double-close"
                } else {
                    "op-on-closed-fd"
                };
                self.violate(
                    kind,
                    format!(
                        "{what} ({}) submitted on fd {fd} after its close was submitted",
                        fmt_ud(ud)
                    ),
                )
            }
            Some(s) => {
                let me = (ud.slot(), ud.generation());
                match s.owner {
                    None => s.owner = Some(me),
                    Some(owner) if owner != me => self.violate(
                        "fd-shared",
                        format!(
                            "{what} ({}) submitted on fd {fd}, which belongs to slot {} gen {}",
                            fmt_ud(ud),
                            owner.0,
                            owner.1
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    fn push_op(
        &mut self,
        ud: UserData,
        fd: RawFd,
        kind: Kind,
        msg: *const libc::msghdr,
        data: Vec<u8>,
    ) {
        let op = match kind {
            Kind::Accept(_) => Op::Accept,
            Kind::Recv => Op::Recv,
            Kind::Send => Op::Send,
            Kind::Shutdown => Op::Shutdown,
            Kind::Close => Op::Close,
            Kind::CancelFd | Kind::Cancel(_) => Op::Cancel,
        };
        let arg = match kind {
            Kind::Send => data.len() as i64,
            Kind::Cancel(t) => t.to_u64() as i64,
            _ => 0,
        };
        self.trace(Ev::Submit {
            w: self.w,
            op,
            fd,
            ud,
            arg,
        });
        let id = self.next_op;
        self.next_op += 1;
        self.ops.insert(
            id,
            OpState {
                ud,
                fd,
                kind,
                executed: false,
                final_posted: false,
                blocked: false,
                survived: false,
                msg,
                data,
            },
        );
        self.sq.push(id);
    }

    fn post(&mut self, id: OpId, result: i32, more: bool, buffer: Option<u16>, late: bool) {
        let op = self.ops.get_mut(&id).expect("posting for a live operation");
        assert!(
            !op.final_posted,
            "simulator bug: completion after the final one"
        );
        if !more {
            op.final_posted = true;
        }
        let mut not_before = self.batch + 1;
        if late {
            let most = if self.rng.chance(100) { 8 } else { 3 };
            not_before += self.rng.range(1, most);
        }
        self.cq.push(Cqe {
            op: id,
            c: Completion {
                user_data: op.ud,
                result,
                more,
                buffer,
            },
            not_before,
            holds: 0,
        });
    }

    /// Executes the submission queue in order, as `io_uring_enter` does.
    fn execute(&mut self) {
        let sq = std::mem::take(&mut self.sq);
        for id in sq {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            op.executed = true;
            let (fd, kind) = (op.fd, op.kind);
            if !self.socks.contains_key(&fd) && !matches!(kind, Kind::Accept(_) | Kind::Cancel(_)) {
                // Submitted on a bad fd (already reported): fail it as the kernel would.
                self.post(id, -libc::EBADF, false, None, false);
                continue;
            }
            match kind {
                Kind::Accept(_) | Kind::Recv => {} // armed; `pump` feeds them
                Kind::Send => self.try_send(id),
                Kind::Shutdown => self.exec_shutdown(id, fd),
                Kind::Close => self.exec_close(id, fd),
                Kind::CancelFd => self.exec_cancel_fd(id, fd),
                Kind::Cancel(target) => self.exec_cancel(id, target),
            }
        }
    }

    fn exec_shutdown(&mut self, id: OpId, fd: RawFd) {
        let pi = self.socks[&fd].peer;
        let p = &mut self.peers[pi];
        // shutdown(2) on a reset socket (TCP_CLOSE): ENOTCONN; it does not consume the error.
        let result = if p.reset {
            -libc::ENOTCONN
        } else {
            p.server_fin = true;
            0
        };
        self.post(id, result, false, None, false);
        if result == 0 && self.rng.chance(self.k.reset_after_shut_pm) {
            self.peers[pi].reset_at = Some(self.step + self.rng.range(0, 3) as u32);
            self.cov.bump(Cov::resets_after_shut_wr);
        }
    }

    fn exec_close(&mut self, id: OpId, fd: RawFd) {
        // Operations still running here were reported at submission; end them as the kernel
        // would, so the run can be reported rather than wedged.
        for oid in self.running_on(fd, id) {
            self.post(oid, -libc::ECANCELED, false, None, false);
        }
        if let Some(sock) = self.socks.remove(&fd) {
            self.peers[sock.peer].state = PeerState::Gone;
        }
        self.closed_fds.insert(fd);
        self.post(id, 0, false, None, false);
    }

    /// Operations other than `except` executing on `fd` and still waiting for their final.
    fn running_on(&self, fd: RawFd, except: OpId) -> Vec<OpId> {
        self.ops
            .iter()
            .filter(|(oid, o)| {
                **oid != except && o.fd == fd && o.executed && !o.final_posted && o.kind.waits()
            })
            .map(|(oid, _)| *oid)
            .collect()
    }

    /// Whether a cancel misses this operation: a send already running (in an io-wq worker)
    /// survives one cancel; the next one reaches it, as an interrupted worker would end it.
    fn survives_cancel(&mut self, oid: OpId) -> bool {
        let op = self.ops.get_mut(&oid).expect("live");
        if op.kind == Kind::Send && !op.survived && self.rng.chance(self.k.survive_pm) {
            op.survived = true;
            self.cov.bump(Cov::survived_cancels);
            return true;
        }
        false
    }

    fn exec_cancel_fd(&mut self, id: OpId, fd: RawFd) {
        let mut n = 0;
        for oid in self.running_on(fd, id) {
            if !self.survives_cancel(oid) {
                n += 1;
                self.cancel_op(oid);
            }
        }
        self.post(id, n, false, None, false);
    }

    fn exec_cancel(&mut self, id: OpId, target: UserData) {
        let found = self
            .ops
            .iter()
            .find(|(oid, o)| {
                **oid != id && o.ud == target && o.executed && !o.final_posted && o.kind.waits()
            })
            .map(|(oid, _)| *oid);
        match found {
            Some(oid) if self.survives_cancel(oid) => {
                self.post(id, -libc::EALREADY, false, None, false);
            }
            Some(oid) => {
                self.cancel_op(oid);
                self.post(id, 0, false, None, false);
            }
            None => {
                self.cov.bump(Cov::cancel_not_found);
                self.post(id, -libc::ENOENT, false, None, false);
            }
        }
    }

    fn cancel_op(&mut self, oid: OpId) {
        if self.k.lose_cancel_finals {
            // Broken driver: the final completion never comes.
            self.ops.get_mut(&oid).expect("live").final_posted = true;
            return;
        }
        let late = self.rng.chance(self.k.late_pm);
        if late {
            self.cov.bump(Cov::late_cancels);
        }
        self.post(oid, -libc::ECANCELED, false, None, late);
    }

    /// Runs a send: moves what the peer's window takes, or stays blocked.
    fn try_send(&mut self, id: OpId) {
        let fd = self.ops[&id].fd;
        let Some(sock) = self.socks.get_mut(&fd) else {
            return;
        };
        if sock.err_pending {
            sock.err_pending = false;
            self.cov.bump(Cov::send_errors);
            let e = if self.rng.chance(500) {
                libc::ECONNRESET
            } else {
                libc::EPIPE
            };
            return self.post(id, -e, false, None, false);
        }
        let pi = sock.peer;
        if self.peers[pi].reset {
            self.cov.bump(Cov::send_errors);
            return self.post(id, -libc::EPIPE, false, None, false);
        }
        if self.rng.chance(self.k.send_enobufs_pm) {
            self.cov.bump(Cov::send_enobufs);
            return self.post(id, -libc::ENOBUFS, false, None, false);
        }
        let space = self.peers[pi]
            .window
            .saturating_sub(self.peers[pi].to_peer.len());
        if space == 0 {
            let op = self.ops.get_mut(&id).expect("live");
            if !op.blocked {
                op.blocked = true;
                self.cov.bump(Cov::blocked_sends);
                if self.rng.chance(self.k.reset_on_block_pm) && self.peers[pi].reset_at.is_none() {
                    self.peers[pi].reset_at = Some(self.step + self.rng.range(1, 20) as u32);
                    self.cov.bump(Cov::resets_during_flush);
                }
            }
            return;
        }
        // The kernel reads the iovecs now: they must still hold what was submitted.
        let op = &self.ops[&id];
        // SAFETY: the caller of send_msg keeps msg and what it points to valid until the final
        // completion of this send, which has not been posted yet.
        let now = unsafe { read_msg(op.msg) };
        if now != op.data {
            self.violate(
                "send-memory-changed",
                format!(
                    "send ({}) on fd {fd}: the iovecs changed while it was in flight ({} bytes submitted, {} now)",
                    fmt_ud(op.ud),
                    op.data.len(),
                    now.len()
                ),
            );
        }
        let len = op.data.len();
        let mut n = len.min(space);
        if n > 1 && self.rng.chance(self.k.short_pm) {
            n = self.rng.range(1, n as u64 - 1) as usize;
        }
        if n < len {
            self.cov.bump(Cov::short_sends);
        }
        let data = self.ops[&id].data[..n].to_vec();
        self.peers[pi].to_peer.extend(data);
        self.post(id, n as i32, false, None, false);
    }

    fn alloc_fd(&self) -> RawFd {
        let mut fd = FD_BASE + self.w as RawFd * FD_STRIDE;
        while self.socks.contains_key(&fd) {
            fd += 1;
        }
        fd
    }

    /// Feeds every armed operation from the peers' side of the network.
    fn pump(&mut self) {
        let armed: Vec<OpId> = self
            .ops
            .iter()
            .filter(|(_, o)| o.executed && !o.final_posted && o.kind.waits())
            .map(|(id, _)| *id)
            .collect();
        for id in armed {
            let Some(op) = self.ops.get(&id) else {
                continue;
            };
            if op.final_posted {
                continue;
            }
            match op.kind {
                Kind::Accept(l) => self.pump_accept(id, l),
                Kind::Recv => self.pump_recv(id),
                Kind::Send => self.try_send(id),
                _ => {}
            }
        }
    }

    fn pump_accept(&mut self, id: OpId, listener: usize) {
        for _ in 0..self.rng.range(1, 3) {
            let Some(pi) = self
                .peers
                .iter()
                .position(|p| p.state == PeerState::Backlog && p.listener == listener)
            else {
                return;
            };
            if self.rng.chance(self.k.emfile_pm) {
                self.cov.bump(Cov::accept_emfile);
                return self.post(id, -libc::EMFILE, false, None, false);
            }
            let fd = self.alloc_fd();
            self.socks.insert(
                fd,
                Sock {
                    peer: pi,
                    owner: None,
                    shut_wr: false,
                    close_submitted: false,
                    // Reset while waiting in the backlog: the first operation reports it.
                    err_pending: self.peers[pi].reset,
                },
            );
            self.closed_fds.remove(&fd);
            let p = &mut self.peers[pi];
            p.fd = Some(fd);
            p.state = PeerState::Open;
            self.cov.bump(Cov::accepted);
            let more = !self.rng.chance(self.k.overflow_pm);
            if !more {
                self.cq_overflows += 1;
                self.cov.bump(Cov::cq_overflow);
            }
            self.post(id, fd, more, None, false);
            if !more {
                return;
            }
        }
    }

    fn pump_recv(&mut self, id: OpId) {
        let fd = self.ops[&id].fd;
        let Some(sock) = self.socks.get(&fd) else {
            return;
        };
        let pi = sock.peer;
        let mut chunks = self.rng.range(1, 4);
        loop {
            let sock = self.socks.get_mut(&fd).expect("open");
            if sock.err_pending {
                sock.err_pending = false;
                return self.post(id, -libc::ECONNRESET, false, None, false);
            }
            let p = &mut self.peers[pi];
            if !p.inbound.is_empty() {
                if chunks == 0 {
                    return;
                }
                chunks -= 1;
                let Some(b) = self.free.pop_front() else {
                    self.cov.bump(Cov::recv_enobufs);
                    return self.post(id, -libc::ENOBUFS, false, None, false);
                };
                let mut n = self.buf_size.min(p.inbound.len());
                if n > 1 && self.rng.chance(300) {
                    n = self.rng.range(1, n as u64) as usize;
                }
                for (dst, src) in self.bufs[b as usize].iter_mut().zip(p.inbound.drain(..n)) {
                    *dst = src;
                }
                self.buf_len[b as usize] = n;
                self.buf_state[b as usize] = BufState::Posted;
                let more = !self.rng.chance(self.k.overflow_pm);
                if !more {
                    self.cq_overflows += 1;
                    self.cov.bump(Cov::cq_overflow);
                }
                self.post(id, n as i32, more, Some(b), false);
                if !more {
                    return;
                }
            } else if p.fin || p.reset {
                // FIN, or a reset already reported once: end of file.
                return self.post(id, 0, false, None, false);
            } else {
                return;
            }
        }
    }

    /// The peers act: connect, publish, read, FIN, reset.
    fn net_step(&mut self, step: u32, arrivals: bool, ctx: &StreamCtx) {
        self.step = step;
        if arrivals && self.peers.len() < self.k.max_peers && self.rng.chance(self.k.arrive_pm) {
            let listener = self.rng.below(self.listeners.len() as u64) as usize;
            let tag = if self.listeners.len() > 1 && listener == 0 {
                b's'
            } else {
                b'p'
            };
            let gid = self.next_gid;
            self.next_gid += 1;
            let p = Peer::new(gid, listener, tag, step, &mut self.rng);
            self.peers.push(p);
            self.peer_ev(self.peers.len() - 1, PeerEv::Arrive, 0);
        }
        for i in 0..self.peers.len() {
            // Peers in the backlog act too: a client may write, FIN or reset before its
            // connection is accepted.
            if self.peers[i].state != PeerState::Gone && !self.peers[i].reset {
                self.peer_act(i, step, ctx);
            }
        }
    }

    fn peer_act(&mut self, i: usize, step: u32, ctx: &StreamCtx) {
        if self.peers[i].reset_at.is_some_and(|s| s <= step) {
            return self.reset_peer(i);
        }
        let p = &mut self.peers[i];
        if !p.fin && self.rng.chance(p.publish_pm) {
            let lines = if p.flood { self.rng.range(1, 6) } else { 1 };
            let before = p.inbound.len();
            let overlong = p.sent_overlong;
            for _ in 0..lines {
                if p.inbound.len() >= INBOUND_MAX {
                    break;
                }
                p.write_line(&mut self.rng, ctx.max_frame);
            }
            let (n, now_overlong) = (p.inbound.len() - before, p.sent_overlong);
            if now_overlong && !overlong {
                self.cov.bump(Cov::overlong_lines);
                self.peer_ev(i, PeerEv::Overlong, n);
            } else if n > 0 {
                self.peer_ev(i, PeerEv::Publish, n);
            }
        }
        if self.peers[i].state == PeerState::Backlog {
            let p = &mut self.peers[i];
            if p.fin_at.is_some_and(|s| s <= step) && !p.fin {
                p.fin = true;
                self.cov.bump(Cov::fins);
                self.peer_ev(i, PeerEv::Fin, 0);
            }
            return;
        }
        let p = &mut self.peers[i];
        let want = match p.reader {
            Reader::Fast => p.to_peer.len(),
            Reader::Slow if self.rng.chance(300) => self.rng.range(1, 48) as usize,
            Reader::Slow | Reader::Never => 0,
        };
        let n = want.min(p.to_peer.len());
        if n > 0 {
            let bytes: Vec<u8> = p.to_peer.drain(..n).collect();
            match p.receive(&bytes, ctx) {
                Ok(lines) => self.cov.add_n(Cov::lines_checked, lines),
                Err(e) => self.violate("stream", e),
            }
            self.peer_ev(i, PeerEv::Read, n);
        }
        let p = &mut self.peers[i];
        if p.server_fin && p.to_peer.is_empty() && !p.eof_seen {
            p.eof_seen = true;
            self.peer_ev(i, PeerEv::Eof, 0);
        }
        let p = &mut self.peers[i];
        let fin_now = p.fin_at.is_some_and(|s| s <= step)
            || (p.eof_seen && p.closes_on_eof && self.rng.chance(400));
        if fin_now && !p.fin {
            p.fin = true;
            self.cov.bump(Cov::fins);
            self.peer_ev(i, PeerEv::Fin, 0);
        }
    }

    fn reset_peer(&mut self, i: usize) {
        let p = &mut self.peers[i];
        p.reset = true;
        p.inbound.clear();
        p.partial.clear();
        p.to_peer.clear();
        if let Some(s) = p.fd.and_then(|fd| self.socks.get_mut(&fd)) {
            s.err_pending = true;
        }
        self.cov.bump(Cov::resets);
        self.peer_ev(i, PeerEv::Reset, 0);
    }

    /// The server refused `fd` (connection limit) with plain syscalls, which failed on the fake
    /// fd: the socket is gone.
    fn refused(&mut self, fd: RawFd) {
        if let Some(sock) = self.socks.remove(&fd) {
            self.peers[sock.peer].state = PeerState::Gone;
            self.closed_fds.insert(fd);
            self.cov.bump(Cov::refused);
            self.peer_ev(sock.peer, PeerEv::Refused, 0);
        }
    }
}

/// Copies out what a msghdr's iovecs point at.
///
/// # Safety
/// `msg` and every buffer it points to must be valid.
pub(crate) unsafe fn read_msg(msg: *const libc::msghdr) -> Vec<u8> {
    let mut data = Vec::new();
    // SAFETY: guaranteed by the caller.
    unsafe {
        let m = &*msg;
        for i in 0..m.msg_iovlen {
            let v = &*m.msg_iov.add(i);
            data.extend_from_slice(std::slice::from_raw_parts(
                v.iov_base as *const u8,
                v.iov_len,
            ));
        }
    }
    data
}

impl Driver for SimDriver {
    fn accept_multi(&mut self, listener: RawFd, ud: UserData) {
        let Some(index) = self.listeners.iter().position(|&l| l == listener) else {
            self.violate(
                "op-on-unknown-fd",
                format!("accept on fd {listener}, not a listener"),
            );
            return self.push_op(
                ud,
                listener,
                Kind::Accept(usize::MAX),
                std::ptr::null(),
                Vec::new(),
            );
        };
        if self.ops.values().any(|o| o.kind == Kind::Accept(index)) {
            self.violate(
                "two-accepts",
                format!("accept armed on listener {index} while one is in flight"),
            );
        }
        self.push_op(
            ud,
            listener,
            Kind::Accept(index),
            std::ptr::null(),
            Vec::new(),
        );
    }

    fn recv_multi(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "recv");
        if self.has_outstanding(fd, Kind::Recv) {
            self.violate(
                "two-recvs",
                format!(
                    "recv ({}) armed on fd {fd} while one is in flight",
                    fmt_ud(ud)
                ),
            );
        }
        self.push_op(ud, fd, Kind::Recv, std::ptr::null(), Vec::new());
    }

    unsafe fn send_msg(&mut self, fd: RawFd, msg: *const libc::msghdr, ud: UserData) {
        self.check_sock(fd, ud, "send");
        if self.has_outstanding(fd, Kind::Send) {
            self.violate(
                "two-sends",
                format!(
                    "send ({}) on fd {fd} while another send is in flight",
                    fmt_ud(ud)
                ),
            );
        }
        if self.socks.get(&fd).is_some_and(|s| s.shut_wr) {
            self.violate(
                "send-after-shutdown",
                format!("send ({}) on fd {fd} after SHUT_WR", fmt_ud(ud)),
            );
        }
        // SAFETY: the caller keeps msg and its iovecs valid until the final completion.
        let data = unsafe { read_msg(msg) };
        if data.is_empty() {
            self.violate(
                "empty-send",
                format!("send ({}) of 0 bytes on fd {fd}", fmt_ud(ud)),
            );
        }
        self.push_op(ud, fd, Kind::Send, msg, data);
    }

    fn shutdown_write(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "shutdown");
        if self.has_outstanding(fd, Kind::Send) {
            self.violate(
                "shutdown-during-send",
                format!(
                    "SHUT_WR ({}) on fd {fd} while a send is in flight",
                    fmt_ud(ud)
                ),
            );
        }
        if let Some(s) = self.socks.get_mut(&fd) {
            let twice = std::mem::replace(&mut s.shut_wr, true);
            if twice {
                self.violate(
                    "double-shutdown",
                    format!("SHUT_WR ({}) on fd {fd} twice", fmt_ud(ud)),
                );
            }
        }
        self.push_op(ud, fd, Kind::Shutdown, std::ptr::null(), Vec::new());
    }

    fn close(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "close");
        let outstanding = self.outstanding_on(fd);
        if !outstanding.is_empty() {
            self.violate(
                "close-with-ops-in-flight",
                format!(
                    "close ({}) of fd {fd} while in flight: {}",
                    fmt_ud(ud),
                    outstanding.join("; ")
                ),
            );
        }
        if let Some(s) = self.socks.get_mut(&fd) {
            s.close_submitted = true;
        }
        self.push_op(ud, fd, Kind::Close, std::ptr::null(), Vec::new());
    }

    fn cancel_fd(&mut self, fd: RawFd, ud: UserData) {
        self.check_sock(fd, ud, "cancel_fd");
        self.push_op(ud, fd, Kind::CancelFd, std::ptr::null(), Vec::new());
    }

    fn cancel(&mut self, target: UserData, ud: UserData) {
        // Counted against the target's fd (for the close check); a target not in flight is
        // legal (-ENOENT) and then belongs to the connection's fd, or to none.
        let fd = self
            .ops
            .values()
            .find(|o| o.ud == target)
            .map(|o| o.fd)
            .or_else(|| {
                self.socks
                    .iter()
                    .find(|(_, s)| s.owner == Some((ud.slot(), ud.generation())))
                    .map(|(fd, _)| *fd)
            })
            .unwrap_or(-1);
        if fd >= 0 && !self.listeners.contains(&fd) {
            self.check_sock(fd, ud, "cancel");
        }
        self.push_op(ud, fd, Kind::Cancel(target), std::ptr::null(), Vec::new());
    }

    fn submit_and_wait(&mut self, _timeout: Duration) -> std::io::Result<()> {
        self.execute();
        Ok(())
    }

    fn submit(&mut self) -> std::io::Result<()> {
        self.execute();
        Ok(())
    }

    fn completions(&mut self, out: &mut Vec<Completion>) {
        self.batch += 1;
        // Hold some back (to a later batch), never letting a later completion of the same
        // user_data overtake an earlier one.
        let mut blocked: Vec<UserData> = Vec::new();
        let mut groups: Vec<(UserData, VecDeque<Cqe>)> = Vec::new();
        let mut kept = Vec::new();
        for mut e in std::mem::take(&mut self.cq) {
            let ud = e.c.user_data;
            let hold = e.not_before > self.batch
                || blocked.contains(&ud)
                || (e.holds < 3 && self.rng.chance(self.k.hold_pm));
            if hold {
                e.holds = e.holds.saturating_add(1);
                if !blocked.contains(&ud) {
                    blocked.push(ud);
                }
                kept.push(e);
                continue;
            }
            match groups.iter_mut().find(|(g, _)| *g == ud) {
                Some((_, q)) => q.push_back(e),
                None => groups.push((ud, VecDeque::from([e]))),
            }
        }
        self.cq = kept;
        // Interleave the operations at random, each in its own order.
        while !groups.is_empty() {
            let g = self.rng.below(groups.len() as u64) as usize;
            let e = groups[g].1.pop_front().expect("non-empty group");
            if groups[g].1.is_empty() {
                groups.swap_remove(g);
            }
            let late = e.holds > 0;
            if late {
                self.cov.bump(Cov::held_back);
            }
            if let Some(b) = e.c.buffer {
                let st = &mut self.buf_state[b as usize];
                assert_eq!(*st, BufState::Posted, "simulator bug: buffer {b} state");
                *st = BufState::Server;
            }
            let op = &self.ops[&e.op];
            if matches!(op.kind, Kind::Accept(_)) && e.c.result >= 0 {
                self.accepted_now.push(e.c.result);
            }
            if !e.c.more {
                self.ops.remove(&e.op);
            }
            self.trace(Ev::Deliver {
                w: self.w,
                c: e.c,
                late,
            });
            out.push(e.c);
        }
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        let i = id as usize;
        match self.buf_state.get(i) {
            Some(BufState::Server) if len <= self.buf_len[i] => {}
            state => self.violate(
                "buffer-read",
                format!(
                    "read of buffer {id} ({len} bytes) in state {state:?} holding {} bytes",
                    self.buf_len.get(i).copied().unwrap_or(0)
                ),
            ),
        }
        let b = self.bufs.get(i).map(|b| &b[..]).unwrap_or(&[]);
        &b[..len.min(b.len())]
    }

    fn recycle(&mut self, id: u16) {
        match self.buf_state.get(id as usize) {
            Some(BufState::Server) => {
                self.buf_state[id as usize] = BufState::Kernel;
                self.free.push_back(id);
            }
            state => self.violate(
                "buffer-recycle",
                format!("recycle of buffer {id} in state {state:?}: recycled twice, or never handed out"),
            ),
        }
    }

    fn buffers_available(&self) -> usize {
        self.free.len()
    }

    /// What the peer has not read yet stands for what it has not acknowledged (a peer's window
    /// is what it reads), plus our FIN until it has seen it.
    fn unacked_bytes(&self, fd: RawFd) -> std::io::Result<usize> {
        let Some(sock) = self.socks.get(&fd) else {
            return Err(std::io::Error::from_raw_os_error(libc::EBADF));
        };
        let p = &self.peers[sock.peer];
        if p.reset {
            return Err(std::io::Error::from_raw_os_error(libc::ENOTCONN));
        }
        Ok(p.to_peer.len() + usize::from(p.server_fin && !p.eof_seen))
    }

    fn discard_unread(&mut self, fd: RawFd, _max: usize) -> usize {
        let Some(sock) = self.socks.get(&fd) else {
            return 0;
        };
        let p = &mut self.peers[sock.peer];
        let n = p.inbound.len();
        p.inbound.clear();
        n
    }

    fn doorbell(&self) -> Doorbell {
        self.doorbell.clone()
    }

    fn stats(&self) -> DriverStats {
        DriverStats {
            sq_full: 0,
            cq_overflow: self.cq_overflows,
            enter_retries: 0,
        }
    }
}

// ---- the simulation --------------------------------------------------------------------------

/// Deliberate bugs injected into the server's state (between loop turns) or into the driver, to
/// show that the checks catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutant {
    /// The server forgets that a recv is armed.
    ForgetRecv,
    /// A message is queued for a connection whose subscription already dropped.
    QueueAfterUnsubscribe,
    /// A received buffer is dropped without being recycled.
    LeakBuffer,
    /// A received buffer is recycled while the connection still holds it.
    DoubleRecycle,
    /// The driver loses the final completions of cancelled operations.
    LoseCancelFinals,
    /// The server counts a cancel in flight that was never submitted.
    PhantomCancel,
    /// One byte of a queued message is skipped (a miscounted short send).
    SkipByte,
    /// A whole queued message is dropped.
    DropMessage,
}

#[derive(Clone, Copy, Debug)]
struct Opts {
    mutant: Option<Mutant>,
    /// Check the server's own bookkeeping (in-flight flags, subscriber list) against the ring.
    bookkeeping: bool,
    full_trace: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            mutant: None,
            bookkeeping: true,
            full_trace: false,
        }
    }
}

/// A run that broke an invariant.
struct Failure {
    seed: u64,
    step: u32,
    worker: Option<usize>,
    violation: Violation,
    knobs: String,
    trace: Vec<String>,
    mutant_applied: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "simulation failed")?;
        writeln!(f, "  seed:      {}", self.seed)?;
        write!(f, "  step:      {}", self.step)?;
        if let Some(w) = self.worker {
            write!(f, " (worker {w})")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  invariant: {}: {}",
            self.violation.kind, self.violation.detail
        )?;
        writeln!(f, "  config:    {}", self.knobs)?;
        writeln!(f, "  last {} events:", self.trace.len())?;
        for e in &self.trace {
            writeln!(f, "    {e}")?;
        }
        write!(
            f,
            "  replay:    RINGFAN_SIM_SEED={} cargo test -p ringfan --lib sim -- --nocapture",
            self.seed
        )
    }
}

/// A connection's counters as of the last check.
struct Snap {
    slot: usize,
    generation: u32,
    subscribed: bool,
    queued_total: u64,
    queue_bytes: usize,
}

struct Sim {
    seed: u64,
    rng: Rng,
    knobs: Knobs,
    opts: Opts,
    shared: Arc<Shared>,
    workers: Vec<Worker<SimDriver>>,
    done: Vec<bool>,
    snaps: Vec<Vec<Snap>>,
    trace: SharedTrace,
    t0: Instant,
    ms: u64,
    step: u32,
    shutdown_at: Option<(u32, u64)>,
    ctx: StreamCtx,
    mutant_applied: bool,
    cov: Coverage,
}

impl Sim {
    fn new(seed: u64, opts: Opts) -> Self {
        let mut rng = Rng::new(seed);
        let mut knobs = Knobs::random(&mut rng);
        if opts.mutant == Some(Mutant::LoseCancelFinals) {
            knobs.lose_cancel_finals = true;
        }
        let cfg = Arc::new(Config::from_vars(&knobs.env()).expect("simulated config is valid"));
        let shared = Arc::new(Shared::new(
            knobs.workers,
            cfg.turn_input_bytes_max(),
            knobs.max_connections,
        ));
        let trace = Rc::new(RefCell::new(Trace {
            events: VecDeque::new(),
            all: opts.full_trace,
        }));
        let mut workers = Vec::new();
        let mut mailboxes = Vec::new();
        for id in 0..knobs.workers {
            let (tx, rx) = std::sync::mpsc::channel();
            // Real fds (of /dev/null) stand in for the listeners: the worker owns and closes them,
            // and only ever hands their numbers to the driver.
            let open =
                || -> OwnedFd { std::fs::File::open("/dev/null").expect("/dev/null").into() };
            let listener = open();
            let publish = knobs.publish_listener.then(open);
            let mut fds = vec![listener.as_raw_fd()];
            fds.extend(publish.as_ref().map(|l| l.as_raw_fd()));
            let driver = SimDriver::new(id, rng.fork(), &knobs, trace.clone(), fds);
            mailboxes.push((tx, driver.doorbell()));
            workers.push(Worker::new(
                id,
                cfg.clone(),
                driver,
                shared.clone(),
                rx,
                listener,
                publish,
            ));
        }
        shared.set_mailboxes(mailboxes);
        let ctx = StreamCtx {
            err_line: format!(
                "-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES ({})",
                knobs.max_frame
            )
            .into_bytes(),
            contiguous: !knobs.drop_policy,
            echo: knobs.echo,
            max_frame: knobs.max_frame,
        };
        let mut cov = Coverage::default();
        cov.bump(Cov::runs);
        if knobs.workers > 1 {
            cov.bump(Cov::two_workers);
        }
        if knobs.publish_listener {
            cov.bump(Cov::publish_listener);
        }
        let n = workers.len();
        Sim {
            seed,
            rng,
            knobs,
            opts,
            shared,
            workers,
            done: vec![false; n],
            snaps: (0..n).map(|_| Vec::new()).collect(),
            trace,
            t0: Instant::now(),
            ms: 0,
            step: 0,
            shutdown_at: None,
            ctx,
            mutant_applied: opts.mutant == Some(Mutant::LoseCancelFinals),
            cov,
        }
    }

    fn fail(&self, worker: Option<usize>, violation: Violation) -> Box<Failure> {
        Box::new(Failure {
            seed: self.seed,
            step: self.step,
            worker,
            violation,
            knobs: format!("{:?}", self.knobs),
            trace: self
                .trace
                .borrow()
                .events
                .iter()
                .map(|e| e.to_string())
                .collect(),
            mutant_applied: self.mutant_applied,
        })
    }

    fn run(mut self) -> Result<Coverage, Box<Failure>> {
        for i in 0..self.workers.len() {
            self.workers[i].start();
            self.workers[i].driver.execute();
            self.check_worker(i).map_err(|v| self.fail(Some(i), v))?;
        }
        loop {
            self.step += 1;
            self.cov.bump(Cov::steps);
            let dt = if self.rng.chance(30) {
                self.rng.range(100, 1500)
            } else {
                self.rng.range(0, 20)
            };
            self.ms += dt;
            let now = self.t0 + Duration::from_millis(self.ms);
            self.trace.borrow_mut().push(Ev::Step {
                step: self.step,
                ms: self.ms,
            });
            if self.shutdown_at.is_none() && self.step > self.knobs.run_steps {
                self.shutdown_at = Some((self.step, self.ms));
                self.trace.borrow_mut().push(Ev::Shutdown);
                self.shared.shutdown.store(true, Ordering::Release);
                self.shared.wake_all();
            }
            if let Some((step, ms)) = self.shutdown_at {
                // Bound: every deadline (close, shutdown, the 1 s re-cancel) passes well within it.
                let limit_ms =
                    self.knobs.shutdown_timeout_ms + self.knobs.close_timeout_ms + 10_000;
                if self.step - step > 300 && self.ms - ms > limit_ms {
                    let v = Violation::new("not-freed", self.describe_leftovers());
                    return Err(self.fail(None, v));
                }
            }
            for i in 0..self.workers.len() {
                let d = &mut self.workers[i].driver;
                d.net_step(self.step, self.shutdown_at.is_none(), &self.ctx);
                d.pump();
                let v = d.violations.get_mut().drain(..).next();
                if let Some(v) = v {
                    return Err(self.fail(Some(i), v));
                }
            }
            self.maybe_mutate();
            for i in 0..self.workers.len() {
                if self.done[i] {
                    continue;
                }
                let w = &mut self.workers[i];
                let result = catch_unwind(AssertUnwindSafe(|| w.turn(now)));
                self.cov.bump(Cov::turns);
                let done = match result {
                    Ok(done) => done,
                    Err(payload) => {
                        let msg = payload
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "(non-string panic)".into());
                        return Err(self.fail(
                            Some(i),
                            Violation::new("server-panic", format!("Worker::turn panicked: {msg}")),
                        ));
                    }
                };
                let w = &mut self.workers[i];
                // An accepted fd no operation was submitted on was refused (connection limit): a
                // connection arms its recv as it opens. (Looking for a connection with that fd
                // would be wrong: one whose close is in flight may hold the same, reused number.)
                let accepted = std::mem::take(&mut w.driver.accepted_now);
                for fd in accepted {
                    if w.driver.socks.get(&fd).is_some_and(|s| s.owner.is_none()) {
                        w.driver.refused(fd);
                    }
                }
                w.driver.execute();
                self.trace.borrow_mut().push(Ev::Turn {
                    w: i,
                    conns: self.workers[i].conns.len(),
                });
                self.check_worker(i).map_err(|v| self.fail(Some(i), v))?;
                self.done[i] = done;
            }
            if self.done.iter().all(|&d| d) {
                self.check_end().map_err(|(w, v)| self.fail(Some(w), v))?;
                for w in &self.workers {
                    self.cov.add(&w.driver.cov);
                    let s = &w.stats;
                    self.cov.add_n(Cov::stale_completions, s.stale_completions);
                    self.cov.add_n(Cov::protocol_errors, s.protocol_errors);
                    self.cov.add_n(Cov::evicted_slow, s.evicted_slow);
                    self.cov.add_n(Cov::close_timeouts, s.close_timeouts);
                    self.cov.add_n(Cov::shutdown_aborted, s.shutdown_aborted);
                    self.cov.add_n(Cov::recv_paused, s.recv_paused);
                    self.cov.add_n(Cov::slow_timeouts, s.slow_timeouts);
                    self.cov.add_n(Cov::messages_dropped, s.messages_dropped);
                }
                return Ok(self.cov);
            }
        }
    }

    fn describe_leftovers(&self) -> String {
        let mut s = String::from("connections not freed after shutdown:");
        for (i, w) in self.workers.iter().enumerate() {
            for (slot, c) in w.conns.iter() {
                s.push_str(&format!(
                    " [w{i} slot {slot} fd {}: read {:?}, write {:?}, closing {:?}, recv {} send {} shutdown {} cancels {} close {}, queue {} bytes]",
                    c.fd, c.read, c.write, c.closing, c.recv_in_flight, c.send_in_flight,
                    c.shutdown_in_flight, c.cancels_in_flight, c.close_in_flight, c.queue_bytes
                ));
            }
            if !self.done[i] && w.conns.is_empty() {
                s.push_str(&format!(" [w{i}: no connections, but turn() is not done]"));
            }
        }
        s
    }

    /// A deliberate bug, once per run, in worker 0 (see [`Mutant`]).
    fn maybe_mutate(&mut self) {
        let Some(m) = self.opts.mutant else {
            return;
        };
        if self.mutant_applied || self.step < 5 || !self.rng.chance(200) {
            return;
        }
        let w = &mut self.workers[0];
        let target = w.conns.iter().map(|(s, _)| s).find(|&s| {
            let c = &w.conns[s];
            match m {
                Mutant::ForgetRecv => c.recv_in_flight && c.closing == Closing::No,
                Mutant::QueueAfterUnsubscribe => c.write == WriteHalf::Draining,
                Mutant::LeakBuffer | Mutant::DoubleRecycle => !c.pending.is_empty(),
                Mutant::PhantomCancel => c.closing == Closing::No,
                // Only messages no send in flight points at: the kernel may be reading those.
                Mutant::SkipByte => c.queue.get(idle_from(c)).is_some_and(|b| b.len() > 1),
                Mutant::DropMessage => c.queue.len() > idle_from(c),
                Mutant::LoseCancelFinals => false,
            }
        });
        let Some(slot) = target else {
            return;
        };
        let c = &mut w.conns[slot];
        match m {
            Mutant::ForgetRecv => c.recv_in_flight = false,
            Mutant::QueueAfterUnsubscribe => {
                c.queue.push_back(Bytes::from_static(b"mutant\n"));
                c.queue_bytes += 7;
                c.queued_total += 7;
            }
            Mutant::LeakBuffer => {
                let (_, len) = c.pending.pop_back().expect("pending");
                c.pending_bytes -= len as usize;
            }
            Mutant::DoubleRecycle => {
                let (id, _) = *c.pending.front().expect("pending");
                w.driver.recycle(id);
            }
            Mutant::PhantomCancel => c.cancels_in_flight += 1,
            Mutant::SkipByte => {
                let i = idle_from(c);
                c.queue[i] = c.queue[i].slice(1..);
                c.queue_bytes -= 1;
            }
            Mutant::DropMessage => {
                let i = idle_from(c);
                let b = c.queue.remove(i).expect("idle message");
                c.queue_bytes -= b.len() - if i == 0 { c.head_sent } else { 0 };
                if i == 0 {
                    c.head_sent = 0;
                }
            }
            Mutant::LoseCancelFinals => unreachable!(),
        }
        self.mutant_applied = true;
        self.trace
            .borrow_mut()
            .push(Ev::Note(format!("MUTANT {m:?} applied to w0 slot {slot}")));
    }

    /// Every invariant that must hold between two loop turns.
    fn check_worker(&mut self, i: usize) -> Result<(), Violation> {
        let w = &self.workers[i];
        let d = &w.driver;
        if let Some(v) = d.violations.borrow_mut().drain(..).next() {
            return Err(v);
        }
        let live = |ud: UserData| {
            w.conns
                .get(ud.slot() as usize)
                .is_some_and(|c| c.generation == ud.generation())
        };
        // No slot is freed while an operation of it is in flight.
        for op in d.ops.values() {
            if op.ud.slot() < LISTENER_SLOT_MIN && !live(op.ud) {
                return Err(Violation::new(
                    "slot-freed-with-ops",
                    format!(
                        "{} ({}) on fd {} is still in flight but its connection was freed",
                        op.kind.name(),
                        fmt_ud(op.ud),
                        op.fd
                    ),
                ));
            }
        }
        // Buffers handed to the server are exactly those its connections hold.
        let mut held: Vec<u16> = w
            .conns
            .iter()
            .flat_map(|(_, c)| c.pending.iter().map(|(id, _)| *id))
            .collect();
        held.sort_unstable();
        if let Some(pair) = held.windows(2).find(|p| p[0] == p[1]) {
            return Err(Violation::new(
                "buffer-recycle",
                format!("buffer {} is pending twice", pair[0]),
            ));
        }
        for (id, st) in d.buf_state.iter().enumerate() {
            let pending = held.binary_search(&(id as u16)).is_ok();
            if *st == BufState::Server && !pending {
                return Err(Violation::new(
                    "buffer-leak",
                    format!(
                        "buffer {id} was handed to the server and is neither pending nor recycled"
                    ),
                ));
            }
            if *st != BufState::Server && pending {
                return Err(Violation::new(
                    "buffer-recycle",
                    format!("buffer {id} is pending in a connection but was given back ({st:?})"),
                ));
            }
        }
        // No message is queued for a connection after its subscription dropped.
        for (slot, c) in w.conns.iter() {
            let Some(s) = self.snaps[i]
                .iter()
                .find(|s| s.slot == slot && s.generation == c.generation)
            else {
                continue;
            };
            if !s.subscribed && (c.queued_total > s.queued_total || c.queue_bytes > s.queue_bytes) {
                return Err(Violation::new(
                    "queued-after-unsubscribe",
                    format!(
                        "slot {slot} gen {} ({:?}): queued_total {} -> {}, queue_bytes {} -> {} after its subscription dropped",
                        c.generation, c.write, s.queued_total, c.queued_total, s.queue_bytes, c.queue_bytes
                    ),
                ));
            }
        }
        if self.opts.bookkeeping {
            check_bookkeeping(w)?;
        }
        self.snaps[i] = w
            .conns
            .iter()
            .map(|(slot, c)| Snap {
                slot,
                generation: c.generation,
                subscribed: c.write == WriteHalf::Subscribed,
                queued_total: c.queued_total,
                queue_bytes: c.queue_bytes,
            })
            .collect();
        Ok(())
    }

    /// After every worker's `turn` returned true.
    fn check_end(&self) -> Result<(), (usize, Violation)> {
        for (i, w) in self.workers.iter().enumerate() {
            let d = &w.driver;
            let err = |kind, detail| Err((i, Violation::new(kind, detail)));
            if !w.conns.is_empty() {
                return err("not-freed", self.describe_leftovers());
            }
            // The server does not wait for the completion of the cancel that stops a listener's
            // accept, only for the accept's own final one: at exit that cancel may still be
            // unreaped, which is harmless (it names a user_data, not an fd).
            let listener_cancel =
                |o: &OpState| matches!(o.kind, Kind::Cancel(_)) && o.ud.slot() >= LISTENER_SLOT_MIN;
            if let Some(op) = d.ops.values().find(|o| !listener_cancel(o)) {
                return err(
                    "end-state",
                    format!(
                        "the server finished with {} ({}) on fd {} in flight",
                        op.kind.name(),
                        fmt_ud(op.ud),
                        op.fd
                    ),
                );
            }
            let unreaped =
                d.cq.iter()
                    .filter(|e| !d.ops.get(&e.op).is_some_and(listener_cancel))
                    .count();
            if unreaped > 0 || !d.sq.is_empty() {
                return err(
                    "end-state",
                    format!(
                        "the server finished with {unreaped} completions unreaped, {} submissions queued",
                        d.sq.len()
                    ),
                );
            }
            if let Some(id) = d.buf_state.iter().position(|s| *s != BufState::Kernel) {
                return err(
                    "buffer-leak",
                    format!(
                        "buffer {id} not back in the pool at the end ({:?})",
                        d.buf_state[id]
                    ),
                );
            }
            if let Some(fd) = d.socks.keys().next() {
                return err(
                    "not-freed",
                    format!("fd {fd} was accepted and never closed"),
                );
            }
        }
        Ok(())
    }
}

/// Index of the first queued message the in-flight send (if any) does not point at.
fn idle_from(c: &crate::conn::Conn) -> usize {
    if !c.send_in_flight {
        return 0;
    }
    let mut left = c.send_bytes;
    for (i, b) in c.queue.iter().enumerate() {
        if left == 0 {
            return i;
        }
        let part = b.len() - if i == 0 { c.head_sent } else { 0 };
        left = left.saturating_sub(part);
    }
    c.queue.len()
}

/// The server's own bookkeeping agrees with what is in flight in the ring.
fn check_bookkeeping(w: &Worker<SimDriver>) -> Result<(), Violation> {
    let d = &w.driver;
    let bad = |detail: String| Err(Violation::new("bookkeeping", detail));
    let subscribed = w
        .conns
        .iter()
        .filter(|(_, c)| c.write == WriteHalf::Subscribed)
        .count();
    if subscribed != w.subscribers.len() {
        return bad(format!(
            "{subscribed} connections are Subscribed but the subscriber list has {}",
            w.subscribers.len()
        ));
    }
    for (k, &slot) in w.subscribers.iter().enumerate() {
        match w.conns.get(slot) {
            Some(c) if c.write == WriteHalf::Subscribed && c.sub_index == k => {}
            _ => return bad(format!("subscriber list entry {k} (slot {slot}) is stale")),
        }
    }
    for (slot, c) in w.conns.iter() {
        let mut n = [0usize; 8];
        for op in d.ops.values() {
            if op.ud.slot() as usize == slot && op.ud.generation() == c.generation {
                n[op.ud.op().map(|o| o as usize).unwrap_or(0)] += 1;
            }
        }
        let who = format!("slot {slot} gen {} fd {}", c.generation, c.fd);
        let flags = [
            ("recv_in_flight", c.recv_in_flight, Op::Recv),
            ("send_in_flight", c.send_in_flight, Op::Send),
            ("shutdown_in_flight", c.shutdown_in_flight, Op::Shutdown),
            ("close_in_flight", c.close_in_flight, Op::Close),
        ];
        for (name, flag, op) in flags {
            if flag != (n[op as usize] > 0) || n[op as usize] > 1 {
                return bad(format!(
                    "{who}: {name} is {flag} but the ring has {} {} in flight",
                    n[op as usize],
                    op.name()
                ));
            }
        }
        if c.cancels_in_flight as usize != n[Op::Cancel as usize] {
            return bad(format!(
                "{who}: cancels_in_flight is {} but the ring has {} cancels in flight",
                c.cancels_in_flight,
                n[Op::Cancel as usize]
            ));
        }
        if c.closing != Closing::No && (c.read != ReadHalf::Ended || c.write != WriteHalf::Ended) {
            return bad(format!(
                "{who}: closing {:?} with read {:?}, write {:?}",
                c.closing, c.read, c.write
            ));
        }
        if c.close_in_flight != (c.closing == Closing::CloseSubmitted) {
            return bad(format!(
                "{who}: close_in_flight {} in {:?}",
                c.close_in_flight, c.closing
            ));
        }
        if c.closing == Closing::No
            && c.send_in_flight
            && !matches!(c.write, WriteHalf::Subscribed | WriteHalf::Draining)
        {
            return bad(format!("{who}: a send in flight in {:?}", c.write));
        }
        let queued: usize = c.queue.iter().map(|b| b.len()).sum::<usize>() - c.head_sent;
        if queued != c.queue_bytes {
            return bad(format!(
                "{who}: queue_bytes {} but the queue holds {queued}",
                c.queue_bytes
            ));
        }
        if !c.close_in_flight {
            match d.socks.get(&c.fd) {
                Some(s) if s.owner == Some((slot as u32, c.generation)) => {}
                Some(s) => {
                    return bad(format!(
                        "{who}: the fd belongs to {:?} in the ring",
                        s.owner
                    ))
                }
                None => return bad(format!("{who}: the fd is not open in the ring")),
            }
        }
    }
    Ok(())
}

fn run_seed(seed: u64, opts: Opts) -> Result<Coverage, Box<Failure>> {
    Sim::new(seed, opts).run()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `seeds` on every core; returns the merged coverage and the failures, lowest seed first.
fn run_many(seeds: std::ops::Range<u64>, opts: Opts) -> (Coverage, Vec<Failure>) {
    let next = AtomicU64::new(seeds.start);
    let stop = AtomicBool::new(false);
    let total = Mutex::new(Coverage::default());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut cov = Coverage::default();
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    match run_seed(seed, opts) {
                        Ok(c) => cov.add(&c),
                        Err(f) => {
                            stop.store(true, Ordering::Relaxed);
                            failures.lock().unwrap().push(*f);
                        }
                    }
                }
                total.lock().unwrap().add(&cov);
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.sort_by_key(|f| f.seed);
    (total.into_inner().unwrap(), failures)
}

// ---- tests -----------------------------------------------------------------------------------

/// Seeds per CI run (release); debug builds run fewer. `RINGFAN_SIM_SEEDS` overrides.
const SEEDS_RELEASE: u64 = 10_000;
const SEEDS_DEBUG: u64 = 1000;

#[test]
fn seeds() {
    if let Some(seed) = env_u64("RINGFAN_SIM_SEED") {
        let opts = Opts {
            full_trace: std::env::var_os("RINGFAN_SIM_TRACE").is_some(),
            ..Opts::default()
        };
        let sim = Sim::new(seed, opts);
        let sim_trace = sim.trace.clone();
        println!("seed {seed}: {:?}", sim.knobs);
        match sim.run() {
            Ok(cov) => {
                if opts.full_trace {
                    for e in &sim_trace.borrow().events {
                        println!("    {e}");
                    }
                }
                println!("seed {seed} passed: {cov}")
            }
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let count = env_u64("RINGFAN_SIM_SEEDS").unwrap_or(if cfg!(debug_assertions) {
        SEEDS_DEBUG
    } else {
        SEEDS_RELEASE
    });
    let base = env_u64("RINGFAN_SIM_SEED_BASE").unwrap_or(0);
    let started = Instant::now();
    let (cov, failures) = run_many(base..base + count, Opts::default());
    if let Some(f) = failures.first() {
        panic!("{f}");
    }
    println!(
        "{count} seeds, {} steps, {} turns in {:.1?}: {cov}",
        cov.get(Cov::steps),
        cov.get(Cov::turns),
        started.elapsed()
    );
    if count >= 200 {
        // The faults were injected and the paths they lead to were taken: the run is not vacuous.
        // (Stale completions are the exception: the server frees a slot only after every final
        // completion of it, so none should ever come.)
        for (i, name) in COV_NAMES.iter().enumerate() {
            if i != Cov::stale_completions as usize {
                assert!(cov.0[i] > 0, "no run covered {name}: {cov}");
            }
        }
    }
}

#[test]
fn checks_catch_injected_bugs() {
    let cases: &[(Mutant, bool, &[&str])] = &[
        (
            Mutant::ForgetRecv,
            false,
            &[
                "close-with-ops-in-flight",
                "two-recvs",
                "slot-freed-with-ops",
            ],
        ),
        (Mutant::PhantomCancel, true, &["bookkeeping"]),
        (Mutant::PhantomCancel, false, &["not-freed"]),
        (Mutant::SkipByte, true, &["stream"]),
        (Mutant::DropMessage, true, &["stream"]),
        (
            Mutant::QueueAfterUnsubscribe,
            true,
            &["queued-after-unsubscribe"],
        ),
        (Mutant::LeakBuffer, true, &["buffer-leak"]),
        (
            Mutant::DoubleRecycle,
            true,
            &["buffer-recycle", "buffer-read"],
        ),
        (Mutant::LoseCancelFinals, true, &["not-freed"]),
    ];
    for &(mutant, bookkeeping, expected) in cases {
        let opts = Opts {
            mutant: Some(mutant),
            bookkeeping,
            full_trace: false,
        };
        let caught = (0..300).find_map(|seed| run_seed(seed, opts).err());
        let f = caught.unwrap_or_else(|| panic!("{mutant:?} was never caught in 300 seeds"));
        println!(
            "{mutant:?} (bookkeeping checks {bookkeeping}): caught, seed {} step {}: {}: {}",
            f.seed, f.step, f.violation.kind, f.violation.detail
        );
        assert!(
            f.mutant_applied && expected.contains(&f.violation.kind),
            "{mutant:?} (bookkeeping checks {bookkeeping}) should break one of {expected:?}:\n{f}"
        );
    }
}

/// Fresh driver for direct tests: one accepted connection on `fd`.
fn lone_driver() -> (SimDriver, RawFd) {
    let mut rng = Rng::new(1);
    let mut k = Knobs::random(&mut rng);
    k.hold_pm = 0;
    k.late_pm = 0;
    let trace = Rc::new(RefCell::new(Trace {
        events: VecDeque::new(),
        all: false,
    }));
    let mut d = SimDriver::new(0, rng, &k, trace, vec![3]);
    d.peers.push(Peer::new(0, 0, b'p', 0, &mut Rng::new(2)));
    let fd = FD_BASE;
    d.socks.insert(
        fd,
        Sock {
            peer: 0,
            owner: None,
            shut_wr: false,
            close_submitted: false,
            err_pending: false,
        },
    );
    d.peers[0].fd = Some(fd);
    d.peers[0].state = PeerState::Open;
    (d, fd)
}

fn kinds(d: &SimDriver) -> Vec<&'static str> {
    d.violations.borrow().iter().map(|v| v.kind).collect()
}

#[test]
fn driver_flags_contract_violations() {
    let ud = |op| UserData::new(0, 0, op);

    // Close under an armed recv, then an op and a close on the closed fd.
    let (mut d, fd) = lone_driver();
    d.recv_multi(fd, ud(Op::Recv));
    d.execute();
    d.close(fd, ud(Op::Close));
    assert_eq!(kinds(&d), ["close-with-ops-in-flight"]);
    d.execute();
    d.shutdown_write(fd, ud(Op::Shutdown));
    d.close(fd, ud(Op::Close));
    assert_eq!(
        kinds(&d)[..3],
        [
            "close-with-ops-in-flight",
            "op-on-closed-fd",
            "double-close"
        ]
    );

    // A legal sequence flags nothing: cancel, reap every final completion, then close.
    let (mut d, fd) = lone_driver();
    d.recv_multi(fd, ud(Op::Recv));
    d.execute();
    d.cancel_fd(fd, ud(Op::Cancel));
    d.execute();
    let mut out = Vec::new();
    for _ in 0..8 {
        d.completions(&mut out);
    }
    let mut finals: Vec<_> = out
        .iter()
        .filter(|c| !c.more)
        .map(|c| (c.user_data.op(), c.result))
        .collect();
    finals.sort_by_key(|(op, _)| op.map(|o| o as u8));
    assert_eq!(
        finals,
        [(Some(Op::Recv), -libc::ECANCELED), (Some(Op::Cancel), 1)]
    );
    d.close(fd, ud(Op::Close));
    assert!(kinds(&d).is_empty(), "{:?}", kinds(&d));

    // Two sends at once; buffers recycled twice or never handed out.
    let (mut d, fd) = lone_driver();
    let bytes = b"hello\n";
    let iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &iov as *const _ as *mut _;
    msg.msg_iovlen = 1;
    d.peers[0].window = 0; // never drains: the first send blocks
                           // SAFETY: msg, iov and bytes outlive the driver's use of them below.
    unsafe {
        d.send_msg(fd, &msg, ud(Op::Send));
        d.execute();
        d.send_msg(fd, &msg, ud(Op::Send));
    }
    assert_eq!(kinds(&d), ["two-sends"]);
    d.recycle(0);
    assert_eq!(kinds(&d), ["two-sends", "buffer-recycle"]);
}
