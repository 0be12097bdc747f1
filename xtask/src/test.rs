//! `cargo xtask test`: everything CI checks, in the order a developer wants
//! to hear about failures: plugins build, services up, the monitoring files,
//! formatting, lints, tests, the README's run command (with schemathesis
//! against the API document it serves), benches compile.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Each step is a cargo command run from the workspace root.
const STEPS: &[&[&str]] = &[
    &["fmt", "--all", "--", "--check"],
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ],
    // Release, like the benches: tests compile real components with
    // Cranelift, which is many times faster optimised, and the benches then
    // reuse the same build.
    &["test", "--workspace", "--release"],
];

/// After the smoke step.
const LAST: &[&str] = &["bench", "--workspace", "--no-run"];

pub fn run(root: &Path) -> Result<()> {
    crate::plugins::build_all(root)?;
    // The integration tests talk to a real PostgreSQL, Redis and Kafka-protocol
    // broker; this starts whichever is not running (and installs the broker).
    println!("xtask: scripts/services.sh");
    let status = Command::new("bash")
        .arg(root.join("scripts/services.sh"))
        .current_dir(root)
        .status()
        .context("cannot run scripts/services.sh")?;
    if !status.success() {
        bail!("scripts/services.sh failed ({status}): the test services are not available");
    }
    // The Prometheus configuration, alert rules (with their unit tests) and
    // the Grafana dashboard that docker-compose.yml runs.
    println!("xtask: scripts/check-deploy.sh");
    let status = Command::new("bash")
        .arg(root.join("scripts/check-deploy.sh"))
        .current_dir(root)
        .status()
        .context("cannot run scripts/check-deploy.sh")?;
    if !status.success() {
        bail!("scripts/check-deploy.sh failed ({status})");
    }
    let wasip2 = add_wasip2_target(root);
    for step in STEPS {
        cargo(root, step, wasip2)?;
    }
    println!("xtask: smoke: the README's run command");
    crate::smoke::run(root)?;
    cargo(root, LAST, false)
}

/// Adds rustup's `wasm32-wasip2` target, Rust's own route to a component,
/// so that tests/scaffold.rs builds a scaffolded plugin that way too.
/// Whether it could is printed; a machine without rustup or without access
/// to rustup's downloads runs the other tests only.
fn add_wasip2_target(root: &Path) -> bool {
    println!("xtask: rustup target add {WASIP2}");
    match Command::new("rustup")
        .args(["target", "add", WASIP2])
        .current_dir(root)
        .status()
    {
        Ok(status) if status.success() => true,
        outcome => {
            println!(
                "xtask: NOTE: cannot add {WASIP2} ({outcome:?}); the test that builds a \
                 scaffold with `cargo build --target {WASIP2}` does not run"
            );
            false
        }
    }
}

/// The target of Rust's own component route.
const WASIP2: &str = "wasm32-wasip2";

/// Set for the tests when [`WASIP2`] is installed.
const WASIP2_ENV: &str = "PULSEHUB_TEST_WASIP2";

fn cargo(root: &Path, args: &[&str], wasip2: bool) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("xtask: cargo {}", args.join(" "));
    let mut command = Command::new(&cargo);
    if wasip2 {
        command.env(WASIP2_ENV, "1");
    }
    let status = command
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
