//! PulseHub: real-time customer profiles, enriched by sandboxed WebAssembly
//! plugins.
//!
//! # Layout
//! Data flows one way: a source's events are decoded into the [`model`], run
//! through the [`plugin`] chain, merged, committed to the [`store`] and served
//! by the [`api`].
//!
//! - [`model`]: events, attribute updates, their merge and profiles; no I/O.
//! - [`plugin`]: the sandbox runtime (manifests, loading and validating
//!   components, per-worker instances with their limits, health and
//!   quarantine) and the chain that runs every loaded plugin over a batch.
//! - [`plugin_ops`]: live plugin operations: install (validate-then-swap),
//!   rollback, remove, resume, quarantine, the registry on disk, the watched
//!   plugin directory, the audit log.
//! - [`pipeline`]: partitioned sources read into lanes; the enrich lane
//!   (decode → chain → merge → commit) and the archive lane.
//! - [`kafka`]: the Kafka source, dead-letter sink and publisher.
//! - [`store`]: the traits behind which PostgreSQL, Redis and the embedded
//!   backend sit, and their implementations.
//! - [`telemetry`]: the Prometheus metrics of the plugins, the pipeline, the
//!   stores and the HTTP API.
//! - [`api`]: the REST API (axum) and its OpenAPI document.
//! - [`config`]: file + environment configuration (contract §6).
//! - `main.rs` and `cli`: the `pulsehub` binary.
//!
//! "Contract §N" in comments cites section N of `docs/contract.md`, the
//! public contracts.

pub mod api;
pub mod app;
pub mod config;
pub mod kafka;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod plugin_ops;
pub mod store;
pub mod telemetry;
