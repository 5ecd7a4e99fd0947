//! `millgate jobs …`: list (filtered, paginated), show one with its timeline, replay.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::client::{AdminArgs, AdminClient};
use super::output::{
    duration_of, fields, format_ms, indented, pretty, short_time, table, text_of, time_ms, truncate,
};
use super::{block_on, finish, CliError};

#[derive(Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    #[command(subcommand)]
    pub command: JobsCommand,
}

const JOB_STATUSES: [&str; 7] = [
    "queued",
    "parked",
    "running",
    "retrying",
    "succeeded",
    "dead_lettered",
    "cancelled",
];

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List jobs, newest first.
    #[command(visible_alias = "ls")]
    List {
        /// Only the jobs of this trigger.
        #[arg(long)]
        trigger: Option<String>,
        /// Only the jobs with this status.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(JOB_STATUSES))]
        status: Option<String>,
        /// At most this many jobs (1–500; the API's default is 50).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500))]
        limit: Option<u16>,
        /// Only jobs older than this job id (the next page).
        #[arg(long)]
        before: Option<String>,
    },
    /// Show one job: args, result, error and timeline.
    Get { id: String },
    /// Run a finished or dead-lettered job again, as a new job.
    Replay { id: String },
}

/// Runs `millgate jobs …`.
pub fn jobs(args: JobsArgs) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = AdminClient::new(&args.admin)?;
        jobs_command(&client, args.command, json).await
    }))
}

async fn jobs_command(
    client: &AdminClient,
    command: JobsCommand,
    json: bool,
) -> Result<String, CliError> {
    match command {
        JobsCommand::List {
            trigger,
            status,
            limit,
            before,
        } => {
            let mut query = Vec::new();
            if let Some(t) = trigger {
                query.push(("trigger", t));
            }
            if let Some(s) = status {
                query.push(("status", s));
            }
            if let Some(l) = limit {
                query.push(("limit", l.to_string()));
            }
            if let Some(b) = before {
                query.push(("before", b));
            }
            let v = client
                .call(Method::GET, &["api", "jobs"], &query, None)
                .await?;
            if json {
                return Ok(pretty(&v));
            }
            let out = jobs_table(&v);
            if out.is_empty() {
                eprintln!("no jobs");
            }
            if let Some(next) = v["next_before"].as_str() {
                eprintln!("(more: --before {next})");
            }
            Ok(out)
        }
        JobsCommand::Get { id } => {
            let v = client
                .call(Method::GET, &["api", "jobs", &id], &[], None)
                .await?;
            if json {
                return Ok(pretty(&v));
            }
            Ok(job_view(&v))
        }
        JobsCommand::Replay { id } => {
            let v = client
                .call(Method::POST, &["api", "jobs", &id, "replay"], &[], None)
                .await?;
            if json {
                return Ok(pretty(&v));
            }
            Ok(format!(
                "replayed job {id} as new job {}",
                text_of(&v["job_id"])
            ))
        }
    }
}

fn jobs_table(v: &Value) -> String {
    let empty = Vec::new();
    let list = v["jobs"].as_array().unwrap_or(&empty);
    if list.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|j| {
            vec![
                text_of(&j["job_id"]),
                text_of(&j["trigger"]),
                text_of(&j["status"]),
                text_of(&j["attempts"]),
                duration_of(&j["duration_ms"]),
                short_time(&j["created_at"]),
            ]
        })
        .collect();
    table(
        &[
            "JOB_ID", "TRIGGER", "STATUS", "ATTEMPTS", "DURATION", "CREATED",
        ],
        &rows,
    )
}

/// `12ms`, `1.5s`, `2m03s`, `1h05m`.
fn job_view(j: &Value) -> String {
    let trigger = match j["kind"].as_str() {
        Some(k) => format!("{} ({k})", text_of(&j["trigger"])),
        None => text_of(&j["trigger"]),
    };
    let mut out = fields(&[
        ("job", text_of(&j["job_id"])),
        ("status", text_of(&j["status"])),
        ("trigger", trigger),
        ("runnable", text_of(&j["runnable"])),
        ("event", text_of(&j["event_id"])),
        ("attempts", text_of(&j["attempts"])),
        ("created", text_of(&j["created_at"])),
        ("started", text_of(&j["started_at"])),
        ("finished", text_of(&j["finished_at"])),
        ("duration", duration_of(&j["duration_ms"])),
        ("replay of", text_of(&j["replay_of"])),
    ]);
    for key in ["args", "result"] {
        let v = &j[key];
        if v.is_null() {
            out.push_str(&format!("{key}: -\n"));
        } else {
            out.push_str(&format!("{key}:\n"));
            out.push_str(&indented(&pretty(v)));
        }
    }
    match &j["error"] {
        Value::Null => out.push_str("error: -\n"),
        Value::String(s) => {
            out.push_str("error:\n");
            out.push_str(&indented(s));
        }
        other => {
            out.push_str("error:\n");
            out.push_str(&indented(&pretty(other)));
        }
    }
    if let Some(steps) = j["timeline"].as_array() {
        out.push_str("timeline:\n");
        let rows: Vec<Vec<String>> = steps.iter().map(timeline_row).collect();
        let t = table(&["AT", "STEP", "DETAIL"], &rows);
        // The timeline reads better without the header row.
        for line in t.lines().skip(1) {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn timeline_row(step: &Value) -> Vec<String> {
    let mut detail = Vec::new();
    if let Some(a) = step["attempt"].as_u64() {
        detail.push(format!("attempt {a}"));
    }
    if let Some(d) = step["delay_ms"].as_u64() {
        detail.push(format!("retry in {}", format_ms(d)));
    }
    if let Some(obj) = step.as_object() {
        for (k, v) in obj {
            if matches!(k.as_str(), "at" | "step" | "attempt" | "delay_ms" | "error") || v.is_null()
            {
                continue;
            }
            detail.push(format!("{k} {}", text_of(v)));
        }
    }
    if !step["error"].is_null() {
        detail.push(format!(
            "error: {}",
            truncate(&text_of(&step["error"]), 200)
        ));
    }
    vec![
        time_ms(&step["at"]),
        text_of(&step["step"]),
        detail.join(", "),
    ]
}
