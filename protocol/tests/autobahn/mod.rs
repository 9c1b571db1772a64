//! Running a client program bounded in time, and Autobahn's fuzzing client against a
//! WebSocket server: shared by the codec's tests (protocol/tests/ws_interop.rs) and the
//! server's (server/tests/websocket.rs), which include this file.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Runs `cmd`, killing it after `limit`; whether it succeeded, and its output. The output goes
/// to a file, so a chatty child never blocks on a full pipe.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String) {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("ringfan-ws-{}-{n}.out", std::process::id()));
    let file = std::fs::File::create(&path).expect("output file");
    let mut child: Child = cmd
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // Polls the child's exit against the deadline; nothing waits on this sleep for order.
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    match status {
        Some(s) => (s.success(), out),
        None => (false, format!("killed after {limit:?}\n{out}")),
    }
}

/// Autobahn's `wstest` (`RINGFAN_WSTEST`, else `wstest` on PATH), or why it does not run.
pub fn wstest() -> Result<String, String> {
    let wstest = std::env::var("RINGFAN_WSTEST").unwrap_or_else(|_| "wstest".into());
    let probe = std::panic::catch_unwind(|| {
        let mut c = Command::new(&wstest);
        c.arg("--autobahnversion");
        run_bounded(c, Duration::from_secs(60))
    });
    match probe {
        Ok((true, _)) => Ok(wstest),
        other => {
            let why = match other {
                Ok((_, out)) => out.lines().last().unwrap_or("").to_string(),
                Err(_) => "not found".to_string(),
            };
            Err(format!(
                "`{wstest}` does not run ({why}). autobahntestsuite is Python 2 code: \
                 `virtualenv -p python2.7 VENV && VENV/bin/pip install autobahntestsuite`, then \
                 RINGFAN_WSTEST=VENV/bin/wstest"
            ))
        }
    }
}

/// Runs the fuzzing client's cases 1 to 10 (12 and 13 are compression, not offered) against
/// `url`, in a directory named after `tag`; asserts that more than 200 ran and every one is OK,
/// NON-STRICT or INFORMATIONAL. Returns the case count and the report's path.
pub fn fuzz(wstest: &str, url: &str, tag: &str) -> (usize, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ringfan-autobahn-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("fuzzingclient.json");
    let report = dir.join("report");
    std::fs::write(
        &spec,
        format!(
            r#"{{"outdir": "{}", "servers": [{{"agent": "ringfan", "url": "{url}"}}],
               "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {{}}}}"#,
            report.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(wstest);
    cmd.current_dir(&dir)
        .args(["-m", "fuzzingclient", "-s"])
        .arg(&spec);
    let (ok, out) = run_bounded(cmd, Duration::from_secs(900));
    assert!(ok, "wstest failed:\n{out}");
    let index = std::fs::read_to_string(report.join("index.json")).expect("index.json");
    let (total, bad) = autobahn_verdicts(&index);
    assert!(total > 200, "only {total} cases ran:\n{out}");
    assert!(bad.is_empty(), "cases not passed: {bad:#?}");
    (total, report.join("index.html"))
}

/// The case count, and each case whose `behavior` or `behaviorClose` is not OK, NON-STRICT or
/// INFORMATIONAL, from Autobahn's index.json (read by hand to need no JSON crate: each case is
/// `"N.N.N": {"behavior": "X", "behaviorClose": "Y", ...}`).
pub fn autobahn_verdicts(index: &str) -> (usize, Vec<String>) {
    let passed = ["\"OK\"", "\"NON-STRICT\"", "\"INFORMATIONAL\""];
    let mut total = 0;
    let mut bad = Vec::new();
    for (at, _) in index.match_indices("\"behavior\":") {
        total += 1;
        let case_start = index[..at].rfind('{').unwrap_or(0);
        let case_name = index[..case_start]
            .rsplit('"')
            .nth(1)
            .unwrap_or("?")
            .to_string();
        let end = index[at..].find('}').map_or(index.len(), |e| at + e);
        let body = &index[at..end];
        for key in ["\"behavior\":", "\"behaviorClose\":"] {
            let value = body
                .find(key)
                .map(|k| body[k + key.len()..].trim_start())
                .and_then(|v| v.split([',', '}']).next())
                .unwrap_or("")
                .trim();
            if !passed.contains(&value) {
                bad.push(format!("{case_name} {key} {value}"));
            }
        }
    }
    (total, bad)
}
