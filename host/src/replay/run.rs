//! One page of a replay: backfilled, or checked and repaired.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::bail;

use serde::Serialize;

use super::Versions;
use super::{Archive, BackfillRecord, Counts, Cut, History, Page, Replayer, recomputed, values};
use crate::config::Config;
use crate::model::identity::Rules;
use crate::model::profile::{Profile, now_ms};
use crate::plugin_ops::registry::Registry;
use crate::store::postgres::PgStore;
use crate::store::postgres::replay::Step;
use crate::store::redis::RedisCache;
use crate::store::{ProfileCache as _, ProfileStore as _};

/// A replay's parts: where it reads and writes, and its plugin runner.
pub struct Replay {
    pub store: PgStore,
    /// The hot copies, refreshed with every profile a replay writes.
    pub cache: Option<RedisCache>,
    pub archive: Archive,
    pub replayer: Replayer,
    /// The enrich role's consumer group and topic.
    pub group: String,
    pub topic: String,
    /// The identity rules the enrich role keys events by.
    pub rules: Rules,
    pub counts: Counts,
}

/// What a check does about what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Reports only.
    No,
    /// Writes the recomputed values of the attributes found wrong
    /// (PostgreSQL, then Redis).
    Found,
}

/// An attribute whose stored value is not what the replay computes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Discrepancy {
    pub user: String,
    /// Where: `postgres` (against the replay) or `redis` (against
    /// PostgreSQL).
    pub store: &'static str,
    pub attribute: String,
    /// The stored value (`null`: none).
    pub stored: serde_json::Value,
    /// The value it should have (`null`: none).
    pub recomputed: serde_json::Value,
    /// Who set the stored value: plugin, version, event.
    pub provenance: serde_json::Value,
}

/// What checking a page found and did.
#[derive(Debug, Default)]
pub struct PageReport {
    pub checked: u64,
    pub discrepancies: Vec<Discrepancy>,
    /// Profiles written (PostgreSQL) or refreshed (Redis) by the repair.
    pub repaired: u64,
    /// Suppressed persons (a privacy request), left alone.
    pub suppressed: u64,
}

impl Replay {
    /// The parts of a replay, from the configuration of the services mode;
    /// `command` names what needs them in the errors. Applies no migration:
    /// a command does that first, a running process did at start-up.
    pub async fn open(config: &Config, command: &str) -> anyhow::Result<Replay> {
        let Some(database_url) = config.database.url.as_deref() else {
            bail!(
                "configuration key `database.url` (PULSEHUB_DATABASE_URL) is not set: {command} \
                 replays the archive the archive role keeps in PostgreSQL; the embedded mode \
                 keeps none"
            );
        };
        let Some(brokers) = config.kafka.brokers.as_deref() else {
            bail!(
                "configuration key `kafka.brokers` (PULSEHUB_KAFKA_BROKERS) is not set: {command} \
                 asks the broker how far the archive role has read"
            );
        };
        let mut store = PgStore::connect(database_url, 2)?;
        if config.activation.profile_updates {
            store.write_outbox();
        }
        let cache = match config.redis.url.as_deref() {
            Some(url) => {
                let ttl = Duration::from_secs(config.redis.ttl_secs);
                Some(RedisCache::connect(url, &config.redis.key_prefix, ttl).await?)
            }
            None => None,
        };
        let registry = Registry::open(&config.registry_dir())?;
        Ok(Replay {
            store,
            cache,
            archive: Archive::new(brokers, &config.kafka.archive_group, &config.kafka.topic),
            replayer: Replayer::new(Versions::open(registry)?),
            group: config.kafka.group.clone(),
            topic: config.kafka.topic.clone(),
            rules: Rules::new(&config.identity)?,
            counts: Counts::default(),
        })
    }

    /// Reads the cut of `keys`, waits for the archive to reach it, and
    /// decodes the archived events below it of the profiles they belong to.
    async fn load(&mut self, keys: &[String]) -> anyhow::Result<(Cut, Page)> {
        let cut = self.store.cut(&self.group, &self.topic, keys).await?;
        self.archive.wait_for(&cut.offsets).await?;
        let owned: Vec<&String> = cut.owners.keys().collect();
        let records = self
            .store
            .archived_events(&self.topic, &owned, &cut.offsets)
            .await?;
        let page = Page::decode(&self.topic, records, &cut);
        Ok((cut, page))
    }

