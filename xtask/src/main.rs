//! Project automation for PulseHub, run as `cargo xtask <command>`.
//!
//! - `plugins`: builds every plugin crate for `wasm32-unknown-unknown` and
//!   turns each core module into a component under `target/plugins/` (the
//!   crates under `plugins/`) or `target/test-plugins/` (the test fixtures
//!   under `tests/plugins/`), next to a copy of its `plugin.toml`. With
//!   `--workspace DIR`, the same for another cargo workspace.
//! - `test`: what CI runs: the plugins, then `cargo fmt --check`, clippy
//!   with warnings denied, every test, the README's run command checked as a
//!   newcomer would run it (with schemathesis against the API document it
//!   serves), and the benches compiled.
//! - `smoke`: the smoke step of `test` alone.
//! - `inspect FILE...`: lists the imports and exports of components or core
//!   modules.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};

mod inspect;
mod plugins;
mod smoke;
mod test;

const HELP: &str = "\
cargo xtask: PulseHub's project automation

USAGE:
    cargo xtask <COMMAND>

COMMANDS:
    plugins          Build every plugin (each directory with a plugin.toml under
                     plugins/ and tests/plugins/) into a WebAssembly component:
                     target/plugins/NAME.wasm + NAME.toml and
                     target/test-plugins/NAME.wasm + NAME.toml.
                     Uses the rustup target wasm32-unknown-unknown when it is
                     installed, else Debian's rustc and -Zbuild-std prepared by
                     scripts/wasm-toolchain.sh.
    plugins --workspace DIR
                     The same for the cargo workspace at DIR (its plugins/ and
                     tests/plugins/, components under DIR/target/), with this
                     repository's toolchain and wasm build cache.
    test             What CI runs: build the plugins, then cargo fmt --check,
                     cargo clippy -D warnings, cargo test --workspace, the
                     README's run command started, queried and stopped (with
                     schemathesis against the API document it serves); the
                     benches are compiled with the tests.
    smoke            The smoke step of `test` alone: the README's run command
                     started, queried and stopped, then schemathesis against
                     the API document it serves, with an admin token (every
                     route) (python3 needed; schemathesis is installed with pip
                     under target/schemathesis).
    inspect FILE...  List the imports and exports of components or core modules.
    help, --help     Show this help.
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["help" | "--help" | "-h", ..] => {
            print!("{HELP}");
            Ok(())
        }
        ["plugins"] => plugins::build_all(&workspace_root()?),
        ["plugins", "--workspace", dir] => {
            let dir = std::path::absolute(dir)
                .with_context(|| format!("cannot resolve the workspace path {dir}"))?;
            plugins::build_workspace(&workspace_root()?, &dir)
        }
        ["test"] => test::run(&workspace_root()?),
        ["smoke"] => smoke::run(&workspace_root()?),
        ["plugins", "--help" | "-h"] => {
            print!("{HELP}");
            Ok(())
        }
        ["inspect"] => Err(anyhow!("`inspect` needs at least one .wasm file")),
        ["inspect", files @ ..] => {
            for (i, file) in files.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                inspect::print(Path::new(file))?;
            }
            Ok(())
        }
        _ => Err(anyhow!(
            "unknown command `{}`; see `cargo xtask --help`",
            args.join(" ")
        )),
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}
