//! Host-side bindings of the two plugin worlds, generated from `wit/`.
//!
//! Parameters borrow (`Event<'a>` holds `&str`, a 0.2 `Batch<'a>` holds
//! slices), so handing a batch to a plugin copies each list once, straight
//! into the guest's memory.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "enricher",
    ownership: Borrowing { duplicate_if_necessary: false },
});

pub use self::pulsehub::plugin::host::LogLevel;
pub use self::pulsehub::plugin::types::Value;

/// `pulsehub:plugin@0.2.0`, the batch-shaped world (`wit/0.2/`).
pub mod v02 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2",
        world: "enricher",
        ownership: Borrowing { duplicate_if_necessary: false },
    });

    pub use self::pulsehub::plugin::host::LogLevel;
    pub use self::pulsehub::plugin::types::{EnrichError, Update, Value};
}
