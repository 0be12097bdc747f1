//! Store decorators that time every call and count its failures in
//! [`Metrics`] (`pulsehub_store_operation_duration_seconds` and
//! `pulsehub_store_errors_total`, labelled by backend and operation), so the
//! backends themselves stay free of telemetry.
//!
//! [`Instrumented`] wraps any of the store trait objects and implements the
//! same trait by delegation; the wiring wraps each backend once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    ArchivedEvent, Commit, CommitOutcome, EncodedProfile, EventArchive, ProfileCache, ProfileStore,
    StoreResult, TimelineEntry,
};
use crate::model::profile::Profile;
use crate::pipeline::dead_letter::{DeadLetter, DeadLetterSink};
use crate::pipeline::publish::{EventPublisher, OutgoingEvent};
use crate::telemetry::{Backend, Metrics};

/// `inner` (a `dyn` store trait object), timed and counted as `backend`.
pub struct Instrumented<T: ?Sized> {
    inner: Arc<T>,
    backend: Backend,
    metrics: Arc<Metrics>,
}

impl<T: ?Sized> Instrumented<T> {
    pub fn new(inner: Arc<T>, backend: Backend, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            backend,
            metrics,
        }
    }

    async fn timed<R>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<R>>,
    ) -> StoreResult<R> {
        let started = Instant::now();
        let result = call.await;
        self.metrics
            .store_operation(self.backend, operation, started.elapsed(), result.is_ok());
        result
    }
}

/// Wraps `store` so its calls are recorded as `backend`.
pub fn profile_store(
    store: Arc<dyn ProfileStore>,
    backend: Backend,
    metrics: &Arc<Metrics>,
) -> Arc<dyn ProfileStore> {
    Arc::new(Instrumented::new(store, backend, metrics.clone()))
}

/// Wraps `cache` so its calls are recorded as `backend`.
pub fn profile_cache(
    cache: Arc<dyn ProfileCache>,
    backend: Backend,
    metrics: &Arc<Metrics>,
) -> Arc<dyn ProfileCache> {
    Arc::new(Instrumented::new(cache, backend, metrics.clone()))
}

/// Wraps `sink` so its calls are recorded as `backend`.
pub fn dead_letter_sink(
    sink: Arc<dyn DeadLetterSink>,
    backend: Backend,
    metrics: &Arc<Metrics>,
) -> Arc<dyn DeadLetterSink> {
    Arc::new(Instrumented::new(sink, backend, metrics.clone()))
}

/// Wraps `publisher` so its calls are recorded as `backend`.
pub fn event_publisher(
    publisher: Arc<dyn EventPublisher>,
    backend: Backend,
    metrics: &Arc<Metrics>,
) -> Arc<dyn EventPublisher> {
    Arc::new(Instrumented::new(publisher, backend, metrics.clone()))
}

/// Wraps `archive` so its calls are recorded as `backend`.
pub fn event_archive(
    archive: Arc<dyn EventArchive>,
    backend: Backend,
    metrics: &Arc<Metrics>,
) -> Arc<dyn EventArchive> {
    Arc::new(Instrumented::new(archive, backend, metrics.clone()))
}

#[async_trait]
impl ProfileStore for Instrumented<dyn ProfileStore> {
    /// A stale commit is an answer, not a failure: it counts as a success.
    async fn commit(&self, commit: Commit<'_>) -> StoreResult<CommitOutcome> {
        self.timed("commit", self.inner.commit(commit)).await
    }

    async fn offsets(&self, group: &str, topic: &str) -> StoreResult<HashMap<i32, i64>> {
        self.timed("offsets", self.inner.offsets(group, topic))
            .await
    }

    async fn profile(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        self.timed("profile", self.inner.profile(user_id)).await
    }

    async fn timeline(&self, group: &str, topic: &str) -> StoreResult<Vec<TimelineEntry>> {
        self.timed("timeline", self.inner.timeline(group, topic))
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed("ping", self.inner.ping()).await
    }
}

