//! Deliberate bugs injected into the server or the driver, and the test that proves each one
//! is caught by the checks.

use bytes::Bytes;
use ringfan_ring::Driver;

use crate::lifecycle::{Closing, WriteHalf};

use super::trace::Ev;
use super::{run_seed, Opts, Sim};

/// Deliberate bugs injected into the server's state (between loop turns) or into the driver, to
/// show that the checks catch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mutant {
    /// The server forgets that a recv is armed.
    ForgetRecv,
    /// A message is queued for a connection whose subscription already dropped.
    QueueAfterUnsubscribe,
    /// A received buffer is dropped without being recycled.
    LeakBuffer,
    /// A received buffer is recycled while the connection still holds it.
    DoubleRecycle,
    /// The driver loses the final completions of cancelled operations.
    LoseCancelFinals,
    /// The server counts a cancel in flight that was never submitted.
    PhantomCancel,
    /// One byte of a queued message is skipped (a miscounted short send).
    SkipByte,
    /// A whole queued message is dropped.
    DropMessage,
    /// A queued integer reply (to a RESP peer's PUBLISH) is dropped.
    DropReply,
}

impl Sim {
    /// A deliberate bug, once per run, in worker 0 (see [`Mutant`]).
    pub(super) fn maybe_mutate(&mut self) {
        let Some(m) = self.opts.mutant else {
            return;
        };
        if self.mutant_applied || self.step < 5 || !self.rng.chance(200) {
            return;
        }
        let w = &mut self.workers[0];
        let target = w.conns.iter().map(|(s, _)| s).find(|&s| {
            let c = &w.conns[s];
            match m {
                Mutant::ForgetRecv => c.recv_in_flight && c.closing == Closing::No,
                Mutant::QueueAfterUnsubscribe => c.write == WriteHalf::Draining,
                Mutant::LeakBuffer | Mutant::DoubleRecycle => !c.pending.is_empty(),
                Mutant::PhantomCancel => c.closing == Closing::No,
                // Only messages no send in flight points at: the kernel may be reading those.
                Mutant::SkipByte => c.queue.get(idle_from(c)).is_some_and(|b| b.len() > 1),
                Mutant::DropMessage => c.queue.len() > idle_from(c),
                Mutant::DropReply => idle_reply(c).is_some(),
                Mutant::LoseCancelFinals => false,
            }
        });
        let Some(slot) = target else {
            return;
        };
        let c = &mut w.conns[slot];
        match m {
            Mutant::ForgetRecv => c.recv_in_flight = false,
            Mutant::QueueAfterUnsubscribe => {
                c.queue.push_back(Bytes::from_static(b"mutant\n"));
                c.queue_bytes += 7;
                c.queued_total += 7;
            }
            Mutant::LeakBuffer => {
                let (_, len) = c.pending.pop_back().expect("pending");
                c.pending_bytes -= len as usize;
            }
            Mutant::DoubleRecycle => {
                let (id, _) = *c.pending.front().expect("pending");
                w.driver.recycle(id);
            }
            Mutant::PhantomCancel => c.cancels_in_flight += 1,
            Mutant::SkipByte => {
                let i = idle_from(c);
                c.queue[i] = c.queue[i].slice(1..);
                c.queue_bytes -= 1;
            }
            Mutant::DropReply => {
                let i = idle_reply(c).expect("an idle reply");
                let b = c.queue.remove(i).expect("idle reply");
                c.queue_bytes -= b.len();
            }
            Mutant::DropMessage => {
                let i = idle_from(c);
                let b = c.queue.remove(i).expect("idle message");
                c.queue_bytes -= b.len() - if i == 0 { c.head_sent } else { 0 };
                if i == 0 {
                    c.head_sent = 0;
                }
            }
            Mutant::LoseCancelFinals => unreachable!(),
        }
        self.mutant_applied = true;
        self.trace
            .borrow_mut()
            .push(Ev::Note(format!("MUTANT {m:?} applied to w0 slot {slot}")));
    }
}

/// Index of a queued integer reply the in-flight send (if any) does not point at; never the
/// head, part of which may be sent already.
fn idle_reply(c: &crate::conn::Conn) -> Option<usize> {
    (idle_from(c).max(1)..c.queue.len()).find(|&i| c.queue[i].first() == Some(&b':'))
}

/// Index of the first queued message the in-flight send (if any) does not point at.
pub(super) fn idle_from(c: &crate::conn::Conn) -> usize {
    if !c.send_in_flight {
        return 0;
    }
    let mut left = c.send_bytes;
    for (i, b) in c.queue.iter().enumerate() {
        if left == 0 {
            return i;
        }
        let part = b.len() - if i == 0 { c.head_sent } else { 0 };
        left = left.saturating_sub(part);
    }
    c.queue.len()
}

#[test]
fn checks_catch_injected_bugs() {
    let cases: &[(Mutant, bool, &[&str])] = &[
        (
            Mutant::ForgetRecv,
            false,
            &[
                "close-with-ops-in-flight",
                "two-recvs",
                "slot-freed-with-ops",
            ],
        ),
        (Mutant::PhantomCancel, true, &["bookkeeping"]),
        (Mutant::PhantomCancel, false, &["not-freed"]),
        (Mutant::SkipByte, true, &["stream"]),
        (Mutant::DropMessage, true, &["stream"]),
        (Mutant::DropReply, true, &["stream"]),
        (
            Mutant::QueueAfterUnsubscribe,
            true,
            &["queued-after-unsubscribe"],
        ),
        (Mutant::LeakBuffer, true, &["buffer-leak"]),
        (
            Mutant::DoubleRecycle,
            true,
            &["buffer-recycle", "buffer-read"],
        ),
        (Mutant::LoseCancelFinals, true, &["not-freed"]),
    ];
    for &(mutant, bookkeeping, expected) in cases {
        let opts = Opts {
            mutant: Some(mutant),
            bookkeeping,
            full_trace: false,
        };
        let caught = (0..300).find_map(|seed| run_seed(seed, opts).err());
        let f = caught.unwrap_or_else(|| panic!("{mutant:?} was never caught in 300 seeds"));
        println!(
            "{mutant:?} (bookkeeping checks {bookkeeping}): caught, seed {} step {}: {}: {}",
            f.seed, f.step, f.violation.kind, f.violation.detail
        );
        assert!(
            f.mutant_applied && expected.contains(&f.violation.kind),
            "{mutant:?} (bookkeeping checks {bookkeeping}) should break one of {expected:?}:\n{f}"
        );
    }
}
