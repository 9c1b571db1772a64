//! One RESP connection's command semantics, sans-IO: a [`Command`] in, [`Action`]s out.
//!
//! The session owns what Redis keeps per client (its channels, patterns, shard channels, name)
//! and answers everything that needs nothing else. What needs the server's global view
//! (delivering a `PUBLISH`, counting subscribers, listing channels) comes out as an action for
//! the server to carry out, with the encoder for its reply in [`super::encode`].
//!
//! Checks run in Redis's order (src/server.c `processCommand`): the `host:`/`post` guard,
//! existence, arity, then the subscribed-mode restriction, then the command itself.
//!
//! Where ringfan differs from redis-server 7.0.15, on purpose:
//! - Commands Redis knows but ringfan does not serve (`GET`, `CLIENT LIST`, ...) get Redis's
//!   "unknown command" / "unknown subcommand" text. In subscribed mode they get Redis's exact
//!   refusal, since Redis refuses them there too.
//! - `CLIENT SETINFO` (Redis 7.2) is answered as Redis 7.2 answers it, since client libraries
//!   send it while connecting; 7.0.15 does not know it.
//! - `UNSUBSCRIBE` / `SUNSUBSCRIBE` without arguments confirm in subscription order; Redis walks
//!   a hash table with a per-process random seed, so its order is arbitrary.
//! - Topic length and subscriptions per connection are bounded ([`SessionConfig`]); Redis has no
//!   bound. A command that would exceed one is refused whole, before any change.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::commands::COMMANDS;
use super::encode::{self, Kind, Version};
use super::Command;

/// Per-connection settings.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// What `CLIENT ID` and `HELLO` report.
    pub client_id: u64,
    /// The `version` field of `HELLO`'s reply.
    pub server_version: Bytes,
    /// Longest channel or pattern, in bytes.
    pub topic_bytes_max: usize,
    /// Most channels + shard channels one connection may hold.
    pub subscriptions_max: usize,
    /// Most patterns one connection may hold.
    pub patterns_max: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            client_id: 1,
            server_version: Bytes::from_static(b"7.0.15"),
            topic_bytes_max: usize::MAX,
            subscriptions_max: usize::MAX,
            patterns_max: usize::MAX,
        }
    }
}

/// The server's veto on new subscriptions (see [`Session::handle_with`]).
pub type Admit<'a> = &'a mut dyn FnMut(Kind, &[&Bytes]) -> Result<(), Bytes>;

/// What the server must do, in order, for one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes.
    Reply(Bytes),
    /// Start delivering these topics to this connection. Comes before the confirmations
    /// (the next `Reply`): interest must be visible everywhere before a client learns it is
    /// subscribed, or a message published after the confirmation could miss it.
    Subscribe { kind: Kind, topics: Vec<Bytes> },
    /// Stop delivering these topics to this connection.
    Unsubscribe { kind: Kind, topics: Vec<Bytes> },
    /// Deliver `message` on `channel` (`kind` is `Channel` for `PUBLISH`, `Shard` for
    /// `SPUBLISH`), then reply [`encode::integer`] with the number of deliveries.
    Publish {
        kind: Kind,
        channel: Bytes,
        message: Bytes,
    },
    /// Answer a `PUBSUB` question from the server's global view.
    Query(Query),
    /// Close the connection once everything before this is sent. Nothing follows it.
    Close,
    /// Close the connection now, discarding replies not yet sent (Redis frees such a client
    /// before it writes what the same read produced). Nothing follows it.
    Drop,
}

/// `PUBSUB` subcommands that need every connection's subscriptions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// `CHANNELS` / `SHARDCHANNELS`: reply [`encode::bulk_array`] of the active channels (or
    /// shard channels) matching `pattern` (all if `None`), with [`crate::glob::matches`].
    Channels { shard: bool, pattern: Option<Bytes> },
    /// `NUMSUB` / `SHARDNUMSUB`: reply [`encode::numsub`] with each channel's subscriber count,
    /// in the order asked, repeats included; pattern subscribers are not counted.
    NumSub { shard: bool, channels: Vec<Bytes> },
    /// `NUMPAT`: reply [`encode::integer`] with the number of distinct patterns subscribed.
    NumPat,
}

