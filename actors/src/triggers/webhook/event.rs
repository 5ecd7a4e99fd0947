//! A pushed HTTP request as an event: body parsing (JSON within the depth limit, forms, text,
//! binary), headers without credentials, CloudEvents; and Windmill's mapping of such an event
//! to a job's args (`body_args`).

use crate::triggers::push::{IncomingRequest, Rejection};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde_json::{json, Map, Value};

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
