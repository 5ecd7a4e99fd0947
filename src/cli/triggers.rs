//! `millgate triggers …`: list, show, add (from TOML or JSON), remove, enable/disable,
//! suspend/resume.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::{AdminArgs, AdminClient};
use super::output::{fields, indented, pretty, table, text_of, truncate, yes_no};
use super::{block_on, finish, CliError};

/// `millgate triggers …`
#[derive(Args, Debug)]
pub struct TriggersArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub command: TriggersCommand,
}

#[derive(Subcommand, Debug)]
pub enum TriggersCommand {
    /// List every trigger with its state.
    #[command(visible_alias = "ls")]
    List,
    /// Show one trigger: state, counters and configuration.
    Get { name: String },
    /// Add a trigger from a TOML file (bare keys or one `[[triggers]]` entry); `-` reads stdin.
    Add {
        /// The file (`.json` files are sent as JSON), or `-` for stdin.
        file: PathBuf,
    },
    /// Remove a trigger added through the API.
    #[command(visible_alias = "remove", alias = "delete")]
    Rm { name: String },
    /// Enable a trigger.
    Enable { name: String },
    /// Disable a trigger: its webhook or route answers 503 (remembered across restarts).
    Disable { name: String },
    /// Suspend a trigger: events are still acknowledged, their jobs are parked, not run.
    Suspend { name: String },
    /// Resume a suspended trigger: parked jobs are released, in arrival order.
    Resume { name: String },
}

/// Runs `millgate triggers …`.
pub fn triggers(args: TriggersArgs) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = AdminClient::new(&args.admin)?;
        triggers_command(&client, args.command, json).await
    }))
}

async fn triggers_command(
    client: &AdminClient,
    command: TriggersCommand,
    json: bool,
) -> Result<String, CliError> {
    match command {
        TriggersCommand::List => {
            let v = client
                .call(Method::GET, &["api", "triggers"], &[], None)
                .await?;
            if json {
                return Ok(pretty(&v));
            }
            let out = triggers_table(&v);
            if out.is_empty() {
                eprintln!("no triggers");
            }
            Ok(out)
        }
        TriggersCommand::Get { name } => {
            let v = client
                .call(Method::GET, &["api", "triggers", &name], &[], None)
                .await?;
            if json {
                return Ok(pretty(&v));
            }
            Ok(trigger_view(&v))
        }
        TriggersCommand::Add { file } => {
            let (text, from) = read_input(&file)?;
            let content_type = if file.extension().is_some_and(|e| e == "json") {
                "application/json"
            } else {
                "application/toml"
            };
            let v = client
                .call(
                    Method::POST,
                    &["api", "triggers"],
                    &[],
                    Some((content_type, text.into_bytes())),
                )
                .await
                .map_err(|e| CliError {
                    message: format!("{from}: {}", e.message),
                    code: e.code,
                })?;
            if json {
                return Ok(pretty(&v));
            }
            Ok(format!(
                "added trigger {} ({}, state {})",
                text_of(&v["name"]),
                text_of(&v["kind"]),
                text_of(&v["state"])
            ))
        }
        TriggersCommand::Rm { name } => {
            let v = client
                .call(Method::DELETE, &["api", "triggers", &name], &[], None)
                .await?;
            if json {
                return Ok(if v.is_null() {
                    String::new()
                } else {
                    pretty(&v)
                });
            }
            Ok(format!("removed trigger {name}"))
        }
        TriggersCommand::Enable { name } => action(client, &name, "enable", "enabled", json).await,
        TriggersCommand::Disable { name } => {
            action(client, &name, "disable", "disabled", json).await
        }
        TriggersCommand::Suspend { name } => {
            action(client, &name, "suspend", "suspended", json).await
        }
        TriggersCommand::Resume { name } => action(client, &name, "resume", "resumed", json).await,
    }
}

/// `POST /api/triggers/{name}/{verb}`, answered with the trigger's view.
async fn action(
    client: &AdminClient,
    name: &str,
    verb: &str,
    done: &str,
    json: bool,
) -> Result<String, CliError> {
    let v = client
        .call(Method::POST, &["api", "triggers", name, verb], &[], None)
        .await?;
    if json {
        return Ok(pretty(&v));
    }
    let mut out = format!("{done} trigger {name}: state {}", text_of(&v["state"]));
    if let Some(n) = v["parked"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(", {n} parked job(s)"));
    }
    Ok(out)
}

