//! `abi-probe`: a bench fixture built against a prototype of the
//! batch-shaped world of docs/plugin-abi-0.2-proposal.md (`wit/` here), so
//! the benches can measure what the world's shape costs at the component
//! boundary before anything is frozen.
//!
//! `init` takes `mode`: `empty` (the default) returns nothing for every
//! event, as the 0.1 benches' empty plugin does; `count` does what
//! `page-view-counter` does: `increment(0, 1)` (the manifest's first write,
//! `page_views`) for each `page_view` event.

// The generated export glue is `unsafe` code of wit-bindgen's, expanded
// here (the crate's own code has none), and its lowered `enrich` takes the
// batch's lists as eight arguments.
#![allow(unsafe_code, clippy::too_many_arguments)]

use std::sync::atomic::{AtomicBool, Ordering};

wit_bindgen::generate!({
    path: "wit",
    world: "enricher",
});

use pulsehub::plugin::types::Update;

struct Probe;

/// Numbers per event in `batch.events`: its kind, then five spans.
const FIELDS: usize = 11;

/// The mode `init` chose: `count` when set.
static COUNT: AtomicBool = AtomicBool::new(false);

impl Guest for Probe {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let count = match config
            .iter()
            .find(|(k, _)| k == "mode")
            .map(|(_, v)| v.as_str())
        {
            None | Some("empty") => false,
            Some("count") => true,
            Some(other) => return Err(format!("abi-probe: unknown mode `{other}`")),
        };
        COUNT.store(count, Ordering::Relaxed);
        Ok(())
    }

    fn enrich(batch: Batch) -> (Vec<Write>, Vec<EventError>) {
        if !COUNT.load(Ordering::Relaxed) {
            return (Vec::new(), Vec::new());
        }
        let page_view = batch.kinds.iter().position(|k| k == "page_view");
        let results = batch
            .events
            .chunks_exact(FIELDS)
            .enumerate()
            .filter(|(_, e)| Some(e[0] as usize) == page_view)
            .map(|(i, _)| Write {
                event: i as u32,
                update: Update::Increment((0, 1)),
            })
            .collect();
        (results, Vec::new())
    }
}

export!(Probe);
