//! The actor behind triggers that are pushed to over HTTP (webhook, http route).
//!
//! The shared HTTP ingress hands each request to the trigger's actor, which authenticates it,
//! admits it against `max_in_flight`, builds the event and then lets a task carry it through
//! the [`Intake`] so that the actor's mailbox never waits on a disk flush or a job. A panic in
//! the actor (a bug on some input) fails only this trigger; its supervisor restarts it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::Instrument;

use super::delivery::EventId;
use super::{Accepted, Intake, IntakeError, Mode, TriggerRuntime};
use crate::intake::admission::Reservation;
use crate::model::ack::{AckHandle, Watchers};
use crate::model::event::Event;
use crate::model::job::{JobId, JobOutcome, JobStatus};

// ---------------------------------------------------------------------------------------------
// Messages

pub enum PushMsg {
    Request(Box<IncomingRequest>, RpcReplyPort<PushResponse>),
    /// Fails the actor on purpose: used by supervision tests and chaos drills.
    #[doc(hidden)]
    InjectFault(String),
}

/// An HTTP request as the ingress received it (body already size-checked).
#[derive(Debug, Clone)]
pub struct IncomingRequest {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Route parameters (http routes).
    pub params: BTreeMap<String, String>,
    /// The bytes of `[server] max_buffered_bytes` the body holds, given back once the request
    /// is dropped (it has become an event, or was refused).
    pub body_permit: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
}

/// What to answer.
#[derive(Debug)]
pub struct PushResponse {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl PushResponse {
    pub fn json(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            retry_after: None,
            body,
        }
    }

    pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self::json(status, error_body(code, message))
    }
}

pub fn error_body(code: &str, message: impl Into<String>) -> Value {
    json!({"error": {"code": code, "message": message.into()}})
}

/// A request refused before it became an event.
#[derive(Debug)]
pub struct Rejection {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

/// What differs between pushed kinds.
pub trait PushKind: Send + Sync {
    fn authorize(&self, req: &IncomingRequest) -> Result<(), String>;
    /// The credentials that do not depend on the body, checked before it is read.
    fn authorize_head(&self, headers: &HeaderMap, query: &[(String, String)])
        -> Result<(), String>;
    /// Fetches what [`PushKind::authorize_head`] needs from elsewhere, before it is called
    /// (the published keys of a Pub/Sub push's OIDC token); most kinds need nothing.
    fn prepare<'a>(
        &'a self,
        _headers: &'a HeaderMap,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>> {
        None
    }
    /// Whether the caller may read this trigger's jobs (`GET /jobs/{id}`).
    fn authorize_reader(&self, headers: &HeaderMap, query: &[(String, String)]) -> bool;
    fn event(&self, trigger: &str, req: &IncomingRequest) -> Result<Value, Rejection>;
    /// Where the event's id comes from (see [`super::delivery`]).
    fn event_id(
        &self,
        trigger: &str,
        req: &IncomingRequest,
        event: &Value,
    ) -> Result<EventId, Rejection>;
    fn mode(&self) -> Mode;
    fn sync_timeout(&self) -> Option<Duration>;
    /// The status of a sync answer whose job was dead-lettered (`500`; a Pub/Sub push
    /// acknowledges it with a `2xx` unless `on_dead_letter = "nack"`).
    fn dead_letter_status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct PushTrigger;

#[derive(Clone)]
pub struct PushArgs {
    pub runtime: Arc<TriggerRuntime>,
    pub trigger: Arc<super::TriggerConfig>,
    pub intake: Intake,
    pub watchers: Arc<Watchers>,
    pub default_sync_timeout: Duration,
}

impl Actor for PushTrigger {
    type Msg = PushMsg;
    type State = PushArgs;
    type Arguments = PushArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<PushMsg>,
        args: PushArgs,
    ) -> Result<PushArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<PushMsg>,
        msg: PushMsg,
        state: &mut PushArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PushMsg::InjectFault(why) => panic!("injected fault: {why}"),
            PushMsg::Request(req, reply) => admit(state, *req, reply),
        }
        Ok(())
    }
}

