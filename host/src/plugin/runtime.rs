//! The process-wide wasmtime engine, and loading plugin packages into it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Cache, CacheConfig, Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Enricher, EnricherPre, v02};
use super::limits::MemoryLimiter;
use super::{Health, HostLimits, LoadError, Manifest, PluginLimits};

/// Set to `1`, the runtime writes `/tmp/perf-PID.map`, so that `perf report`
/// names the functions of the plugins it compiled.
pub const PERF_MAP_ENV: &str = "PULSEHUB_WASM_PERF_MAP";

/// How often the epoch advances; CPU-time budgets are counted in these ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// The plugin runtime of one process. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    limits: HostLimits,
    _ticker: Ticker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("limits", &self.inner.limits)
            .finish()
    }
}

impl Runtime {
    pub fn new(limits: HostLimits) -> Result<Self, RuntimeError> {
        Self::build(limits, None).map_err(|e| RuntimeError(format!("{e:#}")))
    }

    /// A runtime that keeps the machine code it compiles in `cache_dir`,
    /// keyed by a hash of the component and of the engine's settings and
    /// version (wasmtime's own cache), so the next start loads it instead of
    /// compiling again. Only this directory's entries, written by a host
    /// like this one, are ever loaded.
    pub fn with_cache(limits: HostLimits, cache_dir: &Path) -> Result<Self, RuntimeError> {
        Self::build(limits, Some(cache_dir)).map_err(|e| RuntimeError(format!("{e:#}")))
    }

    fn build(limits: HostLimits, cache_dir: Option<&Path>) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        if let Some(dir) = cache_dir {
            // wasmtime's cache refuses a relative directory.
            let dir = std::path::absolute(dir).map_err(|e| {
                wasmtime::format_err!("cannot resolve the cache path {}: {e}", dir.display())
            })?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                wasmtime::format_err!(
                    "cannot create the compiled-plugin cache {}: {e}",
                    dir.display()
                )
            })?;
            let mut cache = CacheConfig::new();
            cache.with_directory(&dir);
            config.cache(Some(Cache::new(cache)?));
        }
        // `perf` names the plugins' compiled functions when asked to
        // (docs/troubleshooting.md, "Profiling plugins").
        if std::env::var_os(PERF_MAP_ENV).is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        config
            .epoch_interruption(true)
            // The synchronous call path is three times cheaper per call, and
            // plugins have no use for component-model async.
            .concurrency_support(false);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        Enricher::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        v02::Enricher::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        // Components built by cargo-component, wasm32-wasip2 or
        // componentize-py import WASI; they get a context that denies
        // everything but clocks and randomness.
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;

        let ticker = Ticker::start(engine.clone())
            .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker thread: {e}"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                limits,
                _ticker: ticker,
            }),
        })
    }

    pub fn limits(&self) -> &HostLimits {
        &self.inner.limits
    }

    /// Loads a plugin package from its two files.
    pub fn load_files(&self, component: &Path, manifest: &Path) -> Result<Arc<Plugin>, LoadError> {
        let manifest = Manifest::from_file(manifest)?;
        let bytes = std::fs::read(component).map_err(|e| LoadError::Read {
            plugin: manifest.name.clone(),
            path: component.display().to_string(),
            reason: e.to_string(),
        })?;
        self.load(manifest, &bytes)
    }

    /// Compiles and validates a plugin: the component must target one of the
    /// `enricher` worlds (0.1 or 0.2: the one its exports match), and a fresh
    /// instance must pass `init` under the plugin's limits. Nothing is shared
    /// until all of that succeeded.
    pub fn load(&self, manifest: Manifest, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        let name = manifest.name.clone();
        let component = compile(&self.inner.engine, &name, bytes)?;
        let world_error = |reason: String| LoadError::World {
            plugin: name.clone(),
            reason,
        };
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| world_error(format!("{e:#}")))?;
        // The two worlds export functions of the same names and different
        // types, so a component type-checks against one of them at most.
        let pre = match EnricherPre::new(pre.clone()) {
            Ok(pre) => Pre::V01(pre),
            Err(as_01) => match v02::EnricherPre::new(pre) {
                Ok(pre) => Pre::V02(pre),
                Err(as_02) => {
                    return Err(world_error(format!(
                        "as 0.1.0: {as_01:#}; as 0.2.0: {as_02:#}"
                    )));
                }
            },
        };
        let plugin = Arc::new(Plugin {
            limits: PluginLimits::new(&self.inner.limits, &manifest),
            label: format!("{} {}", manifest.name, manifest.version).into(),
            version: manifest.version.to_string(),
            sha256: hex(&Sha256::digest(bytes)),
            writes: manifest
                .writes
                .iter()
                .map(|w| Arc::from(w.as_str()))
                .collect(),
            manifest,
            pre,
            health: Health::default(),
        });
        // Proves the plugin starts; the instance is dropped, workers make their own.
        self.instantiate(&plugin)
            .map_err(|reason| LoadError::Init {
                plugin: plugin.manifest.name.clone(),
                version: plugin.version.clone(),
                reason,
            })?;
        Ok(plugin)
    }

    /// A new store and instance of `plugin`, `init`-ed with its config.
    pub(crate) fn instantiate(
        &self,
        plugin: &Plugin,
    ) -> Result<(Store<HostState>, Bindings), String> {
        let state = HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(plugin.limits.memory_bytes),
            label: plugin.label.clone(),
        };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks(plugin.limits.init_timeout_ms, 1));
        let config: Vec<(&str, &str)> = plugin
            .manifest
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let outcome = match &plugin.pre {
            Pre::V01(pre) => pre.instantiate(&mut store).and_then(|instance| {
                instance
                    .call_init(&mut store, &config)
                    .map(|result| (Bindings::V01(instance), result))
            }),
            Pre::V02(pre) => pre.instantiate(&mut store).and_then(|instance| {
                let writes: Vec<&str> = plugin.writes.iter().map(|w| &**w).collect();
                instance
                    .call_init(&mut store, &config, &writes)
                    .map(|result| (Bindings::V02(instance), result))
            }),
        };
        match outcome {
            Ok((instance, Ok(()))) => Ok((store, instance)),
            Ok((_, Err(message))) => Err(message),
            Err(e) => Err(describe_failure(&store, &e, plugin.limits.init_timeout_ms).1),
        }
    }
}

