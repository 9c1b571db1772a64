//! ringfan wire framing, sans-IO.
//!
//! Version 1, "lines": a message is every byte up to and including `\n`. It is broadcast byte for
//! byte as received, so CRLF stays CRLF. A line longer than the configured maximum (counting its
//! `\n`) is a protocol error: nothing of it is ever handed out.
//!
//! The decoder hands out [`Chunk`]s: runs of one or more *complete* lines that were contiguous in
//! one connection's input. Broadcasting a chunk is byte for byte the same as broadcasting its lines
//! one by one in order, but costs one reference-counted `Bytes` per subscriber instead of one per
//! line. [`Chunk::lines`] iterates the individual frames.
//!
//! [`ws`]: WebSocket (RFC 6455) for browsers, server side: the upgrade handshake, client frames
//! checked and reassembled, server frames built once and shared by every subscriber, and one
//! connection's close handshake as a state machine that returns what the server must do.
//!
//! [`resp`] is the Redis protocol (RESP2) for the pub/sub listener: a request decoder, reply and
//! message-frame encoders, and the per-connection command semantics, answering byte for byte
//! as redis-server 7.0.15 does. [`glob`] is Redis's pattern matching for `PSUBSCRIBE`.

pub mod glob;
pub mod resp;
pub mod ws;

use bytes::{Bytes, BytesMut};

/// One or more complete lines, contiguous in the publisher's input, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The lines' bytes, each ending in `\n`.
    pub bytes: Bytes,
    /// How many lines `bytes` holds (the number of `\n` in it).
    pub count: usize,
}

impl Chunk {
    /// The individual frames, each including its `\n`.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.bytes.split_inclusive(|&b| b == b'\n')
    }
}

/// A line longer than the limit was seen. The decoder is then spent: it yields nothing more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameTooLong {
    /// The configured limit, in bytes, `\n` included.
    pub max_frame_bytes: usize,
}

impl FrameTooLong {
    /// The line sent to the offending client before its connection is closed.
    pub fn error_line(&self) -> Bytes {
        Bytes::from(format!(
            "-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES ({})\n",
            self.max_frame_bytes
        ))
    }
}

/// What one call to [`LineDecoder::decode`] produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The complete lines that preceded any error, if there were any.
    pub chunk: Option<Chunk>,
    /// Set when a line exceeded the limit; nothing of that line is in `chunk`.
    pub error: Option<FrameTooLong>,
}

/// Splits a byte stream into lines. Holds at most `max_frame_bytes - 1` bytes of an incomplete line.
#[derive(Debug)]
pub struct LineDecoder {
    max_frame_bytes: usize,
    /// The incomplete line carried over from earlier input (never contains `\n`).
    partial: BytesMut,
    failed: bool,
}

/// Lower bound for the decoder's allocation when it must copy input, so that many small reads do
/// not each allocate.
const MIN_ALLOCATION_BYTES: usize = 4096;

