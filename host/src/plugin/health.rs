//! A plugin version's failure rate over a sliding window, for quarantine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

// Tokio's clock: the same as std's at run time, and pausable in tests.
use tokio::time::Instant;

use crate::config::PluginsConfig;

/// When a plugin version is taken out of the chain: at least `min_events`
/// events in the last `window`, and at least `max_failure_ratio` of them
/// failed (error, trap, timeout, memory or output trouble).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuarantinePolicy {
    pub window: Duration,
    pub min_events: u64,
    pub max_failure_ratio: f64,
}

impl From<&PluginsConfig> for QuarantinePolicy {
    fn from(plugins: &PluginsConfig) -> Self {
        Self {
            window: Duration::from_secs(plugins.quarantine_window_secs),
            min_events: plugins.quarantine_min_events,
            max_failure_ratio: plugins.quarantine_failure_percent as f64 / 100.0,
        }
    }
}

impl Default for QuarantinePolicy {
    /// The configuration's defaults.
    fn default() -> Self {
        Self::from(&PluginsConfig::default())
    }
}

/// Number of buckets the window is cut into.
const BUCKETS: usize = 12;

/// Counters of one plugin version: totals since it was loaded, and a window
/// of recent outcomes.
#[derive(Debug)]
pub struct Health {
    calls: AtomicU64,
    events: AtomicU64,
    failures: AtomicU64,
    window: Mutex<Window>,
    tripped: AtomicBool,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// (bucket number since `started`, events, failures), oldest first.
    buckets: Vec<(u64, u64, u64)>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            events: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            window: Mutex::new(Window {
                started: Instant::now(),
                buckets: Vec::with_capacity(BUCKETS + 1),
            }),
            tripped: AtomicBool::new(false),
        }
    }
}

/// A plugin version's counts since it was loaded (or last cleared).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Batch calls.
    pub calls: u64,
    pub events: u64,
    /// Events the plugin failed on.
    pub failures: u64,
}

/// Why a plugin version was taken out of the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Trip {
    pub events: u64,
    pub failures: u64,
    pub window: Duration,
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of its last {} events failed within {} s",
            self.failures,
            self.events,
            self.window.as_secs()
        )
    }
}

impl Health {
    /// Counts one call over `events` events of which `failures` failed, and
    /// says whether that crossed `policy` for the first time.
    pub fn record(&self, events: u64, failures: u64, policy: &QuarantinePolicy) -> Option<Trip> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.failures.fetch_add(failures, Ordering::Relaxed);
        if self.tripped.load(Ordering::Relaxed) {
            return None;
        }
        let (in_window, failed) = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            window.add(events, failures, policy.window)
        };
        let ratio_crossed = failed as f64 >= policy.max_failure_ratio * in_window as f64;
        if in_window >= policy.min_events
            && failed > 0
            && ratio_crossed
            && !self.tripped.swap(true, Ordering::Relaxed)
        {
            return Some(Trip {
                events: in_window,
                failures: failed,
                window: policy.window,
            });
        }
        None
    }

    /// The counts since the version was loaded (or last cleared).
    pub fn totals(&self) -> Totals {
        Totals {
            calls: self.calls.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Forgets everything: totals, window and trip.
    pub fn clear(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.events.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.reset();
    }

    /// Forgets the window and the trip, so the version can run again.
    pub fn reset(&self) {
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        window.buckets.clear();
        self.tripped.store(false, Ordering::Relaxed);
    }
}

impl Window {
    /// Adds an outcome now; returns the events and failures in the window.
    fn add(&mut self, events: u64, failures: u64, span: Duration) -> (u64, u64) {
        let width = (span / BUCKETS as u32).max(Duration::from_millis(1));
        let now = (self.started.elapsed().as_nanos() / width.as_nanos()) as u64;
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        self.buckets.retain(|&(at, _, _)| at >= oldest);
        match self.buckets.last_mut() {
            Some((at, e, f)) if *at == now => {
                *e += events;
                *f += failures;
            }
            _ => self.buckets.push((now, events, failures)),
        }
        self.buckets
            .iter()
            .fold((0, 0), |(e, f), &(_, be, bf)| (e + be, f + bf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min_events: u64, ratio: f64) -> QuarantinePolicy {
        QuarantinePolicy {
            window: Duration::from_secs(60),
            min_events,
            max_failure_ratio: ratio,
        }
    }

    #[test]
    fn trips_once_when_the_ratio_is_crossed_with_enough_events() {
        let health = Health::default();
        let policy = policy(100, 0.5);
        // Enough failures but too few events.
        assert_eq!(health.record(60, 60, &policy), None);
        // 100 events, 60 failed: over half.
        let trip = health.record(40, 0, &policy).expect("trips");
        assert_eq!((trip.events, trip.failures), (100, 60));
        // Only once.
        assert_eq!(health.record(100, 100, &policy), None);
        let totals = health.totals();
        assert_eq!(totals.events, 200);
        assert_eq!(totals.failures, 160);
        assert_eq!(totals.calls, 3);
    }

    #[test]
    fn a_healthy_plugin_with_rare_failures_stays_in() {
        let health = Health::default();
        let policy = policy(100, 0.5);
        for _ in 0..100 {
            assert_eq!(health.record(100, 10, &policy), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_leave_the_window() {
        let health = Health::default();
        let policy = QuarantinePolicy {
            window: Duration::from_millis(120),
            min_events: 10,
            max_failure_ratio: 0.5,
        };
        assert_eq!(health.record(9, 9, &policy), None);
        tokio::time::advance(Duration::from_millis(200)).await;
        // The 9 old failures are out of the window: 10 new, 1 failed.
        assert_eq!(health.record(10, 1, &policy), None);
        health.reset();
        assert!(health.record(10, 10, &policy).is_some());
    }
}
