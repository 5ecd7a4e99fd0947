//! Custom HTTP route triggers: a method and a path with `:params` and an optional trailing
//! `*wildcard`, served on the shared listener, authenticated by `auth` (see [`http_auth`]).
//!
//! Event (`kind = "http"`): the webhook fields (`body`, `body_format`, `raw_string`, `payload`,
//! `query`, `headers`, `content_type`, `cloudevent`) plus `route` (the template), `path` (as
//! called), `method` and `params` (route parameters).
//!
//! [`http_auth`]: crate::http_auth

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use axum::http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use axum::http::HeaderMap;

use super::delivery::{DedupKey, EventId};
use super::kind::{Mode, TriggerKind};
use super::push::{IncomingRequest, PushKind, Rejection};
use crate::http_auth::HttpAuth;
use crate::preprocess::DefaultArgs;

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

impl HttpRouteConfig {
    pub fn method(&self) -> Option<Method> {
        let upper = self.method.to_ascii_uppercase();
        METHODS
            .contains(&upper.as_str())
            .then(|| Method::from_bytes(upper.as_bytes()).ok())
            .flatten()
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

/// Method + path → trigger name, with conflicts found when a route is added.
#[derive(Default, Clone)]
pub struct RouteTable {
    routers: HashMap<Method, matchit::Router<String>>,
    entries: Vec<(Method, String, String)>,
}

impl RouteTable {
    /// Adds `path` (user syntax `:param`, `*rest`) for `name`.
    pub fn insert(&mut self, method: &Method, path: &str, name: &str) -> Result<(), String> {
        let pattern = to_matchit(path)?;
        let router = self.routers.entry(method.clone()).or_default();
        router.insert(pattern, name.to_string()).map_err(|_| {
            let owner = self
                .entries
                .iter()
                .filter(|(m, _, _)| m == method)
                .map(|(_, p, n)| format!("`{p}` of trigger `{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{method} {path} conflicts with an existing route: {owner}")
        })?;
        self.entries
            .push((method.clone(), path.to_string(), name.to_string()));
        Ok(())
    }

    /// The trigger serving `method path` (the path as sent, percent-encoded), with the route's
    /// parameters percent-decoded (`/greet/Ada%20L` → `name = "Ada L"`). Matching happens on
    /// the encoded path, so an encoded `/` (`%2F`) never splits a parameter.
    pub fn lookup(
        &self,
        method: &Method,
        path: &str,
    ) -> Option<(String, BTreeMap<String, String>)> {
        let m = self.routers.get(method)?.at(path).ok()?;
        let params = m
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        Some((m.value.clone(), params))
    }

    /// The methods served on `path` (to answer 405 with `Allow` rather than 404).
    pub fn methods_for(&self, path: &str) -> Vec<Method> {
        let mut methods: Vec<Method> = self
            .routers
            .iter()
            .filter(|(_, r)| r.at(path).is_ok())
            .map(|(m, _)| m.clone())
            .collect();
        methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        methods
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Decodes `%XX` escapes; a value that does not decode to UTF-8 is kept as sent.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_or_else(|_| s.to_string(), |d| d.into_owned())
}

/// `/a/:id/*rest` → matchit's `/a/{id}/{*rest}`, rejecting what would be ambiguous.
fn to_matchit(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    for reserved in RESERVED_PREFIXES {
        if path == *reserved || path.starts_with(&format!("{reserved}/")) {
            return Err(format!(
                "`{path}` is under `{reserved}`, which millgate serves itself"
            ));
        }
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        out.push('/');
        if seg.contains(['{', '}']) {
            return Err(format!("`{path}`: use `:name` and `*name`, not braces"));
        }
        if let Some(param) = seg.strip_prefix(':') {
            if param.is_empty() || !param.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`{path}`: bad parameter name `{seg}`"));
            }
            out.push_str(&format!("{{{param}}}"));
        } else if let Some(rest) = seg.strip_prefix('*') {
            if i + 1 != segments.len() {
                return Err(format!("`{path}`: a `*wildcard` must be the last segment"));
            }
            if rest.is_empty() {
                return Err(format!("`{path}`: name the wildcard, e.g. `*rest`"));
            }
            out.push_str(&format!("{{*{rest}}}"));
        } else if seg.contains([':', '*']) {
            return Err(format!(
                "`{path}`: `:` and `*` may only start a segment (`{seg}`)"
            ));
        } else {
            out.push_str(seg);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_wildcards_resolve() {
        let mut t = RouteTable::default();
        t.insert(&Method::POST, "/orders/:id", "a").unwrap();
        t.insert(&Method::GET, "/files/*rest", "b").unwrap();
        t.insert(&Method::GET, "/orders/:id", "c").unwrap();
        let (name, params) = t.lookup(&Method::POST, "/orders/42").unwrap();
        assert_eq!((name.as_str(), params["id"].as_str()), ("a", "42"));
        let (name, params) = t.lookup(&Method::GET, "/files/x/y.txt").unwrap();
        assert_eq!((name.as_str(), params["rest"].as_str()), ("b", "x/y.txt"));
        assert!(t.lookup(&Method::DELETE, "/orders/42").is_none());
        assert_eq!(t.methods_for("/orders/42"), vec![Method::GET, Method::POST]);
        let (_, params) = t.lookup(&Method::POST, "/orders/a%2Fb%20c%C3%A9").unwrap();
        assert_eq!(params["id"], "a/b cé");
        let (_, params) = t.lookup(&Method::GET, "/files/x/100%25/%zz/%4").unwrap();
        assert_eq!(params["rest"], "x/100%/%zz/%4");
        // Not UTF-8 once decoded: kept as sent.
        let (_, params) = t.lookup(&Method::GET, "/files/%ff%41").unwrap();
        assert_eq!(params["rest"], "%ff%41");
        let (_, params) = t.lookup(&Method::GET, "/files/100%25").unwrap();
        assert_eq!(params["rest"], "100%");
    }

    #[test]
    fn conflicts_and_bad_paths_are_rejected() {
        let mut t = RouteTable::default();
        t.insert(&Method::POST, "/orders/:id", "a").unwrap();
        let e = t.insert(&Method::POST, "/orders/:order", "b").unwrap_err();
        assert!(e.contains("conflicts") && e.contains("trigger `a`"), "{e}");
        assert!(t.insert(&Method::POST, "/orders/:id", "c").is_err());
        assert!(to_matchit("orders").is_err());
        assert!(to_matchit("/hooks/x").is_err());
        assert!(to_matchit("/a/*rest/b").is_err());
        assert!(to_matchit("/a/x:y").is_err());
        assert_eq!(to_matchit("/a/:id/*rest").unwrap(), "/a/{id}/{*rest}");
    }
}
