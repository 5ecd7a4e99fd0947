//! MQTT trigger (rumqttc; v3.1.1 or v5, plain TCP or TLS): one actor per trigger owns the
//! connection and its subscriptions. When the connection is lost the actor fails and the
//! trigger supervisor restarts it with backoff (`backing_off`, never disabled); rumqttc's own
//! silent reconnect is not used.
//!
//! Delivery (DESIGN.md, "Delivery guarantee"), the same for both versions:
//! - QoS 1/2: manual acks. The puback (QoS 1) / pubrec (QoS 2) is sent only once the job's
//!   outcome is durable (`AckHandle::on_settle`): after success and after dead-lettering alike
//!   (the source is told either way; MQTT has no negative ack). With a persistent session
//!   (v3: `clean_session = false`; v5: `clean_start = false` and a `session_expiry`; a fixed
//!   `client_id`) a message not acknowledged when millgate dies is redelivered by the broker
//!   after the restart. Acks are written as soon as their jobs settle: a task of its own polls
//!   the connection (`mqtt/pump.rs`), so after a crash only messages whose jobs were still
//!   running, or whose ack was on its way, run again.
//! - QoS 0: the broker never redelivers, so a message counts as received once its jobs are
//!   durably queued.
//!
//! Event ids are unique, not derived from the message: an MQTT packet id only names a message
//! while it is in flight on one connection and is reused right after its ack, so pkid (or
//! topic + pkid) would make distinct messages look like duplicates. A redelivery after a crash
//! therefore becomes a second job (at-least-once), never a lost one.
//!
//! Event (`kind = "mqtt"`): `payload` (base64), `data` (parsed, when the payload is UTF-8
//! JSON), `topic`, `qos`, `retain`, `pkid` (0 for QoS 0), `dup`; v5 adds `properties`
//! (`v5_properties`). v5 topic aliases are resolved to the real topic (rumqttc keeps the
//! connection's alias table); a message whose alias is unknown fails the connection unacked.
//!
//! The two versions differ only in how a connection is driven (`Link`: options, packets,
//! reason codes) and how a message is turned into an event; intake and acknowledgement
//! (`mqtt/pump.rs`, `Ack`) are shared.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The client this trigger speaks, for tests and tools that publish to it.
pub use rumqttc;

use base64::Engine;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rumqttc::tokio_rustls::rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ClientConfig, RootCertStore,
};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as v5p;
use rumqttc::{ConnectReturnCode, Event as MqttEvent, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http::RouteTable;
use super::kind::{SpawnFuture, TriggerKind};
use super::{SourceArgs, StopSignal as Stop, TriggerRuntime};
use crate::preprocess::DefaultArgs;

mod pump;

// ---------------------------------------------------------------------------------------------
// Config

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Host name or IP of the broker (with `tls`, the name its certificate must carry).
    pub broker: String,
    /// Defaults to 1883, or 8883 with `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Needed (and kept stable) for a persistent session; defaults to
    /// `millgate-<trigger>-<random>` with a clean session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Protocol version: 3 (v3.1.1) or 5.
    #[serde(default = "default_version")]
    pub version: u8,
    pub subscriptions: Vec<MqttSubscription>,
    /// v3.1.1 only: `false` keeps the session (subscriptions and unacknowledged messages) at
    /// the broker across reconnects and restarts. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_session: Option<bool>,
    /// v5 only, its name for the same flag: `false` resumes the session the broker kept
    /// (for `session_expiry`). Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_start: Option<bool>,
    /// v5 only: how long the broker keeps the session after the connection ends (whole
    /// seconds; required and above zero with `clean_start = false`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub session_expiry: Option<Duration>,
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Largest packet accepted from the broker, in bytes (rumqttc's own default, 10 KiB,
    /// would drop the connection on every larger message). v5 tells the broker, which then
    /// withholds larger messages; v3 cannot, and a larger message fails the connection.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: u32,
    /// TLS to the broker; `tls = {}` verifies it against the system's root certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<MqttTls>,
}

/// `subscriptions = [{ topic = "sensors/#", qos = 1 }]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSubscription {
    pub topic: String,
    #[serde(default)]
    pub qos: u8,
}

/// `tls = { ca_file, client_cert_file, client_key_file }`, PEM files read at each connect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// CA certificate(s) the broker's certificate must chain to; without it, the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (chain) for brokers that require one; goes with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
}

