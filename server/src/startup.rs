//! From a configuration to running workers, and back: pick the driver, bind the listeners,
//! spawn one pinned worker per thread, wait for a signal or a failing worker, drain, report.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use ringfan_ring::{Doorbell, Driver, Epoll, RingConfig, Uring};

use ringfan::config::{self, Config, DriverChoice};
use ringfan::hub::{Batch, Shared};
use ringfan::stats::Stats;
use ringfan::topics::Proto;
use ringfan::worker::{ListenFd, Worker};
use ringfan::{backbone, metrics, net};

use crate::{EXIT_DRIVER_SETUP, EXIT_NO_IO_URING, EXIT_WORKER_FAILED};

/// How often the main thread looks for a worker that stopped: a failure ends the process
/// within about this long.
const WORKER_POLL: Duration = Duration::from_millis(100);
/// The same while draining, shorter: the process should exit as soon as the last worker is done.
const DRAIN_POLL: Duration = Duration::from_millis(5);

type Error = Box<dyn std::error::Error>;

/// Runs the server until a signal has drained it (exit 0) or something failed.
pub fn serve(cfg: Config) -> Result<ExitCode, Error> {
    let nofile = raise_nofile();
    let (use_uring, driver_line) = match choose_driver(cfg.driver) {
        Ok(choice) => choice,
        Err(code) => return Ok(code),
    };
    // Signals are taken by sigwait on this thread; block them before any worker exists so every
    // thread inherits the mask.
    let signals = block_signals();
    // Installed before any worker registers its metric handles.
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => Some(metrics::install(addr).map_err(|e| {
            format!("cannot serve metrics on {addr} (RINGFAN_METRICS_LISTEN): {e}")
        })?),
        None => None,
    };
    let bound = Bound::listen(&cfg)?;
    let shared = Arc::new(Shared::new(
        cfg.threads,
        cfg.turn_input_bytes_max(),
        connection_limit(&cfg, nofile),
    ));
    let backbone = start_backbone(&cfg, &shared, metrics_addr.is_some())?;
    let cfg = Arc::new(cfg);
    let mut handles = match spawn_workers(&cfg, &shared, use_uring, bound.listeners)? {
        Ok(handles) => handles,
        Err(code) => return Ok(code),
    };
    tracing::info!(%cfg, "ringfan starting");
    tracing::info!("driver: {driver_line}");
    println!("ringfan listening on {}", bound.addr);
    if let Some(p) = bound.publish_addr {
        println!("ringfan publishers on {p}");
    }
    if let Some(r) = bound.resp_addr {
        println!("ringfan resp on {r}");
    }
    if let Some(w) = bound.ws_addr {
        println!("ringfan websocket on {w}");
    }
    if backbone.is_some() {
        println!("ringfan nats backbone via {}", cfg.nats_urls.join(","));
    }
    if let Some(m) = metrics_addr {
        println!("ringfan metrics on http://{m}/metrics");
    }
    let _ = std::io::stdout().flush();
    let mut total = Stats::default();
    if let Some(code) = run_until_signal(&signals, &mut handles, &mut total) {
        return Ok(code);
    }
    shared.shutdown.store(true, Ordering::Release);
    shared.wake_all();
    if let Some(code) = drain(&signals, &mut handles, &mut total) {
        return Ok(code);
    }
    if let Some(thread) = backbone {
        // It exits once it has flushed the workers' last messages, within its own deadline.
        let _ = thread.join();
    }
    if total.shutdown_aborted > 0 {
        tracing::warn!(
            connections = total.shutdown_aborted,
            "closed abortively at shutdown (RINGFAN_SHUTDOWN_TIMEOUT_MS passed)"
        );
    }
    tracing::info!("stopped: {total}");
    Ok(ExitCode::SUCCESS)
}

