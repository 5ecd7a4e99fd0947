//! Webhook triggers: `POST /hooks/{name}`, authenticated by the trigger's token (as
//! `Authorization: Bearer <token>` or `?token=<token>`).
//!
//! Event (`kind = "webhook"`): `body` (parsed JSON, form fields, text, or null for binary),
//! `body_format` (`json | form | text | binary | empty`), `raw_string` (the body when it is
//! UTF-8), `payload` (base64, only for non-UTF-8 bodies), `query`, `headers` (lower-case names,
//! credentials removed), `method`, `content_type`, and `cloudevent` (the CloudEvents envelope
//! without `data`, from a structured `application/cloudevents+json` body or `ce-*` headers).

use std::time::Duration;

use super::delivery::{DedupKey, EventId};
use super::http::RouteTable;
use super::kind::{Mode, TriggerKind};
use super::push::{IncomingRequest, PushKind, Rejection};
use crate::preprocess::DefaultArgs;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default)]
    pub mode: Mode,
    /// Required from callers when set. A webhook without a token is open to anyone who can reach
    /// the listener; `millgate check` warns about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Overrides `[server] sync_timeout` for this trigger.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub sync_timeout: Option<Duration>,
    /// A jq expression over the event whose value identifies it: a second event with the same
    /// value within `[store] dedup_ttl` makes no job and is answered with the first one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<DedupKey>,
}

impl WebhookConfig {
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if self.token.as_deref() == Some("") {
            issues.push((
                "token".into(),
                "is empty; remove it for an open webhook or set a secret".into(),
            ));
        }
        if self.sync_timeout == Some(Duration::ZERO) {
            issues.push(("sync_timeout".into(), "must be longer than 0s".into()));
        }
        issues
    }

    /// Checks the caller's token. Shared with `GET /jobs/{id}` for this trigger's jobs.
    pub fn check_token(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
    ) -> Result<(), String> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let presented = bearer(headers).or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.clone())
        });
        match presented {
            None => Err(
                "missing token: send `Authorization: Bearer <token>` or `?token=<token>`".into(),
            ),
            // Compared through digests, so neither the token's content nor its length shows
            // in the time taken.
            Some(t)
                if bool::from(crate::http_auth::secret_eq(
                    t.as_bytes(),
                    expected.as_bytes(),
                )) =>
            {
                Ok(())
            }
            Some(_) => Err("invalid token".into()),
        }
    }
}

impl TriggerKind for WebhookConfig {
    fn validate(&self, _trigger: &str, _routes: &mut RouteTable) -> Vec<(String, String)> {
        WebhookConfig::validate(self)
    }

    fn endpoint(&self, trigger: &str) -> String {
        format!("POST /hooks/{trigger}")
    }

    fn mode(&self) -> Option<Mode> {
        Some(self.mode)
    }

    fn default_args(&self) -> DefaultArgs {
        body_args
    }

    fn push(&self) -> Option<&dyn PushKind> {
        Some(self)
    }
}

impl PushKind for WebhookConfig {
    fn authorize(&self, req: &IncomingRequest) -> Result<(), String> {
        self.check_token(&req.headers, &req.query)
    }

    fn authorize_head(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
    ) -> Result<(), String> {
        self.check_token(headers, query)
    }

    fn authorize_reader(&self, headers: &HeaderMap, query: &[(String, String)]) -> bool {
        self.check_token(headers, query).is_ok()
    }

    fn event_id(
        &self,
        trigger: &str,
        req: &IncomingRequest,
        event: &Value,
    ) -> Result<EventId, Rejection> {
        super::delivery::event_id(trigger, self.dedup_key.as_ref(), None, req, event)
    }

    fn event(&self, trigger: &str, req: &IncomingRequest) -> Result<Value, Rejection> {
        let mut event = base_event("webhook", trigger, req, &["authorization"], &["token"])?;
        event.insert("method".into(), json!(req.method.as_str()));
        Ok(Value::Object(event))
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn sync_timeout(&self) -> Option<Duration> {
        self.sync_timeout
    }
}

/// `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The fields webhook and http events share: body, raw_string, payload, query, headers,
/// content_type, cloudevent. `hide_headers` / `hide_query` are credentials kept out of the
/// event (it is stored with the job and shown in the dashboard).
pub fn base_event(
    kind: &str,
    trigger: &str,
    req: &IncomingRequest,
    hide_headers: &[&str],
    hide_query: &[&str],
) -> Result<Map<String, Value>, Rejection> {
    let parsed = parse_body(&req.headers, &req.body)?;
    let mut event = Map::new();
    event.insert("kind".into(), json!(kind));
    event.insert("trigger".into(), json!(trigger));
    event.insert("body".into(), parsed.body);
    event.insert("body_format".into(), json!(parsed.format));
    event.insert(
        "raw_string".into(),
        parsed.raw_string.map_or(Value::Null, Value::String),
    );
    if let Some(p) = parsed.payload {
        event.insert("payload".into(), json!(p));
    }
    let mut query = Map::new();
    for (k, v) in &req.query {
        if !hide_query.contains(&k.as_str()) {
            query.insert(k.clone(), json!(v));
        }
    }
    event.insert("query".into(), Value::Object(query));
    event.insert(
        "headers".into(),
        Value::Object(header_map(&req.headers, hide_headers)),
    );
    event.insert(
        "content_type".into(),
        req.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map_or(Value::Null, |s| json!(s)),
    );
    let cloudevent = parsed
        .cloudevent
        .or_else(|| binary_cloudevent(&req.headers));
    if let Some(ce) = cloudevent {
        event.insert("cloudevent".into(), ce);
    }
    Ok(event)
}

fn header_map(headers: &HeaderMap, hide: &[&str]) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        if hide.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.get_mut(name) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(&value);
            }
            _ => {
                out.insert(name.to_string(), Value::String(value));
            }
        }
    }
    out
}

