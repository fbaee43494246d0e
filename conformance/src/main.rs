//! `oci-blocks-conformance`: tells whether a registry or an unpacker implements
//! the oci-blocks proposal (blocks, import entries, the legacy fallback), and
//! exactly where it does not.
//!
//! It judges every implementation from the outside, this project's included: it
//! speaks HTTP to registries and runs unpackers' command lines.

mod materialize;
mod names;
mod registry;
mod report;
mod tree;
mod unpack;
mod vectors;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use report::{Expectations, Report, TestResult, write_file};
use vectors::Platform;

/// Conformance suite for registries and unpackers of the oci-blocks proposal.
///
/// Exit status: 0 when nothing failed (with --expect: when every outcome is
/// the recorded one), 1 otherwise, 2 when the suite itself could not run.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Test a registry: the distribution-spec workflows and the blocks extension.
    Registry(RegistryArgs),
    /// Test an unpacker: run every vector through its command line and compare
    /// the trees it makes with the expected ones.
    Unpack(UnpackArgs),
    /// Write every vector (an OCI layout and its expected result) for inspection.
    Vectors(VectorsArgs),
}

#[derive(Args)]
struct RegistryArgs {
    /// The registry's base URL, e.g. http://127.0.0.1:5000.
    #[arg(long)]
    url: String,
    /// Repositories are created below this namespace.
    #[arg(long, default_value = "conformance")]
    namespace: String,
    /// User name for Basic authentication or a token service.
    #[arg(long, requires = "password")]
    username: Option<String>,
    /// Password for --username.
    #[arg(long, requires = "username")]
    password: Option<String>,
    /// A command, run through `sh -c`, that makes the registry collect garbage
    /// (with no grace period). Without it the GC tests are skipped.
    #[arg(long, value_name = "CMD")]
    gc_command: Option<String>,
    /// Do not verify the registry's TLS certificate.
    #[arg(long)]
    insecure: bool,
    /// A PEM file of CA certificates to trust for https, instead of the
    /// built-in web roots.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct UnpackArgs {
    /// The unpacker's command line, run through `sh -c` for each vector, with
    /// {layout}, {ref}, {rootfs}, {tmp} and {platform} replaced by quoted values.
    /// E.g. 'oci-blocks unpack --store {tmp}/store oci:{layout}:{ref} {rootfs}'.
    #[arg(long, value_name = "TEMPLATE")]
    command: String,
    /// The platform the unpacker picks from an index (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Seconds one run may take before it is killed and failed.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Run only the vectors whose id contains this text.
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Keep each vector's work directory and output log under DIR.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// The unpacker shares its regular files read-only with a store (as
    /// `oci-blocks unpack --link hardlink --read-only` does): compare their
    /// modes without the write bits. Every other bit, setuid included, is
    /// still compared.
    #[arg(long)]
    read_only_files: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct VectorsArgs {
    /// The directory to write (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The platform of the images' manifests (default: this machine's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
}

#[derive(Args)]
struct OutputArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write a self-contained HTML page of the results.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Hold the run to the outcomes recorded in FILE: exit 1 on any difference.
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// Record this run's outcomes in FILE, for a later --expect.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("oci-blocks-conformance: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn platform(text: Option<&str>) -> Result<Platform> {
    text.map_or_else(|| Ok(Platform::host()), Platform::parse)
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Registry(a) => {
            let options = registry::Options {
                url: a.url.trim_end_matches('/').to_string(),
                namespace: a.namespace,
                username: a.username,
                password: a.password,
                gc_command: a.gc_command,
                insecure: a.insecure,
                ca_file: a.ca_file,
            };
            let results = registry::run(&options)?;
            finish("registry", &options.url, results, &a.output)
        }
        Cmd::Unpack(a) => {
            let options = unpack::Options {
                command: a.command.clone(),
                platform: platform(a.platform.as_deref())?,
                timeout: Duration::from_secs(a.timeout),
                only: a.only,
                keep: a.keep,
                read_only_files: a.read_only_files,
            };
            let results = unpack::run(&options)?;
            finish("unpack", &a.command, results, &a.output)
        }
        Cmd::Vectors(a) => {
            let n = unpack::write_vectors(&a.out, &platform(a.platform.as_deref())?)?;
            println!("wrote {n} vectors to {}", a.out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints and writes the reports, and decides the exit status.
fn finish(
    suite: &str,
    target: &str,
    results: Vec<TestResult>,
    output: &OutputArgs,
) -> Result<ExitCode> {
    let report = Report::new(suite, target, results);
    if output.json {
        println!("{}", report.json()?);
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = &output.junit {
        write_file(path, &report.junit()?)?;
    }
    if let Some(path) = &output.html {
        write_file(path, &report.html())?;
    }
    if let Some(path) = &output.record {
        write_file(path, &Expectations::of(&report).to_toml(&report)?)?;
    }
    if let Some(path) = &output.expect {
        let recorded = Expectations::load(path)?;
        let differences = recorded.compare(&report);
        if differences.is_empty() {
            eprintln!("every outcome is the one recorded in {}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} outcome(s) differ from {}:",
            differences.len(),
            path.display()
        );
        for d in &differences {
            eprintln!("  {d}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(if report.any_failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bad_platform_is_refused() {
        let err = platform(Some("amd64")).err();
        assert!(format!("{err:?}").contains("OS/ARCH"), "{err:?}");
    }
}
