//! `ringfan-load`: load generator for ringfan (and Redis pub/sub and NATS for comparison).
//!
//! Subscribers receive on io_uring receiver threads (`ringfan_ring::Uring`, multishot recv into
//! provided buffers); publishers are blocking sockets on their own threads. See `--help`.

#[path = "../load/mod.rs"]
mod load;

use load::cli::{self, Scenario};

fn main() {
    let cfg = cli::parse(std::env::args().skip(1));
    // A limit that cannot be raised is reported below against what this run needs.
    let limit = load::sys::raise_nofile().unwrap_or_else(|e| e.soft);
    let needed = match cfg.scenario {
        Scenario::Storm => cfg.storm_concurrency,
        _ => cfg.subscribers + 2 * cfg.publishers,
    } + 64;
    if (limit as usize) < needed {
        eprintln!(
            "warning: the fd limit ({limit}) is below the ~{needed} this run needs; \
             connections beyond it will fail"
        );
    }
    // A server that resets a publisher must not kill us with SIGPIPE.
    // SAFETY: setting a signal disposition to SIG_IGN has no memory effects.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let code = match cfg.scenario {
        Scenario::Fanout | Scenario::Slow | Scenario::Idle => load::fanout::run(&cfg),
        Scenario::Storm => load::storm::run(&cfg),
    };
    std::process::exit(code);
}
