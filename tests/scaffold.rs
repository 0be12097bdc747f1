//! A plugin author's loop, end to end: `pulsehub plugin new` writes a crate
//! that `cargo xtask plugins` builds as it is, which the runtime loads and
//! which counts events.
//!
//! The same scaffold also builds the way Rust teams build components
//! elsewhere, `cargo build --target wasm32-wasip2`, and that component loads
//! and runs too (when `cargo xtask test` could add the target: it sets
//! `PULSEHUB_TEST_WASIP2`).
//!
//! The crate goes into a scratch workspace in a temporary directory, never
//! into this repository's `plugins/`. That workspace takes the repository's
//! SDK (by path), lock file, toolchain and wasm build cache, so the wasm
//! build compiles the new crate only.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use pulsehub::model::event::Event;
use pulsehub::model::update::Op;
use pulsehub::plugin::{HostLimits, PluginInstance, Runtime};

use support::services::workspace;

const NAME: &str = "scaffold-probe";
const ATTRIBUTE: &str = "scaffold_probe_events";

/// A workspace with `plugins/*` as members and what a plugin crate inherits
/// (the package fields, the SDK, the `plugin` profile) from this one.
fn scratch_workspace(repo: &Path, dir: &Path) {
    let text = std::fs::read_to_string(repo.join("Cargo.toml")).expect("read Cargo.toml");
    let root: toml::Table = toml::from_str(&text).expect("parse Cargo.toml");
    let package = root["workspace"]["package"].clone();
    let sdk = repo.join("plugins/sdk");
    let mut dependencies = toml::Table::new();
    dependencies.insert(
        "pulsehub-plugin-sdk".into(),
        toml::Value::Table(toml::Table::from_iter([(
            "path".to_owned(),
            toml::Value::String(sdk.display().to_string()),
        )])),
    );
    let workspace = toml::Table::from_iter([
        ("resolver".to_owned(), toml::Value::from("3")),
        (
            "members".to_owned(),
            toml::Value::Array(vec!["plugins/*".into()]),
        ),
        ("package".to_owned(), package),
        ("dependencies".to_owned(), toml::Value::Table(dependencies)),
    ]);
    let manifest = toml::Table::from_iter([
        ("workspace".to_owned(), toml::Value::Table(workspace)),
        ("profile".to_owned(), root["profile"].clone()),
    ]);
    std::fs::write(
        dir.join("Cargo.toml"),
        toml::to_string(&manifest).expect("render Cargo.toml"),
    )
    .expect("write Cargo.toml");
    // The same dependency versions as the repository, already downloaded.
    std::fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).expect("copy Cargo.lock");
}

fn pulsehub(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pulsehub"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run pulsehub")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch workspace, and what `plugin new` printed when it scaffolded
/// the crate there (from the workspace root: into its `plugins/`).
fn scaffolded(repo: &Path) -> (tempfile::TempDir, Output) {
    let scratch = tempfile::tempdir().expect("tempdir");
    scratch_workspace(repo, scratch.path());
    let new = pulsehub(scratch.path(), &["plugin", "new", NAME]);
    assert!(new.status.success(), "plugin new: {}", text(&new.stderr));
    (scratch, new)
}

/// An event of `kind` for the scaffold's user `u-1`.
fn event(id: &str, kind: &str) -> Event {
    Event {
        id: id.into(),
        user_id: "u-1".into(),
        anonymous_id: None,
        previous_id: None,
        known_user: true,
        profile_key: None,
        kind: kind.into(),
        timestamp_ms: 1_764_453_600_000,
        user_agent: None,
        url: None,
        properties: "{}".into(),
    }
}