/// A connection's channels, patterns and shard channels, remembering subscription order (for
/// unsubscribe-all). Small (most connections hold a topic or two): a vector, with a hash index
/// beside it only past [`INDEXED_FROM`] entries, so an idle subscriber holds a few dozen bytes
/// for its subscriptions rather than three hash tables.
#[derive(Debug, Default)]
struct Subscriptions {
    seq: u64,
    items: Vec<(Kind, Bytes, u64)>,
    /// (kind, topic) -> position in `items`, once it is large.
    index: Option<HashMap<(Kind, Bytes), usize>>,
    counts: [usize; 3],
}

const INDEXED_FROM: usize = 16;

fn kind_slot(kind: Kind) -> usize {
    match kind {
        Kind::Channel => 0,
        Kind::Pattern => 1,
        Kind::Shard => 2,
    }
}

impl Subscriptions {
    fn position(&self, kind: Kind, topic: &[u8]) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&(kind, Bytes::copy_from_slice(topic))).copied(),
            None => self
                .items
                .iter()
                .position(|(k, t, _)| *k == kind && &t[..] == topic),
        }
    }

    fn contains(&self, kind: Kind, topic: &[u8]) -> bool {
        self.position(kind, topic).is_some()
    }

    fn insert(&mut self, kind: Kind, topic: &Bytes) -> bool {
        if self.contains(kind, topic) {
            return false;
        }
        self.seq += 1;
        if self.items.capacity() == 0 {
            self.items.reserve_exact(1);
        }
        self.items.push((kind, topic.clone(), self.seq));
        self.counts[kind_slot(kind)] += 1;
        if let Some(index) = &mut self.index {
            index.insert((kind, topic.clone()), self.items.len() - 1);
        } else if self.items.len() > INDEXED_FROM {
            self.index = Some(
                self.items
                    .iter()
                    .enumerate()
                    .map(|(i, (k, t, _))| ((*k, t.clone()), i))
                    .collect(),
            );
        }
        true
    }

    fn remove(&mut self, kind: Kind, topic: &[u8]) -> bool {
        let Some(i) = self.position(kind, topic) else {
            return false;
        };
        let (k, t, _) = self.items.swap_remove(i);
        self.counts[kind_slot(kind)] -= 1;
        if let Some(index) = &mut self.index {
            index.remove(&(k, t));
            if let Some((mk, mt, _)) = self.items.get(i) {
                index.insert((*mk, mt.clone()), i);
            }
        }
        if self.items.is_empty() {
            *self = Subscriptions {
                seq: self.seq,
                ..Subscriptions::default()
            };
        }
        true
    }

    fn len(&self, kind: Kind) -> usize {
        self.counts[kind_slot(kind)]
    }

    fn in_order(&self, kind: Kind) -> Vec<Bytes> {
        let mut all: Vec<(&Bytes, u64)> = self
            .items
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, t, seq)| (t, *seq))
            .collect();
        all.sort_unstable_by_key(|(_, seq)| *seq);
        all.into_iter().map(|(t, _)| t.clone()).collect()
    }

    fn clear(&mut self, kind: Kind) {
        for topic in self.in_order(kind) {
            self.remove(kind, &topic);
        }
    }
}

/// One connection's state.
#[derive(Debug)]
pub struct Session {
    /// Shared by every connection of a listener (see [`Session::shared`]).
    config: Arc<SessionConfig>,
    client_id: u64,
    subs: Subscriptions,
    name: Option<Box<[u8]>>,
    closed: bool,
    version: Version,
}

