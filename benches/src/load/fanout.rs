//! The `fanout` and `slow` scenarios: N subscribers (K of them slow, plain sockets), P
//! publishers, a warm-up, a measured window, a drain, then the numbers. And `idle`: the same N
//! subscribers, confirmed, held without traffic (for the server's memory per connection).

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::cli::{Config, Proto, Scenario};
use super::publish::{self, PubCounters, Timing};
use super::recv::{self, new_histogram, Handed, Receiver, Shared};
use super::report::Report;
use super::sys::{
    available_cores, connect, cpu_between, now_ns, proc_cpu, proc_cpu_secs, secs_ns, set_rcvbuf,
    sleep_until, tcp_mem_pages, tcp_mem_pressure_pages, vm_rss_kib,
};
use super::wire::subscriber_hello;
use hdrhistogram::Histogram;

const SEC: u64 = 1_000_000_000;

/// Connects `n` subscriber sockets (to `Config::subscriber_addr`) at `rate` per second,
/// sending `hello(i)` on the i-th attempt's socket and handing it to `each(i, socket)`;
/// progress on stderr. Stops early (returning what it has) when the first 100 attempts all
/// failed.
fn connect_paced(
    cfg: &Config,
    n: usize,
    label: &str,
    hello: impl Fn(usize) -> Vec<u8>,
    mut each: impl FnMut(usize, TcpStream),
) -> (usize, usize) {
    let (mut ok, mut failed) = (0usize, 0usize);
    let t0 = now_ns();
    let mut next_report = t0 + SEC;
    let mut first_error = true;
    let addr = cfg.subscriber_addr();
    for i in 0..n {
        sleep_until(t0 + (i as f64 * 1e9 / cfg.connect_rate) as u64);
        let res = connect(&addr, Duration::from_secs(3)).and_then(|mut s| {
            if cfg.rcvbuf > 0 {
                set_rcvbuf(&s, cfg.rcvbuf)?;
            }
            let hello = hello(i);
            if !hello.is_empty() {
                s.write_all(&hello)?;
            }
            Ok(s)
        });
        match res {
            Ok(s) => {
                ok += 1;
                each(i, s);
            }
            Err(e) => {
                if first_error {
                    eprintln!("connect to {addr} failed: {e}");
                    first_error = false;
                }
                failed += 1;
                if ok == 0 && failed >= 100 {
                    eprintln!("giving up: the first {failed} connection attempts all failed");
                    return (ok, failed);
                }
            }
        }
        let now = now_ns();
        if now >= next_report {
            eprintln!("connecting {label} {}/{n} (failed {failed})", i + 1);
            next_report = now + SEC;
        }
    }
    if n >= 1000 || now_ns() - t0 > SEC {
        eprintln!("connected {label} {ok}/{n} (failed {failed})");
    }
    (ok, failed)
}

struct SlowResult {
    /// Disconnect instants (CLOCK_MONOTONIC ns), one per slow subscriber the server dropped.
    disconnects: Vec<u64>,
    resets: u64,
    /// Disconnects seen only in the server's row of /proc/net/tcp (its FIN could not reach us).
    kernel_view: u64,
    bytes_read: u64,
}

/// Slow subscribers: plain sockets read at `bps` bytes/s each (0 = never), polled every 10 ms
/// for the server's FIN or RST (POLLRDHUP/POLLHUP/POLLERR, seen even with unread data).
///
/// A server that closes a subscriber which never reads cannot get its FIN through (the FIN
/// waits behind unsent data and a zero window), so when the server is on this machine
/// (`server_port`), the server's row in /proc/net/tcp is also checked every 250 ms: a server
/// socket that left ESTABLISHED (or vanished) means the server has disconnected us.
fn slow_thread(
    streams: Vec<TcpStream>,
    bps: u64,
    stop: Arc<AtomicBool>,
    hard_deadline: u64,
    server_port: Option<u16>,
) -> SlowResult {
    let mut slow = SlowReaders::new(&streams, bps);
    let mut turn = 0u64;
    let mut last = now_ns();
    // Bounded by the stop flag and a hard deadline.
    while !stop.load(Relaxed) && now_ns() < hard_deadline {
        std::thread::sleep(Duration::from_millis(10));
        let now = now_ns();
        let dt = (now - last) as f64 / 1e9;
        last = now;
        // Every 25th turn (250 ms).
        turn = (turn + 1) % 25;
        if let Some(port) = server_port.filter(|_| turn == 0) {
            slow.check_server_rows(port, now);
        }
        slow.poll_and_read(dt, now);
    }
    drop(streams);
    slow.res
}