fn default_version() -> u8 {
    3
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_max_packet_size() -> u32 {
    16 * 1024 * 1024
}

/// Topic aliases millgate accepts from a v5 broker (rumqttc resolves them to topics).
const TOPIC_ALIAS_MAX: u16 = 1024;

impl MqttConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: &str| issues.push((k.to_string(), m.to_string()));
        if self.broker.trim().is_empty() {
            issue("broker", "is empty");
        }
        if self.port == Some(0) {
            issue("port", "must not be 0");
        }
        match self.version {
            3 => {
                if self.clean_start.is_some() {
                    issue(
                        "clean_start",
                        "is the MQTT v5 name; with version 3 use `clean_session`",
                    );
                }
                if self.session_expiry.is_some() {
                    issue(
                        "session_expiry",
                        "needs `version = 5` (a v3.1.1 session lasts until the broker drops it)",
                    );
                }
            }
            5 => {
                if self.clean_session.is_some() {
                    issue(
                        "clean_session",
                        "is the MQTT v3.1.1 name; with `version = 5` use `clean_start`",
                    );
                }
                let expiry = self.session_expiry.map(|d| d.as_secs());
                if expiry.is_some_and(|s| s > u64::from(u32::MAX)) {
                    issue(
                        "session_expiry",
                        "must be at most 4294967295s (that value means: never expires)",
                    );
                }
                if !self.clean() && expiry.unwrap_or(0) == 0 {
                    issue(
                        "session_expiry",
                        "must be at least 1s with `clean_start = false`: a v5 session without \
                         an expiry ends with the connection, so nothing would be redelivered",
                    );
                }
                if self.keep_alive < Duration::from_secs(5) {
                    issue("keep_alive", "must be at least 5s with `version = 5`");
                }
            }
            _ => issue("version", "must be 3 (MQTT v3.1.1) or 5"),
        }
        if self.subscriptions.is_empty() {
            issue("subscriptions", "needs at least one `{ topic, qos }`");
        }
        for s in &self.subscriptions {
            if !valid_filter(&s.topic) {
                issue(
                    "subscriptions",
                    &format!("`{}` is not a valid MQTT topic filter", s.topic),
                );
            }
            if s.qos > 2 {
                issue("subscriptions", &format!("qos {} is not 0, 1 or 2", s.qos));
            }
        }
        match &self.client_id {
            Some(id) if id.is_empty() || id.len() > 23 * 8 => {
                issue("client_id", "must be 1 to 184 characters")
            }
            None if !self.clean() => issue(
                "client_id",
                &format!(
                    "is required with `{} = false` (the session belongs to the id)",
                    self.clean_key()
                ),
            ),
            _ => {}
        }
        if self.password.is_some() && self.username.is_none() {
            issue("password", "needs `username`");
        }
        if self.keep_alive < Duration::from_secs(1) {
            issue("keep_alive", "must be at least 1s");
        }
        if self.max_packet_size < 1024 || self.max_packet_size > 268_435_455 {
            issue(
                "max_packet_size",
                "must be between 1024 and 268435455 bytes (MQTT's limit)",
            );
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            issue("keep_alive", "must be at most 65535s");
        }
        if let Some(tls) = &self.tls {
            for (key, file) in [
                ("tls.ca_file", &tls.ca_file),
                ("tls.client_cert_file", &tls.client_cert_file),
                ("tls.client_key_file", &tls.client_key_file),
            ] {
                if file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
                    issue(key, "is empty");
                }
            }
            match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(_), None) => issue(
                    "tls.client_key_file",
                    "is required with `tls.client_cert_file` (they go together)",
                ),
                (None, Some(_)) => issue(
                    "tls.client_cert_file",
                    "is required with `tls.client_key_file` (they go together)",
                ),
                _ => {}
            }
        }
        issues
    }

    /// Whether each connection starts a new session (`clean_session` / `clean_start`).
    pub fn clean(&self) -> bool {
        self.clean_session.or(self.clean_start).unwrap_or(true)
    }

    /// The session flag's name in this config's protocol version.
    fn clean_key(&self) -> &'static str {
        if self.version == 5 {
            "clean_start"
        } else {
            "clean_session"
        }
    }

    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// One line for listings.
    pub fn endpoint(&self) -> String {
        let topics: Vec<String> = self
            .subscriptions
            .iter()
            .map(|s| format!("{}@{}", s.topic, s.qos))
            .collect();
        format!(
            "mqtt{}{} {}:{} [{}]{}",
            if self.version == 5 { "5" } else { "" },
            if self.tls.is_some() { "s" } else { "" },
            self.broker,
            self.port(),
            topics.join(","),
            if self.clean() {
                ""
            } else {
                " persistent session"
            }
        )
    }

    fn client_id_for(&self, trigger: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| {
            let clean: String = trigger
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .take(40)
                .collect();
            format!(
                "millgate-{clean}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        })
    }

    /// v3.1.1 connection options: manual acks, session, keep-alive, credentials (plain TCP;
    /// `transport` adds TLS).
    pub fn options(&self, trigger: &str) -> rumqttc::MqttOptions {
        let mut opts = rumqttc::MqttOptions::new(
            self.client_id_for(trigger),
            self.broker.clone(),
            self.port(),
        );
        // rumqttc panics below 1s; validate() refuses that already.
        opts.set_manual_acks(true)
            .set_clean_session(self.clean())
            .set_keep_alive(self.keep_alive.max(Duration::from_secs(1)))
            .set_max_packet_size(self.max_packet_size as usize, self.max_packet_size as usize);
        if let Some(user) = &self.username {
            opts.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        opts
    }

    /// v5 connection options: the same, plus the session expiry and topic aliases.
    pub fn options_v5(&self, trigger: &str) -> v5::MqttOptions {
        let mut opts = v5::MqttOptions::new(
            self.client_id_for(trigger),
            self.broker.clone(),
            self.port(),
        );
        let mut props = v5p::ConnectProperties::new();
        props.session_expiry_interval = self
            .session_expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        props.topic_alias_max = Some(TOPIC_ALIAS_MAX);
        props.max_packet_size = Some(self.max_packet_size);
        // rumqttc panics below 5s; validate() refuses that already.
        opts.set_manual_acks(true)
            .set_clean_start(self.clean())
            .set_keep_alive(self.keep_alive.max(Duration::from_secs(5)))
            .set_connect_properties(props);
        if let Some(user) = &self.username {
            opts.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        opts
    }

    /// TCP, or TLS built from the `tls` files (read now: an unreadable or unusable file is an
    /// error that names its key and path).
    pub fn transport(&self) -> Result<Transport, String> {
        let Some(tls) = &self.tls else {
            return Ok(Transport::tcp());
        };
        let mut roots = RootCertStore::empty();
        match &tls.ca_file {
            Some(path) => {
                for cert in pem_certs("tls.ca_file", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| file_error("tls.ca_file", path, e))?;
                }
            }
            None => {
                let system = rustls_native_certs::load_native_certs().map_err(|e| {
                    format!("cannot load the system's root certificates (set `tls.ca_file`): {e}")
                })?;
                roots.add_parsable_certificates(system);
                if roots.is_empty() {
                    return Err(
                        "no root certificates found on this system; set `tls.ca_file`".into(),
                    );
                }
            }
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        let config = match (&tls.client_cert_file, &tls.client_key_file) {
            (Some(cert), Some(key)) => {
                let chain = pem_certs("tls.client_cert_file", cert)?;
                let pem = read_file("tls.client_key_file", key)?;
                let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                    file_error(
                        "tls.client_key_file",
                        key,
                        format!("no PEM private key ({e})"),
                    )
                })?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| file_error("tls.client_key_file", key, e))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )))
    }
}

