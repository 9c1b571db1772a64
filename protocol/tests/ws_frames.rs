//! The WebSocket frame decoder, rule by rule (RFC 6455 5 and 7.4), then property tests:
//! arbitrary bytes cut at arbitrary places never panic and decode as they do in one piece, and
//! valid frame streams (fragmented, control frames interleaved) give back exactly their messages.

use proptest::prelude::*;
use ringfan_protocol::ws::{
    self, close_code, CloseFrame, Decoder, Event, Failure, Message, Opcode,
};

const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

/// A client frame: `first` is the first byte (FIN, RSV, opcode), the payload is masked with
/// `mask`, the length in its minimal encoding.
fn client_frame_masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![first];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_masked(first, payload, MASK)
}

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Decodes `input` in pieces cut at `cuts`; the events and the failure, if any.
fn decode_cut(max: usize, input: &[u8], cuts: &[usize]) -> (Vec<Event>, Option<Failure>) {
    let mut d = Decoder::new(max);
    let mut events = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut at = 0;
    for end in bounds {
        if let Err(f) = d.decode(&input[at..end], &mut events) {
            assert!(d.done());
            return (events, Some(f));
        }
        at = end;
        assert!(
            d.buffered_bytes() <= max + ws::CONTROL_PAYLOAD_BYTES_MAX,
            "holds {} bytes with a limit of {max}",
            d.buffered_bytes()
        );
    }
    (events, None)
}

fn decode(input: &[u8]) -> (Vec<Event>, Option<Failure>) {
    decode_cut(1 << 20, input, &[])
}

fn failure_code(input: &[u8]) -> u16 {
    match decode(input) {
        (_, Some(f)) => f.code,
        (events, None) => panic!("no failure; events {events:?}"),
    }
}

fn text(s: &str) -> Event {
    Event::Message(Message {
        text: true,
        payload: s.as_bytes().to_vec().into(),
    })
}

#[test]
fn single_frames_unmasked_by_their_key() {
    let mut input = client_frame(FIN | TEXT, b"hello");
    input.extend(client_frame(FIN | BINARY, &[0, 255, 7]));
    input.extend(client_frame(FIN | TEXT, b""));
    let (events, failure) = decode(&input);
    assert_eq!(failure, None);
    assert_eq!(
        events,
        vec![
            text("hello"),
            Event::Message(Message {
                text: false,
                payload: vec![0, 255, 7].into()
            }),
            text(""),
        ]
    );
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    for len in [125usize, 126, 65535, 65536, 200_000] {
        let payload = vec![b'x'; len];
        let (events, failure) = decode(&client_frame(FIN | BINARY, &payload));
        assert_eq!(failure, None, "len {len}");
        assert_eq!(
            events,
            vec![Event::Message(Message {
                text: false,
                payload: payload.into()
            })]
        );
    }
}

#[test]
fn non_minimal_lengths_are_accepted() {
    // 3 bytes announced with the 16-bit form, then with the 64-bit form.
    let payload = [b'a' ^ MASK[0], b'b' ^ MASK[1], b'c' ^ MASK[2]];
    let mut input = vec![FIN | TEXT, 0x80 | 126, 0, 3];
    input.extend_from_slice(&MASK);
    input.extend_from_slice(&payload);
    input.extend_from_slice(&[FIN | TEXT, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 3]);
    input.extend_from_slice(&MASK);
    input.extend_from_slice(&payload);
    assert_eq!(decode(&input), (vec![text("abc"), text("abc")], None));
}

