//! The smoke step of `cargo xtask test`: the README's run command, typed as a
//! newcomer types it, from the repository's root, with the defaults.
//!
//! The command and the profile the README promises for `u-42` are read out
//! of the README itself (its section "The two commands"), so the README and
//! this step cannot drift apart. The step:
//!
//! 1. starts the command, waits for the "API on http://ADDR/api/v1" line,
//!    checks that `GET /api/v1/profiles/u-42` answers the README's profile
//!    and that `/readyz` is ready, stops it with SIGTERM and checks that it
//!    exits with status 0;
//! 2. starts it again without `--events` (the README: "start without it to
//!    keep the counts as they are") and with an admin token, checks that the
//!    profile stays unchanged for a few seconds, then runs schemathesis
//!    (`--checks all`, every phase) with the token against the document that
//!    process serves: every route, the admin ones too. (Without a token the
//!    document holds only the public routes, a subset of these; the API's
//!    tests check that the admin ones are then left out and refused.)
//!
//! The run uses the default data directory, `pulsehub-data/` at the root; one
//! left there by a developer is moved aside for the step and put back after.

mod hub;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use hub::Hub;

/// The README's section holding the two commands.
const SECTION: &str = "## The two commands";
/// The README's data directory, relative to the root.
const DATA_DIR: &str = "pulsehub-data";
/// The user whose profile the README shows.
const USER: &str = "u-42";
/// schemathesis, pinned: a newer one may check more, and that is a change
/// to make on purpose.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// Its configuration: which answers each check accepts.
const SCHEMATHESIS_CONFIG: &str = "scripts/schemathesis.toml";

/// What the README promises a newcomer.
#[derive(Debug)]
struct Promise {
    /// The run command, one line of shell.
    command: String,
    /// The profile `curl .../profiles/u-42` answers.
    profile: serde_json::Value,
}

pub fn run(root: &Path) -> Result<()> {
    let readme = std::fs::read_to_string(root.join("README.md")).context("reading README.md")?;
    let promise = promise(&readme)?;
    println!("smoke: the README's run command: {}", promise.command);
    let _data = SetAside::new(&root.join(DATA_DIR))?;

    // 1. As written: the events file is published, the profile follows.
    let hub = Hub::start(root, &promise.command, &[])?;
    let first = hub.wait_for_profile(&promise.profile)?;
    hub.check_ready()?;
    hub.stop()?;
    println!("smoke: first start served the README's profile of {USER} and stopped cleanly");

    // 2. Without --events: nothing new is published, nothing changes. With
    // an admin token: every route is served and documented.
    let again = without_events(&promise.command);
    let token = format!("smoke-{:032x}", random());
    let hub = Hub::start(root, &again, &[("PULSEHUB_ADMIN_TOKEN", &token)])?;
    hub.check_ready()?;
    hub.profile_stays(&first)?;
    println!("smoke: second start ({again}) found the profile unchanged");
    let schemathesis = schemathesis(root)?;
    hub.schemathesis(root, &schemathesis, &token)?;
    hub.stop()?;
    println!("smoke: passed");
    Ok(())
}