    /// The history the profiles of `cut` reflect: the backfills and
    /// re-drives the cut read, and the timeline as it is now (a stretch
    /// opened after the cut starts at or above its offsets, so it changes
    /// nothing below them).
    pub async fn history(&self, cut: &Cut) -> anyhow::Result<History> {
        let timeline = self.store.timeline(&self.group, &self.topic).await?;
        let backfills = cut.backfills.iter().map(|b| b.record.clone()).collect();
        Ok(History::new(timeline, backfills).with_redriven(cut.redriven.clone()))
    }

    /// Backfills `record` over `users` (a page of the archive's keys, in
    /// byte order): for the profile each belongs to, the plugin's
    /// attributes (those `writes` names, and any its versions set) become
    /// what the version computes over the profile's archived events,
    /// written with the page's progress. Profiles the live pipeline changes
    /// meanwhile go round again.
    pub async fn backfill_page(
        &mut self,
        record: &BackfillRecord,
        writes: &BTreeSet<String>,
        users: &[String],
    ) -> anyhow::Result<()> {
        let Some(last) = users.last() else {
            return Ok(());
        };
        let mut pending = users.to_vec();
        let mut page_events = None;
        loop {
            let (cut, page) = self.load(&pending).await?;
            let history = self.history(&cut).await?;
            for (partition, (version, _)) in history.running(&record.plugin) {
                anyhow::ensure!(
                    version == record.version,
                    "{} {version} replaced {} on partition {partition} while the backfill ran; \
                     what it did is kept: backfill {version} now",
                    record.plugin,
                    record.version
                );
            }
            let events = *page_events.get_or_insert(page.events.len() as i64);
            let changes = self
                .replayer
                .replay(&page, &[&record.plugin], |plugin, i| {
                    history.version_at(plugin, &page.keys[i], page.at[i], Some(record.id))
                })?;
            let now = now_ms();
            let owned = |name: &str, attribute: &crate::model::profile::Attribute| {
                writes.contains(name) || attribute.plugin == record.plugin
            };
            // Suppressed persons are left alone.
            let mut profiles: Vec<Profile> = cut
                .owners_of(&pending)
                .into_iter()
                .filter(|key| !cut.suppressed.contains(*key))
                .filter_map(|key| {
                    let fresh = || page.new_profile(key, &self.rules, now);
                    recomputed(cut.profiles.get(key), fresh, owned, changes.get(key), now)
                })
                .collect();
            let round: Vec<(&str, &str)> = pending
                .iter()
                .map(|key| (key.as_str(), cut.owner(key)))
                .collect();
            let step = Step::Backfill {
                id: record.id,
                after_user: last,
                events,
                users: users.len() as i64,
                round: &round,
            };
            self.retire_cached(&profiles).await?;
            let refused = self
                .store
                .write_recomputed(&mut profiles, Some(step))
                .await?;
            self.refresh_cache(&profiles, &refused).await?;
            self.counts.changed += (profiles.len() - refused.len()) as u64;
            if refused.is_empty() {
                self.counts.users += users.len() as u64;
                self.counts.events += events as u64;
                return Ok(());
            }
            self.counts.retried += refused.len() as u64;
            pending.retain(|key| refused.contains(cut.owner(key)));
        }
    }

