//! Events of core NATS and JetStream messages.

use async_nats::jetstream::{self};
use base64::Engine;

use serde_json::{json, Map, Value};

use crate::model::event::Event;

// ---------------------------------------------------------------------------------------------
// Events

fn headers_json(headers: Option<&async_nats::HeaderMap>) -> Value {
    let mut out = Map::new();
    for (name, values) in headers.into_iter().flat_map(|h| h.iter()) {
        let vals: Vec<Value> = values.iter().map(|v| json!(v.as_str())).collect();
        out.insert(name.to_string(), Value::Array(vals));
    }
    Value::Object(out)
}

/// The fields core and JetStream events share.
/// Also returns why the event cannot be run, when its payload is JSON nested too deeply.
pub(super) fn base_event(
    trigger: &str,
    msg: &async_nats::Message,
    reply: Option<&str>,
) -> (Map<String, Value>, Option<String>) {
    let mut event = Map::new();
    event.insert("kind".into(), json!("nats"));
    event.insert("trigger".into(), json!(trigger));
    event.insert(
        "payload".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(&msg.payload)),
    );
    let (data, defect) = crate::model::json::message_data(&msg.payload);
    if let Some(data) = data {
        event.insert("data".into(), data);
    }
    event.insert("subject".into(), json!(msg.subject.as_str()));
    event.insert("reply".into(), json!(reply));
    event.insert("headers".into(), headers_json(msg.headers.as_ref()));
    (event, defect)
}

pub(super) fn jetstream_event(
    trigger: &str,
    stream_created: i64,
    msg: &jetstream::Message,
) -> Result<Event, String> {
    let info = msg
        .info()
        .map_err(|e| format!("JetStream message without metadata: {e}"))?;
    let (mut event, defect) = base_event(trigger, &msg.message, None);
    let published = i64::try_from(info.published.unix_timestamp_nanos())
        .map(chrono::DateTime::from_timestamp_nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
        .ok();
    event.insert("stream".into(), json!(info.stream));
    event.insert("consumer".into(), json!(info.consumer));
    event.insert("stream_sequence".into(), json!(info.stream_sequence));
    event.insert("consumer_sequence".into(), json!(info.consumer_sequence));
    event.insert("delivered".into(), json!(info.delivered));
    event.insert("published".into(), json!(published));
    event.insert("pending".into(), json!(info.pending));
    // Stream + sequence names the message for as long as the stream exists, so a redelivery
    // (after a crash or an expired ack_wait) maps to the same event and is deduplicated.
    // The stream's creation time tells a stream deleted and created again under the same name
    // (its sequences restart at 1) from the one whose messages the dedup tree remembers.
    let id = format!(
        "nats:{trigger}:{}:{stream_created}:{}",
        info.stream, info.stream_sequence
    );
    Ok(Event::deterministic(id, Value::Object(event)).with_defect(defect))
}