#[test]
fn sixty_four_bit_length_with_its_top_bit_set_is_a_protocol_error() {
    let mut input = vec![FIN | BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
    input.extend_from_slice(&MASK);
    assert_eq!(failure_code(&input), close_code::PROTOCOL_ERROR);
}

#[test]
fn rsv_bits_reserved_opcodes_and_unmasked_frames_fail_on_the_first_two_bytes() {
    for rsv in [0x40, 0x20, 0x10] {
        assert_eq!(
            failure_code(&[FIN | rsv | TEXT, 0x80]),
            1002,
            "rsv {rsv:#x}"
        );
    }
    for op in (3..=7).chain(11..=15) {
        assert_eq!(failure_code(&[FIN | op, 0x80]), 1002, "opcode {op}");
    }
    // Unmasked, with its payload: refused before the payload is looked at.
    assert_eq!(failure_code(&[FIN | TEXT, 0x02, b'h', b'i']), 1002);
}

#[test]
fn too_big_fails_at_the_header_before_the_payload_arrives() {
    let max = 10;
    let header = &client_frame(FIN | BINARY, &[0; 11])[..6];
    let (events, failure) = decode_cut(max, header, &[]);
    assert!(events.is_empty());
    assert_eq!(failure.unwrap().code, close_code::MESSAGE_TOO_BIG);
    // The limit is on the whole message: 6 + 5 fragments is over 10.
    let mut input = client_frame(BINARY, &[1; 6]);
    input.extend(&client_frame(FIN | CONT, &[2; 5])[..6]);
    assert_eq!(decode_cut(max, &input, &[]).1.unwrap().code, 1009);
    // Exactly the limit is fine.
    let mut input = client_frame(BINARY, &[1; 6]);
    input.extend(client_frame(FIN | CONT, &[2; 4]));
    assert_eq!(decode_cut(max, &input, &[]).0.len(), 1);
}

#[test]
fn fragments_are_joined_with_control_frames_in_between() {
    let mut input = client_frame(TEXT, b"He");
    input.extend(client_frame(FIN | PING, b"p1"));
    input.extend(client_frame(CONT, b"l"));
    input.extend(client_frame(FIN | PONG, b""));
    input.extend(client_frame(FIN | CONT, b"lo"));
    let (events, failure) = decode(&input);
    assert_eq!(failure, None);
    assert_eq!(
        events,
        vec![
            Event::Ping(b"p1".to_vec().into()),
            Event::Pong(Vec::new().into()),
            text("Hello"),
        ]
    );
}

#[test]
fn control_frame_rules() {
    // Fragmented ping.
    assert_eq!(failure_code(&client_frame(PING, b"x")), 1002);
    // 126 bytes of ping payload.
    assert_eq!(failure_code(&client_frame(FIN | PING, &[0; 126])), 1002);
    // 125 is fine.
    let (events, failure) = decode(&client_frame(FIN | PING, &[9; 125]));
    assert_eq!(
        (events, failure),
        (vec![Event::Ping(vec![9; 125].into())], None)
    );
}

#[test]
fn fragmentation_rules() {
    assert_eq!(failure_code(&client_frame(FIN | CONT, b"x")), 1002);
    let mut input = client_frame(TEXT, b"a");
    input.extend(client_frame(FIN | TEXT, b"b"));
    assert_eq!(failure_code(&input), 1002);
    let mut input = client_frame(BINARY, b"a");
    input.extend(client_frame(BINARY, b"b"));
    assert_eq!(failure_code(&input), 1002);
}

#[test]
fn utf8_is_checked_across_fragments_and_fails_fast() {
    // "€" is E2 82 AC: split over three fragments, each incomplete alone.
    let mut input = client_frame(TEXT, b"\xE2");
    input.extend(client_frame(CONT, b"\x82"));
    input.extend(client_frame(FIN | CONT, b"\xAC!"));
    assert_eq!(decode(&input), (vec![text("€!")], None));

    // Ending inside a character.
    assert_eq!(failure_code(&client_frame(FIN | TEXT, b"ok\xE2\x82")), 1007);
    let mut input = client_frame(TEXT, b"ok");
    input.extend(client_frame(FIN | CONT, b"\xF0\x9F"));
    assert_eq!(failure_code(&input), 1007);

    // Fails in the first fragment, before the rest of the message (or of that frame) arrives:
    // ED A0 starts a surrogate, which no continuation can make valid.
    let frame = client_frame(TEXT, b"abc\xED\xA0\x80 and more to come");
    let (_, failure) = decode_cut(1 << 20, &frame[..6 + 5], &[]);
    assert_eq!(
        failure.unwrap().code,
        1007,
        "fails at the byte that is invalid"
    );
    // Overlong, above U+10FFFF, a lone continuation byte.
    for bad in [&b"\xC0\x80"[..], b"\xF4\x90\x80\x80", b"\x80", b"\xFF"] {
        let frame = client_frame(TEXT, bad);
        let (_, failure) = decode_cut(1 << 20, &frame[..6 + 2.min(bad.len())], &[]);
        assert_eq!(failure.map(|f| f.code), Some(1007), "{bad:x?}");
    }
    // Binary is never checked.
    assert_eq!(decode(&client_frame(FIN | BINARY, b"\xFF")).1, None);
}

#[test]
fn close_frames() {
    assert_eq!(
        decode(&client_frame(FIN | CLOSE, b"")),
        (vec![Event::Close(None)], None)
    );
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice("bye ✓".as_bytes());
    assert_eq!(
        decode(&client_frame(FIN | CLOSE, &payload)),
        (
            vec![Event::Close(Some(CloseFrame {
                code: 1000,
                reason: "bye ✓".as_bytes().to_vec().into()
            }))],
            None
        )
    );
    assert_eq!(failure_code(&client_frame(FIN | CLOSE, &[0x03])), 1002);
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let f = client_frame(FIN | CLOSE, &code.to_be_bytes());
        assert_eq!(failure_code(&f), 1002, "code {code}");
    }
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ] {
        let (events, failure) = decode(&client_frame(FIN | CLOSE, &code.to_be_bytes()));
        assert_eq!(failure, None, "code {code}");
        assert_eq!(events.len(), 1);
    }
    let mut bad_reason = 1000u16.to_be_bytes().to_vec();
    bad_reason.extend_from_slice(b"\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80");
    assert_eq!(failure_code(&client_frame(FIN | CLOSE, &bad_reason)), 1007);
}

