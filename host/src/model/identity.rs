//! Identity: which profile an event belongs to when a person shows up under
//! several identifiers (an anonymous id, then a user id, an email...), and
//! how two profiles of one person become one.
//!
//! # Home keys and pointers
//! Every identifier has a *home key* in the profile table
//! ([`Identifier::home_key`]): a `user_id`'s is the id itself, so profiles of
//! known users keep their keys; any other type's is derived from its type
//! and value (`~anonymous_id:` and 32 hex digits of a SHA-256), so a replay
//! finds the same key. The row at a home key is either the profile itself
//! or a *pointer* ([`Profile::merged_into`]) to the profile the identifier
//! now belongs to. Resolving an identifier is reading its home row and
//! following pointers; no other index is needed, and a writer that holds a
//! stale copy of a row that became a pointer finds out through the row's
//! revision, as it does for any other change.
//!
//! # Links and merges
//! An event that carries more than one identifier ([`Link`]) links them.
//! [`plan`] works out, from the rows of the identifiers' homes, what the
//! links change: a new identifier joins the event's profile (a pointer at
//! its home), and identifiers of two profiles merge them. The older profile
//! survives ([`Profile::join`] keeps the result independent of the order),
//! the younger one's row becomes a pointer, and the merge is recorded with
//! the event that caused it. A replayed link finds its identifiers on one
//! profile already and changes nothing.
//!
//! # Guards
//! [`Rules`] keeps "blob" profiles from forming: blocked values never become
//! identifiers, each type has a limit per profile, two values of a `unique`
//! type never share a profile, and a profile takes at most `max_merges`
//! merges. A refused link leaves each identifier where it was and is
//! reported ([`Refusal`]); the event still counts on its own profile.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::event::Event;
use crate::model::profile::Profile;

/// The identifier type of known users; a profile's key when it is theirs.
pub const USER_ID: &str = "user_id";
/// The identifier type of devices and sessions before a user is known.
pub const ANONYMOUS_ID: &str = "anonymous_id";

/// Pointers followed before a chain counts as broken. Each merge adds at
/// most one step, and a profile takes at most [`Rules`]' `max_merges`.
pub const MAX_POINTER_STEPS: usize = 64;

/// One identifier of a person: its type and value (hashed for a `hashed`
/// type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl Identifier {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// The key of the profile-table row this identifier resolves through.
    pub fn home_key(&self) -> String {
        home_key(&self.kind, &self.value)
    }
}

/// The home key of identifier `kind`/`value` (see the module doc).
pub fn home_key(kind: &str, value: &str) -> String {
    if kind == USER_ID {
        return value.to_owned();
    }
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0])
        .chain_update(value.as_bytes())
        .finalize();
    let mut key = String::with_capacity(kind.len() + 34);
    key.push('~');
    key.push_str(kind);
    key.push(':');
    for byte in &digest[..16] {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

/// Lowercase hex SHA-256 of `value`: how a `hashed` type stores its values.
pub fn hash_value(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let mut text = String::with_capacity(64);
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// A merge a profile took in: the profile merged into it, by which event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// The key of the profile merged in (now a pointer).
    pub merged: String,
    /// The event whose identifiers linked the two.
    pub event_id: String,
    /// Wall-clock time of the merge.
    pub at_ms: i64,
}

/// `[identity]`: identifier types and the guards on links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Values that never become identifiers (compared exactly).
    pub blocked: Vec<String>,
    /// Also block every value made of zeros and separators only
    /// (`0000`, `00000000-0000-0000-0000-000000000000`).
    pub block_zeros: bool,
    /// Merges a profile takes in before further links to it are refused.
    pub max_merges: usize,
    /// Identifier types by name. `user_id` and `anonymous_id` are always
    /// there (with the defaults below unless given here); any other type
    /// names the event property it is read from.
    pub types: BTreeMap<String, IdentifierType>,
}

/// One identifier type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierType {
    /// The top-level key of the event's `properties` holding the value
    /// (types other than `user_id` and `anonymous_id` only).
    #[serde(default)]
    pub property: Option<String>,
    /// Store and match the SHA-256 of the value instead of the value.
    #[serde(default)]
    pub hashed: bool,
    /// Values of this type one profile holds at most.
    pub limit: usize,
    /// Two different values of a unique type never share a profile.
    #[serde(default)]
    pub unique: bool,
}

