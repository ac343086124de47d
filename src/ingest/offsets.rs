//! At-least-once offset tracking: which input offsets may be stored.
//!
//! Pure. Every consumed message is registered with the number of output
//! messages it caused (scored points plus dead letters). Each broker
//! acknowledgement of one of those outputs calls [`OffsetTracker::ack`].
//!
//! # Why the ordering is safe
//! The offset stored for a partition is always `o + 1` where every message
//! `<= o` of that partition has had *all* of its outputs acknowledged by the
//! broker. Messages are registered in offset order (one partition is read in
//! order), so the committable offset is the smallest offset that still has
//! unacknowledged outputs, or one past the last registered message when none
//! has. Kafka commits only stored offsets (`enable.auto.offset.store=false`),
//! so after a crash or rebalance the next owner starts at the first message
//! whose outputs might not have been delivered: some outputs may be repeated,
//! none is lost. Outputs of a partition revoked in the meantime belong to an
//! older *generation* and are ignored, since the new owner re-reads them.

use std::collections::{BTreeMap, HashMap};

pub use crate::flow::Token;

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Offsets with outputs still in flight, and how many.
    pending: BTreeMap<i64, u32>,
    /// One past the highest registered offset.
    next: Option<i64>,
    /// Last offset handed out for storing.
    stored: Option<i64>,
    /// Whether the partition's rebuild has reached its committed offset
    /// (its window state is whole).
    rebuilt: bool,
}

impl Partition {
    fn committable(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }

    /// The committable offset, if it moved past the one last handed out.
    fn advance(&mut self) -> Option<i64> {
        let c = self.committable()?;
        if self.stored.is_none_or(|s| c > s) {
            self.stored = Some(c);
            Some(c)
        } else {
            None
        }
    }
}

