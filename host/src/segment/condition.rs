//! The condition tree both definition forms become, and how it is evaluated
//! against a profile's attributes at a given time.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::profile::Attribute;
use crate::model::update::Value;

/// A segment's condition over profile attributes, named by `A`: by name
/// as defined, or by a slot of a [`super::SegmentSet`], which looks each
/// attribute up once per profile for all its segments.
///
/// An attribute the profile does not have makes every comparison on it
/// false (`ne` included), so `not` of it true; a value of another type
/// compares as not equal and not ordered (integers and floats compare as
/// numbers).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition<A = String> {
    /// Every condition holds (`&&`, `and`).
    And(Vec<Condition<A>>),
    /// At least one condition holds (`||`, `or`).
    Or(Vec<Condition<A>>),
    Not(Box<Condition<A>>),
    /// The attribute compared with an operand.
    Compare {
        attribute: A,
        op: Comparison,
        operand: Operand,
    },
    /// The profile has the attribute.
    Exists {
        attribute: A,
    },
    /// The attribute equals one of the values.
    In {
        attribute: A,
        values: Vec<Value>,
    },
    /// The attribute is text that contains this text.
    Contains {
        attribute: A,
        text: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    pub const ALL: [Comparison; 6] = [
        Comparison::Eq,
        Comparison::Ne,
        Comparison::Gt,
        Comparison::Gte,
        Comparison::Lt,
        Comparison::Lte,
    ];

    /// The name the JSON form uses.
    pub fn name(self) -> &'static str {
        match self {
            Comparison::Eq => "eq",
            Comparison::Ne => "ne",
            Comparison::Gt => "gt",
            Comparison::Gte => "gte",
            Comparison::Lt => "lt",
            Comparison::Lte => "lte",
        }
    }

    /// The same comparison with its sides swapped: `5 <= x` is `x >= 5`.
    pub fn swapped(self) -> Comparison {
        match self {
            Comparison::Gt => Comparison::Lt,
            Comparison::Gte => Comparison::Lte,
            Comparison::Lt => Comparison::Gt,
            Comparison::Lte => Comparison::Gte,
            same => same,
        }
    }

    fn holds(self, ordering: Option<Ordering>) -> bool {
        match self {
            Comparison::Eq => ordering == Some(Ordering::Equal),
            Comparison::Ne => ordering != Some(Ordering::Equal),
            Comparison::Gt => ordering == Some(Ordering::Greater),
            Comparison::Gte => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
            Comparison::Lt => ordering == Some(Ordering::Less),
            Comparison::Lte => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
        }
    }
}

/// What an attribute is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Value(Value),
    /// A time relative to the clock of the evaluation: `now - duration('168h')`
    /// is an offset of -604,800,000 ms. Only ordered comparisons take one
    /// (an equality with a moving instant would hold for one millisecond).
    Now {
        offset_ms: i64,
    },
}

/// Attribute values by `A`: a profile's or a test's by name, or looked-up
/// values by slot.
pub trait Attributes<A = String> {
    fn value(&self, attribute: &A) -> Option<&Value>;
}

impl Attributes for BTreeMap<String, Attribute> {
    fn value(&self, name: &String) -> Option<&Value> {
        self.get(name).map(|attribute| &attribute.value)
    }
}

impl Attributes for BTreeMap<String, Value> {
    fn value(&self, name: &String) -> Option<&Value> {
        self.get(name)
    }
}

impl Attributes<usize> for [Option<&Value>] {
    fn value(&self, slot: &usize) -> Option<&Value> {
        self.get(*slot).copied().flatten()
    }
}