/// The slow subscribers' sockets as poll entries, with each one's read credit and whether the
/// server's side of it was seen in /proc/net/tcp.
struct SlowReaders {
    res: SlowResult,
    bps: u64,
    local_ports: Vec<u16>,
    seen_row: Vec<bool>,
    /// Server-side rows by remote port (our local port): true while ESTABLISHED.
    rows: std::collections::HashMap<u16, bool>,
    alive: Vec<bool>,
    credit: Vec<f64>,
    scratch: Vec<u8>,
    pfds: Vec<libc::pollfd>,
}

impl SlowReaders {
    fn new(streams: &[TcpStream], bps: u64) -> Self {
        SlowReaders {
            res: SlowResult {
                disconnects: Vec::new(),
                resets: 0,
                kernel_view: 0,
                bytes_read: 0,
            },
            bps,
            local_ports: streams
                .iter()
                .map(|s| s.local_addr().map_or(0, |a| a.port()))
                .collect(),
            seen_row: vec![false; streams.len()],
            rows: std::collections::HashMap::new(),
            alive: vec![true; streams.len()],
            credit: vec![0.0; streams.len()],
            scratch: vec![0u8; 64 << 10],
            pfds: streams
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN | libc::POLLRDHUP,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// A server socket that left ESTABLISHED, or vanished after being seen, has disconnected
    /// that subscriber even if its FIN cannot reach us.
    fn check_server_rows(&mut self, port: u16, now: u64) {
        self.rows.clear();
        for row in ringfan_testkit::tcp_rows()
            .iter()
            .filter(|r| r.local_port == port)
        {
            self.rows
                .insert(row.remote_port, row.state == ringfan_testkit::ESTABLISHED);
        }
        for i in 0..self.pfds.len() {
            if !self.alive[i] {
                continue;
            }
            match self.rows.get(&self.local_ports[i]) {
                Some(true) => self.seen_row[i] = true,
                Some(false) => {
                    self.alive[i] = false;
                    self.res.kernel_view += 1;
                }
                None if self.seen_row[i] => {
                    self.alive[i] = false;
                    self.res.kernel_view += 1;
                }
                None => {}
            }
            if !self.alive[i] {
                self.gone(i, now);
            }
        }
    }

    fn gone(&mut self, i: usize, now: u64) {
        self.alive[i] = false;
        self.pfds[i].events = 0;
        self.pfds[i].fd = -1;
        self.res.disconnects.push(now);
    }

    fn poll_and_read(&mut self, dt: f64, now: u64) {
        for p in self.pfds.iter_mut() {
            p.revents = 0;
        }
        // SAFETY: `pfds` is a live array of initialised pollfd of the given length.
        let r = unsafe { libc::poll(self.pfds.as_mut_ptr(), self.pfds.len() as libc::nfds_t, 0) };
        if r <= 0 {
            return;
        }
        for i in 0..self.pfds.len() {
            let revents = self.pfds[i].revents;
            if !self.alive[i] || revents == 0 {
                continue;
            }
            let mut gone = revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
            if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                self.res.resets += 1;
            }
            if !gone && self.bps > 0 && revents & libc::POLLIN != 0 {
                gone = self.read_within_credit(i, dt);
            }
            if gone {
                self.gone(i, now);
            }
        }
    }

    /// Reads what subscriber `i`'s credit allows (`bps` per second, at most one second's
    /// worth). True when the server closed it (EOF or an error).
    fn read_within_credit(&mut self, i: usize, dt: f64) -> bool {
        let bps = self.bps as f64;
        self.credit[i] = (self.credit[i] + bps * dt).min(bps);
        let want = (self.credit[i] as usize).min(self.scratch.len());
        if want == 0 {
            return false;
        }
        let fd = self.pfds[i].fd;
        // SAFETY: reads at most `want` <= scratch.len() bytes into `scratch`.
        let n = unsafe {
            libc::recv(
                fd,
                self.scratch.as_mut_ptr().cast(),
                want,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            self.credit[i] -= n as f64;
            self.res.bytes_read += n as u64;
            return false;
        }
        if n == 0 {
            return true;
        }
        let e = std::io::Error::last_os_error().raw_os_error();
        if matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return false;
        }
        self.res.resets += 1;
        true
    }
}

pub fn run(cfg: &Config) -> i32 {
    let n_slow = if cfg.scenario == Scenario::Slow {
        cfg.slow
    } else {
        0
    };
    let n_fast = cfg.subscribers - n_slow;
    let shared = Shared::new(cfg.publishers);
    // The server's memory with none of our connections yet (meaningful on a fresh server).
    let rss_base = cfg.server_pid.and_then(vm_rss_kib);
    let counters = Arc::new(PubCounters::default());
    let run_bound = secs_ns(
        cfg.warmup.as_secs_f64() + cfg.duration.as_secs_f64() + cfg.drain.as_secs_f64() + 600.0,
    );
    let Some(subs) = Subscribers::connect(cfg, n_slow, n_fast, &shared, run_bound) else {
        return 1;
    };

    // Wait until every subscription is confirmed (ringfan: until each subscriber received one
    // of the sync lines, which proves the server registered it).
    let unconfirmed = wait_ready(cfg, &shared, subs.fast_ok);

    if cfg.scenario == Scenario::Idle {
        return idle_hold(
            cfg,
            &shared,
            subs.receivers,
            subs.fast_ok,
            subs.conn_failed,
            unconfirmed,
            rss_base,
        );
    }

    let (pubs, pub_failed) = publish::connect_all(cfg);
    if pubs.is_empty() {
        eprintln!("ringfan-load: no publisher could connect to {}", cfg.addr);
        subs.abort(&shared);
        return 1;
    }

    let timing = start_timing(cfg, &shared, run_bound);
    let running = start_publishers(cfg, pubs, &timing, &shared, &counters);
    let window = progress(cfg, &timing, &shared, &counters);

    let ends = Ends {
        conn_failed: subs.conn_failed,
        unconfirmed,
        pub_failed,
        fast_ok: subs.fast_ok,
        slow_ok: subs.slow_ok,
    };
    let (results, slow) = wind_down(cfg, &shared, &counters, running, subs);

    let totals = Totals::merge(&results);
    let mut rep = Report::default();
    put_setup(&mut rep, cfg);
    put_throughput(&mut rep, cfg, totals.window_msgs, &window);
    put_latency(&mut rep, &totals.hist);
    put_per_subscriber(&mut rep, &results);
    put_counts(&mut rep, cfg, &totals, &counters, &ends);
    if cfg.scenario == Scenario::Slow {
        put_slow(
            &mut rep,
            cfg,
            slow.as_ref(),
            timing.start,
            n_slow,
            ends.slow_ok,
        );
    }
    if !rep.emit(cfg.json.as_deref()) || totals.failed {
        return 1;
    }
    0
}

/// The subscribers of a run: the fast ones handed to receiver threads, the slow ones read by
/// their own thread.
struct Subscribers {
    receivers: Vec<Receiver>,
    fast_ok: usize,
    slow_ok: usize,
    conn_failed: usize,
    slow_stop: Arc<AtomicBool>,
    slow_join: Option<std::thread::JoinHandle<SlowResult>>,
}

impl Subscribers {
    /// Starts the receivers, then connects the slow subscribers (and starts their thread), then
    /// the fast ones. None (after saying why) if a receiver cannot start or nobody connected.
    fn connect(
        cfg: &Config,
        n_slow: usize,
        n_fast: usize,
        shared: &Arc<Shared>,
        run_bound: u64,
    ) -> Option<Subscribers> {
        // Subscriber i of the run (slow ones first) takes its channels and patterns by i.
        let topics = cfg.topics();
        let hello = |i: usize| subscriber_hello(cfg, &topics, i as u32);
        // Receivers first: they arm a receive as soon as a socket is handed over.
        let receivers = spawn_receivers(cfg, n_fast, shared)?;

        let mut slow_streams = Vec::new();
        let (slow_ok, slow_failed) =
            connect_paced(cfg, n_slow, "slow subscribers", hello, |_, s| {
                slow_streams.push(s)
            });
        let slow_stop = Arc::new(AtomicBool::new(false));
        let slow_join = (slow_ok > 0).then(|| {
            let (stop, bps) = (slow_stop.clone(), cfg.slow_bytes_per_sec);
            let deadline = now_ns() + run_bound;
            let sub_addr = cfg.subscriber_addr();
            let port = sub_addr.ip().is_loopback().then_some(sub_addr.port());
            std::thread::spawn(move || slow_thread(slow_streams, bps, stop, deadline, port))
        });

        let mut next = 0usize;
        let fast_hello = |i: usize| hello(n_slow + i);
        let (fast_ok, fast_failed) =
            connect_paced(cfg, n_fast, "subscribers", fast_hello, |i, s| {
                receivers[next % receivers.len()].add(Handed {
                    fd: s.into_raw_fd(),
                    order: next as u32,
                    index: (n_slow + i) as u32,
                });
                next += 1;
            });
        if fast_ok + slow_ok == 0 {
            eprintln!(
                "ringfan-load: no subscriber could connect to {}",
                cfg.subscriber_addr()
            );
            shared.stop.store(true, Relaxed);
            for r in receivers {
                r.join();
            }
            return None;
        }
        Some(Subscribers {
            receivers,
            fast_ok,
            slow_ok,
            conn_failed: slow_failed + fast_failed,
            slow_stop,
            slow_join,
        })
    }

