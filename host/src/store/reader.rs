//! Profile reads for the API: the hot cache first, the store on a miss.
//!
//! A miss loads the profile from the store once per key at a time: lookups of
//! the same id that arrive while a load runs wait for it instead of reading
//! the store again (a burst of requests for one cold profile costs one
//! query). The load then refills the cache with a revision-guarded put.
//! When the cache fails (Redis down), lookups read the store directly, so the
//! API keeps answering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};

use super::{ProfileCache, ProfileLookup, ProfileStore, StoreError, StoreResult};
use crate::model::profile::Profile;
use crate::telemetry::Metrics;

/// Cache trouble is logged at most this often; the counters see all of it.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Counters of a [`ProfileReader`], since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups the cache had no copy for (every lookup without a cache).
    pub misses: u64,
    /// Cache reads and refills that failed.
    pub cache_errors: u64,
    /// Store reads.
    pub loads: u64,
}

/// The [`ProfileLookup`] of the API.
pub struct ProfileReader {
    inner: Arc<Inner>,
    /// Where cache hits and misses are counted (`pulsehub_cache_lookups_total`).
    metrics: Option<Arc<Metrics>>,
}

/// A store load shared by every lookup of one id while it runs.
type Load = Shared<BoxFuture<'static, Result<Option<Profile>, Arc<StoreError>>>>;

struct Inner {
    store: Arc<dyn ProfileStore>,
    cache: Option<Arc<dyn ProfileCache>>,
    /// The loads running now, by user id. A `std` mutex: never held across
    /// an await.
    loads: Mutex<HashMap<String, Load>>,
    hits: AtomicU64,
    misses: AtomicU64,
    cache_errors: AtomicU64,
    store_reads: AtomicU64,
    started: Instant,
    /// Milliseconds since `started` before which cache trouble is not logged.
    quiet_until_ms: AtomicU64,
}

impl ProfileReader {
    pub fn new(store: Arc<dyn ProfileStore>, cache: Option<Arc<dyn ProfileCache>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                cache,
                loads: Mutex::new(HashMap::new()),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                cache_errors: AtomicU64::new(0),
                store_reads: AtomicU64::new(0),
                started: Instant::now(),
                quiet_until_ms: AtomicU64::new(0),
            }),
            metrics: None,
        }
    }

    /// Also counts each cache lookup as a hit or a miss in `metrics`. Cache
    /// failures are neither: the cache's own error series counts them.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn stats(&self) -> ReaderStats {
        let inner = &self.inner;
        ReaderStats {
            hits: inner.hits.load(Ordering::Relaxed),
            misses: inner.misses.load(Ordering::Relaxed),
            cache_errors: inner.cache_errors.load(Ordering::Relaxed),
            loads: inner.store_reads.load(Ordering::Relaxed),
        }
    }

    fn cache_lookup(&self, hit: bool) {
        if let Some(metrics) = &self.metrics {
            metrics.cache_lookup(hit);
        }
    }
}

#[async_trait]
impl ProfileLookup for ProfileReader {
    async fn lookup(&self, user_id: &str) -> StoreResult<Option<Profile>> {
        let inner = &self.inner;
        if let Some(cache) = &inner.cache {
            match cache.get(user_id).await {
                Ok(Some(profile)) => {
                    inner.hits.fetch_add(1, Ordering::Relaxed);
                    self.cache_lookup(true);
                    return Ok(Some(profile));
                }
                Ok(None) => self.cache_lookup(false),
                Err(error) => {
                    inner.cache_trouble("reading a profile from the cache failed", &error);
                    inner.store_reads.fetch_add(1, Ordering::Relaxed);
                    return inner.store.profile(user_id).await;
                }
            }
        }
        inner.misses.fetch_add(1, Ordering::Relaxed);
        let load = Inner::load(&self.inner, user_id);
        load.await
            .map_err(|error| StoreError(anyhow::Error::new(error)))
    }
}

impl Inner {
    /// The running load of `user_id`, or a new one.
    fn load(this: &Arc<Inner>, user_id: &str) -> Load {
        let mut loads = this.loads();
        if let Some(load) = loads.get(user_id) {
            return load.clone();
        }
        // A task, so that the load finishes (and leaves the map) even when
        // every lookup waiting for it is cancelled.
        let task = tokio::spawn(Self::load_and_refill(Arc::clone(this), user_id.to_owned()));
        let load = async move {
            task.await.unwrap_or_else(|error| {
                Err(Arc::new(StoreError(anyhow::anyhow!(
                    "loading a profile failed: {error}"
                ))))
            })
        }
        .boxed()
        .shared();
        loads.insert(user_id.to_owned(), load.clone());
        load
    }

    async fn load_and_refill(
        self: Arc<Self>,
        user_id: String,
    ) -> Result<Option<Profile>, Arc<StoreError>> {
        // Removes the entry however the load ends, panics included. The task
        // cannot get here before `load` inserted it: `load` holds the lock.
        let _done = LoadDone {
            inner: &self,
            user_id: &user_id,
        };
        self.store_reads.fetch_add(1, Ordering::Relaxed);
        let profile = self.store.profile(&user_id).await.map_err(Arc::new)?;
        if let (Some(cache), Some(profile)) = (&self.cache, &profile)
            && let Err(error) = cache.put(std::slice::from_ref(profile)).await
        {
            self.cache_trouble("refilling the cache failed", &error);
        }
        Ok(profile)
    }

    fn loads(&self) -> MutexGuard<'_, HashMap<String, Load>> {
        // The map stays consistent even if a holder panicked.
        self.loads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache_trouble(&self, what: &str, error: &StoreError) {
        self.cache_errors.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let quiet_until = self.quiet_until_ms.load(Ordering::Relaxed);
        let next = now.saturating_add(u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX));
        if now >= quiet_until
            && self
                .quiet_until_ms
                .compare_exchange(quiet_until, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                "{what}, answering from the store (logged at most every {} s): {:#}",
                WARN_EVERY.as_secs(),
                error.0
            );
        }
    }
}

/// Takes a finished load out of the map.
struct LoadDone<'a> {
    inner: &'a Inner,
    user_id: &'a str,
}

impl Drop for LoadDone<'_> {
    fn drop(&mut self) {
        self.inner.loads().remove(self.user_id);
    }
}
