//! Attribute values and the updates plugins make to them, in the host's own
//! types (the generated bindings stay inside [`crate::plugin`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::event::format_millis;

/// The value of one profile attribute. Stored as
/// `{"type": "integer", "value": 17}` (timestamps as milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Value {
    Text(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// Milliseconds since the Unix epoch (UTC).
    Timestamp(i64),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Text(_) => "text",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Boolean(_) => "boolean",
            Value::Timestamp(_) => "timestamp",
        }
    }

    /// Orders two values for `max` and `min`. Values of different types do
    /// not compare, except integers with floats.
    pub fn compare(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
            (Value::Integer(a), Value::Integer(b)) => Some(a.cmp(b)),
            (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
            (Value::Boolean(a), Value::Boolean(b)) => Some(a.cmp(b)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Integer(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Integer(b)) => a.partial_cmp(&(*b as f64)),
            _ => None,
        }
    }

    /// The value as the REST API shows it: timestamps as RFC 3339 text.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Text(s) => json!(s),
            Value::Integer(i) => json!(i),
            Value::Float(f) => json!(f),
            Value::Boolean(b) => json!(b),
            Value::Timestamp(ms) => json!(format_millis(*ms)),
        }
    }
}

/// One operation on one attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Replace; of several sets, the latest event wins.
    Set(Value),
    /// Add a signed delta to an integer counter.
    Increment(i64),
    /// Keep the larger value.
    Max(Value),
    /// Keep the smaller value.
    Min(Value),
}

/// Which operation an attribute's value comes from: what a profile keeps of
/// its last change, so that two profiles can be joined (identity merges).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Set,
    Increment,
    Max,
    Min,
}

impl Op {
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Set(_) => OpKind::Set,
            Op::Increment(_) => OpKind::Increment,
            Op::Max(_) => OpKind::Max,
            Op::Min(_) => OpKind::Min,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Set(_) => "set",
            Op::Increment(_) => "increment",
            Op::Max(_) => "max",
            Op::Min(_) => "min",
        }
    }

    pub fn value(&self) -> Option<&Value> {
        match self {
            Op::Set(v) | Op::Max(v) | Op::Min(v) => Some(v),
            Op::Increment(_) => None,
        }
    }
}

/// A plugin's change to one attribute of the event's user. The name is
/// shared with the plugin's manifest, so an update costs no allocation of
/// its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub attribute: Arc<str>,
    pub op: Op,
}

impl Update {
    /// `{"op": "set", "attribute": "device_type", "type": "text", "value": "mobile"}`,
    /// or `{"op": "increment", "attribute": "page_views", "delta": 1}`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.op {
            Op::Increment(delta) => {
                json!({"op": "increment", "attribute": &*self.attribute, "delta": delta})
            }
            op => {
                let value = op.value().map(|v| (v.type_name(), v.to_json()));
                let (type_name, value) = value.unwrap_or(("", serde_json::Value::Null));
                json!({"op": op.name(), "attribute": &*self.attribute, "type": type_name, "value": value})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn compares_like_types_and_numbers_only() {
        assert_eq!(
            Value::Integer(2).compare(&Value::Float(1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            Value::Text("a".into()).compare(&Value::Text("b".into())),
            Some(Ordering::Less)
        );
        assert_eq!(Value::Timestamp(5).compare(&Value::Integer(5)), None);
        assert_eq!(Value::Float(f64::NAN).compare(&Value::Float(1.0)), None);
    }

    #[test]
    fn renders_updates_as_json() {
        let set = Update {
            attribute: "seen".into(),
            op: Op::Max(Value::Timestamp(0)),
        };
        assert_eq!(
            set.to_json(),
            json!({"op": "max", "attribute": "seen", "type": "timestamp", "value": "1970-01-01T00:00:00.000Z"})
        );
        let inc = Update {
            attribute: "n".into(),
            op: Op::Increment(-2),
        };
        assert_eq!(
            inc.to_json(),
            json!({"op": "increment", "attribute": "n", "delta": -2})
        );
    }
}
