//! The profiles the enrich role of a process committed last, kept so that
//! the next commit touching them need not read them back.
//!
//! The process's lanes commit through one committer, so within a process a
//! copy is the stored revision. Another process may have written since (a
//! rebalance can move a partition away and back, a backfill or a repair
//! writes too), so a copy is still only a guess, and the store's
//! revision-checked write is the guard: a profile computed from a copy that
//! is not the stored revision is read again under its row lock and computed
//! once more. The copies are emptied whenever a commit fails or is stale
//! (partitions moved), so one wrong guess costs one retry.
//!
//! The copies are bounded by an estimate of the bytes their profiles take
//! and the least recently committed are evicted first.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use lru::LruCache;

use crate::model::profile::{Attribute, Profile};
use crate::model::update::Value;

/// The lanes' profiles, least recently committed evicted first, at most
/// `capacity` estimated bytes; shared by the lanes (one lock, taken once
/// per batch to take copies out and once to give them back).
pub(super) struct ProfileCopies {
    held: Mutex<Held>,
    capacity: usize,
}

struct Held {
    profiles: LruCache<String, Profile>,
    bytes: usize,
}

impl ProfileCopies {
    /// Copies of at most `capacity` estimated bytes; 0 keeps nothing.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            held: Mutex::new(Held {
                profiles: LruCache::unbounded(),
                bytes: 0,
            }),
            capacity,
        }
    }

    /// The copies, whatever a panicking holder left (every change below
    /// keeps them consistent before it can panic).
    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes out the copies of the rows at `keys` (the keys a batch
    /// changes, and the home keys of the identifiers it links): the commit
    /// starts from them and gives them back through [`Self::keep`] once
    /// they are written. Another lane touching one of them meanwhile reads
    /// it from the store. Pointers are lent, not taken: they stay.
    pub(super) fn take<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k String>,
    ) -> HashMap<String, Profile> {
        let mut taken = HashMap::new();
        let mut held = self.held();
        if held.profiles.is_empty() {
            return taken;
        }
        for user_id in keys {
            let Some((user_id, profile)) = held.profiles.pop_entry(user_id) else {
                continue;
            };
            if profile.merged_into.is_some() {
                // A pointer never changes (a delete empties the copies): it
                // goes back, as a commit that resolves through it does not
                // write it.
                taken.insert(user_id.clone(), profile.clone());
                held.profiles.push(user_id, profile);
            } else {
                held.bytes -= weight(&profile);
                taken.insert(user_id, profile);
            }
        }
        taken
    }

    /// Keeps the profiles a commit wrote, evicting the least recently
    /// committed ones beyond the capacity. A copy of a later revision
    /// (another lane's commit that came after this one) stays.
    pub(super) fn keep(&self, profiles: Vec<Profile>) {
        if self.capacity == 0 {
            return;
        }
        let mut held = self.held();
        for profile in profiles {
            if held
                .profiles
                .peek(&profile.user_id)
                .is_some_and(|kept| kept.revision > profile.revision)
            {
                continue;
            }
            held.bytes += weight(&profile);
            if let Some((_, replaced)) = held.profiles.push(profile.user_id.clone(), profile) {
                held.bytes -= weight(&replaced);
            }
        }
        while held.bytes > self.capacity {
            match held.profiles.pop_lru() {
                Some((_, evicted)) => held.bytes -= weight(&evicted),
                None => break,
            }
        }
    }

    /// Forgets everything: after a failed or stale commit, nothing here can
    /// be trusted to be the stored revision.
    pub(super) fn clear(&self) {
        let mut held = self.held();
        held.profiles.clear();
        held.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held().profiles.len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.held().bytes
    }
}

