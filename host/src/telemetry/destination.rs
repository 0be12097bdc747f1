//! The series of destinations (webhooks): what each one was sent, how
//! many attempts failed or were retries, how far it is behind the
//! `profile-updates` stream and how long its receiver takes to answer.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::latency_histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Debug)]
pub struct DestinationMetrics {
    pub sent: Family<DestinationLabels, Counter>,
    pub failed: Family<DestinationLabels, Counter>,
    pub retried: Family<DestinationLabels, Counter>,
    pub dead_lettered: Family<DestinationLabels, Counter>,
    pub lag: Family<DestinationLabels, Gauge>,
    pub latency: Family<DestinationLabels, Histogram, fn() -> Histogram>,
}

impl DestinationMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            sent: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            dead_lettered: Family::default(),
            lag: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            "destination_messages_sent",
            "Messages a destination's receiver acknowledged (2xx), by destination",
            metrics.sent.clone(),
        );
        registry.register(
            "destination_attempts_failed",
            "Deliveries a destination's receiver refused or did not answer, by destination",
            metrics.failed.clone(),
        );
        registry.register(
            "destination_attempts_retried",
            "Deliveries sent again after a failure, by destination",
            metrics.retried.clone(),
        );
        registry.register(
            "destination_dead_letters",
            "Batches that failed every attempt of the retry schedule, by destination",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "destination_lag_seconds",
            "Age of the oldest message a destination has not received yet (0 when caught up)",
            metrics.lag.clone(),
        );
        registry.register(
            "destination_request_seconds",
            "Time a destination's receiver took to answer, by destination",
            metrics.latency.clone(),
        );
        metrics
    }

    fn labels(destination: &str) -> DestinationLabels {
        DestinationLabels {
            destination: destination.to_owned(),
        }
    }

    pub fn sent(&self, destination: &str, messages: u64) {
        self.sent
            .get_or_create(&Self::labels(destination))
            .inc_by(messages);
    }

    pub fn failed(&self, destination: &str) {
        self.failed.get_or_create(&Self::labels(destination)).inc();
    }

    pub fn retried(&self, destination: &str) {
        self.retried.get_or_create(&Self::labels(destination)).inc();
    }

    pub fn dead_lettered(&self, destination: &str) {
        self.dead_lettered
            .get_or_create(&Self::labels(destination))
            .inc();
    }

    pub fn lag(&self, destination: &str, lag: Duration) {
        self.lag
            .get_or_create(&Self::labels(destination))
            .set(i64::try_from(lag.as_secs()).unwrap_or(i64::MAX));
    }

    pub fn latency(&self, destination: &str, took: Duration) {
        self.latency
            .get_or_create(&Self::labels(destination))
            .observe(took.as_secs_f64());
    }

    /// Drops a deleted destination's series.
    pub fn forget(&self, destination: &str) {
        let labels = Self::labels(destination);
        self.sent.remove(&labels);
        self.failed.remove(&labels);
        self.retried.remove(&labels);
        self.dead_lettered.remove(&labels);
        self.lag.remove(&labels);
        self.latency.remove(&labels);
    }
}
