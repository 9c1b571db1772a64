//! The invariants checked after every loop turn ([`Sim::check_worker`]) and at the end of a
//! run ([`Sim::check_end`]), and the server's own bookkeeping compared with the ring.

use ringfan_ring::{Op, UserData};

use crate::lifecycle::{Closing, ReadHalf, WriteHalf};
use crate::worker::Worker;

use super::driver::{BufState, Kind, OpState, SimDriver, LISTENER_SLOT_MIN};
use super::trace::{fmt_ud, Violation};
use super::Sim;

/// A connection's counters as of the last check.
pub(super) struct Snap {
    pub(super) slot: usize,
    pub(super) generation: u32,
    pub(super) subscribed: bool,
    pub(super) queued_total: u64,
    pub(super) queue_bytes: usize,
}

impl Sim {
    /// Every invariant that must hold between two loop turns.
    pub(super) fn check_worker(&mut self, i: usize) -> Result<(), Violation> {
        let w = &self.workers[i];
        let d = &w.driver;
        if let Some(v) = d.violations.borrow_mut().drain(..).next() {
            return Err(v);
        }
        let live = |ud: UserData| {
            w.conns
                .get(ud.slot() as usize)
                .is_some_and(|c| c.generation == ud.generation())
        };
        // No slot is freed while an operation of it is in flight.
        for op in d.ops.values() {
            if op.ud.slot() < LISTENER_SLOT_MIN && !live(op.ud) {
                return Err(Violation::new(
                    "slot-freed-with-ops",
                    format!(
                        "{} ({}) on fd {} is still in flight but its connection was freed",
                        op.kind.name(),
                        fmt_ud(op.ud),
                        op.fd
                    ),
                ));
            }
        }
        // Buffers handed to the server are exactly those its connections hold.
        let mut held: Vec<u16> = w
            .conns
            .iter()
            .flat_map(|(_, c)| c.pending.iter().map(|(id, _)| *id))
            .collect();
        held.sort_unstable();
        if let Some(pair) = held.windows(2).find(|p| p[0] == p[1]) {
            return Err(Violation::new(
                "buffer-recycle",
                format!("buffer {} is pending twice", pair[0]),
            ));
        }
        for (id, st) in d.buf_state.iter().enumerate() {
            let pending = held.binary_search(&(id as u16)).is_ok();
            if *st == BufState::Server && !pending {
                return Err(Violation::new(
                    "buffer-leak",
                    format!(
                        "buffer {id} was handed to the server and is neither pending nor recycled"
                    ),
                ));
            }
            if *st != BufState::Server && pending {
                return Err(Violation::new(
                    "buffer-recycle",
                    format!("buffer {id} is pending in a connection but was given back ({st:?})"),
                ));
            }
        }
        // No message is queued for a connection after its subscription dropped.
        for (slot, c) in w.conns.iter() {
            let Some(s) = self.snaps[i]
                .iter()
                .find(|s| s.slot == slot && s.generation == c.generation)
            else {
                continue;
            };
            if !s.subscribed && (c.queued_total > s.queued_total || c.queue_bytes > s.queue_bytes) {
                return Err(Violation::new(
                    "queued-after-unsubscribe",
                    format!(
                        "slot {slot} gen {} ({:?}): queued_total {} -> {}, queue_bytes {} -> {} after its subscription dropped",
                        c.generation, c.write, s.queued_total, c.queued_total, s.queue_bytes, c.queue_bytes
                    ),
                ));
            }
        }
        if self.opts.bookkeeping {
            check_bookkeeping(w)?;
        }
        self.snaps[i] = w
            .conns
            .iter()
            .map(|(slot, c)| Snap {
                slot,
                generation: c.generation,
                subscribed: c.write == WriteHalf::Subscribed,
                queued_total: c.queued_total,
                queue_bytes: c.queue_bytes,
            })
            .collect();
        Ok(())
    }

    /// After every worker's `turn` returned true.
    pub(super) fn check_end(&self) -> Result<(), (usize, Violation)> {
        for (i, w) in self.workers.iter().enumerate() {
            let d = &w.driver;
            let err = |kind, detail| Err((i, Violation::new(kind, detail)));
            if !w.conns.is_empty() {
                return err("not-freed", self.describe_leftovers());
            }
            // The server does not wait for the completion of the cancel that stops a listener's
            // accept, only for the accept's own final one: at exit that cancel may still be
            // unreaped, which is harmless (it names a user_data, not an fd).
            let listener_cancel =
                |o: &OpState| matches!(o.kind, Kind::Cancel(_)) && o.ud.slot() >= LISTENER_SLOT_MIN;
            if let Some(op) = d.ops.values().find(|o| !listener_cancel(o)) {
                return err(
                    "end-state",
                    format!(
                        "the server finished with {} ({}) on fd {} in flight",
                        op.kind.name(),
                        fmt_ud(op.ud),
                        op.fd
                    ),
                );
            }
            let unreaped =
                d.cq.iter()
                    .filter(|e| !d.ops.get(&e.op).is_some_and(listener_cancel))
                    .count();
            if unreaped > 0 || !d.sq.is_empty() {
                return err(
                    "end-state",
                    format!(
                        "the server finished with {unreaped} completions unreaped, {} submissions queued",
                        d.sq.len()
                    ),
                );
            }
            if let Some(id) = d.buf_state.iter().position(|s| *s != BufState::Kernel) {
                return err(
                    "buffer-leak",
                    format!(
                        "buffer {id} not back in the pool at the end ({:?})",
                        d.buf_state[id]
                    ),
                );
            }
            if let Some(fd) = d.socks.keys().next() {
                return err(
                    "not-freed",
                    format!("fd {fd} was accepted and never closed"),
                );
            }
        }
        Ok(())
    }
}

