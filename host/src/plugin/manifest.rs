//! The plugin manifest (`NAME.toml`, contract §2), parsed and validated.
//!
//! Validation happens before any component is compiled, and every error names
//! the key that is wrong, so an operator can fix a manifest from the message
//! alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

/// Longest plugin name, attribute name or event kind the host accepts.
pub const MAX_NAME_LEN: usize = 64;

/// Event fields a plugin can ask for with the manifest's `fields` key.
pub const EVENT_FIELDS: [&str; 5] = ["id", "user_id", "user_agent", "url", "properties"];

/// A validated plugin manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: semver::Version,
    pub description: String,
    /// Event kinds the plugin receives.
    pub events: Subscription,
    /// The only attributes the plugin may change.
    pub writes: BTreeSet<String>,
    /// The event fields the plugin reads (an extension of contract §2: the
    /// optional `fields` key). Fields not listed reach the plugin empty, which
    /// saves copying strings the plugin never looks at. Absent: every field.
    pub fields: FieldMask,
    pub limits: ManifestLimits,
    /// The `[config]` table, handed to `init`.
    pub config: Vec<(String, String)>,
}

/// Which event kinds reach a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    All,
    Kinds(BTreeSet<String>),
}

impl Subscription {
    pub fn matches(&self, kind: &str) -> bool {
        match self {
            Subscription::All => true,
            Subscription::Kinds(kinds) => kinds.contains(kind),
        }
    }
}

/// Which optional event fields a plugin is handed. `kind` and the timestamp
/// are always handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldMask {
    pub id: bool,
    pub user_id: bool,
    pub user_agent: bool,
    pub url: bool,
    pub properties: bool,
}

impl FieldMask {
    pub const ALL: FieldMask = FieldMask {
        id: true,
        user_id: true,
        user_agent: true,
        url: true,
        properties: true,
    };

    /// The names of the fields handed over, in [`EVENT_FIELDS`] order.
    pub fn names(&self) -> Vec<&'static str> {
        let on = [
            self.id,
            self.user_id,
            self.user_agent,
            self.url,
            self.properties,
        ];
        EVENT_FIELDS
            .iter()
            .zip(on)
            .filter(|(_, on)| *on)
            .map(|(name, _)| *name)
            .collect()
    }
}

/// The optional `[limits]` table; the host caps both values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManifestLimits {
    pub memory_mb: Option<u32>,
    pub timeout_ms: Option<u32>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("manifest is not valid TOML or has a wrong key: {0}")]
    Syntax(String),
    #[error("manifest key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    events: Vec<String>,
    writes: Vec<String>,
    fields: Option<Vec<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    memory_mb: Option<u32>,
    timeout_ms: Option<u32>,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        text.parse()
    }
}

impl std::str::FromStr for Manifest {
    type Err = ManifestError;

    fn from_str(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_owned()))?;
        validate(raw)
    }
}

/// Checks a plugin name as the manifest's `name` key requires: `[a-z0-9-]`,
/// 1 to [`MAX_NAME_LEN`] characters.
pub fn check_name(name: &str) -> Result<(), ManifestError> {
    check_identifier("name", name, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
    })
}

/// Checks an attribute name as the manifest's `writes` key requires:
/// `[a-z0-9_]`, 1 to [`MAX_NAME_LEN`] characters.
pub fn check_attribute(attribute: &str) -> Result<(), ManifestError> {
    check_identifier("writes", attribute, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    })
}

fn validate(raw: RawManifest) -> Result<Manifest, ManifestError> {
    check_name(&raw.name)?;
    let version = semver::Version::parse(&raw.version).map_err(|e| {
        invalid(
            "version",
            format!("{:?} is not a semantic version: {e}", raw.version),
        )
    })?;

    let events = if raw.events.iter().any(|e| e == "*") {
        if raw.events.len() > 1 {
            return Err(invalid(
                "events",
                "\"*\" already means every kind; list nothing beside it",
            ));
        }
        Subscription::All
    } else if raw.events.is_empty() {
        return Err(invalid(
            "events",
            "must list at least one event kind, or \"*\"",
        ));
    } else {
        for kind in &raw.events {
            check_identifier("events", kind, |c| !c.is_control() && !c.is_whitespace())?;
        }
        Subscription::Kinds(raw.events.into_iter().collect())
    };

    if raw.writes.is_empty() {
        return Err(invalid("writes", "must list at least one attribute"));
    }
    let mut writes = BTreeSet::new();
    for attribute in raw.writes {
        check_attribute(&attribute)?;
        if !writes.insert(attribute.clone()) {
            return Err(invalid("writes", format!("{attribute:?} is listed twice")));
        }
    }

    let fields = match raw.fields {
        None => FieldMask::ALL,
        Some(list) => field_mask(&list)?,
    };

    let limits = ManifestLimits {
        memory_mb: positive("limits.memory-mb", raw.limits.memory_mb)?,
        timeout_ms: positive("limits.timeout-ms", raw.limits.timeout_ms)?,
    };

    let mut config = Vec::with_capacity(raw.config.len());
    for (key, value) in raw.config {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(invalid(
                    "config",
                    format!(
                        "`{key}` must be a string, number or boolean, not a {}",
                        other.type_str()
                    ),
                ));
            }
        };
        config.push((key, text));
    }

    Ok(Manifest {
        name: raw.name,
        version,
        description: raw.description,
        events,
        writes,
        fields,
        limits,
        config,
    })
}

