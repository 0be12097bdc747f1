//! The plugin runtime against real components: the built-in plugins and the
//! `chaos` and `wasi-probe` fixtures from `tests/plugins/`, built by
//! `cargo xtask plugins` into `target/plugins` and `target/test-plugins`.
//!
//! Every sandbox limit is tested in a pair: obeyed, then violated, under
//! each plugin world: the fixtures are built against 0.2 (`target/test-plugins`)
//! and against the frozen 0.1 (`target/test-plugins-0.1`).

mod support;

use std::process::Command;
use std::sync::Arc;

use pulsehub::model::event::Event;
use pulsehub::model::update::{Op, Update, Value};
use pulsehub::plugin::chain::Chain;
use pulsehub::plugin::{
    ErrorKind, HostLimits, LoadError, Manifest, Plugin, PluginInstance, Runtime, World,
};

use support::services::workspace;

/// The bytes of a built component; run `cargo xtask plugins` to build them.
fn component(dir: &str, name: &str) -> Vec<u8> {
    let path = workspace()
        .join("target")
        .join(dir)
        .join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the plugins first: cargo xtask plugins",
            path.display()
        )
    })
}

fn runtime() -> Runtime {
    Runtime::new(HostLimits::default()).expect("runtime")
}

/// A chaos manifest with the given extra lines (limits, config).
fn chaos_manifest(name: &str, writes: &str, extra: &str) -> Manifest {
    format!("name = \"{name}\"\nversion = \"0.1.0\"\nevents = [\"*\"]\nwrites = {writes}\n{extra}")
        .parse()
        .expect("chaos manifest")
}

/// The worlds the SDK-built fixtures come in, and the folders they are in.
const WORLDS: [(World, &str); 2] = [(World::V0_2, ""), (World::V0_1, "-0.1")];

/// The folder of the test fixtures built against `world`.
fn test_plugins(world: World) -> String {
    let suffix = WORLDS
        .iter()
        .find(|(w, _)| *w == world)
        .map_or("", |(_, suffix)| suffix);
    format!("test-plugins{suffix}")
}

/// The chaos fixture built against `world`.
fn chaos_in(world: World, runtime: &Runtime, extra: &str) -> Result<Arc<Plugin>, LoadError> {
    let manifest = chaos_manifest("chaos", r#"["chaos_count", "chaos_text"]"#, extra);
    let plugin = runtime.load(manifest, &component(&test_plugins(world), "chaos"))?;
    assert_eq!(plugin.world(), world, "the fixture's world");
    Ok(plugin)
}

fn builtin(runtime: &Runtime, name: &str) -> Arc<Plugin> {
    builtin_in(World::V0_2, runtime, name)
}

/// A built-in plugin, built against `world`.
fn builtin_in(world: World, runtime: &Runtime, name: &str) -> Arc<Plugin> {
    let dir = match world {
        World::V0_2 => workspace().join("target/plugins"),
        World::V0_1 => workspace().join("target/plugins-0.1"),
    };
    runtime
        .load_files(
            &dir.join(format!("{name}.wasm")),
            &dir.join(format!("{name}.toml")),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The three built-ins, each built against the world given for it, as one chain.
fn builtin_chain(runtime: &Runtime, worlds: [World; 3]) -> Arc<Chain> {
    let chain = Chain::new(runtime.clone());
    for (name, world) in ["device-classifier", "page-view-counter", "last-active"]
        .into_iter()
        .zip(worlds)
    {
        let plugin = builtin_in(world, runtime, name);
        assert_eq!(plugin.world(), world, "{name}");
        chain.insert(plugin).expect("no clash");
    }
    chain
}

fn event(id: &str, user: &str, kind: &str, at: i64) -> Event {
    Event {
        id: id.into(),
        user_id: user.into(),
        anonymous_id: None,
        previous_id: None,
        known_user: true,
        profile_key: None,
        kind: kind.into(),
        timestamp_ms: at,
        user_agent: None,
        url: None,
        properties: "{}".into(),
    }
}

/// Runs one event per kind through a fresh instance of `plugin`, as one batch.
fn run_kinds(
    runtime: &Runtime,
    plugin: &Arc<Plugin>,
    kinds: &[&str],
) -> Vec<Result<Vec<Update>, pulsehub::plugin::PluginError>> {
    let events: Vec<Event> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| event(&format!("e-{i}"), "u-1", kind, i as i64))
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    PluginInstance::new(runtime.clone(), plugin.clone()).enrich(&refs)
}

fn kind_of(result: &Result<Vec<Update>, pulsehub::plugin::PluginError>) -> Option<ErrorKind> {
    result.as_ref().err().map(|e| e.kind)
}

fn count_one() -> Vec<Update> {
    vec![Update {
        attribute: "chaos_count".into(),
        op: Op::Increment(1),
    }]
}

#[test]
fn memory_limit_obeyed_and_violated() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        // A generous time budget: the budget is wall-clock time, and on a busy
        // machine growing the memory to its limit can take longer than the
        // default 20 ms; only the memory limit is under test here.
        let plugin = chaos_in(world, &rt, "[limits]\nmemory-mb = 4\ntimeout-ms = 1000")
            .expect("loads within 4 MiB");
        let results = run_kinds(&rt, &plugin, &["count", "alloc", "count"]);
        assert_eq!(results[0].as_ref().expect("obeyed"), &count_one());
        let error = results[1].as_ref().expect_err("violated");
        assert_eq!(error.kind, ErrorKind::Memory, "{error}");
        assert!(error.message.contains("4 MiB"), "{error}");
        assert_eq!(
            results[2].as_ref().expect("neighbour enriched"),
            &count_one()
        );
    }
}

