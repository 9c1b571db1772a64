//! Prometheus metrics match what happened: connections, messages, a reset, a slow consumer.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no series {key} in the scrape"))
}

#[test]
fn scraped_counters_match_the_scenario() {
    if !require_io_uring() {
        return;
    }
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_METRICS_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_SEND_QUEUE_BYTES_MAX", "262144"),
        ("RINGFAN_CLOSE_TIMEOUT_MS", "500"),
    ]);
    let url = metrics_url(&server);

    // Publisher, reader, slow (never reads), resetter.
    let mut clients = connect_n(server.addr(), 4);
    sync_clients(&mut clients, 0);
    // Workers publish every 100 ms: wait until two scrapes 250 ms apart agree.
    let mut m0 = scrape(&url);
    assert!(
        wait_until(secs(5), || {
            std::thread::sleep(Duration::from_millis(250));
            let next = scrape(&url);
            let settled = next == m0 && get(&next, "ringfan_connections_accepted_total") == 4.0;
            m0 = next;
            settled
        }),
        "metrics never settled: {m0:?}"
    );
    assert_eq!(get(&m0, "ringfan_connections_open"), 4.0);
    let synced_lines = get(&m0, "ringfan_messages_published_total");

    let resetter = clients.pop().unwrap();
    resetter.set_linger_zero();
    drop(resetter);

    let slow = clients.pop().unwrap();
    let mut reader = clients.pop().unwrap();
    let mut publisher = clients.pop().unwrap();
    // 64-byte lines, far more than the server's socket send buffer can absorb on top of the
    // slow client's 256 KiB queue (its receive buffer is pinned small).
    set_rcvbuf(&slow.stream, 4096);
    let wmem = tcp_mem_max("wmem").unwrap_or(4 << 20);
    let lines = ((wmem + (4 << 20)) / 64 / 1024 + 1) * 1024;
    let pub_writer = publisher.writer();
    let writer = std::thread::spawn(move || {
        let mut w = pub_writer;
        for chunk in 0..(lines / 1024) {
            let mut buf = Vec::with_capacity(1024 * 64);
            for i in 0..1024 {
                buf.extend_from_slice(format!("{:063}\n", chunk * 1024 + i).as_bytes());
            }
            w.write_all(&buf).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let pub_drain = std::thread::spawn(move || {
        let n = publisher.read_lines(lines, secs(30)).len();
        (n, publisher)
    });
    let got = reader.read_lines(lines, secs(30)).len();
    writer.join().unwrap();
    assert_eq!(got, lines, "the reading subscriber gets every line");
    let (echoed, publisher) = pub_drain.join().unwrap();
    assert_eq!(echoed, lines, "the publisher gets its own echo");

    // The slow one was evicted; it never reads, so its flush times out and it is reset.
    assert!(
        wait_until(secs(5), || get(
            &scrape(&url),
            "ringfan_connections_closed_total{reason=\"evicted_slow\"}"
        ) == 1.0),
        "slow consumer not closed: {:?}",
        scrape(&url)
    );
    std::thread::sleep(Duration::from_millis(250)); // one more publish after the close
    let m = scrape(&url);
    assert_eq!(
        get(
            &m,
            "ringfan_connections_closed_total{reason=\"peer_reset\"}"
        ),
        1.0
    );
    assert_eq!(
        get(&m, "ringfan_connections_closed_total{reason=\"peer_fin\"}"),
        0.0
    );
    assert_eq!(get(&m, "ringfan_close_timeouts_total"), 1.0);
    assert_eq!(
        get(&m, "ringfan_connections_aborted_total"),
        2.0,
        "the reset one and the timed-out one"
    );
    assert_eq!(
        get(&m, "ringfan_messages_published_total"),
        synced_lines + lines as f64
    );
    // Each line went to the publisher and the reader; the slow one got a prefix before eviction.
    let delivered =
        get(&m, "ringfan_messages_delivered_total") - get(&m0, "ringfan_messages_delivered_total");
    assert!(
        delivered >= 2.0 * lines as f64 && delivered < 3.0 * lines as f64,
        "delivered {delivered}"
    );
    assert_eq!(get(&m, "ringfan_connections_open"), 2.0);
    assert_eq!(get(&m, "ringfan_stale_completions_total"), 0.0);
    assert_eq!(get(&m, "ringfan_protocol_errors_total"), 0.0);
    assert!(get(&m, "ringfan_bytes_sent_total") >= 2.0 * 64.0 * lines as f64);
    assert!(
        get(&m, "ringfan_fanout_latency_seconds_count") > 0.0,
        "latency samples were taken"
    );
    drop((slow, publisher));
    // The kernel agrees with the gauge: two connections left, nothing in CLOSE_WAIT, no fd leak.
    server.assert_clean(1, Duration::from_secs(3), "after the scenario");
}

/// Reads until EOF or reset, at most until `deadline`: true if the server ended the connection.
fn ended_by_server(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    false
}

/// A scraper that sends half a request and stalls, and one that trickles its request a byte at a
/// time, hold nobody else up: a second scraper gets a full 200 within a second meanwhile. Both
/// are closed by the server once the 5 s scrape deadline has passed (EOF on the client, and no
/// ESTABLISHED row left on the server's side).
#[test]
fn stalled_scrapers_do_not_block_others_and_are_closed_after_the_deadline() {
    if !require_io_uring() {
        return;
    }
    let server = Server::start(&[("RINGFAN_METRICS_LISTEN", "127.0.0.1:0")]);
    let url = metrics_url(&server);
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let metrics_port: u16 = hostport.rsplit_once(':').unwrap().1.parse().unwrap();

    let started = Instant::now();
    let mut stalled = TcpStream::connect(&hostport).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    let mut trickler = TcpStream::connect(&hostport).unwrap();
    let trickle_port = trickler.local_addr().unwrap().port();
    let stalled_port = stalled.local_addr().unwrap().port();
    // Give the server time to start reading both (it may serve them in any order).
    assert!(
        wait_until(secs(2), || {
            tcp_states_of(metrics_port, stalled_port) == vec![ESTABLISHED]
                && tcp_states_of(metrics_port, trickle_port) == vec![ESTABLISHED]
        }),
        "both stalling connections established"
    );

    for i in 0..3 {
        let t = Instant::now();
        let m = scrape(&url);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "scrape {i} took {:?} beside the stalled connections",
            t.elapsed()
        );
        assert!(m.contains_key("ringfan_connections_open"), "scrape {i}");
        // One byte of a never-ending request line every 400 ms: under any per-read timeout.
        trickler.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let trickle_writer = {
        let mut w = trickler.try_clone().unwrap();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until && w.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };

    // The deadline is 5 s from accept; allow 3 s more on a loaded machine.
    let limit = started + Duration::from_secs(8);
    for (name, s) in [("stalled", &mut stalled), ("trickling", &mut trickler)] {
        assert!(
            ended_by_server(s, limit),
            "the {name} scraper is still open {:?} after it connected",
            started.elapsed()
        );
        assert!(
            started.elapsed() >= Duration::from_millis(4500),
            "the {name} scraper was closed after {:?}, before the 5 s deadline",
            started.elapsed()
        );
    }
    trickle_writer.join().unwrap();
    for (name, port) in [("stalled", stalled_port), ("trickling", trickle_port)] {
        let states = tcp_states_of(metrics_port, port);
        assert!(
            !states.contains(&ESTABLISHED),
            "{name}: the server's side is still ESTABLISHED: {states:?}"
        );
    }
    let m = scrape(&url);
    assert!(m.contains_key("ringfan_connections_open"));
}

/// Every metric of `ringfan::metrics::METRICS` but the sampled histogram (which appears with its
/// first sample) is served with its type and help, and with a series for each of the two
/// workers (each value of its label, if it has one), before any client has connected.
#[test]
fn every_metric_of_the_table_is_served_for_every_worker() {
    if !require_io_uring() {
        return;
    }
    let server = Server::start(&[
        ("RINGFAN_THREADS", "2"),
        ("RINGFAN_METRICS_LISTEN", "127.0.0.1:0"),
    ]);
    let url = metrics_url(&server);
    let missing = |text: &str| -> Vec<String> {
        let mut missing = Vec::new();
        for m in ringfan::metrics::METRICS
            .iter()
            .filter(|m| m.kind() != "histogram")
        {
            let head = format!("# TYPE {} {}\n", m.name, m.kind());
            let help = format!("# HELP {} {}\n", m.name, m.help);
            let labels: Vec<String> = match m.label() {
                Some((label, values)) => values
                    .iter()
                    .map(|v| format!(",{label}=\"{v}\"}}"))
                    .collect(),
                None => vec!["}".into()],
            };
            for worker in 0..2 {
                for l in &labels {
                    let series = format!("{}{{worker=\"{worker}\"{l} ", m.name);
                    if !text.contains(&series) {
                        missing.push(series);
                    }
                }
            }
            missing.extend(
                [head, help]
                    .into_iter()
                    .filter(|h| !text.contains(h.as_str())),
            );
        }
        missing
    };
    // Workers publish every 100 ms after they start: wait for their first publish.
    let mut text = scrape_text(&url);
    assert!(
        wait_until(secs(5), || {
            text = scrape_text(&url);
            missing(&text).is_empty()
        }),
        "missing from the scrape: {:?}\n{text}",
        missing(&text)
    );
}

/// The README's metrics table is exactly what `ringfan::metrics::METRICS` generates.
/// `UPDATE_README=1 cargo test --release -p ringfan --test metrics` rewrites it.
#[test]
fn readme_metrics_table_is_generated_from_the_metrics_table() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    let (open, close) = ("<!-- metrics-table -->\n", "<!-- /metrics-table -->");
    let start = readme
        .find(open)
        .expect("README.md has a <!-- metrics-table --> line")
        + open.len();
    let end = start
        + readme[start..]
            .find(close)
            .expect("README.md has <!-- /metrics-table -->");
    let generated = ringfan::metrics::markdown_table();
    if std::env::var_os("UPDATE_README").is_some() {
        let updated = format!("{}{generated}{}", &readme[..start], &readme[end..]);
        std::fs::write(path, updated).expect("write README.md");
        return;
    }
    assert!(
        readme[start..end] == generated,
        "README.md's metrics table differs from metrics::METRICS; run \
         UPDATE_README=1 cargo test --release -p ringfan --test metrics, or paste:\n{generated}"
    );
}
