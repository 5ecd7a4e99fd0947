//! The configuration's sections as plain data: `[server]`, `[store]`, `[router]`,
//! `[supervisor]`, `[preprocess]`, `[admin]`, `[telemetry]`, `[runnables.*]`, and the problems
//! validation finds. The whole file (with its triggers) is `crate::config::Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
            max_json_depth: crate::model::json::DEFAULT_MAX_DEPTH,
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
    /// Bytes of sled's page cache (records read or written recently); the store's share of the
    /// process's memory under load.
    pub cache_capacity: u64,
    /// What "durable" means before an answer: `fsync` (fdatasync of the job log: survives power
    /// loss) or `os` (written to the OS, fsync every 100 ms: survives kill -9, not power loss).
    pub durability: Durability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    Os,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("./data"),
            job_retention: Duration::from_secs(7 * 24 * 3600),
            max_jobs: 100_000,
            dedup_ttl: Duration::from_secs(24 * 3600),
            cache_capacity: 64 * 1024 * 1024,
            durability: Durability::Fsync,
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

/// A name as messages show it: an overlong one is cut, so that it cannot flood them.
pub fn shortened(name: &str) -> String {
    if name.chars().count() <= 64 {
        return name.to_string();
    }
    let head: String = name.chars().take(40).collect();
    format!("{head}…")
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
