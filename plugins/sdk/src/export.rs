//! The glue between a [`Plugin`] and the world it is exported as: what
//! [`crate::plugin!`] expands to calls into here.

use crate::bindings::pulsehub::plugin::types as wit;
use crate::{Config, EnrichError, Plugin, Value};

#[cfg(not(feature = "world-0-1"))]
pub use v02::*;

#[cfg(feature = "world-0-1")]
pub use v01::*;

fn value_to_wit(value: Value) -> wit::Value {
    match value {
        Value::Text(s) => wit::Value::Text(s),
        Value::Integer(i) => wit::Value::Integer(i),
        Value::Float(f) => wit::Value::Float(f),
        Value::Boolean(b) => wit::Value::Boolean(b),
        Value::Timestamp(ms) => wit::Value::Timestamp(ms),
    }
}

#[cfg(not(feature = "world-0-1"))]
mod v02 {
    use super::*;
    use crate::bindings::{Batch, EventError, Write};
    use crate::types::Indexed;
    use crate::{EventView, Updates};

    /// Numbers per event in `Batch::events` (wit/0.2/plugin.wit).
    pub const EVENT_WIDTH: usize = 11;
    /// The offset of an absent User-Agent or URL.
    const ABSENT: u32 = u32::MAX;

    /// One instance's plugin, and what it needs between batches.
    pub struct Instance<P> {
        plugin: P,
        /// The manifest's `writes`: an update's attribute is its index here.
        writes: Vec<String>,
        /// One event's updates, reused.
        scratch: Vec<Indexed>,
    }

    impl<P: Plugin> Instance<P> {
        pub fn init(config: Vec<(String, String)>, writes: Vec<String>) -> Result<Self, String> {
            Ok(Self {
                plugin: P::init(&Config::new(config))?,
                writes,
                scratch: Vec::new(),
            })
        }

        /// Runs the plugin over every event of `batch`.
        pub fn enrich(&mut self, batch: &Batch) -> (Vec<Write>, Vec<EventError>) {
            let mut writes = Vec::new();
            let mut errors = Vec::new();
            let fail = |event: usize, error: wit::EnrichError| EventError {
                event: event as u32,
                error,
            };
            let count = batch.timestamps.len();
            // The whole text is checked once; each span then only at its ends.
            let text = match std::str::from_utf8(&batch.text) {
                Ok(text) => text,
                Err(e) => {
                    let message = format!("the batch's text is not UTF-8: {e}");
                    errors.extend(
                        (0..count).map(|i| fail(i, wit::EnrichError::Internal(message.clone()))),
                    );
                    return (writes, errors);
                }
            };
            for event in 0..count {
                let view = match view(text, batch, event) {
                    Ok(view) => view,
                    Err(message) => {
                        errors.push(fail(event, wit::EnrichError::Internal(message)));
                        continue;
                    }
                };
                self.scratch.clear();
                let mut out = Updates::new(&self.writes, &mut self.scratch);
                let result = self.plugin.enrich_view(&view, &mut out);
                match (result, out.undeclared()) {
                    (Err(EnrichError::InvalidEvent(m)), _) => {
                        errors.push(fail(event, wit::EnrichError::InvalidEvent(m)));
                    }
                    (Err(EnrichError::Internal(m)), _) => {
                        errors.push(fail(event, wit::EnrichError::Internal(m)));
                    }
                    (Ok(()), Some(name)) => {
                        errors.push(fail(event, wit::EnrichError::UndeclaredWrite(name)));
                    }
                    (Ok(()), None) => {
                        writes.extend(self.scratch.drain(..).map(|update| Write {
                            event: event as u32,
                            update: match update {
                                Indexed::Set(at, v) => wit::Update::Set((at, value_to_wit(v))),
                                Indexed::Increment(at, d) => wit::Update::Increment((at, d)),
                                Indexed::Max(at, v) => wit::Update::Max((at, value_to_wit(v))),
                                Indexed::Min(at, v) => wit::Update::Min((at, value_to_wit(v))),
                            },
                        }));
                    }
                }
            }
            (writes, errors)
        }
    }

