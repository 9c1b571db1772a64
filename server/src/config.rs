//! Configuration from `RINGFAN_*` environment variables.
//!
//! One table ([`VARS`]) drives parsing, `--help` and the typo guard, so a variable cannot be
//! added to one and forgotten in the others.

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

struct Var {
    name: &'static str,
    /// The default as shown by `--help`.
    default: &'static str,
    help: &'static str,
}

const VARS: &[Var] = &[
    Var { name: "RINGFAN_LISTEN", default: "127.0.0.1:7000", help: "address:port to accept connections on (port 0 picks a free port)" },
    Var { name: "RINGFAN_THREADS", default: "available cores", help: "worker threads, one io_uring each" },
    Var { name: "RINGFAN_PIN", default: "1", help: "pin each worker to its own core (0 or 1)" },
    Var { name: "RINGFAN_ECHO", default: "0", help: "deliver a publisher's lines to itself too (0 or 1; chat-style clients set 1)" },
    Var { name: "RINGFAN_MAX_FRAME_BYTES", default: "65536", help: "longest accepted line, newline included; longer is a protocol error" },
    Var { name: "RINGFAN_SEND_QUEUE_BYTES_MAX", default: "4194304", help: "bytes queued for one subscriber before it is evicted as too slow" },
    Var { name: "RINGFAN_CLOSE_TIMEOUT_MS", default: "5000", help: "time a closing connection gets to flush and send its FIN before an abortive close (RST)" },
    Var { name: "RINGFAN_SHUTDOWN_TIMEOUT_MS", default: "10000", help: "on SIGINT/SIGTERM, time to close every connection gracefully; the rest are reset" },
    Var { name: "RINGFAN_READ_BUDGET_BYTES", default: "65536", help: "input taken from one connection per loop turn (fairness under a flooding publisher)" },
    Var { name: "RINGFAN_RECV_BUFFERS", default: "1024", help: "provided receive buffers per worker (power of two, at most 32768)" },
    Var { name: "RINGFAN_RECV_BUFFER_BYTES", default: "16384", help: "size of each provided receive buffer" },
    Var { name: "RINGFAN_RING_ENTRIES", default: "4096", help: "io_uring submission queue entries per worker (completion queue: 4x)" },
    Var { name: "RINGFAN_LISTEN_BACKLOG", default: "4096", help: "listen(2) backlog of each worker's listener" },
    Var { name: "RINGFAN_SLOW_CONSUMER", default: "disconnect", help: "subscriber over its queue limit: disconnect (evict, flush, FIN) or drop (keep it, drop its new messages)" },
    Var { name: "RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", default: "10000", help: "a subscriber whose queue has not drained for this long is slow even under the byte limit (0: off)" },
    Var { name: "RINGFAN_MAX_CONNECTIONS", default: "open-file limit - headroom", help: "connections over this are sent -ERR server full and closed at once" },
    Var { name: "RINGFAN_KEEPALIVE_SECS", default: "60", help: "TCP keepalive idle time, so a peer that vanished is found (0: off)" },
    Var { name: "RINGFAN_USER_TIMEOUT_MS", default: "30000", help: "TCP_USER_TIMEOUT: unacknowledged data older than this resets the connection (0: kernel default)" },
    Var { name: "RINGFAN_NOTSENT_LOWAT", default: "131072", help: "TCP_NOTSENT_LOWAT: unsent bytes the kernel holds per connection; the rest waits in ringfan's queue, shared by all subscribers (0: kernel default)" },
    Var { name: "RINGFAN_PUBLISH_LISTEN", default: "off", help: "if set, only connections accepted on this address:port may publish; lines from RINGFAN_LISTEN are discarded" },
    Var { name: "RINGFAN_DRIVER", default: "auto", help: "auto (io_uring, else epoll with a warning saying why), io_uring (fail without it) or epoll" },
    Var { name: "RINGFAN_METRICS_LISTEN", default: "off", help: "address:port serving Prometheus metrics at /metrics (e.g. 127.0.0.1:9100); unset or empty: off" },
    Var { name: "RINGFAN_FAULT", default: "off", help: "testing only: KIND:WORKER:AFTER_MS makes worker WORKER fail AFTER_MS after start (KIND panic or error)" },
    Var { name: "RINGFAN_LOG", default: "info", help: "log filter: error, warn, info, debug, trace (tracing EnvFilter syntax)" },
];

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
    let default_width = VARS.iter().map(|v| v.default.len()).max().unwrap_or(0);
    for v in VARS {
        s.push_str(&format!(
            "  {:<name_width$}  default {:<default_width$}  {}\n",
            v.name, v.default, v.help
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

    pub fn from_vars(env: &[(String, String)]) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            env.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let size = |name: &'static str,
                    default: usize,
                    min: usize,
                    max: usize|
         -> Result<usize, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => parse_bytes(v)
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| ConfigError {
                        var: name,
                        value: v.into(),
                        accepted: format!(
                            "a byte count from {min} to {max} (e.g. 65536, 64KiB, 4MiB)"
                        ),
                    }),
            }
        };
        let int = |name: &'static str,
                   default: u64,
                   min: u64,
                   max: u64,
                   unit: &str|
         -> Result<u64, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| ConfigError {
                        var: name,
                        value: v.into(),
                        accepted: format!("an integer from {min} to {max}{unit}"),
                    }),
            }
        };
        let flag = |name: &'static str, default: bool| -> Result<bool, ConfigError> {
            match get(name).map(str::trim) {
                None => Ok(default),
                Some("1" | "true" | "yes" | "on") => Ok(true),
                Some("0" | "false" | "no" | "off") => Ok(false),
                Some(v) => Err(ConfigError {
                    var: name,
                    value: v.into(),
                    accepted: "0 or 1 (also true/false, yes/no, on/off)".into(),
                }),
            }
        };
        let listen = match get("RINGFAN_LISTEN") {
            None => "127.0.0.1:7000".parse().expect("default address parses"),
            Some(v) => v
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| ConfigError {
                    var: "RINGFAN_LISTEN",
                    value: v.into(),
                    accepted: "host:port, e.g. 127.0.0.1:7000, 0.0.0.0:7000 or [::1]:7000".into(),
                })?,
        };
        let recv_buffers = int("RINGFAN_RECV_BUFFERS", 1024, 2, 32768, ", a power of two")?;
        if !recv_buffers.is_power_of_two() {
            return Err(ConfigError {
                var: "RINGFAN_RECV_BUFFERS",
                value: get("RINGFAN_RECV_BUFFERS").unwrap_or_default().into(),
                accepted: "a power of two from 2 to 32768".into(),
            });
        }
        let log = get("RINGFAN_LOG").unwrap_or("info").to_string();
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError {
                var: "RINGFAN_LOG",
                value: log,
                accepted: "a level (error, warn, info, debug, trace) or a tracing filter like ringfan=debug".into(),
            });
        }
        let optional_addr = |name: &'static str| -> Result<Option<SocketAddr>, ConfigError> {
            match get(name).map(str::trim) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .map(Some)
                    .ok_or_else(|| ConfigError {
                        var: name,
                        value: v.into(),
                        accepted: "host:port, e.g. 127.0.0.1:7001, or empty for off".into(),
                    }),
            }
        };
        let metrics_listen = optional_addr("RINGFAN_METRICS_LISTEN")?;
        let slow_consumer = match get("RINGFAN_SLOW_CONSUMER").map(str::trim) {
            None | Some("disconnect") => SlowConsumer::Disconnect,
            Some("drop") => SlowConsumer::Drop,
            Some(v) => {
                return Err(ConfigError {
                    var: "RINGFAN_SLOW_CONSUMER",
                    value: v.into(),
                    accepted: "disconnect or drop".into(),
                })
            }
        };
        let driver = match get("RINGFAN_DRIVER").map(str::trim) {
            None | Some("auto") => DriverChoice::Auto,
            Some("io_uring" | "io-uring" | "uring") => DriverChoice::IoUring,
            Some("epoll") => DriverChoice::Epoll,
            Some(v) => {
                return Err(ConfigError {
                    var: "RINGFAN_DRIVER",
                    value: v.into(),
                    accepted: "auto, io_uring or epoll".into(),
                })
            }
        };
        let max_connections = match get("RINGFAN_MAX_CONNECTIONS") {
            None => None,
            Some(_) => Some(int("RINGFAN_MAX_CONNECTIONS", 0, 1, 100_000_000, "")? as usize),
        };
        Ok(Config {
            listen,
            metrics_listen,
            slow_consumer,
            slow_consumer_timeout: Duration::from_millis(int(
                "RINGFAN_SLOW_CONSUMER_TIMEOUT_MS",
                10_000,
                0,
                86_400_000,
                " (milliseconds, 0: off)",
            )?),
            max_connections,
            keepalive_secs: int(
                "RINGFAN_KEEPALIVE_SECS",
                60,
                0,
                86_400,
                " (seconds, 0: off)",
            )? as u32,
            user_timeout_ms: int(
                "RINGFAN_USER_TIMEOUT_MS",
                30_000,
                0,
                86_400_000,
                " (milliseconds, 0: kernel default)",
            )? as u32,
            notsent_lowat: size("RINGFAN_NOTSENT_LOWAT", 128 << 10, 0, 1 << 30)? as u32,
            publish_listen: optional_addr("RINGFAN_PUBLISH_LISTEN")?,
            fault: match get("RINGFAN_FAULT") {
                None | Some("") | Some("off") => None,
                Some(v) => Some(Fault::parse(v).ok_or_else(|| ConfigError {
                    var: "RINGFAN_FAULT",
                    value: v.into(),
                    accepted: "off or KIND:WORKER:AFTER_MS with KIND panic or error (e.g. panic:1:200)"
                        .into(),
                })?),
            },
            driver,
            threads: int("RINGFAN_THREADS", cores as u64, 1, 1024, "")? as usize,
            pin: flag("RINGFAN_PIN", true)?,
            // Off by default: with echo, a client that only publishes and never reads fills its
            // own queue with its own lines and is evicted as a slow consumer.
            echo: flag("RINGFAN_ECHO", false)?,
            max_frame_bytes: size("RINGFAN_MAX_FRAME_BYTES", 65536, 2, 1 << 30)?,
            send_queue_bytes_max: size("RINGFAN_SEND_QUEUE_BYTES_MAX", 4 << 20, 1, 1 << 40)?,
            close_timeout: Duration::from_millis(int(
                "RINGFAN_CLOSE_TIMEOUT_MS",
                5000,
                1,
                86_400_000,
                " (milliseconds)",
            )?),
            shutdown_timeout: Duration::from_millis(int(
                "RINGFAN_SHUTDOWN_TIMEOUT_MS",
                10_000,
                1,
                86_400_000,
                " (milliseconds)",
            )?),
            read_budget_bytes: size("RINGFAN_READ_BUDGET_BYTES", 65536, 1, 1 << 30)?,
            recv_buffers: recv_buffers as u16,
            recv_buffer_bytes: size("RINGFAN_RECV_BUFFER_BYTES", 16384, 64, 1 << 20)?,
            ring_entries: int(
                "RINGFAN_RING_ENTRIES",
                4096,
                8,
                RING_ENTRIES_MAX.into(),
                " (the completion queue is 4x that, at most the kernel's 65536)",
            )? as u32,
            listen_backlog: int("RINGFAN_LISTEN_BACKLOG", 4096, 1, 65535, "")? as i32,
            log,
        })
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
             notsent_lowat={} publish_listen={} metrics_listen={} driver={:?}",
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
