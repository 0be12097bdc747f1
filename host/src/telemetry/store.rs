//! The stores' series: time and failures of every backend call, and the
//! API's cache hits.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Metrics, latency_histogram};

/// The backend behind a store operation: the `store` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Postgres,
    Redis,
    Embedded,
    /// The dead-letter topic and the event publisher.
    Kafka,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Redis => "redis",
            Backend::Embedded => "embedded",
            Backend::Kafka => "kafka",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `postgres`, `redis`, `embedded` or `kafka`.
    pub store: &'static str,
    /// The trait method: `commit`, `offsets`, `profile`, `ping`, `put`,
    /// `get`, `archive`, `dead_letters`, `publish`.
    pub operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// The stores' series.
#[derive(Debug)]
pub struct StoreMetrics {
    pub operation_duration: Family<StoreLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<StoreLabels, Counter>,
    /// Profile lookups of the API against the hot cache.
    pub cache_lookups: Family<CacheLabels, Counter>,
}

impl StoreMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            operation_duration: Family::new_with_constructor(latency_histogram),
            errors: Family::default(),
            cache_lookups: Family::default(),
        };
        registry.register(
            "store_operation_duration_seconds",
            "Time of one call to a backend, by store and operation",
            metrics.operation_duration.clone(),
        );
        registry.register(
            "store_errors",
            "Failed calls to a backend, by store and operation",
            metrics.errors.clone(),
        );
        registry.register(
            "cache_lookups",
            "Profile lookups of the API in the hot cache, by result (hit, miss)",
            metrics.cache_lookups.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// One call to a backend, and whether it succeeded.
    pub fn store_operation(
        &self,
        store: Backend,
        operation: &'static str,
        elapsed: Duration,
        ok: bool,
    ) {
        let labels = StoreLabels {
            store: store.as_str(),
            operation,
        };
        self.stores
            .operation_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.stores.errors.get_or_create(&labels).inc();
        }
    }

    /// A profile lookup found the profile in the cache (`hit`) or not.
    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.stores
            .cache_lookups
            .get_or_create(&CacheLabels { result })
            .inc();
    }
}
