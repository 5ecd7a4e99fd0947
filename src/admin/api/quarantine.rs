//! `/api/quarantine`: records the store could not decode, moved aside instead of stopping the
//! service (actors/src/store/quarantine.rs says when and why).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AdminState, ApiResult};
use crate::admin::error::ErrorBody;

/// One quarantined record (its raw bytes stay in the store).
#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantinedView {
    /// Identifies the entry (for `DELETE /api/quarantine/{id}`).
    pub id: u64,
    /// The store tree it was read from: `jobs`, `events`, `api_triggers`, `dedup`, ...
    pub tree: String,
    /// Its key: a job id, an event id, a trigger name.
    pub key: String,
    /// Size of the raw record, in bytes.
    pub size: usize,
    /// Why it could not be decoded.
    pub error: String,
    pub quarantined_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuarantineList {
    pub records: Vec<QuarantinedView>,
}

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_quarantine))
        .routes(routes!(delete_quarantined))
}

/// Records the store could not decode, oldest first.
#[utoipa::path(get, path = "/api/quarantine", tag = "system",
    responses((status = 200, body = QuarantineList)))]
async fn list_quarantine(State(state): State<AdminState>) -> ApiResult<Json<QuarantineList>> {
    let records = state
        .service
        .quarantined()?
        .into_iter()
        .map(|r| QuarantinedView {
            id: r.id,
            tree: r.tree,
            key: r.key,
            size: r.size,
            error: r.error,
            quarantined_at: r.quarantined_at,
        })
        .collect();
    Ok(Json(QuarantineList { records }))
}

/// Deletes a quarantined record for good.
#[utoipa::path(delete, path = "/api/quarantine/{id}", tag = "system",
    params(("id" = u64, Path, description = "the entry's id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_quarantined(
    State(state): State<AdminState>,
    Path(id): Path<u64>,
) -> ApiResult<StatusCode> {
    state.service.drop_quarantined(id)?;
    Ok(StatusCode::NO_CONTENT)
}
