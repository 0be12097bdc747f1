//! Where an enrich lane has seen identifiers live, so that a link already
//! made costs a batch nothing and an event keyed by an identifier that
//! joined another profile goes straight to that profile.
//!
//! Merges only ever join: identifiers once found on one profile stay on one
//! profile (another one, after a later merge) until a privacy request
//! deletes the person. So what the memory says is together stays together;
//! a profile it names may since have become a pointer, which the store
//! follows as for any key. The lane forgets it all when the suppressions
//! change (a delete is one such change), and when it grows past its
//! capacity.

use std::collections::HashMap;

use crate::model::identity::{Link, MAX_POINTER_STEPS, USER_ID};
use crate::model::profile::Profile;

/// Home key → the key of the profile (or pointer) it was last seen under.
pub(super) struct LinkMemory {
    homes: HashMap<String, String>,
    /// Profile key → how many identifiers its row had when last learnt
    /// from. A profile's identifiers only grow (until a delete, which
    /// clears the memory), so a row with as many has nothing new to teach,
    /// and its identifiers' home keys need not be derived again.
    learnt: HashMap<String, usize>,
    capacity: usize,
}

impl LinkMemory {
    /// A memory of at most `capacity` keys; 0 keeps nothing.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            homes: HashMap::new(),
            learnt: HashMap::new(),
            capacity,
        }
    }

    /// Learns from rows a commit wrote, as they are now: a pointer says
    /// where its key leads, a profile with identifiers of its own that they
    /// live there. (A profile of a `user_id` alone teaches nothing: its key
    /// resolves to itself.)
    pub(super) fn learn(&mut self, rows: &[Profile]) {
        if self.capacity == 0 {
            return;
        }
        for row in rows {
            if let Some(target) = &row.merged_into {
                self.note(&row.user_id, target);
            } else if !row.identifiers.is_empty()
                && self.learnt.get(&row.user_id) != Some(&row.identifiers.len())
            {
                self.learnt
                    .insert(row.user_id.clone(), row.identifiers.len());
                for identifier in &row.identifiers {
                    // A user id's home key is the id itself: no digest.
                    if identifier.kind == USER_ID {
                        self.note(&identifier.value, &row.user_id);
                    } else {
                        self.note(&identifier.home_key(), &row.user_id);
                    }
                }
            }
        }
        if self.homes.len() + self.learnt.len() > self.capacity {
            self.clear();
        }
    }

    fn note(&mut self, home: &str, key: &str) {
        if home == key {
            self.homes.remove(home);
        } else if self.homes.get(home).is_none_or(|known| known != key) {
            self.homes.insert(home.to_owned(), key.to_owned());
        }
    }

    /// The key `home` was last seen to lead to (itself when unknown).
    pub(super) fn resolve<'k>(&'k self, home: &'k str) -> &'k str {
        let mut at = home;
        for _ in 0..MAX_POINTER_STEPS {
            match self.homes.get(at) {
                Some(next) => at = next,
                None => break,
            }
        }
        at
    }

    /// Whether every identifier of `link` is known to be on one profile:
    /// the link changes nothing.
    pub(super) fn joins(&self, link: &Link) -> bool {
        let mut homes = link.identifiers.iter().map(|i| i.home_key());
        let Some(first) = homes.next() else {
            return true;
        };
        let profile = self.resolve(&first).to_owned();
        homes.all(|home| self.resolve(&home) == profile)
    }

    pub(super) fn clear(&mut self) {
        self.homes.clear();
        self.learnt.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::identity::{ANONYMOUS_ID, Identifier, USER_ID, home_key};

    fn link(ids: &[(&str, &str)]) -> Link {
        Link {
            event_id: "e".to_owned(),
            identifiers: ids.iter().map(|(k, v)| Identifier::new(*k, *v)).collect(),
            alias: false,
        }
    }

    #[test]
    fn a_link_already_made_is_known_and_keys_lead_to_the_profile() {
        let mut memory = LinkMemory::new(100);
        let pair = link(&[(USER_ID, "u1"), (ANONYMOUS_ID, "a1")]);
        assert!(!memory.joins(&pair), "nothing learnt yet");
        // u1's profile took in a1.
        let mut profile = Profile::new("u1", 1);
        profile.identifiers = vec![Identifier::new(ANONYMOUS_ID, "a1")];
        memory.learn(&[profile]);
        assert!(memory.joins(&pair));
        assert_eq!(memory.resolve(&home_key(ANONYMOUS_ID, "a1")), "u1");
        assert_eq!(memory.resolve("u1"), "u1");
        assert!(!memory.joins(&link(&[(USER_ID, "u2"), (ANONYMOUS_ID, "a1")])));

        // Then u1's profile merged into the older a9's: u1 is a pointer.
        let mut pointer = Profile::new("u1", 1);
        pointer.merged_into = Some(home_key(ANONYMOUS_ID, "a9"));
        memory.learn(&[pointer]);
        assert_eq!(memory.resolve("u1"), home_key(ANONYMOUS_ID, "a9"));
        assert_eq!(
            memory.resolve(&home_key(ANONYMOUS_ID, "a1")),
            home_key(ANONYMOUS_ID, "a9")
        );
        assert!(memory.joins(&pair), "still together");

        memory.clear();
        assert!(!memory.joins(&pair));
    }

    #[test]
    fn past_its_capacity_it_starts_over_and_zero_keeps_nothing() {
        let mut memory = LinkMemory::new(3);
        let rows: Vec<Profile> = (0..4)
            .map(|i| {
                let mut p = Profile::new(format!("u{i}").as_str(), 1);
                p.merged_into = Some("u9".to_owned());
                p
            })
            .collect();
        memory.learn(&rows[..3]);
        assert_eq!(memory.resolve("u0"), "u9");
        memory.learn(&rows[3..]);
        assert_eq!(memory.resolve("u0"), "u0", "forgotten");
        let mut none = LinkMemory::new(0);
        none.learn(&rows);
        assert_eq!(none.resolve("u0"), "u0");
    }
}
