//! Configuration from `RINGFAN_*` environment variables.
//!
//! One table ([`VARS`]) is the single source of every variable's parsing, default, accepted
//! values, `--help` row, README row ([`markdown_table`]) and the typo guard, so a variable is
//! added in one place and cannot drift between them.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub threads: usize,
    pub pin: bool,
    pub echo: bool,
    pub max_frame_bytes: usize,
    pub send_queue_bytes_max: usize,
    pub close_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub read_budget_bytes: usize,
    pub recv_buffers: u16,
    pub recv_buffer_bytes: usize,
    pub ring_entries: u32,
    pub listen_backlog: i32,
    pub log: String,
    pub metrics_listen: Option<SocketAddr>,
    pub slow_consumer: SlowConsumer,
    /// Zero: off.
    pub slow_consumer_timeout: Duration,
    /// None: derived from RLIMIT_NOFILE at start (see `derive_max_connections`).
    pub max_connections: Option<usize>,
    /// Zero: keepalive off.
    pub keepalive_secs: u32,
    /// Zero: the kernel's default.
    pub user_timeout_ms: u32,
    /// TCP_NOTSENT_LOWAT of every connection; zero: the kernel's default (no limit).
    pub notsent_lowat: u32,
    pub publish_listen: Option<SocketAddr>,
    /// The Redis-protocol listener; None: off.
    pub resp_listen: Option<SocketAddr>,
    /// The WebSocket listener; None: off.
    pub ws_listen: Option<SocketAddr>,
    /// Whether WebSocket clients' messages are published.
    pub ws_publish: bool,
    pub ws_handshake_timeout: Duration,
    /// Zero: no pings.
    pub ws_ping_interval: Duration,
    pub ws_pong_timeout: Duration,
    /// NATS servers of the backbone (`nats://host:port`); empty: off.
    pub nats_urls: Vec<String>,
    pub nats_prefix: String,
    /// The topic line connections publish to and receive.
    pub lines_topic: String,
    pub topic_bytes_max: usize,
    pub subscriptions_max: usize,
    pub patterns_max: usize,
    /// Distinct topics (channels, patterns, shard channels) one worker holds.
    pub topics_max: usize,
    /// RINGFAN_FAULT: a worker made to fail on purpose (tests of the failure path).
    pub fault: Option<Fault>,
    pub driver: DriverChoice,
}

/// RINGFAN_DRIVER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring, or epoll with one warning naming why io_uring was refused.
    Auto,
    IoUring,
    Epoll,
}

/// What happens to a subscriber over its queue limit (or not draining for the timeout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Evicted through the close state machine: what is queued is flushed, then FIN.
    Disconnect,
    /// Kept; new messages for it are dropped (and counted) while it is over.
    Drop,
}

/// File descriptors kept free for everything but client connections: rings, eventfds,
/// listeners, the spare fd, metrics, stdio, plus slack.
pub fn fd_headroom(threads: usize) -> usize {
    64 + 8 * threads
}

/// The default connection limit for an fd limit of `nofile`.
pub fn derive_max_connections(nofile: u64, threads: usize) -> usize {
    (nofile as usize)
        .saturating_sub(fd_headroom(threads))
        .max(1)
}

/// How a worker made to fail by RINGFAN_FAULT fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Panic,
    Error,
}

/// RINGFAN_FAULT=KIND:WORKER:AFTER_MS: worker `worker` fails `after` its start. For tests of the
/// failure path only: a failing worker must end the process promptly, never hang it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub worker: usize,
    pub after: Duration,
}

impl Fault {
    fn parse(v: &str) -> Option<Fault> {
        let mut parts = v.trim().split(':');
        let kind = match parts.next()? {
            "panic" => FaultKind::Panic,
            "error" => FaultKind::Error,
            _ => return None,
        };
        let worker = parts.next()?.parse().ok()?;
        let after = Duration::from_millis(parts.next()?.parse().ok()?);
        parts.next().is_none().then_some(Fault {
            kind,
            worker,
            after,
        })
    }
}

/// A variable's value was not acceptable. `Display` names the variable, the value and what is
/// accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub accepted: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.var, self.value, self.accepted
        )
    }
}

impl std::error::Error for ConfigError {}

/// One `RINGFAN_*` variable: the single source of its parsing, default, accepted values,
/// `--help` row and README row.
pub struct Var {
    pub name: &'static str,
    /// How the value is parsed, what is accepted, the default, and which field it sets.
    kind: Kind,
    /// One line for `--help` and the README.
    pub help: &'static str,
    /// More for the README only (may use Markdown); empty for none.
    details: &'static str,
}

/// The unit of an integer variable, named in its accepted values.
#[derive(Clone, Copy)]
enum Unit {
    Count,
    Millis,
    Secs,
}