    /// Replays the profiles of `users` (a page of profile keys, in byte
    /// order) through the history and compares every attribute with
    /// PostgreSQL, and PostgreSQL with Redis;
    /// with [`Repair::Found`], writes the recomputed values. `rebuild`
    /// notes the page done (for `rebuild --profiles`) with its writes.
    pub async fn check_page(
        &mut self,
        users: &[String],
        repair: Repair,
        rebuild: bool,
    ) -> anyhow::Result<PageReport> {
        let mut report = PageReport {
            checked: users.len() as u64,
            ..PageReport::default()
        };
        let Some(last) = users.last() else {
            return Ok(report);
        };
        let mut found: BTreeMap<String, Vec<Discrepancy>> = BTreeMap::new();
        let mut current: BTreeMap<String, Profile> = BTreeMap::new();
        let mut pending = users.to_vec();
        loop {
            let (cut, page) = self.load(&pending).await?;
            let history = self.history(&cut).await?;
            let plugins: Vec<&str> = history.plugins().into_iter().collect();
            let changes = self.replayer.replay(&page, &plugins, |plugin, i| {
                history.version_at(plugin, &page.keys[i], page.at[i], None)
            })?;
            self.counts.events += page.events.len() as u64;
            let now = now_ms();
            let mut repaired = Vec::new();
            // A key merged into another profile since it was listed is
            // checked as that profile.
            for user in cut.owners_of(&pending) {
                let stored = cut.profiles.get(user);
                if cut.suppressed.contains(user) {
                    report.suppressed += 1;
                    continue;
                }
                let mut fresh = Profile::new(user, now);
                if let Some(changes) = changes.get(user) {
                    fresh.apply(changes, now);
                }
                let wrong = compare(user, "postgres", stored, &fresh);
                if !wrong.is_empty() && repair == Repair::Found {
                    let names: BTreeSet<&str> =
                        wrong.iter().map(|d| d.attribute.as_str()).collect();
                    let fixed = changes.get(user).map(|changes| {
                        changes
                            .iter()
                            .filter(|(name, _)| names.contains(name.as_str()))
                            .map(|(name, change)| (name.clone(), change.clone()))
                            .collect()
                    });
                    let replaced =
                        |name: &str, _: &crate::model::profile::Attribute| names.contains(name);
                    let fresh = || page.new_profile(user, &self.rules, now);
                    if let Some(profile) = recomputed(stored, fresh, replaced, fixed.as_ref(), now)
                    {
                        repaired.push(profile);
                    }
                }
                found.insert(user.to_owned(), wrong);
                if let Some(stored) = stored {
                    current.insert(user.to_owned(), stored.clone());
                }
            }
            let step = rebuild.then_some(Step::Rebuild { after_user: last });
            let refused = if repaired.is_empty() && step.is_none() {
                BTreeSet::new()
            } else {
                self.retire_cached(&repaired).await?;
                self.store.write_recomputed(&mut repaired, step).await?
            };
            for profile in &repaired {
                if !refused.contains(&profile.user_id) {
                    current.insert(profile.user_id.clone(), profile.clone());
                }
            }
            self.refresh_cache(&repaired, &refused).await?;
            let written = (repaired.len() - refused.len()) as u64;
            report.repaired += written;
            self.counts.changed += written;
            if refused.is_empty() {
                break;
            }
            self.counts.retried += refused.len() as u64;
            pending.retain(|key| refused.contains(cut.owner(key)));
        }
        if let Some(cache) = &self.cache {
            let wrong = self.check_cache(cache, &current, repair).await?;
            report.repaired += wrong.iter().map(|(_, fixed)| *fixed).sum::<u64>();
            for (discrepancies, _) in wrong {
                for d in discrepancies {
                    // Where PostgreSQL itself is wrong, the cache that
                    // copies it is not a second finding.
                    let entry = found.entry(d.user.clone()).or_default();
                    if !entry.iter().any(|pg| pg.attribute == d.attribute) {
                        entry.push(d);
                    }
                }
            }
        }
        self.counts.users += users.len() as u64;
        report.discrepancies = found.into_values().flatten().collect();
        Ok(report)
    }

