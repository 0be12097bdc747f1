//! The prototype of the batch-shaped world 0.2 (docs/plugin-abi-0.2-proposal.md,
//! `tests/plugins/abi-probe`), called the way a host would call it: the
//! batch's text copied into one arena, event kinds as indices, results only
//! for events with updates, attributes by index. Measured beside the 0.1
//! `wasm/empty` and `wasm/page-view-counter` groups, whose host path is the
//! real one ([`pulsehub::plugin::PluginInstance`]); here the host side is
//! the minimum a 0.2 host would do, so the two differ by the boundary and
//! that minimum, not by the 0.1 host's checks.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use pulsehub::model::event::Event;
use pulsehub::model::update::Op;

mod world {
    wasmtime::component::bindgen!({
        path: "../tests/plugins/abi-probe/wit",
        world: "enricher",
        ownership: Borrowing { duplicate_if_necessary: false },
    });
}

use world::Enricher;
use world::pulsehub::plugin::types as wit;

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A batch as the 0.2 world passes it: all its text in one arena, each
/// event as numbers. A host builds it once per batch, for every plugin of
/// the chain.
#[derive(Default)]
struct Arena {
    text: Vec<u8>,
    kinds: Vec<String>,
    events: Vec<u32>,
    timestamps: Vec<i64>,
}

impl Arena {
    fn fill(&mut self, events: &[&Event]) {
        self.text.clear();
        self.events.clear();
        self.timestamps.clear();
        for e in events {
            let kind = match self.kinds.iter().position(|k| *k == e.kind) {
                Some(i) => i,
                None => {
                    self.kinds.push(e.kind.clone());
                    self.kinds.len() - 1
                }
            };
            self.events.push(kind as u32);
            for s in [
                e.id.as_str(),
                &e.user_id,
                e.user_agent.as_deref().unwrap_or(""),
                e.url.as_deref().unwrap_or(""),
                &e.properties,
            ] {
                self.events.push(self.text.len() as u32);
                self.events.push(s.len() as u32);
                self.text.extend_from_slice(s.as_bytes());
            }
            self.timestamps.push(e.timestamp_ms);
        }
    }
}

/// One instance of the probe component.
struct Probe {
    store: Store<State>,
    enricher: Enricher,
}

impl Probe {
    fn new(mode: &str) -> Self {
        let mut config = Config::new();
        config.epoch_interruption(true).concurrency_support(false);
        let engine = Engine::new(&config).expect("engine");
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugins/abi-probe.wasm");
        let component = Component::from_file(&engine, &path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build the plugins first: cargo xtask plugins)",
                path.display()
            )
        });
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).expect("wasi");
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&engine, state);
        store.set_epoch_deadline(u64::MAX / 2);
        let enricher = Enricher::instantiate(&mut store, &component, &linker).expect("instance");
        enricher
            .call_init(&mut store, &[("mode", mode)])
            .expect("init call")
            .expect("init");
        Self { store, enricher }
    }

    /// Runs the batch in `arena` through the probe; returns its updates as
    /// (event, attribute index, operation), as a host merging by index
    /// takes them.
    fn run(&mut self, arena: &Arena) -> Vec<(u32, u32, Op)> {
        let kinds: Vec<&str> = arena.kinds.iter().map(String::as_str).collect();
        let batch = wit::Batch {
            text: &arena.text,
            kinds: &kinds,
            events: &arena.events,
            timestamps: &arena.timestamps,
        };
        let (writes, errors) = self
            .enricher
            .call_enrich(&mut self.store, batch)
            .expect("enrich");
        assert!(errors.is_empty());
        writes
            .into_iter()
            .map(|w| match w.update {
                wit::Update::Increment((i, d)) => (w.event, i, Op::Increment(d)),
                other => panic!("the probe sends increments only: {other:?}"),
            })
            .collect()
    }
}

pub fn bench(c: &mut Criterion, batches: &[usize], events: fn(usize) -> Vec<Event>) {
    let mut arena = Arena::default();
    for (name, mode) in [("empty", "empty"), ("page-view-counter", "count")] {
        let mut group = c.benchmark_group(format!("abi-0.2/{name}"));
        let mut probe = Probe::new(mode);
        for &batch in batches {
            let events = events(batch);
            let refs: Vec<&Event> = events.iter().collect();
            arena.fill(&refs);
            let counted = probe.run(&arena).len();
            let views = events.iter().filter(|e| e.kind == "page_view").count();
            assert_eq!(counted, if mode == "count" { views } else { 0 });
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::from_parameter(batch), &refs, |b, refs| {
                b.iter(|| {
                    arena.fill(refs);
                    black_box(probe.run(&arena))
                })
            });
        }
        group.finish();
    }
    // What the boundary costs a chain of three plugins when the host builds
    // the arena once per batch: three empty instances over one arena.
    let mut group = c.benchmark_group("abi-0.2/three-empty-one-arena");
    let mut probes = [
        Probe::new("empty"),
        Probe::new("empty"),
        Probe::new("empty"),
    ];
    for &batch in batches {
        let events = events(batch);
        let refs: Vec<&Event> = events.iter().collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &refs, |b, refs| {
            b.iter(|| {
                arena.fill(refs);
                for probe in &mut probes {
                    black_box(probe.run(&arena));
                }
            })
        });
    }
    group.finish();
}
