//! Privacy requests in the embedded store, as PostgreSQL's (migration
//! 0011): the requests, the suppressed keys by request, and their
//! generation under `meta`. Every write transaction is exclusive in redb,
//! so a request applied is between two batch commits, never inside one.

use std::collections::{BTreeSet, HashMap};

use anyhow::Context as _;
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde_json::Value;

use super::{ARCHIVE, EmbeddedStore, Inner, MERGES, META, PROFILES, read_chain, segments, updates};
use crate::activation::update::ProfileDeleted;
use crate::model::event::format_millis;
use crate::model::identity::{self, Identifier};
use crate::model::profile::Profile;
use crate::privacy::{
    Applied, Done, ExportedEvent, ExportedMerge, PrivacyRequest, PrivacyStore, Removed,
    RequestKind, Status, Suppressions, outcome, person_keys,
};
use crate::store::StoreResult;

/// Request id → JSON of a [`PrivacyRequest`].
pub(super) const REQUESTS: TableDefinition<u64, &str> = TableDefinition::new("privacy_requests");
/// Suppressed key → the request that suppressed it.
pub(super) const SUPPRESSIONS: TableDefinition<&str, u64> = TableDefinition::new("suppressions");
/// `meta` entry: the generation of the suppressions.
pub(super) const GENERATION: &str = "privacy.generation";
/// `meta` entry: the id of the last request.
const LAST_REQUEST: &str = "privacy.last_request";

/// The generation of the suppressions, as the transaction sees it.
pub(super) fn generation(txn: &WriteTransaction) -> anyhow::Result<i64> {
    let meta = txn.open_table(META)?;
    let stored = meta.get(GENERATION)?.map_or(0, |v| v.value());
    Ok(i64::try_from(stored).unwrap_or(i64::MAX))
}

impl Inner {
    fn submit(&self, mut request: PrivacyRequest) -> anyhow::Result<PrivacyRequest> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let id = meta.get(LAST_REQUEST)?.map_or(0, |v| v.value()) + 1;
            meta.insert(LAST_REQUEST, id)?;
            request.id = i64::try_from(id).context("too many privacy requests")?;
            let mut requests = txn.open_table(REQUESTS)?;
            requests.insert(id, serde_json::to_string(&request)?.as_str())?;
        }
        txn.commit()?;
        Ok(request)
    }

    fn request(&self, id: i64) -> anyhow::Result<Option<PrivacyRequest>> {
        let Ok(id) = u64::try_from(id) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        txn.open_table(REQUESTS)?
            .get(id)?
            .map(|json| {
                serde_json::from_str(json.value())
                    .with_context(|| format!("privacy request {id} is unreadable"))
            })
            .transpose()
    }

    fn apply(&self, id: i64, now_ms: i64) -> anyhow::Result<Option<Applied>> {
        let Ok(row) = u64::try_from(id) else {
            return Ok(None);
        };
        let txn = self.db.begin_write()?;
        let stored = txn
            .open_table(REQUESTS)?
            .get(row)?
            .map(|json| serde_json::from_str::<PrivacyRequest>(json.value()))
            .transpose()
            .with_context(|| format!("privacy request {id} is unreadable"))?;
        let Some(mut request) = stored.filter(|r| r.status == Status::Pending) else {
            return Ok(None);
        };
        if request.kind.suppresses() {
            let mut meta = txn.open_table(META)?;
            let next = meta.get(GENERATION)?.map_or(0, |v| v.value()) + 1;
            meta.insert(GENERATION, next)?;
        }
        let (profiles, keys) = person(&txn, &request.keys)?;
        let found = profiles.len();
        let mut newest_update = None;
        let done = match request.kind {
            RequestKind::Suppress => Done::Suppressed(suppress(&txn, &keys, id)?),
            RequestKind::Unsuppress => Done::Unsuppressed(unsuppress(&txn, &keys)?),
            RequestKind::Delete => {
                let suppressed = suppress(&txn, &keys, id)?;
                let (removed, rows) = delete(&txn, &keys)?;
                if self.updates.is_on() {
                    // The log keeps nothing of the person but that they
                    // were deleted.
                    updates::forget(&txn, &keys)?;
                    let messages = rows
                        .iter()
                        .map(|row| {
                            let message =
                                ProfileDeleted::encode(&row.user_id, row.revision, now_ms)?;
                            Ok((row.user_id.clone(), message))
                        })
                        .collect::<serde_json::Result<Vec<_>>>()?;
                    newest_update = updates::append(&txn, &messages, updates::KEEP)?;
                }
                Done::Deleted {
                    suppressed,
                    store: "embedded",
                    removed,
                }
            }
            RequestKind::Export => export(&txn, profiles, &keys)?,
        };
        let result = outcome(found, keys.len(), done);
        request.status = Status::Done;
        request.finished_at_ms = Some(now_ms);
        request.result = Some(result.clone());
        txn.open_table(REQUESTS)?
            .insert(row, serde_json::to_string(&request)?.as_str())?;
        txn.commit()?;
        self.updates.written(newest_update);
        // No cache to clear: the embedded store is the only copy.
        Ok(Some(Applied {
            result,
            cache_keys: Vec::new(),
        }))
    }

    fn unfinished(&self) -> anyhow::Result<Vec<i64>> {
        let txn = self.db.begin_read()?;
        let mut ids = Vec::new();
        for entry in txn.open_table(REQUESTS)?.iter()? {
            let (_, json) = entry?;
            let request: PrivacyRequest = serde_json::from_str(json.value())?;
            if request.status != Status::Done {
                ids.push(request.id);
            }
        }
        Ok(ids)
    }

    fn suppressions(&self) -> anyhow::Result<Suppressions> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let generation = meta.get(GENERATION)?.map_or(0, |v| v.value());
        let mut keys = std::collections::HashSet::new();
        for entry in txn.open_table(SUPPRESSIONS)?.iter()? {
            keys.insert(entry?.0.value().to_owned());
        }
        Ok(Suppressions {
            generation: i64::try_from(generation).unwrap_or(i64::MAX),
            keys,
        })
    }
}

