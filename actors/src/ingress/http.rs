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

pub use super::body::BodyBudget;
use super::body::{read_limited, BodyError};
use crate::store::Store;
use crate::supervisor::Registry;
use crate::triggers::push::{IncomingRequest, PushKind, PushMsg, PushResponse};
use crate::triggers::{TriggerSpec, TriggerState};

#[derive(Clone)]
pub struct IngressState {
    pub registry: Arc<Registry>,
    pub store: Store,
    pub body_limit: usize,
    pub sync_timeout: Duration,
    /// Bytes of request bodies all requests may hold at once.
    pub budget: BodyBudget,
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
        .is_some_and(|e| e.config.spec.kind().at_hooks_path());
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
    let Some(kind) = entry.config.spec.kind().push() else {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("trigger `{name}` is not served over HTTP"),
        );
    };
    let incoming = match read_request(req, params, state, kind).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let wait =
        state.sync_timeout.max(sync_timeout_of(&entry.config.spec)) + Duration::from_secs(10);
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
    spec.kind()
        .push()
        .and_then(|p| p.sync_timeout())
        .unwrap_or_default()
}

async fn read_request(
    req: Request,
    params: std::collections::BTreeMap<String, String>,
    state: &IngressState,
    kind: &dyn PushKind,
) -> Result<IncomingRequest, Response> {
    let (parts, body): (_, Body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default();
    // Credentials that do not depend on the body are checked before a byte of it is read, so
    // that unauthenticated uploads cost nothing.
    if let Some(fetch) = kind.prepare(&parts.headers) {
        fetch.await;
    }
    if let Err(m) = kind.authorize_head(&parts.headers, &query) {
        return Err(err(StatusCode::UNAUTHORIZED, "unauthorized", m));
    }
    let limit = state.body_limit;
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (body, body_permit) = match read_limited(body, limit, declared, &state.budget).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("body is larger than the limit of {limit} bytes ([server] body_limit)"),
            ))
        }
        Err(BodyError::LargerThanBudget) => {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "body is larger than the {} bytes all requests may buffer at once ([server] max_buffered_bytes)",
                    state.budget.total()
                ),
            ))
        }
        Err(BodyError::Busy) => {
            let mut r = PushResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "other requests' bodies fill the {} bytes that may be buffered at once ([server] max_buffered_bytes); retry later",
                    state.budget.total()
                ),
            );
            r.retry_after = Some(1);
            return Err(reply(r));
        }
        Err(BodyError::Broken(e)) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("could not read the body: {e}"),
            ))
        }
    };
    Ok(IncomingRequest {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query,
        headers: parts.headers,
        body,
        params,
        body_permit,
    })
}

/// `GET /jobs/{id}`: the job's status and outcome, for whoever holds the credentials of the
/// trigger that created it. A missing job and a job these credentials cannot read get the same
/// answer, so that the endpoint tells nobody which ids exist.
async fn job(State(state): State<IngressState>, Path(id): Path<String>, req: Request) -> Response {
    let Ok(job_id) = id.parse::<crate::model::job::JobId>() else {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_job_id",
            format!("`{id}` is not a job id"),
        );
    };
    let refused = || {
        err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!(
                "no job {id} is readable with these credentials: send those of the webhook or route that created it (jobs of signature-checked routes are read through the admin API)"
            ),
        )
    };
    let record = match state.store.get_job(job_id) {
        Ok(Some(r)) => r,
        Ok(None) => return refused(),
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()),
    };
    let Some(entry) = state.registry.get(&record.trigger) else {
        return refused();
    };
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let readable = entry
        .config
        .spec
        .kind()
        .push()
        .is_some_and(|kind| kind.authorize_reader(req.headers(), &query));
    if !readable {
        return refused();
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
