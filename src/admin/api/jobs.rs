//! `/api/jobs`, `/api/jobs/{id}[/replay]` and `/api/dead-letters`: jobs newest first, one job
//! with its event and timeline, replays, and the jobs whose retries ran out.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use millgate_actors::job::{JobId, JobRecord, JobStatus, TimelineEntry};
use millgate_actors::service::JobFilter;
use millgate_actors::store::DeadLetter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{parse_job_id, AdminState, ApiError, ApiResult};
use crate::admin::error::ErrorBody;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(replay_job))
        .routes(routes!(list_dead_letters))
        .routes(routes!(delete_dead_letter))
}

// ---------------------------------------------------------------------------------------------
// Views

/// Where a job is: `queued`, `parked` (its trigger is suspended), `running`, `retrying`, or
/// finished: `succeeded`, `dead_lettered`, `cancelled`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatusView {
    Queued,
    Parked,
    Running,
    Succeeded,
    Retrying,
    DeadLettered,
    Cancelled,
}

impl From<JobStatus> for JobStatusView {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Queued => Self::Queued,
            JobStatus::Parked => Self::Parked,
            JobStatus::Running => Self::Running,
            JobStatus::Succeeded => Self::Succeeded,
            JobStatus::Retrying => Self::Retrying,
            JobStatus::DeadLettered => Self::DeadLettered,
            JobStatus::Cancelled => Self::Cancelled,
        }
    }
}

/// One job, as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// A UUID v7: job ids sort by creation time.
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub trigger: String,
    /// The trigger's kind.
    pub kind: String,
    pub runnable: String,
    pub event_id: String,
    pub status: JobStatusView,
    /// What the runnable receives: the preprocessor's output, or the kind's default mapping.
    #[schema(value_type = Value)]
    pub args: Value,
    /// What the runnable returned, once it succeeded.
    #[schema(value_type = Value)]
    pub result: Option<Value>,
    /// The last attempt's error.
    pub error: Option<String>,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Wall time of the last run, once finished.
    pub duration_ms: Option<i64>,
    /// The job this one replays.
    #[schema(value_type = Option<String>)]
    pub replay_of: Option<JobId>,
}

impl From<&JobRecord> for JobView {
    fn from(r: &JobRecord) -> Self {
        Self {
            job_id: r.job_id,
            trigger: r.trigger.clone(),
            kind: r.kind.clone(),
            runnable: r.runnable.clone(),
            event_id: r.event_id.clone(),
            status: r.status.into(),
            args: r.args.clone(),
            result: r.result.clone(),
            error: r.error.clone(),
            attempts: r.attempts,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_ms: r.duration_ms(),
            replay_of: r.replay_of,
        }
    }
}

/// One job with the event it came from and its timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobView,
    /// The event as the trigger built it.
    #[schema(value_type = Value)]
    pub event: Value,
    pub timeline: Vec<TimelineStep>,
}

/// One step of a job's journey through the actors.
#[derive(Debug, Serialize, ToSchema)]
pub struct TimelineStep {
    pub at: DateTime<Utc>,
    /// `queued`, `parked`, `released`, `started`, `failed`, `retry_scheduled`, `succeeded`,
    /// `dead_lettered`, `cancelled`.
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Before the next attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
}

impl From<&TimelineEntry> for TimelineStep {
    fn from(t: &TimelineEntry) -> Self {
        Self {
            at: t.at,
            step: t.step.clone(),
            attempt: t.attempt,
            error: t.error.clone(),
            delay_ms: t.delay_ms,
        }
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView>,
    /// Pass as `before` for the next page; null on the last one.
    #[schema(value_type = Option<String>)]
    pub next_before: Option<JobId>,
}

/// The new job(s) a replay created.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    /// The first new job (a preprocessor may fan the event out into several).
    #[schema(value_type = Option<String>)]
    pub job_id: Option<JobId>,
    #[schema(value_type = Vec<String>)]
    pub job_ids: Vec<JobId>,
    #[schema(value_type = String)]
    pub replay_of: JobId,
}

/// A job whose retries ran out.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterView {
    #[schema(value_type = String)]
    pub job_id: JobId,
    pub trigger: String,
    pub runnable: String,
    /// The last attempt's error.
    pub error: String,
    pub attempts: u32,
    pub dead_lettered_at: DateTime<Utc>,
}

impl From<DeadLetter> for DeadLetterView {
    fn from(d: DeadLetter) -> Self {
        Self {
            job_id: d.job_id,
            trigger: d.trigger,
            runnable: d.runnable,
            error: d.error,
            attempts: d.attempts,
            dead_lettered_at: d.dead_lettered_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterView>,
}

// ---------------------------------------------------------------------------------------------
// Handlers

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
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
async fn list_jobs(
    State(state): State<AdminState>,
    Query(q): Query<JobsQuery>,
) -> ApiResult<Json<JobList>> {
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
    let page = state.service.jobs(&JobFilter {
        trigger: q.trigger,
        status,
        limit,
        before,
    })?;
    Ok(Json(JobList {
        jobs: page.jobs.iter().map(JobView::from).collect(),
        next_before: page.next_before,
    }))
}

/// One job with its event and timeline.
#[utoipa::path(get, path = "/api/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = JobDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<Json<JobDetail>> {
    let r = state.service.job(parse_job_id(&id)?)?;
    Ok(Json(JobDetail {
        job: JobView::from(&r),
        event: r.event.clone(),
        timeline: r.timeline.iter().map(TimelineStep::from).collect(),
    }))
}

/// Runs a finished or dead-lettered job again as a new job linked to it.
#[utoipa::path(post, path = "/api/jobs/{id}/replay", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 201, body = Replayed), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn replay_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Replayed>)> {
    let replay_of = parse_job_id(&id)?;
    let job_ids = state.service.replay(replay_of).await?;
    Ok((
        StatusCode::CREATED,
        Json(Replayed {
            job_id: job_ids.first().copied(),
            job_ids,
            replay_of,
        }),
    ))
}

/// Jobs whose retries ran out, newest first.
#[utoipa::path(get, path = "/api/dead-letters", tag = "jobs",
    responses((status = 200, body = DeadLetterList)))]
async fn list_dead_letters(State(state): State<AdminState>) -> ApiResult<Json<DeadLetterList>> {
    let dead_letters = state
        .service
        .dead_letters()?
        .into_iter()
        .map(DeadLetterView::from)
        .collect();
    Ok(Json(DeadLetterList { dead_letters }))
}

/// Deletes a dead letter (the job record stays until retention removes it).
#[utoipa::path(delete, path = "/api/dead-letters/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state.service.remove_dead_letter(parse_job_id(&id)?)?;
    Ok(StatusCode::NO_CONTENT)
}
