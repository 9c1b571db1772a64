//! The channels of a run and who uses which: K channels, T of them per subscriber, P patterns.
//!
//! - Names: channel j is `<channel>.<j>` for j in 0..K; with K = 1 it is the plain `<channel>`,
//!   so a run without `--topics` puts on the wire exactly what it did before topics existed.
//! - Subscribers: subscriber i (its position among all the run's subscriber connections)
//!   takes channels (i*T + t) mod K for t in 0..T: T consecutive channels, so each channel has
//!   N*T/K subscribers when N*T is a multiple of K.
//! - Patterns: pattern q (0..P) is `<channel>.nomatch.<q>.*`, taken by subscriber q mod N. No
//!   channel name matches it (after `<channel>.` comes a number, never `nomatch`), so a pattern
//!   costs the server a match per published message and adds no delivery.
//! - Publishers: publisher p sends its m-th message (m = 0, 1, 2, ...) at position
//!   c = (p + m) mod K of a fixed tour of the channels, as number m / K + 1 of that channel. So
//!   each (publisher, channel) pair is one contiguous sequence 1, 2, 3, ... and a subscriber
//!   checks gaps and order per pair exactly as it does per publisher with one channel. The
//!   marker's publisher field carries the pair as `p * K + j` (just p when K = 1). Starting
//!   publisher p at position p spreads a low rate over the channels instead of sending every
//!   publisher's first message to the same channel.
//! - The tour visits channel j = c * S mod K at position c, S (the stride) the smallest number
//!   above T with no factor in common with K, so it is a permutation. Why not channel c itself:
//!   consecutive channels have the same subscribers (a subscriber holds T consecutive ones), so
//!   the messages one publisher writes in one batch (20 per millisecond at 20k msgs/s) would all
//!   go to the same few subscribers, which a server then sends as one write each, and the
//!   figure would measure that batching instead of the cost of many channels. A stride above T
//!   moves every next message to another subscriber's channels.
//! - The publisher still counts its messages with one running number n = m + 1 (shared with
//!   the receivers as `first_measured` / `last_sent`); [`Topics::sent_on`] turns that into the
//!   per-channel sequence, so nothing of size K is kept per publisher.

use std::ops::Range;

/// Most channels (`--topics`): with at most 999 publishers, `p * K + j` stays below 10^9 and
/// fits the marker's u32 publisher field.
pub const TOPICS_MAX: u32 = 1_000_000;
/// Most pattern subscriptions (`--patterns`).
pub const PATTERNS_MAX: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topics {
    /// K: channels, 1..=TOPICS_MAX.
    pub channels: u32,
    /// T: channels per subscriber, 1..=K.
    pub per_sub: u32,
    /// P: pattern subscriptions over all subscribers.
    pub patterns: u32,
    /// N: subscriber connections of the run (patterns are spread over them).
    pub subscribers: u32,
    /// S: the publishers' tour visits channel c * S mod K at position c (see the module's
    /// comment); coprime with K.
    stride: u64,
    /// S's inverse modulo K: channel j is at position j * stride_inverse mod K.
    stride_inverse: u64,
}

impl Topics {
    /// K channels, T per subscriber, P patterns, N subscribers.
    pub fn new(channels: u32, per_sub: u32, patterns: u32, subscribers: u32) -> Self {
        let k = channels.max(1) as u64;
        let mut stride = per_sub as u64 + 1;
        // Bounded: K <= 10^6 has at most 7 distinct prime factors, and below 2 * 10^6 a prime
        // comes at least every 150 numbers, so one that does not divide K comes within ~1200.
        while gcd(stride, k) != 1 {
            stride += 1;
        }
        let stride = stride % k;
        Topics {
            channels,
            per_sub,
            patterns,
            subscribers,
            stride,
            stride_inverse: inverse_mod(stride, k),
        }
    }

    /// One channel, every subscriber on it, no patterns: the run without topics.
    #[cfg(test)]
    pub fn single(subscribers: u32) -> Self {
        Topics::new(1, 1, 0, subscribers)
    }

    /// Appends channel `j`'s name.
    pub fn write_name(&self, base: &str, j: u32, out: &mut Vec<u8>) {
        out.extend_from_slice(base.as_bytes());
        if self.channels > 1 {
            out.push(b'.');
            let mut d = [0u8; 20];
            out.extend_from_slice(fmt_u64(j as u64, &mut d));
        }
    }

    pub fn name(&self, base: &str, j: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(base.len() + 11);
        self.write_name(base, j, &mut v);
        v
    }

    /// Pattern `q`'s text.
    pub fn pattern(base: &str, q: u32) -> Vec<u8> {
        format!("{base}.nomatch.{q}.*").into_bytes()
    }

    /// The first of subscriber `i`'s T channels (the others follow it, modulo K).
    pub fn first_channel(&self, i: u32) -> u32 {
        (i as u64 * self.per_sub as u64 % self.channels as u64) as u32
    }

    /// Subscriber `i`'s channels, in the order it subscribes to them (its slots 0..T).
    pub fn channels_of(&self, i: u32) -> impl Iterator<Item = u32> {
        let (first, k) = (self.first_channel(i) as u64, self.channels as u64);
        (0..self.per_sub as u64).map(move |t| ((first + t) % k) as u32)
    }

