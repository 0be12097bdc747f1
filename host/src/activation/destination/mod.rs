//! Destinations: webhooks that receive chosen messages of the
//! `profile-updates` stream, batched and signed (docs/destinations.md,
//! contract §5).
//!
//! - [`catalog`]: definitions, counters and dead letters in PostgreSQL.
//! - [`sign`]: Standard Webhooks signatures.
//! - [`guard`]: no requests into private networks unless allowed.
//! - [`deliver`]: one signed `POST` and what its answer means.
//! - [`dispatch`]: a worker per destination, with its own consumer group,
//!   batches, retries and dead letters.

pub mod catalog;
pub mod deliver;
pub mod dispatch;
pub mod guard;
pub mod sign;

use std::time::Duration;

pub use catalog::{DeadLetter, Destination, DestinationStore, Put, Target};
pub use deliver::{Outcome, Sender};

/// What the API needs of destinations: where they are stored, and a
/// client to send a dead letter again.
#[derive(Debug, Clone)]
pub struct Destinations {
    pub store: DestinationStore,
    pub sender: Sender,
}

/// Reads a retry schedule: delays separated by commas, each a number and
/// a unit (`ms`, `s`, `m`, `h`), e.g. `5s,5m,30m,2h,5h,10h,10h`.
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|step| !step.is_empty())
        .map(|step| {
            let split = step
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("`{step}` has no unit (ms, s, m or h)"))?;
            let (number, unit) = step.split_at(split);
            let number: u64 = number
                .parse()
                .map_err(|_| format!("`{step}` does not start with a number"))?;
            let unit_ms: u64 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                other => return Err(format!("`{other}` in `{step}` is not ms, s, m or h")),
            };
            Ok(Duration::from_millis(number.saturating_mul(unit_ms)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_read_units() {
        assert_eq!(
            parse_schedule("5s, 5m,2h,150ms"),
            Ok(vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(7200),
                Duration::from_millis(150)
            ])
        );
        assert_eq!(parse_schedule(""), Ok(vec![]));
        assert!(parse_schedule("5").is_err());
        assert!(parse_schedule("5d").is_err());
        assert!(parse_schedule("s").is_err());
    }
}
