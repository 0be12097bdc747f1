//! The message of the `profile-updates` stream (contract §3a): a profile's
//! id, its new revision and the attributes the commit changed, with their
//! new absolute values and provenance. Keyed by the profile id, so one
//! profile's messages stay in order; a consumer drops repeats by
//! `(profile_id, revision)`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::event::format_millis;
use crate::model::merge::ProfileChanges;
use crate::model::profile::{Attribute, Profile};
use crate::segment::{MembershipChanges, SegmentSet};

/// The `type` of a message that a commit changed a profile.
pub const PROFILE_UPDATED: &str = "profile.updated";
/// The `type` of a message that a commit put a profile in a segment.
pub const SEGMENT_ENTERED: &str = "segment.entered";
/// The `type` of a message that a commit took a profile out of a segment.
pub const SEGMENT_EXITED: &str = "segment.exited";
/// The `type` of a message that a privacy request deleted a profile.
pub const PROFILE_DELETED: &str = "profile.deleted";

/// A profile deleted by a privacy request (contract §3a): whoever kept a
/// copy of it, or of the messages about it, deletes them. It leaves every
/// segment with it; no `segment.exited` is sent.
#[derive(Debug, Serialize)]
pub struct ProfileDeleted<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub profile_id: &'a str,
    /// One above the last revision the profile had.
    pub revision: i64,
    /// When it was deleted (RFC 3339).
    pub at: String,
}

impl<'a> ProfileDeleted<'a> {
    /// The message of deleting `profile_id`, whose last revision was
    /// `revision`, at `now_ms`.
    pub fn encode(profile_id: &'a str, revision: i64, now_ms: i64) -> serde_json::Result<String> {
        serde_json::to_string(&ProfileDeleted {
            kind: PROFILE_DELETED,
            profile_id,
            revision: revision + 1,
            at: format_millis(now_ms),
        })
    }
}

/// One message, as published.
#[derive(Debug, Serialize)]
pub struct ProfileUpdate<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The key the profile is stored under (the REST `profile_key`).
    pub profile_id: &'a str,
    pub revision: i64,
    /// When the commit changed it (RFC 3339).
    pub updated_at: String,
    /// Set when the profile was merged into another: the key of the
    /// profile that holds its attributes now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<&'a str>,
    /// The attributes the commit changed, as they are now.
    pub attributes: BTreeMap<&'a str, AttributeUpdate<'a>>,
    /// The segments the commit put the profile in and took it out of, by
    /// name; absent when none.
    #[serde(skip_serializing_if = "SegmentsChanged::is_empty")]
    pub segments: SegmentsChanged<'a>,
}

/// The memberships one commit changed, by segment name.
#[derive(Debug, Default, Serialize)]
pub struct SegmentsChanged<'a> {
    pub entered: Vec<&'a str>,
    pub exited: Vec<&'a str>,
}

impl SegmentsChanged<'_> {
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.exited.is_empty()
    }
}

/// A profile entering or leaving one segment: a message of its own, after
/// the `profile.updated` of the same commit, so a consumer of memberships
/// alone reads no attributes. Repeats share `(profile_id, revision, type,
/// segment)`.
#[derive(Debug, Serialize)]
pub struct SegmentUpdate<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub profile_id: &'a str,
    /// The revision of the commit that changed the membership.
    pub revision: i64,
    pub segment: &'a str,
    /// When the commit changed it (RFC 3339).
    pub at: String,
}

/// One changed attribute: its value and provenance, as the REST API shows
/// them (contract §5).
#[derive(Debug, Serialize)]
pub struct AttributeUpdate<'a> {
    pub value: serde_json::Value,
    pub plugin: &'a str,
    pub plugin_version: &'a str,
    pub event_id: &'a str,
    /// The time of the deciding event (RFC 3339).
    pub updated_at: String,
}

impl<'a> ProfileUpdate<'a> {
    /// The message of `profile` as a commit wrote it, having applied the
    /// batch's changes of the keys `sources` to it. `whole`: every
    /// attribute counts as changed (the commit merged another profile into
    /// it, or changed it by a link alone).
    pub fn new(
        profile: &'a Profile,
        sources: &[&String],
        changes: &'a ProfileChanges,
        whole: bool,
    ) -> Self {
        let mut attributes = BTreeMap::new();
        if profile.merged_into.is_none() {
            if whole || sources.is_empty() {
                for (name, attribute) in &profile.attributes {
                    attributes.insert(name.as_str(), AttributeUpdate::from(attribute));
                }
            } else {
                for (name, change) in sources.iter().filter_map(|key| changes.get(*key)).flatten() {
                    // An update that lost (a `set` of an older event, a
                    // `max` below the stored value) left the provenance of
                    // another event: the attribute did not change.
                    if let Some(attribute) = profile
                        .attributes
                        .get(name)
                        .filter(|attribute| attribute.event_id == change.provenance.event_id)
                    {
                        attributes.insert(name.as_str(), AttributeUpdate::from(attribute));
                    }
                }
            }
        }
        ProfileUpdate {
            kind: PROFILE_UPDATED,
            profile_id: &profile.user_id,
            revision: profile.revision,
            updated_at: format_millis(profile.updated_at_ms),
            merged_into: profile.merged_into.as_deref(),
            attributes,
            segments: SegmentsChanged::default(),
        }
    }

