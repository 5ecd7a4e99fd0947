//! Custom HTTP route triggers: a method and a path with `:params` and an optional trailing
//! `*wildcard`, served on the shared listener, authenticated by `auth` (see [`http_auth`]).
//!
//! Event (`kind = "http"`): the webhook fields (`body`, `body_format`, `raw_string`, `payload`,
//! `query`, `headers`, `content_type`, `cloudevent`) plus `route` (the template), `path` (as
//! called), `method` and `params` (route parameters).
//!
//! [`http_auth`]: crate::http_auth
//!
//! `routes.rs` holds the route table shared by the listener and config validation.

mod routes;
#[cfg(test)]
mod tests;

use std::time::Duration;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use axum::http::HeaderMap;

pub use self::routes::RouteTable;
use crate::http_auth::HttpAuth;
use crate::preprocess::DefaultArgs;
use crate::triggers::delivery::{DedupKey, EventId};
use crate::triggers::kind::{Mode, TriggerKind};
use crate::triggers::push::{IncomingRequest, PushKind, Rejection};

/// Paths the listener serves itself.
pub const RESERVED_PREFIXES: &[&str] = &["/hooks", "/jobs", "/healthz"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteConfig {
    /// `get | post | put | patch | delete` (any case).
    #[serde(default = "default_method")]
    pub method: String,
    /// `/orders/:id`, `/files/*rest`.
    pub path: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub auth: HttpAuth,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub sync_timeout: Option<Duration>,
    /// As for webhooks: a jq expression over the event identifying it for deduplication
    /// (before the sender's delivery id and `Idempotency-Key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_key: Option<DedupKey>,
}

fn default_method() -> String {
    "post".into()
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];

/// `get | post | put | patch | delete` (any case) as a method; `None` for anything else.
pub fn parse_method(method: &str) -> Option<Method> {
    let upper = method.to_ascii_uppercase();
    METHODS
        .contains(&upper.as_str())
        .then(|| Method::from_bytes(upper.as_bytes()).ok())
        .flatten()
}

impl HttpRouteConfig {
    pub fn method(&self) -> Option<Method> {
        parse_method(&self.method)
    }

    pub fn validate(&self, name: &str, routes: &mut RouteTable) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        if let Err(m) = self.auth.validate() {
            issues.push(("auth".into(), m));
        }
        if self.sync_timeout == Some(Duration::ZERO) {
            issues.push(("sync_timeout".into(), "must be longer than 0s".into()));
        }
        match self.method() {
            None => issues.push((
                "method".into(),
                format!(
                    "`{}` is not one of get, post, put, patch, delete",
                    self.method
                ),
            )),
            Some(method) => {
                if let Err(m) = routes.insert(&method, &self.path, name) {
                    issues.push(("path".into(), m));
                }
            }
        }
        issues
    }
}

impl TriggerKind for HttpRouteConfig {
    fn validate(&self, trigger: &str, routes: &mut RouteTable) -> Vec<(String, String)> {
        HttpRouteConfig::validate(self, trigger, routes)
    }

    fn endpoint(&self, _trigger: &str) -> String {
        format!(
            "{} {} (auth {})",
            self.method.to_uppercase(),
            self.path,
            self.auth.label()
        )
    }

    fn mode(&self) -> Option<Mode> {
        Some(self.mode)
    }

    fn default_args(&self) -> DefaultArgs {
        super::webhook::body_args
    }

    fn push(&self) -> Option<&dyn PushKind> {
        Some(self)
    }

    fn http_route(&self) -> Option<(&str, &str)> {
        Some((&self.method, &self.path))
    }
}

impl PushKind for HttpRouteConfig {
    fn authorize(&self, req: &IncomingRequest) -> Result<(), String> {
        self.auth
            .verify(&req.headers, &req.body, chrono::Utc::now().timestamp())
            .map_err(|e| e.to_string())
    }

    fn authorize_head(
        &self,
        headers: &HeaderMap,
        _query: &[(String, String)],
    ) -> Result<(), String> {
        self.auth
            .verify_head(headers, chrono::Utc::now().timestamp())
            .map_err(|e| e.to_string())
    }

    fn authorize_reader(&self, headers: &HeaderMap, _query: &[(String, String)]) -> bool {
        match &self.auth {
            // A signature covers one request's body; it proves nothing about a later GET.
            HttpAuth::Signature(_) => false,
            auth => auth
                .verify(headers, b"", chrono::Utc::now().timestamp())
                .is_ok(),
        }
    }

    fn event_id(
        &self,
        trigger: &str,
        req: &IncomingRequest,
        event: &Value,
    ) -> Result<EventId, Rejection> {
        let delivery = self.auth.delivery_id(&req.headers, event);
        super::delivery::event_id(trigger, self.dedup_key.as_ref(), delivery, req, event)
    }

    fn event(&self, trigger: &str, req: &IncomingRequest) -> Result<Value, Rejection> {
        let hidden: Vec<&str> = match &self.auth {
            HttpAuth::Bearer { .. } | HttpAuth::Basic { .. } => vec!["authorization"],
            HttpAuth::ApiKey { header, .. } => vec![header.as_str()],
            _ => vec![],
        };
        let mut event = super::webhook::base_event("http", trigger, req, &hidden, &[])?;
        event.insert("route".into(), json!(self.path));
        event.insert("path".into(), json!(req.path));
        event.insert("method".into(), json!(req.method.as_str()));
        event.insert("params".into(), json!(req.params));
        Ok(Value::Object(event))
    }

    fn mode(&self) -> Mode {
        self.mode
    }

    fn sync_timeout(&self) -> Option<Duration> {
        self.sync_timeout
    }
}
