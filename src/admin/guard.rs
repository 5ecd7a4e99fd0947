//! What a request to the admin listener must look like before its token is even looked at, so
//! that a web page the operator opens cannot use the API through the operator's browser:
//!
//! - `Host` is the listener's own address (an IP literal or `localhost`, with its port) or an
//!   `[admin] allowed_hosts` name: a page on another site that re-points its DNS name at
//!   127.0.0.1 (DNS rebinding) sends its own name and is refused.
//! - `Origin`, when a browser sends one, is the request's own `Host` (or an `allowed_hosts`
//!   name, for a proxy that rewrites `Host`): cross-site requests are refused, a page on another
//!   machine at the same port included.
//! - Writes carry `application/json` or `application/toml` bodies: the content types a page can
//!   send cross-site without a preflight (`text/plain`, forms) are refused.
//!
//! And, once a request is in, a trigger that would run a program of its own is refused unless
//! `[admin] allow_commands = true` (`check_programs`).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use millgate_actors::config::program_keys;
use millgate_actors::triggers::TriggerConfig;

use super::{AdminState, ApiError};

/// Where the admin listener is and which other names it answers to.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Lower-case `name` (any port) or `name:port` entries of `[admin] allowed_hosts`.
    pub allowed_hosts: Vec<String>,
}

impl Listener {
    pub fn new(addr: SocketAddr, allowed_hosts: &[String]) -> Self {
        Self {
            addr,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `authority` (`host[:port]`, as in `Host` or an origin) names this listener.
    /// `default_port` applies when the authority has no port (80 for `http`).
    fn accepts(&self, authority: &str, default_port: u16) -> bool {
        let authority = authority.trim().to_ascii_lowercase();
        let Some((host, port)) = split_authority(&authority, default_port) else {
            return false;
        };
        let host = host.trim_end_matches('.');
        let literal = host == "localhost" || host.parse::<IpAddr>().is_ok();
        if literal && port == self.addr.port() {
            return true;
        }
        self.allowed_hosts
            .iter()
            .any(|a| a == host || *a == format!("{host}:{port}"))
    }
}

impl Listener {
    /// Whether a page at `origin` (`scheme://authority`) may use the API through a request
    /// whose `Host` is `host`: it is the same origin, or an `allowed_hosts` name.
    fn accepts_origin(&self, origin: &str, host: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        let (authority, default_port) = match origin.split_once("://") {
            Some(("http", a)) => (a, 80),
            Some(("https", a)) => (a, 443),
            _ => return false,
        };
        let host = host.trim().to_ascii_lowercase();
        let same = match (
            split_authority(authority, default_port),
            // `Host` has no scheme: without a port it is the origin's default.
            split_authority(&host, default_port),
        ) {
            (Some((oh, op)), Some((hh, hp))) => {
                oh.trim_end_matches('.') == hh.trim_end_matches('.') && op == hp
            }
            _ => false,
        };
        if same {
            return self.accepts(authority, default_port);
        }
        let Some((oh, op)) = split_authority(authority, default_port) else {
            return false;
        };
        let oh = oh.trim_end_matches('.');
        // This machine's loopback at this port is this listener, whatever name the page used.
        let loopback = oh == "localhost" || oh.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if loopback && op == self.addr.port() {
            return true;
        }
        self.allowed_hosts
            .iter()
            .any(|a| a == oh || *a == format!("{oh}:{op}"))
    }
}

/// `host[:port]` with IPv6 literals in brackets; `None` when malformed.
fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, default_port)),
            _ => Some((host, after.strip_prefix(':')?.parse().ok()?)),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, default_port)),
    }
}

/// The media type without parameters, lower-case (`application/json`).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = raw.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

pub const JSON: &str = "application/json";
pub const TOML: &str = "application/toml";

