//! The RESP request decoder: exact cases taken from redis-server 7.0.15's networking.c and
//! sds.c, and property tests (arbitrary bytes, arbitrary splits, agreement with a one-shot
//! reference written the way Redis's C reads its query buffer).

use bytes::Bytes;
use proptest::prelude::*;
use ringfan_protocol::resp::{
    split_args, Decoder, Limits, ProtocolError, ARGUMENT_OVERHEAD_BYTES, LINE_BYTES_MAX,
};

const LIMITS: Limits = Limits {
    bulk_bytes_max: 1 << 20,
    command_bytes_max: 4 << 20,
};

type Commands = Vec<Vec<Vec<u8>>>;

/// Feeds `input` cut at `cuts`, draining after each piece, as a server would.
fn decode_split(limits: Limits, input: &[u8], cuts: &[usize]) -> (Commands, Option<ProtocolError>) {
    let mut d = Decoder::new(limits);
    let mut commands = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut at = 0;
    for end in bounds {
        d.feed(&input[at..end]);
        at = end;
        loop {
            match d.next_command() {
                Ok(Some(c)) => {
                    assert!(!c.args.is_empty(), "an empty command was handed out");
                    commands.push(c.args.iter().map(|a| a.to_vec()).collect());
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(d.spent());
                    d.feed(b"*1\r\n$4\r\nPING\r\n");
                    assert_eq!(
                        d.next_command(),
                        Ok(None),
                        "a spent decoder handed out more"
                    );
                    return (commands, Some(e));
                }
            }
        }
    }
    (commands, None)
}

fn decode(input: &[u8]) -> (Commands, Option<ProtocolError>) {
    decode_split(LIMITS, input, &[])
}

fn args(list: &[&[u8]]) -> Vec<Vec<u8>> {
    list.iter().map(|a| a.to_vec()).collect()
}

#[test]
fn multibulk_and_inline_pipelined() {
    let input = b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\nPING\r\n*3\r\n$7\r\nPUBLISH\r\n$1\r\na\r\n$0\r\n\r\n";
    let (commands, error) = decode(input);
    assert_eq!(error, None);
    assert_eq!(
        commands,
        vec![
            args(&[b"SUBSCRIBE", b"news"]),
            args(&[b"PING"]),
            args(&[b"PUBLISH", b"a", b""])
        ]
    );
}

#[test]
fn empty_requests_are_skipped() {
    let (commands, error) = decode(b"\r\n\n   \r\n*0\r\n*-1\r\n*-100\r\nPING\r\n");
    assert_eq!((commands, error), (vec![args(&[b"PING"])], None));
}

#[test]
fn binary_bulk_arguments_are_exact() {
    let (commands, _) = decode(b"*2\r\n$4\r\n\0\r\n\xff\r\n$0\r\n\r\n");
    assert_eq!(commands, vec![args(&[b"\0\r\n\xff", b""])]);
}

#[test]
fn only_some_byte_must_follow_cr_and_two_bytes_follow_a_bulk() {
    // Redis checks that a byte follows `\r`, not that it is `\n`, and skips two bytes after a
    // bulk's data without looking at them.
    let (commands, error) = decode(b"*1\rX$4\rYPINGab");
    assert_eq!((commands, error), (vec![args(&[b"PING"])], None));
}

