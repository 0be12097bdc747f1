//! Dead letters: events the enrich lane could not use, with where they came
//! from and why, kept byte for byte in `<topic>.dlq` (or the embedded
//! store's dead-letter table) before the offsets move past them.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::plugin::ErrorKind;
use crate::store::StoreResult;

/// Why an event could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadReason {
    /// The event broke the wire format (contract §3).
    BadEvent { detail: String },
    /// A plugin failed on this event.
    PluginError {
        plugin: String,
        plugin_version: String,
        kind: ErrorKind,
        detail: String,
    },
}

impl DeadReason {
    /// `bad-event` or `plugin-error`: the `pulsehub-reason` header.
    pub fn code(&self) -> &'static str {
        match self {
            DeadReason::BadEvent { .. } => "bad-event",
            DeadReason::PluginError { .. } => "plugin-error",
        }
    }

    /// The plugin, its version and the kind of error, for a plugin failure.
    pub fn plugin_failure(&self) -> Option<(&str, &str, ErrorKind)> {
        match self {
            DeadReason::BadEvent { .. } => None,
            DeadReason::PluginError {
                plugin,
                plugin_version,
                kind,
                ..
            } => Some((plugin, plugin_version, *kind)),
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            DeadReason::BadEvent { detail } | DeadReason::PluginError { detail, .. } => detail,
        }
    }
}

/// A bad event with where it came from and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The original message value, byte for byte.
    pub payload: Vec<u8>,
    /// The event id when the event could be decoded.
    pub event_id: Option<String>,
    pub reason: DeadReason,
}

/// Where dead letters go: the `<topic>.dlq` topic, or the embedded store.
/// An error is infrastructure trouble: the lane retries and moves no offset.
#[async_trait]
pub trait DeadLetterSink: Send + Sync + 'static {
    /// Returns once every letter is durably stored (acknowledged).
    async fn send(&self, letters: &[DeadLetter]) -> StoreResult<()>;
}

/// Dead letters counted by why they died, with the first few of each kind:
/// what `pulsehub dlq list` prints.
#[derive(Debug, Default)]
pub struct LetterSummary {
    samples_per_group: usize,
    total: u64,
    /// Messages of the dead-letter topic that PulseHub did not write (no
    /// readable `pulsehub-*` headers).
    unreadable: u64,
    /// Letters `pulsehub dlq redrive` applied: out of the groups.
    redriven: u64,
    groups: BTreeMap<GroupKey, LetterGroup>,
}

/// `(reason, plugin, plugin version, error kind)`.
type GroupKey = (
    &'static str,
    Option<String>,
    Option<String>,
    Option<&'static str>,
);

/// The letters of one reason (and plugin version and error kind).
#[derive(Debug, Serialize)]
pub struct LetterGroup {
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
    pub count: u64,
    /// The first letters of the group, in the order read.
    pub samples: Vec<LetterSample>,
}

/// Where a dead letter came from, and why it died.
#[derive(Debug, Serialize)]
pub struct LetterSample {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub detail: String,
}

impl LetterSummary {
    pub fn new(samples_per_group: usize) -> Self {
        Self {
            samples_per_group,
            ..Self::default()
        }
    }

    pub fn add(&mut self, letter: DeadLetter) {
        self.total += 1;
        let failure = letter.reason.plugin_failure();
        let plugin = failure.map(|(plugin, _, _)| plugin.to_owned());
        let plugin_version = failure.map(|(_, version, _)| version.to_owned());
        let kind = failure.map(|(_, _, kind)| kind.as_str());
        let reason = letter.reason.code();
        let key = (reason, plugin.clone(), plugin_version.clone(), kind);
        let group = self.groups.entry(key).or_insert_with(|| LetterGroup {
            reason,
            plugin,
            plugin_version,
            error_kind: kind,
            count: 0,
            samples: Vec::new(),
        });
        group.count += 1;
        if group.samples.len() < self.samples_per_group {
            let detail = letter.reason.detail().to_owned();
            group.samples.push(LetterSample {
                topic: letter.topic,
                partition: letter.partition,
                offset: letter.offset,
                event_id: letter.event_id,
                detail,
            });
        }
    }

    /// A message PulseHub did not write.
    pub fn add_unreadable(&mut self) {
        self.total += 1;
        self.unreadable += 1;
    }

    /// A letter whose event a re-drive applied: it no longer needs anyone.
    pub fn add_redriven(&mut self) {
        self.total += 1;
        self.redriven += 1;
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "total": self.total,
            "unreadable": self.unreadable,
            "redriven": self.redriven,
            "groups": self.groups.values().collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn letter(offset: i64, reason: DeadReason) -> DeadLetter {
        DeadLetter {
            topic: "events".into(),
            partition: 1,
            offset,
            key: None,
            payload: b"{}".to_vec(),
            event_id: Some(format!("e{offset}")),
            reason,
        }
    }

    fn failed(plugin: &str, version: &str, kind: ErrorKind) -> DeadReason {
        DeadReason::PluginError {
            plugin: plugin.into(),
            plugin_version: version.into(),
            kind,
            detail: format!("{plugin} broke"),
        }
    }

    #[test]
    fn letters_are_counted_by_reason_plugin_version_and_kind_with_the_first_samples() {
        let mut summary = LetterSummary::new(2);
        summary.add(letter(1, failed("chaos", "0.1.0", ErrorKind::Trap)));
        summary.add(letter(
            2,
            DeadReason::BadEvent {
                detail: "not JSON".into(),
            },
        ));
        summary.add(letter(3, failed("chaos", "0.1.0", ErrorKind::Trap)));
        summary.add(letter(4, failed("chaos", "0.1.0", ErrorKind::Trap)));
        summary.add(letter(5, failed("chaos", "0.2.0", ErrorKind::Trap)));
        summary.add_unreadable();
        summary.add_redriven();
        let groups = summary.to_json()["groups"].clone();
        assert_eq!(summary.to_json()["total"], 7);
        assert_eq!(summary.to_json()["unreadable"], 1);
        assert_eq!(summary.to_json()["redriven"], 1);
        assert_eq!(
            groups,
            json!([
                {"reason": "bad-event", "count": 1, "samples": [
                    {"topic": "events", "partition": 1, "offset": 2, "event_id": "e2", "detail": "not JSON"}]},
                {"reason": "plugin-error", "plugin": "chaos", "plugin_version": "0.1.0",
                 "error_kind": "trap", "count": 3, "samples": [
                    {"topic": "events", "partition": 1, "offset": 1, "event_id": "e1", "detail": "chaos broke"},
                    {"topic": "events", "partition": 1, "offset": 3, "event_id": "e3", "detail": "chaos broke"}]},
                {"reason": "plugin-error", "plugin": "chaos", "plugin_version": "0.2.0",
                 "error_kind": "trap", "count": 1, "samples": [
                    {"topic": "events", "partition": 1, "offset": 5, "event_id": "e5", "detail": "chaos broke"}]},
            ])
        );
    }
}
