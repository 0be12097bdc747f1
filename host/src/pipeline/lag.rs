//! `pulsehub_consumer_lag`: how far each partition's consumer is behind.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::source::Source;
use crate::telemetry::{Metrics, PipelineRole};

/// How often a pipeline asks its source how far behind it is.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Sets `pulsehub_consumer_lag` from [`Source::lag`] every [`LAG_EVERY`]
/// until `stop`, and removes the series of partitions the source no longer
/// reads. When the source cannot tell (the broker is away), the last values
/// stay.
pub(super) async fn report_lag(
    role: PipelineRole,
    source: Arc<dyn Source>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut shown: Vec<i32> = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(LAG_EVERY) => {}
        }
        // The source may ask the broker: off the async workers.
        let asked = source.clone();
        let lag = match tokio::task::spawn_blocking(move || asked.lag()).await {
            Ok(Ok(lag)) => lag,
            Ok(Err(error)) => {
                tracing::debug!(role = role.as_str(), "consumer lag unknown: {error:#}");
                continue;
            }
            Err(error) => {
                tracing::warn!(
                    role = role.as_str(),
                    "reading the consumer lag failed: {error}"
                );
                continue;
            }
        };
        for &partition in &shown {
            if !lag.iter().any(|&(p, _)| p == partition) {
                metrics.partition_released(role, partition);
            }
        }
        for &(partition, behind) in &lag {
            metrics.consumer_lag(role, partition, behind);
        }
        shown = lag.into_iter().map(|(partition, _)| partition).collect();
    }
    for partition in shown {
        metrics.partition_released(role, partition);
    }
}
