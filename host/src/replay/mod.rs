//! Replaying the archive: the profiles recomputed from the raw events.
//!
//! The enrich role commits each batch's profile changes with the offsets
//! they came from and, when the set of plugin versions changes, the
//! timeline of which version ran over which offsets ([`TimelineEntry`]).
//! The archive role keeps every event with its partition and offset. So a
//! profile is a function of the archive: run each of the user's archived
//! events below the committed offsets through the version that ran over it,
//! merge, apply. [`History`] says which version that is, the timeline
//! amended by the backfills ([`BackfillRecord`]), and [`Replayer`] does the
//! running. A profile merged from several identifiers is made of the
//! events filed under every key that leads to it ([`Cut::owners`]).
//!
//! Replays work page by page of users, without stopping the pipeline:
//!
//! 1. [`PgStore::cut`](crate::store::postgres::PgStore::cut) reads the page's profiles and the enrich offsets in
//!    one snapshot ([`Cut`]): each profile then holds exactly the changes of
//!    the records below those offsets;
//! 2. [`Archive::wait_for`] waits until the archive role has stored every
//!    record below them;
//! 3. the page's archived events below the offsets are replayed;
//! 4. what changes is written over the revision the cut read
//!    ([`PgStore::write_recomputed`](crate::store::postgres::PgStore::write_recomputed)); a profile the live pipeline changed
//!    meanwhile is refused, and its user goes through 1–4 again.
//!
//! `pulsehub backfill`, `reconcile` and `rebuild --profiles` (in the
//! binary) are built from these parts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sync_wrapper::SyncWrapper;

use crate::model::event::Event;
use crate::model::identity::Rules;
use crate::model::merge::{AttributeChange, Merger, ProfileChanges};
use crate::model::profile::Profile;
use crate::model::update::Value;
use crate::plugin::chain::MAX_EVENTS_PER_CALL;
use crate::plugin::{ErrorKind, HostLimits, Manifest, Plugin, PluginInstance, Runtime};
use crate::plugin_ops::registry::Registry;
use crate::store::TimelineEntry;
use crate::store::postgres::replay::ArchivedRecord;

/// Users per page: a cut, one read of the archive, one write.
pub const PAGE_USERS: i64 = 500;

/// How long a replay waits for the archive role to store the records below
/// a cut before it gives up.
pub const ARCHIVE_PATIENCE: Duration = Duration::from_secs(120);

/// A page's profiles, the enrich offsets, and what backfills and
/// re-drives did, read in one snapshot: the profiles hold exactly the
/// changes of the records below the offsets, as amended by those.
#[derive(Debug, Clone, Default)]
pub struct Cut {
    /// Partition to the next offset the enrich group will read.
    pub offsets: HashMap<i32, i64>,
    /// The page's stored profiles, by key (keys without one are absent).
    pub profiles: HashMap<String, Profile>,
    /// Every key the page's profiles are made of, to the key of its
    /// profile: the page's keys with their pointers followed, and every key
    /// whose pointers lead to those profiles. The archive files each event
    /// under its primary identifier's home key, so a profile is the
    /// archived events filed under the keys it owns (docs/identity.md).
    pub owners: HashMap<String, String>,
    pub backfills: Vec<Recorded>,
    /// The page's users' dead letters re-driven with success.
    pub redriven: Vec<Redriven>,
    /// The page's keys that are suppressed (a privacy request), and the
    /// profiles they own: replays leave them alone.
    pub suppressed: BTreeSet<String>,
}

impl Cut {
    /// The key of the profile `key` belongs to.
    pub fn owner<'a>(&'a self, key: &'a str) -> &'a str {
        self.owners.get(key).map_or(key, String::as_str)
    }

    /// The profiles `keys` belong to, in byte order.
    pub fn owners_of<'a>(&'a self, keys: &'a [String]) -> BTreeSet<&'a str> {
        keys.iter().map(|key| self.owner(key)).collect()
    }
}

/// One backfill of a plugin version, as recorded in `plugin_backfills`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRecord {
    pub id: i64,
    pub plugin: String,
    pub version: String,
    /// Below `until`, only events at or after this time count.
    pub since_ms: Option<i64>,
    /// The users it covers (`None`: all).
    pub users: Option<BTreeSet<String>>,
    /// Partition to the offset where the version's running stretch began:
    /// the backfill recomputes the records below it.
    pub until: HashMap<i32, i64>,
    pub finished: bool,
    /// The last user done, in byte order.
    pub after_user: Option<String>,
    /// Users after `after_user` written by an earlier round of the page
    /// under way (see [`crate::store::postgres::Step::Backfill`]).
    pub page_done: BTreeSet<String>,
}

