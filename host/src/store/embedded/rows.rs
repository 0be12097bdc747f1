//! The JSON rows of the dead-letter and archive tables.
//!
//! A dead letter is stored as
//!
//! ```json
//! {"topic": "inbox", "partition": 0, "offset": 17,
//!  "key": "u-1", "payload": "{\"id\": ...}",
//!  "event_id": "e-17", "reason": "plugin-error", "detail": "...",
//!  "plugin": "device-classifier", "plugin_version": "1.2.0", "error_kind": "trap"}
//! ```
//!
//! `key` and `payload` are text so a person can read them. Events are JSON,
//! so they almost always are exact UTF-8; when a payload (or key) is not,
//! the text is a lossy rendering and `payload_hex` (`key_hex`) holds the exact
//! bytes in lowercase hex, which [`LetterRow::into_letter`] returns. `plugin`,
//! `plugin_version` and `error_kind` are `null` for a `bad-event`.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::pipeline::dead_letter::{DeadLetter, DeadReason};
use crate::store::ArchivedEvent;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LetterRow {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_hex: Option<String>,
    payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
    event_id: Option<String>,
    /// [`DeadReason::code`].
    reason: String,
    detail: String,
    plugin: Option<String>,
    plugin_version: Option<String>,
    error_kind: Option<String>,
}

impl LetterRow {
    pub(super) fn from_letter(letter: &DeadLetter) -> LetterRow {
        let (key, key_hex) = match letter.key.as_deref().map(text_or_hex) {
            Some((text, hex)) => (Some(text), hex),
            None => (None, None),
        };
        let (payload, payload_hex) = text_or_hex(&letter.payload);
        let failure = letter.reason.plugin_failure();
        let plugin = failure.map(|(plugin, _, _)| plugin.to_owned());
        let plugin_version = failure.map(|(_, version, _)| version.to_owned());
        let error_kind = failure.map(|(_, _, kind)| kind.as_str().to_owned());
        LetterRow {
            topic: letter.topic.clone(),
            partition: letter.partition,
            offset: letter.offset,
            key,
            key_hex,
            payload,
            payload_hex,
            event_id: letter.event_id.clone(),
            reason: letter.reason.code().to_owned(),
            detail: letter.reason.detail().to_owned(),
            plugin,
            plugin_version,
            error_kind,
        }
    }

    pub(super) fn parse(json: &str) -> anyhow::Result<LetterRow> {
        Ok(serde_json::from_str(json)?)
    }

    pub(super) fn into_letter(self) -> anyhow::Result<DeadLetter> {
        let reason = match self.reason.as_str() {
            "bad-event" => DeadReason::BadEvent {
                detail: self.detail,
            },
            "plugin-error" => DeadReason::PluginError {
                plugin: self
                    .plugin
                    .context("a plugin-error letter without plugin")?,
                plugin_version: self
                    .plugin_version
                    .context("a plugin-error letter without plugin_version")?,
                kind: self
                    .error_kind
                    .context("a plugin-error letter without error_kind")?
                    .parse()?,
                detail: self.detail,
            },
            other => bail!("unknown reason `{other}`"),
        };
        let key = match self.key {
            Some(text) => Some(exact_bytes(text, self.key_hex.as_deref()).context("key_hex")?),
            None => None,
        };
        let payload =
            exact_bytes(self.payload, self.payload_hex.as_deref()).context("payload_hex")?;
        Ok(DeadLetter {
            topic: self.topic,
            partition: self.partition,
            offset: self.offset,
            key,
            payload,
            event_id: self.event_id,
            reason,
        })
    }
}

/// The archive row: the fields of [`ArchivedEvent`] under their own names,
/// `payload` being the original JSON text.
#[derive(Debug, Serialize)]
pub(super) struct EventRow<'a> {
    event_id: &'a str,
    user_id: &'a str,
    event_type: &'a str,
    event_time_ms: i64,
    topic: &'a str,
    partition: i32,
    offset: i64,
    payload: &'a str,
}

impl<'a> From<&'a ArchivedEvent> for EventRow<'a> {
    fn from(event: &'a ArchivedEvent) -> Self {
        EventRow {
            event_id: &event.event_id,
            user_id: &event.user_id,
            event_type: &event.event_type,
            event_time_ms: event.event_time_ms,
            topic: &event.topic,
            partition: event.partition,
            offset: event.offset,
            payload: &event.payload,
        }
    }
}

/// The bytes as text, plus their hex when the text is not exact.
fn text_or_hex(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(hex(bytes)),
        ),
    }
}

/// The inverse of [`text_or_hex`].
fn exact_bytes(text: String, hex: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match hex {
        Some(hex) => unhex(hex),
        None => Ok(text.into_bytes()),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16);
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            match pair {
                &[high, low] => digit(high)
                    .zip(digit(low))
                    .and_then(|(high, low)| u8::try_from(high << 4 | low).ok()),
                _ => None,
            }
            .with_context(|| format!("`{}` is not a hex byte", String::from_utf8_lossy(pair)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x7f, 0xff, 0xa5];
        assert_eq!(hex(&bytes), "007fffa5");
        assert_eq!(unhex("007fffa5").expect("valid hex"), bytes);
        for bad in ["0", "zz", "+f", "é0"] {
            assert!(unhex(bad).is_err(), "{bad}");
        }
    }
}
