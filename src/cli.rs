//! `millgate triggers …`, `millgate jobs …` and `millgate state …`: the admin CLI, a client of the admin API
//! (docs/admin-api.md) over HTTP. Tables by default, the API's own JSON with `--json`.
//!
//! Exit codes: 0 success; 1 the API refused the request or could not be reached, or a local
//! file could not be read; 2 a usage problem (no token, malformed `--admin-url`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Where the admin API is and how to talk to it; given after `triggers` / `jobs`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Admin API options")]
pub struct AdminArgs {
    /// Base URL of the admin API (the `[admin] listen` address).
    #[arg(
        long,
        env = "MILLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub admin_url: String,
    /// The admin token (`[admin] token`); without it, the token file millgate generated:
    /// `$MILLGATE_DATA/admin-token`, else `./data/admin-token`.
    #[arg(
        long,
        env = "MILLGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

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

/// `millgate jobs …`
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

/// A failed command: the message for stderr and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    fn failed(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
    fn usage(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 2,
        }
    }
}

/// Runs `millgate triggers …`.
pub fn triggers(args: TriggersArgs) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = AdminClient::new(&args.admin)?;
        triggers_command(&client, args.command, json).await
    }))
}

/// Runs `millgate jobs …`.
pub fn jobs(args: JobsArgs) -> ExitCode {
    let json = args.admin.json;
    finish(block_on(async move {
        let client = AdminClient::new(&args.admin)?;
        jobs_command(&client, args.command, json).await
    }))
}

fn block_on<F: std::future::Future<Output = Result<String, CliError>>>(
    f: F,
) -> Result<String, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the tokio runtime: {e}")))?;
    runtime.block_on(f)
}

fn finish(result: Result<String, CliError>) -> ExitCode {
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

// ---------------------------------------------------------------------------------------------
// HTTP

/// Without `--token` or `MILLGATE_ADMIN_TOKEN`: the token file a local millgate generated,
/// `$MILLGATE_DATA/admin-token` (the default config's store) or `./data/admin-token`.
fn token_from_file() -> Result<String, CliError> {
    let (path, from) = match std::env::var_os("MILLGATE_DATA").filter(|d| !d.is_empty()) {
        Some(dir) => (
            PathBuf::from(dir).join("admin-token"),
            "$MILLGATE_DATA/admin-token",
        ),
        None => (PathBuf::from("./data/admin-token"), "./data/admin-token"),
    };
    let missing = |why: String| {
        CliError::usage(format!(
            "no admin token: pass --token or set MILLGATE_ADMIN_TOKEN (the `[admin] token` of \
             the service), or run where millgate keeps its generated token: {from} ({}) {why}",
            path.display()
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(missing("is empty".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing("does not exist".into())),
        Err(e) => Err(missing(format!("cannot be read: {e}"))),
    }
}

struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    fn new(args: &AdminArgs) -> Result<Self, CliError> {
        let base = args.admin_url.trim().trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(CliError::usage(format!(
                    "--admin-url `{}` is not an http(s) URL, e.g. http://127.0.0.1:8081",
                    args.admin_url
                )))
            }
        }
        let token = match args.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => token_from_file()?,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("millgate-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        for s in segments {
            url.push('/');
            url.push_str(&encode_segment(s));
        }
        url
    }

    /// Sends one request; the answer's JSON (`Null` for an empty body such as `204`), or the
    /// API's error as `"<message> (HTTP <status>)"`.
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, CliError> {
        let url = self.url(segments);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return parsed.ok_or_else(|| {
                CliError::failed(format!(
                    "{url} answered {} with a body that is not JSON: {} \
                     (is --admin-url the admin listener?)",
                    status_text(status),
                    snippet(&bytes)
                ))
            });
        }
        let mut message = parsed
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .map(str::to_string);
        // A 404 on a collection means this is not the admin API at all (often: the webhook
        // listener's address was given).
        if status == StatusCode::NOT_FOUND && segments.len() == 2 {
            message = Some(format!(
                "{} (is {} the admin listener, not the webhook one?)",
                message.as_deref().unwrap_or("not found"),
                self.base
            ));
        }
        Err(CliError::failed(match message {
            Some(m) => format!("{m} (HTTP {})", status_text(status)),
            None if bytes.is_empty() => format!(
                "HTTP {} from {url} (is --admin-url the admin listener?)",
                status_text(status)
            ),
            None => format!(
                "HTTP {} from {url}: {} (is --admin-url the admin listener?)",
                status_text(status),
                snippet(&bytes)
            ),
        }))
    }

    fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let cause = root_cause(e);
        let hint = if e.is_connect() || e.is_timeout() {
            " (is millgate running with an [admin] section? set --admin-url or MILLGATE_ADMIN_URL)"
        } else {
            ""
        };
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else {
            cause
        };
        CliError::failed(format!(
            "cannot reach the admin API at {}: {what}{hint}",
            self.base
        ))
    }
}

