//! `/api/*` handlers. Every route is declared through utoipa-axum, so the OpenAPI document and
//! the router come from the same list and cannot drift apart.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::Json;
use millgate_actors::config::check_trigger_name;
use millgate_actors::job::{JobId, JobRecord, JobStatus};
use millgate_actors::router::RouterMsg;
use millgate_actors::supervisor::{SupervisorMsg, TriggerEntry, TriggerError};
use millgate_actors::triggers::http::RouteTable;
use millgate_actors::triggers::{Origin, TriggerConfig};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::guard::{check_programs, require_json};
use super::{AdminState, ApiError};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "millgate admin API",
        description = "Triggers, jobs, dead letters, status and live events of a millgate instance. Every route needs `Authorization: Bearer <admin token>` (`?token=` on GET /api/events only); writes with a body need `Content-Type: application/json` (or `application/toml` for a trigger); requests from other web origins or Host names are refused."
    ),
    tags((name = "triggers"), (name = "jobs"), (name = "system"))
)]
struct ApiDoc;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_triggers, add_trigger))
        .routes(routes!(get_trigger, replace_trigger, delete_trigger))
        .routes(routes!(enable_trigger))
        .routes(routes!(disable_trigger))
        .routes(routes!(suspend_trigger))
        .routes(routes!(resume_trigger))
        .routes(routes!(cancel_parked))
        .routes(routes!(get_source_state, put_source_state))
        .routes(routes!(reset_trigger))
        .routes(routes!(list_runnables))
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(replay_job))
        .routes(routes!(list_dead_letters))
        .routes(routes!(delete_dead_letter))
        .routes(routes!(status))
        .routes(routes!(events))
        .merge(super::quarantine::routes())
}

type ApiResult<T> = Result<T, ApiError>;

// ---------------------------------------------------------------------------------------------
// Views

/// The trigger's definition with its secrets replaced by `***`.
fn redacted_config(c: &TriggerConfig) -> Value {
    let mut v = Value::Object(c.to_map());
    super::redact::redact(&mut v);
    v
}

fn trigger_view(entry: &TriggerEntry, state: &AdminState) -> Value {
    let rt = &entry.runtime;
    let status = entry.status();
    let (last_error, next_attempt) = match rt.state() {
        millgate_actors::triggers::TriggerState::BackingOff {
            last_error,
            next_attempt,
            ..
        } => (Some(last_error), Some(next_attempt)),
        _ => (None, None),
    };
    json!({
        "name": rt.name(),
        "kind": rt.kind(),
        "mode": entry.config.mode(),
        "source": entry.origin,
        "enabled": rt.state_name() != "disabled",
        "suspended": rt.is_suspended(),
        "state": rt.state_name(),
        "last_error": last_error,
        "next_attempt": next_attempt,
        "restarts": status.restarts,
        "in_flight": status.in_flight,
        "parked": state.service.store.parked_count(rt.name()),
        "rate_1m": (rt.rate.per_second() * 1000.0).round() / 1000.0,
        "counters": rt.counters.snapshot(),
        "config": redacted_config(&entry.config),
        // What the trigger's source reports: a schedule's next fire times and counters, a
        // broker connection's state (Kafka: group, assigned partitions and positions).
        "source_status": rt.source_status.lock().map(|s| s.clone()).unwrap_or_default(),
        // Kept for schedule/poll clients of the first API version.
        "schedule": match rt.kind() {
            "schedule" | "poll" => rt.source_status.lock().map(|s| s.clone()).unwrap_or_default(),
            _ => Value::Null,
        },
    })
}

fn job_view(r: &JobRecord, full: bool) -> Value {
    let mut v = json!({
        "job_id": r.job_id,
        "trigger": r.trigger,
        "kind": r.kind,
        "runnable": r.runnable,
        "event_id": r.event_id,
        "status": r.status,
        "args": r.args,
        "result": r.result,
        "error": r.error,
        "attempts": r.attempts,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration_ms": r.duration_ms(),
        "replay_of": r.replay_of,
    });
    if full {
        v["event"] = r.event.clone();
        v["timeline"] = json!(r.timeline);
    }
    v
}

fn entry(state: &AdminState, name: &str) -> ApiResult<std::sync::Arc<TriggerEntry>> {
    state
        .service
        .registry
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no trigger named `{name}`")))
}

