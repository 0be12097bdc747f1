//! The event as PulseHub sees it, and its decoding from the wire format
//! (contract §3: one JSON object per event).

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest `user_id`, `anonymous_id`, `previous_id` or `event_type`, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// One user action, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    /// The id the plugins see as `user-id`: the event's `user_id`, or its
    /// `anonymous_id` when it has none ([`Event::known_user_id`] tells).
    pub user_id: String,
    /// The `anonymous_id`, when the event carries both it and a `user_id`,
    /// or only it.
    pub anonymous_id: Option<String>,
    /// An `alias` event's earlier `user_id`.
    pub previous_id: Option<String>,
    /// Whether [`Event::user_id`] is a `user_id` (`false`: the event came
    /// with an `anonymous_id` only).
    pub known_user: bool,
    /// The key of the profile the event's updates are merged under, when it
    /// is not `user_id` (set by the enrich lane from the identity rules).
    pub profile_key: Option<String>,
    pub kind: String,
    /// Milliseconds since the Unix epoch (UTC).
    pub timestamp_ms: i64,
    pub user_agent: Option<String>,
    pub url: Option<String>,
    /// The `properties` object as JSON text, `{}` when absent.
    pub properties: String,
}

/// Why an event was refused: a bad event, never an infrastructure problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("not a JSON event object: {0}")]
    Json(String),
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

fn bad(field: &'static str, reason: impl Into<String>) -> EventError {
    EventError::Field {
        field,
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct WireEvent<'a> {
    #[serde(borrow)]
    event_id: Option<std::borrow::Cow<'a, str>>,
    user_id: Option<serde_json::Value>,
    anonymous_id: Option<serde_json::Value>,
    previous_id: Option<serde_json::Value>,
    event_type: Option<serde_json::Value>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    user_agent: Option<serde_json::Value>,
    url: Option<serde_json::Value>,
    #[serde(borrow)]
    properties: Option<&'a RawValue>,
}

impl Event {
    /// Decodes one event from its JSON text. `fallback_id` becomes the event's
    /// id when the producer sent none; it must be stable for the same event
    /// (for Kafka: topic, partition and offset).
    pub fn from_json(
        json: &[u8],
        fallback_id: impl FnOnce() -> String,
    ) -> Result<Event, EventError> {
        let wire: WireEvent<'_> = serde_json::from_slice(json).map_err(|e| {
            // serde names the private wire struct; say what the producer sent.
            let text = e.to_string().replace("struct WireEvent", "a JSON object");
            EventError::Json(text)
        })?;
        let id = match wire.event_id {
            Some(id) if !id.is_empty() => bounded("event_id", id.into_owned())?,
            Some(_) => return Err(bad("event_id", "must not be empty when present")),
            None => fallback_id(),
        };
        let user_id = optional_id("user_id", wire.user_id)?;
        let anonymous_id = optional_id("anonymous_id", wire.anonymous_id)?;
        let previous_id = optional_id("previous_id", wire.previous_id)?;
        let (user_id, known_user) = match (user_id, &anonymous_id) {
            (Some(user_id), _) => (user_id, true),
            (None, Some(anonymous_id)) => (anonymous_id.clone(), false),
            (None, None) => {
                return Err(bad("user_id", "is required when there is no anonymous_id"));
            }
        };
        let kind = required_text("event_type", wire.event_type)?;
        let timestamp_ms = timestamp(wire.timestamp)?;
        let user_agent = optional_text("user_agent", wire.user_agent)?;
        let url = optional_text("url", wire.url)?;
        let properties = match wire.properties {
            None => "{}".to_owned(),
            Some(raw) if raw.get().trim_start().starts_with('{') => raw.get().to_owned(),
            Some(raw) if raw.get() == "null" => "{}".to_owned(),
            Some(_) => return Err(bad("properties", "must be a JSON object")),
        };
        Ok(Event {
            id,
            user_id,
            anonymous_id,
            previous_id,
            known_user,
            profile_key: None,
            kind,
            timestamp_ms,
            user_agent,
            url,
            properties,
        })
    }
}

impl Event {
    /// The event's `user_id`, when it has one.
    pub fn known_user_id(&self) -> Option<&str> {
        self.known_user.then_some(self.user_id.as_str())
    }

    /// The key of the profile the event's updates go to before identity
    /// resolution: [`Event::profile_key`] when set, else `user_id`.
    pub fn profile_key(&self) -> &str {
        self.profile_key.as_deref().unwrap_or(&self.user_id)
    }
}

fn bounded(field: &'static str, text: String) -> Result<String, EventError> {
    // Ids become keys in PostgreSQL, Redis and Kafka; NUL fits none of them well.
    if text.contains('\0') {
        return Err(bad(field, "must not contain a NUL character"));
    }
    if text.len() > MAX_ID_BYTES {
        return Err(bad(
            field,
            format!("is {} bytes long; at most {MAX_ID_BYTES}", text.len()),
        ));
    }
    Ok(text)
}

