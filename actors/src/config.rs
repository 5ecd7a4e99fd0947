//! The configuration model shared by `config.toml` and (later) the admin API.
//!
//! Parsing only checks shapes (unknown keys are errors); [`Config::validate`] checks meaning
//! (references, duplicates, compilable filters, route conflicts) and reports every problem with
//! the dotted key it belongs to, so the shell can turn it into `file:line: key: message`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::preprocess::Preprocessor;
use crate::triggers::TriggerConfig;

/// The whole file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub router: RouterConfig,
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// The admin API and dashboard; not served without this table.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// OpenTelemetry export of the tracing spans; off unless `otlp_endpoint` is set.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub runnables: BTreeMap<String, RunnableConfig>,
    #[serde(default)]
    pub triggers: Vec<TriggerConfig>,
}

/// `[server]`: the shared listener for webhooks and HTTP routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// How long a `mode = "sync"` request waits for its job before answering 504.
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// How deeply JSON may nest in anything millgate parses from outside (bodies, messages,
    /// poll results, preprocessor outputs, run results); deeper is refused.
    pub max_json_depth: usize,
    /// Both listeners: a client must send a request's whole header within this time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Both listeners: a kept-alive connection without a request for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Both listeners together: most connections open at once; at the cap the oldest idle or
    /// slow connection is closed for a new one.
    pub max_connections: usize,
    /// Most bytes of request bodies held in memory at once, across all requests.
    pub max_buffered_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_json_depth: crate::json::DEFAULT_MAX_DEPTH,
            listen: "127.0.0.1:8080".into(),
            body_limit: 10 * 1024 * 1024,
            sync_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_buffered_bytes: 64 * 1024 * 1024,
        }
    }
}

/// `[admin]`: the admin API, metrics and dashboard listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token every admin route but `/healthz` and `/readyz` requires. Without it the
    /// token is read from `token_file` (generated there at the first start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Where the token is kept when `token` is not set; default `<[store] path>/admin-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Host names (`name` or `name:port`) the admin listener answers to besides its own address
    /// (IP literals and `localhost` with its port), e.g. the name of a reverse proxy in front.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Whether triggers added through the admin API may run programs (a `command`
    /// preprocessor, librdkafka properties that load or run code).
    #[serde(default)]
    pub allow_commands: bool,
}

impl AdminConfig {
    /// The file the admin token is kept in when `token` is not set.
    pub fn token_file(&self, store: &StoreConfig) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| store.path.join("admin-token"))
    }
}

/// A name as messages show it: an overlong one is cut, so that it cannot flood them.
fn shortened(name: &str) -> String {
    if name.chars().count() <= 64 {
        return name.to_string();
    }
    let head: String = name.chars().take(40).collect();
    format!("{head}…")
}

/// Trigger names: they are URL segments, sled keys and metric labels.
pub fn check_trigger_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if first_ok && rest_ok && name.len() <= 64 {
        return Ok(());
    }
    Err(format!(
        "`{}` is not a valid name: 1 to 64 letters, digits, `_`, `.` or `-`, starting with a \
         letter or digit",
        shortened(name)
    ))
}

/// The keys through which a trigger would run a program of its own choosing (rather than a
/// runnable of the configuration): allowed in config files, and through the admin API only
/// with `[admin] allow_commands = true`.
pub fn program_keys(trigger: &TriggerConfig) -> Vec<String> {
    let mut keys = Vec::new();
    if trigger
        .common
        .preprocessor
        .as_ref()
        .is_some_and(|p| p.command.is_some())
    {
        keys.push("preprocessor.command".to_string());
    }
    #[cfg(feature = "kafka")]
    if let crate::triggers::TriggerSpec::Kafka(k) = &trigger.spec {
        keys.extend(
            k.program_properties()
                .into_iter()
                .map(|p| format!("properties.{p}")),
        );
    }
    keys
}

fn default_admin_listen() -> String {
    "127.0.0.1:8081".into()
}