fn trigger_error(e: TriggerError) -> ApiError {
    match e {
        TriggerError::NotFound(_) => ApiError::not_found(e.to_string()),
        TriggerError::Exists(_) => ApiError::conflict(format!("{e}; use PUT to replace it")),
        TriggerError::Invalid(m) => ApiError::invalid(m),
        TriggerError::Store(m) => ApiError::internal(m),
    }
}

fn call_failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("the trigger supervisor did not answer: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Triggers

/// Every trigger with its state and counters.
#[utoipa::path(get, path = "/api/triggers", tag = "triggers",
    responses((status = 200, description = "`{\"triggers\": [trigger view]}` sorted by name", body = Object)))]
async fn list_triggers(State(state): State<AdminState>) -> Json<Value> {
    let views: Vec<Value> = state
        .service
        .registry
        .all()
        .iter()
        .map(|e| trigger_view(e, &state))
        .collect();
    Json(json!({ "triggers": views }))
}

/// One trigger.
#[utoipa::path(get, path = "/api/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn get_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = entry(&state, &name)?;
    Ok(Json(trigger_view(&e, &state)))
}

/// Parses a trigger from JSON or TOML (`content-type: application/toml`).
fn parse_trigger(headers: &HeaderMap, body: &[u8]) -> ApiResult<TriggerConfig> {
    let toml = super::guard::media_type(headers).as_deref() == Some(super::guard::TOML);
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
    let map: Map<String, Value> = if toml {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| {
            let m = e.message().trim();
            let detail = if m.is_empty() {
                e.to_string()
            } else {
                m.to_string()
            };
            ApiError::bad_request(format!("body is not valid TOML: {}", detail.trim()))
        })?;
        if let Some(toml::Value::Array(list)) = table.remove("triggers") {
            if list.len() != 1 || !table.is_empty() {
                return Err(ApiError::bad_request(
                    "send one trigger: its keys, or a single [[triggers]] entry",
                ));
            }
            match list.into_iter().next() {
                Some(toml::Value::Table(t)) => table = t,
                _ => return Err(ApiError::bad_request("[[triggers]] must hold a table")),
            }
        }
        serde_json::to_value(table)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .ok_or_else(|| ApiError::bad_request("body is not a table"))?
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ApiError::bad_request("body must be a JSON object")),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "body is not valid JSON: {e}"
                )))
            }
        }
    };
    // Checked first: the name is echoed in the messages below, and it becomes a metric label.
    if let Some(Value::String(name)) = map.get("name") {
        check_trigger_name(name).map_err(|m| ApiError::bad_request(format!("name: {m}")))?;
    }
    TriggerConfig::from_map(map).map_err(|m| {
        // The config-file prefix ("trigger `x` (kind y): ") adds nothing to an API answer.
        let m = m
            .split_once("): ")
            .filter(|(p, _)| p.starts_with("trigger `"))
            .map_or(m.clone(), |(_, rest)| rest.to_string());
        ApiError::invalid(m)
    })
}

/// Validates a trigger exactly as `config.toml` would.
fn validate(state: &AdminState, t: &TriggerConfig) -> ApiResult<()> {
    let issues = state
        .service
        .config
        .validate_trigger(t, &mut RouteTable::default());
    if issues.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = issues.iter().map(|(k, m)| format!("{k}: {m}")).collect();
    Err(ApiError::invalid(text.join("; ")))
}

fn owned_by_config(state: &AdminState, name: &str) -> bool {
    state
        .service
        .registry
        .get(name)
        .is_some_and(|e| e.origin == Origin::Config)
}

/// Adds a trigger (same shape as a `[[triggers]]` entry; JSON, or TOML with `content-type: application/toml`).
#[utoipa::path(post, path = "/api/triggers", tag = "triggers",
    request_body(content = Object, description = "a trigger, as in `[[triggers]]`"),
    responses((status = 201, body = Object), (status = 400, body = Object), (status = 409, body = Object), (status = 422, body = Object)))]
async fn add_trigger(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let t = parse_trigger(&headers, &body)?;
    check_programs(&state, &t)?;
    let name = t.name().to_string();
    if owned_by_config(&state, &name) {
        return Err(ApiError::conflict(format!(
            "trigger `{name}` is defined in config.toml; change it there"
        )));
    }
    validate(&state, &t)?;
    ractor::call!(
        state.service.triggers,
        SupervisorMsg::Add,
        Box::new(t.clone()),
        Origin::Api
    )
    .map_err(call_failed)?
    .map_err(trigger_error)?;
    if let Err(e) = state
        .service
        .store
        .put_api_trigger(t.name(), &serde_json::Value::Object(t.to_map()))
        .await
    {
        let _ = ractor::call!(state.service.triggers, SupervisorMsg::Remove, name.clone());
        return Err(ApiError::internal(format!(
            "could not store the trigger: {e}"
        )));
    }
    let e = entry(&state, &name)?;
    Ok((StatusCode::CREATED, Json(trigger_view(&e, &state))))
}

