//! The event of a Pub/Sub message.

use base64::Engine;
use gcloud_pubsub::subscriber::ReceivedMessage;
use serde_json::{json, Map, Value};

use crate::model::event::Event;

/// The event of a received message. The id is subscription + message id + publish time: an
/// emulator started again numbers its message ids from the start.
pub(super) fn pubsub_event(trigger: &str, subscription: &str, m: &ReceivedMessage) -> Event {
    let msg = &m.message;
    let publish_time = msg.publish_time.as_ref().and_then(|t| {
        let nanos = u32::try_from(t.nanos).ok()?;
        chrono::DateTime::from_timestamp(t.seconds, nanos)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    });
    let mut event = Map::new();
    event.insert("kind".into(), json!("pubsub"));
    event.insert("trigger".into(), json!(trigger));
    event.insert("subscription".into(), json!(subscription));
    event.insert("message_id".into(), json!(msg.message_id));
    event.insert("publish_time".into(), json!(publish_time));
    let ordering_key = (!msg.ordering_key.is_empty()).then_some(msg.ordering_key.as_str());
    event.insert("ordering_key".into(), json!(ordering_key));
    let attributes: Map<String, Value> = msg
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    event.insert("attributes".into(), Value::Object(attributes));
    event.insert(
        "payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(&msg.data)),
    );
    let (data, defect) = crate::model::json::message_data(&msg.data);
    event.insert("data".into(), data.unwrap_or(Value::Null));
    event.insert("delivery_attempt".into(), json!(m.delivery_attempt));
    let id = format!(
        "pubsub:{trigger}:{subscription}:{}:{}",
        msg.message_id,
        publish_time.as_deref().unwrap_or("-")
    );
    Event::deterministic(id, Value::Object(event)).with_defect(defect)
}
