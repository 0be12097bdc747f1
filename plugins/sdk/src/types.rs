//! The SDK's own types: the same whichever world a plugin is built for, so
//! a plugin's code does not change when it moves between them.

/// One tracked user action, as the host hands it to a plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique id of the event, assigned by its producer.
    pub id: String,
    /// The user the event belongs to.
    pub user_id: String,
    /// What happened: "page_view", "click", "purchase", ...
    pub kind: String,
    /// When it happened, in milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    /// The client's User-Agent header, when known.
    pub user_agent: Option<String>,
    /// The page URL, when known.
    pub url: Option<String>,
    /// Every other property of the event, as the text of a JSON object ("{}" when none).
    pub properties: String,
}

/// An event borrowed from the batch it came in: the fields of [`Event`],
/// as views into the batch's text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventView<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub kind: &'a str,
    pub timestamp_ms: i64,
    pub user_agent: Option<&'a str>,
    pub url: Option<&'a str>,
    pub properties: &'a str,
}

impl EventView<'_> {
    /// The event, copied out of the batch.
    pub fn to_event(&self) -> Event {
        Event {
            id: self.id.to_owned(),
            user_id: self.user_id.to_owned(),
            kind: self.kind.to_owned(),
            timestamp_ms: self.timestamp_ms,
            user_agent: self.user_agent.map(str::to_owned),
            url: self.url.map(str::to_owned),
            properties: self.properties.to_owned(),
        }
    }
}

impl<'a> From<&'a Event> for EventView<'a> {
    fn from(event: &'a Event) -> Self {
        EventView {
            id: &event.id,
            user_id: &event.user_id,
            kind: &event.kind,
            timestamp_ms: event.timestamp_ms,
            user_agent: event.user_agent.as_deref(),
            url: event.url.as_deref(),
            properties: &event.properties,
        }
    }
}

/// The value of one profile attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Milliseconds since the Unix epoch (UTC).
    Timestamp(i64),
}

/// One change to one attribute of the profile of the event's user.
///
/// Each operation is commutative for its attribute, so the host may merge
/// the updates of many events before it writes them, in any order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Replace the value; of several sets, the one from the latest event wins.
    Set((String, Value)),
    /// Add a signed delta to an integer counter; a missing counter counts as 0.
    Increment((String, i64)),
    /// Keep the larger of the stored and the given value.
    Max((String, Value)),
    /// Keep the smaller of the stored and the given value.
    Min((String, Value)),
}

/// Why a plugin could not enrich one event.
#[derive(Debug, Clone, PartialEq)]
pub enum EnrichError {
    /// The event lacks what the plugin needs, or holds it in a form the plugin cannot read.
    InvalidEvent(String),
    /// The plugin failed for a reason of its own.
    Internal(String),
}

/// An operation on an attribute named by its index in the manifest's
/// `writes`, as 0.2 carries it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Indexed {
    Set(u32, Value),
    Increment(u32, i64),
    Max(u32, Value),
    Min(u32, Value),
}

/// Where [`crate::Plugin::enrich_view`] writes one event's updates. An
/// attribute is named as in [`Update`]; a name the manifest does not list
/// in `writes` fails the event, as the host would under 0.1.
#[derive(Debug)]
pub struct Updates<'a> {
    writes: &'a [String],
    out: &'a mut Vec<Indexed>,
    undeclared: Option<String>,
}

// Under `world-0-1` the glue calls `enrich`, and only a plugin's own
// `enrich_view` ever sees an `Updates`.
#[cfg_attr(feature = "world-0-1", allow(dead_code))]
impl<'a> Updates<'a> {
    pub(crate) fn new(writes: &'a [String], out: &'a mut Vec<Indexed>) -> Self {
        Self {
            writes,
            out,
            undeclared: None,
        }
    }

    /// The first name written that `writes` does not list, if any.
    pub(crate) fn undeclared(self) -> Option<String> {
        self.undeclared
    }

    fn index(&mut self, attribute: &str) -> Option<u32> {
        match self
            .writes
            .iter()
            .position(|w| crate::text_eq(w, attribute))
        {
            Some(at) => u32::try_from(at).ok(),
            None => {
                self.undeclared.get_or_insert_with(|| attribute.to_owned());
                None
            }
        }
    }

    /// Writes `attribute`'s operation, made from its index.
    fn write(&mut self, attribute: &str, operation: impl FnOnce(u32) -> Indexed) {
        if let Some(at) = self.index(attribute) {
            self.out.push(operation(at));
        }
    }

    /// Replaces the value of `attribute`.
    pub fn set(&mut self, attribute: &str, value: Value) {
        self.write(attribute, |at| Indexed::Set(at, value));
    }

    /// Adds `delta` to the counter `attribute`.
    pub fn increment(&mut self, attribute: &str, delta: i64) {
        self.write(attribute, |at| Indexed::Increment(at, delta));
    }

    /// Keeps the larger of the stored value of `attribute` and `value`.
    pub fn max(&mut self, attribute: &str, value: Value) {
        self.write(attribute, |at| Indexed::Max(at, value));
    }

    /// Keeps the smaller of the stored value of `attribute` and `value`.
    pub fn min(&mut self, attribute: &str, value: Value) {
        self.write(attribute, |at| Indexed::Min(at, value));
    }

    /// Adds an [`Update`] as [`crate::Plugin::enrich`] returns it.
    pub fn push(&mut self, update: Update) {
        match update {
            Update::Set((name, value)) => self.set(&name, value),
            Update::Increment((name, delta)) => self.increment(&name, delta),
            Update::Max((name, value)) => self.max(&name, value),
            Update::Min((name, value)) => self.min(&name, value),
        }
    }
}
