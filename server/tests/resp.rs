//! The Redis-protocol listener over real sockets: answered as redis-server 7.0.15 answers, byte
//! for byte; topics across workers (the subscribe race closed, routing only to interested
//! workers, per-publisher order); the lines topic both ways; limits; close paths seen from the
//! kernel.

mod common;
#[path = "../../protocol/tests/redis/mod.rs"]
mod redis;

use common::*;
use redis::{escape, multibulk, Conn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    multibulk(&args.iter().map(|a| a.to_vec()).collect::<Vec<_>>())
}

fn start(threads: usize, env: &[(&str, &str)]) -> (Server, SocketAddr) {
    let threads = threads.to_string();
    let mut all = vec![
        ("RINGFAN_RESP_LISTEN", "127.0.0.1:0"),
        ("RINGFAN_THREADS", threads.as_str()),
        ("RINGFAN_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    all.extend_from_slice(env);
    let server = Server::start(&all);
    let addr = server.resp_addr();
    (server, addr)
}

/// Sends one command and returns its one reply frame.
fn call(c: &mut Conn, args: &[&[u8]]) -> Vec<u8> {
    c.send(&cmd(args));
    c.frames(1)
        .unwrap_or_else(|e| panic!("{:?}: {e}", escape(&cmd(args))))
}

/// The frame Redis pushes for a message on `channel`.
fn message(channel: &[u8], payload: &[u8]) -> Vec<u8> {
    cmd(&[b"message", channel, payload])
}

#[test]
fn scripted_sessions_answer_as_recorded_redis() {
    if !require_io_uring() {
        return;
    }
    let (server, addr) = start(1, &[]);
    let script = redis::load_script(&redis::cases_path());
    // Connection ids count from 1; the recording's probe had `first_client_id`. Burn the
    // difference so that CLIENT ID and HELLO answers compare too (one worker: ids follow the
    // order of connects).
    let mut id = redis::probe_client_id(addr);
    while id < script.first_client_id {
        id = redis::probe_client_id(addr);
    }
    assert_eq!(id, script.first_client_id, "connection ids moved");
    for case in &script.cases {
        let replies = redis::run_over_tcp(addr, case).unwrap_or_else(|e| panic!("ringfan: {e}"));
        redis::check_against_recording(case, &replies, "ringfan");
    }
    server.assert_clean(0, Duration::from_secs(5), "after the scripted sessions");
}

#[test]
fn lines_and_resp_share_the_lines_topic() {
    if !require_io_uring() {
        return;
    }
    let (server, addr) = start(2, &[]);
    let mut readers = connect_n(server.addr(), 4);
    let mut line_pub = Client::connect(server.addr());
    sync_clients_opts(&mut readers, 0, false);
    let mut sub = Conn::connect(addr);
    assert_eq!(
        call(&mut sub, &[b"SUBSCRIBE", b"lines"]),
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nlines\r\n:1\r\n"
    );
    // Every line connection is a subscriber of `lines`.
    let mut resp_pub = Conn::connect(addr);
    assert!(wait_until(secs(5), || {
        call(&mut resp_pub, &[b"PUBSUB", b"NUMSUB", b"lines"]) == b"*2\r\n$5\r\nlines\r\n:6\r\n"
    }));
    line_pub.send(b"one\ntwo\r\n");
    assert_eq!(
        sub.frames(2).unwrap(),
        [message(b"lines", b"one"), message(b"lines", b"two\r")].concat()
    );
    // PUBLISH on `lines` reaches line clients as one line each, and counts them.
    assert_eq!(
        call(&mut resp_pub, &[b"PUBLISH", b"lines", b"from redis"]),
        b":6\r\n"
    );
    for r in readers.iter_mut() {
        assert_eq!(r.expect_line(secs(5), "line"), b"one\n");
        assert_eq!(r.expect_line(secs(5), "line"), b"two\r\n");
        assert_eq!(r.expect_line(secs(5), "line"), b"from redis\n");
    }
    assert_eq!(sub.frames(1).unwrap(), message(b"lines", b"from redis"));
    // A payload holding a newline would reach line clients as two lines: it is not sent to
    // them (counted), while RESP subscribers get it whole.
    assert_eq!(
        call(&mut resp_pub, &[b"PUBLISH", b"lines", b"a\nb"]),
        b":6\r\n"
    );
    assert_eq!(sub.frames(1).unwrap(), message(b"lines", b"a\nb"));
    assert_eq!(
        call(&mut resp_pub, &[b"PUBLISH", b"lines", b"after"]),
        b":6\r\n"
    );
    for r in readers.iter_mut() {
        assert_eq!(r.expect_line(secs(5), "line"), b"after\n");
    }
    let url = metrics_url(&server);
    assert!(wait_until(secs(5), || {
        scrape(&url).get("ringfan_line_frames_skipped_total") == Some(&5.0)
    }));
    let _ = line_pub;
}

/// The subscribe race: once a client has its confirmation, a PUBLISH sent after it on any
/// connection of any worker reaches it. Thousands of rounds over connections spread across
/// both workers, each on a fresh channel, with PUBLISH's count checked too.
#[test]
fn a_confirmed_subscription_gets_every_later_publish_on_any_worker() {
    if !require_io_uring() {
        return;
    }
    const ROUNDS: usize = 3000;
    let (server, addr) = start(2, &[]);
    let mut subs: Vec<Conn> = (0..8).map(|_| Conn::connect(addr)).collect();
    let mut pubs: Vec<Conn> = (0..8).map(|_| Conn::connect(addr)).collect();
    for i in 0..ROUNDS {
        let channel = format!("race.{i}").into_bytes();
        let (s, p) = (i % subs.len(), (i * 3 + i / 8) % pubs.len());
        call(&mut subs[s], &[b"SUBSCRIBE", &channel]);
        let n = call(&mut pubs[p], &[b"PUBLISH", &channel, b"x"]);
        assert_eq!(n, b":1\r\n", "round {i}: PUBLISH counted wrong");
        assert_eq!(
            subs[s].frames(1).unwrap(),
            message(&channel, b"x"),
            "round {i}"
        );
        call(&mut subs[s], &[b"UNSUBSCRIBE", &channel]);
    }
    // Rounds whose two connections sit on different workers crossed the hub; every other
    // message was offered to the other worker and skipped (no subscriber there).
    let url = metrics_url(&server);
    let hub = || {
        let m = scrape(&url);
        (
            m["ringfan_hub_messages_total{outcome=\"sent\"}"],
            m["ringfan_hub_messages_total{outcome=\"skipped\"}"],
        )
    };
    assert!(
        wait_until(secs(5), || {
            let (sent, skipped) = hub();
            sent + skipped == ROUNDS as f64
        }),
        "hub counts {:?}",
        hub()
    );
    assert!(hub().0 > 0.0, "no round crossed workers: {:?}", hub());
}

/// A worker with no subscriber for a topic is sent nothing for it; per-publisher order holds
/// on every worker, for RESP and line subscribers alike.
#[test]
fn messages_cross_only_to_interested_workers_in_publisher_order() {
    if !require_io_uring() {
        return;
    }
    const PER_PUBLISHER: usize = 2000;
    let (server, addr) = start(2, &[]);
    let url = metrics_url(&server);
    // Nobody subscribes to `nobody`: nothing crosses for it, whatever publishes.
    let mut publishers: Vec<Conn> = (0..4).map(|_| Conn::connect(addr)).collect();
    for (k, p) in publishers.iter_mut().enumerate() {
        for i in 0..250 {
            let payload = format!("{k}:{i}");
            assert_eq!(
                call(p, &[b"PUBLISH", b"nobody", payload.as_bytes()]),
                b":0\r\n"
            );
        }
    }
    assert!(wait_until(secs(5), || {
        scrape(&url)["ringfan_hub_messages_total{outcome=\"skipped\"}"] == 1000.0
    }));
    let m = scrape(&url);
    assert_eq!(m["ringfan_hub_messages_total{outcome=\"sent\"}"], 0.0);
    assert_eq!(m["ringfan_hub_batches_sent_total"], 0.0);

    let mut subs: Vec<Conn> = (0..6).map(|_| Conn::connect(addr)).collect();
    for s in subs.iter_mut() {
        call(s, &[b"SUBSCRIBE", b"t"]);
    }
    let mut psub = Conn::connect(addr);
    call(&mut psub, &[b"PSUBSCRIBE", b"t*"]);
    // Pipelined: every publisher sends all its messages at once, the replies read after.
    for (k, p) in publishers.iter_mut().enumerate() {
        let mut all = Vec::new();
        for i in 0..PER_PUBLISHER {
            all.extend(cmd(&[b"PUBLISH", b"t", format!("{k}:{i}").as_bytes()]));
        }
        p.send(&all);
    }
    for p in publishers.iter_mut() {
        let replies = p.frames(PER_PUBLISHER).unwrap();
        assert_eq!(replies, b":7\r\n".repeat(PER_PUBLISHER));
    }
    let total = PER_PUBLISHER * publishers.len();
    let check_order = |frames: Vec<u8>, prefix: usize, who: &str| {
        let mut next: HashMap<usize, usize> = HashMap::new();
        for frame in redis::split_frames(&frames) {
            let payload = frame.rsplit(|&b| b == b'\n').nth(1).unwrap();
            let payload = std::str::from_utf8(&payload[..payload.len() - 1]).unwrap();
            let (k, i) = payload.split_once(':').unwrap();
            let (k, i): (usize, usize) = (k.parse().unwrap(), i.parse().unwrap());
            let want = next.entry(k).or_insert(0);
            assert_eq!(i, *want, "{who}: publisher {k} out of order");
            *want += 1;
        }
        assert_eq!(next.values().sum::<usize>(), total, "{who}: {prefix}");
    };
    for (n, s) in subs.iter_mut().enumerate() {
        check_order(s.frames(total).unwrap(), n, "channel subscriber");
    }
    check_order(psub.frames(total).unwrap(), 0, "pattern subscriber");
    assert!(wait_until(secs(5), || {
        scrape(&url)["ringfan_hub_messages_total{outcome=\"sent\"}"] > 0.0
    }));
}

#[test]
fn topic_limit_refuses_the_whole_subscribe_and_names_the_variable() {
    if !require_io_uring() {
        return;
    }
    let (server, addr) = start(1, &[("RINGFAN_TOPICS_MAX", "3")]);
    let mut a = Conn::connect(addr);
    let mut b = Conn::connect(addr);
    a.send(&cmd(&[b"SUBSCRIBE", b"x", b"y"]));
    a.frames(2).unwrap();
    // `x` exists already: joining it takes no new topic.
    b.send(&cmd(&[b"SUBSCRIBE", b"x", b"z"]));
    b.frames(2).unwrap();
    assert_eq!(
        call(&mut b, &[b"PSUBSCRIBE", b"p*", b"x"]),
        &b"-ERR too many channels and patterns on this server: at most 3 per worker (RINGFAN_TOPICS_MAX)\r\n"[..]
    );
    // Nothing of the refused command took effect.
    assert_eq!(call(&mut b, &[b"PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    assert_eq!(
        call(&mut b, &[b"PUNSUBSCRIBE"]),
        b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:2\r\n"
    );
    let url = metrics_url(&server);
    assert!(wait_until(secs(5), || {
        let m = scrape(&url);
        m["ringfan_topics_refused_total"] == 1.0 && m["ringfan_topics"] == 3.0
    }));
}

/// Close paths of RESP connections, checked in the kernel's socket table and fd list.
#[test]
fn resp_close_paths_leave_no_close_wait_and_no_fd() {
    if !require_io_uring() {
        return;
    }
    let (server, addr) = start(2, &[("RINGFAN_CLOSE_TIMEOUT_MS", "2000")]);
    let mut publisher = Conn::connect(addr);
    // QUIT: +OK, then the server's FIN.
    let mut q = Conn::connect(addr);
    call(&mut q, &[b"SUBSCRIBE", b"c"]);
    q.send(&cmd(&[b"QUIT"]));
    assert_eq!(q.read_to_end().unwrap(), b"+OK\r\n");
    // Malformed RESP: Redis's error, then FIN.
    let mut bad = Conn::connect(addr);
    bad.send(b"*1\r\n$x\r\n");
    assert_eq!(
        bad.read_to_end().unwrap(),
        b"-ERR Protocol error: invalid bulk length\r\n"
    );
    // The peer's FIN while subscribed: the subscription goes, the server closes too.
    let mut fin = Conn::connect(addr);
    call(&mut fin, &[b"SUBSCRIBE", b"c"]);
    fin.shutdown_write();
    assert_eq!(fin.read_to_end().unwrap(), b"");
    // A reset while subscribed.
    let rst = Conn::connect(addr);
    let mut rst = rst;
    call(&mut rst, &[b"PSUBSCRIBE", b"*"]);
    set_linger_zero(rst.stream());
    drop(rst);
    // An HTTP request (Redis's cross-protocol guard): dropped without a reply.
    let mut http = Conn::connect(addr);
    http.send(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(http.read_to_end().unwrap(), b"");
    drop((q, bad, fin, http));
    assert!(
        wait_until(secs(5), || call(&mut publisher, &[b"PUBLISH", b"c", b"x"])
            == b":0\r\n"),
        "subscriptions of closed connections still counted"
    );
    server.assert_clean(1, Duration::from_secs(5), "after the RESP close paths");
    drop(publisher);
    server.assert_clean(0, Duration::from_secs(5), "all closed");
}

/// A RESP subscriber that stops reading is evicted as a line subscriber is (queue flushed as
/// far as it goes, then closed), while a client that only publishes and never reads its
/// replies is never evicted: its input waits instead.
#[test]
fn slow_resp_subscriber_is_evicted_but_a_publisher_never_is() {
    if !require_io_uring() {
        return;
    }
    let (server, addr) = start(
        1,
        &[
            ("RINGFAN_SEND_QUEUE_BYTES_MAX", "262144"),
            ("RINGFAN_CLOSE_TIMEOUT_MS", "500"),
            ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "0"),
        ],
    );
    let mut stalled = Conn::connect(addr);
    set_rcvbuf(stalled.stream(), 4096);
    call(&mut stalled, &[b"SUBSCRIBE", b"big"]);
    let mut reader = Conn::connect(addr);
    call(&mut reader, &[b"SUBSCRIBE", b"big"]);
    let mut publisher = Conn::connect(addr);
    let payload = vec![b'p'; 1000];
    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(cmd(&[b"PUBLISH", b"big", &payload]));
    }
    // 4 MiB of messages: far past the stalled subscriber's 256 KiB.
    for _ in 0..40 {
        publisher.send(&batch);
        publisher.frames(100).unwrap();
        reader.frames(100).unwrap();
    }
    let url = metrics_url(&server);
    assert!(wait_until(secs(5), || scrape(&url)
        .get("ringfan_subscribers_evicted_total")
        == Some(&1.0)));
    // A publisher that never reads its replies: 20,000 PUBLISH pipelined (about 100 KiB of
    // replies it leaves unread, over half its queue limit) is held back, not evicted.
    let mut mute = Conn::connect(addr);
    set_rcvbuf(mute.stream(), 4096);
    let writer = std::thread::spawn({
        let mut s = mute.stream().try_clone().unwrap();
        move || {
            use std::io::Write;
            let one = cmd(&[b"PUBLISH", b"nobody", b"x"]);
            for _ in 0..40_000 {
                if s.write_all(&one).is_err() {
                    return false;
                }
            }
            true
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        scrape(&url)["ringfan_subscribers_evicted_total"],
        1.0,
        "the publisher was evicted"
    );
    // Reading its replies lets it go on to the end (in parts: each part gets its own time
    // limit, so a loaded machine does not fail it).
    for _ in 0..8 {
        let replies = mute.frames(5_000).unwrap();
        assert_eq!(replies, b":0\r\n".repeat(5_000));
    }
    assert!(writer.join().unwrap(), "the publisher's writes failed");
    drop((stalled, reader, publisher, mute));
    server.assert_clean(0, Duration::from_secs(5), "after eviction");
}

/// A RESP3 subscriber whose own `PUBLISH` puts it over its queue limit is evicted by that
/// publish, in the middle of what it sent in one write: the commands after it are not carried
/// out (as Redis stops reading a client it is closing). They used to be: a `SUBSCRIBE` there
/// joined a topic for a connection no longer subscribed, which stayed in the topic after the
/// connection was freed; an `UNSUBSCRIBE` there found its topic already dropped and panicked the
/// worker, ending the server.
#[test]
fn commands_after_a_publish_that_evicts_its_sender_are_not_carried_out() {
    if !require_io_uring() {
        return;
    }
    let (mut server, addr) = start(
        1,
        &[
            ("RINGFAN_SEND_QUEUE_BYTES_MAX", "1000"),
            ("RINGFAN_SLOW_CONSUMER_TIMEOUT_MS", "0"),
        ],
    );
    let mut watcher = Conn::connect(addr);
    call(&mut watcher, &[b"SUBSCRIBE", b"after"]);
    let mut other = Conn::connect(addr);
    // Its own message (2 KB) does not fit its 1000-byte queue: evicted by its own publish.
    let big = vec![b'x'; 2000];
    let evicting = |c: &mut Conn, then: &[&[&[u8]]]| {
        call(c, &[b"HELLO", b"3"]);
        c.send(&cmd(&[b"SUBSCRIBE", b"big", b"held"]));
        c.frames(2).unwrap();
        let mut one_write = cmd(&[b"PUBLISH", b"big", &big]);
        for args in then {
            one_write.extend(cmd(args));
        }
        c.send(&one_write);
        assert_eq!(
            c.read_to_end().unwrap(),
            b"",
            "the evicted connection got replies to what it sent after its eviction"
        );
    };
    // A SUBSCRIBE and a PUBLISH after the evicting one.
    let mut first = Conn::connect(addr);
    evicting(
        &mut first,
        &[&[b"SUBSCRIBE", b"joined"], &[b"PUBLISH", b"after", b"late"]],
    );
    // An UNSUBSCRIBE after it.
    let mut second = Conn::connect(addr);
    evicting(
        &mut second,
        &[&[b"UNSUBSCRIBE", b"held"], &[b"PUBLISH", b"after", b"late"]],
    );
    assert!(
        server.is_running(),
        "the server died: {}",
        server.describe()
    );
    // Neither late PUBLISH was delivered: the watcher's next message is this one.
    call(&mut other, &[b"PUBLISH", b"after", b"marker"]);
    assert_eq!(
        watcher.frames(1).unwrap(),
        message(b"after", b"marker"),
        "a command sent after an evicting publish was carried out"
    );
    // No topic keeps a member of the closed connections.
    let numsub = [b"PUBSUB", b"NUMSUB", &b"big"[..], b"held", b"joined"];
    assert_eq!(
        call(&mut other, &numsub),
        b"*6\r\n$3\r\nbig\r\n:0\r\n$4\r\nheld\r\n:0\r\n$6\r\njoined\r\n:0\r\n",
        "topics kept members of evicted connections"
    );
    drop((watcher, other, first, second));
    server.assert_clean(0, Duration::from_secs(5), "after the evictions");
}