/// Checks the request and, when it is admitted, spawns its journey. The reply port is always
/// answered, here (refusals) or by the spawned task.
fn admit(state: &PushArgs, req: IncomingRequest, reply: RpcReplyPort<PushResponse>) {
    let rt = state.runtime.clone();
    let trigger = state.trigger.clone();
    let Some(kind) = trigger.spec.kind().push() else {
        let _ = reply.send(PushResponse::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("trigger `{}` is not served over HTTP", rt.name()),
        ));
        return;
    };
    if let Err(m) = kind.authorize(&req) {
        let _ = reply.send(PushResponse::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            m,
        ));
        return;
    }
    // One slot now, atomically; the rest of the event's jobs once the preprocessor has said
    // how many there are (`Intake::accept_reserved`).
    let Some(reservation) = rt.slots().try_reserve(1) else {
        rt.counters
            .rejected_busy
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = reply.send(busy(
            &rt,
            format!(
                "{} jobs in flight (max_in_flight = {})",
                rt.slots().current(),
                rt.max_in_flight
            ),
        ));
        return;
    };
    let payload = match kind.event(rt.name(), &req) {
        Ok(p) => p,
        Err(rej) => {
            let _ = reply.send(PushResponse::error(rej.status, rej.code, rej.message));
            return;
        }
    };
    let event_id = match kind.event_id(rt.name(), &req, &payload) {
        Ok(id) => id,
        Err(rej) => {
            let _ = reply.send(PushResponse::error(rej.status, rej.code, rej.message));
            return;
        }
    };
    let mode = kind.mode();
    let failed = kind.dead_letter_status();
    let timeout = kind.sync_timeout().unwrap_or(state.default_sync_timeout);
    let span = tracing::info_span!(
        "event",
        trigger = %rt.name(),
        kind = rt.kind(),
        event_id = tracing::field::Empty,
    );
    let intake = state.intake.clone();
    let watchers = state.watchers.clone();
    tokio::spawn(
        async move {
            // A jq `dedup_key` runs in the jq workers, off the actor.
            let event = match event_id.resolve(&intake.preprocessors, &payload).await {
                Ok(Some(id)) => Event::deterministic(id, payload),
                Ok(None) => Event::unique(rt.name(), payload),
                Err(rej) => {
                    let _ = reply.send(PushResponse::error(rej.status, rej.code, rej.message));
                    return;
                }
            };
            tracing::Span::current().record("event_id", event.id.as_str());
            tracing::debug!("event received");
            let answer = Answer {
                mode,
                timeout,
                failed,
            };
            let response = journey(&rt, &intake, &watchers, event, reservation, answer).await;
            let _ = reply.send(response);
        }
        .instrument(span),
    );
}

/// How a request is answered: when (`mode`, `timeout`) and with which status when its job was
/// dead-lettered.
struct Answer {
    mode: Mode,
    timeout: Duration,
    failed: StatusCode,
}

