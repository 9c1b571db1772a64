//! `ringfan`: a thread-per-core io_uring TCP broadcast server.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::Duration;

use ring::{Doorbell, Driver, Epoll, RingConfig, Uring};

use ringfan::config::{self, Config, DriverChoice};
use ringfan::hub::Shared;
use ringfan::stats::Stats;
use ringfan::worker::Worker;
use ringfan::{metrics, net};

/// Exit status for a configuration error (bad variable or argument).
const EXIT_CONFIG: u8 = 2;
/// Exit status when io_uring cannot be used here.
const EXIT_NO_IO_URING: u8 = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("--help" | "-h") => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Some("--check") => {
            return match ring::probe() {
                Ok(features) => {
                    println!("io_uring usable: {features}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringfan: {e}");
                    ExitCode::from(EXIT_NO_IO_URING)
                }
            };
        }
        Some(other) => {
            eprintln!("ringfan: unknown argument {other:?}; ringfan takes no arguments but --help and --check (configuration is by RINGFAN_* environment variables, see --help)");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let cfg = match Config::from_env() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("ringfan: {e} (see ringfan --help)");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    for name in config::unknown_vars(&std::env::vars().collect::<Vec<_>>()) {
        tracing::warn!(
            "ignoring unknown variable {name}: not a ringfan setting (typo? see ringfan --help)"
        );
    }
    match serve(cfg) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cfg: Config) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let nofile = match net::raise_nofile_limit() {
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
    };
    // Which driver: io_uring unless it is refused here (auto) or epoll is asked for.
    let (use_uring, driver_line) = match cfg.driver {
        DriverChoice::Epoll => (false, "epoll (RINGFAN_DRIVER=epoll)".to_string()),
        DriverChoice::IoUring => {
            match ring::probe() {
                Ok(f) => (true, format!("io_uring: {f}")),
                Err(e) => {
                    tracing::error!("{e} (RINGFAN_DRIVER=io_uring; RINGFAN_DRIVER=auto would fall back to epoll)");
                    return Ok(ExitCode::from(EXIT_NO_IO_URING));
                }
            }
        }
        DriverChoice::Auto => match ring::probe() {
            Ok(f) => (true, format!("io_uring: {f}")),
            Err(e) => {
                tracing::warn!("{e}. Falling back to the epoll driver (RINGFAN_DRIVER=epoll silences this; RINGFAN_DRIVER=io_uring makes it fatal)");
                (false, "epoll (io_uring refused, see above)".to_string())
            }
        },
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
    let (listeners, addr) =
        net::reuseport_listeners(cfg.listen, cfg.threads, cfg.listen_backlog)
            .map_err(|e| format!("cannot listen on {} (RINGFAN_LISTEN): {e}", cfg.listen))?;
    let mut publish_listeners: Vec<Option<std::os::fd::OwnedFd>> =
        (0..cfg.threads).map(|_| None).collect();
    let mut publish_addr = None;
    if let Some(paddr) = cfg.publish_listen {
        let (ls, bound) = net::reuseport_listeners(paddr, cfg.threads, cfg.listen_backlog)
            .map_err(|e| format!("cannot listen on {paddr} (RINGFAN_PUBLISH_LISTEN): {e}"))?;
        publish_listeners = ls.into_iter().map(Some).collect();
        publish_addr = Some(bound);
    }
    let max_connections = cfg
        .max_connections
        .unwrap_or_else(|| config::derive_max_connections(nofile, cfg.threads));
    let headroom = config::fd_headroom(cfg.threads) as u64;
    if (max_connections as u64).saturating_add(headroom) > nofile {
        tracing::warn!(max_connections, nofile,
            "RINGFAN_MAX_CONNECTIONS plus {headroom} fds of headroom exceeds the open-file limit: expect EMFILE (handled: waiting connections are refused) before the limit");
    }
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared::new(
        cfg.threads,
        cfg.turn_input_bytes_max(),
        max_connections,
    ));
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
    for (id, (listener, publish_listener)) in
        listeners.into_iter().zip(publish_listeners).enumerate()
    {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        let (cfg, shared, ready_tx, start) =
            (cfg.clone(), shared.clone(), ready_tx.clone(), start.clone());
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
                let parts = WorkerParts {
                    id,
                    cfg,
                    shared,
                    rx,
                    listener,
                    publish_listener,
                    ready_tx,
                    start,
                };
                if use_uring {
                    parts.run(Uring::new(&ring_config).map_err(|e| e.to_string()))
                } else {
                    parts.run(Epoll::new(&ring_config).map_err(|e| format!("epoll driver: {e}")))
                }
            })?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut doorbells = vec![None; cfg.threads];
    for _ in 0..cfg.threads {
        match ready_rx.recv()? {
            Ok((id, doorbell)) => doorbells[id] = Some(doorbell),
            Err(e) => {
                tracing::error!("a worker could not start: {e}");
                return Ok(ExitCode::from(EXIT_NO_IO_URING));
            }
        }
    }
    shared.set_mailboxes(
        senders
            .into_iter()
            .zip(
                doorbells
                    .into_iter()
                    .map(|d| d.expect("every worker reported")),
            )
            .collect(),
    );
    start.wait();

    tracing::info!(%cfg, "ringfan starting");
    tracing::info!("driver: {driver_line}");
    println!("ringfan listening on {addr}");
    if let Some(p) = publish_addr {
        println!("ringfan publishers on {p}");
    }
    if let Some(bound) = metrics_addr {
        println!("ringfan metrics on http://{bound}/metrics");
    }
    let _ = std::io::stdout().flush();

    // Wait for SIGINT/SIGTERM, or for a worker to stop on its own (an error).
    let mut failed = false;
    loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(200)) {
            tracing::info!(
                "received {}: stopping accepts, flushing every connection",
                signal_name(sig)
            );
            break;
        }
        if handles.iter().any(|h| h.is_finished()) {
            tracing::error!("a worker stopped unexpectedly; shutting down");
            failed = true;
            break;
        }
    }
    shared.shutdown.store(true, Ordering::Release);
    shared.wake_all();
    // A second signal while draining means "now".
    let watcher = thread::spawn(move || loop {
        if let Some(sig) = wait_signal(&signals, Duration::from_millis(200)) {
            tracing::warn!(
                "received {} again: exiting without waiting for connections",
                signal_name(sig)
            );
            std::process::exit(1);
        }
    });
    drop(watcher);

    let mut total = Stats::default();
    for (id, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(stats)) => total.add(&stats),
            Ok(Err(e)) => {
                tracing::error!(worker = id, "worker failed: {e}");
                failed = true;
            }
            Err(_) => {
                tracing::error!(worker = id, "worker panicked");
                failed = true;
            }
        }
    }
    if total.shutdown_aborted > 0 {
        tracing::warn!(
            connections = total.shutdown_aborted,
            "closed abortively at shutdown (RINGFAN_SHUTDOWN_TIMEOUT_MS passed)"
        );
    }
    tracing::info!("stopped: {total}");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// What a worker thread needs besides its driver.
struct WorkerParts {
    id: usize,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<ringfan::hub::Batch>,
    listener: std::os::fd::OwnedFd,
    publish_listener: Option<std::os::fd::OwnedFd>,
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
            self.listener,
            self.publish_listener,
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
