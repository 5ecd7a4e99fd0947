//! Kafka trigger (rdkafka over librdkafka): one actor per trigger; the actor owns a consumer
//! thread that owns the group membership. When every broker is unreachable, a subscribed topic
//! does not exist or the client hits a fatal error, the actor fails and the trigger supervisor
//! restarts it with backoff (`backing_off`, never disabled).
//!
//! Delivery (DESIGN.md, "Delivery guarantee"):
//! - Auto-commit is off. Each taken offset stays pending until every job of its message has a
//!   durable outcome (success or dead letter); the committed position of a partition is the
//!   first pending offset, so a slow message never lets a later offset be committed past it.
//!   Commits go to the broker every `commit_interval` and, with the same positions, to sled.
//! - On assignment the start position of a partition is the later of the broker's committed
//!   offset and the position saved in sled (a commit the broker lost, say in a crash between
//!   the two, is not replayed from the broker's older offset).
//! - On revocation the trigger waits up to `rebalance_drain_timeout` for the revoked partitions'
//!   jobs, commits what finished and abandons the rest uncommitted (the jobs still run here;
//!   the new owner gets those messages again).
//! - At `max_in_flight` the assigned partitions are paused (polling goes on, for the group's
//!   heartbeats and rebalances) and resumed once jobs finish; nothing is buffered.
//! - Event ids are deterministic: trigger + reset epoch + topic + partition + offset + message
//!   timestamp. A message read again after a crash is deduplicated; a reset (`POST
//!   /api/triggers/{name}/reset`) starts a new epoch so the replayed messages run again; the
//!   timestamp keeps a re-created topic's offsets from colliding with the old ones.
//!
//! Event (`kind = "kafka"`): `payload` (base64), `data` (parsed, when the payload is UTF-8
//! JSON), `key` (UTF-8 text, or base64 with `key_encoding = "base64"`; null without a key),
//! `topic`, `partition`, `offset`, `timestamp` (ms since the epoch, or null),
//! `timestamp_type` (`create_time`/`log_append_time`), `headers` (`{name: [values]}`, values as
//! text, or base64 when not UTF-8), `group_id`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The client this trigger speaks, for tests and tools that produce to it.
pub use rdkafka;

use base64::Engine;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message, Timestamp};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http::RouteTable;
use super::kind::{Reset, ResetOutcome, SavedState, SpawnFuture, TriggerKind};
use super::{Accepted, SourceArgs, TriggerRuntime};
use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::preprocess::DefaultArgs;
use crate::preprocess::KeyExpr;
use crate::store::Store;

// ---------------------------------------------------------------------------------------------
// Messages

pub enum KafkaMsg {
    /// The consumer thread ended with an error: fail so the supervisor backs off.
    Lost(String),
}

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
fn describe_config_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, desc, key, value) => {
            format!("`{key}`: {}", without_value(desc, value))
        }
        other => other.to_string(),
    }
}

fn without_value(text: &str, value: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Saved state (sled `source_state`) and resets

/// What a Kafka trigger keeps in sled: the group's positions (next offset to read, per topic
/// and partition), the reset epoch, and a reset waiting to be applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KafkaState {
    #[serde(default)]
    pub group_id: String,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub positions: BTreeMap<String, BTreeMap<i32, i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<Value>,
}

impl KafkaState {
    pub fn load(store: &Store, trigger: &str) -> Result<Self, String> {
        match store.source_state(trigger) {
            Ok(Some(v)) => serde_json::from_value(v)
                .map_err(|e| format!("saved state of `{trigger}` is not a Kafka trigger's: {e}")),
            Ok(None) => Ok(Self::default()),
            Err(e) => Err(format!("cannot read the saved state: {e}")),
        }
    }

    /// The saved position of a partition, when it belongs to this group.
    fn position(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        if self.group_id != group {
            return None;
        }
        self.positions.get(topic)?.get(&partition).copied()
    }
}