fn forbidden(code: &'static str, message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, code, message).into_response()
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// Every admin route but `/healthz`: the checks of this module's header.
pub async fn check_request(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let listener = &state.listener;
    let headers = req.headers();
    // HTTP/1.1 has `Host`; an HTTP/2 request carries its authority in the URI instead.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    match &host {
        Some(h) if listener.accepts(h, 80) => {}
        Some(h) => {
            return forbidden(
                "host_not_allowed",
                format!(
                    "Host `{}` is not this admin listener ({}); add the name to \
                     `[admin] allowed_hosts` if it is yours",
                    h.chars().take(100).collect::<String>(),
                    listener.addr
                ),
            )
        }
        None => {
            return forbidden(
                "host_not_allowed",
                "the request has no Host header".to_string(),
            )
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null").trim();
        let accepted = listener.accepts_origin(origin, host.as_deref().unwrap_or_default());
        if !accepted {
            return forbidden(
                "origin_not_allowed",
                format!(
                    "requests from the web page at `{}` are refused: the admin API answers \
                     only pages it serves itself (http://{})",
                    origin.chars().take(100).collect::<String>(),
                    host.unwrap_or_default()
                ),
            );
        }
    }
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write {
        let media = media_type(headers);
        let declared_ok = media.as_deref().is_some_and(|m| m == JSON || m == TOML);
        if !declared_ok && (media.is_some() || has_body(headers)) {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "{} {} needs `Content-Type: application/json` (or `application/toml` for a \
                     trigger), not {}",
                    req.method(),
                    req.uri().path(),
                    media.map_or("none".to_string(), |m| format!("`{m}`"))
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// A trigger that would run a program of its own (rather than a runnable of the config) is
/// refused unless `[admin] allow_commands = true`. Checked before validation: validating Kafka
/// properties hands them to librdkafka, which loads the plugins they name.
pub fn check_programs(state: &AdminState, t: &TriggerConfig) -> Result<(), ApiError> {
    let keys = program_keys(t);
    if keys.is_empty() || state.allow_commands {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "commands_not_allowed",
        format!(
            "{}: triggers added through the admin API may not run programs unless \
             `[admin] allow_commands = true`; use a runnable of the configuration, or define \
             the trigger in config.toml",
            keys.join(", ")
        ),
    ))
}

/// JSON-only routes refuse a TOML body by its content type, not as malformed JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers) {
        Some(m) if m != JSON => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("this route takes `Content-Type: application/json`, not `{m}`"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_address_forms_and_allowed_names_only() {
        let l = Listener::new(
            "127.0.0.1:8081".parse().unwrap(),
            &["Admin.Example.com".into(), "proxy.local:8443".into()],
        );
        for ok in [
            "127.0.0.1:8081",
            "localhost:8081",
            "LOCALHOST:8081",
            "[::1]:8081",
            "10.0.0.5:8081",
            "admin.example.com",
            "admin.example.com:9999",
            "admin.example.com.",
            "proxy.local:8443",
        ] {
            assert!(l.accepts(ok, 80), "{ok}");
        }
        for refused in [
            "evil.example:8081",
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost",
            "proxy.local",
            "proxy.local:8081",
            "localhost.evil.example:8081",
            "127.0.0.1:8081@evil",
            "",
            "[::1",
        ] {
            assert!(!l.accepts(refused, 80), "{refused}");
        }
        for (origin, host) in [
            ("http://127.0.0.1:8081", "127.0.0.1:8081"),
            ("http://LOCALHOST:8081", "localhost:8081"),
            ("http://localhost:8081", "127.0.0.1:8081"),
            ("https://admin.example.com", "127.0.0.1:8081"),
            ("https://proxy.local:8443", "10.0.0.5:8081"),
        ] {
            assert!(l.accepts_origin(origin, host), "{origin} for {host}");
        }
        for (origin, host) in [
            // Another machine serving a page at the same port.
            ("http://203.0.113.9:8081", "127.0.0.1:8081"),
            ("http://10.0.0.5:8081", "127.0.0.1:8081"),
            ("http://127.0.0.1:8080", "127.0.0.1:8081"),
            ("https://evil.example", "127.0.0.1:8081"),
            ("null", "127.0.0.1:8081"),
            ("file://", "127.0.0.1:8081"),
        ] {
            assert!(!l.accepts_origin(origin, host), "{origin} for {host}");
        }
    }
}
