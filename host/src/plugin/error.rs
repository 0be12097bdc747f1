//! What can go wrong with a plugin: refusing to load it, or failing on one event.

use std::fmt;

/// Why a plugin package was refused. Nothing that runs changes when this happens.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Manifest(#[from] super::ManifestError),
    #[error("plugin {plugin}: cannot read component {path}: {reason}")]
    Read {
        plugin: String,
        path: String,
        reason: String,
    },
    #[error("plugin {plugin}: not a valid WebAssembly component: {reason}")]
    Component { plugin: String, reason: String },
    #[error(
        "plugin {plugin}: the component does not target a plugin world (pulsehub:plugin/enricher@0.1.0 or @0.2.0): {reason}"
    )]
    World { plugin: String, reason: String },
    #[error("plugin {plugin} {version}: init failed: {reason}")]
    Init {
        plugin: String,
        version: String,
        reason: String,
    },
    #[error(
        "plugin {plugin}: attribute `{attribute}` is already written by plugin {owner}; an attribute has one owner"
    )]
    OwnershipClash {
        plugin: String,
        attribute: String,
        owner: String,
    },
}

/// What kind of failure a plugin had on one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access...).
    Trap,
    /// The event used up its CPU-time budget.
    Timeout,
    /// The instance asked for more linear memory than its limit.
    Memory,
    /// Too many updates, or a string longer than the host allows.
    OutputLimit,
    /// An update to an attribute the manifest does not list in `writes`.
    UndeclaredWrite,
    /// An update the host cannot apply: a NaN, `max`/`min` across value types,
    /// or two operations on one attribute in one batch.
    InvalidOutput,
    /// The plugin returned `invalid-event` for the event.
    InvalidEvent,
    /// The plugin returned `internal`, or could not be re-instantiated.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Trap,
        ErrorKind::Timeout,
        ErrorKind::Memory,
        ErrorKind::OutputLimit,
        ErrorKind::UndeclaredWrite,
        ErrorKind::InvalidOutput,
        ErrorKind::InvalidEvent,
        ErrorKind::Internal,
    ];

    /// The kind's name in dead-letter headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Trap => "trap",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::OutputLimit => "output-limit",
            ErrorKind::UndeclaredWrite => "undeclared-write",
            ErrorKind::InvalidOutput => "invalid-output",
            ErrorKind::InvalidEvent => "invalid-event",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A name that is not one of [`ErrorKind::as_str`]'s.
#[derive(Debug, thiserror::Error)]
#[error("unknown plugin error kind `{0}`")]
pub struct UnknownErrorKind(pub String);

impl std::str::FromStr for ErrorKind {
    type Err = UnknownErrorKind;

    fn from_str(name: &str) -> Result<ErrorKind, UnknownErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownErrorKind(name.to_owned()))
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plugin's failure on one event: everything the dead-letter queue needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} {version}: event {event_id}: {kind}: {message}")]
pub struct PluginError {
    pub plugin: String,
    pub version: String,
    pub event_id: String,
    pub kind: ErrorKind,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.as_str().parse::<ErrorKind>().ok(), Some(kind));
        }
        assert!("segfault".parse::<ErrorKind>().is_err());
    }
}
