//! Shared by the `ringfan-load` integration tests: child processes that die with the test,
//! ringfan started on free ports of 127.0.0.1 (its printed addresses read back), one
//! ringfan-load run with its summary line parsed, the io_uring check and skips that show.
//!
//! Everything is bounded: a server that never prints its address, or a run that never ends,
//! fails the test at a deadline.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use ringfan_ring::{RingConfig, Uring};
use ringfan_testkit::wait_until;

pub const LOAD: &str = env!("CARGO_BIN_EXE_ringfan-load");

/// The machine may have 2 cores: the runs against servers take turns.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Bypasses libtest's capture so a skip is always visible.
pub fn skip(why: &str) {
    let _ = writeln!(io::stderr(), "SKIP: {why}");
}

/// The load generator's subscribers receive on io_uring: without it there is nothing to test.
pub fn io_uring_available() -> bool {
    let cfg = RingConfig {
        sq_entries: 8,
        cq_entries: 16,
        recv_buffers: 8,
        recv_buffer_bytes: 4096,
    };
    match Uring::new(&cfg) {
        Ok(_) => true,
        Err(e) => {
            skip(&format!("io_uring unavailable: {e}"));
            false
        }
    }
}

/// A child process killed when dropped (and by the kernel if this test process dies).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn command(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// A port free on 127.0.0.1 a moment ago (the server that binds it next may still lose a race;
/// the callers retry).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// ringfan (the binary built next to ringfan-load) with `env` on top of a clean `RINGFAN_`
/// environment, and the addresses it printed for each of `printed` (line prefixes such as
/// `ringfan websocket on `), in that order. None (after saying why) if the binary was not
/// built, e.g. by `cargo build --release -p ringfan`.
pub fn start_ringfan(env: &[(&str, &str)], printed: &[&str]) -> Option<(Proc, Vec<SocketAddr>)> {
    let bin: PathBuf = PathBuf::from(LOAD).with_file_name("ringfan");
    if !bin.exists() {
        skip(&format!(
            "{} is not built (cargo build --release -p ringfan); not tested against ringfan",
            bin.display()
        ));
        return None;
    }
    let mut cmd = command(bin.to_str().expect("a UTF-8 path"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("RINGFAN_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env("RINGFAN_PIN", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Proc(cmd.spawn().expect("cannot start ringfan"));
    let (tx, rx) = mpsc::channel();
    let out = child.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found: Vec<Option<SocketAddr>> = vec![None; printed.len()];
    // Bounded: each wait ends at the deadline.
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("ringfan did not print all of {printed:?} within 10 s (got {found:?})")
        });
        for (i, prefix) in printed.iter().enumerate() {
            if let Some(addr) = line.strip_prefix(prefix) {
                found[i] = Some(addr.trim().parse().expect("a printed address"));
            }
        }
    }
    Some((child, found.into_iter().map(Option::unwrap).collect()))
}

/// The exit status and the summary's key=value pairs of one ringfan-load run (killed after
/// `timeout`), and its stderr.
pub fn run_load(
    args: &[&str],
    timeout: Duration,
) -> (Option<i32>, HashMap<String, String>, String) {
    let mut child = Proc(
        command(LOAD)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ringfan-load"),
    );
    let mut so = child.0.stdout.take().unwrap();
    let mut se = child.0.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let mut code = None;
    let exited = wait_until(deadline, || match child.0.try_wait() {
        Ok(Some(st)) => {
            code = st.code();
            true
        }
        _ => false,
    });
    drop(child);
    let (stdout, stderr) = (t_out.join().unwrap(), t_err.join().unwrap());
    assert!(
        exited,
        "ringfan-load {args:?} ran past {timeout:?}\n{stderr}"
    );
    let summary = stdout
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (code, summary, stderr)
}

pub fn num(summary: &HashMap<String, String>, key: &str) -> u64 {
    summary
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("summary has no integer {key}: {summary:?}"))
}
