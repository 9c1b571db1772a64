//! A deterministic, fault-injecting simulated ring under real [`Worker`]s.
//!
//! [`SimDriver`] implements [`ringfan_ring::Driver`] with io_uring's completion semantics and fake peers
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
//! the backlog, during a blocked flush and right after SHUT_WR). In some runs each worker also
//! has a RESP listener: its peers send `HELLO 3` and `SUBSCRIBE lines`, then publish their lines
//! with `PUBLISH lines <line>` (now and then a `PING`, or joining or leaving a side channel),
//! and read RESP3 (`resp.rs`).
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
//!   a connection that may not publish, nothing after a protocol-error line; a RESP peer's
//!   stream is whole RESP3 values in the order its commands ask for, its `message` payloads pass
//!   the same line checks (its own lines included, whatever the echo setting), and each of its
//!   own messages comes right before the reply to its `PUBLISH`;
//! - after shutdown every connection is freed in bounded time and `turn` returns true, with
//!   nothing left in flight.
//!
//! Replay one seed: `RINGFAN_SIM_SEED=<n> cargo test -p ringfan --lib sim -- --nocapture`
//! (add `RINGFAN_SIM_TRACE=1` for the whole trace). `RINGFAN_SIM_SEEDS=<count>` and
//! `RINGFAN_SIM_SEED_BASE=<first>` choose the seeds the main test runs (for longer soaks).
//!
//! Modules: `rng` the seeded PRNG; `knobs` what a seed decides up front; `peer` the fake peers
//! and their stream checks; `resp` what RESP peers send and the checks on what they read; `driver` [`SimDriver`] and its `Driver` implementation; `exec` what
//! the simulated kernel does with a submission; `net` the peers' side of the network; `trace`
//! events, violations and coverage; `checks` the per-turn and end-of-run invariants; `mutants`
//! deliberate bugs and the proof that the checks catch them; `tests` the seed sweep, the failed
//! seeds kept as regression tests, and the driver's contract checks. This file holds [`Sim`],
//! one seeded run, and the sweep over many seeds.

mod checks;
mod driver;
mod exec;
mod knobs;
mod mutants;
mod net;
mod peer;
mod resp;
mod rng;
mod tests;
mod trace;

pub(crate) use driver::read_msg;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringfan_ring::Driver;

use crate::config::Config;
use crate::hub::Shared;
use crate::topics::Proto;
use crate::worker::{ListenFd, Worker};

use checks::Snap;
use driver::SimDriver;
use knobs::Knobs;
use mutants::Mutant;
use peer::StreamCtx;
use rng::Rng;
use trace::{Cov, Coverage, Ev, SharedTrace, Trace, Violation};

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
            let mut listeners = ListenFd::lines(open(), knobs.publish_listener.then(open));
            if knobs.resp_listener {
                listeners.push(ListenFd {
                    fd: open(),
                    proto: Proto::Resp,
                    publishers: true,
                });
            }
            // With a publish listener, lines sent on the line listener are never delivered.
            let roles = listeners
                .iter()
                .map(|l| {
                    let tag = if l.publishers { b'p' } else { b's' };
                    (l.fd.as_raw_fd(), (l.proto, tag))
                })
                .collect();
            let driver = SimDriver::new(id, rng.fork(), &knobs, trace.clone(), roles);
            mailboxes.push((tx, driver.doorbell()));
            workers.push(Worker::new(
                id,
                cfg.clone(),
                driver,
                shared.clone(),
                rx,
                listeners,
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
        if knobs.resp_listener {
            cov.bump(Cov::resp_listener);
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
