//! The event of a Pub/Sub message, pulled (`kind = "pubsub"`) or pushed (`kind =
//! "pubsub_push"`): the same fields either way.

use base64::Engine;
use gcloud_pubsub::subscriber::ReceivedMessage;
use serde_json::{json, Map, Value};

use crate::model::event::Event;

/// One message's fields, as either delivery gives them.
pub(super) struct Message<'a> {
    /// The full subscription name.
    pub subscription: &'a str,
    pub message_id: &'a str,
    /// RFC 3339.
    pub publish_time: Option<String>,
    pub ordering_key: Option<&'a str>,
    pub attributes: Map<String, Value>,
    pub data: &'a [u8],
    pub delivery_attempt: Option<u64>,
}

impl Message<'_> {
    /// What identifies the message across deliveries: subscription + message id + publish
    /// time (an emulator started again numbers its message ids from the start).
    pub(super) fn delivery_id(&self) -> String {
        format!(
            "{}:{}:{}",
            self.subscription,
            self.message_id,
            self.publish_time.as_deref().unwrap_or("-")
        )
    }

    /// The event's payload, and why it cannot be run when its data is JSON nested past the
    /// limit.
    pub(super) fn payload(&self, kind: &str, trigger: &str) -> (Value, Option<String>) {
        let mut event = Map::new();
        event.insert("kind".into(), json!(kind));
        event.insert("trigger".into(), json!(trigger));
        event.insert("subscription".into(), json!(self.subscription));
        event.insert("message_id".into(), json!(self.message_id));
        event.insert("publish_time".into(), json!(self.publish_time));
        let ordering_key = self.ordering_key.filter(|k| !k.is_empty());
        event.insert("ordering_key".into(), json!(ordering_key));
        event.insert("attributes".into(), Value::Object(self.attributes.clone()));
        event.insert(
            "payload".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(self.data)),
        );
        let (data, defect) = crate::model::json::message_data(self.data);
        event.insert("data".into(), data.unwrap_or(Value::Null));
        event.insert("delivery_attempt".into(), json!(self.delivery_attempt));
        (Value::Object(event), defect)
    }
}

/// The event of a pulled message.
pub(super) fn pubsub_event(trigger: &str, subscription: &str, m: &ReceivedMessage) -> Event {
    let msg = &m.message;
    let publish_time = msg.publish_time.as_ref().and_then(|t| {
        let nanos = u32::try_from(t.nanos).ok()?;
        chrono::DateTime::from_timestamp(t.seconds, nanos)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    });
    let message = Message {
        subscription,
        message_id: &msg.message_id,
        publish_time,
        ordering_key: Some(&msg.ordering_key),
        attributes: msg
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect(),
        data: &msg.data,
        delivery_attempt: m.delivery_attempt.map(|a| a as u64),
    };
    let (payload, defect) = message.payload("pubsub", trigger);
    let id = format!("pubsub:{trigger}:{}", message.delivery_id());
    Event::deterministic(id, payload).with_defect(defect)
}