    /// Stops the receivers and the slow subscribers' thread without a report.
    fn abort(self, shared: &Shared) {
        shared.stop.store(true, Relaxed);
        self.slow_stop.store(true, Relaxed);
        for r in self.receivers {
            r.join();
        }
    }
}

fn spawn_receivers(cfg: &Config, n_fast: usize, shared: &Arc<Shared>) -> Option<Vec<Receiver>> {
    let mut receivers: Vec<Receiver> = Vec::new();
    if n_fast > 0 {
        let k = cfg.recv_threads.min(n_fast);
        for i in 0..k {
            match recv::spawn(
                i,
                cfg.proto,
                cfg.topics(),
                n_fast.div_ceil(k),
                shared.clone(),
            ) {
                Ok(r) => receivers.push(r),
                Err(e) => {
                    eprintln!("ringfan-load: {e}");
                    return None;
                }
            }
        }
    }
    Some(receivers)
}

/// Fixes the warm-up and measured window from now and tells the receivers.
fn start_timing(cfg: &Config, shared: &Shared, run_bound: u64) -> Timing {
    let start = now_ns();
    let timing = Timing {
        start,
        measure_start: start + secs_ns(cfg.warmup.as_secs_f64()),
        measure_end: start + secs_ns(cfg.warmup.as_secs_f64() + cfg.duration.as_secs_f64()),
        reader_deadline: start + run_bound,
    };
    shared.measure_start.store(timing.measure_start, Relaxed);
    shared.measure_end.store(timing.measure_end, Relaxed);
    shared.run_start.store(start, Relaxed);
    timing
}

fn start_publishers(
    cfg: &Config,
    pubs: Vec<(u32, TcpStream)>,
    timing: &Timing,
    shared: &Arc<Shared>,
    counters: &Arc<PubCounters>,
) -> Vec<publish::Publisher> {
    let mut running = Vec::new();
    for (id, s) in pubs {
        match publish::start(id, s, cfg, timing, shared.clone(), counters.clone()) {
            Ok(p) => running.push(p),
            Err(e) => {
                eprintln!("publisher {id}: cannot start: {e}");
                counters.errors.fetch_add(1, Relaxed);
            }
        }
    }
    running
}

/// After the measured window: joins the publishers' writers, drains, then stops the
/// receivers, the publishers' readers and the slow subscribers, in that order.
fn wind_down(
    cfg: &Config,
    shared: &Shared,
    counters: &PubCounters,
    running: Vec<publish::Publisher>,
    subs: Subscribers,
) -> (Vec<recv::RecvResult>, Option<SlowResult>) {
    let mut kept = Vec::new();
    let mut readers = Vec::new();
    for p in running {
        let (s, r) = p.join_writer();
        kept.push(s);
        readers.push(r);
    }
    drain(cfg, shared);

    shared.stop.store(true, Relaxed);
    let results: Vec<_> = subs.receivers.into_iter().map(|r| r.join()).collect();
    counters.stop_readers.store(true, Relaxed);
    for r in readers {
        let _ = r.join();
    }
    drop(kept);
    subs.slow_stop.store(true, Relaxed);
    let slow = subs.slow_join.and_then(|j| j.join().ok());
    (results, slow)
}

/// What was sampled around the measured window.
struct Window {
    server_rss: Option<u64>,
    /// (total, user) CPU seconds of the server over the measured window.
    server_cpu: Option<(f64, f64)>,
    /// This process's own CPU over the measured window: near the cores it may use, the
    /// generator is the limit, not the server.
    own_cpu: Option<(f64, f64)>,
    /// Peak of the machine's TCP memory, sampled once a second (see --rcvbuf).
    tcp_mem_peak: u64,
}

/// Progress once a second until the end of the measured window; the server's CPU time is
/// sampled at the start and at the end of the measured window.
fn progress(cfg: &Config, timing: &Timing, shared: &Shared, counters: &PubCounters) -> Window {
    let start = timing.start;
    let mut tick = start + SEC;
    let (mut last_d, mut last_s) = (0u64, 0u64);
    let mut cpu_start: Option<Option<(f64, f64)>> = None;
    let mut cpu_end: Option<(f64, f64)> = None;
    let mut tcp_mem_peak = 0u64;
    let (mut own_cpu_start, mut own_cpu_end) = (None, None);
    // Bounded: every turn sleeps until the next tick, and the loop ends at the window's end.
    loop {
        let mut wake = tick.min(timing.measure_end);
        if cpu_start.is_none() {
            wake = wake.min(timing.measure_start);
        }
        sleep_until(wake);
        let now = now_ns();
        if cpu_start.is_none() && now >= timing.measure_start {
            cpu_start = Some(cfg.server_pid.and_then(proc_cpu));
            own_cpu_start = proc_cpu(std::process::id());
        }
        if now >= timing.measure_end {
            cpu_end = cfg.server_pid.and_then(proc_cpu);
            own_cpu_end = proc_cpu(std::process::id());
        }
        if now < tick && now < timing.measure_end {
            continue;
        }
        let d = shared.delivered.load(Relaxed);
        let s = counters.sent.load(Relaxed);
        tcp_mem_peak = tcp_mem_peak.max(tcp_mem_pages().unwrap_or(0));
        // The phase the second just reported mostly belonged to.
        let phase = if now.saturating_sub(SEC / 2) < timing.measure_start {
            "warmup"
        } else {
            "measure"
        };
        let secs = (now - start) as f64 / 1e9;
        eprintln!(
            "[{phase}] t={secs:.0}s delivered {} msg/s, published {} msg/s, disconnected {}",
            d - last_d,
            s - last_s,
            shared.disconnected.load(Relaxed)
        );
        last_d = d;
        last_s = s;
        if now >= timing.measure_end {
            break;
        }
        tick += SEC;
    }
    Window {
        server_rss: cfg.server_pid.and_then(vm_rss_kib),
        server_cpu: cpu_between(cpu_start.flatten(), cpu_end),
        own_cpu: cpu_between(own_cpu_start, own_cpu_end),
        tcp_mem_peak,
    }
}

/// Waits (at most --drain) until deliveries stop progressing for 300 ms.
fn drain(cfg: &Config, shared: &Shared) {
    let drain_end = now_ns() + secs_ns(cfg.drain.as_secs_f64());
    let mut last_seen = shared.delivered.load(Relaxed);
    let mut last_change = now_ns();
    while now_ns() < drain_end {
        std::thread::sleep(Duration::from_millis(50));
        let d = shared.delivered.load(Relaxed);
        if d != last_seen {
            last_seen = d;
            last_change = now_ns();
        } else if now_ns() - last_change >= 300_000_000 {
            break;
        }
    }
}

/// The receivers' results summed.
struct Totals {
    hist: Histogram<u64>,
    window_msgs: u64,
    stale: u64,
    msgs: u64,
    expected: u64,
    lost_gaps: u64,
    lost_tail: u64,
    reordered: u64,
    malformed: u64,
    misrouted: u64,
    eof: u64,
    resets: u64,
    never_ready: u64,
    rearms: u64,
    enobufs: u64,
    pongs: u64,
    ws_closes: u64,
    /// A receiver stopped on a ring error (printed here).
    failed: bool,
}

impl Totals {
    fn merge(results: &[recv::RecvResult]) -> Totals {
        let mut t = Totals {
            hist: new_histogram(),
            window_msgs: 0,
            stale: 0,
            msgs: 0,
            expected: 0,
            lost_gaps: 0,
            lost_tail: 0,
            reordered: 0,
            malformed: 0,
            misrouted: 0,
            eof: 0,
            resets: 0,
            never_ready: 0,
            rearms: 0,
            enobufs: 0,
            pongs: 0,
            ws_closes: 0,
            failed: false,
        };
        for r in results {
            if let Some(e) = &r.error {
                eprintln!("receiver: {e}");
                t.failed = true;
            }
            let _ = t.hist.add(&r.hist);
            t.msgs += r.msgs;
            t.expected += r.expected;
            t.window_msgs += r.window_msgs;
            t.lost_gaps += r.lost_gaps;
            t.lost_tail += r.lost_tail;
            t.reordered += r.reordered;
            t.malformed += r.malformed;
            t.misrouted += r.misrouted;
            t.stale += r.stale;
            t.eof += r.eof;
            t.resets += r.resets;
            t.never_ready += r.never_ready;
            t.rearms += r.rearms;
            t.enobufs += r.enobufs;
            t.pongs += r.pongs;
            t.ws_closes += r.ws_closes;
        }
        t
    }
}

fn put_setup(rep: &mut Report, cfg: &Config) {
    rep.put("scenario", cfg.scenario.name())
        .put("proto", cfg.proto.name())
        .put("subs", cfg.subscribers as u64)
        .put("pubs", cfg.publishers as u64)
        .put("size", cfg.size as u64)
        .put("topics", cfg.topics as u64)
        .put("topic_subs", cfg.topic_subs as u64)
        .put("patterns", cfg.patterns as u64);
    if cfg.rate > 0.0 && cfg.rate.fract() == 0.0 {
        rep.put("rate", cfg.rate as u64);
    } else if cfg.rate > 0.0 {
        rep.put_f("rate", cfg.rate, 3);
    } else {
        rep.put("rate", "max");
    }
}

fn put_throughput(rep: &mut Report, cfg: &Config, window_msgs: u64, window: &Window) {
    let dur = cfg.duration.as_secs_f64();
    // Throughput = the steady-state receive rate: every message received in the measured
    // window, whenever it was sent (a server that queues a backlog still gets credit for what
    // it delivers in the window; what it delivers later does not count).
    rep.put_f("duration_s", dur, 3)
        .put_f("delivered_msgs_per_s", window_msgs as f64 / dur, 1)
        .put_f(
            "delivered_mb_per_s",
            window_msgs as f64 * cfg.size as f64 / dur / 1e6,
            3,
        );
    match window.server_cpu {
        Some((c, user)) => {
            rep.put_f("server_cpu_s", c, 3)
                .put_f("server_user_s", user, 3);
            if window_msgs > 0 {
                let m = window_msgs as f64 / 1e6;
                rep.put_f("server_cpu_s_per_m", c / m, 4)
                    .put_f("server_user_s_per_m", user / m, 4);
            } else {
                rep.put("server_cpu_s_per_m", serde_json::Value::Null)
                    .put("server_user_s_per_m", serde_json::Value::Null);
            }
        }
        None => {
            rep.put("server_cpu_s", serde_json::Value::Null)
                .put("server_user_s", serde_json::Value::Null)
                .put("server_cpu_s_per_m", serde_json::Value::Null)
                .put("server_user_s_per_m", serde_json::Value::Null);
        }
    }
    if let Some(kib) = window.server_rss {
        rep.put("server_rss_kib", kib);
    }
    if let Some((c, _)) = window.own_cpu {
        rep.put_f("load_cpu_s", c, 3)
            .put_f("load_cores_busy", c / cfg.duration.as_secs_f64(), 3)
            .put("load_cores", available_cores());
    }
    put_tcp_mem(rep, cfg, window.tcp_mem_peak);
}

fn put_tcp_mem(rep: &mut Report, cfg: &Config, tcp_mem_peak: u64) {
    rep.put("rcvbuf", cfg.rcvbuf as u64)
        .put("tcp_mem_peak_pages", tcp_mem_peak);
    if let Some(limit) = tcp_mem_pressure_pages() {
        rep.put("tcp_mem_pressure_pages", limit);
        if tcp_mem_peak >= limit {
            eprintln!(
                "warning: TCP memory reached {tcp_mem_peak} pages, past the kernel's pressure \
                 threshold ({limit} pages, net.ipv4.tcp_mem): the kernel was shrinking socket \
                 buffers, so these figures describe that, not the server; rerun with a fixed \
                 --rcvbuf (e.g. 256k) or fewer subscribers"
            );
        }
    }
}

fn put_latency(rep: &mut Report, hist: &Histogram<u64>) {
    let q = |v: f64| -> Option<f64> {
        (!hist.is_empty()).then(|| hist.value_at_quantile(v) as f64 / 1e3)
    };
    for (k, v) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
        match q(v) {
            Some(x) => rep.put_f(k, x, 1),
            None => rep.put(k, serde_json::Value::Null),
        };
    }
    if !hist.is_empty() {
        rep.put_f("max_us", hist.max() as f64 / 1e3, 1);
    } else {
        rep.put("max_us", serde_json::Value::Null);
    }
}