/// `[telemetry]`: where the tracing spans (`event`, `job`, `run`) are exported, over OTLP/HTTP
/// with protobuf bodies (Jaeger, Tempo and the OpenTelemetry Collector all accept it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://localhost:4318`); `/v1/traces` is appended
    /// unless the URL already ends with it. No export without it.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` resource attribute the spans carry.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "millgate".into(),
        }
    }
}

impl TelemetryConfig {
    /// The URL spans are POSTed to: the endpoint with `/v1/traces` appended unless present.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

/// `[store]`: where sled keeps the durable state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Finished job records older than this are removed.
    #[serde(with = "humantime_serde")]
    pub job_retention: Duration,
    /// At most this many finished job records are kept (oldest removed first).
    pub max_jobs: usize,
    /// How long an event id is remembered to drop redeliveries and repeated idempotency keys.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./data"),
            job_retention: Duration::from_secs(7 * 24 * 3600),
            max_jobs: 100_000,
            dedup_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[router]`: the runner pool and the defaults every trigger inherits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Number of runner actors, i.e. jobs running at once across all runnables.
    pub runners: usize,
    /// Jobs of one trigger that may be queued or running before the trigger pushes back.
    pub max_in_flight: usize,
    /// Default retry policy for triggers that set none.
    pub retry: RetryPolicy,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            runners: 8,
            max_in_flight: 1000,
            retry: RetryPolicy::default(),
        }
    }
}

/// `[preprocess]`: the processes jq preprocessors (and jq `order_by` keys) run in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// jq worker processes: filters running at once.
    pub jq_workers: usize,
    /// Memory each jq worker may use, in MiB; a filter past it fails its event.
    pub jq_memory_mib: u64,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            jq_workers: 2,
            jq_memory_mib: 1024,
        }
    }
}

/// `[supervisor]`: how failed trigger actors are restarted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    #[serde(with = "humantime_serde")]
    pub restart_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub restart_max: Duration,
    /// A trigger that stayed up this long has its backoff reset.
    #[serde(with = "humantime_serde")]
    pub stable_after: Duration,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            restart_initial: Duration::from_secs(1),
            restart_max: Duration::from_secs(300),
            stable_after: Duration::from_secs(60),
        }
    }
}

/// `retry = { attempts, initial, max }`: exponential backoff with full jitter between attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Total number of runs, the first included. 1 means no retry.
    pub attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `next_attempt` (2 = first retry): `initial * 2^(n-2)` capped at
    /// `max`, then jittered into [50%, 100%] so that a burst of failures does not retry in step.
    pub fn delay(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let base = self
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.max.max(self.initial));
        let factor = 0.5 + rand::random::<f64>() * 0.5;
        base.mul_f64(factor)
    }
}

/// `[runnables.<name>]`: what a job runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnableConfig {
    /// `command`, `http` or `echo`; inferred from `command` / `url` when absent.
    #[serde(default)]
    pub kind: Option<RunnableKind>,
    /// Program and arguments; the job's args arrive as JSON on stdin.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Endpoint that receives the job's args as a JSON POST.
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_runnable_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Jobs of this runnable running at once (unbounded, i.e. the runner pool, when absent).
    #[serde(default)]
    pub concurrency: Option<usize>,
}

fn default_runnable_timeout() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnableKind {
    Command,
    Http,
    /// Returns the job's args as its result, in-process: for trying triggers and preprocessors
    /// out, and for measuring the pipeline without a runnable's cost.
    Echo,
}

impl RunnableConfig {
    pub fn resolved_kind(&self) -> Result<RunnableKind, String> {
        match (self.kind, &self.command, &self.url) {
            (Some(RunnableKind::Command), Some(_), None) | (None, Some(_), None) => {
                Ok(RunnableKind::Command)
            }
            (Some(RunnableKind::Http), None, Some(_)) | (None, None, Some(_)) => {
                Ok(RunnableKind::Http)
            }
            (Some(RunnableKind::Echo), None, None) => Ok(RunnableKind::Echo),
            (Some(RunnableKind::Echo), _, _) => {
                Err("an echo runnable takes neither `command` nor `url`".into())
            }
            (_, Some(_), Some(_)) => Err("set either `command` or `url`, not both".into()),
            (Some(RunnableKind::Command), None, _) => {
                Err("a command runnable needs `command = [\"program\", \"arg\", …]`".into())
            }
            (Some(RunnableKind::Http), _, None) => Err("an http runnable needs `url`".into()),
            (None, None, None) => {
                Err("a runnable needs `command`, `url`, or `kind = \"echo\"`".into())
            }
        }
    }
}