    /// Which of its slots (0..T) a subscriber whose first channel is `first` keeps channel `j`
    /// in; None if it did not subscribe to `j`. No division: it runs for every marker.
    #[inline]
    pub fn slot_of(&self, first: u32, j: u32) -> Option<u32> {
        let t = if j >= first {
            j - first
        } else {
            j + self.channels - first
        };
        (t < self.per_sub).then_some(t)
    }

    /// The patterns subscriber `i` takes: q = i, i + N, i + 2N, ... below P.
    pub fn patterns_of(&self, i: u32) -> impl Iterator<Item = u32> {
        let n = self.subscribers.max(1) as usize;
        (i..self.patterns).step_by(n)
    }

    /// Subscriptions subscriber `i` waits to see confirmed: its channels and its patterns.
    pub fn subscriptions_of(&self, i: u32) -> usize {
        self.per_sub as usize + self.patterns_of(i).count()
    }

    /// Publisher `p`'s message number `n` (1-based, its running count): (channel, that
    /// channel's sequence number).
    #[inline]
    pub fn route(&self, p: u32, n: u64) -> (u32, u64) {
        let k = self.channels as u64;
        if k == 1 {
            return (0, n);
        }
        let m = n - 1;
        let c = (p as u64 + m) % k;
        ((c * self.stride % k) as u32, m / k + 1)
    }

    /// The marker's publisher field for publisher `p` on channel `j`.
    #[inline]
    pub fn stream(&self, p: u32, j: u32) -> u32 {
        p * self.channels + j
    }

    /// The marker's publisher field back into (publisher, channel).
    #[inline]
    pub fn split(&self, stream: u32) -> (u32, u32) {
        if self.channels == 1 {
            (stream, 0)
        } else {
            (stream / self.channels, stream % self.channels)
        }
    }

    /// How many of publisher `p`'s first `n` messages went to channel `j`: the sequence number
    /// of the last of them on `j` (0 if none).
    pub fn sent_on(&self, p: u32, j: u32, n: u64) -> u64 {
        let k = self.channels as u64;
        // j's position in the tour, then the running index m (0-based) of p's first message
        // there.
        let c = j as u64 * self.stride_inverse % k;
        let first = (c + k - p as u64 % k) % k;
        if n > first {
            (n - 1 - first) / k + 1
        } else {
            0
        }
    }

