//! `device-classifier`: `device_type`, `os_family` and `browser_family` from
//! the event's User-Agent.
//!
//! Classification itself lives in [`classify`]; this file adds the plugin
//! around it: an LRU cache per instance (`cache-size` in the manifest's
//! `[config]`), because real traffic repeats a small set of User-Agents and a
//! cache hit costs a hash lookup instead of a parse.

pub mod classify;

use std::num::NonZeroUsize;

use lru::LruCache;
use pulsehub_plugin_sdk::{Config, EnrichError, Event, Plugin, Update, Value};

pub use classify::{Classifier, Device, DeviceType};

const DEFAULT_CACHE_SIZE: usize = 4096;

pub struct DeviceClassifier {
    classifier: Classifier,
    cache: Option<LruCache<String, Device>>,
}

impl Plugin for DeviceClassifier {
    fn init(config: &Config) -> Result<Self, String> {
        let cache_size: usize = config.parse_or("cache-size", DEFAULT_CACHE_SIZE)?;
        Ok(Self {
            classifier: Classifier::new()?,
            // cache-size = "0" turns the cache off.
            cache: NonZeroUsize::new(cache_size).map(LruCache::new),
        })
    }

    fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError> {
        let user_agent = event.user_agent.as_deref().unwrap_or("").trim();
        if user_agent.is_empty() {
            // Nothing to classify: leave whatever the profile already knows.
            return Ok(Vec::new());
        }
        let device = match &mut self.cache {
            Some(cache) => cache
                .get_or_insert_ref(user_agent, || self.classifier.classify(user_agent))
                .clone(),
            None => self.classifier.classify(user_agent),
        };
        Ok(vec![
            set("device_type", device.device_type.as_str().to_owned()),
            set("os_family", device.os_family),
            set("browser_family", device.browser_family),
        ])
    }
}

fn set(name: &str, text: String) -> Update {
    Update::Set((name.to_owned(), Value::Text(text)))
}

pulsehub_plugin_sdk::plugin!(DeviceClassifier);
