//! Pub/Sub push delivery (`kind = "pubsub_push"`): a route on the shared listener that takes
//! Pub/Sub's push envelope. Each push's OIDC token is verified (`oidc.rs`) before its body is
//! read; the answer is `2xx` (Pub/Sub's ack) once the job is durably queued, or with `mode =
//! "sync"` once it succeeded (a dead-lettered one is acked too unless `on_dead_letter =
//! "nack"`). Anything else is a nack: Pub/Sub pushes the message again, and the event id
//! (subscription + message id + publish time, as for pulled messages) makes the repeat a
//! duplicate of the first delivery, answered with its jobs.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::config::PubSubDeadLetter;
use super::event::Message;
use super::oidc::{self, Expected, GOOGLE_CERTS, GOOGLE_ISSUERS};
use crate::preprocess::{DefaultArgs, KeyExpr};
use crate::triggers::delivery::EventId;
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{Mode, TriggerKind};
use crate::triggers::push::{IncomingRequest, PushKind, Rejection};
use crate::triggers::webhook::bearer;

/// `kind = "pubsub_push"`: the endpoint of a push subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubPushConfig {
    /// The path Pub/Sub pushes to (`POST`), on the shared listener.
    pub path: String,
    #[serde(default)]
    pub mode: Mode,
    /// Refuse pushes without a valid OIDC token. Only turn off behind something that checks.
    #[serde(default = "yes")]
    pub verify: bool,
    /// The token's `aud`: the push subscription's audience (by default the endpoint's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The service account the push subscription signs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The token's issuer; Google's (`https://accounts.google.com` or `accounts.google.com`)
    /// by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Where the signing keys are published (a JWKS); Google's by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs_url: Option<String>,
    /// Only pushes of this subscription (`projects/<p>/subscriptions/<s>`) are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<String>,
    /// With `mode = "sync"`: a dead-lettered job's push is acked (`2xx`) or nacked (`500`, for
    /// the subscription's own dead-letter policy).
    #[serde(default)]
    pub on_dead_letter: PubSubDeadLetter,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub sync_timeout: Option<Duration>,
}

fn yes() -> bool {
    true
}

impl PubSubPushConfig {
    pub fn validate(&self, trigger: &str, routes: &mut RouteTable) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        let mut issue = |k: &str, m: String| issues.push((k.to_string(), m));
        if let Err(m) = routes.insert(&axum::http::Method::POST, &self.path, trigger) {
            issue("path", m);
        }
        if self.verify {
            let hint =
                "is needed to verify pushes (or set `verify = false` behind a proxy that does)";
            if self.audience.as_deref().is_none_or(str::is_empty) {
                issue(
                    "audience",
                    format!("{hint}; it is the push subscription's audience, by default the endpoint's URL"),
                );
            }
            if self.email.as_deref().is_none_or(str::is_empty) {
                issue(
                    "email",
                    format!("{hint}; it is the service account the push subscription signs as"),
                );
            }
        }
        if let Some(url) = &self.certs_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                issue("certs_url", format!("`{url}` is not an http(s) URL"));
            }
        }
        if let Some(s) = &self.subscription {
            let parts: Vec<&str> = s.split('/').collect();
            if !matches!(parts.as_slice(), ["projects", p, "subscriptions", id] if !p.is_empty() && !id.is_empty())
            {
                issue(
                    "subscription",
                    "must be `projects/<project>/subscriptions/<id>`".into(),
                );
            }
        }
        if self.sync_timeout == Some(Duration::ZERO) {
            issue("sync_timeout", "must be longer than 0s".into());
        }
        issues
    }

    fn expected(&self) -> Expected<'_> {
        Expected {
            certs_url: self.certs_url.as_deref().unwrap_or(GOOGLE_CERTS),
            issuers: match &self.issuer {
                Some(i) => vec![i.as_str()],
                None => GOOGLE_ISSUERS.to_vec(),
            },
            audience: self.audience.as_deref().unwrap_or_default(),
            email: self.email.as_deref().unwrap_or_default(),
        }
    }
}

impl TriggerKind for PubSubPushConfig {
    fn validate(&self, trigger: &str, routes: &mut RouteTable) -> Vec<(String, String)> {
        PubSubPushConfig::validate(self, trigger, routes)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        match (&self.email, self.verify) {
            (Some(email), true) => format!("POST {} (Pub/Sub push signed by {email})", self.path),
            _ => format!("POST {} (Pub/Sub push, unverified)", self.path),
        }
    }