/// An integer variable's default.
#[derive(Clone, Copy)]
enum IntDefault {
    Is(u64),
    /// The number of cores available to the process.
    Cores,
    /// Unset: derived at start; the field keeps `None` (described by the text).
    Derived(&'static str),
}

/// How a variable is parsed. Each kind carries its typed default and a setter of its `Config`
/// field, so a variable is one row of [`VARS`] and nothing else.
enum Kind {
    /// An integer from `min` to `max` (`zero`: what 0 means; `note`: said after the range).
    Int {
        default: IntDefault,
        min: u64,
        max: u64,
        unit: Unit,
        zero: Option<&'static str>,
        note: &'static str,
        set: fn(&mut Config, u64),
    },
    /// A power of two from `min` to `max`.
    PowerOfTwo {
        default: u64,
        min: u64,
        max: u64,
        set: fn(&mut Config, u64),
    },
    /// A byte count from `min` to `max`, with an optional KiB/MiB/GiB suffix.
    Bytes {
        default: usize,
        min: usize,
        max: usize,
        set: fn(&mut Config, usize),
    },
    Flag {
        default: bool,
        set: fn(&mut Config, bool),
    },
    /// A required address; `default` parses.
    Addr {
        default: &'static str,
        set: fn(&mut Config, SocketAddr),
    },
    /// An address, or unset/empty for off.
    OptionalAddr {
        set: fn(&mut Config, Option<SocketAddr>),
    },
    /// One of `names` (the first is the default); `set` takes the trimmed value and returns
    /// false for a value it does not know (it may also accept aliases).
    Choice {
        names: &'static [&'static str],
        set: fn(&mut Config, &str) -> bool,
    },
    /// A tracing filter.
    LogFilter { default: &'static str },
    /// A [`Fault`], or off.
    Fault,
    /// A comma-separated list of `nats://host:port`, or empty for off.
    NatsUrls,
    /// A topic name: 1 to 1024 printable ASCII bytes without spaces.
    Topic {
        default: &'static str,
        set: fn(&mut Config, String),
    },
}

const HOST_PORT: &str = "host:port, e.g. 127.0.0.1:7000, 0.0.0.0:7000 or [::1]:7000";
const HOST_PORT_OR_OFF: &str = "host:port, e.g. 127.0.0.1:7001, or empty for off";
const FLAG_VALUES: &str = "0 or 1 (also true/false, yes/no, on/off)";
const LOG_VALUES: &str =
    "a level (error, warn, info, debug, trace) or a tracing filter like ringfan=debug";
const FAULT_VALUES: &str =
    "off or KIND:WORKER:AFTER_MS with KIND panic or error (e.g. panic:1:200)";
const MS_MAX: u64 = 86_400_000;
const TOPIC_VALUES: &str = "1 to 1024 printable ASCII characters without spaces, e.g. lines";
const NATS_URL_VALUES: &str =
    "comma-separated nats://host:port, e.g. nats://127.0.0.1:4222,nats://127.0.0.1:4223, or empty for off";

#[rustfmt::skip] // One row per variable reads better than rustfmt's vertical layout.
pub const VARS: &[Var] = &[
    Var { name: "RINGFAN_LISTEN",
        kind: Kind::Addr { default: "127.0.0.1:7000", set: |c, v| c.listen = v },
        help: "address:port to accept connections on (port 0 picks a free port)",
        details: "The chosen address is printed on stdout as `ringfan listening on ADDR`." },
    Var { name: "RINGFAN_THREADS",
        kind: Kind::Int { default: IntDefault::Cores, min: 1, max: 1024, unit: Unit::Count, zero: None, note: "",
            set: |c, v| c.threads = v as usize },
        help: "worker threads, one io_uring each", details: "" },
    Var { name: "RINGFAN_PIN",
        kind: Kind::Flag { default: true, set: |c, v| c.pin = v },
        help: "pin each worker to its own core (0 or 1)", details: "" },
    Var { name: "RINGFAN_ECHO",
        kind: Kind::Flag { default: false, set: |c, v| c.echo = v },
        help: "deliver a publisher's lines to itself too (0 or 1; chat-style clients set 1)",
        details: "Off by default: with echo on, a client that only publishes and never reads fills its own queue with its own lines and is evicted as a slow consumer." },
    Var { name: "RINGFAN_MAX_FRAME_BYTES",
        kind: Kind::Bytes { default: 65536, min: 2, max: 1 << 30, set: |c, v| c.max_frame_bytes = v },
        help: "longest accepted line, newline included; longer is a protocol error", details: "" },
    Var { name: "RINGFAN_SEND_QUEUE_BYTES_MAX",
        kind: Kind::Bytes { default: 4 << 20, min: 1, max: 1 << 40, set: |c, v| c.send_queue_bytes_max = v },
        help: "bytes queued for one subscriber before it is evicted as too slow",
        details: "An evicted subscriber gets what was queued, then FIN (see `RINGFAN_SLOW_CONSUMER`)." },
    Var { name: "RINGFAN_CLOSE_TIMEOUT_MS",
        kind: Kind::Int { default: IntDefault::Is(5000), min: 1, max: MS_MAX, unit: Unit::Millis, zero: None, note: "",
            set: |c, v| c.close_timeout = Duration::from_millis(v) },
        help: "time a closing connection gets to flush and send its FIN before an abortive close (RST)", details: "" },
    Var { name: "RINGFAN_SHUTDOWN_TIMEOUT_MS",
        kind: Kind::Int { default: IntDefault::Is(10_000), min: 1, max: MS_MAX, unit: Unit::Millis, zero: None, note: "",
            set: |c, v| c.shutdown_timeout = Duration::from_millis(v) },
        help: "on SIGINT/SIGTERM, time to close every connection gracefully; the rest are reset",
        details: "Those are counted in the log and in `ringfan_shutdown_aborted_total`." },
    Var { name: "RINGFAN_READ_BUDGET_BYTES",
        kind: Kind::Bytes { default: 65536, min: 1, max: 1 << 30, set: |c, v| c.read_budget_bytes = v },
        help: "input taken from one connection per loop turn (fairness under a flooding publisher)", details: "" },
    Var { name: "RINGFAN_RECV_BUFFERS",
        kind: Kind::PowerOfTwo { default: 1024, min: 2, max: 32768, set: |c, v| c.recv_buffers = v as u16 },
        help: "provided receive buffers per worker (power of two, at most 32768)", details: "" },
    Var { name: "RINGFAN_RECV_BUFFER_BYTES",
        kind: Kind::Bytes { default: 16384, min: 64, max: 1 << 20, set: |c, v| c.recv_buffer_bytes = v },
        help: "size of each provided receive buffer", details: "" },
    Var { name: "RINGFAN_RING_ENTRIES",
        kind: Kind::Int { default: IntDefault::Is(4096), min: 8, max: RING_ENTRIES_MAX as u64, unit: Unit::Count, zero: None,
            note: "the completion queue is 4x that, at most the kernel's 65536",
            set: |c, v| c.ring_entries = v as u32 },
        help: "io_uring submission queue entries per worker (completion queue: 4x)", details: "" },
    Var { name: "RINGFAN_LISTEN_BACKLOG",
        kind: Kind::Int { default: IntDefault::Is(4096), min: 1, max: 65535, unit: Unit::Count, zero: None, note: "",
            set: |c, v| c.listen_backlog = v as i32 },
        help: "listen(2) backlog of each worker's listener", details: "" },
    Var { name: "RINGFAN_SLOW_CONSUMER",
        kind: Kind::Choice { names: &["disconnect", "drop"],
            set: |c, v| SlowConsumer::parse(v).map(|s| c.slow_consumer = s).is_some() },
        help: "subscriber over its queue limit: disconnect (evict, flush, FIN) or drop (keep it, drop its new messages)",
        details: "An evicted subscriber's queue is flushed within `RINGFAN_CLOSE_TIMEOUT_MS`; dropped messages are whole lines, counted in `ringfan_messages_dropped_total`." },
    Var { name: "RINGFAN_SLOW_CONSUMER_TIMEOUT_MS",
        kind: Kind::Int { default: IntDefault::Is(10_000), min: 0, max: MS_MAX, unit: Unit::Millis, zero: Some("off"), note: "",
            set: |c, v| c.slow_consumer_timeout = Duration::from_millis(v) },
        help: "a subscriber whose queue has not drained for this long is slow even under the byte limit (0: off)", details: "" },
    Var { name: "RINGFAN_MAX_CONNECTIONS",
        kind: Kind::Int { default: IntDefault::Derived("open-file limit - headroom"), min: 1, max: 100_000_000, unit: Unit::Count,
            zero: None, note: "", set: |c, v| c.max_connections = Some(v as usize) },
        help: "connections over this are sent -ERR server full and closed at once",
        details: "The headroom is 64 + 8 × threads file descriptors. A refused connection gets a FIN at once, never waits in the backlog." },
    Var { name: "RINGFAN_KEEPALIVE_SECS",
        kind: Kind::Int { default: IntDefault::Is(60), min: 0, max: 86_400, unit: Unit::Secs, zero: Some("off"), note: "",
            set: |c, v| c.keepalive_secs = v as u32 },
        help: "TCP keepalive idle time, so a peer that vanished is found (0: off)",
        details: "Probes follow every 1/6 of it, 6 of them, so a peer gone without FIN or RST is also found." },
    Var { name: "RINGFAN_USER_TIMEOUT_MS",
        kind: Kind::Int { default: IntDefault::Is(30_000), min: 0, max: MS_MAX, unit: Unit::Millis, zero: Some("kernel default"),
            note: "", set: |c, v| c.user_timeout_ms = v as u32 },
        help: "TCP_USER_TIMEOUT: unacknowledged data older than this resets the connection (0: kernel default)",
        details: "A zero window held this long resets it too." },
    Var { name: "RINGFAN_NOTSENT_LOWAT",
        kind: Kind::Bytes { default: 128 << 10, min: 0, max: 1 << 30, set: |c, v| c.notsent_lowat = v as u32 },
        help: "TCP_NOTSENT_LOWAT: unsent bytes the kernel holds per connection; the rest waits in ringfan's queue, shared by all subscribers (0: kernel default)",
        details: "What waits in ringfan's queue counts toward `RINGFAN_SEND_QUEUE_BYTES_MAX`; the kernel default is no limit." },
    Var { name: "RINGFAN_PUBLISH_LISTEN",
        kind: Kind::OptionalAddr { set: |c, v| c.publish_listen = v },
        help: "if set, only connections accepted on this address:port may publish; lines from RINGFAN_LISTEN are discarded",
        details: "The address is printed as `ringfan publishers on ADDR`; input from `RINGFAN_LISTEN` connections is read and discarded at once, counted, never buffered." },
    Var { name: "RINGFAN_RESP_LISTEN",
        kind: Kind::OptionalAddr { set: |c, v| c.resp_listen = v },
        help: "address:port of the Redis-protocol (RESP2) listener: SUBSCRIBE, PSUBSCRIBE, PUBLISH, ... (e.g. 127.0.0.1:6379); unset or empty: off",
        details: "Printed as `ringfan resp on ADDR`. Every Redis client works unchanged; see \"Redis protocol\"." },
    Var { name: "RINGFAN_WS_LISTEN",
        kind: Kind::OptionalAddr { set: |c, v| c.ws_listen = v },
        help: "address:port of the WebSocket listener: a client upgrading on /<topic> subscribes to it (/ is the lines topic); unset or empty: off",
        details: "Printed as `ringfan websocket on ADDR`; see \"WebSocket\"." },
    Var { name: "RINGFAN_WS_PUBLISH",
        kind: Kind::Flag { default: false, set: |c, v| c.ws_publish = v },
        help: "publish what WebSocket clients send to their topic (0: subscribe only; a data frame is closed with 1008)", details: "" },
    Var { name: "RINGFAN_WS_HANDSHAKE_TIMEOUT_MS",
        kind: Kind::Int { default: IntDefault::Is(5000), min: 1, max: MS_MAX, unit: Unit::Millis, zero: None, note: "",
            set: |c, v| c.ws_handshake_timeout = Duration::from_millis(v) },
        help: "time a WebSocket client gets to send its whole upgrade request (then 408 and FIN)", details: "" },
    Var { name: "RINGFAN_WS_PING_INTERVAL_MS",
        kind: Kind::Int { default: IntDefault::Is(30_000), min: 0, max: MS_MAX, unit: Unit::Millis, zero: Some("off"), note: "",
            set: |c, v| c.ws_ping_interval = Duration::from_millis(v) },
        help: "the server pings each WebSocket client this often to learn it is alive (0: off)", details: "" },
    Var { name: "RINGFAN_WS_PONG_TIMEOUT_MS",
        kind: Kind::Int { default: IntDefault::Is(10_000), min: 1, max: MS_MAX, unit: Unit::Millis, zero: None, note: "",
            set: |c, v| c.ws_pong_timeout = Duration::from_millis(v) },
        help: "a WebSocket client that does not answer a ping within this is reset", details: "" },
    Var { name: "RINGFAN_NATS_URL",
        kind: Kind::NatsUrls,
        help: "comma-separated nats://host:port list: share topics with other nodes through NATS (unset or empty: off)",
        details: "See \"Several nodes: the NATS backbone\"." },
    Var { name: "RINGFAN_NATS_PREFIX",
        kind: Kind::Topic { default: "ringfan", set: |c, v| c.nats_prefix = v },
        help: "first token of the NATS subjects: <prefix>.<topic> (shard channels: <prefix>_shard.<topic>)", details: "" },
    Var { name: "RINGFAN_LINES_TOPIC",
        kind: Kind::Topic { default: "lines", set: |c, v| c.lines_topic = v },
        help: "the channel line connections publish to and receive",
        details: "A Redis client subscribed to it receives each line without its `\\n`; `PUBLISH` on it reaches line clients as one line (a message containing `\\n` is not sent to line clients: it would arrive as two lines; counted in `ringfan_line_frames_skipped_total`)." },
    Var { name: "RINGFAN_TOPIC_BYTES_MAX",
        kind: Kind::Bytes { default: 1024, min: 1, max: 1 << 20, set: |c, v| c.topic_bytes_max = v },
        help: "longest channel or pattern name a client may subscribe to", details: "" },
    Var { name: "RINGFAN_SUBSCRIPTIONS_MAX",
        kind: Kind::Int { default: IntDefault::Is(10_000), min: 1, max: 100_000_000, unit: Unit::Count, zero: None, note: "",
            set: |c, v| c.subscriptions_max = v as usize },
        help: "channels (and shard channels) one connection may subscribe to", details: "" },
    Var { name: "RINGFAN_PATTERNS_MAX",
        kind: Kind::Int { default: IntDefault::Is(100), min: 0, max: 1_000_000, unit: Unit::Count, zero: Some("no patterns"), note: "",
            set: |c, v| c.patterns_max = v as usize },
        help: "patterns one connection may subscribe to (each published message is matched against every distinct pattern)", details: "" },
    Var { name: "RINGFAN_TOPICS_MAX",
        kind: Kind::Int { default: IntDefault::Is(1_000_000), min: 1, max: 100_000_000, unit: Unit::Count, zero: None, note: "",
            set: |c, v| c.topics_max = v as usize },
        help: "distinct channels, patterns and shard channels with subscribers on one worker",
        details: "A subscribe past it is refused with an error reply naming this variable, before anything changes." },
    Var { name: "RINGFAN_DRIVER",
        kind: Kind::Choice { names: &["auto", "io_uring", "epoll"],
            set: |c, v| DriverChoice::parse(v).map(|d| c.driver = d).is_some() },
        help: "auto (io_uring, else epoll with a warning saying why), io_uring (fail without it) or epoll",
        details: "With `io_uring`, the server exits with status 3 where io_uring cannot be used." },
    Var { name: "RINGFAN_METRICS_LISTEN",
        kind: Kind::OptionalAddr { set: |c, v| c.metrics_listen = v },
        help: "address:port serving Prometheus metrics at /metrics (e.g. 127.0.0.1:9100); unset or empty: off",
        details: "Port 0 picks a free port, printed as `ringfan metrics on URL`." },
    Var { name: "RINGFAN_FAULT",
        kind: Kind::Fault,
        help: "testing only: KIND:WORKER:AFTER_MS makes worker WORKER fail AFTER_MS after start (KIND panic or error)",
        details: "" },
    Var { name: "RINGFAN_LOG",
        kind: Kind::LogFilter { default: "info" },
        help: "log filter: error, warn, info, debug, trace (tracing EnvFilter syntax)", details: "" },
];

impl SlowConsumer {
    fn parse(v: &str) -> Option<SlowConsumer> {
        match v {
            "disconnect" => Some(SlowConsumer::Disconnect),
            "drop" => Some(SlowConsumer::Drop),
            _ => None,
        }
    }
}

impl DriverChoice {
    fn parse(v: &str) -> Option<DriverChoice> {
        match v {
            "auto" => Some(DriverChoice::Auto),
            "io_uring" | "io-uring" | "uring" => Some(DriverChoice::IoUring),
            "epoll" => Some(DriverChoice::Epoll),
            _ => None,
        }
    }
}

impl Var {
    /// The default as `--help` shows it.
    pub fn default_text(&self) -> String {
        match self.kind {
            Kind::Int { default, .. } => match default {
                IntDefault::Is(n) => n.to_string(),
                IntDefault::Cores => "available cores".into(),
                IntDefault::Derived(text) => text.into(),
            },
            Kind::PowerOfTwo { default, .. } => default.to_string(),
            Kind::Bytes { default, .. } => default.to_string(),
            Kind::Flag { default, .. } => u8::from(default).to_string(),
            Kind::Addr { default, .. } => default.into(),
            Kind::OptionalAddr { .. } | Kind::Fault => "off".into(),
            Kind::Choice { names, .. } => names[0].into(),
            Kind::LogFilter { default } | Kind::Topic { default, .. } => default.into(),
            Kind::NatsUrls => "off".into(),
        }
    }