#[test]
fn memory_limit_applies_to_init() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        chaos_in(
            world,
            &rt,
            "[limits]\nmemory-mb = 8\n[config]\ninit-alloc-mb = \"2\"",
        )
        .expect("2 MiB fits in 8");
        let refused = chaos_in(
            world,
            &rt,
            "[limits]\nmemory-mb = 8\n[config]\ninit-alloc-mb = \"16\"",
        )
        .expect_err("16 MiB does not fit in 8");
        assert!(
            matches!(&refused, LoadError::Init { reason, .. } if reason.contains("memory")),
            "{refused}"
        );
    }
}

#[test]
fn time_budget_obeyed_and_violated() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        let plugin = chaos_in(world, &rt, "[limits]\ntimeout-ms = 10").expect("loads");
        let results = run_kinds(&rt, &plugin, &["count", "spin", "count", "count"]);
        assert_eq!(results[0].as_ref().expect("obeyed"), &count_one());
        let error = results[1].as_ref().expect_err("violated");
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert!(error.message.contains("10 ms"), "{error}");
        assert_eq!(error.event_id, "e-1");
        assert!(
            results[2].is_ok() && results[3].is_ok(),
            "neighbours enriched: {results:?}"
        );
    }
}

#[test]
fn output_limits_obeyed_and_violated() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        let plugin = chaos_in(world, &rt, "").expect("loads");
        let results = run_kinds(&rt, &plugin, &["echo", "flood", "big", "count"]);
        assert!(
            matches!(&results[0].as_ref().expect("small text is fine")[..],
            [Update { op: Op::Set(Value::Text(t)), .. }] if t == "{}")
        );
        assert_eq!(
            kind_of(&results[1]),
            Some(ErrorKind::OutputLimit),
            "{:?}",
            results[1]
        );
        assert_eq!(
            kind_of(&results[2]),
            Some(ErrorKind::OutputLimit),
            "{:?}",
            results[2]
        );
        assert!(results[3].is_ok());
    }
}

#[test]
fn undeclared_write_obeyed_and_violated() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        let plugin = chaos_in(world, &rt, "").expect("loads");
        let results = run_kinds(&rt, &plugin, &["count", "undeclared"]);
        assert!(results[0].is_ok(), "declared attribute: {:?}", results[0]);
        let error = results[1].as_ref().expect_err("undeclared attribute");
        assert_eq!(error.kind, ErrorKind::UndeclaredWrite);
        assert!(error.message.contains("not_declared"), "{error}");
    }
}

