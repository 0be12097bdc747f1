//! The plugin chain: every loaded plugin run over a batch of events.
//!
//! [`Chain`] holds the set of active plugin versions behind an `ArcSwap`, so
//! loading, replacing or removing a plugin is one atomic pointer swap. Each
//! worker owns a [`ChainWorker`], which picks up the current set at the start
//! of every batch: a batch runs entirely on the versions it started with.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::model::event::Event;
use crate::model::merge::{Merger, ProfileChanges};
use crate::plugin::{
    LoadError, Plugin, PluginError, PluginInstance, QuarantinePolicy, Runtime, Trip,
};
use crate::telemetry::{Metrics, PluginAction};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Most events handed to a plugin in one call. A lane's batch may hold many
/// more (a batch gathers whatever arrived within `pipeline.batch_max_wait_ms`);
/// it is handed over in chunks of this size, so that a call stays far below
/// the host's time cap on one call (`max_batch_time_ms`, 250 ms) even on a
/// busy machine.
pub const MAX_EVENTS_PER_CALL: usize = 2_048;

/// The active plugins, sorted by name.
pub type PluginSet = Vec<Arc<Plugin>>;

/// The set of active plugins, shared by every worker.
pub struct Chain {
    runtime: Runtime,
    metrics: Arc<Metrics>,
    policy: QuarantinePolicy,
    /// Where a plugin version taken out of the chain is reported.
    trips: UnboundedSender<Tripped>,
    active: ArcSwap<PluginSet>,
    /// Serialises changes, so the ownership check and the swap are one step.
    writer: Mutex<()>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("active", &self.active.load())
            .finish()
    }
}

/// A plugin version the chain took out because of its failures.
#[derive(Debug, Clone)]
pub struct Tripped {
    pub plugin: Arc<Plugin>,
    pub trip: Trip,
}

/// The plugin versions a chain takes out, as it takes them out (see
/// [`Chain::configure`]).
pub type Trips = UnboundedReceiver<Tripped>;

/// What a batch produced: merged profile changes, and each plugin failure on
/// an event (those events' other plugins still contributed).
#[derive(Debug, Default)]
pub struct BatchOutcome {
    pub changes: ProfileChanges,
    /// Per-event plugin failures: the index of the event in the batch, and
    /// the error. The event's other plugins' updates still count.
    pub errors: Vec<(usize, PluginError)>,
}

impl Chain {
    /// A chain with its own metrics and the default quarantine policy, whose
    /// trips nobody hears of (the quarantined version is still taken out).
    pub fn new(runtime: Runtime) -> Arc<Self> {
        Self::with_metrics(runtime, Arc::new(Metrics::new()))
    }

    /// A chain that records its plugins' calls, errors and states in `metrics`.
    pub fn with_metrics(runtime: Runtime, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::configure(runtime, metrics, QuarantinePolicy::default()).0
    }

    /// A chain that takes a plugin version out when its failures cross
    /// `policy`, and reports each such version on the [`Trips`] returned.
    pub fn configure(
        runtime: Runtime,
        metrics: Arc<Metrics>,
        policy: QuarantinePolicy,
    ) -> (Arc<Self>, Trips) {
        let (trips, tripped) = unbounded_channel();
        let chain = Arc::new(Self {
            runtime,
            metrics,
            policy,
            trips,
            active: ArcSwap::from_pointee(Vec::new()),
            writer: Mutex::new(()),
        });
        (chain, tripped)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The active plugins now.
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.active.load_full()
    }

    /// Activates `plugin`, replacing the active version of the same name,
    /// which is returned. Refused, with nothing changed, when another plugin
    /// already writes one of its attributes.
    pub fn insert(&self, plugin: Arc<Plugin>) -> Result<Option<Arc<Plugin>>, LoadError> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.active.load_full();
        for other in current.iter().filter(|p| p.name() != plugin.name()) {
            if let Some(attribute) = plugin
                .manifest
                .writes
                .intersection(&other.manifest.writes)
                .next()
            {
                return Err(LoadError::OwnershipClash {
                    plugin: plugin.name().to_owned(),
                    attribute: attribute.clone(),
                    owner: other.name().to_owned(),
                });
            }
        }
        let mut next: PluginSet = current
            .iter()
            .filter(|p| p.name() != plugin.name())
            .cloned()
            .collect();
        let previous = current.iter().find(|p| p.name() == plugin.name()).cloned();
        next.push(plugin);
        next.sort_by(|a, b| a.name().cmp(b.name()));
        self.active.store(Arc::new(next));
        Ok(previous)
    }

    /// Deactivates the plugin called `name`, returning it.
    pub fn remove(&self, name: &str) -> Option<Arc<Plugin>> {
        let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.active.load_full();
        let removed = current.iter().find(|p| p.name() == name).cloned()?;
        let next: PluginSet = current
            .iter()
            .filter(|p| p.name() != name)
            .cloned()
            .collect();
        self.active.store(Arc::new(next));
        Some(removed)
    }

    /// Takes `plugin` out of the active set, if that version is still in it,
    /// and reports it.
    fn trip(&self, plugin: &Arc<Plugin>, trip: Trip) {
        {
            let _guard = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let current = self.active.load_full();
            if !current.iter().any(|p| Arc::ptr_eq(p, plugin)) {
                return;
            }
            let next: PluginSet = current
                .iter()
                .filter(|p| !Arc::ptr_eq(p, plugin))
                .cloned()
                .collect();
            self.active.store(Arc::new(next));
        }
        tracing::warn!(
            plugin = plugin.name(),
            version = %plugin.version,
            "plugin quarantined: {trip}"
        );
        self.metrics
            .plugin_state(plugin.name(), Some((&plugin.version, "quarantined")));
        self.metrics
            .plugin_action(plugin.name(), PluginAction::Quarantine);
        // Nobody listens to a chain made without `configure`'s receiver.
        let _ = self.trips.send(Tripped {
            plugin: plugin.clone(),
            trip,
        });
    }

    /// A worker with its own instances, for one thread.
    pub fn worker(self: &Arc<Self>) -> ChainWorker {
        ChainWorker {
            chain: self.clone(),
            set: Arc::new(Vec::new()),
            instances: Vec::new(),
        }
    }
}

