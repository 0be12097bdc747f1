//! `page-view-counter`: `page_views` counts a user's `page_view` events.
//!
//! The manifest subscribes to `page_view` only, so the host never hands this
//! plugin another kind; the check here keeps the plugin right even under a
//! manifest that subscribes to more.

use pulsehub_plugin_sdk::{Config, EnrichError, Event, EventView, Plugin, Update, Updates};

pub struct PageViewCounter;

impl Plugin for PageViewCounter {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError> {
        if event.kind != "page_view" {
            return Ok(Vec::new());
        }
        Ok(vec![Update::Increment(("page_views".to_owned(), 1))])
    }

    /// The same, read in place (world 0.2).
    fn enrich_view(
        &mut self,
        event: &EventView<'_>,
        out: &mut Updates<'_>,
    ) -> Result<(), EnrichError> {
        if event.kind == "page_view" {
            out.increment("page_views", 1);
        }
        Ok(())
    }
}

pulsehub_plugin_sdk::plugin!(PageViewCounter);

#[cfg(test)]
mod tests {
    use super::*;
    use pulsehub_plugin_sdk::test_event as event;

    #[test]
    fn counts_page_views_only() {
        let mut plugin = PageViewCounter::init(&Config::default()).expect("init");
        let out = plugin.enrich(&event("page_view")).expect("page view");
        assert!(matches!(&out[..], [Update::Increment((name, 1))] if name == "page_views"));
        assert!(plugin.enrich(&event("click")).expect("click").is_empty());
    }
}
