//! The `pulsehub` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// The pipeline allocates and frees many small strings per event (decoded
/// events, updates, profiles); glibc's allocator spent about a fifth of the
/// enrich process's CPU on them (`scripts/diagnose-pipeline.sh`, perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pulsehub",
    version,
    about = "Real-time customer profiles enriched by sandboxed WebAssembly plugins"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run PulseHub: with no backend configured, everything in one process
    /// with an embedded store; else the chosen role against Kafka,
    /// PostgreSQL and Redis.
    Run(cli::run::RunArgs),
    /// Apply the PostgreSQL migrations (also done at start-up unless
    /// `database.migrate = false`).
    Migrate(cli::run::MigrateArgs),
    /// Work with plugins: start a plugin crate, check or try a plugin
    /// package (NAME.wasm + NAME.toml).
    #[command(subcommand)]
    Plugin(cli::plugin::PluginCommand),
    /// Look at the dead letters.
    #[command(subcommand)]
    Dlq(cli::dlq::DlqCommand),
    /// Rebuild derived data: `--cache` refills Redis from PostgreSQL,
    /// `--profiles` recomputes the profiles from the archive.
    Rebuild(cli::rebuild::RebuildArgs),
    /// Run a plugin's running version over the archived events, so that its
    /// attributes are what they would be had it seen every event.
    Backfill(cli::backfill::BackfillArgs),
    /// Replay profiles from the archive and compare them with PostgreSQL,
    /// and PostgreSQL with Redis; `--repair` fixes what differs.
    Reconcile(cli::reconcile::ReconcileArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Command::Run(args) => cli::run::run(args),
        Command::Migrate(args) => cli::run::migrate(args),
        Command::Rebuild(args) => cli::rebuild::rebuild(args),
        Command::Backfill(args) => cli::backfill::backfill(args),
        Command::Reconcile(args) => cli::reconcile::reconcile(args),
        Command::Dlq(command) => cli::dlq::run(command),
        Command::Plugin(command) => {
            cli::init_logging();
            cli::plugin::run(command)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
