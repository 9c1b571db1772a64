//! Prometheus metrics.
//!
//! Workers keep plain integers ([`Stats`]) on the hot path and copy them into the `metrics`
//! recorder every [`PUBLISH_INTERVAL`]; the recorder renders text for `/metrics`, served by one
//! accepting thread and a short-lived thread per scrape, each bounded by [`SCRAPE_DEADLINE`].
//! Only the sampled fan-out latency goes straight to the recorder.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::lifecycle::CloseReason;
use crate::stats::{Census, Stats};

/// How often a worker copies its counters into the recorder.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);
/// How often a worker starts a fan-out latency sample.
pub const LATENCY_SAMPLE_INTERVAL: Duration = Duration::from_millis(1);

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    2.5,
];

/// Installs the recorder and starts serving `/metrics` on `addr`. Returns the bound address.
pub fn install(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("ringfan_fanout_latency_seconds".into()),
            LATENCY_BUCKETS_SECONDS,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| std::io::Error::other(e.to_string()))?;
    describe();
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringfan-metrics".into())
        .spawn(move || serve(listener, handle))?;
    Ok(bound)
}

/// Time one scrape connection gets for reading its request and writing the response, in total.
/// A client that stalls, or trickles its request a byte at a time, is closed when it runs out.
pub const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);
/// Scrape connections served at once; one more is closed at once (and logged, rate-limited).
pub const SCRAPES_MAX: usize = 16;
/// Longest request read; the rest of a longer one is ignored.
const REQUEST_BYTES_MAX: usize = 8192;

/// Accepts scrapes, each on its own short-lived thread: a slow or stalled client holds only its
/// own thread, for at most [`SCRAPE_DEADLINE`], never the other scrapers.
fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut refused = 0u64;
    for stream in listener.incoming() {
        let s = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let deadline = Instant::now() + SCRAPE_DEADLINE;
        if active.fetch_add(1, Ordering::AcqRel) >= SCRAPES_MAX {
            active.fetch_sub(1, Ordering::AcqRel);
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "metrics listener: {SCRAPES_MAX} scrapes already in progress, connection \
                     closed (total={refused})"
                );
            }
            continue; // dropped: closed
        }
        let (this_handle, this_active) = (handle.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("ringfan-scrape".into())
            .spawn(move || {
                let _ = respond(s, &this_handle, deadline);
                this_active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            // The closure (and the connection with it) was dropped unrun.
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("metrics listener: cannot start a scrape thread: {e}");
        }
    }
}

/// Time left before `deadline`, as a socket timeout; `TimedOut` once it has passed (a zero
/// timeout would mean "block forever" to set_read_timeout).
fn left(deadline: Instant) -> std::io::Result<Option<Duration>> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(Some(d)),
        _ => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

fn respond(mut s: TcpStream, handle: &PrometheusHandle, deadline: Instant) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < REQUEST_BYTES_MAX {
        // Each read may wait only for what is left of the whole request's time.
        s.set_read_timeout(left(deadline)?)?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let (status, body) = if method != b"GET" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path == b"/metrics" || path.starts_with(b"/metrics?") {
        handle.run_upkeep();
        ("200 OK", handle.render())
    } else {
        ("404 Not Found", "metrics are at /metrics\n".to_string())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Written piecewise, not with write_all, so a reader that drains slowly is held to the same
    // deadline (SO_SNDTIMEO bounds each write, not their sum).
    let mut out = response.as_bytes();
    while !out.is_empty() {
        s.set_write_timeout(left(deadline)?)?;
        match s.write(out)? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => out = &out[n..],
        }
    }
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "ringfan_connections_accepted_total",
        "Connections accepted."
    );
    describe_counter!(
        "ringfan_connections_refused_total",
        "Connections refused, by reason (limit, emfile)."
    );
    describe_counter!(
        "ringfan_connections_closed_total",
        "Connections closed, by the reason their subscription ended."
    );
    describe_counter!(
        "ringfan_connections_aborted_total",
        "Connections closed abortively (RST)."
    );
    describe_counter!(
        "ringfan_close_timeouts_total",
        "Connections whose flush or FIN did not come within RINGFAN_CLOSE_TIMEOUT_MS."
    );
    describe_gauge!(
        "ringfan_connections_open",
        "Connections held (accepted, not yet closed)."
    );
    describe_gauge!(
        "ringfan_connections_closing",
        "Connections in each close state."
    );
    describe_counter!(
        "ringfan_messages_published_total",
        "Lines received from publishers."
    );
    describe_counter!(
        "ringfan_messages_delivered_total",
        "Lines queued to subscribers (one per subscriber)."
    );
    describe_counter!(
        "ringfan_messages_dropped_total",
        "Lines not queued to a subscriber over its limit under the drop policy."
    );
    describe_counter!(
        "ringfan_bytes_received_total",
        Unit::Bytes,
        "Bytes received."
    );
    describe_counter!("ringfan_bytes_sent_total", Unit::Bytes, "Bytes sent.");
    describe_counter!(
        "ringfan_bytes_discarded_total",
        Unit::Bytes,
        "Bytes received and not published (closing connections)."
    );
    describe_counter!(
        "ringfan_bytes_lost_total",
        Unit::Bytes,
        "Queued bytes never sent because a connection was reset."
    );
    describe_gauge!(
        "ringfan_send_queue_bytes",
        Unit::Bytes,
        "Bytes queued for sending, all connections."
    );
    describe_gauge!(
        "ringfan_send_queue_largest_bytes",
        Unit::Bytes,
        "The largest single connection's send queue."
    );
    describe_counter!(
        "ringfan_recv_enobufs_total",
        "Receives that ended because the provided-buffer ring was empty."
    );
    describe_counter!(
        "ringfan_stale_completions_total",
        "Completions dropped because their connection was already freed."
    );
    describe_counter!(
        "ringfan_sq_full_total",
        "Times the submission queue was full and flushed."
    );
    describe_counter!(
        "ringfan_cq_overflow_total",
        "Times the completion queue overflowed."
    );
    describe_counter!("ringfan_protocol_errors_total", "Over-long lines.");
    describe_counter!(
        "ringfan_unexpected_errors_total",
        "Operation errors with no planned handling (logged)."
    );
    describe_histogram!(
        "ringfan_fanout_latency_seconds",
        Unit::Seconds,
        "Sampled: a line's arrival to the completion of the send that delivered it."
    );
}