fn required_text(
    field: &'static str,
    value: Option<serde_json::Value>,
) -> Result<String, EventError> {
    match value {
        Some(serde_json::Value::String(s)) if !s.is_empty() => bounded(field, s),
        Some(serde_json::Value::String(_)) => Err(bad(field, "must not be empty")),
        None | Some(serde_json::Value::Null) => Err(bad(field, "is required")),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

/// An optional id: absent or null, or a non-empty string as `user_id`.
fn optional_id(
    field: &'static str,
    value: Option<serde_json::Value>,
) -> Result<Option<String>, EventError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        value => required_text(field, value).map(Some),
    }
}

fn optional_text(
    field: &'static str,
    value: Option<serde_json::Value>,
) -> Result<Option<String>, EventError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(field, "must be a string when present")),
    }
}

fn timestamp(value: Option<&RawValue>) -> Result<i64, EventError> {
    let Some(raw) = value else {
        return Err(bad("timestamp", "is required"));
    };
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let text: std::borrow::Cow<'_, str> = serde_json::from_str(text)
                .map_err(|e| bad("timestamp", format!("is not readable text: {e}")))?;
            let at =
                time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| bad("timestamp", format!("{text:?} is not RFC 3339: {e}")))?;
            i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| bad("timestamp", format!("{text:?} is out of range")))
        }
        Some(b'-' | b'0'..=b'9') => whole_number(text).ok_or_else(|| {
            bad(
                "timestamp",
                format!("{text} is not whole milliseconds since the epoch"),
            )
        }),
        _ => Err(bad(
            "timestamp",
            "must be RFC 3339 text or integer milliseconds",
        )),
    }
}

/// The integer a JSON number's text spells, whatever the spelling
/// (`1700000000000`, `1700000000000.0`, `1.7e12`: JSON, and JSON Schema's
/// `integer`, make no difference between them), read in decimal so that
/// nothing is rounded; `None` when it is not whole or does not fit an i64.
fn whole_number(text: &str) -> Option<i64> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent.parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // The value is DIGITS × 10^scale.
    let scale = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let digits = whole.bytes().chain(fraction.bytes());
    let count = whole.len() + fraction.len();
    // Digits past `kept` stand after the decimal point. `unsigned_abs`:
    // an exponent of i64::MIN must not overflow a negation.
    let kept = if scale < 0 {
        count.saturating_sub(usize::try_from(scale.unsigned_abs()).unwrap_or(usize::MAX))
    } else {
        count
    };
    let mut value: i128 = 0;
    for (i, digit) in digits.enumerate() {
        let digit = i128::from(digit.checked_sub(b'0').filter(|d| *d <= 9)?);
        if i < kept {
            value = value.checked_mul(10)?.checked_add(digit)?;
        } else if digit != 0 {
            return None;
        }
    }
    for _ in 0..scale.max(0) {
        if value == 0 {
            break;
        }
        value = value.checked_mul(10)?;
    }
    i64::try_from(if negative { -value } else { value }).ok()
}

