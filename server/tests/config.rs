//! Configuration from the environment: bad values exit 2 naming the variable and value; `--help`;
//! unknown RINGFAN_* variables only warn.

mod common;

use common::*;
use std::time::Duration;

const VARS: [&str; 9] = [
    "RINGFAN_LISTEN",
    "RINGFAN_THREADS",
    "RINGFAN_PIN",
    "RINGFAN_ECHO",
    "RINGFAN_MAX_FRAME_BYTES",
    "RINGFAN_SEND_QUEUE_BYTES_MAX",
    "RINGFAN_CLOSE_TIMEOUT_MS",
    "RINGFAN_SHUTDOWN_TIMEOUT_MS",
    "RINGFAN_LOG",
];

/// Runs the server with `var=value` and expects exit status 2 with both in a stderr message.
fn assert_rejected(var: &str, value: &str) {
    let out = run_ringfan(&[], &[(var, value)], Duration::from_secs(5));
    let status = out.status.unwrap_or_else(|| {
        panic!(
            "{var}={value:?}: the server did not exit within 5 s (it accepted the value?)\n\
             stdout: {}\nstderr: {}",
            out.stdout, out.stderr
        )
    });
    assert_eq!(
        status.code(),
        Some(2),
        "{var}={value:?}: exit status {status:?}, stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(var) && l.contains(value)),
        "{var}={value:?}: no stderr line names both the variable and the value; stderr:\n{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("listening"),
        "{var}={value:?}: printed a listening line: {}",
        out.stdout
    );
}

macro_rules! rejected {
    ($name:ident, $var:expr, $value:expr) => {
        #[test]
        fn $name() {
            if !require_io_uring() {
                return;
            }
            assert_rejected($var, $value);
        }
    };
}

rejected!(threads_not_a_number_exits_2, "RINGFAN_THREADS", "abc");
rejected!(threads_zero_exits_2, "RINGFAN_THREADS", "0");
rejected!(echo_maybe_exits_2, "RINGFAN_ECHO", "maybe");
rejected!(listen_nonsense_exits_2, "RINGFAN_LISTEN", "nonsense");
rejected!(
    close_timeout_negative_exits_2,
    "RINGFAN_CLOSE_TIMEOUT_MS",
    "-5"
);
rejected!(
    shutdown_timeout_not_a_number_exits_2,
    "RINGFAN_SHUTDOWN_TIMEOUT_MS",
    "soon"
);
rejected!(
    max_frame_bytes_not_a_number_exits_2,
    "RINGFAN_MAX_FRAME_BYTES",
    "big"
);
rejected!(
    send_queue_bytes_max_not_a_number_exits_2,
    "RINGFAN_SEND_QUEUE_BYTES_MAX",
    "lots"
);

/// 32768 submission entries are within the kernel's limit, but the completion queue (4x) would be
/// 131072, twice the kernel's: refused by the configuration with the accepted range, not reported
/// as a kernel too old for io_uring (nor silently served by the epoll fallback).
#[test]
fn ring_entries_beyond_the_completion_queue_limit_exits_2_with_the_range() {
    if !require_io_uring() {
        return;
    }
    assert_rejected("RINGFAN_RING_ENTRIES", "32768");
    let out = run_ringfan(
        &[],
        &[("RINGFAN_RING_ENTRIES", "32768")],
        Duration::from_secs(5),
    );
    assert!(
        out.stderr.contains("from 8 to 16384") && !out.stderr.contains("too old"),
        "stderr does not give the accepted range: {}",
        out.stderr
    );
}

