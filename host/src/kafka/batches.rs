//! The records a source has read but not yet handed over, one pending batch
//! per lane, and when each batch is due ([`BatchLimits`]).

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use crate::pipeline::source::{BatchLimits, Record};

/// Pending batches, one per lane.
pub(super) struct Batcher {
    lanes: Vec<Pending>,
    max_events: usize,
    limits: BatchLimits,
    /// Hashes keys for [`Pending::users`].
    hasher: RandomState,
}

struct Pending {
    records: Vec<Record>,
    /// Bytes of the records' keys and payloads.
    bytes: usize,
    /// The users of `records`: hashes of the distinct keys (a collision
    /// counts two users as one, which the other bounds still cover), and
    /// the records without a key, each counted as a user of its own.
    users: HashSet<u64>,
    keyless: usize,
    /// When the first of `records` arrived.
    since: Instant,
}

impl Batcher {
    pub(super) fn new(lanes: usize, limits: BatchLimits) -> Batcher {
        let max_events = limits.max_events.max(1);
        let now = Instant::now();
        Batcher {
            lanes: (0..lanes)
                .map(|_| Pending {
                    records: Vec::new(),
                    bytes: 0,
                    users: HashSet::new(),
                    keyless: 0,
                    since: now,
                })
                .collect(),
            max_events,
            limits,
            hasher: RandomState::new(),
        }
    }

    /// Adds `record` to `lane`'s batch; returns the batch once it is full
    /// (by events, users or bytes).
    pub(super) fn push(
        &mut self,
        lane: usize,
        record: Record,
        now: Instant,
    ) -> Option<Vec<Record>> {
        let pending = &mut self.lanes[lane];
        if pending.records.is_empty() {
            pending.since = now;
        }
        pending.bytes += record_bytes(&record);
        pending.count_user(&record, &self.hasher);
        pending.records.push(record);
        let full = pending.records.len() >= self.max_events
            || pending.users() >= self.limits.max_users
            || pending.bytes >= self.limits.max_bytes;
        full.then(|| self.take(lane))
    }

    /// Drops the records of `partitions`, which a rebalance moved: they
    /// will be read again from wherever their new assignment starts.
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        for pending in &mut self.lanes {
            pending
                .records
                .retain(|record| !partitions.contains(&record.partition));
            pending.bytes = pending.records.iter().map(record_bytes).sum();
            let records = std::mem::take(&mut pending.records);
            pending.users.clear();
            pending.keyless = 0;
            for record in &records {
                pending.count_user(record, &self.hasher);
            }
            pending.records = records;
        }
    }

    /// A lane whose oldest record has waited `max_wait` by `now`, with its
    /// batch.
    pub(super) fn take_due(&mut self, now: Instant) -> Option<(usize, Vec<Record>)> {
        let lane = self.lanes.iter().position(|pending| {
            !pending.records.is_empty() && pending.since + self.limits.max_wait <= now
        })?;
        Some((lane, self.take(lane)))
    }

    /// When the next batch falls due, if any is pending.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.lanes
            .iter()
            .filter(|pending| !pending.records.is_empty())
            .map(|pending| pending.since + self.limits.max_wait)
            .min()
    }

    /// Takes `lane`'s batch. The next one starts with the capacity this one
    /// ended with, up to `max_events`, so a lane under load allocates its
    /// batch once and a quiet one does not hold a large allocation.
    fn take(&mut self, lane: usize) -> Vec<Record> {
        let pending = &mut self.lanes[lane];
        pending.bytes = 0;
        pending.users.clear();
        pending.keyless = 0;
        let capacity = pending.records.len().min(self.max_events);
        std::mem::replace(&mut pending.records, Vec::with_capacity(capacity))
    }
}

impl Pending {
    fn count_user(&mut self, record: &Record, hasher: &RandomState) {
        match &record.key {
            Some(key) => {
                self.users.insert(hasher.hash_one(key));
            }
            None => self.keyless += 1,
        }
    }

    fn users(&self) -> usize {
        self.users.len() + self.keyless
    }
}