    /// The measured part of channel `j`'s sequence from publisher `p`, given that publisher's
    /// first measured and last sent running numbers (`first_measured` 0: nothing measured).
    /// Empty if none of p's measured messages went to `j`.
    pub fn measured_on(&self, p: u32, j: u32, first_measured: u64, last_sent: u64) -> Range<u64> {
        if first_measured == 0 || last_sent < first_measured {
            return 0..0;
        }
        let from = self.sent_on(p, j, first_measured - 1) + 1;
        let to = self.sent_on(p, j, last_sent) + 1;
        from..to.max(from)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    // Bounded: b strictly decreases.
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The inverse of `a` modulo `k` (a and k coprime; 0 for k = 1), by the extended Euclidean
/// algorithm.
fn inverse_mod(a: u64, k: u64) -> u64 {
    let (mut r0, mut r1) = (k as i64, a as i64);
    let (mut t0, mut t1) = (0i64, 1i64);
    // Bounded: r1 strictly decreases.
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    debug_assert_eq!(r0, 1, "{a} and {k} are not coprime");
    t0.rem_euclid(k as i64) as u64
}

/// Writes `v` in decimal into `out`, returns the bytes used.
#[inline]
pub fn fmt_u64(mut v: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = 20;
    loop {
        i -= 1;
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &out[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(k: u32, t: u32, p: u32, n: u32) -> Topics {
        Topics::new(k, t, p, n)
    }

    #[test]
    fn names_keep_the_plain_channel_when_there_is_one() {
        assert_eq!(Topics::single(5).name("news", 0), b"news");
        let t = topics(12, 1, 0, 5);
        assert_eq!(t.name("news", 0), b"news.0");
        assert_eq!(t.name("news", 11), b"news.11");
        assert_eq!(Topics::pattern("news", 3), b"news.nomatch.3.*");
    }

    /// bench.sh's Topics shape: N = 1000, K = 10000, T = 100 gives 10 subscribers per channel;
    /// and smaller shapes, including T = K and K not a multiple of T.
    #[test]
    fn every_channel_gets_n_t_over_k_subscribers() {
        for (n, k, t) in [
            (1000u32, 10000u32, 100u32),
            (20, 10, 3),
            (7, 7, 7),
            (12, 8, 2),
        ] {
            let tp = topics(k, t, 0, n);
            let mut per_channel = vec![0u32; k as usize];
            for i in 0..n {
                let mine: Vec<u32> = tp.channels_of(i).collect();
                assert_eq!(mine.len(), t as usize);
                let mut sorted = mine.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(
                    sorted.len(),
                    t as usize,
                    "subscriber {i}: duplicate channel"
                );
                for (slot, &j) in mine.iter().enumerate() {
                    assert_eq!(mine[slot], (i * t + slot as u32) % k);
                    assert_eq!(tp.slot_of(tp.first_channel(i), j), Some(slot as u32));
                    per_channel[j as usize] += 1;
                }
                let others = (0..k).filter(|j| !mine.contains(j));
                for j in others {
                    assert_eq!(tp.slot_of(tp.first_channel(i), j), None, "{i} {j}");
                }
            }
            assert!(
                per_channel.iter().all(|&c| c == n * t / k),
                "N={n} K={k} T={t}: {per_channel:?}"
            );
        }
    }

    #[test]
    fn patterns_go_round_robin_over_the_subscribers() {
        let tp = topics(10, 3, 7, 3);
        let got: Vec<Vec<u32>> = (0..3).map(|i| tp.patterns_of(i).collect()).collect();
        assert_eq!(got, vec![vec![0, 3, 6], vec![1, 4], vec![2, 5]]);
        assert_eq!(tp.subscriptions_of(0), 3 + 3);
        assert_eq!(tp.subscriptions_of(2), 3 + 2);
        // More subscribers than patterns: the last ones get none.
        let tp = topics(1, 1, 2, 5);
        assert_eq!(tp.subscriptions_of(1), 2);
        assert_eq!(tp.subscriptions_of(4), 1);
    }

    /// route, stream/split and sent_on agree with a direct count, message by message; every
    /// K consecutive messages of a publisher visit every channel once.
    #[test]
    fn per_channel_sequences_are_contiguous_and_counted() {
        for (k, t) in [(1u32, 1u32), (2, 1), (5, 1), (7, 3), (12, 2), (10, 10)] {
            let tp = topics(k, t, 0, 1);
            for p in [0u32, 1, 3, 998] {
                let mut next = vec![1u64; k as usize];
                for n in 1..=40u64 {
                    let (j, s) = tp.route(p, n);
                    let round: Vec<u32> = (0..k as u64).map(|d| tp.route(p, n + d).0).collect();
                    let mut visited = round.clone();
                    visited.sort_unstable();
                    visited.dedup();
                    assert_eq!(visited.len(), k as usize, "K={k} T={t}: {round:?}");
                    assert_eq!(s, next[j as usize], "K={k} p={p} n={n}");
                    next[j as usize] += 1;
                    assert_eq!(tp.split(tp.stream(p, j)), (p, j));
                    for c in 0..k {
                        assert_eq!(tp.sent_on(p, c, n), next[c as usize] - 1);
                    }
                }
            }
        }
        // One channel: the per-channel sequence is the publisher's own.
        let tp = Topics::single(1);
        assert_eq!(tp.route(4, 17), (0, 17));
        assert_eq!(tp.measured_on(4, 0, 5, 9), 5..10);
    }

    /// The Topics table's shape (N = 1000, K = 10000, T = 100): any 20 consecutive messages of
    /// a publisher (one millisecond at 20k msgs/s) go to 200 different subscribers, 10 each,
    /// as one channel's messages would; with consecutive channels they went to the same 10.
    #[test]
    fn consecutive_messages_reach_different_subscribers() {
        let tp = topics(10000, 100, 0, 1000);
        let mut subscribers_of = vec![Vec::new(); 10000];
        for i in 0..1000 {
            for j in tp.channels_of(i) {
                subscribers_of[j as usize].push(i);
            }
        }
        for start in (1..=30_000u64).step_by(997) {
            let mut reached: Vec<u32> = (start..start + 20)
                .flat_map(|n| subscribers_of[tp.route(0, n).0 as usize].iter().copied())
                .collect();
            reached.sort_unstable();
            reached.dedup();
            assert_eq!(reached.len(), 200, "messages {start}..{}", start + 20);
        }
    }

    #[test]
    fn strides_are_coprime_and_inverted() {
        for (k, t) in [
            (1u32, 1u32),
            (2, 1),
            (10, 3),
            (10000, 100),
            (1_000_000, 999_999),
        ] {
            let tp = topics(k, t, 0, 1);
            assert_eq!(gcd(tp.stride.max(1), k as u64), 1, "K={k} T={t}");
            assert_eq!(
                tp.stride * tp.stride_inverse % k as u64,
                1 % k as u64,
                "K={k}"
            );
        }
        assert_eq!(topics(10000, 100, 0, 1).stride, 101);
    }

    #[test]
    fn measured_ranges_cover_exactly_the_measured_messages() {
        let tp = topics(7, 1, 0, 1);
        for p in [0u32, 2, 6] {
            for fm in 1..=20u64 {
                for ls in 0..=30u64 {
                    let mut want = vec![Vec::new(); 7];
                    for n in fm..=ls {
                        let (j, s) = tp.route(p, n);
                        want[j as usize].push(s);
                    }
                    for j in 0..7 {
                        let got: Vec<u64> = tp.measured_on(p, j, fm, ls).collect();
                        assert_eq!(got, want[j as usize], "p={p} fm={fm} ls={ls} j={j}");
                    }
                }
            }
            assert!(tp.measured_on(p, 0, 0, 30).is_empty());
        }
    }
}
