//! `device-classifier`: `device_type`, `os_family` and `browser_family` from
//! the event's User-Agent.
//!
//! Classification itself lives in [`classify`]; this file adds the plugin
//! around it: an LRU cache per instance (`cache-size` in the manifest's
//! `[config]`), because real traffic repeats a small set of User-Agents and a
//! cache hit costs a hash lookup instead of a parse.

pub mod classify;

use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroUsize;

use lru::LruCache;
use pulsehub_plugin_sdk::{Config, EnrichError, Event, EventView, Plugin, Update, Updates, Value};
use rustc_hash::FxHasher;

pub use classify::{Classifier, Device, DeviceType};

const DEFAULT_CACHE_SIZE: usize = 4096;

pub struct DeviceClassifier {
    classifier: Classifier,
    cache: Option<Cache>,
}

/// Devices by an Fx hash of their User-Agent, each with the User-Agent it
/// was made for. Inside a component SipHash and byte-by-byte `memcmp` were
/// most of a cache hit's cost: the key is hashed once with Fx, and the
/// text compared 8 bytes at a time ([`pulsehub_plugin_sdk::text_eq`]).
type Cache = LruCache<u64, (Box<str>, Device), BuildHasherDefault<FxHasher>>;

impl Plugin for DeviceClassifier {
    fn init(config: &Config) -> Result<Self, String> {
        let cache_size: usize = config.parse_or("cache-size", DEFAULT_CACHE_SIZE)?;
        Ok(Self {
            classifier: Classifier::new()?,
            // cache-size = "0" turns the cache off.
            cache: NonZeroUsize::new(cache_size)
                .map(|size| LruCache::with_hasher(size, BuildHasherDefault::default())),
        })
    }

    fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError> {
        let updates = self.with_device(event.user_agent.as_deref(), |device| {
            vec![
                set("device_type", device.device_type.as_str().to_owned()),
                set("os_family", device.os_family.clone()),
                set("browser_family", device.browser_family.clone()),
            ]
        });
        Ok(updates.unwrap_or_default())
    }

    /// The same, read in place (world 0.2).
    fn enrich_view(
        &mut self,
        event: &EventView<'_>,
        out: &mut Updates<'_>,
    ) -> Result<(), EnrichError> {
        self.with_device(event.user_agent, |device| {
            let text = |s: &str| Value::Text(s.to_owned());
            out.set("device_type", text(device.device_type.as_str()));
            out.set("os_family", text(&device.os_family));
            out.set("browser_family", text(&device.browser_family));
        });
        Ok(())
    }
}

impl DeviceClassifier {
    /// Calls `f` with the device of `user_agent`, from the cache when it
    /// holds it; nothing for an absent or blank User-Agent, which leaves
    /// whatever the profile already knows.
    fn with_device<R>(
        &mut self,
        user_agent: Option<&str>,
        f: impl FnOnce(&Device) -> R,
    ) -> Option<R> {
        let user_agent = user_agent.unwrap_or("").trim();
        if user_agent.is_empty() {
            return None;
        }
        let Some(cache) = &mut self.cache else {
            return Some(f(&self.classifier.classify(user_agent)));
        };
        let mut hasher = FxHasher::default();
        hasher.write(user_agent.as_bytes());
        let key = hasher.finish();
        if let Some((text, device)) = cache.get(&key)
            && pulsehub_plugin_sdk::text_eq(text, user_agent)
        {
            return Some(f(device));
        }
        // A miss, or another User-Agent with the same hash: that one goes.
        let device = self.classifier.classify(user_agent);
        let result = f(&device);
        cache.put(key, (user_agent.into(), device));
        Some(result)
    }
}

fn set(name: &str, text: String) -> Update {
    Update::Set((name.to_owned(), Value::Text(text)))
}

pulsehub_plugin_sdk::plugin!(DeviceClassifier);
