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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
    /// `error`, `trap`, `timeout`, `memory`, `output`, ... (the error kinds
    /// of the DLQ header `pulsehub-error-kind`).
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

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub plugins: PluginMetrics,
    /// The state series each plugin shows now, to remove it on a change.
    plugin_states: Mutex<HashMap<String, PluginStateLabels>>,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~42 s.
    Histogram::new(exponential_buckets(0.000_01, 2.5, 17))
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
            "Events a plugin version failed on, by kind (error, trap, timeout, memory, output)",
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
        Self {
            registry,
            plugins,
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
    pub fn plugin_action(&self, plugin: &str, action: &str) {
        self.plugins
            .actions
            .get_or_create(&PluginActionLabels {
                plugin: plugin.to_owned(),
                action: action.to_owned(),
            })
            .inc();
    }
}