/// Replaces a trigger: the old actor stops, the new one starts.
#[utoipa::path(put, path = "/api/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    request_body(content = Object, description = "the whole new trigger"),
    responses((status = 200, body = Object), (status = 404, body = Object), (status = 409, body = Object), (status = 422, body = Object)))]
async fn replace_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let t = parse_trigger(&headers, &body)?;
    check_programs(&state, &t)?;
    if t.name() != name {
        return Err(ApiError::invalid(format!(
            "name: the body names `{}` but the path names `{name}`; renaming is DELETE + POST",
            t.name()
        )));
    }
    entry(&state, &name)?;
    if owned_by_config(&state, &name) {
        return Err(ApiError::conflict(format!(
            "trigger `{name}` is defined in config.toml; change it there"
        )));
    }
    validate(&state, &t)?;
    ractor::call!(
        state.service.triggers,
        SupervisorMsg::Replace,
        Box::new(t.clone())
    )
    .map_err(call_failed)?
    .map_err(trigger_error)?;
    state
        .service
        .store
        .put_api_trigger(t.name(), &serde_json::Value::Object(t.to_map()))
        .await
        .map_err(|e| ApiError::internal(format!("could not store the trigger: {e}")))?;
    Ok(Json(trigger_view(&*entry(&state, &name)?, &state)))
}

/// Removes a trigger added through the API.
#[utoipa::path(delete, path = "/api/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 204), (status = 404, body = Object), (status = 409, body = Object)))]
async fn delete_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if let Err(not_running) = entry(&state, &name) {
        // Stored but not started (it runs programs without `allow_commands`, or no longer
        // validates): removable all the same.
        let store = &state.service.store;
        let stored = store
            .api_triggers()
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if !stored.iter().any(|t| t["name"] == name.as_str()) {
            return Err(not_running);
        }
        store
            .remove_api_trigger(&name)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        return Ok(StatusCode::NO_CONTENT);
    }
    if owned_by_config(&state, &name) {
        return Err(ApiError::conflict(format!(
            "trigger `{name}` is defined in config.toml; remove it there"
        )));
    }
    ractor::call!(state.service.triggers, SupervisorMsg::Remove, name.clone())
        .map_err(call_failed)?
        .map_err(trigger_error)?;
    state
        .service
        .store
        .remove_api_trigger(&name)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(state: &AdminState, name: &str, enabled: bool) -> ApiResult<Json<Value>> {
    entry(state, name)?;
    ractor::call!(
        state.service.triggers,
        SupervisorMsg::SetEnabled,
        name.to_string(),
        enabled
    )
    .map_err(call_failed)?
    .map_err(trigger_error)?;
    Ok(Json(trigger_view(&*entry(state, name)?, state)))
}

async fn set_suspended(state: &AdminState, name: &str, suspended: bool) -> ApiResult<Json<Value>> {
    entry(state, name)?;
    let released = ractor::call!(
        state.service.triggers,
        SupervisorMsg::SetSuspended,
        name.to_string(),
        suspended
    )
    .map_err(call_failed)?
    .map_err(trigger_error)?;
    let mut view = trigger_view(&*entry(state, name)?, state);
    if !suspended {
        view["released"] = json!(released);
    }
    Ok(Json(view))
}

/// Enables a trigger (remembered across restarts).
#[utoipa::path(post, path = "/api/triggers/{name}/enable", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn enable_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_enabled(&state, &name, true).await
}

/// Disables a trigger (remembered across restarts); a disabled webhook or route answers 503.
#[utoipa::path(post, path = "/api/triggers/{name}/disable", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn disable_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_enabled(&state, &name, false).await
}

/// Suspends a trigger: events are still accepted and acknowledged, their jobs are parked.
#[utoipa::path(post, path = "/api/triggers/{name}/suspend", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn suspend_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_suspended(&state, &name, true).await
}

/// Resumes a suspended trigger and releases its parked jobs, in arrival order.
#[utoipa::path(post, path = "/api/triggers/{name}/resume", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Object), (status = 404, body = Object)))]
async fn resume_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    set_suspended(&state, &name, false).await
}

