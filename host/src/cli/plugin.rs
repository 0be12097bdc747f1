//! `pulsehub plugin ...`: start a plugin crate, then try and inspect a plugin
//! package locally (contract §4).

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use pulsehub::model::event::Event;
use pulsehub::plugin::{HostLimits, Plugin, PluginInstance, Runtime, Subscription};

/// Events handed to the plugin per call, as in production.
const BATCH: usize = 256;

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Run every event of an NDJSON file through a plugin, under the
    /// production limits, and print one JSON line per event.
    Run {
        /// The component (NAME.wasm).
        #[arg(long)]
        plugin: PathBuf,
        /// The manifest; defaults to NAME.toml beside the component.
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Events, one JSON object per line (the wire format of contract §3).
        #[arg(long)]
        events: PathBuf,
    },
    /// Validate a plugin package and print what it is.
    Check {
        /// The component (NAME.wasm).
        plugin: PathBuf,
        /// The manifest; defaults to NAME.toml beside the component.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Start a Rust plugin crate that `cargo xtask plugins` builds as it is:
    /// DIR/NAME with Cargo.toml, plugin.toml, src/lib.rs and README.md.
    New {
        /// The plugin's name (and package name): a-z, 0-9 and -.
        name: String,
        /// Where to create the crate; defaults to plugins/ of the cargo
        /// workspace around the current directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Run {
            plugin,
            manifest,
            events,
        } => run_events(&plugin, manifest, &events),
        PluginCommand::Check { plugin, manifest } => check(&plugin, manifest),
        PluginCommand::New { name, dir } => super::scaffold::new_plugin(&name, dir.as_deref()),
    }
}

fn load(component: &Path, manifest: Option<PathBuf>) -> anyhow::Result<(Runtime, Arc<Plugin>)> {
    let manifest = manifest.unwrap_or_else(|| component.with_extension("toml"));
    let runtime = Runtime::new(HostLimits::default())?;
    let plugin = runtime.load_files(component, &manifest)?;
    Ok((runtime, plugin))
}

fn check(component: &Path, manifest: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (_runtime, plugin) = load(component, manifest)?;
    let m = &plugin.manifest;
    let limits = plugin.limits;
    let events = match &m.events {
        Subscription::All => "* (every kind)".to_owned(),
        Subscription::Kinds(kinds) => kinds.iter().cloned().collect::<Vec<_>>().join(", "),
    };
    let fields = [&["kind", "timestamp"][..], &m.fields.names()].concat();
    println!(
        "ok: {} {} is a valid pulsehub:plugin@{} enricher",
        m.name,
        plugin.version,
        plugin.world().version()
    );
    println!("world:       {}", plugin.world());
    println!("description: {}", m.description);
    println!("sha256:      {}", plugin.sha256);
    println!("events:      {events}");
    println!(
        "writes:      {}",
        m.writes.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    println!("fields:      {}", fields.join(", "));
    println!(
        "limits:      memory {} MiB, {} ms per event, {} updates per event, {} bytes per string",
        limits.memory_bytes / (1024 * 1024),
        limits.timeout_ms,
        limits.max_updates_per_event,
        limits.max_string_bytes
    );
    let keys: Vec<&str> = m.config.iter().map(|(k, _)| k.as_str()).collect();
    println!(
        "config:      {}",
        if keys.is_empty() {
            "(none)".to_owned()
        } else {
            keys.join(", ")
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn run_events(
    component: &Path,
    manifest: Option<PathBuf>,
    path: &Path,
) -> anyhow::Result<ExitCode> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (runtime, plugin) = load(component, manifest)?;
    eprintln!(
        "{} {} ({}): enriching {}",
        plugin.name(),
        plugin.version,
        plugin.world(),
        path.display()
    );
    let mut instance = PluginInstance::new(runtime, plugin.clone());
    let source = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = BufWriter::new(std::io::stdout().lock());

    // Lines are read and printed in order; decodable events are batched, a
    // bad line flushes the batch before it so the output keeps file order.
    let mut pending: Vec<Event> = Vec::with_capacity(BATCH);
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = number + 1;
        let line =
            line.with_context(|| format!("cannot read line {number} of {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match Event::from_json(line.as_bytes(), || format!("{source}:{number}")) {
            Ok(event) => {
                pending.push(event);
                if pending.len() == BATCH {
                    flush(&mut instance, &plugin, &mut pending, &mut out)?;
                }
            }
            Err(error) => {
                flush(&mut instance, &plugin, &mut pending, &mut out)?;
                let line = json!({"event_id": null, "line": number,
                                  "error": {"kind": "bad-event", "message": error.to_string()}});
                writeln!(out, "{line}")?;
            }
        }
    }
    flush(&mut instance, &plugin, &mut pending, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the pending events (those the plugin subscribes to) and prints a line for each.
fn flush(
    instance: &mut PluginInstance,
    plugin: &Plugin,
    pending: &mut Vec<Event>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let subscribed: Vec<&Event> = pending
        .iter()
        .filter(|e| plugin.manifest.events.matches(&e.kind))
        .collect();
    let mut results = instance.enrich(&subscribed).into_iter();
    for event in pending.iter() {
        let line = if !plugin.manifest.events.matches(&event.kind) {
            json!({"event_id": event.id, "updates": [], "subscribed": false})
        } else {
            match results.next() {
                Some(Ok(updates)) => {
                    let updates: Vec<_> = updates.iter().map(|u| u.to_json()).collect();
                    json!({"event_id": event.id, "updates": updates})
                }
                Some(Err(e)) => json!({"event_id": event.id,
                                       "error": {"kind": e.kind.as_str(), "message": e.message}}),
                None => anyhow::bail!("the runtime returned fewer results than events"),
            }
        };
        writeln!(out, "{line}")?;
    }
    pending.clear();
    Ok(())
}
