//! Privacy requests (contract §5, docs/identity.md): suppress, unsuppress,
//! delete and export a person, named by any of their identifiers.
//!
//! - The API stores a request ([`PrivacyStore::submit`]) and answers `202`;
//!   [`Privacy::carry_out`] then applies it in one store transaction
//!   ([`PrivacyStore::apply`]), clears the hot cache of what a delete
//!   removed, and records the result ([`PrivacyStore::finish`]). A request
//!   left unfinished by a crash is carried out at the next start
//!   ([`Privacy::resume`]).
//! - A person is the profile each named identifier resolves to: its key,
//!   the home keys of all its identifiers and the keys of the profiles merged
//!   into it, and every pointer row leading there ([`person_keys`]).
//! - [`Suppressions`] are those keys. The lanes drop events carrying any of
//!   them before any plugin runs. Every change of the suppressions moves
//!   their generation; a lane commits only under the generation it filtered
//!   with (the store refuses the commit otherwise, see
//!   [`CommitOutcome::SuppressionsChanged`](crate::store::CommitOutcome::SuppressionsChanged)),
//!   so no event of a suppressed or deleted person is written after the
//!   request is applied, and a delete cannot be undone by a batch in flight.

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::event::Event;
use crate::model::identity::{Identifier, Rules};
use crate::model::profile::{Profile, now_ms};
use crate::store::{ProfileCache, StoreResult};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// Drop the person's events before any plugin, until unsuppressed.
    Suppress,
    /// Lift a suppression (also the one a delete leaves).
    Unsuppress,
    /// Remove the profile, its identifiers, merges, cached copies and
    /// archived events, and suppress the person.
    Delete,
    /// Everything stored about the person, as JSON.
    Export,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Suppress => "suppress",
            RequestKind::Unsuppress => "unsuppress",
            RequestKind::Delete => "delete",
            RequestKind::Export => "export",
        }
    }

    pub fn parse(text: &str) -> Option<RequestKind> {
        [
            RequestKind::Suppress,
            RequestKind::Unsuppress,
            RequestKind::Delete,
            RequestKind::Export,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// Whether it changes the suppressions (and so their generation).
    pub fn suppresses(self) -> bool {
        self != RequestKind::Export
    }
}

/// Where a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Stored, not applied yet.
    Pending,
    /// Applied in the store; the hot cache is still to be cleared.
    Applied,
    /// Finished: `result` says what was done.
    Done,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Applied => "applied",
            Status::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [Status::Pending, Status::Applied, Status::Done]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// A privacy request as stored: also its audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyRequest {
    pub id: i64,
    pub kind: RequestKind,
    /// As the caller named them (plain values of hashed types).
    pub identifiers: Vec<Identifier>,
    /// Their home keys, in the same order.
    pub keys: Vec<String>,
    pub status: Status,
    /// Who asked (the admin token's holder, as the audit names them).
    pub actor: String,
    pub submitted_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// What was done, once applied (see [`Applied::result`]).
    pub result: Option<serde_json::Value>,
}

/// What [`PrivacyStore::apply`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The result so far: without the cache's part.
    pub result: serde_json::Value,
    /// The keys whose cached copies are to go (a delete's rows).
    pub cache_keys: Vec<String>,
}

/// The keys of suppressed persons, with the generation that names this
/// state of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suppressions {
    /// Moves with every applied suppress, unsuppress and delete.
    pub generation: i64,
    pub keys: HashSet<String>,
}

impl Suppressions {
    /// Whether `event` carries an identifier of a suppressed person.
    pub fn drops(&self, rules: &Rules, event: &Event) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        if rules.is_plain(event) {
            return self.keys.contains(&event.user_id);
        }
        let (identifiers, _) = rules.identifiers(event);
        identifiers
            .iter()
            .any(|identifier| self.keys.contains(&identifier.home_key()))
    }
}

/// The keys of the person `profile` is (when found), named by `named`
/// (home keys): the profile's own key, its identifiers' home keys, the
/// keys of the profiles merged into it, and the named keys themselves. The
/// store adds the pointer rows that lead to any of them.
pub fn person_keys(profile: Option<&Profile>, named: &[String]) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = named.iter().cloned().collect();
    if let Some(profile) = profile {
        keys.insert(profile.user_id.clone());
        keys.extend(profile.identifiers().iter().map(Identifier::home_key));
        keys.extend(profile.merges.iter().map(|merge| merge.merged.clone()));
    }
    keys
}

/// What a delete removed from a store: rows of profiles, pointer rows,
/// merge log rows and archived events.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub profiles: u64,
    pub pointers: u64,
    pub merges: u64,
    pub archived_events: u64,
}

/// A merge log row, as an export shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedMerge {
    pub event_id: String,
    pub merged: String,
    pub survivor: String,
    pub kind: String,
    /// RFC 3339.
    pub merged_at: String,
}

/// An archived event, as an export shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedEvent {
    pub event_id: String,
    /// The key the archive files it under.
    pub profile_key: String,
    pub event_type: String,
    /// RFC 3339.
    pub event_time: String,
    /// As sent.
    pub payload: serde_json::Value,
}