/// Drops a trigger's parked jobs (status `cancelled`).
#[utoipa::path(post, path = "/api/triggers/{name}/parked/cancel", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, description = "`{\"cancelled\": n}`", body = Object), (status = 404, body = Object)))]
async fn cancel_parked(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    entry(&state, &name)?;
    let n = state
        .service
        .intake
        .cancel_parked(&name)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "cancelled": n })))
}

// ---------------------------------------------------------------------------------------------
// Runnables, jobs, dead letters

/// Every runnable with its live load.
#[utoipa::path(get, path = "/api/runnables", tag = "jobs",
    responses((status = 200, description = "`{\"runnables\": [...]}`", body = Object)))]
async fn list_runnables(State(state): State<AdminState>) -> Json<Value> {
    let stats = ractor::call!(state.service.router, RouterMsg::RunnableStats).unwrap_or_default();
    let list: Vec<Value> = state
        .service
        .config
        .runnables
        .iter()
        .map(|(name, r)| {
            let (running, waiting) = stats.get(name).copied().unwrap_or((0, 0));
            json!({
                "name": name,
                "kind": r.resolved_kind().ok(),
                "command": r.command,
                "url": r.url,
                "timeout_ms": r.timeout.as_millis() as u64,
                "concurrency": r.concurrency,
                "running": running,
                "waiting": waiting,
            })
        })
        .collect();
    Json(json!({ "runnables": list }))
}

#[derive(Deserialize, utoipa::IntoParams)]
struct JobsQuery {
    /// Only this trigger's jobs.
    trigger: Option<String>,
    /// `queued`, `parked`, `running`, `retrying`, `succeeded`, `dead_lettered`, `cancelled`.
    status: Option<String>,
    /// 1–500, default 50.
    limit: Option<usize>,
    /// A job id from `next_before`: the page after it.
    before: Option<String>,
}

/// Jobs, newest first, paginated.
#[utoipa::path(get, path = "/api/jobs", tag = "jobs", params(JobsQuery),
    responses((status = 200, description = "`{\"jobs\": [...], \"next_before\"}`", body = Object), (status = 400, body = Object)))]
async fn list_jobs(
    State(state): State<AdminState>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<Value>> {
    let status = q
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1–500, not {limit}"
        )));
    }
    let before = q
        .before
        .as_deref()
        .map(|b| {
            b.parse::<JobId>()
                .map_err(|_| ApiError::bad_request(format!("before: `{b}` is not a job id")))
        })
        .transpose()?;
    let (jobs, next) = state
        .service
        .store
        .jobs_page(q.trigger.as_deref(), status, limit, before)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let views: Vec<Value> = jobs.iter().map(|r| job_view(r, false)).collect();
    Ok(Json(json!({ "jobs": views, "next_before": next })))
}

fn parse_job_id(id: &str) -> ApiResult<JobId> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a job id")))
}

/// One job with its event and timeline.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Object), (status = 400, body = Object), (status = 404, body = Object)))]
async fn get_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let job_id = parse_job_id(&id)?;
    let r = state
        .service
        .store
        .get_job(job_id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    Ok(Json(job_view(&r, true)))
}

/// Runs a finished or dead-lettered job again as a new job linked to it.
#[utoipa::path(post, path = "/api/jobs/{id}/replay", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 201, description = "`{\"job_id\", \"replay_of\"}`", body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn replay_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let job_id = parse_job_id(&id)?;
    let s = &state.service;
    let old = s
        .store
        .get_job(job_id)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let trigger = s.registry.get(&old.trigger);
    let new_ids = s
        .intake
        .replay(
            &old,
            trigger.as_ref().map(|e| e.runtime.as_ref()),
            &s.config.router.retry,
        )
        .await
        .map_err(|e| match e {
            millgate_actors::triggers::IntakeError::Refused(m) => ApiError::conflict(m),
            e @ (millgate_actors::triggers::IntakeError::BadEvent(_)
            | millgate_actors::triggers::IntakeError::Busy { .. }) => {
                ApiError::conflict(e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "job_id": new_ids.first(), "job_ids": new_ids, "replay_of": job_id })),
    ))
}

/// Jobs whose retries ran out, newest first.
#[utoipa::path(get, path = "/api/dead-letters", tag = "jobs",
    responses((status = 200, description = "`{\"dead_letters\": [...]}`", body = Object)))]
async fn list_dead_letters(State(state): State<AdminState>) -> ApiResult<Json<Value>> {
    let list = state
        .service
        .store
        .dead_letters()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({ "dead_letters": list })))
}