    fn mode(&self) -> Option<Mode> {
        Some(self.mode)
    }

    fn order_by(&self, configured: Option<&str>) -> Option<Result<KeyExpr, String>> {
        super::ordering_key_order(configured)
    }

    fn order_by_expr(&self, configured: Option<&str>) -> Option<String> {
        super::ordering_key_order_expr(configured)
    }

    /// As for pulled messages, with `delivery_type = "push"`.
    fn default_args(&self) -> DefaultArgs {
        |event| super::windmill_args(event, "push")
    }

    fn push(&self) -> Option<&dyn crate::triggers::push::PushKind> {
        Some(self)
    }

    fn http_route(&self) -> Option<(&str, &str)> {
        Some(("post", &self.path))
    }

    fn warnings(&self, trigger: &str) -> Vec<String> {
        if self.verify {
            return Vec::new();
        }
        vec![format!(
            "trigger `{trigger}`: Pub/Sub push with `verify = false`; anyone who can reach the listener can push messages"
        )]
    }
}

impl PushKind for PubSubPushConfig {
    /// The token does not depend on the body: it was checked before the body was read
    /// ([`PushKind::authorize_head`]), the only way a request reaches the trigger.
    fn authorize(&self, _req: &IncomingRequest) -> Result<(), String> {
        Ok(())
    }

    fn authorize_head(
        &self,
        headers: &HeaderMap,
        _query: &[(String, String)],
    ) -> Result<(), String> {
        if !self.verify {
            return Ok(());
        }
        let token = bearer(headers).ok_or(
            "missing token: Pub/Sub push subscriptions send `Authorization: Bearer <OIDC token>` when authentication is enabled on them",
        )?;
        oidc::verify(&token, &self.expected())
    }

    fn prepare<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>> {
        if !self.verify {
            return None;
        }
        let kid = oidc::key_id(&bearer(headers)?)?;
        Some(Box::pin(async move {
            oidc::refresh(self.expected().certs_url, &kid).await;
        }))
    }

    /// A token proves one push, not the right to read jobs later (the admin API reads them).
    fn authorize_reader(&self, _headers: &HeaderMap, _query: &[(String, String)]) -> bool {
        false
    }