    /// Whether the default is a literal value (shown as code in the README), not a description.
    fn default_is_literal(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Int {
                default: IntDefault::Cores | IntDefault::Derived(_),
                ..
            } | Kind::OptionalAddr { .. }
                | Kind::Fault
                | Kind::NatsUrls
        )
    }

    /// What is accepted, as an invalid value's error says it.
    pub fn accepted(&self) -> String {
        match self.kind {
            Kind::Int {
                min,
                max,
                unit,
                zero,
                note,
                ..
            } => {
                let unit = match unit {
                    Unit::Count => None,
                    Unit::Millis => Some("milliseconds".to_string()),
                    Unit::Secs => Some("seconds".to_string()),
                };
                let zero = zero.map(|z| format!("0: {z}"));
                let note = (!note.is_empty()).then(|| note.to_string());
                let said: Vec<String> = [unit, zero, note].into_iter().flatten().collect();
                match said.is_empty() {
                    true => format!("an integer from {min} to {max}"),
                    false => format!("an integer from {min} to {max} ({})", said.join(", ")),
                }
            }
            Kind::PowerOfTwo { min, max, .. } => format!("a power of two from {min} to {max}"),
            Kind::Bytes { min, max, .. } => {
                format!("a byte count from {min} to {max} (e.g. 65536, 64KiB, 4MiB)")
            }
            Kind::Flag { .. } => FLAG_VALUES.into(),
            Kind::Addr { .. } => HOST_PORT.into(),
            Kind::OptionalAddr { .. } => HOST_PORT_OR_OFF.into(),
            Kind::Choice { names, .. } => match names.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            },
            Kind::LogFilter { .. } => LOG_VALUES.into(),
            Kind::Fault => FAULT_VALUES.into(),
            Kind::Topic { .. } => TOPIC_VALUES.into(),
            Kind::NatsUrls => NATS_URL_VALUES.into(),
        }
    }

    fn error(&self, value: &str, accepted: String) -> ConfigError {
        ConfigError {
            var: self.name,
            value: value.into(),
            accepted,
        }
    }

    /// Sets this variable's field of `c` from `value`, or from the default when unset.
    fn apply(&self, c: &mut Config, value: Option<&str>) -> Result<(), ConfigError> {
        match self.kind {
            Kind::Int { default, set, .. } => {
                let n = match (value, default) {
                    (Some(v), _) => self.int(v)?,
                    (None, IntDefault::Is(n)) => n,
                    (None, IntDefault::Cores) => {
                        std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
                    }
                    (None, IntDefault::Derived(_)) => return Ok(()),
                };
                set(c, n);
            }
            Kind::PowerOfTwo { default, set, .. } => {
                set(c, value.map_or(Ok(default), |v| self.power_of_two(v))?)
            }
            Kind::Bytes { default, set, .. } => {
                set(c, value.map_or(Ok(default), |v| self.bytes(v))?)
            }
            Kind::Flag { default, set } => set(c, value.map_or(Ok(default), |v| self.flag(v))?),
            Kind::Addr { default, set } => {
                set(c, self.addr(value.unwrap_or(default))?);
            }
            Kind::OptionalAddr { set } => set(c, self.optional_addr(value)?),
            Kind::Choice { names, set } => {
                let v = value.map_or(names[0], str::trim);
                if !set(c, v) {
                    return Err(self.error(v, self.accepted()));
                }
            }
            Kind::LogFilter { default } => c.log = self.log_filter(value.unwrap_or(default))?,
            Kind::Fault => c.fault = self.fault(value)?,
            Kind::Topic { default, set } => set(c, self.topic(value.unwrap_or(default))?),
            Kind::NatsUrls => c.nats_urls = self.nats_urls(value.unwrap_or(""))?,
        }
        Ok(())
    }
}

