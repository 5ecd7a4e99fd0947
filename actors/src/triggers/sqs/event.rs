//! The event of an SQS message.

use aws_sdk_sqs::types::Message;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::model::event::Event;

/// The event, and the receipt handle that deletes or extends the message. `Err`: a message
/// without an id or a receipt handle (no real queue sends one), which cannot be acknowledged.
pub(super) fn sqs_event(
    trigger: &str,
    queue_url: &str,
    msg: &Message,
) -> Result<(Event, String), String> {
    let id = msg.message_id().ok_or("a message without a MessageId")?;
    let handle = msg
        .receipt_handle()
        .ok_or("a message without a ReceiptHandle")?;
    let body = msg.body().unwrap_or_default();
    let mut event = Map::new();
    event.insert("kind".into(), json!("sqs"));
    event.insert("trigger".into(), json!(trigger));
    event.insert("queue_url".into(), json!(queue_url));
    event.insert("message_id".into(), json!(id));
    event.insert("body".into(), json!(body));
    let (data, defect) = crate::model::json::message_data(body.as_bytes());
    event.insert("data".into(), data.unwrap_or(Value::Null));
    let mut attributes = Map::new();
    let mut receive_count = None;
    for (name, value) in msg.attributes().into_iter().flatten() {
        if name.as_str() == "ApproximateReceiveCount" {
            receive_count = value.parse::<u64>().ok();
        }
        attributes.insert(name.as_str().to_string(), json!(value));
    }
    event.insert("attributes".into(), Value::Object(attributes));
    let mut message_attributes = Map::new();
    for (name, value) in msg.message_attributes().into_iter().flatten() {
        let mut v = Map::new();
        v.insert("data_type".into(), json!(value.data_type()));
        if let Some(s) = value.string_value() {
            v.insert("string_value".into(), json!(s));
        }
        if let Some(b) = value.binary_value() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(b.as_ref());
            v.insert("binary_value".into(), json!(b64));
        }
        message_attributes.insert(name.clone(), Value::Object(v));
    }
    event.insert(
        "message_attributes".into(),
        Value::Object(message_attributes),
    );
    event.insert("receive_count".into(), json!(receive_count));
    // The MessageId names the message for as long as it exists (every receive of it hands the
    // same id with a new receipt handle): a redelivery after a crash or an expired visibility
    // timeout maps to the same event and is deduplicated.
    let event_id = format!("sqs:{trigger}:{queue_url}:{id}");
    Ok((
        Event::deterministic(event_id, Value::Object(event)).with_defect(defect),
        handle.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName};

    #[test]
    fn an_event_carries_body_data_attributes_and_receive_count() {
        let msg = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh")
            .body(r#"{"order": 7}"#)
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "3")
            .attributes(MessageSystemAttributeName::MessageGroupId, "g1")
            .message_attributes(
                "bin",
                MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0u8, 255]))
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "who",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("ada")
                    .build()
                    .unwrap(),
            )
            .build();
        let (event, handle) = sqs_event("t", "http://q/1/orders", &msg).unwrap();
        assert_eq!(handle, "rh");
        assert_eq!(event.id, "sqs:t:http://q/1/orders:m-1");
        let p = &event.payload;
        assert_eq!(p["data"], json!({"order": 7}));
        assert_eq!(p["body"], json!(r#"{"order": 7}"#));
        assert_eq!(p["receive_count"], json!(3));
        assert_eq!(p["attributes"]["MessageGroupId"], json!("g1"));
        assert_eq!(
            p["message_attributes"]["who"],
            json!({"data_type": "String", "string_value": "ada"})
        );
        assert_eq!(
            p["message_attributes"]["bin"]["binary_value"],
            json!("AP8=")
        );
    }

    #[test]
    fn a_body_that_is_not_json_has_null_data() {
        let msg = Message::builder()
            .message_id("m")
            .receipt_handle("rh")
            .body("plain text")
            .build();
        let (event, _) = sqs_event("t", "u", &msg).unwrap();
        assert_eq!(event.payload["data"], Value::Null);
        assert_eq!(event.payload["receive_count"], Value::Null);
    }
}
