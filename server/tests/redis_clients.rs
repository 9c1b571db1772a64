//! Real Redis clients, unchanged, against ringfan's Redis-protocol listener: redis-py (PyPI
//! `redis`) and redis-cli (Debian `redis-tools`). Each is skipped, saying so, where missing;
//! `.ci/run` installs both.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

fn start() -> Server {
    Server::start(&[
        ("RINGFAN_RESP_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_THREADS", "2"),
    ])
}

#[test]
fn redis_py_subscribes_publishes_pipelines_and_reconnects() {
    if !require_io_uring() {
        return;
    }
    let has_redis_py = Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_redis_py {
        return skip("redis-py is not installed (python3 -m pip install redis)");
    }
    let server = start();
    let addr = server.resp_addr();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/redis_py.py");
    let mut child = Command::new("python3")
        .args([script, "127.0.0.1", &addr.port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().ok();
            panic!("redis_py.py did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "redis-py checks failed:\n{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), 7);
    server.assert_clean(0, Duration::from_secs(5), "after redis-py");
}

#[test]
fn redis_cli_subscribes_and_publishes() {
    if !require_io_uring() {
        return;
    }
    if Command::new("redis-cli").arg("--version").output().is_err() {
        return skip("redis-cli is not installed (Debian: apt-get install redis-tools)");
    }
    let server = start();
    let port = server.resp_addr().port().to_string();
    let cli = |args: &[&str]| -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(cli(&["PING"]), "PONG\n");
    assert_eq!(cli(&["PUBLISH", "news", "nobody"]), "0\n");
    let mut sub = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port, "SUBSCRIBE", "news"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a line from redis-cli SUBSCRIBE")
    };
    let confirmation: Vec<String> = (0..3).map(|_| next()).collect();
    assert_eq!(confirmation, ["subscribe", "news", "1"]);
    assert_eq!(cli(&["PUBLISH", "news", "hello world"]), "1\n");
    let message: Vec<String> = (0..3).map(|_| next()).collect();
    assert_eq!(message, ["message", "news", "hello world"]);
    assert_eq!(
        cli(&["PUBSUB", "NUMSUB", "news"]),
        "news\n1\n",
        "redis-cli's view of the subscriber"
    );
    sub.kill().ok();
    sub.wait().ok();
    assert!(
        wait_until(secs(5), || cli(&["PUBLISH", "news", "x"]) == "0\n"),
        "the killed subscriber is still counted"
    );
    server.assert_clean(0, Duration::from_secs(5), "after redis-cli");
}
