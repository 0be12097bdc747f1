//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! One [`Metrics`] per process, shared by `Arc`: the plugin chain, the
//! pipelines, the stores and the API record into it; [`Metrics::render`]
//! encodes everything in the Prometheus text format. Every series is named
//! `pulsehub_*`; the README and `deploy/` (dashboard, alert rules) use these
//! names.
//!
//! Each area's series, label sets and recording methods are in their own
//! file: `plugin.rs`, `pipeline.rs`, `store.rs`, `http.rs`,
//! `reconcile.rs`, `identity.rs` and `destination.rs`.

mod destination;
mod http;
mod identity;
mod pipeline;
mod plugin;
mod reconcile;
mod store;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use destination::{DestinationLabels, DestinationMetrics};
pub use http::{HttpLabels, HttpMetrics, HttpRouteLabels, UNMATCHED_ROUTE};
pub use identity::{IdentityMetrics, RefusalLabels};
pub use pipeline::{DeadLetterLabels, PartitionLabels, PipelineMetrics, PipelineRole, RoleLabels};
pub use plugin::{
    PluginAction, PluginActionLabels, PluginErrorLabels, PluginLabels, PluginMetrics,
    PluginNameLabels, PluginStateLabels,
};
pub use reconcile::{DiscrepancyLabels, ReconcileMetrics, RunLabels};
pub use store::{Backend, CacheLabels, StoreLabels, StoreMetrics};

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub plugins: PluginMetrics,
    pub pipeline: PipelineMetrics,
    pub stores: StoreMetrics,
    pub http: HttpMetrics,
    pub reconcile: ReconcileMetrics,
    pub identity: IdentityMetrics,
    pub destinations: DestinationMetrics,
    /// The state series each plugin shows now, to remove it on a change.
    plugin_states: Mutex<HashMap<String, PluginStateLabels>>,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~42 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 17))
}

fn batch_size_histogram() -> Histogram {
    // 1 .. 131072 events: above the largest default batch (50,000).
    Histogram::new(exponential_buckets(1.0, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pulsehub");
        let plugins = PluginMetrics::register(&mut registry);
        let pipeline = PipelineMetrics::register(&mut registry);
        let stores = StoreMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        let reconcile = ReconcileMetrics::register(&mut registry);
        let identity = IdentityMetrics::register(&mut registry);
        let destinations = DestinationMetrics::register(&mut registry);
        Self {
            registry,
            plugins,
            pipeline,
            stores,
            http,
            reconcile,
            identity,
            destinations,
            plugin_states: Mutex::default(),
        }
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
