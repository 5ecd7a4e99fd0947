//! The admin API over HTTP: where it is (`--admin-url`), the token (`--token`, or the file a
//! local millgate generated), and one call with the API's errors turned into messages.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::output::{clean, truncate};
use super::CliError;

/// Where the admin API is and how to talk to it; given after `triggers` / `jobs`.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Admin API options")]
pub struct AdminArgs {
    /// Base URL of the admin API (the `[admin] listen` address).
    #[arg(
        long,
        env = "MILLGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub admin_url: String,
    /// The admin token (`[admin] token`); without it, the token file millgate generated:
    /// `$MILLGATE_DATA/admin-token`, else `./data/admin-token`.
    #[arg(
        long,
        env = "MILLGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Without `--token` or `MILLGATE_ADMIN_TOKEN`: the token file a local millgate generated,
/// `$MILLGATE_DATA/admin-token` (the default config's store) or `./data/admin-token`.
fn token_from_file() -> Result<String, CliError> {
    let (path, from) = match std::env::var_os("MILLGATE_DATA").filter(|d| !d.is_empty()) {
        Some(dir) => (
            PathBuf::from(dir).join("admin-token"),
            "$MILLGATE_DATA/admin-token",
        ),
        None => (PathBuf::from("./data/admin-token"), "./data/admin-token"),
    };
    let missing = |why: String| {
        CliError::usage(format!(
            "no admin token: pass --token or set MILLGATE_ADMIN_TOKEN (the `[admin] token` of \
             the service), or run where millgate keeps its generated token: {from} ({}) {why}",
            path.display()
        ))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(missing("is empty".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing("does not exist".into())),
        Err(e) => Err(missing(format!("cannot be read: {e}"))),
    }
}

pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    pub fn new(args: &AdminArgs) -> Result<Self, CliError> {
        let base = args.admin_url.trim().trim_end_matches('/').to_string();
        match reqwest::Url::parse(&base) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(CliError::usage(format!(
                    "--admin-url `{}` is not an http(s) URL, e.g. http://127.0.0.1:8081",
                    args.admin_url
                )))
            }
        }
        let token = match args.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => token_from_file()?,
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("millgate-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        for s in segments {
            url.push('/');
            url.push_str(&encode_segment(s));
        }
        url
    }

    /// Sends one request; the answer's JSON (`Null` for an empty body such as `204`), or the
    /// API's error as `"<message> (HTTP <status>)"`.
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, CliError> {
        let url = self.url(segments);
        let mut req = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "application/json");
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some((content_type, bytes)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return parsed.ok_or_else(|| {
                CliError::failed(format!(
                    "{url} answered {} with a body that is not JSON: {} \
                     (is --admin-url the admin listener?)",
                    status_text(status),
                    snippet(&bytes)
                ))
            });
        }
        let mut message = parsed
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .map(str::to_string);
        // A 404 on a collection means this is not the admin API at all (often: the webhook
        // listener's address was given).
        if status == StatusCode::NOT_FOUND && segments.len() == 2 {
            message = Some(format!(
                "{} (is {} the admin listener, not the webhook one?)",
                message.as_deref().unwrap_or("not found"),
                self.base
            ));
        }
        Err(CliError::failed(match message {
            Some(m) => format!("{m} (HTTP {})", status_text(status)),
            None if bytes.is_empty() => format!(
                "HTTP {} from {url} (is --admin-url the admin listener?)",
                status_text(status)
            ),
            None => format!(
                "HTTP {} from {url}: {} (is --admin-url the admin listener?)",
                status_text(status),
                snippet(&bytes)
            ),
        }))
    }

    fn transport_error(&self, e: &reqwest::Error) -> CliError {
        let cause = root_cause(e);
        let hint = if e.is_connect() || e.is_timeout() {
            " (is millgate running with an [admin] section? set --admin-url or MILLGATE_ADMIN_URL)"
        } else {
            ""
        };
        let what = if e.is_timeout() {
            "timed out".to_string()
        } else {
            cause
        };
        CliError::failed(format!(
            "cannot reach the admin API at {}: {what}{hint}",
            self.base
        ))
    }
}

/// The innermost cause of an error, "connection refused" rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    if let Some(io) = last.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::ConnectionReset => return "connection reset".into(),
            _ => {}
        }
    }
    last.to_string()
}

fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let one_line = clean(&text);
    truncate(one_line.trim(), 200)
}

/// Percent-encodes one path segment (names and ids are plain, but never let one change the
/// path: `/`, `?`, `#`, `.` and `..` are encoded).
fn encode_segment(s: &str) -> String {
    let all_dots = !s.is_empty() && s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b':');
        if plain || (b == b'.' && !all_dots) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cannot_change_the_path() {
        assert_eq!(encode_segment("hello.v2"), "hello.v2");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("a/b?c#d"), "a%2Fb%3Fc%23d");
    }
}
