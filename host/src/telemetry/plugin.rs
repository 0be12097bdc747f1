//! The plugins' series: calls, events, errors by kind, call time, state and
//! actions.

use std::sync::PoisonError;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Metrics, latency_histogram};
use crate::plugin::ErrorKind;

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
    /// Calls into the plugin (one per batch it had events in, per 2,048
    /// events).
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

impl PluginMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let plugins = Self {
            calls: Family::default(),
            events: Family::default(),
            errors: Family::default(),
            call_duration: Family::new_with_constructor(latency_histogram),
            state: Family::default(),
            actions: Family::default(),
        };
        registry.register(
            "plugin_calls",
            "Calls into a plugin version (one per batch with events for it, per 2,048 events)",
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
        plugins
    }
}

impl Metrics {
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
    pub fn plugin_error(&self, plugin: &str, version: &str, kind: ErrorKind) {
        self.plugins
            .errors
            .get_or_create(&PluginErrorLabels {
                plugin: plugin.to_owned(),
                version: version.to_owned(),
                kind: kind.as_str().to_owned(),
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
