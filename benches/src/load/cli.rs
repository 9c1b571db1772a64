//! Command-line parsing. Bad flags or values exit with status 2 and a message that names the
//! flag, the value and what is accepted.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::topics::{Topics, PATTERNS_MAX, TOPICS_MAX};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Ringfan,
    Redis,
    Nats,
    /// Subscribers over WebSocket (`--ws-addr`), publishers over lines (`--addr`).
    Ws,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Ringfan => "ringfan",
            Proto::Redis => "redis",
            Proto::Nats => "nats",
            Proto::Ws => "ws",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Fanout,
    Storm,
    Slow,
    Idle,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Storm => "storm",
            Scenario::Slow => "slow",
            Scenario::Idle => "idle",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub proto: Proto,
    pub addr: SocketAddr,
    /// The WebSocket listener subscribers upgrade on (`--ws-addr`; required with ws).
    pub ws_addr: Option<SocketAddr>,
    pub subscribers: usize,
    pub publishers: usize,
    /// Total messages/s across publishers; 0 = as fast as possible.
    pub rate: f64,
    pub size: usize,
    pub duration: Duration,
    pub duration_given: bool,
    pub warmup: Duration,
    pub connect_rate: f64,
    pub recv_threads: usize,
    /// SO_RCVBUF for subscriber sockets; 0 = the kernel's autotuning.
    pub rcvbuf: usize,
    pub json: Option<String>,
    pub scenario: Scenario,
    pub channel: String,
    /// `--channel` was given (ws: the upgrade's path names it instead of `/`).
    pub channel_given: bool,
    pub drain: Duration,
    pub cycles: Option<u64>,
    pub storm_concurrency: usize,
    pub storm_send: bool,
    pub server_pid: Option<u32>,
    pub slow: usize,
    pub slow_bytes_per_sec: u64,
    /// K: channels (`--topics`).
    pub topics: u32,
    /// T: channels per subscriber (`--topic-subs`).
    pub topic_subs: u32,
    /// P: pattern subscriptions over all subscribers (`--patterns`).
    pub patterns: u32,
}

impl Config {
    /// Where subscribers connect: the WebSocket listener with ws, else `--addr`.
    pub fn subscriber_addr(&self) -> SocketAddr {
        match (self.proto, self.ws_addr) {
            (Proto::Ws, Some(a)) => a,
            _ => self.addr,
        }
    }

    /// The run's channels, patterns and who subscribes to which (see `topics.rs`).
    pub fn topics(&self) -> Topics {
        Topics::new(
            self.topics,
            self.topic_subs,
            self.patterns,
            self.subscribers as u32,
        )
    }
}

pub const MIN_SIZE: usize = 40;
pub const MAX_SIZE: usize = 1 << 20;
pub const MAX_PUBLISHERS: usize = 999;

pub const HELP: &str = "\
ringfan-load: load generator for ringfan (and Redis pub/sub / NATS, for comparison)

USAGE: ringfan-load [FLAGS]      (flags take `--flag VALUE` or `--flag=VALUE`)

