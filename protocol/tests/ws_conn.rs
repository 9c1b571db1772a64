//! The WebSocket connection state machine: handshake, open, closing, closed, and the actions
//! each input asks of the server. Property test: any input never panics, and nothing is asked
//! after `Shutdown`.

use bytes::Bytes;
use proptest::prelude::*;
use ringfan_protocol::ws::{self, Action, Phase, WsConfig, WsConn};

const MASK: [u8; 4] = [1, 2, 3, 4];

fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![first, 0x80 | payload.len() as u8];
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

fn close_payload(code: u16) -> Vec<u8> {
    code.to_be_bytes().to_vec()
}

const UPGRADE: &[u8] = b"GET /prices HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn config(publish: bool) -> WsConfig {
    WsConfig {
        header_bytes_max: 8192,
        message_bytes_max: 1000,
        publish,
        lines_topic: Bytes::from_static(b"lines"),
    }
}

fn input(conn: &mut WsConn, bytes: &[u8]) -> Vec<Action> {
    let mut actions = Vec::new();
    conn.on_input(bytes, &mut actions);
    actions
}

/// A connection past its handshake.
fn open(publish: bool) -> WsConn {
    let mut conn = WsConn::new(&config(publish));
    let actions = input(&mut conn, UPGRADE);
    assert!(matches!(&actions[0], Action::Send(r) if r.starts_with(b"HTTP/1.1 101 ")));
    assert_eq!(actions[1], Action::Subscribe(Bytes::from_static(b"prices")));
    assert_eq!(actions.len(), 2);
    assert_eq!(conn.phase(), Phase::Open);
    conn
}

fn send(frame: Bytes) -> Action {
    Action::Send(frame)
}

#[test]
fn handshake_then_messages_are_published() {
    let mut conn = open(true);
    let mut frames = client_frame(0x81, b"hi");
    frames.extend(client_frame(0x82, b"\x00\xFF"));
    assert_eq!(
        input(&mut conn, &frames),
        vec![
            Action::Publish {
                text: true,
                payload: Bytes::from_static(b"hi")
            },
            Action::Publish {
                text: false,
                payload: Bytes::from_static(b"\x00\xFF")
            },
        ]
    );
}

#[test]
fn frames_pipelined_behind_the_request_are_decoded() {
    let mut conn = WsConn::new(&config(true));
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(client_frame(0x89, b"p"));
    let actions = input(&mut conn, &bytes);
    assert_eq!(actions.len(), 3);
    assert_eq!(actions[2], send(ws::pong_frame(b"p")));
}

#[test]
fn publishing_off_fails_a_message_with_1008() {
    let mut conn = open(false);
    let actions = input(&mut conn, &client_frame(0x81, b"hi"));
    let [Action::Send(close), Action::Shutdown] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(&close[..4], &[0x88, close.len() as u8 - 2, 0x03, 0xF0]); // 1008
    assert_eq!(conn.phase(), Phase::Closed);

    // Refused at the first two bytes of the frame: a subscriber that may not publish never makes
    // the server hold up to message_bytes_max of a message it would refuse anyway.
    for first in [0x01u8, 0x82] {
        let mut conn = open(false);
        let actions = input(&mut conn, &[first, 0x80 | 126]);
        assert!(
            matches!(&actions[..], [Action::Send(c), Action::Shutdown] if c[2..4] == [0x03, 0xF0]),
            "{first:#x}: {actions:?}"
        );
    }
    // Control frames are still served.
    let mut conn = open(false);
    assert_eq!(
        input(&mut conn, &client_frame(0x89, b"p")),
        vec![send(ws::pong_frame(b"p"))]
    );
}

#[test]
fn nothing_follows_a_failure_in_the_same_input() {
    let mut conn = open(false);
    let mut frames = client_frame(0x81, b"hi");
    frames.extend(client_frame(0x89, b"p"));
    frames.extend(client_frame(0x88, &close_payload(1000)));
    let actions = input(&mut conn, &frames);
    assert!(
        matches!(&actions[..], [Action::Send(c), Action::Shutdown] if c[2..4] == [0x03, 0xF0]),
        "{actions:?}"
    );
}

#[test]
fn ping_is_answered_pong_is_reported() {
    let mut conn = open(true);
    assert_eq!(
        input(&mut conn, &client_frame(0x89, b"abc")),
        vec![send(ws::pong_frame(b"abc"))]
    );
    assert_eq!(
        input(&mut conn, &client_frame(0x8A, b"7")),
        vec![Action::Pong(Bytes::from_static(b"7"))]
    );
    let mut actions = Vec::new();
    assert!(conn.ping(b"1", &mut actions));
    assert_eq!(actions, vec![send(ws::ping_frame(b"1"))]);
}

#[test]
fn peer_close_is_echoed_then_the_write_half_ends() {
    let mut conn = open(true);
    assert_eq!(
        input(&mut conn, &client_frame(0x88, &close_payload(1001))),
        vec![send(ws::close_frame(1001, "")), Action::Shutdown]
    );
    assert_eq!(conn.phase(), Phase::Closed);
    assert!(input(&mut conn, &client_frame(0x81, b"late")).is_empty());
    // No status code: answered with 1000.
    let mut conn = open(true);
    assert_eq!(
        input(&mut conn, &client_frame(0x88, b"")),
        vec![send(ws::close_frame(1000, "")), Action::Shutdown]
    );
}