/// `POST /api/triggers/{name}/reset` body: `{"to": "earliest" | "latest" | {"offset": N,
/// "topic"?: t, "partition"?: p} | {"timestamp": ms}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub to: ResetTo,
    /// Set by millgate to tell this request's outcome from an earlier one's.
    #[serde(default)]
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResetTo {
    Named(ResetPoint),
    Offset {
        offset: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition: Option<i32>,
    },
    Timestamp {
        timestamp: i64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetPoint {
    Earliest,
    Latest,
}

/// Records a reset for the trigger to apply to the partitions it is assigned (at once when it
/// runs, else when it next gets them). Returns the request id to wait for.
pub async fn request_reset(store: &Store, trigger: &str, to: ResetTo) -> Result<String, String> {
    if let ResetTo::Offset { offset, .. } = &to {
        if *offset < 0 {
            return Err("`offset` must not be negative".into());
        }
    }
    let mut state = KafkaState::load(store, trigger)?;
    let id = uuid::Uuid::now_v7().to_string();
    state.reset = Some(ResetRequest { to, id: id.clone() });
    let v = serde_json::to_value(&state).map_err(|e| e.to_string())?;
    store
        .put_source_state(trigger, &v)
        .await
        .map_err(|e| format!("cannot save the reset: {e}"))?;
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// Events

fn text_or_base64(bytes: &[u8]) -> (Value, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (json!(s), false),
        Err(_) => (
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
            true,
        ),
    }
}

fn kafka_event(trigger: &str, group: &str, epoch: u64, m: &BorrowedMessage<'_>) -> Event {
    let mut event = Map::new();
    event.insert("kind".into(), json!("kafka"));
    event.insert("trigger".into(), json!(trigger));
    let payload = m.payload().unwrap_or_default();
    event.insert(
        "payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(payload)),
    );
    let (data, defect) = crate::model::json::message_data(payload);
    if let Some(data) = data {
        event.insert("data".into(), data);
    }
    match m.key() {
        Some(k) => {
            let (key, b64) = text_or_base64(k);
            event.insert("key".into(), key);
            event.insert(
                "key_encoding".into(),
                json!(if b64 { "base64" } else { "utf8" }),
            );
        }
        None => {
            event.insert("key".into(), Value::Null);
        }
    }
    event.insert("topic".into(), json!(m.topic()));
    event.insert("partition".into(), json!(m.partition()));
    event.insert("offset".into(), json!(m.offset()));
    let (ts, ts_type) = match m.timestamp() {
        Timestamp::CreateTime(t) => (json!(t), json!("create_time")),
        Timestamp::LogAppendTime(t) => (json!(t), json!("log_append_time")),
        Timestamp::NotAvailable => (Value::Null, Value::Null),
    };
    event.insert("timestamp".into(), ts.clone());
    event.insert("timestamp_type".into(), ts_type);
    let mut headers = Map::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let v = h.value.map(|v| text_or_base64(v).0).unwrap_or(Value::Null);
            if let Value::Array(values) = headers
                .entry(h.key.to_string())
                .or_insert_with(|| json!([]))
            {
                values.push(v);
            }
        }
    }
    event.insert("headers".into(), Value::Object(headers));
    event.insert("group_id".into(), json!(group));
    let id = format!(
        "kafka:{trigger}:{epoch}:{}:{}:{}:{}",
        m.topic(),
        m.partition(),
        m.offset(),
        m.timestamp().to_millis().unwrap_or(-1)
    );
    Event::deterministic(id, Value::Object(event)).with_defect(defect)
}

// ---------------------------------------------------------------------------------------------
// Offset tracking

/// One job of a message reached its outcome (sent by the job's ack handle).
struct Settled {
    generation: u64,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

/// What this consumer knows of one assigned partition.
#[derive(Debug)]
struct PartitionTrack {
    /// Changes when the partition is (re)assigned or reset: settlements of an older
    /// generation no longer move this one's position.
    generation: u64,
    /// Offsets taken whose jobs have not all settled, with how many jobs are left.
    pending: BTreeMap<i64, usize>,
    /// One past the highest offset taken (None until the first message).
    next: Option<i64>,
    /// The position last committed (or found committed) for this partition.
    committed: Option<i64>,
}

impl PartitionTrack {
    fn new(generation: u64, committed: Option<i64>) -> Self {
        Self {
            generation,
            pending: BTreeMap::new(),
            next: None,
            committed,
        }
    }

    /// The position that may be committed: the first unsettled offset, else one past the
    /// last taken.
    fn committable(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next)
    }

    fn take(&mut self, offset: i64) {
        self.next = Some(self.next.map_or(offset + 1, |n| n.max(offset + 1)));
    }

    fn settle_one(&mut self, offset: i64) {
        if let Some(left) = self.pending.get_mut(&offset) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.pending.remove(&offset);
            }
        }
    }
}

type PartitionKey = (Arc<str>, i32);

/// The consumer thread's bookkeeping, shared with the rebalance callback (which runs on the
/// same thread, inside `poll`).
struct Tracking {
    partitions: HashMap<PartitionKey, PartitionTrack>,
    generation: u64,
    /// Partitions assigned since the loop last looked (a pending reset applies to them).
    newly_assigned: bool,
}

impl Tracking {
    fn drain(&mut self, settled: &mpsc::Receiver<Settled>) {
        while let Ok(s) = settled.try_recv() {
            self.apply(s);
        }
    }

    fn apply(&mut self, s: Settled) {
        if let Some(t) = self.partitions.get_mut(&(s.topic, s.partition)) {
            if t.generation == s.generation {
                t.settle_one(s.offset);
            }
        }
    }

