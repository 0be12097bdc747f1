//! One worker's live instance of a plugin, and the sandbox rules applied to
//! every call: CPU-time budget, output limits, declared writes, and isolation
//! of the one event that makes a batch fail.

use std::sync::Arc;

use wasmtime::Store;

use super::bindings::{self, Enricher};
use super::runtime::{HostState, describe_failure, ticks};
use super::{ErrorKind, Plugin, PluginError, Runtime};
use crate::model::event::Event;
use crate::model::update::{Op, Update, Value};

/// The result of one plugin on one event.
pub type EventResult = Result<Vec<Update>, PluginError>;

/// A plugin instance owned by one worker. It is created on first use, reused
/// across batches, and rebuilt after any trap (a trapped store is never
/// entered again) or after `recycle_after_events` events.
pub struct PluginInstance {
    runtime: Runtime,
    plugin: Arc<Plugin>,
    live: Option<Live>,
}

struct Live {
    store: Store<HostState>,
    bindings: Enricher,
    events: u64,
}

impl PluginInstance {
    pub fn new(runtime: Runtime, plugin: Arc<Plugin>) -> Self {
        Self {
            runtime,
            plugin,
            live: None,
        }
    }

    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// Enriches a batch: one result per event, in order. The batch crosses
    /// into the guest in one call; if that call fails (trap, timeout, memory),
    /// each event is retried alone on a fresh instance, so only the event
    /// that causes the failure fails.
    pub fn enrich(&mut self, events: &[&Event]) -> Vec<EventResult> {
        if events.is_empty() {
            return Vec::new();
        }
        match self.call(events) {
            Ok(results) => results,
            Err(failure) if events.len() == 1 => vec![Err(self.error(events[0], failure))],
            Err(_) => events
                .iter()
                .map(|event| match self.call(std::slice::from_ref(event)) {
                    Ok(mut results) => results.pop().unwrap_or_else(|| {
                        Err(self.error(event, (ErrorKind::Internal, "no result".into())))
                    }),
                    Err(failure) => Err(self.error(event, failure)),
                })
                .collect(),
        }
    }

    /// One call into the guest. `Err` means the instance failed as a whole
    /// (and has been dropped); per-event plugin errors are inside `Ok`.
    fn call(&mut self, events: &[&Event]) -> Result<Vec<EventResult>, (ErrorKind, String)> {
        let limits = self.plugin.limits;
        if self
            .live
            .as_ref()
            .is_some_and(|live| live.events >= limits.recycle_after_events)
        {
            self.live = None;
        }
        let live = match &mut self.live {
            Some(live) => live,
            None => {
                let (store, bindings) =
                    self.runtime.instantiate(&self.plugin).map_err(|reason| {
                        (
                            ErrorKind::Internal,
                            format!("cannot start an instance: {reason}"),
                        )
                    })?;
                self.live.insert(Live {
                    store,
                    bindings,
                    events: 0,
                })
            }
        };

        let mask = self.plugin.manifest.fields;
        let params: Vec<bindings::Event<'_>> = events
            .iter()
            .map(|e| bindings::Event {
                id: if mask.id { &e.id } else { "" },
                user_id: if mask.user_id { &e.user_id } else { "" },
                kind: &e.kind,
                timestamp_ms: e.timestamp_ms,
                user_agent: if mask.user_agent {
                    e.user_agent.as_deref()
                } else {
                    None
                },
                url: if mask.url { e.url.as_deref() } else { None },
                properties: if mask.properties { &e.properties } else { "{}" },
            })
            .collect();

        let budget = ticks(limits.timeout_ms, events.len()).min(ticks(limits.max_batch_time_ms, 1));
        live.store.set_epoch_deadline(budget);
        let outcome = live.bindings.call_enrich(&mut live.store, &params);
        live.events += events.len() as u64;
        match outcome {
            Ok(results) if results.len() == events.len() => Ok(results
                .into_iter()
                .zip(events)
                .map(|(result, event)| self.check(event, result))
                .collect()),
            Ok(results) => Err((
                ErrorKind::InvalidOutput,
                format!(
                    "returned {} results for {} events",
                    results.len(),
                    events.len()
                ),
            )),
            Err(error) => {
                let failure = describe_failure(&live.store, &error, limits.timeout_ms);
                self.live = None;
                Err(failure)
            }
        }
    }

    /// Applies the output rules to one event's result.
    fn check(
        &self,
        event: &Event,
        result: Result<Vec<bindings::Update>, bindings::EnrichError>,
    ) -> EventResult {
        let updates = match result {
            Ok(updates) => updates,
            Err(bindings::EnrichError::InvalidEvent(message)) => {
                return Err(self.error(event, (ErrorKind::InvalidEvent, message)));
            }
            Err(bindings::EnrichError::Internal(message)) => {
                return Err(self.error(event, (ErrorKind::Internal, message)));
            }
        };
        let limits = self.plugin.limits;
        if updates.len() > limits.max_updates_per_event {
            let message = format!(
                "returned {} updates for one event; at most {} are allowed",
                updates.len(),
                limits.max_updates_per_event
            );
            return Err(self.error(event, (ErrorKind::OutputLimit, message)));
        }
        updates
            .into_iter()
            .map(|update| {
                self.convert(update)
                    .map_err(|failure| self.error(event, failure))
            })
            .collect()
    }

    fn convert(&self, update: bindings::Update) -> Result<Update, (ErrorKind, String)> {
        let (attribute, op) = match update {
            bindings::Update::Set((name, value)) => (name, Op::Set(convert_value(value))),
            bindings::Update::Increment((name, delta)) => (name, Op::Increment(delta)),
            bindings::Update::Max((name, value)) => (name, Op::Max(convert_value(value))),
            bindings::Update::Min((name, value)) => (name, Op::Min(convert_value(value))),
        };
        let max = self.plugin.limits.max_string_bytes;
        if !self.plugin.manifest.writes.contains(&attribute) {
            let shown: String = attribute.chars().take(64).collect();
            return Err((
                ErrorKind::UndeclaredWrite,
                format!("wrote attribute `{shown}`, which its manifest does not list in `writes`"),
            ));
        }
        match op.value() {
            Some(Value::Text(text)) if text.len() > max => Err((
                ErrorKind::OutputLimit,
                format!(
                    "set `{attribute}` to a text of {} bytes; at most {max} are allowed",
                    text.len()
                ),
            )),
            // Stores keep text in PostgreSQL, which has no room for NUL.
            Some(Value::Text(text)) if text.contains('\0') => Err((
                ErrorKind::InvalidOutput,
                format!("set `{attribute}` to a text containing a NUL character"),
            )),
            Some(Value::Float(f)) if !f.is_finite() => Err((
                ErrorKind::InvalidOutput,
                format!("set `{attribute}` to {f}; floats must be finite"),
            )),
            _ => Ok(Update { attribute, op }),
        }
    }

    fn error(&self, event: &Event, (kind, message): (ErrorKind, String)) -> PluginError {
        PluginError {
            plugin: self.plugin.manifest.name.clone(),
            version: self.plugin.version.clone(),
            event_id: event.id.clone(),
            kind,
            message,
        }
    }
}

fn convert_value(value: bindings::Value) -> Value {
    match value {
        bindings::Value::Text(s) => Value::Text(s),
        bindings::Value::Integer(i) => Value::Integer(i),
        bindings::Value::Float(f) => Value::Float(f),
        bindings::Value::Boolean(b) => Value::Boolean(b),
        bindings::Value::Timestamp(ms) => Value::Timestamp(ms),
    }
}
