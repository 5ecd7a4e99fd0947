//! `millgate state …`: read or set the saved state of a schedule or poll trigger.

use std::io::Read;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::{AdminArgs, AdminClient};
use super::output::pretty;
use super::{block_on, finish, CliError};

#[derive(Args, Debug)]
pub struct StateArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Print a trigger's saved state as JSON (`null` when nothing was saved yet).
    Get { trigger: String },
    /// Set a trigger's saved state from JSON given as an argument, or read from stdin: a
    /// schedule's fields given change and the others stay; a poll's state is replaced (a poll
    /// running meanwhile drops its own new state, so the next poll starts from this one).
    Set {
        trigger: String,
        /// The new state as JSON; `-` or nothing reads it from stdin.
        #[arg(value_name = "JSON")]
        state: Option<String>,
    },
}

/// Runs `millgate state …`.
pub fn state(args: StateArgs) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = AdminClient::new(&args.admin)?;
        state_command(&client, args.command, json).await
    }))
}

async fn state_command(
    client: &AdminClient,
    command: StateCommand,
    json: bool,
) -> Result<String, CliError> {
    let v = match command {
        StateCommand::Get { trigger } => {
            client
                .call(
                    Method::GET,
                    &["api", "triggers", &trigger, "state"],
                    &[],
                    None,
                )
                .await?
        }
        StateCommand::Set { trigger, state } => {
            let text = match state.as_deref() {
                None | Some("-") => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| CliError::failed(format!("cannot read stdin: {e}")))?;
                    s
                }
                Some(t) => t.to_string(),
            };
            // Checked here so that a typo is a usage error, not a round trip.
            serde_json::from_str::<Value>(&text)
                .map_err(|e| CliError::usage(format!("the state is not valid JSON: {e}")))?;
            client
                .call(
                    Method::PUT,
                    &["api", "triggers", &trigger, "state"],
                    &[],
                    Some(("application/json", text.into_bytes())),
                )
                .await?
        }
    };
    if json {
        return Ok(pretty(&v));
    }
    Ok(pretty(&v["state"]))
}
