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
use crate::model::profile::{Profile, now_ms};
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
    /// Letters of events the enrich role has not committed yet (their batch
    /// may still run again): left for a later run.
    pub uncommitted: u64,
    /// Letters of events that carry identifiers beyond a `user_id`, or of
    /// users whose row holds identities: left alone, since a re-drive does
    /// not resolve identities yet (docs/identity.md).
    pub identities: u64,
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
    /// records every letter's outcome with them.
    pub async fn redrive_page(
        &mut self,
        plugin: &str,
        version: &str,
        letters: &[Letter],
    ) -> anyhow::Result<RedriveReport> {
        let mut report = RedriveReport::default();
        let mut pending: BTreeSet<&str> =
            letters.iter().map(|l| l.event.user_id.as_str()).collect();
        while !pending.is_empty() {
            let users: Vec<String> = pending.iter().map(|&u| u.to_owned()).collect();
            let cut = self.store.cut(&self.group, &self.topic, &users).await?;
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
            let mut skipped = Vec::new();
            let mut held = Vec::new();
            let mut suppressed = Vec::new();
            for letter in letters {
                let user = letter.event.user_id.as_str();
                if !pending.contains(user) {
                    continue;
                }
                let stored = cut.profiles.get(user);
                if cut.suppressed.contains(user) {
                    suppressed.push(user);
                    continue;
                }
                if letter.event.anonymous_id.is_some()
                    || letter.event.previous_id.is_some()
                    || !letter.event.known_user
                    || stored.is_some_and(Profile::holds_identities)
                {
                    held.push(user);
                    continue;
                }
                let committed = cut
                    .offsets
                    .get(&letter.at.partition)
                    .is_some_and(|&next| letter.at.offset < next);
                if !committed {
                    skipped.push((user, false));
                } else if history.backfill_at(plugin, user, letter.at, None).is_some() {
                    skipped.push((user, true));
                } else {
                    page.events.push(letter.event.clone());
                    page.at.push(letter.at);
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
            let profiles: Vec<Profile> = changes
                .iter()
                .map(|(user, changes)| {
                    let mut profile = cut
                        .profiles
                        .get(user)
                        .cloned()
                        .unwrap_or_else(|| Profile::new(user.as_str(), now));
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
                    user_id: event.user_id.clone(),
                    version: version.to_owned(),
                    error: errors.remove(&index),
                })
                .collect();
            self.retire_cached(&profiles).await?;
            let refused = self
                .store
                .write_redriven(&self.group, &self.topic, &profiles, &outcomes)
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
            for (user, covered) in skipped {
                if !refused.contains(user) {
                    match covered {
                        true => report.covered += 1,
                        false => report.uncommitted += 1,
                    }
                }
            }
            report.identities += held.iter().filter(|u| !refused.contains(**u)).count() as u64;
            report.suppressed +=
                suppressed.iter().filter(|u| !refused.contains(**u)).count() as u64;
            report.retried += refused.len() as u64;
            pending.retain(|user| refused.contains(*user));
        }
        self.counts.changed += report.changed;
        self.counts.retried += report.retried;
        Ok(report)
    }
}
