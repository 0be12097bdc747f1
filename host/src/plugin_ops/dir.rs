//! The plugin directory (`plugins.dir`): read once at start-up and after
//! every change ([`PluginManager::scan_dir`]), and watched: any change to a
//! `.wasm` or `.toml` file leads, after a short quiet period, to one scan.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio_util::sync::CancellationToken;

use super::registry::version_id;
use super::{Actor, Package, PluginManager};

impl PluginManager {
    /// Reads the plugin directory once: pairs that are new or changed since
    /// last seen are installed, names whose pair is gone are removed (when
    /// the directory's version is the one running). With `strict`, the first
    /// refused pair is an error (start-up); otherwise it is logged, audited
    /// and not tried again until its files change.
    pub async fn scan_dir(&self, dir: &Path, strict: bool) -> anyhow::Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| {
            format!(
                "reading the plugin directory {} (configuration key `plugins.dir`, \
                 PULSEHUB_PLUGIN_DIR); build the built-in plugins with `cargo xtask plugins`",
                dir.display()
            )
        })?;
        let mut components: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
            .collect();
        components.sort();
        let mut present = Vec::new();
        for component_path in &components {
            let Some(stem) = component_path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let manifest_path = component_path.with_extension("toml");
            let (Ok(manifest), Ok(component)) = (
                std::fs::read_to_string(&manifest_path),
                std::fs::read(component_path),
            ) else {
                // Half of a pair (or one being written): wait for the other.
                continue;
            };
            present.push(stem.to_owned());
            let id = version_id(&manifest, &component);
            {
                let inner = self.lock();
                let seen = inner
                    .records
                    .get(stem)
                    .is_some_and(|r| r.dir_id.as_deref() == Some(&id));
                if seen || inner.dir_refused.get(stem) == Some(&id) {
                    continue;
                }
            }
            let package = Package {
                manifest,
                component,
            };
            match self
                .install(package, Some(stem), "dir", &Actor::PluginDir)
                .await
            {
                Ok(_) => {
                    let mut inner = self.lock();
                    inner.dir_refused.remove(stem);
                    if let Some(record) = inner.records.get_mut(stem) {
                        record.dir_id = Some(id);
                    }
                    self.save(&inner)?;
                }
                Err(error) if strict => {
                    return Err(anyhow::Error::new(error)
                        .context(format!("loading plugin {}", component_path.display())));
                }
                Err(error) => {
                    tracing::error!(
                        plugin = %stem,
                        path = %component_path.display(),
                        "plugin directory: refused: {error}"
                    );
                    self.lock().dir_refused.insert(stem.to_owned(), id);
                }
            }
        }
        // Pairs gone from the directory.
        let gone: Vec<(String, bool)> = {
            let inner = self.lock();
            inner
                .records
                .iter()
                .filter(|(name, r)| r.dir_id.is_some() && !present.contains(name))
                .map(|(name, r)| (name.clone(), r.dir_id.as_deref() == Some(&r.current.id)))
                .collect()
        };
        for (name, running) in gone {
            if running {
                if let Err(error) = self.remove(&name, &Actor::PluginDir).await {
                    tracing::error!(plugin = %name, "plugin directory: removing: {error}");
                }
            } else {
                let mut inner = self.lock();
                if let Some(record) = inner.records.get_mut(&name) {
                    record.dir_id = None;
                }
                self.save(&inner)?;
            }
        }
        Ok(())
    }
}

/// How long the directory must stay quiet before it is read: a copy of a
/// large component arrives in several writes.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `dir` until `stop` is cancelled.
pub fn watch(
    manager: Arc<PluginManager>,
    dir: &Path,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = match event {
            Ok(event) => event.paths.iter().any(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "wasm" || ext == "toml")
            }),
            // An overflow or a watch error: read the directory to be sure.
            Err(_) => true,
        };
        if relevant {
            let _ = tx.send(());
        }
    })
    .context("starting the plugin directory watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching the plugin directory {}", dir.display()))?;
    let dir: PathBuf = dir.to_owned();
    tracing::info!(dir = %dir.display(), "watching the plugin directory");
    tokio::spawn(async move {
        // Dropping the watcher stops it.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = rx.recv() => if changed.is_none() { return },
            }
            // Let the writes settle; drain what arrived meanwhile.
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => break,
                    more = rx.recv() => if more.is_none() { return },
                }
            }
            if let Err(error) = manager.scan_dir(&dir, false).await {
                tracing::error!("plugin directory: {error:#}");
            }
        }
    });
    Ok(())
}