/// How the run's connections ended up, for the counts in the report.
struct Ends {
    conn_failed: usize,
    unconfirmed: usize,
    pub_failed: usize,
    fast_ok: usize,
    slow_ok: usize,
}

fn put_counts(rep: &mut Report, cfg: &Config, t: &Totals, counters: &PubCounters, ends: &Ends) {
    let dur = cfg.duration.as_secs_f64();
    let published = counters.published.load(Relaxed);
    rep.put("lost", t.lost_gaps + t.lost_tail)
        .put("reordered", t.reordered)
        .put("malformed", t.malformed)
        .put("misrouted", t.misrouted)
        .put("stale", t.stale)
        .put("disconnected", t.eof + t.resets)
        .put("conn_failed", ends.conn_failed as u64)
        .put("unconfirmed", ends.unconfirmed as u64)
        .put("published", published)
        .put_f("published_msgs_per_s", published as f64 / dur, 1)
        .put(
            "pub_failed",
            (ends.pub_failed as u64) + counters.errors.load(Relaxed),
        )
        .put("delivered", t.window_msgs)
        .put("measured_delivered", t.msgs)
        .put("expected", t.expected)
        .put("lost_in_flight", t.lost_gaps)
        .put("lost_at_end", t.lost_tail)
        .put("fast_subs_connected", ends.fast_ok as u64)
        .put("eof", t.eof)
        .put("resets", t.resets)
        .put("never_confirmed", t.never_ready)
        .put("recv_rearms", t.rearms)
        .put("recv_enobufs", t.enobufs)
        .put("sub_pongs", t.pongs);
    if cfg.proto == Proto::Ws {
        rep.put("ws_close_frames", t.ws_closes);
    }
}