/// What a request did in a store, for [`outcome`].
#[derive(Debug)]
pub enum Done {
    /// Keys newly suppressed.
    Suppressed(u64),
    /// Keys no longer suppressed.
    Unsuppressed(u64),
    Deleted {
        suppressed: u64,
        /// `postgres` or `embedded`.
        store: &'static str,
        removed: Removed,
    },
    Exported {
        profiles: Vec<Profile>,
        merges: Vec<ExportedMerge>,
        archived_events: Vec<ExportedEvent>,
        suppressed: bool,
    },
}

/// A request's result (contract §5): the profiles found, the keys covered,
/// and what was done.
pub fn outcome(profiles: usize, keys: usize, done: Done) -> serde_json::Value {
    let mut result = serde_json::json!({ "profiles": profiles, "keys": keys });
    match done {
        Done::Suppressed(count) => result["suppressed"] = count.into(),
        Done::Unsuppressed(count) => result["unsuppressed"] = count.into(),
        Done::Deleted {
            suppressed,
            store,
            removed,
        } => {
            result["suppressed"] = suppressed.into();
            result["removed"] = serde_json::json!({ store: removed });
        }
        Done::Exported {
            profiles,
            merges,
            archived_events,
            suppressed,
        } => {
            result["export"] = serde_json::json!({
                "profiles": profiles,
                "merges": merges,
                "archived_events": archived_events,
                "suppressed": suppressed,
            });
        }
    }
    result
}

/// The store side of privacy requests: PostgreSQL, or the embedded store.
#[async_trait]
pub trait PrivacyStore: Send + Sync + 'static {
    /// Stores a new request, [`Status::Pending`].
    async fn submit(
        &self,
        kind: RequestKind,
        identifiers: &[Identifier],
        keys: &[String],
        actor: &str,
        now_ms: i64,
    ) -> StoreResult<PrivacyRequest>;

    async fn request(&self, id: i64) -> StoreResult<Option<PrivacyRequest>>;

    /// Applies request `id` in one transaction with its audit record, if it
    /// is pending, and leaves it [`Status::Applied`] when `cache_keys` are
    /// left to clear, else [`Status::Done`]. For a request already applied:
    /// what it did. `None` when it is done or unknown.
    async fn apply(&self, id: i64, now_ms: i64) -> StoreResult<Option<Applied>>;

    /// Marks an applied request done, with its final result.
    async fn finish(&self, id: i64, result: &serde_json::Value, now_ms: i64) -> StoreResult<()>;

    /// The ids of the requests not done yet, oldest first.
    async fn unfinished(&self) -> StoreResult<Vec<i64>>;

    /// The suppressed keys, as of now.
    async fn suppressions(&self) -> StoreResult<Suppressions>;

    /// The generation of the suppressions, as of now: a lane reads it
    /// before each batch, and the suppressions again when it moved.
    async fn generation(&self) -> StoreResult<i64>;
}

/// How long a request is tried before it is left for the next start.
const PATIENCE: Duration = Duration::from_secs(60);

/// Carries out privacy requests: the store, and the hot cache to clear.
#[derive(Clone)]
pub struct Privacy {
    pub store: Arc<dyn PrivacyStore>,
    pub cache: Option<Arc<dyn ProfileCache>>,
}

impl Privacy {
    /// Stores a request and starts carrying it out in the background.
    pub async fn submit(
        &self,
        kind: RequestKind,
        identifiers: &[Identifier],
        keys: &[String],
        actor: &str,
    ) -> StoreResult<PrivacyRequest> {
        let request = self
            .store
            .submit(kind, identifiers, keys, actor, now_ms())
            .await?;
        tracing::info!(id = request.id, kind = kind.as_str(), %actor, "privacy request accepted");
        let this = self.clone();
        let id = request.id;
        tokio::spawn(async move { this.carry_out(id).await });
        Ok(request)
    }

    /// Carries out the requests a stop left unfinished.
    pub async fn resume(&self) {
        match self.store.unfinished().await {
            Ok(ids) => {
                for id in ids {
                    self.carry_out(id).await;
                }
            }
            Err(error) => tracing::warn!(
                "reading the unfinished privacy requests failed; they are tried at the next start: {:#}",
                error.0
            ),
        }
    }

    /// Applies request `id`, clears the cache, records the result; retried
    /// for [`PATIENCE`], then left for the next start (logged).
    pub async fn carry_out(&self, id: i64) {
        use crate::pipeline::retry::{Backoff, Until, retry};
        let done = retry(
            "carrying out a privacy request",
            Backoff::START_UP,
            Until::Elapsed(PATIENCE),
            || self.attempt(id),
        )
        .await;
        if let Err(error) = done {
            tracing::error!(
                id,
                "a privacy request is left unfinished; it is tried again at the next start: {error:?}"
            );
        }
    }

    async fn attempt(&self, id: i64) -> StoreResult<()> {
        let Some(applied) = self.store.apply(id, now_ms()).await? else {
            return Ok(());
        };
        let mut result = applied.result;
        if !applied.cache_keys.is_empty() {
            if let Some(cache) = &self.cache {
                let cleared = cache.forget(&applied.cache_keys).await?;
                result["removed"]["redis"] = serde_json::json!({ "keys": cleared });
            }
            self.store.finish(id, &result, now_ms()).await?;
        }
        tracing::info!(id, %result, "privacy request done");
        Ok(())
    }
}