const SUBSCRIBED_MODE_ALLOWED: &[&str] = &[
    "ping",
    "subscribe",
    "ssubscribe",
    "unsubscribe",
    "sunsubscribe",
    "psubscribe",
    "punsubscribe",
    "quit",
    "reset",
];

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        let client_id = config.client_id;
        Session::shared(Arc::new(config), client_id)
    }

    /// A session whose settings are shared with other connections' (one allocation for all),
    /// with its own `CLIENT ID`.
    pub fn shared(config: Arc<SessionConfig>, client_id: u64) -> Self {
        Session {
            config,
            client_id,
            subs: Subscriptions::default(),
            name: None,
            closed: false,
            version: Version::Resp2,
        }
    }

    /// True after `QUIT` or the `host:` guard: the server closes, and feeds nothing more.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The protocol spoken: RESP3 after `HELLO 3`, until `HELLO 2` or `RESET`.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Redis's subscribed mode: any channel, pattern or shard channel held.
    pub fn subscribed(&self) -> bool {
        !self.subs.items.is_empty()
    }

    pub fn is_subscribed(&self, kind: Kind, topic: &[u8]) -> bool {
        self.subs.contains(kind, topic)
    }

    /// The topics of `kind`, in subscription order.
    pub fn topics(&self, kind: Kind) -> Vec<Bytes> {
        self.subs.in_order(kind)
    }

    pub fn name(&self) -> Option<&[u8]> {
        self.name.as_deref()
    }

    /// The count a confirmation of `kind` carries: channels and patterns share one.
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Channel | Kind::Pattern => {
                self.subs.len(Kind::Channel) + self.subs.len(Kind::Pattern)
            }
            Kind::Shard => self.subs.len(Kind::Shard),
        }
    }

    /// Runs one command, appending what the server must do to `out`.
    pub fn handle(&mut self, command: &Command, out: &mut Vec<Action>) {
        self.handle_with(command, out, &mut |_, _| Ok(()));
    }

    /// As [`Session::handle`], with the server's own say on new subscriptions: `admit` gets the
    /// topics a subscribe would add (of that kind, not yet held, each once) before anything
    /// changes, and may refuse the whole command with an error reply (e.g. a server-wide limit).
    pub fn handle_with(&mut self, command: &Command, out: &mut Vec<Action>, admit: Admit<'_>) {
        if self.closed || command.args.is_empty() {
            return;
        }
        let args = &command.args;
        if args[0].eq_ignore_ascii_case(b"host:") || args[0].eq_ignore_ascii_case(b"post") {
            // Redis's guard against HTTP requests sent to it (cross-protocol scripting):
            // dropped at once, without a reply, not even to the commands before it.
            self.closed = true;
            out.push(Action::Drop);
            return;
        }
        let (full_name, arity) = match lookup(args) {
            Lookup::Found(full_name, arity) => (full_name, arity),
            Lookup::UnknownCommand => return out.push(reply_error(&unknown_command(args))),
            Lookup::UnknownSubcommand => return out.push(reply_error(&unknown_subcommand(args))),
        };
        let argc = args.len() as i64;
        let arity = i64::from(arity);
        if (arity > 0 && arity != argc) || argc < -arity {
            let text = format!("wrong number of arguments for '{full_name}' command");
            return out.push(reply_error(text.as_bytes()));
        }
        // RESP3 carries pushes beside replies: no command is restricted there.
        if self.version == Version::Resp2
            && self.subscribed()
            && !SUBSCRIBED_MODE_ALLOWED.contains(&full_name)
        {
            let text = format!(
                "Can't execute '{full_name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            );
            return out.push(reply_error(text.as_bytes()));
        }
        self.run(full_name, args, out, admit);
    }

    fn run(&mut self, full_name: &str, args: &[Bytes], out: &mut Vec<Action>, admit: Admit<'_>) {
        match full_name {
            // PING's arity is "at least 1"; pingCommand itself refuses more than 2.
            "ping" if args.len() > 2 => {
                out.push(reply_error(b"wrong number of arguments for 'ping' command"))
            }
            "ping" => out.push(Action::Reply(self.ping(args))),
            "echo" => out.push(Action::Reply(encode::bulk(&args[1]))),
            "quit" => {
                self.closed = true;
                out.push(Action::Reply(encode::simple(b"OK")));
                out.push(Action::Close);
            }
            "reset" => self.reset(out),
            "hello" => out.push(Action::Reply(self.hello(args))),
            "subscribe" => self.subscribe(Kind::Channel, &args[1..], out, admit),
            "psubscribe" => self.subscribe(Kind::Pattern, &args[1..], out, admit),
            "ssubscribe" => self.subscribe(Kind::Shard, &args[1..], out, admit),
            "unsubscribe" => self.unsubscribe(Kind::Channel, &args[1..], out),
            "punsubscribe" => self.unsubscribe(Kind::Pattern, &args[1..], out),
            "sunsubscribe" => self.unsubscribe(Kind::Shard, &args[1..], out),
            "publish" | "spublish" => out.push(Action::Publish {
                kind: if full_name == "publish" {
                    Kind::Channel
                } else {
                    Kind::Shard
                },
                channel: args[1].clone(),
                message: args[2].clone(),
            }),
            "client|id" => out.push(Action::Reply(encode::integer(self.client_id as i64))),
            "client|getname" => out.push(Action::Reply(match &self.name {
                Some(name) => encode::bulk(name),
                None => encode::null(self.version),
            })),
            "client|setname" => out.push(Action::Reply(match self.set_name(&args[2]) {
                Ok(()) => encode::simple(b"OK"),
                Err(e) => e,
            })),
            "client|setinfo" => out.push(Action::Reply(set_info(&args[2], &args[3]))),
            name if name.starts_with("pubsub|") => out.push(pubsub(name, args)),
            // Known to Redis, not served by ringfan.
            _ if args.len() > 1 && is_container(&args[0]) => {
                out.push(reply_error(&unknown_subcommand(args)))
            }
            _ => out.push(reply_error(&unknown_command(args))),
        }
    }

    fn ping(&self, args: &[Bytes]) -> Bytes {
        if self.subscribed() && self.version == Version::Resp2 {
            let arg: &[u8] = args.get(1).map_or(b"", |a| &a[..]);
            let mut reply = BytesMut::new();
            reply.put_slice(b"*2\r\n$4\r\npong\r\n");
            reply.put_slice(&encode::bulk(arg));
            reply.freeze()
        } else {
            match args.get(1) {
                Some(arg) => encode::bulk(arg),
                None => encode::simple(b"PONG"),
            }
        }
    }

    fn reset(&mut self, out: &mut Vec<Action>) {
        for kind in [Kind::Channel, Kind::Shard, Kind::Pattern] {
            let topics = self.topics(kind);
            if !topics.is_empty() {
                self.subs.clear(kind);
                out.push(Action::Unsubscribe { kind, topics });
            }
        }
        self.name = None;
        self.version = Version::Resp2;
        out.push(Action::Reply(encode::simple(b"RESET")));
    }

    /// Redis's `clientSetName`: empty clears; otherwise only bytes `!`..=`~`.
    fn set_name(&mut self, name: &Bytes) -> Result<(), Bytes> {
        if name.is_empty() {
            self.name = None;
            return Ok(());
        }
        if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
            return Err(encode::error(
                b"Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = Some(name[..].into());
        Ok(())
    }

    fn hello(&mut self, args: &[Bytes]) -> Bytes {
        let mut requested = None;
        if let Some(version) = args.get(1) {
            match super::decode::string_to_i64(version) {
                None => {
                    return encode::error(b"Protocol version is not an integer or out of range")
                }
                Some(v) if v != 2 && v != 3 => {
                    return encode::error(b"-NOPROTO unsupported protocol version")
                }
                Some(v) => requested = Some(v),
            }
        }
        let mut j = 2;
        while j < args.len() {
            let more = args.len() - 1 - j;
            let option = &args[j];
            if option.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                // No ACLs: like a default Redis, only the passwordless `default` user exists.
                if &args[j + 1][..] != b"default" {
                    return encode::error(
                        b"-WRONGPASS invalid username-password pair or user is disabled.",
                    );
                }
                j += 2;
            } else if option.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                if let Err(e) = self.set_name(&args[j + 1]) {
                    return e;
                }
                j += 1;
            } else {
                let mut text = b"Syntax error in HELLO option '".to_vec();
                text.extend_from_slice(c_str(option));
                text.push(b'\'');
                return encode::error(&text);
            }
            j += 1;
        }
        // Switched only once every option was accepted, as Redis does.
        match requested {
            Some(3) => self.version = Version::Resp3,
            Some(_) => self.version = Version::Resp2,
            None => {}
        }
        let fields: [&[u8]; 14] = [
            b"server",
            b"redis",
            b"version",
            &self.config.server_version,
            b"proto",
            b"",
            b"id",
            b"",
            b"mode",
            b"standalone",
            b"role",
            b"master",
            b"modules",
            b"",
        ];
        let mut reply = BytesMut::new();
        reply.put_slice(&encode::map_header(self.version, fields.len() / 2));
        for (i, field) in fields.iter().enumerate() {
            match i {
                5 => reply.put_slice(match self.version {
                    Version::Resp2 => b":2\r\n",
                    Version::Resp3 => b":3\r\n",
                }),
                7 => reply.put_slice(&encode::integer(self.client_id as i64)),
                13 => reply.put_slice(b"*0\r\n"),
                _ => reply.put_slice(&encode::bulk(field)),
            }
        }
        reply.freeze()
    }

    fn subscribe(&mut self, kind: Kind, topics: &[Bytes], out: &mut Vec<Action>, admit: Admit<'_>) {
        if let Err(e) = self
            .check_limits(kind, topics)
            .and_then(|new| admit(kind, &new))
        {
            return out.push(Action::Reply(e));
        }
        let mut added = Vec::new();
        let mut replies = BytesMut::new();
        for topic in topics {
            if self.subs.insert(kind, topic) {
                added.push(topic.clone());
            }
            replies.put_slice(&encode::subscribed(
                self.version,
                kind,
                topic,
                self.count(kind),
            ));
        }
        if !added.is_empty() {
            out.push(Action::Subscribe {
                kind,
                topics: added,
            });
        }
        out.push(Action::Reply(replies.freeze()));
    }

    /// Refuses a subscribe that would pass a limit, before it changes anything; else returns
    /// the topics it would add.
    fn check_limits<'a>(&self, kind: Kind, topics: &'a [Bytes]) -> Result<Vec<&'a Bytes>, Bytes> {
        let max = self.config.topic_bytes_max;
        if topics.iter().any(|t| t.len() > max) {
            let text =
                format!("channel or pattern longer than {max} bytes (RINGFAN_TOPIC_BYTES_MAX)");
            return Err(encode::error(text.as_bytes()));
        }
        let mut new: Vec<&Bytes> = topics
            .iter()
            .filter(|t| !self.subs.contains(kind, t))
            .collect();
        new.sort_unstable();
        new.dedup();
        let (held, max, name) = match kind {
            Kind::Pattern => (
                self.subs.len(Kind::Pattern),
                self.config.patterns_max,
                "RINGFAN_PATTERNS_MAX",
            ),
            Kind::Channel | Kind::Shard => (
                self.subs.len(Kind::Channel) + self.subs.len(Kind::Shard),
                self.config.subscriptions_max,
                "RINGFAN_SUBSCRIPTIONS_MAX",
            ),
        };
        if held + new.len() > max {
            let text = format!("too many subscriptions on this connection: at most {max} ({name})");
            return Err(encode::error(text.as_bytes()));
        }
        Ok(new)
    }

    fn unsubscribe(&mut self, kind: Kind, topics: &[Bytes], out: &mut Vec<Action>) {
        let mut removed = Vec::new();
        let mut replies = BytesMut::new();
        if topics.is_empty() {
            for topic in self.topics(kind) {
                self.subs.remove(kind, &topic);
                replies.put_slice(&encode::unsubscribed(
                    self.version,
                    kind,
                    Some(&topic),
                    self.count(kind),
                ));
                removed.push(topic);
            }
            if removed.is_empty() {
                replies.put_slice(&encode::unsubscribed(
                    self.version,
                    kind,
                    None,
                    self.count(kind),
                ));
            }
        } else {
            for topic in topics {
                if self.subs.remove(kind, topic) {
                    removed.push(topic.clone());
                }
                replies.put_slice(&encode::unsubscribed(
                    self.version,
                    kind,
                    Some(topic),
                    self.count(kind),
                ));
            }
        }
        if !removed.is_empty() {
            out.push(Action::Unsubscribe {
                kind,
                topics: removed,
            });
        }
        out.push(Action::Reply(replies.freeze()));
    }
}

