//! Fakes of the store traits, each as healthy or as broken as a test needs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::profile::Profile;
use crate::pipeline::publish::{EventPublisher, OutgoingEvent};
use crate::store::{
    Commit, CommitOutcome, ProfileCache, ProfileLookup, ProfileStore, StoreError, StoreResult,
    TimelineEntry,
};

/// How a backend answers.
#[derive(Debug, Clone, Copy)]
pub enum Ping {
    Up,
    /// Fails with this message.
    Down(&'static str),
    /// Never answers.
    Hangs,
}

impl Ping {
    async fn answer(self) -> StoreResult<()> {
        match self {
            Ping::Up => Ok(()),
            Ping::Down(message) => Err(StoreError(anyhow::anyhow!(message))),
            Ping::Hangs => std::future::pending().await,
        }
    }
}

fn unused<T>() -> StoreResult<T> {
    Err(StoreError(anyhow::anyhow!("the API never calls this")))
}

pub struct FakeStore(pub Ping);

#[async_trait]
impl ProfileStore for FakeStore {
    async fn commit(&self, _commit: Commit<'_>) -> StoreResult<CommitOutcome> {
        unused()
    }

    async fn offsets(&self, _group: &str, _topic: &str) -> StoreResult<HashMap<i32, i64>> {
        unused()
    }

    async fn profile(&self, _user_id: &str) -> StoreResult<Option<Profile>> {
        unused()
    }

    async fn timeline(&self, _group: &str, _topic: &str) -> StoreResult<Vec<TimelineEntry>> {
        unused()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.0.answer().await
    }
}

pub struct FakeCache(pub Ping);

#[async_trait]
impl ProfileCache for FakeCache {
    async fn put(&self, _profiles: &[Profile]) -> StoreResult<()> {
        unused()
    }

    async fn get(&self, _user_id: &str) -> StoreResult<Option<Profile>> {
        unused()
    }

    async fn forget(&self, _keys: &[String]) -> StoreResult<u64> {
        unused()
    }

    async fn ping(&self) -> StoreResult<()> {
        self.0.answer().await
    }
}

/// Profiles by user id; or a failure, or a delay, for every lookup.
#[derive(Default)]
pub struct FakeLookup {
    pub profiles: HashMap<String, Profile>,
    pub fails_with: Option<&'static str>,
    pub delay: Option<Duration>,
}

#[async_trait]
impl ProfileLookup for FakeLookup {
    async fn lookup(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(message) = self.fails_with {
            return Err(StoreError(anyhow::anyhow!(message)));
        }
        Ok(self.profiles.get(user_id).cloned())
    }
}

/// Records every published event, in order; or refuses them all.
#[derive(Default)]
pub struct FakePublisher {
    pub published: Mutex<Vec<OutgoingEvent>>,
    pub fails: bool,
    pub ping: Option<Ping>,
}

impl FakePublisher {
    pub fn failing() -> Self {
        Self {
            fails: true,
            ..Self::default()
        }
    }

    pub fn pinging(ping: Ping) -> Self {
        Self {
            ping: Some(ping),
            ..Self::default()
        }
    }

