//! Plugin packages for the tests: the built-in plugins, and the `chaos`
//! fixture at any version.

use super::services::workspace;

/// A folder with the built-in plugins.
pub fn builtin_plugin_dir() -> tempfile::TempDir {
    let plugins = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(workspace().join("target/plugins")).expect("plugins are built") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name").to_owned();
        std::fs::copy(&path, plugins.path().join(name)).expect("copy plugin");
    }
    plugins
}

/// The chaos fixture's component, and its manifest at `version` with
/// `extra` lines appended (a `[config]` table, say).
pub fn chaos_package(version: &str, extra: &str) -> (String, Vec<u8>) {
    let dir = workspace().join("target/test-plugins");
    let manifest = std::fs::read_to_string(dir.join("chaos.toml")).expect("chaos manifest");
    let manifest = manifest.replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
    assert!(manifest.contains(version), "{manifest}");
    let component = std::fs::read(dir.join("chaos.wasm")).expect("chaos component");
    (format!("{manifest}\n{extra}\n"), component)
}