/// The parsers, one per [`Kind`]; each error names the variable, the value and `accepted()`.
impl Var {
    fn nats_urls(&self, v: &str) -> Result<Vec<String>, ConfigError> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(Vec::new());
        }
        v.split(',')
            .map(|u| {
                let u = u.trim();
                let hostport = u.strip_prefix("nats://").unwrap_or("");
                let ok = hostport
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                ok.then(|| u.to_string())
                    .ok_or_else(|| self.error(v, self.accepted()))
            })
            .collect()
    }

    fn topic(&self, v: &str) -> Result<String, ConfigError> {
        let ok = (1..=1024).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic());
        match ok {
            true => Ok(v.to_string()),
            false => Err(self.error(v, self.accepted())),
        }
    }

    fn int(&self, v: &str) -> Result<u64, ConfigError> {
        let (min, max) = match self.kind {
            Kind::Int { min, max, .. } | Kind::PowerOfTwo { min, max, .. } => (min, max),
            _ => unreachable!("{} is not an integer variable", self.name),
        };
        v.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| match self.kind {
                // Out of range or not a number says "integer"; a number that is no power of
                // two gets `accepted()`.
                Kind::PowerOfTwo { .. } => {
                    self.error(v, format!("an integer from {min} to {max}, a power of two"))
                }
                _ => self.error(v, self.accepted()),
            })
    }

    fn power_of_two(&self, v: &str) -> Result<u64, ConfigError> {
        let n = self.int(v)?;
        match n.is_power_of_two() {
            true => Ok(n),
            false => Err(self.error(v, self.accepted())),
        }
    }

    fn bytes(&self, v: &str) -> Result<usize, ConfigError> {
        let Kind::Bytes { min, max, .. } = self.kind else {
            unreachable!("{} is not a byte-count variable", self.name)
        };
        parse_bytes(v)
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.error(v, self.accepted()))
    }

    fn flag(&self, v: &str) -> Result<bool, ConfigError> {
        match v.trim() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            v => Err(self.error(v, self.accepted())),
        }
    }

    fn addr(&self, v: &str) -> Result<SocketAddr, ConfigError> {
        v.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| self.error(v, self.accepted()))
    }

    fn optional_addr(&self, v: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
        match v.map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => self.addr(v).map(Some),
        }
    }

    fn log_filter(&self, v: &str) -> Result<String, ConfigError> {
        match tracing_subscriber::EnvFilter::try_new(v) {
            Ok(_) => Ok(v.to_string()),
            Err(_) => Err(self.error(v, self.accepted())),
        }
    }

    fn fault(&self, v: Option<&str>) -> Result<Option<Fault>, ConfigError> {
        match v {
            None | Some("") | Some("off") => Ok(None),
            Some(v) => Fault::parse(v)
                .map(Some)
                .ok_or_else(|| self.error(v, self.accepted())),
        }
    }
}