    fn event(&self, trigger: &str, req: &IncomingRequest) -> Result<Value, Rejection> {
        let envelope = Envelope::parse(&req.body)?;
        if let Some(only) = &self.subscription {
            if envelope.subscription != *only {
                return Err(Rejection::new(
                    StatusCode::FORBIDDEN,
                    "wrong_subscription",
                    format!(
                        "this endpoint takes pushes of `{only}`, not of `{}`",
                        envelope.subscription
                    ),
                ));
            }
        }
        let message = envelope.message();
        let (payload, defect) = message.payload("pubsub_push", trigger);
        match defect {
            None => Ok(payload),
            Some(why) => Err(Rejection::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_payload",
                why,
            )),
        }
    }

    fn event_id(
        &self,
        trigger: &str,
        req: &IncomingRequest,
        event: &Value,
    ) -> Result<EventId, Rejection> {
        let field = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or("-");
        let delivery = format!(
            "{}:{}:{}",
            field("subscription"),
            field("message_id"),
            field("publish_time")
        );
        crate::triggers::delivery::event_id(trigger, None, Some(delivery), req, event)
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn sync_timeout(&self) -> Option<Duration> {
        self.sync_timeout
    }

    fn dead_letter_status(&self) -> StatusCode {
        match self.on_dead_letter {
            PubSubDeadLetter::Ack => StatusCode::OK,
            PubSubDeadLetter::Nack => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Pub/Sub's push body: `{"message": {"data", "attributes", "messageId", "publishTime",
/// "orderingKey"}, "subscription", "deliveryAttempt"}` (the message's fields also come in
/// snake_case).
struct Envelope {
    subscription: String,
    message_id: String,
    publish_time: Option<String>,
    ordering_key: Option<String>,
    attributes: Map<String, Value>,
    data: Vec<u8>,
    delivery_attempt: Option<u64>,
}

impl Envelope {
    fn parse(body: &[u8]) -> Result<Self, Rejection> {
        let bad = |m: String| Rejection::new(StatusCode::BAD_REQUEST, "bad_envelope", m);
        let value = crate::model::json::parse(body)
            .map_err(|e| bad(format!("the body is not a Pub/Sub push envelope: {e}")))?;
        let message = value
            .get("message")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("the envelope has no `message` object".into()))?;
        let text = |camel: &str, snake: &str| {
            message
                .get(camel)
                .or_else(|| message.get(snake))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let message_id = text("messageId", "message_id")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| bad("the message has no `messageId`".into()))?;
        let subscription = value
            .get("subscription")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the envelope has no `subscription`".into()))?
            .to_string();
        let data = match message.get("data") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(b64)) => {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                    .map_err(|e| bad(format!("the message's `data` is not base64: {e}")))?
            }
            Some(_) => return Err(bad("the message's `data` is not a base64 string".into())),
        };
        let attributes = match message.get("attributes") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) if a.values().all(Value::is_string) => a.clone(),
            Some(_) => {
                return Err(bad(
                    "the message's `attributes` are not a map of strings".into()
                ))
            }
        };
        Ok(Self {
            subscription,
            message_id,
            publish_time: text("publishTime", "publish_time"),
            ordering_key: text("orderingKey", "ordering_key"),
            attributes,
            data,
            delivery_attempt: value.get("deliveryAttempt").and_then(Value::as_u64),
        })
    }

    fn message(&self) -> Message<'_> {
        Message {
            subscription: &self.subscription,
            message_id: &self.message_id,
            publish_time: self.publish_time.clone(),
            ordering_key: self.ordering_key.as_deref(),
            attributes: self.attributes.clone(),
            data: &self.data,
            delivery_attempt: self.delivery_attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_read_in_either_case_and_refused_with_reasons() {
        let body = br#"{"message": {"data": "eyJhIjogMX0=", "attributes": {"k": "v"},
            "messageId": "7", "message_id": "7", "publishTime": "2026-12-05T10:00:00.123Z",
            "orderingKey": "o1"}, "subscription": "projects/p/subscriptions/s",
            "deliveryAttempt": 3}"#;
        let e = Envelope::parse(body).unwrap();
        let (payload, defect) = e.message().payload("pubsub_push", "t");
        assert_eq!(defect, None);
        assert_eq!(payload["data"], serde_json::json!({"a": 1}));
        assert_eq!(payload["message_id"], "7");
        assert_eq!(payload["ordering_key"], "o1");
        assert_eq!(payload["delivery_attempt"], 3);
        assert_eq!(payload["attributes"]["k"], "v");

        let snake =
            br#"{"message": {"message_id": "8"}, "subscription": "projects/p/subscriptions/s"}"#;
        assert_eq!(Envelope::parse(snake).unwrap().message_id, "8");

        for (body, why) in [
            (&b"{}"[..], "no `message`"),
            (br#"{"message": {}, "subscription": "s"}"#, "no `messageId`"),
            (br#"{"message": {"messageId": "1"}}"#, "no `subscription`"),
            (
                br#"{"message": {"messageId": "1", "data": "%%"}, "subscription": "s"}"#,
                "not base64",
            ),
            (
                br#"{"message": {"messageId": "1", "attributes": {"a": 1}}, "subscription": "s"}"#,
                "map of strings",
            ),
            (b"not json", "not a Pub/Sub push envelope"),
        ] {
            let rej = Envelope::parse(body).err().unwrap();
            assert_eq!(rej.status, StatusCode::BAD_REQUEST);
            assert!(rej.message.contains(why), "{why}: {}", rej.message);
        }
    }

    #[test]
    fn verification_needs_an_audience_and_an_email() {
        let cfg: PubSubPushConfig =
            serde_json::from_value(serde_json::json!({"path": "/ps"})).unwrap();
        let issues = cfg.validate("t", &mut RouteTable::default());
        let keys: Vec<&str> = issues.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["audience", "email"]);
        let open: PubSubPushConfig =
            serde_json::from_value(serde_json::json!({"path": "/ps", "verify": false})).unwrap();
        assert!(open.validate("t", &mut RouteTable::default()).is_empty());
        assert_eq!(open.warnings("t").len(), 1);
    }
}
