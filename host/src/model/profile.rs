//! A user's profile: attributes with provenance, and how a batch's merged
//! changes are applied to it.
//!
//! Every store applies changes through [`Profile::apply`], so PostgreSQL and
//! the embedded store agree by construction. A profile is stored and cached
//! as the JSON of [`Profile`] (serde); the REST shape of contract §5 is the
//! API's business (`api/profiles.rs`).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::merge::AttributeChange;
use crate::model::update::{Op, Value};

/// One attribute: its value and who last changed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribute {
    #[serde(flatten)]
    pub value: Value,
    pub plugin: String,
    pub plugin_version: String,
    pub event_id: String,
    /// Time of the deciding event, milliseconds since the Unix epoch.
    pub event_time_ms: i64,
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
}

impl Profile {
    pub fn new(user_id: impl Into<String>, now_ms: i64) -> Self {
        Self {
            user_id: user_id.into(),
            attributes: BTreeMap::new(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            revision: 0,
        }
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
            let attribute = |value: Value| Attribute {
                value,
                plugin: provenance.plugin.to_string(),
                plugin_version: provenance.plugin_version.to_string(),
                event_id: provenance.event_id.clone(),
                event_time_ms: provenance.event_time_ms,
            };
            let existing = self.attributes.get(name);
            let replacement = match (&change.op, existing) {
                (op, None) => Some(attribute(initial(op))),
                (Op::Set(value), Some(old)) => (provenance.event_time_ms >= old.event_time_ms)
                    .then(|| attribute(value.clone())),
                (Op::Increment(delta), Some(old)) => {
                    let base = match old.value {
                        Value::Integer(n) => n,
                        _ => 0,
                    };
                    Some(attribute(Value::Integer(base.saturating_add(*delta))))
                }
                (Op::Max(value), Some(old)) => {
                    wins(value, &old.value, Ordering::Greater).then(|| attribute(value.clone()))
                }
                (Op::Min(value), Some(old)) => {
                    wins(value, &old.value, Ordering::Less).then(|| attribute(value.clone()))
                }
            };
            if let Some(replacement) = replacement {
                self.attributes.insert(name.clone(), replacement);
            }
        }
        self.updated_at_ms = now_ms;
        self.revision += 1;
    }
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
}