#[test]
fn arguments_share_one_allocation() {
    let mut d = Decoder::new(LIMITS);
    d.feed(b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nnews\r\n$5\r\nhello\r\n");
    let c = d.next_command().unwrap().unwrap();
    let base = c.args[0].as_ptr() as usize;
    assert_eq!(c.args[1].as_ptr() as usize, base + 7 + 2 + 4);
    assert_eq!(c.args[2].as_ptr() as usize, base + 7 + 2 + 4 + 4 + 2 + 4);
}

fn error_of(input: &[u8]) -> Option<Bytes> {
    decode(input).1.map(|e| e.reply())
}

#[test]
fn protocol_errors_word_for_word() {
    let cases: &[(&[u8], &[u8])] = &[
        (
            b"*x\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*-0\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*01\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*+1\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*2147483648\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\nx\r\n",
            b"-ERR Protocol error: expected '$', got 'x'\r\n",
        ),
        (
            b"*1\r\n\r\n",
            b"-ERR Protocol error: expected '$', got ' '\r\n",
        ),
        (
            b"*1\r\n$-1\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$x\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$1048577\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"PING \"x\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"PING 'x\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"PING \"a\"b\r\n",
            b"-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ];
    for (input, reply) in cases {
        assert_eq!(
            error_of(input).as_deref(),
            Some(*reply),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // The count accepts what Redis 7.0 accepts, up to INT_MAX.
    assert_eq!(error_of(b"*2147483647\r\n"), None);
}

#[test]
fn the_bulk_limit_is_inclusive() {
    let limits = Limits {
        bulk_bytes_max: 4,
        command_bytes_max: 1000,
    };
    assert_eq!(decode_split(limits, b"*1\r\n$4\r\nPING\r\n", &[]).1, None);
    assert_eq!(
        decode_split(limits, b"*1\r\n$5\r\n", &[]).1,
        Some(ProtocolError::InvalidBulkLength)
    );
}

#[test]
fn a_bulk_header_alone_does_not_reserve_the_whole_bulk() {
    let mut d = Decoder::new(Limits {
        bulk_bytes_max: 512 << 20,
        command_bytes_max: 1 << 30,
    });
    d.feed(b"*1\r\n$536870912\r\n");
    assert_eq!(d.next_command(), Ok(None));
    assert!(
        d.capacity_bytes() < 1 << 20,
        "reserved {} bytes",
        d.capacity_bytes()
    );
}

#[test]
fn the_command_limit_counts_each_argument_overhead() {
    let limits = Limits {
        bulk_bytes_max: 100,
        command_bytes_max: 2 * ARGUMENT_OVERHEAD_BYTES + 2,
    };
    assert_eq!(
        decode_split(limits, b"*2\r\n$1\r\na\r\n$1\r\nb\r\n", &[]).1,
        None
    );
    let (commands, error) = decode_split(limits, b"*3\r\n$0\r\n\r\n$0\r\n\r\n$0\r\n", &[]);
    assert!(commands.is_empty());
    assert_eq!(
        error,
        Some(ProtocolError::CommandTooBig {
            command_bytes_max: limits.command_bytes_max
        })
    );
}

#[test]
fn line_limits_at_64_kib() {
    let mut ok = vec![b'a'; LINE_BYTES_MAX];
    ok.push(b'\n');
    assert_eq!(decode(&ok).0.len(), 1, "a line of exactly 64 KiB passes");
    let mut long = vec![b'a'; LINE_BYTES_MAX + 1];
    assert_eq!(
        decode(&long).1,
        Some(ProtocolError::TooBigInlineRequest),
        "pending, over 64 KiB"
    );
    long.push(b'\n');
    assert_eq!(
        decode(&long).1,
        Some(ProtocolError::TooBigInlineRequest),
        "whole, over 64 KiB"
    );
    assert_eq!(
        decode(&vec![b'a'; LINE_BYTES_MAX]).1,
        None,
        "64 KiB pending is still allowed"
    );

    let mut count = b"*".to_vec();
    count.extend(vec![b'1'; LINE_BYTES_MAX + 1]);
    assert_eq!(decode(&count).1, Some(ProtocolError::TooBigMultibulkCount));
    let mut bulk = b"*1\r\n$".to_vec();
    bulk.extend(vec![b'1'; LINE_BYTES_MAX + 1]);
    assert_eq!(decode(&bulk).1, Some(ProtocolError::TooBigBulkCount));
}

#[test]
fn a_nul_before_the_line_end_stalls_the_request_as_strchr_does() {
    let (commands, error) = decode(b"PING\0\r\nPING\r\n");
    assert_eq!((commands, error), (vec![], None));
    let mut stalled = b"PING\0\r\n".to_vec();
    stalled.extend(vec![b'a'; LINE_BYTES_MAX]);
    assert_eq!(decode(&stalled).1, Some(ProtocolError::TooBigInlineRequest));
    // In a bulk's data a NUL is only data.
    assert_eq!(decode(b"*1\r\n$1\r\n\0\r\n").0, vec![args(&[b"\0"])]);
    // A NUL can never be the byte "expected '$'" names: it stalls the search for the line.
    assert_eq!(decode(b"*1\r\n\0\r\n"), (vec![], None));
    // In a count line it stalls too.
    assert_eq!(decode(b"*1\0\r\n$4\r\nPING\r\n"), (vec![], None));
}

fn split(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    split_args(&Bytes::copy_from_slice(line)).map(|v| v.iter().map(|a| a.to_vec()).collect())
}

#[test]
fn inline_splitting_follows_sdssplitargs() {
    assert_eq!(
        split(b"SUBSCRIBE news  sport"),
        Some(args(&[b"SUBSCRIBE", b"news", b"sport"]))
    );
    assert_eq!(split(b"  \t "), Some(vec![]));
    assert_eq!(
        split(b"\x0bPING"),
        Some(args(&[b"PING"])),
        "\\v is skipped between tokens"
    );
    assert_eq!(
        split(b"a\x0bb"),
        Some(args(&[b"a\x0bb"])),
        "but does not end one"
    );
    assert_eq!(split(b"a\rb"), Some(args(&[b"a", b"b"])));
    assert_eq!(split(b"\"\""), Some(args(&[b""])));
    assert_eq!(split(b"\"a b\" c"), Some(args(&[b"a b", b"c"])));
    assert_eq!(
        split(b"x\"a b\""),
        Some(args(&[b"xa b"])),
        "a quote inside a token"
    );
    assert_eq!(
        split(br#""\n\r\t\b\a\\\"\q\x41\x4g""#),
        Some(args(&[b"\n\r\t\x08\x07\\\"qAx4g"]))
    );
    assert_eq!(split(br"'it\'s' '\n'"), Some(args(&[b"it's", b"\\n"])));
    assert_eq!(
        split(b"\"a\"b"),
        None,
        "closing quote must be followed by a space"
    );
    assert_eq!(split(b"'a'b"), None);
    assert_eq!(
        split(b"\"a\"\x0bb"),
        Some(args(&[b"a", b"b"])),
        "isspace() after a quote"
    );
    assert_eq!(split(b"\"abc"), None);
    assert_eq!(
        split(b"\"abc\\"),
        None,
        "a backslash at the end leaves the quote open"
    );
    assert_eq!(split(b"'abc"), None);
}

// ---------------------------------------------------------------------------------------------
// The reference: one pass over the whole input, written the way Redis's C code reads its query
// buffer, with this decoder's split-independent 64 KiB rule.

/// `string2ll` by its definition: `-?(0|[1-9][0-9]*)`, not `-0`, under 21 bytes, in range.
fn reference_number(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 || s == b"-0" {
        return None;
    }
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits[0] == b'0' && digits.len() > 1)
    {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Index of `terminator` as `strchr` finds it (a NUL first means none).
fn strchr(s: &[u8], terminator: u8) -> Option<usize> {
    s.iter()
        .position(|&b| b == terminator || b == 0)
        .filter(|&i| s[i] == terminator)
}

fn reference(limits: Limits, input: &[u8]) -> (Commands, Option<ProtocolError>) {
    use ProtocolError::*;
    let mut commands = Vec::new();
    let mut pos = 0;
    // A line: Some(end) when complete, else the outcome.
    let line =
        |rest: &[u8], term: u8, too_big: ProtocolError| -> Result<Option<usize>, ProtocolError> {
            match strchr(rest, term) {
                Some(i) if i > LINE_BYTES_MAX => Err(too_big),
                Some(i) => Ok(Some(i)),
                None if rest.len() > LINE_BYTES_MAX => Err(too_big),
                None => Ok(None),
            }
        };
    macro_rules! need {
        ($e:expr) => {
            match $e {
                Ok(Some(v)) => v,
                Ok(None) => return (commands, None),
                Err(e) => return (commands, Some(e)),
            }
        };
    }
    while pos < input.len() {
        let rest = &input[pos..];
        if rest[0] != b'*' {
            let nl = need!(line(rest, b'\n', TooBigInlineRequest));
            let end = if nl > 0 && rest[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            match split_args(&Bytes::copy_from_slice(&rest[..end])) {
                None => return (commands, Some(UnbalancedQuotes)),
                Some(a) if a.is_empty() => {}
                Some(a) => commands.push(a.iter().map(|x| x.to_vec()).collect()),
            }
            pos += nl + 1;
            continue;
        }
        let cr = need!(line(rest, b'\r', TooBigMultibulkCount));
        if cr + 2 > rest.len() {
            return (commands, None);
        }
        let count = match reference_number(&rest[1..cr]) {
            Some(n) if n <= i32::MAX as i64 => n,
            _ => return (commands, Some(InvalidMultibulkLength)),
        };
        pos += cr + 2;
        let mut command = Vec::new();
        let mut cost = 0usize;
        for _ in 0..count.max(0) {
            let rest = &input[pos..];
            let cr = need!(line(rest, b'\r', TooBigBulkCount));
            if cr + 2 > rest.len() {
                return (commands, None);
            }
            if rest[0] != b'$' {
                return (commands, Some(ExpectedDollar(rest[0])));
            }
            let len = match reference_number(&rest[1..cr]) {
                Some(n) if n >= 0 && n as u64 <= limits.bulk_bytes_max as u64 => n as usize,
                _ => return (commands, Some(InvalidBulkLength)),
            };
            cost += len + ARGUMENT_OVERHEAD_BYTES;
            if cost > limits.command_bytes_max {
                return (
                    commands,
                    Some(CommandTooBig {
                        command_bytes_max: limits.command_bytes_max,
                    }),
                );
            }
            pos += cr + 2;
            if input.len() - pos < len + 2 {
                return (commands, None);
            }
            command.push(input[pos..pos + len].to_vec());
            pos += len + 2;
        }
        if !command.is_empty() {
            commands.push(command);
        }
    }
    (commands, None)
}

/// Input that reaches the interesting paths: valid requests of both kinds, with now and then a
/// corrupted byte, a wrong length, a stray NUL or quote.
fn resp_like() -> impl Strategy<Value = Vec<u8>> {
    let arg = prop::collection::vec(
        prop_oneof![
            Just(b'a'),
            Just(b' '),
            Just(b'"'),
            Just(b'\''),
            Just(b'\\'),
            Just(b'\r'),
            Just(b'\n'),
            Just(0u8),
            any::<u8>()
        ],
        0..12,
    );
    let request = prop_oneof![
        prop::collection::vec(arg.clone(), 0..4).prop_map(|args| {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                out.extend(format!("${}\r\n", a.len()).into_bytes());
                out.extend(a);
                out.extend(b"\r\n");
            }
            out
        }),
        arg.prop_map(|mut a| {
            a.extend(b"\r\n");
            a
        }),
        prop::collection::vec(any::<u8>(), 0..8),
        Just(b"*-1\r\n".to_vec()),
        Just(b"$3\r\n".to_vec()),
    ];
    (
        prop::collection::vec(request, 0..8),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..3),
    )
        .prop_map(|(requests, corruptions)| {
            let mut out: Vec<u8> = requests.concat();
            for (at, byte) in corruptions {
                if !out.is_empty() {
                    let i = at % out.len();
                    out[i] = byte;
                }
            }
            out
        })
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (0usize..16, 0usize..200).prop_map(|(bulk, command)| Limits {
        bulk_bytes_max: bulk,
        command_bytes_max: command,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_any_split_agree_with_reference(
        input in prop::collection::vec(any::<u8>(), 0..300),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let expected = reference(LIMITS, &input);
        prop_assert_eq!(decode_split(LIMITS, &input, &[]), expected.clone());
        prop_assert_eq!(decode_split(LIMITS, &input, &cuts), expected);
    }

    #[test]
    fn resp_like_input_any_split_any_limits_agree_with_reference(
        input in resp_like(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        limits in prop_oneof![Just(LIMITS), small_limits()],
    ) {
        let expected = reference(limits, &input);
        prop_assert_eq!(decode_split(limits, &input, &cuts), expected);
    }

    #[test]
    fn byte_at_a_time_agrees(input in resp_like()) {
        let cuts: Vec<usize> = (1..input.len()).collect();
        prop_assert_eq!(decode_split(LIMITS, &input, &cuts), reference(LIMITS, &input));
    }
}