/// Starts the NATS backbone thread when RINGFAN_NATS_URL is set, and hands the workers its link.
fn start_backbone(
    cfg: &Config,
    shared: &Arc<Shared>,
    metrics: bool,
) -> Result<Option<thread::JoinHandle<()>>, Error> {
    if cfg.nats_urls.is_empty() {
        return Ok(None);
    }
    let settings = backbone::Settings {
        urls: cfg.nats_urls.clone(),
        prefix: cfg.nats_prefix.clone(),
        shutdown_timeout: cfg.shutdown_timeout,
        metrics,
    };
    let (link, thread) = backbone::start(settings, shared.clone())
        .map_err(|e| format!("cannot start the NATS backbone: {e}"))?;
    assert!(shared.backbone.set(link).is_ok(), "backbone started twice");
    Ok(Some(thread))
}

/// Raises the soft open-file limit to the hard one; returns the limit in force.
fn raise_nofile() -> u64 {
    match net::raise_nofile_limit() {
        Ok((old, new)) => {
            if old != new {
                tracing::info!("raised the open-file limit from {old} to {new}");
            }
            new
        }
        Err(e) => {
            tracing::warn!("could not raise RLIMIT_NOFILE: {e}");
            1024
        }
    }
}

/// io_uring unless it is refused here (auto) or epoll is asked for: (use io_uring, what to log),
/// or the exit status when io_uring was required and is refused.
fn choose_driver(choice: DriverChoice) -> Result<(bool, String), ExitCode> {
    match choice {
        DriverChoice::Epoll => Ok((false, "epoll (RINGFAN_DRIVER=epoll)".to_string())),
        DriverChoice::IoUring => {
            match ringfan_ring::probe() {
                Ok(f) => Ok((true, format!("io_uring: {f}"))),
                Err(e) => {
                    tracing::error!("{e} (RINGFAN_DRIVER=io_uring; RINGFAN_DRIVER=auto would fall back to epoll)");
                    Err(ExitCode::from(EXIT_NO_IO_URING))
                }
            }
        }
        DriverChoice::Auto => match ringfan_ring::probe() {
            Ok(f) => Ok((true, format!("io_uring: {f}"))),
            Err(e) => {
                tracing::warn!("{e}. Falling back to the epoll driver (RINGFAN_DRIVER=epoll silences this; RINGFAN_DRIVER=io_uring makes it fatal)");
                Ok((false, "epoll (io_uring refused, see above)".to_string()))
            }
        },
    }
}

/// Each worker's SO_REUSEPORT listeners, and the addresses they are bound to.
struct Bound {
    /// Per worker: the line listener, then the publish and RESP listeners if configured.
    listeners: Vec<Vec<ListenFd>>,
    addr: SocketAddr,
    publish_addr: Option<SocketAddr>,
    resp_addr: Option<SocketAddr>,
    ws_addr: Option<SocketAddr>,
}

impl Bound {
    fn listen(cfg: &Config) -> Result<Bound, Error> {
        let bind = |addr: SocketAddr, var: &str| {
            net::reuseport_listeners(addr, cfg.threads, cfg.listen_backlog)
                .map_err(|e| format!("cannot listen on {addr} ({var}): {e}"))
        };
        let (lines, addr) = bind(cfg.listen, "RINGFAN_LISTEN")?;
        let mut publish: Vec<Option<OwnedFd>> = (0..cfg.threads).map(|_| None).collect();
        let mut publish_addr = None;
        if let Some(paddr) = cfg.publish_listen {
            let (ls, bound) = bind(paddr, "RINGFAN_PUBLISH_LISTEN")?;
            publish = ls.into_iter().map(Some).collect();
            publish_addr = Some(bound);
        }
        let mut listeners: Vec<Vec<ListenFd>> = lines
            .into_iter()
            .zip(publish)
            .map(|(l, p)| ListenFd::lines(l, p))
            .collect();
        let mut extra = |addr: Option<SocketAddr>, var: &str, proto: Proto| {
            let Some(addr) = addr else {
                return Ok(None);
            };
            let (ls, bound) = bind(addr, var)?;
            for (worker, fd) in listeners.iter_mut().zip(ls) {
                worker.push(ListenFd {
                    fd,
                    proto,
                    publishers: true,
                });
            }
            Ok::<_, Error>(Some(bound))
        };
        let resp_addr = extra(cfg.resp_listen, "RINGFAN_RESP_LISTEN", Proto::Resp)?;
        let ws_addr = extra(cfg.ws_listen, "RINGFAN_WS_LISTEN", Proto::WebSocket)?;
        Ok(Bound {
            listeners,
            addr,
            publish_addr,
            resp_addr,
            ws_addr,
        })
    }
}

