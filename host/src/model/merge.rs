//! Folding a batch's updates into one change per user and attribute.
//!
//! Every operation of the plugin contract is commutative for its attribute,
//! so a whole batch can be merged before anything is written: one row change
//! per user per batch instead of one per event. The merged change keeps the
//! provenance of the event that decided it.

use crate::model::event::Event;
use crate::model::update::{Op, Update};
use crate::plugin::ErrorKind;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use std::collections::hash_map::Entry;

/// Who decided an attribute's value: the plugin and version, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub plugin: Arc<str>,
    pub plugin_version: Arc<str>,
    pub event_id: String,
    /// The event's time, milliseconds since the Unix epoch.
    pub event_time_ms: i64,
}

/// The merged change to one attribute. `Set` carries the latest value,
/// `Increment` the summed delta, `Max`/`Min` the extreme value; applying it
/// to the stored attribute gives the same result as applying every update of
/// the batch one by one.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeChange {
    pub op: Op,
    pub provenance: Provenance,
}

/// A batch's changes: user id → attribute → change, sorted so that stores
/// lock rows in one order.
pub type ProfileChanges = BTreeMap<String, BTreeMap<String, AttributeChange>>;

struct Pending {
    op: Op,
    plugin: usize,
    /// Position of the deciding event in the batch; with its time, it orders
    /// events: a later time wins, and on equal times the later position.
    event: usize,
}

/// Accumulates the updates of one batch of `events`.
pub struct Merger<'a> {
    events: &'a [Event],
    /// (name, version) of each registered plugin.
    plugins: Vec<(Arc<str>, Arc<str>)>,
    // Fx rather than SipHash: the keys are user ids and attribute names of
    // one batch, hashed several times per event; no untrusted party picks
    // enough keys per batch to make collisions a cost.
    pending: FxHashMap<&'a str, FxHashMap<Arc<str>, Pending>>,
}

impl<'a> Merger<'a> {
    pub fn new(events: &'a [Event]) -> Self {
        Self {
            events,
            plugins: Vec::new(),
            pending: FxHashMap::default(),
        }
    }

    /// Registers a plugin whose updates will be added; returns its handle.
    pub fn plugin(&mut self, name: &str, version: &str) -> usize {
        self.plugins.push((name.into(), version.into()));
        self.plugins.len() - 1
    }

