//! The plugin runtime: WebAssembly components under `pulsehub:plugin@0.1.0`
//! or `@0.2.0`, side by side, run on wasmtime inside a sandbox.
//!
//! - [`Runtime`]: one per process; owns the wasmtime engine, the linker and
//!   the epoch ticker that enforces CPU-time budgets, and loads plugins.
//! - [`Plugin`]: one loaded, validated plugin version, compiled once and
//!   pre-linked, shared by every worker.
//! - [`PluginInstance`]: one worker's live instance of a plugin, reused
//!   across batches and rebuilt after any trap.
//! - [`chain`]: every loaded plugin run over a batch of events, swappable
//!   atomically between batches.

mod bindings;
pub mod chain;
mod error;
#[cfg(test)]
pub(crate) mod fixtures;
mod health;
mod instance;
mod limits;
mod manifest;
mod runtime;

pub use error::{ErrorKind, LoadError, PluginError};
pub use health::{Health, QuarantinePolicy, Totals, Trip};
pub use instance::PluginInstance;
pub use limits::{HostLimits, PluginLimits};
pub use manifest::{
    EVENT_FIELDS, FieldMask, MAX_NAME_LEN, Manifest, ManifestError, ManifestLimits, Subscription,
    check_attribute, check_name,
};
pub use runtime::{Plugin, Runtime, RuntimeError, World};