General:
  --proto ringfan|redis|nats|ws  wire protocol (default ringfan). ws: subscribers upgrade to
                               WebSocket on --ws-addr (path `/`, the server's lines topic, or
                               `/<channel>` with --channel) and read one frame per message,
                               the line without its `\\n` (S-1 payload bytes); publishers send
                               lines to --addr. Pings are answered with pongs
  --addr HOST:PORT             server address (default 127.0.0.1:7000)
  --ws-addr HOST:PORT          (ws) the server's WebSocket listener (ringfan:
                               RINGFAN_WS_LISTEN); required with --proto ws
  --scenario fanout|storm|slow|idle (default fanout)
  --json PATH                  also write a JSON summary to PATH; `-` = stdout (the key=value
                               line then goes to stderr, so stdout holds exactly one JSON line)
  --channel NAME               redis channel / NATS subject (default ringfan); ws: upgrade on
                               /NAME instead of / (lines published to --addr reach it only
                               if the server's lines topic is NAME: RINGFAN_LINES_TOPIC)
  --topics K                   redis, nats: K channels `<channel>.<j>`, j = 0..K-1 (default 1:
                               just `<channel>`, as without this flag); each publisher sends
                               its messages round-robin over them, visiting channel c*S mod K
                               c-th, S the first number above T coprime with K, so that
                               consecutive messages reach different subscribers
                               Refused with ringfan and ws: lines have no channels
  --topic-subs T               redis, nats: channels each subscriber takes, 1..=K (default 1):
                               subscriber i subscribes to channels (i*T + t) mod K for
                               t = 0..T-1, in one SUBSCRIBE, so each channel has N*T/K
                               subscribers and each message is delivered N*T/K times
  --patterns P                 redis: P pattern subscriptions `<channel>.nomatch.<q>.*`,
                               q = 0..P-1, spread round-robin over the subscribers (PSUBSCRIBE).
                               They match no channel: they cost the server a pattern match per
                               published message and add no delivery (default 0). Refused with
                               nats (its wildcards match subject tokens, not the same work),
                               ringfan and ws
  --server-pid PID             a server on this machine: also report its CPU time over the
                               measured window (fanout, slow), its RSS (fanout, slow, idle), its
                               open fds before and after (storm)
  -h, --help                   this text

fanout / slow:
  --subscribers N              subscriber connections (default 100)
  --publishers P               publisher connections, one thread each (default 1, max 999)
  --rate R                     total messages/s across publishers; 0 = as fast as possible
                               (default 0)
  --size S                     message bytes incl. the trailing newline (default 64, 40..=1048576)
  --duration SECS              measured part (default 10; fractions allowed)
  --warmup SECS                excluded from the numbers (default 2)
  --drain SECS                 after publishers stop, wait at most this long for deliveries to
                               stop progressing (default 2)
  --connect-rate C             new connections per second (default 2000)
  --recv-threads K             io_uring receiver threads for subscribers (default 1, max 16)
  --rcvbuf BYTES               SO_RCVBUF of every subscriber socket (e.g. 256k); 0 = kernel
                               autotuning (default). Thousands of autotuned sockets on one
                               machine can push TCP memory past net.ipv4.tcp_mem's pressure
                               threshold, which distorts every figure: the summary reports
                               tcp_mem_peak_pages and warns when that happened
  --slow K                     (slow) how many of the N subscribers read slowly (default 1)
  --slow-bytes-per-sec B       (slow) read rate of each slow subscriber; 0 = never read (default 0)
                               slow subscribers use plain sockets on their own thread; their
                               disconnects are reported in seconds after the publishers started

idle:
  --subscribers N              connect N subscribers (subscribed, per protocol), confirm every
                               subscription, hold them idle for --duration, report. With
                               --server-pid: the server's VmRSS before connecting and at the end,
                               and (difference / connected) as rss_per_conn_bytes

storm:
  --duration SECS              churn for this long (default 10) ...
  --cycles N                   ... or until N connect/close cycles are done
  --storm-concurrency C        threads doing cycles (default 50)
  --storm-send yes|no          ringfan: send one line per cycle; ws: churn the WebSocket
                               listener, sending the upgrade request (default yes)

Output: progress on stderr once a second; at the end ONE key=value summary line on stdout.
delivered / delivered_msgs_per_s = messages received by all subscribers between the end of the
warm-up and the end of the measured window, whenever they were sent (the steady-state receive
rate; a backlog built during the warm-up counts, one delivered after the window does not).
measured_delivered = messages sent in the measured window and received by the end of the drain.
expected = the deliveries those messages owe: for each connected subscriber, the messages sent
in the measured window on its channels (published x subscribers with one channel; published x
N*T/K with --topics when every channel has N*T/K subscribers).
Latency = receive time - send time (CLOCK_MONOTONIC), for messages sent in the measured window.
lost = messages sent in the measured window that a subscriber never received by the end of the
drain (gaps, plus what was still missing; disconnected subscribers included);
reordered = messages whose seq was not above the last one seen from that publisher (on that
channel). misrouted = messages a subscriber received on a channel it did not subscribe to.
stale = markers stamped before this run's publishers started (a reused server still delivering
what an earlier run's publishers sent); ignored otherwise.
load_cpu_s / load_cores_busy = this generator's own CPU over the measured window, and that
divided by the window (load_cores = cores it may run on): near load_cores, the generator is
the limit, not the server.
server_cpu_s (with --server-pid) = the server's user+system CPU over the measured window;
server_cpu_s_per_m = that per million deliveries (delivered); server_user_s(_per_m): user space
only.
Payload: `@<publisher>:<seq>:<send_ts_ns>;` + `x` padding + `\\n` (S bytes, all protocols);
with --topics K, <publisher> is publisher * K + channel and <seq> counts per channel.
Exit status: 0 ok, 2 bad usage, 1 run failure (e.g. no connection succeeded).
";

fn fail(msg: String) -> ! {
    eprintln!("ringfan-load: {msg} (see --help)");
    std::process::exit(2);
}

fn bad(flag: &str, value: &str, accepted: &str) -> ! {
    fail(format!(
        "invalid value '{value}' for {flag}: expected {accepted}"
    ))
}

fn int<T: std::str::FromStr + PartialOrd + Copy>(
    flag: &str,
    v: &str,
    min: T,
    max: T,
    accepted: &str,
) -> T {
    match v.trim().parse::<T>() {
        Ok(n) if n >= min && n <= max => n,
        _ => bad(flag, v, accepted),
    }
}

fn float(flag: &str, v: &str, min: f64, max: f64, accepted: &str) -> f64 {
    match v.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= min && n <= max => n,
        _ => bad(flag, v, accepted),
    }
}

