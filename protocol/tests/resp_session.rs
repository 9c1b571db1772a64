//! `resp::Session`: the actions the server relies on, and what ringfan does where it differs
//! from Redis on purpose. Byte-exact agreement with Redis is `redis_differential.rs`.

use bytes::Bytes;
use ringfan_protocol::resp::{Action, Command, Kind, Query, Session, SessionConfig, Version};

fn command(args: &[&str]) -> Command {
    Command {
        args: args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect(),
    }
}

fn run(session: &mut Session, args: &[&str]) -> Vec<Action> {
    let mut out = Vec::new();
    session.handle(&command(args), &mut out);
    out
}

fn topics(list: &[&str]) -> Vec<Bytes> {
    list.iter()
        .map(|t| Bytes::copy_from_slice(t.as_bytes()))
        .collect()
}

fn reply(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reply(b) => Some(b.to_vec()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

#[test]
fn interest_is_registered_before_the_confirmation() {
    let mut s = Session::new(SessionConfig::default());
    let actions = run(&mut s, &["SUBSCRIBE", "a", "b", "a"]);
    assert_eq!(actions.len(), 2);
    assert_eq!(
        actions[0],
        Action::Subscribe {
            kind: Kind::Channel,
            topics: topics(&["a", "b"])
        },
        "only new topics, once each, before the reply"
    );
    assert!(matches!(actions[1], Action::Reply(_)));
    // Subscribing again to held topics changes no interest.
    let again = run(&mut s, &["SUBSCRIBE", "a"]);
    assert_eq!(again.len(), 1);
    assert_eq!(reply(&again), b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:2\r\n");
}

#[test]
fn unsubscribe_all_goes_in_subscription_order_and_releases_interest() {
    let mut s = Session::new(SessionConfig::default());
    run(&mut s, &["SUBSCRIBE", "c", "a", "b"]);
    run(&mut s, &["PSUBSCRIBE", "p*"]);
    let actions = run(&mut s, &["UNSUBSCRIBE"]);
    assert_eq!(
        actions[0],
        Action::Unsubscribe {
            kind: Kind::Channel,
            topics: topics(&["c", "a", "b"])
        }
    );
    assert_eq!(
        reply(&actions),
        b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:3\r\n\
          *3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:2\r\n\
          *3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:1\r\n"
    );
    assert!(s.subscribed(), "the pattern is still held");
    assert_eq!(s.topics(Kind::Pattern), topics(&["p*"]));
}

#[test]
fn publish_and_queries_are_left_to_the_server() {
    let mut s = Session::new(SessionConfig::default());
    assert_eq!(
        run(&mut s, &["PUBLISH", "ch", "msg"]),
        vec![Action::Publish {
            kind: Kind::Channel,
            channel: Bytes::from_static(b"ch"),
            message: Bytes::from_static(b"msg")
        }]
    );
    assert_eq!(
        run(&mut s, &["SPUBLISH", "ch", "msg"]),
        vec![Action::Publish {
            kind: Kind::Shard,
            channel: Bytes::from_static(b"ch"),
            message: Bytes::from_static(b"msg")
        }]
    );
    assert_eq!(
        run(&mut s, &["pubsub", "channels", "n*"]),
        vec![Action::Query(Query::Channels {
            shard: false,
            pattern: Some(Bytes::from_static(b"n*"))
        })]
    );
    assert_eq!(
        run(&mut s, &["PUBSUB", "SHARDNUMSUB", "a", "a"]),
        vec![Action::Query(Query::NumSub {
            shard: true,
            channels: topics(&["a", "a"])
        })]
    );
    assert_eq!(
        run(&mut s, &["PUBSUB", "NUMPAT"]),
        vec![Action::Query(Query::NumPat)]
    );
}

#[test]
fn quit_closes_after_its_reply_and_the_session_then_ignores_commands() {
    let mut s = Session::new(SessionConfig::default());
    assert_eq!(
        run(&mut s, &["QUIT"]),
        vec![Action::Reply(Bytes::from_static(b"+OK\r\n")), Action::Close]
    );
    assert!(s.closed());
    assert_eq!(run(&mut s, &["PING"]), vec![]);
}

#[test]
fn http_requests_are_dropped_without_any_reply() {
    for first in ["POST", "post", "Host:", "HOST:"] {
        let mut s = Session::new(SessionConfig::default());
        assert_eq!(run(&mut s, &[first, "/"]), vec![Action::Drop], "{first}");
        assert!(s.closed());
    }
}

#[test]
fn reset_releases_every_kind_of_interest() {
    let mut s = Session::new(SessionConfig::default());
    run(&mut s, &["SUBSCRIBE", "a"]);
    run(&mut s, &["SSUBSCRIBE", "s"]);
    run(&mut s, &["PSUBSCRIBE", "p"]);
    run(&mut s, &["CLIENT", "SETNAME", "n"]);
    let actions = run(&mut s, &["RESET"]);
    assert_eq!(
        actions,
        vec![
            Action::Unsubscribe {
                kind: Kind::Channel,
                topics: topics(&["a"])
            },
            Action::Unsubscribe {
                kind: Kind::Shard,
                topics: topics(&["s"])
            },
            Action::Unsubscribe {
                kind: Kind::Pattern,
                topics: topics(&["p"])
            },
            Action::Reply(Bytes::from_static(b"+RESET\r\n")),
        ]
    );
    assert!(!s.subscribed());
    assert_eq!(s.name(), None);
}

/// RESP3 after `HELLO 3`: pushes (`>`) for confirmations, `_` for null, no subscribed-mode
/// restriction, a plain PONG; `HELLO 4` refused; `RESET` goes back to RESP2. (Byte-exact
/// agreement with redis-server is in the differential script's RESP3 cases.)
#[test]
fn hello_3_switches_to_resp3_and_reset_back() {
    let mut s = Session::new(SessionConfig::default());
    assert_eq!(
        reply(&run(&mut s, &["HELLO", "4"])),
        b"-NOPROTO unsupported protocol version\r\n"
    );
    assert_eq!(s.version(), Version::Resp2);
    let hello = reply(&run(&mut s, &["HELLO", "3"]));
    assert!(hello.starts_with(b"%7\r\n$6\r\nserver\r\n"), "{hello:?}");
    assert!(hello.windows(15).any(|w| w == b"$5\r\nproto\r\n:3\r\n"));
    assert_eq!(s.version(), Version::Resp3);
    assert_eq!(
        reply(&run(&mut s, &["SUBSCRIBE", "a"])),
        b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n"
    );
    assert_eq!(reply(&run(&mut s, &["PING"])), b"+PONG\r\n");
    assert_eq!(reply(&run(&mut s, &["CLIENT", "GETNAME"])), b"_\r\n");
    assert_eq!(
        run(&mut s, &["PUBLISH", "a", "x"]),
        vec![Action::Publish {
            kind: Kind::Channel,
            channel: Bytes::from_static(b"a"),
            message: Bytes::from_static(b"x"),
        }]
    );
    assert_eq!(
        reply(&run(&mut s, &["PUNSUBSCRIBE"])),
        b">3\r\n$12\r\npunsubscribe\r\n_\r\n:1\r\n"
    );
    run(&mut s, &["RESET"]);
    assert_eq!(s.version(), Version::Resp2);
}

#[test]
fn hello_reports_the_configured_id_and_version() {
    let mut s = Session::new(SessionConfig {
        client_id: 42,
        server_version: Bytes::from_static(b"9.9.9"),
        ..SessionConfig::default()
    });
    let r = reply(&run(&mut s, &["HELLO", "2"]));
    let text = String::from_utf8(r).unwrap();
    assert!(
        text.starts_with("*14\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n9.9.9\r\n")
    );
    assert!(text.contains("$2\r\nid\r\n:42\r\n"));
    assert!(text.ends_with("$7\r\nmodules\r\n*0\r\n"));
    assert_eq!(reply(&run(&mut s, &["CLIENT", "ID"])), b":42\r\n");
}

#[test]
fn limits_refuse_the_whole_command_before_any_change() {
    let mut s = Session::new(SessionConfig {
        topic_bytes_max: 3,
        subscriptions_max: 2,
        patterns_max: 1,
        ..SessionConfig::default()
    });
    assert_eq!(
        reply(&run(&mut s, &["SUBSCRIBE", "ok", "long"])),
        b"-ERR channel or pattern longer than 3 bytes (RINGFAN_TOPIC_BYTES_MAX)\r\n"
    );
    assert!(!s.subscribed(), "nothing of a refused command is applied");
    run(&mut s, &["SUBSCRIBE", "a"]);
    // Held and repeated topics do not count twice; channels and shard channels share the bound.
    assert_eq!(run(&mut s, &["SUBSCRIBE", "a", "b", "b"]).len(), 2);
    assert_eq!(
        reply(&run(&mut s, &["SSUBSCRIBE", "c"])),
        b"-ERR too many subscriptions on this connection: at most 2 (RINGFAN_SUBSCRIPTIONS_MAX)\r\n"
    );
    assert!(!s.is_subscribed(Kind::Shard, b"c"));
    run(&mut s, &["PSUBSCRIBE", "p"]);
    assert_eq!(
        reply(&run(&mut s, &["PSUBSCRIBE", "q"])),
        b"-ERR too many subscriptions on this connection: at most 1 (RINGFAN_PATTERNS_MAX)\r\n"
    );
}

#[test]
fn known_but_unserved_commands_read_as_unknown_outside_subscribed_mode() {
    let mut s = Session::new(SessionConfig::default());
    assert_eq!(
        reply(&run(&mut s, &["GET", "k"])),
        b"-ERR unknown command 'GET', with args beginning with: 'k' \r\n"
    );
    assert_eq!(
        reply(&run(&mut s, &["CLIENT", "LIST"])),
        b"-ERR unknown subcommand 'LIST'. Try CLIENT HELP.\r\n"
    );
}

/// Redis 7.2's `CLIENT SETINFO`, which client libraries send while connecting (7.0.15, the
/// differential reference, does not know it).
#[test]
fn client_setinfo_is_answered_as_redis_7_2() {
    let mut s = Session::new(SessionConfig::default());
    assert_eq!(
        reply(&run(&mut s, &["CLIENT", "SETINFO", "LIB-NAME", "redis-py"])),
        b"+OK\r\n"
    );
    assert_eq!(
        reply(&run(&mut s, &["client", "setinfo", "lib-ver", "5.0.1"])),
        b"+OK\r\n"
    );
    assert_eq!(
        reply(&run(&mut s, &["CLIENT", "SETINFO", "color", "x"])),
        b"-ERR Unrecognized option 'color'\r\n"
    );
    assert_eq!(
        reply(&run(&mut s, &["CLIENT", "SETINFO", "lib-name", "a b"])),
        b"-ERR lib-name cannot contain spaces, newlines or special characters.\r\n"
    );
    assert_eq!(
        reply(&run(&mut s, &["CLIENT", "SETINFO", "lib-name"])),
        b"-ERR wrong number of arguments for 'client|setinfo' command\r\n"
    );
}

/// The server's veto: a refused subscribe changes nothing and answers the veto's error.
#[test]
fn a_vetoed_subscribe_changes_nothing() {
    let mut s = Session::new(SessionConfig::default());
    let mut out = Vec::new();
    let mut seen = Vec::new();
    s.handle_with(
        &command(&["SUBSCRIBE", "a", "b", "a"]),
        &mut out,
        &mut |kind, new| {
            seen.push((kind, new.iter().map(|t| t.to_vec()).collect::<Vec<_>>()));
            Err(Bytes::from_static(b"-ERR no\r\n"))
        },
    );
    assert_eq!(
        seen,
        vec![(Kind::Channel, vec![b"a".to_vec(), b"b".to_vec()])]
    );
    assert_eq!(out, vec![Action::Reply(Bytes::from_static(b"-ERR no\r\n"))]);
    assert!(!s.subscribed());
}