/// RINGFAN_MAX_CONNECTIONS, or what the open-file limit allows; warns when the two disagree.
fn connection_limit(cfg: &Config, nofile: u64) -> usize {
    let max_connections = cfg
        .max_connections
        .unwrap_or_else(|| config::derive_max_connections(nofile, cfg.threads));
    let headroom = config::fd_headroom(cfg.threads) as u64;
    if (max_connections as u64).saturating_add(headroom) > nofile {
        tracing::warn!(max_connections, nofile,
            "RINGFAN_MAX_CONNECTIONS plus {headroom} fds of headroom exceeds the open-file limit: expect EMFILE (handled: waiting connections are refused) before the limit");
    }
    max_connections
}

type WorkerHandle = thread::JoinHandle<std::io::Result<Stats>>;

/// Spawns one worker per listener pair, each pinned to its core, waits until every one has built
/// its driver, connects their mailboxes and lets them run. The inner error is the exit status
/// when a driver could not be set up.
fn spawn_workers(
    cfg: &Arc<Config>,
    shared: &Arc<Shared>,
    use_uring: bool,
    listeners: Vec<Vec<ListenFd>>,
) -> Result<Result<Vec<Option<WorkerHandle>>, ExitCode>, Error> {
    let cores = if cfg.pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    if cfg.pin && cores.is_empty() {
        tracing::warn!(
            "cannot read the CPU set; workers are not pinned (RINGFAN_PIN=0 silences this)"
        );
    }
    let ring_config = RingConfig {
        sq_entries: cfg.ring_entries,
        cq_entries: cfg.cq_entries(),
        recv_buffers: cfg.recv_buffers,
        recv_buffer_bytes: cfg.recv_buffer_bytes,
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let start = Arc::new(Barrier::new(cfg.threads + 1));
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for (id, listeners) in listeners.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        let parts = WorkerParts {
            id,
            cfg: cfg.clone(),
            shared: shared.clone(),
            rx,
            listeners,
            ready_tx: ready_tx.clone(),
            start: start.clone(),
        };
        let core = cores.get(id % cores.len().max(1)).copied();
        let handle = thread::Builder::new()
            .name(format!("ringfan-w{id}"))
            .spawn(move || -> std::io::Result<Stats> {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        tracing::warn!(worker = id, "could not pin to core {}", core.id);
                    }
                }
                // The driver is built on the thread that uses it (single-issuer rings demand it).
                if use_uring {
                    parts.run(Uring::new(&ring_config).map_err(|e| e.to_string()))
                } else {
                    parts.run(Epoll::new(&ring_config).map_err(|e| format!("epoll driver: {e}")))
                }
            })?;
        handles.push(Some(handle));
    }
    drop(ready_tx);
    let mut doorbells = vec![None; cfg.threads];
    for _ in 0..cfg.threads {
        match ready_rx.recv()? {
            Ok((id, doorbell)) => doorbells[id] = Some(doorbell),
            Err(e) => {
                let driver = if use_uring { "io_uring" } else { "epoll" };
                tracing::error!("a worker could not set up its {driver} driver: {e}");
                return Ok(Err(ExitCode::from(EXIT_DRIVER_SETUP)));
            }
        }
    }
    let doorbells = doorbells
        .into_iter()
        .map(|d| d.expect("every worker reported"));
    shared.set_mailboxes(senders.into_iter().zip(doorbells).collect());
    start.wait();
    Ok(Ok(handles))
}

