//! Segment definitions and members in the embedded store, as PostgreSQL's
//! (migration 0013): definitions by name, members by (segment id, profile
//! key), and the last id given under `meta`.

use anyhow::Context as _;
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{EmbeddedStore, Inner, META, PROFILES, updates};
use crate::model::profile::Profile;
use crate::segment::catalog::{DueRound, same_condition};
use crate::segment::{
    Backfill, BackfillPage, Definition, MembershipChanges, SegmentSet, SegmentStore, Stored,
};
use crate::store::{EncodedProfile, StoreResult};

/// Segment name → JSON of a [`Row`].
const SEGMENTS: TableDefinition<&str, &str> = TableDefinition::new("segments");
/// (segment id, profile key) → nothing: who is in each segment.
const SEGMENT_MEMBERS: TableDefinition<(u32, &str), ()> = TableDefinition::new("segment_members");
/// (due time in ms, profile key) → nothing: when the scheduler next
/// re-evaluates each profile (its `segments_due_ms`), as PostgreSQL's
/// `profiles.segments_due_ms`.
const DUE: TableDefinition<(i64, &str), ()> = TableDefinition::new("segments_due");
/// `meta` entry: the last segment id given.
const LAST_SEGMENT: &str = "segments.last_id";

/// A stored definition, less its name (the key).
#[derive(Serialize, Deserialize)]
struct Row {
    id: u32,
    condition: serde_json::Value,
    created_at_ms: i64,
    updated_at_ms: i64,
    #[serde(default)]
    emit_backfill: bool,
    #[serde(default)]
    backfill_after: Option<String>,
    #[serde(default)]
    backfill_profiles: u64,
    #[serde(default)]
    backfill_done: bool,
}

impl Row {
    fn definition(self, name: &str) -> Definition {
        Definition {
            id: self.id,
            name: name.to_owned(),
            condition: self.condition,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            backfill: Backfill {
                emit: self.emit_backfill,
                after: self.backfill_after,
                profiles: self.backfill_profiles,
                done: self.backfill_done,
            },
        }
    }
}

/// Stores the memberships one evaluation of `user_id` changed.
fn record(
    members: &mut redb::Table<'_, (u32, &'static str), ()>,
    user_id: &str,
    changes: &MembershipChanges,
) -> anyhow::Result<()> {
    for &id in &changes.entered {
        members.insert((id, user_id), ())?;
    }
    for &id in &changes.exited {
        members.remove((id, user_id))?;
    }
    Ok(())
}

/// Where a commit keeps the memberships it changes and the due times.
pub(super) struct Memberships<'t> {
    members: redb::Table<'t, (u32, &'static str), ()>,
    due: redb::Table<'t, (i64, &'static str), ()>,
}

impl<'t> Memberships<'t> {
    pub(super) fn open(txn: &'t redb::WriteTransaction) -> anyhow::Result<Self> {
        Ok(Memberships {
            members: txn.open_table(SEGMENT_MEMBERS)?,
            due: txn.open_table(DUE)?,
        })
    }

    /// Stores what one evaluation of `profile` at `now_ms` changed, and
    /// schedules its next re-evaluation ([`SegmentSet::schedule`]).
    pub(super) fn record(
        &mut self,
        set: &SegmentSet,
        profile: &mut Profile,
        changes: &MembershipChanges,
        now_ms: i64,
    ) -> anyhow::Result<()> {
        record(&mut self.members, &profile.user_id, changes)?;
        let old = profile.segments_due_ms;
        let due = set.schedule(profile, now_ms);
        if old != due {
            if let Some(old) = old {
                self.due.remove((old, profile.user_id.as_str()))?;
            }
            if let Some(due) = due {
                self.due.insert((due, profile.user_id.as_str()), ())?;
            }
        }
        Ok(())
    }
}

/// Takes a deleted profile out of every segment it was in and out of the
/// schedule.
pub(super) fn forget(txn: &redb::WriteTransaction, profile: &Profile) -> anyhow::Result<()> {
    let mut members = txn.open_table(SEGMENT_MEMBERS)?;
    for &id in &profile.segments {
        members.remove((id, profile.user_id.as_str()))?;
    }
    if let Some(due) = profile.segments_due_ms {
        txn.open_table(DUE)?
            .remove((due, profile.user_id.as_str()))?;
    }
    Ok(())
}

/// Removes every member of segment `id`.
fn drop_members(txn: &redb::WriteTransaction, id: u32) -> anyhow::Result<()> {
    let mut members = txn.open_table(SEGMENT_MEMBERS)?;
    members.retain_in((id, "")..=(id, MAX_KEY), |_, ()| false)?;
    Ok(())
}

/// Above every profile key (keys are text without U+10FFFF).
const MAX_KEY: &str = "\u{10FFFF}";

