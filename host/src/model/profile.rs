//! A user's profile: attributes with provenance, and how a batch's merged
//! changes are applied to it.
//!
//! Every store applies changes through [`Profile::apply`], so PostgreSQL and
//! the embedded store agree by construction. A profile is stored and cached
//! as the JSON of [`Profile`] (serde); the REST shape of contract §5 is the
//! API's business (`api/profiles.rs`).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::identity::{Identifier, MergeRecord, USER_ID};
use crate::model::merge::AttributeChange;
use crate::model::update::{Op, OpKind, Value};

/// One attribute: its value and who last changed it, by which operation.
/// Stored as `{"type": "integer", "value": 17, "plugin": …, "plugin_version":
/// …, "event_id": …, "event_time_ms": …, "op": "increment"}`; read by a hand-written
/// [`Deserialize`] that decodes `value` as the `type` it follows, instead of
/// serde's buffering `flatten` path (the commit decodes every profile a batch
/// changes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribute {
    #[serde(flatten)]
    pub value: Value,
    pub plugin: String,
    pub plugin_version: String,
    pub event_id: String,
    /// Time of the deciding event, milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    /// The operation of the last change (`None`: stored before it was
    /// kept); what [`Profile::join`] joins the value by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<OpKind>,
}

impl<'de> Deserialize<'de> for Attribute {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(AttributeVisitor)
    }
}

struct AttributeVisitor;

/// The keys of a stored attribute; others are skipped.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Type,
    Value,
    Plugin,
    PluginVersion,
    EventId,
    EventTimeMs,
    Op,
    #[serde(other)]
    Other,
}

/// The `type` of a stored value.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Text,
    Integer,
    Float,
    Boolean,
    Timestamp,
}

/// A stored value's `type` reads its `value`: from the attribute's map
/// directly, or from a value kept while the `type` was not yet known.
impl<'de> serde::de::DeserializeSeed<'de> for Kind {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Ok(match self {
            Kind::Text => Value::Text(Deserialize::deserialize(d)?),
            Kind::Integer => Value::Integer(Deserialize::deserialize(d)?),
            Kind::Float => Value::Float(Deserialize::deserialize(d)?),
            Kind::Boolean => Value::Boolean(Deserialize::deserialize(d)?),
            Kind::Timestamp => Value::Timestamp(Deserialize::deserialize(d)?),
        })
    }
}

impl<'de> serde::de::Visitor<'de> for AttributeVisitor {
    type Value = Attribute;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a profile attribute")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Attribute, A::Error> {
        use serde::de::Error;
        let mut kind: Option<Kind> = None;
        // The value, decoded at once when its `type` came first (as PulseHub
        // writes it, and as PostgreSQL's `jsonb` orders keys), else kept
        // until the `type` is known.
        let mut value: Option<Value> = None;
        let mut untyped: Option<serde_json::Value> = None;
        let (mut plugin, mut plugin_version, mut event_id, mut event_time_ms) =
            (None, None, None, None);
        let mut op = None;
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Type => kind = Some(map.next_value()?),
                Field::Value => match kind {
                    Some(kind) => value = Some(map.next_value_seed(kind)?),
                    None => untyped = Some(map.next_value()?),
                },
                Field::Plugin => plugin = Some(map.next_value()?),
                Field::PluginVersion => plugin_version = Some(map.next_value()?),
                Field::EventId => event_id = Some(map.next_value()?),
                Field::EventTimeMs => event_time_ms = Some(map.next_value()?),
                Field::Op => op = map.next_value()?,
                Field::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        let value = match (value, untyped) {
            (Some(value), _) => value,
            (None, Some(raw)) => {
                let kind = kind.ok_or_else(|| A::Error::missing_field("type"))?;
                serde::de::DeserializeSeed::deserialize(kind, raw).map_err(A::Error::custom)?
            }
            (None, None) => return Err(A::Error::missing_field("value")),
        };
        Ok(Attribute {
            value,
            plugin: plugin.ok_or_else(|| A::Error::missing_field("plugin"))?,
            plugin_version: plugin_version
                .ok_or_else(|| A::Error::missing_field("plugin_version"))?,
            event_id: event_id.ok_or_else(|| A::Error::missing_field("event_id"))?,
            event_time_ms: event_time_ms.ok_or_else(|| A::Error::missing_field("event_time_ms"))?,
            op,
        })
    }
}