#[test]
fn server_close_waits_for_the_peers_close_sending_nothing_more() {
    let mut conn = open(true);
    let mut actions = Vec::new();
    conn.close(1001, "shutting down", &mut actions);
    assert_eq!(actions, vec![send(ws::close_frame(1001, "shutting down"))]);
    assert_eq!(conn.phase(), Phase::Closing);
    // A second close sends nothing.
    let mut again = Vec::new();
    conn.close(1001, "again", &mut again);
    assert!(again.is_empty());
    // Data and pings in flight are dropped, pongs still reported, no ping of ours.
    let mut more = client_frame(0x81, b"in flight");
    more.extend(client_frame(0x89, b"p"));
    assert!(input(&mut conn, &more).is_empty());
    assert!(!conn.ping(b"x", &mut Vec::new()));
    assert_eq!(
        input(&mut conn, &client_frame(0x88, &close_payload(1001))),
        vec![Action::Shutdown]
    );
    assert_eq!(conn.phase(), Phase::Closed);
}

#[test]
fn protocol_errors_send_their_code_then_shut_down() {
    for (bytes, code) in [
        (vec![0x81u8, 0x01, b'x'], 1002u16), // unmasked
        (client_frame(0xC1, b"x"), 1002),    // RSV1 set
        (client_frame(0x81, b"\xFF"), 1007), // not UTF-8
    ] {
        let mut conn = open(true);
        let actions = input(&mut conn, &bytes);
        let [Action::Send(sent), Action::Shutdown] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(&sent[2..4], &code.to_be_bytes(), "code {code}");
    }
    // Over message_bytes_max (1000): 1009 at the header.
    let mut conn = open(true);
    let header = [0x82u8, 0x80 | 126, 0x03, 0xE9, 1, 2, 3, 4];
    let actions = input(&mut conn, &header);
    assert!(matches!(&actions[..], [Action::Send(c), Action::Shutdown] if c[2..4] == [0x03, 0xF1]));
    // A failure while closing: no second close frame, only the FIN.
    let mut conn = open(true);
    conn.close(1001, "", &mut Vec::new());
    assert_eq!(input(&mut conn, &[0x81, 0x01]), vec![Action::Shutdown]);
}

#[test]
fn refused_upgrades_and_the_handshake_deadline() {
    let mut conn = WsConn::new(&config(true));
    let bad = String::from_utf8(UPGRADE.to_vec())
        .unwrap()
        .replace("Version: 13", "Version: 7");
    let actions = input(&mut conn, bad.as_bytes());
    assert!(
        matches!(&actions[..], [Action::Send(r), Action::Shutdown] if r.starts_with(b"HTTP/1.1 426 "))
    );
    assert_eq!(conn.phase(), Phase::Closed);

    let mut conn = WsConn::new(&config(true));
    assert!(input(&mut conn, &UPGRADE[..20]).is_empty());
    assert_eq!(conn.phase(), Phase::Handshake);
    assert_eq!(conn.buffered_bytes(), 20);
    let mut actions = Vec::new();
    conn.on_handshake_timeout(&mut actions);
    assert_eq!(
        actions,
        vec![send(ws::Refusal::timeout().response), Action::Shutdown]
    );
    // Shutting the server down during a handshake: nothing to close but the connection.
    let mut conn = WsConn::new(&config(true));
    let mut actions = Vec::new();
    conn.close(1001, "", &mut actions);
    assert_eq!(actions, vec![Action::Shutdown]);
}

fn arbitrary_input() -> impl Strategy<Value = Vec<Vec<u8>>> {
    // Mostly well-formed first bytes (data, continuation, close with a valid code, ping, pong), so
    // that sequences of valid frames are common; any byte now and then.
    let first = prop_oneof![
        6 => prop::sample::select(vec![0x81u8, 0x82, 0x01, 0x00, 0x80, 0x88, 0x89, 0x8A]),
        1 => any::<u8>(),
    ];
    let frame = (first, prop::collection::vec(any::<u8>(), 0..130)).prop_map(|(b0, mut p)| {
        p.truncate(125);
        if b0 == 0x88 && p.len() >= 2 && p[0] != 0x03 {
            p[..2].copy_from_slice(&1000u16.to_be_bytes());
            p.truncate(2);
        }
        client_frame(b0, &p)
    });
    // One read often holds several frames: events after a failure in the same read matter.
    let frames = prop::collection::vec(frame, 1..4).prop_map(|f| f.concat());
    let chunk = prop_oneof![
        3 => frames,
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(chunk, 0..10)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_input_never_panics_and_nothing_follows_shutdown(
        publish in any::<bool>(),
        chunks in arbitrary_input(),
        close_after in prop::option::of(0usize..10),
    ) {
        let mut conn = WsConn::new(&config(publish));
        let mut actions = input(&mut conn, UPGRADE);
        for (i, chunk) in chunks.iter().enumerate() {
            if close_after == Some(i) {
                conn.close(1001, "bye", &mut actions);
            }
            conn.on_input(chunk, &mut actions);
        }
        let shutdowns = actions.iter().filter(|a| **a == Action::Shutdown).count();
        prop_assert!(shutdowns <= 1);
        if let Some(at) = actions.iter().position(|a| *a == Action::Shutdown) {
            prop_assert_eq!(at, actions.len() - 1, "{:?}", &actions[at..]);
            prop_assert_eq!(conn.phase(), Phase::Closed);
        }
        // Every frame sent is a close frame at most once.
        let closes = actions.iter().filter(|a| matches!(a, Action::Send(b) if b[0] == 0x88)).count();
        prop_assert!(closes <= 1);
    }
}

#[test]
fn an_idle_connection_is_small() {
    // Every WebSocket subscriber holds one; an idle one holds no heap beyond it (the decoder's
    // buffers are released between messages). 152 bytes on x86-64 when this was written; the
    // budget for an idle WebSocket subscriber, everything included, is 1.5 KiB.
    let size = std::mem::size_of::<WsConn>();
    eprintln!("size_of::<WsConn>() = {size}");
    assert!(size <= 160, "WsConn is {size} bytes");
}