impl Inner {
    fn definitions(&self) -> anyhow::Result<Vec<Definition>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SEGMENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut definitions = Vec::new();
        for entry in table.iter()? {
            let (name, json) = entry?;
            let row: Row = serde_json::from_str(json.value())
                .with_context(|| format!("segment {} is unreadable", name.value()))?;
            definitions.push(row.definition(name.value()));
        }
        Ok(definitions)
    }

    fn put_definition(
        &self,
        name: &str,
        condition: &serde_json::Value,
        emit_backfill: bool,
        now_ms: i64,
    ) -> anyhow::Result<Stored> {
        let txn = self.db.begin_write()?;
        let stored = {
            let mut table = txn.open_table(SEGMENTS)?;
            let old: Option<Row> = match table.get(name)? {
                Some(json) => Some(
                    serde_json::from_str(json.value())
                        .with_context(|| format!("segment {name} is unreadable"))?,
                ),
                None => None,
            };
            match old {
                Some(old) if same_condition(&old.condition, condition) => {
                    return Ok(Stored::Unchanged(old.definition(name)));
                }
                old => {
                    let mut meta = txn.open_table(META)?;
                    let last = meta.get(LAST_SEGMENT)?.map_or(0, |v| v.value());
                    let next = last + 1;
                    meta.insert(LAST_SEGMENT, next)?;
                    let row = Row {
                        id: u32::try_from(next).context("segment ids ran out")?,
                        condition: condition.clone(),
                        created_at_ms: old.as_ref().map_or(now_ms, |old| old.created_at_ms),
                        updated_at_ms: now_ms,
                        emit_backfill,
                        backfill_after: None,
                        backfill_profiles: 0,
                        backfill_done: false,
                    };
                    table.insert(name, serde_json::to_string(&row)?.as_str())?;
                    match old {
                        Some(old) => {
                            drop_members(&txn, old.id)?;
                            Stored::Changed(row.definition(name))
                        }
                        None => Stored::Created(row.definition(name)),
                    }
                }
            }
        };
        txn.commit()?;
        Ok(stored)
    }

    fn delete_definition(&self, name: &str) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(SEGMENTS)?;
            let removed = table.remove(name)?.map(|json| json.value().to_owned());
            match removed {
                Some(json) => {
                    let row: Row = serde_json::from_str(&json)
                        .with_context(|| format!("segment {name} is unreadable"))?;
                    drop_members(&txn, row.id)?;
                    true
                }
                None => false,
            }
        };
        txn.commit()?;
        Ok(removed)
    }

    fn members(&self, id: u32, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<String>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SEGMENT_MEMBERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut members = Vec::new();
        for entry in table.range((id, after.unwrap_or(""))..=(id, MAX_KEY))? {
            let (key, _) = entry?;
            let (_, user_id) = key.value();
            if Some(user_id) == after {
                continue;
            }
            if members.len() == limit {
                break;
            }
            members.push(user_id.to_owned());
        }
        Ok(members)
    }

    /// One page of segment `id`'s backfill (the embedded store has one
    /// writer: no lock to take).
    fn backfill_page(
        &self,
        id: u32,
        now_ms: i64,
        limit: usize,
    ) -> anyhow::Result<Option<BackfillPage>> {
        let set = self.segments.load();
        let Some(index) = set.index_of(id) else {
            return Ok(None);
        };
        let txn = self.db.begin_write()?;
        let mut out = BackfillPage::default();
        let newest_update;
        {
            let mut segments = txn.open_table(SEGMENTS)?;
            let mut found = None;
            for entry in segments.iter()? {
                let (name, json) = entry?;
                let row: Row = serde_json::from_str(json.value())
                    .with_context(|| format!("segment {} is unreadable", name.value()))?;
                if row.id == id {
                    found = Some((name.value().to_owned(), row));
                    break;
                }
            }
            let Some((name, mut row)) = found.filter(|(_, row)| !row.backfill_done) else {
                return Ok(None);
            };
            // As PostgreSQL's: a backfill's changes are published only
            // when the segment asks for it.
            let emit = row.emit_backfill && self.updates.is_on();
            let mut messages = Vec::new();
            let mut memberships = Memberships::open(&txn)?;
            let mut profiles = txn.open_table(PROFILES)?;
            let start = row.backfill_after.clone().unwrap_or_default();
            let mut page: Vec<(String, String)> = Vec::with_capacity(limit);
            for entry in profiles.range(start.as_str()..)? {
                let (key, json) = entry?;
                if row.backfill_after.as_deref() == Some(key.value()) {
                    continue;
                }
                if page.len() == limit {
                    break;
                }
                page.push((key.value().to_owned(), json.value().to_owned()));
            }
            out.profiles = page.len();
            out.done = page.len() < limit;
            for (key, json) in &page {
                let mut profile: Profile = serde_json::from_str(json)
                    .with_context(|| format!("the stored profile of {key} is unreadable"))?;
                if profile.merged_into.is_some() {
                    continue;
                }
                let changes =
                    set.reevaluate(&[index], &profile.attributes, now_ms, &mut profile.segments);
                let due_before = profile.segments_due_ms;
                // `record` schedules the profile too.
                memberships.record(&set, &mut profile, &changes, now_ms)?;
                if changes.is_empty() && profile.segments_due_ms == due_before {
                    continue;
                }
                profile.revision += 1;
                profile.updated_at_ms = now_ms;
                let document = profile.to_json()?;
                profiles.insert(key.as_str(), document.as_str())?;
                if emit {
                    let encoded = updates::encode_memberships(&profile, &changes, &set)?;
                    messages.extend(encoded.into_iter().map(|m| (key.clone(), m)));
                }
                out.changed.push(EncodedProfile::new(&profile, document));
            }
            newest_update = updates::append(&txn, &messages, updates::KEEP)?;
            if let Some((last, _)) = page.last() {
                row.backfill_after = Some(last.clone());
            }
            row.backfill_profiles += page.len() as u64;
            row.backfill_done = out.done;
            segments.insert(name.as_str(), serde_json::to_string(&row)?.as_str())?;
        }
        txn.commit()?;
        self.updates.written(newest_update);
        Ok(Some(out))
    }

    fn reevaluate_due(&self, now_ms: i64, limit: usize) -> anyhow::Result<DueRound> {
        let set = self.segments.load();
        let txn = self.db.begin_write()?;
        let mut round = DueRound::default();
        let mut messages = Vec::new();
        {
            let mut memberships = Memberships::open(&txn)?;
            let entries: Vec<(i64, String)> = memberships
                .due
                .range((i64::MIN, "")..=(now_ms, MAX_KEY))?
                .take(limit)
                .map(|entry| {
                    entry.map(|(key, _)| {
                        let (at, user_id) = key.value();
                        (at, user_id.to_owned())
                    })
                })
                .collect::<Result<_, _>>()?;
            round.due = entries.len();
            let mut profiles = txn.open_table(PROFILES)?;
            for (at, key) in entries {
                let stored = profiles
                    .get(key.as_str())?
                    .map(|json| json.value().to_owned());
                let Some(json) = stored else {
                    // The profile is gone (a privacy request deleted it).
                    memberships.due.remove((at, key.as_str()))?;
                    continue;
                };
                let mut profile: Profile = serde_json::from_str(&json)
                    .with_context(|| format!("the stored profile of {key} is unreadable"))?;
                let changes = set.evaluate_due(&mut profile, now_ms);
                if !changes.is_empty() {
                    profile.revision += 1;
                    profile.updated_at_ms = now_ms;
                }
                memberships.record(&set, &mut profile, &changes, now_ms)?;
                let document = profile.to_json()?;
                profiles.insert(key.as_str(), document.as_str())?;
                if !changes.is_empty() {
                    if self.updates.is_on() {
                        let encoded = updates::encode_memberships(&profile, &changes, &set)?;
                        messages.extend(encoded.into_iter().map(|m| (key.clone(), m)));
                    }
                    round.changed.push(EncodedProfile::new(&profile, document));
                }
            }
        }
        let newest_update = updates::append(&txn, &messages, updates::KEEP)?;
        txn.commit()?;
        self.updates.written(newest_update);
        Ok(round)
    }

    fn member_count(&self, id: u32) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SEGMENT_MEMBERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(error) => return Err(error.into()),
        };
        let mut count = 0;
        for entry in table.range((id, "")..=(id, MAX_KEY))? {
            entry?;
            count += 1;
        }
        Ok(count)
    }
}

