//! `last-active`: `last_active_at` (the latest event time, by `max`) and
//! `first_seen_at` (the earliest, by `min`) on every event.
//!
//! Both are commutative, so replays and out-of-order delivery give the same
//! profile.

use pulsehub_plugin_sdk::{Config, EnrichError, Event, EventView, Plugin, Update, Updates, Value};

pub struct LastActive;

impl Plugin for LastActive {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError> {
        let at = event.timestamp_ms;
        Ok(vec![
            Update::Max(("last_active_at".to_owned(), Value::Timestamp(at))),
            Update::Min(("first_seen_at".to_owned(), Value::Timestamp(at))),
        ])
    }

    /// The same, read in place (world 0.2).
    fn enrich_view(
        &mut self,
        event: &EventView<'_>,
        out: &mut Updates<'_>,
    ) -> Result<(), EnrichError> {
        let at = event.timestamp_ms;
        out.max("last_active_at", Value::Timestamp(at));
        out.min("first_seen_at", Value::Timestamp(at));
        Ok(())
    }
}

pulsehub_plugin_sdk::plugin!(LastActive);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_max_and_min_of_the_event_time() {
        let mut plugin = LastActive::init(&Config::default()).expect("init");
        let event = Event {
            timestamp_ms: 1_764_453_600_123,
            ..pulsehub_plugin_sdk::test_event("click")
        };
        let out = plugin.enrich(&event).expect("enrich");
        assert!(
            matches!(&out[0], Update::Max((n, Value::Timestamp(1_764_453_600_123))) if n == "last_active_at")
        );
        assert!(
            matches!(&out[1], Update::Min((n, Value::Timestamp(1_764_453_600_123))) if n == "first_seen_at")
        );
    }
}
