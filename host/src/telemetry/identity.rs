//! The series of identity resolution: links refused by the guards, merges
//! made, and events dropped for a suppressed person.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::PipelineRole;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `blocked`, `unique`, `limit` or `merge_cap`.
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SuppressedLabels {
    /// The pipeline role that dropped them: `enrich` or `archive`.
    pub role: &'static str,
}

#[derive(Debug)]
pub struct IdentityMetrics {
    pub refused: Family<RefusalLabels, Counter>,
    pub merges: Counter,
    pub suppressed: Family<SuppressedLabels, Counter>,
}

impl IdentityMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            refused: Family::default(),
            merges: Counter::default(),
            suppressed: Family::default(),
        };
        registry.register(
            "identity_links_refused",
            "Identifiers not linked to a profile, by reason (blocked, unique, limit, merge_cap)",
            metrics.refused.clone(),
        );
        registry.register(
            "identity_merges",
            "Profiles merged into another one",
            metrics.merges.clone(),
        );
        registry.register(
            "privacy_suppressed_events",
            "Events of suppressed persons dropped before any plugin, by pipeline role",
            metrics.suppressed.clone(),
        );
        metrics
    }

    pub fn suppressed(&self, role: PipelineRole, count: u64) {
        if count > 0 {
            self.suppressed
                .get_or_create(&SuppressedLabels {
                    role: role.as_str(),
                })
                .inc_by(count);
        }
    }

    pub fn refused(&self, reason: &'static str, count: u64) {
        if count > 0 {
            self.refused
                .get_or_create(&RefusalLabels { reason })
                .inc_by(count);
        }
    }
}
