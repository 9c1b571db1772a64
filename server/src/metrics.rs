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

use metrics::{Counter, Gauge, Histogram, KeyName, Label, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

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
    let recorder = recorder()?;
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

/// The recorder, with the fan-out latency histogram's buckets.
fn recorder() -> std::io::Result<PrometheusRecorder> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(FANOUT_LATENCY.into()),
            LATENCY_BUCKETS_SECONDS,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .build_recorder())
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

/// The fan-out latency histogram's name (its buckets are set at install).
const FANOUT_LATENCY: &str = "ringfan_fanout_latency_seconds";

/// Connections by reason, one series per [`CloseReason`].
type ByReason = [u64; CloseReason::ALL.len()];

/// Reads one counter of a worker's [`Stats`].
type StatsField = fn(&Stats) -> u64;
/// Reads one value of a worker's [`Census`].
type CensusValue = fn(&Census) -> usize;

/// Where a metric's values come from; this also fixes its kind (counter, gauge, histogram).
pub enum Feed {
    /// A counter copied from a [`Stats`] field.
    Counter(StatsField),
    /// One counter per value of the label, each copied from its [`Stats`] field.
    CounterBy(&'static str, &'static [(&'static str, StatsField)]),
    /// One counter per [`CloseReason`] (label `reason`), from a by-reason [`Stats`] array.
    CounterByReason(fn(&Stats) -> &ByReason),
    /// A gauge copied from a [`Census`] value.
    Gauge(CensusValue),
    /// One gauge per value of the label, each copied from its [`Census`] value.
    GaugeBy(&'static str, &'static [(&'static str, CensusValue)]),
    /// Recorded by the worker itself ([`WorkerMetrics::latency`]), not copied.
    Histogram,
}

/// One metric: its name, unit, help text and feed. [`describe`], the series a worker registers
/// and publishes, and the README's metrics table all come from [`METRICS`], so a counter is one
/// row here plus its `Stats` field.
pub struct Metric {
    pub name: &'static str,
    pub unit: Option<Unit>,
    pub help: &'static str,
    pub feed: Feed,
}

impl Metric {
    /// "counter", "gauge" or "histogram", as Prometheus names the type.
    pub fn kind(&self) -> &'static str {
        match self.feed {
            Feed::Counter(_) | Feed::CounterBy(..) | Feed::CounterByReason(_) => "counter",
            Feed::Gauge(_) | Feed::GaugeBy(..) => "gauge",
            Feed::Histogram => "histogram",
        }
    }

    /// The label besides `worker` and its values, if the metric has one.
    pub fn label(&self) -> Option<(&'static str, Vec<&'static str>)> {
        fn names<F>(values: &[(&'static str, F)]) -> Vec<&'static str> {
            values.iter().map(|(name, _)| *name).collect()
        }
        match self.feed {
            Feed::CounterBy(label, values) => Some((label, names(values))),
            Feed::GaugeBy(label, values) => Some((label, names(values))),
            Feed::CounterByReason(_) => Some((
                "reason",
                CloseReason::ALL.iter().map(|r| r.name()).collect(),
            )),
            Feed::Counter(_) | Feed::Gauge(_) | Feed::Histogram => None,
        }
    }
}

#[rustfmt::skip] // One row per metric reads better than rustfmt's vertical layout.
pub const METRICS: &[Metric] = &[
    Metric { name: "ringfan_connections_accepted_total", unit: None, help: "Connections accepted.",
        feed: Feed::Counter(|s| s.accepted) },
    Metric { name: "ringfan_connections_refused_total", unit: None, help: "Connections refused, by reason (limit, emfile).",
        feed: Feed::CounterBy("reason", &[("limit", |s| s.refused_limit), ("emfile", |s| s.refused_emfile)]) },
    Metric { name: "ringfan_accept_emfile_total", unit: None,
        help: "Times accept ran out of file descriptors (EMFILE/ENFILE) and refused what was waiting.",
        feed: Feed::Counter(|s| s.accept_emfile) },
    Metric { name: "ringfan_connections_closed_total", unit: None, help: "Connections closed, by the reason their subscription ended.",
        feed: Feed::CounterByReason(|s| &s.closed) },
    Metric { name: "ringfan_subscriptions_ended_total", unit: None,
        help: "Subscriptions ended, by reason, counted when the connection starts closing (closed_total counts when it is freed).",
        feed: Feed::CounterByReason(|s| &s.unsubscribed) },
    Metric { name: "ringfan_connections_aborted_total", unit: None, help: "Connections closed abortively (RST).",
        feed: Feed::Counter(|s| s.aborted) },
    Metric { name: "ringfan_close_timeouts_total", unit: None,
        help: "Connections whose flush or FIN did not come within RINGFAN_CLOSE_TIMEOUT_MS.",
        feed: Feed::Counter(|s| s.close_timeouts) },
    Metric { name: "ringfan_shutdown_delivered_total", unit: None,
        help: "Connections closed at shutdown once their peer had acknowledged everything.",
        feed: Feed::Counter(|s| s.shutdown_delivered) },
    Metric { name: "ringfan_shutdown_aborted_total", unit: None,
        help: "Connections reset at shutdown because RINGFAN_SHUTDOWN_TIMEOUT_MS passed.",
        feed: Feed::Counter(|s| s.shutdown_aborted) },
    Metric { name: "ringfan_connections_open", unit: None, help: "Connections held (accepted, not yet closed).",
        feed: Feed::Gauge(|c| c.open) },
    Metric { name: "ringfan_connections_closing", unit: None, help: "Connections in each close state.",
        feed: Feed::GaugeBy("state", &[("draining", |c| c.draining), ("shutdown_sent", |c| c.shutdown_sent),
            ("awaiting_fin", |c| c.awaiting_fin)]) },
    Metric { name: "ringfan_messages_published_total", unit: None, help: "Lines received from publishers.",
        feed: Feed::Counter(|s| s.messages_in) },
    Metric { name: "ringfan_messages_delivered_total", unit: None, help: "Lines queued to subscribers (one per subscriber).",
        feed: Feed::Counter(|s| s.messages_out) },
    Metric { name: "ringfan_messages_dropped_total", unit: None,
        help: "Lines not queued to a subscriber over its limit under the drop policy.",
        feed: Feed::Counter(|s| s.messages_dropped) },
    Metric { name: "ringfan_subscribers_evicted_total", unit: None,
        help: "Subscribers evicted as slow consumers (disconnect policy).",
        feed: Feed::Counter(|s| s.evicted_slow) },
    Metric { name: "ringfan_slow_consumer_timeouts_total", unit: None,
        help: "Lines refused to a subscriber under its byte limit whose queue had not drained for RINGFAN_SLOW_CONSUMER_TIMEOUT_MS.",
        feed: Feed::Counter(|s| s.slow_timeouts) },
    Metric { name: "ringfan_bytes_received_total", unit: Some(Unit::Bytes), help: "Bytes received.",
        feed: Feed::Counter(|s| s.bytes_in) },
    Metric { name: "ringfan_bytes_sent_total", unit: Some(Unit::Bytes), help: "Bytes sent.",
        feed: Feed::Counter(|s| s.bytes_out) },
    Metric { name: "ringfan_bytes_discarded_total", unit: Some(Unit::Bytes),
        help: "Bytes received and not published (closing connections).",
        feed: Feed::Counter(|s| s.bytes_discarded) },
    Metric { name: "ringfan_subscriber_bytes_discarded_total", unit: Some(Unit::Bytes),
        help: "Bytes sent by connections that may not publish (RINGFAN_PUBLISH_LISTEN), discarded.",
        feed: Feed::Counter(|s| s.subscriber_bytes_discarded) },
    Metric { name: "ringfan_bytes_lost_total", unit: Some(Unit::Bytes),
        help: "Queued bytes never sent because a connection was reset.",
        feed: Feed::Counter(|s| s.lost_bytes) },
    Metric { name: "ringfan_send_queue_bytes", unit: Some(Unit::Bytes), help: "Bytes queued for sending, all connections.",
        feed: Feed::Gauge(|c| c.queued_bytes) },
    Metric { name: "ringfan_send_queue_largest_bytes", unit: Some(Unit::Bytes), help: "The largest single connection's send queue.",
        feed: Feed::Gauge(|c| c.largest_queue_bytes) },
    Metric { name: "ringfan_send_retries_total", unit: None,
        help: "Sends retried after a back-off because the kernel was short of memory.",
        feed: Feed::Counter(|s| s.send_retries) },
    Metric { name: "ringfan_line_frames_skipped_total", unit: None,
        help: "Messages not sent to a line subscriber because they contain a newline (they would arrive as two lines).",
        feed: Feed::Counter(|s| s.line_frames_skipped) },
    Metric { name: "ringfan_hub_batches_sent_total", unit: None, help: "Batches of messages shipped to other workers.",
        feed: Feed::Counter(|s| s.hub_batches_sent) },
    Metric { name: "ringfan_hub_messages_total", unit: None,
        help: "Messages offered to another worker: sent (it has subscribers for them) or skipped (it has none), one per message and worker.",
        feed: Feed::CounterBy("outcome", &[("sent", |s| s.hub_messages_sent), ("skipped", |s| s.hub_messages_skipped)]) },
    Metric { name: "ringfan_commands_total", unit: None, help: "Redis-protocol commands carried out.",
        feed: Feed::Counter(|s| s.commands) },
    Metric { name: "ringfan_topics_refused_total", unit: None, help: "Subscribes refused at RINGFAN_TOPICS_MAX.",
        feed: Feed::Counter(|s| s.topics_refused) },
    Metric { name: "ringfan_websocket_upgrades_total", unit: None, help: "WebSocket upgrades completed.",
        feed: Feed::Counter(|s| s.ws_upgrades) },
    Metric { name: "ringfan_websocket_timeouts_total", unit: None,
        help: "WebSocket connections ended by a deadline: the upgrade (handshake) or a pong (pong).",
        feed: Feed::CounterBy("kind", &[("handshake", |s| s.ws_handshake_timeouts), ("pong", |s| s.ws_pong_timeouts)]) },
    Metric { name: "ringfan_backbone_messages_total", unit: None,
        help: "Messages published to the NATS backbone (out) and received from it (in).",
        feed: Feed::CounterBy("direction", &[("out", |s| s.backbone_out), ("in", |s| s.backbone_in)]) },
    Metric { name: "ringfan_backbone_bytes_total", unit: Some(Unit::Bytes),
        help: "Payload bytes published to the NATS backbone (out) and received from it (in).",
        feed: Feed::CounterBy("direction", &[("out", |s| s.backbone_bytes_out), ("in", |s| s.backbone_bytes_in)]) },
    Metric { name: "ringfan_backbone_dropped_total", unit: None,
        help: "Messages lost on the backbone's way: out (its queue full: NATS slow or stalled), in (a worker's inbox full), publish_error (refused by the client).",
        feed: Feed::CounterBy("direction", &[("out", |s| s.backbone_dropped_out), ("in", |s| s.backbone_dropped_in),
            ("publish_error", |s| s.backbone_publish_errors)]) },
    Metric { name: "ringfan_backbone_reconnects_total", unit: None,
        help: "Times the NATS backbone reconnected after losing its connection (what NATS delivered meanwhile is missed).",
        feed: Feed::Counter(|s| s.backbone_reconnects) },
    Metric { name: "ringfan_backbone_subscriptions", unit: None,
        help: "Subscriptions held in NATS (one per topic with local subscribers, one for all patterns).",
        feed: Feed::Gauge(|c| c.backbone_subscriptions) },
    Metric { name: "ringfan_backbone_connected", unit: None, help: "1 while the NATS backbone is connected.",
        feed: Feed::Gauge(|c| c.backbone_connected) },
    Metric { name: "ringfan_topics", unit: None, help: "Distinct channels, patterns and shard channels with subscribers.",
        feed: Feed::Gauge(|c| c.topics) },
    Metric { name: "ringfan_subscriptions", unit: None, help: "Subscriptions held (a line connection holds one, to the lines topic).",
        feed: Feed::Gauge(|c| c.subscriptions) },
    Metric { name: "ringfan_recv_enobufs_total", unit: None,
        help: "Receives that ended because the provided-buffer ring was empty.",
        feed: Feed::Counter(|s| s.recv_enobufs) },
    Metric { name: "ringfan_recv_paused_total", unit: None,
        help: "Receives cancelled to stop reading a publisher far ahead of its read budget (re-armed when it is caught up).",
        feed: Feed::Counter(|s| s.recv_paused) },
    Metric { name: "ringfan_backpressure_turns_total", unit: None,
        help: "Loop turns that took no input because another worker's inbox was over its limit.",
        feed: Feed::Counter(|s| s.backpressure_turns) },
    Metric { name: "ringfan_stalled_turns_total", unit: None,
        help: "Loop turns that took no input because a subscriber was draining a large queue.",
        feed: Feed::Counter(|s| s.stalled_turns) },
    Metric { name: "ringfan_stale_completions_total", unit: None,
        help: "Completions dropped because their connection was already freed.",
        feed: Feed::Counter(|s| s.stale_completions) },
    Metric { name: "ringfan_sq_full_total", unit: None, help: "Times the submission queue was full and flushed.",
        feed: Feed::Counter(|s| s.driver.sq_full) },
    Metric { name: "ringfan_cq_overflow_total", unit: None, help: "Times the completion queue overflowed.",
        feed: Feed::Counter(|s| s.driver.cq_overflow) },
    Metric { name: "ringfan_enter_retries_total", unit: None,
        help: "Waits or submission flushes interrupted (EINTR, EBUSY, EAGAIN) and retried.",
        feed: Feed::Counter(|s| s.driver.enter_retries) },
    Metric { name: "ringfan_protocol_errors_total", unit: None, help: "Over-long lines.",
        feed: Feed::Counter(|s| s.protocol_errors) },
    Metric { name: "ringfan_unexpected_errors_total", unit: None,
        help: "Operation errors with no planned handling (logged).",
        feed: Feed::Counter(|s| s.unexpected_errors) },
    Metric { name: FANOUT_LATENCY, unit: Some(Unit::Seconds),
        help: "Sampled (about once per ms per worker): a line's arrival to the completion of the send that delivered it.",
        feed: Feed::Histogram },
];

/// Gives every metric of [`METRICS`] its help text and unit.
fn describe() {
    metrics::with_recorder(|r| {
        for m in METRICS {
            let (name, help) = (KeyName::from(m.name), SharedString::from(m.help));
            match m.kind() {
                "counter" => r.describe_counter(name, m.unit, help),
                "gauge" => r.describe_gauge(name, m.unit, help),
                _ => r.describe_histogram(name, m.unit, help),
            }
        }
    });
}

/// The README's metrics table (between its `<!-- metrics-table -->` markers).
pub fn markdown_table() -> String {
    let mut s = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for m in METRICS {
        let labels = match m.label() {
            Some((label, values)) => format!("`{label}`: `{}`", values.join("`, `")),
            None => String::new(),
        };
        s.push_str(&format!(
            "| `{}` | {} | {labels} | {} |\n",
            m.name,
            m.kind(),
            m.help.replace('|', "\\|")
        ));
    }
    s
}

/// One registered series and where its value comes from.
enum Series {
    Counter(Counter, StatsField),
    ByReason(Counter, fn(&Stats) -> &ByReason, usize),
    Gauge(Gauge, CensusValue),
}

/// One worker's metric handles, registered once from [`METRICS`].
pub struct WorkerMetrics {
    series: Vec<Series>,
    pub latency: Histogram,
}

impl WorkerMetrics {
    pub fn new(worker: usize) -> Self {
        Self::labelled(worker.to_string())
    }

    /// Series labelled `worker="<worker>"` (a number, or `backbone` for the NATS thread).
    pub fn labelled(worker: String) -> Self {
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut l = vec![Label::new("worker", worker.clone())];
            l.extend(extra.map(|(k, v)| Label::new(k, v)));
            l
        };
        let mut series = Vec::new();
        let mut latency = None;
        for m in METRICS {
            let name = m.name;
            match m.feed {
                Feed::Counter(f) => {
                    series.push(Series::Counter(metrics::counter!(name, labels(None)), f))
                }
                Feed::CounterBy(label, values) => series.extend(values.iter().map(|&(v, f)| {
                    Series::Counter(metrics::counter!(name, labels(Some((label, v)))), f)
                })),
                Feed::CounterByReason(f) => series.extend(CloseReason::ALL.iter().map(|&r| {
                    let labels = labels(Some(("reason", r.name())));
                    Series::ByReason(metrics::counter!(name, labels), f, r as usize)
                })),
                Feed::Gauge(f) => {
                    series.push(Series::Gauge(metrics::gauge!(name, labels(None)), f))
                }
                Feed::GaugeBy(label, values) => series.extend(values.iter().map(|&(v, f)| {
                    Series::Gauge(metrics::gauge!(name, labels(Some((label, v)))), f)
                })),
                Feed::Histogram => latency = Some(metrics::histogram!(name, labels(None))),
            }
        }
        WorkerMetrics {
            series,
            latency: latency.expect("METRICS has the fan-out latency histogram"),
        }
    }

    /// Copies the worker's counters and a census of its connections into the recorder.
    pub fn publish(&self, s: &Stats, census: &Census) {
        for series in &self.series {
            match series {
                Series::Counter(c, f) => c.absolute(f(s)),
                Series::ByReason(c, f, i) => c.absolute(f(s)[*i]),
                Series::Gauge(g, f) => g.set(f(census) as f64),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Stats whose every counter holds a different value (1, 2, 3, ...).
    fn distinct_stats() -> Stats {
        let mut s = Stats::default();
        let scalars = [
            &mut s.accepted,
            &mut s.aborted,
            &mut s.close_timeouts,
            &mut s.shutdown_aborted,
            &mut s.shutdown_delivered,
            &mut s.lost_bytes,
            &mut s.stale_completions,
            &mut s.bytes_in,
            &mut s.bytes_out,
            &mut s.bytes_discarded,
            &mut s.messages_in,
            &mut s.messages_out,
            &mut s.protocol_errors,
            &mut s.evicted_slow,
            &mut s.recv_enobufs,
            &mut s.recv_paused,
            &mut s.backpressure_turns,
            &mut s.stalled_turns,
            &mut s.accept_emfile,
            &mut s.refused_limit,
            &mut s.refused_emfile,
            &mut s.subscriber_bytes_discarded,
            &mut s.slow_timeouts,
            &mut s.messages_dropped,
            &mut s.send_retries,
            &mut s.line_frames_skipped,
            &mut s.hub_batches_sent,
            &mut s.hub_messages_sent,
            &mut s.hub_messages_skipped,
            &mut s.commands,
            &mut s.topics_refused,
            &mut s.ws_upgrades,
            &mut s.ws_handshake_timeouts,
            &mut s.ws_pong_timeouts,
            &mut s.backbone_out,
            &mut s.backbone_bytes_out,
            &mut s.backbone_in,
            &mut s.backbone_bytes_in,
            &mut s.backbone_dropped_out,
            &mut s.backbone_dropped_in,
            &mut s.backbone_publish_errors,
            &mut s.backbone_reconnects,
            &mut s.unexpected_errors,
            &mut s.driver.sq_full,
            &mut s.driver.cq_overflow,
            &mut s.driver.enter_retries,
        ];
        for (i, field) in scalars.into_iter().enumerate() {
            *field = 1 + i as u64;
        }
        for (i, (c, u)) in s.closed.iter_mut().zip(&mut s.unsubscribed).enumerate() {
            (*c, *u) = (100 + i as u64, 200 + i as u64);
        }
        s
    }

    /// Series name (with its labels but `worker`) and value, from a Prometheus text rendering.
    fn series(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| l.starts_with("ringfan_") && !l.contains("latency"))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                let series = series
                    .replace("worker=\"3\",", "")
                    .replace("{worker=\"3\"}", "");
                (series.replace("{worker=\"3\"", "{"), value.to_string())
            })
            .collect()
    }

    /// Every counter of `Stats` (as its `Display` lists them) is published as exactly one series
    /// carrying its value, every census value as one gauge, and every row of METRICS is described
    /// with its type and help: the table and the counters cannot drift apart.
    #[test]
    fn every_counter_is_published_once_with_its_value_and_described() {
        let recorder = recorder().unwrap();
        let handle = recorder.handle();
        let m = metrics::with_local_recorder(&recorder, || {
            describe();
            WorkerMetrics::new(3)
        });
        let stats = distinct_stats();
        let census = Census {
            open: 1001,
            draining: 1002,
            shutdown_sent: 1003,
            awaiting_fin: 1004,
            queued_bytes: 1005,
            largest_queue_bytes: 1006,
            topics: 1007,
            subscriptions: 1008,
            backbone_subscriptions: 1009,
            backbone_connected: 1010,
        };
        m.publish(&stats, &census);
        m.latency.record(0.001);
        let text = handle.render();
        for row in METRICS {
            let (kind, help) = (row.kind(), row.help);
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", row.name)),
                "{}",
                row.name
            );
            assert!(
                text.contains(&format!("# HELP {} {help}\n", row.name)),
                "{}",
                row.name
            );
        }
        let published = series(&text);
        let mut values: Vec<u64> = published
            .iter()
            .map(|(_, v)| v.parse::<f64>().unwrap() as u64)
            .collect();
        values.sort();
        let shown = stats.to_string();
        let mut expected: Vec<u64> = shown
            .split(' ')
            .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
            .chain(1001..=1010)
            .collect();
        expected.sort();
        assert_eq!(values, expected, "Stats: {shown}\nseries: {published:?}");
        // A few by name, so a row cannot read the wrong field.
        for (name, value) in [
            ("ringfan_connections_refused_total{reason=\"emfile\"}", "21"),
            (
                "ringfan_connections_closed_total{reason=\"peer_reset\"}",
                "101",
            ),
            (
                "ringfan_subscriptions_ended_total{reason=\"peer_fin\"}",
                "200",
            ),
            ("ringfan_shutdown_aborted_total", "4"),
            ("ringfan_send_retries_total", "25"),
            ("ringfan_enter_retries_total", "46"),
            ("ringfan_hub_messages_total{outcome=\"skipped\"}", "29"),
            (
                "ringfan_connections_closing{state=\"awaiting_fin\"}",
                "1004",
            ),
        ] {
            assert!(
                published.contains(&(name.to_string(), value.to_string())),
                "{name} {value} not in {published:?}"
            );
        }
    }

    #[test]
    fn metric_names_are_unique_and_in_the_style() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        for m in METRICS {
            assert!(m.name.starts_with("ringfan_"), "{}", m.name);
            assert_eq!(
                m.kind() == "counter",
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
        }
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            METRICS.len(),
            "a metric name is in METRICS twice"
        );
    }
}