/// As PostgreSQL's: the profiles `named` resolve to and the person's keys,
/// pointers that lead to them included.
fn person(
    txn: &WriteTransaction,
    named: &[String],
) -> anyhow::Result<(Vec<Profile>, BTreeSet<String>)> {
    let table = txn.open_table(PROFILES)?;
    let mut profiles: Vec<Profile> = Vec::new();
    let mut keys: BTreeSet<String> = named.iter().cloned().collect();
    for key in named {
        let mut rows = HashMap::new();
        read_chain(&table, key, &mut rows)?;
        if let Ok(Some(canonical)) = identity::resolve(&rows, key)
            && let Some(profile) = rows.get(canonical)
        {
            keys.extend(rows.keys().cloned());
            if !profiles.iter().any(|p| p.user_id == profile.user_id) {
                keys.extend(person_keys(Some(profile), &[]));
                profiles.push(profile.clone());
            }
        }
    }
    // The pointers that lead into the person: one pass over the table.
    let mut pointers: Vec<(String, String)> = Vec::new();
    for entry in table.iter()? {
        let (key, json) = entry?;
        let row: Profile = serde_json::from_str(json.value())
            .with_context(|| format!("the stored profile of {} is unreadable", key.value()))?;
        if let Some(target) = row.merged_into {
            pointers.push((key.value().to_owned(), target));
        }
    }
    loop {
        let before = keys.len();
        for (key, target) in &pointers {
            if keys.contains(target) {
                keys.insert(key.clone());
            }
        }
        if keys.len() == before {
            break;
        }
    }
    Ok((profiles, keys))
}

fn suppress(txn: &WriteTransaction, keys: &BTreeSet<String>, request: i64) -> anyhow::Result<u64> {
    let request = u64::try_from(request).context("a negative request id")?;
    let mut table = txn.open_table(SUPPRESSIONS)?;
    let mut added = 0;
    for key in keys {
        if table.get(key.as_str())?.is_none() {
            table.insert(key.as_str(), request)?;
            added += 1;
        }
    }
    Ok(added)
}

/// Lifts the suppression of `keys` and of the keys suppressed with them.
fn unsuppress(txn: &WriteTransaction, keys: &BTreeSet<String>) -> anyhow::Result<u64> {
    let mut table = txn.open_table(SUPPRESSIONS)?;
    let mut requests = BTreeSet::new();
    for key in keys {
        if let Some(request) = table.get(key.as_str())? {
            requests.insert(request.value());
        }
    }
    let mut gone: Vec<String> = Vec::new();
    for entry in table.iter()? {
        let (key, request) = entry?;
        if keys.contains(key.value()) || requests.contains(&request.value()) {
            gone.push(key.value().to_owned());
        }
    }
    for key in &gone {
        table.remove(key.as_str())?;
    }
    Ok(gone.len() as u64)
}

