//! ringfan's RESP pieces against redis-server 7.0.15, byte for byte.
//!
//! - `sessions_answer_as_recorded_redis`: the scripted pub/sub sessions of
//!   `tests/redis/pubsub_cases.txt` (Redis's own tests/unit/pubsub.tcl and pubsubshard.tcl cases,
//!   plus patterns, errors, inline commands, RESET, QUIT, binary payloads) run on
//!   `resp::Session`s; every reply must equal what redis-server sent when recorded.
//! - `redis_server_still_answers_as_recorded`: the same script against a live redis-server, so
//!   the recording is known to be Redis's (skipped, saying so, without redis-server).
//! - `glob_agrees_with_redis_server`: generated patterns and channels; which channels each
//!   pattern selects, asked of redis-server with `PUBSUB CHANNELS`.
//! - `decoder_and_session_agree_with_redis_server_on_generated_input`: generated request
//!   streams (both request types, corrupted, cut), each sent whole; `resp::Decoder` and
//!   `resp::Session` must answer them as redis-server does, protocol errors included.
//!
//! `RINGFAN_RECORD_REDIS_CASES=1` re-records the script's replies from redis-server.

mod redis;

use std::time::{Duration, Instant};

use redis::*;

fn skip(why: &str) {
    eprintln!("SKIPPED: {why}");
}

#[test]
fn sessions_answer_as_recorded_redis() {
    let script = load_script(&cases_path());
    assert!(script.cases.len() >= 20, "the script lost its cases");
    // Connection ids as redis-server handed them out: the probe, then each case's clients.
    let mut next_id = script.first_client_id + 1;
    for case in &script.cases {
        let replies = run_on_sessions(case, next_id).unwrap_or_else(|e| panic!("{e}"));
        check_against_recording(case, &replies, "resp::Session");
        next_id += case.clients() as u64;
    }
}

#[test]
fn redis_server_still_answers_as_recorded() {
    let server = match start_redis() {
        Ok(s) => s,
        Err(why) => return skip(&why),
    };
    let script = load_script(&cases_path());
    let first_client_id = probe_client_id(server.addr);
    let mut all = Vec::new();
    for case in &script.cases {
        let replies =
            run_over_tcp(server.addr, case).unwrap_or_else(|e| panic!("redis-server: {e}"));
        all.extend(replies.clone());
        if std::env::var_os("RINGFAN_RECORD_REDIS_CASES").is_none() {
            check_against_recording(case, &replies, "redis-server");
        }
    }
    if std::env::var_os("RINGFAN_RECORD_REDIS_CASES").is_some() {
        write_recording(&cases_path(), &script, first_client_id, &all);
        eprintln!(
            "recorded {} replies into {}",
            all.len(),
            cases_path().display()
        );
    } else {
        assert_eq!(
            first_client_id, script.first_client_id,
            "connection ids moved: re-record"
        );
    }
}

/// A small deterministic generator, so that a failure names its case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick(&mut self, from: &[u8]) -> u8 {
        from[(self.next() % from.len() as u64) as usize]
    }
}