/// The server's own bookkeeping agrees with what is in flight in the ring.
pub(super) fn check_bookkeeping(w: &Worker<SimDriver>) -> Result<(), Violation> {
    let d = &w.driver;
    let bad = |detail: String| Err(Violation::new("bookkeeping", detail));
    let mut memberships = 0;
    for (slot, c) in w.conns.iter() {
        if !c.subs.is_empty() && c.write != WriteHalf::Subscribed {
            return bad(format!(
                "slot {slot} holds topics after its subscription ended"
            ));
        }
        for sub in &c.subs {
            memberships += 1;
            let members = w.index.members(sub.kind, &sub.topic);
            if members.get(sub.pos) != Some(&slot) {
                return bad(format!(
                    "slot {slot}'s place in topic {:?} is stale",
                    sub.topic
                ));
            }
            let seen = w.shared.interest(w.id).count(sub.kind, &sub.topic);
            if seen != members.len() as u64 {
                return bad(format!(
                    "topic {:?}: {} local members, {seen} in the shared interest",
                    sub.topic,
                    members.len()
                ));
            }
        }
    }
    if memberships != w.index.total_members() {
        return bad(format!(
            "connections hold {memberships} topic memberships, the index {}",
            w.index.total_members()
        ));
    }
    for (slot, c) in w.conns.iter() {
        let mut n = [0usize; 8];
        for op in d.ops.values() {
            if op.ud.slot() as usize == slot && op.ud.generation() == c.generation {
                n[op.ud.op().map(|o| o as usize).unwrap_or(0)] += 1;
            }
        }
        let who = format!("slot {slot} gen {} fd {}", c.generation, c.fd);
        let flags = [
            ("recv_in_flight", c.recv_in_flight, Op::Recv),
            ("send_in_flight", c.send_in_flight, Op::Send),
            ("shutdown_in_flight", c.shutdown_in_flight, Op::Shutdown),
            ("close_in_flight", c.close_in_flight, Op::Close),
        ];
        for (name, flag, op) in flags {
            if flag != (n[op as usize] > 0) || n[op as usize] > 1 {
                return bad(format!(
                    "{who}: {name} is {flag} but the ring has {} {} in flight",
                    n[op as usize],
                    op.name()
                ));
            }
        }
        if c.cancels_in_flight as usize != n[Op::Cancel as usize] {
            return bad(format!(
                "{who}: cancels_in_flight is {} but the ring has {} cancels in flight",
                c.cancels_in_flight,
                n[Op::Cancel as usize]
            ));
        }
        if c.closing != Closing::No && (c.read != ReadHalf::Ended || c.write != WriteHalf::Ended) {
            return bad(format!(
                "{who}: closing {:?} with read {:?}, write {:?}",
                c.closing, c.read, c.write
            ));
        }
        if c.close_in_flight != (c.closing == Closing::CloseSubmitted) {
            return bad(format!(
                "{who}: close_in_flight {} in {:?}",
                c.close_in_flight, c.closing
            ));
        }
        if c.closing == Closing::No
            && c.send_in_flight
            && !matches!(c.write, WriteHalf::Subscribed | WriteHalf::Draining)
        {
            return bad(format!("{who}: a send in flight in {:?}", c.write));
        }
        let queued: usize = c.queue.iter().map(|b| b.len()).sum::<usize>() - c.head_sent;
        if queued != c.queue_bytes {
            return bad(format!(
                "{who}: queue_bytes {} but the queue holds {queued}",
                c.queue_bytes
            ));
        }
        if !c.close_in_flight {
            match d.socks.get(&c.fd) {
                Some(s) if s.owner == Some((slot as u32, c.generation)) => {}
                Some(s) => {
                    return bad(format!(
                        "{who}: the fd belongs to {:?} in the ring",
                        s.owner
                    ))
                }
                None => return bad(format!("{who}: the fd is not open in the ring")),
            }
        }
    }
    Ok(())
}