    /// Partitions whose committable position moved past the committed one.
    fn to_commit(&self, only: Option<&[PartitionKey]>) -> Vec<(PartitionKey, i64)> {
        self.partitions
            .iter()
            .filter(|(k, _)| only.is_none_or(|o| o.contains(k)))
            .filter_map(|(k, t)| {
                let c = t.committable()?;
                (t.committed.is_none_or(|old| c > old)).then(|| (k.clone(), c))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// librdkafka context: logs, errors, rebalances

struct KafkaContext {
    trigger: String,
    group: String,
    store: Store,
    handle: tokio::runtime::Handle,
    tracking: Mutex<Tracking>,
    settled: Mutex<mpsc::Receiver<Settled>>,
    /// Set by the error callback when the consumer cannot go on.
    lost: Mutex<Option<String>>,
    drain_timeout: Duration,
}

impl KafkaContext {
    fn tracking(&self) -> std::sync::MutexGuard<'_, Tracking> {
        self.tracking.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn drain_settled(&self) {
        let rx = self.settled.lock().unwrap_or_else(|p| p.into_inner());
        self.tracking().drain(&rx);
    }

    fn set_lost(&self, why: String) {
        let mut l = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        l.get_or_insert(why);
    }

    fn take_lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Commits the finished positions (of `only`, or all) to the broker and to sled.
    fn commit(
        &self,
        consumer: &BaseConsumer<KafkaContext>,
        only: Option<&[PartitionKey]>,
        mode: CommitMode,
    ) {
        let due = self.tracking().to_commit(only);
        if due.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &due {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(trigger = %self.trigger, error = %e, "cannot build a commit");
            }
        }
        // sled first: if the broker's commit is lost, the next assignment still starts here.
        let saved = self.handle.block_on(self.save_positions(&due));
        if let Err(e) = saved {
            tracing::warn!(trigger = %self.trigger, error = %e, "cannot save Kafka positions");
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                let mut t = self.tracking();
                for ((topic, partition), offset) in due {
                    if let Some(p) = t.partitions.get_mut(&(topic, partition)) {
                        p.committed = Some(offset);
                    }
                }
            }
            // The next commit carries the same or later positions.
            Err(e) => tracing::warn!(trigger = %self.trigger, error = %e, "Kafka commit failed"),
        }
    }

    async fn save_positions(&self, due: &[(PartitionKey, i64)]) -> Result<(), String> {
        let mut state = KafkaState::load(&self.store, &self.trigger)?;
        if state.group_id != self.group {
            state.group_id = self.group.clone();
            state.positions.clear();
        }
        for ((topic, partition), offset) in due {
            state
                .positions
                .entry(topic.to_string())
                .or_default()
                .insert(*partition, *offset);
        }
        let v = serde_json::to_value(&state).map_err(|e| e.to_string())?;
        self.store
            .put_source_state(&self.trigger, &v)
            .await
            .map_err(|e| e.to_string())
    }

    fn on_assign(&self, consumer: &BaseConsumer<KafkaContext>, tpl: &mut TopicPartitionList) {
        let saved = KafkaState::load(&self.store, &self.trigger).unwrap_or_else(|e| {
            tracing::warn!(trigger = %self.trigger, error = %e, "ignoring saved Kafka positions");
            KafkaState::default()
        });
        let committed = match consumer.committed_offsets(tpl.clone(), Duration::from_secs(10)) {
            Ok(c) => c.to_topic_map(),
            Err(e) => {
                tracing::warn!(trigger = %self.trigger, error = %e, "cannot read committed offsets; using the saved positions");
                HashMap::new()
            }
        };
        let mut tracking = self.tracking();
        tracking.generation += 1;
        let generation = tracking.generation;
        let partitions: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        for (topic, partition) in partitions {
            let broker = committed
                .get(&(topic.clone(), partition))
                .and_then(|o| o.to_raw())
                .filter(|o| *o >= 0);
            let ours = saved.position(&self.group, &topic, partition);
            let start = match (broker, ours) {
                (Some(b), Some(o)) if o > b => {
                    tracing::info!(trigger = %self.trigger, topic = %topic, partition, broker = b, saved = o, "resuming from the saved position (the broker's commit is behind)");
                    Some(o)
                }
                (None, Some(o)) => Some(o),
                (b, _) => b,
            };
            let key: PartitionKey = (Arc::from(topic.as_str()), partition);
            tracking
                .partitions
                .insert(key, PartitionTrack::new(generation, broker));
            if let Some(start) = start {
                if broker != Some(start) {
                    let _ = tpl.set_partition_offset(&topic, partition, Offset::Offset(start));
                }
            }
        }
        tracking.newly_assigned = true;
        let assigned: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        tracing::info!(trigger = %self.trigger, partitions = ?assigned, "kafka partitions assigned");
    }

    fn on_revoke(&self, consumer: &BaseConsumer<KafkaContext>, tpl: &TopicPartitionList) {
        let revoked: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        // Also on a graceful stop (the router still runs then): fewer messages read twice.
        let deadline = Instant::now() + self.drain_timeout;
        // Wait for the revoked partitions' jobs, within the drain timeout.
        loop {
            self.drain_settled();
            let pending: usize = {
                let t = self.tracking();
                revoked
                    .iter()
                    .filter_map(|k| t.partitions.get(k))
                    .map(|p| p.pending.len())
                    .sum()
            };
            if pending == 0 || Instant::now() >= deadline {
                if pending > 0 {
                    tracing::warn!(trigger = %self.trigger, messages = pending, "partitions revoked with jobs still running; their offsets stay uncommitted (the new owner reads them again)");
                }
                break;
            }
            let rx = self.settled.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(s) = rx.recv_timeout(Duration::from_millis(20)) {
                self.tracking().apply(s);
            }
        }
        if !consumer.assignment_lost() {
            self.commit(consumer, Some(&revoked), CommitMode::Sync);
        }
        let mut t = self.tracking();
        for k in &revoked {
            t.partitions.remove(k);
        }
        tracing::info!(trigger = %self.trigger, partitions = revoked.len(), "kafka partitions revoked");
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(trigger = %self.trigger, facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(trigger = %self.trigger, facility = fac, "librdkafka: {message}")
            }
            _ => tracing::debug!(trigger = %self.trigger, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let fatal = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) || matches!(error, KafkaError::MessageConsumptionFatal(_));
        if fatal {
            self.set_lost(format!("Kafka: {reason}"));
        } else {
            tracing::warn!(trigger = %self.trigger, error = %error, "librdkafka: {reason}");
        }
    }
}

impl ConsumerContext for KafkaContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.on_assign(consumer, tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    self.set_lost(format!("cannot take the assigned partitions: {e}"));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.on_revoke(consumer, tpl);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::warn!(trigger = %self.trigger, error = %e, "unassign failed");
                }
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::warn!(trigger = %self.trigger, error = %code, "rebalance error");
                let _ = consumer.unassign();
                self.tracking().partitions.clear();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

impl TriggerKind for KafkaConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        KafkaConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        KafkaConfig::endpoint(self)
    }

    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        order_by_expr(configured)
    }

    fn order_by(&self, configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
        order_by_key(configured)
    }

    /// Windmill hands a broker message to the script as its base64 `payload`.
    fn default_args(&self) -> DefaultArgs {
        |event| json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(Box::pin(async move {
            Actor::spawn_linked(None, KafkaTrigger, args, supervisor)
                .await
                .map(|(actor, _)| actor.get_cell())
        }))
    }

    fn program_keys(&self) -> Vec<String> {
        self.program_properties()
            .into_iter()
            .map(|p| format!("properties.{p}"))
            .collect()
    }

    /// The group's saved positions; moved by resets.
    fn saved_state(&self) -> SavedState {
        SavedState::ReadOnly
    }

    fn reset(&self) -> Option<&dyn Reset> {
        Some(&GroupReset)
    }
}