pub mod defaults {
    pub const BLOCKED: [&str; 6] = ["", "null", "undefined", "anonymous", "0", "-1"];
    pub const BLOCK_ZEROS: bool = true;
    pub const MAX_MERGES: usize = 100;
    pub const USER_ID_LIMIT: usize = 1;
    pub const ANONYMOUS_ID_LIMIT: usize = 100;
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            blocked: defaults::BLOCKED.iter().map(|v| (*v).to_owned()).collect(),
            block_zeros: defaults::BLOCK_ZEROS,
            max_merges: defaults::MAX_MERGES,
            types: BTreeMap::new(),
        }
    }
}

/// The identity configuration, checked and ready to use.
#[derive(Debug, Clone)]
pub struct Rules {
    blocked: HashSet<String>,
    block_zeros: bool,
    pub max_merges: usize,
    /// Every type, the built-in ones included.
    types: BTreeMap<String, IdentifierType>,
    /// The types read from properties: (type, property, hashed).
    extra: Vec<(String, String, bool)>,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::new(&IdentityConfig::default()).expect("the default identity configuration is valid")
    }
}

impl Rules {
    pub fn new(config: &IdentityConfig) -> anyhow::Result<Rules> {
        let mut types = config.types.clone();
        types.entry(USER_ID.to_owned()).or_insert(IdentifierType {
            property: None,
            hashed: false,
            limit: defaults::USER_ID_LIMIT,
            unique: true,
        });
        types
            .entry(ANONYMOUS_ID.to_owned())
            .or_insert(IdentifierType {
                property: None,
                hashed: false,
                limit: defaults::ANONYMOUS_ID_LIMIT,
                unique: false,
            });
        let mut extra = Vec::new();
        for (name, kind) in &types {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            anyhow::ensure!(
                valid_name,
                "identity.types.{name}: a type name is 1 to 64 of a-z, 0-9 and _"
            );
            anyhow::ensure!(
                kind.limit >= 1,
                "identity.types.{name}.limit must be at least 1"
            );
            let built_in = name == USER_ID || name == ANONYMOUS_ID;
            match (&kind.property, built_in) {
                (Some(_), true) => anyhow::bail!(
                    "identity.types.{name}.property: {name} is a field of the event, not a property"
                ),
                (Some(property), false) => {
                    extra.push((name.clone(), property.clone(), kind.hashed));
                }
                (None, false) => anyhow::bail!(
                    "identity.types.{name}.property is required: it names the event property the value is read from"
                ),
                (None, true) => {}
            }
            anyhow::ensure!(
                !(built_in && kind.hashed),
                "identity.types.{name}.hashed: {name} values are profile keys and cannot be hashed"
            );
        }
        anyhow::ensure!(
            config.max_merges >= 1,
            "identity.max_merges must be at least 1"
        );
        Ok(Rules {
            blocked: config.blocked.iter().cloned().collect(),
            block_zeros: config.block_zeros,
            max_merges: config.max_merges,
            types,
            extra,
        })
    }

