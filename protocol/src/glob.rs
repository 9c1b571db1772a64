//! Redis's glob-style pattern matching, as `PSUBSCRIBE` and `PUBSUB CHANNELS` use it.
//!
//! This is `stringmatchlen` (case-sensitive) of redis-server 7.0.15 as Debian 12 ships it, which
//! carries the nesting limit added against CVE-2024-31228. Its quirks are kept on purpose, since
//! a pattern must select exactly the channels it selects on Redis:
//!
//! - `*` any run of bytes, `?` one byte, `\x` the byte `x` literally. An empty subject matches
//!   only the empty pattern (not even `*`): Redis's loop never starts on it.
//! - `[...]` one byte from the class; `[^...]` negates it; `a-z` is a range whose ends may be
//!   given in either order; `\` escapes inside the class. An unclosed class ends with the
//!   pattern (`[ab` is `[ab]`).
//! - Range bounds compare as C's signed `char`: a byte from 0x80 up is below `'a'`, so
//!   `[a-\xff]` is the range -1..=97 and matches `\xff`, `\0`..`a`, but not `b`.
//! - Past 1000 nested `*`s the match fails instead of recursing further.
//! - A `*` that failed to match the rest from any later position ends the whole search at once
//!   (the exponential-time guard Redis added); that changes no result, only the cost.

/// Deeper `*` recursion than this does not match (Redis's guard against abusive patterns).
const NESTING_MAX: u32 = 1000;

/// True if `subject` matches the Redis glob `pattern`.
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut skip_longer_matches = false;
    match_from(pattern, subject, &mut skip_longer_matches, 0)
}

/// The byte at `i`, or 0 past the end: the C code reads the string's NUL terminator there, and
/// its decisions at the end of the pattern depend on that 0.
fn at(pattern: &[u8], i: usize) -> u8 {
    pattern.get(i).copied().unwrap_or(0)
}

/// A byte as C's signed `char`, widened, for range comparisons.
fn signed(b: u8) -> i32 {
    b as i8 as i32
}

fn match_from(
    pattern: &[u8],
    subject: &[u8],
    skip_longer_matches: &mut bool,
    nesting: u32,
) -> bool {
    if nesting > NESTING_MAX {
        return false;
    }
    let (mut p, mut s) = (0usize, 0usize);
    while p < pattern.len() && s < subject.len() {
        match pattern[p] {
            b'*' => {
                while p < pattern.len() && at(pattern, p + 1) == b'*' {
                    p += 1;
                }
                if pattern.len() - p == 1 {
                    return true;
                }
                while s < subject.len() {
                    let rest = &pattern[p + 1..];
                    if match_from(rest, &subject[s..], skip_longer_matches, nesting + 1) {
                        return true;
                    }
                    if *skip_longer_matches {
                        return false;
                    }
                    s += 1;
                }
                // The rest of the pattern matched from no position of the rest of the subject:
                // a longer match for an earlier `*` could only start it later still.
                *skip_longer_matches = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                match match_class(pattern, p + 1, subject[s]) {
                    Some(class_end) => p = class_end,
                    None => return false,
                }
                s += 1;
            }
            b'\\' => {
                if pattern.len() - p >= 2 {
                    p += 1;
                }
                if pattern[p] != subject[s] {
                    return false;
                }
                s += 1;
            }
            literal => {
                if literal != subject[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == subject.len() {
            while at(pattern, p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    p == pattern.len() && s == subject.len()
}

/// Matches `byte` against the class whose body starts at `p` (just after `[`). Returns the index
/// of the class's last byte (its `]`, or the pattern's last byte if unclosed), or `None` if the
/// byte is not in the class.
fn match_class(pattern: &[u8], mut p: usize, byte: u8) -> Option<usize> {
    let not = at(pattern, p) == b'^';
    if not {
        p += 1;
    }
    let mut matched = false;
    loop {
        let left = pattern.len() - p;
        if at(pattern, p) == b'\\' && left >= 2 {
            p += 1;
            matched |= pattern[p] == byte;
        } else if at(pattern, p) == b']' {
            break;
        } else if left == 0 {
            // Unclosed: step back onto the last byte so the caller's advance ends the pattern.
            p -= 1;
            break;
        } else if left >= 3 && pattern[p + 1] == b'-' {
            let (a, b) = (signed(pattern[p]), signed(pattern[p + 2]));
            let (start, end) = if a > b { (b, a) } else { (a, b) };
            p += 2;
            matched |= (start..=end).contains(&signed(byte));
        } else {
            matched |= pattern[p] == byte;
        }
        p += 1;
    }
    if matched != not {
        Some(p)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn literals_and_wildcards() {
        assert!(matches(b"news", b"news"));
        assert!(!matches(b"news", b"new"));
        assert!(!matches(b"news", b"newss"));
        assert!(matches(b"n*", b"n"));
        assert!(matches(b"n*s", b"news"));
        // Redis's loop never starts on an empty subject: only an empty pattern matches it.
        assert!(!matches(b"*", b""));
        assert!(matches(b"**", b"x"));
        assert!(!matches(b"?", b""));
        assert!(matches(b"n?ws", b"news"));
        assert!(matches(b"", b""));
        assert!(!matches(b"", b"a"));
        assert!(!matches(b"a", b""));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(matches(b"h[ae]llo", b"hello"));
        assert!(!matches(b"h[ae]llo", b"hillo"));
        assert!(matches(b"h[^e]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"h[b-a]llo", b"hallo"), "reversed range bounds");
        assert!(
            matches(b"[ab", b"b"),
            "unclosed class ends with the pattern"
        );
        assert!(!matches(b"[", b"["));
        assert!(!matches(b"[]", b"x"));
        assert!(matches(b"[\\]]", b"]"));
        // `a-]` is a range ending at `]` (93..=97), leaving the class unclosed.
        assert!(!matches(b"[a-]", b"-"));
        assert!(matches(b"[a-]", b"_"));
    }

    #[test]
    fn escapes() {
        assert!(matches(b"a\\*b", b"a*b"));
        assert!(!matches(b"a\\*b", b"axb"));
        assert!(matches(b"a\\", b"a\\"), "a trailing backslash is literal");
        assert!(matches(b"\\?", b"?"));
        assert!(!matches(b"\\?", b"x"));
    }

    #[test]
    fn ranges_compare_as_signed_char() {
        assert!(matches(b"[a-\xff]", b"\xff"));
        assert!(matches(b"[a-\xff]", b"\x00"));
        assert!(matches(b"[a-\xff]", b"a"));
        assert!(!matches(b"[a-\xff]", b"b"));
        assert!(!matches(b"[a-\xff]", b"\x80"));
    }

    #[test]
    fn binary_subjects() {
        assert!(matches(b"a*", b"a\0\r\n\xff"));
        assert!(matches(b"?\0?", b"\xff\0\n"));
    }

    #[test]
    fn deep_nesting_stops_matching() {
        let stars_ok: Vec<u8> = b"a*".repeat(1000).into_iter().chain(*b"b").collect();
        let subject: Vec<u8> = b"a".repeat(1000).into_iter().chain(*b"b").collect();
        assert!(matches(&stars_ok, &subject));
        let stars_over: Vec<u8> = b"a*".repeat(1001).into_iter().chain(*b"b").collect();
        let subject: Vec<u8> = b"a".repeat(1001).into_iter().chain(*b"b").collect();
        assert!(!matches(&stars_over, &subject));
    }

    #[test]
    fn pathological_pattern_is_fast() {
        let pattern = b"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let subject = vec![b'a'; 10_000];
        let started = std::time::Instant::now();
        assert!(!matches(pattern, &subject));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