fn secs(flag: &str, v: &str, min: f64, accepted: &str) -> Duration {
    Duration::from_secs_f64(float(flag, v, min, 86_400.0, accepted))
}

/// Every flag `parse` accepts (each takes a value); anything else is refused by name.
const FLAGS: [&str; 25] = [
    "--proto",
    "--addr",
    "--ws-addr",
    "--subscribers",
    "--publishers",
    "--rate",
    "--size",
    "--duration",
    "--warmup",
    "--connect-rate",
    "--recv-threads",
    "--rcvbuf",
    "--json",
    "--scenario",
    "--channel",
    "--drain",
    "--cycles",
    "--storm-concurrency",
    "--storm-send",
    "--server-pid",
    "--slow",
    "--slow-bytes-per-sec",
    "--topics",
    "--topic-subs",
    "--patterns",
];

pub fn parse(args: impl IntoIterator<Item = String>) -> Config {
    let mut c = defaults();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (flag, v) = flag_and_value(arg, &mut it);
        let f = flag.as_str();
        if !(apply_load_flag(&mut c, f, &v)
            || apply_scenario_flag(&mut c, f, &v)
            || apply_topic_flag(&mut c, f, &v))
        {
            unreachable!("{f} is in FLAGS but has no arm");
        }
    }
    check_slow(&mut c);
    if c.proto == Proto::Ws && c.ws_addr.is_none() {
        fail("--proto ws needs --ws-addr HOST:PORT (the server's WebSocket listener)".into());
    }
    if let Err((flag, value, accepted)) = check_topics(&c) {
        bad(flag, &value, &accepted);
    }
    c
}

fn defaults() -> Config {
    Config {
        proto: Proto::Ringfan,
        addr: "127.0.0.1:7000".parse().unwrap(),
        ws_addr: None,
        subscribers: 100,
        publishers: 1,
        rate: 0.0,
        size: 64,
        duration: Duration::from_secs(10),
        duration_given: false,
        warmup: Duration::from_secs(2),
        connect_rate: 2000.0,
        recv_threads: 1,
        rcvbuf: 0,
        json: None,
        scenario: Scenario::Fanout,
        channel: "ringfan".into(),
        channel_given: false,
        drain: Duration::from_secs(2),
        cycles: None,
        storm_concurrency: 50,
        storm_send: true,
        server_pid: None,
        slow: 1,
        slow_bytes_per_sec: 0,
        topics: 1,
        topic_subs: 1,
        patterns: 0,
    }
}

/// Splits `--flag=value` or takes the value from the next argument; exits on `--help`, on an
/// unknown flag and on a missing value.
fn flag_and_value(arg: String, it: &mut impl Iterator<Item = String>) -> (String, String) {
    if arg == "-h" || arg == "--help" {
        print!("{HELP}");
        std::process::exit(0);
    }
    let (flag, inline) = match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
        _ => (arg.clone(), None),
    };
    if !flag.starts_with("--") {
        fail(format!("unexpected argument '{arg}'"));
    }
    if !FLAGS.contains(&flag.as_str()) {
        fail(format!("unknown flag '{flag}'"));
    }
    let v = match inline {
        Some(v) => v,
        None => match it.next() {
            Some(v) => v,
            None => fail(format!("{flag} needs a value")),
        },
    };
    (flag, v)
}

/// A HOST:PORT value (the first IPv4 address it resolves to, else the first address).
fn host_port(f: &str, v: &str) -> SocketAddr {
    let addrs: Vec<SocketAddr> = v.to_socket_addrs().map(|a| a.collect()).unwrap_or_default();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied();
    match addr {
        Some(a) if a.port() != 0 => a,
        _ => bad(f, v, "HOST:PORT, e.g. 127.0.0.1:7000"),
    }
}

