//! Webhook triggers: `POST /hooks/{name}`, authenticated by the trigger's token (as
//! `Authorization: Bearer <token>` or `?token=<token>`).
//!
//! Event (`kind = "webhook"`): `body` (parsed JSON, form fields, text, or null for binary),
//! `body_format` (`json | form | text | binary | empty`), `raw_string` (the body when it is
//! UTF-8), `payload` (base64, only for non-UTF-8 bodies), `query`, `headers` (lower-case names,
//! credentials removed), `method`, `content_type`, and `cloudevent` (the CloudEvents envelope
//! without `data`, from a structured `application/cloudevents+json` body or `ce-*` headers).
//!
//! `event.rs` turns a request into this event; the custom HTTP routes (`triggers/http/`) use it too.

mod event;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use self::event::{base_event, bearer, body_args};
use crate::preprocess::DefaultArgs;
use crate::triggers::delivery::{DedupKey, EventId};
use crate::triggers::http::RouteTable;
use crate::triggers::kind::{Mode, TriggerKind};
use crate::triggers::push::{IncomingRequest, PushKind, Rejection};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

    fn at_hooks_path(&self) -> bool {
        true
    }

    fn warnings(&self, trigger: &str) -> Vec<String> {
        if self.token.is_some() {
            return Vec::new();
        }
        vec![format!(
            "trigger `{trigger}`: webhook has no `token`; anyone who can reach the listener can call it"
        )]
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