/// Epoch ticks for `n` events at `timeout_ms` each; one tick more because the
/// current tick may be almost over when the call starts.
pub(crate) fn ticks(timeout_ms: u32, n: usize) -> u64 {
    let per_event = (u64::from(timeout_ms) * 1_000).div_ceil(TICK.as_micros() as u64);
    per_event.saturating_mul(n as u64).saturating_add(1)
}

/// Why a call into a store failed, as an error kind and a message.
pub(crate) fn describe_failure(
    store: &Store<HostState>,
    error: &wasmtime::Error,
    budget_ms: u32,
) -> (super::ErrorKind, String) {
    use super::ErrorKind;
    if store.data().limiter.exceeded {
        let limit = store.data().limiter.limit_mb();
        return (
            ErrorKind::Memory,
            format!("exceeded its linear memory limit of {limit} MiB"),
        );
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => (
            ErrorKind::Timeout,
            format!("exceeded its CPU-time budget of {budget_ms} ms per event"),
        ),
        Some(trap) => (ErrorKind::Trap, format!("trapped: {trap}")),
        None => (ErrorKind::Trap, format!("{error:#}")),
    }
}

fn compile(engine: &Engine, name: &str, bytes: &[u8]) -> Result<Component, LoadError> {
    const CORE_MODULE: [u8; 8] = *b"\0asm\x01\0\0\0";
    let reason = if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        Some("the file is not WebAssembly (no \\0asm header)".to_owned())
    } else if bytes[..8] == CORE_MODULE {
        Some(
            "the file is a core WebAssembly module, not a component; \
             turn it into one with `wasm-tools component new` or the wit-component crate"
                .to_owned(),
        )
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(LoadError::Component {
            plugin: name.to_owned(),
            reason,
        });
    }
    Component::new(engine, bytes).map_err(|e| LoadError::Component {
        plugin: name.to_owned(),
        reason: format!("{e:#}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The runtime could not start (an engine setting or a thread refused).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin runtime: {0}")]
pub struct RuntimeError(String);

/// One loaded plugin version: validated manifest, compiled and pre-linked
/// component. Shared by `Arc`; instances are per worker.
pub struct Plugin {
    pub manifest: Manifest,
    pub limits: PluginLimits,
    /// The version as text, for provenance and error reports.
    pub version: String,
    /// SHA-256 of the component bytes, hex.
    pub sha256: String,
    /// The manifest's `writes` in the order a 0.2 plugin's `init` is given
    /// them: a 0.2 update names its attribute by its index here.
    pub(crate) writes: Vec<Arc<str>>,
    /// "name version", for logs.
    pub(crate) label: Arc<str>,
    pub(crate) pre: Pre,
    /// Its counters and recent failure rate.
    pub health: Health,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.manifest.name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Plugin {
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// The plugin world the component targets.
    pub fn world(&self) -> World {
        match self.pre {
            Pre::V01(_) => World::V0_1,
            Pre::V02(_) => World::V0_2,
        }
    }
}

/// The plugin worlds the host loads, side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `pulsehub:plugin/enricher@0.1.0` (`wit/plugin.wit`): a list of event
    /// records in, a list of updates per event out. Frozen.
    V0_1,
    /// `pulsehub:plugin/enricher@0.2.0` (`wit/0.2/plugin.wit`): a batch as
    /// one text arena and columns of numbers in, one flat list of updates
    /// by attribute index out.
    V0_2,
}

impl World {
    /// The world's package version, as `plugin check` and the API show it.
    pub fn version(self) -> &'static str {
        match self {
            World::V0_1 => "0.1.0",
            World::V0_2 => "0.2.0",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pulsehub:plugin/enricher@{}", self.version())
    }
}

/// A plugin's component, pre-linked against the world it targets.
pub(crate) enum Pre {
    V01(EnricherPre<HostState>),
    V02(v02::EnricherPre<HostState>),
}

/// A live instance's exports, in the world it targets.
pub(crate) enum Bindings {
    V01(Enricher),
    V02(v02::Enricher),
}

/// What a plugin's store holds besides the guest.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    label: Arc<str>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Longest log line a plugin may write; the rest is cut.
const MAX_LOG_BYTES: usize = 1024;

impl bindings::pulsehub::plugin::host::Host for HostState {
    fn log(&mut self, level: bindings::LogLevel, mut message: String) {
        if message.len() > MAX_LOG_BYTES {
            let mut cut = MAX_LOG_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.label;
        match level {
            bindings::LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            bindings::LogLevel::Info => tracing::info!(plugin, "{message}"),
            bindings::LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            bindings::LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl bindings::pulsehub::plugin::types::Host for HostState {}

impl v02::pulsehub::plugin::host::Host for HostState {
    fn log(&mut self, level: v02::LogLevel, message: String) {
        let level = match level {
            v02::LogLevel::Debug => bindings::LogLevel::Debug,
            v02::LogLevel::Info => bindings::LogLevel::Info,
            v02::LogLevel::Warn => bindings::LogLevel::Warn,
            v02::LogLevel::Error => bindings::LogLevel::Error,
        };
        bindings::pulsehub::plugin::host::Host::log(self, level, message);
    }
}

impl v02::pulsehub::plugin::types::Host for HostState {}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("pulsehub-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_cache_directory_is_taken_from_the_working_directory() {
        let dir = tempfile::tempdir_in(".").expect("tempdir in the working directory");
        // `.tmpXXXX/compiled`: relative, as the default `pulsehub-data/...` is.
        let name = dir.path().file_name().expect("a tempdir has a name");
        let relative = Path::new(name).join("compiled");
        assert!(relative.is_relative());
        let runtime = Runtime::with_cache(HostLimits::default(), &relative);
        assert!(runtime.is_ok(), "{:?}", runtime.err());
        assert!(relative.is_dir(), "the cache directory is created");
    }
}