/// Deletes a dead letter (the job record stays until retention removes it).
#[utoipa::path(delete, path = "/api/dead-letters/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 204), (status = 404, body = Object)))]
async fn delete_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let job_id = parse_job_id(&id)?;
    let removed = state
        .service
        .store
        .remove_dead_letter(job_id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no dead letter {id}")))
    }
}

// ---------------------------------------------------------------------------------------------
// System

fn actor_tree(cell: &ractor::ActorCell, names: &HashMap<ractor::ActorId, (String, u64)>) -> Value {
    let mut children: Vec<Value> = cell
        .get_children()
        .iter()
        .map(|c| actor_tree(c, names))
        .collect();
    children.sort_by_key(|c| c["name"].as_str().unwrap_or_default().to_string());
    let (name, restarts) = match (cell.get_name(), names.get(&cell.get_id())) {
        (Some(n), _) => (n.to_string(), None),
        (None, Some((trigger, restarts))) => (format!("trigger:{trigger}"), Some(*restarts)),
        (None, None) => (format!("worker:{}", cell.get_id()), None),
    };
    let mut v = json!({
        "name": name,
        "id": cell.get_id().to_string(),
        "state": format!("{:?}", cell.get_status()).to_lowercase(),
        "children": children,
    });
    if let Some(r) = restarts {
        v["restarts"] = json!(r);
    }
    v
}

fn depth<E>(r: Result<ractor::rpc::CallResult<usize>, E>) -> Option<usize> {
    match r {
        Ok(ractor::rpc::CallResult::Success(n)) => Some(n),
        _ => None,
    }
}

/// The supervision tree, store, router load, uptime and version.
#[utoipa::path(get, path = "/api/status", tag = "system",
    responses((status = 200, body = Object)))]
async fn status(State(state): State<AdminState>) -> Json<Value> {
    let s = &state.service;
    let router = ractor::call!(s.router, RouterMsg::Stats).ok();
    let names: HashMap<_, _> = s
        .registry
        .all()
        .iter()
        .filter_map(|e| {
            let actor = e.push_actor()?;
            let st = e.status();
            Some((actor.get_id(), (st.name, st.restarts)))
        })
        .collect();
    // ractor does not expose an actor's mailbox length; the queues that hold waiting work are
    // the factories' (runner and preprocessor pools) and the router's own.
    let wait = Some(Duration::from_secs(2));
    let pre = s.intake.preprocessors.actor();
    let queues = json!({
        "runner_pool": {
            "queued": depth(s.runner_pool.queue_depth(wait).await),
            "active": depth(s.runner_pool.active_workers(wait).await),
        },
        "preprocessor_pool": {
            "queued": depth(pre.queue_depth(wait).await),
            "active": depth(pre.active_workers(wait).await),
        },
    });
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "queues": queues,
        "uptime_secs": s.started_at.elapsed().as_secs(),
        "store": {
            "path": s.config.store.path,
            "size_bytes": s.store.size_on_disk(),
            "queue_depth": s.store.queue_depth(),
        },
        "router": router,
        "triggers": s.registry.all().iter().map(|e| e.status()).collect::<Vec<_>>(),
        "actors": actor_tree(&s.root, &names),
    }))
}

/// Server-Sent Events: what happens to events, jobs and triggers, live.
#[utoipa::path(get, path = "/api/events", tag = "system",
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream")))]
async fn events(
    State(state): State<AdminState>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = state.service.bus.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(ev) => {
                let data = serde_json::to_string(&ev).unwrap_or_else(|_| "{}".into());
                SseEvent::default().event(ev.name()).data(data)
            }
            Err(RecvError::Lagged(missed)) => SseEvent::default()
                .event("lagged")
                .data(json!({ "missed": missed }).to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `200` once every enabled trigger runs, `503` with those that do not.
pub async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let not_running: Vec<Value> = state
        .service
        .registry
        .all()
        .iter()
        .filter(|e| !matches!(e.runtime.state_name(), "running" | "suspended" | "disabled"))
        .map(|e| json!({"trigger": e.runtime.name(), "state": e.runtime.state_name()}))
        .collect();
    if not_running.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "not_running": not_running })),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Saved state of schedule and poll triggers

/// The trigger, when it is of a kind that keeps state (schedule, poll).
fn stateful(
    state: &AdminState,
    name: &str,
    readable_kafka: bool,
) -> ApiResult<std::sync::Arc<TriggerEntry>> {
    let e = entry(state, name)?;
    match e.runtime.kind() {
        "schedule" | "poll" => Ok(e),
        // A Kafka trigger's positions can be read; they are changed through `reset`.
        "kafka" if readable_kafka => Ok(e),
        kind => Err(ApiError::conflict(format!(
            "trigger `{name}` is a {kind} trigger; only schedule and poll triggers keep state"
        ))),
    }
}

