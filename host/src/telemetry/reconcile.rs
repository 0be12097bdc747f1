//! The series of the archive role's scheduled reconcile
//! (`reconcile.interval_secs`): what the last run found, and when it ran.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DiscrepancyLabels {
    /// `postgres` (against the replay of the archive) or `redis` (against
    /// PostgreSQL).
    pub store: String,
    pub attribute: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// `done` or `failed`.
    pub outcome: &'static str,
}

/// The scheduled reconcile's series.
#[derive(Debug)]
pub struct ReconcileMetrics {
    /// What the last finished run found, by store and attribute; a pair it
    /// did not find is absent.
    pub discrepancies: Family<DiscrepancyLabels, Gauge>,
    /// Profiles the last finished run checked.
    pub checked: Gauge,
    /// When the last finished run ended (seconds since the Unix epoch).
    pub last_run: Gauge<f64, AtomicU64>,
    pub runs: Family<RunLabels, Counter>,
}

impl ReconcileMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            discrepancies: Family::default(),
            checked: Gauge::default(),
            last_run: Gauge::default(),
            runs: Family::default(),
        };
        registry.register(
            "reconcile_discrepancies",
            "Attributes the last scheduled reconcile found wrong, by store and attribute",
            metrics.discrepancies.clone(),
        );
        registry.register(
            "reconcile_checked_profiles",
            "Profiles the last scheduled reconcile checked",
            metrics.checked.clone(),
        );
        registry.register(
            "reconcile_last_run_timestamp_seconds",
            "When the last scheduled reconcile finished",
            metrics.last_run.clone(),
        );
        registry.register(
            "reconcile_runs",
            "Scheduled reconcile runs, by outcome (done, failed)",
            metrics.runs.clone(),
        );
        metrics
    }

    /// A finished run: `found` counts by (store, attribute).
    pub fn finished(&self, checked: u64, found: &BTreeMap<(String, String), u64>, at_secs: f64) {
        self.discrepancies.clear();
        for ((store, attribute), count) in found {
            let labels = DiscrepancyLabels {
                store: store.clone(),
                attribute: attribute.clone(),
            };
            self.discrepancies
                .get_or_create(&labels)
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        self.checked.set(i64::try_from(checked).unwrap_or(i64::MAX));
        self.last_run.set(at_secs);
        self.runs
            .get_or_create(&RunLabels { outcome: "done" })
            .inc();
    }

    /// A run that could not finish (the last finished one's figures stay).
    pub fn failed(&self) {
        self.runs
            .get_or_create(&RunLabels { outcome: "failed" })
            .inc();
    }
}