/// Deletes the person's rows, memberships, merges and archived events;
/// returns what it removed and the rows deleted.
fn delete(
    txn: &WriteTransaction,
    keys: &BTreeSet<String>,
) -> anyhow::Result<(Removed, Vec<Profile>)> {
    let (mut profiles, mut pointers) = (0, 0);
    let mut rows = Vec::new();
    {
        let mut table = txn.open_table(PROFILES)?;
        for key in keys {
            if let Some(json) = table.remove(key.as_str())? {
                let row: Profile = serde_json::from_str(json.value())?;
                match row.merged_into {
                    Some(_) => pointers += 1,
                    None => profiles += 1,
                }
                rows.push(row);
            }
        }
    }
    for row in &rows {
        segments::forget(txn, row)?;
    }
    let merges = {
        let mut table = txn.open_table(MERGES)?;
        let mut gone: Vec<(String, String)> = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            let (event_id, merged) = key.value();
            let (survivor, _, _) = value.value();
            if keys.contains(merged) || keys.contains(survivor) {
                gone.push((event_id.to_owned(), merged.to_owned()));
            }
        }
        for (event_id, merged) in &gone {
            table.remove((event_id.as_str(), merged.as_str()))?;
        }
        gone.len()
    };
    let events = {
        let mut table = txn.open_table(ARCHIVE)?;
        let mut gone: Vec<String> = Vec::new();
        for entry in table.iter()? {
            let (event_id, json) = entry?;
            if keys.contains(&archived_row(json.value())?.user_id) {
                gone.push(event_id.value().to_owned());
            }
        }
        for event_id in &gone {
            table.remove(event_id.as_str())?;
        }
        gone.len()
    };
    let removed = Removed {
        profiles,
        pointers,
        merges: merges as u64,
        archived_events: events as u64,
    };
    Ok((removed, rows))
}

/// The fields of an archive row an export and a delete read.
#[derive(serde::Deserialize)]
struct ArchivedRow {
    event_id: String,
    user_id: String,
    event_type: String,
    event_time_ms: i64,
    payload: String,
}

fn archived_row(row: &str) -> anyhow::Result<ArchivedRow> {
    serde_json::from_str(row).context("an archive row is unreadable")
}

fn export(
    txn: &WriteTransaction,
    profiles: Vec<Profile>,
    keys: &BTreeSet<String>,
) -> anyhow::Result<Done> {
    let mut merges = Vec::new();
    for entry in txn.open_table(MERGES)?.iter()? {
        let (key, value) = entry?;
        let (event_id, merged) = key.value();
        let (survivor, kind, at_ms) = value.value();
        if keys.contains(merged) || keys.contains(survivor) {
            merges.push(ExportedMerge {
                event_id: event_id.to_owned(),
                merged: merged.to_owned(),
                survivor: survivor.to_owned(),
                kind: kind.to_owned(),
                merged_at: format_millis(at_ms),
            });
        }
    }
    let mut archived_events = Vec::new();
    for entry in txn.open_table(ARCHIVE)?.iter()? {
        let (_, json) = entry?;
        let row = archived_row(json.value())?;
        if keys.contains(&row.user_id) {
            archived_events.push(ExportedEvent {
                payload: serde_json::from_str(&row.payload)
                    .context("an archived payload is unreadable")?,
                event_id: row.event_id,
                profile_key: row.user_id,
                event_type: row.event_type,
                event_time: format_millis(row.event_time_ms),
            });
        }
    }
    // RFC 3339 text of one width sorts as the times do.
    archived_events.sort_by(|a, b| (&a.event_time, &a.event_id).cmp(&(&b.event_time, &b.event_id)));
    let suppressions = txn.open_table(SUPPRESSIONS)?;
    let mut suppressed = false;
    for key in keys {
        suppressed |= suppressions.get(key.as_str())?.is_some();
    }
    Ok(Done::Exported {
        profiles,
        merges,
        archived_events,
        suppressed,
    })
}

#[async_trait]
impl PrivacyStore for EmbeddedStore {
    async fn submit(
        &self,
        kind: RequestKind,
        identifiers: &[Identifier],
        keys: &[String],
        actor: &str,
        now_ms: i64,
    ) -> StoreResult<PrivacyRequest> {
        let request = PrivacyRequest {
            id: 0,
            kind,
            identifiers: identifiers.to_vec(),
            keys: keys.to_vec(),
            status: Status::Pending,
            actor: actor.to_owned(),
            submitted_at_ms: now_ms,
            finished_at_ms: None,
            result: None,
        };
        self.run("storing a privacy request", |inner| inner.submit(request))
    }

    async fn request(&self, id: i64) -> StoreResult<Option<PrivacyRequest>> {
        self.run("reading a privacy request", |inner| inner.request(id))
    }

    async fn apply(&self, id: i64, now_ms: i64) -> StoreResult<Option<Applied>> {
        self.run("applying a privacy request", |inner| {
            inner.apply(id, now_ms)
        })
    }

    async fn finish(&self, _id: i64, _result: &Value, _now_ms: i64) -> StoreResult<()> {
        // `apply` finishes every request: nothing is left to a cache.
        Ok(())
    }

    async fn unfinished(&self) -> StoreResult<Vec<i64>> {
        self.run("reading the unfinished privacy requests", Inner::unfinished)
    }

    async fn suppressions(&self) -> StoreResult<Suppressions> {
        self.run("reading the suppressions", Inner::suppressions)
    }

    async fn generation(&self) -> StoreResult<i64> {
        self.run("reading the generation of the suppressions", |inner| {
            let txn = inner.db.begin_read()?;
            let stored = txn
                .open_table(META)?
                .get(GENERATION)?
                .map_or(0, |v| v.value());
            Ok(i64::try_from(stored).unwrap_or(i64::MAX))
        })
    }
}
