//! The inbox read as a [`Source`]: topic [`INBOX_TOPIC`], one partition.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redb::ReadableDatabase;
use tokio_util::sync::CancellationToken;

use super::{INBOX, INBOX_NEXT, INBOX_PARTITION, INBOX_TOPIC, Inner, META, OFFSETS};
use crate::pipeline::source::{Batch, BatchLimits, Lanes, Record, Source};

/// How often a caught-up source looks at its stop token at the least.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The embedded inbox as read by one consumer group. It starts at the
/// group's stored offset and then keeps its read position in memory, without
/// waiting for commits: the lanes skip what the store has already counted.
pub struct EmbeddedSource {
    inner: Arc<Inner>,
    group: String,
}

impl EmbeddedSource {
    pub(super) fn new(inner: Arc<Inner>, group: &str) -> Self {
        Self {
            inner,
            group: group.to_owned(),
        }
    }

    /// The group's stored next offset on the inbox, 0 when it has none.
    fn start(&self) -> anyhow::Result<u64> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(OFFSETS)?;
        let stored = table
            .get((self.group.as_str(), INBOX_TOPIC, INBOX_PARTITION))?
            .map_or(0, |next| next.value());
        Ok(u64::try_from(stored).unwrap_or(0))
    }

    /// The offset the next published event gets.
    fn end(&self) -> anyhow::Result<u64> {
        let txn = self.inner.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(INBOX_NEXT)?.map_or(0, |next| next.value()))
    }

    /// Up to `limit` inbox records from offset `from` on.
    fn read(&self, from: u64, limit: usize) -> anyhow::Result<Vec<Record>> {
        let txn = self.inner.db.begin_read()?;
        let table = txn.open_table(INBOX)?;
        let mut records = Vec::new();
        for entry in table.range(from..)?.take(limit) {
            let (offset, value) = entry?;
            let (key, payload) = value.value();
            records.push(Record {
                partition: INBOX_PARTITION,
                offset: i64::try_from(offset.value()).context("inbox offset past i64")?,
                key: Some(key.as_bytes().to_vec()),
                payload: payload.to_vec(),
            });
        }
        Ok(records)
    }
}

impl std::fmt::Debug for EmbeddedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSource")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Source for EmbeddedSource {
    fn topic(&self) -> &str {
        INBOX_TOPIC
    }

    fn run(
        &self,
        lanes: &Lanes,
        limits: BatchLimits,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let context = || format!("reading the embedded inbox for group {}", self.group);
        let lane = lanes.lane_of(INBOX_PARTITION);
        let topic: Arc<str> = Arc::from(INBOX_TOPIC);
        let pause = limits.max_wait.clamp(Duration::from_millis(1), STOP_CHECK);
        let mut next = self.start().with_context(context)?;
        while !stop.is_cancelled() {
            // Taken before reading, so a publish in between is not missed.
            let seen = self.inner.publications();
            let records = self
                .read(next, limits.max_events.max(1))
                .with_context(context)?;
            let Some(last) = records.last() else {
                self.inner.wait_for_publish(seen, pause);
                continue;
            };
            next = u64::try_from(last.offset).unwrap_or(next) + 1;
            let batch = Batch {
                topic: topic.clone(),
                records,
            };
            if lanes.send(lane, batch).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The inbox's end minus the group's stored offset: for the enrich
    /// group what its commits hold, for the archive group its progress.
    fn lag(&self) -> anyhow::Result<Vec<(i32, i64)>> {
        let context = || format!("reading the inbox lag of group {}", self.group);
        let end = self.end().with_context(context)?;
        let committed = self.start().with_context(context)?;
        let behind = i64::try_from(end.saturating_sub(committed)).unwrap_or(i64::MAX);
        Ok(vec![(INBOX_PARTITION, behind)])
    }

    /// Stores the group's progress when it moved (the archive group's only
    /// record of it; the enrich group's commit already stored the same value,
    /// so nothing is written for it).
    fn committed(&self, offsets: &[(i32, i64)]) {
        if let Err(error) = self.inner.advance(&self.group, offsets) {
            // The group replays from its last stored offset after a restart.
            tracing::warn!(
                group = %self.group,
                "storing inbox progress failed: {error:#}"
            );
        }
    }
}
