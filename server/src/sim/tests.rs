//! The seed sweep, the failed seeds kept as regression tests, and direct tests of the
//! driver's contract checks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Instant;

use ringfan_ring::{Driver, Op, UserData};

use crate::topics::Proto;

use super::driver::{SimDriver, Sock};
use super::knobs::Knobs;
use super::net::FD_BASE;
use super::peer::{Peer, PeerState};
use super::rng::Rng;
use super::trace::{Cov, Trace, COV_NAMES};
use super::{env_u64, run_many, run_seed, Opts, Sim};

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
    // The kept seeds first, whatever range the sweep covers.
    for &(seed, what) in REGRESSION_SEEDS {
        if let Err(f) = run_seed(seed, Opts::default()) {
            panic!("regression seed {seed} ({what}) fails again:\n{f}");
        }
    }
    let started = Instant::now();
    let (cov, failures) = run_many(base..base + count, Opts::default());
    if let Some(f) = failures.first() {
        panic!(
            "{f}\n  once fixed, keep it: add ({}, \"what it found\") to REGRESSION_SEEDS in {}",
            f.seed,
            file!()
        );
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

/// Every seed that ever failed, with what it found, run first by `seeds` so that its bug stays
/// fixed even when the sweep's range or the seed count changes (a seed found by a soak with
/// `RINGFAN_SIM_SEED_BASE` lies outside the default sweep). When a seed fails: replay it
/// (`RINGFAN_SIM_SEED`), fix the bug, add `(seed, "what broke")` here.
///
/// A seed names a scenario only while the simulation draws its random numbers in the same
/// order: after a change that adds or moves a draw, check with `RINGFAN_SIM_TRACE=1` that each
/// seed here still reaches the path it was kept for.
const REGRESSION_SEEDS: &[(u64, &str)] = &[
    (
        122,
        "a RESP subscriber evicted by the fan-out of its own PUBLISH went on with the rest of \
         the buffer; its UNSUBSCRIBE panicked the worker",
    ),
    (
        597,
        "a RESP subscriber evicted by the fan-out its SUBSCRIBE runs first (a line published \
         earlier in the turn) still joined the topic: bookkeeping broken",
    ),
];

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
    let mut d = SimDriver::new(0, rng, &k, trace, vec![(3, (Proto::Lines, b'p'))]);
    d.peers
        .push(Peer::new(0, 0, (Proto::Lines, b'p'), 0, &mut Rng::new(2)));
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
    // The peer never drains: the first send blocks.
    d.peers[0].window = 0;
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
