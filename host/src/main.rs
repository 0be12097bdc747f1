//! The `pulsehub` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

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
    /// Work with plugin packages (NAME.wasm + NAME.toml).
    #[command(subcommand)]
    Plugin(cli::plugin::PluginCommand),
}

fn main() -> ExitCode {
    cli::init_logging();
    let args = Args::parse();
    let outcome = match args.command {
        Command::Plugin(command) => cli::plugin::run(command),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