fn file_error(key: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{key} `{}`: {e}", path.display())
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| file_error(key, path, format_args!("cannot read: {e}")))
}

/// The certificates of a PEM file; none is an error.
fn pem_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, format_args!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// A topic filter: non-empty, `#` only as the whole last level, `+` only as a whole level.
fn valid_filter(f: &str) -> bool {
    let levels: Vec<&str> = f.split('/').collect();
    !f.is_empty()
        && !f.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
                && (!l.contains('+') || *l == "+")
        })
}

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos_v5(n: u8) -> v5::mqttbytes::QoS {
    match n {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

// ---------------------------------------------------------------------------------------------
// Events

/// The fields both versions share.
fn base_event(
    trigger: &str,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    dup: bool,
) -> Map<String, Value> {
    let mut event = Map::new();
    event.insert("kind".into(), json!("mqtt"));
    event.insert("trigger".into(), json!(trigger));
    event.insert(
        "payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(payload)),
    );
    if let (Some(data), _) = crate::model::json::message_data(payload) {
        event.insert("data".into(), data);
    }
    event.insert("topic".into(), json!(topic));
    event.insert("qos".into(), json!(qos));
    event.insert("retain".into(), json!(retain));
    event.insert("pkid".into(), json!(pkid));
    event.insert("dup".into(), json!(dup));
    event
}

fn mqtt_event(trigger: &str, p: &rumqttc::Publish) -> Value {
    Value::Object(base_event(
        trigger,
        &p.topic,
        &p.payload,
        p.qos as u8,
        p.retain,
        p.pkid,
        p.dup,
    ))
}

/// A v5 message's event: the v3 fields (`topic` resolved from an alias) and `properties`.
fn v5_event(trigger: &str, topic: &str, p: &v5p::Publish) -> Value {
    let mut event = base_event(
        trigger,
        topic,
        &p.payload,
        p.qos as u8,
        p.retain,
        p.pkid,
        p.dup,
    );
    event.insert("properties".into(), v5_properties(p.properties.as_ref()));
    Value::Object(event)
}

/// `properties` of a v5 event: `user_properties` (`[[key, value], ...]` in the order sent;
/// keys may repeat) and `subscription_identifiers` (the 1-based indexes of the
/// `subscriptions` entries the message matched; none from a broker without subscription
/// identifiers) are always there, maybe empty; the others
/// only when the message carries them: `content_type`, `response_topic`,
/// `correlation_data` (base64), `payload_format_indicator` (0 bytes, 1 UTF-8),
/// `message_expiry_interval` (seconds left).
fn v5_properties(props: Option<&v5p::PublishProperties>) -> Value {
    let mut out = Map::new();
    let empty = v5p::PublishProperties::default();
    let props = props.unwrap_or(&empty);
    if let Some(v) = &props.content_type {
        out.insert("content_type".into(), json!(v));
    }
    if let Some(v) = &props.response_topic {
        out.insert("response_topic".into(), json!(v));
    }
    if let Some(v) = &props.correlation_data {
        out.insert(
            "correlation_data".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(v)),
        );
    }
    if let Some(v) = props.payload_format_indicator {
        out.insert("payload_format_indicator".into(), json!(v));
    }
    if let Some(v) = props.message_expiry_interval {
        out.insert("message_expiry_interval".into(), json!(v));
    }
    let user: Vec<Value> = props
        .user_properties
        .iter()
        .map(|(k, v)| json!([k, v]))
        .collect();
    out.insert("user_properties".into(), Value::Array(user));
    out.insert(
        "subscription_identifiers".into(),
        json!(props.subscription_identifiers),
    );
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Messages and their acknowledgement (shared by both versions)

/// A received message: its event and what acknowledging it takes.
struct Message {
    topic: String,
    qos: u8,
    event: Value,
    /// Why the message cannot be run (a payload nested too deeply).
    defect: Option<String>,
    ack: Ack,
}

/// The puback/pubrec of one message: the connection's client and the packet, which is all
/// rumqttc needs for it (only its QoS and packet id are used; the payload is dropped).
enum Ack {
    V3(rumqttc::AsyncClient, rumqttc::Publish),
    V5(v5::AsyncClient, v5p::Publish),
}

impl Ack {
    fn pkid(&self) -> u16 {
        match self {
            Ack::V3(_, p) => p.pkid,
            Ack::V5(_, p) => p.pkid,
        }
    }

    async fn send(&self, topic: &str, what: &str) {
        let pkid = self.pkid();
        tracing::debug!(topic, pkid, what, "mqtt ack");
        let sent = match self {
            Ack::V3(client, p) => client.ack(p).await.map_err(|e| e.to_string()),
            Ack::V5(client, p) => client.ack(p).await.map_err(|e| e.to_string()),
        };
        if let Err(error) = sent {
            // The connection this message came on is gone; a persistent session redelivers it.
            tracing::warn!(topic, pkid, what, %error, "could not send MQTT ack");
        }
    }
}

impl Message {
    fn v3(trigger: &str, client: &rumqttc::AsyncClient, mut p: rumqttc::Publish) -> Self {
        let event = mqtt_event(trigger, &p);
        let defect = crate::model::json::payload_defect(&p.payload);
        let topic = std::mem::take(&mut p.topic);
        p.payload = Bytes::new();
        Self {
            topic,
            qos: p.qos as u8,
            event,
            defect,
            ack: Ack::V3(client.clone(), p),
        }
    }

    /// Fails for a message without a topic: rumqttc fills in the topic of a known alias, so
    /// an empty one means an alias this connection never saw (a broker protocol error).
    fn v5(trigger: &str, client: &v5::AsyncClient, mut p: v5p::Publish) -> Result<Self, String> {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if topic.is_empty() {
            let alias = p.properties.as_ref().and_then(|props| props.topic_alias);
            return Err(match alias {
                Some(a) => format!("MQTT broker sent a message with unknown topic alias {a}"),
                None => "MQTT broker sent a message without a topic".into(),
            });
        }
        let event = v5_event(trigger, &topic, &p);
        let defect = crate::model::json::payload_defect(&p.payload);
        p.payload = Bytes::new();
        p.properties = None;
        Ok(Self {
            topic,
            qos: p.qos as u8,
            event,
            defect,
            ack: Ack::V5(client.clone(), p),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The connection, per version

/// What the trigger needs from one connection, whatever its version.
enum Incoming {
    Connected {
        session_present: bool,
    },
    /// Every subscription sent has been granted.
    Subscribed,
    Message(Box<Message>),
    /// Our DISCONNECT went out (after every request queued before it, acks included).
    Closed,
    Nothing,
}

enum Conn {
    V3(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

struct Link {
    conn: Conn,
    /// `host:port`, for messages.
    at: String,
    /// Subscriptions not yet granted, each with its 1-based position in `subscriptions`. v5
    /// sends them one at a time (the next once the previous is granted), so a refusal, which
    /// rumqttc reports without its packet id, is always the first one's.
    pending: VecDeque<(usize, MqttSubscription)>,
    /// v5: whether the broker takes subscription identifiers (its CONNACK says so).
    sub_ids: bool,
}

impl Link {
    /// `receive_maximum`: v5 only, how many QoS 1/2 messages the broker may have sent and not
    /// yet seen acknowledged.
    fn open(cfg: &MqttConfig, trigger: &str, receive_maximum: u16) -> Result<Self, String> {
        let transport = cfg.transport()?;
        let capacity = 256;
        let conn = if cfg.version == 5 {
            let mut opts = cfg.options_v5(trigger);
            opts.set_transport(transport);
            opts.set_receive_maximum(Some(receive_maximum.max(1)));
            let (client, events) = v5::AsyncClient::new(opts, capacity);
            Conn::V5(client, Box::new(events))
        } else {
            let mut opts = cfg.options(trigger);
            opts.set_transport(transport);
            let (client, events) = rumqttc::AsyncClient::new(opts, capacity);
            Conn::V3(client, Box::new(events))
        };
        Ok(Self {
            conn,
            at: format!("{}:{}", cfg.broker, cfg.port()),
            pending: VecDeque::new(),
            sub_ids: true,
        })
    }

    /// The next thing that matters from the broker. Errors end the connection: refused
    /// connections and subscriptions name the broker's reason code.
    async fn next(&mut self, trigger: &str) -> Result<Incoming, String> {
        let Link {
            conn,
            at,
            pending,
            sub_ids,
        } = self;
        match conn {
            Conn::V3(client, events) => {
                let event = events.poll().await.map_err(|e| match e {
                    rumqttc::ConnectionError::ConnectionRefused(code) => refused_v3(at, code),
                    e => format!("MQTT connection to {at}: {e}"),
                })?;
                Ok(match event {
                    MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                        if ack.code != ConnectReturnCode::Success {
                            return Err(refused_v3(at, ack.code));
                        }
                        Incoming::Connected {
                            session_present: ack.session_present,
                        }
                    }
                    MqttEvent::Incoming(Packet::SubAck(ack)) => {
                        // One SUBACK answers the one SUBSCRIBE of all filters, a code each.
                        let topics: Vec<_> = pending.drain(..).map(|(_, s)| s.topic).collect();
                        let refused = ack
                            .return_codes
                            .iter()
                            .position(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                        if let Some(i) = refused {
                            let topic = topics.get(i).map(String::as_str).unwrap_or("?");
                            return Err(format!(
                                "MQTT broker {at} refused the subscription to `{topic}`: \
                                 return code 0x80 (Failure)"
                            ));
                        }
                        Incoming::Subscribed
                    }
                    MqttEvent::Incoming(Packet::Publish(p)) => {
                        Incoming::Message(Box::new(Message::v3(trigger, client, p)))
                    }
                    MqttEvent::Incoming(Packet::Disconnect) => {
                        return Err(format!("MQTT broker {at} disconnected us"));
                    }
                    MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect) => Incoming::Closed,
                    _ => Incoming::Nothing,
                })
            }
            Conn::V5(client, events) => {
                let event = events
                    .poll()
                    .await
                    .map_err(|e| v5_error(at, pending.front().map(|(_, s)| s.topic.as_str()), e))?;
                Ok(match event {
                    v5::Event::Incoming(v5p::Packet::ConnAck(ack)) => {
                        if ack.code != v5p::ConnectReturnCode::Success {
                            return Err(refused_v5(at, ack.code));
                        }
                        *sub_ids = ack
                            .properties
                            .as_ref()
                            .and_then(|p| p.subscription_identifiers_available)
                            != Some(0);
                        Incoming::Connected {
                            session_present: ack.session_present,
                        }
                    }
                    v5::Event::Incoming(v5p::Packet::SubAck(ack)) => {
                        // rumqttc fails the poll on a refused code (see `v5_error`); check
                        // again in case that changes.
                        let granted = pending.pop_front();
                        if let Some(c) = ack
                            .return_codes
                            .iter()
                            .find(|c| !matches!(c, v5p::SubscribeReasonCode::Success(_)))
                        {
                            let topic = granted.as_ref().map(|(_, s)| s.topic.as_str());
                            return Err(refused_sub_v5(at, topic, *c));
                        }
                        if pending.is_empty() {
                            Incoming::Subscribed
                        } else {
                            subscribe_v5(client, pending.front(), *sub_ids).await?;
                            Incoming::Nothing
                        }
                    }
                    v5::Event::Incoming(v5p::Packet::Publish(p)) => {
                        Incoming::Message(Box::new(Message::v5(trigger, client, p)?))
                    }
                    v5::Event::Incoming(v5p::Packet::Disconnect(d)) => {
                        return Err(disconnected_v5(at, d.reason_code, None));
                    }
                    v5::Event::Outgoing(rumqttc::Outgoing::Disconnect) => Incoming::Closed,
                    _ => Incoming::Nothing,
                })
            }
        }
    }

    /// Subscribes to every filter. v3: one SUBSCRIBE for all. v5: one per entry, the first
    /// here and each next one once the previous is granted (`next`).
    async fn subscribe(&mut self, subs: &[MqttSubscription]) -> Result<(), String> {
        self.pending = subs
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, s)| (i + 1, s))
            .collect();
        match &self.conn {
            Conn::V3(client, _) => {
                let filters = subs.iter().map(|s| rumqttc::SubscribeFilter {
                    path: s.topic.clone(),
                    qos: qos_of(s.qos),
                });
                client
                    .subscribe_many(filters)
                    .await
                    .map_err(|e| format!("cannot subscribe: {e}"))
            }
            Conn::V5(client, _) => subscribe_v5(client, self.pending.front(), self.sub_ids).await,
        }
    }

    /// A handle that asks this connection to close, from outside the task polling it.
    fn closer(&self) -> Closer {
        match &self.conn {
            Conn::V3(client, _) => Closer::V3(client.clone()),
            Conn::V5(client, _) => Closer::V5(client.clone()),
        }
    }
}

enum Closer {
    V3(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Closer {
    /// Queues a DISCONNECT behind the requests already queued (acks), for the polling task
    /// to write; it ends once it is out.
    fn close(&self) {
        let _ = match self {
            Closer::V3(client) => client.try_disconnect().map_err(|e| e.to_string()),
            Closer::V5(client) => client.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

/// Sends a v5 SUBSCRIBE for one entry, carrying its 1-based position as subscription
/// identifier (unless the broker does not take them): the broker sends it back with every
/// message the entry matched (`properties.subscription_identifiers`).
async fn subscribe_v5(
    client: &v5::AsyncClient,
    entry: Option<&(usize, MqttSubscription)>,
    ids: bool,
) -> Result<(), String> {
    let Some((position, sub)) = entry else {
        return Ok(());
    };
    let props = v5p::SubscribeProperties {
        id: ids.then_some(*position),
        user_properties: Vec::new(),
    };
    client
        .subscribe_with_properties(sub.topic.clone(), qos_v5(sub.qos), props)
        .await
        .map_err(|e| format!("cannot subscribe: {e}"))
}

fn refused_v3(at: &str, code: ConnectReturnCode) -> String {
    format!(
        "MQTT broker {at} refused the connection: return code {} ({code:?})",
        code as u8
    )
}

fn refused_v5(at: &str, code: v5p::ConnectReturnCode) -> String {
    format!(
        "MQTT broker {at} refused the connection: reason code {:#04x} ({code:?})",
        connack_code(code)
    )
}

fn refused_sub_v5(at: &str, topic: Option<&str>, code: v5p::SubscribeReasonCode) -> String {
    format!(
        "MQTT broker {at} refused the subscription to `{}`: reason code {:#04x} ({code:?})",
        topic.unwrap_or("?"),
        suback_code(code)
    )
}

fn disconnected_v5(at: &str, code: v5p::DisconnectReasonCode, why: Option<String>) -> String {
    format!(
        "MQTT broker {at} disconnected us: reason code {:#04x} ({code:?}){}",
        code as u8,
        why.map(|w| format!(": {w}")).unwrap_or_default()
    )
}

fn v5_error(at: &str, pending: Option<&str>, e: v5::ConnectionError) -> String {
    match e {
        v5::ConnectionError::ConnectionRefused(code) => refused_v5(at, code),
        v5::ConnectionError::MqttState(v5::StateError::SubFail { reason }) => {
            refused_sub_v5(at, pending, reason)
        }
        v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => disconnected_v5(at, reason_code, reason_string),
        e => format!("MQTT connection to {at}: {e}"),
    }
}

/// The wire value of a v5 CONNACK reason code (rumqttc keeps it private).
fn connack_code(c: v5p::ConnectReturnCode) -> u8 {
    use v5p::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid | C::BadClientId => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable | C::ServiceUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8a,
        C::BadAuthenticationMethod => 0x8c,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9a,
        C::QoSNotSupported => 0x9b,
        C::UseAnotherServer => 0x9c,
        C::ServerMoved => 0x9d,
        C::ConnectionRateExceeded => 0x9f,
    }
}

/// The wire value of a v5 SUBACK reason code.
fn suback_code(c: v5p::SubscribeReasonCode) -> u8 {
    use v5p::SubscribeReasonCode as S;
    match c {
        S::Success(q) => q as u8,
        S::Failure | S::Unspecified => 0x80,
        S::ImplementationSpecific => 0x83,
        S::NotAuthorized => 0x87,
        S::TopicFilterInvalid => 0x8f,
        S::PkidInUse => 0x91,
        S::QuotaExceeded => 0x97,
        S::SharedSubscriptionsNotSupported => 0x9e,
        S::SubscriptionIdNotSupported => 0xa1,
        S::WildcardSubscriptionsNotSupported => 0xa2,
    }
}

impl TriggerKind for MqttConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        MqttConfig::validate(self)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        MqttConfig::endpoint(self)
    }

    /// `"topic"`: one topic's messages one at a time.
    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        match configured {
            Some("topic") => Some(".topic".into()),
            other => other.map(str::to_string),
        }
    }

    /// Windmill hands a broker message to the script as its base64 `payload`.
    fn default_args(&self) -> DefaultArgs {
        |event| json!({ "payload": event.get("payload").cloned().unwrap_or_default() })
    }

    fn spawn_source(&self, args: SourceArgs, supervisor: ractor::ActorCell) -> Option<SpawnFuture> {
        Some(Box::pin(async move {
            Actor::spawn_linked(None, MqttTrigger, args, supervisor)
                .await
                .map(|(actor, _)| actor.get_cell())
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct MqttTrigger;

pub enum MqttMsg {
    /// The connection or a subscription is gone: fail so the supervisor backs off.
    Lost(String),
}

pub struct MqttState {
    /// Tells the task to stop at its next wait. Dropped with the state, which also stops it.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Actor for MqttTrigger {
    type Msg = MqttMsg;
    type State = MqttState;
    type Arguments = SourceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MqttMsg>,
        args: SourceArgs,
    ) -> Result<MqttState, ActorProcessingErr> {
        // Connecting happens in the task: a broker that is down must not stall other triggers.
        let me = myself.clone();
        let (stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = pump::run(&args, Stop(rx)).await {
                set_status(&args.runtime, json!({"connected": false, "error": e}));
                let _ = me.cast(MqttMsg::Lost(e));
            }
        });
        Ok(MqttState { stop })
    }

    async fn handle(
        &self,
        _myself: ActorRef<MqttMsg>,
        msg: MqttMsg,
        _state: &mut MqttState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MqttMsg::Lost(e) => Err(e.into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MqttMsg>,
        state: &mut MqttState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = state.stop.send(true);
        Ok(())
    }
}

/// `{connected, subscribed, session_present}` for the admin API and tests.
fn set_status(rt: &TriggerRuntime, v: Value) {
    if let Ok(mut s) = rt.source_status.lock() {
        *s = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: Value) -> MqttConfig {
        serde_json::from_value(v).expect("config")
    }

    fn keys(c: &MqttConfig) -> Vec<String> {
        c.validate().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn validates_filters_sessions_and_versions() {
        let c = cfg(json!({"broker": "127.0.0.1", "subscriptions": [
            {"topic": "a/+/b", "qos": 1}, {"topic": "c/#"}]}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.port(), 1883);
        assert!(c.clean());
        assert_eq!(c.endpoint(), "mqtt 127.0.0.1:1883 [a/+/b@1,c/#@0]");
        let c = cfg(json!({"broker": "", "version": 4, "clean_session": false,
            "password": "p", "keep_alive": "0s",
            "subscriptions": [{"topic": "a/#/b", "qos": 3}, {"topic": "x+"}]}));
        assert_eq!(
            keys(&c),
            [
                "broker",
                "version",
                "subscriptions",
                "subscriptions",
                "subscriptions",
                "client_id",
                "password",
                "keep_alive"
            ]
        );
        let e = serde_json::from_value::<MqttConfig>(
            json!({"broker": "x", "subscriptions": [], "topic": "a"}),
        )
        .expect_err("unknown key");
        assert!(e.to_string().contains("topic"), "{e}");
    }

    #[test]
    fn session_flags_are_named_per_version() {
        let sub = json!([{"topic": "t", "qos": 1}]);
        // v3 knows `clean_session` only; `clean_start` and `session_expiry` are v5's.
        let c = cfg(
            json!({"broker": "h", "subscriptions": sub, "clean_start": false,
            "session_expiry": "1h", "client_id": "c"}),
        );
        assert_eq!(keys(&c), ["clean_start", "session_expiry"]);
        assert!(
            c.validate()[0].1.contains("clean_session"),
            "{:?}",
            c.validate()
        );
        // v5 knows `clean_start` only.
        let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
            "clean_session": true}));
        assert_eq!(keys(&c), ["clean_session"]);
        assert!(
            c.validate()[0].1.contains("clean_start"),
            "{:?}",
            c.validate()
        );
        // A persistent v5 session needs an expiry above zero and a client id.
        let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
            "clean_start": false}));
        assert_eq!(keys(&c), ["session_expiry", "client_id"]);
        assert!(
            c.validate()[1].1.contains("`clean_start = false`"),
            "{:?}",
            c.validate()
        );
        let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
            "clean_start": false, "client_id": "c", "session_expiry": "0s"}));
        assert_eq!(keys(&c), ["session_expiry"]);
        let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
            "session_expiry": "200years", "keep_alive": "2s"}));
        assert_eq!(keys(&c), ["session_expiry", "keep_alive"]);
        let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
            "clean_start": false, "client_id": "c", "session_expiry": "1h"}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.endpoint(), "mqtt5 h:1883 [t@1] persistent session");
        // A clean v5 session may still outlive its connection.
        let c = cfg(json!({"broker": "h", "version": 5, "subscriptions": sub,
            "session_expiry": "10s"}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
    }

    #[test]
    fn tls_keys_are_validated_and_change_the_default_port() {
        let sub = json!([{"topic": "t"}]);
        let c = cfg(json!({"broker": "h", "subscriptions": sub, "tls": {}}));
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.port(), 8883);
        assert_eq!(c.endpoint(), "mqtts h:8883 [t@0]");
        let c = cfg(
            json!({"broker": "h", "port": 1884, "version": 5, "subscriptions": sub,
            "tls": {"ca_file": "/ca.pem"}}),
        );
        assert_eq!(c.port(), 1884);
        assert_eq!(c.endpoint(), "mqtt5s h:1884 [t@0]");
        let c = cfg(json!({"broker": "h", "subscriptions": sub,
            "tls": {"client_cert_file": "/c.pem"}}));
        assert_eq!(keys(&c), ["tls.client_key_file"]);
        assert!(c.validate()[0].1.contains("tls.client_cert_file"));
        let c = cfg(json!({"broker": "h", "subscriptions": sub,
            "tls": {"ca_file": "", "client_key_file": "/k.pem"}}));
        assert_eq!(keys(&c), ["tls.ca_file", "tls.client_cert_file"]);
        let e = serde_json::from_value::<MqttConfig>(
            json!({"broker": "h", "subscriptions": sub, "tls": {"ca": "/x"}}),
        )
        .expect_err("unknown tls key");
        assert!(e.to_string().contains("ca"), "{e}");
    }

    #[test]
    fn unusable_tls_files_are_errors_naming_key_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let missing = dir.path().join("missing.pem");
        let with = |tls: Value| {
            cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}], "tls": tls}))
                .transport()
                .err()
                .expect("an error")
        };
        let e = with(json!({"ca_file": missing}));
        assert!(e.starts_with("tls.ca_file"), "{e}");
        assert!(e.contains(&missing.display().to_string()), "{e}");
        assert!(e.contains("cannot read"), "{e}");
        let e = with(json!({"ca_file": not_pem}));
        assert!(e.starts_with("tls.ca_file"), "{e}");
        assert!(e.contains("no PEM certificate"), "{e}");
        // The CA is read first; a readable one is needed to reach the client files.
        let e = with(json!({"ca_file": missing, "client_cert_file": not_pem,
            "client_key_file": not_pem}));
        assert!(e.starts_with("tls.ca_file"), "{e}");
        let plain = cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}]}));
        assert!(matches!(plain.transport(), Ok(Transport::Tcp)));
    }

    #[test]
    fn options_carry_session_credentials_and_manual_acks() {
        let c = cfg(json!({"broker": "h", "port": 1884, "client_id": "fixed",
            "clean_session": false, "keep_alive": "10s", "username": "u", "password": "p",
            "subscriptions": [{"topic": "t", "qos": 1}]}));
        let o = c.options("t");
        assert_eq!(o.client_id(), "fixed");
        assert!(!o.clean_session());
        assert!(o.manual_acks());
        assert_eq!(o.keep_alive(), Duration::from_secs(10));
        assert_eq!(o.credentials(), Some(("u".into(), "p".into())));
        assert_eq!(o.broker_address(), ("h".into(), 1884));
        let anon = cfg(json!({"broker": "h", "subscriptions": [{"topic": "t"}]}));
        assert!(anon
            .options("my trigger")
            .client_id()
            .starts_with("millgate-my_trigger-"));
    }

    #[test]
    fn v5_options_carry_clean_start_and_session_expiry() {
        let c = cfg(json!({"broker": "h", "version": 5, "client_id": "fixed",
            "clean_start": false, "session_expiry": "1h", "keep_alive": "10s",
            "username": "u", "password": "p", "subscriptions": [{"topic": "t", "qos": 1}]}));
        let o = c.options_v5("t");
        assert_eq!(o.client_id(), "fixed");
        assert!(!o.clean_start());
        assert!(o.manual_acks());
        assert_eq!(o.keep_alive(), Duration::from_secs(10));
        assert_eq!(o.credentials(), Some(("u".into(), "p".into())));
        assert_eq!(o.broker_address(), ("h".into(), 1883));
        let props = o.connect_properties().expect("connect properties");
        assert_eq!(props.session_expiry_interval, Some(3600));
        assert_eq!(props.topic_alias_max, Some(TOPIC_ALIAS_MAX));
        let clean = cfg(json!({"broker": "h", "version": 5, "subscriptions": [{"topic": "t"}]}));
        let o = clean.options_v5("t");
        assert!(o.clean_start());
        assert_eq!(
            o.connect_properties()
                .expect("props")
                .session_expiry_interval,
            None
        );
    }

    #[test]
    fn events_carry_the_message_fields() {
        let mut p = rumqttc::Publish::new("a/b", QoS::AtLeastOnce, br#"{"n": 1}"#.to_vec());
        p.pkid = 7;
        p.retain = true;
        let e = mqtt_event("t", &p);
        assert_eq!(e["payload"], "eyJuIjogMX0=");
        assert_eq!(e["data"], json!({"n": 1}));
        assert_eq!(e["topic"], "a/b");
        assert_eq!(e["qos"], 1);
        assert_eq!(e["pkid"], 7);
        assert_eq!(e["retain"], true);
        assert_eq!(e["dup"], false);
        assert!(e.get("properties").is_none());
        let p = rumqttc::Publish::new("a", QoS::AtMostOnce, vec![0xff]);
        assert!(mqtt_event("t", &p).get("data").is_none());
    }

    fn v5_client() -> v5::AsyncClient {
        v5::AsyncClient::new(v5::MqttOptions::new("c", "h", 1883), 10).0
    }

    #[tokio::test]
    async fn v5_events_carry_properties_and_the_ack_keeps_only_what_it_needs() {
        let props = v5p::PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(b"\x00corr")),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            subscription_identifiers: vec![2],
            content_type: Some("application/json".into()),
        };
        let mut p = v5p::Publish::new(
            "a/b",
            v5::mqttbytes::QoS::ExactlyOnce,
            br#"{"n": 1}"#.to_vec(),
            Some(props),
        );
        p.pkid = 9;
        p.dup = true;
        let m = Message::v5("t", &v5_client(), p).expect("message");
        assert_eq!(m.topic, "a/b");
        assert_eq!(m.qos, 2);
        let e = &m.event;
        assert_eq!(e["kind"], "mqtt");
        assert_eq!(e["topic"], "a/b");
        assert_eq!(e["data"], json!({"n": 1}));
        assert_eq!(e["qos"], 2);
        assert_eq!(e["pkid"], 9);
        assert_eq!(e["dup"], true);
        assert_eq!(
            e["properties"],
            json!({
                "payload_format_indicator": 1,
                "message_expiry_interval": 60,
                "response_topic": "replies/1",
                "correlation_data": "AGNvcnI=",
                "user_properties": [["k", "v1"], ["k", "v2"]],
                "subscription_identifiers": [2],
                "content_type": "application/json",
            })
        );
        let Ack::V5(_, kept) = &m.ack else {
            panic!("a v5 ack")
        };
        assert_eq!((kept.pkid, kept.qos as u8), (9, 2));
        assert!(kept.payload.is_empty() && kept.properties.is_none());

        let bare = v5p::Publish::new("x", v5::mqttbytes::QoS::AtMostOnce, vec![0xff], None);
        let m = Message::v5("t", &v5_client(), bare).expect("message");
        assert_eq!(
            m.event["properties"],
            json!({"user_properties": [], "subscription_identifiers": []})
        );
        assert!(m.event.get("data").is_none());
    }

    #[tokio::test]
    async fn a_v5_message_whose_alias_was_not_resolved_is_refused() {
        // rumqttc replaces an alias it knows by its topic; an empty topic is an alias it
        // does not know, which must not become a job with no topic.
        let props = v5p::PublishProperties {
            topic_alias: Some(4),
            ..Default::default()
        };
        let p = v5p::Publish::new(
            "",
            v5::mqttbytes::QoS::AtLeastOnce,
            b"x".to_vec(),
            Some(props),
        );
        let e = Message::v5("t", &v5_client(), p).err().expect("refused");
        assert!(e.contains("unknown topic alias 4"), "{e}");
    }

    #[test]
    fn refusals_name_the_reason_code() {
        let e = refused_v3("h:1", ConnectReturnCode::NotAuthorized);
        assert_eq!(
            e,
            "MQTT broker h:1 refused the connection: return code 5 (NotAuthorized)"
        );
        let e = refused_v5("h:1", v5p::ConnectReturnCode::BadUserNamePassword);
        assert!(e.ends_with("reason code 0x86 (BadUserNamePassword)"), "{e}");
        let e = v5_error(
            "h:1",
            Some("secret/#"),
            v5::ConnectionError::MqttState(v5::StateError::SubFail {
                reason: v5p::SubscribeReasonCode::NotAuthorized,
            }),
        );
        assert_eq!(
            e,
            "MQTT broker h:1 refused the subscription to `secret/#`: reason code 0x87 \
             (NotAuthorized)"
        );
        let e = v5_error(
            "h:1",
            None,
            v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
                reason_code: v5p::DisconnectReasonCode::SessionTakenOver,
                reason_string: None,
            }),
        );
        assert!(e.contains("0x8e (SessionTakenOver)"), "{e}");
    }

    #[test]
    fn an_mqtt_trigger_loads_through_the_common_config_path() {
        use crate::triggers::{TriggerConfig, TriggerSpec};
        let Value::Object(map) = json!({
            "name": "sensors", "kind": "mqtt", "runnable": "r", "order_by": ".topic",
            "broker": "127.0.0.1", "subscriptions": [{"topic": "s/#", "qos": 1}]
        }) else {
            unreachable!("object literal")
        };
        let t = TriggerConfig::from_map(map).expect("loads");
        assert!(matches!(t.spec, TriggerSpec::Mqtt(_)));
        assert!(t.spec.kind().push().is_none());
        assert_eq!(t.endpoint(), "mqtt 127.0.0.1:1883 [s/#@1]");
        let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
        assert_eq!(back, t);
        let Value::Object(map) = json!({
            "name": "v5", "kind": "mqtt", "runnable": "r", "version": 5,
            "broker": "h", "client_id": "c", "clean_start": false, "session_expiry": "1day",
            "tls": {"ca_file": "/ca.pem", "client_cert_file": "/c.pem", "client_key_file": "/k.pem"},
            "subscriptions": [{"topic": "s/#", "qos": 2}]
        }) else {
            unreachable!("object literal")
        };
        let t = TriggerConfig::from_map(map).expect("loads");
        let back = TriggerConfig::from_map(t.to_map()).expect("round trip");
        assert_eq!(back, t);
    }
}
