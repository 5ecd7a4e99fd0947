//! The keys of a Kafka trigger and the librdkafka client configuration made from them.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;

use serde::{Deserialize, Serialize};

use crate::preprocess::KeyExpr;

// ---------------------------------------------------------------------------------------------
// Config

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topic names; an entry starting with `^` is a regular expression (librdkafka's syntax)
    /// matched against the cluster's topics, including ones created later.
    pub topics: Vec<String>,
    /// Defaults to `millgate-<trigger>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Where a partition starts when the group has no committed offset for it.
    #[serde(default)]
    pub auto_offset_reset: AutoOffsetReset,
    #[serde(default, skip_serializing_if = "KafkaSecurity::is_plaintext")]
    pub security: KafkaSecurity,
    /// Extra librdkafka properties (`fetch.max.bytes`, `client.id`, ...), passed through.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// How often finished positions are committed (to the broker and to sled).
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most messages taken in one go; they share one flush to disk.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long a rebalance waits for the revoked partitions' jobs before committing what
    /// finished and abandoning the rest.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub rebalance_drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoOffsetReset {
    Earliest,
    #[default]
    Latest,
}

/// `security = { protocol = "SASL_SSL", sasl_mechanism = "SCRAM-SHA-256", username, password,
/// ca_file, cert_file, key_file, key_password }`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSecurity {
    #[serde(default)]
    pub protocol: SecurityProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM file of the CA that signed the brokers' certificates (default: the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM client certificate and key, for brokers that require client authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_password: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SecurityProtocol {
    #[default]
    #[serde(rename = "PLAINTEXT", alias = "plaintext")]
    Plaintext,
    #[serde(rename = "SSL", alias = "ssl")]
    Ssl,
    #[serde(rename = "SASL_PLAINTEXT", alias = "sasl_plaintext")]
    SaslPlaintext,
    #[serde(rename = "SASL_SSL", alias = "sasl_ssl")]
    SaslSsl,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl KafkaSecurity {
    fn is_plaintext(&self) -> bool {
        *self == Self::default()
    }
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_batch() -> usize {
    500
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(5)
}

/// librdkafka properties millgate sets itself; `properties` may not override them.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "brokers"),
    ("group.id", "group_id"),
    (
        "enable.auto.commit",
        "(millgate commits after the jobs' outcomes)",
    ),
    (
        "enable.auto.offset.store",
        "(millgate commits after the jobs' outcomes)",
    ),
    ("auto.offset.reset", "auto_offset_reset"),
    ("session.timeout.ms", "session_timeout"),
    ("security.protocol", "security.protocol"),
    ("sasl.mechanism", "security.sasl_mechanism"),
    ("sasl.mechanisms", "security.sasl_mechanism"),
    ("sasl.username", "security.username"),
    ("sasl.password", "security.password"),
    ("ssl.ca.location", "security.ca_file"),
    ("ssl.certificate.location", "security.cert_file"),
    ("ssl.key.location", "security.key_file"),
    ("ssl.key.password", "security.key_password"),
];