    /// Event `at` of `batch`, borrowed from its text.
    fn view<'a>(text: &'a str, batch: &'a Batch, at: usize) -> Result<EventView<'a>, String> {
        let numbers = batch
            .events
            .get(at * EVENT_WIDTH..(at + 1) * EVENT_WIDTH)
            .ok_or_else(|| format!("the batch has no numbers for event {at}"))?;
        let span = |field: usize| -> Result<Option<&'a str>, String> {
            let (offset, len) = (numbers[1 + 2 * field], numbers[2 + 2 * field]);
            if offset == ABSENT {
                return Ok(None);
            }
            let start = offset as usize;
            start
                .checked_add(len as usize)
                .and_then(|end| text.get(start..end))
                .map(Some)
                .ok_or_else(|| {
                    format!("event {at}: a span ({offset}, {len}) outside the batch's text")
                })
        };
        let kind = batch
            .kinds
            .get(numbers[0] as usize)
            .ok_or_else(|| format!("event {at}: kind {} is not in the batch", numbers[0]))?;
        Ok(EventView {
            id: span(0)?.unwrap_or(""),
            user_id: span(1)?.unwrap_or(""),
            kind,
            timestamp_ms: batch.timestamps[at],
            user_agent: span(2)?,
            url: span(3)?,
            properties: span(4)?.unwrap_or("{}"),
        })
    }

    /// What `enrich` returns when `init` has not run.
    pub fn not_initialised(batch: &Batch) -> (Vec<Write>, Vec<EventError>) {
        let errors = (0..batch.timestamps.len())
            .map(|event| EventError {
                event: event as u32,
                error: wit::EnrichError::Internal("enrich called before init".into()),
            })
            .collect();
        (Vec::new(), errors)
    }

    #[doc(hidden)]
    #[macro_export]
    macro_rules! __guest {
        ($export:ident, $plugin:ty, $state:ident) => {
            impl $crate::bindings::Guest for $export {
                fn init(config: Vec<(String, String)>, writes: Vec<String>) -> Result<(), String> {
                    let instance = $crate::export::Instance::<$plugin>::init(config, writes)?;
                    $state.with(|state| *state.borrow_mut() = Some(instance));
                    Ok(())
                }

                fn enrich(
                    batch: $crate::bindings::Batch,
                ) -> (
                    Vec<$crate::bindings::Write>,
                    Vec<$crate::bindings::EventError>,
                ) {
                    $state.with(|state| match state.borrow_mut().as_mut() {
                        Some(instance) => instance.enrich(&batch),
                        None => $crate::export::not_initialised(&batch),
                    })
                }
            }
        };
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::{Event, Update};

        /// Sets `seen` to every field of the event; writes `bad` for
        /// `undeclared` events; fails `fail` events.
        struct Echo;

        impl Plugin for Echo {
            fn init(_config: &Config) -> Result<Self, String> {
                Ok(Echo)
            }
            fn enrich(&mut self, e: &Event) -> Result<Vec<Update>, EnrichError> {
                let seen = format!(
                    "{:?} {:?} {} {:?} {:?} {:?}",
                    e.id, e.user_id, e.timestamp_ms, e.user_agent, e.url, e.properties
                );
                match e.kind.as_str() {
                    "undeclared" => Ok(vec![Update::Increment(("bad".into(), 1))]),
                    "fail" => Err(EnrichError::InvalidEvent("asked to".into())),
                    _ => Ok(vec![
                        Update::Set(("seen".into(), Value::Text(seen))),
                        Update::Increment(("count".into(), 2)),
                    ]),
                }
            }
        }

        /// A batch of the events given as (kind, User-Agent, URL).
        fn batch(events: &[(&str, Option<&str>, Option<&str>)]) -> Batch {
            let mut text = Vec::new();
            let mut span = |s: Option<&str>| match s {
                None => [ABSENT, 0],
                Some(s) => {
                    let at = text.len() as u32;
                    text.extend_from_slice(s.as_bytes());
                    [at, s.len() as u32]
                }
            };
            let mut numbers = Vec::new();
            let mut kinds: Vec<String> = Vec::new();
            for (i, (kind, ua, url)) in events.iter().enumerate() {
                let k = match kinds.iter().position(|k| k == kind) {
                    Some(k) => k,
                    None => {
                        kinds.push((*kind).to_owned());
                        kinds.len() - 1
                    }
                };
                numbers.push(k as u32);
                let id = format!("é-{i}");
                let spans = [
                    span(Some(&id)),
                    span(Some("u")),
                    span(*ua),
                    span(*url),
                    span(Some("{}")),
                ];
                for [offset, len] in spans {
                    numbers.extend([offset, len]);
                }
            }
            Batch {
                timestamps: (0..events.len() as i64).collect(),
                text,
                kinds,
                events: numbers,
            }
        }

        fn echo() -> Instance<Echo> {
            Instance::<Echo>::init(Vec::new(), vec!["count".into(), "seen".into()]).expect("init")
        }

        #[test]
        fn a_batch_is_read_in_place_and_written_by_index() {
            let (out, errors) = echo().enrich(&batch(&[
                ("a", Some(""), None),
                ("undeclared", None, None),
                ("fail", None, None),
                ("a", None, Some("https://ü.example/")),
            ]));
            let errors: Vec<(u32, wit::EnrichError)> =
                errors.into_iter().map(|e| (e.event, e.error)).collect();
            // The generated types have `Debug`, not `PartialEq`.
            assert_eq!(
                format!("{errors:?}"),
                format!(
                    "{:?}",
                    [
                        (1, wit::EnrichError::UndeclaredWrite("bad".into())),
                        (2, wit::EnrichError::InvalidEvent("asked to".into())),
                    ]
                )
            );
            let out: Vec<(u32, wit::Update)> =
                out.into_iter().map(|w| (w.event, w.update)).collect();
            let seen = |text: &str| wit::Update::Set((1, wit::Value::Text(text.into())));
            let expected = [
                (0, seen(r#""é-0" "u" 0 Some("") None "{}""#)),
                (0, wit::Update::Increment((0, 2))),
                (
                    3,
                    seen(r#""é-3" "u" 3 None Some("https://ü.example/") "{}""#),
                ),
                (3, wit::Update::Increment((0, 2))),
            ];
            assert_eq!(format!("{out:?}"), format!("{expected:?}"));
        }

        #[test]
        fn a_span_outside_the_text_or_inside_a_character_fails_its_event_alone() {
            let mut bad = batch(&[("a", None, None), ("a", None, None), ("a", None, None)]);
            // Event 1's id ends inside its `é`; event 2's user id runs past
            // the end of the text.
            bad.events[EVENT_WIDTH + 2] = 1;
            bad.events[2 * EVENT_WIDTH + 4] = 10_000;
            let (out, errors) = echo().enrich(&bad);
            assert!(out.iter().all(|w| w.event == 0), "{out:?}");
            let failed: Vec<u32> = errors.iter().map(|e| e.event).collect();
            assert_eq!(failed, [1, 2]);
        }
    }
}

#[cfg(feature = "world-0-1")]
mod v01 {
    use super::*;
    use crate::{Event, Update};

    /// One instance's plugin.
    pub struct Instance<P> {
        plugin: P,
    }

    impl<P: Plugin> Instance<P> {
        pub fn init(config: Vec<(String, String)>) -> Result<Self, String> {
            Ok(Self {
                plugin: P::init(&Config::new(config))?,
            })
        }

        /// Runs the plugin over every event, one result per event in order.
        pub fn enrich(
            &mut self,
            events: Vec<wit::Event>,
        ) -> Vec<Result<Vec<wit::Update>, wit::EnrichError>> {
            events
                .into_iter()
                .map(|e| {
                    let event = Event {
                        id: e.id,
                        user_id: e.user_id,
                        kind: e.kind,
                        timestamp_ms: e.timestamp_ms,
                        user_agent: e.user_agent,
                        url: e.url,
                        properties: e.properties,
                    };
                    match self.plugin.enrich(&event) {
                        Ok(updates) => Ok(updates.into_iter().map(update_to_wit).collect()),
                        Err(EnrichError::InvalidEvent(m)) => Err(wit::EnrichError::InvalidEvent(m)),
                        Err(EnrichError::Internal(m)) => Err(wit::EnrichError::Internal(m)),
                    }
                })
                .collect()
        }
    }

    fn update_to_wit(update: Update) -> wit::Update {
        match update {
            Update::Set((name, v)) => wit::Update::Set((name, value_to_wit(v))),
            Update::Increment((name, d)) => wit::Update::Increment((name, d)),
            Update::Max((name, v)) => wit::Update::Max((name, value_to_wit(v))),
            Update::Min((name, v)) => wit::Update::Min((name, value_to_wit(v))),
        }
    }

    /// What `enrich` returns when `init` has not run.
    pub fn not_initialised(
        events: &[wit::Event],
    ) -> Vec<Result<Vec<wit::Update>, wit::EnrichError>> {
        events
            .iter()
            .map(|_| {
                Err(wit::EnrichError::Internal(
                    "enrich called before init".into(),
                ))
            })
            .collect()
    }

    #[doc(hidden)]
    #[macro_export]
    macro_rules! __guest {
        ($export:ident, $plugin:ty, $state:ident) => {
            impl $crate::bindings::Guest for $export {
                fn init(config: Vec<(String, String)>) -> Result<(), String> {
                    let instance = $crate::export::Instance::<$plugin>::init(config)?;
                    $state.with(|state| *state.borrow_mut() = Some(instance));
                    Ok(())
                }

                fn enrich(
                    events: Vec<$crate::bindings::pulsehub::plugin::types::Event>,
                ) -> Vec<
                    Result<
                        Vec<$crate::bindings::pulsehub::plugin::types::Update>,
                        $crate::bindings::pulsehub::plugin::types::EnrichError,
                    >,
                > {
                    $state.with(|state| match state.borrow_mut().as_mut() {
                        Some(instance) => instance.enrich(events),
                        None => $crate::export::not_initialised(&events),
                    })
                }
            }
        };
    }
}