/// The run command and the promised profile, from the README's section
/// [`SECTION`]: its first `sh` block (one line) and its first `json` block.
fn promise(readme: &str) -> Result<Promise> {
    let start = readme
        .find(SECTION)
        .with_context(|| format!("README.md has no section `{SECTION}`"))?;
    let section = &readme[start + SECTION.len()..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let block = |language: &str| -> Result<&str> {
        let fence = format!("```{language}\n");
        let begin = section
            .find(&fence)
            .with_context(|| format!("`{SECTION}` has no ```{language} block"))?
            + fence.len();
        let end = section[begin..]
            .find("```")
            .with_context(|| format!("`{SECTION}`: a ```{language} block is not closed"))?;
        Ok(&section[begin..begin + end])
    };
    let lines: Vec<&str> = block("sh")?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let [command] = lines.as_slice() else {
        bail!("`{SECTION}`: the run command must be one line, found {lines:?}");
    };
    let profile = serde_json::from_str(block("json")?).with_context(|| {
        format!("`{SECTION}`: the ```json block (the profile of {USER}) is not JSON")
    })?;
    Ok(Promise {
        command: (*command).to_owned(),
        profile,
    })
}

/// The command without `--events FILE` (or `--events=FILE`).
fn without_events(command: &str) -> String {
    let mut words = command.split_whitespace();
    let mut kept = Vec::new();
    while let Some(word) = words.next() {
        if word == "--events" {
            words.next();
        } else if !word.starts_with("--events=") {
            kept.push(word);
        }
    }
    kept.join(" ")
}

/// A profile as compared: the commit times (`created_at`, `updated_at`) are
/// those of the run, so they are left out.
fn comparable(profile: &serde_json::Value) -> serde_json::Value {
    let mut profile = profile.clone();
    if let Some(object) = profile.as_object_mut() {
        object.remove("created_at");
        object.remove("updated_at");
    }
    profile
}

/// schemathesis in a virtual environment under `target/`, installed with pip
/// the first time.
fn schemathesis(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target").join("schemathesis");
    let program = venv.join("bin").join("schemathesis");
    let marker = venv.join(SCHEMATHESIS);
    if program.is_file() && marker.is_file() {
        return Ok(program);
    }
    println!("smoke: installing {SCHEMATHESIS} into {}", venv.display());
    let status = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .status()
        .context("cannot run python3 -m venv (python3 is needed for schemathesis)")?;
    ensure!(status.success(), "python3 -m venv failed ({status})");
    let status = Command::new(venv.join("bin").join("pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            SCHEMATHESIS,
        ])
        .status()
        .context("cannot run pip")?;
    ensure!(
        status.success(),
        "pip install {SCHEMATHESIS} failed ({status})"
    );
    std::fs::write(&marker, b"").context("marking the schemathesis install")?;
    Ok(program)
}

/// A number that differs from run to run (std's randomly keyed hasher); it
/// makes the token of a test server that lives a few minutes on the loopback.
fn random() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let high = RandomState::new().hash_one(std::process::id());
    let low = RandomState::new().hash_one(high);
    u128::from(high) << 64 | u128::from(low)
}

/// A developer's own data directory, moved aside while the step runs on a
/// fresh one, and put back afterwards (the step's own is removed).
struct SetAside {
    dir: PathBuf,
    saved: Option<PathBuf>,
}

impl SetAside {
    fn new(dir: &Path) -> Result<SetAside> {
        let saved = if dir.exists() {
            let saved = dir.with_file_name(format!("{DATA_DIR}.before-smoke"));
            ensure!(
                !saved.exists(),
                "{} exists: a smoke run was interrupted; put back or remove what you keep of \
                 {} and {}",
                saved.display(),
                dir.display(),
                saved.display()
            );
            std::fs::rename(dir, &saved)
                .with_context(|| format!("moving {} aside", dir.display()))?;
            println!(
                "smoke: {} is kept in {} meanwhile",
                dir.display(),
                saved.display()
            );
            Some(saved)
        } else {
            None
        };
        Ok(SetAside {
            dir: dir.to_owned(),
            saved,
        })
    }
}

impl Drop for SetAside {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(saved) = &self.saved
            && let Err(error) = std::fs::rename(saved, &self.dir)
        {
            eprintln!(
                "smoke: cannot put {} back as {}: {error}",
                saved.display(),
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_promise_from_the_readme() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let promise = promise(&readme).expect("the README holds the promise");
        assert!(promise.command.contains("run"), "{}", promise.command);
        assert_eq!(promise.profile["user_id"], USER);
        assert!(promise.profile["attributes"].is_object());
    }

    #[test]
    fn the_second_start_drops_only_the_events_file() {
        assert_eq!(
            without_events("cargo xtask plugins && cargo run --release -- run --events a.ndjson"),
            "cargo xtask plugins && cargo run --release -- run"
        );
        assert_eq!(
            without_events("pulsehub run --events=a.ndjson --role all"),
            "pulsehub run --role all"
        );
    }
}