/// A user's profile as stored (PostgreSQL `profiles.profile`, the embedded
/// store) and cached (Redis).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub user_id: String,
    pub attributes: BTreeMap<String, Attribute>,
    /// Wall-clock time of the first and the latest commit that changed it.
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Counts the commits that changed this profile. A cache keeps the copy
    /// with the highest revision, so a slow refill cannot overwrite a newer
    /// write-through.
    pub revision: i64,
    /// The person's identifiers, sorted; empty for a profile that has only
    /// the `user_id` its key is ([`Profile::identifiers`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identifiers: Vec<Identifier>,
    /// The merges this profile took in, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merges: Vec<MergeRecord>,
    /// Set on a pointer: the row of an identifier (or of a profile merged
    /// away) that belongs to the profile at this key. A pointer has no
    /// attributes of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<String>,
    /// The ids of the segments the profile is a member of, ascending, as
    /// the commit that last changed it evaluated them
    /// ([`crate::segment::SegmentSet::evaluate`]). Ids of segments since
    /// deleted or redefined linger; readers keep only the live ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<u32>,
    /// When the scheduler next re-evaluates the profile's time-relative
    /// segments, in milliseconds since the Unix epoch: at or before its
    /// memberships change with time alone
    /// ([`crate::segment::SegmentSet::schedule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments_due_ms: Option<i64>,
}

impl Profile {
    pub fn new(user_id: impl Into<String>, now_ms: i64) -> Self {
        Self {
            user_id: user_id.into(),
            attributes: BTreeMap::new(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            revision: 0,
            identifiers: Vec::new(),
            merges: Vec::new(),
            merged_into: None,
            segments: Vec::new(),
            segments_due_ms: None,
        }
    }

    /// The person's identifiers: as stored, or the `user_id` the key is when
    /// none are.
    pub fn identifiers(&self) -> Cow<'_, [Identifier]> {
        if self.identifiers.is_empty() && self.merged_into.is_none() {
            Cow::Owned(vec![Identifier::new(USER_ID, self.user_id.as_str())])
        } else {
            Cow::Borrowed(&self.identifiers)
        }
    }

    /// The profile as stored and cached: its serde JSON. Written into a
    /// buffer sized for a profile of its attribute count, so that encoding
    /// a batch of profiles does not grow each document several times over.
    pub fn to_json(&self) -> serde_json::Result<String> {
        let entries = self.identifiers.len() + self.merges.len();
        let mut json = Vec::with_capacity(256 + 224 * self.attributes.len() + 112 * entries);
        serde_json::to_writer(&mut json, self)?;
        // serde_json writes UTF-8 only; the check costs one pass.
        String::from_utf8(json).map_err(serde::ser::Error::custom)
    }

    /// Applies one batch's merged changes for this user, at wall-clock time
    /// `now_ms`, and bumps the revision.
    ///
    /// - `set` replaces the value unless the stored one came from a later
    ///   event (equal times: the batch applied later wins);
    /// - `increment` adds to an integer (a missing or non-integer value counts
    ///   as 0), saturating;
    /// - `max`/`min` keep the extreme; a value that does not compare with the
    ///   stored one (a plugin changed the attribute's type) replaces it.
    pub fn apply<'a>(
        &mut self,
        changes: impl IntoIterator<Item = (&'a String, &'a AttributeChange)>,
        now_ms: i64,
    ) {
        for (name, change) in changes {
            let provenance = &change.provenance;
            let existing = self.attributes.get(name);
            let value = match (&change.op, existing) {
                (op, None) => Some(initial(op)),
                (Op::Set(value), Some(old)) => {
                    (provenance.event_time_ms >= old.event_time_ms).then(|| value.clone())
                }
                (Op::Increment(delta), Some(old)) => {
                    let base = match old.value {
                        Value::Integer(n) => n,
                        _ => 0,
                    };
                    Some(Value::Integer(base.saturating_add(*delta)))
                }
                (Op::Max(value), Some(old)) => {
                    wins(value, &old.value, Ordering::Greater).then(|| value.clone())
                }
                (Op::Min(value), Some(old)) => {
                    wins(value, &old.value, Ordering::Less).then(|| value.clone())
                }
            };
            let Some(value) = value else { continue };
            match self.attributes.get_mut(name) {
                // In place: the strings keep their buffers.
                Some(old) => {
                    old.value = value;
                    assign(&mut old.plugin, &provenance.plugin);
                    assign(&mut old.plugin_version, &provenance.plugin_version);
                    assign(&mut old.event_id, &provenance.event_id);
                    old.event_time_ms = provenance.event_time_ms;
                    old.op = Some(change.op.kind());
                }
                None => {
                    let attribute = Attribute {
                        value,
                        plugin: provenance.plugin.to_string(),
                        plugin_version: provenance.plugin_version.to_string(),
                        event_id: provenance.event_id.clone(),
                        event_time_ms: provenance.event_time_ms,
                        op: Some(change.op.kind()),
                    };
                    self.attributes.insert(name.clone(), attribute);
                }
            }
        }
        self.updated_at_ms = now_ms;
        self.revision += 1;
    }
}

