//! RINGFAN_DRIVER=auto where io_uring is refused: one warning naming why, then service on epoll.
//! io_uring is refused for real by `kernel.io_uring_disabled=2` (root only; restored at once, also
//! on panic). Without a writable sysctl the test says so and is skipped.

mod common;

use common::*;
use std::time::Duration;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Sets the sysctl for the guard's lifetime.
struct Disabled(String);

impl Disabled {
    fn set() -> Option<Disabled> {
        let old = std::fs::read_to_string(SYSCTL).ok()?.trim().to_string();
        std::fs::write(SYSCTL, "2").ok()?;
        Some(Disabled(old))
    }
}

impl Drop for Disabled {
    fn drop(&mut self) {
        std::fs::write(SYSCTL, &self.0).expect("restore kernel.io_uring_disabled");
    }
}

#[test]
fn auto_falls_back_to_epoll_with_one_warning_and_io_uring_alone_refuses() {
    if let Ok(d) = std::env::var("RINGFAN_TEST_DRIVER") {
        // This test picks its drivers itself; it runs in the default (unset) pass.
        eprintln!("SKIP: RINGFAN_TEST_DRIVER={d}: the fallback test runs only in the default pass");
        return;
    }
    let _g = serial();
    let Some(guard) = Disabled::set() else {
        eprintln!("SKIP: cannot write {SYSCTL} (needs root on Linux >= 6.6): fallback not tested");
        return;
    };
    // While io_uring is refused: --check and RINGFAN_DRIVER=io_uring fail with the cause...
    let check = run_ringfan(&["--check"], &[], Duration::from_secs(10));
    let strict = run_ringfan(
        &[],
        &[("RINGFAN_DRIVER", "io_uring")],
        Duration::from_secs(10),
    );
    // ...and auto starts on epoll.
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_DRIVER", "auto"),
        ("RINGFAN_THREADS", "2"),
    ]);
    drop(guard);

    assert_eq!(
        check.status.and_then(|s| s.code()),
        Some(3),
        "--check: {}",
        check.stderr
    );
    assert!(
        check.stderr.contains("kernel.io_uring_disabled"),
        "--check names the cause: {}",
        check.stderr
    );
    assert_eq!(
        strict.status.and_then(|s| s.code()),
        Some(3),
        "RINGFAN_DRIVER=io_uring: {}",
        strict.stderr
    );
    let warnings: Vec<String> = server
        .stderr_text()
        .lines()
        .filter(|l| l.contains("Falling back to the epoll driver"))
        .map(String::from)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "exactly one fallback warning: {}",
        server.stderr_text()
    );
    assert!(
        warnings[0].contains("kernel.io_uring_disabled"),
        "the warning says why: {}",
        warnings[0]
    );
    assert!(
        !std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .any(|e| {
                std::fs::read_link(e.unwrap().path())
                    .is_ok_and(|p| p.to_string_lossy().contains("io_uring"))
            }),
        "the server holds an io_uring fd"
    );

    let mut clients = connect_n(server.addr(), 8);
    sync_clients(&mut clients, 0);
    clients[3].send(b"over epoll\n");
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(
            c.expect_line(secs(5), &format!("client {i}")),
            b"over epoll\n"
        );
    }
    close_all_gracefully(clients, "epoll fallback");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}