    /// The home key of identifier `kind`/`value` as a caller names it (the
    /// plain value of a `hashed` type); `Err` lists the known types.
    pub fn lookup_key(&self, kind: &str, value: &str) -> Result<String, String> {
        match self.types.get(kind) {
            Some(t) if t.hashed => Ok(home_key(kind, &hash_value(value))),
            Some(_) => Ok(home_key(kind, value)),
            None => Err(format!(
                "unknown identifier type {kind:?}; the types are {}",
                self.types.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }

    /// Whether `event`'s only identifier is its `user_id` (the common
    /// case: its own key, nothing to link).
    pub fn is_plain(&self, event: &Event) -> bool {
        event.known_user
            && event.anonymous_id.is_none()
            && event.previous_id.is_none()
            && self.extra.is_empty()
    }

    /// Whether `value` may never become an identifier.
    pub fn is_blocked(&self, value: &str) -> bool {
        self.blocked.contains(value)
            || (self.block_zeros
                && value.contains('0')
                && value
                    .bytes()
                    .all(|b| matches!(b, b'0' | b'-' | b'_' | b'.' | b':')))
    }

    fn limit(&self, kind: &str) -> usize {
        self.types.get(kind).map_or(usize::MAX, |t| t.limit)
    }

    fn unique(&self, kind: &str) -> bool {
        self.types.get(kind).is_some_and(|t| t.unique)
    }

    /// The event's identifiers, primary first (`user_id`, then
    /// `anonymous_id`, `previous_id` as a `user_id`, then the configured
    /// types in name order), without blocked values and repeats; with the
    /// number of values dropped as blocked.
    pub fn identifiers(&self, event: &Event) -> (Vec<Identifier>, usize) {
        let mut found: Vec<Identifier> = Vec::new();
        let mut blocked = 0;
        let mut add = |kind: &str, value: &str| {
            if self.is_blocked(value) {
                blocked += 1;
            } else if !found.iter().any(|i| i.kind == kind && i.value == value) {
                found.push(Identifier::new(kind, value));
            }
        };
        if let Some(user) = event.known_user_id() {
            add(USER_ID, user);
        }
        if let Some(anonymous) = &event.anonymous_id {
            add(ANONYMOUS_ID, anonymous);
        }
        if let Some(previous) = &event.previous_id {
            add(USER_ID, previous);
        }
        if !self.extra.is_empty()
            && let Ok(properties) =
                serde_json::from_str::<HashMap<&str, serde_json::Value>>(&event.properties)
        {
            for (kind, property, hashed) in &self.extra {
                if let Some(serde_json::Value::String(value)) = properties.get(property.as_str())
                    && !value.is_empty()
                    && !value.contains('\0')
                {
                    let value = if *hashed {
                        Cow::Owned(hash_value(value))
                    } else {
                        Cow::Borrowed(value.as_str())
                    };
                    add(kind, &value);
                }
            }
        }
        (found, blocked)
    }
}

/// What [`Rules::key_event`] found on an event.
#[derive(Debug, Default)]
pub struct Keyed {
    /// The event's identifiers, when it carries more than one.
    pub link: Option<Link>,
    /// The identifier of the event's profile key, when that is not a
    /// `user_id`.
    pub key_identifier: Option<Identifier>,
    /// Values dropped as blocked.
    pub blocked: usize,
}

impl Rules {
    /// Sets the key of the profile `event`'s updates are merged under (its
    /// first identifier's home key, see [`Event::profile_key`]) and says
    /// what the event links. An event whose identifiers are all blocked
    /// keeps the key of its `user_id` (or `anonymous_id`), as before
    /// identities: it still counts, on a profile nothing links to.
    pub fn key_event(&self, event: &mut Event) -> Keyed {
        if self.is_plain(event) {
            // The common case: one user id, its own key.
            return Keyed::default();
        }
        let (identifiers, blocked) = self.identifiers(event);
        let primary = match identifiers.first() {
            Some(primary) => primary.clone(),
            None if event.known_user => {
                return Keyed {
                    blocked,
                    ..Keyed::default()
                };
            }
            None => Identifier::new(ANONYMOUS_ID, event.user_id.as_str()),
        };
        let key = primary.home_key();
        if primary.kind != USER_ID || key != event.user_id {
            event.profile_key = Some(key);
        }
        Keyed {
            key_identifier: (primary.kind != USER_ID).then_some(primary),
            link: (identifiers.len() > 1).then(|| Link {
                event_id: event.id.clone(),
                identifiers,
                alias: event.previous_id.is_some(),
            }),
            blocked,
        }
    }
}

/// An event that carries several identifiers: they belong to one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub event_id: String,
    /// At least two, primary first.
    pub identifiers: Vec<Identifier>,
    /// An `alias` (the event's `previous_id`): the producer says the user
    /// ids are one person, so `user_id`'s uniqueness and limit do not hold
    /// the link back (the merge cap does).
    pub alias: bool,
}

/// What the identities of a batch need from the store.
#[derive(Debug, Clone, Default)]
pub struct BatchIdentities {
    /// The identifier of each profile key of the batch's changes that is not
    /// a `user_id` (a new profile there records it).
    pub keys: HashMap<String, Identifier>,
    /// The batch's links, in batch order.
    pub links: Vec<Link>,
}

impl BatchIdentities {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.links.is_empty()
    }

    /// The identifiers a new profile at `key` starts with: none for a user
    /// id (implied by the key, see [`Profile::identifiers`]).
    pub fn new_profile(&self, key: &str, now_ms: i64) -> Profile {
        let mut profile = Profile::new(key, now_ms);
        if let Some(identifier) = self.keys.get(key) {
            profile.identifiers = vec![identifier.clone()];
        }
        profile
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefusalReason {
    /// Two values of a `unique` type would share a profile.
    Unique,
    /// A type would exceed its limit per profile.
    Limit,
    /// A profile has taken `max_merges` merges.
    MergeCap,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Unique => "unique",
            RefusalReason::Limit => "limit",
            RefusalReason::MergeCap => "merge_cap",
        }
    }
}

/// A link that was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub event_id: String,
    /// The identifier that stayed where it was.
    pub identifier: Identifier,
    /// The profile it was not joined to.
    pub profile: String,
}