    /// The message of a change of `profile`'s memberships alone (time
    /// passing, a segment's backfill): it names no attributes.
    pub fn memberships_only(profile: &'a Profile) -> Self {
        ProfileUpdate {
            kind: PROFILE_UPDATED,
            profile_id: &profile.user_id,
            revision: profile.revision,
            updated_at: format_millis(profile.updated_at_ms),
            merged_into: profile.merged_into.as_deref(),
            attributes: BTreeMap::new(),
            segments: SegmentsChanged::default(),
        }
    }

    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// Every message of this commit of the profile, encoded: the
    /// `profile.updated`, naming the segments it entered and left
    /// (`memberships`, of the segments `set` defines), then one
    /// `segment.entered` / `segment.exited` for each of them.
    pub fn with_segments(
        mut self,
        memberships: &MembershipChanges,
        set: &'a SegmentSet,
    ) -> serde_json::Result<Vec<String>> {
        let names = |ids: &[u32]| -> Vec<&'a str> {
            ids.iter()
                .filter_map(|&id| set.by_id(id))
                .map(|segment| segment.name.as_str())
                .collect()
        };
        self.segments = SegmentsChanged {
            entered: names(&memberships.entered),
            exited: names(&memberships.exited),
        };
        let mut messages = vec![self.to_json()?];
        let changed = [
            (SEGMENT_ENTERED, &self.segments.entered),
            (SEGMENT_EXITED, &self.segments.exited),
        ];
        for (kind, segments) in changed {
            for segment in segments {
                let message = SegmentUpdate {
                    kind,
                    profile_id: self.profile_id,
                    revision: self.revision,
                    segment,
                    at: self.updated_at.clone(),
                };
                messages.push(serde_json::to_string(&message)?);
            }
        }
        Ok(messages)
    }
}

impl<'a> From<&'a Attribute> for AttributeUpdate<'a> {
    fn from(attribute: &'a Attribute) -> Self {
        AttributeUpdate {
            // Timestamps as RFC 3339 text, as REST shows them.
            value: attribute.value.to_json(),
            plugin: &attribute.plugin,
            plugin_version: &attribute.plugin_version,
            event_id: &attribute.event_id,
            updated_at: format_millis(attribute.event_time_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Value as Json, json};

    use super::*;
    use crate::model::merge::{AttributeChange, Provenance};
    use crate::model::update::{Op, Value};

    fn change(op: Op, event_id: &str, at: i64) -> AttributeChange {
        AttributeChange {
            op,
            provenance: Provenance {
                plugin: "p".into(),
                plugin_version: "1.0.0".into(),
                event_id: event_id.to_owned(),
                event_time_ms: at,
            },
        }
    }

    fn message(update: &ProfileUpdate<'_>) -> Json {
        serde_json::from_str(&update.to_json().expect("encodes")).expect("JSON")
    }

    #[test]
    fn a_message_holds_the_attributes_that_changed_as_they_are_now() {
        let key = "u-1".to_owned();
        let mut profile = Profile::new("u-1", 1_000);
        let first: ProfileChanges = BTreeMap::from([(
            key.clone(),
            BTreeMap::from([
                ("views".to_owned(), change(Op::Increment(2), "e1", 10)),
                (
                    "last".to_owned(),
                    change(Op::Max(Value::Timestamp(10)), "e1", 10),
                ),
            ]),
        )]);
        profile.apply(&first[&key], 1_000);
        // A later batch: one more view, and an older `last` that loses.
        let second: ProfileChanges = BTreeMap::from([(
            key.clone(),
            BTreeMap::from([
                ("views".to_owned(), change(Op::Increment(1), "e0", 5)),
                (
                    "last".to_owned(),
                    change(Op::Max(Value::Timestamp(5)), "e0", 5),
                ),
            ]),
        )]);
        profile.apply(&second[&key], 2_000);
        let sources = [&key];
        let update = message(&ProfileUpdate::new(&profile, &sources, &second, false));
        assert_eq!(update["type"], "profile.updated");
        assert_eq!(update["profile_id"], "u-1");
        assert_eq!(update["revision"], 2);
        assert_eq!(
            update["attributes"]["views"]["value"], 3,
            "the new absolute value"
        );
        assert_eq!(update["attributes"]["views"]["event_id"], "e0");
        assert!(update["attributes"].get("last").is_none(), "{update}");
        assert!(update.get("merged_into").is_none());

        // After a merge, every attribute is news.
        let whole = message(&ProfileUpdate::new(&profile, &sources, &second, true));
        assert_eq!(
            whole["attributes"]["last"]["value"],
            json!("1970-01-01T00:00:00.010Z")
        );
    }

    #[test]
    fn a_profile_merged_away_says_where_it_went() {
        let mut pointer = Profile::new("~anonymous_id:ab", 1_000);
        pointer.merged_into = Some("u-1".to_owned());
        pointer.revision = 4;
        let update = message(&ProfileUpdate::new(
            &pointer,
            &[],
            &ProfileChanges::new(),
            false,
        ));
        assert_eq!(update["merged_into"], "u-1");
        assert_eq!(update["revision"], 4);
        assert_eq!(update["attributes"], json!({}));
    }
}
