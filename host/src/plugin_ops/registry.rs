//! The plugin registry on disk: every installed version's two files, and the
//! state of each plugin (which version runs, which came before, quarantine),
//! so that a restart brings back the active set.
//!
//! ```text
//! <dir>/state.json                   the records, replaced atomically
//! <dir>/versions/<id>/component.wasm
//! <dir>/versions/<id>/manifest.toml
//! <dir>/compiled/                    wasmtime's cache of compiled components
//! ```

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Whether a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PluginState {
    /// Its current version runs on every new batch.
    Active,
    /// Taken out of the chain because of its failures; the others go on.
    Quarantined,
}

impl PluginState {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginState::Active => "active",
            PluginState::Quarantined => "quarantined",
        }
    }
}

/// One installed version of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// SHA-256 of the component and the manifest together, hex: two uploads
    /// of one component with different manifests are different versions.
    pub id: String,
    pub version: String,
    /// SHA-256 of the component alone, hex.
    pub sha256: String,
    pub installed_at_ms: i64,
    /// `api` (an upload), `dir` (the watched plugin directory).
    pub source: String,
}

/// Everything known of one plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    pub state: PluginState,
    /// When the state last changed.
    pub since_ms: i64,
    /// Why it is in that state (quarantine, automatic rollback).
    pub reason: Option<String>,
    /// The version that runs (or ran, when quarantined).
    pub current: VersionRecord,
    /// Earlier healthy versions, newest first, for rollback.
    pub previous: Vec<VersionRecord>,
    /// When `current` became the running version.
    pub activated_at_ms: i64,
    /// The last pair of files seen for this name in the plugin directory
    /// (its version id), so a restart does not install it again over a
    /// newer upload.
    pub dir_id: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    plugins: BTreeMap<String, PluginRecord>,
}

/// The registry directory.
#[derive(Debug, Clone)]
pub struct Registry {
    dir: PathBuf,
}

/// The version id of a package: SHA-256 over the manifest text, a zero byte
/// and the component.
pub fn version_id(manifest: &str, component: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(manifest.as_bytes());
    hash.update([0]);
    hash.update(component);
    hex(&hash.finalize())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Opens (creating) the registry in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("versions")).with_context(|| {
            format!(
                "creating the plugin registry {} (configuration key `plugins.registry_dir`, \
                 PULSEHUB_PLUGIN_REGISTRY_DIR)",
                dir.display()
            )
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where wasmtime keeps the compiled components.
    pub fn compiled_dir(&self) -> PathBuf {
        self.dir.join("compiled")
    }

    /// The records of every plugin; empty on a first start.
    pub fn load(&self) -> anyhow::Result<BTreeMap<String, PluginRecord>> {
        let path = self.dir.join("state.json");
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let state: StateFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a plugin registry state", path.display()))?;
        Ok(state.plugins)
    }

    /// Replaces the records, atomically (a new file renamed over the old).
    pub fn save(&self, plugins: &BTreeMap<String, PluginRecord>) -> anyhow::Result<()> {
        let path = self.dir.join("state.json");
        let state = StateFile {
            plugins: plugins.clone(),
        };
        let text = serde_json::to_vec_pretty(&state).context("encoding the registry state")?;
        write_atomically(&path, &text)
    }

    /// Stores a version's files (once; an id names one content).
    pub fn put_version(&self, id: &str, manifest: &str, component: &[u8]) -> anyhow::Result<()> {
        let dir = self.dir.join("versions").join(id);
        if dir.join("component.wasm").exists() && dir.join("manifest.toml").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomically(&dir.join("manifest.toml"), manifest.as_bytes())?;
        write_atomically(&dir.join("component.wasm"), component)
    }

    /// A stored version's manifest text and component, checked against its id.
    pub fn get_version(&self, id: &str) -> anyhow::Result<(String, Vec<u8>)> {
        let dir = self.dir.join("versions").join(id);
        let manifest = std::fs::read_to_string(dir.join("manifest.toml"))
            .with_context(|| format!("reading {}", dir.join("manifest.toml").display()))?;
        let component = std::fs::read(dir.join("component.wasm"))
            .with_context(|| format!("reading {}", dir.join("component.wasm").display()))?;
        anyhow::ensure!(
            version_id(&manifest, &component) == id,
            "the files of version {id} in {} were changed on disk",
            dir.display()
        );
        Ok((manifest, component))
    }

    /// Deletes the versions no record refers to.
    pub fn collect_garbage(&self, plugins: &BTreeMap<String, PluginRecord>) -> anyhow::Result<()> {
        let keep: std::collections::HashSet<&str> = plugins
            .values()
            .flat_map(|r| std::iter::once(&r.current).chain(&r.previous))
            .map(|v| v.id.as_str())
            .collect();
        let versions = self.dir.join("versions");
        for entry in std::fs::read_dir(&versions)
            .with_context(|| format!("listing {}", versions.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            if !keep.contains(name.to_string_lossy().as_ref()) {
                std::fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it
/// over `path`, so a crash leaves the old file or the new one, never half.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> PluginRecord {
        PluginRecord {
            state: PluginState::Active,
            since_ms: 1,
            reason: None,
            current: VersionRecord {
                id: id.to_owned(),
                version: "1.0.0".into(),
                sha256: "c".into(),
                installed_at_ms: 1,
                source: "api".into(),
            },
            previous: Vec::new(),
            activated_at_ms: 1,
            dir_id: None,
        }
    }

    #[test]
    fn versions_and_state_survive_a_reopen_and_garbage_goes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = Registry::open(dir.path()).expect("opens");
        assert!(registry.load().expect("loads").is_empty());
        let (a, b) = (version_id("m1", b"c1"), version_id("m2", b"c1"));
        assert_ne!(a, b, "the manifest is part of the id");
        registry.put_version(&a, "m1", b"c1").expect("stores");
        registry.put_version(&b, "m2", b"c1").expect("stores");
        let mut plugins = BTreeMap::new();
        plugins.insert("p".to_owned(), record(&a));
        registry.save(&plugins).expect("saves");

        let registry = Registry::open(dir.path()).expect("reopens");
        assert_eq!(registry.load().expect("loads"), plugins);
        assert_eq!(
            registry.get_version(&a).expect("reads"),
            ("m1".to_owned(), b"c1".to_vec())
        );
        registry.collect_garbage(&plugins).expect("collects");
        assert!(
            registry.get_version(&b).is_err(),
            "unreferenced version deleted"
        );
        assert!(registry.get_version(&a).is_ok());
    }

    #[test]
    fn a_version_changed_on_disk_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let registry = Registry::open(dir.path()).expect("opens");
        let id = version_id("m", b"c");
        registry.put_version(&id, "m", b"c").expect("stores");
        std::fs::write(
            dir.path().join("versions").join(&id).join("component.wasm"),
            b"x",
        )
        .expect("tamper");
        let error = registry.get_version(&id).expect_err("refused");
        assert!(
            format!("{error:#}").contains("changed on disk"),
            "{error:#}"
        );
    }
}
