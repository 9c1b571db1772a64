//! Property tests of the line decoder: arbitrary bytes (newline-heavy and binary garbage),
//! arbitrary limits, arbitrary splits. Never panics; every split yields the same frames as a
//! plain reference split, and holds at most `max - 1` bytes between calls.

use proptest::prelude::*;
use ringfan_protocol::LineDecoder;

/// The reference: split at `\n`, stop at the first line longer than `max` (or a tail that
/// reached `max` without a newline).
fn reference(input: &[u8], max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut out = Vec::new();
    let mut rest = input;
    while let Some(p) = rest.iter().position(|&b| b == b'\n') {
        if p + 1 > max {
            return (out, true);
        }
        out.push(rest[..=p].to_vec());
        rest = &rest[p + 1..];
    }
    (out, rest.len() >= max)
}

fn decode_split(input: &[u8], max: usize, cuts: &[usize]) -> (Vec<Vec<u8>>, bool) {
    let mut d = LineDecoder::new(max);
    let (mut lines, mut failed) = (Vec::new(), false);
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    bounds.sort_unstable();
    bounds.push(input.len());
    let mut at = 0;
    for end in bounds {
        let out = d.decode(&input[at..end]);
        at = end;
        if let Some(c) = out.chunk {
            assert_eq!(c.count, c.lines().count());
            lines.extend(c.lines().map(<[u8]>::to_vec));
        }
        failed |= out.error.is_some();
        assert!(
            d.buffered_bytes() < max,
            "held {} bytes with limit {max}",
            d.buffered_bytes()
        );
    }
    (lines, failed)
}

fn bytes_with_newlines() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![3 => Just(b'\n'), 1 => Just(b'\r'), 12 => any::<u8>()],
        0..2048,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_reference_frames(
        input in bytes_with_newlines(),
        max in 1usize..300,
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        prop_assert_eq!(decode_split(&input, max, &cuts), reference(&input, max));
    }

    #[test]
    fn binary_garbage_never_panics(input in prop::collection::vec(any::<u8>(), 0..4096), max in 1usize..70000) {
        let mut d = LineDecoder::new(max);
        for piece in input.chunks(97) {
            let _ = d.decode(piece);
        }
    }
}