#[test]
fn plugin_errors_are_per_event() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        let plugin = chaos_in(world, &rt, "").expect("loads");
        let results = run_kinds(&rt, &plugin, &["fail", "count", "log"]);
        let error = results[0].as_ref().expect_err("fail");
        assert_eq!(
            (error.kind, error.message.as_str()),
            (ErrorKind::InvalidEvent, "chaos: fail requested")
        );
        assert!(results[1].is_ok() && results[2].is_ok());
    }
}

#[test]
fn a_trap_fails_its_event_alone_and_the_instance_recovers() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        let plugin = chaos_in(world, &rt, "").expect("loads");
        let mut instance = PluginInstance::new(rt.clone(), plugin.clone());
        let events: Vec<Event> = ["count", "count", "trap", "count", "count"]
            .iter()
            .enumerate()
            .map(|(i, kind)| event(&format!("e-{i}"), "u", kind, 0))
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        let results = instance.enrich(&refs);
        for (i, result) in results.iter().enumerate() {
            if i == 2 {
                let error = result.as_ref().expect_err("the trap");
                assert_eq!(error.kind, ErrorKind::Trap);
                assert_eq!(
                    (
                        error.plugin.as_str(),
                        error.version.as_str(),
                        error.event_id.as_str()
                    ),
                    ("chaos", "0.1.0", "e-2")
                );
                assert!(error.message.contains("unreachable"), "{error}");
            } else {
                assert_eq!(result.as_ref().expect("neighbour"), &count_one());
            }
        }
        // The same worker instance keeps working after the trap.
        let again = instance.enrich(&refs[..2]);
        assert!(again.iter().all(Result::is_ok), "{again:?}");
    }
}

#[test]
fn init_error_refuses_the_plugin() {
    for (world, _) in WORLDS {
        eprintln!("under {world}");
        let rt = runtime();
        chaos_in(world, &rt, "[config]\nfail-init = \"false\"").expect("init succeeds");
        let error = chaos_in(world, &rt, "[config]\nfail-init = \"true\"").expect_err("init fails");
        let text = error.to_string();
        assert!(matches!(error, LoadError::Init { .. }), "{text}");
        assert!(
            text.contains("chaos: init failed as configured") && text.contains("chaos 0.1.0"),
            "{text}"
        );
    }
}

#[test]
fn bad_components_are_refused_with_a_reason() {
    let rt = runtime();
    let manifest = || chaos_manifest("chaos", r#"["chaos_count"]"#, "");
    let garbage = rt
        .load(manifest(), b"definitely not wasm")
        .expect_err("garbage");
    assert!(
        matches!(&garbage, LoadError::Component { reason, .. } if reason.contains("not WebAssembly")),
        "{garbage}"
    );

    let core = wat::parse_str("(module (func (export \"enrich\")))").expect("core module");
    let core = rt.load(manifest(), &core).expect_err("core module");
    assert!(
        core.to_string()
            .contains("core WebAssembly module, not a component"),
        "{core}"
    );

    let empty = wat::parse_str("(component)").expect("empty component");
    let empty = rt.load(manifest(), &empty).expect_err("exports nothing");
    assert!(matches!(empty, LoadError::World { .. }), "{empty}");

    let foreign = wat::parse_str(
        r#"(component (import "acme:billing/charge@1.0.0" (instance (export "charge" (func)))))"#,
    )
    .expect("foreign component");
    let foreign = rt
        .load(manifest(), &foreign)
        .expect_err("imports an unknown interface");
    assert!(
        foreign.to_string().contains("acme:billing/charge"),
        "{foreign}"
    );
}

#[test]
fn bad_manifests_are_refused_before_compiling() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("chaos.toml");
    std::fs::write(
        &manifest,
        "name = \"chaos\"\nversion = \"one\"\nevents = [\"*\"]\nwrites = [\"x\"]\n",
    )
    .expect("write");
    let error = runtime()
        .load_files(
            &workspace().join("target/test-plugins/chaos.wasm"),
            &manifest,
        )
        .expect_err("bad version");
    assert!(
        error.to_string().contains("manifest key `version`"),
        "{error}"
    );
}