    /// Compares each profile's Redis copy with PostgreSQL's. A copy of
    /// another revision may be a write-through in flight: such users are
    /// read again, from both, after a second. With [`Repair::Found`], a
    /// wrong copy is replaced by PostgreSQL's.
    async fn check_cache(
        &self,
        cache: &RedisCache,
        profiles: &BTreeMap<String, Profile>,
        repair: Repair,
    ) -> anyhow::Result<Vec<(Vec<Discrepancy>, u64)>> {
        let mut results = Vec::new();
        let mut moving = Vec::new();
        for (user, stored) in profiles {
            let Some(cached) = cache.get(user).await? else {
                continue;
            };
            if cached.revision == stored.revision {
                let wrong = compare(user, "redis", Some(&cached), stored);
                results.push(self.fix_cache(cache, stored, wrong, repair).await?);
            } else {
                moving.push(user.clone());
            }
        }
        if moving.is_empty() {
            return Ok(results);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for user in moving {
            let Some(stored) = self.store.profile(&user).await? else {
                continue;
            };
            let Some(cached) = cache.get(&user).await? else {
                continue;
            };
            if cached.revision < stored.revision {
                let mut wrong = compare(&user, "redis", Some(&cached), &stored);
                if wrong.is_empty() {
                    wrong.push(Discrepancy {
                        user: user.clone(),
                        store: "redis",
                        attribute: "(revision)".into(),
                        stored: cached.revision.into(),
                        recomputed: stored.revision.into(),
                        provenance: serde_json::Value::Null,
                    });
                }
                results.push(self.fix_cache(cache, &stored, wrong, repair).await?);
            } else if cached.revision == stored.revision {
                let wrong = compare(&user, "redis", Some(&cached), &stored);
                results.push(self.fix_cache(cache, &stored, wrong, repair).await?);
            }
        }
        Ok(results)
    }

    async fn fix_cache(
        &self,
        cache: &RedisCache,
        stored: &Profile,
        wrong: Vec<Discrepancy>,
        repair: Repair,
    ) -> anyhow::Result<(Vec<Discrepancy>, u64)> {
        if wrong.is_empty() || repair == Repair::No {
            return Ok((wrong, 0));
        }
        cache.put(std::slice::from_ref(stored)).await?;
        Ok((wrong, 1))
    }

    /// Tombstones the cached copies of `profiles` before they are written
    /// (see [`RedisCache::retire`]): killed after the commit, the command
    /// leaves no stale copy behind.
    pub(super) async fn retire_cached(&self, profiles: &[Profile]) -> anyhow::Result<()> {
        match &self.cache {
            Some(cache) if !profiles.is_empty() => Ok(cache.retire(profiles).await?),
            _ => Ok(()),
        }
    }

    /// Writes the profiles a replay wrote (all but `refused`) through to the
    /// cache; a newer copy there is kept.
    pub(super) async fn refresh_cache(
        &self,
        profiles: &[Profile],
        refused: &BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(());
        };
        let written: Vec<Profile> = profiles
            .iter()
            .filter(|p| !refused.contains(&p.user_id))
            .cloned()
            .collect();
        if !written.is_empty() {
            cache.put(&written).await?;
        }
        Ok(())
    }
}

/// The attributes whose values differ between `stored` (in `store`) and
/// `expected`.
fn compare(
    user: &str,
    store: &'static str,
    stored: Option<&Profile>,
    expected: &Profile,
) -> Vec<Discrepancy> {
    let empty = BTreeMap::new();
    let stored_values = stored.map(values).unwrap_or_default();
    let stored_attributes = stored.map_or(&empty, |p| &p.attributes);
    let expected_values = values(expected);
    let names: BTreeSet<&str> = stored_values
        .keys()
        .chain(expected_values.keys())
        .copied()
        .collect();
    names
        .into_iter()
        .filter(|name| stored_values.get(name) != expected_values.get(name))
        .map(|name| {
            let as_json = |value: Option<&&crate::model::update::Value>| {
                value.map_or(serde_json::Value::Null, |v| v.to_json())
            };
            let provenance = stored_attributes
                .get(name)
                .map_or(serde_json::Value::Null, |a| {
                    serde_json::json!({
                        "plugin": a.plugin,
                        "plugin_version": a.plugin_version,
                        "event_id": a.event_id,
                    })
                });
            Discrepancy {
                user: user.to_owned(),
                store,
                attribute: name.to_owned(),
                stored: as_json(stored_values.get(name)),
                recomputed: as_json(expected_values.get(name)),
                provenance,
            }
        })
        .collect()
}
