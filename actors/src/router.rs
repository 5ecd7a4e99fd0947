//! The job router: takes durably queued jobs, keeps per-key order and per-runnable limits,
//! hands runs to the runner pool, retries failures with backoff, dead-letters what keeps
//! failing, and settles each job's acknowledgement once its outcome is on disk.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::model::ack::{AckHandle, InFlightSlots, Watchers};
use crate::model::events::{EventBus, SystemEvent};
use crate::model::job::JobRecord;
use crate::model::job::{JobId, JobOutcome, JobStatus, TimelineEntry};
use crate::model::metrics;
use crate::model::settings::RetryPolicy;
use crate::runners::{self, RunContext, RunJob, RunReport, RunReports, Runnable, RunnerPoolRef};
use crate::store::Store;

// ---------------------------------------------------------------------------------------------
// Messages

pub enum RouterMsg {
    /// New jobs, already durable.
    Submit(Vec<RoutedJob>),
    /// A runner finished one run.
    Finished(RunReport),
    /// A failed job's backoff has passed.
    RetryDue(JobId),
    /// The outcomes settled before the last flush began are on disk.
    Flushed,
    /// The runner pool the router started (for its queue statistics).
    RunnerPool(RpcReplyPort<RunnerPoolRef>),
    Stats(RpcReplyPort<RouterStats>),
    /// Per runnable: (running, waiting for the concurrency limit).
    RunnableStats(RpcReplyPort<HashMap<String, (usize, usize)>>),
}

