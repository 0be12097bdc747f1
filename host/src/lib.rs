//! PulseHub: real-time customer profiles, enriched by sandboxed WebAssembly
//! plugins.
//!
//! # Layout
//! Data flows one way: a source's events are decoded into the [`model`], run
//! through the [`plugin`] chain, merged, committed to the [`store`] and served
//! by the [`api`].
//!
//! - [`app`]: all the wiring: [`app::run`] builds the backends, the plugin
//!   chain and manager, the pipelines and the API server from a
//!   [`config::Config`]; `pulsehub run` calls it, tests call it in-process.
//! - [`model`]: events, attribute updates, their merge and profiles; no I/O.
//! - [`plugin`]: the sandbox runtime (manifests, loading and validating
//!   components, per-worker instances with their limits, health and
//!   quarantine) and the chain that runs every loaded plugin over a batch.
//! - [`plugin_ops`]: live plugin operations: install (validate-then-swap),
//!   rollback, remove, resume, quarantine, the registry on disk, the watched
//!   plugin directory, the audit log.
//! - [`pipeline`]: partitioned sources read into lanes; the enrich lane
//!   (decode → chain → merge → commit) and the archive lane.
//! - [`replay`]: the profiles recomputed from the archive and the timeline
//!   of plugin versions (backfill, reconcile, rebuild), page by page while
//!   the pipeline runs.
//! - [`privacy`]: privacy requests (suppress, unsuppress, delete, export)
//!   and the suppressions the lanes filter with.
//! - [`activation`]: what leaves PulseHub when profiles change: the
//!   `profile-updates` messages the commits write to an outbox, and the
//!   relay that publishes them (embedded: a log the API serves).
//! - [`segment`]: segment conditions (CEL expression or JSON tree), what
//!   they read, their evaluation and when a time-relative one comes due.
//! - [`kafka`]: the Kafka source, dead-letter sink and publisher.
//! - [`store`]: the traits behind which PostgreSQL, Redis and the embedded
//!   backend sit, and their implementations.
//! - [`telemetry`]: the Prometheus metrics of the plugins, the pipeline, the
//!   stores and the HTTP API.
//! - [`api`]: the REST API (axum) and its OpenAPI document.
//! - [`config`]: file + environment configuration (contract §6).
//! - `main.rs` and `cli`: the `pulsehub` binary, thin commands over [`app`]
//!   and the library.
//!
//! "Contract §N" in comments cites section N of `docs/contract.md`, the
//! public contracts.

pub mod activation;
pub mod api;
pub mod app;
pub mod config;
pub mod kafka;
pub mod model;
pub mod pipeline;
pub mod plugin;
pub mod plugin_ops;
pub mod privacy;
pub mod replay;
pub mod segment;
pub mod store;
pub mod telemetry;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The README's layout table and this file's layout list name every
    /// module there is, and the table names no path that is gone.
    #[test]
    fn the_layouts_match_the_tree() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
        let table: Vec<&str> = readme
            .split("## Layout")
            .nth(1)
            .expect("a Layout section")
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .collect();
        for row in &table {
            let first = row.split('|').nth(1).unwrap_or_default();
            let Some(path) = first.split('`').nth(1) else {
                continue;
            };
            assert!(
                root.join(path).exists(),
                "the README's layout names {path}, which does not exist"
            );
        }
        let lib = include_str!("lib.rs");
        for entry in std::fs::read_dir(root.join("host/src")).expect("host/src") {
            let path = entry.expect("an entry").path();
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .expect("a UTF-8 name");
            if matches!(name, "lib" | "main" | "cli") {
                continue;
            }
            let row = format!("| `host/src/{name}/` |");
            assert!(
                table.iter().any(|line| line.starts_with(&row)),
                "the README's layout has no row {row}"
            );
            assert!(
                lib.contains(&format!("//! - [`{name}`]")),
                "lib.rs's layout does not list {name}"
            );
        }
    }
}
