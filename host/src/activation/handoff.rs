//! The messages a process's commits wrote to the outbox, kept in memory for
//! the relay, so that in the usual case (the relay runs in the process that
//! committed) it reads only the outbox's row ids, not the messages again.
//! The outbox stays the truth: a row not found here (written by another
//! process, dropped for room, or a race with the commit) is read from
//! PostgreSQL.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use crate::pipeline::publish::OutgoingEvent;

/// How many bytes of messages the handoff keeps at most; past it, the
/// oldest rows go (the relay reads them from the outbox).
const MAX_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
pub struct Handoff {
    rows: Mutex<Rows>,
}

#[derive(Debug, Default)]
struct Rows {
    by_id: BTreeMap<i64, Vec<OutgoingEvent>>,
    bytes: usize,
}

fn size(messages: &[OutgoingEvent]) -> usize {
    messages.iter().map(|m| m.key.len() + m.payload.len()).sum()
}

impl Handoff {
    /// Keeps the messages of the committed outbox row `id`.
    pub fn put(&self, id: i64, messages: Vec<OutgoingEvent>) {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        rows.bytes += size(&messages);
        rows.by_id.insert(id, messages);
        while rows.bytes > MAX_BYTES {
            let Some((_, oldest)) = rows.by_id.pop_first() else {
                break;
            };
            rows.bytes -= size(&oldest);
        }
    }

    /// Takes the messages of row `id`, when they are here.
    pub fn take(&self, id: i64) -> Option<Vec<OutgoingEvent>> {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let messages = rows.by_id.remove(&id)?;
        rows.bytes -= size(&messages);
        Some(messages)
    }

    /// Drops rows up to `id`: the relay published every outbox row up to
    /// it that it saw, so one still here was put after its row went out.
    pub fn forget_through(&self, id: i64) {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let kept = rows.by_id.split_off(&(id + 1));
        let dropped = std::mem::replace(&mut rows.by_id, kept);
        rows.bytes -= dropped.values().map(|m| size(m)).sum::<usize>();
    }

    pub fn len(&self) -> usize {
        self.rows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_id
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(n: usize) -> Vec<OutgoingEvent> {
        (0..n)
            .map(|i| OutgoingEvent {
                key: format!("u-{i}"),
                payload: b"{}".to_vec(),
            })
            .collect()
    }

    #[test]
    fn rows_are_taken_once_and_forgotten_after_the_relay_passed_them() {
        let handoff = Handoff::default();
        handoff.put(3, messages(2));
        handoff.put(5, messages(1));
        handoff.put(9, messages(1));
        assert_eq!(handoff.take(3).map(|m| m.len()), Some(2));
        assert!(handoff.take(3).is_none(), "taken once");
        handoff.forget_through(5);
        assert!(handoff.take(5).is_none());
        assert_eq!(handoff.len(), 1);
        assert!(handoff.take(9).is_some());
        assert!(handoff.is_empty());
        assert_eq!(handoff.rows.lock().expect("lock").bytes, 0);
    }

    #[test]
    fn the_oldest_rows_go_when_it_is_full() {
        let handoff = Handoff::default();
        let big = |id| {
            vec![OutgoingEvent {
                key: format!("{id}"),
                payload: vec![b'x'; MAX_BYTES / 3],
            }]
        };
        for id in 1..=4 {
            handoff.put(id, big(id));
        }
        assert!(handoff.take(1).is_none(), "dropped for room");
        assert!(handoff.take(4).is_some());
    }
}