#[test]
fn a_scaffolded_plugin_builds_loads_and_counts_events() {
    let repo = workspace();
    let (scratch, new) = scaffolded(&repo);
    let ws = scratch.path();
    let stdout = text(&new.stdout);
    assert!(
        stdout.contains("cargo xtask plugins")
            && stdout.contains(&format!("target/plugins/{NAME}.wasm")),
        "the next commands are printed:\n{stdout}"
    );
    let crate_dir = ws.join("plugins").join(NAME);
    for file in ["Cargo.toml", "plugin.toml", "src/lib.rs", "README.md"] {
        assert!(crate_dir.join(file).is_file(), "{file} is written");
    }
    let again = pulsehub(ws, &["plugin", "new", NAME]);
    assert!(!again.status.success(), "a second `plugin new` is refused");
    assert!(text(&again.stderr).contains("already exists"));

    // Build it the way `cargo xtask plugins` builds the repository's plugins.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--"])
        .args(["plugins", "--workspace"])
        .arg(ws)
        .current_dir(&repo)
        .output()
        .expect("run cargo xtask plugins");
    assert!(
        build.status.success(),
        "cargo xtask plugins --workspace failed:\n{}\n{}",
        text(&build.stdout),
        text(&build.stderr)
    );
    let out = ws.join("target/plugins");
    let (wasm, manifest) = (
        out.join(format!("{NAME}.wasm")),
        out.join(format!("{NAME}.toml")),
    );

    // Loaded by the runtime, it counts an event it subscribes to.
    let runtime = Runtime::new(HostLimits::default()).expect("runtime");
    let plugin = runtime.load_files(&wasm, &manifest).expect("load");
    // The SDK builds the scaffold against world 0.2.
    assert_eq!(plugin.world(), pulsehub::plugin::World::V0_2);
    assert_eq!(plugin.name(), NAME);
    assert_eq!(plugin.version, "0.1.0");
    assert!(plugin.manifest.events.matches("click"));
    let event = event("e-1", "click");
    let mut instance = PluginInstance::new(runtime, plugin);
    let results = instance.enrich(&[&event]);
    let [Ok(updates)] = &results[..] else {
        panic!("one successful result: {results:?}");
    };
    assert_eq!(updates.len(), 1, "{updates:?}");
    assert_eq!(&*updates[0].attribute, ATTRIBUTE);
    assert_eq!(updates[0].op, Op::Increment(1));

    // And `pulsehub plugin run`, as its README says, counts every example event.
    let events = repo.join("examples/events.ndjson");
    let run = pulsehub(
        ws,
        &[
            "plugin",
            "run",
            "--plugin",
            &wasm.display().to_string(),
            "--events",
            &events.display().to_string(),
        ],
    );
    assert!(run.status.success(), "plugin run: {}", text(&run.stderr));
    let lines = text(&run.stdout);
    let mut counted = 0;
    for line in lines.lines() {
        let line: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        // The example file ends with an invalid event, on purpose.
        if line["error"]["kind"] == "bad-event" {
            continue;
        }
        assert_eq!(
            line["updates"],
            serde_json::json!([{"op": "increment", "attribute": ATTRIBUTE, "delta": 1}]),
            "{line}"
        );
        counted += 1;
    }
    assert_eq!(
        counted, 3,
        "the example's valid events are counted:\n{lines}"
    );
}

/// Rust's own route to a component: `cargo build --target wasm32-wasip2`
/// of a scaffolded crate, with no PulseHub tooling, gives a component of
/// world 0.2 (importing WASI, which the host links to a context that
/// denies everything) that loads and counts events.
#[test]
fn a_scaffold_built_for_wasm32_wasip2_loads_and_counts_events() {
    if std::env::var_os("PULSEHUB_TEST_WASIP2").is_none() {
        eprintln!(
            "not run: PULSEHUB_TEST_WASIP2 is unset (cargo xtask test sets it once \
             `rustup target add wasm32-wasip2` succeeded)"
        );
        return;
    }
    let repo = workspace();
    let (scratch, _) = scaffolded(&repo);
    let ws = scratch.path();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(ws)
        .output()
        .expect("run cargo build");
    assert!(
        build.status.success(),
        "cargo build --target wasm32-wasip2 failed:\n{}",
        text(&build.stderr)
    );
    let wasm = ws
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", NAME.replace('-', "_")));
    let manifest = ws.join("plugins").join(NAME).join("plugin.toml");

    let runtime = Runtime::new(HostLimits::default()).expect("runtime");
    let plugin = runtime.load_files(&wasm, &manifest).expect("load");
    assert_eq!(plugin.world(), pulsehub::plugin::World::V0_2);
    let events: Vec<Event> = ["click", "page_view", "click"]
        .iter()
        .enumerate()
        .map(|(i, kind)| event(&format!("e-{i}"), kind))
        .collect();
    let refs: Vec<&Event> = events.iter().collect();
    let results = PluginInstance::new(runtime, plugin).enrich(&refs);
    for result in &results {
        let updates = result.as_ref().expect("counted");
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert_eq!(&*updates[0].attribute, ATTRIBUTE);
        assert_eq!(updates[0].op, Op::Increment(1));
    }
    assert_eq!(results.len(), 3);
}
