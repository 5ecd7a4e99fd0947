//! `/api/runnables`: what jobs run on, with their live load.

use axum::extract::State;
use axum::Json;
use millgate_actors::config::RunnableKind;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(list_runnables))
}

/// One runnable of the configuration.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunnableView {
    pub name: String,
    /// Null for a definition this build cannot run (the configuration check refuses those).
    pub kind: Option<RunnableKindView>,
    /// Program and arguments (command runnables).
    pub command: Option<Vec<String>>,
    /// Where jobs are POSTed (http runnables).
    pub url: Option<String>,
    pub timeout_ms: u64,
    /// Jobs of this runnable running at once; null: as many as the runner pool has runners.
    pub concurrency: Option<usize>,
    pub running: usize,
    /// Jobs waiting for `concurrency`.
    pub waiting: usize,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunnableKindView {
    Command,
    Http,
    Echo,
}

impl From<RunnableKind> for RunnableKindView {
    fn from(k: RunnableKind) -> Self {
        match k {
            RunnableKind::Command => Self::Command,
            RunnableKind::Http => Self::Http,
            RunnableKind::Echo => Self::Echo,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunnableList {
    pub runnables: Vec<RunnableView>,
}

/// Every runnable with its live load.
#[utoipa::path(get, path = "/api/runnables", tag = "jobs",
    responses((status = 200, body = RunnableList)))]
async fn list_runnables(State(state): State<AdminState>) -> Json<RunnableList> {
    let s = &state.service;
    let stats = s.runnable_stats().await;
    let runnables = s
        .config
        .runnables
        .iter()
        .map(|(name, r)| {
            let load = stats.get(name).copied().unwrap_or_default();
            RunnableView {
                name: name.clone(),
                kind: r.resolved_kind().ok().map(RunnableKindView::from),
                command: r.command.clone(),
                url: r.url.clone(),
                timeout_ms: r.timeout.as_millis() as u64,
                concurrency: r.concurrency,
                running: load.running,
                waiting: load.waiting,
            }
        })
        .collect();
    Json(RunnableList { runnables })
}