/// A job on its way to the router, with what the source needs to hear when it ends.
pub struct RoutedJob {
    pub record: JobRecord,
    pub retry: RetryPolicy,
    pub ack: AckHandle,
    pub span: tracing::Span,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RouterStats {
    pub jobs_in_router: usize,
    pub running: usize,
    pub waiting_for_runnable: usize,
    pub waiting_for_key: usize,
    pub retrying: usize,
}

// ---------------------------------------------------------------------------------------------
// The actor

pub struct JobRouter;

pub struct RouterArgs {
    pub store: Store,
    pub runnables: HashMap<String, (Arc<Runnable>, Option<usize>)>,
    pub watchers: Arc<Watchers>,
    pub bus: EventBus,
    /// Runners to start; their pool is linked to `supervisor` (beside the router, not under
    /// it) and reports to the router through a [`RunReports`].
    pub runners: usize,
    pub supervisor: ractor::ActorCell,
    pub pool_name: Option<String>,
}

struct InFlight {
    record: JobRecord,
    retry: RetryPolicy,
    ack: AckHandle,
    span: tracing::Span,
    retrying: bool,
}

#[derive(Default)]
struct Gate {
    running: usize,
    limit: Option<usize>,
    waiting: VecDeque<JobId>,
}

pub struct RouterState {
    store: Store,
    pool: RunnerPoolRef,
    runnables: HashMap<String, Arc<Runnable>>,
    gates: HashMap<String, Gate>,
    keys: HashMap<String, VecDeque<JobId>>,
    jobs: HashMap<JobId, InFlight>,
    watchers: Arc<Watchers>,
    bus: EventBus,
    /// Settled jobs' slots waiting for their outcomes' flush, and whether one is under way.
    unflushed: Vec<InFlightSlots>,
    flushing: bool,
    myself: ActorRef<RouterMsg>,
}

impl Actor for JobRouter {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        args: RouterArgs,
    ) -> Result<RouterState, ActorProcessingErr> {
        let to_router = myself.clone();
        let reports =
            RunReports::new(move |report| to_router.cast(RouterMsg::Finished(report)).is_ok());
        let pool =
            runners::spawn_pool(args.runners, reports, args.supervisor, args.pool_name).await?;
        let mut gates = HashMap::new();
        let mut runnables = HashMap::new();
        for (name, (r, limit)) in args.runnables {
            gates.insert(
                name.clone(),
                Gate {
                    limit,
                    ..Default::default()
                },
            );
            runnables.insert(name, r);
        }
        Ok(RouterState {
            store: args.store,
            pool,
            runnables,
            gates,
            keys: HashMap::new(),
            jobs: HashMap::new(),
            watchers: args.watchers,
            bus: args.bus,
            unflushed: Vec::new(),
            flushing: false,
            myself,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        state: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::RunnerPool(reply) => {
                let _ = reply.send(state.pool.clone());
            }
            RouterMsg::Submit(jobs) => {
                for job in jobs {
                    state.admit(job);
                }
            }
            RouterMsg::Finished(report) => state.finished(&myself, report),
            RouterMsg::Flushed => {
                state.flushing = false;
                if let Some(slots) = state.unflushed.pop() {
                    state.release_after_flush(slots);
                }
            }
            RouterMsg::RetryDue(id) => {
                if let Some(j) = state.jobs.get_mut(&id) {
                    j.retrying = false;
                    state.ready(id);
                }
            }
            RouterMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
            RouterMsg::RunnableStats(reply) => {
                let stats = state
                    .gates
                    .iter()
                    .map(|(name, g)| (name.clone(), (g.running, g.waiting.len())))
                    .collect();
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

impl RouterState {
    fn admit(&mut self, job: RoutedJob) {
        let id = job.record.job_id;
        if self.jobs.contains_key(&id) {
            // Submitted twice (a bug upstream): keep the first, whose source waits on its ack.
            tracing::error!(job_id = %id, "job submitted while the router already holds it; ignored");
            return;
        }
        let key = job.record.order_key.clone();
        self.jobs.insert(
            id,
            InFlight {
                record: job.record,
                retry: job.retry,
                ack: job.ack,
                span: job.span,
                retrying: false,
            },
        );
        if let Some(key) = key {
            let queue = self.keys.entry(key).or_default();
            queue.push_back(id);
            if queue.len() > 1 {
                // An earlier job with this key is still unsettled; this one waits its turn.
                return;
            }
        }
        self.ready(id);
    }

    /// The job may run as far as ordering is concerned; now the runnable's limit decides.
    fn ready(&mut self, id: JobId) {
        let Some(runnable) = self.jobs.get(&id).map(|j| j.record.runnable.clone()) else {
            return;
        };
        let gate = self.gates.entry(runnable).or_default();
        if gate.limit.is_some_and(|l| gate.running >= l) {
            gate.waiting.push_back(id);
            return;
        }
        gate.running += 1;
        self.start(id);
    }

    fn start(&mut self, id: JobId) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let Some(runnable) = self.runnables.get(&job.record.runnable).cloned() else {
            let name = job.record.runnable.clone();
            if let Some(g) = self.gates.get_mut(&name) {
                g.running = g.running.saturating_sub(1);
            }
            self.settle(
                id,
                JobStatus::DeadLettered,
                Err(format!("runnable `{name}` is not configured")),
            );
            return;
        };
        job.record.attempts += 1;
        job.record.status = JobStatus::Running;
        job.record.started_at = Some(Utc::now());
        let attempt = job.record.attempts;
        job.record
            .step(TimelineEntry::now("started").attempt(attempt));
        if let Err(e) = self.store.put_job(&job.record) {
            tracing::warn!(job_id = %id, error = %e, "could not record job start");
        }
        self.bus.publish(|| SystemEvent::JobStarted {
            trigger: job.record.trigger.clone(),
            job_id: id,
            attempt,
        });
        if matches!(*runnable, Runnable::Echo) {
            // Nothing to wait for: the outcome comes back through the mailbox (not inline, so
            // that a long chain of one key's jobs does not recurse), without the pool's hops.
            // The same span a runner opens, so traces look alike whatever ran the job.
            drop(tracing::info_span!(parent: &job.span, "run", runner = "router", attempt));
            let now = Utc::now();
            let report = RunReport {
                job_id: id,
                attempt,
                result: Ok(job.record.args.clone()),
                started_at: now,
                finished_at: now,
            };
            let _ = self.myself.cast(RouterMsg::Finished(report));
            return;
        }
        let run = RunJob {
            ctx: RunContext {
                job_id: id,
                trigger: job.record.trigger.clone(),
                event_id: job.record.event_id.clone(),
                attempt: job.record.attempts,
            },
            args: job.record.args.clone(),
            runnable,
            span: job.span.clone(),
        };
        let key = job
            .record
            .order_key
            .clone()
            .unwrap_or_else(|| id.to_string());
        if let Err(e) = runners::dispatch(&self.pool, key, run) {
            tracing::error!(job_id = %id, error = %e, "runner pool refused the job; it stays queued for the next start");
        }
    }

    fn finished(&mut self, myself: &ActorRef<RouterMsg>, report: RunReport) {
        let id = report.job_id;
        let Some(job) = self.jobs.get_mut(&id) else {
            tracing::warn!(job_id = %id, "outcome for a job the router does not hold");
            return;
        };
        let runnable = job.record.runnable.clone();
        if let Some(gate) = self.gates.get_mut(&runnable) {
            gate.running = gate.running.saturating_sub(1);
            if let Some(next) = gate.waiting.pop_front() {
                gate.running += 1;
                self.start(next);
            }
        }
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Ok(d) = (report.finished_at - report.started_at).to_std() {
            match job.ack.counters() {
                Some(c) => c.metrics.duration.record(d.as_secs_f64()),
                None => metrics::job_duration(&job.record.trigger, &job.record.runnable, d),
            }
        }
        job.record.started_at = Some(report.started_at);
        match report.result {
            Ok(result) => self.settle(id, JobStatus::Succeeded, Ok(result)),
            Err(e) if report.attempt < job.retry.attempts => {
                let delay = job.retry.delay(report.attempt + 1);
                job.record.status = JobStatus::Retrying;
                job.record.error = Some(e.0.clone());
                job.record.step(
                    TimelineEntry::now("failed")
                        .attempt(report.attempt)
                        .error(&e.0),
                );
                job.record
                    .step(TimelineEntry::now("retry_scheduled").delay(delay));
                job.retrying = true;
                match job.ack.counters() {
                    Some(c) => c.metrics.retried.increment(1),
                    None => metrics::job_outcome(&job.record.trigger, "retried"),
                }
                self.bus.publish(|| SystemEvent::JobRetrying {
                    trigger: job.record.trigger.clone(),
                    job_id: id,
                    attempt: report.attempt,
                    error: e.0.clone(),
                    delay_ms: delay.as_millis().min(u128::from(u64::MAX)) as u64,
                });
                job.span.in_scope(|| {
                    tracing::info!(attempt = report.attempt, retry_in = ?delay, error = %e, "job failed; will retry")
                });
                if let Err(err) = self.store.put_job(&job.record) {
                    tracing::warn!(job_id = %id, error = %err, "could not record retry");
                }
                myself.send_after(delay, move || RouterMsg::RetryDue(id));
            }
            Err(e) => self.settle(id, JobStatus::DeadLettered, Err(e.0)),
        }
    }

    /// Records the final outcome from the router's copy of the job (no read-back), releases
    /// the job's order key and acknowledges the source. An outcome is written without waiting
    /// for the disk (a crash before the next group commit runs the job again from the queue);
    /// a dead letter is on disk before the source hears of it, since the source then forgets
    /// the event.
    fn settle(&mut self, id: JobId, status: JobStatus, result: Result<serde_json::Value, String>) {
        let Some(mut job) = self.jobs.remove(&id) else {
            return;
        };
        let (value, error) = match result {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        job.record.finish(status, value, error);
        let recorded = match self.store.finish_record(&job.record) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(job_id = %id, error = %e, "could not record the job's outcome");
                false
            }
        };
        // The record is written: its result moves on to whoever waits for it.
        let outcome = match status {
            JobStatus::DeadLettered => {
                JobOutcome::DeadLettered(job.record.error.clone().unwrap_or_default())
            }
            _ => JobOutcome::Succeeded(job.record.result.take().unwrap_or_default()),
        };
        let trigger = job.record.trigger.clone();
        let attempts = job.record.attempts;
        // A trigger's handle counts the outcome when it is settled; others are counted here.
        let counted = job.ack.counters().is_some();
        match &outcome {
            JobOutcome::Succeeded(_) => {
                if !counted {
                    metrics::job_outcome(&trigger, "succeeded");
                }
                let duration_ms = job.record.duration_ms().unwrap_or(0);
                self.bus.publish(|| SystemEvent::JobSucceeded {
                    trigger,
                    job_id: id,
                    attempts,
                    duration_ms,
                });
            }
            JobOutcome::DeadLettered(e) => {
                if !counted {
                    metrics::job_outcome(&trigger, "dead_lettered");
                }
                self.bus.publish(|| SystemEvent::JobDeadLettered {
                    trigger,
                    job_id: id,
                    attempts,
                    error: e.clone(),
                });
            }
        }
        job.span.in_scope(|| match &outcome {
            JobOutcome::Succeeded(_) => {
                tracing::debug!(attempts = job.record.attempts, "job succeeded")
            }
            JobOutcome::DeadLettered(e) => {
                tracing::warn!(attempts = job.record.attempts, error = %e, "job dead-lettered")
            }
        });
        if let Some(key) = &job.record.order_key {
            if let Some(queue) = self.keys.get_mut(key) {
                // The settled job is its key's running one, at the front (O(1) for a
                // partition's thousand queued jobs); anywhere else only if a bug put it there.
                if queue.front() == Some(&id) {
                    queue.pop_front();
                } else {
                    queue.retain(|j| *j != id);
                }
                match queue.front().copied() {
                    Some(next) => self.ready(next),
                    None => {
                        self.keys.remove(key);
                    }
                }
            }
        }
        let ack = job.ack;
        if status != JobStatus::DeadLettered {
            let slots = ack.settle(&outcome);
            self.watchers.notify(id, &outcome);
            self.release_after_flush(slots);
            return;
        }
        if !recorded {
            // Not acknowledging is the safe side: the source will redeliver.
            drop(ack);
            return;
        }
        let store = self.store.clone();
        let watchers = self.watchers.clone();
        tokio::spawn(async move {
            if let Err(e) = store.commit().await {
                tracing::error!(job_id = %id, error = %e, "dead letter not durable; source not acknowledged");
                drop(ack);
                return;
            }
            drop(ack.settle(&outcome));
            watchers.notify(id, &outcome);
        });
    }

    /// Keeps a settled job's in-flight slots until its outcome is on disk: one group commit
    /// for all the outcomes settled meanwhile, so no job waits for a flush of its own.
    fn release_after_flush(&mut self, slots: InFlightSlots) {
        self.unflushed.push(slots);
        if self.flushing {
            return;
        }
        self.flushing = true;
        let batch = std::mem::take(&mut self.unflushed);
        let store = self.store.clone();
        let router = self.myself.clone();
        tokio::spawn(async move {
            if let Err(e) = store.commit().await {
                tracing::error!(error = %e, jobs = batch.len(), "outcomes not durable");
            }
            drop(batch);
            let _ = router.cast(RouterMsg::Flushed);
        });
    }

    fn stats(&self) -> RouterStats {
        RouterStats {
            jobs_in_router: self.jobs.len(),
            running: self.gates.values().map(|g| g.running).sum(),
            waiting_for_runnable: self.gates.values().map(|g| g.waiting.len()).sum(),
            waiting_for_key: self.keys.values().map(|q| q.len().saturating_sub(1)).sum(),
            retrying: self.jobs.values().filter(|j| j.retrying).count(),
        }
    }
}
