//! The enrich and archive pipelines' series: records per partition, lag,
//! batch sizes, commit time and dead letters.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{Metrics, batch_size_histogram, latency_histogram};
use crate::pipeline::dead_letter::DeadReason;

/// Which pipeline a series belongs to: the `role` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PipelineRole {
    Enrich,
    Archive,
}

impl PipelineRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineRole::Enrich => "enrich",
            PipelineRole::Archive => "archive",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// `enrich` or `archive`.
    pub role: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub role: &'static str,
    pub partition: i32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// `bad_event` or `plugin_error`.
    pub reason: &'static str,
}

/// The enrich and archive pipelines' series.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Records handled (committed or archived), per partition.
    pub events_consumed: Family<PartitionLabels, Counter>,
    /// Records behind the end of each partition this process reads.
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    /// Records per batch a lane received.
    pub batch_events: Family<RoleLabels, Histogram, fn() -> Histogram>,
    /// One attempt at committing a batch to the profile store.
    pub commit_duration: Histogram,
    /// Dead letters written (acknowledged by the sink), by reason.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
}

impl PipelineMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            events_consumed: Family::default(),
            consumer_lag: Family::default(),
            batch_events: Family::new_with_constructor(batch_size_histogram),
            commit_duration: latency_histogram(),
            dead_letters: Family::default(),
        };
        registry.register(
            "events_consumed",
            "Records a pipeline handled (committed or archived), per partition",
            metrics.events_consumed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the end of each partition this process reads",
            metrics.consumer_lag.clone(),
        );
        registry.register(
            "batch_events",
            "Records per batch a lane received",
            metrics.batch_events.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "One attempt at committing an enriched batch with its offsets to the profile store",
            metrics.commit_duration.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters written, by reason (bad_event, plugin_error)",
            metrics.dead_letters.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// A lane received a batch of `events` records.
    pub fn batch_received(&self, role: PipelineRole, events: usize) {
        self.pipeline
            .batch_events
            .get_or_create(&RoleLabels {
                role: role.as_str(),
            })
            .observe(events as f64);
    }

    /// `events` records of `partition` were handled.
    pub fn events_consumed(&self, role: PipelineRole, partition: i32, events: u64) {
        self.pipeline
            .events_consumed
            .get_or_create(&PartitionLabels {
                role: role.as_str(),
                partition,
            })
            .inc_by(events);
    }

    /// `partition` is `lag` records behind its end.
    pub fn consumer_lag(&self, role: PipelineRole, partition: i32, lag: i64) {
        self.pipeline
            .consumer_lag
            .get_or_create(&PartitionLabels {
                role: role.as_str(),
                partition,
            })
            .set(lag);
    }

    /// This process no longer reads `partition`: its lag series goes.
    pub fn partition_released(&self, role: PipelineRole, partition: i32) {
        self.pipeline.consumer_lag.remove(&PartitionLabels {
            role: role.as_str(),
            partition,
        });
    }

    /// One attempt at committing a batch, successful or not.
    pub fn commit_attempt(&self, elapsed: Duration) {
        self.pipeline.commit_duration.observe(elapsed.as_secs_f64());
    }

    /// Dead letters the sink acknowledged.
    pub fn dead_letters<'a>(&self, reasons: impl IntoIterator<Item = &'a DeadReason>) {
        for reason in reasons {
            let reason = match reason {
                DeadReason::BadEvent { .. } => "bad_event",
                DeadReason::PluginError { .. } => "plugin_error",
            };
            self.pipeline
                .dead_letters
                .get_or_create(&DeadLetterLabels { reason })
                .inc();
        }
    }
}