/// Formats milliseconds since the epoch as RFC 3339 text (UTC, milliseconds).
pub fn format_millis(ms: i64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_EXAMPLE: &str = r#"{
      "event_id": "0b9e2c56-8f7d-4c1e-9a43-2f1c7d3e5a10",
      "user_id": "u-42",
      "event_type": "page_view",
      "timestamp": "2026-11-29T22:00:00.123Z",
      "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
      "url": "https://shop.example/products/7",
      "properties": { "referrer": "https://search.example/" }
    }"#;

    fn decode(json: &str) -> Result<Event, EventError> {
        Event::from_json(json.as_bytes(), || "derived-1".to_owned())
    }

    #[test]
    fn decodes_the_contract_example() {
        let e = decode(CONTRACT_EXAMPLE).expect("valid");
        assert_eq!(e.id, "0b9e2c56-8f7d-4c1e-9a43-2f1c7d3e5a10");
        assert_eq!(e.user_id, "u-42");
        assert_eq!(e.kind, "page_view");
        assert_eq!(e.timestamp_ms, 1_795_989_600_123);
        assert_eq!(e.url.as_deref(), Some("https://shop.example/products/7"));
        assert_eq!(e.properties, r#"{ "referrer": "https://search.example/" }"#);
        assert_eq!(format_millis(e.timestamp_ms), "2026-11-29T22:00:00.123Z");
    }

    #[test]
    fn takes_integer_timestamps_and_derives_missing_ids() {
        let e = decode(r#"{"user_id":"u","event_type":"click","timestamp":1700000000000}"#)
            .expect("valid");
        assert_eq!(e.id, "derived-1");
        assert_eq!(e.timestamp_ms, 1_700_000_000_000);
        assert_eq!(e.properties, "{}");
        // Other spellings of the same whole number.
        for spelling in [
            "1700000000000.0",
            "1.7e12",
            "17e11",
            "1700000000000000e-3",
            "1.70E+12",
        ] {
            let json = format!(r#"{{"user_id":"u","event_type":"click","timestamp":{spelling}}}"#);
            assert_eq!(decode(&json).map(|e| e.timestamp_ms), Ok(1_700_000_000_000));
        }
        for not_whole in [
            "474.5",
            "1e-3",
            "1e19",
            "-9223372036854775809",
            "1700000000000.00001",
            "9007199254740993.5",
        ] {
            let json = format!(r#"{{"user_id":"u","event_type":"click","timestamp":{not_whole}}}"#);
            assert!(
                matches!(
                    decode(&json),
                    Err(EventError::Field {
                        field: "timestamp",
                        ..
                    })
                ),
                "{not_whole} is refused"
            );
        }
        assert_eq!(e.user_agent, None);
        // Read in decimal: nothing is rounded through a float.
        assert_eq!(
            whole_number("9007199254740993.0"),
            Some(9_007_199_254_740_993)
        );
        assert_eq!(whole_number("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(whole_number("9223372036854775807"), Some(i64::MAX));
        assert_eq!(whole_number("9223372036854775808"), None);
        assert_eq!(whole_number("0.0e-5"), Some(0));
        assert_eq!(whole_number("12.30e1"), Some(123));
        assert_eq!(whole_number("12.34e1"), None);
        assert_eq!(whole_number("1e-9223372036854775808"), None);
        assert_eq!(whole_number("0e-9223372036854775808"), Some(0));
        assert_eq!(whole_number("1e9223372036854775807"), None);
    }

    #[test]
    fn takes_anonymous_and_previous_ids() {
        let e = decode(r#"{"anonymous_id":"a1","event_type":"page_view","timestamp":1}"#)
            .expect("an anonymous event is valid");
        assert_eq!((e.user_id.as_str(), e.known_user), ("a1", false));
        assert_eq!(e.known_user_id(), None);
        assert_eq!(e.anonymous_id.as_deref(), Some("a1"));
        let e = decode(
            r#"{"user_id":"u42","anonymous_id":"a1","event_type":"identify","timestamp":1}"#,
        )
        .expect("valid");
        assert_eq!(e.known_user_id(), Some("u42"));
        assert_eq!(e.anonymous_id.as_deref(), Some("a1"));
        let e =
            decode(r#"{"user_id":"u42","previous_id":"u41","event_type":"alias","timestamp":1}"#)
                .expect("valid");
        assert_eq!(e.previous_id.as_deref(), Some("u41"));
        assert_eq!(e.profile_key(), "u42");
        for (json, field) in [
            (r#"{"event_type":"c","timestamp":1}"#, "user_id"),
            (
                r#"{"user_id":null,"anonymous_id":null,"event_type":"c","timestamp":1}"#,
                "user_id",
            ),
            (
                r#"{"anonymous_id":"","event_type":"c","timestamp":1}"#,
                "anonymous_id",
            ),
            (
                r#"{"user_id":"u","anonymous_id":7,"event_type":"c","timestamp":1}"#,
                "anonymous_id",
            ),
            (
                r#"{"user_id":"u","previous_id":"","event_type":"c","timestamp":1}"#,
                "previous_id",
            ),
        ] {
            match decode(json) {
                Err(EventError::Field { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected a bad `{field}`, got {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_bad_events_naming_the_field() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let cases = [
            (r#"{"event_type":"c","timestamp":1}"#.to_owned(), "user_id"),
            (
                r#"{"user_id":"","event_type":"c","timestamp":1}"#.to_owned(),
                "user_id",
            ),
            (
                format!(r#"{{"user_id":"{long}","event_type":"c","timestamp":1}}"#),
                "user_id",
            ),
            (
                r#"{"user_id":"u","event_type":7,"timestamp":1}"#.to_owned(),
                "event_type",
            ),
            (
                r#"{"user_id":"u","event_type":"c"}"#.to_owned(),
                "timestamp",
            ),
            (
                r#"{"user_id":"u","event_type":"c","timestamp":"yesterday"}"#.to_owned(),
                "timestamp",
            ),
            (
                r#"{"user_id":"u","event_type":"c","timestamp":1.5}"#.to_owned(),
                "timestamp",
            ),
            (
                r#"{"user_id":"u","event_type":"c","timestamp":1,"url":3}"#.to_owned(),
                "url",
            ),
            (
                r#"{"user_id":"u","event_type":"c","timestamp":1,"properties":[1]}"#.to_owned(),
                "properties",
            ),
            (
                r#"{"event_id":"","user_id":"u","event_type":"c","timestamp":1}"#.to_owned(),
                "event_id",
            ),
        ];
        for (json, field) in cases {
            match decode(&json) {
                Err(EventError::Field { field: f, .. }) => assert_eq!(f, field, "{json}"),
                other => panic!("{json}: expected a bad `{field}`, got {other:?}"),
            }
        }
        assert!(matches!(decode("not json"), Err(EventError::Json(_))));
        assert!(matches!(decode("[1,2]"), Err(EventError::Json(_))));
    }
}