/// Resets of a Kafka trigger's consumer group (`POST /api/triggers/{name}/reset`).
struct GroupReset;

impl Reset for GroupReset {
    fn reset<'a>(
        &'a self,
        store: &'a Store,
        trigger: &'a str,
        request: Value,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<ResetOutcome, String>> + Send + 'a>,
    > {
        Box::pin(async move {
            let request: ResetRequest = serde_json::from_value(request).map_err(|err| {
                format!("body must be {{\"to\": \"earliest\" | \"latest\" | {{\"offset\": n}} | {{\"timestamp\": ms}}}}: {err}")
            })?;
            let id = request_reset(store, trigger, request.to).await?;
            // The trigger's consumer thread applies it at its next poll: wait for its record.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                let saved = KafkaState::load(store, trigger)?;
                if let Some(last) = saved.last_reset.filter(|l| l["id"] == json!(id)) {
                    return Ok(ResetOutcome::Applied(last));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(ResetOutcome::Pending(json!({
                "id": id,
                "status": "pending",
                "message": "the trigger has no assigned partitions yet; the reset applies when it gets them",
            })))
        })
    }
}

pub struct KafkaTrigger;

pub struct KafkaActorState {
    stop: Arc<AtomicBool>,
    /// Ends when the consumer thread has committed, left the group and let go of the client.
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Actor for KafkaTrigger {
    type Msg = KafkaMsg;
    type State = KafkaActorState;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<KafkaMsg>,
        args: SourceArgs,
    ) -> Result<KafkaActorState, ActorProcessingErr> {
        // librdkafka's calls block (rebalance callbacks, commits, polls): the consumer lives
        // on its own thread, and hands events to the async intake through the runtime handle.
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let handle = tokio::runtime::Handle::current();
        let thread_stop = stop.clone();
        let name = format!("kafka-{}", args.runtime.name());
        std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                let result = consume(&args, &thread_stop, handle);
                if let Err(e) = result {
                    set_status_field(&args.runtime, "connected", json!(false));
                    set_status_field(&args.runtime, "error", json!(e));
                    let _ = myself.cast(KafkaMsg::Lost(e));
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the consumer thread: {e}"))?;
        Ok(KafkaActorState {
            stop,
            done: Some(done),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<KafkaMsg>,
        msg: KafkaMsg,
        _state: &mut KafkaActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            KafkaMsg::Lost(e) => Err(e.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<KafkaMsg>,
        state: &mut KafkaActorState,
    ) -> Result<(), ActorProcessingErr> {
        // Wait for the thread to commit and leave the group, so a restarted trigger never
        // races the old consumer's last commit.
        state.stop.store(true, Ordering::Release);
        if let Some(done) = state.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), done).await;
        }
        Ok(())
    }
}

fn set_status_field(rt: &TriggerRuntime, key: &str, v: Value) {
    if let Ok(mut s) = rt.source_status.lock() {
        if !s.is_object() {
            *s = json!({});
        }
        if let Value::Object(m) = &mut *s {
            m.insert(key.into(), v);
        }
    }
}

/// The consumer thread: subscribe, take messages in batches, commit finished positions,
/// apply resets, until stopped (Ok) or the consumer cannot go on (Err).
fn consume(
    args: &SourceArgs,
    stop: &AtomicBool,
    handle: tokio::runtime::Handle,
) -> Result<(), String> {
    let rt = &args.runtime;
    let super::TriggerSpec::Kafka(cfg) = &args.trigger.spec else {
        return Err("not a kafka trigger".into());
    };
    let group = cfg.group_id(rt.name());
    let (settle_tx, settle_rx) = mpsc::channel::<Settled>();
    let context = KafkaContext {
        trigger: rt.name().to_string(),
        group: group.clone(),
        store: args.intake.store.clone(),
        handle: handle.clone(),
        tracking: Mutex::new(Tracking {
            partitions: HashMap::new(),
            generation: 0,
            newly_assigned: false,
        }),
        settled: Mutex::new(settle_rx),
        lost: Mutex::new(None),
        drain_timeout: cfg.rebalance_drain_timeout,
    };
    for (key, file) in [
        ("security.ca_file", &cfg.security.ca_file),
        ("security.cert_file", &cfg.security.cert_file),
        ("security.key_file", &cfg.security.key_file),
    ] {
        if let Some(f) = file {
            std::fs::metadata(f).map_err(|e| format!("{key}: cannot read `{f}`: {e}"))?;
        }
    }
    let consumer: BaseConsumer<KafkaContext> = cfg
        .client_config(rt.name())
        .create_with_context(context)
        .map_err(|e| {
            format!(
                "cannot create the Kafka consumer: {}",
                describe_config_error(&e)
            )
        })?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| format!("cannot subscribe to {}: {e}", cfg.topics.join(",")))?;
    set_status_field(rt, "group_id", json!(group));
    set_status_field(rt, "connected", json!(false));
    tracing::info!(trigger = rt.name(), group = %group, topics = ?cfg.topics, "kafka consumer subscribed");