/// A schedule's or poll's saved state: `{"trigger", "kind", "state"}` (`state` null when
/// nothing was saved yet). Schedule: `{"last_fire", "paused"}`; poll: what its runnable returned.
#[utoipa::path(get, path = "/api/triggers/{name}/state", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn get_source_state(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = stateful(&state, &name, true)?;
    let saved = state
        .service
        .store
        .source_state(&name)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(json!({
        "trigger": name,
        "kind": e.runtime.kind(),
        "state": saved.unwrap_or(Value::Null),
    })))
}

/// Sets a schedule's or poll's saved state from the JSON body (flushed before the answer).
/// A schedule's fields given replace the saved ones and the others stay (`{"paused": false}`
/// keeps `last_fire`); it reads `paused` at its next fire time and `last_fire` at its next
/// start. A poll's state is replaced; a poll running at that moment keeps its items but not
/// its new state, so the next poll starts from the value set.
#[utoipa::path(put, path = "/api/triggers/{name}/state", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    request_body(content = Object, description = "a poll: the new state (any JSON); a schedule: the fields to change, `{\"last_fire\"?, \"paused\"?}`"),
    responses((status = 200, body = Object), (status = 404, body = Object), (status = 409, body = Object), (status = 422, body = Object)))]
async fn put_source_state(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    require_json(&headers)?;
    let e = stateful(&state, &name, false)?;
    let new: Value = serde_json::from_slice(&body)
        .map_err(|err| ApiError::bad_request(format!("body is not valid JSON: {err}")))?;
    let store = &state.service.store;
    let saved = if e.runtime.kind() == "schedule" {
        use millgate_actors::triggers::schedule::ScheduleState;
        store
            .update_source_state(&name, |saved| ScheduleState::patch(&name, saved, &new))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(ApiError::invalid)?
    } else {
        store
            .put_source_state(&name, &new)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        new
    };
    Ok(Json(json!({
        "trigger": name,
        "kind": e.runtime.kind(),
        "state": saved,
    })))
}

/// Moves a Kafka trigger's consumer group to `earliest`, `latest`, an `{"offset": n}` (all
/// assigned partitions, or one with `topic`/`partition`) or the first offset at or after a
/// `{"timestamp": ms}`. The reset applies to the partitions this instance is assigned; the
/// messages read again run as new jobs. Answers 200 with the new positions once applied, 202
/// when the trigger has no partitions yet (it applies at the next assignment).
#[utoipa::path(post, path = "/api/triggers/{name}/reset", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    request_body(content = Object, description = "`{\"to\": \"earliest\" | \"latest\" | {\"offset\": n, \"topic\"?, \"partition\"?} | {\"timestamp\": ms}}`"),
    responses((status = 200, body = Object), (status = 202, body = Object), (status = 400, body = Object), (status = 404, body = Object), (status = 409, body = Object)))]
async fn reset_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    use millgate_actors::triggers::kafka;
    require_json(&headers)?;
    let e = entry(&state, &name)?;
    if e.runtime.kind() != "kafka" {
        return Err(ApiError::conflict(format!(
            "trigger `{name}` is a {} trigger; only Kafka triggers can be reset",
            e.runtime.kind()
        )));
    }
    let request: kafka::ResetRequest = serde_json::from_slice(&body).map_err(|err| {
        ApiError::bad_request(format!(
            "body must be {{\"to\": \"earliest\" | \"latest\" | {{\"offset\": n}} | {{\"timestamp\": ms}}}}: {err}"
        ))
    })?;
    let store = &state.service.store;
    let id = kafka::request_reset(store, &name, request.to)
        .await
        .map_err(ApiError::bad_request)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        let saved = kafka::KafkaState::load(store, &name).map_err(ApiError::internal)?;
        if let Some(last) = saved.last_reset.filter(|l| l["id"] == json!(id)) {
            let mut body = json!({"trigger": name});
            if let (Value::Object(b), Value::Object(l)) = (&mut body, last) {
                b.extend(l);
            }
            return Ok((StatusCode::OK, Json(body)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "trigger": name,
            "id": id,
            "status": "pending",
            "message": "the trigger has no assigned partitions yet; the reset applies when it gets them",
        })),
    ))
}