/// `PUBSUB <sub>` after existence and arity passed: Redis's `pubsubCommand` re-checks the
/// argument count per subcommand.
fn pubsub(full_name: &str, args: &[Bytes]) -> Action {
    let argc = args.len();
    let shard = full_name.starts_with("pubsub|shard");
    match full_name {
        "pubsub|help" => Action::Reply(pubsub_help(&args[0])),
        "pubsub|channels" | "pubsub|shardchannels" if argc <= 3 => Action::Query(Query::Channels {
            shard,
            pattern: args.get(2).cloned(),
        }),
        "pubsub|numsub" | "pubsub|shardnumsub" => Action::Query(Query::NumSub {
            shard,
            channels: args[2..].to_vec(),
        }),
        "pubsub|numpat" => Action::Query(Query::NumPat),
        _ => {
            let mut text = b"unknown subcommand or wrong number of arguments for '".to_vec();
            text.extend_from_slice(truncated(c_str(&args[1]), 128));
            text.extend_from_slice(b"'. Try ");
            text.extend_from_slice(&c_str(&args[0]).to_ascii_uppercase());
            text.extend_from_slice(b" HELP.");
            reply_error(&text)
        }
    }
}

fn pubsub_help(command: &[u8]) -> Bytes {
    const LINES: &[&str] = &[
        "CHANNELS [<pattern>]",
        "    Return the currently active channels matching a <pattern> (default: '*').",
        "NUMPAT",
        "    Return number of subscriptions to patterns.",
        "NUMSUB [<channel> ...]",
        "    Return the number of subscribers for the specified channels, excluding",
        "    pattern subscriptions(default: no channels).",
        "SHARDCHANNELS [<pattern>]",
        "    Return the currently active shard level channels matching a <pattern> (default: '*').",
        "SHARDNUMSUB [<shardchannel> ...]",
        "    Return the number of subscribers for the specified shard level channel(s)",
        "HELP",
        "    Prints this help.",
    ];
    let mut reply = BytesMut::new();
    reply.put_slice(&encode::array_header(LINES.len() + 1));
    let mut header = c_str(command).to_ascii_uppercase();
    header.extend_from_slice(b" <subcommand> [<arg> [value] [opt] ...]. Subcommands are:");
    reply.put_slice(&encode::simple(&header));
    for line in LINES {
        reply.put_slice(&encode::simple(line.as_bytes()));
    }
    reply.freeze()
}

