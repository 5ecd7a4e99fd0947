//! `/api/*` handlers, one file per resource. Every route is declared through utoipa-axum, so
//! the OpenAPI document and the router come from the same list and cannot drift apart; every
//! answer is a struct deriving `ToSchema`, so the document describes each body (utoipa-axum
//! collects the schemas from the handlers' `responses`).
//!
//! The handlers parse and check the HTTP request, call one [`ServiceHandle`] operation and turn
//! its result into a view; the service's refusals become HTTP errors in `super::error`.
//!
//! [`ServiceHandle`]: millgate_actors::service::ServiceHandle

mod jobs;
mod quarantine;
mod runnables;
mod state;
mod system;
mod triggers;

use millgate_actors::job::JobId;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use super::{AdminState, ApiError};

pub use system::readyz;

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
        .merge(triggers::routes())
        .merge(state::routes())
        .merge(runnables::routes())
        .merge(jobs::routes())
        .merge(system::routes())
        .merge(quarantine::routes())
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_job_id(id: &str) -> ApiResult<JobId> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("`{id}` is not a job id")))
}