/// What a link did to a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Another profile was merged into it.
    Merge,
    /// A new identifier joined it.
    Attach,
}

impl LinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkKind::Merge => "merge",
            LinkKind::Attach => "attach",
        }
    }
}

/// A change a plan made to a person's identities, for the merge log: a
/// profile merged into another, or a new identifier joining a profile
/// (`merged` is then the identifier's home key). Every link event that
/// changed anything leaves at least one, whichever order the person's
/// events came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMerge {
    pub survivor: String,
    pub merged: String,
    pub event_id: String,
    pub kind: LinkKind,
}

/// What a batch's links change.
#[derive(Debug, Default)]
pub struct Plan {
    /// Rows to write, in key order: survivors and new profiles as they are
    /// after the links, and pointers. Each row's revision is the stored
    /// one's plus one (1 for a new row).
    pub writes: Vec<Profile>,
    /// Merges and attachments, in the order made.
    pub merges: Vec<PlannedMerge>,
    pub refused: Vec<Refusal>,
}

/// The home keys whose rows [`plan`] reads for `links`.
pub fn homes(links: &[Link]) -> BTreeSet<String> {
    links
        .iter()
        .flat_map(|link| link.identifiers.iter().map(Identifier::home_key))
        .collect()
}

/// The key `key` resolves to in `rows`: the row itself, or the end of its
/// pointers. `Err` names a pointer whose target is not in `rows` (the
/// caller reads it and asks again); `Ok(None)`: no row at `key`.
pub fn resolve<'r>(
    rows: &'r HashMap<String, Profile>,
    key: &'r str,
) -> Result<Option<&'r str>, &'r str> {
    let mut at = key;
    for _ in 0..MAX_POINTER_STEPS {
        match rows.get(at) {
            None if at == key => return Ok(None),
            None => return Err(at),
            Some(row) => match &row.merged_into {
                Some(next) => at = next,
                None => return Ok(Some(at)),
            },
        }
    }
    // A cycle cannot be written (a merge points a younger profile at an
    // older one); stop rather than loop.
    Ok(Some(at))
}

/// Works out what `links` change, given `rows`: every row at the links'
/// home keys ([`homes`]) and every row their pointers lead to. `identities`
/// says which identifier a new profile records.
pub fn plan(links: &[Link], rows: HashMap<String, Profile>, rules: &Rules, now_ms: i64) -> Plan {
    let mut work = Work {
        stored: rows.iter().map(|(k, p)| (k.clone(), p.revision)).collect(),
        rows,
        dirty: BTreeSet::new(),
        plan: Plan::default(),
        now_ms,
    };
    for link in links {
        work.link(link, rules);
    }
    let Work {
        mut rows,
        stored,
        dirty,
        mut plan,
        ..
    } = work;
    for key in dirty {
        if let Some(mut row) = rows.remove(&key) {
            row.revision = stored.get(&key).map_or(1, |r| r + 1);
            plan.writes.push(row);
        }
    }
    plan
}

struct Work {
    rows: HashMap<String, Profile>,
    /// The revision of each row as stored.
    stored: HashMap<String, i64>,
    dirty: BTreeSet<String>,
    plan: Plan,
    now_ms: i64,
}

impl Work {
    fn canonical(&self, key: &str) -> Option<String> {
        match resolve(&self.rows, key) {
            Ok(found) => found.map(str::to_owned),
            // The caller read every target; a missing one is a new row.
            Err(_) => None,
        }
    }

