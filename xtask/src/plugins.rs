//! `cargo xtask plugins`: every plugin crate, built in one cargo invocation,
//! then turned into a component.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::ComponentEncoder;

const TARGET: &str = "wasm32-unknown-unknown";
const PROFILE: &str = "plugin";
/// The linker `scripts/wasm-toolchain.sh` installs (Debian's `lld-22`).
const WASM_LD: &str = "/usr/lib/llvm-22/bin/wasm-ld";

/// Where plugin crates live, and where their components go under `target/`.
const PLUGIN_DIRS: &[(&str, &str)] = &[("plugins", "plugins"), ("tests/plugins", "test-plugins")];

/// One plugin crate found in the workspace.
#[derive(Debug)]
struct PluginCrate {
    /// The crate's directory.
    dir: PathBuf,
    /// The package name in its `Cargo.toml`.
    package: String,
    /// The `name` in its `plugin.toml`.
    name: String,
    /// The folder under `target/` its component goes to.
    out_dir: PathBuf,
}

impl PluginCrate {
    fn manifest(&self) -> PathBuf {
        self.dir.join("plugin.toml")
    }

    /// The core module cargo writes for this crate.
    fn core_module(&self, wasm_target_dir: &Path) -> PathBuf {
        wasm_target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", self.package.replace('-', "_")))
    }
}

/// How to get a compiler that targets `wasm32-unknown-unknown`.
#[derive(Debug)]
enum Toolchain {
    /// The toolchain in use has the target installed.
    Installed,
    /// Debian's rustc unpacked into `prefix`, building std with `-Zbuild-std`.
    BuildStd { prefix: PathBuf },
}

/// The SDK feature that exports the frozen 0.1 world instead of 0.2.
const WORLD_0_1: &str = "pulsehub-plugin-sdk/world-0-1";

/// Builds the plugin crates of this repository's workspace, then builds the
/// SDK-based ones again against the frozen 0.1 world, into folders named
/// with `-0.1` (`target/plugins-0.1/`, `target/test-plugins-0.1/`): the
/// benches compare the two worlds on the same plugins, and the tests run
/// both side by side.
pub fn build_all(root: &Path) -> Result<()> {
    let plugins = discover_some(root)?;
    let toolchain = choose_toolchain(root)?;
    build(root, root, &toolchain, &plugins, None)?;
    let mut sdk_based = Vec::new();
    for mut plugin in plugins {
        if uses_sdk(&plugin)? {
            let mut out = plugin.out_dir.into_os_string();
            out.push("-0.1");
            plugin.out_dir = PathBuf::from(out);
            sdk_based.push(plugin);
        }
    }
    build(root, root, &toolchain, &sdk_based, Some(WORLD_0_1))
}

/// Builds the plugin crates of the cargo workspace at `workspace` (under its
/// `plugins/` and `tests/plugins/`) into components under its `target/`,
/// with the toolchain and the wasm build cache of the repository at `repo`,
/// which the workspace shares when it is another one (a team's own, or a
/// test's scratch workspace).
pub fn build_workspace(repo: &Path, workspace: &Path) -> Result<()> {
    let plugins = discover_some(workspace)?;
    let toolchain = choose_toolchain(repo)?;
    build(repo, workspace, &toolchain, &plugins, None)
}

