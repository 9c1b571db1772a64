//! The `storm` scenario: connect/close churn from many threads, rotating FIN, RST and
//! half-close, then the server's side of it as the kernel sees it. With ws the churn is on the
//! WebSocket listener, each connection sending its upgrade request.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::cli::{Config, Proto};
use super::report::Report;
use super::sys::{
    connect, drain_nonblocking, now_ns, secs_ns, server_states, set_linger_zero, try_fd_count,
    ServerStates,
};
use super::ws;

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    cycles: AtomicU64,
    fin: AtomicU64,
    rst: AtomicU64,
    half: AtomicU64,
    connect_errors: AtomicU64,
    write_errors: AtomicU64,
    half_timeouts: AtomicU64,
    half_resets: AtomicU64,
}

fn cycle(cfg: &Config, c: &Counters, n: u64, scratch: &mut [u8]) {
    let mut s = match connect(&cfg.subscriber_addr(), Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => {
            c.connect_errors.fetch_add(1, Relaxed);
            // Back off a little so a refusing server does not turn this into a busy loop.
            std::thread::sleep(Duration::from_millis(1));
            return;
        }
    };
    let hello = match cfg.proto {
        // No '@' in it: harmless to a concurrent fanout run's scanners.
        Proto::Ringfan => b"storm hello\n".to_vec(),
        Proto::Ws => ws::upgrade_request(&cfg.subscriber_addr(), None),
        _ => Vec::new(),
    };
    if cfg.storm_send && !hello.is_empty() && s.write_all(&hello).is_err() {
        c.write_errors.fetch_add(1, Relaxed);
    }
    match n % 3 {
        0 => {
            // Normal close. Unread data would turn close() into a RST: read what is there.
            drain_nonblocking(s.as_raw_fd(), scratch);
            drop(s);
            c.fin.fetch_add(1, Relaxed);
        }
        1 => {
            let _ = set_linger_zero(&s);
            drop(s);
            c.rst.fetch_add(1, Relaxed);
        }
        _ => {
            let _ = s.shutdown(Shutdown::Write);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let deadline = now_ns() + 2_000_000_000;
            // Bounded: each read waits at most 2 s, and the loop ends at the deadline.
            loop {
                match s.read(scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        c.half_timeouts.fetch_add(1, Relaxed);
                        break;
                    }
                    Err(_) => {
                        c.half_resets.fetch_add(1, Relaxed);
                        break;
                    }
                }
                if now_ns() >= deadline {
                    c.half_timeouts.fetch_add(1, Relaxed);
                    break;
                }
            }
            drop(s);
            c.half.fetch_add(1, Relaxed);
        }
    }
    c.cycles.fetch_add(1, Relaxed);
}

pub fn run(cfg: &Config) -> i32 {
    let port = cfg.subscriber_addr().port();
    let fds_before = cfg.server_pid.and_then(try_fd_count);
    let before = server_states(port);
    // With --cycles and no explicit --duration, the cycle count is the bound (cap: 1 hour).
    let dur = if cfg.cycles.is_some() && !cfg.duration_given {
        3600.0
    } else {
        cfg.duration.as_secs_f64()
    };
    let start = now_ns();
    let end = start + secs_ns(dur);
    let c = Arc::new(Counters::default());
    let threads = spawn_threads(cfg, &c, end);
    progress(&threads, &c, start);
    for h in threads {
        let _ = h.join();
    }
    let elapsed = (now_ns() - start) as f64 / 1e9;

    // Give the server up to 3 s to finish closing, then look at its side of things.
    let settle_end = now_ns() + 3_000_000_000;
    let mut after = server_states(port);
    while after.open() > before.open() && now_ns() < settle_end {
        std::thread::sleep(Duration::from_millis(100));
        after = server_states(port);
    }
    let settle_s = 3.0 - (settle_end.saturating_sub(now_ns())) as f64 / 1e9;
    let fds_after = cfg.server_pid.and_then(try_fd_count);

    let cycles = c.cycles.load(Relaxed);
    let mut rep = Report::default();
    put_cycles(&mut rep, cfg, &c, elapsed);
    rep.put_f("settle_s", settle_s, 2);
    put_server_side(&mut rep, &before, &after, fds_before, fds_after);
    let ok = rep.emit(cfg.json.as_deref());
    if cycles == 0 {
        eprintln!(
            "ringfan-load: no storm cycle completed against {}",
            cfg.subscriber_addr()
        );
        return 1;
    }
    if ok {
        0
    } else {
        1
    }
}