#[test]
fn nothing_is_read_after_a_close_frame() {
    let mut input = client_frame(FIN | TEXT, b"a");
    input.extend(client_frame(FIN | CLOSE, b""));
    input.extend(client_frame(FIN | TEXT, b"after"));
    input.extend([0xFF, 0xFF]);
    let mut d = Decoder::new(100);
    let mut events = Vec::new();
    assert_eq!(d.decode(&input, &mut events), Ok(()));
    assert_eq!(events, vec![text("a"), Event::Close(None)]);
    assert!(d.done());
    assert_eq!(d.decode(b"\x81\x80", &mut events), Ok(()));
    assert_eq!(events.len(), 2);
}

#[test]
fn nothing_stays_allocated_between_messages() {
    let mut d = Decoder::new(1 << 20);
    let mut events = Vec::new();
    let mut input = client_frame(BINARY, &[1; 3000]);
    input.extend(client_frame(FIN | PING, b"are you there"));
    input.extend(client_frame(FIN | CONT, &[2; 1000]));
    input.extend(client_frame(FIN | PONG, b"yes"));
    // Cut inside the first payload, so the message buffer has to grow.
    d.decode(&input[..1000], &mut events).unwrap();
    assert!(d.allocated_bytes() >= 992);
    d.decode(&input[1000..], &mut events).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        d.allocated_bytes(),
        0,
        "an idle connection holds no payload buffer"
    );
    drop(events);
    assert_eq!(d.allocated_bytes(), 0);
}

#[test]
fn failure_keeps_the_events_before_it() {
    let mut input = client_frame(FIN | PING, b"1");
    input.extend(client_frame(FIN | TEXT, b"\xFF"));
    let (events, failure) = decode(&input);
    assert_eq!(events, vec![Event::Ping(b"1".to_vec().into())]);
    assert_eq!(failure.unwrap().code, 1007);
}