impl Profile {
    /// Joins `other` (another profile of the same person) into this one, at
    /// wall-clock time `now_ms`: each attribute becomes the join of both
    /// states under its operation, so joining in either direction, before
    /// or after more events, gives the same values.
    ///
    /// - `increment`: the sum;
    /// - `max` / `min`: the extreme; equal or incomparable values go to the
    ///   later event;
    /// - `set`, and an attribute whose two sides name different operations
    ///   (or none): the later event's.
    ///
    /// "Later" orders by event time, then event id, then value, so no tie
    /// depends on the direction. The provenance is the deciding event's; a
    /// sum's is the later event's.
    pub fn join(&mut self, other: &Profile, now_ms: i64) {
        for (name, theirs) in &other.attributes {
            let joined = match self.attributes.get(name) {
                Some(ours) => join_attributes(ours, theirs),
                None => theirs.clone(),
            };
            self.attributes.insert(name.clone(), joined);
        }
        self.created_at_ms = self.created_at_ms.min(other.created_at_ms);
        self.updated_at_ms = now_ms;
        self.revision += 1;
    }
}

/// The join of one attribute's two states (see [`Profile::join`]).
fn join_attributes(a: &Attribute, b: &Attribute) -> Attribute {
    let later = |a: &Attribute, b: &Attribute| -> bool {
        match (a.event_time_ms, a.event_id.as_str()).cmp(&(b.event_time_ms, b.event_id.as_str())) {
            // One event in both profiles: the values decide, as text.
            Ordering::Equal => value_text(&a.value) >= value_text(&b.value),
            ordering => ordering == Ordering::Greater,
        }
    };
    let (newer, older) = if later(a, b) { (a, b) } else { (b, a) };
    let kind = match (a.op, b.op) {
        (Some(x), Some(y)) if x == y => Some(x),
        (Some(x), None) | (None, Some(x)) => Some(x),
        _ => None,
    };
    match kind {
        Some(OpKind::Increment) => {
            let count = |x: &Attribute| match x.value {
                Value::Integer(n) => n,
                _ => 0,
            };
            Attribute {
                value: Value::Integer(count(a).saturating_add(count(b))),
                op: Some(OpKind::Increment),
                ..newer.clone()
            }
        }
        Some(direction @ (OpKind::Max | OpKind::Min)) => {
            let wanted = match direction {
                OpKind::Max => Ordering::Greater,
                _ => Ordering::Less,
            };
            let older_wins = older.value.compare(&newer.value) == Some(wanted);
            let kept = if older_wins { older } else { newer };
            Attribute {
                op: Some(direction),
                ..kept.clone()
            }
        }
        Some(OpKind::Set) | None => newer.clone(),
    }
}

fn value_text(value: &Value) -> String {
    value.to_json().to_string()
}

/// Sets `slot` to `value`, in the buffer it has.
fn assign(slot: &mut String, value: &str) {
    slot.clear();
    slot.push_str(value);
}

fn initial(op: &Op) -> Value {
    match op {
        Op::Set(v) | Op::Max(v) | Op::Min(v) => v.clone(),
        Op::Increment(delta) => Value::Integer(*delta),
    }
}