struct ParsedBody {
    body: Value,
    format: &'static str,
    raw_string: Option<String>,
    payload: Option<String>,
    cloudevent: Option<Value>,
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<ParsedBody, Rejection> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    if body.is_empty() {
        return Ok(ParsedBody {
            body: Value::Null,
            format: "empty",
            raw_string: None,
            payload: None,
            cloudevent: None,
        });
    }
    let text = std::str::from_utf8(body).ok();
    let raw_string = text.map(str::to_string);
    let json_body = |text: Option<&str>| -> Result<Value, Rejection> {
        let text = text.ok_or_else(|| {
            Rejection::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "JSON body is not valid UTF-8",
            )
        })?;
        crate::model::json::parse(text.as_bytes()).map_err(json_rejection)
    };
    match mime.as_str() {
        "application/cloudevents-batch+json" => Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "batched CloudEvents are not supported; send one event per request",
        )),
        "application/cloudevents+json" => {
            let mut envelope = match json_body(text)? {
                Value::Object(m) => m,
                _ => {
                    return Err(Rejection::new(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        "a CloudEvent must be a JSON object",
                    ))
                }
            };
            let data = match (envelope.remove("data"), envelope.remove("data_base64")) {
                (Some(d), _) => d,
                (None, Some(b64)) => json!({"data_base64": b64}),
                (None, None) => Value::Null,
            };
            Ok(ParsedBody {
                body: data,
                format: "json",
                raw_string,
                payload: None,
                cloudevent: Some(Value::Object(envelope)),
            })
        }
        "multipart/form-data" => Err(Rejection::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "multipart/form-data is not supported; send JSON, a form, text or raw bytes",
        )),
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|e| {
                Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("bad form body: {e}"),
                )
            })?;
            let mut fields = Map::new();
            for (k, v) in pairs {
                fields.insert(k, Value::String(v));
            }
            Ok(ParsedBody {
                body: Value::Object(fields),
                format: "form",
                raw_string,
                payload: None,
                cloudevent: None,
            })
        }
        m if m == "application/json" || m.ends_with("+json") => Ok(ParsedBody {
            body: json_body(text)?,
            format: "json",
            raw_string,
            payload: None,
            cloudevent: None,
        }),
        m if m.starts_with("text/") || m.ends_with("/xml") => Ok(ParsedBody {
            body: text.map_or(Value::Null, |t| json!(t)),
            format: if text.is_some() { "text" } else { "binary" },
            payload: text
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(body)),
            raw_string,
            cloudevent: None,
        }),
        _ => match text {
            // No (or an unknown) content type: JSON if it parses, else text, else bytes.
            Some(t) => match crate::model::json::parse(t.as_bytes()) {
                Err(e @ crate::model::json::JsonError::TooDeep { .. }) => Err(json_rejection(e)),
                Ok(v) if mime.is_empty() => Ok(ParsedBody {
                    body: v,
                    format: "json",
                    raw_string,
                    payload: None,
                    cloudevent: None,
                }),
                _ => Ok(ParsedBody {
                    body: json!(t),
                    format: "text",
                    raw_string,
                    payload: None,
                    cloudevent: None,
                }),
            },
            None => Ok(ParsedBody {
                body: Value::Null,
                format: "binary",
                raw_string: None,
                payload: Some(base64::engine::general_purpose::STANDARD.encode(body)),
                cloudevent: None,
            }),
        },
    }
}

/// 422 for JSON nested past `[server] max_json_depth` (well-formed, refused), 400 otherwise.
fn json_rejection(e: crate::model::json::JsonError) -> Rejection {
    match e {
        crate::model::json::JsonError::TooDeep { .. } => Rejection::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_deep",
            format!("body refused: {e}"),
        ),
        crate::model::json::JsonError::Invalid(m) => Rejection::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("body is not valid JSON: {m}"),
        ),
    }
}

/// CloudEvents binary mode: the envelope travels in `ce-*` headers.
fn binary_cloudevent(headers: &HeaderMap) -> Option<Value> {
    let mut envelope = Map::new();
    for (name, value) in headers {
        if let Some(attr) = name.as_str().strip_prefix("ce-") {
            envelope.insert(
                attr.to_string(),
                json!(String::from_utf8_lossy(value.as_bytes())),
            );
        }
    }
    (envelope.contains_key("id") && envelope.contains_key("specversion"))
        .then_some(Value::Object(envelope))
}

/// Windmill's default args for webhook and http events: an object body's fields; a CloudEvent's
/// data plus `WEBHOOK__METADATA__`; text as `raw_string`; anything else under `body`.
pub fn body_args(event: &Value) -> Value {
    let body = event.get("body").cloned().unwrap_or(Value::Null);
    let format = event
        .get("body_format")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut args = match (format, body) {
        (_, Value::Object(m)) => m,
        ("text", _) => {
            let mut m = Map::new();
            m.insert(
                "raw_string".into(),
                event.get("raw_string").cloned().unwrap_or(Value::Null),
            );
            m
        }
        ("binary", _) => {
            let mut m = Map::new();
            m.insert(
                "payload".into(),
                event.get("payload").cloned().unwrap_or(Value::Null),
            );
            m
        }
        ("empty", _) => Map::new(),
        (_, other) => {
            let mut m = Map::new();
            m.insert("body".into(), other);
            m
        }
    };
    if let Some(ce) = event.get("cloudevent") {
        args.insert("WEBHOOK__METADATA__".into(), ce.clone());
    }
    Value::Object(args)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
