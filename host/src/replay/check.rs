//! Reconcile: profiles replayed from the archive through the history and
//! compared attribute by attribute with PostgreSQL, and PostgreSQL with
//! Redis, page by page; what `pulsehub reconcile` and the archive role's
//! scheduled runs do.

use std::collections::BTreeMap;

use super::{Discrepancy, PAGE_USERS, Repair, Replay};

/// Which profiles a check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every profile, paged through by key.
    All,
    /// This many, picked at random.
    Sample(i64),
}

/// Discrepancies kept in a [`CheckReport`]; the counts cover all of them.
pub const LISTED: usize = 1_000;

/// What a check found and did.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub checked: u64,
    /// How many were found (with `repair`, before it).
    pub count: u64,
    /// The first [`LISTED`] found.
    pub found: Vec<Discrepancy>,
    /// (store, attribute) to how many were found.
    pub by: BTreeMap<(String, String), u64>,
    /// Profiles written (PostgreSQL) or refreshed (Redis) by the repair.
    pub repaired: u64,
    /// Suppressed persons, left alone.
    pub suppressed: u64,
}

impl Replay {
    /// Checks the profiles of `scope`, repairing with [`Repair::Found`].
    /// `progress` is told how many profiles each page checked.
    pub async fn check(
        &mut self,
        scope: Scope,
        repair: Repair,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<CheckReport> {
        let mut report = CheckReport::default();
        // A sample is drawn at once and split into pages.
        let mut sampled = match scope {
            Scope::All => Vec::new(),
            Scope::Sample(n) => self.store.sample_users(n).await?,
        }
        .into_iter();
        let mut after: Option<String> = None;
        loop {
            let page: Vec<String> = match scope {
                Scope::All => {
                    self.store
                        .profile_users_after(after.as_deref(), PAGE_USERS)
                        .await?
                }
                Scope::Sample(_) => sampled.by_ref().take(PAGE_USERS as usize).collect(),
            };
            let Some(last) = page.last().cloned() else {
                break;
            };
            let checked = self.check_page(&page, repair, false).await?;
            report.checked += checked.checked;
            report.repaired += checked.repaired;
            report.suppressed += checked.suppressed;
            for d in checked.discrepancies {
                *report
                    .by
                    .entry((d.store.to_owned(), d.attribute.clone()))
                    .or_default() += 1;
                report.count += 1;
                if report.found.len() < LISTED {
                    report.found.push(d);
                }
            }
            progress(page.len() as u64);
            after = Some(last);
        }
        Ok(report)
    }
}
