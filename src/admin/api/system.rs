//! `/api/status` (supervision tree, store, load), `/api/events` (the live event stream) and
//! `/readyz`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use millgate_actors::router::RouterStats;
use millgate_actors::service::PoolLoad;
use millgate_actors::supervisor::TriggerStatus;
use millgate_actors::triggers::TriggerState;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;

pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(events))
}

// ---------------------------------------------------------------------------------------------
// Status

/// The service as a whole.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    /// millgate's version.
    pub version: String,
    pub queues: Queues,
    pub uptime_secs: u64,
    pub store: StoreView,
    /// What the job router holds; null when it did not answer.
    pub router: Option<RouterView>,
    /// Every trigger's supervision status.
    pub triggers: Vec<TriggerStatusView>,
    /// The supervision tree from its root.
    pub actors: ActorNode,
}

/// The queues that hold waiting work: the pools' (ractor does not expose an actor's mailbox
/// length) and the router's own (`router`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Queues {
    pub runner_pool: PoolView,
    pub preprocessor_pool: PoolView,
}

/// A worker pool; null counts when it did not answer in time.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolView {
    pub queued: Option<usize>,
    pub active: Option<usize>,
}

impl From<PoolLoad> for PoolView {
    fn from(p: PoolLoad) -> Self {
        Self {
            queued: p.queued,
            active: p.active,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreView {
    pub path: String,
    pub size_bytes: u64,
    /// Unfinished jobs.
    pub queue_depth: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RouterView {
    pub jobs_in_router: usize,
    pub running: usize,
    /// Waiting for their runnable's `concurrency`.
    pub waiting_for_runnable: usize,
    /// Waiting behind an earlier job of the same `order_by` key.
    pub waiting_for_key: usize,
    pub retrying: usize,
}

impl From<RouterStats> for RouterView {
    fn from(r: RouterStats) -> Self {
        Self {
            jobs_in_router: r.jobs_in_router,
            running: r.running,
            waiting_for_runnable: r.waiting_for_runnable,
            waiting_for_key: r.waiting_for_key,
            retrying: r.retrying,
        }
    }
}

/// A trigger's supervision status.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerStatusView {
    pub name: String,
    pub kind: String,
    /// `starting`, `running`, `backing_off`, `disabled`.
    pub state: String,
    /// `backing_off` only: why its actor last failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// `backing_off` only: RFC 3339 time of the next start attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    pub restarts: u64,
    pub in_flight: usize,
}

impl From<TriggerStatus> for TriggerStatusView {
    fn from(s: TriggerStatus) -> Self {
        let (state, last_error, next_attempt) = match s.state {
            TriggerState::Starting => ("starting", None, None),
            TriggerState::Running => ("running", None, None),
            TriggerState::BackingOff {
                last_error,
                next_attempt,
                ..
            } => ("backing_off", Some(last_error), Some(next_attempt)),
            TriggerState::Disabled => ("disabled", None, None),
        };
        Self {
            name: s.name,
            kind: s.kind,
            state: state.to_string(),
            last_error,
            next_attempt,
            restarts: s.restarts,
            in_flight: s.in_flight,
        }
    }
}

/// One actor of the supervision tree.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActorNode {
    /// `job-router@<instance>`, `trigger:<name>`, `worker:<id>`, ...
    pub name: String,
    pub id: String,
    /// ractor's status, lower case: `running`, `stopping`, ...
    pub state: String,
    #[schema(no_recursion)]
    pub children: Vec<ActorNode>,
    /// Trigger actors: how many times the trigger was restarted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
}

fn actor_tree(
    cell: &ractor::ActorCell,
    names: &HashMap<ractor::ActorId, (String, u64)>,
) -> ActorNode {
    let mut children: Vec<ActorNode> = cell
        .get_children()
        .iter()
        .map(|c| actor_tree(c, names))
        .collect();
    children.sort_by(|a, b| a.name.cmp(&b.name));
    let (name, restarts) = match (cell.get_name(), names.get(&cell.get_id())) {
        (Some(n), _) => (n.to_string(), None),
        (None, Some((trigger, restarts))) => (format!("trigger:{trigger}"), Some(*restarts)),
        (None, None) => (format!("worker:{}", cell.get_id()), None),
    };
    ActorNode {
        name,
        id: cell.get_id().to_string(),
        state: format!("{:?}", cell.get_status()).to_lowercase(),
        children,
        restarts,
    }
}

/// The supervision tree, store, router load, uptime and version.
#[utoipa::path(get, path = "/api/status", tag = "system",
    responses((status = 200, body = StatusView)))]
async fn status(State(state): State<AdminState>) -> Json<StatusView> {
    let s = &state.service;
    let router = s.router_stats().await.map(RouterView::from);
    let triggers = s.triggers();
    // Pushed triggers' actors are unnamed: they are known by their trigger's name.
    let names: HashMap<_, _> = triggers
        .iter()
        .filter_map(|e| {
            let actor = e.push_actor()?;
            let st = e.status();
            Some((actor.get_id(), (st.name, st.restarts)))
        })
        .collect();
    let pools = s.pools_load().await;
    Json(StatusView {
        version: env!("CARGO_PKG_VERSION").to_string(),
        queues: Queues {
            runner_pool: pools.runner_pool.into(),
            preprocessor_pool: pools.preprocessor_pool.into(),
        },
        uptime_secs: s.started_at.elapsed().as_secs(),
        store: StoreView {
            path: s.config.store.path.display().to_string(),
            size_bytes: s.store.size_on_disk(),
            queue_depth: s.store.queue_depth(),
        },
        router,
        triggers: triggers
            .iter()
            .map(|e| TriggerStatusView::from(e.status()))
            .collect(),
        actors: actor_tree(&s.root(), &names),
    })
}

// ---------------------------------------------------------------------------------------------
// Live events

/// How many events a slow reader of the stream missed.
#[derive(Serialize)]
struct Lagged {
    missed: u64,
}

/// Server-Sent Events: what happens to events, jobs and triggers, live. Each event's name is
/// its `type` (`event_received`, `job_queued`, `job_succeeded`, `trigger_state`, ...; `lagged`
/// when the reader fell behind) and its data is JSON.
#[utoipa::path(get, path = "/api/events", tag = "system",
    responses((status = 200, description = "text/event-stream", body = String, content_type = "text/event-stream")))]
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
            Err(RecvError::Lagged(missed)) => {
                let data =
                    serde_json::to_string(&Lagged { missed }).unwrap_or_else(|_| "{}".into());
                SseEvent::default().event("lagged").data(data)
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

// ---------------------------------------------------------------------------------------------
// Readiness

/// `/readyz`: whether every enabled trigger runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// When not ready: the triggers that do not run, with their state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_running: Vec<NotRunning>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NotRunning {
    pub trigger: String,
    pub state: String,
}

/// `200` once every enabled trigger runs, `503` with those that do not.
pub async fn readyz(State(state): State<AdminState>) -> (StatusCode, Json<Readiness>) {
    let not_running: Vec<NotRunning> = state
        .service
        .triggers()
        .iter()
        .filter(|e| !(e.runtime.is_up() || e.runtime.is_disabled()))
        .map(|e| NotRunning {
            trigger: e.runtime.name().to_string(),
            state: e.runtime.state_name().to_string(),
        })
        .collect();
    let status = if not_running.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let ready = Readiness {
        ready: not_running.is_empty(),
        not_running,
    };
    (status, Json(ready))
}
