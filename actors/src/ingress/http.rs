//! The shared HTTP listener: `POST /hooks/{name}` for webhooks, custom routes for http
//! triggers, `GET /jobs/{id}` for a job's outcome, `GET /healthz`.
//!
//! The ingress only finds the trigger and reads the body within the size limit; the trigger's
//! actor decides everything else.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ractor::rpc::CallResult;
use serde_json::{json, Value};

use crate::store::Store;
use crate::supervisor::Registry;
use crate::triggers::http_auth::HttpAuth;
use crate::triggers::push::{IncomingRequest, PushMsg, PushResponse};
use crate::triggers::{TriggerSpec, TriggerState};

#[derive(Clone)]
pub struct IngressState {
    pub registry: Arc<Registry>,
    pub store: Store,
    pub body_limit: usize,
    pub sync_timeout: Duration,
}

pub fn app(state: IngressState) -> Router {
    Router::new()
        .route("/hooks/{name}", post(webhook))
        .route("/jobs/{id}", get(job))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(route)
        .method_not_allowed_fallback(|req: Request| async move {
            err(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{} is not served on {}", req.method(), req.uri().path()),
            )
        })
        .with_state(state)
}

fn reply(r: PushResponse) -> Response {
    let mut resp = (r.status, axum::Json(r.body)).into_response();
    if let Some(secs) = r.retry_after {
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

fn err(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    reply(PushResponse::error(status, code, message))
}

async fn webhook(
    State(state): State<IngressState>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    let is_webhook = state
        .registry
        .get(&name)
        .is_some_and(|e| matches!(e.runtime.config.spec, TriggerSpec::Webhook(_)));
    if !is_webhook {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no webhook trigger named `{name}`"),
        );
    }
    dispatch(&state, &name, req, Default::default()).await
}

async fn route(State(state): State<IngressState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let methods = state.registry.route_methods(&path);
    match state.registry.route(req.method(), &path) {
        Some((name, params)) => dispatch(&state, &name, req, params).await,
        None if !methods.is_empty() => {
            let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
            let mut resp = err(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} is not served on {path} (allowed: {})",
                    req.method(),
                    allow.join(", ")
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                resp.headers_mut().insert("allow", v);
            }
            resp
        }
        None => err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {} {path}", req.method()),
        ),
    }
}

async fn dispatch(
    state: &IngressState,
    name: &str,
    req: Request,
    params: std::collections::BTreeMap<String, String>,
) -> Response {
    let Some(entry) = state.registry.get(name) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no trigger named `{name}`"),
        );
    };
    let actor = match (entry.runtime.state(), entry.push_actor()) {
        (TriggerState::Disabled, _) => {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "disabled",
                format!("trigger `{name}` is disabled"),
            )
        }
        (
            TriggerState::BackingOff {
                last_error,
                retry_in,
                ..
            },
            _,
        ) => {
            let mut r = PushResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "restarting",
                format!(
                    "trigger `{name}` is restarting after an error ({last_error}); retry later"
                ),
            );
            r.retry_after = Some(retry_in.as_secs().max(1));
            return reply(r);
        }
        (_, Some(actor)) => actor,
        (_, None) => {
            let mut r = PushResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                format!("trigger `{name}` is starting; retry shortly"),
            );
            r.retry_after = Some(1);
            return reply(r);
        }
    };
    let incoming = match read_request(req, params, state.body_limit).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let wait = state
        .sync_timeout
        .max(sync_timeout_of(&entry.runtime.config.spec))
        + Duration::from_secs(10);
    match actor
        .call(
            |port| PushMsg::Request(Box::new(incoming), port),
            Some(wait),
        )
        .await
    {
        Ok(CallResult::Success(r)) => reply(r),
        Ok(CallResult::Timeout) => err(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("trigger `{name}` did not answer in time"),
        ),
        Ok(CallResult::SenderError) | Err(_) => {
            let mut r = PushResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "restarting",
                format!("trigger `{name}` failed while handling the request and is restarting; retry later"),
            );
            r.retry_after = Some(1);
            reply(r)
        }
    }
}

