//! Events of MQTT messages (both versions) and the acknowledgement each message owes its broker.

use base64::Engine;
use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as v5p;
use serde_json::{json, Map, Value};

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

pub(super) fn mqtt_event(trigger: &str, p: &rumqttc::Publish) -> Value {
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
pub(super) struct Message {
    pub(super) topic: String,
    pub(super) qos: u8,
    pub(super) event: Value,
    /// Why the message cannot be run (a payload nested too deeply).
    pub(super) defect: Option<String>,
    pub(super) ack: Ack,
}

/// The puback/pubrec of one message: the connection's client and the packet, which is all
/// rumqttc needs for it (only its QoS and packet id are used; the payload is dropped).
pub(super) enum Ack {
    V3(rumqttc::AsyncClient, rumqttc::Publish),
    V5(v5::AsyncClient, v5p::Publish),
}

impl Ack {
    pub(super) fn pkid(&self) -> u16 {
        match self {
            Ack::V3(_, p) => p.pkid,
            Ack::V5(_, p) => p.pkid,
        }
    }

    pub(super) async fn send(&self, topic: &str, what: &str) {
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
    pub(super) fn v3(
        trigger: &str,
        client: &rumqttc::AsyncClient,
        mut p: rumqttc::Publish,
    ) -> Self {
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
    pub(super) fn v5(
        trigger: &str,
        client: &v5::AsyncClient,
        mut p: v5p::Publish,
    ) -> Result<Self, String> {
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