impl KafkaConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: String| issues.push((k.to_string(), m));
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.trim().is_empty()) {
            issue(
                "brokers",
                "needs at least one `host:port`, none empty".into(),
            );
        }
        if self.topics.is_empty() {
            issue("topics", "needs at least one topic (or `^regex`)".into());
        }
        for t in &self.topics {
            if t.is_empty() || (!t.starts_with('^') && !valid_topic(t)) {
                issue(
                    "topics",
                    format!("`{t}` is not a topic name (letters, digits, `.`, `_`, `-`; at most 249) nor a `^regex`"),
                );
            }
        }
        if matches!(&self.group_id, Some(g) if g.trim().is_empty()) {
            issue("group_id", "is empty".into());
        }
        if self.batch == 0 {
            issue("batch", "must be at least 1".into());
        }
        if self.commit_interval < Duration::from_millis(10) {
            issue("commit_interval", "must be at least 10ms".into());
        }
        if self.session_timeout < Duration::from_secs(1) {
            issue("session_timeout", "must be at least 1s".into());
        }
        let s = &self.security;
        if s.protocol.sasl() {
            if s.sasl_mechanism.is_none() {
                issue(
                    "security.sasl_mechanism",
                    format!(
                        "is required with protocol {:?} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                        s.protocol.as_str().to_uppercase()
                    ),
                );
            }
            if s.username.is_none() || s.password.is_none() {
                issue(
                    "security.username",
                    "SASL needs `username` and `password`".into(),
                );
            }
        } else if s.sasl_mechanism.is_some() || s.username.is_some() || s.password.is_some() {
            issue(
                "security.protocol",
                "`sasl_mechanism`, `username` and `password` need protocol SASL_PLAINTEXT or SASL_SSL".into(),
            );
        }
        if !s.protocol.tls()
            && (s.ca_file.is_some() || s.cert_file.is_some() || s.key_file.is_some())
        {
            issue(
                "security.protocol",
                "`ca_file`, `cert_file` and `key_file` need protocol SSL or SASL_SSL".into(),
            );
        }
        if s.cert_file.is_some() != s.key_file.is_some() {
            issue(
                "security.cert_file",
                "`cert_file` and `key_file` go together".into(),
            );
        }
        for key in self.properties.keys() {
            if let Some((_, ours)) = OWNED_PROPERTIES.iter().find(|(k, _)| k == key) {
                issue(
                    "properties",
                    format!("`{key}` is set by millgate; use {ours} instead"),
                );
            }
        }
        // librdkafka knows its property names and value types: ask it, without connecting.
        let mut raw = ClientConfig::new();
        for (k, v) in &self.properties {
            raw.set(k, v);
        }
        if let Err(e) = raw.create_native_config() {
            issue("properties", describe_config_error(&e));
        }
        issues
    }

    /// The `properties` that would make librdkafka load or run code.
    pub fn program_properties(&self) -> Vec<&str> {
        self.properties
            .keys()
            .map(String::as_str)
            .filter(|k| {
                PROGRAM_PROPERTIES
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(k.trim()))
            })
            .collect()
    }

    pub fn group_id(&self, trigger: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("millgate-{trigger}"))
    }

    /// One line for listings.
    pub fn endpoint(&self) -> String {
        format!(
            "kafka {} [{}]{}",
            self.brokers.join(","),
            self.topics.join(","),
            match self.security.protocol {
                SecurityProtocol::Plaintext => String::new(),
                p => format!(" {}", p.as_str().to_uppercase()),
            }
        )
    }

    /// The consumer's librdkafka configuration.
    pub fn client_config(&self, trigger: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        let s = &self.security;
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("group.id", self.group_id(trigger))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set(
                "auto.offset.reset",
                match self.auto_offset_reset {
                    AutoOffsetReset::Earliest => "earliest",
                    AutoOffsetReset::Latest => "latest",
                },
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set("security.protocol", s.protocol.as_str());
        if !self.properties.contains_key("client.id") {
            c.set("client.id", format!("millgate-{trigger}"));
        }
        if let Some(m) = s.sasl_mechanism {
            c.set("sasl.mechanism", m.as_str());
        }
        let pairs = [
            ("sasl.username", &s.username),
            ("sasl.password", &s.password),
            ("ssl.ca.location", &s.ca_file),
            ("ssl.certificate.location", &s.cert_file),
            ("ssl.key.location", &s.key_file),
            ("ssl.key.password", &s.key_password),
        ];
        for (k, v) in pairs {
            if let Some(v) = v {
                c.set(k, v);
            }
        }
        // OpenSSL is compiled in (actors/Cargo.toml) with its own default CA directory, which no
        // distribution fills: librdkafka's probe finds the system's CA bundle instead. Kept
        // out of the way when OpenSSL's own variables name one.
        let ca_from_env = ["SSL_CERT_FILE", "SSL_CERT_DIR"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if s.protocol.tls() && s.ca_file.is_none() && !ca_from_env {
            c.set("ssl.ca.location", "probe");
        }
        // librdkafka's `debug` contexts (`properties = { debug = "cgrp,fetch" }`) log at debug.
        c.set_log_level(if self.properties.contains_key("debug") {
            RDKafkaLogLevel::Debug
        } else {
            RDKafkaLogLevel::Warning
        });
        c
    }
}

/// librdkafka's message for a refused property, naming the key but never its value: the value
/// may be a secret (`sasl.oauthbearer.client.secret`), and librdkafka quotes it.
pub(super) fn describe_config_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            format!("`{key}`: {}", without_value(desc, value))
        }
        other => other.to_string(),
    }
}

pub(super) fn without_value(text: &str, value: &str) -> String {
    if value.is_empty() {
        return text.to_string();
    }
    let text = text.replace(&format!("\"{value}\""), "(value not shown)");
    // Unquoted echoes too, unless the value is so short that it would mangle the words.
    if value.len() >= 4 {
        text.replace(value, "***")
    } else {
        text
    }
}

/// librdkafka properties that load or run code (shared libraries, OpenSSL engines and
/// providers, a shell command); compared without case.
pub const PROGRAM_PROPERTIES: &[&str] = &[
    "plugin.library.paths",
    "sasl.kerberos.kinit.cmd",
    "ssl.engine.location",
    "ssl.engine.id",
    "ssl.providers",
];

fn valid_topic(t: &str) -> bool {
    t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The jq expression for `order_by`: per partition unless told `"key"` or `"none"`.
pub fn order_by_expr(configured: Option<&str>) -> Option<String> {
    match configured {
        None | Some("partition") => Some(r#""\(.topic)/\(.partition)""#.into()),
        Some("key") => Some(
            r#"if .key == null then "\(.topic)/\(.partition)" else "\(.topic)/key/\(.key)" end"#
                .into(),
        ),
        Some("none") => None,
        Some(other) => Some(other.into()),
    }
}

/// `order_by` as a key computed natively for the shorthands (per partition, per key).
pub fn order_by_key(configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
    let by_partition = || KeyExpr::compile(r#""\(.topic)/\(.partition)""#);
    match configured {
        None | Some("partition") => Some(by_partition()),
        Some("key") => Some((|| {
            let by_key = KeyExpr::compile(r#""\(.topic)/key/\(.key)""#)?;
            Ok(KeyExpr::FirstOf(vec![by_key, by_partition()?]))
        })()),
        Some("none") => None,
        Some(other) => Some(KeyExpr::compile(other)),
    }
}