#[async_trait]
impl SegmentStore for EmbeddedStore {
    async fn definitions(&self) -> StoreResult<Vec<Definition>> {
        self.run("reading the segment definitions", Inner::definitions)
    }

    async fn put_definition(
        &self,
        name: &str,
        condition: &serde_json::Value,
        emit_backfill: bool,
        now_ms: i64,
    ) -> StoreResult<Stored> {
        self.run("storing a segment definition", |inner| {
            inner.put_definition(name, condition, emit_backfill, now_ms)
        })
    }

    async fn delete_definition(&self, name: &str) -> StoreResult<bool> {
        self.run("deleting a segment definition", |inner| {
            inner.delete_definition(name)
        })
    }

    async fn members(
        &self,
        id: u32,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.run("reading the members of a segment", |inner| {
            inner.members(id, after, limit)
        })
    }

    async fn member_count(&self, id: u32) -> StoreResult<u64> {
        self.run("counting the members of a segment", |inner| {
            inner.member_count(id)
        })
    }

    async fn backfill_page(
        &self,
        id: u32,
        now_ms: i64,
        limit: usize,
    ) -> StoreResult<Option<BackfillPage>> {
        self.run("computing a page of a segment backfill", |inner| {
            inner.backfill_page(id, now_ms, limit)
        })
    }

    async fn reevaluate_due(&self, now_ms: i64, limit: usize) -> StoreResult<DueRound> {
        self.run("re-evaluating the segments that came due", |inner| {
            inner.reevaluate_due(now_ms, limit)
        })
    }
}
