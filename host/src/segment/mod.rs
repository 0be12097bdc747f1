//! Segments: live audiences defined by a condition over profile attributes.
//!
//! A definition's condition is written either as a CEL expression
//! ([`cel`]: `"page_views >= 5 && device_type == 'mobile'"`) or as a JSON
//! tree ([`json`]: `{"and": [{"gte": ["page_views", 5]}, …]}`); both become
//! one [`Condition`], which says which attributes it reads (so a commit
//! evaluates only the segments a change can affect), whether a profile
//! satisfies it at a given time, and when a time-relative condition comes
//! due with no new event.
//!
//! [`catalog`] keeps the definitions (stored by name, live in every
//! process); the rest is pure data and functions, with no I/O.

pub mod catalog;
pub mod cel;
mod condition;
pub mod json;
mod set;

pub use catalog::{
    Backfill, BackfillPage, Definition, LiveSegments, SegmentStore, Segments, Stored,
};
pub use condition::{Attributes, Comparison, Condition, Operand};
pub use set::{MembershipChanges, Segment, SegmentSet};

/// A definition that does not parse, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at {at})")]
pub struct DefinitionError {
    pub message: String,
    pub at: Position,
}

/// Where in a definition a fault is.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// In an expression: line and column (of characters), from 1.
    Text { line: usize, column: usize },
    /// In a JSON tree: the JSON pointer (RFC 6901) of the faulty node,
    /// relative to the condition.
    Json { pointer: String },
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Text { line, column } => write!(f, "line {line}, column {column}"),
            Position::Json { pointer } if pointer.is_empty() => f.write_str("the condition"),
            Position::Json { pointer } => write!(f, "{pointer}"),
        }
    }
}

impl Condition {
    /// Reads a definition's `condition`: an expression string or a JSON tree.
    pub fn parse(condition: &serde_json::Value) -> Result<Condition, DefinitionError> {
        match condition {
            serde_json::Value::String(expression) => cel::parse(expression),
            tree => json::parse(tree),
        }
    }
}

/// An attribute name a condition can read: what plugins may name one.
fn is_attribute_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// RFC 3339 text as milliseconds since the Unix epoch.
fn timestamp(text: &str) -> Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 timestamp: {e}"))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("{text:?} is out of range"))
}

/// Durations as CEL writes them (`"168h"`, `"1h30m"`, `"1.5s"`, `"-90m"`;
/// units `h`, `m`, `s`, `ms`, `us`, `ns`), and `d` for 24 hours, in whole
/// milliseconds (finer parts are dropped).
pub mod duration {
    const UNITS: [(&str, f64); 7] = [
        // Longest first, so `ms` is not read as `m` followed by `s`.
        ("ms", 1.0),
        ("us", 1e-3),
        ("ns", 1e-6),
        ("d", 86_400_000.0),
        ("h", 3_600_000.0),
        ("m", 60_000.0),
        ("s", 1_000.0),
    ];

    pub fn parse(text: &str) -> Result<i64, String> {
        let bad = |why: &str| {
            format!("{text:?} is not a duration ({why}); write e.g. \"168h\", \"7d\" or \"1h30m\"")
        };
        let (sign, mut rest) = match text.as_bytes().first() {
            Some(b'-') => (-1.0, &text[1..]),
            Some(b'+') => (1.0, &text[1..]),
            _ => (1.0, text),
        };
        if rest.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut total = 0.0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| bad("a number has no unit"))?;
            let number: f64 = rest[..digits]
                .parse()
                .map_err(|_| bad("a unit has no number before it"))?;
            rest = &rest[digits..];
            let (unit, scale) = UNITS
                .iter()
                .find(|(unit, _)| rest.starts_with(unit))
                .ok_or_else(|| bad("units are d, h, m, s, ms, us and ns"))?;
            total += number * scale;
            rest = &rest[unit.len()..];
        }
        let ms = (sign * total).trunc();
        if ms.abs() >= i64::MAX as f64 {
            return Err(bad("it is out of range"));
        }
        Ok(ms as i64)
    }

    /// A whole number of milliseconds in the largest unit that divides it:
    /// `-604800000` is `"-7d"`.
    pub fn format(ms: i64) -> String {
        let sign = if ms < 0 { "-" } else { "" };
        let magnitude = ms.unsigned_abs();
        let (unit, size) = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ]
        .into_iter()
        .find(|(_, size)| magnitude > 0 && magnitude.is_multiple_of(*size))
        .unwrap_or(("ms", 1));
        format!("{sign}{}{unit}", magnitude / size)
    }
}

#[cfg(test)]
mod tests;
