//! Topics: joining and leaving them, routing a published message to the workers that want it,
//! and the `PUBSUB` questions that need every worker's view.
//!
//! Interest is changed under this worker's own lock, before the confirmation of a subscription
//! is queued: a message published anywhere after the client has read its confirmation is routed
//! here (see [`crate::topics`]). Routing reads each other worker's interest, one lock at a time,
//! never while holding a lock of its own.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use ringfan_protocol::glob;
use ringfan_protocol::resp::{encode, Kind, Query};
use ringfan_ring::Driver;

use super::Worker;
use crate::lifecycle::WriteHalf;
use crate::topics::{Message, Sub};

impl<D: Driver> Worker<D> {
    /// Puts a message this worker's connection `from` published into this turn's batch, and
    /// into the outgoing batch of every other worker with a subscriber for it. Returns how many
    /// subscribers it reaches (what `PUBLISH` answers).
    pub(crate) fn publish(&mut self, message: Message, from: usize) -> u64 {
        let message = Arc::new(message);
        if self.shared.backbone.get().is_some() {
            self.backbone_out.push(Arc::clone(&message));
        }
        let mut receivers = self.index.receivers(message.kind, &message.topic) as u64;
        for peer in 0..self.shared.workers {
            if peer == self.id {
                continue;
            }
            let there = self
                .shared
                .interest(peer)
                .receivers(message.kind, &message.topic);
            if there > 0 {
                receivers += there;
                self.outgoing[peer].push(Arc::clone(&message));
                self.stats.hub_messages_sent += 1;
            } else {
                self.stats.hub_messages_skipped += 1;
            }
        }
        self.batch.push((message, from));
        receivers
    }

    /// Starts delivering `topics` of `kind` to `slot`, visible to every worker on return.
    pub(crate) fn join(&mut self, slot: usize, kind: Kind, topics: &[Bytes]) {
        // Messages published before this subscription, still undelivered, are not for it.
        if !self.batch.is_empty() {
            self.fan_out_batch();
        }
        if self.evicted_by_fan_out(slot) {
            return;
        }
        let mut interest = self.shared.interest_mut(self.id);
        for topic in topics {
            let pos = self.index.join(kind, topic, slot);
            let subs = &mut self.conns[slot].subs;
            if subs.capacity() == 0 {
                // Most connections hold one topic: room for exactly one at first.
                subs.reserve_exact(1);
            }
            subs.push(Sub {
                kind,
                topic: topic.clone(),
                pos,
            });
            if interest.add(kind, topic) {
                // This worker's first subscriber of the topic: the node may need it from NATS.
                if let Some(link) = self.shared.backbone.get() {
                    link.interest(kind, topic, true);
                }
            }
        }
    }

    /// Stops delivering `topics` of `kind` to `slot`.
    pub(crate) fn leave(&mut self, slot: usize, kind: Kind, topics: &[Bytes]) {
        // Messages published before the unsubscribe, still undelivered, are still for it.
        if !self.batch.is_empty() {
            self.fan_out_batch();
        }
        if self.evicted_by_fan_out(slot) {
            return;
        }
        for topic in topics {
            let subs = &mut self.conns[slot].subs;
            let i = subs
                .iter()
                .position(|s| s.kind == kind && s.topic == topic)
                .expect("unsubscribe from a topic not held");
            let sub = subs.swap_remove(i);
            self.leave_one(slot, sub);
        }
    }

    /// True if the fan-out just run evicted `slot` (what it was sent did not fit its queue):
    /// its subscription has ended and it left every topic, so a join would make it a member no
    /// one removes (it outlives the connection) and a leave would find the topic gone.
    fn evicted_by_fan_out(&self, slot: usize) -> bool {
        self.conns[slot].write != WriteHalf::Subscribed
    }

    /// Leaves every topic (the connection's subscription has ended).
    pub(crate) fn leave_all(&mut self, slot: usize) {
        let subs = std::mem::take(&mut self.conns[slot].subs);
        for sub in subs {
            self.leave_one(slot, sub);
        }
    }

    fn leave_one(&mut self, slot: usize, sub: Sub) {
        if let Some(moved) = self.index.leave(sub.kind, &sub.topic, sub.pos, slot) {
            let theirs = self.conns[moved]
                .subs
                .iter_mut()
                .find(|s| s.kind == sub.kind && s.topic == sub.topic)
                .expect("a topic member holds the topic");
            theirs.pos = sub.pos;
        }
        let last = self
            .shared
            .interest_mut(self.id)
            .remove(sub.kind, &sub.topic);
        if last {
            if let Some(link) = self.shared.backbone.get() {
                link.interest(sub.kind, &sub.topic, false);
            }
        }
    }

    /// Answers a `PUBSUB` question over every worker's subscriptions.
    pub(crate) fn query(&self, query: &Query) -> Bytes {
        let workers = 0..self.shared.workers;
        match query {
            Query::Channels { shard, pattern } => {
                let kind = if *shard { Kind::Shard } else { Kind::Channel };
                let mut seen: HashSet<Bytes> = HashSet::new();
                for w in workers {
                    let interest = self.shared.interest(w);
                    seen.extend(
                        interest
                            .topics(kind)
                            .filter(|t| pattern.as_ref().is_none_or(|p| glob::matches(p, t)))
                            .cloned(),
                    );
                }
                let mut all: Vec<Bytes> = seen.into_iter().collect();
                all.sort_unstable();
                encode::bulk_array(&all)
            }
            Query::NumSub { shard, channels } => {
                let kind = if *shard { Kind::Shard } else { Kind::Channel };
                let counts: Vec<(&Bytes, u64)> = channels
                    .iter()
                    .map(|c| {
                        let n = workers
                            .clone()
                            .map(|w| self.shared.interest(w).count(kind, c))
                            .sum();
                        (c, n)
                    })
                    .collect();
                encode::numsub(&counts)
            }
            Query::NumPat => {
                let mut seen: HashSet<Bytes> = HashSet::new();
                for w in workers {
                    seen.extend(self.shared.interest(w).topics(Kind::Pattern).cloned());
                }
                encode::integer(seen.len() as i64)
            }
        }
    }
}