impl LineDecoder {
    /// # Panics
    /// If `max_frame_bytes` is 0: no line could ever be valid.
    pub fn new(max_frame_bytes: usize) -> Self {
        assert!(max_frame_bytes > 0, "max_frame_bytes must be at least 1");
        LineDecoder {
            max_frame_bytes,
            partial: BytesMut::new(),
            failed: false,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// True once a line exceeded the limit; all later input is ignored.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Bytes of an incomplete line held between calls.
    pub fn buffered_bytes(&self) -> usize {
        self.partial.len()
    }

    /// Feeds `input`, returns the complete lines it finished and whether a line was too long.
    /// Input is copied once; lines handed out share that one allocation.
    pub fn decode(&mut self, input: &[u8]) -> Decoded {
        if self.failed || input.is_empty() {
            return Decoded::default();
        }
        let max = self.max_frame_bytes;
        // Validate every line this input completes before copying anything, so an over-long line
        // is never handed out, even partly.
        let mut line_start: isize = -(self.partial.len() as isize);
        let mut complete_end = 0usize; // bytes of `input` that belong to valid complete lines
        let mut count = 0usize;
        let mut error = None;
        for nl in memchr::memchr_iter(b'\n', input) {
            let len = (nl as isize - line_start + 1) as usize;
            if len > max {
                error = Some(FrameTooLong {
                    max_frame_bytes: max,
                });
                break;
            }
            count += 1;
            complete_end = nl + 1;
            line_start = nl as isize + 1;
        }
        if error.is_none() {
            let tail = (input.len() as isize - line_start) as usize;
            // An incomplete line that can no longer fit is already an error: holding it would let
            // one client grow this buffer without bound.
            if tail >= max {
                error = Some(FrameTooLong {
                    max_frame_bytes: max,
                });
            }
        }

        let chunk = if count > 0 {
            let held = self.partial.len();
            let need = held + complete_end;
            if self.partial.capacity() < need {
                self.partial.reserve(need.max(MIN_ALLOCATION_BYTES) - held);
            }
            self.partial.extend_from_slice(&input[..complete_end]);
            let bytes = self.partial.split_to(need).freeze();
            Some(Chunk { bytes, count })
        } else {
            None
        };

        if error.is_some() {
            self.failed = true;
            self.partial = BytesMut::new();
        } else {
            let rest = &input[complete_end..];
            if !rest.is_empty() {
                if self.partial.capacity() - self.partial.len() < rest.len() {
                    self.partial.reserve(rest.len().max(MIN_ALLOCATION_BYTES));
                }
                self.partial.extend_from_slice(rest);
            }
        }
        Decoded { chunk, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces cut at `cuts`, returns the lines and whether it failed.
    fn run(max: usize, input: &[u8], cuts: &[usize]) -> (Vec<Vec<u8>>, bool) {
        let mut d = LineDecoder::new(max);
        let mut lines = Vec::new();
        let mut failed = false;
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(input.len());
        for end in bounds {
            let out = d.decode(&input[at..end]);
            at = end;
            if let Some(c) = out.chunk {
                assert_eq!(c.count, c.lines().count());
                assert!(c.bytes.ends_with(b"\n"));
                lines.extend(c.lines().map(|l| l.to_vec()));
            }
            if out.error.is_some() {
                assert!(!failed, "error reported twice");
                failed = true;
            }
        }
        assert_eq!(failed, d.failed());
        (lines, failed)
    }

    #[test]
    fn lines_are_byte_exact_crlf_kept() {
        let (lines, failed) = run(100, b"a\r\nbb\n\nccc", &[]);
        assert_eq!(
            lines,
            vec![b"a\r\n".to_vec(), b"bb\n".to_vec(), b"\n".to_vec()]
        );
        assert!(!failed);
    }

    #[test]
    fn limit_counts_the_newline() {
        assert_eq!(run(4, b"abc\n", &[]), (vec![b"abc\n".to_vec()], false));
        assert!(run(4, b"abcd\n", &[]).1);
        // Partial line reaching the limit without a newline can never become valid.
        assert!(run(4, b"abcd", &[]).1);
        assert_eq!(run(4, b"abc", &[]), (vec![], false));
    }

    #[test]
    fn lines_before_an_overlong_one_are_kept_nothing_after() {
        let (lines, failed) = run(4, b"ok\nTOOLONG\nno\n", &[]);
        assert_eq!(lines, vec![b"ok\n".to_vec()]);
        assert!(failed);
    }

    #[test]
    fn error_line_names_variable_and_limit() {
        let e = FrameTooLong {
            max_frame_bytes: 65536,
        };
        assert_eq!(
            &e.error_line()[..],
            b"-ERR frame exceeds RINGFAN_MAX_FRAME_BYTES (65536)\n"
        );
    }

    #[test]
    fn every_single_split_gives_same_frames() {
        let input = b"hello\nworld\r\n\nxy\nthis-line-is-too-long-for-8\nafter\n";
        for max in [1, 2, 3, 6, 8, 64] {
            let whole = run(max, input, &[]);
            for cut in 0..=input.len() {
                assert_eq!(run(max, input, &[cut]), whole, "max {max} cut {cut}");
            }
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    assert_eq!(run(max, input, &[a, b]), whole, "max {max} cuts {a},{b}");
                }
            }
        }
    }

    #[test]
    fn byte_at_a_time_matches_whole() {
        let input: Vec<u8> = (0..2000u32)
            .map(|i| if i % 37 == 0 { b'\n' } else { (i % 251) as u8 })
            .collect();
        let cuts: Vec<usize> = (1..input.len()).collect();
        assert_eq!(run(40, &input, &cuts), run(40, &input, &[]));
    }

    /// A small xorshift so the fuzz-style test is deterministic without extra dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_input_random_splits_never_panic_and_agree() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            let len = (rng.next() % 300) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.next().is_multiple_of(8) {
                        b'\n'
                    } else {
                        rng.next() as u8
                    }
                })
                .collect();
            let max = 1 + (rng.next() % 40) as usize;
            let mut cuts: Vec<usize> = (0..(rng.next() % 12))
                .map(|_| {
                    if len == 0 {
                        0
                    } else {
                        (rng.next() as usize) % (len + 1)
                    }
                })
                .collect();
            cuts.sort_unstable();
            let whole = run(max, &input, &[]);
            assert_eq!(
                run(max, &input, &cuts),
                whole,
                "max {max} input {input:?} cuts {cuts:?}"
            );
            // The reference: split by hand.
            let mut expect = Vec::new();
            let mut failed = false;
            let mut rest = &input[..];
            while let Some(p) = rest.iter().position(|&b| b == b'\n') {
                if p + 1 > max {
                    failed = true;
                    break;
                }
                expect.push(rest[..=p].to_vec());
                rest = &rest[p + 1..];
            }
            if !failed && rest.len() >= max {
                failed = true;
            }
            assert_eq!(whole, (expect, failed));
        }
    }

    #[test]
    fn buffer_held_is_bounded_by_limit() {
        let mut d = LineDecoder::new(10);
        d.decode(b"123456789");
        assert_eq!(d.buffered_bytes(), 9);
        let out = d.decode(b"0");
        assert!(out.error.is_some());
        assert_eq!(d.buffered_bytes(), 0);
        assert_eq!(d.decode(b"\n"), Decoded::default());
    }
}