    /// Adds one event's updates from one plugin, all or none: if any of them
    /// cannot be merged (for instance a `max` of a text into a number, or a
    /// `set` on an attribute that this batch increments), none is added and
    /// the error says why.
    pub fn add(
        &mut self,
        plugin: usize,
        event: usize,
        updates: Vec<Update>,
    ) -> Result<(), (ErrorKind, String)> {
        let events = self.events;
        let user = events[event].profile_key();
        let attributes = self.pending.entry(user).or_default();
        for update in &updates {
            if let Some(existing) = attributes.get(&*update.attribute) {
                check(&existing.op, update)?;
            }
        }
        for update in updates {
            match attributes.entry(update.attribute) {
                Entry::Occupied(mut slot) => {
                    combine(slot.get_mut(), update.op, plugin, event, events)
                }
                Entry::Vacant(slot) => {
                    slot.insert(Pending {
                        op: update.op,
                        plugin,
                        event,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> ProfileChanges {
        let mut changes = ProfileChanges::new();
        for (user, attributes) in self.pending {
            let merged = attributes
                .into_iter()
                .map(|(attribute, pending)| {
                    let (plugin, version) = &self.plugins[pending.plugin];
                    let event = &self.events[pending.event];
                    let provenance = Provenance {
                        plugin: plugin.clone(),
                        plugin_version: version.clone(),
                        event_id: event.id.clone(),
                        event_time_ms: event.timestamp_ms,
                    };
                    (
                        String::from(&*attribute),
                        AttributeChange {
                            op: pending.op,
                            provenance,
                        },
                    )
                })
                .collect();
            changes.insert(user.to_owned(), merged);
        }
        changes
    }
}

/// Folds `later` (changes committed after `earlier`, of other events) into
/// `earlier`, so that applying the result to a profile gives what applying
/// `earlier` and then `later` gives ([`crate::model::profile::Profile::apply`]).
/// Gives `later` back, with `earlier` unchanged, when an attribute takes a
/// different operation in each, or `max`/`min` values that do not compare:
/// no single change says what those two do in turn.
pub fn fold_later(
    earlier: &mut ProfileChanges,
    later: ProfileChanges,
) -> Result<(), ProfileChanges> {
    let foldable = later.iter().all(|(user, attributes)| {
        let Some(held) = earlier.get(user) else {
            return true;
        };
        attributes
            .iter()
            .all(|(name, change)| match held.get(name) {
                None => true,
                Some(first) => match (&first.op, &change.op) {
                    (Op::Set(_), Op::Set(_)) | (Op::Increment(_), Op::Increment(_)) => true,
                    (Op::Max(a), Op::Max(b)) | (Op::Min(a), Op::Min(b)) => a.compare(b).is_some(),
                    _ => false,
                },
            })
    });
    if !foldable {
        return Err(later);
    }
    for (user, attributes) in later {
        let held = earlier.entry(user).or_default();
        for (name, change) in attributes {
            match held.entry(name) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(change);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    let first = slot.get_mut();
                    let replace = match (&mut first.op, &change.op) {
                        // `apply` takes a `set` of the same or a later time.
                        (Op::Set(_), Op::Set(_)) => {
                            change.provenance.event_time_ms >= first.provenance.event_time_ms
                        }
                        (Op::Increment(sum), Op::Increment(delta)) => {
                            *sum = sum.saturating_add(*delta);
                            // An increment carries the last applied event.
                            first.provenance = change.provenance.clone();
                            false
                        }
                        (Op::Max(a), Op::Max(b)) => {
                            b.compare(a) == Some(std::cmp::Ordering::Greater)
                        }
                        (Op::Min(a), Op::Min(b)) => b.compare(a) == Some(std::cmp::Ordering::Less),
                        _ => false,
                    };
                    if replace {
                        *first = change;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Whether `update` can be merged into a pending `op` of the same attribute.
fn check(op: &Op, update: &Update) -> Result<(), (ErrorKind, String)> {
    let mismatch = |why: String| Err((ErrorKind::InvalidOutput, why));
    match (op, &update.op) {
        (Op::Set(_), Op::Set(_)) | (Op::Increment(_), Op::Increment(_)) => Ok(()),
        (Op::Max(a), Op::Max(b)) | (Op::Min(a), Op::Min(b)) => match a.compare(b) {
            Some(_) => Ok(()),
            None => mismatch(format!(
                "`{}` of a {} cannot be compared with the {} of another event in the batch",
                update.op.name(),
                b.type_name(),
                a.type_name()
            )),
        },
        (a, b) => mismatch(format!(
            "attribute `{}` got `{}` here but `{}` from another event in the same batch; \
             an attribute takes one kind of operation",
            update.attribute,
            b.name(),
            a.name()
        )),
    }
}

/// Folds `op` (from `event`) into `existing`; [`check`] has passed.
fn combine(existing: &mut Pending, op: Op, plugin: usize, event: usize, events: &[Event]) {
    let newer = {
        let (old, new) = (&events[existing.event], &events[event]);
        (new.timestamp_ms, event) > (old.timestamp_ms, existing.event)
    };
    let replace = match (&mut existing.op, &op) {
        (Op::Set(_), Op::Set(_)) => newer,
        (Op::Increment(sum), Op::Increment(delta)) => {
            *sum = sum.saturating_add(*delta);
            if newer {
                existing.plugin = plugin;
                existing.event = event;
            }
            false
        }
        (Op::Max(a), Op::Max(b)) => b.compare(a) == Some(std::cmp::Ordering::Greater),
        (Op::Min(a), Op::Min(b)) => b.compare(a) == Some(std::cmp::Ordering::Less),
        _ => false,
    };
    if replace {
        *existing = Pending { op, plugin, event };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::update::Value;

    fn event(id: &str, user: &str, at: i64) -> Event {
        Event {
            id: id.into(),
            user_id: user.into(),
            anonymous_id: None,
            previous_id: None,
            known_user: true,
            profile_key: None,
            kind: "page_view".into(),
            timestamp_ms: at,
            user_agent: None,
            url: None,
            properties: "{}".into(),
        }
    }

    fn up(attribute: &str, op: Op) -> Update {
        Update {
            attribute: attribute.into(),
            op,
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    /// Merges `updates[i]` as the updates of `events[i]`, in the given order.
    fn merge(events: &[Event], order: &[usize], updates: &[Vec<Update>]) -> ProfileChanges {
        let mut merger = Merger::new(events);
        let p = merger.plugin("p", "1.0.0");
        for &i in order {
            merger.add(p, i, updates[i].clone()).expect("mergeable");
        }
        merger.finish()
    }

    #[test]
    fn set_keeps_the_latest_event_whatever_the_order() {
        let events = [
            event("a", "u", 30),
            event("b", "u", 10),
            event("c", "u", 20),
        ];
        let updates: Vec<_> = ["x", "y", "z"]
            .iter()
            .map(|v| vec![up("device", Op::Set(text(v)))])
            .collect();
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let changes = merge(&events, &order, &updates);
            let change = &changes["u"]["device"];
            assert_eq!(change.op, Op::Set(text("x")), "order {order:?}");
            assert_eq!(change.provenance.event_id, "a");
            assert_eq!(change.provenance.event_time_ms, 30);
        }
    }

    #[test]
    fn set_ties_go_to_the_later_event_in_the_batch() {
        let events = [event("a", "u", 5), event("b", "u", 5)];
        let updates = vec![
            vec![up("d", Op::Set(text("first")))],
            vec![up("d", Op::Set(text("second")))],
        ];
        assert_eq!(
            merge(&events, &[1, 0], &updates)["u"]["d"].op,
            Op::Set(text("second"))
        );
    }

    #[test]
    fn increments_sum_and_max_min_keep_extremes_per_user() {
        let events = [
            event("a", "u1", 1),
            event("b", "u2", 2),
            event("c", "u1", 3),
            event("d", "u1", 2),
        ];
        let updates: Vec<_> = events
            .iter()
            .map(|e| {
                vec![
                    up("views", Op::Increment(2)),
                    up("last", Op::Max(Value::Timestamp(e.timestamp_ms))),
                    up("first", Op::Min(Value::Timestamp(e.timestamp_ms))),
                ]
            })
            .collect();
        let changes = merge(&events, &[0, 1, 2, 3], &updates);
        let u1 = &changes["u1"];
        assert_eq!(u1["views"].op, Op::Increment(6));
        assert_eq!(u1["views"].provenance.event_id, "c");
        assert_eq!(u1["last"].op, Op::Max(Value::Timestamp(3)));
        assert_eq!(u1["last"].provenance.event_id, "c");
        assert_eq!(u1["first"].op, Op::Min(Value::Timestamp(1)));
        assert_eq!(u1["first"].provenance.event_id, "a");
        assert_eq!(changes["u2"]["views"].op, Op::Increment(2));
        assert_eq!(changes.len(), 2);
    }

    #[test]
    fn increments_saturate_instead_of_wrapping() {
        let events = [event("a", "u", 1), event("b", "u", 2)];
        let updates = vec![
            vec![up("n", Op::Increment(i64::MAX))],
            vec![up("n", Op::Increment(5))],
        ];
        assert_eq!(
            merge(&events, &[0, 1], &updates)["u"]["n"].op,
            Op::Increment(i64::MAX)
        );
    }

    #[test]
    fn refuses_mixed_operations_and_types_for_that_event_only() {
        let events = [event("a", "u", 1), event("b", "u", 2), event("c", "u", 3)];
        let mut merger = Merger::new(&events);
        let p = merger.plugin("p", "1.0.0");
        merger
            .add(
                p,
                0,
                vec![
                    up("n", Op::Increment(1)),
                    up("m", Op::Max(Value::Integer(1))),
                ],
            )
            .expect("first");
        let mixed = merger.add(
            p,
            1,
            vec![
                up("ok", Op::Set(text("kept?"))),
                up("n", Op::Set(Value::Integer(9))),
            ],
        );
        assert_eq!(
            mixed.expect_err("set after increment").0,
            ErrorKind::InvalidOutput
        );
        let types = merger.add(p, 2, vec![up("m", Op::Max(text("z")))]);
        assert_eq!(
            types.expect_err("text vs integer").0,
            ErrorKind::InvalidOutput
        );
        let changes = merger.finish();
        // The refused event added nothing, not even its valid update.
        assert!(!changes["u"].contains_key("ok"));
        assert_eq!(changes["u"]["n"].op, Op::Increment(1));
        assert_eq!(changes["u"]["m"].op, Op::Max(Value::Integer(1)));
    }

    #[test]
    fn changes_folded_together_apply_as_the_two_in_turn() {
        use crate::model::profile::Profile;
        // Two batches of other events over the same users: every operation,
        // later and earlier times, a user and an attribute only one has.
        let events = [
            event("a1", "u", 20),
            event("a2", "v", 5),
            event("b1", "u", 10),
            event("b2", "w", 7),
        ];
        let first = merge(
            &events,
            &[0, 1],
            &[
                vec![
                    up("n", Op::Increment(2)),
                    up("hi", Op::Max(Value::Integer(5))),
                    up("lo", Op::Min(Value::Integer(5))),
                    up("s", Op::Set(text("newer"))),
                ],
                vec![up("n", Op::Increment(1))],
                vec![],
                vec![],
            ],
        );
        let second = merge(
            &events,
            &[2, 3],
            &[
                vec![],
                vec![],
                vec![
                    up("n", Op::Increment(3)),
                    up("hi", Op::Max(Value::Integer(9))),
                    up("lo", Op::Min(Value::Integer(8))),
                    up("s", Op::Set(text("older"))),
                    up("only", Op::Set(text("b"))),
                ],
                vec![up("n", Op::Increment(4))],
            ],
        );
        let mut stored = Profile::new("u", 1);
        stored.apply(
            &BTreeMap::from([(
                "lo".to_owned(),
                merge(
                    &events,
                    &[0],
                    &[
                        vec![up("lo", Op::Min(Value::Integer(6)))],
                        vec![],
                        vec![],
                        vec![],
                    ],
                )["u"]["lo"]
                    .clone(),
            )]),
            1,
        );
        let in_turn = |user: &str| {
            let mut p = stored.clone();
            for changes in [&first, &second] {
                if let Some(c) = changes.get(user) {
                    p.apply(c, 9);
                }
            }
            p.attributes
        };
        let mut folded = first.clone();
        fold_later(&mut folded, second.clone()).expect("the same operations");
        for user in ["u", "v", "w"] {
            let mut p = stored.clone();
            if let Some(c) = folded.get(user) {
                p.apply(c, 9);
            }
            assert_eq!(p.attributes, in_turn(user), "user {user}");
        }
        assert_eq!(folded["u"]["n"].op, Op::Increment(5));
        assert_eq!(folded["u"]["n"].provenance.event_id, "b1");
        assert_eq!(folded["u"]["s"].op, Op::Set(text("newer")));

        // An attribute with another operation in each cannot fold.
        let other = merge(
            &events,
            &[2],
            &[
                vec![],
                vec![],
                vec![up("n", Op::Set(Value::Integer(0)))],
                vec![],
            ],
        );
        let mut kept = first.clone();
        let back = fold_later(&mut kept, other.clone()).expect_err("set after increment");
        assert_eq!((kept, back), (first, other));
    }
}
