//! PulseHub: real-time customer profiles, enriched by sandboxed WebAssembly
//! plugins.
//!
//! # Layout
//! - [`event`]: the event as PulseHub sees it, and its decoding from the wire
//!   format (contract §3).
//! - [`plugin`]: the plugin runtime: manifests, loading and validating
//!   components, per-worker instances with their sandbox limits (memory, CPU
//!   time, output size), and the errors a plugin can cause.
//! - [`chain`]: every loaded plugin run over a batch of events, swappable
//!   atomically between batches.
//! - [`update`]: attribute values and the operations plugins apply to them.
//! - [`merge`]: the commutative updates of a batch folded into one change per
//!   user and attribute, with provenance.
//! - `main.rs` and `cli`: the `pulsehub` binary.

pub mod chain;
pub mod event;
pub mod merge;
pub mod plugin;
pub mod update;
