//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! One [`Metrics`] per process, shared by `Arc`: the plugin chain, the
//! pipelines, the stores and the API record into it; [`Metrics::render`]
//! encodes everything in the Prometheus text format. Every series is named
//! `pulsehub_*`; the README and `deploy/` (dashboard, alert rules) use these
//! names.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::pipeline::dead_letter::DeadReason;

/// A change to the running plugins: the `action` label of
/// `pulsehub_plugin_actions_total` (contract §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginAction {
    /// A plugin of a new name started running.
    Load,
    /// A new version replaced the running one.
    Replace,
    Rollback,
    Remove,
    /// The chain took the version out for its failure rate.
    Quarantine,
    /// A quarantine lifted (an operator's resume).
    Lift,
    /// A quarantined version replaced by the healthy one before it.
    AutoRollback,
}

impl PluginAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginAction::Load => "load",
            PluginAction::Replace => "replace",
            PluginAction::Rollback => "rollback",
            PluginAction::Remove => "remove",
            PluginAction::Quarantine => "quarantine",
            PluginAction::Lift => "lift",
            PluginAction::AutoRollback => "auto_rollback",
        }
    }
}

#[cfg(test)]
mod tests;

/// Labels of a plugin version.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub version: String,
}

/// Labels of a plugin version's failures.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginErrorLabels {
    pub plugin: String,
    pub version: String,
    /// An [`ErrorKind`](crate::plugin::ErrorKind) as the DLQ header
    /// `pulsehub-error-kind` spells it: `trap`, `timeout`, `memory`,
    /// `output-limit`, `undeclared-write`, `invalid-output`, `invalid-event`
    /// or `internal`.
    pub kind: String,
}

/// Labels of a plugin's state series: one series per plugin is 1, the one
/// with its current version and state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginStateLabels {
    pub plugin: String,
    pub version: String,
    /// `active` or `quarantined`.
    pub state: String,
}

/// Labels of an operator's or the host's action on a plugin.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginActionLabels {
    pub plugin: String,
    /// `load`, `replace`, `rollback`, `remove`, `quarantine`, `lift`,
    /// `auto_rollback`.
    pub action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginNameLabels {
    pub plugin: String,
}

/// Per-plugin series.
#[derive(Debug)]
pub struct PluginMetrics {
    /// Calls into the plugin (one per batch it had events in).
    pub calls: Family<PluginLabels, Counter>,
    /// Events handed to the plugin.
    pub events: Family<PluginLabels, Counter>,
    /// Events the plugin failed on, by kind.
    pub errors: Family<PluginErrorLabels, Counter>,
    /// Time of one call (a batch), in seconds.
    pub call_duration: Family<PluginNameLabels, Histogram, fn() -> Histogram>,
    pub state: Family<PluginStateLabels, Gauge>,
    pub actions: Family<PluginActionLabels, Counter>,
}

/// Which pipeline a series belongs to: the `role` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineRole {
    Enrich,
    Archive,
}

