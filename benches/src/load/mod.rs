//! `ringfan-load`: the load generator (see `ringfan-load --help`).
//!
//! Layout: `cli` (flags), `wire` (payloads, protocol framing, handshakes, the marker scanner),
//! `recv` (io_uring receiver threads for subscribers), `publish` (publisher threads),
//! `fanout` (the fanout, slow and idle scenarios), `storm` (connect/close churn), `report`
//! (summary line and JSON), `sys` (clock, fd limit, socket options, /proc readers), `topics`
//! (channel names, which subscriber takes which channels and patterns, per-channel sequences),
//! `ws` (WebSocket subscribers: the upgrade, and the frame decoder in front of the scanner).
//!
//! How a run measures:
//! - Every payload carries `@<publisher>:<seq>:<send_ts_ns>;` (CLOCK_MONOTONIC). A message is
//!   *measured* when its send timestamp falls in the measured window (after the warm-up);
//!   latency, `measured_delivered`, `published`, `lost` and `reordered` refer to measured
//!   messages only. With `--topics K` the marker's publisher field is `publisher * K + channel`
//!   and its seq counts that publisher's messages on that channel (see `topics.rs`).
//! - Throughput (`delivered`, `delivered_msgs_per_s`) is the steady-state receive rate: every
//!   message the subscribers received between the start and the end of the measured window,
//!   whenever it was sent. A server that builds a backlog at max rate is credited with what it
//!   delivers inside the window, not with what it delivers after it.
//! - With `--server-pid`, the server's CPU (utime + stime from /proc/PID/stat) is sampled at
//!   the start and the end of the measured window, so `server_cpu_s_per_m` covers the same
//!   span as `delivered`.
//! - `lost` = gaps in each (subscriber, publisher, channel) seq stream inside the measured
//!   window, plus, after the drain, every measured message a subscriber never got on its
//!   channels (`lost_at_end`), including those of subscribers the server disconnected.
//!   `expected` = the deliveries owed: per subscriber, the measured messages on its channels.
//! - Before publishing, every subscription is confirmed: redis by one `subscribe` or
//!   `psubscribe` reply per channel and pattern, NATS by the `PONG` to a `PING` sent after the
//!   `SUB`s, ringfan by receiving one of the sync lines (no `@` in them) the loader broadcasts
//!   through a helper connection, WebSocket by the `101` answering its upgrade (the server
//!   subscribes a connection to the path's topic as it upgrades it).
//!
//! Known limits:
//! - Subscribers on the ring answer NATS `PING`s, but a `PING` split across two receive buffers
//!   goes unanswered (the server pings again; it drops a client only after two missed pings).
//! - With `--rate 0` the publishers write as fast as the server reads; on a small machine that
//!   usually outruns fan-out, so the server queues and may evict subscribers (they show up as
//!   `disconnected` and `lost`). Use a fixed `--rate` for latency figures.
//! - A message's batch is stamped once, just before its write; time a blocked write waits for
//!   the server to read counts as latency.
//! - Slow subscribers that never read cannot see a server's FIN (it waits behind unsent data);
//!   for a server on this machine their disconnect is read from the server's socket state in
//!   /proc/net/tcp (every 250 ms), `slow_closed_unseen` counts those.

pub mod cli;
pub mod fanout;
pub mod publish;
pub mod recv;
pub mod report;
pub mod storm;
pub mod sys;
pub mod topics;
pub mod wire;
pub mod ws;
