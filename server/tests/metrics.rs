//! Prometheus metrics match what happened: connections, messages, a reset, a slow consumer.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Scrapes `url` (http://127.0.0.1:PORT/metrics) and sums each series over its `worker` label:
/// `name{reason="x"}` keys keep their other labels.
fn scrape(addr: &str) -> HashMap<String, f64> {
    let hostport = addr
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut s = TcpStream::connect(hostport).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.1 200"),
        "scrape failed: {body:.200}"
    );
    let mut out = HashMap::new();
    for line in body.lines().filter(|l| l.starts_with("ringfan_")) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let rest: Vec<&str> = labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.starts_with("worker=") && !l.is_empty())
                    .collect();
                if rest.is_empty() {
                    name.to_string()
                } else {
                    format!("{name}{{{}}}", rest.join(","))
                }
            }
            None => series.to_string(),
        };
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

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
    let find = || {
        server.stdout_lines().iter().find_map(|l| {
            l.strip_prefix("ringfan metrics on ")
                .map(|u| u.trim().to_string())
        })
    };
    assert!(
        wait_until(secs(5), || find().is_some()),
        "the server prints its metrics address"
    );
    let url = find().unwrap();

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