/// The `--help` text.
pub fn help() -> String {
    let mut s = String::from(
        "ringfan: a TCP broadcast server. Every line (bytes up to and including \\n) any client\n\
         sends is delivered to every connected client.\n\n\
         Usage: ringfan [--help | --check]\n  \
         --help   this text\n  \
         --check  probe io_uring and exit 0 if the server can run here\n\n\
         Configuration (environment variables; sizes accept a KiB/MiB/GiB suffix):\n",
    );
    // Column widths come from the longest entries, so a longer name or default added to VARS
    // cannot push its description out of line.
    let name_width = VARS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    let defaults: Vec<String> = VARS.iter().map(Var::default_text).collect();
    let default_width = defaults.iter().map(String::len).max().unwrap_or(0);
    for (v, default) in VARS.iter().zip(&defaults) {
        s.push_str(&format!(
            "  {:<name_width$}  default {:<default_width$}  {}\n",
            v.name, default, v.help
        ));
    }
    s
}

/// The README's configuration table (between its `<!-- config-table -->` markers).
pub fn markdown_table() -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut s = String::from("| variable | default | accepted | meaning |\n|---|---|---|---|\n");
    for v in VARS {
        let default = match v.default_is_literal() {
            true => format!("`{}`", v.default_text()),
            false => v.default_text(),
        };
        let accepted = match v.kind {
            // The suffix is said once, above the table.
            Kind::Bytes { min, max, .. } => format!("a byte count from {min} to {max}"),
            _ => v.accepted(),
        };
        let meaning = match v.details {
            "" => v.help.to_string(),
            more => format!("{}. {more}", v.help),
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            v.name,
            cell(&default),
            cell(&accepted),
            cell(&meaning)
        ));
    }
    s
}