fn sync_timeout_of(spec: &TriggerSpec) -> Duration {
    spec.push()
        .and_then(|p| p.sync_timeout())
        .unwrap_or_default()
}

async fn read_request(
    req: Request,
    params: std::collections::BTreeMap<String, String>,
    limit: usize,
) -> Result<IncomingRequest, Response> {
    let (parts, body): (_, Body) = req.into_parts();
    let too_large = || {
        err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body is larger than the limit of {limit} bytes ([server] body_limit)"),
        )
    };
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = match read_limited(body, limit, declared).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Err(too_large()),
        Err(BodyError::Broken(e)) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("could not read the body: {e}"),
            ))
        }
    };
    let query = parts
        .uri
        .query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default();
    Ok(IncomingRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        body,
        params,
    })
}

enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads the body up to `limit`. Past it, the rest is read and dropped (up to a bound) before
/// the 413 goes out: a server that answers while the client is still sending makes most clients
/// see a reset connection instead of the answer.
async fn read_limited(
    mut body: Body,
    limit: usize,
    declared: Option<usize>,
) -> Result<bytes::Bytes, BodyError> {
    use http_body_util::BodyExt;
    const DRAIN_MAX: usize = 16 * 1024 * 1024;
    let drain_until = limit.saturating_mul(4).clamp(64 * 1024, DRAIN_MAX);
    if declared.is_some_and(|n| n > drain_until) {
        // Too far over to be worth reading: refuse at once.
        return Err(BodyError::TooLarge);
    }
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Some(frame) = tokio::time::timeout_at(deadline, body.frame())
        .await
        .map_err(|_| BodyError::Broken("timed out".into()))?
    {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len();
        if seen <= limit {
            buf.extend_from_slice(&data);
        } else if seen > drain_until {
            return Err(BodyError::TooLarge);
        }
    }
    if seen > limit {
        return Err(BodyError::TooLarge);
    }
    Ok(buf.freeze())
}

/// `GET /jobs/{id}`: the job's status and outcome, for whoever holds the credentials of the
/// trigger that created it.
async fn job(State(state): State<IngressState>, Path(id): Path<String>, req: Request) -> Response {
    let Ok(job_id) = id.parse::<crate::job::JobId>() else {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_job_id",
            format!("`{id}` is not a job id"),
        );
    };
    let record = match state.store.get_job(job_id) {
        Ok(Some(r)) => r,
        Ok(None) => return err(StatusCode::NOT_FOUND, "not_found", format!("no job {id}")),
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    };
    let Some(entry) = state.registry.get(&record.trigger) else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "job {id} belongs to trigger `{}`, which no longer exists",
                record.trigger
            ),
        );
    };
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let headers = req.headers();
    let allowed = match &entry.runtime.config.spec {
        TriggerSpec::Webhook(w) => w.check_token(headers, &query),
        TriggerSpec::Http(h) => match &h.auth {
            HttpAuth::Signature(_) => Err(
                "jobs of signature-authenticated routes are not readable here; use the admin API"
                    .to_string(),
            ),
            auth => auth
                .verify(headers, b"", chrono::Utc::now().timestamp())
                .map_err(|e| e.to_string()),
        },
        // Kinds that are not pushed over HTTP have no credentials here.
        #[allow(unreachable_patterns)]
        _ => Err("jobs of this trigger kind are readable through the admin API".to_string()),
    };
    if let Err(m) = allowed {
        return err(StatusCode::UNAUTHORIZED, "unauthorized", m);
    }
    let body: Value = json!({
        "job_id": record.job_id,
        "trigger": record.trigger,
        "kind": record.kind,
        "runnable": record.runnable,
        "event_id": record.event_id,
        "status": record.status,
        "result": record.result,
        "error": record.error,
        "attempts": record.attempts,
        "args": record.args,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}
