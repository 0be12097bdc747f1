//! The defined segments, indexed by the attributes they read, and a
//! profile's memberships brought up to date after a change.
//!
//! A profile keeps its memberships as the ascending ids of its segments
//! (`Profile::segments`): a few bytes each in every stored document, found
//! by integer search while re-evaluating, and never confused with a
//! deleted segment of the same name, since ids are not reused.

use std::collections::HashMap;

use super::condition::{Attributes, Condition};
use crate::model::profile::Profile;
use crate::model::update::Value;

/// One defined segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub id: u32,
    pub name: String,
    pub condition: Condition,
}

/// The segments a commit evaluates, and which of them each attribute's
/// change can affect.
#[derive(Debug, Default)]
pub struct SegmentSet {
    /// Ascending by id.
    segments: Vec<Compiled>,
    /// Every attribute a segment reads, in slot order: a profile's values
    /// are looked up once, into slots, for all the segments.
    attributes: Vec<String>,
    /// Attribute → the indices of the segments that read it, ascending.
    readers: HashMap<String, Vec<usize>>,
    /// The indices of the segments that compare with `now`.
    time_relative: Vec<usize>,
}

#[derive(Debug)]
struct Compiled {
    segment: Segment,
    /// The condition over slots of [`SegmentSet::attributes`].
    condition: Condition<usize>,
}

/// What one profile's re-evaluation changed, by segment id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MembershipChanges {
    pub entered: Vec<u32>,
    pub exited: Vec<u32>,
}

impl MembershipChanges {
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.exited.is_empty()
    }

    /// What these changes and then `next` changed together: a segment
    /// entered and left again (or left and entered again) did not change.
    pub fn then(&self, next: &MembershipChanges) -> MembershipChanges {
        let combine = |first: &[u32], undone_by: &[u32], second: &[u32], undoing: &[u32]| {
            let mut ids: Vec<u32> = first
                .iter()
                .filter(|id| !undone_by.contains(id))
                .chain(second.iter().filter(|id| !undoing.contains(id)))
                .copied()
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        MembershipChanges {
            entered: combine(&self.entered, &next.exited, &next.entered, &self.exited),
            exited: combine(&self.exited, &next.entered, &next.exited, &self.entered),
        }
    }
}