/// Names of set `RINGFAN_*` variables that ringfan does not know (likely typos).
pub fn unknown_vars(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("RINGFAN_") && !VARS.iter().any(|v| v.name == k.as_str()))
        .cloned()
        .collect()
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_vars(&std::env::vars().collect::<Vec<_>>())
    }

    /// Every variable of [`VARS`] in turn, set or defaulted; the first invalid one is the error.
    pub fn from_vars(env: &[(String, String)]) -> Result<Config, ConfigError> {
        // The last assignment wins, as in a shell.
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut c = Config::unset();
        for v in VARS {
            v.apply(&mut c, get(v.name))?;
        }
        Ok(c)
    }

    /// A `Config` before [`VARS`] is applied: every field is overwritten by its variable's value
    /// or default, except `max_connections`, which stays `None` (derived at start) when unset.
    fn unset() -> Config {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            threads: 0,
            pin: false,
            echo: false,
            max_frame_bytes: 0,
            send_queue_bytes_max: 0,
            close_timeout: Duration::ZERO,
            shutdown_timeout: Duration::ZERO,
            read_budget_bytes: 0,
            recv_buffers: 0,
            recv_buffer_bytes: 0,
            ring_entries: 0,
            listen_backlog: 0,
            log: String::new(),
            metrics_listen: None,
            slow_consumer: SlowConsumer::Disconnect,
            slow_consumer_timeout: Duration::ZERO,
            max_connections: None,
            keepalive_secs: 0,
            user_timeout_ms: 0,
            notsent_lowat: 0,
            publish_listen: None,
            resp_listen: None,
            ws_listen: None,
            ws_publish: false,
            ws_handshake_timeout: Duration::ZERO,
            ws_ping_interval: Duration::ZERO,
            ws_pong_timeout: Duration::ZERO,
            nats_urls: Vec::new(),
            nats_prefix: String::new(),
            lines_topic: String::new(),
            topic_bytes_max: 0,
            subscriptions_max: 0,
            patterns_max: 0,
            topics_max: 0,
            fault: None,
            driver: DriverChoice::Auto,
        }
    }
}

/// Completion entries per submission entry: multishot operations post many completions per
/// submission, and an overflowing completion queue ends them.
const CQ_ENTRIES_PER_SQ_ENTRY: u32 = 4;
/// The kernel takes at most 65536 completion entries (IORING_MAX_CQ_ENTRIES); beyond, its EINVAL
/// would read as a kernel without io_uring.
const RING_ENTRIES_MAX: u32 = 65536 / CQ_ENTRIES_PER_SQ_ENTRY;

impl Config {
    /// Completion queue entries of each worker's ring.
    pub fn cq_entries(&self) -> u32 {
        self.ring_entries * CQ_ENTRIES_PER_SQ_ENTRY
    }

    /// Input decoded per loop turn across all connections of a worker, and the backlog allowed
    /// in a worker's inbox. An eighth of the queue limit each, so a subscriber that drains its
    /// queue (local input + inbox, which may overshoot its cap by one turn's input) stays well
    /// under `send_queue_bytes_max` however fast publishers send: only a subscriber that really
    /// falls behind is evicted.
    pub fn turn_input_bytes_max(&self) -> usize {
        (self.send_queue_bytes_max / 8).max(1)
    }