fn put_slow(
    rep: &mut Report,
    cfg: &Config,
    slow: Option<&SlowResult>,
    start: u64,
    n_slow: usize,
    slow_ok: usize,
) {
    let times: Vec<f64> = slow
        .map(|s| {
            s.disconnects
                .iter()
                .map(|&t| (t as f64 - start as f64) / 1e9)
                .collect()
        })
        .unwrap_or_default();
    rep.put("slow", n_slow as u64)
        .put("slow_connected", slow_ok as u64)
        .put("slow_bytes_per_sec", cfg.slow_bytes_per_sec)
        .put("slow_disconnected", times.len() as u64)
        .put("slow_resets", slow.map_or(0, |s| s.resets))
        .put("slow_closed_unseen", slow.map_or(0, |s| s.kernel_view))
        .put("slow_bytes_read", slow.map_or(0, |s| s.bytes_read));
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    match (sorted.first(), sorted.last()) {
        (Some(&a), Some(&b)) => {
            rep.put_f("slow_disc_first_s", a, 3)
                .put_f("slow_disc_median_s", sorted[sorted.len() / 2], 3)
                .put_f("slow_disc_last_s", b, 3);
        }
        _ => {
            rep.put("slow_disc_first_s", serde_json::Value::Null)
                .put("slow_disc_median_s", serde_json::Value::Null)
                .put("slow_disc_last_s", serde_json::Value::Null);
        }
    }
    let arr: Vec<serde_json::Value> = times
        .iter()
        .map(|t| {
            serde_json::Number::from_f64((t * 1000.0).round() / 1000.0)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)
        })
        .collect();
    rep.put("slow_disconnect_times_s", serde_json::Value::Array(arr));
}

