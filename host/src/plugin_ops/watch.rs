//! Watching the plugin directory: any change to a `.wasm` or `.toml` file
//! leads, after a short quiet period, to one [`PluginManager::scan_dir`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio_util::sync::CancellationToken;

use super::PluginManager;

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