fn reply_error(text: &[u8]) -> Action {
    Action::Reply(encode::error(text))
}

/// What a C string formatter sees of `arg`: the bytes before its first NUL.
fn c_str(arg: &[u8]) -> &[u8] {
    match memchr::memchr(0, arg) {
        Some(nul) => &arg[..nul],
        None => arg,
    }
}

fn truncated(s: &[u8], max: usize) -> &[u8] {
    &s[..s.len().min(max)]
}

/// `unknown command '%.128s', with args beginning with: ` then `'%.*s' ` per argument while
/// the list is under 128 bytes, each cut to what is left of the 128.
fn unknown_command(args: &[Bytes]) -> Vec<u8> {
    let mut listed = Vec::new();
    for arg in &args[1..] {
        if listed.len() >= 128 {
            break;
        }
        let room = 128 - listed.len();
        listed.push(b'\'');
        listed.extend_from_slice(truncated(c_str(arg), room));
        listed.extend_from_slice(b"' ");
    }
    let mut text = b"unknown command '".to_vec();
    text.extend_from_slice(truncated(c_str(&args[0]), 128));
    text.extend_from_slice(b"', with args beginning with: ");
    text.extend_from_slice(&listed);
    text
}

/// `unknown subcommand '%.128s'. Try %s HELP.`
fn unknown_subcommand(args: &[Bytes]) -> Vec<u8> {
    let mut text = b"unknown subcommand '".to_vec();
    text.extend_from_slice(truncated(c_str(&args[1]), 128));
    text.extend_from_slice(b"'. Try ");
    text.extend_from_slice(&c_str(&args[0]).to_ascii_uppercase());
    text.extend_from_slice(b" HELP.");
    text
}