async fn journey(
    rt: &TriggerRuntime,
    intake: &Intake,
    watchers: &Watchers,
    event: Event,
    reservation: Reservation,
    Answer {
        mode,
        timeout,
        failed,
    }: Answer,
) -> PushResponse {
    let event_id = event.id.clone();
    let claim = if event.dedup {
        Some(super::delivery::claim(&event_id).await)
    } else {
        None
    };
    let mut receivers: Vec<(JobId, oneshot::Receiver<JobOutcome>)> = Vec::new();
    let accepted = intake
        .accept_reserved(rt, event, reservation, |id| {
            if mode == Mode::Sync {
                let (tx, rx) = oneshot::channel();
                receivers.push((id, rx));
                AckHandle::on_settle(move |o| {
                    let _ = tx.send(o.clone());
                })
            } else {
                AckHandle::none()
            }
        })
        .await;
    drop(claim);
    match accepted {
        Err(e @ IntakeError::Busy { .. }) => busy(rt, e.to_string()),
        Err(e @ (IntakeError::BadEvent(_) | IntakeError::Refused(_))) => {
            tracing::debug!(error = %e, "event refused");
            PushResponse::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_accepted",
                e.to_string(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "event not accepted");
            PushResponse::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_accepted",
                e.to_string(),
            )
        }
        // Pushed events are refused (above), never dead-lettered by the intake.
        Ok(Accepted::DeadLettered(id)) => PushResponse::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_accepted",
            format!("refused; see job {id}"),
        ),
        Ok(Accepted::Parked(ids)) => PushResponse::json(
            StatusCode::ACCEPTED,
            json!({
                "job_id": ids.first(), "job_ids": ids, "event_id": event_id, "parked": true,
                "message": format!("trigger `{}` is suspended: the jobs are stored and run when it is resumed", rt.name()),
            }),
        ),
        Ok(Accepted::Filtered) => PushResponse::json(
            StatusCode::OK,
            json!({"filtered": true, "event_id": event_id}),
        ),
        Ok(Accepted::Queued(ids)) if mode == Mode::Async => PushResponse::json(
            StatusCode::ACCEPTED,
            json!({"job_id": ids.first(), "job_ids": ids, "event_id": event_id}),
        ),
        Ok(Accepted::Queued(ids)) => {
            let waits = receivers
                .into_iter()
                .map(|(id, rx)| (id, async move { rx.await.ok() }))
                .collect();
            wait_for(&ids, waits, timeout, failed).await
        }
        Ok(Accepted::Duplicate(ids)) if mode == Mode::Async => PushResponse::json(
            StatusCode::OK,
            json!({"job_id": ids.first(), "job_ids": ids, "event_id": event_id, "duplicate": true}),
        ),
        Ok(Accepted::Duplicate(ids)) => {
            let mut waits = Vec::new();
            for id in &ids {
                let rx = watchers.watch(*id);
                let store = intake.store.clone();
                let id = *id;
                waits.push((id, async move {
                    // Registered first, then looked: a job that ended in between is seen here.
                    if let Ok(Some(r)) = store.get_job(id) {
                        match r.status {
                            JobStatus::Succeeded => {
                                return Some(JobOutcome::Succeeded(r.result.unwrap_or(Value::Null)))
                            }
                            JobStatus::DeadLettered => {
                                return Some(JobOutcome::DeadLettered(r.error.unwrap_or_default()))
                            }
                            _ => {}
                        }
                    }
                    rx.await.ok()
                }));
            }
            let r = wait_for(&ids, waits, timeout, failed).await;
            for id in &ids {
                watchers.forget(*id);
            }
            r
        }
    }
}

/// `429` with `Retry-After`: the trigger's jobs in flight leave no room for this event's.
fn busy(rt: &TriggerRuntime, why: String) -> PushResponse {
    let mut r = PushResponse::error(
        StatusCode::TOO_MANY_REQUESTS,
        "busy",
        format!("trigger `{}`: {why}; retry later", rt.name()),
    );
    r.retry_after = Some(1);
    r
}

/// Waits for every job's outcome up to `timeout` and shapes the sync answer: one job → its
/// result; several → an array; a dead letter → `failed` (500 by default); out of time → 504 (the jobs keep running).
async fn wait_for<F>(
    ids: &[JobId],
    waits: Vec<(JobId, F)>,
    timeout: Duration,
    failed: StatusCode,
) -> PushResponse
where
    F: std::future::Future<Output = Option<JobOutcome>>,
{
    let Some(first) = ids.first().copied() else {
        return PushResponse::json(StatusCode::OK, Value::Array(vec![]));
    };
    let all = futures::future::join_all(waits.into_iter().map(|(_, f)| f));
    let outcomes = match tokio::time::timeout(timeout, all).await {
        Ok(o) => o,
        Err(_) => {
            let mut body = error_body(
                "sync_timeout",
                format!(
                    "no outcome within {timeout:?}; the job keeps running, see GET /jobs/{first}"
                ),
            );
            body["job_id"] = json!(first);
            body["job_ids"] = json!(ids);
            return PushResponse::json(StatusCode::GATEWAY_TIMEOUT, body);
        }
    };
    let mut results = Vec::new();
    let mut failures = Vec::new();
    let mut status = failed;
    for (id, o) in ids.iter().zip(outcomes) {
        match o {
            Some(JobOutcome::Succeeded(v)) => results.push(v),
            Some(JobOutcome::DeadLettered(e)) => failures.push(json!({"job_id": id, "error": e})),
            None => {
                // Not durable: never an answer a sender could take for done.
                status = StatusCode::INTERNAL_SERVER_ERROR;
                failures.push(json!({"job_id": id, "error": "outcome lost (router stopped)"}));
            }
        }
    }
    if failures.is_empty() {
        let body = if ids.len() == 1 {
            results.swap_remove(0)
        } else {
            Value::Array(results)
        };
        return PushResponse::json(StatusCode::OK, body);
    }
    let message = failures
        .iter()
        .filter_map(|f| f["error"].as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut body = error_body("job_failed", message);
    body["job_id"] = json!(first);
    body["failures"] = Value::Array(failures);
    PushResponse::json(status, body)
}