impl BackfillRecord {
    fn covers(&self, user: &str) -> bool {
        self.users.as_ref().is_none_or(|users| users.contains(user))
    }

    /// Whether the profile of `user` holds this backfill's output.
    pub fn done_for(&self, user: &str) -> bool {
        self.covers(user)
            && (self.finished
                || self
                    .after_user
                    .as_deref()
                    .is_some_and(|after| user <= after)
                || self.page_done.contains(user))
    }
}

/// A backfill with how many users it has done.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub record: BackfillRecord,
    pub users_done: i64,
}

/// Where an archived event was read from, and when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub partition: i32,
    pub offset: i64,
    pub time_ms: i64,
}

/// Which plugin version's output a profile holds for each archived event:
/// the timeline of plugin versions, amended by the backfills.
#[derive(Debug, Clone, Default)]
pub struct History {
    stretches: Vec<TimelineEntry>,
    /// Oldest first.
    backfills: Vec<BackfillRecord>,
    /// Plugin to (partition, offset) to the version `dlq redrive` applied to
    /// that dead-lettered event.
    redriven: HashMap<String, HashMap<(i32, i64), String>>,
}

impl History {
    pub fn new(stretches: Vec<TimelineEntry>, backfills: Vec<BackfillRecord>) -> Self {
        Self {
            stretches,
            backfills,
            redriven: HashMap::new(),
        }
    }

    /// This history with the dead letters re-driven so far: plugin,
    /// partition, offset, and the version applied.
    pub fn with_redriven(mut self, redriven: Vec<Redriven>) -> Self {
        for r in redriven {
            self.redriven
                .entry(r.plugin)
                .or_default()
                .insert((r.partition, r.offset), r.version);
        }
        self
    }

    /// Every plugin named in it.
    pub fn plugins(&self) -> BTreeSet<&str> {
        self.stretches
            .iter()
            .map(|s| s.plugin.as_str())
            .chain(self.backfills.iter().map(|b| b.plugin.as_str()))
            .collect()
    }

    /// The open stretches of `plugin`: partition to (version, from offset).
    pub fn running(&self, plugin: &str) -> HashMap<i32, (&str, i64)> {
        self.stretches
            .iter()
            .filter(|s| s.plugin == plugin && s.until_offset.is_none())
            .map(|s| (s.partition, (s.version.as_str(), s.from_offset)))
            .collect()
    }

    /// The version of `plugin` whose output the profile of `user` holds for
    /// the event `at`, if any: that of the latest backfill done for the user
    /// whose range holds the event (none when the event is older than its
    /// `since`), else the one `dlq redrive` applied to it, else that of the
    /// stretch of the timeline that ran over it. `assume_done` counts that
    /// backfill as done for the user.
    pub fn version_at(
        &self,
        plugin: &str,
        user: &str,
        at: At,
        assume_done: Option<i64>,
    ) -> Option<&str> {
        if let Some(b) = self.backfill_at(plugin, user, at, assume_done) {
            let counted = b.since_ms.is_none_or(|since| at.time_ms >= since);
            return counted.then_some(b.version.as_str());
        }
        if let Some(version) = self
            .redriven
            .get(plugin)
            .and_then(|events| events.get(&(at.partition, at.offset)))
        {
            return Some(version);
        }
        self.stretches
            .iter()
            .find(|s| {
                s.plugin == plugin
                    && s.partition == at.partition
                    && s.from_offset <= at.offset
                    && s.until_offset.is_none_or(|until| at.offset < until)
            })
            .map(|s| s.version.as_str())
    }

    /// The latest backfill of `plugin` done for `user` (or `assume_done`)
    /// that recomputed the event `at`.
    pub fn backfill_at(
        &self,
        plugin: &str,
        user: &str,
        at: At,
        assume_done: Option<i64>,
    ) -> Option<&BackfillRecord> {
        self.backfills.iter().rev().find(|b| {
            b.plugin == plugin
                && (b.done_for(user) || (assume_done == Some(b.id) && b.covers(user)))
                && b.until
                    .get(&at.partition)
                    .is_some_and(|&until| at.offset < until)
        })
    }
}

