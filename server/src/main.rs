//! `ringfan`: a thread-per-core io_uring TCP broadcast server.

mod startup;

use std::io::IsTerminal;
use std::process::ExitCode;

use ringfan::config::{self, Config};

/// Exit status for a configuration error (bad variable or argument).
const EXIT_CONFIG: u8 = 2;
/// Exit status when io_uring cannot be used here (RINGFAN_DRIVER=io_uring, or `--check`).
pub(crate) const EXIT_NO_IO_URING: u8 = 3;
/// Exit status when a worker's driver (its io_uring or epoll instance) could not be set up.
pub(crate) const EXIT_DRIVER_SETUP: u8 = 4;
/// Exit status when a worker stopped with an error while serving.
pub(crate) const EXIT_WORKER_FAILED: u8 = 5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("--help" | "-h") => {
            print!("{}", config::help());
            return ExitCode::SUCCESS;
        }
        Some("--check") => {
            return match ringfan_ring::probe() {
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
    install_panic_abort();
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
    match startup::serve(cfg) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// A panic anywhere aborts the process after it is reported. Unwinding a worker would free
/// memory the kernel may still write into: the provided-buffer ring, a send's msghdr and the
/// `Bytes` behind it, all of which live until the operation's final completion. The release
/// profile also sets `panic = "abort"`; this covers builds that do not.
fn install_panic_abort() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("{info}; aborting");
        std::process::abort();
    }));
}
