//! `pulsehub plugin new NAME`: writes a Rust plugin crate that
//! `cargo xtask plugins` builds into a component with no further edit.
//!
//! The crate's files are the templates under `templates/`, with `{{name}}`
//! (the plugin and package name), `{{attribute}}` (the one attribute it
//! writes), `{{type}}` (its Rust type) and `{{out}}` (where its component is
//! built) filled in.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use pulsehub::plugin::{Manifest, check_attribute, check_name};

/// The crate's files: the path inside the crate and its template.
const FILES: [(&str, &str); 4] = [
    ("Cargo.toml", include_str!("templates/Cargo.toml.tmpl")),
    ("plugin.toml", include_str!("templates/plugin.toml.tmpl")),
    ("src/lib.rs", include_str!("templates/lib.rs.tmpl")),
    ("README.md", include_str!("templates/README.md.tmpl")),
];

/// The folders of a workspace `cargo xtask plugins` builds crates from, and
/// where it writes their components (both relative to the workspace root).
const PLUGIN_DIRS: [(&str, &str); 2] = [
    ("plugins", "target/plugins"),
    ("tests/plugins", "target/test-plugins"),
];

/// The workspace dependency the crate's `Cargo.toml` inherits.
const SDK: &str = "pulsehub-plugin-sdk";

/// What the templates are filled with.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    /// The plugin's name, also its package name.
    name: String,
    /// The attribute it writes: `NAME_events`, with `-` turned into `_`.
    attribute: String,
    /// Its Rust type: the name in CamelCase, ending in `Plugin` so that it
    /// never shadows the SDK's or the prelude's names (`Event`, `Result`...).
    type_name: String,
}

impl Names {
    fn new(name: &str) -> anyhow::Result<Self> {
        check_name(name).context("invalid plugin name")?;
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            bail!(
                "invalid plugin name {name:?}: it is also the crate's package name, which cargo refuses when it starts with a digit"
            );
        }
        let attribute = format!("{}_events", name.replace('-', "_"));
        check_attribute(&attribute).with_context(|| {
            format!(
                "plugin name {name:?} is too long to scaffold: the attribute it would write, \
                 `{attribute}`, breaks the manifest's rule; choose a shorter name"
            )
        })?;
        let mut type_name: String = name
            .split('-')
            .filter(|part| !part.is_empty())
            .map(|part| {
                let (first, rest) = part.split_at(1);
                first.to_ascii_uppercase() + rest
            })
            .collect();
        if !(type_name.ends_with("Plugin") && type_name.len() > "Plugin".len()) {
            type_name.push_str("Plugin");
        }
        Ok(Self {
            name: name.to_owned(),
            attribute,
            type_name,
        })
    }

    fn render(&self, template: &str, out: &str) -> String {
        template
            .replace("{{name}}", &self.name)
            .replace("{{attribute}}", &self.attribute)
            .replace("{{type}}", &self.type_name)
            // The file name cargo gives the crate's library.
            .replace("{{crate}}", &self.name.replace('-', "_"))
            .replace("{{out}}", out)
    }
}

/// A cargo workspace: the directory of the `Cargo.toml` with `[workspace]`.
#[derive(Debug)]
struct Workspace {
    root: PathBuf,
    manifest: toml::Table,
}

impl Workspace {
    /// The innermost workspace that holds `start`, looking from `start` up.
    fn enclosing(start: &Path) -> anyhow::Result<Option<Self>> {
        for dir in start.ancestors() {
            let path = dir.join("Cargo.toml");
            if !path.is_file() {
                continue;
            }
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let manifest: toml::Table = toml::from_str(&text)
                .with_context(|| format!("{} is not valid TOML", path.display()))?;
            if manifest.contains_key("workspace") {
                return Ok(Some(Self {
                    root: dir.to_path_buf(),
                    manifest,
                }));
            }
        }
        Ok(None)
    }

    fn has_sdk(&self) -> bool {
        self.manifest
            .get("workspace")
            .and_then(|w| w.get("dependencies"))
            .and_then(|d| d.get(SDK))
            .is_some()
    }

