//! The NATS backbone: several ringfan nodes share topics through a NATS cluster.
//!
//! With `RINGFAN_NATS_URL`, a node is an edge of NATS: every message published on it (any
//! protocol) is also published to NATS on `<prefix>.<topic>`, and what arrives from NATS is
//! fanned out to the local subscribers exactly as a local message. The node subscribes in NATS
//! only to the topics it has local subscribers for (`echo: false`, so it never gets its own
//! messages back); a pattern subscriber makes it subscribe to `<prefix>.>` and the patterns are
//! matched here.
//!
//! The NATS connection is the official `async-nats` client on a thread of its own (a
//! single-threaded tokio runtime), never on a worker's ring. Workers hand it one batch per loop
//! turn through a bounded queue (`try_send`: a full queue drops the batch and counts it, never
//! blocks a worker, never grows); it hands what arrives to the workers with subscribers for it,
//! in batches, through their inboxes, as the hub does between workers.
//!
//! NATS core is at-most-once. Lost, and counted: batches a worker could not queue (NATS
//! stalled or slow: `ringfan_backbone_dropped_total{direction="out"}`), batches for a worker
//! whose inbox is full (`direction="in"`), and messages NATS did not deliver while a connection
//! was down (counted by reconnects, not by message: the node cannot know what it missed).
//! Messages published while the connection is down wait in the client's buffer and go out on
//! reconnect while that buffer lasts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, Event, HeaderMap, ServerAddr};
use bytes::Bytes;
use futures_util::StreamExt;
use ringfan_protocol::resp::Kind;
use ringfan_protocol::Chunk;
use tokio::sync::mpsc;

use crate::hub::{BatchData, Shared};
use crate::metrics::WorkerMetrics;
use crate::stats::{Census, Stats};
use crate::topics::{Body, Message, Scope};

/// Batches a worker may have waiting for NATS before new ones are dropped.
const OUT_QUEUE_BATCHES: usize = 256;
/// Messages taken from NATS at once before they are routed to the workers as batches.
const IN_BATCH_MAX: usize = 4096;
/// Header marking a chunk of lines (its value: how many) sent as one NATS message.
const LINES_HEADER: &str = "Ringfan-Lines";
/// How often the backbone thread publishes its counters and checks for shutdown.
const TICK: Duration = Duration::from_millis(50);

/// What workers hold of the backbone.
pub struct Link {
    out: mpsc::Sender<Vec<Arc<Message>>>,
    interest: mpsc::UnboundedSender<(Kind, Bytes, bool)>,
}

impl Link {
    /// Queues this turn's locally published messages for NATS; on a full queue returns how many
    /// messages were dropped.
    pub fn forward(&self, batch: Vec<Arc<Message>>) -> Result<(), usize> {
        let n: usize = batch.iter().map(|m| m.count()).sum();
        self.out.try_send(batch).map_err(|_| n)
    }

    /// A worker's first subscriber of a topic arrived (`up`) or its last left.
    pub fn interest(&self, kind: Kind, topic: &Bytes, up: bool) {
        // Unbounded: one entry per change of a worker's topic set, never per message.
        let _ = self.interest.send((kind, topic.clone(), up));
    }
}

/// The NATS subject of `topic`: `<prefix>.<token>` (`<prefix>_shard.` for shard channels). A
/// topic is its own token(s) when NATS can carry it as is: printable ASCII without spaces,
/// `*`, `>` or empty tokens, not starting with `_`. Anything else is `_x.<hex of its bytes>`.
pub fn subject(prefix: &str, kind: Kind, topic: &[u8]) -> String {
    let space = match kind {
        Kind::Shard => "_shard",
        _ => "",
    };
    format!("{prefix}{space}.{}", token(topic))
}

fn token(topic: &[u8]) -> String {
    let plain = !topic.is_empty()
        && topic[0] != b'_'
        && topic
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        && topic.split(|&b| b == b'.').all(|t| !t.is_empty());
    if plain {
        return String::from_utf8(topic.to_vec()).expect("ASCII");
    }
    let mut t = String::from("_x.");
    for b in topic {
        t.push_str(&format!("{b:02x}"));
    }
    t
}