/// What a record holds in memory beyond its fixed size.
fn record_bytes(record: &Record) -> usize {
    record.payload.len() + record.key.as_ref().map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            partition,
            offset,
            key: None,
            payload: Vec::new(),
        }
    }

    fn offsets(records: &[Record]) -> Vec<(i32, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    const WAIT: Duration = Duration::from_millis(50);

    fn batcher(lanes: usize, max_events: usize) -> Batcher {
        Batcher::new(
            lanes,
            BatchLimits {
                max_events,
                max_users: usize::MAX,
                max_bytes: usize::MAX,
                max_wait: WAIT,
            },
        )
    }

    #[test]
    fn a_batch_is_handed_over_when_full() {
        let mut batcher = batcher(2, 3);
        let now = Instant::now();
        assert!(batcher.push(0, record(0, 0), now).is_none());
        assert!(batcher.push(1, record(1, 0), now).is_none());
        assert!(batcher.push(0, record(2, 0), now).is_none());
        let full = batcher.push(0, record(0, 1), now).expect("three records");
        assert_eq!(offsets(&full), [(0, 0), (2, 0), (0, 1)]);
        assert!(batcher.push(0, record(0, 2), now).is_none(), "starts empty");
    }

    #[test]
    fn a_batch_is_handed_over_at_max_users() {
        let mut batcher = Batcher::new(
            1,
            BatchLimits {
                max_events: 100,
                max_users: 3,
                max_bytes: usize::MAX,
                max_wait: WAIT,
            },
        );
        let now = Instant::now();
        let keyed = |offset, key: &str| Record {
            key: Some(key.as_bytes().to_vec()),
            ..record(0, offset)
        };
        assert!(batcher.push(0, keyed(0, "a"), now).is_none());
        assert!(batcher.push(0, keyed(1, "b"), now).is_none());
        assert!(
            batcher.push(0, keyed(2, "a"), now).is_none(),
            "a is one user"
        );
        assert!(batcher.push(0, keyed(3, "b"), now).is_none());
        let full = batcher
            .push(0, record(0, 4), now)
            .expect("a record without a key is a third user");
        assert_eq!(full.len(), 5);
        assert!(batcher.push(0, keyed(5, "a"), now).is_none(), "counts anew");
        assert!(batcher.push(0, keyed(6, "c"), now).is_none());
        // A rebalance takes partition 0's records: its users no longer count.
        batcher.forget(&[0]);
        let moved = |offset, key| Record {
            partition: 1,
            ..keyed(offset, key)
        };
        assert!(batcher.push(0, moved(7, "a"), now).is_none());
        assert!(batcher.push(0, moved(8, "c"), now).is_none());
        assert!(batcher.push(0, moved(9, "d"), now).is_some());
    }

    #[test]
    fn a_batch_is_handed_over_at_max_bytes() {
        let mut batcher = Batcher::new(
            1,
            BatchLimits {
                max_events: 100,
                max_users: usize::MAX,
                max_bytes: 10,
                max_wait: WAIT,
            },
        );
        let now = Instant::now();
        let sized = |offset, bytes| Record {
            payload: vec![b'x'; bytes],
            key: Some(b"k".to_vec()),
            ..record(0, offset)
        };
        assert!(batcher.push(0, sized(0, 4), now).is_none());
        let full = batcher
            .push(0, sized(1, 4), now)
            .expect("10 bytes with the keys");
        assert_eq!(offsets(&full), [(0, 0), (0, 1)]);
        assert!(batcher.push(0, sized(2, 4), now).is_none(), "counts anew");
    }

    #[test]
    fn a_batch_is_due_max_wait_after_its_first_record() {
        let mut batcher = batcher(2, 100);
        let start = Instant::now();
        assert_eq!(batcher.next_due(), None, "nothing pending");
        batcher.push(1, record(1, 0), start);
        batcher.push(0, record(0, 0), start + WAIT / 2);
        batcher.push(1, record(1, 1), start + WAIT / 2);
        assert_eq!(batcher.next_due(), Some(start + WAIT));
        assert!(batcher.take_due(start + WAIT / 2).is_none());

        let (lane, due) = batcher.take_due(start + WAIT).expect("lane 1 due");
        assert_eq!((lane, offsets(&due)), (1, vec![(1, 0), (1, 1)]));
        assert!(batcher.take_due(start + WAIT).is_none(), "lane 0 not yet");
        assert_eq!(batcher.next_due(), Some(start + WAIT + WAIT / 2));
        let (lane, due) = batcher.take_due(start + 2 * WAIT).expect("lane 0 due");
        assert_eq!((lane, offsets(&due)), (0, vec![(0, 0)]));
        assert_eq!(batcher.next_due(), None);
    }

    #[test]
    fn forgetting_partitions_keeps_the_others() {
        let mut batcher = batcher(2, 100);
        let now = Instant::now();
        for offset in 0..3 {
            for partition in 0..4 {
                batcher.push(partition as usize % 2, record(partition, offset), now);
            }
        }
        batcher.forget(&[1, 2]);
        let (_, lane0) = batcher.take_due(now + WAIT).expect("lane 0");
        let (_, lane1) = batcher.take_due(now + WAIT).expect("lane 1");
        assert_eq!(offsets(&lane0), [(0, 0), (0, 1), (0, 2)]);
        assert_eq!(offsets(&lane1), [(3, 0), (3, 1), (3, 2)]);
    }

    #[test]
    fn a_lane_emptied_by_forgetting_is_not_due() {
        let mut batcher = batcher(1, 100);
        let now = Instant::now();
        batcher.push(0, record(0, 0), now);
        batcher.forget(&[0]);
        assert_eq!(batcher.next_due(), None);
        assert!(batcher.take_due(now + WAIT).is_none());
        batcher.push(0, record(0, 0), now + WAIT);
        assert_eq!(batcher.next_due(), Some(now + 2 * WAIT), "waits anew");
    }
}