/// A dead-lettered event `dlq redrive` ran a plugin version over, with
/// success: the profile holds that version's output for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redriven {
    pub plugin: String,
    pub partition: i32,
    pub offset: i64,
    pub version: String,
}

/// (plugin, version) to the registry's id of that upload.
type VersionIds = HashMap<(String, String), String>;

/// The plugin versions of the registry, loaded on first use.
pub struct Versions {
    runtime: Runtime,
    registry: Registry,
    /// The newest upload of each version.
    ids: VersionIds,
    /// Plugin to the version that runs (or ran, when quarantined).
    current: HashMap<String, String>,
    loaded: HashMap<(String, String), Arc<Plugin>>,
}

impl Versions {
    /// Opens the registry the enrich role keeps (`plugins.registry_dir`).
    pub fn open(registry: Registry) -> anyhow::Result<Self> {
        let runtime = Runtime::with_cache(HostLimits::default(), &registry.compiled_dir())?;
        let (ids, current) = Self::read(&registry)?;
        Ok(Self {
            runtime,
            registry,
            ids,
            current,
            loaded: HashMap::new(),
        })
    }

    /// The registry's versions: (plugin, version) to id, and each
    /// plugin's current version.
    fn read(registry: &Registry) -> anyhow::Result<(VersionIds, HashMap<String, String>)> {
        let mut ids = HashMap::new();
        let mut current = HashMap::new();
        for (name, record) in registry.load()? {
            current.insert(name.clone(), record.current.version.clone());
            // Newest first: the first id seen for a version is kept.
            for version in std::iter::once(&record.current).chain(&record.previous) {
                ids.entry((name.clone(), version.version.clone()))
                    .or_insert_with(|| version.id.clone());
            }
        }
        Ok((ids, current))
    }

    /// The version of `plugin` the registry says runs.
    pub fn current(&self, plugin: &str) -> Option<&str> {
        self.current.get(plugin).map(String::as_str)
    }

    /// [`Versions::current`], or an error naming the plugin.
    pub fn installed(&self, plugin: &str) -> anyhow::Result<String> {
        match self.current(plugin) {
            Some(version) => Ok(version.to_owned()),
            None => {
                bail!("plugin {plugin} is not installed (plugins.registry_dir has no record of it)")
            }
        }
    }

    /// `version` of `plugin`, compiled (from wasmtime's cache when the
    /// enrich role compiled it before).
    pub fn get(&mut self, plugin: &str, version: &str) -> anyhow::Result<Arc<Plugin>> {
        let key = (plugin.to_owned(), version.to_owned());
        if let Some(loaded) = self.loaded.get(&key) {
            return Ok(loaded.clone());
        }
        if !self.ids.contains_key(&key) {
            // Uploaded since the registry was read (a replay that runs
            // while the enrich role takes a new version).
            (self.ids, self.current) = Self::read(&self.registry)?;
        }
        let Some(id) = self.ids.get(&key) else {
            bail!(
                "version {version} of plugin {plugin} is not in the plugin registry \
                 (plugins.registry_dir): a replay needs every version it runs; versions \
                 older than plugins.keep_versions are deleted"
            );
        };
        let (manifest, component) = self.registry.get_version(id)?;
        let manifest: Manifest = manifest
            .parse()
            .with_context(|| format!("the stored manifest of {plugin} {version}"))?;
        let loaded = self
            .runtime
            .load(manifest, &component)
            .with_context(|| format!("loading {plugin} {version} from the registry"))?;
        self.loaded.insert(key, loaded.clone());
        Ok(loaded)
    }
}

/// Runs plugin versions over archived events, one instance per version.
pub struct Replayer {
    versions: Versions,
    /// A wasmtime store is not `Sync`, and a replay's futures hold shared
    /// borrows of it across awaits (the scheduled reconcile runs on the
    /// multi-threaded runtime): only `&mut` reaches the instances.
    instances: SyncWrapper<HashMap<(String, String), PluginInstance>>,
    /// Events a plugin failed on (the live pipeline dead-lettered them too,
    /// for a plugin that fails the same way on the same event).
    pub failures: u64,
}

/// A page of archived events, decoded, in partition and offset order.
#[derive(Debug, Default)]
pub struct Page {
    /// Each with the key of the profile it counts on as its
    /// [`Event::profile_key`].
    pub events: Vec<Event>,
    pub at: Vec<At>,
    /// The key each event is filed under in the archive.
    pub keys: Vec<String>,
    /// Archived events that no longer decode (none, unless the archive was
    /// edited): left out.
    pub undecodable: u64,
}

