//! The JSON form of a condition: read with the JSON pointer of any fault,
//! and written back in the same form (what `GET /api/v1/segments/{name}`
//! shows).
//!
//! ```json
//! {"and": [{"gte": ["page_views", 5]},
//!          {"eq": ["device_type", "mobile"]},
//!          {"gt": ["last_active_at", {"now": "-7d"}]}]}
//! ```

use serde_json::{Map, Value as Json, json};

use super::condition::{Comparison, Condition, Operand};
use super::{DefinitionError, Position, duration};
use crate::model::event::format_millis;
use crate::model::update::Value;

/// Reads a condition's JSON tree.
pub fn parse(json: &Json) -> Result<Condition, DefinitionError> {
    read(json, &mut String::new())
}

impl Condition {
    /// The condition's JSON tree, as [`parse`] reads it.
    pub fn to_json(&self) -> Json {
        match self {
            Condition::And(all) => {
                json!({"and": all.iter().map(Condition::to_json).collect::<Vec<_>>()})
            }
            Condition::Or(any) => {
                json!({"or": any.iter().map(Condition::to_json).collect::<Vec<_>>()})
            }
            Condition::Not(inner) => json!({"not": inner.to_json()}),
            Condition::Compare {
                attribute,
                op,
                operand,
            } => {
                let operand = match operand {
                    Operand::Value(value) => value_to_json(value),
                    Operand::Now { offset_ms } => json!({"now": duration::format(*offset_ms)}),
                };
                json!({ op.name(): [attribute, operand] })
            }
            Condition::Exists { attribute } => json!({"exists": attribute}),
            Condition::In { attribute, values } => {
                json!({"in": [attribute, values.iter().map(value_to_json).collect::<Vec<_>>()]})
            }
            Condition::Contains { attribute, text } => json!({"contains": [attribute, text]}),
        }
    }
}

fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Timestamp(ms) => json!({"timestamp": format_millis(*ms)}),
        other => other.to_json(),
    }
}

/// Reads the condition at `path` (a JSON pointer, extended while reading
/// deeper and restored after).
fn read(json: &Json, path: &mut String) -> Result<Condition, DefinitionError> {
    let object = json.as_object().filter(|o| o.len() == 1).ok_or_else(|| {
        fault(
            path,
            "a condition is an object with one key: and, or, not, eq, ne, gt, gte, lt, lte, \
             exists, in or contains",
        )
    })?;
    let Some((key, body)) = object.iter().next() else {
        return Err(fault(path, "a condition needs one key"));
    };
    let depth = path.len();
    path.push('/');
    push_token(path, key);
    let condition = read_body(key, body, path)?;
    path.truncate(depth);
    Ok(condition)
}

fn read_body(key: &str, body: &Json, path: &mut String) -> Result<Condition, DefinitionError> {
    if let Some(op) = Comparison::ALL.into_iter().find(|op| op.name() == key) {
        let [attribute, operand] = pair(body, path)?;
        let attribute = attribute_name(attribute, path, 0)?;
        let operand = within(path, 1, |path| read_operand(operand, path))?;
        if matches!(operand, Operand::Now { .. }) && matches!(op, Comparison::Eq | Comparison::Ne) {
            return Err(fault(
                path,
                "a time relative to now is compared with gt, gte, lt or lte, not eq or ne",
            ));
        }
        return Ok(Condition::Compare {
            attribute,
            op,
            operand,
        });
    }
    match key {
        "and" | "or" => {
            let items = body
                .as_array()
                .filter(|items| !items.is_empty())
                .ok_or_else(|| {
                    fault(
                        path,
                        format!("`{key}` takes a non-empty list of conditions"),
                    )
                })?;
            let mut conditions = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                conditions.push(within(path, i, |path| read(item, path))?);
            }
            Ok(if key == "and" {
                Condition::And(conditions)
            } else {
                Condition::Or(conditions)
            })
        }
        "not" => Ok(Condition::Not(Box::new(read(body, path)?))),
        "exists" => Ok(Condition::Exists {
            attribute: name(body, path)?,
        }),
        "in" => {
            let [attribute, values] = pair(body, path)?;
            let attribute = attribute_name(attribute, path, 0)?;
            let values = within(path, 1, |path| {
                let items = values
                    .as_array()
                    .ok_or_else(|| fault(path, "`in` takes a list of values"))?;
                let mut read = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    read.push(within(path, i, |path| read_value(item, path))?);
                }
                Ok(read)
            })?;
            Ok(Condition::In { attribute, values })
        }
        "contains" => {
            let [attribute, text] = pair(body, path)?;
            let attribute = attribute_name(attribute, path, 0)?;
            let text = within(path, 1, |path| {
                text.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| fault(path, "`contains` looks for text"))
            })?;
            Ok(Condition::Contains { attribute, text })
        }
        other => Err(fault(
            path,
            format!(
                "unknown operator `{other}`: use and, or, not, eq, ne, gt, gte, lt, lte, exists, \
                 in or contains"
            ),
        )),
    }
}

