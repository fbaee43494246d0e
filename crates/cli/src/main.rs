//! `oci-blocks`: build, rechunk, validate, inspect, unpack and copy images that use the blocks extension.
//!
//! The binary is thin: argument parsing with clap, one module per subcommand,
//! and the work done by the library crates.

mod build;
mod bundle;
mod compare;
mod delta;
mod inspect;
mod output;
mod rechunk;
mod transfer;
mod unpack;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Images with content-addressed blocks beside their layers.
#[derive(Parser)]
#[command(name = "oci-blocks", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Build(Box<build::Args>),
    Rechunk(Box<rechunk::Args>),
    Validate(validate::Args),
    Inspect(inspect::Args),
    Unpack(unpack::Args),
    Copy(transfer::CopyArgs),
    Push(transfer::PushArgs),
    Pull(transfer::PullArgs),
    Delta(Box<delta::Args>),
    Bundle(Box<bundle::BundleArgs>),
    Load(Box<bundle::LoadArgs>),
    Compare(Box<compare::Args>),
}

/// Exit status of a run whose input was judged invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit status of a run that could not do its work (I/O, usage).
pub const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => build::run(*args),
        Command::Rechunk(args) => rechunk::run(*args),
        Command::Validate(args) => validate::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Unpack(args) => unpack::run(args),
        Command::Copy(args) => transfer::run_copy(args),
        Command::Push(args) => transfer::run_push(args),
        Command::Pull(args) => transfer::run_pull(args),
        Command::Delta(args) => delta::run(*args),
        Command::Bundle(args) => bundle::run_bundle(*args),
        Command::Load(args) => bundle::run_load(*args),
        Command::Compare(args) => compare::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(err)
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // The reader of our output went away (`| head`): nothing to report.
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("oci-blocks: error: {err:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
