//! The shared path from event to durably queued jobs: dedup, checks, preprocess, order key,
//! admission against `max_in_flight`, persist, hand to the router. Every trigger kind uses it,
//! so every kind gets the same guarantee.
//!
//! An event that cannot become jobs (nested too deep, a failing or timed-out preprocessor, a
//! fan-out past `max_fan_out`) is the event's fault, not the service's: pushed kinds refuse it
//! (the sender hears why), pulled kinds get a dead letter recording the reason, durable before
//! the source is acknowledged, so nothing a broker hands over disappears without a trace.

pub mod admission;
pub mod runtime;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::model::ack::AckHandle;
use crate::model::event::Event;
use crate::model::events::{EventBus, SystemEvent};
use crate::model::job::{JobId, JobRecord, JobStatus, TimelineEntry};
use crate::model::metrics;
use crate::model::settings::RetryPolicy;
use crate::preprocess::{KeyExpr, PreprocessError, PreprocessorPool, DEFAULT_JQ_TIMEOUT};
use crate::router::{RoutedJob, RouterMsg};
use crate::store::{Store, StoreError};
use runtime::TriggerRuntime;

use admission::Reservation;

/// The timeline step of a job that stands for an event refused at the intake.
pub const REFUSED_STEP: &str = "refused";

/// What became of one event handed to the [`Intake`].
#[derive(Debug, Clone, PartialEq)]
pub enum Accepted {
    /// Durably queued as these jobs.
    Queued(Vec<JobId>),
    /// Durably stored as these jobs, parked because the trigger is suspended.
    Parked(Vec<JobId>),
    /// The preprocessor produced no job; the event is acknowledged.
    Filtered,
    /// The event id was seen within the dedup window; these are the jobs it created then.
    Duplicate(Vec<JobId>),
    /// The event could not become jobs; a dead letter with the reason is durable (pulled kinds).
    DeadLettered(JobId),
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The event cannot become jobs (too deep, preprocessor failure, fan-out past the limit):
    /// the event is at fault, not the service.
    #[error("{0}")]
    BadEvent(String),
    /// Its jobs do not fit under `max_in_flight` now.
    #[error("{jobs} job(s) do not fit: {in_flight} in flight, max_in_flight = {max}")]
    Busy {
        jobs: usize,
        in_flight: usize,
        max: usize,
    },
    /// The preprocessor pool is gone (the service is stopping): nothing may be acknowledged.
    #[error("the preprocessor pool is not running")]
    PreprocessorsDown,
    #[error("could not queue the job durably: {0}")]
    Store(#[from] StoreError),
    #[error("the job router is not running")]
    RouterDown,
    #[error("{0}")]
    Refused(String),
}

impl From<PreprocessError> for IntakeError {
    fn from(e: PreprocessError) -> Self {
        match e {
            PreprocessError::PoolDown => IntakeError::PreprocessorsDown,
            other => IntakeError::BadEvent(format!("preprocessor failed: {other}")),
        }
    }
}

/// One event part-way through the intake.
enum Staged {
    /// Nothing (more) to write: a duplicate or a filtered event.
    Done(Accepted),
    /// Its jobs are written, waiting for the flush.
    Written(WrittenEvent),
}

struct WrittenEvent {
    event_id: String,
    records: Vec<JobRecord>,
    parked: bool,
    /// A dead letter standing for a refused event.
    refused: bool,
    reservation: Reservation,
}

/// The shared path from event to durably queued jobs: dedup, preprocess, order key, persist,
/// hand to the router.
#[derive(Clone)]
pub struct Intake {
    pub store: Store,
    pub router: ractor::ActorRef<RouterMsg>,
    pub preprocessors: PreprocessorPool,
    pub bus: EventBus,
}

impl Intake {
    /// Persists the jobs for `event` and returns once they are flushed to disk (written, for a
    /// source that redelivers: see [`TriggerRuntime::redelivers`]). `ack` builds
    /// the handle settled with each job's final outcome (for sources that acknowledge late).
    /// The jobs take their in-flight slots whether or not they fit: the caller waited for room
    /// before it took the event from its source.
    pub async fn accept(
        &self,
        rt: &TriggerRuntime,
        event: Event,
        ack: impl FnMut(JobId) -> AckHandle,
    ) -> Result<Accepted, IntakeError> {
        let mut ack = ack;
        let mut out = self.accept_batch(rt, vec![event], |_, id| ack(id)).await;
        out.pop()
            .unwrap_or(Err(IntakeError::Refused("empty batch".into())))
    }