#[test]
fn server_frames_decode_as_sent_when_masked() {
    // Our encoder and decoder agree once the client side's mask is added.
    for payload in [&b"hi"[..], b"\xFF\x00", &[b'z'; 70_000]] {
        let frame = ws::message_frame(payload);
        let header = ws::header_bytes(payload.len());
        let opcode = frame[0] & 0x0F;
        let masked = client_frame(FIN | opcode, &frame[header..]);
        let (events, failure) = decode(&masked);
        assert_eq!(failure, None);
        let Event::Message(m) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(&m.payload[..], payload);
        assert_eq!(m.text, std::str::from_utf8(payload).is_ok());
        assert_eq!(m.text, opcode == Opcode::Text as u8);
    }
}

/// One message of a generated stream: its payload, whether text, how it is cut into fragments,
/// and the pings to put between them.
#[derive(Clone, Debug)]
struct Planned {
    text: bool,
    payload: Vec<u8>,
    cuts: Vec<usize>,
    pings: Vec<Vec<u8>>,
    mask: [u8; 4],
}

fn planned() -> impl Strategy<Value = Planned> {
    (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(any::<usize>(), 0..4),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..126), 0..3),
        any::<[u8; 4]>(),
        ".{0,60}",
    )
        .prop_map(|(text, bytes, cuts, pings, mask, string)| Planned {
            text,
            payload: if text { string.into_bytes() } else { bytes },
            cuts,
            pings,
            mask,
        })
}

/// The frames of `plan`, and the events a decoder must give for them.
fn encode_plan(plan: &[Planned]) -> (Vec<u8>, Vec<Event>) {
    let (mut input, mut expect) = (Vec::new(), Vec::new());
    for m in plan {
        let mut bounds: Vec<usize> = m.cuts.iter().map(|c| c % (m.payload.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.push(m.payload.len());
        let mut at = 0;
        for (i, &end) in bounds.iter().enumerate() {
            let opcode = match (i, m.text) {
                (0, true) => TEXT,
                (0, false) => BINARY,
                _ => CONT,
            };
            let fin = if i == bounds.len() - 1 { FIN } else { 0 };
            input.extend(client_frame_masked(
                fin | opcode,
                &m.payload[at..end],
                m.mask,
            ));
            at = end;
            if fin == FIN {
                expect.push(Event::Message(Message {
                    text: m.text,
                    payload: m.payload.clone().into(),
                }));
            }
            if let Some(ping) = m.pings.get(i) {
                input.extend(client_frame_masked(FIN | PING, ping, m.mask));
                expect.push(Event::Ping(ping.clone().into()));
            }
        }
    }
    (input, expect)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_any_cuts_never_panic_and_agree_with_one_piece(
        input in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        max in 0usize..400,
    ) {
        let whole = decode_cut(max, &input, &[]);
        prop_assert_eq!(decode_cut(max, &input, &cuts), whole);
    }

    #[test]
    fn frame_shaped_garbage_any_cuts_agree(
        frames in prop::collection::vec(
            (any::<u8>(), prop::collection::vec(any::<u8>(), 0..200)), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        // Masked frames with arbitrary first bytes reach far deeper than random bytes do.
        let input: Vec<u8> = frames.iter().flat_map(|(b0, p)| client_frame(*b0, p)).collect();
        let whole = decode_cut(1000, &input, &[]);
        prop_assert_eq!(decode_cut(1000, &input, &cuts), whole);
    }

    #[test]
    fn valid_streams_give_back_their_messages(
        plan in prop::collection::vec(planned(), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let (input, expect) = encode_plan(&plan);
        let (events, failure) = decode_cut(300, &input, &cuts);
        prop_assert_eq!(failure, None);
        prop_assert_eq!(events, expect);
    }
}
