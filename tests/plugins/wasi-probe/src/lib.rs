//! `wasi-probe`: a test fixture that imports WASI, the way components built
//! by `cargo component` or for `wasm32-wasip2` do, and reports on every event
//! what the sandbox lets it see.
//!
//! It is built for `wasm32-unknown-unknown` like every other plugin, but
//! declares a few `wasi_snapshot_preview1` imports by hand; `cargo xtask
//! plugins` then links the preview1 reactor adapter into the component, which
//! turns them into imports of `wasi:cli/environment`, `wasi:random/random`,
//! `wasi:clocks/wall-clock`, `wasi:filesystem/preopens` and friends.
//!
//! On every event it returns:
//! - `env_vars`: `Integer`, the number of environment variables;
//! - `args`: `Integer`, the number of command-line arguments;
//! - `preopens`: `Integer`, the number of preopened directories (fds 3, 4, ...);
//! - `random_ok`: `Boolean`, `random_get` succeeded and gave 16 bytes not all zero;
//! - `clock_ok`: `Boolean`, the realtime clock succeeded and is past the epoch.
//!
//! Built natively (for the workspace's tests), it sees nothing: no WASI there.

// `allow`, not `expect`: the unsafe calls exist only in the wasm32 build.
#![allow(
    unsafe_code,
    reason = "calling hand-declared WASI preview1 imports is unsafe"
)]

use pulsehub_plugin_sdk::{Config, EnrichError, Event, Plugin, Update, Value};

/// The raw preview1 calls, as the WASI `wasi_snapshot_preview1` module exports
/// them. Each returns an errno: 0 is success.
#[cfg(target_arch = "wasm32")]
mod wasi {
    /// `prestat`: a tag byte (0 = directory) then the length of the dir's name.
    #[repr(C)]
    pub struct Prestat {
        pub tag: u8,
        pub name_len: usize,
    }

    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    unsafe extern "C" {
        pub fn environ_sizes_get(environc: *mut usize, environ_buf_size: *mut usize) -> u16;
        pub fn args_sizes_get(argc: *mut usize, argv_buf_size: *mut usize) -> u16;
        pub fn random_get(buf: *mut u8, buf_len: usize) -> u16;
        pub fn clock_time_get(clock_id: u32, precision: u64, time: *mut u64) -> u16;
        pub fn fd_prestat_get(fd: u32, prestat: *mut Prestat) -> u16;
    }

    pub const CLOCK_REALTIME: u32 = 0;
    pub const ERRNO_SUCCESS: u16 = 0;
}

/// What one probe saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    pub env_vars: i64,
    pub args: i64,
    pub preopens: i64,
    pub random_ok: bool,
    pub clock_ok: bool,
}

impl Report {
    pub fn updates(&self) -> Vec<Update> {
        vec![
            Update::Set(("env_vars".to_owned(), Value::Integer(self.env_vars))),
            Update::Set(("args".to_owned(), Value::Integer(self.args))),
            Update::Set(("preopens".to_owned(), Value::Integer(self.preopens))),
            Update::Set(("random_ok".to_owned(), Value::Boolean(self.random_ok))),
            Update::Set(("clock_ok".to_owned(), Value::Boolean(self.clock_ok))),
        ]
    }
}

/// Asks WASI what it lets the plugin see.
#[cfg(target_arch = "wasm32")]
pub fn probe() -> Report {
    use wasi::*;

    fn sizes(call: unsafe extern "C" fn(*mut usize, *mut usize) -> u16) -> i64 {
        let (mut count, mut buf_size) = (0usize, 0usize);
        // SAFETY: both pointers are to live, writable usizes.
        match unsafe { call(&mut count, &mut buf_size) } {
            ERRNO_SUCCESS => i64::try_from(count).unwrap_or(i64::MAX),
            _ => -1,
        }
    }

    let env_vars = sizes(environ_sizes_get);
    let args = sizes(args_sizes_get);

    let mut preopens = 0i64;
    for fd in 3u32..1024 {
        let mut prestat = Prestat {
            tag: 0,
            name_len: 0,
        };
        // SAFETY: `prestat` is a live, writable `prestat` record.
        if unsafe { fd_prestat_get(fd, &mut prestat) } != ERRNO_SUCCESS {
            break;
        }
        preopens += 1;
    }

    let mut bytes = [0u8; 16];
    // SAFETY: the buffer is live, writable and `bytes.len()` long.
    let random_ok = unsafe { random_get(bytes.as_mut_ptr(), bytes.len()) } == ERRNO_SUCCESS
        && bytes.iter().any(|&b| b != 0);

    let mut now_ns = 0u64;
    // SAFETY: `now_ns` is a live, writable u64.
    let clock_ok =
        unsafe { clock_time_get(CLOCK_REALTIME, 1, &mut now_ns) } == ERRNO_SUCCESS && now_ns > 0;

    Report {
        env_vars,
        args,
        preopens,
        random_ok,
        clock_ok,
    }
}

/// Natively there is no WASI: the probe sees nothing.
#[cfg(not(target_arch = "wasm32"))]
pub fn probe() -> Report {
    Report::default()
}

pub struct WasiProbe;

impl Plugin for WasiProbe {
    fn init(_config: &Config) -> Result<Self, String> {
        Ok(Self)
    }

    fn enrich(&mut self, _event: &Event) -> Result<Vec<Update>, EnrichError> {
        Ok(probe().updates())
    }
}

pulsehub_plugin_sdk::plugin!(WasiProbe);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_declared_attribute() {
        let event = pulsehub_plugin_sdk::test_event("anything");
        let out = WasiProbe.enrich(&event).expect("enrich");
        let names: Vec<&str> = out
            .iter()
            .map(|u| match u {
                Update::Set((name, _)) => name.as_str(),
                other => panic!("unexpected update {other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            ["env_vars", "args", "preopens", "random_ok", "clock_ok"]
        );
    }
}
