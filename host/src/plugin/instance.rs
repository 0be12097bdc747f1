//! One worker's live instance of a plugin, and the sandbox rules applied to
//! every call: CPU-time budget, output limits, declared writes, and isolation
//! of the one event that makes a batch fail.

use std::sync::Arc;

use wasmtime::Store;

use super::bindings::{self, v02};
use super::runtime::{Bindings, HostState, describe_failure, ticks};
use super::{ErrorKind, FieldMask, Plugin, PluginError, Runtime};
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
    /// A 0.2 plugin's batch buffers, kept across calls.
    arena: Arena,
}

struct Live {
    store: Store<HostState>,
    bindings: Bindings,
    events: u64,
}

/// What one call into the guest returned, in its world's types.
enum Returned {
    V01(Vec<Result<Vec<bindings::Update>, bindings::EnrichError>>),
    V02((Vec<v02::Write>, Vec<v02::EventError>)),
}

impl PluginInstance {
    pub fn new(runtime: Runtime, plugin: Arc<Plugin>) -> Self {
        Self {
            runtime,
            plugin,
            live: None,
            arena: Arena::default(),
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
        let budget = ticks(limits.timeout_ms, events.len()).min(ticks(limits.max_batch_time_ms, 1));
        let outcome = match &live.bindings {
            Bindings::V01(exports) => {
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
                live.store.set_epoch_deadline(budget);
                exports
                    .call_enrich(&mut live.store, &params)
                    .map(Returned::V01)
            }
            Bindings::V02(exports) => {
                let kinds = self.arena.fill(events, mask)?;
                live.store.set_epoch_deadline(budget);
                exports
                    .call_enrich(&mut live.store, self.arena.batch(&kinds))
                    .map(Returned::V02)
            }
        };
        live.events += events.len() as u64;
        match outcome {
            Ok(Returned::V01(results)) if results.len() == events.len() => Ok(results
                .into_iter()
                .zip(events)
                .map(|(result, event)| self.check(event, result))
                .collect()),
            Ok(Returned::V01(results)) => Err((
                ErrorKind::InvalidOutput,
                format!(
                    "returned {} results for {} events",
                    results.len(),
                    events.len()
                ),
            )),
            Ok(Returned::V02((writes, errors))) => self.lift(events, writes, errors),
            Err(error) => {
                let failure = describe_failure(&live.store, &error, limits.timeout_ms);
                self.live = None;
                Err(failure)
            }
        }
    }

    /// Applies the output rules to a 0.2 call's writes and errors, giving
    /// one result per event as a 0.1 call does. An event index outside the
    /// batch fails the call as a whole (as a wrong count of results does
    /// under 0.1); every other fault is the one event's.
    fn lift(
        &self,
        events: &[&Event],
        writes: Vec<v02::Write>,
        errors: Vec<v02::EventError>,
    ) -> Result<Vec<EventResult>, (ErrorKind, String)> {
        let n = events.len();
        let outside = |event: u32| {
            (
                ErrorKind::InvalidOutput,
                format!("returned a result for event {event} of a batch of {n} events"),
            )
        };
        let mut counts = vec![0usize; n];
        for write in &writes {
            *counts
                .get_mut(write.event as usize)
                .ok_or_else(|| outside(write.event))? += 1;
        }
        if let Some(error) = errors.iter().find(|e| e.event as usize >= n) {
            return Err(outside(error.event));
        }
        let max = self.plugin.limits.max_updates_per_event;
        let mut results: Vec<EventResult> = counts
            .iter()
            .zip(events)
            .map(|(&count, event)| {
                if count > max {
                    let message = format!(
                        "returned {count} updates for one event; at most {max} are allowed"
                    );
                    Err(self.error(event, (ErrorKind::OutputLimit, message)))
                } else {
                    Ok(Vec::with_capacity(count))
                }
            })
            .collect();
        for failed in errors {
            let at = failed.event as usize;
            let failure = match failed.error {
                v02::EnrichError::InvalidEvent(message) => (ErrorKind::InvalidEvent, message),
                v02::EnrichError::Internal(message) => (ErrorKind::Internal, message),
                v02::EnrichError::UndeclaredWrite(name) => undeclared(&name),
            };
            results[at] = Err(self.error(events[at], failure));
        }
        for write in writes {
            let at = write.event as usize;
            let Ok(updates) = &mut results[at] else {
                continue;
            };
            match self.convert_v02(write.update) {
                Ok(update) => updates.push(update),
                Err(failure) => results[at] = Err(self.error(events[at], failure)),
            }
        }
        Ok(results)
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
        // The manifest's own name, shared, stands for the plugin's.
        match self.plugin.writes.iter().find(|w| ***w == *attribute) {
            Some(declared) => self.checked(declared.clone(), op),
            None => Err(undeclared(&attribute)),
        }
    }

    fn convert_v02(&self, update: v02::Update) -> Result<Update, (ErrorKind, String)> {
        let (index, op) = match update {
            v02::Update::Set((index, value)) => (index, Op::Set(convert_value_v02(value))),
            v02::Update::Increment((index, delta)) => (index, Op::Increment(delta)),
            v02::Update::Max((index, value)) => (index, Op::Max(convert_value_v02(value))),
            v02::Update::Min((index, value)) => (index, Op::Min(convert_value_v02(value))),
        };
        let writes = &self.plugin.writes;
        let Some(attribute) = writes.get(index as usize) else {
            return Err((
                ErrorKind::UndeclaredWrite,
                format!(
                    "wrote attribute index {index}; its manifest lists {} attribute(s) in `writes`",
                    writes.len()
                ),
            ));
        };
        self.checked(attribute.clone(), op)
    }

    /// The output rules on a value, for a declared attribute.
    fn checked(&self, attribute: Arc<str>, op: Op) -> Result<Update, (ErrorKind, String)> {
        let max = self.plugin.limits.max_string_bytes;
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

/// The failure of a write to `attribute`, which the manifest does not list.
fn undeclared(attribute: &str) -> (ErrorKind, String) {
    let shown: String = attribute.chars().take(64).collect();
    (
        ErrorKind::UndeclaredWrite,
        format!("wrote attribute `{shown}`, which its manifest does not list in `writes`"),
    )
}

fn convert_value_v02(value: v02::Value) -> Value {
    match value {
        v02::Value::Text(s) => Value::Text(s),
        v02::Value::Integer(i) => Value::Integer(i),
        v02::Value::Float(f) => Value::Float(f),
        v02::Value::Boolean(b) => Value::Boolean(b),
        v02::Value::Timestamp(ms) => Value::Timestamp(ms),
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

/// Numbers per event in a 0.2 batch's `events` (wit/0.2/plugin.wit).
const EVENT_WIDTH: usize = 11;
/// The offset of an absent User-Agent or URL.
const ABSENT: u32 = u32::MAX;
/// Where every 0.2 arena keeps `{}`, the properties of a plugin that may
/// not read them.
const NO_PROPERTIES: [u32; 2] = [0, 2];

/// A 0.2 batch: the text of its events in one buffer, each event as
/// [`EVENT_WIDTH`] numbers. The buffers are kept across calls.
#[derive(Default)]
struct Arena {
    text: Vec<u8>,
    events: Vec<u32>,
    timestamps: Vec<i64>,
}

impl Arena {
    /// Lays `events` out as the plugin with `mask` may see them, and
    /// returns the batch's kinds, each once.
    fn fill<'e>(
        &mut self,
        events: &[&'e Event],
        mask: FieldMask,
    ) -> Result<Vec<&'e str>, (ErrorKind, String)> {
        self.text.clear();
        self.events.clear();
        self.timestamps.clear();
        self.text.extend_from_slice(b"{}");
        let mut kinds: Vec<&'e str> = Vec::new();
        let mut last_kind = 0usize;
        for event in events {
            let kind = event.kind.as_str();
            if kinds.get(last_kind) != Some(&kind) {
                last_kind = match kinds.iter().position(|k| *k == kind) {
                    Some(at) => at,
                    None => {
                        kinds.push(kind);
                        kinds.len() - 1
                    }
                };
            }
            let id = self.span(mask.id.then_some(event.id.as_str()))?;
            let user_id = self.span(mask.user_id.then_some(event.user_id.as_str()))?;
            let user_agent =
                self.optional(event.user_agent.as_deref().filter(|_| mask.user_agent))?;
            let url = self.optional(event.url.as_deref().filter(|_| mask.url))?;
            let properties = if mask.properties {
                self.span(Some(&event.properties))?
            } else {
                NO_PROPERTIES
            };
            self.events.push(last_kind as u32);
            for [offset, len] in [id, user_id, user_agent, url, properties] {
                self.events.extend_from_slice(&[offset, len]);
            }
            self.timestamps.push(event.timestamp_ms);
        }
        debug_assert_eq!(self.events.len(), events.len() * EVENT_WIDTH);
        Ok(kinds)
    }

    /// Appends `text` (empty when `None`) and returns its span.
    fn span(&mut self, text: Option<&str>) -> Result<[u32; 2], (ErrorKind, String)> {
        let text = text.unwrap_or("").as_bytes();
        let offset = self.text.len();
        // Offsets stay below ABSENT; a batch this large is split by the
        // caller's retry, one event per call.
        match (u32::try_from(offset), u32::try_from(text.len())) {
            (Ok(at), Ok(len)) if at.checked_add(len).is_some_and(|end| end < ABSENT) => {
                self.text.extend_from_slice(text);
                Ok([at, len])
            }
            _ => Err((
                ErrorKind::Internal,
                "the batch's text does not fit the 4 GiB a 0.2 batch can address".to_owned(),
            )),
        }
    }

    /// Appends `text` and returns its span, or the span of absent text.
    fn optional(&mut self, text: Option<&str>) -> Result<[u32; 2], (ErrorKind, String)> {
        match text {
            Some(text) => self.span(Some(text)),
            None => Ok([ABSENT, 0]),
        }
    }

    fn batch<'a>(&'a self, kinds: &'a [&'a str]) -> v02::Batch<'a> {
        v02::Batch {
            text: &self.text,
            kinds,
            events: &self.events,
            timestamps: &self.timestamps,
        }
    }
}
