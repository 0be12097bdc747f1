//! Per-event cost of plugins: each built-in plugin, an empty plugin, and the
//! three-plugin chain (with the merge), as WebAssembly components of world
//! 0.2 and of world 0.1 and as the same Rust code compiled natively (the
//! floor), at batch sizes 1, 64, 256.
//!
//! Needs the components: `cargo xtask plugins`, then `cargo bench`.
//! Criterion reports time per batch and, through `Throughput::Elements`,
//! events per second; the README quotes medians per event.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use pulsehub::model::event::Event;
use pulsehub::model::merge::Merger;
use pulsehub::model::update::{Op, Update, Value};
use pulsehub::plugin::chain::Chain;
use pulsehub::plugin::{HostLimits, Plugin, PluginInstance, Runtime};
use pulsehub_plugin_sdk as sdk;

// The allocator the pulsehub binary ships with (host/src/main.rs), so the
// host's side of a call costs here what it costs in the pipeline.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use sdk::Plugin as _;

const BATCHES: [usize; 3] = [1, 64, 256];

/// A mix of real User-Agents, as a site sees them: most repeat.
const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
];

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            id: format!("0b9e2c56-8f7d-4c1e-9a43-{i:012x}"),
            user_id: format!("u-{}", i % 97),
            anonymous_id: None,
            previous_id: None,
            known_user: true,
            profile_key: None,
            kind: if i % 4 == 3 { "click" } else { "page_view" }.to_owned(),
            timestamp_ms: 1_764_453_600_000 + i as i64,
            user_agent: Some(USER_AGENTS[i % USER_AGENTS.len()].to_owned()),
            url: Some(format!("https://shop.example/products/{i}")),
            properties: r#"{"referrer":"https://search.example/","campaign":"winter"}"#.to_owned(),
        })
        .collect()
}

fn sdk_event(e: &Event) -> sdk::Event {
    sdk::Event {
        id: e.id.clone(),
        user_id: e.user_id.clone(),
        kind: e.kind.clone(),
        timestamp_ms: e.timestamp_ms,
        user_agent: e.user_agent.clone(),
        url: e.url.clone(),
        properties: e.properties.clone(),
    }
}

fn load(runtime: &Runtime, dir: &str, name: &str) -> Arc<Plugin> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(dir);
    runtime
        .load_files(
            &dir.join(format!("{name}.wasm")),
            &dir.join(format!("{name}.toml")),
        )
        .unwrap_or_else(|e| panic!("{name}: {e} (build the plugins first: cargo xtask plugins)"))
}

/// The plugins as components of world 0.2 (`wasm/...`), as the SDK builds
/// them, and the same crates built against the frozen 0.1 world
/// (`wasm-0.1/...`, from `target/plugins-0.1/`), in the same run.
fn wasm_plugins(c: &mut Criterion) {
    wasm_world(c, "wasm", "");
    wasm_world(c, "wasm-0.1", "-0.1");
}

fn wasm_world(c: &mut Criterion, prefix: &str, suffix: &str) {
    let runtime = Runtime::new(HostLimits::default()).expect("runtime");
    let plugins_dir = format!("plugins{suffix}");
    let test_dir = format!("test-plugins{suffix}");
    let plugins = [
        ("empty", load(&runtime, &test_dir, "chaos")),
        (
            "device-classifier",
            load(&runtime, &plugins_dir, "device-classifier"),
        ),
        (
            "page-view-counter",
            load(&runtime, &plugins_dir, "page-view-counter"),
        ),
        ("last-active", load(&runtime, &plugins_dir, "last-active")),
    ];
    for (name, plugin) in plugins {
        let mut group = c.benchmark_group(format!("{prefix}/{name}"));
        for batch in BATCHES {
            let events = events(batch);
            let refs: Vec<&Event> = events.iter().collect();
            let mut instance = PluginInstance::new(runtime.clone(), plugin.clone());
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &refs, |b, refs| {
                b.iter(|| black_box(instance.enrich(refs)))
            });
        }
        group.finish();
    }

    let chain = Chain::new(runtime.clone());
    for name in ["device-classifier", "page-view-counter", "last-active"] {
        chain
            .insert(load(&runtime, &plugins_dir, name))
            .expect("no clash");
    }
    let mut group = c.benchmark_group(format!("{prefix}/chain"));
    for batch in BATCHES {
        let events = events(batch);
        let mut worker = chain.worker();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &events, |b, events| {
            b.iter(|| black_box(worker.run(events)))
        });
    }
    group.finish();
}