/// The (kind, topic) of a subject this node subscribed to; None for anything else.
pub fn topic_of(prefix: &str, subject: &str) -> Option<(Kind, Bytes)> {
    let (kind, rest) = if let Some(r) = subject.strip_prefix(&format!("{prefix}_shard.")) {
        (Kind::Shard, r)
    } else {
        (Kind::Channel, subject.strip_prefix(&format!("{prefix}."))?)
    };
    let topic = match rest.strip_prefix("_x.") {
        Some(hex) => {
            if hex.len() % 2 != 0 {
                return None;
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?
        }
        None if rest.starts_with('_') || rest.is_empty() => return None,
        None => rest.as_bytes().to_vec(),
    };
    Some((kind, Bytes::from(topic)))
}

/// The settings of the backbone.
#[derive(Clone, Debug)]
pub struct Settings {
    pub urls: Vec<String>,
    pub prefix: String,
    pub shutdown_timeout: Duration,
    pub metrics: bool,
}

/// Starts the backbone thread. Returns the workers' link and the thread's handle.
pub fn start(
    settings: Settings,
    shared: Arc<Shared>,
) -> std::io::Result<(Link, std::thread::JoinHandle<()>)> {
    let addrs: Vec<ServerAddr> = settings
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| std::io::Error::other(format!("RINGFAN_NATS_URL: {e}")))?;
    let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE_BATCHES);
    let (interest_tx, interest_rx) = mpsc::unbounded_channel();
    let handle = std::thread::Builder::new()
        .name("ringfan-nats".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a single-threaded tokio runtime");
            runtime.block_on(run(settings, addrs, shared, out_rx, interest_rx));
        })?;
    Ok((
        Link {
            out: out_tx,
            interest: interest_tx,
        },
        handle,
    ))
}

/// The connection's state as its event callback sees it.
#[derive(Default)]
struct Events {
    connected: AtomicBool,
    reconnects: AtomicU64,
    disconnects: AtomicU64,
}

/// A message from one of this node's subscriptions: from a channel's own subscription or the
/// patterns' wildcard one.
struct Arrival {
    scope: Scope,
    message: async_nats::Message,
}

/// A NATS subscription held for a topic: how many workers have subscribers for it, and the task
/// forwarding what arrives (aborting it drops the subscriber, which unsubscribes).
struct Held {
    workers: u32,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Backbone {
    prefix: String,
    shared: Arc<Shared>,
    client: async_nats::Client,
    events: Arc<Events>,
    held: HashMap<(Kind, Bytes), Held>,
    /// Workers' pattern topics held; while any, `<prefix>.>` is subscribed.
    patterns: u32,
    wildcard: Option<tokio::task::JoinHandle<()>>,
    arrivals: mpsc::Sender<Arrival>,
    stats: Stats,
    census: Census,
    metrics: Option<WorkerMetrics>,
}

async fn run(
    settings: Settings,
    addrs: Vec<ServerAddr>,
    shared: Arc<Shared>,
    mut out_rx: mpsc::Receiver<Vec<Arc<Message>>>,
    mut interest_rx: mpsc::UnboundedReceiver<(Kind, Bytes, bool)>,
) {
    let events = Arc::new(Events::default());
    let ev = events.clone();
    let options = ConnectOptions::new()
        .no_echo()
        .retry_on_initial_connect()
        // The list in its order: the first server, then on failure the next one.
        .retain_servers_order()
        .name("ringfan")
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        // Reconnect at once to the next server, then back off to at most 1 s between tries.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .event_callback(move |event| {
            let ev = ev.clone();
            async move {
                match event {
                    Event::Connected => {
                        if !ev.connected.swap(true, Ordering::AcqRel)
                            && ev.disconnects.load(Ordering::Acquire) > 0
                        {
                            ev.reconnects.fetch_add(1, Ordering::AcqRel);
                        }
                        tracing::info!("NATS backbone connected");
                    }
                    Event::Disconnected => {
                        ev.connected.store(false, Ordering::Release);
                        ev.disconnects.fetch_add(1, Ordering::AcqRel);
                        tracing::warn!("NATS backbone disconnected: reconnecting; messages published on other nodes meanwhile are missed");
                    }
                    other => tracing::warn!("NATS backbone: {other}"),
                }
            }
        });
    let client = match options.connect(addrs).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("NATS backbone: cannot connect (RINGFAN_NATS_URL): {e}");
            return;
        }
    };
    let (arrivals, mut arrivals_rx) = mpsc::channel(IN_BATCH_MAX * 4);
    let mut b = Backbone {
        prefix: settings.prefix.clone(),
        shared,
        client,
        events,
        held: HashMap::new(),
        patterns: 0,
        wildcard: None,
        arrivals,
        stats: Stats::default(),
        census: Census::default(),
        metrics: settings
            .metrics
            .then(|| WorkerMetrics::labelled("backbone".into())),
    };
    let mut tick = tokio::time::interval(TICK);
    let mut pending_in = Vec::new();
    loop {
        tokio::select! {
            Some(batch) = out_rx.recv() => b.publish(batch).await,
            Some((kind, topic, up)) = interest_rx.recv() => b.interest(kind, topic, up).await,
            Some(first) = arrivals_rx.recv() => {
                pending_in.push(first);
                while pending_in.len() < IN_BATCH_MAX {
                    match arrivals_rx.try_recv() {
                        Ok(a) => pending_in.push(a),
                        Err(_) => break,
                    }
                }
                b.deliver(&mut pending_in);
            }
            _ = tick.tick() => {
                b.publish_metrics();
                let workers = b.shared.workers;
                if b.shared.quiesced.load(Ordering::Acquire) == workers {
                    break;
                }
            }
        }
    }
    // Shutdown: every worker has queued its last messages; publish them and flush, within the
    // shutdown deadline.
    let deadline = Instant::now() + settings.shutdown_timeout;
    let finish = async {
        while let Ok(batch) = out_rx.try_recv() {
            b.publish(batch).await;
        }
        let _ = b.client.flush().await;
    };
    if tokio::time::timeout_at(deadline.into(), finish)
        .await
        .is_err()
    {
        tracing::warn!("NATS backbone: not flushed within RINGFAN_SHUTDOWN_TIMEOUT_MS");
    }
    b.publish_metrics();
}

