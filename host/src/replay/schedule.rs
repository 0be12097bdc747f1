//! The archive role's scheduled reconcile (`reconcile.interval_secs`): a
//! random sample of profiles checked against the archive every interval,
//! reported, never repaired, and exported as the `pulsehub_reconcile_*`
//! series for the alert rule and the dashboard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::check::Scope;
use super::{Repair, Replay};
use crate::config::Config;
use crate::telemetry::Metrics;

/// Runs a check every `reconcile.interval_secs` until `stop`. Each run
/// opens what it reads afresh, so plugin versions uploaded meanwhile are
/// found in the registry.
pub async fn run_scheduled(config: Config, metrics: Arc<Metrics>, stop: CancellationToken) {
    let interval = Duration::from_secs(config.reconcile.interval_secs);
    let sample = config.reconcile.sample;
    tracing::info!(
        interval_secs = interval.as_secs(),
        sample,
        "the scheduled reconcile is on"
    );
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let started = Instant::now();
        let outcome = async {
            let mut replay = Replay::open(&config, "the scheduled reconcile").await?;
            replay
                .check(Scope::Sample(sample), Repair::No, |_| {})
                .await
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = outcome => outcome,
        };
        match outcome {
            Ok(report) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |since| since.as_secs_f64());
                metrics.reconcile.finished(report.checked, &report.by, now);
                let elapsed_ms = started.elapsed().as_millis() as u64;
                if report.count == 0 {
                    tracing::info!(
                        checked = report.checked,
                        elapsed_ms,
                        "reconciled: no discrepancy"
                    );
                } else {
                    tracing::warn!(
                        checked = report.checked,
                        discrepancies = report.count,
                        elapsed_ms,
                        first = ?report.found.first(),
                        "reconcile found discrepancies: `pulsehub reconcile --sample N` lists \
                         them, `--repair` fixes them (docs/runbooks.md)"
                    );
                }
            }
            Err(error) => {
                metrics.reconcile.failed();
                tracing::warn!("the scheduled reconcile failed: {error:#}");
            }
        }
    }
}