#[test]
fn glob_agrees_with_redis_server() {
    let server = match start_redis() {
        Ok(s) => s,
        Err(why) => return skip(&why),
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Subjects over a small alphabet (so patterns hit), with the bytes where C's signed char
    // and the class syntax matter.
    let subject_bytes: &[u8] = b"ab-]^\\*?[\x00\x7f\x80\xff";
    let pattern_bytes: &[u8] = b"ab-]^\\*?[\x80\xff";
    let mut channels: Vec<Vec<u8>> = (0..300)
        .map(|_| {
            let len = 1 + rng.next() % 5;
            (0..len).map(|_| rng.pick(subject_bytes)).collect()
        })
        .collect();
    // Redis never matches the empty channel, not even with `*`.
    channels.push(Vec::new());
    channels.sort();
    channels.dedup();

    let mut subscriber = Conn::connect(server.addr);
    let mut subscribe = vec![b"SUBSCRIBE".to_vec()];
    subscribe.extend(channels.iter().cloned());
    subscriber.send(&multibulk(&subscribe));
    subscriber.frames(channels.len()).expect("subscribed");

    let mut asker = Conn::connect(server.addr);
    let started = Instant::now();
    let mut checked = 0;
    for _ in 0..1500 {
        let len = 1 + rng.next() % 6;
        let pattern: Vec<u8> = (0..len).map(|_| rng.pick(pattern_bytes)).collect();
        asker.send(&multibulk(&[
            b"PUBSUB".to_vec(),
            b"CHANNELS".to_vec(),
            pattern.clone(),
        ]));
        let reply = asker.frames(1).expect("PUBSUB CHANNELS");
        let mut redis: Vec<Vec<u8>> =
            split_frames(&reply[reply.iter().position(|&b| b == b'\n').unwrap() + 1..])
                .into_iter()
                .map(|f| {
                    let start = f.iter().position(|&b| b == b'\n').unwrap() + 1;
                    f[start..f.len() - 2].to_vec()
                })
                .collect();
        redis.sort();
        let ours: Vec<Vec<u8>> = channels
            .iter()
            .filter(|c| ringfan_protocol::glob::matches(&pattern, c))
            .cloned()
            .collect();
        assert_eq!(ours, redis, "pattern {:?}", escape(&pattern));
        checked += 1;
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    eprintln!(
        "{checked} patterns x {} channels agree with redis-server",
        channels.len()
    );
}

/// `reply` as frames, each run of channel or shard-channel unsubscribe confirmations in
/// a canonical order: Redis confirms an unsubscribe-all in its hash table's random order.
fn unordered_unsubscribes(reply: &[u8]) -> Vec<Vec<u8>> {
    let unsubscribe = |f: &[u8]| {
        f.starts_with(b"*3\r\n$11\r\nunsubscribe\r\n")
            || f.starts_with(b"*3\r\n$12\r\nsunsubscribe\r\n")
    };
    let mut out = Vec::new();
    let mut run: Vec<Vec<u8>> = Vec::new();
    for frame in split_frames(reply)
        .into_iter()
        .chain(std::iter::once(Vec::new()))
    {
        if !frame.is_empty() && unsubscribe(&frame) {
            run.push(frame);
            continue;
        }
        if !run.is_empty() {
            out.extend(normalize(&run.concat(), Order::Frames));
            run.clear();
        }
        out.push(frame);
    }
    out
}

/// One generated request stream: served commands (any case), multibulk or inline, with now and
/// then a corrupted, inserted or cut byte. One channel name per kind, so that no reply depends
/// on the order of Redis's hash tables.
fn generated_input(rng: &mut Rng) -> Vec<u8> {
    const NAMES: &[&str] = &[
        "PING",
        "ECHO",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PSUBSCRIBE",
        "PUNSUBSCRIBE",
        "SSUBSCRIBE",
        "SUNSUBSCRIBE",
        "PUBLISH",
        "SPUBLISH",
        "PUBSUB",
        "RESET",
        "XNOPE",
        "QUIT",
    ];
    const ARGS: &[&[u8]] = &[
        b"c\0\r\n",
        b"c*",
        b"*",
        b"[c]?",
        b"",
        b"x y",
        b"\"q\"",
        b"'",
        b"numsub",
        b"CHANNELS",
        b"numpat",
        b"shardnumsub",
        b"\xff\x00",
        b"\\x41",
    ];
    let mut out = Vec::new();
    for _ in 0..1 + rng.next() % 5 {
        let mut name = NAMES[(rng.next() % NAMES.len() as u64) as usize]
            .as_bytes()
            .to_vec();
        if rng.next().is_multiple_of(3) {
            name.make_ascii_lowercase();
        }
        let mut args = vec![name];
        for _ in 0..rng.next() % 4 {
            args.push(ARGS[(rng.next() % ARGS.len() as u64) as usize].to_vec());
        }
        if rng.next().is_multiple_of(3) {
            // Inline: arguments that need no quoting, or quoted as sdssplitargs reads them.
            let words: Vec<Vec<u8>> = args
                .iter()
                .map(|a| {
                    if !a.is_empty()
                        && a.iter()
                            .all(|b| b.is_ascii_alphanumeric() || b"*[]?".contains(b))
                    {
                        a.clone()
                    } else {
                        let hex: Vec<u8> = a
                            .iter()
                            .flat_map(|b| format!("\\x{b:02x}").into_bytes())
                            .collect();
                        [b"\"".to_vec(), hex, b"\"".to_vec()].concat()
                    }
                })
                .collect();
            out.extend(words.join(&b' '));
            out.extend(if rng.next().is_multiple_of(2) {
                &b"\r\n"[..]
            } else {
                b"\n"
            });
        } else {
            out.extend(multibulk(&args));
        }
    }
    for _ in 0..rng.next() % 3 {
        if out.is_empty() {
            break;
        }
        let at = (rng.next() % out.len() as u64) as usize;
        match rng.next() % 4 {
            0 => out[at] = rng.next() as u8,
            1 => out.insert(at, rng.pick(b"*$\r\n\0\"'-0 ")),
            2 => out.truncate(at),
            _ => out[at] = rng.pick(b"*$\r\n\0\"'-0 "),
        }
    }
    out
}

#[test]
fn decoder_and_session_agree_with_redis_server_on_generated_input() {
    let server = match start_redis() {
        Ok(s) => s,
        Err(why) => return skip(&why),
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let cases = 4000;
    for i in 0..cases {
        let input = generated_input(&mut rng);
        // Redis: everything in one write, then our end of the stream; its replies up to its close.
        let mut conn = Conn::connect(server.addr);
        conn.send(&input);
        conn.shutdown_write();
        let redis = conn
            .read_to_end()
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        // Ours: the same bytes in one read.
        let mut hub = SimHub::new(1, 0);
        hub.send(0, &input);
        let ours = hub.take_output(0);
        assert_eq!(
            unordered_unsubscribes(&ours),
            unordered_unsubscribes(&redis),
            "case {i}: input {:?}",
            escape(&input)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    eprintln!("{cases} generated request streams answered as redis-server answers them");
}
