//! Host-side bindings of the `pulsehub:plugin@0.1.0` world, generated from `wit/`.
//!
//! Parameters borrow (`Event<'a>` holds `&str`), so handing a batch to a
//! plugin copies each string once, straight into the guest's memory.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "enricher",
    ownership: Borrowing { duplicate_if_necessary: false },
});

pub use self::pulsehub::plugin::host::LogLevel;
pub use self::pulsehub::plugin::types::Value;