impl PipelineRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineRole::Enrich => "enrich",
            PipelineRole::Archive => "archive",
        }
    }
}

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
pub struct RoleLabels {
    /// `enrich` or `archive`.
    pub role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub role: &'static str,
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// `bad_event` or `plugin_error`.
    pub reason: &'static str,
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/api/v1/profiles/{user_id}`), or `unmatched`.
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRouteLabels {
    pub route: String,
    pub method: &'static str,
}

/// The enrich and archive pipelines' series.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Records handled (committed or archived), per partition.
    pub events_consumed: Family<PartitionLabels, Counter>,
    /// Records behind the end of each partition this process reads.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Records per batch a lane received.
    pub batch_events: Family<RoleLabels, Histogram, fn() -> Histogram>,
    /// One attempt at committing a batch to the profile store.
    pub commit_duration: Histogram,
    /// Dead letters written (acknowledged by the sink), by reason.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
}

/// The stores' series.
#[derive(Debug)]
pub struct StoreMetrics {
    pub operation_duration: Family<StoreLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<StoreLabels, Counter>,
    /// Profile lookups of the API against the hot cache.
    pub cache_lookups: Family<CacheLabels, Counter>,
}

/// The REST API's series.
#[derive(Debug)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub request_duration: Family<HttpRouteLabels, Histogram, fn() -> Histogram>,
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub plugins: PluginMetrics,
    pub pipeline: PipelineMetrics,
    pub stores: StoreMetrics,
    pub http: HttpMetrics,
    /// The state series each plugin shows now, to remove it on a change.
    plugin_states: Mutex<HashMap<String, PluginStateLabels>>,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~42 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 17))
}

fn batch_size_histogram() -> Histogram {
    // 1 .. 32768 events.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pulsehub");
        let plugins = PluginMetrics {
            calls: Family::default(),
            events: Family::default(),
            errors: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            state: Family::default(),
            actions: Family::default(),
        };
        registry.register(
            "plugin_calls",
            "Calls into a plugin version (one per batch with events for it)",
            plugins.calls.clone(),
        );
        registry.register(
            "plugin_events",
            "Events handed to a plugin version",
            plugins.events.clone(),
        );
        registry.register(
            "plugin_errors",
            "Events a plugin version failed on, by kind (trap, timeout, memory, output-limit, undeclared-write, invalid-output, invalid-event, internal)",
            plugins.errors.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Time of one call into a plugin (a batch of events)",
            plugins.call_duration.clone(),
        );
        registry.register(
            "plugin_state",
            "1 for each plugin's current version and state (active or quarantined)",
            plugins.state.clone(),
        );
        registry.register(
            "plugin_actions",
            "Changes to the running plugins: load, replace, rollback, remove, quarantine, lift, auto_rollback",
            plugins.actions.clone(),
        );
        let pipeline = PipelineMetrics::register(&mut registry);
        let stores = StoreMetrics::register(&mut registry);
        let http = HttpMetrics::register(&mut registry);
        Self {
            registry,
            plugins,
            pipeline,
            stores,
            http,
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

    /// One call of `plugin` over `events` events.
    pub fn plugin_call(&self, plugin: &str, version: &str, events: usize, elapsed: Duration) {
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
            version: version.to_owned(),
        };
        self.plugins.calls.get_or_create(&labels).inc();
        self.plugins
            .events
            .get_or_create(&labels)
            .inc_by(events as u64);
        self.plugins
            .call_duration
            .get_or_create(&PluginNameLabels {
                plugin: plugin.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One event `plugin` failed on.
    pub fn plugin_error(&self, plugin: &str, version: &str, kind: &str) {
        self.plugins
            .errors
            .get_or_create(&PluginErrorLabels {
                plugin: plugin.to_owned(),
                version: version.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// `plugin` now runs `version` in `state`; `None` when it is gone.
    pub fn plugin_state(&self, plugin: &str, current: Option<(&str, &str)>) {
        let mut shown = self
            .plugin_states
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = shown.remove(plugin) {
            self.plugins.state.remove(&previous);
        }
        if let Some((version, state)) = current {
            let labels = PluginStateLabels {
                plugin: plugin.to_owned(),
                version: version.to_owned(),
                state: state.to_owned(),
            };
            self.plugins.state.get_or_create(&labels).set(1);
            shown.insert(plugin.to_owned(), labels);
        }
    }

    /// An action on `plugin`, by an operator or by the host.
    pub fn plugin_action(&self, plugin: &str, action: PluginAction) {
        self.plugins
            .actions
            .get_or_create(&PluginActionLabels {
                plugin: plugin.to_owned(),
                action: action.as_str().to_owned(),
            })
            .inc();
    }
}

impl PipelineMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events_consumed: Family::default(),
            consumer_lag: Family::default(),
            batch_events: Family::new_with_constructor(batch_size_histogram),
            commit_duration: latency_histogram(),
            dead_letters: Family::default(),
        };
        registry.register(
            "events_consumed",
            "Records a pipeline handled (committed or archived), per partition",
            metrics.events_consumed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the end of each partition this process reads",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "batch_events",
            "Records per batch a lane received",
            metrics.batch_events.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "One attempt at committing an enriched batch with its offsets to the profile store",
            metrics.commit_duration.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters written, by reason (bad_event, plugin_error)",
            metrics.dead_letters.clone(),
        );
        metrics
    }
}

impl StoreMetrics {
    fn register(registry: &mut Registry) -> Self {
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

impl HttpMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by route template, method and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response, by route template and method",
            metrics.request_duration.clone(),
        );
        metrics
    }
}

/// The route label of requests no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl Metrics {
    /// A lane received a batch of `events` records.
    pub fn batch_received(&self, role: PipelineRole, events: usize) {
        self.pipeline
            .batch_events
            .get_or_create(&RoleLabels {
                role: role.as_str(),
            })
            .observe(events as f64);
    }

    /// `events` records of `partition` were handled.
    pub fn events_consumed(&self, role: PipelineRole, partition: i32, events: u64) {
        self.pipeline
            .events_consumed
            .get_or_create(&PartitionLabels {
                role: role.as_str(),
                partition,
            })
            .inc_by(events);
    }

    /// `partition` is `lag` records behind its end.
    pub fn consumer_lag(&self, role: PipelineRole, partition: i32, lag: i64) {
        self.pipeline
            .consumer_lag
            .get_or_create(&PartitionLabels {
                role: role.as_str(),
                partition,
            })
            .set(lag);
    }

    /// This process no longer reads `partition`: its lag series goes.
    pub fn partition_released(&self, role: PipelineRole, partition: i32) {
        self.pipeline.consumer_lag.remove(&PartitionLabels {
            role: role.as_str(),
            partition,
        });
    }

    /// One attempt at committing a batch, successful or not.
    pub fn commit_attempt(&self, elapsed: Duration) {
        self.pipeline.commit_duration.observe(elapsed.as_secs_f64());
    }

    /// Dead letters the sink acknowledged.
    pub fn dead_letters<'a>(&self, reasons: impl IntoIterator<Item = &'a DeadReason>) {
        for reason in reasons {
            let reason = match reason {
                DeadReason::BadEvent { .. } => "bad_event",
                DeadReason::PluginError { .. } => "plugin_error",
            };
            self.pipeline
                .dead_letters
                .get_or_create(&DeadLetterLabels { reason })
                .inc();
        }
    }

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

    /// One answered request. `route` is the matched route template, or
    /// `None` for a request no route matched: never the raw path, whose
    /// values are unbounded.
    pub fn http_request(
        &self,
        route: Option<&str>,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let route = route.unwrap_or(UNMATCHED_ROUTE).to_owned();
        let method = method_label(method);
        self.http
            .requests
            .get_or_create(&HttpLabels {
                route: route.clone(),
                method,
                status: status.as_u16(),
            })
            .inc();
        self.http
            .request_duration
            .get_or_create(&HttpRouteLabels { route, method })
            .observe(elapsed.as_secs_f64());
    }
}

/// The standard methods by name; anything else (clients may send any token)
/// as `other`, to keep the label's values bounded.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}
