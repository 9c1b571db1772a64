//! Connection churn: thousands of short-lived connections closing every which way while a publisher
//! broadcasts. Two sentinel subscribers connected throughout must see every line, in order, and
//! never be closed: a completion applied to a reused connection slot would show up here.

mod common;

use common::*;
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

const CYCLES: usize = 5000;
const THREADS: usize = 4;
const MODES: [&str; 4] = [
    "read a line, FIN, close",
    "read a line, RST (linger 0)",
    "send a line, half-close, read to EOF",
    "close at once",
];
/// Publisher rate during the churn: 10 x 64-byte lines per ms.
const FLOOD_LINES_PER_MS: u64 = 10;

fn c_line(t: usize, k: usize) -> Vec<u8> {
    format!("c {t} {k}\n").into_bytes()
}

fn first_line(c: &mut Client, ctx: &str) -> Result<(), String> {
    match c.read_line(secs(5)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(format!("{ctx}: EOF before the first line")),
        Err(e) => Err(format!("{ctx}: first line: {e}")),
    }
}

/// One short-lived connection; `mode` picks how it ends.
fn cycle(addr: SocketAddr, t: usize, k: usize, mode: usize) -> Result<(), String> {
    let ctx = format!("churn thread {t} cycle {k} ({})", MODES[mode]);
    let mut c = Client::try_connect(addr).map_err(|e| format!("{ctx}: connect: {e}"))?;
    match mode {
        // Modes 0 and 1 first wait for a flood line: the connection is then registered and has
        // sends in flight when it goes away.
        0 => {
            first_line(&mut c, &ctx)?;
            c.half_close();
            drop(c);
        }
        1 => {
            first_line(&mut c, &ctx)?;
            c.set_linger_zero();
            drop(c);
        }
        2 => {
            let own = c_line(t, k);
            c.stream
                .write_all(&own)
                .map_err(|e| format!("{ctx}: send: {e}"))?;
            c.half_close();
            let r = c.read_to_eof(secs(5));
            if !r.end.is_eof() {
                return Err(format!(
                    "{ctx}: expected clean EOF, got {:?} after {} bytes",
                    r.end,
                    r.data.len()
                ));
            }
            // Flood lines consecutive from wherever it joined, c-lines tolerated, whole lines
            // only. Its own line at most once: whether a line sent right before the FIN is still
            // echoed to its sender is checked separately (close.rs), not here.
            let first = r
                .data
                .split_inclusive(|&b| b == b'\n')
                .find_map(parse_flood_seq);
            let mut chk = FloodCheck {
                next: first.unwrap_or(0),
                others: 0,
                allow_c: true,
            };
            chk.feed_all(&r.data).map_err(|e| format!("{ctx}: {e}"))?;
            let own_count = r
                .data
                .split_inclusive(|&b| b == b'\n')
                .filter(|l| *l == own.as_slice())
                .count();
            if own_count > 1 {
                return Err(format!("{ctx}: own line received {own_count} times"));
            }
        }
        _ => drop(c),
    }
    Ok(())
}

#[test]
fn churn_5000_connections_while_sentinels_receive_everything() {
    if !require_io_uring() {
        return;
    }
    let _g = serial();
    raise_nofile();
    let server = Server::start(&[
        ("RINGFAN_ECHO", "1"),
        ("RINGFAN_THREADS", "2"),
        ("RINGFAN_LOG", "warn"),
    ]);
    let addr = server.addr();
    let mut clients = connect_n(addr, 3);
    sync_clients(&mut clients, 0);
    let s2 = clients.pop().unwrap();
    let s1 = clients.pop().unwrap();
    let publisher = clients.pop().unwrap();
    let end_marker = b"fend\n".to_vec();
    let read_deadline = secs(60);
    let mut pub_w = publisher.writer();
    let flood = Flood::start(publisher.writer(), FLOOD_LINES_PER_MS);
    let readers: Vec<FloodReader> = [publisher, s1, s2]
        .into_iter()
        .map(|c| {
            FloodReader::spawn(
                c,
                FloodCheck::allowing_c_lines(),
                Some(end_marker.clone()),
                read_deadline,
            )
        })
        .collect();

    let t0 = Instant::now();
    let churn_deadline = secs(25);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            thread::spawn(move || -> Result<[usize; 4], String> {
                let mut done = [0usize; 4];
                for k in 0..CYCLES / THREADS {
                    if Instant::now() >= churn_deadline {
                        return Err(format!("churn thread {t}: only {k} cycles done in 25 s"));
                    }
                    let mode = (k + t) % 4;
                    cycle(addr, t, k, mode)?;
                    done[mode] += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut totals = [0usize; 4];
    let mut errors = Vec::new();
    for t in threads {
        match t.join().unwrap() {
            Ok(d) => (0..4).for_each(|m| totals[m] += d[m]),
            Err(e) => errors.push(e),
        }
    }
    let churn_time = t0.elapsed();
    eprintln!("churn: {totals:?} cycles per mode in {churn_time:?}");
    assert!(errors.is_empty(), "churn failures:\n{}", errors.join("\n"));
    assert_eq!(totals.iter().sum::<usize>(), CYCLES);

    // Sentinels and publisher: every flood line in order, never closed.
    for (i, r) in readers.iter().enumerate() {
        assert!(
            !r.is_finished(),
            "{} stopped during the churn (closed or bad data; see below)",
            ["publisher", "sentinel 1", "sentinel 2"][i]
        );
    }
    let sent = flood.stop();
    pub_w.write_all(&end_marker).unwrap();
    let mut survivors = Vec::new();
    for (i, r) in readers.into_iter().enumerate() {
        let who = ["publisher", "sentinel 1", "sentinel 2"][i];
        let r = r.join();
        assert!(r.error.is_none(), "{who}: {}", r.error.unwrap());
        assert!(
            r.saw_end_marker,
            "{who}: ended with {:?} before the end marker",
            r.end
        );
        assert_eq!(
            r.check.next, sent,
            "{who}: received {} of {sent} flood lines",
            r.check.next
        );
        survivors.push((who, r.client, r.check.others));
    }

    // The kernel's view: only the 3 survivors are left.
    server.assert_clean(3, Duration::from_secs(5), "after the churn");

    // Close the survivors. Lines of churn clients may still trail the end marker (no ordering
    // between publishers), but in total every churn line must have reached every survivor.
    for (_, c, _) in &survivors {
        c.stream.shutdown(Shutdown::Write).unwrap();
    }
    for (who, mut c, others) in survivors {
        let data = c.expect_clean_eof(secs(5), &format!("{who} after half-close"));
        let mut chk = FloodCheck {
            next: sent,
            others,
            allow_c: true,
        };
        chk.feed_all(&data)
            .unwrap_or_else(|e| panic!("{who} tail: {e}"));
        assert_eq!(chk.next, sent, "{who}: flood lines after the end marker");
        assert_eq!(
            chk.others as usize, totals[2],
            "{who}: received {} of the {} lines sent by churn clients",
            chk.others, totals[2]
        );
    }
    server.assert_clean(0, Duration::from_secs(5), "after all clients closed");
}