/// The idle scenario: the subscribers are connected and confirmed; hold them for --duration
/// (progress once a second), then report, with the server's RSS per connection when known.
/// Subscribers with fewer measured markers than this are left out of the per-subscriber figures
/// (their p99 would be their maximum).
const SUB_SAMPLES_MIN: u64 = 20;

/// Per-subscriber latency: how unequal the subscribers are served. `sub_p99_spread` = the
/// largest per-subscriber p99 over the smallest (1 = every subscriber has the same tail); the
/// first and last subscriber (in connection order) show whether the server favours the order
/// in which they connected. Null where no subscriber had `SUB_SAMPLES_MIN` markers.
fn put_per_subscriber(rep: &mut Report, results: &[recv::RecvResult]) {
    let mut subs: Vec<recv::SubLatency> = results
        .iter()
        .flat_map(|r| r.per_sub.iter().copied())
        .filter(|s| s.samples >= SUB_SAMPLES_MIN)
        .collect();
    subs.sort_by_key(|s| s.order);
    let p99 = |f: fn(u64, u64) -> u64| subs.iter().map(|s| s.p99_us).reduce(f);
    let (Some(min), Some(max), Some(first), Some(last)) = (
        p99(u64::min),
        p99(u64::max),
        subs.first().copied(),
        subs.last().copied(),
    ) else {
        for k in [
            "sub_p99_min_us",
            "sub_p99_max_us",
            "sub_p99_spread",
            "first_sub_p50_us",
            "first_sub_p99_us",
            "last_sub_p50_us",
            "last_sub_p99_us",
        ] {
            rep.put(k, serde_json::Value::Null);
        }
        return;
    };
    rep.put("sub_p99_min_us", min)
        .put("sub_p99_max_us", max)
        .put_f("sub_p99_spread", max as f64 / min.max(1) as f64, 2)
        .put("first_sub_p50_us", first.p50_us)
        .put("first_sub_p99_us", first.p99_us)
        .put("last_sub_p50_us", last.p50_us)
        .put("last_sub_p99_us", last.p99_us);
}

