//! The profiles an enrich lane committed last, kept so that its next commit
//! need not read them back.
//!
//! Users are tied to partitions and partitions to lanes, so a lane is nearly
//! always the only writer of the profiles it caches. Nearly: a rebalance can
//! move a partition away and back, and one user's events can arrive through
//! two partitions. A cached copy is therefore only a guess at the stored
//! revision, and the store's revision-checked write is the guard: a commit
//! started from a copy that is not the stored revision fails and is retried
//! from the store. The lane empties its cache whenever a commit fails or is
//! stale (its partitions moved), so one wrong guess costs one retry.
//!
//! The cache is bounded by an estimate of the bytes its profiles take and
//! evicts the least recently committed first.

use std::collections::HashMap;

use lru::LruCache;

use crate::model::merge::ProfileChanges;
use crate::model::profile::{Attribute, Profile};
use crate::model::update::Value;

/// A lane's profiles, least recently committed evicted first, at most
/// `capacity` estimated bytes.
pub(super) struct LaneCache {
    profiles: LruCache<String, Profile>,
    bytes: usize,
    capacity: usize,
}

impl LaneCache {
    /// A cache of at most `capacity` estimated bytes; 0 keeps nothing.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            profiles: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    /// Takes out the cached profiles of the users `changes` touches: the
    /// commit starts from them and gives them back through [`Self::keep`]
    /// once they are written.
    pub(super) fn take(&mut self, changes: &ProfileChanges) -> HashMap<String, Profile> {
        let mut taken = HashMap::new();
        if self.profiles.is_empty() {
            return taken;
        }
        for user_id in changes.keys() {
            if let Some((user_id, profile)) = self.profiles.pop_entry(user_id) {
                self.bytes -= weight(&profile);
                taken.insert(user_id, profile);
            }
        }
        taken
    }

    /// Keeps the profiles a commit wrote, evicting the least recently
    /// committed ones beyond the capacity.
    pub(super) fn keep(&mut self, profiles: Vec<Profile>) {
        if self.capacity == 0 {
            return;
        }
        for profile in profiles {
            self.bytes += weight(&profile);
            if let Some((_, replaced)) = self.profiles.push(profile.user_id.clone(), profile) {
                self.bytes -= weight(&replaced);
            }
        }
        while self.bytes > self.capacity {
            match self.profiles.pop_lru() {
                Some((_, evicted)) => self.bytes -= weight(&evicted),
                None => break,
            }
        }
    }

    /// Forgets everything: after a failed or stale commit, nothing here can
    /// be trusted to be the stored revision.
    pub(super) fn clear(&mut self) {
        self.profiles.clear();
        self.bytes = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.profiles.len()
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
    use std::collections::BTreeMap;

    use super::*;

    fn profile(user_id: &str, revision: i64) -> Profile {
        let mut profile = Profile::new(user_id, 0);
        profile.revision = revision;
        profile
    }

    fn changes(users: &[&str]) -> ProfileChanges {
        users
            .iter()
            .map(|user| (user.to_string(), BTreeMap::new()))
            .collect()
    }

    #[test]
    fn take_hands_out_only_the_users_a_batch_changes_and_keep_returns_them() {
        let mut cache = LaneCache::new(1 << 20);
        cache.keep(vec![profile("a", 3), profile("b", 5), profile("c", 1)]);
        let taken = cache.take(&changes(&["b", "x"]));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken["b"].revision, 5);
        assert_eq!(cache.len(), 2, "b is out while its commit runs");
        cache.keep(vec![profile("b", 6)]);
        assert_eq!(cache.take(&changes(&["b"]))["b"].revision, 6);
    }

    #[test]
    fn the_capacity_evicts_the_least_recently_committed_first() {
        let one = weight(&profile("u0", 1));
        let mut cache = LaneCache::new(3 * one);
        cache.keep(vec![profile("u0", 1), profile("u1", 1), profile("u2", 1)]);
        // u0 committed again: u1 is now the least recent.
        cache.keep(vec![profile("u0", 2), profile("u3", 1)]);
        assert_eq!(cache.len(), 3);
        assert!(cache.take(&changes(&["u1"])).is_empty());
        assert_eq!(cache.take(&changes(&["u0", "u2", "u3"])).len(), 3);
        assert_eq!(cache.bytes, 0, "the byte count follows what is held");
    }

    #[test]
    fn a_zero_capacity_keeps_nothing_and_clear_forgets_everything() {
        let mut off = LaneCache::new(0);
        off.keep(vec![profile("a", 1)]);
        assert_eq!(off.len(), 0);
        let mut cache = LaneCache::new(1 << 20);
        cache.keep(vec![profile("a", 1), profile("b", 1)]);
        cache.clear();
        assert!(cache.take(&changes(&["a", "b"])).is_empty());
        assert_eq!(cache.bytes, 0);
    }
}
