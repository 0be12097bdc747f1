//! The test step: the workspace's test binaries, several at a time.
//!
//! `cargo test` runs its binaries one after another. Most of ours spend
//! their time waiting on the services (consumer groups joining, sessions
//! expiring, commits landing) rather than on the CPU, and each makes its own
//! databases, topics, consumer groups and key prefixes, so two at a time
//! take far less wall time than one. Each binary writes to a log of its own
//! under `target/test-logs/`; a line tells when it ends and how long it took,
//! and a failed one's log is printed whole. The doc tests run afterwards
//! with `cargo test --doc`.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

/// How many binaries run at once, unless [`JOBS_ENV`] says otherwise.
const JOBS: usize = 2;
/// Overrides [`JOBS`]; 1 runs them one at a time, like `cargo test`.
pub const JOBS_ENV: &str = "PULSEHUB_TEST_JOBS";

/// The binaries known to take longest, started first so that the others
/// fill the time beside them. Order only: a name missing here starts after
/// these, and one that no longer exists is skipped.
const LONGEST_FIRST: &[&str] = &[
    "e2e_pipeline",
    "segments",
    "identity",
    "activation",
    "scaffold",
    "e2e_failover",
];

/// One test binary, as cargo built it.
#[derive(Debug)]
struct Binary {
    /// `package/kind/target`, e.g. `pulsehub/test/e2e_pipeline`.
    label: String,
    /// The target's name.
    name: String,
    executable: PathBuf,
    /// Its package's directory: cargo runs tests there.
    package_dir: PathBuf,
}

/// Runs every test binary of the workspace (release, as built by the check
/// step), [`JOBS`] at a time, then the doc tests; `envs` are set for both.
pub fn run(root: &Path, cargo: &Path, envs: &[(&str, &str)]) -> Result<()> {
    let mut binaries = list(root, cargo)?;
    binaries.sort_by_key(|b| {
        LONGEST_FIRST
            .iter()
            .position(|&n| n == b.name)
            .unwrap_or(LONGEST_FIRST.len())
    });
    let jobs = match std::env::var(JOBS_ENV) {
        Ok(value) => value
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .with_context(|| format!("{JOBS_ENV}={value:?}: expected a whole number ≥ 1"))?,
        Err(_) => JOBS,
    };
    let logs = root.join("target").join("test-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    println!(
        "xtask: {} test binaries, {jobs} at a time; logs in {}",
        binaries.len(),
        logs.display()
    );

    let started = Instant::now();
    let queue = Mutex::new(VecDeque::from(binaries));
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while let Some(binary) = next(&queue) {
                    let outcome = run_one(&binary, &logs, envs);
                    let at = started.elapsed().as_secs_f64();
                    match outcome {
                        Ok(seconds) => println!(
                            "xtask: {} passed in {seconds:.0} s (at {at:.0} s)",
                            binary.label
                        ),
                        Err(error) => {
                            println!("xtask: {} FAILED (at {at:.0} s): {error:#}", binary.label);
                            lock(&failed).push(binary.label);
                        }
                    }
                }
            });
        }
    });
    let failed = failed
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !failed.is_empty() {
        bail!("test binaries failed: {}", failed.join(", "));
    }

    let mut doc = Command::new(cargo);
    doc.args(["test", "--workspace", "--release", "--doc"])
        .current_dir(root);
    for (key, value) in envs {
        doc.env(key, value);
    }
    println!("xtask: cargo test --workspace --release --doc");
    let status = doc.status().context("cannot run cargo test --doc")?;
    ensure!(status.success(), "`cargo test --doc` failed ({status})");
    Ok(())
}

/// The test binaries, from the JSON messages of a `cargo test --no-run`
/// (which builds nothing new after the check step).
fn list(root: &Path, cargo: &Path) -> Result<Vec<Binary>> {
    let output = Command::new(cargo)
        .args([
            "test",
            "--workspace",
            "--release",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    ensure!(
        output.status.success(),
        "`cargo test --no-run` failed ({})",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).context("cargo's messages are not UTF-8")?;
    let mut binaries = Vec::new();
    for line in stdout.lines() {
        let message: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("a cargo message: {line}"))?;
        if let Some(binary) = binary(&message) {
            binaries.push(binary);
        }
    }
    ensure!(!binaries.is_empty(), "cargo built no test binary");
    Ok(binaries)
}

/// The test binary a `compiler-artifact` message names, if it is one.
fn binary(message: &serde_json::Value) -> Option<Binary> {
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    let executable = PathBuf::from(message["executable"].as_str()?);
    let package_dir = Path::new(message["manifest_path"].as_str()?)
        .parent()?
        .to_path_buf();
    let target = &message["target"];
    let name = target["name"].as_str()?.to_owned();
    let kind = target["kind"][0].as_str()?;
    let package = package_dir.file_name()?.to_string_lossy();
    Some(Binary {
        label: format!("{package}/{kind}/{name}"),
        name,
        executable,
        package_dir,
    })
}

fn next(queue: &Mutex<VecDeque<Binary>>) -> Option<Binary> {
    lock(queue).pop_front()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs one binary with its output to its log; the seconds it took, or why
/// it failed (its log printed whole first).
fn run_one(binary: &Binary, logs: &Path, envs: &[(&str, &str)]) -> Result<f64> {
    let path = logs.join(format!("{}.log", binary.label.replace('/', "-")));
    let log = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut command = Command::new(&binary.executable);
    command
        .current_dir(&binary.package_dir)
        .stdout(log.try_clone().context("sharing the log")?)
        .stderr(log);
    for (key, value) in envs {
        command.env(key, value);
    }
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", binary.executable.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if status.success() {
        return Ok(seconds);
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    println!(
        "xtask: ---- {} ({status}, {seconds:.0} s), {} ----\n{text}",
        binary.label,
        path.display()
    );
    bail!("{status}")
}
