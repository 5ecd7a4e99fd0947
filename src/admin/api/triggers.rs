//! `/api/triggers` and `/api/triggers/{name}[/enable|disable|suspend|resume|parked/cancel]`:
//! triggers with their state and counters, added, replaced and removed through the API.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use millgate_actors::config::check_trigger_name;
use millgate_actors::supervisor::TriggerEntry;
use millgate_actors::triggers::{Mode, Origin, TriggerConfig, TriggerState};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AdminState, ApiError, ApiResult};
use crate::admin::error::ErrorBody;
use crate::admin::guard::{self, check_programs};

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, add_trigger))
        .routes(routes!(get_trigger, replace_trigger, delete_trigger))
        .routes(routes!(enable_trigger))
        .routes(routes!(disable_trigger))
        .routes(routes!(suspend_trigger))
        .routes(routes!(resume_trigger))
        .routes(routes!(cancel_parked))
}

// ---------------------------------------------------------------------------------------------
// Views

/// One trigger: its definition (secrets as `***`), supervision state and counters.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerView {
    pub name: String,
    /// The `kind = "..."` of the trigger (`webhook`, `http`, `nats`, `mqtt`, `kafka`, `sqs`,
    /// `pubsub`, `pubsub_push`, `schedule`, `poll`).
    pub kind: String,
    /// Pushed kinds: answered when the job is queued or when it has finished; null otherwise.
    pub mode: Option<ModeView>,
    /// Where it was defined.
    pub source: SourceView,
    pub enabled: bool,
    /// Suspended: events are accepted, their jobs parked.
    pub suspended: bool,
    /// `starting`, `running`, `backing_off`, `disabled`.
    pub state: String,
    /// While backing off: why the trigger's actor last failed.
    pub last_error: Option<String>,
    /// While backing off: RFC 3339 time of the next start attempt.
    pub next_attempt: Option<String>,
    pub restarts: u64,
    pub in_flight: usize,
    /// Jobs parked while suspended.
    pub parked: usize,
    /// Events per second over the last minute.
    pub rate_1m: f64,
    pub counters: TriggerCounters,
    /// The definition, as a `[[triggers]]` entry, with its secrets replaced by `***`.
    #[schema(value_type = Object)]
    pub config: Value,
    /// What the trigger's source reports: a schedule's next fire times and counters, a broker
    /// connection's state (Kafka: group, assigned partitions and positions).
    #[schema(value_type = Value)]
    pub source_status: Value,
    /// Whether the trigger fires on its own clock (schedule, poll): it has next fire times and
    /// a saved state an operator may edit.
    pub timed: bool,
    /// `source_status` again for schedule and poll triggers (null for others): kept for the
    /// clients of the first API version.
    #[schema(value_type = Value)]
    pub schedule: Value,
    /// Resume only: how many parked jobs were released.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeView {
    Async,
    Sync,
}

impl From<Mode> for ModeView {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Async => Self::Async,
            Mode::Sync => Self::Sync,
        }
    }
}

/// `config`: `config.toml` (changed there only); `api`: added through this API.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceView {
    Config,
    Api,
}

impl From<Origin> for SourceView {
    fn from(o: Origin) -> Self {
        match o {
            Origin::Config => Self::Config,
            Origin::Api => Self::Api,
        }
    }
}

/// Counts since the service started (Prometheus has its own, at `/metrics`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerCounters {
    pub events_received: u64,
    pub events_filtered: u64,
    pub events_duplicate: u64,
    pub jobs_created: u64,
    pub jobs_succeeded: u64,
    pub jobs_dead_lettered: u64,
    pub rejected_busy: u64,
}

/// `GET /api/triggers`: every trigger, sorted by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerView>,
}

/// The trigger's definition with its secrets replaced by `***`.
fn redacted_config(c: &TriggerConfig) -> Value {
    let mut v = Value::Object(c.to_map());
    crate::admin::redact::redact(&mut v);
    v
}

fn trigger_view(entry: &TriggerEntry, state: &AdminState) -> TriggerView {
    let rt = &entry.runtime;
    let status = entry.status();
    let (last_error, next_attempt) = match status.state {
        TriggerState::BackingOff {
            last_error,
            next_attempt,
            ..
        } => (Some(last_error), Some(next_attempt)),
        _ => (None, None),
    };
    let source_status = rt
        .source_status
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let c = &rt.counters;
    let count = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    TriggerView {
        name: rt.name().to_string(),
        kind: rt.kind().to_string(),
        mode: entry.config.mode().map(ModeView::from),
        source: entry.origin.into(),
        enabled: !rt.is_disabled(),
        suspended: rt.is_suspended(),
        state: rt.state_name().to_string(),
        last_error,
        next_attempt,
        restarts: status.restarts,
        in_flight: status.in_flight,
        parked: state.service.store.parked_count(rt.name()),
        rate_1m: (rt.rate.per_second() * 1000.0).round() / 1000.0,
        counters: TriggerCounters {
            events_received: count(&c.events_received),
            events_filtered: count(&c.events_filtered),
            events_duplicate: count(&c.events_duplicate),
            jobs_created: count(&c.jobs_created),
            jobs_succeeded: count(&c.jobs_succeeded),
            jobs_dead_lettered: count(&c.jobs_dead_lettered),
            rejected_busy: count(&c.rejected_busy),
        },
        config: redacted_config(&entry.config),
        // The first API version's name, by kind: a frozen compatibility field.
        timed: entry.config.spec.kind().timed(),
        schedule: if entry.config.spec.kind().timed() {
            source_status.clone()
        } else {
            Value::Null
        },
        source_status,
        released: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Every trigger with its state and counters.
#[utoipa::path(get, path = "/api/triggers", tag = "triggers",
    responses((status = 200, description = "every trigger, sorted by name", body = TriggerList)))]