    /// A subscriber queue over this, still draining, stalls input (flow control).
    pub fn lagging_bytes(&self) -> usize {
        self.send_queue_bytes_max / 4
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "listen={} threads={} pin={} echo={} max_frame_bytes={} send_queue_bytes_max={} \
             close_timeout_ms={} shutdown_timeout_ms={} read_budget_bytes={} recv_buffers={} \
             recv_buffer_bytes={} ring_entries={} listen_backlog={} slow_consumer={:?} \
             slow_consumer_timeout_ms={} max_connections={} keepalive_secs={} user_timeout_ms={} \
             notsent_lowat={} publish_listen={} resp_listen={} ws_listen={} ws_publish={} \
             ws_handshake_timeout_ms={} ws_ping_interval_ms={} ws_pong_timeout_ms={} nats_urls={} nats_prefix={} lines_topic={} topic_bytes_max={} \
             subscriptions_max={} patterns_max={} topics_max={} metrics_listen={} driver={:?}",
            self.listen,
            self.threads,
            self.pin,
            self.echo,
            self.max_frame_bytes,
            self.send_queue_bytes_max,
            self.close_timeout.as_millis(),
            self.shutdown_timeout.as_millis(),
            self.read_budget_bytes,
            self.recv_buffers,
            self.recv_buffer_bytes,
            self.ring_entries,
            self.listen_backlog,
            self.slow_consumer,
            self.slow_consumer_timeout.as_millis(),
            self.max_connections
                .map_or("derived".to_string(), |n| n.to_string()),
            self.keepalive_secs,
            self.user_timeout_ms,
            self.notsent_lowat,
            self.publish_listen
                .map_or("off".to_string(), |a| a.to_string()),
            self.resp_listen
                .map_or("off".to_string(), |a| a.to_string()),
            self.ws_listen.map_or("off".to_string(), |a| a.to_string()),
            self.ws_publish,
            self.ws_handshake_timeout.as_millis(),
            self.ws_ping_interval.as_millis(),
            self.ws_pong_timeout.as_millis(),
            if self.nats_urls.is_empty() { "off".to_string() } else { self.nats_urls.join(",") },
            self.nats_prefix,
            self.lines_topic,
            self.topic_bytes_max,
            self.subscriptions_max,
            self.patterns_max,
            self.topics_max,
            self.metrics_listen
                .map_or("off".to_string(), |a| a.to_string()),
            self.driver
        )
    }
}