impl Page {
    /// A new profile at `key`, as the enrich path starts one
    /// ([`crate::model::identity::BatchIdentities::new_profile`]): with the
    /// identifier whose home `key` is, when that is not a user id (implied
    /// by the key), as the rules key an event filed under it.
    pub fn new_profile(&self, key: &str, rules: &Rules, now_ms: i64) -> Profile {
        let mut profile = Profile::new(key, now_ms);
        let identifier = self
            .keys
            .iter()
            .zip(&self.events)
            .filter(|(filed, _)| *filed == key)
            .find_map(|(_, event)| {
                let mut event = event.clone();
                event.profile_key = None;
                rules
                    .key_event(&mut event)
                    .key_identifier
                    .filter(|identifier| identifier.home_key() == key)
            });
        profile.identifiers.extend(identifier);
        profile
    }

    /// Adds `event`, read at `at` and filed under `key`, counting on the
    /// profile at `owner`.
    pub fn push(&mut self, mut event: Event, at: At, key: String, owner: &str) {
        event.profile_key = (owner != event.user_id).then(|| owner.to_owned());
        self.events.push(event);
        self.at.push(at);
        self.keys.push(key);
    }

    /// Decodes `records` (each with the key it is filed under); each event
    /// counts on the profile `cut` says its key belongs to.
    pub fn decode(topic: &str, records: Vec<(String, ArchivedRecord)>, cut: &Cut) -> Page {
        let mut page = Page::default();
        for (key, record) in records {
            let fallback = || format!("{topic}-{}-{}", record.partition, record.offset);
            match Event::from_json(record.payload.as_bytes(), fallback) {
                Ok(event) => {
                    let at = At {
                        partition: record.partition,
                        offset: record.offset,
                        time_ms: event.timestamp_ms,
                    };
                    let owner = cut.owner(&key).to_owned();
                    page.push(event, at, key, &owner);
                }
                Err(error) => {
                    tracing::warn!(
                        partition = record.partition,
                        offset = record.offset,
                        "an archived event does not decode: {error}"
                    );
                    page.undecodable += 1;
                }
            }
        }
        page
    }
}

impl Replayer {
    pub fn new(versions: Versions) -> Self {
        Self {
            versions,
            instances: SyncWrapper::new(HashMap::new()),
            failures: 0,
        }
    }

    pub fn versions(&mut self) -> &mut Versions {
        &mut self.versions
    }