/// The flags that shape the load: target, connections, rate, sizes, times. False if `f` is
/// not one of them.
fn apply_load_flag(c: &mut Config, f: &str, v: &str) -> bool {
    let v = v.to_string();
    match f {
        "--proto" => {
            c.proto = match v.as_str() {
                "ringfan" => Proto::Ringfan,
                "redis" => Proto::Redis,
                "nats" => Proto::Nats,
                "ws" => Proto::Ws,
                _ => bad(f, &v, "one of ringfan, redis, nats, ws"),
            }
        }
        "--addr" => c.addr = host_port(f, &v),
        "--ws-addr" => c.ws_addr = Some(host_port(f, &v)),
        "--subscribers" => {
            c.subscribers = int(f, &v, 1usize, 1_000_000, "an integer from 1 to 1000000")
        }
        "--publishers" => {
            c.publishers = int(f, &v, 1usize, MAX_PUBLISHERS, "an integer from 1 to 999")
        }
        "--rate" => {
            c.rate = float(
                f,
                &v,
                0.0,
                1e10,
                "messages per second >= 0 (0 = as fast as possible)",
            )
        }
        "--size" => c.size = int(f, &v, MIN_SIZE, MAX_SIZE, "bytes from 40 to 1048576"),
        "--duration" => {
            c.duration = secs(f, &v, 0.001, "seconds > 0 (fractions allowed)");
            if c.duration.is_zero() {
                bad(f, &v, "seconds > 0");
            }
            c.duration_given = true;
        }
        "--warmup" => c.warmup = secs(f, &v, 0.0, "seconds >= 0"),
        "--drain" => c.drain = secs(f, &v, 0.0, "seconds >= 0"),
        "--connect-rate" => c.connect_rate = float(f, &v, 1.0, 1e7, "connections per second >= 1"),
        "--recv-threads" => c.recv_threads = int(f, &v, 1usize, 16, "an integer from 1 to 16"),
        "--rcvbuf" => match ringfan::config::parse_bytes(&v) {
            Some(n) if n <= 1 << 30 => c.rcvbuf = n,
            _ => bad(
                f,
                &v,
                "bytes up to 1g (k/m/g suffixes allowed), 0 = kernel autotuning",
            ),
        },
        _ => return false,
    }
    true
}

/// The flags that pick the scenario and its options, and the output. False if `f` is not one
/// of them.
fn apply_scenario_flag(c: &mut Config, f: &str, v: &str) -> bool {
    let v = v.to_string();
    match f {
        "--json" => {
            if v.is_empty() {
                bad(f, &v, "a file path or - for stdout");
            }
            c.json = Some(v)
        }
        "--scenario" => {
            c.scenario = match v.as_str() {
                "fanout" => Scenario::Fanout,
                "storm" => Scenario::Storm,
                "slow" => Scenario::Slow,
                "idle" => Scenario::Idle,
                _ => bad(f, &v, "one of fanout, storm, slow, idle"),
            }
        }
        "--channel" => {
            let ok = !v.is_empty()
                && v.len() <= 200
                && v.bytes().all(|b| b.is_ascii_graphic() && b != b'@');
            if !ok {
                bad(
                    f,
                    &v,
                    "1-200 printable ASCII characters, no spaces and no '@'",
                );
            }
            c.channel = v;
            c.channel_given = true;
        }
        "--cycles" => c.cycles = Some(int(f, &v, 1u64, u64::MAX, "an integer >= 1")),
        "--storm-concurrency" => {
            c.storm_concurrency = int(f, &v, 1usize, 4096, "an integer from 1 to 4096")
        }
        "--storm-send" => {
            c.storm_send = match v.as_str() {
                "yes" | "1" | "true" | "on" => true,
                "no" | "0" | "false" | "off" => false,
                _ => bad(f, &v, "yes or no"),
            }
        }
        "--server-pid" => c.server_pid = Some(int(f, &v, 1u32, u32::MAX, "a process id")),
        "--slow" => {
            c.slow = int(f, &v, 0usize, 1_000_000, "an integer >= 0");
        }
        "--slow-bytes-per-sec" => {
            c.slow_bytes_per_sec = int(
                f,
                &v,
                0u64,
                u64::MAX,
                "bytes per second >= 0 (0 = never read)",
            )
        }
        _ => return false,
    }
    true
}

fn check_slow(c: &mut Config) {
    if c.scenario == Scenario::Slow {
        if c.slow > c.subscribers {
            bad(
                "--slow",
                &c.slow.to_string(),
                &format!("at most --subscribers ({})", c.subscribers),
            );
        }
    } else {
        // --slow only means something in the slow scenario.
        c.slow = 0;
    }
}

