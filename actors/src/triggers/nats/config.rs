//! The keys of a NATS trigger and the async-nats connect options made from them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Config

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `host:port` or `nats://host:port` (`tls://` for TLS); several for a cluster.
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "NatsAuth::is_none")]
    pub auth: NatsAuth,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<NatsTls>,
    /// Subjects (wildcards allowed). Core: one subscription each. JetStream: the consumer's
    /// filter subjects (empty = the whole stream) and, with `create_stream`, the stream's.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Core only: instances in the same queue group share the subjects' messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<JetStreamConfig>,
}

/// `auth = { type = "token" | "user_password" | "nkey" | "credentials", ... }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NatsAuth {
    #[default]
    None,
    Token {
        token: String,
    },
    UserPassword {
        user: String,
        password: String,
    },
    /// An nkey seed (`SU...`).
    Nkey {
        seed: String,
    },
    /// A `.creds` file (user JWT + nkey seed).
    Credentials {
        file: PathBuf,
    },
}

impl NatsAuth {
    fn is_none(&self) -> bool {
        matches!(self, NatsAuth::None)
    }

    pub fn label(&self) -> &'static str {
        match self {
            NatsAuth::None => "none",
            NatsAuth::Token { .. } => "token",
            NatsAuth::UserPassword { .. } => "user_password",
            NatsAuth::Nkey { .. } => "nkey",
            NatsAuth::Credentials { .. } => "credentials",
        }
    }
}

/// `tls = { require, ca_file, cert_file, key_file }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTls {
    #[serde(default)]
    pub require: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    pub stream: String,
    /// The durable consumer's name; defaults to `millgate_<trigger>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Create the stream (on `subjects`) when it does not exist; an existing stream is used
    /// as it is.
    #[serde(default)]
    pub create_stream: bool,
    #[serde(default)]
    pub deliver_policy: DeliverPolicy,
    /// Time the server waits for an ack before redelivering; `in_progress` is sent every
    /// half of it while the job runs.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged messages the server lets this consumer hold.
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: usize,
    /// Messages per fetch (capped by free `max_in_flight` slots and `max_ack_pending`).
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ack_pending() -> usize {
    1000
}
fn default_batch() -> usize {
    64
}

/// Where a new durable consumer starts (an existing one keeps its position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    #[default]
    All,
    New,
    Last,
    LastPerSubject,
}

impl NatsConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if self.servers.is_empty() {
            issue("servers", "needs at least one server (host:port)");
        }
        if self.servers.iter().any(|s| s.trim().is_empty()) {
            issue("servers", "contains an empty server");
        }
        for s in &self.subjects {
            if !valid_subject(s) {
                issue("subjects", &format!("`{s}` is not a valid NATS subject"));
            }
        }
        match &self.jetstream {
            None => {
                if self.subjects.is_empty() {
                    issue("subjects", "needs at least one subject");
                }
            }
            Some(js) => {
                if self.queue_group.is_some() {
                    issue(
                        "queue_group",
                        "is for core NATS; JetStream instances share a durable consumer instead",
                    );
                }
                if !valid_name(&js.stream) {
                    issue(
                        "jetstream.stream",
                        "must be a non-empty name without spaces, `.`, `*` or `>`",
                    );
                }
                if js.consumer.as_deref().is_some_and(|c| !valid_name(c)) {
                    issue(
                        "jetstream.consumer",
                        "must be a non-empty name without spaces, `.`, `*` or `>`",
                    );
                }
                if js.create_stream && self.subjects.is_empty() {
                    issue(
                        "subjects",
                        "needs at least one subject to create the stream on",
                    );
                }
                if js.ack_wait < Duration::from_secs(1) {
                    issue("jetstream.ack_wait", "must be at least 1s");
                }
                if js.max_ack_pending == 0 {
                    issue("jetstream.max_ack_pending", "must be at least 1");
                }
                if js.batch == 0 {
                    issue("jetstream.batch", "must be at least 1");
                }
            }
        }
        match &self.auth {
            NatsAuth::Token { token } if token.is_empty() => issue("auth.token", "is empty"),
            NatsAuth::UserPassword { user, .. } if user.is_empty() => {
                issue("auth.user", "is empty")
            }
            NatsAuth::Nkey { seed } if !seed.starts_with('S') => {
                issue("auth.seed", "must be an nkey seed (starts with `S`)")
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                issue(
                    "tls",
                    "a client certificate needs both `cert_file` and `key_file`",
                );
            }
        }
        issues
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self, trigger: &str) -> Option<String> {
        let js = self.jetstream.as_ref()?;
        Some(js.consumer.clone().unwrap_or_else(|| {
            format!(
                "millgate_{}",
                trigger.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
            )
        }))
    }

    /// One line for listings: servers and subjects (and stream/consumer).
    pub fn endpoint(&self, trigger: &str) -> String {
        let servers = self.servers.join(",");
        let subjects = self.subjects.join(",");
        match (&self.jetstream, self.consumer_name(trigger)) {
            (Some(js), Some(c)) => {
                format!("nats {servers} jetstream {}/{c} [{subjects}]", js.stream)
            }
            _ => match &self.queue_group {
                Some(q) => format!("nats {servers} [{subjects}] queue {q}"),
                None => format!("nats {servers} [{subjects}]"),
            },
        }
    }

    /// Connection options from the config: auth, TLS, and what the actor needs to notice a
    /// lost connection. Reading a credentials file is the only I/O.
    pub async fn connect_options(&self) -> Result<async_nats::ConnectOptions, String> {
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("millgate");
        opts = match &self.auth {
            NatsAuth::None => opts,
            NatsAuth::Token { token } => opts.token(token.clone()),
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Nkey { seed } => opts.nkey(seed.clone()),
            NatsAuth::Credentials { file } => opts.credentials_file(file).await.map_err(|e| {
                format!(
                    "auth.file: cannot read credentials `{}`: {e}",
                    file.display()
                )
            })?,
        };
        if let Some(tls) = &self.tls {
            opts = opts.require_tls(tls.require);
            if let Some(ca) = &tls.ca_file {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        Ok(opts)
    }
}

fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(char::is_whitespace)
        && s.split('.').enumerate().all(|(i, tok)| {
            let last = i == s.split('.').count() - 1;
            !tok.is_empty() && (!tok.contains('>') || (tok == ">" && last))
        })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || matches!(c, '.' | '*' | '>'))
}