/// `preprocessor = { jq = "..." }` or `preprocessor = { command = [...] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessorConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jq: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
}

/// One problem found in a configuration, with the dotted key it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub section: Section,
    /// Key inside the section, dotted for nested keys (`preprocessor.jq`), empty for the whole section.
    pub key: String,
    pub message: String,
}

/// Where an issue lives, so that the loader can find its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    Top(String),
    Runnable(String),
    /// Index in `[[triggers]]` and the trigger's name.
    Trigger(usize, String),
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match &self.section {
            Section::Top(s) if self.key.is_empty() => s.clone(),
            Section::Top(s) if s.is_empty() => self.key.clone(),
            Section::Top(s) => format!("{s}.{}", self.key),
            Section::Runnable(n) if self.key.is_empty() => format!("runnables.{n}"),
            Section::Runnable(n) => format!("runnables.{n}.{}", self.key),
            Section::Trigger(i, n) if self.key.is_empty() => {
                format!("triggers[{i}] ({})", shortened(n))
            }
            Section::Trigger(i, n) => format!("triggers[{i}] ({}).{}", shortened(n), self.key),
        };
        write!(f, "{key}: {}", self.message)
    }
}

impl Config {
    /// Checks everything a parse cannot: references, duplicates, compilable filters, routes.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let top = |key: &str, message: String| ConfigIssue {
            section: Section::Top("".into()),
            key: key.into(),
            message,
        };
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            issues.push(top(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            ));
        }
        if !(1..=64).contains(&self.preprocess.jq_workers) {
            issues.push(top(
                "preprocess.jq_workers",
                format!("{} is out of range: 1 to 64", self.preprocess.jq_workers),
            ));
        }
        if !(64..=65536).contains(&self.preprocess.jq_memory_mib) {
            issues.push(top(
                "preprocess.jq_memory_mib",
                format!(
                    "{} is out of range: 64 to 65536 (MiB)",
                    self.preprocess.jq_memory_mib
                ),
            ));
        }
        let depth = self.server.max_json_depth;
        if !(1..=crate::json::MAX_CONFIGURABLE_DEPTH).contains(&depth) {
            issues.push(top(
                "server.max_json_depth",
                format!(
                    "{depth} is out of range: 1 to {} (stored records nest a payload a few levels deeper)",
                    crate::json::MAX_CONFIGURABLE_DEPTH
                ),
            ));
        }
        for (key, d) in [
            (
                "server.header_read_timeout",
                self.server.header_read_timeout,
            ),
            ("server.idle_timeout", self.server.idle_timeout),
        ] {
            if d.is_zero() {
                issues.push(top(key, "must be longer than 0s, like \"10s\"".into()));
            }
        }
        if self.server.max_connections == 0 {
            issues.push(top("server.max_connections", "must be at least 1".into()));
        }
        if self.server.max_buffered_bytes == 0 {
            issues.push(top(
                "server.max_buffered_bytes",
                "must be at least 1".into(),
            ));
        }
        if let Some(admin) = &self.admin {
            if admin.listen.parse::<std::net::SocketAddr>().is_err() {
                issues.push(top(
                    "admin.listen",
                    format!("`{}` is not an address like 127.0.0.1:8081", admin.listen),
                ));
            }
            if admin.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                issues.push(top(
                    "admin.token",
                    "must not be empty; remove the key to use the generated token in \
                     `token_file` (default <[store] path>/admin-token)"
                        .into(),
                ));
            }
            if admin
                .token_file
                .as_ref()
                .is_some_and(|f| f.as_os_str().is_empty())
            {
                issues.push(top("admin.token_file", "must not be empty".into()));
            }
            for host in &admin.allowed_hosts {
                if let Err(m) = check_allowed_host(host) {
                    issues.push(top("admin.allowed_hosts", m));
                }
            }
        }
        let zero_limits = [
            ("server.body_limit", self.server.body_limit == 0),
            ("server.sync_timeout", self.server.sync_timeout.is_zero()),
            ("store.dedup_ttl", self.store.dedup_ttl.is_zero()),
            ("store.job_retention", self.store.job_retention.is_zero()),
            ("store.max_jobs", self.store.max_jobs == 0),
            (
                "supervisor.restart_initial",
                self.supervisor.restart_initial.is_zero(),
            ),
            (
                "supervisor.stable_after",
                self.supervisor.stable_after.is_zero(),
            ),
        ];
        for (key, zero) in zero_limits {
            if zero {
                issues.push(top(key, ZERO.into()));
            }
        }
        if self.supervisor.restart_max < self.supervisor.restart_initial {
            issues.push(top(
                "supervisor.restart_max",
                "must not be shorter than restart_initial".into(),
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint {
            // Checked here so that a typo fails `millgate check` instead of silently losing
            // every span at run time.
            match reqwest::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => issues.push(top(
                    "telemetry.otlp_endpoint",
                    format!(
                        "`{endpoint}` is not an http(s) URL like http://localhost:4318 (OTLP over HTTP)"
                    ),
                )),
            }
        }
        if self.telemetry.service_name.trim().is_empty() {
            issues.push(top("telemetry.service_name", "must not be empty".into()));
        }
        if self.router.runners == 0 {
            issues.push(top("router.runners", "must be at least 1".into()));
        }
        if self.router.max_in_flight == 0 {
            issues.push(top("router.max_in_flight", "must be at least 1".into()));
        }
        if let Err(m) = validate_retry(&self.router.retry) {
            issues.push(top("router.retry", m));
        }
        for (name, runnable) in &self.runnables {
            let issue = |key: &str, message: String| ConfigIssue {
                section: Section::Runnable(name.clone()),
                key: key.into(),
                message,
            };
            match runnable.resolved_kind() {
                Err(m) => issues.push(issue("", m)),
                Ok(RunnableKind::Command) => {
                    if runnable.command.as_ref().is_some_and(|c| c.is_empty()) {
                        issues.push(issue("command", "must name a program".into()));
                    }
                }
                Ok(RunnableKind::Echo) => {}
                Ok(RunnableKind::Http) => {
                    let url = runnable.url.as_deref().unwrap_or_default();
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        issues.push(issue("url", format!("`{url}` is not an http(s) URL")));
                    }
                }
            }
            if runnable.concurrency == Some(0) {
                issues.push(issue("concurrency", "must be at least 1".into()));
            }
            if runnable.timeout.is_zero() {
                issues.push(issue("timeout", ZERO.into()));
            }
        }
        let mut names = BTreeSet::new();
        let mut routes = crate::triggers::http::RouteTable::default();
        for (i, trigger) in self.triggers.iter().enumerate() {
            issues.extend(self.validate_trigger(trigger, &mut routes).into_iter().map(
                |(key, message)| ConfigIssue {
                    section: Section::Trigger(i, trigger.common.name.clone()),
                    key,
                    message,
                },
            ));
            if !names.insert(trigger.common.name.clone()) {
                issues.push(ConfigIssue {
                    section: Section::Trigger(i, trigger.common.name.clone()),
                    key: "name".into(),
                    message: format!("duplicate trigger name `{}`", trigger.common.name),
                });
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    /// Checks one trigger against this config (its runnable must exist). Returns (key, message)
    /// pairs. `routes` collects HTTP routes so that conflicts between triggers are found.
    pub fn validate_trigger(
        &self,
        trigger: &TriggerConfig,
        routes: &mut crate::triggers::http::RouteTable,
    ) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let c = &trigger.common;
        if let Err(m) = check_trigger_name(&c.name) {
            issues.push(("name".into(), m));
        }
        if !self.runnables.contains_key(&c.runnable) {
            let known: Vec<_> = self.runnables.keys().map(String::as_str).collect();
            issues.push((
                "runnable".into(),
                format!(
                    "unknown runnable `{}` (defined: {})",
                    c.runnable,
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if let crate::triggers::TriggerSpec::Poll(p) = &trigger.spec {
            if !self.runnables.contains_key(&p.poll_runnable) {
                issues.push((
                    "poll_runnable".into(),
                    format!("unknown runnable `{}`", p.poll_runnable),
                ));
            }
        }
        if let Some(p) = &c.preprocessor {
            if let Err((key, m)) = Preprocessor::compile(p) {
                issues.push((format!("preprocessor.{key}"), m));
            }
        }
        if let Some(Err(m)) = trigger.order_by_key() {
            issues.push(("order_by".into(), m));
        }
        if let Some(retry) = &c.retry {
            if let Err(m) = validate_retry(retry) {
                issues.push(("retry".into(), m));
            }
        }
        if c.max_in_flight == Some(0) {
            issues.push(("max_in_flight".into(), "must be at least 1".into()));
        }
        if c.max_fan_out == Some(0) {
            issues.push((
                "max_fan_out".into(),
                "must be at least 1 (a preprocessor that wants no job outputs nothing)".into(),
            ));
        }
        let timeout = c.preprocessor.as_ref().and_then(|p| p.timeout);
        if timeout.is_some_and(|t| t.is_zero()) {
            issues.push(("preprocessor.timeout".into(), ZERO.into()));
        }
        issues.extend(trigger.spec.validate(&c.name, routes));
        issues
    }

    pub fn retry_for(&self, trigger: &TriggerConfig) -> RetryPolicy {
        trigger
            .common
            .retry
            .clone()
            .unwrap_or_else(|| self.router.retry.clone())
    }
}

/// What a zero size, count or duration is told: each of these would refuse, drop or time
/// out everything.
const ZERO: &str = "must be above zero";

/// An `[admin] allowed_hosts` entry: a host name, optionally with `:port`.
fn check_allowed_host(host: &str) -> Result<(), String> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => host,
    };
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_[]:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{host}` is not a host name like `admin.example.com` or `admin.example.com:8443` \
             (no scheme, path or wildcard)"
        ))
    }
}

fn validate_retry(r: &RetryPolicy) -> Result<(), String> {
    if r.attempts == 0 {
        return Err("attempts must be at least 1 (1 = no retry)".into());
    }
    if r.max < r.initial {
        return Err("max must not be shorter than initial".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let p = RetryPolicy {
            attempts: 10,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        for _ in 0..50 {
            let d2 = p.delay(2);
            assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(100));
            let d3 = p.delay(3);
            assert!(d3 >= Duration::from_millis(100) && d3 <= Duration::from_millis(200));
            let d9 = p.delay(9);
            assert!(d9 >= Duration::from_millis(200) && d9 <= Duration::from_millis(400));
        }
    }

    #[test]
    fn listener_limits_must_be_above_zero_and_name_their_key() {
        let mut c = Config::default();
        c.server.header_read_timeout = Duration::ZERO;
        c.server.idle_timeout = Duration::ZERO;
        c.server.max_connections = 0;
        c.server.max_buffered_bytes = 0;
        let text: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        for key in [
            "server.header_read_timeout",
            "server.idle_timeout",
            "server.max_connections",
            "server.max_buffered_bytes",
        ] {
            assert!(text.iter().any(|t| t.starts_with(key)), "{key}: {text:?}");
        }
    }

    #[test]
    fn runnable_kind_is_inferred_and_conflicts_are_errors() {
        let mut r = RunnableConfig {
            command: Some(vec!["true".into()]),
            ..Default::default()
        };
        assert_eq!(r.resolved_kind(), Ok(RunnableKind::Command));
        r.url = Some("http://x".into());
        assert!(r.resolved_kind().unwrap_err().contains("not both"));
        r.command = None;
        assert_eq!(r.resolved_kind(), Ok(RunnableKind::Http));
    }
}