/// The flags that spread the load over channels and patterns. False if `f` is not one of them.
fn apply_topic_flag(c: &mut Config, f: &str, v: &str) -> bool {
    match f {
        "--topics" => c.topics = int(f, v, 1u32, TOPICS_MAX, "an integer from 1 to 1000000"),
        "--topic-subs" => {
            c.topic_subs = int(f, v, 1u32, TOPICS_MAX, "an integer from 1 to --topics (K)")
        }
        "--patterns" => c.patterns = int(f, v, 0u32, PATTERNS_MAX, "an integer from 0 to 1000000"),
        _ => return false,
    }
    true
}

/// Bytes above which the receivers' loss tracking (one u64 per subscriber, channel of it and
/// publisher) is refused rather than attempted.
const TRACKING_BYTES_MAX: u64 = 4 << 30;

/// Topics against the protocol and each other, once every flag is known. Err: (flag, value,
/// what is accepted).
fn check_topics(c: &Config) -> Result<(), (&'static str, String, String)> {
    if c.topic_subs > c.topics {
        return Err((
            "--topic-subs",
            c.topic_subs.to_string(),
            format!("1 to --topics ({})", c.topics),
        ));
    }
    if matches!(c.proto, Proto::Ringfan | Proto::Ws) && c.topics > 1 {
        return Err((
            "--topics",
            c.topics.to_string(),
            format!(
                "1 with --proto {}: its publishers speak the line protocol, which has no \
                 channels (every subscriber gets every line); use --proto redis against \
                 ringfan's RINGFAN_RESP_LISTEN",
                c.proto.name()
            ),
        ));
    }
    if c.patterns > 0 && c.proto != Proto::Redis {
        let why = match c.proto {
            Proto::Nats => {
                "NATS wildcards (*, >) match whole subject tokens, not Redis glob patterns, so \
                 the figures would not measure the same work"
            }
            _ => "its publishers speak the line protocol, which has no patterns",
        };
        return Err((
            "--patterns",
            c.patterns.to_string(),
            format!("0 with --proto {}: {why}", c.proto.name()),
        ));
    }
    let tracking = c.subscribers as u64 * c.topic_subs as u64 * c.publishers as u64 * 8;
    if c.scenario != Scenario::Storm && tracking > TRACKING_BYTES_MAX {
        return Err((
            "--topic-subs",
            c.topic_subs.to_string(),
            format!(
                "a value with --subscribers x --topic-subs x --publishers x 8 bytes of loss \
                 tracking at most 4 GiB (this run: {} MiB)",
                tracking >> 20
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &str) -> Vec<String> {
        a.split_whitespace().map(String::from).collect()
    }

    fn config(a: &str) -> Config {
        let mut c = defaults();
        let mut it = args(a).into_iter();
        while let Some(arg) = it.next() {
            let (flag, v) = flag_and_value(arg, &mut it);
            let f = flag.as_str();
            assert!(
                apply_load_flag(&mut c, f, &v)
                    || apply_scenario_flag(&mut c, f, &v)
                    || apply_topic_flag(&mut c, f, &v)
            );
        }
        c
    }

    #[test]
    fn topics_default_to_one_plain_channel() {
        let c = config("--proto redis");
        assert_eq!(c.topics(), Topics::single(100));
        assert!(check_topics(&c).is_ok());
    }

    #[test]
    fn topics_are_checked_against_each_other_and_the_protocol() {
        let c = config("--proto redis --subscribers 1000 --topics 10000 --topic-subs 100");
        assert!(check_topics(&c).is_ok());
        let c = config("--proto redis --subscribers 20 --topics 10 --topic-subs 3 --patterns 4");
        assert!(check_topics(&c).is_ok());
        let c = config("--proto nats --topics 10 --topic-subs 3");
        assert!(check_topics(&c).is_ok());

        let refused = |a: &str, flag: &str, says: &str| {
            let (f, _, accepted) = check_topics(&config(a)).expect_err(a);
            assert_eq!(f, flag, "{a}");
            assert!(accepted.contains(says), "{a}: {accepted}");
        };
        refused(
            "--proto redis --topics 4 --topic-subs 5",
            "--topic-subs",
            "--topics (4)",
        );
        refused("--topics 2", "--topics", "no channels");
        refused("--proto ringfan --patterns 1", "--patterns", "no patterns");
        refused(
            "--proto ws --ws-addr 127.0.0.1:1 --topics 3",
            "--topics",
            "no channels",
        );
        refused(
            "--proto nats --topics 4 --patterns 2",
            "--patterns",
            "NATS wildcards",
        );
        refused(
            "--proto redis --subscribers 100000 --topics 1000 --topic-subs 1000 --publishers 10",
            "--topic-subs",
            "4 GiB",
        );
    }
}
