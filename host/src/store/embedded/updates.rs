//! The `profile-updates` stream of the embedded mode (contract §3a): the
//! messages PostgreSQL's commits write to their outbox, written here to the
//! table `profile_updates` in the write transaction of the change they
//! describe, and read by the REST stream ([`UpdateFeed`]).
//!
//! The table maps a sequence number (from 1) to (profile id, message JSON).
//! `meta`'s `updates.newest` is the newest number given, kept apart so that
//! numbers never repeat once old entries are gone. Each write drops the
//! entries that fall out of the newest [`KEEP`].

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::watch;

use super::{EmbeddedStore, Inner, META};
use crate::activation::feed::{StoredUpdate, UpdateFeed, UpdatePage};
use crate::activation::update::ProfileUpdate;
use crate::model::merge::ProfileChanges;
use crate::model::profile::Profile;
use crate::segment::{MembershipChanges, SegmentSet};
use crate::store::StoreResult;

pub(super) const UPDATES: TableDefinition<u64, (&str, &str)> =
    TableDefinition::new("profile_updates");
/// `meta` entry: the sequence number of the newest message written.
const NEWEST: &str = "updates.newest";
/// How many messages the log keeps: at the rate of a busy laptop, minutes
/// of history, enough for a reader to reconnect and resume.
pub const KEEP: u64 = 100_000;

/// The stream's state in a store: whether the commits write it, and the
/// newest sequence number, which readers wait on.
pub(super) struct Updates {
    on: AtomicBool,
    newest: watch::Sender<u64>,
}

impl Updates {
    /// Off, as the store opens; `newest` as stored.
    pub(super) fn new(newest: u64) -> Self {
        Updates {
            on: AtomicBool::new(false),
            newest: watch::Sender::new(newest),
        }
    }

    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Wakes the readers after a write transaction that wrote messages up
    /// to `newest` has committed.
    pub(super) fn written(&self, newest: Option<u64>) {
        if let Some(newest) = newest {
            self.newest.send_replace(newest);
        }
    }
}

/// The newest sequence number stored in `db` (0 before the first message).
pub(super) fn stored_newest(txn: &WriteTransaction) -> anyhow::Result<u64> {
    let meta = txn.open_table(META)?;
    Ok(meta.get(NEWEST)?.map_or(0, |v| v.value()))
}

/// The messages of a profile a commit wrote, as PostgreSQL's
/// `write_updates` encodes them: its `profile.updated`, with the
/// attributes the changes of the keys `sources` changed (all of them when
/// `whole`), then a `segment.*` message per membership it changed.
pub(super) fn encode(
    profile: &Profile,
    (sources, changes, whole): (&[&String], &ProfileChanges, bool),
    memberships: &MembershipChanges,
    set: &SegmentSet,
) -> anyhow::Result<Vec<String>> {
    ProfileUpdate::new(profile, sources, changes, whole)
        .with_segments(memberships, set)
        .with_context(|| format!("encoding the update of profile {}", profile.user_id))
}

/// The messages of a change of `profile`'s memberships alone (time
/// passing, a segment's backfill); none when no membership changed.
pub(super) fn encode_memberships(
    profile: &Profile,
    memberships: &MembershipChanges,
    set: &SegmentSet,
) -> anyhow::Result<Vec<String>> {
    if memberships.is_empty() {
        return Ok(Vec::new());
    }
    ProfileUpdate::memberships_only(profile)
        .with_segments(memberships, set)
        .with_context(|| format!("encoding the update of profile {}", profile.user_id))
}

/// Appends `messages` (profile id, JSON) in `txn` and drops the entries
/// older than the newest `keep`. Returns the newest sequence number, for
/// [`Updates::written`] once `txn` commits; `None` when there was nothing
/// to write.
pub(super) fn append(
    txn: &WriteTransaction,
    messages: &[(String, String)],
    keep: u64,
) -> anyhow::Result<Option<u64>> {
    if messages.is_empty() {
        return Ok(None);
    }
    let mut newest = stored_newest(txn)?;
    let mut table = txn.open_table(UPDATES)?;
    for (profile_id, message) in messages {
        newest += 1;
        table.insert(newest, (profile_id.as_str(), message.as_str()))?;
    }
    txn.open_table(META)?.insert(NEWEST, newest)?;
    // Only the entries that fell out are visited: the cost per message
    // written stays constant.
    let oldest_kept = newest.saturating_sub(keep) + 1;
    let oldest = table.first()?.map(|(sequence, _)| sequence.value());
    if oldest.is_some_and(|oldest| oldest < oldest_kept) {
        table.retain_in(..oldest_kept, |_, _| false)?;
    }
    Ok(Some(newest))
}

/// Drops every message of the profiles `keys` from the log (a privacy
/// `delete`): a scan of the log, which holds at most [`KEEP`] messages.
pub(super) fn forget(
    txn: &WriteTransaction,
    keys: &std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    let mut table = txn.open_table(UPDATES)?;
    table.retain(|_, (profile_id, _)| !keys.contains(profile_id))?;
    Ok(())
}

impl Inner {
    fn read_updates(&self, after: u64, limit: usize) -> anyhow::Result<UpdatePage> {
        let txn = self.db.begin_read()?;
        let newest = txn.open_table(META)?.get(NEWEST)?.map_or(0, |v| v.value());
        let table = txn.open_table(UPDATES)?;
        let oldest = table
            .first()?
            .map_or(newest + 1, |(sequence, _)| sequence.value());
        let mut messages = Vec::new();
        for entry in table.range(after.saturating_add(1)..)?.take(limit) {
            let (sequence, value) = entry?;
            let (profile_id, message) = value.value();
            messages.push(StoredUpdate {
                sequence: sequence.value(),
                profile_id: profile_id.to_owned(),
                message: message.to_owned(),
            });
        }
        Ok(UpdatePage {
            oldest,
            newest,
            messages,
        })
    }
}

impl EmbeddedStore {
    /// Makes the commits, the re-evaluations of due segments and the
    /// backfills of segments that emit write the `profile-updates` log
    /// (`activation.profile_updates`), which this store serves as an
    /// [`UpdateFeed`].
    pub fn publish_updates(&self) {
        self.inner.updates.on.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl UpdateFeed for EmbeddedStore {
    async fn read(&self, after: u64, limit: usize) -> StoreResult<UpdatePage> {
        self.run("reading the profile-updates log", |inner| {
            inner.read_updates(after, limit)
        })
    }

    fn newest(&self) -> watch::Receiver<u64> {
        self.inner.updates.newest.subscribe()
    }
}