impl SegmentSet {
    pub fn new(segments: impl IntoIterator<Item = Segment>) -> Self {
        let mut segments: Vec<Segment> = segments.into_iter().collect();
        segments.sort_by_key(|segment| segment.id);
        let mut attributes: Vec<String> = segments
            .iter()
            .flat_map(|segment| segment.condition.attributes())
            .cloned()
            .collect();
        attributes.sort();
        attributes.dedup();
        let mut readers: HashMap<String, Vec<usize>> = HashMap::new();
        let mut time_relative = Vec::new();
        let segments = segments
            .into_iter()
            .enumerate()
            .map(|(i, segment)| {
                for attribute in segment.condition.attributes() {
                    readers.entry(attribute.clone()).or_default().push(i);
                }
                if segment.condition.is_time_relative() {
                    time_relative.push(i);
                }
                let condition = segment.condition.map_attributes(&mut |name| {
                    attributes.binary_search(name).unwrap_or(usize::MAX)
                });
                Compiled { segment, condition }
            })
            .collect();
        SegmentSet {
            segments,
            attributes,
            readers,
            time_relative,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// The segment at `index` (as [`SegmentSet::affected`] names them).
    pub fn get(&self, index: usize) -> Option<&Segment> {
        self.segments.get(index).map(|compiled| &compiled.segment)
    }

    /// The segment with this id.
    pub fn by_id(&self, id: u32) -> Option<&Segment> {
        self.segments
            .binary_search_by_key(&id, |compiled| compiled.segment.id)
            .ok()
            .map(|i| &self.segments[i].segment)
    }

    /// The index of the segment with this id (as [`SegmentSet::reevaluate`]
    /// takes them).
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.segments
            .binary_search_by_key(&id, |compiled| compiled.segment.id)
            .ok()
    }

    /// The segments that read at least one of the changed attributes, by
    /// index, ascending and each once.
    pub fn affected<'a>(&self, changed: impl IntoIterator<Item = &'a str>) -> Vec<usize> {
        let mut hit = vec![0u64; self.segments.len().div_ceil(64)];
        for attribute in changed {
            for &i in self.readers.get(attribute).map_or(&[][..], Vec::as_slice) {
                hit[i / 64] |= 1 << (i % 64);
            }
        }
        let mut indices = Vec::new();
        for (word_index, &word) in hit.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                indices.push(word_index * 64 + word.trailing_zeros() as usize);
                word &= word - 1;
            }
        }
        indices
    }

    /// Every segment, by index: what a new profile or a full re-evaluation
    /// passes to [`SegmentSet::reevaluate`].
    pub fn all(&self) -> Vec<usize> {
        (0..self.segments.len()).collect()
    }

    /// The indices of the segments whose result can change with time alone.
    pub fn time_relative(&self) -> &[usize] {
        &self.time_relative
    }

    /// Re-evaluates the segments at `indices` (ascending, as
    /// [`SegmentSet::affected`] and [`SegmentSet::all`] give them) for a profile whose
    /// memberships (ascending segment ids) are `members_of`, updating them
    /// in place; returns the segments it entered and left. Memberships of
    /// other segments stay as they are.
    pub fn reevaluate(
        &self,
        indices: &[usize],
        attributes: &impl Attributes,
        now_ms: i64,
        members_of: &mut Vec<u32>,
    ) -> MembershipChanges {
        let slots = self.slots(attributes);
        let mut changes = MembershipChanges::default();
        // `indices` ascend, and so do their ids: one cursor walks the
        // memberships alongside (a search per segment costs more).
        let mut at = 0;
        for compiled in indices.iter().filter_map(|&i| self.segments.get(i)) {
            let id = compiled.segment.id;
            while members_of.get(at).is_some_and(|&member| member < id) {
                at += 1;
            }
            let member = members_of.get(at) == Some(&id);
            match (member, compiled.condition.matches(&slots[..], now_ms)) {
                (false, true) => {
                    members_of.insert(at, id);
                    changes.entered.push(id);
                }
                (true, false) => {
                    members_of.remove(at);
                    changes.exited.push(id);
                }
                _ => {}
            }
        }
        changes
    }

    /// Brings `profile`'s memberships up to date after a commit at `now_ms`
    /// changed the attributes `changed` of it (`None`: any of them, as a
    /// merge does), and returns what entered and left. A profile the commit
    /// created is evaluated against every segment (a condition such as
    /// `!exists(email)` holds for it with no attribute read changing); a
    /// pointer (a profile merged away) leaves every segment.
    pub fn evaluate<'a>(
        &self,
        profile: &mut Profile,
        changed: Option<impl IntoIterator<Item = &'a str>>,
        now_ms: i64,
    ) -> MembershipChanges {
        if profile.merged_into.is_some() {
            return MembershipChanges {
                entered: Vec::new(),
                exited: std::mem::take(&mut profile.segments),
            };
        }
        if self.segments.is_empty() {
            return MembershipChanges::default();
        }
        let indices = match changed {
            Some(changed) if profile.revision > 1 => self.affected(changed),
            _ => self.all(),
        };
        self.reevaluate(&indices, &profile.attributes, now_ms, &mut profile.segments)
    }

    /// When `profile`'s memberships next change with time alone, after
    /// `now_ms` (`None`: never, or a pointer).
    pub fn due(&self, profile: &Profile, now_ms: i64) -> Option<i64> {
        if profile.merged_into.is_some() || self.time_relative.is_empty() {
            return None;
        }
        self.due_after(&profile.attributes, now_ms)
    }

    /// Sets when the scheduler next re-evaluates `profile`
    /// ([`Profile::segments_due_ms`], [`SegmentSet::evaluate_due`]) after a
    /// change at `now_ms`, and returns it: when its memberships next change
    /// with time alone, or the time already set if that is earlier and
    /// still ahead. A visit before the true time changes nothing but the
    /// time, and costs less than moving it on every event: an activity
    /// window (`last_active_at > now - duration('7d')`) moves with each
    /// one, and a stored time that stays put keeps the profile's row
    /// update in place (PostgreSQL indexes the time).
    pub fn schedule(&self, profile: &mut Profile, now_ms: i64) -> Option<i64> {
        let due = self.due(profile, now_ms);
        let scheduled = match (profile.segments_due_ms, due) {
            (Some(set), Some(due)) if set > now_ms && set <= due => Some(set),
            (Some(set), None) if set > now_ms => Some(set),
            _ => due,
        };
        profile.segments_due_ms = scheduled;
        scheduled
    }

    /// Re-evaluates the time-relative segments for `profile` at `now_ms`,
    /// with no new event: what entered and left.
    pub fn evaluate_due(&self, profile: &mut Profile, now_ms: i64) -> MembershipChanges {
        if profile.merged_into.is_some() {
            return MembershipChanges::default();
        }
        self.reevaluate(
            &self.time_relative,
            &profile.attributes,
            now_ms,
            &mut profile.segments,
        )
    }

    /// The earliest instant after `now_ms` at which a segment's result for
    /// these attributes changes with time alone.
    pub fn due_after(&self, attributes: &impl Attributes, now_ms: i64) -> Option<i64> {
        let slots = self.slots(attributes);
        self.time_relative
            .iter()
            .filter_map(|&i| self.segments[i].condition.due_after(&slots[..], now_ms))
            .min()
    }

    fn slots<'v>(&self, attributes: &'v impl Attributes) -> Vec<Option<&'v Value>> {
        self.attributes
            .iter()
            .map(|name| attributes.value(name))
            .collect()
    }
}
