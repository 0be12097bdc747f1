//! `abi-probe`: a test fixture written straight against the bindings of
//! the world `pulsehub:plugin@0.2.0` (`wit/0.2/`), without the SDK, so it
//! can return what the SDK never would: the host's checks of a 0.2
//! component's output are tested with it.
//!
//! `init` takes `mode`:
//!
//! | mode        | result                                                        |
//! |-------------|---------------------------------------------------------------|
//! | `empty`     | nothing, for every event (the default)                        |
//! | `count`     | `increment(0, 1)` (the first write) for each `page_view`      |
//! | `bad-index` | `increment(7, 1)` for each event: an index outside `writes`   |
//! | `bad-event` | one `increment(0, 1)` for an event past the end of the batch  |

// The generated export glue is `unsafe` code of wit-bindgen's, expanded
// here (the crate's own code has none), and its lowered `enrich` takes the
// batch's lists as eight arguments.
#![allow(unsafe_code, clippy::too_many_arguments)]

use std::sync::atomic::{AtomicU8, Ordering};

wit_bindgen::generate!({
    path: "../../../wit/0.2",
    world: "enricher",
});

use pulsehub::plugin::types::Update;

struct Probe;

/// Numbers per event in `batch.events`: its kind, then five spans.
const EVENT_WIDTH: usize = 11;

const EMPTY: u8 = 0;
const COUNT: u8 = 1;
const BAD_INDEX: u8 = 2;
const BAD_EVENT: u8 = 3;

/// The mode `init` chose.
static MODE: AtomicU8 = AtomicU8::new(EMPTY);

impl Guest for Probe {
    fn init(config: Vec<(String, String)>, _writes: Vec<String>) -> Result<(), String> {
        let mode = match config
            .iter()
            .find(|(k, _)| k == "mode")
            .map(|(_, v)| v.as_str())
        {
            None | Some("empty") => EMPTY,
            Some("count") => COUNT,
            Some("bad-index") => BAD_INDEX,
            Some("bad-event") => BAD_EVENT,
            Some(other) => return Err(format!("abi-probe: unknown mode `{other}`")),
        };
        MODE.store(mode, Ordering::Relaxed);
        Ok(())
    }

    fn enrich(batch: Batch) -> (Vec<Write>, Vec<EventError>) {
        let events = batch.events.chunks_exact(EVENT_WIDTH).enumerate();
        let writes = match MODE.load(Ordering::Relaxed) {
            COUNT => {
                let page_view = batch.kinds.iter().position(|k| k == "page_view");
                events
                    .filter(|(_, e)| Some(e[0] as usize) == page_view)
                    .map(|(i, _)| Write {
                        event: i as u32,
                        update: Update::Increment((0, 1)),
                    })
                    .collect()
            }
            BAD_INDEX => events
                .map(|(i, _)| Write {
                    event: i as u32,
                    update: Update::Increment((7, 1)),
                })
                .collect(),
            BAD_EVENT => vec![Write {
                event: batch.timestamps.len() as u32,
                update: Update::Increment((0, 1)),
            }],
            _ => Vec::new(),
        };
        (writes, Vec::new())
    }
}

export!(Probe);
