//! `/api/triggers/{name}/state` and `/api/triggers/{name}/reset`: a trigger's saved state and
//! resets of its position, as far as its kind allows (the service asks the kind:
//! actors/src/service/state.rs).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use millgate_actors::service::{ResetOutcome, SavedStateOf};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AdminState, ApiError, ApiResult};
use crate::admin::error::ErrorBody;
use crate::admin::guard::require_json;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(get_source_state, put_source_state))
        .routes(routes!(reset_trigger))
}

/// A trigger's saved state.
#[derive(Debug, Serialize, ToSchema)]
pub struct SavedStateView {
    pub trigger: String,
    pub kind: String,
    /// Null when nothing was saved yet. Schedule: `{"last_fire", "paused"}`; poll: what its
    /// runnable returned; Kafka: the group's positions and its last reset.
    #[schema(value_type = Value)]
    pub state: Option<Value>,
}

fn view(trigger: String, saved: SavedStateOf) -> SavedStateView {
    SavedStateView {
        trigger,
        kind: saved.kind.to_string(),
        state: saved.state,
    }
}

/// A JSON body within `[server] max_json_depth`, as every document millgate stores.
fn json_body(body: &[u8]) -> ApiResult<Value> {
    use millgate_actors::json::{parse, JsonError};
    parse(body).map_err(|err| match err {
        JsonError::TooDeep { .. } => ApiError::too_deep(err),
        JsonError::Invalid(e) => ApiError::bad_request(format!("body is not valid JSON: {e}")),
    })
}

/// A trigger's saved state: `{"trigger", "kind", "state"}` (`state` null when nothing was saved
/// yet). Schedule: `{"last_fire", "paused"}`; poll: what its runnable returned; Kafka: its
/// group's positions (changed through `reset`). Other kinds keep none (409).
#[utoipa::path(get, path = "/api/triggers/{name}/state", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    responses((status = 200, body = SavedStateView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn get_source_state(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<Json<SavedStateView>> {
    let saved = state.service.saved_state(&name)?;
    Ok(Json(view(name, saved)))
}

/// Sets a schedule's or poll's saved state from the JSON body (flushed before the answer).
/// A schedule's fields given replace the saved ones and the others stay (`{"paused": false}`
/// keeps `last_fire`); it reads `paused` at its next fire time and `last_fire` at its next
/// start. A poll's state is replaced; a poll running at that moment keeps its items but not
/// its new state, so the next poll starts from the value set.
#[utoipa::path(put, path = "/api/triggers/{name}/state", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    request_body(content = Object, description = "a poll: the new state (any JSON); a schedule: the fields to change, `{\"last_fire\"?, \"paused\"?}`"),
    responses((status = 200, body = SavedStateView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_source_state(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<SavedStateView>> {
    require_json(&headers)?;
    let new = json_body(&body)?;
    let saved = state.service.put_saved_state(&name, new).await?;
    Ok(Json(view(name, saved)))
}

/// A reset: applied (the kind's record of it: Kafka's `id`, `to`, `applied_at`, `partitions`)
/// or pending (`id`, `status: "pending"`, `message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResetView {
    pub trigger: String,
    /// What the trigger's kind reports of the reset.
    #[serde(flatten)]
    pub outcome: Map<String, Value>,
}

/// Moves a Kafka trigger's consumer group to `earliest`, `latest`, an `{"offset": n}` (all
/// assigned partitions, or one with `topic`/`partition`) or the first offset at or after a
/// `{"timestamp": ms}`. The reset applies to the partitions this instance is assigned; the
/// messages read again run as new jobs. Answers 200 with the new positions once applied, 202
/// when the trigger has no partitions yet (it applies at the next assignment).
#[utoipa::path(post, path = "/api/triggers/{name}/reset", tag = "triggers",
    params(("name" = String, Path, description = "trigger name")),
    request_body(content = Object, description = "`{\"to\": \"earliest\" | \"latest\" | {\"offset\": n, \"topic\"?, \"partition\"?} | {\"timestamp\": ms}}`"),
    responses((status = 200, body = ResetView), (status = 202, body = ResetView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reset_trigger(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ResetView>)> {
    require_json(&headers)?;
    let request = json_body(&body)?;
    let (status, outcome) = match state.service.reset(&name, request).await? {
        ResetOutcome::Applied(v) => (StatusCode::OK, v),
        ResetOutcome::Pending(v) => (StatusCode::ACCEPTED, v),
    };
    let mut outcome = match outcome {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    // The path names the trigger; a key of the kind's must not write it twice.
    outcome.remove("trigger");
    Ok((
        status,
        Json(ResetView {
            trigger: name,
            outcome,
        }),
    ))
}