impl Backbone {
    async fn publish(&mut self, batch: Vec<Arc<Message>>) {
        for m in batch {
            let subject = subject(&self.prefix, m.kind, &m.topic);
            let result = match &m.body {
                // A chunk of lines crosses as one NATS message, its line count in a header.
                Body::Lines(chunk) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(LINES_HEADER, chunk.count.to_string().as_str());
                    self.client
                        .publish_with_headers(subject, headers, chunk.bytes.clone())
                        .await
                }
                Body::Payload(p) => self.client.publish(subject, p.clone()).await,
            };
            match result {
                Ok(()) => {
                    self.stats.backbone_out += m.count() as u64;
                    self.stats.backbone_bytes_out += m.payload_bytes() as u64;
                }
                Err(e) => {
                    self.stats.backbone_publish_errors += m.count() as u64;
                    tracing::debug!("NATS backbone: publish failed: {e}");
                }
            }
        }
    }

    async fn interest(&mut self, kind: Kind, topic: Bytes, up: bool) {
        if kind == Kind::Pattern {
            if up {
                self.patterns += 1;
                if self.patterns == 1 {
                    let all = format!("{}.>", self.prefix);
                    self.wildcard = self.subscribe(all, Scope::Patterns).await;
                }
            } else {
                self.patterns -= 1;
                if self.patterns == 0 {
                    if let Some(task) = self.wildcard.take() {
                        task.abort();
                    }
                }
            }
            return self.count_subscriptions();
        }
        let key = (kind, topic);
        if up {
            let held = self.held.entry(key.clone()).or_insert(Held {
                workers: 0,
                task: None,
            });
            held.workers += 1;
            if held.workers == 1 {
                let s = subject(&self.prefix, key.0, &key.1);
                let task = self.subscribe(s, Scope::Channels).await;
                if let Some(held) = self.held.get_mut(&key) {
                    held.task = task;
                }
            }
        } else if let Some(held) = self.held.get_mut(&key) {
            held.workers -= 1;
            if held.workers == 0 {
                if let Some(Held {
                    task: Some(task), ..
                }) = self.held.remove(&key)
                {
                    task.abort();
                }
            }
        }
        self.count_subscriptions();
    }

    fn count_subscriptions(&mut self) {
        self.census.backbone_subscriptions = self.held.len() + usize::from(self.wildcard.is_some());
    }

    /// Subscribes and forwards what arrives, tagged, to the backbone loop.
    async fn subscribe(
        &self,
        subject: String,
        scope: Scope,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut subscriber = match self.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("NATS backbone: cannot subscribe to {subject}: {e}");
                return None;
            }
        };
        let arrivals = self.arrivals.clone();
        Some(tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if arrivals.send(Arrival { scope, message }).await.is_err() {
                    return;
                }
            }
        }))
    }

    /// Routes arrivals to the workers with subscribers for them, one batch per worker.
    fn deliver(&mut self, arrivals: &mut Vec<Arrival>) {
        let workers = self.shared.workers;
        let mut per_worker: Vec<Vec<Arc<Message>>> = (0..workers).map(|_| Vec::new()).collect();
        for a in arrivals.drain(..) {
            let Some((kind, topic)) = topic_of(&self.prefix, a.message.subject.as_str()) else {
                continue;
            };
            let payload = a.message.payload;
            let lines = a
                .message
                .headers
                .as_ref()
                .and_then(|h| h.get(LINES_HEADER))
                .and_then(|v| v.as_str().parse::<usize>().ok());
            let body = match lines {
                Some(count) if payload.ends_with(b"\n") => Body::Lines(Chunk {
                    bytes: payload,
                    count,
                }),
                _ => Body::Payload(payload),
            };
            let message = Arc::new(Message::new(kind, topic, body).arrived(a.scope));
            self.stats.backbone_in += message.count() as u64;
            self.stats.backbone_bytes_in += message.payload_bytes() as u64;
            for (w, batch) in per_worker.iter_mut().enumerate() {
                let interest = self.shared.interest(w);
                let wanted = match a.scope {
                    Scope::Channels => interest.count(kind, &message.topic) > 0,
                    Scope::Patterns => {
                        interest.receivers(kind, &message.topic)
                            > interest.count(kind, &message.topic)
                    }
                    Scope::Local => unreachable!("arrivals come from NATS"),
                };
                if wanted {
                    batch.push(Arc::clone(&message));
                }
            }
        }
        for (w, messages) in per_worker.into_iter().enumerate() {
            if messages.is_empty() {
                continue;
            }
            let count: usize = messages.iter().map(|m| m.count()).sum();
            if self.shared.inbox_bytes(w) > self.shared.inbox_bytes_max * 4 {
                // That worker is far behind: never let the backbone grow its inbox unbounded.
                self.stats.backbone_dropped_in += count as u64;
                continue;
            }
            let bytes = messages.iter().map(|m| m.payload_bytes()).sum();
            let at = Instant::now();
            self.shared
                .send(w, Arc::new(BatchData { messages, at }), bytes);
        }
    }

    fn publish_metrics(&mut self) {
        self.stats.backbone_reconnects = self.events.reconnects.load(Ordering::Acquire);
        self.census.backbone_connected = usize::from(self.events.connected.load(Ordering::Acquire));
        if let Some(m) = &self.metrics {
            m.publish(&self.stats, &self.census);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_carry_plain_topics_as_is_and_encode_the_rest_both_ways() {
        for (kind, topic, subj) in [
            (Kind::Channel, &b"news"[..], "rf.news"),
            (Kind::Channel, b"news.sport", "rf.news.sport"),
            (Kind::Shard, b"s", "rf_shard.s"),
            (Kind::Channel, b"a b", "rf._x.612062"),
            (Kind::Channel, b"a..b", "rf._x.612e2e62"),
            (Kind::Channel, b"*", "rf._x.2a"),
            (Kind::Channel, b"_x.41", "rf._x.5f782e3431"),
            (Kind::Channel, b"", "rf._x."),
        ] {
            assert_eq!(subject("rf", kind, topic), subj);
            if !topic.is_empty() {
                assert_eq!(
                    topic_of("rf", subj),
                    Some((kind, Bytes::copy_from_slice(topic)))
                );
            }
        }
        assert_eq!(topic_of("rf", "other.x"), None);
        assert_eq!(topic_of("rf", "rf._y"), None);
        assert_eq!(topic_of("rf", "rf._x.4"), None);
    }
}
