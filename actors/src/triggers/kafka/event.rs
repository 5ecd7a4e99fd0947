//! The event of one Kafka message, with an id that is the same every time the message is read.

use base64::Engine;
use rdkafka::message::{BorrowedMessage, Headers, Message, Timestamp};
use serde_json::{json, Map, Value};

use crate::model::event::Event;

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

pub(super) fn kafka_event(
    trigger: &str,
    group: &str,
    epoch: u64,
    m: &BorrowedMessage<'_>,
) -> Event {
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