/// Builds `plugins` of `workspace` in one cargo invocation (against the 0.1
/// world when `features` is [`WORLD_0_1`]) and turns each into a component.
fn build(
    repo: &Path,
    workspace: &Path,
    toolchain: &Toolchain,
    plugins: &[PluginCrate],
    features: Option<&str>,
) -> Result<()> {
    let started = Instant::now();
    let world = if features == Some(WORLD_0_1) {
        " against world 0.1.0"
    } else {
        ""
    };
    let wasm_target_dir = repo.join("target").join("wasm");
    cargo_build(workspace, &wasm_target_dir, toolchain, plugins, features)?;
    println!("components{world}:");
    for plugin in plugins {
        let (path, size) = componentize(&wasm_target_dir, plugin)?;
        let shown = path.strip_prefix(workspace).unwrap_or(&path);
        println!(
            "  {:<20} {:<40} {:>10}",
            plugin.name,
            shown.display(),
            human_size(size)
        );
    }
    println!(
        "built {} plugin(s){world} in {:.1} s",
        plugins.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether the crate depends on the SDK (and so can be built against 0.1).
fn uses_sdk(plugin: &PluginCrate) -> Result<bool> {
    let cargo_toml = plugin.dir.join("Cargo.toml");
    let text = fs::read_to_string(&cargo_toml)
        .with_context(|| format!("reading {}", cargo_toml.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", cargo_toml.display()))?;
    Ok(doc
        .get("dependencies")
        .and_then(toml::Value::as_table)
        .is_some_and(|deps| deps.contains_key("pulsehub-plugin-sdk")))
}

/// [`discover`], refusing a workspace without plugin crates.
fn discover_some(workspace: &Path) -> Result<Vec<PluginCrate>> {
    let plugins = discover(workspace)?;
    ensure!(
        !plugins.is_empty(),
        "no plugin crates (directories with a plugin.toml) under {}",
        PLUGIN_DIRS
            .iter()
            .map(|(dir, _)| workspace.join(dir).display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    );
    Ok(plugins)
}

/// Every directory with a `plugin.toml` under the plugin folders, sorted.
fn discover(root: &Path) -> Result<Vec<PluginCrate>> {
    let mut plugins = Vec::new();
    for (src, out) in PLUGIN_DIRS {
        let src = root.join(src);
        let entries = match fs::read_dir(&src) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("listing {}", src.display())),
        };
        let mut dirs = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", src.display()))?;
            let dir = entry.path();
            if dir.join("plugin.toml").is_file() {
                dirs.push(dir);
            }
        }
        dirs.sort();
        for dir in dirs {
            plugins.push(read_plugin(&dir, &root.join("target").join(out))?);
        }
    }

    let mut names: BTreeMap<&str, &Path> = BTreeMap::new();
    for plugin in &plugins {
        if let Some(other) = names.insert(&plugin.name, &plugin.dir) {
            bail!(
                "two plugins are named `{}`: {} and {}",
                plugin.name,
                other.display(),
                plugin.dir.display()
            );
        }
    }
    Ok(plugins)
}

fn read_plugin(dir: &Path, out_dir: &Path) -> Result<PluginCrate> {
    let cargo_toml = dir.join("Cargo.toml");
    let package = toml_string(&cargo_toml, &["package", "name"])?;
    let manifest = dir.join("plugin.toml");
    let name = toml_string(&manifest, &["name"])?;
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{}: plugin name {name:?} must be made of ASCII letters, digits, `-` and `_`",
        manifest.display()
    );
    Ok(PluginCrate {
        dir: dir.to_path_buf(),
        package,
        name,
        out_dir: out_dir.to_path_buf(),
    })
}

/// The string at `path` (a chain of table keys) in the TOML file `file`.
fn toml_string(file: &Path, path: &[&str]) -> Result<String> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
    let key = path.join(".");
    let mut table = &doc;
    let (last, parents) = path
        .split_last()
        .context("toml_string needs a non-empty key path")?;
    for part in parents {
        table = table
            .get(*part)
            .and_then(toml::Value::as_table)
            .with_context(|| format!("{}: no `[{part}]` table", file.display()))?;
    }
    table
        .get(*last)
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("{}: no string `{key}`", file.display()))
}

fn choose_toolchain(root: &Path) -> Result<Toolchain> {
    if wasm_target_installed(root)? {
        println!("toolchain: {TARGET} is installed; building with it");
        return Ok(Toolchain::Installed);
    }
    println!(
        "toolchain: {TARGET} is not installed; using Debian's rustc with -Zbuild-std (scripts/wasm-toolchain.sh)"
    );
    let script = root.join("scripts").join("wasm-toolchain.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({})",
        script.display(),
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let prefix = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(PathBuf::from)
        .with_context(|| format!("{} printed no prefix", script.display()))?;
    ensure!(
        prefix.join("usr/bin/rustc").is_file(),
        "{} printed the prefix {}, which has no usr/bin/rustc",
        script.display(),
        prefix.display()
    );
    ensure!(
        Path::new(WASM_LD).is_file(),
        "{WASM_LD} is missing after {}",
        script.display()
    );
    Ok(Toolchain::BuildStd { prefix })
}

/// Whether the toolchain cargo would use here can already target wasm32.
fn wasm_target_installed(root: &Path) -> Result<bool> {
    match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.trim() == TARGET)),
        Ok(out) => bail!("`rustup target list --installed` failed ({})", out.status),
        // No rustup: ask the rustc on the PATH whether its sysroot has the target.
        Err(err) if err.kind() == ErrorKind::NotFound => {
            let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
            let out = Command::new(&rustc)
                .args(["--print", "sysroot"])
                .current_dir(root)
                .output()
                .with_context(|| format!("running `{} --print sysroot`", rustc.display()))?;
            ensure!(
                out.status.success(),
                "`{} --print sysroot` failed ({})",
                rustc.display(),
                out.status
            );
            let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            Ok(sysroot
                .join("lib/rustlib")
                .join(TARGET)
                .join("lib")
                .is_dir())
        }
        Err(err) => Err(err).context("running `rustup target list --installed`"),
    }
}