    /// [`Intake::accept`] for an event admitted with `reservation` (a pushed request): its jobs
    /// must fit under `max_in_flight` together, or the event is refused with
    /// [`IntakeError::Busy`]. Refused events are never dead-lettered here: the sender hears why.
    pub async fn accept_reserved(
        &self,
        rt: &TriggerRuntime,
        event: Event,
        reservation: Reservation,
        mut ack: impl FnMut(JobId) -> AckHandle,
    ) -> Result<Accepted, IntakeError> {
        let mut out = self
            .accept_all(rt, vec![(event, Some(reservation))], |_, id| ack(id))
            .await;
        out.pop()
            .unwrap_or(Err(IntakeError::Refused("empty batch".into())))
    }

    /// [`Intake::accept`] for several events of one source, in order: their jobs share one
    /// flush to disk and reach the router in the events' order (which `order_by` relies on).
    /// `ack(i, job)` builds the handle of a job of the `i`-th event. One result per event; a
    /// failed flush fails every event that had jobs to write.
    pub async fn accept_batch(
        &self,
        rt: &TriggerRuntime,
        events: Vec<Event>,
        ack: impl FnMut(usize, JobId) -> AckHandle,
    ) -> Vec<Result<Accepted, IntakeError>> {
        let events = events.into_iter().map(|e| (e, None)).collect();
        self.accept_all(rt, events, ack).await
    }

