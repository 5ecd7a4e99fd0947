use super::event::body_args;
use super::WebhookConfig;
use crate::triggers::push::{IncomingRequest, PushKind};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use axum::http::{HeaderValue, Method};

fn req(content_type: Option<&str>, body: &[u8]) -> IncomingRequest {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert("content-type", HeaderValue::from_str(ct).unwrap());
    }
    headers.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
    IncomingRequest {
        method: Method::POST,
        path: "/hooks/w".into(),
        query: vec![("token".into(), "s3cret".into()), ("a".into(), "1".into())],
        headers,
        body: bytes::Bytes::copy_from_slice(body),
        params: Default::default(),
        body_permit: None,
    }
}

fn event(content_type: Option<&str>, body: &[u8]) -> Value {
    WebhookConfig::default()
        .event("w", &req(content_type, body))
        .unwrap()
}

#[test]
fn json_form_text_binary_bodies() {
    let e = event(Some("application/json"), br#"{"x":1}"#);
    assert_eq!(e["body"], json!({"x": 1}));
    assert_eq!(body_args(&e), json!({"x": 1}));
    assert_eq!(
        e["query"],
        json!({"a": "1"}),
        "token must not reach the event"
    );
    assert!(e["headers"].get("authorization").is_none());

    let e = event(
        Some("application/x-www-form-urlencoded"),
        b"a=1&b=two+words",
    );
    assert_eq!(e["body"], json!({"a": "1", "b": "two words"}));

    let e = event(Some("text/plain"), b"hello");
    assert_eq!(body_args(&e), json!({"raw_string": "hello"}));

    let e = event(Some("application/octet-stream"), &[0xff, 0x00, 0x10]);
    assert_eq!(e["payload"], json!("/wAQ"));
    assert_eq!(body_args(&e), json!({"payload": "/wAQ"}));

    let e = event(Some("application/json"), b"[1,2]");
    assert_eq!(body_args(&e), json!({"body": [1, 2]}));
}

#[test]
fn bad_json_is_a_clear_400() {
    let r = WebhookConfig::default()
        .event("w", &req(Some("application/json"), b"{nope"))
        .unwrap_err();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message.contains("not valid JSON"));
}

#[test]
fn cloudevents_structured_and_binary() {
    let e = event(
        Some("application/cloudevents+json"),
        br#"{"specversion":"1.0","id":"1","type":"t","source":"s","data":{"k":2}}"#,
    );
    assert_eq!(e["body"], json!({"k": 2}));
    assert_eq!(e["cloudevent"]["type"], json!("t"));
    let args = body_args(&e);
    assert_eq!(args["k"], json!(2));
    assert_eq!(args["WEBHOOK__METADATA__"]["id"], json!("1"));

    let mut r = req(Some("application/json"), br#"{"k":3}"#);
    r.headers.insert("ce-id", HeaderValue::from_static("9"));
    r.headers
        .insert("ce-specversion", HeaderValue::from_static("1.0"));
    let e = WebhookConfig::default().event("w", &r).unwrap();
    assert_eq!(e["cloudevent"], json!({"id": "9", "specversion": "1.0"}));
}

#[test]
fn token_by_header_or_query_constant_time() {
    let w = WebhookConfig {
        token: Some("s3cret".into()),
        ..Default::default()
    };
    assert!(w.authorize(&req(None, b"")).is_ok());
    let mut r = req(None, b"");
    r.headers.remove("authorization");
    assert!(w.authorize(&r).is_ok(), "query token");
    r.query.clear();
    assert!(w.authorize(&r).unwrap_err().contains("missing"));
    r.headers
        .insert("authorization", HeaderValue::from_static("Bearer nope"));
    assert_eq!(w.authorize(&r).unwrap_err(), "invalid token");
}