/// Builds `plugins` in one cargo invocation, with `features` when given.
fn cargo_build(
    root: &Path,
    wasm_target_dir: &Path,
    toolchain: &Toolchain,
    plugins: &[PluginCrate],
    features: Option<&str>,
) -> Result<()> {
    // Under `cargo run`, CARGO is the cargo that runs us: use the same one.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root)
        .args(["build", "--profile", PROFILE, "--target", TARGET])
        .env("CARGO_TARGET_DIR", wasm_target_dir);
    for plugin in plugins {
        cmd.arg("-p").arg(&plugin.package);
    }
    if let Some(features) = features {
        cmd.args(["--features", features]);
    }
    if let Toolchain::BuildStd { prefix } = toolchain {
        let usr = prefix.join("usr");
        let mut lib_path = OsString::from(usr.join("lib/x86_64-linux-gnu"));
        if let Some(inherited) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
            lib_path.push(":");
            lib_path.push(inherited);
        }
        cmd.arg("-Zbuild-std=std,panic_abort")
            .env("LD_LIBRARY_PATH", lib_path)
            .env("RUSTC", usr.join("bin/rustc"))
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", WASM_LD);
    }

    let packages: Vec<&str> = plugins.iter().map(|p| p.package.as_str()).collect();
    println!(
        "building {} into {}",
        packages.join(", "),
        wasm_target_dir.display()
    );
    let status = cmd
        .status()
        .with_context(|| format!("running {}", cargo.display()))?;
    ensure!(
        status.success(),
        "`cargo build --profile {PROFILE} --target {TARGET}` of the plugins ({}) failed ({status}); \
         cargo's messages above name the crate",
        packages.join(", ")
    );
    Ok(())
}

/// Turns the plugin's core module into a component and writes it with its
/// manifest. Returns the component's path and size.
fn componentize(wasm_target_dir: &Path, plugin: &PluginCrate) -> Result<(PathBuf, u64)> {
    let what = || format!("plugin `{}` (crate `{}`)", plugin.name, plugin.package);
    let module_path = plugin.core_module(wasm_target_dir);
    let module = fs::read(&module_path).with_context(|| {
        format!(
            "{}: reading its core module {}; is its crate-type \"cdylib\"?",
            what(),
            module_path.display()
        )
    })?;

    let needs_wasi = imports_module(&module, WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME)
        .with_context(|| format!("{}: reading {}", what(), module_path.display()))?;
    let mut encoder = ComponentEncoder::default();
    encoder
        .module(&module)
        .with_context(|| {
            format!(
                "{}: {} is not a module the component encoder accepts (no component-type section from wit-bindgen?)",
                what(),
                module_path.display()
            )
        })?
        .validate(true);
    if needs_wasi {
        encoder
            .adapter(
                WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .with_context(|| format!("{}: adding the WASI preview1 reactor adapter", what()))?;
    }
    let component = encoder.encode().with_context(|| {
        format!(
            "{}: encoding {} as a component",
            what(),
            module_path.display()
        )
    })?;

    fs::create_dir_all(&plugin.out_dir)
        .with_context(|| format!("creating {}", plugin.out_dir.display()))?;
    let wasm_out = plugin.out_dir.join(format!("{}.wasm", plugin.name));
    let toml_out = plugin.out_dir.join(format!("{}.toml", plugin.name));
    write_atomically(&wasm_out, &component)
        .with_context(|| format!("{}: writing {}", what(), wasm_out.display()))?;
    let manifest = fs::read(plugin.manifest())
        .with_context(|| format!("{}: reading {}", what(), plugin.manifest().display()))?;
    write_atomically(&toml_out, &manifest)
        .with_context(|| format!("{}: writing {}", what(), toml_out.display()))?;

    Ok((wasm_out, component.len() as u64))
}

/// Whether the core module imports anything from `module_name`.
fn imports_module(module: &[u8], module_name: &str) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ImportSection(reader) = payload? {
            for import in reader.into_imports() {
                if import?.module == module_name {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Writes through a temporary file and a rename, so a host watching the
/// folder never loads half a component.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

pub fn human_size(bytes: u64) -> String {
    // Precision loss is irrelevant for display.
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.2} MiB", b / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_workspace_plugins_and_skips_the_sdk() {
        let root = crate::workspace_root().expect("root");
        let plugins = discover(&root).expect("discover");
        let find = |name: &str| plugins.iter().find(|p| p.name == name);
        let chaos = find("chaos").expect("chaos is found");
        assert_eq!(chaos.package, "chaos");
        assert!(chaos.out_dir.ends_with("target/test-plugins"));
        let probe = find("wasi-probe").expect("wasi-probe is found");
        assert!(
            probe
                .core_module(Path::new("/w"))
                .ends_with("wasm32-unknown-unknown/plugin/wasi_probe.wasm")
        );
        assert!(plugins.iter().all(|p| p.package != "pulsehub-plugin-sdk"));
        assert!(
            plugins
                .iter()
                .filter(|p| p.dir.starts_with(root.join("plugins")))
                .all(|p| p.out_dir.ends_with("target/plugins"))
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(40_550), "39.6 KiB");
        assert_eq!(human_size(3 << 20), "3.00 MiB");
    }
}