#[test]
fn an_attribute_has_one_owner() {
    let rt = runtime();
    let bytes = component("test-plugins", "chaos");
    let load = |name: &str, writes: &str| {
        rt.load(chaos_manifest(name, writes, ""), &bytes)
            .expect("loads")
    };
    let chain = Chain::new(rt.clone());
    chain
        .insert(load("chaos-a", r#"["chaos_count"]"#))
        .expect("first owner");
    chain
        .insert(load("chaos-b", r#"["chaos_text"]"#))
        .expect("other attribute: obeyed");
    let clash = chain
        .insert(load("chaos-c", r#"["chaos_text", "extra"]"#))
        .expect_err("violated");
    assert!(
        matches!(&clash, LoadError::OwnershipClash { attribute, owner, .. }
        if attribute == "chaos_text" && owner == "chaos-b"),
        "{clash}"
    );
    assert_eq!(
        chain.plugins().len(),
        2,
        "the refused plugin changed nothing"
    );
    // A new version of the same plugin may keep its own attributes.
    let previous = chain
        .insert(load("chaos-b", r#"["chaos_text"]"#))
        .expect("replace");
    assert!(previous.is_some());
}

#[test]
fn the_built_in_chain_builds_profiles() {
    let rt = runtime();
    let chain = Chain::new(rt.clone());
    for name in ["device-classifier", "page-view-counter", "last-active"] {
        chain.insert(builtin(&rt, name)).expect("no clash");
    }
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    let mut events = vec![
        event("a", "u-1", "page_view", 3_000),
        event("b", "u-1", "click", 1_000),
        event("c", "u-1", "page_view", 2_000),
        event("d", "u-2", "page_view", 5_000),
    ];
    events[0].user_agent = Some(iphone.into());
    let outcome = chain.worker().run(&events);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    let u1 = &outcome.changes["u-1"];
    assert_eq!(u1["page_views"].op, Op::Increment(2));
    assert_eq!(u1["last_active_at"].op, Op::Max(Value::Timestamp(3_000)));
    assert_eq!(u1["first_seen_at"].op, Op::Min(Value::Timestamp(1_000)));
    assert_eq!(u1["first_seen_at"].provenance.event_id, "b");
    assert_eq!(u1["device_type"].op, Op::Set(Value::Text("mobile".into())));
    assert_eq!(&*u1["device_type"].provenance.plugin, "device-classifier");
    assert_eq!(&*u1["device_type"].provenance.plugin_version, "1.0.0");
    let u2 = &outcome.changes["u-2"];
    assert_eq!(u2["page_views"].op, Op::Increment(1));
    assert!(!u2.contains_key("device_type"), "no User-Agent, no device");
}

/// 0.1 and 0.2 components run side by side in one chain, and a plugin gives
/// the same updates whichever world it was built for: every field reaches
/// it (text, absent and empty ones, non-ASCII), and the merged changes of
/// every mix of worlds are the same, to the provenance.
#[test]
fn plugins_of_both_worlds_run_side_by_side_in_one_chain() {
    use World::{V0_1, V0_2};
    let rt = runtime();
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    let desktop = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let mut events: Vec<Event> = (0..300)
        .map(|i| {
            let kind = ["page_view", "click", "purchase"][i % 3];
            let mut e = event(
                &format!("é-{i}"),
                &format!("u-{}", i % 7),
                kind,
                1_000 + (i as i64 * 37) % 500,
            );
            e.user_agent = match i % 4 {
                0 => Some(iphone.into()),
                1 => Some(desktop.into()),
                2 => Some(String::new()),
                _ => None,
            };
            e.url = (i % 2 == 0).then(|| format!("https://shop.example/ü/{i}"));
            e.properties = format!(r#"{{"n":{i},"name":"Zoë"}}"#);
            e
        })
        .collect();
    events[5].user_id = "u-5".into();

    let mut seen = Vec::new();
    for worlds in [
        [V0_2, V0_2, V0_2],
        [V0_1, V0_1, V0_1],
        [V0_1, V0_2, V0_1],
        [V0_2, V0_1, V0_2],
    ] {
        let chain = builtin_chain(&rt, worlds);
        let outcome = chain.worker().run(&events);
        assert!(
            outcome.errors.is_empty(),
            "{worlds:?}: {:?}",
            outcome.errors
        );
        seen.push((worlds, outcome.changes));
    }
    let (_, first) = &seen[0];
    for (worlds, changes) in &seen[1..] {
        assert_eq!(changes, first, "{worlds:?} against all 0.2");
    }

    // Exact values, from the events as built above.
    let users: Vec<&String> = first.keys().collect();
    assert_eq!(users.len(), 7);
    for (user, changes) in first {
        let mine: Vec<(usize, &Event)> = events
            .iter()
            .enumerate()
            .filter(|(_, e)| &e.user_id == user)
            .collect();
        let views = mine.iter().filter(|(_, e)| e.kind == "page_view").count() as i64;
        let latest = mine
            .iter()
            .map(|(_, e)| e.timestamp_ms)
            .max()
            .expect("events");
        let earliest = mine
            .iter()
            .map(|(_, e)| e.timestamp_ms)
            .min()
            .expect("events");
        if views > 0 {
            assert_eq!(changes["page_views"].op, Op::Increment(views), "{user}");
        } else {
            assert!(!changes.contains_key("page_views"), "{user}");
        }
        assert_eq!(
            changes["last_active_at"].op,
            Op::Max(Value::Timestamp(latest)),
            "{user}"
        );
        assert_eq!(
            changes["first_seen_at"].op,
            Op::Min(Value::Timestamp(earliest)),
            "{user}"
        );
        // The device comes from the latest event with a User-Agent the
        // classifier knows; an empty or absent one classifies as nothing.
        let device = &changes["device_type"];
        let decided = &events
            .iter()
            .find(|e| e.id == device.provenance.event_id)
            .expect("the deciding event is in the batch");
        let expected = match decided.user_agent.as_deref() {
            Some(ua) if ua == iphone => "mobile",
            Some(ua) if ua == desktop => "desktop",
            other => panic!("{user}: device decided by an event with User-Agent {other:?}"),
        };
        assert_eq!(device.op, Op::Set(Value::Text(expected.into())), "{user}");
    }
}

#[test]
fn plugins_see_only_the_kinds_they_subscribe_to() {
    let rt = runtime();
    let chain = Chain::new(rt.clone());
    chain
        .insert(builtin(&rt, "page-view-counter"))
        .expect("insert");
    let manifest: Manifest =
        "name = \"chaos\"\nversion = \"0.1.0\"\nevents = [\"count\"]\nwrites = [\"chaos_count\"]"
            .parse()
            .expect("manifest");
    chain
        .insert(
            rt.load(manifest, &component("test-plugins", "chaos"))
                .expect("load"),
        )
        .expect("insert");
    // "trap" and "spin" would fail chaos if it saw them.
    let events = [
        event("a", "u", "count", 1),
        event("b", "u", "trap", 2),
        event("c", "u", "spin", 3),
        event("d", "u", "page_view", 4),
    ];
    let outcome = chain.worker().run(&events);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(outcome.changes["u"]["chaos_count"].op, Op::Increment(1));
    assert_eq!(outcome.changes["u"]["page_views"].op, Op::Increment(1));
}

#[test]
fn a_worker_picks_up_a_new_version_at_the_next_batch() {
    let rt = runtime();
    let bytes = component("test-plugins", "chaos");
    let chain = Chain::new(rt.clone());
    chain
        .insert(
            rt.load(chaos_manifest("chaos", r#"["chaos_count"]"#, ""), &bytes)
                .expect("v1"),
        )
        .expect("insert");
    let mut worker = chain.worker();
    let batch = [event("a", "u", "count", 1)];
    assert_eq!(
        &*worker.run(&batch).changes["u"]["chaos_count"]
            .provenance
            .plugin_version,
        "0.1.0"
    );
    let v2 = "name = \"chaos\"\nversion = \"0.2.0\"\nevents = [\"*\"]\nwrites = [\"chaos_count\"]"
        .parse()
        .expect("v2");
    chain
        .insert(rt.load(v2, &bytes).expect("v2 loads"))
        .expect("swap");
    assert_eq!(
        &*worker.run(&batch).changes["u"]["chaos_count"]
            .provenance
            .plugin_version,
        "0.2.0"
    );
    chain.remove("chaos").expect("removed");
    assert!(worker.run(&batch).changes.is_empty());
}

#[test]
fn wasi_components_load_in_a_sandbox_that_denies_everything() {
    let rt = runtime();
    let dir = workspace().join("target/test-plugins");
    let plugin = rt
        .load_files(&dir.join("wasi-probe.wasm"), &dir.join("wasi-probe.toml"))
        .expect("a component importing WASI 0.2 loads");
    let results = run_kinds(&rt, &plugin, &["probe"]);
    let updates = results[0].as_ref().expect("probe");
    let get = |name: &str| {
        updates
            .iter()
            .find(|u| &*u.attribute == name)
            .and_then(|u| u.op.value().cloned())
            .unwrap_or_else(|| panic!("no {name} in {updates:?}"))
    };
    assert_eq!(get("env_vars"), Value::Integer(0), "no environment");
    assert_eq!(get("args"), Value::Integer(0), "no arguments");
    assert_eq!(get("preopens"), Value::Integer(0), "no files");
    assert_eq!(get("random_ok"), Value::Boolean(true), "randomness allowed");
    assert_eq!(get("clock_ok"), Value::Boolean(true), "clocks allowed");
}

#[test]
fn plugin_run_prints_one_line_per_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        concat!(
            r#"{"event_id":"e-1","user_id":"u","event_type":"count","timestamp":1}"#,
            "\n",
            "this is not json\n",
            "\n",
            r#"{"user_id":"u","event_type":"trap","timestamp":"2026-11-29T22:00:00Z"}"#,
            "\n",
            r#"{"event_id":"e-4","user_id":"u","event_type":"count","timestamp":4}"#,
            "\n",
        ),
    )
    .expect("write events");
    let plugins = workspace().join("target/test-plugins");
    let output = Command::new(env!("CARGO_BIN_EXE_pulsehub"))
        .args(["plugin", "run", "--plugin"])
        .arg(plugins.join("chaos.wasm"))
        .arg("--events")
        .arg(&events)
        .output()
        .expect("run pulsehub");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["event_id"], "e-1");
    assert_eq!(
        lines[0]["updates"][0],
        serde_json::json!({"op": "increment", "attribute": "chaos_count", "delta": 1})
    );
    assert_eq!(lines[1]["error"]["kind"], "bad-event");
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[2]["event_id"], "events.ndjson:4", "derived id");
    assert_eq!(lines[2]["error"]["kind"], "trap");
    assert_eq!(lines[3]["event_id"], "e-4");
    assert_eq!(lines[3]["updates"].as_array().map(Vec::len), Some(1));
}

#[test]
fn plugin_run_fails_when_the_plugin_cannot_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("broken.wasm");
    std::fs::write(&wasm, b"garbage").expect("write");
    std::fs::write(
        dir.path().join("broken.toml"),
        "name = \"broken\"\nversion = \"1.0.0\"\nevents = [\"*\"]\nwrites = [\"x\"]\n",
    )
    .expect("write");
    let events = dir.path().join("events.ndjson");
    std::fs::write(&events, "").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_pulsehub"))
        .args(["plugin", "run", "--plugin"])
        .arg(&wasm)
        .arg("--events")
        .arg(&events)
        .output()
        .expect("run pulsehub");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not WebAssembly"));
}

#[test]
fn plugin_check_describes_a_valid_plugin() {
    let plugins = workspace().join("target/plugins");
    let output = Command::new(env!("CARGO_BIN_EXE_pulsehub"))
        .args(["plugin", "check"])
        .arg(plugins.join("device-classifier.wasm"))
        .output()
        .expect("run pulsehub");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("ok: device-classifier 1.0.0"), "{stdout}");
    assert!(
        stdout.contains("writes:      browser_family, device_type, os_family"),
        "{stdout}"
    );
}

/// A plugin sees every field of an event the same under either world:
/// absent and empty text told apart, text outside ASCII, and the fields
/// its manifest does not list withheld in the same way.
#[test]
fn every_field_reaches_a_plugin_of_either_world_as_sent() {
    let rt = runtime();
    let mut events = [
        event("e-1", "u-1", "fields", 7),
        event("é-2", "ü-2", "fields", -5),
        event("e-3", "", "fields", i64::MAX),
    ];
    events[0].user_agent = Some(String::new());
    events[0].url = None;
    events[1].user_agent = Some("Zoë's browser".into());
    events[1].url = Some("https://shop.example/ü".into());
    events[1].properties = r#"{"name":"Zoë"}"#.into();
    events[2].user_agent = None;
    events[2].url = Some(String::new());
    events[2].properties = String::new();
    let refs: Vec<&Event> = events.iter().collect();
    let text = |results: &[Result<Vec<Update>, pulsehub::plugin::PluginError>]| -> Vec<String> {
        results
            .iter()
            .map(|r| match &r.as_ref().expect("fields")[..] {
                [
                    Update {
                        op: Op::Set(Value::Text(t)),
                        ..
                    },
                ] => t.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    for (fields, expected) in [
        (
            "",
            [
                r#""e-1" "u-1" "fields" 7 Some("") None "{}""#,
                r#""é-2" "ü-2" "fields" -5 Some("Zoë's browser") Some("https://shop.example/ü") "{\"name\":\"Zoë\"}""#,
                r#""e-3" "" "fields" 9223372036854775807 None Some("") """#,
            ],
        ),
        (
            "fields = [\"user_agent\"]",
            [
                r#""" "" "fields" 7 Some("") None "{}""#,
                r#""" "" "fields" -5 Some("Zoë's browser") None "{}""#,
                r#""" "" "fields" 9223372036854775807 None None "{}""#,
            ],
        ),
    ] {
        for (world, _) in WORLDS {
            let manifest = chaos_manifest("chaos", r#"["chaos_text"]"#, fields);
            let plugin = rt
                .load(manifest, &component(&test_plugins(world), "chaos"))
                .expect("loads");
            assert_eq!(plugin.world(), world);
            let results = PluginInstance::new(rt.clone(), plugin).enrich(&refs);
            assert_eq!(text(&results), expected, "{world}, manifest {fields:?}");
        }
    }
}

/// The host's checks of a 0.2 component's output, with a component that
/// breaks them where the SDK would not: an attribute index outside
/// `writes`, and a result for an event the batch does not have.
#[test]
fn the_output_rules_of_world_0_2_obeyed_and_violated() {
    let rt = runtime();
    let probe = |mode: &str| {
        let manifest: Manifest = format!(
            "name = \"abi-probe\"\nversion = \"0.2.0\"\nevents = [\"*\"]\nwrites = [\"page_views\"]\n[config]\nmode = \"{mode}\""
        )
        .parse()
        .expect("manifest");
        let plugin = rt
            .load(manifest, &component("test-plugins", "abi-probe"))
            .expect("loads");
        assert_eq!(plugin.world(), World::V0_2);
        plugin
    };
    let kinds = ["page_view", "click", "page_view"];

    let results = run_kinds(&rt, &probe("count"), &kinds);
    let views = vec![Update {
        attribute: "page_views".into(),
        op: Op::Increment(1),
    }];
    assert_eq!(results[0].as_ref().expect("obeyed"), &views);
    assert_eq!(results[1].as_ref().expect("obeyed"), &Vec::new());
    assert_eq!(results[2].as_ref().expect("obeyed"), &views);

    for result in run_kinds(&rt, &probe("bad-index"), &kinds) {
        let error = result.expect_err("an index outside writes");
        assert_eq!(error.kind, ErrorKind::UndeclaredWrite, "{error}");
        assert!(
            error.message.contains("index 7") && error.message.contains("1 attribute"),
            "{error}"
        );
    }

    // The whole call is refused, then each event alone: each call again
    // returns a result past its batch's end.
    let results = run_kinds(&rt, &probe("bad-event"), &kinds);
    for (i, result) in results.into_iter().enumerate() {
        let error = result.expect_err("an event outside the batch");
        assert_eq!(error.kind, ErrorKind::InvalidOutput, "{error}");
        assert_eq!(error.event_id, format!("e-{i}"));
        assert!(error.message.contains("event 1 of a batch of 1"), "{error}");
    }
}