    /// Where `cargo xtask plugins` writes the component of a crate in `dir`,
    /// if it builds crates there.
    fn components_of(&self, dir: &Path) -> Option<&'static str> {
        let parent = dir.parent()?;
        PLUGIN_DIRS
            .iter()
            .find(|(plugins, _)| parent == self.root.join(plugins))
            .map(|(_, out)| *out)
    }
}

pub fn new_plugin(name: &str, dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let names = Names::new(name)?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let parent = match dir {
        Some(dir) => cwd.join(dir),
        None => {
            let workspace = Workspace::enclosing(&cwd)?.with_context(|| {
                format!(
                    "no cargo workspace (a Cargo.toml with [workspace]) in {} or above: \
                     run this inside the PulseHub repository, or pass --dir",
                    cwd.display()
                )
            })?;
            workspace.root.join("plugins")
        }
    };
    let crate_dir = parent.join(&names.name);
    let workspace = Workspace::enclosing(&parent)?;
    if let Some(workspace) = &workspace
        && !workspace.has_sdk()
    {
        bail!(
            "{} has no `{SDK}` under [workspace.dependencies], which the new crate inherits: \
             add it (a path to PulseHub's plugins/sdk) or choose another --dir",
            workspace.root.join("Cargo.toml").display()
        );
    }
    let out = workspace.as_ref().and_then(|w| w.components_of(&crate_dir));

    let files = render(&names, out.unwrap_or("target/plugins"))?;
    write_crate(&crate_dir, &files)?;

    let shown = crate_dir.strip_prefix(&cwd).unwrap_or(&crate_dir);
    let list: Vec<&str> = files.iter().map(|(path, _)| *path).collect();
    println!("created {}/ ({})", shown.display(), list.join(", "));
    match (&workspace, out) {
        (Some(workspace), Some(out)) => print_next_steps(&names.name, &workspace.root, out),
        (Some(workspace), None) => println!(
            "note: `cargo xtask plugins` builds the crates directly under plugins/ and \
             tests/plugins/ of {}; move this one there, or add it to the workspace members \
             and build it yourself",
            workspace.root.display()
        ),
        (None, _) => println!(
            "note: {} is in no cargo workspace, yet its Cargo.toml inherits its edition, \
             license and the `{SDK}` dependency from one: move it under plugins/ of the \
             PulseHub workspace",
            shown.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Every file of the crate, with its manifest checked by the host's own
/// validation so that the crate is sure to load.
fn render(names: &Names, out: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
    let files: Vec<(&'static str, String)> = FILES
        .iter()
        .map(|(path, template)| (*path, names.render(template, out)))
        .collect();
    for (path, text) in &files {
        if *path == "plugin.toml" {
            text.parse::<Manifest>()
                .context("the scaffolded plugin.toml does not validate")?;
        }
    }
    Ok(files)
}

/// Creates `dir` (refusing one that exists) with the files. On failure the
/// directory is removed again: a workspace whose members are `plugins/*`
/// cannot load while a directory there lacks its Cargo.toml.
fn write_crate(dir: &Path, files: &[(&str, String)]) -> anyhow::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} already exists; choose another name or remove it",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let written = files.iter().try_for_each(|(path, text)| {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    });
    if written.is_err() {
        // Best effort: the error that matters is the one being returned.
        let _ = fs::remove_dir_all(dir);
    }
    written
}

fn print_next_steps(name: &str, root: &Path, out: &str) {
    let wasm = format!("{out}/{name}.wasm");
    let toml = format!("{out}/{name}.toml");
    let test = format!("cargo test -p {name}");
    let build = "cargo xtask plugins";
    let width = test.len().max(build.len());
    println!();
    println!("next, from {}:", root.display());
    println!("  {test:<width$}  # its unit test");
    println!("  {build:<width$}  # builds {wasm} and {toml}");
    println!("  cargo run --release -- plugin run --plugin {wasm} --events examples/events.ndjson");
    println!("then load it into a running PulseHub (admin token set on the server):");
    println!(
        "  curl -X PUT -H \"Authorization: Bearer $PULSEHUB_ADMIN_TOKEN\" \
         -F manifest=@{toml} -F component=@{wasm} http://127.0.0.1:8080/api/v1/plugins/{name}"
    );
    println!("or copy the two files into its plugin directory (PULSEHUB_PLUGIN_DIR).");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_manifest_rules() {
        let names = Names::new("my-plugin").expect("my-plugin");
        assert_eq!(names.attribute, "my_plugin_events");
        assert_eq!(names.type_name, "MyPlugin");
        assert_eq!(
            Names::new("page-view-counter").expect("name").type_name,
            "PageViewCounterPlugin"
        );
        // Never the SDK's trait or a prelude type.
        assert_eq!(
            Names::new("plugin").expect("name").type_name,
            "PluginPlugin"
        );
        assert_eq!(
            Names::new("result").expect("name").type_name,
            "ResultPlugin"
        );

        for bad in ["", "My-Plugin", "my_plugin", "my plugin", "7up"] {
            assert!(Names::new(bad).is_err(), "{bad:?} is accepted");
        }
        let at_most = "a".repeat(57);
        assert!(Names::new(&at_most).is_ok());
        let err = Names::new(&"a".repeat(58)).expect_err("58 characters");
        assert!(
            format!("{err:#}").contains("choose a shorter name"),
            "{err:#}"
        );
    }

    #[test]
    fn every_placeholder_is_filled_and_the_manifest_validates() {
        let names = Names::new("my-plugin").expect("name");
        let files = render(&names, "target/plugins").expect("render");
        for (path, text) in &files {
            assert!(!text.contains("{{"), "{path} keeps a placeholder:\n{text}");
        }
        let manifest: Manifest = files
            .iter()
            .find(|(path, _)| *path == "plugin.toml")
            .map(|(_, text)| text.parse().expect("manifest"))
            .expect("plugin.toml");
        assert_eq!(manifest.name, "my-plugin");
        assert_eq!(manifest.version.to_string(), "0.1.0");
        assert!(manifest.writes.contains("my_plugin_events"));
        assert!(manifest.limits.memory_mb.is_none(), "limits are commented");
    }

    #[test]
    fn refuses_an_existing_directory_and_leaves_it_alone() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let names = Names::new("my-plugin").expect("name");
        let files = render(&names, "target/plugins").expect("render");
        let dir = tmp.path().join("plugins").join("my-plugin");
        write_crate(&dir, &files).expect("first write");
        assert!(dir.join("src/lib.rs").is_file());
        fs::write(dir.join("src/lib.rs"), "// mine").expect("edit");

        let err = write_crate(&dir, &files).expect_err("second write");
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.join("src/lib.rs")).expect("read"),
            "// mine"
        );
    }

    #[test]
    fn finds_the_enclosing_workspace_and_where_components_go() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        fs::write(
            root.join("Cargo.toml"),
            "[workspace]\nmembers = [\"plugins/*\"]\n\n[workspace.dependencies]\n\
             pulsehub-plugin-sdk = { path = \"sdk\" }\n",
        )
        .expect("write");
        let deep = root.join("plugins").join("x").join("src");
        fs::create_dir_all(&deep).expect("mkdir");
        fs::write(
            root.join("plugins/x/Cargo.toml"),
            "[package]\nname = \"x\"\n",
        )
        .expect("write");

        let workspace = Workspace::enclosing(&deep)
            .expect("enclosing")
            .expect("a workspace");
        assert_eq!(workspace.root, root);
        assert!(workspace.has_sdk());
        assert_eq!(
            workspace.components_of(&root.join("plugins/new")),
            Some("target/plugins")
        );
        assert_eq!(
            workspace.components_of(&root.join("tests/plugins/new")),
            Some("target/test-plugins")
        );
        assert_eq!(workspace.components_of(&root.join("elsewhere/new")), None);
    }
}