/// Waits for SIGINT/SIGTERM. A worker that stops before that has failed: its exit status.
fn run_until_signal(
    signals: &libc::sigset_t,
    handles: &mut [Option<WorkerHandle>],
    total: &mut Stats,
) -> Option<ExitCode> {
    loop {
        if let Some(sig) = wait_signal(signals, WORKER_POLL) {
            tracing::info!(
                "received {}: stopping accepts, flushing every connection",
                signal_name(sig)
            );
            return None;
        }
        if let Some(code) = reap_workers(handles, total, false) {
            return Some(code);
        }
    }
}

/// Until every worker has finished: a second signal means "now"; a worker that fails means
/// "now" too, because the others would wait forever for its part of the shutdown.
fn drain(
    signals: &libc::sigset_t,
    handles: &mut [Option<WorkerHandle>],
    total: &mut Stats,
) -> Option<ExitCode> {
    loop {
        if let Some(sig) = wait_signal(signals, DRAIN_POLL) {
            tracing::warn!(
                "received {} again: exiting without waiting for connections",
                signal_name(sig)
            );
            std::process::exit(1);
        }
        if let Some(code) = reap_workers(handles, total, true) {
            return Some(code);
        }
        if handles.iter().all(Option::is_none) {
            return None;
        }
    }
}

/// Joins the workers that have finished and adds up their counters. A worker that failed ends
/// the whole process at once (the exit status to return): the others cannot finish a shutdown
/// without it, and its connections have nobody to serve them. Before shutdown (`shutting_down`
/// false) any worker that stops has failed.
fn reap_workers(
    handles: &mut [Option<WorkerHandle>],
    total: &mut Stats,
    shutting_down: bool,
) -> Option<ExitCode> {
    for (id, slot) in handles.iter_mut().enumerate() {
        if !slot.as_ref().is_some_and(|h| h.is_finished()) {
            continue;
        }
        let handle = slot.take().expect("checked above");
        match handle.join() {
            Ok(Ok(stats)) if shutting_down => total.add(&stats),
            Ok(Ok(_)) => {
                tracing::error!(
                    worker = id,
                    "worker stopped without being asked to; exiting"
                );
                return Some(ExitCode::from(EXIT_WORKER_FAILED));
            }
            Ok(Err(e)) => {
                tracing::error!(worker = id, "worker failed: {e}; exiting");
                return Some(ExitCode::from(EXIT_WORKER_FAILED));
            }
            // Unreachable while the panic hook aborts; kept so an unwinding build still exits.
            Err(_) => {
                tracing::error!(worker = id, "worker panicked; exiting");
                return Some(ExitCode::from(EXIT_WORKER_FAILED));
            }
        }
    }
    None
}

/// What a worker thread needs besides its driver.
struct WorkerParts {
    id: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Batch>,
    listeners: Vec<ListenFd>,
    ready_tx: mpsc::Sender<Result<(usize, Doorbell), String>>,
    start: Arc<Barrier>,
}

impl WorkerParts {
    /// Reports the driver (or why it could not be built), waits for every worker, runs.
    fn run<D: Driver>(self, driver: Result<D, String>) -> std::io::Result<Stats> {
        let driver = match driver {
            Ok(d) => d,
            Err(e) => {
                let _ = self.ready_tx.send(Err(e));
                return Ok(Stats::default());
            }
        };
        let _ = self.ready_tx.send(Ok((self.id, driver.doorbell())));
        self.start.wait();
        let metrics = self.cfg.metrics_listen.is_some();
        let worker = Worker::new(
            self.id,
            self.cfg,
            driver,
            self.shared,
            self.rx,
            self.listeners,
        );
        if metrics {
            worker.with_metrics().run()
        } else {
            worker.run()
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local; pthread_sigmask affects only this thread (and the
    // threads it spawns later).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` and `ts` are live; a null siginfo pointer is allowed.
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (sig > 0).then_some(sig)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