#[test]
fn help_lists_every_variable_with_defaults() {
    if !require_io_uring() {
        return;
    }
    let out = run_ringfan(&["--help"], &[], Duration::from_secs(5));
    let status = out.status.expect("--help did not exit within 5 s");
    assert!(
        status.success(),
        "--help exit status {status:?}; stderr: {}",
        out.stderr
    );
    let missing: Vec<_> = VARS.iter().filter(|v| !out.stdout.contains(*v)).collect();
    assert!(
        missing.is_empty(),
        "--help stdout does not mention {missing:?}:\n{}",
        out.stdout
    );
    for default in ["65536", "4194304", "5000", "10000"] {
        assert!(
            out.stdout.contains(default),
            "--help stdout lacks the default {default}:\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("listening"),
        "--help started a server: {}",
        out.stdout
    );
}

/// Every variable row of `--help` ("  NAME  default DEFAULT  description") has its `default`
/// and its description at the same column as every other row, however long the name or the
/// default (defaults may hold single spaces; two or more end the default column).
#[test]
fn help_rows_align_their_descriptions() {
    if !require_io_uring() {
        return;
    }
    let out = run_ringfan(&["--help"], &[], Duration::from_secs(5));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "--help: {:?}; stderr: {}",
        out.status,
        out.stderr
    );
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("  RINGFAN_"))
        .collect();
    for v in VARS {
        assert!(
            rows.iter().any(|r| r[2..].starts_with(&format!("{v} "))),
            "no --help row for {v}:\n{}",
            out.stdout
        );
    }
    // (row, column of "default", column of the description)
    let columns: Vec<(&str, Option<usize>, Option<usize>)> = rows
        .iter()
        .map(|row| {
            let default_col = row.find(" default ").map(|i| i + 1);
            let desc_col = default_col.and_then(|d| {
                let after = d + "default ".len();
                row[after..].find("  ").map(|gap| {
                    let start = after + gap;
                    start + row[start..].len() - row[start..].trim_start().len()
                })
            });
            (*row, default_col, desc_col)
        })
        .collect();
    let (_, default_col, desc_col) = columns[0];
    let misaligned: Vec<String> = columns
        .iter()
        .filter(|(_, d, c)| d.is_none() || c.is_none() || *d != default_col || *c != desc_col)
        .map(|(row, d, c)| format!("default at {d:?}, description at {c:?}: {row}"))
        .collect();
    assert!(
        misaligned.is_empty(),
        "rows not aligned with the first (default at {default_col:?}, description at \
         {desc_col:?}):\n{}\n--help:\n{}",
        misaligned.join("\n"),
        out.stdout
    );
}

#[test]
fn unknown_ringfan_variable_warns_and_server_starts() {
    if !require_io_uring() {
        return;
    }
    let server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_FOO", "1")]);
    assert!(
        wait_until(secs(3), || server.stderr_contains("RINGFAN_FOO")),
        "no stderr line mentions RINGFAN_FOO; stderr:\n{}",
        server.stderr_text()
    );
    // And it works.
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 0);
    clients[1].send(b"hi\n");
    for c in clients.iter_mut() {
        assert_eq!(c.expect_line(secs(5), "hi"), b"hi\n");
    }
    close_all_gracefully(clients, "unknown var");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
}

#[test]
fn listening_line_is_the_only_stdout_output_and_threads_1_works() {
    if !require_io_uring() {
        return;
    }
    let mut server = Server::start(&[("RINGFAN_ECHO", "1"), ("RINGFAN_THREADS", "1")]);
    let mut clients = connect_n(server.addr(), 2);
    sync_clients(&mut clients, 1);
    close_all_gracefully(clients, "threads=1");
    server.assert_clean(0, Duration::from_secs(3), "after all clients closed");
    server.sigterm();
    let st = server
        .wait_exit(Duration::from_secs(5))
        .expect("no exit 5 s after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
    assert_eq!(
        server.stdout_lines(),
        vec![format!(
            "ringfan listening on 127.0.0.1:{}\n",
            server.port()
        )],
        "stdout must hold exactly the listening line"
    );
}

/// The text between `<!-- NAME -->` and `<!-- /NAME -->` in the README (without the marker
/// lines), and the README.
fn readme_section(name: &str) -> (String, std::ops::Range<usize>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    let (open, close) = (format!("<!-- {name} -->\n"), format!("<!-- /{name} -->"));
    let start = readme
        .find(&open)
        .unwrap_or_else(|| panic!("README.md has no line {open:?}"))
        + open.len();
    let end = start
        + readme[start..]
            .find(&close)
            .unwrap_or_else(|| panic!("README.md has no {close:?} after {open:?}"));
    (readme, start..end)
}

/// The README's configuration table is exactly what `config::VARS` generates, so the two cannot
/// drift. `UPDATE_README=1 cargo test --release -p ringfan --test config` rewrites it.
#[test]
fn readme_configuration_table_is_generated_from_the_variables_table() {
    let (readme, range) = readme_section("config-table");
    let generated = ringfan::config::markdown_table();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!(
            "{}{generated}{}",
            &readme[..range.start],
            &readme[range.end..]
        );
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        std::fs::write(path, updated).expect("write README.md");
        return;
    }
    assert!(
        readme[range.clone()] == generated,
        "README.md's configuration table differs from config::VARS; run \
         UPDATE_README=1 cargo test --release -p ringfan --test config, or paste:\n{generated}"
    );
}

/// Every variable `--help` lists has a README row, and the other way round.
#[test]
fn readme_configuration_table_has_a_row_per_variable() {
    let (readme, range) = readme_section("config-table");
    let rows: Vec<&str> = readme[range]
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .collect();
    let names: Vec<&str> = ringfan::config::VARS.iter().map(|v| v.name).collect();
    assert_eq!(rows, names);
}