    fn link(&mut self, link: &Link, rules: &Rules) {
        let mut target: Option<String> = None;
        let mut new = Vec::new();
        for identifier in &link.identifiers {
            match self.canonical(&identifier.home_key()) {
                None => new.push(identifier),
                Some(key) => match &target {
                    None => target = Some(key),
                    Some(t) if *t == key => {}
                    Some(t) => match self.merge(t.clone(), key, link, rules) {
                        Ok(survivor) => target = Some(survivor),
                        Err((reason, profile)) => self.plan.refused.push(Refusal {
                            reason,
                            event_id: link.event_id.clone(),
                            identifier: identifier.clone(),
                            profile,
                        }),
                    },
                },
            }
        }
        for identifier in new {
            let home = identifier.home_key();
            let Some(t) = target.clone() else {
                // None of the event's identifiers is known: the first one's
                // home becomes the profile.
                let mut profile = Profile::new(home.as_str(), self.now_ms);
                if identifier.kind != USER_ID || identifier.value != home {
                    profile.identifiers = vec![identifier.clone()];
                }
                self.rows.insert(home.clone(), profile);
                self.dirty.insert(home.clone());
                target = Some(home);
                continue;
            };
            let profile = &self.rows[&t];
            let held = profile.identifiers();
            let same_type = held.iter().filter(|i| i.kind == identifier.kind).count();
            let exempt = link.alias && identifier.kind == USER_ID;
            let refusal = if exempt {
                None
            } else if rules.unique(&identifier.kind) && same_type > 0 {
                Some(RefusalReason::Unique)
            } else if same_type + 1 > rules.limit(&identifier.kind) {
                Some(RefusalReason::Limit)
            } else {
                None
            };
            if let Some(reason) = refusal {
                self.plan.refused.push(Refusal {
                    reason,
                    event_id: link.event_id.clone(),
                    identifier: identifier.clone(),
                    profile: t,
                });
                continue;
            }
            let mut identifiers = held.into_owned();
            identifiers.push(identifier.clone());
            identifiers.sort();
            let profile = self.rows.get_mut(&t).expect("the target row was read");
            profile.identifiers = identifiers;
            profile.updated_at_ms = self.now_ms;
            self.dirty.insert(t.clone());
            let mut pointer = Profile::new(home.as_str(), self.now_ms);
            pointer.merged_into = Some(t.clone());
            self.rows.insert(home.clone(), pointer);
            self.dirty.insert(home.clone());
            self.plan.merges.push(PlannedMerge {
                survivor: t,
                merged: home,
                event_id: link.event_id.clone(),
                kind: LinkKind::Attach,
            });
        }
    }

    /// Merges the profiles at `a` and `b` (both canonical, different), or
    /// says why not. Returns the survivor's key.
    fn merge(
        &mut self,
        a: String,
        b: String,
        link: &Link,
        rules: &Rules,
    ) -> Result<String, (RefusalReason, String)> {
        let event_id = link.event_id.as_str();
        let (pa, pb) = (&self.rows[&a], &self.rows[&b]);
        let (older, younger) = if (pa.created_at_ms, a.as_str()) <= (pb.created_at_ms, b.as_str()) {
            (a, b)
        } else {
            (b, a)
        };
        let (survivor, merged) = (&self.rows[&older], &self.rows[&younger]);
        let mut identifiers: BTreeSet<Identifier> =
            survivor.identifiers().into_owned().into_iter().collect();
        identifiers.extend(merged.identifiers().iter().cloned());
        let mut per_type: BTreeMap<&str, usize> = BTreeMap::new();
        for identifier in &identifiers {
            *per_type.entry(identifier.kind.as_str()).or_default() += 1;
        }
        for (kind, count) in &per_type {
            if link.alias && *kind == USER_ID {
                continue;
            }
            if rules.unique(kind) && *count > 1 {
                return Err((RefusalReason::Unique, younger));
            }
            if *count > rules.limit(kind) {
                return Err((RefusalReason::Limit, younger));
            }
        }
        if survivor.merges.len() + merged.merges.len() + 1 > rules.max_merges {
            return Err((RefusalReason::MergeCap, younger));
        }
        let merged = self.rows[&younger].clone();
        let survivor = self
            .rows
            .get_mut(&older)
            .expect("the survivor row was read");
        survivor.join(&merged, self.now_ms);
        survivor.identifiers = identifiers.into_iter().collect();
        survivor.merges.extend(merged.merges.iter().cloned());
        survivor.merges.push(MergeRecord {
            merged: younger.clone(),
            event_id: event_id.to_owned(),
            at_ms: self.now_ms,
        });
        let mut pointer = Profile::new(younger.as_str(), merged.created_at_ms);
        pointer.updated_at_ms = self.now_ms;
        pointer.merged_into = Some(older.clone());
        self.rows.insert(younger.clone(), pointer);
        self.dirty.insert(older.clone());
        self.dirty.insert(younger.clone());
        self.plan.merges.push(PlannedMerge {
            survivor: older.clone(),
            merged: younger,
            event_id: event_id.to_owned(),
            kind: LinkKind::Merge,
        });
        Ok(older)
    }
}

#[cfg(test)]
mod tests;
