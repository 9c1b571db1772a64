//! A worker that fails never hangs the process: it exits non-zero within about a second, with
//! the failure logged. Faults are injected with RINGFAN_FAULT (testing only).

mod common;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

/// Starts two workers, one of which fails `fault_ms` after its start; returns the server, a
/// client connected meanwhile, and the moment the fault was due (at the latest).
fn start_with_fault(kind: &str) -> (Server, Client, Instant) {
    let fault = format!("{kind}:1:300");
    let server = Server::start(&[("RINGFAN_THREADS", "2"), ("RINGFAN_FAULT", &fault)]);
    let due = Instant::now() + Duration::from_millis(300);
    let client = Client::connect(server.addr());
    (server, client, due)
}

/// A worker that returns an error while the others serve: the process logs it and exits with
/// status 5 at once. (It used to set the shutdown flag and join the others, which waited forever
/// for the dead worker's part of the shutdown.)
#[test]
fn a_worker_error_ends_the_process_with_status_5_within_a_second() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let (mut server, client, due) = start_with_fault("error");
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "server still running 5 s after a worker failed; {}",
        server.describe()
    );
    let late = due.elapsed();
    eprintln!("worker error: process exited {late:?} after the fault was due");
    assert!(
        late < Duration::from_millis(1500),
        "exited {late:?} after the worker failed"
    );
    assert_eq!(status.unwrap().code(), Some(5), "exit status: {status:?}");
    assert!(
        server.stderr_contains("worker failed: RINGFAN_FAULT: worker 1 fails on purpose"),
        "the failure is logged: {}",
        server.stderr_text()
    );
    drop(client);
}

/// A worker that panics aborts the process (no unwinding over memory the kernel may still
/// write), after logging the panic.
#[test]
fn a_worker_panic_aborts_the_process_within_a_second() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    let (mut server, client, due) = start_with_fault("panic");
    let status = server.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "server still running 5 s after a worker panicked; {}",
        server.describe()
    );
    let late = due.elapsed();
    assert!(
        late < Duration::from_millis(1500),
        "exited {late:?} after the worker panicked"
    );
    let status = status.unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "a panic aborts the process: {status:?}"
    );
    assert!(
        server.stderr_contains("worker 1 panics on purpose"),
        "the panic is logged: {}",
        server.stderr_text()
    );
    drop(client);
}

/// A bad RINGFAN_FAULT is a configuration error like any other.
#[test]
fn bad_fault_spec_is_a_config_error() {
    let out = run_ringfan(
        &[],
        &[("RINGFAN_FAULT", "explode:1")],
        Duration::from_secs(10),
    );
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(2),
        "stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("RINGFAN_FAULT") && out.stderr.contains("panic or error"),
        "names the variable and the accepted values: {}",
        out.stderr
    );
}