fn idle_hold(
    cfg: &Config,
    shared: &Shared,
    receivers: Vec<Receiver>,
    connected: usize,
    conn_failed: usize,
    unconfirmed: usize,
    rss_base: Option<u64>,
) -> i32 {
    let start = now_ns();
    let end = start + secs_ns(cfg.duration.as_secs_f64());
    let mut tick = start + SEC;
    // Bounded: sleeps until each tick, ends at `end`.
    while now_ns() < end {
        sleep_until(tick.min(end));
        tick += SEC;
        eprintln!(
            "[idle] t={:.0}s holding {} subscribers, disconnected {}",
            (now_ns() - start) as f64 / 1e9,
            connected,
            shared.disconnected.load(Relaxed)
        );
    }
    let rss_idle = cfg.server_pid.and_then(vm_rss_kib);
    let cpu = cfg.server_pid.and_then(proc_cpu_secs);
    shared.stop.store(true, Relaxed);
    let mut failed = false;
    let (mut eof, mut resets, mut malformed) = (0u64, 0u64, 0u64);
    for r in receivers {
        let r = r.join();
        if let Some(e) = &r.error {
            eprintln!("receiver: {e}");
            failed = true;
        }
        eof += r.eof;
        resets += r.resets;
        malformed += r.malformed;
    }
    let mut rep = Report::default();
    rep.put("scenario", "idle")
        .put("proto", cfg.proto.name())
        .put("subs", cfg.subscribers as u64)
        .put("connected", connected as u64)
        .put("conn_failed", conn_failed as u64)
        .put("unconfirmed", unconfirmed as u64)
        .put("disconnected", eof + resets)
        .put("malformed", malformed)
        .put_f("held_s", cfg.duration.as_secs_f64(), 3);
    let held = (connected as u64).saturating_sub(eof + resets);
    match (rss_base, rss_idle) {
        (Some(a), Some(b)) => {
            rep.put("server_rss_base_kib", a)
                .put("server_rss_idle_kib", b);
            if held > 0 {
                let per = (b as f64 - a as f64) * 1024.0 / held as f64;
                rep.put_f("rss_per_conn_bytes", per, 0);
            } else {
                rep.put("rss_per_conn_bytes", serde_json::Value::Null);
            }
        }
        _ => {
            rep.put("server_rss_base_kib", serde_json::Value::Null)
                .put("server_rss_idle_kib", serde_json::Value::Null)
                .put("rss_per_conn_bytes", serde_json::Value::Null);
        }
    }
    if let Some(c) = cpu {
        rep.put_f("server_cpu_s_total", c, 3);
    }
    if !rep.emit(cfg.json.as_deref()) || failed || connected == 0 {
        return 1;
    }
    0
}