/// One worker's instances of the active plugins.
pub struct ChainWorker {
    chain: Arc<Chain>,
    /// The set the instances belong to.
    set: Arc<PluginSet>,
    instances: Vec<PluginInstance>,
}

impl ChainWorker {
    /// Runs every active plugin over `events` (each plugin sees only the
    /// kinds it subscribes to) and merges the updates per user.
    pub fn run(&mut self, events: &[Event]) -> BatchOutcome {
        self.refresh();
        let mut merger = Merger::new(events);
        let mut errors = Vec::new();
        let mut selected: Vec<usize> = Vec::with_capacity(events.len());
        let mut batch: Vec<&Event> = Vec::with_capacity(events.len());
        for instance in &mut self.instances {
            let plugin = instance.plugin().clone();
            selected.clear();
            selected.extend(
                (0..events.len()).filter(|&i| plugin.manifest.events.matches(&events[i].kind)),
            );
            if selected.is_empty() {
                continue;
            }
            batch.clear();
            batch.extend(selected.iter().map(|&i| &events[i]));
            let handle = merger.plugin(plugin.name(), &plugin.version);
            let metrics = &self.chain.metrics;
            for (selected, batch) in selected
                .chunks(MAX_EVENTS_PER_CALL)
                .zip(batch.chunks(MAX_EVENTS_PER_CALL))
            {
                let started = Instant::now();
                let results = instance.enrich(batch);
                let errors_before = errors.len();
                metrics.plugin_call(
                    plugin.name(),
                    &plugin.version,
                    batch.len(),
                    started.elapsed(),
                );
                for (&index, result) in selected.iter().zip(results) {
                    let merged = result.and_then(|updates| {
                        merger
                            .add(handle, index, updates)
                            .map_err(|(kind, message)| PluginError {
                                plugin: plugin.name().to_owned(),
                                version: plugin.version.clone(),
                                event_id: events[index].id.clone(),
                                kind,
                                message,
                            })
                    });
                    if let Err(error) = merged {
                        metrics.plugin_error(plugin.name(), &plugin.version, error.kind);
                        errors.push((index, error));
                    }
                }
                let failures = (errors.len() - errors_before) as u64;
                if let Some(trip) =
                    plugin
                        .health
                        .record(batch.len() as u64, failures, &self.chain.policy)
                {
                    self.chain.trip(&plugin, trip);
                }
            }
        }
        BatchOutcome {
            changes: merger.finish(),
            errors,
        }
    }

    /// Follows the chain's active set: keeps the instances of unchanged
    /// plugins, starts fresh ones for new versions.
    /// The plugin versions the last [`ChainWorker::run`] ran, sorted by
    /// name (those the chain took out during that run included).
    pub fn plugins(&self) -> &PluginSet {
        &self.set
    }

    fn refresh(&mut self) {
        let current = self.chain.plugins();
        if Arc::ptr_eq(&current, &self.set) {
            return;
        }
        let mut old = std::mem::take(&mut self.instances);
        self.instances = current
            .iter()
            .map(
                |plugin| match old.iter().position(|i| Arc::ptr_eq(i.plugin(), plugin)) {
                    Some(at) => old.swap_remove(at),
                    None => PluginInstance::new(self.chain.runtime.clone(), plugin.clone()),
                },
            )
            .collect();
        self.set = current;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::fixtures::{QUIET_MANIFEST, QUIET_PLUGIN};
    use crate::plugin::{HostLimits, Manifest};

    fn click(n: usize) -> Event {
        Event {
            id: format!("e-{n}"),
            user_id: format!("u-{}", n % 7),
            anonymous_id: None,
            previous_id: None,
            known_user: true,
            profile_key: None,
            kind: "click".into(),
            timestamp_ms: 1_000 + n as i64,
            user_agent: None,
            url: None,
            properties: "{}".into(),
        }
    }

    /// A batch larger than a call is handed over in calls of at most
    /// MAX_EVENTS_PER_CALL events, every event once.
    #[test]
    fn a_large_batch_is_handed_over_in_bounded_calls() {
        let runtime = Runtime::new(HostLimits::default()).expect("plugin runtime starts");
        let manifest: Manifest = QUIET_MANIFEST.parse().expect("the test manifest is valid");
        let component = wat::parse_str(QUIET_PLUGIN).expect("the test component assembles");
        let plugin = runtime.load(manifest, &component).expect("loads");
        let chain = Chain::new(runtime);
        chain.insert(plugin.clone()).expect("no other plugin");
        let mut worker = chain.worker();

        let events: Vec<Event> = (0..2 * MAX_EVENTS_PER_CALL + 1).map(click).collect();
        let outcome = worker.run(&events);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        let totals = plugin.health.totals();
        assert_eq!(totals.calls, 3);
        assert_eq!(totals.events, events.len() as u64);

        // Within one call's size: one call, as before.
        plugin.health.clear();
        worker.run(&events[..MAX_EVENTS_PER_CALL]);
        assert_eq!(plugin.health.totals().calls, 1);
    }
}