/// Whether `new` replaces `old` under `max` (`Greater`) or `min` (`Less`).
fn wins(new: &Value, old: &Value, direction: Ordering) -> bool {
    match new.compare(old) {
        Some(ordering) => ordering == direction,
        None => true,
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::merge::Provenance;
    use std::sync::Arc;

    fn change(op: Op, event_time_ms: i64, event_id: &str) -> AttributeChange {
        AttributeChange {
            op,
            provenance: Provenance {
                plugin: Arc::from("p"),
                plugin_version: Arc::from("1.0.0"),
                event_id: event_id.into(),
                event_time_ms,
            },
        }
    }

    fn apply(profile: &mut Profile, name: &str, c: AttributeChange) {
        let changes = BTreeMap::from([(name.to_owned(), c)]);
        profile.apply(&changes, 99);
    }

    #[test]
    fn increments_add_up_across_batches() {
        let mut p = Profile::new("u", 1);
        apply(&mut p, "n", change(Op::Increment(3), 10, "a"));
        apply(&mut p, "n", change(Op::Increment(4), 5, "b"));
        assert_eq!(p.attributes["n"].value, Value::Integer(7));
        assert_eq!(p.attributes["n"].event_id, "b");
        assert_eq!(p.revision, 2);
        assert_eq!((p.created_at_ms, p.updated_at_ms), (1, 99));
    }

    #[test]
    fn set_keeps_the_latest_event() {
        let mut p = Profile::new("u", 1);
        apply(
            &mut p,
            "d",
            change(Op::Set(Value::Text("new".into())), 20, "a"),
        );
        apply(
            &mut p,
            "d",
            change(Op::Set(Value::Text("old".into())), 10, "b"),
        );
        assert_eq!(p.attributes["d"].value, Value::Text("new".into()));
        apply(
            &mut p,
            "d",
            change(Op::Set(Value::Text("same".into())), 20, "c"),
        );
        assert_eq!(p.attributes["d"].value, Value::Text("same".into()));
    }

    #[test]
    fn max_and_min_keep_extremes_and_accept_a_new_type() {
        let mut p = Profile::new("u", 1);
        apply(&mut p, "hi", change(Op::Max(Value::Timestamp(5)), 5, "a"));
        apply(&mut p, "hi", change(Op::Max(Value::Timestamp(3)), 3, "b"));
        apply(&mut p, "lo", change(Op::Min(Value::Integer(5)), 5, "a"));
        apply(&mut p, "lo", change(Op::Min(Value::Integer(3)), 3, "b"));
        assert_eq!(p.attributes["hi"].value, Value::Timestamp(5));
        assert_eq!(p.attributes["lo"].value, Value::Integer(3));
        apply(
            &mut p,
            "hi",
            change(Op::Max(Value::Text("x".into())), 1, "c"),
        );
        assert_eq!(p.attributes["hi"].value, Value::Text("x".into()));
    }

    /// A small deterministic generator, so a failing case replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A stream of one person's changes, distinct times: a counter, a
    /// `max` and a `min` timestamp, a `set` text, in one batch each.
    fn stream(rng: &mut Rng, events: i64) -> Vec<(String, AttributeChange)> {
        let mut changes = Vec::new();
        for i in 0..events {
            let at = 1_000 + i * 7 + rng.below(5) as i64;
            let id = format!("e{}", rng.below(1_000_000));
            let seen = Value::Timestamp(at);
            let (name, op) = match rng.below(4) {
                0 => ("n", Op::Increment(1 + rng.below(3) as i64)),
                1 => ("last", Op::Max(seen)),
                2 => ("first", Op::Min(seen)),
                _ => ("device", Op::Set(Value::Text(format!("d{}", rng.below(3))))),
            };
            changes.push((name.to_owned(), change(op, at, &id)));
        }
        changes
    }

    fn applied<'a>(changes: impl IntoIterator<Item = &'a (String, AttributeChange)>) -> Profile {
        let mut p = Profile::new("u", 1);
        for (name, c) in changes {
            apply(&mut p, name, c.clone());
        }
        p
    }

    #[test]
    fn two_profiles_of_one_stream_join_to_the_profile_of_the_whole_stream_both_ways() {
        for seed in 1..200 {
            let mut rng = Rng(seed);
            let events = 1 + rng.below(30) as i64;
            let all = stream(&mut rng, events);
            let (a, b): (Vec<_>, Vec<_>) = all.iter().partition(|_| rng.below(2) == 0);
            let whole = applied(&all);
            let mut ab = applied(a.iter().copied());
            ab.join(&applied(b.iter().copied()), 99);
            let mut ba = applied(b.iter().copied());
            ba.join(&applied(a.iter().copied()), 99);
            assert_eq!(ab.attributes, whole.attributes, "seed {seed}");
            assert_eq!(ba.attributes, whole.attributes, "seed {seed}");
        }
    }

    #[test]
    fn joins_decide_ties_the_same_way_in_both_directions() {
        let mut a = Profile::new("a", 5);
        let mut b = Profile::new("b", 3);
        apply(
            &mut a,
            "d",
            change(Op::Set(Value::Text("x".into())), 10, "e1"),
        );
        apply(
            &mut b,
            "d",
            change(Op::Set(Value::Text("y".into())), 10, "e2"),
        );
        apply(&mut a, "hi", change(Op::Max(Value::Integer(4)), 10, "e1"));
        apply(&mut b, "hi", change(Op::Max(Value::Integer(4)), 12, "e2"));
        // Stored before the operation was kept: joined as a `set`.
        apply(&mut a, "old", change(Op::Increment(1), 10, "e1"));
        apply(&mut b, "old", change(Op::Increment(1), 11, "e2"));
        for profile in [&mut a, &mut b] {
            if let Some(old) = profile.attributes.get_mut("old") {
                old.op = None;
            }
        }
        let mut ab = a.clone();
        ab.join(&b, 99);
        let mut ba = b.clone();
        ba.join(&a, 99);
        assert_eq!(ab.attributes, ba.attributes);
        assert_eq!(ab.attributes["d"].value, Value::Text("y".into()), "e2 > e1");
        assert_eq!(
            ab.attributes["hi"].event_id, "e2",
            "equal values: the later event"
        );
        assert_eq!(ab.attributes["old"].value, Value::Integer(1));
        assert_eq!(ab.created_at_ms, 3);
        assert_eq!(ab.revision, a.revision + 1);
    }

    #[test]
    fn a_stored_attribute_without_its_operation_still_reads() {
        let text = r#"{"user_id":"u","attributes":{"n":{"type":"integer","value":3,
            "plugin":"p","plugin_version":"1.0.0","event_id":"e","event_time_ms":5}},
            "created_at_ms":1,"updated_at_ms":2,"revision":1}"#;
        let p: Profile = serde_json::from_str(text).expect("parses");
        assert_eq!(p.attributes["n"].op, None);
        let mut q = p.clone();
        apply(&mut q, "n", change(Op::Increment(1), 6, "f"));
        assert_eq!(q.attributes["n"].op, Some(OpKind::Increment));
        let text = serde_json::to_string(&q).expect("serialises");
        assert!(text.contains(r#""op":"increment""#), "{text}");
    }

    #[test]
    fn round_trips_through_json() {
        let mut p = Profile::new("u-1", 0);
        apply(
            &mut p,
            "seen",
            change(Op::Max(Value::Timestamp(1_000)), 1_000, "e1"),
        );
        apply(&mut p, "f", change(Op::Set(Value::Float(1.5)), 1, "e2"));
        let text = serde_json::to_string(&p).expect("serialises");
        let back: Profile = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, p);
    }

    /// Every value type survives a round trip; the key order does not
    /// matter (PostgreSQL's `jsonb` reorders keys; another writer may put
    /// `value` first); unknown keys are skipped; a bad `type` is an error.
    #[test]
    fn attributes_decode_in_any_key_order() {
        let values = [
            Value::Text("a \"quoted\" é".into()),
            Value::Integer(-17),
            Value::Float(1.5),
            Value::Boolean(true),
            Value::Timestamp(1_795_989_600_123),
        ];
        for value in values {
            let attribute = Attribute {
                value: value.clone(),
                plugin: "p".into(),
                plugin_version: "1.0.0".into(),
                event_id: "e-1".into(),
                event_time_ms: 5,
                op: Some(OpKind::Max),
            };
            let text = serde_json::to_string(&attribute).expect("encodes");
            let back: Attribute = serde_json::from_str(&text).expect("decodes");
            assert_eq!(back, attribute, "{text}");

            let json = serde_json::to_value(&attribute).expect("encodes");
            let value_first = format!(
                r#"{{"extra":[1,{{"x":2}}],"value":{},"op":"max","event_time_ms":5,"plugin_version":"1.0.0","event_id":"e-1","plugin":"p","type":{}}}"#,
                json["value"], json["type"]
            );
            let back: Attribute = serde_json::from_str(&value_first).expect("decodes");
            assert_eq!(back, attribute, "{value_first}");
        }
        let bad_type = r#"{"type":"colour","value":"red","plugin":"p","plugin_version":"1","event_id":"e","event_time_ms":1}"#;
        assert!(serde_json::from_str::<Attribute>(bad_type).is_err());
        let bad_value = r#"{"type":"integer","value":"7","plugin":"p","plugin_version":"1","event_id":"e","event_time_ms":1}"#;
        assert!(serde_json::from_str::<Attribute>(bad_value).is_err());
        let no_plugin =
            r#"{"type":"integer","value":7,"plugin_version":"1","event_id":"e","event_time_ms":1}"#;
        let error = serde_json::from_str::<Attribute>(no_plugin).expect_err("refused");
        assert!(error.to_string().contains("plugin"), "{error}");
    }
}
