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
//! - [`profile`]: a user's profile with per-attribute provenance, and how
//!   merged changes apply to it.
//! - [`store`]: the traits behind which PostgreSQL, Redis, Kafka and the
//!   embedded backends sit, and their implementations.
//! - [`source`]: partitioned logs read in batches into parallel lanes.
//! - [`kafka`]: the Kafka source, dead-letter sink and publisher.
//! - [`pipeline`]: decode → plugin chain → merge → commit, per lane.
//! - [`manager`]: live plugin operations: the registry on disk,
//!   validate-then-swap, rollback, quarantine, the watched plugin directory,
//!   the audit log.
//! - [`metrics`]: the Prometheus metrics of the plugins, the pipeline, the
//!   stores and the HTTP API.
//! - [`api`]: the REST API (axum).
//! - [`config`]: file + environment configuration (contract §6).
//! - `main.rs` and `cli`: the `pulsehub` binary.
//!
//! "Contract §N" in comments cites section N of `docs/contract.md`, the
//! public contracts.

pub mod api;
pub mod chain;
pub mod config;
pub mod event;
pub mod kafka;
pub mod manager;
pub mod merge;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod profile;
pub mod source;
pub mod store;
pub mod update;