/// The `[attribute, operand]` pair of a comparison, `in` and `contains`.
fn pair<'a>(body: &'a Json, path: &str) -> Result<[&'a Json; 2], DefinitionError> {
    match body.as_array().map(Vec::as_slice) {
        Some([attribute, operand]) => Ok([attribute, operand]),
        _ => Err(fault(path, "takes a pair: [attribute, value]")),
    }
}

fn attribute_name(json: &Json, path: &mut String, index: usize) -> Result<String, DefinitionError> {
    within(path, index, |path| name(json, path))
}

fn name(json: &Json, path: &str) -> Result<String, DefinitionError> {
    match json.as_str() {
        Some(name) if super::is_attribute_name(name) => Ok(name.to_owned()),
        Some(name) => Err(fault(
            path,
            format!(
                "{name:?} is not an attribute name (letters, digits and `_`, not starting with a digit)"
            ),
        )),
        None => Err(fault(path, "an attribute is named by a string")),
    }
}

fn read_operand(json: &Json, path: &mut String) -> Result<Operand, DefinitionError> {
    if let Some(offset) = json
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get("now"))
    {
        path.push_str("/now");
        let text = offset.as_str().ok_or_else(|| {
            fault(
                path,
                "`now` takes a signed duration such as \"-7d\" or \"+1h30m\"",
            )
        })?;
        let offset_ms = duration::parse(text).map_err(|e| fault(path, e))?;
        return Ok(Operand::Now { offset_ms });
    }
    read_value(json, path).map(Operand::Value)
}

fn read_value(json: &Json, path: &mut String) -> Result<Value, DefinitionError> {
    match json {
        Json::String(text) => Ok(Value::Text(text.clone())),
        Json::Bool(b) => Ok(Value::Boolean(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Value::Integer(i)),
            (None, Some(f)) => Ok(Value::Float(f)),
            (None, None) => Err(fault(path, format!("{n} is out of range"))),
        },
        Json::Object(object) => timestamp(object, path),
        Json::Null | Json::Array(_) => Err(fault(
            path,
            "a value is text, a number, true or false, {\"timestamp\": \"<RFC 3339>\"} or {\"now\": \"-7d\"}",
        )),
    }
}

fn timestamp(object: &Map<String, Json>, path: &mut String) -> Result<Value, DefinitionError> {
    match (object.len(), object.get("timestamp")) {
        (1, Some(Json::String(text))) => {
            path.push_str("/timestamp");
            super::timestamp(text)
                .map(Value::Timestamp)
                .map_err(|e| fault(path, e))
        }
        _ => Err(fault(
            path,
            "an object value is {\"timestamp\": \"<RFC 3339>\"} or {\"now\": \"-7d\"}",
        )),
    }
}

/// Runs `f` with `/index` appended to the path, restoring it on success.
fn within<T>(
    path: &mut String,
    index: usize,
    f: impl FnOnce(&mut String) -> Result<T, DefinitionError>,
) -> Result<T, DefinitionError> {
    let depth = path.len();
    path.push('/');
    path.push_str(&index.to_string());
    let read = f(path)?;
    path.truncate(depth);
    Ok(read)
}

/// Appends a key to a JSON pointer, escaped per RFC 6901.
fn push_token(path: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

fn fault(path: &str, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        message: message.into(),
        at: Position::Json {
            pointer: path.to_owned(),
        },
    }
}