#[async_trait]
impl ProfileCache for Instrumented<dyn ProfileCache> {
    async fn put(&self, profiles: &[Profile]) -> StoreResult<()> {
        self.timed("put", self.inner.put(profiles)).await
    }

    async fn put_encoded(&self, profiles: &[EncodedProfile]) -> StoreResult<()> {
        self.timed("put", self.inner.put_encoded(profiles)).await
    }

    async fn get(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        self.timed("get", self.inner.get(user_id)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn forget(&self, keys: &[String]) -> StoreResult<u64> {
        self.timed("forget", self.inner.forget(keys)).await
    }
}

#[async_trait]
impl DeadLetterSink for Instrumented<dyn DeadLetterSink> {
    async fn send(&self, letters: &[DeadLetter]) -> StoreResult<()> {
        self.timed("dead_letters", self.inner.send(letters)).await
    }
}

#[async_trait]
impl EventPublisher for Instrumented<dyn EventPublisher> {
    async fn publish(&self, events: &[OutgoingEvent]) -> StoreResult<()> {
        self.timed("publish", self.inner.publish(events)).await
    }

    /// Not recorded: in embedded mode the publisher is the store, and its
    /// pings would mix with the store's under one label set; `/readyz`
    /// reports it.
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
}

#[async_trait]
impl EventArchive for Instrumented<dyn EventArchive> {
    async fn archive(&self, events: &[ArchivedEvent], suppressions: i64) -> StoreResult<bool> {
        self.timed("archive", self.inner.archive(events, suppressions))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use crate::store::embedded::EmbeddedStore;

    /// A cache whose every call fails, as Redis does when it is down.
    struct DownCache;

    #[async_trait]
    impl ProfileCache for DownCache {
        async fn put(&self, _profiles: &[Profile]) -> StoreResult<()> {
            Err(StoreError(anyhow::anyhow!("connection refused")))
        }
        async fn get(&self, _user_id: &str) -> StoreResult<Option<Profile>> {
            Err(StoreError(anyhow::anyhow!("connection refused")))
        }
        async fn ping(&self) -> StoreResult<()> {
            Err(StoreError(anyhow::anyhow!("connection refused")))
        }
        async fn forget(&self, _keys: &[String]) -> StoreResult<u64> {
            Err(StoreError(anyhow::anyhow!("connection refused")))
        }
    }

    fn line<'t>(text: &'t str, start: &str) -> Option<&'t str> {
        text.lines().find(|line| line.starts_with(start))
    }

    #[tokio::test]
    async fn calls_are_timed_per_operation_and_failures_counted() {
        let metrics = Arc::new(Metrics::new());
        let dir = tempfile::tempdir().expect("tempdir");
        let embedded = EmbeddedStore::open(dir.path()).expect("opens");
        let store = profile_store(Arc::new(embedded), Backend::Embedded, &metrics);
        let cache = profile_cache(Arc::new(DownCache), Backend::Redis, &metrics);

        assert_eq!(store.profile("u-1").await.expect("reads"), None);
        assert_eq!(store.profile("u-2").await.expect("reads"), None);
        store.ping().await.expect("answers");
        assert!(cache.get("u-1").await.is_err(), "the cache is down");

        let text = metrics.render();
        let calls = "pulsehub_store_operation_duration_seconds_count";
        let errors = "pulsehub_store_errors_total";
        for (series, want) in [
            (
                format!(r#"{calls}{{store="embedded",operation="profile"}} "#),
                "2",
            ),
            (
                format!(r#"{calls}{{store="embedded",operation="ping"}} "#),
                "1",
            ),
            (format!(r#"{calls}{{store="redis",operation="get"}} "#), "1"),
            (
                format!(r#"{errors}{{store="redis",operation="get"}} "#),
                "1",
            ),
        ] {
            let found = line(&text, &series).unwrap_or_else(|| panic!("no {series}in\n{text}"));
            assert_eq!(&found[series.len()..], want, "{text}");
        }
        assert!(
            line(&text, &format!(r#"{errors}{{store="embedded""#)).is_none(),
            "the embedded store did not fail:\n{text}"
        );
    }
}