async fn list_triggers(State(state): State<AdminState>) -> Json<TriggerList> {
    let triggers = state
        .service
        .triggers()
        .iter()
        .map(|e| trigger_view(e, &state))
        .collect();
    Json(TriggerList { triggers })
}

/// One trigger.
#[utoipa::path(get, path = "/api/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = TriggerView), (status = 404, body = ErrorBody)))]
async fn get_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    let e = state.service.trigger(&name)?;
    Ok(Json(trigger_view(&e, &state)))
}

// ---------------------------------------------------------------------------------------------
// Adding, replacing, removing

/// Parses a trigger from JSON or TOML (`content-type: application/toml`).
fn parse_trigger(headers: &HeaderMap, body: &[u8]) -> ApiResult<TriggerConfig> {
    let toml = guard::media_type(headers).as_deref() == Some(guard::TOML);
    let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
    use millgate_actors::json::{check, parse, JsonError};
    let map = if toml {
        let map = toml_table(text)?;
        // TOML has no depth limit of its own; what is stored must read back.
        for v in map.values() {
            check(v).map_err(ApiError::too_deep)?;
        }
        map
    } else {
        match parse(text.as_bytes()) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(ApiError::bad_request("body must be a JSON object")),
            Err(e @ JsonError::TooDeep { .. }) => return Err(ApiError::too_deep(e)),
            Err(JsonError::Invalid(e)) => {
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

/// A trigger's keys from TOML: bare keys, or a single `[[triggers]]` entry.
fn toml_table(text: &str) -> ApiResult<Map<String, Value>> {
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
        .ok_or_else(|| ApiError::bad_request("body is not a table"))
}

/// Adds a trigger (same shape as a `[[triggers]]` entry; JSON, or TOML with `content-type: application/toml`).
#[utoipa::path(post, path = "/api/triggers", tag = "triggers",
    request_body(content = Object, description = "a trigger, as in `[[triggers]]`"),
    responses((status = 201, body = TriggerView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn add_trigger(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<TriggerView>)> {
    let t = parse_trigger(&headers, &body)?;
    check_programs(&state, &t)?;
    let e = state.service.add_trigger(t).await?;
    Ok((StatusCode::CREATED, Json(trigger_view(&e, &state))))
}

/// Replaces a trigger: the old actor stops, the new one starts.
#[utoipa::path(put, path = "/api/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    request_body(content = Object, description = "the whole new trigger"),
    responses((status = 200, body = TriggerView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn replace_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<TriggerView>> {
    let t = parse_trigger(&headers, &body)?;
    check_programs(&state, &t)?;
    if t.name() != name {
        return Err(ApiError::invalid(format!(
            "name: the body names `{}` but the path names `{name}`; renaming is DELETE + POST",
            t.name()
        )));
    }
    let e = state.service.replace_trigger(t).await?;
    Ok(Json(trigger_view(&e, &state)))
}

/// Removes a trigger added through the API.
#[utoipa::path(delete, path = "/api/triggers/{name}", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.remove_trigger(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

async fn set_enabled(
    state: &AdminState,
    name: &str,
    enabled: bool,
) -> ApiResult<Json<TriggerView>> {
    let e = state.service.set_enabled(name, enabled).await?;
    Ok(Json(trigger_view(&e, state)))
}

async fn set_suspended(
    state: &AdminState,
    name: &str,
    suspended: bool,
) -> ApiResult<Json<TriggerView>> {
    let (e, released) = state.service.set_suspended(name, suspended).await?;
    let mut view = trigger_view(&e, state);
    if !suspended {
        view.released = Some(released);
    }
    Ok(Json(view))
}

/// Enables a trigger (remembered across restarts).
#[utoipa::path(post, path = "/api/triggers/{name}/enable", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = TriggerView), (status = 404, body = ErrorBody)))]
async fn enable_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    set_enabled(&state, &name, true).await
}

/// Disables a trigger (remembered across restarts); a disabled webhook or route answers 503.
#[utoipa::path(post, path = "/api/triggers/{name}/disable", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = TriggerView), (status = 404, body = ErrorBody)))]
async fn disable_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    set_enabled(&state, &name, false).await
}

/// Suspends a trigger: events are still accepted and acknowledged, their jobs are parked.
#[utoipa::path(post, path = "/api/triggers/{name}/suspend", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = TriggerView), (status = 404, body = ErrorBody)))]
async fn suspend_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    set_suspended(&state, &name, true).await
}

/// Resumes a suspended trigger and releases its parked jobs, in arrival order (`released`:
/// how many).
#[utoipa::path(post, path = "/api/triggers/{name}/resume", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = TriggerView), (status = 404, body = ErrorBody)))]
async fn resume_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<TriggerView>> {
    set_suspended(&state, &name, false).await
}

/// How many parked jobs were dropped.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    pub cancelled: usize,
}

/// Drops a trigger's parked jobs (status `cancelled`).
#[utoipa::path(post, path = "/api/triggers/{name}/parked/cancel", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = Cancelled), (status = 404, body = ErrorBody)))]
async fn cancel_parked(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Cancelled>> {
    let cancelled = state.service.cancel_parked(&name).await?;
    Ok(Json(Cancelled { cancelled }))
}
