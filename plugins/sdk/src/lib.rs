//! The PulseHub plugin SDK for Rust.
//!
//! A plugin is a type that implements [`Plugin`]: it is built once per
//! instance from the manifest's `[config]` table and then called once per
//! event. [`plugin!`] turns such a type into a component exporting the
//! `pulsehub:plugin/enricher@0.2.0` world (`wit/0.2/`), or, with the cargo
//! feature `world-0-1`, the frozen `@0.1.0` world; the batch loop, the
//! bindings and the per-instance state are handled here, and a plugin moves
//! between the two by rebuilding.
//!
//! ```
//! use pulsehub_plugin_sdk::{Config, EnrichError, Event, Plugin, Update};
//!
//! struct Counter;
//!
//! impl Plugin for Counter {
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(Counter)
//!     }
//!     fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError> {
//!         Ok(vec![Update::Increment(("clicks".into(), 1))])
//!     }
//! }
//!
//! pulsehub_plugin_sdk::plugin!(Counter);
//! ```
//!
//! Under 0.2 the SDK hands each event to [`Plugin::enrich_view`] as a
//! borrowed [`EventView`] into the batch's text. Its default copies the
//! event into an [`Event`] and calls [`Plugin::enrich`]; a plugin that
//! overrides it reads the text in place and writes its updates straight
//! into the batch's result, with no allocation per event.
//!
//! The same type runs natively too ([`run_batch`]), which is how plugins are
//! unit-tested and how the benches measure the native floor.

#[doc(hidden)]
pub mod export;
mod types;

pub use types::{EnrichError, Event, EventView, Update, Updates, Value};

/// The generated bindings of the `enricher` world the SDK targets (used by
/// [`plugin!`]).
#[doc(hidden)]
#[cfg(not(feature = "world-0-1"))]
// The generated glue lowers `enrich`'s batch as eight arguments.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/0.2",
        world: "enricher",
        pub_export_macro: true,
        export_macro_name: "export_enricher",
        default_bindings_module: "pulsehub_plugin_sdk::bindings",
    });
}

/// The generated bindings of the `enricher` world the SDK targets (used by
/// [`plugin!`]).
#[doc(hidden)]
#[cfg(feature = "world-0-1")]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "enricher",
        pub_export_macro: true,
        export_macro_name: "export_enricher",
        default_bindings_module: "pulsehub_plugin_sdk::bindings",
    });
}

pub use bindings::pulsehub::plugin::host::LogLevel;

/// Writes one line to the host's log, tagged with the plugin's name and
/// version. Outside a component (native tests) it does nothing.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::pulsehub::plugin::host::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, message);
}

/// The plugin world [`plugin!`] exports in this build.
#[cfg(not(feature = "world-0-1"))]
pub const WORLD: &str = "pulsehub:plugin/enricher@0.2.0";
/// The plugin world [`plugin!`] exports in this build.
#[cfg(feature = "world-0-1")]
pub const WORLD: &str = "pulsehub:plugin/enricher@0.1.0";

/// The `[config]` table of the plugin's manifest, as handed to `init`.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    /// The value of `key`, if the manifest sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses `key` with [`str::parse`], or returns `default` when it is not
    /// set. The error names the key and the bad value, for `init` to return.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| format!("config key `{key}`: cannot use {raw:?}: {e}")),
        }
    }
}

/// An enrichment plugin, written one event at a time.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin's state for a new instance. An error refuses the plugin.
    fn init(config: &Config) -> Result<Self, String>;

    /// The updates one event makes to its user's profile.
    fn enrich(&mut self, event: &Event) -> Result<Vec<Update>, EnrichError>;

    /// The same updates, read from a borrowed view of the event and written
    /// into `out`: how the 0.2 glue calls the plugin. The default copies the
    /// view into an [`Event`] and calls [`Plugin::enrich`]. Override it to
    /// read the event in place; it must make the updates `enrich` makes.
    fn enrich_view(
        &mut self,
        event: &EventView<'_>,
        out: &mut Updates<'_>,
    ) -> Result<(), EnrichError> {
        for update in self.enrich(&event.to_event())? {
            out.push(update);
        }
        Ok(())
    }
}

/// Whether two texts are equal, compared 8 bytes at a time. Inside a
/// component `==` on strings ends in wasm32's `memcmp`, which compares
/// byte by byte; a plugin that compares long texts per event (a cache keyed
/// by User-Agent) is faster with this.
pub fn text_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (words_a, words_b) = (a.chunks_exact(8), b.chunks_exact(8));
    // Each chunk is 8 bytes: one load.
    let word = |w: &[u8]| <[u8; 8]>::try_from(w).ok().map(u64::from_le_bytes);
    words_a.remainder() == words_b.remainder()
        && words_a.zip(words_b).all(|(x, y)| word(x) == word(y))
}

/// An event of `kind` for unit tests: id `e-1`, user `u-1`, time 0, no
/// User-Agent or URL, properties `{}`. Adjust fields with struct update
/// syntax: `Event { timestamp_ms: 5, ..test_event("click") }`.
pub fn test_event(kind: &str) -> Event {
    Event {
        id: "e-1".into(),
        user_id: "u-1".into(),
        kind: kind.into(),
        timestamp_ms: 0,
        user_agent: None,
        url: None,
        properties: "{}".into(),
    }
}

/// Runs `plugin` over a batch, one result per event in order: what the
/// exported `enrich` does inside a 0.1 component.
pub fn run_batch<P: Plugin>(
    plugin: &mut P,
    events: &[Event],
) -> Vec<Result<Vec<Update>, EnrichError>> {
    events.iter().map(|event| plugin.enrich(event)).collect()
}

/// Exports a [`Plugin`] type as the component's `enricher` world.
///
/// Only expands on `wasm32`, so several plugin crates can be linked into one
/// native test or bench binary without clashing export names.
#[macro_export]
macro_rules! plugin {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __pulsehub_plugin_export {
            use super::*;

            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<Option<$crate::export::Instance<$plugin>>> =
                    const { ::std::cell::RefCell::new(None) };
            }

            struct Export;

            $crate::__guest!(Export, $plugin, STATE);

            $crate::bindings::export_enricher!(Export);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::text_eq;

    #[test]
    fn text_eq_tells_every_difference_at_every_length() {
        for len in 0..40 {
            let a: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            assert!(text_eq(&a, &a.clone()), "{len}");
            assert!(!text_eq(&a, &format!("{a}x")), "{len}: longer");
            for at in 0..len {
                let mut b = a.clone().into_bytes();
                b[at] = b'#';
                let b = String::from_utf8(b).expect("ASCII");
                assert!(!text_eq(&a, &b), "{len}: differs at {at}");
            }
        }
    }
}