/// "65536", "64KiB", "64k", "4MiB", "4M", "1GiB" (binary multiples).
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: usize = digits.parse().ok()?;
    let mult: usize = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
        assert!(c.threads >= 1);
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.send_queue_bytes_max, 4 << 20);
        assert_eq!(c.close_timeout, Duration::from_secs(5));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert!(!c.echo && c.pin);
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_bytes("64KiB"), Some(65536));
        assert_eq!(parse_bytes("4M"), Some(4 << 20));
        assert_eq!(parse_bytes(" 12 "), Some(12));
        assert_eq!(parse_bytes("12 kb"), Some(12 << 10));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes("-5"), None);
        assert_eq!(parse_bytes("99999999999999999999G"), None);
    }

    #[test]
    fn errors_name_variable_value_and_accepted() {
        let e = with(&[("RINGFAN_THREADS", "abc")]).unwrap_err();
        assert_eq!(e.var, "RINGFAN_THREADS");
        let msg = e.to_string();
        assert!(
            msg.contains("RINGFAN_THREADS") && msg.contains("abc") && msg.contains("integer"),
            "{msg}"
        );
        assert_eq!(
            with(&[("RINGFAN_THREADS", "0")]).unwrap_err().var,
            "RINGFAN_THREADS"
        );
        assert_eq!(
            with(&[("RINGFAN_ECHO", "maybe")]).unwrap_err().var,
            "RINGFAN_ECHO"
        );
        assert_eq!(
            with(&[("RINGFAN_LISTEN", "nonsense")]).unwrap_err().var,
            "RINGFAN_LISTEN"
        );
        assert_eq!(
            with(&[("RINGFAN_CLOSE_TIMEOUT_MS", "-5")]).unwrap_err().var,
            "RINGFAN_CLOSE_TIMEOUT_MS"
        );
        assert_eq!(
            with(&[("RINGFAN_RECV_BUFFERS", "1000")]).unwrap_err().var,
            "RINGFAN_RECV_BUFFERS"
        );
        assert_eq!(
            with(&[("RINGFAN_MAX_FRAME_BYTES", "1")]).unwrap_err().var,
            "RINGFAN_MAX_FRAME_BYTES"
        );
        assert_eq!(
            with(&[("RINGFAN_LOG", "[")]).unwrap_err().var,
            "RINGFAN_LOG"
        );
    }

    #[test]
    fn overload_and_driver_variables() {
        for (var, bad) in [
            ("RINGFAN_SLOW_CONSUMER", "kick"),
            ("RINGFAN_MAX_CONNECTIONS", "0"),
            ("RINGFAN_PUBLISH_LISTEN", "nowhere"),
            ("RINGFAN_KEEPALIVE_SECS", "x"),
            ("RINGFAN_USER_TIMEOUT_MS", "-1"),
            ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "soon"),
            ("RINGFAN_DRIVER", "kqueue"),
            ("RINGFAN_METRICS_LISTEN", "x"),
        ] {
            let e = with(&[(var, bad)]).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(bad), "{e}");
        }
        let c = with(&[
            ("RINGFAN_SLOW_CONSUMER", "drop"),
            ("RINGFAN_MAX_CONNECTIONS", "100"),
            ("RINGFAN_DRIVER", "epoll"),
        ])
        .unwrap();
        assert_eq!(
            (c.slow_consumer, c.max_connections, c.driver),
            (SlowConsumer::Drop, Some(100), DriverChoice::Epoll)
        );
        let d = with(&[]).unwrap();
        assert_eq!(
            (d.slow_consumer, d.max_connections, d.driver),
            (SlowConsumer::Disconnect, None, DriverChoice::Auto)
        );
        assert_eq!(derive_max_connections(20000, 2), 20000 - 80);
        assert_eq!(derive_max_connections(10, 2), 1);
    }

    /// The whole message of an invalid value, for one bad value of every kind of variable:
    /// the variable, the value as given (trimmed where the parser trims) and what is accepted.
    #[test]
    fn error_messages_name_variable_value_and_accepted_exactly() {
        let cases = [
            ("RINGFAN_LISTEN", "nonsense", "\"nonsense\": expected host:port, e.g. 127.0.0.1:7000, 0.0.0.0:7000 or [::1]:7000"),
            ("RINGFAN_THREADS", "abc", "\"abc\": expected an integer from 1 to 1024"),
            ("RINGFAN_PIN", " maybe ", "\"maybe\": expected 0 or 1 (also true/false, yes/no, on/off)"),
            ("RINGFAN_MAX_FRAME_BYTES", "1", "\"1\": expected a byte count from 2 to 1073741824 (e.g. 65536, 64KiB, 4MiB)"),
            ("RINGFAN_SEND_QUEUE_BYTES_MAX", "lots", "\"lots\": expected a byte count from 1 to 1099511627776 (e.g. 65536, 64KiB, 4MiB)"),
            ("RINGFAN_CLOSE_TIMEOUT_MS", "-5", "\"-5\": expected an integer from 1 to 86400000 (milliseconds)"),
            ("RINGFAN_RECV_BUFFERS", "1", "\"1\": expected an integer from 2 to 32768, a power of two"),
            ("RINGFAN_RECV_BUFFERS", "1000", "\"1000\": expected a power of two from 2 to 32768"),
            ("RINGFAN_RING_ENTRIES", "32768", "\"32768\": expected an integer from 8 to 16384 (the completion queue is 4x that, at most the kernel's 65536)"),
            ("RINGFAN_LISTEN_BACKLOG", "0", "\"0\": expected an integer from 1 to 65535"),
            ("RINGFAN_SLOW_CONSUMER", " kick ", "\"kick\": expected disconnect or drop"),
            ("RINGFAN_SLOW_CONSUMER", "", "\"\": expected disconnect or drop"),
            ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "soon", "\"soon\": expected an integer from 0 to 86400000 (milliseconds, 0: off)"),
            ("RINGFAN_MAX_CONNECTIONS", "0", "\"0\": expected an integer from 1 to 100000000"),
            ("RINGFAN_KEEPALIVE_SECS", "x", "\"x\": expected an integer from 0 to 86400 (seconds, 0: off)"),
            ("RINGFAN_USER_TIMEOUT_MS", "-1", "\"-1\": expected an integer from 0 to 86400000 (milliseconds, 0: kernel default)"),
            ("RINGFAN_NOTSENT_LOWAT", "2GiB", "\"2GiB\": expected a byte count from 0 to 1073741824 (e.g. 65536, 64KiB, 4MiB)"),
            ("RINGFAN_PUBLISH_LISTEN", " nowhere ", "\"nowhere\": expected host:port, e.g. 127.0.0.1:7001, or empty for off"),
            ("RINGFAN_DRIVER", "kqueue", "\"kqueue\": expected auto, io_uring or epoll"),
            ("RINGFAN_METRICS_LISTEN", "x", "\"x\": expected host:port, e.g. 127.0.0.1:7001, or empty for off"),
            ("RINGFAN_FAULT", "panic:1", "\"panic:1\": expected off or KIND:WORKER:AFTER_MS with KIND panic or error (e.g. panic:1:200)"),
            ("RINGFAN_LOG", "[", "\"[\": expected a level (error, warn, info, debug, trace) or a tracing filter like ringfan=debug"),
        ];
        for (var, bad, expected) in cases {
            let e = with(&[(var, bad)]).unwrap_err();
            assert_eq!(e.to_string(), format!("invalid {var}={expected}"));
        }
    }

    /// Every default, as `from_vars` applies it with nothing set.
    #[test]
    fn every_default() {
        let c = with(&[]).unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.threads, cores);
        assert_eq!((c.pin, c.echo), (true, false));
        assert_eq!(
            (c.read_budget_bytes, c.recv_buffers, c.recv_buffer_bytes),
            (65536, 1024, 16384)
        );
        assert_eq!((c.ring_entries, c.listen_backlog), (4096, 4096));
        assert_eq!(c.slow_consumer_timeout, Duration::from_secs(10));
        assert_eq!(
            (c.keepalive_secs, c.user_timeout_ms, c.notsent_lowat),
            (60, 30_000, 131072)
        );
        assert_eq!(
            (c.publish_listen, c.metrics_listen, c.fault),
            (None, None, None)
        );
        assert_eq!(c.log, "info");
        let set = with(&[
            ("RINGFAN_RECV_BUFFERS", "64"),
            ("RINGFAN_NOTSENT_LOWAT", "0"),
            ("RINGFAN_FAULT", "error:0:5"),
            ("RINGFAN_PIN", "off"),
            ("RINGFAN_METRICS_LISTEN", " "),
        ])
        .unwrap();
        assert_eq!(
            (set.recv_buffers, set.notsent_lowat, set.pin),
            (64, 0, false)
        );
        assert_eq!(set.metrics_listen, None);
        assert_eq!(
            set.fault,
            Some(Fault {
                kind: FaultKind::Error,
                worker: 0,
                after: Duration::from_millis(5)
            })
        );
    }

    #[test]
    fn help_lists_every_variable_and_typos_are_found() {
        let h = help();
        for v in VARS {
            assert!(h.contains(v.name), "{} missing from --help", v.name);
        }
        let env = vec![
            ("RINGFAN_THREAD".to_string(), "2".to_string()),
            ("RINGFAN_PIN".into(), "0".into()),
        ];
        assert_eq!(unknown_vars(&env), vec!["RINGFAN_THREAD".to_string()]);
    }
}