/// One worker's metric handles, registered once.
pub struct WorkerMetrics {
    accepted: Counter,
    refused_limit: Counter,
    refused_emfile: Counter,
    closed: Vec<Counter>,
    aborted: Counter,
    close_timeouts: Counter,
    open: Gauge,
    closing: [Gauge; 3],
    published: Counter,
    delivered: Counter,
    dropped: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    bytes_discarded: Counter,
    bytes_lost: Counter,
    queue_bytes: Gauge,
    queue_largest: Gauge,
    enobufs: Counter,
    stale: Counter,
    sq_full: Counter,
    cq_overflow: Counter,
    protocol_errors: Counter,
    unexpected: Counter,
    pub latency: Histogram,
}

impl WorkerMetrics {
    pub fn new(worker: usize) -> Self {
        let w = worker.to_string();
        let c = |name: &'static str| metrics::counter!(name, "worker" => w.clone());
        let g = |name: &'static str| metrics::gauge!(name, "worker" => w.clone());
        WorkerMetrics {
            accepted: c("ringfan_connections_accepted_total"),
            refused_limit: metrics::counter!("ringfan_connections_refused_total", "worker" => w.clone(), "reason" => "limit"),
            refused_emfile: metrics::counter!("ringfan_connections_refused_total", "worker" => w.clone(), "reason" => "emfile"),
            closed: CloseReason::ALL
                .iter()
                .map(|r| metrics::counter!("ringfan_connections_closed_total", "worker" => w.clone(), "reason" => r.name()))
                .collect(),
            aborted: c("ringfan_connections_aborted_total"),
            close_timeouts: c("ringfan_close_timeouts_total"),
            open: g("ringfan_connections_open"),
            closing: ["draining", "shutdown_sent", "awaiting_fin"]
                .map(|s| metrics::gauge!("ringfan_connections_closing", "worker" => w.clone(), "state" => s)),
            published: c("ringfan_messages_published_total"),
            delivered: c("ringfan_messages_delivered_total"),
            dropped: c("ringfan_messages_dropped_total"),
            bytes_in: c("ringfan_bytes_received_total"),
            bytes_out: c("ringfan_bytes_sent_total"),
            bytes_discarded: c("ringfan_bytes_discarded_total"),
            bytes_lost: c("ringfan_bytes_lost_total"),
            queue_bytes: g("ringfan_send_queue_bytes"),
            queue_largest: g("ringfan_send_queue_largest_bytes"),
            enobufs: c("ringfan_recv_enobufs_total"),
            stale: c("ringfan_stale_completions_total"),
            sq_full: c("ringfan_sq_full_total"),
            cq_overflow: c("ringfan_cq_overflow_total"),
            protocol_errors: c("ringfan_protocol_errors_total"),
            unexpected: c("ringfan_unexpected_errors_total"),
            latency: metrics::histogram!("ringfan_fanout_latency_seconds", "worker" => w.clone()),
        }
    }

    /// Copies the worker's counters and a census of its connections into the recorder.
    pub fn publish(&self, s: &Stats, census: &Census) {
        self.accepted.absolute(s.accepted);
        self.refused_limit.absolute(s.refused_limit);
        self.refused_emfile.absolute(s.refused_emfile);
        for (counter, v) in self.closed.iter().zip(s.closed) {
            counter.absolute(v);
        }
        self.aborted.absolute(s.aborted);
        self.close_timeouts.absolute(s.close_timeouts);
        self.published.absolute(s.messages_in);
        self.delivered.absolute(s.messages_out);
        self.dropped.absolute(s.messages_dropped);
        self.bytes_in.absolute(s.bytes_in);
        self.bytes_out.absolute(s.bytes_out);
        self.bytes_discarded.absolute(s.bytes_discarded);
        self.bytes_lost.absolute(s.lost_bytes);
        self.enobufs.absolute(s.recv_enobufs);
        self.stale.absolute(s.stale_completions);
        self.sq_full.absolute(s.driver.sq_full);
        self.cq_overflow.absolute(s.driver.cq_overflow);
        self.protocol_errors.absolute(s.protocol_errors);
        self.unexpected.absolute(s.unexpected_errors);
        let closing = [census.draining, census.shutdown_sent, census.awaiting_fin];
        self.open.set(census.open as f64);
        for (g, v) in self.closing.iter().zip(closing) {
            g.set(v as f64);
        }
        self.queue_bytes.set(census.queued_bytes as f64);
        self.queue_largest.set(census.largest_queue_bytes as f64);
    }
}