fn host_update(update: sdk::Update) -> Update {
    let value = |v: sdk::Value| match v {
        sdk::Value::Text(s) => Value::Text(s),
        sdk::Value::Integer(i) => Value::Integer(i),
        sdk::Value::Float(f) => Value::Float(f),
        sdk::Value::Boolean(b) => Value::Boolean(b),
        sdk::Value::Timestamp(t) => Value::Timestamp(t),
    };
    let (attribute, op) = match update {
        sdk::Update::Set((a, v)) => (a, Op::Set(value(v))),
        sdk::Update::Increment((a, d)) => (a, Op::Increment(d)),
        sdk::Update::Max((a, v)) => (a, Op::Max(value(v))),
        sdk::Update::Min((a, v)) => (a, Op::Min(value(v))),
    };
    Update {
        attribute: attribute.into(),
        op,
    }
}

/// The three built-in plugins compiled natively, merged by the same merger:
/// what the chain costs without a sandbox.
struct NativeChain {
    device: device_classifier::DeviceClassifier,
    views: page_view_counter::PageViewCounter,
    active: last_active::LastActive,
}

impl NativeChain {
    fn new() -> Self {
        let config = sdk::Config::new(vec![("cache-size".into(), "4096".into())]);
        Self {
            device: device_classifier::DeviceClassifier::init(&config).expect("init"),
            views: page_view_counter::PageViewCounter::init(&config).expect("init"),
            active: last_active::LastActive::init(&config).expect("init"),
        }
    }

    fn run(&mut self, events: &[Event], inputs: &[sdk::Event]) -> usize {
        let mut merger = Merger::new(events);
        let results = [
            (
                "device-classifier",
                sdk::run_batch(&mut self.device, inputs),
            ),
            ("page-view-counter", sdk::run_batch(&mut self.views, inputs)),
            ("last-active", sdk::run_batch(&mut self.active, inputs)),
        ];
        for (name, results) in results {
            let handle = merger.plugin(name, "1.0.0");
            for (i, result) in results.into_iter().enumerate() {
                if let Ok(updates) = result {
                    let _ = merger.add(handle, i, updates.into_iter().map(host_update).collect());
                }
            }
        }
        merger.finish().len()
    }
}

fn native_plugins(c: &mut Criterion) {
    let config = sdk::Config::new(vec![("cache-size".into(), "4096".into())]);
    let mut device = device_classifier::DeviceClassifier::init(&config).expect("init");
    let mut views = page_view_counter::PageViewCounter::init(&config).expect("init");
    let mut active = last_active::LastActive::init(&config).expect("init");
    for batch in BATCHES {
        let inputs: Vec<sdk::Event> = events(batch).iter().map(sdk_event).collect();
        let mut bench = |name: &str, run: &mut dyn FnMut(&[sdk::Event]) -> usize| {
            let mut group = c.benchmark_group(format!("native/{name}"));
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &inputs, |b, inputs| {
                b.iter(|| black_box(run(inputs)))
            });
            group.finish();
        };
        bench("device-classifier", &mut |i| {
            sdk::run_batch(&mut device, i).len()
        });
        bench("page-view-counter", &mut |i| {
            sdk::run_batch(&mut views, i).len()
        });
        bench("last-active", &mut |i| sdk::run_batch(&mut active, i).len());
    }
    let mut chain = NativeChain::new();
    let mut group = c.benchmark_group("native/chain");
    for batch in BATCHES {
        let events = events(batch);
        let inputs: Vec<sdk::Event> = events.iter().map(sdk_event).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &inputs, |b, inputs| {
            b.iter(|| black_box(chain.run(&events, inputs)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = wasm_plugins, native_plugins
}
criterion_main!(benches);