    pub fn published(&self) -> Vec<OutgoingEvent> {
        self.published.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl EventPublisher for FakePublisher {
    async fn publish(&self, events: &[OutgoingEvent]) -> StoreResult<()> {
        if self.fails {
            return Err(StoreError(anyhow::anyhow!(
                "broker 10.1.2.3:9092 refused: NotLeaderForPartition"
            )));
        }
        self.published
            .lock()
            .expect("not poisoned")
            .extend_from_slice(events);
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.ping.unwrap_or(Ping::Up).answer().await
    }
}

/// Privacy requests kept in memory; none is ever carried out.
#[derive(Default)]
pub struct FakePrivacy(pub Mutex<Vec<crate::privacy::PrivacyRequest>>);

#[async_trait]
impl crate::privacy::PrivacyStore for FakePrivacy {
    async fn submit(
        &self,
        kind: crate::privacy::RequestKind,
        identifiers: &[crate::model::identity::Identifier],
        keys: &[String],
        actor: &str,
        now_ms: i64,
    ) -> StoreResult<crate::privacy::PrivacyRequest> {
        let mut requests = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let request = crate::privacy::PrivacyRequest {
            id: requests.len() as i64 + 1,
            kind,
            identifiers: identifiers.to_vec(),
            keys: keys.to_vec(),
            status: crate::privacy::Status::Pending,
            actor: actor.to_owned(),
            submitted_at_ms: now_ms,
            finished_at_ms: None,
            result: None,
        };
        requests.push(request.clone());
        Ok(request)
    }

    async fn request(&self, id: i64) -> StoreResult<Option<crate::privacy::PrivacyRequest>> {
        let requests = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(requests.iter().find(|r| r.id == id).cloned())
    }

    async fn apply(&self, _id: i64, _now_ms: i64) -> StoreResult<Option<crate::privacy::Applied>> {
        Ok(None)
    }

    async fn finish(&self, _id: i64, _result: &serde_json::Value, _now_ms: i64) -> StoreResult<()> {
        unused()
    }

    async fn unfinished(&self) -> StoreResult<Vec<i64>> {
        Ok(Vec::new())
    }

    async fn suppressions(&self) -> StoreResult<crate::privacy::Suppressions> {
        unused()
    }

    async fn generation(&self) -> StoreResult<i64> {
        unused()
    }
}

/// Segment definitions in memory; no segment has members.
#[derive(Default)]
pub struct FakeSegments(Mutex<Vec<crate::segment::Definition>>);

#[async_trait]
impl crate::segment::SegmentStore for FakeSegments {
    async fn definitions(&self) -> StoreResult<Vec<crate::segment::Definition>> {
        Ok(self.0.lock().expect("not poisoned").clone())
    }

    async fn put_definition(
        &self,
        name: &str,
        condition: &serde_json::Value,
        emit_backfill: bool,
        now_ms: i64,
    ) -> StoreResult<crate::segment::Stored> {
        use crate::segment::{Definition, Stored};
        let mut definitions = self.0.lock().expect("not poisoned");
        let id = definitions.iter().map(|d| d.id).max().unwrap_or(0) + 1;
        let definition = Definition {
            id,
            name: name.to_owned(),
            condition: condition.clone(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            backfill: crate::segment::Backfill {
                emit: emit_backfill,
                ..Default::default()
            },
        };
        let stored = match definitions.iter_mut().find(|d| d.name == name) {
            Some(old) if crate::segment::catalog::same_condition(&old.condition, condition) => {
                Stored::Unchanged(old.clone())
            }
            Some(old) => {
                *old = definition.clone();
                Stored::Changed(definition)
            }
            None => {
                definitions.push(definition.clone());
                Stored::Created(definition)
            }
        };
        Ok(stored)
    }

    async fn delete_definition(&self, name: &str) -> StoreResult<bool> {
        let mut definitions = self.0.lock().expect("not poisoned");
        let before = definitions.len();
        definitions.retain(|d| d.name != name);
        Ok(definitions.len() < before)
    }

    async fn members(
        &self,
        _id: u32,
        _after: Option<&str>,
        _limit: usize,
    ) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }

    async fn member_count(&self, _id: u32) -> StoreResult<u64> {
        Ok(0)
    }

    async fn backfill_page(
        &self,
        _id: u32,
        _now_ms: i64,
        _limit: usize,
    ) -> StoreResult<Option<crate::segment::BackfillPage>> {
        unused()
    }

    async fn reevaluate_due(
        &self,
        _now_ms: i64,
        _limit: usize,
    ) -> StoreResult<crate::segment::catalog::DueRound> {
        unused()
    }
}