fn read_input(file: &PathBuf) -> Result<(String, String), CliError> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::failed(format!("cannot read stdin: {e}")))?;
        Ok((text, "<stdin>".into()))
    } else {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::failed(format!("cannot read {name}: {e}")))?;
        Ok((text, name))
    }
}

fn triggers_table(v: &Value) -> String {
    let empty = Vec::new();
    let list = v["triggers"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                text_of(&t["name"]),
                text_of(&t["kind"]),
                text_of(&t["mode"]),
                text_of(&t["state"]),
                text_of(&t["in_flight"]),
                text_of(&t["restarts"]),
                t["rate_1m"]
                    .as_f64()
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                truncate(&text_of(&t["last_error"]), 80),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "KIND",
            "MODE",
            "STATE",
            "IN_FLIGHT",
            "RESTARTS",
            "RATE/s",
            "LAST_ERROR",
        ],
        &rows,
    )
}

fn trigger_view(t: &Value) -> String {
    let mut out = fields(&[
        ("name", text_of(&t["name"])),
        ("kind", text_of(&t["kind"])),
        ("mode", text_of(&t["mode"])),
        ("source", text_of(&t["source"])),
        ("state", text_of(&t["state"])),
        ("enabled", yes_no(&t["enabled"])),
        ("suspended", yes_no(&t["suspended"])),
        ("last error", text_of(&t["last_error"])),
        ("next attempt", text_of(&t["next_attempt"])),
        ("restarts", text_of(&t["restarts"])),
        ("in flight", text_of(&t["in_flight"])),
        ("parked", text_of(&t["parked"])),
        (
            "rate",
            t["rate_1m"]
                .as_f64()
                .map(|r| format!("{r:.2} events/s (last minute)"))
                .unwrap_or_else(|| "-".into()),
        ),
    ]);
    if let Some(counters) = t["counters"].as_object() {
        out.push_str("counters:\n");
        let pairs: Vec<(&str, String)> = counters
            .iter()
            .map(|(k, v)| (k.as_str(), text_of(v)))
            .collect();
        out.push_str(&indented(&fields(&pairs)));
    }
    if !t["config"].is_null() {
        out.push_str("config:\n");
        out.push_str(&indented(&as_toml_trigger(&t["config"])));
    }
    out
}

/// The trigger's configuration as a `[[triggers]]` entry, ready to paste into a file: `name`,
/// `kind` and `runnable` first, nested tables inline (`retry = { attempts = 3 }`).
fn as_toml_trigger(config: &Value) -> String {
    let Some(map) = config.as_object() else {
        return pretty(config);
    };
    let first = ["name", "kind", "runnable"];
    let mut out = String::from("[[triggers]]\n");
    let keys = first
        .iter()
        .filter(|k| map.contains_key(**k))
        .copied()
        .chain(
            map.keys()
                .map(String::as_str)
                .filter(|k| !first.contains(k)),
        );
    for k in keys {
        let v = &map[k];
        if !v.is_null() {
            out.push_str(&format!("{} = {}\n", toml_key(k), toml_value(v)));
        }
    }
    out
}

fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// A JSON value written as an inline TOML value (nulls, which TOML lacks, are left out).
fn toml_value(v: &Value) -> String {
    match v {
        Value::Null => "\"\"".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => toml::Value::String(s.clone()).to_string(),
        Value::Array(a) => {
            let items: Vec<String> = a.iter().filter(|v| !v.is_null()).map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(m) => {
            // `type` (of `auth`) reads best first.
            let typed = m.get_key_value("type").into_iter();
            let items: Vec<String> = typed
                .chain(m.iter().filter(|(k, _)| k.as_str() != "type"))
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect();
            if items.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", items.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trigger_config_is_shown_as_a_triggers_entry() {
        let s = as_toml_trigger(&json!({
            "name": "h", "kind": "webhook", "runnable": "echo", "token": "***",
            "retry": {"attempts": 2}, "order_by": null,
            "auth": {"username": "u", "password": "***", "type": "basic"}
        }));
        assert_eq!(
            s,
            "[[triggers]]\n\
             name = \"h\"\n\
             kind = \"webhook\"\n\
             runnable = \"echo\"\n\
             auth = { type = \"basic\", password = \"***\", username = \"u\" }\n\
             retry = { attempts = 2 }\n\
             token = \"***\"\n"
        );
    }
}
