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
    for step in STEPS {
        cargo(root, step)?;
    }
    println!("xtask: smoke: the README's run command");
    crate::smoke::run(root)?;
    cargo(root, LAST)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