enum Lookup {
    Found(&'static str, i32),
    UnknownCommand,
    /// A container command (`CLIENT`, `PUBSUB`, ...) with an unknown subcommand.
    UnknownSubcommand,
}

/// Finds a command by its exact, case-insensitive full name.
fn find(full_name: &[u8]) -> Option<(&'static str, i32)> {
    if full_name.len() > 64 || !full_name.is_ascii() {
        return None;
    }
    let lower = full_name.to_ascii_lowercase();
    COMMANDS
        .binary_search_by(|(name, _)| name.as_bytes().cmp(&lower[..]))
        .ok()
        .map(|i| COMMANDS[i])
}

fn is_container(name: &[u8]) -> bool {
    if name.len() > 64 || !name.is_ascii() {
        return false;
    }
    let mut prefix = name.to_ascii_lowercase();
    prefix.push(b'|');
    let i = COMMANDS.partition_point(|(n, _)| n.as_bytes() < &prefix[..]);
    COMMANDS
        .get(i)
        .is_some_and(|(n, _)| n.as_bytes().starts_with(&prefix))
}

/// Redis's `lookupCommand`: a container with more than one argument is looked up by its
/// subcommand; with one, as itself (so that arity reports it).
/// `CLIENT SETINFO LIB-NAME|LIB-VER value`, which Redis 7.2 added and client libraries send
/// while connecting: accepted (and not kept), refused as Redis 7.2 refuses it.
fn set_info(attr: &[u8], value: &[u8]) -> Bytes {
    let name = if attr.eq_ignore_ascii_case(b"lib-name") {
        "lib-name"
    } else if attr.eq_ignore_ascii_case(b"lib-ver") {
        "lib-ver"
    } else {
        let mut text = b"Unrecognized option '".to_vec();
        text.extend_from_slice(c_str(attr));
        text.push(b'\'');
        return encode::error(&text);
    };
    if value.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        let text = format!("{name} cannot contain spaces, newlines or special characters.");
        return encode::error(text.as_bytes());
    }
    encode::simple(b"OK")
}

fn lookup(args: &[Bytes]) -> Lookup {
    let name = &args[0];
    if name.contains(&b'|') {
        // A full name is not a command name.
        return Lookup::UnknownCommand;
    }
    if args.len() > 1 && is_container(name) {
        if args[1].contains(&b'|') {
            return Lookup::UnknownSubcommand;
        }
        let mut full = name.to_vec();
        full.push(b'|');
        full.extend_from_slice(&args[1]);
        return match find(&full) {
            Some((n, a)) => Lookup::Found(n, a),
            None => Lookup::UnknownSubcommand,
        };
    }
    match find(name) {
        Some((n, a)) => Lookup::Found(n, a),
        None => Lookup::UnknownCommand,
    }
}