/// Waits until the subscribers' subscriptions are confirmed, or a deadline. Returns how many
/// were not confirmed.
fn wait_ready(cfg: &Config, shared: &Shared, connected: usize) -> usize {
    if connected == 0 {
        return 0;
    }
    let t0 = now_ns();
    // Thousands of channels per subscriber take the server a while to confirm, too.
    let subscriptions = connected as u64 * cfg.topic_subs as u64 + cfg.patterns as u64;
    let deadline = t0 + (5 + connected as u64 / 1000 + subscriptions / 100_000).min(60) * SEC;
    let mut sync = if cfg.proto == Proto::Ringfan {
        connect(&cfg.addr, Duration::from_secs(3)).ok()
    } else {
        None
    };
    let mut scratch = vec![0u8; 16 << 10];
    let mut next_report = t0 + SEC;
    let settled = || {
        shared.ready.load(Relaxed)
            + shared.hs_failed.load(Relaxed)
            + shared.disconnected.load(Relaxed)
    };
    // Bounded by the deadline.
    while settled() < connected && now_ns() < deadline {
        if let Some(s) = sync.as_mut() {
            // A line without '@': ignored by every scanner; reaching a subscriber proves the
            // server has registered it.
            if s.write_all(b"ringfan-load sync\n").is_err() {
                sync = None;
            } else {
                super::sys::drain_nonblocking(s.as_raw_fd(), &mut scratch);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        if now_ns() >= next_report {
            eprintln!(
                "waiting for subscriptions {}/{connected}",
                shared.ready.load(Relaxed)
            );
            next_report += SEC;
        }
    }
    if let Some(s) = sync.as_ref() {
        super::sys::drain_nonblocking(s.as_raw_fd(), &mut scratch);
    }
    drop(sync);
    let missing = connected.saturating_sub(settled());
    if missing > 0 {
        eprintln!("warning: {missing} subscriptions not confirmed before the deadline");
    }
    missing
}
