//! What a failure report shows: the trace of events (submissions, completions, peers' acts,
//! turns), the broken invariant ([`Violation`]) and the coverage counters that prove a sweep
//! took the paths its faults lead to.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::RawFd;
use std::rc::Rc;

use ringfan_ring::{Completion, Op, UserData};

use super::driver::LISTENER_SLOT_MIN;

/// Events kept for a failure report, and how many of them are printed.
pub(super) const TRACE_KEEP: usize = 30;

#[derive(Clone, Copy, Debug)]
pub(super) enum PeerEv {
    Arrive,
    /// A peer that speaks RESP arrived.
    ArriveResp,
    Publish,
    Overlong,
    Read,
    Eof,
    Fin,
    Reset,
    Refused,
}

#[derive(Clone, Debug)]
pub(super) enum Ev {
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

pub(super) fn fmt_ud(ud: UserData) -> String {
    if ud.slot() >= LISTENER_SLOT_MIN {
        format!("listener {}", (u32::MAX - 1).wrapping_sub(ud.slot()))
    } else {
        format!("slot {} gen {}", ud.slot(), ud.generation())
    }
}

pub(super) fn op_name(op: Option<Op>) -> &'static str {
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

pub(super) fn errno_name(e: i32) -> String {
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

pub(super) struct Trace {
    pub(super) events: VecDeque<Ev>,
    /// Keep every event (replay with RINGFAN_SIM_TRACE=1), not only the last few.
    pub(super) all: bool,
}

impl Trace {
    pub(super) fn push(&mut self, ev: Ev) {
        if !self.all && self.events.len() >= TRACE_KEEP {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }
}

pub(super) type SharedTrace = Rc<RefCell<Trace>>;

// ---- violations and coverage -----------------------------------------------------------------

/// A broken invariant: `kind` names it (tests match on it), `detail` says what happened.
#[derive(Clone, Debug)]
pub(super) struct Violation {
    pub(super) kind: &'static str,
    pub(super) detail: String,
}

impl Violation {
    pub(super) fn new(kind: &'static str, detail: String) -> Self {
        Violation { kind, detail }
    }
}

macro_rules! coverage {
    ($($name:ident),* $(,)?) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy, Debug)]
        pub(super) enum Cov { $($name),* }
        pub(super) const COV_NAMES: &[&str] = &[$(stringify!($name)),*];
    };
}

coverage!(
    runs,
    two_workers,
    publish_listener,
    resp_listener,
    resp_peers,
    resp_replies,
    resp_other_replies,
    resp_messages_checked,
    resp_lines_to_line_peers,
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
pub(super) struct Coverage(pub(super) [u64; COV_NAMES.len()]);

impl Default for Coverage {
    fn default() -> Self {
        Coverage([0; COV_NAMES.len()])
    }
}

impl Coverage {
    pub(super) fn bump(&mut self, c: Cov) {
        self.0[c as usize] += 1;
    }
    pub(super) fn add_n(&mut self, c: Cov, n: u64) {
        self.0[c as usize] += n;
    }
    pub(super) fn add(&mut self, o: &Coverage) {
        for (a, b) in self.0.iter_mut().zip(o.0.iter()) {
            *a += b;
        }
    }
    pub(super) fn get(&self, c: Cov) -> u64 {
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