impl<A: Ord> Condition<A> {
    /// Whether the attributes satisfy the condition at `now_ms`
    /// (milliseconds since the Unix epoch).
    pub fn matches(&self, attributes: &(impl Attributes<A> + ?Sized), now_ms: i64) -> bool {
        match self {
            Condition::And(all) => all.iter().all(|c| c.matches(attributes, now_ms)),
            Condition::Or(any) => any.iter().any(|c| c.matches(attributes, now_ms)),
            Condition::Not(inner) => !inner.matches(attributes, now_ms),
            Condition::Compare {
                attribute,
                op,
                operand,
            } => attributes.value(attribute).is_some_and(|value| {
                let ordering = match operand {
                    Operand::Value(literal) => value.compare(literal),
                    Operand::Now { offset_ms } => match value {
                        Value::Timestamp(at) => Some(at.cmp(&now_ms.saturating_add(*offset_ms))),
                        _ => None,
                    },
                };
                op.holds(ordering)
            }),
            Condition::Exists { attribute } => attributes.value(attribute).is_some(),
            Condition::In { attribute, values } => {
                attributes.value(attribute).is_some_and(|value| {
                    values
                        .iter()
                        .any(|v| value.compare(v) == Some(Ordering::Equal))
                })
            }
            Condition::Contains { attribute, text } => {
                matches!(attributes.value(attribute), Some(Value::Text(value)) if value.contains(text.as_str()))
            }
        }
    }

    /// The attributes the condition reads: a change to any other attribute
    /// cannot change its result.
    pub fn attributes(&self) -> BTreeSet<&A> {
        let mut names = BTreeSet::new();
        self.visit(&mut |condition| match condition {
            Condition::Compare { attribute, .. }
            | Condition::Exists { attribute }
            | Condition::In { attribute, .. }
            | Condition::Contains { attribute, .. } => {
                names.insert(attribute);
            }
            Condition::And(_) | Condition::Or(_) | Condition::Not(_) => {}
        });
        names
    }

    /// Whether the result can change with time alone (a comparison with
    /// `now`).
    pub fn is_time_relative(&self) -> bool {
        let mut relative = false;
        self.visit(&mut |condition| {
            relative |= matches!(
                condition,
                Condition::Compare {
                    operand: Operand::Now { .. },
                    ..
                }
            );
        });
        relative
    }

    /// The earliest instant after `now_ms` at which the result may change
    /// with no change to the attributes: when a comparison with `now` flips
    /// for one of them. `None` when no such instant comes.
    pub fn due_after(
        &self,
        attributes: &(impl Attributes<A> + ?Sized),
        now_ms: i64,
    ) -> Option<i64> {
        let mut due: Option<i64> = None;
        self.visit(&mut |condition| {
            let Condition::Compare {
                attribute,
                op,
                operand: Operand::Now { offset_ms },
            } = condition
            else {
                return;
            };
            let Some(Value::Timestamp(at)) = attributes.value(attribute) else {
                return;
            };
            // `at > now + offset` holds until now reaches `at - offset`;
            // `at >= now + offset` one millisecond longer.
            let flip = at.saturating_sub(*offset_ms);
            let flip = match op {
                Comparison::Gt | Comparison::Lte => flip,
                Comparison::Gte | Comparison::Lt => flip.saturating_add(1),
                Comparison::Eq | Comparison::Ne => return,
            };
            if flip > now_ms {
                due = Some(due.map_or(flip, |due| due.min(flip)));
            }
        });
        due
    }

    /// The same condition with its attributes named another way.
    pub fn map_attributes<B>(&self, f: &mut dyn FnMut(&A) -> B) -> Condition<B> {
        let all = |all: &[Condition<A>], f: &mut dyn FnMut(&A) -> B| -> Vec<Condition<B>> {
            all.iter().map(|c| c.map_attributes(f)).collect()
        };
        match self {
            Condition::And(terms) => Condition::And(all(terms, f)),
            Condition::Or(terms) => Condition::Or(all(terms, f)),
            Condition::Not(inner) => Condition::Not(Box::new(inner.map_attributes(f))),
            Condition::Compare {
                attribute,
                op,
                operand,
            } => Condition::Compare {
                attribute: f(attribute),
                op: *op,
                operand: operand.clone(),
            },
            Condition::Exists { attribute } => Condition::Exists {
                attribute: f(attribute),
            },
            Condition::In { attribute, values } => Condition::In {
                attribute: f(attribute),
                values: values.clone(),
            },
            Condition::Contains { attribute, text } => Condition::Contains {
                attribute: f(attribute),
                text: text.clone(),
            },
        }
    }

    fn visit<'a>(&'a self, f: &mut impl FnMut(&'a Condition<A>)) {
        f(self);
        match self {
            Condition::And(all) | Condition::Or(all) => all.iter().for_each(|c| c.visit(f)),
            Condition::Not(inner) => inner.visit(f),
            _ => {}
        }
    }
}
