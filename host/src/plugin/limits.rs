//! Sandbox limits: the host's defaults and ceilings, each plugin's effective
//! limits, and the memory limiter installed in every store.

use super::Manifest;

/// Limits the host applies to every plugin. A manifest may ask for less or
/// more memory and time, but never more than the ceilings here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// Linear memory per instance when the manifest says nothing.
    pub default_memory_mb: u32,
    /// The most linear memory any instance may have.
    pub max_memory_mb: u32,
    /// CPU-time budget per event when the manifest says nothing.
    pub default_timeout_ms: u32,
    /// The largest CPU-time budget per event.
    pub max_timeout_ms: u32,
    /// The most CPU time one batch call may take, whatever its size. A batch
    /// gets `timeout × events` up to this; past it the batch is retried event
    /// by event (each with its own budget), so one spinning event stalls its
    /// batch for at most this long.
    pub max_batch_time_ms: u32,
    /// Time allowed for `init` on a new instance.
    pub init_timeout_ms: u32,
    /// Most updates one event may produce in one plugin.
    pub max_updates_per_event: usize,
    /// Longest attribute name or text value, in bytes.
    pub max_string_bytes: usize,
    /// An instance is rebuilt after this many events, to bound slow leaks.
    pub recycle_after_events: u64,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            default_memory_mb: 16,
            max_memory_mb: 256,
            default_timeout_ms: 20,
            max_timeout_ms: 1_000,
            max_batch_time_ms: 250,
            init_timeout_ms: 5_000,
            max_updates_per_event: 64,
            max_string_bytes: 4_096,
            recycle_after_events: 1_000_000,
        }
    }
}

/// The limits one plugin actually runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginLimits {
    pub memory_bytes: usize,
    pub timeout_ms: u32,
    pub max_batch_time_ms: u32,
    pub init_timeout_ms: u32,
    pub max_updates_per_event: usize,
    pub max_string_bytes: usize,
    pub recycle_after_events: u64,
}

impl PluginLimits {
    /// The manifest's wishes, capped by the host.
    pub fn new(host: &HostLimits, manifest: &Manifest) -> Self {
        let memory_mb = manifest
            .limits
            .memory_mb
            .unwrap_or(host.default_memory_mb)
            .min(host.max_memory_mb);
        let timeout_ms = manifest
            .limits
            .timeout_ms
            .unwrap_or(host.default_timeout_ms)
            .min(host.max_timeout_ms);
        Self {
            memory_bytes: memory_mb as usize * 1024 * 1024,
            timeout_ms,
            max_batch_time_ms: host.max_batch_time_ms.max(timeout_ms),
            init_timeout_ms: host.init_timeout_ms,
            max_updates_per_event: host.max_updates_per_event,
            max_string_bytes: host.max_string_bytes,
            recycle_after_events: host.recycle_after_events,
        }
    }
}

/// Caps the linear memory of one store and remembers whether the cap was hit,
/// so a failure can be reported as `memory` rather than as a bare trap.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit_bytes: usize,
    pub(crate) exceeded: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
            exceeded: false,
        }
    }

    pub(crate) fn limit_mb(&self) -> usize {
        self.limit_bytes / (1024 * 1024)
    }
}

/// Tables hold function references; a plugin needs a few thousand at most.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.exceeded = true;
            // An error (rather than `Ok(false)`) makes `memory.grow` trap, so
            // a guest cannot carry on after ignoring a failed allocation.
            wasmtime::bail!(
                "linear memory limit of {} MiB exceeded (asked for {} MiB)",
                self.limit_bytes / (1024 * 1024),
                desired.div_ceil(1024 * 1024)
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
