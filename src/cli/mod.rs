//! millgate's command line, one file per subcommand (clap derive):
//!
//! - `run` (run.rs): the service; `check` (check.rs): validate a configuration and list it.
//! - `triggers`, `jobs`, `state` (triggers.rs, jobs.rs, state.rs): the admin CLI, a client of
//!   the admin API (docs/admin-api.md) over HTTP (client.rs). Tables by default (output.rs),
//!   the API's own JSON with `--json`.
//!
//! Exit codes of the admin CLI: 0 success; 1 the API refused the request or could not be
//! reached, or a local file could not be read; 2 a usage problem (no token, malformed
//! `--admin-url`).

mod check;
mod client;
mod jobs;
mod output;
mod run;
mod state;
mod triggers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use millgate::{load_file, load_str, LogFormat, DEFAULT_CONFIG};
use millgate_actors::Config;

#[derive(Parser)]
#[command(
    name = "millgate",
    version,
    about = "An event router: external events in, reliable jobs out."
)]
pub struct Cli {
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=millgate=debug).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Run {
        /// Configuration file; without it, the embedded default configuration is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and list the triggers and runnables it defines.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the triggers of a running millgate (through its admin API).
    Triggers(triggers::TriggersArgs),
    /// Inspect and replay the jobs of a running millgate (through its admin API).
    Jobs(jobs::JobsArgs),
    /// Read or replace the saved state of a schedule or poll trigger (through its admin API).
    State(state::StateArgs),
}

/// Runs the command the arguments name.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config } => run::run(config.as_ref(), cli.log_format),
        Command::Check { config } => check::check(config.as_ref()),
        Command::Triggers(args) => triggers::triggers(args),
        Command::Jobs(args) => jobs::jobs(args),
        Command::State(args) => state::state(args),
    }
}

/// The configuration file given, or the embedded default configuration.
fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => load_file(p).map_err(|e| e.to_string()),
        None => load_str(DEFAULT_CONFIG, "<embedded config.toml>", |k| {
            std::env::var(k).ok()
        })
        .map_err(|e| e.to_string()),
    }
}

/// A failed command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

pub(crate) fn block_on<F: std::future::Future<Output = Result<String, CliError>>>(
    f: F,
) -> Result<String, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(f)
}

pub(crate) fn finish(result: Result<String, CliError>) -> ExitCode {
    match result {
        Ok(out) => {
            if !out.is_empty() {
                if out.ends_with('\n') {
                    print!("{out}");
                } else {
                    println!("{out}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