/// The estimated bytes a cached profile takes: the cache entry, the
/// attribute map's nodes (a B-tree node holds up to 11 attributes and is
/// allocated whole) and every string's bytes.
fn weight(profile: &Profile) -> usize {
    const NODE_SLOTS: usize = 11;
    const NODE: usize = NODE_SLOTS * (size_of::<String>() + size_of::<Attribute>()) + 16;
    // Key, profile, the LRU list's links and the hash table's slot.
    const PER_ENTRY: usize = size_of::<String>() + size_of::<Profile>() + 48;
    let nodes = profile.attributes.len().div_ceil(NODE_SLOTS).max(1);
    let strings: usize = profile
        .attributes
        .iter()
        .map(|(name, attribute)| {
            let text = match &attribute.value {
                Value::Text(text) => text.len(),
                _ => 0,
            };
            name.len()
                + text
                + attribute.plugin.len()
                + attribute.plugin_version.len()
                + attribute.event_id.len()
        })
        .sum();
    // The user id is held twice: as the key and in the profile.
    PER_ENTRY + nodes * NODE + 2 * profile.user_id.len() + strings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(user_id: &str, revision: i64) -> Profile {
        let mut profile = Profile::new(user_id, 0);
        profile.revision = revision;
        profile
    }

    fn keys(users: &[&str]) -> Vec<String> {
        users.iter().map(|user| user.to_string()).collect()
    }

    #[test]
    fn take_hands_out_only_the_users_a_batch_changes_and_keep_returns_them() {
        let cache = ProfileCopies::new(1 << 20);
        cache.keep(vec![profile("a", 3), profile("b", 5), profile("c", 1)]);
        let taken = cache.take(&keys(&["b", "x"]));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken["b"].revision, 5);
        assert_eq!(cache.len(), 2, "b is out while its commit runs");
        cache.keep(vec![profile("b", 6)]);
        assert_eq!(cache.take(&keys(&["b"]))["b"].revision, 6);
    }

    #[test]
    fn a_pointer_is_lent_and_stays_for_the_next_commit() {
        let cache = ProfileCopies::new(1 << 20);
        let mut pointer = profile("a", 2);
        pointer.merged_into = Some("u".to_owned());
        cache.keep(vec![pointer.clone(), profile("u", 4)]);
        let taken = cache.take(&keys(&["a", "u"]));
        assert_eq!(taken["a"], pointer);
        // The commit writes the profile, not the pointer it resolved through.
        cache.keep(vec![profile("u", 5)]);
        let taken = cache.take(&keys(&["a", "u"]));
        assert_eq!(taken["a"], pointer, "still held");
        assert_eq!(taken["u"].revision, 5);
    }

    #[test]
    fn a_later_revision_another_lane_kept_is_not_replaced_by_an_earlier_one() {
        let cache = ProfileCopies::new(1 << 20);
        cache.keep(vec![profile("a", 7)]);
        // A commit that wrote a at revision 6 gives its copy back late.
        cache.keep(vec![profile("a", 6), profile("b", 2)]);
        let taken = cache.take(&keys(&["a", "b"]));
        assert_eq!((taken["a"].revision, taken["b"].revision), (7, 2));
        assert_eq!(cache.bytes(), 0, "the skipped copy was never counted");
    }

    #[test]
    fn the_capacity_evicts_the_least_recently_committed_first() {
        let one = weight(&profile("u0", 1));
        let cache = ProfileCopies::new(3 * one);
        cache.keep(vec![profile("u0", 1), profile("u1", 1), profile("u2", 1)]);
        // u0 committed again: u1 is now the least recent.
        cache.keep(vec![profile("u0", 2), profile("u3", 1)]);
        assert_eq!(cache.len(), 3);
        assert!(cache.take(&keys(&["u1"])).is_empty());
        assert_eq!(cache.take(&keys(&["u0", "u2", "u3"])).len(), 3);
        assert_eq!(cache.bytes(), 0, "the byte count follows what is held");
    }

    #[test]
    fn a_zero_capacity_keeps_nothing_and_clear_forgets_everything() {
        let off = ProfileCopies::new(0);
        off.keep(vec![profile("a", 1)]);
        assert_eq!(off.len(), 0);
        let cache = ProfileCopies::new(1 << 20);
        cache.keep(vec![profile("a", 1), profile("b", 1)]);
        cache.clear();
        assert!(cache.take(&keys(&["a", "b"])).is_empty());
        assert_eq!(cache.bytes(), 0);
    }
}