    async fn accept_all(
        &self,
        rt: &TriggerRuntime,
        events: Vec<(Event, Option<Reservation>)>,
        mut ack: impl FnMut(usize, JobId) -> AckHandle,
    ) -> Vec<Result<Accepted, IntakeError>> {
        let mut results = Vec::with_capacity(events.len());
        let mut staged = Vec::new();
        for (i, (event, reservation)) in events.into_iter().enumerate() {
            match self.stage(rt, event, reservation).await {
                Ok(Staged::Done(a)) => results.push(Ok(a)),
                Ok(Staged::Written(w)) => {
                    results.push(Ok(Accepted::Filtered)); // replaced below
                    staged.push((i, w));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if staged.is_empty() {
            return results;
        }
        // A source that redelivers is the log: its jobs reach the disk with the next group
        // commit, and a crash before that makes the source hand the event over again. Dead
        // letters are durable before the source hears anything, whatever the source.
        // (The committer writes what nobody waits for within LAZY_FLUSH: store/mod.rs.)
        let durable_now = !rt.redelivers || staged.iter().any(|(_, w)| w.refused);
        let committed = if durable_now {
            self.store.commit().await
        } else {
            Ok(())
        };
        if let Err(e) = committed {
            for (i, _) in &staged {
                results[*i] = Err(IntakeError::Store(e.clone()));
            }
            return results;
        }
        let name = rt.name();
        let span = tracing::Span::current();
        let mut jobs = Vec::new();
        for (i, mut w) in staged {
            let ids: Vec<JobId> = w.records.iter().map(|r| r.job_id).collect();
            if w.refused {
                self.announce_refused(rt, &w.records);
                results[i] = Ok(Accepted::DeadLettered(ids[0]));
                continue;
            }
            rt.counters
                .jobs_created
                .fetch_add(w.records.len() as u64, Ordering::Relaxed);
            for r in &w.records {
                self.bus.publish(|| {
                    if w.parked {
                        SystemEvent::JobParked {
                            trigger: name.into(),
                            job_id: r.job_id,
                        }
                    } else {
                        SystemEvent::JobQueued {
                            trigger: name.into(),
                            job_id: r.job_id,
                            event_id: w.event_id.clone(),
                        }
                    }
                });
            }
            if w.parked {
                tracing::debug!(jobs = ids.len(), "trigger suspended: jobs parked");
                results[i] = Ok(Accepted::Parked(ids));
                continue;
            }
            for record in w.records {
                let handle = rt.ack_handle_reserved(&mut w.reservation, ack(i, record.job_id));
                let span = tracing::info_span!(parent: &span, "job", job_id = %record.job_id);
                jobs.push(RoutedJob {
                    record,
                    retry: rt.retry.clone(),
                    ack: handle,
                    span,
                });
            }
            results[i] = Ok(Accepted::Queued(ids));
        }
        if !jobs.is_empty() && self.router.cast(RouterMsg::Submit(jobs)).is_err() {
            for r in results.iter_mut() {
                if matches!(r, Ok(Accepted::Queued(_))) {
                    *r = Err(IntakeError::RouterDown);
                }
            }
        }
        results
    }

    /// Dedup, checks, preprocess and write one event's jobs (not yet flushed).
    async fn stage(
        &self,
        rt: &TriggerRuntime,
        event: Event,
        reservation: Option<Reservation>,
    ) -> Result<Staged, IntakeError> {
        let name = rt.name();
        rt.counters.events_received.fetch_add(1, Ordering::Relaxed);
        rt.rate.record();
        rt.counters.metrics.received.increment(1);
        self.bus.publish(|| SystemEvent::EventReceived {
            trigger: name.into(),
            event_id: event.id.clone(),
        });
        if event.dedup {
            if let Some(ids) = self.store.dedup_get(&event.id)? {
                rt.counters.events_duplicate.fetch_add(1, Ordering::Relaxed);
                rt.counters.metrics.deduplicated.increment(1);
                tracing::debug!(event_id = %event.id, "duplicate event, returning its earlier jobs");
                self.bus.publish(|| SystemEvent::EventDuplicate {
                    trigger: name.into(),
                    event_id: event.id.clone(),
                    job_ids: ids.clone(),
                });
                return Ok(Staged::Done(Accepted::Duplicate(ids)));
            }
        }
        // Pushed requests come with their admission; pulled sources waited for room already.
        let pushed = reservation.is_some();
        let reservation = reservation.unwrap_or_else(|| rt.slots().reserve(0));
        let payload = Arc::new(event.payload);
        let outputs = match self.check_and_preprocess(rt, &event.defect, &payload).await {
            Ok(outputs) => outputs,
            Err(IntakeError::BadEvent(reason)) if !pushed => {
                let record = self.write_refused(rt, &event.id, &payload, &reason)?;
                return Ok(Staged::Written(WrittenEvent {
                    event_id: event.id,
                    records: vec![record],
                    parked: false,
                    refused: true,
                    reservation,
                }));
            }
            Err(e) => return Err(e),
        };
        if outputs.is_empty() {
            rt.counters.events_filtered.fetch_add(1, Ordering::Relaxed);
            rt.counters.metrics.filtered.increment(1);
            tracing::debug!(event_id = %event.id, "event filtered by preprocessor");
            self.bus.publish(|| SystemEvent::EventFiltered {
                trigger: name.into(),
                event_id: event.id.clone(),
            });
            return Ok(Staged::Done(Accepted::Filtered));
        }
        let mut reservation = reservation;
        let slots = rt.slots();
        if !reservation.resize(outputs.len(), slots.max(), !pushed) {
            rt.counters.rejected_busy.fetch_add(1, Ordering::Relaxed);
            return Err(IntakeError::Busy {
                jobs: outputs.len(),
                in_flight: slots.current().saturating_sub(reservation.held()),
                max: slots.max(),
            });
        }
        let order_key = match &rt.order_by {
            Some(expr) => Some(self.order_key(expr, &payload).await?),
            None => None,
        };
        let parked = rt.is_suspended();
        let records: Vec<JobRecord> = outputs
            .into_iter()
            .map(|args| {
                let mut r = JobRecord::new(
                    name,
                    rt.kind(),
                    &rt.runnable,
                    &event.id,
                    args,
                    order_key.clone(),
                );
                if parked {
                    r.status = JobStatus::Parked;
                    r.timeline = vec![TimelineEntry::now("parked")];
                }
                r
            })
            .collect();
        self.store.put_event(&event.id, &payload)?;
        // A source that redelivers only hands over again what was in flight when millgate
        // stopped (Kafka resumes from its saved positions): the job log's retained jobs answer
        // those, so no dedup entry is kept for `dedup_ttl` (sled's memory grows with every
        // entry: +100 MiB per million measured). Idempotency keys, fire times and poll items
        // keep theirs.
        let dedup_id = (event.dedup && !rt.redelivers).then_some(event.id.as_str());
        self.store.write_jobs(&records, dedup_id)?;
        Ok(Staged::Written(WrittenEvent {
            event_id: event.id,
            records,
            parked,
            refused: false,
            reservation,
        }))
    }

    /// The checks an event must pass, then its preprocessor's outputs (the jobs' args).
    async fn check_and_preprocess(
        &self,
        rt: &TriggerRuntime,
        defect: &Option<String>,
        payload: &Arc<Value>,
    ) -> Result<Vec<Value>, IntakeError> {
        if let Some(defect) = defect {
            return Err(IntakeError::BadEvent(defect.clone()));
        }
        // The payload sits one level inside the event object.
        let limit = crate::model::json::max_depth() + 1;
        if crate::model::json::depth(payload) > limit {
            return Err(IntakeError::BadEvent(format!(
                "the event is nested deeper than {} levels ([server] max_json_depth)",
                limit - 1
            )));
        }
        let outputs = self
            .preprocessors
            .run(&rt.preprocessor, payload.clone(), rt.max_fan_out + 1)
            .await?;
        if outputs.len() > rt.max_fan_out {
            return Err(IntakeError::BadEvent(format!(
                "the preprocessor fans the event out into more than {} jobs (max_fan_out)",
                rt.max_fan_out
            )));
        }
        for args in &outputs {
            crate::model::json::check(args)
                .map_err(|e| IntakeError::BadEvent(format!("preprocessor output refused: {e}")))?;
        }
        Ok(outputs)
    }

    /// Writes the dead letter standing for an event that cannot become jobs (not flushed).
    fn write_refused(
        &self,
        rt: &TriggerRuntime,
        event_id: &str,
        payload: &Value,
        reason: &str,
    ) -> Result<JobRecord, IntakeError> {
        let mut record = JobRecord::new(
            rt.name(),
            rt.kind(),
            &rt.runnable,
            event_id,
            Value::Null,
            None,
        );
        record.timeline = vec![TimelineEntry::now(REFUSED_STEP).error(reason)];
        // An event past the nesting limit is kept as its text, so the record stays readable.
        if crate::model::json::check(payload).is_ok() {
            self.store.put_event(event_id, payload)?;
        } else {
            let text = payload.to_string();
            let stub = json!({
                "kind": rt.kind(),
                "trigger": rt.name(),
                "refused": reason,
                "text": text.chars().take(64 * 1024).collect::<String>(),
            });
            self.store.put_event(event_id, &stub)?;
        }
        self.store.write_jobs(std::slice::from_ref(&record), None)?;
        let record = self
            .store
            .finish(
                record.job_id,
                JobStatus::DeadLettered,
                None,
                Some(reason.to_string()),
            )?
            .unwrap_or(record);
        Ok(record)
    }

    fn announce_refused(&self, rt: &TriggerRuntime, records: &[JobRecord]) {
        for r in records {
            let error = r.error.clone().unwrap_or_default();
            tracing::warn!(trigger = rt.name(), event_id = %r.event_id, job_id = %r.job_id, %error, "event refused; dead letter recorded");
            rt.counters
                .jobs_dead_lettered
                .fetch_add(1, Ordering::Relaxed);
            rt.counters.metrics.dead_lettered.increment(1);
            self.bus.publish(|| SystemEvent::JobDeadLettered {
                trigger: rt.name().into(),
                job_id: r.job_id,
                attempts: 0,
                error,
            });
        }
    }

    /// Releases a trigger's parked jobs to run, in arrival order. Returns how many.
    pub async fn release_parked(&self, rt: &TriggerRuntime) -> Result<usize, IntakeError> {
        let records = self.store.unpark(rt.name()).await?;
        let n = records.len();
        if n == 0 {
            return Ok(0);
        }
        let jobs = records
            .into_iter()
            .map(|record| {
                let span = tracing::info_span!("job", trigger = %record.trigger, job_id = %record.job_id, released = true);
                RoutedJob {
                    ack: rt.ack_handle(AckHandle::none()),
                    retry: rt.retry.clone(),
                    record,
                    span,
                }
            })
            .collect();
        self.router
            .cast(RouterMsg::Submit(jobs))
            .map_err(|_| IntakeError::RouterDown)?;
        tracing::info!(trigger = rt.name(), jobs = n, "parked jobs released");
        Ok(n)
    }

    /// Drops a trigger's parked jobs (status `cancelled`). Returns how many.
    pub async fn cancel_parked(&self, trigger: &str) -> Result<usize, IntakeError> {
        let ids = self.store.cancel_parked(trigger).await?;
        for id in &ids {
            metrics::job_outcome(trigger, "cancelled");
            self.bus.publish(|| SystemEvent::JobCancelled {
                trigger: trigger.into(),
                job_id: *id,
            });
        }
        Ok(ids.len())
    }

    /// Runs a finished job again as a new job linked to it. A replayed dead letter leaves the
    /// dead letters. `rt` is the job's trigger, when it still exists. A refused event (a dead
    /// letter the intake wrote) goes through its trigger's intake again, preprocessor included.
    pub async fn replay(
        &self,
        old: &JobRecord,
        rt: Option<&TriggerRuntime>,
        default_retry: &RetryPolicy,
    ) -> Result<Vec<JobId>, IntakeError> {
        if !old.status.is_final() {
            return Err(IntakeError::Refused(format!(
                "job {} is {}; only finished jobs can be replayed",
                old.job_id,
                old.status.as_str()
            )));
        }
        if old.timeline.first().is_some_and(|s| s.step == REFUSED_STEP) {
            return self.replay_refused(old, rt).await;
        }
        let mut record = JobRecord::new(
            &old.trigger,
            &old.kind,
            &old.runnable,
            &old.event_id,
            old.args.clone(),
            old.order_key.clone(),
        );
        record.replay_of = Some(old.job_id);
        let id = record.job_id;
        self.store
            .enqueue(std::slice::from_ref(&record), None)
            .await?;
        self.store.remove_dead_letter(old.job_id)?;
        self.bus.publish(|| SystemEvent::JobQueued {
            trigger: old.trigger.clone(),
            job_id: id,
            event_id: old.event_id.clone(),
        });
        let (ack, retry) = match rt {
            Some(rt) => (rt.ack_handle(AckHandle::none()), rt.retry.clone()),
            None => (AckHandle::none(), default_retry.clone()),
        };
        let span = tracing::info_span!("job", trigger = %record.trigger, job_id = %id, replay_of = %old.job_id);
        self.router
            .cast(RouterMsg::Submit(vec![RoutedJob {
                record,
                retry,
                ack,
                span,
            }]))
            .map_err(|_| IntakeError::RouterDown)?;
        Ok(vec![id])
    }

    async fn replay_refused(
        &self,
        old: &JobRecord,
        rt: Option<&TriggerRuntime>,
    ) -> Result<Vec<JobId>, IntakeError> {
        let Some(rt) = rt else {
            return Err(IntakeError::Refused(format!(
                "job {} is a refused event of trigger `{}`, which no longer exists",
                old.job_id, old.trigger
            )));
        };
        if old.event.get("refused").is_some() && old.event.get("text").is_some() {
            return Err(IntakeError::Refused(format!(
                "job {}: the event was kept as text only (it was nested too deeply to run)",
                old.job_id
            )));
        }
        let event = Event::unique(&format!("{}:replay", rt.name()), old.event.clone());
        let accepted = self.accept(rt, event, |_| AckHandle::none()).await?;
        let ids = match accepted {
            Accepted::Queued(ids) | Accepted::Parked(ids) => ids,
            Accepted::Filtered => vec![],
            Accepted::Duplicate(ids) => ids,
            Accepted::DeadLettered(id) => {
                return Err(IntakeError::Refused(format!(
                    "refused again (see job {id})"
                )))
            }
        };
        self.store.remove_dead_letter(old.job_id)?;
        Ok(ids)
    }
}

impl Intake {
    /// The ordering key: the expression's first output, as a string (JSON text for
    /// non-strings); `null` when it has none or fails. One that runs out of time refuses the
    /// event, like a preprocessor would.
    async fn order_key(&self, expr: &KeyExpr, event: &Value) -> Result<String, IntakeError> {
        match self
            .preprocessors
            .key(expr, event, DEFAULT_JQ_TIMEOUT)
            .await
        {
            Ok(key) => Ok(key.unwrap_or_else(|| "null".into())),
            Err(e @ (PreprocessError::Timeout(_) | PreprocessError::PoolDown)) => Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "order_by failed on this event; using the key `null`");
                Ok("null".into())
            }
        }
    }
}