fn check_identifier(
    key: &'static str,
    value: &str,
    allowed: impl Fn(char) -> bool,
) -> Result<(), ManifestError> {
    if value.is_empty() || value.len() > MAX_NAME_LEN {
        return Err(invalid(
            key,
            format!("{value:?} must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        let rule = match key {
            "name" => " (allowed: a-z, 0-9 and -)",
            "writes" => " (allowed: a-z, 0-9 and _)",
            _ => "",
        };
        return Err(invalid(key, format!("{value:?} contains {bad:?}{rule}")));
    }
    Ok(())
}

fn field_mask(list: &[String]) -> Result<FieldMask, ManifestError> {
    let mut mask = FieldMask {
        id: false,
        user_id: false,
        user_agent: false,
        url: false,
        properties: false,
    };
    for field in list {
        let slot = match field.as_str() {
            "id" => &mut mask.id,
            "user_id" => &mut mask.user_id,
            "user_agent" => &mut mask.user_agent,
            "url" => &mut mask.url,
            "properties" => &mut mask.properties,
            other => {
                return Err(invalid(
                    "fields",
                    format!(
                        "unknown event field {other:?} (known: {})",
                        EVENT_FIELDS.join(", ")
                    ),
                ));
            }
        };
        *slot = true;
    }
    Ok(mask)
}

fn positive(key: &'static str, value: Option<u32>) -> Result<Option<u32>, ManifestError> {
    match value {
        Some(0) => Err(invalid(key, "must be greater than 0")),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "device-classifier"
        version = "1.2.0"
        description = "Classifies devices."
        events = ["*"]
        writes = ["device_type", "os_family"]
        fields = ["user_agent"]

        [limits]
        memory-mb = 16
        timeout-ms = 20

        [config]
        cache-size = "4096"
        strict = true
    "#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        text.parse()
    }

    fn key_of(err: ManifestError) -> &'static str {
        match err {
            ManifestError::Invalid { key, .. } => key,
            other => panic!("expected an invalid key, got {other}"),
        }
    }

    #[test]
    fn accepts_the_contract_example() {
        let m = parse(GOOD).expect("valid manifest");
        assert_eq!(m.name, "device-classifier");
        assert_eq!(m.version, semver::Version::new(1, 2, 0));
        assert_eq!(m.events, Subscription::All);
        assert!(m.writes.contains("os_family"));
        assert!(m.fields.user_agent && !m.fields.url && !m.fields.id);
        assert_eq!(m.fields.names(), ["user_agent"]);
        assert_eq!(m.limits.memory_mb, Some(16));
        assert_eq!(
            m.config,
            vec![
                ("cache-size".into(), "4096".into()),
                ("strict".into(), "true".into())
            ]
        );
    }

    #[test]
    fn fields_default_to_all() {
        let m = parse(&GOOD.replace("fields = [\"user_agent\"]", "")).expect("valid");
        assert_eq!(m.fields, FieldMask::ALL);
    }

    #[test]
    fn names_the_bad_key() {
        let cases = [
            (
                GOOD.replace("device-classifier", "Device_Classifier"),
                "name",
            ),
            (GOOD.replace("\"1.2.0\"", "\"1.2\""), "version"),
            (GOOD.replace("events = [\"*\"]", "events = []"), "events"),
            (
                GOOD.replace("events = [\"*\"]", "events = [\"*\", \"click\"]"),
                "events",
            ),
            (
                GOOD.replace("[\"device_type\", \"os_family\"]", "[]"),
                "writes",
            ),
            (GOOD.replace("\"os_family\"]", "\"device_type\"]"), "writes"),
            (GOOD.replace("\"os_family\"]", "\"OS family\"]"), "writes"),
            (GOOD.replace("[\"user_agent\"]", "[\"cookies\"]"), "fields"),
            (
                GOOD.replace("memory-mb = 16", "memory-mb = 0"),
                "limits.memory-mb",
            ),
            (
                GOOD.replace("strict = true", "nested = { a = 1 }"),
                "config",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(key_of(parse(&text).expect_err(key)), key, "{text}");
        }
    }

    #[test]
    fn refuses_unknown_and_missing_keys() {
        let unknown = parse(&format!("colour = \"red\"\n{GOOD}")).expect_err("unknown key");
        assert!(unknown.to_string().contains("colour"), "{unknown}");
        let missing = parse(&GOOD.replace("writes = [\"device_type\", \"os_family\"]", ""))
            .expect_err("missing key");
        assert!(missing.to_string().contains("writes"), "{missing}");
        let typo = parse(&GOOD.replace("timeout-ms", "timeout_ms")).expect_err("typo");
        assert!(typo.to_string().contains("timeout_ms"), "{typo}");
    }

    #[test]
    fn subscription_matches_kinds() {
        let m = parse(&GOOD.replace("[\"*\"]", "[\"page_view\", \"click\"]")).expect("valid");
        assert!(m.events.matches("click"));
        assert!(!m.events.matches("purchase"));
    }
}