    /// Replays `page` for `plugins`: each event goes through the version
    /// `choose(plugin, index)` names (none: the plugin skips it), if that
    /// version subscribes to its kind. Returns the merged changes per user,
    /// as one batch of all the page's events would give them.
    pub fn replay<'p, 'h>(
        &mut self,
        page: &Page,
        plugins: &[&'p str],
        choose: impl FnMut(&'p str, usize) -> Option<&'h str>,
    ) -> anyhow::Result<ProfileChanges> {
        self.replay_reporting(page, plugins, choose, |_, _, _| {})
    }

    /// [`Replayer::replay`], telling `failed` of each event a version
    /// failed on (its index, the kind of error and what it said); that
    /// event's updates from that version are left out.
    pub fn replay_reporting<'p, 'h>(
        &mut self,
        page: &Page,
        plugins: &[&'p str],
        mut choose: impl FnMut(&'p str, usize) -> Option<&'h str>,
        mut failed: impl FnMut(usize, ErrorKind, String),
    ) -> anyhow::Result<ProfileChanges> {
        // Borrowed keys: nothing is allocated per event.
        let mut work: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for &plugin in plugins {
            for index in 0..page.events.len() {
                if let Some(version) = choose(plugin, index) {
                    work.entry((plugin, version)).or_default().push(index);
                }
            }
        }
        let mut merger = Merger::new(&page.events);
        for ((name, version), indices) in work {
            let plugin = self.versions.get(name, version)?;
            let runtime = self.versions.runtime.clone();
            let instance = self
                .instances
                .get_mut()
                .entry((name.to_owned(), version.to_owned()))
                .or_insert_with(|| PluginInstance::new(runtime, plugin.clone()));
            let handle = merger.plugin(plugin.name(), &plugin.version);
            let selected: Vec<usize> = indices
                .into_iter()
                .filter(|&i| plugin.manifest.events.matches(&page.events[i].kind))
                .collect();
            for chunk in selected.chunks(MAX_EVENTS_PER_CALL) {
                let batch: Vec<&Event> = chunk.iter().map(|&i| &page.events[i]).collect();
                for (&index, result) in chunk.iter().zip(instance.enrich(&batch)) {
                    let merged = result
                        .map_err(|error| (error.kind, error.message))
                        .and_then(|updates| merger.add(handle, index, updates));
                    if let Err((kind, detail)) = merged {
                        self.failures += 1;
                        failed(index, kind, detail);
                    }
                }
            }
        }
        Ok(merger.finish())
    }
}

/// `profile`'s attributes other than `replaced`, with `changes` applied as
/// one commit at `now_ms`; `None` when no attribute's value changes (the
/// stored profile is right as it is). `stored` is the profile as the cut
/// read it, `None` for a key without one, where `fresh` makes one
/// ([`Page::new_profile`]).
pub fn recomputed(
    stored: Option<&Profile>,
    fresh: impl FnOnce() -> Profile,
    replaced: impl Fn(&str, &crate::model::profile::Attribute) -> bool,
    changes: Option<&BTreeMap<String, AttributeChange>>,
    now_ms: i64,
) -> Option<Profile> {
    let mut profile = stored.cloned().unwrap_or_else(fresh);
    profile
        .attributes
        .retain(|name, attribute| !replaced(name, attribute));
    match changes {
        Some(changes) => profile.apply(changes, now_ms),
        None => {
            profile.updated_at_ms = now_ms;
            profile.revision += 1;
        }
    }
    let before = stored.map(values).unwrap_or_default();
    (values(&profile) != before).then_some(profile)
}

/// A profile's attribute values, without their provenance.
pub fn values(profile: &Profile) -> BTreeMap<&str, &Value> {
    profile
        .attributes
        .iter()
        .map(|(name, attribute)| (name.as_str(), &attribute.value))
        .collect()
}

/// The archive role's progress, asked of the broker: the offsets its
/// consumer group committed, which it does once the records below are
/// stored.
pub struct Archive {
    pub brokers: String,
    pub group: String,
    pub topic: String,
    /// What the broker last said.
    known: HashMap<i32, i64>,
}

impl Archive {
    pub fn new(brokers: &str, group: &str, topic: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            group: group.to_owned(),
            topic: topic.to_owned(),
            known: HashMap::new(),
        }
    }

    /// Returns once the archive holds every record below `offsets`, or
    /// fails after [`ARCHIVE_PATIENCE`].
    pub async fn wait_for(&mut self, offsets: &HashMap<i32, i64>) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let behind = offsets
                .iter()
                .filter(|&(p, &next)| next > 0 && self.known.get(p).is_none_or(|&a| a < next))
                .map(|(&p, &next)| (p, next))
                .min();
            let Some((partition, next)) = behind else {
                return Ok(());
            };
            if started.elapsed() > ARCHIVE_PATIENCE {
                bail!(
                    "the archive (consumer group {}) has not stored the records of partition \
                     {partition} below offset {next}, which the profiles hold, after {} s \
                     (it is at {}): is the archive role running?",
                    self.group,
                    ARCHIVE_PATIENCE.as_secs(),
                    self.known.get(&partition).copied().unwrap_or(0)
                );
            }
            if !self.known.is_empty() {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let (brokers, group, topic) =
                (self.brokers.clone(), self.group.clone(), self.topic.clone());
            self.known = tokio::task::spawn_blocking(move || {
                crate::kafka::group_offsets(&brokers, &group, &topic)
            })
            .await
            .context("asking for the archive's offsets")??;
        }
    }
}

/// A replay's counts, for its summary (the plugin failures are the
/// [`Replayer`]'s).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub users: u64,
    pub events: u64,
    /// Profiles written.
    pub changed: u64,
    /// Users computed again because the live pipeline changed their
    /// profile during the page.
    pub retried: u64,
}

mod check;
mod redrive;
mod run;
mod schedule;

pub use check::{CheckReport, LISTED, Scope};
pub use redrive::{Letter, RedriveReport};
pub use run::{Discrepancy, PageReport, Repair, Replay};
pub use schedule::run_scheduled;

#[cfg(test)]
mod tests;