/// One thread per --storm-concurrency, each running cycles until `end` or --cycles.
fn spawn_threads(cfg: &Config, c: &Arc<Counters>, end: u64) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for t in 0..cfg.storm_concurrency {
        let (cfg, c) = (cfg.clone(), c.clone());
        let h = std::thread::Builder::new()
            .name(format!("storm-{t}"))
            .stack_size(256 << 10)
            .spawn(move || {
                let mut scratch = vec![0u8; 16 << 10];
                while now_ns() < end {
                    let n = c.claimed.fetch_add(1, Relaxed);
                    if cfg.cycles.is_some_and(|max| n >= max) {
                        break;
                    }
                    cycle(&cfg, &c, n, &mut scratch);
                }
            });
        match h {
            Ok(h) => threads.push(h),
            Err(e) => eprintln!("cannot start storm thread {t}: {e}"),
        }
    }
    threads
}

/// A progress line once a second until every thread has finished.
fn progress(threads: &[JoinHandle<()>], c: &Counters, start: u64) {
    let mut last = 0u64;
    let mut tick = start + 1_000_000_000;
    while threads.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = now_ns();
        if now >= tick {
            let n = c.cycles.load(Relaxed);
            eprintln!(
                "storm t={:.0}s cycles {} ({}/s), connect errors {}",
                (now - start) as f64 / 1e9,
                n,
                n - last,
                c.connect_errors.load(Relaxed)
            );
            last = n;
            tick += 1_000_000_000;
        }
    }
}

fn put_cycles(rep: &mut Report, cfg: &Config, c: &Counters, elapsed: f64) {
    let cycles = c.cycles.load(Relaxed);
    let errors = c.connect_errors.load(Relaxed)
        + c.write_errors.load(Relaxed)
        + c.half_timeouts.load(Relaxed)
        + c.half_resets.load(Relaxed);
    rep.put("scenario", "storm")
        .put("proto", cfg.proto.name())
        .put("concurrency", cfg.storm_concurrency as u64)
        .put("cycles", cycles)
        .put_f("elapsed_s", elapsed, 3)
        .put_f("cycles_per_s", cycles as f64 / elapsed.max(1e-9), 1)
        .put("errors", errors)
        .put("connect_errors", c.connect_errors.load(Relaxed))
        .put("write_errors", c.write_errors.load(Relaxed))
        .put("half_close_timeouts", c.half_timeouts.load(Relaxed))
        .put("half_close_resets", c.half_resets.load(Relaxed))
        .put("fin", c.fin.load(Relaxed))
        .put("rst", c.rst.load(Relaxed))
        .put("half", c.half.load(Relaxed));
}

fn put_server_side(
    rep: &mut Report,
    before: &ServerStates,
    after: &ServerStates,
    fds_before: Option<usize>,
    fds_after: Option<usize>,
) {
    rep.put("srv_established", after.established)
        .put("srv_close_wait", after.close_wait)
        .put("srv_fin_wait1", after.fin_wait1)
        .put("srv_fin_wait2", after.fin_wait2)
        .put("srv_time_wait", after.time_wait)
        .put("srv_last_ack", after.last_ack)
        .put("srv_syn_recv", after.syn_recv)
        .put("srv_closing", after.closing)
        .put("srv_established_before", before.established);
    let opt = |v: Option<usize>| v.map_or(serde_json::Value::Null, |n| (n as u64).into());
    rep.put("srv_fds_before", opt(fds_before))
        .put("srv_fds_after", opt(fds_after));
}