/// Offset bookkeeping for the partitions of one input topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
    generation: u64,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start tracking `partition` afresh (on assignment); returns its generation.
    pub fn assign(&mut self, partition: i32) -> u64 {
        self.generation += 1;
        self.partitions.insert(
            partition,
            Partition {
                generation: self.generation,
                ..Partition::default()
            },
        );
        self.generation
    }

    /// Stop tracking `partition` (on revocation). Its pending acks are ignored.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Current generation of `partition`, if assigned.
    pub fn generation(&self, partition: i32) -> Option<u64> {
        self.partitions.get(&partition).map(|p| p.generation)
    }

    /// Record that `partition`'s rebuild is done (or it had none).
    pub fn set_rebuilt(&mut self, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.rebuilt = true;
        }
    }

    /// Whether `partition` is assigned and its rebuild is done.
    pub fn is_rebuilt(&self, partition: i32) -> bool {
        self.partitions.get(&partition).is_some_and(|p| p.rebuilt)
    }

    /// Assigned partitions whose rebuild is not done yet.
    pub fn rebuilding(&self) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, p)| !p.rebuilt)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Messages of `partition` with outputs in flight.
    pub fn pending_for(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.pending.len())
    }

    /// Register a consumed message with `outputs` outputs in flight. Returns
    /// an offset to store if the committable offset advanced.
    pub fn register(&mut self, token: Token, outputs: u32) -> Option<i64> {
        let p = self.partitions.get_mut(&token.partition)?;
        if p.generation != token.generation {
            return None;
        }
        p.next = Some(p.next.map_or(token.offset + 1, |n| n.max(token.offset + 1)));
        if outputs > 0 {
            *p.pending.entry(token.offset).or_insert(0) += outputs;
        }
        p.advance()
    }

    /// One output of `token`'s message was acknowledged. Returns an offset to
    /// store if the committable offset advanced.
    pub fn ack(&mut self, token: Token) -> Option<i64> {
        let p = self.partitions.get_mut(&token.partition)?;
        if p.generation != token.generation {
            return None;
        }
        let remaining = p.pending.get_mut(&token.offset)?;
        *remaining -= 1;
        if *remaining == 0 {
            p.pending.remove(&token.offset);
        }
        p.advance()
    }

    /// Number of messages with outputs in flight, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }

    /// Per partition with registered messages: the committable offset (the
    /// first message with outputs in flight, or one past the last
    /// registered message). Exactly-once commits use it once
    /// [`OffsetTracker::in_flight`] is 0, when it is one past the last
    /// registered message everywhere.
    pub fn positions(&self) -> Vec<(i32, i64)> {
        let mut out: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(id, p)| p.committable().map(|c| (*id, c)))
            .collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(partition: i32, offset: i64, generation: u64) -> Token {
        Token {
            partition,
            offset,
            generation,
        }
    }

    #[test]
    fn stores_only_after_all_predecessors_are_acked() {
        let mut tr = OffsetTracker::new();
        let g = tr.assign(0);
        assert_eq!(tr.register(t(0, 10, g), 2), Some(10));
        assert_eq!(tr.register(t(0, 11, g), 1), None);
        assert_eq!(tr.register(t(0, 12, g), 0), None);
        // Acks out of order: message 11 done first does not move the offset.
        assert_eq!(tr.ack(t(0, 11, g)), None);
        assert_eq!(tr.ack(t(0, 10, g)), None);
        // Last output of 10: 10, 11 and 12 are all done.
        assert_eq!(tr.ack(t(0, 10, g)), Some(13));
        assert_eq!(tr.in_flight(), 0);
    }

    #[test]
    fn messages_without_outputs_advance_immediately() {
        let mut tr = OffsetTracker::new();
        let g = tr.assign(3);
        assert_eq!(tr.register(t(3, 0, g), 0), Some(1));
        assert_eq!(tr.register(t(3, 1, g), 0), Some(2));
    }

    #[test]
    fn stale_generation_is_ignored() {
        let mut tr = OffsetTracker::new();
        let g1 = tr.assign(0);
        tr.register(t(0, 5, g1), 1);
        tr.revoke(0);
        let g2 = tr.assign(0);
        assert_ne!(g1, g2);
        assert_eq!(tr.ack(t(0, 5, g1)), None);
        assert_eq!(tr.register(t(0, 5, g1), 0), None);
        assert_eq!(tr.register(t(0, 7, g2), 1), Some(7));
        assert_eq!(tr.ack(t(0, 7, g2)), Some(8));
    }

    #[test]
    fn partitions_are_independent() {
        let mut tr = OffsetTracker::new();
        let a = tr.assign(0);
        let b = tr.assign(1);
        tr.register(t(0, 0, a), 1);
        assert_eq!(tr.register(t(1, 0, b), 0), Some(1));
        assert_eq!(tr.ack(t(0, 0, a)), Some(1));
    }

    #[test]
    fn positions_are_one_past_the_last_message_once_drained() {
        let mut tr = OffsetTracker::new();
        let a = tr.assign(0);
        let b = tr.assign(1);
        let _unread = tr.assign(2);
        tr.register(t(0, 4, a), 1);
        tr.register(t(0, 5, a), 0);
        tr.register(t(1, 9, b), 2);
        assert_eq!(tr.positions(), vec![(0, 4), (1, 9)]);
        tr.ack(t(0, 4, a));
        tr.ack(t(1, 9, b));
        tr.ack(t(1, 9, b));
        assert_eq!(tr.in_flight(), 0);
        assert_eq!(tr.positions(), vec![(0, 6), (1, 10)]);
    }

    #[test]
    fn a_partition_is_rebuilding_until_told_and_a_new_assignment_starts_over() {
        let mut tr = OffsetTracker::new();
        let g = tr.assign(3);
        assert!(!tr.is_rebuilt(3));
        assert_eq!(tr.rebuilding(), vec![3]);
        tr.set_rebuilt(3);
        assert!(tr.is_rebuilt(3) && tr.rebuilding().is_empty());
        tr.register(t(3, 7, g), 2);
        assert_eq!(tr.pending_for(3), 1);
        tr.assign(3);
        assert!(!tr.is_rebuilt(3), "a new assignment rebuilds again");
        assert_eq!(tr.pending_for(3), 0);
        assert!(!tr.is_rebuilt(9));
    }

    #[test]
    fn unassigned_partition_is_ignored() {
        let mut tr = OffsetTracker::new();
        assert_eq!(tr.register(t(9, 0, 1), 1), None);
        assert_eq!(tr.ack(t(9, 0, 1)), None);
    }
}
