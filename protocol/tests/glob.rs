//! Property tests of `glob::matches`. Agreement with redis-server itself on generated patterns
//! is `redis_differential.rs::glob_agrees_with_redis_server`.

use proptest::prelude::*;
use ringfan_protocol::glob::matches;

/// Bytes weighted towards the pattern syntax, so classes, ranges and escapes are common.
fn glob_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(b"*?[]^-\\ab".to_vec()),
            1 => any::<u8>(),
        ],
        0..max,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn never_panics(pattern in glob_bytes(40), subject in glob_bytes(40)) {
        let _ = matches(&pattern, &subject);
    }

    #[test]
    fn a_pattern_without_syntax_is_equality(subject in prop::collection::vec(any::<u8>(), 0..20), other in prop::collection::vec(any::<u8>(), 0..20)) {
        let plain = |s: &[u8]| !s.iter().any(|b| b"*?[\\".contains(b));
        prop_assume!(plain(&subject));
        prop_assert_eq!(matches(&subject, &other), subject == other);
        prop_assert!(matches(&subject, &subject));
    }

    #[test]
    fn every_byte_escaped_matches_exactly_itself(subject in prop::collection::vec(any::<u8>(), 1..20)) {
        let escaped: Vec<u8> = subject.iter().flat_map(|&b| [b'\\', b]).collect();
        prop_assert!(matches(&escaped, &subject));
        let mut longer = subject.clone();
        longer.push(b'x');
        prop_assert!(!matches(&escaped, &longer));
    }

    #[test]
    fn star_matches_every_nonempty_subject(subject in prop::collection::vec(any::<u8>(), 1..50)) {
        prop_assert!(matches(b"*", &subject));
        let mut pattern = subject[..1].to_vec();
        if !b"*?[\\".contains(&pattern[0]) {
            pattern.push(b'*');
            prop_assert!(matches(&pattern, &subject));
        }
    }
}
