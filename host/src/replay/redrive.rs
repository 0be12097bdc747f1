//! Dead letters back: a plugin's current version run over the events an
//! earlier version failed on, its output added to the profiles once.
//!
//! The other plugins applied their output when the event first came, so
//! only the failed plugin runs. Its updates commute with everything else,
//! so they are added to the profiles as they are now, written over the
//! revision read; a profile the live pipeline changed meanwhile is refused
//! and its user goes round again. Each letter's outcome is recorded in the
//! transaction of the profile change
//! ([`PgStore::write_redriven`](crate::store::postgres::PgStore::write_redriven)):
//! an applied letter is never run again, and replays read it as the version
//! whose output the profile holds for that event ([`super::History`]).

use std::collections::BTreeSet;

use super::{At, Page, Replay};
use crate::model::event::Event;
use crate::model::identity::{ANONYMOUS_ID, home_key};
use crate::model::profile::{Profile, now_ms};
use crate::store::ProfileStore as _;
use crate::store::postgres::redrive::RedriveOutcome;

/// A dead-lettered event to run again, and where it was read from.
#[derive(Debug, Clone)]
pub struct Letter {
    pub event: Event,
    pub at: At,
}

/// What re-driving a page of letters did.
#[derive(Debug, Default)]
pub struct RedriveReport {
    /// Letters whose output is now in the profiles.
    pub applied: u64,
    /// Letters the version failed on again: kept, with the new error.
    pub failed: Vec<RedriveOutcome>,
    /// Letters whose events a backfill done for the user recomputed
    /// already (with the backfill's version): not run.
    pub covered: u64,
    /// Letters of events the enrich role had not committed when the page
    /// began (their batch may still run again): left for a later run.
    pub uncommitted: u64,
    /// Letters of suppressed persons (a privacy request): left alone.
    pub suppressed: u64,
    /// Profiles written.
    pub changed: u64,
    /// Users computed again because the live pipeline changed their
    /// profile meanwhile.
    pub retried: u64,
}

impl Replay {
    /// Runs `version` of `plugin` over `letters` (the dead letters of a page
    /// of users, none applied before), adds the output to the profiles, and
    /// records every letter's outcome with them. Each letter's output goes
    /// to the profile that the key its event is filed under in the archive
    /// belongs to now (docs/identity.md).
    pub async fn redrive_page(
        &mut self,
        plugin: &str,
        version: &str,
        letters: &[Letter],
    ) -> anyhow::Result<RedriveReport> {
        let mut report = RedriveReport::default();
        // Every event the enrich role had committed when this looked is in
        // the archive once it caught up; the others are left for a later
        // run.
        let committed = self.store.offsets(&self.group, &self.topic).await?;
        self.archive.wait_for(&committed).await?;
        let mut candidates = Vec::new();
        for letter in letters {
            for key in self.candidate_keys(&letter.event) {
                candidates.push((key, letter.at.partition, letter.at.offset));
            }
        }
        let filed = self.store.filed_keys(&self.topic, &candidates).await?;
        let mut pending: Vec<(&Letter, &str)> = Vec::new();
        for letter in letters {
            match filed.get(&(letter.at.partition, letter.at.offset)) {
                Some(key)
                    if committed
                        .get(&letter.at.partition)
                        .is_some_and(|&next| letter.at.offset < next) =>
                {
                    pending.push((letter, key.as_str()));
                }
                _ => report.uncommitted += 1,
            }
        }
        while !pending.is_empty() {
            let keys: BTreeSet<&str> = pending.iter().map(|(_, key)| *key).collect();
            let keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
            let cut = self.store.cut(&self.group, &self.topic, &keys).await?;
            let history = self.history(&cut).await?;
            for (partition, (running, _)) in history.running(plugin) {
                anyhow::ensure!(
                    running == version,
                    "{plugin} {running} replaced {version} on partition {partition} while the \
                     re-drive ran; what it did is kept: run it again to re-drive the rest \
                     with {running}"
                );
            }
            let mut page = Page::default();
            let mut covered = Vec::new();
            let mut suppressed = Vec::new();
            for &(letter, key) in &pending {
                let owner = cut.owner(key);
                if cut.suppressed.contains(owner) {
                    suppressed.push(owner);
                } else if history.backfill_at(plugin, key, letter.at, None).is_some() {
                    covered.push(owner);
                } else {
                    page.push(letter.event.clone(), letter.at, key.to_owned(), owner);
                }
            }
            let mut errors = std::collections::HashMap::new();
            let changes = self.replayer.replay_reporting(
                &page,
                &[plugin],
                |_, _| Some(version),
                |index, kind, detail| {
                    errors.insert(index, (kind.as_str().to_owned(), detail));
                },
            )?;
            let now = now_ms();
            let mut profiles: Vec<Profile> = changes
                .iter()
                .map(|(owner, changes)| {
                    let mut profile = cut
                        .profiles
                        .get(owner)
                        .cloned()
                        .unwrap_or_else(|| page.new_profile(owner, &self.rules, now));
                    profile.apply(changes, now);
                    profile
                })
                .collect();
            let outcomes: Vec<RedriveOutcome> = page
                .events
                .iter()
                .zip(&page.at)
                .enumerate()
                .map(|(index, (event, at))| RedriveOutcome {
                    partition: at.partition,
                    offset: at.offset,
                    plugin: plugin.to_owned(),
                    user_id: event.profile_key().to_owned(),
                    version: version.to_owned(),
                    error: errors.remove(&index),
                })
                .collect();
            self.retire_cached(&profiles).await?;
            let refused = self
                .store
                .write_redriven(&self.group, &self.topic, &mut profiles, &outcomes)
                .await?;
            self.refresh_cache(&profiles, &refused).await?;
            report.changed += (profiles.len() - refused.len()) as u64;
            for outcome in outcomes {
                if refused.contains(&outcome.user_id) {
                    continue;
                }
                match outcome.error {
                    None => report.applied += 1,
                    Some(_) => report.failed.push(outcome),
                }
            }
            report.covered += covered.iter().filter(|o| !refused.contains(**o)).count() as u64;
            report.suppressed +=
                suppressed.iter().filter(|o| !refused.contains(**o)).count() as u64;
            report.retried += refused.len() as u64;
            pending.retain(|(_, key)| refused.contains(cut.owner(key)));
        }
        self.counts.changed += report.changed;
        self.counts.retried += report.retried;
        Ok(report)
    }

    /// The keys the archive may have filed `event` under: the one the
    /// identity rules give now, and, should they have changed since, its
    /// `user_id` or `anonymous_id` as it came and the anonymous id's home
    /// key.
    fn candidate_keys(&self, event: &Event) -> BTreeSet<String> {
        let mut keyed = event.clone();
        self.rules.key_event(&mut keyed);
        let mut keys = BTreeSet::from([keyed.profile_key().to_owned(), event.user_id.clone()]);
        if let Some(anonymous) = &event.anonymous_id {
            keys.insert(home_key(ANONYMOUS_ID, anonymous));
        }
        keys
    }
}
