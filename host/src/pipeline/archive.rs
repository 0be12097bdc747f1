//! The archive lane: every raw event into the archive, idempotently by event
//! id. Bad events are left to the enrich role's dead letters.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::retry::{Backoff, Until, retry};
use super::source::{Batch, Source};
use super::{LaneWork, count_consumed, next_offsets};
use crate::model::event::Event;
use crate::model::identity::Rules;
use crate::privacy::{PrivacyStore, Suppressions};
use crate::store::{ArchivedEvent, EventArchive};
use crate::telemetry::{Metrics, PipelineRole};

pub(super) struct ArchiveLane {
    pub(super) archive: Arc<dyn EventArchive>,
    pub(super) identity: Arc<Rules>,
    /// As the enrich lane's: `None` until read.
    pub(super) suppressions: Option<Arc<Suppressions>>,
    pub(super) privacy: Arc<dyn PrivacyStore>,
    pub(super) source: Arc<dyn Source>,
    pub(super) runtime: Handle,
    pub(super) stop: CancellationToken,
    pub(super) metrics: Arc<Metrics>,
}

impl LaneWork for ArchiveLane {
    fn process(&mut self, batch: Batch) {
        self.metrics
            .batch_received(PipelineRole::Archive, batch.records.len());
        loop {
            let held = self.suppressions.take();
            match super::current_suppressions(&self.privacy, held, &self.runtime, &self.stop) {
                Some(suppressions) => self.suppressions = Some(suppressions),
                None => return,
            }
            match self.archive_batch(&batch) {
                Some(true) => break,
                // A privacy request changed the suppressions meanwhile.
                Some(false) => self.suppressions = None,
                None => return,
            }
        }
        count_consumed(&self.metrics, PipelineRole::Archive, &batch.records);
        self.source.committed(&next_offsets(&batch.records));
    }
}

impl ArchiveLane {
    /// Archives the batch's events but the suppressed ones; `Some(false)`
    /// when the suppressions changed first, `None` when the pipeline
    /// stopped.
    fn archive_batch(&self, batch: &Batch) -> Option<bool> {
        let suppressions = self.suppressions.clone().unwrap_or_default();
        let mut suppressed = 0;
        let topic = &*batch.topic;
        let mut events = Vec::with_capacity(batch.records.len());
        for record in &batch.records {
            let fallback = || format!("{topic}-{}-{}", record.partition, record.offset);
            let Ok(mut event) = Event::from_json(&record.payload, fallback) else {
                continue;
            };
            if suppressions.drops(&self.identity, &event) {
                suppressed += 1;
                continue;
            }
            let Ok(payload) = String::from_utf8(record.payload.clone()) else {
                continue;
            };
            // Archived under the key of the profile it counted on first
            // (its user id, else its anonymous id's home key).
            self.identity.key_event(&mut event);
            let user_id = event.profile_key.take().unwrap_or(event.user_id);
            events.push(ArchivedEvent {
                event_id: event.id,
                user_id,
                event_type: event.kind,
                event_time_ms: event.timestamp_ms,
                topic: topic.to_owned(),
                partition: record.partition,
                offset: record.offset,
                payload,
            });
        }
        if !events.is_empty() {
            let archive = &self.archive;
            let done = self.runtime.block_on(retry(
                "archiving events",
                Backoff::LANE,
                Until::Stopped(&self.stop),
                || archive.archive(&events, suppressions.generation),
            ));
            match done {
                Ok(true) => {}
                Ok(false) => return Some(false),
                Err(_) => return None,
            }
        }
        self.metrics
            .identity
            .suppressed(PipelineRole::Archive, suppressed);
        Some(true)
    }
}