    let mut run = ConsumerLoop {
        args,
        cfg,
        group,
        consumer: &consumer,
        settle_tx,
        handle,
        paused: false,
        last_commit: Instant::now(),
        last_reset_check: Instant::now() - Duration::from_secs(1),
        suspect: None,
    };
    let result = run.run(stop);
    // Leave cleanly: commit what finished, then leave the group at once (rather than letting
    // the next member wait for the session timeout).
    let ctx = consumer.context().clone();
    ctx.drain_settled();
    if !consumer.assignment_lost() {
        ctx.commit(&consumer, None, CommitMode::Sync);
    }
    consumer.unsubscribe();
    set_status_field(rt, "assigned", json!([]));
    result
}

struct ConsumerLoop<'a> {
    args: &'a SourceArgs,
    cfg: &'a KafkaConfig,
    group: String,
    consumer: &'a BaseConsumer<KafkaContext>,
    settle_tx: mpsc::Sender<Settled>,
    handle: tokio::runtime::Handle,
    paused: bool,
    last_commit: Instant,
    last_reset_check: Instant,
    /// Since when connection errors were seen without a successful broker round trip.
    suspect: Option<Instant>,
}

impl ConsumerLoop<'_> {
    fn ctx(&self) -> &KafkaContext {
        self.consumer.context()
    }

    fn run(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let rt = &self.args.runtime;
        let mut epoch = KafkaState::load(&self.args.intake.store, rt.name())?.epoch;
        while !stop.load(Ordering::Acquire) {
            if let Some(e) = self.ctx().take_lost() {
                return Err(e);
            }
            self.ctx().drain_settled();
            self.check_brokers()?;
            if self.last_commit.elapsed() >= self.cfg.commit_interval {
                self.ctx().commit(self.consumer, None, CommitMode::Async);
                self.last_commit = Instant::now();
                self.publish_status();
            }
            self.flow_control();
            let mut batch = Vec::new();
            let limit = self.cfg.batch.min(self.free_slots().max(1));
            let mut wait = Duration::from_millis(100);
            while batch.len() < limit {
                match self.consumer.poll(wait) {
                    None => break,
                    Some(Ok(m)) => batch.push(m),
                    Some(Err(e)) => self.consumer_error(e)?,
                }
                wait = Duration::ZERO;
            }
            if self.reset_due() {
                // Messages polled before the reset's seek belong to the old positions.
                if let Some(new_epoch) = self.apply_reset()? {
                    epoch = new_epoch;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                self.take(batch, epoch)?;
            }
        }
        Ok(())
    }

    /// After connection errors, asks the cluster for metadata: when that fails too, the
    /// brokers are gone and the trigger fails (to back off and reconnect from scratch).
    fn check_brokers(&mut self) -> Result<(), String> {
        let Some(since) = self.suspect else {
            return Ok(());
        };
        if since.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        match self.consumer.fetch_metadata(None, Duration::from_secs(3)) {
            Ok(_) => {
                self.suspect = None;
                Ok(())
            }
            Err(e) => Err(format!(
                "Kafka brokers {} unreachable: {e}",
                self.cfg.brokers.join(",")
            )),
        }
    }

    fn free_slots(&self) -> usize {
        let rt = &self.args.runtime;
        rt.max_in_flight
            .saturating_sub(rt.in_flight.load(Ordering::Acquire))
    }

    /// Pauses the assignment at `max_in_flight`, resumes it when slots free up.
    fn flow_control(&mut self) {
        let full = self.free_slots() == 0;
        if full == self.paused && !full {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        if full {
            // Re-paused every round: partitions assigned meanwhile start unpaused.
            if let Err(e) = self.consumer.pause(&assignment) {
                tracing::warn!(trigger = self.args.runtime.name(), error = %e, "cannot pause partitions");
            }
            if !self.paused {
                tracing::debug!(
                    trigger = self.args.runtime.name(),
                    "max_in_flight reached; partitions paused"
                );
                self.paused = true;
                set_status_field(&self.args.runtime, "paused", json!(true));
            }
        } else {
            if let Err(e) = self.consumer.resume(&assignment) {
                tracing::warn!(trigger = self.args.runtime.name(), error = %e, "cannot resume partitions");
            }
            self.paused = false;
            set_status_field(&self.args.runtime, "paused", json!(false));
        }
    }

    /// Consumer errors that name a missing or forbidden topic stop the trigger (so the status
    /// says why); the rest are librdkafka's to recover from.
    fn consumer_error(&mut self, e: KafkaError) -> Result<(), String> {
        match e.rdkafka_error_code() {
            // librdkafka reconnects on its own, silently; whether the brokers are really gone
            // (then the trigger backs off, visibly) is checked in `check_brokers`.
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve,
            ) => {
                self.suspect.get_or_insert_with(Instant::now);
                Ok(())
            }
            Some(
                code @ (RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed),
            ) => Err(format!("Kafka: {code} ({})", self.cfg.topics.join(","))),
            _ if matches!(e, KafkaError::MessageConsumptionFatal(_)) => Err(format!("Kafka: {e}")),
            _ => {
                tracing::warn!(trigger = self.args.runtime.name(), error = %e, "Kafka consumer error");
                Ok(())
            }
        }
    }

    /// Turns polled messages into jobs (one flush for the batch) and tracks their offsets.
    fn take(&mut self, batch: Vec<BorrowedMessage<'_>>, epoch: u64) -> Result<(), String> {
        let rt = &self.args.runtime;
        let mut keys = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        {
            let mut tracking = self.ctx().tracking();
            for m in &batch {
                let key: PartitionKey = (Arc::from(m.topic()), m.partition());
                let generation = tracking.generation;
                let track = tracking
                    .partitions
                    .entry(key.clone())
                    .or_insert_with(|| PartitionTrack::new(generation, None));
                track.take(m.offset());
                keys.push((key, track.generation, m.offset()));
                events.push(kafka_event(rt.name(), &self.group, epoch, m));
            }
        }
        drop(batch);
        let tx = self.settle_tx.clone();
        let handles = &keys;
        let results = self
            .handle
            .block_on(self.args.intake.accept_batch(rt, events, |i, _job| {
                let ((topic, partition), generation, offset) = handles[i].clone();
                let tx = tx.clone();
                AckHandle::on_settle(move |_outcome| {
                    // Success and dead letter alike move the offset on: the outcome is durable.
                    let _ = tx.send(Settled {
                        generation,
                        topic,
                        partition,
                        offset,
                    });
                })
            }));
        let mut tracking = self.ctx().tracking();
        for ((key, generation, offset), result) in keys.into_iter().zip(results) {
            match result {
                Ok(Accepted::Queued(ids)) => {
                    if let Some(t) = tracking.partitions.get_mut(&key) {
                        if t.generation == generation {
                            t.pending.insert(offset, ids.len());
                        }
                    }
                }
                // Durable already (parked, an earlier read's jobs, or a dead letter recording why
                // it cannot run: reading it again would fail the same way) or nothing to run:
                // the offset moves past it.
                Ok(
                    Accepted::Parked(_)
                    | Accepted::Duplicate(_)
                    | Accepted::Filtered
                    | Accepted::DeadLettered(_),
                ) => {}
                Err(e) => {
                    // Not durable: leave this and every later offset of its partition
                    // uncommitted (the consumer restarts from the committed position).
                    return Err(format!("could not accept a message: {e}"));
                }
            }
        }
        Ok(())
    }

    fn reset_due(&mut self) -> bool {
        let fresh = std::mem::take(&mut self.ctx().tracking().newly_assigned);
        if fresh || self.last_reset_check.elapsed() >= Duration::from_millis(200) {
            self.last_reset_check = Instant::now();
            return true;
        }
        false
    }

    /// Applies a requested reset to the assigned partitions: seek, commit, new epoch. Returns
    /// the new epoch when one was applied.
    fn apply_reset(&mut self) -> Result<Option<u64>, String> {
        let rt = &self.args.runtime;
        let store = &self.args.intake.store;
        let mut state = KafkaState::load(store, rt.name())?;
        let Some(request) = state.reset.clone() else {
            return Ok(None);
        };
        let assignment = self
            .consumer
            .assignment()
            .map_err(|e| format!("cannot read the assignment: {e}"))?;
        if assignment.count() == 0 {
            return Ok(None); // applied when partitions are assigned
        }
        let timeout = Duration::from_secs(10);
        let mut targets: Vec<(String, i32, i64)> = Vec::new();
        let by_time = match &request.to {
            ResetTo::Timestamp { timestamp } => {
                let mut q = TopicPartitionList::new();
                for e in assignment.elements() {
                    let _ = q.add_partition_offset(
                        e.topic(),
                        e.partition(),
                        Offset::Offset(*timestamp),
                    );
                }
                Some(
                    self.consumer
                        .offsets_for_times(q, timeout)
                        .map_err(|e| format!("reset: cannot look up offsets by time: {e}"))?
                        .to_topic_map(),
                )
            }
            _ => None,
        };
        for e in assignment.elements() {
            let (topic, partition) = (e.topic().to_string(), e.partition());
            let (low, high) = self
                .consumer
                .fetch_watermarks(&topic, partition, timeout)
                .map_err(|err| {
                    format!("reset: cannot read {topic}/{partition}'s offsets: {err}")
                })?;
            let target = match &request.to {
                ResetTo::Named(ResetPoint::Earliest) => Some(low),
                ResetTo::Named(ResetPoint::Latest) => Some(high),
                ResetTo::Offset {
                    offset,
                    topic: t,
                    partition: p,
                } => (t.as_deref().is_none_or(|t| t == topic) && p.is_none_or(|p| p == partition))
                    .then_some((*offset).clamp(low, high)),
                ResetTo::Timestamp { .. } => Some(
                    by_time
                        .as_ref()
                        .and_then(|m| m.get(&(topic.clone(), partition)))
                        .and_then(|o| o.to_raw())
                        .filter(|o| *o >= 0)
                        .unwrap_or(high),
                ),
            };
            if let Some(t) = target {
                targets.push((topic, partition, t));
            }
        }
        let mut seek = TopicPartitionList::new();
        let mut commit = TopicPartitionList::new();
        for (topic, partition, offset) in &targets {
            let _ = seek.add_partition_offset(topic, *partition, Offset::Offset(*offset));
            let _ = commit.add_partition_offset(topic, *partition, Offset::Offset(*offset));
        }
        let sought = self
            .consumer
            .seek_partitions(seek, timeout)
            .map_err(|e| format!("reset: seek failed: {e}"))?;
        for e in sought.elements() {
            if let Err(err) = e.error() {
                return Err(format!(
                    "reset: seek of {}/{} failed: {err}",
                    e.topic(),
                    e.partition()
                ));
            }
        }
        // Jobs still running from before the reset no longer move these positions.
        {
            let mut tracking = self.ctx().tracking();
            tracking.generation += 1;
            let generation = tracking.generation;
            for (topic, partition, offset) in &targets {
                tracking.partitions.insert(
                    (Arc::from(topic.as_str()), *partition),
                    PartitionTrack::new(generation, Some(*offset)),
                );
            }
        }
        self.consumer
            .commit(&commit, CommitMode::Sync)
            .map_err(|e| format!("reset: commit failed: {e}"))?;
        let applied: Vec<Value> = targets
            .iter()
            .map(|(t, p, o)| json!({"topic": t, "partition": p, "offset": o}))
            .collect();
        state.group_id = self.group.clone();
        state.epoch += 1;
        for (topic, partition, offset) in &targets {
            state
                .positions
                .entry(topic.clone())
                .or_default()
                .insert(*partition, *offset);
        }
        let last = json!({
            "id": request.id,
            "to": request.to,
            "applied_at": chrono::Utc::now().to_rfc3339(),
            "partitions": applied,
        });
        state.reset = None;
        state.last_reset = Some(last.clone());
        let v = serde_json::to_value(&state).map_err(|e| e.to_string())?;
        self.handle
            .block_on(store.put_source_state(rt.name(), &v))
            .map_err(|e| format!("reset: cannot save positions: {e}"))?;
        set_status_field(rt, "last_reset", last);
        tracing::info!(trigger = rt.name(), partitions = ?targets, epoch = state.epoch, "kafka offsets reset");
        Ok(Some(state.epoch))
    }

    /// `{group_id, connected, paused, assigned: [{topic, partition, committed, next,
    /// pending}]}` for the admin API.
    fn publish_status(&self) {
        let rt = &self.args.runtime;
        let assigned: Vec<Value> = {
            let t = self.ctx().tracking();
            let mut v: Vec<_> = t
                .partitions
                .iter()
                .map(|((topic, partition), p)| {
                    json!({
                        "topic": &**topic,
                        "partition": partition,
                        "committed": p.committed,
                        "next": p.next,
                        "pending": p.pending.len(),
                    })
                })
                .collect();
            v.sort_by_key(|x| (x["topic"].to_string(), x["partition"].as_i64()));
            v
        };
        set_status_field(rt, "connected", json!(true));
        set_status_field(rt, "error", Value::Null);
        set_status_field(rt, "assigned", json!(assigned));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> KafkaConfig {
        serde_json::from_value(v).expect("config")
    }

    #[test]
    fn validates_topics_security_and_properties() {
        let c = cfg(json!({"brokers": ["127.0.0.1:9092"], "topics": ["orders", "^events\\..*"]}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.auto_offset_reset, AutoOffsetReset::Latest);
        assert_eq!(c.group_id("t"), "millgate-t");
        assert_eq!(c.endpoint(), "kafka 127.0.0.1:9092 [orders,^events\\..*]");
        let c = cfg(json!({"brokers": [], "topics": ["bad topic"], "batch": 0,
            "security": {"protocol": "SASL_SSL", "cert_file": "c.pem"},
            "properties": {"group.id": "x", "fetch.max.bytes": "lots", "no.such.thing": "1"}}));
        let issues = c.validate();
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "brokers",
                "topics",
                "batch",
                "security.sasl_mechanism",
                "security.username",
                "security.cert_file",
                "properties",
                "properties"
            ],
            "{issues:?}"
        );
        assert!(issues[6].1.contains("group_id"), "{issues:?}");
        // librdkafka's own check names the property it refused.
        assert!(
            issues[7].1.contains("fetch.max.bytes") || issues[7].1.contains("no.such.thing"),
            "{issues:?}"
        );
        let c = cfg(json!({"brokers": ["b:1"], "topics": ["t"],
            "security": {"protocol": "PLAINTEXT", "username": "u", "ca_file": "x"}}));
        let keys: Vec<_> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["security.protocol", "security.protocol"]);
        let e = serde_json::from_value::<KafkaConfig>(
            json!({"brokers": ["b:1"], "topics": ["t"], "security": {"protocol": "TLS"}}),
        )
        .expect_err("unknown protocol");
        assert!(e.to_string().contains("TLS"), "{e}");
    }

    #[test]
    fn refused_properties_are_named_without_their_values() {
        let c = cfg(json!({"brokers": ["b:1"], "topics": ["t"],
            "properties": {"sasl.oauthbearer.client.secret": "hunter2-secret"}}));
        let issues = c.validate();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert!(
            issues[0].1.contains("sasl.oauthbearer.client.secret"),
            "{issues:?}"
        );
        assert!(!issues[0].1.contains("hunter2"), "{issues:?}");
        assert_eq!(
            without_value(r#"Invalid value "hunter2" for "x.password""#, "hunter2"),
            r#"Invalid value (value not shown) for "x.password""#
        );
        let c = cfg(json!({"brokers": ["b:1"], "topics": ["t"],
            "properties": {"Plugin.Library.Paths": "/x.so", "fetch.max.bytes": "10"}}));
        assert_eq!(c.program_properties(), ["Plugin.Library.Paths"]);
    }

    #[test]
    fn client_config_sets_what_millgate_owns() {
        let c = cfg(
            json!({"brokers": ["a:1", "b:2"], "topics": ["t"], "group_id": "g",
            "auto_offset_reset": "earliest",
            "security": {"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "username": "u", "password": "p", "ca_file": "/ca.pem"},
            "properties": {"fetch.min.bytes": "10"}}),
        );
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let cc = c.client_config("trig");
        let get = |k: &str| cc.get(k).map(str::to_string);
        assert_eq!(get("bootstrap.servers").as_deref(), Some("a:1,b:2"));
        assert_eq!(get("group.id").as_deref(), Some("g"));
        assert_eq!(get("enable.auto.commit").as_deref(), Some("false"));
        assert_eq!(get("enable.auto.offset.store").as_deref(), Some("false"));
        assert_eq!(get("auto.offset.reset").as_deref(), Some("earliest"));
        assert_eq!(get("security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get("sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get("sasl.username").as_deref(), Some("u"));
        assert_eq!(get("ssl.ca.location").as_deref(), Some("/ca.pem"));
        assert_eq!(get("fetch.min.bytes").as_deref(), Some("10"));
        assert_eq!(get("client.id").as_deref(), Some("millgate-trig"));
    }

    #[test]
    fn the_committable_position_never_passes_an_unsettled_offset() {
        let mut t = PartitionTrack::new(1, None);
        assert_eq!(t.committable(), None);
        for o in 10..15 {
            t.take(o);
            t.pending.insert(o, 1);
        }
        // 11, 13 and 14 finish; 10 is slow: nothing may be committed past 10.
        for o in [11, 13, 14] {
            t.settle_one(o);
        }
        assert_eq!(t.committable(), Some(10));
        t.settle_one(10);
        assert_eq!(t.committable(), Some(12));
        t.settle_one(12);
        assert_eq!(t.committable(), Some(15));
        // A message with two jobs is pending until both settle.
        t.take(15);
        t.pending.insert(15, 2);
        t.settle_one(15);
        assert_eq!(t.committable(), Some(15));
        t.settle_one(15);
        assert_eq!(t.committable(), Some(16));
    }

    #[test]
    fn settlements_of_an_older_generation_are_ignored() {
        let mut tracking = Tracking {
            partitions: HashMap::new(),
            generation: 2,
            newly_assigned: false,
        };
        let key: PartitionKey = (Arc::from("t"), 0);
        let mut p = PartitionTrack::new(2, Some(5));
        p.take(5);
        p.pending.insert(5, 1);
        tracking.partitions.insert(key.clone(), p);
        tracking.apply(Settled {
            generation: 1,
            topic: key.0.clone(),
            partition: 0,
            offset: 5,
        });
        assert!(tracking.to_commit(None).is_empty());
        tracking.apply(Settled {
            generation: 2,
            topic: key.0.clone(),
            partition: 0,
            offset: 5,
        });
        assert_eq!(tracking.to_commit(None), vec![(key, 6)]);
    }

    #[test]
    fn order_by_shorthands() {
        assert_eq!(order_by_expr(None), order_by_expr(Some("partition")));
        assert!(order_by_expr(Some("key")).is_some_and(|e| e.contains(".key")));
        assert_eq!(order_by_expr(Some("none")), None);
        assert_eq!(order_by_expr(Some(".data.id")).as_deref(), Some(".data.id"));
    }

    #[test]
    fn reset_requests_parse() {
        let r: ResetRequest = serde_json::from_value(json!({"to": "earliest"})).expect("named");
        assert_eq!(r.to, ResetTo::Named(ResetPoint::Earliest));
        let r: ResetRequest =
            serde_json::from_value(json!({"to": {"offset": 4, "partition": 1}})).expect("offset");
        assert_eq!(
            r.to,
            ResetTo::Offset {
                offset: 4,
                topic: None,
                partition: Some(1)
            }
        );
        let r: ResetRequest =
            serde_json::from_value(json!({"to": {"timestamp": 1700000000000i64}})).expect("time");
        assert!(matches!(r.to, ResetTo::Timestamp { .. }));
        assert!(serde_json::from_value::<ResetRequest>(json!({"to": "middle"})).is_err());
    }

    #[test]
    fn a_kafka_trigger_loads_through_the_common_config_path() {
        use crate::triggers::{TriggerConfig, TriggerSpec};
        let Value::Object(map) = json!({
            "name": "orders", "kind": "kafka", "runnable": "r",
            "brokers": ["127.0.0.1:9092"], "topics": ["orders"]
        }) else {
            unreachable!("object literal")
        };
        let t = TriggerConfig::from_map(map).expect("loads");
        assert!(matches!(t.spec, TriggerSpec::Kafka(_)));
        assert!(t.spec.kind().push().is_none());
        assert_eq!(
            t.order_by_expr().as_deref(),
            Some(r#""\(.topic)/\(.partition)""#)
        );
        let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
        assert_eq!(back, t);
    }
}