/// The innermost cause of an error, "connection refused" rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    if let Some(io) = last.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
            _ => {}
        }
    }
    last.to_string()
}

fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let one_line = clean(&text);
    truncate(one_line.trim(), 200)
}

/// Percent-encodes one path segment (names and ids are plain, but never let one change the
/// path: `/`, `?`, `#`, `.` and `..` are encoded).
fn encode_segment(s: &str) -> String {
    let all_dots = !s.is_empty() && s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b':');
        if plain || (b == b'.' && !all_dots) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Output

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A JSON value as a cell: strings bare, null as `-`.
fn text_of(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

/// One line: control characters (newlines in error messages) become spaces.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Left-aligned columns separated by two spaces; no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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
fn duration_of(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => format_ms(ms),
        None => "-".into(),
    }
}

fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// `2024-05-01T12:00:00.123456+00:00` → `2024-05-01 12:00:00Z`; anything else as it is.
fn short_time(v: &Value) -> String {
    format_time(v, false)
}

/// As [`short_time`], with milliseconds: `2024-05-01 12:00:00.123Z`.
fn time_ms(v: &Value) -> String {
    format_time(v, true)
}

fn format_time(v: &Value, millis: bool) -> String {
    let Some(s) = v.as_str() else {
        return text_of(v);
    };
    let Some((date, time)) = s.split_once('T') else {
        return s.to_string();
    };
    if time.len() < 8 || !time.is_char_boundary(8) {
        return s.to_string();
    }
    let (hms, rest) = time.split_at(8);
    let zone = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => &rest[i..],
        None => "",
    };
    let zone = match zone {
        "Z" | "z" | "+00:00" => "Z",
        other => other,
    };
    let fraction = if millis {
        let digits: String = rest
            .strip_prefix('.')
            .unwrap_or("")
            .chars()
            .take_while(char::is_ascii_digit)
            .chain(std::iter::repeat('0'))
            .take(3)
            .collect();
        format!(".{digits}")
    } else {
        String::new()
    };
    format!("{date} {hms}{fraction}{zone}")
}

/// `key:  value` lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{:<width$}  {v}\n", format!("{k}:")));
    }
    out
}

fn indented(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str("  ");
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => text_of(v),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let t = table(
            &["NAME", "STATE", "LAST_ERROR"],
            &[
                vec!["a".into(), "running".into(), "-".into()],
                vec!["long-name".into(), "disabled".into(), "boom".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME       STATE     LAST_ERROR\n\
             a          running   -\n\
             long-name  disabled  boom\n"
        );
    }

    #[test]
    fn segments_cannot_change_the_path() {
        assert_eq!(encode_segment("hello.v2"), "hello.v2");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
    }

    #[test]
    fn durations_and_times_are_short() {
        assert_eq!(format_ms(12), "12ms");
        assert_eq!(format_ms(1500), "1.5s");
        assert_eq!(format_ms(123_000), "2m03s");
        assert_eq!(format_ms(3_900_000), "1h05m");
        assert_eq!(
            short_time(&json!("2024-05-01T12:00:00.123456+00:00")),
            "2024-05-01 12:00:00Z"
        );
        assert_eq!(
            short_time(&json!("2024-05-01T12:00:00Z")),
            "2024-05-01 12:00:00Z"
        );
        assert_eq!(
            short_time(&json!("2024-05-01T12:00:00.5+02:00")),
            "2024-05-01 12:00:00+02:00"
        );
        assert_eq!(
            time_ms(&json!("2024-05-01T12:00:00.5+02:00")),
            "2024-05-01 12:00:00.500+02:00"
        );
        assert_eq!(
            time_ms(&json!("2024-05-01T12:00:00Z")),
            "2024-05-01 12:00:00.000Z"
        );
    }

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

/// `millgate state …`: the saved state of a schedule or poll trigger.
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
