//! `cargo xtask test`: everything CI checks, in the order a developer wants
//! to hear about failures: plugins build, the monitoring files, formatting,
//! lints, the tests and benches compile, services up, tests, the README's
//! run command (with schemathesis against the API document it serves).
//! Each step prints the seconds since the start when it ends.

mod binaries;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Checks that need no services, each a cargo command run from the
/// workspace root, before the services start: the broker builds (on a fresh
/// machine) while these compile.
const CHECKS: &[&[&str]] = &[
    &["fmt", "--all", "--", "--check"],
    // Release, like the tests' build below, so that the build scripts
    // (librdkafka, zstd and mimalloc are C, compiled by theirs) and the proc
    // macros are built once for both instead of once per profile.
    &[
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ],
    // Release: tests compile real components with Cranelift, which is many
    // times faster optimised. `--all-targets` compiles the criterion benches
    // in the same build; `cargo bench` would build the workspace once more
    // under its own profile (minutes on 2 cores) only to prove they compile.
    &[
        "test",
        "--workspace",
        "--release",
        "--all-targets",
        "--no-run",
    ],
];

pub fn run(root: &Path) -> Result<()> {
    let started = Instant::now();
    let at = || format!("{:.0} s", started.elapsed().as_secs_f64());
    crate::plugins::build_all(root)?;
    println!("xtask: plugins built at {}", at());
    // The Prometheus configuration, alert rules (with their unit tests) and
    // the Grafana dashboard that docker-compose.yml runs.
    script(root, "scripts/check-deploy.sh")?;
    let wasip2 = add_wasip2_target(root);
    for step in CHECKS {
        cargo(root, step, wasip2)?;
        println!("xtask: cargo {} done at {}", step[0], at());
    }
    // The integration tests talk to a real PostgreSQL, Redis and Kafka-protocol
    // broker; this starts whichever is not running (and installs the broker).
    script(root, "scripts/services.sh")?;
    println!("xtask: services up at {}", at());
    let envs: &[(&str, &str)] = if wasip2 { &[(WASIP2_ENV, "1")] } else { &[] };
    binaries::run(root, &cargo_program(), envs)?;
    println!("xtask: tests done at {}", at());
    println!("xtask: smoke: the README's run command");
    crate::smoke::run(root)?;
    println!("xtask: all passed in {}", at());
    Ok(())
}

/// Runs a bash script of the repository; its failure fails the run.
fn script(root: &Path, path: &str) -> Result<()> {
    println!("xtask: {path}");
    let status = Command::new("bash")
        .arg(root.join(path))
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run {path}"))?;
    if !status.success() {
        bail!("{path} failed ({status})");
    }
    Ok(())
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

/// The cargo that runs xtask, or the one on the PATH.
fn cargo_program() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from)
}

fn cargo(root: &Path, args: &[&str], wasip2: bool) -> Result<()> {
    println!("xtask: cargo {}", args.join(" "));
    let mut command = Command::new(cargo_program());
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
